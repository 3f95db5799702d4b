#!/usr/bin/env bash
# Benchmarks, each beside its reference measured in the same run:
#  1. the card engine in-process (cargo bench -p card) and `openssl speed rsa2048`;
#  2. through a private pcscd + vpcd: APDU round trips per second of vccid's card against a
#     card that answers instantly (vpcd example instant_card), whole-process times of
#     `pkcs15-tool -D` and one `pkcs11-tool --sign`, vccid's idle RSS, and the time from
#     starting vccid to the card being present in pcscd.
# Timings here are figures for the README, never pass/fail checks.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
if [ -z "${BENCH_IN_NS:-}" ]; then
  cargo build -q --release -p vccid -p vpcd --examples --bins
  echo "== in-process"
  cargo bench -q -p card 2>/dev/null | grep -E '^(read_certs|select|sign):'
  echo "openssl: $(openssl speed -seconds 3 rsa2048 2>/dev/null | awk '/^rsa 2048/ {printf "RSA-2048 sign %.3f ms/op", $4*1000}')"
  exec env BENCH_IN_NS=1 unshare --mount --net --propagation private --fork --kill-child "$0"
fi
ip link set lo up
mkdir -p /run/pcscd && mount -t tmpfs tmpfs /run/pcscd
W=$(mktemp -d); export HOME=$W
pcscd -f >"$W/pcscd.log" 2>&1 & PIDS=($!)
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT
until ss -ltn | grep -q ':35964 '; do sleep 0.05; done
"$ROOT/target/release/vccid" --data-dir "$W/data" --vpcd 127.0.0.1:1 >/dev/null 2>&1 & P=$!; sleep 1; kill $P  # make identities
t0=$(date +%s%N)
"$ROOT/target/release/vccid" --data-dir "$W/data" --vpcd >"$W/vccid.log" 2>&1 & VPID=$!; PIDS+=($VPID)
until opensc-tool -l 2>/dev/null | grep -q '^0 .*Yes'; do sleep 0.01; done
t1=$(date +%s%N)
"$ROOT/target/release/examples/instant_card" 127.0.0.1:35964 >/dev/null 2>&1 & PIDS+=($!)
until opensc-tool -l 2>/dev/null | grep -q '^1 .*Yes'; do sleep 0.05; done
echo "== through pcscd + vpcd"
echo "start to card present in pcscd: $(( (t1 - t0) / 1000000 )) ms (pcscd polls vpcd every 400 ms)"
N=2000
# VERIFY status (case 1): one exchange on both cards, no 61xx/GET RESPONSE round trip.
args=(); for _ in $(seq $N); do args+=(-s "00 20 00 00"); done
rate() { local r=$1 s e; s=$(date +%s%N); opensc-tool -r "$r" "${args[@]}" >/dev/null 2>&1; e=$(date +%s%N); echo $(( N * 1000000000 / (e - s) )); }
for round in 1 2 3; do
  ours=$(rate 0); inst=$(rate 1)
  echo "round $round: vccid $ours APDU/s, instant card $inst APDU/s, ratio $(awk -v a="$ours" -v b="$inst" 'BEGIN{printf "%.2f", a/b}')"
done
ms() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1; e=$(date +%s%N); echo $(( (e - s) / 1000000 )); }
echo "pkcs15-tool -D: $(ms pkcs15-tool -D) ms, $(ms pkcs15-tool -D) ms, $(ms pkcs15-tool -D) ms"
echo hi > "$W/msg"
SIGN=(pkcs11-tool --module /usr/lib/x86_64-linux-gnu/opensc-pkcs11.so --login --pin 12345678 --sign --mechanism SHA256-RSA-PKCS --id 0001 --input-file "$W/msg" --output-file "$W/sig")
echo "pkcs11-tool --sign: $(ms "${SIGN[@]}") ms, $(ms "${SIGN[@]}") ms, $(ms "${SIGN[@]}") ms"
sleep 2
echo "vccid idle RSS: $(awk '/VmRSS/ {print $2, $3}' /proc/$VPID/status)"
