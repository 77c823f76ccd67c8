/*
 * The durable-job worker (jobs/worker.h): claim a job, work it batch by batch, each batch in one
 * transaction with its progress, give it back when stopping. The reconciliation itself is
 * mdm/reconcile.c's (lib_reconcile_enrollment); this file only decides what runs when.
 */
#include "jobs/worker.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/mem.h"
#include "crypto/pki.h"
#include "mdm/library.h"
#include "push/pusher.h"

/* Other instances' jobs are found by polling this often (a local submit wakes at once). */
#define JOB_POLL_SECONDS 1
/* Finished jobs stay visible (GET /api/v1/jobs/{id}) this long. */
#define JOB_RETENTION (7 * 86400)
/* A batch that fails (a broken transaction, a PostgreSQL deadlock victim) is tried this many
 * times before the job is given back and tried again later. */
#define JOB_BATCH_ATTEMPTS 3

struct job_worker {
    struct app *app;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    int stopping, kicked, started;
    char owner[160];
    int64_t last_prune;
};

/* Unique per process, like the push worker's: a restarted instance must not take its
 * predecessor's lease for its own (the job waits for the lease to expire instead). */
static void make_owner(char *out, size_t n)
{
    char host[64] = "host";
    gethostname(host, sizeof(host) - 1);
    host[sizeof(host) - 1] = '\0';
    uint32_t rnd = 0;
    crypto_random(&rnd, sizeof(rnd));
    snprintf(out, n, "%s:%ld:%08x", host, (long)getpid(), rnd);
}

int job_submit_reconcile(struct app *app, int scope, const char *value, int item_kind,
                         int64_t item_id, const char *origin, int64_t *id)
{
    st_job j = {.kind = "reconcile",
                .scope = scope,
                .value = (char *)(value ? value : ""),
                .item_kind = item_kind,
                .item_id = item_id,
                .origin = (char *)origin,
                .created_at = app_now(app)};
    int rc = storage_job_add(app->st, &j);
    *id = rc == ST_OK ? j.id : 0;
    if (rc == ST_OK)
        job_worker_kick(app->job_worker);
    return rc;
}

/* ---- one job ---- */

/* A user's or a domain's job ends with one bulk push (push/pusher.h) instead of an outbox row
 * per enrollment: the devices of the filter are read a page at a time when the push is sent,
 * about 1 µs of storage each instead of a row written, claimed and deleted. It may wake a device
 * of the filter that got nothing (already installed); a wake with an empty queue is harmless.
 * Other jobs push each enrollment that got a command. */
static int bulk_push_scope(const st_job *j)
{
    return j->scope == ST_JOB_USER || j->scope == ST_JOB_DOMAIN;
}

struct batch {
    struct app *app;
    lib_batch *lib;
    struct lib_reconcile_stats stats;
    int failed;
    char *last; /* the id of the last enrollment worked */
};

static int batch_one(const st_enrollment *e, void *ctx)
{
    struct batch *b = ctx;
    if (lib_reconcile_enrollment(b->app, b->lib, e, &b->stats) != 0)
        b->failed = 1;
    free(b->last);
    b->last = xstrdup(e->id);
    return b->failed; /* stop: the transaction is lost anyway */
}

enum batch_result { BATCH_DONE, BATCH_EMPTY, BATCH_FAILED, BATCH_LOST };

/*
 * One batch in one transaction: read the next page of the job's enrollments, reconcile each,
 * record the progress (which also proves the lease is still ours), commit. Nothing of it stays
 * unless all of it commits. On BATCH_DONE, b->last is the new cursor.
 */
static enum batch_result run_batch(struct app *app, const char *owner, const st_job *j,
                                   const char *cursor, int limit, int64_t total, struct batch *b)
{
    memset(&b->stats, 0, sizeof(b->stats));
    b->failed = 0;
    if (storage_tx_begin(app->st) != ST_OK)
        return BATCH_FAILED;
    b->lib = lib_batch_new(!bulk_push_scope(j));
    int n = 0;
    int rc = storage_job_page(app->st, j, cursor, limit, batch_one, b, &n);
    lib_batch_free(b->lib);
    b->lib = NULL;
    if (rc == ST_OK && b->failed)
        rc = ST_ERROR;
    if (rc == ST_OK && n == 0) {
        storage_tx_rollback(app->st);
        return BATCH_EMPTY;
    }
    st_job_progress pr = {.id = j->id,
                          .cursor = b->last,
                          .total = total,
                          .done = n,
                          .errors = b->stats.errors,
                          .installs = b->stats.installs,
                          .removals = b->stats.removals};
    if (rc == ST_OK)
        rc = storage_job_progress(app->st, owner, app_now(app), JOB_LEASE, &pr);
    if (rc != ST_OK) {
        storage_tx_rollback(app->st);
        return rc == ST_ECONFLICT ? BATCH_LOST : BATCH_FAILED;
    }
    return storage_tx_commit(app->st) == ST_OK ? BATCH_DONE : BATCH_FAILED;
}

static int stopping(job_worker *w)
{
    if (w == NULL)
        return 0;
    pthread_mutex_lock(&w->lock);
    int s = w->stopping;
    pthread_mutex_unlock(&w->lock);
    return s;
}

/*
 * The end of a job: its bulk push if it has one and enqueued anything (counted over every run of
 * the job, so a job finished after a crash still pushes), then DONE. 1 finished, 0 lost, -1
 * storage (the job is given back and finished by a later run).
 */
static int finish_job(struct app *app, const char *owner, const st_job *j)
{
    st_job now = {0};
    int rc = storage_job_get(app->st, j->id, &now);
    if (rc == ST_OK && bulk_push_scope(j) && now.installs + now.removals > 0) {
        int64_t queued = 0;
        rc = push_filter(app, j->scope, j->value, &queued);
        if (rc == ST_OK)
            log_info("event=job_push job=%lld devices=%lld", (long long)j->id, (long long)queued);
    }
    if (rc == ST_OK)
        rc = storage_job_finish(app->st, owner, j->id, ST_JOB_DONE, app_now(app));
    if (rc == ST_OK)
        log_info("event=job_finished job=%lld done=%lld installs=%lld removals=%lld errors=%lld",
                 (long long)j->id, (long long)now.done, (long long)now.installs,
                 (long long)now.removals, (long long)now.errors);
    else if (rc != ST_ECONFLICT)
        storage_job_release(app->st, owner, j->id);
    st_job_cleanup(&now);
    return rc == ST_OK ? 1 : rc == ST_ECONFLICT ? 0 : -1;
}

/*
 * Works a claimed job until it is finished, lost, failing or the worker stops. Returns 1 when
 * the job finished, 0 when it was left (given back or lost), -1 on storage failure.
 */
static int run_job(struct app *app, job_worker *w, const char *owner, st_job *j)
{
    int limit = (int)config_get_int(app->cfg, "job_batch");
    int64_t total = j->total;
    if (total < 0 && storage_job_count(app->st, j, &total) != ST_OK)
        total = -1; /* recorded with the first batch; unknown is fine meanwhile */
    log_info("event=job_started job=%lld kind=%s owner=%s origin=\"%s\" total=%lld after=\"%s\"",
             (long long)j->id, j->kind, owner, j->origin ? j->origin : "", (long long)total,
             j->cursor ? j->cursor : "");
    char *cursor = xstrdup(j->cursor ? j->cursor : "");
    struct batch b = {.app = app};
    int result = -1;
    for (;;) {
        if (stopping(w)) {
            storage_job_release(app->st, owner, j->id);
            log_info("event=job_released job=%lld after=\"%s\"", (long long)j->id, cursor);
            result = 0;
            break;
        }
        enum batch_result br = BATCH_FAILED;
        for (int attempt = 0; attempt < JOB_BATCH_ATTEMPTS && br == BATCH_FAILED; attempt++) {
            if (attempt > 0)
                usleep(100000u << (2 * attempt)); /* 0.4 s, 1.6 s */
            br = run_batch(app, owner, j, cursor, limit, total, &b);
        }
        if (br == BATCH_EMPTY) {
            result = finish_job(app, owner, j);
            break;
        }
        if (br == BATCH_LOST) {
            log_warn("event=job_lease_lost job=%lld owner=%s after=\"%s\"", (long long)j->id, owner,
                     cursor);
            result = 0;
            break;
        }
        if (br == BATCH_FAILED) {
            log_error("event=job_batch_failed job=%lld after=\"%s\" action=retry_later",
                      (long long)j->id, cursor);
            storage_job_release(app->st, owner, j->id);
            break;
        }
        total = -1; /* recorded */
        free(cursor);
        cursor = b.last;
        b.last = NULL;
        log_debug("event=job_batch job=%lld installs=%d removals=%d errors=%d after=\"%s\"",
                  (long long)j->id, b.stats.installs, b.stats.removals, b.stats.errors, cursor);
        if ((b.stats.installs || b.stats.removals) && !bulk_push_scope(j))
            pusher_kick(app->pusher);
    }
    free(b.last);
    free(cursor);
    return result;
}

/* Claims and works jobs until there is none left (or the worker stops). */
static int drain(struct app *app, job_worker *w, const char *owner)
{
    int finished = 0;
    while (!stopping(w)) {
        st_job j;
        int rc = storage_job_claim(app->st, owner, app_now(app), JOB_LEASE, &j);
        if (rc == ST_ENOTFOUND)
            break;
        if (rc != ST_OK)
            return -1;
        rc = strcmp(j.kind, "reconcile") == 0 ? run_job(app, w, owner, &j) : -2;
        if (rc == -2) { /* a kind this build does not know (a newer instance's): leave it */
            storage_job_release(app->st, owner, j.id);
            log_warn("event=job_unknown_kind job=%lld kind=%s", (long long)j.id, j.kind);
        }
        st_job_cleanup(&j);
        if (rc < 0)
            return -1;
        finished += rc;
    }
    return finished;
}

int job_worker_run_once(struct app *app, const char *owner)
{
    return drain(app, NULL, owner);
}

/* ---- the thread ---- */

static void prune(job_worker *w)
{
    int64_t now = app_now(w->app), deleted = 0;
    if (now - w->last_prune < 3600)
        return;
    w->last_prune = now;
    if (storage_job_prune(w->app->st, now - JOB_RETENTION, &deleted) == ST_OK && deleted > 0)
        log_info("event=jobs_pruned deleted=%lld", (long long)deleted);
}

static void *worker_main(void *arg)
{
    job_worker *w = arg;
    for (;;) {
        prune(w);
        int rc = drain(w->app, w, w->owner);
        pthread_mutex_lock(&w->lock);
        if (w->stopping) {
            pthread_mutex_unlock(&w->lock);
            break;
        }
        /* After a storage failure wait the full poll before trying again, even if kicked. */
        if (rc < 0)
            w->kicked = 0;
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += JOB_POLL_SECONDS;
        while (!w->stopping && !w->kicked &&
               pthread_cond_timedwait(&w->wake, &w->lock, &until) != ETIMEDOUT)
            ;
        w->kicked = 0;
        pthread_mutex_unlock(&w->lock);
    }
    return NULL;
}

job_worker *job_worker_start(struct app *app)
{
    job_worker *w = xcalloc(1, sizeof(*w));
    w->app = app;
    make_owner(w->owner, sizeof(w->owner));
    pthread_mutex_init(&w->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->wake, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
        log_error("event=job_worker_failed err=pthread_create");
        pthread_cond_destroy(&w->wake);
        pthread_mutex_destroy(&w->lock);
        free(w);
        return NULL;
    }
    w->started = 1;
    log_info("event=job_worker_started owner=%s batch=%lld", w->owner,
             (long long)config_get_int(app->cfg, "job_batch"));
    return w;
}

void job_worker_kick(job_worker *w)
{
    if (w == NULL)
        return;
    pthread_mutex_lock(&w->lock);
    w->kicked = 1;
    pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->lock);
}

void job_worker_stop(job_worker *w)
{
    if (w == NULL)
        return;
    pthread_mutex_lock(&w->lock);
    w->stopping = 1;
    pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->lock);
    if (w->started)
        pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->wake);
    pthread_mutex_destroy(&w->lock);
    free(w);
}
