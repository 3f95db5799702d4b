//! `vccid --usbredir` against a real QEMU 7.2 `-device usb-redir` (no guest OS): the hello
//! exchange with 64-bit ids, interface and endpoint info accepted, the full-speed 08e6:4433
//! device attached to the xHCI port (QEMU's log and `info usb`), and a QEMU restart served by
//! the same vccid.

use std::process::{Command, Stdio};
use std::time::Duration;
use testkit::{free_port, wait_for, Qemu};

const VCCID: &str = env!("CARGO_BIN_EXE_vccid");

/// QEMU with an xHCI bus and `usb-redir` on a TCP chardev at `port`; `role` is the chardev's
/// connect options (`reconnect=1`: QEMU connects; `server=on,wait=off`: QEMU listens).
fn qemu_redir(port: u16, role: &str) -> Qemu {
    qemu_redir_with(port, role, &[])
}

/// The same with `extra` arguments first (a `tls-creds-x509` object).
fn qemu_redir_with(port: u16, role: &str, extra: &[String]) -> Qemu {
    let mut args: Vec<String> = extra.to_vec();
    args.extend::<Vec<String>>(vec![
        "-device".into(),
        "qemu-xhci,id=x".into(),
        "-chardev".into(),
        format!("socket,id=cc,host=127.0.0.1,port={port},{role},nodelay=on"),
        "-device".into(),
        "usb-redir,chardev=cc,bus=x.0,debug=4".into(),
    ]);
    Qemu::start(&args).expect("QEMU 7.2 starts")
}

fn info_usb(q: &Qemu) -> String {
    let mut out = String::new();
    for _ in 0..40 {
        out = q.qmp_hmp("info usb").unwrap_or_default();
        if out.contains("USB Redirection Device") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    out
}

#[test]
fn qemu_attaches_the_reader_and_a_restart_reattaches() {
    let port = free_port().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("vccid.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut vccid = Command::new(VCCID)
        .args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--usbredir",
            &format!("127.0.0.1:{port}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let vlog = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_for("vccid listening", Duration::from_secs(20), || {
        vlog().contains("waiting for QEMU")
    })
    .unwrap();
    for round in 0..2 {
        let q = qemu_redir(port, "reconnect=1");
        wait_for("the device attached", Duration::from_secs(30), || {
            q.stderr().contains("attaching full speed device 08e6:4433")
        })
        .unwrap_or_else(|e| {
            panic!(
                "round {round}: {e}\nQEMU:\n{}\nvccid:\n{}",
                q.stderr(),
                vlog()
            )
        });
        assert!(q.stderr().contains("using 64-bits ids"), "{}", q.stderr());
        assert!(q.stderr().contains("ep: 81 type: 3"), "{}", q.stderr());
        assert!(
            !q.stderr().contains("filter_reject") && !q.stderr().contains("rejected"),
            "{}",
            q.stderr()
        );
        let usb = info_usb(&q);
        assert!(
            usb.contains("Speed 12 Mb/s, Product USB Redirection Device"),
            "{usb}"
        );
        drop(q);
        wait_for("QEMU gone", Duration::from_secs(10), || {
            vlog().matches("QEMU gone").count() > round
        })
        .unwrap();
    }
    assert_eq!(vlog().matches("usbredir guest hello").count(), 2);
    testkit::signal(&mut vccid, testkit::Signal::Term).unwrap();
    let out = testkit::wait_output(vccid, Duration::from_secs(20), "vccid to exit on SIGTERM")
        .unwrap_or_else(|e| panic!("{e}\nvccid:\n{}", vlog()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "-chardev socket,id=vccid0,host=127.0.0.1,port={port},reconnect=2,nodelay=on"
        )),
        "{text}"
    );
    assert!(text.contains(&format!("service='{port}'")), "{text}");
}

#[test]
fn vccid_connects_to_a_qemu_server_chardev_and_again_after_a_restart() {
    let port = free_port().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("vccid.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut vccid = Command::new(VCCID)
        .args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--usbredir-connect",
            &format!("127.0.0.1:{port}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let vlog = || std::fs::read_to_string(&log_path).unwrap_or_default();
    for round in 0..2 {
        let q = qemu_redir(port, "server=on,wait=off");
        wait_for("the device attached", Duration::from_secs(30), || {
            q.stderr().contains("attaching full speed device 08e6:4433")
        })
        .unwrap_or_else(|e| {
            panic!(
                "round {round}: {e}\nQEMU:\n{}\nvccid:\n{}",
                q.stderr(),
                vlog()
            )
        });
        drop(q);
        wait_for("QEMU gone", Duration::from_secs(10), || {
            vlog().matches("QEMU gone").count() > round
        })
        .unwrap();
    }
    testkit::kill(&mut vccid, "vccid").unwrap();
}

#[test]
fn vccid_connects_over_tls_to_qemus_tls_server_chardev() {
    let port = free_port().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (creds, other) = (dir.path().join("creds"), dir.path().join("other"));
    for d in [&creds, &other] {
        testkit::tls::vccid_init(VCCID, d).unwrap();
    }
    // QEMU the TLS server, requiring our client certificate.
    let tls = [
        "-object".to_string(),
        format!(
            "tls-creds-x509,id=tls0,endpoint=server,verify-peer=on,dir={}",
            creds.display()
        ),
    ];
    let q = qemu_redir_with(port, "server=on,wait=off,tls-creds=tls0", &tls);
    let start = |d: &std::path::Path, name: &str| {
        let log_path = dir.path().join(format!("{name}.log"));
        let child = Command::new(VCCID)
            .args([
                "--data-dir",
                dir.path().to_str().unwrap(),
                "--usbredir-connect",
            ])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--tls")
            .arg(d)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap();
        (child, log_path)
    };
    // Another CA: vccid refuses QEMU's certificate and says so; nothing attaches.
    let (mut bad, bad_log) = start(&other, "other");
    wait_for("the refused handshake", Duration::from_secs(20), || {
        std::fs::read_to_string(&bad_log)
            .unwrap_or_default()
            .contains("invalid peer certificate")
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {}",
            std::fs::read_to_string(&bad_log).unwrap_or_default()
        )
    });
    testkit::kill(&mut bad, "vccid (other CA)").unwrap();
    assert!(!q.stderr().contains("attaching"), "{}", q.stderr());
    // The right directory: the reader attaches over TLS.
    let (mut good, log) = start(&creds, "good");
    wait_for(
        "the device attached over TLS",
        Duration::from_secs(30),
        || q.stderr().contains("attaching full speed device 08e6:4433"),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nQEMU:\n{}\nvccid:\n{}",
            q.stderr(),
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    let usb = info_usb(&q);
    assert!(usb.contains("Product USB Redirection Device"), "{usb}");
    testkit::kill(&mut good, "vccid").unwrap();
}
