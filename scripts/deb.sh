#!/usr/bin/env bash
# Builds the Debian package (issue #16): target/debian/vccid_VERSION-1_amd64.deb.
#
#   scripts/deb.sh
#
# Makes the man pages and shell completions from the programs' own command-line definitions
# (crates/vccid/examples/dist.rs, into target/release/dist), then runs `cargo deb` (installed with
# `cargo install cargo-deb` when missing), which builds the release binaries, finds the shared
# libraries they need with dpkg-shlibdeps and writes the package. Prints the package's path last.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v dpkg-shlibdeps >/dev/null || {
  echo "deb.sh: dpkg-shlibdeps is missing: apt-get install dpkg-dev" >&2; exit 1; }
if ! cargo deb --version >/dev/null 2>&1; then
  echo "== cargo install cargo-deb (once)"
  cargo install --locked cargo-deb
fi
echo "== man pages and completions (target/release/dist)"
rm -rf target/release/dist
cargo run -q --release -p vccid --example dist -- target/release/dist
# Debian policy §12.1: manual pages are compressed with gzip -9 (-n: reproducible).
gzip -9n target/release/dist/man/*.1
echo "== cargo deb"
cargo deb -p vccid
deb=$(ls -t target/debian/vccid_*_amd64.deb | head -n1)
[ -s "$deb" ] || { echo "deb.sh: no package made" >&2; exit 1; }
echo "$deb"
