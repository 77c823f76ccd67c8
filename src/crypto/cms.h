/*
 * CMS SignedData (RFC 5652) as MDM uses it: signing enrollment profiles (attached content),
 * reading the device's signed MachineInfo body on the first enrollment request (attached,
 * BER, SHA-1, signed by an Apple device certificate that chains to expired Apple CAs; see
 * PROTOCOL.md 4.2), and the `Mdm-Signature` header (a detached signature over the exact HTTP
 * body; PROTOCOL.md 10.2).
 *
 * Verification here is cryptographic self-consistency only: the signature verifies with the
 * certificate carried in the message. Whether that certificate is acceptable (chains to
 * Orchard's SCEP CA, belongs to the enrollment) is the caller's decision, made with
 * crypto_cert_verify_issued_by() and the stored fingerprint.
 *
 * Inputs come from the network: any malformed, truncated or hostile bytes give CRYPTO_EINPUT
 * (or CRYPTO_EVERIFY when the structure parses but the signature does not verify), never a
 * crash. Callers cap the input size. All functions are thread-safe and take no locks of
 * their own. Returned buffers are xmalloc()ed; the caller frees them.
 */
#ifndef ORCHARD_CRYPTO_CMS_H
#define ORCHARD_CRYPTO_CMS_H

#include <stddef.h>
#include <stdint.h>

#include "crypto/pki.h"

/*
 * Signs data as a DER SignedData with attached content, SHA-256, carrying the signer
 * certificate plus the nchain certificates in chain (may be NULL when nchain is 0), e.g. the
 * CA so a device can show the profile as verified. Verifies with
 * `openssl cms -verify -inform DER -CAfile ca.pem`.
 */
int cms_sign(const crypto_cert *signer, const crypto_key *key, const crypto_cert *const *chain,
             size_t nchain, const uint8_t *data, size_t len, uint8_t **out_der, size_t *out_len);

/*
 * Signs data as a detached SignedData (no eContent), SHA-256, carrying the signer certificate:
 * what a device puts, base64-encoded, in Mdm-Signature. Used by the simulator and tests.
 */
int cms_sign_detached(const crypto_cert *signer, const crypto_key *key, const uint8_t *data,
                      size_t len, uint8_t **out_der, size_t *out_len);

/*
 * Returns the attached content (eContent) of a DER or BER (indefinite-length, constructed
 * OCTET STRING) SignedData without checking any signature. *content is NUL-terminated for
 * convenience (not counted in *content_len). CRYPTO_EINPUT if there is no attached content.
 */
int cms_attached_content(const uint8_t *der, size_t len, uint8_t **content, size_t *content_len);

/*
 * Like cms_attached_content, but first requires exactly one signer and verifies its signature
 * over the content with the certificate carried in the message (no chain or time checks:
 * Apple's device CAs are expired). signer_out may be NULL; otherwise it receives a new
 * reference to the signer certificate. CRYPTO_EVERIFY when the signature does not verify.
 */
int cms_attached_verify(const uint8_t *der, size_t len, uint8_t **content, size_t *content_len,
                        crypto_cert **signer_out);

/*
 * Verifies an Mdm-Signature: sig is the decoded detached SignedData (digest SHA-1 or SHA-256),
 * body the exact HTTP body bytes. Requires exactly one signer whose certificate is in the
 * message; on success *signer_out (may be NULL) is a new reference to it. No chain or time
 * checks (see above). CRYPTO_EINPUT for malformed or attached-content input, CRYPTO_EVERIFY
 * when the signature does not match the body. Runs on every signed device request: the common
 * shape is checked by a fast path with a per-thread cache of signer certificates (~25 us for
 * RSA-2048, most of it the RSA operation), anything else by OpenSSL's CMS_verify (~250 us).
 */
int cms_verify_detached(const uint8_t *sig, size_t sig_len, const uint8_t *body, size_t body_len,
                        crypto_cert **signer_out);

#endif
