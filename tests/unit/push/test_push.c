/*
 * Push client helpers: APNs answer classification, error-body parsing, the backoff schedule,
 * the request body, and the file sink backend (what it records and answers).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "push/push.h"

TEST(push_classify_answers)
{
    ASSERT_INT_EQ(push_classify(200, ""), PUSH_OK);
    ASSERT_INT_EQ(push_classify(410, "Unregistered"), PUSH_DEAD);
    ASSERT_INT_EQ(push_classify(400, "BadDeviceToken"), PUSH_DEAD);
    ASSERT_INT_EQ(push_classify(400, "DeviceTokenNotForTopic"), PUSH_DEAD);
    ASSERT_INT_EQ(push_classify(400, "BadTopic"), PUSH_DROP);
    ASSERT_INT_EQ(push_classify(400, NULL), PUSH_DROP);
    ASSERT_INT_EQ(push_classify(413, "PayloadTooLarge"), PUSH_DROP);
    ASSERT_INT_EQ(push_classify(429, "TooManyRequests"), PUSH_RETRY);
    ASSERT_INT_EQ(push_classify(500, "InternalServerError"), PUSH_RETRY);
    ASSERT_INT_EQ(push_classify(503, "ServiceUnavailable"), PUSH_RETRY);
    ASSERT_INT_EQ(push_classify(403, "ExpiredProviderToken"), PUSH_RETRY);
    ASSERT_INT_EQ(push_classify(0, "Couldn't connect to server"), PUSH_RETRY);
}

TEST(push_parse_reason_bodies)
{
    char r[48];
    const char *b = "{\"reason\":\"Unregistered\",\"timestamp\":1700000000000}";
    push_parse_reason(b, strlen(b), r, sizeof(r));
    ASSERT_STR_EQ(r, "Unregistered");
    b = "{\"reason\":\"BadDeviceToken\"}";
    push_parse_reason(b, strlen(b), r, sizeof(r));
    ASSERT_STR_EQ(r, "BadDeviceToken");
    push_parse_reason("", 0, r, sizeof(r));
    ASSERT_STR_EQ(r, "");
    push_parse_reason("not json", 8, r, sizeof(r));
    ASSERT_STR_EQ(r, "");
    b = "{\"reason\":42}";
    push_parse_reason(b, strlen(b), r, sizeof(r));
    ASSERT_STR_EQ(r, "");
    b = "[\"reason\"]";
    push_parse_reason(b, strlen(b), r, sizeof(r));
    ASSERT_STR_EQ(r, "");
    /* Control characters and spaces never reach a log line; long reasons are cut. */
    b = "{\"reason\":\"a b\\nc\"}";
    push_parse_reason(b, strlen(b), r, sizeof(r));
    ASSERT_STR_EQ(r, "a_b_c");
    char small[6];
    b = "{\"reason\":\"TooManyRequests\"}";
    push_parse_reason(b, strlen(b), small, sizeof(small));
    ASSERT_STR_EQ(small, "TooMa");
    /* Truncated body (the client keeps at most 512 bytes). */
    b = "{\"reason\":\"Unregis";
    push_parse_reason(b, strlen(b), r, sizeof(r));
    ASSERT_STR_EQ(r, "");
}

TEST(push_backoff_schedule)
{
    static const int64_t base[] = {30, 120, 480, 1800, 1800, 1800};
    for (int a = 1; a <= 6; a++) {
        int64_t lo = push_backoff(a, 0), hi = push_backoff(a, UINT32_MAX);
        ASSERT_INT_EQ(lo, base[a - 1] * 8 / 10);
        ASSERT(hi < base[a - 1] * 12 / 10 + 1);
        ASSERT(hi > base[a - 1]);
        int64_t mid = push_backoff(a, 0x80000000u);
        ASSERT_INT_EQ(mid, base[a - 1]);
    }
    ASSERT_INT_EQ(push_backoff(0, 0), 24); /* defensive: treated as the first */
}

TEST(push_body_json)
{
    char b[64];
    ASSERT_INT_EQ(push_body("0E5D7B4C-AAAA", b, sizeof(b)), 23);
    ASSERT_STR_EQ(b, "{\"mdm\":\"0E5D7B4C-AAAA\"}");
    ASSERT(push_body("q\"b\\", b, sizeof(b)) > 0);
    ASSERT_STR_EQ(b, "{\"mdm\":\"q\\\"b\\\\\"}");
    ASSERT(push_body("\x01", b, sizeof(b)) > 0);
    ASSERT_STR_EQ(b, "{\"mdm\":\"\\u0001\"}");
    ASSERT_INT_EQ(push_body("0123456789", b, 12), -1);
    ASSERT_INT_EQ(push_body("", b, sizeof(b)), 10);
}

TEST(push_sink_records)
{
    char path[] = "/tmp/orchard-push-sink-XXXXXX";
    int fd = mkstemp(path);
    ASSERT(fd >= 0);
    close(fd);
    char err[128];
    push_client *pc = push_sink_new(path, err, sizeof(err));
    ASSERT_NOT_NULL(pc);
    struct push_msg m[2] = {
        {.token = "00ff", .magic = "M1", .topic = "com.apple.mgmt.x", .expiration = 5},
        {.token = "aa", .magic = "M2", .topic = "com.apple.mgmt.x"},
    };
    push_send(pc, m, 2);
    ASSERT_INT_EQ(m[0].status, 200);
    ASSERT_INT_EQ(m[1].status, 200);
    ASSERT(m[0].apns_id[0] != '\0');
    push_client_free(pc);
    FILE *f = fopen(path, "r");
    ASSERT_NOT_NULL(f);
    char line[512];
    ASSERT_NOT_NULL(fgets(line, sizeof(line), f));
    ASSERT(strstr(line, "\"path\":\"/3/device/00ff\"") != NULL);
    ASSERT(strstr(line, "\"body\":{\"mdm\":\"M1\"}") != NULL);
    ASSERT(strstr(line, "\"expiration\":5") != NULL);
    ASSERT_NOT_NULL(fgets(line, sizeof(line), f));
    ASSERT(strstr(line, "/3/device/aa") != NULL);
    ASSERT(fgets(line, sizeof(line), f) == NULL);
    fclose(f);
    unlink(path);
    ASSERT(push_sink_new("/nonexistent-dir/x", err, sizeof(err)) == NULL);
    ASSERT(strstr(err, "nonexistent") != NULL);
}

/* The APNs client refuses a non-https base and reports transport failures as status 0. */
TEST(push_apns_unreachable)
{
    char err[128];
    struct push_apns_options o = {.url = "http://x", .cert_pem = "", .key_pem = ""};
    ASSERT(push_apns_new(&o, err, sizeof(err)) == NULL);
    o.url = "https://127.0.0.1:9";
    /* An unusable push identity is refused up front, not at the first push. */
    ASSERT(push_apns_new(&o, err, sizeof(err)) == NULL);
    ASSERT(strstr(err, "client certificate") != NULL);
    o.cert_pem = o.key_pem = NULL; /* no client certificate: enough to reach a closed port */
    o.timeout_ms = 2000;
    push_client *pc = push_apns_new(&o, err, sizeof(err));
    ASSERT_NOT_NULL(pc);
    struct push_msg m[3] = {
        {.token = "00ff", .magic = "M", .topic = "t"},
        {.token = "ZZ", .magic = "M", .topic = "t"}, /* not hex: refused locally */
        {.token = "0a0b", .magic = "M", .topic = "t"},
    };
    push_send(pc, m, 3);
    ASSERT_INT_EQ(m[0].status, 0);
    ASSERT(m[0].reason[0] != '\0');
    ASSERT_INT_EQ(m[1].status, 400);
    ASSERT_STR_EQ(m[1].reason, "BadDeviceToken");
    ASSERT_INT_EQ(m[2].status, 0);
    push_client_free(pc);
}

TEST_MAIN(TEST_ENTRY(push_classify_answers), TEST_ENTRY(push_parse_reason_bodies),
          TEST_ENTRY(push_backoff_schedule), TEST_ENTRY(push_body_json),
          TEST_ENTRY(push_sink_records), TEST_ENTRY(push_apns_unreachable))
