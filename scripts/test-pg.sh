#!/usr/bin/env bash
# Throwaway PostgreSQL servers for the tests: tests/run.sh starts one before the unit suites and
# stops it on exit, so the storage conformance suite and the integration tests run against a real
# server. Not a deployment recipe: fsync is off and local connections are trusted.
#
#   scripts/test-pg.sh start        initdb a fresh cluster build/pgdata/run.XXXXXX, start it, create
#                                   the database `orchard_test`; prints on stdout
#                                     export ORCHARD_TEST_PG_DSN='postgresql://...'
#                                     export ORCHARD_TEST_PG_RUN='run.XXXXXX'
#                                   (so `eval "$(scripts/test-pg.sh start)"` works by hand)
#   scripts/test-pg.sh stop [RUN]   stop that cluster ($ORCHARD_TEST_PG_RUN by default; every
#                                   cluster under build/pgdata when neither is given) and remove it
#   scripts/test-pg.sh dsn [RUN]    print the DSN of that cluster (default: the newest)
#
# Each run gets its own cluster, so two test runs in one tree never stop each other's server. A
# run started with ORCHARD_TEST_PG_OWNER_PID (tests/run.sh passes its own pid) is reaped by a
# later `start` once that process is gone (an interrupted run that could not clean up).
#
# The server opens no TCP port: it listens only on a unix socket in a fresh 0700 directory under
# /tmp (short enough for the 107-byte socket path limit wherever the tree lives), owned by the
# server's user, so "trust" authentication is reachable only by that user and root. PostgreSQL
# refuses to run as root; as root the cluster is created and run as the `postgres` user of
# Debian's package (runuser), with its data directory owned by that user.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PGROOT="$ROOT/build/pgdata"
PG_PORT=5432 # names the socket file only (there is no TCP listener)
DB_USER=orchard
DB_NAME=orchard_test

die() {
    echo "test-pg: $*" >&2
    exit 1
}

# The server binaries: pg_config's bindir (Debian's libpq-dev), else the newest Debian install,
# else whatever initdb is on PATH.
pg_bindir() {
    local d
    d=$(pg_config --bindir 2>/dev/null || true)
    if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
        echo "$d"
        return
    fi
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
            echo "$d"
            return
        fi
    done
    d=$(command -v initdb 2>/dev/null || true)
    [ -n "$d" ] && dirname "$d" && return
    die "no PostgreSQL server binaries (initdb, pg_ctl); run scripts/install-deps.sh --test"
}

# Runs a command as the clusters' owner: `postgres` when we are root, ourselves otherwise.
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

owner() {
    if [ "$(id -u)" = 0 ]; then echo postgres; else id -un; fi
}

state_get() { # state_get RUN KEY
    sed -n "s/^$2=//p" "$PGROOT/$1.env" 2>/dev/null || true
}

stop_run() { # stop_run RUN
    local run="$1" bin sock
    case "$run" in
    run.*) ;;
    *) die "not a test cluster: $run" ;;
    esac
    bin=$(pg_bindir)
    sock=$(state_get "$run" SOCK_DIR)
    if [ -f "$PGROOT/$run/postmaster.pid" ]; then
        as_owner "$bin/pg_ctl" stop -D "$PGROOT/$run" -m fast -w -t 60 >/dev/null 2>&1 ||
            as_owner "$bin/pg_ctl" stop -D "$PGROOT/$run" -m immediate -w -t 30 >/dev/null 2>&1 ||
            true
    fi
    rm -rf "${PGROOT:?}/$run" "$PGROOT/$run.env"
    case "$sock" in
    /tmp/orchard-pg.*) rm -rf "$sock" ;;
    esac
}

all_runs() {
    local d
    for d in "$PGROOT"/run.*; do
        [ -e "$d" ] || continue
        d=$(basename "$d")
        echo "${d%.env}"
    done | sort -u
}

# Clusters whose owning test run has exited without stopping them.
reap_stale() {
    local run pid
    for run in $(all_runs); do
        pid=$(state_get "$run" OWNER_PID)
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            echo "test-pg: removing $run (its test run, pid $pid, is gone)" >&2
            stop_run "$run"
        fi
    done
}

start_server() {
    local bin dir run sock dsn version
    bin=$(pg_bindir)
    if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
        die "running as root but there is no 'postgres' user to run the server as"
    fi
    mkdir -p "$PGROOT"
    chmod 0755 "$PGROOT"
    reap_stale
    dir=$(mktemp -d "$PGROOT/run.XXXXXX")
    run=$(basename "$dir")
    sock=$(mktemp -d /tmp/orchard-pg.XXXXXX)
    chmod 0700 "$dir" "$sock"
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$dir" "$sock"
    fi
    dsn="postgresql:///$DB_NAME?host=$sock&port=$PG_PORT&user=$DB_USER"
    # The state first, so `stop` can clean up whatever part of a failed start happened.
    printf 'SOCK_DIR=%s\nDSN=%s\nOWNER_PID=%s\n' "$sock" "$dsn" "${ORCHARD_TEST_PG_OWNER_PID:-}" \
        >"$PGROOT/$run.env"
    trap 'stop_run "$run"' ERR

    as_owner "$bin/initdb" -D "$dir" -U "$DB_USER" --auth=trust -E UTF8 --no-locale --no-sync \
        >"$PGROOT/$run.initdb.log" 2>&1 ||
        { stop_run "$run"; die "initdb failed (as $(owner)); see $PGROOT/$run.initdb.log"; }
    # Test settings: durability off (a throwaway cluster), enough connections for the
    # conformance suite's threads on several handles and the integration servers.
    if ! as_owner "$bin/pg_ctl" start -D "$dir" -w -t 60 -l "$dir/server.log" \
        -o "-c listen_addresses='' -c unix_socket_directories='$sock' -c port=$PG_PORT \
            -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
            -c max_connections=300 -c shared_buffers=64MB" >/dev/null; then
        tail -20 "$dir/server.log" >&2 || true
        stop_run "$run"
        die "the server did not start"
    fi
    if ! "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$sock" -p "$PG_PORT" -U "$DB_USER" \
        -d postgres -c "CREATE DATABASE $DB_NAME" >/dev/null; then
        stop_run "$run"
        die "could not create database $DB_NAME"
    fi
    trap - ERR
    rm -f "$PGROOT/$run.initdb.log"
    version=$("$bin/postgres" --version | awk '{print $3}')
    echo "test-pg: PostgreSQL $version, cluster build/pgdata/$run, socket $sock, owner $(owner)" >&2
    printf "export ORCHARD_TEST_PG_DSN='%s'\n" "$dsn"
    printf "export ORCHARD_TEST_PG_RUN='%s'\n" "$run"
}

case "${1:-}" in
start) start_server ;;
stop)
    run="${2:-${ORCHARD_TEST_PG_RUN:-}}"
    if [ -n "$run" ]; then
        stop_run "$run"
    else
        for r in $(all_runs); do stop_run "$r"; done
    fi
    ;;
dsn)
    run="${2:-${ORCHARD_TEST_PG_RUN:-}}"
    if [ -z "$run" ]; then
        run=$(ls -t "$PGROOT"/run.*.env 2>/dev/null | head -1 || true)
        run=$(basename "${run%.env}" 2>/dev/null || true)
    fi
    [ -n "$run" ] && [ -f "$PGROOT/$run.env" ] || die "no test cluster (scripts/test-pg.sh start)"
    state_get "$run" DSN
    ;;
*)
    echo "usage: $0 start | stop [RUN] | dsn [RUN]" >&2
    exit 2
    ;;
esac
