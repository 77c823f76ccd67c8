/*
 * The CA side of SCEP (RFC 8894) message handling: parse a PKIOperation request (a SignedData
 * around an EnvelopedData encrypted to the CA, around a PKCS#10 CSR), issue the client
 * certificate, and build the signed CertRep reply. This is how a device obtains the identity
 * named by IdentityCertificateUUID in the enrollment profile (PROTOCOL.md 6.4).
 *
 * It holds no state between messages and makes no policy decisions: the service layer checks
 * the challenge password, decides between issuing and failing, and (for RenewalReq) checks
 * that the request signer chains to this CA with crypto_cert_verify_issued_by(). HTTP framing
 * (GetCACert, GetCACaps, PKIOperation over GET or POST) belongs to the HTTP layer.
 *
 * Requests may be encrypted with AES-*-CBC, 3DES or DES-CBC (Debian's scepclient), which needs
 * crypto_init(); scep_ca_new() calls it. A scep_ca is immutable after scep_ca_new() and may be
 * shared by all threads.
 */
#ifndef ORCHARD_CRYPTO_SCEP_H
#define ORCHARD_CRYPTO_SCEP_H

#include <stddef.h>
#include <stdint.h>

#include "crypto/pki.h"

/* GetCACaps answer (text/plain). Replies mirror the request's cipher, so DES3 is honest. */
#define SCEP_CA_CAPS "AES\nPOSTPKIOperation\nRenewal\nSHA-256\nSHA-1\nDES3\nSCEPStandard\n"

/* GetCACert answers with scep_ca_cert_der() as this content type. */
#define SCEP_CA_CERT_CONTENT_TYPE "application/x-x509-ca-cert"
/* PKIOperation replies use this content type. */
#define SCEP_PKI_MESSAGE_CONTENT_TYPE "application/x-pki-message"

enum scep_message_type {
    SCEP_CERT_REP = 3,
    SCEP_RENEWAL_REQ = 17,
    SCEP_PKCS_REQ = 19,
    SCEP_CERT_POLL = 20, /* GetCertInitial */
    SCEP_GET_CERT = 21,
    SCEP_GET_CRL = 22,
};

enum scep_fail_info {
    SCEP_FAIL_BAD_ALG = 0,
    SCEP_FAIL_BAD_MESSAGE_CHECK = 1,
    SCEP_FAIL_BAD_REQUEST = 2,
    SCEP_FAIL_BAD_TIME = 3,
    SCEP_FAIL_BAD_CERT_ID = 4,
};

typedef struct scep_ca scep_ca;
typedef struct scep_request scep_request;

/*
 * Creates the CA from its certificate and private key, taking ownership of both (they are
 * freed by scep_ca_free, also when this fails). NULL if crypto_init() fails or the key does
 * not match the certificate.
 */
scep_ca *scep_ca_new(crypto_cert *ca_cert, crypto_key *ca_key);
void scep_ca_free(scep_ca *ca);
/* The CA certificate as DER, for GetCACert; borrowed, valid as long as ca. */
const uint8_t *scep_ca_cert_der(const scep_ca *ca, size_t *len);
/* The CA certificate; borrowed. */
const crypto_cert *scep_ca_cert(const scep_ca *ca);

/* Largest PKIOperation message accepted: a CSR for a 4096-bit key is ~2 KB, its message ~6. */
#define SCEP_MAX_MESSAGE (64 * 1024)

/*
 * Parses a PKIOperation message in two steps, cheap first, so that a caller can refuse before
 * spending the CA's private key:
 *
 * scep_request_parse_signed: size (SCEP_MAX_MESSAGE), structure (SignedData, one signer, an
 * envelope), messageType, transactionID and senderNonce, and the outer signature verified with
 * the signer certificate it carries (no chain or time check: for PKCSReq it is a throwaway
 * self-signed certificate). No private-key operation. Returns 0 and a new *out,
 * CRYPTO_EINPUT for malformed input, or CRYPTO_EVERIFY for a bad signature.
 *
 * scep_request_open: decrypts the envelope with the CA key and, for PKCSReq and RenewalReq,
 * parses the CSR and verifies its self-signature (other types open without a CSR, so the
 * caller can answer them with a failure reply). 0, or CRYPTO_EINPUT / CRYPTO_EVERIFY.
 *
 * scep_request_parse does both.
 */
int scep_request_parse_signed(const scep_ca *ca, const uint8_t *msg, size_t len,
                              scep_request **out);
int scep_request_open(const scep_ca *ca, scep_request *req);
int scep_request_parse(const scep_ca *ca, const uint8_t *msg, size_t len, scep_request **out);
void scep_request_free(scep_request *req);

enum scep_message_type scep_request_message_type(const scep_request *req);
/* The client's transactionID (printable string); borrowed. */
const char *scep_request_transaction_id(const scep_request *req);
/* The client's senderNonce; borrowed. */
const uint8_t *scep_request_sender_nonce(const scep_request *req, size_t *len);
/* The certificate that signed the message; borrowed. For RenewalReq the caller must check it
 * chains to this CA before honouring the request. */
const crypto_cert *scep_request_signer(const scep_request *req);
/* The CSR's challengePassword, or NULL if absent (or no CSR); borrowed. Compare it with
 * crypto_memeq, never log it. */
const char *scep_request_challenge(const scep_request *req);
/* The CSR subject as an RFC 2253 line, or NULL without a CSR; borrowed. */
const char *scep_request_subject(const scep_request *req);
/* The CSR public key as DER SubjectPublicKeyInfo, or NULL without a CSR; borrowed. */
const uint8_t *scep_request_public_key(const scep_request *req, size_t *len);

/*
 * Issues the client certificate for an opened PKCSReq/RenewalReq: the CSR's key only, with the
 * subject "CN=cn, O=org" chosen by the caller (never the CSR's: a device must not name itself
 * after anything), random 128-bit serial, basicConstraints CA:FALSE, keyUsage
 * digitalSignature|keyEncipherment, extendedKeyUsage clientAuth, valid `days` days; none of the
 * CSR's extensions are copied. *issued is new. CRYPTO_EINPUT if the request has no CSR or cn /
 * org is empty or longer than 64 characters (the X.520 upper bound).
 */
int scep_issue_cert(const scep_ca *ca, const scep_request *req, const char *cn, const char *org,
                    int days, crypto_cert **issued);
/* scep_issue_cert with the validity counted from `now` (the server's clock, which tests move
 * with the debug clock) instead of the wall clock; now == 0 means the wall clock. */
int scep_issue_cert_at(const scep_ca *ca, const scep_request *req, const char *cn, const char *org,
                       int days, time_t now, crypto_cert **issued);

/*
 * Builds a CertRep with pkiStatus SUCCESS: a degenerate certs-only SignedData holding `issued`,
 * enveloped to the request's signer certificate with the request's content-encryption
 * algorithm (AES-256-CBC if that was none of AES/3DES/DES-CBC), inside a SignedData (SHA-256)
 * signed by the CA carrying messageType 3, the same transactionID, recipientNonce = the
 * request's senderNonce and a fresh senderNonce. *der is new.
 */
int scep_reply_success(const scep_ca *ca, const scep_request *req, const crypto_cert *issued,
                       uint8_t **der, size_t *len);

/* Builds a CertRep with pkiStatus FAILURE and the given failInfo (empty content). */
int scep_reply_failure(const scep_ca *ca, const scep_request *req, enum scep_fail_info info,
                       uint8_t **der, size_t *len);

#endif
