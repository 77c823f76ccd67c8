#!/usr/bin/python3
"""
Identity renewal (issue 15, PROTOCOL 10.3) against a live server. Device identities live 365 days
(scep_cert_days); identity_renew_before is 60 days. Time is moved with the debug clock, never
waited for: the scheduler runs every second of real time (scheduler_interval 1) on the moved
clock. The simulated device renews for real: it verifies the replacement profile of the
InstallProfile command with openssl, checks it as iOS would (same identifier, frozen keys),
runs Debian's scepclient with the profile's new challenge, and signs its next requests with the
new certificate.

Covered: a renewal before expiry, end to end (and the old certificate refused afterwards); a
failed attempt retried (no answer, NotNow, SCEP refused) with a new challenge each time and the
spent one refused; a renewal in progress surviving a restart; a device that never comes back
(attempts stop at expiry, the admin sees it); no renewal for enrollments that are revoked,
unenrolled or failed re-authentication; Alice's renewal certificate never accepted for Bob's
enrollment (or another of Alice's); RenewalReq still works and retires the old certificate; a
webhook for each renewal and failure; two instances on one PostgreSQL database renewing exactly
once (ORCHARD_TEST_PG_DSN, as test_postgres.py).
"""
import copy
import hashlib
import http.server
import json
import os
import plistlib
import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "sim"))
import device as sim  # noqa: E402
import orchard  # noqa: E402
import pki  # noqa: E402
from orchard import Server, eq, ok, on_exit, status, test  # noqa: E402

ALICE = ("alice@example.com", "alice@appleid.example.com", "alice-Pa55word!")
BOB = ("bob@example.com", "bob@appleid.example.com", "bob-Pa55word!")
DAY = 86400
FAST = {"ORCHARD_DEBUG_CLOCK": "true", "ORCHARD_SCHEDULER_INTERVAL": "1"}
PG_DSN = os.environ.get("ORCHARD_TEST_PG_DSN") or ""


# --- helpers -------------------------------------------------------------------------------------

def server(name, env=None, start=True):
    s = Server(name=name, env=dict(FAST, **(env or {})))
    s.add_user(*ALICE)
    s.add_user(*BOB)
    if start:
        s.start()
    return s


def new_device(s, who=ALICE, **kw):
    kw.setdefault("auto_reauth", False)
    return sim.Device(s.url, who[0], who[2], ca_file=s.ca_file, signing_ca=s.path("signing", "ca.pem"),
                      workdir=tempfile.mkdtemp(prefix="dev-", dir=s.tmp), **kw)


def enrolled(s, who=ALICE, **kw):
    d = new_device(s, who, **kw).run_enrollment()
    eq(d.run_commands(), [], "a new enrollment has nothing queued")
    return d


def fingerprint(cert_path):
    return hashlib.sha256(pki.cert_der(pki.load_cert(cert_path))).hexdigest()


def server_now(s):
    return s.api("POST", "/api/v1/debug/clock", {"advance": 0}).json()["now"]


def enrollment(s, eid):
    r = s.api("GET", "/api/v1/enrollments/%s" % eid)
    status(r, 200, "GET enrollment %s" % eid)
    return r.json()


def identity(s, d):
    j = enrollment(s, d.enrollment_id)
    ok("identity" in j, "GET /api/v1/enrollments/{id} shows the identity: %r" % j)
    return j["identity"]


def renewal(s, d):
    return identity(s, d)["renewal"]


def commands(s, d, request_type="InstallProfile"):
    r = s.api("GET", "/api/v1/enrollments/%s/commands" % d.enrollment_id)
    status(r, 200, "GET commands")
    return [c for c in r.json()["commands"] if c["request_type"] == request_type]


def audit(s, action, target):
    r = s.api("GET", "/api/v1/audit")
    status(r, 200, "GET audit")
    return [e for e in r.json()["events"] if e["action"] == action and e["target"] == target]


def metric(s, name):
    r = s.get("/metrics")
    status(r, 200, "GET /metrics")
    for line in r.text.splitlines():
        if line.startswith(name + " "):
            return int(line.split()[1])
    raise AssertionError("/metrics has no %s:\n%s" % (name, r.text[:2000]))


def wait_for(pred, what, s, timeout=20, why=None):
    """Polls pred() while the scheduler (every second of real time) runs on the moved clock.
    why(), if given, says what was seen instead."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError("timed out waiting for %s%s\n%s" % (what, " (%r)" % (why(),) if why else "",
                                                              s.log_tail(30)))


def settle():
    """Lets the scheduler run a few passes (to show that it does NOT act)."""
    time.sleep(2.5)


def renewal_is(s, d, state, attempts=None):
    def check():
        r = renewal(s, d)
        return r if r and r["state"] == state and (attempts is None or r["attempts"] == attempts) else None
    return wait_for(check, "renewal %s (attempts %s) of %s" % (state, attempts, d.enrollment_id), s)


def refused_with(d, cert_path, key_path, what):
    """An Idle signed (and TLS-authenticated) with another certificate must get 403."""
    body = plistlib.dumps({"Status": "Idle", "EnrollmentID": d.enrollment_id})
    r = d.connect(body, signature=d.sign(body, cert=pki.load_cert(cert_path), key=pki.load_key(key_path)),
                  client_cert=(cert_path, key_path), reauth=False)
    eq(r.status, 403, what, r)


def next_install_profile(d):
    """The device's Idle: the next command must be the replacement InstallProfile."""
    cmd = d.idle()
    ok(cmd is not None and cmd["Command"]["RequestType"] == "InstallProfile",
       "expected the renewing InstallProfile, got %r" % (cmd and cmd["Command"]["RequestType"]))
    return cmd


# --- a webhook receiver (HTTPS with the server's own TLS identity) ------------------------------

class Hooks:
    def __init__(self, s):
        self.events = []
        self.cond = threading.Condition()
        hooks = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                with hooks.cond:
                    hooks.events.append(body)
                    hooks.cond.notify_all()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(s.path("tls", "server.pem"), s.path("tls", "server.key"))
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        on_exit(self.httpd.shutdown)
        self.env = {"ORCHARD_WEBHOOK_URL": "https://127.0.0.1:%d/hook" % self.httpd.server_address[1],
                    "ORCHARD_WEBHOOK_SECRET": secrets.token_hex(16), "ORCHARD_WEBHOOK_CA_FILE": s.ca_file}

    def wait(self, etype, target, n=1, timeout=15):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                got = [e for e in self.events if e.get("type") == etype and e["data"].get("target") == target]
                if len(got) >= n:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("no %d %s webhook(s) for %s; got %r"
                                         % (n, etype, target, [e.get("type") for e in self.events]))
                self.cond.wait(min(left, 0.2))


# --- renewal before expiry -----------------------------------------------------------------------

@test
def before_expiry_the_device_renews_for_real_and_its_next_idle_uses_the_new_certificate():
    s = server("renew", start=False)
    hooks = Hooks(s)
    s.start(env=hooks.env)
    d = enrolled(s)
    eid = d.enrollment_id
    original = copy.deepcopy(d.profile)
    old_cert, old_key = d.cert_path, d.key_path
    ident = identity(s, d)
    eq(ident["fingerprint"], fingerprint(old_cert), "the identity shown is the enrolled certificate")
    ok(abs(ident["not_after"] - server_now(s) - 365 * DAY) < DAY, "a new identity lives 365 days: %r" % ident)
    eq(ident["renewal"], None, "no renewal yet")
    eq(ident["expired"], False, "not expired")

    # 300 days on, 65 days are left: outside identity_renew_before (60 days), nothing happens.
    s.advance_clock(300 * DAY)
    settle()
    eq(renewal(s, d), None, "no renewal 65 days before expiry")
    eq(d.idle(), None, "nothing queued 65 days before expiry")
    eq(metric(s, "orchard_identities_expiring_30d"), 0, "not within 30 days yet")

    # 10 days later (55 left) the scheduler sends the replacement profile.
    s.advance_clock(10 * DAY)
    r = renewal_is(s, d, "pending", attempts=1)
    eq(r["old_fingerprint"], fingerprint(old_cert), "the renewal is of the enrolled certificate")
    eq(len(audit(s, "identity.renew_start", eid)), 1, "identity.renew_start audited once")
    hooks.wait("identity.renew_start", eid)

    renewed = []
    cmds = d.run_commands(responder=d.renewal_responder(on_renewal=renewed.append))
    eq([c["Command"]["RequestType"] for c in cmds], ["InstallProfile"], "exactly the InstallProfile arrives")
    eq(len(renewed), 1, "the device installed the replacement and ran SCEP")
    new = renewed[0]

    # The replacement, as PROTOCOL 10.3 wants it: same identifiers and UUIDs, frozen keys
    # identical, a fresh challenge.
    eq(new["PayloadIdentifier"], "io.orchard.enrollment", "top-level PayloadIdentifier")
    om, nm = d.payload_of(original, "com.apple.mdm"), d.payload_of(new, "com.apple.mdm")
    os_, ns = d.payload_of(original, "com.apple.security.scep"), d.payload_of(new, "com.apple.security.scep")
    for k in ("PayloadIdentifier", "PayloadUUID"):
        eq(ns[k], os_[k], "SCEP payload %s (updated in place)" % k)
        eq(nm[k], om[k], "MDM payload %s" % k)
    for k in ("ServerURL", "CheckInURL", "Topic", "IdentityCertificateUUID", "AssignedManagedAppleID",
              "EnrollmentMode", "ServerCapabilities", "SignMessage", "CheckOutWhenRemoved"):
        eq(nm.get(k), om.get(k), "frozen com.apple.mdm key %s" % k)
    ok("AccessRights" not in nm, "no AccessRights in a BYOD profile")
    ok(ns["PayloadContent"]["Challenge"] != os_["PayloadContent"]["Challenge"], "a new one-time challenge")
    ok(d.cert_path != old_cert and fingerprint(d.cert_path) != fingerprint(old_cert), "a new certificate")

    # The next Idle is signed with the new certificate and accepted; the identity is replaced.
    eq(d.idle(), None, "Idle with the new certificate")
    ident = identity(s, d)
    eq(ident["fingerprint"], fingerprint(d.cert_path), "the enrollment's identity is the new certificate")
    ok(abs(ident["not_after"] - server_now(s) - 365 * DAY) < DAY, "the new identity lives 365 days: %r" % ident)
    eq(ident["renewal"]["state"], "done", "renewal done")
    eq(ident["renewal"]["new_fingerprint"], fingerprint(d.cert_path), "renewal names the new certificate")
    eq(len(audit(s, "identity.renewed", eid)), 1, "identity.renewed audited once")
    hooks.wait("identity.renewed", eid)
    eq([c["status"] for c in commands(s, d)], ["acknowledged"], "the InstallProfile is acknowledged")

    # The old certificate is retired: refused on the command channel and at check-in.
    refused_with(d, old_cert, old_key, "Idle with the old certificate after the renewal")
    tu = plistlib.dumps(d.message("TokenUpdate", Token=d.push_token, PushMagic=d.push_magic))
    r = d.checkin(tu, signature=d.sign(tu, cert=pki.load_cert(old_cert), key=pki.load_key(old_key)),
                  client_cert=(old_cert, old_key), reauth=False)
    eq(r.status, 403, "TokenUpdate with the old certificate", r)
    eq(d.idle(), None, "the new certificate keeps working")

    # A year later the new identity is renewed in turn (the next cycle), once.
    s.advance_clock(310 * DAY)
    renewal_is(s, d, "pending", attempts=1)
    d.run_commands(responder=d.renewal_responder())
    eq(d.idle(), None, "Idle with the third certificate")
    eq(renewal(s, d)["state"], "done", "second renewal done")
    eq(len(audit(s, "identity.renewed", eid)), 2, "two renewals in two years")
    d.cleanup()


@test
def renewalreq_still_renews_bound_to_the_signers_enrollment_and_retires_the_old_certificate():
    s = server("renewalreq")
    d = enrolled(s)
    old = d.cert_path + ".before", d.key_path
    shutil.copy(d.cert_path, old[0])
    d.scep_renew()  # RenewalReq signed with the current identity (same key, new certificate)
    eq(d.idle(), None, "Idle with the RenewalReq certificate")
    refused_with(d, old[0], old[1], "the certificate it replaced")
    eq(identity(s, d)["fingerprint"], fingerprint(d.cert_path), "bound at first use")
    eq(len(audit(s, "identity.renewed", d.enrollment_id)), 1, "identity.renewed audited")


# --- failed attempts -----------------------------------------------------------------------------

@test
def a_failed_attempt_is_retried_with_a_new_challenge_until_the_device_renews():
    s = server("retry", start=False)
    hooks = Hooks(s)
    s.start(env=hooks.env)
    d = enrolled(s)
    eid = d.enrollment_id
    old_cert, old_key = d.cert_path, d.key_path
    s.advance_clock(310 * DAY)
    renewal_is(s, d, "pending", attempts=1)
    first = commands(s, d)
    eq(len(first), 1, "one InstallProfile")

    # 1. The device does not answer within a day: the attempt fails (its command is cancelled),
    # and after the backoff (1 h) a new one starts.
    s.advance_clock(DAY + 60)
    r = wait_for(lambda: (renewal(s, d) or {}).get("last_error") == "not_fetched" and renewal(s, d),
                 "the first attempt to fail", s)
    eq(r["attempts"], 1, "no new attempt before the backoff")
    eq(commands(s, d)[0]["status"], "error", "the unanswered InstallProfile is cancelled")
    hooks.wait("identity.renew_failed", eid)
    s.advance_clock(3600)
    renewal_is(s, d, "pending", attempts=2)

    # 2. NotNow: the attempt waits for its day, fails, and the next one comes after 2 h.
    cmd = next_install_profile(d)
    eq(d.report(cmd["CommandUUID"], "NotNow"), None, "NotNow ends the exchange")
    s.advance_clock(DAY + 60)
    wait_for(lambda: (renewal(s, d) or {}).get("last_error") == "not_now", "the NotNow attempt to fail", s)
    s.advance_clock(2 * 3600)
    renewal_is(s, d, "pending", attempts=3)

    # 3. SCEP refused (the device spoiled the challenge): Error with an ErrorChain fails the
    # attempt at once, without waiting for its day.
    cmd = next_install_profile(d)
    spent = d.profile_from_install(cmd)
    spent_challenge = d.payload_of(spent, "com.apple.security.scep")["PayloadContent"]["Challenge"]
    status_, keys = d.renewal_responder(challenge="x" * 43)(cmd)
    eq(status_, "Error", "scepclient with a wrong challenge gets no certificate")
    eq(d.report(cmd["CommandUUID"], status_, **keys), None, "the Error is recorded")
    r = wait_for(lambda: (renewal(s, d) or {}).get("last_error", "") .startswith("device_error") and renewal(s, d),
                 "the refused SCEP to fail the attempt", s)
    ok("MCSCEPErrorDomain 22013" in r["last_error"], "last_error carries the device's error: %r" % r)
    eq(len(audit(s, "identity.renew_failed", eid)), 3, "three failures audited")
    hooks.wait("identity.renew_failed", eid, n=3)
    # The challenge of a failed attempt is spent.
    sim_dir = tempfile.mkdtemp(dir=d.workdir)
    p = d.run_scepclient(sim_dir, challenge=spent_challenge)
    ok(not os.path.exists(os.path.join(sim_dir, "cert.pem")) or p.returncode != 0,
       "the failed attempt's challenge issues nothing")

    # 4. After the backoff (4 h) the fourth attempt goes out, and this time the device renews.
    s.advance_clock(4 * 3600)
    renewal_is(s, d, "pending", attempts=4)
    d.run_commands(responder=d.renewal_responder())
    eq(d.idle(), None, "Idle with the new certificate")
    r = renewal(s, d)
    eq((r["state"], r["attempts"]), ("done", 4), "renewed at the fourth attempt")
    refused_with(d, old_cert, old_key, "the old certificate after the renewal")
    eq(len(audit(s, "identity.renew_start", eid)), 4, "four attempts audited")
    hooks.wait("identity.renewed", eid)


@test
def a_renewal_in_progress_survives_a_restart_and_is_not_started_twice():
    s = server("restart")
    d = enrolled(s)
    s.advance_clock(310 * DAY)
    r = renewal_is(s, d, "pending", attempts=1)
    s.restart()  # the debug clock starts again from the wall clock
    s.advance_clock(310 * DAY + 60)
    settle()
    after = renewal(s, d)
    eq((after["state"], after["attempts"], after["started_at"]), ("pending", 1, r["started_at"]),
       "the same attempt after the restart")
    eq(len(commands(s, d)), 1, "still one InstallProfile")
    d.run_commands(responder=d.renewal_responder())
    eq(d.idle(), None, "Idle with the new certificate")
    eq(renewal(s, d)["state"], "done", "renewed after the restart")


# --- a device that never comes back --------------------------------------------------------------

@test
def a_device_that_never_comes_back_attempts_stop_at_expiry_and_the_admin_sees_it():
    s = server("expire", start=False)
    hooks = Hooks(s)
    s.start(env=hooks.env)
    d = enrolled(s)
    eid = d.enrollment_id
    eq(metric(s, "orchard_identities_expiring_30d"), 0, "fresh identity")
    s.advance_clock(340 * DAY)  # 25 days left
    eq(metric(s, "orchard_identities_expiring_30d"), 1, "the gauge counts it within 30 days")
    renewal_is(s, d, "pending")
    # The device stays silent: attempts fail and are retried, a day at a time.
    for _ in range(3):
        s.advance_clock(DAY + 3 * 3600)
        time.sleep(1.5)
    r = renewal(s, d)
    ok(r["state"] == "pending" and r["attempts"] >= 2, "retried while the identity is valid: %r" % r)
    tries = r["attempts"]
    s.advance_clock(25 * DAY)  # past the expiry
    r = renewal_is(s, d, "expired")
    ident = identity(s, d)
    eq(ident["expired"], True, "the identity is shown expired")
    ok(ident["not_after"] <= server_now(s), "not_after in the past")
    eq(len(audit(s, "identity.expired", eid)), 1, "identity.expired audited")
    hooks.wait("identity.expired", eid)
    eq(metric(s, "orchard_identities_expired"), 1, "the gauge counts the expired identity")
    eq(metric(s, "orchard_identities_expiring_30d"), 0, "no longer expiring: expired")
    # Nothing more is tried, and nothing is left for the device.
    s.advance_clock(10 * DAY)
    settle()
    eq(renewal(s, d)["attempts"], max(tries, r["attempts"]), "no attempt after the expiry")
    eq([c["status"] for c in commands(s, d) if c["status"] in ("queued", "notnow")], [],
       "no InstallProfile left queued")
    r = d.connect(plistlib.dumps({"Status": "Idle", "EnrollmentID": eid}), reauth=False)
    eq(r.status, 403, "the expired identity is refused", r)


# --- who may renew -------------------------------------------------------------------------------

@test
def no_renewal_for_revoked_unenrolled_or_failed_reauthentication_and_a_held_one_resumes():
    s = server("policy", env={"ORCHARD_REAUTH_GRACE": "3600"})
    revoked, gone, failed = enrolled(s), enrolled(s), enrolled(s, auto_reauth=True)
    status(s.api("POST", "/api/v1/enrollments/%s/revoke" % revoked.enrollment_id), 202, "revoke")
    gone.checkout()
    status(s.api("POST", "/api/v1/enrollments/%s/reauthenticate" % failed.enrollment_id), 202, "reauth")
    s.advance_clock(2 * 3600)  # the grace runs out: reauth_failed
    wait_for(lambda: enrollment(s, failed.enrollment_id)["auth_state"] == "reauth_failed", "reauth_failed", s)

    s.advance_clock(310 * DAY)
    r = renewal_is(s, failed, "held")
    eq(r["last_error"], "reauth_failed", "held because of the failed re-authentication")
    settle()
    eq(renewal(s, revoked), None, "a revoked enrollment is not renewed")
    eq(renewal(s, gone), None, "an unenrolled enrollment is not renewed")
    for d in (revoked, gone, failed):
        eq(commands(s, d), [], "no InstallProfile for %s" % d.enrollment_id)

    # The user signs in again: the held renewal starts within the hour and completes.
    eq(failed.idle(), None, "the device re-authenticates (401, sign-in, retry)")
    eq(failed.reauth_count, 1, "one sign-in")
    eq(enrollment(s, failed.enrollment_id)["auth_state"], "active", "active again")
    s.advance_clock(3600)
    renewal_is(s, failed, "pending", attempts=1)
    failed.run_commands(responder=failed.renewal_responder())
    eq(failed.idle(), None, "Idle with the new certificate")
    eq(renewal(s, failed)["state"], "done", "renewed after the re-authentication")


@test
def a_renewal_challenge_is_refused_once_the_enrollment_is_revoked():
    s = server("revoked-mid")
    d = enrolled(s)
    s.advance_clock(310 * DAY)
    renewal_is(s, d, "pending", attempts=1)
    cmd = next_install_profile(d)
    status(s.api("POST", "/api/v1/enrollments/%s/revoke" % d.enrollment_id), 202, "revoke")
    orchard.raises(sim.ScepError, d.renew_identity, cmd)  # scepclient gets a CertRep FAILURE
    refusals = audit(s, "scep.refuse", d.enrollment_id)
    eq([e["detail"] for e in refusals], ["revoked"], "the renewal challenge is refused: revoked")
    s.advance_clock(DAY + 60)  # at the attempt's deadline the renewal ends
    r = renewal_is(s, d, "cancelled")
    eq(r["last_error"], "revoked", "cancelled because the enrollment was revoked")


@test
def alices_renewal_certificate_is_never_accepted_for_bobs_enrollment():
    s = server("owners")
    alice, bob = enrolled(s, ALICE), enrolled(s, BOB)
    alice2 = enrolled(s, ALICE)  # Alice's second device
    s.advance_clock(310 * DAY)
    renewal_is(s, alice, "pending", attempts=1)
    renewal_is(s, bob, "pending", attempts=1)
    # Alice's device runs SCEP with its renewal challenge, but does not use the certificate yet.
    cmd = next_install_profile(alice)
    old_cert, old_key = alice.cert_path, alice.key_path
    alice.renew_identity(cmd)
    a2_cert, a2_key = alice.cert_path, alice.key_path
    alice.use_identity(old_cert, old_key)

    bob_fp = identity(s, bob)["fingerprint"]
    refused_with(bob, a2_cert, a2_key, "Bob's Idle with Alice's renewal certificate")
    msg = plistlib.dumps(bob.message("Authenticate", BuildVersion=bob.build_version, OSVersion=bob.os_version,
                                     ProductName=bob.product))
    r = bob.checkin(msg, signature=bob.sign(msg, cert=pki.load_cert(a2_cert), key=pki.load_key(a2_key)),
                    client_cert=(a2_cert, a2_key), reauth=False)
    eq(r.status, 403, "Bob's Authenticate with Alice's renewal certificate", r)
    refused_with(alice2, a2_cert, a2_key, "Alice's other enrollment with this enrollment's renewal")
    eq(identity(s, bob)["fingerprint"], bob_fp, "Bob's identity unchanged")
    for other in (bob, alice2):  # each still gets its own renewal with its own certificate
        cmd_o = other.idle()
        eq(cmd_o and cmd_o["CommandUUID"], commands(s, other)[0]["command_uuid"], "its own InstallProfile")

    # Alice's device then uses it: accepted for her enrollment, the one it was issued for.
    alice.use_identity(a2_cert, a2_key)
    eq(alice.report(cmd["CommandUUID"], "Acknowledged"), None, "Alice's renewal certificate on her enrollment")
    eq(identity(s, alice)["fingerprint"], fingerprint(a2_cert), "bound to Alice's enrollment")
    refused_with(bob, a2_cert, a2_key, "still refused for Bob after Alice used it")
    refused_with(alice, old_cert, old_key, "Alice's old certificate is retired")


@test
def a_fresh_certificate_of_the_same_user_is_not_a_renewal_of_her_enrollment():
    # Until issue 15 any unbound certificate of the same user was taken for a renewal and bound.
    s = server("same-user")
    alice = enrolled(s, ALICE)
    other = new_device(s, ALICE)
    other.discover()
    other.enroll_unauthenticated()
    other.sign_in()
    other.fetch_profile()
    other.verify_profile()
    fresh_cert, fresh_key = other.scep_enroll()  # a first-enrollment certificate, never used
    refused_with(alice, fresh_cert, fresh_key, "Alice's enrollment with a fresh certificate of hers")
    eq(alice.idle(), None, "her own certificate still works")
    eq(identity(s, alice)["fingerprint"], fingerprint(alice.cert_path), "her enrollment keeps its identity")
    other.authenticate()  # the fresh certificate is for a new enrollment, and works there
    other.token_update()


# --- two instances on PostgreSQL -----------------------------------------------------------------

def psql(dsn, sql):
    p = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-c", sql],
                       capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise AssertionError("psql %r failed (%d): %s" % (sql, p.returncode, p.stderr.strip()))
    return [line for line in p.stdout.splitlines() if line]


def dsn_for(base, dbname):
    scheme, rest = base.split("://", 1)
    cut = min([i for i in (rest.find("/"), rest.find("?")) if i >= 0] or [len(rest)])
    auth, tail = rest[:cut], rest[cut:]
    if tail.startswith("/"):
        q = tail.find("?")
        tail = tail[q:] if q >= 0 else ""
    return "%s://%s/%s%s" % (scheme, auth, dbname, tail)


SYNTHETIC = 300  # enrollments written straight into the database: enough work that both
                 # instances' scheduler passes overlap and race for the same rows


@test
def two_instances_on_one_postgresql_database_renew_each_identity_exactly_once():
    ok(PG_DSN.startswith(("postgres://", "postgresql://")),
       "PostgreSQL was not started: ORCHARD_TEST_PG_DSN is not set (eval \"$(scripts/test-pg.sh start)\")")
    dbname = "orchard_renew_" + secrets.token_hex(6)
    psql(PG_DSN, "CREATE DATABASE %s" % dbname)
    on_exit(lambda: psql(PG_DSN, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % dbname))
    dsn = dsn_for(PG_DSN, dbname)
    a = Server(init=False, name="renew-pg-a", env=FAST)
    a.cli("init", "--data", a.data, "--public-url", a.url, "--domain", "example.com", "--storage", dsn)
    a.add_user(*ALICE)
    a.add_user(*BOB)
    a.start()
    b = Server(init=False, name="renew-pg-b", env=FAST)  # the same data directory: a second host
    b.data = a.data
    b._api_key = a.api_key
    b.start()
    devices = [enrolled(a, ALICE), enrolled(b, BOB)]
    # Many more enrolled identities, 350 days from expiry, each needing its own renewal.
    now = server_now(a)
    psql(dsn, "INSERT INTO enrollments (id, type, user_id, cert_fingerprint, enrolled_at, last_seen_at) "
              "SELECT 'SYNTH-' || g, 1, u.id, 'synthfp' || g, %d, %d FROM generate_series(1, %d) g, "
              "users u WHERE u.email = 'bob@example.com'" % (now, now, SYNTHETIC))
    psql(dsn, "INSERT INTO certs (fingerprint, serial, user_id, session_hash, enrollment_id, not_after, "
              "issued_at) SELECT 'synthfp' || g, 'synth' || g, u.id, 'synthsession', 'SYNTH-' || g, %d, %d "
              "FROM generate_series(1, %d) g, users u WHERE u.email = 'bob@example.com'"
              % (now + 350 * DAY, now, SYNTHETIC))
    # Both clocks move together: the real devices are 55 days from expiry, the synthetic ones 40.
    threads = [threading.Thread(target=x.advance_clock, args=(310 * DAY,)) for x in (a, b)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for d in devices:
        renewal_is(a, d, "pending", attempts=1)
    total = SYNTHETIC + len(devices)
    wait_for(lambda: int(psql(dsn, "SELECT count(*) FROM identity_renewals WHERE attempts = 1")[0]) == total,
             "every identity to have its first attempt", a, timeout=120)
    settle()
    # Exactly one attempt, one InstallProfile and one audited start per identity.
    eq(psql(dsn, "SELECT count(*) FROM identity_renewals WHERE attempts <> 1 OR state <> 'pending'"), ["0"],
       "every renewal has exactly one attempt")
    eq(psql(dsn, "SELECT count(*), count(DISTINCT enrollment_id) FROM commands "
                 "WHERE request_type = 'InstallProfile'"), ["%d|%d" % (total, total)],
       "one InstallProfile per identity, none twice")
    eq(psql(dsn, "SELECT count(*), count(DISTINCT target) FROM audit WHERE action = 'identity.renew_start'"),
       ["%d|%d" % (total, total)], "one identity.renew_start per identity")
    who = set()
    for x in (a, b):
        who |= {l.split("event=renewal_scheduled ")[1].split()[0] for l in x.log_text().splitlines()
                if "event=renewal_scheduled " in l}
    eq(len(who), total, "every renewal scheduled once, by one instance or the other")
    # A day later every first attempt has failed unanswered, at the same moment on both
    # instances; an hour later every second attempt starts: both race again, twice.
    for step, state in ((DAY + 60, "attempts = 1 AND command_uuid IS NULL AND last_error = 'not_fetched'"),
                        (3600, "attempts = 2 AND command_uuid IS NOT NULL")):
        threads = [threading.Thread(target=x.advance_clock, args=(step,)) for x in (a, b)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        wait_for(lambda: int(psql(dsn, "SELECT count(*) FROM identity_renewals WHERE " + state)[0]) == total,
                 "every renewal to reach %s" % state, a, timeout=120,
                 why=lambda: psql(dsn, "SELECT state, attempts, command_uuid IS NULL, last_error, count(*) "
                                       "FROM identity_renewals GROUP BY 1, 2, 3, 4"))
    wait_for(lambda: int(psql(dsn, "SELECT count(*) FROM identity_renewals WHERE attempts = 2 AND "
                                   "command_uuid IS NOT NULL")[0]) == total,
             "every identity to have its second attempt", a, timeout=120,
             why=lambda: psql(dsn, "SELECT state, attempts, command_uuid IS NULL, last_error, count(*) "
                                   "FROM identity_renewals GROUP BY 1, 2, 3, 4"))
    settle()
    eq(psql(dsn, "SELECT count(*), count(DISTINCT target) FROM audit WHERE action = 'identity.renew_failed'"),
       ["%d|%d" % (total, total)], "one failure recorded per identity")
    eq(psql(dsn, "SELECT count(*), count(DISTINCT enrollment_id) FROM commands "
                 "WHERE request_type = 'InstallProfile'"), ["%d|%d" % (total, total)],
       "one InstallProfile queued per identity: the second attempt's")
    eq(psql(dsn, "SELECT count(*), count(DISTINCT enrollment_id), min(status), max(status) FROM command_history "
                 "WHERE request_type = 'InstallProfile'"), ["%d|%d|3|3" % (total, total)],
       "the first attempt's InstallProfile cancelled, once per identity")
    eq(psql(dsn, "SELECT count(*) FROM identity_renewals WHERE attempts <> 2 OR state <> 'pending'"), ["0"],
       "every renewal has exactly two attempts")
    # The real devices renew through either instance; each renewal completes once.
    for d in devices:
        own, other = (a, b) if d.server_url.startswith(a.url) else (b, a)
        d.run_commands(responder=d.renewal_responder())
        d.server_url = d.server_url.replace(own.url, other.url)
        eq(d.idle(), None, "Idle with the new certificate on the other instance")
        eq(renewal(other, d)["state"], "done", "renewed")
        eq(len(audit(other, "identity.renewed", d.enrollment_id)), 1, "renewed once")


@test
def servers_stop_cleanly():
    for srv in Server.live():
        eq(srv.stop(), 0, "exit code of orchard serve")


if __name__ == "__main__":
    orchard.main()
