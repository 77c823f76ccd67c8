/* Unit tests for the bounded plist helpers. */
#include <stdlib.h>

#include "harness.h"
#include "plist/pl.h"

TEST(parses_device_message)
{
    const char *xml = "<?xml version=\"1.0\"?><plist version=\"1.0\"><dict>"
                      "<key>MessageType</key><string>TokenUpdate</string>"
                      "<key>Token</key><data>\n q83v\n\tEjRW </data>"
                      "<key>AwaitingConfiguration</key><false/></dict></plist>";
    char err[128];
    plist_t p = pl_parse_dict(xml, strlen(xml), err, sizeof(err));
    ASSERT_NOT_NULL(p);
    ASSERT_STR_EQ(pl_get_string(p, "MessageType"), "TokenUpdate");
    size_t n = 0;
    const uint8_t *tok = pl_get_data(p, "Token", &n);
    ASSERT_NOT_NULL(tok);
    ASSERT_INT_EQ(n, 6);
    ASSERT_INT_EQ(tok[0], 0xab);
    ASSERT_INT_EQ(pl_get_bool(p, "AwaitingConfiguration"), 0);
    ASSERT_INT_EQ(pl_get_bool(p, "MessageType"), -1);
    ASSERT(pl_get_string(p, "Token") == NULL);
    plist_free(p);
}

TEST(refuses_garbage_and_deep_nesting)
{
    char err[128];
    ASSERT(pl_parse("hello", 5, err, sizeof(err)) == NULL);
    ASSERT(pl_parse("", 0, err, sizeof(err)) == NULL);
    char deep[4096] = "<plist>";
    for (int i = 0; i < 100; i++)
        strcat(deep, "<array>");
    ASSERT(pl_parse(deep, strlen(deep), err, sizeof(err)) == NULL);
    const char *arr = "<plist><array><string>x</string></array></plist>";
    plist_t p = pl_parse(arr, strlen(arr), err, sizeof(err));
    ASSERT_NOT_NULL(p);
    plist_free(p);
    ASSERT(pl_parse_dict(arr, strlen(arr), err, sizeof(err)) == NULL);
    const char *dtd = "<!DOCTYPE plist [<!ENTITY a \"b\">]><plist><dict/></plist>";
    ASSERT(pl_parse(dtd, strlen(dtd), err, sizeof(err)) == NULL);
}

TEST(json_view)
{
    const char *xml = "<plist><dict><key>n</key><integer>7</integer><key>d</key><data>AAE=</data>"
                      "<key>a</key><array><true/><string>s</string></array></dict></plist>";
    char err[128];
    plist_t p = pl_parse(xml, strlen(xml), err, sizeof(err));
    ASSERT_NOT_NULL(p);
    char *j = pl_to_json(p);
    ASSERT(strstr(j, "\"n\":7") != NULL);
    ASSERT(strstr(j, "\"d\":\"AAE=\"") != NULL);
    ASSERT(strstr(j, "\"a\":[true,\"s\"]") != NULL);
    free(j);
    plist_free(p);
}

TEST_MAIN(TEST_ENTRY(parses_device_message), TEST_ENTRY(refuses_garbage_and_deep_nesting),
          TEST_ENTRY(json_view))
