/*
 * The push outbox worker (see pusher.h for the contract). Two threads: the worker claims a
 * batch of due rows, hands it to the sender thread to go out as one multiplexed burst, and
 * records the outcomes, repeating while rows are due (storage work for the neighbouring
 * batches overlaps the sending); otherwise it sleeps until kicked or for a second (another
 * instance sharing the database, or a retry coming due, is noticed by that poll).
 */
#include "push/pusher.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "app.h"
#include "core/fs.h"
#include "core/log.h"
#include "core/mem.h"
#include "crypto/pki.h"
#include "storage/storage.h"
#include "webhook/webhook.h"

#define PUSHER_LEASE 120         /* seconds a claim is ours; longer than any batch can take */
#define PUSHER_POLL_MS 1000      /* idle poll: retries coming due, other instances' rows */
#define PUSHER_SWEEP_EVERY 60    /* seconds (server clock) between re-push sweeps */
#define PUSHER_CERT_WARN_DAYS 30 /* warn this long before the push certificate expires */
/*
 * After a wake-up from idle, wait this long before claiming, so that a burst of commands for
 * one device (an admin script enqueuing five) costs one push instead of two: the first
 * command's push would otherwise be in flight while the others arrive.
 */
#define PUSHER_COALESCE_MS 200

struct pusher {
    struct app *app;
    push_client *client;
    pthread_t thread;
    int started;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int kicked;   /* under lock: 1 = coalesce first, 2 = claim at once */
    int stopping; /* under lock */
    /* The sender thread (see pusher_sender), under lock: */
    pthread_t sender;
    int sender_started, sender_quit;
    pthread_cond_t send_cond;
    struct pusher_batch *sending; /* handed over to be sent; NULL once sent */
    char owner[160];
    int batch;
    uint64_t rnd;
    int64_t next_sweep, next_cert_check;
    _Atomic uint64_t sent, retried, dead, dropped, storage_errors;
};

/* One claimed row, its message and its result, owning copies of the strings. */
struct pusher_row {
    char *id, *token, *magic, *topic;
    int attempts;
    int64_t bulk;
};

struct pusher_batch {
    struct pusher_row *rows;
    struct push_msg *msgs;
    st_push_result *res;
    int n, cap;
    int64_t expiration;
    const char *default_topic; /* the push certificate's, for rows without their own */
    long send_ms;
};

static int pusher_stopping(struct pusher *p)
{
    pthread_mutex_lock(&p->lock);
    int stop = p->stopping;
    pthread_mutex_unlock(&p->lock);
    return stop;
}

static uint32_t pusher_rand(struct pusher *p)
{
    /* xorshift64*: jitter only, no security role. */
    p->rnd ^= p->rnd >> 12;
    p->rnd ^= p->rnd << 25;
    p->rnd ^= p->rnd >> 27;
    return (uint32_t)((p->rnd * 2685821657736338717ULL) >> 32);
}

static int pusher_on_claim(const st_push *sp, void *ctx)
{
    struct pusher_batch *b = ctx;
    if (b->n >= b->cap)
        return 1;
    struct pusher_row *r = &b->rows[b->n];
    r->id = xstrdup(sp->enrollment_id);
    r->token = xstrdup(sp->push_token);
    r->magic = xstrdup(sp->push_magic ? sp->push_magic : "");
    /* A device names its topic at Authenticate; rows from before that column was filled (or
     * enrolled by another tool) fall back to the certificate's single topic. */
    const char *topic = sp->topic && sp->topic[0] ? sp->topic : b->default_topic;
    r->topic = xstrdup(topic ? topic : "");
    r->attempts = sp->attempts;
    r->bulk = sp->bulk;
    b->msgs[b->n] = (struct push_msg){
        .token = r->token, .magic = r->magic, .topic = r->topic, .expiration = b->expiration};
    b->n++;
    return 0;
}

static void pusher_batch_clear(struct pusher_batch *b)
{
    for (int i = 0; i < b->n; i++) {
        free(b->rows[i].id);
        free(b->rows[i].token);
        free(b->rows[i].magic);
        free(b->rows[i].topic);
    }
    b->n = 0;
}

/* Decides each row's outcome from its answer and logs the ones that need attention. */
static void pusher_outcomes(struct pusher *p, struct pusher_batch *b, int64_t now, int *counts)
{
    for (int i = 0; i < b->n; i++) {
        struct pusher_row *r = &b->rows[i];
        struct push_msg *m = &b->msgs[i];
        st_push_result *res = &b->res[i];
        char th[9];
        *res = (st_push_result){.enrollment_id = r->id, .push_token = r->token, .bulk = r->bulk};
        enum push_verdict v = push_classify(m->status, m->reason);
        if (v == PUSH_RETRY && r->attempts + 1 >= PUSHER_MAX_ATTEMPTS)
            v = PUSH_DROP;
        if (v != PUSH_OK)
            log_short_hash(r->token, strlen(r->token), th);
        switch (v) {
        case PUSH_OK:
            res->outcome = ST_PUSH_SENT;
            log_debug("event=push_sent enrollment=%s apns_id=%s", r->id, m->apns_id);
            break;
        case PUSH_RETRY:
            res->outcome = ST_PUSH_RETRY;
            res->attempts = r->attempts + 1;
            res->due_at = now + push_backoff(res->attempts, pusher_rand(p));
            log_info("event=push_retry enrollment=%s token=%s status=%d reason=\"%s\" attempt=%d "
                     "due_in=%" PRId64,
                     r->id, th, m->status, m->reason, res->attempts, res->due_at - now);
            break;
        case PUSH_DEAD:
            res->outcome = ST_PUSH_DEAD;
            log_warn("event=push_token_dead enrollment=%s token=%s status=%d reason=\"%s\"", r->id,
                     th, m->status, m->reason);
            /* The device can no longer be woken until it sends a new TokenUpdate: worth telling
             * whoever watches the fleet. */
            webhook_emit(p->app, "push.token_dead",
                         (const char *const[]){"enrollment_id", r->id, "reason", m->reason, NULL});
            break;
        case PUSH_DROP:
            res->outcome = ST_PUSH_DROP;
            log_warn("event=push_dropped enrollment=%s token=%s status=%d reason=\"%s\" "
                     "attempts=%d",
                     r->id, th, m->status, m->reason, r->attempts + 1);
            break;
        }
        counts[v]++;
    }
}

/* Claims up to b->cap due rows into b; returns how many (-1 on storage error). */
static int pusher_claim(struct pusher *p, struct pusher_batch *b)
{
    struct app *app = p->app;
    int64_t now = app_now(app);
    int64_t exp = config_get_int(app->cfg, "apns_expiration");
    b->expiration = exp > 0 ? now + exp : 0;
    b->default_topic = app->topic;
    int claimed = 0;
    int rc = storage_push_claim(app->st, p->owner, now, PUSHER_LEASE, b->cap, pusher_on_claim, b,
                                &claimed);
    if (rc != ST_OK) {
        atomic_fetch_add(&p->storage_errors, 1);
        pusher_batch_clear(b);
        return -1;
    }
    return b->n;
}

/* Records the answers of a sent batch (one transaction) and empties it. */
static void pusher_record(struct pusher *p, struct pusher_batch *b)
{
    struct app *app = p->app;
    int counts[4] = {0};
    int64_t now = app_now(app);
    pusher_outcomes(p, b, now, counts);
    int rc = storage_push_done(app->st, p->owner, now, b->res, (size_t)b->n);
    if (rc != ST_OK) {
        /* The rows stay leased to us; when the lease expires they are sent again. */
        atomic_fetch_add(&p->storage_errors, 1);
        log_error("event=push_record_failed n=%d rc=%d", b->n, rc);
    }
    atomic_fetch_add(&p->sent, (uint64_t)counts[PUSH_OK]);
    atomic_fetch_add(&p->retried, (uint64_t)counts[PUSH_RETRY]);
    atomic_fetch_add(&p->dead, (uint64_t)counts[PUSH_DEAD]);
    atomic_fetch_add(&p->dropped, (uint64_t)counts[PUSH_DROP]);
    log_info("event=push_batch n=%d sent=%d retry=%d dead=%d dropped=%d send_ms=%ld", b->n,
             counts[PUSH_OK], counts[PUSH_RETRY], counts[PUSH_DEAD], counts[PUSH_DROP], b->send_ms);
    pusher_batch_clear(b);
}

/* Gives back claimed rows that were never sent (stopping): due again now, attempts unchanged. */
static void pusher_release(struct pusher *p, struct pusher_batch *b)
{
    int64_t now = app_now(p->app);
    for (int i = 0; i < b->n; i++)
        b->res[i] = (st_push_result){.enrollment_id = b->rows[i].id,
                                     .push_token = b->rows[i].token,
                                     .outcome = ST_PUSH_UNSENT,
                                     .attempts = b->rows[i].attempts,
                                     .bulk = b->rows[i].bulk};
    if (b->n > 0 && storage_push_done(p->app->st, p->owner, now, b->res, (size_t)b->n) != ST_OK)
        atomic_fetch_add(&p->storage_errors, 1);
    pusher_batch_clear(b);
}

/*
 * The sender thread: sends each batch handed over by the worker and hands it back. Sending
 * runs here so that the worker can record the previous batch and claim the next one (storage
 * work) while this batch is on the wire: the two overlap instead of adding up.
 */
static void *pusher_sender(void *arg)
{
    struct pusher *p = arg;
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (p->sending == NULL && !p->sender_quit)
            pthread_cond_wait(&p->send_cond, &p->lock);
        if (p->sending == NULL)
            break;
        struct pusher_batch *b = p->sending;
        pthread_mutex_unlock(&p->lock);
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        push_send(p->client, b->msgs, (size_t)b->n);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        b->send_ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
        pthread_mutex_lock(&p->lock);
        p->sending = NULL;
        pthread_cond_broadcast(&p->send_cond);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

static void send_begin(struct pusher *p, struct pusher_batch *b)
{
    pthread_mutex_lock(&p->lock);
    p->sending = b;
    pthread_cond_broadcast(&p->send_cond);
    pthread_mutex_unlock(&p->lock);
}

static void send_wait(struct pusher *p)
{
    pthread_mutex_lock(&p->lock);
    while (p->sending != NULL)
        pthread_cond_wait(&p->send_cond, &p->lock);
    pthread_mutex_unlock(&p->lock);
}

/*
 * Sends what is due, batch after batch, with storage work overlapping the sending: while
 * batch k is on the wire, batch k-1 is recorded and batch k+1 claimed. Returns when nothing
 * more is due or the pusher is stopping; every batch it sent is recorded, and rows claimed but
 * not sent are given back.
 */
static void pusher_drain(struct pusher *p, struct pusher_batch *bufs[3])
{
    struct pusher_batch *cur = bufs[0], *next = bufs[1], *prev = bufs[2];
    if (pusher_claim(p, cur) <= 0)
        return;
    for (;;) {
        int full = cur->n == cur->cap;
        send_begin(p, cur);
        if (prev->n > 0)
            pusher_record(p, prev);
        if (full && !pusher_stopping(p))
            pusher_claim(p, next);
        send_wait(p);
        struct pusher_batch *t = prev;
        prev = cur;
        cur = next;
        next = t;
        if (cur->n == 0 || pusher_stopping(p))
            break;
    }
    pusher_record(p, prev);
    pusher_release(p, cur);
}

static void pusher_housekeeping(struct pusher *p)
{
    struct app *app = p->app;
    int64_t now = app_now(app);
    if (now >= p->next_sweep) {
        p->next_sweep = now + PUSHER_SWEEP_EVERY;
        int64_t queued = 0;
        int64_t interval = config_get_int(app->cfg, "repush_interval");
        if (storage_push_sweep(app->st, now - interval, now, &queued) != ST_OK)
            atomic_fetch_add(&p->storage_errors, 1);
        else if (queued > 0)
            log_info("event=push_repush queued=%" PRId64 " silent_for=%" PRId64, queued, interval);
    }
    if (now >= p->next_cert_check && app->push_not_after > 0) {
        p->next_cert_check = now + 24 * 3600;
        int64_t left = app->push_not_after - now;
        if (left < PUSHER_CERT_WARN_DAYS * 86400)
            log_warn("event=push_certificate_expiring topic=%s days_left=%" PRId64
                     " not_after=%" PRId64,
                     app->topic, left / 86400, app->push_not_after);
    }
}

static void *pusher_main(void *arg)
{
    struct pusher *p = arg;
    struct pusher_batch store[3] = {{0}}, *bufs[3];
    for (int i = 0; i < 3; i++) {
        store[i].cap = p->batch;
        store[i].rows = xcalloc((size_t)p->batch, sizeof(*store[i].rows));
        store[i].msgs = xcalloc((size_t)p->batch, sizeof(*store[i].msgs));
        store[i].res = xcalloc((size_t)p->batch, sizeof(*store[i].res));
        bufs[i] = &store[i];
    }
    for (;;) {
        pthread_mutex_lock(&p->lock);
        int stop = p->stopping;
        p->kicked = 0;
        pthread_mutex_unlock(&p->lock);
        if (stop)
            break;
        pusher_drain(p, bufs);
        pusher_housekeeping(p);
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += PUSHER_POLL_MS / 1000;
        pthread_mutex_lock(&p->lock);
        while (!p->kicked && !p->stopping) {
            if (pthread_cond_timedwait(&p->cond, &p->lock, &ts) == ETIMEDOUT)
                break;
        }
        int coalesce = p->kicked == 1 && !p->stopping;
        pthread_mutex_unlock(&p->lock);
        if (coalesce) {
            struct timespec d = {0, PUSHER_COALESCE_MS * 1000000L};
            nanosleep(&d, NULL);
        }
    }
    for (int i = 0; i < 3; i++) {
        free(store[i].rows);
        free(store[i].msgs);
        free(store[i].res);
    }
    return NULL;
}

pusher *pusher_start_with(struct app *app, push_client *client)
{
    struct pusher *p = xcalloc(1, sizeof(*p));
    p->app = app;
    p->client = client;
    p->batch = (int)config_get_int(app->cfg, "push_batch");
    if (p->batch <= 0)
        p->batch = 1000;
    char host[64] = "host";
    gethostname(host, sizeof(host) - 1);
    host[sizeof(host) - 1] = '\0';
    uint8_t rnd[8];
    crypto_random(rnd, sizeof(rnd));
    memcpy(&p->rnd, rnd, sizeof(p->rnd));
    p->rnd |= 1;
    /* Unique per process: a restarted instance must not mistake its predecessor's leases. */
    snprintf(p->owner, sizeof(p->owner), "%s:%ld:%08x", host, (long)getpid(), pusher_rand(p));
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&p->cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->send_cond, NULL);
    if (pthread_create(&p->sender, NULL, pusher_sender, p) != 0) {
        log_error("event=push_worker_failed err=pthread_create");
        pusher_stop(p);
        return NULL;
    }
    p->sender_started = 1;
    if (pthread_create(&p->thread, NULL, pusher_main, p) != 0) {
        log_error("event=push_worker_failed err=pthread_create");
        pusher_stop(p);
        return NULL;
    }
    p->started = 1;
    log_info("event=push_worker_started owner=%s backend=%s batch=%d", p->owner,
             push_client_name(client), p->batch);
    return p;
}

pusher *pusher_start(struct app *app, char *err, size_t err_len)
{
    const char *url = config_get(app->cfg, "apns_url");
    push_client *client = NULL;
    if (strncmp(url, "file:", 5) == 0) {
        client = push_sink_new(url + 5, err, err_len);
    } else {
        char *cert_path = xasprintf("%s/%s", config_data_dir(app->cfg), DATA_PUSH_CERT);
        char *key_path = xasprintf("%s/%s", config_data_dir(app->cfg), DATA_PUSH_KEY);
        char *cert = fs_read_file(cert_path, NULL), *key = fs_read_file(key_path, NULL);
        if (cert == NULL || key == NULL) {
            snprintf(err, err_len, "cannot read %s", cert ? key_path : cert_path);
        } else {
            struct push_apns_options o = {
                .url = url,
                .cert_pem = cert,
                .key_pem = key,
                .ca_file = config_get(app->cfg, "apns_ca_file"),
                .max_streams = (int)config_get_int(app->cfg, "push_streams"),
                .timeout_ms = (int)config_get_int(app->cfg, "apns_timeout") * 1000,
                .proxy = config_get(app->cfg, "apns_proxy")};
            client = push_apns_new(&o, err, err_len);
        }
        if (key != NULL)
            memset(key, 0, strlen(key));
        free(cert);
        free(key);
        free(cert_path);
        free(key_path);
    }
    if (client == NULL)
        return NULL;
    pusher *p = pusher_start_with(app, client);
    if (p == NULL)
        snprintf(err, err_len, "cannot start the push worker thread");
    return p;
}

void pusher_stop(pusher *p)
{
    if (p == NULL)
        return;
    if (p->started) {
        pthread_mutex_lock(&p->lock);
        p->stopping = 1;
        pthread_cond_signal(&p->cond);
        pthread_mutex_unlock(&p->lock);
        pthread_join(p->thread, NULL);
    }
    if (p->sender_started) { /* idle now: the worker waits for every batch it hands over */
        pthread_mutex_lock(&p->lock);
        p->sender_quit = 1;
        pthread_cond_broadcast(&p->send_cond);
        pthread_mutex_unlock(&p->lock);
        pthread_join(p->sender, NULL);
    }
    push_client_free(p->client);
    pthread_cond_destroy(&p->send_cond);
    pthread_cond_destroy(&p->cond);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

static void pusher_wake(pusher *p, int how)
{
    if (p == NULL)
        return;
    pthread_mutex_lock(&p->lock);
    if (p->kicked < how)
        p->kicked = how;
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

void pusher_kick(pusher *p)
{
    pusher_wake(p, 1);
}

void pusher_metrics(pusher *p, buf *out)
{
    if (p == NULL)
        return;
    int64_t pending = 0;
    storage_push_pending(p->app->st, &pending);
    buf_printf(out,
               "# HELP orchard_pushes_total MDM pushes by outcome.\n"
               "# TYPE orchard_pushes_total counter\n"
               "orchard_pushes_total{outcome=\"sent\"} %" PRIu64 "\n"
               "orchard_pushes_total{outcome=\"retry\"} %" PRIu64 "\n"
               "orchard_pushes_total{outcome=\"dead\"} %" PRIu64 "\n"
               "orchard_pushes_total{outcome=\"dropped\"} %" PRIu64 "\n"
               "# HELP orchard_push_outbox Pushes waiting: outbox rows and devices bulk pushes "
               "have yet to reach.\n"
               "# TYPE orchard_push_outbox gauge\norchard_push_outbox %" PRId64 "\n",
               atomic_load(&p->sent), atomic_load(&p->retried), atomic_load(&p->dead),
               atomic_load(&p->dropped), pending);
}

int push_enrollment(struct app *app, const char *enrollment_id)
{
    int rc = storage_push_enqueue(app->st, enrollment_id, app_now(app));
    if (rc == ST_OK)
        pusher_kick(app->pusher);
    return rc;
}

int push_filter(struct app *app, int scope, const char *value, int64_t *queued)
{
    int rc = storage_push_enqueue_filter(app->st, scope, value, app_now(app), queued);
    /* A bulk push is one burst already: nothing to gain from waiting for more. */
    if (rc == ST_OK && *queued > 0)
        pusher_wake(app->pusher, 2);
    return rc;
}
