/*
 * Identity renewal (PROTOCOL.md 10.3, issue 15). A device identity certificate lives
 * scep_cert_days; an expired one is refused on every request, after which Orchard cannot even
 * tell the device to remove its profile. So before it expires (identity_renew_before), the
 * scheduler sends InstallProfile with a replacement of the enrollment profile: the same
 * PayloadIdentifier, payload identifiers and UUIDs and frozen com.apple.mdm keys, and a SCEP
 * payload with a fresh one-time challenge bound to the enrollment (enroll/profile.c). The device
 * installs it, runs SCEP, and its next request comes signed with the new certificate, which was
 * recorded for that enrollment at issue (enroll/scep.c): it is then bound to the enrollment and
 * every other certificate of the enrollment, the old one included, is revoked.
 *
 * The state of each renewal is a row in storage (storage.h st_renewal): it survives restarts,
 * and every step that acts (starting an attempt, recording its failure, giving up) is a
 * compare-and-set on the row's version, so with several instances exactly one acts. An attempt
 * fails when the device answers Error, or has not come back with the new certificate within a
 * day (unfetched, NotNow, SCEP refused); the next one starts after a backoff (1 h, doubling, at
 * most a day), until the old certificate expires: then the renewal is "expired" (audited as
 * identity.expired). Enrollments that are unenrolled or revoked are not renewed ("cancelled"),
 * and those in reauth_failed wait ("held") until their user re-authenticates.
 *
 * Audit events (and so webhooks): identity.renew_start, identity.renewed, identity.renew_failed,
 * identity.expired.
 */
#ifndef ORCHARD_MDM_RENEWAL_H
#define ORCHARD_MDM_RENEWAL_H

#include "app.h"

/* Priority of the renewing InstallProfile: before ordinary commands (0), after an unenrollment
 * (100) and the re-authentication failure policy (auth/reauth.h). */
#define RENEWAL_PRIORITY 50

/* An attempt out this long without the new certificate in use has failed. */
#define RENEWAL_ATTEMPT_WINDOW (24 * 3600)

/*
 * One pass of the scheduler (jobs/jobs.c): starts the renewal of every identity that expires
 * within identity_renew_before, then advances the renewals that are due. Storage failures are
 * logged and retried on the next pass. Safe to run on several instances at once.
 */
void renewal_sweep(struct app *app);

/*
 * The request's certificate fp is not the one bound to enrollment e (a device channel, or a
 * macOS user channel whose device channel is e->parent_id). It is accepted only when it is a
 * certificate Orchard issued for the renewal of that device channel (a renewal challenge of it,
 * or a RenewalReq signed by one of its certificates), to e's user, and not revoked; it is then
 * bound to e and the enrollment's other certificates are revoked (storage_identity_rotate).
 * Returns 0 when accepted, -2 when not (the caller answers 403), ST_ERROR when storage failed.
 */
int renewal_accept_identity(struct app *app, const st_enrollment *e, const char *fp,
                            const char *rid);

#endif
