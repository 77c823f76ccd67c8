/* Unit tests for secrets and rate limiting in src/auth. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "auth/ratelimit.h"
#include "auth/secret.h"
#include "harness.h"

TEST(tokens_are_random_and_well_formed)
{
    ASSERT_INT_EQ(secret_init(), 0);
    char a[SECRET_TOKEN_LEN + 1], b[SECRET_TOKEN_LEN + 1];
    secret_new_token(a);
    secret_new_token(b);
    ASSERT_INT_EQ(strlen(a), SECRET_TOKEN_LEN);
    ASSERT(strcmp(a, b) != 0);
    ASSERT(secret_token_well_formed(a));
    ASSERT(!secret_token_well_formed("short"));
    a[3] = '/';
    ASSERT(!secret_token_well_formed(a));
}

TEST(hash_is_sha256_hex)
{
    char h[SECRET_HASH_LEN + 1];
    secret_hash("abc", h);
    ASSERT_STR_EQ(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    ASSERT(secret_equal(h, h));
    ASSERT(!secret_equal(h, "ba78"));
}

TEST(passwords_argon2id)
{
    ASSERT_INT_EQ(secret_init(), 0);
    char *h = secret_password_hash("correct horse");
    ASSERT_NOT_NULL(h);
    ASSERT(strncmp(h, "$argon2id$", 10) == 0);
    ASSERT(secret_password_verify(h, "correct horse"));
    ASSERT(!secret_password_verify(h, "correct horsE"));
    ASSERT(!secret_password_verify("plain", "plain"));
    free(h);
}

TEST(ratelimit_window)
{
    ratelimit *rl = ratelimit_new(3, 900);
    for (int i = 0; i < 3; i++) {
        ASSERT(!ratelimit_blocked(rl, "alice", 1000));
        ratelimit_fail(rl, "alice", 1000);
    }
    ASSERT(ratelimit_blocked(rl, "alice", 1001));
    ASSERT(!ratelimit_blocked(rl, "bob", 1001));
    ASSERT(!ratelimit_blocked(rl, "alice", 1000 + 900)); /* next window */
    ratelimit_free(rl);
}

/* Two instances on one store share one budget; each still counts on its own. */
TEST(ratelimit_shared_between_instances)
{
    char dir[] = "/tmp/orchard-rl-XXXXXX", dsn[64], err[256];
    ASSERT_NOT_NULL(mkdtemp(dir));
    snprintf(dsn, sizeof dsn, "sqlite:%s/x.db", dir);
    storage *st = storage_open(dsn, err, sizeof err);
    ASSERT_NOT_NULL(st);
    ratelimit *a = ratelimit_new_shared(st, 3, 900), *b = ratelimit_new_shared(st, 3, 900);
    ratelimit_fail(a, "alice", 1800);
    ratelimit_fail(b, "alice", 1801);
    ASSERT(!ratelimit_blocked(a, "alice", 1802));
    ratelimit_fail(a, "alice", 1802);
    ASSERT(ratelimit_blocked(b, "alice", 1803)); /* b saw one failure, the store three */
    ASSERT(ratelimit_blocked(a, "alice", 1803));
    ASSERT(!ratelimit_blocked(b, "bob", 1803));
    ASSERT(!ratelimit_blocked(b, "alice", 2700)); /* the next window */
    /* Keys are stored hashed. */
    int64_t n = -1;
    ASSERT_INT_EQ(storage_failure_count(st, "alice", 1800, &n), ST_OK);
    ASSERT_INT_EQ(n, 0);
    int64_t deleted = 0;
    ASSERT_INT_EQ(storage_failure_prune(st, 2700, &deleted), ST_OK);
    ASSERT_INT_EQ(deleted, 1);
    ratelimit_free(a);
    ratelimit_free(b);
    storage_close(st);
    char path[96];
    const char *sfx[] = {"", "-wal", "-shm"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/x.db%s", dir, sfx[i]);
        unlink(path);
    }
    rmdir(dir);
}

TEST_MAIN(TEST_ENTRY(tokens_are_random_and_well_formed), TEST_ENTRY(hash_is_sha256_hex),
          TEST_ENTRY(passwords_argon2id), TEST_ENTRY(ratelimit_window),
          TEST_ENTRY(ratelimit_shared_between_instances))
