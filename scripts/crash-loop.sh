#!/usr/bin/env bash
# The crash loop of issue #17: `vccid serve` killed with SIGKILL ROUNDS times (default 1000)
# at random moments during PIV key generation, certificate import, PIN changes, wrong PINs
# and run-time enrollment, each restart checked (the state is the old one or the new one,
# readable, the PIN retry counter never back up, no temporary file left). It is the CI test
# crates/vccid/tests/crash_safety.rs with more rounds; SEED (the test prints the one it used)
# replays a run's sequence of operations, though not where each kill lands: the kill's delay
# is drawn within how long that operation took this time.
#
# usage: scripts/crash-loop.sh [ROUNDS [SEED]]
set -euo pipefail
cd "$(dirname "$0")/.."
export CRASH_ROUNDS="${1:-1000}"
[ -n "${2:-}" ] && export CRASH_SEED="$2"
log=$(mktemp /tmp/crash-loop.XXXXXX.log)
status=0
cargo test -p vccid --test crash_safety -- --nocapture >"$log" 2>&1 || status=$?
# Every round's line is in the log; the seed, the summary and any failure are shown here.
grep -E '^crash_safety:|panicked|^test result' "$log" || true
if [ "$status" -eq 0 ]; then
  rm -f "$log"
else
  tail -40 "$log"; echo "crash loop FAILED (log: $log)"
fi
exit "$status"
