//! The client end (libcacard's vscclient; ours): one reader, whose card may come and go
//! (qemu-ccid.md §1.6, §5.2). Unlike libcacard's vscclient it matches each VSC_Error to the
//! message it acknowledges (QEMU answers ReaderRemove, ReaderAdd, ATR and CardRemove in order),
//! takes the reader id from the ReaderAdd acknowledgement, and says goodbye before it leaves.

use crate::wire::{ErrorCode, Frame, Message, MAGIC, VERSION};
use std::collections::VecDeque;

/// What the client's owner must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The host accepted the reader under this id.
    ReaderAccepted(u32),
    /// The host refused the reader.
    ReaderRefused(ErrorCode),
    /// Run this command APDU on the card and answer with [`ClientSession::response`].
    Apdu(Vec<u8>),
    /// The host reported an error.
    HostError(ErrorCode),
}

/// Messages that the host acknowledges with a VSC_Error, in the order sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ack {
    ReaderRemove,
    ReaderAdd,
    Atr,
    CardRemove,
}

/// Client-side session state for one connection.
#[derive(Debug)]
pub struct ClientSession {
    reader_name: Vec<u8>,
    reader_id: Option<u32>,
    atr: Option<Vec<u8>>,
    acks: VecDeque<Ack>,
}

impl ClientSession {
    /// A session for a reader called `reader_name` holding a card with `atr` (or none).
    pub fn new(reader_name: &str, atr: Option<Vec<u8>>) -> Self {
        ClientSession {
            reader_name: reader_name.as_bytes().to_vec(),
            reader_id: None,
            atr,
            acks: VecDeque::new(),
        }
    }

    /// The reader id the host gave, once it has.
    pub fn reader_id(&self) -> Option<u32> {
        self.reader_id
    }

    /// The first message of a connection: Init, reader id 0.
    pub fn start(&mut self) -> Vec<Frame> {
        self.reader_id = None;
        self.acks.clear();
        vec![Frame::new(0, Message::init())]
    }

    /// Handles one frame from the host.
    pub fn on_frame(&mut self, frame: Frame) -> (Vec<Frame>, Vec<ClientEvent>) {
        let rid = frame.reader_id;
        match frame.message {
            Message::Init { magic, version, .. } => {
                if magic != MAGIC {
                    tracing::warn!(?magic, "host Init has a wrong magic");
                }
                if version != VERSION {
                    tracing::warn!(
                        version,
                        "host speaks VSCard version {version}, we speak {VERSION}"
                    );
                }
                // Remove whatever an unclean earlier exit left behind, then announce the reader.
                self.reader_id = None;
                self.acks = [Ack::ReaderRemove, Ack::ReaderAdd].into();
                let out = vec![
                    Frame::new(0, Message::ReaderRemove),
                    Frame::new(0, Message::ReaderAdd(self.reader_name.clone())),
                ];
                (out, vec![])
            }
            Message::Error(code) => match self.acks.pop_front() {
                Some(Ack::ReaderAdd) if code == ErrorCode::SUCCESS => {
                    self.reader_id = Some(rid);
                    let mut out = Vec::new();
                    if let Some(atr) = &self.atr {
                        self.acks.push_back(Ack::Atr);
                        out.push(Frame::new(rid, Message::Atr(atr.clone())));
                    }
                    (out, vec![ClientEvent::ReaderAccepted(rid)])
                }
                Some(Ack::ReaderAdd) => (vec![], vec![ClientEvent::ReaderRefused(code)]),
                Some(_) if code == ErrorCode::SUCCESS => (vec![], vec![]),
                _ => (vec![], vec![ClientEvent::HostError(code)]),
            },
            Message::Apdu(apdu) => match (self.reader_id, &self.atr) {
                (Some(_), Some(_)) => (vec![], vec![ClientEvent::Apdu(apdu)]),
                _ => {
                    // No card: the reader's status, as vscclient answers (1 = no card).
                    (vec![Frame::new(rid, Message::Error(ErrorCode(1)))], vec![])
                }
            },
            Message::Flush => (vec![Frame::new(rid, Message::FlushComplete)], vec![]),
            other => {
                tracing::warn!(msg = ?other.msg_type(), "unexpected VSCard message from the host; ignored");
                (vec![], vec![])
            }
        }
    }

    /// The answer to an [`ClientEvent::Apdu`].
    pub fn response(&self, resp: Vec<u8>) -> Frame {
        Frame::new(self.reader_id.unwrap_or(0), Message::Apdu(resp))
    }

    /// The card was inserted (or replaced): ATR, once the reader is accepted.
    pub fn insert(&mut self, atr: Vec<u8>) -> Vec<Frame> {
        self.atr = Some(atr.clone());
        match self.reader_id {
            Some(rid) => {
                self.acks.push_back(Ack::Atr);
                vec![Frame::new(rid, Message::Atr(atr))]
            }
            None => vec![],
        }
    }

    /// The card was removed: CardRemove, once the reader is accepted.
    pub fn remove(&mut self) -> Vec<Frame> {
        match (self.atr.take(), self.reader_id) {
            (Some(_), Some(rid)) => {
                self.acks.push_back(Ack::CardRemove);
                vec![Frame::new(rid, Message::CardRemove)]
            }
            _ => vec![],
        }
    }

    /// Leaving: CardRemove (if a card is in) and ReaderRemove (libcacard's `exit` never sends
    /// them: qemu-ccid.md §3.4).
    pub fn goodbye(&mut self) -> Vec<Frame> {
        let Some(rid) = self.reader_id else {
            return vec![];
        };
        let mut out = Vec::new();
        if self.atr.is_some() {
            out.push(Frame::new(rid, Message::CardRemove));
        }
        out.push(Frame::new(rid, Message::ReaderRemove));
        self.reader_id = None;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{HostEvent, HostSession};
    use apdu::hex::h;

    #[test]
    fn transcript_against_qemus_answers() {
        let atr = h("3B 7A 18 00 00 73 66 74 65 20 63 64 31 34 34");
        let mut c = ClientSession::new("Virtual Reader", Some(atr.clone()));
        assert_eq!(c.start(), vec![Frame::new(0, Message::init())]);
        let (out, ev) = c.on_frame(Frame::new(0xFFFF_FFFF, Message::init()));
        assert_eq!(
            out,
            vec![
                Frame::new(0, Message::ReaderRemove),
                Frame::new(0, Message::ReaderAdd(b"Virtual Reader".to_vec()))
            ]
        );
        assert!(ev.is_empty());
        // The first SUCCESS acknowledges ReaderRemove, not ReaderAdd.
        let ok = |rid| Frame::new(rid, Message::Error(ErrorCode::SUCCESS));
        assert_eq!(c.on_frame(ok(0)), (vec![], vec![]));
        assert_eq!(c.reader_id(), None);
        assert_eq!(
            c.on_frame(ok(0)),
            (
                vec![Frame::new(0, Message::Atr(atr.clone()))],
                vec![ClientEvent::ReaderAccepted(0)]
            )
        );
        assert_eq!(c.on_frame(ok(0)), (vec![], vec![]));
        assert_eq!(
            c.on_frame(Frame::new(0, Message::Apdu(h("00 A4 04 00")))).1,
            vec![ClientEvent::Apdu(h("00 A4 04 00"))]
        );
        assert_eq!(
            c.response(h("90 00")),
            Frame::new(0, Message::Apdu(h("90 00")))
        );
        assert_eq!(
            c.on_frame(Frame::new(0, Message::Flush)).0,
            vec![Frame::new(0, Message::FlushComplete)]
        );
        assert_eq!(c.remove(), vec![Frame::new(0, Message::CardRemove)]);
        assert_eq!(
            c.on_frame(Frame::new(0, Message::Apdu(h("00 A4 04 00")))).0,
            vec![Frame::new(0, Message::Error(ErrorCode(1)))]
        );
        assert_eq!(
            c.insert(atr.clone()),
            vec![Frame::new(0, Message::Atr(atr.clone()))]
        );
        assert_eq!(
            c.goodbye(),
            vec![
                Frame::new(0, Message::CardRemove),
                Frame::new(0, Message::ReaderRemove)
            ]
        );
    }

    #[test]
    fn refused_reader_and_host_errors() {
        let mut c = ClientSession::new("r", None);
        c.start();
        c.on_frame(Frame::new(0xFFFF_FFFF, Message::init()));
        c.on_frame(Frame::new(0, Message::Error(ErrorCode::SUCCESS)));
        let (_, ev) = c.on_frame(Frame::new(
            0xFFFF_FFFF,
            Message::Error(ErrorCode::CANNOT_ADD_MORE_READERS),
        ));
        assert_eq!(
            ev,
            vec![ClientEvent::ReaderRefused(
                ErrorCode::CANNOT_ADD_MORE_READERS
            )]
        );
        assert_eq!(c.goodbye(), vec![]);
        assert_eq!(c.insert(h("3B 00")), vec![]);
    }

    #[test]
    fn our_client_and_our_host_agree() {
        let atr = h("3B 02 14 50");
        let mut c = ClientSession::new("r", Some(atr.clone()));
        let mut host = HostSession::new();
        let mut to_host = c.start();
        let mut host_events = Vec::new();
        let mut client_events = Vec::new();
        for _ in 0..5 {
            let mut to_client = Vec::new();
            for f in to_host.drain(..) {
                let (r, e) = host.on_frame(f);
                to_client.extend(r);
                host_events.extend(e);
            }
            for f in to_client {
                let (r, e) = c.on_frame(f);
                to_host.extend(r);
                client_events.extend(e);
            }
        }
        assert_eq!(
            host_events,
            vec![HostEvent::ReaderAdded, HostEvent::CardInserted(atr)]
        );
        assert_eq!(client_events, vec![ClientEvent::ReaderAccepted(0)]);
    }
}
