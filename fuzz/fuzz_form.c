/* Fuzz target: form and URL decoding used by the sign-in page. */
#include <stdint.h>
#include <stdlib.h>

#include "core/url.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const fields[] = {"csrf", "user-identifier", "password"};
    for (size_t i = 0; i < 3; i++)
        free(url_form_field((const char *)data, size, fields[i]));
    free(url_decode((const char *)data, size, 1));
    return 0;
}
