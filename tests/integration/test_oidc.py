#!/usr/bin/python3
"""
Issue 8 (federated sign-in over OpenID Connect), protocol level, against `orchard serve` and a
deliberately misbehaving IdP (tests/oidc/fake_idp.mjs, node, HTTPS with a throwaway CA made
here with openssl): the redirect to the IdP (PKCE S256, state, nonce, login_hint,
prompt=login), the callback, and every refusal -- wrong/replayed/expired state, replayed code,
tampered ID token, wrong audience, expired token, unknown kid (and a key rotation that must
work), alg confusion (HS256 keyed with the public key, alg none), IdP errors, a different
account, a different IdP subject, JIT off -- each a 4xx page with no token, audited. Also
`orchard domain` and /api/v1/domains (the secret never comes back), and discovery of a domain
that exists only in the table. The real-provider, real-browser flow is tests/browser/oidc.test.mjs.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import orchard  # noqa: E402
from orchard import ROOT, Server, eq, ok, on_exit, status, test  # noqa: E402

CLIENT_ID = "orchard-test"
CLIENT_SECRET = "fake-idp-secret-Zq9"
ALICE = "alice@example.com"
COOKIE = "orchard_oidc"
TOKEN_RE = re.compile(r"^apple-remotemanagement-user-login://authentication-results\?access-token=[A-Za-z0-9_-]{43}$")

_env = {}


def make_tls(d):
    """A throwaway CA and a certificate for 127.0.0.1 signed by it (openssl CLI)."""
    def run(*args):
        subprocess.run(args, check=True, capture_output=True, cwd=d)
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=Orchard OIDC test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "idp.key", "-out", "idp.csr",
        "-subj", "/CN=127.0.0.1")
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    run("openssl", "x509", "-req", "-in", "idp.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "idp.pem", "-days", "2", "-extfile", "ext.cnf")
    return os.path.join(d, "ca.pem"), os.path.join(d, "idp.pem"), os.path.join(d, "idp.key")


class FakeIdP:
    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="orchard-fake-idp-", dir="/tmp")
        self.ca, cert, key = make_tls(self.tmp)
        self.port = orchard.free_port()
        self.url = "https://127.0.0.1:%d" % self.port
        self.log = open(os.path.join(self.tmp, "idp.log"), "w+")
        self.proc = subprocess.Popen(
            ["node", os.path.join(ROOT, "tests", "oidc", "fake_idp.mjs"), "--port", str(self.port), "--cert", cert,
             "--key", key, "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        ok(line.startswith("ready "), "fake IdP did not start: %r" % line)
        self.ctx = orchard.client_context(self.ca)

    def control(self, **kw):
        import json
        r = orchard.request("POST", self.url + "/control", body=json.dumps(kw), ctx=self.ctx)
        status(r, 200, "fake IdP control")
        return r.json()

    def get(self, url):
        return orchard.request("GET", url, ctx=self.ctx)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def env():
    """One fake IdP and one Orchard whose example.com is federated to it (JIT users on)."""
    if not _env:
        idp = FakeIdP()
        on_exit(idp.stop)
        srv = Server(domains=("example.com",), name="oidc", env={"ORCHARD_DEBUG_CLOCK": "true"})
        srv.cli("domain", "set", "--data", srv.data, "example.com", "--auth", "oidc", "--oidc-issuer", idp.url,
                "--oidc-client-id", CLIENT_ID, "--oidc-client-secret-stdin", "--oidc-ca-file", idp.ca,
                "--oidc-jit-users", input=CLIENT_SECRET + "\n")
        # A domain that only the table knows (not in the config key `domains`), JIT off.
        srv.cli("domain", "add", "--data", srv.data, "corp.test", "--auth", "oidc", "--oidc-issuer", idp.url,
                "--oidc-client-id", CLIENT_ID, "--oidc-client-secret-stdin", "--oidc-ca-file", idp.ca,
                input=CLIENT_SECRET + "\n")
        srv.start()
        _env.update(idp=idp, srv=srv)
    return _env["idp"], _env["srv"]


def begin(srv, ident=ALICE):
    """GET /auth/signin: returns (302 response, IdP URL, query dict, cookie value)."""
    r = srv.get("/auth/signin?user-identifier=" + urllib.parse.quote(ident))
    status(r, 302, "sign-in for a federated domain redirects to the IdP")
    loc = r.header("Location")
    q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(loc).query))
    m = re.search(COOKIE + r"=([A-Za-z0-9_-]{43});", r.header("Set-Cookie") or "")
    ok(m, "state cookie set: %r" % r.header("Set-Cookie"))
    return r, loc, q, m.group(1)


def at_idp(idp, loc):
    """The IdP answers at once with a redirect to the callback; returns the callback URL."""
    r = idp.get(loc)
    status(r, 302, "fake IdP authorization")
    return r.header("Location")


def callback(srv, url, cookie):
    u = urllib.parse.urlsplit(url)
    hdrs = {"Cookie": "%s=%s" % (COOKIE, cookie)} if cookie else {}
    return srv.get(u.path + "?" + u.query, headers=hdrs)


def full(idp, srv, mode="good", ident=ALICE):
    idp.control(mode=mode)
    _, loc, _, cookie = begin(srv, ident)
    return callback(srv, at_idp(idp, loc), cookie)


def assert_token(r, what):
    status(r, 308, what)
    ok(TOKEN_RE.match(r.header("Location") or ""), "%s: Location %r" % (what, r.header("Location")), r)


def assert_refused(r, what, expected=None):
    ok(400 <= r.status < 500, "%s: expected a 4xx page, got %d" % (what, r.status), r)
    if expected:
        status(r, expected, what)
    ok(r.header("Location") is None, "%s: no redirect" % what, r)
    ok(b"access-token" not in r.body and b"apple-remotemanagement-user-login" not in r.body,
       "%s: no token in the page" % what, r)
    eq(r.content_type, "text/html", what + ": an HTML page")
    return r


# ---------------------------------------------------------------------------------------------

@test
def redirect_to_the_idp_carries_pkce_state_nonce_login_hint_and_prompt_login():
    idp, srv = env()
    _, loc, q, cookie = begin(srv)
    ok(loc.startswith(idp.url + "/authorize?"), "Location %r" % loc)
    eq(q.get("response_type"), "code", "response_type")
    eq(q.get("client_id"), CLIENT_ID, "client_id")
    eq(q.get("redirect_uri"), srv.url + "/auth/oidc/callback", "redirect_uri")
    eq(q.get("scope"), "openid email profile", "scope")
    eq(q.get("code_challenge_method"), "S256", "code_challenge_method")
    ok(re.match(r"^[A-Za-z0-9_-]{43}$", q.get("code_challenge", "")), "code_challenge")
    ok(re.match(r"^[A-Za-z0-9_-]{43}$", q.get("nonce", "")), "nonce")
    eq(q.get("state"), cookie, "state equals the browser-binding cookie")
    eq(q.get("login_hint"), ALICE, "login_hint")
    eq(q.get("prompt"), "login", "prompt")


@test
def good_id_token_gives_the_token_and_the_profile_user_is_created_just_in_time():
    idp, srv = env()
    r = full(idp, srv, "good")
    assert_token(r, "good ID token")
    a = srv.api("GET", "/api/v1/audit").json()
    rows = a if isinstance(a, list) else a.get("audit", a.get("events", []))
    ok(any(e.get("action") == "user.create_jit" and e.get("target") == ALICE for e in rows),
       "JIT creation audited: %r" % rows[:5])
    p = srv.cli("user", "list", "--data", srv.data)
    ok(ALICE in p.stdout and "federated" in p.stdout, "alice is a federated user: %s" % p.stdout)
    # Re-authentication through the same IdP: same sub, new token.
    assert_token(full(idp, srv, "good"), "second sign-in (re-authentication)")


@test
def rfc_9207_iss_parameter_of_another_issuer_is_refused():
    idp, srv = env()
    idp.control(mode="good")
    _, loc, _, cookie = begin(srv)
    cb = at_idp(idp, loc) + "&iss=" + urllib.parse.quote("https://evil.example")
    assert_refused(callback(srv, cb, cookie), "iss parameter of another issuer")


@test
def wrong_state_is_refused():
    idp, srv = env()
    idp.control(mode="good")
    _, loc, q, cookie = begin(srv)
    cb = at_idp(idp, loc).replace(q["state"], "A" * 43)
    assert_refused(callback(srv, cb, cookie), "state that does not match the cookie", 400)
    # Same forged state in the cookie too: unknown to the server.
    assert_refused(callback(srv, cb, "A" * 43), "unknown state", 400)
    # No cookie at all (a callback URL sent to someone else's browser).
    _, loc, _, cookie = begin(srv)
    assert_refused(callback(srv, at_idp(idp, loc), None), "callback without the state cookie", 400)
    assert_refused(srv.get("/auth/oidc/callback?code=x"), "callback without state", 400)


@test
def replayed_callback_and_replayed_code_are_refused():
    idp, srv = env()
    idp.control(mode="good")
    _, loc, _, cookie = begin(srv)
    cb = at_idp(idp, loc)
    assert_token(callback(srv, cb, cookie), "first use")
    assert_refused(callback(srv, cb, cookie), "the same callback again (state is single-use)", 400)
    # The old code with a fresh, valid state: the IdP refuses the code (single use).
    _, loc2, q2, cookie2 = begin(srv)
    code = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(cb).query))["code"]
    cb2 = "%s/auth/oidc/callback?code=%s&state=%s" % (srv.url, code, q2["state"])
    assert_refused(callback(srv, cb2, cookie2), "replayed code", 400)


@test
def expired_state_is_refused():
    idp, srv = env()
    idp.control(mode="good")
    _, loc, _, cookie = begin(srv)
    cb = at_idp(idp, loc)
    srv.advance_clock(601)
    r = assert_refused(callback(srv, cb, cookie), "state older than 10 minutes", 400)
    ok(b"expired" in r.body.lower(), "the page says the sign-in expired", r)


ID_TOKEN_CASES = [
    ("tampered", "tampered ID token (payload changed after signing)"),
    ("wrong_aud", "wrong audience"),
    ("multi_aud_no_azp", "several audiences without azp"),
    ("expired", "expired ID token"),
    ("future_iat", "iat an hour in the future"),
    ("wrong_nonce", "wrong nonce"),
    ("wrong_iss", "wrong iss claim"),
    ("unknown_kid", "kid unknown even after refetching the JWKS"),
    ("hs256_pubkey", "alg confusion: HS256 keyed with the RSA public key"),
    ("alg_none", "alg none"),
]


@test
def crafted_id_tokens_are_refused_with_no_token():
    idp, srv = env()
    for mode, what in ID_TOKEN_CASES:
        assert_refused(full(idp, srv, mode), what, 403)
    # Announcing HS256 does not make a public-key HMAC acceptable either.
    idp.control(algs=["RS256", "HS256"])
    assert_refused(full(idp, srv, "hs256_pubkey"), "HS256 even when the IdP announces it", 403)
    idp.control(algs=["RS256"])
    log_text = srv.log_text()
    for secret in (CLIENT_SECRET,):
        ok(secret not in log_text, "the client secret is never logged")


@test
def key_rotation_is_followed_by_refetching_the_jwks():
    idp, srv = env()
    assert_token(full(idp, srv, "good"), "before rotation")
    before = idp.get(idp.url + "/stats").json()["jwks_requests"]
    idp.control(rotate=True)
    time.sleep(1.1)  # the minimum interval between refetches on an unknown kid
    assert_token(full(idp, srv, "good"), "after rotation (new kid, refetched JWKS)")
    after = idp.get(idp.url + "/stats").json()["jwks_requests"]
    ok(after > before, "the JWKS was fetched again (%d -> %d)" % (before, after))
    assert_token(full(idp, srv, "no_kid"), "a token without kid verifies against the matching key")


@test
def idp_errors_are_friendly_pages():
    idp, srv = env()
    r = assert_refused(full(idp, srv, "error_access_denied"), "user cancelled at the IdP", 403)
    ok(b"cancelled" in r.body.lower(), "the page says the sign-in was cancelled", r)
    assert_refused(full(idp, srv, "error_server"), "IdP server_error", 400)


@test
def a_different_account_or_subject_is_refused():
    idp, srv = env()
    r = assert_refused(full(idp, srv, "other_email"), "IdP user is not the identifier typed", 403)
    ok(b"different account" in r.body.lower(), "the page explains the account mismatch", r)
    assert_token(full(idp, srv, "good"), "alice bound to her sub")
    assert_refused(full(idp, srv, "other_sub"), "same email, different IdP subject", 403)


@test
def without_jit_an_unknown_user_is_refused_and_table_only_domains_are_discovered():
    idp, srv = env()
    r = srv.get("/.well-known/com.apple.remotemanagement?user-identifier=carol%40corp.test",
                headers={"Host": "corp.test"})
    status(r, 200, "discovery of a domain that exists only in the table")
    assert_refused(full(idp, srv, "good", ident="carol@corp.test"), "unknown user, JIT off", 403)


@test
def password_post_for_a_federated_domain_is_refused():
    idp, srv = env()
    srv.add_user("dave@example.com", "dave@appleid.example.com", "dave-Pa55word!")
    csrf = "C" * 43
    r = srv.request("POST", "/auth/signin",
                    body="csrf=%s&user-identifier=dave%%40example.com&password=dave-Pa55word!" % csrf,
                    headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": "orchard_csrf=" + csrf})
    status(r, 401, "no password sign-in for a federated domain (the generic failure)")
    ok(r.header("Location") is None, "no redirect", r)


@test
def failures_are_audited():
    idp, srv = env()
    a = srv.api("GET", "/api/v1/audit?limit=500").json()
    rows = a if isinstance(a, list) else a.get("audit", a.get("events", []))
    fails = [e for e in rows if e.get("action") == "signin.fail" and (e.get("detail") or "").startswith("oidc:")]
    ok(len(fails) >= 10, "OIDC refusals are in the audit trail (%d found)" % len(fails))
    ok(any("ID token refused" in (e.get("detail") or "") for e in fails), "ID token refusals audited")


@test
def callbacks_with_made_up_state_leave_no_audit_rows():
    idp, srv = env()

    def unknown_rows():
        a = srv.api("GET", "/api/v1/audit?limit=500").json()["events"]
        return sum(1 for e in a if e["action"] == "signin.fail" and e["target"] == "unknown")

    before = unknown_rows()
    for i in range(20):
        st = "%043d" % i
        r = srv.get("/auth/oidc/callback?code=x&state=" + st, headers={"Cookie": "%s=%s" % (COOKIE, st)})
        assert_refused(r, "made-up state %d" % i, 400)
    eq(unknown_rows(), before, "refusals that concern no account are not audited")
    ok("unknown, used or expired state" in srv.log_text(), "but they are logged")


@test
def domain_cli_and_api_never_show_the_secret():
    idp, srv = env()
    p = srv.cli("domain", "show", "--data", srv.data, "example.com")
    ok(CLIENT_SECRET not in p.stdout, "domain show hides the secret")
    ok(("redirect URI:    %s/auth/oidc/callback" % srv.url) in p.stdout, "domain show prints the redirect URI:\n" + p.stdout)
    r = srv.api("GET", "/api/v1/domains")
    status(r, 200, "GET /api/v1/domains")
    ok(CLIENT_SECRET.encode() not in r.body, "the list hides the secret")
    names = [d["name"] for d in r.json()["domains"]]
    ok("example.com" in names and "corp.test" in names, "both domains listed: %r" % names)
    r = srv.api("GET", "/api/v1/domains/example.com")
    status(r, 200, "GET one domain")
    d = r.json()
    eq(d.get("auth"), "oidc", "auth")
    eq(d.get("client_secret_set"), True, "client_secret_set")
    eq(d.get("redirect_uri"), srv.url + "/auth/oidc/callback", "redirect_uri")
    ok("client_secret" not in d, "no client_secret member")
    r = srv.api("PUT", "/api/v1/domains/new.test", {"auth": "oidc", "issuer": idp.url, "client_id": "c",
                                                     "client_secret": "api-secret-123", "jit_users": True})
    status(r, 201, "PUT a new domain")
    ok(b"api-secret-123" not in r.body, "PUT answer hides the secret")
    status(srv.api("PUT", "/api/v1/domains/new.test", {"auth": "oidc", "issuer": "http://plain"}), 400,
           "an http issuer is refused")
    status(srv.api("PUT", "/api/v1/domains/new.test", {"bogus": 1}), 400, "unknown member refused")
    status(srv.api("GET", "/api/v1/domains/nope.test"), 404, "unknown domain")
    status(srv.api("GET", "/api/v1/domains", key=None), 401, "API key required")


# --- issue 13: re-authentication tickets, start limits, a slow IdP --------------------------------

sys.path.insert(0, os.path.join(HERE, "..", "sim"))
import device as sim  # noqa: E402


def policy_server(idp, name, **env):
    """An Orchard whose example.com is federated to idp, with a fast scheduler and env."""
    srv = Server(domains=("example.com",), name=name,
                 env=dict({"ORCHARD_DEBUG_CLOCK": "true", "ORCHARD_SCHEDULER_INTERVAL": "1"}, **env))
    srv.cli("domain", "set", "--data", srv.data, "example.com", "--auth", "oidc", "--oidc-issuer", idp.url,
            "--oidc-client-id", CLIENT_ID, "--oidc-client-secret-stdin", "--oidc-ca-file", idp.ca,
            "--oidc-jit-users", input=CLIENT_SECRET + "\n")
    srv.start()
    return srv


def signin_via(srv, idp, path, mode):
    """GET path (a sign-in url), through the IdP in `mode`, back to the callback."""
    idp.control(mode=mode)
    r = srv.get(path)
    status(r, 302, "sign-in start %s" % path)
    m = re.search(COOKIE + r"=([A-Za-z0-9_-]{43});", r.header("Set-Cookie") or "")
    return callback(srv, at_idp(idp, r.header("Location")), m.group(1))


def oidc_enrolled(srv, idp):
    """A simulated iPhone of alice enrolled through the federated sign-in."""
    d = sim.Device(srv.url, ALICE, None, ca_file=srv.ca_file, signing_ca=srv.path("signing", "ca.pem"),
                   workdir=tempfile.mkdtemp(prefix="dev-", dir=srv.tmp), auto_reauth=False)
    d.discover()
    url = d.enroll_unauthenticated()
    r = signin_via(srv, idp, urllib.parse.urlsplit(d.signin_page_url(url)).path + "?" +
                   urllib.parse.urlsplit(d.signin_page_url(url)).query, "good")
    assert_token(r, "federated enrollment sign-in")
    d.token = sim.token_from_location(r)
    d.fetch_profile()
    d.verify_profile()
    d.scep_enroll()
    d.authenticate()
    d.token_update()
    return d


def enrollment_state(srv, d):
    r = srv.api("GET", "/api/v1/enrollments/%s" % d.enrollment_id)
    status(r, 200, "GET enrollment")
    return r.json()["auth_state"]


def wait_state(srv, d, want, what):
    for _ in range(100):
        if enrollment_state(srv, d) == want:
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting for %s (%s)\n%s" % (want, what, srv.log_tail(20)))


@test
def idp_refusals_count_towards_reauth_only_with_the_devices_ticket():
    idp, _ = env()
    srv = policy_server(idp, "oidc-reauth", ORCHARD_REAUTH_FAILURE_ACTION="unenroll",
                        ORCHARD_REAUTH_MAX_FAILURES="2")
    d = oidc_enrolled(srv, idp)
    status(srv.api("POST", "/api/v1/enrollments/%s/reauthenticate" % d.enrollment_id), 202, "reauthenticate")
    r = d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id})
    srv.assert_challenge(r)
    url = sim.parse_challenge(r.header("WWW-Authenticate"))[1]["url"]
    ticketed = urllib.parse.urlsplit(url)
    ticketed = ticketed.path + "?" + ticketed.query + "&user-identifier=" + urllib.parse.quote(ALICE)
    # Anyone can start a federated sign-in for alice and be refused by the IdP: not counted.
    plain = "/auth/signin?user-identifier=" + urllib.parse.quote(ALICE)
    for mode in ("other_email", "error_access_denied", "other_email"):
        assert_refused(signin_via(srv, idp, plain, mode), "anonymous refusal (%s)" % mode)
    assert_refused(signin_via(srv, idp, plain + "&reauth=" + "B" * 43, "other_email"), "made-up ticket")
    time.sleep(3.5)
    eq(enrollment_state(srv, d), "reauth_required", "anonymous IdP refusals do not apply the action")
    ok("?reauth=" in url, "the device's challenge carries a ticket: %r" % url)
    # Refusals of the IdP's own trouble do not count even with the ticket.
    assert_refused(signin_via(srv, idp, ticketed, "error_server"), "IdP server_error with the ticket")
    time.sleep(2.5)
    eq(enrollment_state(srv, d), "reauth_required", "an IdP error is not the person's failure")
    # The device holder signs in as someone else, twice, through the device's challenge.
    for _ in range(2):
        assert_refused(signin_via(srv, idp, ticketed, "other_email"), "different account, ticketed", 403)
    wait_state(srv, d, "reauth_failed", "two ticketed refusals")
    cmd = d.idle()
    ok(cmd is not None and cmd["Command"]["RequestType"] == "RemoveProfile", "the unenroll command is queued")
    srv.stop()


@test
def oidc_sign_in_starts_are_rate_limited_per_address_and_ipv6_per_64():
    idp, _ = env()
    srv = policy_server(idp, "oidc-limit", ORCHARD_OIDC_START_RATE_LIMIT="3",
                        ORCHARD_TRUSTED_PROXIES="127.0.0.1")
    idp.control(mode="good")
    path = "/auth/signin?user-identifier=" + urllib.parse.quote(ALICE)

    def start(xff=None):
        return srv.get(path, headers={"X-Forwarded-For": xff} if xff else None)

    for i in range(3):
        status(start("2001:db8:aa:1::%d" % (i + 1)), 302, "start %d from one /64" % (i + 1))
    r = start("2001:db8:aa:1:ffff::9")
    status(r, 429, "a fourth start from the same /64")
    eq(r.header("Retry-After"), "900", "Retry-After")
    ok(r.header("Location") is None, "no redirect to the IdP", r)
    status(start("2001:db8:aa:2::1"), 302, "another /64 has its own budget")
    for i in range(3):
        status(start("198.51.100.7"), 302, "IPv4 start %d" % (i + 1))
    status(start("198.51.100.7"), 429, "IPv4: the fourth start")
    status(start("198.51.100.8"), 302, "another IPv4 address")
    m = srv.get("/metrics")
    ok(re.search(r'orchard_rate_limited_total\{limit="oidc_start"\} [1-9]', m.text), "counted in /metrics")
    srv.stop()


class Blackhole:
    """A TCP server that accepts connections and never answers: the slowest possible IdP."""

    def __init__(self):
        import socket
        import threading
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stopped = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)

    def stop(self):
        self.stopped = True
        self.sock.close()
        for c in self.conns:
            c.close()


@test
def a_slow_idp_delays_only_its_own_sign_ins():
    import threading
    idp, _ = env()
    hole = Blackhole()
    on_exit(hole.stop)
    srv = Server(domains=("example.com", "slow.test"), name="oidc-slow", env={"ORCHARD_THREADS": "4"})
    srv.add_user(ALICE, "alice@appleid.example.com", "alice-Pa55word!")
    srv.cli("domain", "add", "--data", srv.data, "slow.test", "--auth", "oidc", "--oidc-issuer",
            "https://127.0.0.1:%d" % hole.port, "--oidc-client-id", CLIENT_ID, "--oidc-client-secret-stdin",
            "--oidc-ca-file", idp.ca, "--oidc-jit-users", input=CLIENT_SECRET + "\n")
    srv.start()
    results = []

    def slow_signin(i):
        t0 = time.monotonic()
        try:
            r = srv.get("/auth/signin?user-identifier=u%d%%40slow.test" % i, timeout=60)
            results.append((r.status, time.monotonic() - t0))
        except Exception as e:  # noqa: BLE001 - recorded and asserted below
            results.append((repr(e), time.monotonic() - t0))

    # More sign-ins for the slow domain than the server has workers.
    threads = [threading.Thread(target=slow_signin, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(2.5)  # the first one is still waiting for the IdP (its TLS handshake never ends)
    t0 = time.monotonic()
    status(srv.get("/healthz", timeout=8), 200, "/healthz while the IdP hangs")
    healthz = time.monotonic() - t0
    t0 = time.monotonic()
    r = srv.get("/auth/signin?user-identifier=" + urllib.parse.quote(ALICE), timeout=8)
    local = time.monotonic() - t0
    status(r, 200, "the local sign-in page while the IdP hangs")
    ok(b'type="password"' in r.body, "a password form for the local domain", r)
    orchard.log("  slow IdP: /healthz %.3fs, local sign-in page %.3fs" % (healthz, local))
    ok(healthz < 1.0, "/healthz answered in %.2fs while the IdP hangs" % healthz)
    ok(local < 1.5, "a local sign-in page answered in %.2fs while the IdP hangs" % local)
    for t in threads:
        t.join(60)
    orchard.log("  slow-domain sign-ins (status, seconds): %r" % sorted(results, key=lambda x: x[1]))
    ok(len(results) == 8 and all(st == 424 for st, _ in results),
       "every slow-domain sign-in gets the 424 page: %r" % results)
    # The failure is remembered: the next sign-in for that domain does not wait for the IdP.
    t0 = time.monotonic()
    status(srv.get("/auth/signin?user-identifier=u9%40slow.test", timeout=8), 424, "slow domain, cached failure")
    ok(time.monotonic() - t0 < 1.0, "a cached failure answers at once (%.2fs)" % (time.monotonic() - t0))
    srv.stop()
    hole.stop()


if __name__ == "__main__":
    orchard.main()
