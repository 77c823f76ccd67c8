/*
 * The HTTP layer: a thin wrapper over libmicrohttpd (GnuTLS, epoll, thread pool). It owns
 * routing (404/405) *before* any body byte is read, per-route body limits (413), an optional
 * per-route check on the headers alone (the admin API key, "does this device offer an
 * identity at all"), the connection limits and deadlines of docs/HTTP.md (limits.c), per-request
 * ids, the access log and per-route metrics. Handlers only see `http_request` / `http_response`;
 * nothing outside src/http includes microhttpd.h or gnutls headers.
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
/*
 * A check on the request line and headers alone, run before any byte of the body is read
 * (req->body is NULL). Returns 0 to go on, or non-zero after filling res (status, body): that
 * response is sent at once and the body is never read.
 */
typedef int (*http_prebody_check)(void *ctx, http_request *req, http_response *res);

/* Body limits of a route (struct http_route.max_body), besides a number of bytes. */
#define HTTP_BODY_DEFAULT 0           /* 0: HTTP_BODY_DEFAULT_BYTES */
#define HTTP_BODY_DEFAULT_BYTES 65536 /* small JSON, forms, SCEP messages */
#define HTTP_BODY_NONE ((size_t)-2)   /* no body at all (GET) */
#define HTTP_BODY_UPLOAD ((size_t)-1) /* the server-wide max_body (admin uploads) */

struct http_route {
    const char *method;  /* "GET", "POST", "PUT", "DELETE" or "*" for any */
    const char *pattern; /* "/api/v1/enrollments/{id}/commands"; a trailing "*" matches a rest */
    http_handler handler;
    const char *name; /* metric label */
    /* Largest body this route accepts, in bytes, or one of HTTP_BODY_*: a declared
     * Content-Length beyond it is a 413 before the body is read, a chunked body is cut off
     * there. Leaving it out (0) means HTTP_BODY_DEFAULT_BYTES, so a new route is small. */
    size_t max_body;
    http_prebody_check prebody; /* optional */
};

/* Header and query lookups; the returned pointers live as long as the request. A repeated
 * header gives its first line: use http_request_header_unique where a second line would be an
 * attack (credentials, identities). */
const char *http_request_header(const http_request *req, const char *name);
/* How many header lines are named name (case-insensitive). */
int http_request_header_count(const http_request *req, const char *name);
/* The value of a header that may appear at most once: 0 with *value (NULL when absent), or -1
 * (and *value NULL) when it appears on more than one line. */
int http_request_header_unique(const http_request *req, const char *name, const char **value);
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
 * header is absent or malformed). forwarded_for is the whole field: every line of a repeated
 * header joined in order (http_forwarded_join), never only the first line, which a client
 * could have written itself while the proxy appended its own line.
 */
void http_client_addr(const char *trusted, const char *peer, const char *forwarded_for, char *out,
                      size_t len);
/*
 * The lines of a repeated header joined as one list, in order, with ", " (RFC 9110 5.3).
 * Returns a new string (caller frees), or NULL when n == 0.
 */
char *http_forwarded_join(const char *const *lines, size_t n);

/* Response helpers. */
void http_response_set_header(http_response *res, const char *name, const char *value);
/* Sets status, Content-Type and a copy of the body. */
void http_response_send(http_response *res, int status, const char *content_type, const void *body,
                        size_t len);
/* A JSON error body {"error": msg} with the status. */
void http_response_error(http_response *res, int status, const char *msg);

typedef struct http_server http_server;

/* TLS 1.2 and 1.3 only, AEAD ciphers with ECDHE, X25519 first (docs/HTTP.md explains each
 * part; with server precedence, a group the client sent no key share for would cost every
 * TLS 1.3 handshake a HelloRetryRequest round trip). */
#define HTTP_TLS_PRIORITIES                                                                        \
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:"            \
    "+CHACHA20-POLY1305:-MAC-ALL:+AEAD:-KX-ALL:+ECDHE-ECDSA:+ECDHE-RSA:-GROUP-ALL:+GROUP-X25519:"  \
    "+GROUP-SECP256R1:+GROUP-SECP384R1:%SERVER_PRECEDENCE"

struct http_server_options {
    const char *listen; /* HOST:PORT */
    const char *cert_pem, *key_pem;
    const char *client_ca_pem;     /* if set, TLS client certificates are requested */
    const char *trusted_proxies;   /* peers whose X-Forwarded-For is believed (http_addr_in_list);
                                    * not copied: must outlive the server */
    const char *proxy_cert_header; /* the one header a trusted proxy passes the client
                                    * certificate in ("" = none); repeated from such a peer:
                                    * 403. Not copied. */
    int threads;                   /* 0 = HTTP_THREADS_PER_CORE per core */
    size_t max_body;               /* cap of every route; what HTTP_BODY_UPLOAD routes get */
    int access_log;
    /* Limits (docs/HTTP.md); 0 picks the default in brackets. */
    int header_timeout;              /* s from accept / end of the last response to complete headers
                                      * (TLS handshake included) [20] */
    int body_timeout;                /* s from complete headers to the last body byte [60] */
    int max_connections;             /* beyond it, 503 + Retry-After [10000] */
    int max_connections_per_address; /* per IPv4 address / IPv6 /64, trusted proxies exempt;
                                      * -1 = off [100] */
    size_t body_memory; /* bytes of request bodies held at once, all requests [256 MiB] */
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
