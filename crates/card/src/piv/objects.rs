//! The card's data objects: the factory CHUID (SP 800-73-4 Part 1 Table 9), CCC (Table 8),
//! discovery object (Table 18), key history (Table 19) and the certificate objects of the key
//! slots (Part 1 Table 4b); GET DATA (Part 2 §3.1.2) and PUT DATA under the management key
//! (Part 2 §3.3.1). The objects persist through the state file (`state.rs`).

use super::crypto::{slot_order, RETIRED, SLOTS};
use super::{tlv, PivCard, PIV_AID};
use crate::keystore::Identity;
use apdu::{ber, Command, Sw};
use std::collections::BTreeMap;

const CHUID: u32 = 0x5F_C1_02;
const CCC: u32 = 0x5F_C1_07;
const KEY_HISTORY: u32 = 0x5F_C1_0C;
const DISCOVERY: u32 = 0x7E;

/// Data objects by tag.
pub(super) type Objects = BTreeMap<u32, Vec<u8>>;

/// The certificate object of a key slot.
pub(super) fn cert_object(r: u8) -> Option<u32> {
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

/// The data objects of a card fresh from its key store: a certificate object for each
/// identity's slot, and the CHUID, CCC, key history and discovery object. `ids` is not
/// empty (`factory` checks it first).
pub(super) fn factory_objects(ids: &[Identity]) -> Objects {
    use sha2::Digest;
    let mut objects = BTreeMap::new();
    for (id, key_ref) in ids.iter().zip(slot_order()) {
        objects.insert(
            cert_object(key_ref).unwrap_or_default(),
            cert_object_value(&id.cert_der),
        );
    }
    let first = ids.first().map(|id| &id.cert_der[..]).unwrap_or_default();
    let digest = sha2::Sha256::digest(first);
    objects.insert(CHUID, chuid(first, &super::fascn::fascn(first)));
    // CCC (Table 8): card identifier (GSC-RID + manufacturer + card id from the first
    // certificate), versions, and the empty optional elements.
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
    objects
}

/// A certificate object's value (inside 53; SP 800-73-4 Part 1 Appendix A, Table 10): 70
/// the certificate, 71 CertInfo 00 (not compressed), FE the empty error detection code.
pub(super) fn cert_object_value(cert_der: &[u8]) -> Vec<u8> {
    let mut v = tlv(0x70, cert_der);
    v.extend(tlv(0x71, &[0]));
    v.extend(tlv(0xFE, &[]));
    v
}

/// The certificate (tag 70) in a certificate object's value.
pub(super) fn cert_in_object(value: &[u8]) -> Option<&[u8]> {
    ber::iter(value)
        .filter_map(Result::ok)
        .find(|t| t.tag == 0x70)
        .map(|t| t.value)
}

/// The CHUID (SP 800-73-4 Part 1 Table 9) of a card whose first certificate is `first`: the
/// FASC-N, the GUID (the first 16 bytes of SHA-256 of the certificate), expiration, an empty
/// issuer signature, LRC.
fn chuid(first: &[u8], fascn: &[u8; 25]) -> Vec<u8> {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(first);
    let mut chuid = tlv(0x30, fascn);
    chuid.extend(tlv(0x34, &digest[..16]));
    chuid.extend(tlv(0x35, b"20991231"));
    chuid.extend(tlv(0x3E, &[]));
    chuid.extend(tlv(0xFE, &[]));
    chuid
}

/// Replaces a CHUID saved by a vccid from before issue #15, whose FASC-N was the same on every
/// card, with this card's factory CHUID; only that exact factory object is replaced (a CHUID
/// written with PUT DATA is the user's and stays). Whether it replaced it.
pub(super) fn renew_shared_chuid(objects: &mut Objects, ids: &[Identity]) -> bool {
    let first = ids.first().map(|id| &id.cert_der[..]).unwrap_or_default();
    let old = chuid(first, &super::fascn::SHARED_BEFORE);
    match objects.get_mut(&CHUID) {
        Some(saved) if *saved == old => {
            *saved = chuid(first, &super::fascn::fascn(first));
            true
        }
        _ => false,
    }
}

impl PivCard {
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

    /// GET DATA (Part 2 §3.1.2): the object in its 53 wrapper (the discovery object as it is).
    pub(super) fn get_data(&mut self, cmd: &Command, data: &[u8]) -> Result<Vec<u8>, Sw> {
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

    /// PUT DATA (Part 2 §3.3.1) of a data object, under the management key.
    pub(super) fn put_data(&mut self, cmd: &Command, data: &[u8]) -> Result<Vec<u8>, Sw> {
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
}
