//! The service's PIN administration on the CAC card (issue #15): an issuer's reset of the PIN
//! (the CAC card has no PUK: GSC-IS 2.1 leaves unblocking to the card management system), and
//! the hook that reports a PIN blocked by wrong VERIFYs. A PIN set here is in the card's state
//! file before the call returns (issue #17); a card without one (`state=off`, ephemeral) keeps
//! it until the card is made again (the configured PIN comes back).

use super::CacCard;
use crate::enroll::EnrollError;
use crate::pin::PinBlocked;

impl CacCard {
    /// Calls `hook` when a wrong VERIFY blocks the PIN.
    pub fn set_pin_blocked_hook(&mut self, hook: Option<PinBlocked>) {
        self.pin.set_on_blocked(hook);
    }

    /// Sets the PIN to `pin` (1 to 8 bytes, as VERIFY carries it padded with FF to 8) with its
    /// retry counter full; a login before must be made again. Whether the card keeps it across
    /// a restart (its state file); a file that cannot be written leaves the PIN as it was.
    pub fn set_pin(&mut self, pin: &[u8]) -> Result<bool, EnrollError> {
        if pin.is_empty() || pin.len() > 8 || pin.last() == Some(&0xFF) {
            return Err(EnrollError::PinFormat(
                "a CAC PIN is 1 to 8 characters (VERIFY pads it with FF to 8 bytes)",
            ));
        }
        let before = zeroize::Zeroizing::new(self.pin.value().to_vec());
        let (tries, left) = (self.pin.max_tries(), self.pin.tries_left());
        self.pin.change(pin);
        self.logged_in = false;
        self.save().map_err(|error| {
            self.pin.set(&before, tries, left);
            EnrollError::Save {
                path: self
                    .state
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                error,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::cac::{CacCard, CacConfig};
    use crate::keystore::{CardName, GeneratedIdentities};
    use crate::Card;
    use apdu::hex::{h, spaced};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_blocked_pin_is_reported_and_reset() {
        let dir = tempfile::tempdir().unwrap();
        let store = GeneratedIdentities::new(dir.path(), &CardName::new("c").unwrap(), None)
            .open(false)
            .unwrap();
        let mut c = CacCard::new(Box::new(store), &CacConfig::default()).unwrap();
        let blocked = Arc::new(AtomicUsize::new(0));
        let b = blocked.clone();
        c.set_pin_blocked_hook(Some(Arc::new(move || {
            b.fetch_add(1, Ordering::SeqCst);
        })));
        let mut tx = |s: &str| spaced(&c.transmit(&h(s)));
        tx("00 A4 04 00 07 A0 00 00 00 79 01 00");
        for left in ["63 C2", "63 C1", "63 C0"] {
            assert_eq!(tx("00 20 00 00 08 30 30 30 30 30 30 30 30"), left);
        }
        assert_eq!(tx("00 20 00 00 08 31 32 33 34 35 36 37 38"), "69 83");
        assert_eq!(blocked.load(Ordering::SeqCst), 1);
        assert!(c.set_pin(b"").is_err());
        assert!(c.set_pin(b"123456789").is_err());
        c.set_pin(b"4321").unwrap();
        let mut tx = |s: &str| spaced(&c.transmit(&h(s)));
        assert_eq!(tx("00 20 00 00 08 34 33 32 31 FF FF FF FF"), "90 00");
    }
}
