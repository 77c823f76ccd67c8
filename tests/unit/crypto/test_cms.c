/*
 * Unit tests for src/crypto/cms.h: the real iOS enrollment body (BER, SHA-1), Mdm-Signature
 * verification, signing round trips (checked with the openssl command as well), and hostile
 * input (truncations, bit flips, garbage) that must fail cleanly.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "crypto/cms.h"
#include "crypto/cms_paths.h"
#include "crypto/pki.h"
#include "crypto_fixtures.h"

/* A CA and a profile-signing identity, generated once per process. */
static crypto_cert *ca, *signer;
static crypto_key *signer_key;
static char *ca_pem;

static int ensure_signer(void)
{
    char *ca_key_pem = NULL, *cert_pem = NULL, *key_pem = NULL;
    crypto_key *ca_key = NULL;
    int rc = -1;

    if (signer != NULL)
        return 0;
    if (crypto_init() || crypto_ca_generate("CMS Test CA", 30, &ca_pem, &ca_key_pem) ||
        crypto_cert_from_pem(ca_pem, &ca) || crypto_key_from_pem(ca_key_pem, NULL, &ca_key) ||
        crypto_issue_signing(ca, ca_key, "CMS Test Signer", 30, &cert_pem, &key_pem) ||
        crypto_cert_from_pem(cert_pem, &signer) || crypto_key_from_pem(key_pem, NULL, &signer_key))
        goto out;
    rc = 0;
out:
    crypto_key_free(ca_key);
    free(ca_key_pem);
    free(cert_pem);
    free(key_pem);
    return rc;
}

/* The DER of the real iOS 15.7 enrollment request body. */
static uint8_t *enroll_body(size_t *len)
{
    size_t b64_len;
    uint8_t *der = NULL;
    char *b64 = (char *)spec_fixture("oreore-ios-mdm/enroll_body.b64", &b64_len);
    if (b64 != NULL && crypto_base64_decode(b64, b64_len, &der, len) != 0)
        der = NULL;
    free(b64);
    return der;
}

static int is_error(int rc)
{
    return rc == CRYPTO_EINPUT || rc == CRYPTO_EVERIFY;
}

TEST(enroll_body_content)
{
    size_t len, content_len, expect_len;
    uint8_t *content = NULL;
    uint8_t *der = enroll_body(&len);
    uint8_t *expect = spec_fixture("oreore-ios-mdm/enroll_body.content.plist", &expect_len);
    ASSERT_NOT_NULL(der);
    ASSERT_NOT_NULL(expect);
    /* BER with indefinite lengths, as PROTOCOL.md 4.2 says. */
    ASSERT(der[0] == 0x30 && der[1] == 0x80);

    ASSERT_INT_EQ(cms_attached_content(der, len, &content, &content_len), 0);
    ASSERT_INT_EQ(content_len, expect_len);
    ASSERT(memcmp(content, expect, expect_len) == 0);
    ASSERT(content[content_len] == '\0');
    free(content);
    free(der);
    free(expect);
}

TEST(enroll_body_verify)
{
    size_t len, content_len;
    uint8_t *content = NULL;
    crypto_cert *device = NULL;
    uint8_t *der = enroll_body(&len);
    ASSERT_NOT_NULL(der);

    ASSERT_INT_EQ(cms_attached_verify(der, len, &content, &content_len, &device), 0);
    ASSERT(strstr((char *)content, "<string>iPhone12,1</string>") != NULL);
    char *subject = crypto_cert_subject(device);
    ASSERT(strstr(subject, "OU=iPhone,O=Apple Inc.") != NULL);
    free(subject);
    crypto_cert_free(device);
    free(content);

    ASSERT_INT_EQ(cms_attached_verify(der, len, &content, &content_len, NULL), 0);
    free(content);
    free(der);
}

TEST(enroll_body_tampered)
{
    size_t len, content_len;
    uint8_t *content = NULL;
    uint8_t *der = enroll_body(&len);
    ASSERT_NOT_NULL(der);
    uint8_t *lang = memmem(der, len, "ja-JP", 5);
    ASSERT_NOT_NULL(lang);
    lang[0] = 'k';

    /* The structure still parses, but the signature no longer matches. */
    ASSERT_INT_EQ(cms_attached_content(der, len, &content, &content_len), 0);
    ASSERT(strstr((char *)content, "ka-JP") != NULL);
    free(content);
    ASSERT_INT_EQ(cms_attached_verify(der, len, &content, &content_len, NULL), CRYPTO_EVERIFY);
    free(der);
}

TEST(enroll_body_truncated_and_flipped)
{
    size_t len, content_len;
    uint8_t *content = NULL;
    uint8_t *der = enroll_body(&len);
    ASSERT_NOT_NULL(der);

    for (size_t n = 0; n < len; n++) {
        ASSERT(is_error(cms_attached_content(der, n, &content, &content_len)));
        ASSERT(is_error(cms_attached_verify(der, n, &content, &content_len, NULL)));
    }
    /* Flipping any byte must never crash; if it still verifies, the content is unchanged. */
    for (size_t i = 0; i < len; i++) {
        der[i] ^= 0x5a;
        int rc = cms_attached_verify(der, len, &content, &content_len, NULL);
        ASSERT(rc == 0 || is_error(rc));
        if (rc == 0) {
            ASSERT(strstr((char *)content, "ja-JP") != NULL);
            free(content);
        }
        der[i] ^= 0x5a;
    }
    free(der);
}

TEST(garbage_input)
{
    uint8_t buf[512];
    uint8_t *content = NULL;
    size_t content_len;
    crypto_cert *cert = NULL;
    static const uint8_t indefinite[] = {0x30, 0x80, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86,
                                         0xf7, 0x0d, 0x01, 0x07, 0x02, 0xa0, 0x80};

    ASSERT_INT_EQ(cms_attached_content(NULL, 0, &content, &content_len), CRYPTO_EINPUT);
    ASSERT_INT_EQ(cms_attached_content(indefinite, sizeof indefinite, &content, &content_len),
                  CRYPTO_EINPUT);
    ASSERT_INT_EQ(cms_verify_detached(indefinite, sizeof indefinite, buf, 1, &cert), CRYPTO_EINPUT);
    for (int i = 0; i < 2000; i++) {
        size_t n = 1 + (size_t)(i % (int)sizeof buf);
        crypto_random(buf, n);
        if (i % 2)
            buf[0] = 0x30;
        ASSERT(is_error(cms_attached_verify(buf, n, &content, &content_len, &cert)));
        ASSERT(is_error(cms_verify_detached(buf, n, buf, n, &cert)));
    }
    ASSERT(cert == NULL);
}

/* Runs `openssl cms -verify` on der with the test CA and compares the output with data. */
static int openssl_verifies(const uint8_t *der, size_t len, const char *data)
{
    char dir[] = "/tmp/orchard-cms-XXXXXX";
    if (mkdtemp(dir) == NULL)
        return 0;
    char *sig = xasprintf("%s/sig.der", dir), *ca_file = xasprintf("%s/ca.pem", dir);
    char *out = xasprintf("%s/out", dir);
    FILE *f = fopen(sig, "wb");
    int ok = f && fwrite(der, 1, len, f) == len;
    if (f)
        fclose(f);
    f = fopen(ca_file, "w");
    ok = ok && f && fputs(ca_pem, f) >= 0;
    if (f)
        fclose(f);
    char *cmd = xasprintf("openssl cms -verify -inform DER -in %s -CAfile %s -out %s 2>/dev/null",
                          sig, ca_file, out);
    ok = ok && system(cmd) == 0;
    size_t out_len = 0;
    uint8_t *got = ok ? fixture_read_path(out, &out_len) : NULL;
    ok = got && out_len == strlen(data) && memcmp(got, data, out_len) == 0;
    free(got);
    unlink(sig);
    unlink(ca_file);
    unlink(out);
    rmdir(dir);
    free(cmd);
    free(sig);
    free(ca_file);
    free(out);
    return ok;
}

TEST(sign_attached)
{
    ASSERT_INT_EQ(ensure_signer(), 0);
    const char *profile = "<?xml version=\"1.0\"?><plist><dict/></plist>\n";
    uint8_t *der = NULL, *content = NULL;
    size_t len = 0, content_len = 0;
    crypto_cert *who = NULL;
    const crypto_cert *chain[] = {ca};

    ASSERT_INT_EQ(cms_sign(signer, signer_key, chain, 1, (const uint8_t *)profile, strlen(profile),
                           &der, &len),
                  0);
    ASSERT_INT_EQ(cms_attached_verify(der, len, &content, &content_len, &who), 0);
    ASSERT_STR_EQ((char *)content, profile);
    char fp1[65], fp2[65];
    crypto_cert_fingerprint(who, fp1);
    crypto_cert_fingerprint(signer, fp2);
    ASSERT_STR_EQ(fp1, fp2);
    ASSERT(openssl_verifies(der, len, profile));
    free(content);
    free(der);
    crypto_cert_free(who);

    /* Without the chain the CA is not in the message, but the signature still verifies. */
    ASSERT_INT_EQ(cms_sign(signer, signer_key, NULL, 0, (const uint8_t *)"", 0, &der, &len), 0);
    ASSERT_INT_EQ(cms_attached_verify(der, len, &content, &content_len, NULL), 0);
    ASSERT_INT_EQ(content_len, 0);
    /* A signature with attached content is not an Mdm-Signature. */
    ASSERT_INT_EQ(cms_verify_detached(der, len, (const uint8_t *)"", 0, NULL), CRYPTO_EINPUT);
    free(content);
    free(der);
}

TEST(sign_and_verify_detached)
{
    ASSERT_INT_EQ(ensure_signer(), 0);
    const char *body = "<plist><dict><key>MessageType</key><string>Idle</string></dict></plist>";
    uint8_t *sig = NULL, *content = NULL;
    size_t sig_len = 0, content_len;
    crypto_cert *who = NULL;

    ASSERT_INT_EQ(
        cms_sign_detached(signer, signer_key, (const uint8_t *)body, strlen(body), &sig, &sig_len),
        0);
    ASSERT_INT_EQ(cms_verify_detached(sig, sig_len, (const uint8_t *)body, strlen(body), &who), 0);
    ASSERT_INT_EQ(crypto_cert_verify_issued_by(who, ca, time(NULL)), 0);
    crypto_cert_free(who);
    who = NULL;
    ASSERT_INT_EQ(cms_verify_detached(sig, sig_len, (const uint8_t *)body, strlen(body), NULL), 0);
    ASSERT_INT_EQ(cms_verify_detached(sig, sig_len, (const uint8_t *)body, strlen(body) - 1, &who),
                  CRYPTO_EVERIFY);
    ASSERT_INT_EQ(cms_verify_detached(sig, sig_len, (const uint8_t *)"", 0, &who), CRYPTO_EVERIFY);
    /* Detached: there is no attached content to read. */
    ASSERT_INT_EQ(cms_attached_content(sig, sig_len, &content, &content_len), CRYPTO_EINPUT);
    for (size_t n = 0; n < sig_len; n++)
        ASSERT(is_error(cms_verify_detached(sig, n, (const uint8_t *)body, strlen(body), &who)));
    ASSERT(who == NULL);
    free(sig);
}

TEST(mdm_signature_sha1_fixture)
{
    size_t b64_len = 0, body_len = 0, sig_len = 0;
    uint8_t *sig = NULL;
    crypto_cert *who = NULL;
    char *b64 = (char *)local_fixture("mdm-signature-sha1.b64", &b64_len);
    uint8_t *body = local_fixture("checkin-body.plist", &body_len);
    crypto_cert *scep_ca = spec_cert("scep/ca.pem");
    ASSERT_NOT_NULL(b64);
    ASSERT_NOT_NULL(body);
    ASSERT_NOT_NULL(scep_ca);

    /* The fixture is wrapped at 76 columns: the decoder skips the newlines. */
    ASSERT_INT_EQ(crypto_base64_decode(b64, b64_len, &sig, &sig_len), 0);
    ASSERT_INT_EQ(cms_verify_detached(sig, sig_len, body, body_len, &who), 0);
    char fp[65];
    crypto_cert_fingerprint(who, fp);
    ASSERT_STR_EQ(fp, "f651933b0a31ffc24520f3290696f2533e8c2f6d297800b4ab7199fc74c947c4");
    /* What the caller does next: the signer must chain to our SCEP CA. */
    ASSERT_INT_EQ(crypto_cert_verify_issued_by(who, scep_ca, 0), 0);
    crypto_cert_free(who);
    who = NULL;

    body[body_len / 2] ^= 1;
    ASSERT_INT_EQ(cms_verify_detached(sig, sig_len, body, body_len, &who), CRYPTO_EVERIFY);
    ASSERT(who == NULL);
    free(sig);
    free(b64);
    free(body);
    crypto_cert_free(scep_ca);
}

/* ---- The Mdm-Signature fast path against OpenSSL's CMS_verify ---- */

static const char *const detached_fixtures[] = {
    "mdm-signature-sha1.b64", /* DER, SHA-1, RSA, signer issued by the reference SCEP CA */
    "mdm-signature-ber.der",  /* the same, re-encoded with indefinite lengths like Apple does */
    "mdm-signature-ec.der",   /* ECDSA P-256 with SHA-256, self-signed signer */
};

static uint8_t *detached_fixture(const char *name, size_t *len)
{
    uint8_t *data = local_fixture(name, len), *der = NULL;
    if (data == NULL || strstr(name, ".b64") == NULL)
        return data;
    if (crypto_base64_decode((char *)data, *len, &der, len) != 0)
        der = NULL;
    free(data);
    return der;
}

/*
 * 1 if the fast path and OpenSSL agree: when the fast path answers (does not decline), it
 * succeeds exactly when OpenSSL does, with the same signer. *fast_rc gets its answer.
 */
static int paths_agree(const uint8_t *sig, size_t sig_len, const uint8_t *body, size_t body_len,
                       int *fast_rc)
{
    crypto_cert *fast_cert = NULL, *ref_cert = NULL;
    int fast = crypto_cms_verify_detached_fast(sig, sig_len, body, body_len, &fast_cert);
    int ref = crypto_cms_verify_detached_openssl(sig, sig_len, body, body_len, &ref_cert);
    int agree = fast == CRYPTO_DECLINE || (fast == 0) == (ref == 0);
    if (agree && fast == 0) {
        char a[65], b[65];
        crypto_cert_fingerprint(fast_cert, a);
        crypto_cert_fingerprint(ref_cert, b);
        agree = strcmp(a, b) == 0;
    }
    if (!agree)
        fprintf(stderr, "fast path says %d, OpenSSL says %d\n", fast, ref);
    crypto_cert_free(fast_cert);
    crypto_cert_free(ref_cert);
    if (fast_rc != NULL)
        *fast_rc = fast;
    return agree;
}

TEST(fast_path_handles_device_shapes)
{
    size_t body_len = 0;
    uint8_t *body = local_fixture("checkin-body.plist", &body_len);
    ASSERT_NOT_NULL(body);
    for (size_t i = 0; i < sizeof detached_fixtures / sizeof detached_fixtures[0]; i++) {
        size_t len = 0;
        int rc = -100;
        uint8_t *sig = detached_fixture(detached_fixtures[i], &len);
        ASSERT_NOT_NULL(sig);
        /* Twice: a cache miss, then a hit. */
        ASSERT(paths_agree(sig, len, body, body_len, &rc));
        ASSERT_INT_EQ(rc, 0);
        ASSERT(paths_agree(sig, len, body, body_len, &rc));
        ASSERT_INT_EQ(rc, 0);
        ASSERT_INT_EQ(cms_verify_detached(sig, len, body, body_len, NULL), 0);
        free(sig);
    }
    free(body);
}

TEST(fast_path_agrees_on_mutations)
{
    size_t body_len = 0;
    uint8_t *body = local_fixture("checkin-body.plist", &body_len);
    ASSERT_NOT_NULL(body);
    for (size_t i = 0; i < sizeof detached_fixtures / sizeof detached_fixtures[0]; i++) {
        size_t len = 0;
        uint8_t *sig = detached_fixture(detached_fixtures[i], &len);
        ASSERT_NOT_NULL(sig);
        for (size_t n = 0; n < len; n++)
            ASSERT(paths_agree(sig, n, body, body_len, NULL));
        for (size_t j = 0; j < len; j++) {
            sig[j] ^= (uint8_t)(1u << (j % 8));
            ASSERT(paths_agree(sig, len, body, body_len, NULL));
            sig[j] ^= (uint8_t)(1u << (j % 8));
        }
        for (size_t j = 0; j < body_len; j += 13) {
            body[j] ^= 0x20;
            ASSERT(paths_agree(sig, len, body, body_len, NULL));
            body[j] ^= 0x20;
        }
        free(sig);
    }
    free(body);
}

TEST(fast_path_declines_other_shapes)
{
    ASSERT_INT_EQ(ensure_signer(), 0);
    uint8_t *der = NULL;
    size_t len = 0;
    /* Attached content is not an Mdm-Signature: declined, then rejected by OpenSSL. */
    ASSERT_INT_EQ(cms_sign(signer, signer_key, NULL, 0, (const uint8_t *)"x", 1, &der, &len), 0);
    ASSERT_INT_EQ(crypto_cms_verify_detached_fast(der, len, (const uint8_t *)"x", 1, NULL),
                  CRYPTO_DECLINE);
    ASSERT_INT_EQ(cms_verify_detached(der, len, (const uint8_t *)"x", 1, NULL), CRYPTO_EINPUT);
    free(der);
}

/*
 * Hand-built signatures (tests/fixtures/crypto/make_detached_variants.py), each validly signed
 * over the attributes it carries. fast: what the fast path must answer; openssl: whether
 * OpenSSL accepts it (and so what cms_verify_detached answers).
 */
TEST(fast_path_encoding_variants)
{
    static const struct {
        const char *name;
        int fast, openssl_ok;
    } cases[] = {
        {"ok", 0, 1},
        {"ok-no-time", 0, 1},
        {"ok-gentime", 0, 1},
        {"ok-chain", 0, 1},
        {"bad-digest", CRYPTO_EVERIFY, 0},
        {"sid-ca", CRYPTO_EVERIFY, 0},
        /* Declined: OpenSSL decides (it re-encodes attributes, compares names canonically). */
        {"unsorted", CRYPTO_DECLINE, 1},
        {"nonminimal-len", CRYPTO_DECLINE, 0},
        {"smimecap", CRYPTO_DECLINE, 1},
        {"dup-time", CRYPTO_DECLINE, 0},
        {"no-ct", CRYPTO_DECLINE, 0},
        {"ct-other", CRYPTO_DECLINE, 1},
        {"time-letters", CRYPTO_DECLINE, 1},
        {"time-short", CRYPTO_DECLINE, 1},
        {"two-values", CRYPTO_DECLINE, 0},
        {"dup-serial", CRYPTO_DECLINE, 1},
        {"md-int", CRYPTO_DECLINE, 0},
    };
    size_t body_len = 0;
    uint8_t *body = local_fixture("checkin-body.plist", &body_len);
    ASSERT_NOT_NULL(body);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t len = 0;
        int fast = -100;
        char *name = xasprintf("detached/%s.der", cases[i].name);
        uint8_t *sig = local_fixture(name, &len);
        free(name);
        ASSERT_NOT_NULL(sig);
        if (!paths_agree(sig, len, body, body_len, &fast))
            fprintf(stderr, "variant %s\n", cases[i].name);
        ASSERT(paths_agree(sig, len, body, body_len, &fast));
        ASSERT_INT_EQ(fast, cases[i].fast);
        ASSERT_INT_EQ(cms_verify_detached(sig, len, body, body_len, NULL) == 0,
                      cases[i].openssl_ok);
        free(sig);
    }
    free(body);
}

struct verify_job {
    const uint8_t *sig, *body;
    size_t sig_len, body_len;
    int failures;
};

static void *verify_many(void *arg)
{
    struct verify_job *job = arg;
    for (int i = 0; i < 200; i++) {
        crypto_cert *who = NULL;
        if (cms_verify_detached(job->sig, job->sig_len, job->body, job->body_len, &who) != 0)
            job->failures++;
        crypto_cert_free(who);
    }
    return NULL;
}

TEST(fast_path_threads)
{
    struct verify_job jobs[3];
    pthread_t threads[3];
    size_t body_len = 0;
    uint8_t *body = local_fixture("checkin-body.plist", &body_len);
    ASSERT_NOT_NULL(body);
    for (int i = 0; i < 3; i++) {
        jobs[i].sig = detached_fixture(detached_fixtures[i], &jobs[i].sig_len);
        jobs[i].body = body;
        jobs[i].body_len = body_len;
        jobs[i].failures = 0;
        ASSERT_NOT_NULL(jobs[i].sig);
    }
    for (int i = 0; i < 3; i++)
        ASSERT_INT_EQ(pthread_create(&threads[i], NULL, verify_many, &jobs[i]), 0);
    for (int i = 0; i < 3; i++) {
        pthread_join(threads[i], NULL);
        ASSERT_INT_EQ(jobs[i].failures, 0);
        free((void *)jobs[i].sig);
    }
    free(body);
}

TEST_MAIN(TEST_ENTRY(enroll_body_content), TEST_ENTRY(enroll_body_verify),
          TEST_ENTRY(enroll_body_tampered), TEST_ENTRY(enroll_body_truncated_and_flipped),
          TEST_ENTRY(garbage_input), TEST_ENTRY(sign_attached),
          TEST_ENTRY(sign_and_verify_detached), TEST_ENTRY(mdm_signature_sha1_fixture),
          TEST_ENTRY(fast_path_handles_device_shapes), TEST_ENTRY(fast_path_agrees_on_mutations),
          TEST_ENTRY(fast_path_declines_other_shapes), TEST_ENTRY(fast_path_encoding_variants),
          TEST_ENTRY(fast_path_threads))
