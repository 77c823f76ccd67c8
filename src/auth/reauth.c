/* Re-authentication triggers, the failure policy and its enforcement. */
#include "auth/reauth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/audit.h"
#include "auth/secret.h"
#include "core/log.h"
#include "core/mem.h"
#include "crypto/cms.h"
#include "enroll/enroll.h"
#include "mdm/command.h"
#include "mdm/platform.h"
#include "plist/pl.h"
#include "push/pusher.h"

static int is_user_enrollment(int type)
{
    return type == ST_ENR_USER || type == ST_ENR_USER_CHANNEL;
}

int reauth_require(struct app *app, const char *enrollment_id, const char *actor, const char *why)
{
    st_enrollment e = {0};
    int rc = storage_enrollment_get(app->st, enrollment_id, &e);
    if (rc == 0 && (!is_user_enrollment(e.type) || e.unenrolled_at ||
                    (e.auth_state && strcmp(e.auth_state, "revoked") == 0)))
        rc = ST_ECONFLICT; /* a revoked device stays cut off */
    int64_t now = app_now(app);
    if (rc == 0 && (storage_session_revoke_enrollment(app->st, e.id, now) != 0 ||
                    storage_enrollment_set_auth_state(app->st, e.id, "reauth_required", now)))
        rc = ST_ERROR;
    if (rc == 0)
        audit_record(app, actor, "reauth.require", e.id, why);
    st_enrollment_cleanup(&e);
    return rc;
}

struct user_walk {
    struct app *app;
    const char *actor, *why;
    int count;
};

static int require_one(const st_enrollment *e, void *ctx)
{
    struct user_walk *w = ctx;
    if (is_user_enrollment(e->type) && reauth_require(w->app, e->id, w->actor, w->why) == 0)
        w->count++;
    return 0;
}

int reauth_require_user(struct app *app, int64_t user_id, const char *actor, const char *why)
{
    struct user_walk w = {app, actor, why, 0};
    st_enrollment_filter f = {.user_id = user_id};
    return storage_enrollment_list(app->st, &f, require_one, &w) == 0 ? w.count : -1;
}

/* ---- sensitive content ---- */

static plist_t command_dict(const st_command *c, plist_t *root)
{
    char err[64];
    *root = pl_parse_dict(c->body, c->body_len, err, sizeof(err));
    return *root ? pl_get_typed(*root, "Command", PLIST_DICT) : NULL;
}

/* The PayloadIdentifier of an InstallProfile's Payload (plain or CMS-signed profile). */
static char *profile_identifier(plist_t cmd)
{
    size_t len = 0;
    const uint8_t *data = pl_get_data(cmd, "Payload", &len);
    uint8_t *content = NULL;
    size_t content_len = 0;
    char err[64], *id = NULL;
    if (data && len && data[0] == 0x30 &&
        cms_attached_content(data, len, &content, &content_len) == 0) {
        data = content;
        len = content_len;
    }
    plist_t p = data ? pl_parse_dict((const char *)data, len, err, sizeof(err)) : NULL;
    const char *s = pl_get_string(p, "PayloadIdentifier");
    if (s)
        id = xstrdup(s);
    if (p)
        plist_free(p);
    free(content);
    return id;
}

/* The bundle identifier an InstallApplication installed: the command's or the report's. */
static char *app_identifier(plist_t cmd, const st_command *c)
{
    const char *s = pl_get_string(cmd, "Identifier");
    if (s)
        return xstrdup(s);
    char err[64];
    plist_t r = c->result ? pl_parse_dict(c->result, c->result_len, err, sizeof(err)) : NULL;
    char *id = pl_get_string(r, "Identifier") ? xstrdup(pl_get_string(r, "Identifier")) : NULL;
    if (r)
        plist_free(r);
    return id;
}

struct sensitive_walk {
    struct app *app;
    const st_enrollment *e;
    int reinstall; /* 0: remove; 1: re-install */
    char **seen;   /* identifiers already handled (newest command wins) */
    int nseen, cap;
    int count;
};

static int seen_before(struct sensitive_walk *w, const char *id)
{
    for (int i = 0; i < w->nseen; i++) {
        if (strcmp(w->seen[i], id) == 0)
            return 1;
    }
    if (w->nseen == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 16;
        w->seen = xrealloc(w->seen, (size_t)w->cap * sizeof(char *));
    }
    w->seen[w->nseen++] = xstrdup(id);
    return 0;
}

static int enqueue_json(struct app *app, const st_enrollment *e, const char *json, int sensitive)
{
    struct mdm_command cmd;
    char err[256];
    int rc = mdm_command_from_body(json, strlen(json), mdm_platform_of(e->product_name, e->model),
                                   0, &cmd, err, sizeof(err));
    if (rc != 0) {
        log_error("event=reauth_enqueue_failed enrollment=%s err=\"%s\"", e->id, err);
        return -1;
    }
    cmd.priority = REAUTH_ENFORCEMENT_PRIORITY;
    cmd.sensitive = sensitive;
    rc = mdm_command_enqueue(app, e->id, &cmd);
    mdm_command_cleanup(&cmd);
    return rc;
}

/* Re-enqueues an earlier install with a fresh CommandUUID. */
static int requeue(struct app *app, const st_enrollment *e, const st_command *old)
{
    char err[64], uuid[37];
    plist_t root = pl_parse_dict(old->body, old->body_len, err, sizeof(err));
    if (root == NULL)
        return -1;
    crypto_uuid(uuid);
    pl_set_string(root, "CommandUUID", uuid);
    size_t len = 0;
    char *xml = pl_to_xml(root, &len);
    plist_free(root);
    st_command c = {.uuid = uuid,
                    .enrollment_id = e->id,
                    .request_type = old->request_type,
                    .body = xml,
                    .body_len = len,
                    .priority = old->priority,
                    .sensitive = 1,
                    .created_at = app_now(app)};
    int rc = storage_queue_enqueue(app->st, &c);
    free(xml);
    return rc;
}

static void handle_sensitive(struct sensitive_walk *w, const st_command *c, plist_t cmd,
                             int is_profile)
{
    char *id = is_profile ? profile_identifier(cmd) : app_identifier(cmd, c);
    if (id == NULL || seen_before(w, id)) {
        free(id);
        return;
    }
    int rc;
    if (w->reinstall) {
        rc = requeue(w->app, w->e, c);
    } else {
        char *json =
            is_profile
                ? xasprintf("{\"request_type\":\"RemoveProfile\",\"Identifier\":\"%s\"}", id)
                : xasprintf("{\"request_type\":\"RemoveApplication\",\"Identifier\":\"%s\"}", id);
        rc = enqueue_json(w->app, w->e, json, 0);
        free(json);
    }
    if (rc == 0)
        w->count++;
    free(id);
}

static int visit_command(const st_command *c, void *ctx)
{
    struct sensitive_walk *w = ctx;
    int is_profile = strcmp(c->request_type, "InstallProfile") == 0;
    int is_app = strcmp(c->request_type, "InstallApplication") == 0 ||
                 strcmp(c->request_type, "InstallEnterpriseApplication") == 0;
    if (!c->sensitive || !(is_profile || is_app))
        return 0;
    if (c->status == ST_CMD_QUEUED || c->status == ST_CMD_NOTNOW) {
        if (!w->reinstall) /* not delivered yet: it must not be now */
            storage_queue_report(w->app->st, c->enrollment_id, c->uuid, ST_CMD_ERROR,
                                 "cancelled: the user failed to re-authenticate", 46,
                                 app_now(w->app));
        return 0;
    }
    if (c->status != ST_CMD_ACKNOWLEDGED)
        return 0;
    plist_t root = NULL, cmd = command_dict(c, &root);
    if (cmd)
        handle_sensitive(w, c, cmd, is_profile);
    if (root)
        plist_free(root);
    return 0;
}

/* Removes (or re-installs) everything installed by sensitive commands; returns how many. */
static int walk_sensitive(struct app *app, const st_enrollment *e, int reinstall)
{
    struct sensitive_walk w = {.app = app, .e = e, .reinstall = reinstall};
    storage_command_list(app->st, e->id, 0, visit_command, &w);
    for (int i = 0; i < w.nseen; i++)
        free(w.seen[i]);
    free(w.seen);
    return w.count;
}

/* ---- policy ---- */

static void apply_failure_action(struct app *app, const st_enrollment *e, const char *reason)
{
    const char *action = config_get(app->cfg, "reauth_failure_action");
    char detail[160];
    int n = 0;
    if (strcmp(action, "remove-sensitive") == 0) {
        n = walk_sensitive(app, e, 0);
    } else if (strcmp(action, "unenroll") == 0) {
        n = enqueue_json(app, e,
                         "{\"request_type\":\"RemoveProfile\",\"Identifier\":\"" ENROLL_PROFILE_ID
                         "\"}",
                         0) == 0;
    }
    snprintf(detail, sizeof(detail), "reason=%s action=%s commands=%d", reason, action, n);
    audit_record(app, "system", "reauth.failed", e->id, detail);
    if (n > 0)
        push_enrollment(app, e->id); /* wake the device so the removals are fetched */
}

int reauth_enforcing(const struct app *app, const st_enrollment *e)
{
    return e->auth_state && strcmp(e->auth_state, "reauth_failed") == 0 &&
           strcmp(config_get(app->cfg, "reauth_failure_action"), "none") != 0;
}

void reauth_completed(struct app *app, const st_enrollment *e, const char *method)
{
    int was_failed = e->auth_state && strcmp(e->auth_state, "reauth_failed") == 0;
    int n = 0;
    if (was_failed &&
        strcmp(config_get(app->cfg, "reauth_failure_action"), "remove-sensitive") == 0)
        n = walk_sensitive(app, e, 1);
    if (n > 0)
        push_enrollment(app, e->id);
    char detail[96];
    snprintf(detail, sizeof(detail), "method=%s reinstalled=%d", method ? method : "-", n);
    audit_record(app, "device", "reauth.complete", e->id, detail);
}

/* Tokens older than reauth_interval: demand re-authentication. */
static void check_interval(struct app *app, const st_enrollment *e, int64_t now)
{
    int64_t interval = config_get_int(app->cfg, "reauth_interval");
    if (interval <= 0 || e->last_auth_at <= 0 || now < e->last_auth_at + interval)
        return;
    /* Tokens first: a bound, valid token of an enrollment that is not active means "the
     * re-authentication was done" to mdm/request.c, so the demand must never be stored while
     * the old tokens still hold (a failed revoke is retried by the next sweep). */
    if (storage_session_revoke_enrollment(app->st, e->id, now) != 0 ||
        storage_enrollment_transition_auth_state(app->st, e->id, "active", "reauth_required",
                                                 e->last_auth_at + interval) != 0)
        return; /* storage failed, another instance did it, or the state changed */
    audit_record(app, "system", "reauth.require", e->id, "reason=interval");
}

/* Grace expired or too many failed sign-ins since the demand: apply the failure action. */
static void check_failure(struct app *app, const st_enrollment *e, int64_t now)
{
    const char *reason = NULL;
    if (now >= e->auth_state_since + config_get_int(app->cfg, "reauth_grace"))
        reason = "grace_expired";
    /* Only failures of this demand's own sign-ins (reauth.fail on the enrollment, see
     * reauth_note_failure), never signin.fail for the identifier: anyone can produce those. */
    int64_t failures = 0;
    if (reason == NULL &&
        storage_audit_count(app->st, "reauth.fail", e->id, e->auth_state_since, &failures) == 0 &&
        failures >= config_get_int(app->cfg, "reauth_max_failures"))
        reason = "max_failures";
    if (reason && storage_enrollment_transition_auth_state(app->st, e->id, "reauth_required",
                                                           "reauth_failed", now) == 0)
        apply_failure_action(app, e, reason); /* only the instance that won the transition */
}

static int sweep_one(const st_enrollment *e, void *ctx)
{
    struct app *app = ctx;
    if (!is_user_enrollment(e->type) || e->unenrolled_at)
        return 0;
    int64_t now = app_now(app);
    if (e->auth_state && strcmp(e->auth_state, "active") == 0)
        check_interval(app, e, now);
    else if (e->auth_state && strcmp(e->auth_state, "reauth_required") == 0)
        check_failure(app, e, now);
    return 0;
}

void reauth_sweep(struct app *app)
{
    st_enrollment_filter f = {0};
    if (storage_enrollment_list(app->st, &f, sweep_one, app) != 0)
        log_warn("event=reauth_sweep_failed");
}

/* ---- tickets ---- */

#define REAUTH_KEY_NAME "reauth_ticket_key"

static int hex_value(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

int reauth_key_load(struct app *app, char *err, size_t err_len)
{
    unsigned char fresh[sizeof(app->reauth_key)];
    char candidate[2 * sizeof(fresh) + 1], *stored = NULL;
    secret_random_bytes(fresh, sizeof(fresh));
    for (size_t i = 0; i < sizeof(fresh); i++)
        snprintf(candidate + 2 * i, 3, "%02x", fresh[i]);
    int rc = storage_secret_get_or_add(app->st, REAUTH_KEY_NAME, candidate, app_now(app), &stored);
    secret_wipe(fresh, sizeof(fresh));
    secret_wipe(candidate, sizeof(candidate));
    if (rc != ST_OK || stored == NULL || strlen(stored) != 2 * sizeof(app->reauth_key)) {
        snprintf(err, err_len, "cannot load the re-authentication ticket key from the store");
        if (stored)
            secret_wipe(stored, strlen(stored));
        free(stored);
        return -1;
    }
    int ok = 1;
    for (size_t i = 0; i < sizeof(app->reauth_key); i++) {
        int hi = hex_value(stored[2 * i]), lo = hex_value(stored[2 * i + 1]);
        ok &= hi >= 0 && lo >= 0;
        app->reauth_key[i] = (unsigned char)((hi & 15) << 4 | (lo & 15));
    }
    secret_wipe(stored, strlen(stored));
    free(stored);
    app->reauth_key_set = ok;
    if (!ok)
        snprintf(err, err_len, "the stored re-authentication ticket key is not hex");
    return ok ? 0 : -1;
}

void reauth_ticket(const struct app *app, const st_enrollment *e, char *out)
{
    out[0] = '\0';
    if (!app->reauth_key_set || e->id == NULL)
        return;
    /* Length-prefixed, so no two (id, since) pairs give the same message. */
    char *msg = xasprintf("orchard-reauth-v1:%zu:%s:%lld", strlen(e->id), e->id,
                          (long long)e->auth_state_since);
    secret_hmac_b64url(app->reauth_key, sizeof(app->reauth_key), msg, strlen(msg), out);
    free(msg);
}

struct ticket_walk {
    const struct app *app;
    const char *ticket;
    char *match; /* id of the enrollment whose pending demand the ticket belongs to */
};

static int ticket_visit(const st_enrollment *e, void *ctx)
{
    struct ticket_walk *w = ctx;
    if (!is_user_enrollment(e->type) || e->unenrolled_at || e->auth_state == NULL ||
        strcmp(e->auth_state, "reauth_required") != 0)
        return 0;
    char want[SECRET_TOKEN_LEN + 1];
    reauth_ticket(w->app, e, want);
    if (want[0] && secret_equal(want, w->ticket)) {
        w->match = xstrdup(e->id);
        return 1; /* stop: found */
    }
    return 0;
}

char *reauth_ticket_owner(struct app *app, const char *identifier, const char *ticket)
{
    if (identifier == NULL || ticket == NULL || !app->reauth_key_set ||
        !secret_token_well_formed(ticket))
        return NULL;
    st_user u = {0};
    if (storage_user_get_by_email(app->st, identifier, &u) != ST_OK) {
        st_user_cleanup(&u);
        return NULL;
    }
    struct ticket_walk w = {app, ticket, NULL};
    st_enrollment_filter f = {.user_id = u.id};
    storage_enrollment_list(app->st, &f, ticket_visit, &w);
    st_user_cleanup(&u);
    return w.match;
}

void reauth_record_failure(struct app *app, const char *enrollment_id, const char *detail)
{
    audit_record(app, "anonymous", "reauth.fail", enrollment_id, detail);
}

int reauth_note_failure(struct app *app, const char *identifier, const char *ticket,
                        const char *detail)
{
    char *owner = reauth_ticket_owner(app, identifier, ticket);
    if (owner)
        reauth_record_failure(app, owner, detail);
    free(owner);
    return owner != NULL;
}
