/*
 * h2sink: a fast local stand-in for APNs, for `make bench` only. HTTP/2 over TLS (libnghttp2 +
 * OpenSSL), one thread, epoll. Answers every request with 200 and an apns-id header once its
 * body has arrived, after checking what APNs would check (POST, /3/device/<hex>, apns-topic,
 * apns-push-type: mdm, a JSON body with "mdm"); a request that fails a check gets 400 and is
 * counted as bad. With --client-ca it demands a client certificate signed by that CA, as APNs
 * does.
 *
 *   h2sink --cert PEM --key PEM [--client-ca PEM] [--expect N] [--max-streams M]
 *
 * Prints {"port":P} on stdout once listening on 127.0.0.1 (ephemeral port). With --expect N,
 * exits after answering N requests and prints {"ok":..,"bad":..,"sessions":..,"seconds":..}
 * where seconds runs from the first request to the Nth answer. Why not Node or nghttpd: Node's
 * http2 server tops out near 12k requests/s here and nghttpd spools uploads to temporary files
 * (6.5k/s), both below what the push worker must be measured at.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SINK_BUF 65536

struct sink_stream {
    struct sink_stream *prev, *next; /* the connection's open streams */
    int32_t id;
    int post, path_ok, topic_ok, type_ok;
    char body[8]; /* the body's first bytes: a push body starts {"mdm":" */
    size_t body_len;
};

struct sink_conn {
    int fd;
    SSL *ssl;
    nghttp2_session *h2;
    int handshaken;
    unsigned char *out; /* bytes from nghttp2 not yet accepted by SSL_write */
    size_t out_len, out_cap;
    struct sink_stream *streams; /* open: freed at close, or with the connection if it drops */
};

static SSL_CTX *g_ctx;
static int g_epoll;
static long g_expect, g_ok, g_bad, g_sessions, g_max_streams = 1000;
static double g_t0;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "h2sink: %s\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl, (void)arg;
    for (unsigned i = 0; i + 1 <= inlen; i += 1u + in[i])
        if (in[i] == 2 && i + 3 <= inlen && memcmp(in + i + 1, "h2", 2) == 0) {
            *out = in + i + 1;
            *outlen = 2;
            return SSL_TLSEXT_ERR_OK;
        }
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

static int is_hex(const uint8_t *s, size_t n)
{
    if (n == 0 || n % 2)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

static int on_begin_headers(nghttp2_session *h2, const nghttp2_frame *f, void *ud)
{
    struct sink_conn *c = ud;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    struct sink_stream *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    s->next = c->streams;
    if (c->streams)
        c->streams->prev = s;
    c->streams = s;
    s->id = f->hd.stream_id;
    nghttp2_session_set_stream_user_data(h2, s->id, s);
    if (g_t0 == 0)
        g_t0 = now_s();
    return 0;
}

#define IS(name, lit) (name##len == sizeof(lit) - 1 && memcmp(name, lit, sizeof(lit) - 1) == 0)

static int on_header(nghttp2_session *h2, const nghttp2_frame *f, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
    (void)flags, (void)ud;
    struct sink_stream *s = nghttp2_session_get_stream_user_data(h2, f->hd.stream_id);
    if (s == NULL)
        return 0;
    if (IS(name, ":method"))
        s->post = IS(value, "POST");
    else if (IS(name, ":path"))
        s->path_ok = valuelen > 11 && memcmp(value, "/3/device/", 10) == 0 &&
                     is_hex(value + 10, valuelen - 10);
    else if (IS(name, "apns-topic"))
        s->topic_ok = valuelen > 0;
    else if (IS(name, "apns-push-type"))
        s->type_ok = IS(value, "mdm");
    return 0;
}

static int on_data(nghttp2_session *h2, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                   void *ud)
{
    (void)flags, (void)ud;
    struct sink_stream *s = nghttp2_session_get_stream_user_data(h2, id);
    if (s == NULL)
        return 0;
    size_t take = sizeof(s->body) - s->body_len < len ? sizeof(s->body) - s->body_len : len;
    memcpy(s->body + s->body_len, data, take);
    s->body_len += take;
    return 0;
}

static void finish(void)
{
    printf("{\"ok\":%ld,\"bad\":%ld,\"sessions\":%ld,\"seconds\":%.4f}\n", g_ok, g_bad, g_sessions,
           now_s() - g_t0);
    fflush(stdout);
    exit(0);
}

static int answer(nghttp2_session *h2, struct sink_stream *s)
{
    int good = s->post && s->path_ok && s->topic_ok && s->type_ok &&
               s->body_len == sizeof(s->body) && memcmp(s->body, "{\"mdm\":\"", 8) == 0;
    char id[37];
    snprintf(id, sizeof(id), "00000000-0000-0000-0000-%012lx", (unsigned long)(g_ok + g_bad));
    nghttp2_nv hdrs[] = {
        {(uint8_t *)":status", (uint8_t *)(good ? "200" : "400"), 7, 3, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"apns-id", (uint8_t *)id, 7, 36, NGHTTP2_NV_FLAG_NONE},
    };
    if (!good && g_bad == 0)
        fprintf(stderr, "h2sink: first bad request: post=%d path=%d topic=%d type=%d body=%.*s\n",
                s->post, s->path_ok, s->topic_ok, s->type_ok, (int)s->body_len, s->body);
    good ? g_ok++ : g_bad++;
    return nghttp2_submit_response(h2, s->id, hdrs, 2, NULL);
}

static int on_frame_recv(nghttp2_session *h2, const nghttp2_frame *f, void *ud)
{
    (void)ud;
    if ((f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA) ||
        !(f->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    struct sink_stream *s = nghttp2_session_get_stream_user_data(h2, f->hd.stream_id);
    if (s == NULL)
        return 0;
    return answer(h2, s) == 0 ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
}

static void stream_unlink(struct sink_conn *c, struct sink_stream *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        c->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
}

static int on_stream_close(nghttp2_session *h2, int32_t id, uint32_t err, void *ud)
{
    (void)err;
    struct sink_stream *s = nghttp2_session_get_stream_user_data(h2, id);
    if (s == NULL)
        return 0;
    stream_unlink(ud, s);
    free(s);
    nghttp2_session_set_stream_user_data(h2, id, NULL);
    return 0;
}

static nghttp2_session_callbacks *g_cbs;

static void conn_close(struct sink_conn *c)
{
    epoll_ctl(g_epoll, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (c->h2)
        nghttp2_session_del(c->h2); /* calls no stream-close callbacks: free what was open */
    while (c->streams) {
        struct sink_stream *s = c->streams;
        c->streams = s->next;
        free(s);
    }
    SSL_free(c->ssl);
    free(c->out);
    free(c);
    /* The client may close as soon as it has the last answer, before a write event has let
     * conn_io see an empty output buffer: everything expected was answered, so report. */
    if (g_expect > 0 && g_ok + g_bad >= g_expect)
        finish();
}

/* Moves nghttp2's pending output into c->out, then as much as TLS takes to the socket. */
static int conn_flush(struct sink_conn *c)
{
    for (;;) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(c->h2, &data);
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        if (c->out_len + (size_t)n > c->out_cap) {
            c->out_cap = (c->out_len + (size_t)n) * 2;
            c->out = realloc(c->out, c->out_cap);
            if (c->out == NULL)
                return -1;
        }
        memcpy(c->out + c->out_len, data, (size_t)n);
        c->out_len += (size_t)n;
    }
    size_t off = 0;
    while (off < c->out_len) {
        int w = SSL_write(c->ssl, c->out + off,
                          (int)(c->out_len - off > 16384 ? 16384 : c->out_len - off));
        if (w <= 0) {
            int e = SSL_get_error(c->ssl, w);
            if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ)
                break;
            fprintf(stderr, "h2sink: write error %d\n", e);
            return -1;
        }
        off += (size_t)w;
    }
    memmove(c->out, c->out + off, c->out_len - off);
    c->out_len -= off;
    struct epoll_event ev = {.events = EPOLLIN | (c->out_len ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(g_epoll, EPOLL_CTL_MOD, c->fd, &ev);
    return 0;
}

static int conn_start_h2(struct sink_conn *c)
{
    if (nghttp2_session_server_new(&c->h2, g_cbs, c) != 0)
        return -1;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, (uint32_t)g_max_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20}};
    nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, 2);
    nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, 0, 1 << 24);
    g_sessions++;
    return 0;
}

static int conn_io(struct sink_conn *c)
{
    if (!c->handshaken) {
        int r = SSL_accept(c->ssl);
        if (r <= 0) {
            int e = SSL_get_error(c->ssl, r);
            return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ? 0 : -1;
        }
        c->handshaken = 1;
        if (conn_start_h2(c) != 0)
            return -1;
    }
    unsigned char buf[SINK_BUF];
    for (;;) {
        int r = SSL_read(c->ssl, buf, sizeof(buf));
        if (r <= 0) {
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                break;
            if (e != SSL_ERROR_ZERO_RETURN)
                fprintf(stderr, "h2sink: read error %d\n", e);
            return -1;
        }
        ssize_t used = nghttp2_session_mem_recv(c->h2, buf, (size_t)r);
        if (used < 0) {
            fprintf(stderr, "h2sink: h2 error %s\n", nghttp2_strerror((int)used));
            return -1;
        }
        if (conn_flush(c) != 0)
            return -1;
    }
    if (conn_flush(c) != 0)
        return -1;
    if (g_expect > 0 && g_ok + g_bad >= g_expect && c->out_len == 0)
        finish();
    return nghttp2_session_want_read(c->h2) || nghttp2_session_want_write(c->h2) ? 0 : -1;
}

static void accept_all(int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
        if (fd < 0)
            return;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        struct sink_conn *c = calloc(1, sizeof(*c));
        c->fd = fd;
        c->ssl = SSL_new(g_ctx);
        SSL_set_fd(c->ssl, fd);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(g_epoll, EPOLL_CTL_ADD, fd, &ev);
        if (conn_io(c) != 0)
            conn_close(c);
    }
}

static void setup_tls(const char *cert, const char *key, const char *client_ca)
{
    g_ctx = SSL_CTX_new(TLS_server_method());
    if (g_ctx == NULL || SSL_CTX_use_certificate_chain_file(g_ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(g_ctx, key, SSL_FILETYPE_PEM) != 1)
        die("cannot load --cert/--key");
    SSL_CTX_set_min_proto_version(g_ctx, TLS1_2_VERSION);
    /* conn_flush retries a blocked write from a buffer that may have moved or grown. */
    SSL_CTX_set_mode(g_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_alpn_select_cb(g_ctx, alpn_select, NULL);
    if (client_ca != NULL) {
        if (SSL_CTX_load_verify_locations(g_ctx, client_ca, NULL) != 1)
            die("cannot load --client-ca");
        SSL_CTX_set_verify(g_ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
}

static void setup_h2(void)
{
    nghttp2_session_callbacks_new(&g_cbs);
    nghttp2_session_callbacks_set_on_begin_headers_callback(g_cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(g_cbs, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(g_cbs, on_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(g_cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(g_cbs, on_stream_close);
}

static int listen_local(void)
{
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(lfd, 64) != 0 ||
        getsockname(lfd, (struct sockaddr *)&a, &alen) != 0)
        die("cannot listen");
    printf("{\"port\":%d}\n", ntohs(a.sin_port));
    fflush(stdout);
    return lfd;
}

int main(int argc, char **argv)
{
    const char *cert = NULL, *key = NULL, *client_ca = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--cert") == 0)
            cert = argv[i + 1];
        else if (strcmp(argv[i], "--key") == 0)
            key = argv[i + 1];
        else if (strcmp(argv[i], "--client-ca") == 0)
            client_ca = argv[i + 1];
        else if (strcmp(argv[i], "--expect") == 0)
            g_expect = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--max-streams") == 0)
            g_max_streams = atol(argv[i + 1]);
        else
            die("usage: h2sink --cert PEM --key PEM [--client-ca PEM] [--expect N] [--max-streams "
                "M]");
    }
    if (cert == NULL || key == NULL)
        die("--cert and --key are required");
    setup_tls(cert, key, client_ca);
    setup_h2();
    int lfd = listen_local();
    g_epoll = epoll_create1(0);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(g_epoll, EPOLL_CTL_ADD, lfd, &lev);
    struct epoll_event evs[64];
    for (;;) {
        int n = epoll_wait(g_epoll, evs, 64, -1);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) {
                accept_all(lfd);
                continue;
            }
            struct sink_conn *c = evs[i].data.ptr;
            if (conn_io(c) != 0)
                conn_close(c);
        }
    }
}
