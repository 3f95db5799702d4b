//! A real card through PC/SC as a [`card::Card`] (DESIGN.md: the host card). The reader is
//! chosen by name (the first whose name contains the given text) or is the first reader; a
//! thread follows it with SCardGetStatusChange, so insertion and removal reach the card's
//! [`Presence`], and the connection is made on demand.
#![warn(missing_docs)]

mod pcsc;

use card::{Card, Presence};
use pcsc::{Context, Handle, Lib, PcscError};
use std::ffi::CString;
use std::sync::{Arc, Mutex};

/// Why a host card cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum HostCardError {
    /// libpcsclite could not be loaded.
    #[error("{0}")]
    Library(String),
    /// A PC/SC call failed.
    #[error("{0}")]
    Pcsc(#[from] PcscError),
    /// No reader matches.
    #[error("no PC/SC reader {wanted}; readers: {readers}")]
    NoReader {
        /// what was asked for
        wanted: String,
        /// what there is
        readers: String,
    },
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
    /// Opens the reader whose name contains `reader` (or the first reader) and starts
    /// following it.
    pub fn open(reader: Option<&str>) -> Result<HostCard, HostCardError> {
        let lib = Lib::load().map_err(HostCardError::Library)?;
        let ctx = Context::new(&lib)?;
        let readers = ctx.readers().unwrap_or_default();
        let chosen = readers
            .iter()
            .find(|r| reader.is_none_or(|w| r.contains(w)))
            .cloned()
            .ok_or_else(|| HostCardError::NoReader {
                wanted: reader.map_or("at all".into(), |r| format!("matching {r:?}")),
                readers: if readers.is_empty() {
                    "none".into()
                } else {
                    readers.join(", ")
                },
            })?;
        tracing::info!(reader = %chosen, "using PC/SC reader");
        let presence = Presence::new(false);
        let atr = Arc::new(Mutex::new(Vec::new()));
        let watcher = Context::new(&lib)?;
        let (p, a, name) = (presence.clone(), atr.clone(), chosen.clone());
        std::thread::Builder::new()
            .name("pcsc-watch".into())
            .spawn(move || watch(watcher, &name, &p, &a))
            .map_err(|e| HostCardError::Library(e.to_string()))?;
        // Wait briefly for the first state, so a card that is in shows as present at once.
        let (_, gen) = presence.snapshot();
        if gen == 0 {
            presence.wait_change(0, std::time::Duration::from_millis(500));
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
