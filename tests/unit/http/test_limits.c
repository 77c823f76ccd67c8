/* The connection limits of src/http/limits.c: per-address counting (IPv4 address, IPv6 /64,
 * trusted proxies exempt), capacity, and the body-memory budget. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <time.h>

#include "harness.h"
#include "http/limits.h"

static struct sockaddr_storage addr(const char *text)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *in = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, text, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
    } else {
        in6->sin6_family = AF_INET6;
        if (inet_pton(AF_INET6, text, &in6->sin6_addr) != 1)
            abort();
    }
    return ss;
}

static int accepts(http_limits *l, const char *text)
{
    struct sockaddr_storage ss = addr(text);
    return limits_accept(l, (struct sockaddr *)&ss);
}

static http_conn *open_from(http_limits *l, const char *text)
{
    struct sockaddr_storage ss = addr(text);
    return limits_conn_open(l, -1, (struct sockaddr *)&ss); /* no socket: shutdown(-1) is a no-op */
}

static struct http_limits_config config(int per_address)
{
    struct http_limits_config c = {.header_timeout = 20,
                                   .body_timeout = 60,
                                   .max_connections = 5,
                                   .max_connections_per_address = per_address,
                                   .body_memory = 1000,
                                   .trusted_proxies = "10.9.0.0/16"};
    return c;
}

TEST(ipv4_counts_per_address)
{
    struct http_limits_config c = config(2);
    http_limits *l = limits_new(&c);
    http_conn *a = open_from(l, "192.0.2.1"), *b = open_from(l, "192.0.2.1");
    ASSERT(!accepts(l, "192.0.2.1"));
    ASSERT(accepts(l, "192.0.2.2"));
    ASSERT(accepts(l, "::ffff:192.0.2.2"));
    ASSERT(!accepts(l, "::ffff:192.0.2.1")); /* IPv4-mapped is the same IPv4 address */
    limits_conn_close(l, a);
    ASSERT(accepts(l, "192.0.2.1"));
    limits_conn_close(l, b);
    limits_free(l);
}

TEST(ipv6_counts_per_64)
{
    struct http_limits_config c = config(2);
    http_limits *l = limits_new(&c);
    http_conn *a = open_from(l, "2001:db8:1:2::1"),
              *b = open_from(l, "2001:db8:1:2:ffff:ffff:ffff:ffff");
    ASSERT(!accepts(l, "2001:db8:1:2:abcd::7")); /* any other address of the same /64 */
    ASSERT(accepts(l, "2001:db8:1:3::1"));
    /* Counted even when the accept check was raced: a third from the /64 is over the limit. */
    http_conn *third = open_from(l, "2001:db8:1:2::3");
    ASSERT(!accepts(l, "2001:db8:1:2::4"));
    limits_conn_close(l, third);
    limits_conn_close(l, a);
    ASSERT(accepts(l, "2001:db8:1:2::4"));
    limits_conn_close(l, b);
    limits_free(l);
}

TEST(trusted_proxies_and_no_limit_are_exempt)
{
    struct http_limits_config c = config(1);
    http_limits *l = limits_new(&c);
    http_conn *p[3];
    for (int i = 0; i < 3; i++)
        p[i] = open_from(l, "10.9.1.1");
    ASSERT(accepts(l, "10.9.1.1"));
    for (int i = 0; i < 3; i++)
        limits_conn_close(l, p[i]);
    limits_free(l);

    c = config(-1);
    l = limits_new(&c);
    http_conn *a = open_from(l, "192.0.2.9"), *b = open_from(l, "192.0.2.9");
    ASSERT(accepts(l, "192.0.2.9"));
    limits_conn_close(l, a);
    limits_conn_close(l, b);
    limits_free(l);
}

TEST(capacity_counts_every_open_connection)
{
    struct http_limits_config c = config(-1);
    http_limits *l = limits_new(&c);
    http_conn *conns[6];
    for (int i = 0; i < 5; i++)
        conns[i] = open_from(l, "192.0.2.1");
    ASSERT(!limits_over_capacity(l));
    conns[5] = open_from(l, "192.0.2.2");
    ASSERT(limits_over_capacity(l));
    limits_conn_close(l, conns[5]);
    ASSERT(!limits_over_capacity(l));
    for (int i = 0; i < 5; i++)
        limits_conn_close(l, conns[i]);
    limits_free(l);
}

TEST(body_memory_budget)
{
    struct http_limits_config c = config(-1);
    http_limits *l = limits_new(&c);
    ASSERT_INT_EQ(limits_body_reserve(l, 600), 0);
    ASSERT_INT_EQ(limits_body_reserve(l, 401), -1);
    ASSERT_INT_EQ(limits_body_reserve(l, 400), 0);
    ASSERT_INT_EQ(limits_body_reserve(l, 1), -1);
    limits_body_release(l, 1000);
    ASSERT_INT_EQ(limits_body_reserve(l, 1000), 0);
    ASSERT_INT_EQ(limits_body_reserve(l, (size_t)-1), -1);
    limits_body_release(l, 1000);
    limits_free(l);
}

TEST(deadlines_follow_the_phase)
{
    struct http_limits_config c = config(-1);
    c.header_timeout = 1;
    c.body_timeout = 1;
    http_limits *l = limits_new(&c);
    http_conn *a = open_from(l, "192.0.2.1");
    ASSERT(!limits_conn_expired(a));
    limits_conn_phase(l, a, HTTP_PHASE_HANDLER); /* no deadline while a handler runs */
    struct timespec ts = {1, 200 * 1000 * 1000};
    nanosleep(&ts, NULL);
    ASSERT(!limits_conn_expired(a));
    limits_conn_phase(l, a, HTTP_PHASE_BODY);
    ASSERT(!limits_conn_expired(a));
    nanosleep(&ts, NULL);
    ASSERT(limits_conn_expired(a));
    limits_conn_close(l, a);
    limits_free(l);
}

TEST_MAIN(TEST_ENTRY(ipv4_counts_per_address), TEST_ENTRY(ipv6_counts_per_64),
          TEST_ENTRY(trusted_proxies_and_no_limit_are_exempt),
          TEST_ENTRY(capacity_counts_every_open_connection), TEST_ENTRY(body_memory_budget),
          TEST_ENTRY(deadlines_follow_the_phase))
