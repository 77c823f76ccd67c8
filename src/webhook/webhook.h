/*
 * Webhooks (docs/WEBHOOKS.md). An event is written to storage when it happens (webhook_emit:
 * any thread, any process — the CLI too — and a no-op unless `webhook_url` is set); the delivery
 * thread of `orchard serve` claims the waiting events under a lease, oldest first, and POSTs each
 * to the receiver, signed with HMAC-SHA256, retrying failures with a jittered backoff. So events
 * survive restarts and receiver outages, and instances sharing a database never send one event
 * at the same time. Delivery is at least once: receivers deduplicate on the event id.
 */
#ifndef ORCHARD_WEBHOOK_H
#define ORCHARD_WEBHOOK_H

#include <stddef.h>

#include "core/buf.h"
#include "core/config.h"

struct app;
typedef struct webhooks webhooks;

#define WEBHOOK_MIN_SECRET 16   /* characters */
#define WEBHOOK_MAX_ATTEMPTS 24 /* 10 s, 1 min, 5 min, 30 min, then hourly: about a day */

/* 1 if url may receive webhooks: https://, or http:// to a loopback address. */
int webhook_url_allowed(const char *url);
/* Checks webhook_url and webhook_secret: 0 (also when webhooks are off), or -1 with a message
 * naming the key at fault. */
int webhook_check_config(const config *cfg, char *err, size_t err_len);
/* Starts the delivery thread if webhook_url is set (NULL otherwise, or if it cannot start:
 * *err is then non-empty). */
webhooks *webhooks_start(struct app *app, char *err, size_t err_len);
/* Finishes the delivery in progress, gives back the events claimed but not sent, stops the
 * thread and frees everything. NULL is fine. */
void webhooks_stop(webhooks *w);
/* Prometheus lines: delivery outcomes and events waiting. Nothing when w is NULL. */
void webhooks_metrics(struct app *app, webhooks *w, buf *out);

/*
 * Records an event of `type` whose data is the JSON object built from kv, a NULL-terminated
 * list of key, value string pairs (a NULL value is skipped), and wakes the delivery thread.
 * Does nothing unless webhook_url is set; failures to store are logged, never fatal.
 */
void webhook_emit(struct app *app, const char *type, const char *const *kv);

#endif
