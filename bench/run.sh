#!/usr/bin/env bash
# `make bench`: Idle connects per second against Orchard (Mdm-Signature verification, token check,
# empty queue, 10,000 enrollments in SQLite) and, in the same run, against a trivial
# libmicrohttpd server answering an empty 200 (the ceiling). Reports both and their ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR="${BENCH_SECONDS:-10}"
CONNS="${BENCH_CONNECTIONS:-32}"
N="${BENCH_ENROLLMENTS:-10000}"
K="${BENCH_DEVICES:-100}"
BIN=build/orchard
WORK=$(mktemp -d /tmp/orchard-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do curl -sk "https://127.0.0.1:$1/" -o /dev/null && return 0; sleep 0.1; done; return 1; }
# wrk prints "Requests/sec: N" and, with --latency, " 99%  Xms"
rps() { awk '/Requests\/sec/ {print $2}' "$1"; }
p99() { awk '$1=="99%" {print $2}' "$1"; }

P1=$(free_port); P2=$(free_port)
"$BIN" init --data "$WORK/data" --public-url "https://127.0.0.1:$P1" --domain example.com >/dev/null
build/bench/seed "$WORK/data" "$N" "$K" "$WORK/devices.lua"
ORCHARD_ACCESS_LOG=false ORCHARD_LOG_LEVEL=warn "$BIN" serve --data "$WORK/data" --listen "127.0.0.1:$P1" 2>"$WORK/orchard.log" &
pids+=($!)
build/bench/baseline "$WORK/data/tls/server.pem" "$WORK/data/tls/server.key" "$P2" &
pids+=($!)
wait_port "$P1"; wait_port "$P2"

# Sanity: one signed Idle must get an empty 200, else the numbers mean nothing.
ORCHARD_BENCH_DEVICES="$WORK/devices.lua" wrk -t1 -c1 -d1s -s bench/idle.lua "https://127.0.0.1:$P1" >"$WORK/warm.txt"
non2xx=$(awk '/Non-2xx/ {print $4}' "$WORK/warm.txt")
if [ -n "$non2xx" ]; then echo "bench: Orchard answered non-2xx to signed Idle connects"; cat "$WORK/warm.txt"; tail "$WORK/orchard.log"; exit 1; fi

wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "https://127.0.0.1:$P2/" >"$WORK/base.txt"
ORCHARD_BENCH_DEVICES="$WORK/devices.lua" wrk -t1 -c"$CONNS" -d"${DUR}s" --latency -s bench/idle.lua "https://127.0.0.1:$P1" >"$WORK/idle.txt"
grep -q "Non-2xx" "$WORK/idle.txt" && { echo "bench: errors during the run"; cat "$WORK/idle.txt"; exit 1; }

b=$(rps "$WORK/base.txt"); o=$(rps "$WORK/idle.txt")
echo "idle-connect bench: $N enrollments (SQLite), $K signing devices, wrk 1 thread, $CONNS connections, ${DUR}s"
printf "  baseline (empty 200, libmicrohttpd+TLS): %10.0f req/s  p99 %s\n" "$b" "$(p99 "$WORK/base.txt")"
printf "  orchard  (signed Idle, token, queue):    %10.0f req/s  p99 %s\n" "$o" "$(p99 "$WORK/idle.txt")"
awk -v o="$o" -v b="$b" 'BEGIN { printf "  ratio orchard/baseline: %.3f   target: >= 20000 req/s\n", o / b }'

# Second part: APNs push fan-out (bench/push.sh); BENCH_PUSH=0 skips it.
[ "${BENCH_PUSH:-1}" = 0 ] || ./bench/push.sh
# Third part: a reconciliation job over a domain of 100,000 enrollments (bench/reconcile.sh);
# BENCH_RECONCILE=0 skips it.
[ "${BENCH_RECONCILE:-100000}" = 0 ] || ./bench/reconcile.sh
