//! [`Ccid`]: THE reader as a [`UsbDevice`] — the [`Reader`] state machine and the
//! [`CardPort`] of its slot. Every transport, test, fuzz target and bench drives this one type;
//! only the port differs: [`InlinePort`] runs the card synchronously, the `vccid` crate's
//! threaded port runs a slow card on a worker thread. Either way a bulk IN stays
//! [`Transfer::Pending`] until the card answers (a real reader NAKs it, CCID §5.2), the reader
//! keeps answering other commands meanwhile (GetSlotStatus, Abort), and the port's
//! [`Progress::StillWorking`] becomes a time-extension DataBlock (CCID §6.2.7). The device
//! holds no thread and no clock: news is collected when the transport asks for an IN.

use crate::descriptors::{self, Identity, EP_BULK_IN, EP_BULK_OUT, EP_INTERRUPT_IN};
use crate::port::{CardPort, InlinePort, Progress};
use crate::reader::{CardRequest, Reader};
use crate::usb::{Setup, Transfer, UsbDevice};
use card_api::Card;

/// A CCID reader with one slot and the port of the card in it.
pub struct Ccid<P: CardPort = InlinePort> {
    reader: Reader,
    port: P,
    /// The presence generation last mirrored into the reader.
    seen: u64,
    /// Answer-bearing requests submitted, and answers collected: the port answers in order,
    /// so the n-th answer belongs to the n-th request.
    asked: u64,
    answered: u64,
    /// The request whose answer the reader waits for. After an Abort, a removal or a bus
    /// reset the reader may send a new request while the card still works on the old one;
    /// the old one's late answer must not be taken for the new one's.
    waiting: Option<u64>,
}

impl Ccid<InlinePort> {
    /// A reader with `card` in its slot, run inline.
    pub fn new(id: Identity, card: Box<dyn Card>) -> Ccid<InlinePort> {
        Ccid::with_port(id, InlinePort::new(card))
    }
}

impl<P: CardPort> Ccid<P> {
    /// A reader whose slot's card is reached through `port`.
    pub fn with_port(id: Identity, port: P) -> Ccid<P> {
        let (present, seen) = port.presence().snapshot();
        Ccid {
            reader: Reader::new(id, present),
            port,
            seen,
            asked: 0,
            answered: 0,
            waiting: None,
        }
    }

    /// The port of the slot's card.
    pub fn port(&self) -> &P {
        &self.port
    }

    /// Mirrors insertions and removals of the card into the reader.
    fn sync_presence(&mut self) {
        let (present, gen) = self.port.presence().snapshot();
        if gen != self.seen {
            self.seen = gen;
            if present {
                self.reader.card_inserted();
            } else {
                self.reader.card_removed();
            }
        }
    }

    /// Takes in what the port has to report: answers, then time extensions.
    fn collect(&mut self) {
        loop {
            match self.port.poll() {
                Progress::Nothing => break,
                Progress::Answer(a) => {
                    self.answered += 1;
                    if self.waiting == Some(self.answered) {
                        self.waiting = None;
                        self.reader.card_answer(a);
                    } else {
                        tracing::debug!("CCID: a superseded request's late answer; dropped");
                    }
                }
                Progress::StillWorking => {
                    if self.waiting.is_some() {
                        self.reader.time_extension();
                    }
                }
            }
        }
    }
}

impl<P: CardPort> UsbDevice for Ccid<P> {
    fn device_descriptor(&self) -> Vec<u8> {
        descriptors::device(self.reader.identity())
    }
    fn config_descriptor(&self) -> Vec<u8> {
        descriptors::configuration()
    }
    fn control(&mut self, setup: &Setup, data: &[u8]) -> Transfer {
        self.reader.control(setup, data)
    }
    fn out(&mut self, ep: u8, data: &[u8]) -> Transfer {
        if ep != EP_BULK_OUT {
            return Transfer::Stall;
        }
        self.collect();
        self.sync_presence();
        match self.reader.bulk_out(data) {
            Ok(Some(req)) => {
                if req != CardRequest::PowerOff {
                    self.asked += 1;
                    self.waiting = Some(self.asked);
                }
                self.port.submit(req);
                // An inline port has answered already: queue the reply now.
                self.collect();
                Transfer::Done(vec![])
            }
            Ok(None) => Transfer::Done(vec![]),
            Err(_) => Transfer::Stall,
        }
    }
    fn input(&mut self, ep: u8, max_len: usize) -> Transfer {
        self.collect();
        self.sync_presence();
        self.reader.endpoint_in(ep, max_len)
    }
    fn ready(&self, ep: u8) -> bool {
        self.reader.endpoint_ready(ep)
            || match ep {
                EP_BULK_IN => self.port.has_news(),
                EP_INTERRUPT_IN => self.port.presence().snapshot().1 != self.seen,
                _ => false,
            }
    }
    fn reset(&mut self) {
        // The outstanding request (if any) is dropped by the reader; its late answer is then
        // not `waiting` and is discarded in `collect`.
        self.waiting = None;
        self.reader.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::CardAnswer;
    use apdu::hex::{h, spaced};
    use card_api::Presence;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    /// A port the test answers by hand: what a threaded port does, without the threads.
    #[derive(Clone)]
    struct Manual {
        presence: Presence,
        asked: Arc<Mutex<Vec<CardRequest>>>,
        news: Arc<Mutex<VecDeque<Progress>>>,
    }

    impl CardPort for Manual {
        fn submit(&mut self, req: CardRequest) {
            self.asked.lock().unwrap().push(req);
        }
        fn poll(&mut self) -> Progress {
            self.news
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Progress::Nothing)
        }
        fn has_news(&self) -> bool {
            !self.news.lock().unwrap().is_empty()
        }
        fn presence(&self) -> &Presence {
            &self.presence
        }
    }

    fn next(d: &mut Ccid<Manual>) -> String {
        match d.input(EP_BULK_IN, 65554) {
            Transfer::Done(v) => spaced(&v),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn pending_in_time_extension_and_late_answers_with_a_deferred_port() {
        let port = Manual {
            presence: Presence::new(true),
            asked: Arc::default(),
            news: Arc::default(),
        };
        let news = port.news.clone();
        let mut d = Ccid::with_port(Identity::default(), port.clone());
        assert_eq!(d.input(EP_INTERRUPT_IN, 8), Transfer::Done(h("50 03")));
        d.out(EP_BULK_OUT, &h("62 00000000 00 01 000000"));
        assert_eq!(
            next(&mut d),
            "Pending",
            "no answer yet: the IN stays pending"
        );
        assert!(!d.ready(EP_BULK_IN));
        news.lock()
            .unwrap()
            .push_back(Progress::Answer(CardAnswer::Atr(h("3B 00"))));
        assert!(d.ready(EP_BULK_IN));
        assert_eq!(next(&mut d), spaced(&h("80 02000000 00 01 00 00 00 3B00")));
        d.out(EP_BULK_OUT, &h("6F 04000000 00 02 000000 00A40400"));
        news.lock().unwrap().push_back(Progress::StillWorking);
        assert_eq!(next(&mut d), spaced(&h("80 00000000 00 02 80 01 00")));
        // Other commands are answered while the card works.
        d.out(EP_BULK_OUT, &h("65 00000000 00 03 000000"));
        assert_eq!(next(&mut d), spaced(&h("81 00000000 00 03 00 00 00")));
        // Abort (CCID §5.3.1), then a new command while the card still works on the old one.
        let abort = Setup {
            request_type: 0x21,
            request: 0x01,
            value: 0x0200,
            index: 0,
            length: 0,
        };
        assert_eq!(d.control(&abort, &[]), Transfer::Done(vec![]));
        d.out(EP_BULK_OUT, &h("72 00000000 00 02 000000"));
        assert_eq!(next(&mut d), spaced(&h("80 00000000 00 02 40 FF 00")));
        assert_eq!(next(&mut d), spaced(&h("81 00000000 00 02 00 00 00")));
        d.out(EP_BULK_OUT, &h("6F 04000000 00 04 000000 00B00000"));
        // The aborted command's answer comes first: it is not the new command's.
        news.lock()
            .unwrap()
            .push_back(Progress::Answer(CardAnswer::Response(h("6A 82"))));
        assert_eq!(next(&mut d), "Pending");
        news.lock()
            .unwrap()
            .push_back(Progress::Answer(CardAnswer::Response(h("90 00"))));
        assert_eq!(next(&mut d), spaced(&h("80 02000000 00 04 00 00 00 9000")));
        // A tick with nothing outstanding sends nothing.
        news.lock().unwrap().push_back(Progress::StillWorking);
        assert_eq!(next(&mut d), "Pending");
        assert_eq!(
            *port.asked.lock().unwrap(),
            vec![
                CardRequest::PowerOn,
                CardRequest::Transmit(h("00A40400")),
                CardRequest::Transmit(h("00B00000")),
            ]
        );
        // Removal while the card works: the command is failed, the host told of the change.
        d.out(EP_BULK_OUT, &h("6F 04000000 00 05 000000 00A40400"));
        port.presence.set(false);
        assert!(d.ready(EP_INTERRUPT_IN));
        assert_eq!(next(&mut d), spaced(&h("80 00000000 00 05 42 FE 00")));
        assert_eq!(d.input(EP_INTERRUPT_IN, 8), Transfer::Done(h("50 02")));
    }
}
