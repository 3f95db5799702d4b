#!/usr/bin/env bash
# What the web console costs (issue #18): APDU round trips through `vccid serve`'s vpcd reader,
# timed by bench/fake_vpcd.py (the vpcd side, no pcscd), with the console off, on with nobody
# watching, and on with a page watching (an event stream open, so every exchange is folded,
# decoded and sent). All in one run, pinned to CPU 0 (cross-CPU wake-ups on this VM add noise
# larger than what is measured). Figures for the README; never a pass/fail check.
#
#   scripts/bench-console.sh [N]   (N round trips per APDU and run, default 5000)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-5000}
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
cargo build -q --release -p vccid
port=41100
run() { # run LABEL [--console ADDR] [watch]
  local label=$1 console=${2:-} watch=${3:-}
  port=$((port + 1))
  cat >"$W/serve.toml" <<END
[service]
state_dir = "$W/state"
control = "$W/control.sock"

[[card]]
id = "bench"
ephemeral = true

[[reader]]
id = "r0"
transport = "vpcd"
address = "127.0.0.1:$port"
cards = ["bench"]
END
  taskset -c 0 python3 bench/fake_vpcd.py "$label" "$port" "$N" >"$W/out" & local fake=$!
  sleep 0.3
  local args=(serve --config "$W/serve.toml")
  [ -z "$console" ] || args+=(--console "$console")
  taskset -c 0 target/release/vccid "${args[@]}" >"$W/serve.out" 2>/dev/null & local vp=$!
  if [ -n "$watch" ]; then
    for _ in $(seq 50); do grep -q 'console: ' "$W/serve.out" && break; sleep 0.1; done
    url=$(sed -n 's/^vccid: console: //p' "$W/serve.out")
    curl -sS -N "${url%%/?token=*}/api/events?token=${url##*token=}" >/dev/null 2>&1 & local w=$!
  fi
  wait $fake
  cat "$W/out"
  [ -z "$watch" ] || kill $w 2>/dev/null || true
  kill $vp; wait $vp 2>/dev/null || true
  rm -f "$W/control.sock"
}
echo "== vccid serve, vpcd reader, $N round trips x 5 runs per APDU (median)"
run "off"
run "on-idle" 127.0.0.1:0
run "watched" 127.0.0.1:0 watch
