#!/usr/bin/env bash
# `make bench`, push part: fan-out of N pushes (default 100,000) from Orchard's outbox to a local
# HTTP/2 TLS sink (tests/push/apns_stub.mjs --fast, client certificate required) over one
# connection. Reports pushes/s and Orchard's peak RSS (VmHWM) before and after, for N and N/10
# devices (memory must not grow with the number of devices: the bulk push streams through the
# outbox in batches). Baseline in the same run: a Node HTTP/2 client pushing the same number of
# requests to the same sink over one connection (the sink's ceiling). VmHWM includes the pages of
# the SQLite file mapped by mmap_size (they grow with the database); RssAnon is the heap.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${BENCH_PUSHES:-100000}"
BIN=build/orchard
WORK=$(mktemp -d /tmp/orchard-bench-push.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; [ -n "${BENCH_KEEP:-}" ] || rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do curl -sk "https://127.0.0.1:$1/healthz" -o /dev/null && return 0; sleep 0.1; done; return 1; }
hwm() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
anon() { awk '/RssAnon/ {print $2}' "/proc/$1/status"; }
now() { date +%s.%N; }

# Adds n users' worth of pushable enrollments straight into the store (1 user per 1,000).
seed() {
    python3 - "$1" "$2" <<'PY'
import os, sqlite3, sys, uuid
db = sqlite3.connect(sys.argv[1]); n = int(sys.argv[2])
with db:
    for u in range((n + 999) // 1000):
        uid = db.execute("INSERT INTO users (email, created_at) VALUES (?, 1)", ("bench%d@example.com" % u,)).lastrowid
        db.executemany("INSERT INTO enrollments (id, type, user_id, push_token, push_magic, token_updated_at) "
                       "VALUES (?, 1, ?, ?, ?, 1)",
                       ((str(uuid.uuid4()).upper(), uid, os.urandom(32).hex(), str(uuid.uuid4()).upper())
                        for _ in range(min(1000, n - u * 1000))))
PY
}

stub_stat() { curl -s "http://127.0.0.1:$CTRL/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["'"$1"'"])'; }

# One run: fresh data dir with n devices, bulk push to all, wait for n answers at the sink.
run_orchard() {
    local n="$1" d="$WORK/data-$1" port; port=$(free_port)
    "$BIN" init --data "$d" --public-url "https://127.0.0.1:$port" --domain example.com >/dev/null 2>&1
    seed "$d/orchard.db" "$n"
    node tests/push/apns_stub.mjs --fast --cert "$d/tls/server.pem" --key "$d/tls/server.key" \
        --client-ca "$d/push/cert.pem" >"$WORK/stub-$n.json" 2>"$WORK/stub-$n.log" &
    local stub=$!; pids+=($stub)
    for _ in $(seq 50); do [ -s "$WORK/stub-$n.json" ] && break; sleep 0.1; done
    local sport; sport=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["port"])' "$WORK/stub-$n.json")
    CTRL=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["control"])' "$WORK/stub-$n.json")
    local key; key=$("$BIN" apikey create --data "$d" --name bench 2>/dev/null)
    ORCHARD_ACCESS_LOG=false ORCHARD_LOG_LEVEL=${BENCH_LOG_LEVEL:-warn} ORCHARD_APNS_URL="https://127.0.0.1:$sport" \
        ORCHARD_APNS_CA_FILE="$d/tls/ca.pem" ORCHARD_PUSH_BATCH="${BENCH_PUSH_BATCH:-5000}" \
        "$BIN" serve --data "$d" --listen "127.0.0.1:$port" 2>"$WORK/orchard-$n.log" &
    local pid=$!; pids+=($pid)
    wait_port "$port"
    local idle_hwm; idle_hwm=$(hwm "$pid")
    local t0 t1 q a maxanon; maxanon=$(anon "$pid"); t0=$(now)
    q=$(curl -s --cacert "$d/tls/ca.pem" -H "Authorization: Bearer $key" -d '{"all":true}' \
        "https://127.0.0.1:$port/api/v1/push")
    while [ "$(stub_stat ok)" -lt "$n" ]; do
        sleep 0.05
        a=$(anon "$pid" 2>/dev/null || echo 0); [ "${a:-0}" -gt "$maxanon" ] && maxanon=$a
        if ! kill -0 "$pid" 2>/dev/null; then echo "bench: orchard died"; tail "$WORK/orchard-$n.log"; exit 1; fi
    done
    t1=$(now)
    local sessions; sessions=$(stub_stat sessions)
    local peak; peak=$(hwm "$pid")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    kill "$stub"; wait "$stub" 2>/dev/null || true
    awk -v n="$n" -v t0="$t0" -v t1="$t1" -v q="$q" -v i="$idle_hwm" -v p="$peak" -v s="$sessions" -v an="$maxanon" 'BEGIN {
        printf "  orchard  %7d devices: %8.0f pushes/s  (%.2f s, %s, %d connection(s))  VmHWM idle %.1f MiB, peak %.1f MiB; peak RssAnon %.1f MiB\n",
            n, n / (t1 - t0), t1 - t0, q, s, i / 1024, p / 1024, an / 1024 }'
}

# The sink's ceiling: Node's own HTTP/2 client, one session, 1,000 streams in flight.
run_baseline() {
    local n="$1" d="$WORK/data-$1"
    node tests/push/apns_stub.mjs --fast --cert "$d/tls/server.pem" --key "$d/tls/server.key" \
        --client-ca "$d/push/cert.pem" >"$WORK/stub-b.json" 2>/dev/null &
    local stub=$!; pids+=($stub)
    for _ in $(seq 50); do [ -s "$WORK/stub-b.json" ] && break; sleep 0.1; done
    local sport; sport=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["port"])' "$WORK/stub-b.json")
    node - "$sport" "$d" "$n" <<'JS'
const http2 = require('node:http2'); const fs = require('node:fs');
const [port, d, n] = [process.argv[2], process.argv[3], Number(process.argv[4])];
const s = http2.connect('https://127.0.0.1:' + port, { ca: fs.readFileSync(d + '/tls/ca.pem'),
  cert: fs.readFileSync(d + '/push/cert.pem'), key: fs.readFileSync(d + '/push/key.pem') });
let sent = 0, done = 0; const t0 = process.hrtime.bigint();
const body = JSON.stringify({ mdm: '00000000-0000-0000-0000-000000000000' });
function one() {
  if (sent >= n) return; sent++;
  const tok = (sent.toString(16)).padStart(64, '0');
  const r = s.request({ ':method': 'POST', ':path': '/3/device/' + tok, 'apns-push-type': 'mdm',
    'apns-topic': 't', 'apns-priority': '10', 'apns-expiration': '0', 'content-type': 'application/json' });
  r.on('response', () => {}); r.resume();
  r.on('end', () => { if (++done === n) { const s2 = Number(process.hrtime.bigint() - t0) / 1e9;
    console.log(`  baseline ${String(n).padStart(7)} requests: ${(n / s2).toFixed(0).padStart(8)} req/s     (${s2.toFixed(2)} s, node http2 client -> same sink, 1 connection)`); s.close(); } else one(); });
  r.end(body);
}
for (let i = 0; i < 1000; i++) one();
JS
    kill "$stub"; wait "$stub" 2>/dev/null || true
}

echo "push fan-out bench: bulk push to all devices -> local HTTP/2 TLS sink (client cert), batch ${BENCH_PUSH_BATCH:-5000}"
run_orchard $((N / 10))
run_orchard "$N"
run_baseline "$N"
echo "  target: >= 50000 pushes/s over one connection; memory flat in the number of devices"
