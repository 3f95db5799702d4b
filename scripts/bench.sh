#!/usr/bin/env bash
# Benchmarks, each beside its reference peer measured in the same run (figures for the
# README; never pass/fail checks). Needs root (a private pcscd) and installs what it needs.
#  1. in-process: vccid's card (cargo bench -p card: AWS-LC keys, an NSS database, a SoftHSM2
#     token) against libcacard's card on the same NSS database (bench/libcacard_card.c, built
#     here against Debian's libcacard-dev) and `openssl speed rsa2048`;
#  2. through one private pcscd + vpcd: APDU round trips of vccid against a card that answers
#     instantly; then vccid and libcacard on the same NSS database side by side: round trips,
#     whole-process `pkcs15-tool -D` and `pkcs11-tool --sign`; vccid's idle RSS and its time
#     from start to card present; PIV: yubico-piv-tool -a status vs pkcs15-tool -D (CAC).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
W=${BENCH_WORK:-$(mktemp -d)}
export BENCH_WORK=$W
if [ -z "${BENCH_IN_NS:-}" ]; then
  need=(pcscd vsmartcard-vpcd opensc libnss3-tools softhsm2 libcacard-dev pkgconf gcc iproute2 yubico-piv-tool)
  missing=(); for p in "${need[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
  [ "${#missing[@]}" -eq 0 ] || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }
  cargo build -q --release -p vccid -p vpcd --examples --bins
  gcc -O2 -Wall -o "$W/libcacard_card" bench/libcacard_card.c $(pkg-config --cflags --libs libcacard)
  # The seed's NSS database, and a SoftHSM2 token with the same three identities.
  mkdir -p "$W/nss" "$W/hsm/tokens"
  certutil -N -d "sql:$W/nss" --empty-password
  head -c 2048 /dev/urandom > "$W/noise"
  for n in 1 2 3; do
    certutil -d "sql:$W/nss" -x -t CT,CT,CT -S -s "CN=cert$n" -n "cert$n" -k rsa -g 2048 -v 12 -Z SHA256 -m "10$n" -z "$W/noise" </dev/null >/dev/null 2>&1
  done
  export SOFTHSM2_CONF=$W/hsm/softhsm2.conf
  echo "directories.tokendir = $W/hsm/tokens" > "$SOFTHSM2_CONF"
  softhsm2-util --init-token --free --label bench --so-pin 12345678 --pin 77777777 >/dev/null
  for n in 1 2 3; do
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=cert$n" -keyout "$W/hsm/k$n.pem" -out "$W/hsm/c$n.pem" 2>/dev/null
    openssl x509 -outform DER -in "$W/hsm/c$n.pem" -out "$W/hsm/c$n.der"
    softhsm2-util --import "$W/hsm/k$n.pem" --token bench --label "cert$n" --id "0$n" --pin 77777777 >/dev/null
    pkcs11-tool --module /usr/lib/softhsm/libsofthsm2.so --token-label bench --login --pin 77777777 \
      --write-object "$W/hsm/c$n.der" --type cert --id "0$n" --label "cert$n" >/dev/null 2>&1
  done
  echo "== in-process: vccid's card"
  VCCID_BENCH_NSS_DB="sql:$W/nss" \
  VCCID_BENCH_PKCS11_URI="pkcs11:token=bench?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=77777777" \
    cargo bench -q -p card 2>/dev/null | grep -E '^(read_certs|select|sign)'
  echo "== in-process: libcacard's card (same NSS database)"
  "$W/libcacard_card" bench "$W/nss"
  echo "openssl: $(openssl speed -seconds 3 rsa2048 2>/dev/null | awk '/^rsa 2048/ {printf "RSA-2048 sign %.3f ms/op", $4*1000}')"
  echo "== PIV ECDSA P-256 through GENERAL AUTHENTICATE, beside openssl speed ecdsap256"
  cargo bench -q -p card --bench piv 2>/dev/null | tail -1
  # The vpcd link alone (no pcscd): a fake vpcd times round trips to each card, all on CPU 0
  # (on this VM, wake-ups across the two vCPUs add 100-300 µs of noise per round trip).
  echo "== vpcd transport alone (bench/fake_vpcd.py, pinned to CPU 0)"
  NSSCARD="emulated,backend=certificates,db=sql:$W/nss,cert1=cert1,cert2=cert2,cert3=cert3"
  taskset -c 0 python3 bench/fake_vpcd.py vccid 41011 & sleep 0.3
  taskset -c 0 target/release/vccid --vpcd 127.0.0.1:41011 --card "$NSSCARD" 2>/dev/null & VP=$!
  wait %1; kill $VP
  taskset -c 0 python3 bench/fake_vpcd.py libcacard 41012 & sleep 0.3
  taskset -c 0 "$W/libcacard_card" vpcd "$W/nss" 41012; wait
  echo "== VSCard link (vscclient <-> passthru card, card in vscclient), plaintext and mutual TLS"
  echo "pinned to CPU 0: $(taskset -c 0 target/release/examples/vscard_bench target/release/vscclient 20000)"
  echo "unpinned:        $(target/release/examples/vscard_bench target/release/vscclient 20000)"
  echo "== USB/IP: APDU exchanges (bulk OUT + bulk IN) against vccid --usbip, no guest"
  echo "pinned to CPU 0: $(taskset -c 0 target/release/examples/usbip_bench target/release/vccid 20000)"
  echo "unpinned:        $(target/release/examples/usbip_bench target/release/vccid 20000)"
  echo "== the TLS stream alone (20-byte ping-pong, plaintext beside it)"
  echo "pinned to CPU 0: $(taskset -c 0 target/release/examples/tls_pingpong 50000)"
  # pcscd, the cards and the tools all on CPU 0 as well, for the same reason.
  exec env BENCH_IN_NS=1 taskset -c 0 unshare --mount --net --propagation private --fork --kill-child "$0"
fi
ip link set lo up
mkdir -p /run/pcscd && mount -t tmpfs tmpfs /run/pcscd
export HOME=$W
pcscd -f >"$W/pcscd.log" 2>&1 & PIDS=($!)
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT
until ss -ltn | grep -q ':35964 '; do sleep 0.05; done
VCCID=$ROOT/target/release/vccid
present() { until opensc-tool -l 2>/dev/null | grep -q "^$1 .*Yes"; do sleep 0.01; done; }
absent() { until opensc-tool -l 2>/dev/null | grep -q "^$1 .*No"; do sleep 0.05; done; }
"$VCCID" init "$W/data" >/dev/null 2>&1  # make the card (a --data-dir must exist)
t0=$(date +%s%N)
"$VCCID" --data-dir "$W/data" --vpcd >"$W/vccid.log" 2>&1 & VPID=$!; PIDS+=($VPID)
present 0
t1=$(date +%s%N)
"$ROOT/target/release/examples/instant_card" 127.0.0.1:35964 >/dev/null 2>&1 & IPID=$!; PIDS+=($IPID)
present 1
echo "== through pcscd + vpcd"
echo "start to card present in pcscd: $(( (t1 - t0) / 1000000 )) ms (pcscd polls vpcd every 400 ms)"
N=4000
# VERIFY status (case 1): one exchange on every card, no 61xx/GET RESPONSE round trip.
args=(); for _ in $(seq $N); do args+=(-s "00 20 00 00"); done
rate() { local s e; s=$(date +%s%N); opensc-tool -r "$1" "${args[@]}" >/dev/null 2>&1; e=$(date +%s%N); echo $(( N * 1000000000 / (e - s) )); }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
# Alternating rounds, medians: pcscd and the machine's load make single runs noisy.
compare() {
  local A=() B=()
  for _ in 1 2 3 4 5; do A+=("$(rate 0)"); B+=("$(rate 1)"); done
  local a b; a=$(median "${A[@]}"); b=$(median "${B[@]}")
  echo "round trips (median of 5 × $N): $1 $a/s [${A[*]}], $2 $b/s [${B[*]}], ratio $(ratio "$a" "$b")"
}
compare vccid "instant card"
sleep 2
echo "vccid idle RSS: $(awk '/VmRSS/ {print $2, $3}' /proc/$VPID/status)"
# vccid and libcacard on the same NSS database, side by side.
kill "$VPID" "$IPID"; absent 0; absent 1
"$VCCID" --vpcd --card "emulated,backend=certificates,db=sql:$W/nss,cert1=cert1,cert2=cert2,cert3=cert3" >"$W/vccid-nss.log" 2>&1 & PIDS+=($!)
"$W/libcacard_card" vpcd "$W/nss" 35964 >"$W/libcacard.log" 2>&1 & PIDS+=($!)
present 0; present 1
compare "vccid(NSS)" libcacard
ms() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1 || echo "FAILED: $*" >&2; e=$(date +%s%N); echo $(( (e - s) / 1000000 )); }
echo hi > "$W/msg"
P11=(pkcs11-tool --module /usr/lib/x86_64-linux-gnu/opensc-pkcs11.so)
sign_cmd() { echo "${P11[@]}" --slot-index "$1" --login --pin 12345678 --sign --mechanism SHA256-RSA-PKCS --id 0001 --input-file "$W/msg" --output-file "$W/sig$1"; }
# Alternating runs, 25 each: whole-process times on a shared VM vary by 2-4x from run to run.
# libcacard accepts any PIN on an empty-password database; vccid checks its own (12345678).
D0=(); D1=(); S0=(); S1=()
for _ in $(seq 25); do
  D0+=("$(ms pkcs15-tool --reader 0 -D)"); D1+=("$(ms pkcs15-tool --reader 1 -D)")
  S0+=("$(ms $(sign_cmd 0))"); S1+=("$(ms $(sign_cmd 1))")
done
echo "pkcs15-tool -D, median of 25: vccid(NSS) $(median "${D0[@]}") ms, libcacard $(median "${D1[@]}") ms"
echo "pkcs11-tool --sign, median of 25: vccid(NSS) $(median "${S0[@]}") ms, libcacard $(median "${S1[@]}") ms"
# Idle: vccid --card passthru with a connected vscclient, the card present in pcscd.
pkill -P $$ -f 'vccid|libcacard_card|instant_card' 2>/dev/null || true
absent 0; absent 1
"$VCCID" --vpcd --card passthru,listen=127.0.0.1:2001 >"$W/vccid-pt.log" 2>&1 & HPID=$!; PIDS+=($HPID)
"$ROOT/target/release/vscclient" --card emulated --data-dir "$W/data" 127.0.0.1 2001 </dev/null >"$W/vsc.log" 2>&1 & CPID=$!; PIDS+=($CPID)
present 0
sleep 2
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
h0=$(ticks $HPID); c0=$(ticks $CPID); sleep 5; h1=$(ticks $HPID); c1=$(ticks $CPID)
echo "idle 5 s (stdin closed, card in pcscd): vccid --card passthru $((h1 - h0)) CPU ticks, RSS $(awk '/VmRSS/ {print $2, $3}' /proc/$HPID/status); vscclient $((c1 - c0)) ticks, RSS $(awk '/VmRSS/ {print $2, $3}' /proc/$CPID/status) (100 ticks = 1 CPU-second)"
# PIV: yubico-piv-tool -a status on the PIV profile against pkcs15-tool -D on the CAC profile
# (issue 5's target: no slower), same default identities, alternating, 25 each.
kill "$HPID" "$CPID" 2>/dev/null || true
absent 0
"$VCCID" --data-dir "$W/data" --vpcd 127.0.0.1:35963 >"$W/vccid-cac.log" 2>&1 & PIDS+=($!)
"$VCCID" --data-dir "$W/data" --vpcd 127.0.0.1:35964 --card emulated,profile=piv >"$W/vccid-piv.log" 2>&1 & PIDS+=($!)
present 0; present 1
C=(); Y=()
for _ in $(seq 25); do
  C+=("$(ms pkcs15-tool --reader 0 -D)"); Y+=("$(ms yubico-piv-tool -r "Virtual PCD 00 01" -a status)")
done
echo "median of 25: yubico-piv-tool -a status (PIV profile) $(median "${Y[@]}") ms, pkcs15-tool -D (CAC profile) $(median "${C[@]}") ms"
