/* Fuzz target: Mdm-Signature verification (detached CMS) over a fixed body. */
#include <stdint.h>
#include <stdlib.h>

#include "crypto/cms.h"
#include "crypto/pki.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready)
        ready = crypto_init() == 0;
    static const uint8_t body[] = "<plist><dict><key>Status</key><string>Idle</string></dict>"
                                  "</plist>";
    crypto_cert *signer = NULL;
    if (cms_verify_detached(data, size, body, sizeof(body) - 1, &signer) == 0)
        crypto_cert_free(signer);
    return 0;
}
