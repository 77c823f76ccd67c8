/*
 * Identity renewal: the scheduler's side (renewal_sweep: start, fail, retry, give up) and the
 * request side (renewal_accept_identity: the first request with the new certificate). See
 * renewal.h for the whole story; this file says why each step is ordered the way it is.
 */
#include "mdm/renewal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/audit.h"
#include "auth/secret.h"
#include "core/log.h"
#include "core/mem.h"
#include "crypto/pki.h"
#include "enroll/enroll.h"
#include "mdm/mdm.h"
#include "plist/pl.h"
#include "push/pusher.h"

#define DAY 86400
/* Rows looked at per pass and listing; the rest wait for the next pass. */
#define RENEWAL_BATCH 200
/* First backoff after a failed attempt; it doubles up to RENEWAL_ATTEMPT_WINDOW. */
#define RENEWAL_BACKOFF 3600
/* How often a held renewal (reauth_failed) looks again at its enrollment. */
#define RENEWAL_HOLD_RECHECK 3600
/* Room for last_error: a reason and the device's first error, printable ASCII only. */
#define RENEWAL_ERROR_MAX 200

struct sweep {
    struct app *app;
    int64_t now;
};

/*
 * identity_renew_before, but never more than half a certificate's life: otherwise a certificate
 * would be due for renewal the moment it is issued, and renewals would chase each other.
 */
static int64_t renew_before(const struct app *app)
{
    int64_t before = config_get_int(app->cfg, "identity_renew_before");
    int64_t half_life = config_get_int(app->cfg, "scep_cert_days") * DAY / 2;
    return before < half_life ? before : half_life;
}

static int64_t backoff(int attempts)
{
    int64_t d = RENEWAL_BACKOFF;
    for (int i = 1; i < attempts && d < RENEWAL_ATTEMPT_WINDOW; i++)
        d *= 2;
    return d < RENEWAL_ATTEMPT_WINDOW ? d : RENEWAL_ATTEMPT_WINDOW;
}

static int is_state(const char *state, const char *want)
{
    return state != NULL && strcmp(state, want) == 0;
}

/* The first 16 hex digits of a fingerprint, for logs and audit details. */
static void fp_short(const char *fp, char out[17])
{
    snprintf(out, 17, "%s", fp ? fp : "-");
}

/* ---- the request side ---- */

int renewal_accept_identity(struct app *app, const st_enrollment *e, const char *fp,
                            const char *rid)
{
    const char *root = e->parent_id ? e->parent_id : e->id; /* the device channel */
    const char *why = NULL;
    st_cert c = {0};
    int rc = storage_cert_get_by_fingerprint(app->st, fp, &c);
    if (rc == ST_ERROR)
        goto out;
    /* What Orchard recorded when it issued the certificate decides, never the request. */
    if (rc != ST_OK)
        why = "unknown_certificate";
    else if (c.revoked_at != 0)
        why = "revoked";
    else if (c.user_id != e->user_id)
        why = "other_user";
    else if (c.enrollment_id == NULL || strcmp(c.enrollment_id, root) != 0)
        why = "not_issued_for_this_enrollment";
    else if (e->cert_fingerprint == NULL)
        why = "no_bound_identity";
    if (why) {
        log_warn("event=identity_refused rid=%s enrollment=%s reason=%s", rid, e->id, why);
        rc = -2;
        goto out;
    }
    int finished = 0;
    rc = storage_identity_rotate(app->st, e->id, root, e->cert_fingerprint, fp, app_now(app),
                                 &finished);
    if (rc == ST_ECONFLICT) {
        /* A concurrent request of the device rotated first: it holds only if it bound this one. */
        st_enrollment cur = {0};
        rc = storage_enrollment_get(app->st, e->id, &cur);
        if (rc == ST_OK)
            rc = cur.cert_fingerprint && strcmp(cur.cert_fingerprint, fp) == 0 ? 0 : -2;
        st_enrollment_cleanup(&cur);
        goto out;
    }
    if (rc != ST_OK)
        goto out;
    char old_s[17], new_s[17], detail[96];
    fp_short(e->cert_fingerprint, old_s);
    fp_short(fp, new_s);
    log_info("event=identity_renewed rid=%s enrollment=%s old=%s new=%s scheduled=%d", rid, e->id,
             old_s, new_s, finished);
    /* One event per device: a Mac's user channel follows its device channel. */
    if (e->parent_id == NULL) {
        snprintf(detail, sizeof(detail), "old=%s new=%s", old_s, new_s);
        audit_record(app, "device", "identity.renewed", e->id, detail);
    }
out:
    st_cert_cleanup(&c);
    return rc == ST_ERROR ? ST_ERROR : rc == 0 ? 0 : -2;
}

/* ---- the scheduler side ---- */

/* Copies printable ASCII of s into out (bounded), '?' for anything else: device text. */
static void append_printable(char *out, size_t cap, const char *s)
{
    size_t n = strlen(out);
    for (; s && *s && n + 1 < cap; s++)
        out[n++] = *s >= 0x20 && *s < 0x7f ? *s : '?';
    out[n] = '\0';
}

/* "device_error" and the first entry of the report's ErrorChain (domain, code, description). */
static void device_error(const st_command *c, char *out, size_t cap)
{
    char err[64], code[32];
    snprintf(out, cap, "device_error");
    plist_t r = c->result ? pl_parse_dict(c->result, c->result_len, err, sizeof(err)) : NULL;
    plist_t chain = r ? pl_get_typed(r, "ErrorChain", PLIST_ARRAY) : NULL;
    plist_t first =
        chain && plist_array_get_size(chain) > 0 ? plist_array_get_item(chain, 0) : NULL;
    if (first && plist_get_node_type(first) == PLIST_DICT) {
        plist_t num = pl_get_typed(first, "ErrorCode", PLIST_UINT);
        uint64_t n = 0;
        code[0] = '\0';
        if (num) { /* Apple's codes may be negative: libplist keeps the two's complement */
            plist_get_uint_val(num, &n);
            snprintf(code, sizeof(code), " %lld", (long long)(int64_t)n);
        }
        append_printable(out, cap, ": ");
        append_printable(out, cap, pl_get_string(first, "ErrorDomain"));
        append_printable(out, cap, code);
        append_printable(out, cap, " ");
        append_printable(out, cap, pl_get_string(first, "LocalizedDescription"));
    }
    if (r)
        plist_free(r);
}

/* The InstallProfile of an attempt is no longer wanted: cancelled if the device has not
 * answered it for good (queued, sent or NotNow), so it never arrives after a newer one. */
static void cancel_command(struct app *app, const char *enrollment_id, const char *uuid,
                           const char *why)
{
    if (uuid == NULL)
        return;
    char *msg = xasprintf("cancelled: identity renewal %s", why);
    storage_queue_report(app->st, enrollment_id, uuid, ST_CMD_ERROR, msg, strlen(msg),
                         app_now(app));
    free(msg);
}

/* An attempt's challenge is spent once the attempt is over: using it marks it used. */
static void burn_challenge(struct app *app, const char *challenge_hash)
{
    if (challenge_hash == NULL)
        return;
    int64_t uid = 0;
    char *sess = NULL, *enr = NULL;
    storage_challenge_consume_bound(app->st, challenge_hash, app_now(app), &uid, &sess, &enr);
    free(sess);
    free(enr);
}

/*
 * Writes the next state of r (a copy with the changes applied by the caller) if nobody else has
 * written r meanwhile. Only the instance whose write wins goes on to act (cancel, audit, send),
 * so every action happens once; one that crashes after its write leaves at most a command that
 * the next attempt cancels.
 */
static int claim(struct app *app, st_renewal *next, const st_renewal *seen)
{
    next->updated_at = app_now(app);
    int rc = storage_renewal_put(app->st, next, seen->version);
    if (rc == ST_ECONFLICT)
        log_debug("event=renewal_claim_lost enrollment=%s", seen->enrollment_id);
    else if (rc != ST_OK)
        log_warn("event=renewal_store_failed enrollment=%s", seen->enrollment_id);
    return rc;
}

/* Ends the renewal in a final state; the attempt out (if any) is cancelled. */
static void finish(struct app *app, const st_renewal *r, const char *state, const char *why,
                   const char *new_fp)
{
    st_renewal n = *r;
    n.state = (char *)state;
    n.command_uuid = NULL;
    n.challenge_hash = NULL;
    n.new_fingerprint = (char *)new_fp;
    if (strcmp(state, "expired") != 0 && strcmp(state, "done") != 0)
        n.last_error = (char *)why;
    if (claim(app, &n, r) != ST_OK)
        return;
    cancel_command(app, r->enrollment_id, r->command_uuid, why);
    burn_challenge(app, r->challenge_hash);
    log_info("event=renewal_%s enrollment=%s reason=%s attempts=%d", state, r->enrollment_id, why,
             r->attempts);
    if (strcmp(state, "expired") == 0) {
        char detail[RENEWAL_ERROR_MAX + 64];
        snprintf(detail, sizeof(detail), "attempts=%d expired_at=%lld last_error=%s", r->attempts,
                 (long long)r->expires_at, r->last_error ? r->last_error : "-");
        audit_record(app, "system", "identity.expired", r->enrollment_id, detail);
    }
}

/* The attempt out failed: the next one starts after the backoff (never past the expiry). */
static void fail_attempt(struct app *app, const st_renewal *r, const char *why)
{
    int64_t now = app_now(app);
    int64_t next_at = now + backoff(r->attempts);
    st_renewal n = *r;
    n.command_uuid = NULL;
    n.challenge_hash = NULL;
    n.last_error = (char *)why;
    n.next_attempt_at = next_at < r->expires_at ? next_at : r->expires_at;
    if (claim(app, &n, r) != ST_OK)
        return;
    cancel_command(app, r->enrollment_id, r->command_uuid, "superseded");
    burn_challenge(app, r->challenge_hash);
    char detail[RENEWAL_ERROR_MAX + 96];
    snprintf(detail, sizeof(detail), "attempt=%d next_attempt_at=%lld reason=%s", r->attempts,
             (long long)n.next_attempt_at, why);
    audit_record(app, "system", "identity.renew_failed", r->enrollment_id, detail);
}

/* reauth_failed: no renewal goes out until the user signs in again; looked at hourly. */
static void hold(struct app *app, const st_renewal *r)
{
    st_renewal n = *r;
    n.state = "held";
    n.command_uuid = NULL;
    n.challenge_hash = NULL;
    n.next_attempt_at = app_now(app) + RENEWAL_HOLD_RECHECK;
    if (!is_state(r->state, "held"))
        n.last_error = "reauth_failed";
    if (claim(app, &n, r) != ST_OK)
        return;
    cancel_command(app, r->enrollment_id, r->command_uuid, "held: re-authentication failed");
    burn_challenge(app, r->challenge_hash);
    if (!is_state(r->state, "held"))
        log_info("event=renewal_held enrollment=%s reason=reauth_failed", r->enrollment_id);
}

/* The InstallProfile command (full command plist, XML) carrying the signed profile. */
static char *install_command(const char *uuid, const uint8_t *der, size_t der_len, size_t *len)
{
    plist_t cmd = plist_new_dict();
    pl_set_string(cmd, "RequestType", "InstallProfile");
    plist_dict_set_item(cmd, "Payload", plist_new_data((const char *)der, der_len));
    plist_t root = plist_new_dict();
    plist_dict_set_item(root, "Command", cmd);
    pl_set_string(root, "CommandUUID", uuid);
    char *xml = pl_to_xml(root, len);
    plist_free(root);
    return xml;
}

/*
 * Builds, signs and queues the replacement profile of attempt n (its challenge and command uuid
 * already claimed). Returns NULL, or the reason it could not.
 */
static const char *send_attempt(struct app *app, const st_enrollment *e, const st_renewal *n,
                                const char *challenge)
{
    st_cert old = {0};
    st_user u = {0};
    char *xml = NULL, *body = NULL;
    uint8_t *der = NULL;
    size_t xml_len = 0, der_len = 0, body_len = 0;
    const char *why = NULL;
    if (storage_cert_get_by_fingerprint(app->st, n->old_fingerprint, &old) != ST_OK ||
        storage_user_get(app->st, e->user_id, &u) != ST_OK) {
        why = "storage";
        goto out;
    }
    /* The challenge lives as long as the attempt: the device runs SCEP right after it has
     * fetched the command, which it can do only while the old certificate is valid. */
    if (storage_challenge_add_renewal(app->st, n->challenge_hash, e->user_id, old.session_hash,
                                      e->id, n->next_attempt_at) != ST_OK) {
        why = "storage";
        goto out;
    }
    xml = enroll_profile_build_renewal(app, e, &u, challenge, old.session_hash, &xml_len, &why);
    if (xml == NULL)
        goto out;
    if (enroll_profile_sign(app, xml, xml_len, &der, &der_len) != 0) {
        why = "signing_failed";
        goto out;
    }
    body = install_command(n->command_uuid, der, der_len, &body_len);
    st_command c = {.uuid = n->command_uuid,
                    .enrollment_id = e->id,
                    .request_type = "InstallProfile",
                    .body = body,
                    .body_len = body_len,
                    .priority = RENEWAL_PRIORITY,
                    .created_at = app_now(app)};
    if (storage_queue_enqueue(app->st, &c) != ST_OK)
        why = "storage";
out:
    st_cert_cleanup(&old);
    st_user_cleanup(&u);
    free(xml);
    free(der);
    free(body);
    return why;
}

/* Starts the next attempt: claim it, then send the replacement profile and wake the device. */
static void start_attempt(struct app *app, const st_enrollment *e, const st_renewal *r)
{
    char challenge[SECRET_TOKEN_LEN + 1], hash[SECRET_HASH_LEN + 1], uuid[37];
    int64_t now = app_now(app);
    int64_t deadline = now + RENEWAL_ATTEMPT_WINDOW;
    secret_new_token(challenge);
    secret_hash(challenge, hash);
    crypto_uuid(uuid); /* version 4: never taken for a library command (mdm/library.h) */
    st_renewal n = *r;
    n.state = "pending";
    n.attempts = r->attempts + 1;
    n.command_uuid = uuid;
    n.challenge_hash = hash;
    n.next_attempt_at = deadline < r->expires_at ? deadline : r->expires_at;
    /* Claimed before anything is sent, with the command's uuid: an instance that dies after the
     * claim leaves a row that names the command, which the next attempt then cancels. */
    if (claim(app, &n, r) != ST_OK)
        return;
    const char *why = send_attempt(app, e, &n, challenge);
    secret_wipe(challenge, sizeof(challenge));
    if (why != NULL) {
        log_warn("event=renewal_send_failed enrollment=%s reason=%s", e->id, why);
        fail_attempt(app, &n, why);
        return;
    }
    push_enrollment(app, e->id); /* no live push token is fine: the device fetches it anyway */
    char detail[128];
    snprintf(detail, sizeof(detail), "attempt=%d command=%s expires_at=%lld", n.attempts, uuid,
             (long long)r->expires_at);
    audit_record(app, "system", "identity.renew_start", e->id, detail);
}

/* An attempt is out: has it failed? (Error at once; anything else once its time is up.) */
static void check_attempt(struct app *app, const st_renewal *r)
{
    st_command c = {0};
    char why[RENEWAL_ERROR_MAX];
    int rc = storage_command_get(app->st, r->command_uuid, &c);
    if (rc == ST_ERROR)
        return;
    why[0] = '\0';
    if (rc == ST_ENOTFOUND)
        snprintf(why, sizeof(why), "command_lost"); /* e.g. a new Authenticate cleared the queue */
    else if (c.status == ST_CMD_ERROR || c.status == ST_CMD_FORMAT_ERROR)
        device_error(&c, why, sizeof(why));
    else if (app_now(app) < r->next_attempt_at)
        ; /* still in time */
    else if (c.status == ST_CMD_NOTNOW)
        snprintf(why, sizeof(why), "not_now");
    else if (c.status == ST_CMD_ACKNOWLEDGED)
        snprintf(why, sizeof(why), "no_new_identity"); /* installed, but never used */
    else
        snprintf(why, sizeof(why), c.sent_at ? "no_answer" : "not_fetched");
    if (why[0])
        fail_attempt(app, r, why);
    st_command_cleanup(&c);
}

/* Decides what a due renewal needs, from the stored enrollment. */
static int advance(const st_renewal *r, void *ctx)
{
    struct sweep *s = ctx;
    struct app *app = s->app;
    st_enrollment e = {0};
    int rc = storage_enrollment_get(app->st, r->enrollment_id, &e);
    const char *state = e.auth_state ? e.auth_state : "active";
    if (rc == ST_ERROR)
        goto out; /* next pass */
    if (rc != ST_OK || e.unenrolled_at || is_state(state, "unenrolled"))
        finish(app, r, "cancelled", "unenrolled", NULL);
    else if (is_state(state, MDM_STATE_REVOKED))
        finish(app, r, "cancelled", "revoked", NULL);
    else if (e.cert_fingerprint == NULL || strcmp(e.cert_fingerprint, r->old_fingerprint) != 0)
        finish(app, r, "done", "identity_replaced", e.cert_fingerprint); /* e.g. re-enrolled */
    else if (s->now >= r->expires_at)
        finish(app, r, "expired", "expired", NULL);
    else if (is_state(state, "reauth_failed"))
        hold(app, r);
    else if (r->command_uuid)
        check_attempt(app, r);
    else if (s->now >= r->next_attempt_at)
        start_attempt(app, &e, r);
out:
    st_enrollment_cleanup(&e);
    return 0;
}

/* An identity entered the renewal window: its renewal row, due at once. */
static int schedule(const st_renewal *r, void *ctx)
{
    struct sweep *s = ctx;
    st_renewal n = {.enrollment_id = r->enrollment_id,
                    .old_fingerprint = r->old_fingerprint,
                    .expires_at = r->expires_at,
                    .state = "pending",
                    .next_attempt_at = s->now,
                    .started_at = s->now,
                    .updated_at = s->now};
    /* r->version: the row of the enrollment's previous certificate, replaced by this one. */
    if (storage_renewal_put(s->app->st, &n, r->version) == ST_OK)
        log_info("event=renewal_scheduled enrollment=%s expires_at=%lld", r->enrollment_id,
                 (long long)r->expires_at);
    return 0;
}

void renewal_sweep(struct app *app)
{
    struct sweep s = {app, app_now(app)};
    int64_t before = renew_before(app);
    if (before > 0 &&
        storage_renewal_candidates(app->st, s.now + before, RENEWAL_BATCH, schedule, &s) != ST_OK)
        log_warn("event=renewal_sweep_failed step=candidates");
    /* Errors reported since a few passes ago are acted on at once; older ones (the scheduler
     * was down) at the attempt's deadline. The window bounds the history rows looked at. */
    int64_t window = 10 * config_get_int(app->cfg, "scheduler_interval");
    if (window < 300)
        window = 300;
    if (window > 3600)
        window = 3600;
    if (storage_renewal_due(app->st, s.now, s.now - window, RENEWAL_BATCH, advance, &s) != ST_OK)
        log_warn("event=renewal_sweep_failed step=due");
}
