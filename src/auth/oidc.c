/*
 * OpenID Connect federation: provider discovery and key cache, the redirect to the IdP, the
 * callback (code exchange, ID token validation, user mapping). See oidc.h for the contract.
 *
 * Why refusals are 4xx: the person is in a web view opened by the device; whatever went wrong
 * at the IdP, the page must say so plainly and end the flow without a token (PROTOCOL.md 5.1:
 * "If authentication fails, return an HTTP error to the web view"). Only our own storage
 * failing is a 503.
 */
#include "auth/oidc.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <rhonabwy.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "auth/audit.h"
#include "auth/domains.h"
#include "auth/reauth.h"
#include "auth/secret.h"
#include "auth/signin.h"
#include "core/buf.h"
#include "core/log.h"
#include "core/mem.h"
#include "core/url.h"
#include "crypto/pki.h"

#define OIDC_COOKIE "orchard_oidc"
#define OIDC_COOKIE_PATH "/auth/oidc"
#define OIDC_HTTP_TIMEOUT 10        /* seconds for one call to the IdP */
#define OIDC_HTTP_MAX (1024 * 1024) /* largest discovery/JWKS/token response */
#define OIDC_META_TTL 3600          /* provider metadata is fetched again after an hour */
#define OIDC_JWKS_TTL 3600          /* and the keys too, besides refetching on unknown kid */
#define OIDC_JWKS_MIN_REFETCH 1     /* seconds between refetches on unknown kid (see below) */
#define OIDC_NEGATIVE_TTL 30        /* a failed fetch is not retried for this long */
#define OIDC_FETCH_WAIT 2           /* seconds after a fetch starts that others wait for it */
#define OIDC_MAX_PROVIDERS 256
#define OIDC_MAX_PARAM 4096
#define OIDC_MAX_ALGS 16

#define AUTH_BASIC 1
#define AUTH_POST 2
#define AUTH_NONE 4

/* ---- HTTP to the IdP ---- */

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    buf *b = ud;
    return buf_append(b, p, size * n) == 0 ? size * n : 0;
}

/*
 * One https request (GET, or POST of a form body). Returns 0 with the status and the body
 * parsed as a JSON object in *out (any status), or -1 with a reason (transport, TLS, size,
 * not JSON). Never follows redirects: endpoints come from discovery and must answer directly.
 */
static int idp_call(const char *url, const char *ca_file, const char *form, const char *auth,
                    long *status, json_t **out, char *why, size_t why_len)
{
    *out = NULL;
    *status = 0;
    if (strncmp(url, "https://", 8) != 0) {
        snprintf(why, why_len, "not an https URL");
        return -1;
    }
    CURL *h = curl_easy_init();
    if (h == NULL) {
        snprintf(why, why_len, "curl_easy_init failed");
        return -1;
    }
    buf body;
    buf_init(&body, OIDC_HTTP_MAX);
    struct curl_slist *hdrs = curl_slist_append(NULL, "Accept: application/json");
    if (auth)
        hdrs = curl_slist_append(hdrs, auth);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, (long)OIDC_HTTP_TIMEOUT);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 5L);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "orchard-oidc");
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &body);
    if (ca_file && ca_file[0])
        curl_easy_setopt(h, CURLOPT_CAINFO, ca_file);
    if (form)
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, form);
    CURLcode cc = curl_easy_perform(h);
    int rc = -1;
    if (cc != CURLE_OK) {
        snprintf(why, why_len, "%s", curl_easy_strerror(cc));
        goto out;
    }
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
    json_error_t jerr;
    json_t *j = body.data ? json_loadb(body.data, body.len, 0, &jerr) : NULL;
    if (!json_is_object(j)) {
        json_decref(j);
        snprintf(why, why_len, "HTTP %ld without a JSON object", *status);
        goto out;
    }
    *out = j;
    rc = 0;
out:
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(h);
    buf_cleanup(&body);
    return rc;
}

/* ---- provider cache ---- */

/*
 * What the sign-in needs from one provider: its endpoints and algorithms (discovery) and its
 * keys (the JWKS document as JSON text, parsed by each callback that needs it). A request gets
 * its own copy, so nothing is shared once the cache lock is released.
 */
struct provider_view {
    char *authorization_endpoint, *token_endpoint, *jwks_uri;
    char *algs[OIDC_MAX_ALGS + 1]; /* id_token_signing_alg_values_supported, NULL-terminated */
    int auth_methods;              /* AUTH_* from token_endpoint_auth_methods_supported */
    char *jwks_json;
};

/*
 * One cache entry per (issuer, CA file). Every field is guarded by the cache's lock, which is
 * held only to read or swap them, never across a call to the IdP: a slow or dead IdP delays
 * only the sign-ins that need it, never another domain, a local sign-in or /healthz. One
 * request at a time fetches (fetching); the others use the data they already have, even stale,
 * or wait a little for the fetch (OIDC_FETCH_WAIT). A failure is remembered for
 * OIDC_NEGATIVE_TTL, during which the IdP is not asked again.
 */
struct oidc_provider {
    struct oidc_provider *next;
    char *key_issuer, *key_ca;     /* the cache key: configured issuer and CA file */
    struct provider_view cur;      /* owned; empty until the first successful fetch */
    int64_t meta_at, jwks_at;      /* when discovery / the JWKS were last fetched; 0 = never */
    int64_t failed_until;          /* negative cache: no call to the IdP before this */
    char failure[160];             /* why the last fetch failed (for the log and the refusal) */
    int fetching;                  /* a request is fetching, without the lock */
    struct timespec fetch_started; /* CLOCK_MONOTONIC, while fetching */
};

struct oidc_cache {
    pthread_mutex_t lock; /* guards the list and every entry; never held during I/O */
    pthread_cond_t fetched;
    struct oidc_provider *list;
    int n;
};

oidc_cache *oidc_cache_new(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    oidc_cache *c = xcalloc(1, sizeof(*c));
    pthread_mutex_init(&c->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->fetched, &ca);
    pthread_condattr_destroy(&ca);
    return c;
}

static void view_clear_meta(struct provider_view *v)
{
    free(v->authorization_endpoint);
    free(v->token_endpoint);
    free(v->jwks_uri);
    v->authorization_endpoint = v->token_endpoint = v->jwks_uri = NULL;
    for (int i = 0; v->algs[i]; i++) {
        free(v->algs[i]);
        v->algs[i] = NULL;
    }
    v->auth_methods = 0;
}

static void view_cleanup(struct provider_view *v)
{
    view_clear_meta(v);
    free(v->jwks_json);
    v->jwks_json = NULL;
}

static char *dup_or_null(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

static void view_copy(struct provider_view *dst, const struct provider_view *src)
{
    dst->authorization_endpoint = dup_or_null(src->authorization_endpoint);
    dst->token_endpoint = dup_or_null(src->token_endpoint);
    dst->jwks_uri = dup_or_null(src->jwks_uri);
    for (int i = 0; src->algs[i]; i++)
        dst->algs[i] = xstrdup(src->algs[i]);
    dst->auth_methods = src->auth_methods;
    dst->jwks_json = dup_or_null(src->jwks_json);
}

/* Moves the discovery part of src into dst (dst's old part is freed). */
static void view_take_meta(struct provider_view *dst, struct provider_view *src)
{
    view_clear_meta(dst);
    dst->authorization_endpoint = src->authorization_endpoint;
    dst->token_endpoint = src->token_endpoint;
    dst->jwks_uri = src->jwks_uri;
    memcpy(dst->algs, src->algs, sizeof(dst->algs));
    dst->auth_methods = src->auth_methods;
    src->authorization_endpoint = src->token_endpoint = src->jwks_uri = NULL;
    memset(src->algs, 0, sizeof(src->algs));
}

void oidc_cache_free(oidc_cache *c)
{
    if (c == NULL)
        return;
    while (c->list) {
        struct oidc_provider *p = c->list;
        c->list = p->next;
        view_cleanup(&p->cur);
        free(p->key_issuer);
        free(p->key_ca);
        free(p);
    }
    pthread_cond_destroy(&c->fetched);
    pthread_mutex_destroy(&c->lock);
    free(c);
    curl_global_cleanup();
}

/* The entry for (issuer, ca_file), created empty if new. Call with the lock held. NULL if full. */
static struct oidc_provider *provider_find(oidc_cache *c, const char *issuer, const char *ca_file)
{
    const char *ca = ca_file ? ca_file : "";
    struct oidc_provider *p = c->list;
    while (p && (strcmp(p->key_issuer, issuer) != 0 || strcmp(p->key_ca, ca) != 0))
        p = p->next;
    if (p == NULL && c->n < OIDC_MAX_PROVIDERS) {
        p = xcalloc(1, sizeof(*p));
        p->key_issuer = xstrdup(issuer);
        p->key_ca = xstrdup(ca);
        p->next = c->list;
        c->list = p;
        c->n++;
    }
    return p;
}

static char *https_member(json_t *o, const char *name)
{
    const char *s = json_string_value(json_object_get(o, name));
    if (s == NULL || strncmp(s, "https://", 8) != 0 || strlen(s) > OIDC_MAX_PARAM)
        return NULL;
    return xstrdup(s);
}

/* Discovery (OpenID Connect Discovery 1.0 section 4): {issuer}/.well-known/openid-configuration,
 * into the discovery part of out. No lock held. */
static int fetch_meta(const char *issuer, const char *ca, struct provider_view *out, char *why,
                      size_t why_len)
{
    size_t n = strlen(issuer);
    while (n > 0 && issuer[n - 1] == '/')
        n--;
    char *url = xasprintf("%.*s/.well-known/openid-configuration", (int)n, issuer);
    long status = 0;
    json_t *j = NULL;
    int rc = idp_call(url, ca, NULL, NULL, &status, &j, why, why_len);
    free(url);
    if (rc != 0)
        return -1;
    rc = -1;
    if (status != 200) {
        snprintf(why, why_len, "discovery answered HTTP %ld", status);
        goto out;
    }
    /* Section 4.3: the issuer in the document must be the one we asked, exactly. */
    const char *iss = json_string_value(json_object_get(j, "issuer"));
    if (iss == NULL || strcmp(iss, issuer) != 0) {
        snprintf(why, why_len, "discovery issuer does not match the configured issuer");
        goto out;
    }
    out->authorization_endpoint = https_member(j, "authorization_endpoint");
    out->token_endpoint = https_member(j, "token_endpoint");
    out->jwks_uri = https_member(j, "jwks_uri");
    if (!out->authorization_endpoint || !out->token_endpoint || !out->jwks_uri) {
        snprintf(why, why_len, "discovery lacks an https authorization, token or jwks endpoint");
        view_clear_meta(out);
        goto out;
    }
    json_t *algs = json_object_get(j, "id_token_signing_alg_values_supported");
    size_t i, k = 0;
    json_t *v;
    json_array_foreach(algs, i, v)
    {
        const char *a = json_string_value(v);
        if (a && k < OIDC_MAX_ALGS && strlen(a) < 16)
            out->algs[k++] = xstrdup(a);
    }
    if (k == 0) /* Discovery 1.0 section 3: RS256 is the default. */
        out->algs[k++] = xstrdup("RS256");
    out->auth_methods = 0;
    json_t *methods = json_object_get(j, "token_endpoint_auth_methods_supported");
    json_array_foreach(methods, i, v)
    {
        const char *m = json_string_value(v);
        if (m && strcmp(m, "client_secret_basic") == 0)
            out->auth_methods |= AUTH_BASIC;
        else if (m && strcmp(m, "client_secret_post") == 0)
            out->auth_methods |= AUTH_POST;
        else if (m && strcmp(m, "none") == 0)
            out->auth_methods |= AUTH_NONE;
    }
    if (!json_is_array(methods)) /* the default when absent */
        out->auth_methods = AUTH_BASIC;
    rc = 0;
out:
    json_decref(j);
    return rc;
}

/* Imports each key on its own, so one key rhonabwy cannot read does not hide the others. */
static jwks_t *jwks_from_json(json_t *doc)
{
    jwks_t *set = NULL;
    if (r_jwks_init(&set) != RHN_OK)
        return NULL;
    size_t i;
    json_t *k;
    json_array_foreach(json_object_get(doc, "keys"), i, k)
    {
        jwk_t *jwk = NULL;
        if (r_jwk_init(&jwk) == RHN_OK && r_jwk_import_from_json_t(jwk, k) == RHN_OK)
            r_jwks_append_jwk(set, jwk);
        r_jwk_free(jwk);
    }
    return set;
}

/* The key set of a cached JWKS document; NULL if it has no usable key. */
static jwks_t *jwks_from_text(const char *text)
{
    json_error_t jerr;
    json_t *doc = text ? json_loads(text, 0, &jerr) : NULL;
    jwks_t *set = doc ? jwks_from_json(doc) : NULL;
    json_decref(doc);
    if (set && r_jwks_size(set) == 0) {
        r_jwks_free(set);
        set = NULL;
    }
    return set;
}

/* The JWKS at jwks_uri as compact JSON text (*out, new), if it has a usable key. No lock held. */
static int fetch_jwks(const char *jwks_uri, const char *ca, char **out, char *why, size_t why_len)
{
    long status = 0;
    json_t *j = NULL;
    if (idp_call(jwks_uri, ca, NULL, NULL, &status, &j, why, why_len) != 0)
        return -1;
    int rc = -1;
    if (status != 200) {
        snprintf(why, why_len, "jwks_uri answered HTTP %ld", status);
    } else {
        jwks_t *set = jwks_from_json(j);
        if (set == NULL || r_jwks_size(set) == 0) {
            snprintf(why, why_len, "the JWKS has no usable key");
        } else {
            *out = json_dumps(j, JSON_COMPACT);
            rc = *out ? 0 : -1;
        }
        r_jwks_free(set);
    }
    json_decref(j);
    return rc;
}

/*
 * Fetches what the entry lacks (or has stale) with the lock released, then swaps it in: the
 * caller holds the lock and has set p->fetching; on return the lock is held again, fetching is
 * cleared and waiters are woken. A failure keeps whatever the entry had and opens the negative
 * cache. Returns 0 if everything asked for was fetched.
 */
static int provider_refresh(oidc_cache *c, struct oidc_provider *p, int want_meta, int want_jwks,
                            int64_t now)
{
    char *issuer = xstrdup(p->key_issuer), *ca = xstrdup(p->key_ca);
    char *jwks_uri = dup_or_null(p->cur.jwks_uri);
    struct provider_view meta = {0};
    char *jwks = NULL;
    char why[160] = "";
    pthread_mutex_unlock(&c->lock);

    int rc = want_meta ? fetch_meta(issuer, ca, &meta, why, sizeof(why)) : 0;
    if (rc == 0 && want_meta && meta.jwks_uri) {
        free(jwks_uri);
        jwks_uri = xstrdup(meta.jwks_uri);
    }
    if (rc == 0 && want_jwks)
        rc = jwks_uri ? fetch_jwks(jwks_uri, ca, &jwks, why, sizeof(why)) : -1;

    pthread_mutex_lock(&c->lock);
    if (rc == 0) {
        if (want_meta) {
            view_take_meta(&p->cur, &meta);
            p->meta_at = now;
        }
        if (want_jwks) {
            free(p->cur.jwks_json);
            p->cur.jwks_json = jwks;
            jwks = NULL;
            p->jwks_at = now;
        }
        p->failed_until = 0;
    } else {
        p->failed_until = now + OIDC_NEGATIVE_TTL;
        snprintf(p->failure, sizeof(p->failure), "%s", why[0] ? why : "no jwks_uri");
        log_warn("event=oidc_provider_fetch_failed issuer=%s err=\"%s\" retry_in=%d", issuer,
                 p->failure, OIDC_NEGATIVE_TTL);
    }
    p->fetching = 0;
    pthread_cond_broadcast(&c->fetched);
    view_cleanup(&meta);
    free(jwks);
    free(jwks_uri);
    free(issuer);
    free(ca);
    return rc;
}

/*
 * A copy of the provider's current data in *out (caller view_cleanup's), fetching discovery
 * and JWKS first if missing or older than their TTL. Stale data is used rather than waiting
 * for, or failing with, the IdP. Returns 0, or -1 with a reason when there is nothing usable.
 */
static int provider_get(oidc_cache *c, const char *issuer, const char *ca_file,
                        struct provider_view *out, char *why, size_t why_len)
{
    int rc = -1;
    pthread_mutex_lock(&c->lock);
    struct oidc_provider *p = provider_find(c, issuer, ca_file);
    if (p == NULL) {
        snprintf(why, why_len, "too many identity providers");
        goto out;
    }
    for (;;) {
        int64_t now = (int64_t)time(NULL);
        int meta_fresh = p->meta_at && now - p->meta_at < OIDC_META_TTL;
        int jwks_fresh = p->cur.jwks_json && now - p->jwks_at < OIDC_JWKS_TTL;
        int usable = p->meta_at && p->cur.jwks_json;
        if ((meta_fresh && jwks_fresh) || (usable && (p->fetching || p->failed_until > now))) {
            rc = 0;
            break;
        }
        if (p->failed_until > now) {
            snprintf(why, why_len, "%s (not retried for %llds)", p->failure,
                     (long long)(p->failed_until - now));
            break;
        }
        if (p->fetching) {
            /* Nothing cached and someone else is asking the IdP: wait for the answer, but only
             * while that fetch is young. A healthy IdP answers well within OIDC_FETCH_WAIT; a
             * slow one then costs each sign-in that arrives in those seconds a short wait, and
             * every later one none, so the workers stay free for everything else. */
            struct timespec deadline = p->fetch_started, t;
            deadline.tv_sec += OIDC_FETCH_WAIT;
            clock_gettime(CLOCK_MONOTONIC, &t);
            int late = t.tv_sec > deadline.tv_sec ||
                       (t.tv_sec == deadline.tv_sec && t.tv_nsec >= deadline.tv_nsec);
            if (late || (pthread_cond_timedwait(&c->fetched, &c->lock, &deadline) == ETIMEDOUT &&
                         p->fetching)) {
                snprintf(why, why_len, "identity provider is slow to answer");
                break;
            }
            continue;
        }
        p->fetching = 1;
        clock_gettime(CLOCK_MONOTONIC, &p->fetch_started);
        if (provider_refresh(c, p, !meta_fresh, !jwks_fresh, now) != 0 &&
            !(p->meta_at && p->cur.jwks_json)) {
            snprintf(why, why_len, "%s", p->failure);
            break;
        }
        rc = 0;
        break;
    }
    if (rc == 0)
        view_copy(out, &p->cur);
out:
    pthread_mutex_unlock(&c->lock);
    return rc;
}

/*
 * Key rotation: the JWKS again (a token named a kid we do not know), unless it was fetched
 * less than OIDC_JWKS_MIN_REFETCH ago, is being fetched, or the IdP failed recently. The
 * current document is copied into *jwks_json either way (caller frees). 0 if it was refetched.
 */
static int provider_refetch_jwks(oidc_cache *c, const char *issuer, const char *ca_file,
                                 char **jwks_json)
{
    int rc = -1;
    pthread_mutex_lock(&c->lock);
    struct oidc_provider *p = provider_find(c, issuer, ca_file);
    int64_t now = (int64_t)time(NULL);
    if (p && !p->fetching && p->failed_until <= now && p->cur.jwks_uri &&
        now - p->jwks_at >= OIDC_JWKS_MIN_REFETCH) {
        p->fetching = 1;
        clock_gettime(CLOCK_MONOTONIC, &p->fetch_started);
        rc = provider_refresh(c, p, 0, 1, now);
    }
    *jwks_json = p ? dup_or_null(p->cur.jwks_json) : NULL;
    pthread_mutex_unlock(&c->lock);
    return rc;
}

/* ---- ID token validation ---- */

/* The key type an algorithm needs; 0 for algorithms we refuse (none, HS*, unknown). */
static unsigned int alg_key_type(const char *alg)
{
    if (!strcmp(alg, "RS256") || !strcmp(alg, "RS384") || !strcmp(alg, "RS512") ||
        !strcmp(alg, "PS256") || !strcmp(alg, "PS384") || !strcmp(alg, "PS512"))
        return R_KEY_TYPE_RSA;
    if (!strcmp(alg, "ES256") || !strcmp(alg, "ES384") || !strcmp(alg, "ES512"))
        return R_KEY_TYPE_EC;
    if (!strcmp(alg, "EdDSA"))
        return R_KEY_TYPE_EDDSA;
    return 0;
}

/* A public signing key of the type the algorithm needs, not restricted to another use/alg. */
static int key_fits(jwk_t *k, const char *alg, unsigned int want)
{
    unsigned int bits = 0;
    int t = r_jwk_key_type(k, &bits, R_FLAG_IGNORE_REMOTE);
    if (!(t & R_KEY_TYPE_PUBLIC) || (t & (R_KEY_TYPE_PRIVATE | R_KEY_TYPE_SYMMETRIC)) ||
        !((unsigned int)t & want))
        return 0;
    if (want == R_KEY_TYPE_RSA && bits < 2048)
        return 0;
    const char *use = r_jwk_get_property_str(k, "use");
    const char *kalg = r_jwk_get_property_str(k, "alg");
    return (use == NULL || strcmp(use, "sig") == 0) && (kalg == NULL || strcmp(kalg, alg) == 0);
}

static int int_claim(json_t *claims, const char *name, int64_t *out)
{
    json_t *v = json_object_get(claims, name);
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return 0;
    }
    if (json_is_real(v)) {
        *out = (int64_t)json_real_value(v);
        return 0;
    }
    return -1;
}

static int check_claims(json_t *c, const struct oidc_expect *x, char *why, size_t why_len)
{
    const char *iss = json_string_value(json_object_get(c, "iss"));
    if (iss == NULL || strcmp(iss, x->issuer) != 0) {
        snprintf(why, why_len, "iss is not the issuer");
        return -1;
    }
    json_t *aud = json_object_get(c, "aud");
    size_t naud = 0, i;
    int has_us = 0;
    json_t *v;
    if (json_is_string(aud)) {
        naud = 1;
        has_us = strcmp(json_string_value(aud), x->client_id) == 0;
    } else {
        json_array_foreach(aud, i, v)
        {
            naud++;
            if (json_is_string(v) && strcmp(json_string_value(v), x->client_id) == 0)
                has_us = 1;
        }
    }
    if (!has_us) {
        snprintf(why, why_len, "aud does not contain the client id");
        return -1;
    }
    json_t *azp = json_object_get(c, "azp");
    if ((azp || naud > 1) &&
        (!json_is_string(azp) || strcmp(json_string_value(azp), x->client_id) != 0)) {
        snprintf(why, why_len, "azp is not the client id");
        return -1;
    }
    int64_t exp = 0, iat = 0;
    if (int_claim(c, "exp", &exp) != 0 || x->now >= exp + 30) {
        snprintf(why, why_len, "the ID token has expired");
        return -1;
    }
    if (int_claim(c, "iat", &iat) != 0 || iat > x->now + OIDC_MAX_SKEW ||
        iat < x->now - OIDC_MAX_SKEW) {
        snprintf(why, why_len, "iat is missing or too far from now");
        return -1;
    }
    const char *nonce = json_string_value(json_object_get(c, "nonce"));
    if (nonce == NULL || !secret_equal(nonce, x->nonce)) {
        snprintf(why, why_len, "nonce does not match");
        return -1;
    }
    const char *sub = json_string_value(json_object_get(c, "sub"));
    if (sub == NULL || sub[0] == '\0' || strlen(sub) > 255) {
        snprintf(why, why_len, "sub is missing");
        return -1;
    }
    return 0;
}

/* See oidc_check_id_token; keys from a parsed set. */
static int check_id_token(const char *token, jwks_t *keys, const struct oidc_expect *x,
                          json_t **claims, char *why, size_t why_len)
{
    *claims = NULL;
    jws_t *jws = NULL;
    jwk_t *key = NULL;
    json_t *c = NULL;
    int rc = -1;
    if (strlen(token) > 64 * 1024 || r_jws_init(&jws) != RHN_OK) {
        snprintf(why, why_len, "ID token too large");
        goto out;
    }
    /* R_PARSE_NONE: keys named in the header (jwk, jku, x5c, x5u) are ignored, and unsigned
     * tokens are refused by the parser before our own checks. */
    if (r_jws_advanced_compact_parse(jws, token, R_PARSE_NONE, R_FLAG_IGNORE_REMOTE) != RHN_OK) {
        snprintf(why, why_len, "the ID token is not a signed JWT");
        goto out;
    }
    const char *alg = r_jws_get_header_str_value(jws, "alg");
    unsigned int want = alg ? alg_key_type(alg) : 0;
    int announced = 0;
    for (int i = 0; alg && x->algs[i]; i++)
        announced |= strcmp(x->algs[i], alg) == 0;
    if (want == 0 || !announced) {
        snprintf(why, why_len, "algorithm %.16s is not allowed", alg ? alg : "(none)");
        goto out;
    }
    if (r_jws_get_header_json_t_value(jws, "crit") != NULL) {
        snprintf(why, why_len, "unsupported critical header");
        goto out;
    }
    const char *kid = r_jws_get_header_str_value(jws, "kid");
    if (kid) {
        key = r_jwks_get_by_kid(keys, kid);
        if (key == NULL) {
            snprintf(why, why_len, "no key with the token's kid");
            rc = -2;
            goto out;
        }
        if (!key_fits(key, alg, want)) {
            snprintf(why, why_len, "the key named by kid does not fit algorithm %s", alg);
            goto out;
        }
        if (r_jws_verify_signature(jws, key, R_FLAG_IGNORE_REMOTE) != RHN_OK) {
            snprintf(why, why_len, "bad signature");
            goto out;
        }
    } else {
        int verified = 0;
        for (size_t i = 0; !verified && i < r_jwks_size(keys); i++) {
            jwk_t *k = r_jwks_get_at(keys, i);
            verified = key_fits(k, alg, want) &&
                       r_jws_verify_signature(jws, k, R_FLAG_IGNORE_REMOTE) == RHN_OK;
            r_jwk_free(k);
        }
        if (!verified) {
            snprintf(why, why_len, "bad signature");
            goto out;
        }
    }
    size_t plen = 0;
    const unsigned char *payload = r_jws_get_payload(jws, &plen);
    json_error_t jerr;
    c = payload ? json_loadb((const char *)payload, plen, 0, &jerr) : NULL;
    if (!json_is_object(c)) {
        snprintf(why, why_len, "the ID token payload is not a JSON object");
        goto out;
    }
    if (check_claims(c, x, why, why_len) != 0)
        goto out;
    *claims = c;
    c = NULL;
    rc = 0;
out:
    json_decref(c);
    r_jwk_free(key);
    r_jws_free(jws);
    return rc;
}

int oidc_check_id_token(const char *id_token, const char *jwks_json, const struct oidc_expect *x,
                        void **claims, char *why, size_t why_len)
{
    *claims = NULL;
    json_error_t jerr;
    json_t *doc = json_loads(jwks_json, 0, &jerr);
    jwks_t *keys = doc ? jwks_from_json(doc) : NULL;
    json_decref(doc);
    if (keys == NULL) {
        snprintf(why, why_len, "bad JWKS");
        return -1;
    }
    json_t *c = NULL;
    int rc = check_id_token(id_token, keys, x, &c, why, why_len);
    r_jwks_free(keys);
    *claims = c;
    return rc;
}

/* ---- pages ---- */

static void clear_cookie(http_response *res)
{
    http_response_set_header(res, "Set-Cookie",
                             OIDC_COOKIE "=; Path=" OIDC_COOKIE_PATH
                                         "; Secure; HttpOnly; SameSite=Lax; Max-Age=0");
}

/*
 * A refusal: friendly page, log, and audit when it concerns an identifier (NULL: unknown state).
 * `ticket` is the re-authentication ticket of the pending sign-in when the refusal is about the
 * person (the IdP or Orchard said no to who signed in), NULL when it is about our side or the IdP's
 * health: with a valid ticket the refusal counts towards reauth_max_failures (auth/reauth.h).
 */
static void refuse(struct app *app, http_request *req, http_response *res, int status,
                   const char *ident, const char *ticket, const char *title, const char *message,
                   const char *reason)
{
    log_warn("event=signin_refused rid=%s method=oidc reason=\"%s\" remote=%s", req->request_id,
             reason, req->client_addr);
    /* Without an identifier (no pending sign-in: a bad, foreign or replayed state) the request
     * concerns no account, and anyone can send any number of them: the log line is enough,
     * the audit trail is not filled with it. */
    char *detail = xasprintf("oidc: %s (remote %s)", reason, req->client_addr);
    if (ident)
        audit_record(app, "anonymous", "signin.fail", ident, detail);
    if (ticket && ident)
        reauth_note_failure(app, ident, ticket, detail);
    free(detail);
    signin_render_message(res, status, title, message);
}

/* ---- begin ---- */

void oidc_begin(struct app *app, http_request *req, http_response *res, const st_domain *d,
                const char *identifier, const char *reauth_ticket)
{
    char why[256] = "";
    char state[SECRET_TOKEN_LEN + 1], nonce[SECRET_TOKEN_LEN + 1];
    char verifier[SECRET_TOKEN_LEN + 1], challenge[SECRET_TOKEN_LEN + 1];
    char state_hash[SECRET_HASH_LEN + 1];
    struct provider_view pv = {0};
    if (provider_get(app->oidc, d->issuer, d->ca_file, &pv, why, sizeof(why)) != 0) {
        log_warn("event=oidc_provider_unavailable rid=%s domain=%s issuer=%s err=\"%s\"",
                 req->request_id, d->name, d->issuer, why);
        /* 4xx by design (see the top of the file): 424, the IdP we depend on failed. Not the
         * person's failure, so it never counts towards a re-authentication. */
        refuse(app, req, res, 424, identifier, NULL, "Sign-in unavailable",
               "Your organisation's sign-in service cannot be reached right now. Try again in a "
               "few minutes.",
               "identity provider unavailable");
        return;
    }
    char *authz = pv.authorization_endpoint;
    pv.authorization_endpoint = NULL;
    view_cleanup(&pv);

    secret_new_token(state);
    secret_new_token(nonce);
    secret_new_token(verifier); /* 43 base64url characters: RFC 7636 4.1 */
    secret_sha256_b64url(verifier, challenge);
    secret_hash(state, state_hash);
    int64_t now = app_now(app);
    st_oidc_pending pend = {.state_hash = state_hash,
                            .domain = d->name,
                            .identifier = (char *)identifier,
                            .nonce = nonce,
                            .code_verifier = verifier,
                            .reauth_ticket = (char *)reauth_ticket,
                            .created_at = now,
                            .expires_at = now + OIDC_PENDING_TTL};
    if (storage_oidc_pending_add(app->st, &pend, now) != 0) {
        signin_render_message(res, 503, "Try again later", "The server could not start sign-in.");
        free(authz);
        return;
    }
    char *redirect_uri = domains_redirect_uri(app->public_url);
    buf u;
    buf_init(&u, 0);
    buf_puts(&u, authz);
    buf_puts(&u, strchr(authz, '?') ? "&" : "?");
    buf_puts(&u, "response_type=code&client_id=");
    url_encode(&u, d->client_id);
    buf_puts(&u, "&redirect_uri=");
    url_encode(&u, redirect_uri);
    buf_puts(&u, "&scope=");
    url_encode(&u, domains_scopes(d));
    buf_printf(&u, "&state=%s&nonce=%s&code_challenge=%s&code_challenge_method=S256", state, nonce,
               challenge);
    buf_puts(&u, "&login_hint=");
    url_encode(&u, identifier);
    /* Enrollment and re-authentication alike: the IdP must check the person now, not reuse a
     * session it may hold (PROTOCOL.md 7.2: a re-authentication has to really re-check). */
    buf_puts(&u, "&prompt=login");
    char *cookie = xasprintf("%s=%s; Path=%s; Secure; HttpOnly; SameSite=Lax; Max-Age=%d",
                             OIDC_COOKIE, state, OIDC_COOKIE_PATH, OIDC_PENDING_TTL);
    res->status = 302;
    res->content_type = NULL;
    buf_reset(&res->body);
    http_response_set_header(res, "Location", u.data);
    http_response_set_header(res, "Set-Cookie", cookie);
    http_response_set_header(res, "Cache-Control", "no-store");
    char sh[9];
    log_short_hash(state, strlen(state), sh);
    log_info("event=oidc_redirect rid=%s domain=%s issuer=%s state=%s", req->request_id, d->name,
             d->issuer, sh);
    free(cookie);
    buf_cleanup(&u);
    free(redirect_uri);
    free(authz);
}

/* ---- callback ---- */

/* POSTs the code to the token endpoint; returns the id_token (new string) or NULL + why. */
static char *exchange_code(struct app *app, const st_domain *d, const char *token_endpoint,
                           int methods, const char *code, const char *verifier, char *why,
                           size_t why_len)
{
    char *redirect_uri = domains_redirect_uri(app->public_url);
    char *auth = NULL, *id_token = NULL;
    buf f;
    buf_init(&f, 0);
    buf_puts(&f, "grant_type=authorization_code&code=");
    url_encode(&f, code);
    buf_puts(&f, "&redirect_uri=");
    url_encode(&f, redirect_uri);
    buf_puts(&f, "&code_verifier=");
    url_encode(&f, verifier);
    if (d->client_secret && (methods & AUTH_BASIC || !(methods & AUTH_POST))) {
        /* RFC 6749 2.3.1: id and secret are form-encoded before the Basic encoding. */
        buf cred;
        buf_init(&cred, 0);
        url_encode(&cred, d->client_id);
        buf_puts(&cred, ":");
        url_encode(&cred, d->client_secret);
        char *b64 = crypto_base64_encode(cred.data, cred.len);
        auth = xasprintf("Authorization: Basic %s", b64);
        memset(cred.data, 0, cred.len);
        buf_cleanup(&cred);
        memset(b64, 0, strlen(b64));
        free(b64);
    } else {
        buf_puts(&f, "&client_id=");
        url_encode(&f, d->client_id);
        if (d->client_secret) {
            buf_puts(&f, "&client_secret=");
            url_encode(&f, d->client_secret);
        }
    }
    long status = 0;
    json_t *j = NULL;
    if (idp_call(token_endpoint, d->ca_file, f.data, auth, &status, &j, why, why_len) != 0)
        goto out;
    const char *tok = json_string_value(json_object_get(j, "id_token"));
    if (status != 200 || tok == NULL) {
        const char *err = json_string_value(json_object_get(j, "error"));
        snprintf(why, why_len, "token endpoint answered HTTP %ld error=%.64s", status,
                 err ? err : (tok ? "-" : "no id_token"));
        goto out;
    }
    id_token = xstrdup(tok);
out:
    json_decref(j);
    if (auth) {
        memset(auth, 0, strlen(auth));
        free(auth);
    }
    memset(f.data, 0, f.len);
    buf_cleanup(&f);
    free(redirect_uri);
    return id_token;
}

/* 1 if the groups claim (array of strings, or one string) meets allowed (comma list). */
static int groups_ok(json_t *claims, const char *claim, const char *allowed)
{
    json_t *g = json_object_get(claims, claim);
    for (const char *p = allowed ? allowed : ""; *p;) {
        p += strspn(p, ", ");
        size_t n = strcspn(p, ",");
        while (n > 0 && p[n - 1] == ' ')
            n--;
        if (n == 0)
            break;
        size_t i;
        json_t *v;
        if (json_is_string(g) && strlen(json_string_value(g)) == n &&
            strncmp(json_string_value(g), p, n) == 0)
            return 1;
        json_array_foreach(g, i, v)
        {
            const char *s = json_string_value(v);
            if (s && strlen(s) == n && strncmp(s, p, n) == 0)
                return 1;
        }
        p += n;
        p += strspn(p, " ");
    }
    return 0;
}

/*
 * Finds or creates the Orchard user for validated claims. Returns 0 with *user filled, or -1
 * with reason (refusal), or -2 (storage failure).
 */
static int map_user(struct app *app, const st_domain *d, const char *identifier, json_t *claims,
                    st_user *user, const char **reason)
{
    const char *sub = json_string_value(json_object_get(claims, "sub"));
    int rc = storage_user_get_by_email(app->st, identifier, user);
    if (rc == ST_OK) {
        if (user->disabled) {
            *reason = "user disabled";
            return -1;
        }
        if (user->idp_subject == NULL) {
            /* First federated sign-in of an existing user: bind the IdP's subject. */
            if (storage_user_set_idp_subject(app->st, user->id, sub) != 0)
                return -2;
            user->idp_subject = xstrdup(sub);
            audit_record(app, "system", "user.idp_bind", identifier, d->issuer);
            return 0;
        }
        if (strcmp(user->idp_subject, sub) != 0) {
            *reason = "IdP subject differs from the one bound to the user";
            return -1;
        }
        return 0;
    }
    if (rc != ST_ENOTFOUND)
        return -2;
    if (!d->jit_users) {
        *reason = "no such user and just-in-time users are off";
        return -1;
    }
    const char *maid = json_string_value(json_object_get(claims, domains_maid_claim(d)));
    if (maid == NULL || strchr(maid, '@') == NULL || strlen(maid) > 320) {
        *reason = "the Managed Apple Account claim is missing";
        return -1;
    }
    st_user nu = {.email = (char *)identifier,
                  .managed_apple_id = (char *)maid,
                  .idp_subject = (char *)sub,
                  .created_at = app_now(app)};
    rc = storage_user_add(app->st, &nu);
    if (rc == ST_EEXISTS) /* created by a concurrent sign-in: go round once more */
        return map_user(app, d, identifier, claims, user, reason);
    if (rc != 0)
        return -2;
    audit_record(app, "system", "user.create_jit", identifier, d->issuer);
    return storage_user_get(app->st, nu.id, user) == 0 ? 0 : -2;
}

static int cookie_matches(const http_request *req, const char *state)
{
    char cookie[SECRET_TOKEN_LEN + 2];
    if (http_request_cookie(req, OIDC_COOKIE, cookie, sizeof(cookie)) != 0)
        return 0;
    return secret_token_well_formed(cookie) && secret_equal(cookie, state);
}

void oidc_handle_callback(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    const char *state = http_request_query(req, "state");
    const char *code = http_request_query(req, "code");
    const char *error = http_request_query(req, "error");
    st_oidc_pending pend = {0};
    st_domain d = {0};
    st_user user = {0};
    json_t *claims = NULL;
    char *id_token = NULL;
    char why[256] = "";
    const char *algs[OIDC_MAX_ALGS + 1] = {0};
    struct provider_view pv = {0};
    jwks_t *keys = NULL;
    char state_hash[SECRET_HASH_LEN + 1];
    static const char expired_title[] = "Sign-in expired";
    static const char expired_msg[] =
        "This sign-in has expired or was already used. Go back and start again.";
    static const char failed_title[] = "Sign-in failed";
    static const char failed_msg[] =
        "Your organisation's sign-in could not be confirmed. Go back and try again; if it keeps "
        "failing, contact your administrator.";

    http_response_set_header(res, "Content-Security-Policy",
                             "default-src 'none'; style-src 'unsafe-inline'");
    if (state == NULL || !secret_token_well_formed(state)) {
        refuse(app, req, res, 400, NULL, NULL, expired_title, expired_msg,
               "missing or malformed state");
        goto out;
    }
    /* The state must come back to the browser that started the sign-in: this stops a callback
     * URL made by someone else (their code, their state) from signing this person in. */
    if (!cookie_matches(req, state)) {
        refuse(app, req, res, 400, NULL, NULL, expired_title, expired_msg,
               "state not bound to this browser");
        goto out;
    }
    secret_hash(state, state_hash);
    int rc = storage_oidc_pending_take(app->st, state_hash, app_now(app), &pend);
    if (rc == ST_ENOTFOUND) {
        refuse(app, req, res, 400, NULL, NULL, expired_title, expired_msg,
               "unknown, used or expired state");
        goto out;
    }
    if (rc != 0) {
        signin_render_message(res, 503, "Try again later",
                              "The server could not complete sign-in.");
        goto out;
    }
    clear_cookie(res);
    if (error) {
        /* access_denied: the IdP (or the person at it) said no to this person; other errors
         * are the IdP's trouble and never count against a re-authentication. */
        int cancelled = strcmp(error, "access_denied") == 0;
        char *reason = xasprintf("IdP error %.64s", error);
        refuse(app, req, res, cancelled ? 403 : 400, pend.identifier,
               cancelled ? pend.reauth_ticket : NULL,
               cancelled ? "Sign-in cancelled" : failed_title,
               cancelled ? "Sign-in was cancelled, so this device was not enrolled. Go back to "
                           "start again."
                         : failed_msg,
               reason);
        free(reason);
        goto out;
    }
    if (code == NULL || code[0] == '\0' || strlen(code) > OIDC_MAX_PARAM) {
        refuse(app, req, res, 400, pend.identifier, NULL, failed_title, failed_msg, "no code");
        goto out;
    }
    rc = domains_lookup(app, pend.domain, &d);
    if (rc != ST_OK || !domains_is_oidc(&d)) {
        if (rc == ST_ERROR) {
            signin_render_message(res, 503, "Try again later",
                                  "The server could not complete sign-in.");
            goto out;
        }
        refuse(app, req, res, 400, pend.identifier, NULL, failed_title, failed_msg,
               "domain is no longer federated");
        goto out;
    }
    /* RFC 9207: an IdP that names itself in the response must be the one we sent the person
     * to (mix-up defence when several domains use different IdPs). */
    const char *iss_param = http_request_query(req, "iss");
    if (iss_param && strcmp(iss_param, d.issuer) != 0) {
        refuse(app, req, res, 400, pend.identifier, NULL, failed_title, failed_msg,
               "iss parameter is not the domain's issuer");
        goto out;
    }
    if (provider_get(app->oidc, d.issuer, d.ca_file, &pv, why, sizeof(why)) != 0) {
        refuse(app, req, res, 424, pend.identifier, NULL, "Sign-in unavailable",
               "Your organisation's sign-in service cannot be reached right now. Try again in a "
               "few minutes.",
               why[0] ? why : "identity provider unavailable");
        goto out;
    }
    id_token = exchange_code(app, &d, pv.token_endpoint, pv.auth_methods, code, pend.code_verifier,
                             why, sizeof(why));
    if (id_token == NULL) {
        refuse(app, req, res, 400, pend.identifier, NULL, failed_title, failed_msg, why);
        goto out;
    }
    /* The ID token is checked against the IdP's clock, i.e. the real one (time(NULL)), while
     * state expiry above follows the server's clock (app_now, movable in test builds). */
    for (int i = 0; pv.algs[i]; i++)
        algs[i] = pv.algs[i];
    struct oidc_expect x = {.issuer = d.issuer,
                            .client_id = d.client_id,
                            .nonce = pend.nonce,
                            .algs = algs,
                            .now = time(NULL)};
    keys = jwks_from_text(pv.jwks_json);
    rc = keys ? check_id_token(id_token, keys, &x, &claims, why, sizeof(why)) : -2;
    /* Key rotation: a kid we do not know yet means the IdP published new keys. The token came
     * straight from the IdP's token endpoint over verified TLS, so refetching cannot be
     * triggered by a third party at will; the short minimum interval only stops a loop. */
    if (rc == -2) {
        char *fresh = NULL;
        if (provider_refetch_jwks(app->oidc, d.issuer, d.ca_file, &fresh) == 0) {
            r_jwks_free(keys);
            keys = jwks_from_text(fresh);
            rc = keys ? check_id_token(id_token, keys, &x, &claims, why, sizeof(why)) : -2;
        } else {
            log_warn("event=oidc_jwks_refetch_skipped issuer=%s", d.issuer);
        }
        free(fresh);
    }
    if (rc != 0) {
        /* A token we cannot verify is the IdP's or an attacker's doing, not the person's. */
        char *reason = xasprintf("ID token refused: %s", why);
        refuse(app, req, res, 403, pend.identifier, NULL, failed_title, failed_msg, reason);
        free(reason);
        goto out;
    }
    const char *uclaim = domains_user_claim(&d);
    const char *who = json_string_value(json_object_get(claims, uclaim));
    if (who == NULL || strcasecmp(who, pend.identifier) != 0) {
        refuse(app, req, res, 403, pend.identifier, pend.reauth_ticket, "Different account",
               "You signed in with a different account than the one entered on the device. Go "
               "back and sign in as the account you entered.",
               "user claim does not match the identifier typed");
        goto out;
    }
    if (strcmp(uclaim, "email") == 0 && json_is_false(json_object_get(claims, "email_verified"))) {
        refuse(app, req, res, 403, pend.identifier, pend.reauth_ticket, failed_title, failed_msg,
               "email not verified at the IdP");
        goto out;
    }
    if (d.groups_claim && d.groups_claim[0] &&
        !groups_ok(claims, d.groups_claim, d.allowed_groups)) {
        refuse(app, req, res, 403, pend.identifier, pend.reauth_ticket, "Not allowed",
               "Your account is not allowed to enroll devices. Contact your administrator.",
               "not in an allowed group");
        goto out;
    }
    const char *reason = NULL;
    rc = map_user(app, &d, pend.identifier, claims, &user, &reason);
    if (rc == -1) {
        refuse(app, req, res, 403, pend.identifier, pend.reauth_ticket, failed_title, failed_msg,
               reason);
        goto out;
    }
    if (rc != 0) {
        signin_render_message(res, 503, "Try again later",
                              "The server could not complete sign-in.");
        goto out;
    }
    log_info("event=signin_ok rid=%s method=oidc domain=%s user=%lld", req->request_id, d.name,
             (long long)user.id);
    signin_finish(app, res, &user, "oidc");
out:
    r_jwks_free(keys);
    view_cleanup(&pv);
    json_decref(claims);
    if (id_token) {
        memset(id_token, 0, strlen(id_token));
        free(id_token);
    }
    st_user_cleanup(&user);
    st_domain_cleanup(&d);
    st_oidc_pending_cleanup(&pend);
}
