use crate::lock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

/// How many events a subscriber may leave unread before further events to it are dropped
/// (and counted, [`crate::Registry::dropped_events`]).
pub const DEFAULT_EVENT_CAPACITY: usize = 1024;

/// Something that happened to a slot or a card. Carries ids, status words and timings only:
/// never APDU data, which may hold PINs and keys (ARCHITECTURE.md, "Invariants").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A slot (reader) was created.
    ReaderAdded(String),
    /// A slot (reader) was removed; its card, if any, was ejected first (its `CardEjected`
    /// comes before this).
    ReaderRemoved(String),
    /// A card went into a slot.
    CardInserted {
        /// The card.
        card: String,
        /// The slot.
        slot: String,
    },
    /// A card left a slot (ejected, moved away, its slot or the card itself removed).
    CardEjected {
        /// The card.
        card: String,
        /// The slot it left.
        slot: String,
    },
    /// A transport reports a host connected to the slot.
    HostConnected {
        /// The slot.
        slot: String,
        /// Who: an address, a socket path, a bus id; whatever the transport knows.
        peer: String,
    },
    /// A transport reports the host went away.
    HostDisconnected {
        /// The slot.
        slot: String,
        /// Who, as in `HostConnected`.
        peer: String,
    },
    /// A card's PIN retry counter reached 0: the card refuses the PIN until it is unblocked.
    /// The card reports it (the registry does not look into APDUs); the id is the card's.
    PinBlocked {
        /// The card.
        card: String,
    },
    /// A command APDU was answered through the slot's handle.
    ApduDone {
        /// The slot.
        slot: String,
        /// The instruction byte (0 if the command was shorter than 2 bytes).
        ins: u8,
        /// The status word answered (0 if the response was shorter than 2 bytes).
        sw: u16,
        /// How long the card took, in microseconds.
        micros: u64,
    },
}

/// One logical exchange of a slot's host with the card in it, for a trace (issue #18):
/// chaining and GET RESPONSE folded, and every secret (PIN, PUK, management-key witnesses and
/// responses, imported key material, decipher outputs) already blanked by
/// [`apdu::trace::Folder`] before the exchange left the slot. Only subscribers of
/// [`crate::Registry::subscribe_trace`] get these; [`Event`]s never carry APDU data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEvent {
    /// The slot.
    pub slot: String,
    /// The card in it.
    pub card: Option<String>,
    /// The exchange.
    pub exchange: apdu::trace::Exchange,
}

/// The subscribers. Sending never blocks: a card answering a host must not wait for a slow
/// reader of events (a UI, a log), so each subscriber has a bounded queue, and what does not fit
/// is dropped and counted.
/// Every subscriber has an id, for [`Unsubscribe`].
#[derive(Debug, Default)]
pub(crate) struct Hub {
    subscribers: Mutex<Vec<(u64, SyncSender<Event>)>>,
    dropped: AtomicU64,
    /// Trace subscribers, and how many there are: a slot folds exchanges only while one
    /// listens, so that nobody watching costs one atomic load per APDU.
    tracers: Mutex<Vec<(u64, SyncSender<TraceEvent>)>>,
    tracer_count: AtomicUsize,
    next_id: AtomicU64,
}

/// Ends a subscription when dropped: the receiver's iteration ends
/// once it has taken what was already queued. Dropping the receiver also unsubscribes, but only
/// at the next event, which on a quiet registry may be long in coming: a thread blocked on the
/// receiver, and whatever it holds, would wait until then. Made by
/// [`Registry::subscribe_until`](crate::Registry::subscribe_until) and
/// [`Registry::subscribe_trace_until`](crate::Registry::subscribe_trace_until).
#[derive(Debug)]
#[must_use = "dropping it ends the subscription at once"]
pub struct Unsubscribe {
    hub: Arc<Hub>,
    id: u64,
}

impl Unsubscribe {
    pub(crate) fn new(hub: Arc<Hub>, id: u64) -> Unsubscribe {
        Unsubscribe { hub, id }
    }
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.id);
    }
}

impl Hub {
    pub(crate) fn subscribe(&self, capacity: usize) -> (u64, Receiver<Event>) {
        let (tx, rx) = sync_channel(capacity);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.subscribers).push((id, tx));
        (id, rx)
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn subscribe_trace(&self, capacity: usize) -> (u64, Receiver<TraceEvent>) {
        let (tx, rx) = sync_channel(capacity);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut t = lock(&self.tracers);
        t.push((id, tx));
        self.tracer_count.store(t.len(), Ordering::Release);
        (id, rx)
    }

    /// Drops subscriber `id`'s sender (events or trace), which disconnects its receiver.
    pub(crate) fn unsubscribe(&self, id: u64) {
        lock(&self.subscribers).retain(|(i, _)| *i != id);
        let mut t = lock(&self.tracers);
        t.retain(|(i, _)| *i != id);
        self.tracer_count.store(t.len(), Ordering::Release);
    }

    /// Whether anyone listens to the trace.
    pub(crate) fn tracing(&self) -> bool {
        self.tracer_count.load(Ordering::Acquire) > 0
    }

    pub(crate) fn emit_trace(&self, event: TraceEvent) {
        let mut t = lock(&self.tracers);
        t.retain(|(_, tx)| match tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
        self.tracer_count.store(t.len(), Ordering::Release);
    }

    pub(crate) fn emit(&self, event: Event) {
        tracing::trace!(?event, "slot event");
        let mut subscribers = lock(&self.subscribers);
        subscribers.retain(|(_, tx)| match tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            // The receiver is gone: forget the subscriber rather than fill a dead queue.
            Err(TrySendError::Disconnected(_)) => false,
        });
    }
}
