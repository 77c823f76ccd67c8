#!/usr/bin/python3
"""
The PostgreSQL backend against the real binary: `orchard init --storage postgres://...` migrates
a fresh database and creates no SQLite file, `orchard serve` on it enrolls a simulated device and
runs its commands, and two `orchard serve` instances on one database behave as one server behind
a load balancer (the device's requests alternate between them; either admin API sees everything,
and a bulk push is sent once, by whichever instance holds it).

The server is ORCHARD_TEST_PG_DSN (tests/run.sh starts one with scripts/test-pg.sh). Each run
creates its own database orchard_it_<random> with psql and drops it at exit. Without the variable
every test FAILs: PostgreSQL is never skipped silently.
"""
import os
import secrets
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "sim"))
import device as sim  # noqa: E402
import orchard  # noqa: E402
from apns import Stub  # noqa: E402
from orchard import Server, eq, ok, on_exit, status, test  # noqa: E402

PG_DSN = os.environ.get("ORCHARD_TEST_PG_DSN") or ""
ALICE = ("alice@example.com", "alice@appleid.example.com", "alice-Pa55word!")
_db = None  # (name, dsn) of this run's database


def dsn_for(base, dbname):
    """The libpq URI `base` with its database replaced: postgresql://[auth]/DBNAME[?params]."""
    scheme, rest = base.split("://", 1)
    cut = min([i for i in (rest.find("/"), rest.find("?")) if i >= 0] or [len(rest)])
    auth, tail = rest[:cut], rest[cut:]
    if tail.startswith("/"):
        q = tail.find("?")
        tail = tail[q:] if q >= 0 else ""
    return "%s://%s/%s%s" % (scheme, auth, dbname, tail)


def psql(dsn, sql):
    """Runs sql with psql; returns the unaligned output lines."""
    p = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-c", sql],
                       capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise AssertionError("psql %r failed (%d): %s" % (sql, p.returncode, p.stderr.strip()))
    return [line for line in p.stdout.splitlines() if line]


def database():
    """This run's database, created on first use: (name, dsn)."""
    global _db
    ok(PG_DSN.startswith(("postgres://", "postgresql://")),
       "PostgreSQL was not started: ORCHARD_TEST_PG_DSN is not set (tests/run.sh starts a "
       "server with scripts/test-pg.sh; by hand: eval \"$(scripts/test-pg.sh start)\")")
    if _db is None:
        name = "orchard_it_" + secrets.token_hex(6)
        psql(PG_DSN, "CREATE DATABASE %s" % name)
        _db = (name, dsn_for(PG_DSN, name))
    return _db


@on_exit
def _drop_database():
    if _db is not None:
        # main() has stopped every server by now; FORCE covers a server that would not stop.
        psql(PG_DSN, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % _db[0])


def scalar(sql):
    rows = psql(database()[1], sql)
    return rows[0] if rows else None


_srv = None


def srv():
    """Instance A: initialised on this run's database (init=False: the harness's init has no
    --storage), with Alice added through the CLI, which writes to PostgreSQL too."""
    global _srv
    if _srv is None:
        _, dsn = database()
        s = Server(init=False, name="pg-a")
        s.cli("init", "--data", s.data, "--public-url", s.url, "--domain", "example.com",
              "--storage", dsn)
        s.add_user(*ALICE)
        s.start()
        _srv = s
    return _srv


def new_device(s, who=ALICE):
    return sim.Device(s.url, who[0], who[2], ca_file=s.ca_file, signing_ca=s.path("signing", "ca.pem"),
                      workdir=tempfile.mkdtemp(prefix="dev-", dir=s.tmp), auto_reauth=False)


def enqueue(s, eid, request_type="ProfileList"):
    r = s.api("POST", "/api/v1/enrollments/%s/commands" % eid, {"request_type": request_type})
    status(r, 201, "enqueue %s on %s" % (request_type, s.url))
    return r.json()["command_uuid"]


def command_status(s, u):
    r = s.api("GET", "/api/v1/commands/%s" % u)
    status(r, 200, "GET command %s on %s" % (u, s.url))
    return r.json()["status"]


# --- init ----------------------------------------------------------------------------------------

@test
def init_with_a_postgres_dsn_migrates_the_database_and_creates_no_sqlite_file():
    s = srv()
    ok(not os.path.exists(s.path("orchard.db")), "init --storage postgres:// must not create orchard.db")
    with open(s.path("orchard.conf")) as f:
        conf = f.read()
    ok("storage = " + database()[1] in conf, "orchard.conf must name the DSN:\n" + conf)
    version = int(scalar("SELECT max(version) FROM schema_migrations"))
    ok(version >= 1, "schema_migrations must record the migrations, got %r" % version)
    eq(int(scalar("SELECT count(*) FROM schema_migrations")), version, "each migration recorded once")
    eq(scalar("SELECT email FROM users"), ALICE[0], "the user added through the CLI is in PostgreSQL")
    eq(int(scalar("SELECT count(*) FROM api_keys")), 1, "the harness's API key is in PostgreSQL")


@test
def init_against_an_unreachable_server_fails_without_echoing_the_password():
    s = Server(init=False, name="pg-bad")
    p = s.cli("init", "--data", s.data, "--public-url", s.url, "--domain", "example.com", "--storage",
              "postgresql://orchard:hunter2-secret@/orchard?host=/nonexistent-dir&connect_timeout=2",
              check=False)
    ok(p.returncode != 0, "init must fail when the database cannot be reached")
    out = p.stdout + p.stderr
    ok("pgsql" in out, "the error must name the backend: %r" % out)
    ok("hunter2-secret" not in out, "the error must not echo the password: %r" % out)


# --- serve ---------------------------------------------------------------------------------------

_dev = None


def enrolled():
    global _dev
    if _dev is None:
        _dev = new_device(srv()).run_enrollment()
    return _dev


@test
def serve_on_postgres_enrolls_a_device_and_runs_its_commands():
    s = srv()
    r = s.get("/healthz")
    status(r, 200, "healthz on PostgreSQL")
    d = enrolled()
    eq(scalar("SELECT count(*) FROM enrollments WHERE id = '%s'" % d.enrollment_id), "1",
       "the enrollment is a row in PostgreSQL")
    ok(scalar("SELECT push_token FROM enrollments WHERE id = '%s'" % d.enrollment_id),
       "TokenUpdate stored the push token")
    u1, u2 = enqueue(s, d.enrollment_id), enqueue(s, d.enrollment_id)
    done = d.run_commands()
    eq([c["CommandUUID"] for c in done], [u1, u2], "both commands, in order")
    eq(command_status(s, u1), "acknowledged", "status of the first command")
    eq(command_status(s, u2), "acknowledged", "status of the second command")
    eq(d.idle(), None, "nothing left to send")
    eq(int(scalar("SELECT count(*) FROM command_history WHERE enrollment_id = '%s' AND uuid NOT LIKE '%s%%'"
                  % (d.enrollment_id, sim.INVENTORY_PREFIX))), 2, "both results are in history (the inventory's aside)")
    r = s.api("GET", "/api/v1/enrollments/%s" % d.enrollment_id)
    status(r, 200, "the enrollment through the API")


@test
def two_instances_on_one_database_serve_one_device_alternately():
    a = srv()
    d = enrolled()
    # Instance B: the same data directory (identities, config: what a second host behind the
    # load balancer would have) and so the same database, on its own port.
    b = Server(init=False, name="pg-b")
    b.data = a.data
    b._api_key = a.api_key
    b.start()
    try:
        status(b.get("/healthz"), 200, "healthz on B")
        r = b.api("GET", "/api/v1/enrollments")
        status(r, 200, "list on B")
        ok(d.enrollment_id in r.text, "B lists the device enrolled through A: %s" % r.text[:300])

        # The device's requests alternate between the instances, as a load balancer would send
        # them; commands are enqueued on either one.
        urls = {"a": (d.server_url, d.checkin_url)}
        urls["b"] = tuple(u.replace(a.url, b.url) for u in urls["a"])
        d.run_commands()  # whatever an earlier failed test left behind
        uuids = [enqueue(a if i % 2 else b, d.enrollment_id) for i in range(6)]
        got, i = [], 0
        d.server_url, d.checkin_url = urls["a"]
        cmd = d.idle()
        while cmd is not None and len(got) < 20:
            got.append(cmd["CommandUUID"])
            i += 1
            d.server_url, d.checkin_url = urls["b" if i % 2 else "a"]
            cmd = d.report(cmd["CommandUUID"], "Acknowledged")
        d.server_url, d.checkin_url = urls["a"]
        eq(got, uuids, "every command exactly once, in order, across both instances")
        for u in uuids:
            eq(command_status(a, u), "acknowledged", "A sees the result of %s" % u)
            eq(command_status(b, u), "acknowledged", "B sees the result of %s" % u)
        # A check-in through B updates the row A reads.
        d.server_url, d.checkin_url = urls["b"]
        d.token_update()
        d.server_url, d.checkin_url = urls["a"]
        eq(d.idle(), None, "nothing left on either instance")
    finally:
        eq(b.stop(), 0, "B exits cleanly on SIGTERM")


@test
def two_instances_share_a_bulk_push_and_one_takes_over_when_the_other_stops():
    a = srv()
    n = 300
    # Pushable devices of one user, straight into the database (random 32-byte hex tokens).
    psql(database()[1], "INSERT INTO users (email, managed_apple_id, created_at) "
                        "VALUES ('bulk@example.com', 'm-bulk', 1)")
    psql(database()[1], "INSERT INTO enrollments (id, type, user_id, push_token, push_magic, "
                        "token_updated_at, last_seen_at) SELECT 'BULK-' || lpad(i::text, 4, '0'), 1, "
                        "(SELECT id FROM users WHERE email = 'bulk@example.com'), "
                        "md5(random()::text) || md5(random()::text), 'MAGIC-' || i, 1, 1 "
                        "FROM generate_series(1, %d) AS i" % n)
    toks = set(psql(database()[1], "SELECT push_token FROM enrollments WHERE id LIKE 'BULK-%'"))
    eq(len(toks), n, "distinct tokens")
    st = Stub(a)
    st.script(default={"status": 200, "delay_ms": 100})
    push_env = {"ORCHARD_APNS_URL": st.url, "ORCHARD_APNS_CA_FILE": a.ca_file, "ORCHARD_PUSH_BATCH": "20"}
    eq(a.stop(), 0, "A stops")
    a.start(env=push_env)
    b = Server(init=False, name="pg-b-push")
    b.data = a.data
    b._api_key = a.api_key
    b.start(env=push_env)
    try:
        r = a.api("POST", "/api/v1/push", {"user": "bulk@example.com"})
        status(r, 202, "bulk push through A")
        eq(r.json(), {"queued": n}, "queued")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and st.stats()["answered"] < 60:
            time.sleep(0.05)
        # A stops in the middle: it gives back the page it had claimed, and B carries on.
        eq(a.stop(), 0, "A stops during the bulk push")
        before = st.stats()["answered"]
        ok(60 <= before < n, "stopped in the middle (%d of %d answered)" % (before, n))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and st.stats()["answered"] < n:
            time.sleep(0.1)
        time.sleep(1.5)
        paths = [q["path"][len("/3/device/"):] for q in st.requests()]
        eq(len(paths), n, "requests in total (A, then B)")
        eq(set(paths), toks, "every device")
        ok(all(q["status"] == 200 for q in st.requests()), "all answered 200")
        eq(scalar("SELECT count(*) FROM push_bulk"), "0", "the finished bulk push is gone")
    finally:
        eq(b.stop(), 0, "B exits cleanly on SIGTERM")
        if not a.running():
            a.start()


@test
def two_instances_share_one_signin_failure_budget():
    # A password guesser spreading attempts over the instances behind the load balancer gets
    # one budget, not one per instance: the counters live in the shared database.
    a = srv()
    env = {"ORCHARD_SIGNIN_RATE_LIMIT": "3"}
    pair = []
    for name in ("pg-c-rl", "pg-d-rl"):
        x = Server(init=False, name=name)
        x.data = a.data
        x._api_key = a.api_key
        x.start(env=env)
        pair.append(x)
    c, d = pair
    ident = "guess-%s@example.com" % secrets.token_hex(3)

    def attempt(s):
        dev = new_device(s, (ident, None, "wrong-password"))
        dev.challenge_url = s.url + "/auth/signin"
        r, page, jar, page_url = dev.open_signin()
        form = page.login_form()
        return dev.submit_form(page_url, form, dev.form_fields(form, ident, "wrong-password"), jar)

    try:
        for i, s in enumerate((c, d, c)):
            r = attempt(s)
            ok(400 <= r.status < 500 and r.status != 429, "failure %d is within the budget: %d" % (i + 1, r.status))
        status(attempt(d), 429, "the 4th attempt, on the instance that saw only one failure")
        status(attempt(c), 429, "and on the other")
        eq(scalar("SELECT count(*) FROM signin_failures WHERE key LIKE '%%@%%'"), "0",
           "identifiers and addresses are stored hashed")
    finally:
        for x in pair:
            eq(x.stop(), 0, "%s exits cleanly" % x.url)


if __name__ == "__main__":
    orchard.main()
