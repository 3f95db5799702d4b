#!/usr/bin/env bash
# Writes every fuzz target's seeds from real exchanges (recorded OpenSC and yubico-piv-tool
# sessions, QEMU's and the kernel's golden bytes, the card's own state file...) as
# fuzz/seeds/TARGET/real-*, in each target's input format: scripts/fuzz-seeds.py says which
# source feeds which target. The files are committed; run this after a transcript changes.
set -euo pipefail
cd "$(dirname "$0")/.."
find fuzz/seeds -name 'real-*' -delete 2>/dev/null || true
python3 scripts/fuzz-seeds.py
for d in fuzz/seeds/*/; do
  echo "$(basename "$d"): $(find "$d" -name 'real-*' | wc -l) real seeds"
done
