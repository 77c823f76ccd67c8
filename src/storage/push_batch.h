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

/*
 * One run of push_done outcomes from one source (the outbox, or one bulk push), as JSON arrays
 * (a kind with no rows is left empty, len 0).
 *
 * Outbox rows: SENT in sent; RETRY and UNSENT (due now) in retry (released with these values);
 * DEAD with a token in dead; DEAD, DROP and unknown outcomes in del (the owned row deleted).
 * Bulk rows: SENT in sent; RETRY in retry (an outbox row to insert); DEAD with a token in dead;
 * DROP nothing; `last` is the greatest id (byte order, as the backends order enrollment ids)
 * with an outcome other than UNSENT, and `unsent` says whether any row was given back.
 */
typedef struct st_push_sets {
    int64_t bulk;     /* the source: 0 the outbox, else the bulk push's id */
    buf sent;         /* ["id", ...] */
    buf retry;        /* [["id", due_at, attempts], ...] */
    buf dead;         /* [["id", "token"], ...] (mark that token dead) */
    buf del;          /* ["id", ...] (outbox only) */
    const char *last; /* bulk only: borrowed from the results; NULL if none */
    int unsent;       /* bulk only */
    size_t nsent, nretry, ndead, ndel;
} st_push_sets;

void st_push_sets_init(st_push_sets *s);
void st_push_sets_cleanup(st_push_sets *s);
/* Fills s (emptied first) from the longest prefix of r[0..n) from one source whose enrollment
 * ids are distinct and returns its length: at least 1 when n > 0. `now` is the due time of
 * outbox rows given back UNSENT. */
size_t st_push_sets_fill(st_push_sets *s, const st_push_result *r, size_t n, int64_t now);

/* Appends v as a JSON string (quotes, backslashes and control characters escaped). */
void st_json_string(buf *b, const char *v);
/* Appends v as a JSON number. */
void st_json_int(buf *b, int64_t v);

#endif
