/*
 * Push identity helpers for `orchard pushcert`: reading a PKCS#12 bundle (what Keychain
 * Access exports), checking that a key belongs to a certificate, and producing the key and
 * PKCS#10 request an administrator takes to Apple's push certificate portal.
 *
 * Same conventions as pki.h: opaque types, 0 or a negative crypto_error, new strings freed by
 * the caller, thread-safe.
 */
#ifndef ORCHARD_CRYPTO_PUSHID_H
#define ORCHARD_CRYPTO_PUSHID_H

#include <stddef.h>
#include <stdint.h>

#include "crypto/pki.h"

/*
 * Parses a DER PKCS#12 bundle with its password (NULL or "" for none). *cert is the
 * certificate that matches the bundle's private key (*key). CRYPTO_EINPUT if it is not
 * PKCS#12, CRYPTO_EVERIFY on a wrong password (the MAC does not verify) or no key/certificate.
 */
int crypto_pkcs12_parse(const uint8_t *der, size_t len, const char *password, crypto_cert **cert,
                        crypto_key **key);

/* 1 if key is the private half of cert's public key, 0 otherwise. */
int crypto_key_matches_cert(const crypto_key *key, const crypto_cert *cert);

/* A new RSA key of `bits` bits (2048 for Apple's push certificates). */
int crypto_key_generate_rsa(int bits, crypto_key **out);

/* A PKCS#10 request (PEM) for key, subject CN=cn (and O=org when not NULL), SHA-256 signed. */
int crypto_csr_generate(const crypto_key *key, const char *cn, const char *org, char **csr_pem);

#endif
