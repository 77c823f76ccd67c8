/*
 * Counting failures per key (a user identifier, a source address) in a fixed window, to slow
 * down password guessing. Fixed memory: keys hash into a bounded table; a collision between
 * two live keys makes them share a counter, which only errs on the side of limiting.
 * A shared limiter also counts in the store (storage_failure_*, aligned windows, keys hashed
 * with SHA-256), so that several instances on one database share one budget; a key is blocked
 * when either count is used up, so a store error never loosens the limit of this instance.
 * Thread-safe.
 */
#ifndef ORCHARD_AUTH_RATELIMIT_H
#define ORCHARD_AUTH_RATELIMIT_H

#include <stdint.h>

#include "storage/storage.h"

typedef struct ratelimit ratelimit;

ratelimit *ratelimit_new(int max_failures, int64_t window_seconds);
/* The same, also counting in st (borrowed: must outlive the limiter). */
ratelimit *ratelimit_new_shared(storage *st, int max_failures, int64_t window_seconds);
void ratelimit_free(ratelimit *rl);
/* 1 if the key has used up its failures in the current window. */
int ratelimit_blocked(ratelimit *rl, const char *key, int64_t now);
/* Records one failure for the key. */
void ratelimit_fail(ratelimit *rl, const char *key, int64_t now);
/* How many times ratelimit_blocked has answered 1 since the limiter was made (metrics). */
uint64_t ratelimit_refused(const ratelimit *rl);

#define RATELIMIT_ADDR_KEY_LEN 96
/*
 * The key for a client address: "<prefix>:<address>" for IPv4 (IPv4-mapped IPv6 included), and
 * "<prefix>:<first 64 bits>::/64" for IPv6, since one subscriber usually holds a whole /64 and
 * could otherwise rotate addresses to get a fresh budget for each. Anything that is not an
 * address is kept as given. out holds RATELIMIT_ADDR_KEY_LEN bytes.
 */
void ratelimit_addr_key(const char *prefix, const char *addr, char *out);

#endif
