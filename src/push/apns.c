/*
 * The APNs push backend: HTTP/2 (libnghttp2) over one long-lived TLS connection
 * (crypto/tls_client.h) authenticated with the MDM push certificate, many requests multiplexed
 * as concurrent streams. Apple asks providers to keep connections open rather than reconnect
 * per notification: the connection lives across batches and is only replaced when it fails or
 * the server sends GOAWAY.
 *
 * Why nghttp2 directly and not libcurl's multi interface (which drives the same nghttp2 inside):
 * libcurl 7.88 spends ~70 µs of CPU per transfer here (URL parsing, connection matching, header
 * assembly, per-handle bookkeeping), which caps one worker at ~14k pushes/s; driving the
 * HTTP/2 session ourselves costs a few µs per push. See docs/PUSH.md.
 *
 * One batch = one apns_send() call: start streams up to the concurrency the server allows,
 * write, wait for the socket, read answers, repeat until every message has one.
 *   - An answer (any status) completes its message.
 *   - A stream the server refused before processing it (REFUSED_STREAM, or above GOAWAY's
 *     last stream) is started again, once, on the next connection.
 *   - When the connection fails, every stream in flight completes with status 0 (the worker
 *     retries it with backoff: the server may or may not have acted on it), and the rest of the
 *     batch goes out on a new connection.
 *   - A stream unanswered after timeout_ms is cancelled (status 0, "timeout"); a connection
 *     silent that long is dropped.
 */
#include <inttypes.h>
#include <nghttp2/nghttp2.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
#include "core/mem.h"
#include "core/url.h"
#include "crypto/tls_client.h"
#include "push/push.h"

#define APNS_BODY_MAX 512  /* our request body */
#define APNS_RESP_MAX 512  /* an APNs error body is small JSON; more is cut off */
#define APNS_TOKEN_MAX 200 /* hex digits; device tokens are 32 bytes today */
#define APNS_CONNECT_TIMEOUT_MS 10000
#define APNS_CONNECTS_PER_BATCH 3 /* then the rest of the batch waits for the worker's retry */
#define APNS_FIRST_STREAMS 100    /* in flight before the server's SETTINGS arrive (RFC 9113) */
#define APNS_OUT_HIGH 65536       /* stop serializing frames while this much is unsent */
#define APNS_READ_CHUNK 65536

struct apns_stream {
    struct push_msg *msg; /* NULL while the slot is free */
    int32_t id;
    int64_t started_ms;
    size_t body_len, body_off, resp_len;
    char body[APNS_BODY_MAX];
    char resp[APNS_RESP_MAX];
};

struct apns_client {
    struct push_client base; /* first */
    tls_client *tls;
    char host[256], authority[300], *prefix; /* prefix: the URL's path, "" usually */
    int port, max_streams, timeout_ms;

    /* The connection: all NULL/0 between connections. */
    tls_conn *conn;
    nghttp2_session *h2;
    int settings_seen;
    uint8_t *out;
    size_t out_len, out_cap;
    int64_t last_read_ms;

    /* Stream slots, max_streams of them, and the stack of free ones. */
    struct apns_stream *slots, **free_slots;
    int nfree;

    /* The batch in progress. */
    struct push_msg *msgs;
    size_t n, next, done, active;
    size_t *order; /* the messages to send, in order (malformed ones are answered at once) */
    size_t norder;
    size_t *redo; /* refused messages to start again */
    size_t nredo;
    unsigned char *redone; /* per message: already started again once */
    char conn_err[160];
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int hex_token_ok(const char *t)
{
    size_t n = 0;
    for (; t[n] != '\0'; n++) {
        char ch = t[n];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f')))
            return 0;
    }
    return n > 0 && n <= APNS_TOKEN_MAX && n % 2 == 0;
}

static void slot_release(struct apns_client *c, struct apns_stream *s)
{
    s->msg = NULL;
    c->free_slots[c->nfree++] = s;
    c->active--;
}

/* A message is answered: it counts as done. */
static void msg_done(struct apns_client *c)
{
    c->done++;
}

/* ---- nghttp2 callbacks ------------------------------------------------------------------ */

static ssize_t on_read_body(nghttp2_session *h2, int32_t id, uint8_t *dst, size_t len,
                            uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    (void)h2, (void)id, (void)ud;
    struct apns_stream *s = src->ptr;
    size_t left = s->body_len - s->body_off, n = left < len ? left : len;
    memcpy(dst, s->body + s->body_off, n);
    s->body_off += n;
    if (s->body_off == s->body_len)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static int on_header(nghttp2_session *h2, const nghttp2_frame *f, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
    (void)flags, (void)ud;
    struct apns_stream *s = nghttp2_session_get_stream_user_data(h2, f->hd.stream_id);
    if (s == NULL || s->msg == NULL)
        return 0;
    struct push_msg *m = s->msg;
    if (namelen == 7 && memcmp(name, ":status", 7) == 0 && valuelen == 3) {
        m->status = (value[0] - '0') * 100 + (value[1] - '0') * 10 + (value[2] - '0');
    } else if (namelen == 7 && memcmp(name, "apns-id", 7) == 0) {
        size_t n = valuelen < sizeof(m->apns_id) - 1 ? valuelen : sizeof(m->apns_id) - 1;
        memcpy(m->apns_id, value, n);
        m->apns_id[n] = '\0';
    }
    return 0;
}

static int on_data(nghttp2_session *h2, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                   void *ud)
{
    (void)flags, (void)ud;
    struct apns_stream *s = nghttp2_session_get_stream_user_data(h2, id);
    if (s == NULL || s->msg == NULL)
        return 0;
    size_t room = sizeof(s->resp) - s->resp_len, n = len < room ? len : room;
    memcpy(s->resp + s->resp_len, data, n);
    s->resp_len += n;
    return 0;
}

static int on_frame_recv(nghttp2_session *h2, const nghttp2_frame *f, void *ud)
{
    (void)h2;
    struct apns_client *c = ud;
    if (f->hd.type == NGHTTP2_SETTINGS && !(f->hd.flags & NGHTTP2_FLAG_ACK))
        c->settings_seen = 1;
    if (f->hd.type == NGHTTP2_GOAWAY) {
        size_t n = f->goaway.opaque_data_len < 100 ? f->goaway.opaque_data_len : 100;
        log_info("event=apns_goaway code=%" PRIu32 " last_stream=%" PRId32 " data=\"%.*s\"",
                 f->goaway.error_code, f->goaway.last_stream_id, (int)n,
                 (const char *)f->goaway.opaque_data);
    }
    return 0;
}

static int on_stream_close(nghttp2_session *h2, int32_t id, uint32_t code, void *ud)
{
    struct apns_client *c = ud;
    struct apns_stream *s = nghttp2_session_get_stream_user_data(h2, id);
    if (s == NULL || s->msg == NULL)
        return 0;
    struct push_msg *m = s->msg;
    size_t i = (size_t)(m - c->msgs);
    if (m->status == 0 && code == NGHTTP2_REFUSED_STREAM && !c->redone[i]) {
        /* Never processed by the server: safe to send again, on the next connection. */
        c->redone[i] = 1;
        c->redo[c->nredo++] = i;
    } else {
        if (m->status == 0)
            snprintf(m->reason, sizeof(m->reason), "%s",
                     code == NGHTTP2_CANCEL ? "timeout" : nghttp2_http2_strerror(code));
        else if (m->status != 200)
            push_parse_reason(s->resp, s->resp_len, m->reason, sizeof(m->reason));
        msg_done(c);
    }
    nghttp2_session_set_stream_user_data(h2, id, NULL);
    slot_release(c, s);
    return 0;
}

static nghttp2_session_callbacks *apns_callbacks(void)
{
    nghttp2_session_callbacks *cb;
    if (nghttp2_session_callbacks_new(&cb) != 0)
        return NULL;
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    return cb;
}

/* ---- the connection --------------------------------------------------------------------- */

/* Ends the connection; every stream still in flight completes with status 0 and `why`. */
static void conn_drop(struct apns_client *c, const char *why)
{
    for (int i = 0; i < c->max_streams; i++) {
        struct apns_stream *s = &c->slots[i];
        if (s->msg == NULL)
            continue;
        snprintf(s->msg->reason, sizeof(s->msg->reason), "%.47s", why);
        msg_done(c);
        slot_release(c, s);
    }
    if (c->h2 != NULL)
        nghttp2_session_del(c->h2); /* calls no callbacks */
    tls_close(c->conn);
    c->h2 = NULL;
    c->conn = NULL;
    c->out_len = 0;
    c->settings_seen = 0;
}

static int conn_open(struct apns_client *c)
{
    char err[200];
    c->conn = tls_connect(c->tls, c->host, c->port, APNS_CONNECT_TIMEOUT_MS, err, sizeof(err));
    if (c->conn == NULL) {
        snprintf(c->conn_err, sizeof(c->conn_err), "%.150s", err);
        log_warn("event=apns_connect_failed host=%s port=%d err=\"%s\"", c->host, c->port, err);
        return -1;
    }
    nghttp2_session_callbacks *cb = apns_callbacks();
    if (cb == NULL || nghttp2_session_client_new(&c->h2, cb, c) != 0) {
        nghttp2_session_callbacks_del(cb);
        snprintf(c->conn_err, sizeof(c->conn_err), "nghttp2_session_client_new");
        tls_close(c->conn);
        c->conn = NULL;
        return -1;
    }
    nghttp2_session_callbacks_del(cb);
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
                                   {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20}};
    nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, 2);
    c->last_read_ms = now_ms();
    log_info("event=apns_connected host=%s port=%d", c->host, c->port);
    return 0;
}

/* Moves frames from nghttp2 into c->out, up to APNS_OUT_HIGH; 0 when it has no more, 1 if it
 * may have more, -1 on failure. */
static int out_fill(struct apns_client *c)
{
    while (c->out_len < APNS_OUT_HIGH) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(c->h2, &data);
        if (n < 0)
            return -1;
        if (n == 0)
            return 0;
        if (c->out_len + (size_t)n > c->out_cap) {
            c->out_cap = (c->out_len + (size_t)n) * 2;
            c->out = xrealloc(c->out, c->out_cap);
        }
        memcpy(c->out + c->out_len, data, (size_t)n);
        c->out_len += (size_t)n;
    }
    return 1;
}

/* Serializes pending frames and writes until nghttp2 has nothing left or the socket is full;
 * -1 if the connection failed. Large writes: one TLS record carries many small frames. */
static int conn_flush(struct apns_client *c)
{
    for (;;) {
        int more = out_fill(c);
        if (more < 0)
            return -1;
        size_t off = 0;
        while (off < c->out_len) {
            ssize_t w = tls_write(c->conn, c->out + off, c->out_len - off);
            if (w < 0)
                return -1;
            if (w == 0)
                break;
            off += (size_t)w;
        }
        memmove(c->out, c->out + off, c->out_len - off);
        c->out_len -= off;
        if (!more || c->out_len > 0)
            return 0;
    }
}

/* Reads and processes everything available; -1 if the peer closed or sent garbage. */
static int conn_read(struct apns_client *c)
{
    uint8_t in[APNS_READ_CHUNK];
    for (;;) {
        ssize_t r = tls_read(c->conn, in, sizeof(in));
        if (r < 0)
            return -1;
        if (r == 0)
            return 0;
        c->last_read_ms = now_ms();
        if (nghttp2_session_mem_recv(c->h2, in, (size_t)r) < 0)
            return -1;
    }
}

/* Whether the connection can carry new streams (drops one that has ended). */
static int conn_ready(struct apns_client *c)
{
    if (c->h2 == NULL)
        return 0;
    if (c->active == 0 &&
        (!nghttp2_session_check_request_allowed(c->h2) ||
         (!nghttp2_session_want_read(c->h2) && !nghttp2_session_want_write(c->h2)))) {
        conn_drop(c, "connection closed");
        return 0;
    }
    return 1;
}

/* Before reusing an idle connection: take in what arrived meanwhile (GOAWAY, close). */
static void conn_check_idle(struct apns_client *c)
{
    struct pollfd p = {.fd = tls_conn_fd(c->conn), .events = POLLIN};
    if (poll(&p, 1, 0) > 0 && (conn_read(c) != 0 || conn_flush(c) != 0))
        conn_drop(c, "connection closed while idle");
}

/* ---- requests --------------------------------------------------------------------------- */

#define NV(n, v, vlen)                                                                             \
    {                                                                                              \
        (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, (vlen), NGHTTP2_NV_FLAG_NO_COPY_NAME        \
    }

/* Answers a message with a malformed token locally, as APNs would; 1 if it did. */
static int msg_refuse(struct push_msg *m)
{
    if (hex_token_ok(m->token))
        return 0;
    m->status = 400;
    snprintf(m->reason, sizeof(m->reason), "BadDeviceToken");
    return 1;
}

/* Starts message i (its token checked by msg_refuse); 0, or -1 when it was answered here. */
static int stream_start(struct apns_client *c, size_t i)
{
    struct push_msg *m = &c->msgs[i];
    struct apns_stream *s = c->free_slots[c->nfree - 1];
    int blen = push_body(m->magic, s->body, sizeof(s->body));
    if (blen < 0) {
        m->status = 400;
        snprintf(m->reason, sizeof(m->reason), "PayloadTooLarge");
        return -1;
    }
    char path[APNS_TOKEN_MAX + 300], exp[24], clen[8];
    int plen = snprintf(path, sizeof(path), "%s/3/device/%s", c->prefix, m->token);
    int elen = snprintf(exp, sizeof(exp), "%" PRId64, m->expiration);
    int clen_n = snprintf(clen, sizeof(clen), "%d", blen);
    nghttp2_nv nva[] = {
        NV(":method", "POST", 4),
        NV(":scheme", "https", 5),
        NV(":authority", c->authority, strlen(c->authority)),
        NV(":path", path, (size_t)plen),
        NV("apns-push-type", "mdm", 3),
        NV("apns-priority", "10", 2),
        NV("apns-expiration", exp, (size_t)elen),
        NV("content-type", "application/json", 16),
        NV("content-length", clen, (size_t)clen_n),
        NV("apns-topic", m->topic, strlen(m->topic)), /* last: left out when empty */
    };
    size_t nnv = sizeof(nva) / sizeof(nva[0]) - (m->topic[0] == '\0');
    s->msg = m;
    s->body_len = (size_t)blen;
    s->body_off = s->resp_len = 0;
    s->started_ms = now_ms();
    nghttp2_data_provider body = {.source.ptr = s, .read_callback = on_read_body};
    int32_t id = nghttp2_submit_request(c->h2, NULL, nva, nnv, &body, s);
    if (id < 0) {
        s->msg = NULL;
        snprintf(m->reason, sizeof(m->reason), "%s", nghttp2_strerror(id));
        return -1;
    }
    s->id = id;
    c->nfree--;
    c->active++;
    return 0;
}

static int has_pending(const struct apns_client *c)
{
    return c->nredo > 0 || c->next < c->norder;
}

static size_t take_pending(struct apns_client *c)
{
    return c->nredo > 0 ? c->redo[--c->nredo] : c->order[c->next++];
}

/* Starts streams up to the concurrency both sides allow. */
static void streams_fill(struct apns_client *c)
{
    if (!nghttp2_session_check_request_allowed(c->h2))
        return;
    uint32_t remote =
        nghttp2_session_get_remote_settings(c->h2, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
    size_t limit = (size_t)c->max_streams;
    if (!c->settings_seen && limit > APNS_FIRST_STREAMS)
        limit = APNS_FIRST_STREAMS;
    if (c->settings_seen && remote < limit)
        limit = remote;
    while (c->active < limit && has_pending(c))
        if (stream_start(c, take_pending(c)) != 0)
            msg_done(c);
}

/* Cancels streams older than the timeout (their close callback reports "timeout"). */
static void streams_expire(struct apns_client *c, int64_t now)
{
    for (int i = 0; i < c->max_streams; i++) {
        struct apns_stream *s = &c->slots[i];
        if (s->msg != NULL && now - s->started_ms > c->timeout_ms) {
            nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_CANCEL);
            s->started_ms = INT64_MAX; /* cancelled once */
        }
    }
}

/* One round of I/O: write, wait for the socket (at most 100 ms), read. -1: drop the connection. */
static int conn_pump(struct apns_client *c)
{
    if (conn_flush(c) != 0)
        return -1;
    if (c->active == 0 && c->out_len == 0 && !has_pending(c))
        return 0;
    struct pollfd p = {.fd = tls_conn_fd(c->conn), .events = POLLIN};
    if (c->out_len > 0)
        p.events |= POLLOUT;
    if (poll(&p, 1, 100) > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR)) && conn_read(c) != 0)
        return -1;
    int64_t now = now_ms();
    if (now - c->last_read_ms > c->timeout_ms) {
        snprintf(c->conn_err, sizeof(c->conn_err), "timeout");
        return -1;
    }
    streams_expire(c, now);
    return 0;
}

/* The batch cannot go out (no connection): what was never started fails with status 0. */
static void fail_pending(struct apns_client *c)
{
    while (has_pending(c)) {
        struct push_msg *m = &c->msgs[take_pending(c)];
        snprintf(m->reason, sizeof(m->reason), "%.47s", c->conn_err);
        msg_done(c);
    }
}

static void apns_send(push_client *pc, struct push_msg *msgs, size_t n)
{
    struct apns_client *c = (struct apns_client *)pc;
    c->msgs = msgs;
    c->n = n;
    c->next = c->done = c->nredo = 0;
    c->redo = xcalloc(n, sizeof(*c->redo));
    c->redone = xcalloc(n, 1);
    c->order = xcalloc(n, sizeof(*c->order));
    c->norder = 0;
    for (size_t i = 0; i < n; i++) {
        if (msg_refuse(&msgs[i]))
            msg_done(c);
        else
            c->order[c->norder++] = i;
    }
    int connects = 0;
    if (c->conn != NULL && c->done < n) {
        conn_check_idle(c);
        /* Silence is measured from now: an idle connection heard nothing for a while. */
        c->last_read_ms = now_ms();
    }
    while (c->done < n) {
        if (!conn_ready(c)) {
            if (!has_pending(c))
                break;
            if (connects++ == APNS_CONNECTS_PER_BATCH || conn_open(c) != 0) {
                fail_pending(c);
                break;
            }
        }
        streams_fill(c);
        snprintf(c->conn_err, sizeof(c->conn_err), "connection lost");
        if (conn_pump(c) != 0)
            conn_drop(c, c->conn_err);
    }
    free(c->redo);
    free(c->redone);
    free(c->order);
    c->order = NULL;
    c->redo = NULL;
    c->redone = NULL;
    c->msgs = NULL;
}

static void apns_free(push_client *pc)
{
    struct apns_client *c = (struct apns_client *)pc;
    if (c->h2 != NULL || c->conn != NULL)
        conn_drop(c, "shutdown");
    free(c->slots);
    free(c->free_slots);
    free(c->out);
    free(c->prefix);
    tls_client_free(c->tls);
    free(c);
}

static const struct push_ops apns_ops = {"apns", apns_send, apns_free};

/* host, port, :authority and path prefix from an https:// URL. */
static int apns_parse_url(struct apns_client *c, const char *url)
{
    if (url_host_port(url, c->host, sizeof(c->host), &c->port) != 0)
        return -1;
    const char *path = strchr(url + 8, '/');
    c->prefix = xstrdup(path != NULL ? path : "");
    size_t pl = strlen(c->prefix);
    while (pl > 0 && c->prefix[pl - 1] == '/')
        c->prefix[--pl] = '\0';
    int v6 = strchr(c->host, ':') != NULL;
    if (c->port == 443)
        snprintf(c->authority, sizeof(c->authority), v6 ? "[%s]" : "%s", c->host);
    else
        snprintf(c->authority, sizeof(c->authority), v6 ? "[%s]:%d" : "%s:%d", c->host, c->port);
    return 0;
}

push_client *push_apns_new(const struct push_apns_options *o, char *err, size_t err_len)
{
    if (o->url == NULL || strncmp(o->url, "https://", 8) != 0) {
        snprintf(err, err_len, "apns_url must be an https:// URL");
        return NULL;
    }
    struct apns_client *c = xcalloc(1, sizeof(*c));
    c->base.ops = &apns_ops;
    if (apns_parse_url(c, o->url) != 0) {
        snprintf(err, err_len, "apns_url: cannot read host and port");
        apns_free(&c->base);
        return NULL;
    }
    struct tls_client_options to = {.cert_pem = o->cert_pem,
                                    .key_pem = o->key_pem,
                                    .ca_file = o->ca_file,
                                    .alpn = "h2",
                                    .proxy = o->proxy};
    c->tls = tls_client_new(&to, err, err_len);
    if (c->tls == NULL) {
        apns_free(&c->base);
        return NULL;
    }
    c->max_streams = o->max_streams > 0 ? o->max_streams : 1000;
    c->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 15000;
    c->slots = xcalloc((size_t)c->max_streams, sizeof(*c->slots));
    c->free_slots = xcalloc((size_t)c->max_streams, sizeof(*c->free_slots));
    for (int i = c->max_streams - 1; i >= 0; i--)
        c->free_slots[c->nfree++] = &c->slots[i];
    return &c->base;
}
