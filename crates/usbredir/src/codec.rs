//! usbredir packet framing: everything little-endian and packed (transports.md §1.2, §1.5).

use thiserror::Error;

/// Packet types (usbredirproto.h).
pub mod ty {
    #![allow(missing_docs)]
    pub const HELLO: u32 = 0;
    pub const DEVICE_CONNECT: u32 = 1;
    pub const DEVICE_DISCONNECT: u32 = 2;
    pub const RESET: u32 = 3;
    pub const INTERFACE_INFO: u32 = 4;
    pub const EP_INFO: u32 = 5;
    pub const SET_CONFIGURATION: u32 = 6;
    pub const GET_CONFIGURATION: u32 = 7;
    pub const CONFIGURATION_STATUS: u32 = 8;
    pub const SET_ALT_SETTING: u32 = 9;
    pub const GET_ALT_SETTING: u32 = 10;
    pub const ALT_SETTING_STATUS: u32 = 11;
    pub const START_ISO_STREAM: u32 = 12;
    pub const STOP_ISO_STREAM: u32 = 13;
    pub const ISO_STREAM_STATUS: u32 = 14;
    pub const START_INTERRUPT_RECEIVING: u32 = 15;
    pub const STOP_INTERRUPT_RECEIVING: u32 = 16;
    pub const INTERRUPT_RECEIVING_STATUS: u32 = 17;
    pub const ALLOC_BULK_STREAMS: u32 = 18;
    pub const FREE_BULK_STREAMS: u32 = 19;
    pub const BULK_STREAMS_STATUS: u32 = 20;
    pub const CANCEL_DATA_PACKET: u32 = 21;
    pub const FILTER_REJECT: u32 = 22;
    pub const FILTER_FILTER: u32 = 23;
    pub const DEVICE_DISCONNECT_ACK: u32 = 24;
    pub const START_BULK_RECEIVING: u32 = 25;
    pub const STOP_BULK_RECEIVING: u32 = 26;
    pub const BULK_RECEIVING_STATUS: u32 = 27;
    pub const CONTROL_PACKET: u32 = 100;
    pub const BULK_PACKET: u32 = 101;
    pub const ISO_PACKET: u32 = 102;
    pub const INTERRUPT_PACKET: u32 = 103;
    pub const BUFFERED_BULK_PACKET: u32 = 104;
}

/// Transfer status (usb_redir_status).
pub mod status {
    #![allow(missing_docs)]
    pub const SUCCESS: u8 = 0;
    pub const CANCELLED: u8 = 1;
    pub const INVAL: u8 = 2;
    pub const IOERROR: u8 = 3;
    pub const STALL: u8 = 4;
}

/// Capability bits we advertise: connect_device_version (1), filter (2),
/// device_disconnect_ack (3), ep_info_max_packet_size (4), 64bits_ids (5),
/// 32bits_bulk_length (6) = 0x7E. Not bulk streams (0) or bulk receiving (7).
pub const OUR_CAPS: u32 = 0x7E;
const CAP_DEVICE_VERSION: u32 = 1 << 1;
const CAP_64BIT_IDS: u32 = 1 << 5;
const CAP_32BIT_BULK: u32 = 1 << 6;

/// The largest packet accepted: a CCID message (65554) plus headers, with room. The C parser
/// takes up to 128 MiB; a CCID device never needs more than this, and nothing larger is
/// buffered.
pub const MAX_PACKET_LEN: usize = 70_000;

/// Why the stream cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    /// A declared length beyond [`MAX_PACKET_LEN`].
    #[error("usbredir packet type {ty} declares {len} bytes (at most {MAX_PACKET_LEN})")]
    TooLong {
        /// packet type
        ty: u32,
        /// declared length
        len: u32,
    },
}

/// The negotiated framing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    /// The peer's hello has been received.
    pub peer_hello: bool,
    /// The peer's capability word.
    pub peer: u32,
}

impl Caps {
    fn both(&self, bit: u32) -> bool {
        self.peer_hello && OUR_CAPS & bit != 0 && self.peer & bit != 0
    }
    /// 16-byte headers (64-bit ids) once both hellos are exchanged.
    pub fn ids64(&self) -> bool {
        self.both(CAP_64BIT_IDS)
    }
    /// Bulk headers carry `length_high`.
    pub fn bulk32(&self) -> bool {
        self.both(CAP_32BIT_BULK)
    }
    /// device_connect carries bcdDevice.
    pub fn device_version(&self) -> bool {
        self.both(CAP_DEVICE_VERSION)
    }
    /// Main header length.
    pub fn header_len(&self) -> usize {
        if self.ids64() {
            16
        } else {
            12
        }
    }
    /// The type-specific header length of a packet type, given the caps (table 1.5).
    pub fn type_header_len(&self, t: u32) -> Option<usize> {
        Some(match t {
            ty::HELLO => 64,
            ty::DEVICE_CONNECT => {
                if self.device_version() {
                    10
                } else {
                    8
                }
            }
            ty::DEVICE_DISCONNECT | ty::RESET | ty::GET_CONFIGURATION | ty::CANCEL_DATA_PACKET => 0,
            ty::FILTER_REJECT | ty::FILTER_FILTER | ty::DEVICE_DISCONNECT_ACK => 0,
            ty::INTERFACE_INFO => 132,
            ty::EP_INFO => 160,
            ty::SET_CONFIGURATION | ty::GET_ALT_SETTING | ty::STOP_ISO_STREAM => 1,
            ty::START_INTERRUPT_RECEIVING | ty::STOP_INTERRUPT_RECEIVING => 1,
            ty::CONFIGURATION_STATUS | ty::SET_ALT_SETTING | ty::ISO_STREAM_STATUS => 2,
            ty::INTERRUPT_RECEIVING_STATUS => 2,
            ty::ALT_SETTING_STATUS | ty::START_ISO_STREAM => 3,
            ty::ALLOC_BULK_STREAMS => 8,
            ty::FREE_BULK_STREAMS => 4,
            ty::BULK_STREAMS_STATUS => 9,
            ty::START_BULK_RECEIVING | ty::BUFFERED_BULK_PACKET => 10,
            ty::STOP_BULK_RECEIVING => 5,
            ty::BULK_RECEIVING_STATUS => 6,
            ty::CONTROL_PACKET => 10,
            ty::BULK_PACKET => {
                if self.bulk32() {
                    10
                } else {
                    8
                }
            }
            ty::ISO_PACKET | ty::INTERRUPT_PACKET => 4,
            _ => return None,
        })
    }
}

/// A raw packet: type, id, type-specific header, data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Packet type.
    pub ty: u32,
    /// Id (32-bit until 64-bit ids are negotiated).
    pub id: u64,
    /// Type-specific header.
    pub header: Vec<u8>,
    /// Data after it.
    pub data: Vec<u8>,
}

/// Splits a byte stream into packets.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

/// What the decoder found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A packet of a known type whose header length fits.
    Packet(Packet),
    /// A packet skipped: unknown type, or a length that does not fit its type (the C parser
    /// skips these too; the stream goes on).
    Skipped {
        /// type
        ty: u32,
        /// id
        id: u64,
        /// why
        why: &'static str,
    },
}

impl Decoder {
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
    /// The next packet under the current framing (which changes after the hello exchange).
    pub fn next(&mut self, caps: &Caps) -> Result<Option<Decoded>, CodecError> {
        let hl = caps.header_len();
        if self.buf.len() < hl {
            return Ok(None);
        }
        let word = |i: usize| {
            u32::from_le_bytes([
                self.buf[i],
                self.buf[i + 1],
                self.buf[i + 2],
                self.buf[i + 3],
            ])
        };
        let (t, len) = (word(0), word(4));
        let id = if hl == 16 {
            u64::from_le_bytes(self.buf[8..16].try_into().unwrap_or([0; 8]))
        } else {
            u64::from(word(8))
        };
        if len as usize > MAX_PACKET_LEN {
            return Err(CodecError::TooLong { ty: t, len });
        }
        let total = hl + len as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let body: Vec<u8> = self.buf.drain(..total).skip(hl).collect();
        let Some(thl) = caps.type_header_len(t) else {
            return Ok(Some(Decoded::Skipped {
                ty: t,
                id,
                why: "unknown packet type",
            }));
        };
        if body.len() < thl {
            return Ok(Some(Decoded::Skipped {
                ty: t,
                id,
                why: "shorter than its type header",
            }));
        }
        let (header, data) = body.split_at(thl);
        Ok(Some(Decoded::Packet(Packet {
            ty: t,
            id,
            header: header.to_vec(),
            data: data.to_vec(),
        })))
    }
}

/// Encodes a packet under the current framing.
pub fn encode(caps: &Caps, ty: u32, id: u64, header: &[u8], data: &[u8]) -> Vec<u8> {
    let len = (header.len() + data.len()) as u32;
    let mut out = Vec::with_capacity(16 + len as usize);
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    if caps.ids64() {
        out.extend_from_slice(&id.to_le_bytes());
    } else {
        out.extend_from_slice(&(id as u32).to_le_bytes());
    }
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

/// Our hello: a 64-byte NUL-padded version string and the caps word (always a 12-byte header).
pub fn hello(version: &str) -> Vec<u8> {
    let mut v = [0u8; 64];
    let b = version.as_bytes();
    v[..b.len().min(63)].copy_from_slice(&b[..b.len().min(63)]);
    encode(&Caps::default(), ty::HELLO, 0, &v, &OUR_CAPS.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use apdu::hex::{h, spaced};
    use proptest::prelude::*;

    fn negotiated() -> Caps {
        Caps {
            peer_hello: true,
            peer: 0xFF,
        }
    }

    #[test]
    fn golden_hello_and_headers() {
        let hl = hello("vccid");
        assert_eq!(hl.len(), 80);
        assert_eq!(spaced(&hl[..12]), "00 00 00 00 44 00 00 00 00 00 00 00");
        assert_eq!(&hl[12..17], b"vccid");
        assert_eq!(spaced(&hl[76..]), "7E 00 00 00");
        // Bulk IN reply, 64-bit ids (transports.md §1.7).
        let c = negotiated();
        let pkt = encode(
            &c,
            ty::BULK_PACKET,
            3,
            &h("82 00 02 00 00000000 0000"),
            &h("90 00"),
        );
        assert_eq!(
            spaced(&pkt),
            spaced(&h(
                "65000000 0C000000 0300000000000000 82 00 0200 00000000 0000 9000"
            ))
        );
        // GET_DESCRIPTOR(device) as QEMU sends it.
        let mut d = Decoder::new();
        d.feed(&h(
            "64000000 0A000000 0700000000000000 80 06 80 00 0001 0000 4000",
        ));
        let Decoded::Packet(p) = d.next(&c).unwrap().unwrap() else {
            panic!()
        };
        assert_eq!((p.ty, p.id, p.header.len(), p.data.len()), (100, 7, 10, 0));
        // Before the hello exchange the header is 12 bytes.
        let mut d = Decoder::new();
        d.feed(&h("03000000 00000000 09000000"));
        assert_eq!(
            d.next(&Caps::default()).unwrap(),
            Some(Decoded::Packet(Packet {
                ty: 3,
                id: 9,
                header: vec![],
                data: vec![]
            }))
        );
    }

    #[test]
    fn bad_packets() {
        let c = negotiated();
        let mut d = Decoder::new();
        d.feed(&h(
            "39050000 01000000 0100000000000000 AA 64000000 02000000 0200000000000000 8006",
        ));
        assert!(matches!(
            d.next(&c).unwrap(),
            Some(Decoded::Skipped { ty: 0x539, .. })
        ));
        assert!(matches!(
            d.next(&c).unwrap(),
            Some(Decoded::Skipped { ty: 100, .. })
        ));
        d.feed(&h("65000000 FFFFFF7F 0100000000000000"));
        assert!(d.next(&c).is_err());
    }

    proptest! {
        #[test]
        fn decoder_is_total(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..10), ids64 in any::<bool>()) {
            let caps = if ids64 { negotiated() } else { Caps::default() };
            let mut d = Decoder::new();
            for c in chunks {
                d.feed(&c);
                while let Ok(Some(_)) = d.next(&caps) {}
                prop_assert!(d.pending() < 16 + MAX_PACKET_LEN + 80);
                if d.next(&caps).is_err() { d = Decoder::new(); }
            }
        }
    }
}
