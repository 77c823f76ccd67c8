/* Platform families by product-name prefix (docs/DECISIONS.md, "Platforms"). */
#include "mdm/platform.h"

#include <string.h>

static const struct {
    const char *prefix;
    enum ue_os os;
} families[] = {
    /* Macs: "Mac14,2" (Apple silicon), "MacBook…", "MacBookAir…", "MacBookPro…",
     * "Macmini…", "MacPro…" all start with "Mac"; then "iMac…" / "iMacPro…" and the
     * virtual machines of Apple's Virtualization framework. */
    {"Mac", UE_OS_MACOS},
    {"iMac", UE_OS_MACOS},
    {"VirtualMac", UE_OS_MACOS},
    {"iPhone", UE_OS_IOS},
    {"iPad", UE_OS_IOS},
    {"iPod", UE_OS_IOS},
    {"RealityDevice", UE_OS_VISIONOS},
    {"AppleTV", UE_OS_TVOS},
    {"Watch", UE_OS_WATCHOS},
};

/* The family of a name whose prefix is followed by a digit or the end ("Mac14,2", "iMac"):
 * "Machine" or "iPhoneX-evil" is nobody's. */
static int family_of(const char *name, enum ue_os *os)
{
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++) {
        size_t n = strlen(families[i].prefix);
        if (strncmp(name, families[i].prefix, n) != 0)
            continue;
        const char *rest = name + n;
        /* The Mac forms with a longer name: MacBook, MacBookAir, MacBookPro, Macmini, MacPro,
         * iMacPro. */
        static const char *const mac_suffixes[] = {"BookAir", "BookPro", "Book", "mini", "Pro"};
        if (families[i].os == UE_OS_MACOS)
            for (size_t j = 0; j < sizeof mac_suffixes / sizeof mac_suffixes[0]; j++)
                if (strncmp(rest, mac_suffixes[j], strlen(mac_suffixes[j])) == 0) {
                    rest += strlen(mac_suffixes[j]);
                    break;
                }
        if (*rest == '\0' || (*rest >= '0' && *rest <= '9')) {
            *os = families[i].os;
            return 0;
        }
    }
    return -1;
}

enum ue_os mdm_platform_of(const char *product, const char *model)
{
    enum ue_os os = UE_OS_IOS;
    const char *name = product && *product ? product : model;
    if (name != NULL && family_of(name, &os) == 0)
        return os;
    return UE_OS_IOS;
}

int mdm_platform_is_mac(const char *product)
{
    enum ue_os os;
    return product != NULL && family_of(product, &os) == 0 && os == UE_OS_MACOS;
}
