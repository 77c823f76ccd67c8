/*
 * Keys, certificates and the small cryptographic helpers the rest of Orchard needs: creating
 * the server's own CA, TLS, profile-signing and development push identities; loading and
 * inspecting certificates and private keys; random bytes, UUIDs, SHA-256, constant-time
 * comparison and base64. It is the only place (with cms.h and scep.h) whose implementation
 * uses OpenSSL; callers see opaque types, plain bytes and PEM strings.
 *
 * It does not know about enrollments or storage: policy (which CA a device must chain to,
 * which fingerprint belongs to which enrollment) lives in the services.
 *
 * Ownership: every `char *` and `uint8_t *` returned through a pointer is allocated with
 * xmalloc() and freed by the caller with free(). Allocation failure aborts (core/mem.h).
 * Thread safety: every function is safe to call from any thread; objects are not shared
 * mutable state once built (a crypto_cert may be read by many threads at once).
 */
#ifndef ORCHARD_CRYPTO_PKI_H
#define ORCHARD_CRYPTO_PKI_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* Error codes returned (negated meaning: 0 is success) by crypto, cms and scep functions. */
enum crypto_error {
    CRYPTO_EINPUT = -1,    /* malformed, truncated or unsupported input (HTTP 400) */
    CRYPTO_EVERIFY = -2,   /* well-formed, but a signature, issuer or validity check failed */
    CRYPTO_EINTERNAL = -3, /* OpenSSL failed on valid input (e.g. a provider is missing) */
};

typedef struct crypto_cert crypto_cert; /* one X.509 certificate */
typedef struct crypto_key crypto_key;   /* one private key (RSA or EC) */

/*
 * Loads OpenSSL's "default" and "legacy" providers (the legacy one supplies DES-CBC, which
 * Debian's scepclient uses to encrypt SCEP requests). Call once at startup; idempotent and
 * thread-safe, later calls return the first result. Returns 0 or CRYPTO_EINTERNAL.
 */
int crypto_init(void);

/* ---- Generating identities (RSA-2048, SHA-256, random positive 16-byte serials) ---- */

/*
 * Creates a self-signed CA (CA:TRUE, keyCertSign|cRLSign) with subject CN=cn, valid for `days`
 * days. On success *cert_pem and *key_pem (PKCS#8, unencrypted) are new strings.
 */
int crypto_ca_generate(const char *cn, int days, char **cert_pem, char **key_pem);

/*
 * Issues a TLS server certificate for `host` from a CA: subjectAltName is an IP address when
 * host parses as IPv4/IPv6, a DNS name otherwise (letters, digits, '-', '.', '*' only);
 * serverAuth EKU. Returns CRYPTO_EINPUT for an unusable host name.
 */
int crypto_issue_tls_server(const crypto_cert *ca, const crypto_key *ca_key, const char *host,
                            int days, char **cert_pem, char **key_pem);

/* Issues a signing certificate (CN=cn, digitalSignature, emailProtection EKU) for profiles. */
int crypto_issue_signing(const crypto_cert *ca, const crypto_key *ca_key, const char *cn, int days,
                         char **cert_pem, char **key_pem);

/*
 * Creates a self-signed development push identity whose subject is UID=com.apple.mgmt.External.
 * <uuid>, CN=APSP:<uuid> (the shape of a real MDM push certificate), so the whole flow runs
 * without Apple. uuid may be NULL for a fresh random one (lowercase, as in Apple's topics).
 */
int crypto_push_identity_generate(const char *uuid, int days, char **cert_pem, char **key_pem);

/* ---- Certificates ---- */

/*
 * Parses exactly one DER certificate (trailing bytes are an error); *out is a new handle.
 * Cheap when repeated: each thread keeps the certificates it parsed, keyed by their exact
 * bytes (OpenSSL 3.0 takes ~150 us to parse one), so per-request client certificates cost a
 * lookup. Handles share the parsed certificate, which is immutable.
 */
int crypto_cert_from_der(const uint8_t *der, size_t len, crypto_cert **out);
/* The same for the first PEM certificate in a NUL-terminated string. */
int crypto_cert_from_pem(const char *pem, crypto_cert **out);
void crypto_cert_free(crypto_cert *cert);
/* DER encoding into a new buffer. */
int crypto_cert_to_der(const crypto_cert *cert, uint8_t **der, size_t *len);
/* PEM encoding as a new string. */
char *crypto_cert_to_pem(const crypto_cert *cert);
/* SHA-256 of the DER encoding as 64 lowercase hex digits plus NUL (computed once, at load). */
void crypto_cert_fingerprint(const crypto_cert *cert, char out[65]);
/* Serial number as lowercase hex in whole bytes ("02"), as `openssl x509 -serial` shows it. */
char *crypto_cert_serial_hex(const crypto_cert *cert);
/* Subject as one RFC 2253 line ("CN=x,O=y"), UTF-8 kept as is; new string. */
char *crypto_cert_subject(const crypto_cert *cert);
/* Validity period; either pointer may be NULL. CRYPTO_EINPUT if a time does not parse. */
int crypto_cert_validity(const crypto_cert *cert, time_t *not_before, time_t *not_after);
/* The push topic: the subject's UID (0.9.2342.19200300.100.1.1) as a new string, or NULL. */
char *crypto_cert_topic(const crypto_cert *cert);

/*
 * Checks that `cert` was issued by `ca` (names and key identifiers match, `ca` is a CA, and
 * the signature verifies with the CA's key) and that both are valid at `now`. now == 0 skips
 * the time checks. Returns 0 or CRYPTO_EVERIFY. No chain building: a chain of exactly one.
 * The signature verdict is remembered per thread (keyed by both fingerprints), so checking
 * the same device certificate on every request costs a lookup and the time comparison.
 */
int crypto_cert_verify_issued_by(const crypto_cert *cert, const crypto_cert *ca, time_t now);

/* ---- Private keys ---- */

/*
 * Parses a PEM private key (PKCS#1 "RSA PRIVATE KEY", SEC1, PKCS#8, or encrypted PKCS#8 /
 * legacy encrypted PEM). passphrase may be NULL for an unencrypted key (an encrypted key
 * then fails; nothing ever prompts on a terminal) and may be "" for an empty one.
 */
int crypto_key_from_pem(const char *pem, const char *passphrase, crypto_key **out);
void crypto_key_free(crypto_key *key);
/* Unencrypted PKCS#8 PEM as a new string. Handle like a password: never log it. */
char *crypto_key_to_pem(const crypto_key *key);

/* ---- Random, hashing, comparison ---- */

/* Fills buf with n bytes from OpenSSL's CSPRNG; aborts the process if the RNG fails. */
void crypto_random(void *buf, size_t n);
/* Writes a random (version 4) UUID, uppercase as Apple writes them, plus NUL. */
void crypto_uuid(char out[37]);
void crypto_sha256(const void *data, size_t len, uint8_t out[32]);
/* SHA-256 as 64 lowercase hex digits plus NUL. */
void crypto_sha256_hex(const void *data, size_t len, char out[65]);
/* HMAC-SHA256 of data keyed with key, as 64 lowercase hex digits plus NUL. */
void crypto_hmac_sha256_hex(const void *key, size_t key_len, const void *data, size_t len,
                            char out[65]);
/* 1 if the n bytes at a and b are equal, 0 otherwise; time depends only on n. */
int crypto_memeq(const void *a, const void *b, size_t n);

/* ---- Base64 ---- */

/*
 * Decodes standard-alphabet base64, skipping ASCII whitespace anywhere (plist <data> and the
 * Mdm-Signature header wrap lines). Padding may be present or omitted. *out is new (and
 * NUL-terminated for convenience, not counted in *out_len). CRYPTO_EINPUT on any other
 * character, misplaced '=' or an impossible length.
 */
int crypto_base64_decode(const char *in, size_t len, uint8_t **out, size_t *out_len);
/* Standard base64 with padding, no line breaks; new string. */
char *crypto_base64_encode(const void *data, size_t len);
/* base64url (RFC 4648 section 5) without padding, for tokens in URLs; new string. */
char *crypto_base64url_encode(const void *data, size_t len);

#endif
