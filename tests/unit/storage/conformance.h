/*
 * The storage conformance suite: what every backend must do, written only against storage.h
 * (plus the fault hooks of storage_impl.h), so the same cases run against SQLite now and
 * PostgreSQL later (nanomdm test/e2e). A backend's test file supplies a factory and splices
 * CONFORMANCE_TESTS into its test table:
 *
 *     static const struct conformance_backend be = {"sqlite", open_fresh, reopen};
 *     conformance_init(&be);
 *     static const struct harness_test tests[] = {CONFORMANCE_TESTS, ..., {NULL, NULL}};
 *     return harness_run(tests, argc, argv);
 *
 * It is a header (like harness.h) because the Makefile builds each test binary from one .c
 * file; include it from exactly one test file per binary.
 *
 * Times are small made-up integers: the storage layer never reads the clock.
 */
#ifndef ORCHARD_TEST_STORAGE_CONFORMANCE_H
#define ORCHARD_TEST_STORAGE_CONFORMANCE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "storage/storage.h"
#include "storage/storage_impl.h"

struct conformance_backend {
    const char *name;
    /* A new, empty store (its own file or database). NULL on failure. */
    storage *(*open_fresh)(void);
    /* The store last returned by open_fresh, opened again after storage_close. */
    storage *(*reopen)(void);
};

static const struct conformance_backend *conf_backend;

static inline void conformance_init(const struct conformance_backend *be)
{
    conf_backend = be;
}

/* ---- fixtures ---- */

static inline storage *conf_open(void)
{
    return conf_backend->open_fresh();
}

/* Adds a user; returns its id, or 0 on failure. */
static inline int64_t conf_user(storage *st, const char *email)
{
    st_user u = {0};
    u.email = (char *)email;
    u.password_hash = (char *)"$argon2id$v=19$m=65536,t=2,p=1$c2FsdA$aGFzaA";
    u.created_at = 10;
    return storage_user_add(st, &u) == ST_OK ? u.id : 0;
}

static inline int conf_enroll(storage *st, const char *id, int64_t user_id)
{
    st_enrollment e = {0};
    e.id = (char *)id;
    e.type = ST_ENR_USER;
    e.user_id = user_id;
    e.topic = (char *)"com.apple.mgmt.External.test";
    e.enrolled_at = 100;
    e.last_seen_at = 100;
    return storage_enrollment_authenticate(st, &e);
}

static inline int conf_enqueue(storage *st, const char *enrollment_id, const char *uuid,
                               int priority, int64_t created_at)
{
    char body[256];
    snprintf(body, sizeof(body),
             "<plist version=\"1.0\"><dict><key>CommandUUID</key><string>%s</string></dict>"
             "</plist>",
             uuid);
    st_command c = {0};
    c.uuid = (char *)uuid;
    c.enrollment_id = (char *)enrollment_id;
    c.request_type = (char *)"ProfileList";
    c.body = body;
    c.body_len = strlen(body);
    c.priority = priority;
    c.created_at = created_at;
    return storage_queue_enqueue(st, &c);
}

/* queue_next; returns the rc and copies the uuid ("" if none) into uuid_out. */
static inline int conf_next(storage *st, const char *enrollment_id, int include_notnow, int64_t now,
                            char *uuid_out, size_t uuid_len)
{
    st_command c;
    int rc = storage_queue_next(st, enrollment_id, include_notnow, now, &c);
    snprintf(uuid_out, uuid_len, "%s", rc == ST_OK && c.uuid ? c.uuid : "");
    st_command_cleanup(&c);
    return rc;
}

static inline int conf_ack(storage *st, const char *enrollment_id, const char *uuid, int64_t now)
{
    static const char result[] = "<plist version=\"1.0\"><dict><key>Status</key>"
                                 "<string>Acknowledged</string></dict></plist>";
    return storage_queue_report(st, enrollment_id, uuid, ST_CMD_ACKNOWLEDGED, result,
                                sizeof(result) - 1, now);
}

static inline int conf_count(storage *st, const char *enrollment_id)
{
    int64_t n = -1;
    int rc = storage_queue_count(st, enrollment_id, &n);
    return rc == ST_OK ? (int)n : rc;
}

/* The status of a command as command_get sees it, or the error code. */
static inline int conf_status(storage *st, const char *uuid)
{
    st_command c;
    int rc = storage_command_get(st, uuid, &c);
    int status = rc == ST_OK ? c.status : rc;
    st_command_cleanup(&c);
    return status;
}

/* ---- lifecycle ---- */

TEST(conf_lifecycle)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    ASSERT_INT_EQ(storage_ping(st), ST_OK);
    ASSERT(storage_schema_version(st) >= 1);
    storage_close(st);
    storage_close(NULL);
}

TEST(conf_reopen_keeps_data_and_version)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    int version = storage_schema_version(st);
    int64_t uid = conf_user(st, "keep@example.com");
    ASSERT(uid > 0);
    ASSERT_INT_EQ(conf_enroll(st, "E1", uid), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "C1", 0, 100), ST_OK);
    storage_close(st);

    for (int round = 0; round < 2; round++) {
        st = conf_backend->reopen();
        ASSERT_NOT_NULL(st);
        ASSERT_INT_EQ(storage_schema_version(st), version);
        st_user u;
        ASSERT_INT_EQ(storage_user_get_by_email(st, "keep@example.com", &u), ST_OK);
        ASSERT_INT_EQ(u.id, uid);
        st_user_cleanup(&u);
        ASSERT_INT_EQ(conf_count(st, "E1"), 1);
        storage_close(st);
    }
}

/* ---- users and API keys ---- */

TEST(conf_users)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    st_user u = {0};
    u.email = "Alice@Example.COM";
    u.managed_apple_id = "alice@appleid.example.com";
    u.password_hash = "$argon2id$hash1";
    u.created_at = 1000;
    ASSERT_INT_EQ(storage_user_add(st, &u), ST_OK);
    ASSERT(u.id > 0);

    st_user got;
    ASSERT_INT_EQ(storage_user_get_by_email(st, "alice@example.com", &got), ST_OK);
    ASSERT_INT_EQ(got.id, u.id);
    ASSERT_STR_EQ(got.email, "alice@example.com"); /* stored lowercase */
    ASSERT_STR_EQ(got.managed_apple_id, "alice@appleid.example.com");
    ASSERT_STR_EQ(got.password_hash, "$argon2id$hash1");
    ASSERT(got.idp_subject == NULL);
    ASSERT_INT_EQ(got.created_at, 1000);
    ASSERT_INT_EQ(got.disabled, 0);
    st_user_cleanup(&got);
    ASSERT_INT_EQ(storage_user_get_by_email(st, "ALICE@example.com", &got), ST_OK);
    st_user_cleanup(&got);

    ASSERT_INT_EQ(storage_user_get(st, u.id, &got), ST_OK);
    ASSERT_STR_EQ(got.email, "alice@example.com");
    st_user_cleanup(&got);

    ASSERT_INT_EQ(storage_user_get(st, u.id + 1000, &got), ST_ENOTFOUND);
    ASSERT(got.email == NULL && got.id == 0);
    ASSERT_INT_EQ(storage_user_get_by_email(st, "bob@example.com", &got), ST_ENOTFOUND);
    ASSERT(got.email == NULL);

    /* Unique email, whatever the case. */
    st_user dup = {0};
    dup.email = "alice@EXAMPLE.com";
    dup.created_at = 1001;
    ASSERT_INT_EQ(storage_user_add(st, &dup), ST_EEXISTS);

    /* Federated-only user: no password, a subject, disabled. */
    st_user fed = {0};
    fed.email = "fed@example.com";
    fed.idp_subject = "sub-123";
    fed.disabled = 1;
    fed.created_at = 1002;
    ASSERT_INT_EQ(storage_user_add(st, &fed), ST_OK);
    ASSERT_INT_EQ(storage_user_get(st, fed.id, &got), ST_OK);
    ASSERT(got.password_hash == NULL);
    ASSERT_STR_EQ(got.idp_subject, "sub-123");
    ASSERT_INT_EQ(got.disabled, 1);
    st_user_cleanup(&got);

    ASSERT_INT_EQ(storage_user_set_password(st, u.id, "$argon2id$hash2"), ST_OK);
    ASSERT_INT_EQ(storage_user_get(st, u.id, &got), ST_OK);
    ASSERT_STR_EQ(got.password_hash, "$argon2id$hash2");
    st_user_cleanup(&got);
    ASSERT_INT_EQ(storage_user_set_password(st, u.id, NULL), ST_OK);
    ASSERT_INT_EQ(storage_user_get(st, u.id, &got), ST_OK);
    ASSERT(got.password_hash == NULL);
    st_user_cleanup(&got);
    ASSERT_INT_EQ(storage_user_set_password(st, u.id + 1000, "x"), ST_ENOTFOUND);
    storage_close(st);
}

struct conf_list_state {
    int n;
    int stop_at; /* return 7 at this row (1-based); 0 = never */
    int64_t last_id;
    char last_key[64];
    int ordered;
};

static int conf_user_cb(const st_user *u, void *ctx)
{
    struct conf_list_state *s = ctx;
    if (u->id <= s->last_id || u->email == NULL)
        s->ordered = 0;
    s->last_id = u->id;
    s->n++;
    return s->n == s->stop_at ? 7 : 0;
}

TEST(conf_user_list)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    char email[64];
    for (int i = 0; i < 300; i++) { /* more than one internal chunk */
        snprintf(email, sizeof(email), "user%03d@example.com", i);
        ASSERT(conf_user(st, email) > 0);
    }
    struct conf_list_state s = {0, 0, 0, "", 1};
    ASSERT_INT_EQ(storage_user_list(st, conf_user_cb, &s), ST_OK);
    ASSERT_INT_EQ(s.n, 300);
    ASSERT(s.ordered);

    struct conf_list_state stop = {0, 5, 0, "", 1};
    ASSERT_INT_EQ(storage_user_list(st, conf_user_cb, &stop), 7);
    ASSERT_INT_EQ(stop.n, 5);
    storage_close(st);
}

TEST(conf_apikeys)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    int64_t id = 0, found = 0;
    char *name = NULL;
    ASSERT_INT_EQ(storage_apikey_add(st, "ci", "aa11", 50, &id), ST_OK);
    ASSERT(id > 0);
    ASSERT_INT_EQ(storage_apikey_find(st, "aa11", &found, &name), ST_OK);
    ASSERT_INT_EQ(found, id);
    ASSERT_STR_EQ(name, "ci");
    free(name);
    found = 0;
    ASSERT_INT_EQ(storage_apikey_find(st, "aa11", &found, NULL), ST_OK);
    ASSERT_INT_EQ(found, id);
    name = (char *)"junk";
    ASSERT_INT_EQ(storage_apikey_find(st, "bb22", &found, &name), ST_ENOTFOUND);
    ASSERT(name == NULL && found == 0);
    int64_t id2 = 0;
    ASSERT_INT_EQ(storage_apikey_add(st, "other", "aa11", 51, &id2), ST_EEXISTS);
    ASSERT_INT_EQ(storage_apikey_add(st, "ci", "cc33", 52, &id2), ST_OK); /* names may repeat */
    ASSERT(id2 > id);
    storage_close(st);
}

/* ---- sessions ---- */

static inline int conf_session(storage *st, const char *token_hash, int64_t user_id,
                               const char *enrollment_id)
{
    st_session s = {0};
    s.token_hash = (char *)token_hash;
    s.user_id = user_id;
    s.method = (char *)"local";
    s.issued_at = 100;
    s.expires_at = 200;
    s.enrollment_id = (char *)enrollment_id;
    return storage_session_add(st, &s);
}

TEST(conf_sessions)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    int64_t uid = conf_user(st, "s@example.com");
    ASSERT(uid > 0);
    ASSERT_INT_EQ(conf_session(st, "t1", uid, NULL), ST_OK);
    ASSERT_INT_EQ(conf_session(st, "t1", uid, NULL), ST_EEXISTS);

    st_session s;
    ASSERT_INT_EQ(storage_session_get(st, "t1", &s), ST_OK);
    ASSERT_STR_EQ(s.token_hash, "t1");
    ASSERT_INT_EQ(s.user_id, uid);
    ASSERT_STR_EQ(s.method, "local");
    ASSERT_INT_EQ(s.issued_at, 100);
    ASSERT_INT_EQ(s.expires_at, 200);
    ASSERT(s.enrollment_id == NULL && s.machine_info == NULL);
    ASSERT_INT_EQ(s.revoked_at, 0);
    st_session_cleanup(&s);

    ASSERT_INT_EQ(storage_session_get(st, "nope", &s), ST_ENOTFOUND);
    ASSERT(s.token_hash == NULL && s.method == NULL);

    const char *mi = "<plist version=\"1.0\"><dict><key>UDID</key><string>X</string></dict>"
                     "</plist>";
    ASSERT_INT_EQ(storage_session_set_machine_info(st, "t1", mi), ST_OK);
    ASSERT_INT_EQ(storage_session_get(st, "t1", &s), ST_OK);
    ASSERT_STR_EQ(s.machine_info, mi);
    st_session_cleanup(&s);
    ASSERT_INT_EQ(storage_session_set_machine_info(st, "nope", mi), ST_ENOTFOUND);
    storage_close(st);
}

TEST(conf_session_bind)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    int64_t uid = conf_user(st, "b@example.com");
    ASSERT_INT_EQ(conf_session(st, "t1", uid, NULL), ST_OK);
    ASSERT_INT_EQ(storage_session_bind(st, "t1", "E1"), ST_OK);
    ASSERT_INT_EQ(storage_session_bind(st, "t1", "E1"), ST_OK); /* same again: fine */
    ASSERT_INT_EQ(storage_session_bind(st, "t1", "E2"), ST_ECONFLICT);
    ASSERT_INT_EQ(storage_session_bind(st, "nope", "E1"), ST_ENOTFOUND);
    st_session s;
    ASSERT_INT_EQ(storage_session_get(st, "t1", &s), ST_OK);
    ASSERT_STR_EQ(s.enrollment_id, "E1");
    st_session_cleanup(&s);
    storage_close(st);
}

static inline int64_t conf_revoked_at(storage *st, const char *token_hash)
{
    st_session s;
    if (storage_session_get(st, token_hash, &s) != ST_OK)
        return -1;
    int64_t at = s.revoked_at;
    st_session_cleanup(&s);
    return at;
}

TEST(conf_session_revoke)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    int64_t uid = conf_user(st, "r@example.com");
    ASSERT_INT_EQ(conf_session(st, "t1", uid, "E1"), ST_OK);
    ASSERT_INT_EQ(conf_session(st, "t2", uid, "E1"), ST_OK);
    ASSERT_INT_EQ(conf_session(st, "t3", uid, "E2"), ST_OK);
    ASSERT_INT_EQ(conf_session(st, "t4", uid, NULL), ST_OK);

    ASSERT_INT_EQ(storage_session_revoke_enrollment(st, "E1", 500), ST_OK);
    ASSERT_INT_EQ(conf_revoked_at(st, "t1"), 500);
    ASSERT_INT_EQ(conf_revoked_at(st, "t2"), 500);
    ASSERT_INT_EQ(conf_revoked_at(st, "t3"), 0);
    ASSERT_INT_EQ(conf_revoked_at(st, "t4"), 0);
    /* Already revoked sessions keep their first revocation time. */
    ASSERT_INT_EQ(storage_session_revoke_enrollment(st, "E1", 800), ST_OK);
    ASSERT_INT_EQ(conf_revoked_at(st, "t1"), 500);
    ASSERT_INT_EQ(storage_session_revoke_enrollment(st, "E-none", 800), ST_OK);

    ASSERT_INT_EQ(storage_session_revoke(st, "t3", 600), ST_OK);
    ASSERT_INT_EQ(conf_revoked_at(st, "t3"), 600);
    ASSERT_INT_EQ(storage_session_revoke(st, "t3", 700), ST_OK);
    ASSERT_INT_EQ(conf_revoked_at(st, "t3"), 600);
    ASSERT_INT_EQ(conf_revoked_at(st, "t4"), 0);
    ASSERT_INT_EQ(storage_session_revoke(st, "nope", 700), ST_ENOTFOUND);
    storage_close(st);
}

/* ---- SCEP challenges and certificates ---- */

TEST(conf_challenges)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    int64_t uid = conf_user(st, "c@example.com");
    ASSERT_INT_EQ(conf_session(st, "s1", uid, NULL), ST_OK);
    ASSERT_INT_EQ(storage_challenge_add(st, "c1", uid, "s1", 1000), ST_OK);
    ASSERT_INT_EQ(storage_challenge_add(st, "c1", uid, "s1", 1000), ST_EEXISTS);

    int64_t got_uid = 0;
    char *sess = NULL;
    ASSERT_INT_EQ(storage_challenge_consume(st, "c1", 500, &got_uid, &sess), ST_OK);
    ASSERT_INT_EQ(got_uid, uid);
    ASSERT_STR_EQ(sess, "s1");
    free(sess);
    sess = NULL;
    /* Used once: the second use is a conflict and returns nothing. */
    ASSERT_INT_EQ(storage_challenge_consume(st, "c1", 501, &got_uid, &sess), ST_ECONFLICT);
    ASSERT(got_uid == 0 && sess == NULL);

    /* Expired at expires_at; an expired attempt does not use the challenge up. */
    ASSERT_INT_EQ(storage_challenge_add(st, "c2", uid, "s1", 1000), ST_OK);
    ASSERT_INT_EQ(storage_challenge_consume(st, "c2", 1000, &got_uid, &sess), ST_ENOTFOUND);
    ASSERT(got_uid == 0 && sess == NULL);
    ASSERT_INT_EQ(storage_challenge_consume(st, "c2", 999, &got_uid, &sess), ST_OK);
    free(sess);
    sess = NULL;

    ASSERT_INT_EQ(storage_challenge_consume(st, "nope", 1, &got_uid, &sess), ST_ENOTFOUND);
    storage_close(st);
}

TEST(conf_certs)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    int64_t uid = conf_user(st, "cert@example.com");
    st_cert c = {0};
    c.serial = "0a1b";
    c.fingerprint = "f1";
    c.subject = "CN=Orchard Identity";
    c.user_id = uid;
    c.session_hash = "s1";
    c.not_after = 9000;
    c.issued_at = 100;
    ASSERT_INT_EQ(storage_cert_add(st, &c), ST_OK);
    ASSERT_INT_EQ(storage_cert_add(st, &c), ST_EEXISTS);
    st_cert other = {0};
    other.serial = "0a1c";
    other.fingerprint = "f2";
    other.enrollment_id = "E2";
    other.not_after = 9000;
    other.issued_at = 100;
    ASSERT_INT_EQ(storage_cert_add(st, &other), ST_OK); /* no user, no session */

    st_cert got;
    ASSERT_INT_EQ(storage_cert_get_by_fingerprint(st, "f1", &got), ST_OK);
    ASSERT_STR_EQ(got.serial, "0a1b");
    ASSERT_STR_EQ(got.fingerprint, "f1");
    ASSERT_STR_EQ(got.subject, "CN=Orchard Identity");
    ASSERT_INT_EQ(got.user_id, uid);
    ASSERT_STR_EQ(got.session_hash, "s1");
    ASSERT(got.enrollment_id == NULL);
    ASSERT_INT_EQ(got.not_after, 9000);
    ASSERT_INT_EQ(got.issued_at, 100);
    ASSERT_INT_EQ(got.revoked_at, 0);
    st_cert_cleanup(&got);
    ASSERT_INT_EQ(storage_cert_get_by_fingerprint(st, "f2", &got), ST_OK);
    ASSERT_INT_EQ(got.user_id, 0);
    ASSERT(got.session_hash == NULL);
    st_cert_cleanup(&got);
    ASSERT_INT_EQ(storage_cert_get_by_fingerprint(st, "nope", &got), ST_ENOTFOUND);
    ASSERT(got.serial == NULL);

    ASSERT_INT_EQ(storage_cert_set_enrollment(st, "f1", "E1"), ST_OK);
    ASSERT_INT_EQ(storage_cert_set_enrollment(st, "nope", "E1"), ST_ENOTFOUND);
    ASSERT_INT_EQ(storage_cert_revoke_enrollment(st, "E1", 700), ST_OK);
    ASSERT_INT_EQ(storage_cert_get_by_fingerprint(st, "f1", &got), ST_OK);
    ASSERT_STR_EQ(got.enrollment_id, "E1");
    ASSERT_INT_EQ(got.revoked_at, 700);
    st_cert_cleanup(&got);
    ASSERT_INT_EQ(storage_cert_get_by_fingerprint(st, "f2", &got), ST_OK);
    ASSERT_INT_EQ(got.revoked_at, 0);
    st_cert_cleanup(&got);
    storage_close(st);
}

/* ---- enrollments ---- */

TEST(conf_enrollment_insert)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    int64_t uid = conf_user(st, "e@example.com");
    st_enrollment e = {0};
    e.id = "5E0C7A1B-93D2-4F6A-8C1E-2B7D9F0A3C45";
    e.type = ST_ENR_USER;
    e.user_id = uid;
    e.topic = "com.apple.mgmt.External.abc";
    e.cert_fingerprint = "f1";
    e.push_token = "ignored"; /* Authenticate never carries a push token */
    e.os_version = "18.0";
    e.build_version = "22A3354";
    e.product_name = "iPhone15,2";
    e.device_name = "Alice's iPhone";
    e.model = "iPhone";
    e.last_auth_at = 90;
    e.last_auth_method = "local";
    e.enrolled_at = 100;
    e.last_seen_at = 101;
    ASSERT_INT_EQ(storage_enrollment_authenticate(st, &e), ST_OK);

    st_enrollment g;
    ASSERT_INT_EQ(storage_enrollment_get(st, e.id, &g), ST_OK);
    ASSERT_STR_EQ(g.id, e.id);
    ASSERT_INT_EQ(g.type, ST_ENR_USER);
    ASSERT(g.parent_id == NULL);
    ASSERT_INT_EQ(g.user_id, uid);
    ASSERT_STR_EQ(g.topic, "com.apple.mgmt.External.abc");
    ASSERT_STR_EQ(g.cert_fingerprint, "f1");
    ASSERT(g.push_token == NULL && g.push_magic == NULL);
    ASSERT_INT_EQ(g.push_token_dead, 0);
    ASSERT_STR_EQ(g.os_version, "18.0");
    ASSERT_STR_EQ(g.build_version, "22A3354");
    ASSERT_STR_EQ(g.product_name, "iPhone15,2");
    ASSERT_STR_EQ(g.device_name, "Alice's iPhone");
    ASSERT_STR_EQ(g.model, "iPhone");
    ASSERT_STR_EQ(g.auth_state, "active"); /* the default */
    ASSERT_INT_EQ(g.last_auth_at, 90);
    ASSERT_STR_EQ(g.last_auth_method, "local");
    ASSERT_INT_EQ(g.enrolled_at, 100);
    ASSERT_INT_EQ(g.token_updated_at, 0);
    ASSERT_INT_EQ(g.last_seen_at, 101);
    ASSERT_INT_EQ(g.unenrolled_at, 0);
    st_enrollment_cleanup(&g);

    /* The macOS user channel of the same enrollment. */
    st_enrollment uc = {0};
    uc.id = "5E0C7A1B-93D2-4F6A-8C1E-2B7D9F0A3C45:U1";
    uc.type = ST_ENR_USER_CHANNEL;
    uc.parent_id = e.id;
    uc.auth_state = "reauth_required";
    uc.auth_state_since = 55;
    ASSERT_INT_EQ(storage_enrollment_authenticate(st, &uc), ST_OK);
    ASSERT_INT_EQ(storage_enrollment_get(st, uc.id, &g), ST_OK);
    ASSERT_INT_EQ(g.type, ST_ENR_USER_CHANNEL);
    ASSERT_STR_EQ(g.parent_id, e.id);
    ASSERT_INT_EQ(g.user_id, 0);
    ASSERT_STR_EQ(g.auth_state, "reauth_required");
    ASSERT_INT_EQ(g.auth_state_since, 55);
    st_enrollment_cleanup(&g);

    ASSERT_INT_EQ(storage_enrollment_get(st, "nope", &g), ST_ENOTFOUND);
    ASSERT(g.id == NULL && g.auth_state == NULL);
    storage_close(st);
}

static inline int conf_get_enr(storage *st, const char *id, st_enrollment *g)
{
    return storage_enrollment_get(st, id, g);
}

TEST(conf_enrollment_setters)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    ASSERT_INT_EQ(conf_enroll(st, "E1", 0), ST_OK);
    st_enrollment g;

    ASSERT_INT_EQ(storage_enrollment_token_update(st, "E1", "ab12", "magic-1", 200), ST_OK);
    ASSERT_INT_EQ(storage_enrollment_set_push_dead(st, "E1", 1), ST_OK);
    ASSERT_INT_EQ(conf_get_enr(st, "E1", &g), ST_OK);
    ASSERT_STR_EQ(g.push_token, "ab12");
    ASSERT_STR_EQ(g.push_magic, "magic-1");
    ASSERT_INT_EQ(g.token_updated_at, 200);
    ASSERT_INT_EQ(g.push_token_dead, 1);
    st_enrollment_cleanup(&g);
    /* A TokenUpdate clears the dead flag. */
    ASSERT_INT_EQ(storage_enrollment_token_update(st, "E1", "cd34", "magic-2", 250), ST_OK);
    ASSERT_INT_EQ(conf_get_enr(st, "E1", &g), ST_OK);
    ASSERT_STR_EQ(g.push_token, "cd34");
    ASSERT_INT_EQ(g.push_token_dead, 0);
    ASSERT_INT_EQ(g.token_updated_at, 250);
    st_enrollment_cleanup(&g);

    ASSERT_INT_EQ(storage_enrollment_set_cert(st, "E1", "f9"), ST_OK);
    ASSERT_INT_EQ(storage_enrollment_set_auth_state(st, "E1", "reauth_required", 300), ST_OK);
    ASSERT_INT_EQ(storage_enrollment_set_last_auth(st, "E1", 310, "oidc"), ST_OK);
    ASSERT_INT_EQ(storage_enrollment_touch(st, "E1", 400), ST_OK);
    ASSERT_INT_EQ(conf_get_enr(st, "E1", &g), ST_OK);
    ASSERT_STR_EQ(g.cert_fingerprint, "f9");
    ASSERT_STR_EQ(g.auth_state, "reauth_required");
    ASSERT_INT_EQ(g.auth_state_since, 300);
    ASSERT_INT_EQ(g.last_auth_at, 310);
    ASSERT_STR_EQ(g.last_auth_method, "oidc");
    ASSERT_INT_EQ(g.last_seen_at, 400);
    st_enrollment_cleanup(&g);

    ASSERT_INT_EQ(storage_enrollment_token_update(st, "X", "t", "m", 1), ST_ENOTFOUND);
    ASSERT_INT_EQ(storage_enrollment_set_cert(st, "X", "f"), ST_ENOTFOUND);
    ASSERT_INT_EQ(storage_enrollment_set_auth_state(st, "X", "active", 1), ST_ENOTFOUND);
    ASSERT_INT_EQ(storage_enrollment_set_last_auth(st, "X", 1, "local"), ST_ENOTFOUND);
    ASSERT_INT_EQ(storage_enrollment_set_push_dead(st, "X", 1), ST_ENOTFOUND);
    ASSERT_INT_EQ(storage_enrollment_touch(st, "X", 1), ST_ENOTFOUND);
    ASSERT_INT_EQ(storage_enrollment_unenroll(st, "X", 1), ST_ENOTFOUND);
    storage_close(st);
}

TEST(conf_auth_state_transition_and_audit_count)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    ASSERT_INT_EQ(conf_enroll(st, "E1", 0), ST_OK);
    /* Compare-and-set: only the first of two instances moves the state. */
    ASSERT_INT_EQ(
        storage_enrollment_transition_auth_state(st, "E1", "active", "reauth_required", 100),
        ST_OK);
    ASSERT_INT_EQ(
        storage_enrollment_transition_auth_state(st, "E1", "active", "reauth_required", 101),
        ST_ECONFLICT);
    st_enrollment g;
    ASSERT_INT_EQ(conf_get_enr(st, "E1", &g), ST_OK);
    ASSERT_STR_EQ(g.auth_state, "reauth_required");
    ASSERT_INT_EQ(g.auth_state_since, 100);
    st_enrollment_cleanup(&g);
    ASSERT_INT_EQ(storage_enrollment_transition_auth_state(st, "X", "active", "reauth_required", 1),
                  ST_ECONFLICT);

    for (int i = 0; i < 5; i++) {
        st_audit a = {.at = 10 * i,
                      .actor = "anonymous",
                      .action = "signin.fail",
                      .target = i < 4 ? "alice@example.com" : "bob@example.com"};
        ASSERT_INT_EQ(storage_audit_add(st, &a), ST_OK);
    }
    int64_t n = -1;
    ASSERT_INT_EQ(storage_audit_count(st, "signin.fail", "alice@example.com", 0, &n), ST_OK);
    ASSERT_INT_EQ(n, 4);
    ASSERT_INT_EQ(storage_audit_count(st, "signin.fail", "alice@example.com", 20, &n), ST_OK);
    ASSERT_INT_EQ(n, 2);
    ASSERT_INT_EQ(storage_audit_count(st, "token.issue", "alice@example.com", 0, &n), ST_OK);
    ASSERT_INT_EQ(n, 0);
    storage_close(st);
}

TEST(conf_device_lookup)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    ASSERT_INT_EQ(conf_enroll(st, "E1", 0), ST_OK);
    st_session add = {.token_hash = "h1", .user_id = 0, .method = "local", .issued_at = 5};
    st_user u = {.email = "dl@example.com", .managed_apple_id = "dl@example.com"};
    ASSERT_INT_EQ(storage_user_add(st, &u), ST_OK);
    add.user_id = u.id;
    ASSERT_INT_EQ(storage_session_add(st, &add), ST_OK);
    ASSERT_INT_EQ(storage_session_bind(st, "h1", "E1"), ST_OK);
    st_session s;
    st_enrollment e;
    ASSERT_INT_EQ(storage_device_lookup(st, "h1", "E1", &s, &e), ST_OK);
    ASSERT_STR_EQ(s.token_hash, "h1");
    ASSERT_STR_EQ(s.enrollment_id, "E1");
    ASSERT_STR_EQ(e.id, "E1");
    st_session_cleanup(&s);
    st_enrollment_cleanup(&e);
    /* Unknown token, known enrollment; and both unknown: zeroed records, not an error. */
    ASSERT_INT_EQ(storage_device_lookup(st, "nope", "E1", &s, &e), ST_OK);
    ASSERT(s.token_hash == NULL);
    ASSERT_STR_EQ(e.id, "E1");
    st_enrollment_cleanup(&e);
    ASSERT_INT_EQ(storage_device_lookup(st, "h1", "E9", &s, &e), ST_OK);
    ASSERT_STR_EQ(s.token_hash, "h1");
    ASSERT(e.id == NULL);
    st_session_cleanup(&s);
    /* The lookup leaves no transaction open: a write right after it works. */
    ASSERT_INT_EQ(storage_enrollment_touch(st, "E1", 99), ST_OK);
    storage_close(st); /* u holds string literals: nothing to clean up */
}

TEST(conf_enrollment_reauthenticate_resets)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    int64_t uid = conf_user(st, "re@example.com");
    ASSERT_INT_EQ(conf_enroll(st, "E1", uid), ST_OK);
    ASSERT_INT_EQ(storage_enrollment_token_update(st, "E1", "ab12", "magic", 110), ST_OK);
    ASSERT_INT_EQ(storage_enrollment_set_push_dead(st, "E1", 1), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "C1", 0, 120), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "C2", 0, 121), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "C3", 0, 122), ST_OK);
    char uuid[64];
    ASSERT_INT_EQ(conf_next(st, "E1", 1, 130, uuid, sizeof(uuid)), ST_OK);
    ASSERT_INT_EQ(conf_ack(st, "E1", "C1", 131), ST_OK);
    ASSERT_INT_EQ(conf_next(st, "E1", 1, 132, uuid, sizeof(uuid)), ST_OK); /* C2 sent */
    ASSERT_INT_EQ(storage_enrollment_unenroll(st, "E1", 140), ST_OK);

    /* The device enrolls again under the same id: a reset in one transaction. */
    st_enrollment e = {0};
    e.id = "E1";
    e.type = ST_ENR_USER;
    e.user_id = uid;
    e.topic = "com.apple.mgmt.External.new";
    e.os_version = "18.1";
    e.enrolled_at = 500;
    e.last_seen_at = 500;
    ASSERT_INT_EQ(storage_enrollment_authenticate(st, &e), ST_OK);
    st_enrollment g;
    ASSERT_INT_EQ(storage_enrollment_get(st, "E1", &g), ST_OK);
    ASSERT_STR_EQ(g.topic, "com.apple.mgmt.External.new");
    ASSERT_STR_EQ(g.os_version, "18.1");
    ASSERT(g.push_token == NULL && g.push_magic == NULL);
    ASSERT_INT_EQ(g.push_token_dead, 0);
    ASSERT_INT_EQ(g.token_updated_at, 0);
    ASSERT_INT_EQ(g.unenrolled_at, 0);
    ASSERT_STR_EQ(g.auth_state, "active");
    ASSERT_INT_EQ(g.enrolled_at, 500);
    st_enrollment_cleanup(&g);

    /* Re-enqueue after unenroll emptied the queue, then re-Authenticate clears it again. */
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "C4", 0, 510), ST_OK);
    ASSERT_INT_EQ(conf_count(st, "E1"), 1);
    ASSERT_INT_EQ(storage_enrollment_authenticate(st, &e), ST_OK);
    ASSERT_INT_EQ(conf_count(st, "E1"), 0);
    ASSERT_INT_EQ(conf_next(st, "E1", 1, 520, uuid, sizeof(uuid)), ST_ENOTFOUND);
    ASSERT_INT_EQ(conf_status(st, "C2"), ST_ENOTFOUND);
    ASSERT_INT_EQ(conf_status(st, "C4"), ST_ENOTFOUND);
    /* History survives. */
    ASSERT_INT_EQ(conf_status(st, "C1"), ST_CMD_ACKNOWLEDGED);
    storage_close(st);
}

TEST(conf_enrollment_unenroll)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    ASSERT_INT_EQ(conf_enroll(st, "E1", 0), ST_OK);
    ASSERT_INT_EQ(conf_enroll(st, "E2", 0), ST_OK);
    ASSERT_INT_EQ(storage_enrollment_token_update(st, "E1", "ab12", "magic", 110), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "C1", 0, 120), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "C2", 0, 121), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "E2", "C3", 0, 122), ST_OK);

    ASSERT_INT_EQ(storage_enrollment_unenroll(st, "E1", 700), ST_OK);
    ASSERT_INT_EQ(conf_count(st, "E1"), 0);
    ASSERT_INT_EQ(conf_count(st, "E2"), 1);
    st_enrollment g;
    ASSERT_INT_EQ(storage_enrollment_get(st, "E1", &g), ST_OK);
    ASSERT_INT_EQ(g.unenrolled_at, 700);
    ASSERT_STR_EQ(g.auth_state, "unenrolled");
    ASSERT(g.push_token == NULL); /* retired with the enrollment */
    st_enrollment_cleanup(&g);
    /* A second CheckOut keeps the first time. */
    ASSERT_INT_EQ(storage_enrollment_unenroll(st, "E1", 800), ST_OK);
    ASSERT_INT_EQ(storage_enrollment_get(st, "E1", &g), ST_OK);
    ASSERT_INT_EQ(g.unenrolled_at, 700);
    st_enrollment_cleanup(&g);
    storage_close(st);
}

static int conf_enr_cb(const st_enrollment *e, void *ctx)
{
    struct conf_list_state *s = ctx;
    if (strcmp(e->id, s->last_key) <= 0)
        s->ordered = 0;
    snprintf(s->last_key, sizeof(s->last_key), "%s", e->id);
    s->n++;
    return s->n == s->stop_at ? 7 : 0;
}

TEST(conf_enrollment_list)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    int64_t u1 = conf_user(st, "u1@example.com"), u2 = conf_user(st, "u2@example.com");
    ASSERT(u1 > 0 && u2 > 0);
    char id[32];
    int u2_count = 0;
    /* Inserted out of order; 300 crosses an internal chunk boundary. */
    for (int k = 0; k < 300; k++) {
        int i = (k * 7) % 300;
        snprintf(id, sizeof(id), "E%04d", i);
        ASSERT_INT_EQ(conf_enroll(st, id, i % 3 == 0 ? u2 : u1), ST_OK);
    }
    for (int i = 250; i < 255; i++) {
        snprintf(id, sizeof(id), "E%04d", i);
        ASSERT_INT_EQ(storage_enrollment_unenroll(st, id, 900), ST_OK);
    }
    for (int i = 0; i < 300; i++)
        u2_count += i % 3 == 0 && !(i >= 250 && i < 255);

    struct conf_list_state s = {0, 0, 0, "", 1};
    ASSERT_INT_EQ(storage_enrollment_list(st, NULL, conf_enr_cb, &s), ST_OK);
    ASSERT_INT_EQ(s.n, 295);
    ASSERT(s.ordered);

    st_enrollment_filter f = {0, 1, NULL, 0};
    struct conf_list_state all = {0, 0, 0, "", 1};
    ASSERT_INT_EQ(storage_enrollment_list(st, &f, conf_enr_cb, &all), ST_OK);
    ASSERT_INT_EQ(all.n, 300);
    ASSERT(all.ordered);

    st_enrollment_filter fu = {u2, 0, NULL, 0};
    struct conf_list_state su = {0, 0, 0, "", 1};
    ASSERT_INT_EQ(storage_enrollment_list(st, &fu, conf_enr_cb, &su), ST_OK);
    ASSERT_INT_EQ(su.n, u2_count);

    /* Keyset pagination. */
    st_enrollment_filter page = {0, 0, "E0100", 10};
    struct conf_list_state sp = {0, 0, 0, "E0100", 1};
    ASSERT_INT_EQ(storage_enrollment_list(st, &page, conf_enr_cb, &sp), ST_OK);
    ASSERT_INT_EQ(sp.n, 10);
    ASSERT(sp.ordered);
    ASSERT_STR_EQ(sp.last_key, "E0110");
    /* A page across the unenrolled ones skips them. */
    st_enrollment_filter page2 = {0, 0, "E0248", 4};
    struct conf_list_state sp2 = {0, 0, 0, "E0248", 1};
    ASSERT_INT_EQ(storage_enrollment_list(st, &page2, conf_enr_cb, &sp2), ST_OK);
    ASSERT_INT_EQ(sp2.n, 4);
    ASSERT_STR_EQ(sp2.last_key, "E0257");
    /* Large limit across the chunk boundary. */
    st_enrollment_filter big = {0, 1, "E0010", 280};
    struct conf_list_state sb = {0, 0, 0, "E0010", 1};
    ASSERT_INT_EQ(storage_enrollment_list(st, &big, conf_enr_cb, &sb), ST_OK);
    ASSERT_INT_EQ(sb.n, 280);
    ASSERT_STR_EQ(sb.last_key, "E0290");

    struct conf_list_state stop = {0, 3, 0, "", 1};
    ASSERT_INT_EQ(storage_enrollment_list(st, NULL, conf_enr_cb, &stop), 7);
    ASSERT_INT_EQ(stop.n, 3);
    storage_close(st);
}

/* ---- command queue: the scenarios of PROTOCOL.md section 9.3 ---- */

TEST(conf_queue_idle_empty)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    ASSERT_INT_EQ(conf_enroll(st, "E1", 0), ST_OK);
    st_command c;
    ASSERT_INT_EQ(storage_queue_next(st, "E1", 1, 100, &c), ST_ENOTFOUND);
    ASSERT(c.uuid == NULL && c.body == NULL);
    ASSERT_INT_EQ(storage_queue_next(st, "E1", 0, 100, &c), ST_ENOTFOUND);
    ASSERT_INT_EQ(storage_queue_next(st, "unknown", 1, 100, &c), ST_ENOTFOUND);
    ASSERT_INT_EQ(conf_count(st, "E1"), 0);
    storage_close(st);
}

TEST(conf_queue_fifo_ack)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    ASSERT_INT_EQ(conf_enroll(st, "E1", 0), ST_OK);
    /* Same created_at: insertion order decides. */
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "C1", 0, 100), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "C2", 0, 100), ST_OK);
    ASSERT_INT_EQ(conf_count(st, "E1"), 2);

    st_command c;
    ASSERT_INT_EQ(storage_queue_next(st, "E1", 1, 200, &c), ST_OK);
    ASSERT_STR_EQ(c.uuid, "C1");
    ASSERT_STR_EQ(c.enrollment_id, "E1");
    ASSERT_STR_EQ(c.request_type, "ProfileList");
    ASSERT(c.body != NULL && strstr(c.body, "<string>C1</string>") != NULL);
    ASSERT_INT_EQ(c.body_len, strlen(c.body));
    ASSERT_INT_EQ(c.status, ST_CMD_QUEUED);
    ASSERT_INT_EQ(c.sent_at, 200);
    ASSERT_INT_EQ(c.created_at, 100);
    st_command_cleanup(&c);

    ASSERT_INT_EQ(conf_ack(st, "E1", "C1", 210), ST_OK);
    char uuid[64];
    ASSERT_INT_EQ(conf_next(st, "E1", 0, 220, uuid, sizeof(uuid)), ST_OK);
    ASSERT_STR_EQ(uuid, "C2");
    ASSERT_INT_EQ(conf_ack(st, "E1", "C2", 230), ST_OK);
    ASSERT_INT_EQ(conf_next(st, "E1", 1, 240, uuid, sizeof(uuid)), ST_ENOTFOUND);
    ASSERT_INT_EQ(conf_count(st, "E1"), 0);

    ASSERT_INT_EQ(storage_command_get(st, "C1", &c), ST_OK);
    ASSERT_INT_EQ(c.status, ST_CMD_ACKNOWLEDGED);
    ASSERT_INT_EQ(c.sent_at, 200);
    ASSERT_INT_EQ(c.completed_at, 210);
    ASSERT(c.result != NULL && strstr(c.result, "Acknowledged") != NULL);
    ASSERT(c.body != NULL && strstr(c.body, "<string>C1</string>") != NULL);
    st_command_cleanup(&c);
    storage_close(st);
}

TEST(conf_queue_notnow)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    ASSERT_INT_EQ(conf_enroll(st, "E1", 0), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "C1", 0, 100), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "C2", 0, 101), ST_OK);
    char uuid[64];
    ASSERT_INT_EQ(conf_next(st, "E1", 1, 200, uuid, sizeof(uuid)), ST_OK);
    ASSERT_STR_EQ(uuid, "C1");
    ASSERT_INT_EQ(storage_queue_report(st, "E1", "C1", ST_CMD_NOTNOW, NULL, 0, 201), ST_OK);
    ASSERT_INT_EQ(conf_status(st, "C1"), ST_CMD_NOTNOW);
    ASSERT_INT_EQ(conf_count(st, "E1"), 2);

    /* In the same session, NotNow commands are skipped... */
    ASSERT_INT_EQ(conf_next(st, "E1", 0, 202, uuid, sizeof(uuid)), ST_OK);
    ASSERT_STR_EQ(uuid, "C2");
    ASSERT_INT_EQ(conf_ack(st, "E1", "C2", 203), ST_OK);
    ASSERT_INT_EQ(conf_next(st, "E1", 0, 204, uuid, sizeof(uuid)), ST_ENOTFOUND);
    /* ...and offered again on the next Idle. */
    st_command c;
    ASSERT_INT_EQ(storage_queue_next(st, "E1", 1, 300, &c), ST_OK);
    ASSERT_STR_EQ(c.uuid, "C1");
    ASSERT_INT_EQ(c.status, ST_CMD_QUEUED);
    ASSERT_INT_EQ(c.sent_at, 300);
    st_command_cleanup(&c);
    ASSERT_INT_EQ(conf_status(st, "C1"), ST_CMD_QUEUED);
    ASSERT_INT_EQ(conf_ack(st, "E1", "C1", 301), ST_OK);
    ASSERT_INT_EQ(conf_next(st, "E1", 1, 302, uuid, sizeof(uuid)), ST_ENOTFOUND);
    storage_close(st);
}

TEST(conf_queue_resend_unanswered)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    ASSERT_INT_EQ(conf_enroll(st, "E1", 0), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "C1", 0, 100), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "C2", 0, 101), ST_OK);
    char uuid[64];
    ASSERT_INT_EQ(conf_next(st, "E1", 1, 200, uuid, sizeof(uuid)), ST_OK);
    ASSERT_STR_EQ(uuid, "C1");
    /* The connection broke: no result for C1. The next session gets C1 again. */
    st_command c;
    ASSERT_INT_EQ(storage_queue_next(st, "E1", 1, 300, &c), ST_OK);
    ASSERT_STR_EQ(c.uuid, "C1");
    ASSERT_INT_EQ(c.sent_at, 300);
    st_command_cleanup(&c);
    ASSERT_INT_EQ(conf_next(st, "E1", 0, 301, uuid, sizeof(uuid)), ST_OK);
    ASSERT_STR_EQ(uuid, "C1");
    ASSERT_INT_EQ(storage_command_get(st, "C1", &c), ST_OK);
    ASSERT_INT_EQ(c.status, ST_CMD_QUEUED);
    ASSERT_INT_EQ(c.sent_at, 301);
    st_command_cleanup(&c);
    storage_close(st);
}

TEST(conf_queue_priority)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    ASSERT_INT_EQ(conf_enroll(st, "E1", 0), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "low", 0, 100), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "high", 10, 200), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "mid", 5, 50), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "high2", 10, 200), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "old-low", 0, 90), ST_OK); /* older created_at */
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "neg", -1, 1), ST_OK);
    static const char *const want[] = {"high", "high2", "mid", "old-low", "low", "neg"};
    char uuid[64];
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        ASSERT_INT_EQ(conf_next(st, "E1", 1, 300 + (int64_t)i, uuid, sizeof(uuid)), ST_OK);
        ASSERT_STR_EQ(uuid, want[i]);
        ASSERT_INT_EQ(conf_ack(st, "E1", uuid, 400 + (int64_t)i), ST_OK);
    }
    ASSERT_INT_EQ(conf_next(st, "E1", 1, 500, uuid, sizeof(uuid)), ST_ENOTFOUND);
    storage_close(st);
}

TEST(conf_queue_duplicate_report)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    ASSERT_INT_EQ(conf_enroll(st, "E1", 0), ST_OK);
    ASSERT_INT_EQ(conf_enroll(st, "E2", 0), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "C1", 0, 100), ST_OK);
    char uuid[64];
    ASSERT_INT_EQ(conf_next(st, "E1", 1, 200, uuid, sizeof(uuid)), ST_OK);

    /* Another enrollment cannot answer for E1's command. */
    ASSERT_INT_EQ(conf_ack(st, "E2", "C1", 205), ST_ENOTFOUND);
    ASSERT_INT_EQ(conf_status(st, "C1"), ST_CMD_QUEUED);

    ASSERT_INT_EQ(storage_queue_report(st, "E1", "C1", ST_CMD_ACKNOWLEDGED, "first", 5, 210),
                  ST_OK);
    /* The device re-sends the same result (section 9.3): nothing changes. */
    ASSERT_INT_EQ(storage_queue_report(st, "E1", "C1", ST_CMD_ACKNOWLEDGED, "second", 6, 220),
                  ST_ENOTFOUND);
    ASSERT_INT_EQ(storage_queue_report(st, "E1", "C1", ST_CMD_ERROR, "third", 5, 230),
                  ST_ENOTFOUND);
    ASSERT_INT_EQ(storage_queue_report(st, "E1", "C1", ST_CMD_NOTNOW, NULL, 0, 240), ST_ENOTFOUND);
    ASSERT_INT_EQ(storage_queue_report(st, "E1", "nope", ST_CMD_ACKNOWLEDGED, "x", 1, 250),
                  ST_ENOTFOUND);
    ASSERT_INT_EQ(storage_queue_report(st, "E1", "nope", ST_CMD_NOTNOW, NULL, 0, 250),
                  ST_ENOTFOUND);
    st_command c;
    ASSERT_INT_EQ(storage_command_get(st, "C1", &c), ST_OK);
    ASSERT_INT_EQ(c.status, ST_CMD_ACKNOWLEDGED);
    ASSERT_INT_EQ(c.completed_at, 210);
    ASSERT_INT_EQ(c.result_len, 5);
    ASSERT_STR_EQ(c.result, "first");
    st_command_cleanup(&c);
    ASSERT_INT_EQ(conf_count(st, "E1"), 0);
    storage_close(st);
}

TEST(conf_queue_enqueue_errors)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    ASSERT_INT_EQ(conf_enroll(st, "E1", 0), ST_OK);
    ASSERT_INT_EQ(conf_enroll(st, "E2", 0), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "C1", 0, 100), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "C1", 0, 101), ST_EEXISTS);
    ASSERT_INT_EQ(conf_enqueue(st, "E2", "C1", 0, 101), ST_EEXISTS);
    ASSERT_INT_EQ(conf_enqueue(st, "nope", "C9", 0, 101), ST_ENOTFOUND);
    char uuid[64];
    ASSERT_INT_EQ(conf_next(st, "E1", 1, 200, uuid, sizeof(uuid)), ST_OK);
    ASSERT_INT_EQ(conf_ack(st, "E1", "C1", 210), ST_OK);
    /* A uuid in history is taken too. */
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "C1", 0, 300), ST_EEXISTS);
    ASSERT_INT_EQ(conf_count(st, "E1"), 0);
    ASSERT_INT_EQ(conf_count(st, "E2"), 0);
    ASSERT_INT_EQ(conf_status(st, "C9"), ST_ENOTFOUND);
    storage_close(st);
}

TEST(conf_command_get)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    ASSERT_INT_EQ(conf_enroll(st, "E1", 0), ST_OK);
    st_command in = {0};
    in.uuid = "C1";
    in.enrollment_id = "E1";
    in.request_type = "RemoveProfile";
    in.body = "<plist>remove</plist>";
    in.body_len = strlen(in.body);
    in.priority = 3;
    in.sensitive = 1;
    in.created_at = 100;
    in.status = ST_CMD_ACKNOWLEDGED; /* ignored: a new command is always queued */
    in.sent_at = 99;
    ASSERT_INT_EQ(storage_queue_enqueue(st, &in), ST_OK);

    st_command c;
    ASSERT_INT_EQ(storage_command_get(st, "C1", &c), ST_OK);
    ASSERT_STR_EQ(c.uuid, "C1");
    ASSERT_STR_EQ(c.enrollment_id, "E1");
    ASSERT_STR_EQ(c.request_type, "RemoveProfile");
    ASSERT_STR_EQ(c.body, "<plist>remove</plist>");
    ASSERT_INT_EQ(c.body_len, strlen("<plist>remove</plist>"));
    ASSERT_INT_EQ(c.priority, 3);
    ASSERT_INT_EQ(c.sensitive, 1);
    ASSERT_INT_EQ(c.status, ST_CMD_QUEUED);
    ASSERT_INT_EQ(c.created_at, 100);
    ASSERT_INT_EQ(c.sent_at, 0);
    ASSERT_INT_EQ(c.completed_at, 0);
    ASSERT(c.result == NULL && c.result_len == 0);
    st_command_cleanup(&c);

    /* Results are bytes, not C strings. */
    static const char result[] = "bin\0ary\xff";
    char uuid[64];
    ASSERT_INT_EQ(conf_next(st, "E1", 1, 200, uuid, sizeof(uuid)), ST_OK);
    ASSERT_INT_EQ(
        storage_queue_report(st, "E1", "C1", ST_CMD_FORMAT_ERROR, result, sizeof(result) - 1, 210),
        ST_OK);
    ASSERT_INT_EQ(storage_command_get(st, "C1", &c), ST_OK);
    ASSERT_INT_EQ(c.status, ST_CMD_FORMAT_ERROR);
    ASSERT_INT_EQ(c.priority, 3);
    ASSERT_INT_EQ(c.sensitive, 1);
    ASSERT_INT_EQ(c.sent_at, 200);
    ASSERT_INT_EQ(c.completed_at, 210);
    ASSERT_INT_EQ(c.result_len, sizeof(result) - 1);
    ASSERT(memcmp(c.result, result, sizeof(result) - 1) == 0);
    ASSERT_STR_EQ(c.body, "<plist>remove</plist>");
    st_command_cleanup(&c);

    ASSERT_INT_EQ(conf_enqueue(st, "E1", "C2", 0, 300), ST_OK);
    ASSERT_INT_EQ(conf_next(st, "E1", 1, 310, uuid, sizeof(uuid)), ST_OK);
    ASSERT_INT_EQ(storage_queue_report(st, "E1", "C2", ST_CMD_ERROR, NULL, 0, 320), ST_OK);
    ASSERT_INT_EQ(storage_command_get(st, "C2", &c), ST_OK);
    ASSERT_INT_EQ(c.status, ST_CMD_ERROR);
    ASSERT(c.result == NULL);
    st_command_cleanup(&c);

    ASSERT_INT_EQ(storage_command_get(st, "nope", &c), ST_ENOTFOUND);
    ASSERT(c.uuid == NULL);
    storage_close(st);
}

static int conf_cmd_cb(const st_command *c, void *ctx)
{
    struct conf_list_state *s = ctx;
    /* The fixtures name commands in creation order, so newest first = decreasing names. */
    if (s->n > 0 && strcmp(c->uuid, s->last_key) >= 0)
        s->ordered = 0;
    snprintf(s->last_key, sizeof(s->last_key), "%s", c->uuid);
    if (c->body == NULL || strcmp(c->enrollment_id, "E1") != 0)
        s->ordered = 0;
    s->n++;
    return s->n == s->stop_at ? 7 : 0;
}

TEST(conf_command_list)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    ASSERT_INT_EQ(conf_enroll(st, "E1", 0), ST_OK);
    ASSERT_INT_EQ(conf_enroll(st, "E2", 0), ST_OK);
    char uuid[64], got[64];
    /* 300 commands (over one internal chunk): the first 100 answered, 200 pending. */
    for (int i = 0; i < 300; i++) {
        snprintf(uuid, sizeof(uuid), "C%04d", i);
        ASSERT_INT_EQ(conf_enqueue(st, "E1", uuid, 0, 100 + i), ST_OK);
    }
    for (int i = 0; i < 100; i++) {
        ASSERT_INT_EQ(conf_next(st, "E1", 1, 1000 + i, got, sizeof(got)), ST_OK);
        ASSERT_INT_EQ(conf_ack(st, "E1", got, 1000 + i), ST_OK);
    }
    ASSERT_INT_EQ(conf_enqueue(st, "E2", "X1", 0, 100), ST_OK);

    /* Queue first (newest first), then history (newest first). */
    struct conf_list_state s = {0, 0, 0, "", 1};
    ASSERT_INT_EQ(storage_command_list(st, "E1", 0, conf_cmd_cb, &s), ST_OK);
    ASSERT_INT_EQ(s.n, 300);
    ASSERT(s.ordered);
    ASSERT_STR_EQ(s.last_key, "C0000");

    struct conf_list_state lim = {0, 0, 0, "", 1};
    ASSERT_INT_EQ(storage_command_list(st, "E1", 3, conf_cmd_cb, &lim), ST_OK);
    ASSERT_INT_EQ(lim.n, 3);
    ASSERT_STR_EQ(lim.last_key, "C0297");

    struct conf_list_state cross = {0, 0, 0, "", 1};
    ASSERT_INT_EQ(storage_command_list(st, "E1", 210, conf_cmd_cb, &cross), ST_OK);
    ASSERT_INT_EQ(cross.n, 210);
    ASSERT(cross.ordered);
    ASSERT_STR_EQ(cross.last_key, "C0090"); /* 200 pending, then 10 from history */

    struct conf_list_state stop = {0, 4, 0, "", 1};
    ASSERT_INT_EQ(storage_command_list(st, "E1", 0, conf_cmd_cb, &stop), 7);
    ASSERT_INT_EQ(stop.n, 4);

    struct conf_list_state none = {0, 0, 0, "", 1};
    ASSERT_INT_EQ(storage_command_list(st, "nope", 0, conf_cmd_cb, &none), ST_OK);
    ASSERT_INT_EQ(none.n, 0);
    storage_close(st);
}

TEST(conf_queue_clear_count)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    ASSERT_INT_EQ(conf_enroll(st, "E1", 0), ST_OK);
    ASSERT_INT_EQ(conf_enroll(st, "E2", 0), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "C1", 0, 100), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "C2", 0, 101), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "C3", 0, 102), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "E2", "C4", 0, 103), ST_OK);
    char uuid[64];
    ASSERT_INT_EQ(conf_next(st, "E1", 1, 200, uuid, sizeof(uuid)), ST_OK);
    ASSERT_INT_EQ(storage_queue_report(st, "E1", uuid, ST_CMD_NOTNOW, NULL, 0, 201), ST_OK);
    ASSERT_INT_EQ(conf_count(st, "E1"), 3); /* NotNow is still pending */
    ASSERT_INT_EQ(storage_queue_clear(st, "E1"), ST_OK);
    ASSERT_INT_EQ(conf_count(st, "E1"), 0);
    ASSERT_INT_EQ(conf_count(st, "E2"), 1);
    ASSERT_INT_EQ(storage_queue_clear(st, "nope"), ST_OK);
    ASSERT_INT_EQ(conf_count(st, "nope"), 0);
    storage_close(st);
}

TEST(conf_history_prune)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    ASSERT_INT_EQ(conf_enroll(st, "E1", 0), ST_OK);
    char uuid[64];
    static const char *const ids[] = {"C1", "C2", "C3"};
    for (int i = 0; i < 3; i++) {
        ASSERT_INT_EQ(conf_enqueue(st, "E1", ids[i], 0, 10 + i), ST_OK);
        ASSERT_INT_EQ(conf_next(st, "E1", 1, 50, uuid, sizeof(uuid)), ST_OK);
        ASSERT_INT_EQ(conf_ack(st, "E1", uuid, 100 * (i + 1)), ST_OK); /* 100, 200, 300 */
    }
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "P1", 0, 20), ST_OK); /* pending: never pruned */
    int64_t deleted = -1;
    ASSERT_INT_EQ(storage_history_prune(st, 250, &deleted), ST_OK);
    ASSERT_INT_EQ(deleted, 2);
    ASSERT_INT_EQ(conf_status(st, "C1"), ST_ENOTFOUND);
    ASSERT_INT_EQ(conf_status(st, "C2"), ST_ENOTFOUND);
    ASSERT_INT_EQ(conf_status(st, "C3"), ST_CMD_ACKNOWLEDGED);
    ASSERT_INT_EQ(conf_status(st, "P1"), ST_CMD_QUEUED);
    ASSERT_INT_EQ(storage_history_prune(st, 250, &deleted), ST_OK);
    ASSERT_INT_EQ(deleted, 0);
    ASSERT_INT_EQ(storage_history_prune(st, 300, &deleted), ST_OK); /* strictly before */
    ASSERT_INT_EQ(deleted, 0);
    storage_close(st);
}

/* ---- audit ---- */

struct conf_audit_state {
    int n, stop_at, ordered;
    int64_t last_id, first_id;
};

static int conf_audit_cb(const st_audit *a, void *ctx)
{
    struct conf_audit_state *s = ctx;
    if (s->n == 0)
        s->first_id = a->id;
    else if (a->id >= s->last_id)
        s->ordered = 0;
    char want[32];
    snprintf(want, sizeof(want), "a%lld", (long long)a->at);
    if (strcmp(a->action, want) != 0 || strcmp(a->actor, "system") != 0)
        s->ordered = 0;
    s->last_id = a->id;
    s->n++;
    return s->n == s->stop_at ? 7 : 0;
}

TEST(conf_audit)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    char action[32];
    for (int i = 1; i <= 300; i++) {
        snprintf(action, sizeof(action), "a%d", i);
        st_audit a = {0};
        a.at = i;
        a.actor = "system";
        a.action = action;
        a.target = i % 2 ? "E1" : NULL;
        a.detail = i % 2 ? "{\"k\":1}" : NULL;
        ASSERT_INT_EQ(storage_audit_add(st, &a), ST_OK);
    }
    struct conf_audit_state all = {0, 0, 1, 0, 0};
    ASSERT_INT_EQ(storage_audit_list(st, 0, 0, conf_audit_cb, &all), ST_OK);
    ASSERT_INT_EQ(all.n, 300);
    ASSERT(all.ordered);

    /* Pages of 10, newest first, contiguous. */
    struct conf_audit_state p1 = {0, 0, 1, 0, 0};
    ASSERT_INT_EQ(storage_audit_list(st, 0, 10, conf_audit_cb, &p1), ST_OK);
    ASSERT_INT_EQ(p1.n, 10);
    ASSERT_INT_EQ(p1.first_id, all.first_id);
    struct conf_audit_state p2 = {0, 0, 1, 0, 0};
    ASSERT_INT_EQ(storage_audit_list(st, p1.last_id, 10, conf_audit_cb, &p2), ST_OK);
    ASSERT_INT_EQ(p2.n, 10);
    ASSERT(p2.ordered);
    ASSERT(p2.first_id < p1.last_id);

    struct conf_audit_state tail = {0, 0, 1, 0, 0};
    ASSERT_INT_EQ(storage_audit_list(st, all.last_id + 3, 0, conf_audit_cb, &tail), ST_OK);
    ASSERT_INT_EQ(tail.n, 3);

    struct conf_audit_state stop = {0, 2, 1, 0, 0};
    ASSERT_INT_EQ(storage_audit_list(st, 0, 0, conf_audit_cb, &stop), 7);
    ASSERT_INT_EQ(stop.n, 2);
    storage_close(st);
}

/* ---- fault injection: a failed call loses and changes nothing ---- */

TEST(conf_fault_wrapper)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    ASSERT_INT_EQ(conf_enroll(st, "E1", 0), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "C1", 0, 100), ST_OK);

    storage_fail_after(st, 1);
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "C2", 0, 101), ST_ERROR);
    ASSERT_INT_EQ(conf_count(st, "E1"), 1);
    ASSERT_INT_EQ(conf_status(st, "C2"), ST_ENOTFOUND);
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "C2", 0, 101), ST_OK); /* one shot */

    char uuid[64];
    ASSERT_INT_EQ(conf_next(st, "E1", 1, 200, uuid, sizeof(uuid)), ST_OK);
    ASSERT_STR_EQ(uuid, "C1");
    storage_fail_after(st, 1);
    ASSERT_INT_EQ(conf_ack(st, "E1", "C1", 210), ST_ERROR);
    ASSERT_INT_EQ(conf_status(st, "C1"), ST_CMD_QUEUED);
    ASSERT_INT_EQ(conf_count(st, "E1"), 2);
    /* The device re-sends the result it could not deliver; now it is recorded. */
    ASSERT_INT_EQ(conf_ack(st, "E1", "C1", 220), ST_OK);
    ASSERT_INT_EQ(conf_status(st, "C1"), ST_CMD_ACKNOWLEDGED);

    /* The Nth call fails, not the ones before it; failed lookups leave the record zeroed. */
    storage_fail_after(st, 2);
    st_command c;
    ASSERT_INT_EQ(storage_command_get(st, "C1", &c), ST_OK);
    st_command_cleanup(&c);
    ASSERT_INT_EQ(storage_queue_next(st, "E1", 1, 230, &c), ST_ERROR);
    ASSERT(c.uuid == NULL);
    ASSERT_INT_EQ(storage_command_get(st, "C2", &c), ST_OK);
    ASSERT_INT_EQ(c.sent_at, 0); /* the failed next marked nothing */
    st_command_cleanup(&c);

    storage_fail_after(st, 3);
    storage_fail_after(st, 0); /* disarmed */
    for (int i = 0; i < 5; i++)
        ASSERT_INT_EQ(storage_ping(st), ST_OK);
    storage_close(st);
}

/*
 * Runs op with the backend failing its 1st, 2nd, ... round trip until op succeeds; after each
 * failure check() must see the state from before. Returns the number of failed attempts, or
 * -1 if check() failed (the message is printed).
 */
static int conf_step_faults(storage *st, int (*op)(storage *st), int (*check)(storage *st),
                            const char *what)
{
    for (int n = 1; n <= 64; n++) {
        storage_fail_step_after(st, n);
        int rc = op(st);
        storage_fail_step_after(st, 0);
        if (rc == ST_OK)
            return n - 1;
        if (rc != ST_ERROR || !check(st)) {
            fprintf(stderr, "%s: failing round trip %d gave rc=%d or changed the store\n", what, n,
                    rc);
            return -1;
        }
    }
    fprintf(stderr, "%s: never succeeded\n", what);
    return -1;
}

static int conf_op_report(storage *st)
{
    return conf_ack(st, "E1", "C1", 500);
}

static int conf_check_report(storage *st)
{
    st_command c;
    int ok = storage_command_get(st, "C1", &c) == ST_OK && c.status == ST_CMD_QUEUED &&
             c.completed_at == 0 && c.result == NULL && c.sent_at == 200;
    st_command_cleanup(&c);
    return ok && conf_count(st, "E1") == 2;
}

static int conf_op_enqueue(storage *st)
{
    return conf_enqueue(st, "E1", "C3", 0, 300);
}

static int conf_check_enqueue(storage *st)
{
    return conf_status(st, "C3") == ST_ENOTFOUND && conf_count(st, "E1") == 1;
}

static int conf_op_next(storage *st)
{
    char uuid[64];
    return conf_next(st, "E1", 1, 600, uuid, sizeof(uuid));
}

static int conf_check_next(storage *st)
{
    st_command c;
    int ok = storage_command_get(st, "C2", &c) == ST_OK && c.sent_at == 0;
    st_command_cleanup(&c);
    return ok;
}

static int conf_op_reauth(storage *st)
{
    st_enrollment e = {0};
    e.id = "E1";
    e.type = ST_ENR_USER;
    e.os_version = "19.0";
    e.enrolled_at = 700;
    return storage_enrollment_authenticate(st, &e);
}

static int conf_check_reauth(storage *st)
{
    st_enrollment g;
    int ok = storage_enrollment_get(st, "E1", &g) == ST_OK && g.os_version == NULL &&
             g.push_token != NULL && g.enrolled_at == 100;
    st_enrollment_cleanup(&g);
    return ok && conf_count(st, "E1") == 2;
}

static int conf_op_unenroll(storage *st)
{
    return storage_enrollment_unenroll(st, "E1", 800);
}

static int conf_check_unenroll(storage *st)
{
    st_enrollment g;
    int ok = storage_enrollment_get(st, "E1", &g) == ST_OK && g.unenrolled_at == 0;
    st_enrollment_cleanup(&g);
    return ok && conf_count(st, "E1") == 2;
}

static int conf_op_consume(storage *st)
{
    int64_t uid;
    char *sess = NULL;
    int rc = storage_challenge_consume(st, "ch1", 50, &uid, &sess);
    free(sess);
    return rc;
}

static int conf_check_consume(storage *st)
{
    (void)st;
    return 1; /* proven by the op succeeding afterwards: a consumed challenge would conflict */
}

TEST(conf_fault_steps)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    if (storage_fail_step_after(st, 0) != 0) {
        fprintf(stderr, "%s backend has no step fault hook; skipped\n", conf_backend->name);
        storage_close(st);
        return;
    }
    int64_t uid = conf_user(st, "f@example.com");
    ASSERT_INT_EQ(storage_challenge_add(st, "ch1", uid, "s1", 1000), ST_OK);
    ASSERT_INT_EQ(conf_enroll(st, "E1", 0), ST_OK);
    ASSERT_INT_EQ(storage_enrollment_token_update(st, "E1", "ab12", "magic", 110), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "C1", 0, 100), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "C2", 0, 101), ST_OK);
    char uuid[64];
    ASSERT_INT_EQ(conf_next(st, "E1", 1, 200, uuid, sizeof(uuid)), ST_OK);

    /* Report: the move to history is all-or-nothing, whichever statement fails. */
    ASSERT(conf_step_faults(st, conf_op_report, conf_check_report, "report") >= 1);
    ASSERT_INT_EQ(conf_status(st, "C1"), ST_CMD_ACKNOWLEDGED);
    ASSERT_INT_EQ(conf_count(st, "E1"), 1);

    ASSERT(conf_step_faults(st, conf_op_enqueue, conf_check_enqueue, "enqueue") >= 1);
    ASSERT_INT_EQ(conf_count(st, "E1"), 2);

    /* next: marking sent is all-or-nothing (C2 is next, C3 behind it). */
    ASSERT(conf_step_faults(st, conf_op_next, conf_check_next, "next") >= 1);
    ASSERT_INT_EQ(conf_status(st, "C2"), ST_CMD_QUEUED);

    /* Re-Authenticate: fields and queue reset together or not at all. */
    ASSERT(conf_step_faults(st, conf_op_reauth, conf_check_reauth, "authenticate") >= 1);
    ASSERT_INT_EQ(conf_count(st, "E1"), 0);

    /* Unenroll: marked and queue cleared together. */
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "C5", 0, 103), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "C6", 0, 104), ST_OK);
    ASSERT(conf_step_faults(st, conf_op_unenroll, conf_check_unenroll, "unenroll") >= 1);
    ASSERT_INT_EQ(conf_count(st, "E1"), 0);

    /* Challenge: a failed consume does not use the challenge up. */
    ASSERT(conf_step_faults(st, conf_op_consume, conf_check_consume, "consume") >= 1);
    ASSERT_INT_EQ(conf_op_consume(st), ST_ECONFLICT);
    storage_close(st);
}

/* ---- concurrency ---- */

#define CONF_WORKERS 4
#define CONF_ITERATIONS 200

struct conf_thread {
    storage *st;
    int index;
    atomic_int *errors;
    atomic_int *done;
};

static void conf_thread_error(struct conf_thread *t, const char *what, int rc)
{
    if (atomic_fetch_add(t->errors, 1) < 5)
        fprintf(stderr, "thread %d: %s rc=%d\n", t->index, what, rc);
}

static void *conf_worker_main(void *arg)
{
    struct conf_thread *t = arg;
    char enr[16], uuid[32], got[64];
    snprintf(enr, sizeof(enr), "T%d", t->index);
    for (int i = 0; i < CONF_ITERATIONS; i++) {
        int64_t now = 1000 + i;
        int rc;
        snprintf(uuid, sizeof(uuid), "T%d-%04d", t->index, i);
        if ((rc = conf_enqueue(t->st, enr, uuid, 0, now)) != ST_OK)
            conf_thread_error(t, "enqueue", rc);
        if ((rc = conf_next(t->st, enr, 1, now, got, sizeof(got))) != ST_OK ||
            strcmp(got, uuid) != 0)
            conf_thread_error(t, "next", rc);
        if (i % 5 == 0) {
            rc = storage_queue_report(t->st, enr, uuid, ST_CMD_NOTNOW, NULL, 0, now);
            if (rc != ST_OK)
                conf_thread_error(t, "notnow", rc);
            if ((rc = conf_next(t->st, enr, 0, now, got, sizeof(got))) != ST_ENOTFOUND)
                conf_thread_error(t, "next after notnow", rc);
            if ((rc = conf_next(t->st, enr, 1, now, got, sizeof(got))) != ST_OK)
                conf_thread_error(t, "next on idle", rc);
        }
        if ((rc = conf_ack(t->st, enr, uuid, now)) != ST_OK)
            conf_thread_error(t, "ack", rc);
        if ((rc = storage_enrollment_touch(t->st, enr, now)) != ST_OK)
            conf_thread_error(t, "touch", rc);
    }
    atomic_fetch_add(t->done, 1);
    return NULL;
}

static int conf_count_cb(const st_command *c, void *ctx)
{
    (void)c;
    (*(int *)ctx)++;
    return 0;
}

static void *conf_reader_main(void *arg)
{
    struct conf_thread *t = arg;
    char enr[16];
    int64_t loops = 0;
    while (atomic_load(t->done) < CONF_WORKERS || loops < 10) {
        int rc, n = 0;
        st_session s;
        st_enrollment e;
        st_command c;
        snprintf(enr, sizeof(enr), "T%d", (int)(loops % CONF_WORKERS));
        if ((rc = storage_session_get(t->st, "conc-session", &s)) != ST_OK)
            conf_thread_error(t, "session_get", rc);
        st_session_cleanup(&s);
        if ((rc = storage_enrollment_get(t->st, enr, &e)) != ST_OK)
            conf_thread_error(t, "enrollment_get", rc);
        st_enrollment_cleanup(&e);
        if ((rc = storage_queue_next(t->st, "R", 1, 5, &c)) != ST_ENOTFOUND)
            conf_thread_error(t, "next on empty", rc);
        st_command_cleanup(&c);
        if ((rc = storage_command_list(t->st, enr, 5, conf_count_cb, &n)) != ST_OK)
            conf_thread_error(t, "command_list", rc);
        loops++;
    }
    return NULL;
}

TEST(conf_concurrency)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    int64_t uid = conf_user(st, "conc@example.com");
    ASSERT_INT_EQ(conf_session(st, "conc-session", uid, "R"), ST_OK);
    ASSERT_INT_EQ(conf_enroll(st, "R", uid), ST_OK);
    char enr[16];
    for (int i = 0; i < CONF_WORKERS; i++) {
        snprintf(enr, sizeof(enr), "T%d", i);
        ASSERT_INT_EQ(conf_enroll(st, enr, uid), ST_OK);
    }
    atomic_int errors, done;
    atomic_init(&errors, 0);
    atomic_init(&done, 0);
    struct conf_thread threads[CONF_WORKERS + 1];
    pthread_t tids[CONF_WORKERS + 1];
    for (int i = 0; i <= CONF_WORKERS; i++) {
        threads[i] = (struct conf_thread){st, i, &errors, &done};
        void *(*fn)(void *) = i < CONF_WORKERS ? conf_worker_main : conf_reader_main;
        ASSERT_INT_EQ(pthread_create(&tids[i], NULL, fn, &threads[i]), 0);
    }
    for (int i = 0; i <= CONF_WORKERS; i++)
        pthread_join(tids[i], NULL);
    ASSERT_INT_EQ(atomic_load(&errors), 0);
    for (int i = 0; i < CONF_WORKERS; i++) {
        snprintf(enr, sizeof(enr), "T%d", i);
        ASSERT_INT_EQ(conf_count(st, enr), 0);
        int n = 0;
        ASSERT_INT_EQ(storage_command_list(st, enr, 0, conf_count_cb, &n), ST_OK);
        ASSERT_INT_EQ(n, CONF_ITERATIONS);
    }
    storage_close(st);
}

/* ---- push outbox ---- */

struct conf_claimed {
    int n;
    char id[8][64];
    char token[8][65];
    int attempts[8];
    int64_t bulk[8];
};

static int conf_claim_cb(const st_push *p, void *ctx)
{
    struct conf_claimed *c = ctx;
    if (c->n < 8) {
        snprintf(c->id[c->n], sizeof(c->id[0]), "%s", p->enrollment_id);
        snprintf(c->token[c->n], sizeof(c->token[0]), "%s", p->push_token);
        c->attempts[c->n] = p->attempts;
        c->bulk[c->n] = p->bulk;
    }
    c->n++;
    return 0;
}

/* Claims for owner at now (lease 60 s); returns the number claimed, or the error code. */
static inline int conf_claim(storage *st, const char *owner, int64_t now, struct conf_claimed *c)
{
    memset(c, 0, sizeof(*c));
    int claimed = 0;
    int rc = storage_push_claim(st, owner, now, 60, 100, conf_claim_cb, c, &claimed);
    return rc == ST_OK ? claimed : rc;
}

static inline int conf_push_done1(storage *st, const char *owner, const char *id, const char *token,
                                  int outcome, int64_t now, int64_t due, int attempts)
{
    st_push_result r = {id, token, outcome, due, attempts, 0};
    return storage_push_done(st, owner, now, &r, 1);
}

static inline int conf_pending(storage *st)
{
    int64_t n = -1;
    int rc = storage_push_pending(st, &n);
    return rc == ST_OK ? (int)n : rc;
}

TEST(conf_push_outbox)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    ASSERT_INT_EQ(conf_enroll(st, "P1", 0), ST_OK);
    ASSERT_INT_EQ(conf_enroll(st, "P2", 0), ST_OK);
    ASSERT_INT_EQ(storage_enrollment_token_update(st, "P1", "aa01", "MAGIC1", 100), ST_OK);
    ASSERT_INT_EQ(conf_pending(st), 0);
    ASSERT_INT_EQ(storage_push_enqueue(st, "P1", 100), ST_OK);
    ASSERT_INT_EQ(storage_push_enqueue(st, "P2", 100), ST_ECONFLICT); /* no token yet */
    ASSERT_INT_EQ(storage_push_enqueue(st, "NOPE", 100), ST_ENOTFOUND);
    /* Coalescing: one row per enrollment, the earliest due time kept. */
    for (int i = 1; i <= 4; i++)
        ASSERT_INT_EQ(storage_push_enqueue(st, "P1", 100 + i), ST_OK);
    ASSERT_INT_EQ(conf_pending(st), 1);

    struct conf_claimed c;
    ASSERT_INT_EQ(conf_claim(st, "a", 99, &c), 0); /* not due */
    ASSERT_INT_EQ(conf_claim(st, "a", 200, &c), 1);
    ASSERT_STR_EQ(c.id[0], "P1");
    ASSERT_STR_EQ(c.token[0], "aa01");
    ASSERT_INT_EQ(c.attempts[0], 0);
    ASSERT_INT_EQ(conf_claim(st, "b", 210, &c), 0); /* leased to a */
    ASSERT_INT_EQ(conf_claim(st, "b", 261, &c), 1); /* a's lease expired */
    /* a no longer holds it: its outcome is ignored. */
    ASSERT_INT_EQ(conf_push_done1(st, "a", "P1", "aa01", ST_PUSH_SENT, 262, 0, 0), ST_OK);
    ASSERT_INT_EQ(conf_pending(st), 1);
    ASSERT_INT_EQ(conf_push_done1(st, "b", "P1", "aa01", ST_PUSH_SENT, 262, 0, 0), ST_OK);
    ASSERT_INT_EQ(conf_pending(st), 0);

    /* Retry: released with a later due time and the attempt count. */
    ASSERT_INT_EQ(storage_push_enqueue(st, "P1", 300), ST_OK);
    ASSERT_INT_EQ(conf_claim(st, "a", 300, &c), 1);
    ASSERT_INT_EQ(conf_push_done1(st, "a", "P1", "aa01", ST_PUSH_RETRY, 300, 330, 1), ST_OK);
    ASSERT_INT_EQ(conf_claim(st, "a", 329, &c), 0);
    ASSERT_INT_EQ(conf_claim(st, "a", 330, &c), 1);
    ASSERT_INT_EQ(c.attempts[0], 1);
    /* Enqueued while in flight: pushed once more after the push in flight. */
    ASSERT_INT_EQ(storage_push_enqueue(st, "P1", 331), ST_OK);
    ASSERT_INT_EQ(conf_push_done1(st, "a", "P1", "aa01", ST_PUSH_SENT, 332, 0, 0), ST_OK);
    ASSERT_INT_EQ(conf_claim(st, "a", 332, &c), 1);
    ASSERT_INT_EQ(c.attempts[0], 0);
    ASSERT_INT_EQ(conf_push_done1(st, "a", "P1", "aa01", ST_PUSH_SENT, 333, 0, 0), ST_OK);
    ASSERT_INT_EQ(conf_pending(st), 0);

    /* Dead: a stale token is not marked; the current one is, until the next TokenUpdate. */
    ASSERT_INT_EQ(storage_push_enqueue(st, "P1", 400), ST_OK);
    ASSERT_INT_EQ(conf_claim(st, "a", 400, &c), 1);
    ASSERT_INT_EQ(conf_push_done1(st, "a", "P1", "old0", ST_PUSH_DEAD, 400, 0, 0), ST_OK);
    ASSERT_INT_EQ(conf_pending(st), 0);
    st_enrollment e;
    ASSERT_INT_EQ(storage_enrollment_get(st, "P1", &e), ST_OK);
    ASSERT_INT_EQ(e.push_token_dead, 0);
    st_enrollment_cleanup(&e);
    ASSERT_INT_EQ(storage_push_enqueue(st, "P1", 401), ST_OK);
    ASSERT_INT_EQ(conf_claim(st, "a", 401, &c), 1);
    ASSERT_INT_EQ(conf_push_done1(st, "a", "P1", "aa01", ST_PUSH_DEAD, 401, 0, 0), ST_OK);
    ASSERT_INT_EQ(storage_enrollment_get(st, "P1", &e), ST_OK);
    ASSERT_INT_EQ(e.push_token_dead, 1);
    st_enrollment_cleanup(&e);
    ASSERT_INT_EQ(storage_push_enqueue(st, "P1", 402), ST_ECONFLICT);
    ASSERT_INT_EQ(storage_enrollment_token_update(st, "P1", "aa02", "MAGIC2", 403), ST_OK);
    ASSERT_INT_EQ(storage_push_enqueue(st, "P1", 404), ST_OK);
    /* A row whose enrollment lost its token meanwhile is dropped at claim time. */
    ASSERT_INT_EQ(storage_enrollment_unenroll(st, "P1", 405), ST_OK);
    ASSERT_INT_EQ(conf_claim(st, "a", 406, &c), 0);
    ASSERT_INT_EQ(conf_pending(st), 0);
    /* Drop and give-up delete the row. */
    ASSERT_INT_EQ(storage_enrollment_token_update(st, "P2", "bb01", "MAGIC3", 500), ST_OK);
    ASSERT_INT_EQ(storage_push_enqueue(st, "P2", 500), ST_OK);
    ASSERT_INT_EQ(conf_claim(st, "a", 500, &c), 1);
    ASSERT_INT_EQ(conf_push_done1(st, "a", "P2", "bb01", ST_PUSH_DROP, 500, 0, 0), ST_OK);
    ASSERT_INT_EQ(conf_pending(st), 0);
    storage_close(st);
}

/* The index of id among the claimed rows, or -1. */
static inline int conf_claimed_at(const struct conf_claimed *c, const char *id)
{
    for (int i = 0; i < c->n && i < 8; i++)
        if (strcmp(c->id[i], id) == 0)
            return i;
    return -1;
}

static inline int conf_dead(storage *st, const char *id)
{
    st_enrollment e;
    int rc = storage_enrollment_get(st, id, &e);
    int dead = rc == ST_OK ? e.push_token_dead : rc;
    st_enrollment_cleanup(&e);
    return dead;
}

/* Batches: every outcome in one push_done, ids that need escaping, an id named twice. */
TEST(conf_push_batch)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    /* A quote, a backslash, a control character and a non-ASCII letter. */
    const char *odd = "B\"3\\\x01\xc3\xa9";
    const char *ids[] = {"B1", "B2", odd, "B4", "B5", "B6", "B7"};
    const char *tokens[] = {"t1", "t2", "t3", "t4", "t5", "t6", "t7"};
    for (int i = 0; i < 7; i++) {
        ASSERT_INT_EQ(conf_enroll(st, ids[i], 0), ST_OK);
        ASSERT_INT_EQ(storage_enrollment_token_update(st, ids[i], tokens[i], "M", 100), ST_OK);
        ASSERT_INT_EQ(storage_push_enqueue(st, ids[i], 100), ST_OK);
    }
    ASSERT_INT_EQ(conf_enqueue(st, "B1", "BC1", 0, 100), ST_OK); /* for the sweep below */
    ASSERT_INT_EQ(storage_enrollment_unenroll(st, "B7", 100), ST_OK);

    struct conf_claimed c;
    ASSERT_INT_EQ(conf_claim(st, "a", 100, &c), 6); /* B7 dropped */
    ASSERT_INT_EQ(conf_pending(st), 6);
    int k = conf_claimed_at(&c, odd);
    ASSERT(k >= 0);
    ASSERT_STR_EQ(c.token[k], "t3");
    ASSERT_INT_EQ(conf_claimed_at(&c, "B7"), -1);
    ASSERT_INT_EQ(storage_push_enqueue(st, "B2", 101), ST_OK); /* while in flight */

    st_push_result r[] = {
        {"B1", "t1", ST_PUSH_SENT, 0, 0, 0},   {"B2", "t2", ST_PUSH_SENT, 0, 0, 0},
        {odd, "t3", ST_PUSH_RETRY, 200, 1, 0}, {"B4", "t4", ST_PUSH_DEAD, 0, 0, 0},
        {"B5", "old", ST_PUSH_DEAD, 0, 0, 0},  {"B6", "t6", ST_PUSH_DROP, 0, 0, 0},
        {"NOPE", "x", ST_PUSH_SENT, 0, 0, 0}, /* not held by a: ignored */
    };
    ASSERT_INT_EQ(storage_push_done(st, "a", 102, r, sizeof(r) / sizeof(r[0])), ST_OK);
    ASSERT_INT_EQ(conf_pending(st), 2); /* B2 re-armed, the odd one released */
    ASSERT_INT_EQ(conf_dead(st, "B4"), 1);
    ASSERT_INT_EQ(conf_dead(st, "B5"), 0); /* a stale token is not marked */
    ASSERT_INT_EQ(storage_push_enqueue(st, "B4", 103), ST_ECONFLICT);
    /* B1 was marked pushed at 102. */
    int64_t q = -1;
    ASSERT_INT_EQ(storage_push_sweep(st, 101, 103, &q), ST_OK);
    ASSERT_INT_EQ(q, 0);
    ASSERT_INT_EQ(storage_push_sweep(st, 103, 104, &q), ST_OK);
    ASSERT_INT_EQ(q, 1);

    /* B1 (swept, due 104) and B2 (re-armed, due 102); the odd one is due at 200. */
    ASSERT_INT_EQ(conf_claim(st, "b", 150, &c), 2);
    ASSERT(conf_claimed_at(&c, "B1") >= 0 && conf_claimed_at(&c, "B2") >= 0);
    ASSERT_INT_EQ(c.attempts[0], 0);
    ASSERT_INT_EQ(c.attempts[1], 0);
    /* An id named twice: the outcomes apply in order (SENT deletes, the RETRY finds nothing). */
    st_push_result twice[] = {
        {"B2", "t2", ST_PUSH_SENT, 0, 0, 0},
        {"B2", "t2", ST_PUSH_RETRY, 300, 2, 0},
        {"B1", "t1", ST_PUSH_SENT, 0, 0, 0},
    };
    ASSERT_INT_EQ(storage_push_done(st, "b", 160, twice, 3), ST_OK);
    ASSERT_INT_EQ(conf_pending(st), 1);
    /* The other order: RETRY releases the row, so the SENT after it no longer holds it. */
    ASSERT_INT_EQ(storage_push_enqueue(st, "B6", 170), ST_OK);
    ASSERT_INT_EQ(conf_claim(st, "b", 170, &c), 1);
    ASSERT_STR_EQ(c.id[0], "B6");
    st_push_result back[] = {
        {"B6", "t6", ST_PUSH_RETRY, 300, 2, 0},
        {"B6", "t6", ST_PUSH_SENT, 0, 0, 0},
    };
    ASSERT_INT_EQ(storage_push_done(st, "b", 171, back, 2), ST_OK);
    ASSERT_INT_EQ(conf_pending(st), 2);
    ASSERT_INT_EQ(conf_claim(st, "c", 250, &c), 1);
    ASSERT_STR_EQ(c.id[0], odd);
    ASSERT_INT_EQ(c.attempts[0], 1);
    ASSERT_INT_EQ(conf_claim(st, "c", 300, &c), 1);
    ASSERT_STR_EQ(c.id[0], "B6");
    ASSERT_INT_EQ(c.attempts[0], 2);
    storage_close(st);
}

/* Claims into c (at most 8 kept) with a limit; returns the number claimed or the error. */
static inline int conf_claim_n(storage *st, const char *owner, int64_t now, int limit,
                               struct conf_claimed *c)
{
    memset(c, 0, sizeof(*c));
    int claimed = 0;
    int rc = storage_push_claim(st, owner, now, 60, limit, conf_claim_cb, c, &claimed);
    return rc == ST_OK ? claimed : rc;
}

/* A claimed batch, every row kept (ids, bulk ids), for conf_push_drain. */
struct conf_batch {
    int n;
    char id[64][16];
    int64_t bulk[64];
};

static int conf_batch_cb(const st_push *p, void *ctx)
{
    struct conf_batch *b = ctx;
    if (b->n < 64) {
        snprintf(b->id[b->n], sizeof(b->id[0]), "%s", p->enrollment_id);
        b->bulk[b->n] = p->bulk;
    }
    b->n++;
    return 0;
}

static inline int conf_batch_claim(storage *st, const char *owner, int64_t now, int limit,
                                   struct conf_batch *b)
{
    memset(b, 0, sizeof(*b));
    int claimed = 0;
    int rc = storage_push_claim(st, owner, now, 60, limit, conf_batch_cb, b, &claimed);
    return rc != ST_OK ? rc : claimed == b->n ? claimed : -100;
}

/* Records every row of b with one outcome. */
static inline int conf_batch_done(storage *st, const char *owner, int64_t now,
                                  const struct conf_batch *b, int outcome)
{
    st_push_result r[64];
    for (int i = 0; i < b->n && i < 64; i++)
        r[i] = (st_push_result){
            .enrollment_id = b->id[i], .push_token = "ab", .outcome = outcome, .bulk = b->bulk[i]};
    return storage_push_done(st, owner, now, r, (size_t)(b->n < 64 ? b->n : 64));
}

/*
 * A bulk push larger than one claim: pages in id order, worked by one owner at a time, claims
 * running ahead of the outcomes, and a crashed owner's push taken over from the last page it
 * recorded (its page in flight is sent again, nothing is skipped).
 */
TEST(conf_push_drain)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    enum { N = 250, LIMIT = 64 };
    char id[32];
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof(id), "D%03d", i);
        ASSERT_INT_EQ(conf_enroll(st, id, 0), ST_OK);
        ASSERT_INT_EQ(storage_enrollment_token_update(st, id, "ab", "M", 100), ST_OK);
    }
    int64_t q = -1;
    ASSERT_INT_EQ(storage_push_enqueue_filter(st, ST_PUSH_ALL, NULL, 100, &q), ST_OK);
    ASSERT_INT_EQ(q, N);
    ASSERT_INT_EQ(conf_pending(st), N);
    static struct conf_batch b1, b2, b;
    ASSERT_INT_EQ(conf_batch_claim(st, "x", 100, LIMIT, &b1), LIMIT);
    ASSERT_STR_EQ(b1.id[0], "D000");
    ASSERT_STR_EQ(b1.id[LIMIT - 1], "D063");
    ASSERT(b1.bulk[0] != 0);
    ASSERT_INT_EQ(conf_batch_claim(st, "y", 101, LIMIT, &b), 0); /* x holds the bulk push */
    /* x claims its next page before recording the first (the pusher's pipeline). */
    ASSERT_INT_EQ(conf_batch_claim(st, "x", 101, LIMIT, &b2), LIMIT);
    ASSERT_STR_EQ(b2.id[0], "D064");
    ASSERT_INT_EQ(conf_batch_done(st, "x", 102, &b1, ST_PUSH_SENT), ST_OK);
    ASSERT_INT_EQ(conf_pending(st), N - LIMIT);
    /* x dies with b2 in flight; once its lease (until 161) expires, y takes over at D064. */
    ASSERT_INT_EQ(conf_batch_claim(st, "y", 160, LIMIT, &b), 0);
    int total = 0, rounds = 0, seen[N] = {0};
    for (int64_t now = 161;; now++) {
        int n = conf_batch_claim(st, "y", now, LIMIT, &b);
        ASSERT(n >= 0 && n <= LIMIT);
        if (n == 0)
            break;
        if (rounds == 0) {
            ASSERT_STR_EQ(b.id[0], "D064");
            /* x's late outcome no longer moves the push on: y holds it. */
            ASSERT_INT_EQ(conf_batch_done(st, "x", now, &b2, ST_PUSH_SENT), ST_OK);
        }
        for (int i = 0; i < n; i++) {
            int k = atoi(b.id[i] + 1);
            ASSERT(k >= LIMIT && k < N);
            seen[k]++;
        }
        ASSERT_INT_EQ(conf_batch_done(st, "y", now, &b, ST_PUSH_SENT), ST_OK);
        total += n;
        rounds++;
    }
    ASSERT_INT_EQ(total, N - LIMIT);
    ASSERT_INT_EQ(rounds, (N - LIMIT + LIMIT - 1) / LIMIT);
    for (int i = LIMIT; i < N; i++)
        ASSERT_INT_EQ(seen[i], 1);
    ASSERT_INT_EQ(conf_pending(st), 0);
    ASSERT_INT_EQ(conf_batch_claim(st, "x", 500, LIMIT, &b), 0);
    storage_close(st);
}

static int conf_take_one(const st_push *p, void *ctx)
{
    (void)p;
    (*(int *)ctx)++;
    return 1;
}

/*
 * Bulk pushes with the outbox: outbox rows made due and passed over by the pages, coalescing
 * of waiting bulk pushes, each outcome of a bulk row, and giving back a page never sent.
 */
TEST(conf_push_bulk)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    int64_t ua = conf_user(st, "a@x.example"), uc = conf_user(st, "c@y.example");
    ASSERT(ua > 0 && uc > 0);
    const struct {
        const char *id, *token;
        int64_t user;
    } enr[] = {{"E1", "e1", ua}, {"E2", "e2", ua}, {"E3", "e3", uc},
               {"E4", NULL, ua}, {"E5", "e5", ua}, {"E6", "e6", uc}};
    for (size_t i = 0; i < sizeof(enr) / sizeof(enr[0]); i++) {
        ASSERT_INT_EQ(conf_enroll(st, enr[i].id, enr[i].user), ST_OK);
        if (enr[i].token)
            ASSERT_INT_EQ(storage_enrollment_token_update(st, enr[i].id, enr[i].token, "M", 100),
                          ST_OK);
    }
    /* E2 waits in the outbox for a retry at 500. */
    struct conf_claimed c;
    ASSERT_INT_EQ(storage_push_enqueue(st, "E2", 100), ST_OK);
    ASSERT_INT_EQ(conf_claim(st, "a", 100, &c), 1);
    ASSERT_INT_EQ(conf_push_done1(st, "a", "E2", "e2", ST_PUSH_RETRY, 100, 500, 1), ST_OK);

    int64_t q = -1;
    ASSERT_INT_EQ(storage_push_enqueue_filter(st, ST_PUSH_USER, "a@x.example", 110, &q), ST_OK);
    ASSERT_INT_EQ(q, 3); /* E1, E2, E5 */
    ASSERT_INT_EQ(storage_push_enqueue_filter(st, ST_PUSH_USER, "A@X.example", 110, &q), ST_OK);
    ASSERT_INT_EQ(q, 3);
    ASSERT_INT_EQ(conf_pending(st), 3); /* the same push, waiting: recorded once */
    /* E2's retry is due now and comes from the outbox; the page passes over it. */
    ASSERT_INT_EQ(conf_claim(st, "a", 110, &c), 3);
    ASSERT_STR_EQ(c.id[0], "E2");
    ASSERT_INT_EQ(c.attempts[0], 1);
    ASSERT_STR_EQ(c.id[1], "E1");
    ASSERT_STR_EQ(c.id[2], "E5");
    ASSERT_STR_EQ(c.token[2], "e5");
    ASSERT_INT_EQ(c.bulk[0], 0);
    int64_t bulk = c.bulk[1];
    ASSERT(bulk != 0 && c.bulk[2] == bulk);
    ASSERT_INT_EQ(conf_claim(st, "b", 111, &c), 0);
    ASSERT_INT_EQ(conf_claim(st, "a", 111, &c), 0); /* nothing after E5; its page in flight */
    st_push_result r[] = {
        {"E2", "e2", ST_PUSH_SENT, 0, 0, 0},
        {"E1", "e1", ST_PUSH_RETRY, 200, 1, bulk},
        {"E5", "e5", ST_PUSH_DEAD, 0, 0, bulk},
    };
    ASSERT_INT_EQ(storage_push_done(st, "a", 112, r, 3), ST_OK);
    ASSERT_INT_EQ(conf_dead(st, "E5"), 1);
    ASSERT_INT_EQ(conf_pending(st), 1);             /* E1's retry, now an outbox row */
    ASSERT_INT_EQ(conf_claim(st, "b", 180, &c), 0); /* the finished bulk push is deleted */
    ASSERT_INT_EQ(conf_claim(st, "b", 200, &c), 1);
    ASSERT_STR_EQ(c.id[0], "E1");
    ASSERT_INT_EQ(c.attempts[0], 1);
    ASSERT_INT_EQ(conf_push_done1(st, "b", "E1", "e1", ST_PUSH_SENT, 200, 0, 0), ST_OK);
    ASSERT_INT_EQ(conf_pending(st), 0);

    static struct conf_batch b;
    /* A push to all replaces the bulk pushes still waiting. */
    ASSERT_INT_EQ(storage_push_enqueue_filter(st, ST_PUSH_DOMAIN, "y.example", 300, &q), ST_OK);
    ASSERT_INT_EQ(q, 2);
    ASSERT_INT_EQ(storage_push_enqueue_filter(st, ST_PUSH_ALL, NULL, 300, &q), ST_OK);
    ASSERT_INT_EQ(q, 4); /* E4 has no token, E5's is dead */
    ASSERT_INT_EQ(conf_pending(st), 4);
    /* A page claimed and never sent is given back: another owner gets it at once. */
    ASSERT_INT_EQ(conf_batch_claim(st, "a", 300, 10, &b), 4);
    ASSERT_INT_EQ(conf_batch_done(st, "a", 300, &b, ST_PUSH_UNSENT), ST_OK);
    ASSERT_INT_EQ(conf_pending(st), 4);
    ASSERT_INT_EQ(conf_batch_claim(st, "b", 301, 10, &b), 4);
    ASSERT_STR_EQ(b.id[0], "E1");
    ASSERT_STR_EQ(b.id[3], "E6");
    /* A bulk push stamps the devices with pending commands for the re-push sweeper. */
    ASSERT_INT_EQ(conf_enqueue(st, "E3", "EC3", 0, 100), ST_OK);
    ASSERT_INT_EQ(conf_batch_done(st, "b", 302, &b, ST_PUSH_SENT), ST_OK);
    ASSERT_INT_EQ(conf_pending(st), 0);
    ASSERT_INT_EQ(storage_push_sweep(st, 301, 303, &q), ST_OK);
    ASSERT_INT_EQ(q, 0); /* E3 pushed at 302 */
    ASSERT_INT_EQ(storage_push_sweep(st, 303, 304, &q), ST_OK);
    ASSERT_INT_EQ(q, 1);
    ASSERT_INT_EQ(conf_claim(st, "a", 305, &c), 1); /* E3, swept */
    ASSERT_INT_EQ(conf_push_done1(st, "a", "E3", "e3", ST_PUSH_SENT, 305, 0, 0), ST_OK);

    /* A caller that stops taking rows early loses none of a bulk push's rows. */
    ASSERT_INT_EQ(storage_push_enqueue_filter(st, ST_PUSH_ALL, NULL, 400, &q), ST_OK);
    ASSERT_INT_EQ(q, 4);
    int seen = 0, claimed = 0;
    ASSERT_INT_EQ(storage_push_claim(st, "a", 400, 60, 10, conf_take_one, &seen, &claimed), ST_OK);
    ASSERT_INT_EQ(claimed, 1);
    ASSERT_INT_EQ(conf_batch_claim(st, "a", 401, 10, &b), 4);
    ASSERT_STR_EQ(b.id[0], "E1");
    storage_close(st);
}

TEST(conf_push_filter)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    int64_t ua = conf_user(st, "a@x.example"), ub = conf_user(st, "b@x.example");
    int64_t uc = conf_user(st, "c@y.example");
    ASSERT(ua > 0 && ub > 0 && uc > 0);
    const struct {
        const char *id;
        int64_t user;
        int token;
    } enr[] = {{"F1", ua, 1}, {"F2", ua, 1}, {"F3", ub, 1}, {"F4", uc, 1}, {"F5", ua, 0}};
    for (size_t i = 0; i < sizeof(enr) / sizeof(enr[0]); i++) {
        ASSERT_INT_EQ(conf_enroll(st, enr[i].id, enr[i].user), ST_OK);
        if (enr[i].token)
            ASSERT_INT_EQ(storage_enrollment_token_update(st, enr[i].id, "cc", "M", 100), ST_OK);
    }
    int64_t q = -1;
    ASSERT_INT_EQ(storage_push_enqueue_filter(st, ST_PUSH_USER, "A@x.example", 100, &q), ST_OK);
    ASSERT_INT_EQ(q, 2);
    ASSERT_INT_EQ(conf_pending(st), 2);
    ASSERT_INT_EQ(storage_push_enqueue_filter(st, ST_PUSH_USER, "nobody@x.example", 100, &q),
                  ST_OK);
    ASSERT_INT_EQ(q, 0);
    ASSERT_INT_EQ(storage_push_enqueue_filter(st, ST_PUSH_DOMAIN, "example", 100, &q), ST_OK);
    ASSERT_INT_EQ(q, 0); /* a domain is everything after '@', not a suffix */
    ASSERT_INT_EQ(storage_push_enqueue_filter(st, ST_PUSH_DOMAIN, "x.example", 100, &q), ST_OK);
    ASSERT_INT_EQ(q, 3);
    ASSERT_INT_EQ(conf_pending(st), 5); /* two bulk pushes: F1 and F2 are in both */
    ASSERT_INT_EQ(storage_push_enqueue_filter(st, ST_PUSH_ALL, NULL, 100, &q), ST_OK);
    ASSERT_INT_EQ(q, 4);
    ASSERT_INT_EQ(conf_pending(st), 4);
    struct conf_claimed c;
    ASSERT_INT_EQ(conf_claim_n(st, "a", 100, 2, &c), 2);
    ASSERT_STR_EQ(c.id[0], "F1");
    ASSERT_STR_EQ(c.id[1], "F2");
    ASSERT_INT_EQ(conf_claim_n(st, "a", 100, 8, &c), 2);
    ASSERT_STR_EQ(c.id[0], "F3");
    ASSERT_STR_EQ(c.id[1], "F4");
    storage_close(st);
}

TEST(conf_push_sweep)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    ASSERT_INT_EQ(conf_enroll(st, "S1", 0), ST_OK); /* last_seen_at 100 */
    ASSERT_INT_EQ(conf_enroll(st, "S2", 0), ST_OK);
    ASSERT_INT_EQ(storage_enrollment_token_update(st, "S1", "dd", "M", 100), ST_OK);
    ASSERT_INT_EQ(storage_enrollment_token_update(st, "S2", "ee", "M", 100), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "S1", "SC1", 0, 100), ST_OK); /* S2 has nothing pending */
    int64_t q = -1;
    ASSERT_INT_EQ(storage_push_sweep(st, 50, 150, &q), ST_OK);
    ASSERT_INT_EQ(q, 0); /* seen recently */
    ASSERT_INT_EQ(storage_push_sweep(st, 200, 300, &q), ST_OK);
    ASSERT_INT_EQ(q, 1);
    ASSERT_INT_EQ(storage_push_sweep(st, 200, 300, &q), ST_OK);
    ASSERT_INT_EQ(q, 0); /* already pending */
    struct conf_claimed c;
    ASSERT_INT_EQ(conf_claim(st, "a", 300, &c), 1);
    ASSERT_STR_EQ(c.id[0], "S1");
    ASSERT_INT_EQ(conf_push_done1(st, "a", "S1", "dd", ST_PUSH_SENT, 300, 0, 0), ST_OK);
    ASSERT_INT_EQ(storage_push_sweep(st, 250, 350, &q), ST_OK);
    ASSERT_INT_EQ(q, 0); /* pushed at 300 */
    ASSERT_INT_EQ(storage_push_sweep(st, 400, 500, &q), ST_OK);
    ASSERT_INT_EQ(q, 1);
    /* Seen again: no re-push. */
    ASSERT_INT_EQ(conf_claim(st, "a", 500, &c), 1);
    ASSERT_INT_EQ(conf_push_done1(st, "a", "S1", "dd", ST_PUSH_SENT, 500, 0, 0), ST_OK);
    ASSERT_INT_EQ(storage_enrollment_touch(st, "S1", 900), ST_OK);
    ASSERT_INT_EQ(storage_push_sweep(st, 800, 1000, &q), ST_OK);
    ASSERT_INT_EQ(q, 0);
    storage_close(st);
}

/* ---- sign-in failure counters ---- */

TEST(conf_failure_counters)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    int64_t n = -1, deleted = -1;
    ASSERT_INT_EQ(storage_failure_count(st, "k1", 900, &n), ST_OK);
    ASSERT_INT_EQ(n, 0);
    for (int i = 1; i <= 3; i++) {
        ASSERT_INT_EQ(storage_failure_add(st, "k1", 900, &n), ST_OK);
        ASSERT_INT_EQ(n, i);
    }
    ASSERT_INT_EQ(storage_failure_add(st, "k2", 900, &n), ST_OK);
    ASSERT_INT_EQ(n, 1);
    ASSERT_INT_EQ(storage_failure_add(st, "k1", 1800, &n), ST_OK);
    ASSERT_INT_EQ(n, 1); /* a new window */
    ASSERT_INT_EQ(storage_failure_count(st, "k1", 900, &n), ST_OK);
    ASSERT_INT_EQ(n, 3);
    ASSERT_INT_EQ(storage_failure_prune(st, 1800, &deleted), ST_OK);
    ASSERT_INT_EQ(deleted, 2);
    ASSERT_INT_EQ(storage_failure_count(st, "k1", 900, &n), ST_OK);
    ASSERT_INT_EQ(n, 0);
    ASSERT_INT_EQ(storage_failure_count(st, "k1", 1800, &n), ST_OK);
    ASSERT_INT_EQ(n, 1);
    storage_close(st);
}

/* ---- webhook events ---- */

struct conf_events {
    int n;
    int64_t id[8];
    char type[8][32], data[8][64];
    int attempts[8];
};

static int conf_event_cb(const st_webhook_event *e, void *ctx)
{
    struct conf_events *c = ctx;
    if (c->n < 8) {
        c->id[c->n] = e->id;
        snprintf(c->type[c->n], sizeof(c->type[0]), "%s", e->type);
        snprintf(c->data[c->n], sizeof(c->data[0]), "%s", e->data);
        c->attempts[c->n] = e->attempts;
    }
    c->n++;
    return 0;
}

static inline int conf_event_claim(storage *st, const char *owner, int64_t now, int limit,
                                   struct conf_events *c)
{
    memset(c, 0, sizeof(*c));
    int claimed = 0;
    int rc = storage_webhook_claim(st, owner, now, 60, limit, conf_event_cb, c, &claimed);
    return rc != ST_OK ? rc : claimed == c->n ? claimed : -100;
}

TEST(conf_webhook_events)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    int64_t ids[3];
    const char *data[] = {"{\"a\":1}", "{\"b\":\"\\u00e9\"}", "{}"};
    for (int i = 0; i < 3; i++) {
        ASSERT_INT_EQ(
            storage_webhook_add(st, i == 1 ? "command.result" : "audit.x", data[i], 100, &ids[i]),
            ST_OK);
        ASSERT(i == 0 || ids[i] > ids[i - 1]);
    }
    int64_t pending = -1;
    ASSERT_INT_EQ(storage_webhook_pending(st, &pending), ST_OK);
    ASSERT_INT_EQ(pending, 3);
    struct conf_events c;
    ASSERT_INT_EQ(conf_event_claim(st, "a", 99, 8, &c), 0); /* not due yet */
    ASSERT_INT_EQ(conf_event_claim(st, "a", 100, 2, &c), 2);
    ASSERT(c.id[0] == ids[0] && c.id[1] == ids[1]); /* oldest first */
    ASSERT_STR_EQ(c.type[1], "command.result");
    ASSERT_STR_EQ(c.data[1], data[1]);
    ASSERT_INT_EQ(c.attempts[0], 0);
    ASSERT_INT_EQ(conf_event_claim(st, "b", 101, 8, &c), 1); /* a's two are leased */
    ASSERT(c.id[0] == ids[2]);
    ASSERT_INT_EQ(conf_event_claim(st, "b", 101, 8, &c), 0);

    ASSERT_INT_EQ(storage_webhook_done(st, "a", ids[0], ST_WEBHOOK_DELIVERED, 0, 0), ST_OK);
    ASSERT_INT_EQ(storage_webhook_done(st, "b", ids[0], ST_WEBHOOK_DELIVERED, 0, 0), ST_ENOTFOUND);
    ASSERT_INT_EQ(storage_webhook_done(st, "a", ids[1], ST_WEBHOOK_RETRY, 200, 1), ST_OK);
    ASSERT_INT_EQ(conf_event_claim(st, "c", 150, 8, &c), 0); /* in backoff, and b's lease */
    /* At 200 the retry is due and b's lease (until 161) has expired: both, in order. */
    ASSERT_INT_EQ(conf_event_claim(st, "c", 200, 8, &c), 2);
    ASSERT(c.id[0] == ids[1] && c.id[1] == ids[2]);
    ASSERT_INT_EQ(c.attempts[0], 1);
    ASSERT_INT_EQ(storage_webhook_done(st, "b", ids[2], ST_WEBHOOK_DELIVERED, 0, 0), ST_ENOTFOUND);
    ASSERT_INT_EQ(storage_webhook_done(st, "c", ids[2], ST_WEBHOOK_DROP, 0, 0), ST_OK);
    ASSERT_INT_EQ(storage_webhook_done(st, "c", ids[1], ST_WEBHOOK_DELIVERED, 0, 0), ST_OK);
    ASSERT_INT_EQ(storage_webhook_pending(st, &pending), ST_OK);
    ASSERT_INT_EQ(pending, 0);
    /* Ids are never reused, even once every event is gone. */
    int64_t next = 0;
    ASSERT_INT_EQ(storage_webhook_add(st, "audit.y", "{}", 300, &next), ST_OK);
    ASSERT(next > ids[2]);
    storage_close(st);
}

/* Every conformance case, for the backend test's table. */
/* ---- organisation domains and federated sign-in (issue 8) ---- */

static int conf_count_domain(const st_domain *d, void *ctx)
{
    (void)d;
    (*(int *)ctx)++;
    return 0;
}

TEST(conf_domains)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    st_domain got;
    ASSERT_INT_EQ(storage_domain_get(st, "example.com", &got), ST_ENOTFOUND);
    st_domain d = {.name = "Example.COM",
                   .auth = "oidc",
                   .issuer = "https://idp.example.com",
                   .client_id = "orchard",
                   .client_secret = "s3cret",
                   .jit_users = 1,
                   .updated_at = 5};
    ASSERT_INT_EQ(storage_domain_put(st, &d), ST_OK);
    ASSERT_INT_EQ(storage_domain_get(st, "EXAMPLE.com", &got), ST_OK);
    ASSERT_STR_EQ(got.name, "example.com"); /* stored lowercase */
    ASSERT_STR_EQ(got.auth, "oidc");
    ASSERT_STR_EQ(got.client_secret, "s3cret");
    ASSERT(got.scopes == NULL && got.ca_file == NULL);
    ASSERT_INT_EQ(got.jit_users, 1);
    st_domain_cleanup(&got);
    d.auth = "local";
    d.client_secret = NULL;
    ASSERT_INT_EQ(storage_domain_put(st, &d), ST_OK); /* replaces */
    ASSERT_INT_EQ(storage_domain_get(st, "example.com", &got), ST_OK);
    ASSERT_STR_EQ(got.auth, "local");
    ASSERT(got.client_secret == NULL);
    st_domain_cleanup(&got);
    st_domain d2 = {.name = "other.org", .auth = "local", .updated_at = 6};
    ASSERT_INT_EQ(storage_domain_put(st, &d2), ST_OK);
    int n = 0;
    ASSERT_INT_EQ(storage_domain_list(st, conf_count_domain, &n), ST_OK);
    ASSERT_INT_EQ(n, 2);
    storage_close(st);
}

TEST(conf_oidc_pending)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    int64_t uid = conf_user(st, "alice@example.com");
    ASSERT(uid > 0);
    st_oidc_pending p = {.state_hash = "h1",
                         .domain = "example.com",
                         .identifier = "alice@example.com",
                         .nonce = "n1",
                         .code_verifier = "v1",
                         .created_at = 100,
                         .expires_at = 700};
    ASSERT_INT_EQ(storage_oidc_pending_add(st, &p, 100), ST_OK);
    ASSERT_INT_EQ(storage_oidc_pending_add(st, &p, 100), ST_EEXISTS);
    p.state_hash = "h2";
    ASSERT_INT_EQ(storage_oidc_pending_add(st, &p, 100), ST_OK);
    st_oidc_pending got;
    ASSERT_INT_EQ(storage_oidc_pending_take(st, "h1", 200, &got), ST_OK);
    ASSERT_STR_EQ(got.nonce, "n1");
    ASSERT_STR_EQ(got.code_verifier, "v1");
    ASSERT_STR_EQ(got.identifier, "alice@example.com");
    ASSERT_INT_EQ(got.expires_at, 700);
    ASSERT(got.reauth_ticket == NULL);
    st_oidc_pending_cleanup(&got);
    /* The re-authentication ticket of the challenge travels with the pending sign-in. */
    p.state_hash = "h5";
    p.reauth_ticket = "tkt";
    ASSERT_INT_EQ(storage_oidc_pending_add(st, &p, 100), ST_OK);
    ASSERT_INT_EQ(storage_oidc_pending_take(st, "h5", 200, &got), ST_OK);
    ASSERT_STR_EQ(got.reauth_ticket, "tkt");
    st_oidc_pending_cleanup(&got);
    p.reauth_ticket = NULL;
    /* Single use. */
    ASSERT_INT_EQ(storage_oidc_pending_take(st, "h1", 200, &got), ST_ENOTFOUND);
    /* Expired: not returned, and gone. */
    ASSERT_INT_EQ(storage_oidc_pending_take(st, "h2", 700, &got), ST_ENOTFOUND);
    ASSERT_INT_EQ(storage_oidc_pending_take(st, "h2", 100, &got), ST_ENOTFOUND);
    /* Adding prunes expired rows. */
    p.state_hash = "h3";
    ASSERT_INT_EQ(storage_oidc_pending_add(st, &p, 100), ST_OK);
    p.state_hash = "h4";
    ASSERT_INT_EQ(storage_oidc_pending_add(st, &p, 800), ST_OK);
    ASSERT_INT_EQ(storage_oidc_pending_take(st, "h3", 100, &got), ST_ENOTFOUND);

    ASSERT_INT_EQ(storage_user_set_idp_subject(st, uid, "sub-1"), ST_OK);
    st_user u;
    ASSERT_INT_EQ(storage_user_get(st, uid, &u), ST_OK);
    ASSERT_STR_EQ(u.idp_subject, "sub-1");
    st_user_cleanup(&u);
    ASSERT_INT_EQ(storage_user_set_idp_subject(st, 999999, "x"), ST_ENOTFOUND);
    storage_close(st);
}

/* ---- profile and app library ---- */

static int conf_count_profile(const st_profile *p, void *ctx)
{
    (void)p;
    (*(int *)ctx)++;
    return 0;
}

static int conf_count_app(const st_app *a, void *ctx)
{
    (void)a;
    (*(int *)ctx)++;
    return 0;
}

static int conf_count_assignment(const st_assignment *a, void *ctx)
{
    (void)a;
    (*(int *)ctx)++;
    return 0;
}

/* Sums kind * 1000 + id of the desired items, to check the exact set in one number. */
static int conf_sum_item(int kind, int64_t id, void *ctx)
{
    *(int64_t *)ctx += kind * 1000 + id;
    return 0;
}

/* A profile replaced in place: same identifier, new content, version + 1; the installed
 * state records which version a device got. */
TEST(conf_profile_replace)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    st_profile p = {.identifier = "com.example.r",
                    .platforms = "ios",
                    .body = "<plist>1</plist>",
                    .body_len = 16,
                    .created_at = 5};
    ASSERT_INT_EQ(storage_profile_add(st, &p), ST_OK);
    st_profile g = {0};
    ASSERT_INT_EQ(storage_profile_get(st, p.id, &g), ST_OK);
    ASSERT_INT_EQ(g.version, 1);
    st_profile_cleanup(&g);
    st_profile n = {.id = p.id,
                    .identifier = "com.example.r",
                    .name = "R2",
                    .platforms = "ios,macos",
                    .body = "<plist>22</plist>",
                    .body_len = 17,
                    .sign = 1};
    ASSERT_INT_EQ(storage_profile_replace(st, &n), ST_OK);
    ASSERT_INT_EQ(n.version, 2);
    ASSERT_INT_EQ(storage_profile_get(st, p.id, &g), ST_OK);
    ASSERT_INT_EQ(g.version, 2);
    ASSERT_STR_EQ(g.name, "R2");
    ASSERT_STR_EQ(g.platforms, "ios,macos");
    ASSERT_INT_EQ(g.body_len, 17);
    ASSERT(memcmp(g.body, "<plist>22</plist>", 17) == 0);
    ASSERT_INT_EQ(g.sign, 1);
    ASSERT_INT_EQ(g.created_at, 5);
    st_profile_cleanup(&g);
    st_profile other = n;
    other.identifier = "com.example.other";
    ASSERT_INT_EQ(storage_profile_replace(st, &other), ST_ECONFLICT);
    other = n;
    other.id = p.id + 1000;
    ASSERT_INT_EQ(storage_profile_replace(st, &other), ST_ENOTFOUND);
    ASSERT_INT_EQ(storage_profile_get(st, p.id, &g), ST_OK);
    ASSERT_INT_EQ(g.version, 2); /* the refusals changed nothing */
    st_profile_cleanup(&g);

    ASSERT_INT_EQ(conf_enroll(st, "R1", 0), ST_OK);
    st_item_state x = {.enrollment_id = "R1",
                       .item_kind = ST_ITEM_PROFILE,
                       .item_id = p.id,
                       .identifier = "com.example.r",
                       .state = ST_ITEM_INSTALLING,
                       .command_uuid = "C1",
                       .updated_at = 10,
                       .version = 2};
    ASSERT_INT_EQ(storage_item_state_put(st, &x, NULL), ST_OK);
    st_item_state y = {0};
    ASSERT_INT_EQ(storage_item_state_by_command(st, "C1", &y), ST_OK);
    ASSERT_INT_EQ(y.version, 2);
    st_item_state_cleanup(&y);
    x.state = ST_ITEM_INSTALLED;
    x.version = 0; /* unknown: stored as 1 */
    ASSERT_INT_EQ(storage_item_state_put(st, &x, "C1"), ST_OK);
    ASSERT_INT_EQ(storage_item_state_by_command(st, "C1", &y), ST_OK);
    ASSERT_INT_EQ(y.version, 1);
    st_item_state_cleanup(&y);
    storage_close(st);
}

/* An app replaced in place: same bundle id and App Store id, new spec, version + 1. */
TEST(conf_app_replace)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    st_app a = {.identifier = "com.example.a", .spec = "{\"v\":1}", .created_at = 5};
    ASSERT_INT_EQ(storage_app_add(st, &a), ST_OK);
    st_app g = {0};
    ASSERT_INT_EQ(storage_app_get(st, a.id, &g), ST_OK);
    ASSERT_INT_EQ(g.version, 1);
    st_app_cleanup(&g);
    st_app n = {.id = a.id, .identifier = "com.example.a", .spec = "{\"v\":2}", .sensitive = 1};
    ASSERT_INT_EQ(storage_app_replace(st, &n), ST_OK);
    ASSERT_INT_EQ(n.version, 2);
    ASSERT_INT_EQ(storage_app_get(st, a.id, &g), ST_OK);
    ASSERT_STR_EQ(g.spec, "{\"v\":2}");
    ASSERT_INT_EQ(g.sensitive, 1);
    ASSERT_INT_EQ(g.version, 2);
    st_app_cleanup(&g);
    st_app other = n;
    other.identifier = "com.example.b";
    ASSERT_INT_EQ(storage_app_replace(st, &other), ST_ECONFLICT);
    other = n;
    other.itunes_store_id = 42;
    ASSERT_INT_EQ(storage_app_replace(st, &other), ST_ECONFLICT);
    other = n;
    other.identifier = NULL;
    ASSERT_INT_EQ(storage_app_replace(st, &other), ST_ECONFLICT);
    other = n;
    other.id = a.id + 1000;
    ASSERT_INT_EQ(storage_app_replace(st, &other), ST_ENOTFOUND);
    /* An app known only by its App Store id keeps that. */
    st_app s2 = {.itunes_store_id = 7, .spec = "{}", .created_at = 6};
    ASSERT_INT_EQ(storage_app_add(st, &s2), ST_OK);
    st_app n2 = {.id = s2.id, .itunes_store_id = 7, .spec = "{\"c\":1}"};
    ASSERT_INT_EQ(storage_app_replace(st, &n2), ST_OK);
    ASSERT_INT_EQ(n2.version, 2);
    storage_close(st);
}

TEST(conf_library_items)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    st_profile p = {.identifier = "com.example.p",
                    .name = "P",
                    .platforms = "ios,macos",
                    .body = "<plist/>",
                    .body_len = 8,
                    .sensitive = 1,
                    .sign = 1,
                    .created_at = 5};
    ASSERT_INT_EQ(storage_profile_add(st, &p), ST_OK);
    ASSERT(p.id > 0);
    st_profile dup = p;
    ASSERT_INT_EQ(storage_profile_add(st, &dup), ST_EEXISTS);
    st_profile g = {0};
    ASSERT_INT_EQ(storage_profile_get(st, p.id, &g), ST_OK);
    ASSERT_STR_EQ(g.identifier, "com.example.p");
    ASSERT_STR_EQ(g.platforms, "ios,macos");
    ASSERT_INT_EQ(g.body_len, 8);
    ASSERT(memcmp(g.body, "<plist/>", 8) == 0);
    ASSERT_INT_EQ(g.sensitive, 1);
    ASSERT_INT_EQ(g.sign, 1);
    st_profile_cleanup(&g);
    st_app a = {.identifier = "com.example.app",
                .itunes_store_id = 42,
                .spec = "{\"bundle_id\":\"com.example.app\"}",
                .created_at = 6};
    ASSERT_INT_EQ(storage_app_add(st, &a), ST_OK);
    st_app ga = {0};
    ASSERT_INT_EQ(storage_app_get(st, a.id, &ga), ST_OK);
    ASSERT_STR_EQ(ga.identifier, "com.example.app");
    ASSERT_INT_EQ(ga.itunes_store_id, 42);
    ASSERT(ga.manifest_url == NULL);
    st_app_cleanup(&ga);
    int n = 0;
    ASSERT_INT_EQ(storage_profile_list(st, conf_count_profile, &n), ST_OK);
    ASSERT_INT_EQ(n, 1);
    n = 0;
    ASSERT_INT_EQ(storage_app_list(st, conf_count_app, &n), ST_OK);
    ASSERT_INT_EQ(n, 1);
    /* Deleting an item deletes its assignments. */
    st_assignment as = {.item_kind = ST_ITEM_PROFILE,
                        .item_id = p.id,
                        .target_type = ST_TARGET_USER,
                        .target = "a@example.com",
                        .created_at = 7};
    ASSERT_INT_EQ(storage_assignment_add(st, &as), ST_OK);
    ASSERT_INT_EQ(storage_profile_delete(st, p.id), ST_OK);
    ASSERT_INT_EQ(storage_profile_delete(st, p.id), ST_ENOTFOUND);
    ASSERT_INT_EQ(storage_profile_get(st, p.id, &g), ST_ENOTFOUND);
    st_assignment ga2 = {0};
    ASSERT_INT_EQ(storage_assignment_get(st, as.id, &ga2), ST_ENOTFOUND);
    ASSERT_INT_EQ(storage_app_delete(st, a.id), ST_OK);
    storage_close(st);
}

TEST(conf_library_assignments)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    st_profile p = {.identifier = "com.example.p", .platforms = "ios", .body = "x", .body_len = 1};
    st_app a = {.identifier = "com.example.app", .spec = "{}"};
    ASSERT_INT_EQ(storage_profile_add(st, &p), ST_OK);
    ASSERT_INT_EQ(storage_app_add(st, &a), ST_OK);
    st_assignment x = {.item_kind = ST_ITEM_PROFILE,
                       .item_id = p.id,
                       .target_type = ST_TARGET_USER,
                       .target = "a@example.com"};
    ASSERT_INT_EQ(storage_assignment_add(st, &x), ST_OK);
    st_assignment dup = x;
    ASSERT_INT_EQ(storage_assignment_add(st, &dup), ST_EEXISTS);
    st_assignment y = {.item_kind = ST_ITEM_APP,
                       .item_id = a.id,
                       .target_type = ST_TARGET_DOMAIN,
                       .target = "example.com"};
    ASSERT_INT_EQ(storage_assignment_add(st, &y), ST_OK);
    st_assignment z = {.item_kind = ST_ITEM_PROFILE,
                       .item_id = p.id,
                       .target_type = ST_TARGET_ENROLLMENT,
                       .target = "E1"};
    ASSERT_INT_EQ(storage_assignment_add(st, &z), ST_OK);
    st_assignment missing = {.item_kind = ST_ITEM_APP,
                             .item_id = a.id + 100,
                             .target_type = ST_TARGET_USER,
                             .target = "a@example.com"};
    ASSERT_INT_EQ(storage_assignment_add(st, &missing), ST_ENOTFOUND);
    int n = 0;
    ASSERT_INT_EQ(storage_assignment_list(st, conf_count_assignment, &n), ST_OK);
    ASSERT_INT_EQ(n, 3);
    /* Desired items: distinct over user, domain and enrollment. */
    int64_t sum = 0;
    ASSERT_INT_EQ(
        storage_assignment_items(st, "a@example.com", "example.com", "E1", conf_sum_item, &sum),
        ST_OK);
    ASSERT_INT_EQ(sum, 1000 + p.id + 2000 + a.id);
    sum = 0;
    ASSERT_INT_EQ(
        storage_assignment_items(st, "b@example.com", "example.org", "E2", conf_sum_item, &sum),
        ST_OK);
    ASSERT_INT_EQ(sum, 0);
    sum = 0;
    ASSERT_INT_EQ(storage_assignment_items(st, NULL, "example.com", NULL, conf_sum_item, &sum),
                  ST_OK);
    ASSERT_INT_EQ(sum, 2000 + a.id);
    ASSERT_INT_EQ(storage_assignment_delete(st, y.id), ST_OK);
    ASSERT_INT_EQ(storage_assignment_delete(st, y.id), ST_ENOTFOUND);
    storage_close(st);
}

static int conf_count_state(const st_item_state *s, void *ctx)
{
    (void)s;
    (*(int *)ctx)++;
    return 0;
}

static int conf_count_id(const char *id, void *ctx)
{
    (void)id;
    (*(int *)ctx)++;
    return 0;
}

TEST(conf_library_state)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    st_item_state s = {.enrollment_id = "E1",
                       .item_kind = ST_ITEM_PROFILE,
                       .item_id = 7,
                       .identifier = "com.example.p",
                       .state = ST_ITEM_INSTALLING,
                       .command_uuid = "U1",
                       .sensitive = 1,
                       .updated_at = 3};
    ASSERT_INT_EQ(storage_item_state_put(st, &s, NULL), ST_OK);
    /* Compare-and-set: a writer that read no command loses against U1. */
    st_item_state other = s;
    other.command_uuid = "U2";
    ASSERT_INT_EQ(storage_item_state_put(st, &other, NULL), ST_ECONFLICT);
    ASSERT_INT_EQ(storage_item_state_put(st, &other, "U9"), ST_ECONFLICT);
    st_item_state g = {0};
    ASSERT_INT_EQ(storage_item_state_by_command(st, "U1", &g), ST_OK);
    ASSERT_STR_EQ(g.identifier, "com.example.p");
    ASSERT_INT_EQ(g.state, ST_ITEM_INSTALLING);
    ASSERT_INT_EQ(g.sensitive, 1);
    st_item_state_cleanup(&g);
    /* The writer that read U1 wins. */
    st_item_state done = s;
    done.state = ST_ITEM_INSTALLED;
    done.detail = "Managed";
    ASSERT_INT_EQ(storage_item_state_put(st, &done, "U1"), ST_OK);
    ASSERT_INT_EQ(storage_item_state_by_command(st, "U1", &g), ST_OK);
    ASSERT_INT_EQ(g.state, ST_ITEM_INSTALLED);
    ASSERT_STR_EQ(g.detail, "Managed");
    st_item_state_cleanup(&g);
    ASSERT_INT_EQ(storage_item_state_by_command(st, "U2", &g), ST_ENOTFOUND);
    /* A row without a command (learned from a list) is claimed by expect NULL. */
    st_item_state learned = {.enrollment_id = "E2",
                             .item_kind = ST_ITEM_APP,
                             .item_id = 7,
                             .identifier = "com.example.app",
                             .state = ST_ITEM_INSTALLED};
    ASSERT_INT_EQ(storage_item_state_put(st, &learned, NULL), ST_OK);
    learned.command_uuid = "U3";
    learned.state = ST_ITEM_REMOVING;
    ASSERT_INT_EQ(storage_item_state_put(st, &learned, NULL), ST_OK);
    int n = 0;
    ASSERT_INT_EQ(storage_item_state_list(st, "E1", conf_count_state, &n), ST_OK);
    ASSERT_INT_EQ(n, 1);
    n = 0;
    ASSERT_INT_EQ(storage_item_state_enrollments(st, ST_ITEM_PROFILE, 7, conf_count_id, &n), ST_OK);
    ASSERT_INT_EQ(n, 1);
    ASSERT_INT_EQ(storage_item_state_delete(st, "E1", ST_ITEM_PROFILE, 7), ST_OK);
    ASSERT_INT_EQ(storage_item_state_clear(st, "E2"), ST_OK);
    n = 0;
    ASSERT_INT_EQ(storage_item_state_list(st, "E2", conf_count_state, &n), ST_OK);
    ASSERT_INT_EQ(n, 0);
    storage_close(st);
}

/* ---- retention of what grows with traffic (issue 13) ---- */

static int conf_session_at(storage *st, const char *token_hash, int64_t user_id,
                           const char *enrollment_id, int64_t issued_at)
{
    st_session s = {0};
    s.token_hash = (char *)token_hash;
    s.user_id = user_id;
    s.method = (char *)"local";
    s.issued_at = issued_at;
    s.enrollment_id = (char *)enrollment_id;
    return storage_session_add(st, &s);
}

TEST(conf_audit_prune)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    char action[32];
    /* Out of id order on purpose: age decides, not insertion order. */
    for (int i = 1; i <= 50; i++) {
        snprintf(action, sizeof(action), "a%d", i);
        st_audit a = {0};
        a.at = i % 2 ? 1000 + i : i;
        a.actor = "system";
        a.action = action;
        a.target = "E1";
        ASSERT_INT_EQ(storage_audit_add(st, &a), ST_OK);
    }
    int64_t deleted = -1, n = -1;
    /* 25 rows are older than 100: at most 10 per call, the oldest first. */
    ASSERT_INT_EQ(storage_audit_prune(st, 100, 10, &deleted), ST_OK);
    ASSERT_INT_EQ(deleted, 10);
    ASSERT_INT_EQ(storage_audit_count(st, "a2", "E1", 0, &n), ST_OK);
    ASSERT_INT_EQ(n, 0); /* at = 2: among the oldest */
    ASSERT_INT_EQ(storage_audit_count(st, "a50", "E1", 0, &n), ST_OK);
    ASSERT_INT_EQ(n, 1); /* at = 50: not yet */
    ASSERT_INT_EQ(storage_audit_prune(st, 100, 10, &deleted), ST_OK);
    ASSERT_INT_EQ(deleted, 10);
    ASSERT_INT_EQ(storage_audit_prune(st, 100, 10, &deleted), ST_OK);
    ASSERT_INT_EQ(deleted, 5);
    ASSERT_INT_EQ(storage_audit_prune(st, 100, 10, &deleted), ST_OK);
    ASSERT_INT_EQ(deleted, 0);
    /* The newer half is untouched; the boundary is exclusive (at < before). */
    struct conf_audit_state all = {0, 0, 1, 0, 0};
    ASSERT_INT_EQ(storage_audit_list(st, 0, 0, conf_audit_cb, &all), ST_OK);
    ASSERT_INT_EQ(all.n, 25);
    ASSERT_INT_EQ(storage_audit_prune(st, 1001, 100, &deleted), ST_OK);
    ASSERT_INT_EQ(deleted, 0);
    ASSERT_INT_EQ(storage_audit_prune(st, 1002, 100, &deleted), ST_OK);
    ASSERT_INT_EQ(deleted, 1); /* at = 1001 */
    storage_close(st);
}

TEST(conf_challenge_and_session_prune)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    int64_t uid = conf_user(st, "p@example.com");
    ASSERT(uid > 0);
    ASSERT_INT_EQ(conf_enroll(st, "E1", uid), ST_OK);
    ASSERT_INT_EQ(conf_session_at(st, "old-unbound", uid, NULL, 100), ST_OK);
    ASSERT_INT_EQ(conf_session_at(st, "new-unbound", uid, NULL, 900), ST_OK);
    ASSERT_INT_EQ(conf_session_at(st, "old-bound", uid, "E1", 100), ST_OK);
    ASSERT_INT_EQ(storage_session_revoke(st, "old-bound", 150), ST_OK);
    int64_t deleted = -1;
    ASSERT_INT_EQ(storage_session_prune_unbound(st, 500, &deleted), ST_OK);
    ASSERT_INT_EQ(deleted, 1);
    st_session s;
    ASSERT_INT_EQ(storage_session_get(st, "old-unbound", &s), ST_ENOTFOUND);
    /* A bound token stays even revoked: CheckOut and the failure policy still need it. */
    ASSERT_INT_EQ(storage_session_get(st, "old-bound", &s), ST_OK);
    st_session_cleanup(&s);
    ASSERT_INT_EQ(storage_session_get(st, "new-unbound", &s), ST_OK);
    st_session_cleanup(&s);

    ASSERT_INT_EQ(storage_challenge_add(st, "c-old", uid, "new-unbound", 200), ST_OK);
    ASSERT_INT_EQ(storage_challenge_add(st, "c-used", uid, "new-unbound", 300), ST_OK);
    ASSERT_INT_EQ(storage_challenge_add(st, "c-live", uid, "new-unbound", 2000), ST_OK);
    int64_t got_uid = 0;
    char *sess = NULL;
    ASSERT_INT_EQ(storage_challenge_consume(st, "c-used", 250, &got_uid, &sess), ST_OK);
    free(sess);
    sess = NULL;
    ASSERT_INT_EQ(storage_challenge_prune(st, 1000, &deleted), ST_OK);
    ASSERT_INT_EQ(deleted, 2);
    ASSERT_INT_EQ(storage_challenge_consume(st, "c-old", 150, &got_uid, &sess), ST_ENOTFOUND);
    ASSERT_INT_EQ(storage_challenge_consume(st, "c-live", 1500, &got_uid, &sess), ST_OK);
    ASSERT_STR_EQ(sess, "new-unbound");
    free(sess);
    storage_close(st);
}

TEST(conf_server_secrets)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    char *v = NULL;
    ASSERT_INT_EQ(storage_secret_get_or_add(st, "reauth_ticket_key", "first", 10, &v), ST_OK);
    ASSERT_STR_EQ(v, "first");
    free(v);
    v = NULL;
    /* Generated once: a later candidate never replaces the stored value. */
    ASSERT_INT_EQ(storage_secret_get_or_add(st, "reauth_ticket_key", "second", 20, &v), ST_OK);
    ASSERT_STR_EQ(v, "first");
    free(v);
    v = NULL;
    ASSERT_INT_EQ(storage_secret_get_or_add(st, "other", "x", 20, &v), ST_OK);
    ASSERT_STR_EQ(v, "x");
    free(v);
    v = NULL;
    storage_close(st);
    st = conf_backend->reopen();
    ASSERT_NOT_NULL(st);
    ASSERT_INT_EQ(storage_secret_get_or_add(st, "reauth_ticket_key", "third", 30, &v), ST_OK);
    ASSERT_STR_EQ(v, "first");
    free(v);
    v = NULL;
    storage_fail_after(st, 1);
    ASSERT_INT_EQ(storage_secret_get_or_add(st, "reauth_ticket_key", "fourth", 40, &v), ST_ERROR);
    ASSERT(v == NULL);
    storage_close(st);
}

/* ---- transactions spanning calls (storage_tx_*) ---- */

static inline int conf_has_enrollment(storage *st, const char *id)
{
    st_enrollment e;
    int rc = storage_enrollment_get(st, id, &e);
    st_enrollment_cleanup(&e);
    return rc == ST_OK;
}

TEST(conf_tx_batches)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    int64_t u = conf_user(st, "tx@x.example");
    ASSERT(u > 0);
    /* Rolled back: nothing of the batch stays, operations with their own transaction included. */
    ASSERT_INT_EQ(storage_tx_begin(st), ST_OK);
    ASSERT_INT_EQ(storage_tx_begin(st), ST_ECONFLICT); /* one level */
    ASSERT_INT_EQ(conf_enroll(st, "T1", u), ST_OK);    /* its own transaction: a savepoint */
    ASSERT_INT_EQ(conf_enqueue(st, "T1", "TC1", 0, 100), ST_OK);
    ASSERT_INT_EQ(storage_push_enqueue(st, "T1", 100), ST_ECONFLICT); /* no token: no failure */
    ASSERT_INT_EQ(conf_count(st, "T1"), 1);                           /* visible inside */
    storage_tx_rollback(st);
    ASSERT(!conf_has_enrollment(st, "T1"));
    ASSERT_INT_EQ(conf_status(st, "TC1"), ST_ENOTFOUND);
    storage_tx_rollback(st); /* nothing open: harmless */

    /* Committed: all of it. */
    ASSERT_INT_EQ(storage_tx_begin(st), ST_OK);
    ASSERT_INT_EQ(conf_enroll(st, "T1", u), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "T1", "TC1", 0, 100), ST_OK);
    ASSERT_INT_EQ(storage_tx_commit(st), ST_OK);
    ASSERT(conf_has_enrollment(st, "T1"));
    ASSERT_INT_EQ(conf_status(st, "TC1"), ST_CMD_QUEUED);
    ASSERT_INT_EQ(storage_tx_commit(st), ST_ERROR); /* nothing open */

    /* An operation failing inside its own savepoint undoes only itself: its first statement
     * after the SAVEPOINT fails, the batch goes on and commits. */
    if (storage_fail_step_after(st, 0) == 0) {
        ASSERT_INT_EQ(storage_tx_begin(st), ST_OK);
        ASSERT_INT_EQ(conf_enqueue(st, "T1", "TC2", 0, 101), ST_OK);
        storage_fail_step_after(st, 2);
        ASSERT_INT_EQ(conf_enroll(st, "T2", u), ST_ERROR);
        storage_fail_step_after(st, 0);
        ASSERT_INT_EQ(conf_enroll(st, "T3", u), ST_OK);
        ASSERT_INT_EQ(storage_tx_commit(st), ST_OK);
        ASSERT(!conf_has_enrollment(st, "T2"));
        ASSERT(conf_has_enrollment(st, "T3"));
        ASSERT_INT_EQ(conf_status(st, "TC2"), ST_CMD_QUEUED);
    }

    /* A statement failing outside any savepoint breaks the batch: later calls fail, the commit
     * rolls everything back (a duplicate user is one statement). */
    ASSERT_INT_EQ(storage_tx_begin(st), ST_OK);
    ASSERT_INT_EQ(conf_enroll(st, "T4", u), ST_OK);
    st_user dup = {0};
    dup.email = (char *)"tx@x.example";
    dup.created_at = 1;
    ASSERT_INT_EQ(storage_user_add(st, &dup), ST_EEXISTS);
    ASSERT_INT_EQ(conf_enqueue(st, "T1", "TC3", 0, 102), ST_ERROR);
    ASSERT_INT_EQ(storage_tx_commit(st), ST_ERROR);
    ASSERT(!conf_has_enrollment(st, "T4"));
    ASSERT_INT_EQ(conf_status(st, "TC3"), ST_ENOTFOUND);
    /* ... and the connection is usable again afterwards, outside any transaction. */
    ASSERT_INT_EQ(conf_enqueue(st, "T1", "TC3", 0, 102), ST_OK);

    /* A fault on the commit ends the transaction too. */
    ASSERT_INT_EQ(storage_tx_begin(st), ST_OK);
    ASSERT_INT_EQ(conf_enroll(st, "T5", u), ST_OK);
    storage_fail_after(st, 1);
    ASSERT_INT_EQ(storage_tx_commit(st), ST_ERROR);
    ASSERT(!conf_has_enrollment(st, "T5"));
    ASSERT_INT_EQ(storage_tx_begin(st), ST_OK);
    storage_tx_rollback(st);
    storage_close(st);
}

/* ---- durable jobs ---- */

struct conf_page {
    int n;
    char ids[8][32];
};

static inline int conf_page_cb(const st_enrollment *e, void *ctx)
{
    struct conf_page *p = ctx;
    /* Whole records: the page hands the reconciler what it would otherwise look up. */
    if (e->topic == NULL || e->token_updated_at == 0)
        return 0;
    if (p->n < 8)
        snprintf(p->ids[p->n], sizeof(p->ids[0]), "%s", e->id);
    p->n++;
    return 0;
}

static inline int conf_job_page(storage *st, const st_job *j, const char *after, int limit,
                                struct conf_page *p)
{
    int n = -1;
    memset(p, 0, sizeof(*p));
    int rc = storage_job_page(st, j, after, limit, conf_page_cb, p, &n);
    return rc == ST_OK && n == p->n ? n : -1;
}

static inline int64_t conf_job_add(storage *st, int scope, const char *value, int kind,
                                   int64_t item, int64_t now)
{
    st_job j = {0};
    j.kind = (char *)"reconcile";
    j.scope = scope;
    j.value = (char *)value;
    j.item_kind = kind;
    j.item_id = item;
    j.origin = (char *)"test";
    j.created_at = now;
    return storage_job_add(st, &j) == ST_OK ? j.id : -1;
}

static inline int conf_job_progress(storage *st, const char *owner, int64_t id, const char *cursor,
                                    int64_t total, int64_t done, int64_t now)
{
    st_job_progress p = {id, cursor, total, done, 0, done, 0};
    return storage_job_progress(st, owner, now, 60, &p);
}

TEST(conf_jobs)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    int64_t ua = conf_user(st, "a@x.example"), ub = conf_user(st, "b@x.example"),
            uc = conf_user(st, "c@y.example"), ud = conf_user(st, "d@sub.x.example");
    ASSERT(ua > 0 && ub > 0 && uc > 0 && ud > 0);
    const struct {
        const char *id;
        int64_t user;
        int complete, unenrolled;
    } enr[] = {{"E1", ua, 1, 0}, {"E2", ua, 1, 0}, {"E3", uc, 1, 0}, {"E4", ua, 1, 1},
               {"E5", ub, 1, 0}, {"E6", ua, 0, 0}, {"E7", ud, 1, 0}};
    for (size_t i = 0; i < sizeof(enr) / sizeof(enr[0]); i++) {
        ASSERT_INT_EQ(conf_enroll(st, enr[i].id, enr[i].user), ST_OK);
        if (enr[i].complete)
            ASSERT_INT_EQ(storage_enrollment_token_update(st, enr[i].id, "ab", "M", 100), ST_OK);
        if (enr[i].unenrolled)
            ASSERT_INT_EQ(storage_enrollment_unenroll(st, enr[i].id, 100), ST_OK);
    }
    /* Added queued; the same filter again while it has not started is the same job. */
    int64_t j1 = conf_job_add(st, ST_JOB_USER, "a@x.example", 0, 0, 100);
    ASSERT(j1 > 0);
    ASSERT_INT_EQ(conf_job_add(st, ST_JOB_USER, "a@x.example", 0, 0, 101), j1);
    int64_t j2 = conf_job_add(st, ST_JOB_DOMAIN, "x.example", 0, 0, 102);
    ASSERT(j2 > 0 && j2 != j1);
    st_job j = {0};
    ASSERT_INT_EQ(storage_job_get(st, j1, &j), ST_OK);
    ASSERT_STR_EQ(j.kind, "reconcile");
    ASSERT_STR_EQ(j.value, "a@x.example");
    ASSERT_STR_EQ(j.origin, "test");
    ASSERT_STR_EQ(j.cursor, "");
    ASSERT_INT_EQ(j.state, ST_JOB_QUEUED);
    ASSERT_INT_EQ(j.total, -1);
    ASSERT_INT_EQ(j.created_at, 100);
    ASSERT_INT_EQ(j.started_at, 0);
    ASSERT(j.claimed_by == NULL);
    st_job_cleanup(&j);
    ASSERT_INT_EQ(storage_job_get(st, 999999, &j), ST_ENOTFOUND);

    /* Pages and counts: complete, enrolled, matching; in id order. */
    struct conf_page p;
    int64_t n = -1;
    st_job f = {0};
    f.scope = ST_JOB_USER;
    f.value = (char *)"a@x.example";
    ASSERT_INT_EQ(storage_job_count(st, &f, &n), ST_OK);
    ASSERT_INT_EQ(n, 2); /* not E4 (unenrolled), not E6 (no TokenUpdate) */
    ASSERT_INT_EQ(conf_job_page(st, &f, "", 10, &p), 2);
    ASSERT_STR_EQ(p.ids[0], "E1");
    ASSERT_STR_EQ(p.ids[1], "E2");
    f.scope = ST_JOB_DOMAIN;
    f.value = (char *)"x.example";
    ASSERT_INT_EQ(storage_job_count(st, &f, &n), ST_OK);
    ASSERT_INT_EQ(n, 3); /* E1, E2, E5; not d@sub.x.example's E7 */
    ASSERT_INT_EQ(conf_job_page(st, &f, "", 2, &p), 2);
    ASSERT_STR_EQ(p.ids[1], "E2");
    ASSERT_INT_EQ(conf_job_page(st, &f, "E2", 2, &p), 1);
    ASSERT_STR_EQ(p.ids[0], "E5");
    ASSERT_INT_EQ(conf_job_page(st, &f, "E5", 2, &p), 0);
    f.scope = ST_JOB_ENROLLMENT;
    f.value = (char *)"E3";
    ASSERT_INT_EQ(conf_job_page(st, &f, "", 5, &p), 1);
    ASSERT_INT_EQ(conf_job_page(st, &f, "E3", 5, &p), 0);
    f.value = (char *)"E6"; /* incomplete */
    ASSERT_INT_EQ(conf_job_page(st, &f, "", 5, &p), 0);
    ASSERT_INT_EQ(storage_job_count(st, &f, &n), ST_OK);
    ASSERT_INT_EQ(n, 0);
    /* An item's enrollments: those with state for it, live ones only. */
    const char *holders[] = {"E3", "E1", "E4"};
    for (size_t i = 0; i < 3; i++) {
        st_item_state s = {0};
        s.enrollment_id = (char *)holders[i];
        s.item_kind = ST_ITEM_PROFILE;
        s.item_id = 7;
        s.identifier = (char *)"com.example.p";
        s.state = ST_ITEM_INSTALLED;
        s.updated_at = 100;
        ASSERT_INT_EQ(storage_item_state_put(st, &s, NULL), ST_OK);
    }
    f.scope = ST_JOB_ITEM;
    f.value = NULL;
    f.item_kind = ST_ITEM_PROFILE;
    f.item_id = 7;
    ASSERT_INT_EQ(conf_job_page(st, &f, "", 10, &p), 2);
    ASSERT_STR_EQ(p.ids[0], "E1");
    ASSERT_STR_EQ(p.ids[1], "E3");
    ASSERT_INT_EQ(storage_job_count(st, &f, &n), ST_OK);
    ASSERT_INT_EQ(n, 2);
    f.item_id = 8;
    ASSERT_INT_EQ(conf_job_page(st, &f, "", 10, &p), 0);

    /* Claims: oldest first, one holder at a time, its own again. */
    ASSERT_INT_EQ(storage_job_claim(st, "a", 200, 60, &j), ST_OK);
    ASSERT_INT_EQ(j.id, j1);
    ASSERT_INT_EQ(j.state, ST_JOB_RUNNING);
    ASSERT_INT_EQ(j.started_at, 200);
    ASSERT_STR_EQ(j.claimed_by, "a");
    ASSERT_INT_EQ(j.claimed_until, 260);
    st_job_cleanup(&j);
    ASSERT_INT_EQ(storage_job_claim(st, "b", 201, 60, &j), ST_OK);
    ASSERT_INT_EQ(j.id, j2);
    st_job_cleanup(&j);
    ASSERT_INT_EQ(storage_job_claim(st, "c", 202, 60, &j), ST_ENOTFOUND);
    ASSERT_INT_EQ(storage_job_claim(st, "a", 203, 60, &j), ST_OK);
    ASSERT_INT_EQ(j.id, j1);
    st_job_cleanup(&j);
    /* A started job is not merged with a new identical one. */
    int64_t j3 = conf_job_add(st, ST_JOB_USER, "a@x.example", 0, 0, 204);
    ASSERT(j3 > j2);

    /* Progress only by the holder; it renews the lease and adds up. */
    ASSERT_INT_EQ(conf_job_progress(st, "b", j1, "E1", 2, 1, 210), ST_ECONFLICT);
    ASSERT_INT_EQ(conf_job_progress(st, "a", j1, "E1", 2, 1, 210), ST_OK);
    ASSERT_INT_EQ(storage_job_get(st, j1, &j), ST_OK);
    ASSERT_STR_EQ(j.cursor, "E1");
    ASSERT_INT_EQ(j.total, 2);
    ASSERT_INT_EQ(j.done, 1);
    ASSERT_INT_EQ(j.installs, 1);
    ASSERT_INT_EQ(j.claimed_until, 270);
    ASSERT_INT_EQ(j.updated_at, 210);
    st_job_cleanup(&j);
    /* Progress inside a rolled-back batch is not recorded. */
    ASSERT_INT_EQ(storage_tx_begin(st), ST_OK);
    ASSERT_INT_EQ(conf_job_progress(st, "a", j1, "E2", -1, 1, 215), ST_OK);
    storage_tx_rollback(st);
    ASSERT_INT_EQ(storage_job_get(st, j1, &j), ST_OK);
    ASSERT_STR_EQ(j.cursor, "E1");
    ASSERT_INT_EQ(j.total, 2); /* -1 keeps it */
    ASSERT_INT_EQ(j.done, 1);
    st_job_cleanup(&j);

    /* The holder crashed: once the lease expires another instance takes over where it was. */
    ASSERT_INT_EQ(conf_job_progress(st, "b", j2, "", -1, 0, 230), ST_OK); /* b's is renewed */
    ASSERT_INT_EQ(storage_job_claim(st, "c", 269, 60, &j), ST_OK);
    ASSERT_INT_EQ(j.id, j3); /* j1 is still a's; j2 b's */
    st_job_cleanup(&j);
    ASSERT_INT_EQ(storage_job_release(st, "c", j3), ST_OK);
    ASSERT_INT_EQ(storage_job_claim(st, "c", 271, 60, &j), ST_OK);
    ASSERT_INT_EQ(j.id, j1);
    ASSERT_STR_EQ(j.cursor, "E1");
    ASSERT_INT_EQ(j.started_at, 200);
    st_job_cleanup(&j);
    ASSERT_INT_EQ(conf_job_progress(st, "a", j1, "E2", -1, 1, 272), ST_ECONFLICT);
    ASSERT_INT_EQ(storage_job_finish(st, "a", j1, ST_JOB_DONE, 272), ST_ECONFLICT);
    /* Given back (an instance stopping): free at once. */
    ASSERT_INT_EQ(storage_job_release(st, "c", j1), ST_OK);
    ASSERT_INT_EQ(storage_job_release(st, "c", j1), ST_ECONFLICT);
    ASSERT_INT_EQ(storage_job_claim(st, "d", 273, 60, &j), ST_OK);
    ASSERT_INT_EQ(j.id, j1);
    st_job_cleanup(&j);
    ASSERT_INT_EQ(conf_job_progress(st, "d", j1, "E2", -1, 1, 274), ST_OK);
    ASSERT_INT_EQ(storage_job_finish(st, "d", j1, ST_JOB_DONE, 275), ST_OK);
    ASSERT_INT_EQ(storage_job_get(st, j1, &j), ST_OK);
    ASSERT_INT_EQ(j.state, ST_JOB_DONE);
    ASSERT_INT_EQ(j.done, 2);
    ASSERT_INT_EQ(j.total, 2);
    ASSERT_INT_EQ(j.finished_at, 275);
    ASSERT(j.claimed_by == NULL);
    st_job_cleanup(&j);
    ASSERT_INT_EQ(conf_job_progress(st, "d", j1, "E3", -1, 1, 276), ST_ECONFLICT); /* finished */
    /* A job that found more than it counted ends with total = done. */
    ASSERT_INT_EQ(storage_job_claim(st, "b", 280, 60, &j), ST_OK);
    ASSERT_INT_EQ(j.id, j2);
    st_job_cleanup(&j);
    ASSERT_INT_EQ(conf_job_progress(st, "b", j2, "E5", 1, 3, 281), ST_OK);
    ASSERT_INT_EQ(storage_job_finish(st, "b", j2, ST_JOB_FAILED, 282), ST_OK);
    ASSERT_INT_EQ(storage_job_get(st, j2, &j), ST_OK);
    ASSERT_INT_EQ(j.state, ST_JOB_FAILED);
    ASSERT_INT_EQ(j.total, 3);
    st_job_cleanup(&j);

    /* Retention deletes finished jobs only. */
    int64_t deleted = -1;
    ASSERT_INT_EQ(storage_job_prune(st, 276, &deleted), ST_OK);
    ASSERT_INT_EQ(deleted, 1); /* j1 */
    ASSERT_INT_EQ(storage_job_get(st, j1, &j), ST_ENOTFOUND);
    ASSERT_INT_EQ(storage_job_prune(st, 10000, &deleted), ST_OK);
    ASSERT_INT_EQ(deleted, 1); /* j2; j3 is not finished */
    ASSERT_INT_EQ(storage_job_get(st, j3, &j), ST_OK);
    st_job_cleanup(&j);
    /* Ids are not reused after the newest job is deleted. */
    int64_t j4 = conf_job_add(st, ST_JOB_ENROLLMENT, "E1", 0, 0, 300);
    ASSERT(j4 > j3);
    storage_close(st);
}

#define CONFORMANCE_TESTS                                                                          \
    TEST_ENTRY(conf_lifecycle), TEST_ENTRY(conf_reopen_keeps_data_and_version),                    \
        TEST_ENTRY(conf_users), TEST_ENTRY(conf_user_list), TEST_ENTRY(conf_apikeys),              \
        TEST_ENTRY(conf_sessions), TEST_ENTRY(conf_session_bind), TEST_ENTRY(conf_session_revoke), \
        TEST_ENTRY(conf_challenges), TEST_ENTRY(conf_certs), TEST_ENTRY(conf_enrollment_insert),   \
        TEST_ENTRY(conf_enrollment_setters), TEST_ENTRY(conf_enrollment_reauthenticate_resets),    \
        TEST_ENTRY(conf_enrollment_unenroll), TEST_ENTRY(conf_enrollment_list),                    \
        TEST_ENTRY(conf_queue_idle_empty), TEST_ENTRY(conf_queue_fifo_ack),                        \
        TEST_ENTRY(conf_queue_notnow), TEST_ENTRY(conf_queue_resend_unanswered),                   \
        TEST_ENTRY(conf_queue_priority), TEST_ENTRY(conf_queue_duplicate_report),                  \
        TEST_ENTRY(conf_queue_enqueue_errors), TEST_ENTRY(conf_command_get),                       \
        TEST_ENTRY(conf_command_list), TEST_ENTRY(conf_queue_clear_count),                         \
        TEST_ENTRY(conf_history_prune), TEST_ENTRY(conf_audit), TEST_ENTRY(conf_fault_wrapper),    \
        TEST_ENTRY(conf_fault_steps), TEST_ENTRY(conf_concurrency), TEST_ENTRY(conf_push_outbox),  \
        TEST_ENTRY(conf_push_filter), TEST_ENTRY(conf_push_sweep), TEST_ENTRY(conf_push_batch),    \
        TEST_ENTRY(conf_push_drain), TEST_ENTRY(conf_push_bulk), TEST_ENTRY(conf_webhook_events),  \
        TEST_ENTRY(conf_profile_replace), TEST_ENTRY(conf_app_replace),                            \
        TEST_ENTRY(conf_failure_counters), TEST_ENTRY(conf_auth_state_transition_and_audit_count), \
        TEST_ENTRY(conf_device_lookup), TEST_ENTRY(conf_library_items),                            \
        TEST_ENTRY(conf_library_assignments), TEST_ENTRY(conf_library_state),                      \
        TEST_ENTRY(conf_domains), TEST_ENTRY(conf_oidc_pending), TEST_ENTRY(conf_audit_prune),     \
        TEST_ENTRY(conf_challenge_and_session_prune), TEST_ENTRY(conf_server_secrets),             \
        TEST_ENTRY(conf_tx_batches), TEST_ENTRY(conf_jobs)

#include "storage/conformance_inventory.h"

#endif
