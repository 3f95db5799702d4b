//! A mock CCID host that drives a [`UsbDevice`] as libccid does through a host controller:
//! PC_to_RDR messages split in 64-byte bulk-OUT packets (a zero-length packet after a message
//! that fills its last packet), RDR_to_PC replies read either one 64-byte packet at a time
//! (UHCI) or as one large transfer (xHCI), the interrupt endpoint, and the Abort handshake.

use ccid::descriptors::{EP_BULK_IN, EP_BULK_OUT, EP_INTERRUPT_IN};
use ccid::reader::Stall;
use ccid::usb::{Setup, Transfer, UsbDevice};

/// The host side.
pub struct MockHost<D: UsbDevice> {
    /// The device under test.
    pub dev: D,
    /// Bulk-IN transfer size: 64 = packet at a time (UHCI), large = xHCI.
    pub max_in: usize,
}

impl<D: UsbDevice> MockHost<D> {
    /// A host reading `max_in` bytes per bulk-IN transfer.
    pub fn new(dev: D, max_in: usize) -> Self {
        MockHost { dev, max_in }
    }

    /// Sends one message in 64-byte packets; `Err` on STALL.
    pub fn send(&mut self, msg: &[u8]) -> Result<(), Stall> {
        let mut chunks: Vec<&[u8]> = msg.chunks(64).collect();
        if msg.len().is_multiple_of(64) {
            chunks.push(&[]);
        }
        for c in chunks {
            if self.dev.out(EP_BULK_OUT, c) == Transfer::Stall {
                return Err(Stall);
            }
        }
        Ok(())
    }

    /// Reads one reply as libccid does: the header, then until dwLength is complete. `None`
    /// when the device has nothing (the IN stays pending, as a NAK).
    pub fn recv(&mut self) -> Option<Vec<u8>> {
        let mut msg = Vec::new();
        loop {
            match self.dev.input(EP_BULK_IN, self.max_in) {
                Transfer::Done(d) => {
                    let short = d.len() < self.max_in;
                    msg.extend_from_slice(&d);
                    if msg.len() >= 10 {
                        let len = u32::from_le_bytes([msg[1], msg[2], msg[3], msg[4]]) as usize;
                        if msg.len() >= 10 + len && (short || self.max_in > 64) {
                            return Some(msg);
                        }
                    }
                    if short && msg.len() >= 10 {
                        return Some(msg);
                    }
                }
                Transfer::Pending => return if msg.is_empty() { None } else { Some(msg) },
                Transfer::Stall => panic!("bulk IN stalled"),
            }
        }
    }

    /// Sends a message given as hex and returns the reply as spaced hex.
    pub fn xfer(&mut self, cmd: &str) -> String {
        self.send(&apdu::hex::h(cmd)).expect("no STALL");
        apdu::hex::spaced(&self.recv().expect("a reply"))
    }

    /// The interrupt endpoint: a NotifySlotChange, or `None` (pending).
    pub fn interrupt(&mut self) -> Option<Vec<u8>> {
        match self.dev.input(EP_INTERRUPT_IN, 8) {
            Transfer::Done(d) => Some(d),
            _ => None,
        }
    }

    /// The Abort handshake of CCID §5.3.1: the class ABORT request, then PC_to_RDR_Abort with
    /// the same bSeq.
    pub fn abort(&mut self, seq: u8) -> Result<(), Stall> {
        let setup = Setup {
            request_type: 0x21,
            request: 0x01,
            value: u16::from(seq) << 8,
            index: 0,
            length: 0,
        };
        if self.dev.control(&setup, &[]) == Transfer::Stall {
            return Err(Stall);
        }
        self.send(&[0x72, 0, 0, 0, 0, 0, seq, 0, 0, 0])
    }
}
