/*
 * Orchard's configuration: one table of keys (name, type, default, bounds, help), in the
 * manner of Redis' src/config.c. Values come from DIR/orchard.conf (`key = value` lines),
 * overridden by ORCHARD_<KEY> environment variables, overridden by command-line flags.
 * A config object is immutable once loaded and may be read from any thread.
 */
#ifndef ORCHARD_CORE_CONFIG_H
#define ORCHARD_CORE_CONFIG_H

#include <stddef.h>
#include <stdint.h>

enum config_type {
    CONFIG_STRING,
    CONFIG_SECRET, /* a string redacted by `config show` */
    CONFIG_INT,
    CONFIG_BOOL,
    CONFIG_DURATION, /* seconds; written as 30, 30s, 15m, 72h, 30d; 0 = off */
    CONFIG_ENUM      /* one of the words in `choices` (space separated) */
};

struct config_key {
    const char *name;
    enum config_type type;
    const char *default_value; /* textual, parsed like input; "" = empty / 0 */
    int64_t min, max;          /* bounds for INT and DURATION */
    const char *choices;       /* ENUM */
    const char *help;
};

typedef struct config config;

/* The table, terminated by a NULL name. */
extern const struct config_key config_keys[];

/* Creates a config holding every key's default. data_dir is kept for relative paths. */
config *config_new(const char *data_dir);
void config_free(config *c);

/*
 * Sets a key from text, validating type and bounds. On error returns -1 and writes a message
 * naming the key into err ("listen: ...").
 */
int config_set(config *c, const char *name, const char *value, char *err, size_t err_len);
/* Reads `key = value` lines (# comments). Missing file is not an error if optional. */
int config_load_file(config *c, const char *path, int optional, char *err, size_t err_len);
/* Applies every ORCHARD_<KEY> variable from the environment. */
int config_load_env(config *c, char *err, size_t err_len);
/* Convenience: defaults < DIR/orchard.conf < environment. NULL + message on error. */
config *config_load(const char *data_dir, char *err, size_t err_len);

const char *config_get(const config *c, const char *name); /* never NULL for known keys */
int64_t config_get_int(const config *c, const char *name); /* INT, BOOL, DURATION */
/* Returns a path: absolute as is, otherwise resolved against the data directory (malloc'd). */
char *config_get_path(const config *c, const char *name);
const char *config_data_dir(const config *c);

/* Parses a duration like "72h"; returns 0 or -1. */
int config_parse_duration(const char *s, int64_t *out);
/* Writes every key as `key = value` (secrets as "(redacted)" when set) to a malloc'd string. */
char *config_dump(const config *c);

#endif
