/* Fuzz target: the bounded plist parser and JSON rendering used for every device message. */
#include <stdint.h>
#include <stdlib.h>

#include "plist/pl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[128];
    plist_t p = pl_parse((const char *)data, size, err, sizeof(err));
    if (p) {
        free(pl_to_json(p));
        plist_free(p);
    }
    return 0;
}
