/*
 * Thin, bounded helpers over libplist for untrusted input: parsing with size, depth and node
 * caps; typed getters that return borrowed pointers (NULL when absent or of another type);
 * XML and JSON rendering. The `pl_` prefix keeps clear of libplist's own `plist_` names.
 */
#ifndef ORCHARD_PLIST_PL_H
#define ORCHARD_PLIST_PL_H

#include <plist/plist.h>
#include <stddef.h>
#include <stdint.h>

#include "plist/budget.h"

/*
 * Parses an XML or binary plist within budget b (see plist/budget.h): the raw bytes are checked
 * first (pl_budget_check), and libplist only sees input that passed. Returns the root (caller
 * frees with plist_free) or NULL with a short reason in err (safe to log): the budget's refusal,
 * or "not a property list" when libplist itself refused. b NULL means pl_budget_default.
 */
plist_t pl_parse_budget(const char *data, size_t len, const pl_budget *b, char *err,
                        size_t err_len);
/* Like pl_parse_budget, but the root must be a dictionary. */
plist_t pl_parse_dict_budget(const char *data, size_t len, const pl_budget *b, char *err,
                             size_t err_len);
/* pl_parse_budget / pl_parse_dict_budget with pl_budget_default (admin and stored input). */
plist_t pl_parse(const char *data, size_t len, char *err, size_t err_len);
plist_t pl_parse_dict(const char *data, size_t len, char *err, size_t err_len);

/*
 * Calls fn(key, value, ctx) for each item of dict in order; stops at the first non-zero
 * return and returns it (0 when every call returned 0, or dict is not a dictionary). key and
 * value are borrowed for the call only.
 */
int pl_dict_each(plist_t dict, int (*fn)(const char *key, plist_t value, void *ctx), void *ctx);

/* Borrowed string value of dict[key], or NULL. */
const char *pl_get_string(plist_t dict, const char *key);
/* Borrowed bytes of a <data> value, or NULL. */
const uint8_t *pl_get_data(plist_t dict, const char *key, size_t *len);
/* 1/0 for a boolean value; -1 if absent or not a boolean. */
int pl_get_bool(plist_t dict, const char *key);
/* The node of dict[key] if it has the given type, else NULL. */
plist_t pl_get_typed(plist_t dict, const char *key, plist_type type);

/* Sets dict[key] to a new string / bool / integer / data node (replaces any old value). */
void pl_set_string(plist_t dict, const char *key, const char *value);
void pl_set_bool(plist_t dict, const char *key, int value);
void pl_set_uint(plist_t dict, const char *key, uint64_t value);

/* XML rendering into a malloc'd NUL-terminated string. */
char *pl_to_xml(plist_t p, size_t *len);
/*
 * JSON rendering (malloc'd): dict -> object, array -> array, data -> base64 string, date ->
 * ISO 8601 string, integers as numbers. For the admin API's view of device reports.
 */
char *pl_to_json(plist_t p);

#endif
