/*
 * Fuzz target: the parse budget (plist/budget.c) and pl_parse on binary plists (and whatever
 * else the mutations turn them into). Besides "no crash, no leak, no sanitizer report", it checks
 * the budget against what libplist then builds: whenever the budget accepts and libplist parses,
 * the tree must have exactly the values and depth the budget counted (binary: references
 * expanded; XML: at most what was counted), so a scanner that undercounts is a crash here.
 * The seed corpus (fuzz/corpus/bplist/) holds Apple-style files and the issue 13 reproductions.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plist/pl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Values plus dictionary keys, and the deepest nesting of dictionaries/arrays. */
static size_t tree_nodes(plist_t node, unsigned level, unsigned *depth)
{
    size_t n = 1;
    plist_type t = plist_get_node_type(node);
    if (t != PLIST_ARRAY && t != PLIST_DICT)
        return n;
    if (level + 1 > *depth)
        *depth = level + 1;
    if (t == PLIST_ARRAY) {
        for (uint32_t i = 0; i < plist_array_get_size(node); i++)
            n += tree_nodes(plist_array_get_item(node, i), level + 1, depth);
        return n;
    }
    plist_dict_iter it = NULL;
    plist_dict_new_iter(node, &it);
    for (;;) {
        char *key = NULL;
        plist_t val = NULL;
        plist_dict_next_item(node, it, &key, &val);
        free(key);
        if (val == NULL)
            break;
        n += 1 + tree_nodes(val, level + 1, depth);
    }
    free(it);
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *d = (const char *)data;
    char err[160];
    pl_usage u;
    int rc = pl_budget_check(d, size, NULL, &u, err, sizeof(err));
    /* The device budget never accepts what the default refuses, and never binary. */
    int rc_dev = pl_budget_check(d, size, &pl_budget_device, NULL, err, sizeof(err));
    if (rc != PL_BUDGET_OK && rc_dev == PL_BUDGET_OK)
        abort();
    if (rc_dev == PL_BUDGET_OK && size >= 6 && memcmp(d, "bplist", 6) == 0)
        abort();
    plist_t p = pl_parse(d, size, err, sizeof(err));
    if (p != NULL && rc != PL_BUDGET_OK)
        abort(); /* libplist must never see what the budget refused */
    if (p == NULL)
        return 0;
    unsigned depth = 0;
    size_t nodes = tree_nodes(p, 0, &depth);
    int binary = size >= 8 && memcmp(d, "bplist00", 8) == 0;
    if (binary ? (nodes != u.nodes || depth != u.depth) : (nodes > u.nodes || depth > u.depth)) {
        fprintf(stderr, "budget counted %zu values depth %u, libplist built %zu depth %u\n",
                u.nodes, u.depth, nodes, depth);
        abort();
    }
    free(pl_to_json(p));
    free(pl_to_xml(p, NULL));
    plist_free(p);
    return 0;
}
