/*
 * The device inventory: which commands a round asks (per platform, from the generated User
 * Enrollment tables), how their answers become typed fields, and when rounds are queued.
 * See inventory.h for the contract and docs/INVENTORY.md for the behaviour an admin sees.
 */
#include "mdm/inventory.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/mem.h"
#include "crypto/pki.h"
#include "mdm/mdm.h"
#include "mdm/platform.h"
#include "plist/pl.h"
#include "push/pusher.h"
#include "webhook/webhook.h"

/* Longest string value kept from a device (names, versions, identifiers). */
#define INV_TEXT_MAX 256
/* Rounds started per scheduler tick, in pages: a fleet that falls due at once (after an
 * upgrade, or a long outage) is asked over several ticks instead of in one burst. */
#define INV_SWEEP_PAGE 200
#define INV_SWEEP_MAX 2000
/* due_at when inventory_interval is 0: never scheduled again. */
#define INV_NEVER ((int64_t)1 << 62)

/* ---- versions ---- */

int64_t inventory_version_key(const char *s)
{
    if (s == NULL || *s < '0' || *s > '9')
        return 0;
    int64_t key = 0;
    int parts = 0;
    while (parts < 3 && *s >= '0' && *s <= '9') {
        int64_t v = 0;
        while (*s >= '0' && *s <= '9') {
            if (v < 1000)
                v = v * 10 + (*s - '0');
            s++;
        }
        key = key * 1000 + (v > 999 ? 999 : v);
        parts++;
        if (s[0] != '.' || s[1] < '0' || s[1] > '9')
            break;
        s++;
    }
    for (; parts < 3; parts++)
        key *= 1000;
    return key;
}

int inventory_version_parse(const char *s, int64_t *key)
{
    int parts = 0, digits = 0;
    for (const char *p = s; p && *p; p++) {
        if (*p >= '0' && *p <= '9') {
            if (++digits > 3)
                return -1;
        } else if (*p == '.' && digits > 0 && parts < 2) {
            parts++;
            digits = 0;
        } else {
            return -1;
        }
    }
    if (s == NULL || digits == 0)
        return -1;
    *key = inventory_version_key(s);
    return 0;
}

const char *inventory_platform_name(enum ue_os os)
{
    switch (os) {
    case UE_OS_IOS:
        return "ios";
    case UE_OS_MACOS:
        return "macos";
    case UE_OS_VISIONOS:
        return "visionos";
    default:
        return NULL;
    }
}

/* ---- what a round asks ---- */

/* The DeviceInformation queries whose answers Orchard stores; the schema decides which of them
 * a round really asks on each platform (inventory_queries). */
static const char *const wanted_queries[] = {
    "OSVersion", "BuildVersion", "ProductName",    "Model",
    "ModelName", "DeviceName",   "DeviceCapacity", "AvailableDeviceCapacity",
};
#define N_WANTED (sizeof(wanted_queries) / sizeof(wanted_queries[0]))

static int query_allowed(const char *q, enum ue_os os)
{
    return ue_device_query_check(q, os, NULL, 0) == 0;
}

size_t inventory_queries(enum ue_os os, const char **out, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < N_WANTED && n < max; i++)
        if (query_allowed(wanted_queries[i], os))
            out[n++] = wanted_queries[i];
    return n;
}

static int command_allowed(const char *request_type, enum ue_os os)
{
    return ue_command_check(request_type, os, NULL, 0) == 0;
}

/* The app list of a round: InstalledApplicationList carries versions (and in User Enrollment
 * lists only managed apps); where User Enrollment forbids it (macOS), ManagedApplicationList. */
static const char *app_list_command(enum ue_os os)
{
    if (command_allowed("InstalledApplicationList", os))
        return "InstalledApplicationList";
    if (command_allowed("ManagedApplicationList", os))
        return "ManagedApplicationList";
    return NULL;
}

/* Validates cmd (taken over) for os and wraps it as an inventory command into *out. */
static int wrap(plist_t cmd, enum ue_os os, struct mdm_command *out)
{
    char err[256];
    memset(out, 0, sizeof(*out));
    const char *rt = pl_get_string(cmd, "RequestType");
    if (ue_command_validate(cmd, os, NULL, NULL, err, sizeof(err)) != 0) {
        /* The tables were consulted to build it; this is a bug, not input. */
        log_error("event=inventory_command_invalid type=%s os=%s err=\"%s\"", rt, ue_os_name(os),
                  err);
        plist_free(cmd);
        return -1;
    }
    crypto_uuid(out->uuid);
    memcpy(out->uuid, ST_INV_UUID_PREFIX, ST_INV_UUID_PREFIX_LEN);
    plist_t full = plist_new_dict();
    pl_set_string(full, "CommandUUID", out->uuid);
    out->request_type = xstrdup(rt);
    plist_dict_set_item(full, "Command", cmd);
    out->xml = pl_to_xml(full, &out->xml_len);
    plist_free(full);
    out->priority = INV_PRIORITY;
    out->push = 1;
    return 0;
}

static plist_t command_of(const char *request_type)
{
    plist_t cmd = plist_new_dict();
    pl_set_string(cmd, "RequestType", request_type);
    return cmd;
}

size_t inventory_build_round(enum ue_os os, struct mdm_command out[INV_MAX_COMMANDS])
{
    size_t n = 0;
    const char *queries[N_WANTED];
    size_t nq = inventory_queries(os, queries, N_WANTED);
    if (nq > 0 && command_allowed("DeviceInformation", os)) {
        plist_t cmd = command_of("DeviceInformation");
        plist_t arr = plist_new_array();
        for (size_t i = 0; i < nq; i++)
            plist_array_append_item(arr, plist_new_string(queries[i]));
        plist_dict_set_item(cmd, "Queries", arr);
        n += wrap(cmd, os, &out[n]) == 0;
    }
    static const char *const lists[] = {"SecurityInfo", "ProfileList", "CertificateList"};
    for (size_t i = 0; i < sizeof(lists) / sizeof(lists[0]); i++)
        if (command_allowed(lists[i], os))
            n += wrap(command_of(lists[i]), os, &out[n]) == 0;
    const char *apps = app_list_command(os);
    if (apps != NULL) {
        plist_t cmd = command_of(apps);
        /* Managed apps are what a user enrollment may see anyway; say so where it is a key. */
        if (strcmp(apps, "InstalledApplicationList") == 0 &&
            ue_command_check_key(apps, "ManagedAppsOnly", os, PLIST_BOOLEAN, NULL, 0) == 0)
            pl_set_bool(cmd, "ManagedAppsOnly", 1);
        n += wrap(cmd, os, &out[n]) == 0;
    }
    return n;
}

/* ---- parsing ---- */

/* Valid UTF-8 without control characters, 1 to INV_TEXT_MAX bytes: what the API and the CSV
 * export can show as it is. */
static int text_ok(const char *s)
{
    if (s == NULL || *s == '\0' || strlen(s) > INV_TEXT_MAX)
        return 0;
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        int n = *p < 0x80             ? 0
                : (*p & 0xE0) == 0xC0 ? 1
                : (*p & 0xF0) == 0xE0 ? 2
                : (*p & 0xF8) == 0xF0 ? 3
                                      : -1;
        if (n < 0 || (n == 0 && (*p < 0x20 || *p == 0x7F)))
            return 0;
        if (n == 1 && *p < 0xC2)
            return 0; /* overlong */
        uint32_t cp = n == 0 ? *p : n == 1 ? (*p & 0x1Fu) : n == 2 ? (*p & 0x0Fu) : (*p & 0x07u);
        for (int i = 1; i <= n; i++) {
            if ((p[i] & 0xC0) != 0x80)
                return 0;
            cp = cp << 6 | (p[i] & 0x3Fu);
        }
        if ((n == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0x80 && cp < 0xA0))
            return 0;
        p += n + 1;
    }
    return 1;
}

/* A copy of dict[key] if it is acceptable text, else NULL. */
static char *text_of(plist_t dict, const char *key)
{
    const char *s = pl_get_string(dict, key);
    return text_ok(s) ? xstrdup(s) : NULL;
}

/* Adds key: dict[key] to obj if it is acceptable text. */
static void json_text(json_t *obj, const char *key, plist_t dict, const char *from)
{
    const char *s = pl_get_string(dict, from);
    if (text_ok(s))
        json_object_set_new(obj, key, json_string(s));
}

/* DeviceCapacity and AvailableDeviceCapacity are gigabytes, real or integer; stored as whole
 * megabytes (1 GB = 1000 MB, as Apple counts storage). -1 if absent or absurd. */
static int64_t megabytes_of(plist_t dict, const char *key)
{
    plist_t n = plist_dict_get_item(dict, key);
    double gb = -1;
    if (n && plist_get_node_type(n) == PLIST_REAL) {
        plist_get_real_val(n, &gb);
    } else if (n && plist_get_node_type(n) == PLIST_UINT) {
        uint64_t v = 0;
        plist_get_uint_val(n, &v);
        gb = v <= 1000000000u ? (double)v : -1;
    }
    if (!(gb >= 0 && gb <= 1e9)) /* also NaN */
        return -1;
    return (int64_t)(gb * 1000.0 + 0.5); /* gb >= 0: rounds to nearest */
}

static int in_list(const char *const *list, const char *name)
{
    for (; list && *list; list++)
        if (strcmp(*list, name) == 0)
            return 1;
    return 0;
}

static void parse_device(plist_t q, enum ue_os os, st_inventory *out)
{
    /* Only what a round asks on os is read: an answer to a query that User Enrollment does not
     * allow there (SerialNumber, UDID, ...) is never stored, whoever sent it. */
    if (query_allowed("OSVersion", os) && (out->os_version = text_of(q, "OSVersion")) != NULL)
        out->os_key = inventory_version_key(out->os_version);
    if (query_allowed("BuildVersion", os))
        out->build_version = text_of(q, "BuildVersion");
    if (query_allowed("ProductName", os))
        out->product_name = text_of(q, "ProductName");
    if (query_allowed("Model", os))
        out->model = text_of(q, "Model");
    if (query_allowed("ModelName", os))
        out->model_name = text_of(q, "ModelName");
    if (query_allowed("DeviceName", os))
        out->device_name = text_of(q, "DeviceName");
    if (query_allowed("DeviceCapacity", os))
        out->capacity_mb = megabytes_of(q, "DeviceCapacity");
    if (query_allowed("AvailableDeviceCapacity", os))
        out->available_mb = megabytes_of(q, "AvailableDeviceCapacity");
}

static void parse_security(plist_t s, enum ue_os os, st_inventory *out)
{
    const char *const *keys = ue_securityinfo_keys[os];
    if (in_list(keys, "PasscodePresent"))
        out->passcode_present = pl_get_bool(s, "PasscodePresent");
    if (in_list(keys, "PasscodeCompliant"))
        out->passcode_compliant = pl_get_bool(s, "PasscodeCompliant");
}

/* A list as the JSON text stored in the inventory row (takes arr). */
static char *dump_list(json_t *arr)
{
    char *s = json_dumps(arr, JSON_COMPACT);
    json_decref(arr);
    return s;
}

static json_t *profile_item(plist_t d)
{
    json_t *o = json_object();
    json_text(o, "identifier", d, "PayloadIdentifier");
    json_text(o, "name", d, "PayloadDisplayName");
    json_text(o, "uuid", d, "PayloadUUID");
    plist_t v = pl_get_typed(d, "PayloadVersion", PLIST_UINT);
    if (v) {
        uint64_t u = 0;
        plist_get_uint_val(v, &u);
        json_object_set_new(o, "version", json_integer((json_int_t)(u > 1000000 ? 0 : u)));
    }
    return o;
}

static json_t *cert_item(plist_t d)
{
    json_t *o = json_object();
    json_text(o, "common_name", d, "CommonName");
    int id = pl_get_bool(d, "IsIdentity");
    if (id >= 0)
        json_object_set_new(o, "is_identity", json_boolean(id));
    size_t len = 0;
    const uint8_t *der = pl_get_data(d, "Data", &len);
    if (der && len > 0 && len <= 64 * 1024) {
        char hex[65];
        crypto_sha256_hex(der, len, hex);
        json_object_set_new(o, "sha256", json_string(hex));
        crypto_cert *c = NULL;
        time_t nb = 0, na = 0;
        if (crypto_cert_from_der(der, len, &c) == 0 && crypto_cert_validity(c, &nb, &na) == 0)
            json_object_set_new(o, "not_after", json_integer((json_int_t)na));
        crypto_cert_free(c);
    }
    return o;
}

static json_t *installed_app_item(plist_t d)
{
    json_t *o = json_object();
    json_text(o, "identifier", d, "Identifier");
    json_text(o, "name", d, "Name");
    json_text(o, "short_version", d, "ShortVersion");
    json_text(o, "version", d, "Version");
    return o;
}

/* An array of dictionaries as a JSON list of item(d); *count counts the dictionaries. */
static char *array_list(plist_t arr, json_t *(*item)(plist_t d), int *count)
{
    json_t *out = json_array();
    uint32_t n = plist_array_get_size(arr);
    *count = 0;
    for (uint32_t i = 0; i < n; i++) {
        plist_t d = plist_array_get_item(arr, i);
        if (plist_get_node_type(d) != PLIST_DICT)
            continue;
        if (++*count <= INV_MAX_ITEMS)
            json_array_append_new(out, item(d));
    }
    return dump_list(out);
}

/* ManagedApplicationList: bundle id -> {Status, ...}. */
static char *managed_app_list(plist_t dict, int *count)
{
    json_t *out = json_array();
    plist_dict_iter it = NULL;
    plist_dict_new_iter(dict, &it);
    *count = 0;
    for (;;) {
        char *key = NULL;
        plist_t v = NULL;
        plist_dict_next_item(dict, it, &key, &v);
        if (key == NULL)
            break;
        if (plist_get_node_type(v) == PLIST_DICT && ++*count <= INV_MAX_ITEMS) {
            json_t *o = json_object();
            if (text_ok(key))
                json_object_set_new(o, "identifier", json_string(key));
            json_text(o, "status", v, "Status");
            json_array_append_new(out, o);
        }
        free(key);
    }
    free(it);
    return dump_list(out);
}

static void inventory_blank(st_inventory *out)
{
    memset(out, 0, sizeof(*out));
    out->capacity_mb = out->available_mb = -1;
    out->passcode_present = out->passcode_compliant = -1;
    out->app_count = out->profile_count = out->cert_count = -1;
}

unsigned inventory_parse(plist_t report, enum ue_os os, st_inventory *out)
{
    unsigned groups = 0;
    plist_t v;
    inventory_blank(out);
    if (report == NULL || plist_get_node_type(report) != PLIST_DICT || os >= UE_OS_COUNT)
        return 0;
    if ((v = pl_get_typed(report, "QueryResponses", PLIST_DICT)) != NULL &&
        command_allowed("DeviceInformation", os)) {
        parse_device(v, os, out);
        groups |= ST_INV_DEVICE;
    }
    if ((v = pl_get_typed(report, "SecurityInfo", PLIST_DICT)) != NULL &&
        command_allowed("SecurityInfo", os)) {
        parse_security(v, os, out);
        groups |= ST_INV_SECURITY;
    }
    if ((v = pl_get_typed(report, "ProfileList", PLIST_ARRAY)) != NULL &&
        command_allowed("ProfileList", os)) {
        out->profiles = array_list(v, profile_item, &out->profile_count);
        groups |= ST_INV_PROFILES;
    }
    if ((v = pl_get_typed(report, "CertificateList", PLIST_ARRAY)) != NULL &&
        command_allowed("CertificateList", os)) {
        out->certs = array_list(v, cert_item, &out->cert_count);
        groups |= ST_INV_CERTS;
    }
    if ((v = pl_get_typed(report, "InstalledApplicationList", PLIST_ARRAY)) != NULL &&
        command_allowed("InstalledApplicationList", os)) {
        out->apps = array_list(v, installed_app_item, &out->app_count);
        groups |= ST_INV_APPS;
    } else if ((v = pl_get_typed(report, "ManagedApplicationList", PLIST_DICT)) != NULL &&
               command_allowed("ManagedApplicationList", os)) {
        out->apps = managed_app_list(v, &out->app_count);
        groups |= ST_INV_APPS;
    }
    return groups;
}

/* ---- JSON ---- */

static json_t *str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

static json_t *int_or_null(int64_t v, int64_t none)
{
    return v == none ? json_null() : json_integer((json_int_t)v);
}

static json_t *bool_or_null(int v)
{
    return v < 0 ? json_null() : json_boolean(v);
}

/* A stored list (JSON text written by inventory_parse) as JSON; null if absent or damaged. */
static json_t *list_json(const char *text)
{
    json_t *j = text ? json_loads(text, 0, NULL) : NULL;
    if (j != NULL && !json_is_array(j)) {
        json_decref(j);
        j = NULL;
    }
    return j ? j : json_null();
}

json_t *inventory_json(const st_inventory *inv, int full)
{
    if (inv == NULL)
        return json_null();
    json_t *o = json_object();
    json_object_set_new(o, "os_version", str_or_null(inv->os_version));
    json_object_set_new(o, "build_version", str_or_null(inv->build_version));
    json_object_set_new(o, "product_name", str_or_null(inv->product_name));
    json_object_set_new(o, "model", str_or_null(inv->model));
    json_object_set_new(o, "model_name", str_or_null(inv->model_name));
    json_object_set_new(o, "device_name", str_or_null(inv->device_name));
    json_object_set_new(o, "storage_capacity_mb", int_or_null(inv->capacity_mb, -1));
    json_object_set_new(o, "storage_available_mb", int_or_null(inv->available_mb, -1));
    json_object_set_new(o, "passcode_present", bool_or_null(inv->passcode_present));
    json_object_set_new(o, "passcode_compliant", bool_or_null(inv->passcode_compliant));
    json_object_set_new(o, "app_count", int_or_null(inv->app_count, -1));
    json_object_set_new(o, "profile_count", int_or_null(inv->profile_count, -1));
    json_object_set_new(o, "certificate_count", int_or_null(inv->cert_count, -1));
    if (full) {
        json_object_set_new(o, "apps", list_json(inv->apps));
        json_object_set_new(o, "profiles", list_json(inv->profiles));
        json_object_set_new(o, "certificates", list_json(inv->certs));
    }
    json_object_set_new(o, "updated_at", json_integer((json_int_t)inv->updated_at));
    json_object_set_new(o, "requested_at", json_integer((json_int_t)inv->requested_at));
    json_object_set_new(o, "next_at",
                        inv->due_at >= INV_NEVER ? json_null()
                                                 : json_integer((json_int_t)inv->due_at));
    return o;
}

/* ---- rounds ---- */

static int64_t next_due(struct app *app, int64_t now)
{
    int64_t every = config_get_int(app->cfg, "inventory_interval");
    return every > 0 ? now + every : INV_NEVER;
}

/* Queues a round for e if its row's round is still `round`, and pushes if asked to; fills out
 * (may be NULL). */
static int start_round(struct app *app, const st_enrollment *e, int64_t round, int push,
                       struct inventory_round *out)
{
    enum ue_os os = mdm_platform_of(e->product_name, e->model);
    struct mdm_command cmds[INV_MAX_COMMANDS];
    st_command rows[INV_MAX_COMMANDS];
    int64_t now = app_now(app);
    size_t n = inventory_build_round(os, cmds);
    for (size_t i = 0; i < n; i++)
        rows[i] = (st_command){.uuid = cmds[i].uuid,
                               .enrollment_id = e->id,
                               .request_type = cmds[i].request_type,
                               .body = cmds[i].xml,
                               .body_len = cmds[i].xml_len,
                               .priority = cmds[i].priority,
                               .created_at = now};
    int rc = storage_inventory_claim(app->st, e->id, round, now, next_due(app, now),
                                     inventory_platform_name(os), rows, n);
    if (rc == ST_OK) {
        if (out != NULL) {
            out->n = n;
            for (size_t i = 0; i < n; i++)
                memcpy(out->uuids[i], cmds[i].uuid, sizeof(out->uuids[i]));
        }
        log_info("event=inventory_queued enrollment=%s os=%s commands=%zu", e->id, ue_os_name(os),
                 n);
        /* A device without a live token is fine: it fetches the round on its next check-in. */
        if (push && n > 0)
            push_enrollment(app, e->id);
    }
    for (size_t i = 0; i < n; i++)
        mdm_command_cleanup(&cmds[i]);
    return rc;
}

/* A new row seeded with what the enrollment's Authenticate reported, due now. */
static int reset_row(struct app *app, const st_enrollment *e)
{
    st_inventory x;
    inventory_blank(&x);
    enum ue_os os = mdm_platform_of(e->product_name, e->model);
    x.enrollment_id = e->id;
    x.platform = (char *)inventory_platform_name(os);
    x.os_version = text_ok(e->os_version) ? e->os_version : NULL;
    x.os_key = inventory_version_key(x.os_version);
    x.build_version = text_ok(e->build_version) ? e->build_version : NULL;
    x.product_name = text_ok(e->product_name) ? e->product_name : NULL;
    x.model = text_ok(e->model) ? e->model : NULL;
    x.device_name = text_ok(e->device_name) ? e->device_name : NULL;
    x.due_at = app_now(app);
    return storage_inventory_reset(app->st, &x);
}

/* Why e cannot be asked, or NULL if it can. */
static const char *not_askable(const st_enrollment *e)
{
    if (e->type != ST_ENR_USER)
        return "inventory is collected on the device channel of a user enrollment";
    if (e->unenrolled_at)
        return "the enrollment has been unenrolled";
    if (e->token_updated_at == 0)
        return "the enrollment is not complete (no TokenUpdate yet)";
    if (e->auth_state && (strcmp(e->auth_state, MDM_STATE_REVOKED) == 0 ||
                          strcmp(e->auth_state, "reauth_failed") == 0))
        return "the enrollment is revoked or failed re-authentication";
    return NULL;
}

void inventory_on_enrollment_complete(struct app *app, const char *enrollment_id)
{
    st_enrollment e = {0};
    st_inventory row = {0};
    if (storage_enrollment_get(app->st, enrollment_id, &e) != 0 || e.type != ST_ENR_USER)
        goto out;
    /* A new enrollment under this id: the device forgot everything the old one knew. */
    int rc = reset_row(app, &e);
    if (rc == 0)
        rc = storage_inventory_get(app->st, enrollment_id, &row);
    /* No push of its own: the device is in the middle of enrolling and fetches the round on its
     * next connection (docs/INVENTORY.md, "No push at enrollment"). */
    if (rc == 0)
        rc = start_round(app, &e, row.round, 0, NULL);
    if (rc != 0) /* the row is due: the scheduler tries again */
        log_error("event=inventory_start_failed enrollment=%s rc=%d", enrollment_id, rc);
out:
    st_inventory_cleanup(&row);
    st_enrollment_cleanup(&e);
}

int inventory_request(struct app *app, const st_enrollment *e, struct inventory_round *out,
                      const char **why)
{
    memset(out, 0, sizeof(*out));
    if ((*why = not_askable(e)) != NULL)
        return ST_ECONFLICT;
    int rc = ST_ECONFLICT;
    /* Twice at most: a claim lost to the scheduler is retried on the new round, where it then
     * meets that round's pending commands. */
    for (int attempt = 0; attempt < 2 && rc == ST_ECONFLICT; attempt++) {
        st_inventory row = {0};
        rc = storage_inventory_get(app->st, e->id, &row);
        if (rc == ST_ENOTFOUND && (rc = reset_row(app, e)) == 0)
            rc = storage_inventory_get(app->st, e->id, &row);
        if (rc == 0)
            rc = start_round(app, e, row.round, 1, out);
        st_inventory_cleanup(&row);
    }
    return rc == ST_ENOTFOUND ? ST_ERROR : rc;
}

/* ---- answers ---- */

/* Values of the scalar groups the answer did not carry stay as they were. */
static void keep_absent(st_inventory *in, const st_inventory *old, unsigned groups)
{
#define KEEP_STR(f)                                                                                \
    if (in->f == NULL && old->f != NULL)                                                           \
    in->f = xstrdup(old->f)
    if (groups & ST_INV_DEVICE) {
        KEEP_STR(os_version);
        KEEP_STR(build_version);
        KEEP_STR(product_name);
        KEEP_STR(model);
        KEEP_STR(model_name);
        KEEP_STR(device_name);
        if (in->os_key == 0)
            in->os_key = old->os_key;
        if (in->capacity_mb < 0)
            in->capacity_mb = old->capacity_mb;
        if (in->available_mb < 0)
            in->available_mb = old->available_mb;
    }
#undef KEEP_STR
    if (groups & ST_INV_SECURITY) {
        if (in->passcode_present < 0)
            in->passcode_present = old->passcode_present;
        if (in->passcode_compliant < 0)
            in->passcode_compliant = old->passcode_compliant;
    }
}

static const char *bool_text(int v)
{
    return v < 0 ? NULL : v ? "true" : "false";
}

/* Emits enrollment.inventory_changed if a watched field changed from one known value to
 * another (a value learned for the first time is not a change). */
static void watch(struct app *app, const char *id, const st_inventory *old, const st_inventory *in)
{
    char changed[96] = "";
    const char *kv[20];
    int n = 0;
    kv[n++] = "enrollment_id";
    kv[n++] = id;
    if (old->os_version && in->os_version && strcmp(old->os_version, in->os_version) != 0) {
        strcat(changed, "os_version");
        kv[n++] = "os_version";
        kv[n++] = in->os_version;
        kv[n++] = "previous_os_version";
        kv[n++] = old->os_version;
    }
    static const struct {
        const char *name, *previous;
        size_t offset;
    } flags[] = {
        {"passcode_present", "previous_passcode_present", offsetof(st_inventory, passcode_present)},
        {"passcode_compliant", "previous_passcode_compliant",
         offsetof(st_inventory, passcode_compliant)},
    };
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
        int a = *(const int *)((const char *)old + flags[i].offset);
        int b = *(const int *)((const char *)in + flags[i].offset);
        if (a < 0 || b < 0 || a == b)
            continue;
        if (changed[0])
            strcat(changed, ",");
        strcat(changed, flags[i].name);
        kv[n++] = flags[i].name;
        kv[n++] = bool_text(b);
        kv[n++] = flags[i].previous;
        kv[n++] = bool_text(a);
    }
    if (changed[0] == '\0')
        return;
    kv[n++] = "changed";
    kv[n++] = changed;
    kv[n] = NULL;
    log_info("event=inventory_changed enrollment=%s changed=%s", id, changed);
    webhook_emit(app, "enrollment.inventory_changed", kv);
}

/* The group a command's answer fills; 0 for a request type no round asks. */
static unsigned group_of(const char *request_type)
{
    static const struct {
        const char *type;
        unsigned group;
    } groups[] = {
        {"DeviceInformation", ST_INV_DEVICE},      {"SecurityInfo", ST_INV_SECURITY},
        {"ProfileList", ST_INV_PROFILES},          {"CertificateList", ST_INV_CERTS},
        {"InstalledApplicationList", ST_INV_APPS}, {"ManagedApplicationList", ST_INV_APPS}};
    for (size_t i = 0; request_type && i < sizeof(groups) / sizeof(groups[0]); i++)
        if (strcmp(groups[i].type, request_type) == 0)
            return groups[i].group;
    return 0;
}

/*
 * The group the answer may fill: only an answer to an inventory command Orchard queued for this
 * enrollment and just recorded as acknowledged counts, and only for what that command asked (a
 * made-up CommandUUID, or a DeviceInformation answer that also carries an app list, stores
 * nothing more). 0 if none.
 */
static unsigned asked_group(struct app *app, const char *enrollment_id, const char *uuid)
{
    st_command c = {0};
    unsigned g = 0;
    if (storage_command_get(app->st, uuid, &c) == 0 && c.status == ST_CMD_ACKNOWLEDGED &&
        strcmp(c.enrollment_id, enrollment_id) == 0)
        g = group_of(c.request_type);
    st_command_cleanup(&c);
    return g;
}

void inventory_on_report(struct app *app, const char *enrollment_id, const char *uuid, int status,
                         plist_t report)
{
    if (uuid == NULL || strncmp(uuid, ST_INV_UUID_PREFIX, ST_INV_UUID_PREFIX_LEN) != 0)
        return; /* not an inventory command: the Idle and command paths pay one compare */
    if (status != ST_CMD_ACKNOWLEDGED) {
        if (status != ST_CMD_NOTNOW)
            log_info("event=inventory_command_failed enrollment=%s command=%s status=%d",
                     enrollment_id, uuid, status);
        return;
    }
    st_inventory row = {0}, in = {0}, old = {0};
    enum ue_os os;
    unsigned asked = asked_group(app, enrollment_id, uuid);
    if (asked == 0 || storage_inventory_get(app->st, enrollment_id, &row) != 0 ||
        ue_os_parse(row.platform, &os) != 0)
        goto out; /* not ours, or the report of an enrollment that was started over */
    unsigned groups = inventory_parse(report, os, &in) & asked;
    if (groups == 0) {
        log_info("event=inventory_answer_empty enrollment=%s command=%s", enrollment_id, uuid);
        goto out;
    }
    keep_absent(&in, &row, groups);
    if (storage_inventory_update(app->st, enrollment_id, &in, groups, app_now(app), &old) != 0) {
        log_error("event=inventory_store_failed enrollment=%s command=%s", enrollment_id, uuid);
        goto out;
    }
    log_info("event=inventory_stored enrollment=%s command=%s groups=%u", enrollment_id, uuid,
             groups);
    watch(app, enrollment_id, &old, &in);
out:
    st_inventory_cleanup(&row);
    st_inventory_cleanup(&in);
    st_inventory_cleanup(&old);
}

/* ---- the schedule ---- */

struct due_page {
    char *ids[INV_SWEEP_PAGE];
    int64_t rounds[INV_SWEEP_PAGE];
    int n;
};

static int collect_due(const char *id, int64_t round, void *ctx)
{
    struct due_page *p = ctx;
    if (p->n < INV_SWEEP_PAGE) {
        p->ids[p->n] = xstrdup(id);
        p->rounds[p->n++] = round;
    }
    return 0;
}

/* One due row: a new round, or, while the last one is still pending, the next try later. */
static int sweep_one(struct app *app, const char *id, int64_t round, int64_t now)
{
    st_enrollment e = {0};
    int rc = storage_enrollment_get(app->st, id, &e);
    if (rc == 0)
        rc = start_round(app, &e, round, 1, NULL);
    if (rc == ST_EEXISTS)
        rc = storage_inventory_set_due(app->st, id, round, next_due(app, now));
    st_enrollment_cleanup(&e);
    return rc;
}

void inventory_sweep(struct app *app)
{
    if (config_get_int(app->cfg, "inventory_interval") <= 0)
        return;
    int done = 0;
    while (done < INV_SWEEP_MAX) {
        int64_t now = app_now(app);
        struct due_page page = {.n = 0};
        if (storage_inventory_due(app->st, now, next_due(app, now), INV_SWEEP_PAGE, collect_due,
                                  &page) != 0) {
            log_warn("event=inventory_sweep_failed");
            break;
        }
        int progress = 0;
        for (int i = 0; i < page.n; i++) {
            int rc = sweep_one(app, page.ids[i], page.rounds[i], now);
            progress += rc == 0 || rc == ST_ECONFLICT; /* ours, or someone else's: moved on */
            free(page.ids[i]);
        }
        done += page.n;
        /* A short page is the end; a page where nothing moved would come back the same. */
        if (page.n < INV_SWEEP_PAGE || progress == 0)
            break;
    }
}
