/*
 * The profile and app library under User Enrollment's rules (issue 7, PROTOCOL.md 12-13,
 * docs/LIBRARY.md, docs/APPS.md).
 *
 *  - profiles.c: parses an uploaded .mobileconfig (plain or CMS-signed), validates it against
 *    the User Enrollment tables for each target platform (ue_profile_validate), and holds the
 *    ready-made data-separation / BYOD templates of `orchard profile template`.
 *  - apps.c: the app catalogue entry (App Store id, bundle id or manifest URL, managed app
 *    configuration, attributes) and the InstallApplication / InstallEnterpriseApplication /
 *    RemoveApplication commands built with only the keys User Enrollment permits on the
 *    enrollment's platform.
 *  - reconcile.c: desired state (the union of assignments to the enrollment's user, the user's
 *    email domain and the enrollment itself) against installed-or-pending state, enqueueing
 *    only the difference; and the hook that learns installed state from command results.
 *
 * Nothing here talks HTTP: src/api/library.c decodes requests and maps results to statuses.
 * All functions are thread-safe (state lives in the store).
 */
#ifndef ORCHARD_MDM_LIBRARY_H
#define ORCHARD_MDM_LIBRARY_H

#include <stddef.h>
#include <stdint.h>

#include "app.h"
#include "mdm/command.h"
#include "mdm/ue_rules.h"

/* Bit per User Enrollment platform: 1 << UE_OS_IOS, ... */
#define LIB_OS_BIT(os) (1u << (unsigned)(os))
#define LIB_OS_ALL (LIB_OS_BIT(UE_OS_IOS) | LIB_OS_BIT(UE_OS_MACOS) | LIB_OS_BIT(UE_OS_VISIONOS))

/* Room for one validation message (payload, key and reason). */
#define LIB_MSG_MAX 512

/* Largest profile accepted for the library (the API caps the body too). */
#define LIB_PROFILE_MAX (1024 * 1024)

/* ---- profiles (profiles.c) ---- */

/*
 * Parses "ios,macos" / "iOS" / "visionos" into a platform mask. Returns 0, or -1 for an
 * unknown name or a platform without User Enrollment.
 */
int lib_platforms_parse(const char *s, unsigned *mask);
/* Writes "ios,macos,visionos" (the platforms in mask) into buf. */
void lib_platforms_format(unsigned mask, char *buf, size_t len);
/* True if the enrollment's platform is in a stored "ios,macos" list. */
int lib_platforms_has(const char *platforms, enum ue_os os);

/*
 * Prepares an uploaded profile for the library: unwraps a CMS-signed body (the signature is
 * not checked: Orchard re-signs what it sends), parses the plist (bounded), refuses the
 * enrollment profile's identifier, and validates it with ue_profile_validate() for every
 * platform in mask (0: every platform on which all of its payload types exist). Warnings
 * (ignored keys, ...) go to warn, prefixed with the platform. On success fills out->identifier,
 * name, platforms, body (XML), body_len; the caller sets sensitive/sign/created_at and frees
 * with st_profile_cleanup. On failure returns -1 with a message naming the platform, payload
 * type and key in err.
 */
int lib_profile_prepare(const uint8_t *body, size_t len, unsigned mask, ue_warn_fn warn,
                        void *warn_ctx, st_profile *out, char *err, size_t err_len);

/* A ready-made profile template (`orchard profile template NAME`). */
struct lib_template {
    const char *name;
    const char *description;
    unsigned platforms; /* where it validates for User Enrollment */
};

/* The templates, terminated by a NULL name. */
const struct lib_template *lib_templates(void);
/* The template's profile as XML (malloc'd, NUL-terminated), or NULL for an unknown name. */
char *lib_template_xml(const char *name, size_t *len);

/* ---- apps (apps.c) ---- */

/*
 * Decodes a POST /api/v1/apps body: {"itunes_store_id":N} | {"bundle_id":"..."} |
 * {"manifest_url":"https://..."} plus optional "bundle_id" (with either of the others),
 * "configuration":{...}, "attributes":{...}, "sensitive":bool, "remove_on_unenroll":bool,
 * "purchase_method":0|1, "install_as_managed":bool. Builds the install command for each
 * platform and reports through warn the keys User Enrollment does not permit there (they are
 * left out). Fills out (identifier, itunes_store_id, manifest_url, spec, sensitive); -1 with a
 * message in err when the body is invalid or no platform can install the app.
 */
int lib_app_prepare(const char *json, size_t len, ue_warn_fn warn, void *warn_ctx, st_app *out,
                    char *err, size_t err_len);

/*
 * The install command for an app on os: InstallEnterpriseApplication for a manifest on macOS,
 * otherwise InstallApplication, with only the keys User Enrollment permits there (the others
 * are reported through warn and left out), validated with ue_command_validate(). Returns the
 * Command dictionary (caller frees) or NULL with a message in err.
 */
plist_t lib_app_install_command(const st_app *a, enum ue_os os, ue_warn_fn warn, void *warn_ctx,
                                char *err, size_t err_len);

/* ---- commands and reconciliation (reconcile.c) ---- */

/*
 * Wraps a Command dictionary (borrowed) into a full command after validating it for a user
 * enrollment on os. The CommandUUID is a version-8 UUID (RFC 9562, custom) so the report hook
 * can recognise library commands without a lookup (lib_command_uuid_is_ours).
 */
int lib_command_wrap(plist_t command, enum ue_os os, int user_enrollment, int sensitive,
                     struct mdm_command *out, char *err, size_t err_len);
int lib_command_uuid_is_ours(const char *uuid);

struct lib_reconcile_stats {
    int enrollments; /* enrollments reconciled */
    int installs;    /* Install* commands enqueued */
    int removals;    /* Remove* commands enqueued */
    int errors;      /* items that could not be handled (logged) */
};

/*
 * Brings one enrollment to its desired state: enqueues InstallProfile/InstallApplication for
 * assigned items that are neither installed nor pending, RemoveProfile/RemoveApplication for
 * items Orchard installed that are no longer assigned (never the enrollment profile), and
 * nothing when both agree. Only complete enrollments (TokenUpdate seen, not unenrolled) are
 * reconciled. Pushes the device when something was enqueued. Returns 0 or -1 (storage).
 */
int lib_reconcile(struct app *app, const char *enrollment_id, struct lib_reconcile_stats *stats);

/*
 * What the enrollments of one batch (a page of a reconciliation job, jobs/worker.h) share: each
 * library item is read once, its install command is built (validated, signed) once per platform
 * and copied with a fresh CommandUUID, each user is read once; commands are logged at debug
 * level only. push: 1 = an enrollment that got a command gets a push (an outbox row); 0 = the
 * caller pushes (the worker sends one bulk push for a user's or a domain's job).
 * Not thread-safe: one batch per thread.
 */
typedef struct lib_batch lib_batch;
lib_batch *lib_batch_new(int push);
void lib_batch_free(lib_batch *b);

/*
 * lib_reconcile for an enrollment record the caller read (a job's page; it is not read again),
 * sharing b's lookups. Meant to run inside a storage_tx, whose commit is what counts: a storage
 * failure inside breaks it. Returns 0, or -1 on a storage failure.
 */
int lib_reconcile_enrollment(struct app *app, lib_batch *b, const st_enrollment *e,
                             struct lib_reconcile_stats *stats);

/*
 * The enrollment completed (first TokenUpdate after an Authenticate): forget installed state
 * of any earlier enrollment under the same id (the device removed it with the old profile) and
 * reconcile.
 */
void lib_on_enrollment_complete(struct app *app, const char *enrollment_id);

/*
 * Called by the command channel after a report was recorded. Does nothing (no storage access)
 * unless the report answers a library command (version-8 CommandUUID) or carries a ProfileList
 * or ManagedApplicationList result; then updates the installed state and, for lists,
 * reconciles. report is the device's plist (borrowed).
 */
void lib_on_report(struct app *app, const char *enrollment_id, const char *uuid, int status,
                   plist_t report);

#endif
