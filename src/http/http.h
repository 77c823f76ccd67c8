/*
 * The HTTP layer: a thin wrapper over libmicrohttpd (GnuTLS, epoll, thread pool). It owns
 * body accumulation with a size cap (413), routing (404/405), per-request ids, the access log
 * and per-route metrics. Handlers only see `http_request` / `http_response`; nothing outside
 * src/http includes microhttpd.h or gnutls headers.
 *
 * Handlers run on the server's worker threads and must be thread-safe. A handler fills the
 * response; the layer sends it after the handler returns.
 */
#ifndef ORCHARD_HTTP_H
#define ORCHARD_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

#define HTTP_MAX_PARAMS 4
#define HTTP_THREADS_PER_CORE 4
#define HTTP_MAX_HEADERS 8

typedef struct http_request {
    const char *method; /* "GET", "PUT", ...; HEAD requests are routed as GET */
    const char *path;   /* decoded path without the query string */
    char request_id[17];
    char remote_addr[64]; /* the TCP peer */
    char client_addr[64]; /* the client: the peer, or what a trusted proxy forwarded */
    const char *body;     /* NUL-terminated copy of the body (may contain NULs) */
    size_t body_len;
    const char *params[HTTP_MAX_PARAMS]; /* values of {name} segments of the route, in order */
    int nparams;
    int route_index;
    void *conn; /* the libmicrohttpd connection; private to src/http */
} http_request;

typedef struct http_response {
    int status;
    const char *content_type; /* static string; NULL = no Content-Type */
    buf body;
    int nheaders;
    struct {
        char *name;
        char *value;
    } headers[HTTP_MAX_HEADERS];
} http_response;

typedef void (*http_handler)(void *ctx, http_request *req, http_response *res);

struct http_route {
    const char *method;  /* "GET", "POST", "PUT", "DELETE" or "*" for any */
    const char *pattern; /* "/api/v1/enrollments/{id}/commands"; a trailing "*" matches a rest */
    http_handler handler;
    const char *name; /* metric label */
};

/* Header and query lookups; the returned pointers live as long as the request. */
const char *http_request_header(const http_request *req, const char *name);
const char *http_request_query(const http_request *req, const char *name);
/* The raw value of the Cookie named name, copied into out; 0 if found. */
int http_request_cookie(const http_request *req, const char *name, char *out, size_t out_len);
/*
 * The TLS client certificate the peer presented, as DER (malloc'd, caller frees). Returns 0,
 * or -1 if the connection is not TLS or no certificate was sent. Not verified: that is the
 * caller's job (libmicrohttpd only requests a certificate).
 */
int http_request_client_cert(const http_request *req, uint8_t **der, size_t *len);

/*
 * Trusted reverse proxies (http/proxy.c). A list is comma- or space-separated IPv4/IPv6
 * addresses and CIDR ranges ("10.0.0.0/8, 2001:db8::/32, 127.0.0.1").
 */
/* 1 if addr (textual IPv4 or IPv6) is in list. */
int http_addr_in_list(const char *list, const char *addr);
/*
 * The client's address, written to out: the peer, or, when the peer is in `trusted`, the
 * right-most address of X-Forwarded-For that is not itself trusted (the peer again if the
 * header is absent or malformed).
 */
void http_client_addr(const char *trusted, const char *peer, const char *forwarded_for, char *out,
                      size_t len);

/* Response helpers. */
void http_response_set_header(http_response *res, const char *name, const char *value);
/* Sets status, Content-Type and a copy of the body. */
void http_response_send(http_response *res, int status, const char *content_type, const void *body,
                        size_t len);
/* A JSON error body {"error": msg} with the status. */
void http_response_error(http_response *res, int status, const char *msg);

typedef struct http_server http_server;

struct http_server_options {
    const char *listen; /* HOST:PORT */
    const char *cert_pem, *key_pem;
    const char *client_ca_pem;   /* if set, TLS client certificates are requested */
    const char *trusted_proxies; /* peers whose X-Forwarded-For is believed (http_addr_in_list);
                                  * not copied: must outlive the server */
    int threads;                 /* 0 = HTTP_THREADS_PER_CORE per core */
    size_t max_body;
    int access_log;
    const struct http_route *routes; /* terminated by a NULL pattern; not copied */
    void *ctx;                       /* passed to handlers */
};

/* Starts serving; NULL + message on error (bad address, bad certificate, port in use). */
http_server *http_server_start(const struct http_server_options *o, char *err, size_t err_len);
/* Stops accepting, lets in-flight requests finish (up to timeout_ms), then stops. */
void http_server_stop(http_server *s, int timeout_ms);
/* The port actually bound (useful with port 0). */
int http_server_port(const http_server *s);
/* Appends Prometheus text for request counts and latencies by route. */
void http_server_metrics(http_server *s, buf *out);

/* Matches path against a route pattern, filling params (pointers into scratch). Exposed for
 * tests. Returns 1 on match. */
int http_route_match(const char *pattern, const char *path, char *scratch, size_t scratch_len,
                     const char **params, int *nparams);

#endif
