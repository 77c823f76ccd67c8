#!/usr/bin/python3
"""
Issue 13: the bad-input suite. Well over 100 named hostile requests over HTTPS against one
running server that holds real state (Alice's and Bob's enrolled devices, a queued command,
a re-authentication behind them). Each case must get its 4xx (or, for transport-level abuse,
a refused handshake or a closed connection), the server must answer /healthz after every case,
and at the end a snapshot of every stored table that bad input must not touch is compared
with the one taken before: nothing changed, nothing was handed out.

Every case prints its own ok/FAIL line, named by what it sends.
"""
import base64
import os
import plistlib
import socket
import sqlite3
import ssl
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "sim"))
import device as sim  # noqa: E402
import orchard  # noqa: E402
import pki  # noqa: E402
from orchard import Server, eq, ok, status, test  # noqa: E402

ALICE = ("alice@example.com", "alice@appleid.example.com", "alice-Pa55word!")
BOB = ("bob@example.com", "bob@appleid.example.com", "bob-Pa55word!")
# Tables bad input must never change. Left out: the audit trail and rate-limit counters
# (refusals are recorded on purpose), the push outbox and webhook queue (time-driven).
GUARDED = ("api_keys", "apps", "assignments", "certs", "command_history", "commands", "domains",
           "enrollments", "item_state", "profiles", "scep_challenges", "sessions", "users")

W = {}  # the world: server, devices, snapshot


def world():
    if W:
        return W
    s = Server(name="badinput")
    s.add_user(*ALICE)
    s.add_user(*BOB)
    s.start()
    a = sim.Device(s.url, ALICE[0], ALICE[2], ca_file=s.ca_file, signing_ca=s.path("signing", "ca.pem"),
                   workdir=tempfile.mkdtemp(prefix="dev-", dir=s.tmp), auto_reauth=True).run_enrollment()
    b = sim.Device(s.url, BOB[0], BOB[2], ca_file=s.ca_file, signing_ca=s.path("signing", "ca.pem"),
                   workdir=tempfile.mkdtemp(prefix="dev-", dir=s.tmp), auto_reauth=True).run_enrollment()
    # Alice re-authenticated once: her first token is revoked (a replay candidate).
    status(s.api("POST", "/api/v1/enrollments/%s/reauthenticate" % a.enrollment_id), 202, "reauthenticate")
    eq(a.idle(), None, "Alice re-authenticates and checks in")
    ok(len(a.tokens) == 2, "Alice has an old and a new token")
    r = s.api("POST", "/api/v1/enrollments/%s/commands" % a.enrollment_id, {"request_type": "ProfileList"})
    status(r, 201, "queue a command for Alice")
    other_ca, other_ca_key = pki.make_ca("Some other CA")
    other_key = pki.new_key()
    other_cert = pki.issue(other_ca, other_ca_key, other_key.public_key())
    W.update(s=s, a=a, b=b, command=r.json()["command_uuid"], other=(other_cert, other_key))
    W["snapshot"] = snapshot(s)
    return W


def snapshot(s):
    db = sqlite3.connect("file:%s?mode=ro" % s.path("orchard.db"), uri=True)
    try:
        return {t: sorted(map(repr, db.execute("SELECT * FROM %s" % t).fetchall())) for t in GUARDED}
    finally:
        db.close()


def healthy(s):
    r = s.get("/healthz", timeout=10)
    return r.status == 200


# ---- the case registry ------------------------------------------------------------------------

CASES = []


def case(name, expect="4xx"):
    """expect: "4xx", a status, a tuple of statuses, or "refused" (TLS/connection level)."""
    def reg(fn):
        CASES.append((name, fn, expect))
        return fn
    return reg


def run_case(name, fn, expect):
    w = world()
    s = w["s"]
    try:
        got = fn(w)
    except (ssl.SSLError, ConnectionError, socket.timeout, OSError) as e:
        got = "refused" if expect == "refused" else e
    except Exception as e:  # a bug in the case itself: report it, go on with the others
        got = e
    good = (expect == "4xx" and isinstance(got, int) and 400 <= got < 500) or got == expect or (
        isinstance(expect, tuple) and got in expect)
    alive = healthy(s)
    if good and alive:
        print("ok bad input: %s -> %s" % (name, got), flush=True)
    else:
        print("FAIL bad input: %s" % name, flush=True)
        orchard.log("  %s: expected %s, got %r; server %s" % (name, expect, got, "up" if alive else "DOWN"))


# ---- helpers for the cases ------------------------------------------------------------------------

def req(w, method, path, body=None, headers=None, **kw):
    return w["s"].request(method, path, body=body, headers=headers, **kw).status


def api(w, method, path, body=None):
    return w["s"].api(method, path, body).status


def signed(w, url, body, dev=None, token="own", cert=None, key=None, sig=None, content_type=sim.CONNECT_TYPE):
    """A device PUT with Alice's identity unless told otherwise; body is a dict or bytes."""
    d = dev or w["a"]
    raw = plistlib.dumps(body) if isinstance(body, dict) else body
    h = {"Content-Type": content_type}
    tok = d.token if token == "own" else token
    if tok:
        h["Authorization"] = "Bearer " + tok
    h["Mdm-Signature"] = sig if sig is not None else d.sign(raw, cert=cert, key=key)
    return w["s"].request("PUT", urllib.parse.urlsplit(url).path, body=raw, headers=h).status


def connect_url(w):
    return w["a"].server_url


def checkin_url(w):
    return w["a"].checkin_url


def idle(w, **extra):
    m = {"Status": "Idle", "EnrollmentID": w["a"].enrollment_id}
    m.update(extra)
    return m


def auth_msg(w, **extra):
    a = w["a"]
    m = {"MessageType": "Authenticate", "Topic": a.topic, "EnrollmentID": a.enrollment_id,
         "OSVersion": "18.2.1", "BuildVersion": "22C161", "ProductName": "iPhone12,1"}
    m.update(extra)
    return m


def token_update(w, **extra):
    a = w["a"]
    m = {"MessageType": "TokenUpdate", "Topic": a.topic, "EnrollmentID": a.enrollment_id,
         "Token": a.push_token, "PushMagic": a.push_magic}
    m.update(extra)
    return m


def raw_tls(w, payload, handshake=True, read=True):
    """Opens a TCP connection; sends payload raw (handshake=False) or inside TLS."""
    port = w["s"].port
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        if handshake:
            sock = w["s"].ctx().wrap_socket(sock, server_hostname="127.0.0.1")
        if payload:
            sock.sendall(payload)
        if not read:
            return "refused"
        data = sock.recv(4096)
        if not data:
            return "refused"
        line = data.split(b"\r\n", 1)[0].split()
        return int(line[1]) if len(line) > 1 and line[1].isdigit() else "refused"
    finally:
        sock.close()


# ---- transport ------------------------------------------------------------------------------------

@case("a truncated TLS ClientHello, then close", "refused")
def _(w):
    return raw_tls(w, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(20), handshake=False)


@case("garbage instead of a TLS handshake", "refused")
def _(w):
    return raw_tls(w, os.urandom(512), handshake=False)


@case("plain HTTP on the TLS port", "refused")
def _(w):
    return raw_tls(w, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", handshake=False)


@case("a TLS handshake, then nothing", "refused")
def _(w):
    return raw_tls(w, b"", read=False)


@case("a TLS 1.0-only client", "refused")
def _(w):
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    c.minimum_version = c.maximum_version = ssl.TLSVersion.TLSv1
    c.set_ciphers("ALL:@SECLEVEL=0")
    sock = socket.create_connection(("127.0.0.1", w["s"].port), timeout=10)
    try:
        c.wrap_socket(sock).sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        return 200
    finally:
        sock.close()


@case("a TLS 1.1-only client", "refused")
def _(w):
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    c.minimum_version = c.maximum_version = ssl.TLSVersion.TLSv1_1
    c.set_ciphers("ALL:@SECLEVEL=0")
    sock = socket.create_connection(("127.0.0.1", w["s"].port), timeout=10)
    try:
        c.wrap_socket(sock).sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        return 200
    finally:
        sock.close()


@case("headers cut off mid-line, then close", "refused")
def _(w):
    return raw_tls(w, b"PUT /mdm/connect HTTP/1.1\r\nHost: x\r\nContent-Le", read=False)


@case("a body shorter than its Content-Length, then close", "refused")
def _(w):
    return raw_tls(w, b"PUT /mdm/connect HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n<plist>", read=False)


@case("a malformed request line", ("refused", 400))
def _(w):
    return raw_tls(w, b"GARBAGE\r\n\r\n")


@case("an HTTP/0.9-style request", ("refused", 400, 505))
def _(w):
    return raw_tls(w, b"GET /\r\n\r\n")


@case("a header line without a colon", ("refused", 400))
def _(w):
    return raw_tls(w, b"GET /healthz HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n")


@case("a negative Content-Length")
def _(w):
    return raw_tls(w, b"PUT /mdm/connect HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")


@case("a non-numeric Content-Length")
def _(w):
    return raw_tls(w, b"PUT /mdm/connect HTTP/1.1\r\nHost: x\r\nContent-Length: lots\r\n\r\n")


@case("two different Content-Lengths")
def _(w):
    return raw_tls(w, b"PUT /mdm/connect HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 9\r\n\r\nabc")


@case("a 1 TB Content-Length to /mdm/connect")
def _(w):
    return raw_tls(w, b"PUT /mdm/connect HTTP/1.1\r\nHost: x\r\nContent-Length: 1099511627776\r\n\r\n")


@case("a 1 TB Content-Length to a route that does not exist")
def _(w):
    return raw_tls(w, b"PUT /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 1099511627776\r\n\r\n")


@case("an unknown Transfer-Encoding")
def _(w):
    return raw_tls(w, b"PUT /mdm/connect HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, rot13\r\n\r\n")


@case("a malformed chunk size")
def _(w):
    return raw_tls(w, b"PUT /mdm/connect HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nab\r\n0\r\n\r\n")


# ---- oversized everything ------------------------------------------------------------------------

@case("a 64 KiB URL")
def _(w):
    return req(w, "GET", "/healthz?" + "a" * 65536)


@case("a 64 KiB header value")
def _(w):
    return req(w, "GET", "/healthz", headers={"X-Big": "b" * 65536})


@case("500 header lines")
def _(w):
    return req(w, "GET", "/healthz", headers={"X-H%d" % i: "v" for i in range(500)})


def big_body(w, method, path, size, chunked=False, content_type="application/octet-stream"):
    """Declares a body of size bytes, sends its first 64 KiB and reads the answer: a server
    that routes and checks limits first answers without waiting for the rest."""
    head = "%s %s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\n" % (method, path, content_type)
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else "Content-Length: %d\r\n\r\n" % size
    first = b"x" * 65536
    if chunked:
        first = b"10000\r\n" + first + b"\r\n"
    return raw_tls(w, head.encode() + first)


@case("an 8 MiB body to /mdm/connect")
def _(w):
    return big_body(w, "PUT", "/mdm/connect", 8 << 20)


@case("an 8 MiB chunked body to /mdm/checkin")
def _(w):
    return big_body(w, "PUT", "/mdm/checkin", 8 << 20, chunked=True)


@case("a 4 MiB body to a route that does not exist")
def _(w):
    return big_body(w, "POST", "/does/not/exist", 4 << 20)


@case("a 4 MiB body to the sign-in form")
def _(w):
    return big_body(w, "POST", "/auth/signin", 4 << 20, content_type="application/x-www-form-urlencoded")


@case("a 4 MiB enrollment body")
def _(w):
    return big_body(w, "POST", "/enroll/example.com", 4 << 20)


@case("a 4 MiB SCEP message")
def _(w):
    return big_body(w, "POST", "/scep?operation=PKIOperation", 4 << 20)


@case("a 4 MiB chunked body to the admin API")
def _(w):
    return big_body(w, "POST", "/api/v1/push", 4 << 20, chunked=True)


@case("a 10 KB EnrollmentID")
def _(w):
    return signed(w, connect_url(w), idle(w, EnrollmentID="A" * 10000))


@case("a 1 MB string value in an Idle")
def _(w):
    return signed(w, connect_url(w), idle(w, Status="Idle" + "x" * (1 << 20)))


@case("a 100 KB CommandUUID")
def _(w):
    return signed(w, connect_url(w), {"Status": "Acknowledged", "CommandUUID": "u" * 100000,
                                      "EnrollmentID": w["a"].enrollment_id})


@case("a 1 KB PushMagic")
def _(w):
    return signed(w, checkin_url(w), token_update(w, PushMagic="m" * 1024), content_type=sim.CHECKIN_TYPE)


@case("a 4 KB push Token")
def _(w):
    return signed(w, checkin_url(w), token_update(w, Token=os.urandom(4096)), content_type=sim.CHECKIN_TYPE)


@case("a 64 KB Mdm-Signature of garbage")
def _(w):
    return signed(w, connect_url(w), idle(w), sig=base64.b64encode(os.urandom(48000)).decode())


@case("a 100 KB bearer token")
def _(w):
    return signed(w, connect_url(w), idle(w), token="t" * 100000)


@case("a 10 KB user-identifier at discovery")
def _(w):
    return req(w, "GET", "/.well-known/com.apple.remotemanagement?user-identifier=" + "u" * 10000 + "@example.com",
               headers={"Host": "example.com"})


@case("a 10 KB user-identifier on the sign-in page")
def _(w):
    return req(w, "GET", "/auth/signin?user-identifier=" + "u" * 10000 + "@example.com")


@case("a 64 KB JSON command body")
def _(w):
    return api(w, "POST", "/api/v1/enrollments/%s/commands" % w["a"].enrollment_id,
               {"request_type": "ProfileList", "Junk": "x" * 65536})


@case("JSON nested 100,000 deep")
def _(w):
    return w["s"].api("POST", "/api/v1/enrollments/%s/commands" % w["a"].enrollment_id,
                      b"[" * 100000 + b"]" * 100000).status


# ---- hostile plists (before any identity check) -------------------------------------------------------

def deep_xml(n, comment=False):
    head = b'<?xml version="1.0"?>'
    if comment:
        head += b"<!-- " + b"</array>" * 200 + b" -->"
    return head + b"<plist><dict><key>k</key>" + b"<array>" * n + b"</array>" * n + b"</dict></plist>"


def deep_binary(n):
    """A binary plist: n nested one-element arrays (object i holds a ref to i + 1)."""
    ref = 4 if n > 65535 else 2
    objs, offsets = b"", []
    for i in range(n):
        offsets.append(8 + len(objs))
        objs += bytes([0xA1]) + ((i + 1).to_bytes(ref, "big") if i + 1 < n + 1 else b"")
    offsets.append(8 + len(objs))
    objs += bytes([0xA0])  # the innermost: an empty array
    body = b"bplist00" + objs
    table_off = len(body)
    for o in offsets:
        body += o.to_bytes(4, "big")
    trailer = bytes(6) + bytes([4, ref]) + (n + 1).to_bytes(8, "big") + (0).to_bytes(8, "big") + \
        table_off.to_bytes(8, "big")
    return body + trailer


def ref_bomb(levels=30):
    """A binary plist where each array holds two refs to the next: 2**levels expanded nodes."""
    objs, offsets = b"", []
    for i in range(levels):
        offsets.append(8 + len(objs))
        objs += bytes([0xA2, i + 1, i + 1])
    offsets.append(8 + len(objs))
    objs += bytes([0x10, 0x01])  # integer 1
    body = b"bplist00" + objs
    table_off = len(body)
    for o in offsets:
        body += o.to_bytes(1, "big")
    trailer = bytes(6) + bytes([1, 1]) + (levels + 1).to_bytes(8, "big") + (0).to_bytes(8, "big") + \
        table_off.to_bytes(8, "big")
    return body + trailer


for _url, _name in (("/mdm/connect", "connect"), ("/mdm/checkin", "check-in"), ("/enroll/example.com", "enrollment")):
    _m = "POST" if _name == "enrollment" else "PUT"
    CASES.append(("a 100,000-deep binary plist to %s (no identity)" % _name,
                  lambda w, u=_url, m=_m: req(w, m, u, body=deep_binary(100000)), "4xx"))
    CASES.append(("a 100,000-deep XML plist to %s (no identity)" % _name,
                  lambda w, u=_url, m=_m: req(w, m, u, body=deep_xml(100000)), "4xx"))
    CASES.append(("a deep XML plist behind a comment of closing tags to %s" % _name,
                  lambda w, u=_url, m=_m: req(w, m, u, body=deep_xml(5000, comment=True)), "4xx"))
    CASES.append(("a binary plist reference bomb to %s" % _name,
                  lambda w, u=_url, m=_m: req(w, m, u, body=ref_bomb()), "4xx"))
    CASES.append(("an XML entity declaration to %s" % _name,
                  lambda w, u=_url, m=_m: req(w, m, u, body=b'<?xml version="1.0"?><!DOCTYPE plist [<!ENTITY a "aaaa">]>'
                                             b'<plist><dict><key>k</key><string>&a;</string></dict></plist>'), "4xx"))
    CASES.append(("random bytes to %s" % _name, lambda w, u=_url, m=_m: req(w, m, u, body=os.urandom(2000)), "4xx"))
    CASES.append(("an empty body to %s" % _name, lambda w, u=_url, m=_m: req(w, m, u, body=b""), "4xx"))
    CASES.append(("a plist whose root is an array to %s" % _name,
                  lambda w, u=_url, m=_m: req(w, m, u, body=plistlib.dumps(["x"])), "4xx"))


@case("a truncated CMS enrollment body")
def _(w):
    return req(w, "POST", "/enroll/example.com", body=sim.default_machine_info()[:300])


@case("a CMS enrollment body with indefinite lengths nested 10,000 deep")
def _(w):
    return req(w, "POST", "/enroll/example.com", body=b"\x30\x80" * 10000 + b"\x00\x00" * 10000)


# ---- identifiers, every form ------------------------------------------------------------------------

for _label, _msg in (
        ("UDID instead of EnrollmentID", lambda w: {"Status": "Idle", "UDID": w["a"].enrollment_id}),
        ("both UDID and EnrollmentID", lambda w: idle(w, UDID=w["a"].enrollment_id)),
        ("no identifier at all", lambda w: {"Status": "Idle"}),
        ("an empty EnrollmentID", lambda w: {"Status": "Idle", "EnrollmentID": ""}),
        ("an EnrollmentID with a path separator", lambda w: {"Status": "Idle", "EnrollmentID": "../../etc/passwd"}),
        ("an EnrollmentID with SQL", lambda w: {"Status": "Idle", "EnrollmentID": "x' OR '1'='1"}),
        ("an EnrollmentID with a NUL", lambda w: plistlib.dumps({"Status": "Idle", "EnrollmentID": "A-B"})
         .replace(b"A-B", b"A\x00B")),
        ("an EnrollmentID with a colon (channel spoof)", lambda w: {"Status": "Idle",
                                                                     "EnrollmentID": w["a"].enrollment_id + ":x"}),
        ("Bob's EnrollmentID with Alice's identity", lambda w: {"Status": "Idle", "EnrollmentID": w["b"].enrollment_id}),
        ("an unknown EnrollmentID", lambda w: {"Status": "Idle", "EnrollmentID": "00000000-0000-0000-0000-000000000000"}),
        ("a user-channel id on an iPhone", lambda w: idle(w, EnrollmentUserID="F00D")),
        ("UserID in place of EnrollmentUserID", lambda w: idle(w, UserID="F00D", UDID=w["a"].enrollment_id)),
        ("an EnrollmentUserID with SQL", lambda w: idle(w, EnrollmentUserID="1;DROP TABLE users")),
):
    CASES.append(("Idle with %s" % _label, lambda w, f=_msg: signed(w, connect_url(w), f(w)), "4xx"))

# ---- wrong types for every key Orchard reads --------------------------------------------------------

WRONG = {"an integer": 7, "a boolean": True, "data": b"\x00\x01", "an array": ["x"], "a dict": {"k": "v"},
         "a date": __import__("datetime").datetime(2020, 1, 1), "a real": 1.5}

for _key in ("MessageType", "Topic", "EnrollmentID", "OSVersion", "BuildVersion", "ProductName"):
    for _tname in ("an integer", "data", "an array"):
        CASES.append(("Authenticate with %s %s" % (_key, _tname),
                      lambda w, k=_key, v=WRONG[_tname]: signed(w, checkin_url(w), auth_msg(w, **{k: v}),
                                                                content_type=sim.CHECKIN_TYPE), "4xx"))
for _key, _types in (("Token", ("a string", "an integer")), ("PushMagic", ("data", "an integer", "a dict")),
                     ("Topic", ("an integer",)), ("EnrollmentID", ("a boolean",)),
                     ("AwaitingConfiguration", ("a string",))):
    WRONG["a string"] = "s"
    for _tname in _types:
        CASES.append(("TokenUpdate with %s %s" % (_key, _tname),
                      lambda w, k=_key, v=WRONG[_tname]: signed(w, checkin_url(w), token_update(w, **{k: v}),
                                                                content_type=sim.CHECKIN_TYPE), "4xx"))
for _key in ("Status", "EnrollmentID", "CommandUUID"):
    for _tname in ("an integer", "a boolean", "data", "a date", "a real"):
        CASES.append(("Idle with %s %s" % (_key, _tname),
                      lambda w, k=_key, v=WRONG[_tname]: signed(w, connect_url(w), idle(w, **{k: v})), "4xx"))


@case("an unknown MessageType")
def _(w):
    return signed(w, checkin_url(w), auth_msg(w, MessageType="Exploit"), content_type=sim.CHECKIN_TYPE)


@case("an unknown Status")
def _(w):
    return signed(w, connect_url(w), idle(w, Status="Pwned"))


@case("Acknowledged without a CommandUUID")
def _(w):
    return signed(w, connect_url(w), {"Status": "Acknowledged", "EnrollmentID": w["a"].enrollment_id})


@case("Authenticate with another server's Topic")
def _(w):
    return signed(w, checkin_url(w), auth_msg(w, Topic="com.apple.mgmt.External.evil"), content_type=sim.CHECKIN_TYPE)


# ---- tokens: replayed, foreign, forged ---------------------------------------------------------------

@case("Idle with Alice's replayed (revoked) first token", 401)
def _(w):
    return signed(w, connect_url(w), idle(w), token=w["a"].tokens[0])


@case("Idle with Bob's token on Alice's device", 401)
def _(w):
    return signed(w, connect_url(w), idle(w), token=w["b"].token)


@case("Idle with no token on an iPhone", 401)
def _(w):
    return signed(w, connect_url(w), idle(w), token=None)


@case("Idle with a made-up token", 401)
def _(w):
    return signed(w, connect_url(w), idle(w), token="A" * 43)


@case("Idle with a token of illegal characters", 401)
def _(w):
    return signed(w, connect_url(w), idle(w), token="\"><script>")


@case("enrollment POST with Alice's replayed token", 401)
def _(w):
    return req(w, "POST", "/enroll/example.com", body=sim.bare_machine_info(),
               headers={"Authorization": "Bearer " + w["a"].tokens[0]})


@case("Authorization with another scheme")
def _(w):
    a = w["a"]
    raw = plistlib.dumps(idle(w))
    return req(w, "PUT", "/mdm/connect", body=raw, headers={"Authorization": "Basic YWxpY2U6cHc=",
                                                            "Mdm-Signature": a.sign(raw)})


# ---- certificates and signatures ------------------------------------------------------------------------

@case("Idle signed by a certificate of another CA")
def _(w):
    cert, key = w["other"]
    return signed(w, connect_url(w), idle(w), cert=cert, key=key)


@case("Idle signed by Bob's device, claiming Alice's EnrollmentID")
def _(w):
    return signed(w, connect_url(w), idle(w), dev=w["b"], token=w["a"].token)


@case("Idle whose signature covers another body (replayed Mdm-Signature)")
def _(w):
    a = w["a"]
    other = plistlib.dumps({"Status": "Idle", "EnrollmentID": a.enrollment_id, "X": 1})
    return signed(w, connect_url(w), idle(w), sig=a.sign(other))


@case("Idle with Alice's certificate but a signature by another key")
def _(w):
    a = w["a"]
    raw = plistlib.dumps(idle(w))
    return signed(w, connect_url(w), raw, sig=pki.forge_wrong_key_signature(raw, a.cert, pki.new_key()))


@case("Idle without any device identity")
def _(w):
    raw = plistlib.dumps(idle(w))
    return req(w, "PUT", "/mdm/connect", body=raw, headers={"Authorization": "Bearer " + w["a"].token})


@case("Idle with an Mdm-Signature that is not base64")
def _(w):
    return signed(w, connect_url(w), idle(w), sig="!!!not base64!!!")


@case("Idle signed with the other CA's certificate embedded in place of Alice's")
def _(w):
    a = w["a"]
    raw = plistlib.dumps(idle(w))
    return signed(w, connect_url(w), raw, sig=pki.replace_embedded_certs(a.sign(raw), [w["other"][0]]))


@case("Authenticate of Alice's enrollment by Bob's device and token")
def _(w):
    b = w["b"]
    return signed(w, checkin_url(w), auth_msg(w), dev=b)


@case("CheckOut of Alice's enrollment signed by Bob")
def _(w):
    a = w["a"]
    return signed(w, checkin_url(w), {"MessageType": "CheckOut", "Topic": a.topic, "EnrollmentID": a.enrollment_id},
                  dev=w["b"], token=a.token, content_type=sim.CHECKIN_TYPE)


# ---- web pages and SCEP ------------------------------------------------------------------------------

@case("sign-in POST without the CSRF cookie")
def _(w):
    return req(w, "POST", "/auth/signin", body="identifier=alice%40example.com&password=x",
               headers={"Content-Type": "application/x-www-form-urlencoded"})


@case("sign-in POST with broken percent-encoding")
def _(w):
    return req(w, "POST", "/auth/signin", body="identifier=%zz&password=%", headers={
        "Content-Type": "application/x-www-form-urlencoded"})


@case("sign-in POST with a JSON body")
def _(w):
    return req(w, "POST", "/auth/signin", body='{"identifier":"alice@example.com"}',
               headers={"Content-Type": "application/json"})


@case("the OIDC callback without state")
def _(w):
    return req(w, "GET", "/auth/oidc/callback?code=abc")


@case("the OIDC callback with a made-up state")
def _(w):
    return req(w, "GET", "/auth/oidc/callback?code=abc&state=" + "s" * 43)


@case("the OIDC callback with SQL in state")
def _(w):
    return req(w, "GET", "/auth/oidc/callback?code=x&state=%27%20OR%201%3D1--")


@case("discovery for a domain Orchard does not serve")
def _(w):
    return req(w, "GET", "/.well-known/com.apple.remotemanagement?user-identifier=eve@evil.example",
               headers={"Host": "example.com"})


@case("discovery with a Host Orchard does not serve")
def _(w):
    return req(w, "GET", "/.well-known/com.apple.remotemanagement?user-identifier=a@example.com",
               headers={"Host": "evil.example"})


@case("discovery with an identifier that a decoded NUL would cut to a served one")
def _(w):
    return req(w, "GET", "/.well-known/com.apple.remotemanagement?user-identifier=alice@example.com%00@evil.example",
               headers={"Host": "example.com"})


@case("discovery by POST")
def _(w):
    return req(w, "POST", "/.well-known/com.apple.remotemanagement", body=b"x", headers={"Host": "example.com"})


@case("SCEP with an unknown operation")
def _(w):
    return req(w, "GET", "/scep?operation=Exploit")


@case("SCEP without an operation")
def _(w):
    return req(w, "GET", "/scep")


@case("SCEP PKIOperation with garbage")
def _(w):
    return req(w, "POST", "/scep?operation=PKIOperation", body=os.urandom(3000))


@case("SCEP PKIOperation by GET with a message that is not base64")
def _(w):
    return req(w, "GET", "/scep?operation=PKIOperation&message=%25%25%25")


@case("an unknown HTTP method")
def _(w):
    return req(w, "BREW", "/healthz")


@case("a path with a NUL")
def _(w):
    return req(w, "GET", "/healthz%00.html")


@case("a path that climbs out of the root")
def _(w):
    return req(w, "GET", "/../../../../etc/passwd")


@case("an encoded climb out of the root")
def _(w):
    return req(w, "GET", "/%2e%2e/%2e%2e/etc/passwd")


@case("the admin API without a key", 401)
def _(w):
    return w["s"].api("GET", "/api/v1/enrollments", key=False).status


@case("the admin API with a made-up key", 401)
def _(w):
    return w["s"].api("GET", "/api/v1/enrollments", key="k" * 43).status


@case("the admin API with a device's session token as the key", 401)
def _(w):
    return w["s"].api("GET", "/api/v1/enrollments", key=w["a"].token).status


# ---- SQL metacharacters and path traversal in every path parameter -----------------------------------

NASTY = {"SQL quote": "x' OR '1'='1", "SQL statement": "1;DROP TABLE users;--", "traversal": "..%2F..%2Fetc%2Fpasswd",
         "NUL": "a%00b", "10 KB": "z" * 10000}
ROUTES = [("GET", "/api/v1/enrollments/{}"), ("GET", "/api/v1/enrollments/{}/commands"),
          ("POST", "/api/v1/enrollments/{}/commands"), ("POST", "/api/v1/enrollments/{}/reauthenticate"),
          ("POST", "/api/v1/enrollments/{}/unenroll"), ("POST", "/api/v1/enrollments/{}/revoke"),
          ("POST", "/api/v1/enrollments/{}/push"), ("POST", "/api/v1/users/{}/reauthenticate"),
          ("GET", "/api/v1/commands/{}"), ("GET", "/api/v1/domains/{}"), ("PUT", "/api/v1/domains/{}"),
          ("GET", "/api/v1/profiles/{}"), ("PUT", "/api/v1/profiles/{}"), ("DELETE", "/api/v1/profiles/{}"),
          ("GET", "/api/v1/apps/{}"), ("DELETE", "/api/v1/apps/{}"), ("GET", "/api/v1/assignments/{}"),
          ("DELETE", "/api/v1/assignments/{}"), ("GET", "/api/v1/enrollments/{}/library"),
          ("POST", "/api/v1/enrollments/{}/reconcile"), ("GET", "/api/v1/jobs/{}"), ("POST", "/enroll/{}")]
for _method, _route in ROUTES:
    for _label in ("SQL quote", "SQL statement", "traversal", "NUL", "10 KB"):
        _path = _route.format(urllib.parse.quote(NASTY[_label], safe="%") if _label != "traversal" else NASTY[_label])
        _body = {"request_type": "ProfileList"} if _method in ("POST", "PUT") else None
        if _route.startswith("/enroll/"):
            CASES.append(("%s %s with %s" % (_method, _route, _label),
                          lambda w, p=_path: req(w, "POST", p, body=sim.bare_machine_info()), "4xx"))
        else:
            CASES.append(("%s %s with %s" % (_method, _route, _label),
                          lambda w, m=_method, p=_path, b=_body: api(w, m, p, b), "4xx"))


# ---- the runner ---------------------------------------------------------------------------------------

@test("the bad-input suite has at least 100 cases")
def t_count():
    ok(len(CASES) >= 100, "only %d cases" % len(CASES))
    orchard.log("bad-input cases: %d" % len(CASES))


@test("set-up: two enrolled devices, a re-authentication and a queued command")
def t_setup():
    world()


def t_cases():
    for name, fn, expect in CASES:
        run_case(name, fn, expect)


@test("nothing stored changed and nothing was handed out")
def t_unchanged():
    w = world()
    t_cases()
    after = snapshot(w["s"])
    for t in GUARDED:
        eq(after[t], w["snapshot"][t], "table %s after the bad input" % t)
    r = w["s"].api("GET", "/api/v1/commands/%s" % w["command"])
    eq(r.json()["status"], "queued", "Alice's command is still queued")
    cmd = w["a"].idle()
    ok(cmd is not None and cmd["CommandUUID"] == w["command"], "Alice's device still gets her command")


@test("the server stops cleanly")
def t_stop():
    eq(W["s"].stop(), 0, "exit code of orchard serve")


if __name__ == "__main__":
    orchard.main()
