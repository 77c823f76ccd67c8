/* Device certificate extraction and verification. */
#include "mdm/identity.h"

#include <stdlib.h>
#include <string.h>

#include "core/mem.h"
#include "core/url.h"
#include "crypto/cms.h"

static int from_signature(const http_request *req, crypto_cert **cert)
{
    const char *sig = http_request_header(req, "Mdm-Signature");
    if (sig == NULL)
        return 1; /* absent */
    uint8_t *der = NULL;
    size_t len = 0;
    int rc = -1;
    if (crypto_base64_decode(sig, strlen(sig), &der, &len) == 0)
        rc = cms_verify_detached(der, len, (const uint8_t *)req->body, req->body_len, cert);
    free(der);
    return rc == 0 ? 0 : -1;
}

/* Client certificate forwarded by a trusted proxy; 1 if none. */
static int from_proxy(const struct app *app, const http_request *req, crypto_cert **cert)
{
    if (!http_addr_in_list(config_get(app->cfg, "trusted_proxies"), req->remote_addr))
        return 1;
    const char *h = http_request_header(req, "Client-Cert"); /* RFC 9440: :base64(DER): */
    if (h) {
        size_t n = strlen(h);
        if (n < 2 || h[0] != ':' || h[n - 1] != ':')
            return -1;
        uint8_t *der = NULL;
        size_t len = 0;
        int rc = crypto_base64_decode(h + 1, n - 2, &der, &len);
        if (rc == 0)
            rc = crypto_cert_from_der(der, len, cert);
        free(der);
        return rc == 0 ? 0 : -1;
    }
    h = http_request_header(req, "X-SSL-Client-Cert"); /* nginx $ssl_client_escaped_cert */
    if (h == NULL || h[0] == '\0')
        return 1;
    char *pem = url_decode(h, strlen(h), 0);
    int rc = pem ? crypto_cert_from_pem(pem, cert) : -1;
    free(pem);
    return rc == 0 ? 0 : -1;
}

static int from_tls(const http_request *req, crypto_cert **cert)
{
    uint8_t *der = NULL;
    size_t len = 0;
    if (http_request_client_cert(req, &der, &len) != 0)
        return 1;
    int rc = crypto_cert_from_der(der, len, cert);
    free(der);
    return rc == 0 ? 0 : -1;
}

int identity_verify(struct app *app, const http_request *req, char fp[65], const char **why)
{
    crypto_cert *sig = NULL, *other = NULL;
    int rc = -1;
    int s = from_signature(req, &sig);
    int t = from_proxy(app, req, &other);
    if (t == 1)
        t = from_tls(req, &other);
    if (s < 0 || t < 0) {
        *why = s < 0 ? "bad Mdm-Signature" : "unreadable client certificate";
        goto out;
    }
    crypto_cert *cert = sig ? sig : other;
    if (cert == NULL) {
        *why = "no device identity (no Mdm-Signature, no client certificate)";
        goto out;
    }
    crypto_cert_fingerprint(cert, fp);
    if (sig && other) {
        char fp2[65];
        crypto_cert_fingerprint(other, fp2);
        if (strcmp(fp, fp2) != 0) {
            *why = "Mdm-Signature and client certificate disagree";
            goto out;
        }
    }
    if (crypto_cert_verify_issued_by(cert, app->scep_ca_cert, (time_t)app_now(app)) != 0) {
        *why = "certificate not issued by this server's CA, or expired";
        goto out;
    }
    rc = 0;
out:
    crypto_cert_free(sig);
    crypto_cert_free(other);
    return rc;
}
