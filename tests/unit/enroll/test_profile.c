/*
 * The enrollment profile and its renewal replacement (enroll/profile.c, PROTOCOL.md 6 and
 * 10.3): the replacement keeps the top-level PayloadIdentifier, the payload identifiers and
 * UUIDs (derived from the enrolling session) and every frozen com.apple.mdm key, and carries
 * the new challenge; a replacement the device would reject (another push topic) is not built.
 */
#include <string.h>

#include "app.h"
#include "enroll/enroll.h"
#include "harness.h"
#include "plist/pl.h"

static struct app app;
static const st_user alice = {
    .id = 1, .email = "alice@example.com", .managed_apple_id = "alice@appleid.example.com"};
static const char session_a[] = "5f2d6c1e8a9b0c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5061728394a5b";
static const char session_b[] = "0000000000000000000000000000000000000000000000000000000000000001";

static void setup(void)
{
    if (app.cfg == NULL) {
        app.cfg = config_new("/nonexistent");
        app.public_url = (char *)"https://mdm.example.com";
        app.topic = (char *)"com.apple.mgmt.External.1b2c3d4e-0000-4000-8000-123456789abc";
    }
}

/* The payload of type `type` in a built profile (borrowed from root). */
static plist_t payload(plist_t root, const char *type)
{
    plist_t content = pl_get_typed(root, "PayloadContent", PLIST_ARRAY);
    for (uint32_t i = 0; content && i < plist_array_get_size(content); i++) {
        plist_t p = plist_array_get_item(content, i);
        const char *t = pl_get_string(p, "PayloadType");
        if (t && strcmp(t, type) == 0)
            return p;
    }
    return NULL;
}

/* Parses and frees a built profile. (len is read through a pointer: the builder fills it while
 * this call's arguments are evaluated, in no set order.) */
static plist_t parse(char *xml, const size_t *len)
{
    char err[64];
    plist_t p = xml ? pl_parse_dict(xml, *len, err, sizeof(err)) : NULL;
    free(xml);
    return p;
}

static int uuid_is_v8(const char *u)
{
    if (u == NULL || strlen(u) != 36 || u[8] != '-' || u[13] != '-' || u[18] != '-' ||
        u[23] != '-' || u[14] != '8' || strchr("89AB", u[19]) == NULL)
        return 0;
    for (const char *c = u; *c; c++) {
        if (!(*c == '-' || (*c >= '0' && *c <= '9') || (*c >= 'A' && *c <= 'F')))
            return 0;
    }
    return 1;
}

TEST(replacement_keeps_identifiers_uuids_and_frozen_keys)
{
    setup();
    size_t len = 0;
    plist_t orig =
        parse(enroll_profile_build(&app, &alice, "challenge-one", session_a, &len), &len);
    st_enrollment e = {.id = "E1", .topic = (char *)app.topic};
    const char *why = "unset";
    plist_t repl = parse(
        enroll_profile_build_renewal(&app, &e, &alice, "challenge-two", session_a, &len, &why),
        &len);
    ASSERT_NOT_NULL(orig);
    ASSERT_NOT_NULL(repl);
    ASSERT(why == NULL);
    ASSERT_STR_EQ(pl_get_string(repl, "PayloadIdentifier"), ENROLL_PROFILE_ID);
    ASSERT(strcmp(pl_get_string(orig, "PayloadUUID"), pl_get_string(repl, "PayloadUUID")) != 0);
    plist_t os = payload(orig, "com.apple.security.scep"),
            rs = payload(repl, "com.apple.security.scep");
    plist_t om = payload(orig, "com.apple.mdm"), rm = payload(repl, "com.apple.mdm");
    ASSERT(os && rs && om && rm);
    ASSERT(uuid_is_v8(pl_get_string(os, "PayloadUUID")));
    ASSERT(uuid_is_v8(pl_get_string(om, "PayloadUUID")));
    static const char *const same_scep[] = {"PayloadIdentifier", "PayloadUUID"};
    for (size_t i = 0; i < 2; i++)
        ASSERT_STR_EQ(pl_get_string(rs, same_scep[i]), pl_get_string(os, same_scep[i]));
    static const char *const frozen[] = {
        "PayloadIdentifier", "PayloadUUID", "IdentityCertificateUUID", "Topic",
        "ServerURL",         "CheckInURL",  "AssignedManagedAppleID",  "EnrollmentMode"};
    for (size_t i = 0; i < sizeof(frozen) / sizeof(frozen[0]); i++)
        ASSERT_STR_EQ(pl_get_string(rm, frozen[i]), pl_get_string(om, frozen[i]));
    ASSERT_STR_EQ(pl_get_string(rm, "IdentityCertificateUUID"), pl_get_string(rs, "PayloadUUID"));
    plist_t rc = pl_get_typed(rs, "PayloadContent", PLIST_DICT);
    ASSERT_STR_EQ(pl_get_string(rc, "Challenge"), "challenge-two");
    ASSERT(plist_dict_get_item(rm, "AccessRights") == NULL);
    plist_free(orig);
    plist_free(repl);
}

TEST(payload_uuids_belong_to_the_enrolling_session)
{
    setup();
    size_t len = 0;
    plist_t a = parse(enroll_profile_build(&app, &alice, "c", session_a, &len), &len);
    plist_t b = parse(enroll_profile_build(&app, &alice, "c", session_b, &len), &len);
    plist_t r1 = parse(enroll_profile_build(&app, &alice, "c", NULL, &len), &len);
    plist_t r2 = parse(enroll_profile_build(&app, &alice, "c", NULL, &len), &len);
    ASSERT(a && b && r1 && r2);
    /* Another session: other UUIDs. No session (older certificates): random ones. */
    ASSERT(strcmp(pl_get_string(payload(a, "com.apple.security.scep"), "PayloadUUID"),
                  pl_get_string(payload(b, "com.apple.security.scep"), "PayloadUUID")) != 0);
    ASSERT(strcmp(pl_get_string(payload(r1, "com.apple.mdm"), "PayloadUUID"),
                  pl_get_string(payload(r2, "com.apple.mdm"), "PayloadUUID")) != 0);
    ASSERT(strcmp(pl_get_string(payload(a, "com.apple.security.scep"), "PayloadUUID"),
                  pl_get_string(payload(a, "com.apple.mdm"), "PayloadUUID")) != 0);
    plist_free(a);
    plist_free(b);
    plist_free(r1);
    plist_free(r2);
}

TEST(no_replacement_the_device_would_reject)
{
    setup();
    size_t len = 0;
    const char *why = NULL;
    st_enrollment e = {.id = "E1", .topic = "com.apple.mgmt.External.another-topic"};
    ASSERT(enroll_profile_build_renewal(&app, &e, &alice, "c", session_a, &len, &why) == NULL);
    ASSERT_STR_EQ(why, "topic_changed");
    st_user nomaid = alice;
    nomaid.managed_apple_id = NULL;
    e.topic = (char *)app.topic;
    ASSERT(enroll_profile_build_renewal(&app, &e, &nomaid, "c", session_a, &len, &why) == NULL);
    ASSERT_STR_EQ(why, "no_managed_apple_id");
}

TEST_MAIN(TEST_ENTRY(replacement_keeps_identifiers_uuids_and_frozen_keys),
          TEST_ENTRY(payload_uuids_belong_to_the_enrolling_session),
          TEST_ENTRY(no_replacement_the_device_would_reject))
