#!/usr/bin/python3
"""
Issue 15, protocol details a real device would hit, over real HTTPS against `orchard serve`:

- the enrollment profile advertises only capabilities that Apple's schema lists and that Orchard
  serves (no `com.apple.mdm.token` while `GetToken` is refused), and every check-in message type
  Orchard answers is one the schema defines (read from the YAML in ORCHARD_SPEC);
- `DeclarativeManagement` cannot be enqueued through the command API (422 naming why);
- a macOS App Store install carries `Options.PurchaseMethod` = 1 (0 is iOS-only);
- service discovery refuses a `model-family` without `mdm-byod` (Apple TV, Watch, unknown);
- a device Orchard no longer knows (unknown EnrollmentID, ended enrollment) gets the 403 body
  `com.apple.unrecognized.device` (JSON, Content-Type set), and nothing else does: identity
  failures, revoked enrollments and expired tokens keep their own answers.
"""
import glob
import json
import os
import plistlib
import re
import sys
import tempfile
import uuid

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "sim"))
import device as sim  # noqa: E402
import orchard  # noqa: E402
from orchard import Server, eq, ok, status, test  # noqa: E402

ALICE = ("alice@example.com", "alice@appleid.example.com", "alice-Pa55word!")
MDM_YAML = os.path.join(orchard.SPEC, "apple-device-management", "mdm")
_srv = None


def srv():
    global _srv
    if _srv is None:
        _srv = Server(name="protocol")
        _srv.add_user(*ALICE)
        _srv.start()
    return _srv


def device(who=ALICE, **kw):
    s = srv()
    return sim.Device(s.url, who[0], who[2], ca_file=s.ca_file, signing_ca=s.path("signing", "ca.pem"),
                      workdir=tempfile.mkdtemp(prefix="dev-", dir=s.tmp), auto_reauth=False, **kw)


def load_yaml(*parts):
    with open(os.path.join(MDM_YAML, *parts)) as f:
        return yaml.safe_load(f)


def schema_capabilities():
    """ServerCapabilities values Apple's com.apple.mdm schema lists."""
    doc = load_yaml("profiles", "com.apple.mdm.yaml")
    for k in doc["payloadkeys"]:
        if k["key"] == "ServerCapabilities":
            return set(k["subkeys"][0]["rangelist"])
    raise AssertionError("com.apple.mdm.yaml has no ServerCapabilities")


def schema_checkin_types():
    """MessageType -> its supportedOS, from mdm/checkin/*.yaml."""
    out = {}
    for p in glob.glob(os.path.join(MDM_YAML, "checkin", "*.yaml")):
        with open(p) as f:
            doc = yaml.safe_load(f)
        out[doc["payload"]["requesttype"]] = doc["payload"].get("supportedOS", {})
    return out


def answered_checkin_types():
    """The MessageType strings mdm/checkin.c dispatches on."""
    with open(os.path.join(orchard.ROOT, "src", "mdm", "checkin.c")) as f:
        return set(re.findall(r'strcmp\(type, "([A-Za-z]+)"\) == 0', f.read()))


def ue_allowed(supported):
    return any((v or {}).get("userenrollment", {}).get("mode") == "allowed" for v in supported.values())


# --- capabilities and message types against the schema -------------------------------------------

@test("the enrollment profile advertises only capabilities the schema lists and Orchard serves")
def t_capabilities():
    d = device().run_enrollment()
    caps = d.mdm_payload.get("ServerCapabilities", [])
    schema = schema_capabilities()
    ok(caps, "ServerCapabilities present")
    for c in caps:
        ok(c in schema, "capability %r is not in Apple's schema %r" % (c, sorted(schema)))
    ok("com.apple.mdm.per-user-connections" in caps, "per-user-connections (frozen, macOS user channel)")
    # A capability promises a check-in message type: the device sends it, so it must be served.
    serves = {"com.apple.mdm.token": "GetToken", "com.apple.mdm.bootstraptoken": "GetBootstrapToken"}
    for cap, mt in serves.items():
        r = d.checkin(d.message(mt, TokenServiceType="com.apple.maid"))
        if cap in caps:
            eq(r.status, 200, "%s is advertised, so %s must be answered" % (cap, mt))
        else:
            ok(r.status != 200, "%s is not advertised and %s is refused (%d)" % (cap, mt, r.status))
    ok("com.apple.mdm.token" not in caps, "no com.apple.mdm.token while GetToken is refused")
    # EnrollmentMode, another enumerated string of the payload.
    doc = load_yaml("profiles", "com.apple.mdm.yaml")
    modes = [k for k in doc["payloadkeys"] if k["key"] == "EnrollmentMode"][0].get("rangelist")
    if modes:
        ok(d.mdm_payload["EnrollmentMode"] in modes, "EnrollmentMode %r in %r" % (d.mdm_payload["EnrollmentMode"], modes))


@test("every check-in MessageType Orchard answers is defined by the schema")
def t_message_types():
    schema = schema_checkin_types()
    answered = answered_checkin_types()
    ok(answered >= {"Authenticate", "TokenUpdate", "CheckOut"}, "parsed the dispatch: %r" % answered)
    for mt in sorted(answered):
        ok(mt in schema, "%s is answered but not in the schema's check-in messages %r" % (mt, sorted(schema)))
    # The ones Orchard accepts (200) must be usable in User Enrollment.
    for mt in ("Authenticate", "TokenUpdate", "CheckOut"):
        ok(ue_allowed(schema[mt]), "%s allowed in User Enrollment" % mt)


# --- DeclarativeManagement -----------------------------------------------------------------------

@test("DeclarativeManagement cannot be enqueued (it turns DDM on for good): 422 naming why")
def t_ddm_refused():
    s = srv()
    d = device().run_enrollment()
    d.run_commands()
    for body in ({"request_type": "DeclarativeManagement"},
                 plistlib.dumps({"RequestType": "DeclarativeManagement"})):
        r = s.api("POST", "/api/v1/enrollments/%s/commands" % d.enrollment_id, body)
        status(r, 422, "enqueue DeclarativeManagement")
        msg = r.json()["error"]
        ok("DeclarativeManagement" in msg and "for good" in msg, "the reason: %r" % msg)
    eq(d.idle(), None, "nothing was queued")


# --- macOS App Store installs ----------------------------------------------------------------

@test("a macOS App Store install carries Options.PurchaseMethod 1 (0 is iOS-only)")
def t_macos_purchase_method():
    s = srv()
    mac = ("mac@example.com", "mac@appleid.example.com", "mac-Pa55word!")
    s.add_user(*mac)
    d = device(mac, product="Mac14,2", model_family="Mac", os_version="15.2", build_version="24C101")
    d.run_enrollment()
    d.run_commands()
    r = s.api("POST", "/api/v1/apps", {"itunes_store_id": 497799835, "bundle_id": "com.example.xcodeish"})
    status(r, 201, "App Store app")
    app_id = r.json()["id"]
    # purchase_method 0 is refused for macOS (the entry stays valid for iOS), with a warning.
    r0 = s.api("POST", "/api/v1/apps", {"itunes_store_id": 497799836, "purchase_method": 0})
    status(r0, 201, "purchase_method 0: still an iOS app")
    ok(any("macOS" in w and "only on iOS" in w for w in r0.json()["warnings"]), r0.json())
    r = s.api("POST", "/api/v1/assignments", {"app_id": app_id, "enrollment_id": d.enrollment_id})
    status(r, 201, "assign to the Mac")
    cmd = d.idle()
    ok(cmd is not None, "the Mac gets the install")
    c = cmd["Command"]
    eq(c["RequestType"], "InstallApplication", "InstallApplication")
    eq(c["iTunesStoreID"], 497799835, "store id")
    eq(c.get("Options", {}).get("PurchaseMethod"), 1, "PurchaseMethod 1 on macOS")
    sim.Device.parse_command(d.connect({"Status": "Acknowledged", "CommandUUID": cmd["CommandUUID"],
                                        "EnrollmentID": d.enrollment_id, "Identifier": "com.example.xcodeish",
                                        "State": "Managed"}))


# --- discovery and model-family --------------------------------------------------------------

@test("discovery refuses a model-family without mdm-byod: 403 com.apple.well-known.failed")
def t_discovery_model_family():
    s = srv()
    d = device()

    def ask(mf):
        return orchard.request("GET", d.discovery_url(model_family=mf).replace(d.url, s.url),
                               headers={"Host": "example.com"}, ctx=s.ctx())

    for mf in ("iPhone", "iPad", "Mac", "RealityDevice", None):
        r = ask(mf)
        status(r, 200, "model-family %r" % mf)
        eq(json.loads(r.body)["Servers"][0]["Version"], "mdm-byod", "byod for %r" % mf)
    for mf in ("AppleTV", "Watch", "Toaster", "iphone", "x" * 300):
        r = ask(mf)
        status(r, 403, "model-family %r" % mf[:20])
        eq(r.content_type, "application/json", "JSON refusal")
        eq(json.loads(r.body)["code"], "com.apple.well-known.failed", "the Apple refusal code")


# --- 403 com.apple.unrecognized.device -----------------------------------------------------------

def unrecognized(r, what):
    status(r, 403, what)
    eq(r.content_type, "application/json", "%s: Content-Type" % what)
    j = json.loads(r.body)
    eq(j.get("code"), "com.apple.unrecognized.device", "%s: code" % what)
    ok(j.get("description"), "%s: description" % what)


def not_unrecognized(r, expect, what):
    status(r, expect, what)
    ok(b"com.apple.unrecognized.device" not in r.body, "%s must not tell the device to unenroll: %r"
       % (what, r.body[:200]))


@test("unknown EnrollmentID and ended enrollments get 403 com.apple.unrecognized.device")
def t_unrecognized():
    d = device().run_enrollment()
    d.run_commands()
    # A valid identity of ours, an EnrollmentID the store does not have (e.g. restored backup).
    real = d.enrollment_id
    d.enrollment_id = str(uuid.uuid4()).upper()
    unrecognized(d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id}), "connect, unknown id")
    unrecognized(d.checkin(d.message("TokenUpdate", Token=d.push_token, PushMagic=d.push_magic)),
                 "TokenUpdate, unknown id")
    # A macOS user channel under an unknown device channel is unknown too.
    unrecognized(d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id,
                            "EnrollmentUserID": "501"}), "user channel of an unknown device channel")
    d.enrollment_id = real
    # The enrollment ended (CheckOut): every later request is told so.
    d.checkout()
    unrecognized(d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id}), "connect after CheckOut")
    unrecognized(d.checkin(d.message("TokenUpdate", Token=d.push_token, PushMagic=d.push_magic)),
                 "TokenUpdate after CheckOut")


@test("identity failures, revoked enrollments and expired tokens never get unrecognized.device")
def t_not_unrecognized():
    s = srv()
    d = device().run_enrollment()
    d.run_commands()
    # No identity at all, and a forged signature: identity failures.
    not_unrecognized(d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id}, signature=None,
                               client_cert=None), 403, "no device identity")
    other = device().run_enrollment()
    not_unrecognized(d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id},
                               signature=other.sign(plistlib.dumps({"Status": "Idle",
                                                                    "EnrollmentID": d.enrollment_id}))),
                     403, "another device's identity")
    # A user channel under a live device channel that cannot be created: plain 403, the Mac stays.
    not_unrecognized(other.connect({"Status": "Idle", "EnrollmentID": other.enrollment_id,
                                    "EnrollmentUserID": "501"}), 403, "user channel not created")
    # Re-authentication demanded: 401, not 403.
    status(s.api("POST", "/api/v1/enrollments/%s/reauthenticate" % d.enrollment_id), 202, "reauth demand")
    r = d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id})
    status(r, 401, "re-authentication is a 401")
    # Revoked: cut off, but not told to unenroll (docs/DECISIONS.md).
    status(s.api("POST", "/api/v1/enrollments/%s/revoke" % other.enrollment_id), 202, "revoke")
    not_unrecognized(other.connect({"Status": "Idle", "EnrollmentID": other.enrollment_id}), 403,
                     "revoked enrollment")


@test("servers stop cleanly")
def t_stop():
    if _srv is not None:
        eq(_srv.stop(), 0, "exit code of orchard serve")


if __name__ == "__main__":
    orchard.main()
