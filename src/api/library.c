/*
 * Admin API for the profile and app library (docs/LIBRARY.md, docs/APPS.md):
 *
 *   POST   /api/v1/profiles[?platform=ios,macos][&sensitive=true][&sign=true]  body: .mobileconfig
 *   GET    /api/v1/profiles            GET|PUT|DELETE /api/v1/profiles/{id}
 *   POST   /api/v1/apps  (JSON)        GET /api/v1/apps      GET|PUT|DELETE /api/v1/apps/{id}
 *   POST   /api/v1/assignments {"profile_id"|"app_id", "user"|"domain"|"enrollment_id"}
 *   GET    /api/v1/assignments         DELETE /api/v1/assignments/{id}
 *   GET    /api/v1/enrollments/{id}/library   installed state, last ManagedApplicationList
 *   POST   /api/v1/enrollments/{id}/reconcile[?refresh=true]
 *
 * Handlers decode, call the library services (mdm/library.h) and storage, and map the results
 * to statuses: 422 names the platform, payload type and key User Enrollment refuses.
 *
 * A change that can reach many enrollments (an assignment to a user or a domain, replacing or
 * deleting a profile or app) is stored together with a reconciliation job, in one transaction,
 * and answered 202 with the job (jobs/worker.h; GET /api/v1/jobs/{id} shows its progress): the
 * request never waits for the devices' commands. One enrollment (an assignment to an
 * enrollment_id, POST .../reconcile) is reconciled within the request, as before.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/api.h"
#include "app.h"
#include "auth/audit.h"
#include "core/log.h"
#include "core/mem.h"
#include "jobs/worker.h"
#include "mdm/library.h"
#include "mdm/platform.h"
#include "plist/pl.h"

#define AUTH()                                                                                     \
    char actor[128];                                                                               \
    if (api_authorize(app, req, res, actor, sizeof(actor)) != 0)                                   \
        return;

static int query_true(http_request *req, const char *name)
{
    const char *v = http_request_query(req, name);
    return v && (strcmp(v, "true") == 0 || strcmp(v, "1") == 0);
}

/* The numeric id of the first path parameter; -1 (and 404) if it is not one. */
static int64_t path_id(http_request *req, http_response *res)
{
    const char *s = req->params[0];
    char *end = NULL;
    long long v = s ? strtoll(s, &end, 10) : 0;
    if (s == NULL || *s == '\0' || *end != '\0' || v <= 0) {
        http_response_error(res, 404, "not found");
        return -1;
    }
    return v;
}

static void storage_error(http_response *res, int rc, const char *what)
{
    if (rc == ST_ENOTFOUND)
        http_response_error(res, 404, what);
    else
        http_response_error(res, 503, "storage unavailable");
}

static void collect_warning(void *ctx, const char *msg)
{
    json_array_append_new(ctx, json_string(msg));
}

/* What a synchronous reconcile (one enrollment) did. */
static json_t *stats_json(const struct lib_reconcile_stats *s)
{
    return json_pack("{s:i, s:i, s:i, s:i}", "enrollments", s->enrollments, "installs", s->installs,
                     "removals", s->removals, "errors", s->errors);
}

/*
 * A change and the reconciliation job it needs, recorded together: the caller opens the
 * transaction with change_begin, stores its change, and change_commit adds the job (scope and
 * value, or ST_JOB_ITEM with the item) and commits. On any failure nothing is stored; the
 * return is the change's own storage code (or ST_ERROR) for the caller to map.
 */
static int change_begin(struct app *app)
{
    return storage_tx_begin(app->st) == ST_OK ? ST_OK : ST_ERROR;
}

static int change_commit(struct app *app, int rc, int scope, const char *value, int item_kind,
                         int64_t item_id, const char *origin, int64_t *job)
{
    if (rc == ST_OK)
        rc = job_submit_reconcile(app, scope, value, item_kind, item_id, origin, job) == ST_OK
                 ? ST_OK
                 : ST_ERROR;
    if (rc != ST_OK) {
        storage_tx_rollback(app->st);
        return rc;
    }
    if (storage_tx_commit(app->st) != ST_OK)
        return ST_ERROR;
    job_worker_kick(app->job_worker); /* after the commit: the worker must see the job */
    return ST_OK;
}

/* Adds "job": {"id", "url"} to a 202 answer and points Location at the job. */
static void answer_job(http_response *res, json_t *j, int64_t job)
{
    char url[64];
    snprintf(url, sizeof(url), "/api/v1/jobs/%lld", (long long)job);
    json_object_set_new(j, "job", json_pack("{s:I, s:s}", "id", (json_int_t)job, "url", url));
    http_response_set_header(res, "Location", url);
    api_send_json(res, 202, j);
}

/* ---- profiles ---- */

static json_t *profile_json(const st_profile *p)
{
    return json_pack("{s:I, s:s, s:o, s:s, s:b, s:b, s:I, s:I}", "id", (json_int_t)p->id,
                     "identifier", p->identifier, "name",
                     p->name ? json_string(p->name) : json_null(), "platforms", p->platforms,
                     "sensitive", p->sensitive, "sign", p->sign, "created_at",
                     (json_int_t)p->created_at, "version", (json_int_t)p->version);
}

static int add_profile(const st_profile *p, void *ctx)
{
    json_array_append_new(ctx, profile_json(p));
    return 0;
}

/*
 * Validates an uploaded profile for ?platform= (POST and PUT): fills p and returns the warnings
 * (a new JSON array), or answers 400/422 and returns NULL.
 */
static json_t *profile_from_request(http_request *req, http_response *res, st_profile *p)
{
    unsigned mask = 0;
    const char *platform = http_request_query(req, "platform");
    if (platform && lib_platforms_parse(platform, &mask) != 0) {
        http_response_error(res, 400, "platform must be ios, macos or visionos (comma-separated)");
        return NULL;
    }
    char err[LIB_MSG_MAX + 128];
    json_t *warnings = json_array();
    if (lib_profile_prepare((const uint8_t *)req->body, req->body_len, mask, collect_warning,
                            warnings, p, err, sizeof(err)) != 0) {
        log_info("event=profile_refused rid=%s reason=\"%s\"", req->request_id, err);
        json_decref(warnings);
        api_send_json(res, 422, json_pack("{s:s}", "error", err));
        return NULL;
    }
    return warnings;
}

static void profile_create(struct app *app, http_request *req, http_response *res,
                           const char *actor)
{
    st_profile p = {0};
    json_t *warnings = profile_from_request(req, res, &p);
    if (warnings == NULL)
        return;
    p.sensitive = query_true(req, "sensitive");
    p.sign = query_true(req, "sign");
    p.created_at = app_now(app);
    int rc = storage_profile_add(app->st, &p);
    if (rc == ST_EEXISTS) {
        json_decref(warnings);
        api_send_json(
            res, 409,
            json_pack("{s:s}", "error",
                      "a profile with this PayloadIdentifier is in the library; replace it with "
                      "PUT /api/v1/profiles/{id}"));
    } else if (rc != 0) {
        json_decref(warnings);
        http_response_error(res, 503, "storage unavailable");
    } else {
        audit_record(app, actor, "profile.add", p.identifier, p.platforms);
        api_send_json(res, 201,
                      json_pack("{s:I, s:s, s:s, s:o}", "id", (json_int_t)p.id, "identifier",
                                p.identifier, "platforms", p.platforms, "warnings", warnings));
    }
    st_profile_cleanup(&p);
}

/* A query flag if present, else the current value. */
static int query_flag_or(http_request *req, const char *name, int current)
{
    return http_request_query(req, name) ? query_true(req, name) : current;
}

/*
 * PUT /api/v1/profiles/{id}: new content for a profile, validated as for POST. It must keep the
 * PayloadIdentifier (devices know the profile by it). Its version goes up, and every enrollment
 * that has an older version gets the new one installed over it.
 */
static void profile_replace(struct app *app, http_request *req, http_response *res,
                            const char *actor, const st_profile *old)
{
    st_profile p = {0};
    json_t *warnings = profile_from_request(req, res, &p);
    if (warnings == NULL)
        return;
    p.id = old->id;
    p.sensitive = query_flag_or(req, "sensitive", old->sensitive);
    p.sign = query_flag_or(req, "sign", old->sign);
    int64_t job = 0;
    char origin[64];
    snprintf(origin, sizeof(origin), "profile.replace %lld", (long long)p.id);
    int rc = strcmp(p.identifier, old->identifier) == 0 ? change_begin(app) : ST_ECONFLICT;
    if (rc == ST_OK)
        rc = change_commit(app, storage_profile_replace(app->st, &p), ST_JOB_ITEM, NULL,
                           ST_ITEM_PROFILE, p.id, origin, &job);
    if (rc == ST_ECONFLICT) {
        json_decref(warnings);
        api_send_json(res, 409,
                      json_pack("{s:s, s:s}", "error",
                                "a replacement must keep the PayloadIdentifier (devices know the "
                                "profile by it); add a different one as a new profile",
                                "identifier", old->identifier));
    } else if (rc != 0) {
        json_decref(warnings);
        storage_error(res, rc, "no such profile");
    } else {
        char detail[64];
        snprintf(detail, sizeof detail, "version=%lld job=%lld", (long long)p.version,
                 (long long)job);
        audit_record(app, actor, "profile.replace", p.identifier, detail);
        answer_job(res,
                   json_pack("{s:I, s:s, s:I, s:s, s:o}", "id", (json_int_t)p.id, "identifier",
                             p.identifier, "version", (json_int_t)p.version, "platforms",
                             p.platforms, "warnings", warnings),
                   job);
    }
    st_profile_cleanup(&p);
}

void api_handle_profiles(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    AUTH();
    if (strcmp(req->method, "POST") == 0) {
        profile_create(app, req, res, actor);
        return;
    }
    json_t *arr = json_array();
    if (storage_profile_list(app->st, add_profile, arr) != 0) {
        json_decref(arr);
        http_response_error(res, 503, "storage unavailable");
        return;
    }
    api_send_json(res, 200, json_pack("{s:o}", "profiles", arr));
}

void api_handle_profile(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    AUTH();
    int64_t id = path_id(req, res);
    if (id < 0)
        return;
    st_profile p = {0};
    int rc = storage_profile_get(app->st, id, &p);
    if (rc != 0) {
        storage_error(res, rc, "no such profile");
        return;
    }
    if (strcmp(req->method, "PUT") == 0) {
        profile_replace(app, req, res, actor, &p);
    } else if (strcmp(req->method, "DELETE") == 0) {
        int64_t job = 0;
        char origin[64];
        snprintf(origin, sizeof(origin), "profile.delete %lld", (long long)id);
        rc = change_begin(app);
        if (rc == ST_OK)
            rc = change_commit(app, storage_profile_delete(app->st, id), ST_JOB_ITEM, NULL,
                               ST_ITEM_PROFILE, id, origin, &job);
        if (rc != 0) {
            storage_error(res, rc, "no such profile");
        } else {
            audit_record(app, actor, "profile.delete", p.identifier, origin);
            /* The removals go out from the item's installed state, which outlives it. */
            answer_job(res, json_pack("{s:I}", "id", (json_int_t)id), job);
        }
    } else {
        json_t *j = profile_json(&p);
        json_object_set_new(j, "profile", json_stringn(p.body, p.body_len));
        api_send_json(res, 200, j);
    }
    st_profile_cleanup(&p);
}

/* ---- apps ---- */

static json_t *app_json(const st_app *a)
{
    json_t *spec = json_loads(a->spec ? a->spec : "{}", 0, NULL);
    return json_pack("{s:I, s:o, s:o, s:o, s:b, s:o, s:I, s:I}", "id", (json_int_t)a->id,
                     "bundle_id", a->identifier ? json_string(a->identifier) : json_null(),
                     "itunes_store_id",
                     a->itunes_store_id ? json_integer(a->itunes_store_id) : json_null(),
                     "manifest_url", a->manifest_url ? json_string(a->manifest_url) : json_null(),
                     "sensitive", a->sensitive, "spec", spec ? spec : json_object(), "created_at",
                     (json_int_t)a->created_at, "version", (json_int_t)a->version);
}

static int add_app(const st_app *a, void *ctx)
{
    json_array_append_new(ctx, app_json(a));
    return 0;
}

/* Validates an app definition (POST and PUT): fills a and returns the warnings (a new JSON
 * array), or answers 422 and returns NULL. */
static json_t *app_from_request(http_request *req, http_response *res, st_app *a)
{
    char err[LIB_MSG_MAX + 128];
    json_t *warnings = json_array();
    if (lib_app_prepare(req->body, req->body_len, collect_warning, warnings, a, err, sizeof(err)) !=
        0) {
        json_decref(warnings);
        api_send_json(res, 422, json_pack("{s:s}", "error", err));
        return NULL;
    }
    return warnings;
}

void api_handle_apps(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    AUTH();
    if (strcmp(req->method, "POST") == 0) {
        st_app a = {0};
        json_t *warnings = app_from_request(req, res, &a);
        if (warnings == NULL)
            return;
        a.created_at = app_now(app);
        if (storage_app_add(app->st, &a) != 0) {
            json_decref(warnings);
            http_response_error(res, 503, "storage unavailable");
        } else {
            audit_record(app, actor, "app.add", a.identifier ? a.identifier : a.spec, NULL);
            json_t *j = app_json(&a);
            json_object_set_new(j, "warnings", warnings);
            api_send_json(res, 201, j);
        }
        st_app_cleanup(&a);
        return;
    }
    json_t *arr = json_array();
    if (storage_app_list(app->st, add_app, arr) != 0) {
        json_decref(arr);
        http_response_error(res, 503, "storage unavailable");
        return;
    }
    api_send_json(res, 200, json_pack("{s:o}", "apps", arr));
}

/*
 * PUT /api/v1/apps/{id}: a new definition (configuration, attributes, options, manifest) of the
 * same app, validated as for POST. The bundle id and App Store id must stay (409 otherwise).
 * Its version goes up and every enrollment with an older version gets the install command again
 * (which updates the app's managed configuration in place).
 */
static void app_replace(struct app *app, http_request *req, http_response *res, const char *actor,
                        const st_app *old)
{
    st_app a = {0};
    json_t *warnings = app_from_request(req, res, &a);
    if (warnings == NULL)
        return;
    a.id = old->id;
    int64_t job = 0;
    char origin[64];
    snprintf(origin, sizeof(origin), "app.replace %lld", (long long)a.id);
    int rc = change_begin(app);
    if (rc == ST_OK)
        rc = change_commit(app, storage_app_replace(app->st, &a), ST_JOB_ITEM, NULL, ST_ITEM_APP,
                           a.id, origin, &job);
    if (rc == ST_ECONFLICT) {
        json_decref(warnings);
        api_send_json(
            res, 409,
            json_pack("{s:s, s:o, s:o}", "error",
                      "a replacement must keep the bundle_id and itunes_store_id (it is "
                      "the same app); add a different app as a new one",
                      "bundle_id", old->identifier ? json_string(old->identifier) : json_null(),
                      "itunes_store_id",
                      old->itunes_store_id ? json_integer(old->itunes_store_id) : json_null()));
    } else if (rc != 0) {
        json_decref(warnings);
        storage_error(res, rc, "no such app");
    } else {
        char detail[64];
        snprintf(detail, sizeof detail, "version=%lld job=%lld", (long long)a.version,
                 (long long)job);
        audit_record(app, actor, "app.replace", a.identifier ? a.identifier : "-", detail);
        json_t *j = app_json(&a);
        json_object_set_new(j, "warnings", warnings);
        answer_job(res, j, job);
    }
    st_app_cleanup(&a);
}

void api_handle_app(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    AUTH();
    int64_t id = path_id(req, res);
    if (id < 0)
        return;
    st_app a = {0};
    int rc = storage_app_get(app->st, id, &a);
    if (rc != 0) {
        storage_error(res, rc, "no such app");
        return;
    }
    if (strcmp(req->method, "PUT") == 0) {
        app_replace(app, req, res, actor, &a);
    } else if (strcmp(req->method, "DELETE") == 0) {
        int64_t job = 0;
        char origin[64];
        snprintf(origin, sizeof(origin), "app.delete %lld", (long long)id);
        rc = change_begin(app);
        if (rc == ST_OK)
            rc = change_commit(app, storage_app_delete(app->st, id), ST_JOB_ITEM, NULL, ST_ITEM_APP,
                               id, origin, &job);
        if (rc != 0) {
            storage_error(res, rc, "no such app");
        } else {
            audit_record(app, actor, "app.delete", a.identifier ? a.identifier : "-", origin);
            answer_job(res, json_pack("{s:I}", "id", (json_int_t)id), job);
        }
    } else {
        api_send_json(res, 200, app_json(&a));
    }
    st_app_cleanup(&a);
}

/* ---- assignments ---- */

static const char *target_name(int t)
{
    return t == ST_TARGET_USER ? "user" : t == ST_TARGET_DOMAIN ? "domain" : "enrollment_id";
}

static json_t *assignment_json(const st_assignment *a)
{
    return json_pack("{s:I, s:I, s:s, s:I}", "id", (json_int_t)a->id,
                     a->item_kind == ST_ITEM_PROFILE ? "profile_id" : "app_id",
                     (json_int_t)a->item_id, target_name(a->target_type), a->target, "created_at",
                     (json_int_t)a->created_at);
}

static int add_assignment(const st_assignment *a, void *ctx)
{
    json_array_append_new(ctx, assignment_json(a));
    return 0;
}

static char *lowercase(const char *s)
{
    char *out = xstrdup(s);
    for (char *p = out; *p; p++)
        *p = (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
    return out;
}

/* Decodes {"profile_id"|"app_id": N, "user"|"domain"|"enrollment_id": S}; 0 or -1 (400). */
static int assignment_decode(http_request *req, http_response *res, st_assignment *a)
{
    json_t *j = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, NULL);
    json_t *pid = json_object_get(j, "profile_id"), *aid = json_object_get(j, "app_id");
    const char *names[] = {"user", "domain", "enrollment_id"};
    int ntargets = 0, rc = -1;
    if (!json_is_object(j) || (pid != NULL) == (aid != NULL) || !json_is_integer(pid ? pid : aid)) {
        http_response_error(res, 400,
                            "exactly one of profile_id or app_id (an integer) is "
                            "required");
        goto out;
    }
    a->item_kind = pid ? ST_ITEM_PROFILE : ST_ITEM_APP;
    a->item_id = json_integer_value(pid ? pid : aid);
    for (int i = 0; i < 3; i++) {
        json_t *t = json_object_get(j, names[i]);
        if (t == NULL)
            continue;
        ntargets++;
        const char *s = json_string_value(t);
        if (s == NULL || s[0] == '\0' || strlen(s) > 255) {
            ntargets = 99;
            break;
        }
        a->target_type = i + 1;
        a->target = i == 2 ? xstrdup(s) : lowercase(s);
    }
    if (ntargets != 1) {
        http_response_error(res, 400,
                            "exactly one of user, domain or enrollment_id (a string) "
                            "is required");
        goto out;
    }
    if (a->target_type == ST_TARGET_USER && strchr(a->target, '@') == NULL) {
        http_response_error(res, 400, "user must be an email address");
        goto out;
    }
    rc = 0;
out:
    json_decref(j);
    return rc;
}

/*
 * Adds (or, with del, deletes) an assignment. One to an enrollment is stored alone: the
 * handler reconciles that enrollment within the request. One to a user or a domain is stored
 * with its reconciliation job (*job). Returns the storage code.
 */
static int assignment_change(struct app *app, st_assignment *a, int del, int64_t *job)
{
    if (a->target_type == ST_TARGET_ENROLLMENT)
        return del ? storage_assignment_delete(app->st, a->id) : storage_assignment_add(app->st, a);
    int rc = change_begin(app);
    if (rc != ST_OK)
        return rc;
    rc = del ? storage_assignment_delete(app->st, a->id) : storage_assignment_add(app->st, a);
    char origin[64];
    snprintf(origin, sizeof(origin), "assignment.%s %lld", del ? "delete" : "add",
             (long long)a->id);
    /* ST_JOB_USER and ST_JOB_DOMAIN are ST_TARGET_USER and ST_TARGET_DOMAIN. */
    return change_commit(app, rc, a->target_type, a->target, 0, 0, origin, job);
}

/* 202 with the job for a user or domain; for one enrollment, reconciled now (ok_status). */
static void assignment_answer(struct app *app, http_request *req, http_response *res,
                              const st_assignment *a, int64_t job, int ok_status)
{
    json_t *j = assignment_json(a);
    if (a->target_type != ST_TARGET_ENROLLMENT) {
        answer_job(res, j, job);
        return;
    }
    struct lib_reconcile_stats s = {0};
    if (lib_reconcile(app, a->target, &s) != 0)
        log_error("event=library_reconcile_failed rid=%s assignment=%lld", req->request_id,
                  (long long)a->id);
    json_object_set_new(j, "reconciled", stats_json(&s));
    api_send_json(res, ok_status, j);
}

void api_handle_assignments(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    AUTH();
    if (strcmp(req->method, "GET") == 0) {
        json_t *arr = json_array();
        if (storage_assignment_list(app->st, add_assignment, arr) != 0) {
            json_decref(arr);
            http_response_error(res, 503, "storage unavailable");
            return;
        }
        api_send_json(res, 200, json_pack("{s:o}", "assignments", arr));
        return;
    }
    st_assignment a = {0};
    if (assignment_decode(req, res, &a) != 0)
        goto out;
    a.created_at = app_now(app);
    int64_t job = 0;
    int rc = assignment_change(app, &a, 0, &job);
    if (rc == ST_ENOTFOUND) {
        http_response_error(res, 404,
                            a.item_kind == ST_ITEM_PROFILE ? "no such profile" : "no such app");
        goto out;
    }
    if (rc == ST_EEXISTS) {
        http_response_error(res, 409, "this item is already assigned to this target");
        goto out;
    }
    if (rc != 0) {
        http_response_error(res, 503, "storage unavailable");
        goto out;
    }
    audit_record(app, actor, "assignment.add", a.target, NULL);
    assignment_answer(app, req, res, &a, job, 201);
out:
    st_assignment_cleanup(&a);
}

void api_handle_assignment(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    AUTH();
    int64_t id = path_id(req, res);
    if (id < 0)
        return;
    st_assignment a = {0};
    int64_t job = 0;
    int del = strcmp(req->method, "DELETE") == 0;
    int rc = storage_assignment_get(app->st, id, &a);
    if (rc == 0 && del)
        rc = assignment_change(app, &a, 1, &job);
    if (rc != 0) {
        storage_error(res, rc, "no such assignment");
    } else if (del) {
        audit_record(app, actor, "assignment.delete", a.target, NULL);
        assignment_answer(app, req, res, &a, job, 200);
    } else {
        api_send_json(res, 200, assignment_json(&a));
    }
    st_assignment_cleanup(&a);
}

/* ---- per-enrollment state ---- */

static const char *state_name(int s)
{
    switch (s) {
    case ST_ITEM_INSTALLING:
        return "installing";
    case ST_ITEM_INSTALLED:
        return "installed";
    case ST_ITEM_REMOVING:
        return "removing";
    case ST_ITEM_FAILED:
        return "failed";
    default:
        return "unknown";
    }
}

static int add_state(const st_item_state *s, void *ctx)
{
    json_array_append_new(
        ctx, json_pack("{s:s, s:I, s:o, s:s, s:o, s:b, s:o, s:I, s:I}", "kind",
                       s->item_kind == ST_ITEM_PROFILE ? "profile" : "app", "item_id",
                       (json_int_t)s->item_id, "identifier",
                       s->identifier ? json_string(s->identifier) : json_null(), "state",
                       state_name(s->state), "command_uuid",
                       s->command_uuid ? json_string(s->command_uuid) : json_null(), "sensitive",
                       s->sensitive, "detail", s->detail ? json_string(s->detail) : json_null(),
                       "updated_at", (json_int_t)s->updated_at, "version", (json_int_t)s->version));
    return 0;
}

/* Finds the newest acknowledged ManagedApplicationList / ProfileList result. */
struct last_lists {
    json_t *apps, *profiles;
};

static json_t *result_key_json(const st_command *c, const char *key)
{
    char err[64];
    plist_t p = pl_parse(c->result, c->result_len, err, sizeof(err));
    json_t *out = NULL;
    plist_t v = p ? plist_dict_get_item(p, key) : NULL;
    if (v) {
        char *s = pl_to_json(v);
        out = json_loads(s, JSON_DECODE_ANY, NULL);
        free(s);
    }
    plist_free(p);
    return out;
}

static int find_lists(const st_command *c, void *ctx)
{
    struct last_lists *l = ctx;
    if (c->status != ST_CMD_ACKNOWLEDGED || c->result == NULL)
        return 0;
    if (l->apps == NULL && strcmp(c->request_type, "ManagedApplicationList") == 0)
        l->apps = result_key_json(c, "ManagedApplicationList");
    else if (l->profiles == NULL && strcmp(c->request_type, "ProfileList") == 0)
        l->profiles = result_key_json(c, "ProfileList");
    return l->apps && l->profiles ? 1 : 0;
}

void api_handle_enrollment_library(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    AUTH();
    st_enrollment e = {0};
    int rc = storage_enrollment_get(app->st, req->params[0], &e);
    if (rc != 0) {
        storage_error(res, rc, "no such enrollment");
        return;
    }
    json_t *items = json_array();
    struct last_lists l = {0};
    if (storage_item_state_list(app->st, e.id, add_state, items) != 0 ||
        storage_command_list(app->st, e.id, 500, find_lists, &l) < 0) {
        json_decref(items);
        json_decref(l.apps);
        json_decref(l.profiles);
        http_response_error(res, 503, "storage unavailable");
    } else {
        api_send_json(res, 200,
                      json_pack("{s:s, s:o, s:o, s:o}", "enrollment_id", e.id, "items", items,
                                "managed_application_list", l.apps ? l.apps : json_null(),
                                "profile_list", l.profiles ? l.profiles : json_null()));
    }
    st_enrollment_cleanup(&e);
}

/* Enqueues ProfileList and ManagedApplicationList so the next reconcile sees the device. */
static int enqueue_refresh(struct app *app, const st_enrollment *e)
{
    static const char *const types[] = {"ProfileList", "ManagedApplicationList"};
    enum ue_os os = mdm_platform_of(e->product_name, e->model);
    int ue = e->type == ST_ENR_USER || e->type == ST_ENR_USER_CHANNEL;
    for (size_t i = 0; i < 2; i++) {
        struct mdm_command mc;
        char err[LIB_MSG_MAX];
        plist_t cmd = plist_new_dict();
        pl_set_string(cmd, "RequestType", types[i]);
        int rc = lib_command_wrap(cmd, os, ue, 0, &mc, err, sizeof(err));
        plist_free(cmd);
        if (rc != 0)
            continue;
        st_command c = {.uuid = mc.uuid,
                        .enrollment_id = e->id,
                        .request_type = mc.request_type,
                        .body = mc.xml,
                        .body_len = mc.xml_len,
                        .created_at = app_now(app)};
        rc = storage_queue_enqueue(app->st, &c);
        mdm_command_cleanup(&mc);
        if (rc != 0)
            return -1;
    }
    storage_push_enqueue(app->st, e->id, app_now(app));
    return 0;
}

void api_handle_enrollment_reconcile(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    AUTH();
    st_enrollment e = {0};
    int rc = storage_enrollment_get(app->st, req->params[0], &e);
    if (rc != 0) {
        storage_error(res, rc, "no such enrollment");
        return;
    }
    if (e.unenrolled_at) {
        http_response_error(res, 409, "the enrollment has been unenrolled");
        goto out;
    }
    struct lib_reconcile_stats s = {0};
    if (lib_reconcile(app, e.id, &s) != 0 ||
        (query_true(req, "refresh") && enqueue_refresh(app, &e) != 0)) {
        http_response_error(res, 503, "storage unavailable");
        goto out;
    }
    api_send_json(res, 200,
                  json_pack("{s:s, s:o}", "enrollment_id", e.id, "reconciled", stats_json(&s)));
out:
    st_enrollment_cleanup(&e);
}
