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

mod mgmt;
mod state;

pub use mgmt::{ManagementKey, ALG_3DES, ALG_AES128, ALG_AES192, ALG_AES256};
pub use state::{PinState, SavedKey, State};

use crate::keystore::{CardKey, EcCurve, Identity, KeyKind, KeyStore, PublicKey};
use crate::pin::{Pin, PinStatus, PinVerify};
use crate::{Card, Presence};
use apdu::{ber, Command, Sw};
use std::collections::BTreeMap;
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

/// The four primary key references and their certificate objects (SP 800-73-4 Part 1
/// Table 4b, Part 2).
pub const SLOTS: [(u8, u32); 4] = [
    (0x9A, 0x5F_C1_05),
    (0x9C, 0x5F_C1_0A),
    (0x9D, 0x5F_C1_0B),
    (0x9E, 0x5F_C1_01),
];
/// The retired key-management keys 82..95 (Part 1 Table 4b), whose certificates are
/// 5FC10D..5FC120.
const RETIRED: std::ops::RangeInclusive<u8> = 0x82..=0x95;
/// How many identities the card takes: the primary slots and the retired ones.
pub const MAX_IDENTITIES: usize = 24;
const CHUID: u32 = 0x5F_C1_02;
const CCC: u32 = 0x5F_C1_07;
const KEY_HISTORY: u32 = 0x5F_C1_0C;
const DISCOVERY: u32 = 0x7E;
/// Algorithm identifiers (SP 800-78-4 Table 6-2).
const ALG_RSA_2048: u8 = 0x07;
const ALG_ECC_P256: u8 = 0x11;
const ALG_ECC_P384: u8 = 0x14;
const MANAGEMENT_KEY: u8 = 0x9B;
const PIN_REF: u8 = 0x80;
const PUK_REF: u8 = 0x81;
/// PIN policies (YubiKey metadata and GENERATE/IMPORT tag AA): 1 never, 2 once, 3 always.
const PIN_NEVER: u8 = 1;
const PIN_ONCE: u8 = 2;
const PIN_ALWAYS: u8 = 3;
/// Key origins in YubiKey metadata.
const ORIGIN_GENERATED: u8 = 1;
const ORIGIN_IMPORTED: u8 = 2;

/// Whether `r` names a key slot (primary or retired).
pub(crate) fn is_key_slot(r: u8) -> bool {
    SLOTS.iter().any(|(s, _)| *s == r) || RETIRED.contains(&r)
}

/// The certificate object of a key slot.
fn cert_object(r: u8) -> Option<u32> {
    SLOTS
        .iter()
        .find(|(s, _)| *s == r)
        .map(|(_, o)| *o)
        .or_else(|| {
            RETIRED
                .contains(&r)
                .then(|| 0x5F_C1_0D + u32::from(r - 0x82))
        })
}

/// The key references in the order identities fill them.
fn slot_order() -> impl Iterator<Item = u8> {
    SLOTS.iter().map(|(r, _)| *r).chain(RETIRED)
}

/// The access rule of each slot (Part 1 §3.2): 9C the PIN right before each use, 9E none,
/// the others the PIN once.
fn default_pin_policy(r: u8) -> u8 {
    match r {
        0x9C => PIN_ALWAYS,
        0x9E => PIN_NEVER,
        _ => PIN_ONCE,
    }
}

fn alg_of_kind(kind: KeyKind) -> Option<u8> {
    match kind {
        KeyKind::Rsa(2048) => Some(ALG_RSA_2048),
        KeyKind::Ec(EcCurve::P256) => Some(ALG_ECC_P256),
        KeyKind::Ec(EcCurve::P384) => Some(ALG_ECC_P384),
        KeyKind::Rsa(_) => None,
    }
}

fn kind_of_alg(alg: u8) -> Option<KeyKind> {
    match alg {
        ALG_RSA_2048 => Some(KeyKind::Rsa(2048)),
        ALG_ECC_P256 => Some(KeyKind::Ec(EcCurve::P256)),
        ALG_ECC_P384 => Some(KeyKind::Ec(EcCurve::P384)),
        _ => None,
    }
}

/// PIV card settings.
#[derive(Clone)]
pub struct PivConfig {
    /// The PIN (6–8 characters; default 123456).
    pub pin: Vec<u8>,
    /// The PUK (default 12345678).
    pub puk: Vec<u8>,
    /// Tries before the PIN blocks (default 3).
    pub pin_tries: u8,
    /// Tries before the PUK blocks (default 3).
    pub puk_tries: u8,
    /// The management key (default: 3DES 010203…08 three times).
    pub management_key: ManagementKey,
    /// Where the card keeps what changes on it; `None`: nothing survives a restart.
    pub state: Option<PathBuf>,
}

impl Default for PivConfig {
    fn default() -> Self {
        PivConfig {
            pin: b"123456".to_vec(),
            puk: b"12345678".to_vec(),
            pin_tries: 3,
            puk_tries: 3,
            management_key: ManagementKey::new(ALG_3DES, &DEFAULT_MANAGEMENT_KEY)
                .unwrap_or_else(|| unreachable!("24 bytes is a 3DES key")),
            state: None,
        }
    }
}

/// A PIN or PUK as PIV carries it: 8 bytes, padded with FF (SP 800-73-4 Part 2 §3.2.1).
fn padded(v: &[u8]) -> Option<[u8; 8]> {
    if v.len() > 8 {
        return None;
    }
    let mut p = [0xFF; 8];
    p[..v.len()].copy_from_slice(v);
    Some(p)
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
        why: String,
    },
}

/// Where a slot's private key is.
enum KeySource {
    /// Identity `n` of the key store.
    Store(usize),
    /// Held by the card (generated or imported).
    Card(CardKey),
}

/// A key slot.
struct Slot {
    alg: u8,
    source: KeySource,
    origin: u8,
    pin_policy: u8,
    touch_policy: u8,
}

/// The emulated PIV card.
pub struct PivCard {
    keys: Box<dyn KeyStore>,
    config: PivConfig,
    slots: BTreeMap<u8, Slot>,
    /// Data objects by tag, the value inside the 53 wrapper (7E: the whole object).
    objects: BTreeMap<u32, Vec<u8>>,
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

/// A public key as GENERATE and METADATA answer it (Part 2 §3.3.2 Table 10): RSA 81 modulus,
/// 82 exponent; ECC 86 point.
fn public_tlvs(key: &PublicKey) -> Vec<u8> {
    match key {
        PublicKey::Rsa { modulus, exponent } => {
            let mut v = tlv(0x81, modulus);
            v.extend(tlv(0x82, exponent));
            v
        }
        PublicKey::Ec(point) => tlv(0x86, point),
    }
}

/// Key slots by key reference.
type Slots = BTreeMap<u8, Slot>;
/// Data objects by tag.
type Objects = BTreeMap<u32, Vec<u8>>;

/// The slots and data objects of a card fresh from its key store.
fn factory(ids: &[Identity]) -> Result<(Slots, Objects), PivError> {
    use sha2::Digest;
    if ids.is_empty() {
        return Err(PivError::NoIdentities);
    }
    if ids.len() > MAX_IDENTITIES {
        return Err(PivError::TooMany(ids.len()));
    }
    let mut objects = BTreeMap::new();
    let mut slots = BTreeMap::new();
    for (i, (id, key_ref)) in ids.iter().zip(slot_order()).enumerate() {
        let kind = match id.ec_curve {
            Some(c) => KeyKind::Ec(c),
            None => KeyKind::Rsa(id.modulus_bits),
        };
        let alg = alg_of_kind(kind).ok_or_else(|| PivError::KeySize {
            label: id.label.clone(),
            bits: id.modulus_bits,
        })?;
        slots.insert(
            key_ref,
            Slot {
                alg,
                source: KeySource::Store(i),
                origin: ORIGIN_IMPORTED,
                pin_policy: default_pin_policy(key_ref),
                touch_policy: 1,
            },
        );
        // Certificate object: 70 certificate, 71 CertInfo (uncompressed), FE LRC.
        let mut v = tlv(0x70, &id.cert_der);
        v.extend(tlv(0x71, &[0]));
        v.extend(tlv(0xFE, &[]));
        objects.insert(cert_object(key_ref).unwrap_or_default(), v);
    }
    let digest = sha2::Sha256::digest(&ids[0].cert_der);
    // CHUID (SP 800-73-4 Part 1 Table 9): FASC-N, GUID from the first certificate,
    // expiration, an empty issuer signature, LRC.
    let mut chuid = tlv(
        0x30,
        &apdu::hex::h("D4E739DA739CED39CE739D836858210842108421C84210C3EB"),
    );
    chuid.extend(tlv(0x34, &digest[..16]));
    chuid.extend(tlv(0x35, b"20991231"));
    chuid.extend(tlv(0x3E, &[]));
    chuid.extend(tlv(0xFE, &[]));
    objects.insert(CHUID, chuid);
    // CCC (Table 8): card identifier (GSC-RID + manufacturer + card id), versions, and the
    // empty optional elements.
    let mut card_id = apdu::hex::h("A000000116FF02");
    card_id.extend_from_slice(&digest[16..30]);
    let mut ccc = tlv(0xF0, &card_id);
    for (t, v) in [
        (0xF1u32, &[0x21u8][..]),
        (0xF2, &[0x21]),
        (0xF3, &[]),
        (0xF4, &[0x00]),
        (0xF5, &[0x10]),
        (0xF6, &[]),
        (0xF7, &[]),
        (0xFA, &[]),
        (0xFB, &[]),
        (0xFC, &[]),
        (0xFD, &[]),
        (0xFE, &[]),
    ] {
        ccc.extend(tlv(t, v));
    }
    objects.insert(CCC, ccc);
    // Key history (Table 19): retired keys with their certificates on the card, none off it.
    let retired = ids.len().saturating_sub(SLOTS.len()) as u8;
    let mut kh = tlv(0xC1, &[retired]);
    kh.extend(tlv(0xC2, &[0]));
    kh.extend(tlv(0xFE, &[]));
    objects.insert(KEY_HISTORY, kh);
    // Discovery object (Table 18): the AID, PIN usage policy "PIV PIN only".
    let mut disc = tlv(0x4F, &PIV_AID);
    disc.extend(tlv(0x5F2F, &[0x40, 0x00]));
    objects.insert(DISCOVERY, tlv(0x7E, &disc));
    Ok((slots, objects))
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
            let err = |why: String| PivError::State {
                path: path.display().to_string(),
                why,
            };
            card._lock = Some(state::lock(path).map_err(err)?);
            if let Some(state) = State::load(path).map_err(err)? {
                card.restore(state).map_err(err)?;
                tracing::info!(path = %path.display(), "PIV card state restored");
            }
        }
        Ok(card)
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

    fn restore(&mut self, state: State) -> Result<(), String> {
        if state.card != self.card_id {
            return Err(format!(
                "it belongs to another card (certificates {}…, this card's are {}…); \
                 move it away or name another state file",
                &state.card.get(..16).unwrap_or(&state.card),
                &self.card_id[..16]
            ));
        }
        for (r, saved) in &state.keys {
            let key = CardKey::from_der(&saved.der).map_err(|e| format!("key {r:02X}: {e}"))?;
            if alg_of_kind(key.kind()) != Some(saved.alg) {
                return Err(format!(
                    "key {r:02X}: algorithm {:02X} does not match the key",
                    saved.alg
                ));
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
        self.pin = Pin::restore(&state.pin.value, state.pin.tries, state.pin.left);
        self.puk = Pin::restore(&state.puk.value, state.puk.tries, state.puk.left);
        self.management_key = state.management_key;
        self.objects = state.objects;
        Ok(())
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
        let (ins, p1, p2, mut data) =
            self.chain
                .take()
                .unwrap_or((cmd.ins, cmd.p1, cmd.p2, Vec::new()));
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
            self.selected = false;
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

    /// The object tag named by a GET DATA / PUT DATA tag list `5C len tag`.
    fn object_tag(data: &[u8]) -> Result<(u32, &[u8]), Sw> {
        let (t, rest) = ber::parse_one(data).map_err(|_| Sw::INCORRECT_DATA)?;
        if t.tag != 0x5C || t.value.is_empty() || t.value.len() > 3 {
            return Err(Sw::INCORRECT_DATA);
        }
        Ok((
            t.value.iter().fold(0u32, |a, b| a << 8 | u32::from(*b)),
            rest,
        ))
    }

    fn get_data(&mut self, cmd: &Command, data: &[u8]) -> Result<Vec<u8>, Sw> {
        if (cmd.p1, cmd.p2) != (0x3F, 0xFF) {
            return Err(Sw::INCORRECT_P1P2);
        }
        let (tag, _) = Self::object_tag(data)?;
        match self.objects.get(&tag) {
            Some(v) if tag == DISCOVERY => Ok(v.clone()),
            Some(v) => Ok(tlv(0x53, v)),
            None => Err(Sw::NOT_FOUND),
        }
    }

    /// PUT DATA (Part 2 §3.3.2) of a data object, under the management key.
    fn put_data(&mut self, cmd: &Command, data: &[u8]) -> Result<Vec<u8>, Sw> {
        if (cmd.p1, cmd.p2) != (0x3F, 0xFF) {
            return Err(Sw::INCORRECT_P1P2);
        }
        if !self.management_ok {
            return Err(Sw::SECURITY_STATUS_NOT_SATISFIED);
        }
        let (tag, rest) = Self::object_tag(data)?;
        let (obj, trailing) = ber::parse_one(rest).map_err(|_| Sw::INCORRECT_DATA)?;
        if obj.tag != 0x53 || !trailing.is_empty() || tag == DISCOVERY {
            return Err(Sw::INCORRECT_DATA);
        }
        if !(0x5F_C1_01..=0x5F_C1_23).contains(&tag) {
            return Err(Sw::NOT_FOUND);
        }
        if obj.value.is_empty() {
            self.objects.remove(&tag);
        } else {
            self.objects.insert(tag, obj.value.to_vec());
        }
        self.dirty = true;
        Ok(vec![])
    }

    fn verify(&mut self, cmd: &Command, data: &[u8]) -> Result<Vec<u8>, Sw> {
        if cmd.p2 != PIN_REF {
            return Err(Sw::REFERENCE_NOT_FOUND);
        }
        match (cmd.p1, data.len()) {
            // P1 FF: reset the security status (Part 2 §3.2.1).
            (0xFF, 0) => {
                self.pin_verified = false;
                self.pin_fresh = false;
                return Ok(vec![]);
            }
            (0x00, 0) => {
                return match self.pin.status() {
                    PinStatus::Blocked => Err(Sw::AUTH_METHOD_BLOCKED),
                    _ if self.pin_verified => Ok(vec![]),
                    PinStatus::TriesLeft(n) => Err(Sw::tries_left(n)),
                }
            }
            (0x00, 8) => {}
            (0x00, _) => return Err(Sw::WRONG_LENGTH),
            _ => return Err(Sw::INCORRECT_P1P2),
        }
        self.pin_verified = false;
        self.pin_fresh = false;
        let before = self.pin.tries_left();
        let result = self.pin.verify(data);
        self.dirty |= self.pin.tries_left() != before;
        match result {
            PinVerify::Ok => {
                self.pin_verified = true;
                self.pin_fresh = true;
                Ok(vec![])
            }
            PinVerify::Wrong(n) => Err(Sw::tries_left(n)),
            PinVerify::Blocked => Err(Sw::AUTH_METHOD_BLOCKED),
        }
    }

    /// CHANGE REFERENCE DATA (Part 2 §3.2.2): old and new value, 8 + 8 bytes.
    fn change_reference(&mut self, cmd: &Command, data: &[u8]) -> Result<Vec<u8>, Sw> {
        if cmd.p1 != 0 {
            return Err(Sw::INCORRECT_P1P2);
        }
        if data.len() != 16 {
            return Err(Sw::WRONG_LENGTH);
        }
        let (old, new) = data.split_at(8);
        let which = match cmd.p2 {
            PIN_REF => &mut self.pin,
            PUK_REF => &mut self.puk,
            _ => return Err(Sw::REFERENCE_NOT_FOUND),
        };
        let before = which.tries_left();
        let result = which.verify(old);
        self.dirty |= which.tries_left() != before;
        match result {
            PinVerify::Ok => {
                which.change(new);
                self.dirty = true;
                Ok(vec![])
            }
            PinVerify::Wrong(n) => Err(Sw::tries_left(n)),
            PinVerify::Blocked => Err(Sw::AUTH_METHOD_BLOCKED),
        }
    }

    /// RESET RETRY COUNTER (Part 2 §3.2.3): PUK and new PIN, 8 + 8 bytes.
    fn reset_retry(&mut self, cmd: &Command, data: &[u8]) -> Result<Vec<u8>, Sw> {
        if (cmd.p1, cmd.p2) != (0, PIN_REF) {
            return Err(Sw::INCORRECT_P1P2);
        }
        if data.len() != 16 {
            return Err(Sw::WRONG_LENGTH);
        }
        let (puk, new) = data.split_at(8);
        let before = self.puk.tries_left();
        let result = self.puk.verify(puk);
        self.dirty |= self.puk.tries_left() != before;
        match result {
            PinVerify::Ok => {
                self.pin.change(new);
                self.pin_verified = false;
                self.pin_fresh = false;
                self.dirty = true;
                Ok(vec![])
            }
            PinVerify::Wrong(n) => Err(Sw::tries_left(n)),
            PinVerify::Blocked => Err(Sw::AUTH_METHOD_BLOCKED),
        }
    }

    /// GENERAL AUTHENTICATE (Part 2 §3.2.4): a dynamic authentication template 7C.
    fn general_authenticate(&mut self, cmd: &Command, data: &[u8]) -> Result<Vec<u8>, Sw> {
        let (t, trailing) = ber::parse_one(data).map_err(|_| Sw::INCORRECT_DATA)?;
        if t.tag != 0x7C || !trailing.is_empty() {
            return Err(Sw::INCORRECT_DATA);
        }
        let mut items: BTreeMap<u32, &[u8]> = BTreeMap::new();
        for item in ber::iter(t.value) {
            let item = item.map_err(|_| Sw::INCORRECT_DATA)?;
            items.insert(item.tag, item.value);
        }
        if cmd.p2 == MANAGEMENT_KEY {
            return self.management_auth(cmd.p1, &items);
        }
        let Some(slot) = self.slots.get(&cmd.p2) else {
            return Err(Sw::NOT_FOUND);
        };
        let alg = slot.alg;
        if cmd.p1 != alg {
            return Err(Sw::INCORRECT_P1P2);
        }
        // 81 challenge (RSA: the padded block; ECC: the digest) or 85 exponentiation (ECDH:
        // the peer's point), each with an empty 82 asking for the response.
        let (input, ecdh) = match (items.get(&0x81), items.get(&0x85)) {
            (Some(c), None) => (*c, false),
            (None, Some(p)) if alg != ALG_RSA_2048 => (*p, true),
            _ => return Err(Sw::INCORRECT_DATA),
        };
        if items.get(&0x82).is_none_or(|r| !r.is_empty()) {
            return Err(Sw::INCORRECT_DATA);
        }
        let field = if alg == ALG_ECC_P384 { 48 } else { 32 };
        let size_ok = match (alg, ecdh) {
            (ALG_RSA_2048, _) => input.len() == 256,
            // A digest shorter than the field is signed as it is (FIPS 186-4 §6.4 truncates
            // only longer ones); yubico-piv-tool sends SHA-256 digests to P-384 keys.
            (_, false) => (1..=field).contains(&input.len()),
            (_, true) => input.len() == 1 + 2 * field,
        };
        if !size_ok {
            return Err(Sw::INCORRECT_DATA);
        }
        // Access rules (Part 1 §3.2): by the slot's PIN policy.
        match slot.pin_policy {
            PIN_NEVER => {}
            PIN_ALWAYS if !self.pin_fresh => return Err(Sw::SECURITY_STATUS_NOT_SATISFIED),
            _ if !self.pin_verified => return Err(Sw::SECURITY_STATUS_NOT_SATISFIED),
            _ => {}
        }
        if slot.pin_policy == PIN_ALWAYS {
            self.pin_fresh = false;
        }
        let out = match (&slot.source, alg, ecdh) {
            (KeySource::Store(i), ALG_RSA_2048, _) => self.keys.rsa_raw(*i, input),
            (KeySource::Store(i), _, false) => self.keys.ec_sign(*i, input).map(Zeroizing::new),
            (KeySource::Store(i), _, true) => self.keys.ecdh(*i, input),
            (KeySource::Card(k), ALG_RSA_2048, _) => k.rsa_raw(input),
            (KeySource::Card(k), _, false) => k.ec_sign(input).map(Zeroizing::new),
            (KeySource::Card(k), _, true) => k.ecdh(input),
        };
        match out {
            Ok(out) => Ok(tlv(0x7C, &tlv(0x82, &out))),
            Err(e) => {
                tracing::warn!("PIV private-key operation failed: {e}");
                Err(Sw::UNKNOWN)
            }
        }
    }

    /// The management key's challenge-response (Part 2 Appendix A):
    /// - mutual (A.3): a request for a witness (80 empty) gets one encrypted; the decrypted
    ///   witness (80) with the host's challenge (81) authenticates the host and gets that
    ///   challenge encrypted (82);
    /// - external (A.2): a request for a challenge (81 empty) gets one; its encryption (82)
    ///   authenticates the host. OpenSC's GET CHALLENGE uses this request for random bytes.
    fn management_auth(&mut self, alg: u8, items: &BTreeMap<u32, &[u8]>) -> Result<Vec<u8>, Sw> {
        // SP 800-78-4 Table 6-2: 00 is 3DES-ECB too (the "default" identifier).
        let alg = if alg == 0x00 { ALG_3DES } else { alg };
        if alg != self.management_key.alg() {
            return Err(Sw::INCORRECT_P1P2);
        }
        let n = self.management_key.block_len();
        self.management_ok = false;
        if items.get(&0x80).is_none() {
            return self.external_auth(n, items);
        }
        self.challenge = None;
        match (items.get(&0x80), items.get(&0x81)) {
            (Some(&[]), None) => {
                let mut witness = Zeroizing::new(vec![0u8; n]);
                aws_lc_rs::rand::fill(&mut witness[..]).map_err(|_| Sw::UNKNOWN)?;
                let mut block = witness.to_vec();
                self.management_key.encrypt_block(&mut block)?;
                self.witness = Some(witness);
                Ok(tlv(0x7C, &tlv(0x80, &block)))
            }
            (Some(w), Some(c)) if w.len() == n && c.len() == n => {
                let Some(expected) = self.witness.take() else {
                    // A response without a witness asked for first: out of order.
                    return Err(Sw::CONDITIONS_NOT_SATISFIED);
                };
                if aws_lc_rs::constant_time::verify_slices_are_equal(&expected[..], w).is_err() {
                    return Err(Sw::SECURITY_STATUS_NOT_SATISFIED);
                }
                let mut block = c.to_vec();
                self.management_key.encrypt_block(&mut block)?;
                self.management_ok = true;
                Ok(tlv(0x7C, &tlv(0x82, &block)))
            }
            _ => {
                self.witness = None;
                Err(Sw::INCORRECT_DATA)
            }
        }
    }

    /// External authentication of the host (Part 2 Appendix A.2).
    fn external_auth(&mut self, n: usize, items: &BTreeMap<u32, &[u8]>) -> Result<Vec<u8>, Sw> {
        self.witness = None;
        match (items.get(&0x81), items.get(&0x82)) {
            (Some(&[]), None) => {
                let mut challenge = Zeroizing::new(vec![0u8; n]);
                aws_lc_rs::rand::fill(&mut challenge[..]).map_err(|_| Sw::UNKNOWN)?;
                let answer = tlv(0x7C, &tlv(0x81, &challenge));
                self.challenge = Some(challenge);
                Ok(answer)
            }
            (None, Some(response)) if response.len() == n => {
                let Some(challenge) = self.challenge.take() else {
                    return Err(Sw::CONDITIONS_NOT_SATISFIED);
                };
                let mut expected = Zeroizing::new(challenge.to_vec());
                self.management_key.encrypt_block(&mut expected)?;
                if aws_lc_rs::constant_time::verify_slices_are_equal(&expected[..], response)
                    .is_err()
                {
                    return Err(Sw::SECURITY_STATUS_NOT_SATISFIED);
                }
                self.management_ok = true;
                Ok(vec![])
            }
            _ => {
                self.challenge = None;
                Err(Sw::INCORRECT_DATA)
            }
        }
    }

    /// The PIN and touch policies of a GENERATE or IMPORT (tags AA, AB; 0 = the default).
    fn policies(key_ref: u8, items: &BTreeMap<u32, &[u8]>) -> Result<(u8, u8), Sw> {
        let one = |tag: u32, default: u8| match items.get(&tag) {
            None | Some([0]) => Ok(default),
            Some([p @ 1..=3]) => Ok(*p),
            Some(_) => Err(Sw::INCORRECT_DATA),
        };
        Ok((one(0xAA, default_pin_policy(key_ref))?, one(0xAB, 1)?))
    }

    fn install(&mut self, key_ref: u8, key: CardKey, origin: u8, policies: (u8, u8)) -> u8 {
        let alg = alg_of_kind(key.kind()).unwrap_or_default();
        self.slots.insert(
            key_ref,
            Slot {
                alg,
                source: KeySource::Card(key),
                origin,
                pin_policy: policies.0,
                touch_policy: policies.1,
            },
        );
        self.dirty = true;
        alg
    }

    /// GENERATE ASYMMETRIC KEY PAIR (Part 2 §3.3.2): control reference template AC with the
    /// algorithm (80); the public key comes back in 7F49. The slot's certificate stays as it
    /// is until the host writes a new one.
    fn generate(&mut self, cmd: &Command, data: &[u8]) -> Result<Vec<u8>, Sw> {
        if cmd.p1 != 0 || !is_key_slot(cmd.p2) {
            return Err(Sw::INCORRECT_P1P2);
        }
        if !self.management_ok {
            return Err(Sw::SECURITY_STATUS_NOT_SATISFIED);
        }
        let (t, trailing) = ber::parse_one(data).map_err(|_| Sw::INCORRECT_DATA)?;
        if t.tag != 0xAC || !trailing.is_empty() {
            return Err(Sw::INCORRECT_DATA);
        }
        let mut items: BTreeMap<u32, &[u8]> = BTreeMap::new();
        for item in ber::iter(t.value) {
            let item = item.map_err(|_| Sw::INCORRECT_DATA)?;
            items.insert(item.tag, item.value);
        }
        let kind = match items.get(&0x80) {
            Some([alg]) => kind_of_alg(*alg).ok_or(Sw::INCORRECT_DATA)?,
            _ => return Err(Sw::INCORRECT_DATA),
        };
        let policies = Self::policies(cmd.p2, &items)?;
        let key = CardKey::generate(kind).map_err(|e| {
            tracing::error!("PIV key generation failed: {e}");
            Sw::UNKNOWN
        })?;
        let public = public_tlvs(&key.public());
        let alg = self.install(cmd.p2, key, ORIGIN_GENERATED, policies);
        tracing::info!(
            slot = format!("{:02X}", cmd.p2),
            alg,
            "PIV key generated on the card"
        );
        Ok(tlv(0x7F49, &public))
    }

    /// YubiKey IMPORT KEY (INS FE, P1 algorithm, P2 slot): RSA CRT components 01..05, or the
    /// EC private scalar 06; policies AA, AB.
    fn import(&mut self, cmd: &Command, data: &[u8]) -> Result<Vec<u8>, Sw> {
        if !is_key_slot(cmd.p2) {
            return Err(Sw::INCORRECT_P1P2);
        }
        let kind = kind_of_alg(cmd.p1).ok_or(Sw::INCORRECT_P1P2)?;
        if !self.management_ok {
            return Err(Sw::SECURITY_STATUS_NOT_SATISFIED);
        }
        let mut items: BTreeMap<u32, &[u8]> = BTreeMap::new();
        for item in ber::iter(data) {
            let item = item.map_err(|_| Sw::INCORRECT_DATA)?;
            items.insert(item.tag, item.value);
        }
        let policies = Self::policies(cmd.p2, &items)?;
        let key = match kind {
            KeyKind::Rsa(_) => {
                let part = |t: u32| items.get(&t).copied().ok_or(Sw::INCORRECT_DATA);
                CardKey::from_rsa_crt([part(1)?, part(2)?, part(3)?, part(4)?, part(5)?])
            }
            KeyKind::Ec(curve) => {
                CardKey::from_ec_scalar(curve, items.get(&6).copied().ok_or(Sw::INCORRECT_DATA)?)
            }
        }
        .map_err(|e| {
            tracing::warn!("PIV IMPORT KEY refused: {e}");
            Sw::INCORRECT_DATA
        })?;
        if key.kind() != kind {
            return Err(Sw::INCORRECT_DATA);
        }
        self.install(cmd.p2, key, ORIGIN_IMPORTED, policies);
        Ok(vec![])
    }

    /// YubiKey GET METADATA (INS F7, P2 the reference): 01 algorithm, 02 policies, 03 origin,
    /// 04 public key, 05 default value, 06 retries (total, left).
    fn metadata(&mut self, cmd: &Command) -> Result<Vec<u8>, Sw> {
        if cmd.p1 != 0 {
            return Err(Sw::INCORRECT_P1P2);
        }
        let mut v = Vec::new();
        match cmd.p2 {
            PIN_REF | PUK_REF => {
                let (p, default) = if cmd.p2 == PIN_REF {
                    (&self.pin, padded(b"123456"))
                } else {
                    (&self.puk, padded(b"12345678"))
                };
                let is_default = default.is_some_and(|d| p.value() == d);
                v.extend(tlv(1, &[0xFF]));
                v.extend(tlv(5, &[u8::from(is_default)]));
                v.extend(tlv(6, &[p.max_tries(), p.tries_left()]));
            }
            MANAGEMENT_KEY => {
                let k = &self.management_key;
                v.extend(tlv(1, &[k.alg()]));
                v.extend(tlv(2, &[0, 1]));
                let is_default = k.alg() == ALG_3DES && k.key() == DEFAULT_MANAGEMENT_KEY;
                v.extend(tlv(5, &[u8::from(is_default)]));
            }
            r => {
                let slot = self.slots.get(&r).ok_or(Sw::REFERENCE_NOT_FOUND)?;
                let public = match &slot.source {
                    KeySource::Card(k) => public_tlvs(&k.public()),
                    KeySource::Store(i) => self
                        .keys
                        .identities()
                        .get(*i)
                        .and_then(|id| store_public(&id.cert_der))
                        .map(|p| public_tlvs(&p))
                        .unwrap_or_default(),
                };
                v.extend(tlv(1, &[slot.alg]));
                v.extend(tlv(2, &[slot.pin_policy, slot.touch_policy]));
                v.extend(tlv(3, &[slot.origin]));
                v.extend(tlv(4, &public));
            }
        }
        Ok(v)
    }

    /// YubiKey SET MANAGEMENT KEY (INS FF, P1 FF, P2 FF or FE for touch): algorithm, 9B,
    /// length, key.
    fn set_management_key(&mut self, cmd: &Command, data: &[u8]) -> Result<Vec<u8>, Sw> {
        if cmd.p1 != 0xFF || !matches!(cmd.p2, 0xFF | 0xFE) {
            return Err(Sw::INCORRECT_P1P2);
        }
        if !self.management_ok {
            return Err(Sw::SECURITY_STATUS_NOT_SATISFIED);
        }
        let [alg, MANAGEMENT_KEY, len, key @ ..] = data else {
            return Err(Sw::INCORRECT_DATA);
        };
        if usize::from(*len) != key.len() {
            return Err(Sw::INCORRECT_DATA);
        }
        self.management_key = ManagementKey::new(*alg, key).ok_or(Sw::INCORRECT_DATA)?;
        self.dirty = true;
        Ok(vec![])
    }

    /// YubiKey SET PIN RETRIES (INS FA, P1 PIN tries, P2 PUK tries): needs the management key
    /// and the PIN, and sets both back to the configured values.
    fn set_pin_retries(&mut self, cmd: &Command, _data: &[u8]) -> Result<Vec<u8>, Sw> {
        if !(1..=15).contains(&cmd.p1) || !(1..=15).contains(&cmd.p2) {
            return Err(Sw::INCORRECT_P1P2);
        }
        if !self.management_ok || !self.pin_verified {
            return Err(Sw::SECURITY_STATUS_NOT_SATISFIED);
        }
        let pin = padded(&self.config.pin).ok_or(Sw::UNKNOWN)?;
        let puk = padded(&self.config.puk).ok_or(Sw::UNKNOWN)?;
        self.pin = Pin::new(&pin, cmd.p1);
        self.puk = Pin::new(&puk, cmd.p2);
        self.dirty = true;
        Ok(vec![])
    }

    /// YubiKey RESET (INS FB): only with PIN and PUK both blocked; back to the factory state
    /// of the key store's identities and the configured PIN, PUK and management key.
    fn reset(&mut self, cmd: &Command) -> Result<Vec<u8>, Sw> {
        if (cmd.p1, cmd.p2) != (0, 0) {
            return Err(Sw::INCORRECT_P1P2);
        }
        if self.pin.status() != PinStatus::Blocked || self.puk.status() != PinStatus::Blocked {
            return Err(Sw::CONDITIONS_NOT_SATISFIED);
        }
        let (slots, objects) = factory(self.keys.identities()).map_err(|_| Sw::UNKNOWN)?;
        let pin = padded(&self.config.pin).ok_or(Sw::UNKNOWN)?;
        let puk = padded(&self.config.puk).ok_or(Sw::UNKNOWN)?;
        self.slots = slots;
        self.objects = objects;
        self.pin = Pin::new(&pin, self.config.pin_tries);
        self.puk = Pin::new(&puk, self.config.puk_tries);
        self.management_key = self.config.management_key.clone();
        self.clear();
        self.selected = true;
        self.dirty = true;
        tracing::info!("PIV card reset to its factory state");
        Ok(vec![])
    }
}

/// The public key of a store identity's certificate, for METADATA.
fn store_public(cert_der: &[u8]) -> Option<PublicKey> {
    if let Ok((_, point)) = crate::keystore::ec_public_key(cert_der) {
        return Some(PublicKey::Ec(point));
    }
    crate::keystore::rsa_public_key(cert_der).ok()
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
