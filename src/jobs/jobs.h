/*
 * Background jobs of `orchard serve`: one thread that wakes every `scheduler_interval` and runs
 * the periodic policies — re-authentication (auth/reauth.h) and command-history retention.
 * Every job is safe with several instances sharing a database (compare-and-set transitions,
 * idempotent deletes), so no leader election is needed.
 */
#ifndef ORCHARD_JOBS_H
#define ORCHARD_JOBS_H

#include "app.h"

typedef struct jobs jobs;

/* Starts the thread; NULL on failure. */
jobs *jobs_start(struct app *app);
/* Wakes the thread, waits for the current pass to finish, and frees it. NULL is fine. */
void jobs_stop(jobs *j);
/* Runs one pass now, on the calling thread (tests). */
void jobs_run_once(struct app *app);

#endif
