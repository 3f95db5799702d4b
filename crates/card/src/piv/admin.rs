//! The PIN, the PUK and the management key, and the YubiKey administration commands: VERIFY
//! (SP 800-73-4 Part 2 §3.2.1), CHANGE REFERENCE DATA (§3.2.2) and RESET RETRY COUNTER
//! (§3.2.3) with their retry counters (63Cx, 6983); the management key's challenge-response
//! through GENERAL AUTHENTICATE with key reference 9B (§3.2.4, Appendix A.2 and A.3); and
//! Yubico's GET METADATA (F7), SET MANAGEMENT KEY (FF), SET PIN RETRIES (FA) and RESET (FB)
//! (Yubico's "PIV commands" reference). The key and its block cipher are in `mgmt.rs`.

use super::crypto::{public_tlvs, store_public, KeySource};
use super::{factory, tlv, ManagementKey, PivCard, ALG_3DES, DEFAULT_MANAGEMENT_KEY};
use crate::pin::{Pin, PinStatus, PinVerify};
use apdu::{Command, Sw};
use std::collections::BTreeMap;
use zeroize::Zeroizing;

/// The key references of the management key, the PIN and the PUK.
pub(super) const MANAGEMENT_KEY: u8 = 0x9B;
const PIN_REF: u8 = 0x80;
const PUK_REF: u8 = 0x81;

/// A PIN or PUK as PIV carries it: 8 bytes, padded with FF (SP 800-73-4 Part 2 §3.2.1).
pub(super) fn padded(v: &[u8]) -> Option<[u8; 8]> {
    if v.len() > 8 {
        return None;
    }
    let mut p = [0xFF; 8];
    p[..v.len()].copy_from_slice(v);
    Some(p)
}

/// The answer to a wrong PIN or PUK (`what`), logged with the tries left as the CAC card's
/// wrong PINs are: 63Cx (Part 2 §3.2.1).
fn wrong(what: &str, tries_left: u8) -> Sw {
    tracing::info!(tries_left, "wrong {what}");
    Sw::tries_left(tries_left)
}

impl PivCard {
    /// VERIFY (Part 2 §3.2.1) of the PIN, or its status (no data), or P1 FF to reset it.
    pub(super) fn verify(&mut self, cmd: &Command, data: &[u8]) -> Result<Vec<u8>, Sw> {
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
        let result = self.pin.verify(data);
        // Every compared try is saved, a right one at full tries too (see `process`).
        self.dirty |= result != PinVerify::Blocked;
        match result {
            PinVerify::Ok => {
                self.pin_verified = true;
                self.pin_fresh = true;
                Ok(vec![])
            }
            PinVerify::Wrong(n) => Err(wrong("PIN", n)),
            PinVerify::Blocked => Err(Sw::AUTH_METHOD_BLOCKED),
        }
    }

    /// CHANGE REFERENCE DATA (Part 2 §3.2.2): old and new value, 8 + 8 bytes.
    pub(super) fn change_reference(&mut self, cmd: &Command, data: &[u8]) -> Result<Vec<u8>, Sw> {
        if cmd.p1 != 0 {
            return Err(Sw::INCORRECT_P1P2);
        }
        if data.len() != 16 {
            return Err(Sw::WRONG_LENGTH);
        }
        let (old, new) = data.split_at(8);
        let (which, what) = match cmd.p2 {
            PIN_REF => (&mut self.pin, "PIN"),
            PUK_REF => (&mut self.puk, "PUK"),
            _ => return Err(Sw::REFERENCE_NOT_FOUND),
        };
        let result = which.verify(old);
        self.dirty |= result != PinVerify::Blocked;
        match result {
            PinVerify::Ok => {
                which.change(new);
                self.dirty = true;
                Ok(vec![])
            }
            PinVerify::Wrong(n) => Err(wrong(what, n)),
            PinVerify::Blocked => Err(Sw::AUTH_METHOD_BLOCKED),
        }
    }

    /// RESET RETRY COUNTER (Part 2 §3.2.3): PUK and new PIN, 8 + 8 bytes.
    pub(super) fn reset_retry(&mut self, cmd: &Command, data: &[u8]) -> Result<Vec<u8>, Sw> {
        if (cmd.p1, cmd.p2) != (0, PIN_REF) {
            return Err(Sw::INCORRECT_P1P2);
        }
        if data.len() != 16 {
            return Err(Sw::WRONG_LENGTH);
        }
        let (puk, new) = data.split_at(8);
        let result = self.puk.verify(puk);
        self.dirty |= result != PinVerify::Blocked;
        match result {
            PinVerify::Ok => {
                self.pin.change(new);
                self.pin_verified = false;
                self.pin_fresh = false;
                self.dirty = true;
                Ok(vec![])
            }
            PinVerify::Wrong(n) => Err(wrong("PUK", n)),
            PinVerify::Blocked => Err(Sw::AUTH_METHOD_BLOCKED),
        }
    }

    /// The management key's challenge-response (Part 2 Appendix A):
    /// - mutual (A.3): a request for a witness (80 empty) gets one encrypted; the decrypted
    ///   witness (80) with the host's challenge (81) authenticates the host and gets that
    ///   challenge encrypted (82);
    /// - external (A.2): a request for a challenge (81 empty) gets one; its encryption (82)
    ///   authenticates the host. OpenSC's GET CHALLENGE uses this request for random bytes.
    pub(super) fn management_auth(
        &mut self,
        alg: u8,
        items: &BTreeMap<u32, &[u8]>,
    ) -> Result<Vec<u8>, Sw> {
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

    /// YubiKey GET METADATA (INS F7, P2 the reference): 01 algorithm, 02 policies, 03 origin,
    /// 04 public key, 05 default value, 06 retries (total, left).
    pub(super) fn metadata(&mut self, cmd: &Command) -> Result<Vec<u8>, Sw> {
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
    pub(super) fn set_management_key(&mut self, cmd: &Command, data: &[u8]) -> Result<Vec<u8>, Sw> {
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
    pub(super) fn set_pin_retries(&mut self, cmd: &Command, _data: &[u8]) -> Result<Vec<u8>, Sw> {
        if !(1..=15).contains(&cmd.p1) || !(1..=15).contains(&cmd.p2) {
            return Err(Sw::INCORRECT_P1P2);
        }
        if !self.management_ok || !self.pin_verified {
            return Err(Sw::SECURITY_STATUS_NOT_SATISFIED);
        }
        let pin = padded(&self.config.pin).ok_or(Sw::UNKNOWN)?;
        let puk = padded(&self.config.puk).ok_or(Sw::UNKNOWN)?;
        self.pin.set(&pin, cmd.p1, cmd.p1);
        self.puk = Pin::new(&puk, cmd.p2);
        self.dirty = true;
        Ok(vec![])
    }

    /// YubiKey RESET (INS FB): only with PIN and PUK both blocked; back to the factory state
    /// of the key store's identities and the configured PIN, PUK and management key.
    pub(super) fn reset(&mut self, cmd: &Command) -> Result<Vec<u8>, Sw> {
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
        self.pin
            .set(&pin, self.config.pin_tries, self.config.pin_tries);
        self.puk = Pin::new(&puk, self.config.puk_tries);
        self.management_key = self.config.management_key.clone();
        self.clear();
        self.selected = true;
        self.dirty = true;
        tracing::info!("PIV card reset to its factory state");
        Ok(vec![])
    }
}
