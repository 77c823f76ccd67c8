/*
 * Desired-state reconciliation (mdm/reconcile.c) against a real SQLite store: assigning a
 * profile or app enqueues exactly its install, a second run enqueues nothing, acknowledged
 * results become installed state, unassigning removes what Orchard installed, a profile the
 * device no longer lists (ProfileList) is reinstalled, a re-enrollment starts from scratch,
 * the sensitive flag reaches the queued command, macOS gets no RemoveApplication, and a
 * refused install is not retried on every run.
 */
#include "harness.h"

#include <dirent.h>
#include <time.h>
#include <unistd.h>

#include "app.h"
#include "core/mem.h"
#include "jobs/worker.h"
#include "mdm/library.h"
#include "plist/pl.h"

static char dir[256];
static struct app app;
static int64_t alice_id;

#define WIFI_PROFILE                                                                               \
    "<?xml version=\"1.0\"?><plist version=\"1.0\"><dict>"                                         \
    "<key>PayloadType</key><string>Configuration</string>"                                         \
    "<key>PayloadVersion</key><integer>1</integer>"                                                \
    "<key>PayloadIdentifier</key><string>com.example.%s</string>"                                  \
    "<key>PayloadUUID</key><string>6C5A3B1E-1111-4A2B-9C3D-0000000000FF</string>"                  \
    "<key>PayloadContent</key><array><dict>"                                                       \
    "<key>PayloadType</key><string>com.apple.wifi.managed</string>"                                \
    "<key>PayloadVersion</key><integer>1</integer>"                                                \
    "<key>PayloadIdentifier</key><string>com.example.%s.wifi</string>"                             \
    "<key>PayloadUUID</key><string>6C5A3B1E-1111-4A2B-9C3D-000000000001</string>"                  \
    "<key>SSID_STR</key><string>Corp</string></dict></array></dict></plist>"

static void cleanup_dir(void)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    char p[600];
    while (d && (de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
        unlink(p);
    }
    if (d)
        closedir(d);
    rmdir(dir);
}

/* A fresh store with alice@example.com. */
static int setup(void)
{
    static int seq;
    char dsn[400], err[256];
    if (app.st)
        storage_close(app.st);
    config_free(app.cfg);
    snprintf(dsn, sizeof(dsn), "sqlite:%s/db-%d.sqlite", dir, ++seq);
    memset(&app, 0, sizeof(app));
    app.cfg = config_new(dir); /* the defaults (job_batch) */
    app.st = storage_open(dsn, err, sizeof(err));
    if (app.st == NULL) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    st_user u = {.email = "alice@example.com",
                 .managed_apple_id = "alice@appleid.example.com",
                 .created_at = 1};
    if (storage_user_add(app.st, &u) != 0)
        return -1;
    alice_id = u.id;
    return 0;
}

/* Authenticate + TokenUpdate of a user enrollment, as check-in does (then the hook). */
static int enroll(const char *id, const char *product)
{
    st_enrollment e = {.id = (char *)id,
                       .type = ST_ENR_USER,
                       .user_id = alice_id,
                       .topic = "com.apple.mgmt.test",
                       .product_name = (char *)product,
                       .auth_state = "active",
                       .enrolled_at = 1};
    if (storage_enrollment_authenticate(app.st, &e) != 0 ||
        storage_enrollment_token_update(app.st, id, "abcd", "magic", app_now(&app)) != 0)
        return -1;
    lib_on_enrollment_complete(&app, id);
    return 0;
}

static int64_t add_profile(const char *name, int sensitive)
{
    char *xml = xasprintf(WIFI_PROFILE, name, name);
    char err[512];
    st_profile p = {0};
    int64_t id = -1;
    if (lib_profile_prepare((const uint8_t *)xml, strlen(xml),
                            LIB_OS_BIT(UE_OS_IOS) | LIB_OS_BIT(UE_OS_MACOS), NULL, NULL, &p, err,
                            sizeof(err)) == 0) {
        p.sensitive = sensitive;
        p.created_at = 1;
        if (storage_profile_add(app.st, &p) == 0)
            id = p.id;
    } else {
        fprintf(stderr, "profile: %s\n", err);
    }
    st_profile_cleanup(&p);
    free(xml);
    return id;
}

static int64_t add_app(const char *json)
{
    char err[512];
    st_app a = {0};
    int64_t id = -1;
    if (lib_app_prepare(json, strlen(json), NULL, NULL, &a, err, sizeof(err)) == 0) {
        a.created_at = 1;
        if (storage_app_add(app.st, &a) == 0)
            id = a.id;
    } else {
        fprintf(stderr, "app: %s\n", err);
    }
    st_app_cleanup(&a);
    return id;
}

/* Reconciles an assignment target as the API does: a job, worked to the end here. */
static void reconcile_target(int target_type, const char *target)
{
    int64_t job = 0;
    if (job_submit_reconcile(&app, target_type, target, 0, 0, "test", &job) == 0)
        job_worker_run_once(&app, "unit");
}

static int64_t assign(int kind, int64_t item, int target_type, const char *target)
{
    st_assignment a = {.item_kind = kind,
                       .item_id = item,
                       .target_type = target_type,
                       .target = (char *)target,
                       .created_at = 1};
    if (storage_assignment_add(app.st, &a) != 0)
        return -1;
    reconcile_target(target_type, target);
    return a.id;
}

static void unassign(int64_t id)
{
    st_assignment a = {0};
    if (storage_assignment_get(app.st, id, &a) == 0 && storage_assignment_delete(app.st, id) == 0)
        reconcile_target(a.target_type, a.target);
    st_assignment_cleanup(&a);
}

/* Pending commands of an enrollment, as "Type[:Identifier]" lines, oldest first. */
static char pending[4096];
static int npending;
static int nsensitive;

static int add_pending(const st_command *c, void *ctx)
{
    (void)ctx;
    if (c->status != ST_CMD_QUEUED && c->status != ST_CMD_NOTNOW)
        return 0;
    char perr[64], line[256];
    plist_t p = pl_parse(c->body, c->body_len, perr, sizeof(perr));
    plist_t cmd = p ? pl_get_typed(p, "Command", PLIST_DICT) : NULL;
    const char *ident = cmd ? pl_get_string(cmd, "Identifier") : NULL;
    snprintf(line, sizeof(line), "%s%s%s\n", c->request_type, ident ? ":" : "", ident ? ident : "");
    /* command_list is newest first: prepend */
    size_t l = strlen(line), have = strlen(pending);
    if (l + have < sizeof(pending)) {
        memmove(pending + l, pending, have + 1);
        memcpy(pending, line, l);
    }
    npending++;
    nsensitive += c->sensitive;
    plist_free(p);
    return 0;
}

static const char *queue_of(const char *eid)
{
    pending[0] = '\0';
    npending = nsensitive = 0;
    storage_command_list(app.st, eid, 0, add_pending, NULL);
    return pending;
}

/* The device answers every pending command (Acknowledged, or status for all). */
static int answer_all(const char *eid, int status, const char *extra_keys)
{
    int n = 0;
    st_command c = {0};
    while (storage_queue_next(app.st, eid, 1, app_now(&app), &c) == 0) {
        char *xml = xasprintf("<?xml version=\"1.0\"?><plist version=\"1.0\"><dict>"
                              "<key>Status</key><string>%s</string>"
                              "<key>CommandUUID</key><string>%s</string>%s</dict></plist>",
                              status == ST_CMD_ACKNOWLEDGED ? "Acknowledged" : "Error", c.uuid,
                              extra_keys ? extra_keys : "");
        char perr[64];
        plist_t rep = pl_parse(xml, strlen(xml), perr, sizeof(perr));
        storage_queue_report(app.st, eid, c.uuid, status, xml, strlen(xml), app_now(&app));
        lib_on_report(&app, eid, c.uuid, status, rep);
        plist_free(rep);
        free(xml);
        st_command_cleanup(&c);
        n++;
    }
    return n;
}

/* A ProfileList result listing the given identifiers (NULL-terminated). */
static void profile_list(const char *eid, const char *const *idents)
{
    char body[2048] = "";
    for (const char *const *i = idents; *i; i++) {
        size_t l = strlen(body);
        snprintf(body + l, sizeof(body) - l,
                 "<dict><key>PayloadIdentifier</key><string>%s</string></dict>", *i);
    }
    char *xml = xasprintf("<?xml version=\"1.0\"?><plist version=\"1.0\"><dict>"
                          "<key>Status</key><string>Acknowledged</string>"
                          "<key>CommandUUID</key><string>0B1C2D3E-0000-4000-8000-000000000001"
                          "</string><key>ProfileList</key><array>%s</array></dict></plist>",
                          body);
    char perr[64];
    plist_t rep = pl_parse(xml, strlen(xml), perr, sizeof(perr));
    lib_on_report(&app, eid, "0B1C2D3E-0000-4000-8000-000000000001", ST_CMD_ACKNOWLEDGED, rep);
    plist_free(rep);
    free(xml);
}

TEST(assign_profile_to_user)
{
    ASSERT_INT_EQ(setup(), 0);
    ASSERT_INT_EQ(enroll("E1", "iPhone14,5"), 0);
    ASSERT_STR_EQ(queue_of("E1"), "");
    int64_t p = add_profile("corp", 0);
    ASSERT(p > 0);
    ASSERT(assign(ST_ITEM_PROFILE, p, ST_TARGET_USER, "alice@example.com") > 0);
    ASSERT_STR_EQ(queue_of("E1"), "InstallProfile\n");
    /* Idempotent: nothing changed, nothing enqueued. */
    ASSERT_INT_EQ(lib_reconcile(&app, "E1", NULL), 0);
    ASSERT_INT_EQ(lib_reconcile(&app, "E1", NULL), 0);
    ASSERT_STR_EQ(queue_of("E1"), "InstallProfile\n");
    ASSERT_INT_EQ(answer_all("E1", ST_CMD_ACKNOWLEDGED, NULL), 1);
    ASSERT_INT_EQ(lib_reconcile(&app, "E1", NULL), 0);
    ASSERT_STR_EQ(queue_of("E1"), "");
}

TEST(unassign_removes)
{
    ASSERT_INT_EQ(setup(), 0);
    ASSERT_INT_EQ(enroll("E1", "iPhone14,5"), 0);
    int64_t p = add_profile("corp", 0);
    int64_t a = assign(ST_ITEM_PROFILE, p, ST_TARGET_DOMAIN, "example.com");
    ASSERT_INT_EQ(answer_all("E1", ST_CMD_ACKNOWLEDGED, NULL), 1);
    unassign(a);
    ASSERT_STR_EQ(queue_of("E1"), "RemoveProfile:com.example.corp\n");
    ASSERT_INT_EQ(lib_reconcile(&app, "E1", NULL), 0);
    ASSERT_STR_EQ(queue_of("E1"), "RemoveProfile:com.example.corp\n");
    ASSERT_INT_EQ(answer_all("E1", ST_CMD_ACKNOWLEDGED, NULL), 1);
    ASSERT_INT_EQ(lib_reconcile(&app, "E1", NULL), 0);
    ASSERT_STR_EQ(queue_of("E1"), "");
}

TEST(unassign_before_install_acknowledged)
{
    ASSERT_INT_EQ(setup(), 0);
    ASSERT_INT_EQ(enroll("E1", "iPhone14,5"), 0);
    int64_t p = add_profile("corp", 0);
    int64_t a = assign(ST_ITEM_PROFILE, p, ST_TARGET_ENROLLMENT, "E1");
    unassign(a);
    /* The install is still queued: the removal follows it in queue order. */
    ASSERT_STR_EQ(queue_of("E1"), "InstallProfile\nRemoveProfile:com.example.corp\n");
    ASSERT_INT_EQ(answer_all("E1", ST_CMD_ACKNOWLEDGED, NULL), 2);
    ASSERT_INT_EQ(lib_reconcile(&app, "E1", NULL), 0);
    ASSERT_STR_EQ(queue_of("E1"), "");
}

TEST(reassign_while_removal_queued)
{
    ASSERT_INT_EQ(setup(), 0);
    ASSERT_INT_EQ(enroll("E1", "iPhone14,5"), 0);
    int64_t p = add_profile("corp", 0);
    int64_t a = assign(ST_ITEM_PROFILE, p, ST_TARGET_USER, "alice@example.com");
    ASSERT_INT_EQ(answer_all("E1", ST_CMD_ACKNOWLEDGED, NULL), 1);
    unassign(a);
    assign(ST_ITEM_PROFILE, p, ST_TARGET_USER, "alice@example.com");
    /* The queued removal runs first; the profile is installed again after it. */
    ASSERT_STR_EQ(queue_of("E1"), "RemoveProfile:com.example.corp\nInstallProfile\n");
    /* Even if the device still lists it before the removal ran. */
    static const char *const have[] = {"com.example.corp", NULL};
    profile_list("E1", have);
    ASSERT_STR_EQ(queue_of("E1"), "RemoveProfile:com.example.corp\nInstallProfile\n");
    ASSERT_INT_EQ(answer_all("E1", ST_CMD_ACKNOWLEDGED, NULL), 2);
    ASSERT_INT_EQ(lib_reconcile(&app, "E1", NULL), 0);
    ASSERT_STR_EQ(queue_of("E1"), "");
}

TEST(profile_missing_from_profile_list_is_reinstalled)
{
    ASSERT_INT_EQ(setup(), 0);
    ASSERT_INT_EQ(enroll("E1", "iPhone14,5"), 0);
    int64_t p = add_profile("corp", 0);
    int64_t q = add_profile("other", 0);
    assign(ST_ITEM_PROFILE, p, ST_TARGET_USER, "alice@example.com");
    assign(ST_ITEM_PROFILE, q, ST_TARGET_USER, "alice@example.com");
    ASSERT_INT_EQ(answer_all("E1", ST_CMD_ACKNOWLEDGED, NULL), 2);
    /* The device lists both (plus the enrollment profile): nothing to do. */
    static const char *const both[] = {"io.orchard.enrollment", "com.example.corp",
                                       "com.example.other", NULL};
    profile_list("E1", both);
    ASSERT_STR_EQ(queue_of("E1"), "");
    /* The user removed com.example.other: exactly one reinstall, and only once. */
    static const char *const one[] = {"io.orchard.enrollment", "com.example.corp", NULL};
    profile_list("E1", one);
    ASSERT_STR_EQ(queue_of("E1"), "InstallProfile\n");
    profile_list("E1", one);
    ASSERT_INT_EQ(lib_reconcile(&app, "E1", NULL), 0);
    ASSERT_STR_EQ(queue_of("E1"), "InstallProfile\n");
    ASSERT_INT_EQ(answer_all("E1", ST_CMD_ACKNOWLEDGED, NULL), 1);
    ASSERT_INT_EQ(lib_reconcile(&app, "E1", NULL), 0);
    ASSERT_STR_EQ(queue_of("E1"), "");
}

TEST(profile_list_learns_installed)
{
    ASSERT_INT_EQ(setup(), 0);
    ASSERT_INT_EQ(enroll("E1", "iPhone14,5"), 0);
    int64_t p = add_profile("corp", 0);
    assign(ST_ITEM_PROFILE, p, ST_TARGET_USER, "alice@example.com");
    /* The queued install is lost (say, cleared) but the device has the profile. */
    ASSERT_INT_EQ(storage_queue_clear(app.st, "E1"), 0);
    static const char *const have[] = {"com.example.corp", NULL};
    profile_list("E1", have);
    ASSERT_STR_EQ(queue_of("E1"), "");
    ASSERT_INT_EQ(lib_reconcile(&app, "E1", NULL), 0);
    ASSERT_STR_EQ(queue_of("E1"), "");
}

TEST(reenroll_starts_over)
{
    ASSERT_INT_EQ(setup(), 0);
    ASSERT_INT_EQ(enroll("E1", "iPhone14,5"), 0);
    int64_t p = add_profile("corp", 0);
    int64_t a = add_app("{\"bundle_id\":\"com.example.docs\"}");
    assign(ST_ITEM_PROFILE, p, ST_TARGET_USER, "alice@example.com");
    assign(ST_ITEM_APP, a, ST_TARGET_USER, "alice@example.com");
    ASSERT_INT_EQ(answer_all("E1", ST_CMD_ACKNOWLEDGED, NULL), 2);
    ASSERT_STR_EQ(queue_of("E1"), "");
    /* A new Authenticate + TokenUpdate under the same EnrollmentID: everything again, once. */
    ASSERT_INT_EQ(enroll("E1", "iPhone14,5"), 0);
    ASSERT_STR_EQ(queue_of("E1"), "InstallProfile\nInstallApplication:com.example.docs\n");
    ASSERT_INT_EQ(lib_reconcile(&app, "E1", NULL), 0);
    ASSERT_INT_EQ((queue_of("E1"), npending), 2);
    /* A second device of the same user gets the same. */
    ASSERT_INT_EQ(enroll("E2", "iPhone15,2"), 0);
    ASSERT_STR_EQ(queue_of("E2"), "InstallProfile\nInstallApplication:com.example.docs\n");
}

TEST(app_install_and_remove)
{
    ASSERT_INT_EQ(setup(), 0);
    ASSERT_INT_EQ(enroll("E1", "iPhone14,5"), 0);
    int64_t a = add_app("{\"itunes_store_id\":361309726,\"configuration\":{\"k\":\"v\"}}");
    int64_t as = assign(ST_ITEM_APP, a, ST_TARGET_USER, "alice@example.com");
    ASSERT_STR_EQ(queue_of("E1"), "InstallApplication\n");
    /* The store id's bundle id is learned from the result. */
    ASSERT_INT_EQ(answer_all("E1", ST_CMD_ACKNOWLEDGED,
                             "<key>Identifier</key><string>com.example.pages</string>"
                             "<key>State</key><string>Managed</string>"),
                  1);
    unassign(as);
    ASSERT_STR_EQ(queue_of("E1"), "RemoveApplication:com.example.pages\n");
}

TEST(managed_application_list_missing_app)
{
    ASSERT_INT_EQ(setup(), 0);
    ASSERT_INT_EQ(enroll("E1", "iPhone14,5"), 0);
    int64_t a = add_app("{\"bundle_id\":\"com.example.docs\"}");
    assign(ST_ITEM_APP, a, ST_TARGET_USER, "alice@example.com");
    ASSERT_INT_EQ(answer_all("E1", ST_CMD_ACKNOWLEDGED, NULL), 1);
    char *xml = xasprintf("<?xml version=\"1.0\"?><plist version=\"1.0\"><dict>"
                          "<key>ManagedApplicationList</key><dict>"
                          "<key>com.example.docs</key><dict><key>Status</key>"
                          "<string>Managed</string></dict></dict></dict></plist>");
    char perr[64];
    plist_t rep = pl_parse(xml, strlen(xml), perr, sizeof(perr));
    lib_on_report(&app, "E1", "0B1C2D3E-0000-4000-8000-000000000002", ST_CMD_ACKNOWLEDGED, rep);
    plist_free(rep);
    free(xml);
    ASSERT_STR_EQ(queue_of("E1"), "");
    xml = xasprintf("<?xml version=\"1.0\"?><plist version=\"1.0\"><dict>"
                    "<key>ManagedApplicationList</key><dict/></dict></plist>");
    rep = pl_parse(xml, strlen(xml), perr, sizeof(perr));
    lib_on_report(&app, "E1", "0B1C2D3E-0000-4000-8000-000000000003", ST_CMD_ACKNOWLEDGED, rep);
    plist_free(rep);
    free(xml);
    ASSERT_STR_EQ(queue_of("E1"), "InstallApplication:com.example.docs\n");
}

TEST(macos_no_remove_application)
{
    ASSERT_INT_EQ(setup(), 0);
    ASSERT_INT_EQ(enroll("M1", "MacBookPro18,1"), 0);
    int64_t a = add_app("{\"bundle_id\":\"com.example.docs\",\"remove_on_unenroll\":true}");
    int64_t p = add_profile("corp", 0);
    int64_t as = assign(ST_ITEM_APP, a, ST_TARGET_USER, "alice@example.com");
    int64_t ps = assign(ST_ITEM_PROFILE, p, ST_TARGET_USER, "alice@example.com");
    ASSERT_STR_EQ(queue_of("M1"), "InstallApplication:com.example.docs\nInstallProfile\n");
    ASSERT_INT_EQ(answer_all("M1", ST_CMD_ACKNOWLEDGED, NULL), 2);
    unassign(as);
    unassign(ps);
    /* RemoveApplication is not allowed in macOS User Enrollment (PROTOCOL.md 13.3). */
    ASSERT_STR_EQ(queue_of("M1"), "RemoveProfile:com.example.corp\n");
    ASSERT_INT_EQ(lib_reconcile(&app, "M1", NULL), 0);
    ASSERT_STR_EQ(queue_of("M1"), "RemoveProfile:com.example.corp\n");
}

TEST(platform_filter)
{
    ASSERT_INT_EQ(setup(), 0);
    ASSERT_INT_EQ(enroll("V1", "RealityDevice14,1"), 0);
    /* Valid for iOS and macOS only: never sent to visionOS. */
    int64_t p = add_profile("corp", 0);
    assign(ST_ITEM_PROFILE, p, ST_TARGET_USER, "alice@example.com");
    ASSERT_STR_EQ(queue_of("V1"), "");
}

TEST(sensitive_flag_carried)
{
    ASSERT_INT_EQ(setup(), 0);
    ASSERT_INT_EQ(enroll("E1", "iPhone14,5"), 0);
    int64_t p = add_profile("secret", 1);
    int64_t a = add_app("{\"bundle_id\":\"com.example.vault\",\"sensitive\":true}");
    assign(ST_ITEM_PROFILE, p, ST_TARGET_USER, "alice@example.com");
    assign(ST_ITEM_APP, a, ST_TARGET_USER, "alice@example.com");
    queue_of("E1");
    ASSERT_INT_EQ(npending, 2);
    ASSERT_INT_EQ(nsensitive, 2);
}

TEST(failed_install_not_retried)
{
    ASSERT_INT_EQ(setup(), 0);
    ASSERT_INT_EQ(enroll("E1", "iPhone14,5"), 0);
    int64_t p = add_profile("corp", 0);
    assign(ST_ITEM_PROFILE, p, ST_TARGET_USER, "alice@example.com");
    ASSERT_INT_EQ(answer_all("E1", ST_CMD_ERROR, NULL), 1);
    ASSERT_INT_EQ(lib_reconcile(&app, "E1", NULL), 0);
    ASSERT_INT_EQ(lib_reconcile(&app, "E1", NULL), 0);
    ASSERT_STR_EQ(queue_of("E1"), "");
}

TEST(deleted_item_is_removed)
{
    ASSERT_INT_EQ(setup(), 0);
    ASSERT_INT_EQ(enroll("E1", "iPhone14,5"), 0);
    int64_t p = add_profile("corp", 0);
    assign(ST_ITEM_PROFILE, p, ST_TARGET_USER, "alice@example.com");
    ASSERT_INT_EQ(answer_all("E1", ST_CMD_ACKNOWLEDGED, NULL), 1);
    ASSERT_INT_EQ(storage_profile_delete(app.st, p), 0);
    int64_t job = 0;
    ASSERT_INT_EQ(job_submit_reconcile(&app, ST_JOB_ITEM, NULL, ST_ITEM_PROFILE, p, "t", &job), 0);
    ASSERT_INT_EQ(job_worker_run_once(&app, "unit"), 1);
    ASSERT_STR_EQ(queue_of("E1"), "RemoveProfile:com.example.corp\n");
}

/* The one pending command of an enrollment (uuid and body copied out). */
struct one_cmd {
    int n;
    char uuid[64];
    char *body;
};

static int take_cmd(const st_command *c, void *ctx)
{
    struct one_cmd *o = ctx;
    if (c->status == ST_CMD_QUEUED && o->n++ == 0) {
        snprintf(o->uuid, sizeof(o->uuid), "%s", c->uuid);
        o->body = xstrdup(c->body);
    }
    return 0;
}

/* The body with its CommandUUID blanked, to compare the rest. */
static char *without_uuid(const struct one_cmd *o)
{
    char *b = xstrdup(o->body);
    char *at = strstr(b, o->uuid);
    if (at)
        memset(at, 'X', strlen(o->uuid));
    return b;
}

/*
 * A batch builds an install command once per platform and kind of enrollment and gives each
 * enrollment a copy with its own CommandUUID (a library one), identical otherwise; it still
 * validates per platform (the Mac's is its own).
 */
/* Reconciles stored enrollments with one shared batch (as a job's page does). */
static int reconcile_batch(char *const *ids, size_t n, int push, struct lib_reconcile_stats *s)
{
    lib_batch *b = lib_batch_new(push);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        st_enrollment e = {0};
        rc = storage_enrollment_get(app.st, ids[i], &e);
        if (rc == 0)
            rc = lib_reconcile_enrollment(&app, b, &e, s);
        st_enrollment_cleanup(&e);
    }
    lib_batch_free(b);
    return rc;
}

static int64_t outbox_rows(void)
{
    int64_t n = -1;
    storage_push_pending(app.st, &n);
    return n;
}

TEST(batch_copies_one_command_per_platform)
{
    ASSERT_INT_EQ(setup(), 0);
    char *ids[] = {"B1", "B2", "B3"};
    ASSERT_INT_EQ(enroll("B1", "iPhone14,5"), 0);
    ASSERT_INT_EQ(enroll("B2", "iPhone15,2"), 0);
    ASSERT_INT_EQ(enroll("B3", "Mac14,2"), 0);
    int64_t p = add_profile("shared", 0);
    st_assignment a = {.item_kind = ST_ITEM_PROFILE,
                       .item_id = p,
                       .target_type = ST_TARGET_DOMAIN,
                       .target = "example.com",
                       .created_at = 1};
    ASSERT_INT_EQ(storage_assignment_add(app.st, &a), 0);
    struct lib_reconcile_stats s = {0};
    int64_t pushes = outbox_rows();
    ASSERT_INT_EQ(storage_tx_begin(app.st), 0);
    ASSERT_INT_EQ(reconcile_batch(ids, 3, 0, &s), 0);
    ASSERT_INT_EQ(storage_tx_commit(app.st), 0);
    ASSERT_INT_EQ(outbox_rows(), pushes); /* push = 0: the caller pushes */
    ASSERT_INT_EQ(s.enrollments, 3);
    ASSERT_INT_EQ(s.installs, 3);
    struct one_cmd c[3] = {{0}};
    for (int i = 0; i < 3; i++) {
        storage_command_list(app.st, ids[i], 0, take_cmd, &c[i]);
        ASSERT_INT_EQ(c[i].n, 1);
        ASSERT(lib_command_uuid_is_ours(c[i].uuid));
        st_item_state row = {0};
        ASSERT_INT_EQ(storage_item_state_by_command(app.st, c[i].uuid, &row), 0);
        ASSERT_STR_EQ(row.enrollment_id, ids[i]);
        st_item_state_cleanup(&row);
    }
    ASSERT(strcmp(c[0].uuid, c[1].uuid) != 0);
    char *b0 = without_uuid(&c[0]), *b1 = without_uuid(&c[1]);
    ASSERT_STR_EQ(b0, b1);
    free(b0);
    free(b1);
    for (int i = 0; i < 3; i++)
        free(c[i].body);
    /* Nothing more on a second batch. */
    memset(&s, 0, sizeof(s));
    ASSERT_INT_EQ(reconcile_batch(ids, 3, 1, &s), 0);
    ASSERT_INT_EQ(s.installs, 0);
}

/*
 * A crash in the middle of a job: the batch in flight was never committed, the lease runs out,
 * another worker takes the job over from the last committed batch, and every enrollment ends
 * with exactly one install. A worker whose lease was taken over loses its batch.
 */
TEST(job_resumes_after_crash_without_duplicates)
{
    ASSERT_INT_EQ(setup(), 0);
    char err[128];
    ASSERT_INT_EQ(config_set(app.cfg, "job_batch", "2", err, sizeof(err)), 0);
    char *ids[] = {"C1", "C2", "C3", "C4", "C5"};
    for (int i = 0; i < 5; i++)
        ASSERT_INT_EQ(enroll(ids[i], "iPhone14,5"), 0);
    int64_t p = add_profile("crash", 0);
    st_assignment a = {.item_kind = ST_ITEM_PROFILE,
                       .item_id = p,
                       .target_type = ST_TARGET_USER,
                       .target = "alice@example.com",
                       .created_at = 1};
    ASSERT_INT_EQ(storage_assignment_add(app.st, &a), 0);
    int64_t job = 0;
    ASSERT_INT_EQ(job_submit_reconcile(&app, ST_JOB_USER, "alice@example.com", 0, 0, "t", &job), 0);
    /* Instance A claims it, commits one batch (C1, C2), and dies inside the next (C3, C4). */
    st_job j = {0};
    ASSERT_INT_EQ(storage_job_claim(app.st, "A", app_now(&app), JOB_LEASE, &j), 0);
    ASSERT_INT_EQ(j.id, job);
    struct lib_reconcile_stats s = {0};
    ASSERT_INT_EQ(storage_tx_begin(app.st), 0);
    ASSERT_INT_EQ(reconcile_batch(ids, 2, 0, &s), 0);
    st_job_progress pr = {job, "C2", 5, 2, 0, s.installs, 0};
    ASSERT_INT_EQ(storage_job_progress(app.st, "A", app_now(&app), JOB_LEASE, &pr), 0);
    ASSERT_INT_EQ(storage_tx_commit(app.st), 0);
    ASSERT_INT_EQ(storage_tx_begin(app.st), 0);
    ASSERT_INT_EQ(reconcile_batch(ids + 2, 2, 0, &s), 0);
    storage_tx_rollback(app.st); /* kill -9: never committed */
    st_job_cleanup(&j);
    /* B sees nothing to take while A's lease runs, then takes over where A was. */
    ASSERT_INT_EQ(job_worker_run_once(&app, "B"), 0);
    ASSERT_STR_EQ(queue_of("C3"), "");
    atomic_fetch_add(&app.clock_skew, JOB_LEASE + 1);
    ASSERT_INT_EQ(job_worker_run_once(&app, "B"), 1);
    for (int i = 0; i < 5; i++)
        ASSERT_STR_EQ(queue_of(ids[i]), "InstallProfile\n");
    ASSERT_INT_EQ(storage_job_get(app.st, job, &j), 0);
    ASSERT_INT_EQ(j.state, ST_JOB_DONE);
    ASSERT_INT_EQ(j.done, 5);
    ASSERT_INT_EQ(j.total, 5);
    ASSERT_INT_EQ(j.installs, 5);
    ASSERT_STR_EQ(j.claimed_by ? j.claimed_by : "", "");
    st_job_cleanup(&j);
    /* A's late batch (its lease is gone) changes nothing. */
    ASSERT_INT_EQ(storage_tx_begin(app.st), 0);
    ASSERT_INT_EQ(storage_job_progress(app.st, "A", app_now(&app), JOB_LEASE, &pr), ST_ECONFLICT);
    storage_tx_rollback(app.st);
}

TEST(unenrolled_or_incomplete_untouched)
{
    ASSERT_INT_EQ(setup(), 0);
    st_enrollment e = {.id = "E9",
                       .type = ST_ENR_USER,
                       .user_id = alice_id,
                       .product_name = "iPhone14,5",
                       .auth_state = "active"};
    ASSERT_INT_EQ(storage_enrollment_authenticate(app.st, &e), 0);
    int64_t p = add_profile("corp", 0);
    assign(ST_ITEM_PROFILE, p, ST_TARGET_USER, "alice@example.com");
    ASSERT_STR_EQ(queue_of("E9"), ""); /* no TokenUpdate yet */
}

static void teardown(void)
{
    if (app.st)
        storage_close(app.st);
    app.st = NULL;
    config_free(app.cfg);
    app.cfg = NULL;
    cleanup_dir();
}

int main(int argc, char **argv)
{
    static const struct harness_test tests[] = {
        TEST_ENTRY(assign_profile_to_user),
        TEST_ENTRY(unassign_removes),
        TEST_ENTRY(unassign_before_install_acknowledged),
        TEST_ENTRY(reassign_while_removal_queued),
        TEST_ENTRY(profile_missing_from_profile_list_is_reinstalled),
        TEST_ENTRY(profile_list_learns_installed),
        TEST_ENTRY(reenroll_starts_over),
        TEST_ENTRY(app_install_and_remove),
        TEST_ENTRY(managed_application_list_missing_app),
        TEST_ENTRY(macos_no_remove_application),
        TEST_ENTRY(platform_filter),
        TEST_ENTRY(sensitive_flag_carried),
        TEST_ENTRY(failed_install_not_retried),
        TEST_ENTRY(deleted_item_is_removed),
        TEST_ENTRY(batch_copies_one_command_per_platform),
        TEST_ENTRY(job_resumes_after_crash_without_duplicates),
        TEST_ENTRY(unenrolled_or_incomplete_untouched),
        {NULL, NULL},
    };
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof(dir), "%s/orchard-reconcile-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    int rc = harness_run(tests, argc, argv);
    teardown();
    return rc;
}
