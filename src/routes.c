/* The route table. Order matters only among patterns that match the same path. */
#include "routes.h"

#include "api/api.h"
#include "auth/signin.h"
#include "enroll/enroll.h"
#include "mdm/mdm.h"

const struct http_route orchard_routes[] = {
    {"GET", "/.well-known/com.apple.remotemanagement", enroll_handle_discovery, "discovery"},
    {"POST", PATH_ENROLL "{domain}", enroll_handle_enroll, "enroll"},
    {"GET", PATH_SIGNIN, signin_handle_get, "signin"},
    {"POST", PATH_SIGNIN, signin_handle_post, "signin_submit"},
    {"GET", PATH_SCEP, enroll_handle_scep, "scep"},
    {"POST", PATH_SCEP, enroll_handle_scep, "scep"},
    {"PUT", PATH_CHECKIN, mdm_handle_checkin, "checkin"},
    {"PUT", PATH_CONNECT, mdm_handle_connect, "connect"},
    {"GET", "/healthz", api_handle_healthz, "healthz"},
    {"GET", "/metrics", api_handle_metrics, "metrics"},
    {"GET", "/api/v1/enrollments", api_handle_enrollments, "api_enrollments"},
    {"GET", "/api/v1/enrollments/{id}", api_handle_enrollment, "api_enrollment"},
    {"GET", "/api/v1/enrollments/{id}/commands", api_handle_enrollment_commands,
     "api_enrollment_commands"},
    {"POST", "/api/v1/enrollments/{id}/commands", api_handle_enrollment_commands,
     "api_enqueue"},
    {"POST", "/api/v1/enrollments/{id}/reauthenticate", api_handle_reauthenticate,
     "api_reauthenticate"},
    {"POST", "/api/v1/enrollments/{id}/unenroll", api_handle_unenroll, "api_unenroll"},
    {"POST", "/api/v1/users/{id}/reauthenticate", api_handle_user_reauthenticate,
     "api_user_reauthenticate"},
    {"GET", "/api/v1/commands/{uuid}", api_handle_command, "api_command"},
    {"GET", "/api/v1/audit", api_handle_audit, "api_audit"},
    {"POST", "/api/v1/debug/clock", api_handle_debug_clock, "api_debug_clock"},
    {NULL, NULL, NULL, NULL},
};
