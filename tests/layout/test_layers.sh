#!/usr/bin/env bash
# The layering rules of docs/ARCHITECTURE.md, checked by grep: each third-party API is used only
# in the module that wraps it. Prints one ok/FAIL line per rule (tests/run.sh counts them).
cd "$(dirname "$0")/../.."
rule() { # name, include pattern, allowed path regex
    local bad
    bad=$(grep -rlE "#include <$2" src | grep -vE "$3")
    if [ -z "$bad" ]; then echo "ok $1"; else echo "FAIL $1: $bad"; fi
}
rule "only src/crypto uses OpenSSL" "openssl/" "^src/crypto/"
rule "only src/http uses libmicrohttpd and GnuTLS" "(microhttpd|gnutls/)" "^src/http/"
rule "only the sqlite backend uses sqlite3.h" "sqlite3.h" "^src/storage/sqlite/"
rule "only the pgsql backend uses libpq" "libpq-fe.h" "^src/storage/pgsql/"
rule "only OIDC and webhooks use libcurl" "curl/" "^src/(auth/oidc|webhook/webhook)\.c$"
rule "only APNs uses nghttp2" "nghttp2/" "^src/push/apns\.c$"
rule "only OIDC uses rhonabwy" "rhonabwy" "^src/auth/oidc\.c$"
rule "only auth/secret uses libsodium" "sodium" "^src/auth/secret\.c$"
# Callers use the named wrappers, never a backend's ops table (storage.c, push.c wrap them).
bad=$(grep -rln -- "->ops->" src | grep -vE "^src/storage/|^src/push/push\.c$")
if [ -z "$bad" ]; then echo "ok callers never reach a backend's ops table"; else echo "FAIL ops used outside their wrappers: $bad"; fi
