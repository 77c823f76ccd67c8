/*
 * The `apple-as-web` sign-in pages (PROTOCOL.md 5.1): the device opens the challenge url with
 * `?user-identifier=U` in a web view; the person proves who they are; Orchard ends the flow with
 * `308 Location: apple-remotemanagement-user-login://authentication-results?access-token=T`.
 *
 * Who the person is comes from an identity provider behind `struct auth_provider`: the local
 * directory (argon2id passwords) now, OIDC federation later; the rest of the flow (CSRF, rate
 * limits, token issue, audit) is shared.
 */
#ifndef ORCHARD_AUTH_SIGNIN_H
#define ORCHARD_AUTH_SIGNIN_H

#include "app.h"
#include "core/buf.h"
#include "http/http.h"

struct auth_provider {
    const char *name; /* recorded as the session's method */
    /* Fills *user for valid credentials; returns 0, 1 for bad credentials, ST_ERROR when the
     * directory could not be read (no attempt happened: nothing is counted). */
    int (*verify_password)(struct app *app, const char *identifier, const char *password,
                           st_user *user);
};

extern const struct auth_provider auth_provider_local;

void signin_handle_get(void *ctx, http_request *req, http_response *res);
void signin_handle_post(void *ctx, http_request *req, http_response *res);

/*
 * The shared finish of a successful sign-in, whoever confirmed the user (local password or
 * OIDC): issues a session token (session_issue), audits `token.issue`, and answers 308
 * `Location: apple-remotemanagement-user-login://authentication-results?access-token=T`.
 * method is recorded on the session ("local", "oidc"). 503 page if the token cannot be stored.
 */
void signin_finish(struct app *app, http_response *res, const st_user *user, const char *method);

/* The rate limiters' refusal counters in Prometheus text (orchard_rate_limited_total). */
void signin_metrics(const struct app *app, buf *out);

/* A friendly HTML page (web/message.html) with status, title and message; no-store. */
void signin_render_message(http_response *res, int status, const char *title, const char *msg);

#endif
