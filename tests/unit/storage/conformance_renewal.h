/*
 * Storage conformance for identity renewal (issue 15, migration 13): renewal challenges bound to
 * an enrollment, the renewal rows and their compare-and-set, the scheduler's two listings, the
 * rotation to a new certificate (all or nothing) and the expiry count of the metrics. Included
 * by every backend's test file after conformance.h, whose fixtures it uses; its cases are
 * spliced in with CONFORMANCE_RENEWAL_TESTS.
 */
#ifndef ORCHARD_TEST_STORAGE_CONFORMANCE_RENEWAL_H
#define ORCHARD_TEST_STORAGE_CONFORMANCE_RENEWAL_H

#include "storage/conformance.h"

/* A certificate of user_id recorded for enrollment_id (NULL: none). */
static inline int conf_cert(storage *st, const char *fp, const char *serial, int64_t user_id,
                            const char *enrollment_id, int64_t not_after)
{
    st_cert c = {0};
    c.serial = (char *)serial;
    c.fingerprint = (char *)fp;
    c.user_id = user_id;
    c.session_hash = (char *)"s1";
    c.enrollment_id = (char *)enrollment_id;
    c.not_after = not_after;
    c.issued_at = 50;
    return storage_cert_add(st, &c);
}

/* An enrolled device channel `id` of user_id bound to certificate fp (recorded for it). */
static inline int conf_identity(storage *st, const char *id, int64_t user_id, const char *fp,
                                const char *serial, int64_t not_after)
{
    st_enrollment e = {0};
    e.id = (char *)id;
    e.type = ST_ENR_USER;
    e.user_id = user_id;
    e.topic = (char *)"com.apple.mgmt.External.test";
    e.cert_fingerprint = (char *)fp;
    e.enrolled_at = 100;
    int rc = storage_enrollment_authenticate(st, &e);
    return rc == ST_OK ? conf_cert(st, fp, serial, user_id, id, not_after) : rc;
}

static inline int64_t conf_cert_revoked_at(storage *st, const char *fp)
{
    st_cert c;
    int rc = storage_cert_get_by_fingerprint(st, fp, &c);
    int64_t at = rc == ST_OK ? c.revoked_at : -1;
    st_cert_cleanup(&c);
    return at;
}

/* A pending renewal row of enrollment_id for old_fp. */
static inline st_renewal conf_renewal(const char *enrollment_id, const char *old_fp,
                                      int64_t expires_at, int64_t next_attempt_at)
{
    st_renewal r = {0};
    r.enrollment_id = (char *)enrollment_id;
    r.old_fingerprint = (char *)old_fp;
    r.expires_at = expires_at;
    r.state = (char *)"pending";
    r.next_attempt_at = next_attempt_at;
    r.started_at = 100;
    r.updated_at = 100;
    return r;
}

/* What a listing passed to its callback, in order. */
struct conf_renewals {
    int n;
    char ids[8][16];
    int64_t versions[8];
};

static int conf_renewal_cb(const st_renewal *r, void *ctx)
{
    struct conf_renewals *l = ctx;
    if (l->n < 8) {
        snprintf(l->ids[l->n], sizeof(l->ids[0]), "%s", r->enrollment_id);
        l->versions[l->n] = r->version;
    }
    l->n++;
    return 0;
}

TEST(conf_renewal_challenges)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    int64_t uid = conf_user(st, "rc@example.com");
    ASSERT(uid > 0);
    ASSERT_INT_EQ(storage_challenge_add_renewal(st, "rc1", uid, "s1", "E1", 1000), ST_OK);
    ASSERT_INT_EQ(storage_challenge_add_renewal(st, "rc1", uid, "s1", "E1", 1000), ST_EEXISTS);
    ASSERT_INT_EQ(storage_challenge_add(st, "first", uid, "s1", 1000), ST_OK);

    int64_t got_uid = 0;
    char *sess = NULL, *enr = NULL;
    /* A renewal challenge says which enrollment it renews; a first enrollment's says none. */
    ASSERT_INT_EQ(storage_challenge_consume_bound(st, "rc1", 500, &got_uid, &sess, &enr), ST_OK);
    ASSERT_INT_EQ(got_uid, uid);
    ASSERT_STR_EQ(sess, "s1");
    ASSERT_STR_EQ(enr, "E1");
    free(sess);
    free(enr);
    sess = enr = NULL;
    ASSERT_INT_EQ(storage_challenge_consume_bound(st, "first", 500, &got_uid, &sess, &enr), ST_OK);
    ASSERT(enr == NULL);
    free(sess);
    sess = NULL;
    /* One time only, and never after expiry; the plain consume sees renewal challenges too. */
    ASSERT_INT_EQ(storage_challenge_consume_bound(st, "rc1", 501, &got_uid, &sess, &enr),
                  ST_ECONFLICT);
    ASSERT(sess == NULL && enr == NULL && got_uid == 0);
    ASSERT_INT_EQ(storage_challenge_add_renewal(st, "rc2", uid, "s1", "E1", 1000), ST_OK);
    ASSERT_INT_EQ(storage_challenge_consume_bound(st, "rc2", 1000, &got_uid, &sess, &enr),
                  ST_ENOTFOUND);
    ASSERT_INT_EQ(storage_challenge_consume(st, "rc2", 999, &got_uid, &sess), ST_OK);
    free(sess);
    storage_close(st);
}

TEST(conf_renewal_rows)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    int64_t uid = conf_user(st, "rr@example.com");
    ASSERT(uid > 0);
    ASSERT_INT_EQ(conf_identity(st, "E1", uid, "f1", "01", 1000), ST_OK);
    st_renewal got;
    ASSERT_INT_EQ(storage_renewal_get(st, "E1", &got), ST_ENOTFOUND);

    /* Absent: the first writer creates it; one that expects no row loses once it exists. */
    st_renewal r = conf_renewal("E1", "f1", 1000, 300);
    ASSERT_INT_EQ(storage_renewal_put(st, &r, 0), ST_OK);
    ASSERT_INT_EQ(r.version, 1);
    ASSERT_INT_EQ(storage_renewal_put(st, &r, 0), ST_ECONFLICT);
    r.attempts = 1;
    r.challenge_hash = (char *)"ch1";
    r.command_uuid = (char *)"C1";
    r.last_error = (char *)"no_answer";
    r.updated_at = 200;
    ASSERT_INT_EQ(storage_renewal_put(st, &r, 1), ST_OK);
    ASSERT_INT_EQ(r.version, 2);
    /* A second writer that read version 1 loses: exactly one starts each attempt. */
    ASSERT_INT_EQ(storage_renewal_put(st, &r, 1), ST_ECONFLICT);
    ASSERT_INT_EQ(r.version, 2);

    ASSERT_INT_EQ(storage_renewal_get(st, "E1", &got), ST_OK);
    ASSERT_STR_EQ(got.enrollment_id, "E1");
    ASSERT_STR_EQ(got.old_fingerprint, "f1");
    ASSERT_INT_EQ(got.expires_at, 1000);
    ASSERT_STR_EQ(got.state, "pending");
    ASSERT_INT_EQ(got.attempts, 1);
    ASSERT_INT_EQ(got.next_attempt_at, 300);
    ASSERT_STR_EQ(got.challenge_hash, "ch1");
    ASSERT_STR_EQ(got.command_uuid, "C1");
    ASSERT(got.new_fingerprint == NULL);
    ASSERT_STR_EQ(got.last_error, "no_answer");
    ASSERT_INT_EQ(got.started_at, 100);
    ASSERT_INT_EQ(got.updated_at, 200);
    ASSERT_INT_EQ(got.version, 2);
    st_renewal_cleanup(&got);

    /* The row survives a restart. */
    storage_close(st);
    st = conf_backend->reopen();
    ASSERT_NOT_NULL(st);
    ASSERT_INT_EQ(storage_renewal_get(st, "E1", &got), ST_OK);
    ASSERT_INT_EQ(got.version, 2);
    st_renewal_cleanup(&got);
    storage_fail_after(st, 1);
    ASSERT_INT_EQ(storage_renewal_get(st, "E1", &got), ST_ERROR);
    ASSERT(got.enrollment_id == NULL);
    storage_close(st);
}

TEST(conf_renewal_candidates)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    int64_t uid = conf_user(st, "cand@example.com");
    ASSERT(uid > 0);
    ASSERT_INT_EQ(conf_identity(st, "E1", uid, "f1", "01", 1000), ST_OK);
    ASSERT_INT_EQ(conf_identity(st, "E2", uid, "f2", "02", 5000), ST_OK); /* not yet */
    ASSERT_INT_EQ(conf_identity(st, "E3", uid, "f3", "03", 900), ST_OK);  /* unenrolled */
    ASSERT_INT_EQ(conf_identity(st, "E4", uid, "f4", "04", 800), ST_OK);  /* revoked */
    ASSERT_INT_EQ(conf_identity(st, "E5", uid, "f5", "05", 950), ST_OK);  /* soonest */
    ASSERT_INT_EQ(conf_cert(st, "f1old", "06", uid, "E1", 400), ST_OK);   /* not bound */
    ASSERT_INT_EQ(storage_enrollment_unenroll(st, "E3", 150), ST_OK);
    ASSERT_INT_EQ(storage_cert_revoke_enrollment(st, "E4", 150), ST_OK);

    struct conf_renewals l = {0};
    ASSERT_INT_EQ(storage_renewal_candidates(st, 2000, 10, conf_renewal_cb, &l), ST_OK);
    ASSERT_INT_EQ(l.n, 2);
    ASSERT_STR_EQ(l.ids[0], "E5"); /* soonest expiry first */
    ASSERT_STR_EQ(l.ids[1], "E1");
    ASSERT_INT_EQ(l.versions[1], 0);
    memset(&l, 0, sizeof(l));
    ASSERT_INT_EQ(storage_renewal_candidates(st, 2000, 1, conf_renewal_cb, &l), ST_OK);
    ASSERT_INT_EQ(l.n, 1);

    /* A row for the bound certificate takes the enrollment out of the candidates. */
    st_renewal r = conf_renewal("E1", "f1", 1000, 100);
    ASSERT_INT_EQ(storage_renewal_put(st, &r, 0), ST_OK);
    memset(&l, 0, sizeof(l));
    ASSERT_INT_EQ(storage_renewal_candidates(st, 2000, 10, conf_renewal_cb, &l), ST_OK);
    ASSERT_INT_EQ(l.n, 1);
    ASSERT_STR_EQ(l.ids[0], "E5");

    /* A later certificate starts a new cycle: the candidate carries the old row's version. */
    ASSERT_INT_EQ(conf_cert(st, "f1new", "07", uid, "E1", 1500), ST_OK);
    int done = -1;
    ASSERT_INT_EQ(storage_identity_rotate(st, "E1", "E1", "f1", "f1new", 300, &done), ST_OK);
    ASSERT_INT_EQ(done, 1);
    memset(&l, 0, sizeof(l));
    ASSERT_INT_EQ(storage_renewal_candidates(st, 2000, 10, conf_renewal_cb, &l), ST_OK);
    ASSERT_INT_EQ(l.n, 2);
    ASSERT_STR_EQ(l.ids[1], "E1");
    ASSERT_INT_EQ(l.versions[1], 2);
    st_renewal next = conf_renewal("E1", "f1new", 1500, 400);
    ASSERT_INT_EQ(storage_renewal_put(st, &next, 0), ST_ECONFLICT);
    ASSERT_INT_EQ(storage_renewal_put(st, &next, 2), ST_OK);
    ASSERT_INT_EQ(next.version, 3);

    /* The metrics' count: bound, unrevoked, enrolled, in (after, before]. */
    int64_t n = -1;
    ASSERT_INT_EQ(storage_identity_count_expiring(st, 0, 2000, &n), ST_OK);
    ASSERT_INT_EQ(n, 2); /* f1new, f5 */
    ASSERT_INT_EQ(storage_identity_count_expiring(st, 950, 10000, &n), ST_OK);
    ASSERT_INT_EQ(n, 2); /* f1new, f2 */
    ASSERT_INT_EQ(storage_identity_count_expiring(st, 5000, 10000, &n), ST_OK);
    ASSERT_INT_EQ(n, 0);
    storage_close(st);
}

TEST(conf_renewal_due)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    int64_t uid = conf_user(st, "due@example.com");
    ASSERT(uid > 0);
    const char *ids[] = {"E1", "E2", "E3", "E4", "E5"};
    for (int i = 0; i < 5; i++) {
        char fp[16], serial[16];
        snprintf(fp, sizeof(fp), "f%d", i + 1);
        snprintf(serial, sizeof(serial), "0%d", i + 1);
        ASSERT_INT_EQ(conf_identity(st, ids[i], uid, fp, serial, 5000), ST_OK);
    }
    st_renewal r1 = conf_renewal("E1", "f1", 5000, 300);  /* due at 300 */
    st_renewal r2 = conf_renewal("E2", "f2", 5000, 9000); /* its command will fail */
    st_renewal r3 = conf_renewal("E3", "f3", 5000, 9000); /* its command is acknowledged */
    st_renewal r4 = conf_renewal("E4", "f4", 5000, 200);  /* done: never due */
    st_renewal r5 = conf_renewal("E5", "f5", 5000, 100);  /* held: due */
    r2.command_uuid = (char *)"C2";
    r3.command_uuid = (char *)"C3";
    r4.state = (char *)"done";
    r5.state = (char *)"held";
    ASSERT_INT_EQ(storage_renewal_put(st, &r1, 0), ST_OK);
    ASSERT_INT_EQ(storage_renewal_put(st, &r2, 0), ST_OK);
    ASSERT_INT_EQ(storage_renewal_put(st, &r3, 0), ST_OK);
    ASSERT_INT_EQ(storage_renewal_put(st, &r4, 0), ST_OK);
    ASSERT_INT_EQ(storage_renewal_put(st, &r5, 0), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "E2", "C2", 0, 100), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "E3", "C3", 0, 100), ST_OK);
    ASSERT_INT_EQ(storage_queue_report(st, "E2", "C2", ST_CMD_ERROR, "x", 1, 250), ST_OK);
    ASSERT_INT_EQ(conf_ack(st, "E3", "C3", 250), ST_OK);

    struct conf_renewals l = {0};
    ASSERT_INT_EQ(storage_renewal_due(st, 150, 0, 10, conf_renewal_cb, &l), ST_OK);
    ASSERT_INT_EQ(l.n, 2); /* E5 (100), then E2's failed command; E1 not yet */
    ASSERT_STR_EQ(l.ids[0], "E5");
    ASSERT_STR_EQ(l.ids[1], "E2");
    memset(&l, 0, sizeof(l));
    ASSERT_INT_EQ(storage_renewal_due(st, 300, 0, 10, conf_renewal_cb, &l), ST_OK);
    ASSERT_INT_EQ(l.n, 3);
    ASSERT_STR_EQ(l.ids[0], "E5");
    ASSERT_STR_EQ(l.ids[1], "E1");
    ASSERT_STR_EQ(l.ids[2], "E2");
    /* A failure older than errors_since waits for its deadline. */
    memset(&l, 0, sizeof(l));
    ASSERT_INT_EQ(storage_renewal_due(st, 150, 251, 10, conf_renewal_cb, &l), ST_OK);
    ASSERT_INT_EQ(l.n, 1);
    ASSERT_STR_EQ(l.ids[0], "E5");
    memset(&l, 0, sizeof(l));
    ASSERT_INT_EQ(storage_renewal_due(st, 300, 0, 1, conf_renewal_cb, &l), ST_OK);
    ASSERT_INT_EQ(l.n, 1);
    /* Once the failure is recorded (no command out), only the time makes it due. */
    r2.command_uuid = NULL;
    ASSERT_INT_EQ(storage_renewal_put(st, &r2, r2.version), ST_OK);
    memset(&l, 0, sizeof(l));
    ASSERT_INT_EQ(storage_renewal_due(st, 150, 0, 10, conf_renewal_cb, &l), ST_OK);
    ASSERT_INT_EQ(l.n, 1);
    storage_close(st);
}

TEST(conf_identity_rotate)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    int64_t uid = conf_user(st, "rot@example.com");
    ASSERT(uid > 0);
    ASSERT_INT_EQ(conf_identity(st, "E1", uid, "old", "01", 1000), ST_OK);
    ASSERT_INT_EQ(conf_cert(st, "new", "02", uid, "E1", 2000), ST_OK);
    ASSERT_INT_EQ(conf_cert(st, "spare", "03", uid, "E1", 2000), ST_OK); /* another attempt's */
    ASSERT_INT_EQ(conf_identity(st, "E2", uid, "other", "04", 1000), ST_OK);
    st_renewal r = conf_renewal("E1", "old", 1000, 500);
    ASSERT_INT_EQ(storage_renewal_put(st, &r, 0), ST_OK);

    /* All or nothing: a failure inside the transaction changes nothing. */
    int done = -1;
    for (int step = 1; step <= 5; step++) {
        if (storage_fail_step_after(st, step) != 0)
            break; /* no step hook in this backend */
        int rc = storage_identity_rotate(st, "E1", "E1", "old", "new", 300, &done);
        storage_fail_step_after(st, 0);
        ASSERT_INT_EQ(rc, ST_ERROR);
        ASSERT_INT_EQ(done, 0);
        st_enrollment e;
        ASSERT_INT_EQ(storage_enrollment_get(st, "E1", &e), ST_OK);
        ASSERT_STR_EQ(e.cert_fingerprint, "old");
        st_enrollment_cleanup(&e);
        ASSERT_INT_EQ(conf_cert_revoked_at(st, "old"), 0);
        ASSERT_INT_EQ(conf_cert_revoked_at(st, "spare"), 0);
    }

    ASSERT_INT_EQ(storage_identity_rotate(st, "E1", "E1", "old", "new", 300, &done), ST_OK);
    ASSERT_INT_EQ(done, 1);
    st_enrollment e;
    ASSERT_INT_EQ(storage_enrollment_get(st, "E1", &e), ST_OK);
    ASSERT_STR_EQ(e.cert_fingerprint, "new");
    st_enrollment_cleanup(&e);
    ASSERT_INT_EQ(conf_cert_revoked_at(st, "old"), 300);
    ASSERT_INT_EQ(conf_cert_revoked_at(st, "spare"), 300); /* every other identity retired */
    ASSERT_INT_EQ(conf_cert_revoked_at(st, "new"), 0);
    ASSERT_INT_EQ(conf_cert_revoked_at(st, "other"), 0); /* another enrollment's: untouched */
    st_renewal got;
    ASSERT_INT_EQ(storage_renewal_get(st, "E1", &got), ST_OK);
    ASSERT_STR_EQ(got.state, "done");
    ASSERT_STR_EQ(got.new_fingerprint, "new");
    ASSERT(got.challenge_hash == NULL);
    ASSERT_INT_EQ(got.version, 2);
    st_renewal_cleanup(&got);

    /* A second rotation from the same old certificate (a concurrent request) changes nothing. */
    ASSERT_INT_EQ(storage_identity_rotate(st, "E1", "E1", "old", "spare", 310, &done),
                  ST_ECONFLICT);
    ASSERT_INT_EQ(done, 0);
    ASSERT_INT_EQ(conf_cert_revoked_at(st, "new"), 0);
    /* Without a renewal row (a RenewalReq), the rotation happens and says so. */
    ASSERT_INT_EQ(conf_cert(st, "other2", "05", uid, "E2", 3000), ST_OK);
    ASSERT_INT_EQ(storage_identity_rotate(st, "E2", "E2", "other", "other2", 320, &done), ST_OK);
    ASSERT_INT_EQ(done, 0);
    ASSERT_INT_EQ(conf_cert_revoked_at(st, "other"), 320);
    ASSERT_INT_EQ(storage_identity_rotate(st, "nope", "nope", "a", "b", 320, &done), ST_ECONFLICT);
    storage_close(st);
}

/* Several threads (one connection each) race one compare-and-set: exactly one wins. */
struct conf_cas_race {
    storage *st;
    int64_t expect;
    atomic_int wins, conflicts, errors;
};

static void *conf_cas_main(void *arg)
{
    struct conf_cas_race *race = arg;
    st_renewal r = conf_renewal("E1", "f1", 1000, 700);
    r.attempts = 2;
    int rc = storage_renewal_put(race->st, &r, race->expect);
    atomic_fetch_add(rc == ST_OK          ? &race->wins
                     : rc == ST_ECONFLICT ? &race->conflicts
                                          : &race->errors,
                     1);
    return NULL;
}

TEST(conf_renewal_put_races)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    int64_t uid = conf_user(st, "race@example.com");
    ASSERT_INT_EQ(conf_identity(st, "E1", uid, "f1", "01", 1000), ST_OK);
    for (int round = 0; round < 2; round++) {
        st_renewal cur;
        int rc = storage_renewal_get(st, "E1", &cur);
        ASSERT(rc == ST_OK || rc == ST_ENOTFOUND);
        struct conf_cas_race race = {.st = st, .expect = rc == ST_OK ? cur.version : 0};
        st_renewal_cleanup(&cur);
        pthread_t t[6];
        for (int i = 0; i < 6; i++)
            ASSERT_INT_EQ(pthread_create(&t[i], NULL, conf_cas_main, &race), 0);
        for (int i = 0; i < 6; i++)
            pthread_join(t[i], NULL);
        ASSERT_INT_EQ(atomic_load(&race.errors), 0);
        ASSERT_INT_EQ(atomic_load(&race.wins), 1);
        ASSERT_INT_EQ(atomic_load(&race.conflicts), 5);
    }
    storage_close(st);
}

#define CONFORMANCE_RENEWAL_TESTS                                                                  \
    TEST_ENTRY(conf_renewal_challenges), TEST_ENTRY(conf_renewal_rows),                            \
        TEST_ENTRY(conf_renewal_candidates), TEST_ENTRY(conf_renewal_due),                         \
        TEST_ENTRY(conf_identity_rotate), TEST_ENTRY(conf_renewal_put_races)

#endif
