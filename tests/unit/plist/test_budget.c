/*
 * Unit tests for the parse budget (plist/budget.h): the reproductions of issue 13 (a binary plist
 * nested 100,000 deep, the XML comment that fooled the old textual depth guard, a 141-byte
 * reference bomb), cycles, malformed trailers and offsets, the XML scanner's agreement with
 * libplist on comments, CDATA and processing instructions, and acceptance of every real device
 * plist we have (in XML and converted to binary).
 */
#include <dirent.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>

#include "bplist_build.h"
#include "core/fs.h"
#include "core/mem.h"
#include "harness.h"
#include "plist/pl.h"

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int check(const char *data, size_t len, const pl_budget *b, pl_usage *u)
{
    char err[160];
    return pl_budget_check(data, len, b, u, err, sizeof(err));
}

static int check_str(const char *s)
{
    return check(s, strlen(s), NULL, NULL);
}

/* Values plus dictionary keys: what the budget counts for a plist without comments or CDATA. */
static size_t tree_nodes(plist_t node)
{
    size_t n = 1;
    if (plist_get_node_type(node) == PLIST_ARRAY) {
        for (uint32_t i = 0; i < plist_array_get_size(node); i++)
            n += tree_nodes(plist_array_get_item(node, i));
    } else if (plist_get_node_type(node) == PLIST_DICT) {
        plist_dict_iter it = NULL;
        plist_dict_new_iter(node, &it);
        for (;;) {
            char *key = NULL;
            plist_t val = NULL;
            plist_dict_next_item(node, it, &key, &val);
            free(key);
            if (val == NULL)
                break;
            n += 1 + tree_nodes(val);
        }
        free(it);
    }
    return n;
}

/* Reproduction (a): arrays nested 100,000 deep, ~900 KB, refused before libplist recurses. */
static char *deep_binary(size_t levels, size_t *len)
{
    struct bb b;
    bb_init(&b, 4);
    for (uint64_t i = 0; i < levels; i++) {
        uint64_t next = i + 1;
        bb_array(&b, &next, 1);
    }
    bb_array(&b, NULL, 0);
    return bb_finish(&b, 4, 0, len);
}

TEST(binary_nested_100000_deep_is_refused)
{
    size_t len = 0;
    char *bin = deep_binary(100000, &len);
    ASSERT(len > 800000);
    char err[160];
    pl_usage u;
    double t0 = now_s();
    ASSERT_INT_EQ(pl_budget_check(bin, len, NULL, &u, err, sizeof(err)), PL_BUDGET_TOO_DEEP);
    ASSERT(pl_parse(bin, len, err, sizeof(err)) == NULL);
    ASSERT(strstr(err, "nested deeper than 32") != NULL);
    ASSERT(now_s() - t0 < 0.5);
    /* Where Apple never sends binary, it is refused before anything is read. */
    ASSERT_INT_EQ(check(bin, len, &pl_budget_device, NULL), PL_BUDGET_BINARY);
    free(bin);
}

TEST(binary_depth_limit_is_exact)
{
    size_t len = 0;
    char err[160];
    char *bin = deep_binary(31, &len); /* 32 arrays */
    plist_t p = pl_parse(bin, len, err, sizeof(err));
    ASSERT_NOT_NULL(p);
    plist_free(p);
    free(bin);
    bin = deep_binary(32, &len); /* 33 arrays */
    ASSERT_INT_EQ(check(bin, len, NULL, NULL), PL_BUDGET_TOO_DEEP);
    free(bin);
}

/*
 * A container first met near the top and memoised, then referenced again deep down: its height
 * must count there too. Object 0 = [1, 2]; 1 = [3] (height 2 with 3 = []); 2 = [[[...[1]...]]]
 * with 1 at level deep + 1.
 */
TEST(binary_shared_object_depth_counts_where_it_is_met)
{
    for (int deep = 30; deep <= 31; deep++) {
        struct bb b;
        bb_init(&b, 2);
        uint64_t r01[2] = {1, 2}, r3 = 3;
        bb_array(&b, r01, 2);    /* 0 */
        bb_array(&b, &r3, 1);    /* 1 */
        uint64_t first = 4;      /* 2 -> 4 -> 5 ... -> 1 */
        bb_array(&b, &first, 1); /* 2 */
        bb_array(&b, NULL, 0);   /* 3 */
        for (int i = 0; i < deep - 2; i++) {
            uint64_t next = i == deep - 3 ? 1 : (uint64_t)(5 + i);
            bb_array(&b, &next, 1);
        }
        size_t len = 0;
        char *bin = bb_finish(&b, 2, 0, &len);
        /* levels: 0, 2, deep-2 chained arrays, then 1 and 3 below it: deep + 2 in all */
        int rc = check(bin, len, NULL, NULL);
        if (deep == 30)
            ASSERT_INT_EQ(rc, PL_BUDGET_OK);
        else
            ASSERT_INT_EQ(rc, PL_BUDGET_TOO_DEEP);
        free(bin);
    }
}

/* Reproduction (c): every level references the next 12 times; 12^7 = 35.8 million values. */
static char *reference_bomb(unsigned levels, unsigned fan, size_t *len)
{
    struct bb b;
    bb_init(&b, 1);
    uint64_t refs[32];
    for (unsigned l = 0; l < levels; l++) {
        for (unsigned j = 0; j < fan; j++)
            refs[j] = l + 1;
        bb_array(&b, refs, fan);
    }
    bb_string(&b, "x");
    return bb_finish(&b, 1, 0, len);
}

TEST(reference_bomb_is_refused_quickly_without_libplist)
{
    size_t len = 0;
    char *bin = reference_bomb(7, 12, &len);
    ASSERT(len < 150);
    char err[160];
    pl_usage u;
    double t0 = now_s();
    ASSERT_INT_EQ(pl_budget_check(bin, len, NULL, &u, err, sizeof(err)), PL_BUDGET_TOO_MANY);
    /* The refusal is the budget's ("binary references"), not libplist's "not a property list". */
    ASSERT(pl_parse(bin, len, err, sizeof(err)) == NULL);
    ASSERT(strstr(err, "binary references") != NULL);
    ASSERT(now_s() - t0 < 0.5);
    free(bin);
    /* Text expansion on its own: a 4 KB string referenced 1,000 x 1,000 times. */
    struct bb b;
    bb_init(&b, 2);
    uint64_t refs[1000];
    for (int j = 0; j < 1000; j++)
        refs[j] = 1;
    bb_array(&b, refs, 1000); /* 0 -> 1 x 1000 */
    for (int j = 0; j < 1000; j++)
        refs[j] = 2;
    bb_array(&b, refs, 1000); /* 1 -> 2 x 1000 */
    char big[4097];
    memset(big, 'a', 4096);
    big[4096] = '\0';
    bb_string(&b, big);
    bin = bb_finish(&b, 2, 0, &len);
    pl_budget tight = pl_budget_default;
    tight.max_nodes = PL_MAX_NODES;
    ASSERT_INT_EQ(check(bin, len, &tight, &u), PL_BUDGET_TOO_MUCH_TEXT);
    free(bin);
}

/* Shared objects within budget are fine, and counted once per reference. */
TEST(binary_shared_objects_within_budget_are_accepted)
{
    size_t len = 0;
    char *bin = reference_bomb(3, 10, &len); /* 1 + 10 + 100 + 1000 values */
    pl_usage u;
    ASSERT_INT_EQ(check(bin, len, NULL, &u), PL_BUDGET_OK);
    ASSERT_INT_EQ(u.nodes, 1111);
    ASSERT_INT_EQ(u.depth, 3);
    ASSERT_INT_EQ(u.text, 1000);
    char err[160];
    plist_t p = pl_parse(bin, len, err, sizeof(err));
    ASSERT_NOT_NULL(p);
    ASSERT_INT_EQ(tree_nodes(p), 1111);
    plist_free(p);
    free(bin);
}

TEST(binary_cycles_are_refused)
{
    /* 0 = [0] */
    struct bb b;
    size_t len = 0;
    bb_init(&b, 1);
    uint64_t self = 0;
    bb_array(&b, &self, 1);
    char *bin = bb_finish(&b, 1, 0, &len);
    ASSERT_INT_EQ(check(bin, len, NULL, NULL), PL_BUDGET_CYCLE);
    free(bin);
    /* 0 = {k: 1}, 1 = [2], 2 = [0] */
    bb_init(&b, 1);
    uint64_t k = 3, v = 1, two = 2, zero = 0;
    bb_dict(&b, &k, &v, 1);
    bb_array(&b, &two, 1);
    bb_array(&b, &zero, 1);
    bb_string(&b, "k");
    bin = bb_finish(&b, 1, 0, &len);
    char err[160];
    ASSERT_INT_EQ(pl_budget_check(bin, len, NULL, NULL, err, sizeof(err)), PL_BUDGET_CYCLE);
    ASSERT(strstr(err, "contains itself") != NULL);
    free(bin);
}

/* A small valid file: {"a": [true, "b"]}; objects 0 dict, 1 "a", 2 array, 3 true, 4 "b". */
static char *small_binary(size_t *len)
{
    struct bb b;
    bb_init(&b, 1);
    uint64_t k = 1, v = 2, items[2] = {3, 4};
    bb_dict(&b, &k, &v, 1);
    bb_string(&b, "a");
    bb_array(&b, items, 2);
    bb_true(&b);
    bb_string(&b, "b");
    return bb_finish(&b, 1, 0, len);
}

TEST(binary_malformed_trailers_and_offsets_are_refused)
{
    size_t len = 0;
    char *good = small_binary(&len);
    pl_usage u;
    ASSERT_INT_EQ(check(good, len, NULL, &u), PL_BUDGET_OK);
    ASSERT_INT_EQ(u.nodes, 5);
    struct {
        size_t from_end; /* 0: patch at an absolute offset (at) instead */
        size_t at;
        uint64_t value;
        unsigned width;
        const char *what;
    } cases[] = {
        {BB_OFFSET_SIZE, 0, 0, 1, "offset size 0"},
        {BB_OFFSET_SIZE, 0, 9, 1, "offset size 9"},
        {BB_REF_SIZE, 0, 0, 1, "reference size 0"},
        {BB_REF_SIZE, 0, 16, 1, "reference size 16"},
        {BB_NUM_OBJECTS, 0, 0, 8, "no objects"},
        {BB_NUM_OBJECTS, 0, 6, 8, "object count past the table"},
        {BB_NUM_OBJECTS, 0, 1ull << 40, 8, "object count 2^40"},
        {BB_NUM_OBJECTS, 0, UINT64_MAX, 8, "object count 2^64-1"},
        {BB_TOP, 0, 5, 8, "top object missing"},
        {BB_TOP, 0, UINT64_MAX, 8, "top object 2^64-1"},
        {BB_TABLE, 0, 0, 8, "table at 0"},
        {BB_TABLE, 0, 4, 8, "table inside the header"},
        {BB_TABLE, 0, 1u << 20, 8, "table past the end"},
        {BB_TABLE, 0, UINT64_MAX - 3, 8, "table offset wrapping"},
        {0, 0, 'B', 1, "not bplist"},
        {0, 7, '1', 1, "version 01"},
        {0, 8, 0xD3, 1, "dictionary longer than its object"},
        {0, 8, 0xDF, 1, "dictionary with a bad size marker"},
        {0, 9, 7, 1, "reference to a missing object"},
        {0, 9, 3, 1, "dictionary key that is not a string"},
        {0, 11, 0x80, 1, "UID object"},
        {0, 11, 0xC1, 1, "set object"},
        {0, 11, 0x70, 1, "unassigned object type"},
        {0, 11, 0x00, 1, "null object"},
        {0, 11, 0x0F, 1, "fill object"},
        {0, 11, 0x5F, 1, "string with a bad size marker"},
        {0, 16, 0x15, 1, "integer of 32 bytes"},
        {0, 16, 0x13, 1, "integer running into the table"},
        {0, 16, 0x22, 1, "real running into the table"},
        {0, 16, 0x31, 1, "date of 2 bytes"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *bad = xmalloc(len);
        memcpy(bad, good, len);
        size_t at = cases[i].from_end ? len - cases[i].from_end : cases[i].at;
        bb_patch(bad, at, cases[i].value, cases[i].width);
        char err[160];
        int rc = pl_budget_check(bad, len, NULL, NULL, err, sizeof(err));
        if (rc == PL_BUDGET_OK || rc == PL_BUDGET_TOO_DEEP)
            fprintf(stderr, "case %s: rc %d (%s)\n", cases[i].what, rc, err);
        ASSERT(rc != PL_BUDGET_OK);
        ASSERT(pl_parse(bad, len, err, sizeof(err)) == NULL);
        free(bad);
    }
    /* Every offset in the table must point into the object area, even unreferenced ones. */
    char *bad = xmalloc(len);
    memcpy(bad, good, len);
    size_t table = len - 32 - 5;
    for (size_t at = 0; at < 5; at++) {
        for (uint64_t v = 0; v < 256; v++) {
            memcpy(bad, good, len);
            bad[table + at] = (char)v;
            if (v >= 8 && v < table)
                continue; /* in range: may or may not be an object header */
            ASSERT(check(bad, len, NULL, NULL) != PL_BUDGET_OK);
        }
    }
    /* Every truncation of a valid file is refused. */
    for (size_t cut = 0; cut < len; cut++)
        ASSERT(check(good, cut, NULL, NULL) != PL_BUDGET_OK);
    free(bad);
    free(good);
}

/*
 * Reproduction (b): a first-line comment full of "</arra" fragments let the old textual guard
 * count down, so 190,000 levels (3.99 MB, under the 4 MiB body limit) reached libplist, whose
 * recursive free overflowed the stack.
 */
TEST(xml_comment_trick_is_refused)
{
    size_t n = 190000;
    size_t cap = n * 24 + 64;
    char *xml = xmalloc(cap);
    size_t len = 0;
    len += (size_t)sprintf(xml + len, "<!-- ");
    for (size_t i = 0; i < n; i++)
        len += (size_t)sprintf(xml + len, "</arra");
    len += (size_t)sprintf(xml + len, " -->\n<plist>");
    for (size_t i = 0; i < n; i++)
        len += (size_t)sprintf(xml + len, "<array>");
    for (size_t i = 0; i < n; i++)
        len += (size_t)sprintf(xml + len, "</array>");
    len += (size_t)sprintf(xml + len, "</plist>");
    ASSERT(len < 4u << 20);
    char err[160];
    double t0 = now_s();
    ASSERT_INT_EQ(pl_budget_check(xml, len, NULL, NULL, err, sizeof(err)), PL_BUDGET_TOO_DEEP);
    ASSERT(pl_parse(xml, len, err, sizeof(err)) == NULL);
    ASSERT(strstr(err, "nested deeper than 32") != NULL);
    ASSERT(now_s() - t0 < 0.5);
    free(xml);
}

static char *nested_xml(int levels)
{
    char *xml = xmalloc((size_t)levels * 32 + 64);
    size_t len = (size_t)sprintf(xml, "<plist>");
    for (int i = 0; i < levels; i++)
        len += (size_t)sprintf(xml + len, i % 2 ? "<array>" : "<dict><key>k</key>");
    len += (size_t)sprintf(xml + len, "<true/>");
    for (int i = levels - 1; i >= 0; i--)
        len += (size_t)sprintf(xml + len, i % 2 ? "</array>" : "</dict>");
    sprintf(xml + len, "</plist>");
    return xml;
}

TEST(xml_depth_limit_is_exact)
{
    char err[160];
    char *xml = nested_xml(32);
    pl_usage u;
    ASSERT_INT_EQ(check(xml, strlen(xml), NULL, &u), PL_BUDGET_OK);
    ASSERT_INT_EQ(u.depth, 32);
    plist_t p = pl_parse(xml, strlen(xml), err, sizeof(err));
    ASSERT_NOT_NULL(p);
    ASSERT_INT_EQ(tree_nodes(p), u.nodes);
    plist_free(p);
    free(xml);
    xml = nested_xml(33);
    ASSERT_INT_EQ(check(xml, strlen(xml), NULL, NULL), PL_BUDGET_TOO_DEEP);
    free(xml);
}

/*
 * Markup libplist does not parse as elements (comments, CDATA, processing instructions) is
 * skipped, never counted as nesting; and markup libplist does parse is never hidden.
 */
TEST(xml_comments_cdata_and_pis_agree_with_libplist)
{
    const char *ok[] = {
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST "
        "1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n<plist "
        "version=\"1.0\"><dict/></plist>\n",
        "<plist><dict><!-- <array><array> --><key>a</key><!-- x --><string>s</string></dict>"
        "</plist>",
        "<plist><array><string><![CDATA[<array><array></dict>]]></string></array></plist>",
        "<plist><array><string>a<!-- </string><array> -->b</string></array></plist>",
        "<plist><array><?pi a '>' is fine?><true/></array></plist>",
        "<?xml version=\"1.0\"?><?other a=\"b\"?><plist><true/></plist>",
        "<plist><array><data>\n\tAAEC\n</data><integer> 7 </integer><real>1.5</real>"
        "<date>2024-01-01T00:00:00Z</date><false/><true></true><string/></array></plist>",
        "<dict><key>no plist wrapper</key><true/></dict>",
        "  <plist>\r\n<array\t/>\n</plist  >\n<!-- trailing comment -->\n",
        "<plist><string>&lt;array&gt; &#x41; &amp;</string></plist>",
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        char err[160];
        pl_usage u;
        int rc = pl_budget_check(ok[i], strlen(ok[i]), NULL, &u, err, sizeof(err));
        if (rc != 0)
            fprintf(stderr, "ok[%zu]: %s\n", i, err);
        ASSERT_INT_EQ(rc, PL_BUDGET_OK);
        plist_t p = pl_parse(ok[i], strlen(ok[i]), err, sizeof(err));
        if (p == NULL)
            fprintf(stderr, "ok[%zu]: %s\n", i, err);
        ASSERT_NOT_NULL(p);
        ASSERT(tree_nodes(p) <= u.nodes); /* comments/CDATA inside values count extra */
        ASSERT(u.depth <= 2);
        plist_free(p);
    }
    /* The CDATA section is text, not elements. */
    plist_t p = pl_parse(ok[2], strlen(ok[2]), NULL, 0);
    ASSERT_NOT_NULL(p);
    ASSERT_STR_EQ(plist_get_string_ptr(plist_array_get_item(p, 0), NULL), "<array><array></dict>");
    plist_free(p);
}

TEST(xml_ambiguous_or_foreign_markup_is_refused)
{
    const char *bad[] = {
        /* libplist ends "<?>" at once; a naive scanner would hide the dict up to the next "?>" */
        "<?><plist><array><array></array></array></plist><?x?>",
        /* libplist skips the quoted "?>", so an odd quote count would disagree */
        "<?xml a=\"?><array>\"?><plist><true/></plist>",
        "<?xml <!-- ?><plist><true/></plist>",
        "<!DOCTYPE plist [<!ENTITY a \"b\">]><plist><string>&a;</string></plist>",
        "<!DOCTYPE plist SYSTEM 'x>y'><plist><true/></plist>",
        "<!DOCTYPE plist \"<dict>\"><plist><true/></plist>",
        "<plist><true/></plist><!DOCTYPE plist>",
        "<plist><array><!-- a -- b --><true/></array></plist>",
        "<plist><array><!--></array></plist>",
        "<plist><array><![CDATA[<true/>]]></array></plist>",
        "<plist><dict x=\"1\"><key>a</key><true/></dict></plist>",
        "<plist version='1.0'><true/></plist>",
        "<plist version=\"<dict>\"><true/></plist>",
        "<plist/>",
        "<plist></plist>",
        "<plist><plist><true/></plist></plist>",
        "<plist><array></dict></plist>",
        "<plist><array><true/></arrayx></plist>",
        "<plist><array><true/></array ></plist>junk",
        "<plist><true/><true/></plist>",
        "<plist><true/></plist><true/>",
        "<plist><array><key>a</key></array></plist>",
        "<plist><dict><key>a</key></dict></plist>",
        "<plist><dict><true/></dict></plist>",
        "<plist><dict><key>a</key><key>b</key><true/></dict></plist>",
        "<plist><dict><key/><true/></dict></plist>",
        "<plist><array><string>a<b/></string></array></plist>",
        "<plist><array><string>a<?x?></string></array></plist>",
        "<plist><array><dict / ></array></plist>",
        "<plist><array><dictionary/></array></plist>",
        "<plist><array><uid>1</uid></array></plist>",
        "<plist><array>text</array></plist>",
        "\xEF\xBB\xBF<plist><true/></plist>",
        "<plist><array><string>unterminated</array></plist>",
        "<plist><array>",
        "",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = check_str(bad[i]);
        if (rc == PL_BUDGET_OK)
            fprintf(stderr, "accepted bad[%zu]: %s\n", i, bad[i]);
        ASSERT(rc != PL_BUDGET_OK);
    }
    /* NUL anywhere (libplist would read "<dict\0x>" as <dict>) */
    static const char nul[] = "<plist><array><dict\0x></dict></array></plist>";
    ASSERT_INT_EQ(check(nul, sizeof(nul) - 1, NULL, NULL), PL_BUDGET_MALFORMED);
}

/* A dictionary's keys are inserted one by one, each compared with the others: capped. */
TEST(wide_dictionaries_are_refused)
{
    for (int keys = 1024; keys <= 1025; keys++) {
        char *xml = xmalloc((size_t)keys * 32 + 64);
        size_t len = (size_t)sprintf(xml, "<plist><dict>");
        for (int i = 0; i < keys; i++)
            len += (size_t)sprintf(xml + len, "<key>k%d</key><true/>", i);
        len += (size_t)sprintf(xml + len, "</dict></plist>");
        pl_usage u;
        int rc = check(xml, len, NULL, &u);
        ASSERT_INT_EQ(rc, keys == 1024 ? PL_BUDGET_OK : PL_BUDGET_TOO_WIDE);
        if (rc == 0)
            ASSERT_INT_EQ(u.max_keys, 1024);
        /* what devices send before authentication: 512 */
        ASSERT_INT_EQ(check(xml, len, &pl_budget_device, NULL), PL_BUDGET_TOO_WIDE);
        free(xml);
    }
    struct bb b;
    bb_init(&b, 2);
    uint64_t keys[1025], vals[1025];
    for (int i = 0; i < 1025; i++) {
        keys[i] = 1;
        vals[i] = 2;
    }
    bb_dict(&b, keys, vals, 1025);
    bb_string(&b, "k");
    bb_true(&b);
    size_t len = 0;
    char *bin = bb_finish(&b, 2, 0, &len);
    ASSERT_INT_EQ(check(bin, len, NULL, NULL), PL_BUDGET_TOO_WIDE);
    free(bin);
}

TEST(node_text_and_size_budgets)
{
    pl_budget tight = pl_budget_default;
    tight.max_nodes = 10;
    const char *eleven = "<plist><array><true/><true/><true/><true/><true/><true/><true/><true/>"
                         "<true/><true/></array></plist>";
    ASSERT_INT_EQ(check(eleven, strlen(eleven), &tight, NULL), PL_BUDGET_TOO_MANY);
    tight = pl_budget_default;
    tight.max_text = 4;
    const char *text = "<plist><string>12345</string></plist>";
    ASSERT_INT_EQ(check(text, strlen(text), &tight, NULL), PL_BUDGET_TOO_MUCH_TEXT);
    tight = pl_budget_default;
    tight.max_bytes = 20;
    ASSERT_INT_EQ(check(text, strlen(text), &tight, NULL), PL_BUDGET_TOO_BIG);
    /* pl_parse_budget honours the caller's budget */
    char err[160];
    ASSERT(pl_parse_budget(text, strlen(text), &tight, err, sizeof(err)) == NULL);
    ASSERT(strstr(err, "larger than 20 bytes") != NULL);
    /* UTF-16 strings count as the UTF-8 they become (up to 3 bytes per unit) */
    struct bb b;
    bb_init(&b, 1);
    uint64_t i = bb_begin(&b);
    (void)i;
    bb_marker(&b, 0x60, 2);
    bb_bytes(&b, "\x20\xac\x20\xac", 4); /* two euro signs */
    size_t len = 0;
    char *bin = bb_finish(&b, 1, 0, &len);
    pl_usage u;
    ASSERT_INT_EQ(check(bin, len, NULL, &u), PL_BUDGET_OK);
    ASSERT_INT_EQ(u.text, 6);
    plist_t p = pl_parse(bin, len, err, sizeof(err));
    ASSERT_NOT_NULL(p);
    ASSERT_STR_EQ(plist_get_string_ptr(p, NULL), "\xe2\x82\xac\xe2\x82\xac");
    plist_free(p);
    free(bin);
}

/*
 * Found by fuzz_bplist: a UTF-16 dictionary key containing U+0000 made libplist 2.2 abort on an
 * assertion (length != strlen) as soon as the key was read back (plist_dict_next_item): one
 * binary plist of 52 bytes killed the process. Refused by the budget now.
 */
TEST(utf16_string_with_nul_is_refused)
{
    struct bb b;
    bb_init(&b, 1);
    uint64_t k = 1, v = 2;
    bb_dict(&b, &k, &v, 1);
    bb_begin(&b);
    bb_marker(&b, 0x60, 2);
    bb_bytes(&b, "\0\0\0a", 4); /* U+0000 'a' */
    bb_true(&b);
    size_t len = 0;
    char *bin = bb_finish(&b, 1, 0, &len);
    char err[160];
    ASSERT_INT_EQ(pl_budget_check(bin, len, NULL, NULL, err, sizeof(err)), PL_BUDGET_MALFORMED);
    ASSERT(strstr(err, "NUL in string") != NULL);
    ASSERT(pl_parse(bin, len, err, sizeof(err)) == NULL);
    free(bin);
    /* the fuzzer's own reproducer, kept in the corpus */
    size_t flen = 0;
    char *found = fs_read_file("fuzz/corpus/bplist/utf16_nul_key.bplist", &flen);
    ASSERT_NOT_NULL(found);
    ASSERT(pl_parse(found, flen, err, sizeof(err)) == NULL);
    free(found);
}

/* ---- every real device plist, as XML and converted to binary ---- */

static int accept_file(const char *path, int *count)
{
    size_t len = 0;
    char *data = fs_read_file(path, &len);
    if (data == NULL)
        return -1;
    char err[160];
    pl_usage u;
    int rc = pl_budget_check(data, len, &pl_budget_device, &u, err, sizeof(err));
    plist_t p =
        rc == 0 ? pl_parse_dict_budget(data, len, &pl_budget_device, err, sizeof(err)) : NULL;
    if (p == NULL || tree_nodes(p) != u.nodes) {
        fprintf(stderr, "%s: %s\n", path, p ? "node count differs" : err);
        rc = -1;
    }
    if (p) {
        /* The same content in binary: accepted where binary is (admin uploads), same count. */
        char *bin = NULL;
        uint32_t blen = 0;
        plist_to_bin(p, &bin, &blen);
        pl_usage ub;
        if (pl_budget_check(bin, blen, NULL, &ub, err, sizeof(err)) != 0 || ub.nodes != u.nodes ||
            ub.depth != u.depth) {
            fprintf(stderr, "%s as binary: %s (%zu vs %zu nodes)\n", path, err, ub.nodes, u.nodes);
            rc = -1;
        }
        plist_t pb = pl_parse_dict(bin, blen, err, sizeof(err));
        if (pb == NULL || tree_nodes(pb) != u.nodes)
            rc = -1;
        plist_free(pb);
        plist_to_bin_free(bin);
        plist_free(p);
    }
    free(data);
    ++*count;
    return rc;
}

static int accept_dir(const char *dir, int *count)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return -1;
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char *path = xasprintf("%s/%s", dir, e->d_name);
        struct stat st;
        size_t n = strlen(e->d_name);
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
            if (accept_dir(path, count) != 0)
                rc = -1;
        } else if (n > 6 && strcmp(e->d_name + n - 6, ".plist") == 0) {
            if (accept_file(path, count) != 0)
                rc = -1;
        }
        free(path);
    }
    closedir(d);
    return rc;
}

TEST(every_real_device_plist_is_accepted)
{
    const char *spec = getenv("ORCHARD_SPEC");
    char *dir = xasprintf("%s/fixtures", spec ? spec : "../shared/spec");
    int count = 0;
    ASSERT_INT_EQ(accept_dir(dir, &count), 0);
    ASSERT(count >= 13); /* nanomdm, micromdm, zentral, oreore-ios-mdm */
    free(dir);
    int local = 0;
    ASSERT_INT_EQ(accept_dir("tests/fixtures", &local), 0);
    ASSERT(local >= 1);
}

/* The Idle hot path: a 1 KB device message is checked in microseconds (loose under ASan). */
TEST(idle_body_check_is_cheap)
{
    char xml[1200];
    size_t len = (size_t)snprintf(
        xml, sizeof(xml),
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE plist PUBLIC \"-//Apple//DTD "
        "PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n<plist "
        "version=\"1.0\">\n<dict>\n\t<key>EnrollmentID</key>\n\t<string>%s</string>\n\t"
        "<key>Status</key>\n\t<string>Idle</string>\n\t<key>Padding</key>\n\t<string>%0700d"
        "</string>\n</dict>\n</plist>\n",
        "8D4C1A0E-9B1E-4F53-A1C6-5E4C7A2B9F10", 0);
    ASSERT(len > 1000);
    int iters = 20000;
    double t0 = now_s();
    for (int i = 0; i < iters; i++)
        ASSERT_INT_EQ(check(xml, len, &pl_budget_device, NULL), PL_BUDGET_OK);
    double per = (now_s() - t0) / iters;
    printf("# budget check of a %zu-byte Idle: %.2f us\n", len, per * 1e6);
    ASSERT(per < 50e-6);
}

TEST_MAIN(TEST_ENTRY(binary_nested_100000_deep_is_refused), TEST_ENTRY(binary_depth_limit_is_exact),
          TEST_ENTRY(binary_shared_object_depth_counts_where_it_is_met),
          TEST_ENTRY(reference_bomb_is_refused_quickly_without_libplist),
          TEST_ENTRY(binary_shared_objects_within_budget_are_accepted),
          TEST_ENTRY(binary_cycles_are_refused),
          TEST_ENTRY(binary_malformed_trailers_and_offsets_are_refused),
          TEST_ENTRY(xml_comment_trick_is_refused), TEST_ENTRY(xml_depth_limit_is_exact),
          TEST_ENTRY(xml_comments_cdata_and_pis_agree_with_libplist),
          TEST_ENTRY(xml_ambiguous_or_foreign_markup_is_refused),
          TEST_ENTRY(wide_dictionaries_are_refused), TEST_ENTRY(node_text_and_size_budgets),
          TEST_ENTRY(utf16_string_with_nul_is_refused),
          TEST_ENTRY(every_real_device_plist_is_accepted), TEST_ENTRY(idle_body_check_is_cheap))
