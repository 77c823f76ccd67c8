#!/usr/bin/python3
"""
Issue 4 (check-in and command channel) over real HTTPS against `orchard serve`, with devices
enrolled by the simulator: the queue scenarios (Idle -> nothing; 2 commands in order; NotNow;
Error/CommandFormatError; unanswered -> re-sent; duplicates; re-Authenticate clears;
re-enrollment), the admin command API and its User Enrollment gatekeeping, the real device
messages from the spec fixtures, every check-in MessageType of Apple's YAML, the bearer-token
rules (missing/unknown/foreign/expired/revoked, CheckOut), Mdm-Signature and client-certificate
checks, certificate renewal, and a kill -9 crash test.
"""
import base64
import datetime
import json
import os
import plistlib
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "sim"))
import device as sim  # noqa: E402
import orchard  # noqa: E402
import pki  # noqa: E402
from orchard import Server, eq, not_5xx, ok, read_fixture, status, status_4xx, test  # noqa: E402

ALICE = ("alice@example.com", "alice@appleid.example.com", "alice-Pa55word!")
BOB = ("bob@example.com", "bob@appleid.example.com", "bob-Pa55word!")
_srv = None


def srv():
    global _srv
    if _srv is None:
        _srv = Server(name="checkin")
        _srv.add_user(*ALICE)
        _srv.add_user(*BOB)
        _srv.start()
    return _srv


def new_device(s=None, who=ALICE, **kw):
    """A simulated device; it does NOT re-authenticate on 401 unless a test turns that on, so a
    wrong 401 can never hide behind a silent sign-in."""
    s = s or srv()
    kw.setdefault("auto_reauth", False)
    return sim.Device(s.url, who[0], who[2], ca_file=s.ca_file, signing_ca=s.path("signing", "ca.pem"),
                      workdir=tempfile.mkdtemp(prefix="dev-", dir=s.tmp), **kw)


def enrolled(s=None, who=ALICE, **kw):
    """A device through discovery, sign-in, profile, SCEP, Authenticate and TokenUpdate."""
    return new_device(s, who, **kw).run_enrollment()


def enqueue(s, eid, body, expect=201):
    r = s.api("POST", "/api/v1/enrollments/%s/commands" % eid, body)
    status(r, expect, "enqueue %r" % (body,))
    if expect != 201:
        return r
    u = r.json().get("command_uuid")
    ok(isinstance(u, str) and u, "201 without command_uuid", r)
    return u


def command(s, u):
    r = s.api("GET", "/api/v1/commands/%s" % u)
    status(r, 200, "GET command %s" % u)
    j = r.json()
    for k in ("command_uuid", "request_type", "status", "result"):
        ok(k in j, "command JSON lacks %r: %r" % (k, j))
    eq(j["command_uuid"], u, "command_uuid")
    return j


def command_status(s, u):
    return command(s, u)["status"]


def idle_body(d, eid=None):
    return plistlib.dumps({"Status": "Idle", "EnrollmentID": eid or d.enrollment_id})


def find_values(obj, key):
    """Every value of `key` anywhere in a JSON document."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                out.append(v)
            out += find_values(v, key)
    elif isinstance(obj, list):
        for v in obj:
            out += find_values(v, key)
    return out


def expect_cmd(cmd, u, request_type, what):
    ok(cmd is not None, "%s: expected command %s (%s), got the empty 200" % (what, u, request_type))
    eq(cmd["CommandUUID"], u, what + ": CommandUUID")
    eq(cmd["Command"]["RequestType"], request_type, what + ": RequestType")


# --- check-in ------------------------------------------------------------------------------------

@test
def authenticate_and_token_update_create_the_enrollment():
    s = srv()
    d = new_device(s).run_enrollment(check_in=False)
    r = d.authenticate()
    eq(r.body, b"", "Authenticate answer body")
    r = d.token_update()
    eq(r.body, b"", "TokenUpdate answer body")
    r = s.api("GET", "/api/v1/enrollments")
    status(r, 200, "list enrollments")
    ok(d.enrollment_id in find_values(r.json(), "id"), "enrollment %s not listed: %s" % (d.enrollment_id, r.text[:500]))
    r = s.api("GET", "/api/v1/enrollments/%s" % d.enrollment_id)
    status(r, 200, "get enrollment")
    e = r.json()
    eq(e.get("id"), d.enrollment_id, "enrollment id")
    ok("auth_state" in e, "enrollment JSON lacks auth_state: %r" % e)
    ok(ALICE[0] in json.dumps(e.get("user")) or ALICE[1] in json.dumps(e.get("user")),
       "enrollment user %r is not alice" % (e.get("user"),))
    raw = json.dumps(e)
    ok(d.push_magic not in raw and d.token not in raw, "enrollment JSON leaks PushMagic or the session token")
    status(s.api("GET", "/api/v1/enrollments/%s" % uuid.uuid4()), 404, "unknown enrollment")


@test
def retried_authenticate_after_a_lost_response_succeeds():
    s = srv()
    d = new_device(s).run_enrollment(check_in=False)
    d.authenticate()
    d.authenticate()  # the device never saw the first answer
    d.token_update()
    d.token_update()  # TokenUpdate repeats whenever the push token changes
    eq(d.idle(), None, "Idle after repeated check-ins")


@test
def idle_with_an_empty_queue_is_an_empty_200():
    d = enrolled()
    eq(d.idle(), None, "Idle")
    eq(d.last.body, b"", "empty 200 body")
    eq(d.last.header("Content-Length"), "0", "Content-Length of the empty 200")


@test
def checkout_ends_the_enrollment():
    s = srv()
    d = enrolled(s)
    r = d.checkout()
    eq(r.body, b"", "CheckOut answer body")
    status_4xx(d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id}), "Idle after CheckOut")
    status_4xx(s.api("POST", "/api/v1/enrollments/%s/commands" % d.enrollment_id, {"request_type": "ProfileList"}),
               "enqueue for a checked-out enrollment")
    r = s.api("GET", "/api/v1/enrollments/%s" % d.enrollment_id)
    status(r, 200, "a checked-out enrollment stays visible")


@test
def an_identity_from_one_users_session_cannot_serve_another_user():
    s = srv()
    a = new_device(s).run_enrollment(check_in=False)  # alice's SCEP identity, not yet checked in
    b = new_device(s, BOB)
    b.discover()
    b.enroll_unauthenticated()
    b.sign_in()
    b.fetch_profile()
    b.verify_profile()
    b.use_identity(a.cert_path, a.key_path)  # bob's fresh token with alice's certificate
    r = b.checkin(b.message("Authenticate", BuildVersion="22C161", OSVersion="18.2.1", ProductName="iPhone12,1"))
    status_4xx(r, "Authenticate with bob's token and a certificate issued for alice's enrollment session")
    a.authenticate()  # alice's own token still goes with it


# --- the queue -----------------------------------------------------------------------------------

@test
def two_commands_are_delivered_in_order_and_stored():
    s = srv()
    d = enrolled(s)
    u1 = enqueue(s, d.enrollment_id, {"request_type": "ProfileList"})
    u2 = enqueue(s, d.enrollment_id, {"request_type": "CertificateList"})
    c = command(s, u1)
    eq((c["request_type"], c["status"], c["result"]), ("ProfileList", "queued", None), "queued command")
    cmd = d.idle()
    expect_cmd(cmd, u1, "ProfileList", "Idle")
    cmd = d.report(u1, "Acknowledged", ProfileList=[{"PayloadIdentifier": "com.example.p1", "PayloadVersion": 1}])
    expect_cmd(cmd, u2, "CertificateList", "after Ack of the first")
    eq(d.report(u2, "Acknowledged", CertificateList=[]), None, "after Ack of the second")
    c1, c2 = command(s, u1), command(s, u2)
    eq(c1["status"], "acknowledged", "status of the first")
    eq(c2["status"], "acknowledged", "status of the second")
    ok(c1["result"] and find_values(c1["result"], "PayloadIdentifier") == ["com.example.p1"],
       "result of ProfileList must carry the device's report: %r" % (c1["result"],))
    eq(d.idle(), None, "Idle after both acknowledged")
    r = s.api("GET", "/api/v1/enrollments/%s/commands" % d.enrollment_id)
    status(r, 200, "list the enrollment's commands")
    got = find_values(r.json(), "command_uuid")
    ok(u1 in got and u2 in got, "command list lacks %s/%s: %s" % (u1, u2, r.text[:500]))


@test
def notnow_is_skipped_until_the_next_idle():
    s = srv()
    d = enrolled(s)
    a = enqueue(s, d.enrollment_id, {"request_type": "ProfileList"})
    b = enqueue(s, d.enrollment_id, {"request_type": "SecurityInfo"})
    expect_cmd(d.idle(), a, "ProfileList", "Idle")
    expect_cmd(d.report(a, "NotNow"), b, "SecurityInfo", "after NotNow")
    eq(d.report(b, "Acknowledged", **sim.canned_result({"RequestType": "SecurityInfo"})), None,
       "NotNow command must not come back in the same exchange")
    eq(command_status(s, a), "notnow", "status after NotNow")
    expect_cmd(d.idle(), a, "ProfileList", "next Idle re-offers the NotNow command")
    eq(d.report(a, "Acknowledged", ProfileList=[]), None, "after Ack")
    eq(command_status(s, a), "acknowledged", "status after Ack")


@test
def error_and_format_error_are_final_and_stored():
    s = srv()
    d = enrolled(s)
    a = enqueue(s, d.enrollment_id, {"request_type": "ProfileList"})
    b = enqueue(s, d.enrollment_id, {"request_type": "CertificateList"})
    expect_cmd(d.idle(), a, "ProfileList", "Idle")
    chain = [{"ErrorCode": 12021, "ErrorDomain": "MCMDMErrorDomain", "LocalizedDescription": "Nope",
              "USEnglishDescription": "Nope"}]
    expect_cmd(d.report(a, "Error", ErrorChain=chain), b, "CertificateList", "after Error")
    eq(d.report(b, "CommandFormatError"), None, "after CommandFormatError")
    ca, cb = command(s, a), command(s, b)
    eq(ca["status"], "error", "status after Error")
    eq(cb["status"], "format_error", "status after CommandFormatError")
    ok(12021 in find_values(ca["result"], "ErrorCode"), "ErrorChain not stored: %r" % (ca["result"],))
    eq(d.idle(), None, "finished commands are not re-sent")


@test
def unanswered_command_is_sent_again():
    s = srv()
    d = enrolled(s)
    a = enqueue(s, d.enrollment_id, {"request_type": "ProfileList"})
    expect_cmd(d.idle(), a, "ProfileList", "first Idle")
    expect_cmd(d.idle(), a, "ProfileList", "Idle after the answer was lost")
    eq(d.report(a, "Acknowledged", ProfileList=[]), None, "Ack")
    eq(d.idle(), None, "Idle after Ack")


@test
def duplicate_and_unknown_results_are_harmless():
    s = srv()
    d = enrolled(s)
    a = enqueue(s, d.enrollment_id, {"request_type": "ProfileList"})
    expect_cmd(d.idle(), a, "ProfileList", "Idle")
    eq(d.report(a, "Acknowledged", ProfileList=[{"PayloadIdentifier": "first"}]), None, "Ack")
    r = d.connect({"Status": "Acknowledged", "CommandUUID": a, "EnrollmentID": d.enrollment_id,
                   "ProfileList": [{"PayloadIdentifier": "second"}]})
    status(r, 200, "the same result again")
    eq(r.body, b"", "duplicate result answer")
    c = command(s, a)
    eq(c["status"], "acknowledged", "status after a duplicate")
    eq(find_values(c["result"], "PayloadIdentifier"), ["first"], "the first result is kept")
    r = d.connect({"Status": "Acknowledged", "CommandUUID": str(uuid.uuid4()).upper(), "EnrollmentID": d.enrollment_id})
    not_5xx(r, "result for an unknown CommandUUID")
    ok(r.status in (200, 400, 404), "unknown CommandUUID: expected 200 (ignored) or 400/404", r)
    eq(d.idle(), None, "Idle")


@test
def a_device_cannot_answer_another_devices_command():
    s = srv()
    a_dev, b_dev = enrolled(s), enrolled(s, BOB)
    u = enqueue(s, a_dev.enrollment_id, {"request_type": "ProfileList"})
    expect_cmd(a_dev.idle(), u, "ProfileList", "Idle")
    r = b_dev.connect({"Status": "Acknowledged", "CommandUUID": u, "EnrollmentID": b_dev.enrollment_id,
                       "ProfileList": [{"PayloadIdentifier": "forged"}]})
    not_5xx(r, "another device reporting the command")
    ok(command_status(s, u) != "acknowledged", "bob's device acknowledged alice's command")
    expect_cmd(a_dev.idle(), u, "ProfileList", "the owner still gets it")


@test
def re_authenticate_clears_the_queue():
    s = srv()
    d = enrolled(s)
    enqueue(s, d.enrollment_id, {"request_type": "ProfileList"})
    enqueue(s, d.enrollment_id, {"request_type": "CertificateList"})
    ok(d.idle() is not None, "a command before re-Authenticate")
    d.authenticate()
    d.token_update()
    eq(d.idle(), None, "Idle after re-Authenticate")


@test
def re_enrollment_leaves_nothing_behind():
    s = srv()
    old = enrolled(s)
    enqueue(s, old.enrollment_id, {"request_type": "ProfileList"})
    new = enrolled(s)  # the same person enrolls the phone again: a new EnrollmentID
    ok(new.enrollment_id != old.enrollment_id, "new EnrollmentID")
    eq(new.idle(), None, "Idle of the new enrollment")


# --- the admin command API -----------------------------------------------------------------------

@test
def command_api_refuses_what_user_enrollment_forbids():
    s = srv()
    d = enrolled(s)
    eid = d.enrollment_id
    for body, name in (({"request_type": "EraseDevice"}, "EraseDevice"),
                       ({"request_type": "RestartDevice"}, "RestartDevice"),
                       ({"request_type": "ClearPasscode"}, "ClearPasscode"),
                       ({"request_type": "DeviceInformation", "Queries": ["UDID"]}, "UDID"),
                       ({"request_type": "DeviceInformation", "Queries": ["OSVersion", "SerialNumber"]}, "SerialNumber"),
                       ({"request_type": "NoSuchCommand"}, "NoSuchCommand"),
                       ({"request_type": "ProfileList", "Bogus": 1}, "Bogus")):
        r = s.api("POST", "/api/v1/enrollments/%s/commands" % eid, body)
        status(r, (400, 422), "enqueue %r" % (body,))
        ok(name in r.text, "the refusal of %r must name %s: %s" % (body, name, r.text[:300]))
    for body in (b"{not json", b"{}", b"[]", json.dumps({"request_type": 5}).encode()):
        status(s.api("POST", "/api/v1/enrollments/%s/commands" % eid, body), (400, 422), "enqueue %r" % body)
    eq(d.idle(), None, "nothing was queued by refused requests")
    u = enqueue(s, eid, {"request_type": "DeviceInformation", "Queries": ["OSVersion", "ModelName"]})
    cmd = d.idle()
    expect_cmd(cmd, u, "DeviceInformation", "allowed DeviceInformation")
    eq(cmd["Command"].get("Queries"), ["OSVersion", "ModelName"], "Queries passed to the device")
    d.report(u, "Acknowledged", **sim.canned_result(cmd["Command"]))
    # a raw plist command
    r = s.api("POST", "/api/v1/enrollments/%s/commands" % eid, plistlib.dumps({"RequestType": "ProfileList"}),
              headers={"Content-Type": "application/x-plist"})
    status(r, 201, "enqueue a plist command")
    expect_cmd(d.idle(), r.json().get("command_uuid"), "ProfileList", "plist command")
    d.report(r.json()["command_uuid"], "Acknowledged", ProfileList=[])
    r = s.api("POST", "/api/v1/enrollments/%s/commands" % eid, plistlib.dumps({"RequestType": "EraseDevice"}),
              headers={"Content-Type": "application/x-plist"})
    status(r, (400, 422), "enqueue a plist EraseDevice")
    ok("EraseDevice" in r.text, "the refusal must name EraseDevice", r)
    status(s.api("POST", "/api/v1/enrollments/%s/commands" % uuid.uuid4(), {"request_type": "ProfileList"}), 404,
           "enqueue for an unknown enrollment")
    status(s.api("POST", "/api/v1/enrollments/%s/commands" % eid, {"request_type": "ProfileList"}, key=None), 401,
           "enqueue without an API key")
    status(s.api("POST", "/api/v1/enrollments/%s/commands" % eid, {"request_type": "ProfileList"}, key="nope" * 8),
           401, "enqueue with a bad API key")
    status(s.api("GET", "/api/v1/commands/%s" % uuid.uuid4()), 404, "unknown command")
    status(s.api("GET", "/api/v1/enrollments", key=None), 401, "list without a key")


# --- real device messages ------------------------------------------------------------------------

ZENTRAL_RESULTS = (("certificate_list.plist", {"request_type": "CertificateList"}, "CertificateList"),
                   ("installed_application_list.plist", {"request_type": "InstalledApplicationList"},
                    "InstalledApplicationList"),
                   ("managed_application_list.plist", {"request_type": "ManagedApplicationList"},
                    "ManagedApplicationList"),
                   ("profile_list.plist", {"request_type": "ProfileList"}, "ProfileList"),
                   ("security_info.plist", {"request_type": "SecurityInfo"}, "SecurityInfo"),
                   ("security_info_ios.plist", {"request_type": "SecurityInfo"}, "SecurityInfo"),
                   ("device_information.plist", {"request_type": "DeviceInformation",
                                                 "Queries": ["OSVersion", "ModelName"]}, "QueryResponses"))


@test
def fixture_command_results_are_stored_as_json():
    s = srv()
    d = enrolled(s)
    fixtures = [("zentral", f, c, k) for f, c, k in ZENTRAL_RESULTS]
    fixtures.append(("nanomdm", "DeviceInformation.1.plist", {"request_type": "DeviceInformation",
                                                               "Queries": ["OSVersion"]}, "QueryResponses"))
    eq(d.idle(), None, "the enrollment's inventory round answered, nothing else queued")
    for folder, name, body, key in fixtures:
        raw = read_fixture(folder, name)
        # As captured (UDID-keyed, someone else's CommandUUID): refused or ignored, never 5xx.
        r = d.connect(raw)
        not_5xx(r, "%s/%s as captured" % (folder, name))
        u = enqueue(s, d.enrollment_id, body)
        expect_cmd(d.idle(), u, body["request_type"], name)
        report = plistlib.loads(raw)
        report.pop("UDID", None)
        report.pop("RequestType", None)
        report.update(CommandUUID=u, EnrollmentID=d.enrollment_id, Status="Acknowledged")
        r = d.connect(plistlib.dumps(report))
        status(r, 200, "%s/%s as this device's result" % (folder, name))
        eq(r.body, b"", "nothing queued after %s" % name)
        c = command(s, u)
        eq(c["status"], "acknowledged", "%s status" % name)
        stored = find_values(c["result"], key)
        ok(stored, "%s: result lacks %s: %r" % (name, key, json.dumps(c["result"])[:300]))
        if isinstance(report[key], (list, dict)):
            eq(len(stored[0]), len(report[key]), "%s: number of %s entries" % (name, key))


@test
def nanomdm_device_enrollment_messages_never_5xx():
    s = srv()
    d = enrolled(s)
    for name in ("Authenticate.1.plist", "Authenticate.2.plist", "TokenUpdate.1.plist", "TokenUpdate.2.plist",
                 "DeviceInformation.1.plist"):
        raw = read_fixture("nanomdm", name)
        for what, kw in (("with alice's token and identity", {}), ("without a token", {"token": None}),
                         ("without any identity", {"token": None, "signature": None, "client_cert": None})):
            not_5xx(d.checkin(raw, **kw), "check-in %s %s" % (name, what))
            not_5xx(d.connect(raw, **kw), "connect %s %s" % (name, what))
    eq(d.idle(), None, "alice's enrollment still works after the UDID messages")


def checkin_types():
    import yaml
    out = []
    folder = os.path.join(orchard.SPEC, "apple-device-management", "mdm", "checkin")
    for f in sorted(os.listdir(folder)):
        if f.endswith(".yaml"):
            with open(os.path.join(folder, f)) as fh:
                out.append(yaml.safe_load(fh)["payload"]["requesttype"])
    return out


@test
def every_checkin_message_type_is_handled_or_refused():
    s = srv()
    d = enrolled(s)
    types = checkin_types()
    ok({"Authenticate", "TokenUpdate", "CheckOut", "DeclarativeManagement"} <= set(types), "YAML types %r" % types)
    status_json = read_fixture("zentral", "status_report.json")
    extra = {"DeclarativeManagement": [{"Endpoint": "tokens"}, {"Endpoint": "declaration-items"},
                                       {"Endpoint": "status", "Data": status_json}],
             "GetToken": [{"TokenServiceType": "com.apple.maid", "TokenParameters": {}}],
             "UserAuthenticate": [{"UserID": "1A2B", "UserShortName": "alice", "UserLongName": "Alice"}],
             "SetBootstrapToken": [{"BootstrapToken": b"x" * 32}], "GetBootstrapToken": [{}]}
    for t in types:
        if t in ("CheckOut",):
            continue
        for keys in extra.get(t, [{}]):
            if t == "Authenticate":
                keys = dict(BuildVersion="22C161", OSVersion="18.2.1", ProductName="iPhone12,1")
            if t == "TokenUpdate":
                keys = dict(Token=d.push_token, PushMagic=d.push_magic, AwaitingConfiguration=False)
            r = d.checkin(d.message(t, **keys))
            not_5xx(r, "check-in %s %r" % (t, list(keys)))
            ok(r.status != 401, "check-in %s with a valid token got 401" % t, r)
    status(d.checkin(d.message("NoSuchMessageType")), 400, "unknown MessageType")
    status(d.checkin({"Topic": d.topic, "EnrollmentID": d.enrollment_id}), 400, "no MessageType")
    eq(d.idle(), None, "Idle after every message type")
    r = d.checkout()
    eq(r.body, b"", "CheckOut answer body")


@test
def malformed_checkin_and_connect_bodies_are_400():
    s = srv()
    d = enrolled(s)
    deep = b"<?xml version=\"1.0\"?><plist version=\"1.0\">" + b"<array>" * 20000 + b"</array>" * 20000 + b"</plist>"
    wide = plistlib.dumps({"MessageType": "TokenUpdate", "EnrollmentID": d.enrollment_id,
                           "Junk": list(range(60000))})
    for body, what in ((b"", "empty"), (os.urandom(300), "random bytes"),
                       (b"<?xml version=\"1.0\"?><plist><dict><key>MessageType</key>", "truncated plist"),
                       (plistlib.dumps(["Authenticate"]), "array plist"),
                       (b"bplist00" + os.urandom(40), "broken binary plist"), (deep, "nesting depth 20000"),
                       (wide, "60000 nodes"),
                       (b"<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;"
                        b"&a;&a;&a;&a;&a;\">]><plist><dict><key>MessageType</key><string>&b;</string></dict></plist>",
                        "XML entities")):
        for send, chan in ((d.checkin, "check-in"), (d.connect, "connect")):
            r = send(body)
            not_5xx(r, "%s with %s" % (chan, what))
            status(r, (400, 413), "%s with %s" % (chan, what))
    for msg, what in (({"EnrollmentID": d.enrollment_id}, "no Status"),
                      ({"Status": "Bogus", "EnrollmentID": d.enrollment_id}, "unknown Status"),
                      ({"Status": "Acknowledged", "EnrollmentID": d.enrollment_id}, "Acknowledged without CommandUUID")):
        r = d.connect(msg)
        status(r, 400, "connect " + what)
    bplist = plistlib.dumps({"Status": "Idle", "EnrollmentID": d.enrollment_id}, fmt=plistlib.FMT_BINARY)
    not_5xx(d.connect(bplist), "binary plist Idle")
    eq(d.idle(), None, "the enrollment still works")


# --- bearer token rules --------------------------------------------------------------------------

def unknown_token():
    return base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()


@test
def missing_unknown_and_foreign_tokens_get_the_challenge():
    s = srv()
    a, b = enrolled(s), enrolled(s, BOB)
    a2 = enrolled(s)  # alice's second device: same user, other enrollment
    for tok, what in ((None, "no token"), (unknown_token(), "unknown token"), (b.token, "bob's token"),
                      (a2.token, "token of alice's other enrollment")):
        s.assert_challenge(a.connect({"Status": "Idle", "EnrollmentID": a.enrollment_id}, token=tok),
                           "Idle with " + what)
        s.assert_challenge(a.checkin(a.message("TokenUpdate", Token=a.push_token, PushMagic=a.push_magic,
                                               AwaitingConfiguration=False), token=tok), "TokenUpdate with " + what)
        s.assert_challenge(a.checkin(a.message("CheckOut"), token=tok), "CheckOut with " + what)
    # A token bound to one enrollment cannot start another: a new device (its own profile and
    # SCEP identity) presenting alice's first device's token at Authenticate.
    thief = new_device(s).run_enrollment(check_in=False)
    s.assert_challenge(thief.checkin(thief.message("Authenticate", BuildVersion="22C161", OSVersion="18.2.1",
                                                   ProductName="iPhone12,1"), token=a.token),
                       "Authenticate of a new enrollment with another enrollment's token")
    thief.authenticate()  # with its own token it works
    for auth in ("Basic " + base64.b64encode(b"alice:x").decode(), "Bearer", "Bearer " + a.token + "x",
                 "Bearer " + "A" * 5000):
        s.assert_challenge(a.connect({"Status": "Idle", "EnrollmentID": a.enrollment_id}, token=None,
                                     extra_headers={"Authorization": auth}), "Authorization: %.30s" % auth)
    eq(a.idle(), None, "a 401 does not unenroll: alice's device still works")
    eq(b.idle(), None, "bob's device still works")


@test
def revoked_token_gets_the_challenge_and_reauthentication_recovers():
    s = srv()
    d = enrolled(s, auto_reauth=True)
    status(s.api("POST", "/api/v1/enrollments/%s/reauthenticate" % d.enrollment_id), 202, "reauthenticate")
    old = d.token
    s.assert_challenge(d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id}, reauth=False),
                       "Idle after the token was revoked")
    eq(d.idle(), None, "Idle after the device signed in again")
    eq(d.reauth_count, 1, "the device re-authenticated once")
    ok(d.token != old, "re-authentication yields a new token")
    s.assert_challenge(d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id}, token=old),
                       "the revoked token stays dead")


@test
def expired_tokens_get_the_challenge_but_checkout_is_accepted():
    s = Server(name="expiry", env={"ORCHARD_DEBUG_CLOCK": "true", "ORCHARD_REAUTH_INTERVAL": "3600",
                                   "ORCHARD_ENROLL_TOKEN_TTL": "60"})
    try:
        s.add_user(*ALICE)
        s.add_user(*BOB)
        s.start()
        d, leaving, bob = enrolled(s, auto_reauth=True), enrolled(s), enrolled(s, BOB)
        s.advance_clock(7200)  # past reauth_interval
        s.assert_challenge(d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id}, reauth=False),
                           "Idle with an expired token")
        s.assert_challenge(d.checkin(d.message("TokenUpdate", Token=d.push_token, PushMagic=d.push_magic,
                                               AwaitingConfiguration=False), reauth=False),
                           "TokenUpdate with an expired token")
        s.assert_challenge(leaving.checkin(leaving.message("CheckOut"), token=bob.token),
                           "CheckOut with a foreign (expired) token")
        r = leaving.checkin(leaving.message("CheckOut"), reauth=False)
        status(r, 200, "CheckOut with the device's own expired token")
        old = d.token
        eq(d.idle(), None, "Idle after re-authentication")
        eq(d.reauth_count, 1, "re-authentications")
        ok(d.token != old, "new token")
        s.assert_challenge(d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id}, token=old),
                           "the expired token stays dead")
        r = s.api("GET", "/api/v1/enrollments/%s" % d.enrollment_id)
        status(r, 200, "the enrollment survived the 401s")
        # A token that waits longer than enroll_token_ttl before its first check-in is dead.
        late = new_device(s).run_enrollment(check_in=False)
        s.advance_clock(120)
        s.assert_challenge(late.checkin(late.message("Authenticate", BuildVersion="22C161", OSVersion="18.2.1",
                                                     ProductName="iPhone12,1"), reauth=False),
                           "Authenticate with a token older than enroll_token_ttl")
    finally:
        s.stop()


# --- device identity -----------------------------------------------------------------------------

def scep_ca_key(s):
    for f in sorted(os.listdir(s.path("scep"))):
        p = s.path("scep", f)
        with open(p, "rb") as fh:
            if b"PRIVATE KEY-----" in fh.read():
                return pki.load_key(p)
    raise AssertionError("no SCEP CA private key in %s" % s.path("scep"))


def write_identity(d, name, cert, key):
    c, k = os.path.join(d.workdir, name + ".pem"), os.path.join(d.workdir, name + ".key")
    pki.write_pem(c, cert)
    pki.write_pem(k, key=key)
    return c, k


@test
def mdm_signature_sha256_and_sha1_are_accepted():
    d = enrolled()
    eq(d.idle(hash_name="sha256"), None, "Idle signed with SHA-256")
    eq(d.idle(hash_name="sha1"), None, "Idle signed with SHA-1")


@test
def bad_signatures_and_foreign_certificates_are_rejected():
    s = srv()
    d = enrolled(s)
    other = enrolled(s)  # a valid identity from Orchard's CA, bound to another enrollment
    body = idle_body(d)
    foreign_ca, foreign_ca_key = pki.make_ca("Orchard SCEP CA look-alike")
    foreign_cert = pki.issue(foreign_ca, foreign_ca_key, d.key.public_key(), subject=d.cert.subject)
    foreign = write_identity(d, "foreign", foreign_cert, d.key)
    ca_key = scep_ca_key(s)
    scep_ca = pki.load_cert(s.path("scep", "ca.pem"))
    expired_cert = pki.issue(scep_ca, ca_key, d.key.public_key(), subject=d.cert.subject,
                             not_before=pki.now() - datetime.timedelta(days=30),
                             not_after=pki.now() - datetime.timedelta(days=1))
    expired = write_identity(d, "expired", expired_cert, d.key)
    mine = (d.cert_path, d.key_path)
    cases = (
        ("signature made with another key", pki.forge_wrong_key_signature(body, d.cert, pki.new_key()), mine, body),
        ("signature over another body", d.sign(body), mine, body.replace(b"Idle", b"Idle ")),
        ("signature of an Idle sent with an Acknowledged body", d.sign(body), mine,
         plistlib.dumps({"Status": "Acknowledged", "CommandUUID": "X", "EnrollmentID": d.enrollment_id})),
        ("signature and TLS certificate from another CA", d.sign(body, cert=foreign_cert), foreign, body),
        ("signature from another CA, real TLS certificate", d.sign(body, cert=foreign_cert), mine, body),
        ("real signature, TLS certificate from another CA", d.sign(body), foreign, body),
        ("expired certificate from Orchard's CA", d.sign(body, cert=expired_cert), expired, body),
        ("identity of another enrollment", d.sign(body, cert=other.cert, key=other.key),
         (other.cert_path, other.key_path), body),
        ("garbage signature", "!!!not base64!!!", mine, body),
        ("base64 of junk", base64.b64encode(os.urandom(200)).decode(), mine, body),
        ("empty signature", "", mine, body),
        ("no signature and no client certificate", None, None, body),
    )
    for what, sig, tls, sent in cases:
        r = d.connect(sent, signature=sig, client_cert=tls, reauth=False)
        not_5xx(r, what)
        status_4xx(r, what)
    # the same on the check-in channel
    tu = plistlib.dumps(d.message("TokenUpdate", Token=d.push_token, PushMagic=d.push_magic, AwaitingConfiguration=False))
    status_4xx(d.checkin(tu, signature=pki.forge_wrong_key_signature(tu, d.cert, pki.new_key()), reauth=False),
               "TokenUpdate signed with another key")
    status_4xx(d.checkin(tu, signature=d.sign(tu, cert=foreign_cert), client_cert=foreign, reauth=False),
               "TokenUpdate from another CA")
    # Another enrollment's identity (same user, same CA) is not a renewal of this one.
    status_4xx(d.checkin(tu, signature=d.sign(tu, cert=other.cert, key=other.key),
                         client_cert=(other.cert_path, other.key_path), reauth=False),
               "TokenUpdate with the identity of the user's other enrollment")
    eq(other.idle(), None, "the other enrollment keeps its identity")
    eq(d.idle(), None, "the real identity still works")


@test
def expired_certificate_cannot_authenticate():
    s = srv()
    d = new_device(s).run_enrollment(check_in=False)
    scep_ca = pki.load_cert(s.path("scep", "ca.pem"))
    expired_cert = pki.issue(scep_ca, scep_ca_key(s), d.key.public_key(), subject=d.cert.subject,
                             not_before=pki.now() - datetime.timedelta(days=30),
                             not_after=pki.now() - datetime.timedelta(days=1))
    expired = write_identity(d, "expired", expired_cert, d.key)
    msg = plistlib.dumps(d.message("Authenticate", BuildVersion="22C161", OSVersion="18.2.1", ProductName="iPhone12,1"))
    r = d.checkin(msg, signature=d.sign(msg, cert=expired_cert), client_cert=expired, reauth=False)
    status_4xx(r, "Authenticate with an expired certificate")
    d.authenticate()  # the valid certificate works


@test
def proxy_certificate_headers_count_only_from_trusted_proxies():
    s = Server(name="proxy")
    s.add_user(*ALICE)
    s.start()
    try:
        d = enrolled(s)
        body = idle_body(d)
        # The two encodings of docs/HTTP.md: RFC 9440 and nginx $ssl_client_escaped_cert.
        rfc9440 = ":" + base64.b64encode(pki.cert_der(d.cert)).decode() + ":"
        nginx = urllib.parse.quote(open(d.cert_path).read())
        encodings = ((rfc9440, "RFC 9440 :base64-DER:"), (nginx, "URL-escaped PEM"))
        for name in ("Client-Cert", "X-SSL-Client-Cert"):
            for value, what in encodings:
                status_4xx(d.connect(body, signature=None, client_cert=None, extra_headers={name: value}),
                           "%s %s from an address that is not a trusted proxy" % (name, what))
        s.restart(env={"ORCHARD_TRUSTED_PROXIES": "127.0.0.1", "ORCHARD_PROXY_CERT_HEADER": "X-SSL-Client-Cert"})
        for value, what in encodings:
            status(d.connect(body, signature=None, client_cert=None, extra_headers={"X-SSL-Client-Cert": value}),
                   200, what + " in proxy_cert_header from a trusted proxy")
            status_4xx(d.connect(body, signature=None, client_cert=None, extra_headers={"Client-Cert": value}),
                       what + " in a header other than proxy_cert_header")
        ca, ca_key = pki.make_ca("proxy test foreign CA")
        foreign = pki.issue(ca, ca_key, d.key.public_key(), subject=d.cert.subject)
        status_4xx(d.connect(body, signature=None, client_cert=None,
                             extra_headers={"X-SSL-Client-Cert": ":" + base64.b64encode(pki.cert_der(foreign)).decode() + ":"}),
                   "a trusted proxy passing a certificate from another CA")
    finally:
        s.stop()


@test
def renewed_certificate_is_accepted_and_rebound():
    s = srv()
    d = enrolled(s)
    old_cert = (os.path.join(os.path.dirname(d.cert_path), "old-cert.pem"), d.key_path)
    d.scep_renew()
    eq(d.idle(), None, "Idle with the renewed certificate")
    d.token_update()
    u = enqueue(s, d.enrollment_id, {"request_type": "ProfileList"})
    expect_cmd(d.idle(), u, "ProfileList", "commands flow with the renewed certificate")
    ok(os.path.exists(old_cert[0]), "old certificate kept")


# --- crash ---------------------------------------------------------------------------------------

@test
def kill_9_loses_no_queued_command_and_resends_no_acknowledged_one():
    s = Server(name="crash")
    s.add_user(*ALICE)
    s.start()
    try:
        d = enrolled(s, timeout=10)
        eid = d.enrollment_id
        enqueued, received, acked = [], [], set()
        stop = threading.Event()
        errors = []

        lock = threading.Lock()

        def api_load():
            try:
                for _ in range(300):
                    if stop.is_set():
                        return
                    r = s.api("POST", "/api/v1/enrollments/%s/commands" % eid, {"request_type": "ProfileList"},
                              timeout=10)
                    if r.status == 201:
                        with lock:
                            enqueued.append(r.json()["command_uuid"])
            except Exception as e:  # the kill ends this thread
                errors.append(("api", repr(e)))

        def device_load():
            try:
                while not stop.is_set():
                    cmd = d.idle()
                    while cmd is not None and not stop.is_set():
                        u = cmd["CommandUUID"]
                        received.append(u)
                        r = d.connect({"Status": "Acknowledged", "CommandUUID": u, "EnrollmentID": eid,
                                       "ProfileList": []})
                        if r.status != 200:
                            raise sim.DeviceError("Ack refused", r)
                        acked.add(u)  # the server answered 200 to our result: it is stored
                        cmd = d.parse_command(r)
                    time.sleep(0.01)
            except Exception as e:
                errors.append(("device", repr(e)))

        # Two API writers outpace the device, so the kill lands with a backlog in the queue.
        threads = [threading.Thread(target=api_load), threading.Thread(target=api_load),
                   threading.Thread(target=device_load)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and all(t.is_alive() for t in threads):
            if len(acked) >= 25 and len(enqueued) - len(acked) >= 10:
                break
            time.sleep(0.02)
        ok(len(acked) >= 25, "load did not get going: %d acked, errors %r" % (len(acked), errors))
        s.kill9()
        stop.set()
        for t in threads:
            t.join(30)
            ok(not t.is_alive(), "load thread did not stop")
        orchard.log("crash test: %d enqueued (201), %d received, %d acked before kill -9; errors %r"
                    % (len(enqueued), len(received), len(acked), errors))
        acked_before = set(acked)
        s.start()
        for u in enqueued:  # nothing the API confirmed is lost
            c = command(s, u)
            if u in acked_before:
                eq(c["status"], "acknowledged", "status of %s, acknowledged before the crash" % u)
        after = d.run_commands(limit=1000)
        again = [c["CommandUUID"] for c in after if c["CommandUUID"] in acked_before]
        eq(again, [], "acknowledged commands re-sent after the restart")
        # A result the server stored just before the kill, whose 200 never reached the device,
        # is delivered too: it is acknowledged and rightly not sent again.
        stored_unseen = {u for u in received if u not in acked_before
                         and command_status(s, u) == "acknowledged"}
        delivered = acked_before | stored_unseen | {c["CommandUUID"] for c in after}
        missing = [u for u in enqueued if u not in delivered]
        eq(missing, [], "queued commands never delivered after the restart")
        for u in enqueued:
            eq(command_status(s, u), "acknowledged", "final status of %s" % u)
        eq(d.idle(), None, "queue empty at the end")
    finally:
        s.stop()


if __name__ == "__main__":
    orchard.main()
