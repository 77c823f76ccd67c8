/*
 * Fuzz target: a device's command report as the connect path sees it (the device budget of
 * plist/budget.c, then mdm/inventory.c's inventory_parse for each User Enrollment platform, then
 * the API's JSON of what was kept). Besides "no crash, no leak, no sanitizer report", it checks
 * what inventory_parse promises: every stored list is a JSON array of at most INV_MAX_ITEMS
 * items, a count is never below the items kept, and every kept string is one jansson accepts
 * (valid UTF-8), so the API can always answer. The seed corpus (fuzz/corpus/inventory/) holds
 * report shapes of each inventory command.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mdm/inventory.h"
#include "plist/pl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_list(const char *text, int count)
{
    if (text == NULL)
        return;
    json_t *j = json_loads(text, 0, NULL);
    if (!json_is_array(j) || json_array_size(j) > INV_MAX_ITEMS || (int)json_array_size(j) > count)
        abort();
    json_decref(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[160];
    plist_t p = pl_parse_budget((const char *)data, size, &pl_budget_device, err, sizeof(err));
    if (p == NULL)
        return 0;
    static const enum ue_os platforms[] = {UE_OS_IOS, UE_OS_MACOS, UE_OS_VISIONOS};
    for (size_t i = 0; i < sizeof(platforms) / sizeof(platforms[0]); i++) {
        st_inventory x;
        unsigned groups = inventory_parse(p, platforms[i], &x);
        check_list(x.apps, x.app_count);
        check_list(x.profiles, x.profile_count);
        check_list(x.certs, x.cert_count);
        if (!(groups & ST_INV_DEVICE) && (x.os_version || x.device_name || x.capacity_mb != -1))
            abort();
        json_t *j = inventory_json(&x, 1);
        char *s = json_dumps(j, JSON_COMPACT); /* NULL if a kept string were not valid UTF-8 */
        if (s == NULL || json_object_size(j) == 0)
            abort();
        free(s);
        json_decref(j);
        st_inventory_cleanup(&x);
    }
    plist_free(p);
    return 0;
}
