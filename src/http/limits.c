/*
 * Connection tracking for the limits of docs/HTTP.md: per-phase deadlines enforced by a
 * reaper thread, connections per client address, capacity, and the body-memory budget.
 *
 * Why a reaper and not libmicrohttpd's options: MHD_OPTION_CONNECTION_TIMEOUT is an idle
 * timeout (every byte resets it), and MHD_OPTION_PER_IP_CONNECTION_LIMIT counts exact
 * addresses (one IPv6 host owns a /64) and cannot exempt a load balancer. The reaper never
 * closes a socket itself: it calls shutdown(), libmicrohttpd reads end-of-stream and closes the
 * connection through its normal path. Records are removed in MHD_CONNECTION_NOTIFY_CLOSED,
 * which libmicrohttpd calls before it closes the socket, and both happen under one mutex, so
 * the reaper never shuts down a descriptor number that was already reused.
 */
#include "http/limits.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <unistd.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
#include "core/mem.h"
#include "http/http.h"

#define ADDR_BUCKETS 4096
#define REAPER_TICK_MS 250
#define SUMMARY_EVERY_MS 10000
/* A connection accepted while over capacity only gets a 503; it has this long to ask. */
#define OVER_CAPACITY_HEADER_TIMEOUT 5
/* Lingering close (below): how long, how many sockets at once, how much per wake-up. */
#define LINGER_MS 5000
#define LINGER_MAX HTTP_LINGER_MAX
#define LINGER_READ_MAX (256 * 1024)

struct addr_entry {
    struct addr_entry *next;
    uint8_t key[16];
    int count;
};

struct http_conn {
    struct http_conn *prev, *next;
    int fd;
    int keyed; /* counted under key (not a trusted proxy) */
    uint8_t key[16];
    int shut;                      /* shut down by the reaper or the per-address limit */
    atomic_int linger;             /* answered before its body was read: close gracefully */
    atomic_int phase;              /* enum http_conn_phase: set by workers, read by the reaper */
    _Atomic long long deadline_ms; /* CLOCK_MONOTONIC; 0 = none */
};

/* A socket kept open after libmicrohttpd closed its descriptor, to drain what the client still
 * sends (see limits_conn_close). */
struct lingering {
    struct lingering *prev, *next;
    int fd;
    long long until_ms;
};

struct http_limits {
    struct http_limits_config cfg;
    pthread_mutex_t lock; /* the lists, the address table and every record's shut/fd */
    struct http_conn *head;
    struct lingering *lingering;
    int nlingering;
    int epoll_fd; /* the lingering sockets */
    struct addr_entry *buckets[ADDR_BUCKETS];
    atomic_int open;
    atomic_size_t body_used;
    atomic_ullong refused[HTTP_REFUSED_N];
    unsigned long long reported[HTTP_REFUSED_N];
    pthread_t reaper;
    atomic_int stopping;
};

static const char *const refusal_names[HTTP_REFUSED_N] = {
    "per_address", "header_timeout", "body_timeout", "capacity", "body_memory"};

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * The key an address is counted under: an IPv4 address (also when IPv4-mapped), or the /64
 * of an IPv6 address, since one IPv6 host is normally given a whole /64 and can pick any
 * address in it. 0 if the address is usable.
 */
static int address_key(const struct sockaddr *sa, uint8_t key[16], char *text, size_t text_len)
{
    memset(key, 0, 16);
    if (sa == NULL)
        return -1;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        key[10] = key[11] = 0xff;
        memcpy(key + 12, &in->sin_addr, 4);
        inet_ntop(AF_INET, &in->sin_addr, text, (socklen_t)text_len);
        return 0;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        memcpy(key, &in6->sin6_addr, 16);
        inet_ntop(AF_INET6, &in6->sin6_addr, text, (socklen_t)text_len);
        if (!IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr))
            memset(key + 8, 0, 8);
        return 0;
    }
    return -1;
}

static unsigned bucket_of(const uint8_t key[16])
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (int i = 0; i < 16; i++)
        h = (h ^ key[i]) * 16777619u;
    return h % ADDR_BUCKETS;
}

/* The entry for key (created with count 0 when create is set); lock held. */
static struct addr_entry *addr_find(http_limits *l, const uint8_t key[16], int create)
{
    struct addr_entry **pp = &l->buckets[bucket_of(key)];
    for (struct addr_entry *e = *pp; e; e = e->next) {
        if (memcmp(e->key, key, 16) == 0)
            return e;
    }
    if (!create)
        return NULL;
    struct addr_entry *e = xcalloc(1, sizeof(*e));
    memcpy(e->key, key, 16);
    e->next = *pp;
    *pp = e;
    return e;
}

static void addr_release(http_limits *l, const uint8_t key[16])
{
    struct addr_entry **pp = &l->buckets[bucket_of(key)];
    for (struct addr_entry *e = *pp; e; pp = &e->next, e = e->next) {
        if (memcmp(e->key, key, 16) != 0)
            continue;
        if (--e->count <= 0) {
            *pp = e->next;
            free(e);
        }
        return;
    }
}

/* 1 if connections from this address are counted (the per-address limit is on and the peer
 * is not a trusted proxy: behind a load balancer every device shares the balancer's address,
 * and limiting per client is the balancer's job, docs/HTTP.md). */
static int counted(const http_limits *l, const char *text)
{
    return l->cfg.max_connections_per_address >= 0 &&
           !http_addr_in_list(l->cfg.trusted_proxies, text);
}

int limits_accept(http_limits *l, const struct sockaddr *sa)
{
    uint8_t key[16];
    char text[64] = "";
    if (address_key(sa, key, text, sizeof(text)) != 0 || !counted(l, text))
        return 1;
    pthread_mutex_lock(&l->lock);
    struct addr_entry *e = addr_find(l, key, 0);
    int ok = e == NULL || e->count < l->cfg.max_connections_per_address;
    pthread_mutex_unlock(&l->lock);
    if (!ok) {
        limits_count(l, HTTP_REFUSED_PER_ADDRESS);
        log_debug("event=http_refused reason=per_address remote=%s", text);
    }
    return ok;
}

static void set_deadline(http_limits *l, http_conn *c, enum http_conn_phase p)
{
    long long secs = 0;
    if (p == HTTP_PHASE_HEADERS)
        secs = atomic_load(&l->open) > l->cfg.max_connections &&
                       l->cfg.header_timeout > OVER_CAPACITY_HEADER_TIMEOUT
                   ? OVER_CAPACITY_HEADER_TIMEOUT
                   : l->cfg.header_timeout;
    else if (p == HTTP_PHASE_BODY)
        secs = l->cfg.body_timeout;
    atomic_store(&c->phase, (int)p);
    atomic_store(&c->deadline_ms, secs ? now_ms() + secs * 1000 : 0);
}

http_conn *limits_conn_open(http_limits *l, int fd, const struct sockaddr *sa)
{
    http_conn *c = xcalloc(1, sizeof(*c));
    char text[64] = "";
    c->fd = fd;
    atomic_fetch_add(&l->open, 1);
    set_deadline(l, c, HTTP_PHASE_HEADERS);
    int refuse = 0;
    pthread_mutex_lock(&l->lock);
    if (address_key(sa, c->key, text, sizeof(text)) == 0 && counted(l, text)) {
        struct addr_entry *e = addr_find(l, c->key, 1);
        e->count++;
        c->keyed = 1;
        refuse = e->count > l->cfg.max_connections_per_address;
    }
    c->next = l->head;
    if (l->head)
        l->head->prev = c;
    l->head = c;
    if (refuse) {
        /* Over the per-address limit: no TLS handshake, no request. The client sees the
         * connection closed; libmicrohttpd cleans up as for any peer that hung up. */
        shutdown(fd, SHUT_RDWR);
        c->shut = 1;
    }
    pthread_mutex_unlock(&l->lock);
    if (refuse) {
        limits_count(l, HTTP_REFUSED_PER_ADDRESS);
        log_debug("event=http_refused reason=per_address remote=%s", text);
    }
    return c;
}

/*
 * Lingering close, as nginx does it: a request answered before its body was read (404, 413,
 * 401, ...) still has body bytes on the way. If the socket were closed with them unread, the
 * kernel would answer with a reset, and a client that writes its whole body before reading
 * (most do) would see "connection reset" instead of our 4xx. So the socket is kept open for a
 * few seconds on a duplicate descriptor, its write side shut (the client sees the end of the
 * response), and whatever arrives is read and thrown away. Nothing is buffered, and the number
 * of such sockets is capped. Lock held.
 */
static void linger_start(http_limits *l, int fd)
{
    if (l->nlingering >= LINGER_MAX || l->epoll_fd < 0)
        return;
    int dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup_fd < 0)
        return;
    struct lingering *g = xcalloc(1, sizeof(*g));
    g->fd = dup_fd;
    g->until_ms = now_ms() + LINGER_MS;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = g};
    fcntl(dup_fd, F_SETFL, fcntl(dup_fd, F_GETFL) | O_NONBLOCK);
    if (epoll_ctl(l->epoll_fd, EPOLL_CTL_ADD, dup_fd, &ev) != 0) {
        close(dup_fd);
        free(g);
        return;
    }
    shutdown(dup_fd, SHUT_WR);
    g->next = l->lingering;
    if (g->next)
        g->next->prev = g;
    l->lingering = g;
    l->nlingering++;
}

static void linger_end(http_limits *l, struct lingering *g)
{
    epoll_ctl(l->epoll_fd, EPOLL_CTL_DEL, g->fd, NULL);
    close(g->fd);
    if (g->prev)
        g->prev->next = g->next;
    else
        l->lingering = g->next;
    if (g->next)
        g->next->prev = g->prev;
    l->nlingering--;
    free(g);
}

/* Reads and discards; ends the linger at end-of-stream or error. Lock held. */
static void linger_drain(http_limits *l, struct lingering *g)
{
    char sink[16384];
    for (size_t total = 0; total < LINGER_READ_MAX;) {
        ssize_t n = recv(g->fd, sink, sizeof(sink), MSG_DONTWAIT);
        if (n > 0) {
            total += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        linger_end(l, g);
        return;
    }
}

void limits_conn_linger(http_conn *c)
{
    if (c != NULL)
        atomic_store(&c->linger, 1);
}

void limits_conn_close(http_limits *l, http_conn *c)
{
    if (c == NULL)
        return;
    pthread_mutex_lock(&l->lock);
    if (atomic_load(&c->linger) && !c->shut && c->fd >= 0)
        linger_start(l, c->fd);
    if (c->prev)
        c->prev->next = c->next;
    else
        l->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (c->keyed)
        addr_release(l, c->key);
    pthread_mutex_unlock(&l->lock);
    atomic_fetch_sub(&l->open, 1);
    free(c);
}

void limits_conn_phase(http_limits *l, http_conn *c, enum http_conn_phase p)
{
    if (c != NULL)
        set_deadline(l, c, p);
}

int limits_conn_expired(const http_conn *c)
{
    long long d = c ? atomic_load(&c->deadline_ms) : 0;
    return d != 0 && now_ms() > d;
}

int limits_over_capacity(http_limits *l)
{
    return atomic_load(&l->open) > l->cfg.max_connections;
}

int limits_body_reserve(http_limits *l, size_t n)
{
    size_t used = atomic_load(&l->body_used);
    do {
        if (n > l->cfg.body_memory || used > l->cfg.body_memory - n)
            return -1;
    } while (!atomic_compare_exchange_weak(&l->body_used, &used, used + n));
    return 0;
}

void limits_body_release(http_limits *l, size_t n)
{
    atomic_fetch_sub(&l->body_used, n);
}

void limits_count(http_limits *l, enum http_refusal r)
{
    atomic_fetch_add(&l->refused[r], 1);
}

/* Shuts down every connection past its deadline; lock held. */
static void reap(http_limits *l, long long now)
{
    for (http_conn *c = l->head; c; c = c->next) {
        long long d = atomic_load(&c->deadline_ms);
        if (c->shut || d == 0 || now <= d)
            continue;
        shutdown(c->fd, SHUT_RDWR);
        c->shut = 1;
        limits_count(l, atomic_load(&c->phase) == HTTP_PHASE_BODY ? HTTP_REFUSED_BODY_TIMEOUT
                                                                  : HTTP_REFUSED_HEADER_TIMEOUT);
    }
}

/* One warning line per interval with what the limits refused, instead of a line per
 * connection (a slow-client flood must not flood the log too). */
static void summarise(http_limits *l)
{
    unsigned long long d[HTTP_REFUSED_N], any = 0;
    for (int i = 0; i < HTTP_REFUSED_N; i++) {
        unsigned long long v = atomic_load(&l->refused[i]);
        d[i] = v - l->reported[i];
        l->reported[i] = v;
        any |= d[i];
    }
    if (any)
        log_warn("event=http_limits open=%d per_address=%llu header_timeout=%llu "
                 "body_timeout=%llu capacity=%llu body_memory=%llu",
                 atomic_load(&l->open), d[0], d[1], d[2], d[3], d[4]);
}

static void *reaper_main(void *arg)
{
    http_limits *l = arg;
    long long last_summary = now_ms();
    struct epoll_event ev[64];
    while (!atomic_load(&l->stopping)) {
        int n = l->epoll_fd >= 0 ? epoll_wait(l->epoll_fd, ev, 64, REAPER_TICK_MS) : 0;
        if (l->epoll_fd < 0)
            usleep(REAPER_TICK_MS * 1000);
        long long now = now_ms();
        pthread_mutex_lock(&l->lock);
        for (int i = 0; i < n; i++)
            linger_drain(l, ev[i].data.ptr);
        for (struct lingering *g = l->lingering, *next; g; g = next) {
            next = g->next;
            if (now > g->until_ms)
                linger_end(l, g);
        }
        reap(l, now);
        if (now - last_summary >= SUMMARY_EVERY_MS) {
            summarise(l);
            last_summary = now;
        }
        pthread_mutex_unlock(&l->lock);
    }
    return NULL;
}

http_limits *limits_new(const struct http_limits_config *c)
{
    http_limits *l = xcalloc(1, sizeof(*l));
    l->cfg = *c;
    pthread_mutex_init(&l->lock, NULL);
    l->epoll_fd = epoll_create1(EPOLL_CLOEXEC); /* without it, no lingering close */
    if (pthread_create(&l->reaper, NULL, reaper_main, l) != 0)
        abort(); /* like an allocation failure: nothing sensible to do without it */
    return l;
}

void limits_free(http_limits *l)
{
    if (l == NULL)
        return;
    atomic_store(&l->stopping, 1);
    pthread_join(l->reaper, NULL);
    while (l->lingering)
        linger_end(l, l->lingering);
    if (l->epoll_fd >= 0)
        close(l->epoll_fd);
    for (http_conn *c = l->head, *next; c; c = next) { /* none after MHD_stop_daemon */
        next = c->next;
        free(c);
    }
    for (int i = 0; i < ADDR_BUCKETS; i++) {
        for (struct addr_entry *e = l->buckets[i], *next; e; e = next) {
            next = e->next;
            free(e);
        }
    }
    pthread_mutex_destroy(&l->lock);
    free(l);
}

void limits_metrics(http_limits *l, buf *out)
{
    buf_printf(out,
               "# HELP orchard_http_connections Open HTTP connections.\n"
               "# TYPE orchard_http_connections gauge\norchard_http_connections %d\n"
               "# HELP orchard_http_body_bytes Request body bytes held in memory.\n"
               "# TYPE orchard_http_body_bytes gauge\norchard_http_body_bytes %zu\n"
               "# HELP orchard_http_refused_total Connections and requests cut off by the HTTP "
               "limits (docs/HTTP.md).\n"
               "# TYPE orchard_http_refused_total counter\n",
               atomic_load(&l->open), atomic_load(&l->body_used));
    for (int i = 0; i < HTTP_REFUSED_N; i++)
        buf_printf(out, "orchard_http_refused_total{reason=\"%s\"} %llu\n", refusal_names[i],
                   atomic_load(&l->refused[i]));
}
