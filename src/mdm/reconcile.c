/*
 * Desired-state reconciliation for the profile and app library (docs/LIBRARY.md).
 *
 * Desired state of an enrollment = the union of the items assigned to its user (email), the
 * user's email domain and the enrollment itself. Current state = the item_state rows: what
 * Orchard installed (acknowledged Install*), what it is installing or removing (a command in
 * the queue), and what the device listed (ProfileList / ManagedApplicationList). Reconciling
 * enqueues only the difference, so running it twice enqueues nothing the second time, and a
 * busy fleet never accumulates duplicate commands.
 *
 * Races: two reconcilers (an assignment change and a device report, or two instances) may
 * look at one enrollment at once. Each claims an item with a compare-and-set on the row's
 * command_uuid (storage_item_state_put) before enqueueing, so only one enqueues. A claim whose
 * enqueue then fails points at a command that does not exist; the next run sees that and
 * tries again.
 *
 * Never touched: the enrollment profile (ENROLL_PROFILE_ID; the library refuses it) and
 * anything Orchard did not install (a profile the device lists but no state row names).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/log.h"
#include "core/mem.h"
#include "crypto/cms.h"
#include "crypto/pki.h"
#include "enroll/enroll.h"
#include "mdm/library.h"
#include "mdm/platform.h"
#include "plist/pl.h"

/* ---- commands ---- */

/*
 * The CommandUUID of a library command: RFC 9562 version 8 ("custom"), which the report hook
 * recognises without a lookup (lib_command_uuid_is_ours), laid out like a version 7: the first
 * 48 bits are the Unix time in milliseconds, the rest random. Time-ordered ids land at the end
 * of the uuid indexes (commands, item_state), so a reconciliation job's batch of thousands of
 * commands writes a few index pages instead of one random page per command.
 *
 * base: 16 random bytes; counter: added to the last 8 of them, so the ids one batch makes from
 * one base differ (a batch draws its base once: OpenSSL's generator costs more per call than
 * the rest of an id).
 */
static void library_uuid_from(const uint8_t base[16], uint64_t counter, char out[37])
{
    static const char hex[] = "0123456789ABCDEF";
    uint8_t b[16];
    memcpy(b, base, sizeof(b));
    uint64_t low = 0;
    for (int i = 8; i < 16; i++)
        low = low << 8 | b[i];
    low += counter;
    for (int i = 15; i >= 8; i--, low >>= 8)
        b[i] = (uint8_t)low;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    for (int i = 5; i >= 0; i--, ms >>= 8)
        b[i] = (uint8_t)ms;
    b[6] = (uint8_t)(0x80 | (b[6] & 0x0f)); /* version 8 */
    b[8] = (uint8_t)(0x80 | (b[8] & 0x3f)); /* RFC 9562 variant */
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *o++ = '-';
        *o++ = hex[b[i] >> 4];
        *o++ = hex[b[i] & 15];
    }
    *o = '\0';
}

static void library_uuid(char out[37])
{
    uint8_t base[16];
    crypto_random(base, sizeof(base));
    library_uuid_from(base, 0, out);
}

int lib_command_wrap(plist_t command, enum ue_os os, int user_enrollment, int sensitive,
                     struct mdm_command *out, char *err, size_t err_len)
{
    memset(out, 0, sizeof(*out));
    const char *rt = pl_get_string(command, "RequestType");
    if (rt == NULL) {
        snprintf(err, err_len, "the command has no RequestType");
        return -1;
    }
    if (user_enrollment && ue_command_validate(command, os, NULL, NULL, err, err_len) != 0)
        return -1;
    library_uuid(out->uuid); /* version 8: marks a library command (lib_on_report) */
    plist_t full = plist_new_dict();
    pl_set_string(full, "CommandUUID", out->uuid);
    plist_dict_set_item(full, "Command", plist_copy(command));
    out->xml = pl_to_xml(full, &out->xml_len);
    plist_free(full);
    out->request_type = xstrdup(rt);
    out->sensitive = sensitive;
    out->push = 1;
    return 0;
}

int lib_command_uuid_is_ours(const char *uuid)
{
    return uuid != NULL && strlen(uuid) == 36 && uuid[8] == '-' && uuid[14] == '8';
}

/* ---- reconciliation ---- */

struct observed {
    int kind;     /* 0 = no list; else the kind the list covers */
    plist_t list; /* ProfileList array or ManagedApplicationList dict (borrowed) */
};

/* An in-memory copy of one state row plus what this run learned about it. */
struct row {
    st_item_state s;
    int pending; /* its command is still in the queue */
    int desired; /* some assignment wants it */
    int gone;    /* the row was deleted in this run */
};

struct rc_run {
    struct app *app;
    st_enrollment e;
    enum ue_os os;
    int ue;
    struct row *rows;
    size_t nrows, caprows;
    struct {
        int kind;
        int64_t id;
    } * want;
    size_t nwant, capwant;
    const struct observed *obs;
    struct lib_reconcile_stats *stats;
    struct lib_batch *batch; /* lookups shared with the other enrollments of a batch */
    int enqueued;
};

/* ---- what a batch of enrollments shares (lib_batch, a job's page) ---- */

/*
 * An install command built once per item, platform and kind of enrollment, and copied for each
 * enrollment with a fresh CommandUUID: building it (plist, validation against the UE tables,
 * XML, and for a signed profile a CMS signature of ~1 ms) is most of what a reconcile would
 * otherwise cost per enrollment.
 */
struct lib_cmd {
    int built; /* 0 not yet, 1 ready, -1 cannot be built (logged once) */
    char *xml; /* the whole command with a placeholder CommandUUID at uuid_at */
    size_t len, uuid_at;
    char *request_type;
    int sensitive;
};

/* A library item as this batch read it (items may change under a running job: each batch
 * reads them again, and a replacement's own job brings every enrollment to the new version). */
struct lib_item {
    int kind;
    int64_t id;
    int rc;             /* storage_profile_get / storage_app_get */
    unsigned platforms; /* a profile's, parsed once (LIB_OS_BIT) */
    st_profile p;
    st_app a;
    struct lib_cmd cmd[UE_OS_COUNT][2]; /* [platform][user enrollment] */
};

struct lib_user {
    int64_t id;
    int rc;
    char *email;
};

struct lib_batch {
    struct lib_item *items;
    size_t nitems, capitems;
    struct lib_user *users;
    size_t nusers, capusers;
    int quiet;  /* one log line per batch instead of one per command */
    int push;   /* push each enrollment that got a command (else the caller pushes) */
    int seeded; /* uuid_base drawn */
    uint8_t uuid_base[16];
    uint64_t uuids; /* ids made from uuid_base */
};

static void lib_batch_cleanup(struct lib_batch *b)
{
    for (size_t i = 0; i < b->nitems; i++) {
        struct lib_item *it = &b->items[i];
        st_profile_cleanup(&it->p);
        st_app_cleanup(&it->a);
        for (int os = 0; os < UE_OS_COUNT; os++) {
            for (int ue = 0; ue < 2; ue++) {
                free(it->cmd[os][ue].xml);
                free(it->cmd[os][ue].request_type);
            }
        }
    }
    for (size_t i = 0; i < b->nusers; i++)
        free(b->users[i].email);
    free(b->items);
    free(b->users);
    memset(b, 0, sizeof(*b));
}

/* The item (kind, id), read once per batch; its rc is ST_ENOTFOUND once deleted. */
static struct lib_item *batch_item(struct lib_batch *b, storage *st, int kind, int64_t id)
{
    for (size_t i = 0; i < b->nitems; i++) {
        if (b->items[i].kind == kind && b->items[i].id == id)
            return &b->items[i];
    }
    if (b->nitems == b->capitems) {
        b->capitems = b->capitems ? b->capitems * 2 : 8;
        b->items = xrealloc(b->items, b->capitems * sizeof(*b->items));
    }
    struct lib_item *it = &b->items[b->nitems++];
    memset(it, 0, sizeof(*it));
    it->kind = kind;
    it->id = id;
    it->rc = kind == ST_ITEM_PROFILE ? storage_profile_get(st, id, &it->p)
                                     : storage_app_get(st, id, &it->a);
    if (it->rc == 0 && kind == ST_ITEM_PROFILE &&
        (it->p.platforms == NULL || lib_platforms_parse(it->p.platforms, &it->platforms) != 0))
        it->platforms = 0;
    return it;
}

/* The email of a user, read once per batch; NULL when unknown. ST_ERROR in *rc on failure. */
static const char *batch_user_email(struct lib_batch *b, storage *st, int64_t id, int *rc)
{
    for (size_t i = 0; i < b->nusers; i++) {
        if (b->users[i].id == id) {
            *rc = b->users[i].rc;
            return b->users[i].email;
        }
    }
    st_user u = {0};
    *rc = storage_user_get(st, id, &u);
    if (*rc == ST_ERROR)
        return NULL; /* not cached: the next enrollment tries again */
    if (b->nusers == b->capusers) {
        b->capusers = b->capusers ? b->capusers * 2 : 8;
        b->users = xrealloc(b->users, b->capusers * sizeof(*b->users));
    }
    struct lib_user *c = &b->users[b->nusers++];
    c->id = id;
    c->rc = *rc;
    c->email = u.email;
    u.email = NULL;
    st_user_cleanup(&u);
    return c->email;
}

static int copy_row(const st_item_state *s, void *ctx)
{
    struct rc_run *r = ctx;
    if (r->nrows == r->caprows) {
        r->caprows = r->caprows ? r->caprows * 2 : 16;
        r->rows = xrealloc(r->rows, r->caprows * sizeof(*r->rows));
    }
    struct row *w = &r->rows[r->nrows++];
    memset(w, 0, sizeof(*w));
    w->s = *s;
    w->s.enrollment_id = xstrdup(s->enrollment_id);
    w->s.identifier = s->identifier ? xstrdup(s->identifier) : NULL;
    w->s.command_uuid = s->command_uuid ? xstrdup(s->command_uuid) : NULL;
    w->s.detail = s->detail ? xstrdup(s->detail) : NULL;
    return 0;
}

static int add_want(int kind, int64_t id, void *ctx)
{
    struct rc_run *r = ctx;
    if (r->nwant == r->capwant) {
        r->capwant = r->capwant ? r->capwant * 2 : 16;
        r->want = xrealloc(r->want, r->capwant * sizeof(*r->want));
    }
    r->want[r->nwant].kind = kind;
    r->want[r->nwant++].id = id;
    return 0;
}

static struct row *find_row(struct rc_run *r, int kind, int64_t id)
{
    for (size_t i = 0; i < r->nrows; i++) {
        if (!r->rows[i].gone && r->rows[i].s.item_kind == kind && r->rows[i].s.item_id == id)
            return &r->rows[i];
    }
    return NULL;
}

/* The first LocalizedDescription of an Error report's ErrorChain, or "Error". */
static char *error_text(plist_t report, int status)
{
    plist_t chain = report ? pl_get_typed(report, "ErrorChain", PLIST_ARRAY) : NULL;
    if (chain && plist_array_get_size(chain) > 0) {
        const char *d = pl_get_string(plist_array_get_item(chain, 0), "LocalizedDescription");
        if (d)
            return xstrdup(d);
    }
    return xstrdup(status == ST_CMD_FORMAT_ERROR ? "CommandFormatError" : "Error");
}

/*
 * Applies a terminal result to a state row (in memory and in the store, compare-and-set on
 * the same command): an acknowledged install becomes INSTALLED, a refused one FAILED; any
 * answer to a removal deletes the row (an Error there means it was not installed either).
 */
static void apply_result(storage *st, st_item_state *s, int status, plist_t report, int64_t now,
                         int *deleted)
{
    *deleted = 0;
    if (s->state == ST_ITEM_REMOVING) {
        storage_item_state_delete(st, s->enrollment_id, s->item_kind, s->item_id);
        *deleted = 1;
        return;
    }
    if (s->state != ST_ITEM_INSTALLING)
        return;
    free(s->detail);
    s->detail = NULL;
    if (status == ST_CMD_ACKNOWLEDGED) {
        s->state = ST_ITEM_INSTALLED;
        /* InstallApplication answers with the bundle id and the install State. */
        const char *ident = report ? pl_get_string(report, "Identifier") : NULL;
        const char *state = report ? pl_get_string(report, "State") : NULL;
        if (ident && s->identifier == NULL)
            s->identifier = xstrdup(ident);
        if (state)
            s->detail = xstrdup(state);
    } else {
        s->state = ST_ITEM_FAILED;
        s->detail = error_text(report, status);
    }
    s->updated_at = now;
    storage_item_state_put(st, s, s->command_uuid);
}

/* Looks up the row's command: still queued, finished (result applied), or gone (stale). */
static void resolve_pending(struct rc_run *r, struct row *w)
{
    st_command c = {0};
    w->pending = 0;
    if (w->s.command_uuid == NULL ||
        (w->s.state != ST_ITEM_INSTALLING && w->s.state != ST_ITEM_REMOVING))
        return;
    int rc = storage_command_get(r->app->st, w->s.command_uuid, &c);
    if (rc == 0 && (c.status == ST_CMD_QUEUED || c.status == ST_CMD_NOTNOW)) {
        w->pending = 1;
    } else if (rc == 0) {
        char perr[64];
        plist_t rep = c.result ? pl_parse(c.result, c.result_len, perr, sizeof(perr)) : NULL;
        apply_result(r->app->st, &w->s, c.status, rep, app_now(r->app), &w->gone);
        plist_free(rep);
    }
    st_command_cleanup(&c);
}

/* Is identifier in the device's list? -1 when the list does not cover this kind. */
static int observed_has(const struct observed *o, int kind, const char *identifier,
                        const char **status)
{
    if (o == NULL || o->kind != kind || identifier == NULL)
        return -1;
    if (status)
        *status = NULL;
    if (kind == ST_ITEM_PROFILE) {
        uint32_t n = plist_array_get_size(o->list);
        for (uint32_t i = 0; i < n; i++) {
            const char *pi = pl_get_string(plist_array_get_item(o->list, i), "PayloadIdentifier");
            if (pi && strcmp(pi, identifier) == 0)
                return 1;
        }
        return 0;
    }
    plist_t app = plist_dict_get_item(o->list, identifier);
    if (app == NULL)
        return 0;
    if (status)
        *status = pl_get_string(app, "Status");
    return 1;
}

/* Claims the row for a new command (compare-and-set), then enqueues it. */
/* Takes ownership of mc (a wrapped command for this enrollment). */
static int claim_and_enqueue(struct rc_run *r, struct row *w, int kind, int64_t id,
                             const char *identifier, int state, int sensitive, int64_t version,
                             struct mdm_command *cmd)
{
    struct mdm_command mc = *cmd;
    memset(cmd, 0, sizeof(*cmd));
    st_item_state s = {.enrollment_id = r->e.id,
                       .item_kind = kind,
                       .item_id = id,
                       .identifier = (char *)identifier,
                       .state = state,
                       .command_uuid = mc.uuid,
                       .sensitive = sensitive,
                       .updated_at = app_now(r->app),
                       .version = version};
    int rc = storage_item_state_put(r->app->st, &s, w ? w->s.command_uuid : NULL);
    if (rc == ST_ECONFLICT) {
        log_debug("event=library_claim_lost enrollment=%s kind=%d item=%lld", r->e.id, kind,
                  (long long)id);
        mdm_command_cleanup(&mc);
        return 0;
    }
    if (rc == 0) {
        st_command c = {.uuid = mc.uuid,
                        .enrollment_id = r->e.id,
                        .request_type = mc.request_type,
                        .body = mc.xml,
                        .body_len = mc.xml_len,
                        .sensitive = mc.sensitive,
                        .created_at = app_now(r->app)};
        rc = storage_queue_enqueue(r->app->st, &c);
    }
    if (rc != 0) {
        log_error("event=library_enqueue_failed enrollment=%s kind=%d item=%lld rc=%d", r->e.id,
                  kind, (long long)id, rc);
        r->stats->errors++;
        mdm_command_cleanup(&mc);
        return -1;
    }
    if (r->batch->quiet)
        log_debug("event=library_command enrollment=%s command=%s type=%s item=%s", r->e.id,
                  mc.uuid, mc.request_type, identifier ? identifier : "-");
    else
        log_info("event=library_command enrollment=%s command=%s type=%s item=%s", r->e.id, mc.uuid,
                 mc.request_type, identifier ? identifier : "-");
    if (state == ST_ITEM_INSTALLING)
        r->stats->installs++;
    else
        r->stats->removals++;
    r->enqueued++;
    mdm_command_cleanup(&mc);
    return 0;
}

/* The InstallProfile command for a library profile (signed when the profile asks for it). */
static plist_t profile_install_command(struct rc_run *r, const st_profile *p)
{
    plist_t cmd = plist_new_dict();
    pl_set_string(cmd, "RequestType", "InstallProfile");
    if (p->sign) {
        uint8_t *der = NULL;
        size_t der_len = 0;
        const crypto_cert *chain[1] = {r->app->signer_ca};
        if (r->app->signer_cert == NULL || r->app->signer_key == NULL ||
            cms_sign(r->app->signer_cert, r->app->signer_key, chain, r->app->signer_ca ? 1 : 0,
                     (const uint8_t *)p->body, p->body_len, &der, &der_len) != 0) {
            log_error("event=library_sign_failed profile=%lld", (long long)p->id);
            plist_free(cmd);
            return NULL;
        }
        plist_dict_set_item(cmd, "Payload", plist_new_data((const char *)der, der_len));
        free(der);
    } else {
        plist_dict_set_item(cmd, "Payload", plist_new_data(p->body, p->body_len));
    }
    return cmd;
}

/*
 * The install command of an item for this enrollment: the batch's template (built on first use
 * for this platform and kind of enrollment) with a fresh CommandUUID. -1 when the item cannot
 * be installed there (logged once per batch).
 */
static int install_command(struct rc_run *r, struct lib_item *it, struct mdm_command *mc)
{
    struct lib_cmd *t = &it->cmd[r->os][r->ue ? 1 : 0];
    if (t->built == 0) {
        char err[LIB_MSG_MAX];
        int sensitive = it->kind == ST_ITEM_PROFILE ? it->p.sensitive : it->a.sensitive;
        plist_t cmd = it->kind == ST_ITEM_PROFILE
                          ? profile_install_command(r, &it->p)
                          : lib_app_install_command(&it->a, r->os, NULL, NULL, err, sizeof(err));
        struct mdm_command w;
        t->built = -1;
        if (cmd == NULL) {
            if (it->kind == ST_ITEM_APP)
                log_info("event=library_app_skipped app=%lld os=%s reason=\"%s\"",
                         (long long)it->id, ue_os_name(r->os), err);
        } else if (lib_command_wrap(cmd, r->os, r->ue, sensitive, &w, err, sizeof(err)) != 0) {
            log_warn("event=library_command_refused kind=%d item=%lld os=%s reason=\"%s\"",
                     it->kind, (long long)it->id, ue_os_name(r->os), err);
        } else {
            const char *at = strstr(w.xml, w.uuid);
            if (at != NULL) {
                t->built = 1;
                t->uuid_at = (size_t)(at - w.xml);
                t->xml = w.xml;
                t->len = w.xml_len;
                t->request_type = w.request_type;
                t->sensitive = w.sensitive;
                w.xml = w.request_type = NULL;
            }
            mdm_command_cleanup(&w);
        }
        plist_free(cmd);
    }
    if (t->built != 1)
        return -1;
    memset(mc, 0, sizeof(*mc));
    struct lib_batch *b = r->batch;
    if (!b->seeded) {
        crypto_random(b->uuid_base, sizeof(b->uuid_base));
        b->seeded = 1;
    }
    library_uuid_from(b->uuid_base, b->uuids++, mc->uuid);
    mc->xml = xmalloc(t->len + 1);
    memcpy(mc->xml, t->xml, t->len + 1);
    memcpy(mc->xml + t->uuid_at, mc->uuid, 36);
    mc->xml_len = t->len;
    mc->request_type = xstrdup(t->request_type);
    mc->sensitive = t->sensitive;
    mc->push = 1;
    return 0;
}

/* Brings one desired item to installed. */
static void want_item(struct rc_run *r, int kind, int64_t id)
{
    struct lib_item *it = batch_item(r->batch, r->app->st, kind, id);
    const st_profile *p = &it->p;
    const st_app *a = &it->a;
    const char *identifier = NULL;
    int sensitive = 0;
    if (it->rc != 0)
        return; /* deleted meanwhile: its assignments went with it */
    if (kind == ST_ITEM_PROFILE) {
        if (!(it->platforms & LIB_OS_BIT(r->os)))
            return; /* not validated for this platform: never sent there */
        identifier = p->identifier;
        sensitive = p->sensitive;
    } else {
        identifier = a->identifier;
        sensitive = a->sensitive;
    }
    int64_t version = kind == ST_ITEM_PROFILE ? p->version : a->version;
    struct row *w = find_row(r, kind, id);
    if (w)
        w->desired = 1;
    /* The item was replaced since this version went out: install the new one over it (same
     * identifier, so the device replaces the profile, or updates the app and its managed
     * configuration, in place). */
    int outdated = w && w->s.state != ST_ITEM_REMOVING && w->s.version < version;
    const char *status = NULL;
    int seen =
        observed_has(r->obs, kind, w && w->s.identifier ? w->s.identifier : identifier, &status);
    if (w && w->pending && w->s.state == ST_ITEM_INSTALLING && !outdated)
        return; /* being installed; a pending removal is followed by a new install */
    /* A removal still queued will take it off the device: install again after it. */
    int removing = w && w->pending && w->s.state == ST_ITEM_REMOVING;
    if (seen == 1 && !removing && !outdated &&
        (w == NULL || w->s.state != ST_ITEM_INSTALLED ||
         (status && (!w->s.detail || strcmp(w->s.detail, status) != 0)))) {
        /* The device has it: record that instead of installing it again. */
        st_item_state s = {.enrollment_id = r->e.id,
                           .item_kind = kind,
                           .item_id = id,
                           .identifier =
                               (char *)(w && w->s.identifier ? w->s.identifier : identifier),
                           .state = ST_ITEM_INSTALLED,
                           .sensitive = sensitive,
                           .detail = (char *)status,
                           .updated_at = app_now(r->app),
                           .version = w ? w->s.version : version};
        storage_item_state_put(r->app->st, &s, w ? w->s.command_uuid : NULL);
        return;
    }
    if (!removing && !outdated && w && w->s.state == ST_ITEM_INSTALLED && seen != 0)
        return; /* installed, and no list says otherwise */
    if (!outdated && w && w->s.state == ST_ITEM_FAILED)
        return; /* refused by the device: not retried automatically (no command storms); a new
                 * version gets one try */
    if (sensitive && r->e.auth_state && strcmp(r->e.auth_state, "reauth_failed") == 0)
        return; /* the re-authentication policy withholds sensitive items (auth/reauth.c) */
    if (outdated)
        log_info("event=library_outdated enrollment=%s item=%s version=%lld installed=%lld "
                 "action=reinstall",
                 r->e.id, identifier ? identifier : "-", (long long)version,
                 (long long)w->s.version);
    else if (seen == 0 && w)
        log_info("event=library_missing enrollment=%s item=%s action=reinstall", r->e.id,
                 identifier ? identifier : "-");
    struct mdm_command mc;
    if (install_command(r, it, &mc) != 0) {
        r->stats->errors++;
        return;
    }
    claim_and_enqueue(r, w, kind, id, w && w->s.identifier ? w->s.identifier : identifier,
                      ST_ITEM_INSTALLING, sensitive, version, &mc);
}

/* Removes an item Orchard installed that no assignment wants any more. */
static void unwant_row(struct rc_run *r, struct row *w)
{
    if (w->gone || w->desired)
        return;
    if (w->s.state == ST_ITEM_REMOVING && w->pending)
        return;
    const char *ident = w->s.identifier;
    int app = w->s.item_kind == ST_ITEM_APP;
    if (w->s.state == ST_ITEM_FAILED || ident == NULL ||
        (!app && strcmp(ident, ENROLL_PROFILE_ID) == 0)) {
        storage_item_state_delete(r->app->st, r->e.id, w->s.item_kind, w->s.item_id);
        return;
    }
    char why[LIB_MSG_MAX];
    const char *rt = app ? "RemoveApplication" : "RemoveProfile";
    if (r->ue && ue_command_check(rt, r->os, why, sizeof(why)) != 0) {
        /* macOS User Enrollment: managed apps go only with the enrollment (PROTOCOL.md 13.3). */
        log_info("event=library_remove_unsupported enrollment=%s item=%s reason=\"%s\"", r->e.id,
                 ident, why);
        storage_item_state_delete(r->app->st, r->e.id, w->s.item_kind, w->s.item_id);
        return;
    }
    plist_t cmd = plist_new_dict();
    pl_set_string(cmd, "RequestType", rt);
    pl_set_string(cmd, "Identifier", ident);
    struct mdm_command mc;
    if (lib_command_wrap(cmd, r->os, r->ue, 0, &mc, why, sizeof(why)) != 0) {
        log_warn("event=library_command_refused enrollment=%s item=%s reason=\"%s\"", r->e.id,
                 ident, why);
        r->stats->errors++;
    } else {
        claim_and_enqueue(r, w, w->s.item_kind, w->s.item_id, ident, ST_ITEM_REMOVING,
                          w->s.sensitive, w->s.version, &mc);
    }
    plist_free(cmd);
}

static void run_cleanup(struct rc_run *r)
{
    for (size_t i = 0; i < r->nrows; i++)
        st_item_state_cleanup(&r->rows[i].s);
    free(r->rows);
    free(r->want);
    st_enrollment_cleanup(&r->e);
}

/*
 * Reconciles the enrollment `given` (borrowed: a record the caller read) or, without it, the
 * one stored under enrollment_id. batch: lookups shared with other enrollments (NULL: its own).
 */
static int reconcile(struct app *app, const char *enrollment_id, const st_enrollment *given,
                     const struct observed *obs, struct lib_batch *batch,
                     struct lib_reconcile_stats *stats)
{
    struct lib_reconcile_stats dummy = {0};
    struct lib_batch own = {.push = 1};
    struct rc_run r = {
        .app = app, .obs = obs, .stats = stats ? stats : &dummy, .batch = batch ? batch : &own};
    int rc = 0;
    if (given != NULL)
        r.e = *given; /* shallow: run_cleanup must not free it */
    else
        rc = storage_enrollment_get(app->st, enrollment_id, &r.e);
    if (rc != 0 || r.e.unenrolled_at || r.e.token_updated_at == 0) {
        if (given != NULL)
            memset(&r.e, 0, sizeof(r.e));
        run_cleanup(&r);
        lib_batch_cleanup(&own);
        return rc == ST_ENOTFOUND ? 0 : (rc ? -1 : 0);
    }
    r.stats->enrollments++;
    r.os = mdm_platform_of(r.e.product_name, r.e.model);
    r.ue = r.e.type == ST_ENR_USER || r.e.type == ST_ENR_USER_CHANNEL;
    /* User and domain assignments reach device channels; a macOS user channel gets only what is
     * assigned to it by id. */
    const char *email = NULL, *domain = NULL;
    int urc = 0;
    if (r.e.user_id && r.e.type != ST_ENR_USER_CHANNEL && r.e.type != ST_ENR_DEVICE_USER)
        email = batch_user_email(r.batch, app->st, r.e.user_id, &urc);
    if (email) {
        const char *at = strrchr(email, '@');
        domain = at ? at + 1 : NULL;
    }
    if (urc == ST_ERROR ||
        storage_assignment_items(app->st, email, domain, r.e.id, add_want, &r) != 0 ||
        storage_item_state_list(app->st, r.e.id, copy_row, &r) != 0) {
        rc = -1;
        goto out;
    }
    for (size_t i = 0; i < r.nrows; i++)
        resolve_pending(&r, &r.rows[i]);
    for (size_t i = 0; i < r.nwant; i++)
        want_item(&r, r.want[i].kind, r.want[i].id);
    for (size_t i = 0; i < r.nrows; i++)
        unwant_row(&r, &r.rows[i]);
    if (r.enqueued && r.batch->push) {
        int prc = storage_push_enqueue(app->st, r.e.id, app_now(app));
        if (prc != 0 && prc != ST_ECONFLICT)
            log_warn("event=library_push_failed enrollment=%s rc=%d", r.e.id, prc);
    }
    log_debug("event=library_reconciled enrollment=%s wanted=%zu rows=%zu enqueued=%d", r.e.id,
              r.nwant, r.nrows, r.enqueued);
    rc = 0;
out:
    if (given != NULL)
        memset(&r.e, 0, sizeof(r.e));
    run_cleanup(&r);
    lib_batch_cleanup(&own);
    return rc;
}

int lib_reconcile(struct app *app, const char *enrollment_id, struct lib_reconcile_stats *stats)
{
    return reconcile(app, enrollment_id, NULL, NULL, NULL, stats);
}

lib_batch *lib_batch_new(int push)
{
    lib_batch *b = xcalloc(1, sizeof(*b));
    b->quiet = 1;
    b->push = push;
    return b;
}

void lib_batch_free(lib_batch *b)
{
    if (b == NULL)
        return;
    lib_batch_cleanup(b);
    free(b);
}

int lib_reconcile_enrollment(struct app *app, lib_batch *b, const st_enrollment *e,
                             struct lib_reconcile_stats *stats)
{
    return reconcile(app, e->id, e, NULL, b, stats);
}

void lib_on_enrollment_complete(struct app *app, const char *enrollment_id)
{
    struct lib_reconcile_stats s = {0};
    /* A new enrollment under this id: the device dropped everything with the old profile. */
    if (storage_item_state_clear(app->st, enrollment_id) != 0 ||
        lib_reconcile(app, enrollment_id, &s) != 0)
        log_error("event=library_reconcile_failed enrollment=%s when=enrollment", enrollment_id);
    else if (s.installs)
        log_info("event=library_enrollment_reconciled enrollment=%s installs=%d", enrollment_id,
                 s.installs);
}

void lib_on_report(struct app *app, const char *enrollment_id, const char *uuid, int status,
                   plist_t report)
{
    if (status == ST_CMD_NOTNOW || uuid == NULL)
        return;
    if (lib_command_uuid_is_ours(uuid)) {
        st_item_state s = {0};
        if (storage_item_state_by_command(app->st, uuid, &s) == 0 &&
            strcmp(s.enrollment_id, enrollment_id) == 0) {
            int deleted = 0;
            apply_result(app->st, &s, status, report, app_now(app), &deleted);
            log_info("event=library_result enrollment=%s command=%s item=%s state=%s",
                     enrollment_id, uuid, s.identifier ? s.identifier : "-",
                     deleted ? "removed" : (s.state == ST_ITEM_INSTALLED ? "installed" : "failed"));
            st_item_state_cleanup(&s);
            return;
        }
        st_item_state_cleanup(&s);
    }
    if (status != ST_CMD_ACKNOWLEDGED)
        return;
    struct observed o = {0};
    if ((o.list = pl_get_typed(report, "ProfileList", PLIST_ARRAY)) != NULL)
        o.kind = ST_ITEM_PROFILE;
    else if ((o.list = pl_get_typed(report, "ManagedApplicationList", PLIST_DICT)) != NULL)
        o.kind = ST_ITEM_APP;
    else
        return;
    if (reconcile(app, enrollment_id, NULL, &o, NULL, NULL) != 0)
        log_error("event=library_reconcile_failed enrollment=%s when=list", enrollment_id);
}
