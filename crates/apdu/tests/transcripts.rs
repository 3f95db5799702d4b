//! Golden transcripts (issue #18): real or spec-ordered sessions in `tests/transcripts/*.txt`
//! (spaced hex, `> ` host, `< ` card), folded and rendered by `apdu::trace` exactly as
//! `vccid ctl trace` shows them, against `*.expected`. `BLESS=1 cargo test -p apdu --test
//! transcripts` writes the expected files anew (review the diff before committing).

use std::path::Path;

fn transcript(name: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts");
    let text = std::fs::read_to_string(dir.join(name)).expect("transcript");
    let mut pairs = Vec::new();
    let mut cmd = None;
    for l in text.lines() {
        if let Some(c) = l.strip_prefix("> ") {
            cmd = Some(apdu::hex::parse(c).expect("command hex"));
        } else if let Some(r) = l.strip_prefix("< ") {
            let c = cmd.take().expect("a response follows a command");
            pairs.push((c, apdu::hex::parse(r).expect("response hex")));
        }
    }
    pairs
}

fn check(name: &str) {
    let mut folder = apdu::trace::Folder::new();
    let mut out = String::new();
    for (c, r) in transcript(&format!("{name}.txt")) {
        for e in folder.push(&c, &r, 0) {
            out += &apdu::trace::render_exchange(&e);
        }
    }
    let expected = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/transcripts")
        .join(format!("{name}.expected"));
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&expected, &out).unwrap();
    }
    let want = std::fs::read_to_string(&expected).expect("the expected file (BLESS=1 makes it)");
    assert_eq!(out, want, "{name}: the trace changed");
}

#[test]
fn piv_windows_login() {
    check("piv-windows-login");
}

#[test]
fn opensc_cac_signing() {
    check("opensc-cac-sign");
}

#[test]
fn yubico_piv_tool_status_and_verify() {
    check("yubico-piv-tool-status");
}
