//! The service's administrative calls on the PIV card (issue #15): what a card management
//! system does to a PIV card with its management key (SP 800-73-4 Part 2 §3.3: GENERATE
//! ASYMMETRIC KEY PAIR, PUT DATA; Yubico's IMPORT KEY), done by the service on the card object
//! rather than by APDUs from a host, plus the PIN administration a card issuer does (a reset
//! of the PIN, or RESET RETRY COUNTER with the PUK, Part 2 §3.2.3).
//!
//! Each change goes through the same paths the APDUs use (the key slots of `crypto.rs`, the
//! objects of `objects.rs`, the PIN of `admin.rs`) and is saved to the state file at once,
//! atomically (`state.rs`); a change the file cannot take is undone on the card too, so the
//! card and its file never disagree. Each call returns whether a state file holds the change
//! (`false`: the card has none, `state=off`, and the change lasts until the card stops).

use super::admin::padded;
use super::crypto::ORIGIN_IMPORTED;
use super::crypto::{default_pin_policy, store_public, KeySource, Slot, SLOTS};
use super::objects::{cert_in_object, cert_object, cert_object_value};
use super::{alg_of_kind, PivCard, MAX_CHAIN};
use crate::enroll::{self, Algorithm, EnrollError};
use crate::keystore::PublicKey;
use crate::pin::{PinBlocked, PinVerify};

/// The slot names enrollment takes, for messages.
const SLOT_NAMES: &str = "9a, 9c, 9d, 9e";

/// What PIV keys are, for messages.
const PIV_KEYS: &str = "RSA-2048, P-256 or P-384";

/// A primary key slot (SP 800-73-4 Part 1 Table 4b) by its name: `9a`, `9C`, ... The
/// retired slots 82–95 are left out: their certificates are found through the key history
/// object, which enrollment does not rewrite.
pub fn parse_slot(name: &str) -> Result<u8, EnrollError> {
    u8::from_str_radix(name, 16)
        .ok()
        .filter(|r| name.len() == 2 && SLOTS.iter().any(|(s, _)| s == r))
        .ok_or_else(|| EnrollError::Slot {
            slot: name.to_string(),
            slots: SLOT_NAMES,
        })
}

fn slot_name(r: u8) -> String {
    format!("PIV slot {r:02X}")
}

/// A new PIN: 6 to 8 digits (SP 800-73-4 Part 2 §2.4.3), padded with FF to 8 bytes.
fn new_pin(pin: &[u8]) -> Result<zeroize::Zeroizing<[u8; 8]>, EnrollError> {
    if !(6..=8).contains(&pin.len()) || !pin.iter().all(u8::is_ascii_digit) {
        return Err(EnrollError::PinFormat(
            "a PIV PIN is 6 to 8 digits (SP 800-73-4 Part 2 §2.4.3)",
        ));
    }
    padded(pin)
        .map(zeroize::Zeroizing::new)
        .ok_or(EnrollError::PinFormat("a PIV PIN is at most 8 bytes"))
}

impl PivCard {
    /// Calls `hook` when a wrong VERIFY (or CHANGE REFERENCE DATA) blocks the PIN.
    pub fn set_pin_blocked_hook(&mut self, hook: Option<PinBlocked>) {
        self.pin.set_on_blocked(hook);
    }

    /// Writes the state file now, if the card has one; whether it has.
    fn save_now(&mut self) -> Result<bool, EnrollError> {
        self.dirty = false;
        let Some(path) = self.config.state.clone() else {
            return Ok(false);
        };
        self.state()
            .save(&path)
            .map_err(|error| EnrollError::Save {
                path: path.display().to_string(),
                error,
            })?;
        Ok(true)
    }

    /// The public key of slot `r`'s private key.
    fn slot_public(&self, r: u8) -> Option<PublicKey> {
        match &self.slots.get(&r)?.source {
            KeySource::Card(k) => Some(k.public()),
            KeySource::Store(i) => self
                .keys
                .identities()
                .get(*i)
                .and_then(|id| store_public(&id.cert_der)),
        }
    }

    /// The certificate in slot `r`'s certificate object, DER.
    fn slot_certificate(&self, r: u8) -> Option<&[u8]> {
        let tag = cert_object(r)?;
        self.objects.get(&tag).and_then(|v| cert_in_object(v))
    }

    /// Puts back what slot `r` held before a change the state file did not take.
    fn restore_slot(&mut self, r: u8, slot: Option<Slot>) {
        match slot {
            Some(s) => self.slots.insert(r, s),
            None => self.slots.remove(&r),
        };
    }

    /// Puts back slot `r`'s certificate object as it was.
    fn restore_object(&mut self, r: u8, object: Option<Vec<u8>>) {
        if let Some(tag) = cert_object(r) {
            match object {
                Some(v) => self.objects.insert(tag, v),
                None => self.objects.remove(&tag),
            };
        }
    }

    /// Generates a key pair of `alg` in slot `r` (GENERATE ASYMMETRIC KEY PAIR's path, Part 2
    /// §3.3.2, with the slot's default PIN policy) and returns a PKCS#10 request for it,
    /// signed on the card, with `subject` (default: the subject of the slot's certificate).
    /// As with the APDU, the slot's certificate stays until a new one is put there.
    pub fn enroll_generate(
        &mut self,
        r: u8,
        alg: Algorithm,
        subject: Option<&str>,
    ) -> Result<(String, bool), EnrollError> {
        let name = match subject {
            Some(s) => enroll::subject(s)?,
            None => self
                .slot_certificate(r)
                .and_then(enroll::subject_of)
                .ok_or_else(|| EnrollError::NoSubject(slot_name(r)))?,
        };
        let old = self.slots.remove(&r);
        let made = self
            .generate_key(r, alg.kind(), (default_pin_policy(r), 1))
            .map_err(EnrollError::from)
            .and_then(|_| match self.slots.get(&r).map(|s| &s.source) {
                Some(KeySource::Card(key)) => enroll::request(key, name),
                _ => Err(EnrollError::NoKey(slot_name(r))),
            });
        let saved = made.and_then(|csr| self.save_now().map(|saved| (csr, saved)));
        if saved.is_err() {
            self.restore_slot(r, old);
        }
        saved
    }

    /// Puts `cert_pem` into slot `r`'s certificate object (PUT DATA's object, Part 2
    /// §3.3.1), after checking that it certifies the slot's key.
    pub fn put_certificate(&mut self, r: u8, cert_pem: &str) -> Result<bool, EnrollError> {
        let cert = enroll::certificate_der(cert_pem)?;
        let public = self
            .slot_public(r)
            .ok_or_else(|| EnrollError::NoKey(slot_name(r)))?;
        if !enroll::certificate_matches(&cert, &public) {
            return Err(EnrollError::Mismatch(slot_name(r)));
        }
        self.replace_certificate(r, &cert, None)
    }

    /// Imports a private key (IMPORT KEY's path, origin "imported") and its certificate into
    /// slot `r`; the key must be RSA-2048, P-256 or P-384 and the certificate must be its.
    pub fn import_key(
        &mut self,
        r: u8,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<bool, EnrollError> {
        let cert = enroll::certificate_der(cert_pem)?;
        let (key, _) = enroll::private_key(key_pem)?;
        if alg_of_kind(key.kind()).is_none() {
            return Err(EnrollError::KeyKind {
                slot: slot_name(r),
                takes: PIV_KEYS,
                kind: key.kind(),
            });
        }
        if !enroll::certificate_matches(&cert, &key.public()) {
            return Err(EnrollError::Mismatch(slot_name(r)));
        }
        self.replace_certificate(r, &cert, Some(key))
    }

    /// Writes slot `r`'s certificate object (and installs `key` first, if given), saves, and
    /// undoes both if the state file does not take them.
    fn replace_certificate(
        &mut self,
        r: u8,
        cert: &[u8],
        key: Option<crate::keystore::CardKey>,
    ) -> Result<bool, EnrollError> {
        let value = cert_object_value(cert);
        if value.len() > MAX_CHAIN {
            return Err(EnrollError::Certificate(format!(
                "{} bytes; a PIV object holds at most {MAX_CHAIN}",
                cert.len()
            )));
        }
        let tag = cert_object(r).ok_or_else(|| EnrollError::NoKey(slot_name(r)))?;
        let old_slot = key.map(|key| {
            let old = self.slots.remove(&r);
            self.install(r, key, ORIGIN_IMPORTED, (default_pin_policy(r), 1));
            old
        });
        let old_object = self.objects.insert(tag, value);
        match self.save_now() {
            Ok(saved) => {
                tracing::info!(slot = format!("{r:02X}"), "PIV certificate put on the card");
                Ok(saved)
            }
            Err(e) => {
                if let Some(old) = old_slot {
                    self.restore_slot(r, old);
                }
                self.restore_object(r, old_object);
                Err(e)
            }
        }
    }

    /// Deletes slot `r`'s certificate object (PUT DATA with an empty 53, Part 2 §3.3.1); the
    /// key stays.
    pub fn delete_certificate(&mut self, r: u8) -> Result<bool, EnrollError> {
        let tag = cert_object(r).ok_or_else(|| EnrollError::NoCertificate(slot_name(r)))?;
        let object = self
            .objects
            .remove(&tag)
            .ok_or_else(|| EnrollError::NoCertificate(slot_name(r)))?;
        match self.save_now() {
            Ok(saved) => {
                tracing::info!(slot = format!("{r:02X}"), "PIV certificate deleted");
                Ok(saved)
            }
            Err(e) => {
                self.objects.insert(tag, object);
                Err(e)
            }
        }
    }

    /// Sets the PIN to `pin` with its retry counter full, as an issuer's reset does; a PIN
    /// verified before must be verified again.
    pub fn set_pin(&mut self, pin: &[u8]) -> Result<bool, EnrollError> {
        let pin = new_pin(pin)?;
        let before = zeroize::Zeroizing::new(self.pin.value().to_vec());
        let (tries, left) = (self.pin.max_tries(), self.pin.tries_left());
        self.pin.change(&pin[..]);
        self.pin_verified = false;
        self.pin_fresh = false;
        self.save_now()
            .inspect_err(|_| self.pin.set(&before, tries, left))
    }

    /// Unblocks the PIN: with the PUK as RESET RETRY COUNTER does (Part 2 §3.2.3: a wrong PUK
    /// counts against the PUK's own counter), or without it as the issuer's reset
    /// ([`set_pin`](Self::set_pin)).
    pub fn unblock(&mut self, puk: Option<&[u8]>, pin: &[u8]) -> Result<bool, EnrollError> {
        let Some(puk) = puk else {
            return self.set_pin(pin);
        };
        new_pin(pin)?;
        let puk = padded(puk)
            .map(zeroize::Zeroizing::new)
            .ok_or(EnrollError::PinFormat("a PIV PUK is at most 8 bytes"))?;
        let before = self.puk.tries_left();
        match self.puk.verify(&puk[..]) {
            PinVerify::Ok => self.set_pin(pin),
            PinVerify::Wrong(n) => {
                if self.puk.tries_left() != before {
                    self.save_now()?;
                }
                Err(EnrollError::WrongPuk(n))
            }
            PinVerify::Blocked => Err(EnrollError::PukBlocked),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keystore::{FileStore, GeneratedIdentities};
    use crate::piv::PivConfig;
    use crate::Card;
    use apdu::hex::{h, spaced};

    fn card(state: Option<std::path::PathBuf>, data: &std::path::Path) -> PivCard {
        let name = crate::keystore::CardName::new("e").unwrap();
        let store: FileStore = GeneratedIdentities::new(data, &name, None)
            .open(true)
            .unwrap();
        let cfg = PivConfig {
            state,
            ..PivConfig::default()
        };
        PivCard::new(Box::new(store), &cfg).unwrap()
    }

    fn tx(c: &mut PivCard, apdu: &str) -> String {
        spaced(&c.transmit(&h(apdu)))
    }

    #[test]
    fn slots_by_name() {
        assert_eq!(parse_slot("9a").unwrap(), 0x9A);
        assert_eq!(parse_slot("9E").unwrap(), 0x9E);
        for bad in ["82", "9b", "9", "9a0", "zz"] {
            assert!(parse_slot(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn generate_put_delete_survive_a_restart_and_sign() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        let mut c = card(Some(state.clone()), dir.path());
        let (csr, saved) = c
            .enroll_generate(0x9A, Algorithm::P256, Some("CN=enrolled"))
            .unwrap();
        assert!(saved);
        let cert = crate::enroll::certify(&csr);
        // A certificate for another key is refused.
        let other = crate::enroll::certify(
            &enroll::request(
                &crate::keystore::CardKey::generate(Algorithm::P256.kind()).unwrap(),
                enroll::subject("CN=x").unwrap(),
            )
            .unwrap(),
        );
        assert!(matches!(
            c.put_certificate(0x9A, &other),
            Err(EnrollError::Mismatch(_))
        ));
        assert!(c.put_certificate(0x9A, &cert).unwrap());
        drop(c);
        let mut c = card(Some(state.clone()), dir.path());
        assert_eq!(
            c.slot_certificate(0x9A).unwrap(),
            enroll::certificate_der(&cert).unwrap()
        );
        // The host sees a P-256 key in 9A and signs with it after VERIFY.
        tx(&mut c, "00 A4 04 00 05 A0 00 00 03 08");
        assert_eq!(
            tx(&mut c, "00 20 00 80 08 31 32 33 34 35 36 FF FF"),
            "90 00"
        );
        let digest = "11".repeat(32);
        let r = tx(
            &mut c,
            &format!("00 87 11 9A 26 7C 24 82 00 81 20 {digest}"),
        );
        assert!(r.starts_with("7C") && r.ends_with("90 00"), "{r}");
        assert!(c.delete_certificate(0x9A).unwrap());
        assert!(matches!(
            c.delete_certificate(0x9A),
            Err(EnrollError::NoCertificate(_))
        ));
        drop(c);
        let mut c = card(Some(state), dir.path());
        assert!(c.slot_certificate(0x9A).is_none());
        assert!(tx(&mut c, "00 A4 04 00 05 A0 00 00 03 08").ends_with("90 00"));
        assert_eq!(tx(&mut c, "00 CB 3F FF 05 5C 03 5F C1 05 00"), "6A 82");
    }

    #[test]
    fn import_takes_a_key_and_its_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = card(None, dir.path());
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["imported".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        assert!(matches!(
            c.import_key(0x9D, &cert.pem(), &other.serialize_pem()),
            Err(EnrollError::Mismatch(_))
        ));
        assert!(!c
            .import_key(0x9D, &cert.pem(), &key.serialize_pem())
            .unwrap());
        let r = tx(&mut c, "00 A4 04 00 05 A0 00 00 03 08");
        assert!(r.ends_with("90 00"));
        // YubiKey metadata: P-384 (14), imported (origin 2).
        let m = tx(&mut c, "00 F7 00 9D 00");
        assert!(m.starts_with("01 01 14 02 02 02 01 03 01 02"), "{m}");
        assert_eq!(
            c.slot_certificate(0x9D).unwrap(),
            cert.der().to_vec().as_slice()
        );
        let rsa =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_3072)
                .unwrap();
        let rsa_cert = rcgen::CertificateParams::new(vec!["r".into()])
            .unwrap()
            .self_signed(&rsa)
            .unwrap();
        assert!(matches!(
            c.import_key(0x9D, &rsa_cert.pem(), &rsa.serialize_pem()),
            Err(EnrollError::KeyKind { .. })
        ));
    }

    #[test]
    fn set_pin_and_unblock_with_or_without_the_puk() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        let mut c = card(Some(state.clone()), dir.path());
        let blocked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let b = blocked.clone();
        c.set_pin_blocked_hook(Some(std::sync::Arc::new(move || {
            b.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })));
        tx(&mut c, "00 A4 04 00 05 A0 00 00 03 08");
        for left in ["63 C2", "63 C1", "63 C0"] {
            assert_eq!(tx(&mut c, "00 20 00 80 08 30 30 30 30 30 30 FF FF"), left);
        }
        assert_eq!(blocked.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(matches!(
            c.set_pin(b"12ab56"),
            Err(EnrollError::PinFormat(_))
        ));
        assert!(matches!(
            c.set_pin(b"12345"),
            Err(EnrollError::PinFormat(_))
        ));
        assert!(matches!(
            c.unblock(Some(b"00000000"), b"654321"),
            Err(EnrollError::WrongPuk(2))
        ));
        assert!(c.unblock(Some(b"12345678"), b"654321").unwrap());
        assert_eq!(
            tx(&mut c, "00 20 00 80 08 36 35 34 33 32 31 FF FF"),
            "90 00"
        );
        // The PUK's counter is full again after the right PUK; the new PIN survives a restart.
        drop(c);
        let mut c = card(Some(state), dir.path());
        tx(&mut c, "00 A4 04 00 05 A0 00 00 03 08");
        assert_eq!(
            tx(&mut c, "00 20 00 80 08 36 35 34 33 32 31 FF FF"),
            "90 00"
        );
        assert!(c.set_pin(b"11223344").unwrap());
        assert_eq!(tx(&mut c, "00 20 00 80 00"), "63 C3");
    }
}
