/*
 * Webhook events: recording (webhook_emit) and the delivery thread (see webhook.h). One libcurl
 * easy handle is kept for the life of the thread, so deliveries reuse one connection.
 */
#include "webhook/webhook.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "app.h"
#include "core/log.h"
#include "core/mem.h"
#include "crypto/pki.h"
#include "storage/storage.h"

#define WEBHOOK_LEASE 120    /* seconds an event is ours; a batch stops at half of it */
#define WEBHOOK_BATCH 50     /* events claimed at a time */
#define WEBHOOK_POLL_MS 1000 /* idle poll: retries coming due, events from other processes */
#define WEBHOOK_TIMEOUT 10   /* seconds per request */

struct webhooks {
    struct app *app;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int kicked, stopping; /* under lock */
    CURL *curl;
    char owner[160];
    char *url, *secret;
    uint64_t rnd;
    _Atomic uint64_t delivered, retried, dropped;
};

/* ---- configuration ---- */

/* 1 if the host of an http:// URL is a loopback address (plain HTTP never leaves the machine):
 * 127.0.0.0/8 written as an IPv4 address, [::1] or localhost. */
static int http_url_is_loopback(const char *url)
{
    const char *h = url + strlen("http://");
    if (strncmp(h, "[::1]", 5) == 0)
        return strchr(":/?#", h[5]) != NULL;
    size_t n = strcspn(h, ":/?#");
    char host[64];
    if (n == 0 || n >= sizeof host)
        return 0;
    memcpy(host, h, n);
    host[n] = '\0';
    struct in_addr a;
    if (inet_pton(AF_INET, host, &a) == 1)
        return (ntohl(a.s_addr) >> 24) == 127;
    return strcasecmp(host, "localhost") == 0;
}

int webhook_url_allowed(const char *url)
{
    if (strncasecmp(url, "https://", 8) == 0)
        return url[8] != '\0';
    return strncasecmp(url, "http://", 7) == 0 && http_url_is_loopback(url);
}

int webhook_check_config(const config *cfg, char *err, size_t err_len)
{
    const char *url = config_get(cfg, "webhook_url");
    if (url[0] == '\0')
        return 0;
    if (!webhook_url_allowed(url)) {
        snprintf(err, err_len,
                 "webhook_url must be an https:// URL (http:// only to a loopback "
                 "address)");
        return -1;
    }
    if (strlen(config_get(cfg, "webhook_secret")) < WEBHOOK_MIN_SECRET) {
        snprintf(err, err_len,
                 "webhook_secret must be set, %d characters or more, when "
                 "webhook_url is set",
                 WEBHOOK_MIN_SECRET);
        return -1;
    }
    return 0;
}

/* ---- recording ---- */

void webhook_emit(struct app *app, const char *type, const char *const *kv)
{
    if (config_get(app->cfg, "webhook_url")[0] == '\0')
        return;
    json_t *data = json_object();
    for (size_t i = 0; kv[i] != NULL; i += 2) {
        if (kv[i + 1] == NULL)
            continue;
        json_t *v = json_string(kv[i + 1]); /* NULL if not UTF-8 (a device-supplied name) */
        json_object_set_new(data, kv[i], v ? v : json_string("(not UTF-8)"));
    }
    char *text = json_dumps(data, JSON_COMPACT);
    json_decref(data);
    if (text == NULL || storage_webhook_add(app->st, type, text, app_now(app), NULL) != ST_OK)
        log_error("event=webhook_store_failed type=%s", type);
    free(text);
    if (app->webhooks != NULL) {
        pthread_mutex_lock(&app->webhooks->lock);
        app->webhooks->kicked = 1;
        pthread_cond_signal(&app->webhooks->cond);
        pthread_mutex_unlock(&app->webhooks->lock);
    }
}

/* ---- delivery ---- */

/* One claimed event, owning copies of its strings. */
struct event {
    int64_t id, created_at;
    char *type, *data;
    int attempts;
};

struct batch {
    struct event ev[WEBHOOK_BATCH];
    int n;
};

static int on_claim(const st_webhook_event *e, void *ctx)
{
    struct batch *b = ctx;
    if (b->n >= WEBHOOK_BATCH)
        return 1;
    b->ev[b->n++] = (struct event){.id = e->id,
                                   .created_at = e->created_at,
                                   .type = xstrdup(e->type),
                                   .data = xstrdup(e->data),
                                   .attempts = e->attempts};
    return 0;
}

static size_t discard_body(char *p, size_t size, size_t n, void *ctx)
{
    (void)p;
    (void)ctx;
    return size * n;
}

static uint32_t next_rand(struct webhooks *w)
{
    /* xorshift64*: jitter only, no security role. */
    w->rnd ^= w->rnd >> 12;
    w->rnd ^= w->rnd << 25;
    w->rnd ^= w->rnd >> 27;
    return (uint32_t)((w->rnd * 2685821657736338717ULL) >> 32);
}

/* Seconds before attempt `attempts` + 1: 10 s, 1 min, 5 min, 30 min, then hourly, ±20 %. */
static int64_t backoff(struct webhooks *w, int attempts)
{
    static const int64_t steps[] = {10, 60, 300, 1800};
    int64_t base = attempts >= 1 && attempts <= 4 ? steps[attempts - 1] : 3600;
    int64_t spread = base * 2 / 5; /* 40 % wide: -20 % .. +20 % */
    return base - base / 5 + (spread > 0 ? (int64_t)(next_rand(w) % (uint64_t)(spread + 1)) : 0);
}

/* The request body: {"id":…,"type":…,"created_at":…,"data":{…}}; NULL if data is not JSON. */
static char *event_body(const struct event *e)
{
    json_t *data = json_loads(e->data, 0, NULL);
    if (data == NULL)
        return NULL;
    char when[32];
    time_t t = (time_t)e->created_at;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_t *o = json_pack("{s:I, s:s, s:s, s:o}", "id", (json_int_t)e->id, "type", e->type,
                          "created_at", when, "data", data);
    char *body = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    return body;
}

/* POSTs one event; returns the HTTP status (0 when no answer) and describes failures in why. */
static long post_event(struct webhooks *w, const struct event *e, const char *body, char *why,
                       size_t why_len)
{
    char ts[24], hdr[5][160], sig[65];
    snprintf(ts, sizeof ts, "%" PRId64, app_now(w->app));
    buf signed_text;
    buf_init(&signed_text, 0);
    buf_printf(&signed_text, "%s.%s", ts, body);
    crypto_hmac_sha256_hex(w->secret, strlen(w->secret), signed_text.data, signed_text.len, sig);
    buf_cleanup(&signed_text);
    snprintf(hdr[0], sizeof hdr[0], "X-Orchard-Event: %s", e->type);
    snprintf(hdr[1], sizeof hdr[1], "X-Orchard-Delivery: %" PRId64, e->id);
    snprintf(hdr[2], sizeof hdr[2], "X-Orchard-Timestamp: %s", ts);
    snprintf(hdr[3], sizeof hdr[3], "X-Orchard-Signature: sha256=%s", sig);
    snprintf(hdr[4], sizeof hdr[4], "Content-Type: application/json");
    struct curl_slist *headers = curl_slist_append(NULL, "Expect:"); /* no 100-continue wait */
    for (int i = 0; i < 5; i++)
        headers = curl_slist_append(headers, hdr[i]);
    curl_easy_setopt(w->curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(w->curl, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(w->curl, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    long status = 0;
    CURLcode cc = curl_easy_perform(w->curl);
    if (cc == CURLE_OK)
        curl_easy_getinfo(w->curl, CURLINFO_RESPONSE_CODE, &status);
    else
        snprintf(why, why_len, "%s", curl_easy_strerror(cc));
    curl_slist_free_all(headers);
    return status;
}

/* Delivers one claimed event and records the outcome. */
static void deliver(struct webhooks *w, const struct event *e)
{
    struct app *app = w->app;
    char why[256] = "";
    char *body = event_body(e);
    long status = body ? post_event(w, e, body, why, sizeof why) : 0;
    if (body == NULL)
        snprintf(why, sizeof why, "stored data is not JSON");
    free(body);
    int outcome = ST_WEBHOOK_DELIVERED;
    int64_t due = 0;
    if (status >= 200 && status < 300) {
        atomic_fetch_add(&w->delivered, 1);
        log_debug("event=webhook_delivered id=%" PRId64 " type=%s status=%ld", e->id, e->type,
                  status);
    } else if (e->attempts + 1 >= WEBHOOK_MAX_ATTEMPTS) {
        outcome = ST_WEBHOOK_DROP;
        atomic_fetch_add(&w->dropped, 1);
        log_warn("event=webhook_dropped id=%" PRId64 " type=%s status=%ld err=\"%s\" attempts=%d",
                 e->id, e->type, status, why, e->attempts + 1);
    } else {
        outcome = ST_WEBHOOK_RETRY;
        due = app_now(app) + backoff(w, e->attempts + 1);
        atomic_fetch_add(&w->retried, 1);
        log_info("event=webhook_retry id=%" PRId64 " type=%s status=%ld err=\"%s\" attempt=%d "
                 "due_in=%" PRId64,
                 e->id, e->type, status, why, e->attempts + 1, due - app_now(app));
    }
    int rc = storage_webhook_done(app->st, w->owner, e->id, outcome, due, e->attempts + 1);
    if (rc != ST_OK && rc != ST_ENOTFOUND) /* ENOTFOUND: the lease expired, another has it */
        log_error("event=webhook_record_failed id=%" PRId64 " rc=%d", e->id, rc);
}

static int stopping(struct webhooks *w)
{
    pthread_mutex_lock(&w->lock);
    int s = w->stopping;
    pthread_mutex_unlock(&w->lock);
    return s;
}

static int64_t monotonic_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec;
}

/*
 * Claims and delivers one batch; returns how many were claimed. Events left unsent are given
 * back, due now, attempts unchanged: when the thread is stopping, and when half the lease has
 * gone (a receiver timing out on every request must not let the lease expire under us, or
 * another instance would send the same events meanwhile).
 */
static int deliver_batch(struct webhooks *w)
{
    struct app *app = w->app;
    struct batch b = {.n = 0};
    int claimed = 0;
    if (storage_webhook_claim(app->st, w->owner, app_now(app), WEBHOOK_LEASE, WEBHOOK_BATCH,
                              on_claim, &b, &claimed) != ST_OK)
        return 0;
    int64_t started = monotonic_s();
    for (int i = 0; i < b.n; i++) {
        if (stopping(w) || monotonic_s() - started > WEBHOOK_LEASE / 2)
            storage_webhook_done(app->st, w->owner, b.ev[i].id, ST_WEBHOOK_RETRY, app_now(app),
                                 b.ev[i].attempts);
        else
            deliver(w, &b.ev[i]);
        free(b.ev[i].type);
        free(b.ev[i].data);
    }
    return b.n;
}

static void *webhooks_main(void *arg)
{
    struct webhooks *w = arg;
    for (;;) {
        pthread_mutex_lock(&w->lock);
        w->kicked = 0;
        int stop = w->stopping;
        pthread_mutex_unlock(&w->lock);
        if (stop)
            break;
        if (deliver_batch(w) == WEBHOOK_BATCH)
            continue; /* more may be due */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += WEBHOOK_POLL_MS / 1000;
        pthread_mutex_lock(&w->lock);
        while (!w->kicked && !w->stopping)
            if (pthread_cond_timedwait(&w->cond, &w->lock, &ts) == ETIMEDOUT)
                break;
        pthread_mutex_unlock(&w->lock);
    }
    return NULL;
}

static CURL *new_handle(const struct app *app, const char *url)
{
    CURL *h = curl_easy_init();
    if (h == NULL)
        return NULL;
    const char *ca = config_get(app->cfg, "webhook_ca_file");
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, (long)WEBHOOK_TIMEOUT);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 5L);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "orchard-webhook");
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard_body);
    if (ca[0] != '\0')
        curl_easy_setopt(h, CURLOPT_CAINFO, ca);
    return h;
}

webhooks *webhooks_start(struct app *app, char *err, size_t err_len)
{
    err[0] = '\0';
    const char *url = config_get(app->cfg, "webhook_url");
    if (url[0] == '\0' || webhook_check_config(app->cfg, err, err_len) != 0)
        return NULL;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    struct webhooks *w = xcalloc(1, sizeof(*w));
    w->app = app;
    w->url = xstrdup(url);
    w->secret = xstrdup(config_get(app->cfg, "webhook_secret"));
    w->curl = new_handle(app, url);
    uint8_t rnd[8];
    crypto_random(rnd, sizeof rnd);
    memcpy(&w->rnd, rnd, sizeof w->rnd);
    w->rnd |= 1;
    char host[64] = "host";
    gethostname(host, sizeof(host) - 1);
    host[sizeof(host) - 1] = '\0';
    /* Unique per process: a restarted instance must not mistake its predecessor's leases. */
    snprintf(w->owner, sizeof w->owner, "%s:%ld:%08x", host, (long)getpid(), next_rand(w));
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&w->lock, NULL);
    if (w->curl == NULL || pthread_create(&w->thread, NULL, webhooks_main, w) != 0) {
        snprintf(err, err_len, "cannot start the webhook delivery thread");
        pthread_cond_destroy(&w->cond);
        pthread_mutex_destroy(&w->lock);
        curl_easy_cleanup(w->curl);
        free(w->url);
        free(w->secret);
        free(w);
        curl_global_cleanup();
        return NULL;
    }
    log_info("event=webhooks_started owner=%s", w->owner);
    return w;
}

void webhooks_stop(webhooks *w)
{
    if (w == NULL)
        return;
    pthread_mutex_lock(&w->lock);
    w->stopping = 1;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->thread, NULL);
    curl_easy_cleanup(w->curl);
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->lock);
    memset(w->secret, 0, strlen(w->secret));
    free(w->secret);
    free(w->url);
    free(w);
    curl_global_cleanup();
}

void webhooks_metrics(struct app *app, webhooks *w, buf *out)
{
    if (w == NULL)
        return;
    int64_t pending = 0;
    storage_webhook_pending(app->st, &pending);
    buf_printf(out,
               "# HELP orchard_webhook_deliveries_total Webhook delivery attempts by outcome.\n"
               "# TYPE orchard_webhook_deliveries_total counter\n"
               "orchard_webhook_deliveries_total{outcome=\"delivered\"} %" PRIu64 "\n"
               "orchard_webhook_deliveries_total{outcome=\"retry\"} %" PRIu64 "\n"
               "orchard_webhook_deliveries_total{outcome=\"dropped\"} %" PRIu64 "\n"
               "# HELP orchard_webhook_pending Webhook events waiting for delivery.\n"
               "# TYPE orchard_webhook_pending gauge\norchard_webhook_pending %" PRId64 "\n",
               atomic_load(&w->delivered), atomic_load(&w->retried), atomic_load(&w->dropped),
               pending);
}
