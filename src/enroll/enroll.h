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
 * session_hash (the SHA-256 of the session token the challenge is bound to) determines the
 * payload UUIDs, so that a renewal can reproduce them (profile.c).
 */
char *enroll_profile_build(const struct app *app, const st_user *user, const char *challenge,
                           const char *session_hash, size_t *len);
/*
 * The replacement of enrollment e's profile that renews its identity (PROTOCOL.md 10.3): the
 * same top-level PayloadIdentifier, the same payload identifiers and UUIDs (session_hash is the
 * one the enrollment's certificate was issued under), every frozen com.apple.mdm key as
 * Orchard's configuration gives it (Topic, ServerURL, CheckInURL, AssignedManagedAppleID,
 * EnrollmentMode, per-user-connections, RequiredAppIDForMDM), and a SCEP payload carrying the
 * new challenge. NULL with a reason in *why when a frozen key would differ from what the
 * enrollment recorded (the device would reject the update).
 */
char *enroll_profile_build_renewal(const struct app *app, const st_enrollment *e,
                                   const st_user *user, const char *challenge,
                                   const char *session_hash, size_t *len, const char **why);

/*
 * Signs a profile (CMS SignedData, SHA-256) with the profile-signing identity and its CA, as
 * every enrollment profile is. 0, or -1 (logged by crypto/).
 */
int enroll_profile_sign(const struct app *app, const char *xml, size_t len, uint8_t **der,
                        size_t *der_len);

#endif
