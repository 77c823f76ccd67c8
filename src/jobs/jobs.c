/*
 * The scheduler thread: the re-authentication policy and identity renewal on every tick, and
 * once an hour the
 * retention of everything that grows with traffic (command history, audit events, sign-in
 * failure windows, SCEP challenges, unbound session tokens; pending federated sign-ins are
 * pruned each time one is added, see storage_oidc_pending_add).
 */
#include "jobs/jobs.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "auth/reauth.h"
#include "core/log.h"
#include "core/mem.h"
#include "mdm/renewal.h"
#include "mdm/inventory.h"

struct jobs {
    struct app *app;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    int stopping;
    int64_t last_prune;
};

#define DAY 86400
/* Audit rows deleted per statement: small enough that no delete holds the write lock long. */
#define AUDIT_PRUNE_BATCH 5000

static int jobs_stopping(jobs *j)
{
    pthread_mutex_lock(&j->lock);
    int s = j->stopping;
    pthread_mutex_unlock(&j->lock);
    return s;
}

/* audit_retention, in batches so that requests writing audit rows meanwhile are not held up. */
static void prune_audit(jobs *j, int64_t now)
{
    int64_t before = now - config_get_int(j->app->cfg, "audit_retention");
    int64_t deleted = 0, total = 0;
    do {
        if (storage_audit_prune(j->app->st, before, AUDIT_PRUNE_BATCH, &deleted) != 0) {
            log_warn("event=audit_prune_failed");
            break;
        }
        total += deleted;
    } while (deleted == AUDIT_PRUNE_BATCH && !jobs_stopping(j));
    if (total > 0)
        log_info("event=audit_pruned deleted=%lld before=%lld", (long long)total,
                 (long long)before);
}

static void prune(jobs *j)
{
    struct app *app = j->app;
    int64_t now = app_now(app), deleted = 0;
    int64_t before = now - config_get_int(app->cfg, "history_retention");
    if (storage_history_prune(app->st, before, &deleted) == 0 && deleted > 0)
        log_info("event=history_pruned deleted=%lld", (long long)deleted);
    prune_audit(j, now);
    /* Sign-in failure windows last minutes; a day is plenty for any configured window. */
    if (storage_failure_prune(app->st, now - DAY, &deleted) == 0 && deleted > 0)
        log_info("event=signin_failures_pruned deleted=%lld", (long long)deleted);
    /* A SCEP challenge is useless once expired; a day's margin keeps recent ones for audit. */
    if (storage_challenge_prune(app->st, now - DAY, &deleted) == 0 && deleted > 0)
        log_info("event=scep_challenges_pruned deleted=%lld", (long long)deleted);
    /* An unbound token expires after enroll_token_ttl (auth/session.c); bound ones are kept
     * (CheckOut and the re-authentication policy read them). */
    before = now - config_get_int(app->cfg, "enroll_token_ttl") - DAY;
    if (storage_session_prune_unbound(app->st, before, &deleted) == 0 && deleted > 0)
        log_info("event=sessions_pruned deleted=%lld", (long long)deleted);
}

void jobs_run_once(struct app *app)
{
    reauth_sweep(app);
    renewal_sweep(app);   /* identity renewal (mdm/renewal.h) */
    inventory_sweep(app); /* the inventory rounds that are due (mdm/inventory.h) */
}

static void *jobs_main(void *arg)
{
    jobs *j = arg;
    pthread_mutex_lock(&j->lock);
    while (!j->stopping) {
        pthread_mutex_unlock(&j->lock);
        jobs_run_once(j->app);
        if (app_now(j->app) - j->last_prune >= 3600) {
            prune(j);
            j->last_prune = app_now(j->app);
        }
        pthread_mutex_lock(&j->lock);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += config_get_int(j->app->cfg, "scheduler_interval");
        while (!j->stopping && pthread_cond_timedwait(&j->wake, &j->lock, &until) != ETIMEDOUT)
            ;
    }
    pthread_mutex_unlock(&j->lock);
    return NULL;
}

jobs *jobs_start(struct app *app)
{
    jobs *j = xcalloc(1, sizeof(*j));
    j->app = app;
    pthread_mutex_init(&j->lock, NULL);
    pthread_cond_init(&j->wake, NULL);
    if (pthread_create(&j->thread, NULL, jobs_main, j) != 0) {
        free(j);
        return NULL;
    }
    return j;
}

void jobs_stop(jobs *j)
{
    if (j == NULL)
        return;
    pthread_mutex_lock(&j->lock);
    j->stopping = 1;
    pthread_cond_signal(&j->wake);
    pthread_mutex_unlock(&j->lock);
    pthread_join(j->thread, NULL);
    pthread_cond_destroy(&j->wake);
    pthread_mutex_destroy(&j->lock);
    free(j);
}
