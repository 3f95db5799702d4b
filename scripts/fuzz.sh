#!/usr/bin/env bash
# Builds and runs every fuzz target for SECONDS (default 15) each. cargo-fuzz needs nightly
# compiler flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them. Leak detection is
# off: the card target keeps one card in a static on purpose.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH="${1:-15}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked -q
export RUSTC_BOOTSTRAP=1 ASAN_OPTIONS=detect_leaks=0
targets=$(cargo fuzz list)
# A build directory of its own: the deep runs (scripts/fuzz-deep.sh) build without ASan into
# fuzz/target, and libFuzzer's fork mode starts the target's binary again for every job, so
# one build replacing the other's binaries would change a deep run under way.
DIR=target/short
cargo fuzz build -O --target-dir "$DIR" $targets >/dev/null 2>&1 || cargo fuzz build -O --target-dir "$DIR"
failed=0
for t in $targets; do
  mkdir -p "corpus/$t" "seeds/$t"
  # Each run starts from the committed corpus, seeds/TARGET (real transcripts and the
  # minimised deep-run corpus, scripts/fuzz-deep.sh); libFuzzer writes what it finds to the
  # first directory only, the uncommitted scratch corpus/TARGET, so seeds/ stays as committed.
  if cargo fuzz run -O --target-dir "$DIR" "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -detect_leaks=0 >"/tmp/fuzz-$t.log" 2>&1; then
    echo "fuzz $t: $(grep -o 'Done [0-9]* runs' "/tmp/fuzz-$t.log" | awk '{print $2}') runs, no crash"
  else
    echo "fuzz $t: FAILED"; tail -30 "/tmp/fuzz-$t.log"; failed=1
  fi
done
exit $failed
