//! The slot handle's forwarding, moves as a host sees them, events, misuse, and random
//! operation sequences against the invariants.

use crate::{Error, Event, Registry, SharedCard, SlotCard, MUTE_RESPONSE};
use card_api::{Card, FixedCard, Presence};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bytes from spaced hex, "00 A4 04 00".
fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
}

fn fixed(atr: &str, response: &str) -> SharedCard {
    Arc::new(Mutex::new(FixedCard::new(&hex(atr), &hex(response))))
}

/// A card that counts power-offs, to see that an ejected card loses power.
struct CountingCard {
    power_offs: Arc<AtomicUsize>,
    presence: Presence,
}

impl Card for CountingCard {
    fn atr(&self) -> Vec<u8> {
        hex("3B 00")
    }
    fn power_on(&mut self) -> Vec<u8> {
        self.atr()
    }
    fn power_off(&mut self) {
        self.power_offs.fetch_add(1, Ordering::SeqCst);
    }
    fn transmit(&mut self, _apdu: &[u8]) -> Vec<u8> {
        hex("90 00")
    }
    fn presence(&self) -> Presence {
        self.presence.clone()
    }
}

fn drain(rx: &Receiver<Event>) -> Vec<Event> {
    rx.try_iter().collect()
}

fn inserted(card: &str, slot: &str) -> Event {
    Event::CardInserted {
        card: card.into(),
        slot: slot.into(),
    }
}

fn ejected(card: &str, slot: &str) -> Event {
    Event::CardEjected {
        card: card.into(),
        slot: slot.into(),
    }
}

const SELECT_MF: &str = "00 A4 00 00 02 3F 00";

#[test]
fn the_handle_forwards_to_the_inserted_card() {
    let reg = Registry::new();
    let mut a = reg.add_slot("A").unwrap();
    reg.add_card("piv", fixed("3B 88 80 01", "61 0A 90 00"))
        .unwrap();
    let events = reg.subscribe();
    assert!(!a.presence().is_present());

    reg.insert("piv", "A").unwrap();
    assert!(a.presence().is_present());
    assert_eq!(a.card_id().as_deref(), Some("piv"));
    assert_eq!(a.power_on(), hex("3B 88 80 01"));
    assert_eq!(a.atr(), hex("3B 88 80 01"));
    assert_eq!(a.reset(), hex("3B 88 80 01"));
    assert_eq!(a.transmit(&hex(SELECT_MF)), hex("61 0A 90 00"));

    let ev = drain(&events);
    assert_eq!(ev[0], inserted("piv", "A"));
    match &ev[1] {
        Event::ApduDone { slot, ins, sw, .. } => {
            assert_eq!((slot.as_str(), *ins, *sw), ("A", 0xA4, 0x9000));
        }
        e => panic!("expected ApduDone, got {e:?}"),
    }
    assert_eq!(ev.len(), 2);
}

#[test]
fn an_empty_slot_answers_as_a_mute_card() {
    let reg = Registry::new();
    let mut a = reg.add_slot("A").unwrap();
    let events = reg.subscribe();
    assert!(a.atr().is_empty());
    assert!(a.power_on().is_empty());
    a.power_off();
    assert_eq!(a.transmit(&hex(SELECT_MF)), MUTE_RESPONSE.to_vec());
    assert_eq!(a.transmit(&[]), hex("6F 00"));
    let ev = drain(&events);
    assert!(matches!(
        ev[0],
        Event::ApduDone {
            ins: 0xA4,
            sw: 0x6F00,
            ..
        }
    ));
    assert!(matches!(
        ev[1],
        Event::ApduDone {
            ins: 0,
            sw: 0x6F00,
            ..
        }
    ));
}

/// The acceptance point of issue #14: a card moved between slots at run time; the host of each
/// slot, waiting on the slot's presence as a transport does, sees removal and insertion.
#[test]
fn a_moved_card_leaves_one_host_and_reaches_the_other() {
    let reg = Registry::new();
    let mut a = reg.add_slot("A").unwrap();
    let mut b = reg.add_slot("B").unwrap();
    reg.add_card("cac", fixed("3B 01", "CA C0 90 00")).unwrap();
    reg.insert("cac", "A").unwrap();
    assert_eq!(a.transmit(&hex(SELECT_MF)), hex("CA C0 90 00"));
    let events = reg.subscribe();

    // Hosts wait from the generation they saw before the move, as the vpcd client does, so a
    // thread that starts late cannot miss the change.
    let host = |slot: &SlotCard| {
        let presence = slot.presence();
        let (_, seen) = presence.snapshot();
        std::thread::spawn(move || presence.wait_change(seen, Duration::from_secs(10)))
    };
    let (a_before, b_before) = (a.presence().snapshot(), b.presence().snapshot());
    assert!(a_before.0 && !b_before.0);
    let host_a = host(&a);
    let host_b = host(&b);

    assert_eq!(reg.move_card("cac", "B").unwrap().as_deref(), Some("A"));

    let (a_present, a_gen) = host_a.join().unwrap();
    let (b_present, b_gen) = host_b.join().unwrap();
    assert!(!a_present, "host A sees the card removed");
    assert!(b_present, "host B sees a card inserted");
    assert_eq!(a_gen, a_before.1 + 1);
    assert_eq!(b_gen, b_before.1 + 1);

    assert_eq!(b.power_on(), hex("3B 01"));
    assert_eq!(b.transmit(&hex(SELECT_MF)), hex("CA C0 90 00"));
    assert_eq!(a.transmit(&hex(SELECT_MF)), hex("6F 00"));
    assert!(a.atr().is_empty());

    let ev = drain(&events);
    assert_eq!(ev[..2], [ejected("cac", "A"), inserted("cac", "B")]);
    assert_eq!(reg.slot_of("cac").unwrap().as_deref(), Some("B"));
    assert_eq!(reg.card_in("A").unwrap(), None);
}

#[test]
fn an_ejected_card_is_powered_off() {
    let reg = Registry::new();
    reg.add_slot("A").unwrap();
    reg.add_slot("B").unwrap();
    let power_offs = Arc::new(AtomicUsize::new(0));
    let card = CountingCard {
        power_offs: power_offs.clone(),
        presence: Presence::new(true),
    };
    reg.add_card("c", Arc::new(Mutex::new(card))).unwrap();
    reg.insert("c", "A").unwrap();
    assert_eq!(power_offs.load(Ordering::SeqCst), 0);
    reg.move_card("c", "B").unwrap();
    assert_eq!(power_offs.load(Ordering::SeqCst), 1);
    // Moving to where it is already: nothing happens, no power cycle.
    assert_eq!(reg.move_card("c", "B").unwrap().as_deref(), Some("B"));
    assert_eq!(power_offs.load(Ordering::SeqCst), 1);
    assert_eq!(reg.eject("B").unwrap().as_deref(), Some("c"));
    assert_eq!(power_offs.load(Ordering::SeqCst), 2);
}

#[test]
fn events_arrive_in_order() {
    let reg = Registry::new();
    let events = reg.subscribe();
    reg.add_slot("A").unwrap();
    reg.add_slot("B").unwrap();
    reg.add_card("x", fixed("3B 00", "90 00")).unwrap();
    reg.insert("x", "A").unwrap();
    reg.host_connected("A", "unix:/run/vpcd").unwrap();
    reg.move_card("x", "B").unwrap();
    reg.host_disconnected("A", "unix:/run/vpcd").unwrap();
    reg.remove_slot("B").unwrap();
    reg.move_card("x", "A").unwrap();
    reg.remove_card("x").unwrap();
    assert_eq!(
        drain(&events),
        vec![
            Event::ReaderAdded("A".into()),
            Event::ReaderAdded("B".into()),
            inserted("x", "A"),
            Event::HostConnected {
                slot: "A".into(),
                peer: "unix:/run/vpcd".into()
            },
            ejected("x", "A"),
            inserted("x", "B"),
            Event::HostDisconnected {
                slot: "A".into(),
                peer: "unix:/run/vpcd".into()
            },
            ejected("x", "B"),
            Event::ReaderRemoved("B".into()),
            inserted("x", "A"),
            ejected("x", "A"),
        ]
    );
}

#[test]
fn each_misuse_has_its_error_and_changes_nothing() {
    let reg = Registry::new();
    reg.add_slot("A").unwrap();
    reg.add_slot("B").unwrap();
    reg.add_card("x", fixed("3B 00", "90 00")).unwrap();
    reg.add_card("y", fixed("3B 00", "90 00")).unwrap();
    reg.insert("x", "A").unwrap();
    let events = reg.subscribe();

    let unknown_slot = Err(Error::UnknownSlot("Z".into()));
    assert_eq!(reg.slot("Z").map(|_| ()), unknown_slot);
    assert_eq!(reg.remove_slot("Z").map(|_| ()), unknown_slot);
    assert_eq!(reg.eject("Z").map(|_| ()), unknown_slot);
    assert_eq!(reg.insert("y", "Z"), unknown_slot);
    assert_eq!(reg.move_card("y", "Z").map(|_| ()), unknown_slot);
    assert_eq!(reg.card_in("Z").map(|_| ()), unknown_slot);
    assert_eq!(reg.host_connected("Z", "p"), unknown_slot);
    assert_eq!(reg.host_disconnected("Z", "p"), unknown_slot);

    let unknown_card = Err(Error::UnknownCard("q".into()));
    assert_eq!(reg.insert("q", "B"), unknown_card);
    assert_eq!(reg.move_card("q", "B").map(|_| ()), unknown_card);
    assert_eq!(reg.remove_card("q").map(|_| ()), unknown_card);
    assert_eq!(reg.slot_of("q").map(|_| ()), unknown_card);

    let occupied = Err(Error::SlotOccupied {
        slot: "A".into(),
        card: "x".into(),
    });
    assert_eq!(reg.insert("y", "A"), occupied);
    assert_eq!(reg.move_card("y", "A").map(|_| ()), occupied);

    let in_slot = Err(Error::CardInSlot {
        card: "x".into(),
        slot: "A".into(),
    });
    assert_eq!(reg.insert("x", "B"), in_slot);
    assert_eq!(reg.insert("x", "A"), in_slot);

    assert_eq!(
        reg.add_slot("A").map(|_| ()),
        Err(Error::DuplicateSlot("A".into()))
    );
    assert_eq!(
        reg.add_card("x", fixed("3B 00", "90 00")),
        Err(Error::DuplicateCard("x".into()))
    );
    assert_eq!(
        Error::SlotOccupied {
            slot: "A".into(),
            card: "x".into()
        }
        .to_string(),
        r#"slot "A" already holds card "x""#
    );

    assert_eq!(drain(&events), vec![], "a refused operation emits nothing");
    assert_eq!(reg.card_in("A").unwrap().as_deref(), Some("x"));
    assert_eq!(reg.card_in("B").unwrap(), None);
    assert_eq!(reg.slots(), ["A", "B"]);
    assert_eq!(reg.cards(), ["x", "y"]);
    assert_eq!(
        reg.eject("B").unwrap(),
        None,
        "ejecting an empty slot is not an error"
    );
}

#[test]
fn removing_a_slot_or_a_card_ejects_first() {
    let reg = Registry::new();
    let mut a = reg.add_slot("A").unwrap();
    let b = reg.add_slot("B").unwrap();
    reg.add_card("x", fixed("3B 00", "90 00")).unwrap();
    reg.add_card("y", fixed("3B 00", "90 00")).unwrap();
    reg.insert("x", "A").unwrap();
    reg.insert("y", "B").unwrap();

    assert_eq!(reg.remove_slot("A").unwrap().as_deref(), Some("x"));
    assert!(a.is_removed());
    assert!(!a.presence().is_present());
    assert_eq!(a.transmit(&hex(SELECT_MF)), hex("6F 00"));
    assert_eq!(
        reg.slot_of("x").unwrap(),
        None,
        "the card stays, in no slot"
    );
    assert_eq!(reg.slots(), ["B"]);
    // A new slot of the same name is a new slot; the old handle stays dead.
    let a2 = reg.add_slot("A").unwrap();
    reg.insert("x", "A").unwrap();
    assert!(a2.presence().is_present());
    assert!(!a.presence().is_present());

    let y = reg.remove_card("y").unwrap();
    assert!(!b.presence().is_present());
    assert_eq!(reg.cards(), ["x"]);
    // The card comes back to the caller, still usable.
    assert_eq!(y.lock().unwrap().transmit(&hex(SELECT_MF)), hex("90 00"));
}

#[test]
fn subscribers_never_block_the_card() {
    let reg = Registry::new();
    let mut a = reg.add_slot("A").unwrap();
    reg.add_card("x", fixed("3B 00", "90 00")).unwrap();
    reg.insert("x", "A").unwrap();
    let slow = reg.subscribe_with_capacity(2);
    let gone = reg.subscribe();
    drop(gone);
    for _ in 0..5 {
        assert_eq!(a.transmit(&hex(SELECT_MF)), hex("90 00"));
    }
    assert_eq!(drain(&slow).len(), 2);
    // Only the slow subscriber counts drops; the one that went away was forgotten.
    assert_eq!(reg.dropped_events(), 3);
}

/// A subscription ended by its `Unsubscribe` ends its receiver at once, with no event to
/// come: a thread waiting on it (a control client's events or trace) is not held until the
/// next one. What was queued before still arrives.
#[test]
fn unsubscribe_ends_the_receiver_without_waiting_for_an_event() {
    let reg = Registry::new();
    let (events, unsubscribe) = reg.subscribe_until(16);
    let (trace, trace_unsubscribe) = reg.subscribe_trace_until(16);
    reg.add_slot("A").unwrap();
    let waiter = std::thread::spawn(move || events.iter().count());
    let tracer = std::thread::spawn(move || trace.iter().count());
    drop(unsubscribe);
    drop(trace_unsubscribe);
    assert_eq!(waiter.join().unwrap(), 1, "the ReaderAdded queued before");
    assert_eq!(tracer.join().unwrap(), 0);
    // The registry goes on without them.
    reg.add_slot("B").unwrap();
    assert_eq!(reg.dropped_events(), 0);
}

/// A host hammering a slot while its card is moved away and back: every answer is the card's
/// or the mute one, and nothing deadlocks (the host holds a slot lock, then the card's; the
/// registry its own, then the slot's, then the card's).
#[test]
fn commands_in_flight_during_moves() {
    let reg = Registry::new();
    let a = reg.add_slot("A").unwrap();
    reg.add_slot("B").unwrap();
    reg.add_card("x", fixed("3B 00", "90 00")).unwrap();
    reg.insert("x", "A").unwrap();
    let host = {
        let mut a = a.clone();
        std::thread::spawn(move || {
            for _ in 0..2000 {
                let r = a.transmit(&hex(SELECT_MF));
                assert!(r == hex("90 00") || r == hex("6F 00"), "{r:02X?}");
            }
        })
    };
    for i in 0..200 {
        reg.move_card("x", if i % 2 == 0 { "B" } else { "A" })
            .unwrap();
    }
    host.join().unwrap();
    assert_eq!(reg.slot_of("x").unwrap().as_deref(), Some("A"));
    assert!(a.presence().is_present());
}

mod random {
    use super::*;
    use proptest::prelude::*;

    const SLOTS: [&str; 3] = ["A", "B", "C"];
    const CARDS: [&str; 3] = ["x", "y", "z"];

    #[derive(Debug, Clone)]
    enum Op {
        AddSlot(usize),
        RemoveSlot(usize),
        AddCard(usize),
        RemoveCard(usize),
        Insert(usize, usize),
        Eject(usize),
        Move(usize, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..3usize).prop_map(Op::AddSlot),
            (0..3usize).prop_map(Op::RemoveSlot),
            (0..3usize).prop_map(Op::AddCard),
            (0..3usize).prop_map(Op::RemoveCard),
            (0..3usize, 0..3usize).prop_map(|(c, s)| Op::Insert(c, s)),
            (0..3usize).prop_map(Op::Eject),
            (0..3usize, 0..3usize).prop_map(|(c, s)| Op::Move(c, s)),
        ]
    }

    proptest! {
        #[test]
        fn invariants_hold(ops in proptest::collection::vec(op(), 1..60)) {
            let reg = Registry::new();
            let events = reg.subscribe();
            // Each card answers its own index, so a handle's answer tells which card it reached.
            let card = |c: usize| fixed("3B 00", &format!("{c:02X} 90 00"));
            let mut handles: std::collections::BTreeMap<&str, SlotCard> = Default::default();
            // Presence per slot, replayed from the events alone.
            let mut from_events: std::collections::BTreeMap<String, bool> = Default::default();
            for op in ops {
                // Outcomes are free to be errors; the invariants must hold either way.
                match op {
                    Op::AddSlot(s) => {
                        if let Ok(h) = reg.add_slot(SLOTS[s]) {
                            handles.insert(SLOTS[s], h);
                        }
                    }
                    Op::RemoveSlot(s) => {
                        let had = reg.card_in(SLOTS[s]);
                        let r = reg.remove_slot(SLOTS[s]);
                        prop_assert_eq!(r.is_ok(), had.is_ok());
                        if let Ok(had) = had {
                            prop_assert_eq!(r.ok().flatten(), had);
                            let h = handles.remove(SLOTS[s]);
                            prop_assert!(h.is_some_and(|h| h.is_removed()));
                        }
                    }
                    Op::AddCard(c) => { let _ = reg.add_card(CARDS[c], card(c)); }
                    Op::RemoveCard(c) => { let _ = reg.remove_card(CARDS[c]); }
                    Op::Insert(c, s) => { let _ = reg.insert(CARDS[c], SLOTS[s]); }
                    Op::Eject(s) => { let _ = reg.eject(SLOTS[s]); }
                    Op::Move(c, s) => {
                        let r = reg.move_card(CARDS[c], SLOTS[s]);
                        if r.is_ok() {
                            prop_assert_eq!(reg.slot_of(CARDS[c]), Ok(Some(SLOTS[s].to_string())));
                        }
                    }
                }
                for e in events.try_iter() {
                    match e {
                        Event::CardInserted { slot, .. } => {
                            prop_assert!(!from_events.get(&slot).copied().unwrap_or(false));
                            from_events.insert(slot, true);
                        }
                        Event::CardEjected { slot, .. } => {
                            prop_assert!(from_events.get(&slot).copied().unwrap_or(false));
                            from_events.insert(slot, false);
                        }
                        Event::ReaderRemoved(slot) => {
                            prop_assert!(!from_events.get(&slot).copied().unwrap_or(false));
                        }
                        _ => {}
                    }
                }

                // A card is in at most one slot, and the two views (slot → card, card → slot)
                // agree.
                let mut seen = std::collections::BTreeSet::new();
                for s in reg.slots() {
                    let h = &handles[s.as_str()];
                    let held = reg.card_in(&s).unwrap();
                    // A slot's presence is whether it holds a card; so is the event replay.
                    prop_assert_eq!(h.presence().is_present(), held.is_some());
                    prop_assert_eq!(from_events.get(&s).copied().unwrap_or(false), held.is_some());
                    let mut h = h.clone();
                    match &held {
                        Some(c) => {
                            prop_assert!(seen.insert(c.clone()), "card {} in two slots", c);
                            prop_assert_eq!(reg.slot_of(c), Ok(Some(s.clone())));
                            let i = CARDS.iter().position(|x| x == c).unwrap();
                            prop_assert_eq!(h.transmit(&hex(SELECT_MF)), vec![i as u8, 0x90, 0x00]);
                        }
                        None => prop_assert_eq!(h.transmit(&hex(SELECT_MF)), MUTE_RESPONSE.to_vec()),
                    }
                }
                for c in reg.cards() {
                    if let Some(s) = reg.slot_of(&c).unwrap() {
                        prop_assert_eq!(reg.card_in(&s), Ok(Some(c.clone())));
                    }
                }
            }
        }
    }
}

/// A card that comes and goes by itself (a passthru card whose client connects and leaves):
/// the slot holding it shows its presence, and stops following it once the card is ejected.
#[test]
fn a_held_card_s_own_presence_shows_in_its_slot() {
    let reg = Registry::new();
    let mut slot = reg.add_slot("A").unwrap();
    let own = Presence::new(false);
    let card = CountingCard {
        power_offs: Arc::default(),
        presence: own.clone(),
    };
    reg.add_card("p", Arc::new(Mutex::new(card))).unwrap();
    reg.insert("p", "A").unwrap();
    assert!(
        !slot.presence().is_present(),
        "held, but its client is away"
    );
    own.set(true);
    assert!(slot.presence().is_present());
    own.set(false);
    assert!(!slot.presence().is_present());
    own.set(true);
    assert_eq!(reg.eject("A").unwrap().as_deref(), Some("p"));
    assert!(!slot.presence().is_present());
    own.set(false);
    own.set(true);
    assert!(
        !slot.presence().is_present(),
        "an ejected card no longer drives the slot"
    );
    assert_eq!(slot.transmit(&hex("00 A4 04 00")), MUTE_RESPONSE);
}

/// A card that reports its PIN blocked from inside `transmit`, as the emulated cards do.
struct BlockingCard {
    registry: Registry,
    presence: Presence,
}

impl Card for BlockingCard {
    fn atr(&self) -> Vec<u8> {
        hex("3B 00")
    }
    fn power_on(&mut self) -> Vec<u8> {
        self.atr()
    }
    fn power_off(&mut self) {}
    fn transmit(&mut self, _apdu: &[u8]) -> Vec<u8> {
        self.registry.pin_blocked("p");
        hex("63 C0")
    }
    fn presence(&self) -> Presence {
        self.presence.clone()
    }
}

#[test]
fn a_card_reports_its_pin_blocked_from_inside_transmit() {
    let reg = Registry::new();
    let events = reg.subscribe();
    let mut a = reg.add_slot("A").unwrap();
    let card = BlockingCard {
        registry: reg.clone(),
        presence: Presence::new(true),
    };
    reg.add_card("p", Arc::new(Mutex::new(card))).unwrap();
    reg.insert("p", "A").unwrap();
    drain(&events);
    // The card's lock and the slot's are held while it reports: no registry lock is taken.
    assert_eq!(a.transmit(&hex("00 20 00 80 08")), hex("63 C0"));
    let got = drain(&events);
    assert!(
        got.contains(&Event::PinBlocked { card: "p".into() }),
        "{got:?}"
    );
}

/// The trace tap (issue #18): a subscriber gets each logical exchange with its slot and card,
/// a VERIFY's PIN blanked before it leaves the slot; events never carry the bytes.
#[test]
fn the_trace_gets_folded_redacted_exchanges_and_events_no_bytes() {
    let reg = Registry::new();
    let mut a = reg.add_slot("A").unwrap();
    reg.add_card("cac", fixed("3B 00", "90 00")).unwrap();
    reg.insert("cac", "A").unwrap();
    // Nobody listens: nothing is folded (the exchange before the subscription is not seen).
    a.transmit(&hex("00 20 00 00 08 31 32 33 34 35 36 37 38"));
    let trace = reg.subscribe_trace(16);
    let events = reg.subscribe();
    a.transmit(&hex("00 20 00 00 08 31 32 33 34 35 36 37 38"));
    let t = trace.recv_timeout(Duration::from_secs(1)).unwrap();
    assert_eq!((t.slot.as_str(), t.card.as_deref()), ("A", Some("cac")));
    assert_eq!(t.exchange.command_data, vec![0; 8]);
    assert!(t.exchange.command_redacted);
    assert!(t.exchange.line.starts_with("VERIFY"), "{}", t.exchange.line);
    assert!(
        trace.try_recv().is_err(),
        "only the exchange after subscribing"
    );
    for e in drain(&events) {
        assert!(!format!("{e:?}").contains("49, 50, 51"), "{e:?}");
    }
    // The subscriber gone, the slot stops folding (and emitting).
    drop(trace);
    a.transmit(&hex(SELECT_MF));
    a.transmit(&hex(SELECT_MF));
}
