/*
 * The MDM check-in protocol (PUT CheckInURL, PROTOCOL.md 8) and command channel (PUT ServerURL,
 * section 9). Each request is: parse the plist (bounded), resolve which enrollment channel it
 * is (EnrollmentID/EnrollmentUserID for user enrollments, UDID/UserID otherwise), verify the
 * device identity and, for user enrollments, the session token; then act.
 *
 * 401 (with the apple-as-web challenge) is only ever sent to user enrollments: to any other
 * enrollment a 401 means "unenroll" (section 7.3).
 */
#ifndef ORCHARD_MDM_H
#define ORCHARD_MDM_H

#include "app.h"
#include "http/http.h"
#include "plist/pl.h"

/* PUT /mdm/checkin */
void mdm_handle_checkin(void *ctx, http_request *req, http_response *res);
/* PUT /mdm/connect */
void mdm_handle_connect(void *ctx, http_request *req, http_response *res);

/* The parsed, identified request shared by check-in and connect. */
struct mdm_request {
    plist_t msg;
    char id[160]; /* enrollment id (see storage.h) */
    char parent_id[80];
    int type;    /* enum st_enrollment_type */
    char fp[65]; /* verified device certificate fingerprint */
    st_session session;
    int session_status; /* enum session_status */
    int enforcing; /* token no longer valid, but the re-auth failure action is being delivered */
    st_enrollment enr; /* prefetched with the session (user enrollments); enr.id NULL if none */
    int have_enr;
};

/* auth_state of an enrollment an admin cut off (POST /api/v1/enrollments/{id}/revoke). */
#define MDM_STATE_REVOKED "revoked"

/*
 * Parses and identifies the request; on failure fills res (400/403) and returns -1. The caller
 * must call mdm_request_cleanup either way.
 */
int mdm_request_begin(struct app *app, http_request *req, http_response *res,
                      struct mdm_request *m);
void mdm_request_cleanup(struct mdm_request *m);
/*
 * The request's enrollment (prefetched with the session when there was one, else looked up);
 * the caller owns *e. ST_ENOTFOUND if unknown.
 */
int mdm_request_get_enrollment(struct app *app, struct mdm_request *m, st_enrollment *e);
/*
 * Loads the request's enrollment and checks it against what Orchard stored, never against the
 * message's claims: it exists and is enrolled, the message uses its identifier form (device or
 * user channel), it is not revoked, and the request's certificate is its own (or a renewal,
 * see mdm_check_identity). On refusal fills res (403) and returns -1; the caller owns *e
 * either way.
 */
int mdm_request_load(struct app *app, http_request *req, http_response *res, struct mdm_request *m,
                     st_enrollment *e);
/*
 * 1 if the enrollment's requests may come without a bearer token: only the device channel of
 * a Mac (PROTOCOL.md 7.1), judged from the stored ProductName. A token that is sent is
 * checked all the same.
 */
int mdm_token_optional(const st_enrollment *e);
/* Flags of mdm_check_session. */
enum {
    MDM_TOKEN_ALLOW_EXPIRED = 1, /* CheckOut: the device cannot sign in while it leaves (7.4) */
    MDM_TOKEN_CHECK_ONLY = 2     /* Authenticate of a new enrollment: it binds the token itself */
};

/*
 * For user enrollments: checks the session token against the enrollment (bound to it, or
 * unbound and of the same user: a re-authentication, which is then bound and audited).
 * Returns 0 if the request may proceed; otherwise fills res with 401 + challenge, or 503 when
 * storage failed (never a sign-in prompt for Orchard's own failure).
 */
int mdm_check_session(struct app *app, http_request *req, http_response *res, struct mdm_request *m,
                      const st_enrollment *e, int flags);

/*
 * The user the request's certificate was issued to (through a SCEP challenge), if the
 * certificate is ours, not revoked and not bound to another enrollment. Returns 0, -2 when
 * it is not acceptable, or ST_ERROR when storage failed.
 */
int mdm_cert_owner(struct app *app, const struct mdm_request *m, int64_t *user_id);
/*
 * Checks that the request's certificate is the one bound to the enrollment, or a certificate
 * Orchard issued for the renewal of this enrollment (renewal_accept_identity, mdm/renewal.h),
 * which then replaces it. On refusal fills res (403; 503 when storage failed).
 */
int mdm_check_identity(struct app *app, http_request *req, http_response *res,
                       struct mdm_request *m, const st_enrollment *e);

/*
 * Revokes the enrollment (and a Mac's user channels under it): certificates, tokens, state
 * MDM_STATE_REVOKED; audited with actor. 0, ST_ENOTFOUND or ST_ERROR.
 */
int mdm_revoke(struct app *app, const char *enrollment_id, const char *actor);

#endif
