/*
 * Platform detection (src/mdm/platform.c): every Mac ProductName form is a Mac, the captured
 * device messages in the spec fixtures get their real platform, and anything unrecognised is
 * iOS, the platform that always carries the token.
 */
#include "harness.h"

#include <plist/plist.h>

#include "../crypto/crypto_fixtures.h"
#include "mdm/platform.h"
#include "plist/pl.h"

TEST(every_mac_form_is_a_mac)
{
    static const char *const macs[] = {
        "Mac14,2",   "Mac13,1",  "MacBook10,1", "MacBookAir10,1", "MacBookPro18,3", "Macmini9,1",
        "MacPro7,1", "iMac14,2", "iMac21,1",    "iMacPro1,1",     "VirtualMac2,1",  "Mac"};
    for (size_t i = 0; i < sizeof macs / sizeof macs[0]; i++) {
        if (!mdm_platform_is_mac(macs[i]))
            fprintf(stderr, "not a Mac: %s\n", macs[i]);
        ASSERT(mdm_platform_is_mac(macs[i]));
        ASSERT_INT_EQ(mdm_platform_of(macs[i], NULL), UE_OS_MACOS);
    }
}

TEST(other_platforms)
{
    ASSERT_INT_EQ(mdm_platform_of("iPhone14,5", NULL), UE_OS_IOS);
    ASSERT_INT_EQ(mdm_platform_of("iPad13,1", NULL), UE_OS_IOS);
    ASSERT_INT_EQ(mdm_platform_of("iPod9,1", NULL), UE_OS_IOS);
    ASSERT_INT_EQ(mdm_platform_of("RealityDevice14,1", NULL), UE_OS_VISIONOS);
    ASSERT_INT_EQ(mdm_platform_of("AppleTV14,1", NULL), UE_OS_TVOS);
    ASSERT_INT_EQ(mdm_platform_of("Watch7,1", NULL), UE_OS_WATCHOS);
    ASSERT_INT_EQ(mdm_platform_of(NULL, "MacBookPro18,3"), UE_OS_MACOS); /* Model if no name */
    ASSERT_INT_EQ(mdm_platform_of("", "iMac14,2"), UE_OS_MACOS);
}

/* Look-alikes are nobody's Mac: unknown means iOS, which always sends the token. */
TEST(lookalikes_are_not_macs)
{
    static const char *const others[] = {"Machine1,1", "MacOS",    "Mac-evil", "iMacX",
                                         "macbook1,1", "MacBookX", " Mac14,2", "VirtualMachine",
                                         "",           "Xserve3,1"};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        ASSERT(!mdm_platform_is_mac(others[i]));
        ASSERT_INT_EQ(mdm_platform_of(others[i], NULL), UE_OS_IOS);
    }
    ASSERT(!mdm_platform_is_mac(NULL));
    ASSERT_INT_EQ(mdm_platform_of(NULL, NULL), UE_OS_IOS);
}

static const char *product_of(const char *rel, plist_t *root)
{
    size_t len = 0;
    char err[64];
    char *data = (char *)spec_fixture(rel, &len);
    *root = data ? pl_parse_dict(data, len, err, sizeof err) : NULL;
    free(data);
    const char *p = pl_get_string(*root, "ProductName");
    plist_t q = p ? NULL : pl_get_typed(*root, "QueryResponses", PLIST_DICT);
    return p ? p : pl_get_string(q, "ProductName");
}

/* Captured messages of real devices (../shared/spec/fixtures). */
TEST(captured_devices)
{
    static const struct {
        const char *file;
        enum ue_os os;
    } cases[] = {{"nanomdm/Authenticate.1.plist", UE_OS_IOS},
                 {"nanomdm/Authenticate.2.plist", UE_OS_MACOS},
                 {"zentral/device_information.plist", UE_OS_MACOS}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        plist_t root = NULL;
        const char *product = product_of(cases[i].file, &root);
        ASSERT_NOT_NULL(product);
        if (mdm_platform_of(product, NULL) != cases[i].os)
            fprintf(stderr, "%s: %s\n", cases[i].file, product);
        ASSERT_INT_EQ(mdm_platform_of(product, NULL), cases[i].os);
        plist_free(root);
    }
}

TEST_MAIN(TEST_ENTRY(every_mac_form_is_a_mac), TEST_ENTRY(other_platforms),
          TEST_ENTRY(lookalikes_are_not_macs), TEST_ENTRY(captured_devices))
