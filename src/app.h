/*
 * The application context passed explicitly to every service and handler (STYLE.md: no
 * mutable globals beyond the logger). Built once by `orchard serve` (src/cli/serve.c) and
 * read-only afterwards, except for the members documented as internally synchronised.
 */
#ifndef ORCHARD_APP_H
#define ORCHARD_APP_H

#include <stdatomic.h>
#include <stdint.h>

#include "core/config.h"
#include "crypto/pki.h"
#include "storage/storage.h"

/* The data directory layout written by `orchard init` (paths relative to the directory). */
#define DATA_CONF "orchard.conf"
#define DATA_TLS_CA "tls/ca.pem"
#define DATA_TLS_CA_KEY "tls/ca.key"
#define DATA_SCEP_CA "scep/ca.pem"
#define DATA_SCEP_CA_KEY "scep/ca.key"
#define DATA_SIGNING_CA "signing/ca.pem"
#define DATA_SIGNING_CA_KEY "signing/ca.key"
#define DATA_SIGNING_CERT "signing/cert.pem"
#define DATA_SIGNING_KEY "signing/key.pem"
#define DATA_PUSH_CERT "push/cert.pem"
#define DATA_PUSH_KEY "push/key.pem"

typedef struct scep_ca scep_ca;
typedef struct ratelimit ratelimit;
typedef struct http_server http_server;
typedef struct pusher pusher;
typedef struct oidc_cache oidc_cache;
typedef struct webhooks webhooks;
typedef struct job_worker job_worker;

struct app {
    config *cfg;
    storage *st;
    char *public_url; /* without a trailing slash */
    char **domains;   /* organisation domains served by discovery, lowercase */
    int ndomains;
    char *topic;            /* APNs topic from the push identity (UID) */
    int64_t push_not_after; /* expiry of the push certificate (Unix seconds) */
    char *push_subject;     /* its subject (RFC 2253) */
    pusher *pusher;         /* the push outbox worker (push/pusher.h); NULL outside serve */
    webhooks *webhooks;     /* the webhook delivery thread (webhook/webhook.h); NULL if off */
    job_worker *job_worker; /* the durable-job worker (jobs/worker.h); NULL outside serve */

    crypto_cert *scep_ca_cert; /* device identity CA */
    char *scep_ca_pem;         /* the same, for TLS client-certificate requests */
    scep_ca *scep;
    crypto_cert *signer_cert; /* profile-signing identity */
    crypto_key *signer_key;
    crypto_cert *signer_ca;

    ratelimit *signin_limit;      /* internally synchronised */
    ratelimit *scep_limit;        /* SCEP refusals per client address (enroll/scep.c) */
    ratelimit *oidc_start_limit;  /* federated sign-ins started per client address */
    unsigned char reauth_key[32]; /* re-authentication ticket key (auth/reauth.h), from the */
    int reauth_key_set;           /* store at start-up; never logged */
    oidc_cache *oidc;             /* OIDC provider metadata and keys; internally synchronised */
    http_server *http;

    int debug_clock;            /* test builds of the data dir may move time forward */
    int debug_faults;           /* tests may inject storage failures (debug_faults) */
    _Atomic int64_t clock_skew; /* seconds added to the wall clock (debug_clock only) */
};

/* The server's notion of now, in Unix seconds (wall clock + debug skew). */
int64_t app_now(const struct app *app);

/*
 * Loads the identities (SCEP CA, profile signer, push topic) named by the data directory
 * layout into app. Returns 0, or -1 with a message in err.
 */
int app_load_identities(struct app *app, char *err, size_t err_len);
void app_cleanup(struct app *app);

#endif
