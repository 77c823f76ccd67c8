#!/usr/bin/env bash
# Installs the Debian packages Orchard needs to build, run and test.
# Called by `make` when pkg-config cannot find a dependency, and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_PKGS="build-essential pkg-config libmicrohttpd-dev libgnutls28-dev libplist-dev libssl-dev
 libsqlite3-dev libpq-dev libcurl4-openssl-dev libnghttp2-dev libjansson-dev librhonabwy-dev libsodium-dev
 libcmocka-dev clang-format python3 python3-yaml openssl"
TEST_PKGS="postgresql scep nghttp2-server nghttp2-client nginx wrk chromium nodejs npm curl python3-cryptography"

want="$BUILD_PKGS"
[ "${1:-}" = "--test" ] && want="$BUILD_PKGS $TEST_PKGS"

missing=""
for p in $want; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# node/npm may come from outside Debian on developer machines; accept any working install.
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    missing=$(echo "$missing" | tr ' ' '\n' | grep -vx -e nodejs -e npm | tr '\n' ' ')
fi
missing=$(echo $missing)
npm_step() {
    # Browser tests drive Debian's Chromium through playwright-core (never a downloaded browser).
    if [ "${1:-}" = "--test" ] && [ ! -d tests/browser/node_modules/playwright-core ]; then
        npm ci --prefix tests/browser --no-audit --no-fund >&2
    fi
    # The federation tests run a real OpenID Connect provider (npm oidc-provider) on loopback.
    if [ "${1:-}" = "--test" ] && [ ! -d tests/oidc/node_modules/oidc-provider ]; then
        npm ci --prefix tests/oidc --no-audit --no-fund >&2
    fi
}
if [ -z "$missing" ]; then
    npm_step "${1:-}"
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    echo "orchard: missing Debian packages: $missing" >&2
    echo "orchard: run 'sudo $0 ${1:-}' or install them as root." >&2
    exit 1
fi
echo "orchard: installing Debian packages: $missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends $missing >&2
npm_step "${1:-}"
