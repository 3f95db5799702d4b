#!/usr/bin/env bash
# The scale benchmark (issue #15): figures for the README, never a pass/fail check. Needs root
# (it installs what it needs; the vpcd part runs its own pcscd in private namespaces).
#  1. USB: `vccid serve` with 1, 16, 64, 128 and 256 readers (half usbredir on Unix sockets,
#     half USB/IP on loopback; one ephemeral generated card each), a mock host per reader
#     (crates/vccid/examples/scale_hosts.rs) over the real sockets: vccid's RSS with every host
#     attached and idle, one active reader's SELECT latency (p50/p99) with the others
#     unattached and beside them attached and idle, and the APDUs/s of all readers at once.
#     1 reader is run twice, once per transport.
#  2. vpcd, up to pcscd's own limit (PCSCLITE_MAX_READERS_CONTEXTS, 16 in Debian's pcscd):
#     8 reader.conf entries of two readers each, every entry on its own copy of libifdvpcd.so
#     (vpcd keeps one slot table per loaded library); the hosts are PC/SC clients.
#  3. docs/scale.csv (a row per configuration) and docs/scale.png: latency and memory against
#     readers. The raw JSON lines stay in the work directory.
# vccid, the hosts (and pcscd) share CPU 0, as in scripts/bench.sh: on this 2-vCPU VM wake-ups
# across CPUs add 100-300 µs of noise to a round trip. SCALE_CPUS (vccid, pcscd) and
# SCALE_HOST_CPUS (the hosts) place them otherwise, e.g. SCALE_CPUS=1 SCALE_HOST_CPUS=0.
# Each run first waits until those CPUs are quiet (other work on a shared machine would show
# up as latency) and records what it found.
# Settings (environment): SCALE_COUNTS ("1 16 64 128 256"), SCALE_SECONDS (2, per measurement),
# SCALE_ROUNDS (3: alone and beside the idle ones, alternately), SCALE_CPUS, SCALE_HOST_CPUS,
# SCALE_QUIET_WAIT (1800 s at most per configuration), SCALE_NO_VPCD=1 (USB only), BENCH_WORK.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
W=${BENCH_WORK:-$(mktemp -d /tmp/vccid-scale.XXXXXX)}
mkdir -p "$W"
export BENCH_WORK=$W
export SCALE_COUNTS=${SCALE_COUNTS:-1 16 64 128 256}
export SCALE_SECONDS=${SCALE_SECONDS:-2}
export SCALE_ROUNDS=${SCALE_ROUNDS:-3}
export SCALE_CPUS=${SCALE_CPUS:-0}
export SCALE_HOST_CPUS=${SCALE_HOST_CPUS:-$SCALE_CPUS}
export SCALE_QUIET_WAIT=${SCALE_QUIET_WAIT:-1800}
VCCID=$ROOT/target/release/vccid
HOSTS=$ROOT/target/release/examples/scale_hosts
RESULTS=$W/results.jsonl
# USB/IP readers per address: usbip::server::MAX_CONNECTIONS (16) connections are served at
# once per server, and every imported reader holds one.
USBIP_PER_ADDR=16
# Below the ephemeral port range, where other programs' outgoing connections cannot take them.
USBIP_PORT=23240
# 256 readers: over a thousand threads and sockets.
ulimit -n "$(ulimit -Hn)"

# busy CPU...: the percentage of time the given CPUs were not idle over the next 2 s.
busy() {
  local cpus=" $* " a b
  a=$(awk -v c="$cpus" '$1 ~ /^cpu[0-9]/ && index(c, " " substr($1, 4) " ") {t += $2+$3+$4+$5+$6+$7+$8+$9; i += $5+$6} END {print t, i}' /proc/stat)
  sleep 2
  b=$(awk -v c="$cpus" '$1 ~ /^cpu[0-9]/ && index(c, " " substr($1, 4) " ") {t += $2+$3+$4+$5+$6+$7+$8+$9; i += $5+$6} END {print t, i}' /proc/stat)
  echo "$a $b" | awk '{t = $3 - $1; i = $4 - $2; printf "%d", (t > 0 ? 100 * (t - i) / t : 0)}'
}

# quiet NAME: waits (at most SCALE_QUIET_WAIT seconds) until the CPUs the benchmark runs on
# are at most 10% busy with other work: the machine may be shared (builds, other tests), and
# its load would show up as latency here. Records what it found.
quiet() {
  local cpus="${SCALE_CPUS//,/ } ${SCALE_HOST_CPUS//,/ }" waited=0 b
  b=$(busy $cpus)
  while [ "$b" -gt 10 ] && [ "$waited" -lt "$SCALE_QUIET_WAIT" ]; do
    sleep 8
    waited=$((waited + 10))
    b=$(busy $cpus)
  done
  echo "{\"run\": \"$1\", \"event\": \"quiet\", \"busy_pct\": $b, \"waited_s\": $waited, \"loadavg\": \"$(cut -d' ' -f1-3 /proc/loadavg)\"}" >>"$RESULTS"
}

# config DIR REDIR USBIP VPCD: a configuration with that many readers of each transport.
config() {
  local d=$1 redir=$2 usbip=$3 vpcd=$4 i n=0
  {
    printf '[service]\nstate_dir = "%s/state"\ncontrol = "%s/control.sock"\n\n' "$d" "$d"
    for ((i = 0; i < redir + usbip + vpcd; i++)); do
      printf '[[card]]\nid = "card%d"\nephemeral = true\n\n' "$i"
    done
    for ((i = 0; i < redir; i++, n++)); do
      printf '[[reader]]\nid = "redir%d"\ntransport = "usbredir"\naddress = "unix:%s/redir%d.sock"\ncards = ["card%d"]\n\n' "$i" "$d" "$i" "$n"
    done
    for ((i = 0; i < usbip; i++, n++)); do
      printf '[[reader]]\nid = "usbip%d"\ntransport = "usbip"\naddress = "127.0.0.1:%d"\ncards = ["card%d"]\n\n' "$i" $((USBIP_PORT + i / USBIP_PER_ADDR)) "$n"
    done
    for ((i = 0; i < vpcd; i++, n++)); do
      printf '[[reader]]\nid = "vpcd%d"\ntransport = "vpcd"\naddress = "127.0.0.1:%d"\ncards = ["card%d"]\n\n' "$i" $((35963 + i)) "$n"
    done
  } >"$d/vccid.toml"
}

# start_vccid DIR: vccid serve on DIR/vccid.toml; sets VPID once the control socket is up
# (every card made, every reader listening).
start_vccid() {
  taskset -c "$SCALE_CPUS" "$VCCID" serve --config "$1/vccid.toml" >"$1/vccid.log" 2>&1 &
  VPID=$!
  until [ -S "$1/control.sock" ]; do
    kill -0 "$VPID" 2>/dev/null || { cat "$1/vccid.log" >&2; exit 1; }
    sleep 0.1
  done
}

stop_vccid() {
  kill "$VPID"
  wait "$VPID" || true
  VPID=
}

# Whatever ends the script (a host that fails included) stops what it started.
VPID=
PCSCD=
trap '[ -z "$VPID" ] || kill "$VPID" 2>/dev/null; [ -z "$PCSCD" ] || kill "$PCSCD" 2>/dev/null; true' EXIT

# readers_with_cards N: the names of pcscd's first N readers holding a card (opensc-tool's
# table, name last), once there are N.
readers_with_cards() {
  until [ "$(opensc-tool -l 2>/dev/null | awk '$2 == "Yes"' | wc -l)" -ge "$1" ]; do sleep 0.2; done
  opensc-tool -l 2>/dev/null | awk '$2 == "Yes" {sub(/^[0-9]+ +Yes +/, ""); print}' | head -n "$1"
}

# run NAME REDIR USBIP VPCD: one configuration, measured.
run() {
  local name=$1 redir=$2 usbip=$3 vpcd=$4 d=$W/$1 i r
  mkdir -p "$d"
  # Listening ports of other programs are avoided (they would stop vccid from starting).
  while ss -ltn | awk '{print $4}' | grep -qE ":($USBIP_PORT|$((USBIP_PORT + 1))|$((USBIP_PORT + 2))|$((USBIP_PORT + 3))|$((USBIP_PORT + 4))|$((USBIP_PORT + 5))|$((USBIP_PORT + 6))|$((USBIP_PORT + 7)))\$"; do
    USBIP_PORT=$((USBIP_PORT + 100))
  done
  config "$d" "$redir" "$usbip" "$vpcd"
  quiet "$name"
  local t0=$(date +%s%N)
  start_vccid "$d"
  echo "{\"event\": \"started\", \"run\": \"$name\", \"start_ms\": $((($(date +%s%N) - t0) / 1000000))}" >>"$RESULTS"
  local args=(--pid "$VPID" --seconds "$SCALE_SECONDS" --rounds "$SCALE_ROUNDS")
  for ((i = 0; i < redir; i++)); do args+=(--usbredir "$d/redir$i.sock"); done
  for ((i = 0; i < usbip; i += USBIP_PER_ADDR)); do
    args+=(--usbip "127.0.0.1:$((USBIP_PORT + i / USBIP_PER_ADDR))=$((usbip - i < USBIP_PER_ADDR ? usbip - i : USBIP_PER_ADDR))")
  done
  if [ "$vpcd" -gt 0 ]; then
    while read -r r; do args+=(--pcsc "$r"); done < <(readers_with_cards "$vpcd")
  fi
  taskset -c "$SCALE_HOST_CPUS" "$HOSTS" "${args[@]}" | sed "s/^{/{\"run\": \"$name\", /" | tee -a "$RESULTS"
  stop_vccid
}

# The service with no card and no reader: the RSS every per-reader figure is counted from.
baseline() {
  local d=$W/base
  mkdir -p "$d"
  config "$d" 0 0 0
  start_vccid "$d"
  sleep 1
  echo "{\"run\": \"base\", \"event\": \"base\", \"rss_kib\": $(awk '/^VmRSS:/ {print $2}' "/proc/$VPID/status")}" | tee -a "$RESULTS"
  stop_vccid
}

if [ -n "${SCALE_IN_NS:-}" ]; then
  # The vpcd part, inside private mount and network namespaces (vpcd binds 0.0.0.0; pcscd
  # 1.9.9 ignores PCSCLITE_CSOCK_NAME for its own socket, hence the tmpfs on /run/pcscd).
  ip link set lo up
  mkdir -p /run/pcscd && mount -t tmpfs -o mode=755 tmpfs /run/pcscd
  mkdir -p "$W/vpcd/conf"
  lib=$(awk '$1 == "LIBPATH" {print $2}' /etc/reader.conf.d/vpcd)
  for ((k = 0; k < 8; k++)); do
    port=$((0x8C7B + 2 * k))
    if [ "$k" -eq 0 ]; then name="Virtual PCD"; l=$lib; else name="Virtual PCD $k"; l=$W/vpcd/libifdvpcd-$k.so; cp "$lib" "$l"; fi
    printf 'FRIENDLYNAME "%s"\nDEVICENAME /dev/null:0x%04X\nLIBPATH %s\nCHANNELID 0x%04X\n\n' "$name" "$port" "$l" "$port"
  done >"$W/vpcd/conf/vpcd"
  mount --bind "$W/vpcd/conf" /etc/reader.conf.d
  export HOME=$W
  taskset -c "$SCALE_CPUS" pcscd -f >"$W/pcscd.log" 2>&1 &
  PCSCD=$!
  until ss -ltn | grep -q ':35978 '; do sleep 0.05; done
  run vpcd1 0 0 1
  run vpcd16 0 0 16
  exit 0
fi

[ "$(id -u)" -eq 0 ] || { echo "bench-scale.sh: run as root (apt-get, namespaces)" >&2; exit 1; }
need=(python3-matplotlib pcscd vsmartcard-vpcd opensc iproute2 util-linux)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build -q --release -p vccid --bin vccid --example scale_hosts
: >"$RESULTS"
echo "== work directory $W; vccid on CPU(s) $SCALE_CPUS, the hosts on CPU(s) $SCALE_HOST_CPUS"
baseline
for n in $SCALE_COUNTS; do
  echo "== $n reader(s)"
  if [ "$n" -eq 1 ]; then
    run usbredir1 1 0 0
    run usbip1 0 1 0
  else
    run "usb$n" $((n / 2)) $((n - n / 2)) 0
  fi
done
if [ -z "${SCALE_NO_VPCD:-}" ]; then
  echo "== vpcd through a private pcscd"
  SCALE_IN_NS=1 unshare --mount --net --propagation private --fork --kill-child "$0"
fi
# The CSV (one row per run) and the plot, from the JSON lines.
mkdir -p docs
/usr/bin/python3 - "$RESULTS" docs/scale.csv docs/scale.png <<'EOF'
import csv, json, os, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

results, csv_path, png_path = sys.argv[1:]
where = f'vccid on CPU {os.environ["SCALE_CPUS"]}, hosts on CPU {os.environ["SCALE_HOST_CPUS"]}'
runs, base = {}, None
for line in open(results):
    e = json.loads(line)
    if e["event"] == "base":
        base = e["rss_kib"]
        continue
    r = runs.setdefault(e["run"], {"run": e["run"]})
    ev = e["event"]
    if ev == "started":
        r["start_ms"] = e["start_ms"]
    elif ev == "quiet":
        r["others_busy_pct"] = e["busy_pct"]
    elif ev == "detached":
        r["rss_reconnected_kib"] = e["rss_kib"]
    elif ev == "start":
        for k in ("readers", "usbredir", "usbip", "vpcd"):
            r[k] = e.get(k, 0)
        r["rss_before_hosts_kib"] = e["rss_kib"]
    elif ev == "idle":
        r.update(rss_idle_kib=e["rss_kib"], threads_idle=e["threads"], attach_ms=e["attach_ms"],
                 idle_cpu_ticks=e["idle_cpu_ticks"], idle_seconds=e["idle_seconds"])
    elif ev == "one":
        when = "alone" if e["others"] == "unattached" else "beside"
        r[f'{e["transport"]}_{when}_p50_us'] = round(e["p50_us"], 1)
        r[f'{e["transport"]}_{when}_p99_us'] = round(e["p99_us"], 1)
    elif ev == "all":
        r.update(all_apdus_per_s=e["apdus_per_s"], all_p50_us=round(e["p50_us"], 1),
                 all_p99_us=round(e["p99_us"], 1), all_max_us=round(e["max_us"]),
                 all_starved_hosts=e["starved_hosts"], rss_after_all_kib=e["rss_after_kib"],
                 status_words=" ".join(e["status_words"]))
rows = sorted(runs.values(), key=lambda r: (r.get("vpcd", 0) > 0, r["readers"], r["run"]))
# Per reader: from the service with no reader (the first reader carries the process's own
# growth, about 2 MiB), and the marginal cost of the readers after the first.
for r in rows:
    r["rss_base_kib"] = base
    r["rss_per_reader_kib"] = round((r["rss_idle_kib"] - base) / r["readers"], 1)
    ones = [o["rss_idle_kib"] for o in rows
            if o["readers"] == 1 and bool(o.get("vpcd")) == bool(r.get("vpcd"))]
    if r["readers"] > 1 and ones:
        r["rss_marginal_kib"] = round((r["rss_idle_kib"] - sum(ones) / len(ones)) / (r["readers"] - 1), 1)
cols = ["run", "readers", "usbredir", "usbip", "vpcd", "others_busy_pct", "start_ms", "rss_base_kib",
        "rss_before_hosts_kib", "rss_idle_kib", "rss_per_reader_kib", "rss_marginal_kib",
        "threads_idle",
        "attach_ms", "idle_seconds", "idle_cpu_ticks"]
for t in ("usbredir", "usbip", "vpcd"):
    cols += [f"{t}_{w}_{p}_us" for w in ("alone", "beside") for p in ("p50", "p99")]
cols += ["all_apdus_per_s", "all_p50_us", "all_p99_us", "all_max_us", "all_starved_hosts",
         "rss_reconnected_kib", "rss_after_all_kib", "status_words"]
with open(csv_path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c, "") for c in cols})

usb = [r for r in rows if not r.get("vpcd")]
vpcd = [r for r in rows if r.get("vpcd")]
fig, (lat, mem, tput) = plt.subplots(1, 3, figsize=(16, 5))
colours = {"usbredir": "tab:blue", "usbip": "tab:orange", "vpcd": "tab:green"}
for t, rs in (("usbredir", usb), ("usbip", usb), ("vpcd", vpcd)):
    pts = [(r["readers"], r[f"{t}_beside_p50_us"] if r["readers"] > 1 else r[f"{t}_alone_p50_us"],
            r[f"{t}_beside_p99_us"] if r["readers"] > 1 else r[f"{t}_alone_p99_us"])
           for r in rs if f"{t}_alone_p50_us" in r]
    if not pts:
        continue
    x, p50, p99 = zip(*pts)
    lat.plot(x, p50, "o-", color=colours[t], label=f"{t} p50")
    lat.plot(x, p99, "s--", color=colours[t], label=f"{t} p99")
lat.set(title=f"one active reader beside N-1 idle ones\n({where})", xlabel="readers in the process",
        ylabel="SELECT latency (µs)", xscale="log", ylim=(0, None))
lat.legend()
total = mem.twinx()
for rs, label, colour in ((usb, "usbredir + usbip", "tab:purple"), (vpcd, "vpcd", "tab:green")):
    many = [r for r in rs if r["readers"] > 1]
    if many:
        x = [r["readers"] for r in many]
        mem.plot(x, [r["rss_per_reader_kib"] for r in many], "o-", color=colour,
                 label=f"{label}: (RSS - empty service) / N")
        mem.plot(x, [r["rss_marginal_kib"] for r in many], "s--", color=colour,
                 label=f"{label}: each reader after the first")
    if rs:
        total.plot([r["readers"] for r in rs], [r["rss_idle_kib"] / 1024 for r in rs], "^:",
                   color=colour, alpha=0.5, label=f"{label}: total")
mem.axhline(200, color="red", linewidth=1, label="goal: 200 KiB per idle reader")
mem.set(title="vccid RSS, every host attached and idle\n(total: dotted, right axis)", xlabel="readers in the process",
        ylabel="KiB per reader", xscale="log", ylim=(0, None))
total.set(ylabel="total RSS (MiB)", ylim=(0, None))
mem.legend(loc="lower left", fontsize="small")
for rs, label, colour in ((usb, "usbredir + usbip", "tab:purple"), (vpcd, "vpcd", "tab:green")):
    rs = [r for r in rs if r["readers"] > 1 or r.get("usbredir") or r.get("vpcd")]
    if rs:
        tput.plot([r["readers"] for r in rs], [r["all_apdus_per_s"] for r in rs], "o-",
                  color=colour, label=label)
tput.set(title=f"all readers active\n({where})", xlabel="readers in the process", ylabel="APDUs/s (total)",
         xscale="log", ylim=(0, None))
tput.legend()
for a in (lat, mem, tput):
    ticks = sorted({r["readers"] for r in rows})
    a.set_xticks(ticks)
    a.set_xticklabels([str(t) for t in ticks])
    a.grid(True, alpha=0.3)
fig.tight_layout()
fig.savefig(png_path, dpi=100)
EOF
echo "== docs/scale.csv (from $RESULTS)"
cat docs/scale.csv
