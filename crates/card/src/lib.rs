//! The `Card` trait, the emulated CAC card and the PIV card.
//!
//! A [`Card`] answers power on (the ATR), one command APDU at a time, and power off; its
//! [`Presence`] tells whether it is inserted. The reader, the vpcd client and vscclient consume
//! it; this crate knows nothing of USB, CCID, VSCard or any transport (DESIGN.md).
//!
//! [`cac::CacCard`] is the card libcacard 2.8 emulates, as OpenSC's `cac` driver sees it
//! (libcacard.md §1). Its keys live behind [`keystore::KeyStore`]: PEM/DER files, the embedded
//! default identities, or any PKCS#11 token (NSS softokn databases, SoftHSM2, HSMs).
#![warn(missing_docs)]

pub mod cac;
pub mod dual;
mod fixed;
pub mod keystore;
mod pin;
pub mod piv;
mod presence;
mod traced;

pub use fixed::FixedCard;
pub use pin::{Pin, PinStatus, PinVerify};
pub use presence::Presence;
pub use traced::Traced;

/// A smart card as a reader sees it.
pub trait Card: Send {
    /// The answer-to-reset the card gives now (cached; asking does not reset the card).
    fn atr(&self) -> Vec<u8>;
    /// Cold reset: clears the security state and the selected applets; returns the ATR.
    fn power_on(&mut self) -> Vec<u8>;
    /// Removes power: clears the security state.
    fn power_off(&mut self);
    /// Warm reset; for the emulated card the same as a cold one.
    fn reset(&mut self) -> Vec<u8> {
        self.power_off();
        self.power_on()
    }
    /// One command APDU in, one response APDU (data + SW1 SW2) out. Never panics: malformed
    /// input gets the status word the card would give (6700 and so on).
    fn transmit(&mut self, apdu: &[u8]) -> Vec<u8>;
    /// Insertion state, shared with whoever wants to watch it.
    fn presence(&self) -> Presence;
}
