//! The soak load (issue #17), shared by `examples/soak` (`scripts/soak.sh`, 30 minutes) and
//! `tests/soak.rs` (2 minutes): `vccid serve` with many USB readers (half usbredir on Unix
//! sockets, half USB/IP on one loopback port), each holding an ephemeral generated PIV card,
//! and a mock host per reader over the real socket (testkit's `usbhost`: usbredir as QEMU on
//! xHCI speaks it, USB/IP as vhci-hcd does; XfrBlocks as libccid sends them, bulk OUT then bulk
//! IN) running a steady mix at a fixed pace:
//!
//! - every cycle: SELECT PIV; VERIFY's status query (never fewer than all tries left: a wrong
//!   PIN is always followed by the right one, which resets the counter); VERIFY; GENERAL
//!   AUTHENTICATE with the 9A or 9C key (alternately) on a PKCS#1 v1.5 SHA-256 block, the
//!   signature checked against the certificate the card gave when the host attached;
//! - every tenth cycle, a wrong PIN first (`63C2` expected, never a block);
//! - every `churn_every` cycles, alternately: the card ejected through the control socket (the
//!   slot must read empty and an APDU must fail), inserted again (present, a new ATR, SELECT,
//!   the same certificates), or the host's connection closed and the reader attached anew.
//!
//! Every `interval` the sampler reads vccid's VmRSS, threads and open descriptors from /proc
//! and takes the interval's APDU round trips (p50, p99, max) and errors. After the warm-up and
//! at the end every host pauses between cycles, attached with its card in: the "quiescent"
//! figures (descriptors, RSS, threads) are read there, so that the two are taken in the same
//! state and a connection being replaced at that instant counts in neither.
//!
//! An error is any wrong answer (status word, data, signature, ATR), a transfer that fails or
//! times out, an attach or reconnect that fails, a control command answered with an error, or
//! vccid exiting; each is counted by kind, with the first message of each kind kept.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use testkit::usbhost::{self, Bulk, Redir, Usbip};
use x509_cert::der::Decode;

/// The PIV application's AID (SP 800-73-4 Part 1 §2.2).
const PIV_AID: [u8; 9] = [0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00];
/// How long any single answer may take before it counts as an error.
const TIMEOUT: Duration = Duration::from_secs(20);
/// The mock hosts: a reconnecting host's import is retried while the server still ends its
/// previous connection.
const HOST: usbhost::Options = usbhost::Options {
    name: "vccid soak",
    timeout: TIMEOUT,
    import_retry: TIMEOUT,
};
/// The cards' PIN tries (the configuration's default).
const PIN_TRIES: u8 = 3;
/// The keys signed with, alternately, and their certificate objects: 9A (PIV authentication,
/// PIN once per session) and 9C (digital signature, PIN right before each use).
const KEYS: [(u8, [u8; 3]); 2] = [(0x9A, [0x5F, 0xC1, 0x05]), (0x9C, [0x5F, 0xC1, 0x0A])];

/// What a soak runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `vccid` binary.
    pub vccid: PathBuf,
    /// A scratch directory: the configuration, the sockets, vccid's log.
    pub dir: PathBuf,
    /// Readers (and cards, and hosts): the first half usbredir, the rest USB/IP.
    pub readers: usize,
    /// The whole run, warm-up included.
    pub seconds: f64,
    /// Between samples.
    pub interval: f64,
    /// The warm-up, as a fraction of the run: the quiescent figures after it are the baseline.
    pub warmup: f64,
    /// Each host starts a cycle this often.
    pub cycle: Duration,
    /// Cycles between a host's churn operations (eject + insert, reconnect: alternately).
    pub churn_every: u64,
    /// Which churn operations run: both by default; one alone, to tell which one a trend
    /// follows.
    pub eject: bool,
    pub reconnect: bool,
    /// Every card's PIN.
    pub pin: String,
}

impl Options {
    /// The defaults, then `SOAK_READERS`, `SOAK_SECONDS`, `SOAK_INTERVAL`, `SOAK_WARMUP`
    /// (a fraction), `SOAK_CYCLE_MS`, `SOAK_CHURN_EVERY` and `SOAK_CHURN` (`eject`,
    /// `reconnect` or both, comma-separated) from the environment.
    pub fn from_env(vccid: PathBuf, dir: PathBuf, seconds: f64) -> Options {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let num = |name: &str, default: f64| {
            env(name).map_or(default, |v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{name}={v:?}: not a number"))
            })
        };
        let churn = env("SOAK_CHURN").unwrap_or_else(|| "eject,reconnect".into());
        let kinds: Vec<&str> = churn.split(',').map(str::trim).collect();
        if let Some(k) = kinds.iter().find(|k| !["eject", "reconnect"].contains(k)) {
            panic!("SOAK_CHURN: {k:?} is neither eject nor reconnect");
        }
        Options {
            eject: kinds.contains(&"eject"),
            reconnect: kinds.contains(&"reconnect"),
            vccid,
            dir,
            readers: num("SOAK_READERS", 64.0) as usize,
            seconds: num("SOAK_SECONDS", seconds),
            interval: num("SOAK_INTERVAL", 10.0),
            warmup: num("SOAK_WARMUP", 0.1),
            cycle: Duration::from_millis(num("SOAK_CYCLE_MS", 250.0) as u64),
            churn_every: num("SOAK_CHURN_EVERY", 60.0) as u64,
            pin: "246810".into(),
        }
    }
}

/// One interval's figures.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Seconds since the load started (the end of the interval).
    pub t: f64,
    /// The interval's length, seconds.
    pub secs: f64,
    pub rss_kib: u64,
    pub fds: u64,
    pub threads: u64,
    pub apdus: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub errors: u64,
    pub signatures: u64,
    pub ejects: u64,
    pub reconnects: u64,
    /// The machine's 1-minute load average: on a shared machine, others' work shows up as
    /// latency here.
    pub load1: f64,
}

impl Sample {
    pub const CSV_HEADER: &'static str =
        "t_s,rss_kib,fds,threads,apdus,apdus_per_s,p50_us,p99_us,max_us,errors,signatures,ejects,reconnects,load1";

    /// The sample as a line of the CSV under [`Sample::CSV_HEADER`].
    pub fn csv(&self) -> String {
        format!(
            "{:.1},{},{},{},{},{:.0},{:.1},{:.1},{:.1},{},{},{},{},{:.2}",
            self.t,
            self.rss_kib,
            self.fds,
            self.threads,
            self.apdus,
            self.apdus as f64 / self.secs.max(1e-9),
            self.p50_us,
            self.p99_us,
            self.max_us,
            self.errors,
            self.signatures,
            self.ejects,
            self.reconnects,
            self.load1
        )
    }
}

/// vccid's figures with every host attached, its card in, and idle.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiescent {
    /// The fewest open descriptors seen over the settling window.
    pub fds: u64,
    pub rss_kib: u64,
    pub threads: u64,
    /// malloc's heaps besides the main one (`vccid::malloc::thread_heaps`): vccid runs with
    /// one for all its threads.
    pub thread_heaps: usize,
}

/// A whole run.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Errors by kind: how many, and the first one's message.
    pub errors: BTreeMap<String, (u64, String)>,
    pub samples: Vec<Sample>,
    /// After the warm-up, and at the end.
    pub after_warmup: Quiescent,
    pub at_end: Quiescent,
    /// The p99 round trip (µs) over the first and the last tenth of the run after the warm-up.
    pub p99_first_us: f64,
    pub p99_last_us: f64,
    pub apdus: u64,
    pub signatures: u64,
    pub ejects: u64,
    pub reconnects: u64,
    /// How long vccid took to start (every card generated, every reader listening).
    pub start_secs: f64,
    pub seconds: f64,
    pub readers: usize,
    /// The warm-up's fraction of the run.
    pub warmup: f64,
}

impl Summary {
    pub fn error_count(&self) -> u64 {
        self.errors.values().map(|(n, _)| n).sum()
    }

    /// `(later - earlier) / earlier`, in percent.
    pub fn growth(earlier: u64, later: u64) -> f64 {
        100.0 * (later as f64 - earlier as f64) / (earlier as f64).max(1.0)
    }

    pub fn json(&self) -> Value {
        let (w, e) = (self.after_warmup, self.at_end);
        json!({
            "readers": self.readers,
            "warmup": self.warmup,
            "seconds": self.seconds,
            "start_seconds": self.start_secs,
            "errors": self.error_count(),
            "errors_by_kind": self.errors.iter()
                .map(|(k, (n, first))| (k.clone(), json!({"count": n, "first": first})))
                .collect::<serde_json::Map<_, _>>(),
            "apdus": self.apdus,
            "signatures": self.signatures,
            "ejects": self.ejects,
            "reconnects": self.reconnects,
            "rss_after_warmup_kib": w.rss_kib,
            "rss_at_end_kib": e.rss_kib,
            "rss_growth_pct": Summary::growth(w.rss_kib, e.rss_kib),
            "fds_after_warmup": w.fds,
            "fds_at_end": e.fds,
            "fds_growth_pct": Summary::growth(w.fds, e.fds),
            "threads_after_warmup": w.threads,
            "threads_at_end": e.threads,
            "malloc_thread_heaps_at_end": e.thread_heaps,
            "p99_first_us": self.p99_first_us,
            "p99_last_us": self.p99_last_us,
        })
    }
}

/// A failure of the load, counted by `kind`.
#[derive(Debug)]
struct Fail {
    kind: &'static str,
    msg: String,
}

type R<T> = Result<T, Fail>;

fn fail<T>(kind: &'static str, msg: impl Into<String>) -> R<T> {
    Err(Fail {
        kind,
        msg: msg.into(),
    })
}

/// Once attached, whatever fails on the USB side is a transfer; [`Reader::attach`] counts its
/// own failures as attaches.
impl From<usbhost::Error> for Fail {
    fn from(e: usbhost::Error) -> Fail {
        Fail {
            kind: "transfer",
            msg: e.msg,
        }
    }
}

/// A reader of the running service, as its host reaches it.
#[derive(Debug, Clone)]
enum Target {
    Usbredir(PathBuf),
    Usbip(SocketAddr, String),
}

/// A CCID reader seen from its host: CCID commands over the bulk endpoints, each APDU's round
/// trip timed.
struct Reader {
    bulk: Box<dyn Bulk>,
    seq: u8,
    /// Round trips (ns) not yet handed to the sampler.
    latencies: Vec<u64>,
}

/// bmICCStatus of a slot with no card (CCID §6.2.6).
const ICC_ABSENT: u8 = 2;

impl Reader {
    fn attach(target: &Target) -> R<Reader> {
        let attach = |e: usbhost::Error| Fail {
            kind: "attach",
            msg: e.msg,
        };
        let bulk: Box<dyn Bulk> = match target {
            Target::Usbredir(p) => {
                let to = link::Addr::Unix(p.clone());
                Box::new(Redir::connect(&to, None, &HOST).map_err(attach)?)
            }
            Target::Usbip(a, b) => Box::new(Usbip::connect(*a, b, &HOST).map_err(attach)?),
        };
        Ok(Reader {
            bulk,
            seq: 0,
            latencies: Vec::new(),
        })
    }

    /// One CCID command and its answer (time extensions waited through), whatever its status.
    fn ccid(&mut self, kind: u8, body: &[u8]) -> R<Vec<u8>> {
        self.seq = self.seq.wrapping_add(1);
        Ok(usbhost::ccid(&mut *self.bulk, kind, self.seq, body)?)
    }

    /// IccPowerOn: the ATR.
    fn power_on(&mut self) -> R<Vec<u8>> {
        let r = self.ccid(0x62, &[])?;
        if r[7] >> 6 != 0 || r.len() < 12 {
            return fail("atr", format!("IccPowerOn: {r:02X?}"));
        }
        Ok(r[10..].to_vec())
    }

    /// GetSlotStatus: bmICCStatus.
    fn icc_status(&mut self) -> R<u8> {
        Ok(self.ccid(0x65, &[])?[7] & 3)
    }

    /// One APDU in an XfrBlock, timed; its answer, status word last.
    fn transmit(&mut self, apdu: &[u8]) -> R<Vec<u8>> {
        let t = Instant::now();
        let r = self.ccid(0x6F, apdu)?;
        self.latencies.push(t.elapsed().as_nanos() as u64);
        if r[7] >> 6 != 0 || r.len() < 12 {
            return fail("apdu", format!("XfrBlock failed: {:02X?}", &r[..10]));
        }
        Ok(r[10..].to_vec())
    }

    /// A command of any length (chained, ISO 7816-4 §5.1.1.1, as OpenSC and yubico-piv-tool
    /// send long ones), its answer collected through GET RESPONSE: (data, SW1SW2).
    fn command(&mut self, ins: u8, p1: u8, p2: u8, data: &[u8]) -> R<(Vec<u8>, u16)> {
        let mut chunks: Vec<&[u8]> = data.chunks(255).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let last = chunks.len() - 1;
        let mut got = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut a = vec![if i < last { 0x10 } else { 0x00 }, ins, p1, p2];
            if !chunk.is_empty() {
                a.push(chunk.len() as u8);
                a.extend_from_slice(chunk);
            }
            if i == last && ins != 0x20 {
                a.push(0x00);
            }
            got = self.transmit(&a)?;
            if i < last && sw(&got) != 0x9000 {
                return fail(
                    "apdu",
                    format!("INS {ins:02X}: chained piece answered {:04X}", sw(&got)),
                );
            }
        }
        let mut out = Vec::new();
        loop {
            let s = sw(&got);
            out.extend_from_slice(&got[..got.len() - 2]);
            if s >> 8 != 0x61 {
                return Ok((out, s));
            }
            got = self.transmit(&[0x00, 0xC0, 0x00, 0x00, s as u8])?;
        }
    }
}

/// An answer's status word (an answer always has one: `transmit` checked its length).
fn sw(r: &[u8]) -> u16 {
    u16::from_be_bytes([r[r.len() - 2], r[r.len() - 1]])
}

/// `tag len value` with BER lengths.
fn tlv(tag: &[u8], value: &[u8]) -> Vec<u8> {
    let mut v = tag.to_vec();
    match value.len() {
        n @ 0..=0x7F => v.push(n as u8),
        n @ 0x80..=0xFF => v.extend_from_slice(&[0x81, n as u8]),
        n => v.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
    }
    v.extend_from_slice(value);
    v
}

/// The value of the first item with the one-byte tag `tag` in a BER sequence.
fn find(mut v: &[u8], tag: u8) -> Option<&[u8]> {
    while v.len() >= 2 {
        let (len, head) = match v[1] {
            n @ 0..=0x7F => (n as usize, 2),
            0x81 => (*v.get(2)? as usize, 3),
            0x82 => (u16::from_be_bytes([*v.get(2)?, *v.get(3)?]) as usize, 4),
            _ => return None,
        };
        let value = v.get(head..head + len)?;
        if v[0] == tag {
            return Some(value);
        }
        v = &v[head + len..];
    }
    None
}

/// What hosts, sampler and main thread share.
struct Shared {
    stats: Mutex<Stats>,
    /// Control commands go one at a time (each on a fresh connection, as `vccid ctl` makes
    /// them): the socket serves at most 64 clients, as many as there are hosts.
    control: Mutex<PathBuf>,
    gate: Mutex<Gate>,
    gate_changed: Condvar,
    started: Instant,
}

#[derive(Default)]
struct Stats {
    latencies: Vec<u64>,
    errors: u64,
    signatures: u64,
    ejects: u64,
    reconnects: u64,
    by_kind: BTreeMap<String, (u64, String)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Run,
    Park,
    Stop,
}

struct Gate {
    phase: Phase,
    parked: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn error(&self, host: &str, f: Fail) {
        let mut s = lock(&self.stats);
        s.errors += 1;
        let e = s
            .by_kind
            .entry(f.kind.to_string())
            .or_insert((0, String::new()));
        e.0 += 1;
        // The sampler takes the counts every interval: at most five of a kind are printed per
        // interval, so that a failure that repeats does not bury the rest.
        if e.0 <= 5 {
            eprintln!(
                "soak: {:.1} s: {host}: {}: {}",
                self.started.elapsed().as_secs_f64(),
                f.kind,
                f.msg
            );
        }
        if e.0 == 1 {
            e.1 = format!("{host}: {}", f.msg);
        }
    }

    fn phase(&self) -> Phase {
        lock(&self.gate).phase
    }

    /// Waits while the hosts are parked; `false` once they are to stop.
    fn pass(&self) -> bool {
        let mut g = lock(&self.gate);
        if g.phase == Phase::Park {
            g.parked += 1;
            self.gate_changed.notify_all();
            while g.phase == Phase::Park {
                g = self.gate_changed.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            g.parked -= 1;
        }
        g.phase == Phase::Run
    }

    fn set_phase(&self, phase: Phase) {
        lock(&self.gate).phase = phase;
        self.gate_changed.notify_all();
    }

    /// Parks every host between two cycles; `false` if they did not all arrive in time.
    fn park(&self, hosts: usize, within: Duration) -> bool {
        self.set_phase(Phase::Park);
        let deadline = Instant::now() + within;
        let mut g = lock(&self.gate);
        while g.parked < hosts {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            g = self
                .gate_changed
                .wait_timeout(g, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// One control command on a connection of its own: its `return`.
    fn control(&self, execute: &str, arguments: Value) -> R<Value> {
        let path = lock(&self.control);
        let io = |e: std::io::Error| Fail {
            kind: "control",
            msg: format!("{execute}: {e}"),
        };
        let s = UnixStream::connect(&*path).map_err(io)?;
        s.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
        let mut lines = BufReader::new(s.try_clone().map_err(io)?).lines();
        let greeting = lines.next().transpose().map_err(io)?.unwrap_or_default();
        if !greeting.contains("\"QMP\"") {
            return fail("control", format!("greeting {greeting:?}"));
        }
        let req = json!({"execute": execute, "arguments": arguments, "id": 1});
        (&s).write_all(format!("{req}\n").as_bytes()).map_err(io)?;
        for line in lines {
            let v: Value = serde_json::from_str(&line.map_err(io)?)
                .or_else(|e| fail("control", format!("{execute}: {e}")))?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return fail("control", format!("{execute} {arguments}: {e}"));
            }
        }
        fail(
            "control",
            format!("{execute}: the socket closed unanswered"),
        )
    }
}

/// One mock host and its card's reader.
struct Host {
    name: String,
    card: String,
    target: Target,
    pin: Vec<u8>,
    shared: Arc<Shared>,
    reader: Option<Reader>,
    /// The card is out of its reader (an eject whose insert failed).
    card_out: bool,
    /// The RSA public keys (RSAPublicKey DER) of 9A and 9C, from the first attach.
    keys: Option<[Vec<u8>; 2]>,
    cycle: u64,
    churn_every: u64,
    /// Odd hosts reconnect where even ones eject, so that both go on all the time.
    odd: u64,
    eject: bool,
    reconnect: bool,
}

impl Host {
    fn reader(&mut self) -> R<&mut Reader> {
        match &mut self.reader {
            Some(r) => Ok(r),
            None => fail("host", "no connection"),
        }
    }

    /// Attaches (a fresh connection), powers the card on, selects PIV and reads the keys'
    /// certificates: the same ones as before, if this is not the first attach.
    fn attach(&mut self) -> R<()> {
        self.reader = None;
        self.reader = Some(Reader::attach(&self.target)?);
        self.start_card()
    }

    /// Power on, SELECT, the certificates: what a host does with a card that arrives.
    fn start_card(&mut self) -> R<()> {
        let atr = self.reader()?.power_on()?;
        if !atr.windows(9).any(|w| w == b"vccid PIV") {
            return fail("atr", format!("not the PIV card's ATR: {atr:02X?}"));
        }
        self.select()?;
        let mut keys: [Vec<u8>; 2] = Default::default();
        for (k, (_, object)) in keys.iter_mut().zip(KEYS) {
            let (data, s) = self
                .reader()?
                .command(0xCB, 0x3F, 0xFF, &tlv(&[0x5C], &object))?;
            if s != 0x9000 {
                return fail("apdu", format!("GET DATA {object:02X?}: {s:04X}"));
            }
            let cert = find(&data, 0x53).and_then(|v| find(v, 0x70));
            let cert = cert.and_then(|c| x509_cert::Certificate::from_der(c).ok());
            let Some(cert) = cert else {
                return fail("apdu", format!("GET DATA {object:02X?}: no certificate"));
            };
            *k = cert
                .tbs_certificate()
                .subject_public_key_info()
                .subject_public_key
                .raw_bytes()
                .to_vec();
        }
        match &self.keys {
            None => self.keys = Some(keys),
            Some(known) if *known == keys => {}
            Some(_) => return fail("card", "the certificates changed"),
        }
        Ok(())
    }

    fn select(&mut self) -> R<()> {
        let (data, s) = self.reader()?.command(0xA4, 0x04, 0x00, &PIV_AID)?;
        if s != 0x9000 || data.first() != Some(&0x61) {
            return fail("apdu", format!("SELECT PIV: {s:04X} {data:02X?}"));
        }
        Ok(())
    }

    fn verify(&mut self, pin: &[u8], want: u16) -> R<()> {
        let mut padded = pin.to_vec();
        padded.resize(8, 0xFF);
        let (_, s) = self.reader()?.command(0x20, 0x00, 0x80, &padded)?;
        if s != want {
            return fail("apdu", format!("VERIFY: {s:04X}, not {want:04X}"));
        }
        Ok(())
    }

    /// GENERAL AUTHENTICATE with key `which` (of [`KEYS`]) on a SHA-256 PKCS#1 v1.5 block of
    /// a message of this cycle; the signature checked with the certificate's key.
    fn sign(&mut self, which: usize) -> R<()> {
        use aws_lc_rs::{digest, signature};
        let (key, _) = KEYS[which];
        let msg = format!("{} cycle {}", self.name, self.cycle);
        let hash = digest::digest(&digest::SHA256, msg.as_bytes());
        // DigestInfo for SHA-256 (RFC 8017 §9.2, note 1).
        let info: [u8; 19] = [
            0x30, 0x31, 0x30, 0x0D, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x01, 0x05, 0x00, 0x04, 0x20,
        ];
        let mut block = vec![0x00, 0x01];
        block.resize(256 - 1 - info.len() - 32, 0xFF);
        block.push(0x00);
        block.extend_from_slice(&info);
        block.extend_from_slice(hash.as_ref());
        let mut inner = tlv(&[0x82], &[]);
        inner.extend(tlv(&[0x81], &block));
        let (data, s) = self
            .reader()?
            .command(0x87, 0x07, key, &tlv(&[0x7C], &inner))?;
        if s != 0x9000 {
            return fail("sign", format!("GENERAL AUTHENTICATE {key:02X}: {s:04X}"));
        }
        let sig = find(&data, 0x7C).and_then(|v| find(v, 0x82));
        let Some(sig) = sig else {
            return fail(
                "sign",
                format!("GENERAL AUTHENTICATE {key:02X}: {data:02X?}"),
            );
        };
        let Some(keys) = &self.keys else {
            return fail("sign", "no key known");
        };
        let public =
            signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &keys[which]);
        if public.verify(msg.as_bytes(), sig).is_err() {
            return fail(
                "sign",
                format!("key {key:02X}: the signature does not verify"),
            );
        }
        lock(&self.shared.stats).signatures += 1;
        Ok(())
    }

    /// The card out through the control socket, seen gone by the host, and back in.
    fn eject_insert(&mut self) -> R<()> {
        let r = self
            .shared
            .control("card-eject", json!({"reader": self.name}))?;
        if r["card"] != self.card.as_str() {
            return fail("control", format!("card-eject {}: {r}", self.name));
        }
        self.card_out = true;
        let status = self.reader()?.icc_status()?;
        if status != ICC_ABSENT {
            return fail("eject", format!("bmICCStatus {status} after the eject"));
        }
        let r = self.reader()?.ccid(0x6F, &[0x00, 0xA4, 0x04, 0x00])?;
        if r[7] >> 6 == 0 {
            return fail("eject", format!("an APDU answered with no card: {r:02X?}"));
        }
        self.put_back()?;
        let status = self.reader()?.icc_status()?;
        if status == ICC_ABSENT {
            return fail("insert", "no card in the slot after the insert");
        }
        lock(&self.shared.stats).ejects += 1;
        self.start_card()
    }

    /// The card back into its reader through the control socket.
    fn put_back(&mut self) -> R<()> {
        let r = self.shared.control(
            "card-insert",
            json!({"card": self.card, "reader": self.name}),
        )?;
        if r["slot"] != self.name.as_str() {
            return fail("control", format!("card-insert {}: {r}", self.name));
        }
        self.card_out = false;
        Ok(())
    }

    /// The host's connection closed and the reader attached anew.
    fn reconnect(&mut self) -> R<()> {
        self.attach()
            .map_err(|f| Fail {
                kind: if f.kind == "attach" {
                    "reconnect"
                } else {
                    f.kind
                },
                msg: f.msg,
            })
            .map(|()| lock(&self.shared.stats).reconnects += 1)
    }

    /// Attached, the card in: after an error, and before parking.
    fn recover(&mut self) -> R<()> {
        if self.card_out {
            self.put_back()?;
            self.reader = None;
        }
        if self.reader.is_none() {
            self.attach()?;
        }
        Ok(())
    }

    fn one_cycle(&mut self) -> R<()> {
        self.recover()?;
        self.select()?;
        // The status query: verified already (9000), or every try left; fewer would mean a
        // wrong PIN's count survived the right PIN.
        let (_, s) = self.reader()?.command(0x20, 0x00, 0x80, &[])?;
        if s != 0x9000 && s != 0x63C0 | u16::from(PIN_TRIES) {
            return fail("apdu", format!("VERIFY status: {s:04X}"));
        }
        if self.cycle % 10 == 5 {
            self.verify(b"000000", 0x63C0 | u16::from(PIN_TRIES - 1))?;
        }
        let pin = self.pin.clone();
        self.verify(&pin, 0x9000)?;
        self.sign((self.cycle % 2) as usize)?;
        let churn = self.churn_every.max(1);
        if self.cycle % churn == churn - 1 {
            let eject_turn = (self.cycle / churn + self.odd).is_multiple_of(2);
            if self.eject && (eject_turn || !self.reconnect) {
                self.eject_insert()?;
            } else if self.reconnect {
                self.reconnect()?;
            }
        }
        Ok(())
    }

    fn run(mut self, first: Instant, period: Duration) {
        let mut next = first;
        loop {
            if self.shared.phase() == Phase::Park {
                // Parked hosts hold what they hold in the middle of the run: a connection
                // each, the card in.
                if let Err(f) = self.recover() {
                    self.reader = None;
                    self.shared.error(&self.name, f);
                }
            }
            if !self.shared.pass() {
                return;
            }
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            // A steady pace on the host's own grid (`first` + k periods): a late cycle does not
            // make the next ones come sooner, and after a pause the hosts stay spread over the
            // period instead of all starting together.
            next += period;
            let now = Instant::now();
            if next < now {
                let behind = (now - next).as_nanos() / period.as_nanos().max(1);
                next += period * (behind as u32 + 1);
            }
            if self.shared.phase() != Phase::Run {
                continue;
            }
            let result = self.one_cycle();
            self.cycle += 1;
            if let Some(r) = &mut self.reader {
                let l = std::mem::take(&mut r.latencies);
                lock(&self.shared.stats).latencies.extend(l);
            }
            if let Err(f) = result {
                // Whatever state the connection is in, the next cycle starts afresh.
                self.reader = None;
                self.shared.error(&self.name, f);
            }
        }
    }
}

/// vccid's VmRSS (KiB) and threads, and its open descriptors.
fn proc_figures(pid: u32) -> Option<(u64, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((field("VmRSS:"), field("Threads:"), fds))
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p / 100.0) as usize).min(sorted.len() - 1);
    sorted[i] as f64 / 1000.0
}

/// A free loopback TCP port (for the USB/IP readers).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The configuration: `readers` ephemeral PIV cards, the first half in usbredir readers, the
/// rest in USB/IP readers on one port. Returns it with the readers' targets.
fn config(o: &Options, usbip_port: u16) -> (String, Vec<(String, String, Target)>) {
    let d = o.dir.display();
    let mut toml =
        format!("[service]\nstate_dir = \"{d}/state\"\ncontrol = \"{d}/control.sock\"\n\n");
    let mut targets = Vec::new();
    let redir = o.readers / 2;
    for i in 0..o.readers {
        toml += &format!(
            "[[card]]\nid = \"card{i}\"\nprofile = \"piv\"\nephemeral = true\npin = \"{}\"\n\n",
            o.pin
        );
    }
    for i in 0..o.readers {
        let (name, transport, address, target) = if i < redir {
            let path = o.dir.join(format!("redir{i}.sock"));
            (
                format!("redir{i}"),
                "usbredir",
                format!("unix:{}", path.display()),
                Target::Usbredir(path),
            )
        } else {
            let addr = SocketAddr::from(([127, 0, 0, 1], usbip_port));
            (
                format!("usbip{}", i - redir),
                "usbip",
                addr.to_string(),
                Target::Usbip(addr, format!("1-{}", i - redir + 1)),
            )
        };
        toml += &format!(
            "[[reader]]\nid = \"{name}\"\ntransport = \"{transport}\"\naddress = \"{address}\"\ncards = [\"card{i}\"]\n\n"
        );
        targets.push((name, format!("card{i}"), target));
    }
    (toml, targets)
}

/// Stops vccid when the run ends, however it ends.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        // SIGTERM: the service's own orderly stop.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The quiescent figures: every host parked, attached with its card in; after a second for
/// the service to finish what the last cycles started, the fewest descriptors over two seconds
/// (a connection being closed on the service's side when the hosts parked is gone by then).
fn quiescent(shared: &Shared, hosts: usize, pid: u32) -> Quiescent {
    if !shared.park(hosts, TIMEOUT * 3) {
        shared.error(
            "sampler",
            Fail {
                kind: "park",
                msg: "not every host paused within a minute".into(),
            },
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    let mut q = Quiescent {
        fds: u64::MAX,
        ..Quiescent::default()
    };
    for _ in 0..20 {
        if let Some((rss, threads, fds)) = proc_figures(pid) {
            q = Quiescent {
                fds: q.fds.min(fds),
                rss_kib: rss,
                threads,
                thread_heaps: 0,
            };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Once: the heaps only grow, and reading the whole map twenty times told nothing more.
    q.thread_heaps = vccid::malloc::thread_heaps(pid).unwrap_or(usize::MAX);
    q
}

/// Runs the soak: starts vccid, the hosts and the sampler; calls `on_sample` with every
/// interval's figures as they come.
pub fn run(o: &Options, mut on_sample: impl FnMut(&Sample)) -> Result<Summary, String> {
    std::fs::create_dir_all(&o.dir).map_err(|e| format!("{}: {e}", o.dir.display()))?;
    let usbip_port = free_port().map_err(|e| format!("a free port: {e}"))?;
    let (toml, targets) = config(o, usbip_port);
    let config_path = o.dir.join("vccid.toml");
    std::fs::write(&config_path, toml).map_err(|e| e.to_string())?;
    let log_path = o.dir.join("vccid.log");
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let socket = o.dir.join("control.sock");
    let _ = std::fs::remove_file(&socket);
    let t0 = Instant::now();
    let child = Command::new(&o.vccid)
        .args(["serve", "--config"])
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("{}: {e}", o.vccid.display()))?;
    let mut service = Service(child);
    let pid = service.0.id();
    // The control socket answers once every card is made and every reader listens.
    while UnixStream::connect(&socket).is_err() {
        if let Ok(Some(status)) = service.0.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!("vccid serve exited ({status}):\n{log}"));
        }
        if t0.elapsed() > Duration::from_secs(300) {
            return Err("vccid serve: no control socket within 300 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let start_secs = t0.elapsed().as_secs_f64();

    let shared = Arc::new(Shared {
        stats: Mutex::new(Stats::default()),
        control: Mutex::new(socket),
        gate: Mutex::new(Gate {
            phase: Phase::Run,
            parked: 0,
        }),
        gate_changed: Condvar::new(),
        started: Instant::now(),
    });
    let n = targets.len();
    let begin = Instant::now() + Duration::from_millis(200);
    let mut threads = Vec::new();
    for (i, (name, card, target)) in targets.into_iter().enumerate() {
        let mut host = Host {
            name: name.clone(),
            card,
            target,
            pin: o.pin.as_bytes().to_vec(),
            shared: shared.clone(),
            reader: None,
            card_out: false,
            keys: None,
            // Spread over the churn period, so that the hosts' ejects and reconnects do not
            // come together.
            cycle: i as u64 * o.churn_every.max(1) / n as u64,
            churn_every: o.churn_every,
            odd: i as u64 % 2,
            eject: o.eject,
            reconnect: o.reconnect,
        };
        // Every host attaches before the load starts: attach errors are errors too.
        if let Err(f) = host.attach() {
            host.reader = None;
            shared.error(&name, f);
        }
        let first = begin + o.cycle.mul_f64(i as f64 / n as f64);
        let period = o.cycle;
        threads.push(
            std::thread::Builder::new()
                .name(name)
                .stack_size(256 * 1024)
                .spawn(move || host.run(first, period))
                .map_err(|e| e.to_string())?,
        );
    }

    let started = Instant::now();
    let until = started + Duration::from_secs_f64(o.seconds);
    let warmup_at = started + Duration::from_secs_f64(o.seconds * o.warmup);
    let interval = Duration::from_secs_f64(o.interval);
    let mut summary = Summary {
        start_secs,
        readers: n,
        warmup: o.warmup,
        ..Summary::default()
    };
    // Each interval's round trips, kept for the first and last windows' p99.
    let mut kept: Vec<(f64, Vec<u64>)> = Vec::new();
    let mut warmed = false;
    let mut next = started + interval;
    let mut last_tick = started;
    loop {
        let now = Instant::now();
        if !warmed && now >= warmup_at {
            summary.after_warmup = quiescent(&shared, n, pid);
            shared.set_phase(Phase::Run);
            warmed = true;
            continue;
        }
        let wake = if warmed { next } else { next.min(warmup_at) };
        if now < wake {
            std::thread::sleep(wake - now);
            continue;
        }
        let (figures, exited) = match service.0.try_wait() {
            Ok(None) => (proc_figures(pid), None),
            other => (None, Some(format!("{other:?}"))),
        };
        if let Some(status) = exited {
            shared.error(
                "vccid",
                Fail {
                    kind: "vccid",
                    msg: format!("exited: {status}"),
                },
            );
        }
        let stats = std::mem::take(&mut *lock(&shared.stats));
        let mut l = stats.latencies;
        l.sort_unstable();
        let (rss_kib, threads_now, fds) = figures.unwrap_or_default();
        let sample = Sample {
            t: started.elapsed().as_secs_f64(),
            secs: now.duration_since(last_tick).as_secs_f64(),
            rss_kib,
            fds,
            threads: threads_now,
            apdus: l.len() as u64,
            p50_us: percentile(&l, 50.0),
            p99_us: percentile(&l, 99.0),
            max_us: l.last().map_or(0.0, |m| *m as f64 / 1000.0),
            errors: stats.errors,
            signatures: stats.signatures,
            ejects: stats.ejects,
            reconnects: stats.reconnects,
            load1: std::fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|l| l.split_whitespace().next()?.parse().ok())
                .unwrap_or(0.0),
        };
        summary.apdus += sample.apdus;
        summary.signatures += stats.signatures;
        summary.ejects += stats.ejects;
        summary.reconnects += stats.reconnects;
        for (k, (count, first)) in stats.by_kind {
            let e = summary.errors.entry(k).or_insert((0, first));
            e.0 += count;
        }
        last_tick = now;
        on_sample(&sample);
        summary.samples.push(sample.clone());
        if now >= warmup_at {
            kept.push((sample.t, l));
        }
        if now >= until || service.0.try_wait().map_or(true, |s| s.is_some()) {
            break;
        }
        next = (next + interval).min(until).max(Instant::now());
    }
    summary.at_end = quiescent(&shared, n, pid);
    shared.set_phase(Phase::Stop);
    for t in threads {
        let _ = t.join();
    }
    // What the hosts counted while parking and stopping.
    let stats = std::mem::take(&mut *lock(&shared.stats));
    for (k, (count, first)) in stats.by_kind {
        let e = summary.errors.entry(k).or_insert((0, first));
        e.0 += count;
    }
    summary.seconds = started.elapsed().as_secs_f64();
    // The p99 of the first and the last tenth of the run after the warm-up.
    if let (Some(first), Some(last)) = (kept.first(), kept.last()) {
        let span = (last.0 - first.0).max(o.interval);
        let window = |from: f64, to: f64| {
            let mut all: Vec<u64> = kept
                .iter()
                .filter(|(t, _)| *t >= from && *t <= to)
                .flat_map(|(_, l)| l.iter().copied())
                .collect();
            all.sort_unstable();
            percentile(&all, 99.0)
        };
        summary.p99_first_us = window(first.0, first.0 + span / 10.0);
        summary.p99_last_us = window(last.0 - span / 10.0, last.0);
    }
    drop(service);
    Ok(summary)
}
