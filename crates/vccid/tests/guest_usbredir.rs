//! A real Linux guest (Debian's kernel, a busybox initramfs with pcscd, libccid and OpenSC;
//! `tests/guest/`) under QEMU 7.2 with TCG uses our reader through `-device usb-redir`: the
//! kernel enumerates it, pcscd lists it, OpenSC reads the ATR, finds the CAC and three
//! certificates, and signs; the host verifies the signature with OpenSSL.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use testkit::{free_port, run, text};

const VCCID: &str = env!("CARGO_BIN_EXE_vccid");
const VSCCLIENT: &str = env!("CARGO_BIN_EXE_vscclient");

/// The initramfs and kernel, built once per test run.
fn image() -> &'static PathBuf {
    static IMG: OnceLock<PathBuf> = OnceLock::new();
    IMG.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vccid-guest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        // The raw-APDU tool for the guest: hostcard's example, built like the tests.
        run(Command::new(env!("CARGO")).current_dir(&root).args([
            "build",
            "-q",
            "-p",
            "hostcard",
            "--example",
            "apdu",
        ]))
        .expect("the apdu example builds");
        let tool = root.join("target/debug/examples/apdu");
        let script = root.join("tests/guest/build-initramfs.sh");
        run(Command::new("bash")
            .arg(script)
            .arg(&dir)
            .env("APDU_TOOL", &tool))
        .expect("the guest initramfs builds");
        dir
    })
}

struct Guest {
    results: HashMap<String, String>,
    blobs: HashMap<String, Vec<u8>>,
    serial: String,
}

/// Boots the guest with the reader at `port` on `controller` ("xhci" or "uhci") and waits for
/// it to power off (3 minutes at most).
fn boot(port: u16, controller: &str) -> Guest {
    let hc = if controller == "uhci" {
        "ich9-usb-uhci1,id=hc"
    } else {
        "qemu-xhci,id=hc"
    };
    let devices = [
        "-device".to_string(),
        hc.into(),
        "-chardev".into(),
        format!("socket,id=cc,host=127.0.0.1,port={port},reconnect=1,nodelay=on"),
        "-device".into(),
        "usb-redir,chardev=cc,bus=hc.0".into(),
    ];
    boot_with(&devices, "e2e.apdus=100", |_| {})
}

/// Boots the guest with these devices and kernel parameters; `on_wait` gets each
/// `E2E-WAIT <what>` the guest prints while it runs.
fn boot_with(devices: &[String], append: &str, mut on_wait: impl FnMut(&str)) -> Guest {
    let img = image();
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.log");
    let mut q = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-m",
            "512",
            "-smp",
            "1",
            "-nodefaults",
            "-display",
            "none",
        ])
        .args([
            "-vga",
            "none",
            "-monitor",
            "none",
            "-nic",
            "none",
            "-no-reboot",
            "-serial",
        ])
        .arg(format!("file:{}", serial.display()))
        .arg("-kernel")
        .arg(img.join("kernel"))
        .arg("-initrd")
        .arg(img.join("initramfs.cpio"))
        .arg("-append")
        .arg(format!(
            "console=ttyS0 loglevel=4 panic=-1 8250.nr_uarts=1 {append}"
        ))
        .args(devices)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("QEMU starts");
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut waits_seen = 0;
    let mut dispatch = |waits_seen: &mut usize| {
        let log = String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default()).into_owned();
        let waits: Vec<&str> = log
            .lines()
            .filter_map(|l| l.trim_end().strip_prefix("E2E-WAIT "))
            .collect();
        for w in &waits[(*waits_seen).min(waits.len())..] {
            on_wait(w);
        }
        *waits_seen = waits.len();
    };
    while Instant::now() < deadline {
        if let Ok(Some(_)) = q.try_wait() {
            break;
        }
        dispatch(&mut waits_seen);
        std::thread::sleep(Duration::from_millis(200));
    }
    // Markers printed just before the guest powered off.
    dispatch(&mut waits_seen);
    let _ = q.kill();
    let _ = q.wait();
    let log =
        String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default()).replace('\r', "");
    let mut results = HashMap::new();
    let mut blobs = HashMap::new();
    let mut lines = log.lines();
    while let Some(l) = lines.next() {
        if let Some(r) = l.strip_prefix("E2E-RESULT ") {
            let (k, v) = r.split_once('=').unwrap_or((r, ""));
            results.insert(k.to_string(), v.to_string());
        } else if let Some(name) = l.strip_prefix("E2E-HEX-BEGIN ") {
            let hex: String = lines
                .by_ref()
                .take_while(|l| !l.starts_with("E2E-HEX-END"))
                .collect();
            blobs.insert(name.to_string(), apdu::hex::parse(&hex).unwrap_or_default());
        }
    }
    assert!(log.contains("E2E-DONE"), "the guest did not finish:\n{log}");
    Guest {
        results,
        blobs,
        serial: log,
    }
}

fn vccid_usbredir(port: u16, card: &str, data: &Path) -> Child {
    Command::new(VCCID)
        .args([
            "--usbredir",
            &format!("127.0.0.1:{port}"),
            "--card",
            card,
            "--data-dir",
        ])
        .arg(data)
        .arg("--pcap")
        .arg(data.join("usb.pcap"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("vccid starts")
}

/// The guest's checks, and its signature verified on the host against `cert`.
fn assert_guest_signed(g: &Guest, cert: &Path) {
    let r = |k: &str| g.results.get(k).cloned().unwrap_or_default();
    assert!(
        r("usb_reader").starts_with("1 id=08e6:4433"),
        "{}",
        g.serial
    );
    assert!(
        r("reader_listed").starts_with("1 reader=\"Gemalto Gemplus USB SmartCard Reader 433-Swap"),
        "{}",
        g.serial
    );
    assert_eq!(
        r("atr"),
        "3b:7a:18:00:00:73:66:74:65:20:63:64:31:34:34",
        "{}",
        g.serial
    );
    assert_eq!(
        r("card_driver"),
        "\"Common Access Card (CAC)\"",
        "{}",
        g.serial
    );
    assert_eq!(r("pkcs15_certs"), "3", "{}", g.serial);
    assert_eq!(r("sign"), "1", "{}", g.serial);
    assert!(r("apdu_loop").starts_with("100/100 "), "{}", g.serial);
    let dir = tempfile::tempdir().unwrap();
    let (data, sig, pk) = (
        dir.path().join("data"),
        dir.path().join("sig"),
        dir.path().join("pub.pem"),
    );
    std::fs::write(&data, &g.blobs["data"]).unwrap();
    std::fs::write(&sig, &g.blobs["sig"]).unwrap();
    testkit::pubkey_pem(cert, &pk).unwrap();
    let v = Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(&pk)
        .arg("-signature")
        .arg(&sig)
        .arg(&data)
        .output()
        .unwrap();
    assert!(text(&v).contains("Verified OK"), "{}", text(&v));
}

fn default_card_in_guest(controller: &str) {
    let data = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let mut v = vccid_usbredir(port, "emulated", data.path());
    let g = boot(port, controller);
    let _ = v.kill();
    let _ = v.wait();
    assert_guest_signed(&g, &data.path().join("default/cert1.crt.pem"));
    // tshark decodes the capture as CCID: the XfrBlock / DataBlock pairs of the guest's work.
    let o = Command::new("tshark")
        .arg("-r")
        .arg(data.path().join("usb.pcap"))
        .args([
            "-Y",
            "usbccid",
            "-T",
            "fields",
            "-e",
            "usbccid.bMessageType",
        ])
        .output()
        .expect("tshark runs");
    let types = String::from_utf8_lossy(&o.stdout);
    let xfr = types.lines().filter(|l| l.trim() == "0x6f").count();
    let data_blocks = types.lines().filter(|l| l.trim() == "0x80").count();
    assert!(
        xfr >= 100 && data_blocks >= xfr,
        "XfrBlock {xfr}, DataBlock {data_blocks}: {}",
        text(&o)
    );
}

#[test]
fn guest_reads_and_signs_over_usbredir_on_xhci() {
    default_card_in_guest("xhci");
}

#[test]
fn guest_reads_and_signs_over_usbredir_on_uhci() {
    default_card_in_guest("uhci");
}

#[test]
fn seed_nss_certificates_to_the_guest_and_back() {
    let db = tempfile::tempdir().unwrap();
    testkit::nss_db(db.path(), None).unwrap();
    let port = free_port().unwrap();
    let spec = format!(
        "emulated,backend=certificates,db=sql:{},cert1=cert1,cert2=cert2,cert3=cert3",
        db.path().display()
    );
    let mut v = vccid_usbredir(port, &spec, db.path());
    let g = boot(port, "xhci");
    let _ = v.kill();
    let _ = v.wait();
    assert_guest_signed(&g, &db.path().join("cert1.crt.pem"));
}

#[test]
fn vscclient_card_through_vccid_passthru_to_the_guest() {
    let db = tempfile::tempdir().unwrap();
    testkit::nss_db(db.path(), None).unwrap();
    let (port, vsc) = (free_port().unwrap(), free_port().unwrap());
    let mut v = vccid_usbredir(port, &format!("passthru,listen=127.0.0.1:{vsc}"), db.path());
    let mut c = Command::new(VSCCLIENT)
        .arg("-e")
        .arg(format!(
            "db=\"sql:{}\" use_hw=no soft=(,Test,CAC,,cert1,cert2,cert3)",
            db.path().display()
        ))
        .args(["127.0.0.1", &vsc.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let g = boot(port, "xhci");
    let _ = c.kill();
    let _ = c.wait();
    let _ = v.kill();
    let _ = v.wait();
    assert_guest_signed(&g, &db.path().join("cert1.crt.pem"));
}

#[test]
fn guest_sees_removal_and_reinsertion_and_a_4k_response() {
    use std::io::Write;
    let data = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let mut v = Command::new(VCCID)
        .args(["--usbredir", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = v.stdin.take().unwrap();
    let pid = v.id();
    let ticks = move || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let f: Vec<u64> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        // utime and stime are fields 14 and 15 of /proc/PID/stat (11 and 12 after the name).
        f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0)
    };
    let mut idle_start = 0;
    let mut idle_ticks = None;
    let devices = [
        "-device".to_string(),
        "qemu-xhci,id=hc".into(),
        "-chardev".into(),
        format!("socket,id=cc,host=127.0.0.1,port={port},reconnect=1,nodelay=on"),
        "-device".into(),
        "usb-redir,chardev=cc,bus=hc.0".into(),
    ];
    let g = boot_with(&devices, "e2e.events=1 e2e.big=1", |what| match what {
        "idle-begin" => idle_start = ticks(),
        "idle-end" => idle_ticks = Some(ticks() - idle_start),
        _ => {
            let _ = writeln!(stdin, "{what}");
        }
    });
    let _ = v.kill();
    let _ = v.wait();
    let r = |k: &str| g.results.get(k).cloned().unwrap_or_default();
    assert_eq!(
        r("big_response"),
        "\"R 4096 9000\"",
        "4096 bytes + 9000 in one response:\n{}",
        g.serial
    );
    assert_eq!(r("removal_seen"), "1", "{}", g.serial);
    // 5 s with the guest's pcscd running and IN transfers pending: a polling or spinning
    // reader would use hundreds of ticks; pending transfers just wait.
    let idle = idle_ticks.expect("the guest's idle window");
    assert!(idle < 25, "vccid used {idle} CPU ticks in 5 idle seconds");
    println!("vccid CPU during the guest's 5 s idle window: {idle} ticks");
    assert_eq!(r("insertion_seen"), "1", "{}", g.serial);
    assert_eq!(
        r("after_insert"),
        "\"Common Access Card (CAC)\"",
        "{}",
        g.serial
    );
}

#[test]
fn vscclient_card_in_qemus_own_usb_ccid_passthru() {
    // The seed's sections 5-7 with QEMU as the reader: QEMU's usb-ccid (on UHCI: it
    // desynchronises xHCI guests) and ccid-card-passthru, our vscclient serving the NSS card.
    let db = tempfile::tempdir().unwrap();
    testkit::nss_db(db.path(), None).unwrap();
    let port = free_port().unwrap();
    let devices = [
        "-device".to_string(),
        "ich9-usb-uhci1,id=hc".into(),
        "-device".into(),
        "usb-ccid,bus=hc.0".into(),
        "-chardev".into(),
        format!("socket,id=ccid,host=127.0.0.1,port={port},server=on,wait=off,nodelay=on"),
        "-device".into(),
        "ccid-card-passthru,chardev=ccid".into(),
    ];
    let mut c = Command::new(VSCCLIENT)
        .arg("-e")
        .arg(format!(
            "db=\"sql:{}\" use_hw=no soft=(,Test,CAC,,cert1,cert2,cert3)",
            db.path().display()
        ))
        .args(["127.0.0.1", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let g = boot_with(&devices, "e2e.apdus=100", |_| {});
    let _ = c.kill();
    let _ = c.wait();
    assert_guest_signed(&g, &db.path().join("cert1.crt.pem"));
}
