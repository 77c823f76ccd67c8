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

/* PROTOCOL.md 2: UDID present -> device enrollment; else EnrollmentID -> user enrollment. */
static int resolve_channel(struct mdm_request *m)
{
    const char *udid = pl_get_string(m->msg, "UDID");
    const char *eid = pl_get_string(m->msg, "EnrollmentID");
    const char *dev = udid ? udid : eid;
    const char *user =
        udid ? pl_get_string(m->msg, "UserID") : pl_get_string(m->msg, "EnrollmentUserID");
    if (dev == NULL || !valid_id(dev) || (user && !valid_id(user)))
        return -1;
    if (user) {
        snprintf(m->id, sizeof(m->id), "%s:%s", dev, user);
        snprintf(m->parent_id, sizeof(m->parent_id), "%s", dev);
        m->type = udid ? ST_ENR_DEVICE_USER : ST_ENR_USER_CHANNEL;
    } else {
        snprintf(m->id, sizeof(m->id), "%s", dev);
        m->type = udid ? ST_ENR_DEVICE : ST_ENR_USER;
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
    if (resolve_channel(m) != 0) {
        log_warn("event=mdm_bad_body rid=%s reason=no_identifier", req->request_id);
        http_response_error(res, 400, "no valid EnrollmentID or UDID");
        return -1;
    }
    if (identity_verify(app, req, m->fp, &why) != 0) {
        log_warn("event=mdm_identity_refused rid=%s enrollment=%s reason=\"%s\"", req->request_id,
                 m->id, why);
        http_response_error(res, 403, "device identity not accepted");
        return -1;
    }
    if (m->type == ST_ENR_USER || m->type == ST_ENR_USER_CHANNEL)
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

/* An unbound token of the enrollment's own user, presented after a 401: bind it. */
static int rebind(struct app *app, struct mdm_request *m, const st_enrollment *e, const char *rid)
{
    if (storage_session_revoke_enrollment(app->st, e->id, app_now(app)) != 0 ||
        storage_session_bind(app->st, m->session.token_hash, e->id) != 0)
        return -1;
    storage_enrollment_set_auth_state(app->st, e->id, "active", app_now(app));
    storage_enrollment_set_last_auth(app->st, e->id, m->session.issued_at, m->session.method);
    reauth_completed(app, e, m->session.method);
    log_info("event=reauthenticated rid=%s enrollment=%s", rid, e->id);
    return 0;
}

int mdm_check_session(struct app *app, http_request *req, http_response *res, struct mdm_request *m,
                      const st_enrollment *e, int allow_expired)
{
    if (!is_user_enrollment(m->type))
        return 0; /* never 401 a device enrollment: it would unenroll (PROTOCOL.md 7.3) */
    const st_session *s = &m->session;
    int status = m->session_status;
    const char *problem = NULL;
    int have = status == SESSION_OK || status == SESSION_EXPIRED || status == SESSION_REVOKED;
    if (!have)
        problem = session_status_name(status);
    else if (s->user_id != e->user_id)
        problem = "foreign_user";
    else if (s->enrollment_id && strcmp(s->enrollment_id, e->id) != 0 &&
             !(e->parent_id && strcmp(s->enrollment_id, e->parent_id) == 0))
        problem = "foreign_enrollment";
    else if (status != SESSION_OK && s->enrollment_id && reauth_enforcing(app, e))
        m->enforcing = 1; /* let the failure action's removals through (auth/reauth.h) */
    else if (status != SESSION_OK && !(allow_expired && s->enrollment_id))
        problem = session_status_name(status);
    else if (s->enrollment_id == NULL && rebind(app, m, e, req->request_id) != 0)
        problem = "storage";
    if (problem == NULL)
        return 0;
    if (strcmp(problem, "foreign_user") == 0)
        audit_record(app, "device", "reauth.wrong_user", e->id, "token of another user refused");
    log_info("event=mdm_challenge rid=%s enrollment=%s token=%s", req->request_id, e->id, problem);
    session_challenge(app, res);
    return -1;
}

int mdm_cert_owner(struct app *app, const struct mdm_request *m, int64_t *user_id)
{
    st_cert c = {0};
    int rc = storage_cert_get_by_fingerprint(app->st, m->fp, &c);
    if (rc == 0 && (c.revoked_at || (c.enrollment_id && strcmp(c.enrollment_id, m->id) != 0)))
        rc = -1;
    *user_id = c.user_id;
    st_cert_cleanup(&c);
    return rc == 0 ? 0 : -1;
}

int mdm_check_identity(struct app *app, http_request *req, http_response *res,
                       struct mdm_request *m, const st_enrollment *e)
{
    if (strcmp(e->cert_fingerprint ? e->cert_fingerprint : "", m->fp) == 0)
        return 0; /* the hot path: the bound certificate */
    /* Renewal (PROTOCOL.md 10.3): a newer certificate of ours for the same enrollment/user. */
    int64_t owner = 0;
    if (mdm_cert_owner(app, m, &owner) != 0 || owner != e->user_id ||
        storage_enrollment_set_cert(app->st, m->id, m->fp) != 0 ||
        storage_cert_set_enrollment(app->st, m->fp, m->id) != 0) {
        log_warn("event=mdm_identity_refused rid=%s enrollment=%s reason=other_certificate",
                 req->request_id, m->id);
        http_response_error(res, 403, "device identity not accepted for this enrollment");
        return -1;
    }
    log_info("event=identity_renewed rid=%s enrollment=%s", req->request_id, m->id);
    return 0;
}
