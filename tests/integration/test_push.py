#!/usr/bin/python3
"""
Issue 6 (APNs push) over real HTTPS against `orchard serve`, with a local HTTP/2 TLS stand-in
for Apple's push service (tests/push/apns_stub.mjs, Node's http2) that demands the push
identity as client certificate, records every request and answers from a script.

Covers: the exact request (path /3/device/<hex token>, headers, body), triggers (enqueue,
"push": false, unenroll, POST /enrollments/{id}/push, bulk by user/domain/all), retry with
backoff on 500/429/connection drop (the debug clock moves time), GOAWAY (refused pushes resent
at once, none twice), a push server with an untrusted certificate, dead tokens (410, 400
BadDeviceToken) until the next TokenUpdate, coalescing, the re-push sweeper (silent device,
NotNow), the certificate endpoint and metrics, and a restart in the middle of a bulk push
(every device pushed exactly once).
"""
import datetime
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "sim"))
import device as sim  # noqa: E402
import orchard  # noqa: E402
import pki  # noqa: E402
from apns import Stub  # noqa: E402
from orchard import Server, eq, ok, status, test  # noqa: E402

ALICE = ("alice@example.com", "alice@appleid.example.com", "alice-Pa55word!")


_srv = _stub = None


def env():
    return {"ORCHARD_DEBUG_CLOCK": "true"}


def srv():
    global _srv, _stub
    if _srv is None:
        _srv = Server(name="push", env=env())
        _srv.add_user(*ALICE)
        _stub = Stub(_srv)
        _srv.start(env={"ORCHARD_APNS_URL": _stub.url, "ORCHARD_APNS_CA_FILE": _srv.ca_file})
    return _srv


def stub():
    srv()
    return _stub


def enrolled(s=None):
    s = s or srv()
    d = sim.Device(s.url, ALICE[0], ALICE[2], ca_file=s.ca_file, signing_ca=s.path("signing", "ca.pem"),
                   workdir=tempfile.mkdtemp(prefix="dev-", dir=s.tmp), auto_reauth=False)
    return d.run_enrollment()


def enqueue(s, d, push=None):
    body = {"request_type": "ProfileList"}
    if push is not None:
        body["push"] = push
    r = s.api("POST", "/api/v1/enrollments/%s/commands" % d.enrollment_id, body)
    status(r, 201, "enqueue")
    return r.json()["command_uuid"]


def quiet(st, hex_token, n, seconds=2.0, what=""):
    """Asserts the stub has exactly n requests for the token, and still has after `seconds`."""
    time.sleep(seconds)
    got = st.for_token(hex_token)
    eq(len(got), n, "%s: pushes to the device" % what)


# --- the request ---------------------------------------------------------------------------------

@test
def enqueueing_a_command_pushes_in_apns_format():
    s, st = srv(), stub()
    d = enrolled(s)
    tok = d.push_token.hex()
    t0 = s.api("POST", "/api/v1/debug/clock", {"advance": 0}).json()["now"]
    enqueue(s, d)
    r = st.wait_for(tok, 1)[0]
    eq(r["method"], "POST", "method")
    eq(r["path"], "/3/device/" + tok, "path (lowercase hex token)")
    h = r["headers"]
    eq(h.get("apns-push-type"), "mdm", "apns-push-type")
    eq(h.get("apns-topic"), d.topic, "apns-topic")
    ok(d.topic.startswith("com.apple.mgmt."), "topic %r" % d.topic)
    eq(h.get("apns-priority"), "10", "apns-priority")
    exp = int(h.get("apns-expiration"))
    ok(t0 + 86400 - 5 <= exp <= t0 + 86400 + 30, "apns-expiration %d is not about now + 24h (%d)" % (exp, t0 + 86400))
    eq(r["body"], json.dumps({"mdm": d.push_magic}, separators=(",", ":")), "body")
    ok("aps" not in json.loads(r["body"]), "no aps key")
    ok(r["client_subject"] and r["client_subject"].get("UID") == d.topic,
       "client certificate is the push identity: %r" % r["client_subject"])
    log = s.log_text()
    ok(d.push_magic not in log and tok not in log, "the server log leaks the PushMagic or the token")
    # The device answers: queue drained, no more pushes.
    d.run_commands()
    quiet(st, tok, 1, 1.5, "after the device checked in")


@test
def push_false_opts_out_and_the_push_endpoint_pushes():
    s, st = srv(), stub()
    d = enrolled(s)
    tok = d.push_token.hex()
    enqueue(s, d, push=False)
    quiet(st, tok, 0, 1.5, "push: false")
    r = s.api("POST", "/api/v1/enrollments/%s/push" % d.enrollment_id)
    status(r, 202, "POST push")
    st.wait_for(tok, 1)
    status(s.api("POST", "/api/v1/enrollments/%s/push" % uuid.uuid4()), 404, "push to an unknown enrollment")
    status(s.api("POST", "/api/v1/enrollments/%s/push" % d.enrollment_id, key=None), 401, "push without a key")
    # Enrolled but no TokenUpdate yet: nothing to push to.
    d2 = sim.Device(s.url, ALICE[0], ALICE[2], ca_file=s.ca_file, signing_ca=s.path("signing", "ca.pem"),
                    workdir=tempfile.mkdtemp(prefix="dev-", dir=s.tmp), auto_reauth=False)
    d2.run_enrollment(check_in=False)
    d2.authenticate()
    status(s.api("POST", "/api/v1/enrollments/%s/push" % d2.enrollment_id), 409, "push before TokenUpdate")


@test
def five_commands_in_a_burst_cost_one_push():
    s, st = srv(), stub()
    d = enrolled(s)
    tok = d.push_token.hex()
    threads = [threading.Thread(target=enqueue, args=(s, d)) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    st.wait_for(tok, 1)
    quiet(st, tok, 1, 1.5, "5 commands enqueued together")
    eq(len(d.run_commands()), 5, "commands delivered after one push")


@test
def unenroll_pushes():
    s, st = srv(), stub()
    d = enrolled(s)
    status(s.api("POST", "/api/v1/enrollments/%s/unenroll" % d.enrollment_id), 202, "unenroll")
    st.wait_for(d.push_token.hex(), 1)


# --- retries -------------------------------------------------------------------------------------

@test
def server_errors_and_throttling_are_retried_with_backoff():
    s, st = srv(), stub()
    d = enrolled(s)
    tok = d.push_token.hex()
    st.script(tokens={tok: [{"status": 500, "reason": "InternalServerError"},
                            {"status": 429, "reason": "TooManyRequests"}]})
    try:
        enqueue(s, d)
        st.wait_for(tok, 1)
        quiet(st, tok, 1, 2.0, "no immediate retry after a 500")
        s.advance_clock(20)  # first backoff is 30 s +-20 %: not yet
        quiet(st, tok, 1, 1.5, "20 s after the 500")
        s.advance_clock(20)  # 40 s: due
        got = st.wait_for(tok, 2)
        eq(got[1]["status"], 429, "second attempt answered 429")
        s.advance_clock(60)  # second backoff is 2 min +-20 %
        quiet(st, tok, 2, 1.5, "60 s after the 429")
        s.advance_clock(100)
        got = st.wait_for(tok, 3)
        eq(got[2]["status"], 200, "third attempt")
        eq(got[2]["body"], got[0]["body"], "retries send the same body")
        m = s.get("/metrics").text
        ok('orchard_pushes_total{outcome="retry"}' in m, "metrics lack the retry counter")
    finally:
        st.script()


@test
def a_dropped_connection_is_retried_on_a_new_connection():
    s, st = srv(), stub()
    d = enrolled(s)
    tok = d.push_token.hex()
    st.script(tokens={tok: [{"drop": True}]})
    try:
        enqueue(s, d)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not st.for_token(tok):
            time.sleep(0.1)
        eq(len(st.for_token(tok)), 1, "first attempt reached the stub")
        quiet(st, tok, 1, 1.5, "no immediate retry after a connection loss")
        s.advance_clock(40)
        got = st.wait_for(tok, 2)
        eq(got[1]["status"], 200, "retry answered")
        ok(got[1]["session"] != got[0]["session"], "the retry used a new connection")
    finally:
        st.script()


@test
def goaway_refused_pushes_go_out_at_once_on_a_new_connection():
    # APNs closes connections gracefully with GOAWAY: what it refused was never processed, so it
    # is sent again on a new connection right away (no backoff), and nothing is sent twice.
    s = Server(name="push-goaway", env=env())
    st = Stub(s)
    s.start(env={"ORCHARD_APNS_URL": st.url, "ORCHARD_APNS_CA_FILE": s.ca_file})
    try:
        toks = seed(s, {"g@example.com": 60})["g@example.com"]
        st.script(queue=[{"status": 200, "goaway": True}])
        status(s.api("POST", "/api/v1/push", {"user": "g@example.com"}), 202, "bulk push")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and st.stats()["answered"] < 60:
            time.sleep(0.05)
        time.sleep(0.5)
        reqs = st.requests()
        paths = [r["path"][len("/3/device/"):] for r in reqs]
        eq(sorted(paths), sorted(toks), "every device pushed exactly once, without waiting for a retry")
        ok(all(r["status"] == 200 for r in reqs), "all answered 200")
        ok(len({r["session"] for r in reqs}) >= 2, "the refused ones went out on a new connection")
        ok("event=apns_goaway" in s.log_text(), "the GOAWAY is logged")
    finally:
        s.stop()


def impostor_server_cert():
    """A well-formed TLS server certificate for 127.0.0.1 from a CA Orchard does not trust."""
    import ipaddress
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    ca, ca_key = pki.make_ca("Impostor CA")
    key = pki.new_key()
    cert = (x509.CertificateBuilder().subject_name(pki.name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(pki.now() - datetime.timedelta(hours=1))
            .not_valid_after(pki.now() + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


@test
def a_push_server_with_an_untrusted_certificate_gets_nothing():
    # The push certificate and PushMagic go only to a server that proves it is the configured
    # one: a certificate from another CA fails the handshake, and the pushes wait for a retry.
    s = Server(name="push-untrusted", env=env())
    cert, key = impostor_server_cert()
    pki.write_pem(os.path.join(s.tmp, "impostor.pem"), cert=cert)
    pki.write_pem(os.path.join(s.tmp, "impostor.key"), key=key)
    st = Stub(s, cert=os.path.join(s.tmp, "impostor.pem"), key=os.path.join(s.tmp, "impostor.key"))
    s.start(env={"ORCHARD_APNS_URL": st.url, "ORCHARD_APNS_CA_FILE": s.ca_file})
    try:
        seed(s, {"t@example.com": 3})
        status(s.api("POST", "/api/v1/push", {"user": "t@example.com"}), 202, "bulk push")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "event=apns_connect_failed" not in s.log_text():
            time.sleep(0.1)
        log = s.log_text()
        ok("event=apns_connect_failed" in log and "unable to get local issuer certificate" in log,
           "the handshake failure is logged with its reason")
        eq(st.stats()["requests"], 0, "the impostor received no push")
        m = [l for l in s.get("/metrics").text.splitlines() if l.startswith("orchard_push_outbox ")]
        eq(m, ["orchard_push_outbox 3"], "the pushes stay in the outbox for a retry")
    finally:
        s.stop()
        st.stop()


# --- dead tokens ---------------------------------------------------------------------------------

def _dead_token_case(answer):
    s, st = srv(), stub()
    d = enrolled(s)
    tok = d.push_token.hex()
    st.script(tokens={tok: [answer]})
    try:
        enqueue(s, d)
        st.wait_for(tok, 1)
        time.sleep(0.5)
        status(s.api("POST", "/api/v1/enrollments/%s/push" % d.enrollment_id), 409, "push to a dead token")
        enqueue(s, d)
        s.advance_clock(3600)
        quiet(st, tok, 1, 1.5, "no pushes to a dead token")
        # A new TokenUpdate revives the channel.
        d.token_update()
        status(s.api("POST", "/api/v1/enrollments/%s/push" % d.enrollment_id), 202, "push after TokenUpdate")
        st.wait_for(tok, 2)
    finally:
        st.script()


@test
def unregistered_410_marks_the_token_dead_until_the_next_token_update():
    _dead_token_case({"status": 410, "reason": "Unregistered"})


@test
def bad_device_token_400_marks_the_token_dead():
    _dead_token_case({"status": 400, "reason": "BadDeviceToken"})


# --- re-push sweeper -----------------------------------------------------------------------------

@test
def silent_devices_with_pending_commands_are_pushed_again_including_after_notnow():
    s, st = srv(), stub()
    d = enrolled(s)
    tok = d.push_token.hex()
    u = enqueue(s, d)
    st.wait_for(tok, 1)
    cmd = d.idle()
    eq(cmd["CommandUUID"], u, "command handed out")
    d.report(u, "NotNow")
    s.advance_clock(3600)
    quiet(st, tok, 1, 2.0, "1 h after NotNow")
    s.advance_clock(24 * 3600)
    st.wait_for(tok, 2, timeout=10)
    # Pushed just now: not again until another repush_interval of silence.
    s.advance_clock(3600)
    quiet(st, tok, 2, 2.0, "1 h after the re-push")
    d.run_commands()
    s.advance_clock(25 * 3600)
    quiet(st, tok, 2, 2.0, "nothing pending")


# --- certificate ---------------------------------------------------------------------------------

@test
def pushcert_endpoint_and_metrics():
    s = srv()
    r = s.api("GET", "/api/v1/pushcert")
    status(r, 200, "GET pushcert")
    j = r.json()
    ok(j["topic"].startswith("com.apple.mgmt."), "topic %r" % j["topic"])
    ok(j["days_left"] > 30 and j["not_after"] > time.time(), "validity %r" % j)
    ok("UID=" + j["topic"] in j["subject"] or j["topic"] in j["subject"], "subject %r" % j["subject"])
    status(s.api("GET", "/api/v1/pushcert", key=None), 401, "pushcert without a key")
    m = s.get("/metrics").text
    line = [l for l in m.splitlines() if l.startswith("orchard_push_certificate_expiry_seconds ")]
    ok(line and int(line[0].split()[1]) > 30 * 86400, "expiry gauge: %r" % line)
    ok("orchard_push_outbox " in m, "outbox gauge")


# --- bulk + restart ------------------------------------------------------------------------------

def seed(s, users):
    """Adds users and pushable enrollments straight into the (stopped or idle) SQLite store.
    users: {email: n}. Returns {email: [hex tokens]}."""
    db = sqlite3.connect(s.path("orchard.db"), timeout=10)
    topic = json.loads(s.api("GET", "/api/v1/pushcert").body)["topic"] if s.running() else None
    out = {}
    with db:
        for email, n in users.items():
            cur = db.execute("INSERT INTO users (email, managed_apple_id, created_at) VALUES (?, ?, 1)",
                             (email, "m-" + email))
            uid = cur.lastrowid
            out[email] = []
            for _ in range(n):
                tok = os.urandom(32).hex()
                db.execute("INSERT INTO enrollments (id, type, user_id, topic, push_token, push_magic, "
                           "token_updated_at, last_seen_at) VALUES (?, 1, ?, ?, ?, ?, 1, 1)",
                           (str(uuid.uuid4()).upper(), uid, topic, tok, str(uuid.uuid4()).upper()))
                out[email].append(tok)
    db.close()
    return out


@test
def bulk_push_filters_and_a_restart_in_the_middle_pushes_everyone_exactly_once():
    s = Server(name="push-bulk", env=env())
    st = Stub(s)
    st.script(default={"status": 200, "delay_ms": 150})
    s.start(env={"ORCHARD_APNS_URL": st.url, "ORCHARD_APNS_CA_FILE": s.ca_file, "ORCHARD_PUSH_BATCH": "40"})
    try:
        toks = seed(s, {"u1@example.com": 200, "u2@example.com": 50, "u3@other.test": 250})
        status(s.api("POST", "/api/v1/push", {"nope": 1}), 400, "bulk without a filter")
        status(s.api("POST", "/api/v1/push", {"user": "a@b", "all": True}), 400, "two filters")
        status(s.api("POST", "/api/v1/push", {"all": False}), 400, "all: false")
        r = s.api("POST", "/api/v1/push", {"domain": "other.test"})
        status(r, 202, "bulk by domain")
        eq(r.json(), {"queued": 250}, "queued by domain")
        r = s.api("POST", "/api/v1/push", {"user": "U1@example.com"})
        status(r, 202, "bulk by user")
        eq(r.json(), {"queued": 200}, "queued by user")
        want = set(toks["u3@other.test"]) | set(toks["u1@example.com"])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and st.stats()["answered"] < 120:
            time.sleep(0.05)
        before = st.stats()["answered"]
        ok(120 <= before < 450, "stopped in the middle (%d of 450 answered)" % before)
        eq(s.stop(), 0, "graceful stop during the bulk push")
        s.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and st.stats()["answered"] < 450:
            time.sleep(0.1)
        time.sleep(1.0)
        reqs = st.requests()
        paths = [r["path"][len("/3/device/"):] for r in reqs]
        eq(len(paths), 450, "requests in total (both runs)")
        eq(set(paths), want, "every targeted device, and only those")
        eq(len(set(paths)), len(paths), "nobody pushed twice")
        ok(all(r["status"] == 200 for r in reqs), "all answered 200")
        sessions = {r["session"] for r in reqs}
        eq(len(sessions), 2, "one connection per server run")
        r = s.api("POST", "/api/v1/push", {"all": True})
        eq(r.json(), {"queued": 500}, "queued for all")
    finally:
        s.stop()


@test
def apns_timeout_cancels_a_slow_push_but_an_idle_connection_is_reused():
    # apns_timeout bounds one push and a silent connection; a connection merely idle between
    # bursts for longer than that must be reused, not dropped as silent.
    s = Server(name="push-timeout", env=env())
    st = Stub(s)
    s.start(env={"ORCHARD_APNS_URL": st.url, "ORCHARD_APNS_CA_FILE": s.ca_file, "ORCHARD_APNS_TIMEOUT": "2s"})
    try:
        toks = seed(s, {"t1@example.com": 1, "t2@example.com": 1, "t3@example.com": 1})
        st.script(default={"status": 200, "delay_ms": 1200},
                  tokens={toks["t3@example.com"][0]: [{"status": 200, "delay_ms": 4000}]})
        status(s.api("POST", "/api/v1/push", {"user": "t1@example.com"}), 202, "push t1")
        first = st.wait_for(toks["t1@example.com"][0], 1)
        time.sleep(3.0)  # idle longer than apns_timeout
        status(s.api("POST", "/api/v1/push", {"user": "t2@example.com"}), 202, "push t2")
        second = st.wait_for(toks["t2@example.com"][0], 1)
        eq(second[0]["status"], 200, "answered after 1.2 s, within the timeout")
        eq(second[0]["session"], first[0]["session"], "the idle connection was reused")
        ok('reason="timeout"' not in s.log_text(), "nothing timed out so far")
        status(s.api("POST", "/api/v1/push", {"user": "t3@example.com"}), 202, "push t3")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and 'reason="timeout"' not in s.log_text():
            time.sleep(0.1)
        ok("event=push_retry" in s.log_text() and 'reason="timeout"' in s.log_text(),
           "the push unanswered after 2 s is cancelled and scheduled for a retry")
        m = s.get("/metrics").text
        ok('orchard_pushes_total{outcome="retry"} 1' in m, "one retry counted")
        eq(st.stats()["answered"], 2, "the stub answered only the two quick ones meanwhile")
    finally:
        s.stop()


class ConnectProxy:
    """A minimal HTTP CONNECT proxy: records each CONNECT target and relays bytes both ways, or
    answers every CONNECT with `refuse` (e.g. 403)."""

    def __init__(self, refuse=None):
        import socket
        self.targets, self.refuse = [], refuse
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = "http://127.0.0.1:%d" % self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        import socket
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = c.recv(1)
            if not chunk:
                c.close()
                return
            head += chunk
        target = head.split(b" ")[1].decode()
        self.targets.append(target)
        if self.refuse:
            c.sendall(b"HTTP/1.1 %d Forbidden\r\nContent-Length: 0\r\n\r\n" % self.refuse)
            c.close()
            return
        host, port = target.rsplit(":", 1)
        up = socket.create_connection((host, int(port)))
        c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")

        def pipe(a, b):
            try:
                while True:
                    d = a.recv(65536)
                    if not d:
                        break
                    b.sendall(d)
            except OSError:
                pass
            for x in (a, b):
                try:
                    x.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        threading.Thread(target=pipe, args=(up, c), daemon=True).start()
        pipe(c, up)

    def close(self):
        self.sock.close()


@test
def pushes_go_through_an_http_connect_proxy_and_a_refusing_proxy_is_reported():
    s = Server(name="push-proxy", env=env())
    st = Stub(s)
    proxy = ConnectProxy()
    s.start(env={"ORCHARD_APNS_URL": st.url, "ORCHARD_APNS_CA_FILE": s.ca_file, "ORCHARD_APNS_PROXY": proxy.url})
    try:
        toks = seed(s, {"px@example.com": 3})["px@example.com"]
        status(s.api("POST", "/api/v1/push", {"user": "px@example.com"}), 202, "bulk push")
        for tok in toks:
            got = st.wait_for(tok, 1)
            eq(got[0]["status"], 200, "pushed through the proxy")
        eq(proxy.targets, [st.url[len("https://"):]], "one CONNECT tunnel, to the push server")
    finally:
        s.stop()
        proxy.close()
    # A proxy that refuses the tunnel: nothing reaches APNs, the reason is logged, the pushes wait.
    refusing = ConnectProxy(refuse=403)
    s.start(env={"ORCHARD_APNS_URL": st.url, "ORCHARD_APNS_CA_FILE": s.ca_file,
                 "ORCHARD_APNS_PROXY": refusing.url})
    try:
        before = st.stats()["requests"]
        toks = seed(s, {"px2@example.com": 1})["px2@example.com"]
        status(s.api("POST", "/api/v1/push", {"user": "px2@example.com"}), 202, "bulk push")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "proxy refused CONNECT" not in s.log_text():
            time.sleep(0.1)
        ok("proxy refused CONNECT" in s.log_text() and "403" in s.log_text(), "the refusal is logged with its status")
        eq(st.stats()["requests"], before, "nothing reached the push server")
        ok(refusing.targets, "the proxy was asked")
    finally:
        s.stop()
        refusing.close()
    # A proxy setting Orchard cannot use stops `orchard serve` with a clear message.
    p = subprocess.run([orchard.BIN, "serve", "--data", s.data], env=dict(os.environ, ORCHARD_APNS_PROXY="socks5://x:1"),
                       capture_output=True, text=True, timeout=30)
    ok(p.returncode != 0 and "proxy" in p.stderr, "serve refuses a proxy it cannot use: %r" % p.stderr)


# --- orchard pushcert ------------------------------------------------------------------------------

def push_cert(key, topic, days=365, issuer_key=None):
    """A certificate shaped like Apple's MDM push certificate (UID = topic)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID
    subj = x509.Name([x509.NameAttribute(NameOID.USER_ID, topic),
                      x509.NameAttribute(NameOID.COMMON_NAME, "APSP:" + topic.rsplit(".", 1)[-1])])
    n = pki.now()
    return (x509.CertificateBuilder().subject_name(subj).issuer_name(pki.name("Apple test CA"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(n - datetime.timedelta(days=10)).not_valid_after(n + datetime.timedelta(days=days))
            .sign(issuer_key or pki.new_key(), hashes.SHA256()))


def pem(obj, password=None, fmt=None):
    from cryptography.hazmat.primitives import serialization as ser
    if hasattr(obj, "public_bytes"):
        return obj.public_bytes(ser.Encoding.PEM)
    enc = ser.BestAvailableEncryption(password.encode()) if password else ser.NoEncryption()
    return obj.private_bytes(ser.Encoding.PEM, fmt or ser.PrivateFormat.PKCS8, enc)


@test
def pushcert_csr_import_keeps_the_topic_and_accepts_pem_pkcs1_pkcs8_encrypted_and_pkcs12():
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.serialization import pkcs12
    s = Server(name="pushcert")
    d = tempfile.mkdtemp(dir=s.tmp)
    topic = s.cli("pushcert", "show", "--data", s.data).stdout.split("topic:")[1].split()[0]
    ok(topic.startswith("com.apple.mgmt."), "show prints the topic: %r" % topic)

    # csr: a pending key (0600) and a CSR signed by it.
    out = os.path.join(d, "req.csr")
    s.cli("pushcert", "csr", "--data", s.data, "--out", out)
    pending = s.path("push", "pending.key")
    eq(os.stat(pending).st_mode & 0o777, 0o600, "pending key mode")
    csr = x509.load_pem_x509_csr(open(out, "rb").read())
    ok(csr.is_signature_valid, "CSR signature")
    key = ser.load_pem_private_key(open(pending, "rb").read(), None)
    eq(csr.public_key().public_numbers(), key.public_key().public_numbers(), "CSR carries the pending key")
    p = s.cli("pushcert", "csr", "--data", s.data)
    ok("BEGIN CERTIFICATE REQUEST" in p.stdout, "csr without --out prints the CSR")
    key = ser.load_pem_private_key(open(pending, "rb").read(), None)

    # import the certificate "Apple" returned for the pending key: same topic.
    cpath = os.path.join(d, "MDM_Orchard_Certificate.pem")
    open(cpath, "wb").write(pem(push_cert(key, topic)))
    s.cli("pushcert", "import", "--data", s.data, "--cert", cpath)
    ok(not os.path.exists(pending), "the pending key is consumed by import")
    eq(os.stat(s.path("push", "key.pem")).st_mode & 0o777, 0o600, "installed key mode")
    installed = x509.load_pem_x509_certificate(open(s.path("push", "cert.pem"), "rb").read())
    eq(installed.public_key().public_numbers(), key.public_key().public_numbers(), "installed certificate")

    # A different topic orphans devices: refused unless --force.
    other = "com.apple.mgmt.External." + str(uuid.uuid4())
    k2 = pki.new_key()
    open(os.path.join(d, "other.pem"), "wb").write(pem(push_cert(k2, other)))
    open(os.path.join(d, "other.key"), "wb").write(pem(k2, fmt=ser.PrivateFormat.TraditionalOpenSSL))
    p = s.cli("pushcert", "import", "--data", s.data, "--cert", os.path.join(d, "other.pem"), "--key",
              os.path.join(d, "other.key"), check=False)
    eq(p.returncode, 1, "different topic refused")
    ok("orphan" in p.stderr, "explains why: %r" % p.stderr)
    ok(topic in s.cli("pushcert", "show", "--data", s.data).stdout, "still the old topic")

    # Key mismatch, expired certificate, not a push certificate.
    p = s.cli("pushcert", "import", "--data", s.data, "--cert", cpath, "--key", os.path.join(d, "other.key"),
              check=False)
    eq(p.returncode, 1, "key of another certificate refused")
    k3 = pki.new_key()
    open(os.path.join(d, "old.pem"), "wb").write(pem(push_cert(k3, topic, days=-1)))
    open(os.path.join(d, "k3.key"), "wb").write(pem(k3))
    p = s.cli("pushcert", "import", "--data", s.data, "--cert", os.path.join(d, "old.pem"), "--key",
              os.path.join(d, "k3.key"), check=False)
    eq(p.returncode, 1, "expired certificate refused")

    # Renewal with an encrypted PKCS#8 key, then a PKCS#1 key (same topic).
    k4 = pki.new_key()
    open(os.path.join(d, "renew.pem"), "wb").write(pem(push_cert(k4, topic)))
    open(os.path.join(d, "renew.key"), "wb").write(pem(k4, password="s3cret"))
    p = s.cli("pushcert", "import", "--data", s.data, "--cert", os.path.join(d, "renew.pem"), "--key",
              os.path.join(d, "renew.key"), check=False)
    eq(p.returncode, 1, "encrypted key without a password")
    s.cli("pushcert", "import", "--data", s.data, "--cert", os.path.join(d, "renew.pem"), "--key",
          os.path.join(d, "renew.key"), "--password-stdin", input="s3cret\n")
    open(os.path.join(d, "renew1.key"), "wb").write(pem(k4, fmt=ser.PrivateFormat.TraditionalOpenSSL))
    s.cli("pushcert", "import", "--data", s.data, "--cert", os.path.join(d, "renew.pem"), "--key",
          os.path.join(d, "renew1.key"))

    # PKCS#12 with the key inside, password on stdin; a wrong password fails.
    k5 = pki.new_key()
    p12 = pkcs12.serialize_key_and_certificates(b"orchard", k5, push_cert(k5, topic), None,
                                                ser.BestAvailableEncryption(b"p12pass"))
    open(os.path.join(d, "push.p12"), "wb").write(p12)
    p = s.cli("pushcert", "import", "--data", s.data, "--cert", os.path.join(d, "push.p12"), "--password-stdin",
              input="wrong\n", check=False)
    eq(p.returncode, 1, "wrong PKCS#12 password")
    s.cli("pushcert", "import", "--data", s.data, "--cert", os.path.join(d, "push.p12"), "--password-stdin",
          input="p12pass\n")
    installed = x509.load_pem_x509_certificate(open(s.path("push", "cert.pem"), "rb").read())
    eq(installed.public_key().public_numbers(), k5.public_key().public_numbers(), "PKCS#12 installed")

    # --force replaces the topic; the server then serves the new one.
    s.cli("pushcert", "import", "--data", s.data, "--cert", os.path.join(d, "other.pem"), "--key",
          os.path.join(d, "other.key"), "--force")
    s.start()
    eq(s.api("GET", "/api/v1/pushcert").json()["topic"], other, "the server uses the imported certificate")
    s.stop()


if __name__ == "__main__":
    orchard.main()
