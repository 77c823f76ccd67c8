#!/usr/bin/python3
"""
Issue 2 (foundation) against the real binary: `orchard init` / `user add` / `apikey create` /
`config show`, and a live `orchard serve` on a free loopback port: healthz, metrics, 404/405/413,
request ids, access log, graceful SIGTERM/SIGINT.
"""
import glob
import hashlib
import os
import re
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import orchard  # noqa: E402
import pki  # noqa: E402
from orchard import Server, eq, ok, status, status_4xx, test  # noqa: E402

_srv = None


def srv():
    """The shared server: max_body at its minimum (4096) for the 413 tests."""
    global _srv
    if _srv is None:
        _srv = Server(env={"ORCHARD_MAX_BODY": "4096"}, name="foundation")
        _srv.start()
    return _srv


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def db_bytes(s):
    """Every byte of the SQLite database including WAL/SHM files."""
    out = b""
    for p in glob.glob(s.path("orchard.db*")):
        with open(p, "rb") as f:
            out += f.read()
    return out


def combined(p):
    return (p.stdout or "") + (p.stderr or "")


def config_lines(text):
    d = {}
    for line in text.splitlines():
        m = re.match(r"^\s*([a-z0-9_]+)\s*=\s?(.*?)\s*$", line)
        if m:
            d[m.group(1)] = m.group(2)
    return d


# --- init ----------------------------------------------------------------------------------------

@test
def init_creates_config_database_and_identities():
    s = Server(name="init")
    for rel in ("orchard.conf", "orchard.db", "tls/ca.pem", "scep/ca.pem", "signing/cert.pem", "push/cert.pem"):
        ok(os.path.isfile(s.path(rel)), "init must create %s (have: %s)" % (rel, sorted(
            os.path.relpath(os.path.join(dp, f), s.data) for dp, _, fs in os.walk(s.data) for f in fs)))
    with open(s.path("orchard.db"), "rb") as f:
        eq(f.read(16), b"SQLite format 3\x00", "orchard.db header")
    ca = pki.load_cert(s.path("tls", "ca.pem"))
    eq(ca.extensions.get_extension_for_class(pki.x509.BasicConstraints).value.ca, True, "tls/ca.pem is a CA")
    scep_ca = pki.load_cert(s.path("scep", "ca.pem"))
    eq(scep_ca.extensions.get_extension_for_class(pki.x509.BasicConstraints).value.ca, True, "scep/ca.pem is a CA")
    topic = pki.uid_of(pki.load_cert(s.path("push", "cert.pem")))
    ok(topic and re.match(r"^com\.apple\.mgmt\.External\.[0-9a-fA-F-]{36}$", topic),
       "push/cert.pem UID must be com.apple.mgmt.External.<uuid>, got %r" % topic)
    conf = open(s.path("orchard.conf")).read()
    ok(s.url in conf, "orchard.conf must record public_url %s:\n%s" % (s.url, conf))


@test
def private_keys_are_mode_0600():
    s = Server(name="keys")
    keys = []
    for dp, _, files in os.walk(s.data):
        for f in files:
            p = os.path.join(dp, f)
            with open(p, "rb") as fh:
                if b"PRIVATE KEY-----" in fh.read():
                    keys.append(p)
    ok(len(keys) >= 4, "expected private keys for tls, scep, signing and push, found %r" % keys)
    for p in keys:
        mode = stat.S_IMODE(os.stat(p).st_mode)
        ok(mode & 0o077 == 0, "%s has mode %o; private keys must be 0600" % (p, mode))


@test
def init_refuses_to_overwrite_without_force():
    s = Server(name="reinit")
    files = ["tls/ca.pem", "scep/ca.pem", "signing/cert.pem", "push/cert.pem", "orchard.conf", "orchard.db"]
    before = {f: sha(s.path(f)) for f in files}
    p = s.init(check=False)
    ok(p.returncode != 0, "a second init on the same directory must fail, exited 0:\n%s" % combined(p))
    ok(combined(p).strip(), "the refusal must say why")
    eq({f: sha(s.path(f)) for f in files}, before, "files after a refused init")
    p = s.init(force=True, check=False)
    eq(p.returncode, 0, "init --force exit code (%s)" % combined(p).strip())
    ok(sha(s.path("scep/ca.pem")) != before["scep/ca.pem"], "init --force must create new identities")


# --- users and API keys --------------------------------------------------------------------------

@test
def user_add_reads_password_from_stdin_and_stores_argon2id():
    s = Server(name="users")
    password = "correct horse battery staple 9f3b"
    p = s.add_user("carol@example.com", "carol@appleid.example.com", password)
    eq(p.returncode, 0, "user add exit code")
    ok(password not in combined(p), "user add must not echo the password")
    raw = db_bytes(s)
    ok(password.encode() not in raw, "the password is stored in clear in orchard.db")
    ok(b"$argon2id$" in raw, "the password hash in orchard.db is not argon2id ($argon2id$...)")
    p = s.add_user("carol@example.com", "carol2@appleid.example.com", "other", check=False)
    ok(p.returncode != 0, "adding the same email twice must fail:\n%s" % combined(p))
    p = s.cli("user", "list", "--data", s.data)
    ok("carol@example.com" in p.stdout, "user list must show carol@example.com:\n%s" % p.stdout)
    ok(password not in p.stdout, "user list must not show the password")


@test
def apikey_create_prints_one_line_and_stores_only_a_hash():
    s = srv()
    p = s.cli("apikey", "create", "--data", s.data, "--name", "ci")
    lines = p.stdout.splitlines()
    eq(len(lines), 1, "apikey create stdout lines (%r)" % p.stdout)
    key = lines[0].strip()
    ok(len(key) >= 32 and re.match(r"^[A-Za-z0-9._~+/=-]+$", key), "API key %r looks weak or odd" % key)
    key2 = s.create_apikey("ci2")
    ok(key2 != key, "two API keys must differ")
    ok(key.encode() not in db_bytes(s) and key2.encode() not in db_bytes(s), "API key stored in clear")
    status(s.api("GET", "/api/v1/enrollments", key=key), 200, "admin API with the new key")
    status(s.api("GET", "/api/v1/enrollments", key=None), 401, "admin API without a key")
    status(s.api("GET", "/api/v1/enrollments", key=key[:-2] + ("AA" if key[-2:] != "AA" else "BB")), 401,
           "admin API with a wrong key")
    status(s.api("GET", "/api/v1/enrollments", key=None, headers={"Authorization": "Basic " + key}), 401,
           "admin API with the key in a Basic header")


# --- config --------------------------------------------------------------------------------------

@test
def config_show_prints_effective_values_with_secrets_redacted():
    s = Server(name="config")
    secret = "s3cret-metrics-token-0f9a8b7c"
    p = s.cli("config", "show", "--data", s.data, env={"ORCHARD_METRICS_TOKEN": secret,
                                                       "ORCHARD_SIGNIN_RATE_LIMIT": "7"})
    out = p.stdout
    ok(secret not in combined(p), "config show printed the metrics_token secret:\n%s" % out)
    cfg = config_lines(out)
    ok("metrics_token" in cfg, "config show must list metrics_token (redacted):\n%s" % out)
    eq(cfg.get("signin_rate_limit"), "7", "signin_rate_limit from ORCHARD_SIGNIN_RATE_LIMIT")
    eq(cfg.get("public_url"), s.url, "public_url from init")
    for key in ("listen", "max_body", "enroll_token_ttl", "storage"):
        ok(key in cfg, "config show must list %s:\n%s" % (key, out))
    # file < environment
    with open(s.path("orchard.conf"), "a") as f:
        f.write("\nsignin_rate_limit = 5\n")
    eq(config_lines(s.cli("config", "show", "--data", s.data).stdout).get("signin_rate_limit"), "5",
       "signin_rate_limit from orchard.conf")
    eq(config_lines(s.cli("config", "show", "--data", s.data, env={"ORCHARD_SIGNIN_RATE_LIMIT": "8"}).stdout)
       .get("signin_rate_limit"), "8", "environment must override orchard.conf")


@test
def bad_config_values_are_errors_naming_the_key():
    s = Server(name="badconfig")
    for env, key in (({"ORCHARD_MAX_BODY": "lots"}, "max_body"), ({"ORCHARD_MAX_BODY": "1"}, "max_body"),
                     ({"ORCHARD_LOG_LEVEL": "chatty"}, "log_level"),
                     ({"ORCHARD_ENROLL_TOKEN_TTL": "soon"}, "enroll_token_ttl")):
        p = s.cli("config", "show", "--data", s.data, env=env, check=False)
        ok(p.returncode != 0, "config show with %r must fail:\n%s" % (env, combined(p)))
        ok(key in combined(p), "the error for %r must name %s:\n%s" % (env, key, combined(p)))
    conf = s.path("orchard.conf")
    original = open(conf).read()
    with open(conf, "a") as f:
        f.write("\nsignin_rate_limit = banana\n")
    p = s.cli("config", "show", "--data", s.data, check=False)
    ok(p.returncode != 0 and "signin_rate_limit" in combined(p),
       "a bad value in orchard.conf must fail naming signin_rate_limit (exit %d):\n%s" % (p.returncode, combined(p)))
    with open(conf, "w") as f:
        f.write(original)
    # serve refuses to start with a bad value, quickly, naming the key
    t0 = time.monotonic()
    p = subprocess.run([orchard.BIN, "serve", "--data", s.data, "--listen", "127.0.0.1:%d" % s.port],
                       capture_output=True, text=True, timeout=30,
                       env=orchard.hermetic_env({"ORCHARD_MAX_BODY": "lots"}))
    ok(p.returncode != 0 and "max_body" in combined(p),
       "serve with ORCHARD_MAX_BODY=lots must exit non-zero naming max_body (exit %d):\n%s"
       % (p.returncode, combined(p)))
    ok(time.monotonic() - t0 < 20, "serve took too long to refuse a bad config")


@test
def help_on_every_subcommand():
    cases = (["--help"], ["init", "--help"], ["serve", "--help"], ["user", "--help"], ["user", "add", "--help"],
             ["user", "list", "--help"], ["apikey", "--help"], ["apikey", "create", "--help"], ["config", "--help"],
             ["config", "show", "--help"])
    bad = []
    for args in cases:
        p = subprocess.run([orchard.BIN] + args, capture_output=True, text=True, timeout=30,
                           env=orchard.hermetic_env())
        if p.returncode != 0 or not p.stdout.strip():
            bad.append("orchard %s: exit %d, stdout %r, stderr %r" % (" ".join(args), p.returncode, p.stdout[:60],
                                                                     p.stderr.strip()[:100]))
    ok(not bad, "--help must exit 0 with help on stdout:\n  " + "\n  ".join(bad))


# --- the HTTP layer ------------------------------------------------------------------------------

@test
def tls_certificate_verifies_for_the_public_host():
    s = srv()
    ctx = ssl.create_default_context(cafile=s.ca_file)  # hostname checked against 127.0.0.1
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            ok(tls.version() in ("TLSv1.2", "TLSv1.3"), "TLS version %s" % tls.version())


@test
def healthz_answers_200_without_a_key():
    r = srv().get("/healthz")
    status(r, 200)


@test
def unknown_path_is_404():
    s = srv()
    for path in ("/no/such/path", "/api/v1/no-such-thing", "/.well-known/nothing", "/healthz/extra"):
        status(s.api("GET", path), 404)


@test
def wrong_method_is_405():
    s = srv()
    status(s.request("POST", "/healthz", body=b""), 405)
    status(s.request("DELETE", "/healthz"), 405)
    status(s.request("PUT", "/metrics", body=b"x"), 405)
    status(s.request("GET", "/mdm/checkin"), 405)
    status(s.request("GET", "/mdm/connect"), 405)
    status(s.request("POST", "/.well-known/com.apple.remotemanagement?user-identifier=a%40example.com",
                     body=b"{}", headers={"Host": "example.com"}), 405)


@test
def body_over_max_body_is_413():
    s = srv()
    big = b"<?xml version=\"1.0\"?><plist><dict>" + b"A" * 8192 + b"</dict></plist>"
    status(s.request("PUT", "/mdm/checkin", body=big), 413, "8 KiB check-in with max_body=4096")
    # (A device request offering no identity at all is refused before its body: give it one.)
    status(s.request("PUT", "/mdm/connect", body=big, chunked=True, headers={"Mdm-Signature": "x"}), 413,
           "chunked 8 KiB connect")
    status(s.api("POST", "/api/v1/enrollments/X/commands", body=b"{" + b" " * 5000 + b"}"), 413,
           "5000-byte API body")
    r = s.request("PUT", "/mdm/checkin", body=b"x" * 4096)
    ok(r.status != 413 and r.status < 500, "a body of exactly max_body must not be 413/5xx\n  " + r.describe())
    # A declared size over the cap is refused from the headers, without waiting for the body.
    r = s.request("PUT", "/mdm/checkin", body=b"x" * 10, headers={"Content-Length": "1000000000"}, timeout=10)
    status(r, 413, "Content-Length: 1000000000")


@test
def every_response_has_a_unique_request_id():
    s = srv()
    rs = [s.get("/healthz"), s.get("/no/such/path"), s.request("POST", "/healthz", body=b""),
          s.request("PUT", "/mdm/checkin", body=b"y" * 5000), s.get("/metrics"),
          s.request("PUT", "/mdm/checkin", body=b"<plist/>"), s.api("GET", "/api/v1/enrollments", key=None)]
    ids = []
    for r in rs:
        rid = r.header("X-Request-Id")
        ok(rid and rid.strip(), "missing X-Request-Id\n  " + r.describe())
        ids.append(rid)
    eq(len(set(ids)), len(ids), "request ids must be unique (%r)" % ids)


@test
def access_log_line_carries_the_request_id():
    s = srv()
    r = s.get("/no/such/path-for-access-log")
    rid = r.header("X-Request-Id")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [l for l in s.log_text().splitlines() if rid in l]
        if lines:
            ok(re.search(r"\b\w+=\S+", lines[0]), "access log line is not key=value: %r" % lines[0])
            ok("404" in lines[0], "access log line should record the status: %r" % lines[0])
            return
        time.sleep(0.1)
    raise AssertionError("request id %s not found in the server log:\n%s" % (rid, s.log_tail(10)))


METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)(\s+\d+)?$")


def metric_samples(text):
    out = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            ok(not line.startswith("#") or re.match(r"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* ", line)
               or re.match(r"^# ", line), "bad comment line %r" % line)
            continue
        m = METRIC_LINE.match(line)
        ok(m, "not a Prometheus sample line: %r" % line)
        float(m.group(3))
        out.append((m.group(1), m.group(2) or "", float(m.group(3))))
    return out


def healthz_count(samples):
    return sum(v for n, labels, v in samples
               if "healthz" in labels and (n.endswith("_total") or n.endswith("_count")) and "request" in n)


@test
def metrics_are_prometheus_text_with_orchard_names():
    s = srv()
    r = s.get("/metrics")
    status(r, 200)
    ok(r.content_type == "text/plain", "metrics Content-Type must be text/plain, got %r" % r.header("Content-Type"))
    samples = metric_samples(r.text)
    names = {n for n, _, _ in samples}
    ok(any(n.startswith("orchard_") for n in names), "no orchard_ metrics: %r" % sorted(names)[:20])
    before = healthz_count(samples)
    ok(before > 0, "no request counter labelled with the healthz route in:\n%s" % r.text[:1500])
    for _ in range(3):
        s.get("/healthz")
    after = healthz_count(metric_samples(s.get("/metrics").text))
    ok(after >= before + 3, "healthz request count went from %s to %s after 3 requests" % (before, after))
    ok(any("latency" in n or "duration" in n or "seconds" in n for n in names if n.startswith("orchard_")),
       "no request latency metric among %r" % sorted(names))


@test
def metrics_token_protects_metrics():
    s = srv()
    s.restart(env={"ORCHARD_METRICS_TOKEN": "metrics-secret-123456"})
    try:
        status(s.get("/metrics"), 401, "metrics without the token")
        status(s.get("/metrics", headers={"Authorization": "Bearer wrong-token"}), 401, "metrics, wrong token")
        status(s.get("/metrics", headers={"Authorization": "Bearer metrics-secret-123456"}), 200, "metrics, token")
        status(s.get("/healthz"), 200, "healthz stays open")
    finally:
        s.env.pop("ORCHARD_METRICS_TOKEN", None)
        s.restart()


# --- process lifecycle ---------------------------------------------------------------------------

def _partial_request(s):
    """Opens a TLS connection and sends a request with half its body; returns the socket."""
    ctx = s.ctx()
    raw = socket.create_connection(("127.0.0.1", s.port), timeout=15)
    tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    body = b"<?xml version=\"1.0\"?><plist version=\"1.0\"><dict></dict></plist>"
    head = ("PUT /mdm/checkin HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/x-apple-aspen-mdm-checkin\r\n"
            "Content-Length: %d\r\nConnection: close\r\n\r\n" % (s.port, len(body))).encode()
    tls.sendall(head + body[:20])
    return tls, body[20:]


@test
def sigterm_finishes_in_flight_requests_and_exits_0():
    s = Server(name="sigterm")
    s.start()
    tls, rest = _partial_request(s)
    time.sleep(0.3)  # the server has the headers and part of the body
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    try:
        tls.sendall(rest)
        data = b""
        while True:
            chunk = tls.recv(4096)
            if not chunk:
                break
            data += chunk
    except (OSError, ssl.SSLError) as e:
        data = b"<connection error %r>" % (e,)
    finally:
        tls.close()
    ok(data.startswith(b"HTTP/1.1 "), "the in-flight request must get its answer after SIGTERM, got %r" % data[:200])
    rc = s.stop()
    eq(rc, 0, "exit code after SIGTERM")
    s.start()  # the database was closed cleanly: the server comes back
    status(s.get("/healthz"), 200, "healthz after restart")
    s.proc.send_signal(signal.SIGINT)
    s.proc.wait(20)
    eq(s.proc.returncode, 0, "exit code after SIGINT")
    s.exits.append(("SIGINT", 0))


@test
def serve_refuses_an_address_in_use():
    s = Server(name="inuse")
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        t0 = time.monotonic()
        p = subprocess.run([orchard.BIN, "serve", "--data", s.data, "--listen", "127.0.0.1:%d" % port],
                           capture_output=True, text=True, timeout=30, env=orchard.hermetic_env())
        ok(p.returncode != 0, "serve on a busy port must fail:\n%s" % combined(p))
        ok(time.monotonic() - t0 < 20, "serve took too long to fail on a busy port")
        ok(combined(p).strip(), "serve must say why it failed")


if __name__ == "__main__":
    orchard.main()
