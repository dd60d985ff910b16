#!/usr/bin/env bash
# Gateway throughput, latency and CPU per request at concurrency 32:
#   direct      wrk -> upstream
#   pass        wrk -> tollgate (pass-route test guest) -> upstream
#   jwt         wrk -> tollgate (jwt-org-router) -> upstream, one token again and again
#   jwt-fresh   the same with 20,000 distinct tokens in turn: every request
#               pays an RSA verification (the verified-token cache holds 10,000)
#   haproxy     wrk -> HAProxy 2.6 doing the reference's JWT checks -> upstream
#               (only when haproxy is installed: apt-get install haproxy)
# CPU is the proxy process's own (utime+stime from /proc) divided by the
# requests wrk completed; for `direct`, the upstream's. Needs wrk.
# The scenarios run in turn for several rounds (the machine's noise is several
# µs per request from one run to the next); the summary gives each one's
# median over the rounds.
# Usage: host/benches/gateway-load.sh [seconds per run] [rounds]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
rounds=${2:-3}
cargo build --release --bin tollgate --example bench_upstream --example jwt_tokens >/dev/null 2>&1
cargo build --profile guest --target wasm32-wasip2 --target-dir target/guests -p pass-route -p jwt-org-router >/dev/null 2>&1
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
guests=target/guests/wasm32-wasip2/guest

target/release/examples/bench_upstream 127.0.0.1:18080 &
upstream_pid=$!
target/release/examples/jwt_tokens 1 > "$work/token"
target/release/examples/jwt_tokens 20000 > "$work/tokens"

mkdir "$work/pass" "$work/jwt"
cp "$guests/pass_route.wasm" "$work/pass/pass-route.wasm"
echo '{"upstream": "http://127.0.0.1:18080"}' > "$work/pass/pass-route.settings.json"
cp "$guests/jwt_org_router.wasm" "$work/jwt/jwt-org-router.wasm"
python3 - "$work/jwt/jwt-org-router.settings.json" <<'PY'
import json, sys
pem = open("tests/data/jwt/client-rs256.pub.pem").read()
json.dump({"keys": [{"kid": "client-1", "algorithm": "RS256", "pem": pem}],
           "orgs": {"org-a": {"upstream": "http://127.0.0.1:18080", "backendToken": "backend-token-a"},
                    "org-b": {"upstream": "http://127.0.0.1:18080", "backendToken": "backend-token-b"}}},
          open(sys.argv[1], "w"))
PY
serve() { # dir gateway-port metrics-port admission-port
  RUST_LOG=warn target/release/tollgate serve --plugins "$1" --gateway-addr "127.0.0.1:$2" \
    --metrics-addr "127.0.0.1:$3" --admission-addr "127.0.0.1:$4" --ca-out "$work/ca-$2.pem" --no-watch &
}
serve "$work/pass" 18081 19091 18441; pass_pid=$!
serve "$work/jwt" 18082 19092 18442; jwt_pid=$!
until curl -sf http://127.0.0.1:19091/readyz >/dev/null && curl -sf http://127.0.0.1:19092/readyz >/dev/null; do sleep 0.2; done

haproxy_pid=
if command -v haproxy >/dev/null; then
  sed "s|@PUBKEY@|$PWD/tests/data/jwt/client-rs256.pub.pem|" host/benches/haproxy-jwt.cfg > "$work/haproxy.cfg"
  haproxy -f "$work/haproxy.cfg" &
  haproxy_pid=$!
  until curl -s -o /dev/null http://127.0.0.1:18083/; do sleep 0.2; done
fi
sleep 1

# A request through each path must succeed before anything is measured.
token=$(cat "$work/token")
for port in 18080 18081 18082 ${haproxy_pid:+18083}; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://127.0.0.1:$port/rest/items")
  [ "$code" = 200 ] || { echo "port $port answered $code"; exit 1; }
done

. host/benches/wrk-runs.sh
run() { # name pid port [env for the lua script]
  local before
  before=$(cpu_ticks "$2")
  env "${@:4}" wrk -t 2 -c 32 -d "${secs}s" --latency -s host/benches/gateway-get.lua "http://127.0.0.1:$3" > "$work/out"
  if grep -q "Non-2xx" "$work/out"; then echo "$1: some answers were not 2xx"; cat "$work/out"; exit 1; fi
  record "$1" "$before" "$(cpu_ticks "$2")"
}
header
for _ in $(seq "$rounds"); do
  run direct "$upstream_pid" 18080 DUMMY=1
  run pass "$pass_pid" 18081 DUMMY=1
  run jwt "$jwt_pid" 18082 "TOKEN=$token"
  run jwt-fresh "$jwt_pid" 18082 "TOKENS=$work/tokens"
  if [ -n "$haproxy_pid" ]; then
    run haproxy "$haproxy_pid" 18083 "TOKEN=$token"
    run haproxy-fresh "$haproxy_pid" 18083 "TOKENS=$work/tokens"
  fi
done
summary
