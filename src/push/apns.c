/*
 * The APNs push backend: HTTP/2 over one long-lived TLS connection to the push service,
 * authenticated with the MDM push certificate, many requests multiplexed as concurrent
 * streams (libcurl multi, CURLPIPE_MULTIPLEX). Apple asks providers to keep connections open
 * rather than reconnect per notification; with at most one connection per host and
 * CURLOPT_PIPEWAIT, every request waits for the shared connection instead of opening its own.
 *
 * The connection lives in the multi handle's connection cache between batches. When it drops,
 * the streams in flight fail (status 0, retried by the worker) and the next batch reconnects.
 *
 * TLS is curl's: the client certificate and key are handed over as in-memory PEM blobs, so no
 * OpenSSL header is needed here and the key never touches another file.
 *
 * Easy handles are pooled and reused (their common options set once), so a batch of 1,000
 * pushes allocates only its header lists.
 */
#include <curl/curl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/log.h"
#include "core/mem.h"
#include "push/push.h"

#define APNS_BODY_MAX 512  /* our request body */
#define APNS_RESP_MAX 512  /* an APNs error body is small JSON; more is cut off */
#define APNS_TOKEN_MAX 200 /* hex digits; device tokens are 32 bytes today */
#define APNS_CONNECT_TIMEOUT_MS 10000

struct apns_stream {
    CURL *easy;
    struct apns_stream *next_free;
    struct apns_stream *next_all; /* every stream of the client */
    struct push_msg *msg;
    struct curl_slist *hdrs;
    char *url;
    char body[APNS_BODY_MAX];
    char resp[APNS_RESP_MAX];
    size_t resp_len;
};

struct apns_client {
    struct push_client base; /* first */
    CURLM *multi;
    char *url;
    char *cert_pem, *key_pem, *ca_file;
    int max_streams;
    long timeout_ms;
    struct apns_stream *free_list;
    struct apns_stream *all;
    char curl_err[CURL_ERROR_SIZE];
};

static size_t apns_on_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct apns_stream *s = ud;
    size_t n = size * nmemb, room = sizeof(s->resp) - 1 - s->resp_len;
    memcpy(s->resp + s->resp_len, ptr, n < room ? n : room);
    s->resp_len += n < room ? n : room;
    return n;
}

static size_t apns_on_header(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct apns_stream *s = ud;
    size_t n = size * nmemb;
    static const char name[] = "apns-id:";
    if (n > sizeof(name) - 1 && strncasecmp(ptr, name, sizeof(name) - 1) == 0) {
        const char *v = ptr + sizeof(name) - 1;
        size_t len = n - (sizeof(name) - 1);
        while (len > 0 && (*v == ' ' || *v == '\t'))
            v++, len--;
        while (len > 0 && (v[len - 1] == '\r' || v[len - 1] == '\n' || v[len - 1] == ' '))
            len--;
        size_t cap = sizeof(s->msg->apns_id) - 1;
        memcpy(s->msg->apns_id, v, len < cap ? len : cap);
        s->msg->apns_id[len < cap ? len : cap] = '\0';
    }
    return n;
}

/* A pooled stream, or a new one with the options every request shares. */
static struct apns_stream *apns_stream_get(struct apns_client *c)
{
    struct apns_stream *s = c->free_list;
    if (s != NULL) {
        c->free_list = s->next_free;
        return s;
    }
    s = xcalloc(1, sizeof(*s));
    s->easy = curl_easy_init();
    if (s->easy == NULL) {
        free(s);
        return NULL;
    }
    s->next_all = c->all;
    c->all = s;
    CURL *e = s->easy;
    struct curl_blob cert = {c->cert_pem, strlen(c->cert_pem), CURL_BLOB_NOCOPY};
    struct curl_blob key = {c->key_pem, strlen(c->key_pem), CURL_BLOB_NOCOPY};
    curl_easy_setopt(e, CURLOPT_PRIVATE, s);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_SSLCERT_BLOB, &cert);
    curl_easy_setopt(e, CURLOPT_SSLCERTTYPE, "PEM");
    curl_easy_setopt(e, CURLOPT_SSLKEY_BLOB, &key);
    curl_easy_setopt(e, CURLOPT_SSLKEYTYPE, "PEM");
    if (c->ca_file != NULL)
        curl_easy_setopt(e, CURLOPT_CAINFO, c->ca_file);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)APNS_CONNECT_TIMEOUT_MS);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, c->timeout_ms);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, apns_on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, apns_on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, s);
    return s;
}

static void apns_stream_put(struct apns_client *c, struct apns_stream *s)
{
    curl_slist_free_all(s->hdrs);
    s->hdrs = NULL;
    free(s->url);
    s->url = NULL;
    s->msg = NULL;
    s->next_free = c->free_list;
    c->free_list = s;
}

static int hex_token_ok(const char *t)
{
    size_t n = 0;
    for (; t[n] != '\0'; n++) {
        char ch = t[n];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f')))
            return 0;
    }
    return n > 0 && n <= APNS_TOKEN_MAX && n % 2 == 0;
}

/* Starts one request; 0, or -1 with the message's answer already filled in. */
static int apns_start(struct apns_client *c, struct push_msg *m)
{
    if (!hex_token_ok(m->token)) {
        m->status = 400;
        snprintf(m->reason, sizeof(m->reason), "BadDeviceToken");
        return -1;
    }
    struct apns_stream *s = apns_stream_get(c);
    if (s == NULL) {
        snprintf(m->reason, sizeof(m->reason), "curl_easy_init");
        return -1;
    }
    int blen = push_body(m->magic, s->body, sizeof(s->body));
    if (blen < 0) {
        apns_stream_put(c, s);
        m->status = 400;
        snprintf(m->reason, sizeof(m->reason), "PayloadTooLarge");
        return -1;
    }
    char h[300];
    s->msg = m;
    s->resp_len = 0;
    s->url = xasprintf("%s/3/device/%s", c->url, m->token);
    s->hdrs = curl_slist_append(NULL, "apns-push-type: mdm");
    snprintf(h, sizeof(h), "apns-topic: %s", m->topic);
    s->hdrs = curl_slist_append(s->hdrs, h);
    s->hdrs = curl_slist_append(s->hdrs, "apns-priority: 10");
    snprintf(h, sizeof(h), "apns-expiration: %" PRId64, m->expiration);
    s->hdrs = curl_slist_append(s->hdrs, h);
    s->hdrs = curl_slist_append(s->hdrs, "content-type: application/json");
    curl_easy_setopt(s->easy, CURLOPT_URL, s->url);
    curl_easy_setopt(s->easy, CURLOPT_HTTPHEADER, s->hdrs);
    curl_easy_setopt(s->easy, CURLOPT_POSTFIELDS, s->body);
    curl_easy_setopt(s->easy, CURLOPT_POSTFIELDSIZE, (long)blen);
    CURLMcode mc = curl_multi_add_handle(c->multi, s->easy);
    if (mc != CURLM_OK) {
        snprintf(m->reason, sizeof(m->reason), "%s", curl_multi_strerror(mc));
        apns_stream_put(c, s);
        return -1;
    }
    return 0;
}

static void apns_finish(struct apns_client *c, CURL *easy, CURLcode result)
{
    struct apns_stream *s = NULL;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&s);
    struct push_msg *m = s->msg;
    curl_multi_remove_handle(c->multi, easy);
    if (result == CURLE_OK) {
        long code = 0;
        curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &code);
        m->status = (int)code;
        if (code != 200)
            push_parse_reason(s->resp, s->resp_len, m->reason, sizeof(m->reason));
    } else {
        m->status = 0;
        snprintf(m->reason, sizeof(m->reason), "%s", curl_easy_strerror(result));
    }
    apns_stream_put(c, s);
}

static void apns_send(push_client *pc, struct push_msg *msgs, size_t n)
{
    struct apns_client *c = (struct apns_client *)pc;
    size_t next = 0, active = 0, done = 0;
    while (done < n) {
        while (next < n && active < (size_t)c->max_streams) {
            if (apns_start(c, &msgs[next++]) == 0)
                active++;
            else
                done++;
        }
        int running = 0;
        CURLMcode mc = curl_multi_perform(c->multi, &running);
        if (mc != CURLM_OK) {
            log_error("event=apns_error op=multi_perform err=\"%s\"", curl_multi_strerror(mc));
            break;
        }
        CURLMsg *cm;
        int left;
        while ((cm = curl_multi_info_read(c->multi, &left)) != NULL) {
            if (cm->msg == CURLMSG_DONE) {
                apns_finish(c, cm->easy_handle, cm->data.result);
                active--;
                done++;
            }
        }
        if (done < n && (next >= n || active >= (size_t)c->max_streams))
            curl_multi_poll(c->multi, NULL, 0, 100, NULL);
    }
    /* Only after a multi failure: abandon what is still in flight (status 0 = retry). */
    for (struct apns_stream *s = c->all; s != NULL && done < n; s = s->next_all) {
        if (s->msg != NULL) {
            curl_multi_remove_handle(c->multi, s->easy);
            snprintf(s->msg->reason, sizeof(s->msg->reason), "aborted");
            apns_stream_put(c, s);
        }
    }
}

static void apns_free(push_client *pc)
{
    struct apns_client *c = (struct apns_client *)pc;
    while (c->all != NULL) {
        struct apns_stream *s = c->all;
        c->all = s->next_all;
        curl_multi_remove_handle(c->multi, s->easy);
        curl_easy_cleanup(s->easy);
        curl_slist_free_all(s->hdrs);
        free(s->url);
        free(s);
    }
    curl_multi_cleanup(c->multi);
    free(c->url);
    free(c->cert_pem);
    if (c->key_pem != NULL) {
        memset(c->key_pem, 0, strlen(c->key_pem));
        free(c->key_pem);
    }
    free(c->ca_file);
    free(c);
}

static const struct push_ops apns_ops = {"apns", apns_send, apns_free};

push_client *push_apns_new(const struct push_apns_options *o, char *err, size_t err_len)
{
    if (o->url == NULL || strncmp(o->url, "https://", 8) != 0) {
        snprintf(err, err_len, "apns_url must be an https:// URL");
        return NULL;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        snprintf(err, err_len, "curl_global_init failed");
        return NULL;
    }
    curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    if (!(v->features & CURL_VERSION_HTTP2)) {
        snprintf(err, err_len, "libcurl %s has no HTTP/2 support (APNs requires it)", v->version);
        return NULL;
    }
    struct apns_client *c = xcalloc(1, sizeof(*c));
    c->base.ops = &apns_ops;
    c->url = xstrdup(o->url);
    size_t ul = strlen(c->url);
    while (ul > 8 && c->url[ul - 1] == '/')
        c->url[--ul] = '\0';
    c->cert_pem = xstrdup(o->cert_pem);
    c->key_pem = xstrdup(o->key_pem);
    c->ca_file = o->ca_file != NULL && o->ca_file[0] ? xstrdup(o->ca_file) : NULL;
    c->max_streams = o->max_streams > 0 ? o->max_streams : 1000;
    c->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 15000;
    c->multi = curl_multi_init();
    if (c->multi == NULL) {
        snprintf(err, err_len, "curl_multi_init failed");
        apns_free(&c->base);
        return NULL;
    }
    curl_multi_setopt(c->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    curl_multi_setopt(c->multi, CURLMOPT_MAX_HOST_CONNECTIONS, 1L);
    curl_multi_setopt(c->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, 1L);
    curl_multi_setopt(c->multi, CURLMOPT_MAX_CONCURRENT_STREAMS, (long)c->max_streams);
    return &c->base;
}
