//! `vccid --usbip` against testkit's vhci side, byte by byte (transports.md §2): the device
//! list and import records, enumeration, IN URBs held pending and completed out of order,
//! the unlink rules, one importer at a time, an importer that vanishes with URBs pending, and
//! bad input that closes only its own connection.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use testkit::vhci::{self, Importer, Ret};

const VCCID: &str = env!("CARGO_BIN_EXE_vccid");
const NO_SETUP: [u8; 8] = [0; 8];
const CAC_ATR: &str = "3B 7A 18 00 00 73 66 74 65 20 63 64 31 34 34";

struct Server {
    child: Child,
    addr: SocketAddr,
    log: tempfile::NamedTempFile,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(e) = testkit::kill(&mut self.child, "vccid --usbip") {
            eprintln!("{e}");
        }
    }
}

impl Server {
    fn start() -> Server {
        let data = tempfile::tempdir().unwrap();
        let port = testkit::free_port().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(VCCID)
            .args(["--usbip", &addr.to_string(), "--data-dir"])
            .arg(data.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        let mut s = Server {
            child,
            addr,
            log,
            _data: data,
        };
        // Our vccid says it exports on this address (not some other program that took the
        // port between free_port and the bind), and it accepts connections.
        let listening = format!("usbip: exporting the reader addr={addr} ");
        let ready = testkit::wait_for("vccid --usbip listening", Duration::from_secs(20), || {
            matches!(s.child.try_wait(), Ok(None))
                && s.log().contains(&listening)
                && TcpStream::connect(addr).is_ok()
        });
        if let Err(e) = ready {
            panic!("{e}\nvccid log:\n{}", s.log());
        }
        s
    }
    fn command(&mut self, c: &str) {
        writeln!(self.child.stdin.as_mut().unwrap(), "{c}").unwrap();
    }
    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
    fn import(&self) -> (Vec<u8>, Importer) {
        vhci::import(self.addr, "1-1")
            .unwrap_or_else(|e| panic!("{e}\nvccid log:\n{}", self.log()))
            .expect("the import is accepted")
    }
}

fn recv(imp: &mut Importer) -> Ret {
    imp.recv(Duration::from_secs(10))
        .unwrap()
        .expect("a reply within 10 s")
}

fn nothing_more(imp: &mut Importer) {
    let r = imp.recv(Duration::from_millis(400)).unwrap();
    assert_eq!(r, None, "no reply expected");
}

fn ccid(ty: u8, seq: u8, data: &[u8]) -> Vec<u8> {
    let mut v = vec![ty];
    v.extend_from_slice(&(data.len() as u32).to_le_bytes());
    v.extend_from_slice(&[0, seq, 0, 0, 0]);
    v.extend_from_slice(data);
    v
}

/// Enumerates the device as Linux does after vhci's local SET_ADDRESS.
fn enumerate(imp: &mut Importer) {
    let seq = imp.control([0x80, 6, 0, 1, 0, 0, 64, 0], &[]).unwrap();
    let r = recv(imp);
    assert_eq!((r.command, r.seqnum, r.status), (3, seq, 0));
    assert_eq!(
        apdu::hex::spaced(&r.data[..12]),
        "12 01 10 01 00 00 00 40 E6 08 33 44"
    );
    let seq = imp.control([0x80, 6, 0, 2, 0, 0, 0xFF, 0], &[]).unwrap();
    let r = recv(imp);
    assert_eq!((r.seqnum, r.data[1], r.data.len()), (seq, 2, 0x5D));
    let seq = imp.control([0, 9, 1, 0, 0, 0, 0, 0], &[]).unwrap();
    let r = recv(imp);
    assert_eq!((r.seqnum, r.status, r.actual_length), (seq, 0, 0));
}

#[test]
fn device_list_and_import_records() {
    let s = Server::start();
    let list = vhci::devlist(s.addr).unwrap();
    assert_eq!(
        apdu::hex::spaced(&list[..12]),
        "01 11 00 05 00 00 00 00 00 00 00 01"
    );
    assert_eq!(list.len(), 12 + 312 + 4);
    let rec = &list[12..324];
    assert_eq!(&rec[0x100..0x104], b"1-1\0");
    // busnum 1, devnum 2, full speed, 08E6:4433, class 0/0/0, configuration 1 of 1, one
    // interface of class 0B (smart card).
    assert_eq!(
        apdu::hex::spaced(&rec[0x120..0x138]),
        "00 00 00 01 00 00 00 02 00 00 00 02 08 E6 44 33 00 00 00 00 00 01 01 01"
    );
    assert_eq!(apdu::hex::spaced(&list[324..]), "0B 00 00 00");
    let (record, imp) = s.import();
    assert_eq!(record, rec, "OP_REP_IMPORT carries the same record");
    // While imported: the list still answers, a second importer and an unknown bus id get
    // status 1.
    assert_eq!(vhci::devlist(s.addr).unwrap(), list);
    assert_eq!(vhci::import(s.addr, "1-1").unwrap().err(), Some(1));
    assert_eq!(vhci::import(s.addr, "9-9").unwrap().err(), Some(1));
    drop(imp);
    assert!(
        s.log()
            .contains("import refused: the device is in use by 127.0.0.1:"),
        "{}",
        s.log()
    );
    assert!(s.log().contains("unknown bus id \"9-9\""), "{}", s.log());
}

#[test]
fn pending_urbs_out_of_order_completion_and_unlink() {
    let mut s = Server::start();
    let (_, mut imp) = s.import();
    enumerate(&mut imp);
    // The first interrupt IN reports the card present (NotifySlotChange, CCID §6.3.1).
    let intr = imp.submit(1, true, NO_SETUP, &[], 8).unwrap();
    let r = recv(&mut imp);
    assert_eq!(
        (r.seqnum, apdu::hex::spaced(&r.data)),
        (intr, "50 03".into())
    );
    // The next one stays pending: nothing happens while the card sits there.
    let intr = imp.submit(1, true, NO_SETUP, &[], 8).unwrap();
    let bulk = imp.submit(2, true, NO_SETUP, &[], 65546).unwrap();
    nothing_more(&mut imp);
    // PowerOn: the OUT is acknowledged; the bulk IN (submitted after the interrupt IN)
    // completes first with the ATR.
    let out = imp
        .submit(3, false, NO_SETUP, &ccid(0x62, 1, &[]), 0)
        .unwrap();
    let mut got = [recv(&mut imp), recv(&mut imp)];
    got.sort_by_key(|r| r.seqnum);
    assert_eq!((got[0].seqnum, got[0].actual_length), (bulk, 25));
    assert_eq!(
        apdu::hex::spaced(&got[0].data),
        format!("80 0F 00 00 00 00 01 00 00 00 {CAC_ATR}")
    );
    assert_eq!(
        (got[1].seqnum, got[1].actual_length, got[1].status),
        (out, 10, 0)
    );
    // SELECT of the CAC applet through XfrBlock.
    let bulk = imp.submit(2, true, NO_SETUP, &[], 65546).unwrap();
    imp.submit(
        3,
        false,
        NO_SETUP,
        &ccid(0x6F, 2, &apdu::hex::h("00A4040007A000000116DB00")),
        0,
    )
    .unwrap();
    let mut data = None;
    for _ in 0..2 {
        let r = recv(&mut imp);
        if r.seqnum == bulk {
            data = Some(r.data);
        }
    }
    let data = data.expect("the XfrBlock's answer");
    assert_eq!(&data[..1], &[0x80]);
    assert!(
        matches!(&data[data.len() - 2..], [0x90, 0] | [0x61, _]),
        "{data:02X?}"
    );
    // A bulk IN with nothing to say, unlinked: −ECONNRESET with the unlink's own seqnum.
    let victim = imp.submit(2, true, NO_SETUP, &[], 65546).unwrap();
    nothing_more(&mut imp);
    let ul = imp.unlink(victim).unwrap();
    let r = recv(&mut imp);
    assert_eq!((r.command, r.seqnum, r.status), (4, ul, -104));
    // Unlink of a URB already answered: status 0.
    let ul = imp.unlink(bulk).unwrap();
    let r = recv(&mut imp);
    assert_eq!((r.command, r.seqnum, r.status), (4, ul, 0));
    // Card removal on the host: the interrupt IN posted long ago completes (slot 0 absent,
    // changed); the unlinked URB never does.
    s.command("remove");
    let r = recv(&mut imp);
    assert_eq!(
        (r.seqnum, apdu::hex::spaced(&r.data)),
        (intr, "50 02".into())
    );
    let intr = imp.submit(1, true, NO_SETUP, &[], 8).unwrap();
    s.command("insert");
    let r = recv(&mut imp);
    assert_eq!(
        (r.seqnum, apdu::hex::spaced(&r.data)),
        (intr, "50 03".into())
    );
    let bulk = imp.submit(2, true, NO_SETUP, &[], 65546).unwrap();
    imp.submit(3, false, NO_SETUP, &ccid(0x62, 3, &[]), 0)
        .unwrap();
    let mut seen = [recv(&mut imp).seqnum, recv(&mut imp).seqnum];
    seen.sort();
    assert!(seen.contains(&bulk) && !seen.contains(&victim), "{seen:?}");
    nothing_more(&mut imp);
}

#[test]
fn the_reader_outlives_importers_and_bad_input_closes_only_its_connection() {
    let s = Server::start();
    // An importer that vanishes with an interrupt IN and a bulk IN pending.
    {
        let (_, mut imp) = s.import();
        enumerate(&mut imp);
        imp.submit(1, true, NO_SETUP, &[], 8).unwrap();
        recv(&mut imp);
        imp.submit(1, true, NO_SETUP, &[], 8).unwrap();
        imp.submit(2, true, NO_SETUP, &[], 65546).unwrap();
    }
    // The next importer gets the device (once the server has seen the close) in a fresh
    // state: the card is announced again.
    let mut next = None;
    testkit::wait_for("the device is free again", Duration::from_secs(10), || {
        next = vhci::import(s.addr, "1-1").unwrap().ok();
        next.is_some()
    })
    .unwrap();
    let (_, mut imp) = next.unwrap();
    enumerate(&mut imp);
    imp.submit(1, true, NO_SETUP, &[], 8).unwrap();
    assert_eq!(recv(&mut imp).data, vec![0x50, 0x03]);

    // Bad input on other connections, each closed with a log line naming the peer, while
    // the importer above keeps working.
    let bad_version = {
        let mut c = TcpStream::connect(s.addr).unwrap();
        c.write_all(&apdu::hex::h("0106 8005 00000000")).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut c, &mut b).unwrap_or_else(|e| {
            panic!("waiting 10 s for vccid to close a wrong-version connection: {e}")
        });
        assert!(b.is_empty(), "no reply to a wrong version");
        c.local_addr().unwrap()
    };
    // A truncated request: the server gives up after its operation timeout at worst; the
    // client closing ends it at once.
    {
        let mut c = TcpStream::connect(s.addr).unwrap();
        c.write_all(&apdu::hex::h("0111 80")).unwrap();
    }
    // An importer declaring a transfer beyond the limit: its connection is closed.
    imp.send_raw(&apdu::hex::h(
        "00000001 00000100 00010002 00000000 00000003 00000000 7FFFFFFF 00000000 00000000 00000000 0000000000000000",
    ))
    .unwrap();
    assert!(imp.closed_by_server(Duration::from_secs(5)));
    let mut again = None;
    testkit::wait_for("the device is free again", Duration::from_secs(10), || {
        again = vhci::import(s.addr, "1-1").unwrap().ok();
        again.is_some()
    })
    .unwrap();
    let (_, mut imp) = again.unwrap();
    enumerate(&mut imp);
    // An unknown command code closes that importer too.
    imp.send_raw(&[0, 0, 0, 9].repeat(12)).unwrap();
    assert!(imp.closed_by_server(Duration::from_secs(5)));
    let log = s.log();
    assert!(
        log.contains(&format!("peer={bad_version}")) && log.contains("USB/IP version 0x0106"),
        "{log}"
    );
    assert!(log.contains("declares 2147483647 bytes"), "{log}");
    assert!(log.contains("unknown USB/IP command 9"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    // Still serving.
    assert_eq!(vhci::devlist(s.addr).unwrap().len(), 12 + 312 + 4);
}

#[test]
fn usbip_alongside_usbredir_one_card_two_readers() {
    let data = tempfile::tempdir().unwrap();
    let (redir, ip) = (testkit::free_port().unwrap(), testkit::free_port().unwrap());
    let mut child = Command::new(VCCID)
        .args([
            "--usbredir",
            &format!("127.0.0.1:{redir}"),
            "--usbip",
            &format!("127.0.0.1:{ip}"),
            "--data-dir",
        ])
        .arg(data.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{ip}").parse().unwrap();
    testkit::wait_for("both listeners", Duration::from_secs(20), || {
        TcpStream::connect(addr).is_ok() && TcpStream::connect(("127.0.0.1", redir)).is_ok()
    })
    .unwrap();
    // The USB/IP reader lists and imports ...
    assert_eq!(vhci::devlist(addr).unwrap().len(), 12 + 312 + 4);
    let (_, mut imp) = vhci::import(addr, "1-1").unwrap().unwrap();
    enumerate(&mut imp);
    // ... while the usbredir reader greets its host with a hello (type 0).
    let mut r = TcpStream::connect(("127.0.0.1", redir)).unwrap();
    r.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hello = [0u8; 16];
    std::io::Read::read_exact(&mut r, &mut hello).unwrap();
    assert_eq!(&hello[..4], &[0, 0, 0, 0]);
    // The attach lines come after the listeners (vccid asks the installed QEMU its version
    // first): read them as they come, with a deadline, then stop vccid.
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut printed = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !(printed.contains("usbip attach -r 127.0.0.1 -b 1-1") && printed.contains("usb-redir")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => printed.push_str(&(l + "\n")),
            Err(_) => break,
        }
    }
    testkit::kill(&mut child, "vccid").unwrap();
    assert!(
        printed.contains("usbip attach -r 127.0.0.1 -b 1-1") && printed.contains("usb-redir"),
        "{printed}"
    );
}

/// The next importer of 1-1 once the server has let the last one go, enumerated and
/// answering an interrupt IN (the slot change message of the card it announces).
fn next_importer(s: &Server) -> Importer {
    let mut next = None;
    testkit::wait_for("the device is free again", Duration::from_secs(15), || {
        // Refused (in use) or closed on arrival (connections past the limit not yet gone).
        next = vhci::import(s.addr, "1-1").ok().and_then(Result::ok);
        next.is_some()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.log()));
    let (_, mut imp) = next.unwrap();
    enumerate(&mut imp);
    imp.submit(1, true, NO_SETUP, &[], 8).unwrap();
    assert_eq!(recv(&mut imp).data, vec![0x50, 0x03]);
    imp
}

/// Sends `bytes` on a fresh connection, shuts the write side and returns all the server
/// sent before it closed.
fn exchange(s: &Server, bytes: &[u8]) -> Vec<u8> {
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.write_all(bytes).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut b = Vec::new();
    std::io::Read::read_to_end(&mut c, &mut b)
        .unwrap_or_else(|e| panic!("waiting for vccid to close after {bytes:02X?}: {e}"));
    b
}

/// A CMD_SUBMIT header (USB/IP §"CMD_SUBMIT") with the given transfer length and ISO packet
/// count, for the device the first import gets (bus 1, device 2).
fn submit_header(seq: u32, dir_in: bool, length: u32, packets: u32) -> Vec<u8> {
    let mut v = Vec::new();
    for w in [
        1,
        seq,
        0x0001_0002,
        u32::from(dir_in),
        2,
        0,
        length,
        0,
        packets,
        0,
    ] {
        v.extend_from_slice(&u32::to_be_bytes(w));
    }
    v.extend_from_slice(&NO_SETUP);
    v
}

#[test]
fn hostile_usbip_peers_get_the_protocols_answer_and_the_next_importer_is_served() {
    let s = Server::start();
    let mut holder = next_importer(&s);

    // Operation codes a client does not send (a reply's, none, all ones): no reply, the
    // connection closed, a log line; as usbipd does with an unknown opcode.
    for op in ["8099", "0003", "0000", "FFFF"] {
        let got = exchange(&s, &apdu::hex::h(&format!("0111 {op} 00000000")));
        assert!(got.is_empty(), "op {op}: {got:02X?}");
    }
    // OP_REQ_IMPORT of bus ids not exported (unknown, 32 bytes without a NUL, not UTF-8):
    // OP_REP_IMPORT with status 1, as usbipd answers.
    let mut odd = [b'1'; 32];
    odd[..3].copy_from_slice(b"1-\xff");
    for busid in [&b"9-9"[..], &[b'x'; 32][..], &odd[..]] {
        let mut req = apdu::hex::h("0111 8003 00000000");
        let mut id = [0u8; 32];
        id[..busid.len()].copy_from_slice(busid);
        req.extend_from_slice(&id);
        let got = exchange(&s, &req);
        assert_eq!(
            apdu::hex::spaced(&got),
            "01 11 00 03 00 00 00 01",
            "{busid:02X?}"
        );
    }
    // Truncated requests, then the close: nothing sent back.
    let import = {
        let mut r = apdu::hex::h("0111 8003 00000000");
        r.extend_from_slice(&[0; 32]);
        r[8..11].copy_from_slice(b"1-1");
        r
    };
    for cut in [1, 3, 7, 9, 20, 39] {
        assert!(exchange(&s, &import[..cut]).is_empty(), "cut at {cut}");
    }
    // A second importer while one is attached: status 1, the first keeps the device.
    assert_eq!(vhci::import(s.addr, "1-1").unwrap().err(), Some(1));
    // Unlinks of URBs that never were (or were answered): RET_UNLINK status 0 (§2.4), the
    // connection goes on.
    for victim in [0, 99, 12_345, u32::MAX] {
        let seq = holder.unlink(victim).unwrap();
        let r = recv(&mut holder);
        assert_eq!((r.command, r.seqnum, r.status), (4, seq, 0), "{victim}");
    }
    // 300 connections left idle while the importer works: past MAX_CONNECTIONS they are
    // closed on arrival, the rest wait for their request; the importer is not disturbed.
    let crowd: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(s.addr).unwrap())
        .collect();
    let seq = holder.control([0x80, 6, 0, 1, 0, 0, 18, 0], &[]).unwrap();
    let r = recv(&mut holder);
    assert_eq!((r.seqnum, r.status, r.data.len()), (seq, 0, 18));
    // The crowd stays until the accept loop has reached it: connections still in the listen
    // backlog when their peers leave would be accepted closed, and never fill the cap.
    testkit::wait_for("the connection cap", Duration::from_secs(30), || {
        s.log()
            .contains("connections already under way; closing this one")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.log()));
    drop(crowd);
    drop(holder);

    // Bad URBs, each on an importer of its own: the connection closed with a log line, the
    // next importer served.
    let bad: [(&str, Vec<u8>); 5] = [
        (
            "an OUT transfer of 4 GiB",
            submit_header(50, false, u32::MAX, 0),
        ),
        (
            "an IN transfer of 2 GiB",
            submit_header(51, true, 0x7FFF_FFFF, 0),
        ),
        ("2^31 ISO packets", submit_header(52, true, 8, 0x7FFF_FFFF)),
        ("65535 ISO packets", submit_header(53, false, 0, 0xFFFF)),
        ("garbage", vec![0xA5; 48]),
    ];
    for (what, bytes) in bad {
        let mut imp = next_importer(&s);
        imp.send_raw(&bytes).unwrap();
        assert!(imp.closed_by_server(Duration::from_secs(5)), "{what}");
    }
    // A URB header cut short, then the importer gone.
    {
        let mut imp = next_importer(&s);
        imp.send_raw(&submit_header(60, true, 8, 0)[..20]).unwrap();
    }
    // An OUT transfer that declares more data than it sends, then the close.
    {
        let mut imp = next_importer(&s);
        let mut v = submit_header(61, false, 60_000, 0);
        v.extend_from_slice(&[0; 100]);
        imp.send_raw(&v).unwrap();
    }
    let mut imp = next_importer(&s);
    let seq = imp.control([0x80, 6, 0, 1, 0, 0, 18, 0], &[]).unwrap();
    assert_eq!(recv(&mut imp).seqnum, seq);

    let log = s.log();
    for line in [
        "usbip: bad operation request: unknown USB/IP operation 0x8099",
        "unknown USB/IP operation 0x0003",
        "unknown USB/IP operation 0xffff",
        "usbip: import of unknown bus id \"9-9\" refused",
        "usbip: bad operation request: closed before a complete request",
        "usbip: import refused: the device is in use by",
        "connections already under way; closing this one",
        "declares 4294967295 bytes",
        "unknown USB/IP command 2779096485",
    ] {
        assert!(log.contains(line), "{line:?} is not in the log:\n{log}");
    }
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(vhci::devlist(s.addr).unwrap().len(), 12 + 312 + 4);
}
