/*
 * `orchard serve`: the wiring (config -> storage -> identities -> services -> routes) and the
 * process lifecycle. SIGINT/SIGTERM stop accepting, let in-flight requests finish, then close
 * the database cleanly.
 */
#include <ctype.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "auth/oidc.h"
#include "auth/ratelimit.h"
#include "auth/reauth.h"
#include "auth/secret.h"
#include "cli/cli.h"
#include "cli/common.h"
#include "core/fs.h"
#include "core/log.h"
#include "core/mem.h"
#include "crypto/pki.h"
#include "http/http.h"
#include "jobs/jobs.h"
#include "jobs/worker.h"
#include "push/pusher.h"
#include "webhook/webhook.h"
#include "routes.h"

#define SIGNIN_WINDOW (15 * 60)

static void serve_usage(FILE *f)
{
    fprintf(f, "usage: orchard serve --data DIR [--listen HOST:PORT]\n\n"
               "Serves HTTPS: service discovery, enrollment, sign-in, SCEP, check-in, the\n"
               "command channel and the admin API. Stops gracefully on SIGINT/SIGTERM.\n");
}

static void parse_domains(struct app *app)
{
    const char *list = config_get(app->cfg, "domains");
    app->domains = xcalloc(strlen(list) / 2 + 2, sizeof(char *));
    for (const char *p = list; *p;) {
        p += strspn(p, ", ");
        size_t n = strcspn(p, ", ");
        if (n == 0)
            break;
        char *d = xstrndup(p, n);
        for (char *c = d; *c; c++)
            *c = (char)tolower((unsigned char)*c);
        app->domains[app->ndomains++] = d;
        p += n;
    }
}

static int app_setup(struct app *app, const char *data, const char *listen)
{
    char err[512];
    app->cfg = config_load(data, err, sizeof(err));
    if (app->cfg && listen && config_set(app->cfg, "listen", listen, err, sizeof(err)) != 0) {
        config_free(app->cfg);
        app->cfg = NULL;
    }
    if (app->cfg == NULL) {
        fprintf(stderr, "orchard: %s\n", err);
        return -1;
    }
    enum log_level level = LOG_INFO;
    log_parse_level(config_get(app->cfg, "log_level"), &level);
    log_set_level(level);
    const char *url = config_get(app->cfg, "public_url");
    if (strncmp(url, "https://", 8) != 0) {
        fprintf(stderr, "orchard: public_url: \"%s\" must be an https:// URL\n", url);
        return -1;
    }
    app->public_url = xstrdup(url);
    size_t n = strlen(app->public_url);
    while (n > 8 && app->public_url[n - 1] == '/')
        app->public_url[--n] = '\0';
    parse_domains(app);
    app->debug_clock = (int)config_get_int(app->cfg, "debug_clock");
    app->debug_faults = (int)config_get_int(app->cfg, "debug_faults");
    if (secret_init() != 0 || crypto_init() != 0) {
        fprintf(stderr, "orchard: cannot initialise the crypto libraries\n");
        return -1;
    }
    char *dsn = cli_storage_dsn(app->cfg);
    app->st = storage_open(dsn, err, sizeof(err));
    free(dsn);
    if (app->st == NULL) {
        fprintf(stderr, "orchard: storage: %s\n", err);
        return -1;
    }
    if (app_load_identities(app, err, sizeof(err)) != 0) {
        fprintf(stderr, "orchard: %s\n", err);
        return -1;
    }
    app->signin_limit = ratelimit_new_shared(
        app->st, (int)config_get_int(app->cfg, "signin_rate_limit"), SIGNIN_WINDOW);
    app->scep_limit = ratelimit_new_shared(
        app->st, (int)config_get_int(app->cfg, "scep_rate_limit"), SIGNIN_WINDOW);
    app->oidc_start_limit = ratelimit_new_shared(
        app->st, (int)config_get_int(app->cfg, "oidc_start_rate_limit"), SIGNIN_WINDOW);
    app->oidc = oidc_cache_new();
    if (reauth_key_load(app, err, sizeof(err)) != 0) {
        fprintf(stderr, "orchard: %s\n", err);
        return -1;
    }
    return 0;
}

static int start_http(struct app *app)
{
    char err[512];
    char *cert_path = config_get_path(app->cfg, "tls_cert");
    char *key_path = config_get_path(app->cfg, "tls_key");
    char *cert = fs_read_file(cert_path, NULL), *key = fs_read_file(key_path, NULL);
    int rc = -1;
    /* 0 in the config means "no limit"; to the HTTP layer 0 means "the default". */
    int per_address = (int)config_get_int(app->cfg, "http_max_connections_per_address");
    if (per_address == 0)
        per_address = -1;
    if (cert == NULL || key == NULL) {
        fprintf(stderr, "orchard: cannot read %s\n", cert ? key_path : cert_path);
        goto out;
    }
    struct http_server_options o = {
        .listen = config_get(app->cfg, "listen"),
        .cert_pem = cert,
        .key_pem = key,
        .client_ca_pem = app->scep_ca_pem,
        .trusted_proxies = config_get(app->cfg, "trusted_proxies"),
        .proxy_cert_header = config_get(app->cfg, "proxy_cert_header"),
        .threads = (int)config_get_int(app->cfg, "threads"),
        .max_body = (size_t)config_get_int(app->cfg, "max_body"),
        .access_log = (int)config_get_int(app->cfg, "access_log"),
        .header_timeout = (int)config_get_int(app->cfg, "http_header_timeout"),
        .body_timeout = (int)config_get_int(app->cfg, "http_body_timeout"),
        .max_connections = (int)config_get_int(app->cfg, "http_max_connections"),
        .max_connections_per_address = per_address,
        .body_memory = (size_t)config_get_int(app->cfg, "http_body_memory"),
        .routes = orchard_routes,
        .ctx = app};
    app->http = http_server_start(&o, err, sizeof(err));
    if (app->http == NULL) {
        fprintf(stderr, "orchard: %s\n", err);
        goto out;
    }
    rc = 0;
out:
    if (key)
        memset(key, 0, strlen(key));
    free(cert);
    free(key);
    free(cert_path);
    free(key_path);
    return rc;
}

/* The push outbox worker (push/pusher.h); warns early about an expiring push certificate. */
static int start_pusher(struct app *app)
{
    char err[512];
    app->pusher = pusher_start(app, err, sizeof(err));
    if (app->pusher == NULL) {
        fprintf(stderr, "orchard: push: %s\n", err);
        return -1;
    }
    int64_t left = app->push_not_after - app_now(app);
    if (left < 30 * 86400)
        log_warn("event=push_certificate_expiring topic=%s days_left=%lld", app->topic,
                 (long long)(left / 86400));
    return 0;
}

/* The webhook delivery thread (webhook/webhook.h), if webhook_url is set. */
static int start_webhooks(struct app *app)
{
    char err[512];
    app->webhooks = webhooks_start(app, err, sizeof(err));
    if (app->webhooks == NULL && err[0] != '\0') {
        fprintf(stderr, "orchard: %s\n", err);
        return -1;
    }
    return 0;
}

/* The durable-job worker (jobs/worker.h): reconciliation jobs, including those a crashed or
 * stopped instance left behind. */
static int start_job_worker(struct app *app)
{
    app->job_worker = job_worker_start(app);
    if (app->job_worker == NULL) {
        fprintf(stderr, "orchard: cannot start the job worker\n");
        return -1;
    }
    return 0;
}

static int wait_for_signal(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    int sig = 0;
    sigwait(&set, &sig);
    return sig;
}

int cli_serve(int argc, char **argv)
{
    static const struct option longopts[] = {{"data", required_argument, NULL, 'd'},
                                             {"listen", required_argument, NULL, 'l'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    const char *data = NULL, *listen = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'd':
            data = optarg;
            break;
        case 'l':
            listen = optarg;
            break;
        case 'h':
            serve_usage(stdout);
            return 0;
        default:
            serve_usage(stderr);
            return 2;
        }
    }
    if (data == NULL) {
        serve_usage(stderr);
        return 2;
    }
    /* Block the stop signals before any thread starts so only sigwait sees them. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct app app = {0};
    int rc = 1;
    if (app_setup(&app, data, listen) != 0 || start_webhooks(&app) != 0 ||
        start_pusher(&app) != 0 || start_job_worker(&app) != 0 || start_http(&app) != 0)
        goto out;
    log_info("event=serving listen=%s public_url=%s port=%d topic=%s",
             config_get(app.cfg, "listen"), app.public_url, http_server_port(app.http), app.topic);
    jobs *background = jobs_start(&app);
    int sig = wait_for_signal();
    log_info("event=stopping signal=%d", sig);
    http_server_stop(app.http, 10000);
    jobs_stop(background);
    /* After the HTTP server (no more submits), before the pusher it kicks. */
    job_worker_stop(app.job_worker);
    app.job_worker = NULL;
    rc = 0;
out:
    job_worker_stop(app.job_worker); /* set only when start-up failed after it started */
    /* After the HTTP server (nothing kicks it any more), before the store closes. */
    pusher_stop(app.pusher);
    webhooks_stop(app.webhooks);
    ratelimit_free(app.signin_limit);
    ratelimit_free(app.scep_limit);
    ratelimit_free(app.oidc_start_limit);
    secret_wipe(app.reauth_key, sizeof(app.reauth_key));
    oidc_cache_free(app.oidc);
    app_cleanup(&app);
    storage_close(app.st);
    config_free(app.cfg);
    if (rc == 0)
        log_info("event=stopped");
    return rc;
}
