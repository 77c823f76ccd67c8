/*
 * The storage interface every service uses. Callers see only these named wrappers and plain
 * records; a backend (sqlite/, later pgsql/) implements `struct storage_ops` (storage_impl.h).
 * The wrappers are where asserts, tracing and test fault injection live.
 *
 * Conventions:
 *  - Every function returns 0 on success or a negative ST_E* code.
 *  - Records returned through out-parameters own their strings; release them with the
 *    matching *_cleanup(). Lookups that find nothing return ST_ENOTFOUND and leave the record
 *    zeroed.
 *  - Times are Unix seconds (int64_t). Secrets (session tokens, API keys, SCEP challenges) are
 *    never stored: callers pass the lowercase hex SHA-256 of the secret.
 *  - All functions are safe to call from any thread: backends keep one connection per thread.
 *
 * Enrollment ids: the key of an enrollment channel is its `EnrollmentID` (user enrollment) or
 * `UDID` (other enrollments); a macOS user channel appends ":" and the `EnrollmentUserID` /
 * `UserID` (PROTOCOL.md section 2).
 */
#ifndef ORCHARD_STORAGE_H
#define ORCHARD_STORAGE_H

#include <stddef.h>
#include <stdint.h>

enum {
    ST_OK = 0,
    ST_ERROR = -1, /* backend failure (I/O, SQL, connection); logged by the backend */
    ST_ENOTFOUND = -2,
    ST_EEXISTS = -3,  /* unique constraint */
    ST_ECONFLICT = -4 /* state does not allow the operation (e.g. challenge already used) */
};

typedef struct storage storage;

/* ---- lifecycle ---- */

/*
 * Opens the backend named by the DSN's scheme: "sqlite:PATH" (or a plain path) or
 * "postgres://...". Applies pending migrations. On error returns NULL and writes a message
 * (naming the valid schemes for an unknown one) into err.
 */
storage *storage_open(const char *dsn, char *err, size_t err_len);
void storage_close(storage *st);
/* Cheap liveness check for /healthz: 0 if the database answers a trivial query. */
int storage_ping(storage *st);
/* The schema version after migrations (for `orchard config show` and tests). */
int storage_schema_version(storage *st);

/* ---- users and API keys ---- */

typedef struct st_user {
    int64_t id;
    char *email;            /* the identifier a person types, unique, stored lowercase */
    char *managed_apple_id; /* AssignedManagedAppleID in the enrollment profile */
    char *password_hash;    /* libsodium argon2id string; NULL for federated-only users */
    char *idp_subject;      /* OIDC `sub` once bound; NULL otherwise */
    int64_t created_at;
    int disabled;
} st_user;

void st_user_cleanup(st_user *u);
/* Adds a user; fills u->id. ST_EEXISTS if the email is taken. */
int storage_user_add(storage *st, st_user *u);
int storage_user_get_by_email(storage *st, const char *email, st_user *out);
int storage_user_get(storage *st, int64_t id, st_user *out);
int storage_user_set_password(storage *st, int64_t id, const char *password_hash);
/* Calls fn for each user ordered by id; stops early (returning its value) if fn returns != 0. */
int storage_user_list(storage *st, int (*fn)(const st_user *u, void *ctx), void *ctx);

/* API keys: only the SHA-256 of the key is stored. Fills *id. */
int storage_apikey_add(storage *st, const char *name, const char *key_hash, int64_t now,
                       int64_t *id);
/* Finds a key by hash; fills *id (and *name, caller frees, if name != NULL). */
int storage_apikey_find(storage *st, const char *key_hash, int64_t *id, char **name);

/* ---- session tokens (the bearer of account-driven enrollment) ---- */

typedef struct st_session {
    char *token_hash;
    int64_t user_id;
    char *method; /* "local" or "oidc" */
    int64_t issued_at;
    int64_t expires_at;  /* hard expiry; 0 = none */
    char *enrollment_id; /* bound at Authenticate; NULL before */
    int64_t revoked_at;  /* 0 = valid */
    char *machine_info;  /* MachineInfo plist (XML) recorded at the profile request; may be NULL */
} st_session;

void st_session_cleanup(st_session *s);
int storage_session_add(storage *st, const st_session *s);
int storage_session_get(storage *st, const char *token_hash, st_session *out);
/* Binds an unbound session to an enrollment; ST_ECONFLICT if bound to a different one. */
int storage_session_bind(storage *st, const char *token_hash, const char *enrollment_id);
int storage_session_set_machine_info(storage *st, const char *token_hash, const char *plist);
/* Revokes every valid session bound to the enrollment (re-authentication, unenroll). */
int storage_session_revoke_enrollment(storage *st, const char *enrollment_id, int64_t now);
int storage_session_revoke(storage *st, const char *token_hash, int64_t now);

/* ---- SCEP challenges and issued certificates ---- */

/* A one-time SCEP challenge issued with an enrollment profile, bound to a session. */
int storage_challenge_add(storage *st, const char *challenge_hash, int64_t user_id,
                          const char *session_hash, int64_t expires_at);
/*
 * Atomically marks the challenge used and returns its user and session. ST_ENOTFOUND if
 * unknown or expired, ST_ECONFLICT if already used.
 */
int storage_challenge_consume(storage *st, const char *challenge_hash, int64_t now,
                              int64_t *user_id, char **session_hash);

typedef struct st_cert {
    char *serial;      /* hex */
    char *fingerprint; /* SHA-256 of the DER, lowercase hex */
    char *subject;
    int64_t user_id; /* 0 if none */
    char *session_hash;
    char *enrollment_id; /* set when first seen at Authenticate */
    int64_t not_after;
    int64_t issued_at;
    int64_t revoked_at;
} st_cert;

void st_cert_cleanup(st_cert *c);
int storage_cert_add(storage *st, const st_cert *c);
int storage_cert_get_by_fingerprint(storage *st, const char *fingerprint, st_cert *out);
int storage_cert_set_enrollment(storage *st, const char *fingerprint, const char *enrollment_id);
int storage_cert_revoke_enrollment(storage *st, const char *enrollment_id, int64_t now);

/* ---- enrollments ---- */

enum st_enrollment_type {
    ST_ENR_USER = 1,         /* account-driven user enrollment, device channel (EnrollmentID) */
    ST_ENR_USER_CHANNEL = 2, /* macOS user channel of a user enrollment (EnrollmentUserID) */
    ST_ENR_DEVICE = 3,       /* other enrollments keyed by UDID */
    ST_ENR_DEVICE_USER = 4   /* user channel of a UDID enrollment (UserID) */
};

typedef struct st_enrollment {
    char *id;        /* see "Enrollment ids" above */
    int type;        /* enum st_enrollment_type */
    char *parent_id; /* device channel of a user channel; NULL otherwise */
    int64_t user_id; /* 0 if not tied to an Orchard user */
    char *topic;
    char *cert_fingerprint;
    char *push_token; /* hex; NULL before TokenUpdate */
    char *push_magic;
    int push_token_dead; /* APNs said the token is invalid; cleared by TokenUpdate */
    char *os_version, *build_version, *product_name, *device_name, *model;
    char *auth_state; /* "active", "reauth_required", "reauth_failed", "unenrolled" */
    int64_t auth_state_since;
    int64_t last_auth_at;
    char *last_auth_method;
    int64_t enrolled_at;      /* last Authenticate */
    int64_t token_updated_at; /* last TokenUpdate: the enrollment is complete */
    int64_t last_seen_at;
    int64_t unenrolled_at; /* 0 while enrolled */
} st_enrollment;

void st_enrollment_cleanup(st_enrollment *e);
/*
 * Records an Authenticate: inserts the enrollment or, for a known id, resets it in one
 * transaction (queue cleared, push token cleared, unenrolled_at reset, fields replaced).
 */
int storage_enrollment_authenticate(storage *st, const st_enrollment *e);
int storage_enrollment_get(storage *st, const char *id, st_enrollment *out);
int storage_enrollment_token_update(storage *st, const char *id, const char *push_token,
                                    const char *push_magic, int64_t now);
int storage_enrollment_set_cert(storage *st, const char *id, const char *fingerprint);
int storage_enrollment_set_auth_state(storage *st, const char *id, const char *state,
                                      int64_t since);
int storage_enrollment_set_last_auth(storage *st, const char *id, int64_t at, const char *method);
int storage_enrollment_set_push_dead(storage *st, const char *id, int dead);
/* Marks unenrolled (CheckOut or acknowledged RemoveProfile) and clears the queue. */
int storage_enrollment_unenroll(storage *st, const char *id, int64_t now);
int storage_enrollment_touch(storage *st, const char *id, int64_t now);

typedef struct st_enrollment_filter {
    int64_t user_id;        /* 0 = any */
    int include_unenrolled; /* 0 = only enrolled */
    const char *after_id;   /* keyset pagination: ids > after_id; NULL = from start */
    int limit;              /* 0 = no limit */
} st_enrollment_filter;

/* Calls fn for each matching enrollment ordered by id; early stop as storage_user_list. */
int storage_enrollment_list(storage *st, const st_enrollment_filter *f,
                            int (*fn)(const st_enrollment *e, void *ctx), void *ctx);

/* ---- command queue ---- */

enum st_command_status {
    ST_CMD_QUEUED = 0,       /* not yet sent, or sent but unanswered (re-sent) */
    ST_CMD_NOTNOW = 1,       /* device answered NotNow; offered again on the next Idle */
    ST_CMD_ACKNOWLEDGED = 2, /* terminal: moved to history */
    ST_CMD_ERROR = 3,        /* terminal */
    ST_CMD_FORMAT_ERROR = 4  /* terminal (CommandFormatError) */
};

typedef struct st_command {
    char *uuid;
    char *enrollment_id;
    char *request_type;
    char *body; /* the full command plist (XML) as sent to the device */
    size_t body_len;
    int priority;  /* higher first; then FIFO by created_at and insertion order */
    int status;    /* enum st_command_status */
    int sensitive; /* removed by the re-authentication failure policy */
    int64_t created_at;
    int64_t sent_at;      /* last time handed to the device; 0 = never */
    int64_t completed_at; /* terminal statuses */
    char *result;         /* the device's report plist (XML) for terminal statuses */
    size_t result_len;
} st_command;

void st_command_cleanup(st_command *c);
/* Enqueues; ST_EEXISTS for a duplicate uuid; ST_ENOTFOUND for an unknown enrollment. */
int storage_queue_enqueue(storage *st, const st_command *c);
/*
 * The next command to send: highest priority, oldest first, among QUEUED commands and, when
 * include_notnow is set (the device reported Idle), NOTNOW ones too. Marks it sent (sent_at =
 * now, NOTNOW back to QUEUED) in the same transaction. ST_ENOTFOUND when nothing is pending.
 */
int storage_queue_next(storage *st, const char *enrollment_id, int include_notnow, int64_t now,
                       st_command *out);
/*
 * Records a device report for uuid. Terminal statuses move the command to history with the
 * result; NOTNOW marks it. Idempotent: a report for a command already in history, or unknown,
 * returns ST_ENOTFOUND and changes nothing.
 */
int storage_queue_report(storage *st, const char *enrollment_id, const char *uuid, int status,
                         const char *result, size_t result_len, int64_t now);
/* Looks a command up in the queue or in history. */
int storage_command_get(storage *st, const char *uuid, st_command *out);
/* Commands of an enrollment, queue then history, newest first; early stop as above. */
int storage_command_list(storage *st, const char *enrollment_id, int limit,
                         int (*fn)(const st_command *c, void *ctx), void *ctx);
/* Drops every pending command of the enrollment (re-Authenticate). */
int storage_queue_clear(storage *st, const char *enrollment_id);
/* Number of pending commands of the enrollment. */
int storage_queue_count(storage *st, const char *enrollment_id, int64_t *count);
/* Deletes history rows completed before `before`; fills *deleted. */
int storage_history_prune(storage *st, int64_t before, int64_t *deleted);

/* ---- audit trail ---- */

typedef struct st_audit {
    int64_t id;
    int64_t at;
    char *actor;  /* "api:<key name>", "user:<email>", "device:<enrollment>", "system" */
    char *action; /* "token.issue", "signin.fail", "enrollment.unenroll", ... */
    char *target;
    char *detail; /* free text or JSON */
} st_audit;

void st_audit_cleanup(st_audit *a);
int storage_audit_add(storage *st, const st_audit *a);
/* Newest first, ids < before_id (0 = from newest), at most limit rows. */
int storage_audit_list(storage *st, int64_t before_id, int limit,
                       int (*fn)(const st_audit *a, void *ctx), void *ctx);

#endif
