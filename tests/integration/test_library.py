#!/usr/bin/python3
"""
Issue 7 (managed apps and profiles under User Enrollment's rules) over real HTTPS against
`orchard serve`, with devices enrolled by the simulator.

Covers: the profile library API (valid upload -> 201 with id and warnings; forbidden payload,
restriction or supervised-only key -> 422 naming the payload type and key; signed uploads;
duplicates; the enrollment profile's identifier), `orchard profile add|template`, the app
catalogue, assignments to a user / domain / enrollment with desired-state reconciliation
(exactly the missing commands, nothing on a second run), the device receiving InstallProfile
and InstallApplication with Configuration, the ManagedApplicationList result stored and
visible, a profile missing from ProfileList reinstalled, RemoveApplication / RemoveProfile on
unassign, and an enrollment that completes after the assignment getting its items at once.
"""
import base64
import os
import plistlib
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "sim"))
import device as sim  # noqa: E402
import orchard  # noqa: E402
from orchard import Server, eq, ok, status, test  # noqa: E402

ALICE = ("alice@example.com", "alice@appleid.example.com", "alice-Pa55word!")
BOB = ("bob@example.com", "bob@appleid.example.com", "bob-Pa55word!")
_srv = None


def srv():
    global _srv
    if _srv is None:
        _srv = Server(name="library")
        _srv.add_user(*ALICE)
        _srv.add_user(*BOB)
        _srv.start()
    return _srv


def enrolled(who=ALICE, **kw):
    s = srv()
    d = sim.Device(s.url, who[0], who[2], ca_file=s.ca_file, signing_ca=s.path("signing", "ca.pem"),
                   workdir=tempfile.mkdtemp(prefix="dev-", dir=s.tmp), auto_reauth=False, **kw)
    return d.run_enrollment()


def payload(ptype, ident, **keys):
    p = {"PayloadType": ptype, "PayloadVersion": 1, "PayloadIdentifier": ident,
         "PayloadUUID": "6C5A3B1E-1111-4A2B-9C3D-%012d" % (abs(hash(ident)) % 10 ** 12)}
    p.update(keys)
    return p


def mobileconfig(ident, *payloads, **top):
    p = {"PayloadType": "Configuration", "PayloadVersion": 1, "PayloadIdentifier": ident,
         "PayloadUUID": "7C5A3B1E-1111-4A2B-9C3D-%012d" % (abs(hash(ident)) % 10 ** 12),
         "PayloadDisplayName": ident, "PayloadContent": list(payloads)}
    p.update(top)
    return plistlib.dumps(p)


def wifi_profile(ident):
    return mobileconfig(ident, payload("com.apple.wifi.managed", ident + ".wifi", SSID_STR="Corp",
                                       EncryptionType="WPA2", AutoJoin=True))


def upload(s, body, query="", expect=201):
    r = s.api("POST", "/api/v1/profiles" + query, body, headers={"Content-Type": "application/x-apple-aspen-config"})
    status(r, expect, "upload profile %s" % query)
    return r.json()


def wait_job(s, answer, timeout=30):
    """The finished job of a 202 answer (GET /api/v1/jobs/{id} until it is done)."""
    job = answer.get("job")
    ok(isinstance(job, dict) and isinstance(job.get("id"), int), "a 202 names its job: %r" % (answer,))
    eq(job["url"], "/api/v1/jobs/%d" % job["id"], "job url")
    deadline = time.monotonic() + timeout
    while True:
        r = s.api("GET", job["url"])
        status(r, 200, "GET %s" % job["url"])
        j = r.json()
        if j["state"] in ("done", "failed"):
            eq(j["state"], "done", "job %d ended" % job["id"])
            return j
        ok(time.monotonic() < deadline, "job %d still %s after %ds: %r" % (job["id"], j["state"], timeout, j))
        time.sleep(0.05)


def assign(s, body, expect=None):
    """POST an assignment: 202 with a finished job for a user or domain (returned in "job"),
    201 with "reconciled" for one enrollment."""
    r = s.api("POST", "/api/v1/assignments", body)
    if expect is None:
        expect = 201 if "enrollment_id" in body else 202
    status(r, expect, "assign %r" % (body,))
    j = r.json()
    if expect == 202:
        ok(r.header("Location") == j["job"]["url"], "Location names the job: %r" % r.header("Location"))
        j["job"] = wait_job(s, j)
    return j


def unassign(s, aid):
    """DELETE an assignment to a user or domain: 202, the finished job."""
    r = s.api("DELETE", "/api/v1/assignments/%d" % aid)
    status(r, 202, "unassign %d" % aid)
    return wait_job(s, r.json())


def answer(d, cmd, **keys):
    """Acknowledges cmd; returns the next command (or None)."""
    return d.report(cmd["CommandUUID"], "Acknowledged", **keys)


def library(s, d):
    r = s.api("GET", "/api/v1/enrollments/%s/library" % d.enrollment_id)
    status(r, 200, "GET library state")
    return r.json()


def item(lib, kind, identifier):
    for i in lib["items"]:
        if i["kind"] == kind and i["identifier"] == identifier:
            return i
    return None


@test("valid profile is stored: 201 with id, identifier, platforms, warnings")
def t_upload_valid():
    s = srv()
    j = upload(s, wifi_profile("com.example.lib.wifi"))
    ok(isinstance(j.get("id"), int), "201 without an integer id: %r" % j)
    eq(j["identifier"], "com.example.lib.wifi", "identifier")
    eq(j["platforms"], "ios,macos,visionos", "every platform with the payload")
    ok(isinstance(j.get("warnings"), list), "warnings list")
    r = s.api("GET", "/api/v1/profiles/%d" % j["id"])
    status(r, 200, "GET profile")
    ok("SSID_STR" in r.json()["profile"], "GET returns the profile")
    r = s.api("GET", "/api/v1/profiles")
    ok(any(p["id"] == j["id"] for p in r.json()["profiles"]), "listed")
    # Ignored keys are accepted with a warning naming them.
    j = upload(s, mobileconfig("com.example.lib.passcode",
                               payload("com.apple.mobiledevice.passwordpolicy", "pc", minLength=8)),
               "?platform=ios")
    ok(any("minLength" in w for w in j["warnings"]), "warning names the ignored key: %r" % j["warnings"])
    eq(j["platforms"], "ios", "explicit platform")


@test("forbidden payloads and keys: 422 naming payload type and key")
def t_upload_forbidden():
    s = srv()
    cases = [
        (mobileconfig("com.example.bad.camera", payload("com.apple.applicationaccess", "r", allowCamera=False)),
         "?platform=ios", ["com.apple.applicationaccess", "allowCamera"]),
        (mobileconfig("com.example.bad.relay", payload("com.apple.applicationaccess", "r",
                                                       allowCloudPrivateRelay=False)),
         "?platform=visionos", ["allowCloudPrivateRelay", "supervised-only"]),
        (mobileconfig("com.example.bad.relay2", payload("com.apple.applicationaccess", "r",
                                                        allowCloudPrivateRelay=False)),
         "?platform=ios", ["allowCloudPrivateRelay", "not allowed in User Enrollment"]),
        (mobileconfig("com.example.bad.vpn", payload("com.apple.vpn.managed", "v", VPNType="IKEv2")), "",
         ["com.apple.vpn.managed"]),
        (mobileconfig("com.example.bad.wifi", payload("com.apple.wifi.managed", "w", SSID_STR="x",
                                                      ProxyType="Auto")), "", ["ProxyType"]),
        (mobileconfig("com.example.bad.type", payload("com.apple.applicationaccess", "r",
                                                      allowScreenShot="no")), "?platform=ios",
         ["allowScreenShot"]),
        (mobileconfig("com.example.bad.top", payload("com.apple.airprint", "a"), PayloadRemovalDisallowed=True),
         "?platform=ios", ["PayloadRemovalDisallowed"]),
    ]
    for body, q, words in cases:
        j = upload(s, body, q, expect=422)
        for w in words:
            ok(w in j.get("error", ""), "422 error %r should name %r" % (j, w))
    # Passcode on macOS: forbidden there; the answer says which platforms would do.
    j = upload(s, mobileconfig("com.example.bad.pc", payload("com.apple.mobiledevice.passwordpolicy", "p")),
               expect=422)
    ok("macOS" in j["error"] and "platform=ios,visionos" in j["error"], "hint: %r" % j)
    # The enrollment profile is never in the library; garbage is not a profile.
    j = upload(s, mobileconfig("io.orchard.enrollment", payload("com.apple.airprint", "a")), expect=422)
    ok("io.orchard.enrollment" in j["error"], j)
    upload(s, b"not a plist", expect=422)
    r = s.api("POST", "/api/v1/profiles?platform=tvos", wifi_profile("com.example.tv"))
    status(r, 400, "tvOS has no User Enrollment")
    r = s.api("POST", "/api/v1/profiles", wifi_profile("com.example.nokey"), key=None)
    status(r, 401, "no API key")


@test("signed .mobileconfig is accepted; duplicates are 409")
def t_upload_signed():
    s = srv()
    plain = os.path.join(s.tmp, "p.mobileconfig")
    signed = os.path.join(s.tmp, "p.signed")
    with open(plain, "wb") as f:
        f.write(wifi_profile("com.example.lib.signed"))
    subprocess.run(["openssl", "cms", "-sign", "-nodetach", "-outform", "DER", "-in", plain, "-out", signed,
                    "-signer", s.path("signing", "cert.pem"), "-inkey", s.path("signing", "key.pem"),
                    "-binary"], check=True, capture_output=True)
    with open(signed, "rb") as f:
        body = f.read()
    j = upload(s, body, "?sign=true&sensitive=true")
    eq(j["identifier"], "com.example.lib.signed", "identifier from the signed content")
    r = s.api("GET", "/api/v1/profiles/%d" % j["id"])
    eq(r.json()["sign"], True, "sign flag")
    eq(r.json()["sensitive"], True, "sensitive flag")
    upload(s, body, expect=409)


@test("orchard profile template and profile add")
def t_cli():
    s = srv()
    p = s.cli("profile", "template")
    for name in ("data-separation", "per-app-vpn", "wifi", "exchange", "mail", "certificate-root",
                 "certificate-pkcs1", "passcode"):
        ok(name in p.stdout, "template %s listed" % name)
    p = s.cli("profile", "template", "data-separation")
    t = plistlib.loads(p.stdout.encode())
    r = t["PayloadContent"][0]
    eq(r["PayloadType"], "com.apple.applicationaccess", "restrictions payload")
    eq(r["allowOpenFromManagedToUnmanaged"], False, "managed open-in")
    eq(r["allowOpenFromUnmanagedToManaged"], False, "unmanaged open-in")
    eq(r["requireManagedPasteboard"], True, "managed pasteboard")
    # Every template uploads through the API for its platforms.
    for name, plat in (("data-separation", "ios,visionos"), ("exchange", "ios"), ("mail", ""),
                       ("per-app-vpn", ""), ("certificate-root", ""), ("passcode", "ios,visionos")):
        xml = s.cli("profile", "template", name).stdout.encode()
        q = "?platform=" + plat if plat else ""
        j = upload(s, xml.replace(b"com.example.orchard.", b"com.example.tpl."), q)
        ok(j["id"] > 0, "template %s uploaded" % name)
    path = os.path.join(s.tmp, "cli.mobileconfig")
    with open(path, "wb") as f:
        f.write(wifi_profile("com.example.cli.wifi"))
    p = s.cli("profile", "add", "--data", s.data, path, "--platform", "ios", "--sensitive")
    ok(p.stdout.strip().isdigit(), "profile add prints the id: %r" % p.stdout)
    with open(path, "wb") as f:
        f.write(mobileconfig("com.example.cli.bad", payload("com.apple.applicationaccess", "r", allowCamera=False)))
    p = s.cli("profile", "add", "--data", s.data, path, "--platform", "ios", check=False)
    ok(p.returncode != 0 and "allowCamera" in p.stderr, "CLI refusal names the key: %r" % p.stderr)


@test("assign a profile to a user: the device installs it, second reconcile enqueues nothing")
def t_profile_end_to_end():
    s = srv()
    d = enrolled(ALICE)
    eq(d.idle(), None, "nothing queued before any assignment")
    pid = upload(s, wifi_profile("com.example.e2e.wifi"))["id"]
    j = assign(s, {"profile_id": pid, "user": "Alice@Example.com"})
    eq(j["user"], "alice@example.com", "target stored lowercase")
    eq(j["job"]["installs"], 1, "one install enqueued")
    eq((j["job"]["scope"], j["job"]["target"]), ("user", "alice@example.com"), "the job's filter")
    aid = j["id"]
    cmd = d.idle()
    ok(cmd is not None, "the device gets a command")
    eq(cmd["Command"]["RequestType"], "InstallProfile", "InstallProfile")
    inner = plistlib.loads(cmd["Command"]["Payload"])
    eq(inner["PayloadIdentifier"], "com.example.e2e.wifi", "the library profile")
    eq(answer(d, cmd), None, "nothing else")
    it = item(library(s, d), "profile", "com.example.e2e.wifi")
    ok(it and it["state"] == "installed", "installed state: %r" % it)
    r = s.api("POST", "/api/v1/enrollments/%s/reconcile" % d.enrollment_id)
    status(r, 200, "reconcile")
    eq(r.json()["reconciled"]["installs"] + r.json()["reconciled"]["removals"], 0, "idempotent")
    eq(d.idle(), None, "no new command")
    # The device lost the profile: ProfileList tells Orchard, which reinstalls it once.
    r = s.api("POST", "/api/v1/enrollments/%s/reconcile?refresh=true" % d.enrollment_id)
    status(r, 200, "refresh")
    cmd = d.idle()
    seen = []
    while cmd is not None:
        rt = cmd["Command"]["RequestType"]
        seen.append(rt)
        if rt == "ProfileList":
            cmd = answer(d, cmd, ProfileList=[{"PayloadIdentifier": "io.orchard.enrollment"}])
        elif rt == "ManagedApplicationList":
            cmd = answer(d, cmd, ManagedApplicationList={})
        else:
            cmd = answer(d, cmd)
    eq(sorted(seen), ["InstallProfile", "ManagedApplicationList", "ProfileList"], "reinstall after ProfileList")
    ok(seen.index("InstallProfile") > seen.index("ProfileList"), "the reinstall follows the list: %r" % seen)
    # Unassign: RemoveProfile of exactly that identifier.
    eq(unassign(s, aid)["removals"], 1, "one removal")
    cmd = d.idle()
    eq(cmd["Command"]["RequestType"], "RemoveProfile", "RemoveProfile")
    eq(cmd["Command"]["Identifier"], "com.example.e2e.wifi", "its identifier")
    eq(answer(d, cmd), None, "done")
    ok(item(library(s, d), "profile", "com.example.e2e.wifi") is None, "state forgotten")


@test("app with configuration: InstallApplication, ManagedApplicationList stored, removal on unassign")
def t_app_end_to_end():
    s = srv()
    d = enrolled(ALICE)
    r = s.api("POST", "/api/v1/apps", {"bundle_id": "com.example.docs", "remove_on_unenroll": True,
                                        "configuration": {"ServerURL": "https://docs.example.com", "Port": 443},
                                        "attributes": {"Removable": False}})
    status(r, 201, "app created")
    app_id = r.json()["id"]
    # macOS drops ManagementFlags (forbidden in macOS UE by the schema): a warning says so.
    ok(any("ManagementFlags" in w and "macOS" in w for w in r.json()["warnings"]), r.json())
    status(s.api("POST", "/api/v1/apps", {"manifest_url": "http://insecure/x.plist"}), 422, "https only")
    status(s.api("POST", "/api/v1/apps", {}), 422, "needs an id")
    j = assign(s, {"app_id": app_id, "domain": "example.com"})
    ok(j["job"]["installs"] >= 1, "installs enqueued: %r" % j)
    eq(j["job"]["installs"], j["job"]["done"], "one per enrollment in the domain")
    eq(j["job"]["total"], j["job"]["done"], "every enrollment counted was worked")
    cmd = d.idle()
    c = cmd["Command"]
    eq(c["RequestType"], "InstallApplication", "InstallApplication")
    eq(c["Identifier"], "com.example.docs", "bundle id")
    eq(c["Configuration"], {"ServerURL": "https://docs.example.com", "Port": 443}, "managed app configuration")
    eq(c["ManagementFlags"], 1, "remove when unenrolled")
    eq(c["Options"]["PurchaseMethod"], 1, "PurchaseMethod 1 for UE on iOS")
    eq(c["Attributes"], {"Removable": False}, "attributes")
    eq(answer(d, cmd, Identifier="com.example.docs", State="Managed"), None, "ack")
    # ManagedApplicationList, enqueued by the admin, answered by the device: stored and shown.
    r = s.api("POST", "/api/v1/enrollments/%s/commands" % d.enrollment_id, {"request_type": "ManagedApplicationList"})
    status(r, 201, "enqueue ManagedApplicationList")
    cmd = d.idle()
    eq(cmd["Command"]["RequestType"], "ManagedApplicationList", "list requested")
    mal = {"com.example.docs": {"Status": "Managed", "ManagementFlags": 1, "HasConfiguration": True,
                                "HasFeedback": False, "IsValidated": True}}
    eq(answer(d, cmd, ManagedApplicationList=mal), None, "no reinstall: the app is there")
    lib = library(s, d)
    eq(lib["managed_application_list"]["com.example.docs"]["Status"], "Managed", "stored list visible")
    it = item(lib, "app", "com.example.docs")
    ok(it and it["state"] == "installed" and it["detail"] == "Managed", "app state: %r" % it)
    r = s.api("GET", "/api/v1/commands/%s" % cmd["CommandUUID"])
    eq(r.json()["result"]["ManagedApplicationList"]["com.example.docs"]["Status"], "Managed", "result stored")
    # Unassign: RemoveApplication.
    unassign(s, j["id"])
    cmd = d.idle()
    eq(cmd["Command"]["RequestType"], "RemoveApplication", "RemoveApplication")
    eq(cmd["Command"]["Identifier"], "com.example.docs", "its bundle id")
    eq(answer(d, cmd), None, "done")
    r = s.api("POST", "/api/v1/enrollments/%s/reconcile" % d.enrollment_id)
    eq(r.json()["reconciled"], {"enrollments": 1, "installs": 0, "removals": 0, "errors": 0}, "idempotent")


@test("an enrollment completing after the assignment gets its items at TokenUpdate")
def t_enroll_after_assign():
    s = srv()
    pid = upload(s, wifi_profile("com.example.bob.wifi"))["id"]
    j = assign(s, {"profile_id": pid, "user": BOB[0]})
    eq((j["job"]["total"], j["job"]["done"]), (0, 0), "bob has no enrollment yet")
    d = enrolled(BOB)
    cmds = d.run_commands()
    eq([c["Command"]["RequestType"] for c in cmds], ["InstallProfile"], "installed at enrollment")
    # Deleting the profile from the library removes it from devices.
    r = s.api("DELETE", "/api/v1/profiles/%d" % pid)
    status(r, 202, "delete profile")
    eq(wait_job(s, r.json())["removals"], 1, "removal enqueued")
    cmd = d.idle()
    eq(cmd["Command"]["RequestType"], "RemoveProfile", "RemoveProfile after delete")
    answer(d, cmd)
    status(s.api("GET", "/api/v1/profiles/%d" % pid), 404, "gone")
    status(s.api("POST", "/api/v1/assignments", {"profile_id": pid, "user": BOB[0]}), 404, "unknown profile")
    status(s.api("POST", "/api/v1/assignments", {"profile_id": 1}), 400, "no target")


@test("a profile marked sign and sensitive reaches the device signed, in a sensitive command")
def t_signed_sensitive_delivery():
    s = srv()
    j = upload(s, wifi_profile("com.example.lib.signsens"), "?sign=true&sensitive=true&platform=ios")
    d = enrolled(ALICE)
    d.run_commands()  # whatever alice already has
    a = assign(s, {"profile_id": j["id"], "enrollment_id": d.enrollment_id})
    eq(a["reconciled"]["installs"], 1, "one install, only for this enrollment")
    cmd = d.idle()
    eq(cmd["Command"]["RequestType"], "InstallProfile", "InstallProfile")
    der = cmd["Command"]["Payload"]
    eq(der[:1], b"\x30", "a CMS SignedData payload")
    path = os.path.join(s.tmp, "sent.der")
    with open(path, "wb") as f:
        f.write(der)
    p = subprocess.run(["openssl", "cms", "-verify", "-inform", "DER", "-in", path, "-CAfile",
                        s.path("signing", "ca.pem"), "-purpose", "any"], capture_output=True)
    eq(p.returncode, 0, "signature verifies with the signing CA: %s" % p.stderr.decode(errors="replace"))
    eq(plistlib.loads(p.stdout)["PayloadIdentifier"], "com.example.lib.signsens", "signed content")
    r = s.api("GET", "/api/v1/commands/%s" % cmd["CommandUUID"])
    eq(r.json()["sensitive"], True, "the command carries the sensitive flag")
    answer(d, cmd)
    it = item(library(s, d), "profile", "com.example.lib.signsens")
    ok(it and it["sensitive"] and it["state"] == "installed", "state: %r" % it)


@test("a profile replaced in place is installed again where an older version is, and only there")
def t_profile_replace():
    s = srv()
    carol = ("carol@example.com", "carol@appleid.example.com", "carol-Pa55word!")
    s.add_user(*carol)
    d = enrolled(carol)
    eq(d.idle(), None, "nothing queued before any assignment")

    def wifi(ssid):
        return mobileconfig("com.example.replace.wifi",
                            payload("com.apple.wifi.managed", "com.example.replace.wifi.w",
                                    SSID_STR=ssid, EncryptionType="WPA2", AutoJoin=True))

    def replace(pid, body, expect=202):
        r = s.api("PUT", "/api/v1/profiles/%d" % pid, body,
                  headers={"Content-Type": "application/x-apple-aspen-config"})
        status(r, expect, "PUT profile %d" % pid)
        j = r.json()
        if expect == 202:
            j["job"] = wait_job(s, j)
        return j

    def installs(d):
        """Drains the device's queue, acknowledging; returns the SSIDs it was given."""
        got, cmd = [], d.idle()
        while cmd is not None:
            eq(cmd["Command"]["RequestType"], "InstallProfile", "only installs")
            inner = plistlib.loads(cmd["Command"]["Payload"])
            got.append(inner["PayloadContent"][0]["SSID_STR"])
            cmd = answer(d, cmd)
        return got

    pid = upload(s, wifi("Corp"))["id"]
    assign(s, {"profile_id": pid, "user": carol[0]})
    eq(installs(d), ["Corp"], "version 1 installed")
    j = replace(pid, wifi("Corp-5G"))
    eq((j["version"], j["identifier"]), (2, "com.example.replace.wifi"), "version 2")
    eq(j["job"]["installs"], 1, "one reinstall enqueued")
    eq(j["job"]["target"], {"profile_id": pid}, "the job covers the profile's enrollments")
    eq(installs(d), ["Corp-5G"], "the new content goes out over the old")
    it = item(library(s, d), "profile", "com.example.replace.wifi")
    ok(it and it["state"] == "installed" and it["version"] == 2, "installed at version 2: %r" % it)
    r = s.api("POST", "/api/v1/enrollments/%s/reconcile" % d.enrollment_id)
    eq(r.json()["reconciled"]["installs"], 0, "up to date: nothing more")
    eq(d.idle(), None, "no new command")
    # Two replacements before the device comes back: both go out, the newest last.
    replace(pid, wifi("Corp-v3"))
    replace(pid, wifi("Corp-v4"))
    eq(installs(d), ["Corp-v3", "Corp-v4"], "in order, newest last")
    it = item(library(s, d), "profile", "com.example.replace.wifi")
    ok(it and it["state"] == "installed" and it["version"] == 4, "installed at version 4: %r" % it)
    r = s.api("GET", "/api/v1/profiles/%d" % pid)
    eq(r.json()["version"], 4, "GET shows the version")
    ok("Corp-v4" in r.json()["profile"], "and the new content")
    # Refusals: another identifier, an invalid profile, an unknown id; nothing changes.
    j = replace(pid, wifi_profile("com.example.other.wifi"), expect=409)
    eq(j["identifier"], "com.example.replace.wifi", "the 409 names the identifier to keep")
    bad = mobileconfig("com.example.replace.wifi", payload("com.apple.vpn.managed", "com.example.replace.v",
                                                          VPNType="IKEv2"))
    ok("com.apple.vpn.managed" in replace(pid, bad, expect=422)["error"], "the 422 names the payload")
    replace(999999, wifi("x"), expect=404)
    eq(s.api("GET", "/api/v1/profiles/%d" % pid).json()["version"], 4, "still version 4")
    eq(d.idle(), None, "nothing sent for the refusals")


@test("an app replaced in place gets its new managed configuration where an older version is")
def t_app_replace():
    s = srv()
    dave = ("dave@example.com", "dave@appleid.example.com", "dave-Pa55word!")
    s.add_user(*dave)
    d = enrolled(dave)

    def spec(url):
        return {"bundle_id": "com.example.notes", "configuration": {"ServerURL": url}}

    r = s.api("POST", "/api/v1/apps", spec("https://v1.example.com"))
    status(r, 201, "app created")
    app_id = r.json()["id"]
    eq(r.json()["version"], 1, "version 1")
    assign(s, {"app_id": app_id, "user": dave[0]})
    cmd = d.idle()
    eq(cmd["Command"]["Configuration"], {"ServerURL": "https://v1.example.com"}, "first configuration")
    eq(answer(d, cmd, Identifier="com.example.notes", State="Managed"), None, "installed")
    r = s.api("PUT", "/api/v1/apps/%d" % app_id, spec("https://v2.example.com"))
    status(r, 202, "replaced")
    eq((r.json()["version"], wait_job(s, r.json())["installs"]), (2, 1), "version 2, one reinstall")
    cmd = d.idle()
    eq(cmd["Command"]["RequestType"], "InstallApplication", "InstallApplication again")
    eq(cmd["Command"]["Configuration"], {"ServerURL": "https://v2.example.com"}, "the new configuration")
    eq(answer(d, cmd, Identifier="com.example.notes", State="Managed"), None, "updated")
    it = item(library(s, d), "app", "com.example.notes")
    ok(it and it["state"] == "installed" and it["version"] == 2, "installed at version 2: %r" % it)
    r = s.api("POST", "/api/v1/enrollments/%s/reconcile" % d.enrollment_id)
    eq(r.json()["reconciled"]["installs"], 0, "up to date")
    r = s.api("PUT", "/api/v1/apps/%d" % app_id, {"bundle_id": "com.example.other"})
    status(r, 409, "another bundle id is another app")
    eq(r.json()["bundle_id"], "com.example.notes", "the 409 names the bundle id to keep")
    status(s.api("PUT", "/api/v1/apps/%d" % app_id, {"bundle_id": "com.example.notes",
                                                    "manifest_url": "http://insecure/x.plist"}), 422, "invalid")
    status(s.api("PUT", "/api/v1/apps/999999", spec("https://x.example.com")), 404, "unknown app")
    eq(s.api("GET", "/api/v1/apps/%d" % app_id).json()["version"], 2, "refusals changed nothing")
    eq(d.idle(), None, "nothing more sent")


@test("servers stop cleanly")
def t_stop():
    if _srv is not None:
        eq(_srv.stop(), 0, "exit code of orchard serve")


if __name__ == "__main__":
    orchard.main()
