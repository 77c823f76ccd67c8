/* Trusted proxies: address lists with CIDR ranges, and the client address from X-Forwarded-For. */
#include <string.h>

#include "harness.h"
#include "http/http.h"

TEST(addr_lists_and_cidr_ranges)
{
    const char *list = "10.0.0.0/8, 192.0.2.7 2001:db8::/32,::1";
    ASSERT(http_addr_in_list(list, "10.1.2.3"));
    ASSERT(http_addr_in_list(list, "10.255.255.255"));
    ASSERT(!http_addr_in_list(list, "11.0.0.1"));
    ASSERT(http_addr_in_list(list, "192.0.2.7"));
    ASSERT(!http_addr_in_list(list, "192.0.2.8"));
    ASSERT(http_addr_in_list(list, "2001:db8:1::5"));
    ASSERT(!http_addr_in_list(list, "2001:db9::1"));
    ASSERT(http_addr_in_list(list, "::1"));
    ASSERT(!http_addr_in_list(list, "::2"));
    ASSERT(!http_addr_in_list(list, "not-an-address"));
    ASSERT(!http_addr_in_list(list, ""));
    ASSERT(!http_addr_in_list("", "10.1.2.3"));
    ASSERT(http_addr_in_list("0.0.0.0/0", "203.0.113.9"));
    ASSERT(http_addr_in_list("127.0.0.1/32", "127.0.0.1"));
    ASSERT(!http_addr_in_list("127.0.0.1/32", "127.0.0.2"));
    ASSERT(http_addr_in_list("172.16.0.0/12", "172.31.255.1"));
    ASSERT(!http_addr_in_list("172.16.0.0/12", "172.32.0.1"));
    /* Malformed entries match nothing (and do not stop the scan). */
    ASSERT(!http_addr_in_list("10.0.0.0/33 bogus 10.0.0.0/", "10.0.0.1"));
    ASSERT(http_addr_in_list("bogus/8, 10.0.0.0/8", "10.0.0.1"));
}

TEST(client_addr_from_forwarded_for)
{
    char out[64];
    const char *trusted = "10.0.0.0/8";
    /* An untrusted peer's header is ignored. */
    http_client_addr(trusted, "203.0.113.5", "198.51.100.1", out, sizeof out);
    ASSERT_STR_EQ(out, "203.0.113.5");
    /* A trusted peer: the right-most untrusted hop is the client. */
    http_client_addr(trusted, "10.0.0.2", "198.51.100.1", out, sizeof out);
    ASSERT_STR_EQ(out, "198.51.100.1");
    http_client_addr(trusted, "10.0.0.2", "6.6.6.6, 198.51.100.1, 10.0.0.9", out, sizeof out);
    ASSERT_STR_EQ(out, "198.51.100.1"); /* 6.6.6.6 was written by the client: not believed */
    http_client_addr(trusted, "10.0.0.2", " 2001:db8::7 ", out, sizeof out);
    ASSERT_STR_EQ(out, "2001:db8::7");
    /* Absent or malformed: the peer, or the last good hop. */
    http_client_addr(trusted, "10.0.0.2", NULL, out, sizeof out);
    ASSERT_STR_EQ(out, "10.0.0.2");
    http_client_addr(trusted, "10.0.0.2", "", out, sizeof out);
    ASSERT_STR_EQ(out, "10.0.0.2");
    http_client_addr(trusted, "10.0.0.2", "evil, 10.0.0.5", out, sizeof out);
    ASSERT_STR_EQ(out, "10.0.0.5");
    http_client_addr(trusted, "10.0.0.2", "198.51.100.1,,", out, sizeof out);
    ASSERT_STR_EQ(out, "10.0.0.2");
    /* Every hop trusted: the left-most. */
    http_client_addr(trusted, "10.0.0.2", "10.9.9.9, 10.0.0.5", out, sizeof out);
    ASSERT_STR_EQ(out, "10.9.9.9");
}

TEST_MAIN(TEST_ENTRY(addr_lists_and_cidr_ranges), TEST_ENTRY(client_addr_from_forwarded_for))
