//! The usb-host (device) side of usbredir (spice usbredir protocol 0.7; transports.md §1):
//! QEMU's `-device usb-redir` is the usb-guest and uses the device we export.
//!
//! [`codec`] frames packets (12-byte header until both hellos are exchanged, 16 with 64-bit
//! ids) and checks each declared length before buffering; [`session`] drives a
//! [`ccid::usb::UsbDevice`] from the guest's packets, keeps IN transfers pending until data
//! exists, answers cancels and resets. Neither does I/O. [`server`] runs a session over any
//! byte stream on `link`'s pump (threads woken by events, no polling while idle).
#![warn(missing_docs)]

pub mod codec;
pub mod server;
pub mod session;
