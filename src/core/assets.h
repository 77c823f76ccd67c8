/*
 * Files from web/ compiled into the binary by tools/embed.py (templates, CSS). The table is
 * generated at build time; lookups are by path relative to web/.
 */
#ifndef ORCHARD_CORE_ASSETS_H
#define ORCHARD_CORE_ASSETS_H

#include <stddef.h>

struct asset {
    const char *name;
    const char *data; /* NUL-terminated */
    size_t size;
};

extern const struct asset assets[];

/* Returns the asset or NULL. */
const struct asset *asset_find(const char *name);

#endif
