#!/usr/bin/env bash
# build-initramfs.sh OUTDIR - a busybox initramfs that turns Debian's kernel into a smart-card
# guest: pcscd + libccid + OpenSC + pcsc-tools with their libraries, the USB host-controller
# modules, usbip + vhci-hcd and socat + virtio-serial (USB/IP with no guest network), systemd-udevd (pcscd's hotplug needs udev's netlink events) and init.sh as /init.
# Everything comes from the host's installed packages. Writes OUTDIR/initramfs.cpio and
# OUTDIR/kernel (a link to the newest /boot/vmlinuz-*).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:?usage: build-initramfs.sh OUTDIR}
KVER=$(ls /boot/vmlinuz-* | sed 's|/boot/vmlinuz-||' | sort -V | tail -1)
ROOT=$OUT/rootfs
MULTI=/usr/lib/x86_64-linux-gnu
[ -x /bin/busybox ] && file -L /bin/busybox | grep -q 'statically linked' \
  || { echo "need busybox-static" >&2; exit 1; }
rm -rf "$ROOT"; mkdir -p "$ROOT"/{usr/bin,usr/sbin,usr/lib64,etc,proc,sys,dev,run,tmp,root,var} "$ROOT$MULTI"
ln -s usr/bin "$ROOT/bin"; ln -s usr/sbin "$ROOT/sbin"; ln -s usr/lib "$ROOT/lib"; ln -s usr/lib64 "$ROOT/lib64"
chmod 1777 "$ROOT/tmp"
canon() { case $1 in /lib/*|/lib64/*|/bin/*|/sbin/*) echo "/usr$1";; *) echo "$1";; esac; }
put() { local d; d=$(canon "${2:-$1}"); mkdir -p "$ROOT$(dirname "$d")"; cp -L "$1" "$ROOT$d"; }
put_elf() {   # a binary and, transitively, its shared libraries
  put "$1"
  ldd "$1" 2>/dev/null | awk '/=> \//{print $3} /^[ \t]*\/.*ld-linux/{print $1}' | while read -r l; do
    [ -e "$ROOT$(canon "$l")" ] || put "$l"
  done
}
for b in /usr/sbin/pcscd /usr/bin/pcsc_scan /usr/bin/opensc-tool /usr/bin/pkcs15-tool /usr/bin/pkcs11-tool /usr/bin/udevadm \
         /usr/sbin/usbip /usr/bin/socat; do
  put_elf "$b"
done
# Our raw-APDU tool (hostcard's example), when the caller built it: APDU_TOOL=path.
if [ -n "${APDU_TOOL:-}" ]; then put_elf "$APDU_TOOL"; cp -L "$APDU_TOOL" "$ROOT/usr/bin/apdu"; fi
mkdir -p "$ROOT/usr/lib/systemd"; ln -sf /usr/bin/udevadm "$ROOT/usr/lib/systemd/systemd-udevd"
# dlopen()ed: the libccid driver, pcsc-lite for OpenSC, the PKCS#11 module, and libgcc_s
# (glibc needs it for thread cancellation; pcscd aborts without it).
for l in /usr/lib/pcsc/drivers/ifd-ccid.bundle/Contents/Linux/libccid.so $MULTI/libpcsclite.so.1 \
         $MULTI/libusb-1.0.so.0 $MULTI/libudev.so.1 $MULTI/opensc-pkcs11.so $MULTI/libgcc_s.so.1; do
  put_elf "$l"
done
# libccid's Info.plist is a link to /etc/libccid_Info.plist on Debian.
put /etc/libccid_Info.plist
ln -sf /etc/libccid_Info.plist "$ROOT/usr/lib/pcsc/drivers/ifd-ccid.bundle/Contents/Info.plist"
put /etc/opensc/opensc.conf
cp /bin/busybox "$ROOT/usr/bin/busybox"
/bin/busybox --list-full | while read -r app; do
  d=$(canon "/$app"); [ -e "$ROOT$d" ] || [ -L "$ROOT$d" ] || ln -s /usr/bin/busybox "$ROOT$d"
done
# USB host-controller modules (xHCI, UHCI, and USB/IP's vhci-hcd), virtio-serial and
# virtio-net (the networked USB/IP benchmark), with their dependencies, in load order.
: > "$ROOT/etc/modules"
addmod() {
  local m=${1//-/_} d fn
  grep -q "/$m.ko$" "$ROOT/etc/modules" 2>/dev/null && return
  for d in $(modinfo -k "$KVER" -F depends "$m" | tr ',' ' '); do addmod "$d"; done
  fn=$(modinfo -k "$KVER" -F filename "$m")
  case $fn in builtin*|"") return;; esac
  mkdir -p "$ROOT/usr/lib/modules"
  case $fn in
    *.ko) cp "$fn" "$ROOT/usr/lib/modules/$m.ko";;
    *.ko.xz) xz -dc "$fn" > "$ROOT/usr/lib/modules/$m.ko";;
    *.ko.zst) zstd -qdc "$fn" > "$ROOT/usr/lib/modules/$m.ko";;
  esac
  echo "/usr/lib/modules/$m.ko" >> "$ROOT/etc/modules"
}
for m in xhci_pci uhci_hcd vhci_hcd virtio_pci virtio_console virtio_net; do addmod "$m"; done
echo 'root:x:0:0:root:/root:/bin/sh' > "$ROOT/etc/passwd"; echo 'root:x:0:' > "$ROOT/etc/group"
printf '%s\n' $MULTI /lib/x86_64-linux-gnu > "$ROOT/etc/ld.so.conf"
ldconfig -r "$ROOT" 2>/dev/null || true
install -m 0755 "$HERE/init.sh" "$ROOT/init"
mknod -m 600 "$ROOT/dev/console" c 5 1; mknod -m 666 "$ROOT/dev/null" c 1 3
( cd "$ROOT" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner 0:0 --quiet ) > "$OUT/initramfs.cpio"
ln -sfn "/boot/vmlinuz-$KVER" "$OUT/kernel"
echo "initramfs $(du -h "$OUT/initramfs.cpio" | cut -f1), kernel $KVER"
