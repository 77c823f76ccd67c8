/*
 * scep.h over OpenSSL. The outer SignedData is handled with the CMS API (it gives access to
 * the signed attributes); the inner EnvelopedData is decrypted with the PKCS7 API because
 * that exposes the content-encryption algorithm, which the reply must reuse: a client that
 * encrypted with DES-CBC may understand nothing better.
 */
#include "crypto/scep.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/pkcs7.h>

#include "core/mem.h"
#include "crypto/crypto_int.h"

/* Signed attributes of a SCEP pkiMessage (RFC 8894 3.2.1). */
#define OID_MESSAGE_TYPE "2.16.840.1.113733.1.9.2"
#define OID_PKI_STATUS "2.16.840.1.113733.1.9.3"
#define OID_FAIL_INFO "2.16.840.1.113733.1.9.4"
#define OID_SENDER_NONCE "2.16.840.1.113733.1.9.5"
#define OID_RECIPIENT_NONCE "2.16.840.1.113733.1.9.6"
#define OID_TRANSACTION_ID "2.16.840.1.113733.1.9.7"

#define NONCE_LEN 16
#define MAX_NONCE_LEN 64
#define MAX_TRANSACTION_ID_LEN 256

struct scep_ca {
    crypto_cert *cert;
    crypto_key *key;
    uint8_t *cert_der;
    size_t cert_der_len;
};

struct scep_request {
    enum scep_message_type type;
    char *transaction_id;
    uint8_t *nonce;
    size_t nonce_len;
    crypto_cert *signer;
    uint8_t *envelope; /* the pkcsPKIEnvelope (DER) until scep_request_open decrypts it */
    size_t envelope_len;
    int opened;
    int cipher_nid; /* content-encryption algorithm of the request's envelope */
    X509_REQ *csr;  /* PKCSReq / RenewalReq only */
    char *challenge;
    char *subject;
    uint8_t *public_key;
    size_t public_key_len;
};

scep_ca *scep_ca_new(crypto_cert *ca_cert, crypto_key *ca_key)
{
    scep_ca *ca = xmalloc(sizeof *ca);
    ca->cert = ca_cert;
    ca->key = ca_key;
    ca->cert_der = NULL;
    if (crypto_init() != 0 || X509_check_private_key(ca_cert->x509, ca_key->pkey) != 1 ||
        crypto_cert_to_der(ca_cert, &ca->cert_der, &ca->cert_der_len) != 0) {
        crypto_fail("scep_ca_new", CRYPTO_EINPUT);
        scep_ca_free(ca);
        return NULL;
    }
    return ca;
}

void scep_ca_free(scep_ca *ca)
{
    if (ca == NULL)
        return;
    crypto_cert_free(ca->cert);
    crypto_key_free(ca->key);
    free(ca->cert_der);
    free(ca);
}

const uint8_t *scep_ca_cert_der(const scep_ca *ca, size_t *len)
{
    *len = ca->cert_der_len;
    return ca->cert_der;
}

const crypto_cert *scep_ca_cert(const scep_ca *ca)
{
    return ca->cert;
}

/* ---- Parsing ---- */

/* The single value of a single-valued signed attribute of the given ASN.1 type, or NULL. */
static const ASN1_STRING *signed_attr(CMS_SignerInfo *si, const char *oid, int type)
{
    ASN1_OBJECT *obj = OBJ_txt2obj(oid, 1);
    /* lastpos -3: the attribute must occur once, with exactly one value. */
    const ASN1_STRING *s = obj ? CMS_signed_get0_data_by_OBJ(si, obj, -3, type) : NULL;
    ASN1_OBJECT_free(obj);
    return s;
}

static int parse_message_type(const ASN1_STRING *s, enum scep_message_type *out)
{
    int n = ASN1_STRING_length(s), v = 0;
    const unsigned char *p = ASN1_STRING_get0_data(s);

    if (n < 1 || n > 2)
        return CRYPTO_EINPUT;
    for (int i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return CRYPTO_EINPUT;
        v = v * 10 + (p[i] - '0');
    }
    *out = (enum scep_message_type)v;
    return 0;
}

static int parse_attributes(CMS_SignerInfo *si, scep_request *req)
{
    const ASN1_STRING *type = signed_attr(si, OID_MESSAGE_TYPE, V_ASN1_PRINTABLESTRING);
    const ASN1_STRING *tid = signed_attr(si, OID_TRANSACTION_ID, V_ASN1_PRINTABLESTRING);
    const ASN1_STRING *nonce = signed_attr(si, OID_SENDER_NONCE, V_ASN1_OCTET_STRING);

    if (type == NULL || tid == NULL || nonce == NULL || parse_message_type(type, &req->type) ||
        ASN1_STRING_length(tid) < 1 || ASN1_STRING_length(tid) > MAX_TRANSACTION_ID_LEN ||
        ASN1_STRING_length(nonce) < 1 || ASN1_STRING_length(nonce) > MAX_NONCE_LEN)
        return CRYPTO_EINPUT;
    req->transaction_id = crypto_asn1_string_utf8(tid);
    req->nonce_len = (size_t)ASN1_STRING_length(nonce);
    req->nonce = xmalloc(req->nonce_len);
    memcpy(req->nonce, ASN1_STRING_get0_data(nonce), req->nonce_len);
    return req->transaction_id ? 0 : CRYPTO_EINPUT;
}

/* Decrypts the pkcsPKIEnvelope with the CA key into *plain (a memory BIO). */
static int decrypt_envelope(const scep_ca *ca, scep_request *req, BIO **plain)
{
    const unsigned char *p = req->envelope;
    PKCS7 *p7 = d2i_PKCS7(NULL, &p, (long)req->envelope_len);
    int rc = CRYPTO_EINPUT;

    *plain = BIO_new(BIO_s_mem());
    /* Structure first (cheap): one recipient, a content-encryption algorithm; only then the
     * private-key operation. */
    if (p7 == NULL || *plain == NULL || !PKCS7_type_is_enveloped(p7) ||
        sk_PKCS7_RECIP_INFO_num(p7->d.enveloped->recipientinfo) != 1 ||
        p7->d.enveloped->enc_data == NULL || p7->d.enveloped->enc_data->algorithm == NULL)
        goto out;
    req->cipher_nid = OBJ_obj2nid(p7->d.enveloped->enc_data->algorithm->algorithm);
    if (PKCS7_decrypt(p7, ca->key->pkey, ca->cert->x509, *plain, PKCS7_BINARY) != 1)
        goto out;
    rc = 0;
out:
    PKCS7_free(p7);
    return rc;
}

/* Reads the challengePassword attribute (absent is fine). */
static int csr_challenge(X509_REQ *csr, char **out)
{
    int i = X509_REQ_get_attr_by_NID(csr, NID_pkcs9_challengePassword, -1);
    if (i < 0)
        return 0;
    ASN1_TYPE *v = X509_ATTRIBUTE_get0_type(X509_REQ_get_attr(csr, i), 0);
    switch (v ? ASN1_TYPE_get(v) : -1) {
    case V_ASN1_PRINTABLESTRING:
    case V_ASN1_UTF8STRING:
    case V_ASN1_IA5STRING:
    case V_ASN1_T61STRING:
    case V_ASN1_BMPSTRING:
    case V_ASN1_UNIVERSALSTRING:
        *out = crypto_asn1_string_utf8(v->value.asn1_string);
        return *out ? 0 : CRYPTO_EINPUT;
    default:
        return CRYPTO_EINPUT;
    }
}

static int parse_csr(BIO *plain, scep_request *req)
{
    unsigned char *der = NULL;
    long len = BIO_get_mem_data(plain, &der);
    const unsigned char *p = der;
    EVP_PKEY *pub;
    int n;

    req->csr = len > 0 ? d2i_X509_REQ(NULL, &p, len) : NULL;
    if (req->csr == NULL || p != der + len || (pub = X509_REQ_get0_pubkey(req->csr)) == NULL)
        return CRYPTO_EINPUT;
    if (X509_REQ_verify(req->csr, pub) != 1)
        return CRYPTO_EVERIFY;
    if (csr_challenge(req->csr, &req->challenge) != 0 || (n = i2d_PUBKEY(pub, NULL)) <= 0)
        return CRYPTO_EINPUT;
    req->subject = crypto_name_string(X509_REQ_get_subject_name(req->csr));
    req->public_key = xmalloc((size_t)n);
    req->public_key_len = (size_t)n;
    unsigned char *w = req->public_key;
    i2d_PUBKEY(pub, &w);
    return 0;
}

int scep_request_parse_signed(const scep_ca *ca, const uint8_t *msg, size_t len, scep_request **out)
{
    (void)ca;
    CMS_ContentInfo *cms = len <= SCEP_MAX_MESSAGE ? crypto_cms_parse(msg, len) : NULL;
    ASN1_OCTET_STRING **env = cms ? CMS_get0_content(cms) : NULL;
    STACK_OF(CMS_SignerInfo) *sis = cms ? CMS_get0_SignerInfos(cms) : NULL;
    scep_request *req = xcalloc(1, sizeof *req);
    X509 *signer = NULL;
    int rc = CRYPTO_EINPUT;

    if (cms == NULL || OBJ_obj2nid(CMS_get0_type(cms)) != NID_pkcs7_signed || env == NULL ||
        *env == NULL || ASN1_STRING_length(*env) <= 0 || sk_CMS_SignerInfo_num(sis) != 1)
        goto out;
    /* The attributes are plain parsing; the signature check after them is a public-key
     * operation, still cheap next to the decryption scep_request_open does. */
    rc = parse_attributes(sk_CMS_SignerInfo_value(sis, 0), req);
    if (rc != 0)
        goto out;
    rc = CRYPTO_EVERIFY;
    if (CMS_verify(cms, NULL, NULL, NULL, NULL, CMS_NO_SIGNER_CERT_VERIFY | CMS_BINARY) != 1)
        goto out;
    CMS_SignerInfo_get0_algs(sk_CMS_SignerInfo_value(sis, 0), NULL, &signer, NULL, NULL);
    X509_up_ref(signer);
    req->signer = crypto_cert_wrap(signer);
    req->envelope_len = (size_t)ASN1_STRING_length(*env);
    req->envelope = xmalloc(req->envelope_len);
    memcpy(req->envelope, ASN1_STRING_get0_data(*env), req->envelope_len);
    rc = 0;
out:
    CMS_ContentInfo_free(cms);
    if (rc != 0) {
        scep_request_free(req);
        return crypto_fail("scep_request_parse", rc);
    }
    *out = req;
    return 0;
}

int scep_request_open(const scep_ca *ca, scep_request *req)
{
    BIO *plain = NULL;
    if (req->opened)
        return 0;
    int rc = decrypt_envelope(ca, req, &plain);
    if (rc == 0 && (req->type == SCEP_PKCS_REQ || req->type == SCEP_RENEWAL_REQ))
        rc = parse_csr(plain, req);
    BIO_free(plain);
    if (rc != 0)
        return crypto_fail("scep_request_open", rc);
    req->opened = 1;
    return 0;
}

int scep_request_parse(const scep_ca *ca, const uint8_t *msg, size_t len, scep_request **out)
{
    scep_request *req = NULL;
    int rc = scep_request_parse_signed(ca, msg, len, &req);
    if (rc == 0 && (rc = scep_request_open(ca, req)) != 0) {
        scep_request_free(req);
        req = NULL;
    }
    *out = req;
    return rc;
}

void scep_request_free(scep_request *req)
{
    if (req == NULL)
        return;
    free(req->transaction_id);
    free(req->nonce);
    crypto_cert_free(req->signer);
    free(req->envelope);
    X509_REQ_free(req->csr);
    free(req->challenge);
    free(req->subject);
    free(req->public_key);
    free(req);
}

enum scep_message_type scep_request_message_type(const scep_request *req)
{
    return req->type;
}

const char *scep_request_transaction_id(const scep_request *req)
{
    return req->transaction_id;
}

const uint8_t *scep_request_sender_nonce(const scep_request *req, size_t *len)
{
    *len = req->nonce_len;
    return req->nonce;
}

const crypto_cert *scep_request_signer(const scep_request *req)
{
    return req->signer;
}

const char *scep_request_challenge(const scep_request *req)
{
    return req->challenge;
}

const char *scep_request_subject(const scep_request *req)
{
    return req->subject;
}

const uint8_t *scep_request_public_key(const scep_request *req, size_t *len)
{
    *len = req->public_key_len;
    return req->public_key;
}

/* ---- Issuing ---- */

/* "CN=cn, O=org" (O first in the sequence: RFC 2253 prints the most specific RDN first). */
static X509_NAME *issued_name(const char *cn, const char *org)
{
    X509_NAME *name = X509_NAME_new();
    if (name == NULL ||
        !X509_NAME_add_entry_by_NID(name, NID_organizationName, MBSTRING_UTF8,
                                    (const unsigned char *)org, -1, -1, 0) ||
        !X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8, (const unsigned char *)cn,
                                    -1, -1, 0)) {
        X509_NAME_free(name);
        return NULL;
    }
    return name;
}

int scep_issue_cert(const scep_ca *ca, const scep_request *req, const char *cn, const char *org,
                    int days, crypto_cert **issued)
{
    return scep_issue_cert_at(ca, req, cn, org, days, 0, issued);
}

int scep_issue_cert_at(const scep_ca *ca, const scep_request *req, const char *cn, const char *org,
                       int days, time_t now, crypto_cert **issued)
{
    /* Exactly what a device identity needs (TLS client authentication, Mdm-Signature, and
     * key encipherment for the SCEP reply); nothing from the CSR's extensions. */
    static const struct crypto_ext exts[] = {
        {NID_basic_constraints, "critical,CA:FALSE"},
        {NID_key_usage, "critical,digitalSignature,keyEncipherment"},
        {NID_ext_key_usage, "clientAuth"},
        {0, NULL},
    };
    X509 *x = NULL;

    if (req->csr == NULL || cn == NULL || org == NULL || cn[0] == '\0' || org[0] == '\0' ||
        strlen(cn) > 64 || strlen(org) > 64)
        return CRYPTO_EINPUT;
    X509_NAME *name = issued_name(cn, org);
    if (name == NULL)
        return CRYPTO_EINPUT;
    int rc = crypto_x509_issue_at(name, X509_REQ_get0_pubkey(req->csr), ca->cert, ca->key->pkey,
                                  days, now, exts, &x);
    X509_NAME_free(name);
    if (rc == 0)
        *issued = crypto_cert_wrap(x);
    return rc;
}

/* ---- Replies ---- */

/* The reply cipher: the request's if it is one we are willing to use, else AES-256-CBC. */
static EVP_CIPHER *reply_cipher(int request_nid)
{
    int nid = request_nid;
    if (nid != NID_des_cbc && nid != NID_des_ede3_cbc && nid != NID_aes_128_cbc &&
        nid != NID_aes_192_cbc && nid != NID_aes_256_cbc)
        nid = NID_aes_256_cbc;
    return EVP_CIPHER_fetch(NULL, OBJ_nid2sn(nid), NULL);
}

/* pkcsPKIEnvelope of a SUCCESS reply: a certs-only SignedData holding `issued`, encrypted to
 * the request's signer. */
static int success_envelope(const scep_request *req, const crypto_cert *issued, uint8_t **der,
                            size_t *len)
{
    CMS_ContentInfo *certs_only = CMS_sign(NULL, NULL, NULL, NULL, CMS_PARTIAL);
    CMS_ContentInfo *env = NULL;
    STACK_OF(X509) *recipients = sk_X509_new_null();
    EVP_CIPHER *cipher = reply_cipher(req->cipher_nid);
    uint8_t *inner = NULL;
    size_t inner_len = 0;
    BIO *in = NULL;
    int rc = CRYPTO_EINTERNAL;

    if (certs_only == NULL || recipients == NULL || cipher == NULL ||
        !CMS_add1_cert(certs_only, issued->x509) || !CMS_set_detached(certs_only, 1) ||
        crypto_cms_to_der(certs_only, &inner, &inner_len) != 0 ||
        !sk_X509_push(recipients, req->signer->x509) ||
        (in = BIO_new_mem_buf(inner, (int)inner_len)) == NULL ||
        (env = CMS_encrypt(recipients, in, cipher, CMS_BINARY)) == NULL)
        goto out;
    rc = crypto_cms_to_der(env, der, len);
out:
    BIO_free(in);
    free(inner);
    CMS_ContentInfo_free(env);
    EVP_CIPHER_free(cipher);
    sk_X509_free(recipients);
    CMS_ContentInfo_free(certs_only);
    return rc;
}

static int add_attr(CMS_SignerInfo *si, const char *oid, int type, const void *data, size_t len)
{
    ASN1_OBJECT *obj = OBJ_txt2obj(oid, 1);
    int ok = obj != NULL && CMS_signed_add1_attr_by_OBJ(si, obj, type, data, (int)len);
    ASN1_OBJECT_free(obj);
    return ok;
}

static int add_reply_attrs(CMS_SignerInfo *si, const scep_request *req, const char *status,
                           const char *fail_info)
{
    uint8_t nonce[NONCE_LEN];
    crypto_random(nonce, sizeof nonce);
    return add_attr(si, OID_MESSAGE_TYPE, V_ASN1_PRINTABLESTRING, "3", 1) &&
           add_attr(si, OID_PKI_STATUS, V_ASN1_PRINTABLESTRING, status, strlen(status)) &&
           (fail_info == NULL ||
            add_attr(si, OID_FAIL_INFO, V_ASN1_PRINTABLESTRING, fail_info, strlen(fail_info))) &&
           add_attr(si, OID_TRANSACTION_ID, V_ASN1_PRINTABLESTRING, req->transaction_id,
                    strlen(req->transaction_id)) &&
           add_attr(si, OID_RECIPIENT_NONCE, V_ASN1_OCTET_STRING, req->nonce, req->nonce_len) &&
           add_attr(si, OID_SENDER_NONCE, V_ASN1_OCTET_STRING, nonce, sizeof nonce);
}

/* Signs content (the envelope, or nothing for a failure) with the CA, adding the SCEP
 * attributes. pkiStatus is "0" SUCCESS or "2" FAILURE (with fail_info). */
static int build_reply(const scep_ca *ca, const scep_request *req, const char *status,
                       const char *fail_info, const uint8_t *content, size_t content_len,
                       uint8_t **der, size_t *len)
{
    const unsigned int flags = CMS_BINARY | CMS_PARTIAL | CMS_NOSMIMECAP;
    CMS_ContentInfo *cms = CMS_sign(NULL, NULL, NULL, NULL, flags);
    CMS_SignerInfo *si = NULL;
    BIO *in = BIO_new_mem_buf(content_len ? (const void *)content : "", (int)content_len);
    int rc = CRYPTO_EINTERNAL;

    if (cms == NULL || in == NULL ||
        (si = CMS_add1_signer(cms, ca->cert->x509, ca->key->pkey, EVP_sha256(), flags)) == NULL ||
        !add_reply_attrs(si, req, status, fail_info) || !CMS_final(cms, in, NULL, flags))
        goto out;
    rc = crypto_cms_to_der(cms, der, len);
out:
    BIO_free(in);
    CMS_ContentInfo_free(cms);
    return rc;
}

int scep_reply_success(const scep_ca *ca, const scep_request *req, const crypto_cert *issued,
                       uint8_t **der, size_t *len)
{
    uint8_t *env = NULL;
    size_t env_len = 0;
    int rc = success_envelope(req, issued, &env, &env_len);
    if (rc == 0)
        rc = build_reply(ca, req, "0", NULL, env, env_len, der, len);
    free(env);
    return rc ? crypto_fail("scep_reply_success", rc) : 0;
}

int scep_reply_failure(const scep_ca *ca, const scep_request *req, enum scep_fail_info info,
                       uint8_t **der, size_t *len)
{
    static const char *const names[] = {"0", "1", "2", "3", "4"};
    if ((unsigned)info >= sizeof names / sizeof names[0])
        return CRYPTO_EINPUT;
    int rc = build_reply(ca, req, "2", names[info], NULL, 0, der, len);
    return rc ? crypto_fail("scep_reply_failure", rc) : 0;
}
