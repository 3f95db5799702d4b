//! Several cards in one vccid process, each in a slot of the registry (issue #14), seen by a
//! private pcscd through vsmartcard-vpcd: four slots are four readers holding four different
//! cards, and a card moved between slots at run time (stdin's `move`, the registry's
//! `move_card`) leaves one reader and arrives in the other.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::time::Duration;
use testkit::{text, CommandExt, PrivatePcscd};

const VCCID: &str = env!("CARGO_BIN_EXE_vccid");

/// The certificates' serial numbers ("Encoded serial" of `pkcs15-tool --list-certificates`)
/// of the card in reader `index`: different cards have different certificates.
fn serials(pcscd: &PrivatePcscd, index: usize) -> BTreeSet<String> {
    let out = pcscd
        .command("pkcs15-tool")
        .args(["--reader", &index.to_string(), "--list-certificates"])
        .output_within(testkit::TOOL_TIMEOUT)
        .expect("pkcs15-tool runs");
    let t = text(&out);
    let s: BTreeSet<String> = t
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Encoded serial"))
        .map(|v| v.trim_start_matches([' ', ':']).to_string())
        .collect();
    assert!(!s.is_empty(), "no certificate in reader {index}:\n{t}");
    s
}

/// A card of the files backend with one identity of `dir` (cert1..cert3 from
/// testkit::openssl_identities).
fn files_card(dir: &Path, n: usize, profile: &str) -> String {
    let d = dir.display();
    format!(
        "emulated,profile={profile},backend=files,cert1={d}/cert{n}.crt.pem,key1={d}/cert{n}.key.pem"
    )
}

/// testkit's identities in `pcscd`'s scratch directory, and a vccid command for vpcd there
/// (the cards still to add).
fn vccid_on_vpcd(pcscd: PrivatePcscd) -> (PrivatePcscd, std::path::PathBuf, std::process::Command) {
    let ids = pcscd.dir.path().join("ids");
    std::fs::create_dir(&ids).unwrap();
    testkit::openssl_identities(&ids).unwrap();
    let mut cmd = pcscd.command(VCCID);
    cmd.args(["--vpcd", "127.0.0.1:35963", "--create", "--data-dir"])
        .arg(pcscd.dir.path().join("data"));
    (pcscd, ids, cmd)
}

#[test]
fn four_cards_on_vpcd_are_four_readers_with_four_different_cards() {
    // Two vpcd reader.conf entries: four readers on ports 35963..35966.
    let pcscd = PrivatePcscd::start_with_vpcd_entries(2).expect("private pcscd starts");
    let (mut pcscd, ids, mut cmd) = vccid_on_vpcd(pcscd);
    cmd.args(["--card", "emulated"])
        .args(["--card", &files_card(&ids, 1, "cac")])
        .args(["--card", &files_card(&ids, 2, "piv")])
        .args(["--card", &files_card(&ids, 3, "cac")]);
    pcscd.spawn("vccid", cmd).unwrap();
    for i in 0..4 {
        if let Err(e) = pcscd.wait_card(i, Duration::from_secs(30)) {
            panic!("{e}\nvccid:\n{}", pcscd.child_log("vccid"));
        }
    }
    let l = text(
        &pcscd
            .command("opensc-tool")
            .arg("-l")
            .output_within(testkit::TOOL_TIMEOUT)
            .unwrap(),
    );
    assert_eq!(
        l.lines().filter(|l| l.contains("Virtual PCD")).count(),
        4,
        "{l}"
    );
    let all: Vec<BTreeSet<String>> = (0..4).map(|i| serials(&pcscd, i)).collect();
    for i in 0..4 {
        for j in i + 1..4 {
            assert!(
                all[i].is_disjoint(&all[j]),
                "readers {i} and {j} show the same certificate: {all:?}"
            );
        }
    }
    // Reader 2 holds the PIV card, the others CAC cards.
    let n = |i: usize| {
        text(
            &pcscd
                .command("opensc-tool")
                .args(["--reader", &i.to_string(), "-n"])
                .output_within(testkit::TOOL_TIMEOUT)
                .unwrap(),
        )
    };
    assert!(n(2).contains("Personal Identity Verification"), "{}", n(2));
    assert!(n(3).contains("Common Access Card"), "{}", n(3));
}

#[test]
fn a_card_moved_between_slots_leaves_one_reader_and_enters_the_other() {
    let (mut pcscd, ids, mut cmd) =
        vccid_on_vpcd(PrivatePcscd::start().expect("private pcscd starts"));
    cmd.args(["--card", &files_card(&ids, 1, "cac")])
        .args(["--card", &files_card(&ids, 2, "cac")]);
    let mut stdin = pcscd.spawn_with_stdin("vccid", cmd).unwrap();
    for i in 0..2 {
        if let Err(e) = pcscd.wait_card(i, Duration::from_secs(30)) {
            panic!("{e}\nvccid:\n{}", pcscd.child_log("vccid"));
        }
    }
    let card0 = serials(&pcscd, 0);
    let card1 = serials(&pcscd, 1);
    assert!(card0.is_disjoint(&card1));
    writeln!(stdin, "eject slot1").unwrap();
    pcscd.wait_no_card(1, Duration::from_secs(10)).unwrap();
    pcscd.wait_card(0, Duration::from_secs(1)).unwrap();
    writeln!(stdin, "move card0 slot1").unwrap();
    pcscd.wait_no_card(0, Duration::from_secs(10)).unwrap();
    pcscd.wait_card(1, Duration::from_secs(10)).unwrap();
    assert_eq!(serials(&pcscd, 1), card0, "reader 1 now holds card0");
    writeln!(stdin, "insert card1 slot0").unwrap();
    pcscd.wait_card(0, Duration::from_secs(10)).unwrap();
    assert_eq!(serials(&pcscd, 0), card1, "reader 0 now holds card1");
    writeln!(stdin, "status").unwrap();
    drop(stdin);
    testkit::wait_for("the status answer", Duration::from_secs(5), || {
        pcscd
            .child_log("vccid")
            .contains("slot0: card1\nslot1: card0")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", pcscd.child_log("vccid")));
    let log = pcscd.child_log("vccid");
    assert!(
        log.contains("card card1 ejected from slot1")
            && log.contains("card card0 moved from slot0 to slot1"),
        "{log}"
    );
}
