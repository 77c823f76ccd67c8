/*
 * The storage front end: picks a backend by the DSN's scheme, and implements the named
 * wrappers of storage.h over the backend's ops table (storage_impl.h). The wrappers are the
 * one place for argument asserts, out-parameter zeroing, debug tracing and test fault
 * injection, so backends stay free of them. Record *_cleanup functions live here too since
 * records are backend-independent.
 *
 * This file holds no database code and no state besides the backend table.
 */
#include "storage/storage.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/log.h"
#include "storage/pgsql/pgsql.h"
#include "storage/sqlite/sqlite.h"
#include "storage/storage_impl.h"

/* ---- backend table ---- */

struct storage_backend {
    const char *scheme;
    storage_open_fn *open;
};

static const struct storage_backend storage_backends[] = {
    {"sqlite", sqlite_storage_open},
    /* PostgreSQL receives the whole DSN ("postgres://..."), which libpq parses itself. */
    {"postgres", pgsql_storage_open},
    {"postgresql", pgsql_storage_open},
};

#define STORAGE_NBACKENDS (sizeof(storage_backends) / sizeof(storage_backends[0]))

/*
 * Splits "scheme:rest" (RFC 3986 scheme characters). Returns the scheme length, or 0 when the
 * string does not start with a scheme, which makes it a bare SQLite path: "orchard.db",
 * "/var/lib/orchard/orchard.db", "./x:y.db". A relative path that looks like "name:..." must be
 * written "sqlite:name:..." or "./name:...".
 */
static size_t dsn_scheme_len(const char *dsn)
{
    size_t i = 0;
    if (!((dsn[0] >= 'a' && dsn[0] <= 'z') || (dsn[0] >= 'A' && dsn[0] <= 'Z')))
        return 0;
    while (dsn[i] != '\0' && dsn[i] != ':') {
        char ch = dsn[i];
        int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                 ch == '+' || ch == '-' || ch == '.';
        if (!ok)
            return 0;
        i++;
    }
    return dsn[i] == ':' ? i : 0;
}

storage *storage_open(const char *dsn, char *err, size_t err_len)
{
    assert(dsn != NULL);
    assert(err != NULL || err_len == 0);
    if (err_len > 0)
        err[0] = '\0';

    size_t slen = dsn_scheme_len(dsn);
    const char *scheme = slen ? dsn : "sqlite";
    const char *location = slen ? dsn + slen + 1 : dsn;
    if (slen == 0)
        slen = strlen("sqlite");
    /* "sqlite:///abs/path" and "sqlite://rel" are accepted as "sqlite:/abs/path", "sqlite:rel". */
    if (strncmp(location, "//", 2) == 0)
        location += 2;

    for (size_t i = 0; i < STORAGE_NBACKENDS; i++) {
        const struct storage_backend *b = &storage_backends[i];
        if (strlen(b->scheme) == slen && strncasecmp(b->scheme, scheme, slen) == 0) {
            storage *st = b->open(dsn, location, err, err_len);
            if (st == NULL) {
                log_error("event=storage_open_failed scheme=%s err=\"%s\"", b->scheme, err);
                return NULL;
            }
            assert(st->ops != NULL);
            atomic_store(&st->fail_after, 0);
            return st;
        }
    }

    char valid[128] = "";
    size_t used = 0;
    for (size_t i = 0; i < STORAGE_NBACKENDS && used < sizeof(valid); i++) {
        int n = snprintf(valid + used, sizeof(valid) - used, "%s%s:", i ? ", " : "",
                         storage_backends[i].scheme);
        if (n > 0)
            used += (size_t)n;
    }
    snprintf(err, err_len, "unknown storage scheme \"%.*s\" (valid: %s or a plain file path)",
             (int)(slen > 32 ? 32 : slen), scheme, valid);
    log_error("event=storage_open_failed err=unknown_scheme");
    return NULL;
}

void storage_close(storage *st)
{
    if (st != NULL)
        st->ops->close(st);
}

/* ---- fault injection ---- */

void storage_fail_after(storage *st, int n)
{
    assert(st != NULL && n >= 0);
    atomic_store(&st->fail_after, n);
}

int storage_fail_step_after(storage *st, int n)
{
    assert(st != NULL && n >= 0);
    if (st->ops->fail_step_after == NULL)
        return -1;
    st->ops->fail_step_after(st, n);
    return 0;
}

int storage_inject_fault(storage *st, int n, int step)
{
    if (step)
        return storage_fail_step_after(st, n);
    storage_fail_after(st, n);
    return 0;
}

/* Counts one wrapper call against an armed fault; true when this call must fail. */
static int fault_fire(storage *st, const char *op)
{
    int n = atomic_load_explicit(&st->fail_after, memory_order_relaxed);
    while (n > 0) {
        if (atomic_compare_exchange_weak(&st->fail_after, &n, n - 1)) {
            if (n == 1) {
                log_debug("event=storage_fault_injected op=%s", op);
                return 1;
            }
            return 0;
        }
    }
    return 0;
}

/*
 * The body of every wrapper: fault injection, the backend call, a debug trace (arguments are
 * never traced: most are hashes of secrets or device data).
 */
#define STORAGE_CALL(st, op, ...)                                                                  \
    do {                                                                                           \
        if (fault_fire((st), #op))                                                                 \
            return ST_ERROR;                                                                       \
        int rc_ = (st)->ops->op((st), __VA_ARGS__);                                                \
        log_debug("event=storage_call op=%s rc=%d", #op, rc_);                                     \
        return rc_;                                                                                \
    } while (0)

/* STORAGE_CALL for operations without arguments besides st. */
#define STORAGE_CALL0(st, op)                                                                      \
    do {                                                                                           \
        if (fault_fire((st), #op))                                                                 \
            return ST_ERROR;                                                                       \
        int rc_ = (st)->ops->op(st);                                                               \
        log_debug("event=storage_call op=%s rc=%d", #op, rc_);                                     \
        return rc_;                                                                                \
    } while (0)

int storage_device_lookup(storage *st, const char *token_hash, const char *enrollment_id,
                          st_session *s, st_enrollment *e)
{
    assert(st != NULL && token_hash != NULL && enrollment_id != NULL && s != NULL && e != NULL);
    memset(s, 0, sizeof(*s));
    memset(e, 0, sizeof(*e));
    if (fault_fire(st, "device_lookup"))
        return ST_ERROR;
    if (st->ops->device_lookup)
        return st->ops->device_lookup(st, token_hash, enrollment_id, s, e);
    int rc = st->ops->session_get(st, token_hash, s);
    if (rc == ST_OK || rc == ST_ENOTFOUND)
        rc = st->ops->enrollment_get(st, enrollment_id, e);
    if (rc == ST_ENOTFOUND)
        rc = ST_OK;
    if (rc != ST_OK) {
        st_session_cleanup(s);
        st_enrollment_cleanup(e);
    }
    return rc;
}

int storage_ping(storage *st)
{
    assert(st != NULL);
    if (fault_fire(st, "ping"))
        return ST_ERROR;
    return st->ops->ping(st);
}

int storage_schema_version(storage *st)
{
    assert(st != NULL);
    if (fault_fire(st, "schema_version"))
        return ST_ERROR;
    return st->ops->schema_version(st);
}

/* ---- record cleanup ---- */

void st_user_cleanup(st_user *u)
{
    if (u == NULL)
        return;
    free(u->email);
    free(u->managed_apple_id);
    free(u->password_hash);
    free(u->idp_subject);
    memset(u, 0, sizeof(*u));
}

void st_session_cleanup(st_session *s)
{
    if (s == NULL)
        return;
    free(s->token_hash);
    free(s->method);
    free(s->enrollment_id);
    free(s->machine_info);
    memset(s, 0, sizeof(*s));
}

void st_cert_cleanup(st_cert *c)
{
    if (c == NULL)
        return;
    free(c->serial);
    free(c->fingerprint);
    free(c->subject);
    free(c->session_hash);
    free(c->enrollment_id);
    memset(c, 0, sizeof(*c));
}

void st_enrollment_cleanup(st_enrollment *e)
{
    if (e == NULL)
        return;
    free(e->id);
    free(e->parent_id);
    free(e->topic);
    free(e->cert_fingerprint);
    free(e->push_token);
    free(e->push_magic);
    free(e->os_version);
    free(e->build_version);
    free(e->product_name);
    free(e->device_name);
    free(e->model);
    free(e->auth_state);
    free(e->last_auth_method);
    memset(e, 0, sizeof(*e));
}

void st_command_cleanup(st_command *c)
{
    if (c == NULL)
        return;
    free(c->uuid);
    free(c->enrollment_id);
    free(c->request_type);
    free(c->body);
    free(c->result);
    memset(c, 0, sizeof(*c));
}

void st_audit_cleanup(st_audit *a)
{
    if (a == NULL)
        return;
    free(a->actor);
    free(a->action);
    free(a->target);
    free(a->detail);
    memset(a, 0, sizeof(*a));
}

/* ---- users and API keys ---- */

int storage_user_add(storage *st, st_user *u)
{
    assert(st != NULL && u != NULL && u->email != NULL);
    STORAGE_CALL(st, user_add, u);
}

int storage_user_get_by_email(storage *st, const char *email, st_user *out)
{
    assert(st != NULL && email != NULL && out != NULL);
    memset(out, 0, sizeof(*out));
    STORAGE_CALL(st, user_get_by_email, email, out);
}

int storage_user_get(storage *st, int64_t id, st_user *out)
{
    assert(st != NULL && out != NULL);
    memset(out, 0, sizeof(*out));
    STORAGE_CALL(st, user_get, id, out);
}

int storage_user_set_password(storage *st, int64_t id, const char *password_hash)
{
    assert(st != NULL);
    STORAGE_CALL(st, user_set_password, id, password_hash);
}

int storage_user_list(storage *st, int (*fn)(const st_user *u, void *ctx), void *ctx)
{
    assert(st != NULL && fn != NULL);
    STORAGE_CALL(st, user_list, fn, ctx);
}

int storage_apikey_add(storage *st, const char *name, const char *key_hash, int64_t now,
                       int64_t *id)
{
    assert(st != NULL && name != NULL && key_hash != NULL && id != NULL);
    *id = 0;
    STORAGE_CALL(st, apikey_add, name, key_hash, now, id);
}

int storage_apikey_find(storage *st, const char *key_hash, int64_t *id, char **name)
{
    assert(st != NULL && key_hash != NULL && id != NULL);
    *id = 0;
    if (name != NULL)
        *name = NULL;
    STORAGE_CALL(st, apikey_find, key_hash, id, name);
}

/* ---- sessions ---- */

int storage_session_add(storage *st, const st_session *s)
{
    assert(st != NULL && s != NULL && s->token_hash != NULL && s->method != NULL);
    STORAGE_CALL(st, session_add, s);
}

int storage_session_get(storage *st, const char *token_hash, st_session *out)
{
    assert(st != NULL && token_hash != NULL && out != NULL);
    memset(out, 0, sizeof(*out));
    STORAGE_CALL(st, session_get, token_hash, out);
}

int storage_session_bind(storage *st, const char *token_hash, const char *enrollment_id)
{
    assert(st != NULL && token_hash != NULL && enrollment_id != NULL);
    STORAGE_CALL(st, session_bind, token_hash, enrollment_id);
}

int storage_session_set_machine_info(storage *st, const char *token_hash, const char *plist)
{
    assert(st != NULL && token_hash != NULL);
    STORAGE_CALL(st, session_set_machine_info, token_hash, plist);
}

int storage_session_revoke_enrollment(storage *st, const char *enrollment_id, int64_t now)
{
    assert(st != NULL && enrollment_id != NULL);
    STORAGE_CALL(st, session_revoke_enrollment, enrollment_id, now);
}

int storage_session_revoke(storage *st, const char *token_hash, int64_t now)
{
    assert(st != NULL && token_hash != NULL);
    STORAGE_CALL(st, session_revoke, token_hash, now);
}

int storage_session_prune_unbound(storage *st, int64_t before, int64_t *deleted)
{
    assert(st != NULL && deleted != NULL);
    *deleted = 0;
    STORAGE_CALL(st, session_prune_unbound, before, deleted);
}

/* ---- SCEP challenges and certificates ---- */

int storage_challenge_add(storage *st, const char *challenge_hash, int64_t user_id,
                          const char *session_hash, int64_t expires_at)
{
    assert(st != NULL && challenge_hash != NULL);
    STORAGE_CALL(st, challenge_add, challenge_hash, user_id, session_hash, expires_at);
}

int storage_challenge_consume(storage *st, const char *challenge_hash, int64_t now,
                              int64_t *user_id, char **session_hash)
{
    assert(st != NULL && challenge_hash != NULL && user_id != NULL && session_hash != NULL);
    *user_id = 0;
    *session_hash = NULL;
    STORAGE_CALL(st, challenge_consume, challenge_hash, now, user_id, session_hash);
}

int storage_challenge_prune(storage *st, int64_t before, int64_t *deleted)
{
    assert(st != NULL && deleted != NULL);
    *deleted = 0;
    STORAGE_CALL(st, challenge_prune, before, deleted);
}

int storage_cert_add(storage *st, const st_cert *c)
{
    assert(st != NULL && c != NULL && c->serial != NULL && c->fingerprint != NULL);
    STORAGE_CALL(st, cert_add, c);
}

int storage_cert_get_by_fingerprint(storage *st, const char *fingerprint, st_cert *out)
{
    assert(st != NULL && fingerprint != NULL && out != NULL);
    memset(out, 0, sizeof(*out));
    STORAGE_CALL(st, cert_get_by_fingerprint, fingerprint, out);
}

int storage_cert_set_enrollment(storage *st, const char *fingerprint, const char *enrollment_id)
{
    assert(st != NULL && fingerprint != NULL && enrollment_id != NULL);
    STORAGE_CALL(st, cert_set_enrollment, fingerprint, enrollment_id);
}

int storage_cert_revoke_enrollment(storage *st, const char *enrollment_id, int64_t now)
{
    assert(st != NULL && enrollment_id != NULL);
    STORAGE_CALL(st, cert_revoke_enrollment, enrollment_id, now);
}

/* ---- enrollments ---- */

int storage_enrollment_authenticate(storage *st, const st_enrollment *e)
{
    assert(st != NULL && e != NULL && e->id != NULL);
    assert(e->type >= ST_ENR_USER && e->type <= ST_ENR_DEVICE_USER);
    STORAGE_CALL(st, enrollment_authenticate, e);
}

int storage_enrollment_get(storage *st, const char *id, st_enrollment *out)
{
    assert(st != NULL && id != NULL && out != NULL);
    memset(out, 0, sizeof(*out));
    STORAGE_CALL(st, enrollment_get, id, out);
}

int storage_enrollment_token_update(storage *st, const char *id, const char *push_token,
                                    const char *push_magic, int64_t now)
{
    assert(st != NULL && id != NULL);
    STORAGE_CALL(st, enrollment_token_update, id, push_token, push_magic, now);
}

int storage_enrollment_set_cert(storage *st, const char *id, const char *fingerprint)
{
    assert(st != NULL && id != NULL);
    STORAGE_CALL(st, enrollment_set_cert, id, fingerprint);
}

int storage_enrollment_set_auth_state(storage *st, const char *id, const char *state, int64_t since)
{
    assert(st != NULL && id != NULL && state != NULL);
    STORAGE_CALL(st, enrollment_set_auth_state, id, state, since);
}

int storage_enrollment_transition_auth_state(storage *st, const char *id, const char *from,
                                             const char *to, int64_t since)
{
    assert(st != NULL && id != NULL && from != NULL && to != NULL);
    STORAGE_CALL(st, enrollment_transition_auth_state, id, from, to, since);
}

int storage_enrollment_set_last_auth(storage *st, const char *id, int64_t at, const char *method)
{
    assert(st != NULL && id != NULL);
    STORAGE_CALL(st, enrollment_set_last_auth, id, at, method);
}

int storage_enrollment_set_push_dead(storage *st, const char *id, int dead)
{
    assert(st != NULL && id != NULL);
    STORAGE_CALL(st, enrollment_set_push_dead, id, dead ? 1 : 0);
}

int storage_enrollment_unenroll(storage *st, const char *id, int64_t now)
{
    assert(st != NULL && id != NULL);
    STORAGE_CALL(st, enrollment_unenroll, id, now);
}

int storage_enrollment_touch(storage *st, const char *id, int64_t now)
{
    assert(st != NULL && id != NULL);
    STORAGE_CALL(st, enrollment_touch, id, now);
}

int storage_enrollment_list(storage *st, const st_enrollment_filter *f,
                            int (*fn)(const st_enrollment *e, void *ctx), void *ctx)
{
    static const st_enrollment_filter all = {0, 0, NULL, 0};
    assert(st != NULL && fn != NULL);
    STORAGE_CALL(st, enrollment_list, f != NULL ? f : &all, fn, ctx);
}

/* ---- command queue ---- */

int storage_queue_enqueue(storage *st, const st_command *c)
{
    assert(st != NULL && c != NULL && c->uuid != NULL && c->enrollment_id != NULL);
    assert(c->request_type != NULL && c->body != NULL);
    STORAGE_CALL(st, queue_enqueue, c);
}

int storage_queue_next(storage *st, const char *enrollment_id, int include_notnow, int64_t now,
                       st_command *out)
{
    assert(st != NULL && enrollment_id != NULL && out != NULL);
    memset(out, 0, sizeof(*out));
    STORAGE_CALL(st, queue_next, enrollment_id, include_notnow ? 1 : 0, now, out);
}

int storage_queue_report(storage *st, const char *enrollment_id, const char *uuid, int status,
                         const char *result, size_t result_len, int64_t now)
{
    assert(st != NULL && enrollment_id != NULL && uuid != NULL);
    /* The caller maps the device's Status string; Idle and unknown strings never get here. */
    assert(status >= ST_CMD_NOTNOW && status <= ST_CMD_FORMAT_ERROR);
    assert(result != NULL || result_len == 0);
    STORAGE_CALL(st, queue_report, enrollment_id, uuid, status, result, result_len, now);
}

int storage_command_get(storage *st, const char *uuid, st_command *out)
{
    assert(st != NULL && uuid != NULL && out != NULL);
    memset(out, 0, sizeof(*out));
    STORAGE_CALL(st, command_get, uuid, out);
}

int storage_command_list(storage *st, const char *enrollment_id, int limit,
                         int (*fn)(const st_command *c, void *ctx), void *ctx)
{
    assert(st != NULL && enrollment_id != NULL && fn != NULL);
    STORAGE_CALL(st, command_list, enrollment_id, limit, fn, ctx);
}

int storage_queue_clear(storage *st, const char *enrollment_id)
{
    assert(st != NULL && enrollment_id != NULL);
    STORAGE_CALL(st, queue_clear, enrollment_id);
}

int storage_queue_count(storage *st, const char *enrollment_id, int64_t *count)
{
    assert(st != NULL && enrollment_id != NULL && count != NULL);
    *count = 0;
    STORAGE_CALL(st, queue_count, enrollment_id, count);
}

int storage_history_prune(storage *st, int64_t before, int64_t *deleted)
{
    assert(st != NULL && deleted != NULL);
    *deleted = 0;
    STORAGE_CALL(st, history_prune, before, deleted);
}

/* ---- audit ---- */

int storage_audit_add(storage *st, const st_audit *a)
{
    assert(st != NULL && a != NULL && a->actor != NULL && a->action != NULL);
    STORAGE_CALL(st, audit_add, a);
}

int storage_audit_count(storage *st, const char *action, const char *target, int64_t since,
                        int64_t *count)
{
    assert(st != NULL && action != NULL && target != NULL && count != NULL);
    *count = 0;
    STORAGE_CALL(st, audit_count, action, target, since, count);
}

int storage_audit_prune(storage *st, int64_t before, int limit, int64_t *deleted)
{
    assert(st != NULL && deleted != NULL && limit > 0);
    *deleted = 0;
    STORAGE_CALL(st, audit_prune, before, limit, deleted);
}

int storage_audit_list(storage *st, int64_t before_id, int limit,
                       int (*fn)(const st_audit *a, void *ctx), void *ctx)
{
    assert(st != NULL && fn != NULL);
    STORAGE_CALL(st, audit_list, before_id, limit, fn, ctx);
}

/* ---- push outbox ---- */

int storage_push_enqueue(storage *st, const char *enrollment_id, int64_t now)
{
    assert(st != NULL && enrollment_id != NULL);
    STORAGE_CALL(st, push_enqueue, enrollment_id, now);
}

int storage_push_enqueue_filter(storage *st, int scope, const char *value, int64_t now,
                                int64_t *queued)
{
    assert(st != NULL && queued != NULL);
    assert(scope == ST_PUSH_ALL || value != NULL);
    assert(scope >= ST_PUSH_ALL && scope <= ST_PUSH_DOMAIN);
    *queued = 0;
    STORAGE_CALL(st, push_enqueue_filter, scope, value, now, queued);
}

int storage_push_sweep(storage *st, int64_t before, int64_t now, int64_t *queued)
{
    assert(st != NULL && queued != NULL);
    *queued = 0;
    STORAGE_CALL(st, push_sweep, before, now, queued);
}

int storage_push_claim(storage *st, const char *owner, int64_t now, int lease, int limit,
                       int (*fn)(const st_push *p, void *ctx), void *ctx, int *claimed)
{
    assert(st != NULL && owner != NULL && fn != NULL && claimed != NULL);
    assert(lease > 0 && limit > 0);
    *claimed = 0;
    STORAGE_CALL(st, push_claim, owner, now, lease, limit, fn, ctx, claimed);
}

int storage_push_done(storage *st, const char *owner, int64_t now, const st_push_result *r,
                      size_t n)
{
    assert(st != NULL && owner != NULL && (r != NULL || n == 0));
    if (n == 0)
        return ST_OK;
    STORAGE_CALL(st, push_done, owner, now, r, n);
}

int storage_push_pending(storage *st, int64_t *count)
{
    assert(st != NULL && count != NULL);
    *count = 0;
    STORAGE_CALL(st, push_pending, count);
}

/* ---- sign-in failure counters ---- */

int storage_failure_add(storage *st, const char *key, int64_t window_start, int64_t *count)
{
    assert(st != NULL && key != NULL && count != NULL);
    *count = 0;
    STORAGE_CALL(st, failure_add, key, window_start, count);
}

int storage_failure_count(storage *st, const char *key, int64_t window_start, int64_t *count)
{
    assert(st != NULL && key != NULL && count != NULL);
    *count = 0;
    STORAGE_CALL(st, failure_count, key, window_start, count);
}

int storage_failure_prune(storage *st, int64_t before, int64_t *deleted)
{
    assert(st != NULL && deleted != NULL);
    *deleted = 0;
    STORAGE_CALL(st, failure_prune, before, deleted);
}

/* ---- server secrets ---- */

int storage_secret_get_or_add(storage *st, const char *name, const char *candidate, int64_t now,
                              char **value)
{
    assert(st != NULL && name != NULL && candidate != NULL && value != NULL);
    *value = NULL;
    STORAGE_CALL(st, secret_get_or_add, name, candidate, now, value);
}

/* ---- webhook events ---- */

int storage_webhook_add(storage *st, const char *type, const char *data, int64_t now, int64_t *id)
{
    assert(st != NULL && type != NULL && data != NULL);
    int64_t ignored;
    if (id == NULL)
        id = &ignored;
    *id = 0;
    STORAGE_CALL(st, webhook_add, type, data, now, id);
}

int storage_webhook_claim(storage *st, const char *owner, int64_t now, int lease, int limit,
                          int (*fn)(const st_webhook_event *e, void *ctx), void *ctx, int *claimed)
{
    assert(st != NULL && owner != NULL && fn != NULL && claimed != NULL);
    assert(lease > 0 && limit > 0);
    *claimed = 0;
    STORAGE_CALL(st, webhook_claim, owner, now, lease, limit, fn, ctx, claimed);
}

int storage_webhook_done(storage *st, const char *owner, int64_t id, int outcome, int64_t due_at,
                         int attempts)
{
    assert(st != NULL && owner != NULL);
    assert(outcome >= ST_WEBHOOK_DELIVERED && outcome <= ST_WEBHOOK_DROP);
    STORAGE_CALL(st, webhook_done, owner, id, outcome, due_at, attempts);
}

int storage_webhook_pending(storage *st, int64_t *count)
{
    assert(st != NULL && count != NULL);
    *count = 0;
    STORAGE_CALL(st, webhook_pending, count);
}

/* ---- organisation domains and federated sign-in ---- */

void st_domain_cleanup(st_domain *d)
{
    if (d == NULL)
        return;
    free(d->name);
    free(d->auth);
    free(d->issuer);
    free(d->client_id);
    if (d->client_secret)
        memset(d->client_secret, 0, strlen(d->client_secret));
    free(d->client_secret);
    free(d->ca_file);
    free(d->scopes);
    free(d->user_claim);
    free(d->maid_claim);
    free(d->groups_claim);
    free(d->allowed_groups);
    memset(d, 0, sizeof(*d));
}

void st_oidc_pending_cleanup(st_oidc_pending *p)
{
    if (p == NULL)
        return;
    free(p->state_hash);
    free(p->domain);
    free(p->identifier);
    free(p->nonce);
    free(p->code_verifier);
    free(p->reauth_ticket);
    memset(p, 0, sizeof(*p));
}

int storage_domain_put(storage *st, const st_domain *d)
{
    assert(st != NULL && d != NULL && d->name != NULL && d->auth != NULL);
    STORAGE_CALL(st, domain_put, d);
}

int storage_domain_get(storage *st, const char *name, st_domain *out)
{
    assert(st != NULL && name != NULL && out != NULL);
    memset(out, 0, sizeof(*out));
    STORAGE_CALL(st, domain_get, name, out);
}

int storage_domain_list(storage *st, int (*fn)(const st_domain *d, void *ctx), void *ctx)
{
    assert(st != NULL && fn != NULL);
    STORAGE_CALL(st, domain_list, fn, ctx);
}

int storage_oidc_pending_add(storage *st, const st_oidc_pending *p, int64_t now)
{
    assert(st != NULL && p != NULL && p->state_hash != NULL && p->domain != NULL &&
           p->identifier != NULL && p->nonce != NULL && p->code_verifier != NULL);
    STORAGE_CALL(st, oidc_pending_add, p, now);
}

int storage_oidc_pending_take(storage *st, const char *state_hash, int64_t now,
                              st_oidc_pending *out)
{
    assert(st != NULL && state_hash != NULL && out != NULL);
    memset(out, 0, sizeof(*out));
    STORAGE_CALL(st, oidc_pending_take, state_hash, now, out);
}

int storage_user_set_idp_subject(storage *st, int64_t id, const char *idp_subject)
{
    assert(st != NULL && idp_subject != NULL);
    STORAGE_CALL(st, user_set_idp_subject, id, idp_subject);
}

/* ---- profile and app library, assignments, installed state ---- */

void st_profile_cleanup(st_profile *p)
{
    if (p == NULL)
        return;
    free(p->identifier);
    free(p->name);
    free(p->platforms);
    free(p->body);
    memset(p, 0, sizeof(*p));
}

void st_app_cleanup(st_app *a)
{
    if (a == NULL)
        return;
    free(a->identifier);
    free(a->manifest_url);
    free(a->spec);
    memset(a, 0, sizeof(*a));
}

void st_assignment_cleanup(st_assignment *a)
{
    if (a == NULL)
        return;
    free(a->target);
    memset(a, 0, sizeof(*a));
}

void st_item_state_cleanup(st_item_state *s)
{
    if (s == NULL)
        return;
    free(s->enrollment_id);
    free(s->identifier);
    free(s->command_uuid);
    free(s->detail);
    memset(s, 0, sizeof(*s));
}

int storage_profile_add(storage *st, st_profile *p)
{
    assert(st != NULL && p != NULL && p->identifier != NULL && p->platforms != NULL &&
           p->body != NULL);
    p->version = 1; /* every new item starts at version 1 (the column default) */
    STORAGE_CALL(st, profile_add, p);
}

int storage_profile_get(storage *st, int64_t id, st_profile *out)
{
    assert(st != NULL && out != NULL);
    memset(out, 0, sizeof(*out));
    STORAGE_CALL(st, profile_get, id, out);
}

int storage_profile_list(storage *st, int (*fn)(const st_profile *p, void *ctx), void *ctx)
{
    assert(st != NULL && fn != NULL);
    STORAGE_CALL(st, profile_list, fn, ctx);
}

int storage_profile_delete(storage *st, int64_t id)
{
    assert(st != NULL);
    STORAGE_CALL(st, profile_delete, id);
}

int storage_profile_replace(storage *st, st_profile *p)
{
    assert(st != NULL && p != NULL && p->identifier != NULL && p->platforms != NULL);
    assert(p->body != NULL);
    STORAGE_CALL(st, profile_replace, p);
}

int storage_app_replace(storage *st, st_app *a)
{
    assert(st != NULL && a != NULL && a->spec != NULL);
    STORAGE_CALL(st, app_replace, a);
}

int storage_app_add(storage *st, st_app *a)
{
    assert(st != NULL && a != NULL && a->spec != NULL);
    a->version = 1; /* as profiles */
    STORAGE_CALL(st, app_add, a);
}

int storage_app_get(storage *st, int64_t id, st_app *out)
{
    assert(st != NULL && out != NULL);
    memset(out, 0, sizeof(*out));
    STORAGE_CALL(st, app_get, id, out);
}

int storage_app_list(storage *st, int (*fn)(const st_app *a, void *ctx), void *ctx)
{
    assert(st != NULL && fn != NULL);
    STORAGE_CALL(st, app_list, fn, ctx);
}

int storage_app_delete(storage *st, int64_t id)
{
    assert(st != NULL);
    STORAGE_CALL(st, app_delete, id);
}

int storage_assignment_add(storage *st, st_assignment *a)
{
    assert(st != NULL && a != NULL && a->target != NULL);
    STORAGE_CALL(st, assignment_add, a);
}

int storage_assignment_get(storage *st, int64_t id, st_assignment *out)
{
    assert(st != NULL && out != NULL);
    memset(out, 0, sizeof(*out));
    STORAGE_CALL(st, assignment_get, id, out);
}

int storage_assignment_delete(storage *st, int64_t id)
{
    assert(st != NULL);
    STORAGE_CALL(st, assignment_delete, id);
}

int storage_assignment_list(storage *st, int (*fn)(const st_assignment *a, void *ctx), void *ctx)
{
    assert(st != NULL && fn != NULL);
    STORAGE_CALL(st, assignment_list, fn, ctx);
}

int storage_assignment_items(storage *st, const char *email, const char *domain,
                             const char *enrollment_id,
                             int (*fn)(int item_kind, int64_t item_id, void *ctx), void *ctx)
{
    assert(st != NULL && fn != NULL);
    STORAGE_CALL(st, assignment_items, email, domain, enrollment_id, fn, ctx);
}

int storage_item_state_put(storage *st, const st_item_state *s, const char *expect_command)
{
    assert(st != NULL && s != NULL && s->enrollment_id != NULL);
    STORAGE_CALL(st, item_state_put, s, expect_command);
}

int storage_item_state_delete(storage *st, const char *enrollment_id, int item_kind,
                              int64_t item_id)
{
    assert(st != NULL && enrollment_id != NULL);
    STORAGE_CALL(st, item_state_delete, enrollment_id, item_kind, item_id);
}

int storage_item_state_list(storage *st, const char *enrollment_id,
                            int (*fn)(const st_item_state *s, void *ctx), void *ctx)
{
    assert(st != NULL && enrollment_id != NULL && fn != NULL);
    STORAGE_CALL(st, item_state_list, enrollment_id, fn, ctx);
}

int storage_item_state_by_command(storage *st, const char *command_uuid, st_item_state *out)
{
    assert(st != NULL && command_uuid != NULL && out != NULL);
    memset(out, 0, sizeof(*out));
    STORAGE_CALL(st, item_state_by_command, command_uuid, out);
}

int storage_item_state_clear(storage *st, const char *enrollment_id)
{
    assert(st != NULL && enrollment_id != NULL);
    STORAGE_CALL(st, item_state_clear, enrollment_id);
}

int storage_item_state_enrollments(storage *st, int item_kind, int64_t item_id,
                                   int (*fn)(const char *enrollment_id, void *ctx), void *ctx)
{
    assert(st != NULL && fn != NULL);
    STORAGE_CALL(st, item_state_enrollments, item_kind, item_id, fn, ctx);
}

/* ---- identity renewal ---- */

void st_renewal_cleanup(st_renewal *r)
{
    if (r == NULL)
        return;
    free(r->enrollment_id);
    free(r->old_fingerprint);
    free(r->state);
    free(r->challenge_hash);
    free(r->command_uuid);
    free(r->new_fingerprint);
    free(r->last_error);
    memset(r, 0, sizeof(*r));
}

int storage_challenge_add_renewal(storage *st, const char *challenge_hash, int64_t user_id,
                                  const char *session_hash, const char *enrollment_id,
                                  int64_t expires_at)
{
    assert(st != NULL && challenge_hash != NULL && enrollment_id != NULL);
    STORAGE_CALL(st, challenge_add_renewal, challenge_hash, user_id, session_hash, enrollment_id,
                 expires_at);
}

int storage_challenge_consume_bound(storage *st, const char *challenge_hash, int64_t now,
                                    int64_t *user_id, char **session_hash, char **enrollment_id)
{
    assert(st != NULL && challenge_hash != NULL && user_id != NULL && session_hash != NULL &&
           enrollment_id != NULL);
    *user_id = 0;
    *session_hash = NULL;
    *enrollment_id = NULL;
    STORAGE_CALL(st, challenge_consume_bound, challenge_hash, now, user_id, session_hash,
                 enrollment_id);
}

int storage_renewal_get(storage *st, const char *enrollment_id, st_renewal *out)
{
    assert(st != NULL && enrollment_id != NULL && out != NULL);
    memset(out, 0, sizeof(*out));
    STORAGE_CALL(st, renewal_get, enrollment_id, out);
}

int storage_renewal_put(storage *st, st_renewal *r, int64_t expect_version)
{
    assert(st != NULL && r != NULL && r->enrollment_id != NULL && r->old_fingerprint != NULL &&
           r->state != NULL);
    STORAGE_CALL(st, renewal_put, r, expect_version);
}

int storage_renewal_candidates(storage *st, int64_t expires_before, int limit,
                               int (*fn)(const st_renewal *r, void *ctx), void *ctx)
{
    assert(st != NULL && fn != NULL && limit > 0);
    STORAGE_CALL(st, renewal_candidates, expires_before, limit, fn, ctx);
}

int storage_renewal_due(storage *st, int64_t now, int64_t errors_since, int limit,
                        int (*fn)(const st_renewal *r, void *ctx), void *ctx)
{
    assert(st != NULL && fn != NULL && limit > 0);
    STORAGE_CALL(st, renewal_due, now, errors_since, limit, fn, ctx);
}

int storage_identity_rotate(storage *st, const char *enrollment_id, const char *root_id,
                            const char *old_fp, const char *new_fp, int64_t now, int *renewal_done)
{
    assert(st != NULL && enrollment_id != NULL && root_id != NULL && old_fp != NULL &&
           new_fp != NULL && renewal_done != NULL);
    *renewal_done = 0;
    STORAGE_CALL(st, identity_rotate, enrollment_id, root_id, old_fp, new_fp, now, renewal_done);
}

int storage_identity_count_expiring(storage *st, int64_t after, int64_t before, int64_t *count)
{
    assert(st != NULL && count != NULL);
    *count = 0;
    STORAGE_CALL(st, identity_count_expiring, after, before, count);
}

/* ---- device inventory ---- */

void st_inventory_cleanup(st_inventory *inv)
{
    if (inv == NULL)
        return;
    free(inv->enrollment_id);
    free(inv->platform);
    free(inv->os_version);
    free(inv->build_version);
    free(inv->product_name);
    free(inv->model);
    free(inv->model_name);
    free(inv->device_name);
    free(inv->apps);
    free(inv->profiles);
    free(inv->certs);
    free(inv->user_email);
    memset(inv, 0, sizeof(*inv));
}

int storage_inventory_reset(storage *st, const st_inventory *inv)
{
    assert(st != NULL && inv != NULL && inv->enrollment_id != NULL);
    STORAGE_CALL(st, inventory_reset, inv);
}

int storage_inventory_get(storage *st, const char *enrollment_id, st_inventory *out)
{
    assert(st != NULL && enrollment_id != NULL && out != NULL);
    memset(out, 0, sizeof(*out));
    STORAGE_CALL(st, inventory_get, enrollment_id, out);
}

int storage_inventory_claim(storage *st, const char *enrollment_id, int64_t round, int64_t now,
                            int64_t due_at, const char *platform, const st_command *cmds, size_t n)
{
    assert(st != NULL && enrollment_id != NULL && (cmds != NULL || n == 0));
    for (size_t i = 0; i < n; i++) {
        assert(cmds[i].uuid != NULL && cmds[i].request_type != NULL && cmds[i].body != NULL);
        assert(strncmp(cmds[i].uuid, ST_INV_UUID_PREFIX, ST_INV_UUID_PREFIX_LEN) == 0);
        assert(strcmp(cmds[i].enrollment_id, enrollment_id) == 0);
    }
    STORAGE_CALL(st, inventory_claim, enrollment_id, round, now, due_at, platform, cmds, n);
}

int storage_inventory_set_due(storage *st, const char *enrollment_id, int64_t round, int64_t due_at)
{
    assert(st != NULL && enrollment_id != NULL);
    STORAGE_CALL(st, inventory_set_due, enrollment_id, round, due_at);
}

int storage_inventory_due(storage *st, int64_t now, int64_t defer_to, int limit,
                          int (*fn)(const char *enrollment_id, int64_t round, void *ctx), void *ctx)
{
    assert(st != NULL && fn != NULL && limit > 0);
    STORAGE_CALL(st, inventory_due, now, defer_to, limit, fn, ctx);
}

int storage_inventory_update(storage *st, const char *enrollment_id, const st_inventory *in,
                             unsigned groups, int64_t now, st_inventory *old)
{
    assert(st != NULL && enrollment_id != NULL && in != NULL);
    if (old != NULL)
        memset(old, 0, sizeof(*old));
    STORAGE_CALL(st, inventory_update, enrollment_id, in, groups, now, old);
}

int storage_inventory_pending(storage *st, const char *enrollment_id, int64_t *count)
{
    assert(st != NULL && enrollment_id != NULL && count != NULL);
    *count = 0;
    STORAGE_CALL(st, inventory_pending, enrollment_id, count);
}

int storage_inventory_list(storage *st, const st_inventory_filter *f,
                           int (*fn)(const st_enrollment *e, const st_inventory *inv, void *ctx),
                           void *ctx)
{
    static const st_inventory_filter all = {0};
    assert(st != NULL && fn != NULL);
    STORAGE_CALL(st, inventory_list, f != NULL ? f : &all, fn, ctx);
}

/* ---- transactions spanning calls ---- */

int storage_tx_begin(storage *st)
{
    assert(st != NULL);
    STORAGE_CALL0(st, tx_begin);
}

int storage_tx_commit(storage *st)
{
    assert(st != NULL);
    /* A fault here must still end the transaction: the caller treats the batch as failed. */
    if (fault_fire(st, "tx_commit")) {
        st->ops->tx_rollback(st);
        return ST_ERROR;
    }
    int rc = st->ops->tx_commit(st);
    log_debug("event=storage_call op=tx_commit rc=%d", rc);
    return rc;
}

void storage_tx_rollback(storage *st)
{
    assert(st != NULL);
    st->ops->tx_rollback(st);
}

/* ---- durable jobs ---- */

void st_job_cleanup(st_job *j)
{
    if (j == NULL)
        return;
    free(j->kind);
    free(j->value);
    free(j->origin);
    free(j->cursor);
    free(j->claimed_by);
    memset(j, 0, sizeof(*j));
}

int storage_job_add(storage *st, st_job *j)
{
    assert(st != NULL && j != NULL && j->kind != NULL);
    assert(j->scope >= ST_JOB_USER && j->scope <= ST_JOB_ITEM);
    assert(j->scope == ST_JOB_ITEM || j->value != NULL);
    j->id = 0;
    STORAGE_CALL(st, job_add, j);
}

int storage_job_get(storage *st, int64_t id, st_job *out)
{
    assert(st != NULL && out != NULL);
    memset(out, 0, sizeof(*out));
    STORAGE_CALL(st, job_get, id, out);
}

int storage_job_claim(storage *st, const char *owner, int64_t now, int lease, st_job *out)
{
    assert(st != NULL && owner != NULL && out != NULL && lease > 0);
    memset(out, 0, sizeof(*out));
    STORAGE_CALL(st, job_claim, owner, now, lease, out);
}

int storage_job_count(storage *st, const st_job *j, int64_t *count)
{
    assert(st != NULL && j != NULL && count != NULL);
    *count = 0;
    STORAGE_CALL(st, job_count, j, count);
}

int storage_job_page(storage *st, const st_job *j, const char *after, int limit,
                     int (*fn)(const st_enrollment *e, void *ctx), void *ctx, int *n)
{
    assert(st != NULL && j != NULL && after != NULL && fn != NULL && n != NULL && limit > 0);
    *n = 0;
    STORAGE_CALL(st, job_page, j, after, limit, fn, ctx, n);
}

int storage_job_progress(storage *st, const char *owner, int64_t now, int lease,
                         const st_job_progress *p)
{
    assert(st != NULL && owner != NULL && p != NULL && p->cursor != NULL && lease > 0);
    STORAGE_CALL(st, job_progress, owner, now, lease, p);
}

int storage_job_finish(storage *st, const char *owner, int64_t id, int state, int64_t now)
{
    assert(st != NULL && owner != NULL);
    assert(state == ST_JOB_DONE || state == ST_JOB_FAILED);
    STORAGE_CALL(st, job_finish, owner, id, state, now);
}

int storage_job_release(storage *st, const char *owner, int64_t id)
{
    assert(st != NULL && owner != NULL);
    STORAGE_CALL(st, job_release, owner, id);
}

int storage_job_prune(storage *st, int64_t before, int64_t *deleted)
{
    assert(st != NULL && deleted != NULL);
    *deleted = 0;
    STORAGE_CALL(st, job_prune, before, deleted);
}
