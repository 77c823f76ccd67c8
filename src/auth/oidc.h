/*
 * Federated sign-in over OpenID Connect (authorization code flow with PKCE S256, state and
 * nonce; OpenID Connect Core 1.0 section 3.1). It replaces only the "who is this user" step of
 * the web sign-in (auth/signin.c): the browser goes from GET /auth/signin to the
 * organisation's identity provider and comes back to GET /auth/oidc/callback, which exchanges
 * the code, validates the ID token with rhonabwy and hands the user to signin_finish(), the
 * same token issue, audit and custom-scheme redirect as a local sign-in.
 *
 * Pending sign-ins live in storage (state -> nonce, code verifier, identifier; single use, ten
 * minutes), so any instance can take the callback. Provider metadata and JWKS are cached in
 * memory per (issuer, CA file); the JWKS is fetched again when a token names an unknown `kid`
 * (key rotation). The IdP is never called with a lock held: one request fetches while the
 * others use what is cached (even stale) or wait at most a few seconds, and a failed fetch is
 * not retried for 30 s, so a slow or dead IdP delays only its own domain's sign-ins. All HTTP goes
 * through libcurl over https only, with the system trust store or the domain's CA file, no
 * redirects, bounded time and size.
 *
 * Never logged: the client secret, codes, tokens, nonces and verifiers.
 */
#ifndef ORCHARD_AUTH_OIDC_H
#define ORCHARD_AUTH_OIDC_H

#include <stddef.h>
#include <stdint.h>

#include "app.h"
#include "http/http.h"
#include "storage/storage.h"

#define OIDC_PENDING_TTL 600 /* seconds a sign-in may spend at the IdP */
#define OIDC_MAX_SKEW 300    /* tolerated clock difference with the IdP (iat, exp) */

typedef struct oidc_cache oidc_cache;

/* A cache of provider metadata and keys; thread-safe. Call oidc_cache_new before threads start
 * (it initialises libcurl). oidc_cache_free accepts NULL. */
oidc_cache *oidc_cache_new(void);
void oidc_cache_free(oidc_cache *c);

/*
 * GET /auth/signin?user-identifier=U for a federated domain d: records the pending sign-in and
 * answers 302 to the IdP's authorization endpoint (response_type=code, client_id,
 * redirect_uri=<public_url>/auth/oidc/callback, scope, state, nonce, code_challenge (S256),
 * login_hint=U, prompt=login so the IdP checks the person again even with a session there).
 * identifier is lowercase. reauth_ticket (may be NULL) is the re-authentication ticket of the
 * challenge url (auth/reauth.h), kept with the pending sign-in so that the callback's refusals
 * of the person count towards reauth_max_failures. Failures are friendly 4xx pages.
 */
void oidc_begin(struct app *app, http_request *req, http_response *res, const st_domain *d,
                const char *identifier, const char *reauth_ticket);

/* GET /auth/oidc/callback?code=...&state=... (or ?error=...&state=...). */
void oidc_handle_callback(void *ctx, http_request *req, http_response *res);

/*
 * What an ID token must satisfy (OpenID Connect Core 3.1.3.7). Exposed with
 * oidc_check_id_token for unit tests.
 */
struct oidc_expect {
    const char *issuer;      /* iss must equal it exactly */
    const char *client_id;   /* aud must contain it; azp, if present or aud has several, equal it */
    const char *nonce;       /* nonce must equal it */
    const char *const *algs; /* algorithms the provider announces; NULL-terminated */
    int64_t now;             /* wall clock, Unix seconds */
};

/*
 * Validates a compact-serialised ID token against the keys of a JWKS document (JSON text):
 * signature by the key named by `kid` (or, without kid, any key of the right type), only an
 * announced asymmetric algorithm (never `none`, never HS*), the key's type matching the
 * algorithm, then iss, aud/azp, exp, iat (within OIDC_MAX_SKEW), nonce and a non-empty sub.
 * Returns 0 and the claims (*claims, caller json_decref's; jansson json_t) on success; -1 with
 * a short reason in why otherwise; -2 when no key matches the token's kid (the caller may fetch
 * the JWKS again and retry once).
 */
int oidc_check_id_token(const char *id_token, const char *jwks_json, const struct oidc_expect *x,
                        void **claims, char *why, size_t why_len);

#endif
