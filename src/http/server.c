/*
 * libmicrohttpd glue: routing and the checks that need only the headers (before any body byte
 * is read), body accumulation within the route's limit, dispatch, request ids, access log and
 * per-route metrics. Connection deadlines and counts live in limits.c. TLS is GnuTLS inside
 * libmicrohttpd (TLS 1.2 and 1.3 only, HTTP_TLS_PRIORITIES); when a client CA is configured the
 * server *requests* (never requires) a client certificate, and verification is left to the
 * services (PROTOCOL.md section 10).
 *
 * libmicrohttpd calls on_request once when the headers are complete (no body yet), then once
 * per piece of body, then once more with no data. A response queued on the first call is sent
 * without reading the body (libmicrohttpd then closes the connection), which is what keeps a
 * refused request from costing more than its headers.
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
#include <strings.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/mem.h"
#include "http/limits.h"

#define MAX_ROUTES 64
#define NBUCKETS 13
/* Pseudo-routes for metrics and the access log (requests that never reach a handler). */
#define ROUTE_UNMATCHED MAX_ROUTES
#define ROUTE_OVERSIZED (MAX_ROUTES + 1)
#define ROUTE_OVERLOADED (MAX_ROUTES + 2)
#define NSTATS (MAX_ROUTES + 3)

/* Per-connection memory of libmicrohttpd: request line + headers must fit (431 beyond). A
 * device's Mdm-Signature with its certificate is ~3-5 KB; a browser's cookies are small. */
#define CONNECTION_MEMORY (32 * 1024)
/* libmicrohttpd's idle timeout: what is left once the deadlines of limits.c do not apply
 * (while a handler's response is being written to a slow reader). */
#define IDLE_TIMEOUT 60
#define RETRY_AFTER "5"
/* After a refusal mid-body, bytes read and thrown away before the connection is dropped. */
#define DISCARD_MAX ((size_t)1 << 20)

#define DEFAULT_HEADER_TIMEOUT 20
#define DEFAULT_BODY_TIMEOUT 60
#define DEFAULT_MAX_CONNECTIONS 10000
#define DEFAULT_PER_ADDRESS 100
#define DEFAULT_BODY_MEMORY ((size_t)256 << 20)

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
    http_limits *limits;
    int nroutes;
    int port;
    atomic_ullong next_id;
    struct route_stats stats[NSTATS];
};

struct req_state {
    http_request req;
    const struct http_route *route;
    size_t body_limit;
    buf body;
    size_t reserved; /* bytes of the body-memory budget held (the body buffer's capacity) */
    http_conn *track;
    struct timespec start;
    int answered; /* a response was queued before the body was read */
    /* Refused while the body was arriving (libmicrohttpd cannot answer mid-body): the rest is
     * read and thrown away, up to DISCARD_MAX, and this answer sent at the end. */
    int late_status;
    const char *late_reason;
    int late_route;
    size_t discarded;
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

struct header_scan {
    const char *name;
    int count;
    const char *first;
};

static enum MHD_Result count_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                    const char *value)
{
    (void)kind;
    struct header_scan *h = cls;
    if (key != NULL && strcasecmp(key, h->name) == 0 && h->count++ == 0)
        h->first = value;
    return MHD_YES;
}

int http_request_header_count(const http_request *req, const char *name)
{
    struct header_scan h = {name, 0, NULL};
    MHD_get_connection_values(req->conn, MHD_HEADER_KIND, count_header, &h);
    return h.count;
}

int http_request_header_unique(const http_request *req, const char *name, const char **value)
{
    struct header_scan h = {name, 0, NULL};
    MHD_get_connection_values(req->conn, MHD_HEADER_KIND, count_header, &h);
    *value = h.count == 1 ? h.first : NULL;
    return h.count > 1 ? -1 : 0;
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
    if (route == ROUTE_UNMATCHED)
        return "unmatched";
    if (route == ROUTE_OVERSIZED)
        return "oversized";
    if (route == ROUTE_OVERLOADED)
        return "overloaded";
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
                 st->req.path, route_name(s, route), res->status, res->body.len,
                 st->late_status ? st->discarded : st->body.len, secs * 1e6);
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

struct lines {
    const char *name;
    const char *v[16];
    size_t n;
    int overflow;
};

static enum MHD_Result collect_lines(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value)
{
    (void)kind;
    struct lines *l = cls;
    if (key == NULL || value == NULL || strcasecmp(key, l->name) != 0)
        return MHD_YES;
    if (l->n == sizeof(l->v) / sizeof(l->v[0])) {
        l->overflow = 1;
        return MHD_NO;
    }
    l->v[l->n++] = value;
    return MHD_YES;
}

/*
 * The client address: X-Forwarded-For from a trusted proxy, all of its lines joined in order
 * (a proxy that appends a line, like HAProxy's `option forwardfor`, leaves the client's own
 * line first). More lines than we collect is no proxy we know: the peer is used.
 */
static void client_addr(http_server *s, struct req_state *st)
{
    struct lines l = {.name = "X-Forwarded-For"};
    MHD_get_connection_values(st->req.conn, MHD_HEADER_KIND, collect_lines, &l);
    char *joined = l.overflow ? NULL : http_forwarded_join(l.v, l.n);
    http_client_addr(s->opts.trusted_proxies, st->req.remote_addr, joined, st->req.client_addr,
                     sizeof(st->req.client_addr));
    free(joined);
}

static int hex_value(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/*
 * Percent-decoding of the path and of query values, in place, as libmicrohttpd's own does,
 * except that "%00" stays encoded: a decoded NUL would silently cut the C string short, so
 * "/healthz%00.html" would route as "/healthz" and "alice%00@evil" would read as "alice".
 */
static size_t unescape(void *cls, struct MHD_Connection *conn, char *s)
{
    (void)cls;
    (void)conn;
    char *w = s;
    for (const char *r = s; *r;) {
        int hi = r[0] == '%' ? hex_value(r[1]) : -1, lo = hi >= 0 ? hex_value(r[2]) : -1;
        if (lo >= 0 && (hi | lo) != 0) {
            *w++ = (char)(hi * 16 + lo);
            r += 3;
        } else {
            *w++ = *r++;
        }
    }
    *w = '\0';
    return (size_t)(w - s);
}

static struct req_state *state_new(http_server *s, struct MHD_Connection *conn, const char *url,
                                   const char *method)
{
    struct req_state *st = xcalloc(1, sizeof(*st));
    clock_gettime(CLOCK_MONOTONIC, &st->start);
    buf_init(&st->body, 0);
    st->path_copy = xstrdup(url);
    st->req.path = st->path_copy;
    st->req.method = method;
    st->req.conn = conn;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    st->track = ci ? ci->socket_context : NULL;
    snprintf(st->req.request_id, sizeof(st->req.request_id), "%016llx",
             (unsigned long long)atomic_fetch_add(&s->next_id, 1));
    remote_addr(conn, st->req.remote_addr, sizeof(st->req.remote_addr));
    client_addr(s, st);
    return st;
}

/* The route's own limit, never above the server-wide max_body (which admin uploads get). */
static size_t route_body_limit(const http_server *s, const struct http_route *r)
{
    size_t limit = r->max_body;
    if (limit == HTTP_BODY_DEFAULT)
        limit = HTTP_BODY_DEFAULT_BYTES;
    else if (limit == HTTP_BODY_NONE)
        limit = 0;
    return limit < s->opts.max_body ? limit : s->opts.max_body;
}

/* A declared Content-Length beyond limit (libmicrohttpd has already refused malformed ones). */
static int declared_too_large(const http_request *req, size_t limit)
{
    const char *cl = http_request_header(req, "Content-Length");
    if (cl == NULL)
        return 0;
    char *end = NULL;
    unsigned long long n = strtoull(cl, &end, 10);
    return end == cl || n > limit;
}

static void refuse(http_response *res, const struct req_state *st, int status, const char *reason)
{
    log_info("event=http_refused rid=%s client=%s method=%s path=%s status=%d reason=\"%s\"",
             st->req.request_id, st->req.client_addr, st->req.method, st->req.path, status, reason);
    http_response_error(res, status, reason);
}

/* 503 + Retry-After: the client (a device retries on its own) comes back later; the
 * connection is closed so its slot frees at once. */
static void overloaded(http_response *res, const struct req_state *st, const char *why)
{
    refuse(res, st, 503, why);
    http_response_set_header(res, "Retry-After", RETRY_AFTER);
    http_response_set_header(res, "Connection", "close");
}

/*
 * Everything decided from the request line and headers, before a byte of body: capacity,
 * route, repeated credential headers, the route's body limit and its own pre-body check.
 * Returns the metrics route of a response written to res, or -1 to go on reading the body.
 */
static int check_headers(http_server *s, struct req_state *st, http_response *res)
{
    if (limits_over_capacity(s->limits)) {
        limits_count(s->limits, HTTP_REFUSED_CAPACITY);
        overloaded(res, st, "the server is at capacity, retry later");
        return ROUTE_OVERLOADED;
    }
    int status = 0;
    int i = find_route(s, st, &status);
    if (i < 0) {
        http_response_error(res, status, status == 404 ? "not found" : "method not allowed");
        return ROUTE_UNMATCHED;
    }
    st->route = &s->opts.routes[i];
    st->req.route_index = i;
    /* Two credentials on one request: which one would a check read, and which one the
     * handler? Refuse rather than pick (docs/HTTP.md). */
    if (http_request_header_count(&st->req, "Authorization") > 1 ||
        http_request_header_count(&st->req, "Mdm-Signature") > 1) {
        refuse(res, st, 400, "repeated Authorization or Mdm-Signature header");
        return i;
    }
    const char *ph = s->opts.proxy_cert_header;
    if (ph && ph[0] && http_addr_in_list(s->opts.trusted_proxies, st->req.remote_addr) &&
        http_request_header_count(&st->req, ph) > 1) {
        refuse(res, st, 403, "repeated client certificate header from the proxy");
        return i;
    }
    st->body_limit = route_body_limit(s, st->route);
    if (declared_too_large(&st->req, st->body_limit)) {
        refuse(res, st, 413, "request body too large");
        return ROUTE_OVERSIZED;
    }
    if (st->route->prebody && st->route->prebody(s->opts.ctx, &st->req, res) != 0)
        return i;
    return -1;
}

/* Sends res now, before (or instead of) the rest of the body. */
static enum MHD_Result answer_early(http_server *s, struct MHD_Connection *conn,
                                    struct req_state *st, http_response *res, int route)
{
    st->answered = 1;
    limits_conn_phase(s->limits, st->track, HTTP_PHASE_HANDLER);
    limits_conn_linger(st->track);
    enum MHD_Result rc = queue(s, conn, st, res, route);
    response_cleanup(res);
    return rc;
}

/* By how much a buf of capacity cap grows to hold need bytes: core/buf.c's policy (64, then
 * doubling), so that the body-memory budget can be reserved before the allocation. */
static size_t growth_of(size_t cap, size_t need)
{
    size_t c = cap ? cap : 64;
    while (c < need)
        c *= 2;
    return need <= cap ? 0 : c - cap;
}

static void drop_body(http_server *s, struct req_state *st)
{
    if (st->reserved)
        limits_body_release(s->limits, st->reserved);
    st->reserved = 0;
    buf_cleanup(&st->body);
}

/* Refuses the request once the body has ended (see late_status); frees what it holds now. */
static void refuse_late(http_server *s, struct req_state *st, int status, const char *reason,
                        int route)
{
    size_t received = st->body.len;
    drop_body(s, st);
    st->late_status = status;
    st->late_reason = reason;
    st->late_route = route;
    st->discarded = received;
}

/* One piece of body. Returns MHD_NO to drop the connection. */
static enum MHD_Result take_body(http_server *s, struct req_state *st, const char *data,
                                 size_t *size)
{
    size_t n = *size;
    *size = 0;
    if (st->answered)
        return MHD_YES;
    if (limits_conn_expired(st->track)) {
        limits_count(s->limits, HTTP_REFUSED_BODY_TIMEOUT);
        log_info("event=http_refused rid=%s client=%s path=%s reason=body_timeout received=%zu",
                 st->req.request_id, st->req.client_addr, st->req.path,
                 st->late_status ? st->discarded : st->body.len);
        return MHD_NO;
    }
    if (st->late_status) {
        st->discarded += n;
        return st->discarded > DISCARD_MAX ? MHD_NO : MHD_YES;
    }
    if (n > st->body_limit - st->body.len) { /* chunked, beyond the route's limit */
        refuse_late(s, st, 413, "request body too large", ROUTE_OVERSIZED);
        st->discarded += n;
        return MHD_YES;
    }
    size_t growth = growth_of(st->body.cap, st->body.len + n + 1);
    if (growth && limits_body_reserve(s->limits, growth) != 0) {
        limits_count(s->limits, HTTP_REFUSED_BODY_MEMORY);
        refuse_late(s, st, 503, "the server is busy, retry later", ROUTE_OVERLOADED);
        st->discarded += n;
        return MHD_YES;
    }
    st->reserved += growth;
    buf_append(&st->body, data, n); /* within body_limit: cannot fail */
    return MHD_YES;
}

/* The answer to a request refused while its body was arriving. */
static enum MHD_Result answer_late(http_server *s, struct MHD_Connection *conn,
                                   struct req_state *st)
{
    http_response res = {.status = 200};
    buf_init(&res.body, 0);
    if (st->late_status == 503)
        overloaded(&res, st, st->late_reason);
    else
        refuse(&res, st, st->late_status, st->late_reason);
    limits_conn_phase(s->limits, st->track, HTTP_PHASE_HANDLER);
    enum MHD_Result rc = queue(s, conn, st, &res, st->late_route);
    response_cleanup(&res);
    return rc;
}

static enum MHD_Result dispatch(http_server *s, struct MHD_Connection *conn, struct req_state *st)
{
    http_response res = {.status = 200};
    buf_init(&res.body, 0);
    limits_conn_phase(s->limits, st->track, HTTP_PHASE_HANDLER);
    st->req.body = st->body.data ? st->body.data : "";
    st->req.body_len = st->body.len;
    st->route->handler(s->opts.ctx, &st->req, &res);
    enum MHD_Result rc = queue(s, conn, st, &res, st->req.route_index);
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
    if (st == NULL) { /* headers complete, no body read yet */
        st = state_new(s, conn, url, method);
        *con_cls = st;
        limits_conn_phase(s->limits, st->track, HTTP_PHASE_BODY);
        http_response res = {.status = 200};
        buf_init(&res.body, 0);
        int route = check_headers(s, st, &res);
        if (route >= 0)
            return answer_early(s, conn, st, &res, route);
        response_cleanup(&res);
        return MHD_YES;
    }
    if (*upload_data_size > 0)
        return take_body(s, st, upload_data, upload_data_size);
    if (st->answered)
        return MHD_YES;
    if (st->late_status)
        return answer_late(s, conn, st);
    return dispatch(s, conn, st);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    http_server *s = cls;
    (void)conn;
    (void)toe;
    struct req_state *st = *con_cls;
    if (st == NULL)
        return;
    /* Keep-alive: the connection now waits for the next request's headers. */
    limits_conn_phase(s->limits, st->track, HTTP_PHASE_HEADERS);
    drop_body(s, st);
    free(st->path_copy);
    free(st);
    *con_cls = NULL;
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    http_server *s = cls;
    if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
        limits_conn_close(s->limits, *socket_context);
        *socket_context = NULL;
        return;
    }
    const union MHD_ConnectionInfo *fd =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    const union MHD_ConnectionInfo *addr =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    *socket_context =
        limits_conn_open(s->limits, fd ? fd->connect_fd : -1, addr ? addr->client_addr : NULL);
}

static enum MHD_Result on_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
    (void)addrlen;
    http_server *s = cls;
    return limits_accept(s->limits, addr) ? MHD_YES : MHD_NO;
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

static void limits_defaults(const struct http_server_options *o, struct http_limits_config *c)
{
    c->header_timeout = o->header_timeout > 0 ? o->header_timeout : DEFAULT_HEADER_TIMEOUT;
    c->body_timeout = o->body_timeout > 0 ? o->body_timeout : DEFAULT_BODY_TIMEOUT;
    c->max_connections = o->max_connections > 0 ? o->max_connections : DEFAULT_MAX_CONNECTIONS;
    c->max_connections_per_address =
        o->max_connections_per_address == 0 ? DEFAULT_PER_ADDRESS : o->max_connections_per_address;
    c->body_memory = o->body_memory ? o->body_memory : DEFAULT_BODY_MEMORY;
    c->trusted_proxies = o->trusted_proxies ? o->trusted_proxies : "";
}

/*
 * The hard limit libmicrohttpd enforces by closing new connections unanswered: above the
 * capacity (whose excess gets a quick 503) by a margin, and within the open-files limit, which
 * is raised to its hard maximum if needed (Debian's default soft limit, 1024, would otherwise
 * cap the server far below its capacity).
 */
static unsigned int hard_connection_limit(int capacity)
{
    unsigned long want = (unsigned long)capacity + (capacity / 8 > 64 ? capacity / 8 : 64);
    /* Database, logs, APNs, webhooks, GnuTLS, and the sockets of lingering closes. */
    const unsigned long reserve = 128 + HTTP_LINGER_MAX;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return (unsigned int)want;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want + reserve) {
        rlim_t target = want + reserve;
        if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < target)
            target = rl.rlim_max;
        rl.rlim_cur = target;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want + reserve) {
        want = rl.rlim_cur > 2 * reserve ? rl.rlim_cur - reserve : rl.rlim_cur / 2;
    }
    return (unsigned int)want;
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
    struct http_limits_config lc;
    limits_defaults(o, &lc);
    unsigned int hard = hard_connection_limit(lc.max_connections);
    if ((unsigned long)lc.max_connections + 64 > hard) { /* the open-files limit is too low */
        int capacity = hard > 9 ? (int)(hard - hard / 9) : 1;
        log_warn("event=http_fd_limit connections=%u capacity=%d configured=%d "
                 "hint=\"raise the open-files limit (ulimit -n, LimitNOFILE=)\"",
                 hard, capacity, lc.max_connections);
        lc.max_connections = capacity;
    }
    s->limits = limits_new(&lc);
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
        {MHD_OPTION_HTTPS_PRIORITIES, 0, (void *)HTTP_TLS_PRIORITIES},
        {MHD_OPTION_CONNECTION_TIMEOUT, IDLE_TIMEOUT, NULL},
        {MHD_OPTION_CONNECTION_LIMIT, hard, NULL},
        {MHD_OPTION_CONNECTION_MEMORY_LIMIT, CONNECTION_MEMORY, NULL},
        {MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)on_completed, s},
        {MHD_OPTION_NOTIFY_CONNECTION, (intptr_t)on_connection, s},
        {MHD_OPTION_UNESCAPE_CALLBACK, (intptr_t)unescape, NULL},
        {MHD_OPTION_EXTERNAL_LOGGER, (intptr_t)mhd_log, NULL},
        {o->client_ca_pem ? MHD_OPTION_HTTPS_MEM_TRUST : MHD_OPTION_END, 0,
         (void *)o->client_ca_pem},
        {MHD_OPTION_END, 0, NULL},
    };
    s->daemon = MHD_start_daemon(flags, 0, on_accept, s, on_request, s, MHD_OPTION_ARRAY, opts,
                                 MHD_OPTION_END);
    if (s->daemon == NULL) {
        snprintf(err, err_len, "cannot serve on %s (address in use, or bad TLS certificate/key)",
                 o->listen);
        limits_free(s->limits);
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
    limits_free(s->limits);
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
    for (int i = 0; i < NSTATS; i++) {
        if (i < s->nroutes || i >= MAX_ROUTES)
            metrics_counts(s, i, out);
    }
    buf_puts(out, "# HELP orchard_http_request_duration_seconds Request latency by route.\n"
                  "# TYPE orchard_http_request_duration_seconds histogram\n");
    for (int i = 0; i < NSTATS; i++) {
        if (i < s->nroutes || i >= MAX_ROUTES)
            metrics_latency(s, i, out);
    }
    limits_metrics(s->limits, out);
}
