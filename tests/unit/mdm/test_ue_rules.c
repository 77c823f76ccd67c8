/*
 * User Enrollment rules (src/mdm/ue_rules.c) against facts of Apple's device-management
 * schema as vendored in ../shared/spec/apple-device-management (release of iOS 18.1 /
 * macOS 15.1). Every expected verdict below was read from the YAML, and most match the
 * tables of PROTOCOL.md 12.2-12.4; if a re-vendored schema changes one, the test should be
 * updated together with the regenerated src/mdm/ue_tables.c.
 */
#include "harness.h"

#include <plist/plist.h>

#include "mdm/ue_rules.h"

static char err[1024];
static char warnings[8192];
static int n_warnings;

static void collect(void *ctx, const char *msg)
{
    size_t len = strlen(warnings);
    (void)ctx;
    n_warnings++;
    snprintf(warnings + len, sizeof(warnings) - len, "%s\n", msg);
}

static void reset(void)
{
    err[0] = '\0';
    warnings[0] = '\0';
    n_warnings = 0;
}

/* Parses "<dict>...</dict>" (or any plist body) into a plist; NULL on a test typo. */
static plist_t parse(const char *body)
{
    static char xml[16384];
    plist_t p = NULL;
    snprintf(xml, sizeof(xml),
             "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\">%s</plist>", body);
    plist_from_xml(xml, (uint32_t)strlen(xml), &p);
    return p;
}

/* Validates a Command dict given as the inside of <dict>. -99 means the XML did not parse. */
static int cmd(enum ue_os os, const char *dict_body)
{
    char body[8192];
    plist_t p;
    int rc;
    reset();
    snprintf(body, sizeof(body), "<dict>%s</dict>", dict_body);
    if ((p = parse(body)) == NULL)
        return -99;
    rc = ue_command_validate(p, os, collect, NULL, err, sizeof(err));
    plist_free(p);
    return rc;
}

#define COMMON(type)                                                                               \
    "<key>PayloadType</key><string>" type "</string>"                                              \
    "<key>PayloadVersion</key><integer>1</integer>"                                                \
    "<key>PayloadIdentifier</key><string>com.example." type "</string>"                            \
    "<key>PayloadUUID</key><string>6C5A3B1E-1111-4A2B-9C3D-000000000001</string>"                  \
    "<key>PayloadDisplayName</key><string>Test</string>"

/* Validates one payload dict given as the inside of <dict>. */
static int payload(enum ue_os os, const char *dict_body)
{
    char body[8192];
    plist_t p;
    int rc;
    reset();
    snprintf(body, sizeof(body), "<dict>%s</dict>", dict_body);
    if ((p = parse(body)) == NULL)
        return -99;
    rc = ue_payload_validate(p, os, collect, NULL, err, sizeof(err));
    plist_free(p);
    return rc;
}

/* Validates a profile: top-level keys, then the payload dicts given as PayloadContent. */
static int profile(enum ue_os os, const char *top_extra, const char *content)
{
    char body[12288];
    plist_t p;
    int rc;
    reset();
    snprintf(body, sizeof(body),
             "<dict><key>PayloadType</key><string>Configuration</string>"
             "<key>PayloadVersion</key><integer>1</integer>"
             "<key>PayloadIdentifier</key><string>com.example.profile</string>"
             "<key>PayloadUUID</key><string>6C5A3B1E-1111-4A2B-9C3D-0000000000FF</string>"
             "<key>PayloadDisplayName</key><string>Orchard</string>%s"
             "<key>PayloadContent</key><array>%s</array></dict>",
             top_extra, content);
    if ((p = parse(body)) == NULL)
        return -99;
    rc = ue_profile_validate(p, os, collect, NULL, err, sizeof(err));
    plist_free(p);
    return rc;
}

#define WIFI                                                                                       \
    "<dict>" COMMON("com.apple.wifi.managed") "<key>SSID_STR</key><string>Corp</string>"           \
                                              "<key>AutoJoin</key><true/><key>EncryptionType</"    \
                                              "key><string>WPA2</string>"                          \
                                              "<key>Password</key><string>secret</string></dict>"

#define SCEP                                                                                       \
    "<dict>" COMMON(                                                                               \
        "com.apple.security.scep") "<key>PayloadContent</key><dict>"                               \
                                   "<key>URL</key><string>https://mdm.example.com/scep</string>"   \
                                   "<key>Name</key><string>Orchard CA</string>"                    \
                                   "<key>Subject</key><array><array><array><string>CN</"           \
                                   "string><string>device</string>"                                \
                                   "</array></array></array>"                                      \
                                   "<key>Challenge</key><string>x</string><key>Keysize</"          \
                                   "key><integer>2048</integer>"                                   \
                                   "<key>Key Type</key><string>RSA</string><key>Key "              \
                                   "Usage</key><integer>5</integer>"                               \
                                   "</dict></dict>"

/* ---- names, versions, table shape ---- */

TEST(os_parse_names)
{
    enum ue_os os = UE_OS_TVOS;
    ASSERT_INT_EQ(ue_os_parse("ios", &os), 0);
    ASSERT_INT_EQ(os, UE_OS_IOS);
    ASSERT_INT_EQ(ue_os_parse("iPadOS", &os), 0);
    ASSERT_INT_EQ(os, UE_OS_IOS);
    ASSERT_INT_EQ(ue_os_parse("macOS", &os), 0);
    ASSERT_INT_EQ(os, UE_OS_MACOS);
    ASSERT_INT_EQ(ue_os_parse("visionos", &os), 0);
    ASSERT_INT_EQ(os, UE_OS_VISIONOS);
    ASSERT_INT_EQ(ue_os_parse("android", &os), -1);
    ASSERT_INT_EQ(os, UE_OS_VISIONOS);
    ASSERT_INT_EQ(ue_os_parse(NULL, &os), -1);
    ASSERT_STR_EQ(ue_os_name(UE_OS_MACOS), "macOS");
    ASSERT_STR_EQ(ue_os_name(UE_OS_VISIONOS), "visionOS");
    ASSERT_INT_EQ(ue_os_has_user_enrollment(UE_OS_WATCHOS), 0);
}

TEST(version_format)
{
    char v[16];
    ue_version_format(UE_VERSION(10, 13, 4), v, sizeof(v));
    ASSERT_STR_EQ(v, "10.13.4");
    ue_version_format(UE_VERSION(17, 0, 0), v, sizeof(v));
    ASSERT_STR_EQ(v, "17.0");
    ASSERT(UE_VERSION(10, 13, 4) > UE_VERSION(10, 13, 0));
    ASSERT(UE_VERSION(11, 0, 0) > UE_VERSION(10, 15, 7));
}

static int run_sorted(uint16_t first, uint16_t count)
{
    for (uint16_t i = 1; i < count; i++)
        if (strcmp(ue_keys[first + i - 1].name, ue_keys[first + i].name) >= 0)
            return 0;
    return (size_t)first + count <= UE_N_KEYS;
}

/* Binary search depends on this; the generator sorts, this proves it. */
TEST(tables_sorted_and_in_bounds)
{
    const struct ue_entry *groups[] = {ue_commands, ue_checkins, ue_payloads};
    const size_t sizes[] = {UE_N_COMMANDS, UE_N_CHECKINS, UE_N_PAYLOADS};
    for (size_t g = 0; g < 3; g++) {
        for (size_t i = 0; i < sizes[g]; i++) {
            const struct ue_entry *e = &groups[g][i];
            if (i > 0)
                ASSERT(strcmp(groups[g][i - 1].name, e->name) < 0);
            ASSERT(e->avail < UE_N_AVAIL);
            ASSERT(run_sorted(e->first, e->count));
        }
    }
    for (size_t i = 0; i < UE_N_KEYS; i++) {
        ASSERT(ue_keys[i].avail < UE_N_AVAIL);
        ASSERT(ue_keys[i].type <= UE_T_ANY);
        ASSERT(run_sorted(ue_keys[i].first, ue_keys[i].count));
    }
    ASSERT(run_sorted(ue_payload_common.first, ue_payload_common.count));
    ASSERT_INT_EQ(UE_N_COMMANDS, 66);
    ASSERT_INT_EQ(UE_N_CHECKINS, 8);
}

TEST(use_rule_order)
{
    struct ue_os_info i = {UE_MODE_ALLOWED, UE_F_SUPERVISED, UE_VERSION(2, 0, 0), 0};
    ASSERT_INT_EQ(ue_use_of(&i), UE_USE_SUPERVISED);
    i.mode = UE_MODE_FORBIDDEN; /* forbidden is reported before supervision */
    ASSERT_INT_EQ(ue_use_of(&i), UE_USE_FORBIDDEN);
    i = (struct ue_os_info){UE_MODE_ALLOWED, UE_F_REQUIRES_DEP, UE_VERSION(9, 0, 0), 0};
    ASSERT_INT_EQ(ue_use_of(&i), UE_USE_REQUIRES_DEP);
    i = (struct ue_os_info){UE_MODE_IGNORED, 0, UE_VERSION(4, 0, 0), 0};
    ASSERT_INT_EQ(ue_use_of(&i), UE_USE_IGNORED);
    i = (struct ue_os_info){UE_MODE_REQUIRED, 0, UE_VERSION(13, 1, 0), 0};
    ASSERT_INT_EQ(ue_use_of(&i), UE_USE_OK);
    i = (struct ue_os_info){UE_MODE_NA, 0, 0, 0};
    ASSERT_INT_EQ(ue_use_of(&i), UE_USE_NOT_ON_OS);
}

/* ---- commands: may a user enrollment receive it at all? (PROTOCOL.md 12.2) ---- */

TEST(erase_device_forbidden)
{
    char why[256];
    ASSERT_INT_EQ(ue_command_check("EraseDevice", UE_OS_IOS, why, sizeof(why)), -1);
    ASSERT_STR_EQ(why, "EraseDevice is not allowed in User Enrollment on iOS");
    ASSERT_INT_EQ(ue_command_check("EraseDevice", UE_OS_MACOS, why, sizeof(why)), -1);
    ASSERT_STR_EQ(why, "EraseDevice is not allowed in User Enrollment on macOS");
    ASSERT_INT_EQ(ue_command_check("EraseDevice", UE_OS_VISIONOS, NULL, 0), -1);
}

TEST(profile_commands_allowed)
{
    const char *names[] = {"ProfileList",     "InstallProfile",          "RemoveProfile",
                           "CertificateList", "ProvisioningProfileList", "SecurityInfo"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        ASSERT_INT_EQ(ue_command_check(names[i], UE_OS_IOS, NULL, 0), 0);
        ASSERT_INT_EQ(ue_command_check(names[i], UE_OS_MACOS, NULL, 0), 0);
        ASSERT_INT_EQ(ue_command_check(names[i], UE_OS_VISIONOS, NULL, 0), 0);
    }
}

TEST(device_lock_ios_only)
{
    char why[256];
    ASSERT_INT_EQ(ue_command_check("DeviceLock", UE_OS_IOS, why, sizeof(why)), 0);
    ASSERT_INT_EQ(ue_command_check("DeviceLock", UE_OS_VISIONOS, why, sizeof(why)), 0);
    ASSERT_INT_EQ(ue_command_check("DeviceLock", UE_OS_MACOS, why, sizeof(why)), -1);
    ASSERT_STR_EQ(why, "DeviceLock is not allowed in User Enrollment on macOS");
}

TEST(app_commands)
{
    char why[256];
    ASSERT_INT_EQ(ue_command_check("InstallApplication", UE_OS_IOS, NULL, 0), 0);
    ASSERT_INT_EQ(ue_command_check("InstallApplication", UE_OS_MACOS, NULL, 0), 0);
    ASSERT_INT_EQ(ue_command_check("InstallApplication", UE_OS_VISIONOS, NULL, 0), 0);
    ASSERT_INT_EQ(ue_command_check("ManagedApplicationList", UE_OS_MACOS, NULL, 0), 0);
    ASSERT_INT_EQ(ue_command_check("RemoveApplication", UE_OS_IOS, NULL, 0), 0);
    ASSERT_INT_EQ(ue_command_check("RemoveApplication", UE_OS_MACOS, why, sizeof(why)), -1);
    ASSERT_STR_EQ(why, "RemoveApplication is not allowed in User Enrollment on macOS");
    ASSERT_INT_EQ(ue_command_check("InstalledApplicationList", UE_OS_IOS, NULL, 0), 0);
    ASSERT_INT_EQ(ue_command_check("InstalledApplicationList", UE_OS_MACOS, NULL, 0), -1);
    ASSERT_INT_EQ(ue_command_check("InstallEnterpriseApplication", UE_OS_MACOS, NULL, 0), 0);
    ASSERT_INT_EQ(ue_command_check("InstallEnterpriseApplication", UE_OS_IOS, why, sizeof(why)),
                  -1);
    ASSERT_STR_EQ(why, "InstallEnterpriseApplication is not available on iOS");
    ASSERT_INT_EQ(ue_command_check("ManagedApplicationAttributes", UE_OS_MACOS, why, sizeof(why)),
                  -1);
    ASSERT_STR_EQ(why, "ManagedApplicationAttributes is not available on macOS");
}

TEST(settings_and_ddm_allowed)
{
    ASSERT_INT_EQ(ue_command_check("Settings", UE_OS_IOS, NULL, 0), 0);
    ASSERT_INT_EQ(ue_command_check("Settings", UE_OS_MACOS, NULL, 0), 0);
    ASSERT_INT_EQ(ue_command_check("DeclarativeManagement", UE_OS_IOS, NULL, 0), 0);
    ASSERT_INT_EQ(ue_command_check("DeclarativeManagement", UE_OS_MACOS, NULL, 0), 0);
    ASSERT_INT_EQ(ue_command_check("DeviceInformation", UE_OS_VISIONOS, NULL, 0), 0);
}

TEST(media_commands)
{
    char why[256];
    ASSERT_INT_EQ(ue_command_check("InstallMedia", UE_OS_IOS, NULL, 0), 0);
    ASSERT_INT_EQ(ue_command_check("InstallMedia", UE_OS_MACOS, why, sizeof(why)), -1);
    ASSERT_STR_EQ(why, "InstallMedia is not allowed in User Enrollment on macOS");
    ASSERT_INT_EQ(ue_command_check("InstallMedia", UE_OS_VISIONOS, why, sizeof(why)), -1);
    ASSERT_STR_EQ(why, "InstallMedia is not available on visionOS");
    ASSERT_INT_EQ(ue_command_check("ManagedMediaList", UE_OS_MACOS, why, sizeof(why)), -1);
    ASSERT_STR_EQ(why, "ManagedMediaList is not available on macOS");
}

TEST(device_control_forbidden)
{
    char why[256];
    const char *names[] = {"RestartDevice",   "ShutDownDevice",   "ClearPasscode",
                           "EnableLostMode",  "ScheduleOSUpdate", "Restrictions",
                           "DeviceConfigured"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        char want[128];
        ASSERT_INT_EQ(ue_command_check(names[i], UE_OS_IOS, why, sizeof(why)), -1);
        snprintf(want, sizeof(want), "%s is not allowed in User Enrollment on iOS", names[i]);
        ASSERT_STR_EQ(why, want);
    }
    ASSERT_INT_EQ(ue_command_check("ClearPasscode", UE_OS_MACOS, why, sizeof(why)), -1);
    ASSERT_STR_EQ(why, "ClearPasscode is not available on macOS");
    ASSERT_INT_EQ(ue_command_check("RotateFileVaultKey", UE_OS_MACOS, NULL, 0), -1);
    ASSERT_INT_EQ(ue_command_check("UserList", UE_OS_MACOS, NULL, 0), -1);
}

TEST(unknown_command_and_os)
{
    char why[256];
    ASSERT_INT_EQ(ue_command_check("Foo", UE_OS_IOS, why, sizeof(why)), -1);
    ASSERT_STR_EQ(why, "unknown RequestType Foo");
    ASSERT_INT_EQ(ue_command_check(NULL, UE_OS_IOS, why, sizeof(why)), -1);
    ASSERT_STR_EQ(why, "unknown RequestType (none)");
    ASSERT_INT_EQ(ue_command_check("eraseDevice", UE_OS_IOS, NULL, 0), -1); /* case matters */
    ASSERT_INT_EQ(ue_command_check("ProfileList", UE_OS_TVOS, why, sizeof(why)), -1);
    ASSERT_STR_EQ(why, "User Enrollment does not exist on tvOS");
}

TEST(command_table_lookup)
{
    const struct ue_entry *e = ue_command_find("DeviceInformation");
    const struct ue_os_info *mac;
    ASSERT_NOT_NULL(e);
    ASSERT_STR_EQ(e->name, "DeviceInformation");
    mac = ue_entry_os(e, UE_OS_MACOS);
    ASSERT_INT_EQ(mac->mode, UE_MODE_ALLOWED);
    ASSERT_INT_EQ(mac->flags & (UE_F_DEVICE_CHANNEL | UE_F_USER_CHANNEL),
                  UE_F_DEVICE_CHANNEL | UE_F_USER_CHANNEL);
    ASSERT_INT_EQ(mac->introduced, UE_VERSION(10, 7, 0));
    ASSERT_INT_EQ(ue_entry_os(e, UE_OS_IOS)->introduced, UE_VERSION(4, 0, 0));
    e = ue_command_find("EraseDevice");
    ASSERT_INT_EQ(ue_entry_os(e, UE_OS_MACOS)->flags & UE_F_USER_CHANNEL, 0);
    ASSERT(ue_command_find("Nope") == NULL);
    ASSERT(ue_payload_find("TopLevel") == NULL);
    ASSERT(ue_payload_find("CommonPayloadKeys") == NULL);
}

TEST(entry_key_paths)
{
    const struct ue_entry *e = ue_command_find("InstallApplication");
    const struct ue_key *k = ue_entry_key(e, "Options.PurchaseMethod");
    ASSERT_NOT_NULL(k);
    ASSERT_INT_EQ(k->type, UE_T_INTEGER);
    ASSERT_STR_EQ(ue_type_name(k->type), "integer");
    ASSERT(ue_entry_key(e, "Options.") == NULL);
    ASSERT(ue_entry_key(e, "") == NULL);
    ASSERT(ue_entry_key(e, "Nope") == NULL);
    k = ue_entry_key(ue_command_find("DeviceInformation"), "Queries.QueriesItem.UDID");
    ASSERT_NOT_NULL(k);
    ASSERT_INT_EQ(ue_key_os(k, UE_OS_IOS)->mode, UE_MODE_FORBIDDEN);
    k = ue_entry_key(ue_command_find("DeviceInformation"), "Queries");
    ASSERT_INT_EQ(k->flags & UE_K_REQUIRED, UE_K_REQUIRED);
    ASSERT(ue_entry_child(ue_command_find("DeviceInformation"), "Queries") == k);
    /* Dotted names need the one-step lookups. */
    k = ue_entry_child(ue_payload_find("com.apple.MCX"), "com.apple.EnergySaver.desktop.ACPower");
    ASSERT_NOT_NULL(k);
    ASSERT_INT_EQ(k->type, UE_T_DICTIONARY);
    ASSERT_INT_EQ(ue_key_os(k, UE_OS_MACOS)->mode, UE_MODE_FORBIDDEN);
    ASSERT_INT_EQ(ue_key_os(k, UE_OS_IOS)->mode, UE_MODE_NA);
}

/* ---- check-in messages (PROTOCOL.md 8.3) ---- */

TEST(checkin_messages_allowed)
{
    const char *names[] = {"Authenticate", "TokenUpdate", "CheckOut", "DeclarativeManagement",
                           "GetToken"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        ASSERT_INT_EQ(ue_checkin_message_check(names[i], UE_OS_IOS, NULL, 0), 0);
        ASSERT_INT_EQ(ue_checkin_message_check(names[i], UE_OS_MACOS, NULL, 0), 0);
        ASSERT_INT_EQ(ue_checkin_message_check(names[i], UE_OS_VISIONOS, NULL, 0), 0);
    }
}

TEST(checkin_bootstrap_and_user_auth)
{
    char why[256];
    ASSERT_INT_EQ(ue_checkin_message_check("GetBootstrapToken", UE_OS_MACOS, why, sizeof(why)), -1);
    ASSERT_STR_EQ(why, "GetBootstrapToken is not allowed in User Enrollment on macOS");
    ASSERT_INT_EQ(ue_checkin_message_check("SetBootstrapToken", UE_OS_IOS, why, sizeof(why)), -1);
    ASSERT_STR_EQ(why, "SetBootstrapToken is not available on iOS");
    ASSERT_INT_EQ(ue_checkin_message_check("UserAuthenticate", UE_OS_MACOS, why, sizeof(why)), -1);
    ASSERT_STR_EQ(why, "UserAuthenticate is not allowed in User Enrollment on macOS");
    ASSERT_INT_EQ(ue_checkin_message_check("ReturnToService", UE_OS_IOS, why, sizeof(why)), -1);
    ASSERT_STR_EQ(why, "unknown MessageType ReturnToService"); /* newer than the 18.1 schema */
}

/* ---- DeviceInformation Queries (PROTOCOL.md 12.2) ---- */

#define DEVINFO(queries)                                                                           \
    "<key>RequestType</key><string>DeviceInformation</string>"                                     \
    "<key>Queries</key><array>" queries "</array>"

TEST(devinfo_allowed_queries)
{
    ASSERT_INT_EQ(cmd(UE_OS_IOS, DEVINFO("<string>OSVersion</string><string>DeviceName</string>"
                                         "<string>Model</string><string>BuildVersion</string>"
                                         "<string>IsSupervised</string>")),
                  0);
    ASSERT_INT_EQ(n_warnings, 0);
    ASSERT_INT_EQ(cmd(UE_OS_MACOS, DEVINFO("<string>OSVersion</string>")), 0);
}

TEST(devinfo_udid_forbidden)
{
    ASSERT_INT_EQ(cmd(UE_OS_IOS, DEVINFO("<string>UDID</string>")), -1);
    ASSERT_STR_EQ(err, "DeviceInformation: Queries not allowed in User Enrollment on iOS: UDID");
    ASSERT_INT_EQ(cmd(UE_OS_MACOS, DEVINFO("<string>UDID</string>")), -1);
    ASSERT_STR_EQ(err, "DeviceInformation: Queries not allowed in User Enrollment on macOS: UDID");
}

TEST(devinfo_names_every_forbidden_query)
{
    ASSERT_INT_EQ(cmd(UE_OS_IOS, DEVINFO("<string>OSVersion</string><string>UDID</string>"
                                         "<string>SerialNumber</string><string>IMEI</string>"
                                         "<string>WiFiMAC</string>")),
                  -1);
    ASSERT_STR_EQ(err, "DeviceInformation: Queries not allowed in User Enrollment on iOS: UDID, "
                       "SerialNumber, IMEI, WiFiMAC");
}

TEST(devinfo_push_token_differs_by_os)
{
    /* The schema forbids PushToken in iOS UE but allows it in macOS UE. */
    ASSERT_INT_EQ(cmd(UE_OS_MACOS, DEVINFO("<string>PushToken</string>")), 0);
    ASSERT_INT_EQ(cmd(UE_OS_IOS, DEVINFO("<string>PushToken</string>")), -1);
    ASSERT_STR_EQ(err,
                  "DeviceInformation: Queries not allowed in User Enrollment on iOS: PushToken");
}

TEST(devinfo_unavailable_and_unknown_queries_warn)
{
    ASSERT_INT_EQ(cmd(UE_OS_IOS, DEVINFO("<string>ProvisioningUDID</string>"
                                         "<string>FutureQuery</string>")),
                  0);
    ASSERT_STR_EQ(warnings, "DeviceInformation: Queries: ProvisioningUDID is not available on iOS\n"
                            "DeviceInformation: Queries: unknown value FutureQuery (not in "
                            "Apple's schema)\n");
    ASSERT_INT_EQ(cmd(UE_OS_MACOS, DEVINFO("<string>ProvisioningUDID</string>")), -1);
}

TEST(devinfo_shape_errors)
{
    ASSERT_INT_EQ(cmd(UE_OS_IOS, "<key>RequestType</key><string>DeviceInformation</string>"), -1);
    ASSERT_STR_EQ(err, "DeviceInformation: missing required key Queries");
    ASSERT_INT_EQ(cmd(UE_OS_IOS, "<key>RequestType</key><string>DeviceInformation</string>"
                                 "<key>Queries</key><string>UDID</string>"),
                  -1);
    ASSERT_STR_EQ(err, "DeviceInformation: Queries must be array, not string");
    ASSERT_INT_EQ(cmd(UE_OS_IOS, DEVINFO("<integer>1</integer>")), -1);
    ASSERT_STR_EQ(err, "DeviceInformation: Queries[0] must be string, not integer");
}

TEST(device_query_check_matches_table)
{
    char why[256];
    size_t counts[3] = {0, 0, 0};
    ASSERT_INT_EQ(ue_device_query_check("OSVersion", UE_OS_IOS, why, sizeof(why)), 0);
    ASSERT_INT_EQ(ue_device_query_check("SerialNumber", UE_OS_IOS, why, sizeof(why)), -1);
    ASSERT_STR_EQ(why, "DeviceInformation query SerialNumber is not allowed in User Enrollment "
                       "on iOS");
    ASSERT_INT_EQ(ue_device_query_check("IMEI", UE_OS_MACOS, why, sizeof(why)), -1);
    ASSERT_STR_EQ(why, "DeviceInformation query IMEI is not available on macOS");
    ASSERT_INT_EQ(ue_device_query_check("Bogus", UE_OS_IOS, why, sizeof(why)), -1);
    ASSERT_STR_EQ(why, "unknown DeviceInformation query Bogus");
    for (int os = 0; os < 3; os++) {
        for (const char *const *q = ue_devinfo_forbidden_queries[os]; *q; q++) {
            ASSERT_INT_EQ(ue_device_query_check(*q, (enum ue_os)os, NULL, 0), -1);
            counts[os]++;
        }
    }
    ASSERT_INT_EQ(counts[UE_OS_IOS], 44);
    ASSERT_INT_EQ(counts[UE_OS_MACOS], 17);
    ASSERT_INT_EQ(counts[UE_OS_VISIONOS], 9);
}

/* ---- InstallApplication (PROTOCOL.md 13.1) ---- */

#define INSTALL_APP "<key>RequestType</key><string>InstallApplication</string>"

TEST(install_application_valid)
{
    ASSERT_INT_EQ(cmd(UE_OS_IOS, INSTALL_APP "<key>iTunesStoreID</key><integer>361309726</integer>"
                                             "<key>ManagementFlags</key><integer>1</integer>"
                                             "<key>Options</key><dict><key>PurchaseMethod</key>"
                                             "<integer>1</integer></dict>"
                                             "<key>Configuration</key><dict><key>ServerURL</key>"
                                             "<string>https://x</string></dict>"
                                             "<key>Attributes</key><dict><key>VPNUUID</key>"
                                             "<string>abc</string></dict>"),
                  0);
    ASSERT_INT_EQ(n_warnings, 0);
    ASSERT_INT_EQ(cmd(UE_OS_MACOS, INSTALL_APP "<key>Identifier</key><string>com.example.app"
                                               "</string><key>iOSApp</key><false/>"),
                  0);
}

TEST(install_application_change_management_state_forbidden)
{
    ASSERT_INT_EQ(cmd(UE_OS_IOS, INSTALL_APP "<key>Identifier</key><string>com.example.app</string>"
                                             "<key>ChangeManagementState</key><string>Managed"
                                             "</string>"),
                  -1);
    ASSERT_STR_EQ(err, "InstallApplication: ChangeManagementState is not allowed in User "
                       "Enrollment on iOS");
}

TEST(install_application_macos_install_as_managed_forbidden)
{
    /* The schema disagrees with WWDC21 here (PROTOCOL.md 13.1, 18): the schema wins. */
    ASSERT_INT_EQ(cmd(UE_OS_MACOS, INSTALL_APP "<key>InstallAsManaged</key><true/>"), -1);
    ASSERT_STR_EQ(
        err, "InstallApplication: InstallAsManaged is not allowed in User Enrollment on macOS");
    ASSERT_INT_EQ(cmd(UE_OS_MACOS, INSTALL_APP "<key>ManagementFlags</key><integer>1</integer>"),
                  -1);
    ASSERT_STR_EQ(err,
                  "InstallApplication: ManagementFlags is not allowed in User Enrollment on macOS");
    ASSERT_INT_EQ(cmd(UE_OS_IOS, INSTALL_APP "<key>InstallAsManaged</key><true/>"), -1);
    ASSERT_STR_EQ(err, "InstallApplication: InstallAsManaged is not available on iOS");
}

TEST(install_application_types)
{
    ASSERT_INT_EQ(cmd(UE_OS_IOS, INSTALL_APP "<key>iTunesStoreID</key><string>361309726</string>"),
                  -1);
    ASSERT_STR_EQ(err, "InstallApplication: iTunesStoreID must be integer, not string");
    ASSERT_INT_EQ(cmd(UE_OS_IOS, INSTALL_APP "<key>Options</key><dict><key>PurchaseMethod</key>"
                                             "<string>1</string></dict>"),
                  -1);
    ASSERT_STR_EQ(err, "InstallApplication: Options.PurchaseMethod must be integer, not string");
}

TEST(install_application_unknown_keys)
{
    ASSERT_INT_EQ(cmd(UE_OS_IOS, INSTALL_APP "<key>Foo</key><true/>"), -1);
    ASSERT_STR_EQ(err, "InstallApplication: unknown key Foo");
    ASSERT_INT_EQ(cmd(UE_OS_IOS, INSTALL_APP "<key>Options</key><dict><key>Foo</key><true/>"
                                             "</dict>"),
                  -1);
    ASSERT_STR_EQ(err, "InstallApplication: unknown key Options.Foo");
    ASSERT_INT_EQ(cmd(UE_OS_MACOS, INSTALL_APP "<key>Attributes</key><dict/>"), -1);
    ASSERT_STR_EQ(err, "InstallApplication: Attributes is not available on macOS");
}

TEST(command_plist_shape)
{
    ASSERT_INT_EQ(cmd(UE_OS_IOS, "<key>RequestType</key><string>EraseDevice</string>"), -1);
    ASSERT_STR_EQ(err, "EraseDevice is not allowed in User Enrollment on iOS");
    ASSERT_INT_EQ(cmd(UE_OS_IOS, "<key>Identifier</key><string>x</string>"), -1);
    ASSERT_STR_EQ(err, "the Command has no RequestType string");
    ASSERT_INT_EQ(cmd(UE_OS_IOS, "<key>RequestType</key><string>ProfileList</string>"), 0);
    ASSERT_INT_EQ(cmd(UE_OS_IOS, "<key>RequestType</key><string>RemoveProfile</string>"
                                 "<key>Identifier</key><string>com.example.p</string>"),
                  0);
    ASSERT_INT_EQ(cmd(UE_OS_IOS, "<key>RequestType</key><string>InstallProfile</string>"
                                 "<key>Payload</key><data>AAAA</data>"),
                  0);
}

/* ---- Settings: items told apart by "Item" ---- */

#define SETTINGS(items)                                                                            \
    "<key>RequestType</key><string>Settings</string><key>Settings</key><array>" items "</array>"

TEST(settings_app_config_and_org_info)
{
    ASSERT_INT_EQ(cmd(UE_OS_IOS, SETTINGS("<dict><key>Item</key><string>ApplicationConfiguration"
                                          "</string><key>Identifier</key><string>com.example.app"
                                          "</string><key>Configuration</key><dict><key>k</key>"
                                          "<string>v</string></dict></dict>"
                                          "<dict><key>Item</key><string>OrganizationInfo</string>"
                                          "<key>OrganizationInfo</key><dict><key>OrganizationName"
                                          "</key><string>Orchard</string></dict></dict>")),
                  0);
    ASSERT_INT_EQ(n_warnings, 0);
}

TEST(settings_forbidden_items)
{
    ASSERT_INT_EQ(cmd(UE_OS_IOS, SETTINGS("<dict><key>Item</key><string>DeviceName</string>"
                                          "<key>DeviceName</key><string>x</string></dict>")),
                  -1);
    ASSERT_STR_EQ(err,
                  "Settings: Settings[0](DeviceName) is not allowed in User Enrollment on iOS");
    ASSERT_INT_EQ(cmd(UE_OS_MACOS, SETTINGS("<dict><key>Item</key><string>Bluetooth</string>"
                                            "<key>Enabled</key><true/></dict>")),
                  -1);
    ASSERT_STR_EQ(err, "Settings: Settings[0](Bluetooth) is not allowed in User Enrollment on "
                       "macOS");
    ASSERT_INT_EQ(cmd(UE_OS_MACOS, SETTINGS("<dict><key>Item</key><string>DataRoaming</string>"
                                            "<key>Enabled</key><true/></dict>")),
                  -1);
    ASSERT_STR_EQ(err, "Settings: Settings[0](DataRoaming) is not available on macOS");
}

TEST(settings_item_errors)
{
    ASSERT_INT_EQ(cmd(UE_OS_IOS, SETTINGS("<dict><key>Item</key><string>Foo</string></dict>")), -1);
    ASSERT_STR_EQ(err, "Settings: Settings[0]: unknown Item Foo");
    ASSERT_INT_EQ(cmd(UE_OS_IOS, SETTINGS("<dict><key>Enabled</key><true/></dict>")), -1);
    ASSERT_STR_EQ(err, "Settings: Settings[0] has no Item string");
    ASSERT_INT_EQ(cmd(UE_OS_IOS, SETTINGS("<dict><key>Item</key><string>ApplicationConfiguration"
                                          "</string></dict>")),
                  -1);
    ASSERT_STR_EQ(err, "Settings: missing required key "
                       "Settings[0](ApplicationConfiguration).Identifier");
}

TEST(command_check_key)
{
    char why[256];
    ASSERT_INT_EQ(ue_command_check_key("InstallApplication", "Options.PurchaseMethod", UE_OS_IOS,
                                       PLIST_UINT, why, sizeof(why)),
                  0);
    ASSERT_INT_EQ(ue_command_check_key("InstallApplication", "Options.PurchaseMethod", UE_OS_IOS,
                                       PLIST_STRING, why, sizeof(why)),
                  -1);
    ASSERT_STR_EQ(why, "InstallApplication: Options.PurchaseMethod must be integer, not string");
    ASSERT_INT_EQ(ue_command_check_key("InstallApplication", "ChangeManagementState", UE_OS_IOS,
                                       PLIST_NONE, why, sizeof(why)),
                  -1);
    ASSERT_STR_EQ(why, "InstallApplication: ChangeManagementState is not allowed in User "
                       "Enrollment on iOS");
    ASSERT_INT_EQ(
        ue_command_check_key("InstallApplication", "Nope", UE_OS_IOS, PLIST_NONE, why, sizeof(why)),
        -1);
    ASSERT_STR_EQ(why, "InstallApplication: unknown key Nope");
    ASSERT_INT_EQ(
        ue_command_check_key("EraseDevice", "PIN", UE_OS_MACOS, PLIST_STRING, why, sizeof(why)),
        -1);
    ASSERT_STR_EQ(why, "EraseDevice is not allowed in User Enrollment on macOS");
    ASSERT_INT_EQ(ue_command_check_key("DeviceLock", "Message", UE_OS_IOS, PLIST_STRING, NULL, 0),
                  0);
}

/* ---- profile payloads (PROTOCOL.md 12.3, 12.4) ---- */

TEST(wifi_allowed)
{
    ASSERT_INT_EQ(payload(UE_OS_IOS, COMMON("com.apple.wifi.managed") "<key>SSID_STR</key>"
                                                                      "<string>Corp</string>"
                                                                      "<key>AutoJoin</key><true/>"),
                  0);
    ASSERT_INT_EQ(n_warnings, 0);
    ASSERT_INT_EQ(payload(UE_OS_MACOS, COMMON("com.apple.wifi.managed")), 0);
    ASSERT_INT_EQ(payload(UE_OS_VISIONOS, COMMON("com.apple.wifi.managed")), 0);
}

TEST(wifi_proxy_keys)
{
    /* Wi-Fi proxy settings are forbidden in iOS UE; macOS allows ProxyType. */
    ASSERT_INT_EQ(payload(UE_OS_IOS, COMMON("com.apple.wifi.managed") "<key>ProxyType</key>"
                                                                      "<string>Auto</string>"),
                  -1);
    ASSERT_STR_EQ(err,
                  "com.apple.wifi.managed: ProxyType is not allowed in User Enrollment on iOS");
    ASSERT_INT_EQ(payload(UE_OS_MACOS, COMMON("com.apple.wifi.managed") "<key>ProxyType</key>"
                                                                        "<string>Auto</string>"),
                  0);
    ASSERT_INT_EQ(payload(UE_OS_MACOS, COMMON("com.apple.wifi.managed") "<key>ProxyServer</key>"
                                                                        "<string>p</string>"),
                  -1);
    ASSERT_STR_EQ(err,
                  "com.apple.wifi.managed: ProxyServer is not allowed in User Enrollment on macOS");
}

#define RESTRICTIONS(keys) COMMON("com.apple.applicationaccess") keys

TEST(restrictions_allow_camera_forbidden)
{
    ASSERT_INT_EQ(payload(UE_OS_IOS, RESTRICTIONS("<key>allowCamera</key><false/>")), -1);
    ASSERT_STR_EQ(err, "com.apple.applicationaccess: allowCamera is not allowed in User "
                       "Enrollment on iOS");
    ASSERT_INT_EQ(payload(UE_OS_MACOS, RESTRICTIONS("<key>allowCamera</key><false/>")), -1);
    ASSERT_STR_EQ(err, "com.apple.applicationaccess: allowCamera is not allowed in User "
                       "Enrollment on macOS");
}

TEST(restrictions_managed_open_in_allowed)
{
    const char *keys = RESTRICTIONS("<key>allowOpenFromManagedToUnmanaged</key><false/>"
                                    "<key>allowOpenFromUnmanagedToManaged</key><false/>"
                                    "<key>requireManagedPasteboard</key><true/>"
                                    "<key>allowUnmanagedToReadManagedContacts</key><false/>"
                                    "<key>forceAirDropUnmanaged</key><true/>");
    ASSERT_INT_EQ(payload(UE_OS_IOS, keys), 0);
    ASSERT_INT_EQ(n_warnings, 0);
    ASSERT_INT_EQ(payload(UE_OS_VISIONOS, keys), 0);
    ASSERT_INT_EQ(n_warnings, 0);
}

TEST(restrictions_unavailable_keys_warn_on_macos)
{
    ASSERT_INT_EQ(
        payload(UE_OS_MACOS, RESTRICTIONS("<key>allowOpenFromManagedToUnmanaged</key><false/>"
                                          "<key>allowScreenShot</key><true/>")),
        0);
    ASSERT_STR_EQ(warnings, "com.apple.applicationaccess: allowOpenFromManagedToUnmanaged is not "
                            "available on macOS; the device ignores it\n");
}

TEST(restrictions_supervised_only)
{
    /* visionOS: allowed in UE by the mode, but supervised: true. */
    ASSERT_INT_EQ(payload(UE_OS_VISIONOS, RESTRICTIONS("<key>allowCloudPrivateRelay</key>"
                                                       "<false/>")),
                  -1);
    ASSERT_STR_EQ(err, "com.apple.applicationaccess: allowCloudPrivateRelay is supervised-only on "
                       "visionOS; User Enrollment ignores it");
    ASSERT_INT_EQ(payload(UE_OS_IOS, RESTRICTIONS("<key>allowCloudPrivateRelay</key><false/>")),
                  -1);
    ASSERT_STR_EQ(err, "com.apple.applicationaccess: allowCloudPrivateRelay is not allowed in User "
                       "Enrollment on iOS");
}

TEST(restrictions_contacts_and_types)
{
    ASSERT_INT_EQ(payload(UE_OS_IOS, RESTRICTIONS("<key>allowManagedToWriteUnmanagedContacts</key>"
                                                  "<true/>")),
                  -1);
    ASSERT_STR_EQ(err, "com.apple.applicationaccess: allowManagedToWriteUnmanagedContacts is not "
                       "allowed in User Enrollment on iOS");
    ASSERT_INT_EQ(payload(UE_OS_IOS, RESTRICTIONS("<key>allowScreenShot</key><string>no</string>")),
                  -1);
    ASSERT_STR_EQ(err, "com.apple.applicationaccess: allowScreenShot must be boolean, not string");
    ASSERT_INT_EQ(payload(UE_OS_IOS, RESTRICTIONS("<key>allowAssistant</key><true/>"
                                                  "<key>ratingRegion</key><string>us</string>")),
                  0);
}

TEST(scep_allowed)
{
    plist_t p;
    ASSERT_NOT_NULL((p = parse(SCEP)));
    reset();
    ASSERT_INT_EQ(ue_payload_validate(p, UE_OS_IOS, collect, NULL, err, sizeof(err)), 0);
    ASSERT_INT_EQ(n_warnings, 0);
    ASSERT_INT_EQ(ue_payload_validate(p, UE_OS_MACOS, NULL, NULL, err, sizeof(err)), 0);
    plist_free(p);
    ASSERT_INT_EQ(
        payload(UE_OS_IOS,
                COMMON("com.apple.security.scep") "<key>PayloadContent</key><dict><key>URL</"
                                                  "key><string>u</string>"
                                                  "<key>Keysize</key><string>2048</string></dict>"),
        -1);
    ASSERT_STR_EQ(err,
                  "com.apple.security.scep: PayloadContent.Keysize must be integer, not string");
}

TEST(per_app_vpn_allowed_full_vpn_forbidden)
{
    /* The applayer schema lists only its own keys; the shared VPN keys warn as unknown. */
    ASSERT_INT_EQ(
        payload(
            UE_OS_IOS,
            COMMON(
                "com.apple.vpn.managed.applayer") "<key>VPNUUID</key><string>A1</string>"
                                                  "<key>SafariDomains</"
                                                  "key><array><string>example.com</string></array>"
                                                  "<key>VPNType</key><string>IKEv2</string>"),
        0);
    ASSERT_STR_EQ(warnings, "com.apple.vpn.managed.applayer: unknown key VPNType (not in Apple's "
                            "schema); passed through\n");
    ASSERT_INT_EQ(payload(UE_OS_IOS, COMMON("com.apple.vpn.managed")), -1);
    ASSERT_STR_EQ(err, "com.apple.vpn.managed is not allowed in User Enrollment on iOS");
}

TEST(passcode_keys_ignored_on_ios)
{
    ASSERT_INT_EQ(
        payload(
            UE_OS_IOS,
            COMMON(
                "com.apple.mobiledevice.passwordpolicy") "<key>minLength</key><integer>6</integer>"
                                                         "<key>requireAlphanumeric</key><true/>"),
        0);
    ASSERT_STR_EQ(warnings, "com.apple.mobiledevice.passwordpolicy: minLength is ignored in User "
                            "Enrollment on iOS\n"
                            "com.apple.mobiledevice.passwordpolicy: requireAlphanumeric is "
                            "ignored in User Enrollment on iOS\n");
    ASSERT_INT_EQ(payload(UE_OS_MACOS, COMMON("com.apple.mobiledevice.passwordpolicy")), -1);
    ASSERT_STR_EQ(err, "com.apple.mobiledevice.passwordpolicy is not allowed in User Enrollment "
                       "on macOS");
}

TEST(forbidden_payload_types)
{
    ASSERT_INT_EQ(payload(UE_OS_IOS, COMMON("com.apple.app.lock")), -1);
    ASSERT_STR_EQ(err, "com.apple.app.lock is not allowed in User Enrollment on iOS");
    ASSERT_INT_EQ(payload(UE_OS_IOS, COMMON("com.apple.declarations")), -1);
    ASSERT_INT_EQ(payload(UE_OS_IOS, COMMON("com.apple.homescreenlayout")), -1);
    ASSERT_INT_EQ(payload(UE_OS_MACOS, COMMON("com.apple.TCC.configuration-profile-policy")), -1);
    ASSERT_INT_EQ(payload(UE_OS_IOS, COMMON("com.apple.sso")), 0);
    ASSERT_INT_EQ(payload(UE_OS_MACOS, COMMON("com.apple.sso")), -1);
    ASSERT_STR_EQ(err, "com.apple.sso is not available on macOS");
}

TEST(web_content_filter_by_os)
{
    /* Allowed for iOS/visionOS UE (PROTOCOL.md 12.3), forbidden on macOS. */
    ASSERT_INT_EQ(
        payload(UE_OS_IOS,
                COMMON("com.apple.webcontent-filter") "<key>FilterType</key><string>Plugin</string>"
                                                      "<key>PluginBundleID</"
                                                      "key><string>com.example.filter</string>"),
        0);
    ASSERT_INT_EQ(payload(UE_OS_MACOS, COMMON("com.apple.webcontent-filter")), -1);
    ASSERT_STR_EQ(err, "com.apple.webcontent-filter is not allowed in User Enrollment on macOS");
}

TEST(payload_type_errors)
{
    ASSERT_INT_EQ(payload(UE_OS_IOS, COMMON("com.example.nope")), -1);
    ASSERT_STR_EQ(err, "unknown PayloadType com.example.nope");
    ASSERT_INT_EQ(payload(UE_OS_IOS, "<key>SSID_STR</key><string>x</string>"), -1);
    ASSERT_STR_EQ(err, "the payload has no PayloadType string");
    ASSERT_INT_EQ(payload(UE_OS_WATCHOS, COMMON("com.apple.wifi.managed")), -1);
    ASSERT_STR_EQ(err, "User Enrollment does not exist on watchOS");
}

TEST(payload_unknown_key_warns)
{
    ASSERT_INT_EQ(payload(UE_OS_IOS, COMMON("com.apple.wifi.managed") "<key>FutureKey</key>"
                                                                      "<true/>"),
                  0);
    ASSERT_STR_EQ(warnings, "com.apple.wifi.managed: unknown key FutureKey (not in Apple's "
                            "schema); passed through\n");
    /* No callback is fine too. */
    {
        plist_t p = parse("<dict>" COMMON("com.apple.wifi.managed") "<key>X</key><true/></dict>");
        ASSERT_NOT_NULL(p);
        ASSERT_INT_EQ(ue_payload_validate(p, UE_OS_IOS, NULL, NULL, NULL, 0), 0);
        plist_free(p);
    }
}

TEST(payload_common_keys)
{
    ASSERT_INT_EQ(payload(UE_OS_IOS, "<key>PayloadType</key><string>com.apple.wifi.managed"
                                     "</string><key>PayloadVersion</key><integer>1</integer>"
                                     "<key>PayloadIdentifier</key><string>x</string>"),
                  -1);
    ASSERT_STR_EQ(err, "com.apple.wifi.managed: missing required key PayloadUUID");
    ASSERT_INT_EQ(payload(UE_OS_IOS, "<key>PayloadType</key><string>com.apple.wifi.managed"
                                     "</string><key>PayloadVersion</key><string>1</string>"),
                  -1);
    ASSERT_STR_EQ(err, "com.apple.wifi.managed: PayloadVersion must be integer, not string");
    ASSERT_INT_EQ(
        payload(
            UE_OS_IOS,
            COMMON("com.apple.wifi.managed") "<key>PayloadDescription</key><string>d</string>"
                                             "<key>PayloadOrganization</key><string>o</string>"),
        0);
    ASSERT_INT_EQ(n_warnings, 0);
}

TEST(mdm_payload)
{
    const char *base = COMMON("com.apple.mdm") "<key>IdentityCertificateUUID</key><string>U"
                                               "</string><key>ServerURL</key><string>https://m"
                                               "</string><key>CheckInURL</key><string>https://c"
                                               "</string><key>AssignedManagedAppleID</key><string>"
                                               "a@example.com</string><key>EnrollmentMode</key>"
                                               "<string>BYOD</string><key>ServerCapabilities</key>"
                                               "<array><string>com.apple.mdm.per-user-connections"
                                               "</string></array>";
    char body[4096];
    snprintf(body, sizeof(body), "%s<key>Topic</key><string>com.apple.mgmt.x</string>", base);
    ASSERT_INT_EQ(payload(UE_OS_IOS, body), 0);
    ASSERT_INT_EQ(n_warnings, 0);
    /* Soft: a payload-specific required key is only a warning. */
    ASSERT_INT_EQ(payload(UE_OS_IOS, base), 0);
    ASSERT_STR_EQ(warnings, "com.apple.mdm: missing key Topic (required by Apple's schema)\n");
    snprintf(body, sizeof(body),
             "%s<key>Topic</key><string>t</string><key>AccessRights</key><integer>8191</integer>"
             "<key>ManagedAppleID</key><string>a@example.com</string>",
             base);
    ASSERT_INT_EQ(payload(UE_OS_IOS, body), 0);
    ASSERT_STR_EQ(warnings, "com.apple.mdm: AccessRights is ignored in User Enrollment on iOS\n"
                            "com.apple.mdm: ManagedAppleID was removed in iOS 18.0\n");
}

TEST(profile_valid)
{
    ASSERT_INT_EQ(profile(UE_OS_IOS, "", WIFI SCEP), 0);
    ASSERT_INT_EQ(n_warnings, 0);
    ASSERT_INT_EQ(profile(UE_OS_MACOS, "<key>PayloadScope</key><string>User</string>", WIFI), 0);
    /* ConsentText maps language codes to strings (a generator quirk fixes the schema). */
    ASSERT_INT_EQ(profile(UE_OS_IOS,
                          "<key>ConsentText</key><dict><key>default</key><string>Hi</string>"
                          "<key>en</key><string>Hello</string></dict>",
                          WIFI),
                  0);
    ASSERT_INT_EQ(n_warnings, 0);
}

TEST(profile_removal_disallowed)
{
    const char *top = "<key>PayloadRemovalDisallowed</key><true/>";
    ASSERT_INT_EQ(profile(UE_OS_IOS, top, WIFI), -1);
    ASSERT_STR_EQ(err,
                  "profile: PayloadRemovalDisallowed is not allowed in User Enrollment on iOS");
    ASSERT_INT_EQ(profile(UE_OS_MACOS, top, WIFI), 0);
}

TEST(profile_names_the_bad_item)
{
    ASSERT_INT_EQ(profile(UE_OS_IOS, "", WIFI "<dict>" COMMON("com.apple.app.lock") "</dict>"), -1);
    ASSERT_STR_EQ(err, "profile: PayloadContent[1]: com.apple.app.lock is not allowed in User "
                       "Enrollment on iOS");
    ASSERT_INT_EQ(profile(UE_OS_IOS, "", "<string>x</string>"), -1);
    ASSERT_STR_EQ(err, "profile: PayloadContent[0] is not a dictionary");
    ASSERT_INT_EQ(profile(UE_OS_IOS, "",
                          "<dict>" COMMON("com.apple.applicationaccess") "<key>allowCamera</key>"
                                                                         "<false/></dict>"),
                  -1);
    ASSERT_STR_EQ(err, "com.apple.applicationaccess: allowCamera is not allowed in User "
                       "Enrollment on iOS");
}

TEST(profile_top_level_shape)
{
    plist_t p = parse("<dict><key>PayloadType</key><string>com.apple.wifi.managed</string></dict>");
    ASSERT_NOT_NULL(p);
    reset();
    ASSERT_INT_EQ(ue_profile_validate(p, UE_OS_IOS, collect, NULL, err, sizeof(err)), -1);
    ASSERT_STR_EQ(err, "profile: PayloadType must be Configuration");
    plist_free(p);
    p = parse("<dict><key>PayloadType</key><string>Configuration</string>"
              "<key>PayloadVersion</key><integer>1</integer>"
              "<key>PayloadIdentifier</key><string>p</string>"
              "<key>PayloadUUID</key><string>u</string></dict>");
    ASSERT_NOT_NULL(p);
    ASSERT_INT_EQ(ue_profile_validate(p, UE_OS_IOS, collect, NULL, err, sizeof(err)), -1);
    ASSERT_STR_EQ(err, "profile: missing required key PayloadContent");
    plist_free(p);
    p = parse("<dict><key>PayloadType</key><string>Configuration</string>"
              "<key>PayloadVersion</key><integer>1</integer>"
              "<key>PayloadIdentifier</key><string>p</string>"
              "<key>PayloadUUID</key><string>u</string>"
              "<key>EncryptedPayloadContent</key><data>AAAA</data></dict>");
    ASSERT_NOT_NULL(p);
    ASSERT_INT_EQ(ue_profile_validate(p, UE_OS_IOS, collect, NULL, err, sizeof(err)), 0);
    plist_free(p);
}

TEST_MAIN(
    TEST_ENTRY(os_parse_names), TEST_ENTRY(version_format), TEST_ENTRY(tables_sorted_and_in_bounds),
    TEST_ENTRY(use_rule_order), TEST_ENTRY(erase_device_forbidden),
    TEST_ENTRY(profile_commands_allowed), TEST_ENTRY(device_lock_ios_only),
    TEST_ENTRY(app_commands), TEST_ENTRY(settings_and_ddm_allowed), TEST_ENTRY(media_commands),
    TEST_ENTRY(device_control_forbidden), TEST_ENTRY(unknown_command_and_os),
    TEST_ENTRY(command_table_lookup), TEST_ENTRY(entry_key_paths),
    TEST_ENTRY(checkin_messages_allowed), TEST_ENTRY(checkin_bootstrap_and_user_auth),
    TEST_ENTRY(devinfo_allowed_queries), TEST_ENTRY(devinfo_udid_forbidden),
    TEST_ENTRY(devinfo_names_every_forbidden_query), TEST_ENTRY(devinfo_push_token_differs_by_os),
    TEST_ENTRY(devinfo_unavailable_and_unknown_queries_warn), TEST_ENTRY(devinfo_shape_errors),
    TEST_ENTRY(device_query_check_matches_table), TEST_ENTRY(install_application_valid),
    TEST_ENTRY(install_application_change_management_state_forbidden),
    TEST_ENTRY(install_application_macos_install_as_managed_forbidden),
    TEST_ENTRY(install_application_types), TEST_ENTRY(install_application_unknown_keys),
    TEST_ENTRY(command_plist_shape), TEST_ENTRY(settings_app_config_and_org_info),
    TEST_ENTRY(settings_forbidden_items), TEST_ENTRY(settings_item_errors),
    TEST_ENTRY(command_check_key), TEST_ENTRY(wifi_allowed), TEST_ENTRY(wifi_proxy_keys),
    TEST_ENTRY(restrictions_allow_camera_forbidden),
    TEST_ENTRY(restrictions_managed_open_in_allowed),
    TEST_ENTRY(restrictions_unavailable_keys_warn_on_macos),
    TEST_ENTRY(restrictions_supervised_only), TEST_ENTRY(restrictions_contacts_and_types),
    TEST_ENTRY(scep_allowed), TEST_ENTRY(per_app_vpn_allowed_full_vpn_forbidden),
    TEST_ENTRY(passcode_keys_ignored_on_ios), TEST_ENTRY(forbidden_payload_types),
    TEST_ENTRY(web_content_filter_by_os), TEST_ENTRY(payload_type_errors),
    TEST_ENTRY(payload_unknown_key_warns), TEST_ENTRY(payload_common_keys), TEST_ENTRY(mdm_payload),
    TEST_ENTRY(profile_valid), TEST_ENTRY(profile_removal_disallowed),
    TEST_ENTRY(profile_names_the_bad_item), TEST_ENTRY(profile_top_level_shape))
