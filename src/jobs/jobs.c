/* The scheduler thread. */
#include "jobs/jobs.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "auth/reauth.h"
#include "core/log.h"
#include "core/mem.h"

struct jobs {
    struct app *app;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    int stopping;
    int64_t last_prune;
};

static void prune_history(struct app *app)
{
    int64_t deleted = 0;
    int64_t before = app_now(app) - config_get_int(app->cfg, "history_retention");
    if (storage_history_prune(app->st, before, &deleted) == 0 && deleted > 0)
        log_info("event=history_pruned deleted=%lld", (long long)deleted);
    /* Sign-in failure windows last minutes; a day is plenty for any configured window. */
    if (storage_failure_prune(app->st, app_now(app) - 86400, &deleted) == 0 && deleted > 0)
        log_info("event=signin_failures_pruned deleted=%lld", (long long)deleted);
}

void jobs_run_once(struct app *app)
{
    reauth_sweep(app);
}

static void *jobs_main(void *arg)
{
    jobs *j = arg;
    pthread_mutex_lock(&j->lock);
    while (!j->stopping) {
        pthread_mutex_unlock(&j->lock);
        jobs_run_once(j->app);
        if (app_now(j->app) - j->last_prune >= 3600) {
            prune_history(j->app);
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
