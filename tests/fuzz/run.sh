#!/usr/bin/env bash
# Builds the fuzz targets and runs each for SECONDS with libFuzzer (cargo-fuzz, stable Rust:
# no sanitizer, see below). Prints one line per target, `fuzz: TARGET: N runs, C crashes`,
# and exits non-zero if any target crashed (panicked, aborted, ran out of memory, or hung
# for more than 10 s on one input). Crashing inputs go to tests/fuzz/artifacts/TARGET/;
# reproduce one with `cargo fuzz run --fuzz-dir tests/fuzz -s none TARGET FILE`, minimize it
# with `cargo fuzz tmin --fuzz-dir tests/fuzz -s none TARGET FILE`, then add it as a test to
# a new module tests/integration/fuzz_regressions.rs (declared in tests/integration/main.rs).
#
# Usage: tests/fuzz/run.sh SECONDS [TARGET...]     (default: every target)
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). The corpora live in
# tests/fuzz/corpus/TARGET/ (not committed); an empty one is seeded by the gen_seeds program.
set -euo pipefail
secs=${1:?usage: tests/fuzz/run.sh SECONDS [TARGET...]}
shift
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(pem_chain private_key crl config control renewal_info)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: cargo-fuzz is not installed (cargo install cargo-fuzz --locked)" >&2
  exit 2
fi
# `-s none`: the sanitizers need nightly (-Zsanitizer); without one, libFuzzer's coverage
# instrumentation (-Cpasses=sancov-module, stable flags) still works, and Rust panics,
# overflow checks and debug assertions still crash. 16 codegen units: a faster build.
flags=(--fuzz-dir tests/fuzz -s none --codegen-units 16)
start=$(date +%s)
echo "fuzz: building the targets"
mkdir -p "$here/artifacts"
if ! cargo fuzz build "${flags[@]}" >"$here/artifacts/build.log" 2>&1; then
  tail -40 "$here/artifacts/build.log" >&2
  echo "fuzz: build failed" >&2
  exit 1
fi
echo "fuzz: built in $(($(date +%s) - start)) s"

bindir="${CARGO_TARGET_DIR:-$here/target}"
case "$bindir" in /*) ;; *) bindir="$PWD/$bindir" ;; esac
bindir="$bindir/x86_64-unknown-linux-gnu/release"

failed=0
for t in "${targets[@]}"; do
  corpus="$here/corpus/$t"
  artifacts="$here/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  if [ -z "$(ls -A "$corpus")" ]; then
    "$bindir/gen_seeds" "$here/corpus" >/dev/null
  fi
  found() { find "$artifacts" -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' \) | wc -l; }
  before=$(found)
  log="$artifacts/last-run.log"
  status=0
  "$bindir/$t" "$corpus" -max_total_time="$secs" -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" >"$log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  crashes=$(($(found) - before))
  if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then crashes=1; fi
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  echo "fuzz: $t: ${runs:-0} runs, $crashes crashes (${rate:-0} runs/s, corpus $(ls "$corpus" | wc -l))"
  if [ "$status" -ne 0 ]; then
    failed=1
    grep -E "panicked at|^==[0-9]+== ERROR|SUMMARY|Test unit written|Slowest unit|deadly signal|out-of-memory" "$log" | head -8 >&2 || true
    grep -A12 "^stack backtrace:" "$log" | head -14 >&2 || true
    echo "fuzz: $t: full log in $log" >&2
  fi
done
echo "fuzz: done in $(($(date +%s) - start)) s"
exit $failed
