#!/usr/bin/env bash
# Install what the build needs, build, start a local 3-node cluster (`warrant dev`) and run a short
# demo against it. The cluster keeps running until Ctrl-C. The binary is linked at ./bin/warrant.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --bin warrant
target="${CARGO_TARGET_DIR:-target}"
mkdir -p bin && ln -sf "$(cd "$target/debug" && pwd)/warrant" bin/warrant
W=bin/warrant
$W dev &
dev=$!
trap 'kill -INT $dev 2>/dev/null; wait $dev 2>/dev/null' EXIT INT TERM
export WARRANT_ENDPOINTS=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 WARRANT_PRINCIPAL=agent/demo
for _ in $(seq 1 100); do $W cluster status >/dev/null 2>&1 && break; sleep 0.2; done
sleep 1
demo() { echo; echo "\$ warrant $*"; "$W" "$@" || echo "(exit $?)"; }
res="demo/web/deploy-$(date +%s)"
demo acquire "$res" --ttl 30s --intent "deploy web v2" --instance demo-1
demo acquire "$res" --ttl 30s --instance demo-2
demo get "$res"
demo run "demo/db/migrate-$(date +%s)" --ttl 10s -- sh -c 'echo "child sees token $WARRANT_TOKEN for $WARRANT_RESOURCE"'
demo cluster status
# Governance: load the example never-automate policy, get denied with a reason, wait for two humans.
demo policy put cluster/policies/example.cedar --entities cluster/policies/example.entities.json --principal human/admin
demo acquire k8s/prod/web --ttl 20m --principal agent/deployer
pay="pay-$(date +%s)"
demo acquire k8s/prod/payments --ttl 5m --request-id "$pay" --instance deployer-1 --principal agent/deployer
demo approve "$pay" --comment "change ticket 4711" --principal human/alice
demo approve "$pay" --principal human/bob
demo audit query --resource k8s/prod
demo audit verify
echo; echo "The cluster is still running (see the guide above). Ctrl-C stops it."
wait $dev
