/*
 * Counting failures per key (a user identifier, a source address) in a fixed window, to slow
 * down password guessing. Fixed memory: keys hash into a bounded table; a collision between
 * two live keys makes them share a counter, which only errs on the side of limiting.
 * Thread-safe.
 */
#ifndef ORCHARD_AUTH_RATELIMIT_H
#define ORCHARD_AUTH_RATELIMIT_H

#include <stdint.h>

typedef struct ratelimit ratelimit;

ratelimit *ratelimit_new(int max_failures, int64_t window_seconds);
void ratelimit_free(ratelimit *rl);
/* 1 if the key has used up its failures in the current window. */
int ratelimit_blocked(ratelimit *rl, const char *key, int64_t now);
/* Records one failure for the key. */
void ratelimit_fail(ratelimit *rl, const char *key, int64_t now);

#endif
