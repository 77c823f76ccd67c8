/*
 * The profile library's validation (mdm/profiles.c over ue_rules) on a table of real-world
 * payloads and restriction keys for iOS and macOS: allowed, ignored (accepted with a warning),
 * forbidden, supervised-only and wrong types, each refusal naming the payload type and key.
 * Expected verdicts were read from Apple's YAML (PROTOCOL.md 12.3, 12.4). Also: every
 * `orchard profile template` validates on its platforms, upload rules (enrollment profile
 * identifier, automatic platforms, CMS unwrapping) and the app catalogue's install commands.
 */
#include "harness.h"

#include <plist/plist.h>

#include "core/mem.h"
#include "crypto/cms.h"
#include "crypto/pki.h"
#include "mdm/library.h"
#include "plist/pl.h"

static char err[2048];
static char warnings[8192];

static void collect(void *ctx, const char *msg)
{
    size_t len = strlen(warnings);
    (void)ctx;
    snprintf(warnings + len, sizeof(warnings) - len, "%s\n", msg);
}

#define COMMON(type)                                                                               \
    "<key>PayloadType</key><string>" type "</string>"                                              \
    "<key>PayloadVersion</key><integer>1</integer>"                                                \
    "<key>PayloadIdentifier</key><string>com.example.p." type "</string>"                          \
    "<key>PayloadUUID</key><string>6C5A3B1E-1111-4A2B-9C3D-000000000001</string>"

static char *profile_xml(const char *top_extra, const char *payloads)
{
    return xasprintf("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\"><dict>"
                     "<key>PayloadType</key><string>Configuration</string>"
                     "<key>PayloadVersion</key><integer>1</integer>"
                     "<key>PayloadIdentifier</key><string>com.example.profile</string>"
                     "<key>PayloadUUID</key><string>6C5A3B1E-1111-4A2B-9C3D-0000000000FF</string>"
                     "<key>PayloadDisplayName</key><string>Test</string>%s"
                     "<key>PayloadContent</key><array>%s</array></dict></plist>",
                     top_extra, payloads);
}

/* Prepares a profile for the platforms in mask; fills err / warnings. */
static int prepare(unsigned mask, const char *top_extra, const char *payloads, st_profile *out)
{
    err[0] = warnings[0] = '\0';
    char *xml = profile_xml(top_extra, payloads);
    int rc = lib_profile_prepare((const uint8_t *)xml, strlen(xml), mask, collect, NULL, out, err,
                                 sizeof(err));
    free(xml);
    return rc;
}

enum verdict { OK, WARN, FAIL };

struct vcase {
    enum ue_os os;
    const char *type;
    const char *keys; /* inside the payload dict, after the common keys */
    enum verdict expect;
    const char *mention; /* must appear in the error (FAIL) or a warning (WARN) */
};

#define B(k, v) "<key>" k "</key><" v "/>"
#define S(k, v) "<key>" k "</key><string>" v "</string>"
#define I(k, v) "<key>" k "</key><integer>" v "</integer>"
#define R "com.apple.applicationaccess"
#define CERTDATA "<key>PayloadContent</key><data>MIIB</data>"

static const struct vcase cases[] = {
    /* Restrictions User Enrollment honours (PROTOCOL.md 12.4, 13.4). */
    {UE_OS_IOS, R, B("allowOpenFromManagedToUnmanaged", "false"), OK, NULL},
    {UE_OS_IOS, R, B("allowOpenFromUnmanagedToManaged", "false"), OK, NULL},
    {UE_OS_IOS, R, B("requireManagedPasteboard", "true"), OK, NULL},
    {UE_OS_IOS, R, B("allowUnmanagedToReadManagedContacts", "false"), OK, NULL},
    {UE_OS_IOS, R, B("forceAirDropUnmanaged", "true"), OK, NULL},
    {UE_OS_IOS, R, B("allowManagedAppsCloudSync", "false"), OK, NULL},
    {UE_OS_IOS, R, B("allowScreenShot", "false"), OK, NULL},
    {UE_OS_IOS, R, B("allowAssistant", "false"), OK, NULL},
    {UE_OS_IOS, R, B("forceEncryptedBackup", "true"), OK, NULL},
    {UE_OS_IOS, R, B("safariForceFraudWarning", "true"), OK, NULL},
    {UE_OS_IOS, R, B("allowEnterpriseBookBackup", "false"), OK, NULL},
    {UE_OS_IOS, R, B("forceOnDeviceOnlyDictation", "true"), OK, NULL},
    {UE_OS_MACOS, R, B("allowScreenShot", "false"), OK, NULL},
    {UE_OS_MACOS, R, B("allowDiagnosticSubmission", "false"), OK, NULL},
    {UE_OS_MACOS, R, B("forceOnDeviceOnlyDictation", "true"), OK, NULL},
    {UE_OS_MACOS, R, B("allowRemoteScreenObservation", "false"), OK, NULL},
    /* Restrictions UE forbids or that need supervision. */
    {UE_OS_IOS, R, B("allowCamera", "false"), FAIL, "allowCamera"},
    {UE_OS_IOS, R, B("allowCloudPrivateRelay", "false"), FAIL, "allowCloudPrivateRelay"},
    {UE_OS_IOS, R, B("allowManagedToWriteUnmanagedContacts", "false"), FAIL,
     "allowManagedToWriteUnmanagedContacts"},
    {UE_OS_IOS, R, B("allowAppRemoval", "false"), FAIL, "allowAppRemoval"},
    {UE_OS_IOS, R, B("allowAirDrop", "false"), FAIL, "allowAirDrop"},
    {UE_OS_IOS, R, B("allowUntrustedTLSPrompt", "false"), FAIL, "allowUntrustedTLSPrompt"},
    {UE_OS_IOS, R, B("allowAppInstallation", "false"), FAIL, "allowAppInstallation"},
    {UE_OS_MACOS, R, B("allowCamera", "false"), FAIL, "allowCamera"},
    {UE_OS_MACOS, R, B("allowAssistant", "false"), FAIL, "allowAssistant"},
    /* Wrong type. */
    {UE_OS_IOS, R, S("allowScreenShot", "no"), FAIL, "allowScreenShot must be boolean"},
    /* Payloads UE allows. */
    {UE_OS_IOS, "com.apple.vpn.managed.applayer", S("VPNUUID", "7E0E5A6C"), OK, NULL},
    {UE_OS_MACOS, "com.apple.vpn.managed.applayer", S("VPNUUID", "7E0E5A6C"), OK, NULL},
    {UE_OS_IOS, "com.apple.wifi.managed", S("SSID_STR", "Corp") S("EncryptionType", "WPA2"), OK,
     NULL},
    {UE_OS_MACOS, "com.apple.wifi.managed", S("SSID_STR", "Corp") B("AutoJoin", "true"), OK, NULL},
    {UE_OS_IOS, "com.apple.eas.account", S("EmailAddress", "a@example.com") S("Host", "eas"), OK,
     NULL},
    {UE_OS_MACOS, "com.apple.ews.account", S("EmailAddress", "a@example.com"), OK, NULL},
    {UE_OS_IOS, "com.apple.security.root", CERTDATA, OK, NULL},
    {UE_OS_MACOS, "com.apple.security.pkcs1", CERTDATA, OK, NULL},
    {UE_OS_IOS, "com.apple.caldav.account", S("CalDAVHostName", "cal.example.com"), OK, NULL},
    {UE_OS_IOS, "com.apple.webcontent-filter", S("FilterType", "Plugin"), OK, NULL},
    {UE_OS_IOS, "com.apple.dnsProxy.managed", S("AppBundleIdentifier", "com.example.dns"), OK,
     NULL},
    {UE_OS_IOS, "com.apple.airprint", "", OK, NULL},
    /* Ignored in UE: accepted with a warning (PROTOCOL.md 12.3: passcode presence only). */
    {UE_OS_IOS, "com.apple.mobiledevice.passwordpolicy", I("minLength", "8"), WARN, "minLength"},
    {UE_OS_IOS, "com.apple.mobiledevice.passwordpolicy", I("maxInactivity", "5"), WARN,
     "maxInactivity"},
    /* Forbidden keys inside allowed payloads. */
    {UE_OS_IOS, "com.apple.wifi.managed", S("SSID_STR", "Corp") S("ProxyType", "Auto"), FAIL,
     "ProxyType"},
    {UE_OS_IOS, "com.apple.wifi.managed",
     S("SSID_STR", "Corp") B("DisableAssociationMACRandomization", "true"), FAIL,
     "DisableAssociationMACRandomization"},
    /* Payloads UE forbids, needs supervision for, or the OS does not have. */
    {UE_OS_IOS, "com.apple.vpn.managed", S("VPNType", "IKEv2"), FAIL, "com.apple.vpn.managed"},
    {UE_OS_MACOS, "com.apple.vpn.managed", S("VPNType", "IKEv2"), FAIL, "com.apple.vpn.managed"},
    {UE_OS_MACOS, "com.apple.mobiledevice.passwordpolicy", "", FAIL,
     "com.apple.mobiledevice.passwordpolicy"},
    {UE_OS_MACOS, "com.apple.eas.account", "", FAIL, "com.apple.eas.account"},
    {UE_OS_MACOS, "com.apple.webcontent-filter", "", FAIL, "com.apple.webcontent-filter"},
    {UE_OS_MACOS, "com.apple.dnsProxy.managed", "", FAIL, "com.apple.dnsProxy.managed"},
    {UE_OS_IOS, "com.apple.app.lock", "", FAIL, "com.apple.app.lock"},
    {UE_OS_IOS, "com.apple.dnsSettings.managed", "", FAIL, "com.apple.dnsSettings.managed"},
    {UE_OS_IOS, "com.apple.cellular", "", FAIL, "com.apple.cellular"},
    {UE_OS_IOS, "com.apple.homescreenlayout", "", FAIL, "com.apple.homescreenlayout"},
    {UE_OS_IOS, "com.apple.notificationsettings", "", FAIL, "com.apple.notificationsettings"},
    {UE_OS_IOS, "com.apple.applicationaccess.new", "", FAIL, "com.apple.applicationaccess.new"},
    {UE_OS_MACOS, "com.apple.TCC.configuration-profile-policy", "", FAIL,
     "com.apple.TCC.configuration-profile-policy"},
    {UE_OS_MACOS, "com.apple.SoftwareUpdate", "", FAIL, "com.apple.SoftwareUpdate"},
    {UE_OS_MACOS, "com.apple.security.firewall", "", FAIL, "com.apple.security.firewall"},
    {UE_OS_MACOS, "com.apple.systempolicy.control", "", FAIL, "com.apple.systempolicy.control"},
    {UE_OS_MACOS, "com.apple.loginwindow", "", FAIL, "com.apple.loginwindow"},
    {UE_OS_MACOS, "com.apple.MCX.FileVault2", "", FAIL, "com.apple.MCX.FileVault2"},
    {UE_OS_IOS, "com.example.unknown", "", FAIL, "com.example.unknown"},
};

TEST(validation_table)
{
    int n = (int)(sizeof(cases) / sizeof(cases[0]));
    ASSERT(n >= 40);
    for (int i = 0; i < n; i++) {
        const struct vcase *c = &cases[i];
        char payload[2048];
        snprintf(payload, sizeof(payload),
                 "<dict><key>PayloadType</key><string>%s</string>"
                 "<key>PayloadVersion</key><integer>1</integer>"
                 "<key>PayloadIdentifier</key><string>com.example.p%d</string>"
                 "<key>PayloadUUID</key><string>6C5A3B1E-1111-4A2B-9C3D-000000000001</string>"
                 "%s</dict>",
                 c->type, i, c->keys);
        st_profile p = {0};
        int rc = prepare(LIB_OS_BIT(c->os), "", payload, &p);
        st_profile_cleanup(&p);
        int ok = c->expect == FAIL ? rc != 0 : rc == 0;
        if (ok && c->mention) {
            const char *hay = c->expect == FAIL ? err : warnings;
            ok = strstr(hay, c->mention) != NULL;
        }
        /* Refusals name the platform too. */
        if (ok && c->expect == FAIL)
            ok = strstr(err, ue_os_name(c->os)) != NULL;
        if (!ok)
            fprintf(stderr, "case %d (%s %s %s): rc=%d err=\"%s\" warnings=\"%s\"\n", i,
                    ue_os_name(c->os), c->type, c->keys, rc, err, warnings);
        ASSERT(ok);
    }
}

TEST(refusal_names_payload_and_key)
{
    st_profile p = {0};
    ASSERT(prepare(LIB_OS_BIT(UE_OS_IOS), "",
                   "<dict>" COMMON(R) B("allowCamera", "false") "</dict>", &p) != 0);
    ASSERT(strstr(err, "com.apple.applicationaccess") != NULL);
    ASSERT(strstr(err, "allowCamera") != NULL);
    ASSERT(strstr(err, "iOS") != NULL);
}

TEST(top_level_forbidden_key)
{
    st_profile p = {0};
    ASSERT(prepare(LIB_OS_BIT(UE_OS_IOS), B("PayloadRemovalDisallowed", "true"),
                   "<dict>" COMMON("com.apple.airprint") "</dict>", &p) != 0);
    ASSERT(strstr(err, "PayloadRemovalDisallowed") != NULL);
}

TEST(accepted_profile_fields)
{
    st_profile p = {0};
    ASSERT_INT_EQ(prepare(LIB_OS_BIT(UE_OS_IOS) | LIB_OS_BIT(UE_OS_MACOS), "",
                          "<dict>" COMMON("com.apple.wifi.managed") S("SSID_STR", "Corp") "</dict>",
                          &p),
                  0);
    ASSERT_STR_EQ(p.identifier, "com.example.profile");
    ASSERT_STR_EQ(p.name, "Test");
    ASSERT_STR_EQ(p.platforms, "ios,macos");
    ASSERT(p.body != NULL && strstr(p.body, "SSID_STR") != NULL);
    st_profile_cleanup(&p);
}

TEST(automatic_platforms)
{
    st_profile p = {0};
    /* Exchange ActiveSync exists on iOS and visionOS only. */
    ASSERT_INT_EQ(prepare(0, "", "<dict>" COMMON("com.apple.eas.account") "</dict>", &p), 0);
    ASSERT_STR_EQ(p.platforms, "ios,visionos");
    st_profile_cleanup(&p);
    /* EWS (macOS only) and EAS (iOS/visionOS only) share no platform. */
    ASSERT(prepare(0, "",
                   "<dict>" COMMON("com.apple.eas.account") "</dict><dict>" COMMON(
                       "com.apple.ews.account") "</dict>",
                   &p) != 0);
    ASSERT(strstr(err, "com.apple.ews.account") != NULL);
    /* A passcode payload exists on macOS but is forbidden there: the error says which
     * platforms would accept it. */
    ASSERT(prepare(0, "", "<dict>" COMMON("com.apple.mobiledevice.passwordpolicy") "</dict>", &p) !=
           0);
    ASSERT(strstr(err, "macOS") != NULL);
    ASSERT(strstr(err, "?platform=ios,visionos") != NULL);
}

TEST(enrollment_profile_refused)
{
    const char *xml = "<?xml version=\"1.0\"?><plist version=\"1.0\"><dict>"
                      "<key>PayloadType</key><string>Configuration</string>"
                      "<key>PayloadVersion</key><integer>1</integer>"
                      "<key>PayloadIdentifier</key><string>io.orchard.enrollment</string>"
                      "<key>PayloadUUID</key><string>6C5A3B1E-1111-4A2B-9C3D-0000000000FF</string>"
                      "<key>PayloadContent</key><array/></dict></plist>";
    st_profile p = {0};
    ASSERT(lib_profile_prepare((const uint8_t *)xml, strlen(xml), 0, NULL, NULL, &p, err,
                               sizeof(err)) != 0);
    ASSERT(strstr(err, "io.orchard.enrollment") != NULL);
}

TEST(not_a_profile)
{
    st_profile p = {0};
    ASSERT(lib_profile_prepare((const uint8_t *)"hello", 5, 0, NULL, NULL, &p, err, sizeof(err)) !=
           0);
    ASSERT(lib_profile_prepare((const uint8_t *)"", 0, 0, NULL, NULL, &p, err, sizeof(err)) != 0);
    ASSERT(lib_profile_prepare((const uint8_t *)"\x30\x03\x02\x01\x01", 5, 0, NULL, NULL, &p, err,
                               sizeof(err)) != 0);
}

TEST(signed_profile_is_unwrapped)
{
    crypto_key *key = NULL;
    crypto_cert *cert = NULL;
    uint8_t *der = NULL;
    size_t der_len = 0;
    char *xml = profile_xml("", "<dict>" COMMON("com.apple.airprint") "</dict>");
    char *cert_pem = NULL, *key_pem = NULL;
    ASSERT_INT_EQ(crypto_init(), 0);
    ASSERT_INT_EQ(crypto_ca_generate("Profile signer", 1, &cert_pem, &key_pem), 0);
    ASSERT_INT_EQ(crypto_cert_from_pem(cert_pem, &cert), 0);
    ASSERT_INT_EQ(crypto_key_from_pem(key_pem, NULL, &key), 0);
    free(cert_pem);
    free(key_pem);
    ASSERT_INT_EQ(cms_sign(cert, key, NULL, 0, (const uint8_t *)xml, strlen(xml), &der, &der_len),
                  0);
    st_profile p = {0};
    int rc =
        lib_profile_prepare(der, der_len, LIB_OS_BIT(UE_OS_IOS), NULL, NULL, &p, err, sizeof(err));
    free(der);
    free(xml);
    crypto_cert_free(cert);
    crypto_key_free(key);
    ASSERT_INT_EQ(rc, 0);
    ASSERT_STR_EQ(p.identifier, "com.example.profile");
    ASSERT(strstr(p.body, "com.apple.airprint") != NULL);
    st_profile_cleanup(&p);
}

TEST(templates_validate)
{
    int n = 0;
    for (const struct lib_template *t = lib_templates(); t->name; t++, n++) {
        size_t len = 0;
        char *xml = lib_template_xml(t->name, &len);
        ASSERT_NOT_NULL(xml);
        st_profile p = {0};
        err[0] = warnings[0] = '\0';
        int rc = lib_profile_prepare((const uint8_t *)xml, len, t->platforms, collect, NULL, &p,
                                     err, sizeof(err));
        if (rc != 0 || warnings[0])
            fprintf(stderr, "template %s: %s\n%s", t->name, err, warnings);
        ASSERT_INT_EQ(rc, 0);
        free(xml);
        st_profile_cleanup(&p);
    }
    ASSERT(n >= 8);
    ASSERT(lib_template_xml("no-such-template", NULL) == NULL);
}

TEST(template_data_separation_keys)
{
    size_t len = 0;
    char *xml = lib_template_xml("data-separation", &len);
    ASSERT_NOT_NULL(xml);
    ASSERT(strstr(xml, "<key>allowOpenFromManagedToUnmanaged</key>\n\t\t\t<false/>") != NULL);
    ASSERT(strstr(xml, "<key>allowOpenFromUnmanagedToManaged</key>\n\t\t\t<false/>") != NULL);
    ASSERT(strstr(xml, "<key>requireManagedPasteboard</key>\n\t\t\t<true/>") != NULL);
    free(xml);
    /* Restrictions that exist only on iOS/visionOS are not valid for macOS as a whole. */
}

TEST(platform_names)
{
    unsigned m = 0;
    char buf[64];
    ASSERT_INT_EQ(lib_platforms_parse("ios,macOS", &m), 0);
    ASSERT_INT_EQ(m, LIB_OS_BIT(UE_OS_IOS) | LIB_OS_BIT(UE_OS_MACOS));
    lib_platforms_format(LIB_OS_ALL, buf, sizeof(buf));
    ASSERT_STR_EQ(buf, "ios,macos,visionos");
    ASSERT(lib_platforms_parse("tvos", &m) != 0);
    ASSERT(lib_platforms_parse("android", &m) != 0);
    ASSERT(lib_platforms_has("ios,visionos", UE_OS_VISIONOS));
    ASSERT(!lib_platforms_has("ios,visionos", UE_OS_MACOS));
}

/* ---- apps ---- */

static plist_t app_cmd(const char *json, enum ue_os os, st_app *a)
{
    err[0] = warnings[0] = '\0';
    memset(a, 0, sizeof(*a));
    if (lib_app_prepare(json, strlen(json), collect, NULL, a, err, sizeof(err)) != 0)
        return NULL;
    warnings[0] = '\0';
    return lib_app_install_command(a, os, collect, NULL, err, sizeof(err));
}

TEST(app_store_install_ios)
{
    st_app a;
    plist_t c = app_cmd("{\"itunes_store_id\":361309726,\"bundle_id\":\"com.example.docs\","
                        "\"remove_on_unenroll\":true,\"configuration\":{\"ServerURL\":"
                        "\"https://docs.example.com\",\"Port\":443},\"attributes\":{"
                        "\"Removable\":false}}",
                        UE_OS_IOS, &a);
    ASSERT_NOT_NULL(c);
    ASSERT_STR_EQ(pl_get_string(c, "RequestType"), "InstallApplication");
    ASSERT_NOT_NULL(pl_get_typed(c, "iTunesStoreID", PLIST_UINT));
    plist_t opts = pl_get_typed(c, "Options", PLIST_DICT);
    ASSERT_NOT_NULL(opts);
    uint64_t v = 0;
    plist_get_uint_val(plist_dict_get_item(opts, "PurchaseMethod"), &v);
    ASSERT_INT_EQ(v, 1);
    plist_get_uint_val(plist_dict_get_item(c, "ManagementFlags"), &v);
    ASSERT_INT_EQ(v, 1);
    plist_t conf = pl_get_typed(c, "Configuration", PLIST_DICT);
    ASSERT_STR_EQ(pl_get_string(conf, "ServerURL"), "https://docs.example.com");
    ASSERT_INT_EQ(pl_get_bool(pl_get_typed(c, "Attributes", PLIST_DICT), "Removable"), 0);
    ASSERT_STR_EQ(a.identifier, "com.example.docs");
    plist_free(c);
    st_app_cleanup(&a);
}

TEST(app_macos_drops_forbidden_keys)
{
    st_app a;
    plist_t c = app_cmd("{\"bundle_id\":\"com.example.docs\",\"remove_on_unenroll\":true,"
                        "\"install_as_managed\":true,\"configuration\":{\"A\":\"b\"}}",
                        UE_OS_MACOS, &a);
    ASSERT_NOT_NULL(c);
    ASSERT_STR_EQ(pl_get_string(c, "RequestType"), "InstallApplication");
    /* PROTOCOL.md 13.1: ManagementFlags and InstallAsManaged are forbidden in macOS UE by the
     * schema; Orchard follows the schema and says so. */
    ASSERT(plist_dict_get_item(c, "ManagementFlags") == NULL);
    ASSERT(plist_dict_get_item(c, "InstallAsManaged") == NULL);
    ASSERT(strstr(warnings, "ManagementFlags") != NULL);
    ASSERT(strstr(warnings, "InstallAsManaged") != NULL);
    ASSERT_NOT_NULL(pl_get_typed(c, "Configuration", PLIST_DICT));
    plist_free(c);
    st_app_cleanup(&a);
}

/* The PurchaseMethod of an App Store install on a platform, or -1 when Options is absent. */
static long long purchase_method_of(plist_t c)
{
    plist_t opts = pl_get_typed(c, "Options", PLIST_DICT);
    plist_t pm = opts ? pl_get_typed(opts, "PurchaseMethod", PLIST_UINT) : NULL;
    uint64_t v = 0;
    if (pm == NULL)
        return -1;
    plist_get_uint_val(pm, &v);
    return (long long)v;
}

/*
 * application.install.yaml: PurchaseMethod 0 ("free apps and legacy VPP with a redemption
 * code") "is only available in iOS", and 0 is the default when Options is left out. A macOS
 * App Store install must therefore carry Options.PurchaseMethod = 1, and the command must
 * still validate against the generated User Enrollment tables for macOS.
 */
TEST(app_store_install_macos_purchase_method)
{
    static const char *const bodies[] = {
        "{\"itunes_store_id\":361309726}",
        "{\"bundle_id\":\"com.example.docs\"}",
        "{\"itunes_store_id\":361309726,\"bundle_id\":\"com.example.docs\","
        "\"purchase_method\":1}",
    };
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        st_app a;
        plist_t c = app_cmd(bodies[i], UE_OS_MACOS, &a);
        ASSERT_NOT_NULL(c);
        ASSERT_STR_EQ(pl_get_string(c, "RequestType"), "InstallApplication");
        ASSERT_INT_EQ(purchase_method_of(c), 1);
        char why[LIB_MSG_MAX];
        ASSERT_INT_EQ(ue_command_validate(c, UE_OS_MACOS, NULL, NULL, why, sizeof(why)), 0);
        ASSERT_INT_EQ(ue_command_check_key("InstallApplication", "Options.PurchaseMethod",
                                           UE_OS_MACOS, PLIST_UINT, why, sizeof(why)),
                      0);
        plist_free(c);
        st_app_cleanup(&a);
    }
    /* An explicit 0 is iOS-only: the app stays installable on iOS, not on macOS. */
    st_app a;
    plist_t c = app_cmd("{\"itunes_store_id\":361309726,\"purchase_method\":0}", UE_OS_MACOS, &a);
    ASSERT(c == NULL);
    ASSERT(strstr(err, "only on iOS") != NULL);
    c = lib_app_install_command(&a, UE_OS_IOS, NULL, NULL, err, sizeof(err));
    ASSERT_NOT_NULL(c);
    ASSERT_INT_EQ(purchase_method_of(c), 0);
    plist_free(c);
    st_app_cleanup(&a);
}

TEST(app_manifest_macos_is_enterprise)
{
    st_app a;
    plist_t c = app_cmd("{\"manifest_url\":\"https://apps.example.com/tool.plist\","
                        "\"configuration\":{\"k\":1}}",
                        UE_OS_MACOS, &a);
    ASSERT_NOT_NULL(c);
    ASSERT_STR_EQ(pl_get_string(c, "RequestType"), "InstallEnterpriseApplication");
    ASSERT_STR_EQ(pl_get_string(c, "ManifestURL"), "https://apps.example.com/tool.plist");
    plist_free(c);
    c = lib_app_install_command(&a, UE_OS_IOS, NULL, NULL, err, sizeof(err));
    ASSERT_NOT_NULL(c);
    ASSERT_STR_EQ(pl_get_string(c, "RequestType"), "InstallApplication");
    ASSERT_STR_EQ(pl_get_string(c, "ManifestURL"), "https://apps.example.com/tool.plist");
    ASSERT(plist_dict_get_item(c, "Options") == NULL);
    plist_free(c);
    st_app_cleanup(&a);
}

TEST(app_bad_bodies)
{
    st_app a;
    static const char *const bad[] = {
        "[]",
        "{}",
        "{\"itunes_store_id\":-1}",
        "{\"manifest_url\":\"http://insecure\"}",
        "{\"bundle_id\":\"x\",\"configuration\":[1]}",
        "{\"bundle_id\":\"x\",\"colour\":\"red\"}",
        "{\"bundle_id\":\"x\",\"purchase_method\":7}",
        "{\"itunes_store_id\":1,\"manifest_url\":\"https://a/b\"}",
        "{\"bundle_id\":\"x\",\"configuration\":{\"n\":-5}}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (lib_app_prepare(bad[i], strlen(bad[i]), NULL, NULL, &a, err, sizeof(err)) == 0) {
            fprintf(stderr, "accepted: %s\n", bad[i]);
            st_app_cleanup(&a);
            ASSERT(0);
        }
    }
}

TEST(command_uuid_marker)
{
    struct mdm_command mc;
    plist_t cmd = plist_new_dict();
    pl_set_string(cmd, "RequestType", "ProfileList");
    ASSERT_INT_EQ(lib_command_wrap(cmd, UE_OS_IOS, 1, 0, &mc, err, sizeof(err)), 0);
    ASSERT(lib_command_uuid_is_ours(mc.uuid));
    ASSERT(strstr(mc.xml, mc.uuid) != NULL);
    mdm_command_cleanup(&mc);
    char v4[37];
    crypto_uuid(v4);
    ASSERT(!lib_command_uuid_is_ours(v4));
    /* A command UE forbids is refused. */
    pl_set_string(cmd, "RequestType", "EraseDevice");
    ASSERT(lib_command_wrap(cmd, UE_OS_IOS, 1, 0, &mc, err, sizeof(err)) != 0);
    plist_free(cmd);
}

TEST_MAIN(TEST_ENTRY(validation_table), TEST_ENTRY(refusal_names_payload_and_key),
          TEST_ENTRY(top_level_forbidden_key), TEST_ENTRY(accepted_profile_fields),
          TEST_ENTRY(automatic_platforms), TEST_ENTRY(enrollment_profile_refused),
          TEST_ENTRY(not_a_profile), TEST_ENTRY(signed_profile_is_unwrapped),
          TEST_ENTRY(templates_validate), TEST_ENTRY(template_data_separation_keys),
          TEST_ENTRY(platform_names), TEST_ENTRY(app_store_install_ios),
          TEST_ENTRY(app_macos_drops_forbidden_keys),
          TEST_ENTRY(app_store_install_macos_purchase_method),
          TEST_ENTRY(app_manifest_macos_is_enterprise), TEST_ENTRY(app_bad_bodies),
          TEST_ENTRY(command_uuid_marker))
