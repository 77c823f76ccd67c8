/*
 * Web sign-in: GET renders the form (identifier pre-filled from `user-identifier`), POST checks
 * CSRF (double-submit cookie), rate limits (per identifier and per source address, IPv6 per
 * /64), asks the identity provider, and finishes with the custom-scheme redirect carrying a new
 * token. Failures show one generic message whatever went wrong, so the page cannot be used to
 * learn which accounts exist.
 *
 * A re-authentication challenge url carries a ticket (auth/reauth.h): the form keeps it in a
 * hidden input, and a failure with a valid ticket is the device holder's own attempt, which
 * counts towards reauth_max_failures; any other failure is only a `signin.fail`.
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
#include "auth/reauth.h"
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
    if (rc == ST_ERROR)
        return ST_ERROR;
    if (rc != 0 || user->password_hash == NULL || user->disabled) {
        secret_password_verify(dummy_hash, password);
        st_user_cleanup(user);
        return 1;
    }
    return secret_password_verify(user->password_hash, password) ? 0 : 1;
}

const struct auth_provider auth_provider_local = {"local", local_verify};

static void render_form(struct app *app, http_response *res, int status, const char *identifier,
                        const char *ticket, const char *error)
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
                        "identifier_readonly", identifier && identifier[0] ? "readonly" : "",
                        /* The re-authentication ticket of the challenge url (auth/reauth.h). */
                        "reauth", ticket ? ticket : "", NULL};
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

/*
 * The re-authentication ticket of the challenge url into ticket ("" if none or malformed). A
 * client that appends `?user-identifier=U` to a url that already has a query (PROTOCOL.md 5.1
 * only infers that the query is kept) turns the value into "T?user-identifier=U": then the
 * identifier comes from there too, unless the request also has it as a parameter of its own.
 */
static void request_ticket(const http_request *req, char *ticket, const char **identifier)
{
    static const char tail[] = "?user-identifier=";
    ticket[0] = '\0';
    const char *v = http_request_query(req, REAUTH_TICKET_PARAM);
    if (v == NULL)
        return;
    size_t n = strcspn(v, "?");
    if (n == SECRET_TOKEN_LEN) {
        memcpy(ticket, v, n);
        ticket[n] = '\0';
        if (!secret_token_well_formed(ticket))
            ticket[0] = '\0';
    }
    if (*identifier == NULL && strncmp(v + n, tail, sizeof(tail) - 1) == 0)
        *identifier = v + n + sizeof(tail) - 1;
}

/* The ticket of a POSTed form, or NULL: only something shaped like a ticket is looked at. */
static const char *form_ticket(const char *field)
{
    return field && secret_token_well_formed(field) ? field : NULL;
}

/*
 * Starting a federated sign-in stores a pending row and may fetch the IdP's metadata: each
 * start counts against its client address (IPv6: the /64), like a failed password. 1 if this
 * address has used up its starts (the page is filled in).
 */
static int oidc_start_limited(struct app *app, const http_request *req, http_response *res)
{
    char key[RATELIMIT_ADDR_KEY_LEN];
    int64_t now = app_now(app);
    ratelimit_addr_key("oidc-start", req->client_addr, key);
    if (app->oidc_start_limit == NULL)
        return 0;
    if (ratelimit_blocked(app->oidc_start_limit, key, now)) {
        log_warn("event=signin_refused rid=%s method=oidc reason=rate_limited remote=%s",
                 req->request_id, req->client_addr);
        signin_render_message(res, 429, "Too many attempts",
                              "Too many sign-ins were started from this network. Wait a few "
                              "minutes before trying again.");
        http_response_set_header(res, "Retry-After", "900");
        return 1;
    }
    ratelimit_fail(app->oidc_start_limit, key, now);
    return 0;
}

void signin_handle_get(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    char ticket[SECRET_TOKEN_LEN + 1];
    const char *identifier = http_request_query(req, "user-identifier");
    request_ticket(req, ticket, &identifier);
    if (identifier && strlen(identifier) > MAX_IDENTIFIER) {
        log_warn("event=signin_refused rid=%s reason=identifier_too_long", req->request_id);
        render_form(app, res, 400, NULL, ticket, GENERIC_FAILURE);
        return;
    }
    /* A federated domain hands "who is this user" to its identity provider (auth/oidc.c). */
    char *domain = domains_of_identifier(identifier);
    st_domain d = {0};
    int found = domain ? domains_lookup(app, domain, &d) : ST_ENOTFOUND;
    if (found == ST_ERROR) { /* never a password form for what may be a federated domain */
        signin_render_message(res, 503, "Try again later", "The server could not start sign-in.");
    } else if (found == ST_OK && domains_is_oidc(&d)) {
        if (!oidc_start_limited(app, req, res)) {
            char *ident = lowercase_dup(identifier);
            oidc_begin(app, req, res, &d, ident, ticket[0] ? ticket : NULL);
            free(ident);
        }
    } else {
        render_form(app, res, 200, identifier, ticket, NULL);
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
    char *ticket_raw = url_form_field(req->body, req->body_len, REAUTH_TICKET_PARAM);
    const char *ticket = form_ticket(ticket_raw);
    char *ident = ident_raw ? lowercase_dup(ident_raw) : NULL;
    char *reauth_of = NULL, *ident_key = NULL;
    char addr_key[RATELIMIT_ADDR_KEY_LEN];
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
        render_form(app, res, 400, ident_raw, ticket, GENERIC_FAILURE);
        goto out;
    }
    /* A re-authentication the device started is limited on its own key: otherwise anyone could
     * use up the identifier's budget with guesses and keep the real user from re-authenticating
     * until the grace period ran out (which would apply the failure action just the same). */
    reauth_of = reauth_ticket_owner(app, ident, ticket);
    ident_key = reauth_of ? xasprintf("reauth:%s", reauth_of) : xstrdup(ident);
    ratelimit_addr_key("signin", req->client_addr, addr_key);
    if (ratelimit_blocked(app->signin_limit, ident_key, now) ||
        ratelimit_blocked(app->signin_limit, addr_key, now)) {
        log_warn("event=signin_refused rid=%s reason=rate_limited remote=%s", req->request_id,
                 req->client_addr);
        render_form(app, res, 429, ident_raw, ticket,
                    "Too many attempts. Wait a few minutes before trying again.");
        goto out;
    }
    /* A federated domain has no passwords here: its sign-in starts at GET (the IdP). */
    char *domain = domains_of_identifier(ident);
    st_domain d = {0};
    int federated = domain && domains_lookup(app, domain, &d) == ST_OK && domains_is_oidc(&d);
    st_domain_cleanup(&d);
    free(domain);
    int verdict = federated ? 1 : auth_provider_local.verify_password(app, ident, password, &user);
    if (verdict == ST_ERROR) { /* our failure: no attempt to count, and nothing to guess from */
        signin_render_message(res, 503, "Try again later",
                              "The server could not complete sign-in.");
        goto out;
    }
    if (verdict != 0) {
        ratelimit_fail(app->signin_limit, ident_key, now);
        ratelimit_fail(app->signin_limit, addr_key, now);
        audit_record(app, "anonymous", "signin.fail", ident, req->client_addr);
        /* Only the holder of the device's challenge can fail its re-authentication; a password
         * POST for a federated domain is no attempt the page ever offered. */
        if (reauth_of && !federated) {
            char *detail = xasprintf("method=local remote=%s", req->client_addr);
            reauth_record_failure(app, reauth_of, detail);
            free(detail);
        }
        render_form(app, res, 401, ident_raw, ticket, GENERIC_FAILURE);
        goto out;
    }
    signin_finish(app, res, &user, auth_provider_local.name);
out:
    st_user_cleanup(&user);
    free(csrf);
    free(ident_raw);
    free(ident);
    free(ticket_raw);
    free(reauth_of);
    free(ident_key);
    if (password) {
        memset(password, 0, strlen(password));
        free(password);
    }
}

void signin_metrics(const struct app *app, buf *out)
{
    buf_printf(out,
               "# HELP orchard_rate_limited_total Requests refused because their client address "
               "(or identifier) used up its budget.\n"
               "# TYPE orchard_rate_limited_total counter\n"
               "orchard_rate_limited_total{limit=\"signin\"} %llu\n"
               "orchard_rate_limited_total{limit=\"scep\"} %llu\n"
               "orchard_rate_limited_total{limit=\"oidc_start\"} %llu\n",
               (unsigned long long)ratelimit_refused(app->signin_limit),
               (unsigned long long)ratelimit_refused(app->scep_limit),
               (unsigned long long)ratelimit_refused(app->oidc_start_limit));
}
