#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests: tests/run.sh starts it before the unit suites and
# stops it on exit, so the storage conformance suite and the integration tests run against a real
# server. It is not a deployment recipe: fsync is off and local connections are trusted.
#
#   scripts/test-pg.sh start   initdb build/pgdata, start the server, create the database
#                              `orchard_test`; prints `export ORCHARD_TEST_PG_DSN='postgresql://...'`
#                              on stdout (so `eval "$(scripts/test-pg.sh start)"` works by hand)
#   scripts/test-pg.sh stop    stop the server; remove build/pgdata and the socket directory
#   scripts/test-pg.sh dsn     print the DSN of the running server
#
# The server opens no TCP port: it listens only on a unix socket in a fresh 0700 directory under
# /tmp (short enough for the 107-byte socket path limit wherever the tree lives), owned by the
# server's user. "trust" authentication is therefore reachable only by that user and root.
# PostgreSQL refuses to run as root; as root the cluster is created and run as the `postgres`
# user of Debian's package (runuser), with build/pgdata owned by it.
#
# A previous run's server (an interrupted test run) is stopped and its cluster discarded first.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PGDATA_DIR="$ROOT/build/pgdata"
STATE="$ROOT/build/pg.env" # SOCK_DIR=... and DSN=... of the running server
PG_PORT=5432               # names the socket file only (no TCP listener)
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

# Runs a command as the cluster's owner: `postgres` when we are root, ourselves otherwise.
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

stop_server() {
    local bin sock=""
    bin=$(pg_bindir)
    if [ -f "$STATE" ]; then
        sock=$(sed -n 's/^SOCK_DIR=//p' "$STATE")
    fi
    if [ -f "$PGDATA_DIR/postmaster.pid" ]; then
        as_owner "$bin/pg_ctl" stop -D "$PGDATA_DIR" -m fast -w -t 60 >/dev/null 2>&1 ||
            as_owner "$bin/pg_ctl" stop -D "$PGDATA_DIR" -m immediate -w -t 30 >/dev/null 2>&1 ||
            true
    fi
    rm -rf "$PGDATA_DIR" "$STATE"
    case "$sock" in
    /tmp/orchard-pg.*) rm -rf "$sock" ;;
    esac
}

start_server() {
    local bin sock dsn
    bin=$(pg_bindir)
    if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
        die "running as root but there is no 'postgres' user to run the server as"
    fi
    stop_server
    mkdir -p "$ROOT/build"
    mkdir -m 0700 "$PGDATA_DIR"
    sock=$(mktemp -d /tmp/orchard-pg.XXXXXX)
    chmod 0700 "$sock"
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$PGDATA_DIR" "$sock"
    fi
    # The state file first, so `stop` can clean up whatever part of a failed start happened.
    dsn="postgresql:///$DB_NAME?host=$sock&port=$PG_PORT&user=$DB_USER"
    printf 'SOCK_DIR=%s\nDSN=%s\n' "$sock" "$dsn" >"$STATE"

    as_owner "$bin/initdb" -D "$PGDATA_DIR" -U "$DB_USER" --auth=trust -E UTF8 --no-locale \
        --no-sync >"$ROOT/build/pg-initdb.log" 2>&1 ||
        die "initdb failed (as $(owner)); see build/pg-initdb.log"
    # Test settings: durability off (a throwaway cluster), enough connections for the
    # conformance suite's threads on several handles, every statement error in the log.
    as_owner "$bin/pg_ctl" start -D "$PGDATA_DIR" -w -t 60 -l "$PGDATA_DIR/server.log" \
        -o "-c listen_addresses='' -c unix_socket_directories='$sock' -c port=$PG_PORT \
            -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
            -c max_connections=300 -c shared_buffers=64MB" >/dev/null ||
        die "the server did not start; see build/pgdata/server.log"
    "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$sock" -p "$PG_PORT" -U "$DB_USER" -d postgres \
        -c "CREATE DATABASE $DB_NAME" >/dev/null ||
        die "could not create database $DB_NAME"
    echo "test-pg: PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on $sock (data build/pgdata, owner $(owner))" >&2
    printf "export ORCHARD_TEST_PG_DSN='%s'\n" "$dsn"
}

case "${1:-}" in
start) start_server ;;
stop) stop_server ;;
dsn)
    [ -f "$STATE" ] || die "not running (scripts/test-pg.sh start)"
    sed -n 's/^DSN=//p' "$STATE"
    ;;
*)
    echo "usage: $0 start|stop|dsn" >&2
    exit 2
    ;;
esac
