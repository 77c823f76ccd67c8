/*
 * Web sign-in: GET renders the form (identifier pre-filled from `user-identifier`), POST checks
 * CSRF (double-submit cookie), rate limits (per identifier and per source address), asks the
 * identity provider, and finishes with the custom-scheme redirect carrying a new token.
 * Failures show one generic message whatever went wrong, so the page cannot be used to learn
 * which accounts exist.
 */
#include "auth/signin.h"

#include <ctype.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "auth/audit.h"
#include "auth/domains.h"
#include "auth/oidc.h"
#include "auth/ratelimit.h"
#include "auth/secret.h"
#include "auth/session.h"
#include "core/assets.h"
#include "core/log.h"
#include "core/mem.h"
#include "core/template.h"
#include "core/url.h"
#include "routes.h"

#define CSRF_COOKIE "orchard_csrf"
#define GENERIC_FAILURE "The account or password is not correct. Please try again."
#define MAX_IDENTIFIER 320
#define MAX_PASSWORD 1024

static char *lowercase_dup(const char *s)
{
    char *out = xstrdup(s);
    for (char *p = out; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return out;
}

static char *dummy_hash;
static pthread_once_t dummy_once = PTHREAD_ONCE_INIT;

static void make_dummy_hash(void)
{
    dummy_hash = secret_password_hash("orchard-timing-equaliser");
}

/* Local directory: argon2id. Unknown users cost the same as known ones (no enumeration). */
static int local_verify(struct app *app, const char *identifier, const char *password,
                        st_user *user)
{
    pthread_once(&dummy_once, make_dummy_hash);
    int rc = storage_user_get_by_email(app->st, identifier, user);
    if (rc != 0 || user->password_hash == NULL || user->disabled) {
        secret_password_verify(dummy_hash, password);
        st_user_cleanup(user);
        return -1;
    }
    return secret_password_verify(user->password_hash, password) ? 0 : -1;
}

const struct auth_provider auth_provider_local = {"local", local_verify};

static void render_form(struct app *app, http_response *res, int status, const char *identifier,
                        const char *error)
{
    char csrf[SECRET_TOKEN_LEN + 1];
    secret_new_token(csrf);
    char *cookie = xasprintf("%s=%s; Path=%s; Secure; HttpOnly; SameSite=Strict; Max-Age=1800",
                             CSRF_COOKIE, csrf, PATH_SIGNIN);
    char *error_html = NULL;
    if (error) {
        buf e;
        buf_init(&e, 0);
        buf_puts(&e, "<div class=\"error\" role=\"alert\">");
        buf_put_html(&e, error);
        buf_puts(&e, "</div>");
        error_html = buf_steal(&e, NULL);
    }
    const char *kv[] = {"org", config_get(app->cfg, "org_name"), "lead",
                        "Sign in with your work account to manage the work side of this "
                        "device.",
                        "error_html", error_html ? error_html : "", "action", PATH_SIGNIN, "csrf",
                        csrf, "identifier", identifier ? identifier : "", "password_autofocus",
                        identifier && identifier[0] ? "autofocus" : "",
                        /* The device typed the identifier; keep it (a typo means "Not you?"). */
                        "identifier_readonly", identifier && identifier[0] ? "readonly" : "", NULL};
    buf_reset(&res->body);
    template_render(&res->body, asset_find("signin.html")->data, kv);
    res->status = status;
    res->content_type = "text/html; charset=utf-8";
    http_response_set_header(res, "Set-Cookie", cookie);
    http_response_set_header(res, "Cache-Control", "no-store");
    http_response_set_header(
        res, "Content-Security-Policy",
        /* form-action also governs the redirects that follow the POST: allow our own scheme's. */
        "default-src 'none'; style-src 'unsafe-inline'; "
        "form-action 'self' apple-remotemanagement-user-login:");
    http_response_set_header(res, "X-Frame-Options", "DENY");
    free(cookie);
    free(error_html);
}

void signin_render_message(http_response *res, int status, const char *title, const char *msg)
{
    const char *kv[] = {"title", title, "message", msg, NULL};
    buf_reset(&res->body);
    template_render(&res->body, asset_find("message.html")->data, kv);
    res->status = status;
    res->content_type = "text/html; charset=utf-8";
    http_response_set_header(res, "Cache-Control", "no-store");
}

void signin_handle_get(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    const char *identifier = http_request_query(req, "user-identifier");
    if (identifier && strlen(identifier) > MAX_IDENTIFIER)
        identifier = NULL;
    /* A federated domain hands "who is this user" to its identity provider (auth/oidc.c). */
    char *domain = domains_of_identifier(identifier);
    st_domain d = {0};
    if (domain && domains_lookup(app, domain, &d) == ST_OK && domains_is_oidc(&d)) {
        char *ident = lowercase_dup(identifier);
        oidc_begin(app, req, res, &d, ident);
        free(ident);
    } else {
        render_form(app, res, 200, identifier, NULL);
    }
    st_domain_cleanup(&d);
    free(domain);
}

static int csrf_ok(const http_request *req, const char *field)
{
    char cookie[SECRET_TOKEN_LEN + 2];
    if (field == NULL || http_request_cookie(req, CSRF_COOKIE, cookie, sizeof(cookie)) != 0)
        return 0;
    return secret_token_well_formed(cookie) && secret_equal(cookie, field);
}

/* The shared end of every sign-in (local and federated): token, audit, custom-scheme 308. */
void signin_finish(struct app *app, http_response *res, const st_user *user, const char *method)
{
    char token[SECRET_TOKEN_LEN + 1];
    if (session_issue(app, user->id, method, token) != 0) {
        signin_render_message(res, 503, "Try again later",
                              "The server could not complete sign-in.");
        return;
    }
    char *actor = xasprintf("user:%s", user->email);
    audit_record(app, actor, "token.issue", user->email, method);
    free(actor);
    char *location = xasprintf(
        "apple-remotemanagement-user-login://authentication-results?access-token=%s", token);
    res->status = 308;
    res->content_type = NULL;
    buf_reset(&res->body);
    http_response_set_header(res, "Location", location);
    http_response_set_header(res, "Cache-Control", "no-store");
    free(location);
}

void signin_handle_post(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    char *csrf = url_form_field(req->body, req->body_len, "csrf");
    char *ident_raw = url_form_field(req->body, req->body_len, "user-identifier");
    char *password = url_form_field(req->body, req->body_len, "password");
    char *ident = ident_raw ? lowercase_dup(ident_raw) : NULL;
    int64_t now = app_now(app);
    st_user user = {0};
    if (!csrf_ok(req, csrf)) {
        log_warn("event=signin_refused rid=%s reason=csrf remote=%s", req->request_id,
                 req->client_addr);
        signin_render_message(res, 403, "Session expired",
                              "This sign-in page has expired. Go back and start again.");
        goto out;
    }
    if (!ident || !password || strlen(ident) > MAX_IDENTIFIER || strlen(password) > MAX_PASSWORD) {
        render_form(app, res, 400, ident_raw, GENERIC_FAILURE);
        goto out;
    }
    if (ratelimit_blocked(app->signin_limit, ident, now) ||
        ratelimit_blocked(app->signin_limit, req->client_addr, now)) {
        log_warn("event=signin_refused rid=%s reason=rate_limited remote=%s", req->request_id,
                 req->client_addr);
        render_form(app, res, 429, ident_raw,
                    "Too many attempts. Wait a few minutes before trying again.");
        goto out;
    }
    /* A federated domain has no passwords here: its sign-in starts at GET (the IdP). */
    char *domain = domains_of_identifier(ident);
    st_domain d = {0};
    int federated = domain && domains_lookup(app, domain, &d) == ST_OK && domains_is_oidc(&d);
    st_domain_cleanup(&d);
    free(domain);
    if (federated || auth_provider_local.verify_password(app, ident, password, &user) != 0) {
        ratelimit_fail(app->signin_limit, ident, now);
        ratelimit_fail(app->signin_limit, req->client_addr, now);
        audit_record(app, "anonymous", "signin.fail", ident, req->client_addr);
        render_form(app, res, 401, ident_raw, GENERIC_FAILURE);
        goto out;
    }
    signin_finish(app, res, &user, auth_provider_local.name);
out:
    st_user_cleanup(&user);
    free(csrf);
    free(ident_raw);
    free(ident);
    if (password) {
        memset(password, 0, strlen(password));
        free(password);
    }
}
