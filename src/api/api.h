/*
 * The admin REST API (JSON, `Authorization: Bearer <api key>`), /healthz and /metrics.
 * Handlers decode, call storage or a service, and map errors to statuses.
 */
#ifndef ORCHARD_API_H
#define ORCHARD_API_H

#include <jansson.h>

#include "http/http.h"
#include "storage/storage.h"

void api_handle_healthz(void *ctx, http_request *req, http_response *res);
/* /api/v1/domains and /api/v1/domains/{name} (GET, PUT): api/domains.c */
void api_handle_domains(void *ctx, http_request *req, http_response *res);
void api_handle_domain(void *ctx, http_request *req, http_response *res);
void api_handle_metrics(void *ctx, http_request *req, http_response *res);
/* GET /api/v1/enrollments (filters, cursor pages, ?format=csv) and POST
 * /api/v1/enrollments/{id}/inventory: api/inventory.c, docs/INVENTORY.md. */
void api_handle_enrollments(void *ctx, http_request *req, http_response *res);
void api_handle_enrollment_inventory(void *ctx, http_request *req, http_response *res);
void api_handle_enrollment(void *ctx, http_request *req, http_response *res);
void api_handle_enrollment_commands(void *ctx, http_request *req, http_response *res);
void api_handle_command(void *ctx, http_request *req, http_response *res);
void api_handle_job(void *ctx, http_request *req, http_response *res);
void api_handle_reauthenticate(void *ctx, http_request *req, http_response *res);
void api_handle_user_reauthenticate(void *ctx, http_request *req, http_response *res);
void api_handle_unenroll(void *ctx, http_request *req, http_response *res);
void api_handle_revoke(void *ctx, http_request *req, http_response *res);
void api_handle_audit(void *ctx, http_request *req, http_response *res);
void api_handle_debug_clock(void *ctx, http_request *req, http_response *res);
void api_handle_debug_fault(void *ctx, http_request *req, http_response *res);

/* Push (api/push.c): POST /api/v1/enrollments/{id}/push, POST /api/v1/push (bulk: {"user":
 * EMAIL} | {"domain": D} | {"all": true}), GET /api/v1/pushcert. */
void api_handle_enrollment_push(void *ctx, http_request *req, http_response *res);
void api_handle_push_bulk(void *ctx, http_request *req, http_response *res);
void api_handle_pushcert(void *ctx, http_request *req, http_response *res);

/* Profile and app library (api/library.c, docs/LIBRARY.md): /api/v1/profiles[/{id}],
 * /api/v1/apps[/{id}], /api/v1/assignments[/{id}], /api/v1/enrollments/{id}/library,
 * /api/v1/enrollments/{id}/reconcile. */
void api_handle_profiles(void *ctx, http_request *req, http_response *res);
void api_handle_profile(void *ctx, http_request *req, http_response *res);
void api_handle_apps(void *ctx, http_request *req, http_response *res);
void api_handle_app(void *ctx, http_request *req, http_response *res);
void api_handle_assignments(void *ctx, http_request *req, http_response *res);
void api_handle_assignment(void *ctx, http_request *req, http_response *res);
void api_handle_enrollment_library(void *ctx, http_request *req, http_response *res);
void api_handle_enrollment_reconcile(void *ctx, http_request *req, http_response *res);

struct app;
/* Checks the API key (401 on failure, returns -1); writes "api:<name>" into actor. */
/* Sends j (taking ownership) as the JSON body with the status. */
void api_send_json(http_response *res, int status, json_t *j);

/* The same check as an http_prebody_check (routes.c): the admin API refuses a request without
 * a valid key before reading its body. */
int api_prebody_authorize(void *ctx, http_request *req, http_response *res);
int api_authorize(struct app *app, http_request *req, http_response *res, char *actor,
                  size_t actor_len);
/* An enrollment as the API shows it, with its inventory row (NULL: none yet); full adds the
 * inventory's lists (apps, profiles, certificates). Caller owns the result. */
json_t *api_enrollment_json(struct app *app, const st_enrollment *e, const st_inventory *inv,
                            int full);
/* The push certificate expiry gauge and the push worker's counters, for /metrics. */
void api_push_metrics(struct app *app, buf *out);

#endif
