//! Commands on standard input, one per line. With one card they are libcacard's vscclient's:
//! `remove` takes the card out of the reader, `insert` puts it back, `status` prints which.
//! With several cards (`--card` given more than once) they name cards and slots, and act on
//! the [`slot::Registry`] the transports serve: `eject SLOT`, `insert CARD SLOT`,
//! `move CARD SLOT` (the old slot's host sees the card go, the new slot's host sees it
//! arrive), `status` (each slot and its card). End of input stops reading (and nothing else:
//! vccid keeps serving; vscclient spins there).

use slot::Registry;
use std::io::{BufRead, Write};

const HELP: &str = "commands: insert [CARD SLOT], remove|eject [SLOT], move CARD SLOT, status";

/// The one slot when there is only one, for the commands that may leave it out.
fn only_slot(reg: &Registry) -> Result<String, String> {
    match reg.slots().as_slice() {
        [one] => Ok(one.clone()),
        many => Err(format!("name the slot: one of {}", many.join(", "))),
    }
}

/// What one line asks for; `None` for an empty line.
fn answer(line: &str, reg: &Registry) -> Option<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let single = reg.slots().len() == 1;
    let reply = match words.as_slice() {
        [] => return None,
        ["remove" | "eject", rest @ ..] if rest.len() <= 1 => {
            // A slot, or a card's id (the slot it is in).
            let slot = match rest.first() {
                Some(s) if reg.cards().iter().any(|c| c == s) => reg
                    .slot_of(s)
                    .map_err(|e| e.to_string())
                    .and_then(|slot| slot.ok_or_else(|| format!("card {s} is in no slot"))),
                Some(s) => Ok(s.to_string()),
                None => only_slot(reg),
            };
            slot.and_then(|slot| match reg.eject(&slot) {
                Ok(Some(_)) if single => Ok("card removed".into()),
                Ok(Some(card)) => Ok(format!("card {card} ejected from {slot}")),
                Ok(None) if single => Ok("no card to remove".into()),
                Ok(None) => Ok(format!("no card in {slot}")),
                Err(e) => Err(e.to_string()),
            })
        }
        ["insert"] if !single => Err("name the card and the slot: insert CARD SLOT".into()),
        ["insert"] => only_slot(reg).and_then(|slot| {
            if reg.card_in(&slot).ok().flatten().is_some() {
                return Ok("card already inserted".into());
            }
            // The card that is in no slot: with one slot there is one card.
            let free: Vec<String> = reg
                .cards()
                .into_iter()
                .filter(|c| reg.slot_of(c).ok().flatten().is_none())
                .collect();
            match free.as_slice() {
                [card] => reg
                    .insert(card, &slot)
                    .map(|()| "card inserted".to_string())
                    .map_err(|e| e.to_string()),
                _ => Err("name the card: insert CARD SLOT".into()),
            }
        }),
        ["insert", card] => Err(format!("name the slot too: insert {card} SLOT")),
        ["insert", card, slot] => reg
            .insert(card, slot)
            .map(|()| format!("card {card} inserted in {slot}"))
            .map_err(|e| e.to_string()),
        ["move", card, slot] => match reg.move_card(card, slot) {
            Ok(Some(from)) if from == *slot => Ok(format!("card {card} is in {slot} already")),
            Ok(Some(from)) => Ok(format!("card {card} moved from {from} to {slot}")),
            Ok(None) => Ok(format!("card {card} inserted in {slot}")),
            Err(e) => Err(e.to_string()),
        },
        ["status"] if single => Ok(match only_slot(reg).map(|s| reg.card_in(&s)) {
            Ok(Ok(Some(_))) => "card present".into(),
            _ => "no card".into(),
        }),
        ["status"] => Ok(reg
            .slots()
            .iter()
            .map(|s| match reg.card_in(s).ok().flatten() {
                Some(card) => format!("{s}: {card}"),
                None => format!("{s}: empty"),
            })
            .collect::<Vec<_>>()
            .join("\n")),
        _ => Err(format!("unknown command {:?}; {HELP}", line.trim())),
    };
    Some(reply.unwrap_or_else(|e| format!("error: {e}")))
}

/// Reads commands on a thread of its own.
pub fn spawn(registry: Registry) {
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if let Some(reply) = answer(&line, &registry) {
                    // The answer goes to whoever typed the command (stdout, an error to
                    // stderr); the log records the change itself.
                    if reply.starts_with("error: ") || reply.starts_with("unknown command") {
                        eprintln!("{reply}");
                    } else {
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "{reply}");
                        let _ = out.flush();
                    }
                    tracing::debug!("stdin: {reply}");
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use card_api::{Card, FixedCard};
    use std::sync::{Arc, Mutex};

    fn registry(cards: usize) -> (Registry, Vec<slot::SlotCard>) {
        let reg = Registry::new();
        let mut slots = Vec::new();
        for i in 0..cards {
            let card = FixedCard::new(&[0x3B, i as u8], &[0x90, 0x00]);
            reg.add_card(&format!("card{i}"), Arc::new(Mutex::new(card)))
                .unwrap();
            slots.push(reg.add_slot(&format!("slot{i}")).unwrap());
            reg.insert(&format!("card{i}"), &format!("slot{i}"))
                .unwrap();
        }
        (reg, slots)
    }

    #[test]
    fn one_card_takes_vscclients_commands() {
        let (reg, slots) = registry(1);
        let p = slots[0].presence();
        assert_eq!(answer("remove", &reg).as_deref(), Some("card removed"));
        assert!(!p.is_present());
        assert_eq!(
            answer(" remove ", &reg).as_deref(),
            Some("no card to remove")
        );
        assert_eq!(answer("status", &reg).as_deref(), Some("no card"));
        assert_eq!(answer("insert", &reg).as_deref(), Some("card inserted"));
        assert!(p.is_present());
        assert_eq!(
            answer("insert", &reg).as_deref(),
            Some("card already inserted")
        );
        assert_eq!(answer("status", &reg).as_deref(), Some("card present"));
        assert_eq!(answer("", &reg), None);
        assert!(answer("shake", &reg).unwrap().contains("unknown command"));
    }

    #[test]
    fn several_cards_are_named() {
        let (reg, slots) = registry(2);
        assert!(answer("remove", &reg)
            .unwrap()
            .contains("name the slot: one of slot0, slot1"));
        assert_eq!(
            answer("eject slot1", &reg).as_deref(),
            Some("card card1 ejected from slot1")
        );
        assert!(!slots[1].presence().is_present());
        assert_eq!(
            answer("move card0 slot1", &reg).as_deref(),
            Some("card card0 moved from slot0 to slot1")
        );
        assert!(!slots[0].presence().is_present() && slots[1].presence().is_present());
        assert_eq!(slots[1].clone().atr(), vec![0x3B, 0x00]);
        assert_eq!(
            answer("status", &reg).as_deref(),
            Some("slot0: empty\nslot1: card0")
        );
        assert_eq!(
            answer("insert card1 slot1", &reg).as_deref(),
            Some("error: slot \"slot1\" already holds card \"card0\"")
        );
        assert_eq!(
            answer("insert card1 slot0", &reg).as_deref(),
            Some("card card1 inserted in slot0")
        );
        assert!(answer("move card9 slot0", &reg)
            .unwrap()
            .starts_with("error: no card"));
        assert_eq!(
            answer("insert card0", &reg).as_deref(),
            Some("error: name the slot too: insert card0 SLOT")
        );
        assert_eq!(
            answer("eject card0", &reg).as_deref(),
            Some("card card0 ejected from slot1")
        );
    }
}
