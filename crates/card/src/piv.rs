//! A PIV card application (NIST SP 800-73-4 Part 2): SELECT with the
//! application property template; GET DATA of the CHUID, CCC, discovery object, key history
//! and the certificate objects of slots 9A, 9C, 9D, 9E; VERIFY, CHANGE REFERENCE DATA and
//! RESET RETRY COUNTER for the PIN and PUK with retry counters (63Cx, 6983) and PIN-always
//! for 9C; GENERAL AUTHENTICATE for RSA-2048 and ECC private-key operations and the 3DES management
//! key's challenge-response; PUT DATA under the management key; command chaining and
//! GET RESPONSE; and the YubiKey PIV vendor commands `yubico-piv-tool` sends right after
//! SELECT (GET VERSION, GET SERIAL).
//!
//! ECC P-256/P-384 keys (from files) sign a digest the host computed and do ECDH (tag 85).
//!
//! Not yet (issue 5): GENERATE ASYMMETRIC KEY PAIR, IMPORT, the AES management keys,
//! persistent state, the cac+piv profile, ECC from PKCS#11 tokens.

use crate::keystore::{EcCurve, KeyStore};
use crate::pin::{Pin, PinStatus, PinVerify};
use crate::{Card, Presence};
use apdu::{ber, Command, Sw};
use std::collections::BTreeMap;
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

/// Key references and their certificate objects (SP 800-73-4 Part 1 Table 4b, Part 2).
pub const SLOTS: [(u8, u32); 4] = [
    (0x9A, 0x5F_C1_05),
    (0x9C, 0x5F_C1_0A),
    (0x9D, 0x5F_C1_0B),
    (0x9E, 0x5F_C1_01),
];
const CHUID: u32 = 0x5F_C1_02;
const CCC: u32 = 0x5F_C1_07;
const KEY_HISTORY: u32 = 0x5F_C1_0C;
const DISCOVERY: u32 = 0x7E;
/// Algorithm identifiers (SP 800-78-4 Table 6-2).
const ALG_3DES: u8 = 0x03;
const ALG_RSA_2048: u8 = 0x07;
const ALG_ECC_P256: u8 = 0x11;
const ALG_ECC_P384: u8 = 0x14;
const MANAGEMENT_KEY: u8 = 0x9B;
const PIN_REF: u8 = 0x80;
const PUK_REF: u8 = 0x81;

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
    /// The 3DES management key.
    pub management_key: [u8; 24],
}

impl Default for PivConfig {
    fn default() -> Self {
        PivConfig {
            pin: b"123456".to_vec(),
            puk: b"12345678".to_vec(),
            pin_tries: 3,
            puk_tries: 3,
            management_key: DEFAULT_MANAGEMENT_KEY,
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
    #[error("{0} certificates; the PIV card has 4 slots (9A, 9C, 9D, 9E)")]
    TooMany(usize),
    /// A key the PIV card cannot use yet.
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
}

/// The emulated PIV card.
pub struct PivCard {
    keys: Box<dyn KeyStore>,
    /// Key reference → (identity index in `keys`, its algorithm identifier).
    slots: Vec<(u8, usize, u8)>,
    /// Data objects by tag, the value inside the 53 wrapper (7E: the whole object).
    objects: BTreeMap<u32, Vec<u8>>,
    pin: Pin,
    puk: Pin,
    pin_verified: bool,
    /// A VERIFY since the last 9C operation (PIN-always, SP 800-73-4 Part 1 §3.2.2).
    pin_fresh: bool,
    management_key: Zeroizing<[u8; 24]>,
    management_ok: bool,
    /// The witness of a management-key authentication in progress.
    witness: Option<Zeroizing<[u8; 8]>>,
    selected: bool,
    /// A command chain being assembled: (INS, P1, P2, data so far).
    chain: Option<(u8, u8, u8, Vec<u8>)>,
    /// The rest of a long response, for GET RESPONSE.
    pending: Option<(Vec<u8>, usize)>,
    serial: u32,
    presence: Presence,
}

impl std::fmt::Debug for PivCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PivCard")
            .field("slots", &self.slots)
            .field("pin_verified", &self.pin_verified)
            .finish()
    }
}

fn tlv(tag: u32, value: &[u8]) -> Vec<u8> {
    ber::encode(tag, value)
}

impl PivCard {
    /// A card whose identities fill slots 9A, 9C, 9D, 9E in order.
    pub fn new(keys: Box<dyn KeyStore>, config: &PivConfig) -> Result<Self, PivError> {
        use sha2::Digest;
        let ids = keys.identities();
        if ids.is_empty() {
            return Err(PivError::NoIdentities);
        }
        if ids.len() > SLOTS.len() {
            return Err(PivError::TooMany(ids.len()));
        }
        let mut objects = BTreeMap::new();
        let mut slots = Vec::new();
        for (i, (id, (key_ref, object))) in ids.iter().zip(SLOTS).enumerate() {
            let alg = match id.ec_curve {
                Some(EcCurve::P256) => ALG_ECC_P256,
                Some(EcCurve::P384) => ALG_ECC_P384,
                None if id.modulus_bits == 2048 => ALG_RSA_2048,
                None => {
                    return Err(PivError::KeySize {
                        label: id.label.clone(),
                        bits: id.modulus_bits,
                    })
                }
            };
            slots.push((key_ref, i, alg));
            // Certificate object: 70 certificate, 71 CertInfo (uncompressed), FE LRC.
            let mut v = tlv(0x70, &id.cert_der);
            v.extend(tlv(0x71, &[0]));
            v.extend(tlv(0xFE, &[]));
            objects.insert(object, v);
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
        // Key history (Table 19): no retired keys.
        let mut kh = tlv(0xC1, &[0]);
        kh.extend(tlv(0xC2, &[0]));
        kh.extend(tlv(0xFE, &[]));
        objects.insert(KEY_HISTORY, kh);
        // Discovery object (Table 18): the AID, PIN usage policy "PIV PIN only".
        let mut disc = tlv(0x4F, &PIV_AID);
        disc.extend(tlv(0x5F2F, &[0x40, 0x00]));
        objects.insert(DISCOVERY, tlv(0x7E, &disc));
        let pin = padded(&config.pin).ok_or(PivError::BadPin("PIN"))?;
        let puk = padded(&config.puk).ok_or(PivError::BadPin("PUK"))?;
        let serial =
            u32::from_be_bytes([digest[30], digest[31], digest[0], digest[1]]) & 0x7FFF_FFFF;
        Ok(PivCard {
            keys,
            slots,
            objects,
            pin: Pin::new(&pin, config.pin_tries),
            puk: Pin::new(&puk, config.puk_tries),
            pin_verified: false,
            pin_fresh: false,
            management_key: Zeroizing::new(config.management_key),
            management_ok: false,
            witness: None,
            selected: false,
            chain: None,
            pending: None,
            serial,
            presence: Presence::new(true),
        })
    }

    /// The serial number GET SERIAL answers (from the first certificate).
    pub fn serial(&self) -> u32 {
        self.serial
    }

    fn clear(&mut self) {
        self.pin_verified = false;
        self.pin_fresh = false;
        self.management_ok = false;
        self.witness = None;
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
        let answer = match cmd.ins {
            0xA4 => self.select(&cmd, &data),
            0xC0 => return self.get_response(cmd.ne()),
            _ if !self.selected => Err(Sw::CONDITIONS_NOT_SATISFIED),
            0xCB => self.get_data(&cmd, &data),
            0xDB => self.put_data(&cmd, &data),
            0x20 => self.verify(&cmd, &data),
            0x24 => self.change_reference(&cmd, &data),
            0x2C => self.reset_retry(&cmd, &data),
            0x87 => self.general_authenticate(&cmd, &data),
            0xFD => Ok(VERSION.to_vec()),
            0xF8 => Ok(self.serial.to_be_bytes().to_vec()),
            _ => Err(Sw::INS_NOT_SUPPORTED),
        };
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
        for a in [ALG_3DES, ALG_RSA_2048, ALG_ECC_P256, ALG_ECC_P384] {
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
        match self.pin.verify(data) {
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
        match which.verify(old) {
            PinVerify::Ok => {
                which.change(new);
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
        match self.puk.verify(puk) {
            PinVerify::Ok => {
                self.pin.change(new);
                self.pin_verified = false;
                self.pin_fresh = false;
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
        let Some(&(_, index, alg)) = self.slots.iter().find(|(r, _, _)| *r == cmd.p2) else {
            return Err(Sw::NOT_FOUND);
        };
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
        // Access rules (Part 1 §3.2): 9E needs nothing, 9C the PIN right before each use,
        // 9A and 9D the PIN once.
        match cmd.p2 {
            0x9E => {}
            0x9C if !self.pin_fresh => return Err(Sw::SECURITY_STATUS_NOT_SATISFIED),
            _ if !self.pin_verified => return Err(Sw::SECURITY_STATUS_NOT_SATISFIED),
            _ => {}
        }
        if cmd.p2 == 0x9C {
            self.pin_fresh = false;
        }
        let out = match (alg, ecdh) {
            (ALG_RSA_2048, _) => self.keys.rsa_raw(index, input),
            (_, false) => self.keys.ec_sign(index, input).map(Zeroizing::new),
            (_, true) => self.keys.ecdh(index, input),
        };
        match out {
            Ok(out) => Ok(tlv(0x7C, &tlv(0x82, &out))),
            Err(e) => {
                tracing::warn!("PIV private-key operation failed: {e}");
                Err(Sw::UNKNOWN)
            }
        }
    }

    /// The management key's challenge-response (Part 2 Appendix A.1/A.3): a request for a
    /// witness (80 empty) gets one encrypted; the decrypted witness (80) with our own
    /// challenge (81) authenticates the host and gets the challenge encrypted (82).
    fn management_auth(&mut self, alg: u8, items: &BTreeMap<u32, &[u8]>) -> Result<Vec<u8>, Sw> {
        use des::cipher::{BlockCipherEncrypt, KeyInit};
        if alg != ALG_3DES {
            return Err(Sw::INCORRECT_P1P2);
        }
        let cipher =
            des::TdesEde3::new_from_slice(&self.management_key[..]).map_err(|_| Sw::UNKNOWN)?;
        self.management_ok = false;
        match (items.get(&0x80), items.get(&0x81)) {
            (Some(&[]), None) => {
                let mut witness = Zeroizing::new([0u8; 8]);
                aws_lc_rs::rand::fill(&mut witness[..]).map_err(|_| Sw::UNKNOWN)?;
                let mut block = des::cipher::Block::<des::TdesEde3>::from(*witness);
                cipher.encrypt_block(&mut block);
                self.witness = Some(witness);
                Ok(tlv(0x7C, &tlv(0x80, &block)))
            }
            (Some(w), Some(c)) if w.len() == 8 && c.len() == 8 => {
                let Some(expected) = self.witness.take() else {
                    // A response without a witness asked for first: out of order.
                    return Err(Sw::CONDITIONS_NOT_SATISFIED);
                };
                if aws_lc_rs::constant_time::verify_slices_are_equal(&expected[..], w).is_err() {
                    return Err(Sw::SECURITY_STATUS_NOT_SATISFIED);
                }
                let mut block = des::cipher::Block::<des::TdesEde3>::default();
                block.copy_from_slice(c);
                cipher.encrypt_block(&mut block);
                self.management_ok = true;
                Ok(tlv(0x7C, &tlv(0x82, &block)))
            }
            _ => {
                self.witness = None;
                Err(Sw::INCORRECT_DATA)
            }
        }
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
        let out = self.process(apdu);
        tracing::trace!(
            apdu = %apdu::hex::spaced(apdu),
            response = %apdu::hex::spaced(&out),
            "PIV APDU"
        );
        out
    }
    fn presence(&self) -> Presence {
        self.presence.clone()
    }
}

#[cfg(test)]
#[path = "piv_tests.rs"]
mod tests;
