#!/usr/bin/env bash
# In-guest benchmark (issue 4): the same OpenSC work in a Linux guest under TCG, through
# vccid's reader over usbredir versus QEMU's in-process usb-ccid + ccid-card-emulated
# (libcacard) on the same NSS database, alternating, three rounds each. Both on UHCI (QEMU's
# own usb-ccid desynchronises xHCI guests), plus vccid on xHCI, where QEMU's reader cannot run,
# and vccid over USB/IP (the guest's vhci-hcd), through the tests' virtio-serial bridge (socat
# in the guest) and over QEMU's user-mode network (as a networked VM would reach it; issue 7).
# Figures: the guest's uptime from reader found to done (reader, ATR, pkcs15-tool -D, sign,
# 300-APDU loop) and the loop alone.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
W=$(mktemp -d)
cargo build -q --release -p vccid
bash tests/guest/build-initramfs.sh "$W/img" >/dev/null
mkdir -p "$W/nss"
certutil -N -d "sql:$W/nss" --empty-password
head -c 2048 /dev/urandom > "$W/noise"
for n in 1 2 3; do
  certutil -d "sql:$W/nss" -x -t CT,CT,CT -S -s "CN=cert$n" -n "cert$n" -k rsa -g 2048 -v 12 -Z SHA256 -m "10$n" -z "$W/noise" </dev/null >/dev/null 2>&1
done
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
boot() {  # LOG CONTROLLER DEVICE-ARGS...
  local log=$1 hc=$2; shift 2
  timeout 240 qemu-system-x86_64 -machine q35 -accel tcg -m 512 -smp 1 -nodefaults -display none -vga none \
    -monitor none -nic none -no-reboot -serial "file:$log" -kernel "$W/img/kernel" -initrd "$W/img/initramfs.cpio" \
    -append "console=ttyS0 loglevel=4 panic=-1 8250.nr_uarts=1 e2e.apdus=300 ${APPEND:-}" \
    -device "$hc,id=hc" "$@" >/dev/null 2>&1 || true
}
usbip_ours() {  # LOG: the guest's socat bridge straight to vccid --usbip (QEMU reconnects after the list)
  local p; p=$(free_port)
  "$ROOT/target/release/vccid" --usbip "127.0.0.1:$p" \
    --card "emulated,backend=certificates,db=sql:$W/nss,cert1=cert1,cert2=cert2,cert3=cert3" >/dev/null 2>&1 &
  local v=$!
  APPEND=e2e.usbip=2 boot "$1" qemu-xhci -device virtio-serial-pci,id=vs \
    -chardev "socket,id=ui,host=127.0.0.1,port=$p,reconnect=1,nodelay=on" -device virtserialport,bus=vs.0,chardev=ui,name=usbip
  kill $v; wait $v 2>/dev/null || true
}
ours() {  # LOG CONTROLLER
  local p; p=$(free_port)
  "$ROOT/target/release/vccid" --usbredir "127.0.0.1:$p" \
    --card "emulated,backend=certificates,db=sql:$W/nss,cert1=cert1,cert2=cert2,cert3=cert3" >/dev/null 2>&1 &
  local v=$!
  boot "$1" "$2" -chardev "socket,id=cc,host=127.0.0.1,port=$p,reconnect=1,nodelay=on" -device usb-redir,chardev=cc,bus=hc.0
  kill $v; wait $v 2>/dev/null || true
}
figures() {  # LOG -> "total loop" (seconds, guest uptime)
  tr -d '\r' < "$1" | awk '
    /E2E-RESULT usb_reader=1/ { for (i=1;i<=NF;i++) if ($i ~ /^t=/) { sub("t=","",$i); start=$i } }
    /E2E-RESULT apdu_loop=/ { ok=$2; for (i=1;i<=NF;i++) { if ($i ~ /^t0=/) { sub("t0=","",$i); t0=$i } if ($i ~ /^t1=/) { sub("t1=","",$i); t1=$i } } }
    /E2E-DONE/ { sub("t=","",$2); done=$2 }
    /E2E-RESULT sign=/ { sign=$2 }
    END { printf "%.2f %.2f %s %s\n", done-start, t1-t0, ok, sign }'
}
usbip_net_ours() {  # LOG: the guest's vhci-hcd over QEMU's user-mode network (10.0.2.2 is the host's loopback)
  local p; p=$(free_port)
  "$ROOT/target/release/vccid" --usbip "127.0.0.1:$p" \
    --card "emulated,backend=certificates,db=sql:$W/nss,cert1=cert1,cert2=cert2,cert3=cert3" >/dev/null 2>&1 &
  local v=$!
  APPEND="e2e.usbip=3 e2e.usbipserver=10.0.2.2 e2e.usbipport=$p" boot "$1" qemu-xhci \
    -netdev user,id=n0 -device virtio-net-pci,netdev=n0
  kill $v; wait $v 2>/dev/null || true
}
OURS=(); QEMUS=(); XHCI=(); USBIP=(); USBIPNET=()
for round in 1 2 3; do
  ours "$W/ours$round.log" ich9-usb-uhci1
  OURS+=("$(figures "$W/ours$round.log")")
  boot "$W/qemu$round.log" ich9-usb-uhci1 -device usb-ccid,bus=hc.0 \
    -device "ccid-card-emulated,backend=certificates,db=sql:$W/nss,cert1=cert1,cert2=cert2,cert3=cert3"
  QEMUS+=("$(figures "$W/qemu$round.log")")
  ours "$W/xhci$round.log" qemu-xhci
  XHCI+=("$(figures "$W/xhci$round.log")")
  usbip_ours "$W/usbip$round.log"
  USBIP+=("$(figures "$W/usbip$round.log")")
  usbip_net_ours "$W/usbipnet$round.log"
  USBIPNET+=("$(figures "$W/usbipnet$round.log")")
  echo "round $round [total loop ok sign]: vccid UHCI ${OURS[-1]} | QEMU usb-ccid UHCI ${QEMUS[-1]} | vccid xHCI ${XHCI[-1]} | vccid USB/IP bridge ${USBIP[-1]} | vccid USB/IP network ${USBIPNET[-1]}"
done
med() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
col() { printf '%s\n' "$@" | cut -d' ' -f"$N"; }
for N in 1 2; do
  what=$([ $N = 1 ] && echo "total (reader found to done)" || echo "300-APDU loop")
  echo "median $what: vccid UHCI $(med $(col "${OURS[@]}")) s, QEMU usb-ccid UHCI $(med $(col "${QEMUS[@]}")) s, vccid xHCI $(med $(col "${XHCI[@]}")) s, vccid USB/IP bridge $(med $(col "${USBIP[@]}")) s, vccid USB/IP network $(med $(col "${USBIPNET[@]}")) s"
done
