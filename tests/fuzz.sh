#!/usr/bin/env bash
# Runs each fuzz target (cargo-fuzz, libFuzzer) for a bounded time on a copy of the corpus
# kept in fuzz/corpus, and prints how many inputs each executed. Any crash fails the run.
#   tests/fuzz.sh [SECONDS_PER_TARGET]        default 60
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 enables them on the stable toolchain.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SECS="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
WORK="$(mktemp -d /tmp/sippool-fuzz.XXXXXX)"
cd "$ROOT/fuzz"
for t in framer message proxy stun; do
  cp -r "corpus/$t" "$WORK/$t"
  out=$(RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "$WORK/$t" -- -max_total_time="$SECS" -print_final_stats=1 2>&1) || {
    echo "$out" | tail -40
    echo "fuzz $t: crashed; artifacts in $ROOT/fuzz/artifacts/$t"
    exit 1
  }
  runs=$(echo "$out" | awk '/stat::number_of_executed_units/{print $2}')
  echo "fuzz $t: ${runs:-?} inputs in ${SECS}s, no crash"
done
rm -rf "$WORK"
echo "fuzz: 4 passed, 0 failed"
