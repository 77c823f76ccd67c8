/*
 * What a storage backend implements: a const table of function pointers (`struct storage_ops`)
 * and a base struct (`struct storage`) that the backend embeds as the first member of its own
 * state, the way SQLite's `sqlite3_file` embeds `pMethods` or curl's `Curl_ssl` is a table of
 * entry points. Only storage.c and the backends (sqlite/, pgsql/) include this header;
 * services include storage.h and call the named wrappers, never `st->ops->...`.
 *
 * Every operation has the signature of its storage.h wrapper. The wrappers have already checked
 * the arguments (asserts), zeroed the out-parameters and applied fault injection, so a backend
 * may assume non-NULL required arguments and zeroed out-records. A backend returns the ST_E*
 * codes of storage.h and logs its own ST_ERROR failures ("event=storage_error ...").
 *
 * The lower half declares the test hooks: they are for tests only and no service calls them.
 */
#ifndef ORCHARD_STORAGE_IMPL_H
#define ORCHARD_STORAGE_IMPL_H

#include <stdatomic.h>

#include "storage/storage.h"

struct storage_ops {
    const char *name; /* the backend's scheme, for log lines */

    /* Frees everything; st is invalid afterwards. Never NULL (the wrapper checks). */
    void (*close)(storage *st);
    int (*ping)(storage *st);
    int (*schema_version)(storage *st);

    int (*user_add)(storage *st, st_user *u);
    int (*user_get_by_email)(storage *st, const char *email, st_user *out);
    int (*user_get)(storage *st, int64_t id, st_user *out);
    int (*user_set_password)(storage *st, int64_t id, const char *password_hash);
    int (*user_list)(storage *st, int (*fn)(const st_user *u, void *ctx), void *ctx);
    int (*apikey_add)(storage *st, const char *name, const char *key_hash, int64_t now,
                      int64_t *id);
    int (*apikey_find)(storage *st, const char *key_hash, int64_t *id, char **name);

    int (*session_add)(storage *st, const st_session *s);
    int (*session_get)(storage *st, const char *token_hash, st_session *out);
    /* Optional (NULL: the wrapper runs session_get and enrollment_get). */
    int (*device_lookup)(storage *st, const char *token_hash, const char *enrollment_id,
                         st_session *s, st_enrollment *e);
    int (*session_bind)(storage *st, const char *token_hash, const char *enrollment_id);
    int (*session_set_machine_info)(storage *st, const char *token_hash, const char *plist);
    int (*session_revoke_enrollment)(storage *st, const char *enrollment_id, int64_t now);
    int (*session_revoke)(storage *st, const char *token_hash, int64_t now);
    int (*session_prune_unbound)(storage *st, int64_t before, int64_t *deleted);

    int (*challenge_add)(storage *st, const char *challenge_hash, int64_t user_id,
                         const char *session_hash, int64_t expires_at);
    int (*challenge_consume)(storage *st, const char *challenge_hash, int64_t now, int64_t *user_id,
                             char **session_hash);
    int (*challenge_prune)(storage *st, int64_t before, int64_t *deleted);
    int (*cert_add)(storage *st, const st_cert *c);
    int (*cert_get_by_fingerprint)(storage *st, const char *fingerprint, st_cert *out);
    int (*cert_set_enrollment)(storage *st, const char *fingerprint, const char *enrollment_id);
    int (*cert_revoke_enrollment)(storage *st, const char *enrollment_id, int64_t now);

    int (*enrollment_authenticate)(storage *st, const st_enrollment *e);
    int (*enrollment_get)(storage *st, const char *id, st_enrollment *out);
    int (*enrollment_token_update)(storage *st, const char *id, const char *push_token,
                                   const char *push_magic, int64_t now);
    int (*enrollment_set_cert)(storage *st, const char *id, const char *fingerprint);
    int (*enrollment_set_auth_state)(storage *st, const char *id, const char *state, int64_t since);
    int (*enrollment_transition_auth_state)(storage *st, const char *id, const char *from,
                                            const char *to, int64_t since);
    int (*enrollment_set_last_auth)(storage *st, const char *id, int64_t at, const char *method);
    int (*enrollment_set_push_dead)(storage *st, const char *id, int dead);
    int (*enrollment_unenroll)(storage *st, const char *id, int64_t now);
    int (*enrollment_touch)(storage *st, const char *id, int64_t now);
    int (*enrollment_list)(storage *st, const st_enrollment_filter *f,
                           int (*fn)(const st_enrollment *e, void *ctx), void *ctx);

    int (*queue_enqueue)(storage *st, const st_command *c);
    int (*queue_next)(storage *st, const char *enrollment_id, int include_notnow, int64_t now,
                      st_command *out);
    int (*queue_report)(storage *st, const char *enrollment_id, const char *uuid, int status,
                        const char *result, size_t result_len, int64_t now);
    int (*command_get)(storage *st, const char *uuid, st_command *out);
    int (*command_list)(storage *st, const char *enrollment_id, int limit,
                        int (*fn)(const st_command *c, void *ctx), void *ctx);
    int (*queue_clear)(storage *st, const char *enrollment_id);
    int (*queue_count)(storage *st, const char *enrollment_id, int64_t *count);
    int (*history_prune)(storage *st, int64_t before, int64_t *deleted);

    int (*audit_add)(storage *st, const st_audit *a);
    int (*audit_count)(storage *st, const char *action, const char *target, int64_t since,
                       int64_t *count);
    int (*audit_list)(storage *st, int64_t before_id, int limit,
                      int (*fn)(const st_audit *a, void *ctx), void *ctx);
    int (*audit_prune)(storage *st, int64_t before, int limit, int64_t *deleted);

    int (*push_enqueue)(storage *st, const char *enrollment_id, int64_t now);
    int (*push_enqueue_filter)(storage *st, int scope, const char *value, int64_t now,
                               int64_t *queued);
    int (*push_sweep)(storage *st, int64_t before, int64_t now, int64_t *queued);
    int (*push_claim)(storage *st, const char *owner, int64_t now, int lease, int limit,
                      int (*fn)(const st_push *p, void *ctx), void *ctx, int *claimed);
    int (*push_done)(storage *st, const char *owner, int64_t now, const st_push_result *r,
                     size_t n);
    int (*push_pending)(storage *st, int64_t *count);

    int (*failure_add)(storage *st, const char *key, int64_t window_start, int64_t *count);
    int (*failure_count)(storage *st, const char *key, int64_t window_start, int64_t *count);
    int (*failure_prune)(storage *st, int64_t before, int64_t *deleted);

    int (*secret_get_or_add)(storage *st, const char *name, const char *candidate, int64_t now,
                             char **value);

    int (*webhook_add)(storage *st, const char *type, const char *data, int64_t now, int64_t *id);
    int (*webhook_claim)(storage *st, const char *owner, int64_t now, int lease, int limit,
                         int (*fn)(const st_webhook_event *e, void *ctx), void *ctx, int *claimed);
    int (*webhook_done)(storage *st, const char *owner, int64_t id, int outcome, int64_t due_at,
                        int attempts);
    int (*webhook_pending)(storage *st, int64_t *count);

    int (*domain_put)(storage *st, const st_domain *d);
    int (*domain_get)(storage *st, const char *name, st_domain *out);
    int (*domain_list)(storage *st, int (*fn)(const st_domain *d, void *ctx), void *ctx);
    int (*oidc_pending_add)(storage *st, const st_oidc_pending *p, int64_t now);
    int (*oidc_pending_take)(storage *st, const char *state_hash, int64_t now,
                             st_oidc_pending *out);
    int (*user_set_idp_subject)(storage *st, int64_t id, const char *idp_subject);

    int (*profile_add)(storage *st, st_profile *p);
    int (*profile_get)(storage *st, int64_t id, st_profile *out);
    int (*profile_list)(storage *st, int (*fn)(const st_profile *p, void *ctx), void *ctx);
    int (*profile_delete)(storage *st, int64_t id);
    int (*profile_replace)(storage *st, st_profile *p);
    int (*app_replace)(storage *st, st_app *a);
    int (*app_add)(storage *st, st_app *a);
    int (*app_get)(storage *st, int64_t id, st_app *out);
    int (*app_list)(storage *st, int (*fn)(const st_app *a, void *ctx), void *ctx);
    int (*app_delete)(storage *st, int64_t id);
    int (*assignment_add)(storage *st, st_assignment *a);
    int (*assignment_get)(storage *st, int64_t id, st_assignment *out);
    int (*assignment_delete)(storage *st, int64_t id);
    int (*assignment_list)(storage *st, int (*fn)(const st_assignment *a, void *ctx), void *ctx);
    int (*assignment_items)(storage *st, const char *email, const char *domain,
                            const char *enrollment_id,
                            int (*fn)(int item_kind, int64_t item_id, void *ctx), void *ctx);
    int (*item_state_put)(storage *st, const st_item_state *s, const char *expect_command);
    int (*item_state_delete)(storage *st, const char *enrollment_id, int item_kind,
                             int64_t item_id);
    int (*item_state_list)(storage *st, const char *enrollment_id,
                           int (*fn)(const st_item_state *s, void *ctx), void *ctx);
    int (*item_state_by_command)(storage *st, const char *command_uuid, st_item_state *out);
    int (*item_state_clear)(storage *st, const char *enrollment_id);
    int (*item_state_enrollments)(storage *st, int item_kind, int64_t item_id,
                                  int (*fn)(const char *enrollment_id, void *ctx), void *ctx);

    int (*challenge_add_renewal)(storage *st, const char *challenge_hash, int64_t user_id,
                                 const char *session_hash, const char *enrollment_id,
                                 int64_t expires_at);
    int (*challenge_consume_bound)(storage *st, const char *challenge_hash, int64_t now,
                                   int64_t *user_id, char **session_hash, char **enrollment_id);
    int (*renewal_get)(storage *st, const char *enrollment_id, st_renewal *out);
    int (*renewal_put)(storage *st, st_renewal *r, int64_t expect_version);
    int (*renewal_candidates)(storage *st, int64_t expires_before, int limit,
                              int (*fn)(const st_renewal *r, void *ctx), void *ctx);
    int (*renewal_due)(storage *st, int64_t now, int64_t errors_since, int limit,
                       int (*fn)(const st_renewal *r, void *ctx), void *ctx);
    int (*identity_rotate)(storage *st, const char *enrollment_id, const char *root_id,
                           const char *old_fp, const char *new_fp, int64_t now, int *renewal_done);
    int (*identity_count_expiring)(storage *st, int64_t after, int64_t before, int64_t *count);

    int (*inventory_reset)(storage *st, const st_inventory *inv);
    int (*inventory_get)(storage *st, const char *enrollment_id, st_inventory *out);
    int (*inventory_claim)(storage *st, const char *enrollment_id, int64_t round, int64_t now,
                           int64_t due_at, const char *platform, const st_command *cmds, size_t n);
    int (*inventory_set_due)(storage *st, const char *enrollment_id, int64_t round, int64_t due_at);
    int (*inventory_due)(storage *st, int64_t now, int64_t defer_to, int limit,
                         int (*fn)(const char *enrollment_id, int64_t round, void *ctx), void *ctx);
    int (*inventory_update)(storage *st, const char *enrollment_id, const st_inventory *in,
                            unsigned groups, int64_t now, st_inventory *old);
    int (*inventory_pending)(storage *st, const char *enrollment_id, int64_t *count);
    int (*inventory_list)(storage *st, const st_inventory_filter *f,
                          int (*fn)(const st_enrollment *e, const st_inventory *inv, void *ctx),
                          void *ctx);

    /* Transactions spanning calls (storage.h): per thread, one level, inner ones savepoints. */
    int (*tx_begin)(storage *st);
    int (*tx_commit)(storage *st);
    void (*tx_rollback)(storage *st);

    int (*job_add)(storage *st, st_job *j);
    int (*job_get)(storage *st, int64_t id, st_job *out);
    int (*job_claim)(storage *st, const char *owner, int64_t now, int lease, st_job *out);
    int (*job_count)(storage *st, const st_job *j, int64_t *count);
    int (*job_page)(storage *st, const st_job *j, const char *after, int limit,
                    int (*fn)(const st_enrollment *e, void *ctx), void *ctx, int *n);
    int (*job_progress)(storage *st, const char *owner, int64_t now, int lease,
                        const st_job_progress *p);
    int (*job_finish)(storage *st, const char *owner, int64_t id, int state, int64_t now);
    int (*job_release)(storage *st, const char *owner, int64_t id);
    int (*job_prune)(storage *st, int64_t before, int64_t *deleted);

    /*
     * Optional test hook (may be NULL): make the backend's Nth subsequent database round trip
     * (statement step, BEGIN, COMMIT; never ROLLBACK) fail as an I/O error would; 0 disarms.
     * It reaches inside multi-statement transactions, which the wrapper-level storage_fail_after
     * cannot, so the conformance suite can prove every transaction is all-or-nothing.
     */
    void (*fail_step_after)(storage *st, int n);
};

/*
 * The base every backend embeds first: `struct sqlite_storage { struct storage base; ... }`.
 * The backend's open function zeroes it, sets ops and returns &base.
 */
struct storage {
    const struct storage_ops *ops;
    /* Test hook: wrapper calls left until the injected failure; 0 = off. See storage_fail_after. */
    atomic_int fail_after;
};

/*
 * A backend constructor as listed in storage.c's table. `dsn` is the string given to
 * storage_open; `location` is what follows "scheme:" (or the whole string for a bare path).
 * Applies migrations. On failure returns NULL with a message in err.
 */
typedef storage *storage_open_fn(const char *dsn, const char *location, char *err, size_t err_len);

/* ---- test hooks (tests/unit/storage/ only) ---- */

/*
 * Makes the Nth subsequent wrapper call on st (n = 1: the very next one) return ST_ERROR
 * without calling the backend; its out-parameters are left zeroed. One shot: the calls after
 * it reach the backend again. n = 0 disarms. Every wrapper except storage_close counts.
 * Thread-safe (an atomic countdown), though tests normally arm it from one thread.
 */
void storage_fail_after(storage *st, int n);

/*
 * Arms the backend-level hook above (ops->fail_step_after). Returns 0, or -1 when the backend
 * has no such hook (the conformance suite then skips its transaction-atomicity cases).
 */
int storage_fail_step_after(storage *st, int n);

#endif
