/* Command construction and validation for the admin API. */
#include "mdm/command.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/mem.h"
#include "crypto/pki.h"
#include "plist/pl.h"

void mdm_command_cleanup(struct mdm_command *c)
{
    free(c->request_type);
    free(c->xml);
    memset(c, 0, sizeof(*c));
}

int mdm_command_enqueue(struct app *app, const char *enrollment_id, const struct mdm_command *cmd)
{
    st_command c = {.uuid = (char *)cmd->uuid,
                    .enrollment_id = (char *)enrollment_id,
                    .request_type = cmd->request_type,
                    .body = cmd->xml,
                    .body_len = cmd->xml_len,
                    .priority = cmd->priority,
                    .sensitive = cmd->sensitive,
                    .created_at = app_now(app)};
    return storage_queue_enqueue(app->st, &c);
}

static plist_t object_to_dict(json_t *obj, const struct ue_entry *entry,
                              const struct ue_key *parent, const char *skip_prefix, char *err,
                              size_t err_len)
{
    plist_t dict = plist_new_dict();
    const char *key;
    json_t *val;
    json_object_foreach(obj, key, val)
    {
        if (skip_prefix && strcmp(key, skip_prefix) == 0)
            continue;
        if (skip_prefix && (strcmp(key, "priority") == 0 || strcmp(key, "sensitive") == 0 ||
                            strcmp(key, "push") == 0))
            continue;
        const struct ue_key *k =
            parent ? ue_key_child(parent, key) : (entry ? ue_entry_key(entry, key) : NULL);
        plist_t v = mdm_json_to_plist(val, k, err, err_len);
        if (v == NULL) {
            plist_free(dict);
            return NULL;
        }
        plist_dict_set_item(dict, key, v);
    }
    return dict;
}

/* JSON strings become <data> where the schema says data (base64 in the JSON). */
static plist_t string_value(json_t *j, const struct ue_key *schema, char *err, size_t err_len)
{
    const char *s = json_string_value(j);
    if (schema && schema->type == UE_T_DATA) {
        uint8_t *d = NULL;
        size_t n = 0;
        if (crypto_base64_decode(s, strlen(s), &d, &n) != 0) {
            snprintf(err, err_len, "%s must be base64 (it is <data> in the command)", schema->name);
            return NULL;
        }
        plist_t p = plist_new_data((const char *)d, n);
        free(d);
        return p;
    }
    return plist_new_string(s);
}

plist_t mdm_json_to_plist(json_t *j, const struct ue_key *schema, char *err, size_t err_len)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT:
        return object_to_dict(j, NULL, schema, NULL, err, err_len);
    case JSON_ARRAY: {
        plist_t arr = plist_new_array();
        size_t i;
        json_t *v;
        json_array_foreach(j, i, v)
        {
            const struct ue_key *item = schema && schema->count ? &ue_keys[schema->first] : NULL;
            plist_t p = mdm_json_to_plist(v, item, err, err_len);
            if (p == NULL) {
                plist_free(arr);
                return NULL;
            }
            plist_array_append_item(arr, p);
        }
        return arr;
    }
    case JSON_STRING:
        return string_value(j, schema, err, err_len);
    case JSON_INTEGER:
        if (json_integer_value(j) < 0) {
            snprintf(err, err_len, "negative integers are not valid in MDM commands");
            return NULL;
        }
        return plist_new_uint((uint64_t)json_integer_value(j));
    case JSON_REAL:
        return plist_new_real(json_real_value(j));
    case JSON_TRUE:
    case JSON_FALSE:
        return plist_new_bool(json_is_true(j));
    default:
        snprintf(err, err_len, "null is not a valid value in an MDM command");
        return NULL;
    }
}

static plist_t command_from_json(const char *body, size_t len, struct mdm_command *out, char *err,
                                 size_t err_len)
{
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    plist_t cmd = NULL;
    if (root == NULL || !json_is_object(root)) {
        snprintf(err, err_len, "body is not a JSON object: %s", root ? "" : jerr.text);
        goto out;
    }
    const char *rt = json_string_value(json_object_get(root, "request_type"));
    if (rt == NULL) {
        snprintf(err, err_len, "request_type is required");
        goto out;
    }
    out->priority = (int)json_integer_value(json_object_get(root, "priority"));
    out->sensitive = json_is_true(json_object_get(root, "sensitive"));
    out->push = !json_is_false(json_object_get(root, "push"));
    cmd = object_to_dict(root, ue_command_find(rt), NULL, "request_type", err, err_len);
    if (cmd)
        pl_set_string(cmd, "RequestType", rt);
out:
    json_decref(root);
    return cmd;
}

/* A raw plist: {CommandUUID?, Command:{...}} or the Command dictionary itself. */
static plist_t command_from_plist(const char *body, size_t len, struct mdm_command *out, char *err,
                                  size_t err_len)
{
    plist_t root = pl_parse_dict(body, len, err, err_len);
    if (root == NULL)
        return NULL;
    out->push = 1;
    plist_t inner = pl_get_typed(root, "Command", PLIST_DICT);
    if (inner == NULL)
        return root;
    plist_t cmd = plist_copy(inner);
    plist_free(root);
    return cmd;
}

int mdm_command_from_body(const char *body, size_t len, enum ue_os os, int user_enrollment,
                          struct mdm_command *out, char *err, size_t err_len)
{
    memset(out, 0, sizeof(*out));
    size_t i = 0;
    while (i < len && (body[i] == ' ' || body[i] == '\n' || body[i] == '\r' || body[i] == '\t'))
        i++;
    plist_t cmd = (i < len && body[i] == '{') ? command_from_json(body, len, out, err, err_len)
                                              : command_from_plist(body, len, out, err, err_len);
    if (cmd == NULL)
        return -1;
    const char *rt = pl_get_string(cmd, "RequestType");
    int rc = -1;
    if (rt == NULL) {
        snprintf(err, err_len, "the command has no RequestType");
    } else if (strcmp(rt, "DeclarativeManagement") == 0) {
        /* The first one turns declarative management on for good on the device (PROTOCOL.md
         * 15.1); its check-ins (tokens, declaration-items, status) are then refused, so the
         * device would be stuck. Lifted when Orchard serves DDM. */
        snprintf(err, err_len,
                 "DeclarativeManagement is refused: it turns declarative management on for good "
                 "on the device, and this server does not serve declarative management yet");
    } else if (user_enrollment && ue_command_validate(cmd, os, NULL, NULL, err, err_len) != 0) {
        /* err names the command, key or query */
    } else if (!user_enrollment && ue_command_find(rt) == NULL) {
        snprintf(err, err_len, "unknown RequestType %s", rt);
    } else {
        crypto_uuid(out->uuid);
        plist_t full = plist_new_dict();
        pl_set_string(full, "CommandUUID", out->uuid);
        plist_dict_set_item(full, "Command", plist_copy(cmd));
        out->xml = pl_to_xml(full, &out->xml_len);
        plist_free(full);
        out->request_type = xstrdup(rt);
        rc = 0;
    }
    plist_free(cmd);
    if (rc != 0)
        mdm_command_cleanup(out);
    return rc;
}
