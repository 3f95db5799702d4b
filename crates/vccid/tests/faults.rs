//! Every link through testkit's fault proxy (issue #17): usbredir (listening on a Unix socket,
//! connecting out, and under TLS with the proxy below the TLS layer), USB/IP, vpcd, and
//! VSCard with faults both ways. Each test runs 100 cycles of "fault, then recover", the
//! faults rotating through delay, bytes split one per write, a clean close mid-message, a
//! stall mid-message and a reset, in both traffic directions; each fault that ends a
//! connection is followed by one on the next connection's first messages. In every cycle
//! nothing may hang longer than the link's timeout, a fault that leaves the connection up must
//! not disturb the exchange it hits, the next exchange after a fault that ends the connection
//! must answer correctly once the host has reconnected, and the card's state must be intact:
//! the PIV card's CHUID read before the cycles, its PIN retry counter (one wrong VERIFY before
//! the cycles, and none after) and its PIN.
//!
//! The USB hosts are testkit's mock hosts (`usbhost`, as the soak and `examples/scale_hosts.rs`
//! have them too) over the real sockets: QEMU's usb-redir as it drives the reader on xHCI
//! (with the `usbredir` crate's codec) and the kernel's vhci-hcd. QEMU itself would cost a
//! guest boot, and its chardev reconnects at best once a second (`reconnect=1`, QEMU 7.2's
//! unit), so 100 reconnections alone would take minutes; the mock host reconnects at once, as
//! QEMU does the moment its timer fires. The vpcd link is the real pcscd with
//! vsmartcard's vpcd in a private namespace, driven by `scriptor` (pcsc-tools).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testkit::fault::{Direction, Endpoint, Fault, FaultProxy};
use testkit::usbhost::{self, Bulk, Redir, Usbip};

const VCCID: &str = env!("CARGO_BIN_EXE_vccid");
const VSCCLIENT: &str = env!("CARGO_BIN_EXE_vscclient");

/// Fault-then-recover cycles per link.
const CYCLES: usize = 100;
/// The links' timeout, and so the bound on any wait here: USB/IP's operation timeout
/// (`usbip::server::OP_TIMEOUT`) and a TLS handshake's (`link::tls::HANDSHAKE_TIMEOUT`) are
/// both 10 s; a host blocked longer than that on a link that should have answered or failed
/// has hung.
const LINK_TIMEOUT: Duration = Duration::from_secs(10);
/// A delay or stall of the proxy: well within the link's timeout, so it must be ridden out.
const HOLD: Duration = Duration::from_millis(100);

/// The card of every test: a PIV card made in memory (nothing written), so its state is
/// the running process's alone.
fn piv_card(name: &str) -> String {
    format!("emulated,profile=piv,backend=generated,name={name},ephemeral=on")
}

/// SELECT of the PIV application (SP 800-73-4 part 2, 3.1.1).
const SELECT_PIV: &[u8] = &[
    0x00, 0xA4, 0x04, 0x00, 0x09, 0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00, 0x00,
];
/// GET DATA of the CHUID (5FC102; part 2, 3.1.2).
const GET_CHUID: &[u8] = &[
    0x00, 0xCB, 0x3F, 0xFF, 0x05, 0x5C, 0x03, 0x5F, 0xC1, 0x02, 0x00,
];
/// VERIFY with no data: the PIN's status, tries left (part 2, 3.2.1).
const PIN_STATUS: &[u8] = &[0x00, 0x20, 0x00, 0x80];
/// VERIFY with a wrong PIN.
const WRONG_PIN: &[u8] = &[
    0x00, 0x20, 0x00, 0x80, 0x08, 0x39, 0x39, 0x39, 0x39, 0x39, 0x39, 0xFF, 0xFF,
];
/// VERIFY with the card's PIN (123456, padded with FF).
const RIGHT_PIN: &[u8] = &[
    0x00, 0x20, 0x00, 0x80, 0x08, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0xFF, 0xFF,
];

/// Cycle `i`'s fault: the five kinds in turn, each kind in both directions in turn; drops
/// cut the message after `min_drop` to `min_drop + 6` bytes.
fn schedule(i: usize, min_drop: usize) -> (Direction, Fault) {
    let dir = if (i / 5).is_multiple_of(2) {
        Direction::ToUpstream
    } else {
        Direction::ToClient
    };
    let fault = match i % 5 {
        0 => Fault::Delay(HOLD),
        1 => Fault::SplitBytes,
        2 => Fault::DropMidMessage {
            after_bytes: min_drop + i % 7,
        },
        3 => Fault::Stall(HOLD),
        _ => Fault::Reset,
    };
    (dir, fault)
}

/// Why an exchange did not answer as it should.
#[derive(Debug)]
#[allow(dead_code)] // The texts are read through Debug, in the failure messages.
enum Failure {
    /// Nothing within the link's timeout: a hang, always a failure of the test.
    Hang(String),
    /// The link (or the card behind it) went away: what a fault that ends the connection
    /// causes, and the host recovers from.
    Broken(String),
    /// An answer, but a wrong one: always a failure of the test.
    Wrong(String),
}

type R<T> = Result<T, Failure>;

/// A host's way to the card.
trait Link {
    /// Makes the link usable after a failure (or at the start): reconnects if it must and
    /// powers the card on.
    fn recover(&mut self) -> R<()>;
    /// APDUs in, their responses (status word last) out.
    fn exchange(&mut self, apdus: &[&[u8]]) -> R<Vec<Vec<u8>>>;
}

fn sw(r: &[u8]) -> u16 {
    match r {
        [.., a, b] => u16::from_be_bytes([*a, *b]),
        _ => 0,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

/// What the card holds before the cycles and must hold after each.
struct CardState {
    chuid: Vec<u8>,
}

/// SELECT, GET DATA CHUID, the PIN's status: the card must be the same card, in the same
/// state. 6F00 is the passthru card's answer when its client is gone: the link is broken.
fn check(link: &mut dyn Link, want: &CardState) -> R<()> {
    let r = link.exchange(&[SELECT_PIV, GET_CHUID, PIN_STATUS])?;
    let [select, chuid, pin] = &r[..] else {
        return Err(Failure::Wrong(format!("{} responses to 3 APDUs", r.len())));
    };
    if [select, chuid, pin].iter().any(|r| sw(r) == 0x6F00) {
        return Err(Failure::Broken("6F00: the card's link failed".into()));
    }
    if sw(select) != 0x9000 {
        return Err(Failure::Wrong(format!("SELECT PIV: {}", hex(select))));
    }
    if *chuid != want.chuid {
        return Err(Failure::Wrong(format!(
            "the CHUID changed: {} (was {})",
            hex(chuid),
            hex(&want.chuid)
        )));
    }
    if sw(pin) != 0x63C2 {
        return Err(Failure::Wrong(format!(
            "PIN status {:04X}, not 63C2 (2 tries left after the one wrong PIN)",
            sw(pin)
        )));
    }
    Ok(())
}

/// Recovers `link` until a check passes, within the link's timeout: a link that cannot come
/// back in that time has hung.
fn recover(link: &mut dyn Link, want: &CardState) -> R<()> {
    let deadline = Instant::now() + LINK_TIMEOUT;
    loop {
        let r = link.recover().and_then(|()| check(link, want));
        match r {
            Ok(()) => return Ok(()),
            Err(Failure::Broken(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(Failure::Broken(why)) => {
                return Err(Failure::Hang(format!(
                    "not recovered within {LINK_TIMEOUT:?}: {why}"
                )))
            }
            Err(e) => return Err(e),
        }
    }
}

/// The cycles. A fault that leaves the connection up must not disturb the exchange, and after
/// one that ends it the host recovers and the card answers correctly within the link's
/// timeout. With `strict` (our programs at both ends of the link), a fault that ends the
/// connection must also fail the exchange it hits, and nothing else. Without (vpcd), what
/// the hit exchange gets is not judged: the fault may meet pcscd's own requests to vpcd
/// instead of the test's (its presence poll, a power-off after the exchange), so the link may
/// break just after an exchange that passed; and vpcd hands a response cut short by the drop
/// to the application as if whole (vsmartcard's `recvFromVICC` returns the short count of
/// its `MSG_WAITALL` read as the length), so the hit exchange may see a wrong answer.
fn cycles(
    proxy: &FaultProxy,
    link: &mut dyn Link,
    strict: bool,
    min_drop: usize,
    log: &dyn Fn() -> String,
) {
    let fail = |what: String| -> ! { panic!("{what}\n--- log:\n{}", log()) };
    // The card's state before the cycles: its CHUID, and one wrong PIN (3 tries → 2).
    let deadline = Instant::now() + LINK_TIMEOUT;
    let chuid = loop {
        let r = link
            .recover()
            .and_then(|()| link.exchange(&[SELECT_PIV, GET_CHUID, WRONG_PIN]));
        match r {
            Ok(r) if sw(&r[1]) == 0x9000 && sw(&r[2]) == 0x63C2 => break r[1].clone(),
            Ok(r) => fail(format!("the card's first answers: {:02X?}", r)),
            Err(Failure::Broken(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => fail(format!("the link never came up: {e:?}")),
        }
    };
    let want = CardState { chuid };
    let (mut broken, mut setups) = (0, 0);
    for i in 0..CYCLES {
        let (dir, fault) = schedule(i, min_drop);
        proxy.inject(dir, fault);
        let hit = check(link, &want);
        if !proxy.wait_applied(i + 1 + setups, LINK_TIMEOUT) {
            fail(format!(
                "cycle {i}: {fault:?} {dir:?} never met any traffic"
            ));
        }
        match hit {
            Err(Failure::Hang(e)) => fail(format!("cycle {i}: {fault:?} {dir:?}: {e}")),
            Ok(()) if strict && fault.ends_connection() => fail(format!(
                "cycle {i}: {fault:?} {dir:?} did not break the exchange"
            )),
            Err(Failure::Broken(_)) if fault.ends_connection() => broken += 1,
            Ok(()) => {}
            _ if !strict && fault.ends_connection() => {}
            Err(e) => fail(format!("cycle {i}: {fault:?} {dir:?}: {e:?}")),
        }
        if fault.ends_connection() {
            // The new connection meets a fault too, in its first messages (a TLS handshake,
            // usbredir's hellos, USB/IP's import, VSCard's Init, ReaderAdd and ATR, vpcd's
            // first GET ATR): the kinds in turn, both ways. One that ends it costs the host
            // another try.
            let (sdir, sfault) = schedule(setups, min_drop);
            setups += 1;
            proxy.inject(sdir, sfault);
            if let Err(e) = recover(link, &want) {
                fail(format!(
                    "cycle {i}: after {fault:?} {dir:?}, with {sfault:?} {sdir:?} on the \
                     next connection: {e:?}"
                ));
            }
            if !proxy.wait_applied(i + 1 + setups, LINK_TIMEOUT) {
                fail(format!(
                    "cycle {i}: {sfault:?} {sdir:?} met no new connection"
                ));
            }
        }
    }
    assert_eq!(proxy.pending(), 0, "every fault was applied");
    // Each drop and reset ended the connection it hit, whatever traffic that was, and the
    // link came back on a new one (and again after each setup fault that ended one).
    assert!(
        proxy.accepted() > CYCLES * 2 / 5 + setups * 2 / 5,
        "{} connections through the proxy",
        proxy.accepted()
    );
    if strict {
        assert_eq!(
            broken,
            CYCLES * 2 / 5,
            "the drops and resets broke the link"
        );
    }
    // The PIN itself is intact: the right one verifies, and the counter is back to 3.
    let r = link
        .exchange(&[SELECT_PIV, RIGHT_PIN, PIN_STATUS])
        .unwrap_or_else(|e| fail(format!("after the cycles: {e:?}")));
    assert_eq!(
        (sw(&r[1]), sw(&r[2])),
        (0x9000, 0x9000),
        "VERIFY with the right PIN after the cycles: {r:02X?}"
    );
}

// ---- The USB side: CCID over the bulk endpoints, whatever carries them. ----

/// The mock hosts here: the link's timeout, and an import tried once (the cycles' recovery
/// tries again, within its own deadline).
const HOST: usbhost::Options = usbhost::Options {
    name: "vccid faults test",
    timeout: LINK_TIMEOUT,
    import_retry: Duration::ZERO,
};

/// The host's three kinds of failure are this test's three.
impl From<usbhost::Error> for Failure {
    fn from(e: usbhost::Error) -> Failure {
        match e.kind {
            usbhost::Kind::Timeout => Failure::Hang(e.msg),
            usbhost::Kind::Broken => Failure::Broken(e.msg),
            usbhost::Kind::Wrong => Failure::Wrong(e.msg),
        }
    }
}

/// One CCID command and its answer (time extensions waited through); a failed command
/// (no card, card mute: CCID 6.2.6 bmCommandStatus 1) is a broken link.
fn ccid(host: &mut dyn Bulk, kind: u8, seq: u8, body: &[u8]) -> R<Vec<u8>> {
    let r = usbhost::ccid(host, kind, seq, body)?;
    if r[7] >> 6 != 0 {
        return Err(Failure::Broken(format!(
            "CCID command {kind:02X} failed: status {:02X}, error {:02X}",
            r[7], r[8]
        )));
    }
    Ok(r)
}

/// A USB host on a connection made by `connect`, with the card powered on.
struct UsbLink {
    connect: Box<dyn FnMut() -> usbhost::Result<Box<dyn Bulk>>>,
    bulk: Option<Box<dyn Bulk>>,
    seq: u8,
}

impl UsbLink {
    fn new<B: Bulk + 'static>(
        mut connect: impl FnMut() -> usbhost::Result<B> + 'static,
    ) -> UsbLink {
        UsbLink {
            connect: Box::new(move || Ok(Box::new(connect()?) as Box<dyn Bulk>)),
            bulk: None,
            seq: 0,
        }
    }

    fn power_on(&mut self) -> R<()> {
        let bulk = self
            .bulk
            .as_mut()
            .ok_or(Failure::Broken("no link".into()))?;
        self.seq = self.seq.wrapping_add(1);
        let atr = ccid(&mut **bulk, 0x62, self.seq, &[])?;
        if atr.len() <= 10 {
            return Err(Failure::Wrong(format!("no ATR: {atr:02X?}")));
        }
        Ok(())
    }
}

impl Link for UsbLink {
    fn recover(&mut self) -> R<()> {
        // The USB link may be up and only the card gone (the VSCard test): power it on
        // again; a link that is down is made again.
        if self.bulk.is_some() {
            match self.power_on() {
                Ok(()) => return Ok(()),
                Err(Failure::Broken(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.bulk = None;
        self.bulk = Some((self.connect)()?);
        self.power_on()
    }

    fn exchange(&mut self, apdus: &[&[u8]]) -> R<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for a in apdus {
            let bulk = self
                .bulk
                .as_mut()
                .ok_or(Failure::Broken("no link".into()))?;
            self.seq = self.seq.wrapping_add(1);
            out.push(ccid(&mut **bulk, 0x6F, self.seq, a)?.split_off(10));
        }
        Ok(out)
    }
}

// ---- The programs under test. ----

/// A child process, killed and reaped on drop, with its log.
struct Program {
    child: Child,
    log: PathBuf,
    name: &'static str,
}

impl Program {
    fn start(name: &'static str, cmd: &mut Command, dir: &Path) -> Program {
        let log = dir.join(format!("{name}.log"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        Program { child, log, name }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for a line of its log; fails at once if the program exits.
    fn wait_log(&mut self, what: &str) {
        let r = testkit::wait_for(what, LINK_TIMEOUT * 3, || {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("{} exited ({st}):\n{}", self.name, self.log());
            }
            self.log().contains(what)
        });
        if let Err(e) = r {
            panic!("{}: {e}\n{}", self.name, self.log());
        }
    }

    /// Fails the test if the program died (a panic, an abort) during the cycles.
    fn assert_running(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!(
                "{} exited during the test ({st}):\n{}",
                self.name,
                self.log()
            );
        }
        let log = self.log();
        assert!(!log.contains("panicked"), "{} panicked:\n{log}", self.name);
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        if let Err(e) = testkit::kill(&mut self.child, self.name) {
            eprintln!("{e}");
        }
    }
}

/// vccid with `args`; an emulated card gets a data directory of the test's (a passthru card
/// keeps nothing, and vccid refuses one for it).
fn vccid(dir: &Path, args: &[&str]) -> Program {
    let mut cmd = Command::new(VCCID);
    cmd.args(args);
    if args.iter().any(|a| a.starts_with("emulated")) {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        cmd.arg("--data-dir").arg(&data);
    }
    Program::start("vccid", &mut cmd, dir)
}

fn tcp(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn any_port() -> Endpoint {
    Endpoint::Tcp(tcp(0))
}

fn proxy_addr(p: &FaultProxy) -> SocketAddr {
    match p.endpoint() {
        Endpoint::Tcp(a) => *a,
        Endpoint::Unix(p) => panic!("{} is not TCP", p.display()),
    }
}

#[test]
fn usbredir_on_a_unix_socket_recovers_from_100_faults() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("usbredir.sock");
    let mut v = vccid(
        dir.path(),
        &[
            "--usbredir",
            &format!("unix:{}", sock.display()),
            "--card",
            &piv_card("redir"),
        ],
    );
    v.wait_log("usbredir: waiting for QEMU");
    let front = dir.path().join("proxy.sock");
    let proxy = FaultProxy::start(&Endpoint::Unix(front.clone()), &Endpoint::Unix(sock)).unwrap();
    let to = link::Addr::Unix(front);
    let mut host = UsbLink::new(move || Redir::connect(&to, None, &HOST));
    cycles(&proxy, &mut host, true, 1, &|| v.log());
    v.assert_running();
}

#[test]
fn usbredir_connect_recovers_from_100_faults() {
    // The other way round: vccid connects (`--usbredir-connect`) to the host's listening
    // chardev, through the proxy, and comes back after every connection that ends.
    let dir = tempfile::tempdir().unwrap();
    let qemu = std::net::TcpListener::bind(tcp(0)).unwrap();
    qemu.set_nonblocking(true).unwrap();
    let proxy = FaultProxy::start(&any_port(), &Endpoint::Tcp(qemu.local_addr().unwrap())).unwrap();
    let mut v = vccid(
        dir.path(),
        &[
            "--usbredir-connect",
            &proxy_addr(&proxy).to_string(),
            "--card",
            &piv_card("connect"),
        ],
    );
    v.wait_log("usbredir: connecting to QEMU");
    let mut host = UsbLink::new(move || Redir::accept(&qemu, &HOST));
    cycles(&proxy, &mut host, true, 1, &|| v.log());
    v.assert_running();
}

#[test]
fn usbredir_under_tls_recovers_from_100_faults_below_the_tls_layer() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("tls");
    testkit::tls::vccid_init(VCCID, &creds).unwrap();
    let port = testkit::free_port().unwrap();
    let mut v = vccid(
        dir.path(),
        &[
            "--usbredir",
            &tcp(port).to_string(),
            "--tls",
            creds.to_str().unwrap(),
            "--card",
            &piv_card("tls"),
        ],
    );
    v.wait_log("usbredir: waiting for QEMU");
    let proxy = FaultProxy::start(&any_port(), &Endpoint::Tcp(tcp(port))).unwrap();
    let to = link::Addr::Tcp(proxy_addr(&proxy));
    let tls = link::TlsClient::new(
        &link::tls::TlsOptions {
            dir: creds,
            verify_peer: true,
            server_name: None,
            on_certificate: None,
        },
        &to,
    )
    .unwrap();
    let mut host = UsbLink::new(move || Redir::connect(&to, Some(&tls), &HOST));
    cycles(&proxy, &mut host, true, 1, &|| v.log());
    v.assert_running();
}

#[test]
fn usbip_recovers_from_100_faults() {
    let dir = tempfile::tempdir().unwrap();
    let port = testkit::free_port().unwrap();
    let mut v = vccid(
        dir.path(),
        &[
            "--usbip",
            &tcp(port).to_string(),
            "--card",
            &piv_card("usbip"),
        ],
    );
    v.wait_log("usbip: exporting the reader");
    let proxy = FaultProxy::start(&any_port(), &Endpoint::Tcp(tcp(port))).unwrap();
    let to = proxy_addr(&proxy);
    let mut host = UsbLink::new(move || Usbip::connect(to, "1-1", &HOST));
    cycles(&proxy, &mut host, true, 1, &|| v.log());
    v.assert_running();
}

#[test]
fn vscard_between_vscclient_and_the_passthru_card_recovers_from_100_faults_both_ways() {
    // vscclient (the card) → proxy → vccid --card passthru (the VSCard host), whose reader
    // a USB/IP host drives directly. A fault on the VSCard link that ends it takes the card
    // out of the reader (the host's command fails, CCID's ICC mute); vscclient reconnects
    // and inserts it again, and the host powers it on.
    let dir = tempfile::tempdir().unwrap();
    let (vs_port, usb_port) = (testkit::free_port().unwrap(), testkit::free_port().unwrap());
    let mut v = vccid(
        dir.path(),
        &[
            "--usbip",
            &tcp(usb_port).to_string(),
            "--card",
            &format!("passthru,listen={}", tcp(vs_port)),
        ],
    );
    v.wait_log("passthru card waiting for a VSCard client");
    v.wait_log("usbip: exporting the reader");
    let proxy = FaultProxy::start(&any_port(), &Endpoint::Tcp(tcp(vs_port))).unwrap();
    let client_data = dir.path().join("client");
    std::fs::create_dir_all(&client_data).unwrap();
    let mut client = Program::start(
        "vscclient",
        Command::new(VSCCLIENT)
            .args(["--card", &piv_card("vscard"), "--data-dir"])
            .arg(&client_data)
            .arg(proxy_addr(&proxy).to_string()),
        dir.path(),
    );
    let mut host = UsbLink::new(move || Usbip::connect(tcp(usb_port), "1-1", &HOST));
    cycles(&proxy, &mut host, true, 1, &|| {
        format!("vccid:\n{}\nvscclient:\n{}", v.log(), client.log())
    });
    v.assert_running();
    client.assert_running();
}

#[test]
fn vscclient_over_tls_reconnects_after_a_drop_right_after_the_handshake() {
    // Regression: vscclient took any TLS connection that closed before the host's first
    // answer for a refusal of its certificate, and exited. A TLS 1.3 client is done with its
    // handshake once it has sent its Finished, before the server has judged its certificate,
    // so a link that dropped right then (a network blip while vscclient reconnects) took the
    // card away for good.
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("tls");
    testkit::tls::vccid_init(VCCID, &creds).unwrap();
    let (vs_port, usb_port) = (testkit::free_port().unwrap(), testkit::free_port().unwrap());
    let mut v = vccid(
        dir.path(),
        &[
            "--usbip",
            &tcp(usb_port).to_string(),
            "--tls",
            creds.to_str().unwrap(),
            "--card",
            &format!("passthru,listen={}", tcp(vs_port)),
        ],
    );
    v.wait_log("usbip: exporting the reader");
    let proxy = FaultProxy::start(&any_port(), &Endpoint::Tcp(tcp(vs_port))).unwrap();
    let client_data = dir.path().join("client");
    std::fs::create_dir_all(&client_data).unwrap();
    let mut client = Program::start(
        "vscclient",
        Command::new(VSCCLIENT)
            .args(["--card", &piv_card("tls-drop"), "--tls"])
            .arg(&creds)
            .arg("--data-dir")
            .arg(&client_data)
            .arg(proxy_addr(&proxy).to_string()),
        dir.path(),
    );
    let mut host = UsbLink::new(move || Usbip::connect(tcp(usb_port), "1-1", &HOST));
    let (vlog, clog) = (v.log.clone(), client.log.clone());
    let log = || {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!("vccid:\n{}\nvscclient:\n{}", read(&vlog), read(&clog))
    };
    let selected = |host: &mut UsbLink| {
        host.recover()
            .and_then(|()| host.exchange(&[SELECT_PIV]))
            .is_ok_and(|r| sw(&r[0]) == 0x9000)
    };
    testkit::wait_for("the card over TLS", LINK_TIMEOUT, || selected(&mut host))
        .unwrap_or_else(|e| panic!("{e}\n{}", log()));
    let cuts = [
        Fault::Reset,
        Fault::DropMidMessage { after_bytes: 5 },
        Fault::DropMidMessage { after_bytes: 0 },
    ];
    for (n, cut) in cuts.into_iter().enumerate() {
        // The next response ends the connection; on the next one, the ClientHello passes
        // and the client's second flight (its certificate and Finished) is cut.
        proxy.inject(Direction::ToUpstream, Fault::Reset);
        proxy.inject_after(Direction::ToUpstream, 1, cut);
        let _ = host.exchange(&[SELECT_PIV]);
        // vscclient's backoff doubles after each connection the host never answered.
        testkit::wait_for("the card back", LINK_TIMEOUT, || selected(&mut host))
            .unwrap_or_else(|e| panic!("after {cut:?}: {e}\n{}", log()));
        assert_eq!(proxy.applied(), 2 * (n + 1), "{}", log());
        client.assert_running();
    }
}

/// The PC/SC side of the vpcd test: `scriptor` in the private pcscd's namespaces, one run per
/// exchange (it connects, sends, and disconnects).
struct Pcsc<'a> {
    pcscd: &'a testkit::PrivatePcscd,
    n: usize,
}

impl Link for Pcsc<'_> {
    fn recover(&mut self) -> R<()> {
        // pcscd itself follows vpcd's card: nothing to do but ask again.
        Ok(())
    }

    fn exchange(&mut self, apdus: &[&[u8]]) -> R<Vec<Vec<u8>>> {
        self.n += 1;
        let script = self.pcscd.dir.path().join(format!("apdus{}", self.n % 2));
        let text: String = apdus.iter().map(|a| format!("{}\n", hex(a))).collect();
        std::fs::write(&script, text).unwrap();
        let o = testkit::output(
            self.pcscd
                .command("scriptor")
                .args(["-r", "Virtual PCD 00 00"])
                .arg(&script),
            LINK_TIMEOUT,
            "scriptor",
        )
        .map_err(Failure::Hang)?;
        let out = testkit::text(&o);
        let responses = scriptor_responses(&out);
        if !o.status.success() || responses.len() != apdus.len() {
            return Err(Failure::Broken(format!("scriptor: {out}")));
        }
        Ok(responses)
    }
}

/// The responses in scriptor's output: "< " then the bytes, 16 to a line, the status word
/// last and its meaning after " : " ("< 90 00 : Normal processing.").
fn scriptor_responses(out: &str) -> Vec<Vec<u8>> {
    let mut responses = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    for line in out.lines() {
        let body = match (line.strip_prefix("< "), current.is_some()) {
            (Some(b), _) => {
                current = Some(Vec::new());
                b
            }
            (None, true) => line,
            (None, false) => continue,
        };
        let (bytes, end) = match body.split_once(" : ") {
            Some((b, _)) => (b, true),
            None => (body, false),
        };
        if let Some(r) = current.as_mut() {
            r.extend(
                bytes
                    .split_whitespace()
                    .filter_map(|b| u8::from_str_radix(b, 16).ok()),
            );
        }
        if end {
            responses.extend(current.take());
        }
    }
    responses
}

#[test]
fn vpcd_recovers_from_100_faults_through_pcscd() {
    let mut pcscd = testkit::PrivatePcscd::start().expect("private pcscd starts");
    // The proxy in pcscd's network namespace, between vccid and vpcd.
    let proxy =
        FaultProxy::start_in_netns(&pcscd.netns_path(), &any_port(), &Endpoint::Tcp(tcp(35963)))
            .unwrap();
    let data = pcscd.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut cmd = pcscd.command(VCCID);
    cmd.args([
        "--vpcd",
        &proxy_addr(&proxy).to_string(),
        "--card",
        &piv_card("vpcd"),
    ])
    .arg("--data-dir")
    .arg(&data);
    pcscd.spawn("vccid", cmd).unwrap();
    if let Err(e) = pcscd.wait_card(0, LINK_TIMEOUT * 3) {
        panic!("{e}\nvccid:\n{}", pcscd.child_log("vccid"));
    }
    let mut link = Pcsc {
        pcscd: &pcscd,
        n: 0,
    };
    // Drops cut vpcd's answers after their 2-byte length at the earliest: cut inside it,
    // vsmartcard 0.9's vpcd crashes pcscd (`recvFromVICC` compares the signed count of a
    // 1-byte read with `sizeof size`, unsigned, and returns 1 with no buffer, which
    // IFDHTransmitToICC then copies from).
    cycles(&proxy, &mut link, false, 2, &|| {
        format!(
            "vccid:\n{}\npcscd:\n{}",
            pcscd.child_log("vccid"),
            pcscd.log()
        )
    });
    let log = pcscd.child_log("vccid");
    assert!(!log.contains("panicked"), "{log}");
    assert!(pcscd.child_pid("vccid").is_some());
}
