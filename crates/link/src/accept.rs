//! THE accept loop of every listener: usbredir's (one QEMU at a time), the passthru card's
//! (one VSCard client at a time), USB/IP's (a thread per connection) and the TLS acceptor's
//! (a handshake thread per connection).
//!
//! A failed accept (out of file descriptors, a connection reset before it was taken) is
//! logged once until a different failure or a success, then the loop pauses [`PAUSE`]: the
//! cause usually lasts a moment, and retrying at once would spin on it.

use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The pause after a failed accept.
pub const PAUSE: Duration = Duration::from_millis(100);

/// Who is at the other end of a connection, for logs.
pub trait Peer {
    /// The peer's address, or a description when it has none.
    fn peer(&self) -> String;
    /// Tells a peer turned away at the cap why, where its protocol has a way to (the control
    /// socket's error line); must not block the accept loop. Most protocols have none.
    fn turn_away(&mut self, _why: &str) {}
}

impl Peer for TcpStream {
    fn peer(&self) -> String {
        self.peer_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string())
    }
}

/// Accepts until a connection comes: failures are logged (once each, see the module's
/// documentation) and paused after.
fn next<S>(what: &str, accept: &mut impl FnMut() -> io::Result<S>, last: &mut String) -> S {
    loop {
        match accept() {
            Ok(s) => {
                last.clear();
                return s;
            }
            Err(e) => {
                let text = e.to_string();
                if text != *last {
                    tracing::warn!("{what}: accept failed: {text}");
                    *last = text;
                }
                std::thread::sleep(PAUSE);
            }
        }
    }
}

/// Serves connections one after another on the calling thread, for ever: `serve` gets each
/// and returns when it is done with it (the hosts behind these listeners use one connection
/// at a time: QEMU's usb-redir chardev, a VSCard client).
pub fn in_turn<S>(
    what: &str,
    mut accept: impl FnMut() -> io::Result<S>,
    mut serve: impl FnMut(S),
) -> ! {
    let mut last = String::new();
    loop {
        serve(next(what, &mut accept, &mut last));
    }
}

/// [`in_turn`] until `stop` is set: the loop ends at the next accepted connection or failed
/// accept after it (whoever stops it connects once to wake a blocked accept), without serving
/// that connection.
pub fn in_turn_until<S>(
    what: &str,
    stop: &crate::retry::Stop,
    mut accept: impl FnMut() -> io::Result<S>,
    mut serve: impl FnMut(S),
) {
    let mut last = String::new();
    while !stop.is_stopped() {
        match accept() {
            Ok(s) if stop.is_stopped() => drop(s),
            Ok(s) => {
                last.clear();
                serve(s);
            }
            Err(e) => {
                let text = e.to_string();
                if text != last {
                    tracing::warn!("{what}: accept failed: {text}");
                    last = text;
                }
                stop.sleep(PAUSE);
            }
        }
    }
}

/// Serves each connection on a thread of its own (named `thread`), at most `cap` at once,
/// for ever: past the cap a connection is closed on arrival with a warning, so stalled peers
/// cannot pile up threads.
pub fn on_threads<S, F>(
    what: &str,
    thread: &str,
    cap: usize,
    mut accept: impl FnMut() -> io::Result<S>,
    serve: F,
) -> !
where
    S: Peer + Send + 'static,
    F: Fn(S) + Send + Sync + 'static,
{
    let serve = Arc::new(serve);
    let busy = Arc::new(AtomicUsize::new(0));
    let mut last = String::new();
    loop {
        let mut s = next(what, &mut accept, &mut last);
        if busy.fetch_add(1, Ordering::SeqCst) >= cap {
            busy.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(peer = %s.peer(), "{what}: {cap} connections already under way; closing this one");
            s.turn_away(&format!(
                "{cap} {what} connections already under way; try again when one ends"
            ));
            continue;
        }
        let (serve, done) = (serve.clone(), busy.clone());
        let spawned = std::thread::Builder::new()
            .name(thread.into())
            .spawn(move || {
                serve(s);
                done.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            busy.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("{what}: cannot start a connection thread: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc::channel;

    #[test]
    fn failures_pause_then_connections_are_served_in_turn() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        let (tx, rx) = channel();
        let mut failures = 2;
        std::thread::spawn(move || {
            in_turn(
                "test",
                move || {
                    if failures > 0 {
                        failures -= 1;
                        return Err(io::Error::other("EMFILE, say"));
                    }
                    l.accept().map(|(s, _)| s)
                },
                move |mut s: TcpStream| {
                    let mut b = [0u8; 1];
                    s.read_exact(&mut b).unwrap();
                    tx.send(b[0]).unwrap();
                },
            )
        });
        let t = std::time::Instant::now();
        for i in 0..3u8 {
            TcpStream::connect(a).unwrap().write_all(&[i]).unwrap();
        }
        assert_eq!(rx.iter().take(3).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(t.elapsed() >= PAUSE * 2, "each failure pauses");
    }

    #[test]
    fn past_the_cap_a_connection_is_closed_on_arrival() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        let (tx, rx) = channel::<()>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        std::thread::spawn(move || {
            on_threads(
                "test",
                "test-conn",
                2,
                move || l.accept().map(|(s, _)| s),
                move |mut s: TcpStream| {
                    // Held until the test lets go.
                    let _ = rx.lock().unwrap().recv();
                    let _ = s.write_all(b"k");
                },
            )
        });
        let held: Vec<_> = (0..2).map(|_| TcpStream::connect(a).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut third = TcpStream::connect(a).unwrap();
        third
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(third.read(&mut [0u8; 1]).unwrap(), 0, "closed on arrival");
        // The held ones are served once released, and then a slot is free again.
        drop(tx);
        for mut h in held {
            let mut b = [0u8; 1];
            h.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"k");
        }
    }
}
