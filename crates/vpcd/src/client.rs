//! The vpcd client: connects the card to vpcd, answers it, reconnects when pcscd restarts,
//! and follows the card's presence (removed = connection closed, which vpcd reports as card
//! removal; inserted = connect again).

use crate::codec::{encode, Decoder, Request};
use card::Card;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

fn lock(card: &SharedCard) -> std::sync::MutexGuard<'_, dyn Card + 'static> {
    // The card's state stays consistent across a panic in another holder (each APDU is
    // processed to completion or not at all), so a poisoned lock is still usable.
    card.lock().unwrap_or_else(|e| e.into_inner())
}

/// How a connection ended.
enum End {
    /// vpcd closed or failed: reconnect.
    Lost(String),
    /// The card was removed: stay away until it is back.
    Removed,
}

/// Serves `card` to vpcd until the task is dropped. Never returns on its own: connection
/// failures are logged and retried with backoff.
pub async fn serve(card: SharedCard, opts: ClientOptions) {
    let presence = lock(&card).presence();
    // Presence waits are blocking (the card crate has no async runtime); a thread forwards
    // them into a watch channel.
    let (tx, mut rx) = tokio::sync::watch::channel(presence.snapshot());
    let watcher = presence.clone();
    std::thread::Builder::new()
        .name("vpcd-presence".into())
        .spawn(move || loop {
            let seen = *tx.borrow();
            let now = watcher.wait_change(seen.1, Duration::from_secs(1));
            if now != seen && tx.send(now).is_err() {
                break;
            }
            if tx.is_closed() {
                break;
            }
        })
        .ok();
    let mut backoff = opts.min_backoff;
    let mut announced = false;
    loop {
        if !rx.borrow_and_update().0 {
            tracing::info!("card removed; disconnected from vpcd until it is inserted");
            while !rx.borrow_and_update().0 {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        }
        match TcpStream::connect(opts.addr).await {
            Ok(stream) => {
                backoff = opts.min_backoff;
                tracing::info!(addr = %opts.addr, "connected to vpcd");
                announced = false;
                match session(stream, &card, &mut rx).await {
                    End::Lost(why) => {
                        tracing::warn!(addr = %opts.addr, "vpcd connection lost: {why}")
                    }
                    End::Removed => continue,
                }
            }
            Err(e) => {
                if !announced {
                    tracing::warn!(
                        addr = %opts.addr,
                        "cannot reach vpcd: {e}; is pcscd running with vsmartcard-vpcd? retrying"
                    );
                    announced = true;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(opts.max_backoff);
    }
}

async fn session(
    mut stream: TcpStream,
    card: &SharedCard,
    presence: &mut tokio::sync::watch::Receiver<(bool, u64)>,
) -> End {
    // One write per answer plus TCP_NODELAY, and quick ACKs: vpcd writes length and body
    // separately, so a delayed ACK would cost ~40 ms per APDU (lab/README.md).
    let _ = stream.set_nodelay(true);
    let quickack = |s: &TcpStream| {
        let _ = socket2::SockRef::from(s).set_tcp_quickack(true);
    };
    quickack(&stream);
    let mut dec = Decoder::new();
    let mut buf = vec![0u8; 65536 + 2];
    loop {
        let n = tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) => return End::Lost("closed by vpcd".into()),
                Ok(n) => n,
                Err(e) => return End::Lost(e.to_string()),
            },
            changed = presence.changed() => {
                if changed.is_ok() && !presence.borrow_and_update().0 {
                    // Closing the socket is how a vpcd card says "removed" (transports.md §3.2).
                    return End::Removed;
                }
                continue;
            }
        };
        quickack(&stream);
        dec.feed(&buf[..n]);
        loop {
            let req = match dec.next_request() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => return End::Lost(format!("protocol error: {e}")),
            };
            let answer = {
                let mut c = lock(card);
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
            };
            if let Some(answer) = answer {
                let framed = match encode(&answer) {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!("answer not sendable ({e}); sending 6F00");
                        encode(&[0x6F, 0x00]).unwrap_or_default()
                    }
                };
                if let Err(e) = stream.write_all(&framed).await {
                    return End::Lost(e.to_string());
                }
            }
        }
    }
}
