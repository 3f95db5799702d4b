//! The key slots and what uses their private keys: the primary slots 9A, 9C, 9D, 9E and the
//! retired slots 82–95 (SP 800-73-4 Part 1 §3.1, Table 4b) with their algorithms (SP 800-78-4
//! Table 6-2) and PIN policies (Part 1 §3.2 access rules); GENERAL AUTHENTICATE with a slot's
//! private key (Part 2 §3.2.4: RSA, ECDSA, ECDH); GENERATE ASYMMETRIC KEY PAIR (Part 2
//! §3.3.2); and the YubiKey IMPORT KEY (INS FE, Yubico's "PIV commands" reference).
//!
//! The management key's side of GENERAL AUTHENTICATE (key reference 9B) is in `admin.rs`.

use super::{tlv, PivCard, PivError, MANAGEMENT_KEY};
use crate::keystore::{CardKey, EcCurve, Identity, KeyError, KeyKind, PublicKey};
use apdu::{ber, Command, Sw};
use std::collections::BTreeMap;
use zeroize::Zeroizing;

/// Algorithm identifiers (SP 800-78-4 Table 6-2).
pub(super) const ALG_RSA_2048: u8 = 0x07;
pub(super) const ALG_ECC_P256: u8 = 0x11;
pub(super) const ALG_ECC_P384: u8 = 0x14;

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
pub(super) const RETIRED: std::ops::RangeInclusive<u8> = 0x82..=0x95;
/// How many identities the card takes: the primary slots and the retired ones.
pub const MAX_IDENTITIES: usize = 24;
/// PIN policies (YubiKey metadata and GENERATE/IMPORT tag AA): 1 never, 2 once, 3 always.
pub(super) const PIN_NEVER: u8 = 1;
pub(super) const PIN_ONCE: u8 = 2;
pub(super) const PIN_ALWAYS: u8 = 3;
/// Key origins in YubiKey metadata.
pub(super) const ORIGIN_GENERATED: u8 = 1;
pub(super) const ORIGIN_IMPORTED: u8 = 2;

/// Whether `r` names a key slot (primary or retired).
pub(crate) fn is_key_slot(r: u8) -> bool {
    SLOTS.iter().any(|(s, _)| *s == r) || RETIRED.contains(&r)
}

/// The key references in the order identities fill them.
pub(super) fn slot_order() -> impl Iterator<Item = u8> {
    SLOTS.iter().map(|(r, _)| *r).chain(RETIRED)
}

/// The access rule of each slot (Part 1 §3.2): 9C the PIN right before each use, 9E none,
/// the others the PIN once.
pub(super) fn default_pin_policy(r: u8) -> u8 {
    match r {
        0x9C => PIN_ALWAYS,
        0x9E => PIN_NEVER,
        _ => PIN_ONCE,
    }
}

pub(super) fn alg_of_kind(kind: KeyKind) -> Option<u8> {
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

/// Where a slot's private key is.
pub(super) enum KeySource {
    /// Identity `n` of the key store.
    Store(usize),
    /// Held by the card (generated or imported).
    Card(CardKey),
}

/// A key slot.
pub(super) struct Slot {
    pub(super) alg: u8,
    pub(super) source: KeySource,
    pub(super) origin: u8,
    pub(super) pin_policy: u8,
    pub(super) touch_policy: u8,
}

/// Key slots by key reference.
pub(super) type Slots = BTreeMap<u8, Slot>;

/// The slots of a card fresh from its key store: identity `i` in the `i`th slot of
/// `slot_order`, with the slot's default PIN policy.
pub(super) fn factory_slots(ids: &[Identity]) -> Result<Slots, PivError> {
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
    }
    Ok(slots)
}

/// A public key as GENERATE and METADATA answer it (Part 2 §3.3.2 Table 10): RSA 81 modulus,
/// 82 exponent; ECC 86 point.
pub(super) fn public_tlvs(key: &PublicKey) -> Vec<u8> {
    match key {
        PublicKey::Rsa { modulus, exponent } => {
            let mut v = tlv(0x81, modulus);
            v.extend(tlv(0x82, exponent));
            v
        }
        PublicKey::Ec(point) => tlv(0x86, point),
    }
}

/// The public key of a store identity's certificate, for METADATA.
pub(super) fn store_public(cert_der: &[u8]) -> Option<PublicKey> {
    if let Ok((_, point)) = crate::keystore::ec_public_key(cert_der) {
        return Some(PublicKey::Ec(point));
    }
    crate::keystore::rsa_public_key(cert_der).ok()
}

impl PivCard {
    /// GENERAL AUTHENTICATE (Part 2 §3.2.4): a dynamic authentication template 7C.
    pub(super) fn general_authenticate(
        &mut self,
        cmd: &Command,
        data: &[u8],
    ) -> Result<Vec<u8>, Sw> {
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

    /// The PIN and touch policies of a GENERATE or IMPORT (tags AA, AB; 0 = the default).
    fn policies(key_ref: u8, items: &BTreeMap<u32, &[u8]>) -> Result<(u8, u8), Sw> {
        let one = |tag: u32, default: u8| match items.get(&tag) {
            None | Some([0]) => Ok(default),
            Some([p @ 1..=3]) => Ok(*p),
            Some(_) => Err(Sw::INCORRECT_DATA),
        };
        Ok((one(0xAA, default_pin_policy(key_ref))?, one(0xAB, 1)?))
    }

    pub(super) fn install(
        &mut self,
        key_ref: u8,
        key: CardKey,
        origin: u8,
        policies: (u8, u8),
    ) -> u8 {
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
    pub(super) fn generate(&mut self, cmd: &Command, data: &[u8]) -> Result<Vec<u8>, Sw> {
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
        let public = self.generate_key(cmd.p2, kind, policies).map_err(|e| {
            tracing::error!("PIV key generation failed: {e}");
            Sw::UNKNOWN
        })?;
        Ok(tlv(0x7F49, &public_tlvs(&public)))
    }

    /// Generates a key pair in slot `key_ref` and installs it there (Part 2 §3.3.2): the one
    /// path for GENERATE ASYMMETRIC KEY PAIR and the service's enrollment (`enroll.rs`).
    /// Returns the public key.
    pub(super) fn generate_key(
        &mut self,
        key_ref: u8,
        kind: KeyKind,
        policies: (u8, u8),
    ) -> Result<PublicKey, KeyError> {
        let key = CardKey::generate(kind)?;
        let public = key.public();
        let alg = self.install(key_ref, key, ORIGIN_GENERATED, policies);
        tracing::info!(
            slot = format!("{key_ref:02X}"),
            alg,
            "PIV key generated on the card"
        );
        Ok(public)
    }

    /// YubiKey IMPORT KEY (INS FE, P1 algorithm, P2 slot): RSA CRT components 01..05, or the
    /// EC private scalar 06; policies AA, AB.
    pub(super) fn import(&mut self, cmd: &Command, data: &[u8]) -> Result<Vec<u8>, Sw> {
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
}
