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
# The dev cluster is secure: it made a CA and certificates under .warrant-dev/certs. `as NAME`
# runs the CLI with that identity's certificate (agent-deployer, human-alice, ...).
C=.warrant-dev/certs
export WARRANT_ENDPOINTS=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 WARRANT_CA=$C/ca.pem
as() { local who=$1; shift; WARRANT_CERT=$C/$who.pem WARRANT_KEY=$C/$who.key "$W" "$@"; }
for _ in $(seq 1 100); do as agent-deployer cluster status >/dev/null 2>&1 && break; sleep 0.2; done
sleep 1
demo() { local who=$1; shift; echo; echo "\$ warrant $* # as ${who/-//}"; as "$who" "$@" || echo "(exit $?)"; }
res="demo/web/deploy-$(date +%s)"
demo agent-deployer acquire "$res" --ttl 30s --intent "deploy web v2" --instance demo-1
demo agent-other acquire "$res" --ttl 30s --instance other-1
demo agent-deployer get "$res"
demo agent-deployer run "demo/db/migrate-$(date +%s)" --ttl 10s -- sh -c 'echo "child sees token $WARRANT_TOKEN for $WARRANT_RESOURCE"'
demo agent-deployer cluster status
# Security: nobody gets in without a certificate or token, and nobody acts as someone else.
echo; echo "\$ warrant cluster status   # TLS, no certificate, no token"
"$W" cluster status || echo "(exit $?)"
demo agent-deployer revoke "$res" --reason "as someone else" --principal human/admin
# Governance: load the example never-automate policy, get denied with a reason, wait for two humans.
demo human-admin policy put cluster/policies/example.cedar --entities cluster/policies/example.entities.json
demo agent-deployer acquire k8s/prod/web --ttl 20m
pay="pay-$(date +%s)"
demo agent-deployer acquire k8s/prod/payments --ttl 5m --request-id "$pay" --instance deployer-1
demo human-alice approve "$pay" --comment "change ticket 4711"
demo human-bob approve "$pay"
demo human-admin audit query --resource k8s/prod
demo human-admin audit verify
echo; echo "The cluster is still running (see the guide above). Ctrl-C stops it."
wait $dev
