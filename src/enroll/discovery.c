/*
 * Service discovery (PROTOCOL.md 3): the organisation's domain tells the device where to
 * enroll. Exactly one server entry; refusals are 403 with `com.apple.well-known.failed` so that
 * newer clients do not fall back to Apple's discovery for a domain we explicitly refuse.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "auth/domains.h"
#include "core/log.h"
#include "core/mem.h"
#include "enroll/enroll.h"
#include "routes.h"

/* The config list or the `domains` table (auth/domains.c: one indexed read, no cache to go
 * stale when `orchard domain` or the API changes a domain). */
int enroll_domain_served(const struct app *app, const char *domain)
{
    st_domain d;
    int rc = domains_lookup(app, domain, &d);
    st_domain_cleanup(&d);
    return rc == ST_OK ? 1 : rc == ST_ERROR ? ST_ERROR : 0;
}

/* Lowercase host of the Host header without the port; NULL if absent or unreasonable. */
static char *host_domain(const http_request *req)
{
    const char *h = http_request_header(req, "Host");
    if (h == NULL || strlen(h) > 255)
        return NULL;
    size_t n = h[0] == '[' ? strcspn(h, "]") + 1 : strcspn(h, ":");
    char *d = xstrndup(h, n);
    for (char *p = d; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return d;
}

/*
 * Text a person can type: valid UTF-8, no control characters, and no "%00" (the HTTP layer
 * leaves an encoded NUL encoded rather than cut the string at it).
 */
static int identifier_text_ok(const char *s)
{
    if (strstr(s, "%00") != NULL)
        return 0;
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        int n = *p < 0x80             ? 0
                : (*p & 0xe0) == 0xc0 ? 1
                : (*p & 0xf0) == 0xe0 ? 2
                : (*p & 0xf8) == 0xf0 ? 3
                                      : -1;
        if (n < 0 || *p < 0x20 || *p == 0x7f || (n == 1 && *p < 0xc2))
            return 0;
        for (int i = 1; i <= n; i++)
            if ((p[i] & 0xc0) != 0x80)
                return 0;
        p += n + 1;
    }
    return 1;
}

/*
 * The device splits the identifier at the last '@' (PROTOCOL.md 3.1); so do we. An identifier
 * longer than an e-mail address can be (254 octets, RFC 5321) is nobody's.
 */
static int identifier_domain_served(const struct app *app, const char *user)
{
    const char *at = strrchr(user, '@');
    if (at == NULL || at == user || strlen(user) > 254 || strlen(at + 1) > 255 ||
        !identifier_text_ok(user))
        return 0;
    char *d = xstrdup(at + 1);
    for (char *p = d; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    int ok = enroll_domain_served(app, d);
    free(d);
    return ok;
}

/*
 * The device families that can do account-driven User Enrollment (`mdm-byod`): iPhone, iPad,
 * Mac and Apple Vision Pro ("RealityDevice"), PROTOCOL.md 3.2 and 12. Apple TV and Apple Watch
 * have no User Enrollment, and a value Apple has not defined is nobody's device: those get the
 * explicit refusal, not a BaseURL whose enrollment could only fail later. A request without
 * model-family is answered (iOS/iPadOS 15 and 16 do not send it, 3.2). Exact spelling, as the
 * device sends it.
 */
static int model_family_byod(const char *family)
{
    static const char *const byod[] = {"iPhone", "iPad", "Mac", "RealityDevice"};
    if (family == NULL)
        return 1;
    for (size_t i = 0; i < sizeof(byod) / sizeof(byod[0]); i++) {
        if (strcmp(family, byod[i]) == 0)
            return 1;
    }
    return 0;
}

static void refuse(http_response *res, const char *why)
{
    buf_reset(&res->body);
    buf_printf(&res->body,
               "{\"code\":\"com.apple.well-known.failed\",\"description\":\"%s\","
               "\"message\":\"This account cannot be enrolled with this organisation.\"}",
               why);
    res->status = 403;
    res->content_type = "application/json";
}

void enroll_handle_discovery(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    char *domain = host_domain(req);
    const char *user = http_request_query(req, "user-identifier");
    int served = domain ? enroll_domain_served(app, domain) : 0;
    int user_served = served == 1 && user ? identifier_domain_served(app, user) : 1;
    if (served == ST_ERROR || user_served == ST_ERROR) {
        /* A refusal would make the device give up on (or fall back from) a domain we serve. */
        http_response_error(res, 503, "storage unavailable");
    } else if (served != 1) {
        log_info("event=discovery_refused rid=%s reason=unknown_domain", req->request_id);
        refuse(res, "unknown domain");
    } else if (user_served != 1) {
        log_info("event=discovery_refused rid=%s reason=identifier_domain", req->request_id);
        refuse(res, "identifier not in this domain");
    } else if (!model_family_byod(http_request_query(req, "model-family"))) {
        log_info("event=discovery_refused rid=%s reason=model_family", req->request_id);
        refuse(res, "this device family has no user enrollment");
    } else {
        buf_reset(&res->body);
        buf_printf(&res->body, "{\"Servers\":[{\"Version\":\"mdm-byod\",\"BaseURL\":\"%s%s%s\"}]}",
                   app->public_url, PATH_ENROLL, domain);
        res->status = 200;
        res->content_type = "application/json";
    }
    free(domain);
}
