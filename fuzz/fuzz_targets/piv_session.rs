//! The PIV card, alone or as the PIV side of a CAC+PIV card, through sessions: the input is
//! decoded into operations (raw APDUs; SELECT of PIV, CAC and unknown AIDs; VERIFY right,
//! wrong, status and reset; CHANGE REFERENCE DATA; RESET RETRY COUNTER; the management key's
//! external authentication; GENERATE of ECC keys; GENERAL AUTHENTICATE; PUT DATA; GET DATA;
//! GET RESPONSE; SET PIN RETRIES, RESET, SET MANAGEMENT KEY; the next operation's commands
//! chained; power cycles; and restarts, which rebuild the card from its state file as the
//! service does). A model of the PIN and PUK follows every command, and after each step:
//!
//! - the PIN and PUK retry counters are the model's: they go down by one per wrong try, and
//!   up only after the right PIN or PUK, RESET RETRY COUNTER with the right PUK, or the
//!   YubiKey SET PIN RETRIES (PIN verified) and RESET (PIN and PUK both blocked); so a blocked
//!   PIN stays blocked across power cycles and restarts;
//! - VERIFY's answers are the model's (ISO 7816-4 §7.5.6, SP 800-73-4 Part 2 §3.2.1);
//! - no response is longer than Ne + 2 (Ne 256 when a short command has no Le, 65 536 for an
//!   extended one);
//! - GET RESPONSE has nothing to give after any other command;
//! - leaving the PIV application (a SELECT of a CAC applet, or a SELECT the PIV card does not
//!   find) sets its PIN status to not verified and drops its chain and pending response (SP
//!   800-73-4 Part 2 §3.1.1); selecting PIV again while it is selected keeps the PIN status.
//!
//! The CAC side of the dual card is checked more loosely: its PIN counter goes up only on a
//! VERIFY answered 9000, by one step down at most otherwise, and neither a power cycle nor a
//! restart (its own state file, cac/state.rs) changes it.
//!
//! RSA-2048 key generation takes far longer than an input may: a GENERATE of an RSA key is
//! not sent (the ECC ones are).
#![no_main]
use apdu::{Command, Sw};
use card::cac::{CacCard, CacConfig};
use card::dual::DualCard;
use card::keystore::{DefaultIdentities, FileStore, SharedStore};
use card::piv::{ManagementKey, PivCard, PivConfig, ALG_3DES, ALG_AES128, PIV_AID};
use card::Card;
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The largest chain the PIV card assembles (piv::MAX_CHAIN).
const MAX_CHAIN: usize = card::piv::MAX_CHAIN;
const PIN: &[u8] = b"123456";
const PUK: &[u8] = b"12345678";
/// A PKI applet, the CCC, the ACA and the GlobalPlatform card manager of the CAC side.
const CAC_AIDS: [&[u8]; 4] = [
    &[0xA0, 0x00, 0x00, 0x00, 0x79, 0x01, 0x00],
    &[0xA0, 0x00, 0x00, 0x01, 0x16, 0xDB, 0x00],
    &[0xA0, 0x00, 0x00, 0x00, 0x79, 0x03, 0x00],
    &[0xA0, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00],
];
/// Key slots the operations aim at: three primary ones with store keys, 9E, one retired.
const SLOTS: [u8; 5] = [0x9A, 0x9C, 0x9D, 0x9E, 0x82];
/// Data objects GET DATA and PUT DATA aim at: CHUID, 9A's certificate, printed info, one free.
const OBJECTS: [u32; 4] = [0x5F_C1_02, 0x5F_C1_05, 0x5F_C1_09, 0x5F_C1_0D];

fn store() -> &'static SharedStore {
    static STORE: OnceLock<SharedStore> = OnceLock::new();
    STORE.get_or_init(|| {
        let dir = std::env::temp_dir().join("vccid-fuzz-ids-ecc");
        let files = DefaultIdentities::new(&dir)
            .ensure_with_ecc()
            .expect("identities");
        SharedStore::new(Box::new(FileStore::open(&files).expect("store")))
    })
}

/// The state file: on tmpfs when there is one, since every counter change is written.
fn state_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        remove_dead_runs(&base);
        base.join(format!("vccid-fuzz-piv-{}", std::process::id()))
            .join("piv.json")
    })
}

/// Removes the state directories of runs whose process is gone: a fuzzing process ends by
/// being killed or by exiting from libFuzzer, past any cleanup of ours, and fork mode starts a
/// process (and so a directory) for every job.
fn remove_dead_runs(base: &std::path::Path) {
    for e in std::fs::read_dir(base).into_iter().flatten().flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("vccid-fuzz-piv-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn padded(v: &[u8]) -> [u8; 8] {
    let mut p = [0xFF; 8];
    p[..v.len()].copy_from_slice(v);
    p
}

fn sw_of(r: &[u8]) -> u16 {
    u16::from_be_bytes([r[r.len() - 2], r[r.len() - 1]])
}

/// The card under test: PIV alone or CAC+PIV.
enum Under {
    Piv(Box<PivCard>),
    Dual(Box<DualCard>),
}

impl Under {
    fn card(&mut self) -> &mut dyn Card {
        match self {
            Under::Piv(c) => c.as_mut(),
            Under::Dual(c) => c.as_mut(),
        }
    }
    fn piv(&self) -> &PivCard {
        match self {
            Under::Piv(c) => c,
            Under::Dual(c) => c.piv(),
        }
    }
    fn cac_tries(&self) -> Option<u8> {
        match self {
            Under::Piv(_) => None,
            Under::Dual(c) => Some(c.cac().pin_tries_left()),
        }
    }
}

/// The processes and descriptors that have `state`'s lock file open (from /proc), for the
/// message of a card refused because the lock is held.
fn lock_holders(state: Option<&std::path::Path>) -> String {
    let Some(state) = state else {
        return "no state file".into();
    };
    let mut lock = state.as_os_str().to_owned();
    lock.push(".lock");
    let mut found = Vec::new();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == lock) {
                let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
                found.push(format!(
                    "pid {} fd {} ({})",
                    p.file_name().to_string_lossy(),
                    fd.file_name().to_string_lossy(),
                    String::from_utf8_lossy(&cmd[..cmd.len().min(60)]).replace('\0', " ")
                ));
            }
        }
    }
    format!("{found:?}")
}

/// How a card is made, and made again at a restart.
struct Maker {
    dual: bool,
    piv: PivConfig,
    cac: CacConfig,
}

impl Maker {
    fn make(&self) -> Under {
        let piv = PivCard::new(Box::new(store().clone()), &self.piv).unwrap_or_else(|e| {
            panic!(
                "the PIV card does not start from its state: {e} (the lock file's holders: {})",
                lock_holders(self.piv.state.as_deref())
            )
        });
        if !self.dual {
            return Under::Piv(Box::new(piv));
        }
        let rsa = store().view(|id| id.ec_curve.is_none());
        let cac = CacCard::new(Box::new(rsa), &self.cac).expect("the CAC card");
        Under::Dual(Box::new(DualCard::new(cac, piv)))
    }
}

/// The model of the PIV application: what the card must answer and hold.
#[derive(Clone)]
struct Model {
    pin: [u8; 8],
    puk: [u8; 8],
    pin_max: u8,
    pin_left: u8,
    puk_max: u8,
    puk_left: u8,
    verified: bool,
    /// A dual card with the CAC side current (the PIV application then sees nothing).
    cac_current: bool,
    selected: bool,
    chain: Option<(u8, u8, u8, Vec<u8>)>,
    /// A 61xx answer waits for GET RESPONSE.
    pending: bool,
    mgmt: ManagementKey,
    /// The last challenge of an external management-key authentication the card gave.
    challenge: Option<Vec<u8>>,
    config_pin_tries: u8,
    config_puk_tries: u8,
}

/// What one command is, once the chain is taken into account.
enum Step {
    /// Not sent (an RSA key generation).
    Skip,
    /// Answered without being carried out: exactly this status word.
    Exactly(u16),
    /// Carried out: the whole command, its last piece's Le.
    Run(u8, u8, u8, Vec<u8>),
}

impl Model {
    fn new(pin_tries: u8, puk_tries: u8, mgmt: ManagementKey, dual: bool) -> Self {
        Model {
            pin: padded(PIN),
            puk: padded(PUK),
            pin_max: pin_tries,
            pin_left: pin_tries,
            puk_max: puk_tries,
            puk_left: puk_tries,
            verified: false,
            cac_current: dual,
            selected: false,
            chain: None,
            pending: false,
            mgmt,
            challenge: None,
            config_pin_tries: pin_tries,
            config_puk_tries: puk_tries,
        }
    }

    /// Power off and on, a restart, or the PIV application deselected.
    fn clear(&mut self) {
        self.verified = false;
        self.selected = false;
        self.chain = None;
        self.pending = false;
        self.challenge = None;
    }

    /// Where the chain leaves this command (piv::process), without changing the model.
    fn step(&self, bytes: &[u8]) -> Step {
        let Ok(cmd) = Command::parse(bytes) else {
            return Step::Exactly(Sw::WRONG_LENGTH.0);
        };
        if cmd.cla & !0x10 != 0 {
            return Step::Exactly(Sw::CLA_NOT_SUPPORTED.0);
        }
        let fresh = (cmd.ins, cmd.p1, cmd.p2, Vec::new());
        let (ins, p1, p2, mut data) = match self.chain.clone() {
            Some((i, a, b, _)) if cmd.ins == 0xA4 && (i, a, b) != (cmd.ins, cmd.p1, cmd.p2) => {
                fresh
            }
            Some(c) => c,
            None => fresh,
        };
        if (ins, p1, p2) != (cmd.ins, cmd.p1, cmd.p2) {
            return Step::Exactly(Sw::LAST_COMMAND_EXPECTED.0);
        }
        if data.len() + cmd.data.len() > MAX_CHAIN {
            return Step::Exactly(Sw::WRONG_LENGTH.0);
        }
        data.extend_from_slice(cmd.data);
        if cmd.cla & 0x10 != 0 {
            return Step::Exactly(Sw::OK.0);
        }
        if ins == 0x47 && self.selected && data.windows(3).any(|w| w == [0x80, 0x01, 0x07]) {
            return Step::Skip;
        }
        Step::Run(ins, p1, p2, data)
    }

    /// The chain and pending-response effects of a command the PIV card received.
    fn receive(&mut self, bytes: &[u8]) {
        let Ok(cmd) = Command::parse(bytes) else {
            return;
        };
        if cmd.ins != 0xC0 {
            self.pending = false;
        }
        if cmd.cla & !0x10 != 0 {
            return;
        }
        let continues = matches!(&self.chain, Some((i, a, b, _))
            if (*i, *a, *b) == (cmd.ins, cmd.p1, cmd.p2));
        let mut data = match self.chain.take() {
            Some((.., d)) if continues => d,
            Some(_) if cmd.ins != 0xA4 => return,
            _ => Vec::new(),
        };
        if data.len() + cmd.data.len() > MAX_CHAIN {
            return;
        }
        if cmd.cla & 0x10 != 0 {
            data.extend_from_slice(cmd.data);
            self.chain = Some((cmd.ins, cmd.p1, cmd.p2, data));
        }
    }

    /// Checks the answer to a command the PIV card carried out, and follows its effects.
    fn run(&mut self, cmd: (u8, u8, u8, &[u8]), r: &[u8]) {
        let (ins, p1, p2, data) = cmd;
        let sw = sw_of(r);
        let want = |w: Sw| assert_eq!(sw, w.0, "{ins:02X} {p1:02X} {p2:02X}: {r:02X?}");
        match ins {
            0xA4 => {
                if p1 != 0x04 {
                    want(Sw::INCORRECT_P1P2);
                } else if data.len() >= 5 && PIV_AID.starts_with(data) {
                    self.selected = true;
                } else {
                    want(Sw::NOT_FOUND);
                    self.clear();
                }
            }
            0xC0 if !self.pending => want(Sw::CONDITIONS_NOT_SATISFIED),
            0xC0 => {}
            _ if !self.selected => want(Sw::CONDITIONS_NOT_SATISFIED),
            0x20 => self.verify(p1, p2, data, sw),
            0x24 => self.change(p1, p2, data, sw),
            0x2C => self.reset_retry(p1, p2, data, sw),
            0x87 if p2 == 0x9B => self.management(data, r),
            0xFA if sw == Sw::OK.0 => {
                assert!(self.verified, "SET PIN RETRIES without the PIN");
                (self.pin, self.puk) = (padded(PIN), padded(PUK));
                (self.pin_max, self.pin_left) = (p1, p1);
                (self.puk_max, self.puk_left) = (p2, p2);
            }
            0xFB if sw == Sw::OK.0 => {
                assert!(
                    self.pin_left == 0 && self.puk_left == 0,
                    "RESET with the PIN or PUK not blocked"
                );
                (self.pin, self.puk) = (padded(PIN), padded(PUK));
                (self.pin_max, self.pin_left) = (self.config_pin_tries, self.config_pin_tries);
                (self.puk_max, self.puk_left) = (self.config_puk_tries, self.config_puk_tries);
                self.mgmt = default_mgmt();
                self.clear();
                self.selected = true;
            }
            0xFF if sw == Sw::OK.0 => {
                if let [alg, 0x9B, _, key @ ..] = data {
                    self.mgmt = ManagementKey::new(*alg, key).expect("a key the card took");
                }
            }
            _ => {}
        }
        if ins != 0xC0 || self.pending {
            self.pending = r[r.len() - 2] == 0x61;
        }
    }

    fn verify(&mut self, p1: u8, p2: u8, data: &[u8], sw: u16) {
        let expect = match (p2, p1, data.len()) {
            (0x80, 0xFF, 0) => {
                self.verified = false;
                Sw::OK
            }
            (0x80, 0x00, 0) if self.pin_left == 0 => Sw::AUTH_METHOD_BLOCKED,
            (0x80, 0x00, 0) if self.verified => Sw::OK,
            (0x80, 0x00, 0) => Sw::tries_left(self.pin_left),
            (0x80, 0x00, 8) => {
                self.verified = false;
                if self.pin_left == 0 {
                    Sw::AUTH_METHOD_BLOCKED
                } else if data == self.pin {
                    self.pin_left = self.pin_max;
                    self.verified = true;
                    Sw::OK
                } else {
                    self.pin_left -= 1;
                    Sw::tries_left(self.pin_left)
                }
            }
            (0x80, 0x00, _) => Sw::WRONG_LENGTH,
            (0x80, _, _) => Sw::INCORRECT_P1P2,
            _ => Sw::REFERENCE_NOT_FOUND,
        };
        assert_eq!(sw, expect.0, "VERIFY {p1:02X} {p2:02X}");
    }

    fn change(&mut self, p1: u8, p2: u8, data: &[u8], sw: u16) {
        let expect = if p1 != 0 {
            Sw::INCORRECT_P1P2
        } else if data.len() != 16 {
            Sw::WRONG_LENGTH
        } else {
            let (value, max, left) = match p2 {
                0x80 => (&mut self.pin, self.pin_max, &mut self.pin_left),
                0x81 => (&mut self.puk, self.puk_max, &mut self.puk_left),
                _ => {
                    assert_eq!(sw, Sw::REFERENCE_NOT_FOUND.0, "CHANGE REFERENCE DATA");
                    return;
                }
            };
            if *left == 0 {
                Sw::AUTH_METHOD_BLOCKED
            } else if data[..8] == value[..] {
                value.copy_from_slice(&data[8..]);
                *left = max;
                Sw::OK
            } else {
                *left -= 1;
                Sw::tries_left(*left)
            }
        };
        assert_eq!(sw, expect.0, "CHANGE REFERENCE DATA {p1:02X} {p2:02X}");
    }

    fn reset_retry(&mut self, p1: u8, p2: u8, data: &[u8], sw: u16) {
        let expect = if (p1, p2) != (0, 0x80) {
            Sw::INCORRECT_P1P2
        } else if data.len() != 16 {
            Sw::WRONG_LENGTH
        } else if self.puk_left == 0 {
            Sw::AUTH_METHOD_BLOCKED
        } else if data[..8] == self.puk {
            self.puk_left = self.puk_max;
            self.pin.copy_from_slice(&data[8..]);
            self.pin_left = self.pin_max;
            self.verified = false;
            Sw::OK
        } else {
            self.puk_left -= 1;
            Sw::tries_left(self.puk_left)
        };
        assert_eq!(sw, expect.0, "RESET RETRY COUNTER");
    }

    /// Follows the external authentication's challenge (Part 2 Appendix A.2).
    fn management(&mut self, data: &[u8], r: &[u8]) {
        self.challenge = None;
        let challenge_request = [0x7C, 0x02, 0x81, 0x00];
        if data == challenge_request && sw_of(r) == Sw::OK.0 {
            if let [0x7C, _, 0x81, n, c @ ..] = &r[..r.len() - 2] {
                if usize::from(*n) == c.len() {
                    self.challenge = Some(c.to_vec());
                }
            }
        }
    }
}

fn default_mgmt() -> ManagementKey {
    PivConfig::default().management_key
}

/// Reads the input one operation at a time.
struct Ops<'a> {
    data: &'a [u8],
}

impl Ops<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(*b)
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.data.len());
        let (a, rest) = self.data.split_at(n);
        self.data = rest;
        a
    }
}

/// A command APDU, short or extended as its sizes need.
fn apdu(cla: u8, ins: u8, p1: u8, p2: u8, data: &[u8], le: Option<usize>) -> Vec<u8> {
    let extended = data.len() > 255 || le.is_some_and(|n| n > 256);
    let mut v = vec![cla, ins, p1, p2];
    if !data.is_empty() {
        if extended {
            v.push(0);
            v.extend((data.len() as u16).to_be_bytes());
        } else {
            v.push(data.len() as u8);
        }
        v.extend_from_slice(data);
    }
    if let Some(n) = le {
        if extended {
            if data.is_empty() {
                v.push(0);
            }
            v.extend(((n % 65536) as u16).to_be_bytes());
        } else {
            v.push((n % 256) as u8);
        }
    }
    v
}

fn tlv(tag: u32, value: &[u8]) -> Vec<u8> {
    apdu::ber::encode(tag, value)
}

/// The session: the card, its model, and how to make it again.
struct Session {
    maker: Maker,
    under: Option<Under>,
    model: Model,
    /// Data-field size of the pieces the next operation's commands are chained in (0: whole).
    split: usize,
}

impl Session {
    fn under(&mut self) -> &mut Under {
        self.under.get_or_insert_with(|| self.maker.make())
    }

    /// Sends one command (in pieces when a chain was asked for) and checks every answer.
    fn send(&mut self, bytes: &[u8]) -> Vec<u8> {
        let split = std::mem::take(&mut self.split);
        match Command::parse(bytes) {
            Ok(cmd) if split > 0 && cmd.data.len() > split && cmd.cla & 0x10 == 0 => {
                let chunks: Vec<&[u8]> = cmd.data.chunks(split).collect();
                let mut r = Vec::new();
                for (i, piece) in chunks.iter().enumerate() {
                    let last = i + 1 == chunks.len();
                    let cla = if last { cmd.cla } else { cmd.cla | 0x10 };
                    let le = if last {
                        cmd.le.map(|n| n as usize)
                    } else {
                        None
                    };
                    r = self.one(&apdu(cla, cmd.ins, cmd.p1, cmd.p2, piece, le));
                    if !last && r != [0x90, 0x00] {
                        break;
                    }
                }
                r
            }
            _ => self.one(bytes),
        }
    }

    fn one(&mut self, bytes: &[u8]) -> Vec<u8> {
        // The dual card's routing (dual.rs): a SELECT by DF name picks the application.
        let mut to_piv = !self.model.cac_current;
        if let Ok(cmd) = Command::parse(bytes) {
            if self.maker.dual && cmd.cla & 0x80 == 0 && cmd.ins == 0xA4 && cmd.p1 == 0x04 {
                let piv = cmd.data.len() >= 5 && PIV_AID.starts_with(cmd.data);
                if !piv && !self.model.cac_current {
                    self.model.clear();
                }
                self.model.cac_current = !piv;
                to_piv = piv;
            }
        }
        let step = if to_piv {
            self.model.step(bytes)
        } else {
            Step::Exactly(0)
        };
        if matches!(step, Step::Skip) {
            return vec![0x6F, 0x00];
        }
        let (pin, puk) = (self.model.pin_left, self.model.puk_left);
        let cac_before = self.under().cac_tries();
        let r = self.under().card().transmit(bytes);
        // Ne + 2 at most (ISO 7816-4 §5.1; ISO 7816-3 §12.1.3 for the lengths).
        match Command::parse(bytes) {
            Ok(cmd) => {
                let ne = cmd
                    .le
                    .map_or(if cmd.extended { 65536 } else { 256 }, |n| n as usize);
                assert!(
                    r.len() >= 2 && r.len() <= ne + 2,
                    "{} bytes for Ne {ne}",
                    r.len()
                );
            }
            Err(_) => assert_eq!(r.len(), 2),
        }
        if to_piv {
            self.model.receive(bytes);
            match step {
                Step::Exactly(sw) if sw != 0 => assert_eq!(sw_of(&r), sw, "{bytes:02X?}"),
                Step::Run(ins, p1, p2, data) => self.model.run((ins, p1, p2, &data), &r),
                _ => {}
            }
        } else if let (Some(before), Some(after)) = (cac_before, self.under().cac_tries()) {
            let verify_ok = bytes.get(1) == Some(&0x20) && sw_of(&r) == Sw::OK.0;
            assert!(
                after <= before || verify_ok,
                "the CAC PIN counter went up from {before} to {after} on {bytes:02X?}"
            );
            assert!(
                after + 1 >= before,
                "the CAC PIN counter fell by more than one"
            );
        }
        self.check(pin, puk);
        r
    }

    fn check(&mut self, pin_before: u8, puk_before: u8) {
        let want = (self.model.pin_left, self.model.puk_left);
        let piv = self.under().piv();
        assert_eq!(
            (piv.pin_tries_left(), piv.puk_tries_left()),
            want,
            "PIN and PUK tries left (model, before: {pin_before} {puk_before})"
        );
    }

    fn power_cycle(&mut self) {
        let cac = self.under().cac_tries();
        let c = self.under().card();
        c.power_off();
        c.power_on();
        self.model.clear();
        self.model.cac_current = self.maker.dual;
        assert_eq!(
            self.under().cac_tries(),
            cac,
            "a power cycle changed the CAC PIN"
        );
        let (pin, puk) = (self.model.pin_left, self.model.puk_left);
        self.check(pin, puk);
    }

    fn restart(&mut self) {
        let cac = self.under().cac_tries();
        // The old card (and its state files' locks) goes first, as when the service stops.
        self.under = None;
        self.under();
        self.under().card().power_on();
        assert_eq!(
            self.under().cac_tries(),
            cac,
            "a restart changed the CAC PIN counter"
        );
        self.model.clear();
        self.model.cac_current = self.maker.dual;
        let (pin, puk) = (self.model.pin_left, self.model.puk_left);
        self.check(pin, puk);
    }

    /// External management-key authentication (Part 2 Appendix A.2), right or wrong.
    fn authenticate(&mut self, right: bool) {
        let alg = self.model.mgmt.alg();
        let ask = tlv(0x7C, &tlv(0x81, &[]));
        self.send(&apdu(0, 0x87, alg, 0x9B, &ask, Some(256)));
        let Some(mut block) = self.model.challenge.clone() else {
            return;
        };
        if self.model.mgmt.encrypt_block(&mut block).is_err() {
            return;
        }
        if !right {
            block[0] ^= 1;
        }
        let answer = tlv(0x7C, &tlv(0x82, &block));
        self.send(&apdu(0, 0x87, alg, 0x9B, &answer, None));
    }

    fn op(&mut self, ops: &mut Ops) -> Option<()> {
        let kind = ops.byte()?;
        match kind % 24 {
            0 => {
                let n = usize::from(u16::from_be_bytes([ops.byte()?, ops.byte()?]));
                let bytes = ops.take(n).to_vec();
                self.send(&bytes);
            }
            1 => {
                let n = 5 + usize::from(ops.byte()? % 7);
                let le = (kind & 0x80 != 0).then_some(256);
                self.send(&apdu(0, 0xA4, 4, 0, &PIV_AID[..n], le));
            }
            2 => {
                let aid = CAC_AIDS[usize::from(ops.byte()? % 4)];
                self.send(&apdu(0, 0xA4, 4, 0, aid, Some(256)));
            }
            3 => {
                let n = usize::from(ops.byte()? % 17);
                let aid = ops.take(n).to_vec();
                self.send(&apdu(0, 0xA4, 4, 0, &aid, None));
            }
            4 => {
                let pin = self.model.pin;
                self.send(&apdu(0, 0x20, 0, 0x80, &pin, None));
            }
            5 => {
                let mut pin = self.model.pin;
                pin[usize::from(kind >> 5)] ^= ops.byte()? | 1;
                self.send(&apdu(0, 0x20, 0, 0x80, &pin, None));
            }
            6 => {
                self.send(&apdu(0, 0x20, 0, 0x80, &[], None));
            }
            7 => {
                self.send(&apdu(0, 0x20, 0xFF, 0x80, &[], None));
            }
            8 => {
                let b = ops.byte()?;
                let puk = b & 1 != 0;
                let mut old = if puk { self.model.puk } else { self.model.pin };
                if b & 2 != 0 {
                    old[0] ^= 0x55;
                }
                let new = padded(if b & 4 != 0 { b"654321" } else { PIN });
                let data = [old, new].concat();
                self.send(&apdu(0, 0x24, 0, 0x80 | u8::from(puk), &data, None));
            }
            9 => {
                let b = ops.byte()?;
                let mut puk = self.model.puk;
                if b & 1 != 0 {
                    puk[7] ^= 0x0F;
                }
                let new = padded(if b & 2 != 0 { b"1111" } else { PIN });
                self.send(&apdu(0, 0x2C, 0, 0x80, &[puk, new].concat(), None));
            }
            10 => self.authenticate(kind & 0x80 == 0),
            11 => {
                let b = ops.byte()?;
                let slot = SLOTS[usize::from(b % 5)];
                let alg = [0x11, 0x14, 0x42][usize::from((b >> 3) % 3)];
                let mut template = tlv(0x80, &[alg]);
                if b & 0x80 != 0 {
                    template.extend(tlv(0xAA, &[1 + (b >> 5) % 3]));
                }
                self.send(&apdu(0, 0x47, 0, slot, &tlv(0xAC, &template), Some(256)));
            }
            12 => {
                let b = ops.byte()?;
                let slot = SLOTS[usize::from(b % 5)];
                let alg = [0x11, 0x14, 0x07][usize::from((b >> 3) % 3)];
                let tag = if b & 0x80 != 0 { 0x85 } else { 0x81 };
                let n = if tag == 0x85 { 65 } else { 32 };
                let input = ops.take(n).to_vec();
                let mut t = tlv(tag, &input);
                t.extend(tlv(0x82, &[]));
                self.send(&apdu(0, 0x87, alg, slot, &tlv(0x7C, &t), Some(256)));
            }
            13 => {
                let b = ops.byte()?;
                let tag = OBJECTS[usize::from(b % 4)];
                let n = usize::from(ops.byte()?) * 4;
                let value = ops.take(n).to_vec();
                let mut data = tlv(0x5C, &tag.to_be_bytes()[1..]);
                data.extend(tlv(0x53, &value));
                self.send(&apdu(0, 0xDB, 0x3F, 0xFF, &data, None));
            }
            14 => {
                let b = ops.byte()?;
                let tag = OBJECTS[usize::from(b % 4)];
                let le = [Some(256), Some(1 + usize::from(b >> 2)), None, Some(65536)]
                    [usize::from(kind >> 6)];
                let list = tlv(0x5C, &tag.to_be_bytes()[1..]);
                self.send(&apdu(0, 0xCB, 0x3F, 0xFF, &list, le));
            }
            15 => {
                let le = ops.byte()?;
                let le = (kind & 0x80 == 0).then_some(if le == 0 { 256 } else { usize::from(le) });
                self.send(&apdu(0, 0xC0, 0, 0, &[], le));
            }
            16 => self.split = 1 + usize::from(ops.byte()? % 12),
            17 => self.power_cycle(),
            18 => self.restart(),
            19 => {
                let b = ops.byte()?;
                self.send(&apdu(0, 0xFA, b & 0x0F, b >> 4, &[], None));
            }
            20 => {
                self.send(&apdu(0, 0xFB, 0, 0, &[], None));
            }
            21 => {
                let b = ops.byte()?;
                let key: Vec<u8> = if b & 1 != 0 {
                    [&[ALG_AES128, 0x9B, 16][..], &[b; 16]].concat()
                } else {
                    [
                        &[ALG_3DES, 0x9B, 24][..],
                        &card::piv::DEFAULT_MANAGEMENT_KEY,
                    ]
                    .concat()
                };
                self.send(&apdu(0, 0xFF, 0xFF, 0xFF, &key, None));
            }
            22 => {
                let b = ops.byte()?;
                let mut pin = padded(&CacConfig::default().pin);
                if b & 1 != 0 {
                    pin[0] ^= 1;
                }
                self.send(&apdu(0, 0x20, 0, 0, &pin, None));
            }
            _ => {
                // YubiKey GET METADATA of the PIN, the PUK or a slot.
                let p2 = [0x80, 0x81, 0x9B, 0x9A, 0x9E][usize::from(ops.byte()? % 5)];
                self.send(&apdu(0, 0xF7, 0, p2, &[], None));
            }
        }
        Some(())
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let dual = first & 1 != 0;
    let pin_tries = 1 + (first >> 1) % 3;
    let puk_tries = 1 + (first >> 3) % 3;
    let path = state_path();
    let cac_path = path.with_file_name("cac.json");
    // Each input starts from a card fresh from its key store.
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(&cac_path);
    let piv = PivConfig {
        pin_tries,
        puk_tries,
        state: Some(path.clone()),
        ..PivConfig::default()
    };
    let cac = CacConfig {
        state: Some(cac_path),
        ..CacConfig::default()
    };
    let mgmt = piv.management_key.clone();
    let mut s = Session {
        maker: Maker { dual, piv, cac },
        under: None,
        model: Model::new(pin_tries, puk_tries, mgmt, dual),
        split: 0,
    };
    s.under().card().power_on();
    let mut ops = Ops { data: rest };
    while s.op(&mut ops).is_some() {}
});
