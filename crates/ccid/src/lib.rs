//! A USB CCID reader (CCID rev 1.1) with one or more slots, as a pure state machine.
//!
//! * [`descriptors`]: the device, configuration, interface, CCID class and endpoint descriptors
//!   (QEMU usb-ccid's layout: VID:PID 08E6:4433 so libccid drives it, EP 0x81 interrupt IN,
//!   0x82 bulk IN, 0x03 bulk OUT, 64-byte packets), each value justified against the spec.
//! * [`message`]: PC_to_RDR parsing and RDR_to_PC building (CCID §6.1, §6.2).
//! * [`reader`]: the slots, the bulk-OUT reassembly, the reply queue and its packetization,
//!   the interrupt endpoint, class requests (Abort). Card work leaves the model as
//!   [`reader::CardRequest`]s and comes back through [`reader::Reader::card_answer`], so a slow
//!   card never blocks it and the model stays free of threads and clocks (DESIGN.md).
//! * [`port`]: [`port::CardPort`], how the reader reaches its slot's card (answers, presence,
//!   time-extension ticks), and [`port::InlinePort`], which runs the card synchronously.
//! * [`device`]: [`device::Ccid`], THE reader as a [`usb::UsbDevice`]: the reader model and a
//!   card port; the one implementation every transport, test, fuzz target and bench drives.
//! * [`usb`]: the [`usb::UsbDevice`] trait that transports (usbredir, USB/IP) drive.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod descriptors;
pub mod device;
pub mod message;
pub mod pcap;
pub mod port;
pub mod reader;
pub mod usb;
