#!/usr/bin/env bash
# Runs every test of vccid: formatting, clippy, unit/property/transcript tests, the interop
# tests against real pcscd + vsmartcard-vpcd + OpenSC + NSS + SoftHSM2, and each fuzz target
# briefly. Installs the Debian packages the tests need when they are missing (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(pcscd vsmartcard-vpcd opensc pcsc-tools libnss3 libnss3-tools softhsm2 openssl iproute2 util-linux qemu-system-x86 vsmartcard-vpicc python3-pycryptodome linux-image-amd64 busybox-static libccid cpio file udev xz-utils zstd tshark usbip socat yubico-piv-tool ykcs11 mount kmod systemd sudo libvirt-clients libxml2-utils g++ dpkg-dev lintian debootstrap systemd-container libvirt-daemon libvirt-daemon-driver-qemu chromium chromium-driver curl procps)
# A first run writes about 7 GB (target/, fuzz/target/short, the package test's Debian root);
# a full disk shows up much later as a linker's bus error or ENOSPC, so say it now.
avail_kb=$(df -Pk . | awk 'NR==2 {print $4}')
if [ "$avail_kb" -lt $((10 * 1024 * 1024)) ]; then
  echo "warning: $((avail_kb / 1024)) MiB free on $(df -P . | awk 'NR==2 {print $6}'); a first run needs about 7 GB (cargo clean frees target/)"
fi
# cargo-deny (the supply-chain check below) is compiled once per machine; it starts now so that
# it builds while apt downloads.
deny_install=""
if ! command -v cargo-deny >/dev/null; then
  mkdir -p target
  cargo install cargo-deny --locked --version 0.20.2 -q >target/cargo-deny-install.log 2>&1 &
  deny_install=$!
fi
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "== installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  # tshark asks whether non-root users may capture; they need not.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | $SUDO debconf-set-selections
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The interop tests make private namespaces for pcscd (unshare/nsenter): they need root.
[ "$(id -u)" -eq 0 ] || { echo "the interop tests need root (private mount/network namespaces)"; exit 1; }

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -q -- -D warnings
echo "== cargo deny check licenses bans sources (deny.toml: licences, duplicate crypto crates, crates.io only)"
if [ -n "$deny_install" ]; then
  wait "$deny_install" || { cat target/cargo-deny-install.log; exit 1; }
fi
cargo deny check licenses bans sources
cargo deny --manifest-path fuzz/Cargo.toml --config deny.toml check licenses bans sources
echo "== cargo build --release (the README's run command, which a test runs, uses it)"
cargo build --release -p vccid
ls -l target/release/vccid target/release/vscclient
# A lean binary is part of the product (issue #13: 53 MB with debug info).
for b in vccid vscclient; do
  size=$(stat -c %s "target/release/$b")
  [ "$size" -lt 20000000 ] || { echo "target/release/$b is $size bytes (limit 20 MB)"; exit 1; }
done
echo "== cargo test"
cargo test --workspace 2>&1 | tee target/test.log
echo "== fuzz (15 s per target)"
scripts/fuzz.sh "${FUZZ_SECONDS:-15}"
