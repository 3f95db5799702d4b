#!/usr/bin/env bash
# The package on a fresh Debian 12 machine (issue #16), for crates/vccid/tests/package.rs:
#
#   fresh-install.sh DEB WORK CACHE
#
# 1. A debootstrap'd bookworm root (minbase + systemd, dbus: what boots) is made once into
#    CACHE/bookworm.tar and unpacked afresh into WORK/root at every run: nothing of the build
#    tree is inside, only DEB.
# 2. In a chroot: `apt-get install ./DEB man-db bash-completion` (apt pulls the dependencies
#    and the Recommends: pcscd, vsmartcard-vpcd, opensc).
# 3. The root boots with systemd as PID 1 (`systemd-nspawn --boot`, its own network namespace):
#    vccid.service starts under the installed units with the packaged configuration; checks run
#    inside with nsenter.
# 4. `apt-get purge vccid` inside the running system.
#
# Prints "RESULT key=value" lines that the Rust test asserts on; progress goes to stderr.
set -euo pipefail
DEB=$(realpath "$1")
WORK=$(realpath -m "$2")
CACHE=$(realpath -m "$3")
ROOT=$WORK/root
NAME=vccid-pkg-$$
say() { echo "== $*" >&2; }
result() { echo "RESULT $1=$2"; }

first_uri() {
  { grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{for (i = 2; i <= NF; i++) print $i}'
    grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print ($2 ~ /^\[/) ? $4 : $3}'
  } | grep -E '/debian/?$' | grep -v security | head -n1 || true
}
MIRROR=$(first_uri)
[ -n "$MIRROR" ] || MIRROR=http://deb.debian.org/debian

mkdir -p "$CACHE"
if [ ! -s "$CACHE/bookworm.tar" ]; then
  say "debootstrap bookworm (minbase, systemd, dbus) from $MIRROR, once"
  rm -rf "$CACHE/build"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,ca-certificates \
    bookworm "$CACHE/build" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
    { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
  printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$MIRROR" "$MIRROR" >"$CACHE/build/etc/apt/sources.list"
  tar -C "$CACHE/build" -cf "$CACHE/bookworm.tar.part" .
  mv "$CACHE/bookworm.tar.part" "$CACHE/bookworm.tar"
  rm -rf "$CACHE/build"
fi

NSPAWN_PID=""
cleanup() {
  if [ -n "$NSPAWN_PID" ]; then
    kill -TERM "$NSPAWN_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$NSPAWN_PID" 2>/dev/null || true
  fi
  for h in systemd unified; do
    [ -d "/sys/fs/cgroup/$h/$NAME" ] && find "/sys/fs/cgroup/$h/$NAME" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  rm -rf "$ROOT"
}
trap cleanup EXIT

say "a fresh root in $ROOT"
rm -rf "$ROOT"
mkdir -p "$ROOT"
tar -C "$ROOT" -xf "$CACHE/bookworm.tar"
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
# The host's network may need its local CAs (a TLS-intercepting proxy); the root trusts them too.
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
  mkdir -p "$ROOT/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
fi
cp "$DEB" "$ROOT/root/"
DEBNAME=$(basename "$DEB")

# in_chroot CMD: a shell command in the root (own mount namespace: /proc and /dev go with it).
in_chroot() {
  unshare --mount --propagation private --fork -- /bin/sh -c '
    set -e
    mount -t proc proc "$1/proc"
    mount --bind /dev "$1/dev"
    mount -t tmpfs tmpfs "$1/run"
    mount -t tmpfs tmpfs "$1/tmp"
    exec chroot "$1" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
      DEBIAN_FRONTEND=noninteractive /bin/sh -c "$2"' sh "$ROOT" "$1"
}

say "apt-get install ./$DEBNAME (in a chroot: no daemon starts)"
in_chroot 'update-ca-certificates >/dev/null 2>&1 || true; apt-get update -qq' >&2
in_chroot "apt-get install -y -q /root/$DEBNAME man-db bash-completion" >"$WORK/apt-install.log" 2>&1 ||
  { tail -30 "$WORK/apt-install.log" >&2; exit 1; }
for p in vccid pcscd vsmartcard-vpcd opensc libpcsclite1; do
  st=$(in_chroot "dpkg-query -W -f='\${Status}' $p 2>/dev/null" || true)
  result "installed_$p" "$([ "$st" = "install ok installed" ] && echo yes || echo no)"
done
result conffile "$(in_chroot 'dpkg-query -W -f="\${Conffiles}" vccid' | awk '{print $1}' | tr '\n' ' ')"

say "man pages and completion"
result man_vccid "$(in_chroot 'MANWIDTH=80 man -P cat vccid 2>&1' | grep -c 'usbredir' || true)"
result man_vccid_toml "$(in_chroot 'MANWIDTH=80 man -P cat vccid.toml 2>&1' | grep -c 'control_group' || true)"
result man_serve "$(in_chroot 'MANWIDTH=80 man -P cat vccid-serve 2>&1' | grep -c 'configuration' || true)"
# What bash offers after `vccid ctl card ` (the completion is loaded on demand, as in a shell).
result complete_ctl_card "$(in_chroot "bash -c '. /usr/share/bash-completion/bash_completion
  _completion_loader vccid
  COMP_WORDS=(vccid ctl card \"\"); COMP_CWORD=3; COMP_LINE=\"vccid ctl card \"; COMP_POINT=\${#COMP_LINE}
  _vccid vccid \"\" card; echo \"\${COMPREPLY[*]}\"'" 2>&1 | tr '\n' ' ')"
result verify "$(in_chroot 'systemd-analyze verify /usr/lib/systemd/system/vccid.service /usr/lib/systemd/system/vccid-vscclient@.service 2>&1 && echo clean' | tr '\n' ' ')"

say "boot the root with systemd as PID 1 (systemd-nspawn --boot)"
# nspawn in a cgroup of its own (this host has no systemd to give it a scope; --register=no
# --keep-unit: no machined, no D-Bus on the host).
(
  for h in systemd unified; do
    if [ -d "/sys/fs/cgroup/$h" ]; then mkdir -p "/sys/fs/cgroup/$h/$NAME"; echo $BASHPID >"/sys/fs/cgroup/$h/$NAME/cgroup.procs"; fi
  done
  exec setsid systemd-nspawn -D "$ROOT" -M "$NAME" --boot --console=passive --register=no \
    --keep-unit --private-network </dev/null >"$WORK/console.log" 2>&1
) &
NSPAWN_PID=$!
LEADER=""
for _ in $(seq 1 300); do
  for c in $(pgrep -P "$NSPAWN_PID" || true); do
    [ "$(cat "/proc/$c/comm" 2>/dev/null)" = systemd ] && LEADER=$c
  done
  [ -n "$LEADER" ] && [ -S "/proc/$LEADER/root/run/systemd/private" ] && break
  sleep 0.1
done
[ -n "$LEADER" ] || { cat "$WORK/console.log" >&2; echo "the root did not boot" >&2; exit 1; }
inside() {
  nsenter -t "$LEADER" -a -r -w env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 TERM=dumb \
    /bin/sh -c "$1"
}
result system "$(inside 'systemctl is-system-running --wait 2>&1' || true)"
result failed_units "$(inside 'systemctl --failed --no-legend --plain | cut -d" " -f1' | tr '\n' ' ')"
result active "$(inside 'systemctl is-active vccid.service' || true)"
result enabled "$(inside 'systemctl is-enabled vccid.service' || true)"
result main_user "$(inside 'stat -c %U /proc/$(systemctl show -P MainPID vccid.service)' || true)"
result socket "$(inside 'stat -c "%a %G" /run/vccid/control.sock' || true)"
result state_dir "$(inside 'stat -c "%a %U" /var/lib/vccid' || true)"
result security "$(inside 'systemd-analyze security vccid.service 2>&1 | tail -n1')"

say "vccid ctl as a user in group vccid, and as one who is not"
inside 'useradd -m -G vccid alice && useradd -m bob'
result ctl_alice "$(inside 'runuser -u alice -- vccid ctl query-readers 2>&1' | tr '\n' ' ')"
result ctl_bob "$(inside 'runuser -u bob -- vccid ctl query-readers 2>&1' | tr '\n' ' ')"
result version "$(inside 'runuser -u alice -- vccid ctl version 2>&1')"

say "the host's pcscd sees the default card (vpcd)"
result pcsc "$(inside 'for i in $(seq 1 30); do out=$(opensc-tool --list-readers 2>&1); case $out in *"Virtual PCD"*) break;; esac; sleep 1; done
  timeout 30 opensc-tool --reader 0 --wait --name 2>&1' | tr '\n' ' ')"

say "systemctl reload vccid, then a configuration it refuses"
result reload "$(inside 'systemctl reload vccid.service && systemctl is-active vccid.service' 2>&1 | tr '\n' ' ')"
inside 'cp /etc/vccid/vccid.toml /root/vccid.toml.good && echo "no_such_key = 1" >>/etc/vccid/vccid.toml'
result reload_bad "$(inside 'systemctl reload vccid.service >/dev/null 2>&1 && echo accepted || echo refused; systemctl is-active vccid.service' | tr '\n' ' ')"
inside 'cp /root/vccid.toml.good /etc/vccid/vccid.toml'

say "a guest's reader in /run/vccid/readers, group vccid-readers; a reload it cannot apply"
inside 'cat >>/etc/vccid/vccid.toml <<END

[[card]]
id = "guest1-card"

[[reader]]
id = "guest1"
transport = "usbredir"
address = "unix:/run/vccid/readers/guest1.sock"
mode = "0660"
group = "vccid-readers"
cards = ["guest1-card"]
END
systemctl reload vccid.service'
result guest_socket "$(inside 'stat -c "%a %G" /run/vccid/readers/guest1.sock' 2>&1 || true)"
result vccid_groups "$(inside 'id -nG vccid')"
result libvirt_xml "$(inside 'runuser -u alice -- vccid ctl libvirt-xml guest1' | tr '\n' ' ')"
# A group the service's user is not in: refused before anything stops (a newcomer's trial lost
# the reader here, and every later reload failed).
inside 'cp /etc/vccid/vccid.toml /root/vccid.toml.good && sed -i "s/group = \"vccid-readers\"/group = \"users\"/" /etc/vccid/vccid.toml'
result reload_group "$(inside 'systemctl reload vccid.service >/dev/null 2>&1 && echo accepted || echo refused; test -S /run/vccid/readers/guest1.sock && echo kept' | tr '\n' ' ')"
inside 'cp /root/vccid.toml.good /etc/vccid/vccid.toml'
result reload_after "$(inside 'systemctl reload vccid.service && echo ok' 2>&1 | tr '\n' ' ')"

say "restart: the default card's keys survive"
before=$(inside 'find /var/lib/vccid -type f -name "*.pem" -exec sha256sum {} + | sort | sha256sum' || true)
inside 'systemctl restart vccid.service'
after=$(inside 'find /var/lib/vccid -type f -name "*.pem" -exec sha256sum {} + | sort | sha256sum' || true)
result key_files "$(inside 'find /var/lib/vccid -type f -name "*.pem" | wc -l')"
result keys_kept "$([ -n "$before" ] && [ "$before" = "$after" ] && echo yes || echo no)"
result journal_errors "$(inside 'journalctl -u vccid.service -p err --no-pager -q' | grep -v -e 'no_such_key' -e 'Reload failed' -e 'not reloaded' -e 'group \"users\"' | head -3 | tr '\n' ' ')"

say "vccid-vscclient@: a VSCard client instance into a passthru card of the service"
inside 'cat >>/etc/vccid/vccid.toml <<END

[[card]]
id = "remote"
kind = "passthru"
listen = "127.0.0.1:2001"

[[reader]]
id = "vpcd1"
transport = "vpcd"
address = "127.0.0.1:35964"
cards = ["remote"]
END
mkdir -p /etc/vccid/vscclient
echo "VSCCLIENT_OPTIONS=\"--card emulated\"" >/etc/vccid/vscclient/127.0.0.1:2001.conf
systemctl reload vccid.service
systemctl start vccid-vscclient@127.0.0.1:2001.service'
result vscclient_active "$(inside 'systemctl is-active vccid-vscclient@127.0.0.1:2001.service' || true)"
result vscclient_card "$(inside 'timeout 30 opensc-tool --reader 1 --wait --name 2>&1' | tr '\n' ' ')"
result vscclient_security "$(inside 'systemd-analyze security vccid-vscclient@127.0.0.1:2001.service 2>&1 | tail -n1')"

say "apt-get purge vccid"
inside 'DEBIAN_FRONTEND=noninteractive apt-get purge -y -q vccid' >"$WORK/purge.log" 2>&1 ||
  { tail -20 "$WORK/purge.log" >&2; exit 1; }
result purged_status "$(inside 'dpkg-query -W -f="\${db:Status-Status}" vccid 2>&1 || true')"
result purged_active "$(inside 'systemctl is-active vccid.service' || true)"
result purged_vscclient "$(inside 'systemctl is-active vccid-vscclient@127.0.0.1:2001.service' || true)"
result purged_left "$(inside 'ls -d /etc/vccid /var/lib/vccid /var/lib/private/vccid-vscclient /run/vccid /usr/bin/vccid /usr/bin/vscclient /usr/lib/systemd/system/vccid.service /etc/systemd/system/multi-user.target.wants/vccid.service 2>/dev/null' | tr '\n' ' ')"
echo "DONE"
