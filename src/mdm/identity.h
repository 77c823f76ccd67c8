/*
 * Device identity on every check-in and connect request (PROTOCOL.md 10): the certificate that
 * signed `Mdm-Signature` (detached CMS over the exact body), the TLS client certificate when
 * Orchard terminates TLS, or a certificate passed by a trusted TLS-terminating proxy
 * (nginx `$ssl_client_escaped_cert` as X-SSL-Client-Cert, or RFC 9440 `Client-Cert`). Whatever
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

#endif
