#!/usr/bin/python3
"""
Issue 13, the HTTP trust boundary (docs/HTTP.md), over real TLS against `orchard serve`:

- routing and authorization happen before a body is read: an unknown route, a body beyond the
  route's limit, a missing API key or a device request without any identity are answered from
  the headers alone, and 20 clients pushing 4 MiB at an unknown route leave memory near idle;
- deadlines: a slow TLS handshake, slowly trickled headers and a trickled body are cut off;
- a per-address connection limit that another address does not feel, and trusted proxies are
  exempt from it; beyond capacity a quick 503 with Retry-After;
- TLS 1.0 and 1.1 are refused, as are non-AEAD suites; TLS 1.2 and 1.3 work;
- proxy identity: only the configured certificate header counts (a victim's public certificate
  in another header gets nothing), a repeated one is refused, repeated X-Forwarded-For lines
  are one list, and repeated Authorization / Mdm-Signature lines are refused.

Raw sockets are used where http.client would hide what the server did (answer before the body,
close a connection, repeat a header).
"""
import base64
import http.client
import os
import plistlib
import re
import select
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "sim"))
import device as sim  # noqa: E402
import pki  # noqa: E402
from orchard import Server, eq, log, ok, status, test  # noqa: E402

ALICE = ("alice@example.com", "alice@appleid.example.com", "alice-Pa55word!")
MIB = 1024 * 1024
# What "at once" means here: the answer comes while the client has sent nothing of the body
# (a sanitizer build on a shared machine answers in well under this).
AT_ONCE = 3.0
_servers = {}


def server(name, **env):
    """One server per configuration, started on first use and shared by the tests."""
    if name not in _servers:
        s = Server(name=name, env={k: str(v) for k, v in env.items()})
        s.add_user(*ALICE)
        s.start()
        _servers[name] = s
    return _servers[name]


def plain():
    return server("limits")


# --- raw HTTP over TLS -------------------------------------------------------------------------

def connect(s, src="127.0.0.1", ctx=None, timeout=10):
    raw = socket.create_connection(("127.0.0.1", s.port), timeout=timeout, source_address=(src, 0))
    try:
        return (ctx or s.ctx()).wrap_socket(raw, server_hostname="127.0.0.1")
    except BaseException:
        raw.close()
        raise


def head(method, path, headers=()):
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: 127.0.0.1"] + ["%s: %s" % h for h in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(sock, timeout=10):
    """(status, {lowercase name: value}, body) of one response; None if the connection ended
    first. A timeout raises: the server kept the client waiting."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            raise AssertionError("no response within %.0fs (the server is waiting for more)" % timeout)
        except (ssl.SSLError, ConnectionError):
            return None
        if not chunk:
            return None
        data += chunk
    top, _, rest = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    n = int(hdrs.get("content-length", "0"))
    while len(rest) < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(lines[0].split()[1]), hdrs, rest


def answered_from_headers(s, method, path, headers, expect, what):
    """Sends only the request line and headers (the body is declared, never sent) and expects
    `expect` at once."""
    with connect(s) as c:
        t0 = time.monotonic()
        c.sendall(head(method, path, headers))
        r = read_response(c, timeout=15)
        took = time.monotonic() - t0
    ok(r is not None, "%s: connection closed without an answer" % what)
    eq(r[0], expect, what)
    ok(took < AT_ONCE, "%s: answered after %.1fs, not at once" % (what, took))
    return r


def raw_request(s, method, path, headers, body=b""):
    """A request whose headers may repeat (a list of (name, value)); returns (status, body)."""
    c = http.client.HTTPSConnection("127.0.0.1", s.port, context=s.ctx(), timeout=30)
    try:
        c.putrequest(method, path, skip_accept_encoding=True)
        for k, v in headers:
            c.putheader(k, v)
        c.putheader("Content-Length", str(len(body)))
        c.endheaders(body)
        r = c.getresponse()
        return r.status, r.read(), r.headers
    finally:
        c.close()


def closed_within(sock, limit, feed=None, step=0.3):
    """Seconds until the server ends the connection, feeding it one piece from `feed` every
    `step` seconds; None if it is still open after `limit` seconds."""
    t0 = time.monotonic()
    sock.setblocking(False)
    while time.monotonic() - t0 < limit:
        readable, _, _ = select.select([sock], [], [], step)
        if readable:
            try:
                if sock.recv(4096) == b"":
                    return time.monotonic() - t0
            except (ssl.SSLWantReadError, BlockingIOError):
                pass
            except (OSError, ssl.SSLError):
                return time.monotonic() - t0
        if feed is not None:
            try:
                sock.send(next(feed))
            except (ssl.SSLWantWriteError, BlockingIOError):
                pass
            except (OSError, ssl.SSLError):
                return time.monotonic() - t0
    return None


def vm_rss(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS for %d" % pid)


# --- 1. route and authorize before the body ------------------------------------------------------

@test
def unknown_route_with_a_4_MiB_declared_body_is_404_before_the_body():
    s = plain()
    answered_from_headers(s, "PUT", "/no/such/route", [("Content-Length", 4 * MIB)], 404,
                          "PUT of 4 MiB to an unknown route")
    answered_from_headers(s, "DELETE", "/healthz", [("Content-Length", 4 * MIB)], 405,
                          "DELETE of 4 MiB to a GET-only route")


@test
def twenty_clients_pushing_4_MiB_at_an_unknown_route_leave_memory_near_idle():
    # The reproduction: bodies were buffered before routing, 20 x 4 MiB held ~83 MB. (Under
    # AddressSanitizer, its quarantine keeps every freed block, so each new connection would
    # show up in RSS whatever the server does with bodies: this server runs without it.)
    asan = ":".join(o for o in [os.environ.get("ASAN_OPTIONS", ""), "quarantine_size_mb=0"] if o)
    s = server("memory", ASAN_OPTIONS=asan)
    body = b"x" * (4 * MIB - 1)  # all but the last byte: the server would wait for it
    socks, errors = [], []

    def push(size, data):
        try:
            c = connect(s)
            socks.append(c)
            c.sendall(head("PUT", "/no/such/route", [("Content-Length", size)]))
            c.sendall(data)
        except (OSError, ssl.SSLError) as e:  # closed on us once answered: fine
            errors.append(e)

    def twenty(size, data):
        threads = [threading.Thread(target=push, args=(size, data)) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)

    # Warm up the same way with tiny bodies (worker threads, TLS sessions, allocator arenas),
    # so that what is measured is the bodies.
    twenty(10, b"x" * 10)
    for c in socks:
        c.close()
    del socks[:]
    time.sleep(0.5)
    base = vm_rss(s.proc.pid)
    twenty(4 * MIB, body)
    grown = vm_rss(s.proc.pid) - base
    for c in socks:
        c.close()
    log("  RSS growth with 20 x 4 MiB at an unknown route: %.1f MiB" % (grown / MIB))
    ok(grown < 16 * MIB, "server RSS grew by %.1f MiB while 20 clients pushed 4 MiB each at an "
                         "unknown route (bodies must not be buffered)" % (grown / MIB))
    status(s.get("/healthz"), 200, "the server is still fine")


@test
def a_body_beyond_the_routes_own_limit_is_413_before_the_body():
    s = plain()
    answered_from_headers(s, "PUT", "/mdm/connect", [("Mdm-Signature", "x"), ("Content-Length", MIB)], 413,
                          "1 MiB to /mdm/connect (limit 512 KiB)")
    answered_from_headers(s, "PUT", "/mdm/checkin", [("Mdm-Signature", "x"), ("Content-Length", 300 * 1024)],
                          413, "300 KiB to /mdm/checkin (limit 256 KiB)")
    answered_from_headers(s, "POST", "/auth/signin", [("Content-Length", 100000)], 413,
                          "100 KB sign-in form")
    answered_from_headers(s, "GET", "/healthz", [("Content-Length", 10)], 413, "a GET with a body")
    # A chunked body has no declared size: it is cut at the limit and never reaches the handler
    # (which would answer 400/403 to this junk).
    chunks = b"".join(b"400\r\n" + b"y" * 1024 + b"\r\n" for _ in range(300)) + b"0\r\n\r\n"
    with connect(s) as c:
        c.sendall(head("PUT", "/mdm/checkin", [("Mdm-Signature", "x"), ("Transfer-Encoding", "chunked")]))
        c.sendall(chunks)
        r = read_response(c)
    ok(r is None or r[0] == 413, "300 KiB chunked check-in: expected 413 or a closed connection, got %r"
       % (r and r[:2],))


@test
def api_key_and_device_identity_are_checked_before_the_body():
    s = plain()
    r = answered_from_headers(s, "POST", "/api/v1/profiles", [("Content-Length", 3 * MIB)], 401,
                              "3 MiB profile upload without an API key")
    ok("bearer" in r[1].get("www-authenticate", "").lower(), "401 carries WWW-Authenticate: %r" % (r[1],))
    answered_from_headers(s, "POST", "/api/v1/enrollments/X/commands",
                          [("Authorization", "Bearer not-a-key"), ("Content-Length", 2 * MIB)], 401,
                          "2 MiB command with a wrong API key")
    answered_from_headers(s, "PUT", "/mdm/connect", [("Content-Length", 200000)], 403,
                          "connect with no Mdm-Signature, no client certificate")
    answered_from_headers(s, "PUT", "/mdm/checkin", [("Content-Length", 200000)], 403,
                          "check-in with no Mdm-Signature, no client certificate")
    # The key still works, and /healthz needs none.
    status(s.api("GET", "/api/v1/enrollments"), 200, "with the key")
    status(s.get("/healthz"), 200, "healthz")


# --- 2. deadlines --------------------------------------------------------------------------------

def slow():
    return server("slow", ORCHARD_HTTP_HEADER_TIMEOUT=3, ORCHARD_HTTP_BODY_TIMEOUT=3)


@test
def a_trickled_body_is_cut_off_at_the_body_deadline():
    s = slow()
    with connect(s) as c:
        c.sendall(head("PUT", "/mdm/connect", [("Mdm-Signature", "x"), ("Content-Length", 100000)]))
        took = closed_within(c, 12, feed=iter(lambda: b"y", None))
    ok(took is not None, "a body trickled one byte every 0.3s was still being read after 12s "
                         "(http_body_timeout=3s)")
    ok(took < 6, "the trickled body was cut off after %.1fs (http_body_timeout=3s)" % took)
    status(s.get("/healthz"), 200, "the server is still fine")


@test
def trickled_headers_and_a_silent_tls_handshake_are_cut_off_at_the_header_deadline():
    s = slow()
    with connect(s) as c:
        c.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        took = closed_within(c, 12, feed=iter(lambda: b"a", None))
    ok(took is not None and took < 6,
       "headers trickled one byte every 0.3s: cut off after %r s (http_header_timeout=3s)" % took)
    raw = socket.create_connection(("127.0.0.1", s.port), timeout=10)  # no TLS handshake at all
    try:
        took = closed_within(raw, 12)
    finally:
        raw.close()
    ok(took is not None and took < 6, "a connection that never starts TLS: closed after %r s" % took)
    # A keep-alive connection left idle after a request ends like one that never asked.
    with connect(s) as c:
        c.sendall(head("GET", "/healthz"))
        eq(read_response(c)[0], 200, "first request on the connection")
        took = closed_within(c, 12)
    ok(took is not None and took < 6, "an idle keep-alive connection: closed after %r s" % took)


# --- 2b. connection limits -----------------------------------------------------------------------

def held(s, src, n):
    """n open TLS connections from src, handshake done, nothing asked."""
    return [connect(s, src=src) for _ in range(n)]


def refused(s, src):
    """True if a new connection from src is refused (closed before or at its first request)."""
    try:
        with connect(s, src=src, timeout=5) as c:
            c.sendall(head("GET", "/healthz"))
            r = read_response(c, timeout=5)
            return r is None
    except (OSError, ssl.SSLError):
        return True


@test
def many_connections_from_one_address_hit_its_limit_while_other_addresses_get_in():
    s = server("peraddr", ORCHARD_HTTP_MAX_CONNECTIONS_PER_ADDRESS=5, ORCHARD_TRUSTED_PROXIES="127.0.0.4")
    conns = held(s, "127.0.0.2", 5)
    try:
        ok(refused(s, "127.0.0.2"), "a 6th connection from 127.0.0.2 (limit 5) must be refused")
        with connect(s, src="127.0.0.3") as c:
            c.sendall(head("GET", "/healthz"))
            r = read_response(c)
        ok(r is not None and r[0] == 200, "127.0.0.3 is not limited by 127.0.0.2's connections: %r" % (r,))
        # A trusted proxy carries every device behind it: it is not limited per address.
        proxy = held(s, "127.0.0.4", 8)
        try:
            with connect(s, src="127.0.0.4") as c:
                c.sendall(head("GET", "/healthz"))
                r = read_response(c)
            ok(r is not None and r[0] == 200, "the 9th connection of a trusted proxy: %r" % (r,))
        finally:
            for c in proxy:
                c.close()
    finally:
        for c in conns:
            c.close()
    deadline = time.monotonic() + 10
    while refused(s, "127.0.0.2"):
        ok(time.monotonic() < deadline, "127.0.0.2 gets in again once its connections closed")
        time.sleep(0.2)


@test
def beyond_capacity_a_request_gets_503_with_retry_after():
    s = server("capacity", ORCHARD_HTTP_MAX_CONNECTIONS=4)
    conns = held(s, "127.0.0.5", 4)
    try:
        with connect(s, src="127.0.0.6") as c:
            t0 = time.monotonic()
            c.sendall(head("GET", "/healthz"))
            r = read_response(c)
            took = time.monotonic() - t0
        ok(r is not None, "the 5th connection (capacity 4) was closed without an answer")
        eq(r[0], 503, "a request beyond capacity")
        ok(r[1].get("retry-after", "").isdigit(), "503 carries Retry-After: %r" % (r[1],))
        eq(r[1].get("connection", "").lower(), "close", "503 closes its connection")
        ok(took < AT_ONCE, "the 503 came after %.1fs" % took)
    finally:
        for c in conns:
            c.close()
    deadline = time.monotonic() + 10
    while s.get("/healthz").status != 200:
        ok(time.monotonic() < deadline, "below capacity again, /healthz answers 200")
        time.sleep(0.2)


# --- 4. TLS versions and suites ------------------------------------------------------------------

# The ServerHello.random that marks a HelloRetryRequest (RFC 8446 4.1.3), less its first 4
# bytes, which `openssl s_client -trace` prints apart (as gmt_unix_time).
HRR_RANDOM = "E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C"


def tls_context(version, ciphers=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = version
    # OpenSSL 3 refuses TLS 1.0/1.1 itself above security level 0: let the client offer them,
    # so that only the server decides.
    ctx.set_ciphers(ciphers or "DEFAULT:@SECLEVEL=0")
    return ctx


def handshake(s, ctx):
    """(protocol, cipher) negotiated, or None if the server refused the handshake."""
    try:
        with connect(s, ctx=ctx) as c:
            return c.version(), c.cipher()[0]
    except (ssl.SSLError, OSError):
        return None


@test
def tls_1_0_and_1_1_are_refused_and_tls_1_2_and_1_3_work():
    s = plain()
    for v in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        eq(handshake(s, tls_context(v)), None, "a %s handshake" % v.name)
    r = handshake(s, tls_context(ssl.TLSVersion.TLSv1_3))
    ok(r is not None and r[0] == "TLSv1.3", "TLS 1.3 handshake: %r" % (r,))
    r = handshake(s, tls_context(ssl.TLSVersion.TLSv1_2))
    ok(r is not None and r[0] == "TLSv1.2", "TLS 1.2 handshake: %r" % (r,))
    ok(r[1].startswith("ECDHE-") and ("GCM" in r[1] or "CHACHA20" in r[1]),
       "TLS 1.2 negotiates ECDHE with an AEAD cipher, got %s" % r[1])
    # CBC suites and static RSA key exchange are gone from TLS 1.2.
    for suite in ("ECDHE-RSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA",
                  "AES128-GCM-SHA256:AES256-GCM-SHA384"):
        eq(handshake(s, tls_context(ssl.TLSVersion.TLSv1_2, suite + ":@SECLEVEL=0")), None,
           "TLS 1.2 offering only %s" % suite)
    # The ordinary clients of the test suite (Python's defaults) still work.
    status(s.get("/healthz"), 200, "default client")
    # X25519 is the server's first group: a client that sends an X25519 key share (OpenSSL,
    # Chromium, Apple's stacks) gets no HelloRetryRequest, i.e. no extra round trip.
    if shutil.which("openssl"):
        p = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % s.port, "-tls1_3", "-trace",
                            "-groups", "X25519:P-256"], input=b"", capture_output=True, timeout=30)
        out = p.stdout.decode("latin-1")
        ok("TLSv1.3" in out or "TLS 1.3" in out, "openssl s_client TLS 1.3 handshake:\n" + out[-2000:])
        ok(HRR_RANDOM not in out.replace(" ", "").upper(), "the server asked the client for another key share "
           "(HelloRetryRequest) although it offered X25519")


# --- 5. proxy identity ---------------------------------------------------------------------------

def proxied():
    return server("proxied", ORCHARD_TRUSTED_PROXIES="127.0.0.1", ORCHARD_PROXY_CERT_HEADER="X-SSL-Client-Cert")


def enrolled_mac(s):
    """A Mac user enrollment: its device channel carries no bearer token (PROTOCOL.md 7.1), so
    its certificate is all that stands between a stranger and its commands."""
    d = sim.Device(s.url, ALICE[0], ALICE[2], ca_file=s.ca_file, signing_ca=s.path("signing", "ca.pem"),
                   workdir=tempfile.mkdtemp(prefix="dev-", dir=s.tmp), auto_reauth=False,
                   product="MacBookPro18,3", os_version="15.2", build_version="24C101")
    return d.run_enrollment()


def enqueue(s, d, request_type="ProfileList"):
    r = s.api("POST", "/api/v1/enrollments/%s/commands" % d.enrollment_id, {"request_type": request_type})
    status(r, 201, "enqueue " + request_type)
    return r.json()["command_uuid"]


def idle_body(d):
    return plistlib.dumps({"Status": "Idle", "EnrollmentID": d.enrollment_id})


def rfc9440(cert):
    return ":" + base64.b64encode(pki.cert_der(cert)).decode() + ":"


@test
def a_client_supplied_certificate_header_other_than_the_configured_one_gets_nothing():
    # The reproduction: with trusted_proxies set, a stranger put the victim's *public*
    # certificate in Client-Cert (the proxy set X-SSL-Client-Cert) and got the victim's command.
    s = proxied()
    victim = enrolled_mac(s)
    u = enqueue(s, victim)
    for name, value in (("Client-Cert", rfc9440(victim.cert)), ("X-Client-Cert", rfc9440(victim.cert)),
                        ("Ssl-Client-Cert", rfc9440(victim.cert))):
        r = victim.connect(idle_body(victim), token=None, signature=None, client_cert=None,
                           extra_headers={name: value})
        ok(r.status in (401, 403), "a stranger with the victim's certificate in %s: %d" % (name, r.status), r)
        ok(u.encode() not in r.body, "the victim's command was handed out through %s" % name, r)
    cmd = victim.idle()
    ok(cmd is not None and cmd["CommandUUID"] == u, "the victim still gets its own command: %r" % (cmd,))


@test
def the_configured_certificate_header_works_in_both_encodings_and_only_once():
    s = proxied()
    d = enrolled_mac(s)
    for value, what in ((rfc9440(d.cert), "RFC 9440 :base64-DER:"),
                        (urllib.parse.quote(open(d.cert_path).read()), "URL-escaped PEM")):
        r = d.connect(idle_body(d), token=None, signature=None, client_cert=None,
                      extra_headers={"X-SSL-Client-Cert": value})
        status(r, 200, "the device's certificate from the proxy, " + what)
    u = enqueue(s, d)
    pem = urllib.parse.quote(open(d.cert_path).read())
    for first, second in ((pem, pem), (pem, rfc9440(d.cert)), ("junk", pem)):
        st, body, _ = raw_request(s, "PUT", "/mdm/connect",
                                  [("X-SSL-Client-Cert", first), ("X-SSL-Client-Cert", second),
                                   ("Content-Type", "application/x-apple-aspen-mdm")], idle_body(d))
        eq(st, 403, "the configured certificate header twice")
        ok(u.encode() not in body, "no command for a repeated certificate header")


@test
def repeated_x_forwarded_for_lines_are_read_as_one_list():
    s = proxied()
    for lines, client in ((["203.0.113.9", "198.51.100.7"], "198.51.100.7"),
                          (["203.0.113.9, 198.51.100.8"], "198.51.100.8"),
                          (["203.0.113.9", "198.51.100.9, 127.0.0.1"], "198.51.100.9")):
        st, _, hdrs = raw_request(s, "GET", "/healthz", [("X-Forwarded-For", v) for v in lines])
        eq(st, 200, "healthz through the proxy")
        rid = hdrs.get("X-Request-Id")
        line = [l for l in s.log_text().splitlines() if "event=http " in l and "rid=%s " % rid in l]
        ok(line, "access log line for %s" % rid)
        m = re.search(r" client=(\S+)", line[0])
        eq(m and m.group(1), client, "client address from X-Forwarded-For lines %r" % lines)


@test
def repeated_authorization_or_mdm_signature_lines_are_400():
    s = proxied()
    key = "Bearer " + s.api_key
    for values in ((key, "Bearer junk"), ("Bearer junk", key), (key, key)):
        st, _, _ = raw_request(s, "GET", "/api/v1/enrollments", [("Authorization", v) for v in values])
        eq(st, 400, "Authorization lines %r" % (tuple(v[:12] for v in values),))
    d = enrolled_mac(s)
    u = enqueue(s, d)
    body = idle_body(d)
    sig = d.sign(body)
    hdrs = [("Authorization", "Bearer " + d.token), ("Content-Type", "application/x-apple-aspen-mdm")]
    for sigs in ((sig, sig), (sig, "AAAA")):
        st, out, _ = raw_request(s, "PUT", "/mdm/connect", hdrs + [("Mdm-Signature", v) for v in sigs], body)
        eq(st, 400, "two Mdm-Signature lines")
        ok(u.encode() not in out, "no command for a request with two signatures")
    cmd = d.idle()
    ok(cmd is not None and cmd["CommandUUID"] == u, "one signature works: %r" % (cmd,))


if __name__ == "__main__":
    from orchard import main
    main()
