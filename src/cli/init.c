/*
 * `orchard init`: creates a data directory with its configuration, database and every
 * identity Orchard needs (TLS, SCEP CA, profile signer, development push identity).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "app.h"
#include "cli/cli.h"
#include "cli/common.h"
#include "core/buf.h"
#include "core/fs.h"
#include "core/mem.h"
#include "core/url.h"
#include "crypto/pki.h"

#define MAX_DOMAINS 32

struct init_opts {
    const char *data, *public_url, *storage;
    const char *domains[MAX_DOMAINS];
    int ndomains, force;
};

static void init_usage(FILE *f)
{
    fprintf(f,
            "usage: orchard init --data DIR --public-url https://HOST[:PORT] [--domain DOMAIN "
            "...] [--storage DSN] [--force]\n\n"
            "Creates DIR with orchard.conf, the database, a TLS CA and server certificate for\n"
            "HOST (DIR/tls/ca.pem), the SCEP CA, the profile-signing identity and a development\n"
            "push identity. --domain (repeatable) adds an organisation domain served by service\n"
            "discovery (default: HOST). Refuses to overwrite an existing DIR without --force.\n");
}

static int write_pem(const char *dir, const char *rel, const char *pem, int secret)
{
    char *path = xasprintf("%s/%s", dir, rel);
    int rc = fs_write_file(path, pem, strlen(pem), secret ? 0600 : 0644);
    if (rc != 0)
        perror(path);
    free(path);
    return rc;
}

/* Generates a CA and writes it; returns the parsed cert and key for issuing. */
static int make_ca(const char *dir, const char *cn, const char *cert_rel, const char *key_rel,
                   crypto_cert **cert, crypto_key **key)
{
    char *cpem = NULL, *kpem = NULL;
    int rc = -1;
    if (crypto_ca_generate(cn, 3650, &cpem, &kpem) != 0)
        goto out;
    if (write_pem(dir, cert_rel, cpem, 0) || write_pem(dir, key_rel, kpem, 1))
        goto out;
    if (cert && crypto_cert_from_pem(cpem, cert))
        goto out;
    if (key && crypto_key_from_pem(kpem, NULL, key))
        goto out;
    rc = 0;
out:
    free(cpem);
    free(kpem);
    return rc;
}

static int make_tls(const char *dir, const char *host)
{
    crypto_cert *ca = NULL;
    crypto_key *ca_key = NULL;
    char *cpem = NULL, *kpem = NULL, *capem = NULL;
    int rc = -1;
    if (make_ca(dir, "Orchard TLS CA", DATA_TLS_CA, DATA_TLS_CA_KEY, &ca, &ca_key) ||
        crypto_issue_tls_server(ca, ca_key, host, 825, &cpem, &kpem))
        goto out;
    capem = crypto_cert_to_pem(ca);
    char *chain = xasprintf("%s%s", cpem, capem); /* serve the chain, leaf first */
    rc = write_pem(dir, "tls/server.pem", chain, 0) || write_pem(dir, "tls/server.key", kpem, 1);
    free(chain);
out:
    crypto_cert_free(ca);
    crypto_key_free(ca_key);
    free(cpem);
    free(kpem);
    free(capem);
    return rc;
}

static int make_signer(const char *dir)
{
    crypto_cert *ca = NULL;
    crypto_key *ca_key = NULL;
    char *cpem = NULL, *kpem = NULL;
    int rc = -1;
    if (make_ca(dir, "Orchard Profile Signing CA", DATA_SIGNING_CA, DATA_SIGNING_CA_KEY, &ca,
                &ca_key) ||
        crypto_issue_signing(ca, ca_key, "Orchard Profile Signer", 1825, &cpem, &kpem))
        goto out;
    rc = write_pem(dir, DATA_SIGNING_CERT, cpem, 0) || write_pem(dir, DATA_SIGNING_KEY, kpem, 1);
out:
    crypto_cert_free(ca);
    crypto_key_free(ca_key);
    free(cpem);
    free(kpem);
    return rc;
}

static int make_push(const char *dir)
{
    char uuid[37], *cpem = NULL, *kpem = NULL;
    crypto_uuid(uuid);
    for (char *p = uuid; *p; p++)
        *p = (char)(*p >= 'A' && *p <= 'F' ? *p - 'A' + 'a' : *p);
    int rc = crypto_push_identity_generate(uuid, 365, &cpem, &kpem);
    if (rc == 0)
        rc = write_pem(dir, DATA_PUSH_CERT, cpem, 0) || write_pem(dir, DATA_PUSH_KEY, kpem, 1);
    free(cpem);
    free(kpem);
    return rc;
}

static int is_loopback(const char *host)
{
    return strncmp(host, "127.", 4) == 0 || strcmp(host, "localhost") == 0 ||
           strcmp(host, "::1") == 0;
}

static int write_conf(const struct init_opts *o, const char *host, int port)
{
    buf b;
    buf_init(&b, 0);
    buf_printf(&b, "# Orchard configuration, written by `orchard init`.\n"
                   "# Every key, its default and its meaning: `orchard config show --data DIR`.\n"
                   "# Environment variables ORCHARD_<KEY> override this file.\n\n");
    buf_printf(&b, "public_url = %s\n", o->public_url);
    buf_printf(&b, "listen = %s:%d\n", is_loopback(host) ? "127.0.0.1" : "0.0.0.0", port);
    buf_puts(&b, "domains = ");
    for (int i = 0; i < o->ndomains; i++)
        buf_printf(&b, "%s%s", i ? "," : "", o->domains[i]);
    if (o->ndomains == 0)
        buf_puts(&b, host);
    buf_printf(&b, "\nstorage = %s\n", o->storage ? o->storage : "sqlite:orchard.db");
    char *path = xasprintf("%s/%s", o->data, DATA_CONF);
    int rc = fs_write_file(path, b.data, b.len, 0600);
    if (rc != 0)
        perror(path);
    free(path);
    buf_cleanup(&b);
    return rc;
}

static int init_database(const char *dir)
{
    config *cfg = NULL;
    storage *st = NULL;
    if (cli_open(dir, &cfg, &st) != 0)
        return -1;
    storage_close(st);
    config_free(cfg);
    return 0;
}

static int parse_init(int argc, char **argv, struct init_opts *o)
{
    static const struct option longopts[] = {{"data", required_argument, NULL, 'd'},
                                             {"public-url", required_argument, NULL, 'u'},
                                             {"domain", required_argument, NULL, 'D'},
                                             {"storage", required_argument, NULL, 's'},
                                             {"force", no_argument, NULL, 'f'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'd':
            o->data = optarg;
            break;
        case 'u':
            o->public_url = optarg;
            break;
        case 's':
            o->storage = optarg;
            break;
        case 'f':
            o->force = 1;
            break;
        case 'D':
            if (o->ndomains == MAX_DOMAINS) {
                fprintf(stderr, "orchard init: at most %d domains\n", MAX_DOMAINS);
                return 2;
            }
            o->domains[o->ndomains++] = optarg;
            break;
        case 'h':
            init_usage(stdout);
            return 0;
        default:
            init_usage(stderr);
            return 2;
        }
    }
    if (o->data == NULL || o->public_url == NULL) {
        init_usage(stderr);
        return 2;
    }
    return -1; /* continue */
}

int cli_init(int argc, char **argv)
{
    struct init_opts o = {0};
    int rc = parse_init(argc, argv, &o);
    if (rc >= 0)
        return rc;
    char host[256];
    int port;
    if (url_host_port(o.public_url, host, sizeof(host), &port) != 0) {
        fprintf(stderr, "orchard init: --public-url must be https://HOST[:PORT]\n");
        return 2;
    }
    char *conf = xasprintf("%s/%s", o.data, DATA_CONF);
    int exists = fs_exists(conf);
    free(conf);
    if (exists && !o.force) {
        fprintf(stderr,
                "orchard init: %s already holds an Orchard data directory; use --force "
                "to overwrite it\n",
                o.data);
        return 1;
    }
    crypto_init();
    static const char *const subdirs[] = {"", "/tls", "/scep", "/signing", "/push"};
    for (size_t i = 0; i < sizeof(subdirs) / sizeof(subdirs[0]); i++) {
        char *d = xasprintf("%s%s", o.data, subdirs[i]);
        rc = fs_mkdirs(d, 0700);
        if (rc)
            perror(d);
        free(d);
        if (rc)
            return 1;
    }
    if (exists && o.storage == NULL) { /* --force: start from an empty database */
        char *db = xasprintf("%s/orchard.db", o.data);
        remove(db);
        char *wal = xasprintf("%s-wal", db), *shm = xasprintf("%s-shm", db);
        remove(wal);
        remove(shm);
        free(db);
        free(wal);
        free(shm);
    }
    if (make_tls(o.data, host) ||
        make_ca(o.data, "Orchard Device Identity CA", DATA_SCEP_CA, DATA_SCEP_CA_KEY, NULL, NULL) ||
        make_signer(o.data) || make_push(o.data) || write_conf(&o, host, port) ||
        init_database(o.data)) {
        fprintf(stderr, "orchard init: failed\n");
        return 1;
    }
    printf("Initialised %s for %s\n  TLS CA (trust it on test devices): %s/%s\n", o.data,
           o.public_url, o.data, DATA_TLS_CA);
    return 0;
}
