/*
 * The profile library's front door: what an uploaded .mobileconfig must be before Orchard
 * stores it, and the ready-made templates for the controls User Enrollment honours.
 *
 * An upload is refused unless every payload and key is usable by a user enrollment on every
 * target platform (PROTOCOL.md 12.3, 12.4): a forbidden payload type, a forbidden or
 * supervised-only restriction, or a key of the wrong type is an error naming the platform,
 * payload type and key; keys that User Enrollment ignores are accepted with a warning. The
 * verdicts come from ue_profile_validate() over the tables generated from Apple's YAML.
 *
 * Not here: storing (api/library.c), signing and sending (reconcile.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/mem.h"
#include "crypto/cms.h"
#include "crypto/pki.h"
#include "enroll/enroll.h"
#include "mdm/library.h"
#include "plist/pl.h"

static const enum ue_os lib_oses[] = {UE_OS_IOS, UE_OS_MACOS, UE_OS_VISIONOS};
#define LIB_NOSES (sizeof(lib_oses) / sizeof(lib_oses[0]))

/* Lowercase names used in stored platform lists and the ?platform= parameter. */
static const char *os_key(enum ue_os os)
{
    switch (os) {
    case UE_OS_IOS:
        return "ios";
    case UE_OS_MACOS:
        return "macos";
    case UE_OS_VISIONOS:
        return "visionos";
    default:
        return "?";
    }
}

int lib_platforms_parse(const char *s, unsigned *mask)
{
    unsigned m = 0;
    char copy[128];
    if (s == NULL || strlen(s) >= sizeof(copy))
        return -1;
    snprintf(copy, sizeof(copy), "%s", s);
    char *save = NULL;
    for (char *tok = strtok_r(copy, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
        enum ue_os os;
        if (ue_os_parse(tok, &os) != 0 || !ue_os_has_user_enrollment(os))
            return -1;
        m |= LIB_OS_BIT(os);
    }
    if (m == 0)
        return -1;
    *mask = m;
    return 0;
}

void lib_platforms_format(unsigned mask, char *out, size_t len)
{
    size_t used = 0;
    if (len == 0)
        return;
    out[0] = '\0';
    for (size_t i = 0; i < LIB_NOSES; i++) {
        if (!(mask & LIB_OS_BIT(lib_oses[i])))
            continue;
        int n = snprintf(out + used, len - used, "%s%s", used ? "," : "", os_key(lib_oses[i]));
        if (n < 0 || (size_t)n >= len - used)
            return;
        used += (size_t)n;
    }
}

int lib_platforms_has(const char *platforms, enum ue_os os)
{
    unsigned mask = 0;
    return platforms != NULL && lib_platforms_parse(platforms, &mask) == 0 &&
           (mask & LIB_OS_BIT(os)) != 0;
}

/* The platforms on which every payload type of the profile exists (known and introduced). */
static unsigned platforms_of_payloads(plist_t profile, char *err, size_t err_len)
{
    unsigned mask = LIB_OS_ALL;
    plist_t content = pl_get_typed(profile, "PayloadContent", PLIST_ARRAY);
    uint32_t n = content ? plist_array_get_size(content) : 0;
    for (uint32_t i = 0; i < n; i++) {
        const char *pt = pl_get_string(plist_array_get_item(content, i), "PayloadType");
        const struct ue_entry *e = pt ? ue_payload_find(pt) : NULL;
        if (e == NULL)
            continue; /* ue_profile_validate names it */
        unsigned here = 0;
        for (size_t k = 0; k < LIB_NOSES; k++) {
            if (ue_use_of(ue_entry_os(e, lib_oses[k])) != UE_USE_NOT_ON_OS)
                here |= LIB_OS_BIT(lib_oses[k]);
        }
        if ((mask & here) == 0 && mask != 0) {
            char a[64], b[64];
            lib_platforms_format(mask, a, sizeof(a));
            lib_platforms_format(here, b, sizeof(b));
            snprintf(err, err_len,
                     "PayloadContent[%u]: %s exists only on %s, but the payloads before it only on "
                     "%s; split the profile by platform",
                     i, pt, b[0] ? b : "no platform", a);
            return 0;
        }
        mask &= here;
    }
    return mask;
}

struct warn_prefix {
    ue_warn_fn warn;
    void *ctx;
    enum ue_os os;
};

static void warn_with_os(void *ctx, const char *msg)
{
    struct warn_prefix *w = ctx;
    char line[LIB_MSG_MAX + 32];
    snprintf(line, sizeof(line), "%s: %s", ue_os_name(w->os), msg);
    w->warn(w->ctx, line);
}

/* The plain profile bytes of an upload: CMS SignedData is unwrapped (0x30 = DER SEQUENCE). */
static int unwrap(const uint8_t *body, size_t len, uint8_t **plain, size_t *plain_len, char *err,
                  size_t err_len)
{
    *plain = NULL;
    if (len > 0 && body[0] == 0x30) {
        if (cms_attached_content(body, len, plain, plain_len) != 0) {
            snprintf(err, err_len, "the body looks like CMS but has no readable signed content");
            return -1;
        }
        return 0;
    }
    *plain = xmalloc(len + 1);
    memcpy(*plain, body, len);
    (*plain)[len] = '\0';
    *plain_len = len;
    return 0;
}

int lib_profile_prepare(const uint8_t *body, size_t len, unsigned mask, ue_warn_fn warn,
                        void *warn_ctx, st_profile *out, char *err, size_t err_len)
{
    uint8_t *plain = NULL;
    size_t plain_len = 0;
    plist_t p = NULL;
    int rc = -1;
    memset(out, 0, sizeof(*out));
    if (len == 0 || len > LIB_PROFILE_MAX) {
        snprintf(err, err_len, "the profile must be between 1 byte and %d bytes", LIB_PROFILE_MAX);
        return -1;
    }
    if (unwrap(body, len, &plain, &plain_len, err, err_len) != 0)
        return -1;
    char perr[128];
    p = pl_parse_dict((const char *)plain, plain_len, perr, sizeof(perr));
    if (p == NULL) {
        snprintf(err, err_len, "the profile is not a property list dictionary: %s", perr);
        goto out;
    }
    const char *ident = pl_get_string(p, "PayloadIdentifier");
    if (ident == NULL || ident[0] == '\0' || strlen(ident) > 255) {
        snprintf(err, err_len, "the profile needs a top-level PayloadIdentifier string");
        goto out;
    }
    if (strcmp(ident, ENROLL_PROFILE_ID) == 0) {
        snprintf(err, err_len,
                 "PayloadIdentifier %s is the enrollment profile's; Orchard never installs or "
                 "removes it through the library",
                 ident);
        goto out;
    }
    if (mask == 0) {
        err[0] = '\0';
        mask = platforms_of_payloads(p, err, err_len);
        if (mask == 0) {
            if (err[0] == '\0')
                snprintf(err, err_len, "no platform has every payload of this profile");
            goto out;
        }
    }
    /* Validate on every target platform; the first failure is the answer. */
    unsigned ok_mask = 0;
    char first_err[LIB_MSG_MAX + 64] = "";
    for (size_t i = 0; i < LIB_NOSES; i++) {
        enum ue_os os = lib_oses[i];
        if (!(mask & LIB_OS_BIT(os)))
            continue;
        char why[LIB_MSG_MAX];
        struct warn_prefix wp = {warn, warn_ctx, os};
        if (ue_profile_validate(p, os, warn ? warn_with_os : NULL, &wp, why, sizeof(why)) == 0) {
            ok_mask |= LIB_OS_BIT(os);
        } else if (first_err[0] == '\0') {
            snprintf(first_err, sizeof(first_err), "%s: %s", ue_os_name(os), why);
        }
    }
    if (ok_mask != mask) {
        if (ok_mask) {
            char ok_names[64];
            lib_platforms_format(ok_mask, ok_names, sizeof(ok_names));
            snprintf(err, err_len, "%s (the profile is valid for ?platform=%s)", first_err,
                     ok_names);
        } else {
            snprintf(err, err_len, "%s", first_err);
        }
        goto out;
    }
    char names[64];
    lib_platforms_format(mask, names, sizeof(names));
    out->identifier = xstrdup(ident);
    const char *dn = pl_get_string(p, "PayloadDisplayName");
    out->name = dn ? xstrdup(dn) : NULL;
    out->platforms = xstrdup(names);
    out->body = pl_to_xml(p, &out->body_len);
    rc = 0;
out:
    if (rc != 0)
        st_profile_cleanup(out);
    plist_free(p);
    free(plain);
    return rc;
}

/* ---- templates ---- */

/*
 * Placeholder certificate data for the certificate templates: replace it with your DER
 * certificate (base64 in the <data> element). The validator checks types, not contents.
 */
static const char placeholder_der[] = "REPLACE WITH DER CERTIFICATE";

static plist_t payload_new(const char *type, const char *suffix, const char *display)
{
    char ident[128], uuid[37];
    plist_t d = plist_new_dict();
    crypto_uuid(uuid);
    snprintf(ident, sizeof(ident), "com.example.orchard.%s", suffix);
    pl_set_string(d, "PayloadType", type);
    pl_set_uint(d, "PayloadVersion", 1);
    pl_set_string(d, "PayloadIdentifier", ident);
    pl_set_string(d, "PayloadUUID", uuid);
    pl_set_string(d, "PayloadDisplayName", display);
    return d;
}

static plist_t profile_new(const char *suffix, const char *display, plist_t payload)
{
    plist_t p = payload_new("Configuration", suffix, display);
    plist_t content = plist_new_array();
    plist_array_append_item(content, payload);
    plist_dict_set_item(p, "PayloadContent", content);
    pl_set_string(p, "PayloadDescription",
                  "Orchard template: replace the example.com values before uploading.");
    return p;
}

static plist_t t_data_separation(void)
{
    plist_t r = payload_new("com.apple.applicationaccess", "restrictions.data-separation",
                            "Managed data separation");
    /* PROTOCOL.md 13.4: managed open-in, extended to copy/paste by requireManagedPasteboard. */
    pl_set_bool(r, "allowOpenFromManagedToUnmanaged", 0);
    pl_set_bool(r, "allowOpenFromUnmanagedToManaged", 0);
    pl_set_bool(r, "requireManagedPasteboard", 1);
    pl_set_bool(r, "allowUnmanagedToReadManagedContacts", 0);
    pl_set_bool(r, "forceAirDropUnmanaged", 1);
    return profile_new("data-separation", "Work data stays in work apps", r);
}

static plist_t t_per_app_vpn(void)
{
    plist_t v = payload_new("com.apple.vpn.managed.applayer", "vpn.per-app", "Work VPN");
    pl_set_string(v, "VPNUUID", "7E0E5A6C-6F4B-4C8E-9C32-0A0B0C0D0E0F");
    pl_set_bool(v, "OnDemandMatchAppEnabled", 1);
    plist_t safari = plist_new_array();
    plist_array_append_item(safari, plist_new_string("intranet.example.com"));
    plist_dict_set_item(v, "SafariDomains", safari);
    return profile_new("per-app-vpn", "Per-app VPN", v);
}

static plist_t t_wifi(void)
{
    plist_t w = payload_new("com.apple.wifi.managed", "wifi.corp", "Corporate Wi-Fi");
    pl_set_string(w, "SSID_STR", "Example-Corp");
    pl_set_bool(w, "AutoJoin", 1);
    pl_set_string(w, "EncryptionType", "WPA2");
    plist_t eap = plist_new_dict();
    plist_t types = plist_new_array();
    plist_array_append_item(types, plist_new_uint(25)); /* PEAP */
    plist_dict_set_item(eap, "AcceptEAPTypes", types);
    plist_dict_set_item(w, "EAPClientConfiguration", eap);
    return profile_new("wifi", "Corporate Wi-Fi", w);
}

static plist_t t_exchange(void)
{
    plist_t e = payload_new("com.apple.eas.account", "exchange", "Work Exchange");
    pl_set_string(e, "EmailAddress", "");
    pl_set_string(e, "Host", "outlook.example.com");
    pl_set_bool(e, "SSL", 1);
    pl_set_bool(e, "OAuth", 1);
    pl_set_bool(e, "PreventMove", 1);
    return profile_new("exchange", "Work Exchange account", e);
}

static plist_t t_mail(void)
{
    plist_t m = payload_new("com.apple.mail.managed", "mail", "Work mail");
    pl_set_string(m, "EmailAccountDescription", "Work");
    pl_set_string(m, "EmailAccountType", "EmailTypeIMAP");
    pl_set_string(m, "IncomingMailServerAuthentication", "EmailAuthPassword");
    pl_set_string(m, "IncomingMailServerHostName", "imap.example.com");
    pl_set_uint(m, "IncomingMailServerPortNumber", 993);
    pl_set_bool(m, "IncomingMailServerUseSSL", 1);
    pl_set_string(m, "OutgoingMailServerAuthentication", "EmailAuthPassword");
    pl_set_string(m, "OutgoingMailServerHostName", "smtp.example.com");
    pl_set_uint(m, "OutgoingMailServerPortNumber", 587);
    pl_set_bool(m, "OutgoingMailServerUseSSL", 1);
    pl_set_bool(m, "OutgoingPasswordSameAsIncomingPassword", 1);
    return profile_new("mail", "Work mail account", m);
}

static plist_t cert_payload(const char *type, const char *suffix, const char *display)
{
    plist_t c = payload_new(type, suffix, display);
    pl_set_string(c, "PayloadCertificateFileName", "example.cer");
    plist_dict_set_item(c, "PayloadContent",
                        plist_new_data(placeholder_der, sizeof(placeholder_der) - 1));
    return c;
}

static plist_t t_cert_root(void)
{
    return profile_new("certificate-root", "Organisation root CA",
                       cert_payload("com.apple.security.root", "cert.root", "Root CA"));
}

static plist_t t_cert_pkcs1(void)
{
    return profile_new("certificate-pkcs1", "Organisation certificate",
                       cert_payload("com.apple.security.pkcs1", "cert.pkcs1", "Certificate"));
}

static plist_t t_passcode(void)
{
    /* PROTOCOL.md 12.3: in User Enrollment every key is ignored; the payload's presence alone
     * requires a non-simple passcode of at least 6 characters. */
    plist_t p = payload_new("com.apple.mobiledevice.passwordpolicy", "passcode", "Passcode");
    return profile_new("passcode", "Device passcode required", p);
}

#define IOS_VISION (LIB_OS_BIT(UE_OS_IOS) | LIB_OS_BIT(UE_OS_VISIONOS))

static const struct lib_template templates[] = {
    {"data-separation",
     "managed open-in and copy/paste: allowOpenFromManagedToUnmanaged=false, "
     "allowOpenFromUnmanagedToManaged=false, requireManagedPasteboard=true, "
     "allowUnmanagedToReadManagedContacts=false, forceAirDropUnmanaged=true",
     IOS_VISION},
    {"per-app-vpn", "per-app VPN (com.apple.vpn.managed.applayer) for managed apps", LIB_OS_ALL},
    {"wifi", "corporate Wi-Fi (WPA2 Enterprise, PEAP)", LIB_OS_ALL},
    {"exchange", "Exchange ActiveSync account (com.apple.eas.account)", IOS_VISION},
    {"mail", "IMAP/SMTP mail account (com.apple.mail.managed)", LIB_OS_ALL},
    {"certificate-root", "root CA certificate (com.apple.security.root)", LIB_OS_ALL},
    {"certificate-pkcs1", "certificate (com.apple.security.pkcs1)", LIB_OS_ALL},
    {"passcode", "passcode presence (com.apple.mobiledevice.passwordpolicy)", IOS_VISION},
    {NULL, NULL, 0},
};

const struct lib_template *lib_templates(void)
{
    return templates;
}

char *lib_template_xml(const char *name, size_t *len)
{
    static const struct {
        const char *name;
        plist_t (*build)(void);
    } builders[] = {
        {"data-separation", t_data_separation},
        {"per-app-vpn", t_per_app_vpn},
        {"wifi", t_wifi},
        {"exchange", t_exchange},
        {"mail", t_mail},
        {"certificate-root", t_cert_root},
        {"certificate-pkcs1", t_cert_pkcs1},
        {"passcode", t_passcode},
    };
    for (size_t i = 0; name && i < sizeof(builders) / sizeof(builders[0]); i++) {
        if (strcmp(builders[i].name, name) != 0)
            continue;
        plist_t p = builders[i].build();
        char *xml = pl_to_xml(p, len);
        plist_free(p);
        return xml;
    }
    return NULL;
}
