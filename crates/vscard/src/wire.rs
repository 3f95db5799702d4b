//! The VSCard wire format (`vscard_common.h`, version 2; qemu-ccid.md §1.1–1.3).

use std::fmt;
use thiserror::Error;

/// Header length: type, reader_id, length, each a big-endian u32.
pub const HEADER_LEN: usize = 12;
/// The largest payload we accept or send. QEMU's input buffer is 65536 bytes including the
/// header, so a larger message would wedge its parser for good (qemu-ccid.md §1.7.2).
pub const MAX_PAYLOAD: usize = 65536 - HEADER_LEN;
/// Init magic, raw bytes in wire order (never byte-swapped).
pub const MAGIC: [u8; 4] = *b"VSCD";
/// Protocol version: MAKE_VERSION(0,0,2).
pub const VERSION: u32 = 2;
/// "No reader assigned".
pub const UNDEFINED_READER_ID: u32 = 0xFFFF_FFFF;
/// The first (and in QEMU the only) reader id.
pub const MINIMAL_READER_ID: u32 = 0;
/// Largest ATR (ISO 7816-3; QEMU's MAX_ATR_SIZE).
pub const MAX_ATR: usize = 40;

/// Message type (`enum VSCMsgType`), open: unknown values round-trip.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MsgType(pub u32);

impl MsgType {
    /// VSC_Init.
    pub const INIT: MsgType = MsgType(1);
    /// VSC_Error.
    pub const ERROR: MsgType = MsgType(2);
    /// VSC_ReaderAdd.
    pub const READER_ADD: MsgType = MsgType(3);
    /// VSC_ReaderRemove.
    pub const READER_REMOVE: MsgType = MsgType(4);
    /// VSC_ATR.
    pub const ATR: MsgType = MsgType(5);
    /// VSC_CardRemove.
    pub const CARD_REMOVE: MsgType = MsgType(6);
    /// VSC_APDU.
    pub const APDU: MsgType = MsgType(7);
    /// VSC_Flush.
    pub const FLUSH: MsgType = MsgType(8);
    /// VSC_FlushComplete.
    pub const FLUSH_COMPLETE: MsgType = MsgType(9);

    fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            1 => "Init",
            2 => "Error",
            3 => "ReaderAdd",
            4 => "ReaderRemove",
            5 => "ATR",
            6 => "CardRemove",
            7 => "APDU",
            8 => "Flush",
            9 => "FlushComplete",
            _ => return None,
        })
    }
}

impl fmt::Debug for MsgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "MsgType({})", self.0),
        }
    }
}

/// VSC_Error code (`enum VSCErrorCode`), open.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    /// VSC_SUCCESS: the acknowledgement of ReaderAdd, ATR, CardRemove, ReaderRemove.
    pub const SUCCESS: ErrorCode = ErrorCode(0);
    /// VSC_GENERAL_ERROR.
    pub const GENERAL_ERROR: ErrorCode = ErrorCode(1);
    /// VSC_CANNOT_ADD_MORE_READERS.
    pub const CANNOT_ADD_MORE_READERS: ErrorCode = ErrorCode(2);
    /// VSC_CARD_ALREAY_INSERTED (sic).
    pub const CARD_ALREADY_INSERTED: ErrorCode = ErrorCode(3);

    /// Reads a code sent big-endian as the spec says, or in little-endian host order as
    /// libcacard's vscclient sends it (qemu-ccid.md §1.9): a value that is only small when
    /// byte-swapped is taken swapped.
    pub fn from_wire(bytes: [u8; 4]) -> ErrorCode {
        let be = u32::from_be_bytes(bytes);
        let le = u32::from_le_bytes(bytes);
        if be > 0xFFFF && le <= 0xFFFF {
            ErrorCode(le)
        } else {
            ErrorCode(be)
        }
    }
}

/// A message body.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Message {
    /// VSC_Init: magic, version, capabilities (at least one word).
    Init {
        /// Should be "VSCD".
        magic: [u8; 4],
        /// Should be 2.
        version: u32,
        /// Capability words (none defined; one 0 is sent).
        capabilities: Vec<u32>,
    },
    /// VSC_Error.
    Error(ErrorCode),
    /// VSC_ReaderAdd with the reader's name (may be empty).
    ReaderAdd(Vec<u8>),
    /// VSC_ReaderRemove.
    ReaderRemove,
    /// VSC_ATR: card inserted (or reset).
    Atr(Vec<u8>),
    /// VSC_CardRemove.
    CardRemove,
    /// VSC_APDU: a command (host → client) or a response (client → host).
    Apdu(Vec<u8>),
    /// VSC_Flush.
    Flush,
    /// VSC_FlushComplete.
    FlushComplete,
    /// Any other type, kept as it came.
    Unknown(MsgType, Vec<u8>),
}

impl Message {
    /// Our Init: "VSCD", version 2, capabilities [0].
    pub fn init() -> Message {
        Message::Init {
            magic: MAGIC,
            version: VERSION,
            capabilities: vec![0],
        }
    }

    /// The type on the wire.
    pub fn msg_type(&self) -> MsgType {
        match self {
            Message::Init { .. } => MsgType::INIT,
            Message::Error(_) => MsgType::ERROR,
            Message::ReaderAdd(_) => MsgType::READER_ADD,
            Message::ReaderRemove => MsgType::READER_REMOVE,
            Message::Atr(_) => MsgType::ATR,
            Message::CardRemove => MsgType::CARD_REMOVE,
            Message::Apdu(_) => MsgType::APDU,
            Message::Flush => MsgType::FLUSH,
            Message::FlushComplete => MsgType::FLUSH_COMPLETE,
            Message::Unknown(t, _) => *t,
        }
    }

    fn payload(&self, out: &mut Vec<u8>) {
        match self {
            Message::Init {
                magic,
                version,
                capabilities,
            } => {
                out.extend_from_slice(magic);
                out.extend_from_slice(&version.to_be_bytes());
                for c in capabilities {
                    out.extend_from_slice(&c.to_be_bytes());
                }
            }
            Message::Error(code) => out.extend_from_slice(&code.0.to_be_bytes()),
            Message::ReaderAdd(b) | Message::Atr(b) | Message::Apdu(b) | Message::Unknown(_, b) => {
                out.extend_from_slice(b)
            }
            Message::ReaderRemove
            | Message::CardRemove
            | Message::Flush
            | Message::FlushComplete => {}
        }
    }
}

/// A message with its header's reader id.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Frame {
    /// Header reader_id.
    pub reader_id: u32,
    /// The message.
    pub message: Message,
}

/// Why a frame could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("VSCard payload of {0} bytes exceeds {MAX_PAYLOAD}")]
pub struct TooLong(pub usize);

impl Frame {
    /// A frame.
    pub fn new(reader_id: u32, message: Message) -> Self {
        Frame { reader_id, message }
    }

    /// Header and payload in one buffer, so the message leaves in one write (QEMU otherwise
    /// waits for a delayed ACK per reply: lab/README.md "Nagle").
    pub fn encode(&self) -> Result<Vec<u8>, TooLong> {
        let mut out = Vec::with_capacity(HEADER_LEN + 16);
        out.extend_from_slice(&self.message.msg_type().0.to_be_bytes());
        out.extend_from_slice(&self.reader_id.to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        self.message.payload(&mut out);
        let len = out.len() - HEADER_LEN;
        if len > MAX_PAYLOAD {
            return Err(TooLong(len));
        }
        out[8..12].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(out)
    }
}

/// Decoding errors.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// A declared length beyond [`MAX_PAYLOAD`]: the stream cannot be resynchronised, so the
    /// connection must be closed. Nothing was allocated for it.
    #[error("VSCard {msg_type:?} declares a {declared}-byte payload (at most {MAX_PAYLOAD})")]
    TooLong {
        /// type in the header
        msg_type: MsgType,
        /// declared length
        declared: u32,
    },
    /// A whole frame whose payload does not fit its type; it was consumed and the stream goes
    /// on.
    #[error("malformed VSCard {msg_type:?} (reader {reader_id}): {why}")]
    Malformed {
        /// type in the header
        msg_type: MsgType,
        /// reader id in the header
        reader_id: u32,
        /// what is wrong
        why: &'static str,
    },
}

impl DecodeError {
    /// Whether the connection must be closed (the framing is lost).
    pub fn is_fatal(&self) -> bool {
        matches!(self, DecodeError::TooLong { .. })
    }
}

/// Parses one payload for its type.
fn parse(msg_type: MsgType, reader_id: u32, p: &[u8]) -> Result<Message, DecodeError> {
    let bad = |why| DecodeError::Malformed {
        msg_type,
        reader_id,
        why,
    };
    let empty = |m: Message| {
        if p.is_empty() {
            Ok(m)
        } else {
            Err(bad("unexpected payload"))
        }
    };
    match msg_type {
        MsgType::INIT => {
            if p.len() < 8 || !(p.len() - 8).is_multiple_of(4) {
                return Err(bad(
                    "Init payload is not magic, version and whole capability words",
                ));
            }
            let magic = [p[0], p[1], p[2], p[3]];
            let version = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
            let capabilities = p[8..]
                .chunks_exact(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Ok(Message::Init {
                magic,
                version,
                capabilities,
            })
        }
        MsgType::ERROR => match p {
            [a, b, c, d] => Ok(Message::Error(ErrorCode::from_wire([*a, *b, *c, *d]))),
            _ => Err(bad("Error payload is not 4 bytes")),
        },
        MsgType::READER_ADD => Ok(Message::ReaderAdd(p.to_vec())),
        MsgType::READER_REMOVE => empty(Message::ReaderRemove),
        MsgType::ATR => Ok(Message::Atr(p.to_vec())),
        MsgType::CARD_REMOVE => empty(Message::CardRemove),
        MsgType::APDU => Ok(Message::Apdu(p.to_vec())),
        MsgType::FLUSH => empty(Message::Flush),
        MsgType::FLUSH_COMPLETE => empty(Message::FlushComplete),
        other => Ok(Message::Unknown(other, p.to_vec())),
    }
}

/// Reassembles frames from a byte stream.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that are not yet a whole frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Forgets everything buffered (a new connection starts clean, unlike QEMU's parser:
    /// qemu-ccid.md §1.7.3).
    pub fn reset(&mut self) {
        self.buf.clear();
    }

    /// The next whole frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        let Some(h) = self.buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let word = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let (msg_type, reader_id, len) = (MsgType(word(0)), word(4), word(8));
        if len as usize > MAX_PAYLOAD {
            return Err(DecodeError::TooLong {
                msg_type,
                declared: len,
            });
        }
        let total = HEADER_LEN + len as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let result = parse(msg_type, reader_id, &self.buf[HEADER_LEN..total]);
        self.buf.drain(..total);
        result.map(|message| Some(Frame { reader_id, message }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apdu::hex::{h, spaced};
    use proptest::prelude::*;

    fn enc(rid: u32, m: Message) -> String {
        spaced(&Frame::new(rid, m).encode().unwrap())
    }

    #[test]
    fn golden_bytes_for_every_message() {
        // QEMU 7.2's Init, byte for byte (qemu-ccid.md §1.3).
        assert_eq!(
            enc(UNDEFINED_READER_ID, Message::init()),
            spaced(&h("00000001 ffffffff 0000000c 56534344 00000002 00000000"))
        );
        assert_eq!(
            enc(0, Message::Error(ErrorCode::SUCCESS)),
            spaced(&h("00000002 00000000 00000004 00000000"))
        );
        assert_eq!(
            enc(
                UNDEFINED_READER_ID,
                Message::Error(ErrorCode::CANNOT_ADD_MORE_READERS)
            ),
            spaced(&h("00000002 ffffffff 00000004 00000002"))
        );
        assert_eq!(
            enc(0, Message::ReaderAdd(b"Test".to_vec())),
            spaced(&h("00000003 00000000 00000004 54657374"))
        );
        assert_eq!(
            enc(0, Message::ReaderAdd(vec![])),
            spaced(&h("00000003 00000000 00000000"))
        );
        assert_eq!(
            enc(0, Message::ReaderRemove),
            spaced(&h("00000004 00000000 00000000"))
        );
        assert_eq!(
            enc(
                0,
                Message::Atr(h("3B 7A 18 00 00 73 66 74 65 20 63 64 31 34 34"))
            ),
            spaced(&h(
                "00000005 00000000 0000000f 3B7A1800007366746520636431 3434"
            ))
        );
        assert_eq!(
            enc(0, Message::CardRemove),
            spaced(&h("00000006 00000000 00000000"))
        );
        assert_eq!(
            enc(0, Message::Apdu(h("00 A4 04 00"))),
            spaced(&h("00000007 00000000 00000004 00A40400"))
        );
        assert_eq!(
            enc(0, Message::Flush),
            spaced(&h("00000008 00000000 00000000"))
        );
        assert_eq!(
            enc(0, Message::FlushComplete),
            spaced(&h("00000009 00000000 00000000"))
        );
        assert_eq!(
            enc(7, Message::Unknown(MsgType(42), vec![1])),
            spaced(&h("0000002a 00000007 00000001 01"))
        );
        assert_eq!(
            Frame::new(0, Message::Apdu(vec![0; MAX_PAYLOAD + 1])).encode(),
            Err(TooLong(MAX_PAYLOAD + 1))
        );
    }

    #[test]
    fn decodes_split_coalesced_and_rejects_bad_input() {
        let mut wire = Frame::new(0, Message::init()).encode().unwrap();
        wire.extend(
            Frame::new(0, Message::Apdu(h("00 A4 04 00")))
                .encode()
                .unwrap(),
        );
        wire.extend(h("00000002 00000000 00000004 01000000")); // vscclient's host-order code 1
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for b in wire.chunks(5) {
            d.feed(b);
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].message, Message::init());
        assert_eq!(got[2].message, Message::Error(ErrorCode::GENERAL_ERROR));
        // Oversized: refused from the header alone, before any payload arrives.
        d.feed(&h("00000007 00000000 00010000"));
        let e = d.next_frame().unwrap_err();
        assert!(e.is_fatal(), "{e}");
        // Malformed payloads are consumed and the stream goes on.
        let mut d = Decoder::new();
        d.feed(&h("00000001 00000000 00000003 565343 00000006 00000000 00000001 00 00000004 00000000 00000000"));
        assert!(matches!(d.next_frame(), Err(DecodeError::Malformed { .. })));
        assert!(matches!(d.next_frame(), Err(DecodeError::Malformed { .. })));
        assert_eq!(
            d.next_frame().unwrap().unwrap().message,
            Message::ReaderRemove
        );
        assert_eq!(d.pending(), 0);
    }

    fn message() -> impl Strategy<Value = Message> {
        let bytes = proptest::collection::vec(any::<u8>(), 0..300);
        prop_oneof![
            (
                any::<[u8; 4]>(),
                any::<u32>(),
                proptest::collection::vec(any::<u32>(), 0..4)
            )
                .prop_map(|(magic, version, capabilities)| Message::Init {
                    magic,
                    version,
                    capabilities
                }),
            (0u32..=0xFFFF).prop_map(|c| Message::Error(ErrorCode(c))),
            bytes.clone().prop_map(Message::ReaderAdd),
            Just(Message::ReaderRemove),
            bytes.clone().prop_map(Message::Atr),
            Just(Message::CardRemove),
            bytes.clone().prop_map(Message::Apdu),
            Just(Message::Flush),
            Just(Message::FlushComplete),
            (10u32.., bytes).prop_map(|(t, b)| Message::Unknown(MsgType(t), b)),
        ]
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(rid in any::<u32>(), m in message(), split in 1usize..40) {
            let f = Frame::new(rid, m);
            let mut d = Decoder::new();
            let wire = f.encode().unwrap();
            let mut out = None;
            for c in wire.chunks(split) {
                d.feed(c);
                if let Some(x) = d.next_frame().unwrap() { out = Some(x); }
            }
            prop_assert_eq!(out, Some(f));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)) {
            let mut d = Decoder::new();
            for c in chunks {
                d.feed(&c);
                loop {
                    match d.next_frame() {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(e) if e.is_fatal() => { d.reset(); break; }
                        Err(_) => {}
                    }
                }
                prop_assert!(d.pending() < HEADER_LEN + MAX_PAYLOAD);
            }
        }
    }
}
