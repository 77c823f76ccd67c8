/*
 * The parse budget: a check of a plist's raw bytes that runs before libplist builds any tree.
 *
 * libplist 2.2 trusts its input's shape: its binary reader recurses once per nesting level and
 * re-parses an object every time it is referenced (a 139-byte file can expand to gigabytes), its
 * XML reader builds whatever nesting it is given (and frees it recursively), and its dictionary
 * insert is quadratic in the keys of one dictionary once they share a hash bucket. So nothing
 * untrusted reaches plist_from_bin / plist_from_xml until this check has measured, in time linear
 * in the input and without building a tree, what the tree would cost:
 *   - size of the input in bytes,
 *   - nesting depth of dictionaries and arrays,
 *   - nodes (every value and every dictionary key; binary references counted as what they
 *     expand to, so an object referenced a thousand times counts a thousand times),
 *   - text: bytes of string, key and data payload once expanded,
 *   - keys of any one dictionary.
 * Anything malformed, ambiguous or outside the subset Apple writes is refused rather than
 * guessed at: for XML that means a strict scanner (comments, CDATA sections, processing
 * instructions, the XML declaration and an external DOCTYPE are understood and skipped exactly as
 * libplist's own parser skips them; a DOCTYPE internal subset, attributes on anything but
 * <plist>, NUL bytes, stray text and trailing elements are refused); for binary, an own reading of
 * the trailer, offset table and object graph (offsets and sizes validated, cycles refused, sets
 * and UIDs refused). docs/PARSERS.md describes the bounds; docs/DECISIONS.md the binary policy.
 *
 * This module does not parse values and never allocates more than the offset table's worth of
 * bookkeeping (about 20 bytes per binary object, nothing for XML). It is thread-safe.
 */
#ifndef ORCHARD_PLIST_BUDGET_H
#define ORCHARD_PLIST_BUDGET_H

#include <stddef.h>
#include <stdint.h>

/* Hard ceilings: a budget may be tighter, never looser (the checker's stack is sized by these). */
#define PL_MAX_DEPTH 32
#define PL_MAX_NODES 200000

typedef struct pl_budget {
    size_t max_bytes;   /* input size */
    unsigned max_depth; /* nested dictionaries/arrays, 1..PL_MAX_DEPTH */
    size_t max_nodes;   /* values + dictionary keys, references expanded; <= PL_MAX_NODES */
    size_t max_text;    /* string, key and data bytes once expanded */
    size_t max_keys;    /* keys of one dictionary (libplist inserts in O(keys) each) */
    int allow_binary;   /* 0: refuse bplist00 outright */
} pl_budget;

/*
 * Admin uploads (profiles are at most 1 MiB), command bodies and stored device results: XML or
 * binary, 8 MiB, depth 32, 200,000 nodes, 16 MiB of text, 1,024 keys per dictionary.
 */
extern const pl_budget pl_budget_default;
/*
 * What devices send before they are authenticated (check-in, connect, enrollment MachineInfo):
 * XML only (every capture is XML, PROTOCOL.md 8.5), 100,000 nodes, 512 keys per dictionary;
 * otherwise as pl_budget_default. The largest real report seen (ProfileList) has under 100
 * nodes and no dictionary over 34 keys; at these limits libplist's worst case (keys chosen to
 * share a hash bucket) parses in about 0.2 s, 10 MB.
 */
extern const pl_budget pl_budget_device;

/* What a plist would cost, as measured by pl_budget_check (for tests and logs). */
typedef struct pl_usage {
    size_t bytes;
    unsigned depth;
    size_t nodes;
    size_t text;
    size_t max_keys; /* the most keys of any one dictionary */
} pl_usage;

enum pl_budget_error {
    PL_BUDGET_OK = 0,
    PL_BUDGET_MALFORMED = -1, /* not a plist Orchard accepts (reason in err) */
    PL_BUDGET_TOO_BIG = -2,   /* input bytes */
    PL_BUDGET_TOO_DEEP = -3,  /* nesting */
    PL_BUDGET_TOO_MANY = -4,  /* nodes, references expanded */
    PL_BUDGET_TOO_MUCH_TEXT = -5,
    PL_BUDGET_TOO_WIDE = -6, /* keys of one dictionary */
    PL_BUDGET_CYCLE = -7,    /* a binary object that contains itself */
    PL_BUDGET_BINARY = -8,   /* binary refused by this budget */
};

/*
 * Checks data against budget b (NULL: pl_budget_default) without building a tree. Returns
 * PL_BUDGET_OK, or a negative pl_budget_error with a one-line reason in err (safe to log: it
 * names offsets and counts, never content). usage (optional) receives the measured cost; on a
 * refusal it holds what had been counted when the check stopped.
 */
int pl_budget_check(const char *data, size_t len, const pl_budget *b, pl_usage *usage, char *err,
                    size_t err_len);

#endif
