//! Our vscclient against a real QEMU 7.2 `ccid-card-passthru` (no guest OS): QEMU answers its
//! Init with its own and every ReaderAdd/ATR/CardRemove/ReaderRemove with VSC_Error SUCCESS,
//! its debug output shows the reader attached and detached and the ATR accepted, and QMP's
//! `query-chardev` shows the client connected and then gone after a clean exit.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;
use testkit::{free_port, wait_for, Qemu};

const VSCCLIENT: &str = env!("CARGO_BIN_EXE_vscclient");

fn qemu_with_passthru(port: u16) -> Qemu {
    let args: Vec<String> = [
        "-device",
        "qemu-xhci",
        "-device",
        "usb-ccid,debug=4",
        "-chardev",
        &format!("socket,server=on,wait=off,nodelay=on,host=127.0.0.1,port={port},id=ccid"),
        "-device",
        "ccid-card-passthru,chardev=ccid,debug=4",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Qemu::start(&args).expect("QEMU 7.2 starts")
}

/// Starts vscclient (emulated card, debug output) against 127.0.0.1:`port`; its log goes to
/// `dir/vscclient.log`.
fn vscclient(dir: &std::path::Path, port: u16, stdin: Stdio) -> std::process::Child {
    let log = std::fs::File::create(dir.join("vscclient.log")).unwrap();
    Command::new(VSCCLIENT)
        .args(["-d", "5", "--card", "emulated", "--data-dir"])
        .arg(dir)
        .arg(format!("127.0.0.1:{port}"))
        .stdin(stdin)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

#[test]
fn vscclient_session_with_qemu_passthru() {
    let port = free_port().unwrap();
    let qemu = qemu_with_passthru(port);
    let data = tempfile::tempdir().unwrap();
    let log_path = data.path().join("vscclient.log");
    let mut client = vscclient(data.path(), port, Stdio::piped());
    let vlog = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let ready = wait_for("the ATR accepted", Duration::from_secs(30), || {
        qemu.stdout().contains("atr passes check")
    });
    ready.unwrap_or_else(|e| {
        panic!(
            "{e}\nQEMU:\n{}\n{}\nvscclient:\n{}",
            qemu.stdout(),
            qemu.stderr(),
            vlog()
        )
    });
    wait_for("the reader acknowledged", Duration::from_secs(10), || {
        vlog().contains("the host accepted the reader")
    })
    .unwrap();

    // QEMU's Init (reader id 0xFFFFFFFF, "VSCD" = 86 83 67 68, version 2) answered ours.
    let l = vlog();
    assert!(
        l.contains("Init { magic: [86, 83, 67, 68], version: 2, capabilities: [0] }")
            && l.contains("reader=4294967295"),
        "{l}"
    );
    let out = qemu.stdout();
    assert!(out.contains("CCID Attach"), "{out}");
    assert!(out.contains("VSC_ATR 15"), "{out}");
    let chardev = qemu.qmp("query-chardev").unwrap();
    assert!(
        chardev.contains(&format!("tcp:127.0.0.1:{port},server=on <-> ")),
        "{chardev}"
    );

    let stdin = client.stdin.as_mut().unwrap();
    writeln!(stdin, "remove").unwrap();
    wait_for("CardRemove", Duration::from_secs(10), || {
        qemu.stdout().contains("VSC_CardRemove")
    })
    .unwrap();
    writeln!(stdin, "exit").unwrap();
    let st = testkit::wait_child(
        &mut client,
        Duration::from_secs(20),
        "vscclient to exit on \"exit\"",
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", vlog()));
    assert!(st.success(), "{st}");
    // ReaderRemove on connect (unclean-exit cleanup) and on exit: two detaches.
    wait_for("the final detach", Duration::from_secs(10), || {
        qemu.stdout().matches("CCID Detach").count() >= 2
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", qemu.stdout()));
    // Acknowledgements: ReaderRemove, ReaderAdd, ATR, CardRemove, each VSC_Error SUCCESS.
    let l = vlog();
    assert!(l.matches("Error(ErrorCode(0))").count() >= 4, "{l}");
    assert!(!l.contains("HostError"), "{l}");
    let chardev = qemu.qmp("query-chardev").unwrap();
    assert!(
        chardev.contains(&format!("disconnected:tcp:127.0.0.1:{port}")),
        "{chardev}"
    );
}

#[test]
fn vscclient_waits_for_qemu_and_exits_cleanly_on_sigterm() {
    let port = free_port().unwrap();
    let data = tempfile::tempdir().unwrap();
    let log_path = data.path().join("vscclient.log");
    // The client starts first and retries until QEMU listens.
    let mut client = vscclient(data.path(), port, Stdio::null());
    std::thread::sleep(Duration::from_millis(500));
    let qemu = qemu_with_passthru(port);
    wait_for("the ATR accepted", Duration::from_secs(30), || {
        qemu.stdout().contains("atr passes check")
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        )
    });
    // stdin is closed: the client neither spins nor exits; SIGTERM sends the goodbye.
    testkit::signal(&mut client, testkit::Signal::Term).unwrap();
    let st = testkit::wait_child(
        &mut client,
        Duration::from_secs(20),
        "vscclient to exit on SIGTERM",
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        )
    });
    assert!(st.success(), "{st}");
    wait_for(
        "CardRemove and ReaderRemove",
        Duration::from_secs(10),
        || {
            let out = qemu.stdout();
            out.contains("VSC_CardRemove") && out.matches("CCID Detach").count() >= 2
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", qemu.stdout()));
}
