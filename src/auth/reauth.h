/*
 * Ongoing authentication (PROTOCOL.md 7 and 14): the server decides a user must prove who they
 * are again. Their session tokens are revoked, the next check-in or connect of their user
 * enrollments gets 401 + the apple-as-web challenge, and the device runs the sign-in flow again
 * and retries with the new token (bound in mdm/request.c, which calls reauth_completed).
 *
 * Policy (config reauth_interval, reauth_grace, reauth_max_failures, reauth_failure_action):
 * tokens older than the interval are invalidated; a user who has not re-authenticated within
 * the grace period, or failed sign-in too often since the demand, gets the failure action —
 * none, remove-sensitive (remove every profile/app installed by a command marked sensitive;
 * re-installed after a later successful re-authentication) or unenroll (RemoveProfile of the
 * enrollment profile). State changes are compare-and-set in storage, so with several Orchard
 * instances exactly one runs each action.
 */
#ifndef ORCHARD_AUTH_REAUTH_H
#define ORCHARD_AUTH_REAUTH_H

#include "app.h"

/* Priority of commands the policy enqueues: ahead of everything else in the queue. */
#define REAUTH_ENFORCEMENT_PRIORITY 1000

/*
 * Invalidates the enrollment's tokens and marks it reauth_required. Only user enrollments can
 * re-authenticate: ST_ECONFLICT for others (and for revoked or ended ones), ST_ENOTFOUND if
 * unknown, 0 on success.
 */
int reauth_require(struct app *app, const char *enrollment_id, const char *actor, const char *why);
/* reauth_require for every enrolled user enrollment of the user; returns how many, or -1. */
int reauth_require_user(struct app *app, int64_t user_id, const char *actor, const char *why);
/*
 * A new token of the same user was bound after a 401 (e as it was before): marks the
 * enrollment active again and re-installs what the remove-sensitive action removed.
 */
void reauth_completed(struct app *app, const st_enrollment *e, const char *method);
/*
 * 1 if a device whose token is no longer valid may still fetch commands: after the failure
 * action (remove-sensitive or unenroll) the removals must reach it; everything else waits for
 * a successful re-authentication.
 */
int reauth_enforcing(const struct app *app, const st_enrollment *e);
/* One pass of the policy over every user enrollment (the scheduler calls it). */
void reauth_sweep(struct app *app);

/*
 * Re-authentication tickets: only failures in a re-authentication the device started count
 * towards reauth_max_failures, never anonymous guesses at someone's identifier.
 *
 * The 401 that demands re-authentication (mdm/request.c via session_challenge_reauth) carries
 * `?reauth=<ticket>` in its challenge url; the device opens that url with `user-identifier`
 * appended, and the sign-in page carries the ticket through its form (or the pending federated
 * sign-in). The ticket is HMAC-SHA256(key, enrollment id, auth_state_since) in base64url: no
 * write per 401, the same on every instance (the key is generated once and kept in the store,
 * server_secrets "reauth_ticket_key"), and retired when the demand ends or a new one starts
 * (auth_state_since changes). A failed sign-in counts (audit `reauth.fail`, target = the
 * enrollment) only when its ticket is that of an enrollment of the identifier's user that is
 * in reauth_required; everything else is an ordinary `signin.fail`.
 */
#define REAUTH_TICKET_PARAM "reauth" /* query parameter and form field */

/* Loads (or creates, first instance wins) the ticket key into app. 0, or -1 with err. */
int reauth_key_load(struct app *app, char *err, size_t err_len);
/* The ticket of e's current state into out (SECRET_TOKEN_LEN + 1 bytes); "" without a key. */
void reauth_ticket(const struct app *app, const st_enrollment *e, char *out);
/*
 * The enrollment whose pending re-authentication `ticket` (may be NULL) belongs to, if it is a
 * user enrollment of the identifier's user in reauth_required: its id (new string), else NULL.
 */
char *reauth_ticket_owner(struct app *app, const char *identifier, const char *ticket);
/* Records a failed sign-in of that re-authentication (`reauth.fail`; counted by the policy). */
void reauth_record_failure(struct app *app, const char *enrollment_id, const char *detail);
/* reauth_ticket_owner + reauth_record_failure; returns 1 if a failure was recorded. */
int reauth_note_failure(struct app *app, const char *identifier, const char *ticket,
                        const char *detail);

#endif
