/*
 * Unit tests for src/crypto/scep.h against the reference CA of a real Debian scepclient
 * exchange ($ORCHARD_SPEC/fixtures/scep) and requests built for Orchard with AES-128, AES-256
 * and 3DES envelopes (tests/fixtures/crypto, see README.txt there). Replies are decrypted with
 * the requester's key by the openssl command, an implementation independent of our code path.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "crypto/cms.h"
#include "crypto/scep.h"
#include "crypto_fixtures.h"

static scep_ca *fixture_ca(void)
{
    crypto_cert *cert = spec_cert("scep/ca.pem");
    crypto_key *key = spec_key("scep/ca.key", "");
    if (cert == NULL || key == NULL) {
        crypto_cert_free(cert);
        crypto_key_free(key);
        return NULL;
    }
    return scep_ca_new(cert, key);
}

static int parse_file(const scep_ca *ca, const char *spec_rel, const char *local,
                      scep_request **req)
{
    size_t len = 0;
    uint8_t *msg = spec_rel ? spec_fixture(spec_rel, &len) : local_fixture(local, &len);
    int rc = msg ? scep_request_parse(ca, msg, len, req) : -100;
    free(msg);
    return rc;
}

/* Whether der contains the DER of a SCEP attribute 2.16.840.1.113733.1.9.<arc> with one value. */
static int has_attr(const uint8_t *der, size_t len, int arc, uint8_t tag, const void *value,
                    size_t value_len)
{
    uint8_t want[64] = {0x30, 0,    0x06, 0x0a, 0x60, 0x86, 0x48,
                        0x01, 0x86, 0xf8, 0x45, 0x01, 0x09, (uint8_t)arc};
    size_t n = 14;
    if (value_len > 40)
        return 0;
    want[n++] = 0x31;
    want[n++] = (uint8_t)(value_len + 2);
    want[n++] = tag;
    want[n++] = (uint8_t)value_len;
    memcpy(want + n, value, value_len);
    n += value_len;
    want[1] = (uint8_t)(n - 2);
    return memmem(der, len, want, n) != NULL;
}

static int has_printable(const uint8_t *der, size_t len, int arc, const char *s)
{
    return has_attr(der, len, arc, 0x13, s, strlen(s));
}

static int write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(data, 1, len, f) == len;
    if (f)
        ok = fclose(f) == 0 && ok;
    return ok;
}

/*
 * Decrypts the envelope of a SUCCESS reply with the requester's key (client.key) using the
 * openssl command and returns the first certificate of the degenerate SignedData inside.
 */
static crypto_cert *openssl_decrypt_reply(const uint8_t *env, size_t env_len)
{
    char dir[] = "/tmp/orchard-scep-XXXXXX";
    crypto_cert *cert = NULL;
    if (mkdtemp(dir) == NULL)
        return NULL;
    const char *spec = getenv("ORCHARD_SPEC");
    char *env_file = xasprintf("%s/env.der", dir), *deg = xasprintf("%s/deg.der", dir);
    char *pem = xasprintf("%s/certs.pem", dir);
    char *cmd = xasprintf("openssl cms -decrypt -provider legacy -provider default -inform DER "
                          "-in %s -inkey %s/fixtures/scep/client.key -out %s 2>/dev/null && "
                          "openssl pkcs7 -inform DER -in %s -print_certs -out %s 2>/dev/null",
                          env_file, spec ? spec : "../shared/spec", deg, deg, pem);
    size_t len;
    char *text = NULL;
    if (write_file(env_file, env, env_len) && system(cmd) == 0 &&
        (text = (char *)fixture_read_path(pem, &len)) != NULL && crypto_cert_from_pem(text, &cert))
        cert = NULL;
    free(text);
    unlink(env_file);
    unlink(deg);
    unlink(pem);
    rmdir(dir);
    free(cmd);
    free(env_file);
    free(deg);
    free(pem);
    return cert;
}

static int same_cert(const crypto_cert *a, const crypto_cert *b)
{
    char fa[65], fb[65];
    crypto_cert_fingerprint(a, fa);
    crypto_cert_fingerprint(b, fb);
    return strcmp(fa, fb) == 0;
}

TEST(ca_cert_der_matches_reference)
{
    size_t len, ref_len;
    scep_ca *ca = fixture_ca();
    ASSERT_NOT_NULL(ca);
    uint8_t *ref = spec_fixture("scep/GetCACert.der", &ref_len);
    ASSERT_NOT_NULL(ref);
    const uint8_t *der = scep_ca_cert_der(ca, &len);
    ASSERT_INT_EQ(len, ref_len);
    ASSERT(memcmp(der, ref, len) == 0);
    ASSERT(strstr(SCEP_CA_CAPS, "POSTPKIOperation\n") != NULL);
    free(ref);
    scep_ca_free(ca);
    scep_ca_free(NULL);
}

TEST(ca_new_rejects_wrong_key)
{
    crypto_cert *cert = spec_cert("scep/ca.pem");
    crypto_key *key = spec_key("scep/client.key", NULL);
    ASSERT_NOT_NULL(cert);
    ASSERT_NOT_NULL(key);
    /* Takes ownership of both even when it fails (ASan checks nothing leaks). */
    ASSERT(scep_ca_new(cert, key) == NULL);
}

TEST(parse_scepclient_pkcsreq)
{
    scep_ca *ca = fixture_ca();
    scep_request *req = NULL;
    size_t len, client_len;
    ASSERT_NOT_NULL(ca);

    /* DES-CBC envelope, SHA-1 signature, signer certificate already expired. */
    ASSERT_INT_EQ(parse_file(ca, "scep/PKCSReq-scepclient-2.1.0.der", NULL, &req), 0);
    ASSERT_INT_EQ(scep_request_message_type(req), SCEP_PKCS_REQ);
    ASSERT_STR_EQ(scep_request_transaction_id(req), "LBeODOxsXVF15BHAu9XPJL9ND+g=");
    ASSERT_STR_EQ(scep_request_challenge(req), "secret");
    ASSERT_STR_EQ(scep_request_subject(req), "CN=scepclient,OU=MDM,O=scep-client,C=US");
    const uint8_t *nonce = scep_request_sender_nonce(req, &len);
    ASSERT_INT_EQ(len, 16);
    ASSERT(memcmp(nonce, "\x59\x0d\x08\xeb\x38\xc1\x5d\x7e\x0b\xfb\x3d\x5e\xcd\xaa\x72\x24", 16) ==
           0);
    char *signer = crypto_cert_subject(scep_request_signer(req));
    ASSERT_STR_EQ(signer, "CN=SCEP SIGNER,O=scep-client");
    free(signer);

    /* The CSR key is the key of the certificate the reference server issued. */
    crypto_cert *client = spec_cert("scep/client.pem");
    uint8_t *client_der = NULL;
    ASSERT_NOT_NULL(client);
    ASSERT_INT_EQ(crypto_cert_to_der(client, &client_der, &client_len), 0);
    const uint8_t *spki = scep_request_public_key(req, &len);
    ASSERT_NOT_NULL(spki);
    ASSERT(len > 256 && memmem(client_der, client_len, spki, len) != NULL);

    free(client_der);
    crypto_cert_free(client);
    scep_request_free(req);
    scep_request_free(NULL);
    scep_ca_free(ca);
}

TEST(parse_all_ciphers)
{
    static const char *const files[] = {"PKCSReq-aes128.der", "PKCSReq-aes256.der",
                                        "PKCSReq-3des.der"};
    scep_ca *ca = fixture_ca();
    ASSERT_NOT_NULL(ca);
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        scep_request *req = NULL;
        ASSERT_INT_EQ(parse_file(ca, NULL, files[i], &req), 0);
        ASSERT_INT_EQ(scep_request_message_type(req), SCEP_PKCS_REQ);
        ASSERT_STR_EQ(scep_request_transaction_id(req), "orchard-txn-1");
        ASSERT_STR_EQ(scep_request_challenge(req), "orchard-challenge");
        ASSERT_STR_EQ(scep_request_subject(req), "CN=device \xc3\xa9t\xc3\xa9,O=Orchard Test");
        scep_request_free(req);
    }
    scep_ca_free(ca);
}

TEST(renewal_signer_chains_to_ca)
{
    scep_ca *ca = fixture_ca();
    scep_request *renewal = NULL, *initial = NULL;
    ASSERT_NOT_NULL(ca);
    ASSERT_INT_EQ(parse_file(ca, NULL, "RenewalReq-aes256.der", &renewal), 0);
    ASSERT_INT_EQ(scep_request_message_type(renewal), SCEP_RENEWAL_REQ);
    ASSERT_INT_EQ(crypto_cert_verify_issued_by(scep_request_signer(renewal), scep_ca_cert(ca), 0),
                  0);
    /* A PKCSReq's throwaway self-signed signer does not. */
    ASSERT_INT_EQ(parse_file(ca, NULL, "PKCSReq-aes128.der", &initial), 0);
    ASSERT_INT_EQ(crypto_cert_verify_issued_by(scep_request_signer(initial), scep_ca_cert(ca), 0),
                  CRYPTO_EVERIFY);
    scep_request_free(renewal);
    scep_request_free(initial);
    scep_ca_free(ca);
}

TEST(get_cert_initial_has_no_csr)
{
    scep_ca *ca = fixture_ca();
    scep_request *req = NULL;
    crypto_cert *issued = NULL;
    uint8_t *der = NULL;
    size_t len = 0;
    ASSERT_NOT_NULL(ca);
    ASSERT_INT_EQ(parse_file(ca, NULL, "GetCertInitial-aes128.der", &req), 0);
    ASSERT_INT_EQ(scep_request_message_type(req), SCEP_CERT_POLL);
    ASSERT(scep_request_challenge(req) == NULL);
    ASSERT(scep_request_subject(req) == NULL);
    ASSERT(scep_request_public_key(req, &len) == NULL);
    ASSERT_INT_EQ(scep_issue_cert(ca, req, "X", "Orchard", 30, &issued), CRYPTO_EINPUT);
    ASSERT_INT_EQ(scep_reply_failure(ca, req, SCEP_FAIL_BAD_REQUEST, &der, &len), 0);
    free(der);
    scep_request_free(req);
    scep_ca_free(ca);
}

/* Issues for the request in `file` and checks the SUCCESS reply end to end. */
static void check_success(const char *spec_rel, const char *local, const uint8_t *cipher_oid,
                          size_t cipher_oid_len)
{
    scep_ca *ca = fixture_ca();
    scep_request *req = NULL;
    crypto_cert *issued = NULL, *signer = NULL, *decrypted = NULL;
    uint8_t *der = NULL, *env = NULL;
    size_t len = 0, env_len = 0, nonce_len;
    time_t now = time(NULL), nb, na;

    ASSERT_NOT_NULL(ca);
    ASSERT_INT_EQ(parse_file(ca, spec_rel, local, &req), 0);
    ASSERT_INT_EQ(scep_issue_cert(ca, req, "9F0C7E3A-DEVICE", "Orchard Test Org", 365, &issued), 0);
    ASSERT_INT_EQ(crypto_cert_verify_issued_by(issued, scep_ca_cert(ca), now), 0);
    /* The subject is the one the CA chose, never the CSR's. */
    char *subject = crypto_cert_subject(issued);
    ASSERT_STR_EQ(subject, "CN=9F0C7E3A-DEVICE,O=Orchard Test Org");
    ASSERT(strcmp(subject, scep_request_subject(req)) != 0);
    free(subject);
    ASSERT_INT_EQ(crypto_cert_validity(issued, &nb, &na), 0);
    ASSERT(nb <= now && na >= now + 365L * 86400 && na <= time(NULL) + 365L * 86400);

    ASSERT_INT_EQ(scep_reply_success(ca, req, issued, &der, &len), 0);
    /* Signed by the CA, carrying the SCEP attributes of a CertRep. */
    ASSERT_INT_EQ(cms_attached_verify(der, len, &env, &env_len, &signer), 0);
    ASSERT(same_cert(signer, scep_ca_cert(ca)));
    ASSERT(has_printable(der, len, 2, "3"));
    ASSERT(has_printable(der, len, 3, "0"));
    ASSERT(has_printable(der, len, 7, scep_request_transaction_id(req)));
    const uint8_t *nonce = scep_request_sender_nonce(req, &nonce_len);
    ASSERT(has_attr(der, len, 6, 0x04, nonce, nonce_len));
    /* Encrypted with the request's algorithm, to the requester, holding the issued cert. */
    ASSERT(memmem(env, env_len, cipher_oid, cipher_oid_len) != NULL);
    decrypted = openssl_decrypt_reply(env, env_len);
    ASSERT_NOT_NULL(decrypted);
    ASSERT(same_cert(decrypted, issued));

    crypto_cert_free(decrypted);
    crypto_cert_free(signer);
    crypto_cert_free(issued);
    free(env);
    free(der);
    scep_request_free(req);
    scep_ca_free(ca);
}

TEST(success_reply_des)
{
    static const uint8_t des_cbc[] = {0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x07};
    check_success("scep/PKCSReq-scepclient-2.1.0.der", NULL, des_cbc, sizeof des_cbc);
}

TEST(success_reply_aes_and_3des)
{
    static const uint8_t aes128[] = {0x06, 0x09, 0x60, 0x86, 0x48, 0x01,
                                     0x65, 0x03, 0x04, 0x01, 0x02};
    static const uint8_t des3[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x03, 0x07};
    check_success(NULL, "PKCSReq-aes128.der", aes128, sizeof aes128);
    if (harness_failed)
        return;
    check_success(NULL, "PKCSReq-3des.der", des3, sizeof des3);
}

TEST(failure_replies)
{
    scep_ca *ca = fixture_ca();
    scep_request *req = NULL;
    uint8_t *der = NULL, *content = NULL;
    size_t len = 0, content_len = 0, nonce_len;
    ASSERT_NOT_NULL(ca);
    ASSERT_INT_EQ(parse_file(ca, "scep/PKCSReq-scepclient-2.1.0.der", NULL, &req), 0);
    const uint8_t *nonce = scep_request_sender_nonce(req, &nonce_len);

    for (int info = SCEP_FAIL_BAD_ALG; info <= SCEP_FAIL_BAD_CERT_ID; info++) {
        crypto_cert *signer = NULL;
        char want[2] = {(char)('0' + info), '\0'};
        ASSERT_INT_EQ(scep_reply_failure(ca, req, (enum scep_fail_info)info, &der, &len), 0);
        ASSERT_INT_EQ(cms_attached_verify(der, len, &content, &content_len, &signer), 0);
        ASSERT_INT_EQ(content_len, 0);
        ASSERT(same_cert(signer, scep_ca_cert(ca)));
        ASSERT(has_printable(der, len, 2, "3"));
        ASSERT(has_printable(der, len, 3, "2"));
        ASSERT(has_printable(der, len, 4, want));
        ASSERT(has_printable(der, len, 7, "LBeODOxsXVF15BHAu9XPJL9ND+g="));
        ASSERT(has_attr(der, len, 6, 0x04, nonce, nonce_len));
        crypto_cert_free(signer);
        free(content);
        free(der);
    }
    ASSERT_INT_EQ(scep_reply_failure(ca, req, (enum scep_fail_info)5, &der, &len), CRYPTO_EINPUT);
    scep_request_free(req);
    scep_ca_free(ca);
}

TEST(bad_input)
{
    scep_ca *ca = fixture_ca();
    scep_request *req = NULL;
    size_t len = 0;
    ASSERT_NOT_NULL(ca);
    uint8_t *msg = spec_fixture("scep/PKCSReq-scepclient-2.1.0.der", &len);
    ASSERT_NOT_NULL(msg);

    ASSERT_INT_EQ(scep_request_parse(ca, NULL, 0, &req), CRYPTO_EINPUT);
    for (size_t n = 0; n < len; n++)
        ASSERT(scep_request_parse(ca, msg, n, &req) < 0);
    for (size_t i = 0; i < len; i++) {
        msg[i] ^= 0xa5;
        int rc = scep_request_parse(ca, msg, len, &req);
        ASSERT(rc == 0 || rc == CRYPTO_EINPUT || rc == CRYPTO_EVERIFY);
        if (rc == 0)
            scep_request_free(req);
        msg[i] ^= 0xa5;
    }
    /* The last bytes are the RSA signature. */
    msg[len - 10] ^= 1;
    ASSERT_INT_EQ(scep_request_parse(ca, msg, len, &req), CRYPTO_EVERIFY);
    msg[len - 10] ^= 1;

    /* Encrypted to another CA: the envelope does not decrypt. */
    char *cert_pem = NULL, *key_pem = NULL;
    crypto_cert *other_cert = NULL;
    crypto_key *other_key = NULL;
    ASSERT_INT_EQ(crypto_ca_generate("Other CA", 1, &cert_pem, &key_pem), 0);
    ASSERT_INT_EQ(crypto_cert_from_pem(cert_pem, &other_cert), 0);
    ASSERT_INT_EQ(crypto_key_from_pem(key_pem, NULL, &other_key), 0);
    scep_ca *other = scep_ca_new(other_cert, other_key);
    ASSERT_NOT_NULL(other);
    ASSERT_INT_EQ(scep_request_parse(other, msg, len, &req), CRYPTO_EINPUT);

    /* A valid SignedData without SCEP attributes. */
    uint8_t *sd = NULL;
    size_t sd_len = 0;
    ASSERT_INT_EQ(cms_sign(scep_ca_cert(other), other_key, NULL, 0, msg, len, &sd, &sd_len), 0);
    ASSERT_INT_EQ(scep_request_parse(other, sd, sd_len, &req), CRYPTO_EINPUT);

    free(sd);
    free(cert_pem);
    free(key_pem);
    scep_ca_free(other);
    free(msg);
    scep_ca_free(ca);
}

/* The signed part parses without the CA key; the envelope only when opened. */
TEST(staged_parse)
{
    scep_ca *ca = fixture_ca();
    scep_request *req = NULL;
    crypto_cert *issued = NULL;
    size_t len = 0;
    ASSERT_NOT_NULL(ca);
    uint8_t *msg = spec_fixture("scep/PKCSReq-scepclient-2.1.0.der", &len);
    ASSERT_NOT_NULL(msg);

    ASSERT_INT_EQ(scep_request_parse_signed(ca, msg, len, &req), 0);
    ASSERT_INT_EQ(scep_request_message_type(req), SCEP_PKCS_REQ);
    ASSERT_STR_EQ(scep_request_transaction_id(req), "LBeODOxsXVF15BHAu9XPJL9ND+g=");
    ASSERT(scep_request_challenge(req) == NULL); /* still sealed */
    ASSERT_INT_EQ(scep_issue_cert(ca, req, "X", "O", 30, &issued), CRYPTO_EINPUT);
    ASSERT_INT_EQ(scep_request_open(ca, req), 0);
    ASSERT_STR_EQ(scep_request_challenge(req), "secret");
    ASSERT_INT_EQ(scep_request_open(ca, req), 0); /* idempotent */
    /* The chosen subject must be a real one. */
    ASSERT_INT_EQ(scep_issue_cert(ca, req, "", "O", 30, &issued), CRYPTO_EINPUT);
    ASSERT_INT_EQ(scep_issue_cert(ca, req, "X", "", 30, &issued), CRYPTO_EINPUT);
    char longname[80];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    ASSERT_INT_EQ(scep_issue_cert(ca, req, longname, "O", 30, &issued), CRYPTO_EINPUT);
    scep_request_free(req);
    req = NULL;

    /* Addressed to another CA: the signed part parses, the envelope does not open. */
    char *cert_pem = NULL, *key_pem = NULL;
    crypto_cert *other_cert = NULL;
    crypto_key *other_key = NULL;
    ASSERT_INT_EQ(crypto_ca_generate("Other CA", 1, &cert_pem, &key_pem), 0);
    ASSERT_INT_EQ(crypto_cert_from_pem(cert_pem, &other_cert), 0);
    ASSERT_INT_EQ(crypto_key_from_pem(key_pem, NULL, &other_key), 0);
    scep_ca *other = scep_ca_new(other_cert, other_key);
    ASSERT_NOT_NULL(other);
    ASSERT_INT_EQ(scep_request_parse_signed(other, msg, len, &req), 0);
    ASSERT_INT_EQ(scep_request_open(other, req), CRYPTO_EINPUT);
    scep_request_free(req);
    req = NULL;

    /* Too large to be a SCEP message: refused before any parsing. */
    uint8_t *big = calloc(1, SCEP_MAX_MESSAGE + 1);
    ASSERT_NOT_NULL(big);
    memcpy(big, msg, len);
    ASSERT_INT_EQ(scep_request_parse_signed(ca, big, SCEP_MAX_MESSAGE + 1, &req), CRYPTO_EINPUT);
    ASSERT(req == NULL);
    free(big);
    free(cert_pem);
    free(key_pem);
    scep_ca_free(other);
    free(msg);
    scep_ca_free(ca);
}

TEST_MAIN(TEST_ENTRY(ca_cert_der_matches_reference), TEST_ENTRY(ca_new_rejects_wrong_key),
          TEST_ENTRY(parse_scepclient_pkcsreq), TEST_ENTRY(parse_all_ciphers),
          TEST_ENTRY(renewal_signer_chains_to_ca), TEST_ENTRY(get_cert_initial_has_no_csr),
          TEST_ENTRY(success_reply_des), TEST_ENTRY(success_reply_aes_and_3des),
          TEST_ENTRY(failure_replies), TEST_ENTRY(bad_input), TEST_ENTRY(staged_parse))
