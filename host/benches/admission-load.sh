#!/usr/bin/env bash
# Admission throughput, latency and server CPU per request: Tollgate serving
# pod-validation (Wasm) next to the same server answering natively
# (examples/native_admission_server.rs). Needs wrk and jq (apt-get install wrk jq).
# The four runs go in turn for several rounds (one run to the next differs by
# several µs per request on a shared 2-core machine); the summary gives each
# one's median and the per-round gap between the two servers.
# With 2 CPUs or more the servers run on CPU 0 and wrk on CPU 1, as in a
# cluster where the API server is another machine: sharing a core with the
# load generator, every request also paid for wrk's TLS and HTTP code
# evicting the server's from the CPU's caches.
# Usage: host/benches/admission-load.sh [seconds per run] [rounds]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-10}
rounds=${2:-3}
if [ "$(nproc)" -ge 2 ]; then server_cpu="taskset -c 0"; client_cpu="taskset -c 1"; else server_cpu=""; client_cpu=""; fi
cargo build --release --bin tollgate --example native_admission_server >/dev/null 2>&1
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir "$work/plugins"
# Compact, as the API server sends it (the file is indented for reading).
body="$work/review.json"
jq -c . tests/data/pod-create-infra-toleration.json > "$body"
cp target/guests/wasm32-wasip2/guest/pod_validation.wasm "$work/plugins/pod-validation.wasm"
cp plugins/pod-validation/pod-validation.settings.json "$work/plugins/"

RUST_LOG=warn,rustls=error $server_cpu target/release/tollgate serve --plugins "$work/plugins" --no-gateway --admission-addr 127.0.0.1:18443 \
  --metrics-addr 127.0.0.1:19090 --ca-out "$work/ca.pem" &
wasm_pid=$!
$server_cpu target/release/examples/native_admission_server 127.0.0.1:18444 "$work/native-ca.pem" 2>/dev/null &
native_pid=$!
until curl -sf http://127.0.0.1:19090/readyz >/dev/null; do sleep 0.2; done
sleep 1

. host/benches/wrk-runs.sh
run() { # name pid url connections
  local before
  before=$(cpu_ticks "$2")
  BODY=$body $client_cpu wrk -t "$(( $4 < 2 ? 1 : 2 ))" -c "$4" -d "${secs}s" --latency -s host/benches/admission-post.lua "$3" > "$work/out"
  record "$1/c=$4" "$before" "$(cpu_ticks "$2")"
}
header
for _ in $(seq "$rounds"); do
  for c in 1 32; do
    run wasm "$wasm_pid" https://127.0.0.1:18443/validate/pod-validation "$c"
    run native "$native_pid" https://127.0.0.1:18444/validate/pod-validation "$c"
  done
done
summary
gaps wasm native
