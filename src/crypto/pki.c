/*
 * pki.h over OpenSSL 3: identity generation, certificate and key handling, random, hashing
 * and base64. Every failure path clears OpenSSL's thread-local error queue (crypto_fail) so an
 * error from one request can never be reported by the next one on the same thread.
 */
#include "crypto/pki.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "core/log.h"
#include "core/mem.h"
#include "crypto/crypto_int.h"

#define RSA_BITS 2048
#define CLOCK_SKEW_SECONDS 300
#define PUSH_TOPIC_PREFIX "com.apple.mgmt.External."

/* Set once under init_once: the only process-wide state of the module. */
static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int init_result;
static OSSL_PROVIDER *default_provider, *legacy_provider;

/* OpenSSL's own exit-time cleanup cannot free a provider that is still referenced, and the
 * legacy provider's child library context then shows up as a leak in sanitizer builds. This
 * runs first (atexit is LIFO and OpenSSL registered its handler when it was initialised). */
static void unload_providers(void)
{
    if (legacy_provider != NULL)
        OSSL_PROVIDER_unload(legacy_provider);
    if (default_provider != NULL)
        OSSL_PROVIDER_unload(default_provider);
}

static void init_providers(void)
{
    /* Loading any provider by hand stops OpenSSL from loading "default" implicitly. */
    default_provider = OSSL_PROVIDER_load(NULL, "default");
    legacy_provider = OSSL_PROVIDER_load(NULL, "legacy");
    if (default_provider == NULL || legacy_provider == NULL)
        init_result = crypto_fail("provider_load", CRYPTO_EINTERNAL);
    atexit(unload_providers);
}

int crypto_init(void)
{
    pthread_once(&init_once, init_providers);
    return init_result;
}

int crypto_fail(const char *op, int code)
{
    char detail[256] = "none";
    unsigned long e = ERR_peek_last_error();

    if (e != 0)
        ERR_error_string_n(e, detail, sizeof detail);
    log_debug("event=crypto_error op=%s code=%d detail=\"%s\"", op, code, detail);
    ERR_clear_error();
    return code;
}

static int time_to_time_t(const ASN1_TIME *t, time_t *out);

crypto_cert *crypto_cert_wrap_hashed(X509 *x509, const uint8_t sha256[32])
{
    crypto_cert *cert = xmalloc(sizeof *cert);
    cert->x509 = x509;
    memcpy(cert->sha256, sha256, sizeof cert->sha256);
    if (time_to_time_t(X509_get0_notBefore(x509), &cert->not_before) != 0 ||
        time_to_time_t(X509_get0_notAfter(x509), &cert->not_after) != 0)
        cert->not_before = cert->not_after = 0;
    return cert;
}

crypto_cert *crypto_cert_wrap(X509 *x509)
{
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (!X509_digest(x509, EVP_sha256(), md, &n) || n != 32) {
        crypto_fail("cert_digest", CRYPTO_EINTERNAL);
        log_error("event=crypto_sha256_failed");
        abort();
    }
    return crypto_cert_wrap_hashed(x509, md);
}

crypto_cert *crypto_cert_ref(const crypto_cert *cert)
{
    X509_up_ref(cert->x509);
    return crypto_cert_wrap_hashed(cert->x509, cert->sha256);
}

static void hex_lower(const uint8_t *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

/* The contents of a memory BIO as a new string ("" when empty). */
static char *bio_to_string(BIO *bio)
{
    char *data = NULL;
    long n = BIO_get_mem_data(bio, &data);
    return n > 0 ? xstrndup(data, (size_t)n) : xstrdup("");
}

char *crypto_name_string(const X509_NAME *name)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *s = NULL;

    /* RFC 2253 minus ESC_MSB: non-ASCII stays UTF-8 instead of becoming \C3\A9 escapes. */
    if (bio != NULL &&
        X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB) >= 0)
        s = bio_to_string(bio);
    BIO_free(bio);
    if (s == NULL) {
        crypto_fail("name_string", CRYPTO_EINTERNAL);
        s = xstrdup("");
    }
    return s;
}

/* ---- Issuing ---- */

static int set_random_serial(X509 *x)
{
    uint8_t bytes[16];
    crypto_random(bytes, sizeof bytes);
    /* Positive (RFC 5280 4.1.2.2) and a fixed 16-byte encoding. */
    bytes[0] = (uint8_t)((bytes[0] & 0x7f) | 0x40);
    BIGNUM *bn = BN_bin2bn(bytes, sizeof bytes, NULL);
    int ok = bn != NULL && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL;
    BN_free(bn);
    return ok;
}

static int add_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *value)
{
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
    int ok = ext != NULL && X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok;
}

static int add_exts(X509 *x, const crypto_cert *issuer, const struct crypto_ext *exts)
{
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer ? issuer->x509 : x, x, NULL, NULL, 0);
    if (!add_ext(x, &ctx, NID_subject_key_identifier, "hash"))
        return 0;
    if (issuer != NULL && !add_ext(x, &ctx, NID_authority_key_identifier, "keyid:always"))
        return 0;
    for (const struct crypto_ext *e = exts; e->nid != 0; e++)
        if (!add_ext(x, &ctx, e->nid, e->value))
            return 0;
    return 1;
}

int crypto_x509_issue(const X509_NAME *subject, EVP_PKEY *pubkey, const crypto_cert *issuer,
                      EVP_PKEY *sign_key, int days, const struct crypto_ext *exts, X509 **out)
{
    return crypto_x509_issue_at(subject, pubkey, issuer, sign_key, days, 0, exts, out);
}

int crypto_x509_issue_at(const X509_NAME *subject, EVP_PKEY *pubkey, const crypto_cert *issuer,
                         EVP_PKEY *sign_key, int days, time_t at, const struct crypto_ext *exts,
                         X509 **out)
{
    X509 *x = NULL;
    time_t *from = at > 0 ? &at : NULL; /* NULL: OpenSSL reads the wall clock */
    int rc = CRYPTO_EINPUT;

    if (days <= 0 || days > 36500)
        goto out;
    rc = CRYPTO_EINTERNAL;
    x = X509_new();
    if (x == NULL || !X509_set_version(x, X509_VERSION_3) || !set_random_serial(x) ||
        !X509_set_subject_name(x, subject) ||
        !X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer->x509) : subject) ||
        !X509_set_pubkey(x, pubkey) ||
        X509_time_adj_ex(X509_getm_notBefore(x), 0, -CLOCK_SKEW_SECONDS, from) == NULL ||
        X509_time_adj_ex(X509_getm_notAfter(x), days, 0, from) == NULL ||
        !add_exts(x, issuer, exts) || X509_sign(x, sign_key, EVP_sha256()) <= 0)
        goto out;
    *out = x;
    x = NULL;
    rc = 0;
out:
    X509_free(x);
    return rc ? crypto_fail("x509_issue", rc) : 0;
}

/* Subject "UID=uid, CN=cn" (uid may be NULL). */
static X509_NAME *make_name(const char *uid, const char *cn)
{
    X509_NAME *name = X509_NAME_new();
    if (name == NULL ||
        (uid != NULL && !X509_NAME_add_entry_by_NID(name, NID_userId, MBSTRING_UTF8,
                                                    (const unsigned char *)uid, -1, -1, 0)) ||
        !X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8, (const unsigned char *)cn,
                                    -1, -1, 0)) {
        X509_NAME_free(name);
        return NULL;
    }
    return name;
}

/*
 * Creates a fresh RSA key, a certificate for it (self-signed when ca is NULL) and returns both
 * as PEM.
 */
static int issue_pem(const char *uid, const char *cn, const crypto_cert *ca,
                     const crypto_key *ca_key, int days, const struct crypto_ext *exts,
                     char **cert_pem, char **key_pem)
{
    crypto_key key = {NULL};
    crypto_cert cert = {NULL};
    X509_NAME *name = make_name(uid, cn);
    int rc = CRYPTO_EINPUT;

    if (name == NULL)
        goto out;
    rc = CRYPTO_EINTERNAL;
    key.pkey = EVP_RSA_gen(RSA_BITS);
    if (key.pkey == NULL)
        goto out;
    rc =
        crypto_x509_issue(name, key.pkey, ca, ca ? ca_key->pkey : key.pkey, days, exts, &cert.x509);
    if (rc != 0)
        goto out;
    *cert_pem = crypto_cert_to_pem(&cert);
    *key_pem = crypto_key_to_pem(&key);
    if (*cert_pem == NULL || *key_pem == NULL) {
        free(*cert_pem);
        free(*key_pem);
        rc = CRYPTO_EINTERNAL;
    }
out:
    X509_NAME_free(name);
    X509_free(cert.x509);
    EVP_PKEY_free(key.pkey);
    return rc ? crypto_fail("issue", rc) : 0;
}

int crypto_ca_generate(const char *cn, int days, char **cert_pem, char **key_pem)
{
    static const struct crypto_ext exts[] = {
        {NID_basic_constraints, "critical,CA:TRUE"},
        {NID_key_usage, "critical,keyCertSign,cRLSign"},
        {0, NULL},
    };
    return issue_pem(NULL, cn, NULL, NULL, days, exts, cert_pem, key_pem);
}

/* "IP" or "DNS" for a subjectAltName, NULL when host is neither (this also keeps commas and
 * other config-syntax characters out of the extension string). */
static const char *san_type(const char *host)
{
    unsigned char addr[16];
    size_t n = strlen(host);

    if (inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1)
        return "IP";
    if (n == 0 || n > 253 ||
        strspn(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.*") != n)
        return NULL;
    return "DNS";
}

int crypto_issue_tls_server(const crypto_cert *ca, const crypto_key *ca_key, const char *host,
                            int days, char **cert_pem, char **key_pem)
{
    const char *type = san_type(host);
    if (type == NULL)
        return CRYPTO_EINPUT;
    char *san = xasprintf("%s:%s", type, host);
    const struct crypto_ext exts[] = {
        {NID_basic_constraints, "critical,CA:FALSE"},
        {NID_key_usage, "critical,digitalSignature,keyEncipherment"},
        {NID_ext_key_usage, "serverAuth"},
        {NID_subject_alt_name, san},
        {0, NULL},
    };
    int rc = issue_pem(NULL, host, ca, ca_key, days, exts, cert_pem, key_pem);
    free(san);
    return rc;
}

int crypto_issue_signing(const crypto_cert *ca, const crypto_key *ca_key, const char *cn, int days,
                         char **cert_pem, char **key_pem)
{
    static const struct crypto_ext exts[] = {
        {NID_basic_constraints, "critical,CA:FALSE"},
        {NID_key_usage, "critical,digitalSignature"},
        {NID_ext_key_usage, "emailProtection"},
        {0, NULL},
    };
    return issue_pem(NULL, cn, ca, ca_key, days, exts, cert_pem, key_pem);
}

int crypto_push_identity_generate(const char *uuid, int days, char **cert_pem, char **key_pem)
{
    static const struct crypto_ext exts[] = {
        {NID_basic_constraints, "critical,CA:FALSE"},
        {NID_key_usage, "critical,digitalSignature"},
        {NID_ext_key_usage, "clientAuth"},
        {0, NULL},
    };
    char fresh[37];
    if (uuid == NULL) {
        /* Apple's push topics carry the UUID in lowercase. */
        crypto_uuid(fresh);
        for (char *p = fresh; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        uuid = fresh;
    }
    char *topic = xasprintf(PUSH_TOPIC_PREFIX "%s", uuid);
    char *cn = xasprintf("APSP:%s", uuid);
    int rc = issue_pem(topic, cn, NULL, NULL, days, exts, cert_pem, key_pem);
    free(topic);
    free(cn);
    return rc;
}

/* ---- Certificates ---- */

/* Never prompts on a terminal: without a passphrase, encrypted PEM simply fails to load. */
static int passphrase_cb(char *buf, int size, int rwflag, void *u)
{
    const char *pass = u;
    (void)rwflag;
    if (pass == NULL || strlen(pass) > (size_t)size)
        return -1;
    memcpy(buf, pass, strlen(pass));
    return (int)strlen(pass);
}

int crypto_cert_from_pem(const char *pem, crypto_cert **out)
{
    BIO *bio = BIO_new_mem_buf(pem, -1);
    unsigned char *der = NULL;
    long len = 0;
    int rc = CRYPTO_EINPUT;

    /* PEM to DER here, then the (cached) DER path: a proxy may forward the device
     * certificate as PEM on every request. */
    if (bio != NULL &&
        PEM_bytes_read_bio(&der, &len, NULL, PEM_STRING_X509, bio, passphrase_cb, NULL))
        rc = crypto_cert_from_der(der, (size_t)len, out);
    OPENSSL_free(der);
    BIO_free(bio);
    return rc ? crypto_fail("cert_from_pem", rc) : 0;
}

int crypto_cert_from_der(const uint8_t *der, size_t len, crypto_cert **out)
{
    /* Through the per-thread cache: a device sends the same certificate on every request. */
    struct cached_cert *c = crypto_cert_cache_get(der, len);
    if (c == NULL)
        return crypto_fail("cert_from_der", CRYPTO_EINPUT);
    *out = crypto_cert_ref(c->cert);
    return 0;
}

void crypto_cert_free(crypto_cert *cert)
{
    if (cert == NULL)
        return;
    X509_free(cert->x509);
    free(cert);
}

int crypto_cert_to_der(const crypto_cert *cert, uint8_t **der, size_t *len)
{
    int n = i2d_X509(cert->x509, NULL);
    if (n <= 0)
        return crypto_fail("cert_to_der", CRYPTO_EINTERNAL);
    uint8_t *buf = xmalloc((size_t)n);
    unsigned char *p = buf;
    i2d_X509(cert->x509, &p);
    *der = buf;
    *len = (size_t)n;
    return 0;
}

char *crypto_cert_to_pem(const crypto_cert *cert)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *pem = NULL;
    if (bio != NULL && PEM_write_bio_X509(bio, cert->x509))
        pem = bio_to_string(bio);
    BIO_free(bio);
    if (pem == NULL)
        crypto_fail("cert_to_pem", CRYPTO_EINTERNAL);
    return pem;
}

void crypto_cert_fingerprint(const crypto_cert *cert, char out[65])
{
    hex_lower(cert->sha256, sizeof cert->sha256, out);
}

char *crypto_cert_serial_hex(const crypto_cert *cert)
{
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert->x509), NULL);
    char *hex = bn ? BN_bn2hex(bn) : NULL;
    char *s = xstrdup(hex ? hex : "");
    for (char *p = s; *p; p++)
        if (*p >= 'A' && *p <= 'F')
            *p = (char)(*p - 'A' + 'a');
    OPENSSL_free(hex);
    BN_free(bn);
    if (*s == '\0')
        crypto_fail("cert_serial", CRYPTO_EINTERNAL);
    return s;
}

char *crypto_cert_subject(const crypto_cert *cert)
{
    return crypto_name_string(X509_get_subject_name(cert->x509));
}

static int time_to_time_t(const ASN1_TIME *t, time_t *out)
{
    struct tm tm;
    if (out == NULL)
        return 0;
    if (t == NULL || !ASN1_TIME_to_tm(t, &tm))
        return crypto_fail("cert_time", CRYPTO_EINPUT);
    *out = timegm(&tm);
    return 0;
}

int crypto_cert_validity(const crypto_cert *cert, time_t *not_before, time_t *not_after)
{
    int rc = time_to_time_t(X509_get0_notBefore(cert->x509), not_before);
    return rc ? rc : time_to_time_t(X509_get0_notAfter(cert->x509), not_after);
}

char *crypto_asn1_string_utf8(const ASN1_STRING *s)
{
    unsigned char *utf8 = NULL;
    int n = ASN1_STRING_to_UTF8(&utf8, s);
    char *out = NULL;
    /* An embedded NUL would make the C string differ from what was signed. */
    if (n >= 0 && memchr(utf8, '\0', (size_t)n) == NULL)
        out = xstrndup((const char *)utf8, (size_t)n);
    OPENSSL_free(utf8);
    if (out == NULL)
        crypto_fail("asn1_string", CRYPTO_EINPUT);
    return out;
}

char *crypto_cert_topic(const crypto_cert *cert)
{
    const X509_NAME *name = X509_get_subject_name(cert->x509);
    int i = X509_NAME_get_index_by_NID(name, NID_userId, -1);
    if (i < 0)
        return NULL;
    return crypto_asn1_string_utf8(X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i)));
}

/* Same semantics as X509_cmp_time: valid when notBefore <= now < notAfter. */
static int valid_at(const crypto_cert *c, time_t now)
{
    return c->not_after != 0 && c->not_before <= now && now < c->not_after;
}

int crypto_cert_verify_issued_by(const crypto_cert *cert, const crypto_cert *ca, time_t now)
{
    EVP_PKEY *ca_key = X509_get0_pubkey(ca->x509);

    /* X509_check_issued compares names, the authority key identifier and the CA's keyUsage.
     * The verdict depends only on the two certificates' bytes, so it is remembered. */
    if (!crypto_issued_memo_has(cert, ca)) {
        if (ca_key == NULL || X509_check_ca(ca->x509) < 1 ||
            X509_check_issued(ca->x509, cert->x509) != X509_V_OK ||
            X509_verify(cert->x509, ca_key) != 1)
            return crypto_fail("cert_verify", CRYPTO_EVERIFY);
        crypto_issued_memo_add(cert, ca);
    }
    if (now != 0 && (!valid_at(cert, now) || !valid_at(ca, now)))
        return crypto_fail("cert_verify_time", CRYPTO_EVERIFY);
    return 0;
}

/* ---- Private keys ---- */

int crypto_key_from_pem(const char *pem, const char *passphrase, crypto_key **out)
{
    BIO *bio = BIO_new_mem_buf(pem, -1);
    EVP_PKEY *pkey =
        bio ? PEM_read_bio_PrivateKey(bio, NULL, passphrase_cb, (void *)passphrase) : NULL;
    BIO_free(bio);
    if (pkey == NULL)
        return crypto_fail("key_from_pem", CRYPTO_EINPUT);
    *out = xmalloc(sizeof **out);
    (*out)->pkey = pkey;
    return 0;
}

void crypto_key_free(crypto_key *key)
{
    if (key == NULL)
        return;
    EVP_PKEY_free(key->pkey);
    free(key);
}

char *crypto_key_to_pem(const crypto_key *key)
{
    /* A secure-memory BIO is wiped when freed. */
    BIO *bio = BIO_new(BIO_s_secmem());
    char *pem = NULL;
    if (bio != NULL && PEM_write_bio_PrivateKey(bio, key->pkey, NULL, NULL, 0, NULL, NULL))
        pem = bio_to_string(bio);
    BIO_free(bio);
    if (pem == NULL)
        crypto_fail("key_to_pem", CRYPTO_EINTERNAL);
    return pem;
}

/* ---- Random, hashing, comparison ---- */

void crypto_random(void *buf, size_t n)
{
    if (RAND_bytes_ex(NULL, buf, n, 0) != 1) {
        crypto_fail("rand_bytes", CRYPTO_EINTERNAL);
        log_error("event=crypto_rng_failed");
        abort();
    }
}

void crypto_uuid(char out[37])
{
    static const char digits[] = "0123456789ABCDEF";
    uint8_t b[16];
    char *p = out;

    crypto_random(b, sizeof b);
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *p++ = '-';
        *p++ = digits[b[i] >> 4];
        *p++ = digits[b[i] & 15];
    }
    *p = '\0';
}

void crypto_sha256(const void *data, size_t len, uint8_t out[32])
{
    if (!EVP_Digest(data, len, out, NULL, EVP_sha256(), NULL)) {
        crypto_fail("sha256", CRYPTO_EINTERNAL);
        log_error("event=crypto_sha256_failed");
        abort();
    }
}

void crypto_sha256_hex(const void *data, size_t len, char out[65])
{
    uint8_t md[32];
    crypto_sha256(data, len, md);
    hex_lower(md, sizeof md, out);
}

void crypto_hmac_sha256_hex(const void *key, size_t key_len, const void *data, size_t len,
                            char out[65])
{
    uint8_t md[32];
    size_t md_len = sizeof md;
    if (EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, key, key_len, data, len, md, sizeof md,
                  &md_len) == NULL)
        abort(); /* only on allocation failure: nothing sensible to send */
    hex_lower(md, sizeof md, out);
}

int crypto_memeq(const void *a, const void *b, size_t n)
{
    return CRYPTO_memcmp(a, b, n) == 0;
}

/* ---- Base64 ---- */

static const char b64_std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char b64_url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static char *base64_encode(const uint8_t *in, size_t len, const char *alphabet, int pad)
{
    char *out = xmalloc(len / 3 * 4 + 5), *p = out;
    size_t i = 0;

    for (; len - i >= 3; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        *p++ = alphabet[v >> 18];
        *p++ = alphabet[(v >> 12) & 63];
        *p++ = alphabet[(v >> 6) & 63];
        *p++ = alphabet[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0);
        *p++ = alphabet[v >> 18];
        *p++ = alphabet[(v >> 12) & 63];
        if (i + 1 < len)
            *p++ = alphabet[(v >> 6) & 63];
        else if (pad)
            *p++ = '=';
        if (pad)
            *p++ = '=';
    }
    *p = '\0';
    return out;
}

char *crypto_base64_encode(const void *data, size_t len)
{
    return base64_encode(data, len, b64_std, 1);
}

char *crypto_base64url_encode(const void *data, size_t len)
{
    return base64_encode(data, len, b64_url, 0);
}

/* Decoding table: 0-63 digit values, B64_SPACE for skippable whitespace, B64_PAD for '=',
 * B64_BAD for anything else. Built once; the Mdm-Signature of every request goes through it. */
enum { B64_BAD = 0xff, B64_SPACE = 0xfe, B64_PAD = 0xfd };
static unsigned char b64_table[256];
static pthread_once_t b64_once = PTHREAD_ONCE_INIT;

static void b64_table_init(void)
{
    static const char digits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    memset(b64_table, B64_BAD, sizeof(b64_table));
    for (int i = 0; i < 64; i++)
        b64_table[(unsigned char)digits[i]] = (unsigned char)i;
    for (const char *w = " \t\r\n\v\f"; *w; w++)
        b64_table[(unsigned char)*w] = B64_SPACE;
    b64_table['='] = B64_PAD;
}

int crypto_base64_decode(const char *in, size_t len, uint8_t **out, size_t *out_len)
{
    pthread_once(&b64_once, b64_table_init);
    uint8_t *buf = xmalloc(len / 4 * 3 + 4), *p = buf;
    const unsigned char *s = (const unsigned char *)in;
    uint32_t acc = 0;
    size_t n = 0, pad = 0, i = 0;
    int rc = CRYPTO_EINPUT;

    /* Fast path: whole groups of four digits (the usual single-line header). */
    for (; i + 4 <= len; i += 4) {
        unsigned a = b64_table[s[i]], b = b64_table[s[i + 1]], c = b64_table[s[i + 2]],
                 d = b64_table[s[i + 3]];
        if ((a | b | c | d) & 0xc0)
            break; /* whitespace, padding or junk: the careful loop below takes over */
        uint32_t v = a << 18 | b << 12 | c << 6 | d;
        *p++ = (uint8_t)(v >> 16);
        *p++ = (uint8_t)(v >> 8);
        *p++ = (uint8_t)v;
    }
    for (; i < len; i++) {
        unsigned v = b64_table[s[i]];
        if (v == B64_SPACE)
            continue;
        if (v == B64_PAD) {
            pad++;
            continue;
        }
        if (v == B64_BAD || pad > 0)
            goto out;
        acc = acc << 6 | v;
        if (++n % 4 == 0) {
            *p++ = (uint8_t)(acc >> 16);
            *p++ = (uint8_t)(acc >> 8);
            *p++ = (uint8_t)acc;
            acc = 0;
        }
    }
    /* A final group of 1 character is impossible; padding must complete the group. */
    if (n % 4 == 1 || pad > 2 || (pad > 0 && n % 4 + pad != 4))
        goto out;
    if (n % 4 == 2) {
        *p++ = (uint8_t)(acc >> 4);
    } else if (n % 4 == 3) {
        *p++ = (uint8_t)(acc >> 10);
        *p++ = (uint8_t)(acc >> 2);
    }
    *p = '\0';
    *out = buf;
    *out_len = (size_t)(p - buf);
    buf = NULL;
    rc = 0;
out:
    free(buf);
    return rc;
}
