//! The emulated CAC card: libcacard 2.8's card as OpenSC's `cac` driver sees it
//! (libcacard.md §1), with its known faults fixed where no client depends on them:
//! a real PIN with a retry counter (63Cx / 6983) instead of "any PIN" / 6985, GET CHALLENGE,
//! bounded SIGN buffers, secure-messaging bits read from CLA b4b3 only.

mod aca;
mod admin;
pub mod applets;
mod state;
#[cfg(test)]
mod tests;

pub use state::{CacState, STATE_FORMAT, STATE_VERSION};

use crate::keystore::{KeyError, KeyStore};
use crate::pin::{Pin, PinStatus, PinVerify};
use crate::{Card, Presence};
use apdu::{Command, Sw};
use applets::{Applet, Kind};
use sha2::Digest;
use std::path::PathBuf;

/// Instructions (GSC-IS 2.1 / CAC Endpoint, ISO 7816-4).
mod ins {
    pub const SELECT: u8 = 0xA4;
    pub const GET_RESPONSE: u8 = 0xC0;
    pub const VERIFY: u8 = 0x20;
    pub const GET_CHALLENGE: u8 = 0x84;
    pub const GET_PROPERTIES: u8 = 0x56;
    pub const READ_BUFFER: u8 = 0x52;
    pub const UPDATE_BUFFER: u8 = 0x58;
    pub const GET_ACR: u8 = 0x4C;
    pub const SIGN_DECRYPT: u8 = 0x42;
    pub const GET_DATA: u8 = 0xCA;
}

/// ISO 7816-4 §5.6: memory failure (the state file could not be written), as the PIV card
/// answers.
const MEMORY_FAILURE: Sw = Sw(0x6581);

/// Largest SIGN/DECRYPT input the card accumulates over chained pieces (RSA-4096 is 512
/// bytes; libcacard has no bound at all).
const MAX_CRYPT_INPUT: usize = 1024;

/// Card-level settings. `Debug` leaves the PIN out (issue #14).
#[derive(Clone)]
pub struct CacConfig {
    /// The PIN VERIFY checks (ASCII digits; CAC pads to 8 bytes with FF, which are stripped).
    pub pin: zeroize::Zeroizing<Vec<u8>>,
    /// Consecutive wrong tries before the PIN blocks.
    pub pin_tries: u8,
    /// The card identifier in the CCC (tag F0).
    pub card_identifier: CardIdentifier,
    /// Where the card keeps its PIN and retry counter (issue #17); `None`: a restart brings
    /// back the configured PIN with full tries.
    pub state: Option<PathBuf>,
    /// What the state file names the card by: a name that outlives the card's certificates
    /// (a generated card, whose certificates enrollment replaces). `None`: SHA-256 over its
    /// certificates, as the PIV card's state file names its card.
    pub state_card: Option<String>,
}

/// Which card identifier the CCC carries (tag F0): what OpenSC takes for the card's serial
/// number, and so what tells two cards apart (issue #15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CardIdentifier {
    /// Derived from the first certificate ([`applets::card_identifier`]): cards with
    /// different certificates have different identifiers.
    #[default]
    FromCertificate,
    /// libcacard's constant ([`applets::CCC_CARD_ID`]), the same on every card: for the NSS
    /// database cards of QEMU's `ccid-card-emulated`, so that a guest that knew the card from
    /// libcacard sees the same card.
    Libcacard,
}

impl CacConfig {
    /// The documented default PIN.
    pub const DEFAULT_PIN: &'static str = "12345678";
    /// The documented default number of tries.
    pub const DEFAULT_TRIES: u8 = 3;
}

impl std::fmt::Debug for CacConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacConfig")
            .field("pin", &crate::Redacted)
            .field("pin_tries", &self.pin_tries)
            .field("card_identifier", &self.card_identifier)
            .field("state", &self.state)
            .field("state_card", &self.state_card)
            .finish()
    }
}

impl Default for CacConfig {
    fn default() -> Self {
        CacConfig {
            pin: zeroize::Zeroizing::new(Self::DEFAULT_PIN.as_bytes().to_vec()),
            pin_tries: Self::DEFAULT_TRIES,
            card_identifier: CardIdentifier::default(),
            state: None,
            state_card: None,
        }
    }
}

/// The answer of an applet handler: an answer, or "let the ISO layer handle it"
/// (libcacard's VCARD_NEXT).
enum Handled {
    Done(Answer),
    Next,
}

/// Response data plus status; sized by [`CacCard::finish`].
enum Answer {
    /// Just a status word.
    Sw(Sw),
    /// Data sized against Le by the 61xx rule (libcacard.md §1.5).
    Data(Vec<u8>),
    /// Already sized bytes (GET RESPONSE, GET PROPERTIES' 6Cxx rule).
    Raw(Vec<u8>, Sw),
}

/// A pending response for GET RESPONSE.
struct Pending {
    data: Vec<u8>,
    offset: usize,
}

/// The emulated CAC card.
pub struct CacCard {
    applets: Vec<Applet>,
    /// Selected applet per logical channel (0..3).
    current: [Option<usize>; 4],
    pending: Option<Pending>,
    /// Partial SIGN/DECRYPT input per PKI applet.
    crypt_buf: Vec<Vec<u8>>,
    pin: Pin,
    logged_in: bool,
    windows_compat: bool,
    keys: Box<dyn KeyStore>,
    cplc_serial: [u8; 6],
    presence: Presence,
    /// The state file, if the card keeps one.
    state: Option<PathBuf>,
    /// Which card a state file belongs to ([`CacConfig::state_card`]).
    card_id: String,
    /// The state file's lock, held while the card lives: one process per card state.
    lock: Option<std::fs::File>,
}

impl std::fmt::Debug for CacCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacCard")
            .field("applets", &self.applets.len())
            .field("logged_in", &self.logged_in)
            .finish()
    }
}

/// Why a card cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum CacError {
    /// No identities.
    #[error("the key store holds no certificate; the CAC card needs at least one")]
    NoIdentities,
    /// An EC key: the CAC card's algorithm byte is RSA only.
    #[error("{0}: an EC key; the CAC card is RSA-only (use profile=piv)")]
    NotRsa(String),
    /// More identities than PKI applets.
    #[error("{0} certificates; the CAC card holds at most {max}", max = applets::MAX_PKI)]
    TooMany(usize),
    /// The state file could not be used; it is left as it is.
    #[error("CAC state file {path}: {why}")]
    State {
        /// The file.
        path: String,
        /// Why.
        why: crate::piv::StateError,
    },
}

impl CacCard {
    /// A card with one PKI applet per identity of `keys`, in order.
    pub fn new(keys: Box<dyn KeyStore>, config: &CacConfig) -> Result<Self, CacError> {
        let ids = keys.identities();
        if ids.is_empty() {
            return Err(CacError::NoIdentities);
        }
        if ids.len() > applets::MAX_PKI {
            return Err(CacError::TooMany(ids.len()));
        }
        if let Some(id) = ids.iter().find(|i| i.ec_curve.is_some()) {
            return Err(CacError::NotRsa(id.label.clone()));
        }
        let mut list: Vec<Applet> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| applets::pki(i, &id.cert_der, id.modulus_bits))
            .collect();
        let card_id = match config.card_identifier {
            CardIdentifier::FromCertificate => applets::card_identifier(&ids[0].cert_der),
            CardIdentifier::Libcacard => applets::CCC_CARD_ID,
        };
        list.push(applets::ccc(ids.len(), &card_id));
        list.extend(applets::fixed_applets());
        // GP CPLC carries 6 bytes of SHA-256 of the first certificate (libcacard.md §1.12).
        let digest = sha2::Sha256::digest(&ids[0].cert_der);
        let mut cplc_serial = [0u8; 6];
        cplc_serial.copy_from_slice(&digest[..6]);
        let n = ids.len();
        let card_id = match &config.state_card {
            Some(name) => name.clone(),
            None => crate::piv::card_id(ids),
        };
        let mut card = CacCard {
            applets: list,
            current: [None; 4],
            pending: None,
            crypt_buf: vec![Vec::new(); n],
            pin: Pin::new(&config.pin, config.pin_tries),
            logged_in: false,
            windows_compat: false,
            keys,
            cplc_serial,
            presence: Presence::new(true),
            state: config.state.clone(),
            card_id,
            lock: None,
        };
        card.take_state()
            .map_err(|(path, why)| CacError::State { path, why })?;
        Ok(card)
    }

    /// Takes the state file's lock and what the file holds, if the card keeps one: the PIV
    /// card's rules (a file of another card, of a newer version, or that others may read is
    /// refused and left as it is).
    fn take_state(&mut self) -> Result<(), (String, crate::piv::StateError)> {
        use crate::piv::StateError;
        let Some(path) = self.state.clone() else {
            return Ok(());
        };
        let err = |why: StateError| (path.display().to_string(), why);
        self.lock = Some(crate::piv::state::lock(&path).map_err(err)?);
        // Under the lock no other process writes this file: a temporary one beside it is a
        // write a crash cut short.
        crate::keystore::remove_stale_tmp(&path);
        if let Some(saved) = CacState::load(&path).map_err(err)? {
            if saved.card != self.card_id {
                let short = |s: &str| s.get(..16).unwrap_or(s).to_string();
                return Err(err(StateError::OtherCard {
                    file: short(&saved.card),
                    card: short(&self.card_id),
                }));
            }
            let configured = zeroize::Zeroizing::new(self.pin.value().to_vec());
            self.pin
                .set(&saved.pin.value, saved.pin.tries, saved.pin.left);
            tracing::info!(path = %path.display(), tries_left = saved.pin.left, "CAC card state restored");
            crate::piv::state::warn_if_not_configured(
                "PIN",
                "pin",
                &saved.pin.value,
                &configured,
                &path,
            );
        }
        Ok(())
    }

    /// Lets go of the state file's lock, for a card made anew from the same files to take
    /// it (the service's enrollment); the card writes nothing until [`retake_state`](Self::retake_state).
    pub fn release_state(&mut self) {
        self.lock = None;
    }

    /// Takes the state file's lock again after [`release_state`](Self::release_state), when the
    /// card made anew could not be: this card stays, with the state it had.
    pub fn retake_state(&mut self) -> Result<(), CacError> {
        let Some(path) = &self.state else {
            return Ok(());
        };
        self.lock = Some(
            crate::piv::state::lock(path).map_err(|why| CacError::State {
                path: path.display().to_string(),
                why,
            })?,
        );
        Ok(())
    }

    /// What the state file would hold now.
    pub fn state(&self) -> CacState {
        CacState {
            card: self.card_id.clone(),
            pin: crate::piv::PinState {
                value: zeroize::Zeroizing::new(self.pin.value().to_vec()),
                tries: self.pin.max_tries(),
                left: self.pin.tries_left(),
            },
        }
    }

    /// Writes the state file, if the card keeps one and holds its lock.
    fn save(&self) -> std::io::Result<bool> {
        match (&self.state, &self.lock) {
            (Some(path), Some(_)) => self.state().save(path).map(|()| true),
            (Some(_), None) => Err(std::io::Error::other(
                "the card let go of its state file's lock",
            )),
            (None, _) => Ok(false),
        }
    }

    /// Clears the volatile state: selections, pending response, partial crypt input, login.
    fn clear(&mut self) {
        self.current = [None; 4];
        self.pending = None;
        self.crypt_buf.iter_mut().for_each(Vec::clear);
        self.logged_in = false;
    }

    /// Logged in now (for tests and status).
    pub fn is_logged_in(&self) -> bool {
        self.logged_in
    }

    /// Wrong PINs left before the PIN blocks (for status pages).
    pub fn pin_tries_left(&self) -> u8 {
        self.pin.tries_left()
    }

    /// The certificates of its identities, with their labels (DER).
    pub fn certificates(&self) -> Vec<(String, Vec<u8>)> {
        self.keys
            .identities()
            .iter()
            .map(|i| (i.label.clone(), i.cert_der.clone()))
            .collect()
    }

    fn process(&mut self, bytes: &[u8]) -> Vec<u8> {
        let cmd = match Command::parse(bytes) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("malformed APDU: {e}");
                return Sw::WRONG_LENGTH.to_bytes().to_vec();
            }
        };
        // A pending GET RESPONSE buffer is dropped by any other instruction (libcacard 2.5.3).
        if cmd.ins != ins::GET_RESPONSE {
            self.pending = None;
        }
        let channel = match cmd.cla & 0xF0 {
            0x00 | 0x80 | 0x90 | 0xA0 => usize::from(cmd.cla & 0x03),
            _ => 0,
        };
        let answer = if cmd.ins == ins::GET_CHALLENGE {
            self.get_challenge(&cmd)
        } else {
            let handled = match self.current[channel] {
                Some(i) => self.applet_apdu(i, &cmd),
                None => Handled::Next,
            };
            match handled {
                Handled::Done(a) => a,
                Handled::Next => self.iso_apdu(channel, &cmd),
            }
        };
        self.finish(answer, cmd.ne())
    }

    /// The 61xx rule: data that fits Le is returned with 9000, else it is kept for GET
    /// RESPONSE and 61xx is answered (libcacard.md §1.5).
    fn finish(&mut self, answer: Answer, ne: usize) -> Vec<u8> {
        match answer {
            Answer::Sw(sw) => sw.to_bytes().to_vec(),
            Answer::Raw(mut data, sw) => {
                data.extend_from_slice(&sw.to_bytes());
                data
            }
            Answer::Data(mut data) => {
                if data.len() <= ne {
                    data.extend_from_slice(&Sw::OK.to_bytes());
                    data
                } else {
                    let sw = Sw::more_data(data.len());
                    self.pending = Some(Pending { data, offset: 0 });
                    sw.to_bytes().to_vec()
                }
            }
        }
    }

    /// The generic ISO 7816 layer: SELECT by AID, VERIFY, GET RESPONSE; everything else 6900.
    fn iso_apdu(&mut self, channel: usize, cmd: &Command) -> Answer {
        match cmd.cla & 0xF0 {
            0x00 | 0x80 | 0x90 | 0xA0 => {
                // Secure messaging indication is CLA b4b3 (ISO 7816-4 §5.1.1).
                if cmd.cla & 0x0C != 0 {
                    return Answer::Sw(Sw::SM_NOT_SUPPORTED);
                }
            }
            0xB0 | 0xC0 => {}
            _ => return Answer::Sw(Sw::NOT_ALLOWED),
        }
        match cmd.ins {
            ins::SELECT => self.select_aid(channel, cmd),
            ins::VERIFY => self.verify(cmd),
            ins::GET_RESPONSE => self.get_response(cmd),
            _ => Answer::Sw(Sw::NOT_ALLOWED),
        }
    }

    fn select_aid(&mut self, channel: usize, cmd: &Command) -> Answer {
        if cmd.p1 != 0x04 {
            return Answer::Sw(Sw::FUNCTION_NOT_SUPPORTED);
        }
        let Some(i) = self.applets.iter().position(|a| a.aid == cmd.data) else {
            self.current[channel] = None;
            return Answer::Sw(Sw::NOT_FOUND);
        };
        self.current[channel] = Some(i);
        let applet = &self.applets[i];
        if let Kind::Pki(n) = applet.kind {
            self.crypt_buf[n].clear();
        }
        if applet.kind == Kind::Gp {
            return Answer::Data(apdu::hex::h(
                "6F 19 84 08 A0 00 00 00 03 00 00 00 A5 0D 9F 6E 06 12 91 51 81 01 00 9F 65 01 FF",
            ));
        }
        // FCI stub: 6F { 84 AID, A5 {} } (libcacard.md §1.6).
        let mut fci = vec![
            0x6F,
            (applet.aid.len() + 4) as u8,
            0x84,
            applet.aid.len() as u8,
        ];
        fci.extend_from_slice(&applet.aid);
        fci.extend_from_slice(&[0xA5, 0x00]);
        Answer::Data(fci)
    }

    fn verify(&mut self, cmd: &Command) -> Answer {
        if cmd.p1 != 0 || cmd.p2 != 0 {
            return Answer::Sw(Sw::WRONG_P1P2_NO_INFO);
        }
        if cmd.data.is_empty() {
            // Status query (ISO 7816-4 §7.5.6).
            return Answer::Sw(match (self.logged_in, self.pin.status()) {
                (_, PinStatus::Blocked) => Sw::AUTH_METHOD_BLOCKED,
                (true, _) => Sw::OK,
                (false, PinStatus::TriesLeft(n)) => Sw::tries_left(n),
            });
        }
        // CAC pads the PIN to 8 bytes with FF.
        let end = cmd
            .data
            .iter()
            .rposition(|b| *b != 0xFF)
            .map_or(0, |p| p + 1);
        self.logged_in = false;
        let before = self.pin.tries_left();
        let result = self.pin.verify(&cmd.data[..end]);
        // The counter is on disk before the answer leaves (issue #17). Every compared try is
        // written, a right one at full tries too: if only changes were, a disk that refuses
        // writes would answer 6581 to a wrong PIN and 9000 to the right one, a guess with no
        // count. A try the file did not take is undone, so that nothing (the answer, a status
        // query after) tells a right PIN from a wrong one.
        if result != PinVerify::Blocked {
            if let Err(e) = self.save() {
                tracing::error!(
                    path = ?self.state,
                    "cannot save the CAC card state; VERIFY answers 6581: {e}"
                );
                let value = zeroize::Zeroizing::new(self.pin.value().to_vec());
                let max = self.pin.max_tries();
                self.pin.set(&value, max, before);
                return Answer::Sw(MEMORY_FAILURE);
            }
        }
        match result {
            PinVerify::Ok => {
                self.logged_in = true;
                Answer::Sw(Sw::OK)
            }
            PinVerify::Wrong(left) => {
                tracing::info!(tries_left = left, "wrong PIN");
                Answer::Sw(Sw::tries_left(left))
            }
            PinVerify::Blocked => Answer::Sw(Sw::AUTH_METHOD_BLOCKED),
        }
    }

    fn get_response(&mut self, cmd: &Command) -> Answer {
        let Some(p) = self.pending.as_mut() else {
            return Answer::Sw(Sw::REFERENCE_NOT_FOUND);
        };
        let remaining = p.data.len() - p.offset;
        let n = remaining.min(cmd.ne());
        let chunk = p.data[p.offset..p.offset + n].to_vec();
        p.offset += n;
        let left = p.data.len() - p.offset;
        if left == 0 {
            self.pending = None;
            Answer::Raw(chunk, Sw::OK)
        } else {
            Answer::Raw(chunk, Sw::more_data(left))
        }
    }

    /// GET CHALLENGE (ISO 7816-4 §7.5.3): Le random bytes, up to 256 with a short Le and up
    /// to 65536 with an extended one. libcacard answers 6D00, which makes OpenSC's
    /// C_GenerateRandom fail.
    fn get_challenge(&mut self, cmd: &Command) -> Answer {
        if cmd.p1 != 0 || cmd.p2 != 0 {
            return Answer::Sw(Sw::INCORRECT_P1P2);
        }
        let n = cmd.ne();
        if n == 0 || !cmd.data.is_empty() {
            return Answer::Sw(Sw::WRONG_LENGTH);
        }
        let mut out = vec![0u8; n];
        if aws_lc_rs::rand::fill(&mut out).is_err() {
            return Answer::Sw(Sw::UNKNOWN);
        }
        Answer::Raw(out, Sw::OK)
    }

    fn applet_apdu(&mut self, i: usize, cmd: &Command) -> Handled {
        match self.applets[i].kind {
            Kind::Gp => self.gp_apdu(cmd),
            Kind::Msft => self.msft_apdu(cmd),
            _ => self.cac_apdu(i, cmd),
        }
    }

    fn gp_apdu(&mut self, cmd: &Command) -> Handled {
        if cmd.ins != ins::GET_DATA {
            return Handled::Next;
        }
        Handled::Done(match (cmd.p1, cmd.p2) {
            (0x9F, 0x7F) => {
                let mut cplc = apdu::hex::h("9F 7F 2A 00 05 00 45 D0 01 40 21 01 01 07 4F");
                cplc.extend_from_slice(&self.cplc_serial);
                cplc.extend(apdu::hex::h(
                    "47 92 72 05 16 73 72 05 16 74 72 05 00 00 0A 40 00 00 00 00 00 09 29 BB",
                ));
                Answer::Data(cplc)
            }
            (0x00, 0x66) => Answer::Data(apdu::hex::h(
                "66 31 73 2F 06 07 2A 86 48 86 FC 6B 01 60 0C 06 0A 2A 86 48 86 FC 6B 02 02 02 01 \
                 63 09 06 07 2A 86 48 86 FC 6B 03 64 0B 06 09 2A 86 48 86 FC 6B 04 03 10",
            )),
            _ => Answer::Sw(Sw::REFERENCE_NOT_FOUND),
        })
    }

    fn msft_apdu(&mut self, cmd: &Command) -> Handled {
        if cmd.ins != ins::GET_DATA {
            return Handled::Next;
        }
        Handled::Done(match (cmd.p1, cmd.p2) {
            (0x7F, 0x68) => {
                self.windows_compat = true;
                Answer::Data(apdu::hex::h(
                    "30 1D 02 01 00 16 04 4D 53 46 54 30 12 04 10 E2 80 E9 D2 51 88 87 4F 81 D6 4F 25 4E 38 00 1D",
                ))
            }
            _ => Answer::Sw(Sw::REFERENCE_NOT_FOUND),
        })
    }

    /// Commands every CAC applet (PKI, CCC, ACA, containers) answers (libcacard.md §1.6–1.9).
    /// CAC applets never look at CLA: OpenSC sends 00, libcacard's tests 80.
    fn cac_apdu(&mut self, i: usize, cmd: &Command) -> Handled {
        let kind = self.applets[i].kind;
        let answer = match cmd.ins {
            ins::SELECT if cmd.p1 == 0x02 => {
                if cmd.data.len() != 2 {
                    Answer::Sw(Sw::DATA_INVALID)
                } else if self.applets[i].coids.iter().any(|c| c[..] == *cmd.data) {
                    Answer::Sw(Sw::OK)
                } else {
                    Answer::Sw(Sw::NOT_FOUND)
                }
            }
            ins::SELECT | ins::VERIFY | ins::GET_RESPONSE => return Handled::Next,
            ins::GET_PROPERTIES => self.get_properties(i, cmd),
            ins::READ_BUFFER if kind != Kind::Aca => self.read_buffer(i, cmd),
            ins::UPDATE_BUFFER => Answer::Sw(match kind {
                Kind::Pki(_) => Sw::CONDITIONS_NOT_SATISFIED,
                Kind::Aca => Sw::INS_NOT_SUPPORTED,
                _ => Sw::NOT_ALLOWED,
            }),
            ins::GET_ACR if kind == Kind::Aca => {
                match aca::get_acr(cmd.p1, cmd.p2, cmd.data, self.crypt_buf.len()) {
                    Ok(data) => Answer::Data(data),
                    Err(sw) => Answer::Sw(sw),
                }
            }
            ins::SIGN_DECRYPT => match kind {
                Kind::Pki(n) => self.sign_decrypt(n, cmd),
                _ => Answer::Sw(Sw::INS_NOT_SUPPORTED),
            },
            _ => Answer::Sw(Sw::INS_NOT_SUPPORTED),
        };
        Handled::Done(answer)
    }

    fn get_properties(&mut self, i: usize, cmd: &Command) -> Answer {
        if cmd.p2 != 0 {
            return Answer::Sw(Sw::INCORRECT_P1P2);
        }
        let applet = &self.applets[i];
        let data = match cmd.p1 {
            0x01 if !cmd.data.is_empty() => return Answer::Sw(Sw::DATA_INVALID),
            0x01 => applet.props.clone(),
            0x40 => applet.props_long.clone(),
            0x02 if cmd.data.is_empty() => return Answer::Sw(Sw::DATA_INVALID),
            0x02 => {
                // Only the requested top-level tags, in request order.
                let mut out = Vec::new();
                for tag in cmd.data {
                    let hit = apdu::simpletlv::iter(&applet.props_long)
                        .map_while(Result::ok)
                        .find(|t| t.tag == *tag);
                    match hit {
                        Some(t) => apdu::simpletlv::push(&mut out, t.tag, t.value),
                        None => return Answer::Sw(Sw::REFERENCE_NOT_FOUND),
                    }
                }
                out
            }
            _ => return Answer::Sw(Sw::INCORRECT_P1P2),
        };
        // GET PROPERTIES alone answers 6Cxx when Le is larger than the list (libcacard.md §1.5).
        match cmd.le {
            Some(le) if le as usize > data.len() => Answer::Sw(Sw::wrong_le(data.len())),
            _ => Answer::Data(data),
        }
    }

    fn read_buffer(&mut self, i: usize, cmd: &Command) -> Answer {
        let [kind, count] = match cmd.data {
            [k, c] => [*k, *c],
            _ => return Answer::Sw(Sw::DATA_INVALID),
        };
        let applet = &self.applets[i];
        let buf = match kind {
            0x01 => &applet.t,
            0x02 => &applet.v,
            _ => return Answer::Sw(Sw::DATA_INVALID),
        };
        let offset = usize::from(u16::from_be_bytes([cmd.p1, cmd.p2]));
        if offset > buf.len() {
            return Answer::Sw(Sw::INCORRECT_P1P2);
        }
        let n = usize::from(count).min(buf.len() - offset);
        Answer::Data(buf[offset..offset + n].to_vec())
    }

    fn sign_decrypt(&mut self, n: usize, cmd: &Command) -> Answer {
        if cmd.p2 != 0 {
            return Answer::Sw(Sw::INCORRECT_P1P2);
        }
        if cmd.p1 != 0x00 && cmd.p1 != 0x80 {
            self.crypt_buf[n].clear();
            return Answer::Sw(Sw::INCORRECT_P1P2);
        }
        if self.crypt_buf[n].len() + cmd.data.len() > MAX_CRYPT_INPUT {
            self.crypt_buf[n].clear();
            return Answer::Sw(Sw::DATA_INVALID);
        }
        self.crypt_buf[n].extend_from_slice(cmd.data);
        if cmd.p1 == 0x80 {
            return Answer::Sw(Sw::OK);
        }
        let input = zeroize::Zeroizing::new(std::mem::take(&mut self.crypt_buf[n]));
        if !self.logged_in {
            return Answer::Sw(Sw::SECURITY_STATUS_NOT_SATISFIED);
        }
        match self.keys.rsa_raw(n, &input) {
            Ok(out) => Answer::Data(out.to_vec()),
            Err(KeyError::BadInput(why)) => {
                tracing::debug!("SIGN/DECRYPT input refused: {why}");
                Answer::Sw(Sw::DATA_INVALID)
            }
            Err(KeyError::NotLoggedIn) => Answer::Sw(Sw::SECURITY_STATUS_NOT_SATISFIED),
            Err(e) => {
                tracing::warn!("private-key operation failed: {e}");
                Answer::Sw(Sw::UNKNOWN)
            }
        }
    }
}

impl Card for CacCard {
    fn atr(&self) -> Vec<u8> {
        applets::CAC_ATR.to_vec()
    }
    fn power_on(&mut self) -> Vec<u8> {
        self.clear();
        self.atr()
    }
    fn power_off(&mut self) {
        self.clear();
    }
    fn transmit(&mut self, apdu: &[u8]) -> Vec<u8> {
        // No APDU bytes are logged here: card::Traced logs one redacted line per APDU.
        self.process(apdu)
    }
    fn presence(&self) -> Presence {
        self.presence.clone()
    }
}
