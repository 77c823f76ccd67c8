"""
Integration-test harness for Orchard: a tiny test runner, a `Server` that owns one data
directory and one `orchard serve` process on a free loopback port, and HTTPS helpers.

It is not a unit-test framework: a test module registers functions with `@test` and calls
`main()`. Each test prints one line on stdout, `ok NAME` or `FAIL NAME` (tests/run.sh counts
those); tracebacks and diagnostics go to stderr. The process exits 1 if anything failed.

Only the Python standard library and Debian's python3-cryptography are used. Servers listen on
127.0.0.1 only; every server started is stopped again (try/finally in the tests, plus atexit),
and its data directory under /tmp is removed unless ORCHARD_TEST_KEEP=1.

Environment:
  ORCHARD_BIN   the orchard binary (default build/san/orchard, falling back to build/orchard)
  ORCHARD_SPEC  the shared spec directory (fixtures, Apple YAML)
"""
import atexit
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _default_bin():
    for cand in ("build/san/orchard", "build/orchard"):
        p = os.path.join(ROOT, cand)
        if os.path.exists(p):
            return p
    return os.path.join(ROOT, "build/san/orchard")


BIN = os.path.abspath(os.environ.get("ORCHARD_BIN") or _default_bin())
SPEC = os.path.abspath(os.environ.get("ORCHARD_SPEC") or os.path.join(ROOT, "..", "shared", "spec"))
FIXTURES = os.path.join(SPEC, "fixtures")
KEEP = os.environ.get("ORCHARD_TEST_KEEP") == "1"

# The exact challenge every 401 from an Orchard device endpoint must carry (PROTOCOL 5.1, 7.2).
# A check-in or connect of a user enrollment adds its re-authentication ticket to the url.
CHALLENGE_RE = r'^Bearer method="apple-as-web", url="{base}/auth/signin(\?reauth=[A-Za-z0-9_-]{{43}})?"$'
LOGIN_LOCATION_RE = re.compile(
    r"^apple-remotemanagement-user-login://authentication-results\?access-token=([A-Za-z0-9_.~%-]+)$"
)


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Test runner
# ---------------------------------------------------------------------------------------------

_tests = []
_cleanups = []


def test(fn_or_name=None):
    """Registers a test. `@test` uses the function name (underscores become spaces);
    `@test("name")` sets it explicitly. Tests run in definition order."""
    def register(fn, name):
        _tests.append((name or fn.__name__.replace("_", " ").strip(), fn))
        return fn

    if callable(fn_or_name):
        return register(fn_or_name, None)
    return lambda fn: register(fn, fn_or_name)


def on_exit(fn):
    """Registers a cleanup run after all tests (and at interpreter exit)."""
    _cleanups.append(fn)
    return fn


def _run_cleanups():
    while _cleanups:
        fn = _cleanups.pop()
        try:
            fn()
        except Exception:  # a cleanup must never hide the other cleanups
            traceback.print_exc(file=sys.stderr)


atexit.register(_run_cleanups)


def main():
    """Runs the registered tests (or those named on the command line, by substring)."""
    wanted = sys.argv[1:]
    failed = 0
    if not os.access(BIN, os.X_OK):
        for name, _ in _tests:
            print("FAIL %s" % name, flush=True)
            log("  server binary %s does not exist (set ORCHARD_BIN or build it)" % BIN)
        sys.exit(1)
    for name, fn in _tests:
        if wanted and not any(w in name for w in wanted):
            continue
        t0 = time.monotonic()
        try:
            fn()
        except BaseException as e:  # noqa: B902 - a test may raise anything, even SystemExit
            if isinstance(e, KeyboardInterrupt):
                raise
            failed += 1
            print("FAIL %s" % name, flush=True)
            log("---- FAIL %s (%.1fs)" % (name, time.monotonic() - t0))
            log("".join(traceback.format_exception(type(e), e, e.__traceback__)).rstrip())
            for s in Server.live():
                log("  server log tail (%s):\n%s" % (s.log_path, s.log_tail(15)))
        else:
            print("ok %s" % name, flush=True)
            log("ok %s (%.1fs)" % (name, time.monotonic() - t0))
    # Stop every server still running and check how each one ended.
    problems = Server.stop_all_and_check()
    if problems:
        failed += 1
        print("FAIL servers exited cleanly with no sanitizer reports", flush=True)
        for p in problems:
            log("  " + p)
    else:
        print("ok servers exited cleanly with no sanitizer reports", flush=True)
    _run_cleanups()
    sys.exit(1 if failed else 0)


# ---------------------------------------------------------------------------------------------
# Assertions that print both values
# ---------------------------------------------------------------------------------------------

def _desc(r):
    if isinstance(r, Response):
        return r.describe()
    return ""


def eq(actual, expected, what="", resp=None):
    if actual != expected:
        raise AssertionError("%s: expected %r, got %r%s" % (what or "value", expected, actual, _ctx(resp)))


def ok(cond, what, resp=None):
    if not cond:
        raise AssertionError("%s%s" % (what, _ctx(resp)))


def _ctx(resp):
    return ("\n  " + resp.describe()) if isinstance(resp, Response) else ""


def status(resp, expected, what=""):
    """Asserts the status is `expected` (an int, or a collection of ints)."""
    exp = (expected,) if isinstance(expected, int) else tuple(expected)
    if resp.status not in exp:
        raise AssertionError("%s: expected status %s, got %d\n  %s"
                             % (what or resp.what, "/".join(map(str, exp)), resp.status, resp.describe()))


def status_4xx(resp, what=""):
    if not 400 <= resp.status < 500:
        raise AssertionError("%s: expected a 4xx status, got %d\n  %s"
                             % (what or resp.what, resp.status, resp.describe()))


def not_5xx(resp, what=""):
    if resp.status >= 500:
        raise AssertionError("%s: got a server error %d\n  %s" % (what or resp.what, resp.status, resp.describe()))


def raises(exc_type, fn, *a, **kw):
    try:
        fn(*a, **kw)
    except exc_type as e:
        return e
    raise AssertionError("expected %s from %s" % (exc_type.__name__, getattr(fn, "__name__", fn)))


# ---------------------------------------------------------------------------------------------
# HTTPS client
# ---------------------------------------------------------------------------------------------

class Response:
    def __init__(self, method, url, status, reason, headers, body):
        self.method, self.url = method, url
        self.status, self.reason = status, reason
        self.headers = headers  # http.client.HTTPMessage: case-insensitive get / get_all
        self.body = body

    @property
    def what(self):
        return "%s %s" % (self.method, self.url)

    def header(self, name):
        return self.headers.get(name)

    def header_all(self, name):
        return self.headers.get_all(name) or []

    @property
    def content_type(self):
        return (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise AssertionError("%s: body is not JSON (%s)\n  %s" % (self.what, e, self.describe()))

    def describe(self, limit=400):
        hdrs = "; ".join("%s: %s" % (k, v) for k, v in self.headers.items())
        body = self.body[:limit]
        return "%s -> %d %s [%s] body(%d)=%r" % (self.what, self.status, self.reason, hdrs, len(self.body), body)


_ctx_cache = {}


def client_context(ca_file=None, cert=None, key=None, check_hostname=True):
    """An SSL context trusting ca_file, optionally presenting a client certificate.
    cert/key are file paths."""
    k = (ca_file, cert, key, check_hostname)
    ctx = _ctx_cache.get(k)
    if ctx is None:
        if ca_file:
            ctx = ssl.create_default_context(cafile=ca_file)
            ctx.check_hostname = check_hostname
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cert:
            ctx.load_cert_chain(cert, key)
        _ctx_cache[k] = ctx
    return ctx


def request(method, url, body=None, headers=None, ctx=None, timeout=30, chunked=False):
    """One HTTPS request (never follows redirects). `headers` may contain Host to override the
    Host header (TLS SNI and the connection still go to the URL's host). Returns a Response;
    raises OSError/http.client errors on transport failures."""
    u = urllib.parse.urlsplit(url)
    if u.scheme != "https":
        raise ValueError("only https URLs: %r" % url)
    if u.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError("tests only talk to loopback, not %r" % u.hostname)
    path = u.path or "/"
    if u.query:
        path += "?" + u.query
    conn = http.client.HTTPSConnection(u.hostname, u.port or 443, context=ctx or client_context(None),
                                       timeout=timeout)
    try:
        hdrs = dict(headers or {})
        if body is not None and isinstance(body, str):
            body = body.encode()
        if chunked:
            conn.request(method, path, body=_chunks(body), headers=hdrs, encode_chunked=True)
        else:
            conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        data = r.read()
        return Response(method, url, r.status, r.reason, r.headers, data)
    finally:
        conn.close()


def _chunks(body, size=1024):
    for i in range(0, len(body), size):
        yield body[i:i + size]


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# The server under test
# ---------------------------------------------------------------------------------------------

def hermetic_env(extra=None):
    """The environment for orchard processes: the caller's, minus every ORCHARD_* variable
    (the runner exports ORCHARD_BIN/ORCHARD_SPEC; config must come only from the test), plus
    defaults that keep the server off the network, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHARD_")}
    # Never talk to Apple: port 9 on loopback refuses connections.
    env["ORCHARD_APNS_URL"] = "https://127.0.0.1:9"
    for k, v in (extra or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = str(v)
    return env


_SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                    "ERROR: ThreadSanitizer", "SUMMARY: UndefinedBehaviorSanitizer")


class Server:
    """One data directory + at most one running `orchard serve`.

        srv = Server(env={"ORCHARD_DEBUG_CLOCK": "true"})   # init only
        srv.add_user("alice@example.com", "alice@appleid.example.com", "pw")
        srv.start()
        ...
        srv.stop()
    """
    _all = []

    def __init__(self, domains=("example.com",), env=None, init=True, name="srv"):
        self.tmp = tempfile.mkdtemp(prefix="orchard-it-%s-" % name, dir="/tmp")
        self.data = os.path.join(self.tmp, "data")
        self.port = free_port()
        self.url = "https://127.0.0.1:%d" % self.port
        self.domains = list(domains)
        self.env = dict(env or {})
        self.proc = None
        self.log_path = os.path.join(self.tmp, "serve.log")
        self._logf = None
        self.starts = 0
        self.exits = []  # (how, returncode) for each stop
        self._api_key = None
        Server._all.append(self)
        if init:
            self.init()

    # --- CLI ------------------------------------------------------------------------------------
    def cli(self, *args, input=None, env=None, check=True, timeout=120):
        """Runs `orchard ARGS`; returns CompletedProcess (text). check=True raises on exit != 0."""
        p = subprocess.run([BIN] + [str(a) for a in args], input=input, capture_output=True,
                           text=True, env=hermetic_env(dict(self.env, **(env or {}))), timeout=timeout,
                           cwd=ROOT)
        if check and p.returncode != 0:
            raise AssertionError("orchard %s exited %d\nstdout: %s\nstderr: %s"
                                 % (" ".join(map(str, args)), p.returncode, p.stdout, p.stderr))
        return p

    def init(self, force=False, check=True):
        args = ["init", "--data", self.data, "--public-url", self.url]
        for d in self.domains:
            args += ["--domain", d]
        if force:
            args.append("--force")
        return self.cli(*args, check=check)

    def add_user(self, email, maid, password, check=True):
        return self.cli("user", "add", "--data", self.data, "--email", email, "--managed-apple-id", maid,
                        "--password-stdin", input=password + "\n", check=check)

    def create_apikey(self, name="ci"):
        p = self.cli("apikey", "create", "--data", self.data, "--name", name)
        lines = p.stdout.splitlines()
        ok(len(lines) == 1 and lines[0].strip(), "apikey create must print exactly one line, got %r" % p.stdout)
        return lines[0].strip()

    @property
    def api_key(self):
        if self._api_key is None:
            self._api_key = self.create_apikey("harness")
        return self._api_key

    def path(self, *parts):
        return os.path.join(self.data, *parts)

    @property
    def ca_file(self):
        return self.path("tls", "ca.pem")

    # --- process --------------------------------------------------------------------------------
    def start(self, env=None, wait=True, timeout=60):
        """Starts `orchard serve` (env overrides merged over the constructor's) and waits for
        GET /healthz to answer 200."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        if env:
            self.env.update(env)
        # Admin-only commands (apikey) need the data dir while stopped; create the key first.
        if self._api_key is None:
            self._api_key = self.create_apikey("harness")
        self._logf = open(self.log_path, "ab")
        self._logf.write(("==== start %d env=%r\n" % (self.starts, self.env)).encode())
        self._logf.flush()
        self.proc = subprocess.Popen([BIN, "serve", "--data", self.data, "--listen", "127.0.0.1:%d" % self.port],
                                     stdin=subprocess.DEVNULL, stdout=self._logf, stderr=subprocess.STDOUT,
                                     env=hermetic_env(self.env), cwd=ROOT, start_new_session=True)
        self.starts += 1
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("orchard serve exited with %d during start-up:\n%s"
                                     % (self.proc.returncode, self.log_tail(40)))
            try:
                r = self.get("/healthz", timeout=5)
                if r.status == 200:
                    return
                last = r.describe()
            except (OSError, http.client.HTTPException) as e:
                last = repr(e)
            time.sleep(0.1)
        raise AssertionError("server not ready after %ds (last: %s)\n%s" % (timeout, last, self.log_tail(40)))

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=20):
        """SIGTERM and wait; returns the exit code (SIGKILL + AssertionError if it hangs)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                self.exits.append(("SIGTERM-hung", self.proc.returncode))
                self._close_log()
                raise AssertionError("orchard serve did not exit within %ds of SIGTERM" % timeout)
            self.exits.append(("SIGTERM", self.proc.returncode))
        rc = self.proc.returncode
        self._close_log()
        return rc

    def kill9(self):
        """SIGKILL (a crash, on purpose); returns once the process is gone."""
        if self.running():
            self.proc.kill()
            self.proc.wait(10)
            self.exits.append(("SIGKILL", self.proc.returncode))
        self._close_log()

    def restart(self, env=None):
        self.stop()
        return self.start(env=env)

    def _close_log(self):
        if self._logf:
            self._logf.close()
            self._logf = None

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n=20):
        return "\n".join("    " + l for l in self.log_text().splitlines()[-n:])

    def sanitizer_reports(self):
        text = self.log_text()
        return [l for l in text.splitlines() if any(m in l for m in _SANITIZER_MARKS)]

    @classmethod
    def live(cls):
        return [s for s in cls._all if s.running()]

    @classmethod
    def stop_all_and_check(cls):
        problems = []
        for s in cls._all:
            try:
                s.stop()
            except AssertionError as e:
                problems.append("%s: %s" % (s.tmp, e))
            for how, rc in s.exits:
                if how == "SIGTERM" and rc != 0:
                    problems.append("%s: exited %d after SIGTERM (log %s)\n%s" % (s.tmp, rc, s.log_path, s.log_tail(25)))
            rep = s.sanitizer_reports()
            if rep:
                problems.append("%s: sanitizer reports in %s:\n    %s" % (s.tmp, s.log_path, "\n    ".join(rep[:10])))
        return problems

    def cleanup(self):
        try:
            self.stop()
        except AssertionError:
            pass
        if not KEEP and not self.sanitizer_reports():
            shutil.rmtree(self.tmp, ignore_errors=True)

    # --- HTTP -----------------------------------------------------------------------------------
    def ctx(self, cert=None, key=None):
        return client_context(self.ca_file, cert, key)

    def request(self, method, path, body=None, headers=None, cert=None, key=None, timeout=30, chunked=False):
        url = path if path.startswith("https://") else self.url + path
        return request(method, url, body=body, headers=headers, ctx=self.ctx(cert, key), timeout=timeout,
                       chunked=chunked)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def api(self, method, path, body=None, key=True, headers=None, timeout=30):
        """Admin API call. body: dict/list (sent as JSON), bytes or None. key=True uses the
        harness key, a string uses that key, None/False sends no Authorization."""
        hdrs = dict(headers or {})
        if key is True:
            key = self.api_key
        if key:
            hdrs["Authorization"] = "Bearer " + key
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        return self.request(method, path, body=body, headers=hdrs, timeout=timeout)

    def advance_clock(self, seconds):
        r = self.api("POST", "/api/v1/debug/clock", {"advance": int(seconds)})
        status(r, (200, 204), "advance the debug clock (ORCHARD_DEBUG_CLOCK=true)")
        return r

    def challenge_re(self):
        return CHALLENGE_RE.format(base=re.escape(self.url))

    def assert_challenge(self, resp, what=""):
        """Asserts a 401 carrying exactly the apple-as-web challenge of this server."""
        status(resp, 401, what)
        www = resp.header_all("WWW-Authenticate")
        ok(len(www) == 1, "%s: expected exactly one WWW-Authenticate header, got %r" % (what or resp.what, www), resp)
        ok(re.match(self.challenge_re(), www[0]),
           '%s: WWW-Authenticate %r is not exactly Bearer method="apple-as-web", url="%s/auth/signin"'
           % (what or resp.what, www[0], self.url), resp)


def _cleanup_servers():
    for s in Server._all:
        s.cleanup()


on_exit(_cleanup_servers)


def read_fixture(*parts):
    with open(os.path.join(FIXTURES, *parts), "rb") as f:
        return f.read()
