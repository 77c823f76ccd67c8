/* Trusted proxies: address lists with CIDR ranges, the client address from X-Forwarded-For
 * (every line of it), and the client certificate a proxy forwards (mdm/identity.c). */
#include <stdlib.h>
#include <string.h>

#include "crypto/pki.h"
#include "harness.h"
#include "http/http.h"
#include "mdm/identity.h"

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

/* A proxy that appends its own X-Forwarded-For line (HAProxy `option forwardfor`) leaves the
 * client's line first: only the joined list gives the right-most untrusted hop. */
TEST(forwarded_for_lines_are_one_list)
{
    char out[64];
    const char *lines[] = {"6.6.6.6", "198.51.100.1", "10.0.0.9"};
    char *joined = http_forwarded_join(lines, 3);
    ASSERT_STR_EQ(joined, "6.6.6.6, 198.51.100.1, 10.0.0.9");
    http_client_addr("10.0.0.0/8", "10.0.0.2", joined, out, sizeof out);
    ASSERT_STR_EQ(out, "198.51.100.1");
    free(joined);
    const char *two[] = {"6.6.6.6, 7.7.7.7", "198.51.100.2"};
    joined = http_forwarded_join(two, 2);
    http_client_addr("10.0.0.0/8", "10.0.0.2", joined, out, sizeof out);
    ASSERT_STR_EQ(out, "198.51.100.2");
    free(joined);
    const char *one[] = {" 198.51.100.3 "};
    joined = http_forwarded_join(one, 1);
    ASSERT_STR_EQ(joined, " 198.51.100.3 ");
    free(joined);
    ASSERT(http_forwarded_join(lines, 0) == NULL);
    /* An empty line in the middle is a malformed list: the last good hop is kept. */
    const char *gap[] = {"198.51.100.4", "", "10.0.0.7"};
    joined = http_forwarded_join(gap, 3);
    http_client_addr("10.0.0.0/8", "10.0.0.2", joined, out, sizeof out);
    ASSERT_STR_EQ(out, "10.0.0.7");
    free(joined);
}

/* Percent-escapes everything but RFC 3986 unreserved characters (nginx escapes a subset). */
static char *escape(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    char *out = malloc(strlen(s) * 3 + 1), *o = out;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            strchr("-._~", c)) {
            *o++ = (char)c;
        } else {
            *o++ = '%';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        }
    }
    *o = '\0';
    return out;
}

static int same_cert(const char *value, const char *fp)
{
    crypto_cert *c = NULL;
    if (identity_proxy_cert_decode(value, &c) != 0)
        return 0;
    char got[65];
    crypto_cert_fingerprint(c, got);
    crypto_cert_free(c);
    return strcmp(got, fp) == 0;
}

static int refused(const char *value)
{
    crypto_cert *c = NULL;
    int rc = identity_proxy_cert_decode(value, &c);
    crypto_cert_free(c);
    return rc != 0;
}

TEST(proxy_certificate_in_either_encoding_by_shape)
{
    ASSERT_INT_EQ(crypto_init(), 0);
    char *pem = NULL, *key = NULL;
    ASSERT_INT_EQ(crypto_ca_generate("proxy test", 1, &pem, &key), 0);
    crypto_cert *cert = NULL;
    ASSERT_INT_EQ(crypto_cert_from_pem(pem, &cert), 0);
    char fp[65];
    crypto_cert_fingerprint(cert, fp);
    uint8_t *der = NULL;
    size_t len = 0;
    ASSERT_INT_EQ(crypto_cert_to_der(cert, &der, &len), 0);
    char *b64 = crypto_base64_encode(der, len);
    char *rfc9440 = malloc(strlen(b64) + 3);
    sprintf(rfc9440, ":%s:", b64);
    char *escaped = escape(pem);

    ASSERT(same_cert(rfc9440, fp)); /* HAProxy :%[ssl_c_der,base64]:, RFC 9440 */
    ASSERT(same_cert(escaped, fp)); /* nginx $ssl_client_escaped_cert */

    ASSERT(refused(""));
    ASSERT(refused(":"));
    ASSERT(refused("::"));
    ASSERT(refused(":not base64!:"));
    ASSERT(refused(b64));         /* base64 DER without the colons: neither shape */
    ASSERT(refused(rfc9440 + 1)); /* one colon missing */
    ASSERT(refused("-----BEGIN CERTIFICATE-----%0Agarbage%0A-----END CERTIFICATE-----"));
    ASSERT(refused("%2D%2D%2D%2D%2DBEGIN%20PRIVATE%20KEY%2D%2D%2D%2D%2D"));
    char *huge = malloc(20001);
    memset(huge, 'A', 20000);
    huge[0] = huge[19999] = ':';
    huge[20000] = '\0';
    ASSERT(refused(huge));
    free(huge);
    free(escaped);
    free(rfc9440);
    free(b64);
    free(der);
    crypto_cert_free(cert);
    free(pem);
    free(key);
}

TEST_MAIN(TEST_ENTRY(addr_lists_and_cidr_ranges), TEST_ENTRY(client_addr_from_forwarded_for),
          TEST_ENTRY(forwarded_for_lines_are_one_list),
          TEST_ENTRY(proxy_certificate_in_either_encoding_by_shape))
