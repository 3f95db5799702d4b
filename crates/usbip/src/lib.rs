//! USB/IP, server side (transports.md §2): the codec here, without I/O (all header integers
//! big-endian; setup packets and data passed raw); the URB session in [`session`], also
//! without I/O; the threaded server in [`server`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use thiserror::Error;

pub mod server;
pub mod session;

/// The protocol version `usbip` requires.
pub const VERSION: u16 = 0x0111;
/// The default TCP port.
pub const PORT: u16 = 3240;
/// The largest transfer buffer accepted in a CMD_SUBMIT (a CCID message is at most 65554
/// bytes); a larger declared length is a protocol error and closes that connection.
pub const MAX_TRANSFER: u32 = 70_000;
/// Operation codes (op_common.code).
pub mod op {
    /// Request the device list.
    pub const REQ_DEVLIST: u16 = 0x8005;
    /// Its reply.
    pub const REP_DEVLIST: u16 = 0x0005;
    /// Request to import a device.
    pub const REQ_IMPORT: u16 = 0x8003;
    /// Its reply.
    pub const REP_IMPORT: u16 = 0x0003;
}
/// URB command codes.
pub mod cmd {
    /// CMD_SUBMIT.
    pub const SUBMIT: u32 = 1;
    /// CMD_UNLINK.
    pub const UNLINK: u32 = 2;
    /// RET_SUBMIT.
    pub const RET_SUBMIT: u32 = 3;
    /// RET_UNLINK.
    pub const RET_UNLINK: u32 = 4;
}
/// Linux errno values used as URB status (negated on the wire).
pub mod errno {
    /// Stall.
    pub const EPIPE: i32 = 32;
    /// Unlinked.
    pub const ECONNRESET: i32 = 104;
    /// Device gone.
    pub const ESHUTDOWN: i32 = 108;
}

/// Protocol errors; each closes the connection it happened on.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UsbipError {
    /// Not protocol version 0x0111.
    #[error("USB/IP version {0:#06x}, expected 0x0111")]
    Version(u16),
    /// An operation code a client does not send.
    #[error("unknown USB/IP operation {0:#06x}")]
    UnknownOp(u16),
    /// A URB command code other than CMD_SUBMIT / CMD_UNLINK.
    #[error("unknown USB/IP command {0}")]
    UnknownCommand(u32),
    /// A declared transfer length or ISO packet count beyond the limit.
    #[error("USB/IP CMD_SUBMIT declares {0} bytes (at most {MAX_TRANSFER})")]
    TooLong(u32),
    /// More IN URBs pending than one importer may hold.
    #[error("more than {0} IN URBs pending")]
    TooManyPending(usize),
}

/// What a client asks before importing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpRequest {
    /// OP_REQ_DEVLIST.
    DevList,
    /// OP_REQ_IMPORT with the bus id.
    Import(String),
}

/// Parses one operation request from the front of `b`: `Ok(None)` until it is complete;
/// returns the request and the bytes it used.
pub fn parse_op(b: &[u8]) -> Result<Option<(OpRequest, usize)>, UsbipError> {
    let Some(h) = b.first_chunk::<8>() else {
        return Ok(None);
    };
    let version = u16::from_be_bytes([h[0], h[1]]);
    if version != VERSION {
        return Err(UsbipError::Version(version));
    }
    match u16::from_be_bytes([h[2], h[3]]) {
        op::REQ_DEVLIST => Ok(Some((OpRequest::DevList, 8))),
        op::REQ_IMPORT => {
            let Some(busid) = b.get(8..40) else {
                return Ok(None);
            };
            let end = busid.iter().position(|c| *c == 0).unwrap_or(32);
            Ok(Some((
                OpRequest::Import(String::from_utf8_lossy(&busid[..end]).into_owned()),
                40,
            )))
        }
        other => Err(UsbipError::UnknownOp(other)),
    }
}

/// An exported device as `usbip_usb_device` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// sysfs-like path (cosmetic).
    pub path: String,
    /// Bus id, e.g. "1-1".
    pub busid: String,
    /// Bus number.
    pub busnum: u32,
    /// Device number.
    pub devnum: u32,
    /// Linux usb_device_speed: 2 = full.
    pub speed: u32,
    /// idVendor.
    pub vendor: u16,
    /// idProduct.
    pub product: u16,
    /// bcdDevice.
    pub bcd_device: u16,
    /// Device class, subclass, protocol.
    pub class: (u8, u8, u8),
    /// bConfigurationValue.
    pub configuration: u8,
    /// bNumConfigurations.
    pub num_configurations: u8,
    /// Interface class, subclass, protocol of each interface.
    pub interfaces: Vec<(u8, u8, u8)>,
}

impl Device {
    /// devid as it comes back in every URB header: busnum << 16 | devnum.
    pub fn devid(&self) -> u32 {
        (self.busnum << 16) | (self.devnum & 0xFFFF)
    }

    /// The 312-byte record.
    pub fn record(&self) -> Vec<u8> {
        let mut r = vec![0u8; 312];
        let p = self.path.as_bytes();
        r[..p.len().min(255)].copy_from_slice(&p[..p.len().min(255)]);
        let b = self.busid.as_bytes();
        r[0x100..0x100 + b.len().min(31)].copy_from_slice(&b[..b.len().min(31)]);
        r[0x120..0x124].copy_from_slice(&self.busnum.to_be_bytes());
        r[0x124..0x128].copy_from_slice(&self.devnum.to_be_bytes());
        r[0x128..0x12C].copy_from_slice(&self.speed.to_be_bytes());
        r[0x12C..0x12E].copy_from_slice(&self.vendor.to_be_bytes());
        r[0x12E..0x130].copy_from_slice(&self.product.to_be_bytes());
        r[0x130..0x132].copy_from_slice(&self.bcd_device.to_be_bytes());
        r[0x132] = self.class.0;
        r[0x133] = self.class.1;
        r[0x134] = self.class.2;
        r[0x135] = self.configuration;
        r[0x136] = self.num_configurations;
        r[0x137] = self.interfaces.len() as u8;
        r
    }
}

fn op_common(code: u16, status: u32) -> Vec<u8> {
    let mut v = VERSION.to_be_bytes().to_vec();
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(&status.to_be_bytes());
    v
}

/// OP_REP_DEVLIST: the devices, each with its interface triples.
pub fn rep_devlist(devices: &[Device]) -> Vec<u8> {
    let mut v = op_common(op::REP_DEVLIST, 0);
    v.extend_from_slice(&(devices.len() as u32).to_be_bytes());
    for d in devices {
        v.extend(d.record());
        for (c, s, p) in &d.interfaces {
            v.extend_from_slice(&[*c, *s, *p, 0]);
        }
    }
    v
}

/// OP_REP_IMPORT: the record on success, nothing after the status on error (status 1).
pub fn rep_import(device: Option<&Device>) -> Vec<u8> {
    match device {
        Some(d) => {
            let mut v = op_common(op::REP_IMPORT, 0);
            v.extend(d.record());
            v
        }
        None => op_common(op::REP_IMPORT, 1),
    }
}

/// A URB command from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Urb {
    /// CMD_SUBMIT.
    Submit {
        /// Sequence number (echoed in RET_SUBMIT).
        seqnum: u32,
        /// busnum << 16 | devnum.
        devid: u32,
        /// 1 = IN.
        direction_in: bool,
        /// Endpoint number 0-15.
        ep: u8,
        /// transfer_flags.
        flags: u32,
        /// transfer_buffer_length.
        length: u32,
        /// interval.
        interval: u32,
        /// The setup packet (control transfers).
        setup: [u8; 8],
        /// OUT data (`length` bytes); empty for IN.
        data: Vec<u8>,
    },
    /// CMD_UNLINK.
    Unlink {
        /// Its own sequence number.
        seqnum: u32,
        /// The URB to unlink.
        unlink_seqnum: u32,
    },
}

/// Decodes URB commands from a byte stream (after OP_REP_IMPORT).
#[derive(Debug, Default)]
pub struct UrbDecoder {
    buf: Vec<u8>,
}

impl UrbDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends received bytes.
    pub fn feed(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
    /// Bytes held.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
    /// The next URB, `Ok(None)` when more bytes are needed.
    pub fn next_urb(&mut self) -> Result<Option<Urb>, UsbipError> {
        let Some(h) = self.buf.first_chunk::<48>() else {
            return Ok(None);
        };
        let w = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        match w(0) {
            cmd::SUBMIT => {
                let direction_in = w(12) == 1;
                let length = w(0x18);
                let packets = w(0x20);
                if length > MAX_TRANSFER {
                    return Err(UsbipError::TooLong(length));
                }
                // Non-ISO URBs carry 0 (or 0xFFFFFFFF) here; CCID has no ISO endpoints, so any
                // other count is refused rather than read.
                if packets != 0 && packets != 0xFFFF_FFFF {
                    return Err(UsbipError::TooLong(packets));
                }
                let data_len = if direction_in { 0 } else { length as usize };
                if self.buf.len() < 48 + data_len {
                    return Ok(None);
                }
                let mut setup = [0u8; 8];
                setup.copy_from_slice(&h[0x28..0x30]);
                let urb = Urb::Submit {
                    seqnum: w(4),
                    devid: w(8),
                    direction_in,
                    ep: (w(16) & 0x0F) as u8,
                    flags: w(0x14),
                    length,
                    interval: w(0x24),
                    setup,
                    data: self.buf[48..48 + data_len].to_vec(),
                };
                self.buf.drain(..48 + data_len);
                Ok(Some(urb))
            }
            cmd::UNLINK => {
                let urb = Urb::Unlink {
                    seqnum: w(4),
                    unlink_seqnum: w(0x14),
                };
                self.buf.drain(..48);
                Ok(Some(urb))
            }
            other => Err(UsbipError::UnknownCommand(other)),
        }
    }
}

fn basic(command: u32, seqnum: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(48);
    v.extend_from_slice(&command.to_be_bytes());
    v.extend_from_slice(&seqnum.to_be_bytes());
    // devid, direction, ep: 0, as the kernel's stub sends them.
    v.extend_from_slice(&[0; 12]);
    v
}

/// RET_SUBMIT: status (0 or a negated errno), and for IN the data.
pub fn ret_submit(seqnum: u32, status: i32, actual_length: u32, in_data: &[u8]) -> Vec<u8> {
    let mut v = basic(cmd::RET_SUBMIT, seqnum);
    v.extend_from_slice(&status.to_be_bytes());
    v.extend_from_slice(&actual_length.to_be_bytes());
    v.extend_from_slice(&[0; 4 + 4 + 4 + 8]); // start_frame, number_of_packets, error_count, pad
    v.extend_from_slice(in_data);
    v
}

/// RET_UNLINK with the unlink request's own seqnum: −ECONNRESET for a URB that was pending,
/// 0 for one already completed.
pub fn ret_unlink(seqnum: u32, status: i32) -> Vec<u8> {
    let mut v = basic(cmd::RET_UNLINK, seqnum);
    v.extend_from_slice(&status.to_be_bytes());
    v.extend_from_slice(&[0; 24]);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use apdu::hex::{h, spaced};
    use proptest::prelude::*;

    fn reader() -> Device {
        Device {
            path: "/sys/devices/vccid/1-1".into(),
            busid: "1-1".into(),
            busnum: 1,
            devnum: 2,
            speed: 2,
            vendor: 0x08E6,
            product: 0x4433,
            bcd_device: 0,
            class: (0, 0, 0),
            configuration: 1,
            num_configurations: 1,
            interfaces: vec![(0x0B, 0, 0)],
        }
    }

    #[test]
    fn operations() {
        assert_eq!(
            parse_op(&h("0111 8005 00000000")),
            Ok(Some((OpRequest::DevList, 8)))
        );
        let mut imp = h("0111 8003 00000000");
        imp.extend(b"1-1");
        imp.extend([0u8; 29]);
        assert_eq!(
            parse_op(&imp),
            Ok(Some((OpRequest::Import("1-1".into()), 40)))
        );
        assert_eq!(parse_op(&imp[..20]), Ok(None));
        assert_eq!(
            parse_op(&h("0106 8005 00000000")),
            Err(UsbipError::Version(0x0106))
        );
        assert_eq!(
            parse_op(&h("0111 1234 00000000")),
            Err(UsbipError::UnknownOp(0x1234))
        );
        let r = reader().record();
        assert_eq!(r.len(), 312);
        assert_eq!(
            spaced(&r[0x120..0x138]),
            spaced(&h(
                "00000001 00000002 00000002 08E6 4433 0000 00 00 00 01 01 01"
            ))
        );
        assert_eq!(&r[0x100..0x104], b"1-1\0");
        let list = rep_devlist(&[reader()]);
        assert_eq!(
            spaced(&list[..12]),
            spaced(&h("0111 0005 00000000 00000001"))
        );
        assert_eq!(list.len(), 12 + 312 + 4);
        assert_eq!(spaced(&list[324..]), "0B 00 00 00");
        assert_eq!(rep_import(Some(&reader())).len(), 8 + 312);
        assert_eq!(spaced(&rep_import(None)), spaced(&h("0111 0003 00000001")));
        assert_eq!(reader().devid(), 0x0001_0002);
    }

    #[test]
    fn urbs_golden() {
        // GET_DESCRIPTOR(device), transports.md §2.3.
        let mut d = UrbDecoder::new();
        d.feed(&h("00000001 00000007 00010002 00000001 00000000 00000200 00000040 00000000 00000000 00000000 80 06 00 01 00 00 40 00"));
        assert_eq!(
            d.next_urb(),
            Ok(Some(Urb::Submit {
                seqnum: 7,
                devid: 0x0001_0002,
                direction_in: true,
                ep: 0,
                flags: 0x200,
                length: 0x40,
                interval: 0,
                setup: h("80 06 00 01 00 00 40 00").try_into().unwrap(),
                data: vec![],
            }))
        );
        // Bulk OUT with its data, split arbitrarily.
        let msg = h("00000001 00000008 00010002 00000000 00000003 00000000 0000000A 00000000 00000000 00000000 0000000000000000 62000000000000010000");
        let mut d = UrbDecoder::new();
        d.feed(&msg[..50]);
        assert_eq!(d.next_urb(), Ok(None));
        d.feed(&msg[50..]);
        let Some(Urb::Submit {
            ep,
            data,
            direction_in,
            ..
        }) = d.next_urb().unwrap()
        else {
            panic!()
        };
        assert_eq!((ep, direction_in, data.len()), (3, false, 10));
        d.feed(&h("00000002 00000009 00010002 00000000 00000000 00000007 000000000000000000000000000000000000000000000000"));
        assert_eq!(
            d.next_urb(),
            Ok(Some(Urb::Unlink {
                seqnum: 9,
                unlink_seqnum: 7
            }))
        );
        assert_eq!(d.pending(), 0);
        assert_eq!(
            spaced(&ret_submit(7, 0, 18, &[0x12])),
            spaced(&h("00000003 00000007 00000000 00000000 00000000 00000000 00000012 00000000 00000000 00000000 0000000000000000 12"))
        );
        assert_eq!(
            spaced(&ret_unlink(9, -errno::ECONNRESET)),
            spaced(&h("00000004 00000009 00000000 00000000 00000000 FFFFFF98 000000000000000000000000000000000000000000000000"))
        );
        // Bad input: unknown command, oversized length, ISO packets.
        let mut d = UrbDecoder::new();
        d.feed(&h("00000005 00000001 00000000 00000000 00000000 000000000000000000000000000000000000000000000000000000000000000000000000"));
        assert_eq!(d.next_urb(), Err(UsbipError::UnknownCommand(5)));
        let mut d = UrbDecoder::new();
        d.feed(&h("00000001 00000001 00000000 00000000 00000003 00000000 7FFFFFFF 00000000 00000000 00000000 0000000000000000"));
        assert_eq!(d.next_urb(), Err(UsbipError::TooLong(0x7FFF_FFFF)));
    }

    proptest! {
        #[test]
        fn decoders_are_total(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_op(&bytes);
            let mut d = UrbDecoder::new();
            for c in bytes.chunks(17) {
                d.feed(c);
                while let Ok(Some(_)) = d.next_urb() {}
                prop_assert!(d.pending() <= bytes.len());
            }
        }
    }
}
