#!/usr/bin/env bash
# Install the system packages the build needs on Debian/Ubuntu: clang and libclang for RocksDB's
# bindgen, a C++ compiler for RocksDB itself, and protoc for the benchmark's etcd client (the
# server's own protos use a vendored protoc); iproute2, nftables and faketime for the chaos suite's
# namespaces, partitions and clock nemesis; cargo-fuzz for the fuzz smoke (scripts/fuzz.sh). Skips
# what is already there.
set -euo pipefail
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing: cargo-fuzz" >&2
  cargo install --quiet --locked cargo-fuzz@0.13.2
fi
need=()
for pkg in clang libclang-dev g++ make pkg-config protobuf-compiler iproute2 nftables faketime; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "installing: ${need[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
