/*
 * Private to src/crypto/: the definitions behind the opaque types of pki.h and the helpers
 * pki.c, cms.c and scep.c share. Nothing outside src/crypto/ may include this file (it pulls
 * in OpenSSL headers).
 */
#ifndef ORCHARD_CRYPTO_INT_H
#define ORCHARD_CRYPTO_INT_H

#include <openssl/cms.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "crypto/cms_paths.h"
#include "crypto/pki.h"

struct crypto_cert {
    X509 *x509;
    uint8_t sha256[32]; /* of the DER encoding: the fingerprint, computed once */
    /* Validity as Unix times, decoded once: checked on every device request. 0/0 if the
     * certificate's times cannot be decoded (then it is never valid). */
    time_t not_before, not_after;
};

struct crypto_key {
    EVP_PKEY *pkey;
};

/* One X.509v3 extension in OpenSSL's config syntax, e.g. {NID_key_usage, "critical,..."}. */
struct crypto_ext {
    int nid;
    const char *value;
};

/* Wraps an X509 (takes ownership of the reference); aborts if it cannot be encoded. */
crypto_cert *crypto_cert_wrap(X509 *x509);
/* Wraps an X509 whose DER SHA-256 the caller already knows (takes ownership). */
crypto_cert *crypto_cert_wrap_hashed(X509 *x509, const uint8_t sha256[32]);
/* A new handle on the same certificate (the X509 is reference-counted, not copied). */
crypto_cert *crypto_cert_ref(const crypto_cert *cert);

/*
 * Logs the pending OpenSSL errors at debug level as `op`, clears the (thread-local) error
 * queue so it cannot leak into an unrelated later call, and returns `code`.
 */
int crypto_fail(const char *op, int code);

/* An ASN.1 string type as a new UTF-8 C string; NULL if it does not convert or holds a NUL. */
char *crypto_asn1_string_utf8(const ASN1_STRING *s);

/* X509_NAME as one RFC 2253 line, UTF-8 unescaped; new string. */
char *crypto_name_string(const X509_NAME *name);

/*
 * Builds and signs (SHA-256) a v3 certificate: random positive 128-bit serial, notBefore five
 * minutes in the past (client clock skew), notAfter `days` from now, subjectKeyIdentifier and
 * (when issuer is not NULL) authorityKeyIdentifier plus `exts` (terminated by {0, NULL}).
 * issuer == NULL makes it self-signed (sign_key must then match pubkey).
 */
int crypto_x509_issue(const X509_NAME *subject, EVP_PKEY *pubkey, const crypto_cert *issuer,
                      EVP_PKEY *sign_key, int days, const struct crypto_ext *exts, X509 **out);
/* crypto_x509_issue with the validity counted from `at` (Unix seconds) instead of the wall
 * clock; at == 0 means now. */
int crypto_x509_issue_at(const X509_NAME *subject, EVP_PKEY *pubkey, const crypto_cert *issuer,
                         EVP_PKEY *sign_key, int days, time_t at, const struct crypto_ext *exts,
                         X509 **out);

/* ---- Per-thread caches (cert_cache.c) ---- */

/* A parsed certificate in the calling thread's cache. */
struct cached_cert {
    uint8_t *der; /* the exact bytes it was parsed from; NULL: empty entry */
    size_t der_len;
    crypto_cert *cert;
    EVP_PKEY_CTX *verify; /* Mdm-Signature fast path: verify context for the key, or NULL */
    int md;               /* digest index currently set on verify, -1 none */
};

/*
 * The calling thread's entry for exactly these bytes, parsed on a miss; NULL if they are not
 * exactly one DER certificate. Valid until the next call on the same thread (which may evict
 * it). Aborts on out-of-memory.
 */
struct cached_cert *crypto_cert_cache_get(const uint8_t *der, size_t len);
/* Whether this thread has already found cert to be issued and signed by ca (see
 * crypto_cert_verify_issued_by; a verdict depends only on the two certificates' bytes). */
int crypto_issued_memo_has(const crypto_cert *cert, const crypto_cert *ca);
void crypto_issued_memo_add(const crypto_cert *cert, const crypto_cert *ca);
/* A digest context owned by the calling thread, for one-shot use (no allocation per call). */
EVP_MD_CTX *crypto_thread_md_ctx(void);

/* DER of a CMS ContentInfo into a new xmalloc() buffer. */
int crypto_cms_to_der(CMS_ContentInfo *cms, uint8_t **der, size_t *len);

/* Parses a (BER or DER) CMS ContentInfo from memory; NULL on malformed input. */
CMS_ContentInfo *crypto_cms_parse(const uint8_t *der, size_t len);

#endif
