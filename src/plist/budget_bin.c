/*
 * The binary half of the parse budget: reads a bplist00 file's trailer, offset table and object
 * headers itself, then walks the object graph from the top object and measures the tree libplist
 * would build from it, references expanded.
 *
 * Format (Apple's CFBinaryPList.c, as libplist 2.2's bplist.c reads it): "bplist00", the
 * objects, the offset table (one big-endian offset of offset_size bytes per object), and a
 * 32-byte trailer: 6 unused bytes, offset_size, ref_size, then big-endian 64-bit object count,
 * top object index and offset-table offset. Containers hold object references (ref_size bytes).
 *
 * The walk is an explicit stack no deeper than the budget's depth; each container is expanded
 * once and its cost (nodes, text, height) memoised, so the check is linear in the file even when
 * the tree it describes is exponential. An object met again while it is still on the stack is a
 * cycle. libplist 2.2 re-parses shared objects, so their cost is added once per reference.
 *
 * Stricter than libplist on purpose (Apple never writes these): offset and reference sizes
 * above 8, version other than 00, object offsets inside the header or past the table,
 * objects that run into the table, null/fill objects, UIDs and sets (NSKeyedArchiver), size
 * markers other than 1/2/4/8-byte integers, dictionary keys that are not strings, and UTF-16
 * strings containing U+0000 (libplist 2.2 then aborts on an assertion: found by fuzz_bplist).
 */
#include <stdlib.h>
#include <string.h>

#include "plist/budget_int.h"

#define BP_HEADER 8
#define BP_TRAILER 32

enum { BP_SCALAR, BP_STRING, BP_ARRAY, BP_DICT };
enum { BP_NEW, BP_OPEN, BP_DONE }; /* walk state of a container */

struct bp_obj {
    uint32_t content; /* offset of the payload or of the references */
    uint32_t count;   /* references (array) or entries (dictionary) */
    uint32_t nodes;   /* container: memoised expanded nodes, itself included */
    uint32_t text;    /* scalar: own text bytes; container: memoised expanded text */
    uint8_t kind;
    uint8_t state;
    uint8_t height; /* container: levels of nesting it spans, itself included */
};

struct bp_file {
    const uint8_t *d;
    uint32_t table; /* offset-table offset: objects end before it */
    uint32_t nobj;
    unsigned ref_size;
    struct bp_obj *obj;
};

/* Big-endian unsigned of n (1..8) bytes. */
static uint64_t be_uint(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

static int trailer(struct pl_meter *m, struct bp_file *f, const uint8_t *d, size_t len,
                   uint64_t *top)
{
    if (len < BP_HEADER + 1 + 1 + BP_TRAILER)
        return pl_refuse(m, PL_BUDGET_MALFORMED, "binary plist too short");
    if (memcmp(d, "bplist00", BP_HEADER) != 0)
        return pl_refuse(m, PL_BUDGET_MALFORMED, "unsupported binary plist version");
    const uint8_t *t = d + len - BP_TRAILER;
    unsigned offset_size = t[6];
    f->ref_size = t[7];
    uint64_t nobj = be_uint(t + 8, 8), table = be_uint(t + 24, 8);
    *top = be_uint(t + 16, 8);
    if (offset_size < 1 || offset_size > 8 || f->ref_size < 1 || f->ref_size > 8)
        return pl_refuse(m, PL_BUDGET_MALFORMED, "binary plist: bad offset or reference size");
    if (nobj == 0 || *top >= nobj)
        return pl_refuse(m, PL_BUDGET_MALFORMED, "binary plist: bad object count or top object");
    if (nobj > m->b->max_nodes)
        return pl_refuse(m, PL_BUDGET_TOO_MANY, "binary plist has more than %zu objects",
                         m->b->max_nodes);
    /* The table sits between the objects (at least one byte) and the trailer. */
    size_t table_end = len - BP_TRAILER;
    if (table < BP_HEADER + 1 || table > table_end || nobj > (table_end - table) / offset_size)
        return pl_refuse(m, PL_BUDGET_MALFORMED, "binary plist: offset table out of range");
    f->d = d;
    f->table = (uint32_t)table;
    f->nobj = (uint32_t)nobj;
    return 0;
}

/* Length of a data/string/container object: the low nibble, or a following integer marker. */
static int object_count(const struct bp_file *f, unsigned info, uint32_t *p, uint64_t *count)
{
    if (info != 0xF) {
        *count = info;
        return 0;
    }
    if (*p >= f->table)
        return -1;
    unsigned marker = f->d[*p];
    if ((marker >> 4) != 0x1 || (marker & 0xF) > 3)
        return -1;
    unsigned n = 1u << (marker & 0xF);
    if ((uint64_t)*p + 1 + n > f->table)
        return -1;
    *count = be_uint(f->d + *p + 1, n);
    *p += 1 + n;
    return 0;
}

/* Reads the header of the object at offset o into ob; refuses what libplist must not see. */
static int object_header(struct pl_meter *m, const struct bp_file *f, uint32_t idx, uint32_t o,
                         struct bp_obj *ob)
{
    unsigned type = f->d[o] >> 4, info = f->d[o] & 0xF;
    uint32_t p = o + 1;
    uint64_t count = 0, unit = 0, fixed = 0;
    ob->kind = BP_SCALAR;
    switch (type) {
    case 0x0: /* only true and false: libplist fails on null and fill */
        if (info != 0x8 && info != 0x9)
            return pl_refuse(m, PL_BUDGET_MALFORMED, "binary plist: null object %u", idx);
        break;
    case 0x1: /* integer of 1, 2, 4, 8 or 16 bytes */
        fixed = info <= 3 ? 1u << info : info == 4 ? 16 : 0;
        break;
    case 0x2: /* real: float or double */
        fixed = info == 2 || info == 3 ? 1u << info : 0;
        break;
    case 0x3: /* date: a double */
        fixed = info == 3 ? 8 : 0;
        break;
    case 0x4: /* data */
    case 0x5: /* ASCII string */
    case 0x6: /* UTF-16BE string */
    case 0xA: /* array */
    case 0xD: /* dictionary: count key references, then count value references */
        if (object_count(f, info, &p, &count) != 0)
            return pl_refuse(m, PL_BUDGET_MALFORMED, "binary plist: bad length of object %u", idx);
        unit = type == 0x4 || type == 0x5 ? 1
               : type == 0x6              ? 2
               : type == 0xA              ? f->ref_size
                                          : 2u * f->ref_size;
        break;
    default: /* UID, set and the unassigned markers */
        return pl_refuse(m, PL_BUDGET_MALFORMED, "binary plist: unsupported object type 0x%x",
                         type);
    }
    if (type >= 0x1 && type <= 0x3) {
        if (fixed == 0 || (uint64_t)p + fixed > f->table)
            return pl_refuse(m, PL_BUDGET_MALFORMED, "binary plist: bad scalar object %u", idx);
        return 0;
    }
    if (unit == 0)
        return 0; /* true / false */
    if (count > (f->table - p) / unit)
        return pl_refuse(m, PL_BUDGET_MALFORMED, "binary plist: object %u runs past its end", idx);
    ob->content = p;
    ob->count = (uint32_t)count;
    if (type == 0xA || type == 0xD) {
        ob->kind = type == 0xA ? BP_ARRAY : BP_DICT;
        if (type == 0xD && count > m->b->max_keys)
            return pl_refuse(m, PL_BUDGET_TOO_WIDE, "plist dictionary with more than %zu keys",
                             m->b->max_keys);
        return 0;
    }
    /*
     * A UTF-16 string with U+0000 becomes a C string whose strlen is shorter than the length
     * libplist records, and libplist 2.2 asserts they agree whenever it hands out a key
     * (plist_dict_next_item): one such key would abort the process. (ASCII strings are cut at
     * a NUL by libplist itself, so they stay consistent.)
     */
    if (type == 0x6) {
        for (uint64_t i = 0; i < count; i++) {
            if (f->d[p + 2 * i] == 0 && f->d[p + 2 * i + 1] == 0)
                return pl_refuse(m, PL_BUDGET_MALFORMED, "binary plist: NUL in string %u", idx);
        }
    }
    ob->kind = type == 0x4 ? BP_SCALAR : BP_STRING;
    /* libplist turns UTF-16 into UTF-8: up to 3 bytes per unit */
    uint64_t text = type == 0x6 ? 3 * count : count;
    if (text > m->b->max_text)
        return pl_refuse(m, PL_BUDGET_TOO_MUCH_TEXT, "plist has more than %zu bytes of text",
                         m->b->max_text);
    ob->text = (uint32_t)text;
    return 0;
}

/* Every offset in the table points at a well-formed object header inside the object area. */
static int read_objects(struct pl_meter *m, struct bp_file *f, unsigned offset_size)
{
    const uint8_t *t = f->d + f->table;
    for (uint32_t i = 0; i < f->nobj; i++) {
        uint64_t o = be_uint(t + (size_t)i * offset_size, offset_size);
        if (o < BP_HEADER || o >= f->table)
            return pl_refuse(m, PL_BUDGET_MALFORMED,
                             "binary plist: offset of object %u out of range", i);
        int rc = object_header(m, f, i, (uint32_t)o, &f->obj[i]);
        if (rc != 0)
            return rc;
    }
    return 0;
}

struct bp_frame {
    uint32_t idx;
    uint32_t next; /* next reference to follow */
    uint64_t nodes, text;
    unsigned height; /* tallest child container so far */
};

/* Adds a finished child (scalar or memoised container) to the frame; refuses past the budget. */
static int frame_add(struct pl_meter *m, struct bp_frame *fr, const struct bp_obj *c)
{
    int container = c->kind == BP_ARRAY || c->kind == BP_DICT;
    fr->nodes += container ? c->nodes : 1;
    fr->text += c->text;
    if (container && c->height > fr->height)
        fr->height = c->height;
    /* A part of the tree already over budget means the whole is; both sums stay far from wrap. */
    if (fr->nodes + 1 > m->b->max_nodes)
        return pl_refuse(m, PL_BUDGET_TOO_MANY,
                         "plist expands to more than %zu values (binary references)",
                         m->b->max_nodes);
    if (fr->text > m->b->max_text)
        return pl_refuse(m, PL_BUDGET_TOO_MUCH_TEXT,
                         "plist expands to more than %zu bytes of text (binary references)",
                         m->b->max_text);
    return 0;
}

/* Follows reference j of the container on top of the stack. */
static int follow(struct pl_meter *m, struct bp_file *f, struct bp_frame *stack, unsigned *sp)
{
    struct bp_frame *fr = &stack[*sp - 1];
    const struct bp_obj *ob = &f->obj[fr->idx];
    uint32_t j = fr->next++;
    uint64_t c = be_uint(f->d + ob->content + (size_t)j * f->ref_size, f->ref_size);
    if (c >= f->nobj)
        return pl_refuse(m, PL_BUDGET_MALFORMED, "binary plist: reference to missing object");
    struct bp_obj *co = &f->obj[c];
    if (ob->kind == BP_DICT && j < ob->count && co->kind != BP_STRING)
        return pl_refuse(m, PL_BUDGET_MALFORMED, "binary plist: dictionary key is not a string");
    if (co->kind == BP_SCALAR || co->kind == BP_STRING || co->state == BP_DONE) {
        if ((co->kind == BP_ARRAY || co->kind == BP_DICT) && *sp + co->height > m->b->max_depth)
            return pl_refuse(m, PL_BUDGET_TOO_DEEP, "plist nested deeper than %u", m->b->max_depth);
        return frame_add(m, fr, co);
    }
    if (co->state == BP_OPEN)
        return pl_refuse(m, PL_BUDGET_CYCLE, "binary plist: object %u contains itself",
                         (unsigned)c);
    if (*sp + 1 > m->b->max_depth)
        return pl_refuse(m, PL_BUDGET_TOO_DEEP, "plist nested deeper than %u", m->b->max_depth);
    co->state = BP_OPEN;
    stack[(*sp)++] = (struct bp_frame){.idx = (uint32_t)c};
    return 0;
}

/* Depth-first walk from the top object; fills m->u with the totals of the whole tree. */
static int walk(struct pl_meter *m, struct bp_file *f, uint32_t top)
{
    struct bp_frame stack[PL_MAX_DEPTH];
    unsigned sp = 0;
    struct bp_obj *root = &f->obj[top];
    if (root->kind == BP_SCALAR || root->kind == BP_STRING) {
        m->u->nodes = 1;
        m->u->text = root->text;
        return 0;
    }
    root->state = BP_OPEN;
    stack[sp++] = (struct bp_frame){.idx = top};
    while (sp > 0) {
        struct bp_frame *fr = &stack[sp - 1];
        struct bp_obj *ob = &f->obj[fr->idx];
        uint32_t refs = ob->kind == BP_DICT ? 2 * ob->count : ob->count;
        if (fr->next < refs) {
            int rc = follow(m, f, stack, &sp);
            if (rc != 0)
                return rc;
            continue;
        }
        /* All children measured: memoise this container and hand it to its parent. */
        ob->nodes = (uint32_t)(fr->nodes + 1);
        ob->text = (uint32_t)fr->text;
        ob->height = (uint8_t)(fr->height + 1);
        ob->state = BP_DONE;
        if (ob->kind == BP_DICT && ob->count > m->u->max_keys)
            m->u->max_keys = ob->count;
        if (--sp > 0) {
            int rc = frame_add(m, &stack[sp - 1], ob);
            if (rc != 0)
                return rc;
        }
    }
    m->u->nodes = root->nodes;
    m->u->text = root->text;
    m->u->depth = root->height;
    return 0;
}

int pl_budget_check_bin(struct pl_meter *m, const char *data, size_t len)
{
    struct bp_file f = {0};
    uint64_t top = 0;
    const uint8_t *d = (const uint8_t *)data;
    int rc = trailer(m, &f, d, len, &top);
    if (rc != 0)
        return rc;
    /* nobj <= max_nodes (200,000): at most ~4 MB of bookkeeping, freed before returning */
    f.obj = calloc(f.nobj, sizeof(*f.obj));
    if (f.obj == NULL)
        return pl_refuse(m, PL_BUDGET_TOO_MANY, "out of memory checking a binary plist");
    rc = read_objects(m, &f, d[len - BP_TRAILER + 6]);
    if (rc == 0)
        rc = walk(m, &f, (uint32_t)top);
    free(f.obj);
    return rc;
}
