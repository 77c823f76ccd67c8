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
#include "mdm/library.h"
#include "mdm/mdm.h"

static int is_mac(const st_enrollment *e)
{
    return (e->product_name && strncmp(e->product_name, "Mac", 3) == 0) ||
           (e->model && strncmp(e->model, "Mac", 3) == 0);
}

/* macOS sends the bearer only on the user channel (PROTOCOL.md 7.1). */
static int needs_token(const struct mdm_request *m, const st_enrollment *e)
{
    return m->type == ST_ENR_USER_CHANNEL || (m->type == ST_ENR_USER && !is_mac(e));
}

static int session_ok(struct app *app, http_request *req, http_response *res, struct mdm_request *m,
                      const st_enrollment *e, int allow_expired)
{
    if (!needs_token(m, e) && m->session_status == SESSION_MISSING)
        return 0;
    return mdm_check_session(app, req, res, m, e, allow_expired);
}

static void handle_authenticate(struct app *app, http_request *req, http_response *res,
                                struct mdm_request *m)
{
    const char *topic = pl_get_string(m->msg, "Topic");
    int64_t cert_user = 0;
    if (topic == NULL || strcmp(topic, app->topic) != 0) {
        log_warn("event=authenticate_refused rid=%s enrollment=%s reason=topic", req->request_id,
                 m->id);
        http_response_error(res, 403, "Topic does not match this server's push topic");
        return;
    }
    if (mdm_cert_owner(app, m, &cert_user) != 0) {
        log_warn("event=authenticate_refused rid=%s enrollment=%s reason=certificate",
                 req->request_id, m->id);
        http_response_error(res, 403, "device identity not accepted for this enrollment");
        return;
    }
    st_enrollment e = {.id = m->id,
                       .type = m->type,
                       .parent_id = m->parent_id[0] ? m->parent_id : NULL,
                       .user_id = cert_user,
                       .topic = (char *)topic,
                       .cert_fingerprint = m->fp,
                       .os_version = (char *)pl_get_string(m->msg, "OSVersion"),
                       .build_version = (char *)pl_get_string(m->msg, "BuildVersion"),
                       .product_name = (char *)pl_get_string(m->msg, "ProductName"),
                       .device_name = (char *)pl_get_string(m->msg, "DeviceName"),
                       .model = (char *)pl_get_string(m->msg, "Model"),
                       .auth_state = "active",
                       .auth_state_since = app_now(app),
                       .enrolled_at = app_now(app),
                       .last_seen_at = app_now(app)};
    if (m->session_status == SESSION_OK) {
        e.last_auth_at = m->session.issued_at;
        e.last_auth_method = m->session.method;
    }
    /* The token must belong to the user the identity was issued to, and be unbound or ours. */
    if (session_ok(app, req, res, m, &e, 0) != 0)
        return;
    if (storage_enrollment_authenticate(app->st, &e) != 0 ||
        storage_cert_set_enrollment(app->st, m->fp, m->id) != 0 ||
        (m->session_status == SESSION_OK && m->session.enrollment_id == NULL &&
         storage_session_bind(app->st, m->session.token_hash, m->id) != 0)) {
        http_response_error(res, 503, "storage unavailable");
        return;
    }
    audit_record(app, "device", "enrollment.authenticate", m->id, e.product_name);
    res->status = 200;
}

/* The macOS user channel starts with TokenUpdate; it inherits its device channel's user. */
static int create_user_channel(struct app *app, struct mdm_request *m, st_enrollment *out)
{
    st_enrollment parent = {0};
    if (m->parent_id[0] == '\0' || storage_enrollment_get(app->st, m->parent_id, &parent) != 0 ||
        parent.unenrolled_at || strcmp(parent.cert_fingerprint ?: "", m->fp) != 0) {
        st_enrollment_cleanup(&parent);
        return -1;
    }
    st_enrollment e = {.id = m->id,
                       .type = m->type,
                       .parent_id = m->parent_id,
                       .user_id = parent.user_id,
                       .topic = parent.topic,
                       .cert_fingerprint = m->fp,
                       .product_name = parent.product_name,
                       .model = parent.model,
                       .auth_state = "active",
                       .auth_state_since = app_now(app),
                       .enrolled_at = app_now(app)};
    int rc = storage_enrollment_authenticate(app->st, &e);
    st_enrollment_cleanup(&parent);
    return rc == 0 ? storage_enrollment_get(app->st, m->id, out) : -1;
}

/* Loads the enrollment and checks it is enrolled and presents the bound certificate. */
static int load_enrollment(struct app *app, http_request *req, http_response *res,
                           struct mdm_request *m, st_enrollment *e, int create_user_chan)
{
    int rc = mdm_request_get_enrollment(app, m, e);
    if (rc == ST_ENOTFOUND && create_user_chan && m->type == ST_ENR_USER_CHANNEL)
        rc = create_user_channel(app, m, e);
    if (rc != 0 || e->unenrolled_at) {
        log_warn("event=mdm_unknown_enrollment rid=%s enrollment=%s", req->request_id, m->id);
        http_response_error(res, 403, "unknown enrollment");
        return -1;
    }
    return mdm_check_identity(app, req, res, m, e);
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
        lib_on_enrollment_complete(app, m->id); /* assigned profiles and apps */
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
    if (load_enrollment(app, req, res, m, &e, 0) != 0 || session_ok(app, req, res, m, &e, 1) != 0)
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
