/*
 * The admin REST API (JSON, `Authorization: Bearer <api key>`), /healthz and /metrics.
 * Handlers decode, call storage or a service, and map errors to statuses.
 */
#ifndef ORCHARD_API_H
#define ORCHARD_API_H

#include "http/http.h"

void api_handle_healthz(void *ctx, http_request *req, http_response *res);
void api_handle_metrics(void *ctx, http_request *req, http_response *res);
void api_handle_enrollments(void *ctx, http_request *req, http_response *res);
void api_handle_enrollment(void *ctx, http_request *req, http_response *res);
void api_handle_enrollment_commands(void *ctx, http_request *req, http_response *res);
void api_handle_command(void *ctx, http_request *req, http_response *res);
void api_handle_reauthenticate(void *ctx, http_request *req, http_response *res);
void api_handle_user_reauthenticate(void *ctx, http_request *req, http_response *res);
void api_handle_unenroll(void *ctx, http_request *req, http_response *res);
void api_handle_audit(void *ctx, http_request *req, http_response *res);
void api_handle_debug_clock(void *ctx, http_request *req, http_response *res);

#endif
