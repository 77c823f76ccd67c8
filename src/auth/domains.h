/*
 * Organisation domains and how their people sign in. The config key `domains` lists local
 * domains (passwords in Orchard's own directory); the `domains` table (managed by
 * `orchard domain` and /api/v1/domains) overrides or extends it, and is where a domain is
 * federated to an OpenID Connect provider. This module resolves both into one st_domain,
 * fills the defaults and validates settings; it does no I/O besides storage reads.
 */
#ifndef ORCHARD_AUTH_DOMAINS_H
#define ORCHARD_AUTH_DOMAINS_H

#include <stddef.h>

#include "app.h"
#include "storage/storage.h"

#define DOMAINS_DEFAULT_SCOPES "openid email profile"
#define DOMAINS_DEFAULT_CLAIM "email"
#define DOMAINS_CALLBACK_PATH "/auth/oidc/callback"

/*
 * The settings of domain (lowercase) into out (caller cleans up): the table row if there is
 * one, else a local domain for a name listed in the config key `domains`. Returns 0,
 * ST_ENOTFOUND for a domain this server does not serve, or ST_ERROR (storage).
 */
int domains_lookup(const struct app *app, const char *domain, st_domain *out);

/* The lowercase domain part of an identifier (after the last '@'); NULL if there is none. */
char *domains_of_identifier(const char *identifier);

/* Effective values with the documented defaults applied (borrowed from d or static). */
const char *domains_scopes(const st_domain *d);
const char *domains_user_claim(const st_domain *d);
const char *domains_maid_claim(const st_domain *d);

/* 1 if d is federated (auth = oidc). */
int domains_is_oidc(const st_domain *d);

/*
 * Checks a domain's settings before they are stored: a plausible DNS name, auth local|oidc,
 * for oidc an https issuer and a client id, sane claim names and scopes containing "openid".
 * Returns 0, or -1 with a message for a person in err.
 */
int domains_validate(const st_domain *d, char *err, size_t err_len);

/* The redirect URI to register at the IdP: <public_url>/auth/oidc/callback (new string). */
char *domains_redirect_uri(const char *public_url);

#endif
