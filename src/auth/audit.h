/*
 * The audit trail (who, what, when, why): token issue, sign-in failures, re-authentication,
 * policy actions, unenrollment. Written to storage and to the log; never contains secrets.
 */
#ifndef ORCHARD_AUTH_AUDIT_H
#define ORCHARD_AUTH_AUDIT_H

#include "app.h"

/* Records an event; failures to store are logged, never fatal to the request. */
void audit_record(struct app *app, const char *actor, const char *action, const char *target,
                  const char *detail);

#endif
