//! Issue #15: every generated card is a different card. Two CAC cards and two PIV cards
//! generated from the same kind of specification, served side by side through a private pcscd
//! and vsmartcard-vpcd, are told apart by OpenSC: different serial numbers (`pkcs15-tool -D`),
//! certificates with subjects that name the card (`CN=alice`, `CN=bob`) and different
//! certificate serial numbers; the PIV cards' CHUIDs differ too. A second start reuses the
//! identities a first one made; `ephemeral=on` writes nothing at all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use testkit::{text, CommandExt, PrivatePcscd};

const VCCID: &str = env!("CARGO_BIN_EXE_vccid");

/// What OpenSC shows of the card in reader `index`: its serial number, and each
/// certificate's subject (RFC 4514) and serial number, in pkcs15 ID order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    serial: String,
    certificates: Vec<(String, String)>,
}

fn tool(pcscd: &PrivatePcscd, program: &str, args: &[&str]) -> String {
    let out = pcscd
        .command(program)
        .args(args)
        .output_within(testkit::TOOL_TIMEOUT)
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    let t = text(&out);
    assert!(out.status.success(), "{program} {args:?}:\n{t}");
    t
}

fn seen(pcscd: &PrivatePcscd, index: usize) -> Seen {
    let reader = index.to_string();
    let dump = tool(pcscd, "pkcs15-tool", &["--reader", &reader, "-D"]);
    let serial = dump
        .lines()
        .find_map(|l| l.trim().strip_prefix("Serial number"))
        .map(|v| v.trim_start_matches([' ', ':']).trim().to_string())
        .unwrap_or_else(|| panic!("no serial number in reader {index}:\n{dump}"));
    let list = tool(
        pcscd,
        "pkcs15-tool",
        &["--reader", &reader, "--list-certificates"],
    );
    let ids: Vec<String> = list
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ID"))
        .map(|v| v.trim_start_matches([' ', ':']).trim().to_string())
        .collect();
    assert!(!ids.is_empty(), "no certificate in reader {index}:\n{list}");
    let dir = tempfile::tempdir().unwrap();
    let certificates = ids
        .iter()
        .map(|id| {
            let pem = dir.path().join(format!("{id}.pem"));
            tool(
                pcscd,
                "pkcs15-tool",
                &[
                    "--reader",
                    &reader,
                    "--read-certificate",
                    id,
                    "--output",
                    pem.to_str().unwrap(),
                ],
            );
            let t = tool(
                pcscd,
                "openssl",
                &[
                    "x509",
                    "-in",
                    pem.to_str().unwrap(),
                    "-noout",
                    "-nameopt",
                    "RFC2253",
                    "-subject",
                    "-serial",
                ],
            );
            let field = |k: &str| {
                t.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .unwrap_or_else(|| panic!("no {k} in {t}"))
                    .to_string()
            };
            (field("subject="), field("serial="))
        })
        .collect();
    Seen {
        serial,
        certificates,
    }
}

/// A private pcscd with an existing, empty data directory for vccid.
fn pcscd_with_data() -> (PrivatePcscd, PathBuf) {
    let pcscd = PrivatePcscd::start().expect("private pcscd starts");
    let data = pcscd.dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    (pcscd, data)
}

/// Starts vccid with `cards` on vpcd's readers 0, 1, ... and waits for them.
fn serve(pcscd: &mut PrivatePcscd, log: &str, data: &Path, cards: &[&str]) {
    let mut cmd = pcscd.command(VCCID);
    cmd.args(["--vpcd", "127.0.0.1:35963", "--data-dir"])
        .arg(data);
    for c in cards {
        cmd.args(["--card", c]);
    }
    pcscd.spawn(log, cmd).expect("vccid starts");
    for i in 0..cards.len() {
        if let Err(e) = pcscd.wait_card(i, Duration::from_secs(30)) {
            panic!("{e}\nvccid:\n{}", pcscd.child_log(log));
        }
    }
}

fn stop(pcscd: &mut PrivatePcscd, log: &str, readers: usize) {
    pcscd.stop_child(log, "TERM");
    for i in 0..readers {
        pcscd
            .wait_no_card(i, Duration::from_secs(20))
            .expect("the cards go away with vccid");
    }
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Asserts that two cards share no identifier OpenSC shows.
fn distinct(a: &Seen, b: &Seen) {
    assert_ne!(a.serial, b.serial, "one serial number for two cards");
    for (_, sa) in &a.certificates {
        for (_, sb) in &b.certificates {
            assert_ne!(sa, sb, "one certificate serial number on two cards");
        }
    }
}

#[test]
fn two_generated_cac_cards_are_two_cards_and_stay_themselves() {
    let (mut pcscd, data) = pcscd_with_data();
    let cards = [
        "emulated,backend=generated,name=alice",
        "emulated,backend=generated,name=bob",
    ];
    serve(&mut pcscd, "vccid", &data, &cards);
    let alice = seen(&pcscd, 0);
    let bob = seen(&pcscd, 1);
    distinct(&alice, &bob);
    let subjects = |s: &Seen| -> Vec<String> {
        s.certificates
            .iter()
            .map(|(subject, _)| subject.clone())
            .collect()
    };
    assert_eq!(subjects(&alice), ["CN=alice", "CN=alice 2", "CN=alice 3"]);
    assert_eq!(subjects(&bob), ["CN=bob", "CN=bob 2", "CN=bob 3"]);
    // The serial number OpenSC shows is the CCC's card ID: the one the first certificate
    // gives.
    let first = card::keystore::FileStore::open(&[card::keystore::FileIdentity::new(
        data.join("cards/alice/cert1.crt.pem"),
        Some(data.join("cards/alice/cert1.key.pem")),
    )])
    .unwrap();
    use card::keystore::KeyStore;
    let id = card::cac::applets::card_identifier(&first.identities()[0].cert_der);
    let hex: String = id[7..].iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        alice.serial.eq_ignore_ascii_case(&hex),
        "{} is not {hex}",
        alice.serial
    );
    // The cards live in DATA_DIR/cards/ID, made whole, keys private.
    let files = snapshot(&data);
    for name in ["alice", "bob"] {
        for f in ["cert1", "cert2", "cert3", "piv-ecc"] {
            let key = data.join(format!("cards/{name}/{f}.key.pem"));
            assert!(files.contains_key(&key), "{}", key.display());
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(&key).unwrap().permissions(),
            );
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }
    }
    // A second start is the same two cards: nothing regenerated, nothing rewritten.
    stop(&mut pcscd, "vccid", 2);
    serve(&mut pcscd, "vccid-2", &data, &cards);
    assert_eq!(seen(&pcscd, 0), alice);
    assert_eq!(seen(&pcscd, 1), bob);
    assert!(
        snapshot(&data) == files,
        "the second start changed the files"
    );
    assert!(
        !pcscd.child_log("vccid-2").contains("made a new"),
        "{}",
        pcscd.child_log("vccid-2")
    );
}

#[test]
fn two_ephemeral_piv_cards_are_two_cards_and_leave_nothing_behind() {
    let (mut pcscd, data) = pcscd_with_data();
    serve(
        &mut pcscd,
        "vccid",
        &data,
        &[
            "emulated,backend=generated,name=carol,profile=piv,ephemeral=on",
            "emulated,backend=generated,name=dave,profile=piv,ephemeral=on,subject=CN={id} {n},,O=Example",
        ],
    );
    let carol = seen(&pcscd, 0);
    let dave = seen(&pcscd, 1);
    distinct(&carol, &dave);
    assert_eq!(carol.certificates[0].0, "CN=carol");
    assert_eq!(dave.certificates[0].0, "CN=dave 1,O=Example");
    assert_eq!(carol.certificates.len(), 4, "{carol:?}");
    // The CHUIDs (FASC-N and GUID) differ too.
    let chuid = |reader: &str| {
        let t = tool(&pcscd, "yubico-piv-tool", &["-r", reader, "-a", "status"]);
        t.lines()
            .find_map(|l| l.strip_prefix("CHUID:\t"))
            .unwrap_or_else(|| panic!("no CHUID:\n{t}"))
            .to_string()
    };
    let (c, d) = (chuid("Virtual PCD 00 00"), chuid("Virtual PCD 00 01"));
    assert_ne!(c[4..54], d[4..54], "one FASC-N for two cards");
    assert_ne!(c[58..90], d[58..90], "one GUID for two cards");
    stop(&mut pcscd, "vccid", 2);
    let left: Vec<_> = std::fs::read_dir(&data).unwrap().collect();
    assert!(left.is_empty(), "ephemeral cards wrote {left:?}");
}
