#!/usr/bin/python3
"""
Issue 5 (ongoing authentication) end to end with the device simulator: the server invalidates a
session token (admin API, CLI, policy by age), the device's next request gets 401 with the
apple-as-web challenge, the simulated user signs in again through the web flow, the device
repeats the request with the new token and carries on: the command pending before the 401 is
delivered exactly once, the old token is refused. The failure policy (grace expiry, too many
failed sign-ins) applies remove-sensitive (and re-installs after a later re-authentication) or
unenroll. A different user's token is refused; CheckOut with an invalidated token is accepted;
device enrollments (UDID) never see a 401. Time is moved with the debug clock, never slept.
"""
import base64
import os
import plistlib
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "sim"))
import device as sim  # noqa: E402
import orchard  # noqa: E402
from orchard import Server, eq, ok, status, test  # noqa: E402

ALICE = ("alice@example.com", "alice@appleid.example.com", "alice-Pa55word!")
BOB = ("bob@example.com", "bob@appleid.example.com", "bob-Pa55word!")
FAST = {"ORCHARD_DEBUG_CLOCK": "true", "ORCHARD_SCHEDULER_INTERVAL": "1"}
_servers = {}


def server(action="none", **env):
    """One server per policy, shared by the tests that use it."""
    key = (action, tuple(sorted(env.items())))
    if key not in _servers:
        s = Server(name="reauth-" + action)
        s.add_user(*ALICE)
        s.add_user(*BOB)
        s.start(env=dict(FAST, ORCHARD_REAUTH_FAILURE_ACTION=action, **env))
        _servers[key] = s
    return _servers[key]


def device(s, who=ALICE, auto_reauth=False):
    return sim.Device(s.url, who[0], who[2], ca_file=s.ca_file, signing_ca=s.path("signing", "ca.pem"),
                      workdir=tempfile.mkdtemp(prefix="dev-", dir=s.tmp), auto_reauth=auto_reauth)


def enrolled(s, who=ALICE, **kw):
    return device(s, who, **kw).run_enrollment()


def enqueue(s, d, body):
    r = s.api("POST", "/api/v1/enrollments/%s/commands" % d.enrollment_id, body)
    status(r, 201, "enqueue")
    return r.json()["command_uuid"]


def enrollment(s, d):
    r = s.api("GET", "/api/v1/enrollments/%s" % d.enrollment_id)
    status(r, 200, "GET enrollment")
    return r.json()


def audit_actions(s, target):
    r = s.api("GET", "/api/v1/audit")
    status(r, 200, "GET audit")
    return [e["action"] for e in r.json()["events"] if e["target"] == target]


def assert_challenge(r, s):
    eq(r.status, 401, "status", r)
    s.assert_challenge(r)


def wait_for(pred, what, s, tries=100):
    """Polls pred() while the scheduler (1 s interval) runs; the clock is moved, not slept."""
    import time
    for _ in range(tries):
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting for " + what + "\n" + s.log_tail(30))


def profile_payload(identifier):
    return base64.b64encode(plistlib.dumps({
        "PayloadType": "Configuration", "PayloadVersion": 1, "PayloadIdentifier": identifier,
        "PayloadUUID": "8A0E4C2B-1D3F-4A5B-9C6D-7E8F90A1B2C3", "PayloadDisplayName": "Work Wi-Fi",
        "PayloadContent": [{"PayloadType": "com.apple.wifi.managed", "PayloadVersion": 1,
                            "PayloadIdentifier": identifier + ".wifi",
                            "PayloadUUID": "1B2C3D4E-5F60-4718-293A-4B5C6D7E8F90",
                            "SSID_STR": "corp", "EncryptionType": "WPA2"}]})).decode()


@test("admin invalidation: 401 + challenge, sign in again, the pending command arrives exactly once")
def t_admin_reauth_flow():
    s = server()
    d = enrolled(s)
    old = d.token
    u = enqueue(s, d, {"request_type": "ProfileList"})
    status(s.api("POST", "/api/v1/enrollments/%s/reauthenticate" % d.enrollment_id), 202, "reauthenticate")
    eq(enrollment(s, d)["auth_state"], "reauth_required", "auth_state after the demand")
    r = d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id})
    assert_challenge(r, s)
    # The user signs in again through the same web flow; the device repeats the request.
    d.auto_reauth = True
    cmd = d.idle()
    ok(d.token != old, "a new token after re-authentication")
    ok(cmd is not None and cmd["CommandUUID"] == u, "the pending command is delivered after re-auth")
    nxt = d.report(u, "Acknowledged", ProfileList=[])
    eq(nxt, None, "nothing more: the command was not duplicated")
    eq(d.idle(), None, "still nothing on the next Idle")
    r = s.api("GET", "/api/v1/commands/" + u)
    eq(r.json()["status"], "acknowledged", "command status")
    e = enrollment(s, d)
    eq(e["auth_state"], "active", "auth_state after re-authentication")
    eq(e["last_auth_method"], "local", "last_auth_method")
    r = d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id}, token=old)
    assert_challenge(r, s)
    acts = audit_actions(s, d.enrollment_id)
    ok("reauth.require" in acts and "reauth.complete" in acts, "audited: %r" % acts)


@test("re-authentication through the sign-in page in headless Chromium")
def t_reauth_in_chromium():
    import subprocess
    import urllib.parse
    s = server()
    d = enrolled(s)
    u = enqueue(s, d, {"request_type": "ProfileList"})
    status(s.api("POST", "/api/v1/enrollments/%s/reauthenticate" % d.enrollment_id), 202, "reauthenticate")
    r = d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id})
    assert_challenge(r, s)
    _, params = sim.parse_challenge(r.header("WWW-Authenticate"))
    url = params["url"] + "?" + urllib.parse.urlencode({"user-identifier": ALICE[0]})
    p = subprocess.run(["node", os.path.join(HERE, "..", "browser", "signin_once.mjs"), url, ALICE[2]],
                       capture_output=True, text=True, timeout=120)
    eq(p.returncode, 0, "browser sign-in (stderr: %s)" % p.stderr.strip())
    d.token = p.stdout.strip()
    cmd = d.idle()
    ok(cmd is not None and cmd["CommandUUID"] == u, "the pending command arrives after the browser re-auth")
    eq(d.report(u, "Acknowledged", ProfileList=[]), None, "exactly once")
    eq(enrollment(s, d)["auth_state"], "active", "active again")


@test("a different user signing in during re-authentication is refused and audited")
def t_wrong_user():
    s = server()
    d = enrolled(s)
    status(s.api("POST", "/api/v1/enrollments/%s/reauthenticate" % d.enrollment_id), 202, "reauthenticate")
    bob = device(s, BOB)
    bob.discover()
    bob.enroll_unauthenticated()
    bob_token = bob.sign_in()
    r = d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id}, token=bob_token)
    assert_challenge(r, s)
    eq(enrollment(s, d)["auth_state"], "reauth_required", "still waiting for alice")
    ok("reauth.wrong_user" in audit_actions(s, d.enrollment_id), "refusal audited")


@test("CheckOut with an invalidated token is accepted (the device cannot sign in while unenrolling)")
def t_checkout_invalidated():
    s = server()
    d = enrolled(s)
    status(s.api("POST", "/api/v1/enrollments/%s/reauthenticate" % d.enrollment_id), 202, "reauthenticate")
    r = d.checkin(d.message("CheckOut"))
    eq(r.status, 200, "CheckOut", r)
    eq(enrollment(s, d)["auth_state"], "unenrolled", "auth_state")


@test("orchard reauth --user invalidates every enrollment of the user")
def t_cli_and_user_api():
    s = server()
    d1, d2 = enrolled(s), enrolled(s)
    p = s.cli("reauth", "--data", s.data, "--user", ALICE[0])
    ok("re-authentication required" in p.stdout, "CLI output %r" % p.stdout)
    for d in (d1, d2):
        assert_challenge(d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id}), s)
    d1.auto_reauth = True
    eq(d1.idle(), None, "d1 carries on after signing in again")
    r = s.api("POST", "/api/v1/users/%s/reauthenticate" % ALICE[0])
    status(r, 202, "user reauthenticate")
    ok(r.json()["enrollments"] >= 2, "all of alice's enrollments: %r" % r.json())
    status(s.api("POST", "/api/v1/users/nobody@example.com/reauthenticate"), 404, "unknown user")


@test("reauth_interval expires tokens by age")
def t_interval():
    s = server(ORCHARD_REAUTH_INTERVAL="1h")
    d = enrolled(s)
    eq(d.idle(), None, "fresh token works")
    s.advance_clock(3700)
    wait_for(lambda: enrollment(s, d)["auth_state"] == "reauth_required", "interval policy", s)
    assert_challenge(d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id}), s)
    d.auto_reauth = True
    eq(d.idle(), None, "carries on with a new token")
    eq(enrollment(s, d)["auth_state"], "active", "active again")


@test("remove-sensitive after the grace period, re-installed after a later re-authentication")
def t_remove_sensitive_grace():
    s = server("remove-sensitive", ORCHARD_REAUTH_GRACE="72h")
    d = enrolled(s)
    secret = enqueue(s, d, {"request_type": "InstallProfile", "Payload": profile_payload("com.example.secret"),
                            "sensitive": True})
    plain = enqueue(s, d, {"request_type": "InstallProfile", "Payload": profile_payload("com.example.plain")})
    eq([c["CommandUUID"] for c in d.run_commands()], [secret, plain], "both profiles installed")
    status(s.api("POST", "/api/v1/enrollments/%s/reauthenticate" % d.enrollment_id), 202, "reauthenticate")
    assert_challenge(d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id}), s)
    s.advance_clock(73 * 3600)
    wait_for(lambda: enrollment(s, d)["auth_state"] == "reauth_failed", "grace expiry", s)
    # The device, still unable to authenticate, receives exactly the removal of the sensitive
    # profile, then the challenge again.
    cmd = d.idle()
    ok(cmd is not None, "a removal command is delivered despite the invalid token")
    eq(cmd["Command"]["RequestType"], "RemoveProfile", "request type")
    eq(cmd["Command"]["Identifier"], "com.example.secret", "only the sensitive profile")
    r = d.connect({"Status": "Acknowledged", "CommandUUID": cmd["CommandUUID"], "EnrollmentID": d.enrollment_id})
    assert_challenge(r, s)
    ok("reauth.failed" in audit_actions(s, d.enrollment_id), "policy action audited")
    # Sensitive content cannot be queued for this device meanwhile.
    r = s.api("POST", "/api/v1/enrollments/%s/commands" % d.enrollment_id,
              {"request_type": "InstallProfile", "Payload": profile_payload("com.example.x"), "sensitive": True})
    eq(r.status, 409, "sensitive enqueue while reauth_failed", r)
    # The user signs in again: the sensitive profile comes back, the plain one is untouched.
    d.auto_reauth = True
    cmds = d.run_commands()
    eq([c["Command"]["RequestType"] for c in cmds], ["InstallProfile"], "re-install after re-auth")
    payload = plistlib.loads(cmds[0]["Command"]["Payload"])
    eq(payload["PayloadIdentifier"], "com.example.secret", "the sensitive profile is re-installed")
    eq(enrollment(s, d)["auth_state"], "active", "active again")


def challenge_url(s, d):
    """The url of the 401 the device gets on its next connect (carries its re-auth ticket)."""
    r = d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id}, reauth=False)
    assert_challenge(r, s)
    _, params = sim.parse_challenge(r.header("WWW-Authenticate"))
    return params["url"]


def wrong_passwords(d, n, url, who=None):
    """n failed sign-ins for `who` (default: the device's user) through `url`."""
    for _ in range(n):
        dev = d if who is None else who
        try:
            dev.sign_in(password="wrong-password", url=url)
            raise AssertionError("a wrong password yielded a token")
        except sim.DeviceError as e:
            eq(e.resp.status, 401, "wrong password status")


def command_types(s, d):
    r = s.api("GET", "/api/v1/enrollments/%s/commands" % d.enrollment_id)
    status(r, 200, "GET commands")
    return [c.get("request_type") for c in r.json()["commands"]]


def settle(s):
    """Lets the scheduler (1 s interval) run a few passes."""
    import time
    time.sleep(3.5)


@test("too many failed sign-ins trigger unenroll: RemoveProfile of the enrollment profile")
def t_max_failures_unenroll():
    s = server("unenroll", ORCHARD_REAUTH_MAX_FAILURES="3", ORCHARD_SIGNIN_RATE_LIMIT="50")
    d = enrolled(s)
    status(s.api("POST", "/api/v1/enrollments/%s/reauthenticate" % d.enrollment_id), 202, "reauthenticate")
    # The user answers the device's own challenge, and gets the password wrong.
    url = challenge_url(s, d)
    ok("?reauth=" in url, "the re-authentication challenge carries a ticket: %r" % url)
    wrong_passwords(d, 3, url)
    wait_for(lambda: enrollment(s, d)["auth_state"] == "reauth_failed", "max failures", s)
    ok("reauth.fail" in audit_actions(s, d.enrollment_id), "the failures are audited on the enrollment")
    cmd = d.idle()
    ok(cmd is not None, "the unenroll command reaches the device")
    eq(cmd["Command"]["RequestType"], "RemoveProfile", "request type")
    eq(cmd["Command"]["Identifier"], "io.orchard.enrollment", "the enrollment profile")
    d.connect({"Status": "Acknowledged", "CommandUUID": cmd["CommandUUID"], "EnrollmentID": d.enrollment_id})
    r = d.checkin(d.message("CheckOut"))
    eq(r.status, 200, "CheckOut after removal", r)
    eq(enrollment(s, d)["auth_state"], "unenrolled", "unenrolled")


@test("anonymous wrong passwords for a victim never trigger the failure action (pending or not)")
def t_anonymous_guesses_do_not_count():
    s = server("unenroll", ORCHARD_REAUTH_MAX_FAILURES="5", ORCHARD_SIGNIN_RATE_LIMIT="100")
    d = enrolled(s)
    # A stranger who knows alice's address, through the plain sign-in url (what anyone can
    # open), first while no re-authentication is pending ...
    stranger = device(s)
    wrong_passwords(d, 5, s.url + "/auth/signin", who=stranger)
    settle(s)
    eq(enrollment(s, d)["auth_state"], "active", "no re-authentication was demanded by guesses")
    # ... then while one is pending: the device has seen its challenge, the stranger has not.
    status(s.api("POST", "/api/v1/enrollments/%s/reauthenticate" % d.enrollment_id), 202, "reauthenticate")
    challenge_url(s, d)
    wrong_passwords(d, 5, s.url + "/auth/signin", who=stranger)
    # ... and with made-up tickets.
    wrong_passwords(d, 5, s.url + "/auth/signin?reauth=" + "A" * 43, who=stranger)
    settle(s)
    e = enrollment(s, d)
    eq(e["auth_state"], "reauth_required", "still waiting for alice; no failure action")
    ok("reauth.failed" not in audit_actions(s, d.enrollment_id), "no reauth.failed audit")
    ok("RemoveProfile" not in command_types(s, d), "no RemoveProfile queued: %r" % command_types(s, d))
    acts = [e["action"] for e in s.api("GET", "/api/v1/audit").json()["events"]]
    ok(acts.count("signin.fail") >= 15, "the guesses are still audited as signin.fail")
    # Alice herself can still re-authenticate: the guesses did not use up her budget.
    d.auto_reauth = True
    eq(d.idle(), None, "alice re-authenticates after the guesses")
    eq(enrollment(s, d)["auth_state"], "active", "active again")


def guess(s, d, identifier, xff, url=None):
    """One wrong password for identifier, as a browser behind the trusted proxy at xff."""
    r, page, jar, page_url = d.open_signin(url=url or s.url + "/auth/signin", user_identifier=identifier)
    status(r, 200, "sign-in page")
    form = page.login_form()
    return d.submit_form(page_url, form, d.form_fields(form, identifier, "wrong-password"), jar,
                         extra_headers={"X-Forwarded-For": xff})


@test("guesses that use up the identifier's budget do not lock the user out of re-authenticating")
def t_guesses_do_not_block_reauth():
    s = server("unenroll", ORCHARD_REAUTH_MAX_FAILURES="5", ORCHARD_SIGNIN_RATE_LIMIT="3",
               ORCHARD_TRUSTED_PROXIES="127.0.0.1")
    d = enrolled(s)
    status(s.api("POST", "/api/v1/enrollments/%s/reauthenticate" % d.enrollment_id), 202, "reauthenticate")
    challenge_url(s, d)
    stranger = device(s)
    for i in range(3):
        eq(guess(s, stranger, ALICE[0], "203.0.113.%d" % (i + 1)).status, 401, "guess %d" % (i + 1))
    eq(guess(s, stranger, ALICE[0], "203.0.113.50").status, 429, "alice's identifier is out of guesses")
    # Per address, IPv6 by /64: rotating the interface half does not buy new guesses.
    for i in range(3):
        eq(guess(s, stranger, "x%d@example.com" % i, "2001:db8:9:9::%d" % (i + 1)).status, 401, "v6 guess")
    eq(guess(s, stranger, "x9@example.com", "2001:db8:9:9:ffff::1").status, 429, "same /64, new address")
    eq(guess(s, stranger, "x9@example.com", "2001:db8:9:a::1").status, 401, "another /64 may still try")
    # Alice answers her device's challenge: her re-authentication has a budget of its own.
    d.auto_reauth = True
    eq(d.idle(), None, "alice re-authenticates despite the guesses")
    eq(enrollment(s, d)["auth_state"], "active", "active again")


@test("a ticket of another user's enrollment, or of an enrollment not waiting, does not count")
def t_foreign_ticket_does_not_count():
    s = server("unenroll", ORCHARD_REAUTH_MAX_FAILURES="3", ORCHARD_SIGNIN_RATE_LIMIT="100")
    alice, bob = enrolled(s), enrolled(s, BOB)
    status(s.api("POST", "/api/v1/enrollments/%s/reauthenticate" % bob.enrollment_id), 202, "reauthenticate")
    bob_url = challenge_url(s, bob)
    # Bob's ticket with alice's identifier (alice is not being re-authenticated at all) ...
    wrong_passwords(alice, 3, bob_url)
    # ... and, once alice is asked too, bob's ticket still does not count for her.
    status(s.api("POST", "/api/v1/enrollments/%s/reauthenticate" % alice.enrollment_id), 202, "reauthenticate")
    alice_url = challenge_url(s, alice)
    wrong_passwords(alice, 3, bob_url)
    settle(s)
    eq(enrollment(s, alice)["auth_state"], "reauth_required", "alice: no failure action")
    eq(enrollment(s, bob)["auth_state"], "reauth_required", "bob: no failure action")
    ok("reauth.fail" not in audit_actions(s, alice.enrollment_id), "nothing counted for alice")
    ok("reauth.fail" not in audit_actions(s, bob.enrollment_id), "nothing counted for bob")
    # A ticket from an earlier demand is retired by the new demand.
    status(s.api("POST", "/api/v1/enrollments/%s/reauthenticate" % alice.enrollment_id), 202, "reauthenticate")
    wrong_passwords(alice, 3, alice_url)
    settle(s)
    eq(enrollment(s, alice)["auth_state"], "reauth_required", "an old ticket no longer counts")
    # Alice's own current ticket does.
    wrong_passwords(alice, 3, challenge_url(s, alice))
    wait_for(lambda: enrollment(s, alice)["auth_state"] == "reauth_failed", "alice's own failures", s)
    eq(enrollment(s, bob)["auth_state"], "reauth_required", "bob untouched")


@test("the ticket survives a client that appends ?user-identifier= to the challenge url")
def t_ticket_with_naive_append():
    s = server("unenroll", ORCHARD_REAUTH_MAX_FAILURES="2", ORCHARD_SIGNIN_RATE_LIMIT="100")
    d = enrolled(s)
    status(s.api("POST", "/api/v1/enrollments/%s/reauthenticate" % d.enrollment_id), 202, "reauthenticate")
    url = challenge_url(s, d)
    import urllib.parse
    for _ in range(2):
        page_url = url + "?user-identifier=" + urllib.parse.quote(ALICE[0])
        r = orchard.request("GET", page_url, ctx=s.ctx())
        status(r, 200, "sign-in page")
        page = sim.HtmlPage(r.text)
        form = page.login_form()
        jar = sim.CookieJar()
        jar.update(r)
        fields = d.form_fields(form, ALICE[0], "wrong-password")
        ok(dict(fields).get("user-identifier") == ALICE[0], "identifier pre-filled: %r" % fields)
        ok(len(dict(fields).get("reauth", "")) == 43, "ticket carried in the form: %r" % fields)
        r = d.submit_form(page_url, form, fields, jar)
        eq(r.status, 401, "wrong password")
    wait_for(lambda: enrollment(s, d)["auth_state"] == "reauth_failed", "ticketed failures count", s)


@test("audit_retention: the scheduler deletes audit events older than 400 days, and only those")
def t_audit_retention():
    s = Server(name="reauth-retention")
    s.add_user(*ALICE)
    s.start(env=FAST)

    def failed_signin(who):
        d = device(s)
        d.user = who
        try:
            d.sign_in(password="wrong-password", url=s.url + "/auth/signin")
        except sim.DeviceError:
            pass

    def targets():
        r = s.api("GET", "/api/v1/audit?limit=500")
        status(r, 200, "GET audit")
        return [e["target"] for e in r.json()["events"] if e["action"] == "signin.fail"]

    failed_signin("old@example.com")
    ok("old@example.com" in targets(), "the event is recorded")
    s.advance_clock(399 * 86400)
    settle(s)
    ok("old@example.com" in targets(), "399 days old: still kept")
    failed_signin("newer@example.com")
    s.advance_clock(2 * 86400)
    wait_for(lambda: "old@example.com" not in targets(), "the 401-day-old event to be deleted", s)
    ok("newer@example.com" in targets(), "the 2-day-old event is kept")
    ok("event=audit_pruned" in s.log_text(), "the deletion is logged")
    eq(s.stop(), 0, "exit code")


@test("a device enrollment (UDID) never receives a 401")
def t_udid_never_401():
    s = server()
    d = enrolled(s)
    # A UDID-keyed message with the same identity: the server must not answer 401 (it would
    # unenroll such a device), whatever the token.
    body = plistlib.dumps({"MessageType": "Authenticate", "Topic": d.topic, "UDID": "0000-UDID-TEST",
                           "BuildVersion": "22C161", "OSVersion": "18.2.1", "ProductName": "iPhone12,1"})
    for token in (None, "x" * 43):
        r = d.put(d.checkin_url, body, token=token, content_type=sim.CHECKIN_TYPE)
        ok(r.status != 401, "UDID enrollment got %d" % r.status)
        r = d.put(d.server_url, plistlib.dumps({"Status": "Idle", "UDID": "0000-UDID-TEST"}), token=token)
        ok(r.status != 401, "UDID connect got %d" % r.status)


@test("servers stop cleanly")
def t_stop():
    for s in _servers.values():
        eq(s.stop(), 0, "exit code of orchard serve")


if __name__ == "__main__":
    orchard.main()
