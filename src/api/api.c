/* Admin API handlers. */
#include "api/api.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "app.h"
#include "auth/audit.h"
#include "auth/reauth.h"
#include "auth/secret.h"
#include "auth/signin.h"
#include "core/log.h"
#include "core/mem.h"
#include "enroll/enroll.h"
#include "mdm/command.h"
#include "mdm/inventory.h"
#include "mdm/mdm.h"
#include "mdm/platform.h"
#include "plist/pl.h"
#include "push/pusher.h"
#include "webhook/webhook.h"

#define LIST_LIMIT 500 /* commands and audit events per answer */

void api_send_json(http_response *res, int status, json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT);
    http_response_send(res, status, "application/json", s, strlen(s));
    free(s);
    json_decref(j);
}

/* Checks the API key; on failure answers 401. Writes "api:<name>" into actor. */
static int authorize(struct app *app, http_request *req, http_response *res, char *actor,
                     size_t actor_len)
{
    const char *h = http_request_header(req, "Authorization");
    const char *key = h && strncasecmp(h, "Bearer ", 7) == 0 ? h + 7 : NULL;
    char hash[SECRET_HASH_LEN + 1];
    int64_t id = 0;
    char *name = NULL;
    if (key && secret_token_well_formed(key)) {
        secret_hash(key, hash);
        int rc = storage_apikey_find(app->st, hash, &id, &name);
        if (rc == 0) {
            snprintf(actor, actor_len, "api:%s", name);
            free(name);
            return 0;
        }
        if (rc == ST_ERROR) { /* our failure, not the caller's key */
            http_response_error(res, 503, "storage unavailable");
            return -1;
        }
    }
    log_warn("event=api_unauthorized rid=%s remote=%s", req->request_id, req->client_addr);
    http_response_set_header(res, "WWW-Authenticate", "Bearer realm=\"orchard-api\"");
    http_response_error(res, 401, "a valid API key is required");
    return -1;
}

#define AUTHORIZE()                                                                                \
    char actor[128];                                                                               \
    if (authorize(app, req, res, actor, sizeof(actor)) != 0)                                       \
        return;

void api_handle_healthz(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    (void)req;
    if (storage_ping(app->st) == 0)
        http_response_send(res, 200, "application/json", "{\"status\":\"ok\"}", 15);
    else
        http_response_send(res, 503, "application/json", "{\"status\":\"storage down\"}", 25);
}

/* Enrolled devices whose identity certificate expires within 30 days, or has expired: the ones
 * identity renewal (mdm/renewal.h) has yet to reach. Omitted when storage does not answer. */
static void identity_metrics(struct app *app, buf *out)
{
    int64_t now = app_now(app), soon = 0, expired = 0;
    if (storage_identity_count_expiring(app->st, now, now + 30 * 86400, &soon) != ST_OK ||
        storage_identity_count_expiring(app->st, 0, now, &expired) != ST_OK)
        return;
    buf_printf(out,
               "# HELP orchard_identities_expiring_30d Enrolled devices whose identity "
               "certificate expires within 30 days.\n"
               "# TYPE orchard_identities_expiring_30d gauge\n"
               "orchard_identities_expiring_30d %lld\n"
               "# HELP orchard_identities_expired Enrolled devices whose identity certificate "
               "has expired (they can no longer reach the server).\n"
               "# TYPE orchard_identities_expired gauge\norchard_identities_expired %lld\n",
               (long long)soon, (long long)expired);
}

void api_handle_metrics(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    const char *token = config_get(app->cfg, "metrics_token");
    if (token[0]) {
        const char *h = http_request_header(req, "Authorization");
        if (h == NULL || strncasecmp(h, "Bearer ", 7) != 0 || !secret_equal(h + 7, token)) {
            http_response_error(res, 401, "metrics token required");
            return;
        }
    }
    buf_reset(&res->body);
    http_server_metrics(app->http, &res->body);
    buf_printf(&res->body,
               "# HELP orchard_schema_version Database schema version.\n"
               "# TYPE orchard_schema_version gauge\norchard_schema_version %d\n",
               storage_schema_version(app->st));
    api_push_metrics(app, &res->body);
    identity_metrics(app, &res->body);
    signin_metrics(app, &res->body);
    webhooks_metrics(app, app->webhooks, &res->body);
    res->status = 200;
    res->content_type = "text/plain; version=0.0.4";
}

static const char *type_name(int type)
{
    static const char *const names[] = {"unknown", "user", "user_channel", "device", "device_user"};
    return type >= 1 && type <= 4 ? names[type] : names[0];
}

static json_t *str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

/* A value the device reported in its inventory, else the one its Authenticate carried. */
static const char *current(const st_inventory *inv, const char *reported, const char *at_auth)
{
    return inv && inv->updated_at && reported ? reported : at_auth;
}

json_t *api_enrollment_json(struct app *app, const st_enrollment *e, const st_inventory *inv,
                            int full)
{
    st_user u = {0};
    int64_t pending = 0;
    storage_user_get(app->st, e->user_id, &u);
    storage_queue_count(app->st, e->id, &pending);
    const char *state = e->unenrolled_at ? "unenrolled" : e->auth_state;
    json_t *j = json_pack(
        "{s:s, s:s, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:I, s:o, s:o, s:I, s:I, s:I, "
        "s:I, s:b, s:I}",
        "id", e->id, "type", type_name(e->type), "user", str_or_null(u.email), "managed_apple_id",
        str_or_null(u.managed_apple_id), "product_name", str_or_null(e->product_name), "model",
        str_or_null(e->model), "os_version",
        str_or_null(current(inv, inv ? inv->os_version : NULL, e->os_version)), "build_version",
        str_or_null(current(inv, inv ? inv->build_version : NULL, e->build_version)), "device_name",
        str_or_null(current(inv, inv ? inv->device_name : NULL, e->device_name)), "platform",
        json_string(ue_os_name(mdm_platform_of(e->product_name, e->model))), "auth_state",
        str_or_null(state), "auth_state_since", (json_int_t)e->auth_state_since, "last_auth_method",
        str_or_null(e->last_auth_method), "parent_id", str_or_null(e->parent_id), "last_auth_at",
        (json_int_t)e->last_auth_at, "enrolled_at", (json_int_t)e->enrolled_at, "last_seen_at",
        (json_int_t)e->last_seen_at, "unenrolled_at", (json_int_t)e->unenrolled_at, "push_token",
        e->push_token != NULL, "pending_commands", (json_int_t)pending);
    /* What the inventory rounds learned (docs/INVENTORY.md); the lists only for one enrollment. */
    json_object_set_new(j, "inventory", inventory_json(inv, full));
    st_user_cleanup(&u);
    return j;
}

/* Loads the enrollment named by the first path parameter; answers 404 if unknown. */
static int load_enrollment(struct app *app, http_request *req, http_response *res, st_enrollment *e)
{
    int rc = storage_enrollment_get(app->st, req->params[0], e);
    if (rc == ST_ENOTFOUND)
        http_response_error(res, 404, "no such enrollment");
    else if (rc != 0)
        http_response_error(res, 503, "storage unavailable");
    return rc;
}

/*
 * The device identity of an enrollment: its certificate's expiry, and the latest renewal
 * (mdm/renewal.h: of this certificate, or the one that produced it) or null; the identity is
 * null when not known. A Mac's user channel shows its device channel's renewal.
 */
static json_t *identity_json(struct app *app, const st_enrollment *e)
{
    st_cert c = {0};
    st_renewal r = {0};
    if (e->cert_fingerprint == NULL ||
        storage_cert_get_by_fingerprint(app->st, e->cert_fingerprint, &c) != ST_OK)
        return json_null();
    json_t *renewal = json_null();
    if (storage_renewal_get(app->st, e->parent_id ? e->parent_id : e->id, &r) == ST_OK)
        renewal =
            json_pack("{s:s, s:i, s:I, s:o, s:s, s:o, s:I, s:I}", "state", r.state, "attempts",
                      r.attempts, "next_attempt_at", (json_int_t)r.next_attempt_at, "last_error",
                      str_or_null(r.last_error), "old_fingerprint", r.old_fingerprint,
                      "new_fingerprint", str_or_null(r.new_fingerprint), "started_at",
                      (json_int_t)r.started_at, "updated_at", (json_int_t)r.updated_at);
    json_t *j = json_pack("{s:s, s:I, s:I, s:b, s:o}", "fingerprint", c.fingerprint, "not_after",
                          (json_int_t)c.not_after, "issued_at", (json_int_t)c.issued_at, "expired",
                          c.not_after <= app_now(app), "renewal", renewal);
    st_cert_cleanup(&c);
    st_renewal_cleanup(&r);
    return j;
}

void api_handle_enrollment(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    AUTHORIZE();
    st_enrollment e = {0};
    st_inventory inv = {0};
    int64_t asked = 0;
    if (load_enrollment(app, req, res, &e) != 0)
        goto out;
    int rc = storage_inventory_get(app->st, e.id, &inv);
    if ((rc != 0 && rc != ST_ENOTFOUND) || storage_inventory_pending(app->st, e.id, &asked) != 0) {
        http_response_error(res, 503, "storage unavailable");
        goto out;
    }
    json_t *j = api_enrollment_json(app, &e, rc == 0 ? &inv : NULL, 1);
    json_object_set_new(j, "identity", identity_json(app, &e));
    json_t *o = json_object_get(j, "inventory");
    if (json_is_object(o)) /* commands of the last round still waiting for the device */
        json_object_set_new(o, "pending_commands", json_integer((json_int_t)asked));
    api_send_json(res, 200, j);
out:
    st_inventory_cleanup(&inv);
    st_enrollment_cleanup(&e);
}

static const char *status_name(int status)
{
    static const char *const names[] = {"queued", "notnow", "acknowledged", "error",
                                        "format_error"};
    return status >= 0 && status <= 4 ? names[status] : "unknown";
}

static json_t *command_json(const st_command *c)
{
    json_t *result = json_null();
    if (c->result && c->result_len) {
        char err[64];
        plist_t p = pl_parse(c->result, c->result_len, err, sizeof(err));
        if (p) {
            char *s = pl_to_json(p);
            result = json_loads(s, JSON_DECODE_ANY, NULL);
            free(s);
            plist_free(p);
        }
    }
    return json_pack("{s:s, s:s, s:s, s:s, s:i, s:b, s:I, s:I, s:I, s:o}", "command_uuid", c->uuid,
                     "enrollment_id", c->enrollment_id, "request_type", c->request_type, "status",
                     status_name(c->status), "priority", c->priority, "sensitive", c->sensitive,
                     "created_at", (json_int_t)c->created_at, "sent_at", (json_int_t)c->sent_at,
                     "completed_at", (json_int_t)c->completed_at, "result",
                     result ? result : json_null());
}

static int add_command(const st_command *c, void *ctx)
{
    json_array_append_new(ctx, command_json(c));
    return 0;
}

static void enqueue(struct app *app, http_request *req, http_response *res, const char *actor)
{
    st_enrollment e = {0};
    struct mdm_command cmd = {0};
    char err[256];
    if (load_enrollment(app, req, res, &e) != 0)
        goto out;
    if (e.unenrolled_at) {
        http_response_error(res, 409, "the enrollment has been unenrolled");
        goto out;
    }
    int ue = e.type == ST_ENR_USER || e.type == ST_ENR_USER_CHANNEL;
    if (mdm_command_from_body(req->body, req->body_len, mdm_platform_of(e.product_name, e.model),
                              ue, &cmd, err, sizeof(err)) != 0) {
        log_info("event=command_refused rid=%s enrollment=%s reason=\"%s\"", req->request_id, e.id,
                 err);
        http_response_error(res, 422, err);
        goto out;
    }
    if (cmd.sensitive && strcmp(e.auth_state ? e.auth_state : "", "active") != 0) {
        /* Sensitive content only goes to devices whose user has proven who they are. */
        http_response_error(res, 409,
                            "the enrollment must re-authenticate before it can "
                            "receive sensitive content");
        goto out;
    }
    if (mdm_command_enqueue(app, e.id, &cmd) != 0) {
        http_response_error(res, 503, "storage unavailable");
        goto out;
    }
    /* Wake the device unless asked not to; a device without a live token is not an error. */
    if (cmd.push)
        push_enrollment(app, e.id);
    log_info("event=command_enqueued rid=%s actor=%s enrollment=%s command=%s type=%s push=%d",
             req->request_id, actor, e.id, cmd.uuid, cmd.request_type, cmd.push);
    api_send_json(res, 201, json_pack("{s:s}", "command_uuid", cmd.uuid));
out:
    mdm_command_cleanup(&cmd);
    st_enrollment_cleanup(&e);
}

void api_handle_enrollment_commands(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    AUTHORIZE();
    if (strcmp(req->method, "POST") == 0) {
        enqueue(app, req, res, actor);
        return;
    }
    st_enrollment e = {0};
    int rc = load_enrollment(app, req, res, &e); /* 404 for an enrollment that never was */
    st_enrollment_cleanup(&e);
    if (rc != 0)
        return;
    json_t *arr = json_array();
    if (storage_command_list(app->st, req->params[0], LIST_LIMIT, add_command, arr) != 0) {
        json_decref(arr);
        http_response_error(res, 503, "storage unavailable");
        return;
    }
    api_send_json(res, 200, json_pack("{s:o}", "commands", arr));
}

void api_handle_command(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    AUTHORIZE();
    st_command c = {0};
    int rc = storage_command_get(app->st, req->params[0], &c);
    if (rc == 0)
        api_send_json(res, 200, command_json(&c));
    else
        http_response_error(res, rc == ST_ENOTFOUND ? 404 : 503,
                            rc == ST_ENOTFOUND ? "no such command" : "storage unavailable");
    st_command_cleanup(&c);
}

/* ---- durable jobs (jobs/worker.h) ---- */

static const char *job_state_name(int state)
{
    switch (state) {
    case ST_JOB_QUEUED:
        return "queued";
    case ST_JOB_RUNNING:
        return "running";
    case ST_JOB_DONE:
        return "done";
    default:
        return "failed";
    }
}

/* A time, or null for "not yet" (0). */
static json_t *job_time(int64_t t)
{
    return t ? json_integer(t) : json_null();
}

static json_t *job_json(const st_job *j)
{
    static const char *const scopes[] = {"user", "domain", "enrollment", "item"};
    json_t *target =
        j->scope == ST_JOB_ITEM
            ? json_pack("{s:I}", j->item_kind == ST_ITEM_PROFILE ? "profile_id" : "app_id",
                        (json_int_t)j->item_id)
            : json_string(j->value ? j->value : "");
    return json_pack(
        "{s:I, s:s, s:s, s:s, s:o, s:s, s:o, s:I, s:I, s:I, s:I, s:I, s:o, s:o, s:o}", "id",
        (json_int_t)j->id, "kind", j->kind, "state", job_state_name(j->state), "scope",
        j->scope >= ST_JOB_USER && j->scope <= ST_JOB_ITEM ? scopes[j->scope - 1] : "?", "target",
        target, "origin", j->origin ? j->origin : "", "total",
        j->total >= 0 ? json_integer(j->total) : json_null(), "done", (json_int_t)j->done, "errors",
        (json_int_t)j->errors, "installs", (json_int_t)j->installs, "removals",
        (json_int_t)j->removals, "created_at", (json_int_t)j->created_at, "started_at",
        job_time(j->started_at), "updated_at", job_time(j->updated_at), "finished_at",
        job_time(j->finished_at));
}

/* GET /api/v1/jobs/{id}: what a job has done so far (docs/LIBRARY.md). */
void api_handle_job(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    AUTHORIZE();
    char *end = NULL;
    const char *s = req->params[0];
    long long id = s && *s ? strtoll(s, &end, 10) : 0;
    if (end == NULL || *end != '\0' || id <= 0) {
        http_response_error(res, 404, "no such job");
        return;
    }
    st_job j = {0};
    int rc = storage_job_get(app->st, id, &j);
    if (rc == 0)
        api_send_json(res, 200, job_json(&j));
    else
        http_response_error(res, rc == ST_ENOTFOUND ? 404 : 503,
                            rc == ST_ENOTFOUND ? "no such job" : "storage unavailable");
    st_job_cleanup(&j);
}

void api_handle_reauthenticate(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    AUTHORIZE();
    int rc = reauth_require(app, req->params[0], actor, "admin request");
    if (rc == ST_ENOTFOUND)
        http_response_error(res, 404, "no such enrollment");
    else if (rc == ST_ECONFLICT)
        http_response_error(res, 409,
                            "only enrolled, unrevoked user enrollments can re-authenticate");
    else if (rc != 0)
        http_response_error(res, 503, "storage unavailable");
    else
        api_send_json(
            res, 202,
            json_pack("{s:s, s:s}", "id", req->params[0], "auth_state", "reauth_required"));
}

/* {id} is the numeric user id or the user's email. */
void api_handle_user_reauthenticate(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    AUTHORIZE();
    st_user u = {0};
    char *end = NULL;
    long long id = strtoll(req->params[0], &end, 10);
    int rc = *end == '\0' && id > 0 ? storage_user_get(app->st, id, &u)
                                    : storage_user_get_by_email(app->st, req->params[0], &u);
    if (rc != 0) {
        http_response_error(res, rc == ST_ENOTFOUND ? 404 : 503,
                            rc == ST_ENOTFOUND ? "no such user" : "storage unavailable");
    } else {
        int n = reauth_require_user(app, u.id, actor, "admin request (all devices of the user)");
        if (n < 0)
            http_response_error(res, 503, "storage unavailable");
        else
            api_send_json(res, 202, json_pack("{s:s, s:i}", "user", u.email, "enrollments", n));
    }
    st_user_cleanup(&u);
}

void api_handle_unenroll(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    AUTHORIZE();
    st_enrollment e = {0};
    struct mdm_command cmd = {0};
    char err[256];
    static const char body[] =
        "{\"request_type\":\"RemoveProfile\",\"Identifier\":\"" ENROLL_PROFILE_ID "\"}";
    if (load_enrollment(app, req, res, &e) != 0)
        goto out;
    if (mdm_command_from_body(body, sizeof(body) - 1, mdm_platform_of(e.product_name, e.model), 0,
                              &cmd, err, sizeof(err)) != 0) {
        http_response_error(res, 500, err);
        goto out;
    }
    cmd.priority = 100; /* ahead of anything queued: the device is leaving */
    if (mdm_command_enqueue(app, e.id, &cmd) != 0) {
        http_response_error(res, 503, "storage unavailable");
        goto out;
    }
    push_enrollment(app, e.id);
    audit_record(app, actor, "enrollment.unenroll", e.id, "RemoveProfile enqueued");
    api_send_json(res, 202, json_pack("{s:s, s:s}", "id", e.id, "command_uuid", cmd.uuid));
out:
    mdm_command_cleanup(&cmd);
    st_enrollment_cleanup(&e);
}

void api_handle_revoke(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    AUTHORIZE();
    int rc = mdm_revoke(app, req->params[0], actor);
    if (rc == ST_ENOTFOUND)
        http_response_error(res, 404, "no such enrollment");
    else if (rc != 0)
        http_response_error(res, 503, "storage unavailable");
    else
        api_send_json(
            res, 202,
            json_pack("{s:s, s:s}", "id", req->params[0], "auth_state", MDM_STATE_REVOKED));
}

static int add_audit(const st_audit *a, void *ctx)
{
    json_array_append_new(ctx, json_pack("{s:I, s:I, s:s, s:s, s:s, s:s}", "id", (json_int_t)a->id,
                                         "at", (json_int_t)a->at, "actor", a->actor, "action",
                                         a->action, "target", a->target, "detail", a->detail));
    return 0;
}

void api_handle_audit(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    AUTHORIZE();
    const char *before = http_request_query(req, "before");
    json_t *arr = json_array();
    if (storage_audit_list(app->st, before ? atoll(before) : 0, LIST_LIMIT, add_audit, arr)) {
        json_decref(arr);
        http_response_error(res, 503, "storage unavailable");
        return;
    }
    api_send_json(res, 200, json_pack("{s:o}", "events", arr));
}

void api_handle_debug_clock(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    if (!app->debug_clock) {
        http_response_error(res, 404, "not found");
        return;
    }
    AUTHORIZE();
    json_t *j = json_loadb(req->body, req->body_len, 0, NULL);
    json_int_t adv = json_integer_value(json_object_get(j, "advance"));
    json_decref(j);
    if (adv < 0) {
        http_response_error(res, 400, "advance must be >= 0");
        return;
    }
    atomic_fetch_add(&app->clock_skew, (int64_t)adv);
    api_send_json(res, 200, json_pack("{s:I}", "now", (json_int_t)app_now(app)));
}

/* {"after": N, "step": false}: the Nth next storage call fails (tests/integration/test_faults.py).
 */
void api_handle_debug_fault(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    if (!app->debug_faults) {
        http_response_error(res, 404, "not found");
        return;
    }
    AUTHORIZE();
    json_t *j = json_loadb(req->body, req->body_len, 0, NULL);
    json_int_t after = json_integer_value(json_object_get(j, "after"));
    int step = json_is_true(json_object_get(j, "step"));
    json_decref(j);
    if (after < 0 || after > 1000000) {
        http_response_error(res, 400, "after must be 0..1000000");
        return;
    }
    if (storage_inject_fault(app->st, (int)after, step) != 0) {
        http_response_error(res, 501, "this storage backend has no step fault hook");
        return;
    }
    log_warn("event=storage_fault_armed actor=%s after=%lld step=%d", actor, (long long)after,
             step);
    api_send_json(res, 200, json_pack("{s:I, s:b}", "after", after, "step", step));
}

int api_prebody_authorize(void *ctx, http_request *req, http_response *res)
{
    char actor[128];
    return authorize(ctx, req, res, actor, sizeof(actor));
}

/* For the handlers in the other api/ files. */
int api_authorize(struct app *app, http_request *req, http_response *res, char *actor,
                  size_t actor_len)
{
    return authorize(app, req, res, actor, actor_len);
}
