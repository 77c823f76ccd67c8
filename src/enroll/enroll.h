/*
 * Account-driven enrollment, device side (PROTOCOL.md sections 3-6): service discovery, the
 * enrollment endpoint (BaseURL) that answers 401 + challenge or the signed BYOD profile, and the
 * SCEP CA that issues the device identity named by the profile.
 */
#ifndef ORCHARD_ENROLL_H
#define ORCHARD_ENROLL_H

#include "app.h"
#include "http/http.h"

/* The top-level PayloadIdentifier of every enrollment profile; RemoveProfile of it unenrolls. */
#define ENROLL_PROFILE_ID "io.orchard.enrollment"
#define ENROLL_SCEP_PAYLOAD_ID ENROLL_PROFILE_ID ".scep"
#define ENROLL_MDM_PAYLOAD_ID ENROLL_PROFILE_ID ".mdm"

/* GET|HEAD /.well-known/com.apple.remotemanagement */
void enroll_handle_discovery(void *ctx, http_request *req, http_response *res);
/* POST /enroll/{domain} (BaseURL) */
void enroll_handle_enroll(void *ctx, http_request *req, http_response *res);
/* GET|POST /scep */
void enroll_handle_scep(void *ctx, http_request *req, http_response *res);

/* 1 if domain (lowercase) is an organisation domain of this server, 0 if not, ST_ERROR when
 * storage could not tell (the caller answers 503, never "not served"). */
int enroll_domain_served(const struct app *app, const char *domain);

/*
 * Builds the enrollment profile (XML plist, malloc'd) for a user with a fresh SCEP challenge.
 * Exposed for tests.
 */
char *enroll_profile_build(const struct app *app, const st_user *user, const char *challenge,
                           size_t *len);

#endif
