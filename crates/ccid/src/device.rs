//! [`Ccid`]: the reader and a card as a [`UsbDevice`], card operations done inline. Fast cards
//! (the emulated one) need nothing more; a transport that serves a slow card (passthru, PC/SC)
//! drives [`Reader`] itself and runs the [`CardRequest`]s elsewhere.

use crate::descriptors::{self, Identity, EP_BULK_OUT, EP_INTERRUPT_IN};
use crate::reader::{CardAnswer, CardRequest, Reader};
use crate::usb::{Setup, Transfer, UsbDevice};
use card_api::Card;

/// A CCID reader holding a card.
pub struct Ccid {
    reader: Reader,
    card: Box<dyn Card>,
    /// The presence generation last mirrored into the reader.
    seen: u64,
}

impl Ccid {
    /// A reader with `card` in its slot.
    pub fn new(id: Identity, card: Box<dyn Card>) -> Ccid {
        let (present, seen) = card.presence().snapshot();
        Ccid {
            reader: Reader::new(id, present),
            card,
            seen,
        }
    }

    /// Mirrors insertions and removals of the card into the reader.
    fn sync_presence(&mut self) {
        let presence = self.card.presence();
        self.reader.sync_presence(&presence, &mut self.seen);
    }

    fn run(&mut self, req: CardRequest) {
        let answer = match req {
            CardRequest::PowerOn => CardAnswer::Atr(self.card.power_on()),
            CardRequest::PowerOff => {
                self.card.power_off();
                return;
            }
            CardRequest::Transmit(apdu) => CardAnswer::Response(self.card.transmit(&apdu)),
        };
        self.reader.card_answer(answer);
    }
}

impl UsbDevice for Ccid {
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
        self.sync_presence();
        match self.reader.bulk_out(data) {
            Ok(Some(req)) => {
                self.run(req);
                Transfer::Done(vec![])
            }
            Ok(None) => Transfer::Done(vec![]),
            Err(_) => Transfer::Stall,
        }
    }
    fn input(&mut self, ep: u8, max_len: usize) -> Transfer {
        self.sync_presence();
        self.reader.endpoint_in(ep, max_len)
    }
    fn ready(&self, ep: u8) -> bool {
        let (_, gen) = self.card.presence().snapshot();
        self.reader.endpoint_ready(ep) || (ep == EP_INTERRUPT_IN && gen != self.seen)
    }
    fn reset(&mut self) {
        self.reader.reset();
    }
}
