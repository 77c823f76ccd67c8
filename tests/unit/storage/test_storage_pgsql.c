/*
 * Runs the storage conformance suite against a real PostgreSQL server, plus what only a shared
 * server has: DSN forms, two Orchard instances (two storage handles) on one database handing out
 * and completing one queue concurrently, concurrent challenge claims and push-outbox leases,
 * several instances migrating one empty database at once, and reconnection after the server
 * drops connections.
 *
 * The server comes from ORCHARD_TEST_PG_DSN (tests/run.sh starts one with scripts/test-pg.sh).
 * Without it the binary prints a FAIL line and exits 1: CI must never skip PostgreSQL silently.
 * Each open_fresh creates a database orchard_t<pid>_<n> on that server; all are dropped at exit.
 */
#include <unistd.h>

#include "storage/conformance.h"
#include "storage/conformance_renewal.h"
#include "storage/pgsql/pgsql.h"

static const char *pg_base_dsn;
static storage *pg_admin; /* on the DSN's own database: creates and drops the test databases */
static char pg_dsn[1024]; /* the database last returned by open_fresh */
static int pg_seq;

/*
 * The DSN of database `name` on the same server: the URI's path replaced. ORCHARD_TEST_PG_DSN
 * is a libpq URI, "postgresql://[userinfo@][host][:port][/dbname][?params]".
 */
static void pg_dsn_for(const char *name, char *out, size_t n)
{
    const char *auth = strstr(pg_base_dsn, "://");
    auth = auth != NULL ? auth + 3 : pg_base_dsn;
    size_t alen = strcspn(auth, "/?");
    const char *rest = auth + alen;
    if (*rest == '/')
        rest += strcspn(rest, "?");
    snprintf(out, n, "%.*s/%s%s", (int)(auth - pg_base_dsn + (ptrdiff_t)alen), pg_base_dsn, name,
             rest);
}

static storage *pg_open_dsn(const char *dsn)
{
    char err[512];
    storage *st = storage_open(dsn, err, sizeof(err));
    if (st == NULL)
        fprintf(stderr, "storage_open(%s): %s\n", dsn, err);
    return st;
}

/* Creates an empty database and returns its DSN in pg_dsn (the name in name_out if given). */
static int pg_create_db(char *name_out, size_t name_len)
{
    char name[64], sql[128];
    snprintf(name, sizeof(name), "orchard_t%d_%d", (int)getpid(), ++pg_seq);
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s", name);
    if (pgsql_exec_for_test(pg_admin, sql, NULL) != ST_OK)
        return -1;
    pg_dsn_for(name, pg_dsn, sizeof(pg_dsn));
    if (name_out != NULL)
        snprintf(name_out, name_len, "%s", name);
    return 0;
}

static storage *pg_open_fresh(void)
{
    if (pg_create_db(NULL, 0) != 0)
        return NULL;
    return pg_open_dsn(pg_dsn);
}

static storage *pg_reopen(void)
{
    return pg_open_dsn(pg_dsn);
}

static void pg_drop_dbs(void)
{
    char sql[128];
    for (int i = 1; i <= pg_seq; i++) {
        snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS orchard_t%d_%d WITH (FORCE)",
                 (int)getpid(), i);
        pgsql_exec_for_test(pg_admin, sql, NULL);
    }
    storage_close(pg_admin);
}

TEST(pg_dsn_forms)
{
    storage *st = pg_open_fresh();
    ASSERT_NOT_NULL(st);
    ASSERT(conf_user(st, "dsn@example.com") > 0);
    storage_close(st);
    /* Both schemes, in any case, reach the same database. */
    char dsn[1100];
    const char *rest = strstr(pg_dsn, "://");
    ASSERT_NOT_NULL(rest);
    static const char *const schemes[] = {"postgres", "postgresql", "PostgreSQL"};
    for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++) {
        snprintf(dsn, sizeof(dsn), "%s%s", schemes[i], rest);
        st = pg_open_dsn(dsn);
        ASSERT_NOT_NULL(st);
        st_user u;
        ASSERT_INT_EQ(storage_user_get_by_email(st, "dsn@example.com", &u), ST_OK);
        st_user_cleanup(&u);
        storage_close(st);
    }

    /* No server there: an error that names the problem and never echoes the password. */
    char err[512];
    ASSERT(storage_open("postgresql://orchard:s3cret-pw@/nope?host=/nonexistent-dir&"
                        "connect_timeout=2",
                        err, sizeof(err)) == NULL);
    ASSERT(err[0] != '\0');
    ASSERT(strstr(err, "s3cret-pw") == NULL);
    ASSERT(strstr(err, "pgsql") != NULL);
    /* A database that does not exist. */
    pg_dsn_for("orchard_no_such_database", dsn, sizeof(dsn));
    ASSERT(storage_open(dsn, err, sizeof(err)) == NULL);
    ASSERT(strstr(err, "orchard_no_such_database") != NULL);
    /* A DSN libpq cannot parse: its own message would quote the password. */
    ASSERT(storage_open("postgresql://orchard:s3cret-pw@[bad", err, sizeof(err)) == NULL);
    ASSERT(err[0] != '\0');
    ASSERT(strstr(err, "s3cret-pw") == NULL);
}

/* A database whose schema is newer than this build is refused, not downgraded. */
TEST(pg_newer_schema_refused)
{
    storage *st = pg_open_fresh();
    ASSERT_NOT_NULL(st);
    int version = storage_schema_version(st);
    ASSERT(version >= 1);
    ASSERT_INT_EQ(pgsql_exec_for_test(st,
                                      "INSERT INTO schema_migrations (version, applied_at) "
                                      "VALUES (9999, 0)",
                                      NULL),
                  ST_OK);
    storage_close(st);
    char err[512];
    ASSERT(storage_open(pg_dsn, err, sizeof(err)) == NULL);
    ASSERT(strstr(err, "newer") != NULL);
}

/* ---- several instances starting at once: migrations under the advisory lock ---- */

#define PG_STARTERS 6

struct pg_starter {
    storage *st;
    int version;
};

static void *pg_starter_main(void *arg)
{
    struct pg_starter *s = arg;
    s->st = pg_open_dsn(pg_dsn);
    s->version = s->st != NULL ? storage_schema_version(s->st) : -1;
    return NULL;
}

TEST(pg_concurrent_migrations)
{
    ASSERT_INT_EQ(pg_create_db(NULL, 0), 0); /* empty: every starter finds work to do */
    struct pg_starter s[PG_STARTERS];
    pthread_t tids[PG_STARTERS];
    memset(s, 0, sizeof(s));
    for (int i = 0; i < PG_STARTERS; i++)
        ASSERT_INT_EQ(pthread_create(&tids[i], NULL, pg_starter_main, &s[i]), 0);
    for (int i = 0; i < PG_STARTERS; i++)
        pthread_join(tids[i], NULL);
    int failed = 0;
    for (int i = 0; i < PG_STARTERS; i++)
        failed += s[i].st == NULL || s[i].version != s[0].version;
    int64_t rows = -1, distinct = -1;
    if (s[0].st != NULL) {
        pgsql_exec_for_test(s[0].st, "SELECT count(*) FROM schema_migrations", &rows);
        pgsql_exec_for_test(s[0].st, "SELECT count(DISTINCT version) FROM schema_migrations",
                            &distinct);
    }
    for (int i = 0; i < PG_STARTERS; i++)
        storage_close(s[i].st);
    ASSERT_INT_EQ(failed, 0);
    ASSERT(s[0].version >= 1);
    ASSERT_INT_EQ(rows, s[0].version); /* each migration applied exactly once */
    ASSERT_INT_EQ(distinct, s[0].version);
}

/* ---- two instances on one queue ---- */

#define PG_CMDS 400
#define PG_INSTANCES 2
#define PG_THREADS_PER_INSTANCE 3

struct pg_queue_run {
    atomic_int acked[PG_CMDS]; /* successful reports per command: must end at exactly 1 */
    atomic_int handed_stale;   /* hand-outs of a command after its report had committed */
    atomic_int handed;         /* every hand-out (re-sends of unanswered ones included) */
    atomic_int errors;
    atomic_int enqueued; /* commands enqueued so far (by the producers) */
};

struct pg_worker {
    storage *st;
    struct pg_queue_run *run;
    int index;
};

static int pg_cmd_index(const char *uuid)
{
    int i = -1;
    if (sscanf(uuid, "Q%d", &i) != 1 || i < 0 || i >= PG_CMDS)
        return -1;
    return i;
}

static void pg_worker_error(struct pg_worker *w, const char *what, int rc)
{
    if (atomic_fetch_add(&w->run->errors, 1) < 5)
        fprintf(stderr, "worker %d: %s rc=%d\n", w->index, what, rc);
}

/*
 * Producer and consumer in one: thread i enqueues its share of the commands (through its own
 * instance) while every thread keeps taking the next command for the one enrollment and
 * reporting it. Before each queue_next it notes which commands were already reported: a
 * report commits before it is counted, so a command counted before the call started must never
 * come back from it.
 */
static void *pg_worker_main(void *arg)
{
    struct pg_worker *w = arg;
    struct pg_queue_run *run = w->run;
    int nthreads = PG_INSTANCES * PG_THREADS_PER_INSTANCE;
    int next_enqueue = w->index;
    unsigned char seen_acked[PG_CMDS];
    int idle_rounds = 0;
    while (idle_rounds < 3) {
        if (next_enqueue < PG_CMDS) {
            char uuid[32];
            snprintf(uuid, sizeof(uuid), "Q%04d", next_enqueue);
            int rc = conf_enqueue(w->st, "E1", uuid, 0, 1000 + next_enqueue);
            if (rc != ST_OK)
                pg_worker_error(w, "enqueue", rc);
            atomic_fetch_add(&run->enqueued, 1);
            next_enqueue += nthreads;
        }
        for (int i = 0; i < PG_CMDS; i++)
            seen_acked[i] = atomic_load(&run->acked[i]) > 0;
        st_command c;
        int rc = storage_queue_next(w->st, "E1", 1, 5000, &c);
        if (rc == ST_ENOTFOUND) {
            st_command_cleanup(&c);
            /* Done once everything was enqueued and nothing is pending any more. */
            if (atomic_load(&run->enqueued) == PG_CMDS && conf_count(w->st, "E1") == 0)
                idle_rounds++;
            continue;
        }
        idle_rounds = 0;
        if (rc != ST_OK) {
            pg_worker_error(w, "next", rc);
            st_command_cleanup(&c);
            continue;
        }
        atomic_fetch_add(&run->handed, 1);
        int i = pg_cmd_index(c.uuid);
        if (i < 0) {
            pg_worker_error(w, "unknown uuid", 0);
        } else {
            if (seen_acked[i])
                atomic_fetch_add(&run->handed_stale, 1);
            char result[64];
            int n = snprintf(result, sizeof(result), "done by %d", w->index);
            rc = storage_queue_report(w->st, "E1", c.uuid, ST_CMD_ACKNOWLEDGED, result, (size_t)n,
                                      6000);
            if (rc == ST_OK)
                atomic_fetch_add(&run->acked[i], 1);
            else if (rc != ST_ENOTFOUND) /* ENOTFOUND: a re-send another worker completed */
                pg_worker_error(w, "report", rc);
        }
        st_command_cleanup(&c);
    }
    return NULL;
}

static int pg_history_cb(const st_command *c, void *ctx)
{
    int *n = ctx;
    if (c->status == ST_CMD_ACKNOWLEDGED && c->result != NULL &&
        strncmp(c->result, "done by ", 8) == 0)
        (*n)++;
    return 0;
}

TEST(pg_two_instances_share_one_queue)
{
    storage *inst[PG_INSTANCES];
    inst[0] = pg_open_fresh();
    ASSERT_NOT_NULL(inst[0]);
    for (int i = 1; i < PG_INSTANCES; i++) {
        inst[i] = pg_reopen();
        ASSERT_NOT_NULL(inst[i]);
    }
    ASSERT_INT_EQ(conf_enroll(inst[0], "E1", 0), ST_OK);

    struct pg_queue_run *run = calloc(1, sizeof(*run));
    ASSERT_NOT_NULL(run);
    struct pg_worker w[PG_INSTANCES * PG_THREADS_PER_INSTANCE];
    pthread_t tids[PG_INSTANCES * PG_THREADS_PER_INSTANCE];
    int nthreads = PG_INSTANCES * PG_THREADS_PER_INSTANCE;
    for (int i = 0; i < nthreads; i++) {
        w[i] = (struct pg_worker){inst[i % PG_INSTANCES], run, i};
        ASSERT_INT_EQ(pthread_create(&tids[i], NULL, pg_worker_main, &w[i]), 0);
    }
    for (int i = 0; i < nthreads; i++)
        pthread_join(tids[i], NULL);

    int lost = 0, twice = 0;
    for (int i = 0; i < PG_CMDS; i++) {
        int n = atomic_load(&run->acked[i]);
        lost += n == 0;
        twice += n > 1;
    }
    fprintf(stderr, "two instances: %d commands, %d hand-outs (%d re-sends of unanswered ones)\n",
            PG_CMDS, atomic_load(&run->handed), atomic_load(&run->handed) - PG_CMDS);
    int errors = atomic_load(&run->errors), stale = atomic_load(&run->handed_stale);
    int history = 0;
    int rc = storage_command_list(inst[1], "E1", 0, pg_history_cb, &history);
    int pending = conf_count(inst[0], "E1");
    free(run);
    for (int i = 0; i < PG_INSTANCES; i++)
        storage_close(inst[i]);
    ASSERT_INT_EQ(errors, 0);
    ASSERT_INT_EQ(lost, 0);  /* every command completed */
    ASSERT_INT_EQ(twice, 0); /* ...exactly once */
    ASSERT_INT_EQ(stale, 0); /* and none handed out again after its result was recorded */
    ASSERT_INT_EQ(rc, ST_OK);
    ASSERT_INT_EQ(history, PG_CMDS);
    ASSERT_INT_EQ(pending, 0);
}

/* ---- two instances claiming one-time SCEP challenges ---- */

#define PG_CHALLENGES 150

struct pg_claim {
    storage *st;
    atomic_int *wins;
    atomic_int errors;
};

static void *pg_claim_main(void *arg)
{
    struct pg_claim *cl = arg;
    char name[32];
    for (int i = 0; i < PG_CHALLENGES; i++) {
        snprintf(name, sizeof(name), "ch%03d", i);
        int64_t uid = 0;
        char *sess = NULL;
        int rc = storage_challenge_consume(cl->st, name, 50, &uid, &sess);
        if (rc == ST_OK && sess != NULL && strcmp(sess, "s1") == 0)
            atomic_fetch_add(&cl->wins[i], 1);
        else if (rc != ST_ECONFLICT)
            atomic_fetch_add(&cl->errors, 1);
        free(sess);
    }
    return NULL;
}

TEST(pg_two_instances_claim_challenges_once)
{
    storage *a = pg_open_fresh();
    ASSERT_NOT_NULL(a);
    storage *b = pg_reopen();
    ASSERT_NOT_NULL(b);
    int64_t uid = conf_user(a, "claim@example.com");
    ASSERT(uid > 0);
    char name[32];
    for (int i = 0; i < PG_CHALLENGES; i++) {
        snprintf(name, sizeof(name), "ch%03d", i);
        ASSERT_INT_EQ(storage_challenge_add(i % 2 ? a : b, name, uid, "s1", 1000), ST_OK);
    }
    static atomic_int wins[PG_CHALLENGES];
    for (int i = 0; i < PG_CHALLENGES; i++)
        atomic_init(&wins[i], 0);
    struct pg_claim cl[4];
    pthread_t tids[4];
    for (int i = 0; i < 4; i++) {
        cl[i].st = i % 2 ? a : b;
        cl[i].wins = wins;
        atomic_init(&cl[i].errors, 0);
        ASSERT_INT_EQ(pthread_create(&tids[i], NULL, pg_claim_main, &cl[i]), 0);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(tids[i], NULL);
    storage_close(a);
    storage_close(b);
    for (int i = 0; i < 4; i++)
        ASSERT_INT_EQ(atomic_load(&cl[i].errors), 0);
    for (int i = 0; i < PG_CHALLENGES; i++)
        ASSERT_INT_EQ(atomic_load(&wins[i]), 1);
}

/* ---- two instances leasing the push outbox and a bulk push ---- */

#define PG_PUSH_ROWS 120
#define PG_PUSHERS 4

struct pg_pusher {
    storage *st;
    char owner[32];
    atomic_int *leased; /* per row: how many pushers were handed it */
    int errors;
};

static int pg_pusher_cb(const st_push *p, void *ctx)
{
    struct pg_pusher *w = ctx;
    int i = -1;
    if (sscanf(p->enrollment_id, "PU%d", &i) == 1 && i >= 0 && i < PG_PUSH_ROWS &&
        p->push_token != NULL && p->topic != NULL)
        atomic_fetch_add(&w->leased[i], 1);
    else
        w->errors++;
    return 0;
}

static void *pg_pusher_main(void *arg)
{
    struct pg_pusher *w = arg;
    for (int idle = 0; idle < 3;) {
        int claimed = 0;
        /* Every lease is still live (now 1000, lease 600): a row may go to one pusher only. */
        int rc = storage_push_claim(w->st, w->owner, 1000, 600, 7, pg_pusher_cb, w, &claimed);
        if (rc != ST_OK)
            w->errors++;
        idle = claimed == 0 ? idle + 1 : 0;
    }
    return NULL;
}

TEST(pg_two_instances_lease_push_rows_once)
{
    storage *a = pg_open_fresh();
    ASSERT_NOT_NULL(a);
    storage *b = pg_reopen();
    ASSERT_NOT_NULL(b);
    char id[32];
    for (int i = 0; i < PG_PUSH_ROWS; i++) {
        snprintf(id, sizeof(id), "PU%03d", i);
        ASSERT_INT_EQ(conf_enroll(a, id, 0), ST_OK);
        ASSERT_INT_EQ(storage_enrollment_token_update(a, id, "ab01", "MAGIC", 100), ST_OK);
        if (i % 3 == 0)
            ASSERT_INT_EQ(storage_push_enqueue(i % 2 ? a : b, id, 500), ST_OK);
    }
    /* The rest through a bulk push, whose pages pass over the outbox rows. */
    int64_t q = 0;
    ASSERT_INT_EQ(storage_push_enqueue_filter(b, ST_PUSH_ALL, NULL, 500, &q), ST_OK);
    ASSERT_INT_EQ(q, PG_PUSH_ROWS);
    static atomic_int leased[PG_PUSH_ROWS];
    for (int i = 0; i < PG_PUSH_ROWS; i++)
        atomic_init(&leased[i], 0);
    struct pg_pusher w[PG_PUSHERS];
    pthread_t tids[PG_PUSHERS];
    for (int i = 0; i < PG_PUSHERS; i++) {
        w[i].st = i % 2 ? a : b;
        snprintf(w[i].owner, sizeof(w[i].owner), "pusher-%d", i);
        w[i].leased = leased;
        w[i].errors = 0;
        ASSERT_INT_EQ(pthread_create(&tids[i], NULL, pg_pusher_main, &w[i]), 0);
    }
    for (int i = 0; i < PG_PUSHERS; i++)
        pthread_join(tids[i], NULL);
    int pending = conf_pending(b);
    storage_close(a);
    storage_close(b);
    for (int i = 0; i < PG_PUSHERS; i++)
        ASSERT_INT_EQ(w[i].errors, 0);
    for (int i = 0; i < PG_PUSH_ROWS; i++)
        ASSERT_INT_EQ(atomic_load(&leased[i]), 1);
    ASSERT_INT_EQ(pending, PG_PUSH_ROWS); /* leased, not done: all stay pending until push_done */
}

/* ---- two instances working durable jobs ---- */

#define PG_JOB_ENROLLMENTS 150
#define PG_JOBS 3
#define PG_JOB_WORKERS 4

struct pg_job_worker {
    storage *st;
    char owner[32];
    int64_t job;     /* the job being worked */
    int batch_fails; /* batches rolled back (a lost lease) */
    int errors;
    int finished; /* jobs this worker finished */
};

/* One unit of a job's work on one enrollment: a command whose uuid names the job and the
 * enrollment, so doing it twice would be a duplicate uuid (ST_EEXISTS). */
static int pg_job_unit(const st_enrollment *e, void *ctx)
{
    struct pg_job_worker *w = ctx;
    char uuid[64];
    snprintf(uuid, sizeof(uuid), "J%lld-%s", (long long)w->job, e->id);
    if (conf_enqueue(w->st, e->id, uuid, 0, 1000) != ST_OK)
        w->errors++;
    return 0;
}

struct pg_job_cursor {
    char last[64];
};

static int pg_job_last(const st_enrollment *e, void *ctx)
{
    snprintf(((struct pg_job_cursor *)ctx)->last, 64, "%s", e->id);
    return 0;
}

/* Works one claimed job to the end in batches of 20, each in its own transaction. */
static void pg_job_work(struct pg_job_worker *w, st_job *j)
{
    char cursor[64];
    snprintf(cursor, sizeof(cursor), "%s", j->cursor ? j->cursor : "");
    w->job = j->id;
    for (;;) {
        struct pg_job_cursor c = {""};
        int n = 0;
        if (storage_job_page(w->st, j, cursor, 20, pg_job_last, &c, &n) != ST_OK) {
            w->errors++;
            return;
        }
        if (n == 0)
            break;
        if (storage_tx_begin(w->st) != ST_OK) {
            w->errors++;
            return;
        }
        int got = 0;
        storage_job_page(w->st, j, cursor, 20, pg_job_unit, w, &got);
        st_job_progress p = {j->id, c.last, -1, got, 0, got, 0};
        int rc = storage_job_progress(w->st, w->owner, 1000, 600, &p);
        if (rc != ST_OK) {
            storage_tx_rollback(w->st);
            w->batch_fails++;
            return;
        }
        if (storage_tx_commit(w->st) != ST_OK) {
            w->errors++;
            return;
        }
        snprintf(cursor, sizeof(cursor), "%s", c.last);
    }
    if (storage_job_finish(w->st, w->owner, j->id, ST_JOB_DONE, 1001) == ST_OK)
        w->finished++;
}

static void *pg_job_worker_main(void *arg)
{
    struct pg_job_worker *w = arg;
    for (int idle = 0; idle < 3;) {
        st_job j;
        int rc = storage_job_claim(w->st, w->owner, 1000, 600, &j);
        if (rc == ST_OK)
            pg_job_work(w, &j);
        else if (rc != ST_ENOTFOUND)
            w->errors++;
        idle = rc == ST_OK ? 0 : idle + 1;
        st_job_cleanup(&j);
    }
    return NULL;
}

/*
 * Two instances (two handles), four workers, three jobs over the same enrollments: every job
 * is finished once, by one worker, and every enrollment is worked exactly once per job (a
 * second time would be a duplicate command uuid).
 */
TEST(pg_two_instances_work_each_job_once)
{
    storage *a = pg_open_fresh();
    ASSERT_NOT_NULL(a);
    storage *b = pg_reopen();
    ASSERT_NOT_NULL(b);
    int64_t u = conf_user(a, "jobs@x.example");
    ASSERT(u > 0);
    char id[32];
    for (int i = 0; i < PG_JOB_ENROLLMENTS; i++) {
        snprintf(id, sizeof(id), "JE%03d", i);
        ASSERT_INT_EQ(conf_enroll(a, id, u), ST_OK);
        ASSERT_INT_EQ(storage_enrollment_token_update(a, id, "ab01", "MAGIC", 100), ST_OK);
    }
    int64_t ids[PG_JOBS];
    for (int i = 0; i < PG_JOBS; i++) {
        st_job j = {0};
        j.kind = (char *)"reconcile";
        j.scope = i == 1 ? ST_JOB_USER : ST_JOB_DOMAIN;
        j.value = (char *)(i == 1 ? "jobs@x.example" : "x.example");
        j.origin = (char *)"test";
        j.created_at = 900 + i;
        ASSERT_INT_EQ(storage_job_add(i % 2 ? a : b, &j), ST_OK);
        ids[i] = j.id;
        if (i == 2) /* the same filter as job 0 while it waits: the same job */
            ASSERT_INT_EQ(ids[2], ids[0]);
    }
    /* Job 2 must be a job of its own: start job 0 first, then add it again. */
    st_job j0;
    ASSERT_INT_EQ(storage_job_claim(a, "starter", 950, 1, &j0), ST_OK);
    ASSERT_INT_EQ(j0.id, ids[0]);
    ASSERT_INT_EQ(storage_job_release(a, "starter", j0.id), ST_OK);
    st_job_cleanup(&j0);
    st_job again = {0};
    again.kind = (char *)"reconcile";
    again.scope = ST_JOB_DOMAIN;
    again.value = (char *)"x.example";
    again.created_at = 960;
    ASSERT_INT_EQ(storage_job_add(b, &again), ST_OK);
    ids[2] = again.id;
    ASSERT(ids[2] != ids[0]);

    struct pg_job_worker w[PG_JOB_WORKERS];
    pthread_t tids[PG_JOB_WORKERS];
    for (int i = 0; i < PG_JOB_WORKERS; i++) {
        memset(&w[i], 0, sizeof(w[i]));
        w[i].st = i % 2 ? a : b;
        snprintf(w[i].owner, sizeof(w[i].owner), "instance-%d", i);
        ASSERT_INT_EQ(pthread_create(&tids[i], NULL, pg_job_worker_main, &w[i]), 0);
    }
    for (int i = 0; i < PG_JOB_WORKERS; i++)
        pthread_join(tids[i], NULL);
    int finished = 0;
    for (int i = 0; i < PG_JOB_WORKERS; i++) {
        ASSERT_INT_EQ(w[i].errors, 0);
        ASSERT_INT_EQ(w[i].batch_fails, 0);
        finished += w[i].finished;
    }
    ASSERT_INT_EQ(finished, PG_JOBS);
    for (int i = 0; i < PG_JOBS; i++) {
        st_job j;
        ASSERT_INT_EQ(storage_job_get(a, ids[i], &j), ST_OK);
        ASSERT_INT_EQ(j.state, ST_JOB_DONE);
        ASSERT_INT_EQ(j.done, PG_JOB_ENROLLMENTS);
        st_job_cleanup(&j);
    }
    for (int i = 0; i < PG_JOB_ENROLLMENTS; i++) {
        snprintf(id, sizeof(id), "JE%03d", i);
        ASSERT_INT_EQ(conf_count(a, id), PG_JOBS);
    }
    storage_close(a);
    storage_close(b);
}

/* ---- the server drops our connections ---- */

/* Terminates every other connection to st's database and waits until they are gone. */
static int pg_kill_other_connections(storage *killer)
{
    if (pgsql_exec_for_test(killer,
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()",
                            NULL) != ST_OK)
        return -1;
    for (int i = 0; i < 500; i++) {
        int64_t left = -1;
        if (pgsql_exec_for_test(killer,
                                "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                "current_database() AND pid <> pg_backend_pid()",
                                &left) != ST_OK)
            return -1;
        if (left == 0)
            return 0;
        usleep(10000);
    }
    return -1;
}

TEST(pg_reconnects_after_the_server_drops_connections)
{
    storage *st = pg_open_fresh();
    ASSERT_NOT_NULL(st);
    storage *killer = pg_reopen();
    ASSERT_NOT_NULL(killer);
    ASSERT_INT_EQ(conf_enroll(st, "E1", 0), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "C1", 0, 100), ST_OK);

    /* An idle connection closed by the server is noticed and replaced before the next call,
     * whatever the call: a write that must not be sent twice works too. */
    ASSERT_INT_EQ(pg_kill_other_connections(killer), 0);
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "C2", 0, 101), ST_OK);
    ASSERT_INT_EQ(conf_count(st, "E1"), 2);
    ASSERT_INT_EQ(pg_kill_other_connections(killer), 0);
    ASSERT(conf_user(st, "again@example.com") > 0);
    ASSERT_INT_EQ(pg_kill_other_connections(killer), 0);
    ASSERT_INT_EQ(storage_ping(st), ST_OK);
    char uuid[64];
    ASSERT_INT_EQ(pg_kill_other_connections(killer), 0);
    ASSERT_INT_EQ(conf_next(st, "E1", 1, 200, uuid, sizeof(uuid)), ST_OK);
    ASSERT_STR_EQ(uuid, "C1");
    ASSERT_INT_EQ(pg_kill_other_connections(killer), 0);
    ASSERT_INT_EQ(conf_ack(st, "E1", "C1", 210), ST_OK);
    ASSERT_INT_EQ(conf_status(st, "C1"), ST_CMD_ACKNOWLEDGED);
    /* A transaction after a drop. */
    ASSERT_INT_EQ(pg_kill_other_connections(killer), 0);
    ASSERT_INT_EQ(storage_enrollment_unenroll(st, "E1", 300), ST_OK);
    ASSERT_INT_EQ(conf_count(st, "E1"), 0);
    storage_close(killer);
    storage_close(st);
}

/* Bodies and results are bytes: every byte value, and a result of a megabyte. */
/* A batch whose connection dies mid-way: nothing of it runs outside it, nothing is committed,
 * and the next call outside the batch reconnects. */
TEST(pg_batch_lost_connection_commits_nothing)
{
    storage *st = pg_open_fresh();
    ASSERT_NOT_NULL(st);
    storage *killer = pg_reopen();
    ASSERT_NOT_NULL(killer);
    ASSERT_INT_EQ(storage_tx_begin(st), ST_OK);
    ASSERT_INT_EQ(conf_enroll(st, "B1", 0), ST_OK);
    ASSERT_INT_EQ(pg_kill_other_connections(killer), 0);
    ASSERT_INT_EQ(conf_enroll(st, "B2", 0), ST_ERROR);
    ASSERT_INT_EQ(conf_enqueue(st, "B1", "BC1", 0, 100), ST_ERROR);
    ASSERT_INT_EQ(storage_tx_commit(st), ST_ERROR);
    ASSERT_INT_EQ(conf_enroll(st, "B3", 0), ST_OK);
    st_enrollment e;
    ASSERT_INT_EQ(storage_enrollment_get(killer, "B1", &e), ST_ENOTFOUND);
    ASSERT_INT_EQ(storage_enrollment_get(killer, "B2", &e), ST_ENOTFOUND);
    ASSERT_INT_EQ(storage_enrollment_get(killer, "B3", &e), ST_OK);
    st_enrollment_cleanup(&e);
    storage_close(st);
    storage_close(killer);
}

TEST(pg_binary_bodies_and_results)
{
    storage *st = pg_open_fresh();
    ASSERT_NOT_NULL(st);
    ASSERT_INT_EQ(conf_enroll(st, "E1", 0), ST_OK);
    char body[512];
    for (int i = 0; i < 512; i++)
        body[i] = (char)(i & 0xff);
    st_command in = {0};
    in.uuid = "B1";
    in.enrollment_id = "E1";
    in.request_type = "InstallProfile";
    in.body = body;
    in.body_len = sizeof(body);
    in.created_at = 1;
    ASSERT_INT_EQ(storage_queue_enqueue(st, &in), ST_OK);
    st_command c;
    ASSERT_INT_EQ(storage_queue_next(st, "E1", 1, 2, &c), ST_OK);
    ASSERT_INT_EQ(c.body_len, sizeof(body));
    ASSERT(memcmp(c.body, body, sizeof(body)) == 0);
    ASSERT_INT_EQ(c.body[c.body_len], '\0'); /* NUL-terminated for plist parsers */
    st_command_cleanup(&c);
    size_t big = 1 << 20;
    char *result = malloc(big);
    ASSERT_NOT_NULL(result);
    for (size_t i = 0; i < big; i++)
        result[i] = (char)((i * 7 + 3) & 0xff);
    int rc = storage_queue_report(st, "E1", "B1", ST_CMD_ACKNOWLEDGED, result, big, 3);
    int same = 0;
    if (rc == ST_OK && storage_command_get(st, "B1", &c) == ST_OK) {
        same = c.result_len == big && memcmp(c.result, result, big) == 0;
        st_command_cleanup(&c);
    }
    free(result);
    storage_close(st);
    ASSERT_INT_EQ(rc, ST_OK);
    ASSERT(same);
}

/* Key ordering is bytewise (COLLATE "C") and email folding ASCII-only, as with SQLite. */
TEST(pg_ordering_and_case_folding_are_bytewise)
{
    storage *st = pg_open_fresh();
    ASSERT_NOT_NULL(st);
    static const char *const ids[] = {"a-1", "B-2", "_x", "Z", "a", "\xc3\xa9t\xc3\xa9"};
    for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++)
        ASSERT_INT_EQ(conf_enroll(st, ids[i], 0), ST_OK);
    struct conf_list_state s = {0, 0, 0, "", 1};
    ASSERT_INT_EQ(storage_enrollment_list(st, NULL, conf_enr_cb, &s), ST_OK);
    ASSERT_INT_EQ(s.n, 6);
    ASSERT(s.ordered); /* strcmp order */
    st_user u = {0};
    u.email = "\xc3\x89MILE@Example.com"; /* É: not folded, as SQLite's lower() */
    u.created_at = 1;
    ASSERT_INT_EQ(storage_user_add(st, &u), ST_OK);
    st_user got;
    ASSERT_INT_EQ(storage_user_get(st, u.id, &got), ST_OK);
    ASSERT_STR_EQ(got.email, "\xc3\x89mile@example.com");
    st_user_cleanup(&got);
    storage_close(st);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    pg_base_dsn = getenv("ORCHARD_TEST_PG_DSN");
    if (pg_base_dsn == NULL || pg_base_dsn[0] == '\0') {
        printf("FAIL pgsql_server_started\n");
        fprintf(stderr, "PostgreSQL was not started: ORCHARD_TEST_PG_DSN is not set. tests/run.sh "
                        "starts a throwaway server with scripts/test-pg.sh; by hand:\n"
                        "  eval \"$(scripts/test-pg.sh start)\"\n");
        return 1;
    }
    pg_admin = pg_open_dsn(pg_base_dsn);
    if (pg_admin == NULL) {
        printf("FAIL pgsql_server_reachable\n");
        fprintf(stderr, "cannot open ORCHARD_TEST_PG_DSN (is the server running?)\n");
        return 1;
    }
    atexit(pg_drop_dbs);

    static const struct conformance_backend be = {"pgsql", pg_open_fresh, pg_reopen};
    conformance_init(&be);
    static const struct harness_test tests[] = {
        CONFORMANCE_TESTS,
        CONFORMANCE_RENEWAL_TESTS,
        CONFORMANCE_INVENTORY_TESTS,
        TEST_ENTRY(pg_dsn_forms),
        TEST_ENTRY(pg_newer_schema_refused),
        TEST_ENTRY(pg_concurrent_migrations),
        TEST_ENTRY(pg_two_instances_share_one_queue),
        TEST_ENTRY(pg_two_instances_claim_challenges_once),
        TEST_ENTRY(pg_two_instances_lease_push_rows_once),
        TEST_ENTRY(pg_two_instances_work_each_job_once),
        TEST_ENTRY(pg_batch_lost_connection_commits_nothing),
        TEST_ENTRY(pg_reconnects_after_the_server_drops_connections),
        TEST_ENTRY(pg_binary_bodies_and_results),
        TEST_ENTRY(pg_ordering_and_case_folding_are_bytewise),
        {NULL, NULL},
    };
    return harness_run(tests, argc, argv);
}
