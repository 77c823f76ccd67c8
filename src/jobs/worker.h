/*
 * Durable jobs of `orchard serve`: work over many enrollments that an admin request asks for
 * and that must not run inside the request. Today that is the library's reconciliation after an
 * assignment, profile or app change (docs/LIBRARY.md): assigning a profile to a domain of
 * 100,000 enrollments is a job, and the API answers 202 with its id at once.
 *
 * A job lives in storage (storage.h "durable jobs"): its filter, its progress in enrollment id
 * order and a lease. One worker thread per instance claims the oldest runnable job and works it
 * in batches of `job_batch` enrollments, each batch in one transaction (storage_tx_begin) that
 * also records the batch's progress and renews the lease, so:
 *  - a batch costs one commit instead of several per enrollment;
 *  - a crash (kill -9) loses at most the batch in flight, which was never committed; the job is
 *    taken over from its last committed batch once the lease (JOB_LEASE) expires, by this
 *    instance after a restart or by another one;
 *  - several instances never work one job at once (the lease), and an instance that lost its
 *    lease rolls its batch back (the progress update fails inside the batch);
 *  - no command is ever enqueued twice: besides the above, the reconciler claims each item with
 *    a compare-and-set on item_state before it enqueues (mdm/reconcile.c).
 * A stopping instance gives its job back between batches, so another continues at once.
 */
#ifndef ORCHARD_JOBS_WORKER_H
#define ORCHARD_JOBS_WORKER_H

#include <stdint.h>

#include "app.h"

/* Seconds a claimed job stays with its instance without a committed batch. */
#define JOB_LEASE 60

/*
 * Records a reconciliation job over the enrollments of scope (enum st_job_scope) and value, or
 * of an item (ST_JOB_ITEM with item_kind, item_id), and wakes this instance's worker. origin
 * says what asked for it ("assignment.add 12"). Fills *id; a job with the same filter that has
 * not started yet is reused. Call it inside the transaction that stores the change (the API
 * does), so that the change and its job are recorded together. Returns 0 or a storage code.
 */
int job_submit_reconcile(struct app *app, int scope, const char *value, int item_kind,
                         int64_t item_id, const char *origin, int64_t *id);

/* Starts the worker thread; NULL if the thread cannot be created. */
job_worker *job_worker_start(struct app *app);
/* Lets the batch in flight commit, gives the job back, stops the thread. NULL is fine. */
void job_worker_stop(job_worker *w);
/* Wakes the worker now (a job was added). NULL is fine. Any thread. */
void job_worker_kick(job_worker *w);

/*
 * Works every runnable job to the end on the calling thread, as owner (tests and benchmarks).
 * Returns the number of jobs finished, or -1 on a storage failure.
 */
int job_worker_run_once(struct app *app, const char *owner);

#endif
