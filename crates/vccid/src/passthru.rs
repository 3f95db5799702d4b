//! `--card passthru`: the card lives in a VSCard client (a vscclient, ours or libcacard's) and
//! this is QEMU's `ccid-card-passthru` as a card of ours (qemu-ccid.md §1.7, §5.1). One client
//! at a time, as QEMU's chardev; a closed connection removes the card and the reader.

use anyhow::Result;
use card::{Card, Presence};
use link::{Addr, ListenSecurity, Stream};
use std::io::{Read, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use vscard::host::{HostEvent, HostSession};

/// QEMU's DEFAULT_ATR, reported before any client sent one (qemu-ccid.md §1.7.1).
const DEFAULT_ATR: [u8; 15] = [
    0x3B, 0xD5, 0x18, 0xFF, 0x80, 0x91, 0xFE, 0x1F, 0xC3, 0x80, 0x73, 0xC8, 0x21, 0x13, 0x08,
];
/// How long an APDU may take on the client's card (a real card generating a key is slow).
const APDU_TIMEOUT: Duration = Duration::from_secs(120);
/// The answer of a command whose card link died or timed out (ISO 7816-4: no precise
/// diagnosis).
const LINK_FAILED: [u8; 2] = [0x6F, 0x00];

struct State {
    atr: Vec<u8>,
    session: HostSession,
    /// The answer to the outstanding APDU: `Some(Ok)` response, `Some(Err)` failure.
    answer: Option<Result<Vec<u8>, ()>>,
}

struct Inner {
    state: Mutex<State>,
    /// The connection's write side, apart from the state: a write (a TLS record, a syscall
    /// that wakes the client) never holds the lock the reader thread needs for the answer.
    writer: Mutex<Option<Stream>>,
    answered: Condvar,
    presence: Presence,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Writes whole frames, in order; `false` when there is no connection or it failed.
    fn send(&self, frames: &[vscard::Frame]) -> std::io::Result<bool> {
        if frames.is_empty() {
            return Ok(true);
        }
        match self
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            Some(w) => write_frames(w, frames).map(|()| true),
            None => Ok(false),
        }
    }
}

/// The passthru card.
pub struct PassthruCard {
    inner: Arc<Inner>,
    /// Serialises transmit(): one APDU outstanding, as VSCard has no tags to match answers.
    transmit_lock: Mutex<()>,
}

impl PassthruCard {
    /// Listens at `addr` and serves clients one after another on a thread of its own; with
    /// `tls`, every client completes a TLS handshake first (with a client certificate when
    /// the configuration asks for one).
    pub fn listen(addr: &Addr, link: &ListenSecurity) -> Result<PassthruCard> {
        let listener = link.bind(addr)?;
        if link.tls.is_none() && !addr.is_local() {
            tracing::warn!(
                %addr,
                "the VSCard channel is not on loopback: it is unauthenticated and unencrypted, and \
                 anyone who reaches it can insert a card or read the APDUs"
            );
        }
        tracing::info!(addr = %listener.local_addr(), tls = link.tls.is_some(), "passthru card waiting for a VSCard client");
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                atr: DEFAULT_ATR.to_vec(),
                session: HostSession::new(),
                answer: None,
            }),
            writer: Mutex::new(None),
            answered: Condvar::new(),
            presence: Presence::new(false),
        });
        let server = inner.clone();
        std::thread::Builder::new()
            .name("vscard-server".into())
            .spawn(move || {
                link::accept::in_turn("passthru", || listener.accept(), |s| serve(&server, s))
            })?;
        Ok(PassthruCard {
            inner,
            transmit_lock: Mutex::new(()),
        })
    }
}

/// Writes frames, each in one write (also vscclient's).
pub fn write_frames(stream: &mut impl Write, frames: &[vscard::Frame]) -> std::io::Result<()> {
    for f in frames {
        let bytes = f
            .encode()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        stream.write_all(&bytes)?;
    }
    Ok(())
}

/// Applies the session's events to the card state. Takes the guard and releases it before
/// waking the waiting transmit(), so the woken thread does not find the lock still held.
fn apply(inner: &Inner, mut st: std::sync::MutexGuard<'_, State>, events: Vec<HostEvent>) {
    let mut answered = false;
    for e in events {
        match e {
            HostEvent::CardInserted(atr) => {
                let atr_text: Vec<String> = atr.iter().map(|b| format!("{b:02X}")).collect();
                let atr_text = atr_text.join(" ");
                st.atr = atr;
                if inner.presence.set(true) {
                    tracing::info!(atr = %atr_text, "VSCard client: card inserted");
                }
            }
            HostEvent::CardRemoved | HostEvent::ReaderRemoved => {
                if inner.presence.set(false) {
                    tracing::info!("VSCard client: card removed");
                }
            }
            HostEvent::ReaderAdded => {}
            HostEvent::Response(r) => {
                st.answer = Some(Ok(r));
                answered = true;
            }
            HostEvent::ClientError(code) => {
                tracing::warn!(code = code.0, "the VSCard client failed the APDU");
                st.answer = Some(Err(()));
                answered = true;
            }
        }
    }
    drop(st);
    if answered {
        inner.answered.notify_all();
    }
}

/// One client connection, until it closes.
fn serve(inner: &Inner, mut stream: Stream) {
    let peer = stream.peer();
    tracing::info!(%peer, "VSCard client connected");
    let Ok(writer) = stream.try_clone() else {
        return;
    };
    inner.lock().session = HostSession::new();
    *inner.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(writer);
    let mut dec = vscard::Decoder::new();
    let mut buf = vec![0u8; 65536];
    let why = 'conn: loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break "closed by the client".to_string(),
            Ok(n) => n,
            Err(e) => break e.to_string(),
        };
        dec.feed(&buf[..n]);
        loop {
            let mut st = inner.lock();
            let (replies, events) = match dec.next_frame() {
                Ok(Some(frame)) => st.session.on_frame(frame),
                Ok(None) => break,
                Err(e) => {
                    let replies = st.session.on_decode_error(&e);
                    if e.is_fatal() {
                        break 'conn format!("{e}; closing the connection");
                    }
                    (replies, vec![])
                }
            };
            apply(inner, st, events);
            if let Err(e) = inner.send(&replies) {
                break 'conn e.to_string();
            }
        }
    };
    let mut st = inner.lock();
    let events = st.session.on_close();
    apply(inner, st, events);
    if let Some(w) = inner
        .writer
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        w.shutdown();
    }
    tracing::info!(%peer, "VSCard client gone: {why}");
}

impl Card for PassthruCard {
    fn atr(&self) -> Vec<u8> {
        self.inner.lock().atr.clone()
    }
    // QEMU's passthru forwards no power or reset to the client (libcacard.md §3.5): the card
    // is reset when the client inserts it.
    fn power_on(&mut self) -> Vec<u8> {
        self.atr()
    }
    fn power_off(&mut self) {}
    fn transmit(&mut self, apdu: &[u8]) -> Vec<u8> {
        let _one = self.transmit_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut st = self.inner.lock();
        if !st.session.card_present() {
            return LINK_FAILED.to_vec();
        }
        st.answer = None;
        let frame = st.session.send_apdu(apdu);
        drop(st);
        // The answer may land before we wait: the condition below sees it.
        if !matches!(self.inner.send(&[frame]), Ok(true)) {
            return LINK_FAILED.to_vec();
        }
        let st = self.inner.lock();
        let (mut st, timeout) = self
            .inner
            .answered
            .wait_timeout_while(st, APDU_TIMEOUT, |s| s.answer.is_none())
            .unwrap_or_else(|e| e.into_inner());
        if timeout.timed_out() {
            tracing::warn!("the VSCard client did not answer within {APDU_TIMEOUT:?}");
        }
        match st.answer.take() {
            Some(Ok(r)) if r.len() >= 2 => r,
            _ => LINK_FAILED.to_vec(),
        }
    }
    fn presence(&self) -> Presence {
        self.inner.presence.clone()
    }
}
