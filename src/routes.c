/* The route table. Order matters only among patterns that match the same path. */
#include "routes.h"

#include "api/api.h"
#include "auth/oidc.h"
#include "auth/signin.h"
#include "enroll/enroll.h"
#include "mdm/mdm.h"

const struct http_route orchard_routes[] = {
    {"GET", "/.well-known/com.apple.remotemanagement", enroll_handle_discovery, "discovery"},
    {"POST", PATH_ENROLL "{domain}", enroll_handle_enroll, "enroll"},
    {"GET", PATH_SIGNIN, signin_handle_get, "signin"},
    {"POST", PATH_SIGNIN, signin_handle_post, "signin_submit"},
    {"GET", PATH_OIDC_CALLBACK, oidc_handle_callback, "oidc_callback"},
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
    {"POST", "/api/v1/enrollments/{id}/commands", api_handle_enrollment_commands, "api_enqueue"},
    {"POST", "/api/v1/enrollments/{id}/reauthenticate", api_handle_reauthenticate,
     "api_reauthenticate"},
    {"POST", "/api/v1/enrollments/{id}/unenroll", api_handle_unenroll, "api_unenroll"},
    {"POST", "/api/v1/enrollments/{id}/push", api_handle_enrollment_push, "api_push"},
    {"POST", "/api/v1/push", api_handle_push_bulk, "api_push_bulk"},
    {"GET", "/api/v1/pushcert", api_handle_pushcert, "api_pushcert"},
    {"POST", "/api/v1/users/{id}/reauthenticate", api_handle_user_reauthenticate,
     "api_user_reauthenticate"},
    {"GET", "/api/v1/commands/{uuid}", api_handle_command, "api_command"},
    {"GET", "/api/v1/audit", api_handle_audit, "api_audit"},
    {"GET", "/api/v1/domains", api_handle_domains, "api_domains"},
    {"GET", "/api/v1/domains/{name}", api_handle_domain, "api_domain"},
    {"PUT", "/api/v1/domains/{name}", api_handle_domain, "api_domain_put"},
    {"GET", "/api/v1/profiles", api_handle_profiles, "api_profiles"},
    {"POST", "/api/v1/profiles", api_handle_profiles, "api_profile_add"},
    {"GET", "/api/v1/profiles/{id}", api_handle_profile, "api_profile"},
    {"PUT", "/api/v1/profiles/{id}", api_handle_profile, "api_profile_replace"},
    {"DELETE", "/api/v1/profiles/{id}", api_handle_profile, "api_profile_delete"},
    {"GET", "/api/v1/apps", api_handle_apps, "api_apps"},
    {"POST", "/api/v1/apps", api_handle_apps, "api_app_add"},
    {"GET", "/api/v1/apps/{id}", api_handle_app, "api_app"},
    {"DELETE", "/api/v1/apps/{id}", api_handle_app, "api_app_delete"},
    {"GET", "/api/v1/assignments", api_handle_assignments, "api_assignments"},
    {"POST", "/api/v1/assignments", api_handle_assignments, "api_assignment_add"},
    {"GET", "/api/v1/assignments/{id}", api_handle_assignment, "api_assignment"},
    {"DELETE", "/api/v1/assignments/{id}", api_handle_assignment, "api_assignment_delete"},
    {"GET", "/api/v1/enrollments/{id}/library", api_handle_enrollment_library,
     "api_enrollment_library"},
    {"POST", "/api/v1/enrollments/{id}/reconcile", api_handle_enrollment_reconcile,
     "api_enrollment_reconcile"},
    {"POST", "/api/v1/debug/clock", api_handle_debug_clock, "api_debug_clock"},
    {NULL, NULL, NULL, NULL},
};
