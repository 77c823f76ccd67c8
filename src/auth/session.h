/*
 * Session tokens of account-driven enrollment (PROTOCOL.md sections 5 and 7): issued at the end
 * of web sign-in, carried by the device as `Authorization: Bearer` on every request, stored
 * only as a SHA-256 hash, and checked here for the enrollment endpoint, check-in and connect.
 */
#ifndef ORCHARD_AUTH_SESSION_H
#define ORCHARD_AUTH_SESSION_H

#include "app.h"
#include "auth/secret.h"
#include "http/http.h"

enum session_status {
    SESSION_OK = 0,
    SESSION_MISSING,   /* no Authorization header */
    SESSION_MALFORMED, /* not "Bearer <token>" or not a token we could have issued */
    SESSION_UNKNOWN,   /* well-formed but never issued */
    SESSION_EXPIRED,   /* past enroll_token_ttl (unbound), expires_at or reauth_interval */
    SESSION_REVOKED,   /* invalidated (re-authentication demanded, unenrolled) */
    SESSION_ERROR      /* storage failure */
};

/* A short word for logs and audit: "ok", "missing", ... */
const char *session_status_name(enum session_status s);

/*
 * Looks up the bearer token of the request. Fills out (caller cleans up) for every status but
 * MISSING/MALFORMED/UNKNOWN/ERROR, so callers can still inspect an expired or revoked session.
 */
enum session_status session_from_request(struct app *app, const http_request *req, st_session *out);

/*
 * The SHA-256 (hex, SECRET_HASH_LEN + 1 bytes) of the request's bearer token: SESSION_OK, or
 * SESSION_MISSING / SESSION_MALFORMED.
 */
enum session_status session_token_hash(const http_request *req, char *hash);
/* SESSION_OK, SESSION_EXPIRED or SESSION_REVOKED for a stored session, at the server's now. */
enum session_status session_check(struct app *app, const st_session *s);

/* Issues a new token for the user; writes it (SECRET_TOKEN_LEN + 1 bytes) into token. */
int session_issue(struct app *app, int64_t user_id, const char *method, char *token);

/* Answers 401 with the apple-as-web challenge (PROTOCOL.md 5.1; comma form). */
void session_challenge(struct app *app, http_response *res);
/*
 * The same for a check-in or connect of user enrollment e (PROTOCOL.md 7.2): the url carries
 * the enrollment's re-authentication ticket (auth/reauth.h), so failed sign-ins that follow
 * this very challenge can count towards reauth_max_failures, and nothing else can.
 */
void session_challenge_reauth(struct app *app, http_response *res, const st_enrollment *e);

#endif
