/*
 * The BYOD enrollment profile (PROTOCOL.md 6): a SCEP identity payload and the com.apple.mdm
 * payload pointing at it. Never `AccessRights` (its presence makes the device cancel a BYOD
 * enrollment, 6.2); `AssignedManagedAppleID` and `EnrollmentMode` = BYOD are mandatory.
 */
#include <stdlib.h>
#include <string.h>

#include "core/mem.h"
#include "crypto/pki.h"
#include "enroll/enroll.h"
#include "plist/pl.h"
#include "routes.h"

static plist_t payload_base(const char *type, const char *identifier, const char *uuid)
{
    plist_t p = plist_new_dict();
    pl_set_string(p, "PayloadType", type);
    pl_set_uint(p, "PayloadVersion", 1);
    pl_set_string(p, "PayloadIdentifier", identifier);
    pl_set_string(p, "PayloadUUID", uuid);
    return p;
}

static plist_t subject_rdn(const char *oid, const char *value)
{
    plist_t pair = plist_new_array();
    plist_array_append_item(pair, plist_new_string(oid));
    plist_array_append_item(pair, plist_new_string(value));
    plist_t rdn = plist_new_array();
    plist_array_append_item(rdn, pair);
    return rdn;
}

static plist_t scep_payload(const struct app *app, const char *uuid, const char *challenge)
{
    plist_t p = payload_base("com.apple.security.scep", ENROLL_SCEP_PAYLOAD_ID, uuid);
    pl_set_string(p, "PayloadDisplayName", "Device identity");
    plist_t c = plist_new_dict();
    char *url = xasprintf("%s%s", app->public_url, PATH_SCEP);
    pl_set_string(c, "URL", url);
    free(url);
    pl_set_string(c, "Challenge", challenge);
    pl_set_uint(c, "Keysize", 2048);
    pl_set_string(c, "Key Type", "RSA");
    pl_set_uint(c, "Key Usage", 5); /* signing | encryption */
    pl_set_string(c, "Name", config_get(app->cfg, "org_name"));
    plist_t subject = plist_new_array();
    plist_array_append_item(subject, subject_rdn("O", config_get(app->cfg, "org_name")));
    plist_array_append_item(subject, subject_rdn("CN", "Orchard device identity"));
    plist_dict_set_item(c, "Subject", subject);
    plist_dict_set_item(p, "PayloadContent", c);
    return p;
}

static plist_t mdm_payload(const struct app *app, const st_user *user, const char *uuid,
                           const char *identity_uuid)
{
    plist_t p = payload_base("com.apple.mdm", ENROLL_MDM_PAYLOAD_ID, uuid);
    pl_set_string(p, "PayloadDisplayName", "Device management");
    pl_set_string(p, "IdentityCertificateUUID", identity_uuid);
    pl_set_string(p, "Topic", app->topic);
    char *server = xasprintf("%s%s", app->public_url, PATH_CONNECT);
    char *checkin = xasprintf("%s%s", app->public_url, PATH_CHECKIN);
    pl_set_string(p, "ServerURL", server);
    pl_set_string(p, "CheckInURL", checkin);
    free(server);
    free(checkin);
    pl_set_string(p, "AssignedManagedAppleID", user->managed_apple_id);
    pl_set_string(p, "EnrollmentMode", "BYOD");
    pl_set_bool(p, "SignMessage", 1);
    pl_set_bool(p, "CheckOutWhenRemoved", 1);
    /* Only what Orchard serves (docs/DECISIONS.md, "Capabilities and check-in messages"):
     * per-user-connections (frozen: it cannot be added later, and a Mac's user channel needs
     * it). Not com.apple.mdm.token: it makes the device send GetToken, which Orchard answers
     * with an error; not com.apple.mdm.bootstraptoken: User Enrollment forbids its messages. */
    plist_t caps = plist_new_array();
    plist_array_append_item(caps, plist_new_string("com.apple.mdm.per-user-connections"));
    plist_dict_set_item(p, "ServerCapabilities", caps);
    /* iOS 15.1+, account-driven only (PROTOCOL.md 13.5): the user sees the app at enrollment and
     * a later InstallApplication of it needs no confirmation. Frozen: set it before enrolling. */
    int64_t required_app = config_get_int(app->cfg, "required_app_id");
    if (required_app > 0)
        pl_set_uint(p, "RequiredAppIDForMDM", (uint64_t)required_app);
    return p;
}

char *enroll_profile_build(const struct app *app, const st_user *user, const char *challenge,
                           size_t *len)
{
    char top_uuid[37], scep_uuid[37], mdm_uuid[37];
    crypto_uuid(top_uuid);
    crypto_uuid(scep_uuid);
    crypto_uuid(mdm_uuid);
    plist_t profile = payload_base("Configuration", ENROLL_PROFILE_ID, top_uuid);
    const char *org = config_get(app->cfg, "org_name");
    char *name = xasprintf("%s work account", org);
    pl_set_string(profile, "PayloadDisplayName", name);
    free(name);
    pl_set_string(profile, "PayloadOrganization", org);
    pl_set_string(profile, "PayloadDescription",
                  "Lets your organisation manage the work side of this device. It cannot see "
                  "your personal apps, data or location.");
    plist_t content = plist_new_array();
    /* Identity first: the device installs certificate payloads before the MDM payload. */
    plist_array_append_item(content, scep_payload(app, scep_uuid, challenge));
    plist_array_append_item(content, mdm_payload(app, user, mdm_uuid, scep_uuid));
    plist_dict_set_item(profile, "PayloadContent", content);
    char *xml = pl_to_xml(profile, len);
    plist_free(profile);
    return xml;
}
