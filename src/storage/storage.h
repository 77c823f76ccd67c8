/*
 * The storage interface every service uses. Callers see only these named wrappers and plain
 * records; a backend (sqlite/, pgsql/) implements `struct storage_ops` (storage_impl.h).
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
/*
 * Deletes session tokens never bound to an enrollment and issued before `before` (expired:
 * an unbound token lives enroll_token_ttl); fills *deleted. Bound tokens stay, revoked or not:
 * CheckOut and the re-authentication failure policy still look at them.
 */
int storage_session_prune_unbound(storage *st, int64_t before, int64_t *deleted);

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
/* Deletes challenges that expired before `before`, used or not; fills *deleted. */
int storage_challenge_prune(storage *st, int64_t before, int64_t *deleted);

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
/*
 * The two lookups of every device request, as one consistent read: the session of token_hash
 * and the enrollment id. Each record is zeroed when not found (check s->token_hash / e->id).
 * Returns 0, or ST_ERROR. (Backends may implement it as one read transaction; the default is
 * the two separate lookups.)
 */
int storage_device_lookup(storage *st, const char *token_hash, const char *enrollment_id,
                          st_session *s, st_enrollment *e);

int storage_enrollment_token_update(storage *st, const char *id, const char *push_token,
                                    const char *push_magic, int64_t now);
int storage_enrollment_set_cert(storage *st, const char *id, const char *fingerprint);
int storage_enrollment_set_auth_state(storage *st, const char *id, const char *state,
                                      int64_t since);
/*
 * Moves auth_state from `from` to `to` only if it is still `from` (a compare-and-set): with
 * several Orchard instances, exactly one of them wins and runs the policy action. ST_ECONFLICT
 * if the state was not `from` (or the enrollment is unknown).
 */
int storage_enrollment_transition_auth_state(storage *st, const char *id, const char *from,
                                             const char *to, int64_t since);
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
/* Number of events with this action and target at or after `since`. */
int storage_audit_count(storage *st, const char *action, const char *target, int64_t since,
                        int64_t *count);
/* Newest first, ids < before_id (0 = from newest), at most limit rows. */
int storage_audit_list(storage *st, int64_t before_id, int limit,
                       int (*fn)(const st_audit *a, void *ctx), void *ctx);
/*
 * Retention (config audit_retention): deletes at most `limit` events older than `before`
 * (at < before), oldest first, and fills *deleted. The scheduler calls it until fewer than
 * limit rows go, so no single statement holds the write lock for long.
 */
int storage_audit_prune(storage *st, int64_t before, int limit, int64_t *deleted);

/* ---- push outbox (APNs) ---- */

/*
 * Pushes wait in two places, both durable and both shared safely by several Orchard instances:
 *
 * - The outbox: one row per enrollment (coalescing: APNs keeps only the last undelivered
 *   notification per device anyway, PROTOCOL.md section 11), for single pushes, commands, the
 *   re-push sweeper and retries. A row carries the time it is due, the attempts so far and a
 *   lease (owner, expiry): a row is claimed by a conditional update, and a lease that expires
 *   (a crashed instance) makes it claimable again.
 * - Bulk pushes (a filter: all, a user, a domain): one row per request, holding the filter and
 *   how far it has got in enrollment id order (byte order in both backends). Claims read the
 *   next page of matching enrollments straight from the enrollments table, so a bulk push to
 *   100,000 devices writes one progress update per batch instead of three rows per device. A
 *   bulk push is worked by one instance at a time (its lease); one whose owner crashed is taken
 *   over from the last recorded page once the lease expires.
 *
 * Only pushable enrollments are pushed: a push token, not marked dead, not unenrolled. A bulk
 * push passes over enrollments that have an outbox row: that row pushes them.
 */

/* Upserts a row due at `now` (an existing row keeps the earlier due time). A row claimed at
 * the moment is flagged so it is pushed once more after the in-flight push. ST_ENOTFOUND for
 * an unknown enrollment, ST_ECONFLICT when it has no live push token or is unenrolled. */
int storage_push_enqueue(storage *st, const char *enrollment_id, int64_t now);

enum st_push_scope {
    ST_PUSH_ALL = 0,    /* every pushable enrollment */
    ST_PUSH_USER = 1,   /* enrollments of the user whose email is `value` */
    ST_PUSH_DOMAIN = 2, /* enrollments of users whose email domain is `value` */
};

/* Records a bulk push (nothing is loaded into memory; the devices are read a page at a time
 * by storage_push_claim) and fills *queued with the pushable enrollments it matches. Their
 * outbox rows, if any, are made due now (flagged again if in flight). A bulk push matching
 * nothing is not recorded; one identical to a recorded push that has not started yet is not
 * recorded twice, and a push to all replaces every bulk push that has not started yet. */
int storage_push_enqueue_filter(storage *st, int scope, const char *value, int64_t now,
                                int64_t *queued);

/* The re-push sweeper: enqueues every pushable enrollment that has pending commands and has
 * been neither seen nor pushed since `before`. Fills *queued. */
int storage_push_sweep(storage *st, int64_t before, int64_t now, int64_t *queued);

typedef struct st_push {
    const char *enrollment_id;
    const char *push_token; /* lowercase hex */
    const char *push_magic;
    const char *topic;
    int attempts; /* failed attempts before this one */
    int64_t bulk; /* the bulk push the row comes from; 0 for an outbox row */
} st_push;

/*
 * Claims up to `limit` pushes for `owner` until now + lease and calls fn for each (borrowed
 * strings, valid during the call; no statement is open while fn runs): due outbox rows first
 * (due_at <= now, lease free or expired), then the next page of a bulk push that is free, has
 * an expired lease, or is already owner's (continuing after the page owner claimed last, so a
 * claim may run ahead of the outcomes recorded). Outbox rows whose enrollment can no longer be
 * pushed are dropped; a bulk push with nothing left and nothing outstanding is deleted. Fills
 * *claimed with the number of rows passed to fn. fn returning != 0 stops the calls: the outbox
 * rows not passed stay leased until the lease expires, and a bulk push with rows not passed is
 * rewound to its recorded progress (its page in flight will be sent again, not skipped).
 */
int storage_push_claim(storage *st, const char *owner, int64_t now, int lease, int limit,
                       int (*fn)(const st_push *p, void *ctx), void *ctx, int *claimed);

enum st_push_outcome {
    ST_PUSH_SENT = 0,  /* accepted by APNs: row deleted (or re-armed if flagged meanwhile) */
    ST_PUSH_RETRY = 1, /* released with due_at/attempts as given (a bulk row gets an outbox row) */
    ST_PUSH_DEAD = 2,  /* permanent: row deleted, the token marked dead if still current */
    ST_PUSH_DROP = 3,  /* given up: row deleted */
    ST_PUSH_UNSENT = 4 /* claimed but never sent: given back, due now, attempts as given (a bulk
                        * push is rewound to its last recorded page and its lease freed) */
};

typedef struct st_push_result {
    const char *enrollment_id;
    const char *push_token; /* the token that was used (DEAD only marks this one dead) */
    int outcome;            /* enum st_push_outcome */
    int64_t due_at;         /* RETRY */
    int attempts;           /* RETRY, UNSENT */
    int64_t bulk;           /* st_push.bulk of the claimed row */
} st_push_result;

/* Applies n outcomes of pushes claimed by `owner` in one transaction; outbox rows no longer
 * held by owner (lease expired and re-claimed) are left alone, and a bulk push records its
 * progress (every row up to the greatest id with an outcome other than UNSENT is done) only
 * while owner holds it. Outcomes must be recorded in the order of the claims. */
int storage_push_done(storage *st, const char *owner, int64_t now, const st_push_result *r,
                      size_t n);
/* Pushes waiting: outbox rows plus the devices that bulk pushes have yet to reach (metrics,
 * tests). */
int storage_push_pending(storage *st, int64_t *count);

/* ---- sign-in failure counters ---- */

/*
 * Failures per key (a hashed user identifier or client address) in fixed windows, in the store
 * so that every instance sharing it counts against one budget (auth/ratelimit.h).
 */
/* Adds one failure to (key, window_start); fills *count with the window's failures after it. */
int storage_failure_add(storage *st, const char *key, int64_t window_start, int64_t *count);
/* The failures of (key, window_start); 0 when there are none. */
int storage_failure_count(storage *st, const char *key, int64_t window_start, int64_t *count);
/* Deletes the windows that started before `before`; fills *deleted. */
int storage_failure_prune(storage *st, int64_t before, int64_t *deleted);

/* ---- server secrets ---- */

/*
 * A secret every instance sharing the store must agree on (the re-authentication ticket key,
 * auth/reauth.h), generated once. Stores `candidate` as the value of `name` if there is none
 * yet (the first instance wins; a concurrent second one gets the first one's value) and returns
 * the stored value in *value (new string; callers wipe and free it). Never logged.
 */
int storage_secret_get_or_add(storage *st, const char *name, const char *candidate, int64_t now,
                              char **value);

/* ---- webhook events ---- */

/*
 * Events waiting to be delivered to the webhook receiver (docs/WEBHOOKS.md), oldest first. Ids
 * increase and are never reused (the receiver deduplicates on them). Leased like the push
 * outbox, so instances sharing the database never send an event at the same time.
 */
typedef struct st_webhook_event {
    int64_t id;
    const char *type;
    const char *data; /* JSON object */
    int64_t created_at;
    int attempts; /* failed attempts before this one */
} st_webhook_event;

/* Adds an event due now; fills *id if id is not NULL. */
int storage_webhook_add(storage *st, const char *type, const char *data, int64_t now, int64_t *id);
/* Claims up to `limit` due events (due_at <= now, lease free or expired) for owner until
 * now + lease, and calls fn for each in id order (borrowed strings, no statement open). */
int storage_webhook_claim(storage *st, const char *owner, int64_t now, int lease, int limit,
                          int (*fn)(const st_webhook_event *e, void *ctx), void *ctx, int *claimed);

enum st_webhook_outcome {
    ST_WEBHOOK_DELIVERED = 0, /* deleted */
    ST_WEBHOOK_RETRY = 1,     /* released with due_at and attempts as given */
    ST_WEBHOOK_DROP = 2       /* given up: deleted */
};

/* Applies the outcome of an event owner claimed; ST_ENOTFOUND if owner no longer holds it. */
int storage_webhook_done(storage *st, const char *owner, int64_t id, int outcome, int64_t due_at,
                         int attempts);
/* Events waiting (metrics, tests). */
int storage_webhook_pending(storage *st, int64_t *count);

/* ---- organisation domains and federated sign-in (OIDC) ---- */

/*
 * An organisation domain managed in the store (`orchard domain`, /api/v1/domains). The config
 * key `domains` still lists local domains; a row here overrides or extends it. The client
 * secret is stored as given (it is needed to call the IdP's token endpoint): the database file
 * permissions (0600) protect it, and it is never printed or returned by the API.
 */
typedef struct st_domain {
    char *name;   /* lowercase, unique */
    char *auth;   /* "local" or "oidc" */
    char *issuer; /* OIDC issuer URL (https) */
    char *client_id;
    char *client_secret;  /* NULL = public client (PKCE only) */
    char *ca_file;        /* CA bundle to verify the IdP with; NULL = system trust store */
    char *scopes;         /* NULL = "openid email profile" */
    char *user_claim;     /* NULL = "email" */
    char *maid_claim;     /* NULL = "email" */
    char *groups_claim;   /* NULL = no group check */
    char *allowed_groups; /* comma separated; used with groups_claim */
    int jit_users;        /* create unknown users on their first federated sign-in */
    int64_t updated_at;
} st_domain;

void st_domain_cleanup(st_domain *d);
/* Inserts or replaces the domain d->name (all fields). */
int storage_domain_put(storage *st, const st_domain *d);
int storage_domain_get(storage *st, const char *name, st_domain *out);
/* Calls fn for each domain ordered by name; early stop as storage_user_list. */
int storage_domain_list(storage *st, int (*fn)(const st_domain *d, void *ctx), void *ctx);

/* A federated sign-in in progress: the browser went to the IdP and has not come back yet. */
typedef struct st_oidc_pending {
    char *state_hash;    /* SHA-256 of the `state` parameter (lowercase hex) */
    char *domain;        /* the organisation domain whose IdP was asked */
    char *identifier;    /* what the person typed (user-identifier), lowercase */
    char *nonce;         /* the ID token must carry it */
    char *code_verifier; /* PKCE */
    char *reauth_ticket; /* the re-authentication ticket of the challenge url; NULL if none */
    int64_t created_at;
    int64_t expires_at;
} st_oidc_pending;

void st_oidc_pending_cleanup(st_oidc_pending *p);
/* Stores a pending sign-in (and deletes expired ones). ST_EEXISTS for a duplicate state. */
int storage_oidc_pending_add(storage *st, const st_oidc_pending *p, int64_t now);
/*
 * Atomically removes the pending sign-in of state_hash and returns it: a state is used at most
 * once. ST_ENOTFOUND if unknown, already used or expired (expires_at <= now).
 */
int storage_oidc_pending_take(storage *st, const char *state_hash, int64_t now,
                              st_oidc_pending *out);
/* Binds a user to the IdP subject (`sub`) of their first federated sign-in. */
int storage_user_set_idp_subject(storage *st, int64_t id, const char *idp_subject);

/* ---- profile and app library, assignments, installed state (docs/LIBRARY.md) ---- */

enum st_item_kind { ST_ITEM_PROFILE = 1, ST_ITEM_APP = 2 };

typedef struct st_profile {
    int64_t id;
    char *identifier; /* the profile's top-level PayloadIdentifier, unique in the library */
    char *name;       /* PayloadDisplayName; may be NULL */
    char *platforms;  /* the platforms it validated for: "ios,macos,visionos" */
    char *body;       /* the profile plist (XML), unsigned */
    size_t body_len;
    int sensitive; /* carried into st_command.sensitive */
    int sign;      /* sign with the profile-signing identity when sent */
    int64_t created_at;
    int64_t version; /* 1 when added, one more at each replacement */
} st_profile;

void st_profile_cleanup(st_profile *p);
/* Adds a profile; fills p->id. ST_EEXISTS if the identifier is taken. */
int storage_profile_add(storage *st, st_profile *p);
int storage_profile_get(storage *st, int64_t id, st_profile *out);
/* Calls fn for each profile ordered by id; early stop as storage_user_list. */
int storage_profile_list(storage *st, int (*fn)(const st_profile *p, void *ctx), void *ctx);
/* Deletes the profile and its assignments in one transaction (installed state stays, so the
 * reconciler can still remove it from devices). */
int storage_profile_delete(storage *st, int64_t id);
/*
 * Replaces the content of profile p->id (name, platforms, body, sensitive, sign) and raises its
 * version, which fills p->version. The identifier must stay the same (devices know a profile
 * by it): ST_ECONFLICT if p->identifier differs, ST_ENOTFOUND for an unknown id.
 */
int storage_profile_replace(storage *st, st_profile *p);

typedef struct st_app {
    int64_t id;
    char *identifier;        /* bundle id; NULL when only a store id or manifest is known */
    int64_t itunes_store_id; /* 0 = none */
    char *manifest_url;      /* NULL = none */
    char *spec;              /* JSON object: configuration, attributes, options (as posted) */
    int sensitive;
    int64_t created_at;
    int64_t version; /* 1 when added, one more at each replacement */
} st_app;

void st_app_cleanup(st_app *a);
int storage_app_add(storage *st, st_app *a);
int storage_app_get(storage *st, int64_t id, st_app *out);
/*
 * Replaces app a->id's manifest_url, spec and sensitive and raises its version (fills
 * a->version). Its identity must stay: ST_ECONFLICT if the stored bundle id or App Store id
 * differs from a's, ST_ENOTFOUND for an unknown id.
 */
int storage_app_replace(storage *st, st_app *a);
int storage_app_list(storage *st, int (*fn)(const st_app *a, void *ctx), void *ctx);
/* Deletes the app and its assignments in one transaction. */
int storage_app_delete(storage *st, int64_t id);

enum st_target_type { ST_TARGET_USER = 1, ST_TARGET_DOMAIN = 2, ST_TARGET_ENROLLMENT = 3 };

typedef struct st_assignment {
    int64_t id;
    int item_kind; /* enum st_item_kind */
    int64_t item_id;
    int target_type; /* enum st_target_type */
    char *target;    /* lowercase email, lowercase domain, or an enrollment id */
    int64_t created_at;
} st_assignment;

void st_assignment_cleanup(st_assignment *a);
/* Fills a->id. ST_ENOTFOUND if the item does not exist, ST_EEXISTS for a duplicate. */
int storage_assignment_add(storage *st, st_assignment *a);
int storage_assignment_get(storage *st, int64_t id, st_assignment *out);
int storage_assignment_delete(storage *st, int64_t id);
int storage_assignment_list(storage *st, int (*fn)(const st_assignment *a, void *ctx), void *ctx);
/*
 * The desired items of an enrollment: the distinct (kind, id) assigned to its user's email, its
 * user's domain or the enrollment itself (NULL arguments match nothing), ordered by kind, id.
 */
int storage_assignment_items(storage *st, const char *email, const char *domain,
                             const char *enrollment_id,
                             int (*fn)(int item_kind, int64_t item_id, void *ctx), void *ctx);

enum st_item_state_code {
    ST_ITEM_INSTALLING = 1, /* Install* enqueued (command_uuid), not yet acknowledged */
    ST_ITEM_INSTALLED = 2,  /* acknowledged, or seen in ProfileList/ManagedApplicationList */
    ST_ITEM_REMOVING = 3,   /* Remove* enqueued (command_uuid) */
    ST_ITEM_FAILED = 4      /* the device refused the install; not retried automatically */
};

/* What Orchard installed (or is installing) on an enrollment, one row per library item. */
typedef struct st_item_state {
    char *enrollment_id;
    int item_kind;
    int64_t item_id;
    char *identifier;   /* PayloadIdentifier / bundle id: enough to remove it once deleted */
    int state;          /* enum st_item_state_code */
    char *command_uuid; /* the last Install/Remove command; NULL when learned from a list */
    int sensitive;
    char *detail; /* the device's last word: app Status, error chain; may be NULL */
    int64_t updated_at;
    int64_t version; /* the item version installed or being installed (profiles; apps: 1) */
} st_item_state;

void st_item_state_cleanup(st_item_state *s);
/*
 * Inserts or replaces the row of (enrollment, kind, item) if its current command_uuid is
 * expect_command (NULL: the row must be absent or have no command): a compare-and-set, so two
 * reconcilers never both enqueue. ST_ECONFLICT when the row changed meanwhile.
 */
int storage_item_state_put(storage *st, const st_item_state *s, const char *expect_command);
int storage_item_state_delete(storage *st, const char *enrollment_id, int item_kind,
                              int64_t item_id);
/* Rows of an enrollment ordered by kind, item id; early stop as storage_user_list. */
int storage_item_state_list(storage *st, const char *enrollment_id,
                            int (*fn)(const st_item_state *s, void *ctx), void *ctx);
int storage_item_state_by_command(storage *st, const char *command_uuid, st_item_state *out);
/* Forgets everything installed on an enrollment (a new enrollment starts empty). */
int storage_item_state_clear(storage *st, const char *enrollment_id);
/* The enrollments that have a row for the item (to remove a deleted item everywhere). */
int storage_item_state_enrollments(storage *st, int item_kind, int64_t item_id,
                                   int (*fn)(const char *enrollment_id, void *ctx), void *ctx);

/* ---- identity renewal (PROTOCOL.md 10.3, mdm/renewal.h; migration 13) ---- */

/*
 * A one-time SCEP challenge for renewing the identity of enrollment_id: as storage_challenge_add,
 * and bound to that enrollment, so that the certificate it produces is recorded for it.
 */
int storage_challenge_add_renewal(storage *st, const char *challenge_hash, int64_t user_id,
                                  const char *session_hash, const char *enrollment_id,
                                  int64_t expires_at);
/*
 * storage_challenge_consume that also returns the enrollment the challenge was issued for
 * (*enrollment_id: new string; NULL for the challenge of a first enrollment).
 */
int storage_challenge_consume_bound(storage *st, const char *challenge_hash, int64_t now,
                                    int64_t *user_id, char **session_hash, char **enrollment_id);

/*
 * The renewal of one enrollment's identity certificate (one row per device channel; a new
 * renewal of a later certificate replaces the row). States: "pending" (an attempt is out, or
 * the next one is due at next_attempt_at), "held" (the enrollment may not renew now; checked
 * again at next_attempt_at), and the final "done", "expired", "cancelled".
 */
typedef struct st_renewal {
    char *enrollment_id;   /* the device channel */
    char *old_fingerprint; /* the certificate being replaced */
    int64_t expires_at;    /* its notAfter */
    char *state;
    int attempts;            /* attempts started so far */
    int64_t next_attempt_at; /* pending: when the attempt out counts as failed, or the next
                              * one starts; held: the next check */
    char *challenge_hash;    /* the SCEP challenge of the attempt out; NULL when none */
    char *command_uuid;      /* its InstallProfile; NULL when none */
    char *new_fingerprint;   /* done: the certificate that replaced it */
    char *last_error;        /* why the last attempt failed; NULL if none did */
    int64_t started_at;
    int64_t updated_at;
    int64_t version; /* raised by every write: the compare-and-set of storage_renewal_put */
} st_renewal;

void st_renewal_cleanup(st_renewal *r);
int storage_renewal_get(storage *st, const char *enrollment_id, st_renewal *out);
/*
 * Writes the row of r->enrollment_id (every field but version) if the stored row still has
 * version expect_version, or creates it if there is none yet (callers then pass 0): a
 * compare-and-set, so of several instances exactly one starts each attempt. Sets r->version to
 * the new version (1 for a new row). ST_ECONFLICT when the row changed meanwhile.
 */
int storage_renewal_put(storage *st, st_renewal *r, int64_t expect_version);
/*
 * Device channels (enrolled) whose bound, unrevoked certificate expires at or before
 * expires_before and that have no renewal row for that certificate yet, soonest expiry first,
 * at most limit. Each record has enrollment_id, old_fingerprint, expires_at and the version of
 * the row of an earlier certificate (0 if none), for storage_renewal_put. No statement is open
 * while fn runs; early stop as storage_user_list.
 */
int storage_renewal_candidates(storage *st, int64_t expires_before, int limit,
                               int (*fn)(const st_renewal *r, void *ctx), void *ctx);
/*
 * Renewals to look at now: "pending" or "held" rows with next_attempt_at <= now, and "pending"
 * rows whose InstallProfile ended in Error or CommandFormatError at or after errors_since; at
 * most limit, soonest first. Callbacks as storage_renewal_candidates.
 */
int storage_renewal_due(storage *st, int64_t now, int64_t errors_since, int limit,
                        int (*fn)(const st_renewal *r, void *ctx), void *ctx);
/*
 * The device used a new certificate (new_fp) for the first time: in one transaction, the
 * enrollment's certificate becomes new_fp if it still is old_fp (else ST_ECONFLICT and nothing
 * changes), every other unrevoked certificate of root_id (the device channel) and old_fp itself
 * are revoked, and the renewal of old_fp on root_id, if any, becomes "done" (*renewal_done = 1
 * when this call finished it).
 */
int storage_identity_rotate(storage *st, const char *enrollment_id, const char *root_id,
                            const char *old_fp, const char *new_fp, int64_t now, int *renewal_done);
/*
 * The enrolled device channels whose bound, unrevoked certificate expires in (after, before]
 * (metrics).
 */
int storage_identity_count_expiring(storage *st, int64_t after, int64_t before, int64_t *count);

/* ---- device inventory (docs/INVENTORY.md, mdm/inventory.h) ---- */

/*
 * What Orchard learned from a device's answers to the inventory commands, one row per device
 * channel, and when to ask again. The commands of an inventory round are ordinary queued
 * commands whose CommandUUID starts with ST_INV_UUID_PREFIX (an RFC 9562 version-8 UUID whose
 * custom bits start with zeros): a round is pending while one of them is still in the queue.
 */
#define ST_INV_UUID_PREFIX "00000000-0000-8"
#define ST_INV_UUID_PREFIX_LEN 15

/* The column groups one command's answer fills (storage_inventory_update). */
enum st_inv_group {
    ST_INV_DEVICE = 1,   /* DeviceInformation: versions, model, name, storage */
    ST_INV_SECURITY = 2, /* SecurityInfo: passcode */
    ST_INV_APPS = 4,     /* InstalledApplicationList / ManagedApplicationList */
    ST_INV_PROFILES = 8, /* ProfileList */
    ST_INV_CERTS = 16    /* CertificateList */
};

typedef struct st_inventory {
    char *enrollment_id;
    char *platform; /* "ios", "macos", "visionos": from the enrollment Orchard stored */
    char *os_version, *build_version, *product_name, *model, *model_name, *device_name;
    int64_t os_key;         /* os_version as a comparable integer (inventory_version_key); 0 =
                             * unknown (stored as NULL, so no os_version filter matches it) */
    int64_t capacity_mb;    /* DeviceCapacity; -1 = unknown */
    int64_t available_mb;   /* AvailableDeviceCapacity; -1 = unknown */
    int passcode_present;   /* 1, 0, or -1 = unknown (not reported) */
    int passcode_compliant; /* 1, 0, or -1 = unknown */
    int app_count;          /* -1 = never listed */
    char *apps;             /* JSON array; NULL in storage_inventory_list results */
    int profile_count;      /* -1 = never listed */
    char *profiles;         /* JSON array; NULL in list results */
    int cert_count;         /* -1 = never listed */
    char *certs;            /* JSON array; NULL in list results */
    int64_t round;          /* claim counter: one more at every round claimed and every reset */
    int64_t requested_at;   /* last round queued; 0 = never */
    int64_t updated_at;     /* last answer stored; 0 = never */
    int64_t due_at;         /* the next scheduled round */
    char *user_email;       /* storage_inventory_list only: the enrollment's user, or NULL */
} st_inventory;

void st_inventory_cleanup(st_inventory *inv);
/*
 * Inserts or replaces the row of inv->enrollment_id with every field of inv (a new enrollment
 * starts over: values seeded from its Authenticate, nothing listed yet, due at inv->due_at).
 * The stored round is one more than before, so a claim made on the old row fails.
 * ST_ENOTFOUND for an unknown enrollment.
 */
int storage_inventory_reset(storage *st, const st_inventory *inv);
int storage_inventory_get(storage *st, const char *enrollment_id, st_inventory *out);
/*
 * Claims an inventory round and queues its commands, in one transaction: a compare-and-set on
 * `round`, so of several instances (or the scheduler and an admin request) exactly one queues
 * a round, and only if no command of an earlier round is still queued. On success the row has
 * round + 1, requested_at = now, due_at = due_at, platform (unless NULL: the enrollment's, which
 * the commands were built for), and the n commands cmds (uuids starting with ST_INV_UUID_PREFIX,
 * as storage_queue_enqueue takes them) are queued; otherwise nothing changed.
 * ST_EEXISTS: a round is pending; ST_ECONFLICT: the row's round is no longer `round` (someone
 * else claimed or reset it); ST_ENOTFOUND: no row.
 */
int storage_inventory_claim(storage *st, const char *enrollment_id, int64_t round, int64_t now,
                            int64_t due_at, const char *platform, const st_command *cmds, size_t n);
/* Moves the next scheduled round to due_at if the row's round is still `round` (ST_ECONFLICT
 * otherwise): a due device whose last round is still pending is asked again later. */
int storage_inventory_set_due(storage *st, const char *enrollment_id, int64_t round,
                              int64_t due_at);
/*
 * The scheduler's walk. First moves the rows due at now (due_at <= now) whose enrollment cannot
 * be asked to defer_to, so that unenrolled or inactive enrollments are not met again at every
 * tick; then calls fn, oldest due first, for at most `limit` due rows whose enrollment can be
 * asked: a device channel of a user enrollment, enrolled, complete (its first TokenUpdate
 * arrived) and active. fn gets the row's round for storage_inventory_claim; no statement is
 * open while it runs; early stop as storage_user_list.
 */
int storage_inventory_due(storage *st, int64_t now, int64_t defer_to, int limit,
                          int (*fn)(const char *enrollment_id, int64_t round, void *ctx),
                          void *ctx);
/*
 * Stores one answer: in one transaction reads the row into *old (if old is not NULL), then sets
 * the columns of the ST_INV_* `groups` from in (strings, numbers and lists as in st_inventory;
 * round, schedule and platform are not touched) and updated_at = now. ST_ENOTFOUND: no row.
 */
int storage_inventory_update(storage *st, const char *enrollment_id, const st_inventory *in,
                             unsigned groups, int64_t now, st_inventory *old);
/* Number of commands of inventory rounds still queued for the enrollment. */
int storage_inventory_pending(storage *st, const char *enrollment_id, int64_t *count);

enum { ST_INV_ANY = 0, ST_INV_NO = 1, ST_INV_YES = 2 };

/* GET /api/v1/enrollments filters; every condition is applied in SQL, all must hold. */
typedef struct st_inventory_filter {
    const char *after_id;     /* keyset pagination: ids > after_id; NULL = from start */
    int limit;                /* 0 = no limit */
    int include_unenrolled;   /* 0 = only enrolled */
    int64_t os_key_lt;        /* 0 = any; else a known os_key below it */
    const char *platform;     /* NULL = any; else the inventory's platform */
    int passcode_present;     /* ST_INV_ANY, ST_INV_NO (reported false), ST_INV_YES */
    int64_t last_seen_before; /* 0 = any; else last_seen_at < it */
} st_inventory_filter;

/*
 * Calls fn for each matching enrollment ordered by id with its inventory row (inv NULL when it
 * has none; its list columns are NULL, its user_email set); early stop as storage_user_list.
 */
int storage_inventory_list(storage *st, const st_inventory_filter *f,
                           int (*fn)(const st_enrollment *e, const st_inventory *inv, void *ctx),
                           void *ctx);

/* ---- transactions spanning several calls (batch work) ---- */

/*
 * Opens a write transaction on the calling thread's connection. Every storage call the thread
 * makes until storage_tx_commit or storage_tx_rollback runs inside it; an operation that needs a
 * transaction of its own nests as a savepoint (its failure undoes only its own writes), so a
 * batch of a few hundred enrollments' writes costs one commit and is committed entirely or not
 * at all. One level: ST_ECONFLICT if the thread already has one open. Other threads are not
 * affected (their connections are their own).
 *  - SQLite: BEGIN IMMEDIATE, so the database's single write lock is held until the end: keep a
 *    batch to milliseconds (every other writer waits for it).
 *  - PostgreSQL: row locks are held until the end; a statement that fails outside an operation's
 *    savepoint aborts the transaction.
 * A statement that fails outside an operation's own savepoint breaks the transaction (in both
 * backends, so they keep one contract: PostgreSQL aborts a transaction there), and so does a
 * failure the backend answers by rolling back (a lost connection, SQLite's I/O errors). That
 * includes the ST_EEXISTS / ST_ENOTFOUND of single-statement operations (a user that exists);
 * refusals decided without a failing statement (a compare-and-set that changed nothing:
 * ST_ECONFLICT, a lookup that found nothing) do not. Once broken, every later call fails with
 * ST_ERROR and commit rolls back and returns ST_ERROR: nothing runs half inside, half outside.
 */
int storage_tx_begin(storage *st);
/* Commits the thread's transaction; ST_ERROR (rolled back) if it broke or the commit failed. */
int storage_tx_commit(storage *st);
/* Rolls back the thread's transaction, if any. */
void storage_tx_rollback(storage *st);

/* ---- durable jobs (reconciliation off the request path, docs/LIBRARY.md) ---- */

/*
 * A job is work over many enrollments that an API request asks for and a worker thread does
 * (jobs/worker.h): the filter it applies, and how far it has got in enrollment id order (byte
 * order in both backends), recorded with each batch of work in the batch's own transaction, so a
 * crashed instance's job resumes after the last committed batch. A job is worked by one instance
 * at a time under a lease (claimed_by, claimed_until) that each batch renews; a job whose owner
 * crashed is taken over once the lease expires.
 *
 * The enrollments of a job: complete (TokenUpdate seen) and not unenrolled, matching the scope:
 * the user whose email is `value` (ST_JOB_USER), the users whose email domain is `value`
 * (ST_JOB_DOMAIN), the one enrollment `value` (ST_JOB_ENROLLMENT), or those with installed state
 * for the item (item_kind, item_id) (ST_JOB_ITEM).
 */
enum st_job_state {
    ST_JOB_QUEUED = 0,  /* not started */
    ST_JOB_RUNNING = 1, /* started; cursor says how far */
    ST_JOB_DONE = 2,
    ST_JOB_FAILED = 3
};
enum st_job_scope { ST_JOB_USER = 1, ST_JOB_DOMAIN = 2, ST_JOB_ENROLLMENT = 3, ST_JOB_ITEM = 4 };

typedef struct st_job {
    int64_t id;
    char *kind;  /* "reconcile" */
    int scope;   /* enum st_job_scope (user, domain, enrollment match enum st_target_type) */
    char *value; /* lowercase email, lowercase domain, or an enrollment id; "" for ST_JOB_ITEM */
    int item_kind;
    int64_t item_id; /* ST_JOB_ITEM */
    char *origin;    /* what asked for it, for people: "assignment.add 12" */
    int state;       /* enum st_job_state */
    int64_t total;   /* matching enrollments counted when the job started; -1 before */
    int64_t done;    /* enrollments worked (each batch adds its own) */
    int64_t errors, installs, removals;
    char *cursor; /* every matching enrollment id <= cursor is done; "" = none yet */
    char *claimed_by;
    int64_t claimed_until;
    int64_t created_at, started_at, updated_at, finished_at; /* 0 = not yet */
} st_job;

void st_job_cleanup(st_job *j);
/*
 * Records a queued job (kind, scope, value, item_kind, item_id, origin, created_at from j) and
 * fills j->id. A queued job that has not started and has the same kind and filter is not
 * recorded twice: j->id is that job's (it will see whatever changed since).
 */
int storage_job_add(storage *st, st_job *j);
int storage_job_get(storage *st, int64_t id, st_job *out);
/*
 * Claims the oldest unfinished job that is free, whose lease expired, or that owner already
 * holds, for owner until now + lease: state RUNNING, started_at set on the first claim. Fills
 * out; ST_ENOTFOUND when there is none. Two instances never hold one job at once.
 */
int storage_job_claim(storage *st, const char *owner, int64_t now, int lease, st_job *out);
/* Counts the job's enrollments (the whole filter, from the start). */
int storage_job_count(storage *st, const st_job *j, int64_t *count);
/*
 * Calls fn with the job's next `limit` enrollments after `after` ("" = from the start), whole
 * records in id order (borrowed; no statement is open while fn runs, so fn may call storage; fn
 * returning != 0 stops). Fills *n with the number passed. Inside a storage_tx the page is read
 * in the batch's transaction, so the records are the ones the batch's writes are based on.
 */
int storage_job_page(storage *st, const st_job *j, const char *after, int limit,
                     int (*fn)(const st_enrollment *e, void *ctx), void *ctx, int *n);

typedef struct st_job_progress {
    int64_t id;
    const char *cursor; /* the last enrollment id of the batch */
    int64_t total;      /* the count when it is first known; -1 keeps the stored one */
    int64_t done, errors, installs, removals; /* added to the stored counters */
} st_job_progress;

/*
 * Records a batch's progress and renews owner's lease (until now + lease), only while owner
 * holds the running job: ST_ECONFLICT otherwise (the lease expired and another instance took
 * the job over; the caller must roll the batch back). Meant to run inside the batch's
 * storage_tx, so the progress and the work commit together.
 */
int storage_job_progress(storage *st, const char *owner, int64_t now, int lease,
                         const st_job_progress *p);
/* Ends owner's job: state DONE or FAILED, finished_at = now, total at least done, lease freed.
 * ST_ECONFLICT if owner does not hold it. */
int storage_job_finish(storage *st, const char *owner, int64_t id, int state, int64_t now);
/* Gives a job back (an instance stopping): free at once for any instance, progress kept. */
int storage_job_release(storage *st, const char *owner, int64_t id);
/* Deletes finished jobs that finished before `before`; fills *deleted. */
int storage_job_prune(storage *st, int64_t before, int64_t *deleted);

/* ---- test fault injection (config debug_faults; see storage_impl.h) ---- */

/*
 * Makes the nth next call fail as the database would: with step = 0 the nth wrapper call
 * returns ST_ERROR without reaching the backend; with step = 1 the backend's nth round trip
 * (inside transactions too) fails. n = 0 disarms. Returns -1 if the backend has no step hook.
 */
int storage_inject_fault(storage *st, int n, int step);

#endif
