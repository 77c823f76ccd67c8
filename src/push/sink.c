/*
 * The file sink push backend: answers 200 to everything and, when given a path, appends one
 * JSON line per message with what the APNs client would have sent. For unit tests, benchmarks
 * and development without Apple (`apns_url = file:/path/pushes.jsonl`).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/mem.h"
#include "push/push.h"

struct sink_client {
    struct push_client base; /* first */
    FILE *f;
    uint64_t seq;
};

static void sink_send(push_client *pc, struct push_msg *msgs, size_t n)
{
    struct sink_client *s = (struct sink_client *)pc;
    char body[512];
    for (size_t i = 0; i < n; i++) {
        struct push_msg *m = &msgs[i];
        if (push_body(m->magic, body, sizeof(body)) < 0) {
            m->status = 400;
            snprintf(m->reason, sizeof(m->reason), "PayloadTooLarge");
            continue;
        }
        m->status = 200;
        s->seq++;
        snprintf(m->apns_id, sizeof(m->apns_id), "00000000-0000-4000-8000-%012" PRIx64, s->seq);
        if (s->f != NULL) {
            /* The body is already JSON; token and topic are hex / reverse-DNS. */
            fprintf(s->f,
                    "{\"path\":\"/3/device/%s\",\"topic\":\"%s\",\"push_type\":\"mdm\","
                    "\"priority\":10,\"expiration\":%" PRId64 ",\"body\":%s}\n",
                    m->token, m->topic, m->expiration, body);
        }
    }
    if (s->f != NULL)
        fflush(s->f);
}

static void sink_free(push_client *pc)
{
    struct sink_client *s = (struct sink_client *)pc;
    if (s->f != NULL)
        fclose(s->f);
    free(s);
}

static const struct push_ops sink_ops = {"sink", sink_send, sink_free};

push_client *push_sink_new(const char *path, char *err, size_t err_len)
{
    FILE *f = NULL;
    if (path != NULL && (f = fopen(path, "a")) == NULL) {
        snprintf(err, err_len, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    struct sink_client *s = xcalloc(1, sizeof(*s));
    s->base.ops = &sink_ops;
    s->f = f;
    return &s->base;
}
