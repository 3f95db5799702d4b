#!/usr/bin/env bash
# Runs the README's test command (scripts/test.sh) on a fresh Debian 12 machine, as issue #13
# asks: a debootstrap'd bookworm minbase root holding only a C linker (gcc, libc6-dev,
# ca-certificates) and this host's Rust toolchain (read-only), entered with chroot as root.
# Everything else the tests need, test.sh itself must install with apt. Slow (a full build and
# every test from nothing): not part of the test command.
#
#   sudo scripts/fresh-root.sh [--reuse] [--keep-cargo-home] [--commit REV] [--mirror URL]
#                              [--timeout SECONDS] [--exec COMMAND] [ROOT]
#
# ROOT defaults to /var/tmp/vccid-fresh-root and is kept afterwards. Without --reuse, ROOT must
# not exist yet (or be empty); --reuse skips debootstrap and the C linker and uses ROOT as it is
# (the Debian packages a previous run installed stay, so it is no longer fresh for apt), but
# still copies a new clone of the repository and starts from an empty CARGO_HOME (unless
# --keep-cargo-home). The repository is cloned on the host (committed state at REV, default
# HEAD; uncommitted changes are not tested, and no build tree is copied). The last line printed
# is "fresh-root: PASS|FAIL in N s on DATE at COMMIT"; the full log is ROOT/var/log/vccid-test.log.
# --exec COMMAND (with --reuse, for diagnosis) runs COMMAND in ROOT's existing /root/vccid
# instead of cloning and running scripts/test.sh; its log is ROOT/var/log/vccid-exec.log.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT=/var/tmp/vccid-fresh-root
REUSE=0
KEEP_CARGO_HOME=0
REV=HEAD
MIRROR=""
TIMEOUT=14400
EXEC=""
while [ $# -gt 0 ]; do
  case "$1" in
    --reuse) REUSE=1 ;;
    --keep-cargo-home) KEEP_CARGO_HOME=1 ;;
    --commit) REV="$2"; shift ;;
    --mirror) MIRROR="$2"; shift ;;
    --timeout) TIMEOUT="$2"; shift ;;
    --exec) EXEC="$2"; shift ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "fresh-root: unknown option $1" >&2; exit 2 ;;
    *) ROOT="$1" ;;
  esac
  shift
done
[ -z "$EXEC" ] || [ "$REUSE" -eq 1 ] || { echo "fresh-root: --exec needs --reuse" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "fresh-root: run as root (debootstrap, mounts, chroot)" >&2; exit 1; }
ROOT=$(realpath -m "$ROOT")
case "$ROOT" in /|/usr|/var|/var/tmp|/tmp|/root|/home) echo "fresh-root: refusing ROOT=$ROOT" >&2; exit 2 ;; esac

# The host's toolchain: rustup's home (toolchains, settings) and the proxies in cargo's bin.
HOST_RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}
HOST_CARGO_BIN=${CARGO_HOME:-$HOME/.cargo}/bin
[ -x "$HOST_CARGO_BIN/cargo" ] && [ -d "$HOST_RUSTUP_HOME/toolchains" ] ||
  { echo "fresh-root: no Rust toolchain at $HOST_RUSTUP_HOME / $HOST_CARGO_BIN" >&2; exit 1; }

COMMIT=$(git -C "$REPO" rev-parse --verify "$REV^{commit}")

# The Debian mirror this host's apt uses (deb822 .sources first, then one-line sources.list).
first_uri() { # $1: a regex the URI must match, $2: one it must not
  { grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{for (i = 2; i <= NF; i++) print $i}'
    grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print ($2 ~ /^\[/) ? $4 : $3}'
  } | grep -E "$1" | grep -vE "$2" | head -n1 || true
}
[ -n "$MIRROR" ] || MIRROR=$(first_uri '/debian/?$' 'security')
[ -n "$MIRROR" ] || MIRROR=http://deb.debian.org/debian
SECURITY=$(first_uri 'debian-security/?$' '^$')
[ -n "$SECURITY" ] || SECURITY=${MIRROR%/debian*}/debian-security

MOUNTS=()
WORK=""
RUN_PID=""
cleanup() {
  local rc=$? m
  # The run lives in its own PID namespace (below): stopping `timeout` stops unshare, whose
  # --kill-child ends the namespace's init, and the kernel then kills everything left inside.
  if [ -n "$RUN_PID" ]; then
    pkill -TERM -P "$RUN_PID" 2>/dev/null || true
    wait "$RUN_PID" 2>/dev/null || true
  fi
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    m=${MOUNTS[$i]}
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || echo "fresh-root: could not unmount $m" >&2
  done
  [ -z "$WORK" ] || rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

mnt() { # mnt DEST mount-args... (DEST is under ROOT; recorded for cleanup)
  local dest=$1; shift
  mkdir -p "$dest"
  mount "$@" "$dest"
  MOUNTS+=("$dest")
  # On a systemd host / and /dev are shared: without this, a mount under the bind of /dev
  # (dev/shm, dev/pts) would propagate onto the host's own /dev.
  mount --make-private "$dest"
}

apt_host() {
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=1800 "$@"
}

if [ "$REUSE" -eq 0 ]; then
  if [ -e "$ROOT" ] && [ -n "$(ls -A "$ROOT" 2>/dev/null)" ]; then
    echo "fresh-root: $ROOT exists; use --reuse, or remove it for a fresh root" >&2; exit 2
  fi
  command -v debootstrap >/dev/null || { apt_host update -qq; apt_host install -y -qq debootstrap >/dev/null; }
  echo "== debootstrap bookworm minbase from $MIRROR into $ROOT"
  mkdir -p "$ROOT"
  debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR"
  # A stock Debian 12 install also has the updates and security suites.
  cat >"$ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY bookworm-security main
EOF
else
  [ -x "$ROOT/usr/bin/apt-get" ] || { echo "fresh-root: --reuse but no root at $ROOT" >&2; exit 2; }
  echo "== reusing $ROOT (packages of earlier runs stay installed)"
fi

# Chroot hygiene, not part of the machine under test: a package's postinst must not start a
# daemon (pcscd, udev) that would outlive the run inside the root; a real machine runs them
# under systemd, which a chroot does not have.
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod 755 "$ROOT/usr/sbin/policy-rc.d"
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
# The host's network, not the machine under test: where TLS goes through an intercepting proxy,
# the host trusts its CA as a local certificate; the root must too, or cargo cannot reach
# crates.io. Only the host's locally added CAs are copied (Debian's bundle stays the root's own).
HOST_CAS=$(find /usr/local/share/ca-certificates -name '*.crt' 2>/dev/null || true)
# The installer writes these; debootstrap does not.
[ -s "$ROOT/etc/hosts" ] || printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$ROOT/etc/hosts"

# The root must be a mount point, as / is on a real machine: `unshare -m` (the tests' private
# pcscd namespaces) makes / private and fails with EINVAL when / is a plain directory; and it
# must be the root of its mount namespace (pivot_root below), not just a chroot: `nsenter -m`
# into a namespace made inside sets the root to that namespace's root, which for a plain
# chroot is the host's /, so the tests' programs would run from the host. /proc is mounted
# inside (a PID namespace of its own).
mnt "$ROOT" --bind "$ROOT"
mnt "$ROOT/sys" -t sysfs sysfs
mnt "$ROOT/dev" --bind /dev
mnt "$ROOT/dev/pts" --bind /dev/pts
mnt "$ROOT/dev/shm" -t tmpfs -o mode=1777 tmpfs
mnt "$ROOT/run" -t tmpfs -o mode=755 tmpfs
mnt "$ROOT/tmp" -t tmpfs -o mode=1777 tmpfs
# The host's Rust toolchain, read-only; CARGO_HOME (registry, cargo install) is the root's own.
mnt "$ROOT/opt/rustup" --bind "$HOST_RUSTUP_HOME"
mount -o remount,bind,ro "$ROOT/opt/rustup"
mnt "$ROOT/opt/cargo-bin" --bind "$HOST_CARGO_BIN"
mount -o remount,bind,ro "$ROOT/opt/cargo-bin"

# enter ARGS...: runs ARGS as root in ROOT, with a clean environment, no stdin, in new mount and
# PID namespaces whose root is ROOT (pivot_root, then chroot to reset the working directory).
# When unshare dies (timeout, cleanup) its child, the namespace's init, is killed, and with it
# everything still running inside.
enter() {
  env -i HOME=/root USER=root LOGNAME=root TERM=dumb LANG=C.UTF-8 CI=true \
    PATH=/root/.cargo/bin:/opt/cargo-bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    RUSTUP_HOME=/opt/rustup CARGO_HOME=/root/.cargo DEBIAN_FRONTEND=noninteractive \
    unshare --mount --propagation private --pid --fork --kill-child -- /bin/sh -c '
      set -e
      root=$1; shift
      mount -t proc proc "$root/proc"
      cd "$root"
      mkdir -p .host-root
      pivot_root . .host-root
      umount -l /.host-root
      rmdir /.host-root
      exec chroot . "$@"' fresh-root "$ROOT" "$@" </dev/null
}
in_root() { enter "$@"; }

if [ "$REUSE" -eq 0 ]; then
  echo "== the C linker: gcc libc6-dev ca-certificates"
  in_root apt-get update -qq
  in_root apt-get install -y -qq --no-install-recommends gcc libc6-dev ca-certificates >/dev/null
fi
if [ -n "$HOST_CAS" ]; then
  echo "== trusting the host's local CAs (the host's network needs them):" $HOST_CAS
  mkdir -p "$ROOT/usr/local/share/ca-certificates"
  # shellcheck disable=SC2086 # one path per word
  cp $HOST_CAS "$ROOT/usr/local/share/ca-certificates/"
  in_root update-ca-certificates >/dev/null
fi

if [ -z "$EXEC" ]; then
  echo "== clone $REPO at $COMMIT"
  WORK=$(mktemp -d /var/tmp/vccid-fresh-clone.XXXXXX)
  git clone -q --no-hardlinks "$REPO" "$WORK/vccid"
  git -C "$WORK/vccid" checkout -q --detach "$COMMIT"
  rm -rf "$ROOT/root/vccid"
  cp -a "$WORK/vccid" "$ROOT/root/vccid"
  [ "$KEEP_CARGO_HOME" -eq 1 ] || rm -rf "$ROOT/root/.cargo"
  mkdir -p "$ROOT/root/.cargo"
  LOG="$ROOT/var/log/vccid-test.log"
  CMD='cd /root/vccid && exec scripts/test.sh'
else
  COMMIT="$(cat "$ROOT/root/vccid/.git/HEAD") (exec: $EXEC)"
  LOG="$ROOT/var/log/vccid-exec.log"
  CMD="cd /root/vccid && $EXEC"
fi

echo "== $CMD, in the root (log: $LOG)"
START=$(date +%s)
export -f enter
export ROOT
set +e
# In the background, so that a signal to this script runs the cleanup at once. pipefail: the
# status is timeout's (tee's is 0).
( set -o pipefail; timeout --kill-after=60 "$TIMEOUT" bash -c 'enter /bin/bash -c "$1"' _ "$CMD" 2>&1 | tee "$LOG" ) &
RUN_PID=$!
wait "$RUN_PID"
RC=$?
RUN_PID=""
set -e
ELAPSED=$(($(date +%s) - START))
RESULT=PASS
[ "$RC" -eq 0 ] || RESULT=FAIL
[ "$RC" -ne 124 ] && [ "$RC" -ne 137 ] || echo "fresh-root: timed out after $TIMEOUT s" | tee -a "$LOG"
SUMMARY="fresh-root: $RESULT in $ELAPSED s on $(date -u +%Y-%m-%d) at $COMMIT"
echo "$SUMMARY" | tee -a "$LOG" >"${LOG%.log}.result"
echo "$SUMMARY"
[ "$RC" -eq 0 ]
