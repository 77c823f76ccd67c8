/*
 * The enrollment endpoint (BaseURL, PROTOCOL.md 4-6). The body is the device's MachineInfo:
 * CMS SignedData with an attached plist (BER, SHA-1) or a bare plist, whatever the
 * Content-Type says (iOS 15 sends application/x-www-form-urlencoded). Without a valid token the
 * answer is the apple-as-web challenge; with one, a signed BYOD profile.
 *
 * The token is not consumed here: a device that lost the response retries the same POST with
 * the same token and must get a profile again (peers' pitfall, PROTOCOL.md 17/18). Each profile
 * carries a fresh one-time SCEP challenge bound to the session.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/audit.h"
#include "auth/secret.h"
#include "auth/session.h"
#include "core/log.h"
#include "core/mem.h"
#include "crypto/cms.h"
#include "enroll/enroll.h"
#include "plist/pl.h"

/* Extracts the MachineInfo plist from the body; NULL if it is neither CMS nor a plist. */
static plist_t machine_info_parse(const http_request *req, char *err, size_t err_len)
{
    const uint8_t *body = (const uint8_t *)req->body;
    if (req->body_len > 0 && body[0] == 0x30) { /* DER/BER SEQUENCE: CMS SignedData */
        uint8_t *content = NULL;
        size_t content_len = 0;
        if (cms_attached_content(body, req->body_len, &content, &content_len) != 0) {
            snprintf(err, err_len, "body is not a CMS SignedData with content");
            return NULL;
        }
        plist_t p = pl_parse_dict_budget((const char *)content, content_len, &pl_budget_device, err,
                                         err_len);
        free(content);
        return p;
    }
    return pl_parse_dict_budget(req->body, req->body_len, &pl_budget_device, err, err_len);
}

/* MachineInfo as XML, keeping only the keys Orchard records (never UDID/SERIAL in UE). */
static char *machine_info_summary(plist_t info)
{
    static const char *const keys[] = {"LANGUAGE",
                                       "PRODUCT",
                                       "VERSION",
                                       "OS_VERSION",
                                       "SUPPLEMENTAL_BUILD_VERSION",
                                       "SOFTWARE_UPDATE_DEVICE_ID"};
    plist_t out = plist_new_dict();
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        const char *v = pl_get_string(info, keys[i]);
        if (v)
            pl_set_string(out, keys[i], v);
    }
    char *xml = pl_to_xml(out, NULL);
    plist_free(out);
    return xml;
}

/* Issues the SCEP challenge and the signed profile into res. */
static void send_profile(struct app *app, http_request *req, http_response *res,
                         const st_session *s)
{
    st_user user = {0};
    char challenge[SECRET_TOKEN_LEN + 1], chash[SECRET_HASH_LEN + 1];
    char *xml = NULL;
    uint8_t *der = NULL;
    size_t xml_len = 0, der_len = 0;
    int rc = storage_user_get(app->st, s->user_id, &user);
    if (rc == ST_ERROR) {
        http_response_error(res, 503, "storage unavailable");
        goto out;
    }
    if (rc != 0) {
        session_challenge(app, res); /* the user is gone: the token is worthless */
        goto out;
    }
    secret_new_token(challenge);
    secret_hash(challenge, chash);
    int64_t expires = app_now(app) + config_get_int(app->cfg, "scep_challenge_ttl");
    if (storage_challenge_add(app->st, chash, user.id, s->token_hash, expires) != 0) {
        http_response_error(res, 503, "storage unavailable");
        goto out;
    }
    xml = enroll_profile_build(app, &user, challenge, s->token_hash, &xml_len);
    if (enroll_profile_sign(app, xml, xml_len, &der, &der_len) != 0) {
        log_error("event=profile_sign_failed rid=%s", req->request_id);
        http_response_error(res, 500, "cannot sign the profile");
        goto out;
    }
    http_response_send(res, 200, "application/x-apple-aspen-config", der, der_len);
    log_info("event=profile_issued rid=%s user=%lld", req->request_id, (long long)user.id);
out:
    st_user_cleanup(&user);
    free(xml);
    free(der);
}

void enroll_handle_enroll(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    char err[128];
    int served = enroll_domain_served(app, req->params[0]);
    if (served != 1) {
        http_response_error(res, served == ST_ERROR ? 503 : 404,
                            served == ST_ERROR ? "storage unavailable" : "unknown enrollment URL");
        return;
    }
    plist_t info = machine_info_parse(req, err, sizeof(err));
    if (info == NULL) {
        log_warn("event=enroll_bad_body rid=%s reason=\"%s\" bytes=%zu", req->request_id, err,
                 req->body_len);
        http_response_error(res, 400, "the body must be a MachineInfo plist, signed or not");
        return;
    }
    st_session s;
    enum session_status status = session_from_request(app, req, &s);
    if (status == SESSION_ERROR) {
        http_response_error(res, 503, "storage unavailable");
    } else if (status != SESSION_OK) {
        log_info("event=enroll_challenge rid=%s token=%s product=%s", req->request_id,
                 session_status_name(status), pl_get_string(info, "PRODUCT") ?: "-");
        session_challenge(app, res);
    } else {
        char *summary = machine_info_summary(info);
        storage_session_set_machine_info(app->st, s.token_hash, summary);
        free(summary);
        send_profile(app, req, res, &s);
    }
    st_session_cleanup(&s);
    plist_free(info);
}
