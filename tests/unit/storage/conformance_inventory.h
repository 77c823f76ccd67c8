/*
 * Conformance cases of the device inventory (storage.h "device inventory", migration 14): the
 * typed row and its round trip, the round claim (compare-and-set, atomic with its commands,
 * refused while a round is pending), the scheduler's walk, partial updates that hand back the
 * old values, and the filtered, keyset-paginated list the admin API serves. Included by
 * conformance.h; spliced into both backends' test tables as CONFORMANCE_INVENTORY_TESTS.
 */
#ifndef ORCHARD_TEST_STORAGE_CONFORMANCE_INVENTORY_H
#define ORCHARD_TEST_STORAGE_CONFORMANCE_INVENTORY_H

/* An enrolled, complete (TokenUpdate seen) device channel, last seen at `seen`. */
static inline int conf_inv_device(storage *st, const char *id, int64_t user_id, int64_t seen)
{
    int rc = conf_enroll(st, id, user_id);
    if (rc == ST_OK)
        rc = storage_enrollment_token_update(st, id, "0a0b", "magic", 150);
    if (rc == ST_OK)
        rc = storage_enrollment_touch(st, id, seen);
    return rc;
}

/* A row with every value unknown, due at `due`. */
static inline st_inventory conf_inv_blank(const char *id, const char *platform, int64_t due)
{
    st_inventory x = {0};
    x.enrollment_id = (char *)id;
    x.platform = (char *)platform;
    x.capacity_mb = x.available_mb = -1;
    x.passcode_present = x.passcode_compliant = -1;
    x.app_count = x.profile_count = x.cert_count = -1;
    x.due_at = due;
    return x;
}

/* An inventory command of enrollment id (its body as a device receives it). */
static inline st_command conf_inv_command(const char *id, const char *uuid, const char *type)
{
    st_command c = {0};
    c.uuid = (char *)uuid;
    c.enrollment_id = (char *)id;
    c.request_type = (char *)type;
    c.body = (char *)"<plist version=\"1.0\"><dict/></plist>";
    c.body_len = strlen(c.body);
    c.created_at = 100;
    return c;
}

#define CONF_INV_U1 ST_INV_UUID_PREFIX "000-8000-000000000001"
#define CONF_INV_U2 ST_INV_UUID_PREFIX "000-8000-000000000002"
#define CONF_INV_U3 ST_INV_UUID_PREFIX "000-8000-000000000003"
#define CONF_INV_U4 ST_INV_UUID_PREFIX "000-8000-000000000004"

TEST(conf_inventory_reset_get)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    ASSERT_INT_EQ(conf_inv_device(st, "E1", 0, 100), ST_OK);
    st_inventory out;
    ASSERT_INT_EQ(storage_inventory_get(st, "E1", &out), ST_ENOTFOUND);
    ASSERT(out.enrollment_id == NULL);

    st_inventory x = conf_inv_blank("E1", "ios", 200);
    x.os_version = (char *)"18.4.1";
    x.build_version = (char *)"22E252";
    x.os_key = 18004001;
    x.device_name = (char *)"Ann's \"phone\"";
    x.capacity_mb = 128000;
    x.passcode_compliant = 0;
    x.app_count = 2;
    x.apps = (char *)"[{\"identifier\":\"a\"},{\"identifier\":\"b\"}]";
    ASSERT_INT_EQ(storage_inventory_reset(st, &x), ST_OK);
    ASSERT_INT_EQ(storage_inventory_get(st, "E1", &out), ST_OK);
    ASSERT_STR_EQ(out.enrollment_id, "E1");
    ASSERT_STR_EQ(out.platform, "ios");
    ASSERT_STR_EQ(out.os_version, "18.4.1");
    ASSERT_STR_EQ(out.build_version, "22E252");
    ASSERT_INT_EQ(out.os_key, 18004001);
    ASSERT_STR_EQ(out.device_name, "Ann's \"phone\"");
    ASSERT(out.model == NULL && out.product_name == NULL && out.model_name == NULL);
    ASSERT_INT_EQ(out.capacity_mb, 128000);
    ASSERT_INT_EQ(out.available_mb, -1); /* unknown stays unknown, not 0 */
    ASSERT_INT_EQ(out.passcode_present, -1);
    ASSERT_INT_EQ(out.passcode_compliant, 0);
    ASSERT_INT_EQ(out.app_count, 2);
    ASSERT_STR_EQ(out.apps, x.apps);
    ASSERT_INT_EQ(out.profile_count, -1);
    ASSERT(out.profiles == NULL && out.certs == NULL);
    ASSERT_INT_EQ(out.cert_count, -1);
    ASSERT_INT_EQ(out.round, 1);
    ASSERT_INT_EQ(out.due_at, 200);
    ASSERT_INT_EQ(out.updated_at, 0);
    int64_t round = out.round;
    st_inventory_cleanup(&out);

    /* A new enrollment under the same id starts over, and an older claim no longer holds. */
    st_inventory y = conf_inv_blank("E1", "macos", 300);
    y.os_version = (char *)"15.3";
    y.os_key = 15003000;
    ASSERT_INT_EQ(storage_inventory_reset(st, &y), ST_OK);
    ASSERT_INT_EQ(storage_inventory_get(st, "E1", &out), ST_OK);
    ASSERT_STR_EQ(out.platform, "macos");
    ASSERT_STR_EQ(out.os_version, "15.3");
    ASSERT(out.device_name == NULL && out.apps == NULL);
    ASSERT_INT_EQ(out.app_count, -1);
    ASSERT_INT_EQ(out.capacity_mb, -1);
    ASSERT_INT_EQ(out.round, round + 1);
    st_inventory_cleanup(&out);
    ASSERT_INT_EQ(storage_inventory_claim(st, "E1", round, 310, 400, NULL, NULL, 0), ST_ECONFLICT);

    st_inventory z = conf_inv_blank("NOPE", "ios", 0);
    ASSERT_INT_EQ(storage_inventory_reset(st, &z), ST_ENOTFOUND);
    ASSERT_INT_EQ(storage_inventory_get(st, "NOPE", &out), ST_ENOTFOUND);
    storage_close(st);
}

TEST(conf_inventory_claim)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    ASSERT_INT_EQ(conf_inv_device(st, "E1", 0, 100), ST_OK);
    st_inventory x = conf_inv_blank("E1", "ios", 100);
    ASSERT_INT_EQ(storage_inventory_reset(st, &x), ST_OK);
    st_inventory out;
    ASSERT_INT_EQ(storage_inventory_get(st, "E1", &out), ST_OK);
    int64_t r = out.round;
    st_inventory_cleanup(&out);

    /* An admin's command of the same type is not part of a round and does not block one. */
    ASSERT_INT_EQ(conf_enqueue(st, "E1", "ADMIN-1", 0, 100), ST_OK);
    st_command cmds[2] = {conf_inv_command("E1", CONF_INV_U1, "DeviceInformation"),
                          conf_inv_command("E1", CONF_INV_U2, "SecurityInfo")};
    ASSERT_INT_EQ(storage_inventory_claim(st, "E1", r, 120, 86520, "ios", cmds, 2), ST_OK);
    ASSERT_INT_EQ(conf_count(st, "E1"), 3);
    ASSERT_INT_EQ(conf_status(st, CONF_INV_U1), ST_CMD_QUEUED);
    int64_t pending = 0;
    ASSERT_INT_EQ(storage_inventory_pending(st, "E1", &pending), ST_OK);
    ASSERT_INT_EQ(pending, 2);
    ASSERT_INT_EQ(storage_inventory_get(st, "E1", &out), ST_OK);
    ASSERT_INT_EQ(out.round, r + 1);
    ASSERT_INT_EQ(out.requested_at, 120);
    ASSERT_INT_EQ(out.due_at, 86520);
    st_inventory_cleanup(&out);

    /* A second round while one is pending: refused, nothing queued. A stale round: conflict. */
    st_command more[1] = {conf_inv_command("E1", CONF_INV_U3, "ProfileList")};
    ASSERT_INT_EQ(storage_inventory_claim(st, "E1", r + 1, 130, 90000, "ios", more, 1), ST_EEXISTS);
    ASSERT_INT_EQ(storage_inventory_claim(st, "E1", r, 130, 90000, "ios", more, 1), ST_ECONFLICT);
    ASSERT_INT_EQ(conf_status(st, CONF_INV_U3), ST_ENOTFOUND);
    ASSERT_INT_EQ(storage_inventory_get(st, "E1", &out), ST_OK);
    ASSERT_INT_EQ(out.round, r + 1);
    ASSERT_INT_EQ(out.due_at, 86520);
    st_inventory_cleanup(&out);

    /* Still pending after a NotNow; free once every command of the round is answered. */
    char uuid[64];
    ASSERT_INT_EQ(conf_next(st, "E1", 1, 140, uuid, sizeof(uuid)), ST_OK);
    ASSERT_INT_EQ(conf_ack(st, "E1", "ADMIN-1", 141), ST_OK);
    ASSERT_INT_EQ(conf_ack(st, "E1", CONF_INV_U1, 142), ST_OK);
    ASSERT_INT_EQ(storage_queue_report(st, "E1", CONF_INV_U2, ST_CMD_NOTNOW, NULL, 0, 143), ST_OK);
    ASSERT_INT_EQ(storage_inventory_claim(st, "E1", r + 1, 150, 90000, "ios", more, 1), ST_EEXISTS);
    ASSERT_INT_EQ(conf_ack(st, "E1", CONF_INV_U2, 160), ST_OK);
    ASSERT_INT_EQ(storage_inventory_pending(st, "E1", &pending), ST_OK);
    ASSERT_INT_EQ(pending, 0);
    ASSERT_INT_EQ(storage_inventory_claim(st, "E1", r + 1, 170, 90000, "visionos", more, 1), ST_OK);
    ASSERT_INT_EQ(conf_status(st, CONF_INV_U3), ST_CMD_QUEUED);
    ASSERT_INT_EQ(storage_inventory_get(st, "E1", &out), ST_OK);
    ASSERT_STR_EQ(out.platform, "visionos"); /* the platform the round was built for */
    st_inventory_cleanup(&out);

    ASSERT_INT_EQ(storage_inventory_claim(st, "NOPE", 0, 1, 2, NULL, NULL, 0), ST_ENOTFOUND);

    /* set_due is a compare-and-set on the round too. */
    ASSERT_INT_EQ(storage_inventory_set_due(st, "E1", r + 2, 777), ST_OK);
    ASSERT_INT_EQ(storage_inventory_set_due(st, "E1", r + 1, 888), ST_ECONFLICT);
    ASSERT_INT_EQ(storage_inventory_get(st, "E1", &out), ST_OK);
    ASSERT_INT_EQ(out.due_at, 777);
    st_inventory_cleanup(&out);
    storage_close(st);
}

/* A round is all or nothing: a failure in the middle leaves no command and the round as it
 * was, so the next claim can still be made. */
TEST(conf_inventory_claim_is_atomic)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    ASSERT_INT_EQ(conf_inv_device(st, "E1", 0, 100), ST_OK);
    st_inventory x = conf_inv_blank("E1", "ios", 100);
    ASSERT_INT_EQ(storage_inventory_reset(st, &x), ST_OK);
    st_command cmds[2] = {conf_inv_command("E1", CONF_INV_U1, "DeviceInformation"),
                          conf_inv_command("E1", CONF_INV_U2, "SecurityInfo")};
    /* BEGIN, claim, first enqueue, then the second enqueue fails. */
    if (storage_fail_step_after(st, 4) != 0) {
        storage_close(st);
        return; /* the backend has no step hook */
    }
    ASSERT_INT_EQ(storage_inventory_claim(st, "E1", 1, 120, 1000, NULL, cmds, 2), ST_ERROR);
    storage_fail_step_after(st, 0);
    ASSERT_INT_EQ(conf_count(st, "E1"), 0);
    st_inventory out;
    ASSERT_INT_EQ(storage_inventory_get(st, "E1", &out), ST_OK);
    ASSERT_INT_EQ(out.round, 1);
    ASSERT_INT_EQ(out.due_at, 100);
    st_inventory_cleanup(&out);
    ASSERT_INT_EQ(storage_inventory_claim(st, "E1", 1, 130, 1000, NULL, cmds, 2), ST_OK);
    ASSERT_INT_EQ(conf_count(st, "E1"), 2);
    storage_close(st);
}

/* Several instances (threads with their own connections here) claim the same due round at once:
 * exactly one queues it. */
struct conf_inv_racer {
    storage *st;
    int64_t round;
    int index;
    atomic_int *ok;
    atomic_int *other;
};

static void *conf_inv_race_main(void *arg)
{
    struct conf_inv_racer *r = arg;
    char u1[40], u2[40];
    snprintf(u1, sizeof(u1), ST_INV_UUID_PREFIX "%03d-8000-00000000000a", r->index);
    snprintf(u2, sizeof(u2), ST_INV_UUID_PREFIX "%03d-8000-00000000000b", r->index);
    st_command cmds[2] = {conf_inv_command("E1", u1, "DeviceInformation"),
                          conf_inv_command("E1", u2, "SecurityInfo")};
    int rc = storage_inventory_claim(r->st, "E1", r->round, 200, 1000, "ios", cmds, 2);
    if (rc == ST_OK)
        atomic_fetch_add(r->ok, 1);
    else if (rc != ST_ECONFLICT && rc != ST_EEXISTS)
        atomic_fetch_add(r->other, 1);
    return NULL;
}

TEST(conf_inventory_claim_race)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    ASSERT_INT_EQ(conf_inv_device(st, "E1", 0, 100), ST_OK);
    st_inventory x = conf_inv_blank("E1", "ios", 100);
    ASSERT_INT_EQ(storage_inventory_reset(st, &x), ST_OK);
    for (int trial = 0; trial < 5; trial++) {
        st_inventory row;
        ASSERT_INT_EQ(storage_inventory_get(st, "E1", &row), ST_OK);
        int64_t round = row.round;
        st_inventory_cleanup(&row);
        atomic_int ok = 0, other = 0;
        struct conf_inv_racer racers[6];
        pthread_t threads[6];
        for (int i = 0; i < 6; i++) {
            racers[i] = (struct conf_inv_racer){st, round, trial * 10 + i, &ok, &other};
            ASSERT_INT_EQ(pthread_create(&threads[i], NULL, conf_inv_race_main, &racers[i]), 0);
        }
        for (int i = 0; i < 6; i++)
            pthread_join(threads[i], NULL);
        ASSERT_INT_EQ(atomic_load(&other), 0);
        ASSERT_INT_EQ(atomic_load(&ok), 1);
        ASSERT_INT_EQ(conf_count(st, "E1"), 2); /* one round's commands, nobody else's */
        ASSERT_INT_EQ(storage_queue_clear(st, "E1"), ST_OK);
    }
    storage_close(st);
}

struct conf_inv_seen {
    char ids[8][16];
    int64_t rounds[8];
    int n;
};

static int conf_inv_collect(const char *id, int64_t round, void *ctx)
{
    struct conf_inv_seen *s = ctx;
    if (s->n < 8) {
        snprintf(s->ids[s->n], sizeof(s->ids[0]), "%s", id);
        s->rounds[s->n] = round;
    }
    s->n++;
    return 0;
}

static inline int64_t conf_inv_due_at(storage *st, const char *id)
{
    st_inventory out;
    int rc = storage_inventory_get(st, id, &out);
    int64_t due = rc == ST_OK ? out.due_at : rc;
    st_inventory_cleanup(&out);
    return due;
}

TEST(conf_inventory_due)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    /* A (due 50), B (due 40): askable. C: never completed. D: unenrolled. F: re-authentication
     * pending. G: not due yet. H: a macOS user channel. */
    ASSERT_INT_EQ(conf_inv_device(st, "A", 0, 100), ST_OK);
    ASSERT_INT_EQ(conf_inv_device(st, "B", 0, 100), ST_OK);
    ASSERT_INT_EQ(conf_enroll(st, "C", 0), ST_OK);
    ASSERT_INT_EQ(conf_inv_device(st, "D", 0, 100), ST_OK);
    ASSERT_INT_EQ(storage_enrollment_unenroll(st, "D", 120), ST_OK);
    ASSERT_INT_EQ(conf_inv_device(st, "F", 0, 100), ST_OK);
    ASSERT_INT_EQ(storage_enrollment_set_auth_state(st, "F", "reauth_required", 120), ST_OK);
    ASSERT_INT_EQ(conf_inv_device(st, "G", 0, 100), ST_OK);
    st_enrollment h = {0};
    h.id = (char *)"A:USER";
    h.type = ST_ENR_USER_CHANNEL;
    h.parent_id = (char *)"A";
    h.enrolled_at = 100;
    ASSERT_INT_EQ(storage_enrollment_authenticate(st, &h), ST_OK);
    ASSERT_INT_EQ(storage_enrollment_token_update(st, "A:USER", "0c", "m", 150), ST_OK);
    const struct {
        const char *id;
        int64_t due;
    } rows[] = {{"A", 50}, {"B", 40}, {"C", 10}, {"D", 10}, {"F", 10}, {"G", 500}, {"A:USER", 10}};
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        st_inventory x = conf_inv_blank(rows[i].id, "ios", rows[i].due);
        ASSERT_INT_EQ(storage_inventory_reset(st, &x), ST_OK);
    }
    struct conf_inv_seen seen = {0};
    ASSERT_INT_EQ(storage_inventory_due(st, 200, 86600, 10, conf_inv_collect, &seen), ST_OK);
    ASSERT_INT_EQ(seen.n, 2);
    ASSERT_STR_EQ(seen.ids[0], "B"); /* oldest due first */
    ASSERT_STR_EQ(seen.ids[1], "A");
    ASSERT_INT_EQ(seen.rounds[1], 1);
    /* The ones that cannot be asked are out of the way until defer_to; the others untouched. */
    ASSERT_INT_EQ(conf_inv_due_at(st, "C"), 86600);
    ASSERT_INT_EQ(conf_inv_due_at(st, "D"), 86600);
    ASSERT_INT_EQ(conf_inv_due_at(st, "F"), 86600);
    ASSERT_INT_EQ(conf_inv_due_at(st, "A:USER"), 86600);
    ASSERT_INT_EQ(conf_inv_due_at(st, "A"), 50);
    ASSERT_INT_EQ(conf_inv_due_at(st, "G"), 500);

    seen.n = 0;
    ASSERT_INT_EQ(storage_inventory_due(st, 200, 86600, 1, conf_inv_collect, &seen), ST_OK);
    ASSERT_INT_EQ(seen.n, 1);
    ASSERT_STR_EQ(seen.ids[0], "B");
    /* A claimed round moves the row out of the walk. */
    ASSERT_INT_EQ(storage_inventory_claim(st, "B", 1, 200, 86600, NULL, NULL, 0), ST_OK);
    seen.n = 0;
    ASSERT_INT_EQ(storage_inventory_due(st, 600, 86600, 10, conf_inv_collect, &seen), ST_OK);
    ASSERT_INT_EQ(seen.n, 2);
    ASSERT_STR_EQ(seen.ids[0], "A");
    ASSERT_STR_EQ(seen.ids[1], "G");
    storage_close(st);
}

TEST(conf_inventory_update)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    ASSERT_INT_EQ(conf_inv_device(st, "E1", 0, 100), ST_OK);
    st_inventory x = conf_inv_blank("E1", "ios", 100);
    x.os_version = (char *)"18.3";
    x.os_key = 18003000;
    x.passcode_compliant = 1;
    x.profile_count = 1;
    x.profiles = (char *)"[{\"identifier\":\"p\"}]";
    ASSERT_INT_EQ(storage_inventory_reset(st, &x), ST_OK);

    st_inventory in = conf_inv_blank("E1", NULL, 0);
    in.os_version = (char *)"18.4";
    in.build_version = (char *)"22E240";
    in.os_key = 18004000;
    in.model_name = (char *)"iPhone";
    in.capacity_mb = 64000;
    in.available_mb = 12000;
    in.passcode_compliant = 0; /* not written: its group is not given */
    st_inventory old;
    ASSERT_INT_EQ(storage_inventory_update(st, "E1", &in, ST_INV_DEVICE, 300, &old), ST_OK);
    ASSERT_STR_EQ(old.os_version, "18.3");
    ASSERT_INT_EQ(old.os_key, 18003000);
    ASSERT_INT_EQ(old.updated_at, 0);
    st_inventory_cleanup(&old);
    st_inventory out;
    ASSERT_INT_EQ(storage_inventory_get(st, "E1", &out), ST_OK);
    ASSERT_STR_EQ(out.os_version, "18.4");
    ASSERT_STR_EQ(out.build_version, "22E240");
    ASSERT_INT_EQ(out.os_key, 18004000);
    ASSERT_STR_EQ(out.model_name, "iPhone");
    ASSERT_INT_EQ(out.capacity_mb, 64000);
    ASSERT_INT_EQ(out.available_mb, 12000);
    ASSERT_INT_EQ(out.passcode_compliant, 1);
    ASSERT_INT_EQ(out.profile_count, 1);
    ASSERT_STR_EQ(out.profiles, x.profiles);
    ASSERT_STR_EQ(out.platform, "ios"); /* never written by an answer */
    ASSERT_INT_EQ(out.updated_at, 300);
    ASSERT_INT_EQ(out.round, 1);
    st_inventory_cleanup(&out);

    /* Security and lists; an unknown value (-1, NULL) replaces a known one in its group. */
    st_inventory sec = conf_inv_blank("E1", NULL, 0);
    sec.passcode_compliant = 0;
    sec.app_count = 0;
    sec.apps = (char *)"[]";
    ASSERT_INT_EQ(storage_inventory_update(
                      st, "E1", &sec, ST_INV_SECURITY | ST_INV_APPS | ST_INV_PROFILES, 400, NULL),
                  ST_OK);
    ASSERT_INT_EQ(storage_inventory_get(st, "E1", &out), ST_OK);
    ASSERT_INT_EQ(out.passcode_compliant, 0);
    ASSERT_INT_EQ(out.passcode_present, -1);
    ASSERT_INT_EQ(out.app_count, 0);
    ASSERT_STR_EQ(out.apps, "[]");
    ASSERT_INT_EQ(out.profile_count, -1);
    ASSERT(out.profiles == NULL);
    ASSERT_STR_EQ(out.os_version, "18.4");
    ASSERT_INT_EQ(out.updated_at, 400);
    st_inventory_cleanup(&out);

    ASSERT_INT_EQ(storage_inventory_update(st, "NOPE", &sec, ST_INV_DEVICE, 500, &old),
                  ST_ENOTFOUND);
    ASSERT(old.enrollment_id == NULL);
    storage_fail_after(st, 1);
    ASSERT_INT_EQ(storage_inventory_update(st, "E1", &in, ST_INV_SECURITY, 600, &old), ST_ERROR);
    ASSERT(old.enrollment_id == NULL);
    storage_close(st);
}

struct conf_inv_list {
    char ids[64][16];
    char emails[64][32];
    int with_inv[64];
    int lists_read; /* a list column came back (it must not in lists) */
    int n;
};

static int conf_inv_list_cb(const st_enrollment *e, const st_inventory *inv, void *ctx)
{
    struct conf_inv_list *l = ctx;
    if (l->n < 64) {
        snprintf(l->ids[l->n], sizeof(l->ids[0]), "%s", e->id);
        snprintf(l->emails[l->n], sizeof(l->emails[0]), "%s",
                 inv && inv->user_email ? inv->user_email : "-");
        l->with_inv[l->n] = inv != NULL;
        if (inv && (inv->apps || inv->profiles || inv->certs))
            l->lists_read = 1;
    }
    l->n++;
    return 0;
}

/* The ids the filter lists, joined with spaces. */
static inline const char *conf_inv_ids(storage *st, const st_inventory_filter *f, char *out,
                                       size_t len)
{
    struct conf_inv_list l;
    memset(&l, 0, sizeof(l));
    out[0] = '\0';
    if (storage_inventory_list(st, f, conf_inv_list_cb, &l) != ST_OK)
        return "(error)";
    for (int i = 0; i < l.n && i < 64; i++)
        snprintf(out + strlen(out), len - strlen(out), "%s%s", i ? " " : "", l.ids[i]);
    return out;
}

TEST(conf_inventory_list_filters)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    int64_t ann = conf_user(st, "ann@example.com");
    ASSERT(ann > 0);
    /* id, platform, os_key, passcode_present, last_seen */
    const struct {
        const char *id, *platform;
        int64_t key;
        int passcode;
        int64_t seen;
    } rows[] = {
        {"D1", "ios", 18003001, 1, 1000},   /* 18.3.1 */
        {"D2", "ios", 18004000, 0, 2000},   /* 18.4 */
        {"D3", "ios", 18010000, -1, 3000},  /* 18.10: newer than 18.4 */
        {"D4", "macos", 15002000, -1, 500}, /* 15.2 */
        {"D5", "visionos", 2003000, 0, 4000}, {"D6", "ios", 0, -1, 100}, /* version never known */
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        ASSERT_INT_EQ(conf_inv_device(st, rows[i].id, ann, rows[i].seen), ST_OK);
        st_inventory x = conf_inv_blank(rows[i].id, rows[i].platform, 0);
        x.os_key = rows[i].key;
        x.passcode_present = rows[i].passcode;
        x.apps = (char *)"[]";
        x.app_count = 0;
        ASSERT_INT_EQ(storage_inventory_reset(st, &x), ST_OK);
    }
    /* No inventory row at all, and an unenrolled one. */
    ASSERT_INT_EQ(conf_inv_device(st, "D7", 0, 50), ST_OK);
    ASSERT_INT_EQ(conf_inv_device(st, "D8", ann, 50), ST_OK);
    st_inventory x8 = conf_inv_blank("D8", "ios", 0);
    x8.os_key = 17000000;
    ASSERT_INT_EQ(storage_inventory_reset(st, &x8), ST_OK);
    ASSERT_INT_EQ(storage_enrollment_unenroll(st, "D8", 60), ST_OK);

    char buf[512];
    st_inventory_filter f = {0};
    ASSERT_STR_EQ(conf_inv_ids(st, &f, buf, sizeof(buf)), "D1 D2 D3 D4 D5 D6 D7");
    struct conf_inv_list l;
    memset(&l, 0, sizeof(l));
    ASSERT_INT_EQ(storage_inventory_list(st, &f, conf_inv_list_cb, &l), ST_OK);
    ASSERT_INT_EQ(l.n, 7);
    ASSERT_STR_EQ(l.emails[0], "ann@example.com");
    ASSERT_INT_EQ(l.with_inv[0], 1);
    ASSERT_INT_EQ(l.with_inv[6], 0); /* D7: no row, still listed */
    ASSERT_INT_EQ(l.lists_read, 0);

    f.os_key_lt = 18004000; /* below 18.4: 18.3.1, 15.2, visionOS 2.3; unknown never matches */
    ASSERT_STR_EQ(conf_inv_ids(st, &f, buf, sizeof(buf)), "D1 D4 D5");
    f.platform = "ios";
    ASSERT_STR_EQ(conf_inv_ids(st, &f, buf, sizeof(buf)), "D1");
    f.os_key_lt = 18010001;
    ASSERT_STR_EQ(conf_inv_ids(st, &f, buf, sizeof(buf)), "D1 D2 D3");
    f.passcode_present = ST_INV_NO; /* reported false; unknown is not false */
    ASSERT_STR_EQ(conf_inv_ids(st, &f, buf, sizeof(buf)), "D2");
    f = (st_inventory_filter){0};
    f.passcode_present = ST_INV_YES;
    ASSERT_STR_EQ(conf_inv_ids(st, &f, buf, sizeof(buf)), "D1");
    f.passcode_present = ST_INV_NO;
    ASSERT_STR_EQ(conf_inv_ids(st, &f, buf, sizeof(buf)), "D2 D5");
    f = (st_inventory_filter){0};
    f.last_seen_before = 1000;
    ASSERT_STR_EQ(conf_inv_ids(st, &f, buf, sizeof(buf)), "D4 D6 D7");
    f.platform = "macos";
    ASSERT_STR_EQ(conf_inv_ids(st, &f, buf, sizeof(buf)), "D4");
    f = (st_inventory_filter){0};
    f.platform = "visionos";
    ASSERT_STR_EQ(conf_inv_ids(st, &f, buf, sizeof(buf)), "D5");
    f = (st_inventory_filter){0};
    f.include_unenrolled = 1;
    f.os_key_lt = 17500000;
    ASSERT_STR_EQ(conf_inv_ids(st, &f, buf, sizeof(buf)), "D4 D5 D8");

    /* Keyset pages under a filter: limit and after, no row twice, none skipped. */
    f = (st_inventory_filter){0};
    f.platform = "ios";
    f.limit = 2;
    ASSERT_STR_EQ(conf_inv_ids(st, &f, buf, sizeof(buf)), "D1 D2");
    f.after_id = "D2";
    ASSERT_STR_EQ(conf_inv_ids(st, &f, buf, sizeof(buf)), "D3 D6");
    f.after_id = "D6";
    ASSERT_STR_EQ(conf_inv_ids(st, &f, buf, sizeof(buf)), "");
    storage_fail_after(st, 1);
    ASSERT_INT_EQ(storage_inventory_list(st, &f, conf_inv_list_cb, &l), ST_ERROR);
    storage_close(st);
}

/* More rows than one chunk of the backends' list walk, filtered. */
TEST(conf_inventory_list_many)
{
    storage *st = conf_open();
    ASSERT_NOT_NULL(st);
    char id[32];
    for (int i = 0; i < 600; i++) {
        snprintf(id, sizeof(id), "M%04d", i);
        ASSERT_INT_EQ(conf_inv_device(st, id, 0, 100 + i), ST_OK);
        st_inventory x = conf_inv_blank(id, i % 3 == 0 ? "macos" : "ios", 0);
        x.os_key = 17000000 + (int64_t)(i % 10) * 1000;
        ASSERT_INT_EQ(storage_inventory_reset(st, &x), ST_OK);
    }
    struct conf_inv_list l;
    memset(&l, 0, sizeof(l));
    st_inventory_filter f = {0};
    f.platform = "ios";
    f.os_key_lt = 17005000; /* i % 10 < 5 */
    ASSERT_INT_EQ(storage_inventory_list(st, &f, conf_inv_list_cb, &l), ST_OK);
    int want = 0;
    for (int i = 0; i < 600; i++)
        want += i % 3 != 0 && i % 10 < 5;
    ASSERT_INT_EQ(l.n, want);
    storage_close(st);
}

#define CONFORMANCE_INVENTORY_TESTS                                                                \
    TEST_ENTRY(conf_inventory_reset_get), TEST_ENTRY(conf_inventory_claim),                        \
        TEST_ENTRY(conf_inventory_claim_is_atomic), TEST_ENTRY(conf_inventory_claim_race),         \
        TEST_ENTRY(conf_inventory_due), TEST_ENTRY(conf_inventory_update),                         \
        TEST_ENTRY(conf_inventory_list_filters), TEST_ENTRY(conf_inventory_list_many)

#endif
