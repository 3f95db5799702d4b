//! Slots and the registry of slots and cards (issue #14).
//!
//! A **slot** is a reader position that may hold a card. A transport (the vpcd client, a CCID
//! reader) is given a slot's handle, [`SlotCard`], once and keeps it for the slot's whole life;
//! the handle implements [`card_api::Card`] by forwarding to whichever card is in the slot now,
//! and its [`Presence`](card_api::Presence) is the slot's, so inserting, ejecting and moving cards
//! reaches the host as ordinary card insertion and removal. Without that indirection a transport
//! would own one card for good (the layout before issue #14), and moving a card would mean
//! tearing the transport down.
//!
//! The [`Registry`] holds slots and cards by string id, inserts, ejects and moves cards, and
//! reports what happens as [`Event`]s to any number of subscribers. It is thread-safe, cheap to
//! clone (an `Arc` inside) and has no sockets or threads of its own: the transports and the
//! programs bring those.
//!
//! ```
//! use card_api::{Card, FixedCard};
//! use slot::{Event, Registry};
//! use std::sync::{Arc, Mutex};
//!
//! let reg = Registry::new();
//! let events = reg.subscribe();
//! let mut a = reg.add_slot("A")?; // given to one transport
//! let mut b = reg.add_slot("B")?; // and to another
//! let card = FixedCard::new(&[0x3B, 0x00], &[0x90, 0x00]);
//! reg.add_card("piv", Arc::new(Mutex::new(card)))?;
//! reg.insert("piv", "A")?;
//! assert_eq!(a.transmit(&[0x00, 0xA4, 0x04, 0x00]), [0x90, 0x00]);
//! reg.move_card("piv", "B")?; // host A sees the card go, then host B sees it arrive
//! assert!(!a.presence().is_present() && b.presence().is_present());
//! assert_eq!(a.transmit(&[0x00, 0xA4, 0x04, 0x00]), slot::MUTE_RESPONSE);
//! assert_eq!(b.transmit(&[0x00, 0xA4, 0x04, 0x00]), [0x90, 0x00]);
//! assert!(events.try_iter().any(|e| e == Event::CardEjected { card: "piv".into(), slot: "A".into() }));
//! # Ok::<(), slot::Error>(())
//! ```
#![warn(missing_docs)]

mod error;
mod event;
mod registry;
mod slot;

#[cfg(test)]
mod tests;

pub use error::Error;
pub use event::{Event, TraceEvent, Unsubscribe, DEFAULT_EVENT_CAPACITY};
pub use registry::Registry;
pub use slot::{SlotCard, MUTE_RESPONSE};

use std::sync::{Arc, Mutex, MutexGuard};

/// A card as the registry holds it: shared, because the slot's handle and the registry both
/// reach it, and behind a mutex, because `Card` methods take `&mut self`.
pub type SharedCard = Arc<Mutex<dyn card_api::Card>>;

/// Locks, recovering from poisoning. The data behind every lock in this crate is a map, an
/// option or a list that each update leaves whole (a panicking card cannot half-write them), so
/// the state after a panic elsewhere is still consistent; refusing to serve the slot forever
/// would be worse.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
