#!/usr/bin/env bash
# The soak (issue #17): `vccid serve` with 64 readers (half usbredir on Unix sockets, half
# USB/IP on loopback; an ephemeral generated PIV card each) under a steady mixed load from mock
# USB hosts for SOAK_SECONDS (1800): SELECT, VERIFY (a wrong PIN every tenth cycle, then the
# right one), a signature with 9A or 9C checked against the card's certificate, card eject and
# insert through the control socket, host reconnects. The load and its figures are
# crates/vccid/examples/soak/driver.rs, which tests/soak.rs also runs for 2 minutes.
# Writes docs/soak.csv (a row per 10 s: vccid's RSS, open descriptors, threads, the interval's
# APDUs, p50/p99/max round trip, errors) and docs/soak.png (RSS, descriptors and p99 over
# time), and prints the summary: errors by kind, and RSS, descriptors and p99 after the
# warm-up (the first 10% of the run) against the end. Exit status 1 if there was any error.
# Needs no root, unless python3-matplotlib is to be installed.
# Settings (environment): SOAK_SECONDS (1800), SOAK_CPUS (0: vccid and the hosts share CPU 0,
# as in the other benchmarks, since wake-ups across this VM's two vCPUs add 100-300 µs to a
# round trip; empty: unpinned), SOAK_DOCS (docs: where the CSV and the plot go), BENCH_WORK
# (the work directory), and the driver's SOAK_READERS (64), SOAK_INTERVAL (10 s),
# SOAK_WARMUP (0.1), SOAK_CYCLE_MS (250: each host's pace), SOAK_CHURN_EVERY (60 cycles
# between a host's ejects and reconnects, alternately), SOAK_CHURN (eject,reconnect: either
# alone, to see which one a trend follows).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
W=${BENCH_WORK:-$(mktemp -d /tmp/vccid-soak.XXXXXX)}
mkdir -p "$W"
export SOAK_SECONDS=${SOAK_SECONDS:-1800}
SOAK_CPUS=${SOAK_CPUS-0}
DOCS=${SOAK_DOCS:-docs}
# 64 readers: a few hundred sockets and threads.
ulimit -n "$(ulimit -Hn)"

if ! dpkg-query -W -f='${Status}' python3-matplotlib 2>/dev/null | grep -q "ok installed"; then
  [ "$(id -u)" -eq 0 ] || { echo "soak.sh: python3-matplotlib is missing (apt-get install python3-matplotlib, as root)" >&2; exit 1; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-matplotlib >/dev/null
fi
# vccid as the README's run command and the test command build it (an example in the same
# cargo call unifies the dev-dependencies' features into it, and the two would rebuild each
# other's target/release/vccid), then the driver.
cargo build -q --release -p vccid
cargo build -q --release -p vccid --example soak
echo "== work directory $W; ${SOAK_SECONDS} s; CPU(s) ${SOAK_CPUS:-any}; load average $(cut -d' ' -f1-3 /proc/loadavg)"
pin=()
[ -z "$SOAK_CPUS" ] || pin=(taskset -c "$SOAK_CPUS")
status=0
"${pin[@]}" "$ROOT/target/release/examples/soak" "$ROOT/target/release/vccid" "$W/run" || status=$?
# 2: the driver could not run at all (vccid did not start); 1: it ran and counted errors.
[ "$status" -le 1 ] || exit "$status"
mkdir -p "$DOCS"
cp "$W/run/soak.csv" "$DOCS/soak.csv"
/usr/bin/python3 - "$DOCS/soak.csv" "$W/run/summary.json" "$DOCS/soak.png" "${SOAK_CPUS:-any}" <<'EOF'
import csv, json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

csv_path, summary_path, png_path, cpus = sys.argv[1:]
rows = list(csv.DictReader(open(csv_path)))
s = json.load(open(summary_path))
t = [float(r["t_s"]) / 60 for r in rows]
warm = s["seconds"] * float(s.get("warmup", 0.1)) / 60
fig, (rss, fds, lat) = plt.subplots(3, 1, figsize=(10, 10), sharex=True)
rss.plot(t, [int(r["rss_kib"]) / 1024 for r in rows], "-", color="tab:purple")
rss.set(ylabel="vccid RSS (MiB)", ylim=(0, None),
        title=f'vccid serve, {s["readers"]} readers under a steady mixed load for {s["seconds"] / 60:.0f} min (CPU {cpus})\n'
              f'{s["errors"]} errors in {s["apdus"]:,} APDUs, {s["signatures"]:,} signatures, '
              f'{s["ejects"]:,} ejects + inserts, {s["reconnects"]:,} reconnects\n'
              f'after the warm-up → at the end, every host attached and idle: RSS '
              f'{s["rss_after_warmup_kib"] / 1024:.1f} → {s["rss_at_end_kib"] / 1024:.1f} MiB, '
              f'descriptors {s["fds_after_warmup"]} → {s["fds_at_end"]}')
fds.plot(t, [int(r["fds"]) for r in rows], "-", color="tab:blue", label="open descriptors")
fds.plot(t, [int(r["threads"]) for r in rows], "-", color="tab:gray", label="threads")
# Room above the lines, which would otherwise lie on the frame.
fds.set(ylabel="count", ylim=(0, 1.2 * max(int(r["fds"]) for r in rows)))
fds.legend(loc="lower right")
# Log scale: p50 and p99 lie orders of magnitude apart (a p99 APDU is mostly an RSA signature
# waiting behind others on the CPU).
lat.plot(t, [float(r["p99_us"]) for r in rows], "-", color="tab:red", label="p99")
lat.plot(t, [float(r["p50_us"]) for r in rows], "-", color="tab:green", label="p50")
lat.set(ylabel="APDU round trip (µs)", xlabel="minutes", yscale="log")
load = lat.twinx()
load.plot(t, [float(r["load1"]) for r in rows], ":", color="tab:gray", label="load average (right)")
load.set(ylabel="machine's load average", ylim=(0, None))
lines = lat.get_legend_handles_labels()
more = load.get_legend_handles_labels()
lat.legend(lines[0] + more[0], lines[1] + more[1], loc="center right")
for a in (rss, fds, lat):
    a.axvspan(0, warm, color="0.9", zorder=0)
    a.grid(True, alpha=0.3)
rss.text(warm / 2, 0.05, "warm-up", transform=rss.get_xaxis_transform(), ha="center", fontsize="small")
fig.tight_layout()
fig.savefig(png_path, dpi=100)

pct = lambda a, b: 100.0 * (b - a) / a if a else float("nan")
print(f'== {s["seconds"]:.0f} s, {s["readers"]} readers (vccid started in {s["start_seconds"]:.1f} s)')
print(f'errors: {s["errors"]}' + "".join(f'\n  {k}: {v["count"]} (first: {v["first"]})' for k, v in s["errors_by_kind"].items()))
print(f'load: {s["apdus"]:,} APDUs, {s["signatures"]:,} signatures, {s["ejects"]:,} ejects + inserts, {s["reconnects"]:,} reconnects')
print(f'RSS after the warm-up / at the end: {s["rss_after_warmup_kib"]} / {s["rss_at_end_kib"]} KiB ({s["rss_growth_pct"]:+.1f}%)')
print(f'open descriptors: {s["fds_after_warmup"]} / {s["fds_at_end"]} ({s["fds_growth_pct"]:+.1f}%); threads {s["threads_after_warmup"]} / {s["threads_at_end"]}')
print(f'p99 round trip, first / last tenth after the warm-up: {s["p99_first_us"]:.0f} / {s["p99_last_us"]:.0f} µs ({pct(s["p99_first_us"], s["p99_last_us"]):+.0f}%)')
print(f'malloc thread heaps at the end: {s.get("malloc_thread_heaps_at_end", "?")}')
# The issue's goals (#17): no error, RSS and descriptors flat (growth < 5 %).
goals = [("errors 0", s["errors"] == 0),
         ("descriptors growth < 5%", s["fds_growth_pct"] < 5),
         ("RSS growth < 5%", s["rss_growth_pct"] < 5)]
print("goals: " + ", ".join(f'{g}: {"met" if ok else "MISSED"}' for g, ok in goals))
if s["seconds"] < 600:
    print(f'note: a {s["seconds"]:.0f}-s run takes "after the warm-up" at {s["seconds"] * float(s.get("warmup", 0.1)):.0f} s, '
          'while RSS still rises after the start: the goals are for the 30-minute run')
print(f'(all samples: {csv_path}; plot: {png_path}; vccid log: {summary_path.rsplit("/", 1)[0]}/vccid.log)')
EOF
exit "$status"
