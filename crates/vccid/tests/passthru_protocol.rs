//! `vccid --card passthru` against a raw VSCard client written here, byte by byte, and a fake
//! vpcd on the other side: QEMU's answers (qemu-ccid.md §5.1), bad input, and a client that
//! vanishes with an APDU outstanding.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use vscard::{Decoder, ErrorCode, Frame, Message, MsgType};

const VCCID: &str = env!("CARGO_BIN_EXE_vccid");

struct Host {
    child: Child,
    vscard_port: u16,
    vpcd: TcpListener,
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Err(e) = testkit::kill(&mut self.child, "vccid") {
            eprintln!("{e}");
        }
    }
}

fn host() -> Host {
    let vpcd = TcpListener::bind("127.0.0.1:0").unwrap();
    let vscard_port = testkit::free_port().unwrap();
    let child = Command::new(VCCID)
        .args(["--vpcd", &vpcd.local_addr().unwrap().to_string(), "--card"])
        .arg(format!("passthru,listen=127.0.0.1:{vscard_port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Host {
        child,
        vscard_port,
        vpcd,
    }
}

struct Client {
    s: TcpStream,
    dec: Decoder,
}

impl Client {
    fn connect(h: &Host) -> Client {
        for _ in 0..100 {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", h.vscard_port)) {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                return Client {
                    s,
                    dec: Decoder::new(),
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("vccid never listened");
    }
    fn send(&mut self, f: Frame) {
        self.s.write_all(&f.encode().unwrap()).unwrap();
    }
    fn recv(&mut self) -> Frame {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(f) = self.dec.next_frame().unwrap() {
                return f;
            }
            let n = self.s.read(&mut buf).unwrap();
            assert!(n > 0, "vccid closed the connection");
            self.dec.feed(&buf[..n]);
        }
    }
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 64];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
}

fn f(rid: u32, m: Message) -> Frame {
    Frame::new(rid, m)
}
fn err(rid: u32, c: ErrorCode) -> Frame {
    f(rid, Message::Error(c))
}
const CAC_ATR: [u8; 15] = [
    0x3B, 0x7A, 0x18, 0, 0, 0x73, 0x66, 0x74, 0x65, 0x20, 0x63, 0x64, 0x31, 0x34, 0x34,
];

#[test]
fn answers_every_message_as_qemu_does() {
    let h = host();
    let mut c = Client::connect(&h);
    c.send(f(
        0,
        Message::Init {
            magic: *b"XXXX",
            version: 7,
            capabilities: vec![],
        },
    ));
    assert_eq!(c.recv(), f(0xFFFF_FFFF, Message::init()));
    c.send(f(9, Message::ReaderAdd(b"r".to_vec())));
    assert_eq!(c.recv(), err(0, ErrorCode::SUCCESS));
    c.send(f(3, Message::Atr(vec![0x3B, 0x05, 0xAA])));
    assert_eq!(c.recv(), err(3, ErrorCode::GENERAL_ERROR));
    for m in [
        Message::Flush,
        Message::FlushComplete,
        Message::Unknown(MsgType(42), vec![1, 2]),
    ] {
        c.send(f(3, m));
        assert_eq!(c.recv(), err(3, ErrorCode::GENERAL_ERROR));
    }
    // A malformed Error payload (2 bytes): GENERAL_ERROR, and the stream goes on.
    c.s.write_all(&[0, 0, 0, 2, 0, 0, 0, 5, 0, 0, 0, 2, 0, 1])
        .unwrap();
    assert_eq!(c.recv(), err(5, ErrorCode::GENERAL_ERROR));
    // An APDU with nothing outstanding gets no reply: the next reply is ReaderRemove's.
    c.send(f(0, Message::Apdu(vec![0x90, 0x00])));
    c.send(f(4, Message::ReaderRemove));
    assert_eq!(c.recv(), err(4, ErrorCode::SUCCESS));
    // Coalesced and split frames.
    let mut two = f(0, Message::ReaderAdd(vec![])).encode().unwrap();
    two.extend(f(0, Message::Atr(CAC_ATR.to_vec())).encode().unwrap());
    for b in two {
        c.s.write_all(&[b]).unwrap();
    }
    assert_eq!(c.recv(), err(0, ErrorCode::SUCCESS));
    assert_eq!(c.recv(), err(0, ErrorCode::SUCCESS));
}

#[test]
fn an_oversized_length_closes_only_that_connection() {
    let h = host();
    let mut c = Client::connect(&h);
    // type APDU, reader 0, length 70000: refused from the header alone.
    c.s.write_all(&[0, 0, 0, 7, 0, 0, 0, 0, 0, 1, 0x11, 0x70])
        .unwrap();
    assert!(c.closed());
    let mut c2 = Client::connect(&h);
    c2.send(f(0, Message::init()));
    assert_eq!(c2.recv(), f(0xFFFF_FFFF, Message::init()));
}

fn vpcd_ask(v: &mut TcpStream, msg: &[u8]) -> Option<Vec<u8>> {
    let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(msg);
    v.write_all(&framed).ok()?;
    let mut len = [0u8; 2];
    v.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    v.read_exact(&mut body).ok()?;
    Some(body)
}

#[test]
fn apdus_relay_and_a_vanished_client_fails_the_pending_one() {
    let h = host();
    let mut c = Client::connect(&h);
    c.send(f(0, Message::ReaderAdd(vec![])));
    assert_eq!(c.recv(), err(0, ErrorCode::SUCCESS));
    c.send(f(0, Message::Atr(CAC_ATR.to_vec())));
    assert_eq!(c.recv(), err(0, ErrorCode::SUCCESS));
    // The card is present: vccid connects to (our fake) vpcd.
    let (mut v, _) = testkit::accept_within(
        &h.vpcd,
        Duration::from_secs(20),
        "vccid's vpcd connection (card present)",
    )
    .unwrap();
    v.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(vpcd_ask(&mut v, &[0x04]).unwrap(), CAC_ATR.to_vec());
    // One APDU relayed both ways.
    let (tx, rx) = std::sync::mpsc::channel();
    let mut v2 = v.try_clone().unwrap();
    std::thread::spawn(move || {
        tx.send(vpcd_ask(&mut v2, &[0x00, 0xA4, 0x04, 0x00]))
            .unwrap()
    });
    assert_eq!(c.recv(), f(0, Message::Apdu(vec![0x00, 0xA4, 0x04, 0x00])));
    c.send(f(0, Message::Apdu(vec![0x6A, 0x82])));
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        Some(vec![0x6A, 0x82])
    );
    // The next APDU is outstanding when the client vanishes: it fails with 6F00, then the
    // card is removed (vpcd's connection closes).
    let (tx, rx) = std::sync::mpsc::channel();
    let mut v3 = v.try_clone().unwrap();
    std::thread::spawn(move || {
        tx.send(vpcd_ask(&mut v3, &[0x00, 0xB0, 0x00, 0x00]))
            .unwrap()
    });
    assert_eq!(c.recv(), f(0, Message::Apdu(vec![0x00, 0xB0, 0x00, 0x00])));
    drop(c);
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        Some(vec![0x6F, 0x00])
    );
    let mut b = [0u8; 8];
    assert!(
        matches!(v.read(&mut b), Ok(0) | Err(_)),
        "vpcd link closed: card removed"
    );
}
