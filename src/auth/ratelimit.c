/* Fixed-window failure counters in a fixed-size table. */
#include "auth/ratelimit.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/mem.h"
#include "crypto/pki.h"

#define SLOTS 4096

struct slot {
    uint64_t key_hash;
    int64_t window_start;
    int failures;
};

struct ratelimit {
    storage *st; /* NULL: this process only */
    pthread_mutex_t lock;
    int max_failures;
    int64_t window;
    atomic_uint_fast64_t refused;
    struct slot slots[SLOTS];
};

static uint64_t hash_key(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h ? h : 1;
}

ratelimit *ratelimit_new(int max_failures, int64_t window_seconds)
{
    ratelimit *rl = xcalloc(1, sizeof(*rl));
    pthread_mutex_init(&rl->lock, NULL);
    rl->max_failures = max_failures;
    rl->window = window_seconds;
    return rl;
}

ratelimit *ratelimit_new_shared(storage *st, int max_failures, int64_t window_seconds)
{
    ratelimit *rl = ratelimit_new(max_failures, window_seconds);
    rl->st = st;
    return rl;
}

/* The stored key: no identifier or address is kept in clear. */
static void stored_key(const char *key, char out[65])
{
    crypto_sha256_hex(key, strlen(key), out);
}

static int64_t window_of(const ratelimit *rl, int64_t now)
{
    return now - (now % rl->window + rl->window) % rl->window;
}

void ratelimit_free(ratelimit *rl)
{
    if (rl == NULL)
        return;
    pthread_mutex_destroy(&rl->lock);
    free(rl);
}

/* The slot for the key, reset if its window has passed. Call with the lock held. */
static struct slot *slot_for(ratelimit *rl, const char *key, int64_t now)
{
    uint64_t h = hash_key(key);
    struct slot *s = &rl->slots[h % SLOTS];
    int expired = now - s->window_start >= rl->window;
    if (s->key_hash == h && !expired)
        return s;
    if (s->key_hash != h && s->failures > 0 && !expired)
        return s; /* shared with another live key: errs on the side of limiting */
    s->key_hash = h;
    s->window_start = now;
    s->failures = 0;
    return s;
}

int ratelimit_blocked(ratelimit *rl, const char *key, int64_t now)
{
    pthread_mutex_lock(&rl->lock);
    int blocked = slot_for(rl, key, now)->failures >= rl->max_failures;
    pthread_mutex_unlock(&rl->lock);
    if (!blocked && rl->st != NULL) {
        char k[65];
        stored_key(key, k);
        int64_t n = 0;
        if (storage_failure_count(rl->st, k, window_of(rl, now), &n) != ST_OK)
            log_warn("event=ratelimit_store_failed op=count"); /* this instance's count holds */
        blocked = n >= rl->max_failures;
    }
    if (blocked)
        atomic_fetch_add(&rl->refused, 1);
    return blocked;
}

uint64_t ratelimit_refused(const ratelimit *rl)
{
    return rl ? atomic_load(&((ratelimit *)rl)->refused) : 0;
}

void ratelimit_addr_key(const char *prefix, const char *addr, char *out)
{
    unsigned char a[16];
    char text[INET6_ADDRSTRLEN];
    if (inet_pton(AF_INET6, addr, a) == 1) {
        static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(a, mapped, sizeof(mapped)) == 0 &&
            inet_ntop(AF_INET, a + 12, text, sizeof(text)) != NULL) {
            snprintf(out, RATELIMIT_ADDR_KEY_LEN, "%s:%s", prefix, text);
            return;
        }
        memset(a + 8, 0, 8); /* the interface half: the subscriber owns all of it */
        if (inet_ntop(AF_INET6, a, text, sizeof(text)) != NULL) {
            snprintf(out, RATELIMIT_ADDR_KEY_LEN, "%s:%s/64", prefix, text);
            return;
        }
    }
    snprintf(out, RATELIMIT_ADDR_KEY_LEN, "%s:%.64s", prefix, addr);
}

void ratelimit_fail(ratelimit *rl, const char *key, int64_t now)
{
    pthread_mutex_lock(&rl->lock);
    slot_for(rl, key, now)->failures++;
    pthread_mutex_unlock(&rl->lock);
    if (rl->st == NULL)
        return;
    char k[65];
    stored_key(key, k);
    int64_t n = 0;
    if (storage_failure_add(rl->st, k, window_of(rl, now), &n) != ST_OK)
        log_warn("event=ratelimit_store_failed op=add");
}
