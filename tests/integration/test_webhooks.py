#!/usr/bin/python3
"""
Webhooks (docs/WEBHOOKS.md) over real HTTPS against `orchard serve`, with a local HTTPS receiver
(Python's http.server, HTTP/1.1 keep-alive, the server's own TLS identity, trusted through
webhook_ca_file) that records every request and answers from a script.

Covers: the request (method, path, headers, the HMAC-SHA256 signature over
`<timestamp>.<body>`, id/created_at), audit events and command results of an enrolled device
delivered in order with no secrets in them, a failed delivery retried with backoff under the same
id while later events go out at once, events kept through a receiver outage and a restart and
delivered exactly once, `orchard serve` refusing a missing/short secret and plain HTTP to a remote
host, and nothing recorded while webhook_url is unset.
"""
import base64
import collections
import datetime
import hashlib
import hmac
import http.server
import json
import os
import re
import secrets
import socket
import sqlite3
import ssl
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
from orchard import Server, eq, ok, status, test  # noqa: E402

ALICE = ("alice@example.com", "alice@appleid.example.com", "alice-Pa55word!")
HOOK_PATH = "/hook"
REPLAY_WINDOW = 300  # seconds (WEBHOOKS.md: five minutes)
CREATED_AT_RE = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?Z$")


# --- the receiver --------------------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every answer carries Content-Length

    def setup(self):
        super().setup()
        self.server.owner._track(self.connection, True)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.owner._track(self.connection, False)

    def _read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _any(self):
        self.server.owner._handle(self, self._read_body())

    do_POST = do_PUT = do_GET = do_DELETE = do_PATCH = _any

    def log_message(self, *args):
        pass


class _HTTPSServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A TLS handshake refused or a connection cut by stop(): not a test failure by itself.
        orchard.log("  receiver: connection from %s ended with %s" % (client_address, sys.exc_info()[1]))


class Receiver:
    """A webhook receiver on 127.0.0.1 with Orchard's own TLS identity. Records every request as
    a dict: method, path, headers (case-insensitive), body (raw bytes), at (time.time()), conn
    (client port: one per TCP connection) and status (what it answered). Answers, in order of
    precedence: the next status queued for a matching event (answer()), the next status of the
    general queue (plan()), else `default`."""

    def __init__(self, s, port=0):
        self.s = s
        self.port = port
        self.default = 200
        self._plan = collections.deque()
        self._rules = []  # (match(body) -> bool, deque of statuses)
        self._reqs = []
        self._cond = threading.Condition()
        self._conns = set()
        self._httpd = self._thread = None

    @property
    def url(self):
        return "https://127.0.0.1:%d%s" % (self.port, HOOK_PATH)

    def start(self):
        httpd = _HTTPSServer(("127.0.0.1", self.port), _Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.s.path("tls", "server.pem"), self.s.path("tls", "server.key"))
        # The handshake happens in the connection's own thread, not in the accept loop.
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
        httpd.owner = self
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        orchard.on_exit(self.stop)
        return self

    def stop(self):
        """Down: stops listening and cuts every open (kept-alive) connection."""
        if self._httpd is None:
            return
        httpd, self._httpd = self._httpd, None
        httpd.shutdown()
        httpd.server_close()
        with self._cond:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(5)

    def plan(self, statuses):
        with self._cond:
            self._plan.extend(statuses)

    def answer(self, match, statuses):
        """The next requests whose parsed body satisfies match(body) get these statuses."""
        with self._cond:
            self._rules.append((match, collections.deque(statuses)))

    def _track(self, conn, add):
        with self._cond:
            (self._conns.add if add else self._conns.discard)(conn)

    def _handle(self, h, body):
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        with self._cond:
            rule = next((q for m, q in self._rules if q and isinstance(parsed, dict) and m(parsed)), None)
            if rule is not None:
                code = rule.popleft()
            elif self._plan:
                code = self._plan.popleft()
            else:
                code = self.default
        rec = {"method": h.command, "path": h.path, "headers": h.headers, "body": body, "at": time.time(),
               "conn": h.client_address[1], "status": code}
        out = b"ok\n" if 200 <= code < 300 else b"nope\n"
        h.send_response(code)
        h.send_header("Content-Type", "text/plain")
        h.send_header("Content-Length", str(len(out)))
        h.end_headers()
        h.wfile.write(out)
        h.wfile.flush()
        with self._cond:
            self._reqs.append(rec)
            self._cond.notify_all()

    def requests(self):
        with self._cond:
            return list(self._reqs)

    def wait(self, pred, timeout=15, what="the receiver's requests"):
        """Waits until pred(requests) is truthy; returns its value (AssertionError on timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                v = pred(list(self._reqs))
                if v:
                    return v
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.2))
        raise AssertionError("timed out after %ss waiting for %s; got:\n  %s"
                             % (timeout, what, "\n  ".join(describe(r) for r in self.requests()) or "(nothing)"))


def body_of(r):
    try:
        return json.loads(r["body"])
    except ValueError:
        return {}


def describe(r):
    return "%s %s -> %d %r" % (r["method"], r["path"], r["status"], r["body"][:300])


def of_type(reqs, etype, **data):
    """Requests whose event has this type and these data members."""
    out = []
    for r in reqs:
        b = body_of(r)
        if b.get("type") == etype and all((b.get("data") or {}).get(k) == v for k, v in data.items()):
            out.append(r)
    return out


def delivered(reqs):
    """The bodies of the requests answered 2xx."""
    return [body_of(r) for r in reqs if 200 <= r["status"] < 300]


# --- checks ---------------------------------------------------------------------------------------

def parse_created_at(v, what):
    m = CREATED_AT_RE.match(v if isinstance(v, str) else "")
    ok(m, "%s: created_at %r is not ISO 8601 UTC (YYYY-MM-DDTHH:MM:SSZ)" % (what, v))
    return datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def check_request(r, secret, clocks, what=""):
    """Asserts one webhook request is what WEBHOOKS.md describes and its signature verifies with
    `secret`; `clocks` are acceptable "now" values (real time, the server's debug clock) for the
    replay window. Returns the parsed body."""
    what = what or describe(r)
    h = r["headers"]
    eq(r["method"], "POST", "%s: method" % what)
    eq(r["path"], HOOK_PATH, "%s: path" % what)
    eq((h.get("Content-Type") or "").split(";")[0].strip().lower(), "application/json", "%s: Content-Type" % what)
    ok((h.get("User-Agent") or "").startswith("orchard-webhook"), "%s: User-Agent %r" % (what, h.get("User-Agent")))
    try:
        body = json.loads(r["body"])
    except ValueError as e:
        raise AssertionError("%s: body is not JSON (%s): %r" % (what, e, r["body"][:300]))
    ok(isinstance(body, dict), "%s: body is not an object" % what)
    for k in ("id", "type", "created_at", "data"):
        ok(k in body, "%s: body lacks %r" % (what, k))
    ok(isinstance(body["id"], int) and not isinstance(body["id"], bool) and body["id"] > 0,
       "%s: id %r is not a positive integer" % (what, body["id"]))
    ok(isinstance(body["data"], dict), "%s: data is not an object" % what)
    eq(h.get("X-Orchard-Event"), body["type"], "%s: X-Orchard-Event" % what)
    eq(h.get("X-Orchard-Delivery"), str(body["id"]), "%s: X-Orchard-Delivery" % what)
    ts = h.get("X-Orchard-Timestamp") or ""
    ok(re.fullmatch(r"[0-9]+", ts), "%s: X-Orchard-Timestamp %r is not Unix seconds" % (what, ts))
    mac = hmac.new(secret.encode(), ts.encode("latin-1") + b"." + r["body"], hashlib.sha256).hexdigest()
    sig = h.get("X-Orchard-Signature") or ""
    ok(hmac.compare_digest(sig.encode("latin-1"), ("sha256=" + mac).encode()),
       "%s: X-Orchard-Signature %r, expected sha256=%s (HMAC-SHA256 of timestamp.body)" % (what, sig, mac))
    ok(any(abs(int(ts) - c) <= REPLAY_WINDOW for c in clocks),
       "%s: timestamp %s is more than %d s away from now (%r)" % (what, ts, REPLAY_WINDOW, clocks))
    created = parse_created_at(body["created_at"], what)
    ok(created <= int(ts) + 1, "%s: created_at %s is after the delivery timestamp %s" % (what, body["created_at"], ts))
    return body


def server_clock(s):
    r = s.api("POST", "/api/v1/debug/clock", {"advance": 0})
    status(r, 200, "read the debug clock")
    return r.json()["now"]


def metrics(s):
    r = s.get("/metrics")
    status(r, 200, "GET /metrics")
    out = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


RETRY = 'orchard_webhook_deliveries_total{outcome="retry"}'
DELIVERED = 'orchard_webhook_deliveries_total{outcome="delivered"}'
DROPPED = 'orchard_webhook_deliveries_total{outcome="dropped"}'
PENDING = "orchard_webhook_pending"


def wait_metrics(s, pred, what, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        m = metrics(s)
        if pred(m):
            return m
        if time.monotonic() > deadline:
            got = {k: v for k, v in m.items() if "webhook" in k}
            raise AssertionError("metrics: %s not reached within %ds; webhook metrics: %r" % (what, timeout, got))
        time.sleep(0.2)


def log_without_harness_lines(s):
    """The server's own output: the harness writes each start's environment (with the secret)
    into the same file, on lines starting with '===='."""
    return "\n".join(l for l in s.log_text().splitlines() if not l.startswith("===="))


def webhook_env(url, secret, s):
    return {"ORCHARD_WEBHOOK_URL": url, "ORCHARD_WEBHOOK_SECRET": secret, "ORCHARD_WEBHOOK_CA_FILE": s.ca_file}


def new_secret():
    return secrets.token_hex(16)  # 32 characters


def put_domain(s, name):
    """A cheap audited action: PUT /api/v1/domains/{name} records domain.put."""
    r = s.api("PUT", "/api/v1/domains/" + name, {"auth": "local"})
    status(r, (200, 201), "PUT domain %s" % name)


def audit(s):
    r = s.api("GET", "/api/v1/audit")
    status(r, 200, "GET /api/v1/audit")
    return r.json()["events"]


def enrolled(s):
    d = sim.Device(s.url, ALICE[0], ALICE[2], ca_file=s.ca_file, signing_ca=s.path("signing", "ca.pem"),
                   workdir=tempfile.mkdtemp(prefix="dev-", dir=s.tmp), auto_reauth=False)
    return d.run_enrollment()


def enqueue(s, d, request_type="ProfileList"):
    r = s.api("POST", "/api/v1/enrollments/%s/commands" % d.enrollment_id, {"request_type": request_type})
    status(r, 201, "enqueue %s" % request_type)
    return r.json()["command_uuid"]


def quiet(rx, pred, n, seconds, what):
    """Deliberate quiet period: after `seconds`, exactly n requests match pred."""
    time.sleep(seconds)
    got = [r for r in rx.requests() if pred(r)]
    eq(len(got), n, "%s: requests after a %.1f s quiet period (%s)" % (what, seconds, [describe(r) for r in got]))


def same_id(i):
    return lambda r: body_of(r).get("id") == i


# --- tests ----------------------------------------------------------------------------------------

@test
def enrollment_and_a_command_result_are_delivered_signed_and_in_order():
    s = Server(name="wh-basic")
    s.add_user(*ALICE)
    rx = Receiver(s).start()
    secret = new_secret()
    t_start = time.time()
    s.start(env=webhook_env(rx.url, secret, s))
    try:
        d = enrolled(s)
        u_ack, u_err, u_notnow = enqueue(s, d), enqueue(s, d, "CertificateList"), enqueue(s, d, "SecurityInfo")
        marker = "com.example.result-body-marker-" + secrets.token_hex(4)
        chain = [{"ErrorCode": 12021, "ErrorDomain": "MCMDMErrorDomain", "LocalizedDescription": marker,
                  "USEnglishDescription": marker}]
        answers = {u_ack: ("Acknowledged", {"ProfileList": [{"PayloadIdentifier": marker}]}),
                   u_err: ("Error", {"ErrorChain": chain}),
                   u_notnow: ("NotNow", {})}
        cmd, seen = d.idle(), []
        while cmd is not None:
            seen.append(cmd["CommandUUID"])
            ok(cmd["CommandUUID"] in answers and len(seen) <= 3, "unexpected command %r" % cmd)
            st, keys = answers[cmd["CommandUUID"]]
            cmd = d.report(cmd["CommandUUID"], st, **keys)
        eq(seen, [u_ack, u_err, u_notnow], "commands handed out in order")

        # Every audit event (as GET /api/v1/audit lists them) and the three results arrive.
        want_results = [(u_ack, "Acknowledged"), (u_err, "Error"), (u_notnow, "NotNow")]

        def complete(reqs):
            bodies = delivered(reqs)
            got = [(b["data"].get("command_uuid"), b["data"].get("status")) for b in bodies
                   if b.get("type") == "command.result"]
            types = {b.get("type") for b in bodies}
            return (all(w in got for w in want_results) and "enrollment.authenticate" in types
                    and "enrollment.complete" in types)

        rx.wait(complete, 20, "enrollment.* events and three command.result events")
        ev = audit(s)
        want_audit = collections.Counter((e["action"], e["actor"], e["target"], e["detail"]) for e in ev)

        def audit_events(reqs):
            return collections.Counter(
                (b["type"], b["data"].get("actor"), b["data"].get("target"), b["data"].get("detail"))
                for b in delivered(reqs) if b.get("type") != "command.result")

        rx.wait(lambda reqs: audit_events(reqs) == want_audit, 10, "one event per audit entry: %r" % want_audit)
        time.sleep(0.5)  # anything else in flight arrives now
        reqs = rx.requests()
        eq(audit_events(reqs), want_audit, "audit events delivered (type, actor, target, detail) vs GET /audit")

        # Each request, in arrival order.
        now = time.time()
        bodies = [check_request(r, secret, [now], "request %d (%s)" % (i, describe(r))) for i, r in enumerate(reqs)]
        ok(all(r["status"] == 200 for r in reqs), "every request was answered 200, so none is sent twice")
        ids = [b["id"] for b in bodies]
        eq(len(set(ids)), len(ids), "no id delivered twice: %r" % ids)
        eq(ids, sorted(ids), "ids increase in arrival order (events in the order they happened)")
        for b in bodies:
            created = parse_created_at(b["created_at"], "event %d" % b["id"])
            ok(t_start - 2 <= created <= now + 2, "event %d: created_at %s is not during the test"
               % (b["id"], b["created_at"]))
        types = [b["type"] for b in bodies]
        ok(types.index("enrollment.authenticate") < types.index("enrollment.complete"), "enrollment order: %r" % types)
        for b in bodies:
            if b["type"].startswith("enrollment."):
                eq(b["data"].get("target"), d.enrollment_id, "%s: target is the enrollment id" % b["type"])
                eq(b["data"].get("actor"), "device", "%s: actor" % b["type"])
        results = [b for b in bodies if b["type"] == "command.result"
                   and not b["data"].get("command_uuid", "").startswith(sim.INVENTORY_PREFIX)]  # not the inventory's
        eq([(b["data"].get("command_uuid"), b["data"].get("status")) for b in results], want_results,
           "command.result events, in the order the device reported")
        for b in results:
            eq(b["data"].get("enrollment_id"), d.enrollment_id, "command.result enrollment_id")
            ok(types.index("enrollment.complete") < types.index("command.result"), "results after the enrollment")
        eq(len({r["conn"] for r in reqs}), 1, "all events over one kept-alive connection (client ports %r)"
           % sorted({r["conn"] for r in reqs}))

        # Identifiers, never secrets, and no command result bodies.
        tok = d.push_token
        forbidden = {"push token (hex)": tok.hex(), "push token (HEX)": tok.hex().upper(),
                     "push token (base64)": base64.b64encode(tok).decode(), "PushMagic": d.push_magic,
                     "password": ALICE[2], "API key": s.api_key, "webhook secret": secret,
                     "command result body": marker}
        for i, t in enumerate(d.tokens or [d.token]):
            if t:
                forbidden["access token %d" % i] = t
        if d.scep_challenge:
            forbidden["SCEP challenge"] = d.scep_challenge
        for r in reqs:
            text = r["body"].decode("utf-8", "replace") + "".join("%s: %s\n" % kv for kv in r["headers"].items())
            for name, value in forbidden.items():
                ok(value not in text, "an event carries the %s: %s" % (name, describe(r)))
        ok(secret not in log_without_harness_lines(s), "the webhook secret is in the server log")
    finally:
        eq(s.stop(), 0, "graceful stop")
        rx.stop()


@test
def a_failed_delivery_is_retried_with_backoff_and_delivered_once():
    s = Server(name="wh-retry", env={"ORCHARD_DEBUG_CLOCK": "true"})
    rx = Receiver(s).start()
    # The first.test event fails twice (backoff 10 s, then 1 min), then is delivered.
    rx.answer(lambda b: (b.get("data") or {}).get("target") == "first.test", [500, 500])
    secret = new_secret()
    s.start(env=webhook_env(rx.url, secret, s))
    try:
        put_domain(s, "first.test")
        first = rx.wait(lambda reqs: of_type(reqs, "domain.put", target="first.test"), 15,
                        "the first.test event")[0]
        eq(first["status"], 500, "first attempt answered 500")
        fb = check_request(first, secret, [time.time(), server_clock(s)])
        fid = fb["id"]

        # Later events do not wait for the failed one.
        put_domain(s, "second.test")
        second = rx.wait(lambda reqs: of_type(reqs, "domain.put", target="second.test"), 10,
                         "the second.test event while the first waits for its retry")[0]
        eq(second["status"], 200, "second event answered 200")
        sb = check_request(second, secret, [time.time(), server_clock(s)])
        ok(sb["id"] > fid, "ids increase: %d then %d" % (fid, sb["id"]))
        quiet(rx, same_id(fid), 1, max(2.0 - (time.time() - first["at"]), 0.5), "no retry before the 10 s backoff")
        wait_metrics(s, lambda m: m.get(PENDING) == 1, "%s == 1 (the failed event)" % PENDING)

        def attempts(n):
            return rx.wait(lambda reqs: [r for r in reqs if same_id(fid)(r)][n - 1:], 10,
                           "attempt %d of event %d" % (n, fid))[0]

        s.advance_clock(15)  # 10 s +-20 %: due
        retry = attempts(2)
        eq(retry["status"], 500, "second attempt answered 500")
        eq(check_request(retry, secret, [time.time(), server_clock(s)]), fb,
           "the retry carries the same event (id, type, created_at, data)")
        ok(retry["at"] > second["at"], "the retry came after the later event")
        quiet(rx, same_id(fid), 2, 2.0, "no immediate retry after the second 500")
        s.advance_clock(30)  # next backoff is 1 min +-20 % (at least 48 s): not yet
        quiet(rx, same_id(fid), 2, 1.5, "30 s after the second attempt")
        s.advance_clock(45)  # 75 s: due
        third = attempts(3)
        eq(third["status"], 200, "third attempt answered 200")
        eq(check_request(third, secret, [time.time(), server_clock(s)]), fb, "the third attempt: the same event")

        s.advance_clock(3600)  # a delivered event is gone: nothing more even when a retry would be due
        quiet(rx, same_id(fid), 3, 2.0, "event %d after its delivery" % fid)
        m = wait_metrics(s, lambda m: m.get(PENDING) == 0, "%s == 0" % PENDING)
        eq(m.get(RETRY), 2, RETRY)
        ok_ids = {body_of(r)["id"] for r in rx.requests() if r["status"] == 200}
        m = wait_metrics(s, lambda m: m.get(DELIVERED) == len(ok_ids), "%s == %d" % (DELIVERED, len(ok_ids)))
        eq(m.get(DROPPED, 0), 0, DROPPED)
        ids = [body_of(r)["id"] for r in rx.requests()]
        eq(collections.Counter(ids) - collections.Counter(set(ids)), collections.Counter({fid: 2}),
           "only event %d was sent more than once: %r" % (fid, ids))
        ok(secret not in log_without_harness_lines(s), "the webhook secret is in the server log")
    finally:
        eq(s.stop(), 0, "graceful stop")
        rx.stop()


@test
def events_survive_a_receiver_outage_and_a_restart():
    s = Server(name="wh-outage", env={"ORCHARD_DEBUG_CLOCK": "true"})
    port = orchard.free_port()  # nothing listens there yet: connections are refused
    secret = new_secret()
    rx = Receiver(s, port=port)
    s.start(env=webhook_env("https://127.0.0.1:%d%s" % (port, HOOK_PATH), secret, s))
    try:
        for name in ("a.test", "b.test", "c.test"):
            put_domain(s, name)
        want = collections.Counter((e["action"], e["target"]) for e in audit(s))
        ok(want[("domain.put", "c.test")] == 1, "the audit log has the events: %r" % want)
        n = sum(want.values())
        # The delivery thread has tried and failed; all wait in the table.
        wait_metrics(s, lambda m: m.get(RETRY, 0) >= 1 and m.get(PENDING) == n,
                     "a failed attempt and %s == %d" % (PENDING, n))
        eq(s.stop(), 0, "graceful stop with undelivered events")

        rx.start()
        s.start()

        def all_there(reqs):
            got = collections.Counter((b.get("type"), (b.get("data") or {}).get("target")) for b in delivered(reqs))
            return all(got[k] >= c for k, c in want.items())

        for step in (0, 15, 60, 60, 60, 60, 60):  # backoff 10 s, 1 min, ...; the clock restarted at real time
            if step:
                s.advance_clock(step)
            try:
                rx.wait(all_there, 5 if step else 3, "every event recorded before the restart")
                break
            except AssertionError:
                pass  # not yet: move the clock further
        rx.wait(all_there, 1, "every event recorded before the restart")
        quiet(rx, lambda r: True, len(rx.requests()), 2.0, "after all were delivered")
        reqs = rx.requests()
        clocks = [time.time(), server_clock(s)]
        bodies = [check_request(r, secret, clocks) for r in reqs]
        ok(all(r["status"] == 200 for r in reqs), "all answered 200")
        ids = [b["id"] for b in bodies]
        eq(len(set(ids)), len(ids), "each event delivered exactly once: ids %r" % ids)
        got = collections.Counter((b["type"], b["data"].get("target")) for b in bodies)
        eq(got, want, "the events delivered after the outage and restart")
        wait_metrics(s, lambda m: m.get(PENDING) == 0, "%s == 0" % PENDING)
    finally:
        eq(s.stop(), 0, "graceful stop")
        rx.stop()


@test
def a_push_token_apns_declares_dead_is_an_event():
    from apns import Stub
    s = Server(name="wh-dead")
    s.add_user(*ALICE)
    rx = Receiver(s).start()
    st = Stub(s)
    secret = new_secret()
    env = webhook_env(rx.url, secret, s)
    env.update({"ORCHARD_APNS_URL": st.url, "ORCHARD_APNS_CA_FILE": s.ca_file})
    s.start(env=env)
    try:
        d = enrolled(s)
        st.script(tokens={d.push_token.hex(): [{"status": 410, "reason": "Unregistered"}]})
        enqueue(s, d)  # its push is answered 410
        got = rx.wait(lambda reqs: of_type(reqs, "push.token_dead", enrollment_id=d.enrollment_id),
                      what="a push.token_dead event")
        eq(body_of(got[0])["data"], {"enrollment_id": d.enrollment_id, "reason": "Unregistered"}, "event data")
        check_request(got[0], secret, [time.time()], "push.token_dead")
        ok(d.push_token.hex() not in got[0]["body"].decode(), "the token itself is not sent")
    finally:
        s.stop()


def start_expecting_refusal(s, env, timeout=20):
    """Starts `orchard serve`, which must exit on its own; returns (exit code, its output)."""
    before = len(s.log_text())
    s.start(env=env, wait=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and s.proc.poll() is None:
        time.sleep(0.1)
    running = s.proc.poll() is None
    s.stop()
    out = s.log_text()[before:]
    out = "\n".join(l for l in out.splitlines() if not l.startswith("===="))
    ok(not running, "orchard serve with %r is still running after %ds:\n%s" % (env, timeout, out[-2000:]))
    return s.proc.returncode, out


@test
def serve_refuses_a_missing_or_short_secret_and_plain_http_to_a_remote_host():
    s = Server(name="wh-config")
    ca = s.ca_file
    cases = [
        ("no secret", {"ORCHARD_WEBHOOK_URL": "https://127.0.0.1:9/hook", "ORCHARD_WEBHOOK_SECRET": None},
         "webhook_secret", None),
        ("a 10-character secret", {"ORCHARD_WEBHOOK_URL": "https://127.0.0.1:9/hook",
                                   "ORCHARD_WEBHOOK_SECRET": "sh0rtS3crt"}, "webhook_secret", "sh0rtS3crt"),
        ("a 15-character secret", {"ORCHARD_WEBHOOK_URL": "https://127.0.0.1:9/hook",
                                   "ORCHARD_WEBHOOK_SECRET": "fift33nCharSecr"}, "webhook_secret", "fift33nCharSecr"),
        ("plain http to a remote host", {"ORCHARD_WEBHOOK_URL": "http://192.0.2.1/hook",
                                         "ORCHARD_WEBHOOK_SECRET": new_secret()}, "webhook_url", None),
    ]
    for what, env, key, leaked in cases:
        env = dict(env, ORCHARD_WEBHOOK_CA_FILE=ca)
        rc, out = start_expecting_refusal(s, env)
        ok(rc != 0, "%s: exit code %r, expected non-zero" % (what, rc))
        ok(key in out, "%s: the message does not name %s:\n%s" % (what, key, out[-2000:]))
        if leaked:
            ok(leaked not in out, "%s: the secret is in the output" % what)
    # The limits: 16 characters, and plain http to loopback, are accepted.
    good = "sixteen-chars-ok"
    eq(len(good), 16, "test secret length")
    for url in ("https://127.0.0.1:9/hook", "http://127.0.0.1:9/hook"):
        s.start(env={"ORCHARD_WEBHOOK_URL": url, "ORCHARD_WEBHOOK_SECRET": good, "ORCHARD_WEBHOOK_CA_FILE": ca})
        eq(s.stop(), 0, "serve with %s and a 16-character secret starts and stops cleanly" % url)
    ok(good not in log_without_harness_lines(s), "the webhook secret is in the server log")


@test
def without_a_webhook_url_nothing_is_recorded():
    s = Server(name="wh-off")
    rx = Receiver(s).start()
    s.start()
    try:
        put_domain(s, "before.test")
        ok(len(audit(s)) >= 1, "the action was audited")
        m = metrics(s)
        ok(m.get(PENDING, 0) == 0, "%s: %r, expected 0 or absent" % (PENDING, m.get(PENDING)))
        ok(all(v == 0 for k, v in m.items() if k.startswith("orchard_webhook_deliveries_total")),
           "deliveries without a webhook_url: %r" % {k: v for k, v in m.items() if "webhook" in k})
        eq(s.stop(), 0, "graceful stop")
        db = sqlite3.connect(s.path("orchard.db"), timeout=10)
        try:
            has = db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'webhook_events'").fetchone()[0]
            if has:
                eq(db.execute("SELECT count(*) FROM webhook_events").fetchone()[0], 0, "rows in webhook_events")
        finally:
            db.close()

        # Turning webhooks on later does not deliver what happened while they were off.
        secret = new_secret()
        s.start(env=webhook_env(rx.url, secret, s))
        put_domain(s, "after.test")
        rx.wait(lambda reqs: of_type(reqs, "domain.put", target="after.test"), 15, "the event after turning it on")
        quiet(rx, lambda r: True, 1, 1.5, "only the event that happened while webhook_url was set")
        check_request(rx.requests()[0], secret, [time.time()])
        eq(of_type(rx.requests(), "domain.put", target="before.test"), [], "the event from before")
    finally:
        eq(s.stop(), 0, "graceful stop")
        rx.stop()


if __name__ == "__main__":
    orchard.main()
