//! Saying "ready" only when it is true: for a card served through vpcd, when the host's
//! pcscd shows the card in a reader (issue #13: with Debian's socket-activated pcscd, the first
//! `opensc-tool -n` after vccid started used to find no card).

use std::io::Write;
use std::time::Duration;

/// How long pcscd may take to show the card: it polls vpcd's readers every 400 ms, and a
/// socket-activated pcscd first has to start.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Wakes a socket-activated pcscd and keeps it running; `None` (with a warning) when pcscd
/// cannot be reached through libpcsclite, in which case vccid still serves vpcd and pcscd
/// finds the card whenever it starts.
pub fn wake_pcscd() -> Option<hostcard::pcscd::Keeper> {
    match hostcard::pcscd::Keeper::start() {
        Ok(k) => Some(k),
        Err(e) => {
            tracing::warn!("cannot reach pcscd through libpcsclite ({e}); serving vpcd anyway");
            None
        }
    }
}

/// Waits until pcscd shows a card with this ATR, then prints the ready line on stdout.
pub fn wait_for_pcscd(atr: &[u8]) {
    match hostcard::pcscd::wait_for_card(atr, READY_TIMEOUT) {
        Ok(reader) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "vccid: ready: the card is in pcscd's reader \"{reader}\""
            );
            let _ = out.flush();
            tracing::info!(%reader, "ready: pcscd shows the card");
        }
        Err(e) => tracing::warn!(
            "pcscd does not show the card after {} s ({e}); is vsmartcard-vpcd installed and is \
             this pcscd the one using it?",
            READY_TIMEOUT.as_secs()
        ),
    }
}
