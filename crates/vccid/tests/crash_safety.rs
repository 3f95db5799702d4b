//! Crash safety (issue #17): `vccid serve` is killed with SIGKILL at random moments while it
//! changes a card's persistent state, and after each restart the state must be the one before
//! the change or the one after it, whole: never a mix, never unreadable, and the PIN retry
//! counter never higher than before unless a right PIN was given (a restart that gave tries
//! back would let a PIN be brute-forced by restarting).
//!
//! The service holds a generated PIV card `p` in a USB/IP reader (driven as vhci-hcd and
//! libccid drive it, through testkit's importer) and a generated CAC card `c` in no reader.
//! Each round takes one change, starts it, kills the service after a random delay (up to 1.5
//! times what that change took when it last finished), restarts it and checks:
//! - PIV (its state file `cards/p/piv-state.json`): wrong and right VERIFYs, CHANGE REFERENCE
//!   DATA, GENERATE ASYMMETRIC KEY PAIR (P-256, sometimes RSA-2048) and PUT DATA of a
//!   certificate object over APDUs; `card-set-pin` and `card-enroll import` (key and
//!   certificate together) through the control socket. The file parses, equals the state
//!   before or the state after (a generated key: any key of the algorithm asked, the rest as
//!   before; an imported one: the key and its certificate together), a change that was
//!   answered is there, and the card after the restart answers VERIFY's status with the
//!   file's counter;
//! - CAC (`card-enroll import` of an RSA identity into `cert2`, which goes through the
//!   enrollment journal): `cert2.crt.pem` and `cert2.key.pem` are the old pair or the new one
//!   and the key is the certificate's, with no journal or pending key left; `card-set-pin`:
//!   its state file `cards/c/cac-state.json` holds the old PIN state or the new one, whole;
//! - no temporary file of an interrupted write is left beside any of them.
//!
//! `a_restart_does_not_give_cac_pin_tries_back` serves the CAC card `c` alone and restarts
//! the service between wrong PINs: the counter goes down across restarts and a blocked PIN
//! stays blocked (before the CAC card kept its state, every start gave 3 tries back).
//!
//! The rounds are `CRASH_ROUNDS` (default 40; `scripts/crash-loop.sh` runs 1000) with the
//! seed `CRASH_SEED` (default: from the clock), printed first so that a failure can be
//! replayed.

use card::cac::CacState;
use card::enroll::{certificate_der, certificate_matches, private_key};
use card::keystore::CardKey;
use card::piv::{ManagementKey, State, ALG_3DES};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testkit::vhci;

const VCCID: &str = env!("CARGO_BIN_EXE_vccid");
/// How long one answer may take before the round is declared broken.
const TIMEOUT: Duration = Duration::from_secs(30);
/// YubiKey's factory management key, which the card starts with (README, "The PIV profile").
const MGMT_KEY: [u8; 24] = [
    1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8,
];
const SELECT_PIV: [u8; 10] = [0x00, 0xA4, 0x04, 0x00, 0x05, 0xA0, 0x00, 0x00, 0x03, 0x08];
/// The CAC card's first PKI applet (libcacard.md §1).
const SELECT_CAC: [u8; 12] = [
    0x00, 0xA4, 0x04, 0x00, 0x07, 0xA0, 0x00, 0x00, 0x00, 0x79, 0x01, 0x00,
];

/// splitmix64: a seeded generator, so that a failing run can be replayed with its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pin(&mut self) -> String {
        let len = 6 + self.below(3);
        (0..len)
            .map(|_| char::from(b'0' + self.below(10) as u8))
            .collect()
    }
}

/// A CCID reader over USB/IP, as libccid drives it through vhci-hcd: XfrBlocks on the bulk
/// endpoints, time extensions waited through. Errors are the service going away.
struct Reader {
    imp: vhci::Importer,
    seq: u8,
}

impl Reader {
    /// Imports the reader (retrying while the service starts), powers the card on and selects
    /// the PIV application.
    fn connect(addr: SocketAddr) -> Reader {
        Reader::connect_to(addr, &SELECT_PIV)
    }

    /// Imports the reader, powers the card on and sends `select`, which must succeed.
    fn connect_to(addr: SocketAddr, select: &[u8]) -> Reader {
        let deadline = Instant::now() + TIMEOUT;
        let imp = loop {
            match vhci::import(addr, "1-1") {
                Ok(Ok((_, imp))) => break imp,
                other => {
                    assert!(
                        Instant::now() < deadline,
                        "USB/IP import: {:?}",
                        other.err()
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        let mut r = Reader { imp, seq: 0 };
        let seq = r.imp.control([0, 9, 1, 0, 0, 0, 0, 0], &[]).unwrap();
        r.wait(seq).expect("SET_CONFIGURATION");
        let atr = r.ccid(0x62, &[]).expect("IccPowerOn");
        assert!(atr.len() > 10, "an ATR: {atr:02X?}");
        let sel = r.apdu(select).expect("SELECT");
        assert_eq!(sw(&sel), 0x9000, "SELECT of {select:02X?}");
        r
    }

    fn wait(&mut self, seq: u32) -> Result<vhci::Ret, String> {
        loop {
            let r = self
                .imp
                .recv(TIMEOUT)?
                .ok_or("the connection closed or went silent")?;
            if r.seqnum == seq {
                return if r.status == 0 {
                    Ok(r)
                } else {
                    Err(format!("URB status {}", r.status))
                };
            }
        }
    }

    /// One CCID command and its answer's data.
    fn ccid(&mut self, kind: u8, body: &[u8]) -> Result<Vec<u8>, String> {
        self.seq = self.seq.wrapping_add(1);
        let mut msg = vec![kind];
        msg.extend_from_slice(&(body.len() as u32).to_le_bytes());
        msg.extend_from_slice(&[0, self.seq, 0, 0, 0]);
        msg.extend_from_slice(body);
        let out = self.imp.submit(3, false, [0; 8], &msg, 0)?;
        self.wait(out)?;
        loop {
            let seq = self.imp.submit(2, true, [0; 8], &[], 65_546)?;
            let r = self.wait(seq)?.data;
            if r.len() < 10 || r[6] != self.seq {
                return Err(format!("RDR_to_PC for bSeq {}: {r:02X?}", self.seq));
            }
            // bmCommandStatus 2: a time extension; the answer follows.
            if r[7] >> 6 != 2 {
                if r[7] >> 6 != 0 {
                    return Err(format!("command failed: {r:02X?}"));
                }
                return Ok(r[10..].to_vec());
            }
        }
    }

    /// One APDU; a 61xx answer is collected with GET RESPONSE.
    fn apdu(&mut self, apdu: &[u8]) -> Result<Vec<u8>, String> {
        let mut r = self.ccid(0x6F, apdu)?;
        let mut data = Vec::new();
        while r.len() >= 2 && r[r.len() - 2] == 0x61 {
            let le = r[r.len() - 1];
            data.extend_from_slice(&r[..r.len() - 2]);
            r = self.ccid(0x6F, &[0x00, 0xC0, 0x00, 0x00, le])?;
        }
        data.extend_from_slice(&r);
        Ok(data)
    }

    /// A command of any length, chained (ISO 7816-4 §5.1.1.1) in pieces of 255 bytes.
    fn send(&mut self, ins: u8, p1: u8, p2: u8, data: &[u8]) -> Result<Vec<u8>, String> {
        let chunks: Vec<&[u8]> = data.chunks(255).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let mut a = vec![if last { 0x00 } else { 0x10 }, ins, p1, p2];
            a.push(chunk.len() as u8);
            a.extend_from_slice(chunk);
            let r = self.apdu(&a)?;
            if last || sw(&r) != 0x9000 {
                return Ok(r);
            }
        }
        unreachable!("no data to send")
    }

    /// The management key's external authentication (SP 800-73-4 Part 2 Appendix A.2): a
    /// challenge asked for (81 empty), answered encrypted (82).
    fn authenticate(&mut self) -> Result<(), String> {
        let r = self.apdu(&[0x00, 0x87, ALG_3DES, 0x9B, 0x04, 0x7C, 0x02, 0x81, 0x00])?;
        assert_eq!(sw(&r), 0x9000, "a challenge: {r:02X?}");
        let mut block = r[4..12].to_vec();
        ManagementKey::new(ALG_3DES, &MGMT_KEY)
            .unwrap()
            .encrypt_block(&mut block)
            .unwrap();
        let mut a = vec![0x00, 0x87, ALG_3DES, 0x9B, 0x0C, 0x7C, 0x0A, 0x82, 0x08];
        a.extend_from_slice(&block);
        let r = self.apdu(&a)?;
        assert_eq!(sw(&r), 0x9000, "the management key is accepted");
        Ok(())
    }
}

fn sw(r: &[u8]) -> u16 {
    match r {
        [.., a, b] => u16::from_be_bytes([*a, *b]),
        _ => 0,
    }
}

/// A PIN as VERIFY carries it: padded with FF to 8 bytes.
fn padded(pin: &str) -> Vec<u8> {
    let mut v = pin.as_bytes().to_vec();
    v.resize(8, 0xFF);
    v
}

/// The control socket, as a QMP-shaped client (docs/control.md).
struct Control {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Control {
    fn connect(socket: &Path) -> Control {
        let w = UnixStream::connect(socket).expect("the control socket");
        w.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut r = BufReader::new(w.try_clone().unwrap());
        let mut greeting = String::new();
        r.read_line(&mut greeting).unwrap();
        assert!(greeting.starts_with(r#"{"QMP""#), "{greeting}");
        Control { r, w }
    }

    /// A command's `return`; `Err` when the service went away. An error answer panics: no
    /// command of the test is refused by a live service.
    fn call(&mut self, execute: &str, arguments: Value) -> Result<Value, String> {
        let line = json!({"execute": execute, "arguments": arguments}).to_string();
        self.w
            .write_all(format!("{line}\n").as_bytes())
            .map_err(|e| e.to_string())?;
        loop {
            let mut l = String::new();
            if self.r.read_line(&mut l).map_err(|e| e.to_string())? == 0 {
                return Err("the control socket closed".into());
            }
            let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l:?}"));
            if v.get("event").is_some() {
                continue;
            }
            assert!(v.get("error").is_none(), "{execute}: {v}");
            return Ok(v["return"].clone());
        }
    }
}

/// `vccid serve` with its configuration, started and killed again and again.
struct Service {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    notify: UnixDatagram,
    child: Option<Child>,
    runs: usize,
}

impl Service {
    fn new() -> Service {
        Service::with_cards(
            "[[card]]\nid = \"p\"\nprofile = \"piv\"\n\n[[card]]\nid = \"c\"\n",
            "p",
        )
    }

    /// The service with the `[[card]]` tables `cards`, card `in_reader` in its USB/IP reader.
    fn with_cards(cards: &str, in_reader: &str) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let port = testkit::free_port().unwrap();
        let config = format!(
            "[service]\nstate_dir = \"{state}\"\ncontrol = \"{socket}\"\n\n{cards}\n\
             [[reader]]\nid = \"u0\"\ntransport = \"usbip\"\naddress = \"127.0.0.1:{port}\"\n\
             cards = [\"{in_reader}\"]\n",
            state = dir.path().join("state").display(),
            socket = dir.path().join("control.sock").display(),
        );
        std::fs::write(dir.path().join("vccid.toml"), config).unwrap();
        let notify = UnixDatagram::bind(dir.path().join("notify")).unwrap();
        Service {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
            notify,
            child: None,
            runs: 0,
        }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    fn socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }
    fn log(&self) -> String {
        let name = format!("vccid{}.log", self.runs);
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// Starts the service and waits for its READY=1 (every reader listens, the cards made).
    fn start(&mut self) {
        self.runs += 1;
        let log =
            std::fs::File::create(self.dir.path().join(format!("vccid{}.log", self.runs))).unwrap();
        let child = Command::new(VCCID)
            .arg("serve")
            .arg("--config")
            .arg(self.dir.path().join("vccid.toml"))
            .env("NOTIFY_SOCKET", self.dir.path().join("notify"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        // The first start makes both cards' keys.
        self.notify
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        let mut buf = [0u8; 512];
        loop {
            let n = self
                .notify
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no READY=1: {e}\n{}", self.log()));
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                return;
            }
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            c.wait().unwrap();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A key and its self-signed certificate, PEM and DER.
struct Ident {
    cert_pem: String,
    key_pem: String,
    cert_der: Vec<u8>,
}

fn ident(name: &str, rsa: bool) -> Ident {
    let key = if rsa {
        rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
    } else {
        rcgen::KeyPair::generate()
    }
    .unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    Ident {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().to_vec(),
    }
}

/// The PIV certificate object of a key slot (SP 800-73-4 Part 1 Table 3).
fn cert_tag(slot: u8) -> u32 {
    match slot {
        0x9A => 0x5F_C1_05,
        0x9C => 0x5F_C1_0A,
        0x9D => 0x5F_C1_0B,
        _ => 0x5F_C1_01,
    }
}

/// A certificate object's value (inside 53): the certificate (70), not compressed (71), no
/// error detection code (FE), Part 1 Table 10.
fn cert_object(der: &[u8]) -> Vec<u8> {
    let mut v = vec![0x70, 0x82];
    v.extend_from_slice(&(der.len() as u16).to_be_bytes());
    v.extend_from_slice(der);
    v.extend_from_slice(&[0x71, 0x01, 0x00, 0xFE, 0x00]);
    v
}

/// The changes a round may make.
#[derive(Debug, Clone)]
enum Op {
    WrongVerify,
    RightVerify,
    ChangePin(String),
    SetPin(String),
    Generate { slot: u8, rsa: bool },
    PutCert { slot: u8, ident: usize },
    EnrollPiv { slot: u8, ident: usize },
    EnrollCac { ident: usize },
    SetCacPin(String),
}

impl Op {
    fn kind(&self) -> usize {
        match self {
            Op::WrongVerify => 0,
            Op::RightVerify => 1,
            Op::ChangePin(_) => 2,
            Op::SetPin(_) => 3,
            Op::Generate { rsa: false, .. } => 4,
            Op::Generate { rsa: true, .. } => 5,
            Op::PutCert { .. } => 6,
            Op::EnrollPiv { .. } => 7,
            Op::EnrollCac { .. } => 8,
            Op::SetCacPin(_) => 9,
        }
    }
}
const KINDS: usize = 10;

/// What an operation's answer said, when one came before the kill.
#[derive(Debug)]
enum Answer {
    /// The status word of the change's APDU and its data.
    Apdu(Vec<u8>),
    /// The control command's `return`.
    Control(Value),
}

/// The identities the changes bring: P-256 ones for PIV, RSA-2048 ones for CAC.
struct Pools {
    piv: Vec<Ident>,
    cac: Vec<Ident>,
}

/// Runs `op` against the service (in its own thread, while the main one waits to kill).
fn run(
    op: &Op,
    pin: &str,
    reader: &mut Reader,
    control: &mut Control,
    pools: &Pools,
) -> Result<Answer, String> {
    let verify = |pin: &[u8]| {
        let mut a = vec![0x00, 0x20, 0x00, 0x80, 0x08];
        a.extend_from_slice(pin);
        a
    };
    Ok(match op {
        Op::WrongVerify => {
            let wrong = if pin == "99999999" {
                "88888888"
            } else {
                "99999999"
            };
            Answer::Apdu(reader.apdu(&verify(&padded(wrong)))?)
        }
        Op::RightVerify => Answer::Apdu(reader.apdu(&verify(&padded(pin)))?),
        Op::ChangePin(new) => {
            let mut a = vec![0x00, 0x24, 0x00, 0x80, 0x10];
            a.extend_from_slice(&padded(pin));
            a.extend_from_slice(&padded(new));
            Answer::Apdu(reader.apdu(&a)?)
        }
        Op::SetPin(new) => {
            Answer::Control(control.call("card-set-pin", json!({"card": "p", "pin": new}))?)
        }
        Op::Generate { slot, rsa } => {
            reader.authenticate()?;
            let alg = if *rsa { 0x07 } else { 0x11 };
            Answer::Apdu(reader.apdu(&[
                0x00, 0x47, 0x00, *slot, 0x05, 0xAC, 0x03, 0x80, 0x01, alg, 0x00,
            ])?)
        }
        Op::PutCert { slot, ident } => {
            reader.authenticate()?;
            let value = cert_object(&pools.piv[*ident].cert_der);
            let mut data = vec![0x5C, 0x03];
            data.extend_from_slice(&cert_tag(*slot).to_be_bytes()[1..]);
            data.extend_from_slice(&[0x53, 0x82]);
            data.extend_from_slice(&(value.len() as u16).to_be_bytes());
            data.extend_from_slice(&value);
            Answer::Apdu(reader.send(0xDB, 0x3F, 0xFF, &data)?)
        }
        Op::EnrollPiv { slot, ident } => {
            let i = &pools.piv[*ident];
            Answer::Control(control.call(
                "card-enroll",
                json!({"card": "p", "slot": format!("{slot:02x}"), "action": "import",
                       "certificate": i.cert_pem, "key": i.key_pem}),
            )?)
        }
        Op::SetCacPin(new) => {
            Answer::Control(control.call("card-set-pin", json!({"card": "c", "pin": new}))?)
        }
        Op::EnrollCac { ident } => {
            let i = &pools.cac[*ident];
            Answer::Control(control.call(
                "card-enroll",
                json!({"card": "c", "slot": "cert2", "action": "import",
                       "certificate": i.cert_pem, "key": i.key_pem}),
            )?)
        }
    })
}

/// The CAC card's `cert2` as its files hold it: certificate DER and key DER.
fn cac_pair(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let cert = std::fs::read_to_string(dir.join("cert2.crt.pem")).expect("cert2.crt.pem");
    let key = std::fs::read_to_string(dir.join("cert2.key.pem")).expect("cert2.key.pem");
    let cert = certificate_der(&cert).expect("cert2.crt.pem parses");
    let (key, _) = private_key(&key).expect("cert2.key.pem parses");
    assert!(
        certificate_matches(&cert, &key.public()),
        "cert2's key is not its certificate's"
    );
    (cert, key.der().to_vec())
}

/// The state without slot `slot`'s key and certificate object: what a change of that slot
/// leaves as it was.
fn without_slot(s: &State, slot: u8) -> State {
    let mut s = s.clone();
    s.keys.remove(&slot);
    s.objects.remove(&cert_tag(slot));
    s
}

/// Checks the PIV state after the restart against the one before `op`; with an `answer`
/// (it came before the kill) the change must be there. Returns whether it is.
fn check_piv(op: &Op, before: &State, now: &State, answer: Option<&Answer>, pools: &Pools) -> bool {
    let mut after = before.clone();
    let full = |p: &mut card::piv::PinState, value: Option<&str>| {
        if let Some(v) = value {
            p.value = zeroize::Zeroizing::new(padded(v));
        }
        p.left = p.tries;
    };
    let changed = match op {
        Op::WrongVerify => {
            after.pin.left -= 1;
            *now == after
        }
        Op::RightVerify => {
            full(&mut after.pin, None);
            *now == after
        }
        Op::ChangePin(new) | Op::SetPin(new) => {
            full(&mut after.pin, Some(new));
            *now == after
        }
        Op::PutCert { slot, ident } => {
            after
                .objects
                .insert(cert_tag(*slot), cert_object(&pools.piv[*ident].cert_der));
            *now == after
        }
        Op::Generate { slot, rsa } => {
            let mut rest = now.clone();
            let key = rest.keys.remove(slot);
            after.keys.remove(slot);
            let new = key.filter(|k| Some(k) != before.keys.get(slot));
            match new {
                Some(k) if rest == after => {
                    assert_eq!(k.alg, if *rsa { 0x07 } else { 0x11 }, "generated key");
                    assert_eq!(k.origin, 1, "generated key's origin");
                    let public = CardKey::from_der(&k.der).expect("the key parses").public();
                    if let Some(Answer::Apdu(r)) = answer {
                        let bytes = match &public {
                            card::keystore::PublicKey::Ec(p) => p.clone(),
                            card::keystore::PublicKey::Rsa { modulus, .. } => modulus.clone(),
                        };
                        assert!(
                            r.windows(bytes.len()).any(|w| w == bytes),
                            "the saved key is not the one GENERATE answered"
                        );
                    }
                    true
                }
                _ => false,
            }
        }
        Op::EnrollPiv { slot, ident } => {
            let i = &pools.piv[*ident];
            let key = now.keys.get(slot);
            let object = now.objects.get(&cert_tag(*slot));
            let whole = without_slot(now, *slot) == without_slot(before, *slot);
            let new = key.is_some_and(|k| {
                CardKey::from_der(&k.der)
                    .is_ok_and(|k| certificate_matches(&i.cert_der, &k.public()))
            }) && object
                .is_some_and(|o| o.windows(i.cert_der.len()).any(|w| w == i.cert_der));
            let old =
                key == before.keys.get(slot) && object == before.objects.get(&cert_tag(*slot));
            assert!(
                new || old,
                "slot {slot:02X}: a key and a certificate object that are neither the old pair \
                 nor the new"
            );
            whole && new
        }
        Op::EnrollCac { .. } | Op::SetCacPin(_) => false,
    };
    if !changed {
        assert!(
            now == before,
            "{op:X?}: the state is neither the one before nor the one after"
        );
    }
    if answer.is_some() && !matches!(op, Op::EnrollCac { .. } | Op::SetCacPin(_)) {
        assert!(
            changed,
            "{op:X?} was answered ({answer:?}) but the state after the restart is the old one"
        );
    }
    let resets = matches!(op, Op::RightVerify | Op::ChangePin(_) | Op::SetPin(_));
    assert!(
        now.pin.left <= before.pin.left || resets,
        "the PIN retry counter went up from {} to {} across a kill during {op:X?}",
        before.pin.left,
        now.pin.left
    );
    changed
}

/// Temporary files a write left (`NAME.tmpPID-N`) in `dir`.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    n.contains(".tmp")
                        || n.ends_with(".enroll.pem")
                        || n.ends_with(".pending.key.pem")
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn sigkill_during_state_changes_leaves_the_old_state_or_the_new() {
    let rounds: usize = std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("crash_safety: {rounds} rounds, CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let started = Instant::now();
    let pools = Pools {
        piv: (0..3).map(|n| ident(&format!("piv{n}"), false)).collect(),
        cac: (0..2).map(|n| ident(&format!("cac{n}"), true)).collect(),
    };
    let mut svc = Service::new();
    svc.start();
    let piv_dir = svc.state().join("cards/p");
    let cac_dir = svc.state().join("cards/c");
    let state_file = piv_dir.join("piv-state.json");
    let cac_state_file = cac_dir.join("cac-state.json");
    // The card has no state file until its first change: a wrong PIN makes one, a right one
    // fills the counter again.
    let mut reader = Reader::connect(svc.addr);
    let mut verify = |pin: &str| {
        let mut a = vec![0x00, 0x20, 0x00, 0x80, 0x08];
        a.extend_from_slice(&padded(pin));
        sw(&reader.apdu(&a).unwrap())
    };
    assert_eq!(verify("999999"), 0x63C2);
    assert_eq!(verify("123456"), 0x9000);
    drop(reader);
    let mut pin = "123456".to_string();
    // What each kind of change took when it last finished, in microseconds.
    let mut took = [20_000u64; KINDS];
    let (mut answered, mut landed, mut kept_old, mut cleaned) = (0usize, 0usize, 0usize, 0usize);
    for round in 0..rounds {
        let before = State::load(&state_file)
            .expect("the state file parses")
            .expect("the state file is there");
        let cac_before = cac_pair(&cac_dir);
        let cac_state_before = CacState::load(&cac_state_file).expect("the CAC state parses");
        let left = before.pin.left;
        let op = match rng.below(13) {
            0..=2 if left >= 2 => Op::WrongVerify,
            0..=3 => Op::RightVerify,
            4 => Op::ChangePin(rng.pin()),
            5 => Op::SetPin(rng.pin()),
            6 | 7 => Op::Generate {
                slot: [0x9A, 0x9C, 0x9D, 0x9E][rng.below(4) as usize],
                rsa: rng.below(6) == 0,
            },
            8 => Op::PutCert {
                slot: [0x9A, 0x9D][rng.below(2) as usize],
                ident: rng.below(3) as usize,
            },
            9 | 10 => Op::EnrollPiv {
                slot: [0x9C, 0x9E][rng.below(2) as usize],
                ident: rng.below(3) as usize,
            },
            11 => Op::SetCacPin(rng.pin()),
            _ => Op::EnrollCac {
                ident: rng.below(2) as usize,
            },
        };
        let mut reader = Reader::connect(svc.addr);
        let mut control = Control::connect(&svc.socket());
        let delay = Duration::from_micros(rng.below(took[op.kind()] * 3 / 2));
        let job = {
            let (op, pin) = (op.clone(), pin.clone());
            let pools = &pools;
            std::thread::scope(|s| {
                let h = s.spawn(move || {
                    let t = Instant::now();
                    let a = run(&op, &pin, &mut reader, &mut control, pools);
                    (a, t.elapsed())
                });
                std::thread::sleep(delay);
                svc.kill();
                h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
            })
        };
        let answer = match job {
            (Ok(a), t) => {
                took[op.kind()] = (t.as_micros() as u64).max(1_000);
                answered += 1;
                Some(a)
            }
            (Err(_), _) => None,
        };
        if let Some(Answer::Control(v)) = &answer {
            assert_eq!(v["persisted"], true, "round {round}: {op:X?} answered {v}");
        }
        if let Some(Answer::Apdu(r)) = &answer {
            let want = match op {
                Op::WrongVerify => 0x63C0 | u16::from(left - 1),
                _ => 0x9000,
            };
            assert_eq!(sw(r), want, "round {round}: {op:X?} answered {r:02X?}");
        }
        svc.start();
        cleaned += svc
            .log()
            .matches("removed a temporary file a crash left")
            .count();
        let now = State::load(&state_file)
            .unwrap_or_else(|e| {
                panic!("round {round} ({op:X?}): the state file does not load: {e}")
            })
            .expect("the state file is there");
        let cac_now = CacState::load(&cac_state_file).unwrap_or_else(|e| {
            panic!("round {round} ({op:X?}): the CAC state file does not load: {e}")
        });
        let changed = if let Op::SetCacPin(new) = &op {
            let changed = cac_now.as_ref().is_some_and(|s| {
                s.pin.value.as_slice() == new.as_bytes() && s.pin.left == s.pin.tries
            });
            assert!(
                changed || cac_now == cac_state_before,
                "round {round}: the CAC state is neither the one before nor the one after"
            );
            assert!(
                changed || answer.is_none(),
                "round {round}: an answered CAC PIN change is lost"
            );
            assert!(
                now == before,
                "round {round}: a CAC PIN changed the PIV state"
            );
            changed
        } else if let Op::EnrollCac { ident } = op {
            let new = &pools.cac[ident];
            let pair = cac_pair(&cac_dir);
            let changed = pair.0 == new.cert_der;
            assert!(
                changed || pair == cac_before,
                "round {round}: cert2 is neither the old identity nor the new one"
            );
            assert!(
                changed || answer.is_none(),
                "round {round}: an answered enrollment is lost"
            );
            assert!(
                now == before,
                "round {round}: a CAC enrollment changed the PIV state"
            );
            changed
        } else {
            assert_eq!(
                cac_pair(&cac_dir),
                cac_before,
                "round {round}: cert2 changed"
            );
            check_piv(&op, &before, &now, answer.as_ref(), &pools)
        };
        if !matches!(op, Op::SetCacPin(_)) {
            assert_eq!(
                cac_now, cac_state_before,
                "round {round}: {op:X?} changed the CAC state"
            );
        }
        if changed {
            landed += 1;
        } else {
            kept_old += 1;
        }
        for dir in [&piv_dir, &cac_dir, &svc.state()] {
            let left = leftovers(dir);
            assert!(
                left.is_empty(),
                "round {round}: left in {}: {left:?}",
                dir.display()
            );
        }
        // The card serves what the file says: its counter, and its PIN.
        pin = String::from_utf8(
            now.pin
                .value
                .iter()
                .copied()
                .filter(|b| *b != 0xFF)
                .collect(),
        )
        .unwrap();
        let mut r = Reader::connect(svc.addr);
        let status = sw(&r.apdu(&[0x00, 0x20, 0x00, 0x80, 0x00]).unwrap());
        assert_eq!(
            status,
            0x63C0 | u16::from(now.pin.left),
            "round {round}: the card's counter after the restart is not the file's"
        );
        println!(
            "round {round}: {op:X?} killed after {delay:?}: {}, {}",
            if answer.is_some() {
                "answered"
            } else {
                "unanswered"
            },
            if changed { "new state" } else { "old state" }
        );
    }
    // The PIN the file holds is the card's: the last check of every run.
    let mut r = Reader::connect(svc.addr);
    let mut a = vec![0x00, 0x20, 0x00, 0x80, 0x08];
    a.extend_from_slice(&padded(&pin));
    assert_eq!(
        sw(&r.apdu(&a).unwrap()),
        0x9000,
        "the PIN in the file is the card's"
    );
    println!(
        "crash_safety: {rounds} kills in {:?} (seed {seed}): {answered} answered before the \
         kill, {landed} new states, {kept_old} old states, {cleaned} temporary files of cut \
         writes removed at the restart",
        started.elapsed()
    );
}

#[test]
fn a_restart_does_not_give_cac_pin_tries_back() {
    let mut svc = Service::with_cards("[[card]]\nid = \"c\"\n", "c");
    svc.start();
    let file = svc.state().join("cards/c/cac-state.json");
    let verify = |pin: &[u8]| {
        let mut a = vec![0x00, 0x20, 0x00, 0x00, 0x08];
        a.extend_from_slice(pin);
        a
    };
    let (wrong, right) = (verify(b"00000000"), verify(b"12345678"));
    let status = [0x00, 0x20, 0x00, 0x00, 0x00];
    let left = || {
        CacState::load(&file)
            .unwrap()
            .expect("a state file")
            .pin
            .left
    };
    // Each wrong PIN is in the file before its answer, and the next start serves it.
    for want in [0x63C2, 0x63C1, 0x63C0] {
        let mut r = Reader::connect_to(svc.addr, &SELECT_CAC);
        assert_eq!(sw(&r.apdu(&status).unwrap()), want + 1, "{}", svc.log());
        assert_eq!(sw(&r.apdu(&wrong).unwrap()), want);
        assert_eq!(u16::from(left()), want & 0x0F);
        drop(r);
        svc.kill();
        svc.start();
    }
    // Blocked, it stays blocked: the right PIN is not even compared.
    let mut r = Reader::connect_to(svc.addr, &SELECT_CAC);
    assert_eq!(sw(&r.apdu(&status).unwrap()), 0x6983);
    assert_eq!(sw(&r.apdu(&right).unwrap()), 0x6983);
    drop(r);
    // The service's reset is kept as well.
    let mut control = Control::connect(&svc.socket());
    let v = control
        .call("card-set-pin", json!({"card": "c", "pin": "4321"}))
        .unwrap();
    assert_eq!(v["persisted"], true, "{v}");
    drop(control);
    svc.kill();
    svc.start();
    let mut r = Reader::connect_to(svc.addr, &SELECT_CAC);
    assert_eq!(sw(&r.apdu(&status).unwrap()), 0x63C3);
    assert_eq!(
        sw(&r.apdu(&verify(b"4321\xFF\xFF\xFF\xFF")).unwrap()),
        0x9000
    );
}
