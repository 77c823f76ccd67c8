/*
 * Check-in messages (PROTOCOL.md 8.3). Authenticate binds the device certificate and (for user
 * enrollments) the session token to the enrollment and resets any earlier state of the same
 * enrollment id; TokenUpdate records the push token and completes the enrollment; CheckOut
 * retires it. Message types User Enrollment does not use are refused explicitly.
 */
#include <stdlib.h>
#include <string.h>

#include "auth/audit.h"
#include "auth/session.h"
#include "core/log.h"
#include "core/mem.h"
#include "mdm/inventory.h"
#include "mdm/library.h"
#include "mdm/mdm.h"
#include "mdm/platform.h"

/* A missing token is accepted only where the stored platform never sends one (7.1). */
static int session_ok(struct app *app, http_request *req, http_response *res, struct mdm_request *m,
                      const st_enrollment *e, int flags)
{
    if (mdm_token_optional(e) && m->session_status == SESSION_MISSING)
        return 0;
    return mdm_check_session(app, req, res, m, e, flags);
}

static void refuse_authenticate(http_request *req, http_response *res, const struct mdm_request *m,
                                const char *reason, const char *msg)
{
    log_warn("event=authenticate_refused rid=%s enrollment=%s reason=%s", req->request_id, m->id,
             reason);
    http_response_error(res, 403, msg);
}

/*
 * The PRODUCT of the MachineInfo Orchard recorded when it issued the profile whose SCEP
 * challenge produced this certificate, into *product (caller frees; NULL if none). It is what
 * the device said before it had any identity, so a later message cannot change its platform.
 * 0, or ST_ERROR when storage failed.
 */
static int recorded_product(struct app *app, const char *fingerprint, char **product)
{
    st_cert c = {0};
    st_session s = {0};
    char err[64];
    int rc = storage_cert_get_by_fingerprint(app->st, fingerprint, &c);
    if (rc == 0 && c.session_hash)
        rc = storage_session_get(app->st, c.session_hash, &s);
    if (rc == 0 && s.machine_info) {
        plist_t info = pl_parse_dict(s.machine_info, strlen(s.machine_info), err, sizeof(err));
        const char *p = pl_get_string(info, "PRODUCT");
        *product = p ? xstrdup(p) : NULL;
        if (info)
            plist_free(info);
    }
    st_cert_cleanup(&c);
    st_session_cleanup(&s);
    return rc == ST_ERROR ? ST_ERROR : 0;
}

/* 1 if two product names are of the same platform, or the claim is absent. */
static int same_platform(const char *recorded, const char *claimed)
{
    return claimed == NULL || mdm_platform_of(recorded, NULL) == mdm_platform_of(claimed, NULL);
}

/*
 * What an Authenticate may not change of an existing enrollment: its user, its platform, and
 * that it has ended (a new enrollment of the same device has a new EnrollmentID, PROTOCOL.md
 * 2). 0 if the Authenticate may go on.
 */
static int existing_allows(struct app *app, http_request *req, http_response *res,
                           const struct mdm_request *m, const st_enrollment *old, int64_t cert_user,
                           const char *claimed)
{
    if (old->type != m->type) {
        refuse_authenticate(req, res, m, "identifier_form",
                            "the message's identifiers do not match this enrollment");
        return -1;
    }
    if (old->user_id != cert_user) {
        audit_record(app, "device", "enrollment.takeover_refused", m->id,
                     "Authenticate with another user's certificate");
        refuse_authenticate(req, res, m, "other_user",
                            "device identity not accepted for this enrollment");
        return -1;
    }
    if (old->unenrolled_at ||
        (old->auth_state && strcmp(old->auth_state, MDM_STATE_REVOKED) == 0)) {
        refuse_authenticate(req, res, m, "ended", "this enrollment has ended; enroll again");
        return -1;
    }
    if (!same_platform(old->product_name, claimed)) {
        refuse_authenticate(req, res, m, "platform", "ProductName does not match this enrollment");
        return -1;
    }
    return 0;
}

/*
 * The enrollment an Authenticate records. For a known id the stored user, platform and
 * re-authentication state stand; only a valid token of that user (checked afterwards) sets
 * it active again. For a new id the platform is the recorded MachineInfo's, which the claim
 * must agree with. Strings borrow from m, old and *product.
 */
static int authenticate_record(struct app *app, http_request *req, http_response *res,
                               struct mdm_request *m, const st_enrollment *old, int64_t cert_user,
                               char **product, st_enrollment *e)
{
    const char *claimed = pl_get_string(m->msg, "ProductName");
    int64_t now = app_now(app);
    *e = (st_enrollment){.id = m->id,
                         .type = m->type,
                         .user_id = cert_user,
                         .topic = app->topic,
                         .cert_fingerprint = m->fp,
                         .os_version = (char *)pl_get_string(m->msg, "OSVersion"),
                         .build_version = (char *)pl_get_string(m->msg, "BuildVersion"),
                         .device_name = (char *)pl_get_string(m->msg, "DeviceName"),
                         .auth_state = "active",
                         .auth_state_since = now,
                         .enrolled_at = now,
                         .last_seen_at = now};
    if (old->id) {
        if (existing_allows(app, req, res, m, old, cert_user, claimed) != 0)
            return -1;
        e->product_name = old->product_name;
        e->model = old->model;
        e->auth_state = old->auth_state;
        e->auth_state_since = old->auth_state_since;
        e->last_auth_at = old->last_auth_at;
        e->last_auth_method = old->last_auth_method;
        return 0;
    }
    if (recorded_product(app, m->fp, product) != 0) {
        http_response_error(res, 503, "storage unavailable");
        return -1;
    }
    int claims_mac = mdm_platform_is_mac(claimed);
    if (!same_platform(*product, claimed) || (claims_mac && !mdm_platform_is_mac(*product))) {
        refuse_authenticate(req, res, m, "platform",
                            "ProductName does not match the device that enrolled");
        return -1;
    }
    e->product_name = claimed ? (char *)claimed : *product;
    e->model = (char *)pl_get_string(m->msg, "Model");
    return 0;
}

static void handle_authenticate(struct app *app, http_request *req, http_response *res,
                                struct mdm_request *m)
{
    const char *topic = pl_get_string(m->msg, "Topic");
    st_enrollment old = {0}, e;
    char *product = NULL;
    int64_t cert_user = 0;
    if (topic == NULL || strcmp(topic, app->topic) != 0) {
        refuse_authenticate(req, res, m, "topic", "Topic does not match this server's push topic");
        goto out;
    }
    if (m->type != ST_ENR_USER) { /* the macOS user channel starts with TokenUpdate */
        refuse_authenticate(req, res, m, "channel", "Authenticate comes on the device channel");
        goto out;
    }
    int rc = mdm_cert_owner(app, m, &cert_user);
    if (rc == ST_ERROR) {
        http_response_error(res, 503, "storage unavailable");
        goto out;
    }
    if (rc != 0) {
        refuse_authenticate(req, res, m, "certificate",
                            "device identity not accepted for this enrollment");
        goto out;
    }
    rc = mdm_request_get_enrollment(app, m, &old);
    if (rc != 0 && rc != ST_ENOTFOUND) {
        http_response_error(res, 503, "storage unavailable");
        goto out;
    }
    if (authenticate_record(app, req, res, m, &old, cert_user, &product, &e) != 0)
        goto out;
    /* The token must belong to the enrollment's user, and be unbound or bound to it. */
    if (session_ok(app, req, res, m, &e, old.id ? 0 : MDM_TOKEN_CHECK_ONLY) != 0)
        goto out;
    if (m->session_status == SESSION_OK) {
        e.last_auth_at = m->session.issued_at;
        e.last_auth_method = m->session.method;
        if (strcmp(e.auth_state, "active") != 0) { /* a fresh sign-in of the same user */
            e.auth_state = "active";
            e.auth_state_since = app_now(app);
        }
    }
    /* A re-Authenticate with another certificate of the same user replaces the old ones: they
     * are revoked before the new one is bound, so no two identities serve one enrollment. */
    int replaces = old.id && strcmp(old.cert_fingerprint ? old.cert_fingerprint : "", m->fp) != 0;
    if (storage_enrollment_authenticate(app->st, &e) != 0 ||
        (replaces && storage_cert_revoke_enrollment(app->st, m->id, app_now(app)) != 0) ||
        storage_cert_set_enrollment(app->st, m->fp, m->id) != 0 ||
        (m->session_status == SESSION_OK && m->session.enrollment_id == NULL &&
         storage_session_bind(app->st, m->session.token_hash, m->id) != 0)) {
        http_response_error(res, 503, "storage unavailable");
        goto out;
    }
    audit_record(app, "device", "enrollment.authenticate", m->id, e.product_name);
    res->status = 200;
out:
    free(product);
    st_enrollment_cleanup(&old);
}

/* The macOS user channel starts with TokenUpdate; it inherits its device channel's user. */
static int create_user_channel(struct app *app, struct mdm_request *m)
{
    st_enrollment parent = {0};
    int rc = -1;
    if (m->parent_id[0] == '\0' || storage_enrollment_get(app->st, m->parent_id, &parent) != 0 ||
        parent.unenrolled_at || parent.type != ST_ENR_USER || !mdm_token_optional(&parent) ||
        (parent.auth_state && strcmp(parent.auth_state, MDM_STATE_REVOKED) == 0) ||
        strcmp(parent.cert_fingerprint ?: "", m->fp) != 0)
        goto out;
    st_enrollment e = {.id = m->id,
                       .type = m->type,
                       .parent_id = m->parent_id,
                       .user_id = parent.user_id,
                       .topic = parent.topic,
                       .cert_fingerprint = m->fp,
                       .product_name = parent.product_name,
                       .model = parent.model,
                       .auth_state = parent.auth_state,
                       .auth_state_since = parent.auth_state_since,
                       .enrolled_at = app_now(app)};
    rc = storage_enrollment_authenticate(app->st, &e);
out:
    st_enrollment_cleanup(&parent);
    return rc;
}

/*
 * Loads the enrollment and checks it against what Orchard stored (mdm_request_load). A macOS
 * user channel is created by its first TokenUpdate, under a Mac device channel that presents
 * the same certificate.
 */
static int load_enrollment(struct app *app, http_request *req, http_response *res,
                           struct mdm_request *m, st_enrollment *e, int create_user_chan)
{
    if (create_user_chan && m->type == ST_ENR_USER_CHANNEL) {
        st_enrollment probe = {0};
        if (mdm_request_get_enrollment(app, m, &probe) == ST_ENOTFOUND)
            create_user_channel(app, m);
        st_enrollment_cleanup(&probe); /* mdm_request_load reads it again */
    }
    return mdm_request_load(app, req, res, m, e);
}

static char *hex_of(const uint8_t *d, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    char *out = xmalloc(n * 2 + 1);
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[d[i] >> 4];
        out[2 * i + 1] = hex[d[i] & 15];
    }
    out[n * 2] = '\0';
    return out;
}

static void handle_token_update(struct app *app, http_request *req, http_response *res,
                                struct mdm_request *m)
{
    st_enrollment e = {0};
    size_t tlen = 0;
    const uint8_t *token = pl_get_data(m->msg, "Token", &tlen);
    const char *magic = pl_get_string(m->msg, "PushMagic");
    if (token == NULL || tlen == 0 || tlen > 256 || magic == NULL || strlen(magic) > 256) {
        http_response_error(res, 400, "TokenUpdate needs Token and PushMagic");
        return;
    }
    if (load_enrollment(app, req, res, m, &e, 1) != 0 || session_ok(app, req, res, m, &e, 0) != 0)
        goto out;
    char *hex = hex_of(token, tlen);
    int rc = storage_enrollment_token_update(app->st, m->id, hex, magic, app_now(app));
    free(hex);
    if (rc != 0) {
        http_response_error(res, 503, "storage unavailable");
        goto out;
    }
    if (e.token_updated_at == 0) {
        audit_record(app, "device", "enrollment.complete", m->id, e.product_name);
        lib_on_enrollment_complete(app, m->id);       /* assigned profiles and apps */
        inventory_on_enrollment_complete(app, m->id); /* the first inventory round */
    }
    res->status = 200;
out:
    st_enrollment_cleanup(&e);
}

static void handle_checkout(struct app *app, http_request *req, http_response *res,
                            struct mdm_request *m)
{
    st_enrollment e = {0};
    /* CheckOut comes while the profile is removed: accept an expired token, never a foreign
     * one (PROTOCOL.md 7.4). */
    if (load_enrollment(app, req, res, m, &e, 0) != 0 ||
        session_ok(app, req, res, m, &e, MDM_TOKEN_ALLOW_EXPIRED) != 0)
        goto out;
    int64_t now = app_now(app);
    if (storage_enrollment_unenroll(app->st, m->id, now) != 0 ||
        storage_session_revoke_enrollment(app->st, m->id, now) != 0 ||
        storage_cert_revoke_enrollment(app->st, m->id, now) != 0) {
        http_response_error(res, 503, "storage unavailable");
        goto out;
    }
    audit_record(app, "device", "enrollment.checkout", m->id, "device removed management");
    res->status = 200;
out:
    st_enrollment_cleanup(&e);
}

static void refuse(http_request *req, http_response *res, const struct mdm_request *m,
                   const char *type, int status, const char *why)
{
    log_info("event=checkin_refused rid=%s enrollment=%s type=%s", req->request_id, m->id, type);
    http_response_error(res, status, why);
}

void mdm_handle_checkin(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    struct mdm_request m;
    if (mdm_request_begin(app, req, res, &m) != 0)
        goto out;
    const char *type = pl_get_string(m.msg, "MessageType");
    if (type == NULL)
        refuse(req, res, &m, "-", 400, "missing MessageType");
    else if (strcmp(type, "Authenticate") == 0)
        handle_authenticate(app, req, res, &m);
    else if (strcmp(type, "TokenUpdate") == 0)
        handle_token_update(app, req, res, &m);
    else if (strcmp(type, "CheckOut") == 0)
        handle_checkout(app, req, res, &m);
    else if (strcmp(type, "UserAuthenticate") == 0)
        refuse(req, res, &m, type, 410, "network user authentication is not offered");
    else if (strcmp(type, "DeclarativeManagement") == 0)
        refuse(req, res, &m, type, 400, "declarative management is not supported yet");
    else if (strcmp(type, "GetToken") == 0)
        refuse(req, res, &m, type, 400, "no token service is configured");
    else if (strcmp(type, "GetBootstrapToken") == 0 || strcmp(type, "SetBootstrapToken") == 0)
        refuse(req, res, &m, type, 400, "bootstrap tokens are not escrowed by this server");
    else
        refuse(req, res, &m, type, 400, "unknown MessageType");
    log_debug("event=checkin rid=%s enrollment=%s type=%s status=%d", req->request_id, m.id,
              type ? type : "-", res->status);
out:
    mdm_request_cleanup(&m);
}
