//! VSCard passthrough on the host: a card served by our `vscclient` (certificates from an NSS
//! database made with certutil, as the seed's section 6) → VSCard over loopback →
//! `vccid --card passthru` → vpcd → a private pcscd → OpenSC.

use std::io::Write;
use std::process::ChildStdin;
use std::time::Duration;
use testkit::CommandExt;
use testkit::{text, PrivatePcscd};

const VCCID: &str = env!("CARGO_BIN_EXE_vccid");
const VSCCLIENT: &str = env!("CARGO_BIN_EXE_vscclient");

struct Relay {
    pcscd: PrivatePcscd,
    client: ChildStdin,
    db: tempfile::TempDir,
}

/// pcscd, then `vccid --card passthru`, then vscclient with the NSS database's three
/// certificates in libcacard's -e syntax; waits for the card in pcscd.
fn relay() -> Relay {
    let db = tempfile::tempdir().unwrap();
    testkit::nss_db(db.path(), None).unwrap();
    let mut pcscd = PrivatePcscd::start().expect("private pcscd starts");
    let mut host = pcscd.command(VCCID);
    host.args([
        "--vpcd",
        "127.0.0.1:35963",
        "--card",
        "passthru,listen=127.0.0.1:2001",
    ]);
    pcscd.spawn("vccid", host).unwrap();
    let mut client = pcscd.command(VSCCLIENT);
    client
        .arg("-e")
        .arg(format!(
            "db=\"sql:{}\" use_hw=no soft=(,Test,CAC,,cert1,cert2,cert3)",
            db.path().display()
        ))
        .args(["127.0.0.1", "2001"]);
    let stdin = pcscd.spawn_with_stdin("vscclient", client).unwrap();
    if let Err(e) = pcscd.wait_card(0, Duration::from_secs(20)) {
        panic!(
            "{e}\nvccid:\n{}\nvscclient:\n{}",
            pcscd.child_log("vccid"),
            pcscd.child_log("vscclient")
        );
    }
    Relay {
        pcscd,
        client: stdin,
        db,
    }
}

fn tool(r: &Relay, program: &str, args: &[&str]) -> std::process::Output {
    r.pcscd
        .command(program)
        .args(args)
        .output_within(testkit::TOOL_TIMEOUT)
        .unwrap()
}

#[test]
fn opensc_reads_and_signs_with_a_card_served_by_vscclient() {
    let r = relay();
    let t = text(&tool(&r, "pkcs15-tool", &["-D"]));
    assert_eq!(t.matches("X.509 Certificate [").count(), 3, "{t}");
    assert_eq!(t.matches("Private RSA Key").count(), 3, "{t}");
    r.pcscd
        .sign_and_verify("0002", "12345678", &r.db.path().join("cert2.crt.pem"))
        .unwrap();
}

#[test]
fn removal_and_reinsertion_in_vscclient_reach_pcscd() {
    let mut r = relay();
    writeln!(r.client, "remove").unwrap();
    r.pcscd.wait_no_card(0, Duration::from_secs(10)).unwrap();
    let scan = text(&tool(&r, "opensc-tool", &["-l"]));
    assert!(scan.contains("0    No"), "{scan}");
    writeln!(r.client, "insert").unwrap();
    r.pcscd.wait_card(0, Duration::from_secs(10)).unwrap();
    let n = text(&tool(&r, "opensc-tool", &["-n"]));
    assert!(n.contains("Common Access Card (CAC)"), "{n}");
}

#[test]
fn vscclient_exit_removes_the_card_and_a_new_client_brings_it_back() {
    let mut r = relay();
    writeln!(r.client, "exit").unwrap();
    r.pcscd.wait_no_card(0, Duration::from_secs(10)).unwrap();
    let log = r.pcscd.child_log("vccid");
    assert!(log.contains("VSCard client gone"), "{log}");
    // A second client (our default-identity card) connects to the same passthru host.
    // A data directory given to vscclient must exist.
    std::fs::create_dir_all(r.pcscd.dir.path().join("data")).unwrap();
    let mut client = r.pcscd.command(VSCCLIENT);
    client
        .args(["--card", "emulated", "--data-dir"])
        .arg(r.pcscd.dir.path().join("data"))
        .arg("127.0.0.1:2001");
    r.pcscd.spawn("vscclient2", client).unwrap();
    r.pcscd.wait_card(0, Duration::from_secs(20)).unwrap();
    let n = text(&tool(&r, "opensc-tool", &["-n"]));
    assert!(n.contains("Common Access Card (CAC)"), "{n}");
}

#[test]
fn vscclient_reconnects_to_a_new_host() {
    let mut r = relay();
    // Kill the host side: vscclient must reconnect when a new host appears.
    r.pcscd.stop_child("vccid", "KILL");
    r.pcscd.wait_no_card(0, Duration::from_secs(10)).unwrap();
    let mut pcscd = r.pcscd;
    let mut host = pcscd.command(VCCID);
    host.args([
        "--vpcd",
        "127.0.0.1:35963",
        "--card",
        "passthru,listen=127.0.0.1:2001",
    ]);
    pcscd.spawn("vccid2", host).unwrap();
    pcscd.wait_card(0, Duration::from_secs(20)).unwrap();
    let log = pcscd.child_log("vscclient");
    assert!(log.contains("reconnecting"), "{log}");
}

#[test]
fn unix_socket_link() {
    let db = tempfile::tempdir().unwrap();
    let mut pcscd = PrivatePcscd::start().expect("private pcscd starts");
    let sock = pcscd.dir.path().join("vscard.sock");
    let mut host = pcscd.command(VCCID);
    host.args(["--vpcd", "127.0.0.1:35963", "--card"])
        .arg(format!("passthru,listen=unix:{}", sock.display()));
    pcscd.spawn("vccid", host).unwrap();
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let mut client = pcscd.command(VSCCLIENT);
    client
        .args(["--card", "emulated", "--data-dir"])
        .arg(db.path())
        .arg(format!("unix:{}", sock.display()));
    pcscd.spawn("vscclient", client).unwrap();
    pcscd.wait_card(0, Duration::from_secs(20)).unwrap();
}

#[test]
fn a_killed_client_is_a_removed_card() {
    let mut r = relay();
    r.pcscd.stop_child("vscclient", "KILL");
    r.pcscd.wait_no_card(0, Duration::from_secs(10)).unwrap();
    let log = r.pcscd.child_log("vccid");
    assert!(log.contains("VSCard client gone"), "{log}");
}

/// CPU ticks (user + system, 1/100 s) a process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn vscclient_does_not_spin_when_stdin_and_the_host_are_gone() {
    // libcacard's vscclient spins at 100% when its stdin or its socket closes. Ours, with
    // stdin at end of file and no host (retrying with backoff), stays far below one tick per
    // 100 ms; a busy loop would use ~300 ticks in these 3 s.
    let mut r = relay();
    r.pcscd.stop_child("vccid", "KILL");
    r.pcscd.wait_no_card(0, Duration::from_secs(10)).unwrap();
    // A data directory given to vscclient must exist.
    std::fs::create_dir_all(r.pcscd.dir.path().join("data2")).unwrap();
    let mut client = r.pcscd.command(VSCCLIENT);
    client
        .args(["--card", "emulated", "--data-dir"])
        .arg(r.pcscd.dir.path().join("data2"))
        .arg("127.0.0.1:2002");
    client.stdin(std::process::Stdio::null());
    r.pcscd.spawn("idle", client).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let pids = [
        r.pcscd.child_pid("idle").unwrap(),
        r.pcscd.child_pid("vscclient").unwrap(),
    ];
    let before: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    std::thread::sleep(Duration::from_secs(3));
    for (pid, b) in pids.iter().zip(before) {
        let used = cpu_ticks(*pid) - b;
        assert!(used < 30, "vscclient {pid} used {used} ticks in 3 s idle");
    }
}

#[test]
fn a_non_loopback_plaintext_listener_needs_the_explicit_flag_and_warns() {
    // Inside the private network namespace, 0.0.0.0 reaches nothing but its loopback.
    let mut pcscd = PrivatePcscd::start().expect("private pcscd starts");
    let o = pcscd
        .command(VCCID)
        .args([
            "--vpcd",
            "127.0.0.1:35963",
            "--card",
            "passthru,listen=0.0.0.0:2003",
        ])
        .output_within(testkit::TOOL_TIMEOUT)
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", testkit::text(&o));
    assert!(
        testkit::text(&o).contains("--insecure-plaintext"),
        "{}",
        testkit::text(&o)
    );
    let mut host = pcscd.command(VCCID);
    host.args([
        "--vpcd",
        "127.0.0.1:35963",
        "--insecure-plaintext",
        "--card",
        "passthru,listen=0.0.0.0:2003",
    ]);
    pcscd.spawn("vccid", host).unwrap();
    testkit::wait_for("the listener", Duration::from_secs(10), || {
        pcscd.child_log("vccid").contains("passthru card waiting")
    })
    .unwrap();
    let log = pcscd.child_log("vccid");
    assert!(log.contains("unauthenticated and unencrypted"), "{log}");
    // Every connection is warned about.
    let _ = pcscd
        .command("bash")
        .args(["-c", "exec 3<>/dev/tcp/127.0.0.1/2003; sleep 0.3"])
        .status();
    testkit::wait_for(
        "the per-connection warning",
        Duration::from_secs(10),
        || {
            pcscd
                .child_log("vccid")
                .contains("plaintext connection on a non-loopback address")
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {}", pcscd.child_log("vccid")));
}
