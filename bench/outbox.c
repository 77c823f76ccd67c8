/*
 * Push storage benchmark: the storage side of the pusher. Creates N pushable enrollments in a
 * fresh store, records a bulk push to all of them (storage_push_enqueue_filter), then drains
 * it with claim(BATCH) + done(all SENT) rounds, as the pusher does, and prints rows per second
 * for claim, done and both. Repeats the enqueue-and-drain ROUNDS times and reports each
 * round and the best.
 *   outbox [-n N] [-b BATCH] [-r ROUNDS] [-s] [DSN]
 * Without a DSN the store is SQLite in a new temporary directory (removed afterwards); a
 * postgresql:// DSN must name an empty database. -s skips creating the enrollments: the store
 * named by DSN already has them (from an earlier run on a copy of the file, say), and every
 * pushable one is counted.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/mem.h"
#include "storage/storage.h"

struct batch {
    int n, cap;
    char **ids, **tokens;
    int64_t *bulks;
    st_push_result *res;
};

static double clock_s(clockid_t id)
{
    struct timespec t;
    clock_gettime(id, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double now_s(void)
{
    return clock_s(CLOCK_MONOTONIC);
}

/* CPU time of this process (user + system): steadier than wall time on a shared machine. */
static double cpu_s(void)
{
    return clock_s(CLOCK_PROCESS_CPUTIME_ID);
}

static int on_claim(const st_push *p, void *ctx)
{
    struct batch *b = ctx;
    if (b->n >= b->cap)
        return 1;
    /* The pusher copies what it needs the same way. */
    b->ids[b->n] = xstrdup(p->enrollment_id);
    b->tokens[b->n] = xstrdup(p->push_token);
    b->bulks[b->n] = p->bulk;
    b->n++;
    return 0;
}

static void batch_clear(struct batch *b)
{
    for (int i = 0; i < b->n; i++) {
        free(b->ids[i]);
        free(b->tokens[i]);
    }
    b->n = 0;
}

static void die(const char *what, int rc)
{
    fprintf(stderr, "outbox: %s failed (rc %d)\n", what, rc);
    exit(1);
}

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15u;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9u;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebu;
    return x ^ (x >> 31);
}

/* Realistic rows: random UUID ids (so the outbox and enrollments are visited in no particular
 * key order), 64-hex tokens and fingerprints, the usual device fields. */
static void populate(storage *st, int n)
{
    double t0 = now_s();
    for (int i = 0; i < n; i++) {
        char id[64], token[65], magic[64], fp[65];
        uint64_t a = mix((uint64_t)i), c = mix(a), d = mix(c), f = mix(d);
        snprintf(id, sizeof(id), "%08X-%04X-4%03X-8%03X-%012" PRIX64, (unsigned)(a >> 32),
                 (unsigned)(a >> 16) & 0xffff, (unsigned)a & 0xfff, (unsigned)(c >> 52),
                 c & 0xffffffffffffu);
        snprintf(token, sizeof(token), "%016" PRIx64 "%016" PRIx64 "%016" PRIx64 "%016" PRIx64, a,
                 c, d, f);
        snprintf(fp, sizeof(fp), "%016" PRIx64 "%016" PRIx64 "%016" PRIx64 "%016" PRIx64, f, d, c,
                 a);
        snprintf(magic, sizeof(magic), "%08X-%04X-4%03X-8%03X-%012" PRIX64, (unsigned)(d >> 32),
                 (unsigned)(d >> 16) & 0xffff, (unsigned)d & 0xfff, (unsigned)(f >> 52),
                 f & 0xffffffffffffu);
        st_enrollment e = {.id = id,
                           .type = ST_ENR_USER,
                           .topic = (char *)"com.apple.mgmt.External.2f1c7e5a-bench",
                           .cert_fingerprint = fp,
                           .product_name = (char *)"iPhone14,5",
                           .os_version = (char *)"18.2",
                           .build_version = (char *)"22C152",
                           .device_name = (char *)"iPhone",
                           .model = (char *)"MLPF3",
                           .auth_state = (char *)"active",
                           .enrolled_at = 100,
                           .last_seen_at = 100};
        int rc = storage_enrollment_authenticate(st, &e);
        if (rc == ST_OK)
            rc = storage_enrollment_token_update(st, id, token, magic, 100);
        if (rc != ST_OK)
            die("enrollment setup", rc);
    }
    printf("created %d pushable enrollments in %.1f s\n", n, now_s() - t0);
}

int main(int argc, char **argv)
{
    int n = 100000, batch = 5000, rounds = 3, skip = 0, opt;
    while ((opt = getopt(argc, argv, "n:b:r:s")) != -1) {
        switch (opt) {
        case 'n':
            n = atoi(optarg);
            break;
        case 'b':
            batch = atoi(optarg);
            break;
        case 'r':
            rounds = atoi(optarg);
            break;
        case 's':
            skip = 1;
            break;
        default:
            fprintf(stderr, "usage: outbox [-n N] [-b BATCH] [-r ROUNDS] [-s] [DSN]\n");
            return 2;
        }
    }
    if (n <= 0 || batch <= 0 || rounds <= 0 || (skip && optind >= argc))
        return 2;
    char tmpl[] = "/tmp/orchard-outbox.XXXXXX", *dir = NULL, *dsn;
    if (optind < argc) {
        dsn = xstrdup(argv[optind]);
    } else {
        dir = mkdtemp(tmpl);
        if (dir == NULL) {
            perror("mkdtemp");
            return 1;
        }
        dsn = xasprintf("sqlite:%s/orchard.db", dir);
    }
    char err[512];
    storage *st = storage_open(dsn, err, sizeof(err));
    if (st == NULL) {
        fprintf(stderr, "outbox: %s\n", err);
        return 1;
    }
    if (!skip)
        populate(st, n);

    struct batch b = {.cap = batch};
    b.ids = xcalloc((size_t)batch, sizeof(*b.ids));
    b.tokens = xcalloc((size_t)batch, sizeof(*b.tokens));
    b.bulks = xcalloc((size_t)batch, sizeof(*b.bulks));
    b.res = xcalloc((size_t)batch, sizeof(*b.res));
    double best = 0;
    int64_t clock = 1000;
    for (int r = 0; r < rounds; r++) {
        int64_t queued = 0;
        clock += 100;
        int rc = storage_push_enqueue_filter(st, ST_PUSH_ALL, NULL, clock, &queued);
        if (rc != ST_OK)
            die("push_enqueue_filter", rc);
        if (skip && r == 0)
            n = (int)queued;
        if (queued != n) {
            fprintf(stderr, "outbox: queued %" PRId64 " rows, expected %d\n", queued, n);
            return 1;
        }
        double tc = 0, td = 0, cc = 0, cd = 0;
        int64_t total = 0;
        for (;;) {
            int claimed = 0;
            double c0 = cpu_s(), t0 = now_s();
            rc = storage_push_claim(st, "bench", clock, 60, batch, on_claim, &b, &claimed);
            double t1 = now_s(), c1 = cpu_s();
            if (rc != ST_OK)
                die("push_claim", rc);
            if (b.n == 0)
                break;
            for (int i = 0; i < b.n; i++)
                b.res[i] = (st_push_result){.enrollment_id = b.ids[i],
                                            .push_token = b.tokens[i],
                                            .outcome = ST_PUSH_SENT,
                                            .bulk = b.bulks[i]};
            double c2 = cpu_s(), t2 = now_s();
            rc = storage_push_done(st, "bench", clock, b.res, (size_t)b.n);
            double t3 = now_s(), c3 = cpu_s();
            if (rc != ST_OK)
                die("push_done", rc);
            tc += t1 - t0;
            td += t3 - t2;
            cc += c1 - c0;
            cd += c3 - c2;
            total += b.n;
            batch_clear(&b);
        }
        int64_t pending = -1;
        if (storage_push_pending(st, &pending) != ST_OK || pending != 0 || total != n) {
            fprintf(stderr, "outbox: drained %" PRId64 " rows, %" PRId64 " left\n", total, pending);
            return 1;
        }
        double rate = (double)total / (tc + td);
        if (rate > best)
            best = rate;
        printf("round %d: %" PRId64 " rows, batch %d: claim %.0f rows/s (%.2f us/row), done %.0f "
               "rows/s (%.2f us/row), total %.0f rows/s (%.2f us/row); cpu us/row: claim %.2f, "
               "done %.2f, total %.2f\n",
               r + 1, total, batch, total / tc, tc * 1e6 / total, total / td, td * 1e6 / total,
               rate, (tc + td) * 1e6 / total, cc * 1e6 / total, cd * 1e6 / total,
               (cc + cd) * 1e6 / total);
        fflush(stdout);
    }
    printf("best total: %.0f rows/s (%.2f us/row)\n", best, 1e6 / best);
    free(b.ids);
    free(b.tokens);
    free(b.bulks);
    free(b.res);
    storage_close(st);
    if (dir != NULL) {
        char *p;
        const char *sfx[] = {"", "-wal", "-shm"};
        for (size_t i = 0; i < 3; i++) {
            p = xasprintf("%s/orchard.db%s", dir, sfx[i]);
            unlink(p);
            free(p);
        }
        rmdir(dir);
    }
    free(dsn);
    return 0;
}
