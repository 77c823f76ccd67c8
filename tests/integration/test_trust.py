#!/usr/bin/python3
"""
Issue 13: the stored enrollment decides, never the current message. Each test reproduces an
attack that worked against the previous main:
- a device renames its EnrollmentID key to UDID (or claims a Mac ProductName) to skip the
  token check it owes after a re-authentication demand;
- a user takes over another user's enrollment with a freshly issued certificate of their own;
- a Mac's platform must come from what Orchard recorded (MachineInfo at enrollment), for every
  Mac ProductName form, and a real Mac works without a token on its device channel only;
- an admin revokes a device: every later request from it is refused, the audit names who.
"""
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
_srv = []


def server():
    if not _srv:
        s = Server(name="trust")
        s.add_user(*ALICE)
        s.add_user(*BOB)
        s.start(env={"ORCHARD_DEBUG_CLOCK": "true"})
        _srv.append(s)
    return _srv[0]


def device(s, who=ALICE, product="iPhone12,1", **kw):
    return sim.Device(s.url, who[0], who[2], ca_file=s.ca_file, signing_ca=s.path("signing", "ca.pem"),
                      workdir=tempfile.mkdtemp(prefix="dev-", dir=s.tmp), auto_reauth=False,
                      machine_info=sim.bare_machine_info(product=product), product=product, **kw)


def enrollment(s, eid):
    r = s.api("GET", "/api/v1/enrollments/%s" % eid)
    status(r, 200, "GET enrollment")
    return r.json()


def enqueue(s, eid, body=None):
    r = s.api("POST", "/api/v1/enrollments/%s/commands" % eid, body or {"request_type": "ProfileList"})
    status(r, 201, "enqueue")
    return r.json()["command_uuid"]


def command_status(s, uuid):
    r = s.api("GET", "/api/v1/commands/%s" % uuid)
    status(r, 200, "GET command")
    return r.json()["status"]


def audit(s, target):
    r = s.api("GET", "/api/v1/audit")
    status(r, 200, "GET audit")
    return [e for e in r.json()["events"] if e["target"] == target]


def reauth_demanded(s, d):
    status(s.api("POST", "/api/v1/enrollments/%s/reauthenticate" % d.enrollment_id), 202, "reauthenticate")


@test("after a re-authentication demand, renaming EnrollmentID to UDID gets no command")
def t_udid_rename():
    s = server()
    d = device(s).run_enrollment()
    uuid = enqueue(s, d.enrollment_id)
    reauth_demanded(s, d)
    for token in (None, d.token):
        r = d.put(d.server_url, {"Status": "Idle", "UDID": d.enrollment_id}, token=token)
        eq(r.status, 403, "Idle keyed by UDID", r)
        ok(b"CommandUUID" not in r.body, "no command in the answer", r)
        r = d.put(d.server_url, {"Status": "Idle", "UDID": d.enrollment_id,
                                 "EnrollmentID": d.enrollment_id}, token=token)
        eq(r.status, 403, "Idle with both UDID and EnrollmentID", r)
    eq(command_status(s, uuid), "queued", "the command was not handed out")
    r = d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id})
    eq(r.status, 401, "the honest Idle still owes a sign-in", r)


@test("after a re-authentication demand, an Authenticate claiming a Mac needs the token all the same")
def t_mac_claim():
    s = server()
    d = device(s).run_enrollment()
    reauth_demanded(s, d)
    for product in ("MacBookPro18,3", "Mac14,2", "iMac14,2", "VirtualMac2,1"):
        r = d.checkin(d.message("Authenticate", ProductName=product, Model=product, OSVersion="15.2",
                                BuildVersion="24C101"), token=None)
        ok(r.status in (401, 403), "Authenticate as %s without a token got %d" % (product, r.status), r)
    e = enrollment(s, d.enrollment_id)
    eq(e["auth_state"], "reauth_required", "still owes a sign-in")
    eq(e["platform"], "iOS", "platform as recorded")
    eq(e["product_name"], "iPhone12,1", "product as recorded")


@test("a new enrollment may not claim a platform other than the MachineInfo it enrolled with")
def t_new_platform_claim():
    s = server()
    d = device(s)  # MachineInfo says iPhone12,1
    d.run_enrollment(check_in=False)
    r = d.checkin(d.message("Authenticate", ProductName="MacBookPro18,3", OSVersion="15.2",
                            BuildVersion="24C101"), token=None)
    eq(r.status, 403, "iPhone enrolling as a Mac without a token", r)
    r = d.checkin(d.message("Authenticate", ProductName="MacBookPro18,3", OSVersion="15.2",
                            BuildVersion="24C101"))
    eq(r.status, 403, "iPhone enrolling as a Mac, even with its token", r)
    d.authenticate()  # the truth is accepted
    d.token_update()
    eq(enrollment(s, d.enrollment_id)["platform"], "iOS", "platform")


@test("a Mac enrolls and checks in without a token on its device channel only, for every ProductName form")
def t_mac_enrollment():
    s = server()
    for product in ("MacBookPro18,3", "iMac14,2", "Macmini9,1", "MacPro7,1", "Mac14,2", "VirtualMac2,1",
                    "MacBookAir10,1", "iMacPro1,1"):
        d = device(s, product=product)
        d.run_enrollment(check_in=False)
        eq(d.checkin(d.message("Authenticate", ProductName=product, OSVersion="15.2",
                               BuildVersion="24C101"), token=None).status, 200, "%s Authenticate" % product)
        eq(d.checkin(d.message("TokenUpdate", Token=d.push_token, PushMagic=d.push_magic),
                     token=None).status, 200, "%s device-channel TokenUpdate" % product)
        e = enrollment(s, d.enrollment_id)
        eq(e["platform"], "macOS", "%s platform" % product)
        eq(d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id}, token=None).status, 200,
           "%s device channel Idle without a token" % product)
    # The user channel carries the token; without it, 401 and never a device-channel pass.
    uid = "F7C3A4E2-0000-4000-8000-000000000001"
    user_msg = d.message("TokenUpdate", Token=d.push_token, PushMagic=d.push_magic, EnrollmentUserID=uid,
                         UserShortName="alice", UserLongName="Alice")
    r = d.checkin(user_msg, token=None)
    eq(r.status, 401, "user channel without a token", r)
    eq(d.checkin(user_msg).status, 200, "user channel with the token")
    eq(d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id, "EnrollmentUserID": uid},
                 token=None).status, 401, "user channel Idle without a token")
    eq(d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id, "EnrollmentUserID": uid}).status, 200,
       "user channel Idle with the token")
    # After a demand, the Mac device channel may still not claim to be an iPhone, nor re-activate.
    reauth_demanded(s, d)
    r = d.checkin(d.message("Authenticate", ProductName="iPhone12,1", OSVersion="18.2",
                            BuildVersion="22C161"), token=None)
    eq(r.status, 403, "a Mac claiming to be an iPhone", r)
    r = d.checkin(d.message("Authenticate", ProductName=product, OSVersion="15.2", BuildVersion="24C101"),
                  token=None)
    eq(r.status, 200, "Mac device channel re-Authenticate without a token", r)
    eq(enrollment(s, d.enrollment_id)["auth_state"], "reauth_required", "a token-less Authenticate is no sign-in")


@test("an iPhone enrollment has no user channel")
def t_no_user_channel_on_ios():
    s = server()
    d = device(s).run_enrollment()
    msg = d.message("TokenUpdate", Token=d.push_token, PushMagic=d.push_magic,
                    EnrollmentUserID="F7C3A4E2-0000-4000-8000-000000000002")
    r = d.checkin(msg)
    eq(r.status, 403, "user channel TokenUpdate under an iPhone", r)
    r = d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id,
                   "EnrollmentUserID": "F7C3A4E2-0000-4000-8000-000000000002"})
    eq(r.status, 403, "user channel Idle under an iPhone", r)


@test("Bob's fresh certificate cannot take over Alice's enrollment")
def t_takeover():
    s = server()
    alice = device(s).run_enrollment()
    uuid = enqueue(s, alice.enrollment_id)
    bob = device(s, BOB)
    bob.run_enrollment(check_in=False)  # a fresh, unbound certificate of Bob's
    bob.enrollment_id = alice.enrollment_id
    for token in (bob.token, None):
        r = bob.checkin(bob.message("Authenticate", ProductName="iPhone12,1", OSVersion="18.2.1",
                                    BuildVersion="22C161"), token=token)
        eq(r.status, 403, "Bob's Authenticate for Alice's enrollment", r)
    r = bob.connect({"Status": "Idle", "EnrollmentID": alice.enrollment_id})
    eq(r.status, 403, "Bob's Idle for Alice's enrollment", r)
    e = enrollment(s, alice.enrollment_id)
    eq(e["user"], ALICE[0], "the owner")
    cmd = alice.idle()
    ok(cmd is not None and cmd["CommandUUID"] == uuid, "Alice's device still gets her command")
    ok(any(a["action"] == "enrollment.takeover_refused" for a in audit(s, alice.enrollment_id)),
       "the attempt is audited")


@test("a re-Authenticate with another certificate of the same user retires the old one")
def t_reauthenticate_replaces_identity():
    s = server()
    d = device(s).run_enrollment()
    old_cert, old_key = d.cert_path, d.key_path
    other = device(s)
    other.run_enrollment(check_in=False)  # a fresh certificate of Alice's
    other.enrollment_id = d.enrollment_id
    eq(other.checkin(other.message("Authenticate", ProductName="iPhone12,1", OSVersion="18.2.1",
                                   BuildVersion="22C161")).status, 200, "Authenticate with the new certificate")
    eq(other.checkin(other.message("TokenUpdate", Token=other.push_token, PushMagic=other.push_magic)).status,
       200, "TokenUpdate with the new certificate")
    d.use_identity(old_cert, old_key)
    r = d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id}, token=other.token)
    eq(r.status, 403, "the old certificate no longer serves the enrollment", r)
    eq(other.idle(), None, "the new one does")


@test("re-enrollment of the same person goes through sign-in and SCEP, under a new EnrollmentID")
def t_reenroll():
    s = server()
    d = device(s).run_enrollment()
    old = d.enrollment_id
    d.checkout()
    # The same EnrollmentID cannot be brought back to life.
    d2 = device(s)
    d2.run_enrollment(check_in=False)
    d2.enrollment_id = old
    eq(d2.checkin(d2.message("Authenticate", ProductName="iPhone12,1", OSVersion="18.2.1",
                             BuildVersion="22C161")).status, 403, "Authenticate of an ended enrollment")
    d3 = device(s).run_enrollment()
    eq(enrollment(s, d3.enrollment_id)["auth_state"], "active", "the new enrollment")


@test("revoke cuts a device off at once, for every request, and the audit says who")
def t_revoke():
    s = server()
    d = device(s).run_enrollment()
    uuid = enqueue(s, d.enrollment_id)
    r = s.api("POST", "/api/v1/enrollments/%s/revoke" % d.enrollment_id)
    status(r, 202, "revoke")
    eq(r.json()["auth_state"], "revoked", "answer")
    eq(d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id}).status, 403, "Idle")
    eq(d.checkin(d.message("TokenUpdate", Token=d.push_token, PushMagic=d.push_magic)).status, 403,
       "TokenUpdate")
    eq(d.checkin(d.message("Authenticate", ProductName="iPhone12,1", OSVersion="18.2.1",
                           BuildVersion="22C161")).status, 403, "Authenticate")
    # Even after signing in again: the token is new, the device stays cut off.
    d.sign_in()
    eq(d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id}).status, 403, "Idle with a fresh token")
    eq(command_status(s, uuid), "queued", "nothing was handed out")
    eq(enrollment(s, d.enrollment_id)["auth_state"], "revoked", "state")
    ev = [a for a in audit(s, d.enrollment_id) if a["action"] == "enrollment.revoke"]
    eq(len(ev), 1, "one audit event")
    ok(ev[0]["actor"].startswith("api:"), "the actor is the API key: %r" % ev[0]["actor"])
    status(s.api("POST", "/api/v1/enrollments/%s/reauthenticate" % d.enrollment_id), 409,
           "a revoked enrollment cannot be re-authenticated back to life")
    eq(enrollment(s, d.enrollment_id)["auth_state"], "revoked", "still revoked")
    status(s.api("POST", "/api/v1/enrollments/NOPE-0000/revoke"), 404, "unknown enrollment")
    status(s.api("POST", "/api/v1/enrollments/%s/revoke" % d.enrollment_id, key=False), 401, "no API key")


@test("servers stop cleanly")
def t_stop():
    for s in _srv:
        eq(s.stop(), 0, "exit code of orchard serve")


if __name__ == "__main__":
    orchard.main()
