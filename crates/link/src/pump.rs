//! THE pump: runs a sans-IO session over a connected byte stream, for every transport that
//! has one (usbredir, USB/IP). Start a new transport here: write its session as a
//! [`Protocol`] (bytes in, bytes out, no I/O) and hand it to [`run`].
//!
//! A reader thread turns the stream into messages on a bounded channel; wake-ups (a card
//! answered, a card inserted or removed) arrive on the same channel through a [`Waker`]; the
//! session thread sleeps on that channel and writes whatever the protocol answers. Nothing
//! polls: an idle session costs nothing, and a pending IN transfer simply waits for the wake
//! that says its data exists. The channel is bounded, so a peer that sends faster than the
//! device works is slowed by TCP instead of buffered here.

use std::io::{self, Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};

/// Messages queued for the session thread: enough to keep the reader a little ahead.
const QUEUE: usize = 16;
/// One read's buffer: a whole usbredir bulk packet or USB/IP URB of a CCID reader fits.
const READ_BUFFER: usize = 64 * 1024;

/// A session without I/O, as the pump drives it.
pub trait Protocol {
    /// A protocol error: the stream cannot be followed any more, so the connection ends.
    type Error: std::fmt::Display;

    /// What to send as soon as the connection is up (usbredir's hello); nothing by default.
    fn start(&mut self) -> Vec<u8> {
        Vec::new()
    }

    /// Bytes from the peer: returns the bytes to send back. It must also include whatever
    /// [`Protocol::on_wake`] would (both sessions poll their device after each message),
    /// because a wake that finds the channel full is dropped: the messages queued before it
    /// stand in for it.
    fn on_bytes(&mut self, bytes: &[u8]) -> Result<Vec<u8>, Self::Error>;

    /// A wake-up: returns what the device can now answer (completed IN transfers).
    fn on_wake(&mut self) -> Vec<u8>;
}

/// A message for the session thread.
enum Msg {
    Bytes(Vec<u8>),
    /// The reader's end: `None` when the peer closed the stream, else the read error.
    Closed(Option<io::Error>),
    Wake,
}

/// Wakes a running session so it completes whatever its device can now answer.
#[derive(Clone)]
pub struct Waker(SyncSender<Msg>);

impl Waker {
    /// Wakes the session; `false` once the session has ended. A full channel counts as
    /// woken: the session handles the messages queued and answers what it can after each.
    pub fn wake(&self) -> bool {
        match self.0.try_send(Msg::Wake) {
            Ok(()) | Err(TrySendError::Full(_)) => true,
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

impl std::fmt::Debug for Waker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Waker")
    }
}

/// Why a session ended.
#[derive(Debug)]
pub enum Ended {
    /// The peer closed the stream.
    PeerClosed,
    /// Reading failed (a reset, a TLS error).
    Read(io::Error),
    /// Writing failed.
    Write(io::Error),
    /// The protocol could not go on; its error's text.
    Protocol(String),
    /// The session could not start (no reader thread, no second handle on the stream).
    Start(io::Error),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::PeerClosed => f.write_str("closed by the peer"),
            Ended::Read(e) => write!(f, "read failed: {e}"),
            Ended::Write(e) => write!(f, "write failed: {e}"),
            Ended::Protocol(e) => write!(f, "{e}; closing"),
            Ended::Start(e) => write!(f, "cannot start the session: {e}"),
        }
    }
}

/// Runs `proto` over a connection until it ends; returns why. `reader` goes to a thread of
/// its own; `writer` (another handle to the same stream) is written on the calling thread.
/// `on_waker` receives the session's [`Waker`] before the session starts (for presence
/// changes and a card's answers); wakes after the end return `false`.
///
/// The reader thread ends when the stream does: the caller shuts the stream down after this
/// returns (a protocol or write error leaves the reader blocked in its read until then).
pub fn run<R, W, P>(reader: R, mut writer: W, proto: &mut P, on_waker: impl FnOnce(Waker)) -> Ended
where
    R: Read + Send + 'static,
    W: Write,
    P: Protocol + ?Sized,
{
    let (tx, rx): (SyncSender<Msg>, Receiver<Msg>) = sync_channel(QUEUE);
    let reader_tx = tx.clone();
    let spawned = std::thread::Builder::new()
        .name("pump-read".into())
        .spawn(move || read_into(reader, &reader_tx));
    if let Err(e) = spawned {
        return Ended::Start(e);
    }
    on_waker(Waker(tx));
    let mut out = proto.start();
    loop {
        if !out.is_empty() {
            if let Err(e) = writer.write_all(&out) {
                return Ended::Write(e);
            }
        }
        out = match rx.recv() {
            Ok(Msg::Bytes(b)) => match proto.on_bytes(&b) {
                Ok(out) => out,
                Err(e) => return Ended::Protocol(e.to_string()),
            },
            Ok(Msg::Wake) => proto.on_wake(),
            Ok(Msg::Closed(None)) => return Ended::PeerClosed,
            Ok(Msg::Closed(Some(e))) => return Ended::Read(e),
            // Every sender gone: the reader always sends Closed before it drops its own, so
            // this is the same end seen late.
            Err(_) => return Ended::PeerClosed,
        };
    }
}

/// The reader thread: the stream's bytes as messages until it ends or the session is gone.
fn read_into(mut reader: impl Read, tx: &SyncSender<Msg>) {
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        let msg = match reader.read(&mut buf) {
            Ok(0) => Msg::Closed(None),
            Ok(n) => Msg::Bytes(buf[..n].to_vec()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Msg::Closed(Some(e)),
        };
        let last = matches!(msg, Msg::Closed(_));
        // Blocks while the channel is full: that is the back-pressure.
        if tx.send(msg).is_err() || last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Shutdown;
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc::channel;

    /// Upper-cases what it gets; says how many wakes it saw; "!" is a protocol error.
    #[derive(Default)]
    struct Shout {
        wakes: usize,
    }

    impl Protocol for Shout {
        type Error = String;
        fn start(&mut self) -> Vec<u8> {
            b"hello\n".to_vec()
        }
        fn on_bytes(&mut self, bytes: &[u8]) -> Result<Vec<u8>, String> {
            if bytes.contains(&b'!') {
                return Err("no shouting".into());
            }
            Ok(bytes.to_ascii_uppercase())
        }
        fn on_wake(&mut self) -> Vec<u8> {
            self.wakes += 1;
            format!("wake {}\n", self.wakes).into_bytes()
        }
    }

    /// A session on one end of a socket pair, on a thread; returns the other end, the waker,
    /// and the session's end (with the protocol, to look at afterwards).
    fn session() -> (UnixStream, Waker, std::thread::JoinHandle<(Ended, Shout)>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (wtx, wrx) = channel();
        let h = std::thread::spawn(move || {
            let reader = theirs.try_clone().unwrap();
            let mut p = Shout::default();
            let ended = run(reader, &theirs, &mut p, |w| wtx.send(w).unwrap());
            let _ = theirs.shutdown(Shutdown::Both);
            (ended, p)
        });
        (ours, wrx.recv().unwrap(), h)
    }

    fn read_n(s: &mut UnixStream, n: usize) -> String {
        let mut b = vec![0u8; n];
        s.read_exact(&mut b).unwrap();
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn bytes_in_answers_out_then_the_peer_closes() {
        let (mut s, waker, h) = session();
        assert_eq!(read_n(&mut s, 6), "hello\n");
        s.write_all(b"abc").unwrap();
        assert_eq!(read_n(&mut s, 3), "ABC");
        s.shutdown(Shutdown::Write).unwrap();
        let (ended, _) = h.join().unwrap();
        assert!(matches!(ended, Ended::PeerClosed), "{ended}");
        assert_eq!(ended.to_string(), "closed by the peer");
        assert!(!waker.wake(), "no session to wake any more");
    }

    #[test]
    fn a_wake_asks_the_protocol_for_what_it_can_answer() {
        let (mut s, waker, h) = session();
        assert_eq!(read_n(&mut s, 6), "hello\n");
        assert!(waker.wake());
        assert_eq!(read_n(&mut s, 7), "wake 1\n");
        assert!(waker.clone().wake());
        assert_eq!(read_n(&mut s, 7), "wake 2\n");
        drop(s);
        let (ended, p) = h.join().unwrap();
        assert!(matches!(ended, Ended::PeerClosed), "{ended}");
        assert_eq!(p.wakes, 2);
    }

    #[test]
    fn a_protocol_error_ends_the_session_with_its_text() {
        let (mut s, waker, h) = session();
        assert_eq!(read_n(&mut s, 6), "hello\n");
        s.write_all(b"hey!").unwrap();
        let (ended, _) = h.join().unwrap();
        assert!(matches!(ended, Ended::Protocol(_)), "{ended}");
        assert_eq!(ended.to_string(), "no shouting; closing");
        assert!(!waker.wake());
        // The session's side shut the stream: the peer sees the end.
        assert_eq!(s.read(&mut [0u8; 8]).unwrap(), 0);
    }

    #[test]
    fn a_full_channel_counts_as_woken() {
        let (s, _peer) = UnixStream::pair().unwrap();
        let reader = s.try_clone().unwrap();
        let mut p = Shout::default();
        // More wakes than the channel holds, before the session takes any: none is refused,
        // and the session handles those the channel kept.
        let ended = run(reader, io::sink(), &mut p, |w| {
            assert!((0..QUEUE * 4).all(|_| w.wake()));
            s.shutdown(Shutdown::Both).unwrap();
        });
        assert!(matches!(ended, Ended::PeerClosed), "{ended}");
        assert_eq!(p.wakes, QUEUE);
    }
}
