/* Unit tests for the route matcher in src/http. */
#include "harness.h"
#include "http/http.h"

TEST(exact_and_params)
{
    char scratch[128];
    const char *params[HTTP_MAX_PARAMS];
    int n = 0;
    ASSERT_INT_EQ(http_route_match("/healthz", "/healthz", scratch, sizeof(scratch), params, &n),
                  1);
    ASSERT_INT_EQ(n, 0);
    ASSERT_INT_EQ(http_route_match("/api/v1/enrollments/{id}/commands",
                                   "/api/v1/enrollments/ABC-1/commands", scratch, sizeof(scratch),
                                   params, &n),
                  1);
    ASSERT_INT_EQ(n, 1);
    ASSERT_STR_EQ(params[0], "ABC-1");
}

TEST(no_partial_or_empty_matches)
{
    char scratch[128];
    const char *params[HTTP_MAX_PARAMS];
    int n = 0;
    ASSERT_INT_EQ(http_route_match("/healthz", "/healthz/x", scratch, sizeof(scratch), params, &n),
                  0);
    ASSERT_INT_EQ(http_route_match("/a/{id}", "/a/", scratch, sizeof(scratch), params, &n), 0);
    ASSERT_INT_EQ(http_route_match("/a/{id}", "/a/x/y", scratch, sizeof(scratch), params, &n), 0);
    ASSERT_INT_EQ(http_route_match("/enroll/{d}", "/enrollx", scratch, sizeof(scratch), params, &n),
                  0);
}

TEST(scratch_overflow_is_no_match)
{
    char scratch[4];
    const char *params[HTTP_MAX_PARAMS];
    int n = 0;
    ASSERT_INT_EQ(http_route_match("/a/{id}", "/a/abcdefgh", scratch, sizeof(scratch), params, &n),
                  0);
}

TEST_MAIN(TEST_ENTRY(exact_and_params), TEST_ENTRY(no_partial_or_empty_matches),
          TEST_ENTRY(scratch_overflow_is_no_match))
