#!/usr/bin/env bash
# Runs every test suite and prints the closing line "N passed, N failed".
# Each suite prints one line per test case: "ok NAME" or "FAIL NAME"; this script counts them.
#   tests/run.sh              everything
#   tests/run.sh unit|integration|browser|fuzz|gen   one group
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# The shared spec (Apple's schema, captured device messages) sits beside the repository. A local
# clone made elsewhere (git clone /work/main /tmp/cc) finds it beside the repository it came from.
spec_dir() {
    [ -d "$ROOT/../shared/spec" ] && { (cd "$ROOT/../shared/spec" && pwd); return; }
    local origin
    origin=$(git -C "$ROOT" config --get remote.origin.url 2>/dev/null || true)
    if [ -n "$origin" ] && [ -d "$origin/../shared/spec" ]; then
        (cd "$origin/../shared/spec" && pwd)
        return
    fi
    echo "$ROOT/../shared/spec" # missing: the suites that need it fail and say where they looked
}
export ORCHARD_SPEC="${ORCHARD_SPEC:-$(spec_dir)}"
export ORCHARD_BIN="${ORCHARD_BIN:-$ROOT/build/san/orchard}"
export PYTHON=/usr/bin/python3
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
LOG_DIR="$ROOT/build/test-logs"
mkdir -p "$LOG_DIR"
group="${1:-all}"
passed=0
failed=0
failures=()

# Reads a suite's output on stdin, echoes it, and counts ok/FAIL lines.
count() {
    local suite="$1" line
    while IFS= read -r line; do
        case "$line" in
        "ok "*) passed=$((passed + 1)); echo "  $line" ;;
        "FAIL "*) failed=$((failed + 1)); failures+=("$suite: ${line#FAIL }"); echo "  $line" ;;
        *) echo "  $line" ;;
        esac
    done
}

# Runs a command as one suite; a crash or non-zero exit without any FAIL line counts as a failure.
suite() {
    local name="$1"; shift
    echo "== $name"
    local before=$failed out="$LOG_DIR/$(echo "$name" | tr '/ ' '__').log"
    "$@" >"$out.stdout" 2>"$out.stderr"
    local rc=$?
    count "$name" <"$out.stdout"
    if [ $rc -ne 0 ] && [ $failed -eq $before ]; then
        failed=$((failed + 1)); failures+=("$name: exited with status $rc")
        echo "  FAIL (exit $rc) — stderr:"; tail -20 "$out.stderr" | sed 's/^/    /'
    elif [ $failed -ne $before ]; then
        tail -30 "$out.stderr" | sed 's/^/    /'
    fi
}

# A real PostgreSQL server for the storage conformance suite and the integration tests
# (scripts/test-pg.sh: a throwaway cluster under build/pgdata on a private unix socket), stopped
# on exit whatever happens. A caller may bring its own server by exporting ORCHARD_TEST_PG_DSN. If
# the server cannot start, the variable stays unset and the PostgreSQL suites FAIL, never skip.
if [ -z "${ORCHARD_TEST_PG_DSN:-}" ] &&
    { [ "$group" = all ] || [ "$group" = unit ] || [ "$group" = integration ]; }; then
    if pg_env=$(ORCHARD_TEST_PG_OWNER_PID=$$ scripts/test-pg.sh start 2>"$LOG_DIR/test-pg.log"); then
        eval "$pg_env"
        trap 'scripts/test-pg.sh stop "$ORCHARD_TEST_PG_RUN" >/dev/null 2>&1' EXIT
        echo "== PostgreSQL started for the tests ($(tail -1 "$LOG_DIR/test-pg.log"))"
    else
        echo "== PostgreSQL did not start; its suites will fail (log: $LOG_DIR/test-pg.log)"
        tail -5 "$LOG_DIR/test-pg.log" | sed 's/^/    /'
    fi
fi

if [ "$group" = all ] || [ "$group" = unit ]; then
    for t in $(find build/san/tests -type f -name 'test_*' ! -name '*.d' | sort); do
        suite "unit/${t#build/san/tests/}" "$t"
    done
fi
if [ "$group" = all ] || [ "$group" = gen ]; then
    suite "gen/tables-current" bash -c 'python3 tools/gen_tables.py --check && echo "ok generated tables are current" || echo "FAIL generated tables are stale"'
    suite "gen/gen_tables" "$PYTHON" tests/gen/test_gen_tables.py
fi
if [ "$group" = all ] || [ "$group" = layout ]; then
    suite "layout/layers" tests/layout/test_layers.sh
fi
if [ "$group" = all ] || [ "$group" = integration ]; then
    for t in $(find tests/integration -name 'test_*.py' | sort); do
        suite "integration/$(basename "$t" .py)" "$PYTHON" "$t"
    done
fi
if [ "$group" = all ] || [ "$group" = browser ]; then
    for t in $(find tests/browser -maxdepth 1 -name '*.test.mjs' | sort); do
        suite "browser/$(basename "$t" .test.mjs)" node "$t"
    done
fi
if [ "$group" = all ] || [ "$group" = fuzz ]; then
    for t in $(find build/san/fuzz -type f -name 'replay_*' 2>/dev/null | sort); do
        suite "fuzz/$(basename "$t")" "$t" "fuzz/corpus/${t##*/replay_}"
    done
fi

echo
if [ $failed -ne 0 ]; then
    echo "Failures:"
    printf '  %s\n' "${failures[@]}"
fi
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
