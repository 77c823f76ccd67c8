/*
 * Push clients: what sends one batch of MDM push notifications and reports, per message, what
 * the push service answered. A backend is a const ops table plus a base struct embedded first
 * (like storage): `apns` speaks HTTP/2 to Apple's push service over one long-lived,
 * multiplexed TLS connection authenticated with the push certificate (push/apns.c); `sink`
 * records every message as a JSON line in a file and answers 200 (push/sink.c: tests,
 * benchmarks, development without Apple).
 *
 * Clients know nothing of storage, retries or enrollments: the outbox worker (push/pusher.h)
 * claims rows, sends them through a client and applies push_classify()'s verdicts.
 *
 * Request format (PROTOCOL.md section 11): POST <base>/3/device/<token as lowercase hex>,
 * headers apns-push-type: mdm, apns-topic: <topic>, apns-priority: 10, apns-expiration, body
 * exactly {"mdm":"<PushMagic>"} with no "aps" key.
 *
 * Thread safety: a client is used by one thread at a time (the push worker).
 */
#ifndef ORCHARD_PUSH_H
#define ORCHARD_PUSH_H

#include <stddef.h>
#include <stdint.h>

typedef struct push_client push_client;

/* One notification and, after push_send(), its answer. */
struct push_msg {
    const char *token;  /* lowercase hex device token (borrowed) */
    const char *magic;  /* PushMagic (borrowed) */
    const char *topic;  /* apns-topic: the push certificate's UID (borrowed) */
    int64_t expiration; /* apns-expiration, Unix seconds; 0 = deliver now or never */

    int status;       /* HTTP status; 0 = no answer (connection refused or lost, timeout) */
    char reason[48];  /* "reason" of an APNs error body, or a transport error; "" otherwise */
    char apns_id[48]; /* apns-id of a 200 */
};

struct push_ops {
    const char *name;
    /*
     * Sends n messages (concurrently where the backend can) and fills each one's answer.
     * Returns once every message has an answer. Never fails as a whole: a transport failure
     * is status 0 on the messages it affected.
     */
    void (*send)(push_client *pc, struct push_msg *msgs, size_t n);
    void (*free)(push_client *pc);
};

struct push_client {
    const struct push_ops *ops;
};

struct push_apns_options {
    const char *url;      /* base URL, e.g. https://api.push.apple.com */
    const char *cert_pem; /* client certificate (PEM; copied) */
    const char *key_pem;  /* its private key (unencrypted PEM; copied, wiped on free) */
    const char *ca_file;  /* CA bundle to verify the server with; NULL or "" = system store */
    int max_streams;      /* concurrent HTTP/2 streams on the connection (e.g. 1000) */
    int timeout_ms;       /* per request, connection set-up included */
    const char
        *proxy; /* "http://HOST:PORT": reach APNs through HTTP CONNECT; NULL or "" = direct */
};

/* The HTTP/2 APNs client (libnghttp2 over crypto/tls_client). NULL with a message in err. */
push_client *push_apns_new(const struct push_apns_options *o, char *err, size_t err_len);

/*
 * A sink that appends one JSON line per message ({"path","topic","push_type","expiration",
 * "body"}) to path (NULL: records nothing) and answers 200. NULL if path cannot be opened.
 */
push_client *push_sink_new(const char *path, char *err, size_t err_len);

/* Sends a batch through any backend (see push_ops.send). */
void push_send(push_client *pc, struct push_msg *msgs, size_t n);
/* Frees a client; NULL is fine. */
/* The backend's name ("apns", "file") for log lines. */
const char *push_client_name(const push_client *pc);
void push_client_free(push_client *pc);

/* What to do with a message after its answer. */
enum push_verdict {
    PUSH_OK = 0,    /* accepted */
    PUSH_RETRY = 1, /* 429, 5xx, 403 (our certificate), no answer: try again later */
    PUSH_DEAD = 2,  /* 410 Unregistered, 400 BadDeviceToken / DeviceTokenNotForTopic */
    PUSH_DROP = 3   /* any other 4xx: the request itself is wrong, retrying cannot help */
};

enum push_verdict push_classify(int status, const char *reason);

/*
 * Copies the "reason" member of an APNs error body ({"reason":"BadDeviceToken",...}) into out
 * (truncated, printable ASCII only); "" if the body is not such an object. Never fails.
 */
void push_parse_reason(const char *body, size_t len, char *out, size_t out_len);

/*
 * Backoff before attempt number `attempts` + 1, after `attempts` failures (>= 1): 30 s, 2 m,
 * 8 m, then 30 m, each scaled by a jitter factor in [0.8, 1.2) drawn from rnd (any 32 bits).
 */
int64_t push_backoff(int attempts, uint32_t rnd);

/* Writes the request body {"mdm":"<magic>"} (JSON-escaped) into out; returns its length, or
 * -1 if it does not fit. */
int push_body(const char *magic, char *out, size_t out_len);

#endif
