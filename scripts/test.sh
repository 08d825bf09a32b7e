#!/usr/bin/env bash
# The whole test suite: unit and property tests, then integration tests that start real
# `warrant server` processes on 127.0.0.1. Installs the build's system packages first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
if cargo fmt --version >/dev/null 2>&1; then cargo fmt --all -- --check; fi
if cargo clippy --version >/dev/null 2>&1; then cargo clippy --workspace --all-targets -- -D warnings; fi
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
# Fuzz smoke (about 1 min once built): every cargo-fuzz target for a few seconds from the committed
# inputs (tests/fuzz_corpus.rs above replays them all); long runs are `scripts/fuzz.sh run`.
scripts/fuzz.sh smoke 5
# Chaos smoke run (about 65 s): 3 real nodes, kills, pauses, partitions (in network namespaces as
# root, else through the harness's proxies), membership changes and client-process pauses (and, as
# root, packet loss), with a fixed seed, on the production path (mutual TLS, clients authenticated by
# certificate); exits non-zero if any checker finds a violation.
cargo build -p warrant --bin warrant
cargo build -p warrant-jepsen
target="${CARGO_TARGET_DIR:-target}"
smoke="$(mktemp -d)"
out="$smoke/warrant-jepsen-smoke"
# Kept only when it fails: its history, node logs and timeline are what one reads then.
if "$target/debug/warrant-jepsen" run --nodes 3 --time 60s --nemesis mixed --seed 42 --mode auto --tls --out "$out"; then
  rm -rf "$smoke"
else
  echo "chaos smoke run failed; history, node logs and timeline.svg are in $out" >&2
  exit 1
fi
