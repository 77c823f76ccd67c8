/*
 * The PostgreSQL backend's entry point, for storage.c's backend table only: everything else
 * reaches the backend through the ops table. pgsql.c is the one file that includes libpq-fe.h.
 */
#ifndef ORCHARD_STORAGE_PGSQL_H
#define ORCHARD_STORAGE_PGSQL_H

#include "storage/storage_impl.h"

/*
 * Connects to the database named by `dsn` ("postgres://..." or "postgresql://...", a libpq
 * connection URI, passed whole; the scheme may be in any case) and applies pending migrations
 * under an advisory lock, so several instances may open the same database at once. `location`
 * is unused. Error messages never contain the DSN (it may hold a password).
 */
storage *pgsql_storage_open(const char *dsn, const char *location, char *err, size_t err_len);

/*
 * Test hook (tests/unit/storage/ only, like the hooks of storage_impl.h): runs `sql` (one or
 * more statements, no parameters, outside any transaction) on the calling thread's connection
 * of st, which must be a PostgreSQL store. If out is not NULL it receives the first column of
 * the first row of the last statement as an integer (0 if there is none). Returns 0, or
 * ST_ERROR (logged).
 */
int pgsql_exec_for_test(storage *st, const char *sql, int64_t *out);

#endif
