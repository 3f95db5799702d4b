//! Saying "ready" only when it is true: for a card served through vpcd, when the host's
//! pcscd shows the card in a reader (issue #13: with Debian's socket-activated pcscd, the first
//! `opensc-tool -n` after vccid started used to find no card).

use std::io::Write;
use std::time::{Duration, Instant};
use vpcd::SharedCard;

/// How long pcscd may take to show the card before vccid says so: it polls vpcd's readers
/// every 400 ms, and a socket-activated pcscd first has to start.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Wakes a socket-activated pcscd and keeps it running (re-establishing its context when
/// pcscd restarts or starts later); `None`, with a warning, only when libpcsclite itself is
/// missing, in which case vccid still serves vpcd.
pub fn wake_pcscd() -> Option<hostcard::pcscd::Keeper> {
    match hostcard::pcscd::Keeper::start() {
        Ok(k) => Some(k),
        Err(e) => {
            tracing::warn!("cannot use libpcsclite ({e}); serving vpcd anyway");
            None
        }
    }
}

/// Prints the ready line on stdout once pcscd shows the card, whenever that is: at once with
/// a running or socket-activated pcscd, after pcscd is started by hand, or after a passthru
/// card's client connects. Warns once if it takes longer than [`READY_TIMEOUT`].
pub fn announce_when_ready(card: SharedCard) {
    let spawned = std::thread::Builder::new()
        .name("ready".into())
        .spawn(move || watch(&card));
    if let Err(e) = spawned {
        tracing::warn!("cannot watch for pcscd: {e}");
    }
}

fn watch(card: &SharedCard) {
    let lock = || card.lock().unwrap_or_else(|e| e.into_inner());
    let presence = lock().presence();
    let started = Instant::now();
    let mut warned = false;
    // 100 ms doubling to 5 s.
    let mut backoff = link::retry::Backoff::default();
    loop {
        let (present, gen) = presence.snapshot();
        if !present {
            // A passthru card arrives with its client; nothing to show pcscd before that.
            presence.wait_change(gen, Duration::from_secs(3600));
            continue;
        }
        let atr = lock().atr();
        // Event-driven inside (SCardGetStatusChange); it returns at once only when pcscd
        // does not answer at all, hence the back-off between tries.
        match hostcard::pcscd::wait_for_card(&atr, Duration::from_secs(5)) {
            Ok(reader) => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(
                    out,
                    "vccid: ready: the card is in pcscd's reader \"{reader}\""
                );
                let _ = out.flush();
                tracing::info!(%reader, "ready: pcscd shows the card");
                return;
            }
            Err(e) => {
                if !warned && started.elapsed() >= READY_TIMEOUT {
                    tracing::warn!(
                        "pcscd does not show the card after {} s ({e}): is pcscd running \
                         (Debian starts it on demand through pcscd.socket; elsewhere start \
                         `pcscd`) and is vsmartcard-vpcd installed? Still waiting",
                        READY_TIMEOUT.as_secs()
                    );
                    warned = true;
                }
                std::thread::sleep(backoff.next_delay());
            }
        }
    }
}
