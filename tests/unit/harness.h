/*
 * A tiny unit-test harness in the spirit of libuv's test/task.h: each test is a function,
 * asserts print both values on failure, and a test binary can run one test by name
 * (`build/tests/core/test_buf name`). Every binary prints one line per test
 * ("ok NAME" / "FAIL NAME") which tests/run.sh counts.
 */
#ifndef ORCHARD_TEST_HARNESS_H
#define ORCHARD_TEST_HARNESS_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int harness_failed;

#define ASSERT(cond)                                                                               \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #cond);           \
            harness_failed = 1;                                                                    \
            return;                                                                                \
        }                                                                                          \
    } while (0)

#define ASSERT_INT_EQ(a, b)                                                                        \
    do {                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                        \
        if (a_ != b_) {                                                                            \
            fprintf(stderr, "%s:%d: %s == %s failed: %lld != %lld\n", __FILE__, __LINE__, #a, #b,  \
                    a_, b_);                                                                       \
            harness_failed = 1;                                                                    \
            return;                                                                                \
        }                                                                                          \
    } while (0)

#define ASSERT_STR_EQ(a, b)                                                                        \
    do {                                                                                           \
        const char *a_ = (a), *b_ = (b);                                                           \
        if (a_ == NULL || b_ == NULL || strcmp(a_, b_) != 0) {                                     \
            fprintf(stderr, "%s:%d: %s == %s failed: \"%s\" != \"%s\"\n", __FILE__, __LINE__, #a,  \
                    #b, a_ ? a_ : "(null)", b_ ? b_ : "(null)");                                   \
            harness_failed = 1;                                                                    \
            return;                                                                                \
        }                                                                                          \
    } while (0)

#define ASSERT_NOT_NULL(p) ASSERT((p) != NULL)

struct harness_test {
    const char *name;
    void (*fn)(void);
};

#define TEST(name) static void name(void)
#define TEST_ENTRY(name)                                                                           \
    {                                                                                              \
#name, name                                                                                \
    }

/* Runs every test (or only argv[1]); returns the process exit code. */
static inline int harness_run(const struct harness_test *tests, int argc, char **argv)
{
    int failures = 0;
    for (const struct harness_test *t = tests; t->name; t++) {
        if (argc > 1 && strcmp(argv[1], t->name) != 0)
            continue;
        harness_failed = 0;
        t->fn();
        printf("%s %s\n", harness_failed ? "FAIL" : "ok", t->name);
        fflush(stdout);
        failures += harness_failed;
    }
    return failures ? 1 : 0;
}

#define TEST_MAIN(...)                                                                             \
    int main(int argc, char **argv)                                                                \
    {                                                                                              \
        static const struct harness_test tests_[] = {__VA_ARGS__, {NULL, NULL}};                   \
        return harness_run(tests_, argc, argv);                                                    \
    }

#endif
