/*
 * The SQLite backend's entry point, for storage.c's backend table only: everything else
 * reaches the backend through the ops table. sqlite.c is the one file that includes sqlite3.h.
 */
#ifndef ORCHARD_STORAGE_SQLITE_H
#define ORCHARD_STORAGE_SQLITE_H

#include "storage/storage_impl.h"

/*
 * Opens (creating it with mode 0600 if needed) the database file at `location`, switches it to
 * WAL and applies pending migrations. `dsn` is unused. ":memory:" is refused: every thread gets
 * its own connection, and in-memory databases are private to one connection.
 */
storage *sqlite_storage_open(const char *dsn, const char *location, char *err, size_t err_len);

/* Test hook: checkpoints the backend's checkpointer thread has run that copied pages (sqlite.c,
 * "Checkpoints"). */
long sqlite_storage_checkpoints(storage *st);

#endif
