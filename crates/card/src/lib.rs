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
pub mod enroll;
pub mod keystore;
mod pin;
pub mod piv;
#[cfg(test)]
mod secrets_tests;
#[cfg(test)]
mod testlog;
mod traced;

pub use card_api::{Card, FixedCard, Presence};
pub use pin::{Pin, PinBlocked, PinStatus, PinVerify, Redacted};
pub use traced::Traced;
