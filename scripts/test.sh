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
