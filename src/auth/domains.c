/*
 * Organisation domains: the config list merged with the `domains` table (see domains.h).
 * Lookups read through storage (one primary-key read on a cached prepared statement), so a
 * change made by `orchard domain` or the API applies to the next request of every instance
 * without a reload.
 */
#include "auth/domains.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/mem.h"

#define MAX_CLAIM 64
#define MAX_URL 2048

static int listed_in_config(const struct app *app, const char *domain)
{
    for (int i = 0; i < app->ndomains; i++) {
        if (strcmp(app->domains[i], domain) == 0)
            return 1;
    }
    return 0;
}

int domains_lookup(const struct app *app, const char *domain, st_domain *out)
{
    memset(out, 0, sizeof(*out));
    int rc = storage_domain_get(app->st, domain, out);
    if (rc != ST_ENOTFOUND)
        return rc;
    if (!listed_in_config(app, domain))
        return ST_ENOTFOUND;
    out->name = xstrdup(domain);
    out->auth = xstrdup("local");
    return ST_OK;
}

char *domains_of_identifier(const char *identifier)
{
    const char *at = identifier ? strrchr(identifier, '@') : NULL;
    if (at == NULL || at == identifier || at[1] == '\0' || strlen(at + 1) > 253)
        return NULL;
    char *d = xstrdup(at + 1);
    for (char *p = d; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return d;
}

const char *domains_scopes(const st_domain *d)
{
    return d->scopes && d->scopes[0] ? d->scopes : DOMAINS_DEFAULT_SCOPES;
}

const char *domains_user_claim(const st_domain *d)
{
    return d->user_claim && d->user_claim[0] ? d->user_claim : DOMAINS_DEFAULT_CLAIM;
}

const char *domains_maid_claim(const st_domain *d)
{
    return d->maid_claim && d->maid_claim[0] ? d->maid_claim : DOMAINS_DEFAULT_CLAIM;
}

int domains_is_oidc(const st_domain *d)
{
    return d->auth != NULL && strcmp(d->auth, "oidc") == 0;
}

static int valid_dns_name(const char *s)
{
    size_t n = strlen(s), label = 0;
    if (n == 0 || n > 253)
        return 0;
    for (const char *p = s; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch == '.') {
            if (label == 0)
                return 0;
            label = 0;
        } else if (isalnum(ch) || ch == '-') {
            if (++label > 63)
                return 0;
        } else {
            return 0;
        }
    }
    return label > 0;
}

/* Printable ASCII without spaces or quotes: safe in JSON paths, logs and HTML. */
static int valid_token(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return 0;
    for (const char *p = s; *p; p++) {
        if (*p <= ' ' || *p > '~' || *p == '"' || *p == '\\')
            return 0;
    }
    return 1;
}

static int has_word(const char *list, const char *word)
{
    size_t wl = strlen(word);
    for (const char *p = list; *p;) {
        p += strspn(p, " ");
        size_t n = strcspn(p, " ");
        if (n == wl && strncmp(p, word, n) == 0)
            return 1;
        p += n;
    }
    return 0;
}

int domains_validate(const st_domain *d, char *err, size_t err_len)
{
    if (d->name == NULL || !valid_dns_name(d->name)) {
        snprintf(err, err_len, "the domain must be a DNS name such as example.com");
        return -1;
    }
    if (d->auth == NULL || (strcmp(d->auth, "local") != 0 && strcmp(d->auth, "oidc") != 0)) {
        snprintf(err, err_len, "auth must be \"local\" or \"oidc\"");
        return -1;
    }
    if (d->issuer && (strncmp(d->issuer, "https://", 8) != 0 || strlen(d->issuer) > MAX_URL ||
                      !valid_token(d->issuer, MAX_URL))) {
        snprintf(err, err_len, "the OIDC issuer must be an https:// URL");
        return -1;
    }
    if (d->client_id && !valid_token(d->client_id, 512)) {
        snprintf(err, err_len, "the OIDC client id must be printable ASCII without spaces");
        return -1;
    }
    if (d->client_secret && (strlen(d->client_secret) == 0 || strlen(d->client_secret) > 1024)) {
        snprintf(err, err_len, "the OIDC client secret must be 1 to 1024 characters");
        return -1;
    }
    if (d->ca_file && (d->ca_file[0] != '/' || strlen(d->ca_file) > 4096)) {
        snprintf(err, err_len, "the OIDC CA file must be an absolute path");
        return -1;
    }
    const char *claims[] = {d->user_claim, d->maid_claim, d->groups_claim};
    for (size_t i = 0; i < sizeof(claims) / sizeof(claims[0]); i++) {
        if (claims[i] && !valid_token(claims[i], MAX_CLAIM)) {
            snprintf(err, err_len, "claim names must be 1 to %d printable characters", MAX_CLAIM);
            return -1;
        }
    }
    if (d->scopes) {
        for (const char *p = d->scopes; *p; p++) {
            if (*p < ' ' || *p > '~' || *p == '"' || *p == '\\') {
                snprintf(err, err_len, "scopes must be printable ASCII separated by spaces");
                return -1;
            }
        }
        if (!has_word(d->scopes, "openid") || strlen(d->scopes) > 1024) {
            snprintf(err, err_len, "scopes must include \"openid\"");
            return -1;
        }
    }
    if (d->allowed_groups && strlen(d->allowed_groups) > 4096) {
        snprintf(err, err_len, "allowed groups: at most 4096 characters");
        return -1;
    }
    if (domains_is_oidc(d) && (d->issuer == NULL || d->client_id == NULL)) {
        snprintf(err, err_len, "an oidc domain needs an issuer and a client id");
        return -1;
    }
    return 0;
}

char *domains_redirect_uri(const char *public_url)
{
    return xasprintf("%s%s", public_url, DOMAINS_CALLBACK_PATH); /* = PATH_OIDC_CALLBACK */
}
