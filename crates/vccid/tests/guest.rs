//! A real Linux guest (Debian's kernel, a busybox initramfs with pcscd, libccid and OpenSC;
//! `tests/guest/`) under QEMU 7.2 with TCG uses our reader through `-device usb-redir`, or
//! through the kernel's own USB/IP client (`usbip attach`, vhci-hcd): the kernel enumerates
//! it, pcscd lists it, OpenSC reads the ATR, finds the CAC and three certificates, and signs;
//! the host verifies the signature with OpenSSL.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::CommandExt;
use testkit::{free_port, text};

const VCCID: &str = env!("CARGO_BIN_EXE_vccid");
const VSCCLIENT: &str = env!("CARGO_BIN_EXE_vscclient");

/// The initramfs and kernel, built once per test run.
fn image() -> &'static PathBuf {
    testkit::guest::image()
}

struct Guest {
    results: HashMap<String, String>,
    blobs: HashMap<String, Vec<u8>>,
    serial: String,
}

/// Boots the guest with the reader at `port` on `controller` ("xhci" or "uhci") and waits for
/// it to power off (3 minutes at most).
fn boot(port: u16, controller: &str) -> Guest {
    boot_with(&usbredir_devices(port, controller), "e2e.apdus=100", |_| {})
}

/// QEMU's USB controller ("xhci" or "uhci") and a `usb-redir` device on it, connecting to
/// `vccid --usbredir` at `port`.
fn usbredir_devices(port: u16, controller: &str) -> Vec<String> {
    let hc = if controller == "uhci" {
        "ich9-usb-uhci1,id=hc"
    } else {
        "qemu-xhci,id=hc"
    };
    vec![
        "-device".to_string(),
        hc.into(),
        "-chardev".into(),
        format!("socket,id=cc,host=127.0.0.1,port={port},reconnect=1,nodelay=on"),
        "-device".into(),
        "usb-redir,chardev=cc,bus=hc.0".into(),
    ]
}

/// Boots the guest with these devices and kernel parameters; `on_wait` gets each
/// `E2E-WAIT <what>` the guest prints while it runs.
fn boot_with(devices: &[String], append: &str, on_wait: impl FnMut(&str)) -> Guest {
    boot_cmd(Command::new("qemu-system-x86_64"), devices, append, on_wait)
}

/// [`boot_with`] with QEMU started by `qemu` (`qemu-system-x86_64` in some namespace).
fn boot_cmd(
    mut qemu: Command,
    devices: &[String],
    append: &str,
    mut on_wait: impl FnMut(&str),
) -> Guest {
    let img = image();
    let dir = tempfile::tempdir().unwrap();
    let serial = dir.path().join("serial.log");
    let mut q = qemu
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
        let waits = testkit::guest::waits(&std::fs::read(&serial).unwrap_or_default());
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
    testkit::kill(&mut q, "the guest's QEMU").unwrap();
    let testkit::guest::Report {
        results,
        blobs,
        serial: log,
    } = testkit::guest::parse(&std::fs::read(&serial).unwrap_or_default());
    assert!(log.contains("E2E-DONE"), "the guest did not finish:\n{log}");
    Guest {
        results,
        blobs,
        serial: log,
    }
}

fn vccid_usbredir(port: u16, card: &str, data: &Path) -> Child {
    let mut cmd = Command::new(VCCID);
    cmd.args(["--usbredir", &format!("127.0.0.1:{port}"), "--card", card]);
    // Only an emulated card keeps identities (vccid refuses --data-dir for the others).
    if card.starts_with("emulated") {
        cmd.arg("--data-dir").arg(data);
    }
    cmd.arg("--pcap")
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
    let (done, asked) = r("apdu_loop")
        .split_whitespace()
        .next()
        .and_then(|l| l.split_once('/'))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .unwrap_or_default();
    assert!(
        done == asked && asked.parse::<u32>().unwrap_or(0) >= 100,
        "{}",
        g.serial
    );
    assert_guest_signature_verifies(g, cert);
}

/// The guest's signature over its data (blobs "data" and "sig") verifies with `cert`'s key.
fn assert_guest_signature_verifies(g: &Guest, cert: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let (data, sig) = (dir.path().join("data"), dir.path().join("sig"));
    std::fs::write(&data, &g.blobs["data"]).unwrap();
    std::fs::write(&sig, &g.blobs["sig"]).unwrap();
    testkit::verify_sha256(cert, &data, &sig).unwrap();
}

fn default_card_in_guest(controller: &str) {
    let data = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let mut v = vccid_usbredir(port, "emulated", data.path());
    let g = boot(port, controller);
    testkit::kill(&mut v, "vccid").unwrap();
    assert_guest_signed(&g, &data.path().join("default/cert1.crt.pem"));
    let pcap = data.path().join("usb.pcap");
    assert_capture_has_the_guest_work(&pcap, 100);
    // The committed capture the fuzz seeds of the reader are made from
    // (crates/ccid/tests/transcripts/README.md) is refreshed from this run's.
    if let Some(to) = std::env::var_os(format!("VCCID_GUEST_PCAP_{}", controller.to_uppercase())) {
        std::fs::copy(&pcap, &to).unwrap();
    }
}

/// tshark decodes the usbmon capture as CCID: the XfrBlock / DataBlock pairs of the guest's
/// work, at least `apdus` of them.
fn assert_capture_has_the_guest_work(pcap: &Path, apdus: usize) {
    let (xfr, data_blocks) = testkit::ccid_blocks(pcap).unwrap();
    assert!(
        xfr >= apdus && data_blocks >= xfr,
        "XfrBlock {xfr}, DataBlock {data_blocks}"
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
fn guest_signs_with_the_piv_ecc_key_over_usbredir() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let mut v = vccid_usbredir(port, "emulated,profile=piv", data.path());
    // The embedded default's P-256 key is 9E, OpenSC's key 04.
    let g = boot_with(
        &usbredir_devices(port, "xhci"),
        "e2e.pin=123456 e2e.keyid=04 e2e.mech=ECDSA-SHA256",
        |_| {},
    );
    testkit::kill(&mut v, "vccid").unwrap();
    let r = |k: &str| g.results.get(k).cloned().unwrap_or_default();
    assert!(
        r("usb_reader").starts_with("1 id=08e6:4433"),
        "{}",
        g.serial
    );
    assert_eq!(
        r("card_driver"),
        "\"Personal Identity Verification Card\"",
        "{}",
        g.serial
    );
    assert_eq!(r("pkcs15_certs"), "4", "{}", g.serial);
    assert_eq!(r("sign"), "1", "{}", g.serial);
    assert_guest_signature_verifies(&g, &data.path().join("default/piv-ecc.crt.pem"));
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
    testkit::kill(&mut v, "vccid").unwrap();
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
    testkit::kill(&mut c, "vscclient").unwrap();
    testkit::kill(&mut v, "vccid").unwrap();
    assert_guest_signed(&g, &db.path().join("cert1.crt.pem"));
}

/// CPU ticks (user + system) process `pid` has used so far.
fn cpu_ticks(pid: u32) -> u64 {
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
}

#[test]
fn guest_sees_removal_and_reinsertion_and_a_4k_response() {
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
    let ticks = move || cpu_ticks(pid);
    let mut idle_start = 0;
    let mut idle_ticks = None;
    let devices = usbredir_devices(port, "xhci");
    let g = boot_with(&devices, "e2e.events=1 e2e.big=1", |what| match what {
        "idle-begin" => idle_start = ticks(),
        "idle-end" => idle_ticks = Some(ticks() - idle_start),
        _ => {
            let _ = writeln!(stdin, "{what}");
        }
    });
    testkit::kill(&mut v, "vccid").unwrap();
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
    testkit::kill(&mut c, "vscclient").unwrap();
    assert_guest_signed(&g, &db.path().join("cert1.crt.pem"));
}

/// The host's end of the guest's virtio-serial bridge for USB/IP. QEMU's chardev connects here
/// and stays connected; each guest TCP connection that the guest's socat carries through the
/// port becomes a connection of its own to vccid, opened at its first byte and ended when
/// vccid closes it (after a device list) or when the guest reports `usbip detach`
/// ([`Relay::end_session`]): a virtio-serial port does not pass the guest's close on to the
/// host, and vccid must see the importer leave as it would over TCP. Counts the bytes it
/// carries, so an idle window can be checked for traffic.
///
/// Its threads never block without a deadline: accept and reads poll, and they end when the
/// relay is dropped or after [`RELAY_LIFETIME`], whichever comes first.
struct Relay {
    port: u16,
    upstream: Arc<Mutex<Option<(u64, TcpStream)>>>,
    bytes: Arc<AtomicU64>,
    /// Whether QEMU's chardev has connected.
    accepted: Arc<AtomicBool>,
    /// Set on drop: the threads stop.
    stop: Arc<AtomicBool>,
}

/// How long a relay serves at most: longer than a guest may run ([`boot_with`]'s 180 s).
const RELAY_LIFETIME: Duration = Duration::from_secs(300);

/// How often the relay's threads look at their stop flag and deadline.
const RELAY_POLL: Duration = Duration::from_millis(100);

/// Whether a socket error only means "nothing yet" (a non-blocking accept, a read timeout).
fn not_yet(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{Interrupted, TimedOut, WouldBlock};
    matches!(e.kind(), WouldBlock | TimedOut | Interrupted)
}

impl Relay {
    fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream: Arc<Mutex<Option<(u64, TcpStream)>>> = Arc::new(Mutex::new(None));
        let bytes = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (up, count) = (upstream.clone(), bytes.clone());
        let (seen, stop1) = (accepted.clone(), stop.clone());
        let deadline = Instant::now() + RELAY_LIFETIME;
        let live = move || !stop1.load(Ordering::SeqCst) && Instant::now() < deadline;
        std::thread::spawn(move || {
            let mut generation = 0u64;
            while live() {
                let mut q = match listener.accept() {
                    Ok((q, _)) => q,
                    Err(e) if not_yet(&e) => {
                        std::thread::sleep(RELAY_POLL);
                        continue;
                    }
                    Err(_) => break,
                };
                seen.store(true, Ordering::SeqCst);
                let _ = q.set_nonblocking(false);
                let _ = q.set_read_timeout(Some(RELAY_POLL));
                let _ = q.set_nodelay(true);
                let mut buf = vec![0u8; 65536];
                while live() {
                    let n = match q.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if not_yet(&e) => continue,
                        Err(_) => break,
                    };
                    count.fetch_add(n as u64, Ordering::SeqCst);
                    let mut slot = up.lock().unwrap();
                    if slot.is_none() {
                        let Ok(v) = TcpStream::connect(target) else {
                            continue;
                        };
                        let _ = v.set_nodelay(true);
                        generation += 1;
                        let (mut from, mut to) = (v.try_clone().unwrap(), q.try_clone().unwrap());
                        let _ = from.set_read_timeout(Some(RELAY_POLL));
                        let (up2, count2, mine) = (up.clone(), count.clone(), generation);
                        let live2 = live.clone();
                        std::thread::spawn(move || {
                            let mut b = vec![0u8; 65536];
                            while live2() {
                                let n = match from.read(&mut b) {
                                    Ok(0) => break,
                                    Ok(n) => n,
                                    Err(e) if not_yet(&e) => continue,
                                    Err(_) => break,
                                };
                                count2.fetch_add(n as u64, Ordering::SeqCst);
                                if to.write_all(&b[..n]).is_err() {
                                    break;
                                }
                            }
                            let mut slot = up2.lock().unwrap();
                            if slot.as_ref().is_some_and(|(g, _)| *g == mine) {
                                *slot = None;
                            }
                        });
                        *slot = Some((generation, v));
                    }
                    if let Some((_, v)) = slot.as_mut() {
                        let _ = v.write_all(&buf[..n]);
                    }
                }
            }
        });
        Relay {
            port,
            upstream,
            bytes,
            accepted,
            stop,
        }
    }

    /// Whether QEMU's chardev ever connected.
    fn accepted(&self) -> bool {
        self.accepted.load(Ordering::SeqCst)
    }

    /// The guest's importer has gone: close its connection to vccid.
    fn end_session(&self) {
        if let Some((_, v)) = self.upstream.lock().unwrap().take() {
            let _ = v.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.end_session();
    }
}

#[test]
fn guest_attaches_the_reader_over_usbip() {
    let data = tempfile::tempdir().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
        .parse()
        .unwrap();
    let log = data.path().join("vccid.log");
    let mut v = Command::new(VCCID)
        .args(["--usbip", &addr.to_string(), "--data-dir"])
        .arg(data.path())
        .arg("--pcap")
        .arg(data.path().join("usb.pcap"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    testkit::wait_for("vccid --usbip", Duration::from_secs(20), || {
        TcpStream::connect(addr).is_ok()
    })
    .unwrap();
    let relay = Relay::start(addr);
    let mut stdin = v.stdin.take().unwrap();
    let pid = v.id();
    let devices = [
        "-device".to_string(),
        "virtio-serial-pci,id=vs".into(),
        "-chardev".into(),
        format!(
            "socket,id=ui,host=127.0.0.1,port={},reconnect=1,nodelay=on",
            relay.port
        ),
        "-device".into(),
        "virtserialport,bus=vs.0,chardev=ui,name=usbip".into(),
    ];
    let (mut idle_start, mut idle) = ((0, 0), None);
    let g = boot_with(
        &devices,
        "e2e.usbip=1 e2e.events=1 e2e.apdus=300",
        |what| match what {
            "usbip-detached" => relay.end_session(),
            "idle-begin" => idle_start = (cpu_ticks(pid), relay.bytes.load(Ordering::SeqCst)),
            "idle-end" => {
                idle = Some((
                    cpu_ticks(pid) - idle_start.0,
                    relay.bytes.load(Ordering::SeqCst) - idle_start.1,
                ))
            }
            _ => {
                let _ = writeln!(stdin, "{what}");
            }
        },
    );
    testkit::kill(&mut v, "vccid").unwrap();
    let r = |k: &str| g.results.get(k).cloned().unwrap_or_default();
    let vlog = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        relay.accepted(),
        "QEMU's virtio-serial chardev never connected to the relay on port {}:\n{}",
        relay.port,
        g.serial
    );
    assert_eq!(r("usbip_list"), "\"08e6:4433 (0b/00/00)\"", "{}", g.serial);
    assert_eq!(r("usbip_attach"), "1 tries=1", "{}\n{vlog}", g.serial);
    assert_guest_signed(&g, &data.path().join("default/cert1.crt.pem"));
    assert_eq!(r("removal_seen"), "1", "{}", g.serial);
    assert_eq!(r("insertion_seen"), "1", "{}", g.serial);
    let (ticks, bytes) = idle.expect("the guest's idle window");
    println!("idle 5 s over USB/IP: vccid {ticks} CPU ticks, {bytes} bytes on the link");
    assert!(ticks < 25, "vccid used {ticks} CPU ticks in 5 idle seconds");
    // A completed-empty interrupt or bulk IN resubmitted at once would move tens of kilobytes a
    // second; pending URBs move nothing (one late GetSlotStatus pair from the previous step
    // is ~260 bytes).
    assert!(bytes < 2000, "{bytes} bytes on the idle link");
    assert_eq!(r("usbip_detach"), "1", "{}", g.serial);
    assert_eq!(r("usbip_reattach"), "1 tries=1", "{}\n{vlog}", g.serial);
    assert_eq!(
        r("reattach_atr"),
        "3b:7a:18:00:00:73:66:74:65:20:63:64:31:34:34",
        "{}",
        g.serial
    );
    assert!(!vlog.contains("panicked"), "{vlog}");
    assert_capture_has_the_guest_work(&data.path().join("usb.pcap"), 300);
}

#[test]
fn qemu_usb_redir_over_tls_and_a_wrong_ca_never_attaching() {
    let data = tempfile::tempdir().unwrap();
    let (creds, other) = (data.path().join("creds"), data.path().join("other"));
    for d in [&creds, &other] {
        testkit::tls::vccid_init(VCCID, d).unwrap();
    }
    let port = free_port().unwrap();
    let log = data.path().join("vccid.log");
    let mut v = Command::new(VCCID)
        .args(["--usbredir", &format!("127.0.0.1:{port}"), "--tls"])
        .arg(&creds)
        .arg("--data-dir")
        .arg(data.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let devices = |dir: &Path| {
        vec![
            "-object".to_string(),
            format!(
                "tls-creds-x509,id=tls0,endpoint=client,dir={}",
                dir.display()
            ),
            "-device".into(),
            "qemu-xhci,id=hc".into(),
            "-chardev".into(),
            format!(
                "socket,id=cc,host=127.0.0.1,port={port},reconnect=1,nodelay=on,tls-creds=tls0"
            ),
            "-device".into(),
            "usb-redir,chardev=cc,bus=hc.0".into(),
        ]
    };
    let capture = testkit::tls::Capture::start(
        Command::new("tshark"),
        &format!("tcp port {port}"),
        data.path(),
    )
    .unwrap();
    let g = boot_with(&devices(&creds), "e2e.apdus=100", |_| {});
    assert_guest_signed(&g, &data.path().join("default/cert1.crt.pem"));
    let file = capture.stop().unwrap();
    let raw = std::fs::read(&file).unwrap();
    assert!(testkit::tls::tls_records(&file, port).unwrap() > 100);
    assert!(
        !testkit::tls::contains(&raw, b"usb-redir"),
        "usbredir hello in the clear"
    );
    assert!(
        !testkit::tls::contains(&raw, &[0xA0, 0x00, 0x00, 0x01, 0x16, 0xDB, 0x00]),
        "an APDU in the clear"
    );
    // QEMU with another CA: it refuses our certificate, we refuse its; the reader never
    // attaches and vccid says so.
    let g = boot_with(&devices(&other), "e2e.usbwait=15", |_| {});
    testkit::kill(&mut v, "vccid").unwrap();
    let vlog = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        g.results.get("usb_reader").map(String::as_str),
        Some("0"),
        "{}",
        g.serial
    );
    assert!(vlog.contains("TLS handshake refused"), "{vlog}");
    assert!(!vlog.contains("panicked"), "{vlog}");
}

/// Two cards of the files backend (cert1 and cert2 of testkit's identities) for one vccid, and
/// their certificates.
fn two_cards(dir: &Path) -> ([String; 2], [PathBuf; 2]) {
    testkit::openssl_identities(dir).unwrap();
    let d = dir.display();
    let card = |n: usize| {
        format!("emulated,backend=files,cert1={d}/cert{n}.crt.pem,key1={d}/cert{n}.key.pem")
    };
    (
        [card(1), card(2)],
        [dir.join("cert1.crt.pem"), dir.join("cert2.crt.pem")],
    )
}

/// vccid with the two cards of [`two_cards`] and these transport options.
fn vccid_with_two_cards(args: &[&str], cards: &[String; 2]) -> Child {
    Command::new(VCCID)
        .args(args)
        .args(["--card", &cards[0], "--card", &cards[1]])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The guest saw `n` USB smart-card readers (interfaces of class 0x0B).
fn assert_usb_readers(g: &Guest, n: usize) {
    let r = g
        .results
        .get("readers_with_card")
        .cloned()
        .unwrap_or_default();
    assert!(
        r.ends_with(&format!("usb_readers={n}")),
        "{r}\n{}",
        g.serial
    );
}

/// A port whose successor is free too (two readers listen on consecutive ports).
fn two_free_ports() -> u16 {
    for _ in 0..50 {
        let p = free_port().unwrap();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no two consecutive free ports");
}

/// The guest (e2e.readers=2) listed two readers with a card each and signed with each; with
/// `in_order`, reader r holds certificate r, else each certificate signed in one reader.
fn assert_two_readers_signed(g: &Guest, certs: &[PathBuf; 2], in_order: bool) {
    let r = |k: &str| g.results.get(k).cloned().unwrap_or_default();
    assert!(r("readers_with_card").starts_with("2 "), "{}", g.serial);
    assert_ne!(r("reader_0"), r("reader_1"), "{}", g.serial);
    let mut signed_by = Vec::new();
    for i in 0..2 {
        assert_eq!(r(&format!("sign_{i}")), "1", "{}", g.serial);
        let dir = tempfile::tempdir().unwrap();
        let (data, sig) = (dir.path().join("data"), dir.path().join("sig"));
        std::fs::write(&data, &g.blobs[&format!("data_{i}")]).unwrap();
        std::fs::write(&sig, &g.blobs[&format!("sig_{i}")]).unwrap();
        let which: Vec<usize> = (0..2)
            .filter(|c| testkit::verify_sha256(&certs[*c], &data, &sig).is_ok())
            .collect();
        assert_eq!(
            which.len(),
            1,
            "reader {i}'s signature: {which:?}\n{}",
            g.serial
        );
        signed_by.push(which[0]);
    }
    if in_order {
        assert_eq!(signed_by, [0, 1], "{}", g.serial);
    } else {
        signed_by.sort();
        assert_eq!(signed_by, [0, 1], "one card per reader\n{}", g.serial);
    }
}

/// Two cards in one vccid, two usbredir readers (ports P and P+1) in one guest (issue #14).
#[test]
fn two_usbredir_readers_in_one_guest_each_card_signs() {
    let data = tempfile::tempdir().unwrap();
    let (cards, certs) = two_cards(data.path());
    let port = two_free_ports();
    let mut v = vccid_with_two_cards(&["--usbredir", &format!("127.0.0.1:{port}")], &cards);
    let mut devices = vec!["-device".to_string(), "qemu-xhci,id=hc".into()];
    for (i, p) in [port, port + 1].iter().enumerate() {
        devices.extend([
            "-chardev".into(),
            format!("socket,id=cc{i},host=127.0.0.1,port={p},reconnect=1,nodelay=on"),
            "-device".into(),
            format!("usb-redir,chardev=cc{i},bus=hc.0"),
        ]);
    }
    let g = boot_with(&devices, "e2e.readers=2", |_| {});
    testkit::kill(&mut v, "vccid").unwrap();
    assert_usb_readers(&g, 2);
    assert_two_readers_signed(&g, &certs, false);
}

/// One USB reader with two slots (CCID bMaxSlotIndex 1, `--one-reader`) that the guest's
/// libccid drives: pcscd names the slots "… 00 00" and "… 00 01" of the one reader.
#[test]
fn one_usb_reader_with_two_slots_in_the_guest() {
    let data = tempfile::tempdir().unwrap();
    let (cards, certs) = two_cards(data.path());
    let port = free_port().unwrap();
    let mut v = vccid_with_two_cards(
        &["--usbredir", &format!("127.0.0.1:{port}"), "--one-reader"],
        &cards,
    );
    let g = boot_with(&usbredir_devices(port, "xhci"), "e2e.readers=2", |_| {});
    testkit::kill(&mut v, "vccid").unwrap();
    assert_usb_readers(&g, 1);
    let r = |k: &str| g.results.get(k).cloned().unwrap_or_default();
    let (a, b) = (r("reader_0"), r("reader_1"));
    assert!(
        a.ends_with(" 00 00\"") && b.ends_with(" 00 01\"") && a[..a.len() - 4] == b[..b.len() - 4],
        "two slots of one reader: {a} / {b}\n{}",
        g.serial
    );
    // Slot 0 holds card0 (cert1), slot 1 card1 (cert2).
    assert_two_readers_signed(&g, &certs, true);
}

/// `--usbip` with two cards exports bus ids 1-1 and 1-2; the guest's kernel attaches both
/// (over QEMU's user-mode network: two importers at once) and each card signs.
#[test]
fn usbip_exports_two_bus_ids_the_guest_attaches() {
    let data = tempfile::tempdir().unwrap();
    let (cards, certs) = two_cards(data.path());
    let port = free_port().unwrap();
    let mut v = vccid_with_two_cards(&["--usbip", &format!("127.0.0.1:{port}")], &cards);
    testkit::wait_for("vccid --usbip", Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .unwrap();
    let devices = [
        "-netdev".to_string(),
        "user,id=n0".into(),
        "-device".into(),
        "virtio-net-pci,netdev=n0".into(),
    ];
    let g = boot_with(
        &devices,
        &format!(
            "e2e.usbip=3 e2e.usbipserver=10.0.2.2 e2e.usbipport={port} e2e.busids=1-1,1-2 \
             e2e.readers=2"
        ),
        |_| {},
    );
    testkit::kill(&mut v, "vccid").unwrap();
    let r = |k: &str| g.results.get(k).cloned().unwrap_or_default();
    assert!(r("usbip_attach").starts_with("2 "), "{}", g.serial);
    assert_usb_readers(&g, 2);
    // Bus id 1-1 is card0's reader, 1-2 card1's; the guest may number them either way.
    assert_two_readers_signed(&g, &certs, false);
}

/// Issue #15's service: ONE `vccid serve` with eight cards. Four generated CAC cards in four
/// vpcd readers of a private pcscd (four different serials and subjects for OpenSC), two in
/// usbredir readers on unix sockets and one in a USB/IP export, all three in one guest (each
/// signs; each signature verifies with that card's own certificate), and a passthru card fed
/// by our vscclient in a fifth vpcd reader.
#[test]
fn one_serve_eight_cards_vpcd_usbredir_usbip_passthru() {
    let pcscd = testkit::PrivatePcscd::start_with_vpcd_entries(3).expect("private pcscd starts");
    let dir = pcscd.dir.path().to_path_buf();
    let state = dir.join("state");
    let (usbip, vsc) = (free_port().unwrap(), free_port().unwrap());
    let db = dir.join("nss");
    std::fs::create_dir(&db).unwrap();
    testkit::nss_db(&db, None).unwrap();
    let mut cfg = format!(
        "[service]\nstate_dir = \"{}\"\ncontrol = \"{}\"\n",
        state.display(),
        dir.join("control.sock").display()
    );
    for c in ["v0", "v1", "v2", "v3", "g0", "g1", "u0"] {
        cfg += &format!("\n[[card]]\nid = \"{c}\"\n");
    }
    cfg += &format!("\n[[card]]\nid = \"p0\"\nkind = \"passthru\"\nlisten = \"127.0.0.1:{vsc}\"\n");
    for (i, c) in ["v0", "v1", "v2", "v3", "p0"].iter().enumerate() {
        cfg += &format!(
            "\n[[reader]]\nid = \"pcsc{i}\"\ntransport = \"vpcd\"\naddress = \"127.0.0.1:{}\"\ncards = [\"{c}\"]\n",
            35963 + i
        );
    }
    for c in ["g0", "g1"] {
        cfg += &format!(
            "\n[[reader]]\nid = \"vm-{c}\"\ntransport = \"usbredir\"\naddress = \"unix:{}\"\ncards = [\"{c}\"]\n",
            dir.join(format!("{c}.sock")).display()
        );
    }
    cfg += &format!(
        "\n[[reader]]\nid = \"vm-u0\"\ntransport = \"usbip\"\naddress = \"127.0.0.1:{usbip}\"\ncards = [\"u0\"]\n"
    );
    let file = dir.join("vccid.toml");
    std::fs::write(&file, &cfg).unwrap();
    let mut pcscd = pcscd;
    let mut serve = pcscd.command(VCCID);
    serve.args(["serve", "--config"]).arg(&file);
    pcscd.spawn("vccid", serve).unwrap();
    let mut client = pcscd.command(VSCCLIENT);
    client
        .arg("-e")
        .arg(format!(
            "db=\"sql:{}\" use_hw=no soft=(,Test,CAC,,cert1,cert2,cert3)",
            db.display()
        ))
        .args(["127.0.0.1", &vsc.to_string()]);
    pcscd.spawn("vscclient", client).unwrap();
    for i in 0..5 {
        if let Err(e) = pcscd.wait_card(i, Duration::from_secs(60)) {
            panic!("{e}\nvccid:\n{}", pcscd.child_log("vccid"));
        }
    }
    // Four emulated cards on vpcd: four serial numbers, four subjects.
    let mut serials = std::collections::BTreeSet::new();
    for (i, c) in ["v0", "v1", "v2", "v3"].iter().enumerate() {
        let o = pcscd
            .command("pkcs15-tool")
            .args(["--reader", &i.to_string(), "-D"])
            .output_within(testkit::TOOL_TIMEOUT)
            .unwrap();
        let t = text(&o);
        let serial = t
            .lines()
            .find_map(|l| l.trim().strip_prefix("Serial number"))
            .map(|s| s.trim_start_matches([' ', ':']).to_string())
            .unwrap_or_default();
        assert!(!serial.is_empty(), "{t}");
        serials.insert(serial);
        let subject = testkit::output(
            Command::new("openssl")
                .args(["x509", "-noout", "-subject", "-in"])
                .arg(state.join(format!("cards/{c}/cert1.crt.pem"))),
            testkit::TOOL_TIMEOUT,
            "openssl x509",
        )
        .unwrap();
        assert!(
            text(&subject).contains(&format!("CN = {c}")),
            "{}",
            text(&subject)
        );
    }
    assert_eq!(serials.len(), 4, "{serials:?}");
    // The passthru card: vscclient's NSS card in pcsc4.
    let n = text(
        &pcscd
            .command("opensc-tool")
            .args(["--reader", "4", "-n"])
            .output_within(testkit::TOOL_TIMEOUT)
            .unwrap(),
    );
    assert!(n.contains("Common Access Card"), "{n}");
    // The guest: two usbredir readers on the unix sockets, the USB/IP export over QEMU's
    // user-mode network (QEMU runs in the namespace where the export listens).
    let mut devices = vec!["-device".to_string(), "qemu-xhci,id=hc".into()];
    for (i, c) in ["g0", "g1"].iter().enumerate() {
        devices.extend([
            "-chardev".into(),
            format!(
                "socket,id=cc{i},path={},reconnect=1",
                dir.join(format!("{c}.sock")).display()
            ),
            "-device".into(),
            format!("usb-redir,chardev=cc{i},bus=hc.0"),
        ]);
    }
    devices.extend([
        "-netdev".into(),
        "user,id=n0".into(),
        "-device".into(),
        "virtio-net-pci,netdev=n0".into(),
    ]);
    let g = boot_cmd(
        pcscd.command("qemu-system-x86_64"),
        &devices,
        &format!(
            "e2e.usbip=3 e2e.usbipserver=10.0.2.2 e2e.usbipport={usbip} e2e.busids=1-1 \
             e2e.readers=3"
        ),
        |_| {},
    );
    let r = |k: &str| g.results.get(k).cloned().unwrap_or_default();
    assert!(r("usbip_attach").starts_with("1 "), "{}", g.serial);
    assert_usb_readers(&g, 3);
    let certs: Vec<PathBuf> = ["g0", "g1", "u0"]
        .iter()
        .map(|c| state.join(format!("cards/{c}/cert1.crt.pem")))
        .collect();
    let mut signed_by = Vec::new();
    for i in 0..3 {
        assert_eq!(r(&format!("sign_{i}")), "1", "{}", g.serial);
        let d = tempfile::tempdir().unwrap();
        let (data, sig) = (d.path().join("data"), d.path().join("sig"));
        std::fs::write(&data, &g.blobs[&format!("data_{i}")]).unwrap();
        std::fs::write(&sig, &g.blobs[&format!("sig_{i}")]).unwrap();
        let which: Vec<usize> = (0..3)
            .filter(|c| testkit::verify_sha256(&certs[*c], &data, &sig).is_ok())
            .collect();
        assert_eq!(which.len(), 1, "reader {i}: {which:?}\n{}", g.serial);
        signed_by.push(which[0]);
    }
    signed_by.sort();
    assert_eq!(signed_by, [0, 1, 2], "each card signed in its own reader");
    let log = pcscd.child_log("vccid");
    assert!(!log.contains("panicked"), "{log}");
}

/// `vccid serve` at run time, seen by a guest (issue #15): a second usbredir reader added and
/// removed through the control socket while the guest uses the first, which is not disturbed
/// (no disconnection, a second signature), then the first reader's card ejected.
#[test]
fn serve_adds_and_removes_a_reader_while_the_guest_uses_another() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (vm1, vm2, socket) = (
        d.join("vm1.sock"),
        d.join("vm2.sock"),
        d.join("control.sock"),
    );
    let file = d.join("vccid.toml");
    std::fs::write(
        &file,
        format!(
            "[service]\nstate_dir = \"{}\"\ncontrol = \"{}\"\n\n\
             [[card]]\nid = \"alice\"\n\n[[card]]\nid = \"bob\"\nephemeral = true\n\n\
             [[reader]]\nid = \"vm1\"\ntransport = \"usbredir\"\naddress = \"unix:{}\"\n\
             cards = [\"alice\"]\n",
            d.join("state").display(),
            socket.display(),
            vm1.display()
        ),
    )
    .unwrap();
    let log = d.join("vccid.log");
    let mut serve = Command::new(VCCID)
        .args(["serve", "--config"])
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    testkit::wait_for("the control socket", Duration::from_secs(30), || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    })
    .unwrap();
    let ctl = |args: &[&str]| {
        let o = Command::new(VCCID)
            .args(["ctl", "--socket"])
            .arg(&socket)
            .args(args)
            .output_within(testkit::TOOL_TIMEOUT)
            .unwrap();
        assert!(o.status.success(), "vccid ctl {args:?}: {}", text(&o));
    };
    let mut events = Command::new(VCCID)
        .args(["ctl", "--socket"])
        .arg(&socket)
        .arg("events")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let events_out = events.stdout.take().unwrap();
    let seen = std::thread::spawn(move || {
        std::io::BufRead::lines(std::io::BufReader::new(events_out))
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    // vm2's socket does not exist yet: QEMU's chardev keeps trying (reconnect=1).
    let mut devices = vec!["-device".to_string(), "qemu-xhci,id=hc".into()];
    for (i, path) in [&vm1, &vm2].iter().enumerate() {
        devices.extend([
            "-chardev".into(),
            format!("socket,id=cc{i},path={},reconnect=1", path.display()),
            "-device".into(),
            format!("usb-redir,chardev=cc{i},bus=hc.0"),
        ]);
    }
    let add = format!("unix:{}", vm2.display());
    let g = boot_with(&devices, "e2e.hotplug=1", |what| match what {
        "add-reader" => ctl(&[
            "reader",
            "add",
            "vm2",
            "--transport",
            "usbredir",
            "--address",
            &add,
            "--card",
            "bob",
        ]),
        "remove-reader" => ctl(&["reader", "remove", "vm2"]),
        "eject" => ctl(&["card", "eject", "vm1"]),
        _ => {}
    });
    testkit::kill(&mut events, "vccid ctl events").unwrap();
    testkit::terminate(&mut serve, Duration::from_secs(5), "vccid serve").unwrap();
    // Up to the eject: the guest powers off after it, which disconnects vm1 at last.
    let events: Vec<String> = seen
        .join()
        .unwrap()
        .into_iter()
        .take_while(|l| !(l.contains("CARD_EJECTED") && l.contains("\"card\":\"alice\"")))
        .collect();
    let r = |k: &str| g.results.get(k).cloned().unwrap_or_default();
    let vlog = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(r("sign"), "1", "{}\n{vlog}", g.serial);
    assert_eq!(r("hotplug_added"), "1", "{}\n{vlog}", g.serial);
    assert_eq!(r("hotplug_removed"), "1", "{}\n{vlog}", g.serial);
    assert_eq!(r("sign_after"), "1", "{}\n{vlog}", g.serial);
    assert_eq!(r("eject_seen"), "1", "{}\n{vlog}", g.serial);
    let host = |ev: &str, slot: &str| {
        events
            .iter()
            .filter(|l| l.contains(ev) && l.contains(&format!("\"slot\":\"{slot}\"")))
            .count()
    };
    assert_eq!(host("HOST_CONNECTED", "vm2"), 1, "{events:?}");
    assert_eq!(host("HOST_DISCONNECTED", "vm2"), 1, "{events:?}");
    assert_eq!(
        host("HOST_DISCONNECTED", "vm1"),
        0,
        "vm1's guest was disturbed: {events:?}"
    );
}
