//! A PIV card application (NIST SP 800-73-4 Part 2): SELECT with the application property
//! template; GET DATA of the CHUID, CCC, discovery object, key history and the certificate
//! objects of slots 9A, 9C, 9D, 9E and the retired slots 82–95; VERIFY, CHANGE REFERENCE DATA
//! and RESET RETRY COUNTER for the PIN and PUK with retry counters (63Cx, 6983) and the PIN
//! policies (9C: PIN always); GENERAL AUTHENTICATE for RSA-2048 and ECC P-256/P-384
//! private-key operations (ECDSA over the host's digest, ECDH with tag 85) and the 3DES or AES
//! management key's challenge-response; GENERATE ASYMMETRIC KEY PAIR and PUT DATA under the
//! management key; command chaining and GET RESPONSE.
//!
//! `yubico-piv-tool` and `ykcs11` talk to YubiKeys only, so the card also answers a YubiKey
//! PIV applet's vendor commands (Yubico's "PIV commands" reference): GET VERSION (FD), GET
//! SERIAL (F8), GET METADATA (F7), IMPORT KEY (FE), SET MANAGEMENT KEY (FF), SET PIN RETRIES
//! (FA) and RESET (FB), with a version and serial of our own.
//!
//! What changes on the card (keys, objects, PIN, PUK, management key, counters) is kept in a
//! state file when one is configured (`state.rs`).
//!
//! The files, by concern: this one holds the card, its configuration, the APDU dispatcher
//! (SELECT, command chaining, GET RESPONSE) and the glue to the state file; `objects.rs` the
//! data objects (GET DATA, PUT DATA); `crypto.rs` the key slots (GENERAL AUTHENTICATE with a
//! slot's key, GENERATE, IMPORT KEY); `admin.rs` the PIN, PUK and management key (VERIFY,
//! CHANGE REFERENCE DATA, RESET RETRY COUNTER, the 9B challenge-response) and the YubiKey
//! administration commands; `mgmt.rs` the management key's cipher; `state.rs` the state file.

mod admin;
mod crypto;
mod enroll;
mod fascn;
mod mgmt;
mod objects;
pub(crate) mod state;

pub use crypto::{MAX_IDENTITIES, SLOTS};
pub use enroll::parse_slot;
pub use fascn::fascn;
pub use mgmt::{ManagementKey, ALG_3DES, ALG_AES128, ALG_AES192, ALG_AES256};
pub use state::{PinState, SavedKey, State, StateError};

use admin::{padded, MANAGEMENT_KEY};
pub(crate) use crypto::is_key_slot;
use crypto::{alg_of_kind, KeySource, Slot, Slots, ALG_ECC_P256, ALG_ECC_P384, ALG_RSA_2048};
use objects::Objects;

use crate::keystore::{CardKey, Identity, KeyStore};
use crate::pin::Pin;
use crate::{Card, Presence};
use apdu::{ber, Command, Sw};
use std::path::PathBuf;
use zeroize::Zeroizing;

/// The PIV application identifier (SP 800-73-4 Part 1 §2.2), version 01 00.
pub const PIV_AID: [u8; 11] = [
    0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00,
];
/// The ATR of the PIV profile: T=1, historical bytes "vccid PIV" (ISO 7816-3 §8.2; TCK is
/// the XOR of T0..the last historical byte).
pub const PIV_ATR: [u8; 14] = [
    0x3B, 0x89, 0x80, 0x01, 0x76, 0x63, 0x63, 0x69, 0x64, 0x20, 0x50, 0x49, 0x56, 0x1C,
];
/// The default management key, 3DES (YubiKey's factory value, which PIV tools assume).
pub const DEFAULT_MANAGEMENT_KEY: [u8; 24] = [
    1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8,
];
/// The version answered to YubiKey's GET VERSION: 5.x makes `yubico-piv-tool` ask the
/// serial with INS F8 instead of switching to the OTP applet.
pub const VERSION: [u8; 3] = [5, 4, 3];
/// The largest command the card assembles from a chain (a certificate object with room).
pub const MAX_CHAIN: usize = 16 * 1024;
/// ISO 7816-4 §5.6: memory failure (the state file could not be written).
const MEMORY_FAILURE: Sw = Sw(0x6581);

/// PIV card settings. `Debug` leaves the PIN and PUK out, and the management key shows its
/// algorithm only (issue #14).
#[derive(Clone)]
pub struct PivConfig {
    /// The PIN (6–8 characters; default 123456).
    pub pin: Zeroizing<Vec<u8>>,
    /// The PUK (default 12345678).
    pub puk: Zeroizing<Vec<u8>>,
    /// Tries before the PIN blocks (default 3).
    pub pin_tries: u8,
    /// Tries before the PUK blocks (default 3).
    pub puk_tries: u8,
    /// The management key (default: 3DES 010203…08 three times).
    pub management_key: ManagementKey,
    /// Where the card keeps what changes on it; `None`: nothing survives a restart.
    pub state: Option<PathBuf>,
}

impl std::fmt::Debug for PivConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PivConfig")
            .field("pin", &crate::Redacted)
            .field("puk", &crate::Redacted)
            .field("pin_tries", &self.pin_tries)
            .field("puk_tries", &self.puk_tries)
            .field("management_key", &self.management_key)
            .field("state", &self.state)
            .finish()
    }
}

impl Default for PivConfig {
    fn default() -> Self {
        PivConfig {
            pin: Zeroizing::new(b"123456".to_vec()),
            puk: Zeroizing::new(b"12345678".to_vec()),
            pin_tries: 3,
            puk_tries: 3,
            management_key: ManagementKey::new(ALG_3DES, &DEFAULT_MANAGEMENT_KEY)
                .unwrap_or_else(|| unreachable!("24 bytes is a 3DES key")),
            state: None,
        }
    }
}

/// Why a PIV card cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum PivError {
    /// No identities.
    #[error("the key store holds no certificate; the PIV card needs at least one")]
    NoIdentities,
    /// More identities than slots.
    #[error("{0} certificates; the PIV card has {MAX_IDENTITIES} slots (9A, 9C, 9D, 9E, 82–95)")]
    TooMany(usize),
    /// A key the PIV card cannot use.
    #[error("{label}: a {bits}-bit RSA key; the PIV card takes RSA-2048, P-256 and P-384")]
    KeySize {
        /// The identity.
        label: String,
        /// Its modulus size.
        bits: usize,
    },
    /// A bad PIN or PUK.
    #[error("the PIV {0} must be 1 to 8 bytes")]
    BadPin(&'static str),
    /// The state file could not be used; it is left as it is.
    #[error("PIV state file {path}: {why}")]
    State {
        /// The file.
        path: String,
        /// What is wrong.
        why: StateError,
    },
}

/// The emulated PIV card.
pub struct PivCard {
    keys: Box<dyn KeyStore>,
    config: PivConfig,
    slots: Slots,
    /// Data objects by tag, the value inside the 53 wrapper (7E: the whole object).
    objects: Objects,
    pin: Pin,
    puk: Pin,
    pin_verified: bool,
    /// A VERIFY since the last PIN-always operation (SP 800-73-4 Part 1 §3.2.2).
    pin_fresh: bool,
    management_key: ManagementKey,
    management_ok: bool,
    /// The witness of a mutual management-key authentication in progress.
    witness: Option<Zeroizing<Vec<u8>>>,
    /// The challenge of an external management-key authentication in progress.
    challenge: Option<Zeroizing<Vec<u8>>>,
    selected: bool,
    /// A command chain being assembled: (INS, P1, P2, data so far).
    chain: Option<(u8, u8, u8, Vec<u8>)>,
    /// The rest of a long response, for GET RESPONSE.
    pending: Option<(Vec<u8>, usize)>,
    serial: u32,
    /// SHA-256 over the store's certificates, hex: which card a state file belongs to.
    card_id: String,
    /// Something persistent changed during this command.
    dirty: bool,
    /// The state file's lock, held while the card lives: one process per card state.
    _lock: Option<std::fs::File>,
    presence: Presence,
}

/// A PIN or PUK as a command found it: value, maximum and remaining tries.
type SavedPin = (Zeroizing<Vec<u8>>, u8, u8);

/// What a PIN-comparing command may change, kept until its save succeeds.
struct Counters {
    pin: SavedPin,
    puk: SavedPin,
    verified: (bool, bool),
}

impl std::fmt::Debug for PivCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PivCard")
            .field("slots", &self.slots.keys().collect::<Vec<_>>())
            .field("pin_verified", &self.pin_verified)
            .finish()
    }
}

fn tlv(tag: u32, value: &[u8]) -> Vec<u8> {
    ber::encode(tag, value)
}

/// The slots and data objects of a card fresh from its key store.
fn factory(ids: &[Identity]) -> Result<(Slots, Objects), PivError> {
    if ids.is_empty() {
        return Err(PivError::NoIdentities);
    }
    if ids.len() > MAX_IDENTITIES {
        return Err(PivError::TooMany(ids.len()));
    }
    let slots = crypto::factory_slots(ids)?;
    Ok((slots, objects::factory_objects(ids)))
}

/// Which card a state file belongs to: SHA-256 over the store's certificates.
pub fn card_id(ids: &[Identity]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for id in ids {
        h.update((id.cert_der.len() as u32).to_be_bytes());
        h.update(&id.cert_der);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl PivCard {
    /// A card whose identities fill slots 9A, 9C, 9D, 9E, then 82..95, in order; with a state
    /// file in the configuration, what was saved there replaces the factory state.
    pub fn new(keys: Box<dyn KeyStore>, config: &PivConfig) -> Result<Self, PivError> {
        use sha2::Digest;
        let ids = keys.identities();
        let (slots, objects) = factory(ids)?;
        let pin = padded(&config.pin).ok_or(PivError::BadPin("PIN"))?;
        let puk = padded(&config.puk).ok_or(PivError::BadPin("PUK"))?;
        let digest = sha2::Sha256::digest(&ids[0].cert_der);
        let serial =
            u32::from_be_bytes([digest[30], digest[31], digest[0], digest[1]]) & 0x7FFF_FFFF;
        let card_id = card_id(ids);
        let mut card = PivCard {
            keys,
            config: config.clone(),
            slots,
            objects,
            pin: Pin::new(&pin, config.pin_tries),
            puk: Pin::new(&puk, config.puk_tries),
            pin_verified: false,
            pin_fresh: false,
            management_key: config.management_key.clone(),
            management_ok: false,
            witness: None,
            challenge: None,
            selected: false,
            chain: None,
            pending: None,
            serial,
            card_id,
            dirty: false,
            _lock: None,
            presence: Presence::new(true),
        };
        if let Some(path) = &config.state {
            let err = |why: StateError| PivError::State {
                path: path.display().to_string(),
                why,
            };
            card._lock = Some(state::lock(path).map_err(err)?);
            // Under the lock no other process writes this file: a temporary one beside it is
            // a write a crash cut short.
            crate::keystore::remove_stale_tmp(path);
            if let Some(state) = State::load(path).map_err(err)? {
                card.restore(state).map_err(err)?;
                tracing::info!(path = %path.display(), "PIV card state restored");
                state::warn_if_not_configured("PIN", "pin", card.pin.value(), &pin, path);
                state::warn_if_not_configured("PUK", "puk", card.puk.value(), &puk, path);
            }
        }
        Ok(card)
    }

    /// Wrong PINs left before the PIN blocks (for status pages).
    pub fn pin_tries_left(&self) -> u8 {
        self.pin.tries_left()
    }

    /// Wrong PUKs left before the PUK blocks (for status pages and the stateful fuzz target).
    pub fn puk_tries_left(&self) -> u8 {
        self.puk.tries_left()
    }

    /// The certificates in its key slots' objects now (enrolled ones included), as
    /// ("9A", DER) pairs in slot order.
    pub fn certificates(&self) -> Vec<(String, Vec<u8>)> {
        crypto::SLOTS
            .iter()
            .map(|(r, _)| *r)
            .chain(crypto::RETIRED)
            .filter_map(|r| {
                let tag = objects::cert_object(r)?;
                let der = objects::cert_in_object(self.objects.get(&tag)?)?;
                Some((format!("{r:02X}"), der.to_vec()))
            })
            .collect()
    }

    /// The serial number GET SERIAL answers (from the first certificate).
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// What the state file would hold now.
    pub fn state(&self) -> State {
        let pin_state = |p: &Pin| PinState {
            value: Zeroizing::new(p.value().to_vec()),
            tries: p.max_tries(),
            left: p.tries_left(),
        };
        State {
            card: self.card_id.clone(),
            pin: pin_state(&self.pin),
            puk: pin_state(&self.puk),
            management_key: self.management_key.clone(),
            objects: self.objects.clone(),
            keys: self
                .slots
                .iter()
                .filter_map(|(r, s)| match &s.source {
                    KeySource::Card(k) => Some((
                        *r,
                        SavedKey {
                            alg: s.alg,
                            origin: s.origin,
                            pin_policy: s.pin_policy,
                            touch_policy: s.touch_policy,
                            der: Zeroizing::new(k.der().to_vec()),
                        },
                    )),
                    KeySource::Store(_) => None,
                })
                .collect(),
        }
    }

    fn restore(&mut self, state: State) -> Result<(), StateError> {
        if state.card != self.card_id {
            return Err(StateError::OtherCard {
                file: state.card.get(..16).unwrap_or(&state.card).to_string(),
                card: self.card_id[..16].to_string(),
            });
        }
        for (r, saved) in &state.keys {
            let key = CardKey::from_der(&saved.der)
                .map_err(|error| StateError::Key { slot: *r, error })?;
            if alg_of_kind(key.kind()) != Some(saved.alg) {
                return Err(StateError::Algorithm {
                    slot: *r,
                    alg: saved.alg,
                });
            }
            self.slots.insert(
                *r,
                Slot {
                    alg: saved.alg,
                    source: KeySource::Card(key),
                    origin: saved.origin,
                    pin_policy: saved.pin_policy,
                    touch_policy: saved.touch_policy,
                },
            );
        }
        self.pin
            .set(&state.pin.value, state.pin.tries, state.pin.left);
        self.puk = Pin::restore(&state.puk.value, state.puk.tries, state.puk.left);
        self.management_key = state.management_key;
        self.objects = state.objects;
        if objects::renew_shared_chuid(&mut self.objects, self.keys.identities()) {
            // Saved with the next change; until then every start renews it the same way.
            tracing::info!("the saved CHUID had the FASC-N every earlier vccid card shared; this card's own replaces it");
        }
        Ok(())
    }

    /// The PIN and PUK, values and counters, with the login they gave.
    fn counters(&self) -> Counters {
        let copy = |p: &Pin| {
            (
                Zeroizing::new(p.value().to_vec()),
                p.max_tries(),
                p.tries_left(),
            )
        };
        Counters {
            pin: copy(&self.pin),
            puk: copy(&self.puk),
            verified: (self.pin_verified, self.pin_fresh),
        }
    }

    fn restore_counters(&mut self, c: Counters) {
        self.pin.set(&c.pin.0, c.pin.1, c.pin.2);
        self.puk.set(&c.puk.0, c.puk.1, c.puk.2);
        (self.pin_verified, self.pin_fresh) = c.verified;
    }

    /// Writes the state file, if there is one.
    fn persist(&mut self) -> Result<(), Sw> {
        let Some(path) = self.config.state.clone() else {
            return Ok(());
        };
        self.state().save(&path).map_err(|e| {
            tracing::error!(path = %path.display(), "cannot save the PIV card state: {e}");
            MEMORY_FAILURE
        })
    }

    /// Another application of the card was selected (a dual card's CAC applets): the PIV
    /// application is deselected and all its security status indicators are set to FALSE
    /// (SP 800-73-4 Part 2 §3.1.1); its command chain and pending response go with it.
    pub(crate) fn deselect(&mut self) {
        self.clear();
    }

    fn clear(&mut self) {
        self.pin_verified = false;
        self.pin_fresh = false;
        self.management_ok = false;
        self.witness = None;
        self.challenge = None;
        self.selected = false;
        self.chain = None;
        self.pending = None;
    }

    /// Whole response bytes: data then SW, or 61xx with the rest kept for GET RESPONSE.
    fn respond(&mut self, data: Vec<u8>, ne: usize) -> Vec<u8> {
        if data.len() <= ne {
            let mut v = data;
            v.extend_from_slice(&Sw::OK.to_bytes());
            return v;
        }
        let mut v = data[..ne].to_vec();
        let left = data.len() - ne;
        self.pending = Some((data, ne));
        v.extend_from_slice(&Sw::more_data(left).to_bytes());
        v
    }

    fn process(&mut self, bytes: &[u8]) -> Vec<u8> {
        let cmd = match Command::parse(bytes) {
            Ok(c) => c,
            Err(_) => return Sw::WRONG_LENGTH.to_bytes().to_vec(),
        };
        if cmd.ins != 0xC0 {
            self.pending = None;
        }
        if cmd.cla & !0x10 != 0 {
            return Sw::CLA_NOT_SUPPORTED.to_bytes().to_vec();
        }
        // Command chaining (ISO 7816-4 §5.1.1.1): CLA b5 set on all but the last piece, all
        // with the same INS P1 P2.
        // A SELECT is never taken as the wrong piece of another command's chain: it ends the
        // chain and is carried out, as on a Java Card, whose runtime selects applications
        // before any applet sees the command (a host that selects has left what it chained).
        let fresh = (cmd.ins, cmd.p1, cmd.p2, Vec::new());
        let (ins, p1, p2, mut data) = match self.chain.take() {
            Some((i, a, b, _)) if cmd.ins == 0xA4 && (i, a, b) != (cmd.ins, cmd.p1, cmd.p2) => {
                fresh
            }
            Some(chain) => chain,
            None => fresh,
        };
        if (ins, p1, p2) != (cmd.ins, cmd.p1, cmd.p2) {
            return Sw::LAST_COMMAND_EXPECTED.to_bytes().to_vec();
        }
        if data.len() + cmd.data.len() > MAX_CHAIN {
            return Sw::WRONG_LENGTH.to_bytes().to_vec();
        }
        data.extend_from_slice(cmd.data);
        if cmd.cla & 0x10 != 0 {
            self.chain = Some((ins, p1, p2, data));
            return Sw::OK.to_bytes().to_vec();
        }
        let ne = cmd.ne().max(if cmd.le.is_none() { 256 } else { 0 });
        let data = Zeroizing::new(data);
        // The PIN and PUK as they were, for a comparing command whose save fails.
        let counters = matches!(cmd.ins, 0x20 | 0x24 | 0x2C).then(|| self.counters());
        let mut answer = match cmd.ins {
            0xA4 => self.select(&cmd, &data),
            0xC0 => return self.get_response(cmd.ne()),
            _ if !self.selected => Err(Sw::CONDITIONS_NOT_SATISFIED),
            0xCB => self.get_data(&cmd, &data),
            0xDB => self.put_data(&cmd, &data),
            0x20 => self.verify(&cmd, &data),
            0x24 => self.change_reference(&cmd, &data),
            0x2C => self.reset_retry(&cmd, &data),
            0x87 => self.general_authenticate(&cmd, &data),
            0x47 => self.generate(&cmd, &data),
            0xFD => Ok(VERSION.to_vec()),
            0xF8 => Ok(self.serial.to_be_bytes().to_vec()),
            0xF7 => self.metadata(&cmd),
            0xFE => self.import(&cmd, &data),
            0xFF => self.set_management_key(&cmd, &data),
            0xFA => self.set_pin_retries(&cmd, &data),
            0xFB => self.reset(&cmd),
            _ => Err(Sw::INS_NOT_SUPPORTED),
        };
        if std::mem::take(&mut self.dirty) {
            if let Err(sw) = self.persist() {
                // A compared PIN or PUK the file did not take is undone, login and counters
                // alike (issue #17): were only changes saved and kept, a disk that refuses
                // writes would answer 6581 to a wrong PIN and 9000 to the right one, a guess
                // with no count. Nothing then tells a right value from a wrong one.
                if let Some(before) = counters {
                    self.restore_counters(before);
                }
                answer = Err(sw);
            }
        }
        match answer {
            Ok(d) => self.respond(d, ne),
            Err(sw) => sw.to_bytes().to_vec(),
        }
    }

    fn get_response(&mut self, ne: usize) -> Vec<u8> {
        let Some((data, off)) = self.pending.take() else {
            return Sw::CONDITIONS_NOT_SATISFIED.to_bytes().to_vec();
        };
        let rest = data[off..].to_vec();
        self.respond(rest, ne)
    }

    fn select(&mut self, cmd: &Command, data: &[u8]) -> Result<Vec<u8>, Sw> {
        if cmd.p1 != 0x04 {
            return Err(Sw::INCORRECT_P1P2);
        }
        // A right-truncated AID selects too (SP 800-73-4 Part 2 §3.1.1).
        if data.len() < 5 || !PIV_AID.starts_with(data) {
            // The PIV application is no longer selected (its commands get 6985 until it is
            // selected again), so none of its security status survives either: SP 800-73-4
            // Part 2 §3.1.1 sets it to FALSE when the application is deselected.
            self.clear();
            return Err(Sw::NOT_FOUND);
        }
        self.selected = true;
        // Application property template (Part 2 §3.1.1, Table 3).
        let mut apt = tlv(0x4F, &PIV_AID[5..]);
        apt.extend(tlv(0x79, &tlv(0x4F, &PIV_AID[..5])));
        apt.extend(tlv(0x50, b"vccid PIV"));
        let mut algs = Vec::new();
        for a in [
            ALG_3DES,
            ALG_AES128,
            ALG_AES192,
            ALG_AES256,
            ALG_RSA_2048,
            ALG_ECC_P256,
            ALG_ECC_P384,
        ] {
            algs.extend(tlv(0x80, &[a]));
        }
        algs.extend(tlv(0x06, &[0x00]));
        apt.extend(tlv(0xAC, &algs));
        Ok(tlv(0x61, &apt))
    }
}

impl Card for PivCard {
    fn atr(&self) -> Vec<u8> {
        PIV_ATR.to_vec()
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

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_admin;
