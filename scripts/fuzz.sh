#!/usr/bin/env bash
# The fuzz targets (fuzz/, one per decoder that reads bytes from the network or disk; see
# src/fuzzing.rs). Built with the stable toolchain and no sanitizer: the code is safe Rust, so what
# the fuzzer hunts is panics, overflows (debug assertions are on), unbounded allocations (rss limit)
# and hangs (timeout).
#
#   scripts/fuzz.sh smoke [SECONDS]         every target for SECONDS (default 5) from the committed
#                                           inputs, new ones kept in a temp dir (the test command)
#   scripts/fuzz.sh run SECONDS [TARGET...] long runs: new inputs join fuzz/corpus/<target>, which is
#                                           then minimised (cargo fuzz cmin); commit the result
#
# Inputs: fuzz/seeds/<target>/ holds the seeds (made by the node's encoders: `cargo test --test
# fuzz_corpus -- --ignored write_seeds`) and the regressions, by name; fuzz/corpus/<target>/ what the
# fuzzer grew from them (hash names, minimised). tests/fuzz_corpus.rs replays both on every test run.
# A crash leaves its input in fuzz/artifacts/<target>/: fix it, and copy the input to
# fuzz/seeds/<target>/regression-<what>.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-smoke}"
shift || true
build=(-s none --codegen-units 16)
# Shares the suite's target dir when one is set (CI), so the RocksDB build is reused there.
if [ -n "${CARGO_TARGET_DIR:-}" ]; then build+=(--target-dir "$CARGO_TARGET_DIR/fuzz"); fi
limits=(-rss_limit_mb=2048 -timeout=10 -max_len=65536 -print_final_stats=1)
targets() { sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^warrant-fuzz$'; }
case "$mode" in
  smoke)
    seconds="${1:-5}"
    cargo fuzz build "${build[@]}"
    scratch="$(mktemp -d)"
    trap 'rm -rf "$scratch"' EXIT
    for t in $(targets); do
      mkdir -p "$scratch/$t"
      echo "fuzz smoke: $t for ${seconds}s" >&2
      mkdir -p "fuzz/corpus/$t"
      cargo fuzz run "${build[@]}" "$t" "$scratch/$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$seconds" "${limits[@]}" 2>"$scratch/$t.log" || {
        grep -E "panicked|memory allocation|ERROR: libFuzzer|out-of-memory|timeout after" "$scratch/$t.log" >&2 || true
        tail -40 "$scratch/$t.log" | cut -c1-300 >&2
        echo "fuzz smoke: $t failed; the input is in fuzz/artifacts/$t/" >&2
        exit 1
      }
      grep -E '^stat::number_of_executed_units' "$scratch/$t.log" >&2 || true
    done
    ;;
  run)
    seconds="${1:?scripts/fuzz.sh run SECONDS [TARGET...]}"
    shift
    list=("$@")
    if [ ${#list[@]} -eq 0 ]; then mapfile -t list < <(targets); fi
    cargo fuzz build "${build[@]}"
    for t in "${list[@]}"; do
      mkdir -p "fuzz/corpus/$t"
      cargo fuzz run "${build[@]}" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$seconds" "${limits[@]}"
      cargo fuzz cmin "${build[@]}" "$t" "fuzz/corpus/$t"
    done
    ;;
  *)
    echo "usage: scripts/fuzz.sh smoke [SECONDS] | run SECONDS [TARGET...]" >&2
    exit 2
    ;;
esac
