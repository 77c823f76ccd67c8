/*
 * The PostgreSQL storage backend: storage_ops over libpq, for deployments where several Orchard
 * instances share one database behind a load balancer. This is the only file in Orchard that
 * includes libpq-fe.h. Like sqlite.c it is not a general SQL layer: every statement is a constant
 * in the table below, prepared once per connection (PQprepare) and run with PQexecPrepared.
 * Parameters travel as text except bytea (command bodies and results may hold any byte), which
 * travels in binary; results come back in binary, so bytea needs no unescaping and integers are
 * read by their width.
 *
 * Threads. As in sqlite.c, each thread gets its own connection, opened on its first call and
 * found again through a pthread key; the storage object keeps every connection in a mutex-
 * protected list so storage_close can close them all, and a thread that exits closes its own.
 * There is no pool: libmicrohttpd's thread pool is fixed, so an instance holds at most one
 * connection per worker thread (plus the main thread's).
 *
 * Reconnection. A connection can die under us (server restart, failover, a proxy's idle
 * timeout). At the start of each operation an idle connection is checked without a round trip:
 * if the server has closed it (the socket is readable while we expect nothing), it is reset
 * (PQreset) before use. If a statement still fails with the connection gone (CONNECTION_BAD),
 * the connection is reset and the statement sent once more, but only outside a transaction and
 * only for statements that are safe to run twice (reads, and writes that set fixed values): for
 * an INSERT or a claim, a lost reply leaves it unknown whether the server applied it, and a
 * retry could report ST_EEXISTS or ST_ECONFLICT for our own write. Those fail with ST_ERROR, as
 * does anything inside a transaction (the server rolled it back); the next call reconnects.
 *
 * Several instances. Every operation keeps the sqlite backend's semantics when instances run it
 * at the same time, at the default isolation level (READ COMMITTED):
 *  - queue_next is one UPDATE whose sub-select picks the next command FOR UPDATE SKIP LOCKED:
 *    check-ins never wait for each other, and a command that another session is claiming,
 *    reporting or clearing at that moment is passed over rather than handed out again, so a
 *    command whose result was recorded is never sent once more.
 *  - queue_report moves a command with one DELETE ... RETURNING feeding an INSERT into history:
 *    of two concurrent reports of one command exactly one finds the row; the other changes
 *    nothing and gets ST_ENOTFOUND, as a repeated report does.
 *  - challenge_consume is one conditional UPDATE (unused and unexpired): exactly one of two
 *    concurrent consumers wins, the other gets ST_ECONFLICT.
 *  - queue_enqueue looks in history again after its INSERT, in the same transaction: the INSERT
 *    may have waited for a concurrent report moving a command with the same uuid to history,
 *    and uuids must stay unique across the queue and history.
 *  - authenticate and unenroll change the enrollment and clear its queue in one transaction.
 * Unique violations (SQLSTATE 23505) are ST_EEXISTS, foreign-key violations (23503) ST_ENOTFOUND.
 *
 * Schema. Versioned migrations (pg_migrations), numbered as sqlite.c's are so that a schema
 * version means the same tables on both backends, are applied at open in one transaction that
 * first takes a transaction-level advisory lock (pg_advisory_xact_lock): instances starting at
 * once wait for each other, and the later ones find nothing left to do. A database newer than
 * this build is refused. Keys are TEXT COLLATE "C", so ordering (keyset pagination over
 * enrollment ids) is bytewise and lower() on emails folds ASCII only, as in SQLite, whatever
 * the database's locale. Times and ids are BIGINT, plists from devices BYTEA.
 */
#include "storage/pgsql/pgsql.h"

#include <assert.h>
#include <ctype.h>
#include <libpq-fe.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/buf.h"
#include "core/log.h"
#include "core/mem.h"
#include "storage/push_batch.h"

/* libpq waits forever for a connection by default; a DSN's own connect_timeout wins. */
#define PG_CONNECT_TIMEOUT "10"
/* Key of the advisory lock migrations run under: "ORCHARD\0" read as a big-endian integer. */
#define PG_MIGRATION_LOCK "5715704854699197440"
/* Lists are read this many rows at a time (keyset pagination), as in sqlite.c. */
#define PG_LIST_CHUNK 256
#define PG_MAX_PARAMS 24

/* ---- schema ---- */

/*
 * Migration 1: sqlite.c's sq_schema_v1 in PostgreSQL types. user_id columns are NULL when the
 * record has "0 = none"; commands.seq comes from an identity column, never reused, and
 * command_history keeps it, giving a stable creation order.
 */
static const char pg_schema_v1[] =
    "CREATE TABLE users ("
    " id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
    " email TEXT COLLATE \"C\" NOT NULL UNIQUE,"
    " managed_apple_id TEXT,"
    " password_hash TEXT,"
    " idp_subject TEXT,"
    " created_at BIGINT NOT NULL,"
    " disabled INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE api_keys ("
    " id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
    " name TEXT NOT NULL,"
    " key_hash TEXT COLLATE \"C\" NOT NULL UNIQUE,"
    " created_at BIGINT NOT NULL);"
    "CREATE TABLE sessions ("
    " token_hash TEXT COLLATE \"C\" PRIMARY KEY,"
    " user_id BIGINT NOT NULL REFERENCES users (id),"
    " method TEXT NOT NULL,"
    " issued_at BIGINT NOT NULL,"
    " expires_at BIGINT NOT NULL DEFAULT 0,"
    " enrollment_id TEXT COLLATE \"C\","
    " revoked_at BIGINT NOT NULL DEFAULT 0,"
    " machine_info TEXT);"
    "CREATE INDEX sessions_enrollment ON sessions (enrollment_id) WHERE enrollment_id IS NOT NULL;"
    "CREATE TABLE scep_challenges ("
    " challenge_hash TEXT COLLATE \"C\" PRIMARY KEY,"
    " user_id BIGINT REFERENCES users (id),"
    " session_hash TEXT COLLATE \"C\","
    " expires_at BIGINT NOT NULL,"
    " used INTEGER NOT NULL DEFAULT 0,"
    " used_at BIGINT NOT NULL DEFAULT 0);"
    "CREATE TABLE certs ("
    " fingerprint TEXT COLLATE \"C\" PRIMARY KEY,"
    " serial TEXT COLLATE \"C\" NOT NULL UNIQUE,"
    " subject TEXT,"
    " user_id BIGINT REFERENCES users (id),"
    " session_hash TEXT COLLATE \"C\","
    " enrollment_id TEXT COLLATE \"C\","
    " not_after BIGINT NOT NULL,"
    " issued_at BIGINT NOT NULL,"
    " revoked_at BIGINT NOT NULL DEFAULT 0);"
    "CREATE INDEX certs_enrollment ON certs (enrollment_id) WHERE enrollment_id IS NOT NULL;"
    "CREATE TABLE enrollments ("
    " id TEXT COLLATE \"C\" PRIMARY KEY,"
    " type INTEGER NOT NULL,"
    " parent_id TEXT COLLATE \"C\","
    " user_id BIGINT REFERENCES users (id),"
    " topic TEXT,"
    " cert_fingerprint TEXT COLLATE \"C\","
    " push_token TEXT,"
    " push_magic TEXT,"
    " push_token_dead INTEGER NOT NULL DEFAULT 0,"
    " os_version TEXT,"
    " build_version TEXT,"
    " product_name TEXT,"
    " device_name TEXT,"
    " model TEXT,"
    " auth_state TEXT COLLATE \"C\" NOT NULL DEFAULT 'active',"
    " auth_state_since BIGINT NOT NULL DEFAULT 0,"
    " last_auth_at BIGINT NOT NULL DEFAULT 0,"
    " last_auth_method TEXT,"
    " enrolled_at BIGINT NOT NULL DEFAULT 0,"
    " token_updated_at BIGINT NOT NULL DEFAULT 0,"
    " last_seen_at BIGINT NOT NULL DEFAULT 0,"
    " unenrolled_at BIGINT NOT NULL DEFAULT 0);"
    "CREATE INDEX enrollments_user ON enrollments (user_id, id);"
    "CREATE INDEX enrollments_parent ON enrollments (parent_id) WHERE parent_id IS NOT NULL;"
    "CREATE TABLE commands ("
    " seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
    " uuid TEXT COLLATE \"C\" NOT NULL UNIQUE,"
    " enrollment_id TEXT COLLATE \"C\" NOT NULL REFERENCES enrollments (id),"
    " request_type TEXT NOT NULL,"
    " body BYTEA NOT NULL,"
    " priority INTEGER NOT NULL DEFAULT 0,"
    " status INTEGER NOT NULL DEFAULT 0 CHECK (status IN (0, 1)),"
    " sensitive INTEGER NOT NULL DEFAULT 0,"
    " created_at BIGINT NOT NULL,"
    " sent_at BIGINT NOT NULL DEFAULT 0);"
    "CREATE INDEX commands_next ON commands (enrollment_id, status, priority DESC, created_at, "
    "seq);"
    "CREATE TABLE command_history ("
    " seq BIGINT PRIMARY KEY,"
    " uuid TEXT COLLATE \"C\" NOT NULL UNIQUE,"
    " enrollment_id TEXT COLLATE \"C\" NOT NULL,"
    " request_type TEXT NOT NULL,"
    " body BYTEA NOT NULL,"
    " priority INTEGER NOT NULL,"
    " status INTEGER NOT NULL CHECK (status IN (2, 3, 4)),"
    " sensitive INTEGER NOT NULL,"
    " created_at BIGINT NOT NULL,"
    " sent_at BIGINT NOT NULL,"
    " completed_at BIGINT NOT NULL,"
    " result BYTEA);"
    "CREATE INDEX command_history_completed ON command_history (completed_at);"
    "CREATE INDEX command_history_enrollment ON command_history (enrollment_id, seq);"
    "CREATE TABLE audit ("
    " id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
    " at BIGINT NOT NULL,"
    " actor TEXT NOT NULL,"
    " action TEXT COLLATE \"C\" NOT NULL,"
    " target TEXT COLLATE \"C\","
    " detail TEXT);";

/* Migration 2 (as sqlite.c's): commands_next becomes the send order within an enrollment. */
static const char pg_schema_v2[] =
    "DROP INDEX commands_next;"
    "CREATE INDEX commands_next ON commands (enrollment_id, priority DESC, created_at, seq);";

/* Migration 3 (as sqlite.c's): the re-authentication policy counts failed sign-ins. */
static const char pg_schema_v3[] =
    "CREATE INDEX audit_action_target ON audit (action, target, at);";

/*
 * Migration 4 (as sqlite.c's): the push outbox, one row per enrollment, with a lease (claimed_by,
 * claimed_until) so instances never push the same row at once; `again` flags a row enqueued
 * while its push was in flight; enrollments.last_push_at paces the re-push sweeper.
 */
static const char pg_schema_v4[] =
    "CREATE TABLE push_outbox ("
    " enrollment_id TEXT COLLATE \"C\" PRIMARY KEY,"
    " due_at BIGINT NOT NULL,"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " claimed_by TEXT COLLATE \"C\","
    " claimed_until BIGINT NOT NULL DEFAULT 0,"
    " again INTEGER NOT NULL DEFAULT 0,"
    " created_at BIGINT NOT NULL);"
    "CREATE INDEX push_outbox_due ON push_outbox (due_at);"
    "ALTER TABLE enrollments ADD COLUMN last_push_at BIGINT NOT NULL DEFAULT 0;";

/* Migration 5 (as sqlite.c's): organisation domains and federated sign-ins in progress. */
static const char pg_schema_v5[] =
    "CREATE TABLE domains ("
    " name TEXT COLLATE \"C\" PRIMARY KEY,"
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
    " updated_at BIGINT NOT NULL);"
    "CREATE TABLE oidc_pending ("
    " state_hash TEXT COLLATE \"C\" PRIMARY KEY,"
    " domain TEXT NOT NULL,"
    " identifier TEXT NOT NULL,"
    " nonce TEXT NOT NULL,"
    " code_verifier TEXT NOT NULL,"
    " created_at BIGINT NOT NULL,"
    " expires_at BIGINT NOT NULL);"
    "CREATE INDEX oidc_pending_expires ON oidc_pending (expires_at);";

/*
 * Migration 6 (as sqlite.c's): the profile and app library, assignments (pointing at an item by
 * kind and id, without a foreign key) and per-enrollment installed state.
 */
static const char pg_schema_v6[] =
    "CREATE TABLE profiles ("
    " id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
    " identifier TEXT COLLATE \"C\" NOT NULL UNIQUE,"
    " name TEXT,"
    " platforms TEXT NOT NULL,"
    " body BYTEA NOT NULL,"
    " sensitive INTEGER NOT NULL DEFAULT 0,"
    " sign INTEGER NOT NULL DEFAULT 0,"
    " created_at BIGINT NOT NULL);"
    "CREATE TABLE apps ("
    " id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
    " identifier TEXT,"
    " itunes_store_id BIGINT NOT NULL DEFAULT 0,"
    " manifest_url TEXT,"
    " spec TEXT NOT NULL,"
    " sensitive INTEGER NOT NULL DEFAULT 0,"
    " created_at BIGINT NOT NULL);"
    "CREATE TABLE assignments ("
    " id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
    " item_kind INTEGER NOT NULL,"
    " item_id BIGINT NOT NULL,"
    " target_type INTEGER NOT NULL,"
    " target TEXT COLLATE \"C\" NOT NULL,"
    " created_at BIGINT NOT NULL,"
    " UNIQUE (item_kind, item_id, target_type, target));"
    "CREATE INDEX assignments_target ON assignments (target_type, target);"
    "CREATE TABLE item_state ("
    " enrollment_id TEXT COLLATE \"C\" NOT NULL,"
    " item_kind INTEGER NOT NULL,"
    " item_id BIGINT NOT NULL,"
    " identifier TEXT,"
    " state INTEGER NOT NULL,"
    " command_uuid TEXT COLLATE \"C\","
    " sensitive INTEGER NOT NULL DEFAULT 0,"
    " detail TEXT,"
    " updated_at BIGINT NOT NULL,"
    " PRIMARY KEY (enrollment_id, item_kind, item_id));"
    "CREATE INDEX item_state_command ON item_state (command_uuid) WHERE command_uuid IS NOT NULL;"
    "CREATE INDEX item_state_item ON item_state (item_kind, item_id);";

/* Migration 7 (as sqlite.c's): bulk pushes, their filter and progress in enrollment id order. */
static const char pg_schema_v7[] = "CREATE TABLE push_bulk ("
                                   " id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
                                   " scope INTEGER NOT NULL,"
                                   " value TEXT COLLATE \"C\" NOT NULL DEFAULT '',"
                                   " done_to TEXT COLLATE \"C\" NOT NULL DEFAULT '',"
                                   " claimed_to TEXT COLLATE \"C\" NOT NULL DEFAULT '',"
                                   " claimed_by TEXT COLLATE \"C\","
                                   " claimed_until BIGINT NOT NULL DEFAULT 0,"
                                   " created_at BIGINT NOT NULL);";

/* Migration 8 (as sqlite.c's): webhook events waiting for delivery; identity ids are never
 * reused. */
static const char pg_schema_v8[] = "CREATE TABLE webhook_events ("
                                   " id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
                                   " type TEXT NOT NULL,"
                                   " data TEXT NOT NULL,"
                                   " created_at BIGINT NOT NULL,"
                                   " due_at BIGINT NOT NULL,"
                                   " attempts INTEGER NOT NULL DEFAULT 0,"
                                   " claimed_by TEXT COLLATE \"C\","
                                   " claimed_until BIGINT NOT NULL DEFAULT 0);";

/* Migration 9 (as sqlite.c's): profile versions. */
static const char pg_schema_v9[] =
    "ALTER TABLE profiles ADD COLUMN version BIGINT NOT NULL DEFAULT 1;"
    "ALTER TABLE item_state ADD COLUMN version BIGINT NOT NULL DEFAULT 1;";

/* Migration 10 (as sqlite.c's): sign-in failure counters shared by the instances. */
static const char pg_schema_v10[] = "CREATE TABLE signin_failures ("
                                    " key TEXT COLLATE \"C\" NOT NULL,"
                                    " window_start BIGINT NOT NULL,"
                                    " failures BIGINT NOT NULL,"
                                    " PRIMARY KEY (key, window_start));";

/* Migration 11 (as sqlite.c's): app versions. */
static const char pg_schema_v11[] =
    "ALTER TABLE apps ADD COLUMN version BIGINT NOT NULL DEFAULT 1;";

/* Migration 12 (as sqlite.c's): retention indexes, server secrets, the ticket of a pending
 * federated sign-in. */
static const char pg_schema_v12[] =
    "CREATE INDEX audit_at ON audit (at);"
    "CREATE INDEX scep_challenges_expires ON scep_challenges (expires_at);"
    "CREATE INDEX sessions_unbound ON sessions (issued_at) WHERE enrollment_id IS NULL;"
    "CREATE TABLE server_secrets ("
    " name TEXT COLLATE \"C\" PRIMARY KEY,"
    " value TEXT NOT NULL,"
    " created_at BIGINT NOT NULL);"
    "ALTER TABLE oidc_pending ADD COLUMN reauth_ticket TEXT;";

/* Migration 13 (as sqlite.c's): identity renewal. */
static const char pg_schema_v13[] =
    "ALTER TABLE scep_challenges ADD COLUMN enrollment_id TEXT COLLATE \"C\";"
    "CREATE TABLE identity_renewals ("
    " enrollment_id TEXT COLLATE \"C\" PRIMARY KEY,"
    " old_fingerprint TEXT COLLATE \"C\" NOT NULL,"
    " expires_at BIGINT NOT NULL,"
    " state TEXT COLLATE \"C\" NOT NULL,"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " next_attempt_at BIGINT NOT NULL DEFAULT 0,"
    " challenge_hash TEXT COLLATE \"C\","
    " command_uuid TEXT COLLATE \"C\","
    " new_fingerprint TEXT COLLATE \"C\","
    " last_error TEXT,"
    " started_at BIGINT NOT NULL,"
    " updated_at BIGINT NOT NULL,"
    " version BIGINT NOT NULL DEFAULT 1);"
    "CREATE INDEX identity_renewals_due ON identity_renewals (next_attempt_at)"
    " WHERE state IN ('pending', 'held');"
    "CREATE INDEX identity_renewals_command ON identity_renewals (command_uuid)"
    " WHERE command_uuid IS NOT NULL;"
    "CREATE INDEX certs_live_expiry ON certs (not_after) WHERE revoked_at = 0;";

/* Migration 14 (as sqlite.c's sq_schema_inventory): the device inventory. */
static const char pg_schema_v14[] =
    "CREATE TABLE inventory ("
    " enrollment_id TEXT COLLATE \"C\" PRIMARY KEY REFERENCES enrollments (id),"
    " platform TEXT,"
    " os_version TEXT,"
    " build_version TEXT,"
    " os_key BIGINT,"
    " product_name TEXT,"
    " model TEXT,"
    " model_name TEXT,"
    " device_name TEXT,"
    " capacity_mb BIGINT,"
    " available_mb BIGINT,"
    " passcode_present INTEGER,"
    " passcode_compliant INTEGER,"
    " app_count INTEGER,"
    " apps TEXT,"
    " profile_count INTEGER,"
    " profiles TEXT,"
    " cert_count INTEGER,"
    " certs TEXT,"
    " round BIGINT NOT NULL DEFAULT 0,"
    " requested_at BIGINT NOT NULL DEFAULT 0,"
    " updated_at BIGINT NOT NULL DEFAULT 0,"
    " due_at BIGINT NOT NULL DEFAULT 0);"
    "CREATE INDEX inventory_due ON inventory (due_at);"
    "INSERT INTO inventory (enrollment_id, platform, os_version, build_version, product_name, "
    "model, device_name) SELECT id, CASE WHEN coalesce(nullif(product_name, ''), model) LIKE "
    "'Mac%' OR coalesce(nullif(product_name, ''), model) LIKE 'iMac%' OR "
    "coalesce(nullif(product_name, ''), model) LIKE 'VirtualMac%' THEN 'macos' WHEN "
    "coalesce(nullif(product_name, ''), model) LIKE 'RealityDevice%' THEN 'visionos' ELSE 'ios' "
    "END, os_version, build_version, product_name, model, device_name FROM enrollments "
    "WHERE type = 1 AND unenrolled_at = 0 AND token_updated_at > 0;";

/* Migration 15 (as sqlite.c's): durable jobs, and item_state in enrollment order per item. */
static const char pg_schema_v15[] =
    "CREATE TABLE jobs ("
    " id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
    " kind TEXT COLLATE \"C\" NOT NULL,"
    " scope INTEGER NOT NULL,"
    " value TEXT COLLATE \"C\" NOT NULL DEFAULT '',"
    " item_kind INTEGER NOT NULL DEFAULT 0,"
    " item_id BIGINT NOT NULL DEFAULT 0,"
    " origin TEXT NOT NULL DEFAULT '',"
    " state INTEGER NOT NULL DEFAULT 0,"
    " total BIGINT NOT NULL DEFAULT -1,"
    " done BIGINT NOT NULL DEFAULT 0,"
    " errors BIGINT NOT NULL DEFAULT 0,"
    " installs BIGINT NOT NULL DEFAULT 0,"
    " removals BIGINT NOT NULL DEFAULT 0,"
    " done_to TEXT COLLATE \"C\" NOT NULL DEFAULT '',"
    " claimed_by TEXT COLLATE \"C\","
    " claimed_until BIGINT NOT NULL DEFAULT 0,"
    " created_at BIGINT NOT NULL,"
    " started_at BIGINT NOT NULL DEFAULT 0,"
    " updated_at BIGINT NOT NULL DEFAULT 0,"
    " finished_at BIGINT NOT NULL DEFAULT 0);"
    "CREATE INDEX jobs_open ON jobs (id) WHERE state < 2;"
    "CREATE INDEX jobs_finished ON jobs (finished_at) WHERE state >= 2;"
    "CREATE INDEX item_state_item_enrollment ON item_state (item_kind, item_id, enrollment_id);"
    "DROP INDEX item_state_item;";

/*
 * Append-only: migration N is pg_migrations[N - 1], and it creates what sqlite.c's migration N
 * creates. Never edit one that has shipped.
 */
static const char *const pg_migrations[] = {
    pg_schema_v1,  pg_schema_v2,  pg_schema_v3,  pg_schema_v4,  pg_schema_v5,
    pg_schema_v6,  pg_schema_v7,  pg_schema_v8,  pg_schema_v9,  pg_schema_v10,
    pg_schema_v11, pg_schema_v12, pg_schema_v13, pg_schema_v14, pg_schema_v15,
};
#define PG_NMIGRATIONS ((int)(sizeof(pg_migrations) / sizeof(pg_migrations[0])))

/* ---- statements ---- */

enum pg_stmt_id {
    PG_BEGIN,
    PG_COMMIT,
    PG_PING,
    PG_SCHEMA_VERSION,
    PG_USER_ADD,
    PG_USER_GET_BY_EMAIL,
    PG_USER_GET,
    PG_USER_SET_PASSWORD,
    PG_USER_LIST,
    PG_APIKEY_ADD,
    PG_APIKEY_FIND,
    PG_SESSION_ADD,
    PG_SESSION_GET,
    PG_SESSION_BIND,
    PG_SESSION_BOUND_TO,
    PG_SESSION_SET_MACHINE_INFO,
    PG_SESSION_REVOKE_ENROLLMENT,
    PG_SESSION_REVOKE,
    PG_CHALLENGE_ADD,
    PG_CHALLENGE_CONSUME,
    PG_CHALLENGE_GET,
    PG_CERT_ADD,
    PG_CERT_GET,
    PG_CERT_SET_ENROLLMENT,
    PG_CERT_REVOKE_ENROLLMENT,
    PG_ENR_UPSERT,
    PG_ENR_GET,
    PG_ENR_TOKEN_UPDATE,
    PG_ENR_SET_CERT,
    PG_ENR_SET_AUTH_STATE,
    PG_ENR_TRANSITION_AUTH_STATE,
    PG_ENR_SET_LAST_AUTH,
    PG_ENR_SET_PUSH_DEAD,
    PG_ENR_UNENROLL,
    PG_ENR_TOUCH,
    PG_ENR_LIST,
    PG_ENR_LIST_USER,
    PG_CMD_ENQUEUE,
    PG_CMD_IN_HISTORY,
    PG_CMD_NEXT,
    PG_CMD_MARK_NOTNOW,
    PG_CMD_REPORT,
    PG_CMD_GET,
    PG_CMD_LIST,
    PG_QUEUE_CLEAR,
    PG_QUEUE_COUNT,
    PG_HISTORY_PRUNE,
    PG_AUDIT_ADD,
    PG_AUDIT_LIST,
    PG_AUDIT_COUNT,
    PG_PUSH_ENQUEUE,
    PG_PUSH_ENR_EXISTS,
    PG_PUSH_BULK_REFRESH,
    PG_PUSH_BULK_COUNT,
    PG_PUSH_BULK_COUNT_USER,
    PG_PUSH_BULK_SUPERSEDE,
    PG_PUSH_BULK_SAME,
    PG_PUSH_BULK_ADD,
    PG_PUSH_BULK_LIST,
    PG_PUSH_BULK_PAGE,
    PG_PUSH_BULK_PAGE_USER,
    PG_PUSH_BULK_LEASE,
    PG_PUSH_BULK_FINISH,
    PG_PUSH_BULK_RETRY,
    PG_PUSH_BULK_ADVANCE,
    PG_PUSH_BULK_REWIND,
    PG_PUSH_BULK_ALL,
    PG_PUSH_SWEEP,
    PG_PUSH_CLAIM,
    PG_PUSH_DEL_SENT,
    PG_PUSH_REARM,
    PG_PUSH_MARK_PUSHED,
    PG_PUSH_RELEASE,
    PG_PUSH_DEL_OWNED,
    PG_PUSH_MARK_DEAD,
    PG_PUSH_PENDING,
    PG_FAILURE_ADD,
    PG_FAILURE_COUNT,
    PG_FAILURE_PRUNE,
    PG_WEBHOOK_ADD,
    PG_WEBHOOK_CLAIM,
    PG_WEBHOOK_DELETE,
    PG_WEBHOOK_RETRY,
    PG_WEBHOOK_PENDING,
    PG_DOMAIN_PUT,
    PG_DOMAIN_GET,
    PG_DOMAIN_LIST,
    PG_OIDC_PENDING_ADD,
    PG_OIDC_PENDING_PRUNE,
    PG_OIDC_PENDING_TAKE,
    PG_USER_SET_IDP_SUBJECT,
    PG_LIB_PROFILE_ADD,
    PG_LIB_PROFILE_GET,
    PG_LIB_PROFILE_LIST,
    PG_LIB_PROFILE_DELETE,
    PG_LIB_PROFILE_REPLACE,
    PG_LIB_PROFILE_IDENT,
    PG_LIB_APP_ADD,
    PG_LIB_APP_GET,
    PG_LIB_APP_LIST,
    PG_LIB_APP_DELETE,
    PG_LIB_APP_REPLACE,
    PG_LIB_APP_EXISTS,
    PG_LIB_ITEM_UNASSIGN,
    PG_LIB_ASSIGN_ADD,
    PG_LIB_ASSIGN_GET,
    PG_LIB_ASSIGN_DELETE,
    PG_LIB_ASSIGN_LIST,
    PG_LIB_ASSIGN_ITEMS,
    PG_LIB_STATE_PUT,
    PG_LIB_STATE_DELETE,
    PG_LIB_STATE_LIST,
    PG_LIB_STATE_BY_COMMAND,
    PG_LIB_STATE_CLEAR,
    PG_LIB_STATE_ENROLLMENTS,
    PG_AUDIT_PRUNE,
    PG_CHALLENGE_PRUNE,
    PG_SESSION_PRUNE_UNBOUND,
    PG_SECRET_ADD,
    PG_SECRET_GET,
    PG_CHALLENGE_ADD_RENEWAL,
    PG_RENEWAL_GET,
    PG_RENEWAL_PUT,
    PG_RENEWAL_CANDIDATES,
    PG_RENEWAL_DUE,
    PG_ROTATE_ENROLLMENT,
    PG_ROTATE_CERTS,
    PG_ROTATE_RENEWAL,
    PG_IDENTITY_COUNT_EXPIRING,
    PG_INV_RESET,
    PG_INV_GET,
    PG_INV_GET_FOR_UPDATE,
    PG_INV_CLAIM,
    PG_INV_CLAIM_WHY,
    PG_INV_SET_DUE,
    PG_INV_DEFER,
    PG_INV_DUE,
    PG_INV_UPDATE,
    PG_INV_PENDING,
    PG_INV_LIST,
    PG_JOB_SAME,
    PG_JOB_ADD,
    PG_JOB_GET,
    PG_JOB_CLAIM,
    PG_JOB_PROGRESS,
    PG_JOB_FINISH,
    PG_JOB_RELEASE,
    PG_JOB_PRUNE,
    PG_JOB_PAGE_USER,
    PG_JOB_PAGE_DOMAIN,
    PG_JOB_PAGE_ENROLLMENT,
    PG_JOB_PAGE_ITEM,
    PG_JOB_COUNT_USER,
    PG_JOB_COUNT_DOMAIN,
    PG_JOB_COUNT_ENROLLMENT,
    PG_JOB_COUNT_ITEM,
    PG_NSTMT
};

/* Identity renewal (migration 13), as sqlite.c's RENEWAL_COLS, SQ_BOUND_FROM, SQ_BOUND_WHERE. */
#define RENEWAL_COLS                                                                               \
    "enrollment_id, old_fingerprint, expires_at, state, attempts, next_attempt_at, "               \
    "challenge_hash, command_uuid, new_fingerprint, last_error, started_at, updated_at, version"
#define PG_BOUND_FROM                                                                              \
    "certs c JOIN enrollments e ON e.id = c.enrollment_id AND e.cert_fingerprint = c.fingerprint"
#define PG_BOUND_WHERE "c.revoked_at = 0 AND e.type = 1 AND e.unenrolled_at = 0"
/* The device inventory (migration 14); as sqlite.c's. */
#define INV_COLS                                                                                   \
    "enrollment_id, platform, os_version, build_version, os_key, product_name, model, "            \
    "model_name, device_name, capacity_mb, available_mb, passcode_present, passcode_compliant, "   \
    "app_count, apps, profile_count, profiles, cert_count, certs, round, requested_at, "           \
    "updated_at, due_at"
#define INV_COLS_LIST                                                                              \
    "i.enrollment_id, i.platform, i.os_version, i.build_version, i.os_key, i.product_name, "       \
    "i.model, i.model_name, i.device_name, i.capacity_mb, i.available_mb, i.passcode_present, "    \
    "i.passcode_compliant, i.app_count, NULL::text, i.profile_count, NULL::text, i.cert_count, "   \
    "NULL::text, i.round, i.requested_at, i.updated_at, i.due_at"
#define ENR_COLS_E                                                                                 \
    "e.id, e.type, e.parent_id, e.user_id, e.topic, e.cert_fingerprint, e.push_token, "            \
    "e.push_magic, e.push_token_dead, e.os_version, e.build_version, e.product_name, "             \
    "e.device_name, e.model, e.auth_state, e.auth_state_since, e.last_auth_at, "                   \
    "e.last_auth_method, e.enrolled_at, e.token_updated_at, e.last_seen_at, e.unenrolled_at"
#define PG_INV_PENDING_OF(E)                                                                       \
    "EXISTS (SELECT 1 FROM commands AS c WHERE c.enrollment_id = " E " AND "                       \
    "substr(c.uuid, 1, length('" ST_INV_UUID_PREFIX "')) = '" ST_INV_UUID_PREFIX "')"
#define PG_INV_ASKABLE                                                                             \
    "e.type = 1 AND e.unenrolled_at = 0 AND e.token_updated_at > 0 AND e.auth_state = 'active'"
#define PG_INV_SET(col, bit, param)                                                                \
    col " = CASE WHEN ($2::int & " #bit ") <> 0 THEN " param " ELSE " col " END"

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
    "0::bigint AS completed_at, NULL::bytea AS result, seq"
#define CMD_H_COLS                                                                                 \
    "uuid, enrollment_id, request_type, body, priority, status, sensitive, created_at, sent_at, "  \
    "completed_at, result, seq"
#define DOMAIN_COLS                                                                                \
    "name, auth, issuer, client_id, client_secret, ca_file, scopes, user_claim, maid_claim, "      \
    "groups_claim, allowed_groups, jit_users, updated_at"
#define OIDC_PENDING_COLS                                                                          \
    "state_hash, domain, identifier, nonce, code_verifier, created_at, expires_at, reauth_ticket"
#define LIB_PROFILE_INS_COLS "identifier, name, platforms, body, sensitive, sign, created_at"
#define LIB_PROFILE_COLS "id, " LIB_PROFILE_INS_COLS ", version"
#define LIB_APP_INS_COLS "identifier, itunes_store_id, manifest_url, spec, sensitive, created_at"
#define LIB_APP_COLS "id, " LIB_APP_INS_COLS ", version"
#define LIB_ASSIGN_COLS "id, item_kind, item_id, target_type, target, created_at"
#define LIB_STATE_COLS                                                                             \
    "enrollment_id, item_kind, item_id, identifier, state, command_uuid, sensitive, detail, "      \
    "updated_at, version"

/* An enrollment that can be pushed to (sqlite.c's SQ_PUSHABLE); `e` is enrollments. */
#define PUSHABLE "e.push_token IS NOT NULL AND e.push_token_dead = 0 AND e.unenrolled_at = 0"
/* Coalescing: one row per enrollment keeps the earlier due time; a row in flight (its lease
 * runs past now) is flagged to be pushed once more after the push in flight. */
#define PUSH_UPSERT                                                                                \
    " ON CONFLICT (enrollment_id) DO UPDATE SET"                                                   \
    " due_at = least(push_outbox.due_at, excluded.due_at),"                                        \
    " again = CASE WHEN push_outbox.claimed_until > excluded.due_at THEN 1"                        \
    " ELSE push_outbox.again END"

/* A bulk push's filter on enrollments `e` (sqlite.c's SQ_BULK_SCOPE): scope S, value V. */
#define PG_BULK_SCOPE(S, V)                                                                        \
    "(" S " = 0 OR e.user_id IN (SELECT u.id FROM users u WHERE (" S " = 1 AND u.email = lower(" V \
    " COLLATE \"C\")) OR (" S " = 2 AND right(u.email, length(" V ") + 1) = '@' || "               \
    "lower(" V " COLLATE \"C\"))))"

/* One user's enrollments, for the statements that walk the (user_id, id) index; $2 is the scope
 * (1), named so that its type is known. */
#define PG_BULK_USER                                                                               \
    "$2::integer = 1 AND e.user_id = (SELECT u.id FROM users u WHERE u.email = "                   \
    "lower($3::text COLLATE \"C\"))"
/* Enrollment `e` has no outbox row (that row pushes it). */
#define PG_NO_OUTBOX_ROW "NOT EXISTS (SELECT 1 FROM push_outbox o WHERE o.enrollment_id = e.id)"

/* Durable jobs (migration 15; sqlite.c's SQ_SQL_JOBS): $1 the id to start after, $2 and $3 the
 * filter (scope and value, or item kind and id), $4 the page size. */
#define JOB_COLS                                                                                   \
    "id, kind, scope, value, item_kind, item_id, origin, state, total, done, errors, installs, "   \
    "removals, done_to, claimed_by, claimed_until, created_at, started_at, updated_at, "           \
    "finished_at"
#define PG_JOB_LIVE "e.unenrolled_at = 0 AND e.token_updated_at > 0"
#define PG_JOB_ITEM_FROM                                                                           \
    " FROM item_state s JOIN enrollments e ON e.id = s.enrollment_id WHERE s.item_kind = "         \
    "$2::integer AND s.item_id = $3::bigint AND s.enrollment_id > $1::text AND " PG_JOB_LIVE
#define PG_SQL_JOBS                                                                                \
    [PG_JOB_SAME] = {"SELECT id FROM jobs WHERE kind = $1 AND scope = $2 AND value = $3 AND "      \
                     "item_kind = $4 AND item_id = $5 AND state = 0 AND started_at = 0 "           \
                     "ORDER BY id LIMIT 1 FOR UPDATE",                                             \
                     RETRY},                                                                       \
    [PG_JOB_ADD] =                                                                                 \
        {"INSERT INTO jobs (kind, scope, value, item_kind, item_id, origin, created_at, "          \
         "updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING id",                       \
         ONCE},                                                                                    \
    [PG_JOB_GET] = {"SELECT " JOB_COLS " FROM jobs WHERE id = $1", RETRY},                         \
    [PG_JOB_CLAIM] = {"UPDATE jobs SET state = 1, claimed_by = $2, claimed_until = $3, "           \
                      "started_at = CASE WHEN started_at = 0 THEN $1::bigint ELSE started_at "     \
                      "END, updated_at = $1 WHERE id = (SELECT id FROM jobs WHERE state < 2 AND "  \
                      "(claimed_until <= $1 OR claimed_by = $2) ORDER BY id LIMIT 1 "              \
                      "FOR UPDATE SKIP LOCKED) RETURNING " JOB_COLS,                               \
                      ONCE},                                                                       \
    [PG_JOB_PROGRESS] = {"UPDATE jobs SET done_to = $3, total = CASE WHEN $4::bigint >= 0 THEN "   \
                         "$4 ELSE total END, done = done + $5, errors = errors + $6, installs = "  \
                         "installs + $7, removals = removals + $8, updated_at = $9, "              \
                         "claimed_until = $10 WHERE id = $1 AND claimed_by = $2 AND state = 1",    \
                         ONCE},                                                                    \
    [PG_JOB_FINISH] = {"UPDATE jobs SET state = $3, finished_at = $4, updated_at = $4, total = "   \
                       "greatest(total, done), claimed_by = NULL, claimed_until = 0 "              \
                       "WHERE id = $1 AND claimed_by = $2 AND state = 1",                          \
                       RETRY},                                                                     \
    [PG_JOB_RELEASE] = {"UPDATE jobs SET claimed_by = NULL, claimed_until = 0 "                    \
                        "WHERE id = $1 AND claimed_by = $2 AND state = 1",                         \
                        RETRY},                                                                    \
    [PG_JOB_PRUNE] = {"DELETE FROM jobs WHERE state >= 2 AND finished_at < $1", RETRY},            \
    [PG_JOB_PAGE_USER] = {"SELECT " ENR_COLS                                                       \
                          " FROM enrollments e WHERE e.id > $1::text AND " PG_JOB_LIVE             \
                          " AND " PG_BULK_USER " ORDER BY e.id LIMIT $4",                          \
                          RETRY},                                                                  \
    [PG_JOB_PAGE_DOMAIN] = {"SELECT " ENR_COLS                                                     \
                            " FROM enrollments e WHERE e.id > $1::text AND " PG_JOB_LIVE           \
                            " AND " PG_BULK_SCOPE("$2::integer",                                   \
                                                  "$3::text") " ORDER BY e.id LIMIT $4",           \
                            RETRY},                                                                \
    [PG_JOB_PAGE_ENROLLMENT] = {"SELECT " ENR_COLS " FROM enrollments e WHERE $2::integer = 3 "    \
                                "AND e.id = $3::text AND e.id > $1::text AND " PG_JOB_LIVE         \
                                " LIMIT $4",                                                       \
                                RETRY},                                                            \
    [PG_JOB_PAGE_ITEM] = {"SELECT " ENR_COLS " FROM (SELECT enrollment_id AS job_eid FROM "        \
                          "item_state WHERE item_kind = $2::integer AND item_id = $3::bigint AND " \
                          "enrollment_id > $1::text) s JOIN enrollments ON id = job_eid WHERE "    \
                          "unenrolled_at = 0 AND token_updated_at > 0 ORDER BY id LIMIT $4",       \
                          RETRY},                                                                  \
    [PG_JOB_COUNT_USER] =                                                                          \
        {"SELECT count(*) FROM enrollments e WHERE e.id > $1::text AND " PG_JOB_LIVE               \
         " AND " PG_BULK_USER,                                                                     \
         RETRY},                                                                                   \
    [PG_JOB_COUNT_DOMAIN] =                                                                        \
        {"SELECT count(*) FROM enrollments e WHERE e.id > $1::text AND " PG_JOB_LIVE               \
         " AND " PG_BULK_SCOPE("$2::integer", "$3::text"),                                         \
         RETRY},                                                                                   \
    [PG_JOB_COUNT_ENROLLMENT] = {"SELECT count(*) FROM enrollments e WHERE $2::integer = 3 AND "   \
                                 "e.id = $3::text AND e.id > $1::text AND " PG_JOB_LIVE,           \
                                 RETRY},                                                           \
    [PG_JOB_COUNT_ITEM] = {"SELECT count(*)" PG_JOB_ITEM_FROM, RETRY},

/* The JSON array of strings $1 as a text[] (push_done). */
#define PG_JSON_IDS "ARRAY(SELECT json_array_elements_text($1::json))"

/* Safe to send again after a lost reply (see "Reconnection" above). */
#define RETRY 1
#define ONCE 0

struct pg_stmt {
    const char *sql;
    int retry; /* RETRY or ONCE */
};

/* The device inventory (migration 14); sqlite.c has the same statements. */
// clang-format off
#define PG_SQL_INVENTORY                                                                           \
    [PG_INV_RESET] = {"INSERT INTO inventory (" INV_COLS ") VALUES ($1, $2, $3, $4, $5, $6, $7, "  \
        "$8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, 1, $20, $21, $22) "             \
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
        "updated_at = excluded.updated_at, due_at = excluded.due_at", ONCE},                       \
    [PG_INV_GET] = {"SELECT " INV_COLS " FROM inventory WHERE enrollment_id = $1", RETRY},         \
    [PG_INV_GET_FOR_UPDATE] = {"SELECT " INV_COLS " FROM inventory WHERE enrollment_id = $1 "      \
        "FOR UPDATE", ONCE},                                                                       \
    /* The row lock of the UPDATE is held until the round's commands are queued and committed: */  \
    /* a concurrent claim waits, then finds another round (or the commands pending). */            \
    [PG_INV_CLAIM] = {"UPDATE inventory SET round = round + 1, requested_at = $3, due_at = $4, "   \
        "platform = coalesce($5, platform) WHERE enrollment_id = $1 AND round = $2 AND NOT "       \
        PG_INV_PENDING_OF("$1::text"), ONCE},                                                      \
    [PG_INV_CLAIM_WHY] = {"SELECT round, " PG_INV_PENDING_OF("$1::text")                           \
        " FROM inventory WHERE enrollment_id = $1", RETRY},                                        \
    [PG_INV_SET_DUE] = {"UPDATE inventory SET due_at = $3 "                                        \
        "WHERE enrollment_id = $1 AND round = $2", RETRY},                                         \
    [PG_INV_DEFER] = {"UPDATE inventory SET due_at = $2 WHERE due_at <= $1 AND NOT EXISTS "        \
        "(SELECT 1 FROM enrollments AS e WHERE e.id = inventory.enrollment_id AND "                \
        PG_INV_ASKABLE ")", RETRY},                                                                \
    [PG_INV_DUE] = {"SELECT i.enrollment_id, i.round FROM inventory AS i JOIN enrollments AS e "   \
        "ON e.id = i.enrollment_id WHERE i.due_at <= $1 AND " PG_INV_ASKABLE                       \
        " ORDER BY i.due_at, i.enrollment_id LIMIT $2", RETRY},                                    \
    [PG_INV_UPDATE] = {"UPDATE inventory SET "                                                     \
        PG_INV_SET("os_version", 1, "$3::text") ", "                                               \
        PG_INV_SET("build_version", 1, "$4::text") ", "                                            \
        PG_INV_SET("os_key", 1, "$5::bigint") ", "                                                 \
        PG_INV_SET("product_name", 1, "$6::text") ", "                                             \
        PG_INV_SET("model", 1, "$7::text") ", "                                                    \
        PG_INV_SET("model_name", 1, "$8::text") ", "                                               \
        PG_INV_SET("device_name", 1, "$9::text") ", "                                              \
        PG_INV_SET("capacity_mb", 1, "$10::bigint") ", "                                           \
        PG_INV_SET("available_mb", 1, "$11::bigint") ", "                                          \
        PG_INV_SET("passcode_present", 2, "$12::int") ", "                                         \
        PG_INV_SET("passcode_compliant", 2, "$13::int") ", "                                       \
        PG_INV_SET("app_count", 4, "$14::int") ", "                                                \
        PG_INV_SET("apps", 4, "$15::text") ", "                                                    \
        PG_INV_SET("profile_count", 8, "$16::int") ", "                                            \
        PG_INV_SET("profiles", 8, "$17::text") ", "                                                \
        PG_INV_SET("cert_count", 16, "$18::int") ", "                                              \
        PG_INV_SET("certs", 16, "$19::text")                                                       \
        ", updated_at = $20 WHERE enrollment_id = $1", RETRY},                                     \
    [PG_INV_PENDING] = {"SELECT count(*) FROM commands AS c WHERE c.enrollment_id = $1 AND "       \
        "substr(c.uuid, 1, length('" ST_INV_UUID_PREFIX "')) = '" ST_INV_UUID_PREFIX "'", RETRY},  \
    /* As sqlite.c's SQ_INV_LIST: conditions on the joined row, walked by id. */                   \
    [PG_INV_LIST] = {"SELECT " ENR_COLS_E ", u.email, " INV_COLS_LIST " FROM enrollments AS e "    \
        "LEFT JOIN inventory AS i ON i.enrollment_id = e.id "                                      \
        "LEFT JOIN users AS u ON u.id = e.user_id WHERE e.id > $1 "                                \
        "AND ($2::int = 1 OR e.unenrolled_at = 0) AND ($3::bigint = 0 OR i.os_key < $3) "          \
        "AND ($4::text IS NULL OR i.platform = $4) "                                               \
        "AND ($5::int = 0 OR i.passcode_present = $5 - 1) "                                        \
        "AND ($6::bigint = 0 OR e.last_seen_at < $6) ORDER BY e.id LIMIT $7", RETRY},
// clang-format on

static const struct pg_stmt pg_stmts[PG_NSTMT] = {
    [PG_BEGIN] = {"BEGIN", RETRY},
    [PG_COMMIT] = {"COMMIT", ONCE},
    [PG_PING] = {"SELECT 1", RETRY},
    [PG_SCHEMA_VERSION] = {"SELECT coalesce(max(version), 0) FROM schema_migrations", RETRY},

    [PG_USER_ADD] = {"INSERT INTO users (email, managed_apple_id, password_hash, idp_subject, "
                     "created_at, disabled) VALUES (lower($1::text COLLATE \"C\"), $2, $3, $4, "
                     "$5, $6) RETURNING id",
                     ONCE},
    [PG_USER_GET_BY_EMAIL] = {"SELECT " USER_COLS
                              " FROM users WHERE email = lower($1::text COLLATE \"C\")",
                              RETRY},
    [PG_USER_GET] = {"SELECT " USER_COLS " FROM users WHERE id = $1", RETRY},
    [PG_USER_SET_PASSWORD] = {"UPDATE users SET password_hash = $2 WHERE id = $1", RETRY},
    [PG_USER_LIST] = {"SELECT " USER_COLS " FROM users WHERE id > $1 ORDER BY id LIMIT $2", RETRY},
    [PG_APIKEY_ADD] = {"INSERT INTO api_keys (name, key_hash, created_at) VALUES ($1, $2, $3) "
                       "RETURNING id",
                       ONCE},
    [PG_APIKEY_FIND] = {"SELECT id, name FROM api_keys WHERE key_hash = $1", RETRY},

    [PG_SESSION_ADD] = {"INSERT INTO sessions (" SESSION_COLS
                        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                        ONCE},
    [PG_SESSION_GET] = {"SELECT " SESSION_COLS " FROM sessions WHERE token_hash = $1", RETRY},
    [PG_SESSION_BIND] = {"UPDATE sessions SET enrollment_id = $2 WHERE token_hash = $1"
                         " AND (enrollment_id IS NULL OR enrollment_id = $2)",
                         RETRY},
    [PG_SESSION_BOUND_TO] = {"SELECT enrollment_id FROM sessions WHERE token_hash = $1", RETRY},
    [PG_SESSION_SET_MACHINE_INFO] = {"UPDATE sessions SET machine_info = $2 WHERE token_hash = $1",
                                     RETRY},
    [PG_SESSION_REVOKE_ENROLLMENT] = {"UPDATE sessions SET revoked_at = $2 WHERE enrollment_id = "
                                      "$1 AND revoked_at = 0",
                                      RETRY},
    [PG_SESSION_REVOKE] = {"UPDATE sessions SET revoked_at = $2 WHERE token_hash = $1"
                           " AND revoked_at = 0",
                           RETRY},

    [PG_CHALLENGE_ADD] = {"INSERT INTO scep_challenges (challenge_hash, user_id, session_hash, "
                          "expires_at) VALUES ($1, $2, $3, $4)",
                          ONCE},
    /* The claim: of concurrent consumers, the one whose UPDATE runs first wins. */
    [PG_CHALLENGE_CONSUME] = {"UPDATE scep_challenges SET used = 1, used_at = $2"
                              " WHERE challenge_hash = $1 AND used = 0 AND expires_at > $2"
                              " RETURNING user_id, session_hash, enrollment_id",
                              ONCE},
    [PG_CHALLENGE_GET] = {"SELECT used FROM scep_challenges WHERE challenge_hash = $1", RETRY},
    [PG_CERT_ADD] = {"INSERT INTO certs (" CERT_COLS
                     ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                     ONCE},
    [PG_CERT_GET] = {"SELECT " CERT_COLS " FROM certs WHERE fingerprint = $1", RETRY},
    [PG_CERT_SET_ENROLLMENT] = {"UPDATE certs SET enrollment_id = $2 WHERE fingerprint = $1",
                                RETRY},
    [PG_CERT_REVOKE_ENROLLMENT] = {"UPDATE certs SET revoked_at = $2 WHERE enrollment_id = $1"
                                   " AND revoked_at = 0",
                                   RETRY},

    /* Authenticate: insert, or replace the fields of a known enrollment and reset its push
     * token, completion and unenrollment (the queue is cleared in the same transaction). */
    [PG_ENR_UPSERT] =
        {"INSERT INTO enrollments (id, type, parent_id, user_id, topic, cert_fingerprint, "
         "os_version, build_version, product_name, device_name, model, auth_state, "
         "auth_state_since, last_auth_at, last_auth_method, enrolled_at, last_seen_at) "
         "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, coalesce($12, 'active'), $13, "
         "$14, $15, $16, $17) "
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
         ONCE},
    [PG_ENR_GET] = {"SELECT " ENR_COLS " FROM enrollments WHERE id = $1", RETRY},
    [PG_ENR_TOKEN_UPDATE] = {"UPDATE enrollments SET push_token = $2, push_magic = $3, "
                             "push_token_dead = 0, token_updated_at = $4 WHERE id = $1",
                             RETRY},
    [PG_ENR_SET_CERT] = {"UPDATE enrollments SET cert_fingerprint = $2 WHERE id = $1", RETRY},
    [PG_ENR_SET_AUTH_STATE] = {"UPDATE enrollments SET auth_state = $2, auth_state_since = $3 "
                               "WHERE id = $1",
                               RETRY},
    /* A compare-and-set: a retry after a lost reply would see its own change as a conflict. */
    [PG_ENR_TRANSITION_AUTH_STATE] = {"UPDATE enrollments SET auth_state = $3, "
                                      "auth_state_since = $4 WHERE id = $1 AND auth_state = $2",
                                      ONCE},
    [PG_ENR_SET_LAST_AUTH] = {"UPDATE enrollments SET last_auth_at = $2, last_auth_method = $3 "
                              "WHERE id = $1",
                              RETRY},
    [PG_ENR_SET_PUSH_DEAD] = {"UPDATE enrollments SET push_token_dead = $2 WHERE id = $1", RETRY},
    /* Idempotent: a repeated CheckOut keeps the first unenrollment time. The push token is
     * retired with the enrollment (PROTOCOL.md section 14). */
    [PG_ENR_UNENROLL] =
        {"UPDATE enrollments SET "
         "auth_state_since = CASE WHEN unenrolled_at = 0 THEN $2 ELSE auth_state_since END, "
         "unenrolled_at = CASE WHEN unenrolled_at = 0 THEN $2 ELSE unenrolled_at END, "
         "auth_state = 'unenrolled', push_token = NULL, push_magic = NULL WHERE id = $1",
         ONCE},
    [PG_ENR_TOUCH] = {"UPDATE enrollments SET last_seen_at = $2 WHERE id = $1", RETRY},
    [PG_ENR_LIST] = {"SELECT " ENR_COLS " FROM enrollments WHERE id > $1"
                     " AND ($2::int <> 0 OR unenrolled_at = 0) ORDER BY id LIMIT $3",
                     RETRY},
    [PG_ENR_LIST_USER] = {"SELECT " ENR_COLS " FROM enrollments WHERE user_id = $4 AND id > $1"
                          " AND ($2::int <> 0 OR unenrolled_at = 0) ORDER BY id LIMIT $3",
                          RETRY},

    /* A uuid may not repeat one in history either (see queue_enqueue for the second look). */
    [PG_CMD_ENQUEUE] = {"INSERT INTO commands (uuid, enrollment_id, request_type, body, "
                        "priority, sensitive, created_at) SELECT $1::text, $2::text, $3::text, "
                        "$4::bytea, $5::int, $6::int, $7::bigint WHERE NOT EXISTS "
                        "(SELECT 1 FROM command_history WHERE uuid = $1::text)",
                        ONCE},
    [PG_CMD_IN_HISTORY] = {"SELECT 1 FROM command_history WHERE uuid = $1", RETRY},
    /* $2 = 0: QUEUED only; $2 = 1: QUEUED and NOTNOW. The claim walks commands_next in send
     * order and skips rows another session holds. A repeat after a lost reply re-sends. */
    [PG_CMD_NEXT] = {"UPDATE commands SET status = 0, sent_at = $3 WHERE seq = "
                     "(SELECT seq FROM commands WHERE enrollment_id = $1 AND status <= $2::int"
                     " ORDER BY priority DESC, created_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED)"
                     " RETURNING " CMD_Q_COLS,
                     RETRY},
    [PG_CMD_MARK_NOTNOW] = {"UPDATE commands SET status = 1 WHERE uuid = $1 AND enrollment_id = $2",
                            RETRY},
    /* Only a pending row moves, so a repeated result finds nothing and changes nothing. */
    [PG_CMD_REPORT] =
        {"WITH moved AS (DELETE FROM commands WHERE uuid = $1 AND enrollment_id = $2 RETURNING "
         "seq, uuid, enrollment_id, request_type, body, priority, sensitive, created_at, sent_at) "
         "INSERT INTO command_history (seq, uuid, enrollment_id, request_type, body, priority, "
         "status, sensitive, created_at, sent_at, completed_at, result) "
         "SELECT seq, uuid, enrollment_id, request_type, body, priority, $3::int, sensitive, "
         "created_at, sent_at, $4::bigint, $5::bytea FROM moved",
         ONCE},
    /* One statement, so a command moving to history in between cannot be missed. */
    [PG_CMD_GET] = {"SELECT " CMD_Q_COLS " FROM commands WHERE uuid = $1 UNION ALL "
                    "SELECT " CMD_H_COLS " FROM command_history WHERE uuid = $1 LIMIT 1",
                    RETRY},
    /* Keyset pagination over (part, seq): $2 is the part and $3 the seq of the last row read. */
    [PG_CMD_LIST] = {"SELECT " CMD_Q_COLS ", 0 AS part FROM commands"
                     " WHERE enrollment_id = $1 AND $2::int = 0 AND seq < $3::bigint UNION ALL "
                     "SELECT " CMD_H_COLS ", 1 AS part FROM command_history"
                     " WHERE enrollment_id = $1 AND ($2::int = 0 OR seq < $3::bigint)"
                     " ORDER BY part, seq DESC LIMIT $4::bigint",
                     RETRY},
    [PG_QUEUE_CLEAR] = {"DELETE FROM commands WHERE enrollment_id = $1", RETRY},
    [PG_QUEUE_COUNT] = {"SELECT count(*) FROM commands WHERE enrollment_id = $1", RETRY},
    [PG_HISTORY_PRUNE] = {"DELETE FROM command_history WHERE completed_at < $1", RETRY},

    [PG_AUDIT_ADD] = {"INSERT INTO audit (at, actor, action, target, detail) "
                      "VALUES ($1, $2, $3, $4, $5)",
                      ONCE},
    [PG_AUDIT_LIST] = {"SELECT id, at, actor, action, target, detail FROM audit WHERE id < $1"
                       " ORDER BY id DESC LIMIT $2",
                       RETRY},
    [PG_AUDIT_COUNT] = {"SELECT count(*) FROM audit WHERE action = $1 AND target = $2 AND at >= $3",
                        RETRY},

    /* ---- push outbox: only pushable enrollments get a row ---- */
    [PG_PUSH_ENQUEUE] =
        {"INSERT INTO push_outbox (enrollment_id, due_at, created_at) SELECT e.id, "
         "$2::bigint, $2::bigint FROM enrollments e WHERE e.id = $1::text AND " PUSHABLE
             PUSH_UPSERT,
         RETRY},
    [PG_PUSH_ENR_EXISTS] = {"SELECT 1 FROM enrollments WHERE id = $1", RETRY},
    /* Bulk pushes (see sqlite.c). */
    [PG_PUSH_BULK_REFRESH] = {"UPDATE push_outbox o SET due_at = least(o.due_at, $1::bigint),"
                              " again = CASE WHEN o.claimed_until > $1::bigint THEN 1"
                              " ELSE o.again END WHERE EXISTS (SELECT 1 FROM enrollments e"
                              " WHERE e.id = o.enrollment_id AND " PUSHABLE
                              " AND " PG_BULK_SCOPE("$2::integer", "$3::text") ")",
                              RETRY},
    [PG_PUSH_BULK_COUNT] = {"SELECT count(*) FROM enrollments e WHERE e.id > $1::text AND " PUSHABLE
                            " AND " PG_BULK_SCOPE(
                                "$2::integer",
                                "$3::text") " AND ($4::integer = 0 OR " PG_NO_OUTBOX_ROW ")",
                            RETRY},
    [PG_PUSH_BULK_COUNT_USER] =
        {"SELECT count(*) FROM enrollments e WHERE e.id > $1::text AND " PUSHABLE
         " AND " PG_BULK_USER " AND ($4::integer = 0 OR " PG_NO_OUTBOX_ROW ")",
         RETRY},
    [PG_PUSH_BULK_SUPERSEDE] = {"DELETE FROM push_bulk WHERE claimed_to = ''", RETRY},
    [PG_PUSH_BULK_SAME] = {"SELECT 1 FROM push_bulk WHERE scope = $1::integer"
                           " AND value = lower($2::text COLLATE \"C\") AND claimed_to = ''",
                           RETRY},
    [PG_PUSH_BULK_ADD] = {"INSERT INTO push_bulk (scope, value, created_at)"
                          " VALUES ($1::integer, lower($2::text COLLATE \"C\"), $3::bigint)",
                          ONCE},
    /* SKIP LOCKED: a bulk push another instance is claiming right now is not waited for. */
    [PG_PUSH_BULK_LIST] = {"SELECT id, scope, value, done_to, claimed_to,"
                           " (claimed_by IS NOT DISTINCT FROM $2::text)::integer FROM push_bulk"
                           " WHERE claimed_until <= $1::bigint OR claimed_by = $2::text"
                           " ORDER BY id LIMIT 8 FOR UPDATE SKIP LOCKED",
                           ONCE},
    [PG_PUSH_BULK_PAGE] = {"SELECT e.id, e.push_token, e.push_magic, e.topic FROM enrollments e"
                           " WHERE e.id > $1::text AND " PUSHABLE " AND " PG_BULK_SCOPE(
                               "$2::integer", "$3::text") " AND " PG_NO_OUTBOX_ROW
                                                          " ORDER BY e.id LIMIT $4::integer",
                           RETRY},
    [PG_PUSH_BULK_PAGE_USER] = {"SELECT e.id, e.push_token, e.push_magic, e.topic FROM enrollments"
                                " e WHERE e.id > $1::text AND " PUSHABLE " AND " PG_BULK_USER
                                " AND " PG_NO_OUTBOX_ROW " ORDER BY e.id LIMIT $4::integer",
                                RETRY},
    [PG_PUSH_BULK_LEASE] = {"UPDATE push_bulk SET claimed_by = $2, claimed_until = $3,"
                            " claimed_to = $4 WHERE id = $1",
                            ONCE},
    [PG_PUSH_BULK_FINISH] = {"DELETE FROM push_bulk WHERE id = $1", ONCE},
    [PG_PUSH_BULK_RETRY] = {"INSERT INTO push_outbox (enrollment_id, due_at, attempts, created_at)"
                            " SELECT j.v ->> 0, (j.v ->> 1)::bigint, (j.v ->> 2)::integer,"
                            " $2::bigint FROM json_array_elements($1::json) AS j(v)"
                            " ON CONFLICT (enrollment_id) DO NOTHING",
                            RETRY},
    [PG_PUSH_BULK_ADVANCE] = {"UPDATE push_bulk SET done_to = $3 WHERE id = $1 AND claimed_by = $2"
                              " AND done_to < $3::text",
                              RETRY},
    [PG_PUSH_BULK_REWIND] = {"UPDATE push_bulk SET claimed_to = done_to, claimed_by = NULL,"
                             " claimed_until = 0 WHERE id = $1 AND claimed_by = $2",
                             RETRY},
    [PG_PUSH_BULK_ALL] = {"SELECT scope, value, done_to FROM push_bulk", RETRY},
    /* Driven by the small pending-commands table, not by a scan of every enrollment. */
    [PG_PUSH_SWEEP] = {"INSERT INTO push_outbox (enrollment_id, due_at, created_at) SELECT e.id, "
                       "$2::bigint, $2::bigint FROM enrollments e WHERE e.id IN (SELECT "
                       "enrollment_id FROM commands) AND e.last_seen_at < $1 AND "
                       "e.last_push_at < $1 AND " PUSHABLE
                       " ON CONFLICT (enrollment_id) DO NOTHING",
                       RETRY},
    /* The claim: SKIP LOCKED passes over rows another instance is claiming at this moment, and
     * FOR UPDATE re-checks the lease of a row another instance claimed since our snapshot, so
     * a row is never leased to two instances. Each leased row comes back with its enrollment's
     * target and whether it can still be pushed (no enrollment row: it cannot). */
    [PG_PUSH_CLAIM] = {"WITH c AS (UPDATE push_outbox o SET claimed_by = $1, claimed_until = $3"
                       " WHERE o.enrollment_id = ANY (ARRAY"
                       " (SELECT p.enrollment_id FROM push_outbox p WHERE p.due_at <= $2 AND"
                       " p.claimed_until <= $2 ORDER BY p.due_at LIMIT $4 FOR UPDATE SKIP LOCKED))"
                       " RETURNING o.enrollment_id, o.attempts)"
                       " SELECT c.enrollment_id, c.attempts, e.push_token, e.push_magic, e.topic,"
                       " (e.id IS NOT NULL AND " PUSHABLE ") AS pushable"
                       " FROM c LEFT JOIN enrollments e ON e.id = c.enrollment_id",
                       ONCE},
    /* push_done applies each kind of outcome to a JSON array of rows (storage/push_batch.h):
     * $1 the array, $2 the owner; one round trip per kind instead of a few per row. A list of
     * ids is turned into an array first: "= ANY (array)" is planned as index lookups, where a
     * join with the JSON rows or "IN (subquery)" may be planned as a scan of the whole table
     * (the claim, likewise). */
    [PG_PUSH_DEL_SENT] = {"DELETE FROM push_outbox WHERE enrollment_id = ANY (" PG_JSON_IDS ")"
                          " AND claimed_by = $2 AND again = 0",
                          RETRY},
    [PG_PUSH_REARM] = {"UPDATE push_outbox SET claimed_by = NULL, claimed_until = 0, again = 0,"
                       " attempts = 0, due_at = $3 WHERE enrollment_id = ANY (" PG_JSON_IDS ")"
                       " AND claimed_by = $2",
                       RETRY},
    /* Only enrollments with pending commands: the sweeper reads nothing else (see sqlite.c). */
    [PG_PUSH_MARK_PUSHED] = {"UPDATE enrollments e SET last_push_at = $2"
                             " WHERE e.id = ANY (" PG_JSON_IDS ")"
                             " AND EXISTS (SELECT 1 FROM commands c WHERE c.enrollment_id = e.id)",
                             RETRY},
    [PG_PUSH_RELEASE] = {"UPDATE push_outbox o SET claimed_by = NULL, claimed_until = 0, again = 0,"
                         " due_at = (j.v ->> 1)::bigint, attempts = (j.v ->> 2)::integer"
                         " FROM json_array_elements($1::json) AS j(v)"
                         " WHERE o.enrollment_id = j.v ->> 0 AND o.claimed_by = $2",
                         RETRY},
    /* Also the claim's unpushable rows. */
    [PG_PUSH_DEL_OWNED] = {"DELETE FROM push_outbox WHERE enrollment_id = ANY (" PG_JSON_IDS ")"
                           " AND claimed_by = $2",
                           RETRY},
    /* Only the token that failed: a TokenUpdate in between brought a fresh one. */
    [PG_PUSH_MARK_DEAD] = {"UPDATE enrollments e SET push_token_dead = 1"
                           " FROM json_array_elements($1::json) AS j(v)"
                           " WHERE e.id = j.v ->> 0 AND e.push_token = j.v ->> 1",
                           RETRY},
    [PG_PUSH_PENDING] = {"SELECT count(*) FROM push_outbox", RETRY},

    /* ---- sign-in failure counters: an upsert, so concurrent failures all count ---- */
    [PG_FAILURE_ADD] = {"INSERT INTO signin_failures (key, window_start, failures)"
                        " VALUES ($1, $2, 1) ON CONFLICT (key, window_start)"
                        " DO UPDATE SET failures = signin_failures.failures + 1 RETURNING failures",
                        ONCE},
    [PG_FAILURE_COUNT] =
        {"SELECT failures FROM signin_failures WHERE key = $1 AND window_start = $2", RETRY},
    [PG_FAILURE_PRUNE] = {"DELETE FROM signin_failures WHERE window_start < $1", RETRY},

    /* ---- webhook events ---- */
    [PG_WEBHOOK_ADD] = {"INSERT INTO webhook_events (type, data, created_at, due_at)"
                        " VALUES ($1, $2, $3::bigint, $3::bigint) RETURNING id",
                        ONCE},
    /* As PG_PUSH_CLAIM: SKIP LOCKED passes over events another instance is claiming now. */
    [PG_WEBHOOK_CLAIM] = {"WITH c AS (UPDATE webhook_events w SET claimed_by = $1,"
                          " claimed_until = $3 WHERE w.id = ANY (ARRAY (SELECT id FROM"
                          " webhook_events WHERE due_at <= $2 AND claimed_until <= $2 ORDER BY"
                          " id LIMIT $4 FOR UPDATE SKIP LOCKED))"
                          " RETURNING w.id, w.type, w.data, w.created_at, w.attempts)"
                          " SELECT id, type, data, created_at, attempts FROM c ORDER BY id",
                          ONCE},
    [PG_WEBHOOK_DELETE] = {"DELETE FROM webhook_events WHERE id = $1 AND claimed_by = $2", RETRY},
    [PG_WEBHOOK_RETRY] = {"UPDATE webhook_events SET claimed_by = NULL, claimed_until = 0,"
                          " due_at = $3, attempts = $4 WHERE id = $1 AND claimed_by = $2",
                          RETRY},
    [PG_WEBHOOK_PENDING] = {"SELECT count(*) FROM webhook_events", RETRY},

    /* ---- organisation domains and federated sign-in ---- */
    [PG_DOMAIN_PUT] = {"INSERT INTO domains (" DOMAIN_COLS ") VALUES (lower($1::text COLLATE "
                       "\"C\"), $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) "
                       "ON CONFLICT (name) DO UPDATE SET auth = excluded.auth, "
                       "issuer = excluded.issuer, client_id = excluded.client_id, "
                       "client_secret = excluded.client_secret, ca_file = excluded.ca_file, "
                       "scopes = excluded.scopes, user_claim = excluded.user_claim, "
                       "maid_claim = excluded.maid_claim, groups_claim = excluded.groups_claim, "
                       "allowed_groups = excluded.allowed_groups, jit_users = excluded.jit_users, "
                       "updated_at = excluded.updated_at",
                       RETRY},
    [PG_DOMAIN_GET] = {"SELECT " DOMAIN_COLS
                       " FROM domains WHERE name = lower($1::text COLLATE \"C\")",
                       RETRY},
    [PG_DOMAIN_LIST] = {"SELECT " DOMAIN_COLS " FROM domains ORDER BY name LIMIT 10000", RETRY},
    [PG_OIDC_PENDING_ADD] = {"INSERT INTO oidc_pending (" OIDC_PENDING_COLS
                             ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                             ONCE},
    [PG_OIDC_PENDING_PRUNE] = {"DELETE FROM oidc_pending WHERE expires_at <= $1", RETRY},
    /* Two callbacks racing with the same state: one DELETE finds the row, the other nothing. */
    [PG_OIDC_PENDING_TAKE] =
        {"DELETE FROM oidc_pending WHERE state_hash = $1 RETURNING " OIDC_PENDING_COLS, ONCE},
    [PG_USER_SET_IDP_SUBJECT] = {"UPDATE users SET idp_subject = $2 WHERE id = $1", RETRY},

    /* ---- library: profiles, apps, assignments, installed state ---- */
    [PG_LIB_PROFILE_ADD] = {"INSERT INTO profiles (" LIB_PROFILE_INS_COLS
                            ") VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                            ONCE},
    [PG_LIB_PROFILE_GET] = {"SELECT " LIB_PROFILE_COLS " FROM profiles WHERE id = $1", RETRY},
    [PG_LIB_PROFILE_LIST] = {"SELECT " LIB_PROFILE_COLS
                             " FROM profiles WHERE id > $1 ORDER BY id LIMIT $2",
                             RETRY},
    [PG_LIB_PROFILE_DELETE] = {"DELETE FROM profiles WHERE id = $1", ONCE},
    [PG_LIB_PROFILE_REPLACE] = {"UPDATE profiles SET name = $3, platforms = $4, body = $5,"
                                " sensitive = $6, sign = $7, version = version + 1"
                                " WHERE id = $1 AND identifier = $2 RETURNING version",
                                ONCE},
    [PG_LIB_PROFILE_IDENT] = {"SELECT identifier FROM profiles WHERE id = $1", RETRY},
    [PG_LIB_APP_ADD] = {"INSERT INTO apps (" LIB_APP_INS_COLS
                        ") VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                        ONCE},
    [PG_LIB_APP_GET] = {"SELECT " LIB_APP_COLS " FROM apps WHERE id = $1", RETRY},
    [PG_LIB_APP_LIST] = {"SELECT " LIB_APP_COLS " FROM apps WHERE id > $1 ORDER BY id LIMIT $2",
                         RETRY},
    [PG_LIB_APP_DELETE] = {"DELETE FROM apps WHERE id = $1", ONCE},
    [PG_LIB_APP_REPLACE] = {"UPDATE apps SET manifest_url = $4, spec = $5, sensitive = $6,"
                            " version = version + 1 WHERE id = $1"
                            " AND identifier IS NOT DISTINCT FROM $2::text"
                            " AND itunes_store_id = $3 RETURNING version",
                            ONCE},
    [PG_LIB_APP_EXISTS] = {"SELECT 1 FROM apps WHERE id = $1", RETRY},
    [PG_LIB_ITEM_UNASSIGN] = {"DELETE FROM assignments WHERE item_kind = $1 AND item_id = $2",
                              ONCE},
    /* The item must exist: no row inserted means ST_ENOTFOUND. FOR KEY SHARE holds the item
     * until commit, so an item deleted at the same moment (item_delete removes the item before
     * its assignments) either waits for this row and then removes it, or is gone first. */
    [PG_LIB_ASSIGN_ADD] = {"INSERT INTO assignments (item_kind, item_id, target_type, target, "
                           "created_at) SELECT $1::int, $2::bigint, $3::int, $4::text, $5::bigint"
                           " WHERE ($1::int = 1 AND EXISTS (SELECT 1 FROM profiles WHERE id = "
                           "$2::bigint FOR KEY SHARE)) OR ($1::int = 2 AND EXISTS (SELECT 1 FROM "
                           "apps WHERE id = $2::bigint FOR KEY SHARE)) RETURNING id",
                           ONCE},
    [PG_LIB_ASSIGN_GET] = {"SELECT " LIB_ASSIGN_COLS " FROM assignments WHERE id = $1", RETRY},
    [PG_LIB_ASSIGN_DELETE] = {"DELETE FROM assignments WHERE id = $1", ONCE},
    [PG_LIB_ASSIGN_LIST] = {"SELECT " LIB_ASSIGN_COLS
                            " FROM assignments WHERE id > $1 ORDER BY id LIMIT $2",
                            RETRY},
    [PG_LIB_ASSIGN_ITEMS] = {"SELECT DISTINCT item_kind, item_id FROM assignments WHERE "
                             "(target_type = 1 AND target = $1) OR (target_type = 2 AND target = "
                             "$2) OR (target_type = 3 AND target = $3) ORDER BY item_kind, item_id",
                             RETRY},
    /* Compare-and-set on command_uuid ($10); IS NOT DISTINCT FROM compares NULLs as equal. Of
     * two concurrent puts on an absent row, the second finds the first's row and its CAS fails. */
    [PG_LIB_STATE_PUT] = {"INSERT INTO item_state (" LIB_STATE_COLS
                          ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $11) "
                          "ON CONFLICT (enrollment_id, item_kind, item_id) DO UPDATE SET "
                          "identifier = excluded.identifier, state = excluded.state, "
                          "command_uuid = excluded.command_uuid, sensitive = excluded.sensitive, "
                          "detail = excluded.detail, updated_at = excluded.updated_at, "
                          "version = excluded.version "
                          "WHERE item_state.command_uuid IS NOT DISTINCT FROM $10::text",
                          ONCE},
    [PG_LIB_STATE_DELETE] = {"DELETE FROM item_state WHERE enrollment_id = $1 AND item_kind = $2"
                             " AND item_id = $3",
                             RETRY},
    [PG_LIB_STATE_LIST] = {"SELECT " LIB_STATE_COLS " FROM item_state WHERE enrollment_id = $1"
                           " ORDER BY item_kind, item_id",
                           RETRY},
    [PG_LIB_STATE_BY_COMMAND] = {"SELECT " LIB_STATE_COLS
                                 " FROM item_state WHERE command_uuid = $1 LIMIT 1",
                                 RETRY},
    [PG_LIB_STATE_CLEAR] = {"DELETE FROM item_state WHERE enrollment_id = $1", RETRY},
    [PG_LIB_STATE_ENROLLMENTS] = {"SELECT DISTINCT enrollment_id FROM item_state"
                                  " WHERE item_kind = $1 AND item_id = $2 ORDER BY enrollment_id",
                                  RETRY},

    /* ---- retention and server secrets (migration 12) ---- */
    [PG_AUDIT_PRUNE] = {"DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at < $1 "
                        "ORDER BY at LIMIT $2)",
                        RETRY},
    [PG_CHALLENGE_PRUNE] = {"DELETE FROM scep_challenges WHERE expires_at < $1", RETRY},
    [PG_SESSION_PRUNE_UNBOUND] =
        {"DELETE FROM sessions WHERE enrollment_id IS NULL AND issued_at < $1", RETRY},
    [PG_SECRET_ADD] = {"INSERT INTO server_secrets (name, value, created_at) VALUES ($1, $2, $3) "
                       "ON CONFLICT (name) DO NOTHING",
                       RETRY},
    [PG_SECRET_GET] = {"SELECT value FROM server_secrets WHERE name = $1", RETRY},

    /* ---- identity renewal (migration 13; sqlite.c's SQ_SQL_RENEWAL) ---- */
    [PG_CHALLENGE_ADD_RENEWAL] = {"INSERT INTO scep_challenges (challenge_hash, user_id, "
                                  "session_hash, enrollment_id, expires_at) VALUES ($1, $2, $3, "
                                  "$4, $5)",
                                  ONCE},
    [PG_RENEWAL_GET] = {"SELECT " RENEWAL_COLS " FROM identity_renewals WHERE enrollment_id = $1",
                        RETRY},
    /* The compare-and-set: of concurrent writers expecting one version, one changes the row. */
    [PG_RENEWAL_PUT] =
        {"INSERT INTO identity_renewals (" RENEWAL_COLS ") VALUES ($1, $2, $3, $4, $5, $6, $7, "
         "$8, $9, $10, $11, $12, 1) ON CONFLICT (enrollment_id) DO UPDATE SET "
         "old_fingerprint = excluded.old_fingerprint, expires_at = excluded.expires_at, "
         "state = excluded.state, attempts = excluded.attempts, "
         "next_attempt_at = excluded.next_attempt_at, challenge_hash = excluded.challenge_hash, "
         "command_uuid = excluded.command_uuid, new_fingerprint = excluded.new_fingerprint, "
         "last_error = excluded.last_error, started_at = excluded.started_at, "
         "updated_at = excluded.updated_at, version = identity_renewals.version + 1 "
         "WHERE identity_renewals.version = $13 RETURNING version",
         ONCE},
    [PG_RENEWAL_CANDIDATES] =
        {"SELECT e.id, c.fingerprint, c.not_after, coalesce(r.version, 0) FROM " PG_BOUND_FROM
         " LEFT JOIN identity_renewals r ON r.enrollment_id = e.id WHERE " PG_BOUND_WHERE
         " AND c.not_after <= $1 AND (r.enrollment_id IS NULL OR "
         "r.old_fingerprint <> c.fingerprint) ORDER BY c.not_after LIMIT $2",
         RETRY},
    [PG_RENEWAL_DUE] =
        {"SELECT " RENEWAL_COLS " FROM identity_renewals WHERE state IN ('pending', 'held') AND "
         "next_attempt_at <= $1 UNION SELECT r.enrollment_id, r.old_fingerprint, r.expires_at, "
         "r.state, r.attempts, r.next_attempt_at, r.challenge_hash, r.command_uuid, "
         "r.new_fingerprint, r.last_error, r.started_at, r.updated_at, r.version "
         "FROM command_history h JOIN identity_renewals r ON r.command_uuid = h.uuid "
         "WHERE h.completed_at >= $2 AND h.status IN (3, 4) AND r.state = 'pending' "
         "ORDER BY 6 LIMIT $3",
         RETRY},
    [PG_ROTATE_ENROLLMENT] = {"UPDATE enrollments SET cert_fingerprint = $3 WHERE id = $1 AND "
                              "cert_fingerprint = $2",
                              ONCE},
    [PG_ROTATE_CERTS] = {"UPDATE certs SET revoked_at = $4 WHERE (enrollment_id = $1 OR "
                         "fingerprint = $2) AND fingerprint <> $3 AND revoked_at = 0",
                         ONCE},
    [PG_ROTATE_RENEWAL] = {"UPDATE identity_renewals SET state = 'done', new_fingerprint = $3, "
                           "challenge_hash = NULL, updated_at = $4, version = version + 1 "
                           "WHERE enrollment_id = $1 AND old_fingerprint = $2 AND state <> 'done'",
                           ONCE},
    [PG_IDENTITY_COUNT_EXPIRING] = {"SELECT count(*) FROM " PG_BOUND_FROM " WHERE " PG_BOUND_WHERE
                                    " AND c.not_after > $1 AND c.not_after <= $2",
                                    RETRY},
    PG_SQL_INVENTORY PG_SQL_JOBS};

/* ---- connections ---- */

struct pgsql_storage;

/* One thread's connection and which statements it has prepared. */
struct pg_conn {
    PGconn *db;
    struct pgsql_storage *owner;
    struct pg_conn *prev, *next; /* owner->conns, under owner->lock */
    int doomed;                  /* the server announced it is closing the connection */
    /* Transactions, as in sqlite.c: levels open (outermost BEGIN, inner ones savepoints); base =
     * 1 while storage_tx_begin's transaction is open; broken = it failed (aborted, connection
     * lost): every statement fails until storage_tx_rollback. */
    int depth, base, broken;
    unsigned char prepared[PG_NSTMT];
};

struct pgsql_storage {
    struct storage base; /* first: storage * <-> struct pgsql_storage * */
    char *dsn;           /* may hold a password: never logged */
    pthread_key_t key;   /* this thread's struct pg_conn */
    int key_ok;
    pthread_mutex_t lock; /* guards conns */
    struct pg_conn *conns;
    atomic_int step_fail_after; /* test hook, see storage_impl.h */
};

static const struct storage_ops pgsql_ops;

/* Copies a libpq message onto one line (they end in newlines and may span several). */
static const char *pg_oneline(const char *msg, char *out, size_t n)
{
    size_t j = 0;
    for (size_t i = 0; msg != NULL && msg[i] != '\0' && j + 1 < n; i++) {
        char ch = msg[i];
        out[j++] = ch == '\n' || ch == '\r' || ch == '\t' ? ' ' : ch == '"' ? '\'' : ch;
    }
    while (j > 0 && out[j - 1] == ' ')
        j--;
    out[j] = '\0';
    return out;
}

/*
 * Server notices ("relation ... already exists, skipping") go to the debug log, not stderr. An
 * error that arrives while the connection is idle is the server saying why it is about to
 * close it (shutdown, pg_terminate_backend, idle_session_timeout: severity FATAL); libpq hands
 * it to the notice receiver, and the connection is marked for a reset before its next use.
 */
static void pg_notice(void *arg, const PGresult *res)
{
    struct pg_conn *c = arg;
    const char *severity = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    char line[512];
    pg_oneline(PQresultErrorMessage(res), line, sizeof(line));
    if (severity != NULL && (strcmp(severity, "FATAL") == 0 || strcmp(severity, "PANIC") == 0)) {
        c->doomed = 1;
        log_info("event=storage_server_closing backend=pgsql msg=\"%s\"", line);
        return;
    }
    log_debug("event=storage_notice backend=pgsql msg=\"%s\"", line);
}

static PGconn *pg_connect(const char *dsn)
{
    /* Entries before dbname can be overridden by the DSN, those after it cannot: Orchard's
     * strings are UTF-8 whatever the DSN says. */
    static const char *const keys[] = {"connect_timeout", "dbname", "fallback_application_name",
                                       "client_encoding", NULL};
    const char *const vals[] = {PG_CONNECT_TIMEOUT, dsn, "orchard", "UTF8", NULL};
    return PQconnectdbParams(keys, vals, 1);
}

static void conn_free(struct pg_conn *c)
{
    if (c == NULL)
        return;
    PQfinish(c->db);
    free(c);
}

/* The pthread key's destructor: a pool thread is exiting, close its connection. */
static void conn_thread_exit(void *p)
{
    struct pg_conn *c = p;
    struct pgsql_storage *ps = c->owner;
    pthread_mutex_lock(&ps->lock);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        ps->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    pthread_mutex_unlock(&ps->lock);
    conn_free(c);
}

static struct pg_conn *conn_open(struct pgsql_storage *ps, char *err, size_t err_len)
{
    struct pg_conn *c = xcalloc(1, sizeof(*c));
    c->owner = ps;
    c->db = pg_connect(ps->dsn);
    if (c->db == NULL || PQstatus(c->db) != CONNECTION_OK) {
        char line[512];
        snprintf(err, err_len, "pgsql: cannot connect: %s",
                 c->db ? pg_oneline(PQerrorMessage(c->db), line, sizeof(line)) : "out of memory");
        conn_free(c);
        return NULL;
    }
    PQsetNoticeReceiver(c->db, pg_notice, c);
    return c;
}

static int conn_attach(struct pgsql_storage *ps, struct pg_conn *c)
{
    if (pthread_setspecific(ps->key, c) != 0)
        return -1;
    pthread_mutex_lock(&ps->lock);
    c->next = ps->conns;
    if (ps->conns != NULL)
        ps->conns->prev = c;
    ps->conns = c;
    pthread_mutex_unlock(&ps->lock);
    return 0;
}

/* Re-establishes a broken connection; its prepared statements died with the old session. */
static void pg_reset(struct pg_conn *c)
{
    memset(c->prepared, 0, sizeof(c->prepared));
    c->doomed = 0;
    /* The server rolled back whatever was open: nothing of a batch may now run outside it. */
    if (c->depth > 0 && c->base)
        c->broken = 1;
    c->depth = 0;
    PQreset(c->db);
    if (PQstatus(c->db) == CONNECTION_OK) {
        log_info("event=storage_reconnected backend=pgsql");
    } else {
        char line[512];
        log_error("event=storage_error backend=pgsql op=reconnect err=\"%s\"",
                  pg_oneline(PQerrorMessage(c->db), line, sizeof(line)));
    }
}

/* Runs a rollback statement; never fault-injected: it is the recovery path. */
static void pg_rollback_exec(struct pg_conn *c, const char *sql)
{
    PGresult *r = PQexec(c->db, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        char line[512];
        log_error("event=storage_error backend=pgsql op=rollback err=\"%s\"",
                  pg_oneline(PQerrorMessage(c->db), line, sizeof(line)));
    }
    PQclear(r);
}

/* Rolls back the whole open transaction, if any. */
static void pg_rollback_all(struct pg_conn *c)
{
    PGTransactionStatusType ts = PQtransactionStatus(c->db);
    if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR)
        pg_rollback_exec(c, "ROLLBACK");
    c->depth = 0;
}

/*
 * Undoes the operation's level (sqlite.c, "Nesting"): ROLLBACK, or back to its savepoint, which
 * also clears an aborted state its failed statement left. An operation whose begin failed has
 * no level of its own: inside storage_tx_begin's transaction the caller's level stays (the
 * transaction is marked broken); outside, anything left open is rolled back.
 */
static void pg_rollback(struct pg_conn *c)
{
    if (c->depth <= c->base) {
        if (c->base == 0)
            pg_rollback_all(c);
        else
            c->broken = 1;
        return;
    }
    if (c->depth == 1) {
        pg_rollback_all(c);
        return;
    }
    pg_rollback_exec(c, "ROLLBACK TO SAVEPOINT orchard_op; RELEASE SAVEPOINT orchard_op");
    c->depth--;
}

/*
 * Readies this thread's connection for an operation, without a round trip: a transaction left
 * open is rolled back (a bug elsewhere must not leak into this operation), and a connection the
 * server has closed while it sat idle (restart, idle timeout, pg_terminate_backend) is reset.
 * Such a server sends a FATAL message and closes the socket, so the socket reads as ready while
 * libpq expects nothing; consuming the input hands the message to pg_notice (or makes libpq
 * see the end of the connection).
 */
static void conn_check(struct pg_conn *c)
{
    PGTransactionStatusType ts = PQtransactionStatus(c->db);
    if (!c->base && (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR)) {
        log_error("event=storage_error backend=pgsql op=check err=\"transaction left open\"");
        pg_rollback_all(c);
    }
    for (int i = 0; i < 4 && PQstatus(c->db) == CONNECTION_OK; i++) {
        struct pollfd pfd = {.fd = PQsocket(c->db), .events = POLLIN, .revents = 0};
        if (pfd.fd < 0 || poll(&pfd, 1, 0) <= 0)
            break;
        if (!PQconsumeInput(c->db))
            break;
        PGnotify *n;
        while ((n = PQnotifies(c->db)) != NULL)
            PQfreemem(n);
    }
    if (PQstatus(c->db) != CONNECTION_OK || c->doomed)
        pg_reset(c);
}

/* This thread's connection, opened on first use. NULL (logged) if it cannot be opened. */
static struct pg_conn *conn_get(storage *st)
{
    struct pgsql_storage *ps = (struct pgsql_storage *)st;
    struct pg_conn *c = pthread_getspecific(ps->key);
    if (c != NULL) {
        conn_check(c);
        return c;
    }
    char err[600];
    c = conn_open(ps, err, sizeof(err));
    if (c == NULL) {
        log_error("event=storage_error backend=pgsql op=connect err=\"%s\"", err);
        return NULL;
    }
    if (conn_attach(ps, c) != 0) {
        log_error("event=storage_error backend=pgsql op=connect err=pthread_setspecific");
        conn_free(c);
        return NULL;
    }
    return c;
}

/* ---- statement helpers ---- */

/* Statement parameters: text, except bytea in binary; NULL values are SQL NULL. */
struct pg_params {
    int n;
    int bad; /* a value could not be passed (a blob over INT_MAX bytes) */
    const char *values[PG_MAX_PARAMS];
    int lengths[PG_MAX_PARAMS];
    int formats[PG_MAX_PARAMS];
    char num[PG_MAX_PARAMS][24];
};

static void p_text(struct pg_params *p, const char *v)
{
    assert(p->n < PG_MAX_PARAMS);
    p->values[p->n] = v;
    p->lengths[p->n] = 0;
    p->formats[p->n] = 0;
    p->n++;
}

static void p_int(struct pg_params *p, int64_t v)
{
    assert(p->n < PG_MAX_PARAMS);
    snprintf(p->num[p->n], sizeof(p->num[0]), "%lld", (long long)v);
    p_text(p, p->num[p->n]);
}

/* A reference to a users row: 0 means none and is stored as NULL. */
static void p_ref(struct pg_params *p, int64_t id)
{
    if (id != 0)
        p_int(p, id);
    else
        p_text(p, NULL);
}

static void p_blob(struct pg_params *p, const void *v, size_t n)
{
    assert(p->n < PG_MAX_PARAMS);
    if (n > INT_MAX)
        p->bad = 1;
    p->values[p->n] = v;
    p->lengths[p->n] = n > INT_MAX ? 0 : (int)n;
    p->formats[p->n] = 1;
    p->n++;
}

/* Counts one database round trip against the test hook; true when it must fail. */
static int pg_fault(struct pgsql_storage *ps)
{
    int n = atomic_load_explicit(&ps->step_fail_after, memory_order_relaxed);
    while (n > 0) {
        if (atomic_compare_exchange_weak(&ps->step_fail_after, &n, n - 1))
            return n == 1;
    }
    return 0;
}

/* Logs a failed statement and maps it to an ST_E* code; constraint violations are not logged. */
static int pg_error(struct pg_conn *c, const PGresult *r, const char *op)
{
    const char *state = r != NULL ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    if (state != NULL && strcmp(state, "23505") == 0)
        return ST_EEXISTS;
    if (state != NULL && strcmp(state, "23503") == 0)
        return ST_ENOTFOUND; /* a referenced user or enrollment does not exist */
    const char *msg = r != NULL ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    char line[512];
    log_error("event=storage_error backend=pgsql op=%s sqlstate=%s err=\"%s\"", op,
              state != NULL ? state : "-",
              pg_oneline(msg != NULL ? msg : PQerrorMessage(c->db), line, sizeof(line)));
    return ST_ERROR;
}

/* One attempt: prepares the statement on this connection if needed, then runs it. */
static PGresult *pg_exec_once(struct pg_conn *c, enum pg_stmt_id id, const struct pg_params *p)
{
    char name[16];
    snprintf(name, sizeof(name), "orchard_%d", (int)id);
    if (!c->prepared[id]) {
        PGresult *r = PQprepare(c->db, name, pg_stmts[id].sql, 0, NULL);
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            return r;
        PQclear(r);
        c->prepared[id] = 1;
    }
    return PQexecPrepared(c->db, name, p->n, p->values, p->lengths, p->formats, 1);
}

/*
 * Runs statement id with parameters p on c (NULL: the connection could not be had, already
 * logged). On success returns ST_OK and *out holds the result (rows in binary; PQclear it);
 * otherwise returns an ST_E* code with *out NULL. Reconnects and retries as described at the
 * top of the file.
 */
static int pg_exec(struct pg_conn *c, enum pg_stmt_id id, const struct pg_params *p, const char *op,
                   PGresult **out)
{
    *out = NULL;
    if (c == NULL)
        return ST_ERROR;
    if (c->broken) {
        log_error("event=storage_error backend=pgsql op=%s err=\"transaction broken\"", op);
        return ST_ERROR;
    }
    if (p->bad) {
        log_error("event=storage_error backend=pgsql op=%s err=\"value too large\"", op);
        return ST_ERROR;
    }
    if (pg_fault(c->owner)) {
        log_error("event=storage_error backend=pgsql op=%s err=\"injected fault\"", op);
        return ST_ERROR;
    }
    for (int attempt = 0;; attempt++) {
        int in_txn = PQtransactionStatus(c->db) != PQTRANS_IDLE;
        PGresult *r = pg_exec_once(c, id, p);
        ExecStatusType s = PQresultStatus(r);
        if (s == PGRES_TUPLES_OK || s == PGRES_COMMAND_OK) {
            *out = r;
            return ST_OK;
        }
        if (PQstatus(c->db) != CONNECTION_BAD) {
            int rc = pg_error(c, r, op);
            PQclear(r);
            /* A failed statement outside any operation's savepoint aborts the caller's
             * transaction (storage_tx_begin): the batch cannot go on. */
            if (c->base && c->depth <= c->base && PQtransactionStatus(c->db) == PQTRANS_INERROR)
                c->broken = 1;
            return rc;
        }
        PQclear(r);
        int retry = attempt == 0 && !in_txn && pg_stmts[id].retry == RETRY;
        log_warn("event=storage_connection_lost backend=pgsql op=%s retry=%d", op, retry);
        pg_reset(c);
        if (!retry || PQstatus(c->db) != CONNECTION_OK)
            return ST_ERROR;
    }
}

/* pg_exec for statements that return no rows. With must_change, no row changed is ST_ENOTFOUND. */
static int pg_run(struct pg_conn *c, enum pg_stmt_id id, const struct pg_params *p, const char *op,
                  int must_change, int64_t *changed)
{
    PGresult *r;
    int rc = pg_exec(c, id, p, op, &r);
    if (rc != ST_OK)
        return rc;
    int64_t n = strtoll(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    if (changed != NULL)
        *changed = n;
    return must_change && n == 0 ? ST_ENOTFOUND : ST_OK;
}

/*
 * pg_exec for lookups: ST_OK with *out holding at least one row, ST_ENOTFOUND for none (*out
 * NULL), or an error.
 */
static int pg_row(struct pg_conn *c, enum pg_stmt_id id, const struct pg_params *p, const char *op,
                  PGresult **out)
{
    int rc = pg_exec(c, id, p, op, out);
    if (rc == ST_OK && PQntuples(*out) == 0) {
        PQclear(*out);
        *out = NULL;
        rc = ST_ENOTFOUND;
    }
    return rc;
}

static const struct pg_params pg_noparams;

/* Runs a savepoint statement of a nested operation (simple protocol). */
static int pg_exec_tx(struct pg_conn *c, const char *sql, const char *op)
{
    if (c->broken || pg_fault(c->owner)) {
        log_error("event=storage_error backend=pgsql op=%s err=\"%s\"", op,
                  c->broken ? "transaction broken" : "injected fault");
        return ST_ERROR;
    }
    PGresult *r = PQexec(c->db, sql);
    int rc = PQresultStatus(r) == PGRES_COMMAND_OK ? ST_OK : pg_error(c, r, op);
    PQclear(r);
    if (rc != ST_OK && PQstatus(c->db) == CONNECTION_BAD)
        pg_reset(c);
    return rc;
}

/* Opens the operation's level: BEGIN, or a savepoint inside an open transaction. */
static int pg_begin(struct pg_conn *c, const char *op)
{
    if (c == NULL)
        return ST_ERROR;
    int rc = c->depth == 0 ? pg_run(c, PG_BEGIN, &pg_noparams, op, 0, NULL)
                           : pg_exec_tx(c, "SAVEPOINT orchard_op", op);
    if (rc == ST_OK)
        c->depth++;
    else if (c->base)
        c->broken = 1;
    return rc;
}

/* Ends the operation's level: COMMIT, or RELEASE of its savepoint. */
static int pg_commit(struct pg_conn *c, const char *op)
{
    if (c->depth <= c->base) {
        log_error("event=storage_error backend=pgsql op=%s err=\"commit without begin\"", op);
        return ST_ERROR;
    }
    int rc = c->depth == 1 ? pg_run(c, PG_COMMIT, &pg_noparams, op, 0, NULL)
                           : pg_exec_tx(c, "RELEASE SAVEPOINT orchard_op", op);
    if (rc == ST_OK)
        c->depth--;
    return rc;
}

/* ---- row readers (binary results) ---- */

/* An integer column of any width (int2, int4, int8); NULL reads as 0. */
static int64_t col_int(const PGresult *r, int row, int col)
{
    if (PQgetisnull(r, row, col))
        return 0;
    const unsigned char *v = (const unsigned char *)PQgetvalue(r, row, col);
    int n = PQgetlength(r, row, col);
    uint64_t u = 0;
    for (int i = 0; i < n && i < 8; i++)
        u = u << 8 | v[i];
    switch (n) {
    case 8:
        return (int64_t)u;
    case 4:
        return (int32_t)(uint32_t)u;
    case 2:
        return (int16_t)(uint16_t)u;
    default:
        return (int64_t)u;
    }
}

/* A bytea or text column as a NUL-terminated copy (plists are text), with its length. */
static char *col_blob(const PGresult *r, int row, int col, size_t *len)
{
    if (len != NULL)
        *len = 0;
    if (PQgetisnull(r, row, col))
        return NULL;
    size_t n = (size_t)PQgetlength(r, row, col);
    char *out = xmalloc(n + 1);
    if (n > 0)
        memcpy(out, PQgetvalue(r, row, col), n);
    out[n] = '\0';
    if (len != NULL)
        *len = n;
    return out;
}

static char *col_text(const PGresult *r, int row, int col)
{
    return col_blob(r, row, col, NULL);
}

/* A text column borrowed from the result (valid until PQclear); NULL stays NULL. */
static const char *col_str(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? NULL : PQgetvalue(r, row, col);
}

static void read_user(const PGresult *r, int i, st_user *u)
{
    u->id = col_int(r, i, 0);
    u->email = col_text(r, i, 1);
    u->managed_apple_id = col_text(r, i, 2);
    u->password_hash = col_text(r, i, 3);
    u->idp_subject = col_text(r, i, 4);
    u->created_at = col_int(r, i, 5);
    u->disabled = (int)col_int(r, i, 6);
}

static void read_session(const PGresult *r, int i, st_session *x)
{
    x->token_hash = col_text(r, i, 0);
    x->user_id = col_int(r, i, 1);
    x->method = col_text(r, i, 2);
    x->issued_at = col_int(r, i, 3);
    x->expires_at = col_int(r, i, 4);
    x->enrollment_id = col_text(r, i, 5);
    x->revoked_at = col_int(r, i, 6);
    x->machine_info = col_text(r, i, 7);
}

static void read_cert(const PGresult *r, int i, st_cert *c)
{
    c->serial = col_text(r, i, 0);
    c->fingerprint = col_text(r, i, 1);
    c->subject = col_text(r, i, 2);
    c->user_id = col_int(r, i, 3);
    c->session_hash = col_text(r, i, 4);
    c->enrollment_id = col_text(r, i, 5);
    c->not_after = col_int(r, i, 6);
    c->issued_at = col_int(r, i, 7);
    c->revoked_at = col_int(r, i, 8);
}

static void read_enrollment(const PGresult *r, int i, st_enrollment *e)
{
    e->id = col_text(r, i, 0);
    e->type = (int)col_int(r, i, 1);
    e->parent_id = col_text(r, i, 2);
    e->user_id = col_int(r, i, 3);
    e->topic = col_text(r, i, 4);
    e->cert_fingerprint = col_text(r, i, 5);
    e->push_token = col_text(r, i, 6);
    e->push_magic = col_text(r, i, 7);
    e->push_token_dead = (int)col_int(r, i, 8);
    e->os_version = col_text(r, i, 9);
    e->build_version = col_text(r, i, 10);
    e->product_name = col_text(r, i, 11);
    e->device_name = col_text(r, i, 12);
    e->model = col_text(r, i, 13);
    e->auth_state = col_text(r, i, 14);
    e->auth_state_since = col_int(r, i, 15);
    e->last_auth_at = col_int(r, i, 16);
    e->last_auth_method = col_text(r, i, 17);
    e->enrolled_at = col_int(r, i, 18);
    e->token_updated_at = col_int(r, i, 19);
    e->last_seen_at = col_int(r, i, 20);
    e->unenrolled_at = col_int(r, i, 21);
}

/* Reads CMD_Q_COLS / CMD_H_COLS; returns the row's seq. */
static int64_t read_command(const PGresult *r, int i, st_command *c)
{
    c->uuid = col_text(r, i, 0);
    c->enrollment_id = col_text(r, i, 1);
    c->request_type = col_text(r, i, 2);
    c->body = col_blob(r, i, 3, &c->body_len);
    c->priority = (int)col_int(r, i, 4);
    c->status = (int)col_int(r, i, 5);
    c->sensitive = (int)col_int(r, i, 6);
    c->created_at = col_int(r, i, 7);
    c->sent_at = col_int(r, i, 8);
    c->completed_at = col_int(r, i, 9);
    c->result = col_blob(r, i, 10, &c->result_len);
    return col_int(r, i, 11);
}

static void read_audit(const PGresult *r, int i, st_audit *a)
{
    a->id = col_int(r, i, 0);
    a->at = col_int(r, i, 1);
    a->actor = col_text(r, i, 2);
    a->action = col_text(r, i, 3);
    a->target = col_text(r, i, 4);
    a->detail = col_text(r, i, 5);
}

/* ---- lifecycle ---- */

static void pg_close(storage *st)
{
    struct pgsql_storage *ps = (struct pgsql_storage *)st;
    /* Deleting the key first means no thread-exit destructor runs for it any more. */
    if (ps->key_ok)
        pthread_key_delete(ps->key);
    while (ps->conns != NULL) {
        struct pg_conn *c = ps->conns;
        ps->conns = c->next;
        conn_free(c);
    }
    pthread_mutex_destroy(&ps->lock);
    free(ps->dsn);
    free(ps);
}

static int pg_ping(storage *st)
{
    PGresult *r;
    int rc = pg_row(conn_get(st), PG_PING, &pg_noparams, "ping", &r);
    PQclear(r);
    return rc == ST_ENOTFOUND ? ST_ERROR : rc;
}

static int pg_schema_version(storage *st)
{
    PGresult *r;
    int rc = pg_row(conn_get(st), PG_SCHEMA_VERSION, &pg_noparams, "schema_version", &r);
    if (rc != ST_OK)
        return rc == ST_ENOTFOUND ? ST_ERROR : rc;
    rc = (int)col_int(r, 0, 0);
    PQclear(r);
    return rc;
}

/* Runs one utility statement (simple protocol) during open; fills err on failure. */
static int pg_exec_simple(PGconn *db, const char *sql, const char *what, char *err, size_t err_len,
                          PGresult **keep)
{
    PGresult *r = PQexec(db, sql);
    ExecStatusType s = PQresultStatus(r);
    if (s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK) {
        if (keep != NULL)
            *keep = r;
        else
            PQclear(r);
        return 0;
    }
    char line[512];
    snprintf(err, err_len, "pgsql: %s failed: %s", what,
             pg_oneline(PQerrorMessage(db), line, sizeof(line)));
    PQclear(r);
    return -1;
}

/*
 * Applies pending migrations in one transaction under the migration advisory lock, so two
 * instances starting at once do not race: the second waits, then finds the schema current.
 * DDL is transactional in PostgreSQL, so a failed migration leaves the schema as it was.
 */
static int pg_migrate(PGconn *db, char *err, size_t err_len)
{
    PGresult *r = NULL;
    int cur = 0;
    if (pg_exec_simple(db, "BEGIN", "migration", err, err_len, NULL) != 0 ||
        pg_exec_simple(db, "SELECT pg_advisory_xact_lock(" PG_MIGRATION_LOCK ")", "migration lock",
                       err, err_len, NULL) != 0 ||
        pg_exec_simple(db,
                       "CREATE TABLE IF NOT EXISTS schema_migrations ("
                       " version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)",
                       "creating schema_migrations", err, err_len, NULL) != 0 ||
        pg_exec_simple(db, "SELECT coalesce(max(version), 0) FROM schema_migrations",
                       "reading the schema version", err, err_len, &r) != 0)
        goto fail;
    cur = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    if (cur > PG_NMIGRATIONS) {
        snprintf(err, err_len, "pgsql: database schema version %d is newer than this build (%d)",
                 cur, PG_NMIGRATIONS);
        goto fail;
    }
    for (int v = cur + 1; v <= PG_NMIGRATIONS; v++) {
        char what[64], sql[128];
        snprintf(what, sizeof(what), "migration to version %d", v);
        snprintf(sql, sizeof(sql),
                 "INSERT INTO schema_migrations (version, applied_at) VALUES (%d, %lld)", v,
                 (long long)time(NULL));
        if (pg_exec_simple(db, pg_migrations[v - 1], what, err, err_len, NULL) != 0 ||
            pg_exec_simple(db, sql, what, err, err_len, NULL) != 0)
            goto fail;
        log_info("event=storage_migrated backend=pgsql version=%d", v);
    }
    if (pg_exec_simple(db, "COMMIT", "migration commit", err, err_len, NULL) != 0)
        goto fail;
    return 0;
fail:
    if (PQtransactionStatus(db) == PQTRANS_INTRANS || PQtransactionStatus(db) == PQTRANS_INERROR)
        PQclear(PQexec(db, "ROLLBACK"));
    return -1;
}

storage *pgsql_storage_open(const char *dsn, const char *location, char *err, size_t err_len)
{
    (void)location;
    if (!PQisthreadsafe()) {
        snprintf(err, err_len, "pgsql: libpq was built without thread support");
        return NULL;
    }
    struct pgsql_storage *ps = xcalloc(1, sizeof(*ps));
    ps->base.ops = &pgsql_ops;
    /* libpq recognises only the lowercase URI prefixes; storage_open matched the scheme in any
     * case. */
    ps->dsn = xstrdup(dsn);
    for (char *p = ps->dsn; *p != '\0' && *p != ':'; p++)
        *p = (char)tolower((unsigned char)*p);
    atomic_init(&ps->step_fail_after, 0);
    pthread_mutex_init(&ps->lock, NULL);
    /* libpq's parse errors quote the whole URI, password included: say it in our words. */
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(ps->dsn, &perr);
    PQfreemem(perr);
    if (opts == NULL) {
        snprintf(err, err_len,
                 "pgsql: the DSN is not a valid libpq connection URI (postgresql://[user[:password]"
                 "@][host][:port][/dbname][?param=value&...])");
        goto fail;
    }
    PQconninfoFree(opts);
    if (pthread_key_create(&ps->key, conn_thread_exit) != 0) {
        snprintf(err, err_len, "pgsql: pthread_key_create failed");
        goto fail;
    }
    ps->key_ok = 1;

    struct pg_conn *c = conn_open(ps, err, err_len);
    if (c == NULL)
        goto fail;
    if (conn_attach(ps, c) != 0) {
        conn_free(c);
        snprintf(err, err_len, "pgsql: pthread_setspecific failed");
        goto fail;
    }
    if (pg_migrate(c->db, err, err_len) != 0)
        goto fail;
    return &ps->base;
fail:
    pg_close(&ps->base);
    return NULL;
}

static void pg_fail_step_after(storage *st, int n)
{
    struct pgsql_storage *ps = (struct pgsql_storage *)st;
    atomic_store(&ps->step_fail_after, n);
}

int pgsql_exec_for_test(storage *st, const char *sql, int64_t *out)
{
    assert(st != NULL && st->ops == &pgsql_ops);
    if (out != NULL)
        *out = 0;
    struct pg_conn *c = conn_get(st);
    if (c == NULL)
        return ST_ERROR;
    PGresult *r = PQexec(c->db, sql);
    ExecStatusType s = PQresultStatus(r);
    int rc = ST_OK;
    if (s == PGRES_TUPLES_OK && out != NULL && PQntuples(r) > 0 && !PQgetisnull(r, 0, 0))
        *out = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    else if (s != PGRES_TUPLES_OK && s != PGRES_COMMAND_OK)
        rc = pg_error(c, r, "exec_for_test");
    PQclear(r);
    return rc;
}

/* ---- users and API keys ---- */

static int pg_user_add(storage *st, st_user *u)
{
    struct pg_params p = {0};
    p_text(&p, u->email);
    p_text(&p, u->managed_apple_id);
    p_text(&p, u->password_hash);
    p_text(&p, u->idp_subject);
    p_int(&p, u->created_at);
    p_int(&p, u->disabled ? 1 : 0);
    PGresult *r;
    int rc = pg_row(conn_get(st), PG_USER_ADD, &p, "user_add", &r);
    if (rc == ST_OK)
        u->id = col_int(r, 0, 0);
    PQclear(r);
    return rc;
}

static int pg_user_get_one(storage *st, enum pg_stmt_id id, const struct pg_params *p, st_user *out)
{
    PGresult *r;
    int rc = pg_row(conn_get(st), id, p, "user_get", &r);
    if (rc == ST_OK)
        read_user(r, 0, out);
    PQclear(r);
    return rc;
}

static int pg_user_get_by_email(storage *st, const char *email, st_user *out)
{
    struct pg_params p = {0};
    p_text(&p, email);
    return pg_user_get_one(st, PG_USER_GET_BY_EMAIL, &p, out);
}

static int pg_user_get(storage *st, int64_t id, st_user *out)
{
    struct pg_params p = {0};
    p_int(&p, id);
    return pg_user_get_one(st, PG_USER_GET, &p, out);
}

static int pg_user_set_password(storage *st, int64_t id, const char *password_hash)
{
    struct pg_params p = {0};
    p_int(&p, id);
    p_text(&p, password_hash);
    return pg_run(conn_get(st), PG_USER_SET_PASSWORD, &p, "user_set_password", 1, NULL);
}

/*
 * The list functions read PG_LIST_CHUNK rows (keyset pagination) and call fn on each while
 * holding only the client-side result: fn may call back into storage on this thread's
 * connection, and no server-side cursor or snapshot stays open while it runs. Each chunk is its
 * own snapshot, so a listing racing with writes sees each row at most once but not one
 * consistent instant (as in sqlite.c).
 */
static int pg_user_list(storage *st, int (*fn)(const st_user *u, void *ctx), void *ctx)
{
    int64_t cursor = 0;
    int ret = ST_OK;
    for (;;) {
        struct pg_params p = {0};
        p_int(&p, cursor);
        p_int(&p, PG_LIST_CHUNK);
        PGresult *r;
        ret = pg_exec(conn_get(st), PG_USER_LIST, &p, "user_list", &r);
        if (ret != ST_OK)
            break;
        int n = PQntuples(r);
        for (int i = 0; i < n && ret == ST_OK; i++) {
            st_user u = {0};
            read_user(r, i, &u);
            cursor = u.id;
            ret = fn(&u, ctx);
            st_user_cleanup(&u);
        }
        PQclear(r);
        if (ret != ST_OK || n < PG_LIST_CHUNK)
            break;
    }
    return ret;
}

static int pg_apikey_add(storage *st, const char *name, const char *key_hash, int64_t now,
                         int64_t *id)
{
    struct pg_params p = {0};
    p_text(&p, name);
    p_text(&p, key_hash);
    p_int(&p, now);
    PGresult *r;
    int rc = pg_row(conn_get(st), PG_APIKEY_ADD, &p, "apikey_add", &r);
    if (rc == ST_OK)
        *id = col_int(r, 0, 0);
    PQclear(r);
    return rc;
}

static int pg_apikey_find(storage *st, const char *key_hash, int64_t *id, char **name)
{
    struct pg_params p = {0};
    p_text(&p, key_hash);
    PGresult *r;
    int rc = pg_row(conn_get(st), PG_APIKEY_FIND, &p, "apikey_find", &r);
    if (rc == ST_OK) {
        *id = col_int(r, 0, 0);
        if (name != NULL)
            *name = col_text(r, 0, 1);
    }
    PQclear(r);
    return rc;
}

/* ---- sessions ---- */

static int pg_session_add(storage *st, const st_session *x)
{
    struct pg_params p = {0};
    p_text(&p, x->token_hash);
    p_int(&p, x->user_id);
    p_text(&p, x->method);
    p_int(&p, x->issued_at);
    p_int(&p, x->expires_at);
    p_text(&p, x->enrollment_id);
    p_int(&p, x->revoked_at);
    p_text(&p, x->machine_info);
    return pg_run(conn_get(st), PG_SESSION_ADD, &p, "session_add", 0, NULL);
}

static int pg_session_get(storage *st, const char *token_hash, st_session *out)
{
    struct pg_params p = {0};
    p_text(&p, token_hash);
    PGresult *r;
    int rc = pg_row(conn_get(st), PG_SESSION_GET, &p, "session_get", &r);
    if (rc == ST_OK)
        read_session(r, 0, out);
    PQclear(r);
    return rc;
}

static int pg_session_bind(storage *st, const char *token_hash, const char *enrollment_id)
{
    struct pg_conn *c = conn_get(st);
    struct pg_params p = {0};
    p_text(&p, token_hash);
    p_text(&p, enrollment_id);
    int rc = pg_run(c, PG_SESSION_BIND, &p, "session_bind", 1, NULL);
    if (rc != ST_ENOTFOUND)
        return rc;
    /* Nothing changed: either no such session, or it is bound to another enrollment. A
     * binding is never undone, so this second look cannot race into a wrong answer. */
    struct pg_params q = {0};
    p_text(&q, token_hash);
    PGresult *r;
    rc = pg_row(c, PG_SESSION_BOUND_TO, &q, "session_bind", &r);
    if (rc != ST_OK)
        return rc;
    rc = !PQgetisnull(r, 0, 0) && strcmp(PQgetvalue(r, 0, 0), enrollment_id) == 0 ? ST_OK
                                                                                  : ST_ECONFLICT;
    PQclear(r);
    return rc;
}

static int pg_session_set_machine_info(storage *st, const char *token_hash, const char *plist)
{
    struct pg_params p = {0};
    p_text(&p, token_hash);
    p_text(&p, plist);
    return pg_run(conn_get(st), PG_SESSION_SET_MACHINE_INFO, &p, "session_set_machine_info", 1,
                  NULL);
}

static int pg_session_revoke_enrollment(storage *st, const char *enrollment_id, int64_t now)
{
    struct pg_params p = {0};
    p_text(&p, enrollment_id);
    p_int(&p, now);
    return pg_run(conn_get(st), PG_SESSION_REVOKE_ENROLLMENT, &p, "session_revoke_enrollment", 0,
                  NULL);
}

static int pg_session_revoke(storage *st, const char *token_hash, int64_t now)
{
    struct pg_conn *c = conn_get(st);
    struct pg_params p = {0};
    p_text(&p, token_hash);
    p_int(&p, now);
    int rc = pg_run(c, PG_SESSION_REVOKE, &p, "session_revoke", 1, NULL);
    if (rc != ST_ENOTFOUND)
        return rc;
    /* Already revoked is success (the first revocation time is kept); unknown is not. */
    struct pg_params q = {0};
    p_text(&q, token_hash);
    PGresult *r;
    rc = pg_row(c, PG_SESSION_BOUND_TO, &q, "session_revoke", &r);
    PQclear(r);
    return rc;
}

/* ---- SCEP challenges and certificates ---- */

static int pg_challenge_add(storage *st, const char *challenge_hash, int64_t user_id,
                            const char *session_hash, int64_t expires_at)
{
    struct pg_params p = {0};
    p_text(&p, challenge_hash);
    p_ref(&p, user_id);
    p_text(&p, session_hash);
    p_int(&p, expires_at);
    return pg_run(conn_get(st), PG_CHALLENGE_ADD, &p, "challenge_add", 0, NULL);
}

/* Consumes a challenge; enrollment_id (may be NULL) receives the enrollment it renews. */
static int pg_challenge_take(storage *st, const char *challenge_hash, int64_t now, int64_t *user_id,
                             char **session_hash, char **enrollment_id)
{
    static const char op[] = "challenge_consume";
    struct pg_conn *c = conn_get(st);
    struct pg_params p = {0};
    p_text(&p, challenge_hash);
    p_int(&p, now);
    PGresult *r;
    int rc = pg_row(c, PG_CHALLENGE_CONSUME, &p, op, &r);
    if (rc == ST_OK) {
        *user_id = col_int(r, 0, 0);
        *session_hash = col_text(r, 0, 1);
        if (enrollment_id)
            *enrollment_id = col_text(r, 0, 2);
        PQclear(r);
        return ST_OK;
    }
    if (rc != ST_ENOTFOUND)
        return rc;
    /* Not consumed: unknown, expired, or used. A replay is a conflict even after expiry: it is
     * the more telling answer. */
    struct pg_params q = {0};
    p_text(&q, challenge_hash);
    rc = pg_row(c, PG_CHALLENGE_GET, &q, op, &r);
    if (rc == ST_OK)
        rc = col_int(r, 0, 0) ? ST_ECONFLICT : ST_ENOTFOUND;
    PQclear(r);
    return rc;
}

static int pg_challenge_consume(storage *st, const char *challenge_hash, int64_t now,
                                int64_t *user_id, char **session_hash)
{
    return pg_challenge_take(st, challenge_hash, now, user_id, session_hash, NULL);
}

static int pg_cert_add(storage *st, const st_cert *x)
{
    struct pg_params p = {0};
    p_text(&p, x->serial);
    p_text(&p, x->fingerprint);
    p_text(&p, x->subject);
    p_ref(&p, x->user_id);
    p_text(&p, x->session_hash);
    p_text(&p, x->enrollment_id);
    p_int(&p, x->not_after);
    p_int(&p, x->issued_at);
    p_int(&p, x->revoked_at);
    return pg_run(conn_get(st), PG_CERT_ADD, &p, "cert_add", 0, NULL);
}

static int pg_cert_get_by_fingerprint(storage *st, const char *fingerprint, st_cert *out)
{
    struct pg_params p = {0};
    p_text(&p, fingerprint);
    PGresult *r;
    int rc = pg_row(conn_get(st), PG_CERT_GET, &p, "cert_get", &r);
    if (rc == ST_OK)
        read_cert(r, 0, out);
    PQclear(r);
    return rc;
}

static int pg_cert_set_enrollment(storage *st, const char *fingerprint, const char *enrollment_id)
{
    struct pg_params p = {0};
    p_text(&p, fingerprint);
    p_text(&p, enrollment_id);
    return pg_run(conn_get(st), PG_CERT_SET_ENROLLMENT, &p, "cert_set_enrollment", 1, NULL);
}

static int pg_cert_revoke_enrollment(storage *st, const char *enrollment_id, int64_t now)
{
    struct pg_params p = {0};
    p_text(&p, enrollment_id);
    p_int(&p, now);
    return pg_run(conn_get(st), PG_CERT_REVOKE_ENROLLMENT, &p, "cert_revoke_enrollment", 0, NULL);
}

/* ---- enrollments ---- */

static int pg_enrollment_authenticate(storage *st, const st_enrollment *e)
{
    static const char op[] = "enrollment_authenticate";
    struct pg_conn *c = conn_get(st);
    int rc = pg_begin(c, op);
    if (rc != ST_OK)
        return rc;
    struct pg_params p = {0};
    p_text(&p, e->id);
    p_int(&p, e->type);
    p_text(&p, e->parent_id);
    p_ref(&p, e->user_id);
    p_text(&p, e->topic);
    p_text(&p, e->cert_fingerprint);
    p_text(&p, e->os_version);
    p_text(&p, e->build_version);
    p_text(&p, e->product_name);
    p_text(&p, e->device_name);
    p_text(&p, e->model);
    p_text(&p, e->auth_state);
    p_int(&p, e->auth_state_since);
    p_int(&p, e->last_auth_at);
    p_text(&p, e->last_auth_method);
    p_int(&p, e->enrolled_at);
    p_int(&p, e->last_seen_at);
    rc = pg_run(c, PG_ENR_UPSERT, &p, op, 0, NULL);
    if (rc != ST_OK)
        goto out;
    /* A (re-)Authenticate starts a new enrollment: nothing queued for the old one applies. */
    struct pg_params q = {0};
    p_text(&q, e->id);
    rc = pg_run(c, PG_QUEUE_CLEAR, &q, op, 0, NULL);
    if (rc != ST_OK)
        goto out;
    rc = pg_commit(c, op);
out:
    if (rc != ST_OK)
        pg_rollback(c);
    return rc;
}

static int pg_enrollment_get(storage *st, const char *id, st_enrollment *out)
{
    struct pg_params p = {0};
    p_text(&p, id);
    PGresult *r;
    int rc = pg_row(conn_get(st), PG_ENR_GET, &p, "enrollment_get", &r);
    if (rc == ST_OK)
        read_enrollment(r, 0, out);
    PQclear(r);
    return rc;
}

static int pg_enrollment_token_update(storage *st, const char *id, const char *push_token,
                                      const char *push_magic, int64_t now)
{
    struct pg_params p = {0};
    p_text(&p, id);
    p_text(&p, push_token);
    p_text(&p, push_magic);
    p_int(&p, now);
    return pg_run(conn_get(st), PG_ENR_TOKEN_UPDATE, &p, "enrollment_token_update", 1, NULL);
}

static int pg_enrollment_set_cert(storage *st, const char *id, const char *fingerprint)
{
    struct pg_params p = {0};
    p_text(&p, id);
    p_text(&p, fingerprint);
    return pg_run(conn_get(st), PG_ENR_SET_CERT, &p, "enrollment_set_cert", 1, NULL);
}

static int pg_enrollment_set_auth_state(storage *st, const char *id, const char *state,
                                        int64_t since)
{
    struct pg_params p = {0};
    p_text(&p, id);
    p_text(&p, state);
    p_int(&p, since);
    return pg_run(conn_get(st), PG_ENR_SET_AUTH_STATE, &p, "enrollment_set_auth_state", 1, NULL);
}

static int pg_enrollment_transition_auth_state(storage *st, const char *id, const char *from,
                                               const char *to, int64_t since)
{
    struct pg_params p = {0};
    p_text(&p, id);
    p_text(&p, from);
    p_text(&p, to);
    p_int(&p, since);
    int rc = pg_run(conn_get(st), PG_ENR_TRANSITION_AUTH_STATE, &p,
                    "enrollment_transition_auth_state", 1, NULL);
    return rc == ST_ENOTFOUND ? ST_ECONFLICT : rc;
}

static int pg_enrollment_set_last_auth(storage *st, const char *id, int64_t at, const char *method)
{
    struct pg_params p = {0};
    p_text(&p, id);
    p_int(&p, at);
    p_text(&p, method);
    return pg_run(conn_get(st), PG_ENR_SET_LAST_AUTH, &p, "enrollment_set_last_auth", 1, NULL);
}

static int pg_enrollment_set_push_dead(storage *st, const char *id, int dead)
{
    struct pg_params p = {0};
    p_text(&p, id);
    p_int(&p, dead);
    return pg_run(conn_get(st), PG_ENR_SET_PUSH_DEAD, &p, "enrollment_set_push_dead", 1, NULL);
}

static int pg_enrollment_unenroll(storage *st, const char *id, int64_t now)
{
    static const char op[] = "enrollment_unenroll";
    struct pg_conn *c = conn_get(st);
    int rc = pg_begin(c, op);
    if (rc != ST_OK)
        return rc;
    struct pg_params p = {0};
    p_text(&p, id);
    p_int(&p, now);
    rc = pg_run(c, PG_ENR_UNENROLL, &p, op, 1, NULL);
    if (rc != ST_OK)
        goto out;
    struct pg_params q = {0};
    p_text(&q, id);
    rc = pg_run(c, PG_QUEUE_CLEAR, &q, op, 0, NULL);
    if (rc != ST_OK)
        goto out;
    rc = pg_commit(c, op);
out:
    if (rc != ST_OK)
        pg_rollback(c);
    return rc;
}

static int pg_enrollment_touch(storage *st, const char *id, int64_t now)
{
    struct pg_params p = {0};
    p_text(&p, id);
    p_int(&p, now);
    return pg_run(conn_get(st), PG_ENR_TOUCH, &p, "enrollment_touch", 1, NULL);
}

static int pg_enrollment_list(storage *st, const st_enrollment_filter *f,
                              int (*fn)(const st_enrollment *e, void *ctx), void *ctx)
{
    /* Ids are non-empty, so "" sorts before all of them. */
    char *cursor = xstrdup(f->after_id != NULL ? f->after_id : "");
    int64_t left = f->limit > 0 ? f->limit : INT64_MAX;
    int ret = ST_OK;
    while (left > 0) {
        int want = left < PG_LIST_CHUNK ? (int)left : PG_LIST_CHUNK;
        struct pg_params p = {0};
        p_text(&p, cursor);
        p_int(&p, f->include_unenrolled ? 1 : 0);
        p_int(&p, want);
        if (f->user_id)
            p_int(&p, f->user_id);
        PGresult *r;
        ret = pg_exec(conn_get(st), f->user_id ? PG_ENR_LIST_USER : PG_ENR_LIST, &p,
                      "enrollment_list", &r);
        if (ret != ST_OK)
            break;
        int n = PQntuples(r);
        for (int i = 0; i < n && ret == ST_OK; i++) {
            st_enrollment e = {0};
            read_enrollment(r, i, &e);
            free(cursor);
            cursor = xstrdup(e.id);
            ret = fn(&e, ctx);
            st_enrollment_cleanup(&e);
        }
        PQclear(r);
        left -= n;
        if (ret != ST_OK || n < want)
            break;
    }
    free(cursor);
    return ret;
}

/* ---- command queue ---- */

static int pg_queue_enqueue(storage *st, const st_command *x)
{
    static const char op[] = "queue_enqueue";
    struct pg_conn *c = conn_get(st);
    int rc = pg_begin(c, op);
    if (rc != ST_OK)
        return rc;
    struct pg_params p = {0};
    p_text(&p, x->uuid);
    p_text(&p, x->enrollment_id);
    p_text(&p, x->request_type);
    p_blob(&p, x->body, x->body_len);
    p_int(&p, x->priority);
    p_int(&p, x->sensitive ? 1 : 0);
    p_int(&p, x->created_at);
    /* Unknown enrollment: the foreign key fails (ST_ENOTFOUND); a pending uuid: the unique key
     * (ST_EEXISTS). No row and no error: the NOT EXISTS found the uuid in history. */
    int64_t n = 0;
    rc = pg_run(c, PG_CMD_ENQUEUE, &p, op, 0, &n);
    if (rc == ST_OK && n == 0)
        rc = ST_EEXISTS;
    if (rc != ST_OK)
        goto out;
    /* The second look, in a new snapshot: if the INSERT waited for a report moving a command
     * with this uuid to history, that command is visible now. */
    struct pg_params q = {0};
    p_text(&q, x->uuid);
    PGresult *r;
    rc = pg_row(c, PG_CMD_IN_HISTORY, &q, op, &r);
    PQclear(r);
    if (rc == ST_OK)
        rc = ST_EEXISTS;
    else if (rc == ST_ENOTFOUND)
        rc = pg_commit(c, op);
out:
    if (rc != ST_OK)
        pg_rollback(c);
    return rc;
}

static int pg_queue_next(storage *st, const char *enrollment_id, int include_notnow, int64_t now,
                         st_command *out)
{
    struct pg_params p = {0};
    p_text(&p, enrollment_id);
    p_int(&p, include_notnow);
    p_int(&p, now);
    PGresult *r;
    int rc = pg_row(conn_get(st), PG_CMD_NEXT, &p, "queue_next", &r);
    if (rc == ST_OK)
        read_command(r, 0, out);
    PQclear(r);
    return rc;
}

static int pg_queue_report(storage *st, const char *enrollment_id, const char *uuid, int status,
                           const char *result, size_t result_len, int64_t now)
{
    static const char op[] = "queue_report";
    struct pg_params p = {0};
    p_text(&p, uuid);
    p_text(&p, enrollment_id);
    if (status == ST_CMD_NOTNOW) {
        /* NotNow keeps the command pending; the device does not keep it (section 9.3). */
        return pg_run(conn_get(st), PG_CMD_MARK_NOTNOW, &p, op, 1, NULL);
    }
    p_int(&p, status);
    p_int(&p, now);
    p_blob(&p, result, result_len);
    return pg_run(conn_get(st), PG_CMD_REPORT, &p, op, 1, NULL);
}

static int pg_command_get(storage *st, const char *uuid, st_command *out)
{
    struct pg_params p = {0};
    p_text(&p, uuid);
    PGresult *r;
    int rc = pg_row(conn_get(st), PG_CMD_GET, &p, "command_get", &r);
    if (rc == ST_OK)
        read_command(r, 0, out);
    PQclear(r);
    return rc;
}

static int pg_command_list(storage *st, const char *enrollment_id, int limit,
                           int (*fn)(const st_command *c, void *ctx), void *ctx)
{
    int64_t part = 0, seq = INT64_MAX;
    int64_t left = limit > 0 ? limit : INT64_MAX;
    int ret = ST_OK;
    while (left > 0) {
        int want = left < PG_LIST_CHUNK ? (int)left : PG_LIST_CHUNK;
        struct pg_params p = {0};
        p_text(&p, enrollment_id);
        p_int(&p, part);
        p_int(&p, seq);
        p_int(&p, want);
        PGresult *r;
        ret = pg_exec(conn_get(st), PG_CMD_LIST, &p, "command_list", &r);
        if (ret != ST_OK)
            break;
        int n = PQntuples(r);
        for (int i = 0; i < n && ret == ST_OK; i++) {
            st_command cmd = {0};
            seq = read_command(r, i, &cmd);
            part = col_int(r, i, 12);
            ret = fn(&cmd, ctx);
            st_command_cleanup(&cmd);
        }
        PQclear(r);
        left -= n;
        if (ret != ST_OK || n < want)
            break;
    }
    return ret;
}

static int pg_queue_clear(storage *st, const char *enrollment_id)
{
    struct pg_params p = {0};
    p_text(&p, enrollment_id);
    return pg_run(conn_get(st), PG_QUEUE_CLEAR, &p, "queue_clear", 0, NULL);
}

static int pg_queue_count(storage *st, const char *enrollment_id, int64_t *count)
{
    struct pg_params p = {0};
    p_text(&p, enrollment_id);
    PGresult *r;
    int rc = pg_row(conn_get(st), PG_QUEUE_COUNT, &p, "queue_count", &r);
    if (rc == ST_OK)
        *count = col_int(r, 0, 0);
    PQclear(r);
    return rc == ST_ENOTFOUND ? ST_ERROR : rc;
}

static int pg_history_prune(storage *st, int64_t before, int64_t *deleted)
{
    struct pg_params p = {0};
    p_int(&p, before);
    return pg_run(conn_get(st), PG_HISTORY_PRUNE, &p, "history_prune", 0, deleted);
}

/* ---- audit ---- */

static int pg_audit_add(storage *st, const st_audit *a)
{
    struct pg_params p = {0};
    p_int(&p, a->at);
    p_text(&p, a->actor);
    p_text(&p, a->action);
    p_text(&p, a->target);
    p_text(&p, a->detail);
    return pg_run(conn_get(st), PG_AUDIT_ADD, &p, "audit_add", 0, NULL);
}

static int pg_audit_count(storage *st, const char *action, const char *target, int64_t since,
                          int64_t *count)
{
    struct pg_params p = {0};
    p_text(&p, action);
    p_text(&p, target);
    p_int(&p, since);
    PGresult *r;
    int rc = pg_row(conn_get(st), PG_AUDIT_COUNT, &p, "audit_count", &r);
    if (rc == ST_OK)
        *count = col_int(r, 0, 0);
    PQclear(r);
    return rc == ST_ENOTFOUND ? ST_ERROR : rc;
}

static int pg_audit_list(storage *st, int64_t before_id, int limit,
                         int (*fn)(const st_audit *a, void *ctx), void *ctx)
{
    int64_t cursor = before_id > 0 ? before_id : INT64_MAX;
    int64_t left = limit > 0 ? limit : INT64_MAX;
    int ret = ST_OK;
    while (left > 0) {
        int want = left < PG_LIST_CHUNK ? (int)left : PG_LIST_CHUNK;
        struct pg_params p = {0};
        p_int(&p, cursor);
        p_int(&p, want);
        PGresult *r;
        ret = pg_exec(conn_get(st), PG_AUDIT_LIST, &p, "audit_list", &r);
        if (ret != ST_OK)
            break;
        int n = PQntuples(r);
        for (int i = 0; i < n && ret == ST_OK; i++) {
            st_audit a = {0};
            read_audit(r, i, &a);
            cursor = a.id;
            ret = fn(&a, ctx);
            st_audit_cleanup(&a);
        }
        PQclear(r);
        left -= n;
        if (ret != ST_OK || n < want)
            break;
    }
    return ret;
}

/* ---- push outbox ---- */

static int pg_push_enqueue(storage *st, const char *enrollment_id, int64_t now)
{
    static const char op[] = "push_enqueue";
    struct pg_conn *c = conn_get(st);
    struct pg_params p = {0};
    p_text(&p, enrollment_id);
    p_int(&p, now);
    int64_t n = 0;
    int rc = pg_run(c, PG_PUSH_ENQUEUE, &p, op, 0, &n);
    if (rc != ST_OK || n > 0)
        return rc;
    /* No row: unknown, or not pushable. */
    struct pg_params q = {0};
    p_text(&q, enrollment_id);
    PGresult *r;
    rc = pg_row(c, PG_PUSH_ENR_EXISTS, &q, op, &r);
    PQclear(r);
    return rc == ST_OK ? ST_ECONFLICT : rc;
}

/* Adds a bulk push's scope and value (PG_BULK_SCOPE) to p. */
static void p_scope(struct pg_params *p, int scope, const char *value)
{
    p_int(p, scope);
    p_text(p, scope == ST_PUSH_ALL || value == NULL ? "" : value);
}

/* The matching pushable enrollments after `after`; only those without an outbox row if
 * `unqueued`. */
static int pg_bulk_count(struct pg_conn *c, const char *after, int scope, const char *value,
                         int unqueued, int64_t *count)
{
    struct pg_params p = {0};
    p_text(&p, after);
    p_scope(&p, scope, value);
    p_int(&p, unqueued);
    PGresult *r;
    int rc = pg_row(c, scope == ST_PUSH_USER ? PG_PUSH_BULK_COUNT_USER : PG_PUSH_BULK_COUNT, &p,
                    "push_bulk_count", &r);
    if (rc == ST_OK)
        *count = col_int(r, 0, 0);
    PQclear(r);
    return rc == ST_ENOTFOUND ? ST_ERROR : rc;
}

/* Records the bulk push unless an identical one is waiting to start (a push to all replaces
 * every waiting one). */
static int pg_bulk_add(struct pg_conn *c, int scope, const char *value, int64_t now)
{
    static const char op[] = "push_enqueue_filter";
    int rc;
    if (scope == ST_PUSH_ALL) {
        rc = pg_run(c, PG_PUSH_BULK_SUPERSEDE, &pg_noparams, op, 0, NULL);
    } else {
        struct pg_params q = {0};
        p_scope(&q, scope, value);
        PGresult *r;
        rc = pg_row(c, PG_PUSH_BULK_SAME, &q, op, &r);
        PQclear(r);
        if (rc == ST_OK)
            return ST_OK;
    }
    if (rc != ST_OK && rc != ST_ENOTFOUND)
        return rc;
    struct pg_params p = {0};
    p_scope(&p, scope, value);
    p_int(&p, now);
    return pg_run(c, PG_PUSH_BULK_ADD, &p, op, 0, NULL);
}

static int pg_push_enqueue_filter(storage *st, int scope, const char *value, int64_t now,
                                  int64_t *queued)
{
    static const char op[] = "push_enqueue_filter";
    struct pg_conn *c = conn_get(st);
    int rc = pg_begin(c, op);
    if (rc == ST_OK)
        rc = pg_bulk_count(c, "", scope, value, 0, queued);
    if (rc == ST_OK && *queued > 0) {
        struct pg_params p = {0};
        p_int(&p, now);
        p_scope(&p, scope, value);
        rc = pg_run(c, PG_PUSH_BULK_REFRESH, &p, op, 0, NULL);
        if (rc == ST_OK)
            rc = pg_bulk_add(c, scope, value, now);
    }
    if (rc == ST_OK)
        rc = pg_commit(c, op);
    if (rc != ST_OK && c != NULL)
        pg_rollback(c);
    return rc;
}

static int pg_push_sweep(storage *st, int64_t before, int64_t now, int64_t *queued)
{
    struct pg_params p = {0};
    p_int(&p, before);
    p_int(&p, now);
    return pg_run(conn_get(st), PG_PUSH_SWEEP, &p, "push_sweep", 0, queued);
}

/*
 * Claims the next page of the first bulk push owner may work on that has rows left, in one
 * transaction, and leases the bulk push up to its last row (see sqlite.c's
 * sq_push_claim_bulk). *page holds the rows (NULL if none; PQclear it), *bulk its id.
 */
static int pg_push_claim_bulk(struct pg_conn *c, const char *owner, int64_t now, int lease,
                              int limit, PGresult **page, int64_t *bulk)
{
    static const char op[] = "push_claim";
    *page = NULL;
    PGresult *list = NULL;
    int rc = pg_begin(c, op);
    if (rc == ST_OK) {
        struct pg_params p = {0};
        p_int(&p, now);
        p_text(&p, owner);
        rc = pg_exec(c, PG_PUSH_BULK_LIST, &p, op, &list);
    }
    for (int i = 0; rc == ST_OK && i < PQntuples(list); i++) {
        int64_t id = col_int(list, i, 0);
        const char *done_to = PQgetvalue(list, i, 3);
        const char *after = col_int(list, i, 5) ? PQgetvalue(list, i, 4) : done_to;
        struct pg_params p = {0};
        p_text(&p, after);
        int scope = (int)col_int(list, i, 1);
        p_scope(&p, scope, PQgetvalue(list, i, 2));
        p_int(&p, limit);
        rc = pg_exec(c, scope == ST_PUSH_USER ? PG_PUSH_BULK_PAGE_USER : PG_PUSH_BULK_PAGE, &p, op,
                     page);
        if (rc != ST_OK)
            break;
        int n = PQntuples(*page);
        struct pg_params q = {0};
        p_int(&q, id);
        if (n > 0) {
            p_text(&q, owner);
            p_int(&q, now + lease);
            p_text(&q, PQgetvalue(*page, n - 1, 0));
            rc = pg_run(c, PG_PUSH_BULK_LEASE, &q, op, 0, NULL);
            *bulk = id;
            break;
        }
        PQclear(*page);
        *page = NULL;
        if (strcmp(after, done_to) == 0)
            rc = pg_run(c, PG_PUSH_BULK_FINISH, &q, op, 0, NULL);
    }
    PQclear(list);
    if (rc == ST_OK)
        rc = pg_commit(c, op);
    if (rc != ST_OK) {
        if (c != NULL)
            pg_rollback(c);
        PQclear(*page);
        *page = NULL;
    }
    return rc;
}

/*
 * One statement leases up to `limit` due outbox rows and returns them with their targets (see
 * PG_PUSH_CLAIM); the rows that can no longer be pushed are then deleted in one more, and a
 * bulk push fills the rest of the batch. fn runs after all of it, with no statement open.
 */
static int pg_push_claim(storage *st, const char *owner, int64_t now, int lease, int limit,
                         int (*fn)(const st_push *p, void *ctx), void *ctx, int *claimed)
{
    static const char op[] = "push_claim";
    struct pg_conn *c = conn_get(st);
    struct pg_params q = {0};
    p_text(&q, owner);
    p_int(&q, now);
    p_int(&q, now + lease);
    p_int(&q, limit);
    PGresult *r;
    int rc = pg_exec(c, PG_PUSH_CLAIM, &q, op, &r);
    if (rc != ST_OK)
        return rc;
    int n = PQntuples(r), pushable = 0;
    buf dropped;
    buf_init(&dropped, 0);
    size_t ndropped = 0;
    for (int i = 0; i < n; i++) {
        if (col_int(r, i, 5)) {
            pushable++;
            continue;
        }
        buf_append(&dropped, ndropped++ == 0 ? "[" : ",", 1);
        st_json_string(&dropped, PQgetvalue(r, i, 0));
    }
    if (ndropped > 0) {
        buf_append(&dropped, "]", 1);
        struct pg_params d = {0};
        p_text(&d, dropped.data);
        p_text(&d, owner);
        rc = pg_run(c, PG_PUSH_DEL_OWNED, &d, op, 0, NULL);
    }
    buf_cleanup(&dropped);
    PGresult *page = NULL;
    int64_t bulk = 0;
    if (rc == ST_OK && pushable < limit)
        rc = pg_push_claim_bulk(c, owner, now, lease, limit - pushable, &page, &bulk);
    int stop = 0;
    for (int i = 0; i < n && rc == ST_OK && !stop; i++) {
        if (!col_int(r, i, 5))
            continue;
        st_push x = {PQgetvalue(r, i, 0), PQgetvalue(r, i, 2),   col_str(r, i, 3),
                     col_str(r, i, 4),    (int)col_int(r, i, 1), 0};
        (*claimed)++;
        stop = fn(&x, ctx) != 0;
    }
    int i = 0, np = page != NULL ? PQntuples(page) : 0;
    while (i < np && rc == ST_OK && !stop) {
        st_push x = {PQgetvalue(page, i, 0),
                     col_str(page, i, 1),
                     col_str(page, i, 2),
                     col_str(page, i, 3),
                     0,
                     bulk};
        i++;
        (*claimed)++;
        stop = fn(&x, ctx) != 0;
    }
    /* Bulk rows fn never saw must not be passed over (see sqlite.c). */
    if (rc == ST_OK && i < np) {
        struct pg_params w = {0};
        p_int(&w, bulk);
        p_text(&w, owner);
        rc = pg_run(c, PG_PUSH_BULK_REWIND, &w, op, 0, NULL);
    }
    PQclear(page);
    PQclear(r);
    return rc;
}

/* Applies one run of outcomes of distinct enrollments: one statement per kind of outcome. */
static int pg_push_done_run(struct pg_conn *c, const char *owner, int64_t now,
                            const st_push_sets *x)
{
    static const char op[] = "push_done";
    int rc = ST_OK;
    if (x->nsent > 0) {
        struct pg_params p = {0};
        p_text(&p, x->sent.data);
        p_text(&p, owner);
        int64_t deleted = 0;
        rc = pg_run(c, PG_PUSH_DEL_SENT, &p, op, 0, &deleted);
        /* Rows enqueued again while in flight (again = 1) are due again now; usually every
         * row was deleted and there is nothing to look for. */
        if (rc == ST_OK && deleted < (int64_t)x->nsent) {
            p_int(&p, now);
            rc = pg_run(c, PG_PUSH_REARM, &p, op, 0, NULL);
        }
        if (rc == ST_OK) {
            struct pg_params m = {0};
            p_text(&m, x->sent.data);
            p_int(&m, now);
            rc = pg_run(c, PG_PUSH_MARK_PUSHED, &m, op, 0, NULL);
        }
    }
    if (rc == ST_OK && x->nretry > 0) {
        struct pg_params p = {0};
        p_text(&p, x->retry.data);
        p_text(&p, owner);
        rc = pg_run(c, PG_PUSH_RELEASE, &p, op, 0, NULL);
    }
    if (rc == ST_OK && x->ndead > 0) {
        struct pg_params p = {0};
        p_text(&p, x->dead.data);
        rc = pg_run(c, PG_PUSH_MARK_DEAD, &p, op, 0, NULL);
    }
    if (rc == ST_OK && x->ndel > 0) {
        struct pg_params p = {0};
        p_text(&p, x->del.data);
        p_text(&p, owner);
        rc = pg_run(c, PG_PUSH_DEL_OWNED, &p, op, 0, NULL);
    }
    return rc;
}

/* Applies one run of a bulk push's outcomes (see sqlite.c's sq_push_done_bulk). */
static int pg_push_done_bulk(struct pg_conn *c, const char *owner, int64_t now,
                             const st_push_sets *x)
{
    static const char op[] = "push_done";
    int rc = ST_OK;
    if (x->nsent > 0) {
        struct pg_params p = {0};
        p_text(&p, x->sent.data);
        p_int(&p, now);
        rc = pg_run(c, PG_PUSH_MARK_PUSHED, &p, op, 0, NULL);
    }
    if (rc == ST_OK && x->nretry > 0) {
        struct pg_params p = {0};
        p_text(&p, x->retry.data);
        p_int(&p, now);
        rc = pg_run(c, PG_PUSH_BULK_RETRY, &p, op, 0, NULL);
    }
    if (rc == ST_OK && x->ndead > 0) {
        struct pg_params p = {0};
        p_text(&p, x->dead.data);
        rc = pg_run(c, PG_PUSH_MARK_DEAD, &p, op, 0, NULL);
    }
    if (rc == ST_OK && x->last != NULL) {
        struct pg_params p = {0};
        p_int(&p, x->bulk);
        p_text(&p, owner);
        p_text(&p, x->last);
        rc = pg_run(c, PG_PUSH_BULK_ADVANCE, &p, op, 0, NULL);
    }
    if (rc == ST_OK && x->unsent) {
        struct pg_params p = {0};
        p_int(&p, x->bulk);
        p_text(&p, owner);
        rc = pg_run(c, PG_PUSH_BULK_REWIND, &p, op, 0, NULL);
    }
    return rc;
}

static int pg_push_done(storage *st, const char *owner, int64_t now, const st_push_result *r,
                        size_t n)
{
    static const char op[] = "push_done";
    struct pg_conn *c = conn_get(st);
    st_push_sets x;
    st_push_sets_init(&x);
    int rc = pg_begin(c, op);
    for (size_t i = 0, run; i < n && rc == ST_OK; i += run) {
        run = st_push_sets_fill(&x, r + i, n - i, now);
        rc = x.bulk != 0 ? pg_push_done_bulk(c, owner, now, &x)
                         : pg_push_done_run(c, owner, now, &x);
    }
    if (rc == ST_OK)
        rc = pg_commit(c, op);
    if (rc != ST_OK && c != NULL)
        pg_rollback(c);
    st_push_sets_cleanup(&x);
    return rc;
}

/* Outbox rows, plus for each bulk push the matching devices after its progress that have no
 * outbox row. */
static int pg_push_pending(storage *st, int64_t *count)
{
    static const char op[] = "push_pending";
    struct pg_conn *c = conn_get(st);
    PGresult *r;
    int rc = pg_row(c, PG_PUSH_PENDING, &pg_noparams, op, &r);
    if (rc == ST_OK)
        *count = col_int(r, 0, 0);
    PQclear(r);
    if (rc != ST_OK)
        return rc == ST_ENOTFOUND ? ST_ERROR : rc;
    rc = pg_exec(c, PG_PUSH_BULK_ALL, &pg_noparams, op, &r);
    for (int i = 0; rc == ST_OK && i < PQntuples(r); i++) {
        int64_t left = 0;
        rc = pg_bulk_count(c, PQgetvalue(r, i, 2), (int)col_int(r, i, 0), PQgetvalue(r, i, 1), 1,
                           &left);
        *count += left;
    }
    PQclear(r);
    return rc;
}

/* ---- sign-in failure counters ---- */

static int pg_failure_read(storage *st, enum pg_stmt_id id, const char *key, int64_t window_start,
                           int64_t *count)
{
    struct pg_params p = {0};
    p_text(&p, key);
    p_int(&p, window_start);
    PGresult *r;
    int rc =
        pg_row(conn_get(st), id, &p, id == PG_FAILURE_ADD ? "failure_add" : "failure_count", &r);
    if (rc == ST_OK)
        *count = col_int(r, 0, 0);
    PQclear(r);
    return rc == ST_ENOTFOUND ? ST_OK : rc;
}

static int pg_failure_add(storage *st, const char *key, int64_t window_start, int64_t *count)
{
    return pg_failure_read(st, PG_FAILURE_ADD, key, window_start, count);
}

static int pg_failure_count(storage *st, const char *key, int64_t window_start, int64_t *count)
{
    return pg_failure_read(st, PG_FAILURE_COUNT, key, window_start, count);
}

static int pg_failure_prune(storage *st, int64_t before, int64_t *deleted)
{
    struct pg_params p = {0};
    p_int(&p, before);
    return pg_run(conn_get(st), PG_FAILURE_PRUNE, &p, "failure_prune", 0, deleted);
}

/* ---- retention and server secrets ---- */

static int pg_audit_prune(storage *st, int64_t before, int limit, int64_t *deleted)
{
    struct pg_params p = {0};
    p_int(&p, before);
    p_int(&p, limit);
    return pg_run(conn_get(st), PG_AUDIT_PRUNE, &p, "audit_prune", 0, deleted);
}

static int pg_challenge_prune(storage *st, int64_t before, int64_t *deleted)
{
    struct pg_params p = {0};
    p_int(&p, before);
    return pg_run(conn_get(st), PG_CHALLENGE_PRUNE, &p, "challenge_prune", 0, deleted);
}

static int pg_session_prune_unbound(storage *st, int64_t before, int64_t *deleted)
{
    struct pg_params p = {0};
    p_int(&p, before);
    return pg_run(conn_get(st), PG_SESSION_PRUNE_UNBOUND, &p, "session_prune_unbound", 0, deleted);
}

/* Insert-if-absent, then read: concurrent first starts of two instances read the same value
 * (ON CONFLICT DO NOTHING waits for the other insert to commit or roll back). */
static int pg_secret_get_or_add(storage *st, const char *name, const char *candidate, int64_t now,
                                char **value)
{
    static const char op[] = "secret_get_or_add";
    struct pg_conn *c = conn_get(st);
    struct pg_params p = {0};
    p_text(&p, name);
    p_text(&p, candidate);
    p_int(&p, now);
    int rc = pg_run(c, PG_SECRET_ADD, &p, op, 0, NULL);
    if (rc != ST_OK)
        return rc;
    struct pg_params q = {0};
    p_text(&q, name);
    PGresult *r = NULL;
    rc = pg_row(c, PG_SECRET_GET, &q, op, &r);
    if (rc == ST_OK)
        *value = col_text(r, 0, 0);
    PQclear(r);
    if (rc == ST_ENOTFOUND || (rc == ST_OK && *value == NULL))
        return ST_ERROR;
    return rc;
}

/* ---- webhook events ---- */

static int pg_webhook_add(storage *st, const char *type, const char *data, int64_t now, int64_t *id)
{
    struct pg_params p = {0};
    p_text(&p, type);
    p_text(&p, data);
    p_int(&p, now);
    PGresult *r;
    int rc = pg_row(conn_get(st), PG_WEBHOOK_ADD, &p, "webhook_add", &r);
    if (rc == ST_OK)
        *id = col_int(r, 0, 0);
    PQclear(r);
    return rc == ST_ENOTFOUND ? ST_ERROR : rc;
}

static int pg_webhook_claim(storage *st, const char *owner, int64_t now, int lease, int limit,
                            int (*fn)(const st_webhook_event *e, void *ctx), void *ctx,
                            int *claimed)
{
    struct pg_params p = {0};
    p_text(&p, owner);
    p_int(&p, now);
    p_int(&p, now + lease);
    p_int(&p, limit);
    PGresult *r;
    int rc = pg_exec(conn_get(st), PG_WEBHOOK_CLAIM, &p, "webhook_claim", &r);
    if (rc != ST_OK)
        return rc;
    for (int i = 0; i < PQntuples(r); i++) {
        st_webhook_event e = {col_int(r, i, 0), PQgetvalue(r, i, 1), PQgetvalue(r, i, 2),
                              col_int(r, i, 3), (int)col_int(r, i, 4)};
        (*claimed)++;
        if (fn(&e, ctx) != 0)
            break;
    }
    PQclear(r);
    return ST_OK;
}

static int pg_webhook_done(storage *st, const char *owner, int64_t id, int outcome, int64_t due_at,
                           int attempts)
{
    struct pg_params p = {0};
    p_int(&p, id);
    p_text(&p, owner);
    if (outcome == ST_WEBHOOK_RETRY) {
        p_int(&p, due_at);
        p_int(&p, attempts);
    }
    return pg_run(conn_get(st), outcome == ST_WEBHOOK_RETRY ? PG_WEBHOOK_RETRY : PG_WEBHOOK_DELETE,
                  &p, "webhook_done", 1, NULL);
}

static int pg_webhook_pending(storage *st, int64_t *count)
{
    PGresult *r;
    int rc = pg_row(conn_get(st), PG_WEBHOOK_PENDING, &pg_noparams, "webhook_pending", &r);
    if (rc == ST_OK)
        *count = col_int(r, 0, 0);
    PQclear(r);
    return rc == ST_ENOTFOUND ? ST_ERROR : rc;
}

/* ---- organisation domains and federated sign-in ---- */

static void read_domain(const PGresult *r, int i, st_domain *d)
{
    d->name = col_text(r, i, 0);
    d->auth = col_text(r, i, 1);
    d->issuer = col_text(r, i, 2);
    d->client_id = col_text(r, i, 3);
    d->client_secret = col_text(r, i, 4);
    d->ca_file = col_text(r, i, 5);
    d->scopes = col_text(r, i, 6);
    d->user_claim = col_text(r, i, 7);
    d->maid_claim = col_text(r, i, 8);
    d->groups_claim = col_text(r, i, 9);
    d->allowed_groups = col_text(r, i, 10);
    d->jit_users = (int)col_int(r, i, 11);
    d->updated_at = col_int(r, i, 12);
}

static int pg_domain_put(storage *st, const st_domain *d)
{
    struct pg_params p = {0};
    p_text(&p, d->name);
    p_text(&p, d->auth);
    p_text(&p, d->issuer);
    p_text(&p, d->client_id);
    p_text(&p, d->client_secret);
    p_text(&p, d->ca_file);
    p_text(&p, d->scopes);
    p_text(&p, d->user_claim);
    p_text(&p, d->maid_claim);
    p_text(&p, d->groups_claim);
    p_text(&p, d->allowed_groups);
    p_int(&p, d->jit_users ? 1 : 0);
    p_int(&p, d->updated_at);
    return pg_run(conn_get(st), PG_DOMAIN_PUT, &p, "domain_put", 0, NULL);
}

static int pg_domain_get(storage *st, const char *name, st_domain *out)
{
    struct pg_params p = {0};
    p_text(&p, name);
    PGresult *r;
    int rc = pg_row(conn_get(st), PG_DOMAIN_GET, &p, "domain_get", &r);
    if (rc == ST_OK)
        read_domain(r, 0, out);
    PQclear(r);
    return rc;
}

/* Domains are few (the statement caps them): one query, then fn on each row. */
static int pg_domain_list(storage *st, int (*fn)(const st_domain *d, void *ctx), void *ctx)
{
    PGresult *r;
    int ret = pg_exec(conn_get(st), PG_DOMAIN_LIST, &pg_noparams, "domain_list", &r);
    int n = ret == ST_OK ? PQntuples(r) : 0;
    for (int i = 0; i < n && ret == ST_OK; i++) {
        st_domain d = {0};
        read_domain(r, i, &d);
        ret = fn(&d, ctx);
        st_domain_cleanup(&d);
    }
    PQclear(r);
    return ret;
}

static int pg_oidc_pending_add(storage *st, const st_oidc_pending *x, int64_t now)
{
    static const char op[] = "oidc_pending_add";
    struct pg_conn *c = conn_get(st);
    /* Expired sign-ins (abandoned at the IdP) go first; the index makes this cheap. */
    struct pg_params p = {0};
    p_int(&p, now);
    int rc = pg_run(c, PG_OIDC_PENDING_PRUNE, &p, op, 0, NULL);
    if (rc != ST_OK)
        return rc;
    struct pg_params q = {0};
    p_text(&q, x->state_hash);
    p_text(&q, x->domain);
    p_text(&q, x->identifier);
    p_text(&q, x->nonce);
    p_text(&q, x->code_verifier);
    p_int(&q, x->created_at);
    p_int(&q, x->expires_at);
    p_text(&q, x->reauth_ticket);
    return pg_run(c, PG_OIDC_PENDING_ADD, &q, op, 0, NULL);
}

static int pg_oidc_pending_take(storage *st, const char *state_hash, int64_t now,
                                st_oidc_pending *out)
{
    struct pg_params p = {0};
    p_text(&p, state_hash);
    PGresult *r;
    int rc = pg_row(conn_get(st), PG_OIDC_PENDING_TAKE, &p, "oidc_pending_take", &r);
    if (rc != ST_OK)
        return rc;
    /* Taken either way: an expired state is as used up as a used one. */
    if (col_int(r, 0, 6) <= now) {
        PQclear(r);
        return ST_ENOTFOUND;
    }
    out->state_hash = col_text(r, 0, 0);
    out->domain = col_text(r, 0, 1);
    out->identifier = col_text(r, 0, 2);
    out->nonce = col_text(r, 0, 3);
    out->code_verifier = col_text(r, 0, 4);
    out->created_at = col_int(r, 0, 5);
    out->expires_at = col_int(r, 0, 6);
    out->reauth_ticket = col_text(r, 0, 7);
    PQclear(r);
    return ST_OK;
}

static int pg_user_set_idp_subject(storage *st, int64_t id, const char *idp_subject)
{
    struct pg_params p = {0};
    p_int(&p, id);
    p_text(&p, idp_subject);
    return pg_run(conn_get(st), PG_USER_SET_IDP_SUBJECT, &p, "user_set_idp_subject", 1, NULL);
}

/* ---- library: profiles, apps, assignments, installed state ---- */

/* One row of any library list, and how a list reads, hands out and frees it. */
union pg_lib_row {
    st_profile profile;
    st_app app;
    st_assignment assignment;
    st_item_state state;
    char *enrollment_id;
};

struct pg_lib_list {
    int64_t (*read)(const PGresult *r, int i, union pg_lib_row *row); /* returns the row's id */
    int (*emit)(const struct pg_lib_list *l, const union pg_lib_row *row);
    void (*cleanup)(union pg_lib_row *row);
    union {
        int (*profile)(const st_profile *p, void *ctx);
        int (*app)(const st_app *a, void *ctx);
        int (*assignment)(const st_assignment *a, void *ctx);
        int (*state)(const st_item_state *s, void *ctx);
        int (*enrollment)(const char *enrollment_id, void *ctx);
    } fn;
    void *ctx;
};

static int64_t read_lib_profile(const PGresult *r, int i, union pg_lib_row *row)
{
    st_profile *p = &row->profile;
    p->id = col_int(r, i, 0);
    p->identifier = col_text(r, i, 1);
    p->name = col_text(r, i, 2);
    p->platforms = col_text(r, i, 3);
    p->body = col_blob(r, i, 4, &p->body_len);
    p->sensitive = (int)col_int(r, i, 5);
    p->sign = (int)col_int(r, i, 6);
    p->created_at = col_int(r, i, 7);
    p->version = col_int(r, i, 8);
    return p->id;
}

static int64_t read_lib_app(const PGresult *r, int i, union pg_lib_row *row)
{
    st_app *a = &row->app;
    a->id = col_int(r, i, 0);
    a->identifier = col_text(r, i, 1);
    a->itunes_store_id = col_int(r, i, 2);
    a->manifest_url = col_text(r, i, 3);
    a->spec = col_text(r, i, 4);
    a->sensitive = (int)col_int(r, i, 5);
    a->created_at = col_int(r, i, 6);
    a->version = col_int(r, i, 7);
    return a->id;
}

static int64_t read_lib_assignment(const PGresult *r, int i, union pg_lib_row *row)
{
    st_assignment *a = &row->assignment;
    a->id = col_int(r, i, 0);
    a->item_kind = (int)col_int(r, i, 1);
    a->item_id = col_int(r, i, 2);
    a->target_type = (int)col_int(r, i, 3);
    a->target = col_text(r, i, 4);
    a->created_at = col_int(r, i, 5);
    return a->id;
}

static int64_t read_lib_state(const PGresult *r, int i, union pg_lib_row *row)
{
    st_item_state *x = &row->state;
    x->enrollment_id = col_text(r, i, 0);
    x->item_kind = (int)col_int(r, i, 1);
    x->item_id = col_int(r, i, 2);
    x->identifier = col_text(r, i, 3);
    x->state = (int)col_int(r, i, 4);
    x->command_uuid = col_text(r, i, 5);
    x->sensitive = (int)col_int(r, i, 6);
    x->detail = col_text(r, i, 7);
    x->updated_at = col_int(r, i, 8);
    x->version = col_int(r, i, 9);
    return 0;
}

static int64_t read_lib_enrollment_id(const PGresult *r, int i, union pg_lib_row *row)
{
    row->enrollment_id = col_text(r, i, 0);
    return 0;
}

static int emit_profile(const struct pg_lib_list *l, const union pg_lib_row *row)
{
    return l->fn.profile(&row->profile, l->ctx);
}

static int emit_app(const struct pg_lib_list *l, const union pg_lib_row *row)
{
    return l->fn.app(&row->app, l->ctx);
}

static int emit_assignment(const struct pg_lib_list *l, const union pg_lib_row *row)
{
    return l->fn.assignment(&row->assignment, l->ctx);
}

static int emit_state(const struct pg_lib_list *l, const union pg_lib_row *row)
{
    return l->fn.state(&row->state, l->ctx);
}

static int emit_enrollment_id(const struct pg_lib_list *l, const union pg_lib_row *row)
{
    return l->fn.enrollment(row->enrollment_id, l->ctx);
}

static void cleanup_profile(union pg_lib_row *row)
{
    st_profile_cleanup(&row->profile);
}

static void cleanup_app(union pg_lib_row *row)
{
    st_app_cleanup(&row->app);
}

static void cleanup_assignment(union pg_lib_row *row)
{
    st_assignment_cleanup(&row->assignment);
}

static void cleanup_state(union pg_lib_row *row)
{
    st_item_state_cleanup(&row->state);
}

static void cleanup_enrollment_id(union pg_lib_row *row)
{
    free(row->enrollment_id);
}

/* Calls the list's callback on each row of r; returns ST_OK or the first non-zero answer. */
static int pg_lib_emit_rows(const struct pg_lib_list *l, const PGresult *r, int64_t *last_id)
{
    int ret = ST_OK, n = PQntuples(r);
    for (int i = 0; i < n && ret == ST_OK; i++) {
        union pg_lib_row row;
        memset(&row, 0, sizeof(row));
        int64_t id = l->read(r, i, &row);
        if (last_id != NULL)
            *last_id = id;
        ret = l->emit(l, &row);
        l->cleanup(&row);
    }
    return ret;
}

/* Keyset pagination over "WHERE id > $1 ... LIMIT $2", as pg_user_list. */
static int pg_lib_list_by_id(storage *st, enum pg_stmt_id id, const struct pg_lib_list *l,
                             const char *op)
{
    int64_t cursor = 0;
    int ret = ST_OK;
    for (;;) {
        struct pg_params p = {0};
        p_int(&p, cursor);
        p_int(&p, PG_LIST_CHUNK);
        PGresult *r;
        ret = pg_exec(conn_get(st), id, &p, op, &r);
        if (ret != ST_OK)
            break;
        int n = PQntuples(r);
        ret = pg_lib_emit_rows(l, r, &cursor);
        PQclear(r);
        if (ret != ST_OK || n < PG_LIST_CHUNK)
            break;
    }
    return ret;
}

/* Every row of one query (small per-enrollment or per-item sets). */
static int pg_lib_list_all(storage *st, enum pg_stmt_id id, const struct pg_params *p,
                           const struct pg_lib_list *l, const char *op)
{
    PGresult *r;
    int ret = pg_exec(conn_get(st), id, p, op, &r);
    if (ret == ST_OK)
        ret = pg_lib_emit_rows(l, r, NULL);
    PQclear(r);
    return ret;
}

static int pg_lib_get_one(storage *st, enum pg_stmt_id id, const struct pg_params *p,
                          int64_t (*read)(const PGresult *, int, union pg_lib_row *),
                          union pg_lib_row *out, const char *op)
{
    PGresult *r;
    int rc = pg_row(conn_get(st), id, p, op, &r);
    if (rc == ST_OK)
        read(r, 0, out);
    PQclear(r);
    return rc;
}

/*
 * Deletes an item row and its assignments in one transaction: the item first, so that an
 * assignment being added at the same moment (which holds the item FOR KEY SHARE) either
 * commits before our DELETE proceeds and is then removed with the others, or finds no item.
 */
static int pg_lib_item_delete(storage *st, enum pg_stmt_id del, int kind, int64_t id,
                              const char *op)
{
    struct pg_conn *c = conn_get(st);
    int rc = pg_begin(c, op);
    if (rc != ST_OK)
        return rc;
    struct pg_params p = {0};
    p_int(&p, id);
    rc = pg_run(c, del, &p, op, 1, NULL);
    if (rc != ST_OK)
        goto out;
    struct pg_params q = {0};
    p_int(&q, kind);
    p_int(&q, id);
    rc = pg_run(c, PG_LIB_ITEM_UNASSIGN, &q, op, 0, NULL);
    if (rc != ST_OK)
        goto out;
    rc = pg_commit(c, op);
out:
    if (rc != ST_OK)
        pg_rollback(c);
    return rc;
}

static int pg_profile_add(storage *st, st_profile *x)
{
    struct pg_params p = {0};
    p_text(&p, x->identifier);
    p_text(&p, x->name);
    p_text(&p, x->platforms);
    p_blob(&p, x->body, x->body_len);
    p_int(&p, x->sensitive ? 1 : 0);
    p_int(&p, x->sign ? 1 : 0);
    p_int(&p, x->created_at);
    PGresult *r;
    int rc = pg_row(conn_get(st), PG_LIB_PROFILE_ADD, &p, "profile_add", &r);
    if (rc == ST_OK)
        x->id = col_int(r, 0, 0);
    PQclear(r);
    return rc;
}

static int pg_profile_replace(storage *st, st_profile *x)
{
    static const char op[] = "profile_replace";
    struct pg_conn *c = conn_get(st);
    struct pg_params p = {0};
    p_int(&p, x->id);
    p_text(&p, x->identifier);
    p_text(&p, x->name);
    p_text(&p, x->platforms);
    p_blob(&p, x->body, x->body_len);
    p_int(&p, x->sensitive ? 1 : 0);
    p_int(&p, x->sign ? 1 : 0);
    PGresult *r;
    int rc = pg_row(c, PG_LIB_PROFILE_REPLACE, &p, op, &r);
    if (rc == ST_OK)
        x->version = col_int(r, 0, 0);
    PQclear(r);
    if (rc != ST_ENOTFOUND)
        return rc;
    /* Unknown, or another identifier. */
    struct pg_params q = {0};
    p_int(&q, x->id);
    rc = pg_row(c, PG_LIB_PROFILE_IDENT, &q, op, &r);
    PQclear(r);
    return rc == ST_OK ? ST_ECONFLICT : rc;
}

static int pg_profile_get(storage *st, int64_t id, st_profile *out)
{
    struct pg_params p = {0};
    p_int(&p, id);
    union pg_lib_row row;
    memset(&row, 0, sizeof(row));
    int rc = pg_lib_get_one(st, PG_LIB_PROFILE_GET, &p, read_lib_profile, &row, "profile_get");
    *out = row.profile;
    return rc;
}

static int pg_profile_list(storage *st, int (*fn)(const st_profile *p, void *ctx), void *ctx)
{
    struct pg_lib_list l = {read_lib_profile, emit_profile, cleanup_profile, {.profile = fn}, ctx};
    return pg_lib_list_by_id(st, PG_LIB_PROFILE_LIST, &l, "profile_list");
}

static int pg_profile_delete(storage *st, int64_t id)
{
    return pg_lib_item_delete(st, PG_LIB_PROFILE_DELETE, ST_ITEM_PROFILE, id, "profile_delete");
}

static int pg_app_replace(storage *st, st_app *a)
{
    static const char op[] = "app_replace";
    struct pg_conn *c = conn_get(st);
    struct pg_params p = {0};
    p_int(&p, a->id);
    p_text(&p, a->identifier);
    p_int(&p, a->itunes_store_id);
    p_text(&p, a->manifest_url);
    p_text(&p, a->spec);
    p_int(&p, a->sensitive ? 1 : 0);
    PGresult *r;
    int rc = pg_row(c, PG_LIB_APP_REPLACE, &p, op, &r);
    if (rc == ST_OK)
        a->version = col_int(r, 0, 0);
    PQclear(r);
    if (rc != ST_ENOTFOUND)
        return rc;
    struct pg_params q = {0}; /* unknown, or another identity */
    p_int(&q, a->id);
    rc = pg_row(c, PG_LIB_APP_EXISTS, &q, op, &r);
    PQclear(r);
    return rc == ST_OK ? ST_ECONFLICT : rc;
}

static int pg_app_add(storage *st, st_app *a)
{
    struct pg_params p = {0};
    p_text(&p, a->identifier);
    p_int(&p, a->itunes_store_id);
    p_text(&p, a->manifest_url);
    p_text(&p, a->spec);
    p_int(&p, a->sensitive ? 1 : 0);
    p_int(&p, a->created_at);
    PGresult *r;
    int rc = pg_row(conn_get(st), PG_LIB_APP_ADD, &p, "app_add", &r);
    if (rc == ST_OK)
        a->id = col_int(r, 0, 0);
    PQclear(r);
    return rc;
}

static int pg_app_get(storage *st, int64_t id, st_app *out)
{
    struct pg_params p = {0};
    p_int(&p, id);
    union pg_lib_row row;
    memset(&row, 0, sizeof(row));
    int rc = pg_lib_get_one(st, PG_LIB_APP_GET, &p, read_lib_app, &row, "app_get");
    *out = row.app;
    return rc;
}

static int pg_app_list(storage *st, int (*fn)(const st_app *a, void *ctx), void *ctx)
{
    struct pg_lib_list l = {read_lib_app, emit_app, cleanup_app, {.app = fn}, ctx};
    return pg_lib_list_by_id(st, PG_LIB_APP_LIST, &l, "app_list");
}

static int pg_app_delete(storage *st, int64_t id)
{
    return pg_lib_item_delete(st, PG_LIB_APP_DELETE, ST_ITEM_APP, id, "app_delete");
}

static int pg_assignment_add(storage *st, st_assignment *a)
{
    struct pg_params p = {0};
    p_int(&p, a->item_kind);
    p_int(&p, a->item_id);
    p_int(&p, a->target_type);
    p_text(&p, a->target);
    p_int(&p, a->created_at);
    PGresult *r;
    int rc = pg_row(conn_get(st), PG_LIB_ASSIGN_ADD, &p, "assignment_add", &r);
    if (rc == ST_OK)
        a->id = col_int(r, 0, 0);
    PQclear(r);
    return rc;
}

static int pg_assignment_get(storage *st, int64_t id, st_assignment *out)
{
    struct pg_params p = {0};
    p_int(&p, id);
    union pg_lib_row row;
    memset(&row, 0, sizeof(row));
    int rc = pg_lib_get_one(st, PG_LIB_ASSIGN_GET, &p, read_lib_assignment, &row, "assignment_get");
    *out = row.assignment;
    return rc;
}

static int pg_assignment_delete(storage *st, int64_t id)
{
    struct pg_params p = {0};
    p_int(&p, id);
    return pg_run(conn_get(st), PG_LIB_ASSIGN_DELETE, &p, "assignment_delete", 1, NULL);
}

static int pg_assignment_list(storage *st, int (*fn)(const st_assignment *a, void *ctx), void *ctx)
{
    struct pg_lib_list l = {
        read_lib_assignment, emit_assignment, cleanup_assignment, {.assignment = fn}, ctx};
    return pg_lib_list_by_id(st, PG_LIB_ASSIGN_LIST, &l, "assignment_list");
}

static int pg_assignment_items(storage *st, const char *email, const char *domain,
                               const char *enrollment_id,
                               int (*fn)(int item_kind, int64_t item_id, void *ctx), void *ctx)
{
    struct pg_params p = {0};
    p_text(&p, email);
    p_text(&p, domain);
    p_text(&p, enrollment_id);
    PGresult *r;
    int ret = pg_exec(conn_get(st), PG_LIB_ASSIGN_ITEMS, &p, "assignment_items", &r);
    int n = ret == ST_OK ? PQntuples(r) : 0;
    for (int i = 0; i < n && ret == ST_OK; i++)
        ret = fn((int)col_int(r, i, 0), col_int(r, i, 1), ctx);
    PQclear(r);
    return ret;
}

static int pg_item_state_put(storage *st, const st_item_state *x, const char *expect_command)
{
    struct pg_params p = {0};
    p_text(&p, x->enrollment_id);
    p_int(&p, x->item_kind);
    p_int(&p, x->item_id);
    p_text(&p, x->identifier);
    p_int(&p, x->state);
    p_text(&p, x->command_uuid);
    p_int(&p, x->sensitive ? 1 : 0);
    p_text(&p, x->detail);
    p_int(&p, x->updated_at);
    p_text(&p, expect_command);
    p_int(&p, x->version > 0 ? x->version : 1);
    int rc = pg_run(conn_get(st), PG_LIB_STATE_PUT, &p, "item_state_put", 1, NULL);
    return rc == ST_ENOTFOUND ? ST_ECONFLICT : rc;
}

static int pg_item_state_delete(storage *st, const char *enrollment_id, int item_kind,
                                int64_t item_id)
{
    struct pg_params p = {0};
    p_text(&p, enrollment_id);
    p_int(&p, item_kind);
    p_int(&p, item_id);
    return pg_run(conn_get(st), PG_LIB_STATE_DELETE, &p, "item_state_delete", 0, NULL);
}

static int pg_item_state_list(storage *st, const char *enrollment_id,
                              int (*fn)(const st_item_state *s, void *ctx), void *ctx)
{
    struct pg_lib_list l = {read_lib_state, emit_state, cleanup_state, {.state = fn}, ctx};
    struct pg_params p = {0};
    p_text(&p, enrollment_id);
    return pg_lib_list_all(st, PG_LIB_STATE_LIST, &p, &l, "item_state_list");
}

static int pg_item_state_by_command(storage *st, const char *command_uuid, st_item_state *out)
{
    struct pg_params p = {0};
    p_text(&p, command_uuid);
    union pg_lib_row row;
    memset(&row, 0, sizeof(row));
    int rc = pg_lib_get_one(st, PG_LIB_STATE_BY_COMMAND, &p, read_lib_state, &row,
                            "item_state_by_command");
    *out = row.state;
    return rc;
}

static int pg_item_state_clear(storage *st, const char *enrollment_id)
{
    struct pg_params p = {0};
    p_text(&p, enrollment_id);
    return pg_run(conn_get(st), PG_LIB_STATE_CLEAR, &p, "item_state_clear", 0, NULL);
}

static int pg_item_state_enrollments(storage *st, int item_kind, int64_t item_id,
                                     int (*fn)(const char *enrollment_id, void *ctx), void *ctx)
{
    struct pg_lib_list l = {
        read_lib_enrollment_id, emit_enrollment_id, cleanup_enrollment_id, {.enrollment = fn}, ctx};
    struct pg_params p = {0};
    p_int(&p, item_kind);
    p_int(&p, item_id);
    return pg_lib_list_all(st, PG_LIB_STATE_ENROLLMENTS, &p, &l, "item_state_enrollments");
}

/* ---- identity renewal (migration 13) ---- */

static int pg_challenge_add_renewal(storage *st, const char *challenge_hash, int64_t user_id,
                                    const char *session_hash, const char *enrollment_id,
                                    int64_t expires_at)
{
    struct pg_params p = {0};
    p_text(&p, challenge_hash);
    p_ref(&p, user_id);
    p_text(&p, session_hash);
    p_text(&p, enrollment_id);
    p_int(&p, expires_at);
    return pg_run(conn_get(st), PG_CHALLENGE_ADD_RENEWAL, &p, "challenge_add_renewal", 0, NULL);
}

static int pg_challenge_consume_bound(storage *st, const char *challenge_hash, int64_t now,
                                      int64_t *user_id, char **session_hash, char **enrollment_id)
{
    return pg_challenge_take(st, challenge_hash, now, user_id, session_hash, enrollment_id);
}

static void read_renewal(const PGresult *r, int i, st_renewal *x)
{
    x->enrollment_id = col_text(r, i, 0);
    x->old_fingerprint = col_text(r, i, 1);
    x->expires_at = col_int(r, i, 2);
    x->state = col_text(r, i, 3);
    x->attempts = (int)col_int(r, i, 4);
    x->next_attempt_at = col_int(r, i, 5);
    x->challenge_hash = col_text(r, i, 6);
    x->command_uuid = col_text(r, i, 7);
    x->new_fingerprint = col_text(r, i, 8);
    x->last_error = col_text(r, i, 9);
    x->started_at = col_int(r, i, 10);
    x->updated_at = col_int(r, i, 11);
    x->version = col_int(r, i, 12);
}

/* A row of PG_RENEWAL_CANDIDATES: the identity and the earlier row's version. */
static void read_renewal_candidate(const PGresult *r, int i, st_renewal *x)
{
    x->enrollment_id = col_text(r, i, 0);
    x->old_fingerprint = col_text(r, i, 1);
    x->expires_at = col_int(r, i, 2);
    x->version = col_int(r, i, 3);
}

static int pg_renewal_get(storage *st, const char *enrollment_id, st_renewal *out)
{
    struct pg_params p = {0};
    p_text(&p, enrollment_id);
    PGresult *r;
    int rc = pg_row(conn_get(st), PG_RENEWAL_GET, &p, "renewal_get", &r);
    if (rc == ST_OK)
        read_renewal(r, 0, out);
    PQclear(r);
    return rc;
}

static int pg_renewal_put(storage *st, st_renewal *x, int64_t expect_version)
{
    struct pg_params p = {0};
    p_text(&p, x->enrollment_id);
    p_text(&p, x->old_fingerprint);
    p_int(&p, x->expires_at);
    p_text(&p, x->state);
    p_int(&p, x->attempts);
    p_int(&p, x->next_attempt_at);
    p_text(&p, x->challenge_hash);
    p_text(&p, x->command_uuid);
    p_text(&p, x->new_fingerprint);
    p_text(&p, x->last_error);
    p_int(&p, x->started_at);
    p_int(&p, x->updated_at);
    p_int(&p, expect_version);
    PGresult *r;
    int rc = pg_row(conn_get(st), PG_RENEWAL_PUT, &p, "renewal_put", &r);
    if (rc == ST_OK)
        x->version = col_int(r, 0, 0);
    PQclear(r);
    return rc == ST_ENOTFOUND ? ST_ECONFLICT : rc; /* no row back: another version */
}

/* Runs a renewal listing and calls fn on each row once the result is complete (fn writes). */
static int pg_renewal_rows(storage *st, enum pg_stmt_id id, const struct pg_params *p,
                           void (*read)(const PGresult *r, int i, st_renewal *x),
                           int (*fn)(const st_renewal *r, void *ctx), void *ctx, const char *op)
{
    PGresult *r;
    int ret = pg_exec(conn_get(st), id, p, op, &r);
    if (ret != ST_OK)
        return ret;
    int n = PQntuples(r);
    for (int i = 0; i < n && ret == ST_OK; i++) {
        st_renewal x = {0};
        read(r, i, &x);
        ret = fn(&x, ctx);
        st_renewal_cleanup(&x);
    }
    PQclear(r);
    return ret;
}

static int pg_renewal_candidates(storage *st, int64_t expires_before, int limit,
                                 int (*fn)(const st_renewal *r, void *ctx), void *ctx)
{
    struct pg_params p = {0};
    p_int(&p, expires_before);
    p_int(&p, limit);
    return pg_renewal_rows(st, PG_RENEWAL_CANDIDATES, &p, read_renewal_candidate, fn, ctx,
                           "renewal_candidates");
}

static int pg_renewal_due(storage *st, int64_t now, int64_t errors_since, int limit,
                          int (*fn)(const st_renewal *r, void *ctx), void *ctx)
{
    struct pg_params p = {0};
    p_int(&p, now);
    p_int(&p, errors_since);
    p_int(&p, limit);
    return pg_renewal_rows(st, PG_RENEWAL_DUE, &p, read_renewal, fn, ctx, "renewal_due");
}

static int pg_identity_rotate(storage *st, const char *enrollment_id, const char *root_id,
                              const char *old_fp, const char *new_fp, int64_t now,
                              int *renewal_done)
{
    static const char op[] = "identity_rotate";
    struct pg_conn *c = conn_get(st);
    int rc = pg_begin(c, op);
    if (rc != ST_OK)
        return rc;
    struct pg_params p = {0};
    p_text(&p, enrollment_id);
    p_text(&p, old_fp);
    p_text(&p, new_fp);
    /* The row lock of this UPDATE orders concurrent rotations: the second one finds
     * cert_fingerprint changed once the first commits, and changes nothing. */
    rc = pg_run(c, PG_ROTATE_ENROLLMENT, &p, op, 1, NULL);
    if (rc == ST_ENOTFOUND)
        rc = ST_ECONFLICT;
    if (rc != ST_OK)
        goto out;
    struct pg_params q = {0};
    p_text(&q, root_id);
    p_text(&q, old_fp);
    p_text(&q, new_fp);
    p_int(&q, now);
    rc = pg_run(c, PG_ROTATE_CERTS, &q, op, 0, NULL);
    if (rc != ST_OK)
        goto out;
    int64_t changed = 0;
    rc = pg_run(c, PG_ROTATE_RENEWAL, &q, op, 0, &changed);
    if (rc != ST_OK)
        goto out;
    rc = pg_commit(c, op);
    if (rc == ST_OK)
        *renewal_done = changed > 0;
out:
    if (rc != ST_OK)
        pg_rollback(c);
    return rc;
}

static int pg_identity_count_expiring(storage *st, int64_t after, int64_t before, int64_t *count)
{
    struct pg_params p = {0};
    p_int(&p, after);
    p_int(&p, before);
    PGresult *r;
    int rc = pg_row(conn_get(st), PG_IDENTITY_COUNT_EXPIRING, &p, "identity_count_expiring", &r);
    if (rc == ST_OK)
        *count = col_int(r, 0, 0);
    PQclear(r);
    return rc == ST_ENOTFOUND ? ST_ERROR : rc;
}

/* ---- device inventory ---- */

/* A nullable integer column: NULL reads as `none`. */
static int64_t col_int_or(const PGresult *r, int row, int col, int64_t none)
{
    return PQgetisnull(r, row, col) ? none : col_int(r, row, col);
}

/* v, or SQL NULL when v is the "unknown" value `none`. */
static void p_int_or_null(struct pg_params *p, int64_t v, int64_t none)
{
    if (v == none)
        p_text(p, NULL);
    else
        p_int(p, v);
}

/* Reads INV_COLS (or INV_COLS_LIST) starting at column `at`. */
static void read_inventory(const PGresult *r, int i, int at, st_inventory *x)
{
    x->enrollment_id = col_text(r, i, at + 0);
    x->platform = col_text(r, i, at + 1);
    x->os_version = col_text(r, i, at + 2);
    x->build_version = col_text(r, i, at + 3);
    x->os_key = col_int_or(r, i, at + 4, 0);
    x->product_name = col_text(r, i, at + 5);
    x->model = col_text(r, i, at + 6);
    x->model_name = col_text(r, i, at + 7);
    x->device_name = col_text(r, i, at + 8);
    x->capacity_mb = col_int_or(r, i, at + 9, -1);
    x->available_mb = col_int_or(r, i, at + 10, -1);
    x->passcode_present = (int)col_int_or(r, i, at + 11, -1);
    x->passcode_compliant = (int)col_int_or(r, i, at + 12, -1);
    x->app_count = (int)col_int_or(r, i, at + 13, -1);
    x->apps = col_text(r, i, at + 14);
    x->profile_count = (int)col_int_or(r, i, at + 15, -1);
    x->profiles = col_text(r, i, at + 16);
    x->cert_count = (int)col_int_or(r, i, at + 17, -1);
    x->certs = col_text(r, i, at + 18);
    x->round = col_int(r, i, at + 19);
    x->requested_at = col_int(r, i, at + 20);
    x->updated_at = col_int(r, i, at + 21);
    x->due_at = col_int(r, i, at + 22);
}

/* The data columns of x (os_version .. certs), 17 parameters. */
static void p_inventory_data(struct pg_params *p, const st_inventory *x)
{
    p_text(p, x->os_version);
    p_text(p, x->build_version);
    p_int_or_null(p, x->os_key, 0);
    p_text(p, x->product_name);
    p_text(p, x->model);
    p_text(p, x->model_name);
    p_text(p, x->device_name);
    p_int_or_null(p, x->capacity_mb, -1);
    p_int_or_null(p, x->available_mb, -1);
    p_int_or_null(p, x->passcode_present, -1);
    p_int_or_null(p, x->passcode_compliant, -1);
    p_int_or_null(p, x->app_count, -1);
    p_text(p, x->apps);
    p_int_or_null(p, x->profile_count, -1);
    p_text(p, x->profiles);
    p_int_or_null(p, x->cert_count, -1);
    p_text(p, x->certs);
}

static int pg_inventory_reset(storage *st, const st_inventory *x)
{
    struct pg_params p = {0};
    p_text(&p, x->enrollment_id);
    p_text(&p, x->platform);
    p_inventory_data(&p, x);
    p_int(&p, x->requested_at);
    p_int(&p, x->updated_at);
    p_int(&p, x->due_at);
    return pg_run(conn_get(st), PG_INV_RESET, &p, "inventory_reset", 0, NULL);
}

/* Reads the row of id on c into out (if not NULL), inside or outside a transaction. */
static int pg_inventory_read(struct pg_conn *c, enum pg_stmt_id id_stmt, const char *id,
                             st_inventory *out, const char *op)
{
    struct pg_params p = {0};
    p_text(&p, id);
    PGresult *r;
    int rc = pg_row(c, id_stmt, &p, op, &r);
    if (rc != ST_OK)
        return rc;
    if (out != NULL)
        read_inventory(r, 0, 0, out);
    PQclear(r);
    return ST_OK;
}

static int pg_inventory_get(storage *st, const char *id, st_inventory *out)
{
    return pg_inventory_read(conn_get(st), PG_INV_GET, id, out, "inventory_get");
}

static int pg_inventory_claim(storage *st, const char *id, int64_t round, int64_t now,
                              int64_t due_at, const char *platform, const st_command *cmds,
                              size_t n)
{
    static const char op[] = "inventory_claim";
    struct pg_conn *c = conn_get(st);
    int rc = pg_begin(c, op);
    if (rc != ST_OK)
        return rc;
    struct pg_params p = {0};
    p_text(&p, id);
    p_int(&p, round);
    p_int(&p, now);
    p_int(&p, due_at);
    p_text(&p, platform);
    rc = pg_run(c, PG_INV_CLAIM, &p, op, 1, NULL);
    if (rc == ST_ENOTFOUND) {
        /* Nothing changed: say why. */
        struct pg_params q = {0};
        p_text(&q, id);
        PGresult *r;
        rc = pg_row(c, PG_INV_CLAIM_WHY, &q, op, &r);
        if (rc == ST_OK) {
            rc = col_int(r, 0, 0) != round ? ST_ECONFLICT
                 : col_int(r, 0, 1)        ? ST_EEXISTS
                                           : ST_ECONFLICT;
            PQclear(r);
        }
        goto out;
    }
    for (size_t i = 0; i < n && rc == ST_OK; i++) {
        struct pg_params q = {0};
        p_text(&q, cmds[i].uuid);
        p_text(&q, cmds[i].enrollment_id);
        p_text(&q, cmds[i].request_type);
        p_blob(&q, cmds[i].body, cmds[i].body_len);
        p_int(&q, cmds[i].priority);
        p_int(&q, cmds[i].sensitive ? 1 : 0);
        p_int(&q, cmds[i].created_at);
        int64_t added = 0;
        rc = pg_run(c, PG_CMD_ENQUEUE, &q, op, 0, &added);
        if (rc == ST_OK && added == 0)
            rc = ST_EEXISTS; /* a fresh random uuid already in history: give up this round */
    }
    if (rc == ST_OK)
        rc = pg_commit(c, op);
out:
    if (rc != ST_OK)
        pg_rollback(c);
    return rc;
}

static int pg_inventory_set_due(storage *st, const char *id, int64_t round, int64_t due_at)
{
    struct pg_params p = {0};
    p_text(&p, id);
    p_int(&p, round);
    p_int(&p, due_at);
    int rc = pg_run(conn_get(st), PG_INV_SET_DUE, &p, "inventory_set_due", 1, NULL);
    return rc == ST_ENOTFOUND ? ST_ECONFLICT : rc;
}

static int pg_inventory_due(storage *st, int64_t now, int64_t defer_to, int limit,
                            int (*fn)(const char *enrollment_id, int64_t round, void *ctx),
                            void *ctx)
{
    static const char op[] = "inventory_due";
    struct pg_conn *c = conn_get(st);
    struct pg_params p = {0};
    p_int(&p, now);
    p_int(&p, defer_to);
    int rc = pg_run(c, PG_INV_DEFER, &p, op, 0, NULL);
    if (rc != ST_OK)
        return rc;
    struct pg_params q = {0};
    p_int(&q, now);
    p_int(&q, limit);
    PGresult *r;
    rc = pg_exec(c, PG_INV_DUE, &q, op, &r);
    if (rc != ST_OK)
        return rc;
    /* The rows are in memory: no statement is open on the server while fn runs. */
    for (int i = 0; i < PQntuples(r) && rc == ST_OK; i++)
        rc = fn(PQgetvalue(r, i, 0), col_int(r, i, 1), ctx);
    PQclear(r);
    return rc;
}

static int pg_inventory_update(storage *st, const char *id, const st_inventory *x, unsigned groups,
                               int64_t now, st_inventory *old)
{
    static const char op[] = "inventory_update";
    struct pg_conn *c = conn_get(st);
    int rc = pg_begin(c, op);
    if (rc != ST_OK)
        return rc;
    /* FOR UPDATE: the old values read are the ones this update replaces. */
    rc = pg_inventory_read(c, PG_INV_GET_FOR_UPDATE, id, old, op);
    if (rc != ST_OK)
        goto out;
    struct pg_params p = {0};
    p_text(&p, id);
    p_int(&p, groups);
    p_inventory_data(&p, x);
    p_int(&p, now);
    rc = pg_run(c, PG_INV_UPDATE, &p, op, 1, NULL);
    if (rc == ST_OK)
        rc = pg_commit(c, op);
out:
    if (rc != ST_OK) {
        pg_rollback(c);
        st_inventory_cleanup(old);
    }
    return rc;
}

static int pg_inventory_pending(storage *st, const char *id, int64_t *count)
{
    struct pg_params p = {0};
    p_text(&p, id);
    PGresult *r;
    int rc = pg_row(conn_get(st), PG_INV_PENDING, &p, "inventory_pending", &r);
    if (rc != ST_OK)
        return rc;
    *count = col_int(r, 0, 0);
    PQclear(r);
    return ST_OK;
}

static int pg_inventory_list(storage *st, const st_inventory_filter *f,
                             int (*fn)(const st_enrollment *e, const st_inventory *inv, void *ctx),
                             void *ctx)
{
    char *cursor = xstrdup(f->after_id != NULL ? f->after_id : "");
    int64_t left = f->limit > 0 ? f->limit : INT64_MAX;
    int ret = ST_OK;
    while (left > 0) {
        int want = left < PG_LIST_CHUNK ? (int)left : PG_LIST_CHUNK;
        struct pg_params p = {0};
        p_text(&p, cursor);
        p_int(&p, f->include_unenrolled ? 1 : 0);
        p_int(&p, f->os_key_lt);
        p_text(&p, f->platform);
        p_int(&p, f->passcode_present);
        p_int(&p, f->last_seen_before);
        p_int(&p, want);
        PGresult *r;
        ret = pg_exec(conn_get(st), PG_INV_LIST, &p, "inventory_list", &r);
        if (ret != ST_OK)
            break;
        int n = PQntuples(r);
        for (int i = 0; i < n && ret == ST_OK; i++) {
            st_enrollment e = {0};
            st_inventory inv = {0};
            read_enrollment(r, i, &e);
            int has_inv = !PQgetisnull(r, i, 23);
            if (has_inv)
                read_inventory(r, i, 23, &inv);
            inv.user_email = col_text(r, i, 22);
            free(cursor);
            cursor = xstrdup(e.id);
            ret = fn(&e, has_inv ? &inv : NULL, ctx);
            st_enrollment_cleanup(&e);
            st_inventory_cleanup(&inv);
        }
        PQclear(r);
        left -= n;
        if (ret != ST_OK || n < want)
            break;
    }
    free(cursor);
    return ret;
}

/* ---- transactions spanning calls (storage_tx_*) ---- */

static int pg_tx_begin(storage *st)
{
    struct pg_conn *c = conn_get(st);
    if (c == NULL)
        return ST_ERROR;
    if (c->base || c->depth > 0) {
        log_error("event=storage_error backend=pgsql op=tx_begin err=\"already in a "
                  "transaction\"");
        return ST_ECONFLICT;
    }
    int rc = pg_begin(c, "tx_begin");
    if (rc == ST_OK)
        c->base = 1;
    return rc;
}

/* Ends storage_tx_begin's transaction whatever happened inside it. */
static void pg_tx_end(struct pg_conn *c)
{
    pg_rollback_all(c);
    c->depth = c->base = c->broken = 0;
}

static int pg_tx_commit(storage *st)
{
    struct pgsql_storage *ps = (struct pgsql_storage *)st;
    struct pg_conn *c = pthread_getspecific(ps->key); /* no conn_check: it is mid-transaction */
    if (c == NULL || !c->base) {
        log_error("event=storage_error backend=pgsql op=tx_commit err=\"no transaction\"");
        return ST_ERROR;
    }
    int rc = ST_ERROR;
    if (c->broken || c->depth != 1 || PQtransactionStatus(c->db) != PQTRANS_INTRANS)
        log_error("event=storage_error backend=pgsql op=tx_commit err=\"transaction broken\"");
    else
        rc = pg_run(c, PG_COMMIT, &pg_noparams, "tx_commit", 0, NULL);
    pg_tx_end(c);
    return rc;
}

static void pg_tx_rollback(storage *st)
{
    struct pgsql_storage *ps = (struct pgsql_storage *)st;
    struct pg_conn *c = pthread_getspecific(ps->key);
    if (c != NULL && (c->base || c->depth > 0))
        pg_tx_end(c);
}

/* ---- durable jobs ---- */

static void read_job(const PGresult *r, int i, st_job *j)
{
    j->id = col_int(r, i, 0);
    j->kind = col_text(r, i, 1);
    j->scope = (int)col_int(r, i, 2);
    j->value = col_text(r, i, 3);
    j->item_kind = (int)col_int(r, i, 4);
    j->item_id = col_int(r, i, 5);
    j->origin = col_text(r, i, 6);
    j->state = (int)col_int(r, i, 7);
    j->total = col_int(r, i, 8);
    j->done = col_int(r, i, 9);
    j->errors = col_int(r, i, 10);
    j->installs = col_int(r, i, 11);
    j->removals = col_int(r, i, 12);
    j->cursor = col_text(r, i, 13);
    j->claimed_by = col_text(r, i, 14);
    j->claimed_until = col_int(r, i, 15);
    j->created_at = col_int(r, i, 16);
    j->started_at = col_int(r, i, 17);
    j->updated_at = col_int(r, i, 18);
    j->finished_at = col_int(r, i, 19);
}

/* kind, scope, value, item_kind, item_id: the filter PG_JOB_SAME compares. */
static void p_job_filter(struct pg_params *p, const st_job *j)
{
    p_text(p, j->kind);
    p_int(p, j->scope);
    p_text(p, j->value ? j->value : "");
    p_int(p, j->scope == ST_JOB_ITEM ? j->item_kind : 0);
    p_int(p, j->scope == ST_JOB_ITEM ? j->item_id : 0);
}

/*
 * The queued job found is locked (FOR UPDATE) until the caller's transaction, which also holds
 * the change the job must see, commits: a worker's claim skips it meanwhile, so the job cannot
 * start before the change is visible. A claim already under way makes the lookup wait and then
 * find the job started, and a new one is added. Two instances adding the same job at the same
 * moment may both insert: two jobs do the same work, which the reconciler's compare-and-set
 * makes harmless.
 */
static int pg_job_add(storage *st, st_job *j)
{
    static const char op[] = "job_add";
    struct pg_conn *c = conn_get(st);
    int rc = pg_begin(c, op);
    if (rc != ST_OK)
        return rc;
    struct pg_params p = {0};
    p_job_filter(&p, j);
    PGresult *r = NULL;
    rc = pg_row(c, PG_JOB_SAME, &p, op, &r);
    if (rc == ST_ENOTFOUND) {
        p_text(&p, j->origin ? j->origin : "");
        p_int(&p, j->created_at);
        rc = pg_row(c, PG_JOB_ADD, &p, op, &r);
        if (rc == ST_ENOTFOUND)
            rc = ST_ERROR;
    }
    if (rc == ST_OK)
        j->id = col_int(r, 0, 0);
    PQclear(r);
    if (rc == ST_OK)
        rc = pg_commit(c, op);
    if (rc != ST_OK) {
        pg_rollback(c);
        j->id = 0;
    }
    return rc;
}

static int pg_job_one(storage *st, enum pg_stmt_id id, const struct pg_params *p, st_job *out,
                      const char *op)
{
    PGresult *r;
    int rc = pg_row(conn_get(st), id, p, op, &r);
    if (rc == ST_OK)
        read_job(r, 0, out);
    PQclear(r);
    return rc;
}

static int pg_job_get(storage *st, int64_t id, st_job *out)
{
    struct pg_params p = {0};
    p_int(&p, id);
    return pg_job_one(st, PG_JOB_GET, &p, out, "job_get");
}

/* One UPDATE whose sub-select takes the job FOR UPDATE SKIP LOCKED: two instances claiming at
 * once never get the same job. */
static int pg_job_claim(storage *st, const char *owner, int64_t now, int lease, st_job *out)
{
    struct pg_params p = {0};
    p_int(&p, now);
    p_text(&p, owner);
    p_int(&p, now + lease);
    return pg_job_one(st, PG_JOB_CLAIM, &p, out, "job_claim");
}

/* The parameters of a job's page or count: after, then the filter. */
static void p_job_scope(struct pg_params *p, const st_job *j, const char *after)
{
    p_text(p, after);
    if (j->scope == ST_JOB_ITEM) {
        p_int(p, j->item_kind);
        p_int(p, j->item_id);
    } else {
        p_int(p, j->scope);
        p_text(p, j->value ? j->value : "");
    }
}

static int pg_job_count(storage *st, const st_job *j, int64_t *count)
{
    static const enum pg_stmt_id ids[] = {PG_JOB_COUNT_USER, PG_JOB_COUNT_DOMAIN,
                                          PG_JOB_COUNT_ENROLLMENT, PG_JOB_COUNT_ITEM};
    struct pg_params p = {0};
    p_job_scope(&p, j, "");
    PGresult *r;
    int rc = pg_row(conn_get(st), ids[j->scope - ST_JOB_USER], &p, "job_count", &r);
    if (rc == ST_OK)
        *count = col_int(r, 0, 0);
    PQclear(r);
    return rc == ST_ENOTFOUND ? ST_ERROR : rc;
}

static int pg_job_page(storage *st, const st_job *j, const char *after, int limit,
                       int (*fn)(const st_enrollment *e, void *ctx), void *ctx, int *n)
{
    static const enum pg_stmt_id ids[] = {PG_JOB_PAGE_USER, PG_JOB_PAGE_DOMAIN,
                                          PG_JOB_PAGE_ENROLLMENT, PG_JOB_PAGE_ITEM};
    struct pg_params p = {0};
    p_job_scope(&p, j, after);
    p_int(&p, limit);
    PGresult *r;
    int rc = pg_exec(conn_get(st), ids[j->scope - ST_JOB_USER], &p, "job_page", &r);
    if (rc != ST_OK)
        return rc;
    /* The result is a copy in memory: fn may call storage. */
    for (int i = 0; i < PQntuples(r); i++) {
        st_enrollment e = {0};
        read_enrollment(r, i, &e);
        (*n)++;
        int stop = fn(&e, ctx);
        st_enrollment_cleanup(&e);
        if (stop != 0)
            break;
    }
    PQclear(r);
    return ST_OK;
}

static int pg_job_progress(storage *st, const char *owner, int64_t now, int lease,
                           const st_job_progress *x)
{
    struct pg_params p = {0};
    p_int(&p, x->id);
    p_text(&p, owner);
    p_text(&p, x->cursor);
    p_int(&p, x->total);
    p_int(&p, x->done);
    p_int(&p, x->errors);
    p_int(&p, x->installs);
    p_int(&p, x->removals);
    p_int(&p, now);
    p_int(&p, now + lease);
    int rc = pg_run(conn_get(st), PG_JOB_PROGRESS, &p, "job_progress", 1, NULL);
    return rc == ST_ENOTFOUND ? ST_ECONFLICT : rc;
}

static int pg_job_finish(storage *st, const char *owner, int64_t id, int state, int64_t now)
{
    struct pg_params p = {0};
    p_int(&p, id);
    p_text(&p, owner);
    p_int(&p, state);
    p_int(&p, now);
    int rc = pg_run(conn_get(st), PG_JOB_FINISH, &p, "job_finish", 1, NULL);
    return rc == ST_ENOTFOUND ? ST_ECONFLICT : rc;
}

static int pg_job_release(storage *st, const char *owner, int64_t id)
{
    struct pg_params p = {0};
    p_int(&p, id);
    p_text(&p, owner);
    int rc = pg_run(conn_get(st), PG_JOB_RELEASE, &p, "job_release", 1, NULL);
    return rc == ST_ENOTFOUND ? ST_ECONFLICT : rc;
}

static int pg_job_prune(storage *st, int64_t before, int64_t *deleted)
{
    struct pg_params p = {0};
    p_int(&p, before);
    return pg_run(conn_get(st), PG_JOB_PRUNE, &p, "job_prune", 0, deleted);
}

static const struct storage_ops pgsql_ops = {
    .name = "pgsql",
    .close = pg_close,
    .ping = pg_ping,
    .schema_version = pg_schema_version,
    .user_add = pg_user_add,
    .user_get_by_email = pg_user_get_by_email,
    .user_get = pg_user_get,
    .user_set_password = pg_user_set_password,
    .user_list = pg_user_list,
    .apikey_add = pg_apikey_add,
    .apikey_find = pg_apikey_find,
    .session_add = pg_session_add,
    .session_get = pg_session_get,
    .session_bind = pg_session_bind,
    .session_set_machine_info = pg_session_set_machine_info,
    .session_revoke_enrollment = pg_session_revoke_enrollment,
    .session_revoke = pg_session_revoke,
    .session_prune_unbound = pg_session_prune_unbound,
    .challenge_add = pg_challenge_add,
    .challenge_consume = pg_challenge_consume,
    .challenge_prune = pg_challenge_prune,
    .cert_add = pg_cert_add,
    .cert_get_by_fingerprint = pg_cert_get_by_fingerprint,
    .cert_set_enrollment = pg_cert_set_enrollment,
    .cert_revoke_enrollment = pg_cert_revoke_enrollment,
    .enrollment_authenticate = pg_enrollment_authenticate,
    .enrollment_get = pg_enrollment_get,
    .enrollment_token_update = pg_enrollment_token_update,
    .enrollment_set_cert = pg_enrollment_set_cert,
    .enrollment_set_auth_state = pg_enrollment_set_auth_state,
    .enrollment_transition_auth_state = pg_enrollment_transition_auth_state,
    .enrollment_set_last_auth = pg_enrollment_set_last_auth,
    .enrollment_set_push_dead = pg_enrollment_set_push_dead,
    .enrollment_unenroll = pg_enrollment_unenroll,
    .enrollment_touch = pg_enrollment_touch,
    .enrollment_list = pg_enrollment_list,
    .queue_enqueue = pg_queue_enqueue,
    .queue_next = pg_queue_next,
    .queue_report = pg_queue_report,
    .command_get = pg_command_get,
    .command_list = pg_command_list,
    .queue_clear = pg_queue_clear,
    .queue_count = pg_queue_count,
    .history_prune = pg_history_prune,
    .audit_add = pg_audit_add,
    .audit_count = pg_audit_count,
    .audit_list = pg_audit_list,
    .audit_prune = pg_audit_prune,
    .push_enqueue = pg_push_enqueue,
    .push_enqueue_filter = pg_push_enqueue_filter,
    .push_sweep = pg_push_sweep,
    .push_claim = pg_push_claim,
    .push_done = pg_push_done,
    .push_pending = pg_push_pending,
    .failure_add = pg_failure_add,
    .failure_count = pg_failure_count,
    .failure_prune = pg_failure_prune,
    .secret_get_or_add = pg_secret_get_or_add,
    .webhook_add = pg_webhook_add,
    .webhook_claim = pg_webhook_claim,
    .webhook_done = pg_webhook_done,
    .webhook_pending = pg_webhook_pending,
    .domain_put = pg_domain_put,
    .domain_get = pg_domain_get,
    .domain_list = pg_domain_list,
    .oidc_pending_add = pg_oidc_pending_add,
    .oidc_pending_take = pg_oidc_pending_take,
    .user_set_idp_subject = pg_user_set_idp_subject,
    .profile_add = pg_profile_add,
    .profile_get = pg_profile_get,
    .profile_list = pg_profile_list,
    .profile_replace = pg_profile_replace,
    .profile_delete = pg_profile_delete,
    .app_add = pg_app_add,
    .app_get = pg_app_get,
    .app_list = pg_app_list,
    .app_delete = pg_app_delete,
    .app_replace = pg_app_replace,
    .assignment_add = pg_assignment_add,
    .assignment_get = pg_assignment_get,
    .assignment_delete = pg_assignment_delete,
    .assignment_list = pg_assignment_list,
    .assignment_items = pg_assignment_items,
    .item_state_put = pg_item_state_put,
    .item_state_delete = pg_item_state_delete,
    .item_state_list = pg_item_state_list,
    .item_state_by_command = pg_item_state_by_command,
    .item_state_clear = pg_item_state_clear,
    .item_state_enrollments = pg_item_state_enrollments,
    .challenge_add_renewal = pg_challenge_add_renewal,
    .challenge_consume_bound = pg_challenge_consume_bound,
    .renewal_get = pg_renewal_get,
    .renewal_put = pg_renewal_put,
    .renewal_candidates = pg_renewal_candidates,
    .renewal_due = pg_renewal_due,
    .identity_rotate = pg_identity_rotate,
    .identity_count_expiring = pg_identity_count_expiring,
    .inventory_reset = pg_inventory_reset,
    .inventory_get = pg_inventory_get,
    .inventory_claim = pg_inventory_claim,
    .inventory_set_due = pg_inventory_set_due,
    .inventory_due = pg_inventory_due,
    .inventory_update = pg_inventory_update,
    .inventory_pending = pg_inventory_pending,
    .inventory_list = pg_inventory_list,
    .tx_begin = pg_tx_begin,
    .tx_commit = pg_tx_commit,
    .tx_rollback = pg_tx_rollback,
    .job_add = pg_job_add,
    .job_get = pg_job_get,
    .job_claim = pg_job_claim,
    .job_count = pg_job_count,
    .job_page = pg_job_page,
    .job_progress = pg_job_progress,
    .job_finish = pg_job_finish,
    .job_release = pg_job_release,
    .job_prune = pg_job_prune,
    .fail_step_after = pg_fail_step_after,
};
