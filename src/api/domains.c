/*
 * /api/v1/domains: organisation domains and their sign-in, the same settings as
 * `orchard domain`. GET lists (table rows, then config-only local domains), GET {name} shows
 * one, PUT {name} creates or updates it from a JSON object: present members replace, null
 * clears an optional member, absent members are kept. `client_secret` is write-only: answers
 * say only whether one is set.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "app.h"
#include "auth/audit.h"
#include "auth/domains.h"
#include "core/log.h"
#include "core/mem.h"

static json_t *opt(const char *s)
{
    return s ? json_string(s) : json_null();
}

static json_t *domain_json(struct app *app, const st_domain *d, const char *source)
{
    char *redirect = domains_redirect_uri(app->public_url);
    json_t *j = json_pack("{s:s, s:s, s:s}", "name", d->name, "auth", d->auth, "source", source);
    if (domains_is_oidc(d) || d->issuer) {
        json_object_set_new(j, "issuer", opt(d->issuer));
        json_object_set_new(j, "client_id", opt(d->client_id));
        json_object_set_new(j, "client_secret_set", json_boolean(d->client_secret != NULL));
        json_object_set_new(j, "ca_file", opt(d->ca_file));
        json_object_set_new(j, "scopes", json_string(domains_scopes(d)));
        json_object_set_new(j, "user_claim", json_string(domains_user_claim(d)));
        json_object_set_new(j, "maid_claim", json_string(domains_maid_claim(d)));
        json_object_set_new(j, "groups_claim", opt(d->groups_claim));
        json_object_set_new(j, "allowed_groups", opt(d->allowed_groups));
        json_object_set_new(j, "jit_users", json_boolean(d->jit_users));
        json_object_set_new(j, "redirect_uri", json_string(redirect));
    }
    free(redirect);
    return j;
}

struct list_ctx {
    struct app *app;
    json_t *arr;
};

static int add_row(const st_domain *d, void *ctx)
{
    struct list_ctx *l = ctx;
    json_array_append_new(l->arr, domain_json(l->app, d, "store"));
    return 0;
}

void api_handle_domains(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    char actor[128];
    if (api_authorize(app, req, res, actor, sizeof(actor)) != 0)
        return;
    struct list_ctx l = {app, json_array()};
    if (storage_domain_list(app->st, add_row, &l) != 0) {
        json_decref(l.arr);
        http_response_error(res, 503, "storage error");
        return;
    }
    for (int i = 0; i < app->ndomains; i++) {
        st_domain d = {0};
        if (storage_domain_get(app->st, app->domains[i], &d) == ST_ENOTFOUND) {
            st_domain local = {.name = app->domains[i], .auth = (char *)"local"};
            json_array_append_new(l.arr, domain_json(app, &local, "config"));
        }
        st_domain_cleanup(&d);
    }
    api_send_json(res, 200, json_pack("{s:o}", "domains", l.arr));
}

/* Applies member name of body to *field: string replaces, null clears, absent keeps. */
static int take_str(json_t *body, const char *name, char **field, char *err, size_t err_len)
{
    json_t *v = json_object_get(body, name);
    if (v == NULL)
        return 0;
    if (json_is_null(v)) {
        free(*field);
        *field = NULL;
        return 0;
    }
    if (!json_is_string(v)) {
        snprintf(err, err_len, "%s must be a string or null", name);
        return -1;
    }
    free(*field);
    *field = json_string_length(v) ? xstrdup(json_string_value(v)) : NULL;
    return 0;
}

static const char *const known_members[] = {"name",           "auth",
                                            "issuer",         "client_id",
                                            "client_secret",  "ca_file",
                                            "scopes",         "user_claim",
                                            "maid_claim",     "groups_claim",
                                            "allowed_groups", "jit_users",
                                            "source",         "client_secret_set",
                                            "redirect_uri",   NULL};

void api_handle_domain(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    char actor[128];
    if (api_authorize(app, req, res, actor, sizeof(actor)) != 0)
        return;
    char *at = xasprintf("x@%.253s", req->params[0]);
    char *name = domains_of_identifier(at); /* lowercase; NULL if empty */
    free(at);
    st_domain d = {0};
    json_t *body = NULL;
    char err[256];
    int rc = name ? domains_lookup(app, name, &d) : ST_ENOTFOUND;
    int exists = rc == ST_OK;
    if (rc == ST_ERROR) {
        http_response_error(res, 503, "storage error");
        goto out;
    }
    if (strcmp(req->method, "GET") == 0) {
        if (!exists) {
            http_response_error(res, 404, "no such domain");
            goto out;
        }
        st_domain row = {0};
        int in_store = storage_domain_get(app->st, name, &row) == ST_OK;
        st_domain_cleanup(&row);
        api_send_json(res, 200, domain_json(app, &d, in_store ? "store" : "config"));
        goto out;
    }
    /* PUT */
    json_error_t jerr;
    body = json_loadb(req->body, req->body_len, 0, &jerr);
    if (!json_is_object(body)) {
        http_response_error(res, 400, "body must be a JSON object");
        goto out;
    }
    const char *key;
    json_t *v;
    json_object_foreach(body, key, v)
    {
        int known = 0;
        for (int i = 0; known_members[i]; i++)
            known |= strcmp(known_members[i], key) == 0;
        if (!known) {
            snprintf(err, sizeof(err), "unknown member \"%.64s\"", key);
            http_response_error(res, 400, err);
            goto out;
        }
    }
    if (!exists) {
        st_domain_cleanup(&d);
        d.name = xstrdup(name);
        d.auth = xstrdup("local");
    }
    if (take_str(body, "auth", &d.auth, err, sizeof(err)) ||
        take_str(body, "issuer", &d.issuer, err, sizeof(err)) ||
        take_str(body, "client_id", &d.client_id, err, sizeof(err)) ||
        take_str(body, "client_secret", &d.client_secret, err, sizeof(err)) ||
        take_str(body, "ca_file", &d.ca_file, err, sizeof(err)) ||
        take_str(body, "scopes", &d.scopes, err, sizeof(err)) ||
        take_str(body, "user_claim", &d.user_claim, err, sizeof(err)) ||
        take_str(body, "maid_claim", &d.maid_claim, err, sizeof(err)) ||
        take_str(body, "groups_claim", &d.groups_claim, err, sizeof(err)) ||
        take_str(body, "allowed_groups", &d.allowed_groups, err, sizeof(err))) {
        http_response_error(res, 400, err);
        goto out;
    }
    if (d.auth == NULL)
        d.auth = xstrdup("local");
    json_t *jit = json_object_get(body, "jit_users");
    if (jit && !json_is_boolean(jit)) {
        http_response_error(res, 400, "jit_users must be true or false");
        goto out;
    }
    if (jit)
        d.jit_users = json_is_true(jit);
    d.updated_at = app_now(app);
    if (domains_validate(&d, err, sizeof(err)) != 0) {
        http_response_error(res, 400, err);
        goto out;
    }
    if (storage_domain_put(app->st, &d) != 0) {
        http_response_error(res, 503, "storage error");
        goto out;
    }
    audit_record(app, actor, "domain.put", d.name, d.auth);
    api_send_json(res, exists ? 200 : 201, domain_json(app, &d, "store"));
out:
    json_decref(body);
    st_domain_cleanup(&d);
    free(name);
}
