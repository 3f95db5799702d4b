//! TLS on the VSCard link against QEMU 7.2's TLS chardevs (`tls-creds-x509`, GnuTLS) and
//! between our own programs: `vccid tls init` makes the directory both use; the handshake,
//! the refusals (another CA, an expired certificate, plaintext), and captures on loopback that
//! hold no VSCard plaintext.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use testkit::tls::{contains, Capture};
use testkit::CommandExt;
use testkit::{free_port, text, wait_for, PrivatePcscd, Qemu};

const VCCID: &str = env!("CARGO_BIN_EXE_vccid");
const VSCCLIENT: &str = env!("CARGO_BIN_EXE_vscclient");
/// How long a child of these tests may take to exit once it should.
const WAIT: Duration = Duration::from_secs(30);
/// The CAC ATR, as it travels in VSC_ATR.
const CAC_ATR: [u8; 15] = [
    0x3B, 0x7A, 0x18, 0x00, 0x00, 0x73, 0x66, 0x74, 0x65, 0x20, 0x63, 0x64, 0x31, 0x34, 0x34,
];
/// The CAC applet's AID, as OpenSC SELECTs it.
const CAC_AID: [u8; 7] = [0xA0, 0x00, 0x00, 0x01, 0x16, 0xDB, 0x00];

fn tls_init(dir: &Path) -> String {
    testkit::tls::vccid_init(VCCID, dir).unwrap()
}

fn qemu_tls_passthru(port: u16, dir: &Path) -> Qemu {
    let args: Vec<String> = [
        "-object".to_string(),
        format!(
            "tls-creds-x509,id=tls0,endpoint=server,verify-peer=on,dir={}",
            dir.display()
        ),
        "-device".into(),
        "qemu-xhci".into(),
        "-device".into(),
        "usb-ccid,debug=4".into(),
        "-chardev".into(),
        format!("socket,server=on,wait=off,host=127.0.0.1,port={port},id=ccid,tls-creds=tls0"),
        "-device".into(),
        "ccid-card-passthru,chardev=ccid,debug=4".into(),
    ]
    .to_vec();
    Qemu::start(&args).expect("QEMU 7.2 starts with TLS credentials")
}

/// vscclient with the emulated card; returns (child, log path).
fn vscclient(
    data: &Path,
    tls: Option<&Path>,
    port: u16,
    name: &str,
) -> (std::process::Child, std::path::PathBuf) {
    let log = data.join(format!("{name}.log"));
    let mut c = Command::new(VSCCLIENT);
    c.args(["-d", "5", "--card", "emulated", "--data-dir"])
        .arg(data);
    if let Some(t) = tls {
        c.arg("--tls").arg(t);
    }
    let child = c
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (child, log)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn vscclient_over_tls_to_qemu_passthru_and_the_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    let printed = tls_init(&creds);
    assert!(
        printed.contains("tls-creds-x509,id=tls0,endpoint=server,verify-peer=on"),
        "{printed}"
    );
    let port = free_port().unwrap();
    let qemu = qemu_tls_passthru(port, &creds);
    let capture = Capture::start(
        Command::new("tshark"),
        &format!("tcp port {port}"),
        dir.path(),
    )
    .unwrap();
    let (mut good, log) = vscclient(dir.path(), Some(&creds), port, "good");
    wait_for("the ATR accepted over TLS", Duration::from_secs(30), || {
        qemu.stdout().contains("atr passes check")
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nQEMU:\n{}\n{}\nvscclient:\n{}",
            qemu.stdout(),
            qemu.stderr(),
            read(&log)
        )
    });
    let out = qemu.stdout();
    assert!(
        out.contains("CCID Attach") && out.contains("VSC_ATR 15"),
        "{out}"
    );
    assert!(
        read(&log).contains("Init { magic: [86, 83, 67, 68], version: 2"),
        "{}",
        read(&log)
    );
    testkit::signal(&mut good, testkit::Signal::Term).unwrap();
    let st = testkit::wait_child(&mut good, WAIT, "vscclient to exit on SIGTERM")
        .unwrap_or_else(|e| panic!("{e}\n{}", read(&log)));
    assert!(st.success(), "{st}\n{}", read(&log));
    wait_for("CardRemove", Duration::from_secs(10), || {
        qemu.stdout().contains("VSC_CardRemove")
    })
    .unwrap();
    let file = capture.stop().unwrap();
    let raw = std::fs::read(&file).unwrap();
    let records = testkit::tls::tls_records(&file, port).unwrap();
    assert!(
        records >= 6,
        "{records} TLS records in the capture ({} bytes)",
        raw.len()
    );
    assert!(!contains(&raw, b"VSCD"), "VSCard magic in the clear");
    assert!(!contains(&raw, &CAC_ATR), "the ATR in the clear");
    assert!(
        !contains(&raw, b"Virtual Reader"),
        "the reader name in the clear"
    );

    let attaches = || qemu.stdout().matches("CCID Attach").count();
    let before = attaches();
    // A client certificate from another CA: QEMU closes after the handshake; vscclient stops
    // with one line saying why.
    let other = dir.path().join("other");
    tls_init(&other);
    let mixed = dir.path().join("mixed");
    testkit::tls::mixed(&creds, &other, &mixed).unwrap();
    let (mut c, log) = vscclient(dir.path(), Some(&mixed), port, "other-ca");
    let st = testkit::wait_child(&mut c, WAIT, "vscclient refused by QEMU to exit")
        .unwrap_or_else(|e| panic!("{e}\n{}", read(&log)));
    let l = read(&log);
    assert_eq!(st.code(), Some(2), "{l}");
    assert!(l.contains("refused our client certificate"), "{l}");
    assert_eq!(
        l.lines().filter(|x| x.contains("vscclient: error")).count(),
        1,
        "{l}"
    );
    // An expired certificate from the right CA: the same.
    let expired = dir.path().join("expired");
    testkit::tls::expired_client(&creds, &expired).unwrap();
    let (mut c, log) = vscclient(dir.path(), Some(&expired), port, "expired");
    let st = testkit::wait_child(
        &mut c,
        WAIT,
        "vscclient with an expired certificate to exit",
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", read(&log)));
    assert_eq!(st.code(), Some(2), "{}", read(&log));
    assert!(
        read(&log).contains("refused our client certificate"),
        "{}",
        read(&log)
    );
    // Our side refuses a server whose CA we do not know.
    let (mut c, log) = vscclient(dir.path(), Some(&other), port, "unknown-server");
    let st = testkit::wait_child(&mut c, WAIT, "vscclient refusing the server to exit")
        .unwrap_or_else(|e| panic!("{e}\n{}", read(&log)));
    assert_eq!(st.code(), Some(2), "{}", read(&log));
    assert!(
        read(&log).contains("invalid peer certificate"),
        "{}",
        read(&log)
    );
    // Plaintext: QEMU drops the connection; vscclient says why (and keeps retrying).
    let (mut c, log) = vscclient(dir.path(), None, port, "plain");
    wait_for("vscclient's reason", Duration::from_secs(15), || {
        read(&log).contains("does it expect TLS?")
    })
    .unwrap_or_else(|e| panic!("{e}: {}", read(&log)));
    testkit::kill(&mut c, "vscclient").unwrap();
    assert_eq!(
        attaches(),
        before,
        "no refused client attached a reader:\n{}",
        qemu.stdout()
    );
}

#[test]
fn vscclient_and_vccid_passthru_over_mutual_tls_then_opensc() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    tls_init(&creds);
    let mut pcscd = PrivatePcscd::start().expect("private pcscd starts");
    let port = free_port().unwrap();
    let capture = Capture::start(
        pcscd.command("tshark"),
        &format!("tcp port {port}"),
        dir.path(),
    )
    .unwrap();
    let mut host = pcscd.command(VCCID);
    host.args(["--vpcd", "127.0.0.1:35963", "--card"])
        .arg(format!("passthru,listen=127.0.0.1:{port}"))
        .arg("--tls")
        .arg(&creds);
    pcscd.spawn("vccid", host).unwrap();
    wait_for("the TLS listener", Duration::from_secs(10), || {
        pcscd.child_log("vccid").contains("passthru card waiting")
    })
    .unwrap();
    // A client from another CA is refused by vccid (logged with its address); the client
    // stops with one line.
    let other = dir.path().join("other");
    tls_init(&other);
    let mixed = dir.path().join("mixed");
    testkit::tls::mixed(&creds, &other, &mixed).unwrap();
    let mut bad = pcscd.command(VSCCLIENT);
    bad.args(["--card", "emulated", "--data-dir"])
        .arg(dir.path())
        .arg("--tls")
        .arg(&mixed)
        .arg(format!("127.0.0.1:{port}"));
    let o = testkit::output(&mut bad, WAIT, "vscclient refused by vccid").unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("TLS"), "{}", text(&o));
    let mut client = pcscd.command(VSCCLIENT);
    client
        .args(["--card", "emulated", "--data-dir"])
        .arg(dir.path())
        .arg("--tls")
        .arg(&creds)
        .arg(format!("127.0.0.1:{port}"));
    pcscd.spawn("vscclient", client).unwrap();
    pcscd
        .wait_card(0, Duration::from_secs(20))
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n{}\n{}",
                pcscd.child_log("vccid"),
                pcscd.child_log("vscclient")
            )
        });
    let o = pcscd
        .command("pkcs15-tool")
        .arg("-D")
        .output_within(testkit::TOOL_TIMEOUT)
        .unwrap();
    let listing = text(&o);
    assert_eq!(listing.matches("X.509 Certificate").count(), 3, "{listing}");
    assert!(listing.contains("[cert1]"), "{listing}");
    let log = pcscd.child_log("vccid");
    assert!(log.contains("TLS handshake refused"), "{log}");
    assert!(
        log.contains("VSCard client connected") && log.contains("(TLS)"),
        "{log}"
    );
    pcscd.stop_child("vscclient", "TERM");
    let file = capture.stop().unwrap();
    let raw = std::fs::read(&file).unwrap();
    assert!(
        testkit::tls::tls_records(&file, port).unwrap() >= 20,
        "TLS records in the capture"
    );
    assert!(!contains(&raw, b"VSCD"), "VSCard magic in the clear");
    assert!(!contains(&raw, &CAC_ATR), "the ATR in the clear");
    assert!(!contains(&raw, &CAC_AID), "an APDU in the clear");
}

#[test]
fn tls_bad_input_closes_only_that_connection() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    tls_init(&creds);
    let port = free_port().unwrap();
    let log = dir.path().join("vccid.log");
    let mut v = Command::new(VCCID)
        .args(["--usbredir", &format!("127.0.0.1:{port}"), "--tls"])
        .arg(&creds)
        .arg("--data-dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let addr = link::Addr::parse(&format!("127.0.0.1:{port}")).unwrap();
    let opts = link::tls::TlsOptions {
        dir: creds.clone(),
        verify_peer: true,
        server_name: None,
        on_certificate: None,
    };
    let client = link::TlsClient::new(&opts, &addr).unwrap();
    wait_for("the TLS listener", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .unwrap();
    // Garbage instead of a ClientHello.
    let mut g = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let garbage_peer = g.local_addr().unwrap();
    g.write_all(b"\x00\x00\x00\x00 this is no TLS record")
        .unwrap();
    // Until vccid closes it (the log lines below say whether it refused the handshake).
    g.set_read_timeout(Some(WAIT)).unwrap();
    let _ = g.read_to_end(&mut Vec::new());
    // Half a record, then gone.
    let mut h = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let half_peer = h.local_addr().unwrap();
    h.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .unwrap();
    drop(h);
    // A TLS 1.2 client asking to renegotiate after the handshake (openssl s_client's "R").
    let mut s = Command::new("openssl")
        .args([
            "s_client",
            "-tls1_2",
            "-connect",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("-cert")
        .arg(creds.join("client-cert.pem"))
        .arg("-key")
        .arg(creds.join("client-key.pem"))
        .arg("-CAfile")
        .arg(creds.join("ca-cert.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let _ = s.stdin.as_mut().unwrap().write_all(b"R\n");
    std::thread::sleep(Duration::from_millis(500));
    testkit::signal(&mut s, testkit::Signal::Kill).unwrap();
    let o = testkit::wait_output(s, WAIT, "openssl s_client after SIGKILL").unwrap();
    let s_out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // The handshake completed and the usbredir hello came through TLS ...
    assert!(s_out.contains("Verify return code: 0 (ok)"), "{s_out}");
    assert!(contains(&o.stdout, b"vccid"), "{s_out}");
    // ... but the renegotiation did not: rustls answers no_renegotiation.
    assert!(s_out.contains("RENEGOTIATING"), "{s_out}");
    assert!(s_out.contains("no renegotiation"), "{s_out}");
    // After all that, a good client gets the usbredir hello (type 0) over TLS.
    let mut ok = link::Stream::connect_with(&addr, Some(&client)).unwrap();
    let mut hello = [0u8; 16];
    ok.read_exact(&mut hello).unwrap();
    assert_eq!(&hello[..4], &[0, 0, 0, 0], "a usbredir hello");
    testkit::signal(&mut v, testkit::Signal::Kill).unwrap();
    let out = testkit::wait_output(v, WAIT, "vccid after SIGKILL").unwrap();
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    // The printed QEMU and libvirt lines are the TLS ones.
    assert!(
        printed.contains("-object tls-creds-x509,id=vccid0tls,endpoint=client,dir=")
            && printed.contains(&format!(
                "port={port},reconnect=2,nodelay=on,tls-creds=vccid0tls"
            ))
            && printed.contains("tls='yes'"),
        "{printed}"
    );
    let l = read(&log);
    assert!(l.contains(&format!("peer={garbage_peer}")), "{l}");
    assert!(l.contains(&format!("peer={half_peer}")), "{l}");
    assert!(l.matches("TLS handshake refused").count() >= 2, "{l}");
    assert!(!l.contains("panicked"), "{l}");
}
