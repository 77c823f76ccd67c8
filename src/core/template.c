/* {{name}} substitution with HTML escaping. */
#include "core/template.h"

#include <string.h>

static const char *lookup(const char *const *kv, const char *name, size_t len)
{
    for (; kv[0]; kv += 2) {
        if (strlen(kv[0]) == len && memcmp(kv[0], name, len) == 0)
            return kv[1] ? kv[1] : "";
    }
    return "";
}

int template_render(buf *out, const char *tmpl, const char *const *kv)
{
    const char *p = tmpl;
    for (;;) {
        const char *open = strstr(p, "{{");
        const char *close = open ? strstr(open + 2, "}}") : NULL;
        if (close == NULL)
            return buf_puts(out, p);
        if (buf_append(out, p, (size_t)(open - p)) != 0)
            return -1;
        const char *name = open + 2;
        size_t len = (size_t)(close - name);
        const char *value = lookup(kv, name, len);
        int trusted = len > 5 && memcmp(name + len - 5, "_html", 5) == 0;
        if ((trusted ? buf_puts(out, value) : buf_put_html(out, value)) != 0)
            return -1;
        p = close + 2;
    }
}
