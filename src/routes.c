/*
 * The route table. Order matters only among patterns that match the same path.
 *
 * Each route names the largest body it really receives (docs/HTTP.md has the table and why),
 * and optionally a check on the headers alone that runs before any body byte is read: the API
 * key for the admin API, "does this request offer any device identity" for the device channel.
 */
#include "routes.h"

#include "api/api.h"
#include "auth/oidc.h"
#include "auth/signin.h"
#include "enroll/enroll.h"
#include "mdm/identity.h"
#include "mdm/mdm.h"

#define KIB 1024
/* Enrollment: CMS-signed MachineInfo, ~5 KB from a real iPhone (fixtures/oreore-ios-mdm). */
#define BODY_ENROLL (64 * KIB)
/* The sign-in form: identifier, password, CSRF token. */
#define BODY_SIGNIN (16 * KIB)
/* SCEP PKIOperation: an enveloped and signed CSR, 3 KB with a 2048-bit key. */
#define BODY_SCEP (64 * KIB)
/* Check-in: Authenticate, TokenUpdate, CheckOut are a few KB. */
#define BODY_CHECKIN (256 * KIB)
/* Command results: ProfileList, CertificateList, InstalledApplicationList reports are the
 * largest (tens to a few hundred KB on a well-stocked device). */
#define BODY_CONNECT (512 * KIB)

/* Admin API routes: the API key is checked from the headers before the body is read (and
 * again by the handler, which needs the key's name for the audit trail). */
#define API(method, pattern, handler, name, body)                                                  \
    {                                                                                              \
        method, pattern, handler, name, body, api_prebody_authorize                                \
    }

const struct http_route orchard_routes[] = {
    {"GET", "/.well-known/com.apple.remotemanagement", enroll_handle_discovery, "discovery",
     HTTP_BODY_NONE, NULL},
    {"POST", PATH_ENROLL "{domain}", enroll_handle_enroll, "enroll", BODY_ENROLL, NULL},
    {"GET", PATH_SIGNIN, signin_handle_get, "signin", HTTP_BODY_NONE, NULL},
    {"POST", PATH_SIGNIN, signin_handle_post, "signin_submit", BODY_SIGNIN, NULL},
    {"GET", PATH_OIDC_CALLBACK, oidc_handle_callback, "oidc_callback", HTTP_BODY_NONE, NULL},
    {"GET", PATH_SCEP, enroll_handle_scep, "scep", HTTP_BODY_NONE, NULL},
    {"POST", PATH_SCEP, enroll_handle_scep, "scep", BODY_SCEP, NULL},
    {"PUT", PATH_CHECKIN, mdm_handle_checkin, "checkin", BODY_CHECKIN, identity_prebody},
    {"PUT", PATH_CONNECT, mdm_handle_connect, "connect", BODY_CONNECT, identity_prebody},
    {"GET", "/healthz", api_handle_healthz, "healthz", HTTP_BODY_NONE, NULL},
    {"GET", "/metrics", api_handle_metrics, "metrics", HTTP_BODY_NONE, NULL},
    API("GET", "/api/v1/enrollments", api_handle_enrollments, "api_enrollments", HTTP_BODY_NONE),
    API("GET", "/api/v1/enrollments/{id}", api_handle_enrollment, "api_enrollment", HTTP_BODY_NONE),
    API("GET", "/api/v1/enrollments/{id}/commands", api_handle_enrollment_commands,
        "api_enrollment_commands", HTTP_BODY_NONE),
    /* A command may carry a whole profile or app configuration. */
    API("POST", "/api/v1/enrollments/{id}/commands", api_handle_enrollment_commands, "api_enqueue",
        HTTP_BODY_UPLOAD),
    API("POST", "/api/v1/enrollments/{id}/reauthenticate", api_handle_reauthenticate,
        "api_reauthenticate", HTTP_BODY_DEFAULT),
    API("POST", "/api/v1/enrollments/{id}/unenroll", api_handle_unenroll, "api_unenroll",
        HTTP_BODY_DEFAULT),
    API("POST", "/api/v1/enrollments/{id}/revoke", api_handle_revoke, "api_revoke",
        HTTP_BODY_DEFAULT),
    API("POST", "/api/v1/enrollments/{id}/push", api_handle_enrollment_push, "api_push",
        HTTP_BODY_DEFAULT),
    /* No body is read (docs/INVENTORY.md); the default cap bounds what a client may send. */
    API("POST", "/api/v1/enrollments/{id}/inventory", api_handle_enrollment_inventory,
        "api_inventory", HTTP_BODY_DEFAULT),
    API("POST", "/api/v1/push", api_handle_push_bulk, "api_push_bulk", HTTP_BODY_DEFAULT),
    API("GET", "/api/v1/pushcert", api_handle_pushcert, "api_pushcert", HTTP_BODY_NONE),
    API("POST", "/api/v1/users/{id}/reauthenticate", api_handle_user_reauthenticate,
        "api_user_reauthenticate", HTTP_BODY_DEFAULT),
    API("GET", "/api/v1/commands/{uuid}", api_handle_command, "api_command", HTTP_BODY_NONE),
    API("GET", "/api/v1/jobs/{id}", api_handle_job, "api_job", HTTP_BODY_NONE),
    API("GET", "/api/v1/audit", api_handle_audit, "api_audit", HTTP_BODY_NONE),
    API("GET", "/api/v1/domains", api_handle_domains, "api_domains", HTTP_BODY_NONE),
    API("GET", "/api/v1/domains/{name}", api_handle_domain, "api_domain", HTTP_BODY_NONE),
    API("PUT", "/api/v1/domains/{name}", api_handle_domain, "api_domain_put", HTTP_BODY_DEFAULT),
    API("GET", "/api/v1/profiles", api_handle_profiles, "api_profiles", HTTP_BODY_NONE),
    API("POST", "/api/v1/profiles", api_handle_profiles, "api_profile_add", HTTP_BODY_UPLOAD),
    API("GET", "/api/v1/profiles/{id}", api_handle_profile, "api_profile", HTTP_BODY_NONE),
    API("PUT", "/api/v1/profiles/{id}", api_handle_profile, "api_profile_replace",
        HTTP_BODY_UPLOAD),
    API("DELETE", "/api/v1/profiles/{id}", api_handle_profile, "api_profile_delete",
        HTTP_BODY_DEFAULT),
    API("GET", "/api/v1/apps", api_handle_apps, "api_apps", HTTP_BODY_NONE),
    API("POST", "/api/v1/apps", api_handle_apps, "api_app_add", HTTP_BODY_UPLOAD),
    API("GET", "/api/v1/apps/{id}", api_handle_app, "api_app", HTTP_BODY_NONE),
    API("PUT", "/api/v1/apps/{id}", api_handle_app, "api_app_replace", HTTP_BODY_UPLOAD),
    API("DELETE", "/api/v1/apps/{id}", api_handle_app, "api_app_delete", HTTP_BODY_DEFAULT),
    API("GET", "/api/v1/assignments", api_handle_assignments, "api_assignments", HTTP_BODY_NONE),
    API("POST", "/api/v1/assignments", api_handle_assignments, "api_assignment_add",
        HTTP_BODY_DEFAULT),
    API("GET", "/api/v1/assignments/{id}", api_handle_assignment, "api_assignment", HTTP_BODY_NONE),
    API("DELETE", "/api/v1/assignments/{id}", api_handle_assignment, "api_assignment_delete",
        HTTP_BODY_DEFAULT),
    API("GET", "/api/v1/enrollments/{id}/library", api_handle_enrollment_library,
        "api_enrollment_library", HTTP_BODY_NONE),
    API("POST", "/api/v1/enrollments/{id}/reconcile", api_handle_enrollment_reconcile,
        "api_enrollment_reconcile", HTTP_BODY_DEFAULT),
    /* Not API(): it must answer 404 to everyone while debug_clock is off (the handler checks
     * the key when it is on); its body is a few bytes. */
    {"POST", "/api/v1/debug/clock", api_handle_debug_clock, "api_debug_clock", 1 * KIB, NULL},
    {"POST", "/api/v1/debug/storage-fault", api_handle_debug_fault, "api_debug_fault", 1 * KIB,
     NULL},
    {NULL, NULL, NULL, NULL, 0, NULL},
};
