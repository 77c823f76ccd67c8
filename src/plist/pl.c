/*
 * Bounded plist parsing and typed access. libplist trusts its input's shape (it recurses per
 * nesting level, expands binary references, frees recursively), so every parse first runs the
 * budget check of plist/budget.c on the raw bytes; the tree is counted again afterwards as a
 * second line of defence (cheap: the budget already bounds its depth and size).
 */
#include "plist/pl.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/mem.h"

/*
 * Counts values against the hard ceilings; depth is the number of containers around node.
 * Recursion is bounded by PL_MAX_DEPTH, which the budget check enforced before parsing.
 */
struct count_walk {
    unsigned depth;
    size_t *count;
};

static int count_item(const char *key, plist_t val, void *ctx);

static int count_nodes(plist_t node, unsigned depth, size_t *count)
{
    if (++*count > PL_MAX_NODES)
        return -1;
    plist_type t = plist_get_node_type(node);
    if ((t == PLIST_ARRAY || t == PLIST_DICT) && depth + 1 > PL_MAX_DEPTH)
        return -1;
    if (t == PLIST_ARRAY) {
        uint32_t n = plist_array_get_size(node);
        for (uint32_t i = 0; i < n; i++) {
            if (count_nodes(plist_array_get_item(node, i), depth + 1, count) != 0)
                return -1;
        }
    } else if (t == PLIST_DICT) {
        struct count_walk w = {depth + 1, count};
        return pl_dict_each(node, count_item, &w);
    }
    return 0;
}

static int count_item(const char *key, plist_t val, void *ctx)
{
    (void)key;
    struct count_walk *w = ctx;
    return count_nodes(val, w->depth, w->count);
}

int pl_dict_each(plist_t dict, int (*fn)(const char *key, plist_t value, void *ctx), void *ctx)
{
    if (dict == NULL || plist_get_node_type(dict) != PLIST_DICT)
        return 0;
    plist_dict_iter it = NULL;
    int rc = 0;
    plist_dict_new_iter(dict, &it);
    while (rc == 0) {
        char *key = NULL;
        plist_t val = NULL;
        plist_dict_next_item(dict, it, &key, &val);
        if (val != NULL)
            rc = fn(key, val, ctx);
        free(key);
        if (val == NULL)
            break;
    }
    free(it);
    return rc;
}

plist_t pl_parse_budget(const char *data, size_t len, const pl_budget *b, char *err, size_t err_len)
{
    plist_t root = NULL;
    if (b == NULL)
        b = &pl_budget_default;
    if (pl_budget_check(data, len, b, NULL, err, err_len) != PL_BUDGET_OK)
        return NULL; /* libplist never sees it */
    /* pl_budget_check refused anything longer than UINT32_MAX */
    if (len >= 8 && memcmp(data, "bplist00", 8) == 0)
        plist_from_bin(data, (uint32_t)len, &root);
    else
        plist_from_xml(data, (uint32_t)len, &root);
    if (root == NULL) {
        snprintf(err, err_len, "not a property list");
        return NULL;
    }
    size_t count = 0;
    if (count_nodes(root, 0, &count) != 0) {
        plist_free(root);
        snprintf(err, err_len, "plist too large or too deep");
        return NULL;
    }
    return root;
}

plist_t pl_parse_dict_budget(const char *data, size_t len, const pl_budget *b, char *err,
                             size_t err_len)
{
    plist_t root = pl_parse_budget(data, len, b, err, err_len);
    if (root && plist_get_node_type(root) != PLIST_DICT) {
        plist_free(root);
        snprintf(err, err_len, "plist root is not a dictionary");
        return NULL;
    }
    return root;
}

plist_t pl_parse(const char *data, size_t len, char *err, size_t err_len)
{
    return pl_parse_budget(data, len, &pl_budget_default, err, err_len);
}

plist_t pl_parse_dict(const char *data, size_t len, char *err, size_t err_len)
{
    return pl_parse_dict_budget(data, len, &pl_budget_default, err, err_len);
}

plist_t pl_get_typed(plist_t dict, const char *key, plist_type type)
{
    if (dict == NULL || plist_get_node_type(dict) != PLIST_DICT)
        return NULL;
    plist_t v = plist_dict_get_item(dict, key);
    return v && plist_get_node_type(v) == type ? v : NULL;
}

const char *pl_get_string(plist_t dict, const char *key)
{
    plist_t v = pl_get_typed(dict, key, PLIST_STRING);
    return v ? plist_get_string_ptr(v, NULL) : NULL;
}

const uint8_t *pl_get_data(plist_t dict, const char *key, size_t *len)
{
    plist_t v = pl_get_typed(dict, key, PLIST_DATA);
    if (v == NULL)
        return NULL;
    uint64_t n = 0;
    const char *p = plist_get_data_ptr(v, &n);
    *len = (size_t)n;
    return (const uint8_t *)p;
}

int pl_get_bool(plist_t dict, const char *key)
{
    plist_t v = pl_get_typed(dict, key, PLIST_BOOLEAN);
    if (v == NULL)
        return -1;
    uint8_t b = 0;
    plist_get_bool_val(v, &b);
    return b ? 1 : 0;
}

void pl_set_string(plist_t dict, const char *key, const char *value)
{
    plist_dict_set_item(dict, key, plist_new_string(value));
}

void pl_set_bool(plist_t dict, const char *key, int value)
{
    plist_dict_set_item(dict, key, plist_new_bool(value ? 1 : 0));
}

void pl_set_uint(plist_t dict, const char *key, uint64_t value)
{
    plist_dict_set_item(dict, key, plist_new_uint(value));
}

char *pl_to_xml(plist_t p, size_t *len)
{
    char *xml = NULL;
    uint32_t n = 0;
    plist_to_xml(p, &xml, &n);
    if (xml == NULL)
        abort(); /* libplist only fails here on OOM */
    char *out = xmalloc((size_t)n + 1);
    memcpy(out, xml, n);
    out[n] = '\0';
    plist_to_xml_free(xml);
    if (len)
        *len = n;
    return out;
}

static json_t *to_json(plist_t p);

static int json_item(const char *key, plist_t val, void *obj)
{
    json_object_set_new(obj, key, to_json(val));
    return 0;
}

static json_t *dict_to_json(plist_t p)
{
    json_t *obj = json_object();
    pl_dict_each(p, json_item, obj);
    return obj;
}

static json_t *data_to_json(plist_t p)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    uint64_t n = 0;
    const unsigned char *d = (const unsigned char *)plist_get_data_ptr(p, &n);
    char *out = xmalloc(((size_t)n + 2) / 3 * 4 + 1);
    size_t o = 0;
    for (uint64_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)d[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)d[i + 1] << 8;
        if (i + 2 < n)
            v |= d[i + 2];
        out[o++] = tbl[(v >> 18) & 63];
        out[o++] = tbl[(v >> 12) & 63];
        out[o++] = i + 1 < n ? tbl[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? tbl[v & 63] : '=';
    }
    out[o] = '\0';
    json_t *s = json_string(out);
    free(out);
    return s;
}

static json_t *to_json(plist_t p)
{
    switch (plist_get_node_type(p)) {
    case PLIST_DICT:
        return dict_to_json(p);
    case PLIST_ARRAY: {
        json_t *arr = json_array();
        for (uint32_t i = 0; i < plist_array_get_size(p); i++)
            json_array_append_new(arr, to_json(plist_array_get_item(p, i)));
        return arr;
    }
    case PLIST_STRING:
        return json_string(plist_get_string_ptr(p, NULL));
    case PLIST_BOOLEAN: {
        uint8_t b = 0;
        plist_get_bool_val(p, &b);
        return json_boolean(b);
    }
    case PLIST_UINT: {
        uint64_t v = 0;
        plist_get_uint_val(p, &v);
        return json_integer((json_int_t)v);
    }
    case PLIST_REAL: {
        double v = 0;
        plist_get_real_val(p, &v);
        return json_real(v);
    }
    case PLIST_DATA:
        return data_to_json(p);
    case PLIST_DATE: {
        int32_t sec = 0, usec = 0;
        plist_get_date_val(p, &sec, &usec);
        time_t t = (time_t)sec + 978307200; /* plist dates count from 2001-01-01 */
        struct tm tm;
        char s[32];
        gmtime_r(&t, &tm);
        strftime(s, sizeof(s), "%Y-%m-%dT%H:%M:%SZ", &tm);
        return json_string(s);
    }
    default:
        return json_null();
    }
}

char *pl_to_json(plist_t p)
{
    json_t *j = to_json(p);
    char *s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(j);
    char *out = xstrdup(s ? s : "null");
    free(s);
    return out;
}
