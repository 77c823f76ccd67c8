/*
 * The command channel (PROTOCOL.md 9): record the device's report for a command, then hand out
 * the next one, or answer an empty 200 to end the session. A command is finished only by
 * Acknowledged, Error or CommandFormatError; a command sent but never answered is sent again;
 * NotNow commands wait for the next Idle (or a push) so a device is not asked twice in one
 * exchange.
 */
#include <stdlib.h>
#include <string.h>

#include "auth/session.h"
#include "core/log.h"
#include "mdm/inventory.h"
#include "mdm/library.h"
#include "mdm/mdm.h"
#include "webhook/webhook.h"

static int status_code(const char *s)
{
    if (strcmp(s, "Acknowledged") == 0)
        return ST_CMD_ACKNOWLEDGED;
    if (strcmp(s, "Error") == 0)
        return ST_CMD_ERROR;
    if (strcmp(s, "CommandFormatError") == 0)
        return ST_CMD_FORMAT_ERROR;
    if (strcmp(s, "NotNow") == 0)
        return ST_CMD_NOTNOW;
    return -1;
}

/* Records a report; unknown or already-finished commands are ignored (idempotent). */
static int record_report(struct app *app, http_request *req, struct mdm_request *m, int status,
                         const char *status_name)
{
    const char *uuid = pl_get_string(m->msg, "CommandUUID");
    if (uuid == NULL || strlen(uuid) > 128)
        return -1;
    int rc =
        storage_queue_report(app->st, m->id, uuid, status, req->body, req->body_len, app_now(app));
    if (rc == ST_ENOTFOUND)
        log_info("event=report_ignored rid=%s enrollment=%s command=%s", req->request_id, m->id,
                 uuid);
    else if (rc != 0)
        return -2;
    else
        webhook_emit(app, "command.result",
                     (const char *const[]){"enrollment_id", m->id, "command_uuid", uuid, "status",
                                           status_name, NULL});
    return 0;
}

static void send_next(struct app *app, http_request *req, http_response *res, struct mdm_request *m,
                      int idle)
{
    st_command c = {0};
    int rc = storage_queue_next(app->st, m->id, idle, app_now(app), &c);
    if (rc == 0) {
        http_response_send(res, 200, "application/xml", c.body, c.body_len);
        log_info("event=command_sent rid=%s enrollment=%s command=%s type=%s", req->request_id,
                 m->id, c.uuid, c.request_type);
    } else if (rc == ST_ENOTFOUND && m->enforcing) {
        session_challenge(app, res); /* removals delivered: now the user must sign in again */
    } else if (rc == ST_ENOTFOUND) {
        res->status = 200; /* zero-length body: nothing more to do (9.2) */
    } else {
        http_response_error(res, 503, "storage unavailable");
    }
    st_command_cleanup(&c);
}

static int load(struct app *app, http_request *req, http_response *res, struct mdm_request *m,
                st_enrollment *e)
{
    if (mdm_request_load(app, req, res, m, e) != 0)
        return -1;
    if (mdm_token_optional(e) && m->session_status == SESSION_MISSING)
        return 0; /* a Mac's device channel carries no bearer (PROTOCOL.md 7.1) */
    return mdm_check_session(app, req, res, m, e, 0);
}

void mdm_handle_connect(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    struct mdm_request m;
    st_enrollment e = {0};
    if (mdm_request_begin(app, req, res, &m) != 0 || load(app, req, res, &m, &e) != 0)
        goto out;
    const char *status = pl_get_string(m.msg, "Status");
    int idle = status && strcmp(status, "Idle") == 0;
    int code = status && !idle ? status_code(status) : -1;
    if (!idle && code < 0) {
        http_response_error(res, 400, "missing or unknown Status");
        goto out;
    }
    if (!idle) {
        int rc = record_report(app, req, &m, code, status);
        if (rc != 0) {
            http_response_error(res, rc == -1 ? 400 : 503,
                                rc == -1 ? "missing CommandUUID" : "storage unavailable");
            goto out;
        }
        /* Library bookkeeping; a no-op unless the report concerns a library command or
         * carries a ProfileList / ManagedApplicationList (the Idle path never gets here). */
        lib_on_report(app, m.id, pl_get_string(m.msg, "CommandUUID"), code, m.msg);
        /* Inventory answers; one prefix compare for any other command. */
        inventory_on_report(app, m.id, pl_get_string(m.msg, "CommandUUID"), code, m.msg);
    }
    if (app_now(app) - e.last_seen_at >= 60) /* a write per minute, not per request */
        storage_enrollment_touch(app->st, m.id, app_now(app));
    send_next(app, req, res, &m, idle);
out:
    st_enrollment_cleanup(&e);
    mdm_request_cleanup(&m);
}
