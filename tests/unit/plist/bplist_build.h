/*
 * A tiny binary-plist writer for tests: objects are appended one by one (each gets the next
 * index), references are written with the chosen ref_size, and bb_finish appends the offset
 * table and trailer. Tests tamper with the result to make malformed files.
 */
#ifndef ORCHARD_TEST_BPLIST_BUILD_H
#define ORCHARD_TEST_BPLIST_BUILD_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct bb {
    uint8_t *buf;
    size_t len, cap;
    uint64_t *off;
    size_t n, ncap;
    unsigned ref_size;
};

static inline void bb_bytes(struct bb *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 64;
        b->buf = realloc(b->buf, b->cap);
    }
    memcpy(b->buf + b->len, p, n);
    b->len += n;
}

static inline void bb_byte(struct bb *b, uint8_t v)
{
    bb_bytes(b, &v, 1);
}

static inline void bb_be(struct bb *b, uint64_t v, unsigned n)
{
    for (unsigned i = n; i > 0; i--)
        bb_byte(b, (uint8_t)(v >> (8 * (i - 1))));
}

static inline void bb_init(struct bb *b, unsigned ref_size)
{
    memset(b, 0, sizeof(*b));
    b->ref_size = ref_size;
    bb_bytes(b, "bplist00", 8);
}

/* Starts the next object; returns its index. */
static inline uint64_t bb_begin(struct bb *b)
{
    if (b->n == b->ncap) {
        b->ncap = b->ncap * 2 + 16;
        b->off = realloc(b->off, b->ncap * sizeof(*b->off));
    }
    b->off[b->n] = b->len;
    return b->n++;
}

/* A marker of type (high nibble) with a count: in the low nibble or as a following integer. */
static inline void bb_marker(struct bb *b, uint8_t type, uint64_t count)
{
    if (count < 15) {
        bb_byte(b, (uint8_t)(type | count));
    } else {
        bb_byte(b, (uint8_t)(type | 0xF));
        unsigned lg = count < 0x100 ? 0 : count < 0x10000 ? 1 : count < 0x100000000ull ? 2 : 3;
        bb_byte(b, (uint8_t)(0x10 | lg));
        bb_be(b, count, 1u << lg);
    }
}

static inline uint64_t bb_array(struct bb *b, const uint64_t *refs, size_t n)
{
    uint64_t i = bb_begin(b);
    bb_marker(b, 0xA0, n);
    for (size_t j = 0; j < n; j++)
        bb_be(b, refs[j], b->ref_size);
    return i;
}

/* A dictionary of n entries: keys[j] -> vals[j]. */
static inline uint64_t bb_dict(struct bb *b, const uint64_t *keys, const uint64_t *vals, size_t n)
{
    uint64_t i = bb_begin(b);
    bb_marker(b, 0xD0, n);
    for (size_t j = 0; j < n; j++)
        bb_be(b, keys[j], b->ref_size);
    for (size_t j = 0; j < n; j++)
        bb_be(b, vals[j], b->ref_size);
    return i;
}

static inline uint64_t bb_string(struct bb *b, const char *s)
{
    uint64_t i = bb_begin(b);
    bb_marker(b, 0x50, strlen(s));
    bb_bytes(b, s, strlen(s));
    return i;
}

static inline uint64_t bb_true(struct bb *b)
{
    uint64_t i = bb_begin(b);
    bb_byte(b, 0x09);
    return i;
}

/* Appends the offset table and trailer; returns the file (caller frees) and frees the rest. */
static inline char *bb_finish(struct bb *b, unsigned offset_size, uint64_t top, size_t *len)
{
    uint64_t table = b->len;
    for (size_t i = 0; i < b->n; i++)
        bb_be(b, b->off[i], offset_size);
    uint8_t zero[6] = {0};
    bb_bytes(b, zero, 6);
    bb_byte(b, (uint8_t)offset_size);
    bb_byte(b, (uint8_t)b->ref_size);
    bb_be(b, b->n, 8);
    bb_be(b, top, 8);
    bb_be(b, table, 8);
    free(b->off);
    *len = b->len;
    return (char *)b->buf;
}

/* Overwrites the big-endian field of n bytes at offset at. */
static inline void bb_patch(char *file, size_t at, uint64_t v, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        file[at + i] = (char)(uint8_t)(v >> (8 * (n - 1 - i)));
}

/* Trailer fields, as offsets from the end of the file. */
#define BB_OFFSET_SIZE 26
#define BB_REF_SIZE 25
#define BB_NUM_OBJECTS 24
#define BB_TOP 16
#define BB_TABLE 8

#endif
