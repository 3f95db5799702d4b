//! No PIN, PUK or management-key bytes in `vccid -vv` logs, in `--pcap` captures (unless
//! `--pcap-secrets`), or in error messages (issue #13, point 5), across CAC and PIV VERIFY,
//! CHANGE REFERENCE DATA, RESET RETRY COUNTER, SET MANAGEMENT KEY and GENERAL AUTHENTICATE
//! with the management key; while `-vv` shows one decoded line per APDU (point 6).
//!
//! Every secret is a distinctive string, looked for in every rendering a log could give it:
//! ASCII, hex with and without spaces, upper and lower case.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use testkit::vhci::{self, Importer, Ret};
use testkit::{text, CommandExt, PrivatePcscd, OPENSC_PKCS11};

const VCCID: &str = env!("CARGO_BIN_EXE_vccid");
const PIN: &str = "31415926";
const NEW_PIN: &str = "16180339";
const PUK: &str = "27182818";
const UNBLOCKED_PIN: &str = "14142135";
const DEFAULT_MGMT: &str = "010203040506070801020304050607080102030405060708";
const NEW_MGMT: &str = "A1B2C3D4E5F60718293A4B5C6D7E8F90A1B2C3D4E5F60718";

/// Every way a log could render `bytes`.
fn renderings(bytes: &[u8]) -> Vec<String> {
    let upper: Vec<String> = bytes.iter().map(|b| format!("{b:02X}")).collect();
    let lower: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut v = vec![
        upper.concat(),
        lower.concat(),
        upper.join(" "),
        lower.join(" "),
        // Rust Debug of a byte slice: [49, 52, ...] and [0x31, 0x34, ...].
        format!("{bytes:?}"),
        format!("{bytes:02x?}"),
    ];
    if let Ok(s) = std::str::from_utf8(bytes) {
        if s.chars().all(|c| c.is_ascii_graphic()) {
            v.push(s.to_string());
        }
    }
    v
}

fn hex_bytes(s: &str) -> Vec<u8> {
    apdu::hex::h(s)
}

/// Panics naming the secret and the rendering found in `log`.
fn assert_absent(log: &str, what: &str, secret: &[u8]) {
    for r in renderings(secret) {
        assert!(
            !log.contains(&r),
            "{what} appears in the log as {r:?}:\n{log}"
        );
    }
}

fn tool(pcscd: &PrivatePcscd, program: &str, args: &[&str]) -> Output {
    pcscd
        .command(program)
        .args(args)
        .output_within(testkit::TOOL_TIMEOUT)
        .expect("tool runs")
}

fn start_vccid(card: &str) -> PrivatePcscd {
    let mut pcscd = PrivatePcscd::start().expect("private pcscd starts");
    let data = pcscd.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut cmd = pcscd.command(VCCID);
    cmd.args([
        "-vv",
        "--vpcd",
        "127.0.0.1:35963",
        "--card",
        card,
        "--data-dir",
    ])
    .arg(&data);
    pcscd.spawn("vccid", cmd).expect("vccid starts");
    if let Err(e) = pcscd.wait_card(0, Duration::from_secs(20)) {
        panic!("{e}\nvccid log:\n{}", pcscd.child_log("vccid"));
    }
    pcscd
}

#[test]
fn cac_trace_log_shows_decoded_apdus_and_no_pin() {
    let pcscd = start_vccid(&format!("emulated,pin={PIN}"));
    // VERIFY through OpenSC's cac driver: a login, and a signature that needs it.
    let o = tool(
        &pcscd,
        "pkcs11-tool",
        &["--module", OPENSC_PKCS11, "--login", "--pin", PIN, "-O"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let cert = pcscd.dir.path().join("data/default/cert1.crt.pem");
    pcscd
        .sign_and_verify("0001", PIN, &cert)
        .unwrap_or_else(|e| panic!("{e}\n{}", pcscd.child_log("vccid")));
    // A wrong PIN: the decoded line says so (libcacard's CAC counts tries).
    let o = tool(
        &pcscd,
        "pkcs11-tool",
        &[
            "--module",
            OPENSC_PKCS11,
            "--login",
            "--pin",
            "99999999",
            "-O",
        ],
    );
    assert!(!o.status.success(), "{}", text(&o));
    let log = pcscd.child_log("vccid");
    assert_absent(&log, "the PIN", PIN.as_bytes());
    assert_absent(&log, "the wrong PIN", b"99999999");
    for decoded in [
        "SELECT CAC PKI 0 → ",
        "VERIFY PIN [8 bytes redacted] → 9000",
        "SIGN/DECRYPT",
        "→ 63C",
    ] {
        assert!(log.contains(decoded), "{decoded:?} not in the log:\n{log}");
    }
    // One line per APDU, with its time.
    let verify = log
        .lines()
        .find(|l| l.contains("VERIFY PIN [8 bytes redacted] → 9000"))
        .unwrap_or_default();
    assert!(
        verify.contains(" ms)") && verify.contains("TRACE"),
        "{verify}"
    );
}

#[test]
fn piv_trace_log_has_no_pin_puk_or_management_key() {
    let pcscd = start_vccid(&format!("emulated,profile=piv,pin={PIN},puk={PUK}"));
    let ypt = |args: &[&str]| {
        let mut all = vec!["-r", "Virtual PCD"];
        all.extend_from_slice(args);
        let o = tool(&pcscd, "yubico-piv-tool", &all);
        assert!(
            o.status.success(),
            "yubico-piv-tool {args:?}: {}\n{}",
            text(&o),
            pcscd.child_log("vccid")
        );
    };
    // VERIFY, CHANGE REFERENCE DATA, RESET RETRY COUNTER.
    ypt(&["-a", "verify-pin", "-P", PIN]);
    ypt(&["-a", "change-pin", "-P", PIN, "-N", NEW_PIN]);
    ypt(&["-a", "unblock-pin", "-P", PUK, "-N", UNBLOCKED_PIN]);
    // GENERAL AUTHENTICATE 9B (witness, challenge, response) and PUT DATA.
    let key = format!("--key={DEFAULT_MGMT}");
    ypt(&[&key, "-a", "set-chuid"]);
    // SET MANAGEMENT KEY carries the new key itself.
    ypt(&[&key, "-a", "set-mgm-key", "-n", NEW_MGMT]);
    // VERIFY through OpenSC's PIV driver too.
    let o = tool(
        &pcscd,
        "pkcs11-tool",
        &[
            "--module",
            OPENSC_PKCS11,
            "--login",
            "--pin",
            UNBLOCKED_PIN,
            "-O",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let log = pcscd.child_log("vccid");
    for (what, secret) in [
        ("the PIN", PIN.as_bytes().to_vec()),
        ("the new PIN", NEW_PIN.as_bytes().to_vec()),
        ("the PUK", PUK.as_bytes().to_vec()),
        ("the unblocked PIN", UNBLOCKED_PIN.as_bytes().to_vec()),
        ("the default management key", hex_bytes(DEFAULT_MGMT)),
        ("the new management key", hex_bytes(NEW_MGMT)),
    ] {
        assert_absent(&log, what, &secret);
    }
    for decoded in [
        "SELECT PIV → ",
        "VERIFY PIN [8 bytes redacted] → 9000",
        "CHANGE REFERENCE DATA PIN [16 bytes redacted] → 9000",
        "RESET RETRY COUNTER PIN [16 bytes redacted] → 9000",
        "GENERAL AUTHENTICATE 9B 3DES [",
        "SET MANAGEMENT KEY [",
        "PUT DATA 5FC102 (CHUID)",
    ] {
        assert!(log.contains(decoded), "{decoded:?} not in the log:\n{log}");
    }
}

#[test]
fn error_messages_do_not_echo_secrets() {
    let data = tempfile::tempdir().unwrap();
    let long_pin = "314159265358";
    for card in [
        // Too long: refused by the card's settings.
        format!("emulated,pin={long_pin}"),
        format!("emulated,profile=piv,puk={long_pin}"),
        // A specification error elsewhere, with the PIN in the specification quoted.
        format!("emulated,pin={PIN},bogus=1"),
        // A PKCS#11 URI error, with a pin-value in the URI.
        format!("emulated,backend=pkcs11,uri=pkcs11:token=x?pin-value={PIN}&bogus=1"),
    ] {
        let o = Command::new(VCCID)
            .args(["--usbip", "127.0.0.1:1", "--card", &card, "--data-dir"])
            .arg(data.path())
            .stdin(Stdio::null())
            .output_within(Duration::from_secs(60))
            .expect("vccid runs");
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "{card}: {err}");
        assert!(err.contains("error"), "{card}: {err}");
        assert_absent(&err, "the PIN", long_pin.as_bytes());
        assert_absent(&err, "the PIN", PIN.as_bytes());
    }
}

/// `vccid --usbip` with a capture file, driven through testkit's vhci side.
struct Usbip {
    child: Child,
    addr: SocketAddr,
    log: tempfile::NamedTempFile,
    _data: tempfile::TempDir,
}

impl Drop for Usbip {
    fn drop(&mut self) {
        if let Err(e) = testkit::kill(&mut self.child, "vccid --usbip --pcap") {
            eprintln!("{e}");
        }
    }
}

impl Usbip {
    fn start(pcap: &std::path::Path, secrets: bool) -> Usbip {
        let data = tempfile::tempdir().unwrap();
        let port = testkit::free_port().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = Command::new(VCCID);
        cmd.args(["--usbip", &addr.to_string(), "--pcap"])
            .arg(pcap)
            .args(["--card", &format!("emulated,profile=piv,pin={PIN}")])
            .arg("--data-dir")
            .arg(data.path());
        if secrets {
            cmd.arg("--pcap-secrets");
        }
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        let mut s = Usbip {
            child,
            addr,
            log,
            _data: data,
        };
        let listening = format!("usbip: exporting the reader addr={addr} ");
        let ready = testkit::wait_for("vccid --usbip listening", Duration::from_secs(30), || {
            matches!(s.child.try_wait(), Ok(None))
                && s.log().contains(&listening)
                && TcpStream::connect(addr).is_ok()
        });
        if let Err(e) = ready {
            panic!("{e}\nvccid log:\n{}", s.log());
        }
        s
    }
    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

fn recv(imp: &mut Importer) -> Ret {
    imp.recv(Duration::from_secs(10))
        .unwrap()
        .expect("a reply within 10 s")
}

fn ccid(ty: u8, seq: u8, data: &[u8]) -> Vec<u8> {
    let mut v = vec![ty];
    v.extend_from_slice(&(data.len() as u32).to_le_bytes());
    v.extend_from_slice(&[0, seq, 0, 0, 0]);
    v.extend_from_slice(data);
    v
}

/// One CCID message out, its reply in (the bulk IN submitted first, as libccid does).
fn exchange(imp: &mut Importer, msg: &[u8]) -> Vec<u8> {
    let bulk = imp.submit(2, true, [0; 8], &[], 65546).unwrap();
    imp.submit(3, false, [0; 8], msg, 0).unwrap();
    let mut data = None;
    for _ in 0..2 {
        let r = recv(imp);
        if r.seqnum == bulk {
            data = Some(r.data);
        }
    }
    data.expect("the bulk IN's answer")
}

/// Runs VERIFY with the PIN and a management-key witness request through the USB/IP reader;
/// returns the capture and the witness the card sent.
fn captured_session(secrets: bool) -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("usb.pcap");
    let s = Usbip::start(&pcap, secrets);
    let (_, mut imp) = vhci::import(s.addr, "1-1")
        .unwrap_or_else(|e| panic!("{e}\nvccid log:\n{}", s.log()))
        .expect("the import is accepted");
    // Enumeration as Linux does it, then SET_CONFIGURATION.
    imp.control([0x80, 6, 0, 1, 0, 0, 64, 0], &[]).unwrap();
    recv(&mut imp);
    imp.control([0x80, 6, 0, 2, 0, 0, 0xFF, 0], &[]).unwrap();
    recv(&mut imp);
    imp.control([0, 9, 1, 0, 0, 0, 0, 0], &[]).unwrap();
    recv(&mut imp);
    let atr = exchange(&mut imp, &ccid(0x62, 1, &[]));
    assert_eq!(atr[0], 0x80, "PowerOn answered by a DataBlock");
    let select = exchange(
        &mut imp,
        &ccid(0x6F, 2, &hex_bytes("00 A4 04 00 05 A0 00 00 03 08")),
    );
    assert!(select.len() > 12, "SELECT PIV answered: {select:02X?}");
    let mut verify = hex_bytes("00 20 00 80 08");
    verify.extend_from_slice(PIN.as_bytes());
    let r = exchange(&mut imp, &ccid(0x6F, 3, &verify));
    assert_eq!(&r[r.len() - 2..], &[0x90, 0x00], "VERIFY accepted");
    // GENERAL AUTHENTICATE 9B: the card's witness (SP 800-73-4 Part 2 §3.2.4).
    let r = exchange(
        &mut imp,
        &ccid(0x6F, 4, &hex_bytes("00 87 03 9B 04 7C 02 80 00 00")),
    );
    let resp = &r[10..];
    assert_eq!(&resp[resp.len() - 2..], &[0x90, 0x00], "witness: {r:02X?}");
    assert_eq!(&resp[..4], &[0x7C, 0x0A, 0x80, 0x08], "witness: {r:02X?}");
    let witness = resp[4..12].to_vec();
    // Every record is flushed as it is written; stop vccid before reading all the same.
    drop(imp);
    drop(s);
    (std::fs::read(&pcap).expect("the capture exists"), witness)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn pcap_capture_blanks_secrets_unless_asked() {
    let (blanked, witness) = captured_session(false);
    assert!(
        contains(
            &blanked,
            &hex_bytes("00 20 00 80 08 00 00 00 00 00 00 00 00")
        ),
        "the VERIFY is there, its data zeroed"
    );
    assert!(
        !contains(&blanked, PIN.as_bytes()),
        "the PIN is in the capture"
    );
    assert!(
        !contains(&blanked, &witness),
        "the management key's witness is in the capture"
    );
    // With --pcap-secrets the same session keeps them: the checks above can fail.
    let (kept, witness) = captured_session(true);
    assert!(
        contains(&kept, PIN.as_bytes()),
        "--pcap-secrets keeps the PIN"
    );
    assert!(
        contains(&kept, &witness),
        "--pcap-secrets keeps the witness"
    );
    assert_eq!(
        blanked.len(),
        kept.len(),
        "blanking keeps every length (timestamps aside, the files align)"
    );
}
