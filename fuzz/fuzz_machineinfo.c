/* Fuzz target: the enrollment body (CMS SignedData with attached content, BER). */
#include <stdint.h>
#include <stdlib.h>

#include "crypto/cms.h"
#include "crypto/pki.h"
#include "plist/pl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready)
        ready = crypto_init() == 0;
    uint8_t *content = NULL;
    size_t len = 0;
    if (cms_attached_content(data, size, &content, &len) == 0) {
        char err[64];
        plist_t p = pl_parse((const char *)content, len, err, sizeof(err));
        if (p)
            plist_free(p);
        free(content);
    }
    return 0;
}
