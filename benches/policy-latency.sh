#!/usr/bin/env bash
# What mTLS and policy evaluation add per acquire: single-client latency on a fresh cluster/local-3,
# plaintext (insecure) without a policy, then mTLS without a policy, then mTLS with the example policy,
# twice each (release build; stops every server it starts).
#   cargo build --release -p warrant --bin warrant --example latency && benches/policy-latency.sh
set -euo pipefail
cd "$(dirname "$0")/.."
B="${CARGO_TARGET_DIR:-target}/release"
E=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
work=$(mktemp -d)
pids=()
stop() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap 'stop; rm -rf "$work"' EXIT INT TERM
"$B/warrant" certs init --out "$work/certs" --nodes 3 --principal agent/latency --principal human/admin >/dev/null
C="$work/certs"
tls=(WARRANT_CA="$C/ca.pem")
run() { # $1 label, $2 insecure|mtls, $3 yes|no: load the example policy
  rm -rf "$work/c" && cp -r cluster/local-3 "$work/c" && rm -rf "$work/c/data"
  local env=(WARRANT_ENDPOINTS=$E)
  if [ "$2" = insecure ]; then
    for n in 1 2 3; do
      sed -i -e '/^\[security\]/,$d' -e 's/^admins = /insecure = true\nadmins = /' "$work/c/node$n.toml"
    done
  else
    env+=("${tls[@]}" WARRANT_CERT="$C/agent-latency.pem" WARRANT_KEY="$C/agent-latency.key")
  fi
  for n in 1 2 3; do RUST_LOG=warn "$B/warrant" server --config "$work/c/node$n.toml" 2>"$work/node$n.log" & pids+=($!); done
  for _ in $(seq 1 100); do env "${env[@]}" "$B/warrant" cluster status 2>/dev/null | grep -q "leader [1-3]" && break; sleep 0.2; done
  sleep 1
  if [ "$3" = yes ]; then
    env "${env[@]}" WARRANT_CERT="$C/human-admin.pem" WARRANT_KEY="$C/human-admin.key" \
      "$B/warrant" policy put cluster/policies/example.cedar --entities cluster/policies/example.entities.json
  fi
  for r in 1 2; do echo "--- $1, run $r"; env "${env[@]}" "$B/examples/latency" "$E" 3000 "k8s/staging/ab$r"; done
  stop
}
for round in 1 2; do
  run "plaintext, no policy (round $round)" insecure no
  run "mTLS, no policy (round $round)" mtls no
  run "mTLS, example policy (round $round)" mtls yes
done
