//! [`Ccid`]: THE reader as a [`UsbDevice`] — the [`Reader`] state machine and the
//! [`CardPort`] of each of its slots. Every transport, test, fuzz target and bench drives this one type;
//! only the port differs: [`InlinePort`] runs the card synchronously, the `vccid` crate's
//! threaded port runs a slow card on a worker thread. Either way a bulk IN stays
//! [`Transfer::Pending`] until the card answers (a real reader NAKs it, CCID §5.2), the reader
//! keeps answering other commands meanwhile (GetSlotStatus, Abort), and the port's
//! [`Progress::StillWorking`] becomes a time-extension DataBlock (CCID §6.2.7). The device
//! holds no thread and no clock: news is collected when the transport asks for an IN.

use crate::descriptors::{self, Identity, EP_BULK_IN, EP_BULK_OUT, EP_INTERRUPT_IN};
use crate::port::{CardPort, InlinePort, Progress};
use crate::reader::{CardRequest, Reader};
use crate::usb::{Setup, Tap, Transfer, UsbDevice};
use card_api::Card;

/// One slot's card port and the bookkeeping that pairs its answers with its requests.
struct SlotPort<P> {
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

/// A CCID reader with one or more slots (bMaxSlotIndex = slots - 1), each with the port of the
/// card in it.
pub struct Ccid<P: CardPort = InlinePort> {
    reader: Reader,
    slots: Vec<SlotPort<P>>,
    /// What watches the transfers (the `--pcap` capture), if anything.
    tap: Option<Box<dyn Tap>>,
}

impl Ccid<InlinePort> {
    /// A one-slot reader with `card` in its slot, run inline.
    pub fn new(id: Identity, card: Box<dyn Card>) -> Ccid<InlinePort> {
        Ccid::with_port(id, InlinePort::new(card))
    }
}

impl<P: CardPort> Ccid<P> {
    /// A one-slot reader whose card is reached through `port`.
    pub fn with_port(id: Identity, port: P) -> Ccid<P> {
        Ccid::with_ports(id, vec![port])
    }

    /// A reader with one slot per port, in order (slot 0 is the first); at most
    /// [`crate::reader::MAX_SLOTS`] are used (more are dropped, with a warning), and no ports
    /// make one empty slot that never holds a card.
    pub fn with_ports(id: Identity, ports: Vec<P>) -> Ccid<P> {
        if ports.len() > crate::reader::MAX_SLOTS {
            tracing::warn!(
                ports = ports.len(),
                "CCID: a reader has at most {} slots; the rest are left out",
                crate::reader::MAX_SLOTS
            );
        }
        let slots: Vec<SlotPort<P>> = ports
            .into_iter()
            .take(crate::reader::MAX_SLOTS)
            .map(|port| {
                let (_, seen) = port.presence().snapshot();
                SlotPort {
                    port,
                    seen,
                    asked: 0,
                    answered: 0,
                    waiting: None,
                }
            })
            .collect();
        let present: Vec<bool> = slots
            .iter()
            .map(|s| s.port.presence().is_present())
            .collect();
        Ccid {
            reader: Reader::with_slots(id, &present),
            slots,
            tap: None,
        }
    }

    /// The reader with `tap` watching every transfer and its result (a usbmon capture:
    /// [`crate::pcap::PcapTap`]).
    pub fn with_tap(mut self, tap: impl Tap + 'static) -> Ccid<P> {
        self.tap = Some(Box::new(tap));
        self
    }

    /// The port of slot `slot`'s card.
    pub fn port(&self, slot: usize) -> Option<&P> {
        self.slots.get(slot).map(|s| &s.port)
    }

    /// The number of slots.
    pub fn slot_count(&self) -> usize {
        self.reader.slot_count()
    }

    /// A bulk OUT: a command for a slot's card is handed to its port.
    fn handle_out(&mut self, ep: u8, data: &[u8]) -> Transfer {
        if ep != EP_BULK_OUT {
            return Transfer::Stall;
        }
        self.collect();
        self.sync_presence();
        match self.reader.bulk_out(data) {
            Ok(Some((slot, req))) => {
                // The reader answers commands for slots that do not exist itself.
                let Some(s) = self.slots.get_mut(usize::from(slot)) else {
                    return Transfer::Done(vec![]);
                };
                if req != CardRequest::PowerOff {
                    s.asked += 1;
                    s.waiting = Some(s.asked);
                }
                s.port.submit(req);
                // An inline port has answered already: queue the reply now.
                self.collect();
                Transfer::Done(vec![])
            }
            Ok(None) => Transfer::Done(vec![]),
            Err(_) => Transfer::Stall,
        }
    }

    /// Mirrors insertions and removals of the cards into the reader.
    fn sync_presence(&mut self) {
        for (i, s) in self.slots.iter_mut().enumerate() {
            let (present, gen) = s.port.presence().snapshot();
            if gen != s.seen {
                s.seen = gen;
                if present {
                    self.reader.card_inserted(i as u8);
                } else {
                    self.reader.card_removed(i as u8);
                }
            }
        }
    }

    /// Takes in what the ports have to report: answers, then time extensions.
    fn collect(&mut self) {
        for (i, s) in self.slots.iter_mut().enumerate() {
            loop {
                match s.port.poll() {
                    Progress::Nothing => break,
                    Progress::Answer(a) => {
                        s.answered += 1;
                        if s.waiting == Some(s.answered) {
                            s.waiting = None;
                            self.reader.card_answer(i as u8, a);
                        } else {
                            tracing::debug!(
                                slot = i,
                                "CCID: a superseded request's late answer; dropped"
                            );
                        }
                    }
                    Progress::StillWorking => {
                        if s.waiting.is_some() {
                            self.reader.time_extension(i as u8);
                        }
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
        self.reader.configuration_descriptor()
    }
    fn control(&mut self, setup: &Setup, data: &[u8]) -> Transfer {
        let t = self.reader.control(setup, data);
        if let Some(tap) = &mut self.tap {
            tap.control(setup, data, &t);
        }
        t
    }
    fn out(&mut self, ep: u8, data: &[u8]) -> Transfer {
        let t = self.handle_out(ep, data);
        if let Some(tap) = &mut self.tap {
            tap.out(ep, data, &t);
        }
        t
    }
    fn input(&mut self, ep: u8, max_len: usize) -> Transfer {
        self.collect();
        self.sync_presence();
        let t = self.reader.endpoint_in(ep, max_len);
        if let Some(tap) = &mut self.tap {
            tap.input(ep, max_len, &t);
        }
        t
    }
    fn ready(&self, ep: u8) -> bool {
        self.reader.endpoint_ready(ep)
            || match ep {
                EP_BULK_IN => self.slots.iter().any(|s| s.port.has_news()),
                EP_INTERRUPT_IN => self
                    .slots
                    .iter()
                    .any(|s| s.port.presence().snapshot().1 != s.seen),
                _ => false,
            }
    }
    fn reset(&mut self) {
        // The outstanding requests (if any) are dropped by the reader; their late answers are
        // then not `waiting` and are discarded in `collect`.
        for s in &mut self.slots {
            s.waiting = None;
        }
        self.reader.reset();
        if let Some(tap) = &mut self.tap {
            tap.reset();
        }
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

    /// Two slots, each with its own card (CCID §6.1: bSlot picks the slot; §6.3.1: two bits
    /// per slot in NotifySlotChange): commands reach the right card, a third slot does not
    /// exist, and a removal in one slot leaves the other one powered.
    #[test]
    fn two_slots_two_cards() {
        let a = card_api::FixedCard::new(&h("3B 01 AA"), &h("0A 90 00"));
        let b = card_api::FixedCard::new(&h("3B 01 BB"), &h("0B 90 00"));
        let b_presence = b.presence();
        let mut d = Ccid::with_ports(
            Identity::default(),
            vec![InlinePort::new(Box::new(a)), InlinePort::new(Box::new(b))],
        );
        assert_eq!(d.slot_count(), 2);
        let cfg = d.config_descriptor();
        assert_eq!(
            (cfg[18 + 4], cfg[18 + 53]),
            (1, 2),
            "bMaxSlotIndex, busy slots"
        );
        // Both present, both changed: slot 0 bits 0-1, slot 1 bits 2-3.
        assert_eq!(d.input(EP_INTERRUPT_IN, 8), Transfer::Done(h("50 0F")));
        let next = |d: &mut Ccid| match d.input(EP_BULK_IN, 65554) {
            Transfer::Done(v) => spaced(&v),
            other => format!("{other:?}"),
        };
        d.out(EP_BULK_OUT, &h("62 00000000 01 01 000000"));
        assert_eq!(
            next(&mut d),
            spaced(&h("80 03000000 01 01 00 00 00 3B01BB"))
        );
        d.out(EP_BULK_OUT, &h("62 00000000 00 02 000000"));
        assert_eq!(
            next(&mut d),
            spaced(&h("80 03000000 00 02 00 00 00 3B01AA"))
        );
        d.out(EP_BULK_OUT, &h("6F 04000000 01 03 000000 00A40400"));
        assert_eq!(
            next(&mut d),
            spaced(&h("80 03000000 01 03 00 00 00 0B9000"))
        );
        d.out(EP_BULK_OUT, &h("6F 04000000 00 04 000000 00A40400"));
        assert_eq!(
            next(&mut d),
            spaced(&h("80 03000000 00 04 00 00 00 0A9000"))
        );
        // Slot 2 does not exist: bError 5, the offset of bSlot (CCID §6.2.6).
        d.out(EP_BULK_OUT, &h("65 00000000 02 05 000000"));
        assert_eq!(next(&mut d), spaced(&h("81 00000000 02 05 42 05 00")));
        // The card of slot 1 goes: slot 0 present and unchanged, slot 1 absent and changed.
        b_presence.set(false);
        assert!(d.ready(EP_INTERRUPT_IN));
        assert_eq!(d.input(EP_INTERRUPT_IN, 8), Transfer::Done(h("50 09")));
        d.out(EP_BULK_OUT, &h("65 00000000 01 06 000000"));
        assert_eq!(next(&mut d), spaced(&h("81 00000000 01 06 02 00 00")));
        d.out(EP_BULK_OUT, &h("65 00000000 00 07 000000"));
        assert_eq!(next(&mut d), spaced(&h("81 00000000 00 07 00 00 00")));
        // An Abort names its slot (wValue = bSeq << 8 | bSlot); a slot that does not exist
        // STALLs.
        let abort = |slot: u16| Setup {
            request_type: 0x21,
            request: 0x01,
            value: 0x0800 | slot,
            index: 0,
            length: 0,
        };
        assert_eq!(d.control(&abort(1), &[]), Transfer::Done(vec![]));
        assert_eq!(d.control(&abort(2), &[]), Transfer::Stall);
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
