//! [`CardPort`]: how the reader ([`crate::device::Ccid`]) reaches the card in its slot. The
//! reader hands the port [`CardRequest`]s and collects [`CardAnswer`]s when the transport asks
//! it for an IN transfer; the port also says whether the card is present and when a working
//! card's host is due a time extension (CCID §6.2.7). So the reader stays sans-IO: where the
//! card runs (inline, on a worker thread, across a network) and what time it is are the
//! port's business, injected from outside this crate.
//!
//! [`InlinePort`] runs the card synchronously inside [`CardPort::submit`]: the emulated card
//! answers in microseconds, and tests, fuzz targets and benches want a deterministic device.
//! The `vccid` crate's threaded port runs a slow card (passthru, PC/SC) on a worker thread and
//! ticks once a second while it works.

use crate::reader::{CardAnswer, CardRequest};
use card_api::{Card, Presence};

/// What a port has to report when the reader asks ([`CardPort::poll`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// No news.
    Nothing,
    /// The answer to the oldest request submitted and not yet answered (ports answer in
    /// submission order; [`CardRequest::PowerOff`] gets no answer).
    Answer(CardAnswer),
    /// The card is still working, and another time-extension period has passed since the last
    /// report: the reader sends a time-extension DataBlock (CCID §6.2.7).
    StillWorking,
}

/// The card in a slot, as the reader drives it.
pub trait CardPort: Send {
    /// Hands `req` to the card. An inline port may do the work here; its answer is then
    /// returned by the next [`CardPort::poll`].
    fn submit(&mut self, req: CardRequest);
    /// The next piece of news, oldest first; call until [`Progress::Nothing`].
    fn poll(&mut self) -> Progress;
    /// Whether [`CardPort::poll`] would return something other than [`Progress::Nothing`]
    /// (for [`crate::usb::UsbDevice::ready`], which may not change state).
    fn has_news(&self) -> bool;
    /// The card's insertion state; the reader mirrors its generation changes.
    fn presence(&self) -> &Presence;
}

/// A port that runs the card synchronously: every request is done when
/// [`CardPort::submit`] returns, so a time extension is never due.
pub struct InlinePort {
    card: Box<dyn Card>,
    presence: Presence,
    answer: Option<CardAnswer>,
}

impl InlinePort {
    /// The port for `card`.
    pub fn new(card: Box<dyn Card>) -> InlinePort {
        let presence = card.presence();
        InlinePort {
            card,
            presence,
            answer: None,
        }
    }
}

impl CardPort for InlinePort {
    fn submit(&mut self, req: CardRequest) {
        // One answer held at a time: the reader polls after every submit.
        match req {
            CardRequest::PowerOn => self.answer = Some(CardAnswer::Atr(self.card.power_on())),
            CardRequest::PowerOff => self.card.power_off(),
            CardRequest::Transmit(apdu) => {
                self.answer = Some(CardAnswer::Response(self.card.transmit(&apdu)));
            }
        }
    }
    fn poll(&mut self) -> Progress {
        match self.answer.take() {
            Some(a) => Progress::Answer(a),
            None => Progress::Nothing,
        }
    }
    fn has_news(&self) -> bool {
        self.answer.is_some()
    }
    fn presence(&self) -> &Presence {
        &self.presence
    }
}
