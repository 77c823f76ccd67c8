/* Unit tests for src/crypto/pki.h: identities, certificate/key handling, random, base64. */
#include <ctype.h>
#include <string.h>
#include <time.h>

#include "harness.h"
#include "crypto/pki.h"
#include "crypto_fixtures.h"

/* A CA generated once per process and shared by the tests that need an issuer. */
static crypto_cert *test_ca;
static crypto_key *test_ca_key;

static int ensure_ca(void)
{
    char *cert_pem = NULL, *key_pem = NULL;
    if (test_ca != NULL)
        return 0;
    if (crypto_init() != 0 || crypto_ca_generate("Orchard Test CA", 3650, &cert_pem, &key_pem))
        return -1;
    int rc = crypto_cert_from_pem(cert_pem, &test_ca) ||
             crypto_key_from_pem(key_pem, NULL, &test_ca_key);
    free(cert_pem);
    free(key_pem);
    return rc ? -1 : 0;
}

static int is_lower_hex(const char *s, size_t n)
{
    if (strlen(s) != n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isdigit((unsigned char)s[i]) && !(s[i] >= 'a' && s[i] <= 'f'))
            return 0;
    return 1;
}

TEST(init_is_idempotent)
{
    ASSERT_INT_EQ(crypto_init(), 0);
    ASSERT_INT_EQ(crypto_init(), 0);
}

TEST(ca_generate)
{
    ASSERT_INT_EQ(ensure_ca(), 0);
    char *subject = crypto_cert_subject(test_ca);
    ASSERT_STR_EQ(subject, "CN=Orchard Test CA");
    free(subject);

    time_t now = time(NULL), nb, na;
    ASSERT_INT_EQ(crypto_cert_validity(test_ca, &nb, &na), 0);
    ASSERT(nb <= now && nb > now - 3600);
    ASSERT(na > now + 3649L * 86400 && na <= now + 3650L * 86400);
    /* Self-signed and a CA: it verifies as its own issuer. */
    ASSERT_INT_EQ(crypto_cert_verify_issued_by(test_ca, test_ca, now), 0);
    ASSERT(crypto_cert_topic(test_ca) == NULL);

    char *serial = crypto_cert_serial_hex(test_ca);
    ASSERT(is_lower_hex(serial, 32));
    free(serial);
}

TEST(cert_der_pem_roundtrip)
{
    ASSERT_INT_EQ(ensure_ca(), 0);
    char fp[65], fp2[65], fp3[65];
    uint8_t *der = NULL;
    size_t len = 0;
    crypto_cert *from_der = NULL, *from_pem = NULL;

    crypto_cert_fingerprint(test_ca, fp);
    ASSERT(is_lower_hex(fp, 64));
    ASSERT_INT_EQ(crypto_cert_to_der(test_ca, &der, &len), 0);
    ASSERT_INT_EQ(crypto_cert_from_der(der, len, &from_der), 0);
    crypto_cert_fingerprint(from_der, fp2);
    ASSERT_STR_EQ(fp, fp2);
    /* The fingerprint is the SHA-256 of the DER. */
    crypto_sha256_hex(der, len, fp3);
    ASSERT_STR_EQ(fp, fp3);

    char *pem = crypto_cert_to_pem(test_ca);
    ASSERT_NOT_NULL(pem);
    ASSERT(strncmp(pem, "-----BEGIN CERTIFICATE-----\n", 28) == 0);
    ASSERT_INT_EQ(crypto_cert_from_pem(pem, &from_pem), 0);
    crypto_cert_fingerprint(from_pem, fp2);
    ASSERT_STR_EQ(fp, fp2);

    free(pem);
    free(der);
    crypto_cert_free(from_der);
    crypto_cert_free(from_pem);
}

TEST(cert_bad_input)
{
    ASSERT_INT_EQ(ensure_ca(), 0);
    crypto_cert *cert = NULL;
    uint8_t *der = NULL;
    size_t len = 0;

    ASSERT_INT_EQ(crypto_cert_from_pem("", &cert), CRYPTO_EINPUT);
    ASSERT_INT_EQ(crypto_cert_from_pem(
                      "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", &cert),
                  CRYPTO_EINPUT);
    ASSERT_INT_EQ(crypto_cert_from_der((const uint8_t *)"", 0, &cert), CRYPTO_EINPUT);
    ASSERT_INT_EQ(crypto_cert_to_der(test_ca, &der, &len), 0);
    for (size_t n = 0; n < len; n += 7)
        ASSERT_INT_EQ(crypto_cert_from_der(der, n, &cert), CRYPTO_EINPUT);
    uint8_t *longer = xmalloc(len + 1);
    memcpy(longer, der, len);
    longer[len] = 0;
    ASSERT_INT_EQ(crypto_cert_from_der(longer, len + 1, &cert), CRYPTO_EINPUT);
    ASSERT(cert == NULL);
    free(longer);
    free(der);
    crypto_cert_free(NULL);
    crypto_key_free(NULL);
}

TEST(fixture_cert_fields)
{
    crypto_cert *client = spec_cert("scep/client.pem");
    crypto_cert *ca = spec_cert("scep/ca.pem");
    ASSERT_NOT_NULL(client);
    ASSERT_NOT_NULL(ca);

    char fp[65];
    crypto_cert_fingerprint(client, fp);
    ASSERT_STR_EQ(fp, "f651933b0a31ffc24520f3290696f2533e8c2f6d297800b4ab7199fc74c947c4");
    char *serial = crypto_cert_serial_hex(client);
    ASSERT_STR_EQ(serial, "02");
    char *subject = crypto_cert_subject(client);
    ASSERT_STR_EQ(subject, "CN=scepclient,OU=MDM,O=scep-client,C=US");
    time_t nb, na;
    ASSERT_INT_EQ(crypto_cert_validity(client, &nb, &na), 0);
    ASSERT_INT_EQ(nb, 1795817860);
    ASSERT_INT_EQ(na, 1827353860);
    ASSERT_INT_EQ(crypto_cert_validity(client, NULL, NULL), 0);

    ASSERT_INT_EQ(crypto_cert_verify_issued_by(client, ca, 0), 0);
    ASSERT_INT_EQ(crypto_cert_verify_issued_by(client, ca, nb + 60), 0);
    ASSERT_INT_EQ(crypto_cert_verify_issued_by(client, ca, nb - 60), CRYPTO_EVERIFY);
    ASSERT_INT_EQ(crypto_cert_verify_issued_by(client, ca, na + 60), CRYPTO_EVERIFY);
    /* A leaf is no CA, and a CA was not issued by its leaf. */
    ASSERT_INT_EQ(crypto_cert_verify_issued_by(ca, client, 0), CRYPTO_EVERIFY);
    ASSERT_INT_EQ(crypto_cert_verify_issued_by(client, client, 0), CRYPTO_EVERIFY);

    free(serial);
    free(subject);
    crypto_cert_free(client);
    crypto_cert_free(ca);
}

TEST(issue_tls_server)
{
    ASSERT_INT_EQ(ensure_ca(), 0);
    static const char *const hosts[] = {"mdm.example.com", "127.0.0.1", "::1"};
    for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++) {
        char *cert_pem = NULL, *key_pem = NULL;
        crypto_cert *cert = NULL;
        crypto_key *key = NULL;
        ASSERT_INT_EQ(
            crypto_issue_tls_server(test_ca, test_ca_key, hosts[i], 30, &cert_pem, &key_pem), 0);
        ASSERT_INT_EQ(crypto_cert_from_pem(cert_pem, &cert), 0);
        ASSERT_INT_EQ(crypto_key_from_pem(key_pem, NULL, &key), 0);
        ASSERT_INT_EQ(crypto_cert_verify_issued_by(cert, test_ca, time(NULL)), 0);
        char *subject = crypto_cert_subject(cert);
        char *expect = xasprintf("CN=%s", hosts[i]);
        ASSERT_STR_EQ(subject, expect);
        free(subject);
        free(expect);
        free(cert_pem);
        free(key_pem);
        crypto_cert_free(cert);
        crypto_key_free(key);
    }
    char *c = NULL, *k = NULL;
    ASSERT_INT_EQ(crypto_issue_tls_server(test_ca, test_ca_key, "", 30, &c, &k), CRYPTO_EINPUT);
    ASSERT_INT_EQ(crypto_issue_tls_server(test_ca, test_ca_key, "a.com,DNS:evil.com", 30, &c, &k),
                  CRYPTO_EINPUT);
    ASSERT_INT_EQ(crypto_issue_tls_server(test_ca, test_ca_key, "a.com", 0, &c, &k), CRYPTO_EINPUT);
}

TEST(issue_signing_and_wrong_issuer)
{
    ASSERT_INT_EQ(ensure_ca(), 0);
    char *cert_pem = NULL, *key_pem = NULL;
    crypto_cert *cert = NULL, *other_ca = spec_cert("scep/ca.pem");
    ASSERT_NOT_NULL(other_ca);
    ASSERT_INT_EQ(crypto_issue_signing(test_ca, test_ca_key, "Orchard profile signing", 365,
                                       &cert_pem, &key_pem),
                  0);
    ASSERT_INT_EQ(crypto_cert_from_pem(cert_pem, &cert), 0);
    ASSERT_INT_EQ(crypto_cert_verify_issued_by(cert, test_ca, time(NULL)), 0);
    ASSERT_INT_EQ(crypto_cert_verify_issued_by(cert, other_ca, 0), CRYPTO_EVERIFY);
    free(cert_pem);
    free(key_pem);
    crypto_cert_free(cert);
    crypto_cert_free(other_ca);
}

TEST(push_identity)
{
    char *cert_pem = NULL, *key_pem = NULL;
    crypto_cert *cert = NULL;
    const char *uuid = "1b2c3d4e-0000-4000-8000-123456789abc";

    ASSERT_INT_EQ(crypto_push_identity_generate(uuid, 365, &cert_pem, &key_pem), 0);
    ASSERT_INT_EQ(crypto_cert_from_pem(cert_pem, &cert), 0);
    char *topic = crypto_cert_topic(cert);
    ASSERT_STR_EQ(topic, "com.apple.mgmt.External.1b2c3d4e-0000-4000-8000-123456789abc");
    char *subject = crypto_cert_subject(cert);
    ASSERT_STR_EQ(subject, "CN=APSP:1b2c3d4e-0000-4000-8000-123456789abc,"
                           "UID=com.apple.mgmt.External.1b2c3d4e-0000-4000-8000-123456789abc");
    free(topic);
    free(subject);
    free(cert_pem);
    free(key_pem);
    crypto_cert_free(cert);

    ASSERT_INT_EQ(crypto_push_identity_generate(NULL, 365, &cert_pem, &key_pem), 0);
    ASSERT_INT_EQ(crypto_cert_from_pem(cert_pem, &cert), 0);
    topic = crypto_cert_topic(cert);
    ASSERT_NOT_NULL(topic);
    ASSERT_INT_EQ(strlen(topic), strlen("com.apple.mgmt.External.") + 36);
    ASSERT(strncmp(topic, "com.apple.mgmt.External.", 24) == 0);
    free(topic);
    free(cert_pem);
    free(key_pem);
    crypto_cert_free(cert);
}

TEST(key_formats)
{
    crypto_key *key = NULL, *again = NULL;
    size_t len;

    /* Legacy PEM encryption (DES-EDE3-CBC) with an empty passphrase. */
    key = spec_key("scep/ca.key", "");
    ASSERT_NOT_NULL(key);
    crypto_key_free(key);
    ASSERT(spec_key("scep/ca.key", NULL) == NULL);
    ASSERT(spec_key("scep/ca.key", "wrong") == NULL);

    /* PKCS#1, unencrypted; re-exported as PKCS#8. */
    key = spec_key("scep/client.key", NULL);
    ASSERT_NOT_NULL(key);
    char *pem = crypto_key_to_pem(key);
    ASSERT_NOT_NULL(pem);
    ASSERT(strncmp(pem, "-----BEGIN PRIVATE KEY-----\n", 28) == 0);
    ASSERT_INT_EQ(crypto_key_from_pem(pem, NULL, &again), 0);
    free(pem);
    crypto_key_free(again);
    crypto_key_free(key);

    /* Encrypted PKCS#8. */
    char *enc = (char *)local_fixture("client-pkcs8-encrypted.pem", &len);
    ASSERT_NOT_NULL(enc);
    ASSERT_INT_EQ(crypto_key_from_pem(enc, "orchard", &key), 0);
    crypto_key_free(key);
    ASSERT_INT_EQ(crypto_key_from_pem(enc, NULL, &key), CRYPTO_EINPUT);
    ASSERT_INT_EQ(crypto_key_from_pem(enc, "nope", &key), CRYPTO_EINPUT);
    free(enc);

    ASSERT_INT_EQ(crypto_key_from_pem("not a key", NULL, &key), CRYPTO_EINPUT);
}

TEST(random_and_uuid)
{
    uint8_t a[32], b[32];
    crypto_random(a, sizeof a);
    crypto_random(b, sizeof b);
    ASSERT(!crypto_memeq(a, b, sizeof a));

    char u1[37], u2[37];
    crypto_uuid(u1);
    crypto_uuid(u2);
    ASSERT(strcmp(u1, u2) != 0);
    ASSERT_INT_EQ(strlen(u1), 36);
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23)
            ASSERT(u1[i] == '-');
        else
            ASSERT(isdigit((unsigned char)u1[i]) || (u1[i] >= 'A' && u1[i] <= 'F'));
    }
    ASSERT(u1[14] == '4');
    ASSERT(strchr("89AB", u1[19]) != NULL);
}

TEST(sha256_and_memeq)
{
    char hex[65];
    crypto_sha256_hex("abc", 3, hex);
    ASSERT_STR_EQ(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    crypto_sha256_hex("", 0, hex);
    ASSERT_STR_EQ(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    uint8_t md[32];
    crypto_sha256("abc", 3, md);
    ASSERT_INT_EQ(md[0], 0xba);
    ASSERT_INT_EQ(md[31], 0xad);
    ASSERT(crypto_memeq("secret", "secret", 6));
    ASSERT(!crypto_memeq("secret", "secreT", 6));
    ASSERT(crypto_memeq("a", "b", 0));
}

TEST(base64_encode)
{
    static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const std[] = {"",         "Zg==",     "Zm8=",    "Zm9v",
                                      "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    static const char *const url[] = {"", "Zg", "Zm8", "Zm9v", "Zm9vYg", "Zm9vYmE", "Zm9vYmFy"};
    for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++) {
        char *s = crypto_base64_encode(plain[i], strlen(plain[i]));
        char *u = crypto_base64url_encode(plain[i], strlen(plain[i]));
        ASSERT_STR_EQ(s, std[i]);
        ASSERT_STR_EQ(u, url[i]);
        free(s);
        free(u);
    }
    static const uint8_t bin[] = {0xfb, 0xff, 0xbf};
    char *s = crypto_base64_encode(bin, 3);
    char *u = crypto_base64url_encode(bin, 3);
    ASSERT_STR_EQ(s, "+/+/");
    ASSERT_STR_EQ(u, "-_-_");
    free(s);
    free(u);
}

static int decodes_to(const char *in, const char *expect)
{
    uint8_t *out = NULL;
    size_t len = 0;
    int ok = crypto_base64_decode(in, strlen(in), &out, &len) == 0 && len == strlen(expect) &&
             memcmp(out, expect, len) == 0 && out[len] == '\0';
    free(out);
    return ok;
}

static int rejects(const char *in)
{
    uint8_t *out = NULL;
    size_t len = 0;
    return crypto_base64_decode(in, strlen(in), &out, &len) == CRYPTO_EINPUT;
}

TEST(base64_decode)
{
    ASSERT(decodes_to("", ""));
    ASSERT(decodes_to("Zg==", "f"));
    ASSERT(decodes_to("Zm8=", "fo"));
    ASSERT(decodes_to("Zm9vYmFy", "foobar"));
    ASSERT(decodes_to("Zg", "f"));
    ASSERT(decodes_to("Zm8", "fo"));
    /* Whitespace anywhere, as in a plist <data> element or a folded header. */
    ASSERT(decodes_to("\n\tZm9v\r\n  YmE=\n", "fooba"));
    ASSERT(decodes_to("Zm9vYg =\n=", "foob"));

    ASSERT(rejects("Z"));
    ASSERT(rejects("Zm9vY"));
    ASSERT(rejects("Zg="));
    ASSERT(rejects("Zg==="));
    ASSERT(rejects("Zm9v="));
    ASSERT(rejects("===="));
    ASSERT(rejects("Zg==Zg=="));
    ASSERT(rejects("Zm9v-_"));
    ASSERT(rejects("Zm9v\x80"));
    uint8_t *out = NULL;
    size_t len = 0;
    ASSERT_INT_EQ(crypto_base64_decode("Zm9v\0Zg==", 10, &out, &len), CRYPTO_EINPUT);
}

/* RFC 4231 test cases 2 and 6 (a key longer than the block size). */
TEST(hmac_sha256_rfc4231)
{
    char hex[65];
    const char *data = "what do ya want for nothing?";
    crypto_hmac_sha256_hex("Jefe", 4, data, strlen(data), hex);
    ASSERT_STR_EQ(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    uint8_t key[131];
    memset(key, 0xaa, sizeof key);
    const char *big = "Test Using Larger Than Block-Size Key - Hash Key First";
    crypto_hmac_sha256_hex(key, sizeof key, big, strlen(big), hex);
    ASSERT_STR_EQ(hex, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
}

TEST_MAIN(TEST_ENTRY(init_is_idempotent), TEST_ENTRY(ca_generate),
          TEST_ENTRY(cert_der_pem_roundtrip), TEST_ENTRY(cert_bad_input),
          TEST_ENTRY(fixture_cert_fields), TEST_ENTRY(issue_tls_server),
          TEST_ENTRY(issue_signing_and_wrong_issuer), TEST_ENTRY(push_identity),
          TEST_ENTRY(key_formats), TEST_ENTRY(random_and_uuid), TEST_ENTRY(sha256_and_memeq),
          TEST_ENTRY(hmac_sha256_rfc4231), TEST_ENTRY(base64_encode), TEST_ENTRY(base64_decode))
