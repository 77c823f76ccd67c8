/*
 * cms.h over OpenSSL's CMS API (except cms_verify_detached's fast path, in cms_detached.c).
 * Messages are parsed straight from the caller's buffer with d2i_CMS_ContentInfo, which
 * accepts BER (indefinite lengths, constructed OCTET STRINGs) like d2i_CMS_bio does but
 * without the BIO's buffering copy; detached content is handed to CMS_verify as a read-only
 * memory BIO over the body.
 */
#include "crypto/cms.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "core/mem.h"
#include "crypto/crypto_int.h"

CMS_ContentInfo *crypto_cms_parse(const uint8_t *der, size_t len)
{
    const unsigned char *p = der;
    if (der == NULL || len == 0 || len > LONG_MAX)
        return NULL;
    return d2i_CMS_ContentInfo(NULL, &p, (long)len);
}

int crypto_cms_to_der(CMS_ContentInfo *cms, uint8_t **der, size_t *len)
{
    int n = i2d_CMS_ContentInfo(cms, NULL);
    if (n <= 0)
        return crypto_fail("cms_to_der", CRYPTO_EINTERNAL);
    uint8_t *buf = xmalloc((size_t)n);
    unsigned char *p = buf;
    i2d_CMS_ContentInfo(cms, &p);
    *der = buf;
    *len = (size_t)n;
    return 0;
}

/* A read-only memory BIO over data (which may be empty); NULL if len does not fit an int. */
static BIO *mem_bio(const uint8_t *data, size_t len)
{
    if (len > INT_MAX)
        return NULL;
    return BIO_new_mem_buf(len ? (const void *)data : "", (int)len);
}

static int sign(const crypto_cert *signer, const crypto_key *key, const crypto_cert *const *chain,
                size_t nchain, const uint8_t *data, size_t len, unsigned int flags,
                uint8_t **out_der, size_t *out_len)
{
    BIO *in = mem_bio(data, len);
    CMS_ContentInfo *cms = NULL;
    int rc = in ? CRYPTO_EINTERNAL : CRYPTO_EINPUT;

    flags |= CMS_BINARY | CMS_PARTIAL | CMS_NOSMIMECAP;
    cms = in ? CMS_sign(NULL, NULL, NULL, NULL, flags) : NULL;
    if (cms == NULL || !CMS_add1_signer(cms, signer->x509, key->pkey, EVP_sha256(), flags))
        goto out;
    for (size_t i = 0; i < nchain; i++)
        if (!CMS_add1_cert(cms, chain[i]->x509))
            goto out;
    if (!CMS_final(cms, in, NULL, flags))
        goto out;
    rc = crypto_cms_to_der(cms, out_der, out_len);
out:
    CMS_ContentInfo_free(cms);
    BIO_free(in);
    return rc ? crypto_fail("cms_sign", rc) : 0;
}

int cms_sign(const crypto_cert *signer, const crypto_key *key, const crypto_cert *const *chain,
             size_t nchain, const uint8_t *data, size_t len, uint8_t **out_der, size_t *out_len)
{
    return sign(signer, key, chain, nchain, data, len, 0, out_der, out_len);
}

int cms_sign_detached(const crypto_cert *signer, const crypto_key *key, const uint8_t *data,
                      size_t len, uint8_t **out_der, size_t *out_len)
{
    return sign(signer, key, NULL, 0, data, len, CMS_DETACHED, out_der, out_len);
}

/* A parsed SignedData with exactly one SignerInfo, or NULL. */
static CMS_ContentInfo *parse_signed(const uint8_t *der, size_t len)
{
    CMS_ContentInfo *cms = crypto_cms_parse(der, len);
    if (cms != NULL && (OBJ_obj2nid(CMS_get0_type(cms)) != NID_pkcs7_signed ||
                        sk_CMS_SignerInfo_num(CMS_get0_SignerInfos(cms)) != 1)) {
        CMS_ContentInfo_free(cms);
        cms = NULL;
    }
    return cms;
}

/* After a successful CMS_verify: a new reference to the (single) signer's certificate. */
static crypto_cert *signer_cert(CMS_ContentInfo *cms)
{
    X509 *x = NULL;
    CMS_SignerInfo_get0_algs(sk_CMS_SignerInfo_value(CMS_get0_SignerInfos(cms), 0), NULL, &x, NULL,
                             NULL);
    X509_up_ref(x);
    return crypto_cert_wrap(x);
}

static int attached(const uint8_t *der, size_t len, int verify, uint8_t **content,
                    size_t *content_len, crypto_cert **signer_out)
{
    CMS_ContentInfo *cms = parse_signed(der, len);
    ASN1_OCTET_STRING **econtent = cms ? CMS_get0_content(cms) : NULL;
    int rc = CRYPTO_EINPUT;

    if (econtent == NULL || *econtent == NULL)
        goto out;
    rc = CRYPTO_EVERIFY;
    if (verify &&
        CMS_verify(cms, NULL, NULL, NULL, NULL, CMS_NO_SIGNER_CERT_VERIFY | CMS_BINARY) != 1)
        goto out;
    size_t n = (size_t)ASN1_STRING_length(*econtent);
    *content = xmalloc(n + 1);
    memcpy(*content, ASN1_STRING_get0_data(*econtent), n);
    (*content)[n] = '\0';
    *content_len = n;
    if (signer_out != NULL)
        *signer_out = signer_cert(cms);
    rc = 0;
out:
    CMS_ContentInfo_free(cms);
    return rc ? crypto_fail("cms_attached", rc) : 0;
}

int cms_attached_content(const uint8_t *der, size_t len, uint8_t **content, size_t *content_len)
{
    return attached(der, len, 0, content, content_len, NULL);
}

int cms_attached_verify(const uint8_t *der, size_t len, uint8_t **content, size_t *content_len,
                        crypto_cert **signer_out)
{
    return attached(der, len, 1, content, content_len, signer_out);
}

/*
 * The detached content as a BIO chain we own: a pass-through filter over a read-only memory
 * BIO. CMS_verify copies a bare memory BIO into a temporary one of its own, and OpenSSL
 * 3.0.19 (Debian 12) leaks that copy when CMS_dataInit fails, e.g. on an unknown digest
 * algorithm OID (fuzz/corpus/signature/leak-*). With a filter on top CMS_verify uses our BIO
 * directly and we free the whole chain ourselves on every path.
 */
static BIO *content_bio(const uint8_t *data, size_t len)
{
    BIO *mem = mem_bio(data, len), *filter = mem ? BIO_new(BIO_f_null()) : NULL;
    if (filter == NULL) {
        BIO_free(mem);
        return NULL;
    }
    return BIO_push(filter, mem);
}

int crypto_cms_verify_detached_openssl(const uint8_t *sig, size_t sig_len, const uint8_t *body,
                                       size_t body_len, crypto_cert **signer_out)
{
    CMS_ContentInfo *cms = parse_signed(sig, sig_len);
    BIO *content = NULL;
    int rc = CRYPTO_EINPUT;

    if (cms == NULL || CMS_is_detached(cms) != 1 || (content = content_bio(body, body_len)) == NULL)
        goto out;
    rc = CRYPTO_EVERIFY;
    if (CMS_verify(cms, NULL, NULL, content, NULL, CMS_NO_SIGNER_CERT_VERIFY | CMS_BINARY) != 1)
        goto out;
    if (signer_out != NULL)
        *signer_out = signer_cert(cms);
    rc = 0;
out:
    BIO_free_all(content);
    CMS_ContentInfo_free(cms);
    return rc ? crypto_fail("cms_verify_detached", rc) : 0;
}
