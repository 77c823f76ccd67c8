#!/usr/bin/env bash
# `make bench`, reconciliation part: assign one profile to a domain of N complete enrollments
# (default 100,000; 1,000 per user) in SQLite and time the reconciliation job from the API call
# (202 with the job) until GET /api/v1/jobs/{id} says done. Reported: the API answer time, the
# job's time and enrollments/s, and a check in the database that every enrollment got exactly
# one InstallProfile (the target: 100,000 in under 5 s). The push worker runs as in production,
# into a file sink (apns_url = file:), so the job shares the database with the pushes it causes.
# BENCH_RECONCILE_BATCH sets job_batch (default 250).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${BENCH_RECONCILE:-100000}"
PER_USER="${BENCH_RECONCILE_PER_USER:-1000}"
BIN=build/orchard
WORK=$(mktemp -d /tmp/orchard-bench-reconcile.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; [ -n "${BENCH_KEEP:-}" ] || rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do curl -sk "https://127.0.0.1:$1/healthz" -o /dev/null && return 0; sleep 0.1; done; return 1; }

port=$(free_port)
d="$WORK/data"
"$BIN" init --data "$d" --public-url "https://127.0.0.1:$port" --domain example.com >/dev/null 2>&1
t0=$(date +%s.%N)
build/bench/seed "$d" "$N" 0 "$WORK/unused.lua" "$PER_USER" >/dev/null
t1=$(date +%s.%N)
key=$("$BIN" apikey create --data "$d" --name bench 2>/dev/null)
ORCHARD_ACCESS_LOG=false ORCHARD_LOG_LEVEL=${BENCH_LOG_LEVEL:-warn} ORCHARD_APNS_URL="file:$WORK/pushes.jsonl" \
    ORCHARD_JOB_BATCH="${BENCH_RECONCILE_BATCH:-250}" \
    ${BENCH_WRAP:-} "$BIN" serve --data "$d" --listen "127.0.0.1:$port" 2>"$WORK/orchard.log" &
pid=$!; pids+=($pid)
wait_port "$port"

api() { curl -s --cacert "$d/tls/ca.pem" -H "Authorization: Bearer $key" "$@"; }
"$BIN" profile template wifi >"$WORK/wifi.mobileconfig"
pid_profile=$(api --data-binary @"$WORK/wifi.mobileconfig" "https://127.0.0.1:$port/api/v1/profiles" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')

python3 - "$port" "$d/tls/ca.pem" "$key" "$pid_profile" "$N" "$d/orchard.db" "$(python3 -c "print($t1 - $t0)")" \
    "$PER_USER" "${BENCH_RECONCILE_BATCH:-250}" <<'PY'
import http.client, json, sqlite3, ssl, sys, time
port, ca, key, profile, n, db, seed_s, per_user, batch = sys.argv[1:]
n = int(n)
ctx = ssl.create_default_context(cafile=ca)
ctx.check_hostname = False
# One kept-alive connection: a TLS handshake per poll would cost the server more than the poll.
conn = http.client.HTTPSConnection("127.0.0.1", int(port), context=ctx, timeout=60)
def call(method, path, body=None):
    conn.request(method, path, body=json.dumps(body) if body is not None else None,
                 headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    return r.status, json.loads(data) if data else None
t0 = time.monotonic()
st, a = call("POST", "/api/v1/assignments", {"profile_id": int(profile), "domain": "example.com"})
t_api = time.monotonic() - t0
if st != 202:
    sys.exit("bench: POST /api/v1/assignments answered %d: %r" % (st, a))
url = a["job"]["url"]
while True:
    st, j = call("GET", url)
    if st != 200:
        sys.exit("bench: GET %s answered %d" % (url, st))
    if j["state"] in ("done", "failed"):
        break
    time.sleep(0.05)
t_job = time.monotonic() - t0
db = sqlite3.connect(db)
installs = db.execute("SELECT count(*), count(DISTINCT enrollment_id) FROM commands "
                      "WHERE request_type = 'InstallProfile'").fetchone()
if j["state"] != "done" or j["done"] != n or j["installs"] != n or installs != (n, n):
    sys.exit("bench: job %r, InstallProfile commands (all, distinct enrollments) %r; expected %d"
             % (j, installs, n))
print("reconcile bench: one profile assigned to a domain of %d enrollments (SQLite, %s per user, "
      "job_batch %s)" % (n, per_user, batch))
print("  seeding (not timed):      %6.2f s" % float(seed_s))
print("  API answer (202 + job):   %6.3f s" % t_api)
print("  job, API call to done:    %6.2f s  (%8.0f enrollments/s)   target: < 5 s" % (t_job, n / t_job))
print("  %d InstallProfile commands, one per enrollment; errors %d" % (installs[0], j["errors"]))
PY
kill -INT "$pid"; wait "$pid" 2>/dev/null || true
