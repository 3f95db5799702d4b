//! The first hour of a real user (issue #13): pcscd started as Debian starts it, options that
//! do not apply refused, the licence, and the small things a newcomer trips over.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use testkit::{PrivatePcscd, TOOL_TIMEOUT};

const VCCID: &str = env!("CARGO_BIN_EXE_vccid");
const VSCCLIENT: &str = env!("CARGO_BIN_EXE_vscclient");

/// Lines of a child's stdout as they come.
fn stdout_lines(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    rx
}

fn wait_line(rx: &mpsc::Receiver<String>, what: &str, timeout: Duration) -> Result<String, String> {
    let deadline = std::time::Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(what) => return Ok(l),
            Ok(l) => seen.push(l),
            Err(_) => return Err(format!("no {what:?} on stdout; saw {seen:?}")),
        }
    }
}

/// vccid in `pcscd`'s namespaces with `args`: its stdout as lines, its log in `vccid.log` of
/// the scratch directory (a data directory `data` there is made and passed for emulated cards).
fn vccid_in(pcscd: &PrivatePcscd, args: &[&str]) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut cmd = pcscd.command(VCCID);
    cmd.args(args);
    if !args.iter().any(|a| a.starts_with("passthru")) {
        let data = pcscd.dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        cmd.arg("--data-dir").arg(&data);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::from(
        std::fs::File::create(pcscd.dir.path().join("vccid.log")).unwrap(),
    ));
    let mut child = cmd.spawn().expect("vccid starts");
    let lines = stdout_lines(&mut child);
    (child, lines)
}

fn vccid_log(pcscd: &PrivatePcscd) -> String {
    std::fs::read_to_string(pcscd.dir.path().join("vccid.log")).unwrap_or_default()
}

/// With pcscd socket-activated and asleep, the first `opensc-tool -n` after vccid says it is
/// ready finds the card (before, nothing listened on vpcd's port until a PC/SC client came,
/// and that first client found "Card not present").
fn first_check_after_ready(card: &str, expect: &str) {
    let pcscd = PrivatePcscd::start_socket_activated().expect("socket-activated pcscd");
    let (mut child, lines) = vccid_in(&pcscd, &["--vpcd", "--card", card]);
    let ready = wait_line(&lines, "vccid: ready", Duration::from_secs(30));
    let log = || vccid_log(&pcscd);
    let ready = ready.unwrap_or_else(|e| panic!("{e}\nvccid:\n{}\npcscd:\n{}", log(), pcscd.log()));
    assert!(ready.contains("Virtual PCD 00 00"), "{ready}");
    let o = testkit::output(
        pcscd.command("opensc-tool").arg("-n"),
        TOOL_TIMEOUT,
        "opensc-tool -n",
    )
    .unwrap();
    let out = testkit::text(&o);
    let _ = testkit::terminate(&mut child, Duration::from_secs(5), "vccid");
    assert!(
        o.status.success() && out.contains(expect),
        "first opensc-tool -n: {out}\nvccid:\n{}",
        log()
    );
}

#[test]
fn socket_activated_pcscd_first_check_finds_the_cac() {
    first_check_after_ready("emulated", "Common Access Card");
}

#[test]
fn socket_activated_pcscd_first_check_finds_the_piv_card() {
    first_check_after_ready(
        "emulated,profile=piv",
        "Personal Identity Verification Card",
    );
}

/// Runs vccid with `args`; it must exit 2 with one `vccid: error:` line containing `words`.
fn refused(args: &[&str], words: &str) {
    let o = testkit::output(
        Command::new(VCCID).args(args).stdin(Stdio::null()),
        Duration::from_secs(30),
        &format!("vccid {args:?} to refuse"),
    )
    .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(
        err.starts_with("vccid: error:") && err.contains(words),
        "{args:?}: {err}"
    );
    assert!(!err.contains("error: error"), "{err}");
}

#[test]
fn options_that_do_not_apply_are_refused_with_the_reason() {
    let tls = tempfile::tempdir().unwrap();
    let t = tls.path().to_str().unwrap();
    refused(&["--vpcd", "--tls", t], "vpcd and USB/IP have no TLS");
    refused(&["--usbip", "--tls", t], "vpcd and USB/IP have no TLS");
    refused(
        &["--usbredir", "--tls", t, "--tls-hostname", "x"],
        "--usbredir-connect only",
    );
    refused(&["--vpcd", "--pcap", "/tmp/x.pcap"], "--pcap records USB");
    refused(&["--vpcd", "--insecure-plaintext"], "nothing listens here");
    refused(
        &["--vpcd", "--card", "passthru", "--data-dir", "/tmp"],
        "keeps none",
    );
}

#[test]
fn usage_errors_have_one_prefix_and_help_names_each_program() {
    for (prog, name) in [(VCCID, "vccid"), (VSCCLIENT, "vscclient")] {
        let o = testkit::output(
            Command::new(prog)
                .arg("--no-such-option")
                .stdin(Stdio::null()),
            Duration::from_secs(30),
            "usage error",
        )
        .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.starts_with(&format!("{name}: error: ")), "{err}");
        assert_eq!(err.matches("error:").count(), 1, "{err}");
    }
    let help = testkit::run(Command::new(VSCCLIENT).arg("--help")).unwrap();
    let first = String::from_utf8_lossy(&help.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        first.contains("VSCard host") && !first.contains("(the programs)"),
        "vscclient --help starts with {first:?}"
    );
    let help = testkit::run(Command::new(VCCID).arg("--help")).unwrap();
    let first = String::from_utf8_lossy(&help.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(!first.contains("(the programs)"), "{first:?}");
}

#[test]
fn tls_init_refuses_zero_days() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("tls");
    refused(
        &["tls", "init", t.to_str().unwrap(), "--days", "0"],
        "--days",
    );
    assert!(!t.join("ca-cert.pem").exists());
}

#[test]
fn pin_value_outside_a_pkcs11_uri_is_refused_with_the_better_ways() {
    refused(
        &[
            "--card",
            "emulated,backend=pkcs11,module=/usr/lib/softhsm/libsofthsm2.so,pin-value=1234",
        ],
        "token-pin-file",
    );
}

#[test]
fn status_typed_on_stdin_is_answered_on_stdout() {
    let data = tempfile::tempdir().unwrap();
    // Nothing listens on this vpcd port: vccid serves (and retries) anyway.
    let port = testkit::free_port().unwrap();
    let mut child = Command::new(VCCID)
        .args(["--vpcd", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = stdout_lines(&mut child);
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "status").unwrap();
    let first = wait_line(&lines, "card", Duration::from_secs(60));
    writeln!(stdin, "remove").unwrap();
    writeln!(stdin, "status").unwrap();
    let second = wait_line(&lines, "no card", Duration::from_secs(10));
    let _ = testkit::terminate(&mut child, Duration::from_secs(5), "vccid");
    assert_eq!(first.unwrap(), "card present");
    second.unwrap();
}

#[test]
fn an_expired_certificate_is_announced() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    let kp = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["old".into()]).unwrap();
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    std::fs::write(&cert, p.self_signed(&kp).unwrap().pem()).unwrap();
    std::fs::write(&key, kp.serialize_pem()).unwrap();
    set_mode(&key, 0o600);
    let data = tempfile::tempdir().unwrap();
    let port = testkit::free_port().unwrap();
    let spec = format!(
        "emulated,backend=files,cert1={},key1={}",
        cert.display(),
        key.display()
    );
    let mut child = Command::new(VCCID)
        .args(["--vpcd", &format!("127.0.0.1:{port}"), "--card", &spec])
        .arg("--data-dir")
        .arg(data.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let line = wait_line(&rx, "expired", Duration::from_secs(60));
    let _ = testkit::terminate(&mut child, Duration::from_secs(5), "vccid");
    let line = line.unwrap();
    assert!(line.contains("WARN") && line.contains("c.pem"), "{line}");
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// MIT OR Apache-2.0 on every crate, both licence texts at the root, and no placeholder URL
/// anywhere in the sources.
#[test]
fn licence_and_no_placeholders() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for f in ["LICENSE-MIT", "LICENSE-APACHE"] {
        let text = std::fs::read_to_string(root.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(text.len() > 1000, "{f} is not a licence text");
    }
    let o = testkit::run(
        Command::new(env!("CARGO"))
            .args([
                "metadata",
                "--no-deps",
                "--format-version",
                "1",
                "--offline",
            ])
            .current_dir(&root),
    )
    .unwrap();
    let meta = String::from_utf8_lossy(&o.stdout);
    let crates = meta.matches("\"manifest_path\"").count();
    let licensed = meta.matches("\"license\":\"MIT OR Apache-2.0\"").count();
    assert!(
        crates >= 10 && licensed == crates,
        "{licensed} of {crates} crates licensed"
    );
    let mut stack = vec![root.clone()];
    let mut bad = Vec::new();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().map_while(Result::ok) {
            let p = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if p.is_dir() {
                if !matches!(name.as_str(), "target" | ".git" | "corpus" | "artifacts") {
                    stack.push(p);
                }
            } else if let Ok(text) = std::fs::read_to_string(&p) {
                // The needle is split so that this file does not find itself.
                if text.contains(concat!("example", ".invalid")) {
                    bad.push(p.display().to_string());
                }
            }
        }
    }
    assert!(bad.is_empty(), "placeholder URLs in {bad:?}");
}

/// pcscd started by hand after vccid (a machine without socket activation): vccid waits for
/// it, serves it, and says ready then.
#[test]
fn pcscd_started_after_vccid_still_gets_the_card_and_the_ready_line() {
    let mut pcscd = PrivatePcscd::start_without_pcscd().expect("namespaces");
    let (mut child, lines) = vccid_in(&pcscd, &["--vpcd"]);
    // No pcscd: no ready line.
    assert!(wait_line(&lines, "vccid: ready", Duration::from_secs(2)).is_err());
    pcscd.start_pcscd().expect("pcscd starts");
    let ready = wait_line(&lines, "vccid: ready", Duration::from_secs(30));
    let log = vccid_log(&pcscd);
    let o = testkit::output(
        pcscd.command("opensc-tool").arg("-n"),
        TOOL_TIMEOUT,
        "opensc-tool -n",
    )
    .unwrap();
    let _ = testkit::terminate(&mut child, Duration::from_secs(5), "vccid");
    ready.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert!(
        testkit::text(&o).contains("Common Access Card"),
        "{}",
        testkit::text(&o)
    );
}

/// A passthru card is ready when its VSCard client has connected and pcscd shows the card.
#[test]
fn a_passthru_card_is_ready_once_its_client_connects() {
    let mut pcscd = PrivatePcscd::start().expect("private pcscd");
    let (mut child, lines) = vccid_in(
        &pcscd,
        &["--vpcd", "--card", "passthru,listen=127.0.0.1:2001"],
    );
    assert!(wait_line(&lines, "vccid: ready", Duration::from_secs(2)).is_err());
    let data = pcscd.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut client = pcscd.command(VSCCLIENT);
    client
        .args(["--card", "emulated", "--data-dir"])
        .arg(&data)
        .arg("127.0.0.1:2001");
    pcscd.spawn("vscclient", client).unwrap();
    let ready = wait_line(&lines, "vccid: ready", Duration::from_secs(30));
    let _ = testkit::terminate(&mut child, Duration::from_secs(5), "vccid");
    ready.unwrap_or_else(|e| {
        panic!(
            "{e}\nvccid:\n{}\nvscclient:\n{}",
            vccid_log(&pcscd),
            pcscd.child_log("vscclient")
        )
    });
}
