/*
 * The SQLite storage backend: storage_ops over one database file. This is the only file in
 * Orchard that includes sqlite3.h. It is not a general SQL layer: every statement is a constant
 * in the table below, prepared once per connection and reused.
 *
 * Threads. libmicrohttpd calls in from a thread pool, and a sqlite3 connection must not be used
 * by two threads at once. Each thread therefore gets its own connection, opened lazily on its
 * first call and found again through a pthread key; the storage object keeps every connection
 * in a mutex-protected list so storage_close can close them all, and a thread that exits closes
 * its own (the key's destructor). Connections are opened with SQLITE_OPEN_NOMUTEX: a connection
 * is never shared, so SQLite's per-connection mutex would be pure overhead.
 *
 * Concurrency between connections is SQLite's: WAL mode, so readers never block the writer,
 * and a 5 s busy timeout, so a writer waits for the write lock instead of failing with
 * SQLITE_BUSY. Multi-statement writes run in BEGIN IMMEDIATE transactions, which take the write
 * lock up front (through the busy handler) instead of upgrading a read transaction later, which
 * in WAL mode can fail at once with SQLITE_BUSY_SNAPSHOT. Single-statement writes need no
 * explicit transaction.
 *
 * Checkpoints. SQLite copies the WAL back into the database file (a checkpoint, with an fsync of
 * each file) every 1,000 pages by default, in the connection whose commit crossed the mark: a
 * device request or a reconciliation batch would wait for two fsyncs every 4 MiB written (on this
 * project's test VM that was most of a 100,000-enrollment job's time). Here a checkpointer thread
 * with its own connection does it instead (sq_wal_hook wakes it, a PASSIVE checkpoint: it never
 * blocks readers or writers). A WAL checkpointed to its end is restarted by the next writer; a
 * writer that keeps writing faster than the checkpointer copies never finds it so, so once the WAL
 * holds SQ_CKPT_INLINE pages the committing connection checkpoints itself as SQLite would, which
 * bounds the WAL (and journal_size_limit truncates it afterwards).
 *
 * Durability. synchronous=NORMAL in WAL mode: a commit is written to the WAL file (the OS
 * page cache) before it returns, and fsync happens at checkpoints. A process crash, including
 * kill -9, loses no acknowledged transaction, because the data is in the kernel's hands; a power
 * failure or OS crash may roll back the last few commits, but never corrupts the database.
 * That is the right trade for an MDM server (a lost command result is re-sent by the device,
 * PROTOCOL.md section 9.3); FULL would add an fsync to every device request.
 *
 * Schema. Versioned migrations (sq_migrations below) are applied in order at open, each in its
 * own BEGIN IMMEDIATE transaction, and recorded in schema_migrations; a database newer than
 * this build is refused. The command queue is split in two tables: `commands` holds only
 * pending rows (queued, sent-but-unanswered, NotNow), so the device's hot query scans a tiny
 * index range; `command_history` holds terminal rows with their results.
 */
#include "storage/sqlite/sqlite.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/log.h"
#include "core/mem.h"
#include "storage/push_batch.h"

#define SQ_BUSY_TIMEOUT_MS 5000
/*
 * Per-connection settings (foreign keys and synchronous are per connection in SQLite).
 * mmap_size: read pages straight from the OS page cache, which every thread's connection (and
 * every process) shares, instead of copying them into a private page cache per connection with
 * a pread each; the default 2 MB private cache thrashes once the hot tables outgrow it (10,000
 * enrollments with their sessions is about 7 MB). 256 MiB is a cap on address space, not memory.
 * journal_size_limit: a WAL that grew during a burst is truncated back to 64 MiB at checkpoint.
 */
#define SQ_CONN_PRAGMAS                                                                            \
    "PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL; PRAGMA mmap_size = 268435456; "        \
    "PRAGMA journal_size_limit = 67108864;"
/* Lists are read this many rows at a time; no statement is open while the callback runs. */
#define SQ_LIST_CHUNK 256
/* WAL pages after which the checkpointer is woken (SQLite's own autocheckpoint default), and
 * after which the committing connection checkpoints itself (64 MiB of 4 KiB pages). */
#define SQ_CKPT_BACKGROUND 1000
#define SQ_CKPT_INLINE 16384

/* ---- schema ---- */

/*
 * Migration 1, the initial schema. Notes:
 *  - emails are stored lowercase (lower() on insert and lookup);
 *  - user_id columns are NULL when the record has "0 = none";
 *  - commands.seq is AUTOINCREMENT so a seq is never reused after its row moves to history
 *    (command_history keeps the same seq as its primary key, giving a stable creation order);
 *  - commands_next is replaced by migration 2.
 */
static const char sq_schema_v1[] =
    "CREATE TABLE users ("
    " id INTEGER PRIMARY KEY,"
    " email TEXT NOT NULL UNIQUE,"
    " managed_apple_id TEXT,"
    " password_hash TEXT,"
    " idp_subject TEXT,"
    " created_at INTEGER NOT NULL,"
    " disabled INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE api_keys ("
    " id INTEGER PRIMARY KEY,"
    " name TEXT NOT NULL,"
    " key_hash TEXT NOT NULL UNIQUE,"
    " created_at INTEGER NOT NULL);"
    "CREATE TABLE sessions ("
    " token_hash TEXT PRIMARY KEY,"
    " user_id INTEGER NOT NULL REFERENCES users (id),"
    " method TEXT NOT NULL,"
    " issued_at INTEGER NOT NULL,"
    " expires_at INTEGER NOT NULL DEFAULT 0,"
    " enrollment_id TEXT,"
    " revoked_at INTEGER NOT NULL DEFAULT 0,"
    " machine_info TEXT);"
    "CREATE INDEX sessions_enrollment ON sessions (enrollment_id) WHERE enrollment_id IS NOT NULL;"
    "CREATE TABLE scep_challenges ("
    " challenge_hash TEXT PRIMARY KEY,"
    " user_id INTEGER REFERENCES users (id),"
    " session_hash TEXT,"
    " expires_at INTEGER NOT NULL,"
    " used INTEGER NOT NULL DEFAULT 0,"
    " used_at INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE certs ("
    " fingerprint TEXT PRIMARY KEY,"
    " serial TEXT NOT NULL UNIQUE,"
    " subject TEXT,"
    " user_id INTEGER REFERENCES users (id),"
    " session_hash TEXT,"
    " enrollment_id TEXT,"
    " not_after INTEGER NOT NULL,"
    " issued_at INTEGER NOT NULL,"
    " revoked_at INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX certs_enrollment ON certs (enrollment_id) WHERE enrollment_id IS NOT NULL;"
    "CREATE TABLE enrollments ("
    " id TEXT PRIMARY KEY,"
    " type INTEGER NOT NULL,"
    " parent_id TEXT,"
    " user_id INTEGER REFERENCES users (id),"
    " topic TEXT,"
    " cert_fingerprint TEXT,"
    " push_token TEXT,"
    " push_magic TEXT,"
    " push_token_dead INTEGER NOT NULL DEFAULT 0,"
    " os_version TEXT,"
    " build_version TEXT,"
    " product_name TEXT,"
    " device_name TEXT,"
    " model TEXT,"
    " auth_state TEXT NOT NULL DEFAULT 'active',"
    " auth_state_since INTEGER NOT NULL DEFAULT 0,"
    " last_auth_at INTEGER NOT NULL DEFAULT 0,"
    " last_auth_method TEXT,"
    " enrolled_at INTEGER NOT NULL DEFAULT 0,"
    " token_updated_at INTEGER NOT NULL DEFAULT 0,"
    " last_seen_at INTEGER NOT NULL DEFAULT 0,"
    " unenrolled_at INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX enrollments_user ON enrollments (user_id, id);"
    "CREATE INDEX enrollments_parent ON enrollments (parent_id) WHERE parent_id IS NOT NULL;"
    "CREATE TABLE commands ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " uuid TEXT NOT NULL UNIQUE,"
    " enrollment_id TEXT NOT NULL REFERENCES enrollments (id),"
    " request_type TEXT NOT NULL,"
    " body BLOB NOT NULL,"
    " priority INTEGER NOT NULL DEFAULT 0,"
    " status INTEGER NOT NULL DEFAULT 0 CHECK (status IN (0, 1)),"
    " sensitive INTEGER NOT NULL DEFAULT 0,"
    " created_at INTEGER NOT NULL,"
    " sent_at INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX commands_next ON commands (enrollment_id, status, priority DESC, created_at, "
    "seq);"
    "CREATE TABLE command_history ("
    " seq INTEGER PRIMARY KEY,"
    " uuid TEXT NOT NULL UNIQUE,"
    " enrollment_id TEXT NOT NULL,"
    " request_type TEXT NOT NULL,"
    " body BLOB NOT NULL,"
    " priority INTEGER NOT NULL,"
    " status INTEGER NOT NULL CHECK (status IN (2, 3, 4)),"
    " sensitive INTEGER NOT NULL,"
    " created_at INTEGER NOT NULL,"
    " sent_at INTEGER NOT NULL,"
    " completed_at INTEGER NOT NULL,"
    " result BLOB);"
    "CREATE INDEX command_history_completed ON command_history (completed_at);"
    "CREATE INDEX command_history_enrollment ON command_history (enrollment_id, seq);"
    "CREATE TABLE audit ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " at INTEGER NOT NULL,"
    " actor TEXT NOT NULL,"
    " action TEXT NOT NULL,"
    " target TEXT,"
    " detail TEXT);";

/*
 * Migration 2: commands_next becomes the send order within an enrollment, so queue_next reads
 * the first row whose status qualifies without sorting; on the hot path (Idle, empty queue)
 * that is one index seek. Status is filtered, not indexed: an index led by status needs a
 * temporary b-tree (and its page cache, allocated and freed per call) whenever NotNow rows are
 * included, i.e. on every Idle. It still serves queue_count and is the child index of the
 * enrollments foreign key.
 */
static const char sq_schema_v2[] =
    "DROP INDEX commands_next;"
    "CREATE INDEX commands_next ON commands (enrollment_id, priority DESC, created_at, seq);";

/* Re-authentication policy: counting failed sign-ins of a user since a time. */
static const char sq_schema_reauth[] =
    "CREATE INDEX audit_action_target ON audit (action, target, at);";

/*
 * The push outbox (one row per enrollment: coalescing), with a lease so instances sharing the
 * database never send a row twice at once; `again` flags a row enqueued while its push was in
 * flight. enrollments.last_push_at lets the re-push sweeper wait repush_interval between
 * pushes to a silent device.
 */
static const char sq_schema_push[] =
    "CREATE TABLE push_outbox ("
    " enrollment_id TEXT PRIMARY KEY,"
    " due_at INTEGER NOT NULL,"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " claimed_by TEXT,"
    " claimed_until INTEGER NOT NULL DEFAULT 0,"
    " again INTEGER NOT NULL DEFAULT 0,"
    " created_at INTEGER NOT NULL);"
    "CREATE INDEX push_outbox_due ON push_outbox (due_at);"
    "ALTER TABLE enrollments ADD COLUMN last_push_at INTEGER NOT NULL DEFAULT 0;";

/*
 * Federated sign-in (OIDC): organisation domains with their identity provider, and the
 * sign-ins waiting for the browser to come back from it (state -> nonce, PKCE verifier;
 * single use, deleted when taken). The client secret is stored as given: the IdP needs it.
 */
static const char sq_schema_oidc[] =
    "CREATE TABLE domains ("
    " name TEXT PRIMARY KEY,"
    " auth TEXT NOT NULL DEFAULT 'local' CHECK (auth IN ('local', 'oidc')),"
    " issuer TEXT,"
    " client_id TEXT,"
    " client_secret TEXT,"
    " ca_file TEXT,"
    " scopes TEXT,"
    " user_claim TEXT,"
    " maid_claim TEXT,"
    " groups_claim TEXT,"
    " allowed_groups TEXT,"
    " jit_users INTEGER NOT NULL DEFAULT 0,"
    " updated_at INTEGER NOT NULL);"
    "CREATE TABLE oidc_pending ("
    " state_hash TEXT PRIMARY KEY,"
    " domain TEXT NOT NULL,"
    " identifier TEXT NOT NULL,"
    " nonce TEXT NOT NULL,"
    " code_verifier TEXT NOT NULL,"
    " created_at INTEGER NOT NULL,"
    " expires_at INTEGER NOT NULL);"
    "CREATE INDEX oidc_pending_expires ON oidc_pending (expires_at);";

/*
 * The profile and app library (docs/LIBRARY.md): library items, assignments of items to users,
 * domains or enrollments, and per-enrollment installed state. Assignments point at an item by
 * (kind, id) without a foreign key: deleting an item deletes its assignments in the same
 * transaction, and item_state rows outlive the item so the reconciler can still remove it.
 */
static const char sq_schema_library[] =
    "CREATE TABLE profiles ("
    " id INTEGER PRIMARY KEY,"
    " identifier TEXT NOT NULL UNIQUE,"
    " name TEXT,"
    " platforms TEXT NOT NULL,"
    " body BLOB NOT NULL,"
    " sensitive INTEGER NOT NULL DEFAULT 0,"
    " sign INTEGER NOT NULL DEFAULT 0,"
    " created_at INTEGER NOT NULL);"
    "CREATE TABLE apps ("
    " id INTEGER PRIMARY KEY,"
    " identifier TEXT,"
    " itunes_store_id INTEGER NOT NULL DEFAULT 0,"
    " manifest_url TEXT,"
    " spec TEXT NOT NULL,"
    " sensitive INTEGER NOT NULL DEFAULT 0,"
    " created_at INTEGER NOT NULL);"
    "CREATE TABLE assignments ("
    " id INTEGER PRIMARY KEY,"
    " item_kind INTEGER NOT NULL,"
    " item_id INTEGER NOT NULL,"
    " target_type INTEGER NOT NULL,"
    " target TEXT NOT NULL,"
    " created_at INTEGER NOT NULL,"
    " UNIQUE (item_kind, item_id, target_type, target));"
    "CREATE INDEX assignments_target ON assignments (target_type, target);"
    "CREATE TABLE item_state ("
    " enrollment_id TEXT NOT NULL,"
    " item_kind INTEGER NOT NULL,"
    " item_id INTEGER NOT NULL,"
    " identifier TEXT,"
    " state INTEGER NOT NULL,"
    " command_uuid TEXT,"
    " sensitive INTEGER NOT NULL DEFAULT 0,"
    " detail TEXT,"
    " updated_at INTEGER NOT NULL,"
    " PRIMARY KEY (enrollment_id, item_kind, item_id));"
    "CREATE INDEX item_state_command ON item_state (command_uuid) WHERE command_uuid IS NOT NULL;"
    "CREATE INDEX item_state_item ON item_state (item_kind, item_id);";

/*
 * Bulk pushes (storage.h): the filter, and progress in enrollment id order. done_to: every
 * matching enrollment up to it has been pushed (outcomes recorded); claimed_to: how far the
 * owner has claimed (ahead of done_to while a page is in flight). '' = not started.
 */
static const char sq_schema_push_bulk[] = "CREATE TABLE push_bulk ("
                                          " id INTEGER PRIMARY KEY,"
                                          " scope INTEGER NOT NULL,"
                                          " value TEXT NOT NULL DEFAULT '',"
                                          " done_to TEXT NOT NULL DEFAULT '',"
                                          " claimed_to TEXT NOT NULL DEFAULT '',"
                                          " claimed_by TEXT,"
                                          " claimed_until INTEGER NOT NULL DEFAULT 0,"
                                          " created_at INTEGER NOT NULL);";

/* Webhook events waiting for delivery (docs/WEBHOOKS.md); AUTOINCREMENT: ids are never reused,
 * even after the newest event is delivered and deleted (receivers deduplicate on them). */
static const char sq_schema_webhooks[] = "CREATE TABLE webhook_events ("
                                         " id INTEGER PRIMARY KEY AUTOINCREMENT,"
                                         " type TEXT NOT NULL,"
                                         " data TEXT NOT NULL,"
                                         " created_at INTEGER NOT NULL,"
                                         " due_at INTEGER NOT NULL,"
                                         " attempts INTEGER NOT NULL DEFAULT 0,"
                                         " claimed_by TEXT,"
                                         " claimed_until INTEGER NOT NULL DEFAULT 0);";

/* Profile versions (a profile replaced in place is installed again where an older version is):
 * rows from before count as version 1. */
static const char sq_schema_versions[] =
    "ALTER TABLE profiles ADD COLUMN version INTEGER NOT NULL DEFAULT 1;"
    "ALTER TABLE item_state ADD COLUMN version INTEGER NOT NULL DEFAULT 1;";

/* Sign-in failures per hashed key and fixed window, shared by every process on the database. */
static const char sq_schema_failures[] = "CREATE TABLE signin_failures ("
                                         " key TEXT NOT NULL,"
                                         " window_start INTEGER NOT NULL,"
                                         " failures INTEGER NOT NULL,"
                                         " PRIMARY KEY (key, window_start));";

/* App versions, as profile versions (sq_schema_versions). */
static const char sq_schema_app_versions[] =
    "ALTER TABLE apps ADD COLUMN version INTEGER NOT NULL DEFAULT 1;";

/*
 * Migration 12, bounded growth and re-authentication tickets (issue 13): indexes the retention
 * deletes need (audit by age, SCEP challenges by expiry, unbound sessions by issue time), the
 * server-wide secrets (the ticket key, generated once, shared by every instance), and the
 * re-authentication ticket a pending federated sign-in carries to its callback.
 */
static const char sq_schema_retention[] =
    "CREATE INDEX audit_at ON audit (at);"
    "CREATE INDEX scep_challenges_expires ON scep_challenges (expires_at);"
    "CREATE INDEX sessions_unbound ON sessions (issued_at) WHERE enrollment_id IS NULL;"
    "CREATE TABLE server_secrets ("
    " name TEXT PRIMARY KEY,"
    " value TEXT NOT NULL,"
    " created_at INTEGER NOT NULL);"
    "ALTER TABLE oidc_pending ADD COLUMN reauth_ticket TEXT;";

/*
 * Migration 13, identity renewal (issue 15, mdm/renewal.h): a SCEP challenge may be bound to the
 * enrollment whose identity it renews; one renewal row per device channel (the attempt out, its
 * challenge and InstallProfile, the backoff, the version its compare-and-set writes check); the
 * unrevoked certificates by expiry (the scheduler's and the metrics' range scans).
 */
static const char sq_schema_renewal[] =
    "ALTER TABLE scep_challenges ADD COLUMN enrollment_id TEXT;"
    "CREATE TABLE identity_renewals ("
    " enrollment_id TEXT PRIMARY KEY,"
    " old_fingerprint TEXT NOT NULL,"
    " expires_at INTEGER NOT NULL,"
    " state TEXT NOT NULL,"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " next_attempt_at INTEGER NOT NULL DEFAULT 0,"
    " challenge_hash TEXT,"
    " command_uuid TEXT,"
    " new_fingerprint TEXT,"
    " last_error TEXT,"
    " started_at INTEGER NOT NULL,"
    " updated_at INTEGER NOT NULL,"
    " version INTEGER NOT NULL DEFAULT 1);"
    "CREATE INDEX identity_renewals_due ON identity_renewals (next_attempt_at)"
    " WHERE state IN ('pending', 'held');"
    "CREATE INDEX identity_renewals_command ON identity_renewals (command_uuid)"
    " WHERE command_uuid IS NOT NULL;"
    "CREATE INDEX certs_live_expiry ON certs (not_after) WHERE revoked_at = 0;";

/*
 * Migration 14, the device inventory (issue 15, docs/INVENTORY.md): one row per device channel
 * with the typed fields the enrollment list filters on, the lists as JSON, and the schedule
 * (due_at, claimed by a compare-and-set on round). Enrollments complete before this migration
 * get a row that is due at once; their platform is derived from the stored ProductName the way
 * mdm/platform.c does for the common names; every round claimed rewrites it from the
 * enrollment, and the first answer fills os_key, which SQL does not compute. The list's filters
 * need no index of their own: the list walks enrollments by id (keyset pages) and checks each
 * joined row, and an index on a filtered column could only help a filter that matches almost
 * nothing, at the price of sorting every page of one that matches much (docs/INVENTORY.md).
 */
static const char sq_schema_inventory[] =
    "CREATE TABLE inventory ("
    " enrollment_id TEXT PRIMARY KEY REFERENCES enrollments (id),"
    " platform TEXT,"
    " os_version TEXT,"
    " build_version TEXT,"
    " os_key INTEGER,"
    " product_name TEXT,"
    " model TEXT,"
    " model_name TEXT,"
    " device_name TEXT,"
    " capacity_mb INTEGER,"
    " available_mb INTEGER,"
    " passcode_present INTEGER,"
    " passcode_compliant INTEGER,"
    " app_count INTEGER,"
    " apps TEXT,"
    " profile_count INTEGER,"
    " profiles TEXT,"
    " cert_count INTEGER,"
    " certs TEXT,"
    " round INTEGER NOT NULL DEFAULT 0,"
    " requested_at INTEGER NOT NULL DEFAULT 0,"
    " updated_at INTEGER NOT NULL DEFAULT 0,"
    " due_at INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX inventory_due ON inventory (due_at);"
    "INSERT INTO inventory (enrollment_id, platform, os_version, build_version, product_name, "
    "model, device_name) SELECT id, CASE WHEN coalesce(nullif(product_name, ''), model) GLOB "
    "'Mac*' OR coalesce(nullif(product_name, ''), model) GLOB 'iMac*' OR "
    "coalesce(nullif(product_name, ''), model) GLOB 'VirtualMac*' THEN 'macos' WHEN "
    "coalesce(nullif(product_name, ''), model) GLOB 'RealityDevice*' THEN 'visionos' ELSE 'ios' "
    "END, os_version, build_version, product_name, model, device_name FROM enrollments "
    "WHERE type = 1 AND unenrolled_at = 0 AND token_updated_at > 0;";

/*
 * Migration 15, durable jobs (storage.h "durable jobs"): the filter, the progress (done_to: every
 * matching enrollment id up to it is done; counters) and the lease. AUTOINCREMENT: a job id is
 * never reused, so an admin polling an old id never sees another job. item_state gets an index
 * in enrollment order per item (a job over an item's enrollments pages through it); it covers
 * what item_state_item did, which goes.
 */
static const char sq_schema_jobs[] =
    "CREATE TABLE jobs ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " kind TEXT NOT NULL,"
    " scope INTEGER NOT NULL,"
    " value TEXT NOT NULL DEFAULT '',"
    " item_kind INTEGER NOT NULL DEFAULT 0,"
    " item_id INTEGER NOT NULL DEFAULT 0,"
    " origin TEXT NOT NULL DEFAULT '',"
    " state INTEGER NOT NULL DEFAULT 0,"
    " total INTEGER NOT NULL DEFAULT -1,"
    " done INTEGER NOT NULL DEFAULT 0,"
    " errors INTEGER NOT NULL DEFAULT 0,"
    " installs INTEGER NOT NULL DEFAULT 0,"
    " removals INTEGER NOT NULL DEFAULT 0,"
    " done_to TEXT NOT NULL DEFAULT '',"
    " claimed_by TEXT,"
    " claimed_until INTEGER NOT NULL DEFAULT 0,"
    " created_at INTEGER NOT NULL,"
    " started_at INTEGER NOT NULL DEFAULT 0,"
    " updated_at INTEGER NOT NULL DEFAULT 0,"
    " finished_at INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX jobs_open ON jobs (id) WHERE state < 2;"
    "CREATE INDEX jobs_finished ON jobs (finished_at) WHERE state >= 2;"
    "CREATE INDEX item_state_item_enrollment ON item_state (item_kind, item_id, enrollment_id);"
    "DROP INDEX item_state_item;";

/* Append-only: migration N is sq_migrations[N - 1]. Never edit one that has shipped. */
static const char *const sq_migrations[] = {
    sq_schema_v1,       sq_schema_v2,        sq_schema_reauth,       sq_schema_push,
    sq_schema_oidc,     sq_schema_library,   sq_schema_push_bulk,    sq_schema_webhooks,
    sq_schema_versions, sq_schema_failures,  sq_schema_app_versions, sq_schema_retention,
    sq_schema_renewal,  sq_schema_inventory, sq_schema_jobs,
};
#define SQ_NMIGRATIONS ((int)(sizeof(sq_migrations) / sizeof(sq_migrations[0])))

/* ---- statements ---- */

enum sq_stmt_id {
    SQ_BEGIN,
    SQ_BEGIN_READ,
    SQ_COMMIT,
    SQ_ROLLBACK,
    SQ_PING,
    SQ_SCHEMA_VERSION,
    SQ_USER_ADD,
    SQ_USER_GET_BY_EMAIL,
    SQ_USER_GET,
    SQ_USER_SET_PASSWORD,
    SQ_USER_LIST,
    SQ_APIKEY_ADD,
    SQ_APIKEY_FIND,
    SQ_SESSION_ADD,
    SQ_SESSION_GET,
    SQ_SESSION_BIND,
    SQ_SESSION_BOUND_TO,
    SQ_SESSION_SET_MACHINE_INFO,
    SQ_SESSION_REVOKE_ENROLLMENT,
    SQ_SESSION_REVOKE,
    SQ_CHALLENGE_ADD,
    SQ_CHALLENGE_GET,
    SQ_CHALLENGE_USE,
    SQ_CERT_ADD,
    SQ_CERT_GET,
    SQ_CERT_SET_ENROLLMENT,
    SQ_CERT_REVOKE_ENROLLMENT,
    SQ_ENR_UPSERT,
    SQ_ENR_GET,
    SQ_ENR_TOKEN_UPDATE,
    SQ_ENR_SET_CERT,
    SQ_ENR_SET_AUTH_STATE,
    SQ_ENR_SET_LAST_AUTH,
    SQ_ENR_TRANSITION_AUTH_STATE,
    SQ_ENR_SET_PUSH_DEAD,
    SQ_ENR_UNENROLL,
    SQ_ENR_TOUCH,
    SQ_ENR_LIST,
    SQ_ENR_LIST_USER,
    SQ_CMD_ENQUEUE,
    SQ_CMD_NEXT,
    SQ_CMD_MARK_SENT,
    SQ_CMD_MARK_NOTNOW,
    SQ_CMD_TO_HISTORY,
    SQ_CMD_DELETE,
    SQ_CMD_GET,
    SQ_CMD_LIST,
    SQ_QUEUE_CLEAR,
    SQ_QUEUE_COUNT,
    SQ_HISTORY_PRUNE,
    SQ_AUDIT_ADD,
    SQ_AUDIT_LIST,
    SQ_AUDIT_COUNT,
    SQ_PUSH_ENQUEUE,
    SQ_PUSH_ENR_EXISTS,
    SQ_PUSH_BULK_REFRESH,
    SQ_PUSH_BULK_COUNT,
    SQ_PUSH_BULK_COUNT_USER,
    SQ_PUSH_BULK_SUPERSEDE,
    SQ_PUSH_BULK_SAME,
    SQ_PUSH_BULK_ADD,
    SQ_PUSH_BULK_LIST,
    SQ_PUSH_BULK_PAGE,
    SQ_PUSH_BULK_PAGE_USER,
    SQ_PUSH_BULK_LEASE,
    SQ_PUSH_BULK_FINISH,
    SQ_PUSH_BULK_RETRY,
    SQ_PUSH_BULK_ADVANCE,
    SQ_PUSH_BULK_REWIND,
    SQ_PUSH_BULK_ALL,
    SQ_PUSH_SWEEP,
    SQ_PUSH_CLAIM,
    SQ_PUSH_LEASE,
    SQ_PUSH_DROP,
    SQ_PUSH_DEL_SENT,
    SQ_PUSH_REARM,
    SQ_PUSH_MARK_PUSHED,
    SQ_PUSH_RELEASE,
    SQ_PUSH_DEL_OWNED,
    SQ_PUSH_MARK_DEAD,
    SQ_PUSH_PENDING,
    SQ_FAILURE_ADD,
    SQ_FAILURE_COUNT,
    SQ_FAILURE_PRUNE,
    SQ_WEBHOOK_ADD,
    SQ_WEBHOOK_CLAIM,
    SQ_WEBHOOK_LEASE,
    SQ_WEBHOOK_DELETE,
    SQ_WEBHOOK_RETRY,
    SQ_WEBHOOK_PENDING,
    SQ_DOMAIN_PUT,
    SQ_DOMAIN_GET,
    SQ_DOMAIN_LIST,
    SQ_OIDC_PENDING_ADD,
    SQ_OIDC_PENDING_PRUNE,
    SQ_OIDC_PENDING_TAKE,
    SQ_USER_SET_IDP_SUBJECT,
    SQ_LIB_PROFILE_ADD,
    SQ_LIB_PROFILE_GET,
    SQ_LIB_PROFILE_LIST,
    SQ_LIB_PROFILE_DELETE,
    SQ_LIB_PROFILE_REPLACE,
    SQ_LIB_PROFILE_IDENT,
    SQ_LIB_APP_ADD,
    SQ_LIB_APP_GET,
    SQ_LIB_APP_LIST,
    SQ_LIB_APP_DELETE,
    SQ_LIB_APP_REPLACE,
    SQ_LIB_APP_EXISTS,
    SQ_LIB_ITEM_UNASSIGN,
    SQ_LIB_ASSIGN_ADD,
    SQ_LIB_ASSIGN_GET,
    SQ_LIB_ASSIGN_DELETE,
    SQ_LIB_ASSIGN_LIST,
    SQ_LIB_ASSIGN_ITEMS,
    SQ_LIB_STATE_PUT,
    SQ_LIB_STATE_DELETE,
    SQ_LIB_STATE_LIST,
    SQ_LIB_STATE_BY_COMMAND,
    SQ_LIB_STATE_CLEAR,
    SQ_LIB_STATE_ENROLLMENTS,
    SQ_AUDIT_PRUNE,
    SQ_CHALLENGE_PRUNE,
    SQ_SESSION_PRUNE_UNBOUND,
    SQ_SECRET_ADD,
    SQ_SECRET_GET,
    SQ_CHALLENGE_ADD_RENEWAL,
    SQ_RENEWAL_GET,
    SQ_RENEWAL_PUT,
    SQ_RENEWAL_CANDIDATES,
    SQ_RENEWAL_DUE,
    SQ_ROTATE_ENROLLMENT,
    SQ_ROTATE_CERTS,
    SQ_ROTATE_RENEWAL,
    SQ_IDENTITY_COUNT_EXPIRING,
    SQ_INV_RESET,
    SQ_INV_GET,
    SQ_INV_CLAIM,
    SQ_INV_CLAIM_WHY,
    SQ_INV_SET_DUE,
    SQ_INV_DEFER,
    SQ_INV_DUE,
    SQ_INV_UPDATE,
    SQ_INV_PENDING,
    SQ_INV_LIST,
    SQ_JOB_SAME,
    SQ_JOB_ADD,
    SQ_JOB_GET,
    SQ_JOB_CLAIM,
    SQ_JOB_PROGRESS,
    SQ_JOB_FINISH,
    SQ_JOB_RELEASE,
    SQ_JOB_PRUNE,
    SQ_JOB_PAGE_USER,
    SQ_JOB_PAGE_DOMAIN,
    SQ_JOB_PAGE_ENROLLMENT,
    SQ_JOB_PAGE_ITEM,
    SQ_JOB_COUNT_USER,
    SQ_JOB_COUNT_DOMAIN,
    SQ_JOB_COUNT_ENROLLMENT,
    SQ_JOB_COUNT_ITEM,
    SQ_NSTMT
};

#define DOMAIN_COLS                                                                                \
    "name, auth, issuer, client_id, client_secret, ca_file, scopes, user_claim, maid_claim, "      \
    "groups_claim, allowed_groups, jit_users, updated_at"
#define OIDC_PENDING_COLS                                                                          \
    "state_hash, domain, identifier, nonce, code_verifier, created_at, expires_at, reauth_ticket"

/* Statements of the federated sign-in (filled into sq_sql by designated index). */
#define SQ_SQL_OIDC                                                                                \
    [SQ_DOMAIN_PUT] = "INSERT OR REPLACE INTO domains (" DOMAIN_COLS ") VALUES (lower(?1), ?2, "   \
                      "?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",                           \
    [SQ_DOMAIN_GET] = "SELECT " DOMAIN_COLS " FROM domains WHERE name = lower(?1)",                \
    [SQ_DOMAIN_LIST] = "SELECT " DOMAIN_COLS " FROM domains ORDER BY name LIMIT 10000",            \
    [SQ_OIDC_PENDING_ADD] = "INSERT INTO oidc_pending (" OIDC_PENDING_COLS                         \
                            ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",                           \
    [SQ_OIDC_PENDING_PRUNE] = "DELETE FROM oidc_pending WHERE expires_at <= ?1",                   \
    [SQ_OIDC_PENDING_TAKE] =                                                                       \
        "DELETE FROM oidc_pending WHERE state_hash = ?1 RETURNING " OIDC_PENDING_COLS,             \
    [SQ_USER_SET_IDP_SUBJECT] = "UPDATE users SET idp_subject = ?2 WHERE id = ?1",

/* Retention of the tables that grow with traffic, and the server secrets (migration 12). */
#define SQ_SQL_RETENTION                                                                           \
    [SQ_AUDIT_PRUNE] = "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at < ?1 "        \
                       "ORDER BY at LIMIT ?2)",                                                    \
    [SQ_CHALLENGE_PRUNE] = "DELETE FROM scep_challenges WHERE expires_at < ?1",                    \
    [SQ_SESSION_PRUNE_UNBOUND] =                                                                   \
        "DELETE FROM sessions WHERE enrollment_id IS NULL AND issued_at < ?1",                     \
    [SQ_SECRET_ADD] = "INSERT INTO server_secrets (name, value, created_at) VALUES (?1, ?2, ?3) "  \
                      "ON CONFLICT (name) DO NOTHING",                                             \
    [SQ_SECRET_GET] = "SELECT value FROM server_secrets WHERE name = ?1",

/* Identity renewal (migration 13). A device channel's identity is the certificate bound to it:
 * certs `c` joined to enrollments `e` both ways (SQ_BOUND_FROM), unrevoked, of an enrolled
 * device channel (SQ_BOUND_WHERE). */
#define RENEWAL_COLS                                                                               \
    "enrollment_id, old_fingerprint, expires_at, state, attempts, next_attempt_at, "               \
    "challenge_hash, command_uuid, new_fingerprint, last_error, started_at, updated_at, version"
#define SQ_BOUND_FROM                                                                              \
    "certs AS c JOIN enrollments AS e ON e.id = c.enrollment_id AND "                              \
    "e.cert_fingerprint = c.fingerprint"
#define SQ_BOUND_WHERE "c.revoked_at = 0 AND e.type = 1 AND e.unenrolled_at = 0"
/* SQ_RENEWAL_DUE: CROSS JOIN makes SQLite read the recent history first (completed_at index),
 * then the renewal of each failed command, rather than every renewal row. */
#define SQ_SQL_RENEWAL                                                                             \
    [SQ_CHALLENGE_ADD_RENEWAL] = "INSERT INTO scep_challenges (challenge_hash, user_id, "          \
                                 "session_hash, enrollment_id, expires_at) VALUES (?1, ?2, ?3, "   \
                                 "?4, ?5)",                                                        \
    [SQ_RENEWAL_GET] = "SELECT " RENEWAL_COLS " FROM identity_renewals WHERE enrollment_id = ?1",  \
    [SQ_RENEWAL_PUT] =                                                                             \
        "INSERT INTO identity_renewals (" RENEWAL_COLS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, "    \
        "?8, ?9, ?10, ?11, ?12, 1) ON CONFLICT (enrollment_id) DO UPDATE SET "                     \
        "old_fingerprint = excluded.old_fingerprint, expires_at = excluded.expires_at, "           \
        "state = excluded.state, attempts = excluded.attempts, "                                   \
        "next_attempt_at = excluded.next_attempt_at, challenge_hash = excluded.challenge_hash, "   \
        "command_uuid = excluded.command_uuid, new_fingerprint = excluded.new_fingerprint, "       \
        "last_error = excluded.last_error, started_at = excluded.started_at, "                     \
        "updated_at = excluded.updated_at, version = identity_renewals.version + 1 "               \
        "WHERE identity_renewals.version = ?13 RETURNING version",                                 \
    [SQ_RENEWAL_CANDIDATES] =                                                                      \
        "SELECT e.id, c.fingerprint, c.not_after, coalesce(r.version, 0) FROM " SQ_BOUND_FROM      \
        " LEFT JOIN identity_renewals AS r ON r.enrollment_id = e.id WHERE " SQ_BOUND_WHERE        \
        " AND c.not_after <= ?1 AND (r.enrollment_id IS NULL OR "                                  \
        "r.old_fingerprint <> c.fingerprint) ORDER BY c.not_after LIMIT ?2",                       \
    [SQ_RENEWAL_DUE] =                                                                             \
        "SELECT " RENEWAL_COLS " FROM identity_renewals WHERE state IN ('pending', 'held') AND "   \
        "next_attempt_at <= ?1 UNION SELECT r.enrollment_id, r.old_fingerprint, r.expires_at, "    \
        "r.state, r.attempts, r.next_attempt_at, r.challenge_hash, r.command_uuid, "               \
        "r.new_fingerprint, r.last_error, r.started_at, r.updated_at, r.version "                  \
        "FROM command_history AS h CROSS JOIN identity_renewals AS r "                             \
        "WHERE r.command_uuid = h.uuid AND h.completed_at >= ?2 AND h.status IN (3, 4) AND "       \
        "r.state = 'pending' "                                                                     \
        "ORDER BY 6 LIMIT ?3",                                                                     \
    [SQ_ROTATE_ENROLLMENT] = "UPDATE enrollments SET cert_fingerprint = ?3 WHERE id = ?1 AND "     \
                             "cert_fingerprint = ?2",                                              \
    [SQ_ROTATE_CERTS] = "UPDATE certs SET revoked_at = ?4 WHERE (enrollment_id = ?1 OR "           \
                        "fingerprint = ?2) AND fingerprint <> ?3 AND revoked_at = 0",              \
    [SQ_ROTATE_RENEWAL] = "UPDATE identity_renewals SET state = 'done', new_fingerprint = ?3, "    \
                          "challenge_hash = NULL, updated_at = ?4, version = version + 1 "         \
                          "WHERE enrollment_id = ?1 AND old_fingerprint = ?2 AND state <> 'done'", \
    [SQ_IDENTITY_COUNT_EXPIRING] = "SELECT count(*) FROM " SQ_BOUND_FROM " WHERE " SQ_BOUND_WHERE  \
                                   " AND c.not_after > ?1 AND c.not_after <= ?2",

/* The device inventory (migration 14). */
#define INV_COLS                                                                                   \
    "enrollment_id, platform, os_version, build_version, os_key, product_name, model, "            \
    "model_name, device_name, capacity_mb, available_mb, passcode_present, passcode_compliant, "   \
    "app_count, apps, profile_count, profiles, cert_count, certs, round, requested_at, "           \
    "updated_at, due_at"
/* INV_COLS of `i` for lists: the JSON lists stay in the database. */
#define INV_COLS_LIST                                                                              \
    "i.enrollment_id, i.platform, i.os_version, i.build_version, i.os_key, i.product_name, "       \
    "i.model, i.model_name, i.device_name, i.capacity_mb, i.available_mb, i.passcode_present, "    \
    "i.passcode_compliant, i.app_count, NULL, i.profile_count, NULL, i.cert_count, NULL, "         \
    "i.round, i.requested_at, i.updated_at, i.due_at"
#define ENR_COLS_E                                                                                 \
    "e.id, e.type, e.parent_id, e.user_id, e.topic, e.cert_fingerprint, e.push_token, "            \
    "e.push_magic, e.push_token_dead, e.os_version, e.build_version, e.product_name, "             \
    "e.device_name, e.model, e.auth_state, e.auth_state_since, e.last_auth_at, "                   \
    "e.last_auth_method, e.enrolled_at, e.token_updated_at, e.last_seen_at, e.unenrolled_at"
/* A queued command of an inventory round of enrollment E (storage.h ST_INV_UUID_PREFIX). */
#define SQ_INV_PENDING_OF(E)                                                                       \
    "EXISTS (SELECT 1 FROM commands AS c WHERE c.enrollment_id = " E " AND "                       \
    "substr(c.uuid, 1, length('" ST_INV_UUID_PREFIX "')) = '" ST_INV_UUID_PREFIX "')"
/* Enrollment `e` can be asked: a complete, active device channel of a user enrollment. */
#define SQ_INV_ASKABLE                                                                             \
    "e.type = 1 AND e.unenrolled_at = 0 AND e.token_updated_at > 0 AND e.auth_state = 'active'"
/* ?G & bit: the group is being written (storage_inventory_update). */
#define SQ_INV_SET(col, bit, param) col " = CASE WHEN ?2 & " #bit " THEN " param " ELSE " col " END"
// clang-format off
#define SQ_SQL_INVENTORY                                                                           \
    [SQ_INV_RESET] = "INSERT INTO inventory (" INV_COLS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, "   \
        "?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, 1, ?20, ?21, ?22) "             \
        "ON CONFLICT (enrollment_id) DO UPDATE SET platform = excluded.platform, "                 \
        "os_version = excluded.os_version, build_version = excluded.build_version, "               \
        "os_key = excluded.os_key, product_name = excluded.product_name, model = excluded.model, " \
        "model_name = excluded.model_name, device_name = excluded.device_name, "                   \
        "capacity_mb = excluded.capacity_mb, available_mb = excluded.available_mb, "               \
        "passcode_present = excluded.passcode_present, "                                           \
        "passcode_compliant = excluded.passcode_compliant, app_count = excluded.app_count, "       \
        "apps = excluded.apps, profile_count = excluded.profile_count, "                           \
        "profiles = excluded.profiles, cert_count = excluded.cert_count, certs = excluded.certs, " \
        "round = inventory.round + 1, requested_at = excluded.requested_at, "                      \
        "updated_at = excluded.updated_at, due_at = excluded.due_at",                              \
    [SQ_INV_GET] = "SELECT " INV_COLS " FROM inventory WHERE enrollment_id = ?1",                  \
    [SQ_INV_CLAIM] = "UPDATE inventory SET round = round + 1, requested_at = ?3, due_at = ?4, "    \
        "platform = coalesce(?5, platform) WHERE enrollment_id = ?1 AND round = ?2 AND NOT "       \
        SQ_INV_PENDING_OF("?1"),                                                                   \
    [SQ_INV_CLAIM_WHY] = "SELECT round, " SQ_INV_PENDING_OF("?1")                                  \
        " FROM inventory WHERE enrollment_id = ?1",                                                \
    [SQ_INV_SET_DUE] = "UPDATE inventory SET due_at = ?3 "                                         \
        "WHERE enrollment_id = ?1 AND round = ?2",                                                 \
    [SQ_INV_DEFER] = "UPDATE inventory SET due_at = ?2 WHERE due_at <= ?1 AND NOT EXISTS "         \
        "(SELECT 1 FROM enrollments AS e WHERE e.id = inventory.enrollment_id AND "                \
        SQ_INV_ASKABLE ")",                                                                        \
    [SQ_INV_DUE] = "SELECT i.enrollment_id, i.round FROM inventory AS i JOIN enrollments AS e "    \
        "ON e.id = i.enrollment_id WHERE i.due_at <= ?1 AND " SQ_INV_ASKABLE                       \
        " ORDER BY i.due_at, i.enrollment_id LIMIT ?2",                                            \
    [SQ_INV_UPDATE] = "UPDATE inventory SET "                                                      \
        SQ_INV_SET("os_version", 1, "?3") ", "                                                     \
        SQ_INV_SET("build_version", 1, "?4") ", "                                                  \
        SQ_INV_SET("os_key", 1, "?5") ", "                                                         \
        SQ_INV_SET("product_name", 1, "?6") ", "                                                   \
        SQ_INV_SET("model", 1, "?7") ", "                                                          \
        SQ_INV_SET("model_name", 1, "?8") ", "                                                     \
        SQ_INV_SET("device_name", 1, "?9") ", "                                                    \
        SQ_INV_SET("capacity_mb", 1, "?10") ", "                                                   \
        SQ_INV_SET("available_mb", 1, "?11") ", "                                                  \
        SQ_INV_SET("passcode_present", 2, "?12") ", "                                              \
        SQ_INV_SET("passcode_compliant", 2, "?13") ", "                                            \
        SQ_INV_SET("app_count", 4, "?14") ", "                                                     \
        SQ_INV_SET("apps", 4, "?15") ", "                                                          \
        SQ_INV_SET("profile_count", 8, "?16") ", "                                                 \
        SQ_INV_SET("profiles", 8, "?17") ", "                                                      \
        SQ_INV_SET("cert_count", 16, "?18") ", "                                                   \
        SQ_INV_SET("certs", 16, "?19")                                                             \
        ", updated_at = ?20 WHERE enrollment_id = ?1",                                             \
    [SQ_INV_PENDING] = "SELECT count(*) FROM commands AS c WHERE c.enrollment_id = ?1 AND "        \
        "substr(c.uuid, 1, length('" ST_INV_UUID_PREFIX "')) = '" ST_INV_UUID_PREFIX "'",          \
    /* Every filter is a condition on the joined row; the walk is by id (keyset pagination), */    \
    /* so a page costs the rows it passes over, never the whole table. */                          \
    [SQ_INV_LIST] = "SELECT " ENR_COLS_E ", u.email, " INV_COLS_LIST " FROM enrollments AS e "     \
        "LEFT JOIN inventory AS i ON i.enrollment_id = e.id "                                      \
        "LEFT JOIN users AS u ON u.id = e.user_id "                                                \
        "WHERE e.id > ?1 AND (?2 OR e.unenrolled_at = 0) "                                         \
        "AND (?3 = 0 OR i.os_key < ?3) AND (?4 IS NULL OR i.platform = ?4) "                       \
        "AND (?5 = 0 OR i.passcode_present = ?5 - 1) "                                             \
        "AND (?6 = 0 OR e.last_seen_at < ?6) ORDER BY e.id LIMIT ?7",
// clang-format on

/*
 * Durable jobs (migration 15). A job's enrollments are complete and not unenrolled
 * (SQ_JOB_LIVE); pages and counts have one statement per scope: ?1 the id to start after, ?2
 * and ?3 the filter (scope and value, or item kind and id), ?4 the page size. The user scope
 * walks the (user_id, id) index; the domain scope the id index, checking each enrollment's user
 * (as a bulk push does); the item scope the (item_kind, item_id, enrollment_id) index.
 */
#define JOB_COLS                                                                                   \
    "id, kind, scope, value, item_kind, item_id, origin, state, total, done, errors, installs, "   \
    "removals, done_to, claimed_by, claimed_until, created_at, started_at, updated_at, "           \
    "finished_at"
#define SQ_JOB_LIVE "e.unenrolled_at = 0 AND e.token_updated_at > 0"
#define SQ_SQL_JOBS                                                                                \
    [SQ_JOB_SAME] = "SELECT id FROM jobs WHERE kind = ?1 AND scope = ?2 AND value = ?3 AND "       \
                    "item_kind = ?4 AND item_id = ?5 AND state = 0 AND started_at = 0 "            \
                    "ORDER BY id LIMIT 1",                                                         \
    [SQ_JOB_ADD] =                                                                                 \
        "INSERT INTO jobs (kind, scope, value, item_kind, item_id, origin, created_at, "           \
        "updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",                                     \
    [SQ_JOB_GET] = "SELECT " JOB_COLS " FROM jobs WHERE id = ?1",                                  \
    [SQ_JOB_CLAIM] =                                                                               \
        "UPDATE jobs SET state = 1, claimed_by = ?2, claimed_until = ?3, started_at = "            \
        "CASE WHEN started_at = 0 THEN ?1 ELSE started_at END, updated_at = ?1 "                   \
        "WHERE id = (SELECT id FROM jobs WHERE state < 2 AND (claimed_until <= ?1 "                \
        "OR claimed_by = ?2) ORDER BY id LIMIT 1) RETURNING " JOB_COLS,                            \
    [SQ_JOB_PROGRESS] = "UPDATE jobs SET done_to = ?3, total = CASE WHEN ?4 >= 0 THEN ?4 ELSE "    \
                        "total END, done = done + ?5, errors = errors + ?6, installs = installs "  \
                        "+ ?7, removals = removals + ?8, updated_at = ?9, claimed_until = ?10 "    \
                        "WHERE id = ?1 AND claimed_by = ?2 AND state = 1",                         \
    [SQ_JOB_FINISH] = "UPDATE jobs SET state = ?3, finished_at = ?4, updated_at = ?4, total = "    \
                      "max(total, done), claimed_by = NULL, claimed_until = 0 "                    \
                      "WHERE id = ?1 AND claimed_by = ?2 AND state = 1",                           \
    [SQ_JOB_RELEASE] = "UPDATE jobs SET claimed_by = NULL, claimed_until = 0 "                     \
                       "WHERE id = ?1 AND claimed_by = ?2 AND state = 1",                          \
    [SQ_JOB_PRUNE] = "DELETE FROM jobs WHERE state >= 2 AND finished_at < ?1",                     \
    [SQ_JOB_PAGE_USER] =                                                                           \
        "SELECT " ENR_COLS " FROM enrollments AS e WHERE e.id > ?1 AND " SQ_JOB_LIVE               \
        " AND ?2 = 1 AND " SQ_BULK_USER " ORDER BY e.id LIMIT ?4",                                 \
    [SQ_JOB_PAGE_DOMAIN] =                                                                         \
        "SELECT " ENR_COLS " FROM enrollments AS e WHERE e.id > ?1 AND " SQ_JOB_LIVE               \
        " AND " SQ_BULK_SCOPE("?2", "?3") " ORDER BY e.id LIMIT ?4",                               \
    [SQ_JOB_PAGE_ENROLLMENT] = "SELECT " ENR_COLS " FROM enrollments AS e WHERE e.id = ?3 AND "    \
                               "e.id > ?1 AND ?2 = 3 AND " SQ_JOB_LIVE                             \
                               " LIMIT ?4", /* The sub-select exposes only job_eid, so ENR_COLS    \
                                               name the enrollment's columns. */                   \
        [SQ_JOB_PAGE_ITEM] =                                                                       \
            "SELECT " ENR_COLS " FROM (SELECT enrollment_id AS job_eid FROM "                      \
            "item_state WHERE item_kind = ?2 AND item_id = ?3 AND enrollment_id > "                \
            "?1) JOIN enrollments ON id = job_eid WHERE unenrolled_at = 0 AND "                    \
            "token_updated_at > 0 ORDER BY id LIMIT ?4",                                           \
    [SQ_JOB_COUNT_USER] = "SELECT count(*) FROM enrollments AS e WHERE e.id > ?1 AND " SQ_JOB_LIVE \
                          " AND ?2 = 1 AND " SQ_BULK_USER,                                         \
    [SQ_JOB_COUNT_DOMAIN] =                                                                        \
        "SELECT count(*) FROM enrollments AS e WHERE +e.id > ?1 AND " SQ_JOB_LIVE                  \
        " AND " SQ_BULK_SCOPE("?2", "?3"),                                                         \
    [SQ_JOB_COUNT_ENROLLMENT] = "SELECT count(*) FROM enrollments AS e WHERE e.id = ?3 AND "       \
                                "e.id > ?1 AND ?2 = 3 AND " SQ_JOB_LIVE,                           \
    [SQ_JOB_COUNT_ITEM] = "SELECT count(*) FROM item_state AS s JOIN enrollments AS e ON "         \
                          "e.id = s.enrollment_id WHERE s.item_kind = ?2 AND s.item_id = ?3 AND "  \
                          "s.enrollment_id > ?1 AND " SQ_JOB_LIVE,

#define USER_COLS "id, email, managed_apple_id, password_hash, idp_subject, created_at, disabled"
#define SESSION_COLS                                                                               \
    "token_hash, user_id, method, issued_at, expires_at, enrollment_id, revoked_at, machine_info"
#define CERT_COLS                                                                                  \
    "serial, fingerprint, subject, user_id, session_hash, enrollment_id, not_after, issued_at, "   \
    "revoked_at"
#define ENR_COLS                                                                                   \
    "id, type, parent_id, user_id, topic, cert_fingerprint, push_token, push_magic, "              \
    "push_token_dead, os_version, build_version, product_name, device_name, model, auth_state, "   \
    "auth_state_since, last_auth_at, last_auth_method, enrolled_at, token_updated_at, "            \
    "last_seen_at, unenrolled_at"
/* Pending and history rows read through the same row reader (read_command). */
#define CMD_Q_COLS                                                                                 \
    "uuid, enrollment_id, request_type, body, priority, status, sensitive, created_at, sent_at, "  \
    "0 AS completed_at, NULL AS result, seq"
#define CMD_H_COLS                                                                                 \
    "uuid, enrollment_id, request_type, body, priority, status, sensitive, created_at, sent_at, "  \
    "completed_at, result, seq"

#define SQ_PUSHABLE "push_token IS NOT NULL AND push_token_dead = 0 AND unenrolled_at = 0"
/* SQ_PUSHABLE for enrollments aliased `e`. */
#define SQ_PUSHABLE_E "e.push_token IS NOT NULL AND e.push_token_dead = 0 AND e.unenrolled_at = 0"
/*
 * A bulk push's filter on enrollments `e`, scope S (enum st_push_scope) and value V given as SQL
 * expressions. The user's email domain is the text after the last '@' (emails are stored
 * lowercase). The IN list is not correlated with `e`: SQLite computes it once per statement.
 * Counts and pages for one user have their own statements (SQ_BULK_USER), which use the
 * (user_id, id) index instead of scanning every enrollment.
 */
#define SQ_BULK_SCOPE(S, V)                                                                        \
    "(" S " = 0 OR e.user_id IN (SELECT u.id FROM users AS u WHERE (" S " = 1 AND u.email = "      \
    "lower(" V ")) OR (" S " = 2 AND substr(u.email, -length(" V ") - 1) = '@' || lower(" V "))))"
#define SQ_BULK_USER "e.user_id = (SELECT u.id FROM users AS u WHERE u.email = lower(?3))"
/* Enrollment `e` has no outbox row (that row pushes it). */
#define SQ_NO_OUTBOX_ROW "NOT EXISTS (SELECT 1 FROM push_outbox AS o WHERE o.enrollment_id = e.id)"
#define SQ_PUSH_UPSERT                                                                             \
    " ON CONFLICT (enrollment_id) DO UPDATE SET due_at = min(due_at, excluded.due_at), "           \
    "again = CASE WHEN claimed_until > excluded.due_at THEN 1 ELSE again END"

#define LIB_PROFILE_INS_COLS "identifier, name, platforms, body, sensitive, sign, created_at"
#define LIB_PROFILE_COLS "id, " LIB_PROFILE_INS_COLS ", version"
#define LIB_APP_INS_COLS "identifier, itunes_store_id, manifest_url, spec, sensitive, created_at"
#define LIB_APP_COLS "id, " LIB_APP_INS_COLS ", version"
#define LIB_ASSIGN_COLS "id, item_kind, item_id, target_type, target, created_at"
#define LIB_STATE_COLS                                                                             \
    "enrollment_id, item_kind, item_id, identifier, state, command_uuid, sensitive, detail, "      \
    "updated_at, version"

static const char *const sq_sql[SQ_NSTMT] = {
    /* ---- library (profiles, apps, assignments, installed state) ---- */
    [SQ_LIB_PROFILE_ADD] =
        "INSERT INTO profiles (" LIB_PROFILE_INS_COLS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    [SQ_LIB_PROFILE_GET] = "SELECT " LIB_PROFILE_COLS " FROM profiles WHERE id = ?1",
    [SQ_LIB_PROFILE_LIST] =
        "SELECT " LIB_PROFILE_COLS " FROM profiles WHERE id > ?1 ORDER BY id LIMIT ?2",
    [SQ_LIB_PROFILE_DELETE] = "DELETE FROM profiles WHERE id = ?1",
    [SQ_LIB_PROFILE_REPLACE] =
        "UPDATE profiles SET name = ?3, platforms = ?4, body = ?5, sensitive = ?6, sign = ?7, "
        "version = version + 1 WHERE id = ?1 AND identifier = ?2 RETURNING version",
    [SQ_LIB_PROFILE_IDENT] = "SELECT identifier FROM profiles WHERE id = ?1",
    [SQ_LIB_APP_ADD] = "INSERT INTO apps (" LIB_APP_INS_COLS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    [SQ_LIB_APP_GET] = "SELECT " LIB_APP_COLS " FROM apps WHERE id = ?1",
    [SQ_LIB_APP_LIST] = "SELECT " LIB_APP_COLS " FROM apps WHERE id > ?1 ORDER BY id LIMIT ?2",
    [SQ_LIB_APP_DELETE] = "DELETE FROM apps WHERE id = ?1",
    /* The identity (bundle id, App Store id) must not change: IS compares NULLs as equal. */
    [SQ_LIB_APP_REPLACE] = "UPDATE apps SET manifest_url = ?4, spec = ?5, sensitive = ?6, "
                           "version = version + 1 WHERE id = ?1 AND identifier IS ?2 AND "
                           "itunes_store_id = ?3 RETURNING version",
    [SQ_LIB_APP_EXISTS] = "SELECT 1 FROM apps WHERE id = ?1",
    [SQ_LIB_ITEM_UNASSIGN] = "DELETE FROM assignments WHERE item_kind = ?1 AND item_id = ?2",
    /* The item must exist: no row inserted means ST_ENOTFOUND. */
    [SQ_LIB_ASSIGN_ADD] =
        "INSERT INTO assignments (item_kind, item_id, target_type, target, created_at) "
        "SELECT ?1, ?2, ?3, ?4, ?5 WHERE (?1 = 1 AND EXISTS (SELECT 1 FROM profiles WHERE id = ?2))"
        " OR (?1 = 2 AND EXISTS (SELECT 1 FROM apps WHERE id = ?2))",
    [SQ_LIB_ASSIGN_GET] = "SELECT " LIB_ASSIGN_COLS " FROM assignments WHERE id = ?1",
    [SQ_LIB_ASSIGN_DELETE] = "DELETE FROM assignments WHERE id = ?1",
    [SQ_LIB_ASSIGN_LIST] =
        "SELECT " LIB_ASSIGN_COLS " FROM assignments WHERE id > ?1 ORDER BY id LIMIT ?2",
    [SQ_LIB_ASSIGN_ITEMS] =
        "SELECT DISTINCT item_kind, item_id FROM assignments WHERE (target_type = 1 AND target = "
        "?1) OR (target_type = 2 AND target = ?2) OR (target_type = 3 AND target = ?3) "
        "ORDER BY item_kind, item_id",
    /* Compare-and-set on command_uuid (?10): IS compares NULLs as equal. */
    [SQ_LIB_STATE_PUT] =
        "INSERT INTO item_state (" LIB_STATE_COLS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, "
        "?11) ON CONFLICT (enrollment_id, item_kind, item_id) DO UPDATE SET "
        "identifier = excluded.identifier, state = excluded.state, "
        "command_uuid = excluded.command_uuid, sensitive = excluded.sensitive, "
        "detail = excluded.detail, updated_at = excluded.updated_at, version = excluded.version "
        "WHERE item_state.command_uuid IS ?10",
    [SQ_LIB_STATE_DELETE] =
        "DELETE FROM item_state WHERE enrollment_id = ?1 AND item_kind = ?2 AND item_id = ?3",
    [SQ_LIB_STATE_LIST] = "SELECT " LIB_STATE_COLS " FROM item_state WHERE enrollment_id = ?1"
                          " ORDER BY item_kind, item_id",
    [SQ_LIB_STATE_BY_COMMAND] = "SELECT " LIB_STATE_COLS " FROM item_state WHERE command_uuid = ?1",
    [SQ_LIB_STATE_CLEAR] = "DELETE FROM item_state WHERE enrollment_id = ?1",
    [SQ_LIB_STATE_ENROLLMENTS] = "SELECT DISTINCT enrollment_id FROM item_state"
                                 " WHERE item_kind = ?1 AND item_id = ?2 ORDER BY enrollment_id",

    [SQ_BEGIN] = "BEGIN IMMEDIATE",
    [SQ_BEGIN_READ] = "BEGIN",
    [SQ_COMMIT] = "COMMIT",
    [SQ_ROLLBACK] = "ROLLBACK",
    [SQ_PING] = "SELECT 1",
    [SQ_SCHEMA_VERSION] = "SELECT coalesce(max(version), 0) FROM schema_migrations",

    [SQ_USER_ADD] = "INSERT INTO users (email, managed_apple_id, password_hash, idp_subject, "
                    "created_at, disabled) VALUES (lower(?1), ?2, ?3, ?4, ?5, ?6)",
    [SQ_USER_GET_BY_EMAIL] = "SELECT " USER_COLS " FROM users WHERE email = lower(?1)",
    [SQ_USER_GET] = "SELECT " USER_COLS " FROM users WHERE id = ?1",
    [SQ_USER_SET_PASSWORD] = "UPDATE users SET password_hash = ?2 WHERE id = ?1",
    [SQ_USER_LIST] = "SELECT " USER_COLS " FROM users WHERE id > ?1 ORDER BY id LIMIT ?2",
    [SQ_APIKEY_ADD] = "INSERT INTO api_keys (name, key_hash, created_at) VALUES (?1, ?2, ?3)",
    [SQ_APIKEY_FIND] = "SELECT id, name FROM api_keys WHERE key_hash = ?1",

    [SQ_SESSION_ADD] =
        "INSERT INTO sessions (" SESSION_COLS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    [SQ_SESSION_GET] = "SELECT " SESSION_COLS " FROM sessions WHERE token_hash = ?1",
    [SQ_SESSION_BIND] = "UPDATE sessions SET enrollment_id = ?2 WHERE token_hash = ?1"
                        " AND (enrollment_id IS NULL OR enrollment_id = ?2)",
    [SQ_SESSION_BOUND_TO] = "SELECT enrollment_id FROM sessions WHERE token_hash = ?1",
    [SQ_SESSION_SET_MACHINE_INFO] = "UPDATE sessions SET machine_info = ?2 WHERE token_hash = ?1",
    [SQ_SESSION_REVOKE_ENROLLMENT] =
        "UPDATE sessions SET revoked_at = ?2 WHERE enrollment_id = ?1 AND revoked_at = 0",
    [SQ_SESSION_REVOKE] = "UPDATE sessions SET revoked_at = ?2 WHERE token_hash = ?1"
                          " AND revoked_at = 0",

    [SQ_CHALLENGE_ADD] = "INSERT INTO scep_challenges (challenge_hash, user_id, session_hash, "
                         "expires_at) VALUES (?1, ?2, ?3, ?4)",
    [SQ_CHALLENGE_GET] = "SELECT user_id, session_hash, expires_at, used, enrollment_id"
                         " FROM scep_challenges WHERE challenge_hash = ?1",
    [SQ_CHALLENGE_USE] =
        "UPDATE scep_challenges SET used = 1, used_at = ?2 WHERE challenge_hash = ?1",
    [SQ_CERT_ADD] = "INSERT INTO certs (" CERT_COLS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    [SQ_CERT_GET] = "SELECT " CERT_COLS " FROM certs WHERE fingerprint = ?1",
    [SQ_CERT_SET_ENROLLMENT] = "UPDATE certs SET enrollment_id = ?2 WHERE fingerprint = ?1",
    [SQ_CERT_REVOKE_ENROLLMENT] =
        "UPDATE certs SET revoked_at = ?2 WHERE enrollment_id = ?1 AND revoked_at = 0",

    /* Authenticate: insert, or replace the fields of a known enrollment and reset its push
     * token, completion and unenrollment (the queue is cleared in the same transaction). */
    [SQ_ENR_UPSERT] =
        "INSERT INTO enrollments (id, type, parent_id, user_id, topic, cert_fingerprint, "
        "os_version, build_version, product_name, device_name, model, auth_state, "
        "auth_state_since, last_auth_at, last_auth_method, enrolled_at, last_seen_at) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, coalesce(?12, 'active'), ?13, "
        "?14, ?15, ?16, ?17) "
        "ON CONFLICT (id) DO UPDATE SET type = excluded.type, parent_id = excluded.parent_id, "
        "user_id = excluded.user_id, topic = excluded.topic, "
        "cert_fingerprint = excluded.cert_fingerprint, os_version = excluded.os_version, "
        "build_version = excluded.build_version, product_name = excluded.product_name, "
        "device_name = excluded.device_name, model = excluded.model, "
        "auth_state = excluded.auth_state, auth_state_since = excluded.auth_state_since, "
        "last_auth_at = excluded.last_auth_at, last_auth_method = excluded.last_auth_method, "
        "enrolled_at = excluded.enrolled_at, last_seen_at = excluded.last_seen_at, "
        "push_token = NULL, push_magic = NULL, push_token_dead = 0, token_updated_at = 0, "
        "unenrolled_at = 0",
    [SQ_ENR_GET] = "SELECT " ENR_COLS " FROM enrollments WHERE id = ?1",
    [SQ_ENR_TOKEN_UPDATE] = "UPDATE enrollments SET push_token = ?2, push_magic = ?3, "
                            "push_token_dead = 0, token_updated_at = ?4 WHERE id = ?1",
    [SQ_ENR_SET_CERT] = "UPDATE enrollments SET cert_fingerprint = ?2 WHERE id = ?1",
    [SQ_ENR_SET_AUTH_STATE] =
        "UPDATE enrollments SET auth_state = ?2, auth_state_since = ?3 WHERE id = ?1",
    [SQ_ENR_TRANSITION_AUTH_STATE] =
        "UPDATE enrollments SET auth_state = ?3, auth_state_since = ?4 "
        "WHERE id = ?1 AND auth_state = ?2",
    [SQ_AUDIT_COUNT] = "SELECT COUNT(*) FROM audit WHERE action = ?1 AND target = ?2 AND at >= ?3",
    [SQ_ENR_SET_LAST_AUTH] =
        "UPDATE enrollments SET last_auth_at = ?2, last_auth_method = ?3 WHERE id = ?1",
    [SQ_ENR_SET_PUSH_DEAD] = "UPDATE enrollments SET push_token_dead = ?2 WHERE id = ?1",
    /* Idempotent: a repeated CheckOut keeps the first unenrollment time. The push token is
     * retired with the enrollment (PROTOCOL.md section 14). */
    [SQ_ENR_UNENROLL] =
        "UPDATE enrollments SET "
        "auth_state_since = CASE WHEN unenrolled_at = 0 THEN ?2 ELSE auth_state_since END, "
        "unenrolled_at = CASE WHEN unenrolled_at = 0 THEN ?2 ELSE unenrolled_at END, "
        "auth_state = 'unenrolled', push_token = NULL, push_magic = NULL WHERE id = ?1",
    [SQ_ENR_TOUCH] = "UPDATE enrollments SET last_seen_at = ?2 WHERE id = ?1",
    [SQ_ENR_LIST] = "SELECT " ENR_COLS " FROM enrollments WHERE id > ?1"
                    " AND (?2 OR unenrolled_at = 0) ORDER BY id LIMIT ?3",
    [SQ_ENR_LIST_USER] = "SELECT " ENR_COLS " FROM enrollments WHERE user_id = ?4 AND id > ?1"
                         " AND (?2 OR unenrolled_at = 0) ORDER BY id LIMIT ?3",

    /* A uuid may not repeat one in history either; the NOT EXISTS keeps that one statement. */
    [SQ_CMD_ENQUEUE] = "INSERT INTO commands (uuid, enrollment_id, request_type, body, priority, "
                       "sensitive, created_at) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7"
                       " WHERE NOT EXISTS (SELECT 1 FROM command_history WHERE uuid = ?1)",
    /* ?2 = 0: QUEUED only; ?2 = 1: QUEUED and NOTNOW. Walks commands_next in send order. */
    [SQ_CMD_NEXT] = "SELECT " CMD_Q_COLS " FROM commands WHERE enrollment_id = ?1"
                    " AND status <= ?2 ORDER BY priority DESC, created_at, seq LIMIT 1",
    [SQ_CMD_MARK_SENT] = "UPDATE commands SET status = 0, sent_at = ?2 WHERE seq = ?1",
    [SQ_CMD_MARK_NOTNOW] = "UPDATE commands SET status = 1 WHERE uuid = ?1 AND enrollment_id = ?2",
    [SQ_CMD_TO_HISTORY] =
        "INSERT INTO command_history (seq, uuid, enrollment_id, request_type, body, priority, "
        "status, sensitive, created_at, sent_at, completed_at, result) "
        "SELECT seq, uuid, enrollment_id, request_type, body, priority, ?3, sensitive, "
        "created_at, sent_at, ?4, ?5 FROM commands WHERE uuid = ?1 AND enrollment_id = ?2",
    [SQ_CMD_DELETE] = "DELETE FROM commands WHERE uuid = ?1 AND enrollment_id = ?2",
    /* One statement, so a command moving to history in between cannot be missed. */
    [SQ_CMD_GET] = "SELECT " CMD_Q_COLS " FROM commands WHERE uuid = ?1 UNION ALL "
                   "SELECT " CMD_H_COLS " FROM command_history WHERE uuid = ?1 LIMIT 1",
    /* Keyset pagination over (part, seq): ?2 is the part and ?3 the seq of the last row read. */
    [SQ_CMD_LIST] = "SELECT " CMD_Q_COLS ", 0 AS part FROM commands"
                    " WHERE enrollment_id = ?1 AND ?2 = 0 AND seq < ?3 UNION ALL "
                    "SELECT " CMD_H_COLS ", 1 AS part FROM command_history"
                    " WHERE enrollment_id = ?1 AND (?2 = 0 OR seq < ?3)"
                    " ORDER BY part, seq DESC LIMIT ?4",
    [SQ_QUEUE_CLEAR] = "DELETE FROM commands WHERE enrollment_id = ?1",
    [SQ_QUEUE_COUNT] = "SELECT count(*) FROM commands WHERE enrollment_id = ?1",
    [SQ_HISTORY_PRUNE] = "DELETE FROM command_history WHERE completed_at < ?1",

    [SQ_AUDIT_ADD] =
        "INSERT INTO audit (at, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
    /* Push outbox. Only pushable enrollments get a row; an existing row keeps the earlier due
     * time, and one in flight (lease not expired) is flagged to be pushed once more. */
    [SQ_PUSH_ENQUEUE] =
        "INSERT INTO push_outbox (enrollment_id, due_at, created_at) SELECT id, ?2, "
        "?2 FROM enrollments WHERE id = ?1 AND " SQ_PUSHABLE SQ_PUSH_UPSERT,
    [SQ_PUSH_ENR_EXISTS] = "SELECT 1 FROM enrollments WHERE id = ?1",
    /* Bulk pushes. A filter's outbox rows are made due now (the page reads pass over them). */
    [SQ_PUSH_BULK_REFRESH] =
        "UPDATE push_outbox SET due_at = min(due_at, ?1), again = CASE WHEN "
        "claimed_until > ?1 THEN 1 ELSE again END WHERE EXISTS (SELECT 1 "
        "FROM enrollments AS e WHERE e.id = push_outbox.enrollment_id AND " SQ_PUSHABLE_E
        " AND " SQ_BULK_SCOPE("?2", "?3") ")",
    /* Matching enrollments after ?1; with ?4 = 1 only those without an outbox row. The unary +
     * keeps SQLite from walking the id index (a lookup per row): a plain scan of the table is
     * five times faster when most rows match. */
    [SQ_PUSH_BULK_COUNT] =
        "SELECT count(*) FROM enrollments AS e WHERE +e.id > ?1 AND " SQ_PUSHABLE_E
        " AND " SQ_BULK_SCOPE("?2", "?3") " AND (?4 = 0 OR " SQ_NO_OUTBOX_ROW ")",
    [SQ_PUSH_BULK_COUNT_USER] =
        "SELECT count(*) FROM enrollments AS e WHERE e.id > ?1 AND " SQ_PUSHABLE_E
        " AND " SQ_BULK_USER " AND (?4 = 0 OR " SQ_NO_OUTBOX_ROW ")",
    [SQ_PUSH_BULK_SUPERSEDE] = "DELETE FROM push_bulk WHERE claimed_to = ''",
    [SQ_PUSH_BULK_SAME] =
        "SELECT 1 FROM push_bulk WHERE scope = ?1 AND value = lower(?2) AND claimed_to = ''",
    [SQ_PUSH_BULK_ADD] =
        "INSERT INTO push_bulk (scope, value, created_at) VALUES (?1, lower(?2), ?3)",
    /* The bulk pushes owner may work on: free, lease expired, or its own. */
    [SQ_PUSH_BULK_LIST] = "SELECT id, scope, value, done_to, claimed_to, claimed_by FROM push_bulk "
                          "WHERE claimed_until <= ?1 OR claimed_by = ?2 ORDER BY id LIMIT 8",
    /* The next page after ?1, in id order (the primary key's index), passing over enrollments
     * with an outbox row. */
    [SQ_PUSH_BULK_PAGE] =
        "SELECT e.id, e.push_token, e.push_magic, e.topic FROM enrollments AS e "
        "WHERE e.id > ?1 AND " SQ_PUSHABLE_E
        " AND " SQ_BULK_SCOPE("?2", "?3") " AND " SQ_NO_OUTBOX_ROW " ORDER BY e.id LIMIT ?4",
    [SQ_PUSH_BULK_PAGE_USER] = "SELECT e.id, e.push_token, e.push_magic, e.topic FROM enrollments "
                               "AS e WHERE e.id > ?1 AND " SQ_PUSHABLE_E " AND " SQ_BULK_USER
                               " AND " SQ_NO_OUTBOX_ROW " ORDER BY e.id LIMIT ?4",
    [SQ_PUSH_BULK_LEASE] = "UPDATE push_bulk SET claimed_by = ?2, claimed_until = ?3, claimed_to = "
                           "?4 WHERE id = ?1",
    [SQ_PUSH_BULK_FINISH] = "DELETE FROM push_bulk WHERE id = ?1",
    /* A bulk row to retry becomes an outbox row (one already there pushes it anyway). */
    [SQ_PUSH_BULK_RETRY] = "INSERT INTO push_outbox (enrollment_id, due_at, attempts, created_at) "
                           "SELECT j.value ->> 0, j.value ->> 1, j.value ->> 2, ?2 FROM "
                           "json_each(?1) AS j WHERE true ON CONFLICT (enrollment_id) DO NOTHING",
    [SQ_PUSH_BULK_ADVANCE] =
        "UPDATE push_bulk SET done_to = ?3 WHERE id = ?1 AND claimed_by = ?2 AND done_to < ?3",
    [SQ_PUSH_BULK_REWIND] = "UPDATE push_bulk SET claimed_to = done_to, claimed_by = NULL, "
                            "claimed_until = 0 WHERE id = ?1 AND claimed_by = ?2",
    [SQ_PUSH_BULK_ALL] = "SELECT scope, value, done_to FROM push_bulk",
    /* Driven by the small pending-commands table, not by a scan of every enrollment. */
    [SQ_PUSH_SWEEP] = "INSERT INTO push_outbox (enrollment_id, due_at, created_at) SELECT id, ?2, "
                      "?2 FROM enrollments WHERE id IN (SELECT enrollment_id FROM commands) AND "
                      "last_seen_at < ?1 AND last_push_at < ?1 AND " SQ_PUSHABLE
                      " ON CONFLICT (enrollment_id) DO NOTHING",
    /* The claim reads the due rows with their enrollment's target in one statement, then
     * leases the pushable ones and drops the others by rowid (push_claim holds the write lock
     * throughout, so nothing changes in between). A row whose enrollment lost its token comes
     * back with a NULL push_token. */
    [SQ_PUSH_CLAIM] = "SELECT o.rid, o.enrollment_id, o.attempts, push_token, push_magic, topic "
                      "FROM (SELECT rowid AS rid, enrollment_id, attempts FROM push_outbox "
                      "WHERE due_at <= ?1 AND claimed_until <= ?1 ORDER BY due_at LIMIT ?2) AS o "
                      "LEFT JOIN enrollments AS e ON e.id = o.enrollment_id AND " SQ_PUSHABLE,
    [SQ_PUSH_LEASE] = "UPDATE push_outbox SET claimed_by = ?1, claimed_until = ?2 "
                      "FROM json_each(?3) AS j WHERE push_outbox.rowid = j.value",
    [SQ_PUSH_DROP] = "DELETE FROM push_outbox WHERE rowid IN (SELECT value FROM json_each(?1))",
    /* push_done deletes row by row (sq_push_delete_owned) and applies the other kinds of
     * outcome to a JSON array of rows each (storage/push_batch.h), driving the loop from
     * json_each: ?1 the array, ?2 the owner. */
    [SQ_PUSH_DEL_SENT] =
        "DELETE FROM push_outbox WHERE enrollment_id = ?1 AND claimed_by = ?2 AND again = 0",
    [SQ_PUSH_REARM] = "UPDATE push_outbox SET claimed_by = NULL, claimed_until = 0, again = 0, "
                      "attempts = 0, due_at = ?3 FROM json_each(?1) AS j "
                      "WHERE push_outbox.enrollment_id = j.value AND push_outbox.claimed_by = ?2",
    /* Only the sweeper reads last_push_at, and only for enrollments with pending commands:
     * stamping the others would rewrite their whole row for nothing (a bulk push to idle
     * devices spent ~40% of its storage time there). */
    [SQ_PUSH_MARK_PUSHED] = "UPDATE enrollments SET last_push_at = ?2 FROM json_each(?1) AS j "
                            "WHERE enrollments.id = j.value AND EXISTS (SELECT 1 FROM commands "
                            "AS c WHERE c.enrollment_id = j.value)",
    [SQ_PUSH_RELEASE] = "UPDATE push_outbox SET claimed_by = NULL, claimed_until = 0, again = 0, "
                        "due_at = j.value ->> 1, attempts = j.value ->> 2 FROM json_each(?1) AS j "
                        "WHERE push_outbox.enrollment_id = j.value ->> 0 "
                        "AND push_outbox.claimed_by = ?2",
    [SQ_PUSH_DEL_OWNED] = "DELETE FROM push_outbox WHERE enrollment_id = ?1 AND claimed_by = ?2",
    /* Only the token that failed: a TokenUpdate in between brought a fresh one. */
    [SQ_PUSH_MARK_DEAD] = "UPDATE enrollments SET push_token_dead = 1 FROM json_each(?1) AS j "
                          "WHERE enrollments.id = j.value ->> 0 "
                          "AND enrollments.push_token = j.value ->> 1",
    [SQ_PUSH_PENDING] = "SELECT count(*) FROM push_outbox",
    /* Webhook events: oldest first among the due ones; claimed and leased in one write
     * transaction (sq_webhook_claim). */
    [SQ_FAILURE_ADD] =
        "INSERT INTO signin_failures (key, window_start, failures) VALUES (?1, ?2, 1) "
        "ON CONFLICT (key, window_start) DO UPDATE SET failures = failures + 1 "
        "RETURNING failures",
    [SQ_FAILURE_COUNT] =
        "SELECT failures FROM signin_failures WHERE key = ?1 AND window_start = ?2",
    [SQ_FAILURE_PRUNE] = "DELETE FROM signin_failures WHERE window_start < ?1",
    [SQ_WEBHOOK_ADD] =
        "INSERT INTO webhook_events (type, data, created_at, due_at) VALUES (?1, ?2, ?3, ?3)",
    [SQ_WEBHOOK_CLAIM] = "SELECT id, type, data, created_at, attempts FROM webhook_events "
                         "WHERE due_at <= ?1 AND claimed_until <= ?1 ORDER BY id LIMIT ?2",
    [SQ_WEBHOOK_LEASE] = "UPDATE webhook_events SET claimed_by = ?1, claimed_until = ?2 "
                         "WHERE id IN (SELECT value FROM json_each(?3))",
    [SQ_WEBHOOK_DELETE] = "DELETE FROM webhook_events WHERE id = ?1 AND claimed_by = ?2",
    [SQ_WEBHOOK_RETRY] = "UPDATE webhook_events SET claimed_by = NULL, claimed_until = 0, "
                         "due_at = ?3, attempts = ?4 WHERE id = ?1 AND claimed_by = ?2",
    [SQ_WEBHOOK_PENDING] = "SELECT count(*) FROM webhook_events",

    [SQ_AUDIT_LIST] = "SELECT id, at, actor, action, target, detail FROM audit WHERE id < ?1"
                      " ORDER BY id DESC LIMIT ?2",
    SQ_SQL_OIDC SQ_SQL_RETENTION SQ_SQL_RENEWAL SQ_SQL_INVENTORY SQ_SQL_JOBS};

/* ---- connections ---- */

struct sqlite_storage;

/* One thread's connection and its prepared-statement cache. */
struct sq_conn {
    sqlite3 *db;
    struct sqlite_storage *owner;
    struct sq_conn *prev, *next; /* owner->conns, under owner->lock */
    int bind_rc;                 /* first failed bind since the last reset, reported by step */
    /* Transactions (see "Nesting" above sq_begin): levels open (the outermost a BEGIN, inner
     * ones savepoints); base = 1 while storage_tx_begin's transaction is open, whose level an
     * operation's rollback must not end; broken = that transaction failed: every statement
     * fails until storage_tx_rollback. */
    int depth, base, broken;
    sqlite3_stmt *stmt[SQ_NSTMT];
};

struct sqlite_storage {
    struct storage base; /* first: storage * <-> struct sqlite_storage * */
    char *path;
    pthread_key_t key; /* this thread's struct sq_conn */
    int key_ok;
    pthread_mutex_t lock; /* guards conns */
    struct sq_conn *conns;
    atomic_int step_fail_after; /* test hook, see storage_impl.h */
    /* The checkpointer ("Checkpoints" above): its thread and connection, and its wake-up. */
    pthread_t ckpt_thread;
    int ckpt_started;
    struct sq_conn *ckpt_conn;
    pthread_mutex_t ckpt_lock;
    pthread_cond_t ckpt_cond;
    int ckpt_wanted, ckpt_stop;
    atomic_long ckpt_runs; /* checkpoints that copied pages (tests) */
};

static const struct storage_ops sqlite_ops;

static void conn_free(struct sq_conn *c)
{
    if (c == NULL)
        return;
    for (int i = 0; i < SQ_NSTMT; i++)
        sqlite3_finalize(c->stmt[i]);
    sqlite3_close_v2(c->db);
    free(c);
}

/* The pthread key's destructor: a pool thread is exiting, close its connection. */
static void conn_thread_exit(void *p)
{
    struct sq_conn *c = p;
    struct sqlite_storage *ss = c->owner;
    pthread_mutex_lock(&ss->lock);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        ss->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    pthread_mutex_unlock(&ss->lock);
    conn_free(c);
}

/*
 * Called by SQLite after each commit with the number of pages in the WAL (this replaces the
 * built-in autocheckpoint, which is a WAL hook too). Below SQ_CKPT_INLINE the checkpointer is
 * woken. Beyond it, or without a checkpointer, this connection checkpoints itself, as SQLite
 * would: a PASSIVE checkpoint, which answers SQLITE_BUSY at once while the checkpointer is at
 * it, so this waits for that pass to end (a millisecond at a time, at most a second) and then
 * copies what is left. This writer writes nothing meanwhile, so the WAL ends fully copied and the
 * next write transaction restarts it: that is what bounds the WAL.
 */
static int sq_wal_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
    struct sqlite_storage *ss = arg;
    if (pages < SQ_CKPT_BACKGROUND)
        return SQLITE_OK;
    if (pages >= SQ_CKPT_INLINE || !ss->ckpt_started) {
        for (int i = 0; i < 1000; i++) {
            if (sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL) !=
                SQLITE_BUSY)
                break;
            usleep(1000);
        }
        return SQLITE_OK;
    }
    pthread_mutex_lock(&ss->ckpt_lock);
    ss->ckpt_wanted = 1;
    pthread_cond_signal(&ss->ckpt_cond);
    pthread_mutex_unlock(&ss->ckpt_lock);
    return SQLITE_OK;
}

static struct sq_conn *conn_open(struct sqlite_storage *ss, char *err, size_t err_len)
{
    struct sq_conn *c = xcalloc(1, sizeof(*c));
    c->owner = ss;
    /* No SQLITE_OPEN_CREATE: sqlite_storage_open created the file (mode 0600); a file that
     * has vanished since must be an error, not a new empty database. */
    int rc = sqlite3_open_v2(ss->path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK)
        goto fail;
    sqlite3_extended_result_codes(c->db, 1);
    sqlite3_busy_timeout(c->db, SQ_BUSY_TIMEOUT_MS);
    rc = sqlite3_exec(c->db, SQ_CONN_PRAGMAS, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        goto fail;
    sqlite3_wal_hook(c->db, sq_wal_hook, ss);
    return c;
fail:
    snprintf(err, err_len, "sqlite: cannot open %s: %s", ss->path,
             c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc));
    conn_free(c);
    return NULL;
}

static int conn_attach(struct sqlite_storage *ss, struct sq_conn *c)
{
    if (pthread_setspecific(ss->key, c) != 0)
        return -1;
    pthread_mutex_lock(&ss->lock);
    c->next = ss->conns;
    if (ss->conns != NULL)
        ss->conns->prev = c;
    ss->conns = c;
    pthread_mutex_unlock(&ss->lock);
    return 0;
}

/* This thread's connection, opened on first use. NULL (logged) if it cannot be opened. */
static struct sq_conn *conn_get(storage *st)
{
    struct sqlite_storage *ss = (struct sqlite_storage *)st;
    struct sq_conn *c = pthread_getspecific(ss->key);
    if (c != NULL)
        return c;
    char err[512];
    c = conn_open(ss, err, sizeof(err));
    if (c == NULL) {
        log_error("event=storage_error backend=sqlite op=connect err=\"%s\"", err);
        return NULL;
    }
    if (conn_attach(ss, c) != 0) {
        log_error("event=storage_error backend=sqlite op=connect err=pthread_setspecific");
        conn_free(c);
        return NULL;
    }
    return c;
}

/* ---- statement helpers ---- */

static void sq_tx_lost(struct sq_conn *c);

/* Logs a failure and maps it to an ST_E* code; constraint violations are not logged. */
static int sq_error(struct sq_conn *c, const char *op, int rc)
{
    sq_tx_lost(c);
    /* A statement that fails outside an operation's savepoint breaks storage_tx_begin's
     * transaction, constraint violations included: PostgreSQL aborts the transaction then, and
     * both backends keep one contract (storage.h). */
    if (c != NULL && c->base && c->depth <= c->base)
        c->broken = 1;
    switch (rc) {
    case SQLITE_CONSTRAINT_UNIQUE:
    case SQLITE_CONSTRAINT_PRIMARYKEY:
        return ST_EEXISTS;
    case SQLITE_CONSTRAINT_FOREIGNKEY:
        return ST_ENOTFOUND; /* a referenced user or enrollment does not exist */
    default:
        break;
    }
    /* The connection's message describes rc unless rc was made up here (bind, fault hook). */
    const char *msg = c != NULL && sqlite3_extended_errcode(c->db) == rc ? sqlite3_errmsg(c->db)
                                                                         : sqlite3_errstr(rc);
    log_error("event=storage_error backend=sqlite op=%s code=%d err=\"%s\"", op, rc, msg);
    return ST_ERROR;
}

/* The cached statement, prepared on first use. NULL (logged) if it cannot be prepared. */
static sqlite3_stmt *sq_stmt(struct sq_conn *c, enum sq_stmt_id id)
{
    if (c == NULL)
        return NULL;
    if (c->stmt[id] == NULL) {
        int rc = sqlite3_prepare_v3(c->db, sq_sql[id], -1, SQLITE_PREPARE_PERSISTENT, &c->stmt[id],
                                    NULL);
        if (rc != SQLITE_OK) {
            log_error("event=storage_error backend=sqlite op=prepare stmt=%d code=%d err=\"%s\"",
                      (int)id, rc, sqlite3_errmsg(c->db));
            c->stmt[id] = NULL;
            return NULL;
        }
    }
    return c->stmt[id];
}

/* This thread's connection and its cached statement id; NULL on failure (logged). */
static sqlite3_stmt *sq_prepare(storage *st, enum sq_stmt_id id, struct sq_conn **cp)
{
    *cp = conn_get(st);
    return sq_stmt(*cp, id);
}

/*
 * Bind helpers. They accept a NULL statement (a failed prepare, already logged: sq_run and
 * sq_row then fail), and record the first bind failure for sq_step to report.
 */
static void sq_bind_rc(struct sq_conn *c, int rc)
{
    if (rc != SQLITE_OK && c->bind_rc == SQLITE_OK)
        c->bind_rc = rc;
}

static void bind_text(struct sq_conn *c, sqlite3_stmt *s, int i, const char *v)
{
    if (s != NULL)
        sq_bind_rc(c, v ? sqlite3_bind_text(s, i, v, -1, SQLITE_STATIC) : sqlite3_bind_null(s, i));
}

static void bind_blob(struct sq_conn *c, sqlite3_stmt *s, int i, const void *v, size_t n)
{
    if (s != NULL)
        sq_bind_rc(c, v ? sqlite3_bind_blob64(s, i, v, n, SQLITE_STATIC) : sqlite3_bind_null(s, i));
}

static void bind_int(struct sq_conn *c, sqlite3_stmt *s, int i, int64_t v)
{
    if (s != NULL)
        sq_bind_rc(c, sqlite3_bind_int64(s, i, v));
}

/* A reference to a users row: 0 means none and is stored as NULL. */
static void bind_ref(struct sq_conn *c, sqlite3_stmt *s, int i, int64_t id)
{
    if (s != NULL)
        sq_bind_rc(c, id ? sqlite3_bind_int64(s, i, id) : sqlite3_bind_null(s, i));
}

static void sq_reset(struct sq_conn *c, sqlite3_stmt *s)
{
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    c->bind_rc = SQLITE_OK;
}

/* Counts one database round trip against the test hook; true when it must fail. */
static int sq_fault(struct sqlite_storage *ss)
{
    int n = atomic_load_explicit(&ss->step_fail_after, memory_order_relaxed);
    while (n > 0) {
        if (atomic_compare_exchange_weak(&ss->step_fail_after, &n, n - 1))
            return n == 1;
    }
    return 0;
}

static int sq_step(struct sq_conn *c, sqlite3_stmt *s)
{
    if (c->broken)
        return SQLITE_ABORT; /* the caller's transaction is gone: nothing runs outside it */
    if (c->bind_rc != SQLITE_OK)
        return c->bind_rc;
    if (sq_fault(c->owner))
        return SQLITE_IOERR;
    return sqlite3_step(s);
}

/*
 * Runs a statement that returns no rows, then resets it. With must_change, a statement that
 * changed no row gives ST_ENOTFOUND.
 */
static int sq_run(struct sq_conn *c, sqlite3_stmt *s, const char *op, int must_change)
{
    if (s == NULL)
        return ST_ERROR;
    int rc = sq_step(c, s);
    if (rc == SQLITE_DONE || rc == SQLITE_ROW)
        rc = must_change && sqlite3_changes(c->db) == 0 ? ST_ENOTFOUND : ST_OK;
    else
        rc = sq_error(c, op, rc);
    sq_reset(c, s);
    return rc;
}

/*
 * Steps a lookup. Returns 1 on a row (the caller reads it and calls sq_reset), otherwise
 * ST_ENOTFOUND or ST_ERROR with the statement already reset.
 */
static int sq_row(struct sq_conn *c, sqlite3_stmt *s, const char *op)
{
    if (s == NULL)
        return ST_ERROR;
    int rc = sq_step(c, s);
    if (rc == SQLITE_ROW)
        return 1;
    rc = rc == SQLITE_DONE ? ST_ENOTFOUND : sq_error(c, op, rc);
    sq_reset(c, s);
    return rc;
}

/*
 * Nesting. An operation that writes several statements brackets them with sq_begin and
 * sq_commit (sq_rollback on failure). Outside storage_tx_begin that is a transaction of its
 * own; inside it (c->base), the operation's level is a savepoint of the caller's transaction,
 * so its failure undoes only its own writes and the caller's batch goes on. SQLite may roll a
 * whole transaction back by itself after some errors (SQLITE_FULL, IOERR, NOMEM, an interrupt):
 * sq_tx_lost notices (autocommit is back on) and marks the caller's transaction broken, so no
 * later statement of the batch runs outside it.
 */
static void sq_tx_lost(struct sq_conn *c)
{
    if (c != NULL && c->depth > 0 && sqlite3_get_autocommit(c->db)) {
        c->depth = 0;
        if (c->base)
            c->broken = 1;
    }
}

/* Runs one transaction-control statement (never a cached one: savepoints are rare). */
static int sq_exec_tx(struct sq_conn *c, const char *sql, const char *op)
{
    if (c->broken)
        return ST_ERROR;
    if (sq_fault(c->owner))
        return sq_error(c, op, SQLITE_IOERR);
    int rc = sqlite3_exec(c->db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? ST_OK : sq_error(c, op, rc);
}

/* Opens a level: BEGIN (IMMEDIATE for writes, deferred for a read snapshot) or a savepoint. */
static int sq_begin_level(struct sq_conn *c, enum sq_stmt_id begin, const char *op)
{
    if (c == NULL)
        return ST_ERROR;
    int rc = c->depth == 0 ? sq_run(c, sq_stmt(c, begin), op, 0)
                           : sq_exec_tx(c, "SAVEPOINT orchard_op", op);
    if (rc == ST_OK)
        c->depth++;
    else if (c->base)
        c->broken = 1; /* the batch cannot go on without this operation's level */
    return rc;
}

static int sq_begin(struct sq_conn *c, const char *op)
{
    return sq_begin_level(c, SQ_BEGIN, op);
}

static int sq_begin_read(struct sq_conn *c, const char *op)
{
    return sq_begin_level(c, SQ_BEGIN_READ, op);
}

/* Ends the operation's level: COMMIT, or RELEASE of its savepoint. */
static int sq_commit(struct sq_conn *c, const char *op)
{
    if (c->depth <= c->base) {
        log_error("event=storage_error backend=sqlite op=%s err=\"commit without begin\"", op);
        return ST_ERROR;
    }
    int rc = c->depth == 1 ? sq_run(c, sq_stmt(c, SQ_COMMIT), op, 0)
                           : sq_exec_tx(c, "RELEASE orchard_op", op);
    if (rc == ST_OK)
        c->depth--;
    return rc;
}

/* Runs a rollback statement; never fault-injected: it is the recovery path. */
static void sq_rollback_exec(struct sq_conn *c, const char *sql)
{
    sqlite3_stmt *s = strcmp(sql, "ROLLBACK") == 0 ? sq_stmt(c, SQ_ROLLBACK) : NULL;
    int rc = s != NULL ? sqlite3_step(s) : sqlite3_exec(c->db, sql, NULL, NULL, NULL);
    if (s != NULL)
        sqlite3_reset(s);
    if (rc != SQLITE_DONE && rc != SQLITE_OK)
        log_error("event=storage_error backend=sqlite op=rollback code=%d err=\"%s\"", rc,
                  sqlite3_errmsg(c->db));
}

/*
 * Undoes the operation's level: ROLLBACK, or back to its savepoint. An operation whose begin
 * failed has no level of its own: inside storage_tx_begin's transaction that leaves the
 * caller's level alone (the transaction is already marked broken); outside, any transaction
 * left open is rolled back, as before nesting existed.
 */
static void sq_rollback(struct sq_conn *c)
{
    sq_tx_lost(c);
    if (c->depth <= c->base) {
        if (c->base == 0 && !sqlite3_get_autocommit(c->db)) {
            sq_rollback_exec(c, "ROLLBACK");
            c->depth = 0;
        }
        return;
    }
    if (c->depth == 1) {
        sq_rollback_exec(c, "ROLLBACK");
        c->depth = 0;
        return;
    }
    sq_rollback_exec(c, "ROLLBACK TO orchard_op; RELEASE orchard_op");
    c->depth--;
}

/* ---- row readers ---- */

static char *col_text(sqlite3_stmt *s, int i)
{
    if (sqlite3_column_type(s, i) == SQLITE_NULL)
        return NULL;
    const unsigned char *t = sqlite3_column_text(s, i);
    size_t n = (size_t)sqlite3_column_bytes(s, i);
    char *out = xmalloc(n + 1);
    memcpy(out, t, n);
    out[n] = '\0';
    return out;
}

/* A blob as a NUL-terminated copy (plists are text), with its length. */
static char *col_blob(sqlite3_stmt *s, int i, size_t *len)
{
    *len = 0;
    if (sqlite3_column_type(s, i) == SQLITE_NULL)
        return NULL;
    const void *p = sqlite3_column_blob(s, i);
    size_t n = (size_t)sqlite3_column_bytes(s, i);
    char *out = xmalloc(n + 1);
    if (n > 0)
        memcpy(out, p, n);
    out[n] = '\0';
    *len = n;
    return out;
}

static void read_user(sqlite3_stmt *s, st_user *u)
{
    u->id = sqlite3_column_int64(s, 0);
    u->email = col_text(s, 1);
    u->managed_apple_id = col_text(s, 2);
    u->password_hash = col_text(s, 3);
    u->idp_subject = col_text(s, 4);
    u->created_at = sqlite3_column_int64(s, 5);
    u->disabled = sqlite3_column_int(s, 6);
}

static void read_session(sqlite3_stmt *s, st_session *x)
{
    x->token_hash = col_text(s, 0);
    x->user_id = sqlite3_column_int64(s, 1);
    x->method = col_text(s, 2);
    x->issued_at = sqlite3_column_int64(s, 3);
    x->expires_at = sqlite3_column_int64(s, 4);
    x->enrollment_id = col_text(s, 5);
    x->revoked_at = sqlite3_column_int64(s, 6);
    x->machine_info = col_text(s, 7);
}

static void read_cert(sqlite3_stmt *s, st_cert *c)
{
    c->serial = col_text(s, 0);
    c->fingerprint = col_text(s, 1);
    c->subject = col_text(s, 2);
    c->user_id = sqlite3_column_int64(s, 3);
    c->session_hash = col_text(s, 4);
    c->enrollment_id = col_text(s, 5);
    c->not_after = sqlite3_column_int64(s, 6);
    c->issued_at = sqlite3_column_int64(s, 7);
    c->revoked_at = sqlite3_column_int64(s, 8);
}

static void read_enrollment(sqlite3_stmt *s, st_enrollment *e)
{
    e->id = col_text(s, 0);
    e->type = sqlite3_column_int(s, 1);
    e->parent_id = col_text(s, 2);
    e->user_id = sqlite3_column_int64(s, 3);
    e->topic = col_text(s, 4);
    e->cert_fingerprint = col_text(s, 5);
    e->push_token = col_text(s, 6);
    e->push_magic = col_text(s, 7);
    e->push_token_dead = sqlite3_column_int(s, 8);
    e->os_version = col_text(s, 9);
    e->build_version = col_text(s, 10);
    e->product_name = col_text(s, 11);
    e->device_name = col_text(s, 12);
    e->model = col_text(s, 13);
    e->auth_state = col_text(s, 14);
    e->auth_state_since = sqlite3_column_int64(s, 15);
    e->last_auth_at = sqlite3_column_int64(s, 16);
    e->last_auth_method = col_text(s, 17);
    e->enrolled_at = sqlite3_column_int64(s, 18);
    e->token_updated_at = sqlite3_column_int64(s, 19);
    e->last_seen_at = sqlite3_column_int64(s, 20);
    e->unenrolled_at = sqlite3_column_int64(s, 21);
}

/* Reads CMD_Q_COLS / CMD_H_COLS; returns the row's seq. */
static int64_t read_command(sqlite3_stmt *s, st_command *c)
{
    c->uuid = col_text(s, 0);
    c->enrollment_id = col_text(s, 1);
    c->request_type = col_text(s, 2);
    c->body = col_blob(s, 3, &c->body_len);
    c->priority = sqlite3_column_int(s, 4);
    c->status = sqlite3_column_int(s, 5);
    c->sensitive = sqlite3_column_int(s, 6);
    c->created_at = sqlite3_column_int64(s, 7);
    c->sent_at = sqlite3_column_int64(s, 8);
    c->completed_at = sqlite3_column_int64(s, 9);
    c->result = col_blob(s, 10, &c->result_len);
    return sqlite3_column_int64(s, 11);
}

static void read_audit(sqlite3_stmt *s, st_audit *a)
{
    a->id = sqlite3_column_int64(s, 0);
    a->at = sqlite3_column_int64(s, 1);
    a->actor = col_text(s, 2);
    a->action = col_text(s, 3);
    a->target = col_text(s, 4);
    a->detail = col_text(s, 5);
}

/* ---- lifecycle ---- */

/* ---- the checkpointer ("Checkpoints" at the top) ---- */

static void *sq_checkpointer(void *arg)
{
    struct sqlite_storage *ss = arg;
    pthread_mutex_lock(&ss->ckpt_lock);
    for (;;) {
        while (!ss->ckpt_wanted && !ss->ckpt_stop)
            pthread_cond_wait(&ss->ckpt_cond, &ss->ckpt_lock);
        if (ss->ckpt_stop)
            break;
        ss->ckpt_wanted = 0;
        pthread_mutex_unlock(&ss->ckpt_lock);
        int log = 0, done = 0;
        int rc = sqlite3_wal_checkpoint_v2(ss->ckpt_conn->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log,
                                           &done);
        if (rc != SQLITE_OK && rc != SQLITE_BUSY)
            log_warn("event=storage_checkpoint_failed backend=sqlite code=%d err=\"%s\"", rc,
                     sqlite3_errmsg(ss->ckpt_conn->db));
        else if (rc == SQLITE_OK && done > 0)
            atomic_fetch_add(&ss->ckpt_runs, 1);
        pthread_mutex_lock(&ss->ckpt_lock);
    }
    pthread_mutex_unlock(&ss->ckpt_lock);
    return NULL;
}

/* Starts the checkpointer; without it (an error, logged) commits checkpoint as SQLite would. */
static void sq_checkpointer_start(struct sqlite_storage *ss)
{
    char err[512];
    ss->ckpt_conn = conn_open(ss, err, sizeof(err));
    if (ss->ckpt_conn == NULL) {
        log_warn("event=storage_checkpointer_off backend=sqlite err=\"%s\"", err);
        return;
    }
    if (pthread_create(&ss->ckpt_thread, NULL, sq_checkpointer, ss) != 0) {
        log_warn("event=storage_checkpointer_off backend=sqlite err=pthread_create");
        conn_free(ss->ckpt_conn);
        ss->ckpt_conn = NULL;
        return;
    }
    ss->ckpt_started = 1;
}

static void sq_checkpointer_stop(struct sqlite_storage *ss)
{
    if (!ss->ckpt_started)
        return;
    pthread_mutex_lock(&ss->ckpt_lock);
    ss->ckpt_stop = 1;
    pthread_cond_signal(&ss->ckpt_cond);
    pthread_mutex_unlock(&ss->ckpt_lock);
    pthread_join(ss->ckpt_thread, NULL);
    ss->ckpt_started = 0;
    conn_free(ss->ckpt_conn);
    ss->ckpt_conn = NULL;
}

long sqlite_storage_checkpoints(storage *st)
{
    return atomic_load(&((struct sqlite_storage *)st)->ckpt_runs);
}

static void sq_close(storage *st)
{
    struct sqlite_storage *ss = (struct sqlite_storage *)st;
    sq_checkpointer_stop(ss);
    /* Deleting the key first means no thread-exit destructor runs for it any more. */
    if (ss->key_ok)
        pthread_key_delete(ss->key);
    while (ss->conns != NULL) {
        struct sq_conn *c = ss->conns;
        ss->conns = c->next;
        conn_free(c);
    }
    pthread_mutex_destroy(&ss->lock);
    pthread_mutex_destroy(&ss->ckpt_lock);
    pthread_cond_destroy(&ss->ckpt_cond);
    free(ss->path);
    free(ss);
}

static int sq_ping(storage *st)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_PING, &c);
    int rc = sq_row(c, s, "ping");
    if (rc != 1)
        return rc == ST_ENOTFOUND ? ST_ERROR : rc;
    sq_reset(c, s);
    return ST_OK;
}

static int sq_schema_version(storage *st)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_SCHEMA_VERSION, &c);
    int rc = sq_row(c, s, "schema_version");
    if (rc != 1)
        return rc == ST_ENOTFOUND ? ST_ERROR : rc;
    rc = sqlite3_column_int(s, 0);
    sq_reset(c, s);
    return rc;
}

/* Runs a one-off query returning one integer (used at open only). */
static int exec_int(sqlite3 *db, const char *sql, int64_t *out)
{
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &s, NULL);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(s);
        if (rc == SQLITE_ROW) {
            *out = sqlite3_column_int64(s, 0);
            rc = SQLITE_OK;
        }
    }
    sqlite3_finalize(s);
    return rc;
}

static int sq_migrate(sqlite3 *db, char *err, size_t err_len)
{
    int64_t cur = 0;
    int rc = sqlite3_exec(db,
                          "CREATE TABLE IF NOT EXISTS schema_migrations ("
                          " version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
                          NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        goto fail;
    for (int v = 1; v <= SQ_NMIGRATIONS; v++) {
        /* Re-read the version under the write lock: another process may be migrating too. */
        rc = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
        if (rc != SQLITE_OK)
            goto fail;
        rc = exec_int(db, "SELECT coalesce(max(version), 0) FROM schema_migrations", &cur);
        if (rc != SQLITE_OK)
            goto fail;
        if (cur > SQ_NMIGRATIONS) {
            sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
            snprintf(err, err_len,
                     "sqlite: database schema version %lld is newer than this build (%d)",
                     (long long)cur, SQ_NMIGRATIONS);
            return -1;
        }
        if (cur < v) {
            rc = sqlite3_exec(db, sq_migrations[v - 1], NULL, NULL, NULL);
            if (rc != SQLITE_OK)
                goto fail;
            char sql[128];
            snprintf(sql, sizeof(sql),
                     "INSERT INTO schema_migrations (version, applied_at) VALUES (%d, %lld)", v,
                     (long long)time(NULL));
            rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
            if (rc != SQLITE_OK)
                goto fail;
            log_info("event=storage_migrated backend=sqlite version=%d", v);
        }
        rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
        if (rc != SQLITE_OK)
            goto fail;
    }
    return 0;
fail:
    snprintf(err, err_len, "sqlite: migration to version %lld failed: %s", (long long)cur + 1,
             sqlite3_errmsg(db));
    if (!sqlite3_get_autocommit(db))
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return -1;
}

static int journal_mode_cb(void *ctx, int ncols, char **vals, char **names)
{
    (void)names;
    if (ncols > 0 && vals[0] != NULL)
        snprintf(ctx, 16, "%s", vals[0]);
    return 0;
}

/*
 * Process-wide SQLite settings, before the library initialises. Memory statistics are off:
 * with them on, every sqlite3_malloc takes one global mutex, which serialised the worker
 * threads on the hot check-in path (seen with perf: most futex wake-ups came from it).
 */
static pthread_once_t sq_config_once = PTHREAD_ONCE_INIT;

static void sq_config(void)
{
    sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0); /* SQLITE_MISUSE if already initialised: fine */
}

storage *sqlite_storage_open(const char *dsn, const char *location, char *err, size_t err_len)
{
    (void)dsn;
    struct sqlite_storage *ss = NULL;
    struct sq_conn *c = NULL;
    pthread_once(&sq_config_once, sq_config);

    if (location[0] == '\0') {
        snprintf(err, err_len, "sqlite: empty database path");
        return NULL;
    }
    if (strcmp(location, ":memory:") == 0) {
        snprintf(err, err_len,
                 "sqlite: in-memory databases are not supported (one connection "
                 "per thread needs a shared file)");
        return NULL;
    }
    if (!sqlite3_threadsafe()) {
        snprintf(err, err_len, "sqlite: the SQLite library was built without thread support");
        return NULL;
    }
    /* Create the file ourselves so it is private: SQLite would use 0644, and the -wal and -shm
     * files it creates later copy the database file's permissions. */
    int fd = open(location, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, err_len, "sqlite: cannot open %s: %s", location, strerror(errno));
        return NULL;
    }
    close(fd);

    ss = xcalloc(1, sizeof(*ss));
    ss->base.ops = &sqlite_ops;
    ss->path = xstrdup(location);
    atomic_init(&ss->step_fail_after, 0);
    atomic_init(&ss->ckpt_runs, 0);
    pthread_mutex_init(&ss->lock, NULL);
    pthread_mutex_init(&ss->ckpt_lock, NULL);
    pthread_cond_init(&ss->ckpt_cond, NULL);
    if (pthread_key_create(&ss->key, conn_thread_exit) != 0) {
        snprintf(err, err_len, "sqlite: pthread_key_create failed");
        goto fail;
    }
    ss->key_ok = 1;

    c = conn_open(ss, err, err_len);
    if (c == NULL)
        goto fail;
    if (conn_attach(ss, c) != 0) {
        conn_free(c);
        snprintf(err, err_len, "sqlite: pthread_setspecific failed");
        goto fail;
    }
    /* WAL is a property of the file (it persists), so setting it once here is enough. */
    char mode[16] = "";
    int rc = sqlite3_exec(c->db, "PRAGMA journal_mode = WAL", journal_mode_cb, mode, NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, err_len, "sqlite: cannot use %s: %s", location, sqlite3_errmsg(c->db));
        goto fail;
    }
    if (strcmp(mode, "wal") != 0) {
        snprintf(err, err_len, "sqlite: %s does not support WAL mode (journal_mode=%s)", location,
                 mode);
        goto fail;
    }
    if (sq_migrate(c->db, err, err_len) != 0)
        goto fail;
    sq_checkpointer_start(ss);
    return &ss->base;
fail:
    sq_close(&ss->base);
    return NULL;
}

static void sq_fail_step_after(storage *st, int n)
{
    struct sqlite_storage *ss = (struct sqlite_storage *)st;
    atomic_store(&ss->step_fail_after, n);
}

/* ---- users and API keys ---- */

static int sq_user_add(storage *st, st_user *u)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_USER_ADD, &c);
    bind_text(c, s, 1, u->email);
    bind_text(c, s, 2, u->managed_apple_id);
    bind_text(c, s, 3, u->password_hash);
    bind_text(c, s, 4, u->idp_subject);
    bind_int(c, s, 5, u->created_at);
    bind_int(c, s, 6, u->disabled ? 1 : 0);
    int rc = sq_run(c, s, "user_add", 0);
    if (rc == ST_OK)
        u->id = sqlite3_last_insert_rowid(c->db);
    return rc;
}

static int sq_user_get_one(storage *st, enum sq_stmt_id id, const char *email, int64_t uid,
                           st_user *out)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, id, &c);
    if (email != NULL)
        bind_text(c, s, 1, email);
    else
        bind_int(c, s, 1, uid);
    int rc = sq_row(c, s, "user_get");
    if (rc != 1)
        return rc;
    read_user(s, out);
    sq_reset(c, s);
    return ST_OK;
}

static int sq_user_get_by_email(storage *st, const char *email, st_user *out)
{
    return sq_user_get_one(st, SQ_USER_GET_BY_EMAIL, email, 0, out);
}

static int sq_user_get(storage *st, int64_t id, st_user *out)
{
    return sq_user_get_one(st, SQ_USER_GET, NULL, id, out);
}

static int sq_user_set_password(storage *st, int64_t id, const char *password_hash)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_USER_SET_PASSWORD, &c);
    bind_int(c, s, 1, id);
    bind_text(c, s, 2, password_hash);
    return sq_run(c, s, "user_set_password", 1);
}

/*
 * The list functions read SQ_LIST_CHUNK rows, reset the statement, then call fn on each: fn
 * may call back into storage, and a slow fn holds no read snapshot. Each chunk is its own
 * snapshot (keyset pagination), so a listing racing with writes sees each row at most once
 * but not one consistent instant.
 */
static int sq_user_list(storage *st, int (*fn)(const st_user *u, void *ctx), void *ctx)
{
    st_user *rows = xcalloc(SQ_LIST_CHUNK, sizeof(*rows));
    int64_t cursor = 0;
    int ret = ST_OK;
    for (;;) {
        struct sq_conn *c;
        sqlite3_stmt *s = sq_prepare(st, SQ_USER_LIST, &c);
        if (s == NULL) {
            ret = ST_ERROR;
            break;
        }
        bind_int(c, s, 1, cursor);
        bind_int(c, s, 2, SQ_LIST_CHUNK);
        int n = 0, rc = SQLITE_DONE;
        while (n < SQ_LIST_CHUNK && (rc = sq_step(c, s)) == SQLITE_ROW)
            read_user(s, &rows[n++]);
        if (n < SQ_LIST_CHUNK && rc != SQLITE_DONE)
            ret = sq_error(c, "user_list", rc);
        sq_reset(c, s);
        if (n > 0)
            cursor = rows[n - 1].id;
        for (int i = 0; i < n; i++) {
            if (ret == ST_OK)
                ret = fn(&rows[i], ctx);
            st_user_cleanup(&rows[i]);
        }
        if (ret != ST_OK || n < SQ_LIST_CHUNK)
            break;
    }
    free(rows);
    return ret;
}

static int sq_apikey_add(storage *st, const char *name, const char *key_hash, int64_t now,
                         int64_t *id)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_APIKEY_ADD, &c);
    bind_text(c, s, 1, name);
    bind_text(c, s, 2, key_hash);
    bind_int(c, s, 3, now);
    int rc = sq_run(c, s, "apikey_add", 0);
    if (rc == ST_OK)
        *id = sqlite3_last_insert_rowid(c->db);
    return rc;
}

static int sq_apikey_find(storage *st, const char *key_hash, int64_t *id, char **name)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_APIKEY_FIND, &c);
    bind_text(c, s, 1, key_hash);
    int rc = sq_row(c, s, "apikey_find");
    if (rc != 1)
        return rc;
    *id = sqlite3_column_int64(s, 0);
    if (name != NULL)
        *name = col_text(s, 1);
    sq_reset(c, s);
    return ST_OK;
}

/* ---- sessions ---- */

static int sq_session_add(storage *st, const st_session *x)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_SESSION_ADD, &c);
    bind_text(c, s, 1, x->token_hash);
    bind_int(c, s, 2, x->user_id);
    bind_text(c, s, 3, x->method);
    bind_int(c, s, 4, x->issued_at);
    bind_int(c, s, 5, x->expires_at);
    bind_text(c, s, 6, x->enrollment_id);
    bind_int(c, s, 7, x->revoked_at);
    bind_text(c, s, 8, x->machine_info);
    return sq_run(c, s, "session_add", 0);
}

static int sq_session_get(storage *st, const char *token_hash, st_session *out)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_SESSION_GET, &c);
    bind_text(c, s, 1, token_hash);
    int rc = sq_row(c, s, "session_get");
    if (rc != 1)
        return rc;
    read_session(s, out);
    sq_reset(c, s);
    return ST_OK;
}

static int sq_session_bind(storage *st, const char *token_hash, const char *enrollment_id)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_SESSION_BIND, &c);
    bind_text(c, s, 1, token_hash);
    bind_text(c, s, 2, enrollment_id);
    int rc = sq_run(c, s, "session_bind", 1);
    if (rc != ST_ENOTFOUND)
        return rc;
    /* Nothing changed: either no such session, or it is bound to another enrollment. A
     * binding is never undone, so this second look cannot race into a wrong answer. */
    s = sq_stmt(c, SQ_SESSION_BOUND_TO);
    bind_text(c, s, 1, token_hash);
    rc = sq_row(c, s, "session_bind");
    if (rc != 1)
        return rc;
    const char *bound = (const char *)sqlite3_column_text(s, 0);
    rc = bound != NULL && strcmp(bound, enrollment_id) == 0 ? ST_OK : ST_ECONFLICT;
    sq_reset(c, s);
    return rc;
}

static int sq_session_set_machine_info(storage *st, const char *token_hash, const char *plist)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_SESSION_SET_MACHINE_INFO, &c);
    bind_text(c, s, 1, token_hash);
    bind_text(c, s, 2, plist);
    return sq_run(c, s, "session_set_machine_info", 1);
}

static int sq_session_revoke_enrollment(storage *st, const char *enrollment_id, int64_t now)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_SESSION_REVOKE_ENROLLMENT, &c);
    bind_text(c, s, 1, enrollment_id);
    bind_int(c, s, 2, now);
    return sq_run(c, s, "session_revoke_enrollment", 0);
}

static int sq_session_revoke(storage *st, const char *token_hash, int64_t now)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_SESSION_REVOKE, &c);
    bind_text(c, s, 1, token_hash);
    bind_int(c, s, 2, now);
    int rc = sq_run(c, s, "session_revoke", 1);
    if (rc != ST_ENOTFOUND)
        return rc;
    /* Already revoked is success (the first revocation time is kept); unknown is not. */
    s = sq_stmt(c, SQ_SESSION_BOUND_TO);
    bind_text(c, s, 1, token_hash);
    rc = sq_row(c, s, "session_revoke");
    if (rc != 1)
        return rc;
    sq_reset(c, s);
    return ST_OK;
}

/* ---- SCEP challenges and certificates ---- */

static int sq_challenge_add(storage *st, const char *challenge_hash, int64_t user_id,
                            const char *session_hash, int64_t expires_at)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_CHALLENGE_ADD, &c);
    bind_text(c, s, 1, challenge_hash);
    bind_ref(c, s, 2, user_id);
    bind_text(c, s, 3, session_hash);
    bind_int(c, s, 4, expires_at);
    return sq_run(c, s, "challenge_add", 0);
}

/* Consumes a challenge; enrollment_id (may be NULL) receives the enrollment it renews. */
static int sq_challenge_take(storage *st, const char *challenge_hash, int64_t now, int64_t *user_id,
                             char **session_hash, char **enrollment_id)
{
    static const char op[] = "challenge_consume";
    int64_t uid = 0, expires_at = 0;
    int used = 0;
    char *sess = NULL, *enr = NULL;
    struct sq_conn *c = conn_get(st);
    if (c == NULL)
        return ST_ERROR;
    int rc = sq_begin(c, op);
    if (rc != ST_OK)
        return rc;
    sqlite3_stmt *s = sq_stmt(c, SQ_CHALLENGE_GET);
    bind_text(c, s, 1, challenge_hash);
    rc = sq_row(c, s, op);
    if (rc != 1)
        goto out;
    uid = sqlite3_column_int64(s, 0);
    sess = col_text(s, 1);
    expires_at = sqlite3_column_int64(s, 2);
    used = sqlite3_column_int(s, 3);
    enr = col_text(s, 4);
    sq_reset(c, s);
    /* A replay is a conflict even after expiry: it is the more telling answer. */
    if (used) {
        rc = ST_ECONFLICT;
        goto out;
    }
    if (expires_at <= now) {
        rc = ST_ENOTFOUND;
        goto out;
    }
    s = sq_stmt(c, SQ_CHALLENGE_USE);
    bind_text(c, s, 1, challenge_hash);
    bind_int(c, s, 2, now);
    rc = sq_run(c, s, op, 1);
    if (rc != ST_OK)
        goto out;
    rc = sq_commit(c, op);
out:
    if (rc != ST_OK) {
        sq_rollback(c);
        free(sess);
        free(enr);
        return rc;
    }
    *user_id = uid;
    *session_hash = sess;
    if (enrollment_id)
        *enrollment_id = enr;
    else
        free(enr);
    return ST_OK;
}

static int sq_challenge_consume(storage *st, const char *challenge_hash, int64_t now,
                                int64_t *user_id, char **session_hash)
{
    return sq_challenge_take(st, challenge_hash, now, user_id, session_hash, NULL);
}

static int sq_cert_add(storage *st, const st_cert *x)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_CERT_ADD, &c);
    bind_text(c, s, 1, x->serial);
    bind_text(c, s, 2, x->fingerprint);
    bind_text(c, s, 3, x->subject);
    bind_ref(c, s, 4, x->user_id);
    bind_text(c, s, 5, x->session_hash);
    bind_text(c, s, 6, x->enrollment_id);
    bind_int(c, s, 7, x->not_after);
    bind_int(c, s, 8, x->issued_at);
    bind_int(c, s, 9, x->revoked_at);
    return sq_run(c, s, "cert_add", 0);
}

static int sq_cert_get_by_fingerprint(storage *st, const char *fingerprint, st_cert *out)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_CERT_GET, &c);
    bind_text(c, s, 1, fingerprint);
    int rc = sq_row(c, s, "cert_get");
    if (rc != 1)
        return rc;
    read_cert(s, out);
    sq_reset(c, s);
    return ST_OK;
}

static int sq_cert_set_enrollment(storage *st, const char *fingerprint, const char *enrollment_id)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_CERT_SET_ENROLLMENT, &c);
    bind_text(c, s, 1, fingerprint);
    bind_text(c, s, 2, enrollment_id);
    return sq_run(c, s, "cert_set_enrollment", 1);
}

static int sq_cert_revoke_enrollment(storage *st, const char *enrollment_id, int64_t now)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_CERT_REVOKE_ENROLLMENT, &c);
    bind_text(c, s, 1, enrollment_id);
    bind_int(c, s, 2, now);
    return sq_run(c, s, "cert_revoke_enrollment", 0);
}

/* ---- enrollments ---- */

static int sq_enrollment_authenticate(storage *st, const st_enrollment *e)
{
    static const char op[] = "enrollment_authenticate";
    struct sq_conn *c = conn_get(st);
    if (c == NULL)
        return ST_ERROR;
    int rc = sq_begin(c, op);
    if (rc != ST_OK)
        return rc;
    sqlite3_stmt *s = sq_stmt(c, SQ_ENR_UPSERT);
    bind_text(c, s, 1, e->id);
    bind_int(c, s, 2, e->type);
    bind_text(c, s, 3, e->parent_id);
    bind_ref(c, s, 4, e->user_id);
    bind_text(c, s, 5, e->topic);
    bind_text(c, s, 6, e->cert_fingerprint);
    bind_text(c, s, 7, e->os_version);
    bind_text(c, s, 8, e->build_version);
    bind_text(c, s, 9, e->product_name);
    bind_text(c, s, 10, e->device_name);
    bind_text(c, s, 11, e->model);
    bind_text(c, s, 12, e->auth_state);
    bind_int(c, s, 13, e->auth_state_since);
    bind_int(c, s, 14, e->last_auth_at);
    bind_text(c, s, 15, e->last_auth_method);
    bind_int(c, s, 16, e->enrolled_at);
    bind_int(c, s, 17, e->last_seen_at);
    rc = sq_run(c, s, op, 0);
    if (rc != ST_OK)
        goto out;
    /* A (re-)Authenticate starts a new enrollment: nothing queued for the old one applies. */
    s = sq_stmt(c, SQ_QUEUE_CLEAR);
    bind_text(c, s, 1, e->id);
    rc = sq_run(c, s, op, 0);
    if (rc != ST_OK)
        goto out;
    rc = sq_commit(c, op);
out:
    if (rc != ST_OK)
        sq_rollback(c);
    return rc;
}

static int sq_enrollment_get(storage *st, const char *id, st_enrollment *out);

/*
 * One read transaction for both lookups: each statement outside a transaction takes and drops
 * the WAL read lock, and that lock's mutex is what the worker threads contended on.
 */
static int sq_device_lookup(storage *st, const char *token_hash, const char *enrollment_id,
                            st_session *s, st_enrollment *e)
{
    static const char op[] = "device_lookup";
    struct sq_conn *c = conn_get(st);
    if (c == NULL || sq_begin_read(c, op) != ST_OK)
        return ST_ERROR;
    int rc = sq_session_get(st, token_hash, s);
    if (rc == ST_OK || rc == ST_ENOTFOUND)
        rc = sq_enrollment_get(st, enrollment_id, e);
    if (rc == ST_ENOTFOUND)
        rc = ST_OK;
    if (rc == ST_OK)
        rc = sq_commit(c, op);
    if (rc != ST_OK) {
        sq_rollback(c);
        st_session_cleanup(s);
        st_enrollment_cleanup(e);
    }
    return rc;
}

static int sq_enrollment_get(storage *st, const char *id, st_enrollment *out)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_ENR_GET, &c);
    bind_text(c, s, 1, id);
    int rc = sq_row(c, s, "enrollment_get");
    if (rc != 1)
        return rc;
    read_enrollment(s, out);
    sq_reset(c, s);
    return ST_OK;
}

static int sq_enrollment_token_update(storage *st, const char *id, const char *push_token,
                                      const char *push_magic, int64_t now)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_ENR_TOKEN_UPDATE, &c);
    bind_text(c, s, 1, id);
    bind_text(c, s, 2, push_token);
    bind_text(c, s, 3, push_magic);
    bind_int(c, s, 4, now);
    return sq_run(c, s, "enrollment_token_update", 1);
}

static int sq_enrollment_set_cert(storage *st, const char *id, const char *fingerprint)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_ENR_SET_CERT, &c);
    bind_text(c, s, 1, id);
    bind_text(c, s, 2, fingerprint);
    return sq_run(c, s, "enrollment_set_cert", 1);
}

static int sq_enrollment_set_auth_state(storage *st, const char *id, const char *state,
                                        int64_t since)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_ENR_SET_AUTH_STATE, &c);
    bind_text(c, s, 1, id);
    bind_text(c, s, 2, state);
    bind_int(c, s, 3, since);
    return sq_run(c, s, "enrollment_set_auth_state", 1);
}

static int sq_enrollment_transition_auth_state(storage *st, const char *id, const char *from,
                                               const char *to, int64_t since)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_ENR_TRANSITION_AUTH_STATE, &c);
    bind_text(c, s, 1, id);
    bind_text(c, s, 2, from);
    bind_text(c, s, 3, to);
    bind_int(c, s, 4, since);
    int rc = sq_run(c, s, "enrollment_transition_auth_state", 1);
    return rc == ST_ENOTFOUND ? ST_ECONFLICT : rc;
}

static int sq_audit_count(storage *st, const char *action, const char *target, int64_t since,
                          int64_t *count)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_AUDIT_COUNT, &c);
    bind_text(c, s, 1, action);
    bind_text(c, s, 2, target);
    bind_int(c, s, 3, since);
    int rc = sq_row(c, s, "audit_count");
    if (rc != 1)
        return rc == ST_ENOTFOUND ? ST_ERROR : rc;
    *count = sqlite3_column_int64(s, 0);
    sq_reset(c, s);
    return ST_OK;
}

static int sq_enrollment_set_last_auth(storage *st, const char *id, int64_t at, const char *method)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_ENR_SET_LAST_AUTH, &c);
    bind_text(c, s, 1, id);
    bind_int(c, s, 2, at);
    bind_text(c, s, 3, method);
    return sq_run(c, s, "enrollment_set_last_auth", 1);
}

static int sq_enrollment_set_push_dead(storage *st, const char *id, int dead)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_ENR_SET_PUSH_DEAD, &c);
    bind_text(c, s, 1, id);
    bind_int(c, s, 2, dead);
    return sq_run(c, s, "enrollment_set_push_dead", 1);
}

static int sq_enrollment_unenroll(storage *st, const char *id, int64_t now)
{
    static const char op[] = "enrollment_unenroll";
    struct sq_conn *c = conn_get(st);
    if (c == NULL)
        return ST_ERROR;
    int rc = sq_begin(c, op);
    if (rc != ST_OK)
        return rc;
    sqlite3_stmt *s = sq_stmt(c, SQ_ENR_UNENROLL);
    bind_text(c, s, 1, id);
    bind_int(c, s, 2, now);
    rc = sq_run(c, s, op, 1);
    if (rc != ST_OK)
        goto out;
    s = sq_stmt(c, SQ_QUEUE_CLEAR);
    bind_text(c, s, 1, id);
    rc = sq_run(c, s, op, 0);
    if (rc != ST_OK)
        goto out;
    rc = sq_commit(c, op);
out:
    if (rc != ST_OK)
        sq_rollback(c);
    return rc;
}

static int sq_enrollment_touch(storage *st, const char *id, int64_t now)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_ENR_TOUCH, &c);
    bind_text(c, s, 1, id);
    bind_int(c, s, 2, now);
    return sq_run(c, s, "enrollment_touch", 1);
}

static int sq_enrollment_list(storage *st, const st_enrollment_filter *f,
                              int (*fn)(const st_enrollment *e, void *ctx), void *ctx)
{
    st_enrollment *rows = xcalloc(SQ_LIST_CHUNK, sizeof(*rows));
    /* Ids are non-empty, so "" sorts before all of them. */
    char *cursor = xstrdup(f->after_id != NULL ? f->after_id : "");
    int64_t left = f->limit > 0 ? f->limit : INT64_MAX;
    int ret = ST_OK;
    while (left > 0) {
        struct sq_conn *c;
        sqlite3_stmt *s = sq_prepare(st, f->user_id ? SQ_ENR_LIST_USER : SQ_ENR_LIST, &c);
        if (s == NULL) {
            ret = ST_ERROR;
            break;
        }
        int want = left < SQ_LIST_CHUNK ? (int)left : SQ_LIST_CHUNK;
        bind_text(c, s, 1, cursor);
        bind_int(c, s, 2, f->include_unenrolled ? 1 : 0);
        bind_int(c, s, 3, want);
        if (f->user_id)
            bind_int(c, s, 4, f->user_id);
        int n = 0, rc = SQLITE_DONE;
        while (n < want && (rc = sq_step(c, s)) == SQLITE_ROW)
            read_enrollment(s, &rows[n++]);
        if (n < want && rc != SQLITE_DONE)
            ret = sq_error(c, "enrollment_list", rc);
        sq_reset(c, s);
        if (n > 0) {
            free(cursor);
            cursor = xstrdup(rows[n - 1].id);
        }
        for (int i = 0; i < n; i++) {
            if (ret == ST_OK)
                ret = fn(&rows[i], ctx);
            st_enrollment_cleanup(&rows[i]);
        }
        left -= n;
        if (ret != ST_OK || n < want)
            break;
    }
    free(cursor);
    free(rows);
    return ret;
}

/* ---- command queue ---- */

static int sq_queue_enqueue(storage *st, const st_command *x)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_CMD_ENQUEUE, &c);
    bind_text(c, s, 1, x->uuid);
    bind_text(c, s, 2, x->enrollment_id);
    bind_text(c, s, 3, x->request_type);
    bind_blob(c, s, 4, x->body, x->body_len);
    bind_int(c, s, 5, x->priority);
    bind_int(c, s, 6, x->sensitive ? 1 : 0);
    bind_int(c, s, 7, x->created_at);
    /* Unknown enrollment: the foreign key fails (ST_ENOTFOUND). No row and no error: the
     * NOT EXISTS found the uuid in history. */
    int rc = sq_run(c, s, "queue_enqueue", 0);
    if (rc == ST_OK && sqlite3_changes(c->db) == 0)
        rc = ST_EEXISTS;
    return rc;
}

/* Reads the next pending command into out (1), or ST_ENOTFOUND / ST_ERROR. */
static int sq_queue_peek(struct sq_conn *c, const char *enrollment_id, int include_notnow,
                         st_command *out, int64_t *seq)
{
    sqlite3_stmt *s = sq_stmt(c, SQ_CMD_NEXT);
    bind_text(c, s, 1, enrollment_id);
    bind_int(c, s, 2, include_notnow);
    int rc = sq_row(c, s, "queue_next");
    if (rc != 1)
        return rc;
    *seq = read_command(s, out);
    sq_reset(c, s);
    return 1;
}

static int sq_queue_next(storage *st, const char *enrollment_id, int include_notnow, int64_t now,
                         st_command *out)
{
    static const char op[] = "queue_next";
    int64_t seq = 0;
    struct sq_conn *c = conn_get(st);
    if (c == NULL)
        return ST_ERROR;
    /*
     * The hot path is an empty queue (most check-ins answer Idle with nothing to send): look
     * first without the write lock, so idle devices never serialise on it. A command enqueued
     * right after this look is sent on the next check-in, which its push triggers anyway.
     */
    sqlite3_stmt *s = sq_stmt(c, SQ_CMD_NEXT);
    bind_text(c, s, 1, enrollment_id);
    bind_int(c, s, 2, include_notnow);
    int rc = sq_row(c, s, op);
    if (rc != 1)
        return rc;
    sq_reset(c, s);

    rc = sq_begin(c, op);
    if (rc != ST_OK)
        return rc;
    rc = sq_queue_peek(c, enrollment_id, include_notnow, out, &seq);
    if (rc != 1)
        goto out;
    s = sq_stmt(c, SQ_CMD_MARK_SENT);
    bind_int(c, s, 1, seq);
    bind_int(c, s, 2, now);
    rc = sq_run(c, s, op, 1);
    if (rc != ST_OK)
        goto out;
    rc = sq_commit(c, op);
    if (rc == ST_OK) {
        out->status = ST_CMD_QUEUED;
        out->sent_at = now;
    }
out:
    if (rc != ST_OK) {
        sq_rollback(c);
        st_command_cleanup(out);
    }
    return rc;
}

static int sq_queue_report(storage *st, const char *enrollment_id, const char *uuid, int status,
                           const char *result, size_t result_len, int64_t now)
{
    static const char op[] = "queue_report";
    struct sq_conn *c = conn_get(st);
    if (c == NULL)
        return ST_ERROR;
    sqlite3_stmt *s;
    if (status == ST_CMD_NOTNOW) {
        /* NotNow keeps the command pending; the device does not keep it (section 9.3). */
        s = sq_stmt(c, SQ_CMD_MARK_NOTNOW);
        bind_text(c, s, 1, uuid);
        bind_text(c, s, 2, enrollment_id);
        return sq_run(c, s, op, 1);
    }
    int rc = sq_begin(c, op);
    if (rc != ST_OK)
        return rc;
    /* Only a pending row moves, so a repeated result finds nothing and changes nothing. */
    s = sq_stmt(c, SQ_CMD_TO_HISTORY);
    bind_text(c, s, 1, uuid);
    bind_text(c, s, 2, enrollment_id);
    bind_int(c, s, 3, status);
    bind_int(c, s, 4, now);
    bind_blob(c, s, 5, result, result_len);
    rc = sq_run(c, s, op, 1);
    if (rc != ST_OK)
        goto out;
    s = sq_stmt(c, SQ_CMD_DELETE);
    bind_text(c, s, 1, uuid);
    bind_text(c, s, 2, enrollment_id);
    rc = sq_run(c, s, op, 1);
    if (rc != ST_OK)
        goto out;
    rc = sq_commit(c, op);
out:
    if (rc != ST_OK)
        sq_rollback(c);
    return rc;
}

static int sq_command_get(storage *st, const char *uuid, st_command *out)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_CMD_GET, &c);
    bind_text(c, s, 1, uuid);
    int rc = sq_row(c, s, "command_get");
    if (rc != 1)
        return rc;
    read_command(s, out);
    sq_reset(c, s);
    return ST_OK;
}

static int sq_command_list(storage *st, const char *enrollment_id, int limit,
                           int (*fn)(const st_command *c, void *ctx), void *ctx)
{
    st_command *rows = xcalloc(SQ_LIST_CHUNK, sizeof(*rows));
    int64_t part = 0, seq = INT64_MAX;
    int64_t left = limit > 0 ? limit : INT64_MAX;
    int ret = ST_OK;
    while (left > 0) {
        struct sq_conn *c;
        sqlite3_stmt *s = sq_prepare(st, SQ_CMD_LIST, &c);
        if (s == NULL) {
            ret = ST_ERROR;
            break;
        }
        int want = left < SQ_LIST_CHUNK ? (int)left : SQ_LIST_CHUNK;
        bind_text(c, s, 1, enrollment_id);
        bind_int(c, s, 2, part);
        bind_int(c, s, 3, seq);
        bind_int(c, s, 4, want);
        int n = 0, rc = SQLITE_DONE;
        while (n < want && (rc = sq_step(c, s)) == SQLITE_ROW) {
            seq = read_command(s, &rows[n++]);
            part = sqlite3_column_int64(s, 12);
        }
        if (n < want && rc != SQLITE_DONE)
            ret = sq_error(c, "command_list", rc);
        sq_reset(c, s);
        for (int i = 0; i < n; i++) {
            if (ret == ST_OK)
                ret = fn(&rows[i], ctx);
            st_command_cleanup(&rows[i]);
        }
        left -= n;
        if (ret != ST_OK || n < want)
            break;
    }
    free(rows);
    return ret;
}

static int sq_queue_clear(storage *st, const char *enrollment_id)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_QUEUE_CLEAR, &c);
    bind_text(c, s, 1, enrollment_id);
    return sq_run(c, s, "queue_clear", 0);
}

static int sq_queue_count(storage *st, const char *enrollment_id, int64_t *count)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_QUEUE_COUNT, &c);
    bind_text(c, s, 1, enrollment_id);
    int rc = sq_row(c, s, "queue_count");
    if (rc != 1)
        return rc == ST_ENOTFOUND ? ST_ERROR : rc;
    *count = sqlite3_column_int64(s, 0);
    sq_reset(c, s);
    return ST_OK;
}

static int sq_history_prune(storage *st, int64_t before, int64_t *deleted)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_HISTORY_PRUNE, &c);
    bind_int(c, s, 1, before);
    int rc = sq_run(c, s, "history_prune", 0);
    if (rc == ST_OK)
        *deleted = sqlite3_changes(c->db);
    return rc;
}

/* ---- audit ---- */

static int sq_audit_add(storage *st, const st_audit *a)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_AUDIT_ADD, &c);
    bind_int(c, s, 1, a->at);
    bind_text(c, s, 2, a->actor);
    bind_text(c, s, 3, a->action);
    bind_text(c, s, 4, a->target);
    bind_text(c, s, 5, a->detail);
    return sq_run(c, s, "audit_add", 0);
}

static int sq_audit_list(storage *st, int64_t before_id, int limit,
                         int (*fn)(const st_audit *a, void *ctx), void *ctx)
{
    st_audit *rows = xcalloc(SQ_LIST_CHUNK, sizeof(*rows));
    int64_t cursor = before_id > 0 ? before_id : INT64_MAX;
    int64_t left = limit > 0 ? limit : INT64_MAX;
    int ret = ST_OK;
    while (left > 0) {
        struct sq_conn *c;
        sqlite3_stmt *s = sq_prepare(st, SQ_AUDIT_LIST, &c);
        if (s == NULL) {
            ret = ST_ERROR;
            break;
        }
        int want = left < SQ_LIST_CHUNK ? (int)left : SQ_LIST_CHUNK;
        bind_int(c, s, 1, cursor);
        bind_int(c, s, 2, want);
        int n = 0, rc = SQLITE_DONE;
        while (n < want && (rc = sq_step(c, s)) == SQLITE_ROW)
            read_audit(s, &rows[n++]);
        if (n < want && rc != SQLITE_DONE)
            ret = sq_error(c, "audit_list", rc);
        sq_reset(c, s);
        if (n > 0)
            cursor = rows[n - 1].id;
        for (int i = 0; i < n; i++) {
            if (ret == ST_OK)
                ret = fn(&rows[i], ctx);
            st_audit_cleanup(&rows[i]);
        }
        left -= n;
        if (ret != ST_OK || n < want)
            break;
    }
    free(rows);
    return ret;
}

/* ---- push outbox ---- */

static int sq_push_enqueue(storage *st, const char *enrollment_id, int64_t now)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_PUSH_ENQUEUE, &c);
    bind_text(c, s, 1, enrollment_id);
    bind_int(c, s, 2, now);
    int rc = sq_run(c, s, "push_enqueue", 0);
    if (rc != ST_OK || sqlite3_changes(c->db) > 0)
        return rc;
    /* No row: unknown, or not pushable. */
    s = sq_stmt(c, SQ_PUSH_ENR_EXISTS);
    bind_text(c, s, 1, enrollment_id);
    rc = sq_row(c, s, "push_enqueue");
    if (rc != 1)
        return rc;
    sq_reset(c, s);
    return ST_ECONFLICT;
}

/* Binds a bulk push's scope and value at i, i + 1 (SQ_BULK_SCOPE). */
static void bind_scope(struct sq_conn *c, sqlite3_stmt *s, int i, int scope, const char *value)
{
    bind_int(c, s, i, scope);
    bind_text(c, s, i + 1, scope == ST_PUSH_ALL || value == NULL ? "" : value);
}

/* The matching pushable enrollments after `after`; only those without an outbox row if
 * `unqueued`. */
static int sq_bulk_count(struct sq_conn *c, const char *after, int scope, const char *value,
                         int unqueued, int64_t *count)
{
    sqlite3_stmt *s =
        sq_stmt(c, scope == ST_PUSH_USER ? SQ_PUSH_BULK_COUNT_USER : SQ_PUSH_BULK_COUNT);
    bind_text(c, s, 1, after);
    bind_scope(c, s, 2, scope, value);
    bind_int(c, s, 4, unqueued);
    int rc = sq_row(c, s, "push_bulk_count");
    if (rc != 1)
        return rc == ST_ENOTFOUND ? ST_ERROR : rc;
    *count = sqlite3_column_int64(s, 0);
    sq_reset(c, s);
    return ST_OK;
}

/* Records the bulk push unless an identical one is waiting to start (a push to all replaces
 * every waiting one). */
static int sq_bulk_add(struct sq_conn *c, int scope, const char *value, int64_t now)
{
    const char *op = "push_enqueue_filter";
    sqlite3_stmt *s;
    int rc;
    if (scope == ST_PUSH_ALL) {
        rc = sq_run(c, sq_stmt(c, SQ_PUSH_BULK_SUPERSEDE), op, 0);
    } else {
        s = sq_stmt(c, SQ_PUSH_BULK_SAME);
        bind_scope(c, s, 1, scope, value);
        rc = sq_row(c, s, op);
        if (rc == 1) {
            sq_reset(c, s);
            return ST_OK;
        }
    }
    if (rc != ST_OK && rc != ST_ENOTFOUND)
        return rc;
    s = sq_stmt(c, SQ_PUSH_BULK_ADD);
    bind_scope(c, s, 1, scope, value);
    bind_int(c, s, 3, now);
    return sq_run(c, s, op, 0);
}

static int sq_push_enqueue_filter(storage *st, int scope, const char *value, int64_t now,
                                  int64_t *queued)
{
    const char *op = "push_enqueue_filter";
    struct sq_conn *c = conn_get(st);
    if (c == NULL)
        return ST_ERROR;
    int rc = sq_begin(c, op);
    if (rc == ST_OK)
        rc = sq_bulk_count(c, "", scope, value, 0, queued);
    if (rc == ST_OK && *queued > 0) {
        sqlite3_stmt *s = sq_stmt(c, SQ_PUSH_BULK_REFRESH);
        bind_int(c, s, 1, now);
        bind_scope(c, s, 2, scope, value);
        rc = sq_run(c, s, op, 0);
        if (rc == ST_OK)
            rc = sq_bulk_add(c, scope, value, now);
    }
    if (rc == ST_OK)
        rc = sq_commit(c, op);
    if (rc != ST_OK)
        sq_rollback(c);
    return rc;
}

static int sq_push_sweep(storage *st, int64_t before, int64_t now, int64_t *queued)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_PUSH_SWEEP, &c);
    bind_int(c, s, 1, before);
    bind_int(c, s, 2, now);
    int rc = sq_run(c, s, "push_sweep", 0);
    if (rc == ST_OK)
        *queued = sqlite3_changes64(c->db);
    return rc;
}

/* Binds a JSON array (storage/push_batch.h) for json_each. */
static void bind_json(struct sq_conn *c, sqlite3_stmt *s, int i, const buf *b)
{
    if (s != NULL)
        sq_bind_rc(c, sqlite3_bind_text(s, i, b->data, (int)b->len, SQLITE_STATIC));
}

/* Appends a rowid to the JSON array being built in b (closed by the caller). */
static void json_rowid(buf *b, size_t *count, int64_t rowid)
{
    buf_append(b, (*count)++ == 0 ? "[" : ",", 1);
    st_json_int(b, rowid);
}

/* A claimed row: where its strings are in the claim's arena (SIZE_MAX for NULL). */
struct sq_push_row {
    size_t id, token, magic, topic;
    int attempts;
    int64_t bulk;
};

static size_t arena_text(buf *a, sqlite3_stmt *s, int i)
{
    const unsigned char *t = sqlite3_column_text(s, i);
    if (t == NULL)
        return SIZE_MAX;
    size_t off = a->len;
    buf_append(a, t, (size_t)sqlite3_column_bytes(s, i) + 1); /* with its NUL */
    return off;
}

static const char *arena_str(const buf *a, size_t off)
{
    return off == SIZE_MAX ? NULL : a->data + off;
}

/* A bulk push a claim may work on (SQ_PUSH_BULK_LIST), copied out of the statement. */
struct sq_bulk {
    int64_t id;
    int scope;
    char *value, *done_to, *claimed_to;
    int mine; /* leased to the claiming owner */
};

/* Reads up to `limit` rows of bulk push b after `after` into rows[*n..], strings into arena. */
static int sq_bulk_page(struct sq_conn *c, const struct sq_bulk *b, const char *after, int limit,
                        struct sq_push_row *rows, buf *arena, int *n)
{
    sqlite3_stmt *s =
        sq_stmt(c, b->scope == ST_PUSH_USER ? SQ_PUSH_BULK_PAGE_USER : SQ_PUSH_BULK_PAGE);
    if (s == NULL)
        return ST_ERROR;
    bind_text(c, s, 1, after);
    bind_scope(c, s, 2, b->scope, b->value);
    bind_int(c, s, 4, limit);
    int src;
    while ((src = sq_step(c, s)) == SQLITE_ROW) {
        struct sq_push_row *r = &rows[(*n)++];
        r->id = arena_text(arena, s, 0);
        r->token = arena_text(arena, s, 1);
        r->magic = arena_text(arena, s, 2);
        r->topic = arena_text(arena, s, 3);
        r->attempts = 0;
        r->bulk = b->id;
    }
    int rc = src == SQLITE_DONE ? ST_OK : sq_error(c, "push_claim", src);
    sq_reset(c, s);
    return rc;
}

/* Copies the bulk pushes owner may work on into list (at most 8); fills *count. */
static int sq_bulk_list(struct sq_conn *c, const char *owner, int64_t now, struct sq_bulk *list,
                        int *count)
{
    sqlite3_stmt *s = sq_stmt(c, SQ_PUSH_BULK_LIST);
    if (s == NULL)
        return ST_ERROR;
    bind_int(c, s, 1, now);
    bind_text(c, s, 2, owner);
    int src;
    *count = 0;
    while ((src = sq_step(c, s)) == SQLITE_ROW && *count < 8) {
        struct sq_bulk *b = &list[(*count)++];
        b->id = sqlite3_column_int64(s, 0);
        b->scope = sqlite3_column_int(s, 1);
        b->value = col_text(s, 2);
        b->done_to = col_text(s, 3);
        b->claimed_to = col_text(s, 4);
        const char *by = (const char *)sqlite3_column_text(s, 5);
        b->mine = by != NULL && strcmp(by, owner) == 0;
    }
    int rc = src == SQLITE_DONE || src == SQLITE_ROW ? ST_OK : sq_error(c, "push_claim", src);
    sq_reset(c, s);
    return rc;
}

/*
 * Fills rows[*n..limit) from the first bulk push owner may work on that has rows left, and
 * leases it up to the last row read. A bulk push with nothing left and nothing outstanding
 * (claimed_to == done_to, or taken over) is deleted; one whose last page is still in flight
 * is kept until its outcomes are recorded.
 */
static int sq_push_claim_bulk(struct sq_conn *c, const char *owner, int64_t now, int lease,
                              int limit, struct sq_push_row *rows, buf *arena, int *n)
{
    struct sq_bulk list[8];
    int count = 0;
    int rc = sq_bulk_list(c, owner, now, list, &count);
    for (int i = 0; i < count && rc == ST_OK; i++) {
        const struct sq_bulk *b = &list[i];
        const char *after = b->mine ? b->claimed_to : b->done_to;
        int before = *n;
        rc = sq_bulk_page(c, b, after, limit - *n, rows, arena, n);
        sqlite3_stmt *s;
        if (rc == ST_OK && *n > before) {
            s = sq_stmt(c, SQ_PUSH_BULK_LEASE);
            bind_int(c, s, 1, b->id);
            bind_text(c, s, 2, owner);
            bind_int(c, s, 3, now + lease);
            bind_text(c, s, 4, arena_str(arena, rows[*n - 1].id));
            rc = sq_run(c, s, "push_claim", 0);
            break;
        }
        if (rc == ST_OK && strcmp(after, b->done_to) == 0) {
            s = sq_stmt(c, SQ_PUSH_BULK_FINISH);
            bind_int(c, s, 1, b->id);
            rc = sq_run(c, s, "push_claim", 0);
        }
    }
    for (int i = 0; i < count; i++) {
        free(list[i].value);
        free(list[i].done_to);
        free(list[i].claimed_to);
    }
    return rc;
}

/*
 * One statement reads the due outbox rows with their enrollment's target (SQ_PUSH_CLAIM), then
 * one leases the pushable ones and one drops the others, both by rowid; the write transaction
 * keeps the rows as read in between. A bulk push fills the rest of the batch. The strings are
 * copied into one arena, so fn runs after the commit with no statement open.
 */
static int sq_push_claim(storage *st, const char *owner, int64_t now, int lease, int limit,
                         int (*fn)(const st_push *p, void *ctx), void *ctx, int *claimed)
{
    const char *op = "push_claim";
    struct sq_conn *c = conn_get(st);
    if (c == NULL)
        return ST_ERROR;
    struct sq_push_row *rows = xcalloc((size_t)limit, sizeof(*rows));
    buf arena, leased, dropped;
    buf_init(&arena, 0);
    buf_init(&leased, 0);
    buf_init(&dropped, 0);
    size_t nleased = 0, ndropped = 0;
    int n = 0;
    int rc = sq_begin(c, op);
    if (rc != ST_OK)
        goto out;
    sqlite3_stmt *s = sq_stmt(c, SQ_PUSH_CLAIM);
    if (s == NULL) {
        rc = ST_ERROR;
        goto out;
    }
    bind_int(c, s, 1, now);
    bind_int(c, s, 2, limit);
    int src;
    while ((src = sq_step(c, s)) == SQLITE_ROW && n < limit) {
        int64_t rowid = sqlite3_column_int64(s, 0);
        if (sqlite3_column_type(s, 3) == SQLITE_NULL) {
            /* The enrollment lost its token (unenrolled, dead, re-Authenticate): drop the row. */
            json_rowid(&dropped, &ndropped, rowid);
            continue;
        }
        json_rowid(&leased, &nleased, rowid);
        struct sq_push_row *r = &rows[n++];
        r->id = arena_text(&arena, s, 1);
        r->attempts = sqlite3_column_int(s, 2);
        r->token = arena_text(&arena, s, 3);
        r->magic = arena_text(&arena, s, 4);
        r->topic = arena_text(&arena, s, 5);
    }
    rc = src == SQLITE_DONE || src == SQLITE_ROW ? ST_OK : sq_error(c, op, src);
    sq_reset(c, s);
    if (rc == ST_OK && nleased > 0) {
        buf_append(&leased, "]", 1);
        s = sq_stmt(c, SQ_PUSH_LEASE);
        bind_text(c, s, 1, owner);
        bind_int(c, s, 2, now + lease);
        bind_json(c, s, 3, &leased);
        rc = sq_run(c, s, op, 0);
    }
    if (rc == ST_OK && ndropped > 0) {
        buf_append(&dropped, "]", 1);
        s = sq_stmt(c, SQ_PUSH_DROP);
        bind_json(c, s, 1, &dropped);
        rc = sq_run(c, s, op, 0);
    }
    if (rc == ST_OK && n < limit)
        rc = sq_push_claim_bulk(c, owner, now, lease, limit, rows, &arena, &n);
    if (rc == ST_OK)
        rc = sq_commit(c, op);
out:
    if (rc != ST_OK) {
        sq_rollback(c);
        n = 0;
    }
    int i = 0;
    while (i < n) {
        const struct sq_push_row *r = &rows[i++];
        st_push p = {arena_str(&arena, r->id),
                     arena_str(&arena, r->token),
                     arena_str(&arena, r->magic),
                     arena_str(&arena, r->topic),
                     r->attempts,
                     r->bulk};
        (*claimed)++;
        if (fn(&p, ctx) != 0)
            break;
    }
    /* Bulk rows fn never saw must not be passed over: rewind the bulk push (its page in
     * flight, if any, is sent again rather than anything lost). */
    if (i < n && rows[n - 1].bulk != 0) {
        s = sq_stmt(c, SQ_PUSH_BULK_REWIND);
        bind_int(c, s, 1, rows[n - 1].bulk);
        bind_text(c, s, 2, owner);
        if (sq_run(c, s, op, 0) != ST_OK)
            rc = ST_ERROR;
    }
    buf_cleanup(&arena);
    buf_cleanup(&leased);
    buf_cleanup(&dropped);
    free(rows);
    return rc;
}

/*
 * Deletes the owned outbox row of each of r[0..n) whose outcome is in `which` (a bit mask of
 * 1 << outcome); fills *deleted. One execution of a prepared DELETE per row: SQLite would run
 * "enrollment_id IN (json list)" by first sorting the list into a temporary index, which costs
 * more than the statement (bench/outbox.c).
 */
static int sq_push_delete_owned(struct sq_conn *c, enum sq_stmt_id id, const char *owner,
                                const st_push_result *r, size_t n, unsigned which, int64_t *deleted)
{
    sqlite3_stmt *s = sq_stmt(c, id);
    int rc = ST_OK;
    *deleted = 0;
    for (size_t i = 0; i < n && rc == ST_OK; i++) {
        unsigned bit = r[i].outcome >= ST_PUSH_SENT && r[i].outcome <= ST_PUSH_UNSENT
                           ? 1u << r[i].outcome
                           : 1u << ST_PUSH_DROP; /* an unknown outcome deletes, as DROP */
        if ((which & bit) == 0)
            continue;
        bind_text(c, s, 1, r[i].enrollment_id);
        bind_text(c, s, 2, owner);
        rc = sq_run(c, s, "push_done", 0);
        if (rc == ST_OK)
            *deleted += sqlite3_changes64(c->db);
    }
    return rc;
}

/* Applies r[0..n), outcomes of distinct enrollments summarised in x (st_push_sets_fill). */
static int sq_push_done_run(struct sq_conn *c, const char *owner, int64_t now,
                            const st_push_result *r, size_t n, const st_push_sets *x)
{
    const char *op = "push_done";
    sqlite3_stmt *s;
    int64_t deleted = 0;
    int rc = ST_OK;
    if (x->nsent > 0) {
        rc = sq_push_delete_owned(c, SQ_PUSH_DEL_SENT, owner, r, n, 1u << ST_PUSH_SENT, &deleted);
        /* Rows enqueued again while in flight (again = 1) are due again now; usually every
         * row was deleted and there is nothing to look for. */
        if (rc == ST_OK && deleted < (int64_t)x->nsent) {
            s = sq_stmt(c, SQ_PUSH_REARM);
            bind_json(c, s, 1, &x->sent);
            bind_text(c, s, 2, owner);
            bind_int(c, s, 3, now);
            rc = sq_run(c, s, op, 0);
        }
        if (rc == ST_OK) {
            s = sq_stmt(c, SQ_PUSH_MARK_PUSHED);
            bind_json(c, s, 1, &x->sent);
            bind_int(c, s, 2, now);
            rc = sq_run(c, s, op, 0);
        }
    }
    if (rc == ST_OK && x->nretry > 0) {
        s = sq_stmt(c, SQ_PUSH_RELEASE);
        bind_json(c, s, 1, &x->retry);
        bind_text(c, s, 2, owner);
        rc = sq_run(c, s, op, 0);
    }
    if (rc == ST_OK && x->ndead > 0) {
        s = sq_stmt(c, SQ_PUSH_MARK_DEAD);
        bind_json(c, s, 1, &x->dead);
        rc = sq_run(c, s, op, 0);
    }
    if (rc == ST_OK && x->ndel > 0)
        rc = sq_push_delete_owned(c, SQ_PUSH_DEL_OWNED, owner, r, n,
                                  1u << ST_PUSH_DEAD | 1u << ST_PUSH_DROP, &deleted);
    return rc;
}

/* Applies one run of a bulk push's outcomes (st_push_sets_fill): pushed devices stamped,
 * retries moved to the outbox, dead tokens marked, then its progress recorded or rewound. */
static int sq_push_done_bulk(struct sq_conn *c, const char *owner, int64_t now,
                             const st_push_sets *x)
{
    const char *op = "push_done";
    sqlite3_stmt *s;
    int rc = ST_OK;
    if (x->nsent > 0) {
        s = sq_stmt(c, SQ_PUSH_MARK_PUSHED);
        bind_json(c, s, 1, &x->sent);
        bind_int(c, s, 2, now);
        rc = sq_run(c, s, op, 0);
    }
    if (rc == ST_OK && x->nretry > 0) {
        s = sq_stmt(c, SQ_PUSH_BULK_RETRY);
        bind_json(c, s, 1, &x->retry);
        bind_int(c, s, 2, now);
        rc = sq_run(c, s, op, 0);
    }
    if (rc == ST_OK && x->ndead > 0) {
        s = sq_stmt(c, SQ_PUSH_MARK_DEAD);
        bind_json(c, s, 1, &x->dead);
        rc = sq_run(c, s, op, 0);
    }
    if (rc == ST_OK && x->last != NULL) {
        s = sq_stmt(c, SQ_PUSH_BULK_ADVANCE);
        bind_int(c, s, 1, x->bulk);
        bind_text(c, s, 2, owner);
        bind_text(c, s, 3, x->last);
        rc = sq_run(c, s, op, 0);
    }
    if (rc == ST_OK && x->unsent) {
        s = sq_stmt(c, SQ_PUSH_BULK_REWIND);
        bind_int(c, s, 1, x->bulk);
        bind_text(c, s, 2, owner);
        rc = sq_run(c, s, op, 0);
    }
    return rc;
}

static int sq_push_done(storage *st, const char *owner, int64_t now, const st_push_result *r,
                        size_t n)
{
    struct sq_conn *c = conn_get(st);
    if (c == NULL)
        return ST_ERROR;
    st_push_sets x;
    st_push_sets_init(&x);
    int rc = sq_begin(c, "push_done");
    for (size_t i = 0, run; i < n && rc == ST_OK; i += run) {
        run = st_push_sets_fill(&x, r + i, n - i, now);
        rc = x.bulk != 0 ? sq_push_done_bulk(c, owner, now, &x)
                         : sq_push_done_run(c, owner, now, r + i, run, &x);
    }
    if (rc == ST_OK)
        rc = sq_commit(c, "push_done");
    if (rc != ST_OK)
        sq_rollback(c);
    st_push_sets_cleanup(&x);
    return rc;
}

/* Outbox rows, plus for each bulk push the matching devices after its progress that have no
 * outbox row (a read transaction: one snapshot). */
static int sq_push_pending(storage *st, int64_t *count)
{
    const char *op = "push_pending";
    struct sq_conn *c = conn_get(st);
    if (c == NULL)
        return ST_ERROR;
    int rc = sq_begin_read(c, op);
    if (rc != ST_OK)
        return rc;
    sqlite3_stmt *s = sq_stmt(c, SQ_PUSH_PENDING);
    rc = sq_row(c, s, op);
    if (rc == 1) {
        *count = sqlite3_column_int64(s, 0);
        sq_reset(c, s);
        rc = ST_OK;
    } else if (rc == ST_ENOTFOUND) {
        rc = ST_ERROR;
    }
    s = rc == ST_OK ? sq_stmt(c, SQ_PUSH_BULK_ALL) : NULL;
    int src = SQLITE_DONE;
    while (s != NULL && (src = sq_step(c, s)) == SQLITE_ROW && rc == ST_OK) {
        char *value = col_text(s, 1), *done_to = col_text(s, 2);
        int64_t left = 0;
        /* SQ_PUSH_BULK_ALL stays open: SQ_PUSH_BULK_COUNT is a different statement. */
        rc = sq_bulk_count(c, done_to, sqlite3_column_int(s, 0), value, 1, &left);
        *count += left;
        free(value);
        free(done_to);
    }
    if (s != NULL) {
        if (rc == ST_OK && src != SQLITE_DONE)
            rc = sq_error(c, op, src);
        sq_reset(c, s);
    }
    sq_rollback(c); /* ends the read transaction */
    return rc;
}

/* ---- sign-in failure counters ---- */

static int sq_failure_read(storage *st, enum sq_stmt_id id, const char *key, int64_t window_start,
                           int64_t *count)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, id, &c);
    bind_text(c, s, 1, key);
    bind_int(c, s, 2, window_start);
    int rc = sq_row(c, s, id == SQ_FAILURE_ADD ? "failure_add" : "failure_count");
    if (rc == ST_ENOTFOUND)
        return ST_OK; /* no failures yet */
    if (rc != 1)
        return rc;
    *count = sqlite3_column_int64(s, 0);
    sq_reset(c, s);
    return ST_OK;
}

static int sq_failure_add(storage *st, const char *key, int64_t window_start, int64_t *count)
{
    return sq_failure_read(st, SQ_FAILURE_ADD, key, window_start, count);
}

static int sq_failure_count(storage *st, const char *key, int64_t window_start, int64_t *count)
{
    return sq_failure_read(st, SQ_FAILURE_COUNT, key, window_start, count);
}

static int sq_failure_prune(storage *st, int64_t before, int64_t *deleted)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_FAILURE_PRUNE, &c);
    bind_int(c, s, 1, before);
    int rc = sq_run(c, s, "failure_prune", 0);
    if (rc == ST_OK)
        *deleted = sqlite3_changes64(c->db);
    return rc;
}

/* ---- retention and server secrets ---- */

/* One DELETE bound by `before` and reporting how many rows went. */
static int sq_prune(storage *st, enum sq_stmt_id id, const char *op, int64_t before, int limit,
                    int64_t *deleted)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, id, &c);
    bind_int(c, s, 1, before);
    if (limit > 0)
        bind_int(c, s, 2, limit);
    int rc = sq_run(c, s, op, 0);
    if (rc == ST_OK)
        *deleted = sqlite3_changes64(c->db);
    return rc;
}

static int sq_audit_prune(storage *st, int64_t before, int limit, int64_t *deleted)
{
    return sq_prune(st, SQ_AUDIT_PRUNE, "audit_prune", before, limit, deleted);
}

static int sq_challenge_prune(storage *st, int64_t before, int64_t *deleted)
{
    return sq_prune(st, SQ_CHALLENGE_PRUNE, "challenge_prune", before, 0, deleted);
}

static int sq_session_prune_unbound(storage *st, int64_t before, int64_t *deleted)
{
    return sq_prune(st, SQ_SESSION_PRUNE_UNBOUND, "session_prune_unbound", before, 0, deleted);
}

/* Insert-if-absent, then read: whoever inserted first, every caller reads the same value. */
static int sq_secret_get_or_add(storage *st, const char *name, const char *candidate, int64_t now,
                                char **value)
{
    static const char op[] = "secret_get_or_add";
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_SECRET_ADD, &c);
    bind_text(c, s, 1, name);
    bind_text(c, s, 2, candidate);
    bind_int(c, s, 3, now);
    int rc = sq_run(c, s, op, 0);
    if (rc != ST_OK)
        return rc;
    s = sq_stmt(c, SQ_SECRET_GET);
    bind_text(c, s, 1, name);
    rc = sq_row(c, s, op);
    if (rc != 1)
        return rc == ST_ENOTFOUND ? ST_ERROR : rc;
    *value = col_text(s, 0);
    sq_reset(c, s);
    return *value ? ST_OK : ST_ERROR;
}

/* ---- webhook events ---- */

static int sq_webhook_add(storage *st, const char *type, const char *data, int64_t now, int64_t *id)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_WEBHOOK_ADD, &c);
    bind_text(c, s, 1, type);
    bind_text(c, s, 2, data);
    bind_int(c, s, 3, now);
    int rc = sq_run(c, s, "webhook_add", 0);
    if (rc == ST_OK)
        *id = sqlite3_last_insert_rowid(c->db);
    return rc;
}

/* A claimed event: its strings in the claim's arena. */
struct sq_webhook_row {
    int64_t id, created_at;
    size_t type, data;
    int attempts;
};

/* Reads the due events and leases them in one write transaction; fn runs after the commit. */
static int sq_webhook_claim(storage *st, const char *owner, int64_t now, int lease, int limit,
                            int (*fn)(const st_webhook_event *e, void *ctx), void *ctx,
                            int *claimed)
{
    const char *op = "webhook_claim";
    struct sq_conn *c = conn_get(st);
    if (c == NULL)
        return ST_ERROR;
    struct sq_webhook_row *rows = xcalloc((size_t)limit, sizeof(*rows));
    buf arena, ids;
    buf_init(&arena, 0);
    buf_init(&ids, 0);
    size_t nids = 0;
    int n = 0, src = SQLITE_DONE;
    int rc = sq_begin(c, op);
    sqlite3_stmt *s = rc == ST_OK ? sq_stmt(c, SQ_WEBHOOK_CLAIM) : NULL;
    if (s != NULL) {
        bind_int(c, s, 1, now);
        bind_int(c, s, 2, limit);
        while (n < limit && (src = sq_step(c, s)) == SQLITE_ROW) {
            struct sq_webhook_row *r = &rows[n++];
            r->id = sqlite3_column_int64(s, 0);
            r->type = arena_text(&arena, s, 1);
            r->data = arena_text(&arena, s, 2);
            r->created_at = sqlite3_column_int64(s, 3);
            r->attempts = sqlite3_column_int(s, 4);
            json_rowid(&ids, &nids, r->id);
        }
        rc = src == SQLITE_DONE || src == SQLITE_ROW ? ST_OK : sq_error(c, op, src);
        sq_reset(c, s);
    } else if (rc == ST_OK) {
        rc = ST_ERROR;
    }
    if (rc == ST_OK && n > 0) {
        buf_append(&ids, "]", 1);
        s = sq_stmt(c, SQ_WEBHOOK_LEASE);
        bind_text(c, s, 1, owner);
        bind_int(c, s, 2, now + lease);
        bind_json(c, s, 3, &ids);
        rc = sq_run(c, s, op, 0);
    }
    if (rc == ST_OK)
        rc = sq_commit(c, op);
    if (rc != ST_OK) {
        sq_rollback(c);
        n = 0;
    }
    for (int i = 0; i < n; i++) {
        st_webhook_event e = {rows[i].id, arena_str(&arena, rows[i].type),
                              arena_str(&arena, rows[i].data), rows[i].created_at,
                              rows[i].attempts};
        (*claimed)++;
        if (fn(&e, ctx) != 0)
            break;
    }
    buf_cleanup(&arena);
    buf_cleanup(&ids);
    free(rows);
    return rc;
}

static int sq_webhook_done(storage *st, const char *owner, int64_t id, int outcome, int64_t due_at,
                           int attempts)
{
    struct sq_conn *c;
    sqlite3_stmt *s =
        sq_prepare(st, outcome == ST_WEBHOOK_RETRY ? SQ_WEBHOOK_RETRY : SQ_WEBHOOK_DELETE, &c);
    bind_int(c, s, 1, id);
    bind_text(c, s, 2, owner);
    if (outcome == ST_WEBHOOK_RETRY) {
        bind_int(c, s, 3, due_at);
        bind_int(c, s, 4, attempts);
    }
    return sq_run(c, s, "webhook_done", 1);
}

static int sq_webhook_pending(storage *st, int64_t *count)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_WEBHOOK_PENDING, &c);
    int rc = sq_row(c, s, "webhook_pending");
    if (rc != 1)
        return rc == ST_ENOTFOUND ? ST_ERROR : rc;
    *count = sqlite3_column_int64(s, 0);
    sq_reset(c, s);
    return ST_OK;
}

/* ---- organisation domains and federated sign-in ---- */

static void read_domain(sqlite3_stmt *s, st_domain *d)
{
    d->name = col_text(s, 0);
    d->auth = col_text(s, 1);
    d->issuer = col_text(s, 2);
    d->client_id = col_text(s, 3);
    d->client_secret = col_text(s, 4);
    d->ca_file = col_text(s, 5);
    d->scopes = col_text(s, 6);
    d->user_claim = col_text(s, 7);
    d->maid_claim = col_text(s, 8);
    d->groups_claim = col_text(s, 9);
    d->allowed_groups = col_text(s, 10);
    d->jit_users = sqlite3_column_int(s, 11);
    d->updated_at = sqlite3_column_int64(s, 12);
}

static int sq_domain_put(storage *st, const st_domain *d)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_DOMAIN_PUT, &c);
    bind_text(c, s, 1, d->name);
    bind_text(c, s, 2, d->auth);
    bind_text(c, s, 3, d->issuer);
    bind_text(c, s, 4, d->client_id);
    bind_text(c, s, 5, d->client_secret);
    bind_text(c, s, 6, d->ca_file);
    bind_text(c, s, 7, d->scopes);
    bind_text(c, s, 8, d->user_claim);
    bind_text(c, s, 9, d->maid_claim);
    bind_text(c, s, 10, d->groups_claim);
    bind_text(c, s, 11, d->allowed_groups);
    bind_int(c, s, 12, d->jit_users ? 1 : 0);
    bind_int(c, s, 13, d->updated_at);
    return sq_run(c, s, "domain_put", 0);
}

static int sq_domain_get(storage *st, const char *name, st_domain *out)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_DOMAIN_GET, &c);
    bind_text(c, s, 1, name);
    int rc = sq_row(c, s, "domain_get");
    if (rc != 1)
        return rc;
    read_domain(s, out);
    sq_reset(c, s);
    return ST_OK;
}

/* Domains are few (the statement caps them): read them all, reset, then call fn. */
static int sq_domain_list(storage *st, int (*fn)(const st_domain *d, void *ctx), void *ctx)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_DOMAIN_LIST, &c);
    if (s == NULL)
        return ST_ERROR;
    st_domain *rows = NULL;
    size_t n = 0, cap = 0;
    int rc, ret = ST_OK;
    while ((rc = sq_step(c, s)) == SQLITE_ROW) {
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            rows = xrealloc(rows, cap * sizeof(*rows));
        }
        memset(&rows[n], 0, sizeof(rows[n]));
        read_domain(s, &rows[n++]);
    }
    if (rc != SQLITE_DONE)
        ret = sq_error(c, "domain_list", rc);
    sq_reset(c, s);
    for (size_t i = 0; i < n; i++) {
        if (ret == ST_OK)
            ret = fn(&rows[i], ctx);
        st_domain_cleanup(&rows[i]);
    }
    free(rows);
    return ret;
}

static int sq_oidc_pending_add(storage *st, const st_oidc_pending *p, int64_t now)
{
    struct sq_conn *c;
    /* Expired sign-ins (abandoned at the IdP) go first; the index makes this cheap. */
    sqlite3_stmt *s = sq_prepare(st, SQ_OIDC_PENDING_PRUNE, &c);
    bind_int(c, s, 1, now);
    int rc = sq_run(c, s, "oidc_pending_add", 0);
    if (rc != ST_OK)
        return rc;
    s = sq_stmt(c, SQ_OIDC_PENDING_ADD);
    bind_text(c, s, 1, p->state_hash);
    bind_text(c, s, 2, p->domain);
    bind_text(c, s, 3, p->identifier);
    bind_text(c, s, 4, p->nonce);
    bind_text(c, s, 5, p->code_verifier);
    bind_int(c, s, 6, p->created_at);
    bind_int(c, s, 7, p->expires_at);
    bind_text(c, s, 8, p->reauth_ticket);
    return sq_run(c, s, "oidc_pending_add", 0);
}

/* One DELETE ... RETURNING: two callbacks racing with the same state cannot both get it. */
static int sq_oidc_pending_take(storage *st, const char *state_hash, int64_t now,
                                st_oidc_pending *out)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_OIDC_PENDING_TAKE, &c);
    bind_text(c, s, 1, state_hash);
    int rc = sq_row(c, s, "oidc_pending_take");
    if (rc != 1)
        return rc;
    out->state_hash = col_text(s, 0);
    out->domain = col_text(s, 1);
    out->identifier = col_text(s, 2);
    out->nonce = col_text(s, 3);
    out->code_verifier = col_text(s, 4);
    out->created_at = sqlite3_column_int64(s, 5);
    out->expires_at = sqlite3_column_int64(s, 6);
    out->reauth_ticket = col_text(s, 7);
    /* Step to the end so the DELETE completes before the reset. */
    rc = sq_step(c, s);
    sq_reset(c, s);
    if (rc != SQLITE_DONE) {
        st_oidc_pending_cleanup(out);
        return sq_error(c, "oidc_pending_take", rc);
    }
    if (out->expires_at <= now) {
        st_oidc_pending_cleanup(out);
        return ST_ENOTFOUND;
    }
    return ST_OK;
}

static int sq_user_set_idp_subject(storage *st, int64_t id, const char *idp_subject)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_USER_SET_IDP_SUBJECT, &c);
    bind_int(c, s, 1, id);
    bind_text(c, s, 2, idp_subject);
    return sq_run(c, s, "user_set_idp_subject", 1);
}

/* ---- library: profiles, apps, assignments, installed state ---- */

static int64_t read_lib_profile(sqlite3_stmt *s, void *row)
{
    st_profile *p = row;
    p->id = sqlite3_column_int64(s, 0);
    p->identifier = col_text(s, 1);
    p->name = col_text(s, 2);
    p->platforms = col_text(s, 3);
    p->body = col_blob(s, 4, &p->body_len);
    p->sensitive = sqlite3_column_int(s, 5);
    p->sign = sqlite3_column_int(s, 6);
    p->created_at = sqlite3_column_int64(s, 7);
    p->version = sqlite3_column_int64(s, 8);
    return p->id;
}

static int64_t read_lib_app(sqlite3_stmt *s, void *row)
{
    st_app *a = row;
    a->id = sqlite3_column_int64(s, 0);
    a->identifier = col_text(s, 1);
    a->itunes_store_id = sqlite3_column_int64(s, 2);
    a->manifest_url = col_text(s, 3);
    a->spec = col_text(s, 4);
    a->sensitive = sqlite3_column_int(s, 5);
    a->created_at = sqlite3_column_int64(s, 6);
    a->version = sqlite3_column_int64(s, 7);
    return a->id;
}

static int64_t read_lib_assignment(sqlite3_stmt *s, void *row)
{
    st_assignment *a = row;
    a->id = sqlite3_column_int64(s, 0);
    a->item_kind = sqlite3_column_int(s, 1);
    a->item_id = sqlite3_column_int64(s, 2);
    a->target_type = sqlite3_column_int(s, 3);
    a->target = col_text(s, 4);
    a->created_at = sqlite3_column_int64(s, 5);
    return a->id;
}

static int64_t read_lib_state(sqlite3_stmt *s, void *row)
{
    st_item_state *x = row;
    x->enrollment_id = col_text(s, 0);
    x->item_kind = sqlite3_column_int(s, 1);
    x->item_id = sqlite3_column_int64(s, 2);
    x->identifier = col_text(s, 3);
    x->state = sqlite3_column_int(s, 4);
    x->command_uuid = col_text(s, 5);
    x->sensitive = sqlite3_column_int(s, 6);
    x->detail = col_text(s, 7);
    x->updated_at = sqlite3_column_int64(s, 8);
    x->version = sqlite3_column_int64(s, 9);
    return 0;
}

/* How a generic list walks one record type: read a row, hand it to the caller, free it. */
struct lib_rows {
    size_t size;
    int64_t (*read)(sqlite3_stmt *s, void *row);
    int (*emit)(const void *row, void *ctx); /* calls the typed callback */
    void (*cleanup)(void *row);
    void *ctx;
};

/* Keyset pagination over "WHERE id > ?1 ... LIMIT ?2" in SQ_LIST_CHUNK rows, as sq_user_list. */
static int lib_list_by_id(storage *st, enum sq_stmt_id id, const struct lib_rows *r, const char *op)
{
    char *rows = xcalloc(SQ_LIST_CHUNK, r->size);
    int64_t cursor = 0;
    int ret = ST_OK;
    for (;;) {
        struct sq_conn *c;
        sqlite3_stmt *s = sq_prepare(st, id, &c);
        if (s == NULL) {
            ret = ST_ERROR;
            break;
        }
        bind_int(c, s, 1, cursor);
        bind_int(c, s, 2, SQ_LIST_CHUNK);
        int n = 0, rc = SQLITE_DONE;
        while (n < SQ_LIST_CHUNK && (rc = sq_step(c, s)) == SQLITE_ROW)
            cursor = r->read(s, rows + (size_t)n++ * r->size);
        if (n < SQ_LIST_CHUNK && rc != SQLITE_DONE)
            ret = sq_error(c, op, rc);
        sq_reset(c, s);
        for (int i = 0; i < n; i++) {
            if (ret == ST_OK)
                ret = r->emit(rows + (size_t)i * r->size, r->ctx);
            r->cleanup(rows + (size_t)i * r->size);
        }
        if (ret != ST_OK || n < SQ_LIST_CHUNK)
            break;
    }
    free(rows);
    return ret;
}

/* Reads every row of a bound statement (small per-enrollment sets), then emits them. */
static int lib_list_all(struct sq_conn *c, sqlite3_stmt *s, const struct lib_rows *r,
                        const char *op)
{
    if (s == NULL)
        return ST_ERROR;
    size_t n = 0, cap = 16;
    char *rows = xcalloc(cap, r->size);
    int rc, ret = ST_OK;
    while ((rc = sq_step(c, s)) == SQLITE_ROW) {
        if (n == cap) {
            rows = xrealloc(rows, cap * 2 * r->size);
            memset(rows + cap * r->size, 0, cap * r->size);
            cap *= 2;
        }
        r->read(s, rows + n++ * r->size);
    }
    if (rc != SQLITE_DONE)
        ret = sq_error(c, op, rc);
    sq_reset(c, s);
    for (size_t i = 0; i < n; i++) {
        if (ret == ST_OK)
            ret = r->emit(rows + i * r->size, r->ctx);
        r->cleanup(rows + i * r->size);
    }
    free(rows);
    return ret;
}

/* One row by a key bound by the caller: 0 and out filled, or ST_ENOTFOUND / ST_ERROR. */
static int lib_get_one(struct sq_conn *c, sqlite3_stmt *s, int64_t (*read)(sqlite3_stmt *, void *),
                       void *out, const char *op)
{
    int rc = sq_row(c, s, op);
    if (rc != 1)
        return rc;
    read(s, out);
    sq_reset(c, s);
    return ST_OK;
}

/* Deletes an item row and its assignments in one transaction. */
static int lib_item_delete(storage *st, enum sq_stmt_id del, int kind, int64_t id, const char *op)
{
    struct sq_conn *c = conn_get(st);
    if (c == NULL)
        return ST_ERROR;
    int rc = sq_begin(c, op);
    if (rc != ST_OK)
        return rc;
    sqlite3_stmt *s = sq_stmt(c, SQ_LIB_ITEM_UNASSIGN);
    bind_int(c, s, 1, kind);
    bind_int(c, s, 2, id);
    rc = sq_run(c, s, op, 0);
    if (rc != ST_OK)
        goto out;
    s = sq_stmt(c, del);
    bind_int(c, s, 1, id);
    rc = sq_run(c, s, op, 1);
    if (rc != ST_OK)
        goto out;
    rc = sq_commit(c, op);
out:
    if (rc != ST_OK)
        sq_rollback(c);
    return rc;
}

static int sq_profile_add(storage *st, st_profile *p)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_LIB_PROFILE_ADD, &c);
    bind_text(c, s, 1, p->identifier);
    bind_text(c, s, 2, p->name);
    bind_text(c, s, 3, p->platforms);
    bind_blob(c, s, 4, p->body, p->body_len);
    bind_int(c, s, 5, p->sensitive ? 1 : 0);
    bind_int(c, s, 6, p->sign ? 1 : 0);
    bind_int(c, s, 7, p->created_at);
    int rc = sq_run(c, s, "profile_add", 0);
    if (rc == ST_OK)
        p->id = sqlite3_last_insert_rowid(c->db);
    return rc;
}

static int sq_profile_get(storage *st, int64_t id, st_profile *out)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_LIB_PROFILE_GET, &c);
    bind_int(c, s, 1, id);
    return lib_get_one(c, s, read_lib_profile, out, "profile_get");
}

/* A list's typed callback, carried through the generic walkers. */
struct lib_typed_fn {
    union {
        int (*profile)(const st_profile *p, void *ctx);
        int (*app)(const st_app *a, void *ctx);
        int (*assignment)(const st_assignment *a, void *ctx);
        int (*state)(const st_item_state *s, void *ctx);
        int (*enrollment)(const char *enrollment_id, void *ctx);
    } fn;
    void *ctx;
};

static int emit_profile(const void *row, void *ctx)
{
    struct lib_typed_fn *t = ctx;
    return t->fn.profile(row, t->ctx);
}

static void cleanup_profile(void *row)
{
    st_profile_cleanup(row);
}

static int sq_profile_list(storage *st, int (*fn)(const st_profile *p, void *ctx), void *ctx)
{
    struct lib_typed_fn t = {.ctx = ctx};
    t.fn.profile = fn;
    struct lib_rows r = {sizeof(st_profile), read_lib_profile, emit_profile, cleanup_profile, &t};
    return lib_list_by_id(st, SQ_LIB_PROFILE_LIST, &r, "profile_list");
}

static int sq_profile_delete(storage *st, int64_t id)
{
    return lib_item_delete(st, SQ_LIB_PROFILE_DELETE, ST_ITEM_PROFILE, id, "profile_delete");
}

static int sq_profile_replace(storage *st, st_profile *p)
{
    const char *op = "profile_replace";
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_LIB_PROFILE_REPLACE, &c);
    bind_int(c, s, 1, p->id);
    bind_text(c, s, 2, p->identifier);
    bind_text(c, s, 3, p->name);
    bind_text(c, s, 4, p->platforms);
    bind_blob(c, s, 5, p->body, p->body_len);
    bind_int(c, s, 6, p->sensitive ? 1 : 0);
    bind_int(c, s, 7, p->sign ? 1 : 0);
    int rc = sq_row(c, s, op);
    if (rc == 1) {
        p->version = sqlite3_column_int64(s, 0);
        sq_reset(c, s);
        return ST_OK;
    }
    if (rc != ST_ENOTFOUND)
        return rc;
    /* Unknown, or another identifier. */
    s = sq_stmt(c, SQ_LIB_PROFILE_IDENT);
    bind_int(c, s, 1, p->id);
    rc = sq_row(c, s, op);
    if (rc != 1)
        return rc;
    sq_reset(c, s);
    return ST_ECONFLICT;
}

static int sq_app_add(storage *st, st_app *a)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_LIB_APP_ADD, &c);
    bind_text(c, s, 1, a->identifier);
    bind_int(c, s, 2, a->itunes_store_id);
    bind_text(c, s, 3, a->manifest_url);
    bind_text(c, s, 4, a->spec);
    bind_int(c, s, 5, a->sensitive ? 1 : 0);
    bind_int(c, s, 6, a->created_at);
    int rc = sq_run(c, s, "app_add", 0);
    if (rc == ST_OK)
        a->id = sqlite3_last_insert_rowid(c->db);
    return rc;
}

static int sq_app_replace(storage *st, st_app *a)
{
    const char *op = "app_replace";
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_LIB_APP_REPLACE, &c);
    bind_int(c, s, 1, a->id);
    bind_text(c, s, 2, a->identifier);
    bind_int(c, s, 3, a->itunes_store_id);
    bind_text(c, s, 4, a->manifest_url);
    bind_text(c, s, 5, a->spec);
    bind_int(c, s, 6, a->sensitive ? 1 : 0);
    int rc = sq_row(c, s, op);
    if (rc == 1) {
        a->version = sqlite3_column_int64(s, 0);
        sq_reset(c, s);
        return ST_OK;
    }
    if (rc != ST_ENOTFOUND)
        return rc;
    s = sq_stmt(c, SQ_LIB_APP_EXISTS); /* unknown, or another identity */
    bind_int(c, s, 1, a->id);
    rc = sq_row(c, s, op);
    if (rc != 1)
        return rc;
    sq_reset(c, s);
    return ST_ECONFLICT;
}

static int sq_app_get(storage *st, int64_t id, st_app *out)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_LIB_APP_GET, &c);
    bind_int(c, s, 1, id);
    return lib_get_one(c, s, read_lib_app, out, "app_get");
}

static int emit_app(const void *row, void *ctx)
{
    struct lib_typed_fn *t = ctx;
    return t->fn.app(row, t->ctx);
}

static void cleanup_app(void *row)
{
    st_app_cleanup(row);
}

static int sq_app_list(storage *st, int (*fn)(const st_app *a, void *ctx), void *ctx)
{
    struct lib_typed_fn t = {.ctx = ctx};
    t.fn.app = fn;
    struct lib_rows r = {sizeof(st_app), read_lib_app, emit_app, cleanup_app, &t};
    return lib_list_by_id(st, SQ_LIB_APP_LIST, &r, "app_list");
}

static int sq_app_delete(storage *st, int64_t id)
{
    return lib_item_delete(st, SQ_LIB_APP_DELETE, ST_ITEM_APP, id, "app_delete");
}

static int sq_assignment_add(storage *st, st_assignment *a)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_LIB_ASSIGN_ADD, &c);
    bind_int(c, s, 1, a->item_kind);
    bind_int(c, s, 2, a->item_id);
    bind_int(c, s, 3, a->target_type);
    bind_text(c, s, 4, a->target);
    bind_int(c, s, 5, a->created_at);
    int rc = sq_run(c, s, "assignment_add", 0);
    if (rc == ST_OK && sqlite3_changes(c->db) == 0)
        return ST_ENOTFOUND;
    if (rc == ST_OK)
        a->id = sqlite3_last_insert_rowid(c->db);
    return rc;
}

static int sq_assignment_get(storage *st, int64_t id, st_assignment *out)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_LIB_ASSIGN_GET, &c);
    bind_int(c, s, 1, id);
    return lib_get_one(c, s, read_lib_assignment, out, "assignment_get");
}

static int sq_assignment_delete(storage *st, int64_t id)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_LIB_ASSIGN_DELETE, &c);
    bind_int(c, s, 1, id);
    return sq_run(c, s, "assignment_delete", 1);
}

static int emit_assignment(const void *row, void *ctx)
{
    struct lib_typed_fn *t = ctx;
    return t->fn.assignment(row, t->ctx);
}

static void cleanup_assignment(void *row)
{
    st_assignment_cleanup(row);
}

static int sq_assignment_list(storage *st, int (*fn)(const st_assignment *a, void *ctx), void *ctx)
{
    struct lib_typed_fn t = {.ctx = ctx};
    t.fn.assignment = fn;
    struct lib_rows r = {sizeof(st_assignment), read_lib_assignment, emit_assignment,
                         cleanup_assignment, &t};
    return lib_list_by_id(st, SQ_LIB_ASSIGN_LIST, &r, "assignment_list");
}

struct lib_item_ref {
    int kind;
    int64_t id;
};

static int sq_assignment_items(storage *st, const char *email, const char *domain,
                               const char *enrollment_id,
                               int (*fn)(int item_kind, int64_t item_id, void *ctx), void *ctx)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_LIB_ASSIGN_ITEMS, &c);
    if (s == NULL)
        return ST_ERROR;
    bind_text(c, s, 1, email);
    bind_text(c, s, 2, domain);
    bind_text(c, s, 3, enrollment_id);
    size_t n = 0, cap = 16;
    struct lib_item_ref *rows = xcalloc(cap, sizeof(*rows));
    int rc, ret = ST_OK;
    while ((rc = sq_step(c, s)) == SQLITE_ROW) {
        if (n == cap) {
            cap *= 2;
            rows = xrealloc(rows, cap * sizeof(*rows));
        }
        rows[n].kind = sqlite3_column_int(s, 0);
        rows[n++].id = sqlite3_column_int64(s, 1);
    }
    if (rc != SQLITE_DONE)
        ret = sq_error(c, "assignment_items", rc);
    sq_reset(c, s);
    for (size_t i = 0; i < n && ret == ST_OK; i++)
        ret = fn(rows[i].kind, rows[i].id, ctx);
    free(rows);
    return ret;
}

static int sq_item_state_put(storage *st, const st_item_state *x, const char *expect_command)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_LIB_STATE_PUT, &c);
    bind_text(c, s, 1, x->enrollment_id);
    bind_int(c, s, 2, x->item_kind);
    bind_int(c, s, 3, x->item_id);
    bind_text(c, s, 4, x->identifier);
    bind_int(c, s, 5, x->state);
    bind_text(c, s, 6, x->command_uuid);
    bind_int(c, s, 7, x->sensitive ? 1 : 0);
    bind_text(c, s, 8, x->detail);
    bind_int(c, s, 9, x->updated_at);
    bind_text(c, s, 10, expect_command);
    bind_int(c, s, 11, x->version > 0 ? x->version : 1);
    int rc = sq_run(c, s, "item_state_put", 1);
    return rc == ST_ENOTFOUND ? ST_ECONFLICT : rc;
}

static int sq_item_state_delete(storage *st, const char *enrollment_id, int item_kind,
                                int64_t item_id)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_LIB_STATE_DELETE, &c);
    bind_text(c, s, 1, enrollment_id);
    bind_int(c, s, 2, item_kind);
    bind_int(c, s, 3, item_id);
    return sq_run(c, s, "item_state_delete", 0);
}

static int emit_state(const void *row, void *ctx)
{
    struct lib_typed_fn *t = ctx;
    return t->fn.state(row, t->ctx);
}

static void cleanup_state(void *row)
{
    st_item_state_cleanup(row);
}

static int sq_item_state_list(storage *st, const char *enrollment_id,
                              int (*fn)(const st_item_state *s, void *ctx), void *ctx)
{
    struct lib_typed_fn t = {.ctx = ctx};
    t.fn.state = fn;
    struct lib_rows r = {sizeof(st_item_state), read_lib_state, emit_state, cleanup_state, &t};
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_LIB_STATE_LIST, &c);
    if (s != NULL)
        bind_text(c, s, 1, enrollment_id);
    return lib_list_all(c, s, &r, "item_state_list");
}

static int sq_item_state_by_command(storage *st, const char *command_uuid, st_item_state *out)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_LIB_STATE_BY_COMMAND, &c);
    bind_text(c, s, 1, command_uuid);
    return lib_get_one(c, s, read_lib_state, out, "item_state_by_command");
}

static int sq_item_state_clear(storage *st, const char *enrollment_id)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_LIB_STATE_CLEAR, &c);
    bind_text(c, s, 1, enrollment_id);
    return sq_run(c, s, "item_state_clear", 0);
}

static int64_t read_lib_enrollment_id(sqlite3_stmt *s, void *row)
{
    *(char **)row = col_text(s, 0);
    return 0;
}

static int emit_enrollment_id(const void *row, void *ctx)
{
    struct lib_typed_fn *t = ctx;
    return t->fn.enrollment(*(char *const *)row, t->ctx);
}

static void cleanup_enrollment_id(void *row)
{
    free(*(char **)row);
}

static int sq_item_state_enrollments(storage *st, int item_kind, int64_t item_id,
                                     int (*fn)(const char *enrollment_id, void *ctx), void *ctx)
{
    struct lib_typed_fn t = {.ctx = ctx};
    t.fn.enrollment = fn;
    struct lib_rows r = {sizeof(char *), read_lib_enrollment_id, emit_enrollment_id,
                         cleanup_enrollment_id, &t};
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_LIB_STATE_ENROLLMENTS, &c);
    if (s != NULL) {
        bind_int(c, s, 1, item_kind);
        bind_int(c, s, 2, item_id);
    }
    return lib_list_all(c, s, &r, "item_state_enrollments");
}

/* ---- identity renewal (migration 13) ---- */

static int sq_challenge_add_renewal(storage *st, const char *challenge_hash, int64_t user_id,
                                    const char *session_hash, const char *enrollment_id,
                                    int64_t expires_at)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_CHALLENGE_ADD_RENEWAL, &c);
    bind_text(c, s, 1, challenge_hash);
    bind_ref(c, s, 2, user_id);
    bind_text(c, s, 3, session_hash);
    bind_text(c, s, 4, enrollment_id);
    bind_int(c, s, 5, expires_at);
    return sq_run(c, s, "challenge_add_renewal", 0);
}

static int sq_challenge_consume_bound(storage *st, const char *challenge_hash, int64_t now,
                                      int64_t *user_id, char **session_hash, char **enrollment_id)
{
    return sq_challenge_take(st, challenge_hash, now, user_id, session_hash, enrollment_id);
}

static void read_renewal(sqlite3_stmt *s, st_renewal *r)
{
    r->enrollment_id = col_text(s, 0);
    r->old_fingerprint = col_text(s, 1);
    r->expires_at = sqlite3_column_int64(s, 2);
    r->state = col_text(s, 3);
    r->attempts = sqlite3_column_int(s, 4);
    r->next_attempt_at = sqlite3_column_int64(s, 5);
    r->challenge_hash = col_text(s, 6);
    r->command_uuid = col_text(s, 7);
    r->new_fingerprint = col_text(s, 8);
    r->last_error = col_text(s, 9);
    r->started_at = sqlite3_column_int64(s, 10);
    r->updated_at = sqlite3_column_int64(s, 11);
    r->version = sqlite3_column_int64(s, 12);
}

/* A candidate row of SQ_RENEWAL_CANDIDATES: the identity and the earlier row's version. */
static void read_renewal_candidate(sqlite3_stmt *s, st_renewal *r)
{
    r->enrollment_id = col_text(s, 0);
    r->old_fingerprint = col_text(s, 1);
    r->expires_at = sqlite3_column_int64(s, 2);
    r->version = sqlite3_column_int64(s, 3);
}

static int sq_renewal_get(storage *st, const char *enrollment_id, st_renewal *out)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_RENEWAL_GET, &c);
    bind_text(c, s, 1, enrollment_id);
    int rc = sq_row(c, s, "renewal_get");
    if (rc != 1)
        return rc;
    read_renewal(s, out);
    sq_reset(c, s);
    return ST_OK;
}

static int sq_renewal_put(storage *st, st_renewal *r, int64_t expect_version)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_RENEWAL_PUT, &c);
    bind_text(c, s, 1, r->enrollment_id);
    bind_text(c, s, 2, r->old_fingerprint);
    bind_int(c, s, 3, r->expires_at);
    bind_text(c, s, 4, r->state);
    bind_int(c, s, 5, r->attempts);
    bind_int(c, s, 6, r->next_attempt_at);
    bind_text(c, s, 7, r->challenge_hash);
    bind_text(c, s, 8, r->command_uuid);
    bind_text(c, s, 9, r->new_fingerprint);
    bind_text(c, s, 10, r->last_error);
    bind_int(c, s, 11, r->started_at);
    bind_int(c, s, 12, r->updated_at);
    bind_int(c, s, 13, expect_version);
    int rc = sq_row(c, s, "renewal_put");
    if (rc != 1) /* no row back: the stored version was not the expected one */
        return rc == ST_ENOTFOUND ? ST_ECONFLICT : rc;
    r->version = sqlite3_column_int64(s, 0);
    sq_reset(c, s);
    return ST_OK;
}

/*
 * Reads at most `limit` rows of a bound renewal statement, resets it, then calls fn on each (no
 * statement open while fn runs: it writes).
 */
static int sq_renewal_rows(struct sq_conn *c, sqlite3_stmt *s, int limit,
                           void (*read)(sqlite3_stmt *s, st_renewal *r),
                           int (*fn)(const st_renewal *r, void *ctx), void *ctx, const char *op)
{
    if (s == NULL)
        return ST_ERROR;
    st_renewal *rows = xcalloc((size_t)limit, sizeof(*rows));
    int n = 0, rc = SQLITE_DONE, ret = ST_OK;
    while (n < limit && (rc = sq_step(c, s)) == SQLITE_ROW)
        read(s, &rows[n++]);
    if (n < limit && rc != SQLITE_DONE)
        ret = sq_error(c, op, rc);
    sq_reset(c, s);
    for (int i = 0; i < n; i++) {
        if (ret == ST_OK)
            ret = fn(&rows[i], ctx);
        st_renewal_cleanup(&rows[i]);
    }
    free(rows);
    return ret;
}

static int sq_renewal_candidates(storage *st, int64_t expires_before, int limit,
                                 int (*fn)(const st_renewal *r, void *ctx), void *ctx)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_RENEWAL_CANDIDATES, &c);
    if (s != NULL) {
        bind_int(c, s, 1, expires_before);
        bind_int(c, s, 2, limit);
    }
    return sq_renewal_rows(c, s, limit, read_renewal_candidate, fn, ctx, "renewal_candidates");
}

static int sq_renewal_due(storage *st, int64_t now, int64_t errors_since, int limit,
                          int (*fn)(const st_renewal *r, void *ctx), void *ctx)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_RENEWAL_DUE, &c);
    if (s != NULL) {
        bind_int(c, s, 1, now);
        bind_int(c, s, 2, errors_since);
        bind_int(c, s, 3, limit);
    }
    return sq_renewal_rows(c, s, limit, read_renewal, fn, ctx, "renewal_due");
}

static int sq_identity_rotate(storage *st, const char *enrollment_id, const char *root_id,
                              const char *old_fp, const char *new_fp, int64_t now,
                              int *renewal_done)
{
    static const char op[] = "identity_rotate";
    struct sq_conn *c = conn_get(st);
    if (c == NULL)
        return ST_ERROR;
    int rc = sq_begin(c, op);
    if (rc != ST_OK)
        return rc;
    sqlite3_stmt *s = sq_stmt(c, SQ_ROTATE_ENROLLMENT);
    bind_text(c, s, 1, enrollment_id);
    bind_text(c, s, 2, old_fp);
    bind_text(c, s, 3, new_fp);
    rc = sq_run(c, s, op, 1);
    if (rc == ST_ENOTFOUND)
        rc = ST_ECONFLICT; /* another request rotated it first, or it is unknown */
    if (rc != ST_OK)
        goto out;
    s = sq_stmt(c, SQ_ROTATE_CERTS);
    bind_text(c, s, 1, root_id);
    bind_text(c, s, 2, old_fp);
    bind_text(c, s, 3, new_fp);
    bind_int(c, s, 4, now);
    rc = sq_run(c, s, op, 0);
    if (rc != ST_OK)
        goto out;
    s = sq_stmt(c, SQ_ROTATE_RENEWAL);
    bind_text(c, s, 1, root_id);
    bind_text(c, s, 2, old_fp);
    bind_text(c, s, 3, new_fp);
    bind_int(c, s, 4, now);
    rc = sq_run(c, s, op, 1);
    int done = rc == ST_OK;
    if (rc == ST_ENOTFOUND)
        rc = ST_OK; /* no renewal of old_fp (a RenewalReq), or already done */
    if (rc != ST_OK)
        goto out;
    rc = sq_commit(c, op);
    if (rc == ST_OK)
        *renewal_done = done;
out:
    if (rc != ST_OK)
        sq_rollback(c);
    return rc;
}

static int sq_identity_count_expiring(storage *st, int64_t after, int64_t before, int64_t *count)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_IDENTITY_COUNT_EXPIRING, &c);
    bind_int(c, s, 1, after);
    bind_int(c, s, 2, before);
    int rc = sq_row(c, s, "identity_count_expiring");
    if (rc != 1)
        return rc == ST_ENOTFOUND ? ST_ERROR : rc;
    *count = sqlite3_column_int64(s, 0);
    sq_reset(c, s);
    return ST_OK;
}

/* ---- device inventory ---- */

/* A nullable integer column: NULL reads as `none`. */
static int64_t col_int_or(sqlite3_stmt *s, int i, int64_t none)
{
    return sqlite3_column_type(s, i) == SQLITE_NULL ? none : sqlite3_column_int64(s, i);
}

/* Binds v, or NULL when v is the "unknown" value `none`. */
static void bind_int_or_null(struct sq_conn *c, sqlite3_stmt *s, int i, int64_t v, int64_t none)
{
    if (s != NULL)
        sq_bind_rc(c, v == none ? sqlite3_bind_null(s, i) : sqlite3_bind_int64(s, i, v));
}

/* Reads INV_COLS (or INV_COLS_LIST) starting at column `at`. */
static void read_inventory(sqlite3_stmt *s, int at, st_inventory *x)
{
    x->enrollment_id = col_text(s, at + 0);
    x->platform = col_text(s, at + 1);
    x->os_version = col_text(s, at + 2);
    x->build_version = col_text(s, at + 3);
    x->os_key = col_int_or(s, at + 4, 0);
    x->product_name = col_text(s, at + 5);
    x->model = col_text(s, at + 6);
    x->model_name = col_text(s, at + 7);
    x->device_name = col_text(s, at + 8);
    x->capacity_mb = col_int_or(s, at + 9, -1);
    x->available_mb = col_int_or(s, at + 10, -1);
    x->passcode_present = (int)col_int_or(s, at + 11, -1);
    x->passcode_compliant = (int)col_int_or(s, at + 12, -1);
    x->app_count = (int)col_int_or(s, at + 13, -1);
    x->apps = col_text(s, at + 14);
    x->profile_count = (int)col_int_or(s, at + 15, -1);
    x->profiles = col_text(s, at + 16);
    x->cert_count = (int)col_int_or(s, at + 17, -1);
    x->certs = col_text(s, at + 18);
    x->round = sqlite3_column_int64(s, at + 19);
    x->requested_at = sqlite3_column_int64(s, at + 20);
    x->updated_at = sqlite3_column_int64(s, at + 21);
    x->due_at = sqlite3_column_int64(s, at + 22);
}

/* Binds the data columns of x as parameters first .. first + 16 (os_version .. certs). */
static void bind_inventory_data(struct sq_conn *c, sqlite3_stmt *s, int first,
                                const st_inventory *x)
{
    bind_text(c, s, first + 0, x->os_version);
    bind_text(c, s, first + 1, x->build_version);
    bind_int_or_null(c, s, first + 2, x->os_key, 0);
    bind_text(c, s, first + 3, x->product_name);
    bind_text(c, s, first + 4, x->model);
    bind_text(c, s, first + 5, x->model_name);
    bind_text(c, s, first + 6, x->device_name);
    bind_int_or_null(c, s, first + 7, x->capacity_mb, -1);
    bind_int_or_null(c, s, first + 8, x->available_mb, -1);
    bind_int_or_null(c, s, first + 9, x->passcode_present, -1);
    bind_int_or_null(c, s, first + 10, x->passcode_compliant, -1);
    bind_int_or_null(c, s, first + 11, x->app_count, -1);
    bind_text(c, s, first + 12, x->apps);
    bind_int_or_null(c, s, first + 13, x->profile_count, -1);
    bind_text(c, s, first + 14, x->profiles);
    bind_int_or_null(c, s, first + 15, x->cert_count, -1);
    bind_text(c, s, first + 16, x->certs);
}

static int sq_inventory_reset(storage *st, const st_inventory *x)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_INV_RESET, &c);
    bind_text(c, s, 1, x->enrollment_id);
    bind_text(c, s, 2, x->platform);
    bind_inventory_data(c, s, 3, x);
    bind_int(c, s, 20, x->requested_at);
    bind_int(c, s, 21, x->updated_at);
    bind_int(c, s, 22, x->due_at);
    return sq_run(c, s, "inventory_reset", 0);
}

/* Reads the row of id into out (if not NULL) on c, inside or outside a transaction. */
static int sq_inventory_read(struct sq_conn *c, const char *id, st_inventory *out, const char *op)
{
    sqlite3_stmt *s = sq_stmt(c, SQ_INV_GET);
    bind_text(c, s, 1, id);
    int rc = sq_row(c, s, op);
    if (rc != 1)
        return rc;
    if (out != NULL)
        read_inventory(s, 0, out);
    sq_reset(c, s);
    return ST_OK;
}

static int sq_inventory_get(storage *st, const char *id, st_inventory *out)
{
    return sq_inventory_read(conn_get(st), id, out, "inventory_get");
}

/* Queues one command on c inside the caller's transaction (as sq_queue_enqueue). */
static int sq_enqueue_on(struct sq_conn *c, const st_command *x, const char *op)
{
    sqlite3_stmt *s = sq_stmt(c, SQ_CMD_ENQUEUE);
    bind_text(c, s, 1, x->uuid);
    bind_text(c, s, 2, x->enrollment_id);
    bind_text(c, s, 3, x->request_type);
    bind_blob(c, s, 4, x->body, x->body_len);
    bind_int(c, s, 5, x->priority);
    bind_int(c, s, 6, x->sensitive ? 1 : 0);
    bind_int(c, s, 7, x->created_at);
    int rc = sq_run(c, s, op, 0);
    if (rc == ST_OK && sqlite3_changes(c->db) == 0)
        rc = ST_EEXISTS;
    return rc;
}

/* Why a claim changed nothing (read in the claim's transaction). */
static int sq_inventory_claim_why(struct sq_conn *c, const char *id, int64_t round, const char *op)
{
    sqlite3_stmt *s = sq_stmt(c, SQ_INV_CLAIM_WHY);
    bind_text(c, s, 1, id);
    int rc = sq_row(c, s, op);
    if (rc != 1)
        return rc;
    rc = sqlite3_column_int64(s, 0) != round ? ST_ECONFLICT
         : sqlite3_column_int(s, 1)          ? ST_EEXISTS
                                             : ST_ECONFLICT;
    sq_reset(c, s);
    return rc;
}

static int sq_inventory_claim(storage *st, const char *id, int64_t round, int64_t now,
                              int64_t due_at, const char *platform, const st_command *cmds,
                              size_t n)
{
    static const char op[] = "inventory_claim";
    struct sq_conn *c = conn_get(st);
    if (c == NULL)
        return ST_ERROR;
    int rc = sq_begin(c, op);
    if (rc != ST_OK)
        return rc;
    sqlite3_stmt *s = sq_stmt(c, SQ_INV_CLAIM);
    bind_text(c, s, 1, id);
    bind_int(c, s, 2, round);
    bind_int(c, s, 3, now);
    bind_int(c, s, 4, due_at);
    bind_text(c, s, 5, platform);
    rc = sq_run(c, s, op, 1);
    if (rc == ST_ENOTFOUND) {
        rc = sq_inventory_claim_why(c, id, round, op);
        if (rc == ST_OK) /* cannot happen under BEGIN IMMEDIATE; never claim twice anyway */
            rc = ST_ECONFLICT;
        goto out;
    }
    for (size_t i = 0; i < n && rc == ST_OK; i++)
        rc = sq_enqueue_on(c, &cmds[i], op);
    if (rc == ST_OK)
        rc = sq_commit(c, op);
out:
    if (rc != ST_OK)
        sq_rollback(c);
    return rc;
}

static int sq_inventory_set_due(storage *st, const char *id, int64_t round, int64_t due_at)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_INV_SET_DUE, &c);
    bind_text(c, s, 1, id);
    bind_int(c, s, 2, round);
    bind_int(c, s, 3, due_at);
    int rc = sq_run(c, s, "inventory_set_due", 1);
    return rc == ST_ENOTFOUND ? ST_ECONFLICT : rc;
}

static int sq_inventory_due(storage *st, int64_t now, int64_t defer_to, int limit,
                            int (*fn)(const char *enrollment_id, int64_t round, void *ctx),
                            void *ctx)
{
    static const char op[] = "inventory_due";
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_INV_DEFER, &c);
    bind_int(c, s, 1, now);
    bind_int(c, s, 2, defer_to);
    int rc = sq_run(c, s, op, 0);
    if (rc != ST_OK)
        return rc;
    /* Read the page first: no statement stays open while fn claims and enqueues. */
    char **ids = xcalloc((size_t)limit, sizeof(*ids));
    int64_t *rounds = xcalloc((size_t)limit, sizeof(*rounds));
    int n = 0, step = SQLITE_DONE;
    s = sq_stmt(c, SQ_INV_DUE);
    if (s == NULL) {
        rc = ST_ERROR;
        goto out;
    }
    bind_int(c, s, 1, now);
    bind_int(c, s, 2, limit);
    while (n < limit && (step = sq_step(c, s)) == SQLITE_ROW) {
        ids[n] = col_text(s, 0);
        rounds[n++] = sqlite3_column_int64(s, 1);
    }
    if (n < limit && step != SQLITE_DONE)
        rc = sq_error(c, op, step);
    sq_reset(c, s);
    for (int i = 0; i < n && rc == ST_OK; i++)
        rc = fn(ids[i], rounds[i], ctx);
out:
    for (int i = 0; i < n; i++)
        free(ids[i]);
    free(ids);
    free(rounds);
    return rc;
}

static int sq_inventory_update(storage *st, const char *id, const st_inventory *x, unsigned groups,
                               int64_t now, st_inventory *old)
{
    static const char op[] = "inventory_update";
    struct sq_conn *c = conn_get(st);
    if (c == NULL)
        return ST_ERROR;
    /* BEGIN IMMEDIATE: the old values read are the ones this update replaces. */
    int rc = sq_begin(c, op);
    if (rc != ST_OK)
        return rc;
    rc = sq_inventory_read(c, id, old, op);
    if (rc != ST_OK)
        goto out;
    sqlite3_stmt *s = sq_stmt(c, SQ_INV_UPDATE);
    bind_text(c, s, 1, id);
    bind_int(c, s, 2, groups);
    bind_inventory_data(c, s, 3, x);
    bind_int(c, s, 20, now);
    rc = sq_run(c, s, op, 1);
    if (rc != ST_OK)
        goto out;
    rc = sq_commit(c, op);
out:
    if (rc != ST_OK) {
        sq_rollback(c);
        st_inventory_cleanup(old);
    }
    return rc;
}

static int sq_inventory_pending(storage *st, const char *id, int64_t *count)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_INV_PENDING, &c);
    bind_text(c, s, 1, id);
    int rc = sq_row(c, s, "inventory_pending");
    if (rc != 1)
        return rc;
    *count = sqlite3_column_int64(s, 0);
    sq_reset(c, s);
    return ST_OK;
}

/* One row of SQ_INV_LIST: the enrollment, its user's email and its inventory (if any). */
struct sq_inv_row {
    st_enrollment e;
    st_inventory inv;
    int has_inv;
};

static int sq_inventory_list(storage *st, const st_inventory_filter *f,
                             int (*fn)(const st_enrollment *e, const st_inventory *inv, void *ctx),
                             void *ctx)
{
    struct sq_inv_row *rows = xcalloc(SQ_LIST_CHUNK, sizeof(*rows));
    char *cursor = xstrdup(f->after_id != NULL ? f->after_id : "");
    int64_t left = f->limit > 0 ? f->limit : INT64_MAX;
    int ret = ST_OK;
    while (left > 0) {
        struct sq_conn *c;
        sqlite3_stmt *s = sq_prepare(st, SQ_INV_LIST, &c);
        if (s == NULL) {
            ret = ST_ERROR;
            break;
        }
        int want = left < SQ_LIST_CHUNK ? (int)left : SQ_LIST_CHUNK;
        bind_text(c, s, 1, cursor);
        bind_int(c, s, 2, f->include_unenrolled ? 1 : 0);
        bind_int(c, s, 3, f->os_key_lt);
        bind_text(c, s, 4, f->platform);
        bind_int(c, s, 5, f->passcode_present);
        bind_int(c, s, 6, f->last_seen_before);
        bind_int(c, s, 7, want);
        int n = 0, rc = SQLITE_DONE;
        while (n < want && (rc = sq_step(c, s)) == SQLITE_ROW) {
            struct sq_inv_row *r = &rows[n++];
            read_enrollment(s, &r->e);
            r->has_inv = sqlite3_column_type(s, 23) != SQLITE_NULL;
            if (r->has_inv)
                read_inventory(s, 23, &r->inv);
            r->inv.user_email = col_text(s, 22);
        }
        if (n < want && rc != SQLITE_DONE)
            ret = sq_error(c, "inventory_list", rc);
        sq_reset(c, s);
        if (n > 0) {
            free(cursor);
            cursor = xstrdup(rows[n - 1].e.id);
        }
        for (int i = 0; i < n; i++) {
            if (ret == ST_OK)
                ret = fn(&rows[i].e, rows[i].has_inv ? &rows[i].inv : NULL, ctx);
            st_enrollment_cleanup(&rows[i].e);
            st_inventory_cleanup(&rows[i].inv);
        }
        left -= n;
        if (ret != ST_OK || n < want)
            break;
    }
    free(cursor);
    free(rows);
    return ret;
}

/* ---- transactions spanning calls (storage_tx_*) ---- */

static int sq_tx_begin(storage *st)
{
    struct sq_conn *c = conn_get(st);
    if (c == NULL)
        return ST_ERROR;
    if (c->base || c->depth > 0) {
        log_error("event=storage_error backend=sqlite op=tx_begin err=\"already in a "
                  "transaction\"");
        return ST_ECONFLICT;
    }
    int rc = sq_begin(c, "tx_begin");
    if (rc == ST_OK)
        c->base = 1;
    return rc;
}

/* Ends storage_tx_begin's transaction whatever happened inside it. */
static void sq_tx_end(struct sq_conn *c)
{
    if (!sqlite3_get_autocommit(c->db))
        sq_rollback_exec(c, "ROLLBACK");
    c->depth = c->base = c->broken = 0;
}

static int sq_tx_commit(storage *st)
{
    struct sq_conn *c = conn_get(st);
    if (c == NULL)
        return ST_ERROR;
    if (!c->base) {
        log_error("event=storage_error backend=sqlite op=tx_commit err=\"no transaction\"");
        return ST_ERROR;
    }
    int rc = ST_ERROR;
    if (c->broken || c->depth != 1) /* an operation left a level open: a bug, never commit it */
        log_error("event=storage_error backend=sqlite op=tx_commit err=\"transaction broken\"");
    else
        rc = sq_run(c, sq_stmt(c, SQ_COMMIT), "tx_commit", 0);
    sq_tx_end(c);
    return rc;
}

static void sq_tx_rollback(storage *st)
{
    struct sq_conn *c = conn_get(st);
    if (c != NULL && (c->base || c->depth > 0))
        sq_tx_end(c);
}

/* ---- durable jobs ---- */

static void read_job(sqlite3_stmt *s, st_job *j)
{
    j->id = sqlite3_column_int64(s, 0);
    j->kind = col_text(s, 1);
    j->scope = sqlite3_column_int(s, 2);
    j->value = col_text(s, 3);
    j->item_kind = sqlite3_column_int(s, 4);
    j->item_id = sqlite3_column_int64(s, 5);
    j->origin = col_text(s, 6);
    j->state = sqlite3_column_int(s, 7);
    j->total = sqlite3_column_int64(s, 8);
    j->done = sqlite3_column_int64(s, 9);
    j->errors = sqlite3_column_int64(s, 10);
    j->installs = sqlite3_column_int64(s, 11);
    j->removals = sqlite3_column_int64(s, 12);
    j->cursor = col_text(s, 13);
    j->claimed_by = col_text(s, 14);
    j->claimed_until = sqlite3_column_int64(s, 15);
    j->created_at = sqlite3_column_int64(s, 16);
    j->started_at = sqlite3_column_int64(s, 17);
    j->updated_at = sqlite3_column_int64(s, 18);
    j->finished_at = sqlite3_column_int64(s, 19);
}

/* Binds kind, scope, value, item_kind, item_id at 1..5 (the filter SQ_JOB_SAME compares). */
static void bind_job_filter(struct sq_conn *c, sqlite3_stmt *s, const st_job *j)
{
    bind_text(c, s, 1, j->kind);
    bind_int(c, s, 2, j->scope);
    bind_text(c, s, 3, j->value ? j->value : "");
    bind_int(c, s, 4, j->scope == ST_JOB_ITEM ? j->item_kind : 0);
    bind_int(c, s, 5, j->scope == ST_JOB_ITEM ? j->item_id : 0);
}

/* One transaction: the same queued job if there is one, else a new row. */
static int sq_job_add(storage *st, st_job *j)
{
    static const char op[] = "job_add";
    struct sq_conn *c = conn_get(st);
    int rc = sq_begin(c, op);
    if (rc != ST_OK)
        return rc;
    sqlite3_stmt *s = sq_stmt(c, SQ_JOB_SAME);
    bind_job_filter(c, s, j);
    rc = sq_row(c, s, op);
    if (rc == 1) {
        j->id = sqlite3_column_int64(s, 0);
        sq_reset(c, s);
        rc = ST_OK;
    } else if (rc == ST_ENOTFOUND) {
        s = sq_stmt(c, SQ_JOB_ADD);
        bind_job_filter(c, s, j);
        bind_text(c, s, 6, j->origin ? j->origin : "");
        bind_int(c, s, 7, j->created_at);
        rc = sq_run(c, s, op, 0);
        if (rc == ST_OK)
            j->id = sqlite3_last_insert_rowid(c->db);
    }
    if (rc == ST_OK)
        rc = sq_commit(c, op);
    if (rc != ST_OK) {
        sq_rollback(c);
        j->id = 0;
    }
    return rc;
}

/* A statement that returns one job row (get, claim); ST_ENOTFOUND for none. */
static int sq_job_row(struct sq_conn *c, sqlite3_stmt *s, st_job *out, const char *op)
{
    int rc = sq_row(c, s, op);
    if (rc != 1)
        return rc;
    read_job(s, out);
    /* A RETURNING statement finishes its write when stepped to the end. */
    int src = sq_step(c, s);
    sq_reset(c, s);
    if (src != SQLITE_DONE && src != SQLITE_ROW) {
        st_job_cleanup(out);
        return sq_error(c, op, src);
    }
    return ST_OK;
}

static int sq_job_get(storage *st, int64_t id, st_job *out)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_JOB_GET, &c);
    bind_int(c, s, 1, id);
    return sq_job_row(c, s, out, "job_get");
}

/* One statement: the sub-select and the update see the same database (one writer). */
static int sq_job_claim(storage *st, const char *owner, int64_t now, int lease, st_job *out)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_JOB_CLAIM, &c);
    bind_int(c, s, 1, now);
    bind_text(c, s, 2, owner);
    bind_int(c, s, 3, now + lease);
    return sq_job_row(c, s, out, "job_claim");
}

/* The page or count statement of a job's scope, with ?1..?3 bound. */
static sqlite3_stmt *sq_job_stmt(storage *st, const st_job *j, const char *after, int count,
                                 struct sq_conn **cp)
{
    static const enum sq_stmt_id pages[] = {SQ_JOB_PAGE_USER, SQ_JOB_PAGE_DOMAIN,
                                            SQ_JOB_PAGE_ENROLLMENT, SQ_JOB_PAGE_ITEM};
    static const enum sq_stmt_id counts[] = {SQ_JOB_COUNT_USER, SQ_JOB_COUNT_DOMAIN,
                                             SQ_JOB_COUNT_ENROLLMENT, SQ_JOB_COUNT_ITEM};
    int i = j->scope - ST_JOB_USER;
    sqlite3_stmt *s = sq_prepare(st, count ? counts[i] : pages[i], cp);
    bind_text(*cp, s, 1, after);
    if (j->scope == ST_JOB_ITEM) {
        bind_int(*cp, s, 2, j->item_kind);
        bind_int(*cp, s, 3, j->item_id);
    } else {
        bind_int(*cp, s, 2, j->scope);
        bind_text(*cp, s, 3, j->value ? j->value : "");
    }
    return s;
}

static int sq_job_count(storage *st, const st_job *j, int64_t *count)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_job_stmt(st, j, "", 1, &c);
    int rc = sq_row(c, s, "job_count");
    if (rc != 1)
        return rc == ST_ENOTFOUND ? ST_ERROR : rc;
    *count = sqlite3_column_int64(s, 0);
    sq_reset(c, s);
    return ST_OK;
}

/* Reads the page into memory first: fn may call storage (no statement is open meanwhile). */
static int sq_job_page(storage *st, const st_job *j, const char *after, int limit,
                       int (*fn)(const st_enrollment *e, void *ctx), void *ctx, int *n)
{
    static const char op[] = "job_page";
    struct sq_conn *c;
    sqlite3_stmt *s = sq_job_stmt(st, j, after, 0, &c);
    if (s == NULL)
        return ST_ERROR;
    bind_int(c, s, 4, limit);
    st_enrollment *rows = xcalloc((size_t)limit, sizeof(*rows));
    int got = 0, src = SQLITE_DONE;
    while (got < limit && (src = sq_step(c, s)) == SQLITE_ROW)
        read_enrollment(s, &rows[got++]);
    int rc = got == limit || src == SQLITE_DONE ? ST_OK : sq_error(c, op, src);
    sq_reset(c, s);
    for (int i = 0; i < got; i++) {
        if (rc == ST_OK) {
            (*n)++;
            if (fn(&rows[i], ctx) != 0)
                rc = 1; /* stop: not an error */
        }
        st_enrollment_cleanup(&rows[i]);
    }
    free(rows);
    return rc == 1 ? ST_OK : rc;
}

static int sq_job_progress(storage *st, const char *owner, int64_t now, int lease,
                           const st_job_progress *p)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_JOB_PROGRESS, &c);
    bind_int(c, s, 1, p->id);
    bind_text(c, s, 2, owner);
    bind_text(c, s, 3, p->cursor);
    bind_int(c, s, 4, p->total);
    bind_int(c, s, 5, p->done);
    bind_int(c, s, 6, p->errors);
    bind_int(c, s, 7, p->installs);
    bind_int(c, s, 8, p->removals);
    bind_int(c, s, 9, now);
    bind_int(c, s, 10, now + lease);
    int rc = sq_run(c, s, "job_progress", 1);
    return rc == ST_ENOTFOUND ? ST_ECONFLICT : rc;
}

static int sq_job_finish(storage *st, const char *owner, int64_t id, int state, int64_t now)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_JOB_FINISH, &c);
    bind_int(c, s, 1, id);
    bind_text(c, s, 2, owner);
    bind_int(c, s, 3, state);
    bind_int(c, s, 4, now);
    int rc = sq_run(c, s, "job_finish", 1);
    return rc == ST_ENOTFOUND ? ST_ECONFLICT : rc;
}

static int sq_job_release(storage *st, const char *owner, int64_t id)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_JOB_RELEASE, &c);
    bind_int(c, s, 1, id);
    bind_text(c, s, 2, owner);
    int rc = sq_run(c, s, "job_release", 1);
    return rc == ST_ENOTFOUND ? ST_ECONFLICT : rc;
}

static int sq_job_prune(storage *st, int64_t before, int64_t *deleted)
{
    struct sq_conn *c;
    sqlite3_stmt *s = sq_prepare(st, SQ_JOB_PRUNE, &c);
    bind_int(c, s, 1, before);
    int rc = sq_run(c, s, "job_prune", 0);
    if (rc == ST_OK)
        *deleted = sqlite3_changes(c->db);
    return rc;
}

static const struct storage_ops sqlite_ops = {
    .name = "sqlite",
    .close = sq_close,
    .ping = sq_ping,
    .schema_version = sq_schema_version,
    .user_add = sq_user_add,
    .user_get_by_email = sq_user_get_by_email,
    .user_get = sq_user_get,
    .user_set_password = sq_user_set_password,
    .user_list = sq_user_list,
    .apikey_add = sq_apikey_add,
    .apikey_find = sq_apikey_find,
    .session_add = sq_session_add,
    .session_get = sq_session_get,
    .session_bind = sq_session_bind,
    .session_set_machine_info = sq_session_set_machine_info,
    .session_revoke_enrollment = sq_session_revoke_enrollment,
    .session_revoke = sq_session_revoke,
    .session_prune_unbound = sq_session_prune_unbound,
    .challenge_add = sq_challenge_add,
    .challenge_consume = sq_challenge_consume,
    .challenge_prune = sq_challenge_prune,
    .cert_add = sq_cert_add,
    .cert_get_by_fingerprint = sq_cert_get_by_fingerprint,
    .cert_set_enrollment = sq_cert_set_enrollment,
    .cert_revoke_enrollment = sq_cert_revoke_enrollment,
    .enrollment_authenticate = sq_enrollment_authenticate,
    .enrollment_get = sq_enrollment_get,
    .enrollment_token_update = sq_enrollment_token_update,
    .enrollment_set_cert = sq_enrollment_set_cert,
    .enrollment_set_auth_state = sq_enrollment_set_auth_state,
    .enrollment_transition_auth_state = sq_enrollment_transition_auth_state,
    .device_lookup = sq_device_lookup,
    .audit_count = sq_audit_count,
    .enrollment_set_last_auth = sq_enrollment_set_last_auth,
    .enrollment_set_push_dead = sq_enrollment_set_push_dead,
    .enrollment_unenroll = sq_enrollment_unenroll,
    .enrollment_touch = sq_enrollment_touch,
    .enrollment_list = sq_enrollment_list,
    .queue_enqueue = sq_queue_enqueue,
    .queue_next = sq_queue_next,
    .queue_report = sq_queue_report,
    .command_get = sq_command_get,
    .command_list = sq_command_list,
    .queue_clear = sq_queue_clear,
    .queue_count = sq_queue_count,
    .history_prune = sq_history_prune,
    .audit_add = sq_audit_add,
    .audit_list = sq_audit_list,
    .audit_prune = sq_audit_prune,
    .push_enqueue = sq_push_enqueue,
    .push_enqueue_filter = sq_push_enqueue_filter,
    .push_sweep = sq_push_sweep,
    .push_claim = sq_push_claim,
    .push_done = sq_push_done,
    .push_pending = sq_push_pending,
    .failure_add = sq_failure_add,
    .failure_count = sq_failure_count,
    .failure_prune = sq_failure_prune,
    .secret_get_or_add = sq_secret_get_or_add,
    .webhook_add = sq_webhook_add,
    .webhook_claim = sq_webhook_claim,
    .webhook_done = sq_webhook_done,
    .webhook_pending = sq_webhook_pending,
    .domain_put = sq_domain_put,
    .domain_get = sq_domain_get,
    .domain_list = sq_domain_list,
    .oidc_pending_add = sq_oidc_pending_add,
    .oidc_pending_take = sq_oidc_pending_take,
    .user_set_idp_subject = sq_user_set_idp_subject,
    .profile_add = sq_profile_add,
    .profile_get = sq_profile_get,
    .profile_list = sq_profile_list,
    .profile_delete = sq_profile_delete,
    .profile_replace = sq_profile_replace,
    .app_add = sq_app_add,
    .app_get = sq_app_get,
    .app_list = sq_app_list,
    .app_delete = sq_app_delete,
    .app_replace = sq_app_replace,
    .assignment_add = sq_assignment_add,
    .assignment_get = sq_assignment_get,
    .assignment_delete = sq_assignment_delete,
    .assignment_list = sq_assignment_list,
    .assignment_items = sq_assignment_items,
    .item_state_put = sq_item_state_put,
    .item_state_delete = sq_item_state_delete,
    .item_state_list = sq_item_state_list,
    .item_state_by_command = sq_item_state_by_command,
    .item_state_clear = sq_item_state_clear,
    .item_state_enrollments = sq_item_state_enrollments,
    .challenge_add_renewal = sq_challenge_add_renewal,
    .challenge_consume_bound = sq_challenge_consume_bound,
    .renewal_get = sq_renewal_get,
    .renewal_put = sq_renewal_put,
    .renewal_candidates = sq_renewal_candidates,
    .renewal_due = sq_renewal_due,
    .identity_rotate = sq_identity_rotate,
    .identity_count_expiring = sq_identity_count_expiring,
    .inventory_reset = sq_inventory_reset,
    .inventory_get = sq_inventory_get,
    .inventory_claim = sq_inventory_claim,
    .inventory_set_due = sq_inventory_set_due,
    .inventory_due = sq_inventory_due,
    .inventory_update = sq_inventory_update,
    .inventory_pending = sq_inventory_pending,
    .inventory_list = sq_inventory_list,
    .tx_begin = sq_tx_begin,
    .tx_commit = sq_tx_commit,
    .tx_rollback = sq_tx_rollback,
    .job_add = sq_job_add,
    .job_get = sq_job_get,
    .job_claim = sq_job_claim,
    .job_count = sq_job_count,
    .job_page = sq_job_page,
    .job_progress = sq_job_progress,
    .job_finish = sq_job_finish,
    .job_release = sq_job_release,
    .job_prune = sq_job_prune,
    .fail_step_after = sq_fail_step_after,
};
