/* Helpers shared by the subcommands: option parsing conventions and opening the store. */
#ifndef ORCHARD_CLI_COMMON_H
#define ORCHARD_CLI_COMMON_H

#include "core/config.h"
#include "storage/storage.h"

/* Loads DIR's configuration and opens its store; prints the error and returns -1 on failure. */
int cli_open(const char *data_dir, config **cfg, storage **st);
/* The storage DSN with a relative sqlite path resolved against the data directory. */
char *cli_storage_dsn(const config *cfg);
/* Reads one line (without the newline) from stdin, up to max bytes; NULL on EOF/too long. */
char *cli_read_stdin_line(size_t max);

#endif
