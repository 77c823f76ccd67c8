/* Audit events to storage and the log. */
#include "auth/audit.h"

#include "core/log.h"
#include "webhook/webhook.h"

void audit_record(struct app *app, const char *actor, const char *action, const char *target,
                  const char *detail)
{
    st_audit a = {.at = app_now(app),
                  .actor = (char *)actor,
                  .action = (char *)action,
                  .target = (char *)(target ? target : ""),
                  .detail = (char *)(detail ? detail : "")};
    log_info("event=audit actor=%s action=%s target=%s detail=\"%s\"", actor, action, a.target,
             a.detail);
    if (storage_audit_add(app->st, &a) != 0)
        log_error("event=audit_store_failed action=%s", action);
    webhook_emit(
        app, action,
        (const char *const[]){"actor", actor, "target", a.target, "detail", a.detail, NULL});
}
