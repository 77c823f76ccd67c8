/*
 * The device inventory (issue 15, docs/INVENTORY.md): what Orchard knows about a device stays
 * current instead of being frozen at Authenticate.
 *
 * A round of inventory commands is queued when an enrollment completes (its first TokenUpdate),
 * then every `inventory_interval` by the scheduler (jobs/jobs.c), and on demand
 * (POST /api/v1/enrollments/{id}/inventory). A round asks only what User Enrollment lets a
 * server ask on the enrollment's platform, as the tables generated from Apple's YAML say
 * (ue_rules.h): the DeviceInformation queries Orchard stores that ue_device_query_check()
 * allows, and SecurityInfo, ProfileList, CertificateList and one app list where
 * ue_command_check() allows them. Its commands carry CommandUUIDs starting with
 * ST_INV_UUID_PREFIX, and a round is claimed in storage (storage_inventory_claim) together with
 * its commands: several instances never queue the same round twice, and no round is queued
 * while the previous one is still pending.
 *
 * The answers come back through mdm/connect.c (inventory_on_report), are parsed into typed
 * fields (only the keys the schema lets a user-enrolled device report on its platform are
 * read) and stored; a change of a watched field (OS version, passcode present or compliant)
 * emits the webhook event `enrollment.inventory_changed`.
 *
 * Nothing here is an authorization input: the platform and identity of an enrollment stay what
 * Orchard recorded at enrollment (mdm/platform.h); a device's inventory answers are data to
 * show and filter on, never to decide with. Thread-safe: state lives in the store.
 */
#ifndef ORCHARD_MDM_INVENTORY_H
#define ORCHARD_MDM_INVENTORY_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include <plist/plist.h>

#include "app.h"
#include "mdm/command.h"
#include "mdm/ue_rules.h"

/* At most this many commands in a round (DeviceInformation, SecurityInfo, ProfileList,
 * CertificateList, an app list). */
#define INV_MAX_COMMANDS 5
/* List items kept per list (the count is the device's, the stored list is capped). */
#define INV_MAX_ITEMS 500
/* Inventory commands wait behind the admin's and the library's (higher goes first). */
#define INV_PRIORITY (-10)

/* ---- pure functions (no storage; unit-tested against real device output) ---- */

/*
 * The version key of an OS version string: each of up to three numeric components (capped at
 * 999) weighs 1000 times the next, so "18.10" > "18.4" and "18.4" == "18.4.0":
 * 18.4.1 -> 18004001. Parsing stops at the first character that is neither a digit nor a dot
 * between digits. 0 when s does not start with a digit (unknown).
 */
int64_t inventory_version_key(const char *s);
/*
 * The strict form for a filter value (`os_version_lt=18.4`): 1 to 3 components of 1 to 3
 * digits separated by dots, nothing else. 0 and *key set, or -1.
 */
int inventory_version_parse(const char *s, int64_t *key);

/* "ios", "macos", "visionos" (the API's platform names); NULL for other OSes. */
const char *inventory_platform_name(enum ue_os os);

/*
 * The DeviceInformation queries a round asks on os: those Orchard stores (OS version and build,
 * product, model, model name, device name, capacity) that ue_device_query_check() allows for a
 * user enrollment there. Fills out (borrowed constant strings) and returns how many (<= max).
 */
size_t inventory_queries(enum ue_os os, const char **out, size_t max);

/*
 * Builds the commands of one round for a user enrollment on os (see the top of this file);
 * each is validated with ue_command_validate() and wrapped with a CommandUUID starting with
 * ST_INV_UUID_PREFIX, priority INV_PRIORITY. Fills out[0..n) (release each with
 * mdm_command_cleanup) and returns n (<= INV_MAX_COMMANDS, 0 if the OS allows nothing).
 */
size_t inventory_build_round(enum ue_os os, struct mdm_command out[INV_MAX_COMMANDS]);

/*
 * Parses one acknowledged report of a user-enrolled device on os into out (which it resets:
 * every value unknown; strings and lists owned, release with st_inventory_cleanup). Reads
 * QueryResponses (only the queries inventory_queries() asks on os), SecurityInfo (only the keys
 * ue_securityinfo_keys[os] lists), ProfileList, CertificateList, InstalledApplicationList and
 * ManagedApplicationList (each only if ue_command_check() allows the command on os). Strings
 * that are not short, valid, printable UTF-8 are dropped; lists keep INV_MAX_ITEMS items.
 * Returns the ST_INV_* groups found (0: nothing an inventory stores).
 */
unsigned inventory_parse(plist_t report, enum ue_os os, st_inventory *out);

/*
 * The API's view of an inventory row (an object; NULL inv gives JSON null). full adds the
 * lists (apps, profiles, certificates) when the row has them.
 */
json_t *inventory_json(const st_inventory *inv, int full);

/* ---- services ---- */

/*
 * The first TokenUpdate of an enrollment completed it (mdm/checkin.c): for a device channel of
 * a user enrollment, start its inventory over (seeded with what Authenticate reported) and
 * queue the first round. Failures are logged; enrollment goes on.
 */
void inventory_on_enrollment_complete(struct app *app, const char *enrollment_id);

/*
 * A report was recorded (mdm/connect.c). Returns at once unless uuid starts with
 * ST_INV_UUID_PREFIX; the acknowledged answer to an inventory command queued for this
 * enrollment is parsed (only the part its command asked) and stored, and a change of a watched
 * field emits `enrollment.inventory_changed`. Failures are logged, never answered.
 */
void inventory_on_report(struct app *app, const char *enrollment_id, const char *uuid, int status,
                         plist_t report);

/* The scheduler's part (jobs/jobs.c): queues the rounds that are due, a bounded number per
 * call. */
void inventory_sweep(struct app *app);

/* The command uuids of one round. */
struct inventory_round {
    char uuids[INV_MAX_COMMANDS][37];
    size_t n;
};

/*
 * Queues a round now for enrollment e (the API's on-demand request). ST_OK with the uuids in
 * *out; ST_EEXISTS: a round is still pending; ST_ECONFLICT: e cannot be asked (not a device
 * channel of a user enrollment, not complete, unenrolled, revoked or failed re-authentication;
 * *why says which); ST_ERROR: storage.
 */
int inventory_request(struct app *app, const st_enrollment *e, struct inventory_round *out,
                      const char **why);

#endif
