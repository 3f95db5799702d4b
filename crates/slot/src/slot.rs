use crate::event::{Event, Hub, TraceEvent};
use crate::{lock, SharedCard};
use card_api::{Card, Presence};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// What an empty slot answers to a command: `6F 00`, "no precise diagnosis", as a mute card
/// would through a reader that has to answer something. The host should not be sending (the
/// slot's presence says no card), so this only covers the race of a command sent just as the
/// card left.
pub const MUTE_RESPONSE: [u8; 2] = [0x6F, 0x00];

/// The card in a slot, with the id the registry knows it by.
pub(crate) struct Held {
    pub(crate) card_id: String,
    pub(crate) card: SharedCard,
    /// The card's own presence and the observer that mirrors it into the slot's.
    pub(crate) card_presence: Presence,
    pub(crate) observer: u64,
}

/// One slot, shared by the registry and every handle to it.
pub(crate) struct SlotInner {
    pub(crate) id: String,
    /// True while `held` is `Some` and the card in it is present itself (a passthru card's
    /// client connected, a real card in its PC/SC reader); the registry mirrors the card's own
    /// presence into it while the card is held.
    pub(crate) presence: Presence,
    pub(crate) held: Mutex<Option<Held>>,
    /// Set when the registry removes the slot, so a transport holding the handle can tell a
    /// dead reader from an empty one.
    pub(crate) removed: AtomicBool,
    pub(crate) hub: Arc<Hub>,
    /// The trace's folder, and the card it has been folding for (a new card starts afresh).
    pub(crate) folder: Mutex<(Option<String>, apdu::trace::Folder)>,
}

impl SlotInner {
    pub(crate) fn new(id: &str, hub: Arc<Hub>) -> Self {
        SlotInner {
            id: id.to_string(),
            presence: Presence::new(false),
            held: Mutex::new(None),
            removed: AtomicBool::new(false),
            hub,
            folder: Mutex::new((None, apdu::trace::Folder::new())),
        }
    }

    pub(crate) fn held(&self) -> MutexGuard<'_, Option<Held>> {
        lock(&self.held)
    }
}

/// A slot's handle: the [`Card`] a transport serves for the slot's whole life.
///
/// Every call forwards to the card in the slot at that moment, with the slot's lock held for the
/// whole call. That lock is the point: a card cannot leave the slot in the middle of a command,
/// and once it has left, no command from this slot's host reaches it, so one host can never act
/// on the security state (a verified PIN) that another host set up after a move. The cost is that
/// ejecting or moving a card waits for the command in flight on its slot to finish.
///
/// With no card in the slot, the handle acts as a mute card: an empty ATR and [`MUTE_RESPONSE`].
/// `presence()` is the slot's: present while a card is in it and that card is present itself
/// (a passthru card whose client is connected, a real card in its PC/SC reader).
#[derive(Clone)]
pub struct SlotCard {
    pub(crate) inner: Arc<SlotInner>,
}

impl std::fmt::Debug for SlotCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotCard")
            .field("slot", &self.inner.id)
            .field("card", &self.card_id())
            .field("removed", &self.is_removed())
            .finish()
    }
}

impl SlotCard {
    /// The slot's id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The id of the card in the slot now, if any.
    pub fn card_id(&self) -> Option<String> {
        self.inner.held().as_ref().map(|h| h.card_id.clone())
    }

    /// Whether the registry has removed this slot. A removed slot stays empty for good: its
    /// handle answers as a mute card and its presence stays false. Transports learn of the
    /// removal from [`Event::ReaderRemoved`] (the slot's presence does not change when an empty
    /// slot goes away) and then ask this.
    pub fn is_removed(&self) -> bool {
        self.inner.removed.load(Ordering::Acquire)
    }

    /// Runs `f` on the card in the slot, with the slot locked, or returns `empty`.
    fn with_card<T>(&self, empty: T, f: impl FnOnce(&mut dyn Card) -> T) -> T {
        let held = self.inner.held();
        match held.as_ref() {
            Some(h) => f(&mut *lock(&h.card)),
            None => empty,
        }
    }
}

impl Card for SlotCard {
    fn atr(&self) -> Vec<u8> {
        self.with_card(Vec::new(), |c| c.atr())
    }

    fn power_on(&mut self) -> Vec<u8> {
        self.with_card(Vec::new(), |c| c.power_on())
    }

    fn power_off(&mut self) {
        self.with_card((), |c| c.power_off())
    }

    /// Forwarded as one call (not the default power-off, power-on), so a card cannot be moved
    /// between the two halves.
    fn reset(&mut self) -> Vec<u8> {
        // A reset ends whatever the trace was folding (ISO 7816-3: the card forgets it too).
        lock(&self.inner.folder).1.reset();
        self.with_card(Vec::new(), |c| c.reset())
    }

    fn transmit(&mut self, apdu: &[u8]) -> Vec<u8> {
        let held = self.inner.held();
        // Timed from here, not from the call: the time spent waiting for a move to finish is
        // the registry's, not the card's.
        let start = Instant::now();
        let response = match held.as_ref() {
            Some(h) => lock(&h.card).transmit(apdu),
            None => MUTE_RESPONSE.to_vec(),
        };
        let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        let sw = match response.as_slice() {
            [.., sw1, sw2] => u16::from_be_bytes([*sw1, *sw2]),
            _ => 0,
        };
        // Emitted before the slot is unlocked, so an APDU's event always comes before the
        // CardEjected of a removal that waited for it.
        self.inner.hub.emit(Event::ApduDone {
            slot: self.inner.id.clone(),
            ins: apdu.get(1).copied().unwrap_or(0),
            sw,
            micros,
        });
        if self.inner.hub.tracing() {
            let card = held.as_ref().map(|h| h.card_id.clone());
            let mut f = lock(&self.inner.folder);
            if f.0 != card {
                *f = (card.clone(), apdu::trace::Folder::new());
            }
            for exchange in f.1.push(apdu, &response, micros) {
                self.inner.hub.emit_trace(TraceEvent {
                    slot: self.inner.id.clone(),
                    card: card.clone(),
                    exchange,
                });
            }
        }
        drop(held);
        response
    }

    fn presence(&self) -> Presence {
        self.inner.presence.clone()
    }
}
