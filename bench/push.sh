#!/usr/bin/env bash
# `make bench`, push part: fan-out of N pushes (default 100,000), a bulk push to all, to a local
# HTTP/2 TLS sink (bench/h2sink.c, client certificate required, checks each request) over one
# connection. Reports pushes/s and Orchard's peak RSS (VmHWM) before and after, for N and N/10
# devices (memory must not grow with the number of devices: the bulk push reads the devices a
# page at a time). Baseline in the same run: nghttp2's h2load sending the same number of
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

sink_port() { for _ in $(seq 50); do [ -s "$1" ] && break; sleep 0.1; done; python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["port"])' "$1"; }

# One run: fresh data dir with n devices, bulk push to all, wait until the sink has answered n.
run_orchard() {
    local n="$1" d="$WORK/data-$1" port; port=$(free_port)
    "$BIN" init --data "$d" --public-url "https://127.0.0.1:$port" --domain example.com >/dev/null 2>&1
    seed "$d/orchard.db" "$n"
    "$SINK" --cert "$d/tls/server.pem" --key "$d/tls/server.key" --client-ca "$d/push/cert.pem" \
        --expect "$n" >"$WORK/sink-$n.json" 2>"$WORK/sink-$n.log" &
    local sink=$!; pids+=($sink)
    local sport; sport=$(sink_port "$WORK/sink-$n.json")
    local key; key=$("$BIN" apikey create --data "$d" --name bench 2>/dev/null)
    ORCHARD_ACCESS_LOG=false ORCHARD_LOG_LEVEL=${BENCH_LOG_LEVEL:-warn} ORCHARD_APNS_URL="https://127.0.0.1:$sport" \
        ORCHARD_APNS_CA_FILE="$d/tls/ca.pem" ORCHARD_PUSH_BATCH="${BENCH_PUSH_BATCH:-5000}" ORCHARD_PUSH_STREAMS="${BENCH_PUSH_STREAMS:-1000}" \
        "$BIN" serve --data "$d" --listen "127.0.0.1:$port" 2>"$WORK/orchard-$n.log" &
    local pid=$!; pids+=($pid)
    wait_port "$port"
    local idle_hwm; idle_hwm=$(hwm "$pid")
    local t0 t1 q a maxanon; maxanon=$(anon "$pid"); t0=$(now)
    q=$(curl -s --cacert "$d/tls/ca.pem" -H "Authorization: Bearer $key" -d '{"all":true}' \
        "https://127.0.0.1:$port/api/v1/push")
    while kill -0 "$sink" 2>/dev/null; do
        sleep 0.02
        a=$(anon "$pid" 2>/dev/null || echo 0); [ "${a:-0}" -gt "$maxanon" ] && maxanon=$a
        if ! kill -0 "$pid" 2>/dev/null; then echo "bench: orchard died"; tail "$WORK/orchard-$n.log"; exit 1; fi
    done
    t1=$(now)
    local stats; stats=$(tail -1 "$WORK/sink-$n.json")
    local peak; peak=$(hwm "$pid")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    python3 - "$n" "$t0" "$t1" "$q" "$idle_hwm" "$peak" "$maxanon" "$stats" "$WORK/rate-$n" <<'PY'
import json, sys
n, t0, t1, q, idle, peak, anon, stats, rate_file = sys.argv[1:]
n, t0, t1 = int(n), float(t0), float(t1); st = json.loads(stats)
if st["bad"]:
    sys.exit("bench: the sink refused %d pushes as malformed" % st["bad"])
print("  orchard  %7d devices: %8.0f pushes/s  (%.2f s from the API call; %.0f/s at the sink; %s, %d connection(s))"
      % (n, n / (t1 - t0), t1 - t0, st["ok"] / st["seconds"], q, st["sessions"]))
open(rate_file, "w").write("%.0f\n" % (n / (t1 - t0)))
print("           memory: VmHWM idle %.1f MiB, peak %.1f MiB; peak RssAnon %.1f MiB"
      % (int(idle) / 1024, int(peak) / 1024, int(anon) / 1024))
PY
}

# The sink's ceiling: nghttp2's h2load, one connection, 1,000 streams in flight, same requests
# (h2load cannot present a client certificate, so this sink does not ask for one).
run_baseline() {
    local n="$1" d="$WORK/data-$1"
    "$SINK" --cert "$d/tls/server.pem" --key "$d/tls/server.key" --expect "$n" >"$WORK/sink-b.json" 2>/dev/null &
    local sink=$!; pids+=($sink)
    local sport; sport=$(sink_port "$WORK/sink-b.json")
    printf '{"mdm":"%s"}' 00000000-0000-0000-0000-000000000000 >"$WORK/body.json"
    h2load -n "$n" -c 1 -m 1000 -d "$WORK/body.json" -H 'apns-push-type: mdm' -H 'apns-topic: t' \
        -H 'apns-priority: 10' -H 'apns-expiration: 0' -H 'content-type: application/json' \
        "https://127.0.0.1:$sport/3/device/$(printf '%064d' 0)" >"$WORK/h2load.txt" 2>&1
    wait "$sink" 2>/dev/null || true
    local rps; rps=$(awk '/^finished in/ {print $4}' "$WORK/h2load.txt")
    printf "  baseline %7d requests: %8.0f req/s     (h2load -> same sink, 1 connection, 1000 streams)\n" "$n" "$rps"
    awk -v o="$(cat "$WORK/rate-$n")" -v b="$rps" 'BEGIN { printf "  ratio: orchard / baseline = %.2f\n", o / b }'
}

SINK=build/bench/h2sink
echo "push fan-out bench: bulk push to all devices -> local HTTP/2 TLS sink (bench/h2sink.c, client cert), batch ${BENCH_PUSH_BATCH:-5000}"
run_orchard $((N / 10))
run_orchard "$N"
run_baseline "$N"
echo "  target: >= 50000 pushes/s over one connection; memory flat in the number of devices"
