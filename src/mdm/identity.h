/*
 * Device identity on every check-in and connect request (PROTOCOL.md 10): the certificate that
 * signed `Mdm-Signature` (detached CMS over the exact body), the TLS client certificate when
 * Orchard terminates TLS, or a certificate passed by a trusted TLS-terminating proxy in the one
 * header named by `proxy_cert_header` (RFC 9440 `:base64(DER):` or nginx
 * `$ssl_client_escaped_cert`; docs/HTTP.md). Whatever
 * the source, the certificate must chain to Orchard's SCEP CA and be valid now; when several
 * sources are present they must agree.
 */
#ifndef ORCHARD_MDM_IDENTITY_H
#define ORCHARD_MDM_IDENTITY_H

#include "app.h"
#include "http/http.h"

/*
 * Verifies the request's device certificate and writes its SHA-256 fingerprint (hex) into fp.
 * Returns 0, or -1 with a short reason in why (for logs; never sent to the device).
 */
int identity_verify(struct app *app, const http_request *req, char fp[65], const char **why);

/*
 * An http_prebody_check for check-in and connect (routes.c): a request that offers no device
 * identity at all -- no Mdm-Signature, no TLS client certificate, no certificate header from a
 * trusted proxy -- is refused (403) before its body is read. Offering one proves nothing yet:
 * identity_verify does that once the body is there.
 */
int identity_prebody(void *ctx, http_request *req, http_response *res);

/* A proxy certificate header value, RFC 9440 `:base64(DER):` or URL-escaped PEM (decided by
 * shape), as a certificate (caller frees). 0, or -1 if it is neither. Exposed for tests. */
int identity_proxy_cert_decode(const char *value, crypto_cert **cert);

#endif
