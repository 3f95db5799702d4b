//! The `Card` trait and card presence: what every reader and transport needs of a card, and
//! nothing else (no applets, key stores, crypto, sockets or threads), so that a transport crate
//! depends on this and never on the emulated card with its AWS-LC and PKCS#11 (DESIGN.md,
//! "Dependency rules"). The emulated CAC and PIV cards live in the `card` crate, the passthru
//! card in `vccid`, the PC/SC card in `hostcard`.
#![warn(missing_docs)]

mod fixed;
mod presence;

pub use fixed::FixedCard;
pub use presence::Presence;

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
