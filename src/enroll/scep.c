/*
 * The SCEP endpoint (RFC 8894) named by the profile's identity payload: GetCACert, GetCACaps and
 * PKIOperation (GET with base64 `message` or POST). PKCSReq must carry the one-time challenge of
 * an enrollment profile, which is consumed here; RenewalReq must be signed by a certificate this
 * CA issued that is not revoked. Every issued certificate is recorded. Refusals are proper
 * CertRep FAILURE messages, so a SCEP client gets an answer it understands.
 */
#include <stdlib.h>
#include <string.h>

#include "auth/audit.h"
#include "auth/secret.h"
#include "core/log.h"
#include "core/mem.h"
#include "core/url.h"
#include "crypto/scep.h"
#include "enroll/enroll.h"

/* What a request is allowed to become: who the certificate is for. */
struct scep_grant {
    int64_t user_id;
    char *session_hash;
    char *enrollment_id;
};

static void grant_cleanup(struct scep_grant *g)
{
    free(g->session_hash);
    free(g->enrollment_id);
}

static int authorize_pkcsreq(struct app *app, const scep_request *req, struct scep_grant *g)
{
    const char *challenge = scep_request_challenge(req);
    if (challenge == NULL || !secret_token_well_formed(challenge))
        return -1;
    char hash[SECRET_HASH_LEN + 1];
    secret_hash(challenge, hash);
    return storage_challenge_consume(app->st, hash, app_now(app), &g->user_id, &g->session_hash) ==
                   0
               ? 0
               : -1;
}

static int authorize_renewal(struct app *app, const scep_request *req, struct scep_grant *g)
{
    const crypto_cert *signer = scep_request_signer(req);
    if (signer == NULL ||
        crypto_cert_verify_issued_by(signer, app->scep_ca_cert, (time_t)app_now(app)) != 0)
        return -1;
    char fp[65];
    crypto_cert_fingerprint(signer, fp);
    st_cert old = {0};
    int rc = storage_cert_get_by_fingerprint(app->st, fp, &old);
    if (rc == 0 && old.revoked_at == 0) {
        g->user_id = old.user_id;
        g->session_hash = old.session_hash;
        g->enrollment_id = old.enrollment_id;
        old.session_hash = old.enrollment_id = NULL;
    } else {
        rc = -1;
    }
    st_cert_cleanup(&old);
    return rc;
}

static int record_cert(struct app *app, const crypto_cert *issued, const struct scep_grant *g)
{
    char fp[65];
    time_t nb = 0, na = 0;
    crypto_cert_fingerprint(issued, fp);
    crypto_cert_validity(issued, &nb, &na);
    char *serial = crypto_cert_serial_hex(issued), *subject = crypto_cert_subject(issued);
    st_cert c = {.serial = serial,
                 .fingerprint = fp,
                 .subject = subject,
                 .user_id = g->user_id,
                 .session_hash = g->session_hash,
                 .enrollment_id = g->enrollment_id,
                 .not_after = na,
                 .issued_at = app_now(app)};
    int rc = storage_cert_add(app->st, &c);
    free(serial);
    free(subject);
    return rc;
}

/* Decides and builds the CertRep for a parsed request. */
static int answer(struct app *app, const scep_request *req, const char *rid, uint8_t **der,
                  size_t *len)
{
    struct scep_grant g = {0};
    crypto_cert *issued = NULL;
    enum scep_message_type type = scep_request_message_type(req);
    int ok = type == SCEP_PKCS_REQ      ? authorize_pkcsreq(app, req, &g) == 0
             : type == SCEP_RENEWAL_REQ ? authorize_renewal(app, req, &g) == 0
                                        : 0;
    int days = (int)config_get_int(app->cfg, "scep_cert_days");
    if (ok &&
        (scep_issue_cert(app->scep, req, days, &issued) != 0 || record_cert(app, issued, &g) != 0))
        ok = 0;
    int rc;
    if (ok) {
        rc = scep_reply_success(app->scep, req, issued, der, len);
        log_info("event=scep_issued rid=%s type=%d user=%lld", rid, type, (long long)g.user_id);
    } else {
        rc = scep_reply_failure(app->scep, req, SCEP_FAIL_BAD_REQUEST, der, len);
        log_warn("event=scep_refused rid=%s type=%d reason=challenge_or_signer", rid, type);
        audit_record(app, "device", "scep.refuse", "", type == SCEP_RENEWAL_REQ ? "renewal" : "");
    }
    crypto_cert_free(issued);
    grant_cleanup(&g);
    return rc;
}

static void pki_operation(struct app *app, http_request *req, http_response *res)
{
    uint8_t *msg = NULL, *der = NULL;
    size_t msg_len = 0, der_len = 0;
    scep_request *sr = NULL;
    const uint8_t *body = (const uint8_t *)req->body;
    if (strcmp(req->method, "POST") == 0) {
        msg_len = req->body_len;
    } else {
        const char *m = http_request_query(req, "message");
        if (m == NULL || crypto_base64_decode(m, strlen(m), &msg, &msg_len) != 0) {
            http_response_error(res, 400, "PKIOperation needs a base64 message");
            goto out;
        }
        body = msg;
    }
    if (scep_request_parse(app->scep, body, msg_len, &sr) != 0) {
        log_warn("event=scep_bad_message rid=%s bytes=%zu", req->request_id, msg_len);
        http_response_error(res, 400, "not a SCEP PKIOperation message for this CA");
        goto out;
    }
    if (answer(app, sr, req->request_id, &der, &der_len) != 0) {
        http_response_error(res, 500, "cannot build the SCEP reply");
        goto out;
    }
    http_response_send(res, 200, SCEP_PKI_MESSAGE_CONTENT_TYPE, der, der_len);
out:
    scep_request_free(sr);
    free(msg);
    free(der);
}

void enroll_handle_scep(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    const char *op = http_request_query(req, "operation");
    if (op == NULL) {
        http_response_error(res, 400, "missing operation");
    } else if (strcmp(op, "GetCACert") == 0) {
        size_t len = 0;
        const uint8_t *der = scep_ca_cert_der(app->scep, &len);
        http_response_send(res, 200, SCEP_CA_CERT_CONTENT_TYPE, der, len);
    } else if (strcmp(op, "GetCACaps") == 0) {
        http_response_send(res, 200, "text/plain", SCEP_CA_CAPS, strlen(SCEP_CA_CAPS));
    } else if (strcmp(op, "PKIOperation") == 0) {
        pki_operation(app, req, res);
    } else {
        http_response_error(res, 400, "unsupported SCEP operation");
    }
}
