/*
 * Private to src/crypto/ and its unit tests: the two implementations behind
 * cms_verify_detached(), exposed so the tests can check that the fast path agrees with
 * OpenSSL's CMS_verify on every input they try. No OpenSSL types, so tests may include it.
 */
#ifndef ORCHARD_CRYPTO_CMS_PATHS_H
#define ORCHARD_CRYPTO_CMS_PATHS_H

#include <stddef.h>
#include <stdint.h>

#include "crypto/pki.h"

/* Returned by the fast path for a message it does not handle. */
#define CRYPTO_DECLINE 1

/* The fast path (cms_detached.c): 0, CRYPTO_EVERIFY or CRYPTO_DECLINE. */
int crypto_cms_verify_detached_fast(const uint8_t *sig, size_t sig_len, const uint8_t *body,
                                    size_t body_len, crypto_cert **signer_out);

/* The same check done entirely by OpenSSL's CMS code (cms.c): the reference behaviour. */
int crypto_cms_verify_detached_openssl(const uint8_t *sig, size_t sig_len, const uint8_t *body,
                                       size_t body_len, crypto_cert **signer_out);

#endif
