/* Webhook configuration checks: which receiver URLs are allowed, and the secret's minimum. */
#include <stdio.h>
#include <string.h>

#include "core/config.h"
#include "harness.h"
#include "webhook/webhook.h"

TEST(webhook_url_schemes_and_loopback)
{
    ASSERT(webhook_url_allowed("https://hooks.example.com/orchard"));
    ASSERT(webhook_url_allowed("HTTPS://10.0.0.1:8443/x"));
    ASSERT(!webhook_url_allowed("https://"));
    ASSERT(webhook_url_allowed("http://127.0.0.1:9000/hook"));
    ASSERT(webhook_url_allowed("http://127.8.9.10/"));
    ASSERT(webhook_url_allowed("http://localhost:8080"));
    ASSERT(webhook_url_allowed("http://[::1]:8080/hook"));
    /* Plain HTTP elsewhere, or to a name that only looks like a loopback address. */
    ASSERT(!webhook_url_allowed("http://192.0.2.1/hook"));
    ASSERT(!webhook_url_allowed("http://127.example.com/hook"));
    ASSERT(!webhook_url_allowed("http://127.0.0.1.nip.io/hook"));
    ASSERT(!webhook_url_allowed("http://[::1].example/hook"));
    ASSERT(!webhook_url_allowed("http://localhost.example.com/"));
    ASSERT(!webhook_url_allowed("ftp://127.0.0.1/"));
    ASSERT(!webhook_url_allowed("hooks.example.com"));
}

TEST(webhook_config_requires_a_long_secret)
{
    char err[256] = "";
    config *c = config_new("/nonexistent");
    ASSERT_NOT_NULL(c);
    ASSERT_INT_EQ(webhook_check_config(c, err, sizeof err), 0); /* off */
    ASSERT_INT_EQ(config_set(c, "webhook_url", "https://hooks.example.com/x", err, sizeof err), 0);
    ASSERT_INT_EQ(webhook_check_config(c, err, sizeof err), -1);
    ASSERT(strstr(err, "webhook_secret") != NULL);
    ASSERT_INT_EQ(config_set(c, "webhook_secret", "too-short", err, sizeof err), 0);
    ASSERT_INT_EQ(webhook_check_config(c, err, sizeof err), -1);
    ASSERT_INT_EQ(config_set(c, "webhook_secret", "0123456789abcdef", err, sizeof err), 0);
    ASSERT_INT_EQ(webhook_check_config(c, err, sizeof err), 0);
    ASSERT_INT_EQ(config_set(c, "webhook_url", "http://192.0.2.1/x", err, sizeof err), 0);
    ASSERT_INT_EQ(webhook_check_config(c, err, sizeof err), -1);
    ASSERT(strstr(err, "webhook_url") != NULL);
    config_free(c);
}

TEST_MAIN(TEST_ENTRY(webhook_url_schemes_and_loopback),
          TEST_ENTRY(webhook_config_requires_a_long_secret))
