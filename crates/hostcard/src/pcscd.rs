//! The host's pcscd as seen by a card we serve through vpcd: wake it, keep it running, and
//! wait until it shows our card.
//!
//! Debian runs pcscd socket-activated with `--auto-exit` (pcscd.socket, pcscd.service): until a
//! PC/SC client connects to `/run/pcscd/pcscd.comm`, no pcscd runs, so nothing listens on
//! vpcd's port, and pcscd exits again 60 s after its last client leaves. A vpcd card must
//! therefore be a PC/SC client too: establishing a context starts pcscd (and with it the vpcd
//! driver's listener, which pcscd opens for the readers of reader.conf before it serves
//! clients), and holding the context keeps it running.

use crate::pcsc::{Context, Dword, Lib, PcscError, STATE_CHANGED, STATE_PRESENT};
use crate::HostCardError;
use std::ffi::{CStr, CString};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// pcsc-lite's pseudo reader whose state changes when a reader comes or goes.
const PNP: &CStr = c"\\\\?PnP?\\Notification";
/// SCARD_INFINITE.
const INFINITE: u32 = 0xFFFF_FFFF;
/// SCARD_E_NO_READERS_AVAILABLE: no reader at all, which is a state, not a failure.
const E_NO_READERS: u32 = 0x8010_002E;

fn lib() -> Result<Arc<Lib>, HostCardError> {
    Lib::load().map_err(HostCardError::Library)
}

/// Holds a PC/SC context on a thread of its own for as long as the process runs, so that a
/// socket-activated pcscd with `--auto-exit` neither stays asleep nor exits while we serve a
/// card through vpcd. When pcscd goes away the context is established again (which starts a
/// socket-activated pcscd again), backing off from 100 ms to 5 s.
pub struct Keeper {
    _thread: std::thread::JoinHandle<()>,
}

impl Keeper {
    /// Tries the first context here, so that a socket-activated pcscd runs (and vpcd
    /// listens) when this returns; a pcscd that is not running yet is retried on the keeper's
    /// thread. Only a missing libpcsclite is an error.
    pub fn start() -> Result<Keeper, HostCardError> {
        let lib = lib()?;
        let first = match Context::new(&lib) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::info!("pcscd is not running ({e}); vccid will serve it when it starts");
                None
            }
        };
        let thread = std::thread::Builder::new()
            .name("pcscd-keeper".into())
            .spawn(move || hold(lib, first))
            .map_err(HostCardError::Thread)?;
        Ok(Keeper { _thread: thread })
    }
}

/// Sleeps in SCardGetStatusChange on the reader list (no polling: it returns only when a
/// reader comes or goes, or when pcscd dies), re-establishing the context after pcscd restarts.
fn hold(lib: Arc<Lib>, first: Option<Context>) {
    let pnp = PNP.to_owned();
    let mut ctx = first;
    let mut backoff = Duration::from_millis(100);
    loop {
        let c = match ctx.take() {
            Some(c) => c,
            None => match Context::new(&lib) {
                Ok(c) => {
                    tracing::debug!("PC/SC context established again");
                    backoff = Duration::from_millis(100);
                    c
                }
                Err(e) => {
                    tracing::debug!("pcscd not reachable ({e}); retrying in {backoff:?}");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        let mut current = 0;
        loop {
            match c.wait_changes(&[(pnp.clone(), current)], INFINITE) {
                Ok(states) => {
                    current = states.first().map_or(0, |(s, _)| *s & !STATE_CHANGED);
                }
                Err(PcscError(crate::pcsc::E_TIMEOUT)) => {}
                Err(e) => {
                    tracing::debug!("PC/SC context lost ({e})");
                    break;
                }
            }
        }
    }
}

/// Waits until pcscd shows a card whose ATR is `atr` in some reader, and returns that reader's
/// name. Event-driven: it sleeps in SCardGetStatusChange on every reader and on the reader list.
pub fn wait_for_card(atr: &[u8], timeout: Duration) -> Result<String, HostCardError> {
    let lib = lib()?;
    let ctx = Context::new(&lib)?;
    let deadline = Instant::now() + timeout;
    let pnp = PNP.to_owned();
    loop {
        let names: Vec<String> = match ctx.readers() {
            Ok(r) => r,
            Err(PcscError(E_NO_READERS)) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        // `names[i]` and the i-th state below describe the same reader: a name C cannot carry
        // (pcsc-lite never gives one) is left out of both.
        let (names, mut watch): (Vec<String>, Vec<(CString, Dword)>) = names
            .into_iter()
            .filter_map(|n| CString::new(n.as_str()).ok().map(|c| (n, (c, 0))))
            .unzip();
        watch.push((pnp.clone(), 0));
        // Current state "unaware": the call returns at once with every reader's state.
        let now = ctx.wait_changes(&watch, 0)?;
        if let Some(i) = (0..names.len()).find(|&i| {
            now.get(i)
                .is_some_and(|(s, a)| s & STATE_PRESENT != 0 && a.as_slice() == atr)
        }) {
            return Ok(names[i].clone());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HostCardError::NoReader {
                wanted: "showing our card".into(),
                readers: if names.is_empty() {
                    "pcscd lists no reader".into()
                } else {
                    format!("pcscd lists: {}", names.join(", "))
                },
            });
        }
        let armed: Vec<(CString, Dword)> = watch
            .iter()
            .zip(&now)
            .map(|((n, _), (s, _))| (n.clone(), *s & !STATE_CHANGED))
            .collect();
        let ms = u32::try_from(left.as_millis()).unwrap_or(INFINITE - 1);
        match ctx.wait_changes(&armed, ms) {
            Ok(_) | Err(PcscError(crate::pcsc::E_TIMEOUT)) => {}
            Err(e) => return Err(e.into()),
        }
    }
}
