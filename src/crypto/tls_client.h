/*
 * Outgoing TLS connections for long-lived, non-blocking clients (the APNs HTTP/2 client):
 * TCP connect and TLS handshake with a deadline, server verification (CA file or the system
 * store, host name or IP address), a client certificate from memory, and ALPN. After the
 * handshake the connection is a non-blocking byte stream: callers poll tls_conn_fd() and
 * call tls_read()/tls_write() until they report that they would block.
 *
 * A tls_client is shared configuration (safe to read from many threads); a tls_conn belongs
 * to one thread at a time. Writes to a peer that has gone raise SIGPIPE: the process must
 * ignore it (`orchard serve` does).
 */
#ifndef ORCHARD_CRYPTO_TLS_CLIENT_H
#define ORCHARD_CRYPTO_TLS_CLIENT_H

#include <stddef.h>
#include <sys/types.h>

typedef struct tls_client tls_client;
typedef struct tls_conn tls_conn;

struct tls_client_options {
    const char *cert_pem; /* client certificate, then any chain (PEM); NULL for none */
    const char *key_pem;  /* its unencrypted private key (PEM) */
    const char *ca_file;  /* trust anchors; NULL or "" = the system store */
    const char *alpn;     /* the one application protocol to insist on, e.g. "h2"; or NULL */
    const char *proxy;    /* "http://HOST:PORT" (or "HOST:PORT"): tunnel with HTTP CONNECT;
                           * NULL or "" = connect directly */
};

/* NULL with a reason in err when the certificate, key or CA file cannot be used. */
tls_client *tls_client_new(const struct tls_client_options *o, char *err, size_t err_len);
void tls_client_free(tls_client *tc);

/*
 * Connects to host:port (a name, or an IPv4/IPv6 literal), through the proxy if one is
 * configured, and completes the handshake within timeout_ms, verifying the server against the
 * host (end to end: the proxy only relays the TLS bytes). NULL with a reason in err (also when
 * the server did not agree to the ALPN protocol).
 */
tls_conn *tls_connect(tls_client *tc, const char *host, int port, int timeout_ms, char *err,
                      size_t err_len);
int tls_conn_fd(const tls_conn *c);
/* Bytes read (> 0), 0 if it would block, -1 if the peer closed or the connection failed. */
ssize_t tls_read(tls_conn *c, void *buf, size_t len);
/*
 * Bytes written (> 0), 0 if it would block, -1 on failure. After 0, call again with the same
 * bytes first (the buffer may move).
 */
ssize_t tls_write(tls_conn *c, const void *buf, size_t len);
/* Sends close_notify when it can, closes the socket and frees; NULL is fine. */
void tls_close(tls_conn *c);

#endif
