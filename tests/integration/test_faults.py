#!/usr/bin/python3
"""
Issue 13: storage failures leave no half-done state. A running server (config `debug_faults`)
makes its Nth next storage call fail (`POST /api/v1/debug/storage-fault`): either at the
storage wrapper (the call returns an error without reaching the database) or at the backend's
Nth round trip (a statement, BEGIN or COMMIT inside a transaction). For every N in a range, one
phase of a device's life runs with that fault armed, the device and the admin retry what got a
5xx (as real clients do), and afterwards the state must be whole:

- a storage failure is answered 5xx, never 4xx: no 401 that would make the user sign in, no
  403 that would look like "unknown device", no 200 for work that was not done;
- the phase completes on retry: the enrollment is complete, the token bound, the user active;
- every command the API confirmed (201) is delivered and acknowledged; none whose result the
  server answered 200 is handed out again;
- after a re-authentication, the old token is refused and the new one works.

SQLite always; PostgreSQL too when ORCHARD_TEST_PG_DSN is set (tests/run.sh starts one).
"""
import os
import secrets
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "sim"))
import device as sim  # noqa: E402
import orchard  # noqa: E402
from orchard import Server, eq, ok, on_exit, status, test  # noqa: E402

ALICE = ("alice@example.com", "alice@appleid.example.com", "alice-Pa55word!")
PG_DSN = os.environ.get("ORCHARD_TEST_PG_DSN") or ""
# How many next calls each phase is swept over (each N is one run of the phase).
SWEEP = int(os.environ.get("ORCHARD_FAULT_SWEEP", "18"))
ENV = {"ORCHARD_DEBUG_FAULTS": "true", "ORCHARD_SCHEDULER_INTERVAL": "3600"}
_servers = {}
_pg_dbs = []
stats = {"fired": 0, "runs": 0}


def pg_dsn():
    name = "orchard_faults_" + secrets.token_hex(5)
    subprocess.run(["psql", "-X", "-q", "-d", PG_DSN, "-c", "CREATE DATABASE %s" % name], check=True,
                   capture_output=True, timeout=60)
    _pg_dbs.append(name)
    scheme, rest = PG_DSN.split("://", 1)
    cut = min([i for i in (rest.find("/"), rest.find("?")) if i >= 0] or [len(rest)])
    tail = rest[cut:]
    q = tail.find("?")
    return "%s://%s/%s%s" % (scheme, rest[:cut], name, tail[q:] if q >= 0 else "")


@on_exit
def _drop():
    for name in _pg_dbs:
        subprocess.run(["psql", "-X", "-q", "-d", PG_DSN, "-c", "DROP DATABASE IF EXISTS %s WITH (FORCE)" % name],
                       capture_output=True, timeout=60)


def server(backend):
    if backend not in _servers:
        if backend == "sqlite":
            s = Server(name="faults-sqlite")
        else:
            s = Server(init=False, name="faults-pg")
            s.cli("init", "--data", s.data, "--public-url", s.url, "--domain", "example.com",
                  "--storage", pg_dsn())
        s.add_user(*ALICE)
        s.start(env=ENV)
        _servers[backend] = s
    return _servers[backend]


def arm(s, n, step):
    """Arms (or with n = 0 disarms) the fault; a fault left armed may hit this very call."""
    retry("arm fault", lambda: s.api("POST", "/api/v1/debug/storage-fault", {"after": n, "step": step}), (200,))


def device(s):
    return sim.Device(s.url, ALICE[0], ALICE[2], ca_file=s.ca_file, signing_ca=s.path("signing", "ca.pem"),
                      workdir=tempfile.mkdtemp(prefix="dev-", dir=s.tmp), auto_reauth=False)


def retry(what, fn, want):
    """Calls fn() until its status is in want; 5xx is retried (a fault), anything else fails."""
    for _ in range(6):
        r = fn()
        if r.status in want:
            return r
        ok(r.status >= 500, "%s: a storage failure was answered %d, not 5xx" % (what, r.status), r)
        stats["fired"] += 1
    raise AssertionError("%s: still failing after retries (%d)" % (what, r.status))


def retry_device(what, fn):
    """Like retry for the simulator's own steps, which raise DeviceError on a bad status."""
    for _ in range(6):
        try:
            return fn()
        except sim.DeviceError as e:
            r = e.resp
            ok(r is not None and r.status >= 500, "%s: failed with %s" % (what, r.status if r else e), r)
            stats["fired"] += 1
    raise AssertionError("%s: still failing after retries" % what)


def enrollment(s, d):
    return retry("GET enrollment", lambda: s.api("GET", "/api/v1/enrollments/%s" % d.enrollment_id), (200,)).json()


def sweep(phase, backend, modes=(False, True)):
    s = server(backend)
    for step in modes:
        for n in range(1, SWEEP + 1):
            stats["runs"] += 1
            try:
                phase(s, n, step)
            except AssertionError as e:
                raise AssertionError("%s fault at call %d: %s" % ("step" if step else "wrapper", n, e))
            finally:
                arm(s, 0, step)  # whatever the phase did not reach is disarmed


# ---- phases ----------------------------------------------------------------------------------

def checkin_phase(s, n, step):
    d = device(s)
    d.run_enrollment(check_in=False)
    arm(s, n, step)
    retry("Authenticate", lambda: d.checkin(d.message("Authenticate", BuildVersion=d.build_version,
                                                       OSVersion=d.os_version, ProductName=d.product)), (200,))
    retry("TokenUpdate", lambda: d.checkin(d.message("TokenUpdate", Token=d.push_token, PushMagic=d.push_magic)),
          (200,))
    arm(s, 0, step)
    e = enrollment(s, d)
    eq((e["auth_state"], e["push_token"]), ("active", True), "the enrollment is complete")
    eq(d.idle(), None, "the device checks in with its token")


def command_phase(s, n, step, _dev={}):
    d = _dev.get(s.url)
    if d is None:
        d = _dev[s.url] = device(s).run_enrollment()
    arm(s, n, step)
    confirmed = []
    for _ in range(3):
        r = s.api("POST", "/api/v1/enrollments/%s/commands" % d.enrollment_id, {"request_type": "ProfileList"})
        if r.status == 201:
            confirmed.append(r.json()["command_uuid"])
        else:
            ok(r.status >= 500, "enqueue under a fault answered %d" % r.status, r)
    acked = set()

    def run():
        r = retry("Idle", lambda: d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id}), (200,))
        cmd = d.parse_command(r)
        while cmd is not None:
            u = cmd["CommandUUID"]
            ok(u not in acked, "command %s was handed out again after its result was answered 200" % u)
            r = retry("Acknowledged", lambda: d.connect({"Status": "Acknowledged", "CommandUUID": u,
                                                          "EnrollmentID": d.enrollment_id, "ProfileList": []}),
                      (200,))
            acked.add(u)
            cmd = d.parse_command(r)
    run()
    arm(s, 0, step)
    run()  # anything left behind by a fault is delivered now
    for u in confirmed:
        c = retry("GET command", lambda: s.api("GET", "/api/v1/commands/%s" % u), (200,)).json()
        eq(c["status"], "acknowledged", "command %s confirmed by the API" % u)
        ok(u in acked, "command %s was delivered" % u)


def reauth_phase(s, n, step, _dev={}):
    d = _dev.get(s.url)
    if d is None:
        d = _dev[s.url] = device(s).run_enrollment()
    old = d.token
    arm(s, n, step)
    retry("reauthenticate", lambda: s.api("POST", "/api/v1/enrollments/%s/reauthenticate" % d.enrollment_id),
          (202,))
    r = retry("Idle after the demand", lambda: d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id}),
              (401,))
    s.assert_challenge(r)
    url = sim.parse_challenge(r.header("WWW-Authenticate"))[1]["url"]
    retry_device("sign-in", lambda: d.sign_in(url=url))
    retry("Idle with the new token", lambda: d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id}),
          (200,))
    arm(s, 0, step)
    eq(enrollment(s, d)["auth_state"], "active", "active again")
    r = d.connect({"Status": "Idle", "EnrollmentID": d.enrollment_id}, token=old)
    eq(r.status, 401, "the old token is refused", r)


def enroll_phase(s, n, step):
    d = device(s)
    d.discover()
    d.enroll_unauthenticated()
    arm(s, n, step)
    retry_device("sign-in", d.sign_in)
    for _ in range(4):
        retry_device("profile", d.fetch_profile)
        d.verify_profile()
        try:
            d.scep_enroll()
            break
        except sim.ScepError:
            stats["fired"] += 1  # a refused PKIOperation: the device fetches a new profile
    else:
        raise AssertionError("SCEP never succeeded")
    arm(s, 0, step)
    d.authenticate()
    d.token_update()
    eq(d.idle(), None, "the new enrollment checks in")


@test("storage faults during Authenticate and TokenUpdate leave a complete enrollment (SQLite)")
def t_checkin_sqlite():
    sweep(checkin_phase, "sqlite")


@test("storage faults around commands lose none and repeat none (SQLite)")
def t_commands_sqlite():
    sweep(command_phase, "sqlite")


@test("storage faults during a re-authentication leave the user active with only the new token (SQLite)")
def t_reauth_sqlite():
    sweep(reauth_phase, "sqlite")


@test("storage faults during sign-in, profile and SCEP leave an enrollment that completes (SQLite)")
def t_enroll_sqlite():
    sweep(enroll_phase, "sqlite", modes=(False,))


@test("storage faults around commands and re-authentication (PostgreSQL)")
def t_pg():
    ok(PG_DSN.startswith(("postgres://", "postgresql://")), "ORCHARD_TEST_PG_DSN is not set")
    sweep(command_phase, "pg")
    sweep(reauth_phase, "pg")


@test("the faults really fired, and the servers stop cleanly")
def t_stop():
    orchard.log("fault sweep: %d runs, %d requests answered 5xx by an injected fault" % (stats["runs"], stats["fired"]))
    ok(stats["fired"] >= stats["runs"] // 3, "too few faults reached a request: %r" % stats)
    for s in _servers.values():
        eq(s.stop(), 0, "exit code of orchard serve")


if __name__ == "__main__":
    orchard.main()
