/*
 * User Enrollment rules over the generated tables (see ue_rules.h for the contract and
 * ue_tables.h for the layout). Everything here is lookups and message formatting; the
 * knowledge of what Apple allows lives in the generated tables only.
 */
#include "mdm/ue_rules.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "plist/pl.h"

/* Nesting cap for plists; the schema's deepest real key is 7 levels down. */
#define UE_MAX_DEPTH 32
#define UE_PATH_MAX 256
#define UE_MSG_MAX 512

static const char *const os_names[UE_OS_COUNT] = {
    [UE_OS_IOS] = "iOS",   [UE_OS_MACOS] = "macOS",     [UE_OS_VISIONOS] = "visionOS",
    [UE_OS_TVOS] = "tvOS", [UE_OS_WATCHOS] = "watchOS",
};

int ue_os_parse(const char *name, enum ue_os *os)
{
    static const struct {
        const char *name;
        enum ue_os os;
    } map[] = {
        {"ios", UE_OS_IOS},           {"ipados", UE_OS_IOS}, {"macos", UE_OS_MACOS},
        {"visionos", UE_OS_VISIONOS}, {"tvos", UE_OS_TVOS},  {"watchos", UE_OS_WATCHOS},
    };
    if (name == NULL)
        return -1;
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
        if (strcasecmp(name, map[i].name) == 0) {
            *os = map[i].os;
            return 0;
        }
    }
    return -1;
}

const char *ue_os_name(enum ue_os os)
{
    return (unsigned)os < UE_OS_COUNT ? os_names[os] : "?";
}

int ue_os_has_user_enrollment(enum ue_os os)
{
    return os == UE_OS_IOS || os == UE_OS_MACOS || os == UE_OS_VISIONOS;
}

const char *ue_mode_name(enum ue_mode mode)
{
    switch (mode) {
    case UE_MODE_NA:
        return "n/a";
    case UE_MODE_ALLOWED:
        return "allowed";
    case UE_MODE_FORBIDDEN:
        return "forbidden";
    case UE_MODE_REQUIRED:
        return "required";
    case UE_MODE_IGNORED:
        return "ignored";
    }
    return "?";
}

const char *ue_type_name(enum ue_type type)
{
    switch (type) {
    case UE_T_STRING:
        return "string";
    case UE_T_INTEGER:
        return "integer";
    case UE_T_REAL:
        return "real";
    case UE_T_BOOLEAN:
        return "boolean";
    case UE_T_DATE:
        return "date";
    case UE_T_DATA:
        return "data";
    case UE_T_ARRAY:
        return "array";
    case UE_T_DICTIONARY:
        return "dictionary";
    case UE_T_ANY:
        return "any";
    }
    return "?";
}

static const char *plist_type_name(plist_type t)
{
    switch (t) {
    case PLIST_BOOLEAN:
        return "boolean";
    case PLIST_UINT:
        return "integer";
    case PLIST_REAL:
        return "real";
    case PLIST_STRING:
        return "string";
    case PLIST_ARRAY:
        return "array";
    case PLIST_DICT:
        return "dictionary";
    case PLIST_DATE:
        return "date";
    case PLIST_DATA:
        return "data";
    default:
        return "other";
    }
}

void ue_version_format(uint16_t v, char *buf, size_t len)
{
    unsigned major = v >> 10, minor = (v >> 4) & 0x3f, patch = v & 0xf;
    if (len == 0)
        return;
    if (patch)
        snprintf(buf, len, "%u.%u.%u", major, minor, patch);
    else
        snprintf(buf, len, "%u.%u", major, minor);
}

/* ---- lookups ---- */

static const struct ue_entry *entry_find(const struct ue_entry *tab, size_t n, const char *name)
{
    size_t lo = 0, hi = n;
    if (name == NULL)
        return NULL;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, tab[mid].name);
        if (c == 0)
            return &tab[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

const struct ue_entry *ue_command_find(const char *request_type)
{
    return entry_find(ue_commands, UE_N_COMMANDS, request_type);
}

const struct ue_entry *ue_checkin_find(const char *message_type)
{
    return entry_find(ue_checkins, UE_N_CHECKINS, message_type);
}

const struct ue_entry *ue_payload_find(const char *payload_type)
{
    return entry_find(ue_payloads, UE_N_PAYLOADS, payload_type);
}

const struct ue_os_info *ue_entry_os(const struct ue_entry *e, enum ue_os os)
{
    if (e == NULL || (unsigned)os >= UE_OS_COUNT)
        return NULL;
    return &ue_avail[e->avail].os[os];
}

const struct ue_os_info *ue_key_os(const struct ue_key *k, enum ue_os os)
{
    if (k == NULL || (unsigned)os >= UE_OS_COUNT)
        return NULL;
    return &ue_avail[k->avail].os[os];
}

/* Binary search in the sorted sibling run ue_keys[first .. first + count). */
static const struct ue_key *run_find(uint16_t first, uint16_t count, const char *name)
{
    size_t lo = first, hi = (size_t)first + count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, ue_keys[mid].name);
        if (c == 0)
            return &ue_keys[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

/* Exact match, else the run's "ANY" wildcard if it has one. */
static const struct ue_key *run_match(uint16_t first, uint16_t count, const char *name)
{
    const struct ue_key *k = run_find(first, count, name);
    if (k == NULL) {
        k = run_find(first, count, "ANY");
        if (k != NULL && !(k->flags & UE_K_WILDCARD))
            k = NULL;
    }
    return k;
}

const struct ue_key *ue_entry_child(const struct ue_entry *e, const char *name)
{
    if (e == NULL || name == NULL)
        return NULL;
    return run_find(e->first, e->count, name);
}

const struct ue_key *ue_key_child(const struct ue_key *parent, const char *name)
{
    if (parent == NULL || name == NULL)
        return NULL;
    return run_find(parent->first, parent->count, name);
}

const struct ue_key *ue_entry_key(const struct ue_entry *e, const char *dotted)
{
    char seg[UE_PATH_MAX];
    uint16_t first, count;
    const struct ue_key *k = NULL;
    if (e == NULL || dotted == NULL)
        return NULL;
    first = e->first;
    count = e->count;
    for (const char *p = dotted;;) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        if (n == 0 || n >= sizeof(seg))
            return NULL;
        memcpy(seg, p, n);
        seg[n] = '\0';
        k = run_find(first, count, seg);
        if (k == NULL)
            return NULL;
        if (dot == NULL)
            return k;
        first = k->first;
        count = k->count;
        p = dot + 1;
    }
}

enum ue_use ue_use_of(const struct ue_os_info *info)
{
    if (info == NULL || info->mode == UE_MODE_NA)
        return UE_USE_NOT_ON_OS;
    if (info->mode == UE_MODE_FORBIDDEN)
        return UE_USE_FORBIDDEN;
    if (info->flags & UE_F_SUPERVISED)
        return UE_USE_SUPERVISED;
    if (info->flags & UE_F_REQUIRES_DEP)
        return UE_USE_REQUIRES_DEP;
    if (info->mode == UE_MODE_IGNORED)
        return UE_USE_IGNORED;
    return UE_USE_OK;
}

int ue_type_matches(enum ue_type want, plist_type got)
{
    switch (want) {
    case UE_T_STRING:
        return got == PLIST_STRING;
    case UE_T_INTEGER:
        return got == PLIST_UINT;
    case UE_T_REAL:
        /* Property-list writers emit <integer> for whole numbers; CFNumber accepts both. */
        return got == PLIST_REAL || got == PLIST_UINT;
    case UE_T_BOOLEAN:
        return got == PLIST_BOOLEAN;
    case UE_T_DATE:
        return got == PLIST_DATE;
    case UE_T_DATA:
        return got == PLIST_DATA;
    case UE_T_ARRAY:
        return got == PLIST_ARRAY;
    case UE_T_DICTIONARY:
        return got == PLIST_DICT;
    case UE_T_ANY:
        return 1;
    }
    return 0;
}

/* ---- yes/no checks ---- */

static void say(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void say(char *buf, size_t len, const char *fmt, ...)
{
    va_list ap;
    if (buf == NULL || len == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
}

/* The sentence for an unusable verdict: "<name> is not allowed in User Enrollment on iOS". */
static void describe(char *buf, size_t len, const char *name, enum ue_use use, enum ue_os os)
{
    const char *osn = ue_os_name(os);
    switch (use) {
    case UE_USE_NOT_ON_OS:
        say(buf, len, "%s is not available on %s", name, osn);
        break;
    case UE_USE_FORBIDDEN:
        say(buf, len, "%s is not allowed in User Enrollment on %s", name, osn);
        break;
    case UE_USE_SUPERVISED:
        say(buf, len, "%s is supervised-only on %s", name, osn);
        break;
    case UE_USE_REQUIRES_DEP:
        say(buf, len, "%s requires Automated Device Enrollment on %s", name, osn);
        break;
    case UE_USE_IGNORED:
        say(buf, len, "%s is ignored in User Enrollment on %s", name, osn);
        break;
    case UE_USE_OK:
        say(buf, len, "%s is allowed in User Enrollment on %s", name, osn);
        break;
    }
}

static int entry_check(const struct ue_entry *e, const char *kind, const char *name, enum ue_os os,
                       char *why, size_t why_len)
{
    enum ue_use use;
    if ((unsigned)os >= UE_OS_COUNT) {
        say(why, why_len, "unknown OS");
        return -1;
    }
    if (!ue_os_has_user_enrollment(os)) {
        say(why, why_len, "User Enrollment does not exist on %s", ue_os_name(os));
        return -1;
    }
    if (e == NULL) {
        say(why, why_len, "unknown %s %s", kind, name ? name : "(none)");
        return -1;
    }
    use = ue_use_of(ue_entry_os(e, os));
    if (use == UE_USE_OK || use == UE_USE_IGNORED)
        return 0;
    describe(why, why_len, e->name, use, os);
    return -1;
}

int ue_command_check(const char *request_type, enum ue_os os, char *why, size_t why_len)
{
    return entry_check(ue_command_find(request_type), "RequestType", request_type, os, why,
                       why_len);
}

int ue_checkin_message_check(const char *message_type, enum ue_os os, char *why, size_t why_len)
{
    return entry_check(ue_checkin_find(message_type), "MessageType", message_type, os, why,
                       why_len);
}

int ue_payload_check(const char *payload_type, enum ue_os os, char *why, size_t why_len)
{
    return entry_check(ue_payload_find(payload_type), "PayloadType", payload_type, os, why,
                       why_len);
}

int ue_command_check_key(const char *request_type, const char *dotted_key, enum ue_os os,
                         plist_type type, char *why, size_t why_len)
{
    const struct ue_entry *e = ue_command_find(request_type);
    const struct ue_key *k;
    enum ue_use use;
    char what[UE_PATH_MAX + 64];
    if (entry_check(e, "RequestType", request_type, os, why, why_len) < 0)
        return -1;
    k = ue_entry_key(e, dotted_key);
    if (k == NULL) {
        say(why, why_len, "%s: unknown key %s", e->name, dotted_key ? dotted_key : "(none)");
        return -1;
    }
    if (type != PLIST_NONE && !ue_type_matches(k->type, type)) {
        say(why, why_len, "%s: %s must be %s, not %s", e->name, dotted_key, ue_type_name(k->type),
            plist_type_name(type));
        return -1;
    }
    use = ue_use_of(ue_key_os(k, os));
    if (use == UE_USE_OK || use == UE_USE_IGNORED)
        return 0;
    snprintf(what, sizeof(what), "%s: %s", e->name, dotted_key);
    describe(why, why_len, what, use, os);
    return -1;
}

int ue_device_query_check(const char *query, enum ue_os os, char *why, size_t why_len)
{
    const struct ue_entry *e = ue_command_find("DeviceInformation");
    const struct ue_key *item = ue_entry_key(e, "Queries.QueriesItem");
    const struct ue_key *q;
    enum ue_use use;
    char what[UE_PATH_MAX];
    if (entry_check(e, "RequestType", "DeviceInformation", os, why, why_len) < 0)
        return -1;
    q = query ? ue_key_child(item, query) : NULL;
    if (q == NULL) {
        say(why, why_len, "unknown DeviceInformation query %s", query ? query : "(none)");
        return -1;
    }
    use = ue_use_of(ue_key_os(q, os));
    if (use == UE_USE_OK || use == UE_USE_IGNORED)
        return 0;
    snprintf(what, sizeof(what), "DeviceInformation query %s", q->name);
    describe(why, why_len, what, use, os);
    return -1;
}

/* ---- plist validation ---- */

/* A run of schema keys that may appear in one dictionary. A missing required key of a
 * hard scope is an error even under the lenient payload rules. */
struct scope {
    uint16_t first, count;
    int hard;
};

struct vctx {
    enum ue_os os;
    int lenient;      /* payload rules: unknown and unavailable keys only warn */
    const char *what; /* RequestType or PayloadType, prefixed to every message */
    ue_warn_fn warn;
    void *warn_ctx;
    char *err;
    size_t err_len;
    char path[UE_PATH_MAX];
    size_t path_len;
};

static int fail(struct vctx *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(struct vctx *v, const char *fmt, ...)
{
    char msg[UE_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (v->what[0] != '\0')
        say(v->err, v->err_len, "%s: %s", v->what, msg);
    else
        say(v->err, v->err_len, "%s", msg);
    return -1;
}

static void warnf(struct vctx *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warnf(struct vctx *v, const char *fmt, ...)
{
    char msg[UE_MSG_MAX], full[UE_MSG_MAX + 128];
    va_list ap;
    if (v->warn == NULL)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (v->what[0] != '\0')
        snprintf(full, sizeof(full), "%s: %s", v->what, msg);
    else
        snprintf(full, sizeof(full), "%s", msg);
    v->warn(v->warn_ctx, full);
}

/* Appends ".name" (or "name" at the top) or "[i]" to the path; returns the old length for
 * path_pop(). A path that no longer fits ends in "..." rather than being cut silently. */
static size_t path_push(struct vctx *v, const char *name, long index)
{
    size_t old = v->path_len, room = sizeof(v->path) - old;
    int n;
    if (name != NULL)
        n = snprintf(v->path + old, room, "%s%s", old ? "." : "", name);
    else
        n = snprintf(v->path + old, room, "[%ld]", index);
    if (n < 0 || (size_t)n >= room) {
        memcpy(v->path + sizeof(v->path) - 4, "...", 4);
        v->path_len = sizeof(v->path) - 1;
    } else {
        v->path_len = old + (size_t)n;
    }
    return old;
}

static void path_pop(struct vctx *v, size_t old)
{
    v->path_len = old;
    v->path[old] = '\0';
}

/* Applies the UE verdict for key k at the current path. Returns -1 (error set) if the key
 * makes the whole thing unacceptable, 1 if the key should be skipped (warned), 0 to go on. */
static int judge_key(struct vctx *v, const struct ue_key *k)
{
    const struct ue_os_info *info = ue_key_os(k, v->os);
    enum ue_use use = ue_use_of(info);
    const char *osn = ue_os_name(v->os);
    char ver[16];
    switch (use) {
    case UE_USE_NOT_ON_OS:
        if (!v->lenient)
            return fail(v, "%s is not available on %s", v->path, osn);
        warnf(v, "%s is not available on %s; the device ignores it", v->path, osn);
        return 1;
    case UE_USE_FORBIDDEN:
        return fail(v, "%s is not allowed in User Enrollment on %s", v->path, osn);
    case UE_USE_SUPERVISED:
        if (v->lenient)
            return fail(v, "%s is supervised-only on %s; User Enrollment ignores it", v->path, osn);
        return fail(v, "%s is supervised-only on %s", v->path, osn);
    case UE_USE_REQUIRES_DEP:
        return fail(v, "%s requires Automated Device Enrollment on %s", v->path, osn);
    case UE_USE_IGNORED:
        warnf(v, "%s is ignored in User Enrollment on %s", v->path, osn);
        break;
    case UE_USE_OK:
        break;
    }
    if (info->flags & UE_F_REMOVED) {
        ue_version_format(info->removed, ver, sizeof(ver));
        warnf(v, "%s was removed in %s %s", v->path, osn, ver);
    }
    return 0;
}

static int check_value(struct vctx *v, const struct ue_key *k, plist_t node, int depth);

/* Checks the entries of dictionary node against up to two runs of schema keys (a payload's
 * own keys and the common Payload* keys). skip names a key the caller handles itself. */
static int check_dict(struct vctx *v, const struct scope *scopes, size_t n_scopes, plist_t node,
                      const char *skip, int depth)
{
    plist_dict_iter it = NULL;
    char *key = NULL;
    plist_t val = NULL;
    int rc = 0;
    if (depth > UE_MAX_DEPTH)
        return fail(v, "%s is nested too deeply", v->path[0] ? v->path : "the plist");
    plist_dict_new_iter(node, &it);
    for (;;) {
        const struct ue_key *k = NULL;
        size_t old;
        free(key);
        key = NULL;
        val = NULL;
        plist_dict_next_item(node, it, &key, &val);
        if (key == NULL)
            break;
        if (skip != NULL && strcmp(key, skip) == 0)
            continue;
        /* Exact names in every scope first, so a payload's "ANY" does not swallow the
         * common Payload* keys. */
        for (size_t i = 0; i < n_scopes && k == NULL; i++)
            k = run_find(scopes[i].first, scopes[i].count, key);
        for (size_t i = 0; i < n_scopes && k == NULL; i++)
            k = run_match(scopes[i].first, scopes[i].count, key);
        old = path_push(v, key, 0);
        if (k == NULL) {
            if (v->lenient) {
                warnf(v, "unknown key %s (not in Apple's schema); passed through", v->path);
                path_pop(v, old);
                continue;
            }
            rc = fail(v, "unknown key %s", v->path);
            goto out;
        }
        rc = judge_key(v, k);
        if (rc == 0)
            rc = check_value(v, k, val, depth + 1);
        path_pop(v, old);
        if (rc < 0)
            goto out;
        rc = 0;
    }
    /* Required keys: only those the device would use here. Keys whose mode is "required"
     * (only in UE) are not enforced: the one such payload key, com.apple.mdm
     * ManagedAppleID, is legacy profile-based UE and removed in iOS 18 / macOS 15. */
    for (size_t i = 0; i < n_scopes; i++) {
        for (uint16_t j = 0; j < scopes[i].count; j++) {
            const struct ue_key *k = &ue_keys[scopes[i].first + j];
            const struct ue_os_info *info = ue_key_os(k, v->os);
            enum ue_use use = ue_use_of(info);
            size_t old;
            if (!(k->flags & UE_K_REQUIRED) || (k->flags & UE_K_WILDCARD) ||
                (use != UE_USE_OK && use != UE_USE_IGNORED) || (info->flags & UE_F_REMOVED))
                continue;
            if (plist_dict_get_item(node, k->name) != NULL ||
                (skip != NULL && strcmp(k->name, skip) == 0))
                continue;
            old = path_push(v, k->name, 0);
            /* Under the payload rules only hard scopes (the common Payload* keys) make this an
             * error: the schema marks some keys required that are only needed in some setups
             * (e.g. a Wi-Fi password for one EncryptionType but not another). */
            if (!v->lenient || scopes[i].hard) {
                rc = fail(v, "missing required key %s", v->path);
                goto out;
            }
            warnf(v, "missing key %s (required by Apple's schema)", v->path);
            path_pop(v, old);
        }
    }
out:
    free(key);
    free(it);
    return rc;
}

/* For an array of enumerated values (DeviceInformation Queries): every value the schema
 * forbids is named in one error; unknown or unavailable values only warn. */
static int check_enum_array(struct vctx *v, const struct ue_key *item, plist_t node)
{
    char bad[UE_MSG_MAX / 2 + 64] = ""; /* leaves room for the rest of the message */
    size_t bad_len = 0;
    int n_bad = 0;
    const char *osn = ue_os_name(v->os);
    uint32_t n = plist_array_get_size(node);
    for (uint32_t i = 0; i < n; i++) {
        plist_t el = plist_array_get_item(node, i);
        const char *s;
        const struct ue_key *val;
        enum ue_use use;
        if (plist_get_node_type(el) != PLIST_STRING) {
            size_t old = path_push(v, NULL, (long)i);
            int rc = fail(v, "%s must be string, not %s", v->path,
                          plist_type_name(plist_get_node_type(el)));
            path_pop(v, old);
            return rc;
        }
        s = plist_get_string_ptr(el, NULL);
        val = run_find(item->first, item->count, s);
        if (val == NULL) {
            warnf(v, "%s: unknown value %s (not in Apple's schema)", v->path, s);
            continue;
        }
        use = ue_use_of(ue_key_os(val, v->os));
        if (use == UE_USE_NOT_ON_OS) {
            warnf(v, "%s: %s is not available on %s", v->path, s, osn);
        } else if (use == UE_USE_IGNORED) {
            warnf(v, "%s: %s is ignored in User Enrollment on %s", v->path, s, osn);
        } else if (use != UE_USE_OK) {
            /* s is a schema name (short). Room is kept for ", ..." so a list too long for
             * the buffer still ends readably. */
            size_t room = sizeof(bad) - 8 - bad_len;
            int w = snprintf(bad + bad_len, room, "%s%s", n_bad ? ", " : "", s);
            if (w > 0 && (size_t)w < room)
                bad_len += (size_t)w;
            else
                memcpy(bad + bad_len, ", ...", 6);
            n_bad++;
        }
    }
    if (n_bad)
        return fail(v, "%s not allowed in User Enrollment on %s: %s", v->path, osn, bad);
    return 0;
}

/* For an array of heterogeneous dictionaries (Settings): the schema of item el is the
 * variant named by its "Item" string. Returns the variant or NULL (name set if known). */
static const struct ue_key *variant_of(const struct ue_key *k, plist_t el, const char **name)
{
    plist_t tag = NULL;
    *name = NULL;
    if (plist_get_node_type(el) == PLIST_DICT)
        tag = plist_dict_get_item(el, "Item");
    if (tag == NULL || plist_get_node_type(tag) != PLIST_STRING)
        return NULL;
    *name = plist_get_string_ptr(tag, NULL);
    return run_find(k->first, k->count, *name);
}

static int check_array(struct vctx *v, const struct ue_key *k, plist_t node, int depth)
{
    uint32_t n = plist_array_get_size(node);
    const struct ue_key *item = &ue_keys[k->first]; /* the caller checked k->count > 0 */
    if (!(k->flags & UE_K_VARIANTS) && (item->flags & UE_K_ENUM) && item->type == UE_T_STRING)
        return check_enum_array(v, item, node);
    for (uint32_t i = 0; i < n; i++) {
        plist_t el = plist_array_get_item(node, i);
        const struct ue_key *ik = item;
        const char *name = NULL;
        size_t old = path_push(v, NULL, (long)i);
        int rc = 0;
        if (k->flags & UE_K_VARIANTS) {
            ik = variant_of(k, el, &name);
            if (ik == NULL && name == NULL) {
                rc = fail(v, "%s has no Item string", v->path);
            } else if (ik == NULL && !v->lenient) {
                rc = fail(v, "%s: unknown Item %s", v->path, name);
            } else if (ik == NULL) {
                warnf(v, "%s: unknown Item %s (not in Apple's schema)", v->path, name);
                rc = 1;
            } else {
                /* Messages name the variant: "Settings[0](Wallpaper)". */
                size_t room = sizeof(v->path) - v->path_len;
                int w = snprintf(v->path + v->path_len, room, "(%s)", name);
                if (w > 0 && (size_t)w < room)
                    v->path_len += (size_t)w;
                rc = judge_key(v, ik);
            }
        }
        if (rc == 0)
            rc = check_value(v, ik, el, depth + 1);
        path_pop(v, old);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Type-checks node against k and descends into it. The path already names node. */
static int check_value(struct vctx *v, const struct ue_key *k, plist_t node, int depth)
{
    plist_type t = plist_get_node_type(node);
    if (depth > UE_MAX_DEPTH)
        return fail(v, "%s is nested too deeply", v->path);
    if (!ue_type_matches(k->type, t))
        return fail(v, "%s must be %s, not %s", v->path, ue_type_name(k->type), plist_type_name(t));
    if (k->count == 0)
        return 0; /* the schema does not describe what is inside */
    if (t == PLIST_DICT) {
        struct scope s = {k->first, k->count, 0};
        return check_dict(v, &s, 1, node, NULL, depth);
    }
    if (t == PLIST_ARRAY)
        return check_array(v, k, node, depth);
    if (t == PLIST_STRING && (k->flags & UE_K_ENUM)) {
        const char *s = plist_get_string_ptr(node, NULL);
        const struct ue_key *val = run_find(k->first, k->count, s);
        enum ue_use use = val ? ue_use_of(ue_key_os(val, v->os)) : UE_USE_OK;
        if (val == NULL)
            warnf(v, "%s: unknown value %s (not in Apple's schema)", v->path, s);
        else if (use != UE_USE_OK && use != UE_USE_IGNORED && use != UE_USE_NOT_ON_OS)
            return fail(v, "%s: %s is not allowed in User Enrollment on %s", v->path, s,
                        ue_os_name(v->os));
    }
    return 0;
}

static void vctx_init(struct vctx *v, enum ue_os os, int lenient, ue_warn_fn warn, void *warn_ctx,
                      char *err, size_t err_len)
{
    memset(v, 0, sizeof(*v));
    v->os = os;
    v->lenient = lenient;
    v->what = "";
    v->warn = warn;
    v->warn_ctx = warn_ctx;
    v->err = err;
    v->err_len = err_len;
    if (err != NULL && err_len > 0)
        err[0] = '\0';
}

/* The string value of key in dict, or NULL if absent or not a string. */
static const char *dict_string(plist_t dict, const char *key)
{
    plist_t n = plist_dict_get_item(dict, key);
    return plist_get_node_type(n) == PLIST_STRING ? plist_get_string_ptr(n, NULL) : NULL;
}

int ue_command_validate(plist_t command, enum ue_os os, ue_warn_fn warn, void *warn_ctx, char *err,
                        size_t err_len)
{
    struct vctx v;
    const struct ue_entry *e;
    const char *rt;
    struct scope s;
    vctx_init(&v, os, 0, warn, warn_ctx, err, err_len);
    if (plist_get_node_type(command) != PLIST_DICT) {
        say(err, err_len, "the Command is not a dictionary");
        return -1;
    }
    rt = dict_string(command, "RequestType");
    if (rt == NULL) {
        say(err, err_len, "the Command has no RequestType string");
        return -1;
    }
    e = ue_command_find(rt);
    if (entry_check(e, "RequestType", rt, os, err, err_len) < 0)
        return -1;
    v.what = e->name;
    s = (struct scope){e->first, e->count, 1};
    return check_dict(&v, &s, 1, command, "RequestType", 0) < 0 ? -1 : 0;
}

/* One payload dictionary. Messages are prefixed with the PayloadType once it is known;
 * before that with v->what and where, the item's place in the profile ("PayloadContent[2]",
 * NULL for a payload on its own). */
static int payload_validate(struct vctx *v, plist_t payload, const char *where, int depth)
{
    const struct ue_entry *e;
    const char *pt;
    struct scope s[2];
    char why[UE_MSG_MAX];
    if (plist_get_node_type(payload) != PLIST_DICT)
        return fail(v, "%s is not a dictionary", where ? where : "the payload");
    pt = dict_string(payload, "PayloadType");
    if (pt == NULL)
        return fail(v, "%s has no PayloadType string", where ? where : "the payload");
    e = ue_payload_find(pt);
    if (entry_check(e, "PayloadType", pt, v->os, why, sizeof(why)) < 0)
        return where ? fail(v, "%s: %s", where, why) : fail(v, "%s", why);
    v->what = e->name;
    if (ue_use_of(ue_entry_os(e, v->os)) == UE_USE_IGNORED)
        warnf(v, "the payload is ignored in User Enrollment on %s", ue_os_name(v->os));
    s[0] = (struct scope){e->first, e->count, 0};
    s[1] = (struct scope){ue_payload_common.first, ue_payload_common.count, 1};
    return check_dict(v, s, 2, payload, NULL, depth) < 0 ? -1 : 0;
}

int ue_payload_validate(plist_t payload, enum ue_os os, ue_warn_fn warn, void *warn_ctx, char *err,
                        size_t err_len)
{
    struct vctx v;
    vctx_init(&v, os, 1, warn, warn_ctx, err, err_len);
    if (!ue_os_has_user_enrollment(os))
        return entry_check(NULL, "", NULL, os, err, err_len);
    return payload_validate(&v, payload, NULL, 0);
}

int ue_profile_validate(plist_t profile, enum ue_os os, ue_warn_fn warn, void *warn_ctx, char *err,
                        size_t err_len)
{
    struct vctx v;
    struct scope s;
    plist_t content;
    const char *pt;
    uint32_t n;
    vctx_init(&v, os, 1, warn, warn_ctx, err, err_len);
    v.what = "profile";
    if (!ue_os_has_user_enrollment(os))
        return entry_check(NULL, "", NULL, os, err, err_len);
    if (plist_get_node_type(profile) != PLIST_DICT)
        return fail(&v, "not a dictionary");
    pt = dict_string(profile, "PayloadType");
    if (pt == NULL || strcmp(pt, "Configuration") != 0)
        return fail(&v, "PayloadType must be Configuration");
    s = (struct scope){ue_profile_toplevel.first, ue_profile_toplevel.count, 1};
    /* PayloadContent is required unless the profile is encrypted; checked below. */
    if (check_dict(&v, &s, 1, profile, "PayloadContent", 0) < 0)
        return -1;
    content = plist_dict_get_item(profile, "PayloadContent");
    if (content == NULL) {
        if (plist_dict_get_item(profile, "EncryptedPayloadContent") == NULL)
            return fail(&v, "missing required key PayloadContent");
        return 0;
    }
    if (plist_get_node_type(content) != PLIST_ARRAY)
        return fail(&v, "PayloadContent must be array, not %s",
                    plist_type_name(plist_get_node_type(content)));
    n = plist_array_get_size(content);
    for (uint32_t i = 0; i < n; i++) {
        char where[32];
        snprintf(where, sizeof(where), "PayloadContent[%" PRIu32 "]", i);
        v.what = "profile";
        if (payload_validate(&v, plist_array_get_item(content, i), where, 1) < 0)
            return -1;
    }
    return 0;
}

struct types_walk {
    const struct ue_entry *e;
    char *why;
    size_t why_len;
};

static int type_item(const char *key, plist_t val, void *ctx)
{
    struct types_walk *w = ctx;
    const struct ue_key *k = ue_entry_child(w->e, key);
    if (k == NULL || ue_type_matches((enum ue_type)k->type, plist_get_node_type(val)))
        return 0;
    say(w->why, w->why_len, "%s: %s must be of type %s, not %s", w->e->name, key,
        ue_type_name((enum ue_type)k->type), plist_type_name(plist_get_node_type(val)));
    return -1;
}

int ue_checkin_types_check(plist_t msg, char *why, size_t why_len)
{
    plist_t mt = plist_dict_get_item(msg, "MessageType");
    struct types_walk w = {NULL, why, why_len};
    if (mt && plist_get_node_type(mt) == PLIST_STRING)
        w.e = ue_checkin_find(plist_get_string_ptr(mt, NULL));
    if (w.e == NULL)
        return 0; /* an unknown MessageType is refused by its own check */
    return pl_dict_each(msg, type_item, &w);
}
