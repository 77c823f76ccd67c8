/*
 * The SCEP endpoint (RFC 8894) named by the profile's identity payload: GetCACert, GetCACaps and
 * PKIOperation (GET with base64 `message` or POST). PKCSReq must carry the one-time challenge of
 * an enrollment profile, which is consumed here (a renewal's challenge names its enrollment);
 * RenewalReq must be signed by a certificate this CA issued that is not revoked, for an
 * enrollment that may still hold an identity. Every issued certificate is recorded, with a
 * subject Orchard chooses, and with the enrollment it renews when there is one. Refusals are proper
 * CertRep FAILURE messages, so a SCEP client gets an answer it understands.
 *
 * PKIOperation is open to anyone and each one costs a decryption with the CA key and a
 * signature, so the work is ordered cheapest first and bounded per client address:
 *  1. the address's refusal budget (app->scep_limit, config scep_rate_limit per 15 minutes,
 *     IPv6 per /64): once used up, 429 with Retry-After at once, no parsing, no audit row;
 *  2. message size (SCEP_MAX_MESSAGE) and structure, attributes and the outer signature
 *     (scep_request_parse_signed: no private key);
 *  3. the message type, and for RenewalReq the signer certificate and its enrollment;
 *  4. only then the envelope (scep_request_open: the CA key), the challenge, the issuance.
 * Every refusal counts against the address. Why 429 and not a CertRep FAILURE for the budget:
 * a CertRep must be signed with the CA key over the request's transactionID, which is the very
 * work being refused; SCEP clients treat any non-200 answer as a failed request (Debian's
 * scepclient reports "http request failed with status 429"; iOS fails the profile install),
 * exactly as they treat a FAILURE, so nothing is lost for a legitimate client either.
 */
#include <stdlib.h>
#include <string.h>

#include "auth/audit.h"
#include "auth/ratelimit.h"
#include "auth/secret.h"
#include "core/log.h"
#include "core/mem.h"
#include "core/url.h"
#include "crypto/scep.h"
#include "enroll/enroll.h"

#define SCEP_RETRY_AFTER "900" /* the budget window: 15 minutes */

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

/*
 * An enrollment that may still renew its identity: enrolled, of the user the certificate will be
 * issued to, and not cut off by the re-authentication policy or an administrator. "revoked" is
 * the state of POST /api/v1/enrollments/{id}/revoke.
 */
static int may_renew(struct app *app, const char *enrollment_id, int64_t user_id, const char **why)
{
    st_enrollment e = {0};
    int rc = storage_enrollment_get(app->st, enrollment_id, &e);
    const char *state = e.auth_state ? e.auth_state : "";
    if (rc != ST_OK)
        *why = rc == ST_ENOTFOUND ? "unknown_enrollment" : "storage";
    else if (e.unenrolled_at || strcmp(state, "unenrolled") == 0)
        *why = "unenrolled";
    else if (strcmp(state, "reauth_failed") == 0)
        *why = "reauth_failed";
    else if (strcmp(state, "revoked") == 0)
        *why = "revoked";
    else if (e.user_id != user_id)
        *why = "other_user";
    st_enrollment_cleanup(&e);
    return *why == NULL ? 0 : -1;
}

/*
 * PKCSReq: the one-time challenge of an enrollment profile, consumed here. A renewal challenge
 * (sent by mdm/renewal.c in the replacement profile) names the enrollment it renews: the
 * certificate is recorded for that enrollment, which must still be allowed to renew.
 */
static int authorize_pkcsreq(struct app *app, const scep_request *req, struct scep_grant *g,
                             const char **why)
{
    const char *challenge = scep_request_challenge(req);
    char hash[SECRET_HASH_LEN + 1];
    *why = "challenge";
    if (challenge == NULL || !secret_token_well_formed(challenge))
        return -1;
    secret_hash(challenge, hash);
    if (storage_challenge_consume_bound(app->st, hash, app_now(app), &g->user_id, &g->session_hash,
                                        &g->enrollment_id) != 0)
        return -1;
    *why = NULL;
    return g->enrollment_id ? may_renew(app, g->enrollment_id, g->user_id, why) : 0;
}

/* RenewalReq: checked before the envelope is opened, from the signed part alone. */
static int authorize_renewal(struct app *app, const scep_request *req, struct scep_grant *g,
                             const char **why)
{
    const crypto_cert *signer = scep_request_signer(req);
    if (signer == NULL ||
        crypto_cert_verify_issued_by(signer, app->scep_ca_cert, (time_t)app_now(app)) != 0) {
        *why = "signer_not_ours";
        return -1;
    }
    char fp[65];
    crypto_cert_fingerprint(signer, fp);
    st_cert old = {0};
    int rc = storage_cert_get_by_fingerprint(app->st, fp, &old);
    if (rc == 0) { /* whatever the answer, it concerns this enrollment (the audit target) */
        g->enrollment_id = old.enrollment_id;
        old.enrollment_id = NULL;
    }
    if (rc != 0 || old.revoked_at != 0) {
        *why = rc != 0 ? "signer_unknown" : "signer_revoked";
        rc = -1;
    } else if (g->enrollment_id && may_renew(app, g->enrollment_id, old.user_id, why) != 0) {
        rc = -1;
    } else {
        g->user_id = old.user_id;
        g->session_hash = old.session_hash;
        old.session_hash = NULL;
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

/*
 * The subject is Orchard's: a fresh random id as CN and the organisation as O. Nothing a device
 * wrote in its CSR (subject, SAN, extensions) reaches the certificate, so no device can name
 * itself "admin" or after another device.
 */
static int issue(struct app *app, const scep_request *req, crypto_cert **issued)
{
    char cn[37];
    crypto_uuid(cn);
    const char *org = config_get(app->cfg, "org_name");
    /* Valid from the server's now (the debug clock moves it in tests; the wall clock else). */
    return scep_issue_cert_at(app->scep, req, cn, org && org[0] ? org : "Orchard",
                              (int)config_get_int(app->cfg, "scep_cert_days"), (time_t)app_now(app),
                              issued);
}

/* Counts a refusal against the client's budget (see the top of the file). */
static void count_refusal(struct app *app, const char *key)
{
    if (app->scep_limit)
        ratelimit_fail(app->scep_limit, key, app_now(app));
}

/*
 * Decides and builds the CertRep for a request whose signed part parsed. Returns 0 with *der,
 * 1 when the envelope cannot be opened (the caller answers 400), -1 when no reply could be
 * built.
 */
static int answer(struct app *app, scep_request *req, const char *rid, const char *key,
                  uint8_t **der, size_t *len)
{
    struct scep_grant g = {0};
    crypto_cert *issued = NULL;
    const char *why = NULL;
    enum scep_message_type type = scep_request_message_type(req);
    int ok = 0, rc;
    if (type == SCEP_RENEWAL_REQ)
        ok = authorize_renewal(app, req, &g, &why) == 0;
    else if (type == SCEP_PKCS_REQ)
        ok = 1; /* the challenge is inside the envelope */
    else
        why = "unsupported_message_type";
    if (ok && scep_request_open(app->scep, req) != 0) {
        count_refusal(app, key);
        grant_cleanup(&g);
        return 1;
    }
    if (ok && type == SCEP_PKCS_REQ && authorize_pkcsreq(app, req, &g, &why) != 0)
        ok = 0;
    if (ok && (issue(app, req, &issued) != 0 || record_cert(app, issued, &g) != 0)) {
        ok = 0;
        why = "issue_failed";
    }
    if (ok) {
        rc = scep_reply_success(app->scep, req, issued, der, len);
        log_info("event=scep_issued rid=%s type=%d user=%lld enrollment=%s", rid, type,
                 (long long)g.user_id, g.enrollment_id ? g.enrollment_id : "-");
    } else {
        rc = scep_reply_failure(app->scep, req, SCEP_FAIL_BAD_REQUEST, der, len);
        log_warn("event=scep_refused rid=%s type=%d reason=%s", rid, type, why);
        count_refusal(app, key);
        audit_record(app, "device", "scep.refuse", g.enrollment_id ? g.enrollment_id : "", why);
    }
    crypto_cert_free(issued);
    grant_cleanup(&g);
    return rc == 0 ? 0 : -1;
}

/* The message of a PKIOperation (POST body, or GET base64 `message`), bounded in size. */
static int read_message(http_request *req, const uint8_t **msg, size_t *len, uint8_t **owned)
{
    *owned = NULL;
    if (strcmp(req->method, "POST") == 0) {
        *msg = (const uint8_t *)req->body;
        *len = req->body_len;
        return *len > 0 && *len <= SCEP_MAX_MESSAGE ? 0 : -1;
    }
    const char *m = http_request_query(req, "message");
    if (m == NULL || strlen(m) > SCEP_MAX_MESSAGE / 3 * 4 + 4 ||
        crypto_base64_decode(m, strlen(m), owned, len) != 0)
        return -1;
    *msg = *owned;
    return 0;
}

static void pki_operation(struct app *app, http_request *req, http_response *res)
{
    uint8_t *owned = NULL, *der = NULL;
    const uint8_t *msg = NULL;
    size_t msg_len = 0, der_len = 0;
    scep_request *sr = NULL;
    char key[RATELIMIT_ADDR_KEY_LEN];
    ratelimit_addr_key("scep", req->client_addr, key);
    if (app->scep_limit && ratelimit_blocked(app->scep_limit, key, app_now(app))) {
        /* No parsing, no key, no audit row: a log line and the counter in /metrics. */
        log_warn("event=scep_refused rid=%s reason=rate_limited remote=%s", req->request_id,
                 req->client_addr);
        http_response_set_header(res, "Retry-After", SCEP_RETRY_AFTER);
        http_response_error(res, 429, "too many refused SCEP requests from this address");
        return;
    }
    if (read_message(req, &msg, &msg_len, &owned) != 0) {
        count_refusal(app, key);
        http_response_error(res, 400, "PKIOperation needs a message (at most 64 KiB)");
        goto out;
    }
    if (scep_request_parse_signed(app->scep, msg, msg_len, &sr) != 0) {
        count_refusal(app, key);
        log_warn("event=scep_bad_message rid=%s bytes=%zu", req->request_id, msg_len);
        http_response_error(res, 400, "not a SCEP PKIOperation message for this CA");
        goto out;
    }
    int rc = answer(app, sr, req->request_id, key, &der, &der_len);
    if (rc == 1) {
        log_warn("event=scep_bad_message rid=%s bytes=%zu reason=envelope", req->request_id,
                 msg_len);
        http_response_error(res, 400, "not a SCEP PKIOperation message for this CA");
        goto out;
    }
    if (rc != 0) {
        http_response_error(res, 500, "cannot build the SCEP reply");
        goto out;
    }
    http_response_send(res, 200, SCEP_PKI_MESSAGE_CONTENT_TYPE, der, der_len);
out:
    scep_request_free(sr);
    free(owned);
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
