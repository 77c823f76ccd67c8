/* Push identity helpers (see pushid.h): PKCS#12 import, key/certificate match, CSR. */
#include "crypto/pushid.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/rsa.h>
#include <string.h>

#include "core/mem.h"
#include "crypto/crypto_int.h"

int crypto_pkcs12_parse(const uint8_t *der, size_t len, const char *password, crypto_cert **cert,
                        crypto_key **key)
{
    *cert = NULL;
    *key = NULL;
    const unsigned char *p = der;
    PKCS12 *p12 = d2i_PKCS12(NULL, &p, (long)len);
    if (p12 == NULL)
        return crypto_fail("pkcs12_parse", CRYPTO_EINPUT);
    EVP_PKEY *pkey = NULL;
    X509 *x = NULL;
    STACK_OF(X509) *ca = NULL;
    const char *pw = password != NULL ? password : "";
    int rc = CRYPTO_EVERIFY;
    /* PKCS12_parse tries both the empty and the NULL password forms for pw == "". */
    if (!PKCS12_verify_mac(p12, pw, -1) && !(pw[0] == '\0' && PKCS12_verify_mac(p12, NULL, 0)))
        goto out;
    if (!PKCS12_parse(p12, pw, &pkey, &x, &ca) || pkey == NULL || x == NULL)
        goto out;
    if (X509_check_private_key(x, pkey) != 1)
        goto out;
    *cert = crypto_cert_wrap(x);
    x = NULL;
    *key = xcalloc(1, sizeof(**key));
    (*key)->pkey = pkey;
    pkey = NULL;
    rc = 0;
out:
    EVP_PKEY_free(pkey);
    X509_free(x);
    sk_X509_pop_free(ca, X509_free);
    PKCS12_free(p12);
    return rc == 0 ? 0 : crypto_fail("pkcs12_parse", rc);
}

int crypto_key_matches_cert(const crypto_key *key, const crypto_cert *cert)
{
    int ok = X509_check_private_key(cert->x509, key->pkey) == 1;
    ERR_clear_error();
    return ok;
}

int crypto_key_generate_rsa(int bits, crypto_key **out)
{
    *out = NULL;
    EVP_PKEY *pkey = EVP_RSA_gen((unsigned int)bits);
    if (pkey == NULL)
        return crypto_fail("key_generate_rsa", CRYPTO_EINTERNAL);
    *out = xcalloc(1, sizeof(**out));
    (*out)->pkey = pkey;
    return 0;
}

int crypto_csr_generate(const crypto_key *key, const char *cn, const char *org, char **csr_pem)
{
    *csr_pem = NULL;
    int rc = CRYPTO_EINTERNAL;
    X509_REQ *req = X509_REQ_new();
    BIO *bio = NULL;
    X509_NAME *name = req ? X509_REQ_get_subject_name(req) : NULL;
    if (name == NULL || !X509_REQ_set_version(req, 0) ||
        !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1,
                                    0))
        goto out;
    if (org != NULL && !X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8,
                                                   (const unsigned char *)org, -1, -1, 0))
        goto out;
    if (!X509_REQ_set_pubkey(req, key->pkey) || X509_REQ_sign(req, key->pkey, EVP_sha256()) <= 0)
        goto out;
    bio = BIO_new(BIO_s_mem());
    if (bio == NULL || !PEM_write_bio_X509_REQ(bio, req))
        goto out;
    char *data = NULL;
    long n = BIO_get_mem_data(bio, &data);
    *csr_pem = xstrndup(data, (size_t)n);
    rc = 0;
out:
    BIO_free(bio);
    X509_REQ_free(req);
    return rc == 0 ? 0 : crypto_fail("csr_generate", rc);
}
