/*
 * MDM commands as the admin API receives them: JSON (`{"request_type":"ProfileList", ...}`,
 * other keys become keys of the `Command` dictionary) or a raw plist (the whole command or just
 * its `Command` dictionary). Every command is validated against Apple's schema for User
 * Enrollment on the enrollment's platform (tables generated from the YAML, see ue_rules.h)
 * before it can be queued.
 */
#ifndef ORCHARD_MDM_COMMAND_H
#define ORCHARD_MDM_COMMAND_H

#include <jansson.h>
#include <stddef.h>

#include "app.h"
#include "mdm/ue_rules.h"

struct mdm_command {
    char uuid[37];
    char *request_type;
    char *xml; /* the full command plist sent to the device */
    size_t xml_len;
    int priority;
    int sensitive;
    int push; /* push after enqueueing (default 1) */
};

void mdm_command_cleanup(struct mdm_command *c);

/*
 * Builds a command from an API request body. user_enrollment selects the UE rules (forbidden
 * commands, keys and queries are refused); os is the enrollment's platform. DeclarativeManagement
 * is refused for every enrollment until Orchard serves declarative management (it cannot be
 * turned off again on the device). Returns 0, or -1
 * with a message for the admin in err (naming the command or key).
 */
int mdm_command_from_body(const char *body, size_t len, enum ue_os os, int user_enrollment,
                          struct mdm_command *out, char *err, size_t err_len);

/*
 * Converts a JSON value to a plist node (caller frees). With a schema key (from ue_rules.h),
 * strings become <data> (base64 in the JSON) where the schema says data; NULL = no schema.
 * Returns NULL with a message for the admin in err (null values, negative integers).
 */
plist_t mdm_json_to_plist(json_t *j, const struct ue_key *schema, char *err, size_t err_len);

/*
 * Queues a built command for the enrollment, created now, with the command's priority and
 * sensitive flag. Returns 0 or a storage code (ST_ENOTFOUND: unknown enrollment).
 */
int mdm_command_enqueue(struct app *app, const char *enrollment_id, const struct mdm_command *cmd);

#endif
