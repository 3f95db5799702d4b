use crate::event::{Event, Hub, TraceEvent, Unsubscribe, DEFAULT_EVENT_CAPACITY};
use crate::slot::{Held, SlotCard, SlotInner};
use crate::{lock, Error, SharedCard};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, MutexGuard};

/// A card the registry knows, and where it is.
struct CardEntry {
    card: SharedCard,
    slot: Option<String>,
}

#[derive(Default)]
struct State {
    slots: BTreeMap<String, Arc<SlotInner>>,
    cards: BTreeMap<String, CardEntry>,
}

struct Shared {
    /// Every operation holds this for its whole run, so operations (and the events they emit)
    /// happen one at a time, in one order that every subscriber sees. Lock order: this, then a
    /// slot's `held`, then a card, then the event hub.
    state: Mutex<State>,
    hub: Arc<Hub>,
}

/// The slots and cards of one process, by string id. Clones share the same registry.
///
/// Policies, chosen so that every call leaves the registry in a state a host can understand:
/// - an operation that fails changes nothing;
/// - [`eject`](Self::eject) of an empty slot is not an error (it returns `None`), like pressing
///   the eject button of an empty drive;
/// - [`remove_slot`](Self::remove_slot) and [`remove_card`](Self::remove_card) eject first
///   rather than refuse: a slot or card that goes away (a reader unplugged, a passthru client
///   disconnecting) cannot wait for someone to eject it;
/// - an ejected card is powered off (a pulled card loses power), so its security state (a
///   verified PIN, a selected applet) never follows it to the next host.
#[derive(Clone)]
pub struct Registry {
    shared: Arc<Shared>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state();
        let slots: BTreeMap<&str, Option<String>> = st
            .slots
            .iter()
            .map(|(id, s)| (id.as_str(), s.held().as_ref().map(|h| h.card_id.clone())))
            .collect();
        f.debug_struct("Registry")
            .field("slots", &slots)
            .field("cards", &st.cards.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Registry {
    /// An empty registry: no slots, no cards, no subscribers.
    pub fn new() -> Self {
        Registry {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                hub: Arc::new(Hub::default()),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    fn emit(&self, event: Event) {
        self.shared.hub.emit(event);
    }

    /// Events from now on, with room for [`DEFAULT_EVENT_CAPACITY`] unread ones.
    pub fn subscribe(&self) -> Receiver<Event> {
        self.subscribe_with_capacity(DEFAULT_EVENT_CAPACITY)
    }

    /// Events from now on, with room for `capacity` unread ones; events that find the queue
    /// full are dropped for this subscriber and counted in [`dropped_events`](Self::dropped_events).
    /// Dropping the receiver unsubscribes.
    pub fn subscribe_with_capacity(&self, capacity: usize) -> Receiver<Event> {
        self.shared.hub.subscribe(capacity).1
    }

    /// [`subscribe_with_capacity`](Self::subscribe_with_capacity), ended when the
    /// [`Unsubscribe`] is dropped, event or no event: for a subscriber whose reason to listen
    /// (a client's connection) can end while nothing happens.
    pub fn subscribe_until(&self, capacity: usize) -> (Receiver<Event>, Unsubscribe) {
        let (id, rx) = self.shared.hub.subscribe(capacity);
        (rx, Unsubscribe::new(self.shared.hub.clone(), id))
    }

    /// The trace from now on: every slot's logical exchanges, folded and redacted
    /// ([`TraceEvent`]), with room for `capacity` unread ones (more are dropped and counted in
    /// [`dropped_events`](Self::dropped_events)). Dropping the receiver unsubscribes; with no
    /// subscriber, slots do not fold at all.
    pub fn subscribe_trace(&self, capacity: usize) -> Receiver<TraceEvent> {
        self.shared.hub.subscribe_trace(capacity).1
    }

    /// [`subscribe_trace`](Self::subscribe_trace), ended when the [`Unsubscribe`] is dropped
    /// (and slots stop folding for it at once).
    pub fn subscribe_trace_until(&self, capacity: usize) -> (Receiver<TraceEvent>, Unsubscribe) {
        let (id, rx) = self.shared.hub.subscribe_trace(capacity);
        (rx, Unsubscribe::new(self.shared.hub.clone(), id))
    }

    /// Events dropped so far because a subscriber's queue was full (all subscribers together).
    pub fn dropped_events(&self) -> u64 {
        self.shared.hub.dropped()
    }

    /// Creates an empty slot and returns its handle (more can be had from [`slot`](Self::slot)).
    pub fn add_slot(&self, id: &str) -> Result<SlotCard, Error> {
        let mut st = self.state();
        if st.slots.contains_key(id) {
            return Err(Error::DuplicateSlot(id.to_string()));
        }
        let inner = Arc::new(SlotInner::new(id, self.shared.hub.clone()));
        st.slots.insert(id.to_string(), inner.clone());
        tracing::debug!(slot = id, "reader added");
        self.emit(Event::ReaderAdded(id.to_string()));
        Ok(SlotCard { inner })
    }

    /// The handle of a slot, for a transport to serve.
    pub fn slot(&self, id: &str) -> Result<SlotCard, Error> {
        let st = self.state();
        let inner = st
            .slots
            .get(id)
            .ok_or_else(|| Error::UnknownSlot(id.to_string()))?;
        Ok(SlotCard {
            inner: inner.clone(),
        })
    }

    /// Removes a slot, ejecting its card first; returns the id of the card ejected. Handles
    /// still held answer as an empty slot from now on ([`SlotCard::is_removed`]).
    pub fn remove_slot(&self, id: &str) -> Result<Option<String>, Error> {
        let mut st = self.state();
        if !st.slots.contains_key(id) {
            return Err(Error::UnknownSlot(id.to_string()));
        }
        let ejected = self.eject_locked(&mut st, id);
        if let Some(inner) = st.slots.remove(id) {
            inner.removed.store(true, Ordering::Release);
        }
        tracing::debug!(slot = id, "reader removed");
        self.emit(Event::ReaderRemoved(id.to_string()));
        Ok(ejected)
    }

    /// Registers a card, in no slot yet.
    pub fn add_card(&self, id: &str, card: SharedCard) -> Result<(), Error> {
        let mut st = self.state();
        if st.cards.contains_key(id) {
            return Err(Error::DuplicateCard(id.to_string()));
        }
        st.cards
            .insert(id.to_string(), CardEntry { card, slot: None });
        tracing::debug!(card = id, "card added");
        Ok(())
    }

    /// A registered card itself (to ask it something outside any slot: its ATR, say).
    pub fn card(&self, id: &str) -> Result<SharedCard, Error> {
        self.state()
            .cards
            .get(id)
            .map(|e| e.card.clone())
            .ok_or_else(|| Error::UnknownCard(id.to_string()))
    }

    /// Forgets a card, ejecting it first if it is in a slot; returns it.
    pub fn remove_card(&self, id: &str) -> Result<SharedCard, Error> {
        let mut st = self.state();
        let slot = match st.cards.get(id) {
            Some(entry) => entry.slot.clone(),
            None => return Err(Error::UnknownCard(id.to_string())),
        };
        if let Some(slot) = slot {
            self.eject_locked(&mut st, &slot);
        }
        let entry = st
            .cards
            .remove(id)
            .ok_or_else(|| Error::UnknownCard(id.to_string()))?;
        tracing::debug!(card = id, "card removed");
        Ok(entry.card)
    }

    /// Puts a card that is in no slot into an empty slot.
    pub fn insert(&self, card: &str, slot: &str) -> Result<(), Error> {
        let mut st = self.state();
        let from = Self::check_target(&st, card, slot)?;
        if let Some(from) = from {
            return Err(Error::CardInSlot {
                card: card.to_string(),
                slot: from,
            });
        }
        self.insert_locked(&mut st, card, slot);
        Ok(())
    }

    /// Takes the card out of a slot; returns its id, or `None` if the slot was empty.
    pub fn eject(&self, slot: &str) -> Result<Option<String>, Error> {
        let mut st = self.state();
        if !st.slots.contains_key(slot) {
            return Err(Error::UnknownSlot(slot.to_string()));
        }
        Ok(self.eject_locked(&mut st, slot))
    }

    /// Moves a card into an empty slot: ejected from the slot it is in (if any), then inserted,
    /// so the old slot's host sees a removal and the new slot's host an insertion. Returns the
    /// slot it came from. Moving a card to the slot it is in already does nothing.
    pub fn move_card(&self, card: &str, to_slot: &str) -> Result<Option<String>, Error> {
        let mut st = self.state();
        let from = Self::check_target(&st, card, to_slot)?;
        if from.as_deref() == Some(to_slot) {
            return Ok(from);
        }
        if let Some(from) = &from {
            self.eject_locked(&mut st, from);
        }
        self.insert_locked(&mut st, card, to_slot);
        Ok(from)
    }

    /// The slot ids, sorted.
    pub fn slots(&self) -> Vec<String> {
        self.state().slots.keys().cloned().collect()
    }

    /// The card ids, sorted.
    pub fn cards(&self) -> Vec<String> {
        self.state().cards.keys().cloned().collect()
    }

    /// The card in a slot, if any.
    pub fn card_in(&self, slot: &str) -> Result<Option<String>, Error> {
        let st = self.state();
        let inner = st
            .slots
            .get(slot)
            .ok_or_else(|| Error::UnknownSlot(slot.to_string()))?;
        let card = inner.held().as_ref().map(|h| h.card_id.clone());
        Ok(card)
    }

    /// The slot a card is in, if any.
    pub fn slot_of(&self, card: &str) -> Result<Option<String>, Error> {
        let st = self.state();
        st.cards
            .get(card)
            .map(|e| e.slot.clone())
            .ok_or_else(|| Error::UnknownCard(card.to_string()))
    }

    /// For transports: a host connected to `slot` (emits [`Event::HostConnected`]).
    pub fn host_connected(&self, slot: &str, peer: &str) -> Result<(), Error> {
        let st = self.state();
        if !st.slots.contains_key(slot) {
            return Err(Error::UnknownSlot(slot.to_string()));
        }
        tracing::debug!(slot, peer, "host connected");
        self.emit(Event::HostConnected {
            slot: slot.to_string(),
            peer: peer.to_string(),
        });
        Ok(())
    }

    /// For transports: the host of `slot` went away (emits [`Event::HostDisconnected`]).
    pub fn host_disconnected(&self, slot: &str, peer: &str) -> Result<(), Error> {
        let st = self.state();
        if !st.slots.contains_key(slot) {
            return Err(Error::UnknownSlot(slot.to_string()));
        }
        tracing::debug!(slot, peer, "host disconnected");
        self.emit(Event::HostDisconnected {
            slot: slot.to_string(),
            peer: peer.to_string(),
        });
        Ok(())
    }

    /// For cards: `card`'s PIN is blocked (emits [`Event::PinBlocked`]). Callable from inside
    /// a card's `transmit`, with the card's lock held: it takes no registry lock (the lock
    /// order is the registry's state, then a slot, then a card, then the event hub), only the
    /// hub's, so it does not check that the card is registered.
    pub fn pin_blocked(&self, card: &str) {
        tracing::debug!(card, "PIN blocked");
        self.emit(Event::PinBlocked {
            card: card.to_string(),
        });
    }

    /// Checks that `card` and `slot` exist and that the slot is empty or holds `card`; returns
    /// where the card is now.
    fn check_target(st: &State, card: &str, slot: &str) -> Result<Option<String>, Error> {
        let entry = st
            .cards
            .get(card)
            .ok_or_else(|| Error::UnknownCard(card.to_string()))?;
        let inner = st
            .slots
            .get(slot)
            .ok_or_else(|| Error::UnknownSlot(slot.to_string()))?;
        if let Some(h) = inner.held().as_ref() {
            if h.card_id != card {
                return Err(Error::SlotOccupied {
                    slot: slot.to_string(),
                    card: h.card_id.clone(),
                });
            }
        }
        Ok(entry.slot.clone())
    }

    /// Ejects whatever is in `slot` (which the caller checked exists).
    fn eject_locked(&self, st: &mut State, slot: &str) -> Option<String> {
        let inner = st.slots.get(slot)?;
        // Waits for a command in flight through the slot's handle to finish (see SlotCard).
        let mut held = inner.held();
        let h = held.take()?;
        h.card_presence.unobserve(h.observer);
        lock(&h.card).power_off();
        inner.presence.set(false);
        drop(held);
        if let Some(entry) = st.cards.get_mut(&h.card_id) {
            entry.slot = None;
        }
        tracing::debug!(card = h.card_id, slot, "card ejected");
        self.emit(Event::CardEjected {
            card: h.card_id.clone(),
            slot: slot.to_string(),
        });
        Some(h.card_id)
    }

    /// Puts `card` into `slot` (both checked to exist, the slot empty, the card in no slot).
    fn insert_locked(&self, st: &mut State, card: &str, slot: &str) {
        let (Some(entry), Some(inner)) = (st.cards.get_mut(card), st.slots.get(slot)) else {
            return;
        };
        let mut held = inner.held();
        // The slot shows the card's own presence while it holds the card: observed first, then
        // read, so no change in between is lost.
        let card_presence = lock(&entry.card).presence();
        let slot_presence = inner.presence.clone();
        let observer = card_presence.observe(move |present| {
            slot_presence.set(present);
        });
        inner.presence.set(card_presence.is_present());
        *held = Some(Held {
            card_id: card.to_string(),
            card: entry.card.clone(),
            card_presence,
            observer,
        });
        drop(held);
        entry.slot = Some(slot.to_string());
        tracing::debug!(card, slot, "card inserted");
        self.emit(Event::CardInserted {
            card: card.to_string(),
            slot: slot.to_string(),
        });
    }
}
