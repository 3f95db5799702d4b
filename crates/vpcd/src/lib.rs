//! The vpcd transport (vsmartcard's virtual PC/SC reader driver; transports.md §3).
//!
//! pcscd loads `libifdvpcd.so`, which listens on TCP (35963 for "Virtual PCD 00 00"); the card
//! connects as a client. Every message in both directions is a big-endian u16 length and that
//! many bytes. One-byte messages from vpcd are control: 00 power off, 01 power on, 02 reset,
//! 04 get ATR (the only one answered); anything longer is a command APDU, answered with the
//! response APDU. [`codec`] holds the byte layer (no I/O); [`client`] the client thread.
#![warn(missing_docs)]

pub mod client;
pub mod codec;

pub use client::{spawn, Client, ClientOptions, SharedCard};
pub use codec::{Decoder, Request};

/// The vpcd port of reader "Virtual PCD 00 00" in Debian's `/etc/reader.conf.d/vpcd`.
pub const DEFAULT_PORT: u16 = 0x8C7B;
