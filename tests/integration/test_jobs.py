#!/usr/bin/python3
"""
Issue 15, reconciliation off the request path, against `orchard serve`:

- assigning a profile to a domain answers 202 with a job at once; GET /api/v1/jobs/{id} shows the
  job's progress while it runs (state, total, done, installs, errors, timestamps) and its end;
  every enrollment gets exactly one InstallProfile;
- kill -9 in the middle of a job, restart: the job resumes from its last committed batch once
  the dead instance's lease has expired (debug clock), finishes, and no enrollment gets a second
  command;
- two instances on one PostgreSQL database: one works the job, the other cannot while the lease
  holds; the one working it is killed with -9 and the other takes over and finishes it, once,
  with no duplicate command;
- GET /api/v1/jobs/{id}: 404 for unknown or malformed ids, 401 without the API key;
- storage faults while an assignment and its job are recorded: 503 and neither, or 202 and both.

Enrollments are written straight into the database (thousands of complete enrollments; the
simulator would take minutes), as bench/push.sh does.
"""
import os
import plistlib
import secrets
import sqlite3
import subprocess
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import orchard  # noqa: E402
from orchard import Server, eq, ok, on_exit, status, test  # noqa: E402

PG_DSN = os.environ.get("ORCHARD_TEST_PG_DSN") or ""


def env(s, batch):
    return {"ORCHARD_DEBUG_CLOCK": "true", "ORCHARD_JOB_BATCH": str(batch),
            "ORCHARD_APNS_URL": "file:" + os.path.join(s.tmp, "pushes.jsonl")}


def wifi_profile(ident):
    p = {"PayloadType": "Configuration", "PayloadVersion": 1, "PayloadIdentifier": ident,
         "PayloadUUID": str(uuid.uuid4()).upper(), "PayloadDisplayName": ident,
         "PayloadContent": [{"PayloadType": "com.apple.wifi.managed", "PayloadVersion": 1,
                             "PayloadIdentifier": ident + ".wifi", "PayloadUUID": str(uuid.uuid4()).upper(),
                             "SSID_STR": "Corp", "EncryptionType": "WPA2", "AutoJoin": True}]}
    return plistlib.dumps(p)


def seed_rows(n, per_user=250):
    """(users, enrollments) rows: n complete enrollments (push token, TokenUpdate seen) of users
    jobs<i>@example.com, ids in random order."""
    users, enr = [], []
    for u in range((n + per_user - 1) // per_user):
        users.append("jobs%d@example.com" % u)
        for _ in range(min(per_user, n - u * per_user)):
            enr.append((str(uuid.uuid4()).upper(), u, os.urandom(32).hex(), str(uuid.uuid4()).upper()))
    return users, enr


def seed_sqlite(s, n):
    db = sqlite3.connect(s.path("orchard.db"), timeout=30)
    users, enr = seed_rows(n)
    with db:
        ids = [db.execute("INSERT INTO users (email, created_at) VALUES (?, 1)", (e,)).lastrowid for e in users]
        db.executemany("INSERT INTO enrollments (id, type, user_id, topic, push_token, push_magic, "
                       "product_name, token_updated_at, enrolled_at) VALUES (?, 1, ?, 't', ?, ?, 'iPhone14,5', 1, 1)",
                       ((i, ids[u], tok, magic) for i, u, tok, magic in enr))
    db.close()


def sqlite_installs(s):
    """(InstallProfile commands, distinct enrollments that have one) in the queue."""
    db = sqlite3.connect(s.path("orchard.db"), timeout=30)
    try:
        return db.execute("SELECT count(*), count(DISTINCT enrollment_id) FROM commands "
                          "WHERE request_type = 'InstallProfile'").fetchone()
    finally:
        db.close()


def upload(s, ident):
    r = s.api("POST", "/api/v1/profiles?platform=ios", wifi_profile(ident),
              headers={"Content-Type": "application/x-apple-aspen-config"})
    status(r, 201, "upload")
    return r.json()["id"]


def assign_domain(s, pid):
    r = s.api("POST", "/api/v1/assignments", {"profile_id": pid, "domain": "example.com"})
    status(r, 202, "assign to the domain: accepted, not done")
    j = r.json()
    eq(r.header("Location"), j["job"]["url"], "Location is the job")
    return j["job"]["url"]


def job(s, url):
    r = s.api("GET", url)
    status(r, 200, "GET " + url)
    return r.json()


def wait_for(pred, what, timeout=120, every=0.01):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        ok(time.monotonic() < deadline, "timed out waiting for " + what)
        time.sleep(every)


# --- progress ------------------------------------------------------------------------------------

@test("a domain assignment answers 202 with a job whose progress GET /api/v1/jobs/{id} shows")
def t_progress():
    s = Server(name="jobs-progress")
    n = 6000
    s.env.update(env(s, 50))
    seed_sqlite(s, n)
    s.start()
    pid = upload(s, "com.example.jobs.progress")
    t0 = time.monotonic()
    url = assign_domain(s, pid)
    ok(time.monotonic() - t0 < 2, "the request does not wait for the reconciliation")
    seen = []
    while True:
        j = job(s, url)
        seen.append(j)
        if j["state"] in ("done", "failed"):
            break
        time.sleep(0.005)
    first, last = seen[0], seen[-1]
    eq((first["kind"], first["scope"], first["target"]), ("reconcile", "domain", "example.com"), "the filter")
    ok(first["origin"].startswith("assignment.add "), "origin: %r" % first["origin"])
    ok(first["state"] in ("queued", "running"), "not done when the API answered: %r" % first)
    mid = [j for j in seen if j["state"] == "running" and 0 < j["done"] < n]
    ok(mid, "progress visible while the job runs (%d polls, states %r)"
       % (len(seen), sorted({(j["state"], j["done"]) for j in seen})[:6]))
    for a, b in zip(seen, seen[1:]):
        ok(b["done"] >= a["done"], "done never goes back: %d then %d" % (a["done"], b["done"]))
    eq(mid[0]["total"], n, "total known while running")
    ok(mid[0]["started_at"] and mid[0]["finished_at"] is None, "started, not finished: %r" % mid[0])
    eq(last["state"], "done", "finished")
    eq((last["total"], last["done"], last["installs"], last["removals"], last["errors"]), (n, n, n, 0, 0),
       "every enrollment worked once, one install each")
    ok(last["created_at"] <= last["started_at"] <= last["finished_at"] and last["updated_at"],
       "timestamps: %r" % last)
    eq(sqlite_installs(s), (n, n), "one InstallProfile per enrollment")
    # The end of a domain's job is one bulk push to the domain, not one outbox row per device.
    ok("event=job_push" in s.log_text(), "the job's bulk push was recorded")
    # The job endpoint itself.
    status(s.api("GET", "/api/v1/jobs/999999"), 404, "unknown job")
    status(s.api("GET", "/api/v1/jobs/abc"), 404, "not a job id")
    status(s.api("GET", "/api/v1/jobs/-1"), 404, "negative id")
    status(s.api("GET", url, key=None), 401, "no API key")
    eq(s.stop(), 0, "clean stop")


# --- kill -9 in the middle -----------------------------------------------------------------------

@test("kill -9 in the middle of a job: after a restart it finishes, with no duplicate command")
def t_kill9():
    s = Server(name="jobs-kill9")
    n = 20000
    s.env.update(env(s, 20))
    seed_sqlite(s, n)
    s.start()
    pid = upload(s, "com.example.jobs.kill9")
    url = assign_domain(s, pid)
    j = wait_for(lambda: (lambda j: j if j["state"] == "running" and 0 < j["done"] < n // 2 else None)(job(s, url)),
             "the job to be part-way", every=0.002)
    s.kill9()
    done_before = j["done"]
    installs, distinct = sqlite_installs(s)
    eq(installs, distinct, "no duplicate before the crash")
    ok(done_before <= installs < n, "killed part-way: %d committed (%d seen done)" % (installs, done_before))
    db = sqlite3.connect(s.path("orchard.db"))
    state, claimed_by, done = db.execute("SELECT state, claimed_by, done FROM jobs").fetchone()
    db.close()
    eq((state, done), (1, installs), "the job row: running, its progress that of the committed batches")
    ok(claimed_by, "still leased to the dead instance")
    # The new process is another owner: it waits for the lease rather than guessing.
    s.start()
    time.sleep(1.5)
    eq(job(s, url)["done"], installs, "nothing happens while the dead instance's lease holds")
    s.advance_clock(61)
    last = wait_for(lambda: (lambda j: j if j["state"] == "done" else None)(job(s, url)), "the job to finish")
    eq((last["done"], last["total"], last["installs"], last["errors"]), (n, n, n, 0),
       "finished, each enrollment counted once")
    eq(sqlite_installs(s), (n, n), "exactly one InstallProfile per enrollment")
    ok("event=job_started job=%d" % int(url.rsplit("/", 1)[1]) in s.log_text(), "resumed by the new instance")
    eq(s.stop(), 0, "clean stop")


# --- storage failures around a change and its job ------------------------------------------------

@test("a storage failure while a change and its job are recorded is a 503 that leaves neither")
def t_faults():
    s = Server(name="jobs-faults")
    n = 120
    s.env.update(env(s, 25))
    s.env["ORCHARD_DEBUG_FAULTS"] = "true"
    seed_sqlite(s, n)
    s.start()
    accepted, refused = [], []
    for step in (0, 1):
        for after in range(1, 9):
            pid = upload(s, "com.example.jobs.fault.%d.%d" % (step, after))
            r = s.api("POST", "/api/v1/debug/storage-fault", {"after": after, "step": bool(step)})
            status(r, 200, "arm the fault")
            r = s.api("POST", "/api/v1/assignments", {"profile_id": pid, "domain": "example.com"})
            s.api("POST", "/api/v1/debug/storage-fault", {"after": 0, "step": bool(step)})
            ok(r.status in (202, 503), "202 or 503, never anything else: %s" % r.describe())
            (accepted if r.status == 202 else refused).append((pid, r))
    ok(refused, "some faults hit the change")
    listed = {a["profile_id"] for a in s.api("GET", "/api/v1/assignments").json()["assignments"]}
    for pid, _ in refused:
        ok(pid not in listed, "a refused assignment (profile %d) is not stored" % pid)
    urls = set()
    for pid, r in accepted:
        ok(pid in listed, "an accepted assignment (profile %d) is stored" % pid)
        url = r.json()["job"]["url"]
        urls.add(url)
        last = wait_for(lambda: (lambda j: j if j["state"] == "done" else None)(job(s, url)),
                        "job of profile %d" % pid, every=0.05)
        # Two changes to the same domain while its job waits share that job (it sees both).
        eq(last["done"], n, "every enrollment worked for profile %d" % pid)
        ok(last["installs"] >= n and last["installs"] % n == 0, "whole installs: %r" % last)
    db = sqlite3.connect(s.path("orchard.db"))
    jobs = db.execute("SELECT count(*) FROM jobs").fetchone()[0]
    installs = db.execute("SELECT count(*) FROM commands WHERE request_type = 'InstallProfile'").fetchone()[0]
    items = db.execute("SELECT count(*) FROM item_state WHERE command_uuid IS NOT NULL").fetchone()[0]
    db.close()
    eq(jobs, len(urls), "a job for accepted changes only")
    eq((installs, items), (n * len(accepted), n * len(accepted)),
       "one install per enrollment and accepted profile, each claimed by its item_state row")
    eq(s.stop(), 0, "clean stop")


# --- two instances on PostgreSQL -----------------------------------------------------------------

_db = None


def psql(dsn, sql):
    p = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", dsn], input=sql,
                       capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise AssertionError("psql %r failed (%d): %s" % (sql[:80], p.returncode, p.stderr.strip()))
    return [line for line in p.stdout.splitlines() if line]


def dsn_for(base, dbname):
    scheme, rest = base.split("://", 1)
    cut = min([i for i in (rest.find("/"), rest.find("?")) if i >= 0] or [len(rest)])
    auth, tail = rest[:cut], rest[cut:]
    if tail.startswith("/"):
        q = tail.find("?")
        tail = tail[q:] if q >= 0 else ""
    return "%s://%s/%s%s" % (scheme, auth, dbname, tail)


@on_exit
def _drop_database():
    if _db is not None:
        psql(PG_DSN, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % _db[0])


@test("two instances on PostgreSQL: one works the job, the other takes over after a kill -9, once")
def t_postgres_two_instances():
    global _db
    ok(PG_DSN.startswith(("postgres://", "postgresql://")),
       "PostgreSQL was not started: ORCHARD_TEST_PG_DSN is not set (tests/run.sh starts one)")
    name = "orchard_jobs_" + secrets.token_hex(6)
    psql(PG_DSN, "CREATE DATABASE %s" % name)
    _db = (name, dsn_for(PG_DSN, name))
    dsn = _db[1]
    a = Server(init=False, name="jobs-pg-a")
    a.cli("init", "--data", a.data, "--public-url", a.url, "--domain", "example.com", "--storage", dsn)
    b = Server(init=False, name="jobs-pg-b")
    b.cli("init", "--data", b.data, "--public-url", b.url, "--domain", "example.com", "--storage", dsn)
    for s in (a, b):
        s.env.update(env(s, 20))
    n = 6000
    users, enr = seed_rows(n)
    rows = ",".join("('%s', 1)" % u for u in users)
    psql(dsn, "INSERT INTO users (email, created_at) VALUES %s" % rows)
    values = ",".join("('%s', 1, (SELECT id FROM users WHERE email = 'jobs%d@example.com'), 't', '%s', '%s', "
                      "'iPhone14,5', 1, 1)" % (i, u, tok, magic) for i, u, tok, magic in enr)
    psql(dsn, "INSERT INTO enrollments (id, type, user_id, topic, push_token, push_magic, product_name, "
              "token_updated_at, enrolled_at) VALUES " + values)
    a.start()
    b.start()
    pid = upload(a, "com.example.jobs.pg")
    url = assign_domain(a, pid)
    wait_for(lambda: (lambda j: j if j["state"] == "running" and 0 < j["done"] < n // 2 else None)(job(b, url)),
             "the job to be part-way", every=0.002)
    holder = psql(dsn, "SELECT claimed_by FROM jobs WHERE id = %s" % url.rsplit("/", 1)[1])[0]
    worker, other = (a, b) if (":%d:" % a.proc.pid) in holder else (b, a)
    ok((":%d:" % worker.proc.pid) in holder, "the job is held by one of the instances: %r" % holder)
    # The other instance cannot take it while the lease holds.
    installs = int(psql(dsn, "SELECT count(*) FROM commands WHERE request_type = 'InstallProfile'")[0])
    worker.kill9()
    time.sleep(1.5)
    now = job(other, url)
    ok(now["state"] == "running" and now["done"] <= installs + 20 * 3,
       "no takeover before the lease expires: %r" % now)
    other.advance_clock(61)
    last = wait_for(lambda: (lambda j: j if j["state"] == "done" else None)(job(other, url)), "the job to finish")
    eq((last["done"], last["total"], last["installs"], last["errors"]), (n, n, n, 0), "finished once")
    counts = psql(dsn, "SELECT count(*), count(DISTINCT enrollment_id) FROM commands "
                       "WHERE request_type = 'InstallProfile'")[0]
    eq(counts, "%d|%d" % (n, n), "exactly one InstallProfile per enrollment")
    finished = sum(s.log_text().count("event=job_finished job=%s " % url.rsplit("/", 1)[1]) for s in (a, b))
    eq(finished, 1, "finished by one instance, once")
    eq(other.stop(), 0, "clean stop")


if __name__ == "__main__":
    orchard.main()
