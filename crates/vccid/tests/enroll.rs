//! Enrollment and PIN management at run time (issue #15), end to end: `vccid serve` with
//! generated cards in vpcd readers of a private pcscd, `vccid ctl card enroll` generating a key
//! and a request, an OpenSSL test CA signing it, the certificate put on the card, OpenSC's
//! PKCS#11 module signing with it and `openssl verify` accepting the chain; the same after a
//! restart of the service; a deleted certificate gone for OpenSC; a PIN blocked by wrong
//! VERIFYs reported as `PIN_BLOCKED`, then unblocked and set by `vccid ctl`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use testkit::{text, CommandExt};

mod common;
use common::{ctl, ctl_output, Served, VCCID};

/// What the enrollment tests ask of the service besides starting it (common.rs).
impl Served {
    /// Waits until pcscd has seen a card that went away from vpcd a moment ago (a restart, a
    /// card made anew) come back: the card stays away for vpcd's REMOVAL_GAP, and pcscd polls
    /// vpcd every 400 ms, so a reader may still show the card that went before it shows it
    /// gone.
    fn settle(&self, reader: usize) {
        std::thread::sleep(vpcd::client::REMOVAL_GAP + Duration::from_millis(800));
        self.wait_card(reader);
    }

    /// An OpenSC tool run inside the namespaces; its output. A card made anew, or served by
    /// a restarted service, is away from vpcd for a moment (vpcd's REMOVAL_GAP) that pcscd
    /// may see only after a tool connected: the tool is run again while it cannot connect.
    fn tool(&self, program: &str, args: &[&str]) -> Output {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let o = self
                .pcscd
                .command(program)
                .args(args)
                .output_within(testkit::TOOL_TIMEOUT)
                .unwrap_or_else(|e| panic!("{program}: {e}"));
            if !text(&o).contains("Failed to connect to card")
                || std::time::Instant::now() > deadline
            {
                return o;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The certificate OpenSC reads from key `id` of the card in `reader`, PEM.
    fn read_certificate(&self, reader: usize, id: &str) -> Option<String> {
        let out = self.dir.join(format!("read-{reader}-{id}.pem"));
        let _ = std::fs::remove_file(&out);
        let o = self.tool(
            "pkcs15-tool",
            &[
                "--reader",
                &reader.to_string(),
                "--read-certificate",
                id,
                "--output",
                out.to_str().unwrap(),
            ],
        );
        if !o.status.success() {
            return None;
        }
        std::fs::read_to_string(out).ok()
    }

    /// `pkcs15-tool --list-certificates` of reader `reader`.
    fn list_certificates(&self, reader: usize) -> String {
        let o = self.tool(
            "pkcs15-tool",
            &["--reader", &reader.to_string(), "--list-certificates"],
        );
        assert!(o.status.success(), "{}", text(&o));
        text(&o)
    }

    /// APDUs sent in one session with `opensc-tool -s`; its output.
    fn apdus(&self, reader: usize, apdus: &[&str]) -> String {
        let mut args = vec!["--reader".to_string(), reader.to_string()];
        for a in apdus {
            args.push("-s".into());
            args.push(a.to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        text(&self.tool("opensc-tool", &args))
    }
}

/// The DER of the first certificate in a PEM text (to compare certificates, not encodings).
fn der_of(pem: &str) -> Vec<u8> {
    let begin = "-----BEGIN CERTIFICATE-----";
    let end = "-----END CERTIFICATE-----";
    let b64: String = pem
        [pem.find(begin).expect("a certificate") + begin.len()..pem.find(end).unwrap()]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64_decode(&b64)
}

fn base64_decode(s: &str) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = A.iter().position(|x| *x == c).expect("base64") as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// Runs a program to success; its output.
fn run(cmd: &mut Command) -> String {
    text(&testkit::run(cmd).unwrap_or_else(|e| panic!("{e}")))
}

/// An OpenSSL test CA in `dir`: `ca.key`, `ca.pem` (P-256, CA:TRUE).
fn test_ca(dir: &Path) {
    run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=vccid test CA"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(dir.join("ca.key"))
        .arg("-out")
        .arg(dir.join("ca.pem")));
}

/// The CA of `dir` checks the request `csr` (its signature: proof of possession) and issues a
/// certificate for it, `name.pem`; its path.
fn issue(dir: &Path, csr: &str, name: &str) -> PathBuf {
    assert!(
        csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----\n"),
        "{csr}"
    );
    let req = dir.join(format!("{name}.csr"));
    std::fs::write(&req, csr).unwrap();
    let checked = run(Command::new("openssl")
        .args(["req", "-verify", "-noout", "-in"])
        .arg(&req));
    assert!(checked.contains("verify OK"), "{checked}");
    let ext = dir.join("ext.cnf");
    std::fs::write(
        &ext,
        "keyUsage = critical, digitalSignature\nextendedKeyUsage = clientAuth\n",
    )
    .unwrap();
    let cert = dir.join(format!("{name}.pem"));
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial", "-in"])
        .arg(&req)
        .arg("-CA")
        .arg(dir.join("ca.pem"))
        .arg("-CAkey")
        .arg(dir.join("ca.key"))
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&cert));
    cert
}

/// `openssl verify -CAfile ca.pem CERT` accepts the chain.
fn verify_chain(dir: &Path, cert: &Path) {
    let out = run(Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(dir.join("ca.pem"))
        .arg(cert));
    assert!(out.trim_end().ends_with(": OK"), "{out}");
}

const PIV: &str = r#"
[service]
state_dir = "{state}"
control = "{socket}"

[[card]]
id = "pivcard"
profile = "piv"

[[reader]]
id = "r0"
transport = "vpcd"
address = "127.0.0.1:35963"
cards = ["pivcard"]
"#;

#[test]
fn piv_slot_9a_gets_a_p256_key_and_a_ca_certificate_that_survive_a_restart() {
    let mut s = Served::start(PIV);
    s.wait_card(0);
    test_ca(&s.dir);
    let before = s
        .read_certificate(0, "01")
        .expect("9A's factory certificate");
    let csr = ctl(
        &s.socket,
        &[
            "card",
            "enroll",
            "pivcard",
            "9a",
            "--generate",
            "--algorithm",
            "p256",
            "--subject",
            "CN=enrolled piv,O=vccid test",
        ],
    );
    let cert = issue(&s.dir, &csr, "piv");
    let subject = run(Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
        .arg(&cert));
    assert!(
        subject.contains("CN=enrolled piv,O=vccid test"),
        "{subject}"
    );
    // A certificate for another key is refused, and the card keeps its slot as it is.
    let o = ctl_output(
        &s.socket,
        &[
            "card",
            "enroll",
            "pivcard",
            "9a",
            "--put-certificate",
            s.dir.join("ca.pem").to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("the certificate's public key is not the key of PIV slot 9A"),
        "{}",
        text(&o)
    );
    let put = ctl(
        &s.socket,
        &[
            "card",
            "enroll",
            "pivcard",
            "9a",
            "--put-certificate",
            cert.to_str().unwrap(),
        ],
    );
    assert_eq!(put, "CN=enrolled piv,O=vccid test in 9a of card pivcard\n");
    let issued = std::fs::read_to_string(&cert).unwrap();
    let read = s.read_certificate(0, "01").expect("9A's certificate");
    assert_eq!(der_of(&read), der_of(&issued));
    assert_ne!(der_of(&before), der_of(&issued));
    s.pcscd
        .sign_and_verify_with(
            testkit::OPENSC_PKCS11,
            "ECDSA-SHA256",
            "01",
            "123456",
            &cert,
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", s.log()));
    verify_chain(&s.dir, &cert);
    assert!(s.state.join("cards/pivcard/piv-state.json").exists());

    // After a restart: the same certificate and key.
    s.restart();
    s.settle(0);
    let read = s
        .read_certificate(0, "01")
        .expect("9A's certificate after the restart");
    assert_eq!(der_of(&read), der_of(&issued));
    s.pcscd
        .sign_and_verify_with(
            testkit::OPENSC_PKCS11,
            "ECDSA-SHA256",
            "01",
            "123456",
            &cert,
            &[],
        )
        .unwrap_or_else(|e| panic!("after the restart: {e}\n{}", s.log()));

    // Deleted by ctl: gone for OpenSC (the other slots' certificates stay), and after a
    // restart too.
    let listed = s.list_certificates(0);
    assert!(
        listed.contains("Certificate for PIV Authentication"),
        "{listed}"
    );
    assert_eq!(
        ctl(
            &s.socket,
            &["card", "enroll", "pivcard", "9a", "--delete-certificate"]
        ),
        "certificate deleted from 9a of card pivcard\n"
    );
    for round in ["now", "after a restart"] {
        let listed = s.list_certificates(0);
        assert!(
            !listed.contains("Certificate for PIV Authentication"),
            "{round}: {listed}"
        );
        assert!(
            listed.contains("Certificate for Digital Signature"),
            "{round}: {listed}"
        );
        assert!(s.read_certificate(0, "01").is_none(), "{round}");
        if round == "now" {
            s.restart();
            s.settle(0);
        }
    }
}

const CAC: &str = r#"
[service]
state_dir = "{state}"
control = "{socket}"

[[card]]
id = "caccard"

[[reader]]
id = "r0"
transport = "vpcd"
address = "127.0.0.1:35963"
cards = ["caccard"]
"#;

#[test]
fn cac_cert1_gets_an_rsa_2048_key_and_a_ca_certificate_that_survive_a_restart() {
    let mut s = Served::start(CAC);
    s.wait_card(0);
    test_ca(&s.dir);
    let card_dir = s.state.join("cards/caccard");
    let old_key = std::fs::read(card_dir.join("cert1.key.pem")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&ctl(
        &s.socket,
        &[
            "--json",
            "card",
            "enroll",
            "caccard",
            "cert1",
            "--generate",
            "--subject",
            "CN=enrolled cac",
        ],
    ))
    .unwrap();
    assert_eq!(v["algorithm"], "rsa2048", "{v}");
    assert_eq!(v["persisted"], true, "{v}");
    // Until the certificate comes, the card serves its old identity.
    assert!(card_dir.join("cert1.pending.key.pem").exists());
    assert_eq!(
        std::fs::read(card_dir.join("cert1.key.pem")).unwrap(),
        old_key
    );
    let cert = issue(&s.dir, v["csr"].as_str().unwrap(), "cac");
    let mut events = Command::new(VCCID)
        .args(["ctl", "--socket"])
        .arg(&s.socket)
        .arg("events")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(events.stdout.take().unwrap()).lines();
    std::thread::sleep(Duration::from_millis(300));
    ctl(
        &s.socket,
        &[
            "card",
            "enroll",
            "caccard",
            "cert1",
            "--put-certificate",
            cert.to_str().unwrap(),
        ],
    );
    // The card was made anew from its files: its host saw it go and come back.
    let seen: Vec<String> = lines
        .map_while(Result::ok)
        .take(2)
        .map(|l| {
            let e: serde_json::Value = serde_json::from_str(&l).unwrap();
            format!("{} {}", e["event"], e["data"]["card"])
        })
        .collect();
    testkit::kill(&mut events, "vccid ctl events").unwrap();
    assert_eq!(
        seen,
        [
            r#""CARD_EJECTED" "caccard""#,
            r#""CARD_INSERTED" "caccard""#
        ]
    );
    s.settle(0);
    let issued = std::fs::read_to_string(&cert).unwrap();
    let check = |s: &Served, when: &str| {
        let read = s
            .read_certificate(0, "0001")
            .unwrap_or_else(|| panic!("{when}: no certificate 0001\n{}", s.log()));
        assert_eq!(der_of(&read), der_of(&issued), "{when}");
        s.pcscd
            .sign_and_verify("0001", "12345678", &cert)
            .unwrap_or_else(|e| panic!("{when}: {e}\n{}", s.log()));
    };
    check(&s, "at once");
    verify_chain(&s.dir, &cert);
    // On disk: the new identity, the key private, nothing half-done left.
    let on_disk = std::fs::read_to_string(card_dir.join("cert1.crt.pem")).unwrap();
    assert_eq!(der_of(&on_disk), der_of(&issued));
    use std::os::unix::fs::PermissionsExt;
    let key = std::fs::metadata(card_dir.join("cert1.key.pem")).unwrap();
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    assert_ne!(
        std::fs::read(card_dir.join("cert1.key.pem")).unwrap(),
        old_key
    );
    for leftover in ["cert1.pending.key.pem", "cert1.enroll.pem"] {
        assert!(!card_dir.join(leftover).exists(), "{leftover}");
    }
    s.restart();
    s.settle(0);
    check(&s, "after a restart");
    // The CAC card's certificates are its applets: none is deleted.
    let o = ctl_output(
        &s.socket,
        &["card", "enroll", "caccard", "cert1", "--delete-certificate"],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("cannot be deleted"), "{}", text(&o));
    // The CAC card takes RSA only.
    let o = ctl_output(
        &s.socket,
        &[
            "card",
            "enroll",
            "caccard",
            "cert2",
            "--generate",
            "--algorithm",
            "p256",
        ],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("rsa2048"), "{}", text(&o));
}

const BOTH: &str = r#"
[service]
state_dir = "{state}"
control = "{socket}"

[[card]]
id = "pivcard"
profile = "piv"

[[card]]
id = "caccard"

[[reader]]
id = "r0"
transport = "vpcd"
address = "127.0.0.1:35963"
cards = ["pivcard"]

[[reader]]
id = "r1"
transport = "vpcd"
address = "127.0.0.1:35964"
cards = ["caccard"]
"#;

/// The next event whose name is `name`, as (event, card).
fn next_event(lines: &mut impl Iterator<Item = std::io::Result<String>>, name: &str) -> String {
    for l in lines.map_while(Result::ok) {
        let e: serde_json::Value = serde_json::from_str(&l).unwrap();
        if e["event"] == name {
            return e["data"]["card"].as_str().unwrap_or_default().to_string();
        }
    }
    panic!("no {name} event")
}

#[test]
fn wrong_pins_block_report_pin_blocked_and_ctl_unblocks_and_sets_pins() {
    let mut s = Served::start(BOTH);
    s.wait_card(0);
    s.wait_card(1);
    let mut events = Command::new(VCCID)
        .args(["ctl", "--socket"])
        .arg(&s.socket)
        .arg("events")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(events.stdout.take().unwrap()).lines();
    std::thread::sleep(Duration::from_millis(300));

    // PIV: three wrong VERIFYs.
    const SELECT_PIV: &str = "00 A4 04 00 09 A0 00 00 03 08 00 00 10 00 00";
    let wrong = "00 20 00 80 08 30 30 30 30 30 30 FF FF";
    let out = s.apdus(0, &[SELECT_PIV, wrong, wrong, wrong]);
    assert!(out.contains("SW1=0x63, SW2=0xC0"), "{out}");
    assert_eq!(next_event(&mut lines, "PIN_BLOCKED"), "pivcard");
    let right = "00 20 00 80 08 31 32 33 34 35 36 FF FF";
    let out = s.apdus(0, &[SELECT_PIV, right]);
    assert!(out.contains("SW1=0x69, SW2=0x83"), "blocked: {out}");
    // A wrong PUK counts, and says so; the right one unblocks.
    let o = ctl_output(
        &s.socket,
        &["card", "unblock", "pivcard", "654321", "--puk", "87654321"],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("wrong PUK; 2 tries left"), "{}", text(&o));
    assert_eq!(
        ctl(
            &s.socket,
            &["card", "unblock", "pivcard", "654321", "--puk", "12345678"]
        ),
        "PIN of card pivcard unblocked\n"
    );
    let new_pin = "00 20 00 80 08 36 35 34 33 32 31 FF FF";
    let out = s.apdus(0, &[SELECT_PIV, new_pin]);
    assert!(out.contains("SW1=0x90, SW2=0x00"), "{out}");
    // OpenSC signs with the new PIN; it survives a restart (the PIV state file).
    let cert9a = s.dir.join("9a.pem");
    std::fs::write(&cert9a, s.read_certificate(0, "01").unwrap()).unwrap();
    s.pcscd
        .sign_and_verify("01", "654321", &cert9a)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.log()));
    // Set without the old one (an administrative reset); a PIV PIN is 6 to 8 digits.
    let o = ctl_output(&s.socket, &["card", "set-pin", "pivcard", "12ab"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("6 to 8 digits"), "{}", text(&o));
    assert!(
        !text(&o).contains("12ab"),
        "the PIN in an error: {}",
        text(&o)
    );
    ctl(&s.socket, &["card", "set-pin", "pivcard", "11223344"]);

    // CAC: three wrong VERIFYs, an administrative unblock (the CAC card has no PUK).
    const SELECT_CAC: &str = "00 A4 04 00 07 A0 00 00 00 79 01 00";
    let wrong = "00 20 00 00 08 30 30 30 30 30 30 30 30";
    let out = s.apdus(1, &[SELECT_CAC, wrong, wrong, wrong]);
    assert!(out.contains("SW1=0x63, SW2=0xC0"), "{out}");
    assert_eq!(next_event(&mut lines, "PIN_BLOCKED"), "caccard");
    testkit::kill(&mut events, "vccid ctl events").unwrap();
    let o = ctl_output(
        &s.socket,
        &["card", "unblock", "caccard", "4321", "--puk", "12345678"],
    );
    assert!(text(&o).contains("no PUK"), "{}", text(&o));
    let o = ctl_output(&s.socket, &["card", "unblock", "caccard", "4321"]);
    assert!(o.status.success(), "{}", text(&o));
    // Kept in the card's state file (issue #17), as the PIV PIN is.
    assert_eq!(text(&o), "PIN of card caccard unblocked\n");
    let out = s.apdus(1, &[SELECT_CAC, "00 20 00 00 08 34 33 32 31 FF FF FF FF"]);
    assert!(out.contains("SW1=0x90, SW2=0x00"), "the new CAC PIN: {out}");

    s.restart();
    s.settle(0);
    let out = s.apdus(0, &[SELECT_PIV, "00 20 00 80 08 31 31 32 32 33 33 34 34"]);
    assert!(
        out.contains("SW1=0x90, SW2=0x00"),
        "the PIN set survives: {out}"
    );
    s.settle(1);
    let out = s.apdus(1, &[SELECT_CAC, "00 20 00 00 08 34 33 32 31 FF FF FF FF"]);
    assert!(
        out.contains("SW1=0x90, SW2=0x00"),
        "the CAC PIN set survives: {out}"
    );
    // No PIN in the service's log (an 8-digit one: shorter ones could be a timestamp's).
    let log = s.pcscd.child_log("vccid1") + &s.log();
    assert!(!log.contains("11223344"), "the PIN in the log:\n{log}");
}
