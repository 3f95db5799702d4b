//! The host end (QEMU's `ccid-card-passthru`; in vccid, `--card passthru`): what QEMU 7.2
//! answers to each message (qemu-ccid.md §1.7, §5.1), minus its bugs: a new connection starts
//! with a clean parser and a closed connection removes the card and the reader, where QEMU keeps
//! both and misframes the next client (§1.7.3); oversized messages close the connection where
//! QEMU wedges (§1.7.2); ATRs are checked by the standard, not by QEMU's off-by-one rule.

use crate::atr;
use crate::wire::{DecodeError, ErrorCode, Frame, Message, MAGIC, UNDEFINED_READER_ID, VERSION};

/// What the session tells the card it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    /// A reader was announced.
    ReaderAdded,
    /// The reader went away (with its card, if one was in).
    ReaderRemoved,
    /// A card with this ATR is in.
    CardInserted(Vec<u8>),
    /// The card is out.
    CardRemoved,
    /// The response to the outstanding APDU.
    Response(Vec<u8>),
    /// The client reported an error for the outstanding APDU (or in general).
    ClientError(ErrorCode),
}

/// Host-side session state for one connection.
#[derive(Debug, Default)]
pub struct HostSession {
    card: bool,
    reader: bool,
    awaiting_response: bool,
}

impl HostSession {
    /// A session for a new connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a card is in.
    pub fn card_present(&self) -> bool {
        self.card
    }

    /// The frame carrying an APDU to the client (reader id 0, as QEMU sends it).
    pub fn send_apdu(&mut self, apdu: &[u8]) -> Frame {
        self.awaiting_response = true;
        Frame::new(0, Message::Apdu(apdu.to_vec()))
    }

    /// The outstanding APDU fails first, so its failure answer goes out before the reader
    /// reports the card gone.
    fn removal(&mut self, events: &mut Vec<HostEvent>) {
        if self.awaiting_response {
            self.awaiting_response = false;
            events.push(HostEvent::ClientError(ErrorCode::GENERAL_ERROR));
        }
        if self.card {
            self.card = false;
            events.push(HostEvent::CardRemoved);
        }
    }

    /// Handles one frame from the client: the frames to send back and the events for the card.
    pub fn on_frame(&mut self, frame: Frame) -> (Vec<Frame>, Vec<HostEvent>) {
        let rid = frame.reader_id;
        let ok = |rid| Frame::new(rid, Message::Error(ErrorCode::SUCCESS));
        let fail = |rid| Frame::new(rid, Message::Error(ErrorCode::GENERAL_ERROR));
        let mut events = Vec::new();
        let replies = match frame.message {
            Message::Init { magic, version, .. } => {
                if magic != MAGIC {
                    tracing::warn!(
                        ?magic,
                        "VSCard Init with a wrong magic; answering anyway, as QEMU does"
                    );
                } else if version != VERSION {
                    tracing::debug!(version, "VSCard Init with another version");
                }
                vec![Frame::new(UNDEFINED_READER_ID, Message::init())]
            }
            Message::Error(code) => {
                // The client's answer to an APDU it could not process.
                tracing::debug!(?code, "VSCard error from the client");
                self.awaiting_response = false;
                events.push(HostEvent::ClientError(code));
                vec![]
            }
            Message::ReaderAdd(name) => {
                tracing::info!(name = %String::from_utf8_lossy(&name), "VSCard reader added");
                self.reader = true;
                events.push(HostEvent::ReaderAdded);
                vec![ok(0)]
            }
            Message::ReaderRemove => {
                self.removal(&mut events);
                if std::mem::take(&mut self.reader) {
                    events.push(HostEvent::ReaderRemoved);
                }
                vec![ok(rid)]
            }
            Message::Atr(atr) => match atr::check(&atr) {
                Ok(()) => {
                    self.card = true;
                    self.reader = true;
                    events.push(HostEvent::CardInserted(atr));
                    vec![ok(rid)]
                }
                Err(why) => {
                    tracing::warn!("VSCard ATR refused: {why}");
                    vec![fail(rid)]
                }
            },
            Message::CardRemove => {
                self.removal(&mut events);
                vec![ok(rid)]
            }
            Message::Apdu(resp) => {
                if std::mem::take(&mut self.awaiting_response) {
                    events.push(HostEvent::Response(resp));
                } else {
                    tracing::warn!("VSCard APDU response with no command outstanding; dropped");
                }
                vec![]
            }
            Message::Flush | Message::FlushComplete | Message::Unknown(..) => {
                tracing::warn!(msg = ?frame.message.msg_type(), "unexpected VSCard message");
                vec![fail(rid)]
            }
        };
        (replies, events)
    }

    /// A frame that could not be decoded: malformed ones get GENERAL_ERROR (the stream goes
    /// on); a fatal one gets nothing, and the caller closes the connection.
    pub fn on_decode_error(&mut self, e: &DecodeError) -> Vec<Frame> {
        tracing::warn!("{e}");
        match e {
            DecodeError::Malformed { reader_id, .. } => {
                vec![Frame::new(
                    *reader_id,
                    Message::Error(ErrorCode::GENERAL_ERROR),
                )]
            }
            DecodeError::TooLong { .. } => vec![],
        }
    }

    /// The connection closed: the card and the reader are gone, and an outstanding APDU fails.
    pub fn on_close(&mut self) -> Vec<HostEvent> {
        let mut events = Vec::new();
        self.removal(&mut events);
        if std::mem::take(&mut self.reader) {
            events.push(HostEvent::ReaderRemoved);
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::MsgType;
    use apdu::hex::h;

    fn f(rid: u32, m: Message) -> Frame {
        Frame::new(rid, m)
    }
    fn err(rid: u32, c: ErrorCode) -> Frame {
        f(rid, Message::Error(c))
    }

    #[test]
    fn answers_as_qemu_does() {
        let mut s = HostSession::new();
        let init = f(0, Message::init());
        assert_eq!(
            s.on_frame(init).0,
            vec![f(UNDEFINED_READER_ID, Message::init())]
        );
        let bad_magic = f(
            0,
            Message::Init {
                magic: *b"XXXX",
                version: 9,
                capabilities: vec![],
            },
        );
        assert_eq!(
            s.on_frame(bad_magic).0,
            vec![f(UNDEFINED_READER_ID, Message::init())]
        );
        // ReaderAdd always answers reader id 0, whatever was sent.
        assert_eq!(
            s.on_frame(f(7, Message::ReaderAdd(b"r".to_vec()))),
            (
                vec![err(0, ErrorCode::SUCCESS)],
                vec![HostEvent::ReaderAdded]
            )
        );
        // Bad ATRs: GENERAL_ERROR with the reader id echoed, no state change.
        assert_eq!(
            s.on_frame(f(5, Message::Atr(h("3B 05 AA")))).0,
            vec![err(5, ErrorCode::GENERAL_ERROR)]
        );
        assert_eq!(
            s.on_frame(f(5, Message::Atr(vec![0x3B; 41]))).0,
            vec![err(5, ErrorCode::GENERAL_ERROR)]
        );
        assert!(!s.card_present());
        let atr = h("3B 7A 18 00 00 73 66 74 65 20 63 64 31 34 34");
        assert_eq!(
            s.on_frame(f(0, Message::Atr(atr.clone()))),
            (
                vec![err(0, ErrorCode::SUCCESS)],
                vec![HostEvent::CardInserted(atr.clone())]
            )
        );
        // APDU out, response back; a response with nothing outstanding is dropped.
        assert_eq!(
            s.send_apdu(&h("00 A4 04 00")),
            f(0, Message::Apdu(h("00 A4 04 00")))
        );
        assert_eq!(
            s.on_frame(f(0, Message::Apdu(h("90 00")))),
            (vec![], vec![HostEvent::Response(h("90 00"))])
        );
        assert_eq!(
            s.on_frame(f(0, Message::Apdu(h("90 00")))),
            (vec![], vec![])
        );
        // Flush, FlushComplete and unknown types: GENERAL_ERROR, rid echoed.
        for m in [
            Message::Flush,
            Message::FlushComplete,
            Message::Unknown(MsgType(42), vec![]),
        ] {
            assert_eq!(
                s.on_frame(f(3, m)).0,
                vec![err(3, ErrorCode::GENERAL_ERROR)]
            );
        }
        // A client error fails the outstanding APDU; it gets no reply.
        s.send_apdu(&h("00 B0 00 00"));
        assert_eq!(
            s.on_frame(f(0, Message::Error(ErrorCode(1)))),
            (vec![], vec![HostEvent::ClientError(ErrorCode(1))])
        );
        assert_eq!(
            s.on_frame(f(0, Message::CardRemove)),
            (
                vec![err(0, ErrorCode::SUCCESS)],
                vec![HostEvent::CardRemoved]
            )
        );
        assert_eq!(
            s.on_frame(f(0, Message::CardRemove)),
            (vec![err(0, ErrorCode::SUCCESS)], vec![])
        );
        assert_eq!(
            s.on_frame(f(0, Message::ReaderRemove)),
            (
                vec![err(0, ErrorCode::SUCCESS)],
                vec![HostEvent::ReaderRemoved]
            )
        );
    }

    #[test]
    fn no_init_needed_and_close_removes_everything() {
        // spice-server never sends Init (qemu-ccid.md §1.6).
        let mut s = HostSession::new();
        let atr = h("3B 02 14 50");
        assert_eq!(
            s.on_frame(f(0, Message::Atr(atr.clone()))).1,
            vec![HostEvent::CardInserted(atr)]
        );
        s.send_apdu(&h("00 A4 04 00"));
        assert_eq!(
            s.on_close(),
            vec![
                HostEvent::ClientError(ErrorCode::GENERAL_ERROR),
                HostEvent::CardRemoved,
                HostEvent::ReaderRemoved
            ]
        );
        assert_eq!(s.on_close(), vec![]);
        let e = DecodeError::Malformed {
            msg_type: MsgType::ERROR,
            reader_id: 4,
            why: "x",
        };
        assert_eq!(
            s.on_decode_error(&e),
            vec![err(4, ErrorCode::GENERAL_ERROR)]
        );
    }
}
