#!/usr/bin/python3
"""
Issue 3 (account-driven User Enrollment) over real HTTPS against `orchard serve`: discovery,
the Bearer challenge (with the real captured iOS request body and the x-www-form-urlencoded
variant), the web sign-in form (CSRF, generic errors, rate limit), session tokens (expiry via
the debug clock, unknown and malformed tokens), the CMS-signed BYOD profile (checked with
`openssl cms -verify` and plistlib), and SCEP with Debian's scepclient (issue, wrong and reused
challenge, renewal). Finally the simulator walks the whole flow, as a module and as a CLI.
"""
import base64
import json
import os
import plistlib
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "sim"))
import device as sim  # noqa: E402
import orchard  # noqa: E402
import pki  # noqa: E402
from orchard import Server, eq, not_5xx, ok, status, status_4xx, test  # noqa: E402

ALICE = ("alice@example.com", "alice@appleid.example.com", "alice-Pa55word!")
BOB = ("bob@other.org", "bob@appleid.other.org", "bob-Pa55word!")
DISCOVERY = "/.well-known/com.apple.remotemanagement"
_srv = None


def srv():
    global _srv
    if _srv is None:
        # A high sign-in limit: the failures of the sign-in tests must not rate-limit later
        # tests from 127.0.0.1 (the limit itself is tested on its own server).
        _srv = Server(domains=("example.com", "other.org"), name="enroll", env={"ORCHARD_SIGNIN_RATE_LIMIT": "1000"})
        _srv.add_user(*ALICE)
        _srv.add_user(*BOB)
        _srv.start()
    return _srv


def device(s=None, who=ALICE, **kw):
    s = s or srv()
    d = sim.Device(s.url, who[0], who[2], ca_file=s.ca_file, signing_ca=s.path("signing", "ca.pem"),
                   workdir=tempfile.mkdtemp(prefix="dev-", dir=s.tmp), **kw)
    return d


def discovered(s=None, who=ALICE):
    d = device(s, who)
    d.discover()
    return d


def signed_in(s=None, who=ALICE):
    d = discovered(s, who)
    d.enroll_unauthenticated()
    d.sign_in()
    return d


def disco(s, user="alice@example.com", host="example.com", method="GET", family="iPhone", raw_query=None):
    q = raw_query if raw_query is not None else urllib.parse.urlencode(
        dict([("user-identifier", user)] + ([("model-family", family)] if family else [])))
    return s.request(method, DISCOVERY + "?" + q, headers={"Host": host}, body=b"" if method in ("POST", "PUT") else None)


def assert_well_known_failed(r, what):
    status(r, 403, what)
    eq(r.content_type, "application/json", what + ": Content-Type")
    eq(r.json().get("code"), "com.apple.well-known.failed", what + ": code")


# --- 3. service discovery ------------------------------------------------------------------------

@test
def discovery_returns_exactly_one_mdm_byod_server():
    s = srv()
    r = disco(s)
    status(r, 200)
    eq(r.content_type, "application/json", "discovery Content-Type")
    j = r.json()
    ok(isinstance(j.get("Servers"), list), "Servers must be a list: %r" % j)
    eq(len(j["Servers"]), 1, "number of Servers entries")
    eq(j["Servers"][0].get("Version"), "mdm-byod", "Servers[0].Version")
    base = j["Servers"][0].get("BaseURL") or ""
    ok(base.startswith(s.url + "/"), "BaseURL %r must be under the public URL %s" % (base, s.url))


@test
def discovery_head_answers_like_get_without_body():
    r = disco(srv(), method="HEAD")
    status(r, 200)
    eq(r.content_type, "application/json", "HEAD Content-Type")
    eq(r.body, b"", "HEAD body")


@test
def discovery_serves_every_configured_domain():
    s = srv()
    r = disco(s, user="bob@other.org", host="other.org")
    status(r, 200, "discovery for other.org")
    eq(r.json()["Servers"][0]["Version"], "mdm-byod", "Version for other.org")


@test
def discovery_accepts_raw_at_and_missing_model_family():
    s = srv()
    status(disco(s, raw_query="user-identifier=alice@example.com&model-family=iPad"), 200, "unencoded @")
    r = disco(s, family=None)
    status(r, 200, "without model-family (iOS 15/16 clients)")
    eq(r.json()["Servers"][0]["Version"], "mdm-byod", "Version without model-family")


@test
def discovery_refuses_unknown_domains_with_well_known_failed():
    s = srv()
    assert_well_known_failed(disco(s, user="alice@unknown.test", host="unknown.test"), "unknown Host")
    assert_well_known_failed(disco(s, user="alice@unknown.test", host="example.com"),
                             "identifier in a domain that is not served")


@test
def discovery_bad_identifiers_are_4xx():
    s = srv()
    # Without user-identifier the Host alone may decide (Apple always sends it): only no 5xx.
    not_5xx(disco(s, raw_query="model-family=iPhone"), "discovery without user-identifier")
    for q in ("user-identifier=&model-family=iPhone", "user-identifier=nodomain",
              "user-identifier=%40example.com", "user-identifier=alice%40", "user-identifier=%00%ff%40example.com"):
        status_4xx(disco(s, raw_query=q), "discovery ?%s" % q)


@test
def discovery_other_methods_are_405():
    s = srv()
    for m in ("POST", "PUT", "DELETE", "PATCH"):
        status(disco(s, method=m), 405, "%s discovery" % m)


# --- 4/5. enrollment request and challenge -------------------------------------------------------

@test
def enrollment_without_token_gets_the_exact_challenge():
    s = srv()
    d = discovered(s)
    capture = sim.default_machine_info()
    ok(capture[:2] == b"\x30\x80", "the fixture is the real BER capture")
    for ctype, body, what in (("application/pkcs7-signature", capture, "real iOS capture"),
                              ("application/x-www-form-urlencoded", capture, "iOS 15 form-urlencoded variant"),
                              ("application/xml", sim.bare_machine_info(), "bare MachineInfo plist"),
                              (None, capture, "no Content-Type")):
        h = d.enroll_headers()
        if ctype:
            h["Content-Type"] = ctype
        else:
            del h["Content-Type"]
        s.assert_challenge(s.request("POST", d.base_url, body=body, headers=h), what)


@test
def enrollment_with_bad_tokens_gets_the_challenge():
    s = srv()
    d = discovered(s)
    good = signed_in(s).token
    for auth in ("Bearer " + base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode(),  # unknown
                 "Bearer", "Bearer ", "Bearer  " + good + "x", "Basic " + base64.b64encode(b"alice:x").decode(),
                 "Bearer " + good[:-1], "Bearer " + "A" * 3000, "Bearer a\tb", "Token " + good, "bearer" + good,
                 "Bearer " + good + "," + good):
        h = d.enroll_headers()
        h["Authorization"] = auth
        s.assert_challenge(s.request("POST", d.base_url, body=d.machine_info, headers=h), "Authorization: %.40r" % auth)


@test
def garbage_enrollment_bodies_are_400_and_do_not_burn_the_token():
    s = srv()
    d = signed_in(s)
    capture = sim.default_machine_info()
    for body, what in ((b"", "empty"), (os.urandom(512), "random bytes"), (b"\x30\x80" + os.urandom(64), "truncated BER"),
                       (capture[:len(capture) // 2], "half the capture"), (b"<?xml version=\"1.0\"?><plist><dict><key>",
                                                                           "broken plist"),
                       (b"\x30\x82\xff\xff" + b"\x00" * 32, "DER length beyond the body"),
                       (plistlib.dumps(["not", "a", "dict"]), "plist that is not a dict")):
        r = d.post_enroll(token=d.token, body=body)
        status(r, 400, "enrollment body: " + what)
        r = d.post_enroll(token=None, body=body)
        not_5xx(r, "enrollment body without token: " + what)
        status_4xx(r, "enrollment body without token: " + what)
    d.fetch_profile()  # the token still works


@test
def unknown_token_replay_is_401():
    s = srv()
    d = discovered(s)
    s.assert_challenge(d.post_enroll(token=base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()),
                       "random token")


# --- 5.1 web sign-in -----------------------------------------------------------------------------

@test
def signin_page_has_one_prefilled_form():
    s = srv()
    d = discovered(s)
    url = d.enroll_unauthenticated()
    eq(url, s.url + "/auth/signin", "challenge url")
    r, page, jar, page_url = d.open_signin()
    status(r, 200, "sign-in page")
    eq(r.content_type, "text/html", "sign-in page Content-Type")
    eq(len(page.forms), 1, "number of forms")
    form = page.forms[0]
    eq(form["method"], "post", "form method")
    pw = [i for i in form["inputs"] if sim.input_type(i) == "password"]
    ids = [i for i in form["inputs"] if sim.input_type(i) in ("text", "email")]
    hidden = [i for i in form["inputs"] if sim.input_type(i) == "hidden"]
    eq(len(pw), 1, "password inputs")
    eq(len(ids), 1, "text/email inputs")
    eq(ids[0].get("value"), "alice@example.com", "identifier pre-filled from user-identifier")
    ok(hidden, "the form must carry a hidden CSRF input: %r" % form["inputs"])
    ok(any(m.get("name") == "viewport" for m in page.meta), "no <meta name=viewport> for the phone web view")


@test
def signin_page_escapes_the_identifier():
    s = srv()
    d = device(s)
    evil = 'x"><script>alert(1)</script>@example.com'
    r, page, _, _ = d.open_signin(url=s.url + "/auth/signin", user_identifier=evil)
    not_5xx(r, "sign-in page with markup in user-identifier")
    ok(b"<script>alert(1)" not in r.body, "user-identifier reflected unescaped:\n  " + r.describe(2000))


@test
def correct_password_redirects_308_with_a_token():
    s = srv()
    d = discovered(s)
    d.enroll_unauthenticated()
    r, page, jar, page_url = d.open_signin()
    r = d.submit_form(page_url, page.login_form(), d.form_fields(page.login_form(), d.user, ALICE[2]), jar)
    status(r, 308, "sign-in with the right password")
    m = orchard.LOGIN_LOCATION_RE.match(r.header("Location") or "")
    ok(m, "Location %r is not apple-remotemanagement-user-login://authentication-results?access-token=T"
       % r.header("Location"), r)
    token = m.group(1)
    ok(len(token) >= 43, "token %r is shorter than 256 bits in base64url" % token)
    d2 = signed_in(s)
    ok(d2.token != token, "two sign-ins must yield different tokens")


def _failed_signin(s, identifier, password):
    d = device(s, (identifier, None, password))
    d.challenge_url = s.url + "/auth/signin"
    r, page, jar, page_url = d.open_signin()
    status(r, 200, "sign-in page for %s" % identifier)
    r = d.submit_form(page_url, page.login_form(), d.form_fields(page.login_form(), identifier, password), jar)
    status_4xx(r, "sign-in %s with a wrong password" % identifier)
    ok(not (r.header("Location") or "").startswith("apple-remotemanagement-user-login"), "a token after failure", r)
    ok(b"access-token" not in r.body, "failure page mentions access-token", r)
    eq(r.content_type, "text/html", "failure page Content-Type")
    return r, sim.HtmlPage(r.text).text.replace(identifier, "<ID>")


@test
def wrong_password_and_unknown_user_fail_alike():
    s = srv()
    r1, t1 = _failed_signin(s, "alice@example.com", "not-the-password")
    r2, t2 = _failed_signin(s, "nobody@example.com", "not-the-password")
    eq(r2.status, r1.status, "status for an unknown user vs a wrong password")
    eq(t2, t1, "page text for an unknown user vs a wrong password (user enumeration)")
    ok(t1.strip(), "the failure page must show a message")


@test
def signin_without_or_with_bad_csrf_is_refused():
    s = srv()
    d = discovered(s)
    d.enroll_unauthenticated()
    for mutate, what in ((lambda i: None, "hidden inputs removed"),
                         (lambda i: (i.get("name"), (i.get("value") or "") + "x"), "hidden values altered"),
                         (lambda i: (i.get("name"), ""), "hidden values empty")):
        r, page, jar, page_url = d.open_signin()
        form = page.login_form()
        fields = []
        for i in form["inputs"]:
            if not i.get("name"):
                continue
            t = sim.input_type(i)
            if t == "hidden":
                f = mutate(i)
                if f:
                    fields.append(f)
            elif t == "password":
                fields.append((i["name"], ALICE[2]))
            elif t in ("text", "email"):
                fields.append((i["name"], ALICE[0]))
        r = d.submit_form(page_url, form, fields, jar)
        status_4xx(r, "sign-in POST with " + what)
        ok(sim.token_from_location(r) is None, "a token despite " + what, r)
    r = s.request("POST", "/auth/signin", body=b"", headers={"Content-Type": "application/x-www-form-urlencoded"})
    status_4xx(r, "empty sign-in POST")


@test
def signin_rate_limit_answers_429_even_with_the_right_password():
    s = Server(domains=("example.com", "other.org"), name="ratelimit",
               env={"ORCHARD_SIGNIN_RATE_LIMIT": "3", "ORCHARD_DEBUG_CLOCK": "true"})
    try:
        s.add_user(*ALICE)
        s.add_user(*BOB)
        s.start()
        for i in range(3):
            r, _ = _failed_signin(s, ALICE[0], "wrong-%d" % i)
            ok(r.status != 429, "attempt %d is within the limit of 3 but got 429" % (i + 1), r)
        d = device(s)
        d.challenge_url = s.url + "/auth/signin"
        r, page, jar, page_url = d.open_signin()
        r = d.submit_form(page_url, page.login_form(), d.form_fields(page.login_form(), ALICE[0], ALICE[2]), jar)
        status(r, 429, "4th attempt with the right password")
        ok(sim.token_from_location(r) is None, "a token while rate limited", r)
        b = device(s, BOB)
        b.challenge_url = s.url + "/auth/signin"
        r, page, jar, page_url = b.open_signin()
        r = b.submit_form(page_url, page.login_form(), b.form_fields(page.login_form(), BOB[0], BOB[2]), jar)
        status(r, 429, "another user from the same address (per-address limit)")
        s.advance_clock(16 * 60)
        d.sign_in(url=s.url + "/auth/signin")  # the 15-minute window has passed
    finally:
        s.stop()


@test
def behind_a_trusted_proxy_the_signin_limit_keys_on_the_forwarded_client_address():
    # A load balancer in front of Orchard: every request comes from its address, and the
    # client's is in X-Forwarded-For. Only a trusted peer's header is believed, and only its
    # right-most untrusted hop (what the client wrote itself proves nothing).
    s = Server(domains=("example.com",), name="ratelimit-proxy",
               env={"ORCHARD_SIGNIN_RATE_LIMIT": "3", "ORCHARD_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.0/8"})
    try:
        s.add_user(*ALICE)
        s.add_user(*BOB)
        s.start()

        def attempt(who, password, xff):
            d = device(s, who)
            d.challenge_url = s.url + "/auth/signin"
            r, page, jar, page_url = d.open_signin()
            form = page.login_form()
            return d.submit_form(page_url, form, d.form_fields(form, who[0], password), jar,
                                 extra_headers={"X-Forwarded-For": xff})

        for i in range(3):  # three unknown identifiers: only the per-address limit counts
            r = attempt(("u%d@example.com" % i, None, "x"), "wrong", "203.0.113.5")
            ok(r.status != 429, "failure %d from 203.0.113.5 is within the limit" % (i + 1), r)
        r = attempt(ALICE, ALICE[2], "203.0.113.5")
        status(r, 429, "the right password from the limited client address")
        r = attempt(ALICE, ALICE[2], "198.51.100.77, 203.0.113.5, 10.1.2.3")
        status(r, 429, "a spoofed left-most hop does not escape the limit")
        r = attempt(BOB, BOB[2], "203.0.113.6")
        ok(sim.token_from_location(r) is not None,
           "another client behind the same proxy signs in (the proxy's own address is not limited)", r)
        audit = s.api("GET", "/api/v1/audit").text
        ok("203.0.113.5" in audit, "signin.fail is audited with the client's address: %s" % audit[:300])
        ok(b"client=203.0.113.5" in open(s.log_path, "rb").read(), "the access log names the client")
    finally:
        s.stop()


# --- 5/6. tokens and the profile -----------------------------------------------------------------

@test
def required_app_id_is_announced_in_the_profile():
    """PROTOCOL 13.5: with required_app_id set, the MDM payload carries RequiredAppIDForMDM
    (an integer); without it the key is absent."""
    d = signed_in(srv())
    d.fetch_profile()
    d.verify_profile()
    ok("RequiredAppIDForMDM" not in d.mdm_payload, "absent by default")
    s = Server(name="reqapp", env={"ORCHARD_REQUIRED_APP_ID": "1234567890"})
    try:
        s.add_user(*ALICE)
        s.start()
        d = signed_in(s)
        d.fetch_profile()
        d.verify_profile()
        eq(d.mdm_payload.get("RequiredAppIDForMDM"), 1234567890, "RequiredAppIDForMDM")
    finally:
        s.stop()


@test
def profile_is_a_signed_byod_enrollment_profile():
    s = srv()
    d = signed_in(s)
    d.fetch_profile()
    eq(d.last.content_type, "application/x-apple-aspen-config", "profile Content-Type")
    ok(d.profile_der[:1] == b"\x30", "profile body must be DER CMS")
    p = d.verify_profile()  # openssl cms -verify -CAfile signing/ca.pem
    eq(p.get("PayloadType"), "Configuration", "PayloadType")
    eq(p.get("PayloadVersion"), 1, "PayloadVersion")
    ok(p.get("PayloadIdentifier") and p.get("PayloadUUID"), "top-level PayloadIdentifier/PayloadUUID: %r" % p)
    uuids = [p["PayloadUUID"]] + [x.get("PayloadUUID") for x in p["PayloadContent"]]
    eq(len(set(uuids)), len(uuids), "PayloadUUIDs must be unique")
    m = d.mdm_payload
    eq(m.get("AssignedManagedAppleID"), ALICE[1], "AssignedManagedAppleID")
    eq(m.get("EnrollmentMode"), "BYOD", "EnrollmentMode")
    ok("AccessRights" not in m, "AccessRights must be absent in a BYOD profile: %r" % m.get("AccessRights"))
    ok("ManagedAppleID" not in m, "legacy ManagedAppleID must not be sent")
    for k in ("ServerURL", "CheckInURL"):
        ok((m.get(k) or "").startswith(s.url + "/"), "%s %r must be https under %s" % (k, m.get(k), s.url))
    eq(m.get("Topic"), pki.uid_of(pki.load_cert(s.path("push", "cert.pem"))), "Topic = push certificate UID")
    ok(m["Topic"].startswith("com.apple.mgmt."), "Topic prefix")
    eq(m.get("SignMessage"), True, "SignMessage")
    eq(m.get("CheckOutWhenRemoved"), True, "CheckOutWhenRemoved")
    ok(isinstance(m.get("ServerCapabilities"), list), "ServerCapabilities must be an array")
    eq(m.get("PayloadVersion"), 1, "mdm PayloadVersion")
    sc = d.scep_payload.get("PayloadContent") or {}
    eq(sc.get("URL"), s.url + "/scep", "SCEP URL")
    ok(isinstance(sc.get("Challenge"), str) and len(sc["Challenge"]) >= 16, "SCEP Challenge: %r" % sc.get("Challenge"))
    eq(sc.get("Keysize"), 2048, "SCEP Keysize")
    eq(sc.get("Key Type"), "RSA", "SCEP Key Type")
    ok(isinstance(sc.get("Key Usage"), int), "SCEP Key Usage")


@test
def profile_is_served_for_every_body_form():
    s = srv()
    d = signed_in(s)
    for ctype, body, what in (("application/x-www-form-urlencoded", sim.default_machine_info(), "iOS 15 variant"),
                              ("application/pkcs7-signature", sim.default_machine_info(), "real capture"),
                              ("application/xml", sim.bare_machine_info(), "bare MachineInfo plist")):
        h = d.enroll_headers(d.token)
        h["Content-Type"] = ctype
        r = s.request("POST", d.base_url, body=body, headers=h)
        status(r, 200, "profile for the " + what)
        eq(r.content_type, "application/x-apple-aspen-config", "profile Content-Type for the " + what)
        eq(d.verify_profile(r.body)["PayloadType"], "Configuration", "profile for the " + what)


@test
def profile_signer_is_the_signing_identity():
    s = srv()
    d = signed_in(s)
    d.fetch_profile()
    tmp = tempfile.mkdtemp(dir=s.tmp)
    src, signer = os.path.join(tmp, "p.der"), os.path.join(tmp, "signer.pem")
    open(src, "wb").write(d.profile_der)
    p = subprocess.run(["openssl", "cms", "-verify", "-noverify", "-inform", "DER", "-in", src, "-signer", signer,
                        "-out", os.devnull], capture_output=True, text=True)
    eq(p.returncode, 0, "openssl cms -verify -noverify (%s)" % p.stderr.strip())
    eq(pki.cert_der(pki.load_cert(signer)), pki.cert_der(pki.load_cert(s.path("signing", "cert.pem"))),
       "profile signer = signing/cert.pem")
    other, _ = pki.make_ca("not the signer")
    pki.write_pem(os.path.join(tmp, "other.pem"), other)
    p = subprocess.run(["openssl", "cms", "-verify", "-inform", "DER", "-in", src, "-CAfile",
                        os.path.join(tmp, "other.pem"), "-purpose", "any", "-out", os.devnull],
                       capture_output=True, text=True)
    ok(p.returncode != 0, "the profile must not verify against an unrelated CA")


@test
def profiles_carry_each_users_managed_apple_id():
    s = srv()
    d = signed_in(s, BOB)
    d.fetch_profile()
    d.verify_profile()
    eq(d.mdm_payload.get("AssignedManagedAppleID"), BOB[1], "bob's AssignedManagedAppleID")


@test
def retried_profile_request_with_the_same_token_succeeds():
    s = srv()
    d = signed_in(s)
    d.fetch_profile()
    first = d.verify_profile()
    d.fetch_profile()
    second = d.verify_profile()
    eq(second.get("PayloadIdentifier"), first.get("PayloadIdentifier"), "PayloadIdentifier is stable")
    d.scep_enroll()  # the challenge of the latest profile works


@test
def expired_enrollment_token_gets_the_challenge():
    s = Server(name="tokenttl", env={"ORCHARD_DEBUG_CLOCK": "true", "ORCHARD_ENROLL_TOKEN_TTL": "60"})
    try:
        s.add_user(*ALICE)
        s.start()
        status(s.api("POST", "/api/v1/debug/clock", {"advance": 1}, key=None), 401, "debug clock without a key")
        d = signed_in(s)
        d.fetch_profile()  # fresh token works
        s.advance_clock(120)
        s.assert_challenge(d.post_enroll(token=d.token), "token older than enroll_token_ttl")
        d.sign_in()
        d.fetch_profile()
    finally:
        s.stop()


# --- 6.4 SCEP ------------------------------------------------------------------------------------

@test
def scep_getcacaps_advertises_aes_sha256_post_and_renewal():
    s = srv()
    r = s.get("/scep?operation=GetCACaps")
    status(r, 200)
    caps = {l.strip().lower() for l in r.text.splitlines() if l.strip()}
    for c in ("AES", "SHA-256", "POSTPKIOperation", "Renewal"):
        ok(c.lower() in caps, "GetCACaps must list %s: %r" % (c, r.text))


@test
def scep_getcacert_returns_the_scep_ca():
    s = srv()
    r = s.get("/scep?operation=GetCACert")
    status(r, 200)
    ca_der = pki.cert_der(pki.load_cert(s.path("scep", "ca.pem")))
    if r.content_type == "application/x-x509-ca-cert":
        eq(r.body, ca_der, "GetCACert body = scep/ca.pem (DER)")
    else:
        eq(r.content_type, "application/x-x509-ca-ra-cert", "GetCACert Content-Type")
        tmp = tempfile.mkdtemp(dir=s.tmp)
        open(os.path.join(tmp, "c.p7"), "wb").write(r.body)
        p = subprocess.run(["openssl", "pkcs7", "-inform", "DER", "-in", os.path.join(tmp, "c.p7"), "-print_certs"],
                           capture_output=True)
        ok(ca_der in [pki.cert_der(c) for c in _certs_from_pem(p.stdout)], "GetCACert chain must contain scep/ca.pem")


def _certs_from_pem(data):
    from cryptography import x509
    return [x509.load_pem_x509_certificate(b"-----BEGIN CERTIFICATE-----" + blk.split(b"-----END CERTIFICATE-----")[0]
                                           + b"-----END CERTIFICATE-----\n")
            for blk in data.split(b"-----BEGIN CERTIFICATE-----")[1:]]


def openssl_verify(ca, cert):
    return subprocess.run(["openssl", "verify", "-CAfile", ca, cert], capture_output=True, text=True)


@test
def scep_with_the_challenge_issues_a_verifiable_certificate():
    s = srv()
    d = signed_in(s)
    d.fetch_profile()
    d.verify_profile()
    cert_path, key_path = d.scep_enroll()
    p = openssl_verify(s.path("scep", "ca.pem"), cert_path)
    eq(p.returncode, 0, "openssl verify -CAfile scep/ca.pem (%s %s)" % (p.stdout.strip(), p.stderr.strip()))
    eq(d.cert.public_key().public_numbers(), d.key.public_key().public_numbers(), "certificate carries our key")
    eq(d.cert.issuer, pki.load_cert(s.path("scep", "ca.pem")).subject, "issuer")
    # the challenge is spent: a proper SCEP FAILURE CertRep (scepclient prints its failInfo)
    e = orchard.raises(sim.ScepError, d.scep_enroll, d.scep_challenge)
    ok("failInfo" in str(e), "a reused challenge must get a SCEP FAILURE CertRep: %s" % e)


@test
def scep_with_a_wrong_challenge_issues_nothing():
    s = srv()
    d = signed_in(s)
    d.fetch_profile()
    d.verify_profile()
    e = orchard.raises(sim.ScepError, d.scep_enroll, "wrong-" + uuid.uuid4().hex)
    ok("failInfo" in str(e), "a wrong challenge must get a SCEP FAILURE CertRep: %s" % e)
    e = orchard.raises(sim.ScepError, d.scep_enroll, None)  # no challenge at all
    ok("failInfo" in str(e), "a missing challenge must get a SCEP FAILURE CertRep: %s" % e)
    d.scep_enroll()  # the right one still works afterwards


@test
def scep_renewal_issues_a_new_certificate():
    s = srv()
    d = signed_in(s)
    d.fetch_profile()
    d.verify_profile()
    d.scep_enroll()
    old = d.cert
    d.scep_renew()
    ok(d.cert.serial_number != old.serial_number, "renewal must issue a new certificate")
    eq(d.cert.public_key().public_numbers(), old.public_key().public_numbers(), "renewed certificate key")
    p = openssl_verify(s.path("scep", "ca.pem"), d.cert_path)
    eq(p.returncode, 0, "renewed certificate verifies (%s)" % p.stdout.strip())


@test
def scep_renewal_with_a_foreign_certificate_is_refused():
    s = srv()
    d = signed_in(s)
    d.fetch_profile()
    d.verify_profile()
    work = tempfile.mkdtemp(dir=s.tmp)
    ca, ca_key = pki.make_ca("Someone else's CA")
    key = pki.new_key()
    pki.write_pem(os.path.join(work, "cert.pem"), pki.issue(ca, ca_key, key.public_key()))
    pki.write_pem(os.path.join(work, "key.pem"), key=key)
    before = open(os.path.join(work, "cert.pem"), "rb").read()
    p = d.run_scepclient(work, challenge=None)
    after = open(os.path.join(work, "cert.pem"), "rb").read()
    ok(p.returncode != 0 and after == before, "RenewalReq signed by a foreign certificate got a certificate "
       "(exit %d): %s" % (p.returncode, p.stderr[-300:]))


@test
def scep_garbage_is_4xx():
    s = srv()
    for method, path, body in (("POST", "/scep?operation=PKIOperation", os.urandom(300)),
                               ("POST", "/scep?operation=PKIOperation", b""),
                               ("POST", "/scep?operation=PKIOperation", b"\x30\x80" + os.urandom(40)),
                               ("GET", "/scep?operation=PKIOperation&message=" + urllib.parse.quote(
                                   base64.b64encode(os.urandom(200)).decode()), None),
                               ("GET", "/scep?operation=PKIOperation&message=%%%", None),
                               ("GET", "/scep?operation=Bogus", None), ("GET", "/scep", None)):
        r = s.request(method, path, body=body)
        not_5xx(r, "%s %s" % (method, path[:60]))
        ok(r.status >= 400 or r.content_type == "application/x-pki-message",
           "%s %s must be refused (4xx or a SCEP FAILURE CertRep)" % (method, path[:60]), r)


# --- issue 13: what SCEP issues, to whom, and at what cost -----------------------------------------

def issued_cert(path):
    from cryptography import x509
    return x509.load_pem_x509_certificate(open(path, "rb").read())


@test
def scep_chooses_the_subject_and_copies_nothing_from_the_csr():
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    s = srv()
    d = signed_in(s)
    d.fetch_profile()
    d.verify_profile()
    work = tempfile.mkdtemp(dir=s.tmp)
    # A CSR that names itself an administrator of Apple and asks to be a CA for a DNS name;
    # scepclient sends the csr.pem it finds beside the key as it is.
    with open(os.path.join(work, "req.cnf"), "w") as f:
        f.write("[req]\ndistinguished_name=dn\nattributes=attrs\nprompt=no\n[dn]\nCN=admin\nO=Apple\n"
                "OU=Security\n[attrs]\nchallengePassword=%s\n" % d.scep_challenge)
    subprocess.run(["openssl", "genrsa", "-traditional", "-out", os.path.join(work, "key.pem"), "2048"],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "req", "-new", "-config", os.path.join(work, "req.cnf"), "-key",
                    os.path.join(work, "key.pem"), "-out", os.path.join(work, "csr.pem"),
                    "-addext", "subjectAltName=DNS:mdm.apple.com", "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign"], check=True, capture_output=True)
    p = subprocess.run([sim.SCEPCLIENT, "-server-url", d.scep_url, "-private-key", os.path.join(work, "key.pem"),
                        "-certificate", os.path.join(work, "cert.pem"), "-challenge", d.scep_challenge],
                       capture_output=True, text=True, timeout=90, env=dict(os.environ, SSL_CERT_FILE=s.ca_file))
    eq(p.returncode, 0, "scepclient (%s %s)" % (p.stdout.strip(), p.stderr.strip()[-300:]))
    c = issued_cert(os.path.join(work, "cert.pem"))
    cn = c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    org = c.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    eq(len(cn), 1, "one CN")
    ok(cn[0].value != "admin", "the CN is Orchard's, not the CSR's: %s" % c.subject.rfc4514_string())
    ok(re.match(r"^[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}$", cn[0].value, re.I),
       "the CN is a random id: %r" % cn[0].value)
    eq([a.value for a in org], ["Orchard"], "O is the organisation (org_name)")
    eq(c.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME), [], "no OU from the CSR")
    exts = {e.oid: e.value for e in c.extensions}
    ok(x509.SubjectAlternativeName.oid not in exts, "no subjectAltName from the CSR")
    eq(exts[x509.BasicConstraints.oid].ca, False, "not a CA")
    ku = exts[x509.KeyUsage.oid]
    ok(ku.digital_signature and ku.key_encipherment and not ku.key_cert_sign, "keyUsage")
    eq(list(exts[x509.ExtendedKeyUsage.oid]), [ExtendedKeyUsageOID.CLIENT_AUTH], "extendedKeyUsage clientAuth")
    # Two devices never share a subject.
    d2 = signed_in(s)
    d2.fetch_profile()
    d2.verify_profile()
    d2.scep_enroll(cn="admin")
    ok(d2.cert.subject != c.subject, "each certificate gets its own subject")


def renewal_server():
    return _policy_srv()


_policy = {}


def _policy_srv():
    if "s" not in _policy:
        s = Server(name="scep-policy", env={"ORCHARD_DEBUG_CLOCK": "true", "ORCHARD_SCHEDULER_INTERVAL": "1",
                                            "ORCHARD_REAUTH_GRACE": "1h", "ORCHARD_SIGNIN_RATE_LIMIT": "1000"})
        s.add_user(*ALICE)
        s.start()
        _policy["s"] = s
    return _policy["s"]


def _wait(pred, what, s):
    import time
    for _ in range(100):
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting for " + what + "\n" + s.log_tail(20))


def _state(s, d):
    return s.api("GET", "/api/v1/enrollments/%s" % d.enrollment_id).json()["auth_state"]


@test
def scep_renewal_is_refused_for_unenrolled_and_failed_enrollments():
    s = renewal_server()
    active = device(s).run_enrollment()
    active.scep_renew()  # an active, enrolled device renews
    # Unenrolled (CheckOut): refused, whether for the state or for the revoked certificate.
    gone = device(s).run_enrollment()
    gone.checkout()
    eq(_state(s, gone), "unenrolled", "after CheckOut")
    e = orchard.raises(sim.ScepError, gone.scep_renew)
    ok("failInfo" in str(e), "an unenrolled device's renewal gets a SCEP FAILURE: %s" % e)
    failed = device(s, auto_reauth=False).run_enrollment()
    status(s.api("POST", "/api/v1/enrollments/%s/reauthenticate" % failed.enrollment_id), 202, "reauthenticate")
    s.advance_clock(2 * 3600)  # the grace period runs out
    _wait(lambda: _state(s, failed) == "reauth_failed", "reauth_failed", s)
    e = orchard.raises(sim.ScepError, failed.scep_renew)
    ok("failInfo" in str(e), "a device that failed re-authentication cannot renew: %s" % e)
    acts = [(a["action"], a["target"], a["detail"]) for a in s.api("GET", "/api/v1/audit").json()["events"]]
    ok(("scep.refuse", failed.enrollment_id, "reauth_failed") in acts, "refusal audited: %r" % acts[:8])
    ok(("scep.refuse", gone.enrollment_id, "unenrolled") in acts or
       ("scep.refuse", gone.enrollment_id, "signer_revoked") in acts, "refusal audited: %r" % acts[:8])


def _fixture_ca_server(name, **env):
    """A server whose SCEP CA is the spec fixture's, so its captured scepclient PKCSReq (challenge
    "secret", encrypted to that CA) can be replayed: a full decryption every time."""
    s = Server(name=name, env=env)
    fx = os.path.join(orchard.FIXTURES, "scep")
    shutil.copy(os.path.join(fx, "ca.pem"), s.path("scep", "ca.pem"))
    subprocess.run(["openssl", "pkey", "-in", os.path.join(fx, "ca.key"), "-passin", "pass:", "-out",
                    s.path("scep", "ca.key")], check=True, capture_output=True)
    os.chmod(s.path("scep", "ca.key"), 0o600)
    s.start()
    with open(os.path.join(fx, "PKCSReq-scepclient-2.1.0.der"), "rb") as f:
        return s, f.read()


def _post_scep(conn, msg, headers=None):
    import http.client  # noqa: F401
    import time
    h = {"Content-Type": "application/x-pki-message"}
    h.update(headers or {})
    t0 = time.perf_counter()
    conn.request("POST", "/scep?operation=PKIOperation", body=msg, headers=h)
    r = conn.getresponse()
    body = r.read()
    return r.status, r.getheader("Retry-After"), r.getheader("Content-Type"), body, time.perf_counter() - t0


@test
def scep_refusals_are_limited_per_address_before_any_ca_key_work():
    import http.client
    import statistics
    s, msg = _fixture_ca_server("scep-limit", ORCHARD_SCEP_RATE_LIMIT="5", ORCHARD_TRUSTED_PROXIES="127.0.0.1")
    conn = http.client.HTTPSConnection("127.0.0.1", s.port, context=s.ctx(), timeout=30)
    try:
        # Five made-up challenges: each is decrypted with the CA key and answered with a signed
        # CertRep FAILURE (what a SCEP client understands), and audited.
        full = []
        for i in range(5):
            st, _, ctype, body, dt = _post_scep(conn, msg)
            eq(st, 200, "refusal %d is a CertRep" % (i + 1))
            eq(ctype, "application/x-pki-message", "CertRep content type")
            full.append(dt)
        # From now on, this address gets a cheap 429: no decryption, no signature, no audit row.
        cheap = []
        for i in range(20):
            st, retry, _, body, dt = _post_scep(conn, msg)
            eq(st, 429, "request %d after the budget" % (i + 1))
            eq(retry, "900", "Retry-After")
            cheap.append(dt)
        st, _, _, _, _ = _post_scep(conn, os.urandom(300))
        eq(st, 429, "even garbage is not parsed once the budget is used up")
    finally:
        conn.close()
    full_ms, cheap_ms = statistics.median(full) * 1000, statistics.median(cheap) * 1000
    orchard.log("  SCEP refusal: %.2f ms with the CA key, %.2f ms once limited (medians)" % (full_ms, cheap_ms))
    ok(cheap_ms < full_ms / 3, "a limited refusal costs far less (%.2f ms vs %.2f ms)" % (cheap_ms, full_ms))
    events = s.api("GET", "/api/v1/audit?limit=500").json()["events"]
    eq(sum(1 for e in events if e["action"] == "scep.refuse"), 5, "one audit row per full refusal only")
    m = s.get("/metrics")
    ok(re.search(r'orchard_rate_limited_total\{limit="scep"\} (2[1-9]|[3-9][0-9])', m.text),
       "the cheap refusals are counted in /metrics")
    # The budget is per address, IPv6 per /64 (behind a trusted proxy).
    conn = http.client.HTTPSConnection("127.0.0.1", s.port, context=s.ctx(), timeout=30)
    try:
        for i in range(5):
            st = _post_scep(conn, msg, {"X-Forwarded-For": "2001:db8:7:7::%x" % (i + 1)})[0]
            eq(st, 200, "refusal %d from one /64" % (i + 1))
        eq(_post_scep(conn, msg, {"X-Forwarded-For": "2001:db8:7:7:abcd::1"})[0], 429, "same /64, new address")
        eq(_post_scep(conn, msg, {"X-Forwarded-For": "2001:db8:7:8::1"})[0], 200, "another /64")
    finally:
        conn.close()
    s.stop()


# --- the simulator -------------------------------------------------------------------------------

@test
def simulator_walks_discovery_to_idle():
    s = srv()
    d = device(s)
    d.run_enrollment()
    eq([step for step, _ in d.log[:2]], ["discover", "enroll"], "first steps")
    eq(d.idle(), None, "Idle with an empty queue")
    eq(len(d.last.body), 0, "empty 200 has a zero-length body")


@test
def simulator_cli_enrolls_idles_and_checks_out():
    s = srv()
    state = os.path.join(tempfile.mkdtemp(dir=s.tmp), "dev.json")
    base = [sys.executable, os.path.join(HERE, "..", "sim", "device.py"), "--url", s.url, "--user", ALICE[0],
            "--ca", s.ca_file, "--signing-ca", s.path("signing", "ca.pem"), "--state", state]
    env = dict(os.environ, ORCHARD_SIM_PASSWORD=ALICE[2])
    for cmd in ("enroll", "idle", "checkin", "idle", "checkout"):
        p = subprocess.run(base + [cmd], capture_output=True, text=True, timeout=180, env=env)
        eq(p.returncode, 0, "device.py %s exit code (stderr: %s)" % (cmd, p.stderr.strip()[-500:]))
        out = json.loads(p.stdout.strip().splitlines()[-1])
        if cmd == "enroll":
            eq(out.get("assigned_managed_apple_id"), ALICE[1], "CLI enroll AssignedManagedAppleID")
        if cmd == "idle":
            eq(out.get("commands"), [], "CLI idle with an empty queue")


if __name__ == "__main__":
    orchard.main()
