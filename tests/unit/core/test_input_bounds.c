/*
 * Bounds of two parsers of request bodies (docs/PARSERS.md): url-encoded forms (core/url.c, the
 * sign-in page, before authentication) and JSON (jansson's json_loadb, admin API bodies and
 * identity-provider answers). A form is scanned in one linear pass per field with output no
 * larger than its input; jansson refuses nesting beyond 2048 and, at that depth, needs well under
 * 1 MiB of stack, so a worker thread (8 MiB) is safe. Both are checked on 4 MiB bodies, the
 * default max_body, and on a 1 MiB-stack thread.
 */
#include <jansson.h>
#include <pthread.h>
#include <time.h>

#include "core/url.h"
#include "harness.h"

#define BODY (4u << 20)

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void *on_small_stack(void *(*fn)(void *), void *arg)
{
    pthread_attr_t attr;
    pthread_t t;
    void *ret = NULL;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 1024 * 1024);
    if (pthread_create(&t, &attr, fn, arg) == 0)
        pthread_join(t, &ret);
    pthread_attr_destroy(&attr);
    return ret;
}

static void *form_job(void *arg)
{
    const char *body = arg;
    static const char *const fields[] = {"csrf", "user-identifier", "password"};
    intptr_t found = 0;
    for (size_t i = 0; i < 3; i++) {
        char *v = url_form_field(body, BODY, fields[i]);
        found += v != NULL;
        free(v);
    }
    return (void *)found;
}

TEST(hostile_forms_are_linear)
{
    char *body = malloc(BODY);
    /* a million empty fields, then escapes everywhere, then one huge value */
    const char *fills[] = {"&", "%41", "password=%"};
    for (size_t k = 0; k < 3; k++) {
        size_t n = strlen(fills[k]);
        for (size_t i = 0; i + n <= BODY; i += n)
            memcpy(body + i, fills[k], n);
        memset(body + BODY / n * n, '&', BODY - BODY / n * n);
        double t0 = now_s();
        (void)on_small_stack(form_job, body);
        ASSERT(now_s() - t0 < 1.0);
    }
    memcpy(body, "password=", 9);
    memset(body + 9, 'a', BODY - 9);
    char *v = url_form_field(body, BODY, "password");
    ASSERT_NOT_NULL(v);
    ASSERT_INT_EQ(strlen(v), BODY - 9);
    free(v);
    /* %00 never reaches a C string */
    ASSERT(url_decode("a%00b", 5, 1) == NULL);
    free(body);
}

struct json_job {
    size_t depth;
    int parsed;
};

static void *json_job(void *arg)
{
    struct json_job *j = arg;
    char *s = malloc(2 * j->depth);
    memset(s, '[', j->depth);
    memset(s + j->depth, ']', j->depth);
    json_error_t err;
    json_t *v = json_loadb(s, 2 * j->depth, 0, &err);
    j->parsed = v != NULL;
    json_decref(v);
    free(s);
    return NULL;
}

TEST(json_nesting_is_capped_and_fits_a_small_stack)
{
    struct json_job ok2048 = {2048, 0}, over = {2049, 1}, huge = {BODY / 2, 1};
    on_small_stack(json_job, &ok2048);
    on_small_stack(json_job, &over);
    double t0 = now_s();
    on_small_stack(json_job, &huge);
    ASSERT_INT_EQ(ok2048.parsed, 1);
    ASSERT_INT_EQ(over.parsed, 0);
    ASSERT_INT_EQ(huge.parsed, 0);
    ASSERT(now_s() - t0 < 1.0);
}

TEST_MAIN(TEST_ENTRY(hostile_forms_are_linear),
          TEST_ENTRY(json_nesting_is_capped_and_fits_a_small_stack))
