#!/bin/sh
# /init of the guest: busybox ash as PID 1; reports on the serial console as
# "E2E-RESULT name=value" lines and hex blobs, then powers off. Kernel parameters:
# e2e.pin=PIN (default 12345678), e2e.keyid=ID (default 0001), e2e.apdus=N (default 0),
# e2e.events=1: print "E2E-WAIT remove" / "E2E-WAIT insert" and report whether the reader saw
# the host remove and reinsert the card, e2e.big=1: a 4096-byte response (GET CHALLENGE with an
# extended Le) through the reader, e2e.usbip=1: the reader comes over USB/IP instead of a USB
# controller: socat bridges guest-local 127.0.0.1:3240 to the virtio-serial port named "usbip"
# (the host's end reaches vccid --usbip), then usbip list / attach; at the end usbip detach,
# "E2E-WAIT usbip-detached", and a second attach that must read the card again; e2e.usbip=2:
# the same without the detach and second attach (benchmarks); e2e.usbip=3: like 2 but over
# QEMU's user-mode network instead of the bridge (eth0 10.0.2.15; the server is
# e2e.usbipserver=ADDR, default 10.0.2.2, port e2e.usbipport=PORT, default 3240; benchmarks).
# e2e.usbwait=S: how long to wait for a smart-card reader to appear (default 60 s).
# e2e.readers=N (N > 1): N readers each with a card: report each reader's name and sign with
# each (results reader_R, sign_R, blobs data_R, sig_R), then power off. e2e.busids=A,B,...:
# the USB/IP bus ids to attach (default 1-1). e2e.hotplug=1: after signing, "E2E-WAIT
# add-reader" (a second reader must appear), "E2E-WAIT remove-reader" (it must go), a second
# signature on reader 0, "E2E-WAIT eject" (reader 0's card must go). e2e.libvirt=1: after
# signing, "E2E-WAIT stop-vccid", "start-vccid", "detach", "attach": the reader must go, come
# back (and sign: blob sig_start-vccid), go, come back (and sign).
# e2e.mech=MECHANISM: pkcs11-tool's signature mechanism (default SHA256-RSA-PKCS; an ECDSA one
# writes the signature in OpenSSL's DER format).
export PATH=/usr/sbin:/usr/bin HOME=/root LANG=C
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t tmpfs tmpfs /run; mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /run/pcscd /run/udev /root; ln -sfn /run /var/run
PIN=12345678; KEYID=0001; MECH=SHA256-RSA-PKCS; APDUS=0; EVENTS=0; BIG=0; USBIP=0; USBWAIT=60
READERS=1; BUSIDS=1-1; HOTPLUG=0; LIBVIRT=0
USBIP_SERVER=127.0.0.1; USBIP_PORT=3240
for a in $(cat /proc/cmdline); do
  case $a in
    e2e.pin=*) PIN=${a#*=};; e2e.keyid=*) KEYID=${a#*=};; e2e.apdus=*) APDUS=${a#*=};;
    e2e.events=*) EVENTS=${a#*=};; e2e.big=*) BIG=${a#*=};; e2e.usbip=*) USBIP=${a#*=};;
    e2e.usbwait=*) USBWAIT=${a#*=};; e2e.mech=*) MECH=${a#*=};;
    e2e.usbipserver=*) USBIP_SERVER=${a#*=};; e2e.usbipport=*) USBIP_PORT=${a#*=};;
    e2e.readers=*) READERS=${a#*=};; e2e.busids=*) BUSIDS=${a#*=};;
    e2e.hotplug=*) HOTPLUG=${a#*=};; e2e.libvirt=*) LIBVIRT=${a#*=};;
  esac
done
up() { cut -d' ' -f1 /proc/uptime; }
result() { echo "E2E-RESULT $*"; }
blob() { [ -f "$2" ] && { echo "E2E-HEX-BEGIN $1"; od -An -v -tx1 "$2" | tr -d ' \n'; echo; echo "E2E-HEX-END $1"; }; }
finish() { echo "E2E-DONE t=$(up)"; sync; poweroff -f; sleep 5; echo o > /proc/sysrq-trigger; }
echo "E2E-BEGIN kernel=$(uname -r) t=$(up)"
dmesg -n 1
for m in $(cat /etc/modules); do insmod "$m" 2>/dev/null; done
/usr/lib/systemd/systemd-udevd --daemon --resolve-names=never
udevadm trigger --type=devices --action=add; udevadm settle -t 10
atr() { timeout 30 opensc-tool -a 2>/dev/null | grep -iE '^([0-9a-f]{2}:)+[0-9a-f]{2}$' | head -1; }
usbip_attach() {   # RESULT-NAME; a few tries: a bridge straight to vccid (no relay) is back
  # only after QEMU's chardev reconnects, a second after vccid closed the list's connection.
  # Attaches every bus id of e2e.busids; the result is how many attached and the tries taken.
  ok=0; tries=0
  for b in $(echo "$BUSIDS" | tr , ' '); do
    n=0
    until usbip --tcp-port "$USBIP_PORT" attach -r "$USBIP_SERVER" -b "$b" > /tmp/attach 2>&1; do
      n=$((n + 1)); [ $n -lt 5 ] || { cat /tmp/attach; break; }; sleep 1
    done
    [ $n -lt 5 ] && ok=$((ok + 1)); tries=$((tries + n + 1))
  done
  if [ $ok -gt 0 ]; then result "$1=$ok tries=$tries"; else result "$1=0"; fi
}
if [ "$USBIP" = 3 ]; then
  ip link set lo up; ip link set eth0 up; ip addr add 10.0.2.15/24 dev eth0
  usbip_attach usbip_attach
elif [ "$USBIP" != 0 ]; then
  ip link set lo up
  VPORT=""
  for n in /sys/class/virtio-ports/*/name; do
    [ "$(cat "$n" 2>/dev/null)" = usbip ] && VPORT=/dev/$(basename "${n%/name}")
  done
  [ -n "$VPORT" ] || { result usbip_port=0; finish; }
  # One guest TCP connection at a time through the port: socat's child for a connection
  # holds the port open until 0.5 s after its TCP side closes. TCP_NODELAY, as usbipd and the
  # usbip tool set it: without it Nagle holds a RET_SUBMIT until the previous one is ACKed.
  socat TCP-LISTEN:3240,bind=127.0.0.1,reuseaddr,fork,nodelay "OPEN:$VPORT" 2>/tmp/socat.log &
  sleep 1
  usbip list -r 127.0.0.1 > /tmp/list 2>&1
  result "usbip_list=\"$(grep -o '08e6:4433' /tmp/list | head -1) $(grep -o '(0b/00/00)' /tmp/list | head -1)\""
  grep -q 08e6:4433 /tmp/list || cat /tmp/list
  sleep 1
  usbip_attach usbip_attach
fi
IFACE=""; i=0
while [ $i -lt $((USBWAIT * 10)) ]; do
  for f in /sys/bus/usb/devices/*/bInterfaceClass; do
    [ "$(cat "$f" 2>/dev/null)" = 0b ] && { IFACE=${f%/bInterfaceClass}; break 2; }
  done
  usleep 100000; i=$((i + 1))
done
[ -n "$IFACE" ] || { result usb_reader=0; finish; }
DEV=${IFACE%/*}/$(basename "$IFACE" | cut -d: -f1)
result "usb_reader=1 id=$(cat "$DEV/idVendor"):$(cat "$DEV/idProduct") t=$(up)"
pcscd -f > /tmp/pcscd.log 2>&1 &
READER=""; i=0
while [ $i -lt 30 ]; do
  READER=$(timeout 10 pcsc_scan -r 2>/dev/null | grep -E '^ *[0-9]+: ' | head -1 | sed 's/^ *[0-9]*: //')
  [ -n "$READER" ] && break; sleep 1; i=$((i + 1))
done
result "reader_listed=$([ -n "$READER" ] && echo 1 || echo 0) reader=\"$READER\""
if [ "$READERS" -gt 1 ]; then
  # e2e.readers=N: N readers (several USB readers, or the slots of one), each with a card that
  # signs; slot index r of OpenSC's PKCS#11 module is reader r when every reader holds a card.
  i=0; COUNT=0
  while [ $i -lt 60 ]; do
    COUNT=$(timeout 10 opensc-tool -l 2>/dev/null | grep -cE '^[0-9]+ +Yes ')
    [ "$COUNT" -ge "$READERS" ] && break; sleep 1; i=$((i + 1))
  done
  result "readers_with_card=$COUNT usb_readers=$(grep -l '^0b$' /sys/bus/usb/devices/*/bInterfaceClass 2>/dev/null | wc -l)"
  timeout 10 opensc-tool -l
  P11=/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so
  timeout 30 pkcs11-tool --module $P11 -L
  r=0
  while [ $r -lt "$READERS" ]; do
    result "reader_$r=\"$(timeout 10 opensc-tool -l 2>/dev/null | sed -n "s/^$r  *Yes  *//p" | head -1)\""
    echo "signed in the guest by reader $r" > /tmp/data_$r
    if timeout 120 pkcs11-tool --module $P11 --slot-index "$r" --login --pin "$PIN" --sign \
         --mechanism "$MECH" --id "$KEYID" --input-file /tmp/data_$r --output-file /tmp/sig_$r \
         > /tmp/sign.out 2>&1; then
      result "sign_$r=1"; blob data_$r /tmp/data_$r; blob sig_$r /tmp/sig_$r
    else
      result "sign_$r=0"; cat /tmp/sign.out
    fi
    r=$((r + 1))
  done
  finish
fi
ATR=""; i=0
while [ -n "$READER" ] && [ $i -lt 20 ]; do
  ATR=$(atr)
  [ -n "$ATR" ] && break; sleep 1; i=$((i + 1))
done
result "atr=${ATR:-none}"
if [ -n "$ATR" ]; then
  result "card_driver=\"$(timeout 60 opensc-tool -n 2>/dev/null | grep -v '^Using reader' | head -1)\""
  timeout 120 pkcs15-tool -D > /tmp/p15 2>&1
  result "pkcs15_certs=$(grep -c '^X.509 Certificate' /tmp/p15)"
  P11=/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so
  echo "signed in the guest" > /tmp/data
  FORMAT=""; case $MECH in ECDSA*) FORMAT="--signature-format openssl";; esac
  if timeout 120 pkcs11-tool --module $P11 --login --pin "$PIN" --sign --mechanism "$MECH" $FORMAT \
       --id "$KEYID" --input-file /tmp/data --output-file /tmp/sig > /tmp/sign.out 2>&1; then
    result "sign=1"; blob data /tmp/data; blob sig /tmp/sig
  else
    result "sign=0"; cat /tmp/sign.out
  fi
  if [ "$APDUS" -gt 0 ]; then
    set --; n=0; while [ $n -lt "$APDUS" ]; do set -- "$@" -s 00A4040007A000000116DB00; n=$((n + 1)); done
    t0=$(up); timeout 120 opensc-tool "$@" > /tmp/loop 2>&1; t1=$(up)
    result "apdu_loop=$(grep -c 'SW1=0x61\|SW1=0x90' /tmp/loop)/$APDUS t0=$t0 t1=$t1"
  fi
  if [ "$BIG" = 1 ]; then
    # GET CHALLENGE with an extended Le of 4096, through pcscd and libccid (extended APDU level).
    result "big_response=\"$(timeout 60 apdu 00840000001000 2>&1 | tail -1)\""
  fi
  if [ "$EVENTS" = 1 ]; then
    # pcscd learns of both through the reader's interrupt endpoint (NotifySlotChange).
    wait_state() { i=0; while [ $i -lt 60 ]; do timeout 10 opensc-tool -l 2>/dev/null | grep -qE "^0 +$1" && return 0; usleep 500000; i=$((i + 1)); done; return 1; }
    echo "E2E-WAIT remove"
    wait_state No && result "removal_seen=1" || result "removal_seen=0"
    echo "E2E-WAIT insert"
    wait_state Yes && result "insertion_seen=1" || result "insertion_seen=0"
    result "after_insert=\"$(timeout 60 opensc-tool -n 2>/dev/null | grep -v '^Using reader' | head -1)\""
    # An idle window with pcscd running: the host measures the reader's CPU meanwhile.
    echo "E2E-WAIT idle-begin"; sleep 5; echo "E2E-WAIT idle-end"
  fi
  if [ "$LIBVIRT" = 1 ]; then
    # libvirt's run-time changes (issue #16): vccid stopped and started again, QEMU's chardev
    # reconnecting by itself (<reconnect>), then `virsh detach-device` / `attach-device` of the
    # redirdev. Each seen as the reader leaving and coming back; a signature after each. The
    # restart comes first: libvirt 9.0 hot-plugs a redirdev's chardev with reconnect=0.
    readers() { timeout 10 opensc-tool -l 2>/dev/null | grep -cE '^[0-9]+ +(Yes|No) '; }
    wait_readers() { i=0; while [ $i -lt 90 ]; do [ "$(readers)" = "$1" ] && return 0; usleep 500000; i=$((i + 1)); done; return 1; }
    sign_as() {   # RESULT-NAME SIGNATURE-FILE
      if timeout 120 pkcs11-tool --module $P11 --login --pin "$PIN" --sign --mechanism "$MECH" $FORMAT \
           --id "$KEYID" --input-file /tmp/data --output-file "$2" > /tmp/sign.out 2>&1; then
        result "$1=1"
      else
        result "$1=0"; cat /tmp/sign.out
      fi
    }
    for step in stop-vccid:0 start-vccid:1 detach:0 attach:1; do
      echo "E2E-WAIT ${step%:*}"
      wait_readers "${step#*:}" && result "${step%:*}_seen=1 t=$(up)" || result "${step%:*}_seen=0"
      [ "${step#*:}" = 1 ] && sign_as "sign_after_${step%:*}" "/tmp/sig_${step%:*}"
    done
    blob sig_start-vccid /tmp/sig_start-vccid
  fi
  if [ "$HOTPLUG" = 1 ]; then
    # A second reader added and removed at run time while reader 0 stays, then reader 0's
    # card ejected: each seen through pcscd's hotplug and the reader's interrupt endpoint.
    readers() { timeout 10 opensc-tool -l 2>/dev/null | grep -cE '^[0-9]+ +(Yes|No) '; }
    wait_readers() { i=0; while [ $i -lt 60 ]; do [ "$(readers)" = "$1" ] && return 0; usleep 500000; i=$((i + 1)); done; return 1; }
    echo "E2E-WAIT add-reader"
    wait_readers 2 && result "hotplug_added=1" || result "hotplug_added=0"
    echo "E2E-WAIT remove-reader"
    wait_readers 1 && result "hotplug_removed=1" || result "hotplug_removed=0"
    if timeout 120 pkcs11-tool --module $P11 --login --pin "$PIN" --sign --mechanism "$MECH" $FORMAT \
         --id "$KEYID" --input-file /tmp/data --output-file /tmp/sig2 > /tmp/sign.out 2>&1; then
      result "sign_after=1"
    else
      result "sign_after=0"; cat /tmp/sign.out
    fi
    wait_state() { i=0; while [ $i -lt 60 ]; do timeout 10 opensc-tool -l 2>/dev/null | grep -qE "^0 +$1" && return 0; usleep 500000; i=$((i + 1)); done; return 1; }
    echo "E2E-WAIT eject"
    wait_state No && result "eject_seen=1" || result "eject_seen=0"
  fi
fi
if [ "$USBIP" = 1 ]; then
  P=$(usbip port 2>/dev/null | sed -n 's/^Port \([0-9]*\):.*/\1/p' | head -1)
  usbip detach -p "${P:-0}" > /tmp/detach 2>&1 && result usbip_detach=1 || { result usbip_detach=0; cat /tmp/detach; }
  echo "E2E-WAIT usbip-detached"
  sleep 2
  usbip_attach usbip_reattach
  ATR=""; i=0
  while [ $i -lt 30 ]; do ATR=$(atr); [ -n "$ATR" ] && break; sleep 1; i=$((i + 1)); done
  result "reattach_atr=${ATR:-none}"
fi
finish
