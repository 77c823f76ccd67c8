/*
 * Runs the storage conformance suite against the SQLite backend on temporary files, plus the
 * cases only SQLite has: DSN forms, file permissions and WAL, and durability across kill -9.
 * The files live in a fresh directory under $TMPDIR (or /tmp), removed at exit.
 */
#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "storage/conformance.h"
#include "storage/conformance_renewal.h"
#include "storage/sqlite/sqlite.h"

static char sq_dir[512];
static char sq_path[600];
static int sq_seq;

static void sq_remove_dir(void)
{
    DIR *d = opendir(sq_dir);
    if (d == NULL)
        return;
    struct dirent *de;
    char p[1200];
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof(p), "%s/%s", sq_dir, de->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(sq_dir);
}

static storage *sq_open_dsn(const char *dsn)
{
    char err[256];
    storage *st = storage_open(dsn, err, sizeof(err));
    if (st == NULL)
        fprintf(stderr, "storage_open(%s): %s\n", dsn, err);
    return st;
}

static storage *sq_open_fresh(void)
{
    char dsn[700];
    snprintf(sq_path, sizeof(sq_path), "%s/db-%d.sqlite", sq_dir, ++sq_seq);
    snprintf(dsn, sizeof(dsn), "sqlite:%s", sq_path);
    return sq_open_dsn(dsn);
}

static storage *sq_reopen(void)
{
    char dsn[700];
    snprintf(dsn, sizeof(dsn), "sqlite:%s", sq_path);
    return sq_open_dsn(dsn);
}

TEST(sqlite_dsn_forms)
{
    char err[256], dsn[700];
    storage *st;

    snprintf(sq_path, sizeof(sq_path), "%s/bare.sqlite", sq_dir);
    st = storage_open(sq_path, err, sizeof(err)); /* a bare path */
    ASSERT_NOT_NULL(st);
    storage_close(st);
    snprintf(dsn, sizeof(dsn), "sqlite://%s", sq_path); /* sqlite:///abs/path */
    st = storage_open(dsn, err, sizeof(err));
    ASSERT_NOT_NULL(st);
    ASSERT_INT_EQ(storage_ping(st), ST_OK);
    storage_close(st);
    snprintf(dsn, sizeof(dsn), "SQLite:%s", sq_path); /* schemes are case-insensitive */
    st = storage_open(dsn, err, sizeof(err));
    ASSERT_NOT_NULL(st);
    storage_close(st);

    ASSERT(storage_open("mysql://db.example.com/orchard", err, sizeof(err)) == NULL);
    ASSERT(strstr(err, "mysql") != NULL);
    ASSERT(strstr(err, "sqlite") != NULL); /* names the valid ones */
    ASSERT(storage_open(":memory:", err, sizeof(err)) == NULL);
    ASSERT(err[0] != '\0');
    ASSERT(storage_open("sqlite:", err, sizeof(err)) == NULL);
    ASSERT(err[0] != '\0');
    snprintf(dsn, sizeof(dsn), "sqlite:%s/no/such/dir/x.sqlite", sq_dir);
    ASSERT(storage_open(dsn, err, sizeof(err)) == NULL);
    ASSERT(strstr(err, "no/such/dir") != NULL);
    /* Not a database. */
    snprintf(sq_path, sizeof(sq_path), "%s/garbage.sqlite", sq_dir);
    FILE *f = fopen(sq_path, "w");
    ASSERT_NOT_NULL(f);
    for (int i = 0; i < 200; i++)
        fputs("this is not an SQLite database file. ", f);
    fclose(f);
    ASSERT(storage_open(sq_path, err, sizeof(err)) == NULL);
    ASSERT(err[0] != '\0');
}

TEST(sqlite_file_private_and_wal)
{
    storage *st = sq_open_fresh();
    ASSERT_NOT_NULL(st);
    ASSERT(conf_user(st, "wal@example.com") > 0);
    struct stat sb;
    ASSERT_INT_EQ(stat(sq_path, &sb), 0);
    ASSERT_INT_EQ(sb.st_mode & 0777, 0600);
    char wal[700];
    snprintf(wal, sizeof(wal), "%s-wal", sq_path);
    ASSERT_INT_EQ(stat(wal, &sb), 0); /* WAL mode: the log exists while the store is open */
    ASSERT_INT_EQ(sb.st_mode & 0777, 0600);
    storage_close(st);
}

/* Acknowledged writes survive kill -9 of the process (WAL + synchronous=NORMAL). */
TEST(sqlite_survives_kill)
{
    storage *st = sq_open_fresh();
    ASSERT_NOT_NULL(st);
    storage_close(st);
    fflush(NULL);
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        storage *cst = sq_reopen();
        if (cst == NULL)
            _exit(2);
        if (conf_user(cst, "killed@example.com") <= 0 || conf_enroll(cst, "E1", 0) != ST_OK ||
            conf_enqueue(cst, "E1", "C1", 0, 100) != ST_OK ||
            conf_enqueue(cst, "E1", "C2", 0, 101) != ST_OK)
            _exit(3);
        char uuid[64];
        if (conf_next(cst, "E1", 1, 200, uuid, sizeof(uuid)) != ST_OK ||
            conf_ack(cst, "E1", uuid, 210) != ST_OK)
            _exit(4);
        kill(getpid(), SIGKILL); /* no close, no checkpoint, no atexit */
        _exit(5);
    }
    int status = 0;
    ASSERT_INT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

    st = sq_reopen();
    ASSERT_NOT_NULL(st);
    st_user u;
    ASSERT_INT_EQ(storage_user_get_by_email(st, "killed@example.com", &u), ST_OK);
    st_user_cleanup(&u);
    ASSERT_INT_EQ(conf_status(st, "C1"), ST_CMD_ACKNOWLEDGED);
    ASSERT_INT_EQ(conf_status(st, "C2"), ST_CMD_QUEUED);
    ASSERT_INT_EQ(conf_count(st, "E1"), 1);
    storage_close(st);
}

/* Two store objects on one file (as two processes would be) see each other's writes. */
TEST(sqlite_two_handles)
{
    storage *a = sq_open_fresh();
    ASSERT_NOT_NULL(a);
    storage *b = sq_reopen();
    ASSERT_NOT_NULL(b);
    ASSERT_INT_EQ(conf_enroll(a, "E1", 0), ST_OK);
    ASSERT_INT_EQ(conf_enqueue(b, "E1", "C1", 0, 100), ST_OK);
    char uuid[64];
    ASSERT_INT_EQ(conf_next(a, "E1", 1, 200, uuid, sizeof(uuid)), ST_OK);
    ASSERT_STR_EQ(uuid, "C1");
    ASSERT_INT_EQ(conf_ack(b, "E1", "C1", 210), ST_OK);
    ASSERT_INT_EQ(conf_status(a, "C1"), ST_CMD_ACKNOWLEDGED);
    storage_close(a);
    storage_close(b);
}

/* Enqueues n commands with bodies of about 3 KiB (a page each) on E1, 500 per transaction. */
static int sq_write_pages(storage *st, int n, int *seq)
{
    static char body[3000];
    memset(body, 'x', sizeof(body) - 1);
    for (int i = 0; i < n; i += 500) {
        if (storage_tx_begin(st) != ST_OK)
            return -1;
        for (int k = i; k < n && k < i + 500; k++) {
            char uuid[32];
            snprintf(uuid, sizeof(uuid), "P%08d", (*seq)++);
            st_command c = {0};
            c.uuid = uuid;
            c.enrollment_id = (char *)"E1";
            c.request_type = (char *)"InstallProfile";
            c.body = body;
            c.body_len = sizeof(body) - 1;
            c.created_at = 100;
            if (storage_queue_enqueue(st, &c) != ST_OK) {
                storage_tx_rollback(st);
                return -1;
            }
        }
        if (storage_tx_commit(st) != ST_OK)
            return -1;
    }
    return 0;
}

static long long sq_wal_size(void)
{
    char wal[700];
    struct stat sb;
    snprintf(wal, sizeof(wal), "%s-wal", sq_path);
    return stat(wal, &sb) == 0 ? (long long)sb.st_size : -1;
}

/*
 * Checkpoints run on the backend's own thread, not in the committing one: past 1,000 WAL pages
 * the checkpointer copies them, and a writer that never pauses still finds the WAL bounded (the
 * committing connection checkpoints itself beyond 64 MiB, and the WAL restarts).
 */
TEST(sqlite_checkpoints_in_the_background)
{
    storage *st = sq_open_fresh();
    ASSERT_NOT_NULL(st);
    ASSERT_INT_EQ(conf_enroll(st, "E1", 0), ST_OK);
    int seq = 0;
    ASSERT_INT_EQ(sq_write_pages(st, 1500, &seq), 0);
    for (int i = 0; i < 500 && sqlite_storage_checkpoints(st) == 0; i++)
        usleep(10000);
    ASSERT(sqlite_storage_checkpoints(st) > 0);
    /* About 90 MiB written without a pause: the WAL stays near its 64 MiB bound. */
    ASSERT_INT_EQ(sq_write_pages(st, 30000, &seq), 0);
    long long wal = sq_wal_size();
    ASSERT(wal > 0 && wal < 80LL * 1024 * 1024);
    ASSERT_INT_EQ(conf_count(st, "E1"), 31500);
    storage_close(st);
}

int main(int argc, char **argv)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(sq_dir, sizeof(sq_dir), "%s/orchard-storage-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (mkdtemp(sq_dir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    atexit(sq_remove_dir);

    static const struct conformance_backend be = {"sqlite", sq_open_fresh, sq_reopen};
    conformance_init(&be);
    static const struct harness_test tests[] = {
        CONFORMANCE_TESTS,
        CONFORMANCE_RENEWAL_TESTS,
        CONFORMANCE_INVENTORY_TESTS,
        TEST_ENTRY(sqlite_dsn_forms),
        TEST_ENTRY(sqlite_file_private_and_wal),
        TEST_ENTRY(sqlite_survives_kill),
        TEST_ENTRY(sqlite_two_handles),
        TEST_ENTRY(sqlite_checkpoints_in_the_background),
        {NULL, NULL},
    };
    return harness_run(tests, argc, argv);
}
