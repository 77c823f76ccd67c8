/*
 * Fuzz target: library uploads. The body is a profile (plain plist or CMS) for
 * lib_profile_prepare() on every platform, and also an app catalogue JSON body for
 * lib_app_prepare(); both must refuse garbage without crashing or leaking.
 */
#include <stdint.h>
#include <stdlib.h>

#include "mdm/library.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void ignore(void *ctx, const char *msg)
{
    (void)ctx;
    (void)msg;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[LIB_MSG_MAX + 128];
    st_profile p;
    st_app a;
    if (lib_profile_prepare(data, size, 0, ignore, NULL, &p, err, sizeof(err)) == 0)
        st_profile_cleanup(&p);
    if (lib_profile_prepare(data, size, LIB_OS_BIT(UE_OS_IOS), NULL, NULL, &p, err, sizeof(err)) ==
        0)
        st_profile_cleanup(&p);
    if (lib_app_prepare((const char *)data, size, ignore, NULL, &a, err, sizeof(err)) == 0)
        st_app_cleanup(&a);
    return 0;
}
