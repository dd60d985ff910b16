#!/usr/bin/env bash
# A/B of two builds of Tollgate on the same machine: server CPU per request,
# req/s and p50 of
#   adm-c=1, adm-c=32  admission, pod-validation, compact review (as admission-load.sh)
#   nat-c=1, nat-c=32  the same on examples/native_admission_server, when both
#                      builds have it: the listener and the review's parse
#                      without a plugin call
#   pass               gateway, pass-through route, c=32 (as gateway-load.sh)
#   jwt                gateway, jwt-org-router, one token reused, c=32
# Each build serves with its own guests (the contract may differ between
# them). Admission servers run on CPU 0 and wrk on CPU 1, as in
# admission-load.sh; the gateway runs unpinned, as in gateway-load.sh. In
# every round each scenario runs on one build and then, seconds later, on the
# other; the order of the two builds is reversed every other round. The
# summary gives each run's median over the rounds, and each scenario's
# per-round difference NEW minus OLD. Needs wrk, jq, python3 and openssl.
#
# OLD and NEW are cargo target directories, each with release/tollgate and
# guests/wasm32-wasip2/guest/ built from its own checkout, for instance:
#   git worktree add /tmp/tollgate-old <commit>
#   (cd /tmp/tollgate-old && CARGO_TARGET_DIR=/tmp/tollgate-old/target cargo build --release --bin tollgate --example native_admission_server)
#   cargo build --release --bin tollgate --example native_admission_server --example bench_upstream
#   host/benches/ab-load.sh /tmp/tollgate-old/target target 5 5
# The upstream comes from this checkout's target/release/examples. The token
# is signed here with openssl: the claims of examples/jwt_tokens, but with
# `jti` a string, which verification requires since 3cac437 (RFC 7519).
# Usage: host/benches/ab-load.sh OLD NEW [seconds per run] [rounds]
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,/^# Usage/p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
old=$(realpath "$1")
new=$(realpath "$2")
cd "$(dirname "$0")/../.."
secs=${3:-5}
rounds=${4:-5}
if [ "$(nproc)" -ge 2 ]; then server_cpu="taskset -c 0"; client_cpu="taskset -c 1"; else server_cpu=""; client_cpu=""; fi
for bin in "$old/release/tollgate" "$new/release/tollgate" target/release/examples/bench_upstream; do
  [ -x "$bin" ] || { echo "missing $bin"; exit 1; }
done
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "$work"' EXIT

target/release/examples/bench_upstream 127.0.0.1:18480 &
b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
signed=$(printf '{"typ":"JWT","alg":"RS256","kid":"client-1"}' | b64url).$(
  printf '{"exp":%d,"jti":"0","org":"org-a","sub":"bench"}' $(( $(date +%s) + 3600 )) | b64url)
echo "$signed.$(printf %s "$signed" | openssl dgst -sha256 -sign tests/data/jwt/client-rs256.key -binary | b64url)" > "$work/token"
jq -c . tests/data/pod-create-infra-toleration.json > "$work/review.json"

# plugins BUILD NAME: the plugin directories of one build.
plugins() {
  local guests=$1/guests/wasm32-wasip2/guest dir=$work/$2
  mkdir -p "$dir/adm" "$dir/pass" "$dir/jwt"
  cp "$guests/pod_validation.wasm" "$dir/adm/pod-validation.wasm"
  cp plugins/pod-validation/pod-validation.settings.json "$dir/adm/"
  cp "$guests/pass_route.wasm" "$dir/pass/pass-route.wasm"
  echo '{"upstream": "http://127.0.0.1:18480"}' > "$dir/pass/pass-route.settings.json"
  cp "$guests/jwt_org_router.wasm" "$dir/jwt/jwt-org-router.wasm"
  python3 - "$dir/jwt/jwt-org-router.settings.json" <<'PY'
import json, sys
pem = open("tests/data/jwt/client-rs256.pub.pem").read()
json.dump({"keys": [{"kid": "client-1", "algorithm": "RS256", "pem": pem}],
           "orgs": {"org-a": {"upstream": "http://127.0.0.1:18480", "backendToken": "backend-token-a"},
                    "org-b": {"upstream": "http://127.0.0.1:18480", "backendToken": "backend-token-b"}}},
          open(sys.argv[1], "w"))
PY
}
plugins "$old" old
plugins "$new" new

declare -A pid
# serve BUILD NAME KIND PORT-SUFFIX [taskset...]: one server; its admission
# listener on 184<n>, gateway on 181<n>, metrics on 191<n>.
serve() {
  local bin=$1/release/tollgate name=$2 kind=$3 n=$4
  mkdir -p "$work/state-$name-$kind" "$work/cache-$name"
  local args=(serve --plugins "$work/$name/$kind" --admission-addr "127.0.0.1:184$n" --metrics-addr "127.0.0.1:191$n"
    --state-dir "$work/state-$name-$kind" --cache-dir "$work/cache-$name" --no-watch)
  if [ "$kind" = adm ]; then args+=(--no-gateway); else args+=(--gateway-addr "127.0.0.1:181$n"); fi
  RUST_LOG=warn,rustls=error ${@:5} "$bin" "${args[@]}" 2>"$work/log-$name-$kind" &
  pid[$name/$kind]=$!
}
serve "$old" old adm 51 $server_cpu
serve "$new" new adm 52 $server_cpu
serve "$old" old pass 61
serve "$new" new pass 62
serve "$old" old jwt 71
serve "$new" new jwt 72
scenarios="adm-c=1 adm-c=32 pass jwt"
if [ -x "$old/release/examples/native_admission_server" ] && [ -x "$new/release/examples/native_admission_server" ]; then
  $server_cpu "$old/release/examples/native_admission_server" 127.0.0.1:18453 "$work/native-old.pem" 2>/dev/null &
  pid[old/nat]=$!
  $server_cpu "$new/release/examples/native_admission_server" 127.0.0.1:18454 "$work/native-new.pem" 2>/dev/null &
  pid[new/nat]=$!
  scenarios="adm-c=1 nat-c=1 adm-c=32 nat-c=32 pass jwt"
fi
for n in 51 52 61 62 71 72; do
  tries=0
  until curl -sf "http://127.0.0.1:191$n/readyz" >/dev/null; do
    sleep 0.2
    tries=$((tries + 1))
    [ $tries -lt 300 ] || { echo "server on 191$n not ready"; tail -n 20 "$work"/log-*; exit 1; }
  done
done
sleep 1

# Every path must answer as expected before anything is measured.
token=$(cat "$work/token")
ports="51 52"
if [ -n "${pid[old/nat]:-}" ]; then
  ports="51 52 53 54"
  for n in 53 54; do
    tries=0
    until curl -sk -o /dev/null "https://127.0.0.1:184$n/"; do
      sleep 0.2
      tries=$((tries + 1))
      [ $tries -lt 100 ] || { echo "native server on 184$n not up"; exit 1; }
    done
  done
fi
for n in $ports; do
  allowed=$(curl -sk -H 'Content-Type: application/json' --data-binary @"$work/review.json" \
    "https://127.0.0.1:184$n/validate/pod-validation" | jq -r .response.allowed)
  [ "$allowed" = true ] || [ "$allowed" = false ] || { echo "admission on 184$n answered no review"; exit 1; }
done
for n in 61 62 71 72; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://127.0.0.1:181$n/rest/items")
  [ "$code" = 200 ] || { echo "gateway on 181$n answered $code"; exit 1; }
done

. host/benches/wrk-runs.sh
# run BUILD SCENARIO
run() {
  local name=$1 scenario=$2 n p before
  n=$([ "$name" = old ] && echo 1 || echo 2)
  case $scenario in
    adm-c=* | nat-c=*)
      local c=${scenario#*-c=} kind=${scenario%-c=*}
      p=${pid[$name/$kind]}
      [ "$kind" = adm ] || n=$((n + 2))
      before=$(cpu_ticks "$p")
      BODY=$work/review.json $client_cpu wrk -t "$(( c < 2 ? 1 : 2 ))" -c "$c" -d "${secs}s" --latency \
        -s host/benches/admission-post.lua "https://127.0.0.1:1845$n/validate/pod-validation" > "$work/out" ;;
    pass)
      p=${pid[$name/pass]}
      before=$(cpu_ticks "$p")
      DUMMY=1 wrk -t 2 -c 32 -d "${secs}s" --latency -s host/benches/gateway-get.lua "http://127.0.0.1:1816$n" > "$work/out" ;;
    jwt)
      p=${pid[$name/jwt]}
      before=$(cpu_ticks "$p")
      TOKEN=$token wrk -t 2 -c 32 -d "${secs}s" --latency -s host/benches/gateway-get.lua "http://127.0.0.1:1817$n" > "$work/out" ;;
  esac
  if grep -q "Non-2xx\|Socket errors" "$work/out"; then echo "$name/$scenario: errors"; cat "$work/out"; exit 1; fi
  record "$name/$scenario" "$before" "$(cpu_ticks "$p")"
}
header
for round in $(seq "$rounds"); do
  if [ $((round % 2)) = 1 ]; then order="old new"; else order="new old"; fi
  for scenario in $scenarios; do
    for name in $order; do run "$name" "$scenario"; done
  done
done
summary
gaps new old
