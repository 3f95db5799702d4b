//! A real card through PC/SC as a [`card_api::Card`] (DESIGN.md: the host card). The reader is
//! chosen by name (the first whose name contains the given text, case-insensitively) or is the
//! first reader, never one the caller excludes (its own vpcd reader: relaying it would be a
//! loop); a thread follows it with SCardGetStatusChange, so insertion and removal reach the
//! card's [`Presence`], and the connection is made on demand.
#![warn(missing_docs)]

mod pcsc;
pub mod pcscd;

use card_api::{Card, Presence};
pub use pcsc::LibraryError;
use pcsc::{Context, Handle, Lib, PcscError};
use std::ffi::CString;
use std::sync::{Arc, Mutex};

/// Why a host card cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum HostCardError {
    /// libpcsclite could not be loaded.
    #[error(transparent)]
    Library(#[from] LibraryError),
    /// A PC/SC call failed.
    // Transparent, not "{0}" with a source: `{:#}` would print the code twice.
    #[error(transparent)]
    Pcsc(#[from] PcscError),
    /// The thread that follows pcscd could not be started.
    #[error("{0}")]
    Thread(std::io::Error),
    /// No reader is a candidate: none matches, or every match is excluded.
    #[error("no PC/SC reader {wanted}; {readers}")]
    NoReader {
        /// what was asked for
        wanted: String,
        /// what pcscd lists, each excluded one with the reason
        readers: String,
    },
}

/// A reader that is never a candidate, and why (said when nothing else is left).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Excluded {
    /// The reader's full PC/SC name, as pcscd lists it.
    pub name: String,
    /// Why it is excluded, for the error message.
    pub why: String,
}

/// Chooses the reader to use among `readers` (pcscd's list, in its order): the first whose
/// name contains `wanted` (case-insensitively), or the first when nothing is wanted, skipping
/// every reader named in `exclude`. The error lists every reader pcscd has, the excluded ones
/// with the reason.
pub fn choose_reader(
    readers: &[String],
    wanted: Option<&str>,
    exclude: &[Excluded],
) -> Result<String, HostCardError> {
    let excluded = |r: &str| exclude.iter().find(|e| e.name == r);
    let wanted_lc = wanted.map(str::to_lowercase);
    let matches = |r: &str| {
        wanted_lc
            .as_deref()
            .is_none_or(|w| r.to_lowercase().contains(w))
    };
    if let Some(r) = readers.iter().find(|r| matches(r) && excluded(r).is_none()) {
        return Ok(r.clone());
    }
    let wanted = match wanted {
        Some(w) => format!("matching {w:?}"),
        None => "to use".into(),
    };
    let readers = if readers.is_empty() {
        "pcscd lists no readers (is the reader plugged in, and its driver installed?)".into()
    } else {
        let list: Vec<String> = readers
            .iter()
            .map(|r| match excluded(r) {
                Some(e) => format!("{r:?} (excluded: {})", e.why),
                None => format!("{r:?}"),
            })
            .collect();
        format!("pcscd has {}", list.join(", "))
    };
    Err(HostCardError::NoReader { wanted, readers })
}

/// The answer of a command whose card went away mid-way (ISO 7816-4: no precise diagnosis).
const FAILED: [u8; 2] = [0x6F, 0x00];

/// A card in a PC/SC reader.
pub struct HostCard {
    ctx: Context,
    reader: String,
    handle: Option<Handle>,
    atr: Arc<Mutex<Vec<u8>>>,
    presence: Presence,
}

impl HostCard {
    /// Opens the reader [`choose_reader`] picks (by `reader`, never one in `exclude`) and
    /// starts following it. The choice is by name only: a reader without a card is still
    /// chosen (the card may be inserted later), with a warning that says where cards are.
    pub fn open(reader: Option<&str>, exclude: &[Excluded]) -> Result<HostCard, HostCardError> {
        let lib = Lib::load().map_err(HostCardError::Library)?;
        let ctx = Context::new(&lib)?;
        // SCARD_E_NO_READERS_AVAILABLE is an empty list, not a failure.
        let readers = ctx.readers().unwrap_or_default();
        let chosen = choose_reader(&readers, reader, exclude)?;
        tracing::info!(reader = %chosen, "using PC/SC reader");
        let presence = Presence::new(false);
        let atr = Arc::new(Mutex::new(Vec::new()));
        let watcher = Context::new(&lib)?;
        let (p, a, name) = (presence.clone(), atr.clone(), chosen.clone());
        std::thread::Builder::new()
            .name("pcsc-watch".into())
            .spawn(move || watch(watcher, &name, &p, &a))
            .map_err(HostCardError::Thread)?;
        // Wait briefly for the first state, so a card that is in shows as present at once.
        let (_, gen) = presence.snapshot();
        if gen == 0 {
            presence.wait_change(0, std::time::Duration::from_millis(500));
        }
        if !presence.is_present() {
            warn_no_card(&ctx, &chosen, &readers, exclude);
        }
        Ok(HostCard {
            ctx,
            reader: chosen,
            handle: None,
            atr,
            presence,
        })
    }

    /// The reader's name.
    pub fn reader(&self) -> &str {
        &self.reader
    }

    fn handle(&mut self) -> Result<&Handle, PcscError> {
        if self.handle.is_none() {
            let h = self.ctx.connect(&self.reader)?;
            if let Ok(atr) = h.atr() {
                *self.atr.lock().unwrap_or_else(|e| e.into_inner()) = atr;
            }
            self.handle = Some(h);
        }
        Ok(self.handle.as_ref().expect("set above"))
    }
}

/// Says that `chosen` holds no card, and where cards are: in another candidate (which the user
/// may have meant), or nowhere.
fn warn_no_card(ctx: &Context, chosen: &str, readers: &[String], exclude: &[Excluded]) {
    // SCARD_STATE_UNAWARE (0) with a zero timeout: the current state at once (PC/SC part 5,
    // SCardGetStatusChange).
    let with_card: Vec<&String> = readers
        .iter()
        .filter(|r| r.as_str() != chosen && !exclude.iter().any(|e| &e.name == *r))
        .filter(|r| {
            CString::new(r.as_str())
                .ok()
                .and_then(|n| ctx.wait_change(&n, 0, 0).ok())
                .is_some_and(|s| s & pcsc::STATE_PRESENT != 0)
        })
        .collect();
    if with_card.is_empty() {
        tracing::warn!(reader = %chosen, "no card in any PC/SC reader; waiting for one in {chosen:?}");
    } else {
        tracing::warn!(
            reader = %chosen,
            "no card in {chosen:?} (waiting for one); a card is in {:?}: choose that reader by name to use it",
            with_card
        );
    }
}

/// Follows the reader's state and mirrors it into `presence` and `atr`.
fn watch(ctx: Context, reader: &str, presence: &Presence, atr: &Mutex<Vec<u8>>) {
    let Ok(name) = CString::new(reader) else {
        return;
    };
    let mut current = 0;
    loop {
        match ctx.wait_change(&name, current, 1000) {
            Ok(state) => {
                let present = state & pcsc::STATE_PRESENT != 0;
                if present && !presence.is_present() {
                    if let Ok(h) = ctx.connect(reader) {
                        if let Ok(a) = h.atr() {
                            *atr.lock().unwrap_or_else(|e| e.into_inner()) = a;
                        }
                    }
                }
                if presence.set(present) {
                    tracing::info!(%reader, present, "card {}", if present { "inserted" } else { "removed" });
                }
                current = state & !pcsc::STATE_CHANGED;
            }
            Err(PcscError(pcsc::E_TIMEOUT)) => {}
            Err(e) => {
                tracing::warn!(%reader, "{e}; retrying");
                presence.set(false);
                std::thread::sleep(std::time::Duration::from_secs(1));
                current = 0;
            }
        }
    }
}

impl Card for HostCard {
    fn atr(&self) -> Vec<u8> {
        self.atr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn power_on(&mut self) -> Vec<u8> {
        if let Some(h) = self.handle.as_mut() {
            if h.reconnect(pcsc::UNPOWER_CARD).is_err() {
                self.handle = None;
            }
        }
        let _ = self.handle();
        self.atr()
    }
    fn power_off(&mut self) {}
    fn reset(&mut self) -> Vec<u8> {
        if let Some(h) = self.handle.as_mut() {
            if h.reconnect(pcsc::RESET_CARD).is_err() {
                self.handle = None;
            }
        }
        let _ = self.handle();
        self.atr()
    }
    fn transmit(&mut self, apdu: &[u8]) -> Vec<u8> {
        for _ in 0..2 {
            let result = self.handle().and_then(|h| h.transmit(apdu));
            match result {
                Ok(r) if r.len() >= 2 => return r,
                Ok(_) => break,
                // Someone else reset the card: reconnect once and retry.
                Err(PcscError(pcsc::W_RESET_CARD)) => {
                    if let Some(h) = self.handle.as_mut() {
                        let _ = h.reconnect(pcsc::LEAVE_CARD);
                    }
                }
                Err(e) => {
                    tracing::warn!(reader = %self.reader, "transmit failed: {e}");
                    self.handle = None;
                    break;
                }
            }
        }
        FAILED.to_vec()
    }
    fn presence(&self) -> Presence {
        self.presence.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn own(name: &str) -> Excluded {
        Excluded {
            name: name.into(),
            why: "vccid's own vpcd reader (--vpcd 127.0.0.1:35963)".into(),
        }
    }

    const VPCD: [&str; 3] = [
        "Virtual PCD 00 00",
        "Virtual PCD 00 01",
        "Gemalto PC Twin Reader 01 00",
    ];

    #[test]
    fn library_and_pcsc_errors_print_once() {
        use std::error::Error;
        // SAFETY: no library of this name exists, so nothing is loaded or run.
        let missing = unsafe { libloading::Library::new("libvccid-test-absent.so.1") };
        let e = HostCardError::from(LibraryError::Open(missing.err().unwrap()));
        assert!(
            e.to_string().starts_with(
                "cannot load libpcsclite.so.1 (install libpcsclite1 and pcscd): \
                 libvccid-test-absent.so.1"
            ),
            "{e}"
        );
        // `{:#}` (vccid's error output) walks the sources: none, so the text shows once.
        assert!(e.source().is_none());
        let e = HostCardError::from(PcscError(0x8010_001D));
        assert_eq!(
            e.to_string(),
            "PC/SC error 0x8010001D (pcscd is not running)"
        );
        assert!(e.source().is_none());
    }

    #[test]
    fn own_reader_is_never_chosen_even_when_listed_first() {
        let r = names(&VPCD);
        assert_eq!(choose_reader(&r, None, &[]).unwrap(), VPCD[0]);
        assert_eq!(choose_reader(&r, None, &[own(VPCD[0])]).unwrap(), VPCD[1]);
        assert_eq!(
            choose_reader(&r, Some("virtual"), &[own(VPCD[0])]).unwrap(),
            VPCD[1]
        );
    }

    #[test]
    fn by_name_case_insensitively_first_match_wins() {
        let r = names(&VPCD);
        assert_eq!(choose_reader(&r, Some("gemalto"), &[]).unwrap(), VPCD[2]);
        assert_eq!(choose_reader(&r, Some("00 01"), &[]).unwrap(), VPCD[1]);
        assert_eq!(choose_reader(&r, Some("PCD"), &[]).unwrap(), VPCD[0]);
    }

    #[test]
    fn none_found_lists_what_pcscd_has_and_why_excluded() {
        let r = names(&VPCD);
        let e = choose_reader(&r, Some("nomatch"), &[own(VPCD[0])])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "no PC/SC reader matching \"nomatch\"; pcscd has \"Virtual PCD 00 00\" (excluded: \
             vccid's own vpcd reader (--vpcd 127.0.0.1:35963)), \"Virtual PCD 00 01\", \
             \"Gemalto PC Twin Reader 01 00\""
        );
        // The only match is our own reader.
        let e = choose_reader(&r, Some("00 00"), &[own(VPCD[0])])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("matching \"00 00\"") && e.contains("excluded"),
            "{e}"
        );
        // Nothing but our own reader.
        let e = choose_reader(&names(&VPCD[..1]), None, &[own(VPCD[0])])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("no PC/SC reader to use; pcscd has \"Virtual PCD 00 00\" (excluded"),
            "{e}"
        );
        let e = choose_reader(&[], None, &[]).unwrap_err().to_string();
        assert!(e.contains("pcscd lists no readers"), "{e}");
    }
}
