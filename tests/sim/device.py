#!/usr/bin/python3
"""
Orchard device simulator: plays an iPhone doing account-driven User Enrollment, straight from
../shared/spec/PROTOCOL.md, against a running Orchard server. It is both a module (tests import
`Device`) and a command-line tool:

    /usr/bin/python3 tests/sim/device.py --url https://127.0.0.1:PORT --user alice@example.com \
        --password secret --ca DATA/tls/ca.pem [--signing-ca DATA/signing/ca.pem] \
        [--state /tmp/dev.json] enroll|checkin|idle|checkout|discover

The walk (PROTOCOL section 1): discovery (3) -> POST BaseURL without token, 401 challenge (4, 5)
-> web sign-in through the HTML form, 308 to apple-remotemanagement-user-login (5.1) -> POST
BaseURL with the bearer token, signed profile (6) -> SCEP identity with Debian's scepclient (6.4)
-> check-in Authenticate/TokenUpdate (8) -> command channel (9). Every check-in and connect
request carries `Authorization: Bearer`, `Mdm-Signature` (detached CMS, 10.2) and the identity
as TLS client certificate (10.1). A 401 with a challenge on those makes the device sign in
again and retry once (re-authentication, 7.2) when it knows the password.

What it is not: a fuzzer or a load generator; it does what a well-behaved device does, and the
tests drive the misbehaviour explicitly through the low-level `put()`.
"""
import argparse
import base64
import html.parser
import http.cookies
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

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import orchard  # noqa: E402  (HTTPS helpers)
import pki  # noqa: E402  (Mdm-Signature)

from cryptography.hazmat.primitives import hashes  # noqa: E402

DEFAULT = object()  # "use the device's own value" for put() arguments
LOGIN_SCHEME = "apple-remotemanagement-user-login"
CHECKIN_TYPE = "application/x-apple-aspen-mdm-checkin"
CONNECT_TYPE = "application/x-apple-aspen-mdm"
SCEPCLIENT = os.environ.get("SCEPCLIENT", "scepclient")


class DeviceError(Exception):
    """A protocol step did not get the answer a real device needs. .resp is the Response."""

    def __init__(self, msg, resp=None):
        super().__init__(msg + (("\n  " + resp.describe()) if resp is not None else ""))
        self.resp = resp


class ScepError(DeviceError):
    pass


# ---------------------------------------------------------------------------------------------
# Small parsers
# ---------------------------------------------------------------------------------------------

def parse_challenge(value):
    """Parses `Bearer method="apple-as-web", url="..."` (comma or space separated, as devices
    tolerate both). Returns (scheme, {param: value}) or (None, {})."""
    if not value:
        return None, {}
    m = re.match(r"\s*([A-Za-z][A-Za-z0-9_-]*)\s+(.*)$", value)
    if not m:
        return None, {}
    params = dict((k.lower(), v) for k, v in re.findall(r'([A-Za-z][A-Za-z0-9_-]*)="([^"]*)"', m.group(2)))
    return m.group(1), params


class HtmlPage(html.parser.HTMLParser):
    """Forms (action, method, inputs) and visible text of an HTML page."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.forms = []
        self.texts = []
        self.meta = []
        self._form = None
        self._skip = 0
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = {k: (v if v is not None else "") for k, v in attrs}
        if tag == "form":
            self._form = {"action": a.get("action"), "method": (a.get("method") or "get").lower(), "inputs": []}
            self.forms.append(self._form)
        elif tag in ("input", "button", "select", "textarea") and self._form is not None:
            a["_tag"] = tag
            self._form["inputs"].append(a)
        elif tag in ("script", "style", "title"):
            self._skip += 1
        elif tag == "meta":
            self.meta.append(a)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if tag == "form":
            self._form = None
        elif tag in ("script", "style", "title") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip and data.strip():
            self.texts.append(" ".join(data.split()))

    @property
    def text(self):
        return " ".join(self.texts)

    def login_form(self):
        """The one form with a password input (None if there is none)."""
        with_pw = [f for f in self.forms if any(i.get("type", "").lower() == "password" for i in f["inputs"])]
        return with_pw[0] if len(with_pw) == 1 else None


def input_type(i):
    return (i.get("type") or ("submit" if i.get("_tag") == "button" else "text")).lower()


class CookieJar:
    """Just enough of a browser cookie jar for one origin."""

    def __init__(self):
        self.cookies = {}

    def update(self, resp):
        for h in resp.header_all("Set-Cookie"):
            c = http.cookies.SimpleCookie()
            try:
                c.load(h)
            except http.cookies.CookieError:
                continue
            for k, m in c.items():
                if m["max-age"] == "0" or m.value == "":
                    self.cookies.pop(k, None)
                else:
                    self.cookies[k] = m.value

    def header(self):
        return "; ".join("%s=%s" % kv for kv in self.cookies.items())


# CommandUUIDs of Orchard's inventory rounds start so (src/storage/storage.h ST_INV_UUID_PREFIX).
INVENTORY_PREFIX = "00000000-0000-8"

# What a user-enrolled device of each platform answers to DeviceInformation: only queries that
# Apple's schema lets a user enrollment ask there get an answer (a real device leaves out the
# others), and the values look like the platform's own.
DEVICE_VALUES = {
    "ios": {"OSVersion": "18.2.1", "BuildVersion": "22C161", "ProductName": "iPhone12,1",
            "ModelName": "iPhone", "Model": "MWLT2", "DeviceName": "iPhone", "IsSupervised": False,
            "IsMultiUser": False, "BatteryLevel": 0.5, "TimeZone": "Europe/Berlin",
            "DeviceCapacity": 128.0, "AvailableDeviceCapacity": 41.52},
    "macos": {"OSVersion": "15.2", "BuildVersion": "24C101", "ProductName": "Mac14,2", "Model": "Mac14,2",
              "ModelName": "MacBook Air", "DeviceName": "Ann's MacBook Air", "IsSupervised": False,
              "DeviceCapacity": 494.38, "AvailableDeviceCapacity": 201.2},
    "visionos": {"OSVersion": "2.2", "BuildVersion": "22N842", "ProductName": "RealityDevice14,1",
                 "ModelName": "Apple Vision Pro", "DeviceName": "Apple Vision Pro", "IsSupervised": False,
                 "DeviceCapacity": 256.0, "AvailableDeviceCapacity": 99.0},
}
# Queries a user enrollment may not ask (the schema's forbidden lists; the device answers none).
FORBIDDEN_QUERIES = {"UDID", "SerialNumber", "IMEI", "MEID", "ICCID", "WiFiMAC", "BluetoothMAC", "EthernetMAC",
                     "PhoneNumber", "PushToken", "SoftwareUpdateDeviceID", "IsActivationLockEnabled"}


def platform_of(product):
    """The platform of a ProductName, as src/mdm/platform.c reads it (anything else is iOS)."""
    if re.match(r"^(Mac|MacBook|MacBookAir|MacBookPro|Macmini|MacPro|iMac|iMacPro|VirtualMac)(\d|$)", product or ""):
        return "macos"
    if re.match(r"^RealityDevice(\d|$)", product or ""):
        return "visionos"
    return "ios"


def canned_result(command, platform="ios", device=None):
    """What a user-enrolled device of the platform would report for a command (keys per Apple's
    schema: a user-enrolled iPhone reports PasscodeCompliant but never PasscodePresent). With a
    device, its own values (OS version, installed profiles and apps) are reported."""
    rt = command.get("RequestType")
    dev = device
    if rt == "ProfileList":
        return {"ProfileList": dev.profile_list() if dev else []}
    if rt == "DeviceInformation":
        values = dict(DEVICE_VALUES.get(platform, DEVICE_VALUES["ios"]))
        if dev:
            values.update(OSVersion=dev.os_version, BuildVersion=dev.build_version, ProductName=dev.product)
            values.update(dev.device_info)
        queries = command.get("Queries", ["OSVersion"])
        return {"QueryResponses": {q: values[q] for q in queries if q in values and q not in FORBIDDEN_QUERIES}}
    if rt == "SecurityInfo":
        if platform == "macos":
            info = {"FDE_Enabled": True, "SystemIntegrityProtectionEnabled": True,
                    "AuthenticatedRootVolumeEnabled": True,
                    "ManagementStatus": {"IsUserEnrollment": True, "UserApprovedEnrollment": True}}
        else:
            info = {"HardwareEncryptionCaps": 3, "PasscodeCompliant": True,
                    "ManagementStatus": {"IsUserEnrollment": True}}
        if dev:
            info.update(dev.security_info)
        return {"SecurityInfo": info}
    if rt == "CertificateList":
        # User enrollment: only the certificates the MDM installed, here the device identity.
        certs = []
        if dev and dev.cert_path:
            with open(dev.cert_path, "rb") as f:
                pem = f.read().decode()
            der = base64.b64decode("".join(l for l in pem.splitlines() if l and not l.startswith("-----")))
            certs.append({"CommonName": dev.enrollment_id, "Data": der, "IsIdentity": True})
        return {"CertificateList": certs}
    if rt == "InstalledApplicationList":
        apps = dev.apps if dev else {}
        return {"InstalledApplicationList": [
            {"Identifier": k, "Name": v.get("Name", k), "ShortVersion": v.get("ShortVersion", "1.0"),
             "Version": v.get("Version", "1"), "Installing": False} for k, v in sorted(apps.items())]}
    if rt == "ManagedApplicationList":
        apps = dev.apps if dev else {}
        return {"ManagedApplicationList": {k: {"Status": "Managed", "ManagementFlags": 0, "HasConfiguration": False,
                                               "HasFeedback": False, "IsValidated": True,
                                               "ExternalVersionIdentifier": 0} for k in apps}}
    if rt == "ProvisioningProfileList":
        return {"ProvisioningProfileList": []}
    return {}


def installed_profile_identifier(payload):
    """The PayloadIdentifier of an InstallProfile Payload (a plist, bare or inside CMS)."""
    data = bytes(payload or b"")
    start, end = data.find(b"<?xml"), data.rfind(b"</plist>")
    if start < 0 or end < 0:
        start, end = data.find(b"bplist00"), len(data)
        if start < 0:
            return None
    else:
        end += len(b"</plist>")
    try:
        return plistlib.loads(data[start:end]).get("PayloadIdentifier")
    except Exception:
        return None


def default_machine_info():
    """The real account-driven UE enrollment body (iOS 15.7, CMS-signed MachineInfo) from the
    spec fixtures; a bare MachineInfo plist when the fixtures are not there."""
    p = os.path.join(orchard.FIXTURES, "oreore-ios-mdm", "enroll_body.b64")
    try:
        with open(p, "rb") as f:
            return base64.b64decode(f.read())
    except OSError:
        return bare_machine_info()


def bare_machine_info(product="iPhone12,1", version="22C161", language="en-US", os_version="18.2.1"):
    return plistlib.dumps({"LANGUAGE": language, "PRODUCT": product, "VERSION": version, "OS_VERSION": os_version})


# ---------------------------------------------------------------------------------------------
# The device
# ---------------------------------------------------------------------------------------------

class Device:
    def __init__(self, url, user, password=None, ca_file=None, workdir=None, model_family="iPhone",
                 machine_info=None, enroll_content_type="application/pkcs7-signature", signing_ca=None,
                 enrollment_id=None, sig_hash="sha256", auto_reauth=True, product="iPhone12,1",
                 os_version="18.2.1", build_version="22C161", timeout=30, auto_inventory=True):
        self.url = url.rstrip("/")
        self.user = user
        self.domain = user.rsplit("@", 1)[1]
        self.password = password
        self.ca_file = ca_file
        self.signing_ca = signing_ca
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="orchard-dev-", dir="/tmp")
        os.makedirs(self.workdir, exist_ok=True)
        self.model_family = model_family
        # The captured iPhone body, or a MachineInfo naming the product this device says it is
        # (Orchard takes the platform from what was recorded at enrollment).
        if machine_info is None:
            machine_info = default_machine_info() if product == "iPhone12,1" else bare_machine_info(
                product=product, version=build_version, os_version=os_version)
        self.machine_info = machine_info
        self.enroll_content_type = enroll_content_type
        self.enrollment_id = enrollment_id or str(uuid.uuid4()).upper()
        self.sig_hash = sig_hash
        self.auto_reauth = auto_reauth
        self.product, self.os_version, self.build_version = product, os_version, build_version
        self.platform = platform_of(product)
        # The device's own state, reported by ProfileList, the app lists and SecurityInfo.
        self.profiles = {}  # PayloadIdentifier -> ProfileList item, from acknowledged InstallProfile
        self.apps = {}  # bundle id -> app list fields, from acknowledged InstallApplication
        self.device_info = {}  # DeviceInformation values that override the platform's
        self.security_info = {}  # SecurityInfo keys that override the platform's
        # Orchard's inventory rounds are answered like a real device would, out of the tests'
        # way (idle/report never return them) unless auto_inventory is False.
        self.auto_inventory = auto_inventory
        self.inventory_answered = []  # the inventory commands answered so, in order
        self._received = {}  # CommandUUID -> command, to apply what an acknowledgement does
        self.timeout = timeout
        self.push_token = os.urandom(32)
        self.push_magic = str(uuid.uuid4()).upper()
        # Filled in along the walk.
        self.base_url = None
        self.challenge_url = None
        self.token = None
        self.tokens = []  # every token obtained, oldest first
        self.reauth_count = 0
        self.profile_der = None
        self.profile = None
        self.mdm_payload = None
        self.scep_payload = None
        self.server_url = self.checkin_url = self.topic = None
        self.scep_url = self.scep_challenge = None
        self.cert_path = self.key_path = None
        self.cert = self.key = None
        self._scep_runs = 0
        self.last = None  # last Response
        self.log = []  # (step, status) history

    # --- plumbing -------------------------------------------------------------------------------
    def _ctx(self, client_cert=None):
        if client_cert:
            return orchard.client_context(self.ca_file, client_cert[0], client_cert[1])
        return orchard.client_context(self.ca_file)

    def _req(self, step, method, url, body=None, headers=None, client_cert=None):
        r = orchard.request(method, url, body=body, headers=headers, ctx=self._ctx(client_cert),
                            timeout=self.timeout)
        self.last = r
        self.log.append((step, r.status))
        return r

    def cleanup(self):
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # --- 3. discovery ---------------------------------------------------------------------------
    def discovery_url(self, user_identifier=None, model_family=DEFAULT):
        q = {"user-identifier": user_identifier or self.user}
        mf = self.model_family if model_family is DEFAULT else model_family
        if mf:
            q["model-family"] = mf
        return "%s/.well-known/com.apple.remotemanagement?%s" % (self.url, urllib.parse.urlencode(q))

    def discover(self):
        r = self._req("discover", "GET", self.discovery_url(), headers={"Host": self.domain, "Accept": "*/*"})
        if r.status != 200:
            raise DeviceError("discovery failed", r)
        try:
            servers = json.loads(r.body)["Servers"]
        except (ValueError, KeyError, TypeError):
            raise DeviceError("discovery answer is not {\"Servers\": [...]}", r)
        byod = [s for s in servers if isinstance(s, dict) and s.get("Version") == "mdm-byod"]
        if not byod or not byod[0].get("BaseURL"):
            raise DeviceError("discovery offers no mdm-byod server", r)
        self.base_url = byod[0]["BaseURL"]
        return self.base_url

    # --- 4/5. enrollment request and challenge --------------------------------------------------
    def enroll_headers(self, token=None):
        h = {"Content-Type": self.enroll_content_type, "User-Agent": "DeviceManagementClient/1.0",
             "Accept": "*/*", "Accept-Language": "en-US,en;q=0.9"}
        if token:
            h["Authorization"] = "Bearer " + token
        return h

    def post_enroll(self, token=None, body=None):
        return self._req("enroll", "POST", self.base_url, body=self.machine_info if body is None else body,
                         headers=self.enroll_headers(token))

    def enroll_unauthenticated(self):
        """POST BaseURL without a token; returns the challenge URL of the 401."""
        r = self.post_enroll()
        if r.status != 401:
            raise DeviceError("expected 401 to an unauthenticated enrollment request", r)
        scheme, params = parse_challenge(r.header("WWW-Authenticate"))
        if (scheme or "").lower() != "bearer" or params.get("method") != "apple-as-web" or not params.get("url"):
            raise DeviceError("401 without a usable apple-as-web challenge", r)
        self.challenge_url = params["url"]
        return self.challenge_url

    # --- 5.1 web sign-in ------------------------------------------------------------------------
    def signin_page_url(self, url=None, user_identifier=None):
        url = url or self.challenge_url
        sep = "&" if "?" in url else "?"
        return url + sep + urllib.parse.urlencode({"user-identifier": user_identifier or self.user})

    def open_signin(self, url=None, user_identifier=None, jar=None):
        """GET the sign-in page like ASWebAuthenticationSession (following same-origin
        redirects). Returns (Response, HtmlPage, CookieJar, page_url)."""
        jar = jar or CookieJar()
        page_url = self.signin_page_url(url, user_identifier)
        for _ in range(5):
            h = {"Accept": "text/html", "User-Agent": "Mozilla/5.0 (iPhone) Orchard-sim"}
            if jar.cookies:
                h["Cookie"] = jar.header()
            r = self._req("signin-page", "GET", page_url, headers=h)
            jar.update(r)
            loc = r.header("Location")
            if r.status in (301, 302, 303, 307, 308) and loc and not loc.startswith(LOGIN_SCHEME + ":"):
                page_url = urllib.parse.urljoin(page_url, loc)
                continue
            break
        return r, HtmlPage(r.text), jar, page_url

    @staticmethod
    def form_fields(form, identifier, password):
        fields = []
        for i in form["inputs"]:
            n = i.get("name")
            t = input_type(i)
            if not n or i.get("disabled") is not None:
                continue
            if t == "password":
                fields.append((n, password))
            elif t in ("text", "email"):
                fields.append((n, i.get("value") or identifier))
            elif t in ("checkbox", "radio"):
                if i.get("checked") is not None:
                    fields.append((n, i.get("value", "on")))
            elif t in ("submit", "button", "image", "reset"):
                continue
            else:  # hidden and anything else
                fields.append((n, i.get("value", "")))
        return fields

    def submit_form(self, page_url, form, fields, jar, origin=True, extra_headers=None):
        action = urllib.parse.urljoin(page_url, form["action"] or page_url)
        h = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "text/html",
             "User-Agent": "Mozilla/5.0 (iPhone) Orchard-sim"}
        h.update(extra_headers or {})
        if origin:  # what a browser sends with a form POST
            h["Origin"] = self.url
            h["Referer"] = page_url
        if jar.cookies:
            h["Cookie"] = jar.header()
        r = self._req("signin-post", "POST", action, body=urllib.parse.urlencode(fields), headers=h)
        jar.update(r)
        return r

    def sign_in(self, password=None, url=None):
        """Runs the web sign-in; returns (and keeps) the access token."""
        password = self.password if password is None else password
        if password is None:
            raise DeviceError("no password to sign in with")
        r, page, jar, page_url = self.open_signin(url)
        if r.status != 200:
            raise DeviceError("sign-in page did not load", r)
        form = page.login_form()
        if form is None:
            raise DeviceError("sign-in page has no single form with a password input", r)
        r = self.submit_form(page_url, form, self.form_fields(form, self.user, password), jar)
        for _ in range(5):  # an IdP may bounce through more pages before the final redirect
            loc = r.header("Location") or ""
            if r.status in (301, 302, 303, 307) and loc and not loc.startswith(LOGIN_SCHEME + ":"):
                nxt = urllib.parse.urljoin(r.url, loc)
                h = {"Cookie": jar.header()} if jar.cookies else {}
                r = self._req("signin-redirect", "GET", nxt, headers=h)
                jar.update(r)
                continue
            break
        token = token_from_location(r)
        if token is None:
            raise DeviceError("sign-in did not end with 308 to %s://authentication-results" % LOGIN_SCHEME, r)
        self.token = token
        self.tokens.append(token)
        return token

    # --- 6. profile -----------------------------------------------------------------------------
    def fetch_profile(self, token=None):
        r = self.post_enroll(token or self.token)
        if r.status != 200:
            raise DeviceError("profile request with a token failed", r)
        if r.content_type != "application/x-apple-aspen-config":
            raise DeviceError("profile Content-Type is not application/x-apple-aspen-config", r)
        self.profile_der = r.body
        return r.body

    def verify_profile(self, der=None, signing_ca=None):
        """Checks the CMS signature with `openssl cms -verify` (against signing_ca when given,
        else signature only), parses the plist with plistlib, and picks out the URLs."""
        der = der or self.profile_der
        ca = signing_ca or self.signing_ca
        d = tempfile.mkdtemp(prefix="profile-", dir=self.workdir)
        src, out = os.path.join(d, "profile.der"), os.path.join(d, "profile.plist")
        with open(src, "wb") as f:
            f.write(der)
        cmd = ["openssl", "cms", "-verify", "-inform", "DER", "-in", src, "-out", out, "-binary"]
        cmd += ["-CAfile", ca] if ca else ["-noverify"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            raise DeviceError("openssl cms -verify of the profile failed (%s): %s" % (" ".join(cmd), p.stderr.strip()))
        with open(out, "rb") as f:
            content = f.read()
        try:
            profile = plistlib.loads(content)
        except Exception as e:
            raise DeviceError("profile content is not a plist: %s: %r" % (e, content[:200]))
        self.profile = profile
        payloads = profile.get("PayloadContent") or []
        mdm = [p for p in payloads if isinstance(p, dict) and p.get("PayloadType") == "com.apple.mdm"]
        if len(mdm) != 1:
            raise DeviceError("profile must hold exactly one com.apple.mdm payload, has %d" % len(mdm))
        self.mdm_payload = mdm[0]
        ident = self.mdm_payload.get("IdentityCertificateUUID")
        scep = [p for p in payloads if isinstance(p, dict) and p.get("PayloadUUID") == ident]
        if len(scep) != 1 or scep[0].get("PayloadType") != "com.apple.security.scep":
            raise DeviceError("IdentityCertificateUUID %r does not name one com.apple.security.scep payload" % ident)
        self.scep_payload = scep[0]
        self.server_url = self.mdm_payload.get("ServerURL")
        self.checkin_url = self.mdm_payload.get("CheckInURL") or self.server_url
        self.topic = self.mdm_payload.get("Topic")
        content = self.scep_payload.get("PayloadContent") or {}
        self.scep_url = content.get("URL")
        self.scep_challenge = content.get("Challenge")
        return profile

    # --- 6.4 SCEP identity (Debian scepclient) ---------------------------------------------------
    def run_scepclient(self, d, challenge=None, cn=None, server_url=None, timeout=90):
        """Runs scepclient with key/cert in directory d. Returns CompletedProcess."""
        cmd = [SCEPCLIENT, "-server-url", server_url or self.scep_url, "-private-key", os.path.join(d, "key.pem"),
               "-certificate", os.path.join(d, "cert.pem"), "-cn", cn or self.enrollment_id,
               "-organization", "Orchard simulator", "-ou", "MDM"]
        if challenge:
            cmd += ["-challenge", challenge]
        env = dict(os.environ)
        if self.ca_file:
            env["SSL_CERT_FILE"] = self.ca_file  # Go's TLS stack reads it on Linux
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)

    def scep_enroll(self, challenge=DEFAULT, cn=None):
        """A new key and certificate from the profile's SCEP URL (PKCSReq with the challenge).
        Returns (cert_path, key_path); raises ScepError when no certificate was issued."""
        challenge = self.scep_challenge if challenge is DEFAULT else challenge
        self._scep_runs += 1
        d = os.path.join(self.workdir, "scep-%d" % self._scep_runs)
        os.makedirs(d)
        p = self.run_scepclient(d, challenge=challenge, cn=cn)
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        if p.returncode != 0 or not os.path.exists(cert):
            raise ScepError("scepclient got no certificate (exit %d): %s %s" % (p.returncode, p.stdout.strip(),
                                                                                  p.stderr.strip()[-800:]))
        self.use_identity(cert, key)
        return cert, key

    def scep_renew(self):
        """RenewalReq: scepclient with the existing certificate and key (no challenge). The new
        certificate replaces the old one; the old one is kept as old-cert.pem."""
        d = os.path.dirname(self.cert_path)
        shutil.copy(self.cert_path, os.path.join(d, "old-cert.pem"))
        try:
            os.remove(os.path.join(d, "csr.pem"))  # a fresh CSR without the spent challenge
        except FileNotFoundError:
            pass
        before = open(self.cert_path, "rb").read()
        p = self.run_scepclient(d, challenge=None)
        after = open(self.cert_path, "rb").read()
        if p.returncode != 0 or after == before:
            raise ScepError("scepclient renewal got no new certificate (exit %d): %s %s"
                            % (p.returncode, p.stdout.strip(), p.stderr.strip()[-800:]))
        self.use_identity(self.cert_path, self.key_path)
        return self.cert_path

    # --- 10.3 identity renewal (a replacement of the enrollment profile) -----------------------
    # The keys iOS refuses to see change when a profile replaces the installed one (PROTOCOL 6.3).
    FROZEN_MDM_KEYS = ("Topic", "ServerURL", "CheckInURL", "AssignedManagedAppleID", "EnrollmentMode",
                       "RequiredAppIDForMDM")

    def profile_from_install(self, command):
        """The profile an InstallProfile carries: a CMS-signed one is checked with `openssl cms
        -verify` against the profile-signing CA (as verify_profile does), a plain one parsed."""
        payload = (command.get("Command") or {}).get("Payload")
        if not isinstance(payload, bytes) or not payload:
            raise DeviceError("InstallProfile without a <data> Payload")
        if payload[:1] != b"\x30":
            return plistlib.loads(payload)
        d = tempfile.mkdtemp(prefix="install-", dir=self.workdir)
        src, out = os.path.join(d, "profile.der"), os.path.join(d, "profile.plist")
        with open(src, "wb") as f:
            f.write(payload)
        cmd = ["openssl", "cms", "-verify", "-inform", "DER", "-in", src, "-out", out, "-binary"]
        cmd += ["-CAfile", self.signing_ca] if self.signing_ca else ["-noverify"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            raise DeviceError("openssl cms -verify of the InstallProfile payload failed: %s" % p.stderr.strip())
        with open(out, "rb") as f:
            return plistlib.loads(f.read())

    @staticmethod
    def payload_of(profile, payload_type):
        found = [p for p in profile.get("PayloadContent") or [] if isinstance(p, dict)
                 and p.get("PayloadType") == payload_type]
        if len(found) != 1:
            raise DeviceError("profile must hold exactly one %s payload, has %d" % (payload_type, len(found)))
        return found[0]

    def replacement_problems(self, new):
        """Why iOS would reject `new` as an update of the installed enrollment profile (its
        frozen com.apple.mdm keys changed), or [] if it would install it."""
        old = self.profile or {}
        if new.get("PayloadIdentifier") != old.get("PayloadIdentifier"):
            return ["top-level PayloadIdentifier %r is not the installed %r"
                    % (new.get("PayloadIdentifier"), old.get("PayloadIdentifier"))]
        om, nm = self.payload_of(old, "com.apple.mdm"), self.payload_of(new, "com.apple.mdm")
        bad = ["%s changed: %r -> %r" % (k, om.get(k), nm.get(k)) for k in self.FROZEN_MDM_KEYS
               if om.get(k) != nm.get(k)]
        cap = "com.apple.mdm.per-user-connections"
        if (cap in (om.get("ServerCapabilities") or [])) != (cap in (nm.get("ServerCapabilities") or [])):
            bad.append("%s added or removed" % cap)
        return bad

    def renew_identity(self, command, challenge=DEFAULT):
        """Installs a replacement of the enrollment profile as iOS does (PROTOCOL 10.3): refuses it
        if a frozen key changed (DeviceError), runs scepclient against the SCEP payload's URL
        with its challenge (a new key; ScepError if no certificate comes back) and uses the new
        identity from then on. Returns the new profile."""
        new = self.profile_from_install(command)
        problems = self.replacement_problems(new)
        if problems:
            raise DeviceError("the replacement profile would be rejected: " + "; ".join(problems))
        mdm = self.payload_of(new, "com.apple.mdm")
        scep = [p for p in new["PayloadContent"] if isinstance(p, dict)
                and p.get("PayloadUUID") == mdm.get("IdentityCertificateUUID")]
        if len(scep) != 1 or scep[0].get("PayloadType") != "com.apple.security.scep":
            raise DeviceError("IdentityCertificateUUID does not name the SCEP payload of the replacement")
        content = scep[0].get("PayloadContent") or {}
        self.scep_url = content.get("URL") or self.scep_url
        self.scep_challenge = content.get("Challenge")
        self.scep_enroll(challenge=self.scep_challenge if challenge is DEFAULT else challenge)
        self.profile, self.mdm_payload, self.scep_payload = new, mdm, scep[0]
        return new

    def renewal_responder(self, challenge=DEFAULT, on_renewal=None):
        """A run_commands responder that renews the identity when the enrollment profile is
        replaced (and answers Acknowledged, signed with the new identity, as iOS reports after
        installing) or answers Error with an ErrorChain when SCEP fails; other commands get the
        canned results. on_renewal(profile) is called after each renewal."""
        def respond(cmd):
            c = cmd["Command"]
            if c.get("RequestType") == "InstallProfile":
                prof = self.profile_from_install(cmd)
                if self.profile and prof.get("PayloadIdentifier") == self.profile.get("PayloadIdentifier"):
                    try:
                        self.renew_identity(cmd, challenge=challenge)
                    except ScepError as e:
                        return "Error", {"ErrorChain": [{
                            "ErrorCode": 22013, "ErrorDomain": "MCSCEPErrorDomain",
                            "LocalizedDescription": "The SCEP server returned an invalid response.",
                            "USEnglishDescription": str(e)[:200]}]}
                    if on_renewal:
                        on_renewal(prof)
                    return "Acknowledged", {}
            return "Acknowledged", canned_result(c)
        return respond

    def use_identity(self, cert_path, key_path):
        self.cert_path, self.key_path = cert_path, key_path
        self.cert = pki.load_cert(cert_path)
        self.key = pki.load_key(key_path)
        orchard._ctx_cache.pop((self.ca_file, cert_path, key_path, True), None)  # the file changed

    # --- 8/9. check-in and command channel ------------------------------------------------------
    def sign(self, body, hash_name=None, cert=None, key=None):
        h = {"sha256": hashes.SHA256, "sha1": hashes.SHA1}[hash_name or self.sig_hash]()
        return pki.mdm_signature(body, cert or self.cert, key or self.key, h)

    def put(self, url, body, token=DEFAULT, signature=DEFAULT, client_cert=DEFAULT, content_type=CONNECT_TYPE,
            extra_headers=None, reauth=None, hash_name=None, step="put"):
        """One PUT as the device sends it. token/signature/client_cert: DEFAULT = the device's
        own, None = omit, anything else = use that (signature: the header value; client_cert:
        (cert_path, key_path)). On a 401 with a challenge, re-authenticates and retries once
        (if reauth, default self.auto_reauth, and token is DEFAULT)."""
        if isinstance(body, dict):
            body = plistlib.dumps(body)
        for attempt in (0, 1):
            h = {"Content-Type": content_type, "User-Agent": "MDM/1.0"}
            tok = self.token if token is DEFAULT else token
            if tok:
                h["Authorization"] = "Bearer " + tok
            sig = self.sign(body, hash_name) if signature is DEFAULT else signature
            if sig is not None:
                h["Mdm-Signature"] = sig
            h.update(extra_headers or {})
            cc = (self.cert_path, self.key_path) if client_cert is DEFAULT else client_cert
            r = self._req(step, "PUT", url, body=body, headers=h, client_cert=cc)
            do_reauth = self.auto_reauth if reauth is None else reauth
            if attempt == 0 and r.status == 401 and do_reauth and token is DEFAULT and self.password is not None:
                scheme, params = parse_challenge(r.header("WWW-Authenticate"))
                if params.get("method") == "apple-as-web" and params.get("url"):
                    self.reauth_count += 1
                    self.sign_in(url=params["url"])
                    continue
            return r
        return r

    def message(self, message_type, **keys):
        m = {"MessageType": message_type, "Topic": self.topic, "EnrollmentID": self.enrollment_id}
        m.update(keys)
        return m

    def checkin(self, msg, **kw):
        return self.put(self.checkin_url, msg, content_type=CHECKIN_TYPE, step="checkin", **kw)

    def connect(self, msg, **kw):
        return self.put(self.server_url, msg, content_type=CONNECT_TYPE, step="connect", **kw)

    def _expect(self, r, what):
        if r.status != 200:
            raise DeviceError(what + " was not accepted", r)
        return r

    def authenticate(self, **kw):
        return self._expect(self.checkin(self.message(
            "Authenticate", BuildVersion=self.build_version, OSVersion=self.os_version,
            ProductName=self.product), **kw), "Authenticate")

    def token_update(self, **kw):
        return self._expect(self.checkin(self.message(
            "TokenUpdate", Token=self.push_token, PushMagic=self.push_magic, AwaitingConfiguration=False),
            **kw), "TokenUpdate")

    def checkout(self, **kw):
        return self._expect(self.checkin(self.message("CheckOut"), **kw), "CheckOut")

    @staticmethod
    def parse_command(r):
        """The command in a connect response, or None for the empty 200."""
        if r.status != 200:
            raise DeviceError("connect request was not accepted", r)
        if len(r.body) == 0:
            return None
        try:
            cmd = plistlib.loads(r.body)
        except Exception as e:
            raise DeviceError("connect response is neither empty nor a plist (%s)" % e, r)
        if not isinstance(cmd, dict) or "CommandUUID" not in cmd or "RequestType" not in (cmd.get("Command") or {}):
            raise DeviceError("connect response plist lacks CommandUUID/Command.RequestType", r)
        return cmd

    def idle(self, **kw):
        """{Status: Idle}; returns the next command dict or None."""
        r = self.connect({"Status": "Idle", "EnrollmentID": self.enrollment_id}, **kw)
        return self._past_inventory(self.parse_command(r))

    def report(self, command_uuid, status="Acknowledged", **keys):
        """A command result; returns the next command dict or None."""
        if status == "Acknowledged":
            self._acknowledged(self._received.pop(command_uuid, None))
        body = {"Status": status, "CommandUUID": command_uuid, "EnrollmentID": self.enrollment_id}
        body.update(keys)
        return self._past_inventory(self.parse_command(self.connect(body)))

    def _past_inventory(self, cmd):
        """Answers inventory commands the way the device would and returns the next other one."""
        while cmd is not None:
            self._received[cmd["CommandUUID"]] = cmd
            if not (self.auto_inventory and cmd["CommandUUID"].startswith(INVENTORY_PREFIX)):
                return cmd
            self.inventory_answered.append(cmd)
            keys = canned_result(cmd["Command"], self.platform, self)
            body = {"Status": "Acknowledged", "CommandUUID": cmd["CommandUUID"], "EnrollmentID": self.enrollment_id}
            body.update(keys)
            cmd = self.parse_command(self.connect(body))
        return None

    def _acknowledged(self, cmd):
        """What acknowledging a command changes on the device (what its lists report later)."""
        c = (cmd or {}).get("Command") or {}
        rt = c.get("RequestType")
        if rt == "InstallProfile":
            ident = installed_profile_identifier(c.get("Payload"))
            if ident:
                self.profiles[ident] = {"PayloadIdentifier": ident, "PayloadUUID": str(uuid.uuid4()).upper(),
                                        "PayloadVersion": 1, "IsEncrypted": False, "HasRemovalPasscode": False}
        elif rt == "RemoveProfile":
            self.profiles.pop(c.get("Identifier"), None)
        elif rt == "InstallApplication" and c.get("Identifier"):
            self.apps[c["Identifier"]] = {"Name": c["Identifier"].rsplit(".", 1)[-1]}
        elif rt == "RemoveApplication":
            self.apps.pop(c.get("Identifier"), None)

    def profile_list(self):
        """ProfileList: the enrollment profile and the profiles the MDM installed."""
        items = []
        if self.profile:
            items.append({"PayloadIdentifier": self.profile.get("PayloadIdentifier"),
                          "PayloadDisplayName": self.profile.get("PayloadDisplayName", "MDM"),
                          "PayloadUUID": self.profile.get("PayloadUUID"), "PayloadVersion": 1,
                          "IsEncrypted": False, "HasRemovalPasscode": False})
        items.extend(self.profiles[k] for k in sorted(self.profiles))
        return [{k: v for k, v in i.items() if v is not None} for i in items]

    def run_commands(self, limit=100, responder=None):
        """Idle, then answer every command until the server sends the empty 200. responder(cmd)
        returns (status, keys); default: Acknowledged with canned results. Returns the commands."""
        done = []
        cmd = self.idle()
        while cmd is not None:
            if len(done) >= limit:
                raise DeviceError("more than %d commands in one session" % limit)
            done.append(cmd)
            st, keys = responder(cmd) if responder else ("Acknowledged",
                                                         canned_result(cmd["Command"], self.platform, self))
            cmd = self.report(cmd["CommandUUID"], st, **keys)
        return done

    # --- the whole walk -------------------------------------------------------------------------
    def run_enrollment(self, check_in=True):
        self.discover()
        self.enroll_unauthenticated()
        self.sign_in()
        self.fetch_profile()
        self.verify_profile()
        self.scep_enroll()
        if check_in:
            self.authenticate()
            self.token_update()
        return self

    # --- CLI state ------------------------------------------------------------------------------
    STATE_KEYS = ("base_url", "challenge_url", "token", "enrollment_id", "server_url", "checkin_url", "topic",
                  "scep_url", "cert_path", "key_path", "push_magic")

    def save_state(self, path):
        st = {k: getattr(self, k) for k in self.STATE_KEYS}
        st["push_token"] = self.push_token.hex()
        with open(path, "w") as f:
            json.dump(st, f, indent=1)

    def load_state(self, path):
        with open(path) as f:
            st = json.load(f)
        for k in self.STATE_KEYS:
            setattr(self, k, st.get(k))
        self.push_token = bytes.fromhex(st["push_token"])
        if self.cert_path:
            self.use_identity(self.cert_path, self.key_path)


def token_from_location(r):
    """The access token of a 308 to apple-remotemanagement-user-login://authentication-results."""
    if r.status != 308:
        return None
    m = orchard.LOGIN_LOCATION_RE.match(r.header("Location") or "")
    return urllib.parse.unquote(m.group(1)) if m else None


def main(argv=None):
    ap = argparse.ArgumentParser(description="Orchard account-driven User Enrollment device simulator")
    ap.add_argument("--url", required=True, help="https://127.0.0.1:PORT (where the server listens)")
    ap.add_argument("--user", required=True, help="the identifier typed in Settings, e.g. alice@example.com")
    ap.add_argument("--password", default=os.environ.get("ORCHARD_SIM_PASSWORD"))
    ap.add_argument("--ca", required=True, help="CA of the server's TLS certificate (DATA/tls/ca.pem)")
    ap.add_argument("--signing-ca", help="CA of the profile signer (DATA/signing/ca.pem); else signature-only check")
    ap.add_argument("--state", help="JSON file keeping token, URLs and identity between runs")
    ap.add_argument("--workdir", help="where keys and certificates go (default: next to --state, or a temp dir)")
    ap.add_argument("--model-family", default="iPhone")
    ap.add_argument("--sig-hash", default="sha256", choices=("sha256", "sha1"))
    ap.add_argument("--max-commands", type=int, default=100)
    ap.add_argument("command", choices=("discover", "enroll", "checkin", "idle", "checkout"))
    a = ap.parse_args(argv)
    workdir = a.workdir or (os.path.splitext(a.state)[0] + ".d" if a.state else None)
    dev = Device(a.url, a.user, a.password, a.ca, workdir=workdir, model_family=a.model_family,
                 signing_ca=a.signing_ca, sig_hash=a.sig_hash)
    try:
        if a.command in ("checkin", "idle", "checkout"):
            if not a.state or not os.path.exists(a.state):
                ap.error("%s needs --state from an earlier enroll" % a.command)
            dev.load_state(a.state)
        out = {"command": a.command}
        if a.command == "discover":
            out["base_url"] = dev.discover()
        elif a.command == "enroll":
            dev.run_enrollment()
            out.update(enrollment_id=dev.enrollment_id, server_url=dev.server_url, checkin_url=dev.checkin_url,
                       topic=dev.topic, certificate=dev.cert_path,
                       assigned_managed_apple_id=dev.mdm_payload.get("AssignedManagedAppleID"))
        elif a.command == "checkin":
            dev.authenticate()
            dev.token_update()
            out["enrollment_id"] = dev.enrollment_id
        elif a.command == "idle":
            cmds = dev.run_commands(limit=a.max_commands)
            out["commands"] = [{"CommandUUID": c["CommandUUID"], "RequestType": c["Command"]["RequestType"]}
                               for c in cmds]
        elif a.command == "checkout":
            dev.checkout()
        out["reauthentications"] = dev.reauth_count
        if a.state:
            dev.save_state(a.state)
        print(json.dumps(out))
        return 0
    except DeviceError as e:
        print("device: %s" % e, file=sys.stderr)
        return 1
    finally:
        if not a.state:
            dev.cleanup()


if __name__ == "__main__":
    sys.exit(main())
