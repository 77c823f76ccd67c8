/*
 * The platform of an enrollment, from a ProductName or Model string ("iPhone14,5", "Mac14,2",
 * "MacBookPro18,3", "iMac14,2", "Macmini9,1", "VirtualMac2,1", "RealityDevice14,1").
 *
 * Authorization decisions use it only on what Orchard stored: the ProductName recorded at the
 * first Authenticate, which must agree with the PRODUCT of the MachineInfo recorded when the
 * profile was issued (mdm/checkin.c). Whether a device channel may omit the bearer token
 * (macOS only, PROTOCOL.md 7.1) depends on it, so anything not recognised is iOS: the
 * platform that always sends the token.
 */
#ifndef ORCHARD_MDM_PLATFORM_H
#define ORCHARD_MDM_PLATFORM_H

#include "mdm/ue_tables.h"

/* The platform of product (or, if NULL or empty, model); UE_OS_IOS when unrecognised. */
enum ue_os mdm_platform_of(const char *product, const char *model);

/* 1 if product names a Mac (every form listed above), else 0. */
int mdm_platform_is_mac(const char *product);

#endif
