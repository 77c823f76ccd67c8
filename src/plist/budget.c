/*
 * The parse budget's entry point: size and policy checks, then the XML or binary checker.
 * See plist/budget.h for why this exists; the two checkers are budget_xml.c and budget_bin.c.
 */
#include <stdio.h>
#include <string.h>

#include "plist/budget_int.h"

const pl_budget pl_budget_default = {
    .max_bytes = 8u << 20,
    .max_depth = PL_MAX_DEPTH,
    .max_nodes = PL_MAX_NODES,
    .max_text = 16u << 20,
    .max_keys = 1024,
    .allow_binary = 1,
};

const pl_budget pl_budget_device = {
    .max_bytes = 8u << 20,
    .max_depth = PL_MAX_DEPTH,
    .max_nodes = 100000,
    .max_text = 16u << 20,
    .max_keys = 512,
    .allow_binary = 0,
};

int pl_refuse(struct pl_meter *m, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->err, m->err_len, fmt, ap);
    va_end(ap);
    return code;
}

int pl_meter_nodes(struct pl_meter *m, size_t n)
{
    m->u->nodes += n;
    if (m->u->nodes > m->b->max_nodes)
        return pl_refuse(m, PL_BUDGET_TOO_MANY, "plist has more than %zu values", m->b->max_nodes);
    return 0;
}

int pl_meter_text(struct pl_meter *m, size_t n)
{
    /* n is at most the input length, so the sum cannot wrap before it passes max_text */
    m->u->text += n;
    if (m->u->text > m->b->max_text)
        return pl_refuse(m, PL_BUDGET_TOO_MUCH_TEXT, "plist has more than %zu bytes of text",
                         m->b->max_text);
    return 0;
}

/* A budget looser than the hard ceilings is clamped to them: they size the checkers' stacks. */
static pl_budget clamp(const pl_budget *b)
{
    pl_budget c = *b;
    if (c.max_depth == 0 || c.max_depth > PL_MAX_DEPTH)
        c.max_depth = PL_MAX_DEPTH;
    if (c.max_nodes > PL_MAX_NODES)
        c.max_nodes = PL_MAX_NODES;
    if (c.max_bytes > UINT32_MAX)
        c.max_bytes = UINT32_MAX; /* libplist takes a uint32_t length */
    if (c.max_text > UINT32_MAX - 1)
        c.max_text = UINT32_MAX - 1; /* the binary checker memoises text in 32 bits */
    return c;
}

int pl_budget_check(const char *data, size_t len, const pl_budget *b, pl_usage *usage, char *err,
                    size_t err_len)
{
    char spare_err[8];
    pl_usage spare_usage;
    pl_budget c = clamp(b ? b : &pl_budget_default);
    struct pl_meter m = {&c, usage ? usage : &spare_usage, err ? err : spare_err,
                         err ? err_len : sizeof(spare_err)};
    memset(m.u, 0, sizeof(*m.u));
    m.u->bytes = len;
    if (m.err_len)
        m.err[0] = '\0';
    if (data == NULL || len == 0)
        return pl_refuse(&m, PL_BUDGET_MALFORMED, "empty plist");
    if (len > c.max_bytes)
        return pl_refuse(&m, PL_BUDGET_TOO_BIG, "plist larger than %zu bytes", c.max_bytes);
    if (len >= 6 && memcmp(data, "bplist", 6) == 0) {
        if (!c.allow_binary)
            return pl_refuse(&m, PL_BUDGET_BINARY, "binary plists are not accepted here");
        return pl_budget_check_bin(&m, data, len);
    }
    return pl_budget_check_xml(&m, data, len);
}
