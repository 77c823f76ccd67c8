/*
 * The push service of `orchard serve`: the outbox worker thread and the calls that feed it.
 *
 * Pushes are never sent from a request thread. A trigger (a command enqueued, an admin push,
 * the re-push sweeper) only writes a row to the durable outbox in storage, and a bulk push (a
 * filter) one bulk-push record, and wakes the worker; the worker claims due rows, then pages of
 * a bulk push, in batches under a lease (storage.h), sends each batch over the push client
 * (push.h) and records every outcome: sent rows are deleted, transient
 * failures come back with a jittered backoff (30 s, 2 m, 8 m, 30 m ...; dropped after
 * PUSHER_MAX_ATTEMPTS), permanent ones (410 Unregistered, BadDeviceToken,
 * DeviceTokenNotForTopic) mark the token dead until the device's next TokenUpdate.
 *
 * So a push survives a restart (the row stays), several instances sharing a database never
 * send one row twice at once (the lease), and five commands enqueued in a row cost one push
 * (one row per enrollment).
 *
 * Every minute the worker also runs the re-push sweeper: enrollments with pending commands
 * that have been neither seen nor pushed for `repush_interval` (a device that answered NotNow
 * and went quiet, a push APNs dropped) get a row.
 */
#ifndef ORCHARD_PUSHER_H
#define ORCHARD_PUSHER_H

#include <stdint.h>

#include "core/buf.h"
#include "push/push.h"

struct app;
typedef struct pusher pusher;

#define PUSHER_MAX_ATTEMPTS 10 /* about 4.5 h of retries, then the sweeper takes over */

/*
 * Starts the worker with a client built from the configuration (apns_url, apns_ca_file and
 * the push identity in the data directory; `apns_url = file:PATH` selects the file sink).
 * Returns NULL with a message in err if the client cannot be built.
 */
pusher *pusher_start(struct app *app, char *err, size_t err_len);
/*
 * Same, with a client the caller built (takes ownership); for tests and benchmarks.
 */
pusher *pusher_start_with(struct app *app, push_client *client);
/* Lets the batch in flight finish, stops the thread and frees everything. NULL is fine. */
void pusher_stop(pusher *p);
/* Wakes the worker now (something was enqueued). NULL is fine. Any thread. */
void pusher_kick(pusher *p);
/* Prometheus lines: counters of outcomes, outbox size. NULL p prints nothing. */
void pusher_metrics(pusher *p, buf *out);

/*
 * Enqueues a push to one enrollment and wakes the worker. Returns 0, ST_ENOTFOUND,
 * ST_ECONFLICT (no live push token, or unenrolled) or ST_ERROR (storage.h codes).
 */
int push_enrollment(struct app *app, const char *enrollment_id);
/* Bulk: scope and value as storage_push_enqueue_filter. Fills *queued. */
int push_filter(struct app *app, int scope, const char *value, int64_t *queued);

#endif
