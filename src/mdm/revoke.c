/*
 * Cutting a device off (POST /api/v1/enrollments/{id}/revoke): its identity certificates and
 * session tokens are revoked and its state becomes MDM_STATE_REVOKED, which every later
 * check-in and connect is refused on (mdm_request_load) before its certificate or token is
 * even looked at. A Mac's user channels share the device's certificate, so they go too.
 */
#include <string.h>

#include "auth/audit.h"
#include "core/log.h"
#include "mdm/mdm.h"

struct revoke_walk {
    struct app *app;
    const char *parent;
    int rc;
};

static int revoke_one(struct app *app, const char *id)
{
    int64_t now = app_now(app);
    if (storage_enrollment_set_auth_state(app->st, id, MDM_STATE_REVOKED, now) != 0 ||
        storage_session_revoke_enrollment(app->st, id, now) != 0 ||
        storage_cert_revoke_enrollment(app->st, id, now) != 0)
        return ST_ERROR;
    return 0;
}

static int revoke_child(const st_enrollment *e, void *ctx)
{
    struct revoke_walk *w = ctx;
    if (e->parent_id && strcmp(e->parent_id, w->parent) == 0 && revoke_one(w->app, e->id) != 0)
        w->rc = ST_ERROR;
    return 0;
}

int mdm_revoke(struct app *app, const char *enrollment_id, const char *actor)
{
    st_enrollment e = {0};
    int rc = storage_enrollment_get(app->st, enrollment_id, &e);
    if (rc == 0)
        rc = revoke_one(app, e.id);
    if (rc == 0 && e.type == ST_ENR_USER) {
        struct revoke_walk w = {app, e.id, 0};
        st_enrollment_filter f = {.user_id = e.user_id, .include_unenrolled = 1};
        rc = storage_enrollment_list(app->st, &f, revoke_child, &w);
        rc = rc ? rc : w.rc;
    }
    if (rc == 0) {
        audit_record(app, actor, "enrollment.revoke", e.id,
                     "identity certificates and tokens revoked");
        log_info("event=enrollment_revoked enrollment=%s actor=%s", e.id, actor);
    }
    st_enrollment_cleanup(&e);
    return rc;
}
