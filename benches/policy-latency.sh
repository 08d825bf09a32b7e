#!/usr/bin/env bash
# What policy evaluation adds per acquire: single-client latency on a fresh cluster/local-3 without a
# policy, then with the example policy, twice each (release build; stops every server it starts).
#   cargo build --release -p warrant --bin warrant --example latency && benches/policy-latency.sh
set -euo pipefail
cd "$(dirname "$0")/.."
B="${CARGO_TARGET_DIR:-target}/release"
E=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
work=$(mktemp -d)
pids=()
stop() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap 'stop; rm -rf "$work"' EXIT INT TERM
run() { # $1 label, $2 yes|no: load the example policy
  rm -rf "$work/c" && cp -r cluster/local-3 "$work/c" && rm -rf "$work/c/data"
  for n in 1 2 3; do RUST_LOG=warn "$B/warrant" server --config "$work/c/node$n.toml" 2>"$work/node$n.log" & pids+=($!); done
  for _ in $(seq 1 100); do WARRANT_ENDPOINTS=$E "$B/warrant" cluster status 2>/dev/null | grep -q "leader [1-3]" && break; sleep 0.2; done
  sleep 1
  if [ "$2" = yes ]; then
    WARRANT_ENDPOINTS=$E "$B/warrant" policy put cluster/policies/example.cedar \
      --entities cluster/policies/example.entities.json --principal human/admin
  fi
  for r in 1 2; do echo "--- $1, run $r"; "$B/examples/latency" "$E" 3000 "k8s/staging/ab$r"; done
  stop
}
for round in 1 2; do run "no policy (round $round)" no; run "example policy (round $round)" yes; done
