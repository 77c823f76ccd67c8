/*
 * Connection limits and deadlines of the HTTP layer (private to src/http; docs/HTTP.md).
 *
 * libmicrohttpd only knows an *idle* timeout, so a client that sends one byte every few
 * seconds would hold a connection (and its TLS session and buffers) forever. This module
 * tracks every open connection with a deadline for its current phase -- TLS handshake plus
 * request headers, then the body -- and a reaper thread shuts down the socket of any
 * connection past its deadline (libmicrohttpd then sees end-of-stream and cleans up as usual).
 * It also counts connections per client address (IPv4 address or IPv6 /64, trusted proxies
 * exempt), the total against the configured capacity, and the bytes of request bodies held in
 * memory by all requests together.
 *
 * All functions are thread-safe.
 */
#ifndef ORCHARD_HTTP_LIMITS_H
#define ORCHARD_HTTP_LIMITS_H

#include <stddef.h>
#include <sys/socket.h>

#include "core/buf.h"

/* Sockets kept open at most for a lingering close (limits.c); they need descriptors too. */
#define HTTP_LINGER_MAX 1024

typedef struct http_limits http_limits;
typedef struct http_conn http_conn;

struct http_limits_config {
    int header_timeout;              /* seconds */
    int body_timeout;                /* seconds */
    int max_connections;             /* capacity: beyond it, requests get 503 */
    int max_connections_per_address; /* -1 = no limit */
    size_t body_memory;              /* bytes */
    const char *trusted_proxies;     /* exempt from the per-address limit; not copied */
};

/* The phase a connection is in, which decides its deadline. */
enum http_conn_phase {
    HTTP_PHASE_HEADERS, /* TLS handshake, or waiting for (the rest of) a request's headers */
    HTTP_PHASE_BODY,    /* headers complete, body being read */
    HTTP_PHASE_HANDLER, /* our turn: no deadline (libmicrohttpd's idle timeout still applies) */
};

/* Starts the reaper thread. Never NULL. */
http_limits *limits_new(const struct http_limits_config *c);
/* Stops the reaper; call after libmicrohttpd has closed every connection. NULL is fine. */
void limits_free(http_limits *l);

/* For libmicrohttpd's accept policy: 1 if a connection from sa may be accepted (cheap check,
 * before a TLS session is allocated; limits_conn_open is the exact one). */
int limits_accept(http_limits *l, const struct sockaddr *sa);
/*
 * A new connection (before its TLS handshake). Tracks it in HTTP_PHASE_HEADERS. If its
 * address already has max_connections_per_address connections, the socket is shut down at
 * once (counted as refused). Returns the record to pass to the other functions.
 */
http_conn *limits_conn_open(http_limits *l, int fd, const struct sockaddr *sa);
/* The connection was answered before its body was read: when it closes, drain what the client
 * still sends for a few seconds instead of resetting it (limits.c, "lingering close"). */
void limits_conn_linger(http_conn *c);
/* The connection is closing; its record is freed. Must come before the socket is closed. */
void limits_conn_close(http_limits *l, http_conn *c);
void limits_conn_phase(http_limits *l, http_conn *c, enum http_conn_phase p);
/* 1 if the connection's deadline for its current phase has passed. */
int limits_conn_expired(const http_conn *c);

/* 1 if more connections are open than max_connections (this request should get 503). */
int limits_over_capacity(http_limits *l);

/* Reserves n bytes of the body-memory budget: 0, or -1 if that would exceed it. */
int limits_body_reserve(http_limits *l, size_t n);
void limits_body_release(http_limits *l, size_t n);

enum http_refusal {
    HTTP_REFUSED_PER_ADDRESS,
    HTTP_REFUSED_HEADER_TIMEOUT,
    HTTP_REFUSED_BODY_TIMEOUT,
    HTTP_REFUSED_CAPACITY,
    HTTP_REFUSED_BODY_MEMORY,
    HTTP_REFUSED_N
};
void limits_count(http_limits *l, enum http_refusal r);

/* Appends Prometheus text: open connections, body bytes held, refusals by reason. */
void limits_metrics(http_limits *l, buf *out);

#endif
