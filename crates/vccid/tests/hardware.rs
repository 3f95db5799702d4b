//! The hardware path: a card served in a private pcscd by vsmartcard's `vicc` (the "real
//! card", reader 0) is relayed to reader 1 by `vccid --card hardware` and by `vscclient`
//! (default mode) → `vccid --card passthru`; APDUs sent through the relay get the same answers
//! as sent to the card directly.

use std::time::Duration;
use testkit::CommandExt;
use testkit::{text, PrivatePcscd};

const VCCID: &str = env!("CARGO_BIN_EXE_vccid");
const VSCCLIENT: &str = env!("CARGO_BIN_EXE_vscclient");

/// Deterministic APDUs for vicc's ISO 7816 card: select MF, read binary, get data, select a
/// missing file. (Asking vicc for the MF's FCI makes it answer garbage and stop.)
const APDUS: [&str; 4] = [
    "00A4000C023F00",
    "00B0000010",
    "00CA010000",
    "00A40000023F01",
];

fn answers(p: &PrivatePcscd, reader: &str) -> String {
    let mut cmd = p.command("opensc-tool");
    cmd.args(["-r", reader]);
    for a in APDUS {
        cmd.args(["-s", a]);
    }
    let t = text(&cmd.output_within(testkit::TOOL_TIMEOUT).unwrap());
    t.lines()
        .filter(|l| !l.starts_with("Using reader"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn challenge_len(p: &PrivatePcscd, reader: &str) -> String {
    let t = text(
        &p.command("opensc-tool")
            .args(["-r", reader, "-s", "0084000008"])
            .output_within(testkit::TOOL_TIMEOUT)
            .unwrap(),
    );
    t.lines()
        .filter(|l| l.starts_with("Received") || l.contains(':'))
        .count()
        .to_string()
        + &t
}

fn real_card() -> PrivatePcscd {
    let mut p = PrivatePcscd::start().expect("private pcscd starts");
    p.start_vicc(35963).expect("vicc starts");
    p.wait_card(0, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\nvicc:\n{}", p.child_log("vicc")));
    p
}

fn assert_same_answers(p: &PrivatePcscd) {
    let direct = answers(p, "0");
    let relayed = answers(p, "1");
    assert!(direct.contains("SW1=0x90, SW2=0x00"), "{direct}");
    assert_eq!(relayed, direct);
    let atr0 = text(
        &p.command("opensc-tool")
            .args(["-r", "0", "-a"])
            .output_within(testkit::TOOL_TIMEOUT)
            .unwrap(),
    );
    let atr1 = text(
        &p.command("opensc-tool")
            .args(["-r", "1", "-a"])
            .output_within(testkit::TOOL_TIMEOUT)
            .unwrap(),
    );
    assert!(atr0.contains("3b:95:13:81:01:80:73:ff:01:00:0b"), "{atr0}");
    assert_eq!(atr1.lines().last(), atr0.lines().last());
    let c = challenge_len(p, "1");
    assert!(c.contains("SW1=0x90, SW2=0x00"), "{c}");
}

#[test]
fn vccid_card_hardware_relays_the_real_card() {
    let mut p = real_card();
    let mut cmd = p.command(VCCID);
    cmd.args([
        "--vpcd",
        "127.0.0.1:35964",
        "--card",
        "hardware,reader=Virtual PCD 00 00",
    ]);
    p.spawn("vccid", cmd).unwrap();
    p.wait_card(1, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", p.child_log("vccid")));
    assert_same_answers(&p);
    // The real card leaves: the relayed reader follows.
    p.stop_child("vicc", "TERM");
    p.wait_no_card(1, Duration::from_secs(20)).unwrap();
}

#[test]
fn vscclient_relays_the_real_card_through_vccid_passthru() {
    let mut p = real_card();
    let mut host = p.command(VCCID);
    host.args([
        "--vpcd",
        "127.0.0.1:35964",
        "--card",
        "passthru,listen=127.0.0.1:2001",
    ]);
    p.spawn("vccid", host).unwrap();
    let mut client = p.command(VSCCLIENT);
    client.args(["--pcsc-reader", "Virtual PCD 00 00", "127.0.0.1", "2001"]);
    p.spawn("vscclient", client).unwrap();
    p.wait_card(1, Duration::from_secs(20)).unwrap_or_else(|e| {
        panic!(
            "{e}\nvccid:\n{}\nvscclient:\n{}",
            p.child_log("vccid"),
            p.child_log("vscclient")
        )
    });
    assert_same_answers(&p);
    let log = p.child_log("vccid");
    assert!(
        log.contains("name=Virtual PCD 00 00"),
        "the reader is announced by its PC/SC name: {log}"
    );
    // Removing the real card reaches the guest side as CardRemove; reinserting as ATR.
    p.stop_child("vicc", "TERM");
    p.wait_no_card(1, Duration::from_secs(20)).unwrap();
    p.start_vicc(35963).unwrap();
    p.wait_card(1, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\nvscclient:\n{}", p.child_log("vscclient")));
}

/// vccid serves reader 0 through vpcd (port 35963) and relays `--card hardware` with no reader
/// chosen while vicc's card sits in reader 1: pcscd lists vccid's own reader first, and vccid
/// must pass it over (relaying it would be a loop with no card) for vicc's.
#[test]
fn vccid_card_hardware_never_relays_its_own_vpcd_reader() {
    let mut p = PrivatePcscd::start().expect("private pcscd starts");
    p.start_vicc(35964).expect("vicc starts");
    p.wait_card(1, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\nvicc:\n{}", p.child_log("vicc")));
    let mut cmd = p.command(VCCID);
    cmd.args(["--vpcd", "127.0.0.1:35963", "--card", "hardware"]);
    p.spawn("vccid", cmd).unwrap();
    p.wait_card(0, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\nvccid:\n{}", p.child_log("vccid")));
    let log = p.child_log("vccid");
    assert!(
        log.contains("reader=Virtual PCD 00 01") && !log.contains("reader=Virtual PCD 00 00"),
        "{log}"
    );
    // Reader 0 answers as vicc's card in reader 1 does.
    let relayed = answers(&p, "0");
    assert!(relayed.contains("SW1=0x90, SW2=0x00"), "{relayed}");
    assert_eq!(relayed, answers(&p, "1"));
}

/// Runs vccid (inside `p` when given) to its exit, which must come within 20 s; its status
/// and stderr.
fn vccid_exit(p: Option<&PrivatePcscd>, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = match p {
        Some(p) => p.command(VCCID),
        None => std::process::Command::new(VCCID),
    };
    let child = cmd
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = testkit::wait_output(child, Duration::from_secs(20), "vccid to exit")
        .unwrap_or_else(|e| panic!("{e}"));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), err)
}

/// `--reader` that matches nothing: exit 2, and the message lists pcscd's readers, ours marked
/// as excluded and why.
#[test]
fn vccid_reader_nomatch_lists_the_readers_pcscd_has() {
    let p = PrivatePcscd::start().expect("private pcscd starts");
    let (code, err) = vccid_exit(
        Some(&p),
        &[
            "--vpcd",
            "127.0.0.1:35963",
            "--card",
            "hardware",
            "--reader",
            "nomatch",
        ],
    );
    assert_eq!(code, Some(2), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("vccid: error:"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.contains("no PC/SC reader matching \"nomatch\"")
            && line.contains(
                "\"Virtual PCD 00 00\" (excluded: vccid's own vpcd reader, --vpcd 127.0.0.1:35963)"
            )
            && line.contains("\"Virtual PCD 00 01\""),
        "{line}"
    );
    // Choosing our own reader by name is refused the same way.
    let (code, err) = vccid_exit(
        Some(&p),
        &[
            "--vpcd",
            "127.0.0.1:35963",
            "--card",
            "hardware",
            "--reader",
            "PCD 00 00",
        ],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("(excluded: vccid's own vpcd reader"), "{err}");
}

/// `--reader` says which reader of `--card hardware`; with any other card, or together with
/// `reader=`, it is an error before anything starts.
#[test]
fn vccid_reader_applies_to_card_hardware_only() {
    for (args, words) in [
        (&["--reader", "x"][..], "add --card hardware"),
        (
            &["--card", "hardware,reader=a", "--reader", "b"][..],
            "give one of them",
        ),
    ] {
        let (code, err) = vccid_exit(None, args);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains(words), "{args:?}: {err}");
    }
}
