/*
 * The enrollment list and the inventory request of the admin API (docs/INVENTORY.md):
 *
 *  - GET /api/v1/enrollments: filters on the inventory (os_version_lt, platform,
 *    passcode_present, last_seen_before), all applied in SQL by storage_inventory_list, keyset
 *    pages by enrollment id with a `next` cursor, and ?format=csv for the whole filtered list.
 *  - POST /api/v1/enrollments/{id}/inventory: queue a round now (mdm/inventory.h), 202 with
 *    the command uuids.
 *
 * Every parameter is checked before it reaches storage; a malformed one is a 400 naming it.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "api/api.h"
#include "app.h"
#include "auth/audit.h"
#include "core/log.h"
#include "mdm/inventory.h"
#include "mdm/platform.h"

/* Enrollments per JSON page (the default and the most a `limit` may ask for). */
#define PAGE_MAX 500
/* A cursor is an enrollment id: EnrollmentID, or UDID plus a user id. */
#define CURSOR_MAX 512

/* ---- query parameters ---- */

/* Digits only, at most 12 (Unix seconds up to year 33658). */
static int parse_unix(const char *s, int64_t *out)
{
    size_t n = strspn(s, "0123456789");
    if (n == 0 || n > 12 || s[n] != '\0')
        return -1;
    *out = strtoll(s, NULL, 10);
    return 0;
}

/* n digits at *p into *v; advances *p. */
static int digits(const char **p, int n, int *v)
{
    *v = 0;
    for (int i = 0; i < n; i++, (*p)++) {
        if (**p < '0' || **p > '9')
            return -1;
        *v = *v * 10 + (**p - '0');
    }
    return 0;
}

/*
 * ISO 8601 as people write it for a cut-off: YYYY-MM-DD (midnight UTC), or
 * YYYY-MM-DDTHH:MM[:SS[.fraction]] followed by Z, +HH:MM, -HH:MM or nothing (UTC).
 */
static int parse_iso8601(const char *s, int64_t *out)
{
    struct tm tm = {0};
    int y, mo, d, h = 0, mi = 0, sec = 0, oh = 0, om = 0, sign = 0;
    const char *p = s;
    if (digits(&p, 4, &y) || *p++ != '-' || digits(&p, 2, &mo) || *p++ != '-' || digits(&p, 2, &d))
        return -1;
    if (*p == 'T' || *p == 't' || *p == ' ') {
        p++;
        if (digits(&p, 2, &h) || *p++ != ':' || digits(&p, 2, &mi))
            return -1;
        if (*p == ':') {
            p++;
            if (digits(&p, 2, &sec))
                return -1;
            if (*p == '.' || *p == ',') /* fractions of a second are dropped */
                for (p++; *p >= '0' && *p <= '9'; p++)
                    ;
        }
        if (*p == 'Z' || *p == 'z') {
            p++;
        } else if (*p == '+' || *p == '-') {
            sign = *p++ == '-' ? -1 : 1;
            if (digits(&p, 2, &oh))
                return -1;
            if (*p == ':')
                p++;
            if (digits(&p, 2, &om))
                return -1;
        }
    }
    if (*p != '\0' || y < 1970 || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 ||
        sec > 60 || oh > 23 || om > 59)
        return -1;
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec;
    time_t t = timegm(&tm);
    if (t == (time_t)-1 || tm.tm_mday != d) /* 2025-02-30 normalised to March: refused */
        return -1;
    *out = (int64_t)t - sign * (oh * 3600 + om * 60);
    return 0;
}

struct list_query {
    st_inventory_filter f;
    int csv;
};

/* 0, or -1 with the 400 already answered. */
static int list_query_parse(http_request *req, http_response *res, struct list_query *q)
{
    const char *v, *bad = NULL;
    memset(q, 0, sizeof(*q));
    q->f.limit = PAGE_MAX;
    if ((v = http_request_query(req, "limit")) != NULL) {
        q->f.limit = atoi(v);
        if (q->f.limit <= 0 || q->f.limit > PAGE_MAX)
            q->f.limit = PAGE_MAX;
    }
    if ((v = http_request_query(req, "after")) != NULL && strlen(v) <= CURSOR_MAX)
        q->f.after_id = v;
    else if (v != NULL)
        bad = "after must be the `next` cursor of an earlier page";
    v = http_request_query(req, "all");
    q->f.include_unenrolled = v && strcmp(v, "true") == 0;
    if ((v = http_request_query(req, "os_version_lt")) != NULL &&
        inventory_version_parse(v, &q->f.os_key_lt) != 0)
        bad = "os_version_lt must be a version such as 18.4 or 17.6.1";
    if ((v = http_request_query(req, "platform")) != NULL) {
        enum ue_os os;
        if (ue_os_parse(v, &os) != 0 || (q->f.platform = inventory_platform_name(os)) == NULL)
            bad = "platform must be ios, macos or visionos";
    }
    if ((v = http_request_query(req, "passcode_present")) != NULL) {
        if (strcmp(v, "true") == 0)
            q->f.passcode_present = ST_INV_YES;
        else if (strcmp(v, "false") == 0)
            q->f.passcode_present = ST_INV_NO;
        else
            bad = "passcode_present must be true or false";
    }
    if ((v = http_request_query(req, "last_seen_before")) != NULL &&
        ((parse_unix(v, &q->f.last_seen_before) != 0 &&
          parse_iso8601(v, &q->f.last_seen_before) != 0) ||
         q->f.last_seen_before <= 0))
        bad = "last_seen_before must be Unix seconds or an ISO 8601 date or time "
              "(2026-01-31, 2026-01-31T12:00:00Z)";
    if ((v = http_request_query(req, "format")) != NULL) {
        if (strcmp(v, "csv") == 0)
            q->csv = 1;
        else if (strcmp(v, "json") != 0)
            bad = "format must be json or csv";
    }
    if (bad == NULL)
        return 0;
    log_info("event=api_bad_query rid=%s route=enrollments reason=\"%s\"", req->request_id, bad);
    http_response_error(res, 400, bad);
    return -1;
}

/* ---- JSON pages ---- */

struct json_page {
    struct app *app;
    json_t *arr;
    int limit;
    int more; /* a row beyond the page exists */
    const char *last;
};

static int add_json(const st_enrollment *e, const st_inventory *inv, void *ctx)
{
    struct json_page *p = ctx;
    if ((int)json_array_size(p->arr) == p->limit) {
        p->more = 1;
        return 1; /* the probe row: stop */
    }
    json_array_append_new(p->arr, api_enrollment_json(p->app, e, inv, 0));
    return 0;
}

static void list_json(struct app *app, http_response *res, struct list_query *q)
{
    struct json_page p = {app, json_array(), q->f.limit, 0, NULL};
    q->f.limit += 1; /* one more row says whether there is a next page */
    int rc = storage_inventory_list(app->st, &q->f, add_json, &p);
    if (rc != 0 && rc != 1) {
        json_decref(p.arr);
        http_response_error(res, 503, "storage unavailable");
        return;
    }
    json_t *next = json_null();
    size_t n = json_array_size(p.arr);
    if (p.more && n > 0)
        next = json_incref(json_object_get(json_array_get(p.arr, n - 1), "id"));
    api_send_json(res, 200, json_pack("{s:o, s:o}", "enrollments", p.arr, "next", next));
}

/* ---- CSV ---- */

/*
 * One field, RFC 4180: quoted when it holds a comma, quote, CR or LF, quotes doubled. Text a
 * spreadsheet would run as a formula (leading = + - @ tab CR: a device names itself) gets a
 * leading apostrophe, as OWASP recommends for CSV exports.
 */
static void csv_text(buf *b, const char *s, int last)
{
    if (s != NULL && *s) {
        int formula = strchr("=+-@\t\r", *s) != NULL;
        int quote = formula || strpbrk(s, ",\"\r\n") != NULL;
        if (quote)
            buf_puts(b, "\"");
        if (formula)
            buf_puts(b, "'");
        for (const char *p = s; *p; p++) {
            if (*p == '"')
                buf_puts(b, "\"\"");
            else
                buf_append(b, p, 1);
        }
        if (quote)
            buf_puts(b, "\"");
    }
    buf_puts(b, last ? "\r\n" : ",");
}

static void csv_int(buf *b, int64_t v, int64_t none)
{
    if (v != none)
        buf_printf(b, "%lld", (long long)v);
    buf_puts(b, ",");
}

static void csv_bool(buf *b, int v)
{
    buf_puts(b, v < 0 ? "," : v ? "true," : "false,");
}

/* Unix seconds as ISO 8601 UTC; empty for 0 (never). */
static void csv_time(buf *b, int64_t t, int last)
{
    char when[32] = "";
    if (t > 0) {
        time_t tt = (time_t)t;
        struct tm tm;
        gmtime_r(&tt, &tm);
        strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    }
    csv_text(b, when, last);
}

static const char csv_header[] =
    "id,user,platform,os_version,build_version,product_name,model,model_name,device_name,"
    "passcode_present,passcode_compliant,storage_capacity_mb,storage_available_mb,app_count,"
    "profile_count,certificate_count,auth_state,enrolled_at,last_seen_at,inventory_updated_at\r\n";

static int add_csv(const st_enrollment *e, const st_inventory *inv, void *ctx)
{
    buf *b = ctx;
    static const st_inventory none = {.capacity_mb = -1,
                                      .available_mb = -1,
                                      .passcode_present = -1,
                                      .passcode_compliant = -1,
                                      .app_count = -1,
                                      .profile_count = -1,
                                      .cert_count = -1};
    const st_inventory *x = inv ? inv : &none;
    int known = inv && inv->updated_at; /* the device answered at least once */
    csv_text(b, e->id, 0);
    csv_text(b, inv ? inv->user_email : NULL, 0);
    csv_text(b, inventory_platform_name(mdm_platform_of(e->product_name, e->model)), 0);
    csv_text(b, known && x->os_version ? x->os_version : e->os_version, 0);
    csv_text(b, known && x->build_version ? x->build_version : e->build_version, 0);
    csv_text(b, e->product_name, 0);
    csv_text(b, e->model, 0);
    csv_text(b, x->model_name, 0);
    csv_text(b, known && x->device_name ? x->device_name : e->device_name, 0);
    csv_bool(b, x->passcode_present);
    csv_bool(b, x->passcode_compliant);
    csv_int(b, x->capacity_mb, -1);
    csv_int(b, x->available_mb, -1);
    csv_int(b, x->app_count, -1);
    csv_int(b, x->profile_count, -1);
    csv_int(b, x->cert_count, -1);
    csv_text(b, e->unenrolled_at ? "unenrolled" : e->auth_state, 0);
    csv_time(b, e->enrolled_at, 0);
    csv_time(b, e->last_seen_at, 0);
    csv_time(b, x->updated_at, 1);
    return 0;
}

/* The whole filtered list, every page, built in the response (a row is about 250 bytes). */
static void list_csv(struct app *app, http_response *res, struct list_query *q)
{
    q->f.limit = 0;
    q->f.after_id = NULL;
    buf_reset(&res->body);
    buf_puts(&res->body, csv_header);
    if (storage_inventory_list(app->st, &q->f, add_csv, &res->body) != 0) {
        http_response_error(res, 503, "storage unavailable");
        return;
    }
    res->status = 200;
    res->content_type = "text/csv; charset=utf-8";
    http_response_set_header(res, "Content-Disposition",
                             "attachment; filename=\"enrollments.csv\"");
}

void api_handle_enrollments(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    char actor[128];
    struct list_query q;
    if (api_authorize(app, req, res, actor, sizeof(actor)) != 0 ||
        list_query_parse(req, res, &q) != 0)
        return;
    if (q.csv)
        list_csv(app, res, &q);
    else
        list_json(app, res, &q);
}

/* ---- POST /api/v1/enrollments/{id}/inventory ---- */

void api_handle_enrollment_inventory(void *ctx, http_request *req, http_response *res)
{
    struct app *app = ctx;
    char actor[128];
    if (api_authorize(app, req, res, actor, sizeof(actor)) != 0)
        return;
    st_enrollment e = {0};
    struct inventory_round round;
    const char *why = NULL;
    int rc = storage_enrollment_get(app->st, req->params[0], &e);
    if (rc == ST_ENOTFOUND) {
        http_response_error(res, 404, "no such enrollment");
        goto out;
    }
    if (rc != 0) {
        http_response_error(res, 503, "storage unavailable");
        goto out;
    }
    rc = inventory_request(app, &e, &round, &why);
    if (rc == ST_EEXISTS) {
        http_response_error(res, 409,
                            "an inventory round is still pending for this enrollment; its "
                            "answers come when the device next checks in");
    } else if (rc == ST_ECONFLICT) {
        http_response_error(res, 409, why);
    } else if (rc != 0) {
        http_response_error(res, 503, "storage unavailable");
    } else {
        json_t *uuids = json_array();
        for (size_t i = 0; i < round.n; i++)
            json_array_append_new(uuids, json_string(round.uuids[i]));
        char detail[64];
        snprintf(detail, sizeof(detail), "%zu commands", round.n);
        audit_record(app, actor, "enrollment.inventory", e.id, detail);
        log_info("event=inventory_requested rid=%s actor=%s enrollment=%s commands=%zu",
                 req->request_id, actor, e.id, round.n);
        api_send_json(res, 202, json_pack("{s:s, s:o}", "id", e.id, "command_uuids", uuids));
    }
out:
    st_enrollment_cleanup(&e);
}
