/*
 * The configuration table and its loaders. Every key Orchard reads is declared here once;
 * nothing else parses configuration.
 */
#include "core/config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/mem.h"

#define D(n, t, def, lo, hi, ch, help)                                                             \
    {                                                                                              \
        n, t, def, lo, hi, ch, help                                                                \
    }
#define DAY (24 * 3600)

const struct config_key config_keys[] = {
    D("public_url", CONFIG_STRING, "", 0, 0, NULL,
      "External https URL of this server; every URL a device sees is built from it."),
    D("listen", CONFIG_STRING, "127.0.0.1:8443", 0, 0, NULL, "HOST:PORT to serve HTTPS on."),
    D("storage", CONFIG_STRING, "sqlite:orchard.db", 0, 0, NULL,
      "sqlite:PATH (relative to the data directory) or postgres://..."),
    D("domains", CONFIG_STRING, "", 0, 0, NULL,
      "Organisation domains answered by service discovery, comma separated."),
    D("org_name", CONFIG_STRING, "Orchard", 0, 0, NULL,
      "Organisation name shown on sign-in pages and in profiles."),
    D("tls_cert", CONFIG_STRING, "tls/server.pem", 0, 0, NULL, "Server certificate chain (PEM)."),
    D("tls_key", CONFIG_STRING, "tls/server.key", 0, 0, NULL, "Server private key (PEM)."),
    D("threads", CONFIG_INT, "0", 0, 256, NULL, "HTTP worker threads; 0 = four per core."),
    D("max_body", CONFIG_INT, "4194304", 4096, 268435456, NULL,
      "Largest request body accepted, in bytes (413 beyond): what admin uploads (profiles, "
      "apps, commands) may reach; other routes have smaller limits of their own "
      "(docs/HTTP.md)."),
    D("log_level", CONFIG_ENUM, "info", 0, 0, "debug info warn error",
      "Least severe level logged."),
    D("access_log", CONFIG_BOOL, "true", 0, 1, NULL, "Log one line per HTTP request."),
    D("trusted_proxies", CONFIG_STRING, "", 0, 0, NULL,
      "Addresses or CIDR ranges of TLS-terminating proxies (load balancers): their "
      "X-Forwarded-For names the client (sign-in rate limits, logs), they are exempt from "
      "http_max_connections_per_address, and they may pass a client certificate in "
      "proxy_cert_header."),
    D("proxy_cert_header", CONFIG_STRING, "", 0, 0, NULL,
      "The one header a trusted proxy passes the device's TLS client certificate in (e.g. "
      "Client-Cert or X-SSL-Client-Cert; RFC 9440 :base64-DER: or nginx "
      "$ssl_client_escaped_cert); the proxy must overwrite it. Empty = none (devices sign "
      "their messages anyway). docs/HTTP.md."),
    D("http_header_timeout", CONFIG_DURATION, "20s", 1, 3600, NULL,
      "A connection must complete its TLS handshake and request headers within this (also the "
      "keep-alive idle time)."),
    D("http_body_timeout", CONFIG_DURATION, "60s", 1, 3600, NULL,
      "Total time to receive one request body, however fast the bytes trickle."),
    D("http_max_connections", CONFIG_INT, "10000", 1, 1000000, NULL,
      "Capacity: beyond this many open connections, requests get 503 with Retry-After."),
    D("http_max_connections_per_address", CONFIG_INT, "100", 0, 1000000, NULL,
      "Open connections per client IPv4 address or IPv6 /64 (trusted_proxies exempt); more are "
      "closed at once. 0 = no limit."),
    D("http_body_memory", CONFIG_INT, "268435456", 1048576, 68719476736LL, NULL,
      "Bytes of request bodies held in memory by all requests together; beyond, 503 with "
      "Retry-After."),
    D("metrics_token", CONFIG_SECRET, "", 0, 0, NULL,
      "If set, /metrics requires Authorization: Bearer <token>."),
    D("enroll_token_ttl", CONFIG_DURATION, "1h", 60, 30 * DAY, NULL,
      "How long a session token may wait to be bound to an enrollment."),
    D("scep_challenge_ttl", CONFIG_DURATION, "1h", 60, 30 * DAY, NULL,
      "Lifetime of the one-time SCEP challenge in an enrollment profile."),
    D("scep_cert_days", CONFIG_INT, "365", 1, 3650, NULL,
      "Validity of device identity certificates, in days."),
    D("identity_renew_before", CONFIG_DURATION, "60d", 0, 3650 * DAY, NULL,
      "Renew a device's identity certificate this long before it expires: the scheduler sends "
      "a replacement of the enrollment profile with a fresh SCEP challenge (PROTOCOL.md 10.3) "
      "and retries until the device uses its new certificate or the old one expires; 0 = "
      "never. At most half of scep_cert_days is used."),
    D("signin_rate_limit", CONFIG_INT, "10", 1, 100000, NULL,
      "Failed sign-ins allowed per user and per source address per 15 minutes."),
    D("scep_rate_limit", CONFIG_INT, "20", 1, 100000, NULL,
      "Refused SCEP PKIOperations allowed per source address (IPv6: per /64) per 15 minutes; "
      "beyond it PKIOperation answers 429 before any CA-key work."),
    D("oidc_start_rate_limit", CONFIG_INT, "30", 1, 100000, NULL,
      "Federated (OIDC) sign-ins started per source address (IPv6: per /64) per 15 minutes."),
    D("reauth_interval", CONFIG_DURATION, "0", 0, 3650 * DAY, NULL,
      "Require re-authentication when a session token is older than this; 0 = off."),
    D("reauth_grace", CONFIG_DURATION, "72h", 0, 365 * DAY, NULL,
      "Time a user has to re-authenticate before reauth_failure_action applies."),
    D("reauth_max_failures", CONFIG_INT, "5", 1, 1000, NULL,
      "Failed re-authentication sign-ins before reauth_failure_action applies."),
    D("reauth_failure_action", CONFIG_ENUM, "none", 0, 0, "none remove-sensitive unenroll",
      "What to do when a user fails to re-authenticate."),
    D("history_retention", CONFIG_DURATION, "30d", DAY, 3650 * DAY, NULL,
      "How long finished commands are kept in history."),
    D("audit_retention", CONFIG_DURATION, "400d", DAY, 36500 * (int64_t)DAY, NULL,
      "How long audit events are kept; older ones are deleted by the scheduler."),
    D("apns_url", CONFIG_STRING, "https://api.push.apple.com", 0, 0, NULL,
      "APNs base URL (https://api.sandbox.push.apple.com for sandbox)."),
    D("apns_ca_file", CONFIG_STRING, "", 0, 0, NULL,
      "CA file to verify the APNs server with; empty = system trust store."),
    D("apns_expiration", CONFIG_DURATION, "24h", 0, 30 * DAY, NULL,
      "apns-expiration of MDM pushes, relative to sending."),
    D("apns_proxy", CONFIG_STRING, "", 0, 0, NULL,
      "http://HOST:PORT of an HTTP proxy to reach APNs through (CONNECT tunnel; TLS stays end "
      "to end); empty = direct."),
    D("apns_timeout", CONFIG_DURATION, "15s", 1, 600, NULL,
      "A push unanswered this long is cancelled and retried; an APNs connection silent this long "
      "while pushes are in flight is replaced."),
    D("webhook_url", CONFIG_STRING, "", 0, 0, NULL,
      "https:// URL that receives a signed POST per event (docs/WEBHOOKS.md); empty = off. "
      "http:// only to a loopback address."),
    D("webhook_secret", CONFIG_SECRET, "", 0, 0, NULL,
      "HMAC-SHA256 key for X-Orchard-Signature (16 characters or more; required with "
      "webhook_url)."),
    D("webhook_ca_file", CONFIG_STRING, "", 0, 0, NULL,
      "CA file to verify the webhook receiver with; empty = system trust store."),
    D("inventory_interval", CONFIG_DURATION, "1d", 0, 365 * DAY, NULL,
      "How often each device is asked for its inventory (OS version, passcode, storage, apps, "
      "profiles, certificates; docs/INVENTORY.md); 0 = only at enrollment and on demand."),
    D("repush_interval", CONFIG_DURATION, "24h", 60, 365 * DAY, NULL,
      "Push again devices with pending commands silent for this long."),
    D("required_app_id", CONFIG_INT, "0", 0, 99999999999LL, NULL,
      "App Store ID of the app the server may install without asking (RequiredAppIDForMDM, shown "
      "to the user at enrollment); 0 = none."),
    D("scheduler_interval", CONFIG_DURATION, "30s", 1, 3600, NULL,
      "How often background policies run (re-authentication, history retention)."),
    D("push_batch", CONFIG_INT, "5000", 1, 100000, NULL,
      "Pushes claimed (from the outbox, then bulk pushes) and sent together as one multiplexed "
      "burst."),
    D("job_batch", CONFIG_INT, "250", 1, 5000, NULL,
      "Enrollments a reconciliation job works per transaction (docs/LIBRARY.md): larger batches "
      "commit less often but hold SQLite's write lock longer."),
    D("push_streams", CONFIG_INT, "1000", 1, 10000, NULL,
      "Concurrent HTTP/2 streams on the APNs connection."),
    D("debug_clock", CONFIG_BOOL, "false", 0, 1, NULL,
      "Tests only: lets an API key move the server clock forward (POST /api/v1/debug/clock)."),
    D("debug_faults", CONFIG_BOOL, "false", 0, 1, NULL,
      "Tests only: lets an API key make the Nth next storage call fail "
      "(POST /api/v1/debug/storage-fault)."),
    {NULL, 0, NULL, 0, 0, NULL, NULL},
};

#define NKEYS (sizeof(config_keys) / sizeof(config_keys[0]) - 1)

struct config {
    char *data_dir;
    char *values[NKEYS];
    int64_t numbers[NKEYS];
};

static int key_index(const char *name)
{
    for (size_t i = 0; i < NKEYS; i++) {
        if (strcmp(config_keys[i].name, name) == 0)
            return (int)i;
    }
    return -1;
}

int config_parse_duration(const char *s, int64_t *out)
{
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || v < 0)
        return -1;
    int64_t mult = 1;
    if (*end == 's')
        end++;
    else if (*end == 'm')
        mult = 60, end++;
    else if (*end == 'h')
        mult = 3600, end++;
    else if (*end == 'd')
        mult = 86400, end++;
    if (*end != '\0' || v > INT64_MAX / mult)
        return -1;
    *out = v * mult;
    return 0;
}

static int parse_bool(const char *s, int64_t *out)
{
    if (!strcmp(s, "true") || !strcmp(s, "yes") || !strcmp(s, "on") || !strcmp(s, "1"))
        *out = 1;
    else if (!strcmp(s, "false") || !strcmp(s, "no") || !strcmp(s, "off") || !strcmp(s, "0"))
        *out = 0;
    else
        return -1;
    return 0;
}

static int word_in(const char *word, const char *choices)
{
    size_t n = strlen(word);
    for (const char *p = choices; *p;) {
        const char *sp = strchr(p, ' ');
        size_t len = sp ? (size_t)(sp - p) : strlen(p);
        if (len == n && strncmp(p, word, n) == 0)
            return 1;
        p += len + (sp ? 1 : 0);
    }
    return 0;
}

static int parse_value(const struct config_key *k, const char *v, int64_t *num, char *err,
                       size_t err_len)
{
    char *end = NULL;
    switch (k->type) {
    case CONFIG_STRING:
    case CONFIG_SECRET:
        return 0;
    case CONFIG_ENUM:
        if (word_in(v, k->choices))
            return 0;
        snprintf(err, err_len, "%s: \"%s\" is not one of: %s", k->name, v, k->choices);
        return -1;
    case CONFIG_BOOL:
        if (parse_bool(v, num) == 0)
            return 0;
        snprintf(err, err_len, "%s: \"%s\" is not a boolean (true/false)", k->name, v);
        return -1;
    case CONFIG_INT:
        errno = 0;
        *num = strtoll(v, &end, 10);
        if (errno || end == v || *end) {
            snprintf(err, err_len, "%s: \"%s\" is not an integer", k->name, v);
            return -1;
        }
        break;
    case CONFIG_DURATION:
        if (config_parse_duration(v, num) != 0) {
            snprintf(err, err_len, "%s: \"%s\" is not a duration (e.g. 30s, 15m, 72h, 30d)",
                     k->name, v);
            return -1;
        }
        if (*num == 0 && k->min > 0 && strcmp(k->default_value, "0") == 0)
            return 0;
        break;
    }
    if (*num < k->min || *num > k->max) {
        snprintf(err, err_len, "%s: %s is out of range [%lld, %lld]", k->name, v, (long long)k->min,
                 (long long)k->max);
        return -1;
    }
    return 0;
}

int config_set(config *c, const char *name, const char *value, char *err, size_t err_len)
{
    int i = key_index(name);
    if (i < 0) {
        snprintf(err, err_len, "%s: unknown configuration key", name);
        return -1;
    }
    int64_t num = 0;
    if (parse_value(&config_keys[i], value, &num, err, err_len) != 0)
        return -1;
    free(c->values[i]);
    c->values[i] = xstrdup(value);
    c->numbers[i] = num;
    return 0;
}

config *config_new(const char *data_dir)
{
    config *c = xcalloc(1, sizeof(*c));
    c->data_dir = xstrdup(data_dir ? data_dir : ".");
    char err[256];
    for (size_t i = 0; i < NKEYS; i++) {
        if (config_set(c, config_keys[i].name, config_keys[i].default_value, err, sizeof(err)))
            abort(); /* a bad default is a programming error */
    }
    return c;
}

void config_free(config *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < NKEYS; i++)
        free(c->values[i]);
    free(c->data_dir);
    free(c);
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

int config_load_file(config *c, const char *path, int optional, char *err, size_t err_len)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        if (optional && errno == ENOENT)
            return 0;
        snprintf(err, err_len, "%s: %s", path, strerror(errno));
        return -1;
    }
    char line[4096];
    int lineno = 0, rc = 0;
    while (rc == 0 && fgets(line, sizeof(line), f)) {
        lineno++;
        char *s = trim(line);
        if (*s == '\0' || *s == '#')
            continue;
        char *eq = strchr(s, '=');
        if (eq == NULL) {
            snprintf(err, err_len, "%s:%d: expected `key = value`", path, lineno);
            rc = -1;
            break;
        }
        *eq = '\0';
        char msg[256];
        if (config_set(c, trim(s), trim(eq + 1), msg, sizeof(msg)) != 0) {
            snprintf(err, err_len, "%s:%d: %s", path, lineno, msg);
            rc = -1;
        }
    }
    fclose(f);
    return rc;
}

int config_load_env(config *c, char *err, size_t err_len)
{
    for (size_t i = 0; i < NKEYS; i++) {
        char var[96] = "ORCHARD_";
        size_t n = strlen(var);
        for (const char *p = config_keys[i].name; *p && n < sizeof(var) - 1; p++)
            var[n++] = (char)toupper((unsigned char)*p);
        var[n] = '\0';
        const char *v = getenv(var);
        if (v == NULL)
            continue;
        char msg[256];
        if (config_set(c, config_keys[i].name, v, msg, sizeof(msg)) != 0) {
            snprintf(err, err_len, "%s (from %s)", msg, var);
            return -1;
        }
    }
    return 0;
}

config *config_load(const char *data_dir, char *err, size_t err_len)
{
    config *c = config_new(data_dir);
    char *path = xasprintf("%s/orchard.conf", data_dir);
    int rc = config_load_file(c, path, 0, err, err_len);
    free(path);
    if (rc == 0)
        rc = config_load_env(c, err, err_len);
    if (rc != 0) {
        config_free(c);
        return NULL;
    }
    return c;
}

const char *config_get(const config *c, const char *name)
{
    int i = key_index(name);
    if (i < 0)
        abort(); /* unknown key in code: a programming error */
    return c->values[i];
}

int64_t config_get_int(const config *c, const char *name)
{
    int i = key_index(name);
    if (i < 0)
        abort();
    return c->numbers[i];
}

char *config_get_path(const config *c, const char *name)
{
    const char *v = config_get(c, name);
    if (v[0] == '/' || v[0] == '\0')
        return xstrdup(v);
    return xasprintf("%s/%s", c->data_dir, v);
}

const char *config_data_dir(const config *c)
{
    return c->data_dir;
}

/*
 * Appends a value that may be a URL carrying a password, the storage DSN above all
 * ("postgresql://user:PASSWORD@host/db", "...?password=PASSWORD&..."), with the password
 * replaced by "(redacted)".
 */
static void dump_url_value(buf *b, const char *v)
{
    const char *auth = strstr(v, "://");
    if (auth == NULL) {
        buf_puts(b, v);
        return;
    }
    auth += 3;
    const char *auth_end = auth + strcspn(auth, "/?#");
    const char *at = NULL, *colon = NULL;
    for (const char *p = auth; p < auth_end; p++)
        if (*p == '@')
            at = p;
    for (const char *p = auth; at != NULL && p < at && colon == NULL; p++)
        if (*p == ':')
            colon = p;
    const char *p = v;
    if (colon != NULL) {
        buf_append(b, v, (size_t)(colon + 1 - v));
        buf_puts(b, "(redacted)");
        p = at;
    }
    while (*p != '\0') {
        const char *q = strstr(p, "password=");
        if (q == NULL || q <= v || (q[-1] != '?' && q[-1] != '&')) {
            size_t n = q == NULL ? strlen(p) : (size_t)(q - p) + 1;
            buf_append(b, p, n);
            p += n;
            continue;
        }
        q += strlen("password=");
        buf_append(b, p, (size_t)(q - p));
        buf_puts(b, "(redacted)");
        p = q + strcspn(q, "&#");
    }
}

char *config_dump(const config *c)
{
    buf b;
    buf_init(&b, 0);
    for (size_t i = 0; i < NKEYS; i++) {
        const char *v = c->values[i];
        if (config_keys[i].type == CONFIG_SECRET && v[0])
            v = "(redacted)";
        buf_printf(&b, "%s = ", config_keys[i].name);
        dump_url_value(&b, v);
        buf_puts(&b, "\n");
    }
    return buf_steal(&b, NULL);
}
