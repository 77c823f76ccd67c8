/* Device certificate extraction and verification. */
#include "mdm/identity.h"

#include <stdlib.h>
#include <string.h>

#include "core/log.h"
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

/* Longest certificate header value accepted (a device certificate is ~1.5 KB of DER). */
#define PROXY_CERT_MAX (16 * 1024)

/*
 * A certificate header value in either common encoding, told apart by shape: RFC 9440
 * `:base64(DER):` (HAProxy `:%[ssl_c_der,base64]:`, Envoy, cloud load balancers), or nginx
 * `$ssl_client_escaped_cert` (URL-escaped PEM). Anything else is unreadable (-1).
 */
int identity_proxy_cert_decode(const char *value, crypto_cert **cert)
{
    size_t n = strlen(value);
    int rc = -1;
    if (n == 0 || n > PROXY_CERT_MAX)
        return -1;
    if (n >= 2 && value[0] == ':' && value[n - 1] == ':') {
        uint8_t *der = NULL;
        size_t len = 0;
        if (crypto_base64_decode(value + 1, n - 2, &der, &len) == 0 && len > 0)
            rc = crypto_cert_from_der(der, len, cert);
        free(der);
        return rc == 0 ? 0 : -1;
    }
    static const char begin[] = "-----BEGIN CERTIFICATE-----";
    char *pem = url_decode(value, n, 0);
    if (pem != NULL && strncmp(pem, begin, sizeof(begin) - 1) == 0)
        rc = crypto_cert_from_pem(pem, cert);
    free(pem);
    return rc == 0 ? 0 : -1;
}

/* The configured certificate header if the peer is a trusted proxy, else NULL. -1 if the
 * header is repeated (the HTTP layer has refused such a request already; never pick one). */
static int proxy_header(const struct app *app, const http_request *req, const char **value)
{
    const char *name = config_get(app->cfg, "proxy_cert_header");
    *value = NULL;
    if (name[0] == '\0' ||
        !http_addr_in_list(config_get(app->cfg, "trusted_proxies"), req->remote_addr))
        return 0;
    return http_request_header_unique(req, name, value);
}

/*
 * Client certificate forwarded by a trusted proxy, from the one header named by
 * proxy_cert_header and no other: a header the proxy does not set is one the client can
 * (docs/HTTP.md). 1 if none.
 */
static int from_proxy(const struct app *app, const http_request *req, crypto_cert **cert)
{
    const char *h = NULL;
    if (proxy_header(app, req, &h) != 0)
        return -1;
    if (h == NULL || h[0] == '\0')
        return 1;
    return identity_proxy_cert_decode(h, cert);
}

static int client_cert_offered(const http_request *req)
{
    uint8_t *der = NULL;
    size_t len = 0;
    if (http_request_client_cert(req, &der, &len) != 0)
        return 0;
    free(der);
    return 1;
}

int identity_prebody(void *ctx, http_request *req, http_response *res)
{
    const struct app *app = ctx;
    const char *proxied = NULL;
    if (http_request_header(req, "Mdm-Signature") != NULL ||
        (proxy_header(app, req, &proxied) == 0 && proxied != NULL && proxied[0] != '\0') ||
        client_cert_offered(req))
        return 0;
    log_warn("event=mdm_identity_refused rid=%s client=%s reason=\"no device identity "
             "(no Mdm-Signature, no client certificate)\" stage=headers",
             req->request_id, req->client_addr);
    http_response_error(res, 403, "device identity not accepted");
    return -1;
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
