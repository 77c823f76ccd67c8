#!/usr/bin/env bash
# `make run`: creates the demo data directory ./var on first run (SQLite, self-signed TLS, a
# demo user whose password is printed once) and serves https://127.0.0.1:8443.
set -euo pipefail
BIN="${1:-build/orchard}"
DATA="${ORCHARD_DEMO_DATA:-var}"
if [ ! -f "$DATA/orchard.conf" ]; then
    "$BIN" init --data "$DATA" --public-url https://127.0.0.1:8443 --domain localhost
    password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=' | head -c 20)
    echo "$password" | "$BIN" user add --data "$DATA" --email demo@localhost \
        --managed-apple-id demo@localhost --password-stdin >/dev/null
    key=$("$BIN" apikey create --data "$DATA" --name demo 2>/dev/null)
    cat <<MSG

  Demo data directory: $DATA (delete it to start over)
  Sign-in user:   demo@localhost
  Password:       $password      (shown once)
  Admin API key:  $key      (shown once)
  TLS CA:         $DATA/tls/ca.pem

  Try: curl --cacert $DATA/tls/ca.pem https://127.0.0.1:8443/healthz

MSG
fi
exec "$BIN" serve --data "$DATA"
