/* Fuzz target: admin command bodies (JSON or plist) and the User Enrollment validator. */
#include <stdint.h>
#include <stdlib.h>

#include "mdm/command.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    struct mdm_command c;
    for (int os = UE_OS_IOS; os <= UE_OS_MACOS; os++) {
        if (mdm_command_from_body((const char *)data, size, (enum ue_os)os, 1, &c, err,
                                  sizeof(err)) == 0)
            mdm_command_cleanup(&c);
    }
    return 0;
}
