/*
 * `orchard pushcert`: the APNs push identity of a data directory (push/cert.pem, push/key.pem).
 *   csr     new private key (kept aside in push/pending.key until import) and the CSR to sign
 *   import  install a certificate from Apple (PEM + key, or PKCS#12), keeping the topic
 *   show    topic, subject and expiry of the installed certificate
 * The running server reads the identity at start: restart `orchard serve` after an import.
 * The steps with Apple's portal are in docs/PUSH.md.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "app.h"
#include "cli/cli.h"
#include "cli/common.h"
#include "core/fs.h"
#include "core/mem.h"
#include "crypto/pki.h"
#include "crypto/pushid.h"

#define DATA_PUSH_PENDING_KEY "push/pending.key"
#define TOPIC_PREFIX "com.apple.mgmt."
#define MAX_PASSWORD 1024

static void pushcert_usage(FILE *f)
{
    fprintf(f,
            "usage: orchard pushcert csr --data DIR [--out FILE] [--cn NAME]\n"
            "       orchard pushcert import --data DIR --cert FILE [--key FILE] "
            "[--password-stdin] [--force]\n"
            "       orchard pushcert show --data DIR\n\n"
            "csr writes a new private key to DIR/" DATA_PUSH_PENDING_KEY
            " (0600) and prints the CSR\n"
            "(or writes it to --out) for Apple's push certificate portal; see docs/PUSH.md.\n"
            "import installs the certificate Apple returned: --cert is a PEM certificate (its key\n"
            "from --key, PKCS#1/PKCS#8/encrypted PEM, else the pending key from csr) or a PKCS#12\n"
            "file with the key inside. --password-stdin reads the key or PKCS#12 password from\n"
            "stdin. A certificate whose topic (UID) differs from the installed one is refused\n"
            "without --force: every enrolled device would be orphaned. Restart orchard serve\n"
            "afterwards.\n");
}

struct pc_opts {
    const char *data, *cert, *key, *out, *cn;
    int password_stdin, force;
};

static char *data_path(const char *data, const char *rel)
{
    return xasprintf("%s/%s", data, rel);
}

static void print_cert(const crypto_cert *c)
{
    char *topic = crypto_cert_topic(c), *subject = crypto_cert_subject(c);
    time_t na = 0;
    crypto_cert_validity(c, NULL, &na);
    char when[64];
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime(&na));
    printf("topic:     %s\nsubject:   %s\nnot_after: %s (%lld days left)\n",
           topic ? topic : "(none)", subject, when, (long long)((na - time(NULL)) / 86400));
    free(topic);
    free(subject);
}

static int cmd_show(const struct pc_opts *o)
{
    char *path = data_path(o->data, DATA_PUSH_CERT);
    char *pem = fs_read_file(path, NULL);
    crypto_cert *c = NULL;
    int rc = 1;
    if (pem == NULL || crypto_cert_from_pem(pem, &c) != 0) {
        fprintf(stderr, "orchard: cannot read a certificate from %s\n", path);
        goto out;
    }
    print_cert(c);
    rc = 0;
out:
    crypto_cert_free(c);
    free(pem);
    free(path);
    return rc;
}

static int cmd_csr(const struct pc_opts *o)
{
    char *dir = data_path(o->data, "push");
    char *kpath = data_path(o->data, DATA_PUSH_PENDING_KEY);
    crypto_key *key = NULL;
    char *csr = NULL, *kpem = NULL;
    int rc = 1;
    if (!fs_exists(dir)) {
        fprintf(stderr, "orchard: %s does not exist (run orchard init first)\n", dir);
        goto out;
    }
    if (crypto_key_generate_rsa(2048, &key) != 0 ||
        crypto_csr_generate(key, o->cn ? o->cn : "Orchard MDM push", NULL, &csr) != 0) {
        fprintf(stderr, "orchard: cannot generate the key or CSR\n");
        goto out;
    }
    kpem = crypto_key_to_pem(key);
    if (fs_write_file(kpath, kpem, strlen(kpem), 0600) != 0) {
        perror(kpath);
        goto out;
    }
    if (o->out != NULL) {
        if (fs_write_file(o->out, csr, strlen(csr), 0644) != 0) {
            perror(o->out);
            goto out;
        }
        fprintf(stderr, "orchard: CSR written to %s; key kept in %s until import\n", o->out, kpath);
    } else {
        fputs(csr, stdout);
        fprintf(stderr, "orchard: key kept in %s until import\n", kpath);
    }
    rc = 0;
out:
    if (kpem != NULL)
        memset(kpem, 0, strlen(kpem));
    free(kpem);
    free(csr);
    crypto_key_free(key);
    free(dir);
    free(kpath);
    return rc;
}

/* Loads the certificate and key named by the options; prints the reason on failure. */
static int load_identity(const struct pc_opts *o, const char *password, int *used_pending,
                         crypto_cert **cert, crypto_key **key)
{
    size_t len = 0;
    char *raw = fs_read_file(o->cert, &len);
    char *kpath = NULL, *kpem = NULL;
    int rc = -1;
    *used_pending = 0;
    if (raw == NULL) {
        perror(o->cert);
        return -1;
    }
    if (strstr(raw, "-----BEGIN CERTIFICATE-----") == NULL) {
        /* Not PEM: a PKCS#12 bundle (.p12/.pfx) with the key inside. */
        int prc = crypto_pkcs12_parse((const uint8_t *)raw, len, password, cert, key);
        if (prc != 0)
            fprintf(stderr, "orchard: %s: %s\n", o->cert,
                    prc == CRYPTO_EINPUT ? "neither a PEM certificate nor PKCS#12"
                                         : "wrong password, or no key and certificate inside");
        else
            rc = 0;
        goto out;
    }
    if (crypto_cert_from_pem(raw, cert) != 0) {
        fprintf(stderr, "orchard: %s: not a PEM certificate\n", o->cert);
        goto out;
    }
    kpath = o->key ? xstrdup(o->key) : data_path(o->data, DATA_PUSH_PENDING_KEY);
    *used_pending = o->key == NULL;
    kpem = fs_read_file(kpath, NULL);
    if (kpem == NULL) {
        fprintf(stderr, "orchard: cannot read the key %s%s\n", kpath,
                o->key ? "" : " (give --key, or run pushcert csr first)");
        goto out;
    }
    if (crypto_key_from_pem(kpem, password, key) != 0) {
        fprintf(stderr, "orchard: %s: not a usable private key%s\n", kpath,
                password ? " (or a wrong password)" : " (encrypted? use --password-stdin)");
        goto out;
    }
    rc = 0;
out:
    if (kpem != NULL)
        memset(kpem, 0, strlen(kpem));
    free(kpem);
    free(kpath);
    free(raw);
    return rc;
}

static int cmd_import(const struct pc_opts *o)
{
    char *password = NULL, *cur_pem = NULL, *topic = NULL, *cur_topic = NULL;
    char *cpem = NULL, *kpem = NULL;
    char *cpath = data_path(o->data, DATA_PUSH_CERT), *kpath = data_path(o->data, DATA_PUSH_KEY);
    char *ppath = data_path(o->data, DATA_PUSH_PENDING_KEY);
    crypto_cert *cert = NULL, *cur = NULL;
    crypto_key *key = NULL;
    int rc = 1, used_pending = 0;
    if (o->password_stdin && (password = cli_read_stdin_line(MAX_PASSWORD)) == NULL) {
        fprintf(stderr, "orchard: no password on stdin\n");
        goto out;
    }
    if (load_identity(o, password, &used_pending, &cert, &key) != 0)
        goto out;
    if (!crypto_key_matches_cert(key, cert)) {
        fprintf(stderr, "orchard: the private key does not belong to the certificate\n");
        goto out;
    }
    topic = crypto_cert_topic(cert);
    if (topic == NULL) {
        fprintf(stderr, "orchard: the certificate has no UID: not an APNs push certificate\n");
        goto out;
    }
    if (strncmp(topic, TOPIC_PREFIX, strlen(TOPIC_PREFIX)) != 0 && !o->force) {
        fprintf(stderr,
                "orchard: topic %s is not an MDM topic (" TOPIC_PREFIX "...); use --force "
                "to install it anyway\n",
                topic);
        goto out;
    }
    time_t not_after = 0;
    crypto_cert_validity(cert, NULL, &not_after);
    if (not_after < time(NULL) && !o->force) {
        fprintf(stderr, "orchard: the certificate has expired; use --force to install it anyway\n");
        goto out;
    }
    /* Renewing must keep the topic (PROTOCOL.md section 11): devices keep the old one. */
    if ((cur_pem = fs_read_file(cpath, NULL)) != NULL && crypto_cert_from_pem(cur_pem, &cur) == 0 &&
        (cur_topic = crypto_cert_topic(cur)) != NULL && strcmp(cur_topic, topic) != 0) {
        if (!o->force) {
            fprintf(stderr,
                    "orchard: the new certificate's topic %s differs from the installed %s.\n"
                    "Every enrolled device would be orphaned (its enrollment profile names the "
                    "old topic).\nRenew the certificate with the same Apple Account instead, or "
                    "use --force.\n",
                    topic, cur_topic);
            goto out;
        }
        fprintf(stderr, "orchard: warning: replacing topic %s with %s (--force)\n", cur_topic,
                topic);
    }
    cpem = crypto_cert_to_pem(cert);
    kpem = crypto_key_to_pem(key);
    /* Key first: a cert.pem never points at a key that is not there yet. */
    if (fs_write_file(kpath, kpem, strlen(kpem), 0600) != 0) {
        perror(kpath);
        goto out;
    }
    if (fs_write_file(cpath, cpem, strlen(cpem), 0644) != 0) {
        perror(cpath);
        goto out;
    }
    if (used_pending)
        unlink(ppath);
    print_cert(cert);
    fprintf(stderr, "orchard: push certificate installed; restart orchard serve to use it\n");
    rc = 0;
out:
    if (password != NULL)
        memset(password, 0, strlen(password));
    if (kpem != NULL)
        memset(kpem, 0, strlen(kpem));
    free(password);
    free(kpem);
    free(cpem);
    free(cur_pem);
    free(topic);
    free(cur_topic);
    crypto_cert_free(cert);
    crypto_cert_free(cur);
    crypto_key_free(key);
    free(cpath);
    free(kpath);
    free(ppath);
    return rc;
}

int cli_pushcert(int argc, char **argv)
{
    static const struct option longopts[] = {{"data", required_argument, NULL, 'd'},
                                             {"cert", required_argument, NULL, 'c'},
                                             {"key", required_argument, NULL, 'k'},
                                             {"out", required_argument, NULL, 'o'},
                                             {"cn", required_argument, NULL, 'n'},
                                             {"password-stdin", no_argument, NULL, 'p'},
                                             {"force", no_argument, NULL, 'f'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        pushcert_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *sub = argv[1];
    struct pc_opts o = {0};
    int c;
    optind = 1;
    while ((c = getopt_long(argc - 1, argv + 1, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'd':
            o.data = optarg;
            break;
        case 'c':
            o.cert = optarg;
            break;
        case 'k':
            o.key = optarg;
            break;
        case 'o':
            o.out = optarg;
            break;
        case 'n':
            o.cn = optarg;
            break;
        case 'p':
            o.password_stdin = 1;
            break;
        case 'f':
            o.force = 1;
            break;
        case 'h':
            pushcert_usage(stdout);
            return 0;
        default:
            pushcert_usage(stderr);
            return 2;
        }
    }
    if (o.data == NULL || (strcmp(sub, "import") == 0 && o.cert == NULL)) {
        pushcert_usage(stderr);
        return 2;
    }
    if (crypto_init() != 0) {
        fprintf(stderr, "orchard: cannot initialise OpenSSL\n");
        return 1;
    }
    if (strcmp(sub, "csr") == 0)
        return cmd_csr(&o);
    if (strcmp(sub, "import") == 0)
        return cmd_import(&o);
    if (strcmp(sub, "show") == 0)
        return cmd_show(&o);
    fprintf(stderr, "orchard: unknown pushcert command \"%s\"\n", sub);
    pushcert_usage(stderr);
    return 2;
}
