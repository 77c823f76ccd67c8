/* Set-wise push outbox updates: the JSON arrays both backends bind (see push_batch.h). */
#include "storage/push_batch.h"

#include <stdlib.h>
#include <string.h>

#include "core/mem.h"

void st_push_sets_init(st_push_sets *s)
{
    memset(s, 0, sizeof(*s));
    buf_init(&s->sent, 0);
    buf_init(&s->retry, 0);
    buf_init(&s->dead, 0);
    buf_init(&s->del, 0);
}

void st_push_sets_cleanup(st_push_sets *s)
{
    buf_cleanup(&s->sent);
    buf_cleanup(&s->retry);
    buf_cleanup(&s->dead);
    buf_cleanup(&s->del);
}

void st_json_string(buf *b, const char *v)
{
    static const char hex[] = "0123456789abcdef";
    /* Usually nothing to escape (ids, hex tokens): one append. */
    char tmp[128];
    size_t n = 0;
    while (n < sizeof(tmp) - 2 && v[n] != '\0' && (unsigned char)v[n] >= 0x20 && v[n] != '"' &&
           v[n] != '\\')
        n++;
    if (v[n] == '\0') {
        tmp[0] = '"';
        memcpy(tmp + 1, v, n);
        tmp[n + 1] = '"';
        buf_append(b, tmp, n + 2);
        return;
    }
    buf_append(b, "\"", 1);
    const char *run = v;
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        if (*p >= 0x20 && *p != '"' && *p != '\\')
            continue;
        buf_append(b, run, (size_t)((const char *)p - run));
        char esc[6] = {'\\', (char)*p, 0, 0, 0, 0};
        size_t len = 2;
        if (*p < 0x20) {
            memcpy(esc + 1, "u00", 3);
            esc[4] = hex[*p >> 4];
            esc[5] = hex[*p & 15];
            len = 6;
        }
        buf_append(b, esc, len);
        run = (const char *)p + 1;
    }
    buf_append(b, run, strlen(run));
    buf_append(b, "\"", 1);
}

void st_json_int(buf *b, int64_t v)
{
    char tmp[24], *p = tmp + sizeof(tmp);
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (v < 0)
        *--p = '-';
    buf_append(b, p, (size_t)(tmp + sizeof(tmp) - p));
}

/* Opens the next element of a JSON array ("[" for the first, "," after). */
static void json_next(buf *b, size_t *count)
{
    buf_append(b, *count == 0 ? "[" : ",", 1);
    (*count)++;
}

static void json_close(buf *b, size_t count)
{
    if (count > 0)
        buf_append(b, "]", 1);
}

static uint64_t id_hash(const char *s)
{
    uint64_t h = 14695981039346656037u; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211u;
    return h;
}

/* The length of the longest prefix of r[0..n) with distinct enrollment ids (an open-addressing
 * set of the ids seen so far, at most half full). */
static size_t distinct_prefix(const st_push_result *r, size_t n)
{
    if (n < 2)
        return n;
    size_t cap = 4;
    while (cap < 2 * n)
        cap *= 2;
    const char **set = xcalloc(cap, sizeof(*set));
    size_t i;
    for (i = 0; i < n; i++) {
        const char *id = r[i].enrollment_id;
        size_t k = (size_t)id_hash(id) & (cap - 1);
        while (set[k] != NULL && strcmp(set[k], id) != 0)
            k = (k + 1) & (cap - 1);
        if (set[k] != NULL)
            break;
        set[k] = id;
    }
    free(set);
    return i;
}

static void json_retry(st_push_sets *s, const char *id, int64_t due_at, int attempts)
{
    json_next(&s->retry, &s->nretry);
    buf_append(&s->retry, "[", 1);
    st_json_string(&s->retry, id);
    buf_append(&s->retry, ",", 1);
    st_json_int(&s->retry, due_at);
    buf_append(&s->retry, ",", 1);
    st_json_int(&s->retry, attempts);
    buf_append(&s->retry, "]", 1);
}

static void json_dead(st_push_sets *s, const st_push_result *x)
{
    if (x->push_token == NULL)
        return;
    json_next(&s->dead, &s->ndead);
    buf_append(&s->dead, "[", 1);
    st_json_string(&s->dead, x->enrollment_id);
    buf_append(&s->dead, ",", 1);
    st_json_string(&s->dead, x->push_token);
    buf_append(&s->dead, "]", 1);
}

static void fill_outbox(st_push_sets *s, const st_push_result *x, int64_t now)
{
    switch (x->outcome) {
    case ST_PUSH_SENT:
        json_next(&s->sent, &s->nsent);
        st_json_string(&s->sent, x->enrollment_id);
        break;
    case ST_PUSH_RETRY:
        json_retry(s, x->enrollment_id, x->due_at, x->attempts);
        break;
    case ST_PUSH_UNSENT:
        json_retry(s, x->enrollment_id, now, x->attempts);
        break;
    case ST_PUSH_DEAD:
        json_dead(s, x);
        /* fall through */
    default:
        json_next(&s->del, &s->ndel);
        st_json_string(&s->del, x->enrollment_id);
        break;
    }
}

static void fill_bulk(st_push_sets *s, const st_push_result *x)
{
    if (x->outcome == ST_PUSH_UNSENT) {
        s->unsent = 1;
        return;
    }
    /* strcmp compares as unsigned char: the byte order of SQLite's BINARY and "C". */
    if (s->last == NULL || strcmp(x->enrollment_id, s->last) > 0)
        s->last = x->enrollment_id;
    if (x->outcome == ST_PUSH_SENT) {
        json_next(&s->sent, &s->nsent);
        st_json_string(&s->sent, x->enrollment_id);
    } else if (x->outcome == ST_PUSH_RETRY) {
        json_retry(s, x->enrollment_id, x->due_at, x->attempts);
    } else if (x->outcome == ST_PUSH_DEAD) {
        json_dead(s, x);
    }
}

size_t st_push_sets_fill(st_push_sets *s, const st_push_result *r, size_t n, int64_t now)
{
    buf_reset(&s->sent);
    buf_reset(&s->retry);
    buf_reset(&s->dead);
    buf_reset(&s->del);
    s->nsent = s->nretry = s->ndead = s->ndel = 0;
    s->bulk = n > 0 ? r[0].bulk : 0;
    s->last = NULL;
    s->unsent = 0;
    size_t same = 0;
    while (same < n && r[same].bulk == s->bulk)
        same++;
    n = distinct_prefix(r, same);
    for (size_t i = 0; i < n; i++) {
        if (s->bulk == 0)
            fill_outbox(s, &r[i], now);
        else
            fill_bulk(s, &r[i]);
    }
    json_close(&s->sent, s->nsent);
    json_close(&s->retry, s->nretry);
    json_close(&s->dead, s->ndead);
    json_close(&s->del, s->ndel);
    return n;
}
