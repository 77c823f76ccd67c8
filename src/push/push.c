/*
 * What every push backend shares: the dispatch wrappers, the verdict on an APNs answer, the
 * error-body parser, the backoff schedule and the request body. No I/O here.
 */
#include "push/push.h"

#include <assert.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

void push_send(push_client *pc, struct push_msg *msgs, size_t n)
{
    assert(pc != NULL && (msgs != NULL || n == 0));
    for (size_t i = 0; i < n; i++) {
        msgs[i].status = 0;
        msgs[i].reason[0] = '\0';
        msgs[i].apns_id[0] = '\0';
    }
    if (n > 0)
        pc->ops->send(pc, msgs, n);
}

const char *push_client_name(const push_client *pc)
{
    return pc->ops->name;
}

void push_client_free(push_client *pc)
{
    if (pc != NULL)
        pc->ops->free(pc);
}

enum push_verdict push_classify(int status, const char *reason)
{
    if (status == 200)
        return PUSH_OK;
    /* Apple: 410 means the token is no longer active for the topic. */
    if (status == 410)
        return PUSH_DEAD;
    if (status == 400 && reason != NULL &&
        (strcmp(reason, "BadDeviceToken") == 0 || strcmp(reason, "DeviceTokenNotForTopic") == 0))
        return PUSH_DEAD;
    /* 403 is about our certificate or topic: an operator can fix it, so keep the pushes. */
    if (status == 0 || status == 403 || status == 429 || status >= 500)
        return PUSH_RETRY;
    return PUSH_DROP;
}

void push_parse_reason(const char *body, size_t len, char *out, size_t out_len)
{
    if (out_len == 0)
        return;
    out[0] = '\0';
    if (body == NULL || len == 0)
        return;
    json_t *j = json_loadb(body, len, 0, NULL);
    const char *r = json_string_value(json_object_get(j, "reason"));
    size_t k = 0;
    for (; r != NULL && r[k] != '\0' && k + 1 < out_len; k++)
        out[k] = r[k] > ' ' && r[k] < 0x7f ? r[k] : '_';
    out[k] = '\0';
    json_decref(j);
}

int64_t push_backoff(int attempts, uint32_t rnd)
{
    static const int64_t steps[] = {30, 120, 480, 1800};
    int i = attempts < 1 ? 0 : attempts > 4 ? 3 : attempts - 1;
    /* Jitter spreads a burst of failures (an APNs outage) over time instead of retrying in
     * lockstep: factor 0.8 + 0.4 * rnd / 2^32. */
    int64_t base = steps[i];
    return base * 8 / 10 + (int64_t)(((uint64_t)base * 4 / 10 * rnd) >> 32);
}

int push_body(const char *magic, char *out, size_t out_len)
{
    size_t n = 0;
    const char *head = "{\"mdm\":\"";
    for (const char *p = head; *p; p++) {
        if (n + 1 >= out_len)
            return -1;
        out[n++] = *p;
    }
    for (const unsigned char *p = (const unsigned char *)magic; *p; p++) {
        char esc[8];
        size_t m;
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\', esc[1] = (char)*p, m = 2;
        } else if (*p < 0x20) {
            m = (size_t)snprintf(esc, sizeof(esc), "\\u%04x", *p);
        } else {
            esc[0] = (char)*p, m = 1;
        }
        if (n + m + 1 >= out_len)
            return -1;
        memcpy(out + n, esc, m);
        n += m;
    }
    if (n + 3 > out_len)
        return -1;
    out[n++] = '"';
    out[n++] = '}';
    out[n] = '\0';
    return (int)n;
}
