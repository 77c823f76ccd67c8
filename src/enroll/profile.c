/*
 * The BYOD enrollment profile (PROTOCOL.md 6): a SCEP identity payload and the com.apple.mdm
 * payload pointing at it. Never `AccessRights` (its presence makes the device cancel a BYOD
 * enrollment, 6.2); `AssignedManagedAppleID` and `EnrollmentMode` = BYOD are mandatory.
 *
 * The same builder makes the replacement that renews the identity (PROTOCOL.md 10.3): the device
 * replaces a profile with the same top-level PayloadIdentifier, updates in place the payloads
 * whose PayloadIdentifier and PayloadUUID it already has, and rejects the update if a frozen
 * com.apple.mdm key (6.3) changed. So the payload UUIDs are not random: they are derived from
 * the session that enrolled (the SHA-256 of its token, which the SCEP challenge passes on to
 * every certificate of the enrollment), and a replacement built years later has the same ones.
 * The top-level PayloadUUID is new in every profile: it names this version of the profile.
 */
#include <stdlib.h>
#include <string.h>

#include "auth/secret.h"
#include "core/mem.h"
#include "crypto/cms.h"
#include "crypto/pki.h"
#include "enroll/enroll.h"
#include "plist/pl.h"
#include "routes.h"

/*
 * The PayloadUUID of one payload of the enrollment profile of session_hash: the first 128 bits
 * of SHA-256("orchard-profile-v1:<label>:<session_hash>") as an RFC 9562 version-8 UUID
 * (uppercase, as Apple writes them). Without a session (a certificate from before sessions were
 * recorded) a random one.
 */
static void payload_uuid(const char *session_hash, const char *label, char out[37])
{
    if (session_hash == NULL || session_hash[0] == '\0') {
        crypto_uuid(out);
        return;
    }
    char digest[SECRET_HASH_LEN + 1], hex[33];
    char *input = xasprintf("orchard-profile-v1:%s:%s", label, session_hash);
    secret_hash(input, digest);
    free(input);
    memcpy(hex, digest, 32);
    int v = hex[16] >= 'a' ? hex[16] - 'a' + 10 : hex[16] - '0';
    hex[12] = '8';           /* version 8: custom */
    hex[16] = "89ab"[v & 3]; /* variant 10 (RFC 9562) */
    size_t o = 0;
    for (int i = 0; i < 32; i++) {
        if (i == 8 || i == 12 || i == 16 || i == 20)
            out[o++] = '-';
        char ch = hex[i];
        out[o++] = ch >= 'a' && ch <= 'f' ? (char)(ch - 'a' + 'A') : ch;
    }
    out[o] = '\0';
}

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

/* The profile with a new top-level PayloadUUID and the payload UUIDs of session_hash. */
static char *profile_build(const struct app *app, const st_user *user, const char *challenge,
                           const char *session_hash, size_t *len)
{
    char top_uuid[37], scep_uuid[37], mdm_uuid[37];
    crypto_uuid(top_uuid);
    payload_uuid(session_hash, "scep", scep_uuid);
    payload_uuid(session_hash, "mdm", mdm_uuid);
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

char *enroll_profile_build(const struct app *app, const st_user *user, const char *challenge,
                           const char *session_hash, size_t *len)
{
    return profile_build(app, user, challenge, session_hash, len);
}

char *enroll_profile_build_renewal(const struct app *app, const st_enrollment *e,
                                   const st_user *user, const char *challenge,
                                   const char *session_hash, size_t *len, const char **why)
{
    *why = NULL;
    /* Topic is frozen (6.3) and was recorded at Authenticate: a device would reject a profile
     * naming another push topic, so none is sent (a new push certificate must keep the topic). */
    if (e->topic && strcmp(e->topic, app->topic) != 0) {
        *why = "topic_changed";
        return NULL;
    }
    if (user->managed_apple_id == NULL || user->managed_apple_id[0] == '\0') {
        *why = "no_managed_apple_id";
        return NULL;
    }
    return profile_build(app, user, challenge, session_hash, len);
}

int enroll_profile_sign(const struct app *app, const char *xml, size_t len, uint8_t **der,
                        size_t *der_len)
{
    const crypto_cert *chain[] = {app->signer_ca};
    return cms_sign(app->signer_cert, app->signer_key, chain, 1, (const uint8_t *)xml, len, der,
                    der_len);
}
