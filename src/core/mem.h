/*
 * Allocation wrappers that abort on out-of-memory. Orchard never tries to recover from
 * OOM (see STYLE.md); it caps every size that comes from input instead.
 */
#ifndef ORCHARD_CORE_MEM_H
#define ORCHARD_CORE_MEM_H

#include <stddef.h>

void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t n);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
/* Formats into a newly allocated string; aborts on OOM. */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
