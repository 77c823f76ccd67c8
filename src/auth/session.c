/* Bearer token checks and the 401 challenge. */
#include "auth/session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "auth/reauth.h"
#include "core/log.h"
#include "core/mem.h"
#include "routes.h"

static const char *const status_names[] = {"ok",      "missing", "malformed", "unknown",
                                           "expired", "revoked", "error"};

const char *session_status_name(enum session_status s)
{
    return status_names[s];
}

enum session_status session_check(struct app *app, const st_session *s)
{
    int64_t now = app_now(app);
    if (s->revoked_at)
        return SESSION_REVOKED;
    if (s->expires_at && now >= s->expires_at)
        return SESSION_EXPIRED;
    if (s->enrollment_id == NULL &&
        now - s->issued_at >= config_get_int(app->cfg, "enroll_token_ttl"))
        return SESSION_EXPIRED;
    int64_t interval = config_get_int(app->cfg, "reauth_interval");
    if (interval > 0 && now - s->issued_at >= interval)
        return SESSION_EXPIRED;
    return SESSION_OK;
}

enum session_status session_token_hash(const http_request *req, char *hash)
{
    const char *h = http_request_header(req, "Authorization");
    if (h == NULL)
        return SESSION_MISSING;
    if (strncasecmp(h, "Bearer ", 7) != 0)
        return SESSION_MALFORMED;
    const char *token = h + 7;
    while (*token == ' ')
        token++;
    if (!secret_token_well_formed(token))
        return SESSION_MALFORMED;
    secret_hash(token, hash);
    return SESSION_OK;
}

enum session_status session_from_request(struct app *app, const http_request *req, st_session *out)
{
    memset(out, 0, sizeof(*out));
    char hash[SECRET_HASH_LEN + 1];
    enum session_status status = session_token_hash(req, hash);
    if (status != SESSION_OK)
        return status;
    int rc = storage_session_get(app->st, hash, out);
    if (rc == ST_ENOTFOUND)
        return SESSION_UNKNOWN;
    if (rc != 0)
        return SESSION_ERROR;
    return session_check(app, out);
}

int session_issue(struct app *app, int64_t user_id, const char *method, char *token)
{
    char hash[SECRET_HASH_LEN + 1];
    secret_new_token(token);
    secret_hash(token, hash);
    st_session s = {.token_hash = hash,
                    .user_id = user_id,
                    .method = (char *)method,
                    .issued_at = app_now(app)};
    return storage_session_add(app->st, &s);
}

/* 401 with the apple-as-web challenge; the url carries `?reauth=<ticket>` when one is given. */
static void challenge(struct app *app, http_response *res, const char *ticket)
{
    char *value = ticket && ticket[0]
                      ? xasprintf("Bearer method=\"apple-as-web\", url=\"%s%s?%s=%s\"",
                                  app->public_url, PATH_SIGNIN, REAUTH_TICKET_PARAM, ticket)
                      : xasprintf("Bearer method=\"apple-as-web\", url=\"%s%s\"", app->public_url,
                                  PATH_SIGNIN);
    http_response_set_header(res, "WWW-Authenticate", value);
    free(value);
    res->status = 401;
    res->content_type = NULL;
    buf_reset(&res->body);
}

void session_challenge(struct app *app, http_response *res)
{
    challenge(app, res, NULL);
}

void session_challenge_reauth(struct app *app, http_response *res, const st_enrollment *e)
{
    char ticket[SECRET_TOKEN_LEN + 1];
    reauth_ticket(app, e, ticket);
    challenge(app, res, ticket);
}
