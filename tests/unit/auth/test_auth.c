/* Unit tests for secrets and rate limiting in src/auth. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "app.h"
#include "auth/ratelimit.h"
#include "auth/reauth.h"
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

/* RFC 4231 test case 2 ("Jefe"), as base64url: the HMAC under re-authentication tickets. */
TEST(hmac_sha256_vector)
{
    char out[SECRET_TOKEN_LEN + 1];
    const char msg[] = "what do ya want for nothing?";
    secret_hmac_b64url((const unsigned char *)"Jefe", 4, msg, strlen(msg), out);
    /* 5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843 */
    ASSERT_STR_EQ(out, "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM");
    ASSERT(secret_token_well_formed(out));
}

TEST(ratelimit_addr_keys)
{
    char k[RATELIMIT_ADDR_KEY_LEN], k2[RATELIMIT_ADDR_KEY_LEN];
    ratelimit_addr_key("scep", "192.0.2.7", k);
    ASSERT_STR_EQ(k, "scep:192.0.2.7");
    ratelimit_addr_key("scep", "::ffff:192.0.2.7", k);
    ASSERT_STR_EQ(k, "scep:192.0.2.7"); /* IPv4-mapped is the IPv4 address */
    /* One /64 is one subscriber: rotating the interface half buys no new budget. */
    ratelimit_addr_key("signin", "2001:db8:1:2:aaaa:bbbb:cccc:dddd", k);
    ASSERT_STR_EQ(k, "signin:2001:db8:1:2::/64");
    ratelimit_addr_key("signin", "2001:db8:1:2::1", k2);
    ASSERT_STR_EQ(k, k2);
    ratelimit_addr_key("signin", "2001:db8:1:3::1", k2);
    ASSERT(strcmp(k, k2) != 0);
    ratelimit_addr_key("signin", "not an address", k);
    ASSERT_STR_EQ(k, "signin:not an address");

    ratelimit *rl = ratelimit_new(1, 900);
    ASSERT_INT_EQ(ratelimit_refused(rl), 0);
    ratelimit_fail(rl, "x", 1000);
    ASSERT(ratelimit_blocked(rl, "x", 1000));
    ASSERT(ratelimit_blocked(rl, "x", 1001));
    ASSERT(!ratelimit_blocked(rl, "y", 1001));
    ASSERT_INT_EQ(ratelimit_refused(rl), 2);
    ratelimit_free(rl);
}

/* An app over a fresh SQLite store in dir (tests only need cfg and st). */
static int ticket_app(struct app *app, const char *dir)
{
    char dsn[96], err[256];
    memset(app, 0, sizeof(*app));
    snprintf(dsn, sizeof dsn, "sqlite:%s/t.db", dir);
    app->cfg = config_new(dir);
    app->st = storage_open(dsn, err, sizeof err);
    return app->cfg && app->st ? 0 : -1;
}

static int add_enrollment(storage *st, const char *id, int64_t user_id, const char *state,
                          int64_t since)
{
    st_enrollment e = {0};
    e.id = (char *)id;
    e.type = ST_ENR_USER;
    e.user_id = user_id;
    e.enrolled_at = 100;
    if (storage_enrollment_authenticate(st, &e) != ST_OK)
        return -1;
    return storage_enrollment_set_auth_state(st, id, state, since);
}

static int64_t add_user(storage *st, const char *email)
{
    st_user u = {0};
    u.email = (char *)email;
    u.created_at = 1;
    return storage_user_add(st, &u) == ST_OK ? u.id : 0;
}

static int64_t count_reauth_fail(storage *st, const char *enrollment_id)
{
    int64_t n = -1;
    storage_audit_count(st, "reauth.fail", enrollment_id, 0, &n);
    return n;
}

/*
 * A ticket names one pending demand of one enrollment: it counts for that enrollment's user
 * only, stops counting when the demand ends or a new one starts, and is the same on every
 * instance (the key is shared through the store).
 */
TEST(reauth_tickets)
{
    char dir[] = "/tmp/orchard-tkt-XXXXXX";
    ASSERT_NOT_NULL(mkdtemp(dir));
    struct app a, b;
    ASSERT_INT_EQ(ticket_app(&a, dir), 0);
    char err[128];
    ASSERT_INT_EQ(reauth_key_load(&a, err, sizeof err), 0);
    int64_t alice = add_user(a.st, "alice@example.com"), bob = add_user(a.st, "bob@example.com");
    ASSERT(alice > 0 && bob > 0);
    ASSERT_INT_EQ(add_enrollment(a.st, "EA", alice, "reauth_required", 5000), ST_OK);
    ASSERT_INT_EQ(add_enrollment(a.st, "EB", bob, "reauth_required", 5000), ST_OK);
    ASSERT_INT_EQ(add_enrollment(a.st, "EA2", alice, "active", 4000), ST_OK);

    st_enrollment ea = {0}, eb = {0}, ea2 = {0};
    ASSERT_INT_EQ(storage_enrollment_get(a.st, "EA", &ea), ST_OK);
    ASSERT_INT_EQ(storage_enrollment_get(a.st, "EB", &eb), ST_OK);
    ASSERT_INT_EQ(storage_enrollment_get(a.st, "EA2", &ea2), ST_OK);
    char ta[SECRET_TOKEN_LEN + 1], tb[SECRET_TOKEN_LEN + 1], ta2[SECRET_TOKEN_LEN + 1];
    reauth_ticket(&a, &ea, ta);
    reauth_ticket(&a, &eb, tb);
    reauth_ticket(&a, &ea2, ta2);
    ASSERT(secret_token_well_formed(ta));
    ASSERT(strcmp(ta, tb) != 0);

    char *owner = reauth_ticket_owner(&a, "alice@example.com", ta);
    ASSERT_STR_EQ(owner, "EA");
    free(owner);
    /* Another user's ticket, an enrollment not waiting, garbage, nothing: no owner. */
    ASSERT(reauth_ticket_owner(&a, "alice@example.com", tb) == NULL);
    ASSERT(reauth_ticket_owner(&a, "bob@example.com", ta) == NULL);
    ASSERT(reauth_ticket_owner(&a, "alice@example.com", ta2) == NULL);
    ASSERT(reauth_ticket_owner(&a, "alice@example.com", "x") == NULL);
    ASSERT(reauth_ticket_owner(&a, "alice@example.com", NULL) == NULL);
    ASSERT(reauth_ticket_owner(&a, "nobody@example.com", ta) == NULL);

    ASSERT_INT_EQ(reauth_note_failure(&a, "alice@example.com", ta, "test"), 1);
    ASSERT_INT_EQ(reauth_note_failure(&a, "alice@example.com", tb, "test"), 0);
    ASSERT_INT_EQ(count_reauth_fail(a.st, "EA"), 1);
    ASSERT_INT_EQ(count_reauth_fail(a.st, "EB"), 0);

    /* A second instance on the same store computes the same ticket. */
    ASSERT_INT_EQ(ticket_app(&b, dir), 0);
    ASSERT_INT_EQ(reauth_key_load(&b, err, sizeof err), 0);
    char tb2[SECRET_TOKEN_LEN + 1];
    reauth_ticket(&b, &ea, tb2);
    ASSERT_STR_EQ(tb2, ta);

    /* A new demand retires the old ticket. */
    ASSERT_INT_EQ(storage_enrollment_set_auth_state(a.st, "EA", "reauth_required", 6000), ST_OK);
    ASSERT(reauth_ticket_owner(&a, "alice@example.com", ta) == NULL);
    /* Without a key there is no ticket at all (never a guessable one). */
    struct app none;
    memset(&none, 0, sizeof none);
    reauth_ticket(&none, &ea, tb2);
    ASSERT_STR_EQ(tb2, "");

    st_enrollment_cleanup(&ea);
    st_enrollment_cleanup(&eb);
    st_enrollment_cleanup(&ea2);
    storage_close(a.st);
    storage_close(b.st);
    config_free(a.cfg);
    config_free(b.cfg);
    char path[96];
    const char *sfx[] = {"", "-wal", "-shm"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/t.db%s", dir, sfx[i]);
        unlink(path);
    }
    rmdir(dir);
}

TEST_MAIN(TEST_ENTRY(tokens_are_random_and_well_formed), TEST_ENTRY(hash_is_sha256_hex),
          TEST_ENTRY(passwords_argon2id), TEST_ENTRY(ratelimit_window),
          TEST_ENTRY(ratelimit_shared_between_instances), TEST_ENTRY(hmac_sha256_vector),
          TEST_ENTRY(ratelimit_addr_keys), TEST_ENTRY(reauth_tickets))
