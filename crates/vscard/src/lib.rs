//! VSCard, the protocol between QEMU's `ccid-card-passthru` (the host, which uses the card) and
//! a client that owns the card (libcacard's `vscclient`, a SPICE client, ours): qemu-ccid.md §1.
//!
//! [`wire`] is the 12-byte big-endian header and the nine messages, with a [`wire::Decoder`]
//! that reassembles split and coalesced messages and checks each declared length before it
//! allocates anything. [`host`] and [`client`] are the two ends' session state machines: bytes
//! and events in, frames and events out; no sockets, threads or clocks (DESIGN.md).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod atr;
pub mod client;
pub mod host;
pub mod wire;

pub use wire::{Decoder, ErrorCode, Frame, Message, MsgType};
