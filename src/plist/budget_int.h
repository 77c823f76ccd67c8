/*
 * Shared by the two halves of the parse budget (budget_xml.c, budget_bin.c); not for callers,
 * which use plist/budget.h.
 */
#ifndef ORCHARD_PLIST_BUDGET_INT_H
#define ORCHARD_PLIST_BUDGET_INT_H

#include <stdarg.h>

#include "plist/budget.h"

/* One check in progress: the budget, what has been counted so far, and where to say why not. */
struct pl_meter {
    const pl_budget *b;
    pl_usage *u;
    char *err;
    size_t err_len;
};

/* Records a refusal reason (printf-style) and returns code, for `return pl_refuse(...)`. */
int pl_refuse(struct pl_meter *m, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Adds n nodes / n text bytes to the running totals; refuses beyond the budget. */
int pl_meter_nodes(struct pl_meter *m, size_t n);
int pl_meter_text(struct pl_meter *m, size_t n);

int pl_budget_check_xml(struct pl_meter *m, const char *data, size_t len);
int pl_budget_check_bin(struct pl_meter *m, const char *data, size_t len);

#endif
