/*
 * A growable byte buffer (curl's dynbuf): always NUL-terminated so text can be used as a
 * C string, with an optional hard cap so input-driven growth is bounded.
 */
#ifndef ORCHARD_CORE_BUF_H
#define ORCHARD_CORE_BUF_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

typedef struct buf {
    char *data; /* NUL-terminated; NULL until the first append */
    size_t len;
    size_t cap;
    size_t limit; /* 0 = unlimited; appends past it fail with -1 */
} buf;

void buf_init(buf *b, size_t limit);
void buf_cleanup(buf *b);
/* Appends n bytes; returns 0, or -1 if the limit would be exceeded (nothing appended). */
int buf_append(buf *b, const void *data, size_t n);
int buf_puts(buf *b, const char *s);
int buf_printf(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int buf_vprintf(buf *b, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
/* Appends s with the characters special in HTML (& < > " ') escaped. */
int buf_put_html(buf *b, const char *s);
void buf_reset(buf *b);
/* Hands the data to the caller (who frees it) and resets the buffer. */
char *buf_steal(buf *b, size_t *len);

#endif
