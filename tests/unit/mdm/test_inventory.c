/*
 * The device inventory (src/mdm/inventory.c): version keys compare per component, a round asks
 * only what the generated User Enrollment tables allow on the platform, and the real command
 * results captured by peer projects (spec fixtures: zentral, nanomdm) parse into the typed
 * fields, keeping nothing User Enrollment does not let the server know.
 */
#include "harness.h"

#include <plist/plist.h>

#include "../crypto/crypto_fixtures.h"
#include "mdm/inventory.h"
#include "plist/pl.h"

/* The report plist of a spec fixture (NULL if unreadable). */
static plist_t report_of(const char *rel)
{
    size_t len = 0;
    uint8_t *data = spec_fixture(rel, &len);
    char err[128];
    plist_t p = data ? pl_parse_dict((const char *)data, len, err, sizeof(err)) : NULL;
    free(data);
    return p;
}

/* 1 if some stored string of x (scalars or lists) contains needle. */
static int stored_anywhere(const st_inventory *x, const char *needle)
{
    const char *const fields[] = {x->os_version, x->build_version, x->product_name,
                                  x->model,      x->model_name,    x->device_name,
                                  x->apps,       x->profiles,      x->certs};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        if (fields[i] && strstr(fields[i], needle))
            return 1;
    return 0;
}

/* The stored JSON list as a jansson array (caller decrefs). */
static json_t *list_of(const char *text)
{
    return text ? json_loads(text, 0, NULL) : NULL;
}

static const char *item_str(json_t *list, size_t i, const char *key)
{
    return json_string_value(json_object_get(json_array_get(list, i), key));
}

/* ---- versions ---- */

TEST(version_keys_compare_per_component)
{
    ASSERT(inventory_version_key("18.10") > inventory_version_key("18.4"));
    ASSERT(inventory_version_key("18.4.1") > inventory_version_key("18.4"));
    ASSERT(inventory_version_key("10.0") > inventory_version_key("9.3.5"));
    ASSERT(inventory_version_key("26.0") > inventory_version_key("18.7.2"));
    ASSERT_INT_EQ(inventory_version_key("18.4"), inventory_version_key("18.4.0"));
    ASSERT_INT_EQ(inventory_version_key("18.4.1"), 18004001);
    ASSERT_INT_EQ(inventory_version_key("18"), 18000000);
    /* Anything after the numbers is not part of the comparison. */
    ASSERT_INT_EQ(inventory_version_key("13.0 beta"), 13000000);
    ASSERT_INT_EQ(inventory_version_key("15.7.3.9"), 15007003);
    ASSERT_INT_EQ(inventory_version_key("17."), 17000000);
    ASSERT_INT_EQ(inventory_version_key("1234.5"), 999005000); /* capped, never overflowing */
    ASSERT_INT_EQ(inventory_version_key(""), 0);
    ASSERT_INT_EQ(inventory_version_key("beta"), 0);
    ASSERT_INT_EQ(inventory_version_key(NULL), 0);
}

TEST(version_filter_values_are_strict)
{
    int64_t k = 0;
    ASSERT_INT_EQ(inventory_version_parse("18.4", &k), 0);
    ASSERT_INT_EQ(k, 18004000);
    ASSERT_INT_EQ(inventory_version_parse("17.6.1", &k), 0);
    ASSERT_INT_EQ(k, 17006001);
    ASSERT_INT_EQ(inventory_version_parse("18", &k), 0);
    static const char *const bad[] = {"",      "18.",  ".4",    "18.4.1.2", "1a",
                                      "18..4", "1234", "-1",    "18.4 ",    " 18.4",
                                      "18,4",  "١٨.٤", "18.4a", "0x12",     "18.4.1."};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        k = -7;
        if (inventory_version_parse(bad[i], &k) == 0)
            fprintf(stderr, "accepted: \"%s\"\n", bad[i]);
        ASSERT_INT_EQ(inventory_version_parse(bad[i], &k), -1);
        ASSERT_INT_EQ(k, -7);
    }
    ASSERT_INT_EQ(inventory_version_parse(NULL, &k), -1);
}

/* ---- what a round asks ---- */

static const enum ue_os ue_platforms[] = {UE_OS_IOS, UE_OS_MACOS, UE_OS_VISIONOS};

static int forbidden_query(enum ue_os os, const char *q)
{
    for (const char *const *f = ue_devinfo_forbidden_queries[os]; *f; f++)
        if (strcmp(*f, q) == 0)
            return 1;
    return 0;
}

TEST(round_asks_only_what_user_enrollment_allows)
{
    for (size_t p = 0; p < sizeof(ue_platforms) / sizeof(ue_platforms[0]); p++) {
        enum ue_os os = ue_platforms[p];
        struct mdm_command cmds[INV_MAX_COMMANDS];
        size_t n = inventory_build_round(os, cmds);
        ASSERT(n >= 4);
        int devinfo = 0, apps = 0;
        for (size_t i = 0; i < n; i++) {
            char err[256], why[256];
            ASSERT(strncmp(cmds[i].uuid, ST_INV_UUID_PREFIX, ST_INV_UUID_PREFIX_LEN) == 0);
            ASSERT_INT_EQ(strlen(cmds[i].uuid), 36);
            ASSERT_INT_EQ(cmds[i].priority, INV_PRIORITY);
            plist_t full = pl_parse_dict(cmds[i].xml, cmds[i].xml_len, err, sizeof(err));
            ASSERT_NOT_NULL(full);
            ASSERT_STR_EQ(pl_get_string(full, "CommandUUID"), cmds[i].uuid);
            plist_t cmd = pl_get_typed(full, "Command", PLIST_DICT);
            ASSERT_NOT_NULL(cmd);
            ASSERT_STR_EQ(pl_get_string(cmd, "RequestType"), cmds[i].request_type);
            ASSERT_INT_EQ(ue_command_check(cmds[i].request_type, os, why, sizeof(why)), 0);
            if (ue_command_validate(cmd, os, NULL, NULL, err, sizeof(err)) != 0)
                fprintf(stderr, "%s: %s\n", ue_os_name(os), err);
            ASSERT_INT_EQ(ue_command_validate(cmd, os, NULL, NULL, err, sizeof(err)), 0);
            plist_t queries = pl_get_typed(cmd, "Queries", PLIST_ARRAY);
            if (strcmp(cmds[i].request_type, "DeviceInformation") == 0) {
                devinfo = 1;
                ASSERT_NOT_NULL(queries);
                for (uint32_t q = 0; q < plist_array_get_size(queries); q++) {
                    char *name = NULL;
                    plist_get_string_val(plist_array_get_item(queries, q), &name);
                    ASSERT_NOT_NULL(name);
                    int forbidden = forbidden_query(os, name);
                    int allowed = ue_device_query_check(name, os, why, sizeof(why)) == 0;
                    if (forbidden || !allowed)
                        fprintf(stderr, "%s asks %s\n", ue_os_name(os), name);
                    free(name);
                    ASSERT(!forbidden && allowed);
                }
            }
            if (strstr(cmds[i].request_type, "ApplicationList"))
                apps++;
            plist_free(full);
        }
        ASSERT_INT_EQ(devinfo, 1);
        ASSERT_INT_EQ(apps, 1);
        for (size_t i = 0; i < n; i++)
            mdm_command_cleanup(&cmds[i]);
    }
}

TEST(round_per_platform)
{
    const char *q[16];
    size_t n = inventory_queries(UE_OS_IOS, q, 16);
    int os_version = 0, device_name = 0;
    for (size_t i = 0; i < n; i++) {
        os_version |= strcmp(q[i], "OSVersion") == 0;
        device_name |= strcmp(q[i], "DeviceName") == 0;
        ASSERT(strcmp(q[i], "SerialNumber") != 0 && strcmp(q[i], "UDID") != 0);
    }
    ASSERT(os_version && device_name);
    /* visionOS has no Model query: the schema says so, the round follows. */
    n = inventory_queries(UE_OS_VISIONOS, q, 16);
    for (size_t i = 0; i < n; i++)
        ASSERT(strcmp(q[i], "Model") != 0);
    /* InstalledApplicationList is forbidden in User Enrollment on macOS; iOS uses it (it has
     * versions). */
    struct mdm_command c[INV_MAX_COMMANDS];
    n = inventory_build_round(UE_OS_MACOS, c);
    int installed = 0, managed = 0;
    for (size_t i = 0; i < n; i++) {
        installed |= strcmp(c[i].request_type, "InstalledApplicationList") == 0;
        managed |= strcmp(c[i].request_type, "ManagedApplicationList") == 0;
        mdm_command_cleanup(&c[i]);
    }
    ASSERT(!installed && managed);
    n = inventory_build_round(UE_OS_IOS, c);
    installed = 0;
    for (size_t i = 0; i < n; i++) {
        installed |= strcmp(c[i].request_type, "InstalledApplicationList") == 0;
        mdm_command_cleanup(&c[i]);
    }
    ASSERT(installed);
    ASSERT_STR_EQ(inventory_platform_name(UE_OS_IOS), "ios");
    ASSERT_STR_EQ(inventory_platform_name(UE_OS_MACOS), "macos");
    ASSERT_STR_EQ(inventory_platform_name(UE_OS_VISIONOS), "visionos");
    ASSERT(inventory_platform_name(UE_OS_TVOS) == NULL);
}

/* ---- real answers ---- */

TEST(device_information_from_a_mac)
{
    plist_t r = report_of("zentral/device_information.plist");
    ASSERT_NOT_NULL(r);
    st_inventory x;
    ASSERT_INT_EQ(inventory_parse(r, UE_OS_MACOS, &x), ST_INV_DEVICE);
    ASSERT_STR_EQ(x.os_version, "13.0");
    ASSERT_INT_EQ(x.os_key, 13000000);
    ASSERT_STR_EQ(x.build_version, "22A5321d");
    ASSERT_STR_EQ(x.product_name, "VirtualMac2,1");
    ASSERT_STR_EQ(x.model, "VirtualMac2,1");
    ASSERT_STR_EQ(x.model_name, "Virtual Machine");
    ASSERT_STR_EQ(x.device_name, "Yolo");
    ASSERT_INT_EQ(x.capacity_mb, 29000);
    ASSERT_INT_EQ(x.available_mb, 10000);
    /* The capture also answers queries User Enrollment forbids on macOS: never kept. */
    ASSERT(!stored_anywhere(&x, "Z3C2FCE2C0"));                           /* SerialNumber */
    ASSERT(!stored_anywhere(&x, "9353BC9A-5CF9-4C9E-9AD4-8D1E41D5FE3E")); /* UDID */
    ASSERT(!stored_anywhere(&x, "VMA2MACOSAP")); /* SoftwareUpdateDeviceID */
    ASSERT_INT_EQ(x.passcode_present, -1);
    ASSERT_INT_EQ(x.app_count, -1);
    json_t *j = inventory_json(&x, 1);
    char *s = json_dumps(j, JSON_COMPACT);
    ASSERT(strstr(s, "\"os_version\":\"13.0\"") && strstr(s, "\"storage_capacity_mb\":29000"));
    ASSERT(strstr(s, "\"passcode_present\":null") && strstr(s, "\"apps\":null"));
    ASSERT(strstr(s, "Z3C2FCE2C0") == NULL);
    free(s);
    json_decref(j);
    st_inventory_cleanup(&x);
    plist_free(r);
}

TEST(device_information_with_only_forbidden_answers)
{
    /* nanomdm's capture answers HostName and UDID: nothing an iOS inventory keeps. */
    plist_t r = report_of("nanomdm/DeviceInformation.1.plist");
    ASSERT_NOT_NULL(r);
    st_inventory x;
    ASSERT_INT_EQ(inventory_parse(r, UE_OS_IOS, &x), ST_INV_DEVICE);
    ASSERT(x.os_version == NULL && x.device_name == NULL && x.model == NULL);
    ASSERT_INT_EQ(x.os_key, 0);
    ASSERT_INT_EQ(x.capacity_mb, -1);
    ASSERT(!stored_anywhere(&x, "66ADE930"));
    ASSERT(!stored_anywhere(&x, "fruit.example.com"));
    st_inventory_cleanup(&x);
    plist_free(r);
}

TEST(security_info_keeps_only_what_user_enrollment_reports)
{
    /* iOS: the capture (a device enrollment) says PasscodePresent false; Apple's schema marks
     * PasscodePresent forbidden in User Enrollment on iOS, PasscodeCompliant allowed. */
    plist_t r = report_of("zentral/security_info_ios.plist");
    ASSERT_NOT_NULL(r);
    st_inventory x;
    ASSERT_INT_EQ(inventory_parse(r, UE_OS_IOS, &x), ST_INV_SECURITY);
    ASSERT_INT_EQ(x.passcode_present, -1);
    ASSERT_INT_EQ(x.passcode_compliant, 1);
    st_inventory_cleanup(&x);
    ASSERT_INT_EQ(inventory_parse(r, UE_OS_VISIONOS, &x), ST_INV_SECURITY);
    ASSERT_INT_EQ(x.passcode_present, -1);
    ASSERT_INT_EQ(x.passcode_compliant, 1);
    st_inventory_cleanup(&x);
    plist_free(r);
    /* macOS reports no passcode keys (n/a there). */
    r = report_of("zentral/security_info.plist");
    ASSERT_NOT_NULL(r);
    ASSERT_INT_EQ(inventory_parse(r, UE_OS_MACOS, &x), ST_INV_SECURITY);
    ASSERT_INT_EQ(x.passcode_present, -1);
    ASSERT_INT_EQ(x.passcode_compliant, -1);
    st_inventory_cleanup(&x);
    plist_free(r);
    /* The generated table is what decides. */
    int present = 0, compliant = 0;
    for (const char *const *k = ue_securityinfo_keys[UE_OS_IOS]; *k; k++) {
        present |= strcmp(*k, "PasscodePresent") == 0;
        compliant |= strcmp(*k, "PasscodeCompliant") == 0;
    }
    ASSERT(!present && compliant);
}

TEST(profile_list)
{
    plist_t r = report_of("zentral/profile_list.plist");
    ASSERT_NOT_NULL(r);
    st_inventory x;
    ASSERT_INT_EQ(inventory_parse(r, UE_OS_MACOS, &x), ST_INV_PROFILES);
    ASSERT_INT_EQ(x.profile_count,
                  (int)plist_array_get_size(pl_get_typed(r, "ProfileList", PLIST_ARRAY)));
    ASSERT(x.profile_count >= 1);
    json_t *l = list_of(x.profiles);
    ASSERT(json_is_array(l));
    ASSERT_INT_EQ(json_array_size(l), x.profile_count);
    ASSERT_STR_EQ(item_str(l, 0, "identifier"), "com.example.zentral.santa_configuration");
    ASSERT_STR_EQ(item_str(l, 0, "name"), "Zentral - Santa configuration");
    ASSERT_STR_EQ(item_str(l, 0, "uuid"), "db2004f8-9e9f-4043-8a6f-339cfd7d7891");
    ASSERT_INT_EQ(json_integer_value(json_object_get(json_array_get(l, 0), "version")), 1);
    /* Signer certificates are not copied into the inventory. */
    ASSERT(strstr(x.profiles, "MIID") == NULL);
    json_decref(l);
    st_inventory_cleanup(&x);
    plist_free(r);
}

TEST(installed_application_list)
{
    plist_t r = report_of("zentral/installed_application_list.plist");
    ASSERT_NOT_NULL(r);
    st_inventory x;
    ASSERT_INT_EQ(inventory_parse(r, UE_OS_IOS, &x), ST_INV_APPS);
    ASSERT_INT_EQ(x.app_count, 3);
    json_t *l = list_of(x.apps);
    ASSERT_INT_EQ(json_array_size(l), 3);
    ASSERT_STR_EQ(item_str(l, 1, "identifier"), "com.apple.dt.Xcode");
    ASSERT_STR_EQ(item_str(l, 1, "short_version"), "14.0");
    ASSERT_STR_EQ(item_str(l, 1, "version"), "14.0");
    ASSERT_STR_EQ(item_str(l, 1, "name"), "Xcode");
    ASSERT(item_str(l, 2, "identifier") == NULL); /* the capture has an app without one */
    ASSERT_STR_EQ(item_str(l, 2, "name"), "https+++lucid");
    json_decref(l);
    st_inventory_cleanup(&x);
    /* User Enrollment forbids InstalledApplicationList on macOS: a Mac's answer is not kept. */
    ASSERT_INT_EQ(inventory_parse(r, UE_OS_MACOS, &x), 0);
    ASSERT(x.apps == NULL);
    ASSERT_INT_EQ(x.app_count, -1);
    st_inventory_cleanup(&x);
    plist_free(r);
}

TEST(managed_application_list)
{
    plist_t r = report_of("zentral/managed_application_list.plist");
    ASSERT_NOT_NULL(r);
    st_inventory x;
    ASSERT_INT_EQ(inventory_parse(r, UE_OS_MACOS, &x), ST_INV_APPS);
    ASSERT_INT_EQ(x.app_count, 1);
    json_t *l = list_of(x.apps);
    ASSERT_STR_EQ(item_str(l, 0, "identifier"), "com.acme.myenterpriseapp");
    ASSERT_STR_EQ(item_str(l, 0, "status"), "Managed");
    json_decref(l);
    st_inventory_cleanup(&x);
    plist_free(r);
}

TEST(certificate_list)
{
    plist_t r = report_of("zentral/certificate_list.plist");
    ASSERT_NOT_NULL(r);
    plist_t arr = pl_get_typed(r, "CertificateList", PLIST_ARRAY);
    ASSERT_NOT_NULL(arr);
    st_inventory x;
    ASSERT_INT_EQ(inventory_parse(r, UE_OS_IOS, &x), ST_INV_CERTS);
    ASSERT_INT_EQ(x.cert_count, (int)plist_array_get_size(arr));
    json_t *l = list_of(x.certs);
    ASSERT_STR_EQ(item_str(l, 0, "common_name"), "zentral");
    ASSERT(json_is_true(json_object_get(json_array_get(l, 0), "is_identity")));
    ASSERT_STR_EQ(item_str(l, 1, "common_name"), "Zentral CA");
    /* The identifier is the SHA-256 of the certificate the device holds; the DER is not kept. */
    size_t len = 0;
    const uint8_t *der = pl_get_data(plist_array_get_item(arr, 0), "Data", &len);
    char hex[65];
    crypto_sha256_hex(der, len, hex);
    ASSERT_STR_EQ(item_str(l, 0, "sha256"), hex);
    ASSERT(json_integer_value(json_object_get(json_array_get(l, 0), "not_after")) > 1700000000);
    ASSERT(strstr(x.certs, "MIID") == NULL);
    json_decref(l);
    st_inventory_cleanup(&x);
    plist_free(r);
}

/* ---- hostile answers ---- */

TEST(hostile_values_are_dropped)
{
    plist_t r = plist_new_dict();
    plist_t q = plist_new_dict();
    pl_set_string(q, "OSVersion", "18.4");
    pl_set_string(q, "DeviceName", "bad\x01name"); /* a control character */
    pl_set_string(q, "ModelName", "\xff\xfe");     /* not UTF-8 */
    char big[600];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    pl_set_string(q, "BuildVersion", big); /* too long */
    plist_dict_set_item(q, "DeviceCapacity", plist_new_real(-5));
    plist_dict_set_item(q, "AvailableDeviceCapacity", plist_new_string("12"));
    plist_dict_set_item(q, "Model", plist_new_uint(7)); /* wrong type */
    plist_dict_set_item(r, "QueryResponses", q);
    plist_t apps = plist_new_array();
    for (int i = 0; i < INV_MAX_ITEMS + 20; i++) {
        plist_t a = plist_new_dict();
        char id[32];
        snprintf(id, sizeof(id), "com.example.app%d", i);
        pl_set_string(a, "Identifier", id);
        plist_array_append_item(apps, a);
    }
    plist_array_append_item(apps, plist_new_string("not a dictionary"));
    plist_dict_set_item(r, "InstalledApplicationList", apps);
    st_inventory x;
    ASSERT_INT_EQ(inventory_parse(r, UE_OS_IOS, &x), ST_INV_DEVICE | ST_INV_APPS);
    ASSERT_STR_EQ(x.os_version, "18.4");
    ASSERT(x.device_name == NULL && x.model_name == NULL && x.build_version == NULL);
    ASSERT(x.model == NULL);
    ASSERT_INT_EQ(x.capacity_mb, -1);
    ASSERT_INT_EQ(x.available_mb, -1);
    ASSERT_INT_EQ(x.app_count, INV_MAX_ITEMS + 20); /* the device's count */
    json_t *l = list_of(x.apps);
    ASSERT_INT_EQ(json_array_size(l), INV_MAX_ITEMS); /* what is kept */
    json_decref(l);
    st_inventory_cleanup(&x);
    plist_free(r);

    /* Not a dictionary, or nothing an inventory keeps. */
    plist_t a = plist_new_array();
    ASSERT_INT_EQ(inventory_parse(a, UE_OS_IOS, &x), 0);
    plist_free(a);
    r = plist_new_dict();
    pl_set_string(r, "Status", "Acknowledged");
    ASSERT_INT_EQ(inventory_parse(r, UE_OS_IOS, &x), 0);
    ASSERT_INT_EQ(inventory_parse(NULL, UE_OS_IOS, &x), 0);
    plist_free(r);
}

TEST(json_of_nothing_known)
{
    ASSERT(json_is_null(inventory_json(NULL, 1)));
    st_inventory x = {0};
    plist_t r = plist_new_dict();
    inventory_parse(r, UE_OS_IOS, &x); /* blank: everything unknown */
    plist_free(r);
    json_t *j = inventory_json(&x, 0);
    ASSERT(json_is_null(json_object_get(j, "os_version")));
    ASSERT(json_is_null(json_object_get(j, "storage_capacity_mb")));
    ASSERT(json_is_null(json_object_get(j, "passcode_compliant")));
    ASSERT(json_is_null(json_object_get(j, "app_count")));
    ASSERT(json_object_get(j, "apps") == NULL); /* lists only when asked for */
    json_decref(j);
}

TEST_MAIN(TEST_ENTRY(version_keys_compare_per_component),
          TEST_ENTRY(version_filter_values_are_strict),
          TEST_ENTRY(round_asks_only_what_user_enrollment_allows), TEST_ENTRY(round_per_platform),
          TEST_ENTRY(device_information_from_a_mac),
          TEST_ENTRY(device_information_with_only_forbidden_answers),
          TEST_ENTRY(security_info_keeps_only_what_user_enrollment_reports),
          TEST_ENTRY(profile_list), TEST_ENTRY(installed_application_list),
          TEST_ENTRY(managed_application_list), TEST_ENTRY(certificate_list),
          TEST_ENTRY(hostile_values_are_dropped), TEST_ENTRY(json_of_nothing_known))
