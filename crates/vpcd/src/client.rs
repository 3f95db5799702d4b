//! The vpcd client: connects the card to vpcd, answers it, reconnects when pcscd restarts,
//! and follows the card's presence (removed = connection closed, which vpcd reports as card
//! removal; inserted = connect again).
//!
//! It is a plain thread with blocking I/O, not a tokio task: vpcd keeps exactly one request in
//! flight per connection (transports.md §3.2), so there is nothing to multiplex, and on this
//! project's VM a blocking read answered 50–150 µs sooner per APDU than a tokio wake-up, which
//! is most of a `pkcs15-tool -D`'s difference against libcacard's C loop (scripts/bench.sh).
//! Reconnecting is `link::retry`'s loop and back-off, as every client's.

use crate::codec::{encode, Decoder, Request};
use card_api::{Card, Presence};
use link::retry::{self, Backoff, NotConnected, Stop};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A card shared between a transport and whoever else holds it.
pub type SharedCard = Arc<Mutex<dyn Card>>;

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// vpcd's address (pcscd's host; 127.0.0.1:35963 for "Virtual PCD 00 00").
    pub addr: SocketAddr,
    /// First reconnect delay; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest reconnect delay.
    pub max_backoff: Duration,
}

impl ClientOptions {
    /// Defaults for an address: 50 ms doubling to 2 s.
    pub fn new(addr: SocketAddr) -> Self {
        ClientOptions {
            addr,
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// How long a removed card stays away from vpcd at least: longer than pcscd's 400 ms poll of
/// vpcd readers, so that pcscd sees every removal.
pub const REMOVAL_GAP: Duration = Duration::from_millis(600);

fn lock(card: &SharedCard) -> std::sync::MutexGuard<'_, dyn Card + 'static> {
    // The card's state stays consistent across a panic in another holder (each APDU is
    // processed to completion or not at all), so a poisoned lock is still usable.
    card.lock().unwrap_or_else(|e| e.into_inner())
}

/// State shared by the client's threads and its handle.
struct Shared {
    stop: Stop,
    /// The live connection, so that removal or stop can shut it down from another thread,
    /// with the presence generation of the card it was made for.
    current: Mutex<Option<(TcpStream, u64)>>,
}

impl Shared {
    /// Closes the connection if it was made for a card older than generation `gen` (`None`:
    /// whatever it is).
    fn cut(&self, gen: Option<u64>) {
        if let Some((s, made_for)) = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            if gen.is_none_or(|g| *made_for < g) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

/// A running vpcd client; [`Client::stop`] (or dropping it) disconnects and ends its threads.
pub struct Client {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Client {
    /// Disconnects from vpcd (pcscd sees the card removed) and waits for the threads.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.shared.stop.stop();
        self.shared.cut(None);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Starts serving `card` to vpcd on threads of its own. Connection failures are logged and
/// retried with backoff until [`Client::stop`].
pub fn spawn(card: SharedCard, opts: ClientOptions) -> std::io::Result<Client> {
    let presence = lock(&card).presence();
    let shared = Arc::new(Shared {
        stop: Stop::new(),
        current: Mutex::new(None),
    });
    let watcher = {
        let (shared, presence, card) = (shared.clone(), presence.clone(), card.clone());
        // The generation is read here, not on the new thread: a thread that starts late (a
        // loaded machine) would otherwise take a removal that already happened as the state
        // to wait from, and never close the connection.
        let (_, seen) = presence.snapshot();
        std::thread::Builder::new()
            .name("vpcd-presence".into())
            .spawn(move || watch_removal(&shared, &presence, &card, seen))?
    };
    let main = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("vpcd".into())
            .spawn(move || run(&card, &opts, &shared, &presence))?
    };
    Ok(Client {
        shared,
        threads: vec![main, watcher],
    })
}

/// Closing the socket is how a vpcd card says "removed" (transports.md §3.2). The card lock is
/// taken first: a command in flight (which holds it until its answer is written) is answered
/// before the connection closes.
fn watch_removal(shared: &Shared, presence: &Presence, card: &SharedCard, mut seen: u64) {
    while !shared.stop.is_stopped() {
        let (_, gen) = presence.wait_change(seen, Duration::from_millis(200));
        // Any change is a removal for vpcd, even when a card is present again by now (a card
        // swapped or moved back at once): the connection stands for the card that was there.
        if gen != seen {
            let _in_flight = lock(card);
            shared.cut(Some(gen));
        }
        seen = gen;
    }
}

/// Blocks until the card is present; `false` when stopped first. (The stop is seen within
/// the 200 ms of one wait: a `Presence` and a `Stop` cannot be waited on together.)
fn wait_present(presence: &Presence, stop: &Stop) -> bool {
    loop {
        if stop.is_stopped() {
            return false;
        }
        let (present, gen) = presence.snapshot();
        if present {
            return true;
        }
        presence.wait_change(gen, Duration::from_millis(200));
    }
}

fn run(card: &SharedCard, opts: &ClientOptions, shared: &Shared, presence: &Presence) {
    let mut backoff = Backoff::new(opts.min_backoff, opts.max_backoff);
    loop {
        // A connection means "card inserted" to vpcd: only with the card present.
        let attempt = || {
            if !wait_present(presence, &shared.stop) {
                return Err(std::io::Error::other("stopped"));
            }
            // The card this connection stands for: a change after this is a removal.
            let (_, gen) = presence.snapshot();
            TcpStream::connect_timeout(&opts.addr, Duration::from_secs(2)).map(|s| (s, gen))
        };
        let failed = |e: &std::io::Error, fresh: bool| {
            if fresh {
                tracing::warn!(
                    addr = %opts.addr,
                    "cannot reach vpcd: {e}; is pcscd running with vsmartcard-vpcd? retrying"
                );
            }
            ControlFlow::Continue(())
        };
        let (stream, connected_gen) =
            match retry::connect(&mut backoff, &shared.stop, attempt, failed) {
                Ok(s) => s,
                Err(NotConnected::Stopped | NotConnected::GaveUp(_)) => return,
            };
        tracing::info!(addr = %opts.addr, "connected to vpcd");
        if let Ok(clone) = stream.try_clone() {
            *shared.current.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((clone, connected_gen));
        }
        // A removal may have happened between the presence check and storing the clone.
        if presence.snapshot().1 != connected_gen {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let (why, heard) = session(stream, card);
        // The backoff starts over only once vpcd has spoken: a relay or proxy that accepts
        // and closes at once would otherwise be redialled every `min_backoff`, a warning each.
        if heard {
            backoff.reset();
        }
        *shared.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if shared.stop.is_stopped() {
            return;
        }
        if presence.snapshot().1 != connected_gen {
            tracing::info!(addr = %opts.addr, "card removed; disconnected from vpcd until it is inserted");
            // vpcd has no insertion interrupt: pcscd polls its readers every 400 ms
            // (vpcd's IFDHICCPresence). A card swapped faster than that (ejected and another
            // inserted, or moved back) would look to pcscd like no change at all, and a host
            // would go on talking to the new card as if it were the old one.
            if !shared.stop.sleep(REMOVAL_GAP) {
                return;
            }
            continue;
        }
        tracing::warn!(addr = %opts.addr, "vpcd connection lost: {why}");
        if !backoff.wait(&shared.stop) {
            return;
        }
    }
}

/// Why a vpcd connection ended.
#[derive(Debug, thiserror::Error)]
enum Ended {
    /// vpcd closed it (pcscd stopped, or our side shut it on removal).
    #[error("closed")]
    Closed,
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// vpcd sent something that is not a vpcd request.
    #[error("protocol error: {0}")]
    Protocol(crate::codec::CodecError),
}

/// Serves one connection until it ends: why it ended, and whether vpcd sent any whole
/// request.
fn session(mut stream: TcpStream, card: &SharedCard) -> (Ended, bool) {
    let mut heard = false;
    let why = serve(&mut stream, card, &mut heard);
    (why, heard)
}

fn serve(stream: &mut TcpStream, card: &SharedCard, heard: &mut bool) -> Ended {
    // One write per answer plus TCP_NODELAY, and quick ACKs: vpcd writes length and body
    // separately, so a delayed ACK would cost ~40 ms per APDU (lab/README.md).
    let _ = stream.set_nodelay(true);
    let quickack = |s: &TcpStream| {
        let _ = socket2::SockRef::from(s).set_tcp_quickack(true);
    };
    quickack(stream);
    let mut dec = Decoder::new();
    let mut buf = vec![0u8; 65536 + 2];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ended::Closed,
            Ok(n) => n,
            Err(e) => return Ended::Io(e),
        };
        quickack(stream);
        dec.feed(&buf[..n]);
        loop {
            let req = match dec.next_request() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => return Ended::Protocol(e),
            };
            *heard = true;
            // The card stays locked until its answer is written (see watch_removal).
            let mut c = lock(card);
            if let Some(answer) = answer(&mut *c, req) {
                let framed = encode(&answer).unwrap_or_else(|e| {
                    tracing::warn!("answer not sendable ({e}); sending 6F00");
                    vec![0x00, 0x02, 0x6F, 0x00]
                });
                if let Err(e) = stream.write_all(&framed) {
                    return Ended::Io(e);
                }
            }
        }
    }
}

/// The card's answer to one request, if the request has one.
fn answer(c: &mut dyn Card, req: Request) -> Option<Vec<u8>> {
    match req {
        Request::PowerOff => {
            c.power_off();
            None
        }
        Request::PowerOn => {
            c.power_on();
            None
        }
        Request::Reset => {
            c.reset();
            None
        }
        // Answered from the cache: treating GET ATR as a reset breaks OpenSC
        // (libcacard.md §4.5).
        Request::GetAtr => Some(c.atr()),
        Request::UnknownControl(b) => {
            tracing::warn!("unknown vpcd control byte {b:02X} ignored");
            None
        }
        Request::Apdu(apdu) => Some(c.transmit(&apdu)),
    }
}
