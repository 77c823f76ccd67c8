/*
 * Minimal HTML templates: `{{name}}` is replaced by the value of name, HTML-escaped, unless
 * the name ends in `_html` (trusted markup built by Orchard). Unknown names render empty.
 */
#ifndef ORCHARD_CORE_TEMPLATE_H
#define ORCHARD_CORE_TEMPLATE_H

#include "core/buf.h"

/* kv is a NULL-terminated list of name, value pairs. Returns 0, or -1 if out's cap is hit. */
int template_render(buf *out, const char *tmpl, const char *const *kv);

#endif
