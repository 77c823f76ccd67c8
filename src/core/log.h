/*
 * Logging: one line per event, `key=value` fields, to stderr. The macros check the level
 * before formatting (Redis serverLog). Never pass secrets: log log_short_hash() of them.
 * The logger is the only mutable global in Orchard; it is thread-safe (one write(2) per line).
 */
#ifndef ORCHARD_CORE_LOG_H
#define ORCHARD_CORE_LOG_H

#include <stddef.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3 };

extern enum log_level log_min_level;

void log_set_level(enum log_level level);
/* Parses "debug|info|warn|error"; returns 0 or -1. */
int log_parse_level(const char *s, enum log_level *out);
void log_write(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Writes an 8-hex-digit digest of secret into out (>= 9 bytes), for correlating log lines. */
void log_short_hash(const void *secret, size_t len, char out[9]);

#define log_at(level, ...)                                                                         \
    do {                                                                                           \
        if ((level) >= log_min_level)                                                              \
            log_write((level), __VA_ARGS__);                                                       \
    } while (0)
#define log_debug(...) log_at(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_at(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_at(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_at(LOG_ERROR, __VA_ARGS__)

#endif
