/*
 * libmicrohttpd glue: body accumulation with a cap, dispatch through the route table,
 * request ids, access log and per-route metrics. TLS is GnuTLS inside libmicrohttpd; when a
 * client CA is configured the server *requests* (never requires) a client certificate, and
 * verification is left to the services (PROTOCOL.md section 10).
 */
#include "http/http.h"

#include <arpa/inet.h>
#include <gnutls/gnutls.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/mem.h"

#define MAX_ROUTES 64
#define NBUCKETS 13

static const double bucket_bounds[NBUCKETS - 1] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                   0.05,   0.1,   0.25,   0.5,   1,    2.5};

struct route_stats {
    atomic_ullong by_class[6]; /* index = status / 100 */
    atomic_ullong buckets[NBUCKETS];
    atomic_ullong sum_us;
};

struct http_server {
    struct MHD_Daemon *daemon;
    struct http_server_options opts;
    int nroutes;
    int port;
    atomic_ullong next_id;
    struct route_stats stats[MAX_ROUTES + 2]; /* + unmatched (404) + oversized (413) */
};

struct req_state {
    http_request req;
    buf body;
    struct timespec start;
    int too_large;
    char *path_copy;
    char scratch[512];
};

static double elapsed_s(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) + (double)(now.tv_nsec - start->tv_nsec) / 1e9;
}

int http_route_match(const char *pattern, const char *path, char *scratch, size_t scratch_len,
                     const char **params, int *nparams)
{
    size_t used = 0;
    *nparams = 0;
    while (*pattern) {
        if (pattern[0] == '*' && pattern[1] == '\0')
            return 1;
        if (*pattern == '{') {
            const char *close = strchr(pattern, '}');
            size_t seg = strcspn(path, "/");
            if (close == NULL || seg == 0 || *nparams >= HTTP_MAX_PARAMS ||
                used + seg + 1 > scratch_len)
                return 0;
            memcpy(scratch + used, path, seg);
            scratch[used + seg] = '\0';
            params[(*nparams)++] = scratch + used;
            used += seg + 1;
            path += seg;
            pattern = close + 1;
            continue;
        }
        if (*pattern != *path)
            return 0;
        pattern++;
        path++;
    }
    return *path == '\0';
}

/* Finds the route for the request; sets *status to 404/405 when none fits. */
static int find_route(http_server *s, struct req_state *st, int *status)
{
    const char *method = strcmp(st->req.method, "HEAD") == 0 ? "GET" : st->req.method;
    int path_matched = 0;
    for (int i = 0; i < s->nroutes; i++) {
        const struct http_route *r = &s->opts.routes[i];
        if (!http_route_match(r->pattern, st->req.path, st->scratch, sizeof(st->scratch),
                              st->req.params, &st->req.nparams))
            continue;
        path_matched = 1;
        if (strcmp(r->method, "*") == 0 || strcmp(r->method, method) == 0)
            return i;
    }
    *status = path_matched ? 405 : 404;
    return -1;
}

const char *http_request_header(const http_request *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

const char *http_request_query(const http_request *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, name);
}

int http_request_cookie(const http_request *req, const char *name, char *out, size_t out_len)
{
    const char *v = MHD_lookup_connection_value(req->conn, MHD_COOKIE_KIND, name);
    if (v == NULL || strlen(v) >= out_len)
        return -1;
    strcpy(out, v);
    return 0;
}

int http_request_client_cert(const http_request *req, uint8_t **der, size_t *len)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
    if (ci == NULL || ci->tls_session == NULL)
        return -1;
    unsigned int n = 0;
    const gnutls_datum_t *peers = gnutls_certificate_get_peers(ci->tls_session, &n);
    if (peers == NULL || n == 0 || peers[0].size == 0)
        return -1;
    *der = xmalloc(peers[0].size);
    memcpy(*der, peers[0].data, peers[0].size);
    *len = peers[0].size;
    return 0;
}

void http_response_set_header(http_response *res, const char *name, const char *value)
{
    if (res->nheaders >= HTTP_MAX_HEADERS)
        abort(); /* a handler bug, not input */
    res->headers[res->nheaders].name = xstrdup(name);
    res->headers[res->nheaders].value = xstrdup(value);
    res->nheaders++;
}

void http_response_send(http_response *res, int status, const char *content_type, const void *body,
                        size_t len)
{
    res->status = status;
    res->content_type = content_type;
    buf_reset(&res->body);
    buf_append(&res->body, body, len);
}

void http_response_error(http_response *res, int status, const char *msg)
{
    res->status = status;
    res->content_type = "application/json";
    buf_reset(&res->body);
    buf_puts(&res->body, "{\"error\":\"");
    for (const char *p = msg; *p; p++) {
        if (*p == '"' || *p == '\\')
            buf_append(&res->body, "\\", 1);
        if ((unsigned char)*p >= 0x20)
            buf_append(&res->body, p, 1);
    }
    buf_puts(&res->body, "\"}");
}

static void response_cleanup(http_response *res)
{
    buf_cleanup(&res->body);
    for (int i = 0; i < res->nheaders; i++) {
        free(res->headers[i].name);
        free(res->headers[i].value);
    }
}

static void record(http_server *s, int route, int status, double secs)
{
    struct route_stats *rs = &s->stats[route];
    int cls = status / 100;
    if (cls < 0 || cls > 5)
        cls = 0;
    atomic_fetch_add(&rs->by_class[cls], 1);
    int b = 0;
    while (b < NBUCKETS - 1 && secs > bucket_bounds[b])
        b++;
    atomic_fetch_add(&rs->buckets[b], 1);
    atomic_fetch_add(&rs->sum_us, (unsigned long long)(secs * 1e6));
}

static const char *route_name(http_server *s, int route)
{
    if (route == MAX_ROUTES)
        return "unmatched";
    if (route == MAX_ROUTES + 1)
        return "oversized";
    return s->opts.routes[route].name;
}

static enum MHD_Result queue(http_server *s, struct MHD_Connection *conn, struct req_state *st,
                             http_response *res, int route)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(
        res->body.len, res->body.data ? res->body.data : (char *)"", MHD_RESPMEM_MUST_COPY);
    if (res->content_type)
        MHD_add_response_header(r, "Content-Type", res->content_type);
    for (int i = 0; i < res->nheaders; i++)
        MHD_add_response_header(r, res->headers[i].name, res->headers[i].value);
    MHD_add_response_header(r, "X-Request-Id", st->req.request_id);
    enum MHD_Result rc = MHD_queue_response(conn, (unsigned int)res->status, r);
    MHD_destroy_response(r);
    double secs = elapsed_s(&st->start);
    record(s, route, res->status, secs);
    if (s->opts.access_log)
        log_info("event=http rid=%s remote=%s client=%s method=%s path=%s route=%s status=%d "
                 "bytes=%zu in=%zu dur_us=%.0f",
                 st->req.request_id, st->req.remote_addr, st->req.client_addr, st->req.method,
                 st->req.path, route_name(s, route), res->status, res->body.len, st->req.body_len,
                 secs * 1e6);
    return rc;
}

static void remote_addr(struct MHD_Connection *conn, char *out, size_t len)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    out[0] = '\0';
    if (ci == NULL || ci->client_addr == NULL)
        return;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, (socklen_t)len);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out, (socklen_t)len);
}

static struct req_state *state_new(http_server *s, struct MHD_Connection *conn, const char *url,
                                   const char *method)
{
    struct req_state *st = xcalloc(1, sizeof(*st));
    clock_gettime(CLOCK_MONOTONIC, &st->start);
    buf_init(&st->body, s->opts.max_body);
    st->path_copy = xstrdup(url);
    st->req.path = st->path_copy;
    st->req.method = method;
    st->req.conn = conn;
    snprintf(st->req.request_id, sizeof(st->req.request_id), "%016llx",
             (unsigned long long)atomic_fetch_add(&s->next_id, 1));
    remote_addr(conn, st->req.remote_addr, sizeof(st->req.remote_addr));
    http_client_addr(s->opts.trusted_proxies, st->req.remote_addr,
                     MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Forwarded-For"),
                     st->req.client_addr, sizeof(st->req.client_addr));
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
    if (cl && strtoull(cl, NULL, 10) > s->opts.max_body)
        st->too_large = 1;
    return st;
}

static enum MHD_Result dispatch(http_server *s, struct MHD_Connection *conn, struct req_state *st)
{
    http_response res = {.status = 200};
    buf_init(&res.body, 0);
    int route = MAX_ROUTES + 1;
    if (st->too_large) {
        http_response_error(&res, 413, "request body too large");
    } else {
        st->req.body = st->body.data ? st->body.data : "";
        st->req.body_len = st->body.len;
        int status = 0;
        int i = find_route(s, st, &status);
        if (i < 0) {
            route = MAX_ROUTES;
            http_response_error(&res, status, status == 404 ? "not found" : "method not allowed");
        } else {
            route = i;
            st->req.route_index = i;
            s->opts.routes[i].handler(s->opts.ctx, &st->req, &res);
        }
    }
    enum MHD_Result rc = queue(s, conn, st, &res, route);
    response_cleanup(&res);
    return rc;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)version;
    http_server *s = cls;
    struct req_state *st = *con_cls;
    if (st == NULL) {
        st = state_new(s, conn, url, method);
        *con_cls = st;
        if (st->too_large) /* answer before reading a body we would refuse anyway */
            return dispatch(s, conn, st);
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        if (!st->too_large && buf_append(&st->body, upload_data, *upload_data_size) != 0)
            st->too_large = 1;
        *upload_data_size = 0;
        return MHD_YES;
    }
    return dispatch(s, conn, st);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    struct req_state *st = *con_cls;
    if (st == NULL)
        return;
    buf_cleanup(&st->body);
    free(st->path_copy);
    free(st);
    *con_cls = NULL;
}

/* libmicrohttpd's own messages (TLS handshake failures, resource limits) go through our logger. */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        msg[--n] = '\0';
    for (char *p = msg; *p; p++) {
        if (*p == '"')
            *p = '\'';
    }
    log_debug("event=httpd msg=\"%s\"", msg);
}

static int parse_listen(const char *listen, struct sockaddr_storage *ss, char *err, size_t err_len)
{
    char host[256];
    const char *colon = strrchr(listen, ':');
    if (colon == NULL || (size_t)(colon - listen) >= sizeof(host)) {
        snprintf(err, err_len, "listen: \"%s\" is not HOST:PORT", listen);
        return -1;
    }
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = '\0';
    char *h = host;
    if (h[0] == '[') { /* [::1]:8443 */
        h++;
        h[strlen(h) - 1] = '\0';
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV | AI_PASSIVE};
    struct addrinfo *ai = NULL;
    int rc = getaddrinfo(h[0] ? h : NULL, colon + 1, &hints, &ai);
    if (rc != 0) {
        snprintf(err, err_len, "listen: cannot resolve \"%s\": %s", listen, gai_strerror(rc));
        return -1;
    }
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(ai);
    return 0;
}

http_server *http_server_start(const struct http_server_options *o, char *err, size_t err_len)
{
    struct sockaddr_storage ss;
    if (parse_listen(o->listen, &ss, err, err_len) != 0)
        return NULL;
    http_server *s = xcalloc(1, sizeof(*s));
    s->opts = *o;
    while (o->routes[s->nroutes].pattern)
        s->nroutes++;
    if (s->nroutes > MAX_ROUTES)
        abort();
    unsigned long long seed = 0;
    if (getentropy(&seed, sizeof(seed)) != 0)
        seed = (unsigned long long)time(NULL);
    atomic_store(&s->next_id, seed & 0xffffffff00000000ULL);
    /* Four workers per core: a handler regularly waits on SQLite's file locks and OpenSSL's
     * internal locks, and a worker that waits would otherwise leave its core idle (measured with
     * bench/run.sh: 2 workers on 2 cores kept the process near 100% CPU of 200%). */
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned int threads =
        (unsigned int)(o->threads > 0 ? o->threads
                                      : HTTP_THREADS_PER_CORE * (cores > 0 ? cores : 1));
    unsigned int flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_TLS | MHD_USE_ITC |
                         MHD_USE_ERROR_LOG | (ss.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0);
    struct MHD_OptionItem opts[] = {
        {MHD_OPTION_SOCK_ADDR, 0, &ss},
        {MHD_OPTION_THREAD_POOL_SIZE, threads, NULL},
        {MHD_OPTION_HTTPS_MEM_CERT, 0, (void *)o->cert_pem},
        {MHD_OPTION_HTTPS_MEM_KEY, 0, (void *)o->key_pem},
        {MHD_OPTION_CONNECTION_TIMEOUT, 60, NULL},
        {MHD_OPTION_CONNECTION_LIMIT, 10000, NULL},
        {MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)on_completed, s},
        {MHD_OPTION_EXTERNAL_LOGGER, (intptr_t)mhd_log, NULL},
        {o->client_ca_pem ? MHD_OPTION_HTTPS_MEM_TRUST : MHD_OPTION_END, 0,
         (void *)o->client_ca_pem},
        {MHD_OPTION_END, 0, NULL},
    };
    s->daemon = MHD_start_daemon(flags, 0, NULL, NULL, on_request, s, MHD_OPTION_ARRAY, opts,
                                 MHD_OPTION_END);
    if (s->daemon == NULL) {
        snprintf(err, err_len, "cannot serve on %s (address in use, or bad TLS certificate/key)",
                 o->listen);
        free(s);
        return NULL;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : 0;
    return s;
}

void http_server_stop(http_server *s, int timeout_ms)
{
    if (s == NULL)
        return;
    MHD_quiesce_daemon(s->daemon);
    for (int waited = 0; waited < timeout_ms; waited += 20) {
        const union MHD_DaemonInfo *di =
            MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
        if (di == NULL || di->num_connections == 0)
            break;
        usleep(20 * 1000);
    }
    MHD_stop_daemon(s->daemon);
    free(s);
}

int http_server_port(const http_server *s)
{
    return s->port;
}

static void metrics_counts(http_server *s, int i, buf *out)
{
    struct route_stats *rs = &s->stats[i];
    for (int c = 1; c <= 5; c++) {
        unsigned long long n = atomic_load(&rs->by_class[c]);
        if (n)
            buf_printf(out, "orchard_http_requests_total{route=\"%s\",code=\"%dxx\"} %llu\n",
                       route_name(s, i), c, n);
    }
}

static void metrics_latency(http_server *s, int i, buf *out)
{
    struct route_stats *rs = &s->stats[i];
    const char *name = route_name(s, i);
    unsigned long long cum = 0;
    for (int b = 0; b < NBUCKETS; b++) {
        cum += atomic_load(&rs->buckets[b]);
        char le[32];
        if (b < NBUCKETS - 1)
            snprintf(le, sizeof(le), "%g", bucket_bounds[b]);
        else
            snprintf(le, sizeof(le), "+Inf");
        buf_printf(out,
                   "orchard_http_request_duration_seconds_bucket{route=\"%s\",le=\"%s\"} %llu\n",
                   name, le, cum);
    }
    buf_printf(out, "orchard_http_request_duration_seconds_sum{route=\"%s\"} %.6f\n", name,
               (double)atomic_load(&rs->sum_us) / 1e6);
    buf_printf(out, "orchard_http_request_duration_seconds_count{route=\"%s\"} %llu\n", name, cum);
}

/* Prometheus wants every sample of a family together: one pass per family. */
void http_server_metrics(http_server *s, buf *out)
{
    buf_puts(out, "# HELP orchard_http_requests_total HTTP requests by route and status class.\n"
                  "# TYPE orchard_http_requests_total counter\n");
    for (int i = 0; i < MAX_ROUTES + 2; i++) {
        if (i < s->nroutes || i >= MAX_ROUTES)
            metrics_counts(s, i, out);
    }
    buf_puts(out, "# HELP orchard_http_request_duration_seconds Request latency by route.\n"
                  "# TYPE orchard_http_request_duration_seconds histogram\n");
    for (int i = 0; i < MAX_ROUTES + 2; i++) {
        if (i < s->nroutes || i >= MAX_ROUTES)
            metrics_latency(s, i, out);
    }
}
