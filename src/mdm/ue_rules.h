/*
 * User Enrollment rules: may an account-driven user enrollment on a given OS receive this
 * MDM command, send this check-in message, or install this profile payload?
 *
 * The answers come from src/mdm/ue_tables.c, generated from Apple's device-management YAML
 * by tools/gen_tables.py (PROTOCOL.md 12.1); this module only looks them up and turns them
 * into verdicts and messages. It knows the OS family (iOS, macOS, visionOS), not the OS
 * version: a key introduced in iOS 17 passes for every iOS device. It does not check value
 * ranges or formats, only presence, types and the UE / supervision flags.
 *
 * Rules, for a command, message, payload or key on one OS (PROTOCOL.md 12.1):
 *   - introduced missing or n/a                    -> not on that OS
 *   - userenrollment.mode forbidden                -> not in User Enrollment
 *   - supervised: true                             -> unusable (UE is never supervised)
 *   - requiresdep: true                            -> unusable (UE is never ADE)
 *   - userenrollment.mode ignored                  -> accepted, no effect (a warning)
 *   - allowed / required                           -> fine
 *
 * Messages are plain English and use Apple's spelling of every name, e.g.
 * "EraseDevice is not allowed in User Enrollment on iOS". All functions are pure lookups
 * over constant tables and are safe to call from any thread.
 */
#ifndef ORCHARD_MDM_UE_RULES_H
#define ORCHARD_MDM_UE_RULES_H

#include <stddef.h>

#include <plist/plist.h>

#include "mdm/ue_tables.h"

/* Verdict for one OS's view of a command, message, payload or key. */
enum ue_use {
    UE_USE_OK,          /* allowed or required in User Enrollment */
    UE_USE_IGNORED,     /* accepted, but User Enrollment ignores it */
    UE_USE_NOT_ON_OS,   /* the OS does not know it */
    UE_USE_FORBIDDEN,   /* userenrollment.mode forbidden */
    UE_USE_SUPERVISED,  /* needs supervision */
    UE_USE_REQUIRES_DEP /* needs Automated Device Enrollment */
};

/* Called once per warning (unknown payload key, ignored key, ...). msg is only valid
 * during the call. */
typedef void (*ue_warn_fn)(void *ctx, const char *msg);

/* ---- OS names ---- */

/* Parses "ios" / "ipados" / "macos" / "visionos" / "tvos" / "watchos" (any case) into *os.
 * Returns 0, or -1 (and leaves *os alone) for anything else, including NULL. */
int ue_os_parse(const char *name, enum ue_os *os);
/* Apple's spelling: "iOS", "macOS", ...; "?" for an out-of-range value. */
const char *ue_os_name(enum ue_os os);
/* 1 if User Enrollment exists on the OS (iOS, macOS, visionOS), else 0. */
int ue_os_has_user_enrollment(enum ue_os os);

/* "allowed", "forbidden", ...; "n/a" for UE_MODE_NA. */
const char *ue_mode_name(enum ue_mode mode);
/* The schema's type names without brackets: "string", "integer", ..., "any". */
const char *ue_type_name(enum ue_type type);
/* Formats a UE_VERSION() value as "10.13.4" / "17.0" into buf (always terminated). */
void ue_version_format(uint16_t version, char *buf, size_t len);

/* ---- Table lookups (binary search; results point into the constant tables) ---- */

const struct ue_entry *ue_command_find(const char *request_type);
const struct ue_entry *ue_checkin_find(const char *message_type);
/* Excludes the pseudo types TopLevel and CommonPayloadKeys (see ue_tables.h). */
const struct ue_entry *ue_payload_find(const char *payload_type);
const struct ue_os_info *ue_entry_os(const struct ue_entry *e, enum ue_os os);
const struct ue_os_info *ue_key_os(const struct ue_key *k, enum ue_os os);
/* The top-level key / the child key called name: exact match (dots are part of the name;
 * the "ANY" wildcard is not applied). NULL if none. */
const struct ue_key *ue_entry_child(const struct ue_entry *e, const char *name);
const struct ue_key *ue_key_child(const struct ue_key *parent, const char *name);
/* Follows a dotted path from an entry: "Options.PurchaseMethod". Array items are addressed
 * by their schema name ("Queries.QueriesItem"), enumerated values as children of the item
 * ("Queries.QueriesItem.UDID"). NULL if any step is missing or the path is too long. Some
 * profile keys contain dots (com.apple.MCX); walk those with ue_entry_child/ue_key_child. */
const struct ue_key *ue_entry_key(const struct ue_entry *e, const char *dotted);

/* The verdict for one OS's record; tvOS and watchOS records are judged like the others. */
enum ue_use ue_use_of(const struct ue_os_info *info);

/* ---- Yes/no checks. Each returns 0 if a user enrollment on os may use the thing, else -1
 * with a reason in why (may be NULL; always NUL-terminated when why_len > 0). ---- */

/* "unknown RequestType Foo", "EraseDevice is not allowed in User Enrollment on iOS",
 * "InstallMedia is not available on visionOS", "X is supervised-only on iOS", ... */
int ue_command_check(const char *request_type, enum ue_os os, char *why, size_t why_len);
/* The same for a check-in MessageType (Authenticate, TokenUpdate, ...). */
int ue_checkin_message_check(const char *message_type, enum ue_os os, char *why, size_t why_len);
/* -1 if a key of a check-in message has another type than the schema's ("Authenticate: Topic
 * must be of type string, not integer"); keys the schema does not list pass (devices add
 * keys over the years). */
int ue_checkin_types_check(plist_t msg, char *why, size_t why_len);
/* 1 if a plist node of type got may stand where the schema says want. */
int ue_type_matches(enum ue_type want, plist_type got);
/* The same for a profile PayloadType, without looking at the payload's keys. */
int ue_payload_check(const char *payload_type, enum ue_os os, char *why, size_t why_len);

/* One key of a command. dotted_key as for ue_entry_key(). type is the plist type the
 * caller will send, or PLIST_NONE to skip the type check. Unknown keys, wrong types and
 * keys that are not available, forbidden or supervised-only are -1; ignored keys are 0. */
int ue_command_check_key(const char *request_type, const char *dotted_key, enum ue_os os,
                         plist_type type, char *why, size_t why_len);

/* DeviceInformation Queries item: 0 if the device answers it in User Enrollment on os,
 * -1 if the schema forbids it there, does not know it on os, or does not know it at all. */
int ue_device_query_check(const char *query, enum ue_os os, char *why, size_t why_len);

/* ---- Whole-plist validation. Each returns 0 if acceptable (warnings may have been
 * reported through warn, which may be NULL), or -1 with the first error in err. The plist
 * is borrowed and not modified. Nesting deeper than 32 levels is an error. ---- */

/* The Command dictionary of an MDM command (with RequestType). Errors: not a dict, missing
 * or unusable RequestType, unknown keys, wrong types, keys not on the OS, forbidden or
 * supervised-only keys, missing required keys, and DeviceInformation Queries the schema
 * forbids (all of them named in one message). Warnings: ignored keys, keys removed in
 * some OS version, Queries the schema does not know or the OS does not have. */
int ue_command_validate(plist_t command, enum ue_os os, ue_warn_fn warn, void *warn_ctx, char *err,
                        size_t err_len);

/* One payload dictionary of a configuration profile (an item of PayloadContent). Errors:
 * PayloadType missing, unknown, not on the OS, forbidden or supervised-only; a key with
 * the wrong type; a forbidden key ("com.apple.applicationaccess: allowCamera is not
 * allowed in User Enrollment on iOS"); a supervised-only key ("... allowCloudPrivateRelay
 * is supervised-only on visionOS; User Enrollment ignores it"); a common Payload* key
 * missing.
 * Warnings (Apple adds keys faster than the schema, so be lenient): unknown keys, keys the
 * OS does not have, ignored keys, removed keys, missing payload-specific required keys.
 * The standard Payload* keys are always allowed. */
int ue_payload_validate(plist_t payload, enum ue_os os, ue_warn_fn warn, void *warn_ctx, char *err,
                        size_t err_len);

/* A whole configuration profile (the outer dictionary): the top-level keys (e.g.
 * PayloadRemovalDisallowed is forbidden in iOS User Enrollment), then ue_payload_validate() on each
 * PayloadContent item. Encrypted profiles (EncryptedPayloadContent) are checked only at the
 * top level. */
int ue_profile_validate(plist_t profile, enum ue_os os, ue_warn_fn warn, void *warn_ctx, char *err,
                        size_t err_len);

#endif
