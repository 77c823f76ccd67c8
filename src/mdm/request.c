/* Parsing, channel resolution, identity and token checks shared by check-in and connect. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/audit.h"
#include "auth/reauth.h"
#include "auth/session.h"
#include "core/log.h"
#include "core/mem.h"
#include "mdm/identity.h"
#include "mdm/mdm.h"
#include "mdm/platform.h"
#include "mdm/renewal.h"
#include "mdm/ue_rules.h"

static int valid_id(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 72)
        return 0;
    for (; *s; s++) {
        if (!(*s == '-' || *s == '.' || *s == '_' || (*s >= '0' && *s <= '9') ||
              (*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z')))
            return 0;
    }
    return 1;
}

/* The keys of the command channel's reports (PROTOCOL.md 9.1) and their plist types. */
static const struct {
    const char *key;
    plist_type type;
} report_keys[] = {
    {"Status", PLIST_STRING},        {"CommandUUID", PLIST_STRING},
    {"EnrollmentID", PLIST_STRING},  {"EnrollmentUserID", PLIST_STRING},
    {"UDID", PLIST_STRING},          {"UserID", PLIST_STRING},
    {"ErrorChain", PLIST_ARRAY},     {"RequestType", PLIST_STRING},
    {"NotOnConsole", PLIST_BOOLEAN}, {"UserShortName", PLIST_STRING},
    {"UserLongName", PLIST_STRING},  {"MessageType", PLIST_STRING},
};

/*
 * Every key Orchard knows must have its type: a message is refused (400) rather than read
 * as if a mistyped key were absent. Check-in messages are judged by Apple's schema.
 */
static int message_types_ok(plist_t msg, char *why, size_t why_len)
{
    for (size_t i = 0; i < sizeof report_keys / sizeof report_keys[0]; i++) {
        plist_t v = plist_dict_get_item(msg, report_keys[i].key);
        if (v && plist_get_node_type(v) != report_keys[i].type) {
            snprintf(why, why_len, "%s has the wrong type", report_keys[i].key);
            return 0;
        }
    }
    return ue_checkin_types_check(msg, why, why_len) == 0;
}

/*
 * PROTOCOL.md 2 and 8.2: a user enrollment sends EnrollmentID (plus EnrollmentUserID on the
 * macOS user channel) and never UDID. Orchard serves only user enrollments, so a UDID is
 * refused outright: the message's keys never choose a kind of enrollment that skips the
 * token check. 0, or -1 with a reason for the log.
 */
static int resolve_channel(struct mdm_request *m, const char **why)
{
    const char *eid = pl_get_string(m->msg, "EnrollmentID");
    const char *user = pl_get_string(m->msg, "EnrollmentUserID");
    if (plist_dict_get_item(m->msg, "UDID") != NULL) {
        *why = "udid";
        return -1;
    }
    if (eid == NULL || !valid_id(eid) || (user && !valid_id(user))) {
        *why = "no_identifier";
        return -1;
    }
    if (user) {
        snprintf(m->id, sizeof(m->id), "%s:%s", eid, user);
        snprintf(m->parent_id, sizeof(m->parent_id), "%s", eid);
        m->type = ST_ENR_USER_CHANNEL;
    } else {
        snprintf(m->id, sizeof(m->id), "%s", eid);
        m->type = ST_ENR_USER;
    }
    return 0;
}

/* The session and the enrollment in one read (storage_device_lookup): the hot path. */
static void lookup_session(struct app *app, const http_request *req, struct mdm_request *m)
{
    char hash[SECRET_HASH_LEN + 1];
    m->session_status = session_token_hash(req, hash);
    if (m->session_status != SESSION_OK)
        return;
    if (storage_device_lookup(app->st, hash, m->id, &m->session, &m->enr) != 0) {
        m->session_status = SESSION_ERROR;
        return;
    }
    m->have_enr = 1;
    m->session_status =
        m->session.token_hash ? (int)session_check(app, &m->session) : SESSION_UNKNOWN;
}

int mdm_request_get_enrollment(struct app *app, struct mdm_request *m, st_enrollment *e)
{
    if (!m->have_enr)
        return storage_enrollment_get(app->st, m->id, e);
    *e = m->enr; /* hands the prefetched record over */
    memset(&m->enr, 0, sizeof(m->enr));
    m->have_enr = 0;
    return e->id ? ST_OK : ST_ENOTFOUND;
}

int mdm_request_begin(struct app *app, http_request *req, http_response *res, struct mdm_request *m)
{
    char err[128];
    const char *why = NULL;
    memset(m, 0, sizeof(*m));
    m->msg = pl_parse_dict_budget(req->body, req->body_len, &pl_budget_device, err, sizeof(err));
    if (m->msg == NULL) {
        log_warn("event=mdm_bad_body rid=%s reason=\"%s\"", req->request_id, err);
        http_response_error(res, 400, "the body must be a plist dictionary");
        return -1;
    }
    if (!message_types_ok(m->msg, err, sizeof(err))) {
        log_warn("event=mdm_bad_body rid=%s reason=\"%s\"", req->request_id, err);
        http_response_error(res, 400, err);
        return -1;
    }
    if (resolve_channel(m, &why) != 0) {
        log_warn("event=mdm_bad_body rid=%s reason=%s", req->request_id, why);
        /* 403, never 401: a device enrollment would take a 401 as "unenroll" (7.3). */
        if (strcmp(why, "udid") == 0)
            http_response_error(res, 403, "this server manages user enrollments only");
        else
            http_response_error(res, 400, "no valid EnrollmentID");
        return -1;
    }
    if (identity_verify(app, req, m->fp, &why) != 0) {
        log_warn("event=mdm_identity_refused rid=%s enrollment=%s reason=\"%s\"", req->request_id,
                 m->id, why);
        http_response_error(res, 403, "device identity not accepted");
        return -1;
    }
    lookup_session(app, req, m);
    return 0;
}

void mdm_request_cleanup(struct mdm_request *m)
{
    if (m->msg)
        plist_free(m->msg);
    st_session_cleanup(&m->session);
    st_enrollment_cleanup(&m->enr);
    m->have_enr = 0;
    m->msg = NULL;
}

static int is_user_enrollment(int type)
{
    return type == ST_ENR_USER || type == ST_ENR_USER_CHANNEL;
}

static int is_active(const st_enrollment *e)
{
    return e->auth_state == NULL || strcmp(e->auth_state, "active") == 0;
}

/*
 * A sign-in after a demand: the new token becomes the enrollment's and the state goes back to
 * active. The steps before the compare-and-set are idempotent and the compare-and-set lets
 * exactly one request run reauth_completed (re-installs), so a request that fails half-way
 * (503) is finished by the device's retry: it comes back with the token now bound to an
 * enrollment that is not yet active. Returns 0, or -1 on a storage failure.
 */
static int complete_reauth(struct app *app, struct mdm_request *m, const st_enrollment *e,
                           const char *rid)
{
    const st_session *s = &m->session;
    int64_t now = app_now(app);
    int won = 1;
    if (s->enrollment_id == NULL && (storage_session_revoke_enrollment(app->st, e->id, now) != 0 ||
                                     storage_session_bind(app->st, s->token_hash, e->id) != 0))
        return -1;
    if (storage_enrollment_set_last_auth(app->st, e->id, s->issued_at, s->method) != 0)
        return -1;
    if (!is_active(e)) {
        int rc =
            storage_enrollment_transition_auth_state(app->st, e->id, e->auth_state, "active", now);
        if (rc != 0 && rc != ST_ECONFLICT)
            return -1;
        won = rc == 0; /* ST_ECONFLICT: a concurrent request of the device finished it */
    }
    if (won) {
        reauth_completed(app, e, s->method);
        log_info("event=reauthenticated rid=%s enrollment=%s", rid, e->id);
    }
    return 0;
}

/* Why the request's token does not do for the enrollment, or NULL if it does. */
static const char *token_problem(struct app *app, struct mdm_request *m, const st_enrollment *e,
                                 int flags)
{
    const st_session *s = &m->session;
    int status = m->session_status;
    int have = status == SESSION_OK || status == SESSION_EXPIRED || status == SESSION_REVOKED;
    if (!have)
        return session_status_name(status);
    if (s->user_id != e->user_id)
        return "foreign_user";
    if (s->enrollment_id && strcmp(s->enrollment_id, e->id) != 0 &&
        !(e->parent_id && strcmp(s->enrollment_id, e->parent_id) == 0))
        return "foreign_enrollment";
    if (status != SESSION_OK && s->enrollment_id && reauth_enforcing(app, e)) {
        m->enforcing = 1; /* let the failure action's removals through (auth/reauth.h) */
        return NULL;
    }
    if (status != SESSION_OK && !((flags & MDM_TOKEN_ALLOW_EXPIRED) && s->enrollment_id))
        return session_status_name(status);
    return NULL;
}

int mdm_check_session(struct app *app, http_request *req, http_response *res, struct mdm_request *m,
                      const st_enrollment *e, int flags)
{
    if (!is_user_enrollment(e->type))
        return 0; /* never 401 a device enrollment: it would unenroll (PROTOCOL.md 7.3) */
    const st_session *s = &m->session;
    const char *problem =
        m->session_status == SESSION_ERROR ? "storage" : token_problem(app, m, e, flags);
    int fresh =
        problem == NULL && m->session_status == SESSION_OK && !(flags & MDM_TOKEN_CHECK_ONLY) &&
        (s->enrollment_id == NULL || (strcmp(s->enrollment_id, e->id) == 0 && !is_active(e)));
    if (fresh && complete_reauth(app, m, e, req->request_id) != 0)
        problem = "storage";
    if (problem == NULL)
        return 0;
    if (strcmp(problem, "storage") == 0) { /* never a sign-in prompt for our own failure */
        http_response_error(res, 503, "storage unavailable");
        return -1;
    }
    if (strcmp(problem, "foreign_user") == 0)
        audit_record(app, "device", "reauth.wrong_user", e->id, "token of another user refused");
    log_info("event=mdm_challenge rid=%s enrollment=%s token=%s", req->request_id, e->id, problem);
    session_challenge_reauth(app, res, e);
    return -1;
}

int mdm_cert_owner(struct app *app, const struct mdm_request *m, int64_t *user_id)
{
    st_cert c = {0};
    int rc = storage_cert_get_by_fingerprint(app->st, m->fp, &c);
    if (rc == 0 && (c.revoked_at || (c.enrollment_id && strcmp(c.enrollment_id, m->id) != 0)))
        rc = ST_ECONFLICT;
    *user_id = c.user_id;
    st_cert_cleanup(&c);
    return rc == ST_ERROR ? ST_ERROR : rc ? -2 : 0;
}

int mdm_check_identity(struct app *app, http_request *req, http_response *res,
                       struct mdm_request *m, const st_enrollment *e)
{
    if (strcmp(e->cert_fingerprint ? e->cert_fingerprint : "", m->fp) == 0)
        return 0; /* the hot path: the bound certificate */
    /* Another certificate is accepted only as a renewal issued for this enrollment (PROTOCOL.md
     * 10.3, docs/DECISIONS.md "Device identity"), which it then replaces. */
    int rc = renewal_accept_identity(app, e, m->fp, req->request_id);
    if (rc == ST_ERROR) {
        http_response_error(res, 503, "storage unavailable");
        return -1;
    }
    if (rc != 0) {
        log_warn("event=mdm_identity_refused rid=%s enrollment=%s reason=other_certificate",
                 req->request_id, m->id);
        http_response_error(res, 403, "device identity not accepted for this enrollment");
        return -1;
    }
    return 0;
}

int mdm_token_optional(const st_enrollment *e)
{
    return e->type == ST_ENR_USER && mdm_platform_is_mac(e->product_name);
}

/*
 * 403 with the body Apple defines for "this server does not know you" (PROTOCOL.md 16,
 * mdm/errors/unrecognized.device.yaml, iOS 17 / macOS 14): the device unenrolls instead of
 * retrying for ever. Sent only when the store says the device channel is unknown or has ended
 * (docs/DECISIONS.md, "A device Orchard no longer knows"); never for an identity failure, a
 * revoked enrollment or a mismatched message.
 */
static void refuse_unrecognized(http_response *res, const char *description)
{
    res->status = 403;
    res->content_type = "application/json";
    buf_reset(&res->body);
    buf_printf(&res->body,
               "{\"code\":\"com.apple.unrecognized.device\",\"description\":\"%s\","
               "\"message\":\"This device is no longer managed by your organisation.\"}",
               description);
}

/* Refuses a request that the stored enrollment does not allow; 0 if it may go on. */
static int stored_allows(const http_request *req, http_response *res, const struct mdm_request *m,
                         const st_enrollment *e)
{
    const char *why = NULL;
    if (e->unenrolled_at)
        why = "unenrolled";
    else if (e->type != m->type)
        why = "identifier_form"; /* e.g. a user channel's id sent as a device channel's */
    else if (e->auth_state && strcmp(e->auth_state, MDM_STATE_REVOKED) == 0)
        why = "revoked";
    if (why == NULL)
        return 0;
    log_warn("event=mdm_refused rid=%s enrollment=%s reason=%s", req->request_id, m->id, why);
    if (strcmp(why, "unenrolled") == 0)
        refuse_unrecognized(res, "this enrollment has ended");
    else
        http_response_error(res, 403,
                            strcmp(why, "revoked") == 0
                                ? "this enrollment has been revoked"
                                : "the message's identifiers do not match this enrollment");
    return -1;
}

/*
 * The refusal for an EnrollmentID the store does not have. A device channel is unknown:
 * unrecognized.device. A macOS user channel is only unknown to Orchard when its device channel
 * is too (or has ended); under a live device channel it is a channel that could not be created
 * (e.g. a certificate not yet seen on the device channel), so a plain 403 that the device
 * retries, never a prompt to unenroll the whole Mac. 0, or ST_ERROR (storage: 503).
 */
static int refuse_unknown(struct app *app, const http_request *req, http_response *res,
                          const struct mdm_request *m)
{
    int unknown = 1;
    if (m->type == ST_ENR_USER_CHANNEL) {
        st_enrollment parent = {0};
        int rc = storage_enrollment_get(app->st, m->parent_id, &parent);
        unknown = rc == ST_ENOTFOUND || (rc == 0 && parent.unenrolled_at);
        st_enrollment_cleanup(&parent);
        if (rc != 0 && rc != ST_ENOTFOUND)
            return ST_ERROR;
    }
    log_warn("event=mdm_unknown_enrollment rid=%s enrollment=%s", req->request_id, m->id);
    if (unknown)
        refuse_unrecognized(res, "unknown enrollment");
    else
        http_response_error(res, 403, "unknown enrollment channel");
    return 0;
}

int mdm_request_load(struct app *app, http_request *req, http_response *res, struct mdm_request *m,
                     st_enrollment *e)
{
    int rc = mdm_request_get_enrollment(app, m, e);
    if (rc != 0 && rc != ST_ENOTFOUND) {
        http_response_error(res, 503, "storage unavailable");
        return -1;
    }
    if (rc != 0) {
        if (refuse_unknown(app, req, res, m) != 0)
            http_response_error(res, 503, "storage unavailable");
        return -1;
    }
    if (stored_allows(req, res, m, e) != 0)
        return -1;
    return mdm_check_identity(app, req, res, m, e);
}
