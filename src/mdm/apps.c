/*
 * The app catalogue: what an app entry is (an App Store id, a bundle id or an enterprise
 * manifest URL, plus managed app configuration and attributes) and the install command each
 * User Enrollment platform accepts for it (PROTOCOL.md 13, docs/APPS.md).
 *
 * Every optional key is checked against the generated tables for the platform and left out,
 * with a warning, where User Enrollment does not permit it: ManagementFlags and
 * InstallAsManaged are forbidden on macOS by Apple's 18.1 schema (PROTOCOL.md 13.1 notes that
 * WWDC21 said otherwise; Orchard follows the schema), Attributes exist on iOS/visionOS only.
 * The complete command is then validated with ue_command_validate(), so nothing User
 * Enrollment forbids can be queued from the catalogue.
 */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/mem.h"
#include "mdm/library.h"
#include "plist/pl.h"

static const char *const app_keys[] = {
    "itunes_store_id",
    "bundle_id",
    "manifest_url",
    "configuration",
    "attributes",
    "sensitive",
    "purchase_method",
    "remove_on_unenroll",
    "install_as_managed",
    "name",
    NULL,
};

/* Managed app configuration and attributes: any JSON object, converted without a schema. */
static plist_t json_value_to_plist(json_t *j, const char *where, char *err, size_t err_len)
{
    char inner[160];
    plist_t p = mdm_json_to_plist(j, NULL, inner, sizeof(inner));
    if (p == NULL)
        snprintf(err, err_len, "%s: %s", where, inner);
    return p;
}

struct app_warn {
    ue_warn_fn warn;
    void *ctx;
    enum ue_os os;
};

static void app_warnf(const struct app_warn *w, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void app_warnf(const struct app_warn *w, const char *fmt, ...)
{
    char line[LIB_MSG_MAX];
    va_list ap;
    if (w->warn == NULL)
        return;
    int n = snprintf(line, sizeof(line), "%s: ", ue_os_name(w->os));
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
    va_end(ap);
    w->warn(w->ctx, line);
}

/* Adds an optional key if User Enrollment on the platform permits it; otherwise warns. Takes
 * ownership of value. */
static void add_optional(plist_t cmd, const char *rt, const char *key, plist_t value,
                         const struct app_warn *w)
{
    char why[LIB_MSG_MAX];
    if (ue_command_check_key(rt, key, w->os, plist_get_node_type(value), why, sizeof(why)) != 0) {
        app_warnf(w, "%s left out of %s: %s", key, rt, why);
        plist_free(value);
        return;
    }
    plist_dict_set_item(cmd, key, value);
}

/*
 * Options.PurchaseMethod of an InstallApplication (application.install.yaml): 0 is "free apps
 * and legacy VPP with a redemption code", which the schema says is "only available in iOS"; 1
 * is Volume Purchase assignment, which the schema asks for "to install an iOS app with user
 * enrollment". So an App Store app gets 1 unless the admin chose 0, and on macOS it always
 * gets 1: there 0 does not exist (the key's default, so leaving Options out means 0 too) and
 * an explicit 0 is refused. *method = 0 with no explicit choice means "leave Options out".
 */
static int purchase_method(enum ue_os os, int store_app, json_t *pm, uint64_t *method, char *err,
                           size_t err_len)
{
    int given = json_is_integer(pm);
    *method = given ? (uint64_t)json_integer_value(pm) : store_app ? 1 : 0;
    if (os == UE_OS_MACOS && *method == 0 && (given || store_app)) {
        snprintf(err, err_len,
                 "purchase_method 0 (free apps, redemption codes) exists only on iOS; App Store "
                 "apps install on macOS with purchase_method 1 (Volume Purchase)");
        return -1;
    }
    return 0;
}

plist_t lib_app_install_command(const st_app *a, enum ue_os os, ue_warn_fn warn, void *warn_ctx,
                                char *err, size_t err_len)
{
    struct app_warn w = {warn, warn_ctx, os};
    json_t *spec = json_loads(a->spec ? a->spec : "{}", 0, NULL);
    plist_t cmd = NULL;
    char why[LIB_MSG_MAX];
    if (!json_is_object(spec)) {
        snprintf(err, err_len, "the app's stored spec is not a JSON object");
        goto fail;
    }
    int enterprise = a->manifest_url && os == UE_OS_MACOS;
    const char *rt = enterprise ? "InstallEnterpriseApplication" : "InstallApplication";
    if (ue_command_check(rt, os, why, sizeof(why)) != 0) {
        snprintf(err, err_len, "%s", why);
        goto fail;
    }
    cmd = plist_new_dict();
    pl_set_string(cmd, "RequestType", rt);
    const char *primary;
    if (enterprise) {
        primary = "ManifestURL";
        pl_set_string(cmd, primary, a->manifest_url);
    } else if (a->itunes_store_id > 0) {
        primary = "iTunesStoreID";
        pl_set_uint(cmd, primary, (uint64_t)a->itunes_store_id);
    } else if (a->manifest_url) {
        primary = "ManifestURL";
        pl_set_string(cmd, primary, a->manifest_url);
    } else {
        primary = "Identifier";
        pl_set_string(cmd, primary, a->identifier ? a->identifier : "");
    }
    if (ue_command_check_key(rt, primary, os, PLIST_NONE, why, sizeof(why)) != 0) {
        snprintf(err, err_len, "%s", why);
        goto fail;
    }
    if (!enterprise) {
        json_t *pm = json_object_get(spec, "purchase_method");
        int store_app = a->itunes_store_id > 0 || (a->manifest_url == NULL && a->identifier);
        uint64_t method = 0;
        if (purchase_method(os, store_app, pm, &method, err, err_len) != 0)
            goto fail;
        if (method > 0 || json_is_integer(pm)) {
            plist_t opts = plist_new_dict();
            pl_set_uint(opts, "PurchaseMethod", method);
            if (ue_command_check_key(rt, "Options.PurchaseMethod", os, PLIST_UINT, why,
                                     sizeof(why)) == 0)
                plist_dict_set_item(cmd, "Options", opts);
            else {
                app_warnf(&w, "Options.PurchaseMethod left out of %s: %s", rt, why);
                plist_free(opts);
            }
        }
        if (json_is_true(json_object_get(spec, "remove_on_unenroll")))
            add_optional(cmd, rt, "ManagementFlags", plist_new_uint(1), &w);
        if (json_is_true(json_object_get(spec, "install_as_managed")))
            add_optional(cmd, rt, "InstallAsManaged", plist_new_bool(1), &w);
    }
    json_t *conf = json_object_get(spec, "configuration");
    if (json_is_object(conf)) {
        plist_t p = json_value_to_plist(conf, "configuration", err, err_len);
        if (p == NULL)
            goto fail;
        add_optional(cmd, rt, "Configuration", p, &w);
    }
    json_t *attrs = json_object_get(spec, "attributes");
    if (json_is_object(attrs) && !enterprise) {
        plist_t p = json_value_to_plist(attrs, "attributes", err, err_len);
        if (p == NULL)
            goto fail;
        add_optional(cmd, rt, "Attributes", p, &w);
    } else if (json_is_object(attrs)) {
        app_warnf(&w, "Attributes left out of %s: not a key of that command", rt);
    }
    if (ue_command_validate(cmd, os, NULL, NULL, why, sizeof(why)) != 0) {
        snprintf(err, err_len, "%s", why);
        goto fail;
    }
    json_decref(spec);
    return cmd;
fail:
    plist_free(cmd);
    json_decref(spec);
    return NULL;
}

static int known_key(const char *k)
{
    for (const char *const *p = app_keys; *p; p++) {
        if (strcmp(*p, k) == 0)
            return 1;
    }
    return 0;
}

int lib_app_prepare(const char *body, size_t len, ue_warn_fn warn, void *warn_ctx, st_app *out,
                    char *err, size_t err_len)
{
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    int rc = -1;
    memset(out, 0, sizeof(*out));
    if (!json_is_object(root)) {
        snprintf(err, err_len, "body is not a JSON object%s%s", root ? "" : ": ",
                 root ? "" : jerr.text);
        goto out;
    }
    const char *k;
    json_t *v;
    json_object_foreach(root, k, v)
    {
        if (!known_key(k)) {
            snprintf(err, err_len, "unknown key \"%s\"", k);
            goto out;
        }
    }
    json_t *store = json_object_get(root, "itunes_store_id");
    json_t *bundle = json_object_get(root, "bundle_id");
    json_t *manifest = json_object_get(root, "manifest_url");
    if ((store && (!json_is_integer(store) || json_integer_value(store) <= 0)) ||
        (bundle && (!json_is_string(bundle) || json_string_length(bundle) == 0 ||
                    json_string_length(bundle) > 255)) ||
        (manifest && (!json_is_string(manifest) || json_string_length(manifest) > 2048 ||
                      strncmp(json_string_value(manifest), "https://", 8) != 0))) {
        snprintf(err, err_len,
                 "itunes_store_id must be a positive integer, bundle_id a "
                 "non-empty string, manifest_url an https:// URL");
        goto out;
    }
    if (!store && !bundle && !manifest) {
        snprintf(err, err_len, "one of itunes_store_id, bundle_id or manifest_url is required");
        goto out;
    }
    if (store && manifest) {
        snprintf(err, err_len, "itunes_store_id and manifest_url exclude each other");
        goto out;
    }
    static const char *const objects[] = {"configuration", "attributes", NULL};
    for (const char *const *o = objects; *o; o++) {
        json_t *x = json_object_get(root, *o);
        if (x && !json_is_object(x)) {
            snprintf(err, err_len, "%s must be a JSON object", *o);
            goto out;
        }
    }
    static const char *const bools[] = {"sensitive", "remove_on_unenroll", "install_as_managed",
                                        NULL};
    for (const char *const *b = bools; *b; b++) {
        json_t *x = json_object_get(root, *b);
        if (x && !json_is_boolean(x)) {
            snprintf(err, err_len, "%s must be true or false", *b);
            goto out;
        }
    }
    json_t *pm = json_object_get(root, "purchase_method");
    if (pm && (!json_is_integer(pm) || json_integer_value(pm) < 0 || json_integer_value(pm) > 1)) {
        snprintf(err, err_len, "purchase_method must be 0 or 1");
        goto out;
    }
    out->identifier = bundle ? xstrdup(json_string_value(bundle)) : NULL;
    out->itunes_store_id = store ? json_integer_value(store) : 0;
    out->manifest_url = manifest ? xstrdup(json_string_value(manifest)) : NULL;
    out->sensitive = json_is_true(json_object_get(root, "sensitive"));
    out->spec = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
    /* At least one platform must accept the install command. */
    static const enum ue_os oses[] = {UE_OS_IOS, UE_OS_MACOS, UE_OS_VISIONOS};
    char first[LIB_MSG_MAX + 64] = "";
    int ok = 0;
    for (size_t i = 0; i < sizeof(oses) / sizeof(oses[0]); i++) {
        char why[LIB_MSG_MAX];
        plist_t cmd = lib_app_install_command(out, oses[i], warn, warn_ctx, why, sizeof(why));
        if (cmd) {
            ok++;
        } else {
            if (first[0] == '\0')
                snprintf(first, sizeof(first), "%s: %s", ue_os_name(oses[i]), why);
            if (warn) {
                char line[LIB_MSG_MAX + 64];
                snprintf(line, sizeof(line), "%s: cannot be installed there: %s",
                         ue_os_name(oses[i]), why);
                warn(warn_ctx, line);
            }
        }
        plist_free(cmd);
    }
    if (ok == 0) {
        snprintf(err, err_len, "no platform can install this app: %s", first);
        goto out;
    }
    rc = 0;
out:
    if (rc != 0)
        st_app_cleanup(out);
    json_decref(root);
    return rc;
}
