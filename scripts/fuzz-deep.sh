#!/usr/bin/env bash
# Deep fuzzing (not run by CI; about 1.5 core-hours at the default depth): builds every fuzz
# target (or those named), runs each for FUZZ_RUNS executions (default 10 000 000) starting
# from its committed corpus fuzz/seeds/TARGET (and with FUZZ_SCRATCH=1 the local scratch corpus
# fuzz/corpus/TARGET as extra starting material), FUZZ_JOBS targets at a time (default 2);
# then minimises what it found together with the committed corpus into fuzz/seeds/TARGET
# (libFuzzer's -merge=1, which is what `cargo fuzz cmin` runs, here over several input
# directories; the real-transcript seeds real-* are always kept), measures the line and region
# coverage of the project's crates over that corpus (`cargo fuzz coverage`, llvm-cov), and
# writes a table to fuzz/target/deep/report.md:
#
#   scripts/fuzz-deep.sh                       # every target, 10M executions each
#   FUZZ_RUNS=20000 scripts/fuzz-deep.sh piv_session apdu_parse
#   FUZZ_COVERAGE=0 scripts/fuzz-deep.sh       # skip coverage (libFuzzer's edges only)
#   FUZZ_SECONDS=1200 scripts/fuzz-deep.sh piv_session   # at most 20 minutes
#   FUZZ_FORK=2 FUZZ_JOBS=1 scripts/fuzz-deep.sh piv_session  # one target on two cores
#
# FUZZ_FORK=N runs a target in libFuzzer's fork mode, N processes sharing its corpus: the way
# to give a slow target (piv_session, about 1,000 exec/s a core) every core. The executions
# are then the sum over the processes, as the fork-mode parent counts them.
# FUZZ_TRACE_COMPARES=0 builds without comparison tracing (cargo fuzz --no-trace-compares):
# libFuzzer then learns no operands of comparisons, which matters little where the target
# builds its commands from op codes (piv_session), and runs 1.3 times as many executions.
#
# The deep runs are built without AddressSanitizer (FUZZ_SANITIZER, default none) and with
# debug assertions, so integer overflow panics: the parsers are safe Rust, where ASan finds
# nothing the borrow checker has not, and its quarantine and shadow memory cost 3-10 times the
# executions (apdu_trace: 2,400 exec/s with ASan on this VM). CI's short runs
# (scripts/fuzz.sh) keep ASan.
#
# A crash leaves its input in fuzz/artifacts/TARGET/ and the target's line in the table says so;
# the script then exits 1. Review `git status fuzz/seeds` before committing the corpora.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
RUNS="${FUZZ_RUNS:-10000000}"
JOBS="${FUZZ_JOBS:-2}"
COVERAGE="${FUZZ_COVERAGE:-1}"
# A word list, not an array: deep_one runs in `bash -c` (xargs), which sees exported strings.
BUILD="-O -a -s ${FUZZ_SANITIZER:-none}"
[ "${FUZZ_TRACE_COMPARES:-1}" = 1 ] || BUILD="$BUILD --no-trace-compares"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked -q
export RUSTC_BOOTSTRAP=1 ASAN_OPTIONS=detect_leaks=0
targets="${*:-$(cargo fuzz list)}"
OUT=target/deep
mkdir -p "$OUT"

echo "== building ($(echo $targets | wc -w) targets)"
if [ $# = 0 ]; then
  cargo fuzz build $BUILD
else
  for t in $targets; do cargo fuzz build $BUILD "$t"; done
fi

# The llvm-cov of the toolchain cargo uses (rustup's llvm-tools component).
LLVM_COV=""
if [ "$COVERAGE" = 1 ]; then
  sysroot=$(rustc --print sysroot)
  LLVM_COV=$(ls "$sysroot"/lib/rustlib/*/bin/llvm-cov 2>/dev/null | head -1 || true)
  if [ -z "$LLVM_COV" ]; then
    echo "no llvm-cov in $sysroot (rustup component add llvm-tools): edges only"
    COVERAGE=0
  fi
fi

deep_one() {
  local t=$1
  local dir="$OUT/$t"
  rm -rf "$dir"
  mkdir -p "$dir/new" "$dir/min" "artifacts/$t" "seeds/$t"
  # The local scratch corpus only when asked (FUZZ_SCRATCH=1): what short runs piled up there
  # is unminimised, its large inputs slow every execution (apdu_trace: 2,500 exec/s with it,
  # 10,000 from the committed corpus alone), and a deep run should start from real exchanges.
  local extra=()
  [ "${FUZZ_SCRATCH:-0}" = 1 ] && [ -d "corpus/$t" ] && extra=("corpus/$t")
  # New inputs go to the first directory only: the committed corpus is read, not written.
  local rc=0
  local limit=(-runs="$RUNS")
  # FUZZ_SECONDS caps the time as well (a slow target, e.g. piv_session at about 1,000
  # exec/s, would need hours for 10 million); the table then shows how many ran.
  [ -n "${FUZZ_SECONDS:-}" ] && limit+=(-max_total_time="$FUZZ_SECONDS")
  # Fork mode stops at the first crash: with -ignore_crashes=1 it would go on but keep only
  # the job log's "ERROR:" lines, not the panic's message.
  [ "${FUZZ_FORK:-1}" -gt 1 ] && limit+=(-fork="$FUZZ_FORK")
  local started=$SECONDS
  cargo fuzz run $BUILD "$t" "$dir/new" "seeds/$t" "${extra[@]}" -- "${limit[@]}" \
    -rss_limit_mb=2048 -detect_leaks=0 -print_final_stats=1 -artifact_prefix="artifacts/$t/" \
    >"$dir/run.log" 2>&1 || rc=$?
  local runs rate edges
  runs=$(awk '/stat::number_of_executed_units/ {print $2}' "$dir/run.log")
  rate=$(awk '/stat::average_exec_per_sec/ {print $2}' "$dir/run.log")
  edges=$(grep -o 'cov: [0-9]*' "$dir/run.log" | tail -1 | awk '{print $2}')
  if [ "${FUZZ_FORK:-1}" -gt 1 ]; then
    # The fork-mode parent prints no final stats: its last "#N: cov: ..." line has the total.
    runs=$(grep -o '^#[0-9]*: cov' "$dir/run.log" | tail -1 | tr -dc 0-9)
    rate=$(( ${runs:-0} / (SECONDS - started + 1) ))
  fi
  local crashes
  crashes=$(find "artifacts/$t" -type f -newer "$dir/new" | wc -l)
  if [ "$rc" != 0 ] && [ "$crashes" = 0 ]; then crashes="run failed (rc $rc)"; fi
  # Minimise: the smallest set of inputs with the same coverage, from the committed corpus and
  # what this run found (and the local scratch corpus).
  cargo fuzz run $BUILD "$t" "$dir/min" "seeds/$t" "$dir/new" "${extra[@]}" -- -merge=1 \
    -rss_limit_mb=2048 -detect_leaks=0 >"$dir/merge.log" 2>&1 || true
  if [ -n "$(ls -A "$dir/min")" ]; then
    # Seeds named by hand stay (real-*: real transcripts; others: a crash's input kept
    # under a name that says what it found); libFuzzer's, named by their SHA-1, are replaced.
    find "seeds/$t" -type f -regextype posix-extended -regex '.*/[0-9a-f]{40}' -delete
    cp "$dir/min"/* "seeds/$t/"
    # A named seed copied in under its hash is already kept under its own name.
    for f in "seeds/$t"/*-*; do
      [ -e "$f" ] || continue
      rm -f "seeds/$t/$(sha1sum "$f" | cut -c1-40)"
    done
  fi
  local lines="-" regions="-"
  if [ "$COVERAGE" = 1 ]; then
    if cargo fuzz coverage -O "$t" "seeds/$t" >"$dir/coverage.log" 2>&1; then
      local bin
      bin=$(ls target/x86_64-unknown-linux-gnu/coverage/x86_64-unknown-linux-gnu/release/"$t")
      # The project's own crates only: not the standard library, dependencies or the target.
      "$LLVM_COV" report "$bin" -instr-profile="coverage/$t/coverage.profdata" \
        -ignore-filename-regex='/(\.cargo|rustc|\.rustup|fuzz)/' >"$dir/coverage.txt" 2>&1 || true
      regions=$(awk '/^TOTAL/ {printf "%d/%d (%s)", $2 - $3, $2, $4}' "$dir/coverage.txt")
      lines=$(awk '/^TOTAL/ {printf "%d/%d (%s)", $8 - $9, $8, $10}' "$dir/coverage.txt")
    else
      lines="build failed"
    fi
  fi
  printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$t" "${runs:-?}" "${rate:-?}" \
    "${edges:-?}" "${lines:-?}" "${regions:-?}" "$crashes" \
    "$(ls "seeds/$t" | wc -l) / $(du -sh --apparent-size "seeds/$t" | cut -f1)" >"$dir/row.md"
  cat "$dir/row.md"
}
export -f deep_one
export OUT RUNS COVERAGE LLVM_COV BUILD FUZZ_FORK

echo "== running $RUNS executions per target, $JOBS at a time"
# shellcheck disable=SC2086
printf '%s\n' $targets | xargs -P "$JOBS" -I{} bash -c 'deep_one {}'

{
  echo "Deep fuzzing, $(date -u +%Y-%m-%d), $RUNS executions per target, $(nproc) cores, $JOBS at a time."
  echo "Coverage: llvm-cov over the minimised corpus, of the project's code linked into each target (not the standard library or dependencies)."
  echo
  echo "| target | executions | exec/s | edges (libFuzzer cov) | lines covered | regions covered | crashes | corpus (files / size) |"
  echo "|---|---|---|---|---|---|---|---|"
  for t in $targets; do cat "$OUT/$t/row.md"; done
} >"$OUT/report.md"
echo
cat "$OUT/report.md"
echo
echo "written to fuzz/$OUT/report.md; the minimised corpora are in fuzz/seeds/"
failed=0
for t in $targets; do
  [ "$(awk -F'|' '{gsub(/ /, "", $8); print $8}' "$OUT/$t/row.md")" = 0 ] || failed=1
done
exit $failed
