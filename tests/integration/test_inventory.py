#!/usr/bin/python3
"""
The device inventory (docs/INVENTORY.md) against a live `orchard serve` and the device simulator.

Covers: an enrollment triggers a round the simulated device answers, and the typed fields appear
in GET /api/v1/enrollments/{id}; what each platform is asked never includes a query Apple's schema
forbids for a user enrollment there (checked against the YAML itself, not Orchard's tables); the
on-demand POST /api/v1/enrollments/{id}/inventory (202 with the uuids, 409 while pending); the
schedule (`inventory_interval`) with the debug clock, without a second round while one is
pending; the webhook `enrollment.inventory_changed` when the OS version changes; and the list
filters, cursor pages and CSV export over a few hundred enrollments (a few real, the rest seeded
straight into the SQLite store).
"""
import csv
import http.server
import io
import json
import os
import sqlite3
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
from orchard import Server, eq, ok, status, test  # noqa: E402

import yaml  # noqa: E402  (Debian's python3-yaml, as tools/gen_tables.py)

ALICE = ("alice@example.com", "alice@appleid.example.com", "alice-Pa55word!")
BOB = ("bob@example.com", "bob@appleid.example.com", "bob-Pa55word!")
DAY = 86400
ROUND_IOS = ["DeviceInformation", "SecurityInfo", "ProfileList", "CertificateList", "InstalledApplicationList"]


# --- a webhook receiver (plain HTTP on loopback, which webhook_url allows) -----------------------

class Receiver:
    def __init__(self):
        events = self.events = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                events.append(json.loads(self.rfile.read(n) or b"{}"))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/hook" % self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        orchard.on_exit(self.httpd.shutdown)

    def wait_for(self, type_, n=1, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = [e for e in self.events if e.get("type") == type_]
            if len(got) >= n:
                return got
            time.sleep(0.1)
        raise AssertionError("no %d %s event(s) within %ds; got %r" % (n, type_, timeout,
                                                                        [e.get("type") for e in self.events]))


_srv = _hook = None


def srv():
    """One server for the device tests: the scheduler ticks every second, time moves on demand."""
    global _srv, _hook
    if _srv is None:
        _hook = Receiver()
        _srv = Server(name="inventory", env={"ORCHARD_DEBUG_CLOCK": "true", "ORCHARD_SCHEDULER_INTERVAL": "1",
                                             "ORCHARD_WEBHOOK_URL": _hook.url,
                                             "ORCHARD_WEBHOOK_SECRET": "inventory-test-secret-0123"})
        _srv.add_user(*ALICE)
        _srv.add_user(*BOB)
        _srv.start()
    return _srv


def device(s, who=ALICE, **kw):
    return sim.Device(s.url, who[0], who[2], ca_file=s.ca_file, signing_ca=s.path("signing", "ca.pem"),
                      workdir=tempfile.mkdtemp(prefix="dev-", dir=s.tmp), **kw)


def enrolled(s, who=ALICE, **kw):
    d = device(s, who, **kw)
    d.run_enrollment()
    return d


def enrollment(s, d):
    r = s.api("GET", "/api/v1/enrollments/%s" % urllib.parse.quote(d.enrollment_id, safe=""))
    status(r, 200, "GET the enrollment")
    return r.json()


def wait(what, fn, timeout=10):
    """Polls fn() until it returns a true value (the scheduler ticks every second)."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s" % what)
        time.sleep(0.2)


# --- what the schema lets a user enrollment ask (read from Apple's YAML, independently) ----------

def spec_dir():
    return os.path.join(orchard.SPEC, "apple-device-management")


def _merged(base, own):
    out = dict(base or {})
    for k, v in (own or {}).items():
        out[k] = dict(out.get(k) or {}, **v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _usable(rec):
    intro = rec.get("introduced")
    mode = (rec.get("userenrollment") or {}).get("mode", "allowed")
    return intro not in (None, "n/a") and mode != "forbidden" and rec.get("supervised") is not True


def allowed_queries(os_name):
    """The DeviceInformation Queries a user enrollment may ask on os_name ("iOS", "macOS", ...)."""
    with open(os.path.join(spec_dir(), "mdm", "commands", "information.device.yaml")) as f:
        doc = yaml.safe_load(f)
    cmd = (doc["payload"].get("supportedOS") or {}).get(os_name) or {}
    queries = next(k for k in doc["payloadkeys"] if k["key"] == "Queries")
    item = queries["subkeys"][0]
    out = set()
    for q in item.get("subkeys") or []:
        rec = _merged(_merged(cmd, (queries.get("supportedOS") or {}).get(os_name)),
                      (q.get("supportedOS") or {}).get(os_name))
        if _usable(rec):
            out.add(q["key"])
    return out


def allowed_command(request_type, os_name):
    for name in os.listdir(os.path.join(spec_dir(), "mdm", "commands")):
        with open(os.path.join(spec_dir(), "mdm", "commands", name)) as f:
            doc = yaml.safe_load(f)
        if (doc.get("payload") or {}).get("requesttype") == request_type:
            return _usable((doc["payload"].get("supportedOS") or {}).get(os_name) or {})
    return False


# --- enrollment, what is asked, what is stored ---------------------------------------------------

@test
def enrollment_triggers_an_inventory_whose_fields_appear_in_the_enrollment():
    s = srv()
    d = enrolled(s)
    before = enrollment(s, d)
    inv = before.get("inventory")
    ok(isinstance(inv, dict), "GET /api/v1/enrollments/{id} has no inventory: %r" % before)
    eq(inv["pending_commands"], 5, "the first round is queued at enrollment")
    eq(inv["updated_at"], 0, "nothing answered yet")
    eq(inv["os_version"], "18.2.1", "seeded with what Authenticate reported")
    eq(d.idle(), None, "the device answers the round and nothing else is queued")
    eq(sorted(c["Command"]["RequestType"] for c in d.inventory_answered), sorted(ROUND_IOS), "the iOS round")
    for c in d.inventory_answered:
        ok(c["CommandUUID"].startswith(sim.INVENTORY_PREFIX), "inventory uuid %s" % c["CommandUUID"])
    e = enrollment(s, d)
    inv = e["inventory"]
    eq(inv["pending_commands"], 0, "round answered")
    ok(inv["updated_at"] > 0 and inv["requested_at"] > 0, "times: %r" % inv)
    eq(inv["os_version"], "18.2.1", "OS version")
    eq(inv["build_version"], "22C161", "build")
    eq(inv["product_name"], "iPhone12,1", "product")
    eq(inv["model_name"], "iPhone", "model name")
    eq(inv["device_name"], "iPhone", "device name (a user-enrolled iPhone reports a generic one)")
    eq(inv["storage_capacity_mb"], 128000, "capacity")
    eq(inv["storage_available_mb"], 41520, "available")
    eq(inv["passcode_compliant"], True, "passcode compliant (SecurityInfo)")
    eq(inv["passcode_present"], None, "PasscodePresent is not reported in iOS User Enrollment")
    eq(inv["profile_count"], 1, "the enrollment profile")
    eq([p.get("identifier") for p in inv["profiles"]], [d.profile["PayloadIdentifier"]], "profiles")
    eq(inv["certificate_count"], 1, "the device identity")
    eq(inv["certificates"][0]["sha256"], d.cert.fingerprint(sim.hashes.SHA256()).hex(), "certificate fingerprint")
    eq(inv["app_count"], 0, "no managed apps")
    eq(inv["apps"], [], "apps")
    ok(inv["next_at"] >= inv["requested_at"] + DAY - 5, "next round a day later: %r" % inv)
    ok(e["last_seen_at"] > 0, "last check-in")
    # The list shows counts, not the lists.
    r = s.api("GET", "/api/v1/enrollments?limit=500")
    mine = [x for x in r.json()["enrollments"] if x["id"] == d.enrollment_id]
    eq(len(mine), 1, "listed")
    eq(mine[0]["inventory"]["app_count"], 0, "count in the list")
    ok("apps" not in mine[0]["inventory"], "the list carries no app lists")


@test
def no_query_user_enrollment_forbids_is_ever_sent():
    s = srv()
    for product, os_name, app_list in (("iPhone12,1", "iOS", "InstalledApplicationList"),
                                       ("Mac14,2", "macOS", "ManagedApplicationList"),
                                       ("RealityDevice14,1", "visionOS", "InstalledApplicationList")):
        d = enrolled(s, BOB, product=product, os_version={"iOS": "18.2.1", "macOS": "15.2"}.get(os_name, "2.2"))
        eq(d.idle(), None, "%s: the round is answered" % os_name)
        types = [c["Command"]["RequestType"] for c in d.inventory_answered]
        ok(app_list in types, "%s asks %s: %r" % (os_name, app_list, types))
        for c in d.inventory_answered:
            cmd = c["Command"]
            ok(allowed_command(cmd["RequestType"], os_name),
               "%s: %s is not allowed in User Enrollment there" % (os_name, cmd["RequestType"]))
            if cmd["RequestType"] == "DeviceInformation":
                asked = set(cmd["Queries"])
                bad = asked - allowed_queries(os_name)
                eq(bad, set(), "%s: DeviceInformation asks queries User Enrollment forbids" % os_name)
                ok({"OSVersion", "BuildVersion", "DeviceCapacity"} <= asked, "%s asks %r" % (os_name, asked))
        if os_name == "macOS":
            ok("InstalledApplicationList" not in types, "macOS User Enrollment forbids InstalledApplicationList")
            inv = enrollment(s, d)["inventory"]
            eq(inv["os_version"], "15.2", "macOS version")
            eq(inv["device_name"], "Ann's MacBook Air", "a Mac reports its name")
            eq(inv["passcode_compliant"], None, "no passcode keys on macOS")


@test
def only_answers_to_what_was_asked_are_stored():
    s = srv()
    d = enrolled(s, auto_inventory=False)
    # A report for an inventory-looking CommandUUID Orchard never queued: ignored.
    forged = sim.INVENTORY_PREFIX + "FFF-8FFF-FFFFFFFFFFFF"
    cmd = d.report(forged, QueryResponses={"OSVersion": "99.0", "DeviceName": "forged"},
                   SecurityInfo={"PasscodeCompliant": False})
    inv = enrollment(s, d)["inventory"]
    eq(inv["updated_at"], 0, "the forged report stored nothing")
    eq((inv["os_version"], inv["device_name"], inv["passcode_compliant"]), ("18.2.1", None, None),
       "values after the forged report")
    answered = []
    while cmd is not None:
        c = cmd["Command"]
        keys = sim.canned_result(c, d.platform, d)
        if c["RequestType"] == "DeviceInformation":
            # More than was asked: a forbidden query's answer and another command's answer.
            keys["QueryResponses"]["SerialNumber"] = "F2LXK0SERIAL"
            keys["SecurityInfo"] = {"PasscodeCompliant": False}
        answered.append(c["RequestType"])
        cmd = d.report(cmd["CommandUUID"], **keys)
        if c["RequestType"] == "DeviceInformation":
            e = enrollment(s, d)
            eq(e["inventory"]["device_name"], "iPhone", "device name from the real answer")
            eq(e["inventory"]["passcode_compliant"], None, "DeviceInformation's answer sets no compliance")
            ok("F2LXK0SERIAL" not in json.dumps(e), "a serial number is never stored")
    eq(sorted(answered), sorted(ROUND_IOS), "the round, answered by hand")
    eq(enrollment(s, d)["inventory"]["passcode_compliant"], True, "SecurityInfo's answer sets compliance")


@test
def on_demand_inventory():
    s = srv()
    d = enrolled(s)
    eq(d.idle(), None, "the enrollment round")
    first = enrollment(s, d)["inventory"]["requested_at"]
    s.advance_clock(10)
    path = "/api/v1/enrollments/%s/inventory" % d.enrollment_id
    r = s.api("POST", path)
    status(r, 202, "POST inventory")
    uuids = r.json().get("command_uuids")
    eq(len(uuids), 5, "the command uuids queued: %r" % r.json())
    ok(all(u.startswith(sim.INVENTORY_PREFIX) for u in uuids), "inventory uuids %r" % uuids)
    # Pending: no second round.
    r2 = s.api("POST", path)
    status(r2, 409, "a second request while the round is pending")
    eq(enrollment(s, d)["inventory"]["pending_commands"], 5, "still one round")
    d.idle()
    eq(sorted(c["CommandUUID"] for c in d.inventory_answered[-5:]), sorted(uuids), "the device got those")
    e = enrollment(s, d)["inventory"]
    ok(e["requested_at"] > first and e["updated_at"] >= e["requested_at"], "a new round answered: %r" % e)
    status(s.api("POST", path), 202, "again once answered")
    d.idle()
    status(s.api("POST", "/api/v1/enrollments/%s/inventory" % uuid.uuid4()), 404, "unknown enrollment")
    status(s.api("POST", path, key=None), 401, "no API key")
    # Not complete (no TokenUpdate yet), and unenrolled: nothing to ask.
    d2 = device(s)
    d2.run_enrollment(check_in=False)
    d2.authenticate()
    status(s.api("POST", "/api/v1/enrollments/%s/inventory" % d2.enrollment_id), 409, "before TokenUpdate")
    d.checkout()
    status(s.api("POST", path), 409, "after CheckOut")


@test
def the_schedule_asks_again_and_a_changed_os_version_is_a_webhook():
    s = srv()
    d = enrolled(s)
    eq(d.idle(), None, "the enrollment round")
    n0 = len(d.inventory_answered)
    requested = enrollment(s, d)["inventory"]["requested_at"]
    # Half a day: not due.
    s.advance_clock(DAY // 2)
    time.sleep(2.5)
    eq(enrollment(s, d)["inventory"]["pending_commands"], 0, "not due after 12 h")
    # The device updated itself meanwhile; a day after the last round the scheduler asks again.
    d.os_version, d.build_version = "18.4", "22E240"
    d.security_info["PasscodeCompliant"] = False
    s.advance_clock(DAY // 2 + 5)
    wait("the scheduled round", lambda: enrollment(s, d)["inventory"]["pending_commands"] == 5)
    inv = enrollment(s, d)["inventory"]
    ok(inv["requested_at"] >= requested + DAY, "requested a day later: %r" % inv)
    # The device stays silent for two more days: still one round, not three.
    s.advance_clock(DAY + 5)
    time.sleep(2.5)
    s.advance_clock(DAY + 5)
    time.sleep(2.5)
    eq(enrollment(s, d)["inventory"]["pending_commands"], 5, "no second round while one is pending")
    eq(d.idle(), None, "the device answers")
    eq(len(d.inventory_answered) - n0, 5, "one round answered")
    e = enrollment(s, d)
    eq(e["inventory"]["os_version"], "18.4", "the new OS version is stored")
    eq(e["os_version"], "18.4", "and shown as the enrollment's OS version")
    eq(e["build_version"], "22E240", "build")
    eq(e["inventory"]["passcode_compliant"], False, "compliance")
    # One event per answer that changed a watched field: DeviceInformation (the OS version),
    # SecurityInfo (compliance).
    def mine():
        return [x["data"] for x in _hook.events if x.get("type") == "enrollment.inventory_changed"
                and x["data"].get("enrollment_id") == d.enrollment_id]

    wait("two inventory_changed events", lambda: len(mine()) >= 2)
    ev = sorted(mine(), key=lambda x: x.get("changed"))
    eq([x.get("changed") for x in ev], ["os_version", "passcode_compliant"], "changed fields: %r" % ev)
    eq(ev[0].get("os_version"), "18.4", "event: new OS")
    eq(ev[0].get("previous_os_version"), "18.2.1", "event: old OS")
    eq(ev[1].get("passcode_compliant"), "false", "event: compliance")
    eq(ev[1].get("previous_passcode_compliant"), "true", "event: old compliance")
    # An answer that changes nothing watched emits nothing.
    status(s.api("POST", "/api/v1/enrollments/%s/inventory" % d.enrollment_id), 202, "ask again")
    d.idle()
    time.sleep(1.5)
    eq(len(mine()), 2, "no event without a change")


# --- filters, pages, CSV -------------------------------------------------------------------------

def os_key(v):
    """src/mdm/inventory.c inventory_version_key: three components, 1000 apart."""
    parts = [min(int(p), 999) for p in v.split(".")[:3]] + [0, 0, 0]
    return parts[0] * 1000000 + parts[1] * 1000 + parts[2]


def vtuple(v):
    return tuple(int(p) for p in v.split(".")) + (0,) * (3 - len(v.split(".")))


PLATFORMS = {"ios": "iPhone14,5", "macos": "Mac14,2", "visionos": "RealityDevice14,1"}
VERSIONS = {"ios": ["17.6.1", "18.3.1", "18.4", "18.4.1", "18.10", "18.2"], "macos": ["14.7", "15.2", "15.10"],
            "visionos": ["2.2", "1.3"]}
NASTY_NAMES = ['Ann, "the" phone', "line\nbreak", "=HYPERLINK(\"http://x\")", "+1 phone", "plain"]


def seed(s, n, now):
    """n enrollments with inventory rows straight into the store; returns their expected facts."""
    db = sqlite3.connect(s.path("orchard.db"), timeout=10)
    rows = []
    with db:
        uid = db.execute("INSERT INTO users (email, managed_apple_id, created_at) VALUES (?, ?, 1)",
                         ("seed@example.com", "seed@appleid.example.com")).lastrowid
        for i in range(n):
            plat = ("ios", "ios", "ios", "macos", "visionos")[i % 5]
            ver = VERSIONS[plat][i % len(VERSIONS[plat])]
            passcode = (None, 1, 0)[i % 3]
            seen = now - (i % 40) * 3600 * 12
            eid = "SEED-%05d-%s" % (i, uuid.uuid4().hex[:8].upper())
            name = NASTY_NAMES[i % len(NASTY_NAMES)]
            db.execute("INSERT INTO enrollments (id, type, user_id, topic, product_name, os_version, "
                       "device_name, enrolled_at, token_updated_at, last_seen_at) "
                       "VALUES (?, 1, ?, 'com.apple.mgmt.test', ?, '1.0', ?, ?, ?, ?)",
                       (eid, uid, PLATFORMS[plat], name, now - 100 * DAY, now - 100 * DAY, seen))
            db.execute("INSERT INTO inventory (enrollment_id, platform, os_version, os_key, device_name, "
                       "passcode_present, app_count, profile_count, cert_count, updated_at, due_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, 2, 1, 1, ?, ?)",
                       (eid, plat, ver, os_key(ver), name, passcode, now - 3600, now + 300 * DAY))
            rows.append({"id": eid, "platform": plat, "os": ver, "passcode": passcode, "seen": seen, "name": name})
    db.close()
    return rows


def list_ids(s, query):
    """Every id of the filtered list, following `next`; checks the pages on the way."""
    ids, after, pages = [], None, 0
    while True:
        q = dict(query, limit=37)
        if after is not None:
            q["after"] = after
        r = s.api("GET", "/api/v1/enrollments?" + urllib.parse.urlencode(q))
        status(r, 200, "list %r" % q)
        body = r.json()
        page = [e["id"] for e in body["enrollments"]]
        ok(len(page) <= 37, "page size %d" % len(page))
        ids.extend(page)
        pages += 1
        ok(pages < 100, "too many pages")
        if body["next"] is None:
            return ids
        eq(body["next"], page[-1], "next is the last id of the page")
        after = body["next"]


@test
def filters_pages_and_csv_over_hundreds_of_enrollments():
    s = Server(name="inventory-list", env={"ORCHARD_DEBUG_CLOCK": "true"})
    s.add_user(*ALICE)
    s.start()
    real = [enrolled(s), enrolled(s, product="Mac14,2", os_version="15.2")]
    for d in real:
        d.idle()
    now = s.api("POST", "/api/v1/debug/clock", {"advance": 0}).json()["now"]
    rows = seed(s, 300, now)
    rows += [{"id": real[0].enrollment_id, "platform": "ios", "os": "18.2.1", "passcode": None, "seen": now},
             {"id": real[1].enrollment_id, "platform": "macos", "os": "15.2", "passcode": None, "seen": now}]
    everyone = sorted(r["id"] for r in rows)

    def expect(pred):
        return sorted(r["id"] for r in rows if pred(r))

    eq(list_ids(s, {}), everyone, "unfiltered, all pages")
    below = list_ids(s, {"os_version_lt": "18.4"})
    eq(below, expect(lambda r: vtuple(r["os"]) < (18, 4, 0)), "os_version_lt=18.4 compares per component")
    ok(any(r["os"] == "18.3.1" and r["id"] in below for r in rows), "18.3.1 is below 18.4")
    ok(not any(r["os"] == "18.10" and r["id"] in below for r in rows), "18.10 is not below 18.4")
    eq(list_ids(s, {"platform": "macos"}), expect(lambda r: r["platform"] == "macos"), "platform=macos")
    eq(list_ids(s, {"platform": "visionos", "os_version_lt": "2"}),
       expect(lambda r: r["platform"] == "visionos" and vtuple(r["os"]) < (2, 0, 0)), "visionOS below 2")
    eq(list_ids(s, {"passcode_present": "false"}), expect(lambda r: r["passcode"] == 0), "passcode_present=false")
    eq(list_ids(s, {"passcode_present": "true", "platform": "ios"}),
       expect(lambda r: r["passcode"] == 1 and r["platform"] == "ios"), "passcode_present=true&platform=ios")
    cut = now - 5 * DAY
    want = expect(lambda r: r["seen"] < cut)
    eq(list_ids(s, {"last_seen_before": str(cut)}), want, "last_seen_before as Unix seconds")
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cut))
    eq(list_ids(s, {"last_seen_before": iso}), want, "last_seen_before as ISO 8601")
    iso_offset = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(cut + 7200)) + "+02:00"
    eq(list_ids(s, {"last_seen_before": iso_offset}), want, "ISO 8601 with an offset")
    eq(list_ids(s, {"os_version_lt": "18.4", "platform": "ios", "passcode_present": "true",
                    "last_seen_before": str(cut)}),
       expect(lambda r: vtuple(r["os"]) < (18, 4, 0) and r["platform"] == "ios" and r["passcode"] == 1
              and r["seen"] < cut), "all four combined")

    # CSV: the same list, every page, a header, RFC 4180 quoting.
    r = s.api("GET", "/api/v1/enrollments?" + urllib.parse.urlencode({"os_version_lt": "18.4", "format": "csv"}))
    status(r, 200, "CSV")
    ok((r.header("Content-Type") or "").startswith("text/csv"), "Content-Type %r" % r.header("Content-Type"))
    ok(r.body.count(b"\r\n") >= len(below) + 1, "CRLF line ends")
    table = list(csv.reader(io.StringIO(r.body.decode("utf-8"), newline="")))
    header = table[0]
    for col in ("id", "user", "platform", "os_version", "passcode_present", "passcode_compliant",
                "storage_capacity_mb", "app_count", "profile_count", "certificate_count", "last_seen_at"):
        ok(col in header, "CSV header lacks %s: %r" % (col, header))
    got = [dict(zip(header, row)) for row in table[1:]]
    eq(sorted(x["id"] for x in got), below, "CSV rows are the filtered list")
    by_id = {x["id"]: x for x in got}
    for row in rows:
        if row["id"] in by_id and "name" in row:
            name = row["name"]
            want_name = "'" + name if name[0] in "=+-@" else name
            eq(by_id[row["id"]]["device_name"], want_name, "device name round trip through CSV")
            eq(by_id[row["id"]]["os_version"], row["os"], "OS version in CSV")
            eq(by_id[row["id"]]["passcode_present"], {None: "", 1: "true", 0: "false"}[row["passcode"]], "passcode")
    ok(all(len(t) == len(header) for t in table), "every row has every column")
    r = s.api("GET", "/api/v1/enrollments?format=csv")
    eq(len(list(csv.reader(io.StringIO(r.body.decode(), newline="")))) - 1, len(everyone), "CSV of everyone")

    # Bad filter values: 400 naming the parameter, never a 5xx.
    for q, name in (({"os_version_lt": "abc"}, "os_version_lt"), ({"os_version_lt": "18.4.1.1"}, "os_version_lt"),
                    ({"platform": "android"}, "platform"), ({"platform": "tvos"}, "platform"),
                    ({"passcode_present": "maybe"}, "passcode_present"),
                    ({"last_seen_before": "yesterday"}, "last_seen_before"),
                    ({"last_seen_before": "2026-02-30"}, "last_seen_before"),
                    ({"last_seen_before": "-5"}, "last_seen_before"), ({"format": "xml"}, "format"),
                    ({"after": "x" * 600}, "after")):
        r = s.api("GET", "/api/v1/enrollments?" + urllib.parse.urlencode(q))
        status(r, 400, "bad filter %r" % q)
        ok(name in r.text, "the refusal names %s: %s" % (name, r.text))
    status(s.api("GET", "/api/v1/enrollments?format=csv", key=None), 401, "CSV needs the API key")


if __name__ == "__main__":
    orchard.main()
