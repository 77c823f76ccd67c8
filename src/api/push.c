/*
 * Admin API for push: wake one enrollment, wake many through the outbox (a filter expanded
 * inside the database, never loaded here), show the push certificate, and the /metrics lines.
 * Pushes themselves are sent by the worker (push/pusher.h); these handlers only enqueue.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "app.h"
#include "core/log.h"
#include "push/pusher.h"
#include "storage/storage.h"

#define PUSH_WARN_DAYS 30

void api_handle_enrollment_push(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    char actor[128];
    if (api_authorize(app, req, res, actor, sizeof(actor)) != 0)
        return;
    int rc = push_enrollment(app, req->params[0]);
    switch (rc) {
    case ST_OK:
        log_info("event=push_requested rid=%s actor=%s enrollment=%s", req->request_id, actor,
                 req->params[0]);
        api_send_json(res, 202, json_pack("{s:s, s:b}", "id", req->params[0], "queued", 1));
        break;
    case ST_ENOTFOUND:
        http_response_error(res, 404, "no such enrollment");
        break;
    case ST_ECONFLICT:
        http_response_error(res, 409,
                            "the enrollment has no live push token (no TokenUpdate "
                            "yet, token rejected by APNs, or unenrolled)");
        break;
    default:
        http_response_error(res, 503, "storage unavailable");
        break;
    }
}

void api_handle_push_bulk(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    char actor[128];
    if (api_authorize(app, req, res, actor, sizeof(actor)) != 0)
        return;
    json_t *j = json_loadb(req->body, req->body_len, 0, NULL);
    const char *user = json_string_value(json_object_get(j, "user"));
    const char *domain = json_string_value(json_object_get(j, "domain"));
    int all = json_is_true(json_object_get(j, "all"));
    int scope = -1;
    const char *value = NULL;
    if (!json_is_object(j) || json_object_size(j) != 1) {
        scope = -1;
    } else if (user != NULL && user[0] != '\0') {
        scope = ST_PUSH_USER, value = user;
    } else if (domain != NULL && domain[0] != '\0' && strchr(domain, '@') == NULL) {
        scope = ST_PUSH_DOMAIN, value = domain;
    } else if (all) {
        scope = ST_PUSH_ALL;
    }
    if (scope < 0) {
        json_decref(j);
        http_response_error(res, 400,
                            "expected exactly one of {\"user\": EMAIL}, {\"domain\": DOMAIN}, "
                            "{\"all\": true}");
        return;
    }
    int64_t queued = 0;
    int rc = push_filter(app, scope, value, &queued);
    if (rc != ST_OK) {
        json_decref(j);
        http_response_error(res, 503, "storage unavailable");
        return;
    }
    static const char *const scopes[] = {"all", "user", "domain"};
    log_info("event=push_bulk rid=%s actor=%s scope=%s value=%s queued=%lld", req->request_id,
             actor, scopes[scope], value ? value : "-", (long long)queued);
    json_decref(j);
    api_send_json(res, 202, json_pack("{s:I}", "queued", (json_int_t)queued));
}

void api_handle_pushcert(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    char actor[128];
    if (api_authorize(app, req, res, actor, sizeof(actor)) != 0)
        return;
    int64_t left = app->push_not_after - app_now(app);
    api_send_json(res, 200,
                  json_pack("{s:s, s:I, s:I, s:s, s:b}", "topic", app->topic ? app->topic : "",
                            "not_after", (json_int_t)app->push_not_after, "days_left",
                            (json_int_t)(left / 86400), "subject",
                            app->push_subject ? app->push_subject : "", "expiring",
                            left < PUSH_WARN_DAYS * 86400));
}

void api_push_metrics(struct app *app, buf *out)
{
    buf_printf(out,
               "# HELP orchard_push_certificate_expiry_seconds Seconds until the APNs push "
               "certificate expires (negative: expired).\n"
               "# TYPE orchard_push_certificate_expiry_seconds gauge\n"
               "orchard_push_certificate_expiry_seconds %lld\n"
               "# HELP orchard_push_certificate_expiring 1 when the push certificate expires "
               "within 30 days.\n"
               "# TYPE orchard_push_certificate_expiring gauge\n"
               "orchard_push_certificate_expiring %d\n",
               (long long)(app->push_not_after - app_now(app)),
               app->push_not_after - app_now(app) < PUSH_WARN_DAYS * 86400);
    pusher_metrics(app->pusher, out);
}
