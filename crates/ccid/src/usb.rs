//! The `UsbDevice` trait (DESIGN.md): descriptors, control requests, bulk and interrupt
//! transfers, where an IN transfer may stay pending until data exists. A real device NAKs such
//! an IN; answering it at once with no data makes the host spin.

/// A SETUP packet (USB 2.0 §9.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    /// bmRequestType.
    pub request_type: u8,
    /// bRequest.
    pub request: u8,
    /// wValue.
    pub value: u16,
    /// wIndex.
    pub index: u16,
    /// wLength.
    pub length: u16,
}

impl Setup {
    /// Parses the 8 bytes of a SETUP packet.
    pub fn parse(b: [u8; 8]) -> Setup {
        Setup {
            request_type: b[0],
            request: b[1],
            value: u16::from_le_bytes([b[2], b[3]]),
            index: u16::from_le_bytes([b[4], b[5]]),
            length: u16::from_le_bytes([b[6], b[7]]),
        }
    }
    /// Device-to-host?
    pub fn is_in(&self) -> bool {
        self.request_type & 0x80 != 0
    }
}

/// The outcome of a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transfer {
    /// Done; for IN, these bytes (possibly none: a zero-length packet).
    Done(Vec<u8>),
    /// Nothing yet: keep the IN pending (a device NAKs); [`UsbDevice::ready`] says when to retry.
    Pending,
    /// STALL.
    Stall,
}

/// A USB device as a transport sees it.
pub trait UsbDevice: Send {
    /// The device descriptor (USB 2.0 §9.6.1).
    fn device_descriptor(&self) -> Vec<u8>;
    /// The whole configuration descriptor set (§9.6.3).
    fn config_descriptor(&self) -> Vec<u8>;
    /// A control transfer on endpoint 0; `data` is the OUT stage's data.
    fn control(&mut self, setup: &Setup, data: &[u8]) -> Transfer;
    /// A bulk or interrupt OUT transfer to endpoint `ep` (without the direction bit).
    fn out(&mut self, ep: u8, data: &[u8]) -> Transfer;
    /// A bulk or interrupt IN transfer from endpoint `ep` (with 0x80), at most `max_len` bytes.
    fn input(&mut self, ep: u8, max_len: usize) -> Transfer;
    /// Whether an IN on `ep` would now complete (after a [`Transfer::Pending`]).
    fn ready(&self, ep: u8) -> bool;
    /// A USB bus reset.
    fn reset(&mut self);
}

/// An observer of a device's transfers and their results (the `--pcap` capture): it sees every
/// transfer after the device has handled it, and cannot change it. A tap is part of THE reader
/// ([`crate::device::Ccid::with_tap`]), not a second [`UsbDevice`] wrapped around it: one
/// device implementation, whatever is watching.
pub trait Tap: Send {
    /// A control transfer and its result.
    fn control(&mut self, setup: &Setup, data: &[u8], result: &Transfer);
    /// An OUT transfer on `ep` and its result.
    fn out(&mut self, ep: u8, data: &[u8], result: &Transfer);
    /// An IN transfer on `ep` for at most `max_len` bytes and its result (called for pending
    /// ones too: a tap that records completions skips them).
    fn input(&mut self, ep: u8, max_len: usize, result: &Transfer);
    /// The device was reset.
    fn reset(&mut self) {}
}
