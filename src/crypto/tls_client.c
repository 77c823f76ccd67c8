/*
 * Outgoing TLS over a non-blocking socket (see tls_client.h). The handshake is driven by poll()
 * against one deadline that also covers DNS-free TCP connect; afterwards reads and writes never
 * block. The client key is parsed from memory and never written anywhere.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "crypto/tls_client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/mem.h"

struct tls_client {
    SSL_CTX *ctx;
    unsigned char alpn[64]; /* wire format: length-prefixed */
    size_t alpn_len;
    char proxy_host[256]; /* "" = direct */
    int proxy_port;
};

struct tls_conn {
    int fd;
    SSL *ssl;
};

static void tls_err(char *err, size_t err_len, const char *what)
{
    unsigned long e = ERR_get_error();
    char detail[160] = "";
    if (e != 0)
        ERR_error_string_n(e, detail, sizeof(detail));
    ERR_clear_error();
    snprintf(err, err_len, "%s%s%s", what, detail[0] ? ": " : "", detail);
}

/* Loads the leaf and any chain certificates that follow it in the PEM. */
static int use_cert_chain(SSL_CTX *ctx, const char *pem)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    X509 *leaf = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    int ok = leaf != NULL && SSL_CTX_use_certificate(ctx, leaf) == 1;
    X509_free(leaf);
    X509 *extra;
    while (ok && (extra = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL)
        if (SSL_CTX_add_extra_chain_cert(ctx, extra) != 1) { /* takes ownership on success */
            X509_free(extra);
            ok = 0;
        }
    ERR_clear_error(); /* the end of the PEM reads as an error */
    BIO_free(b);
    return ok;
}

static int use_key(SSL_CTX *ctx, const char *pem)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    EVP_PKEY *k = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
    int ok = k != NULL && SSL_CTX_use_PrivateKey(ctx, k) == 1 && SSL_CTX_check_private_key(ctx);
    EVP_PKEY_free(k);
    BIO_free(b);
    return ok;
}

static int set_alpn(tls_client *tc, const char *alpn)
{
    size_t n = strlen(alpn);
    if (n == 0 || n >= sizeof(tc->alpn) - 1)
        return -1;
    tc->alpn[0] = (unsigned char)n;
    memcpy(tc->alpn + 1, alpn, n);
    tc->alpn_len = n + 1;
    return SSL_CTX_set_alpn_protos(tc->ctx, tc->alpn, (unsigned)tc->alpn_len) == 0 ? 0 : -1;
}

/* "http://HOST:PORT[/]" or "HOST:PORT" ("[v6]:PORT" too) into tc->proxy_host/port. */
static int parse_proxy(tls_client *tc, const char *proxy)
{
    const char *p = proxy;
    if (strncasecmp(p, "http://", 7) == 0)
        p += 7;
    else if (strstr(p, "://") != NULL)
        return -1; /* https:// proxies (TLS to the proxy) are not supported */
    const char *host = p, *end;
    if (*p == '[') {
        host = p + 1;
        end = strchr(host, ']');
        if (end == NULL || end[1] != ':')
            return -1;
        p = end + 1;
    } else {
        end = strrchr(p, ':');
        if (end == NULL)
            return -1;
        p = end;
    }
    size_t n = (size_t)(end - host);
    char *rest = NULL;
    long port = strtol(p + 1, &rest, 10);
    if (n == 0 || n >= sizeof(tc->proxy_host) || memchr(host, '@', n) != NULL || port < 1 ||
        port > 65535 || rest == p + 1 || (*rest != '\0' && strcmp(rest, "/") != 0))
        return -1;
    memcpy(tc->proxy_host, host, n);
    tc->proxy_host[n] = '\0';
    tc->proxy_port = (int)port;
    return 0;
}

tls_client *tls_client_new(const struct tls_client_options *o, char *err, size_t err_len)
{
    tls_client *tc = xcalloc(1, sizeof(*tc));
    tc->ctx = SSL_CTX_new(TLS_client_method());
    if (tc->ctx == NULL) {
        tls_err(err, err_len, "SSL_CTX_new");
        goto fail;
    }
    SSL_CTX_set_min_proto_version(tc->ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(tc->ctx, SSL_VERIFY_PEER, NULL);
    /* A write that would block is retried from a buffer that may have moved or grown. */
    SSL_CTX_set_mode(tc->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    int trust = o->ca_file != NULL && o->ca_file[0] != '\0'
                    ? SSL_CTX_load_verify_locations(tc->ctx, o->ca_file, NULL)
                    : SSL_CTX_set_default_verify_paths(tc->ctx);
    if (trust != 1) {
        tls_err(err, err_len, "cannot load the CA file");
        goto fail;
    }
    if (o->cert_pem != NULL && !use_cert_chain(tc->ctx, o->cert_pem)) {
        tls_err(err, err_len, "cannot use the client certificate");
        goto fail;
    }
    if (o->cert_pem != NULL && (o->key_pem == NULL || !use_key(tc->ctx, o->key_pem))) {
        tls_err(err, err_len,
                "cannot use the client key (unencrypted PEM matching the certificate)");
        goto fail;
    }
    if (o->alpn != NULL && set_alpn(tc, o->alpn) != 0) {
        snprintf(err, err_len, "bad ALPN protocol");
        goto fail;
    }
    if (o->proxy != NULL && o->proxy[0] != '\0' && parse_proxy(tc, o->proxy) != 0) {
        snprintf(err, err_len, "the proxy must be http://HOST:PORT");
        goto fail;
    }
    return tc;
fail:
    tls_client_free(tc);
    return NULL;
}

void tls_client_free(tls_client *tc)
{
    if (tc == NULL)
        return;
    SSL_CTX_free(tc->ctx);
    free(tc);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for events on fd until the deadline; 1 ready, 0 timed out, -1 error. */
static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0)
            return 0;
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, (int)left);
        if (r >= 0 || errno != EINTR)
            return r > 0 ? 1 : r;
    }
}

/* A connected non-blocking socket to one of host's addresses, or -1. */
static int tcp_connect(const char *host, int port, int64_t deadline, char *err, size_t err_len)
{
    char service[16];
    snprintf(service, sizeof(service), "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int gai = getaddrinfo(host, service, &hints, &res);
    if (gai != 0) {
        snprintf(err, err_len, "cannot resolve %s: %s", host, gai_strerror(gai));
        return -1;
    }
    int fd = -1;
    snprintf(err, err_len, "cannot connect to %s:%d", host, port);
    for (struct addrinfo *a = res; a != NULL && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0)
            continue;
        int soerr = 0;
        socklen_t sl = sizeof(soerr);
        if (connect(fd, a->ai_addr, a->ai_addrlen) != 0 &&
            (errno != EINPROGRESS || wait_fd(fd, POLLOUT, deadline) != 1 ||
             getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 || soerr != 0)) {
            snprintf(err, err_len, "cannot connect to %s:%d: %s", host, port,
                     soerr                  ? strerror(soerr)
                     : now_ms() >= deadline ? "timeout"
                                            : strerror(errno));
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd >= 0) {
        int one = 1;
        /* Small frames go out at once; keepalive notices a peer that vanished while idle. */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    }
    return fd;
}

/* Sets SNI and the identity the server certificate must carry (name or IP address). */
static int expect_host(SSL *ssl, const char *host)
{
    unsigned char ip[16];
    if (inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1)
        return X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) == 1 ? 0 : -1;
    if (SSL_set_tlsext_host_name(ssl, host) != 1 || SSL_set1_host(ssl, host) != 1)
        return -1;
    return 0;
}

static int handshake(tls_client *tc, tls_conn *c, int64_t deadline, char *err, size_t err_len)
{
    for (;;) {
        int r = SSL_connect(c->ssl);
        if (r == 1)
            break;
        int e = SSL_get_error(c->ssl, r);
        short ev = e == SSL_ERROR_WANT_READ ? POLLIN : e == SSL_ERROR_WANT_WRITE ? POLLOUT : 0;
        if (ev == 0) {
            long v = SSL_get_verify_result(c->ssl);
            if (v != X509_V_OK)
                snprintf(err, err_len, "TLS handshake: server certificate: %s",
                         X509_verify_cert_error_string(v));
            else
                tls_err(err, err_len, "TLS handshake failed");
            return -1;
        }
        if (wait_fd(c->fd, ev, deadline) != 1) {
            snprintf(err, err_len, "TLS handshake timed out");
            return -1;
        }
    }
    if (tc->alpn_len > 0) {
        const unsigned char *p = NULL;
        unsigned n = 0;
        SSL_get0_alpn_selected(c->ssl, &p, &n);
        if (n + 1 != tc->alpn_len || memcmp(p, tc->alpn + 1, n) != 0) {
            snprintf(err, err_len, "the server did not agree to ALPN %.*s", (int)tc->alpn_len - 1,
                     (const char *)tc->alpn + 1);
            return -1;
        }
    }
    return 0;
}

/*
 * Asks the proxy on fd for a tunnel to host:port (RFC 9110 CONNECT) and reads its answer up to
 * the blank line, a byte at a time so that nothing of the tunnel is consumed. 0 on a 2xx.
 */
static int proxy_tunnel(int fd, const char *host, int port, int64_t deadline, char *err,
                        size_t err_len)
{
    char req[600];
    int v6 = strchr(host, ':') != NULL;
    int n = snprintf(req, sizeof(req),
                     "CONNECT %s%s%s:%d HTTP/1.1\r\nHost: %s%s%s:%d\r\n"
                     "User-Agent: orchard\r\n\r\n",
                     v6 ? "[" : "", host, v6 ? "]" : "", port, v6 ? "[" : "", host, v6 ? "]" : "",
                     port);
    for (int off = 0; off < n;) {
        ssize_t w = send(fd, req + off, (size_t)(n - off), MSG_NOSIGNAL);
        if (w > 0)
            off += (int)w;
        else if (w < 0 && errno != EAGAIN && errno != EINTR)
            goto io_error;
        else if (wait_fd(fd, POLLOUT, deadline) != 1)
            goto timeout;
    }
    char resp[4096];
    size_t len = 0;
    while (len < 4 || memcmp(resp + len - 4, "\r\n\r\n", 4) != 0) {
        if (len + 1 >= sizeof(resp)) {
            snprintf(err, err_len, "proxy: answer too long");
            return -1;
        }
        ssize_t r = recv(fd, resp + len, 1, 0);
        if (r == 1) {
            len++;
        } else if (r == 0) {
            snprintf(err, err_len, "proxy: closed the connection before answering CONNECT");
            return -1;
        } else if (errno != EAGAIN && errno != EINTR) {
            goto io_error;
        } else if (wait_fd(fd, POLLIN, deadline) != 1) {
            goto timeout;
        }
    }
    resp[len] = '\0';
    int status = 0;
    if (sscanf(resp, "HTTP/1.%*1[01] %3d", &status) != 1 || status < 200 || status > 299) {
        size_t line = strcspn(resp, "\r\n");
        snprintf(err, err_len, "proxy refused CONNECT %s:%d: %.*s", host, port,
                 (int)(line < 120 ? line : 120), resp);
        return -1;
    }
    return 0;
io_error:
    snprintf(err, err_len, "proxy: connection failed: %s", strerror(errno));
    return -1;
timeout:
    snprintf(err, err_len, "proxy: CONNECT timed out");
    return -1;
}

tls_conn *tls_connect(tls_client *tc, const char *host, int port, int timeout_ms, char *err,
                      size_t err_len)
{
    int64_t deadline = now_ms() + timeout_ms;
    int direct = tc->proxy_host[0] == '\0';
    int fd = tcp_connect(direct ? host : tc->proxy_host, direct ? port : tc->proxy_port, deadline,
                         err, err_len);
    if (fd < 0)
        return NULL;
    if (!direct && proxy_tunnel(fd, host, port, deadline, err, err_len) != 0) {
        close(fd);
        return NULL;
    }
    tls_conn *c = xcalloc(1, sizeof(*c));
    c->fd = fd;
    c->ssl = SSL_new(tc->ctx);
    if (c->ssl == NULL || SSL_set_fd(c->ssl, fd) != 1 || expect_host(c->ssl, host) != 0) {
        tls_err(err, err_len, "SSL_new");
        tls_close(c);
        return NULL;
    }
    if (handshake(tc, c, deadline, err, err_len) != 0) {
        tls_close(c);
        return NULL;
    }
    return c;
}

int tls_conn_fd(const tls_conn *c)
{
    return c->fd;
}

ssize_t tls_read(tls_conn *c, void *buf, size_t len)
{
    int r = SSL_read(c->ssl, buf, len > INT32_MAX ? INT32_MAX : (int)len);
    if (r > 0)
        return r;
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    ERR_clear_error();
    return -1;
}

ssize_t tls_write(tls_conn *c, const void *buf, size_t len)
{
    if (len == 0)
        return 0;
    int w = SSL_write(c->ssl, buf, len > INT32_MAX ? INT32_MAX : (int)len);
    if (w > 0)
        return w;
    int e = SSL_get_error(c->ssl, w);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    ERR_clear_error();
    return -1;
}

void tls_close(tls_conn *c)
{
    if (c == NULL)
        return;
    if (c->ssl != NULL) {
        SSL_shutdown(c->ssl); /* one non-blocking attempt at close_notify */
        SSL_free(c->ssl);
    }
    ERR_clear_error();
    close(c->fd);
    free(c);
}
