/*
 * Set-wise push outbox updates, shared by the backends (sqlite/, pgsql/). Instead of a few
 * statements per row, storage_push_done runs a few statements per batch: each kind of outcome
 * gets one JSON array of its rows, bound once and expanded in SQL (SQLite json_each, PostgreSQL
 * json_array_elements), so the per-row cost is the index work alone. (SQLite still deletes
 * outbox rows with one prepared DELETE per row, which measured cheaper there: see sqlite.c.)
 *
 * Outcomes of different enrollments touch disjoint rows (the enrollment's outbox row and its
 * enrollments row), so they commute and a batch of distinct ids can be applied one kind at a
 * time, in any order. A batch naming an id twice is applied in runs of distinct ids, in order,
 * which gives the result of applying the rows one by one.
 */
#ifndef ORCHARD_STORAGE_PUSH_BATCH_H
#define ORCHARD_STORAGE_PUSH_BATCH_H

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "storage/storage.h"

/* One run of push_done outcomes, as JSON arrays (a kind with no rows is left empty, len 0). */
typedef struct st_push_sets {
    buf sent;  /* SENT: ["id", ...] */
    buf retry; /* RETRY: [["id", due_at, attempts], ...] */
    buf dead;  /* DEAD with a token: [["id", "token"], ...] (mark that token dead) */
    buf del;   /* DEAD, DROP and unknown outcomes: ["id", ...] (delete the owned row) */
    size_t nsent, nretry, ndead, ndel;
} st_push_sets;

void st_push_sets_init(st_push_sets *s);
void st_push_sets_cleanup(st_push_sets *s);
/* Fills s (emptied first) from the longest prefix of r[0..n) whose enrollment ids are distinct
 * and returns its length: n when no id repeats, at least 1 when n > 0. */
size_t st_push_sets_fill(st_push_sets *s, const st_push_result *r, size_t n);

/* Appends v as a JSON string (quotes, backslashes and control characters escaped). */
void st_json_string(buf *b, const char *v);
/* Appends v as a JSON number. */
void st_json_int(buf *b, int64_t v);

#endif
