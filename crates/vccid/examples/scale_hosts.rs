//! Mock hosts for the scale benchmark (`scripts/bench-scale.sh`, issue #15): one thread per
//! reader of a running `vccid serve`, over real sockets. usbredir and USB/IP readers are driven
//! by testkit's `usbhost`, as QEMU's usb-redir on xHCI drives them (the hello exchange,
//! SET_CONFIGURATION, interrupt receiving started, then bulk packets) and as the kernel's
//! vhci-hcd imports them (an interrupt IN URB kept pending); vpcd readers through pcscd, as a PC/SC client (the `hostcard` crate's card). Every USB host
//! powers its card on (IccPowerOn) and then idles, or loops SELECT APDUs in XfrBlocks as
//! libccid sends them: a bulk OUT answered, then a bulk IN for the DataBlock.
//!
//! The sequence, each step printed as one JSON line:
//!  1. vccid's RSS and threads before any host; the first reader of each transport attached
//!     (the others stay unattached);
//!  2. `--rounds` times: each of those measured alone (one APDU at a time, `--seconds`), then
//!     every other reader attached and its card powered on, each measured again beside them
//!     (idle), the others detached again; in the first round, with all attached, vccid's RSS,
//!     threads and CPU ticks over `--idle` seconds of idleness;
//!  3. all readers attached and all looping for `--seconds`: the aggregate APDUs/s.
//!
//! usage: scale_hosts --pid PID [--usbredir PATH]... [--usbip HOST:PORT=COUNT]...
//!                    [--pcsc READER]... [--seconds S] [--idle S] [--rounds N]

use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use testkit::usbhost::{self, Bulk, Redir, Usbip};

/// SELECT of the CAC's ACA applet: answered by the card's dispatch alone, no key involved.
const SELECT: [u8; 12] = [
    0x00, 0xA4, 0x04, 0x00, 0x07, 0xA0, 0x00, 0x00, 0x00, 0x79, 0x03, 0x00,
];
/// How long any single answer may take before the run is declared broken.
const TIMEOUT: Duration = Duration::from_secs(20);
/// The mock hosts: an import is retried while the server still ends the connection of the
/// round before.
const HOST: usbhost::Options = usbhost::Options {
    name: "vccid scale_hosts",
    timeout: TIMEOUT,
    import_retry: TIMEOUT,
};

/// A reader of the running service, as the mock host reaches it.
#[derive(Debug, Clone)]
enum Target {
    Usbredir(PathBuf),
    Usbip(SocketAddr, String),
    /// A vpcd reader, reached through pcscd by its PC/SC name.
    Pcsc(String),
}

impl Target {
    fn transport(&self) -> &'static str {
        match self {
            Target::Usbredir(_) => "usbredir",
            Target::Usbip(..) => "usbip",
            Target::Pcsc(_) => "vpcd",
        }
    }

    /// Attaches as the host of this reader and powers the card on.
    fn attach(&self) -> Box<dyn Apdu> {
        let bulk: Box<dyn Bulk> = match self {
            Target::Usbredir(p) => Box::new(
                Redir::connect(&link::Addr::Unix(p.clone()), None, &HOST)
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display())),
            ),
            Target::Usbip(a, b) => {
                Box::new(Usbip::connect(*a, b, &HOST).unwrap_or_else(|e| panic!("{a} {b}: {e}")))
            }
            Target::Pcsc(name) => return Box::new(Pcsc::connect(name)),
        };
        Box::new(Usb::power_on(bulk))
    }
}

/// A host's way to its card: one APDU in, its response out.
trait Apdu {
    fn transmit(&mut self, apdu: &[u8]) -> Vec<u8>;
}

/// A USB host's CCID reader: APDUs in XfrBlocks.
struct Usb {
    bulk: Box<dyn Bulk>,
    seq: u8,
}

impl Usb {
    fn power_on(mut bulk: Box<dyn Bulk>) -> Usb {
        let atr = ccid(&mut *bulk, 0x62, 0, &[]);
        assert!(atr.len() > 10, "an ATR: {atr:02X?}");
        Usb { bulk, seq: 0 }
    }
}

impl Apdu for Usb {
    fn transmit(&mut self, apdu: &[u8]) -> Vec<u8> {
        self.seq = self.seq.wrapping_add(1);
        ccid(&mut *self.bulk, 0x6F, self.seq, apdu).split_off(10)
    }
}

/// A PC/SC client of pcscd, through the project's own PC/SC card (`hostcard`).
struct Pcsc(hostcard::HostCard);

impl Pcsc {
    fn connect(name: &str) -> Pcsc {
        let mut card = hostcard::HostCard::open(Some(name), &[])
            .unwrap_or_else(|e| panic!("PC/SC reader {name:?}: {e}"));
        assert_eq!(
            card.reader(),
            name,
            "the reader named, not one containing its name"
        );
        // pcscd may report the card a moment after the reader list.
        let deadline = Instant::now() + TIMEOUT;
        while card_api::Card::power_on(&mut card).is_empty() {
            assert!(Instant::now() < deadline, "no card in {name:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Pcsc(card)
    }
}

impl Apdu for Pcsc {
    fn transmit(&mut self, apdu: &[u8]) -> Vec<u8> {
        card_api::Card::transmit(&mut self.0, apdu)
    }
}

/// One CCID command and its answer (time extensions waited through); anything but a
/// successful answer breaks the run.
fn ccid(host: &mut dyn Bulk, kind: u8, seq: u8, body: &[u8]) -> Vec<u8> {
    let r = usbhost::ccid(host, kind, seq, body).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r[7] >> 6, 0, "command failed: {r:02X?}");
    r
}

/// What the main thread asks a host to do.
enum Cmd {
    /// Loop APDUs from `start` until `until`, then report.
    Run { start: Instant, until: Instant },
    /// Close the connection and end.
    Quit,
}

/// A host's report of a run: one latency per APDU, in nanoseconds; the last status word
/// (none if no APDU was answered in the run).
struct Report {
    latencies: Vec<u64>,
    sw: Option<[u8; 2]>,
}

/// A host thread: its orders and its reports.
struct Host {
    cmds: Sender<Cmd>,
    reports: Receiver<Report>,
    thread: JoinHandle<()>,
}

/// Attaches to `target` on a thread of its own, powers the card on and waits for orders;
/// returns once the card's ATR has come.
fn attach(target: Target) -> Host {
    let (cmds, cmd_rx) = channel::<Cmd>();
    let (report_tx, reports) = channel::<Report>();
    let (ready_tx, ready) = channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("host-{}", target.transport()))
        .stack_size(256 * 1024)
        .spawn(move || {
            let mut host = target.attach();
            let _ = ready_tx.send(());
            for cmd in cmd_rx {
                let (start, until) = match cmd {
                    Cmd::Run { start, until } => (start, until),
                    Cmd::Quit => return,
                };
                if let Some(wait) = start.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let mut latencies = Vec::with_capacity(1 << 16);
                let mut sw = None;
                while Instant::now() < until {
                    let t = Instant::now();
                    let r = host.transmit(&SELECT);
                    latencies.push(t.elapsed().as_nanos() as u64);
                    assert!(r.len() >= 2, "a status word: {r:02X?}");
                    sw = Some([r[r.len() - 2], r[r.len() - 1]]);
                }
                if report_tx.send(Report { latencies, sw }).is_err() {
                    return;
                }
            }
        })
        .expect("host thread");
    ready
        .recv()
        .expect("the host attached and powered the card on");
    Host {
        cmds,
        reports,
        thread,
    }
}

/// Attaches all of `targets` at once (a thread each); returns them in order.
fn attach_all(targets: &[Target]) -> Vec<Host> {
    let starters: Vec<JoinHandle<Host>> = targets
        .iter()
        .cloned()
        .map(|t| std::thread::spawn(move || attach(t)))
        .collect();
    starters
        .into_iter()
        .map(|s| s.join().expect("attached"))
        .collect()
}

fn detach_all(hosts: Vec<Host>) {
    for h in &hosts {
        let _ = h.cmds.send(Cmd::Quit);
    }
    for h in hosts {
        h.thread.join().expect("host thread ends cleanly");
    }
}

/// What a run of hosts together gave.
struct Outcome {
    /// Every APDU's latency (ns), sorted.
    latencies: Vec<u64>,
    /// The status words seen.
    sws: Vec<[u8; 2]>,
    /// From the common start to the last report.
    secs: f64,
    /// Hosts that got no APDU answered in the run.
    starved: usize,
}

/// Runs `hosts` together for `secs`.
fn run(hosts: &[&Host], secs: f64) -> Outcome {
    let start = Instant::now() + Duration::from_millis(200);
    let until = start + Duration::from_secs_f64(secs);
    for h in hosts {
        h.cmds.send(Cmd::Run { start, until }).expect("host alive");
    }
    let mut latencies = Vec::new();
    let mut sws = Vec::new();
    let mut starved = 0;
    for h in hosts {
        let r = h.reports.recv().expect("a report");
        starved += usize::from(r.latencies.is_empty());
        latencies.extend(r.latencies);
        sws.extend(r.sw);
    }
    // The last APDU of each host may end a little after `until`.
    let secs = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    sws.sort();
    sws.dedup();
    Outcome {
        latencies,
        sws,
        secs,
        starved,
    }
}

fn percentile(sorted: &[u64], p: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = (sorted.len() * p / 100).min(sorted.len() - 1);
    sorted[i] as f64 / 1000.0
}

/// vccid's resident memory (KiB) and threads, from /proc/PID/status.
fn status(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("vccid running");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("Threads:"))
}

/// vccid's CPU time so far (user + system), in clock ticks, from /proc/PID/stat.
fn cpu_ticks(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("vccid running");
    // Fields after the command name (which may hold spaces) in parentheses: utime is the
    // 14th field of the line, the 12th after the ")".
    let rest = &text[text.rfind(')').map_or(0, |i| i + 1)..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum()
}

struct Args {
    pid: u32,
    targets: Vec<Target>,
    seconds: f64,
    idle: f64,
    rounds: usize,
}

fn args() -> Args {
    let usage = "usage: scale_hosts --pid PID [--usbredir PATH]... [--usbip HOST:PORT=COUNT]... \
                 [--pcsc READER]... [--seconds S] [--idle S] [--rounds N]";
    let mut a = Args {
        pid: 0,
        targets: Vec::new(),
        seconds: 3.0,
        idle: 5.0,
        rounds: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{usage}"));
        match flag.as_str() {
            "--pid" => a.pid = value.parse().expect("--pid"),
            "--usbredir" => a.targets.push(Target::Usbredir(value.into())),
            "--usbip" => {
                let (addr, n) = value.split_once('=').unwrap_or((&value, "1"));
                let addr: SocketAddr = addr.parse().expect("--usbip HOST:PORT=COUNT");
                for i in 0..n.parse::<usize>().expect("--usbip COUNT") {
                    a.targets.push(Target::Usbip(addr, format!("1-{}", i + 1)));
                }
            }
            "--pcsc" => a.targets.push(Target::Pcsc(value)),
            "--seconds" => a.seconds = value.parse().expect("--seconds"),
            "--idle" => a.idle = value.parse().expect("--idle"),
            "--rounds" => a.rounds = value.parse().expect("--rounds"),
            _ => panic!("{usage}"),
        }
    }
    assert!(a.pid != 0 && !a.targets.is_empty(), "{usage}");
    a
}

fn main() {
    let a = args();
    let count = |kind: &str| a.targets.iter().filter(|t| t.transport() == kind).count();
    let shape = json!({
        "readers": a.targets.len(),
        "usbredir": count("usbredir"),
        "usbip": count("usbip"),
        "vpcd": count("vpcd"),
    });
    let line = |mut v: serde_json::Value| {
        if let (Some(o), Some(s)) = (v.as_object_mut(), shape.as_object()) {
            for (k, x) in s {
                o.insert(k.clone(), x.clone());
            }
        }
        println!("{v}");
    };
    // The measured readers: the first of each transport.
    let mut measured: Vec<usize> = Vec::new();
    for kind in ["usbredir", "usbip", "vpcd"] {
        if let Some(i) = a.targets.iter().position(|t| t.transport() == kind) {
            measured.push(i);
        }
    }
    let others: Vec<Target> = (0..a.targets.len())
        .filter(|i| !measured.contains(i))
        .map(|i| a.targets[i].clone())
        .collect();
    let (rss, threads) = status(a.pid);
    line(json!({"event": "start", "rss_kib": rss, "threads": threads}));
    let active = attach_all(
        &measured
            .iter()
            .map(|&i| a.targets[i].clone())
            .collect::<Vec<_>>(),
    );
    let mut samples: BTreeMap<(&str, &str), Vec<u64>> = BTreeMap::new();
    let mut sws = Vec::new();
    let mut measure = |others: &'static str, sws: &mut Vec<[u8; 2]>| {
        for (h, &i) in active.iter().zip(&measured) {
            let o = run(&[h], a.seconds);
            samples
                .entry((a.targets[i].transport(), others))
                .or_default()
                .extend(o.latencies);
            sws.extend(o.sws);
        }
    };
    for round in 0..a.rounds {
        measure("unattached", &mut sws);
        let t = Instant::now();
        let idle = attach_all(&others);
        let attach_ms = t.elapsed().as_secs_f64() * 1000.0;
        if round == 0 {
            // Let the readers' threads settle before the window.
            std::thread::sleep(Duration::from_secs(1));
            let ticks = cpu_ticks(a.pid);
            std::thread::sleep(Duration::from_secs_f64(a.idle));
            let ticks = cpu_ticks(a.pid) - ticks;
            let (rss, threads) = status(a.pid);
            line(json!({
                "event": "idle", "attach_ms": attach_ms.round(), "rss_kib": rss,
                "threads": threads, "idle_seconds": a.idle, "idle_cpu_ticks": ticks,
            }));
        }
        // With no other reader, "beside the idle ones" is the same as alone.
        if !others.is_empty() {
            measure("idle", &mut sws);
        }
        detach_all(idle);
        // Whether memory comes back when hosts leave (and stays flat over reconnections); a
        // session's presence watcher notices its end within 500 ms.
        std::thread::sleep(Duration::from_secs(1));
        let (rss, threads) = status(a.pid);
        line(json!({"event": "detached", "round": round, "rss_kib": rss, "threads": threads}));
    }
    let max = |l: &[u64]| l.last().map_or(f64::NAN, |m| *m as f64 / 1000.0);
    for ((transport, others), mut l) in samples {
        l.sort_unstable();
        line(json!({
            "event": "one", "transport": transport, "others": others, "apdus": l.len(),
            "p50_us": percentile(&l, 50), "p99_us": percentile(&l, 99), "max_us": max(&l),
        }));
    }
    let mut hosts = active;
    hosts.extend(attach_all(&others));
    let (rss_attached, _) = status(a.pid);
    let o = run(&hosts.iter().collect::<Vec<_>>(), a.seconds);
    let (rss, threads) = status(a.pid);
    sws.extend(o.sws);
    sws.sort();
    sws.dedup();
    let l = &o.latencies;
    line(json!({
        "event": "all", "apdus": l.len(), "seconds": o.secs,
        "apdus_per_s": (l.len() as f64 / o.secs).round(),
        "p50_us": percentile(l, 50), "p99_us": percentile(l, 99), "max_us": max(l),
        "starved_hosts": o.starved,
        "rss_attached_kib": rss_attached, "rss_after_kib": rss, "threads": threads,
        "status_words": sws.iter().map(|s| format!("{:02X}{:02X}", s[0], s[1])).collect::<Vec<_>>(),
    }));
    detach_all(hosts);
}
