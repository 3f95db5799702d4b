//! `vscclient`: serves a card to a VSCard host (QEMU's `ccid-card-passthru`, or
//! `vccid --card passthru`). Compatible with libcacard's command line:
//! `vscclient [-c CERTNAME]... [-e EMUL_ARGS] [-p] [-d LEVEL] HOST PORT`, plus long options.
//!
//! Unlike libcacard's: it checks every length, takes the reader id the host gives, answers
//! Flush, sends CardRemove and ReaderRemove before it exits (also on SIGINT/SIGTERM),
//! reconnects with backoff when the host goes away, and idles when stdin closes.

use anyhow::{bail, Result};
use card::Card;
use link::retry::{self, Backoff, NotConnected, Stop};
use link::{Addr, Stream};
use std::io::Read;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vccid::cli::VscclientArgs;
use vccid::passthru::write_frames;
use vccid::spec::{self, Backend, CardSpec, EmulatedSpec};
use vscard::client::{ClientEvent, ClientSession};

/// The card and the connection state, shared by the socket reader, stdin and signals.
struct Shared {
    session: Mutex<(ClientSession, Option<Stream>)>,
    card: Mutex<Box<dyn Card>>,
    quit: Stop,
}

impl Shared {
    fn send(&self, frames: impl FnOnce(&mut ClientSession) -> Vec<vscard::Frame>) {
        let mut g = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let out = frames(&mut g.0);
        if let Some(w) = g.1.as_mut() {
            if let Err(e) = write_frames(w, &out) {
                tracing::warn!("cannot send to the host: {e}");
            }
        }
    }
}

/// The card vscclient serves: emulated, or a PC/SC reader's (libcacard's default mode).
enum ClientCard {
    Emulated(EmulatedSpec),
    Hardware(Option<String>),
}

fn card_spec(args: &VscclientArgs) -> Result<ClientCard> {
    if args.passthru_compare {
        bail!("-p (compare with a PC/SC reader) is not supported");
    }
    if let Some(c) = &args.card {
        return match spec::parse(c)? {
            CardSpec::Emulated(e) => Ok(ClientCard::Emulated(e)),
            CardSpec::Hardware { reader } => Ok(ClientCard::Hardware(reader)),
            CardSpec::Passthru { .. } => bail!("--card passthru is a host; vscclient needs a card"),
        };
    }
    if args.certs.is_empty() && args.emul_args.is_none() {
        return Ok(ClientCard::Hardware(args.pcsc_reader.clone()));
    }
    let emul = args
        .emul_args
        .as_deref()
        .map(vccid::emul_args::parse)
        .transpose()?
        .unwrap_or_default();
    let db = emul.db.clone().unwrap_or_else(|| "/etc/pki/nssdb".into());
    let nicknames = if !args.certs.is_empty() {
        args.certs.clone()
    } else if let Some(soft) = emul.soft.first() {
        if !soft.slot.is_empty() {
            bail!(
                "soft=({},...): only the database's own slot (empty SLOT) is supported",
                soft.slot
            );
        }
        soft.certs.clone()
    } else {
        bail!("-e without soft=(...): give soft=(,Reader,CAC,,cert1,...) or -c CERTNAME");
    };
    Ok(ClientCard::Emulated(EmulatedSpec {
        backend: Backend::Nss {
            db,
            nicknames,
            password: None,
        },
        profile: vccid::spec::Profile::Cac,
        state: None,
        puk: None,
        pin: args.pin.clone(),
        pin_tries: None,
    }))
}

fn reader_name(args: &VscclientArgs, pcsc_reader: Option<&str>) -> String {
    if let Some(r) = &args.reader {
        return r.clone();
    }
    if let Some(r) = pcsc_reader {
        return r.to_string();
    }
    let emul = args
        .emul_args
        .as_deref()
        .and_then(|e| vccid::emul_args::parse(e).ok());
    match emul.and_then(|e| e.soft.first().map(|s| s.reader.clone())) {
        Some(r) if args.certs.is_empty() && !r.is_empty() => r,
        _ => "Virtual Reader".into(),
    }
}

/// Insertions and removals of the card (a PC/SC reader's, or `insert`/`remove` commands on an
/// emulated one) become ATR and CardRemove messages.
fn follow_presence(shared: Arc<Shared>, presence: card::Presence) {
    let _ = std::thread::Builder::new()
        .name("presence".into())
        .spawn(move || {
            let (_, mut seen) = presence.snapshot();
            loop {
                let (present, gen) = presence.wait_change(seen, Duration::from_secs(1));
                if gen == seen {
                    continue;
                }
                seen = gen;
                if present {
                    let atr = shared
                        .card
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .power_on();
                    shared.send(|s| s.insert(atr));
                } else {
                    shared.send(|s| s.remove());
                }
            }
        });
}

/// Commands on stdin, as libcacard's vscclient: insert, remove, exit.
fn stdin_commands(shared: Arc<Shared>) {
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut line = String::new();
            let stdin = std::io::stdin();
            loop {
                line.clear();
                match stdin.read_line(&mut line) {
                    Ok(0) | Err(_) => return, // end of input: keep serving (libcacard spins here)
                    Ok(_) => {}
                }
                match line.trim() {
                    "" => {}
                    "remove" => {
                        shared
                            .card
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .presence()
                            .set(false);
                    }
                    "insert" => {
                        shared
                            .card
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .presence()
                            .set(true);
                    }
                    "exit" | "quit" => {
                        goodbye(&shared);
                        std::process::exit(0);
                    }
                    other => {
                        tracing::info!("unknown command {other:?}; commands: insert, remove, exit")
                    }
                }
            }
        });
}

/// CardRemove and ReaderRemove, written before the process leaves.
fn goodbye(shared: &Shared) {
    shared.quit.stop();
    let mut g = shared.session.lock().unwrap_or_else(|e| e.into_inner());
    let frames = g.0.goodbye();
    if let Some(w) = g.1.as_mut() {
        let _ = write_frames(w, &frames);
        w.shutdown();
    }
}

/// TLS connections in a row that the host closes before answering, after which vscclient
/// takes it for a refusal of its certificate and stops. One such close is not enough: it is
/// also what a link that drops right after the handshake looks like.
const TLS_UNANSWERED_LIMIT: u32 = 3;

/// Why a connection ended, and whether trying again can help.
enum Ended {
    /// Lost: reconnect; `true` when the host had answered (the backoff starts over).
    Lost(String, bool),
    /// The host closed a TLS connection before answering: a refused client certificate (a
    /// TLS 1.3 client finishes its handshake before the server has judged its certificate,
    /// and QEMU then just closes), or a link that dropped at that moment. Given up after
    /// [`TLS_UNANSWERED_LIMIT`] in a row, with this one-line reason.
    Unanswered(String),
    /// Refused for good (TLS): stop with this one-line reason.
    Refused(String),
}

/// One connection: Init, then frames until the host goes away.
fn connection(shared: &Shared, mut stream: Stream) -> Ended {
    let tls = matches!(stream, Stream::Tls(_));
    let mut answered = false;
    let Ok(writer) = stream.try_clone() else {
        return Ended::Lost("cannot clone the socket".into(), false);
    };
    {
        let mut g = shared.session.lock().unwrap_or_else(|e| e.into_inner());
        g.1 = Some(writer);
    }
    shared.send(|s| s.start());
    let mut dec = vscard::Decoder::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) if !answered && tls => {
                // TLS 1.3 finishes the client's handshake before the server has judged our
                // certificate; QEMU checks it afterwards and just closes.
                return Ended::Unanswered(
                    "the host closed the TLS connection before answering: it refused our \
                     client certificate (not from its CA, expired, or not yet valid)"
                        .into(),
                );
            }
            Ok(0) if !answered => {
                return Ended::Lost(
                    "closed by the host before it answered (does it expect TLS? see --tls)".into(),
                    false,
                )
            }
            Ok(0) => return Ended::Lost("closed by the host".into(), true),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData && tls => {
                return Ended::Refused(format!("TLS: {e}"))
            }
            Err(e) if !answered => {
                return Ended::Lost(
                    format!("{e} before the host answered (does it expect TLS? see --tls)"),
                    false,
                )
            }
            Err(e) => return Ended::Lost(e.to_string(), true),
        };
        answered = true;
        dec.feed(&buf[..n]);
        loop {
            let frame = match dec.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) if e.is_fatal() => return Ended::Lost(format!("{e}; closing"), true),
                Err(e) => {
                    tracing::warn!("{e}");
                    continue;
                }
            };
            // An APDU's bytes may hold a PIN: its type and length only (card::Traced logs a
            // redacted, decoded line for each at -d 11). The other messages carry no secret
            // and are logged whole (QEMU's Init shows its version).
            match &frame.message {
                vscard::Message::Apdu(a) => tracing::debug!(
                    reader = frame.reader_id,
                    "from host: APDU, {} bytes",
                    a.len()
                ),
                m => tracing::debug!(reader = frame.reader_id, "from host: {m:?}"),
            }
            let (replies, events) = {
                let mut g = shared.session.lock().unwrap_or_else(|e| e.into_inner());
                g.0.on_frame(frame)
            };
            shared.send(|_| replies);
            for e in events {
                match e {
                    ClientEvent::Apdu(apdu) => {
                        let resp = shared
                            .card
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .transmit(&apdu);
                        shared.send(|s| vec![s.response(resp)]);
                    }
                    ClientEvent::ReaderAccepted(id) => {
                        tracing::info!(reader_id = id, "the host accepted the reader")
                    }
                    ClientEvent::ReaderRefused(code) => {
                        tracing::warn!(?code, "the host refused the reader")
                    }
                    ClientEvent::HostError(code) => {
                        tracing::warn!(?code, "the host reported an error")
                    }
                }
            }
        }
    }
}

fn run(args: VscclientArgs) -> Result<()> {
    let addr = match &args.port {
        Some(p) => Addr::parse(&format!("{}:{p}", args.host))?,
        None => Addr::parse(&args.host)?,
    };
    let (mut card, pcsc_reader): (Box<dyn Card>, Option<String>) = match card_spec(&args)? {
        // Traced: with -d 11 and up, one decoded, redacted line per APDU.
        ClientCard::Emulated(spec) => (
            Box::new(card::Traced::new(vccid::keys::emulated_card(
                &spec,
                args.data_dir.clone(),
            )?)),
            None,
        ),
        ClientCard::Hardware(reader) => {
            // vscclient serves no PC/SC reader of its own, so none is excluded.
            let c = hostcard::HostCard::open(reader.as_deref(), &[])?;
            let name = c.reader().to_string();
            (Box::new(card::Traced::new(c)), Some(name))
        }
    };
    let presence = card.presence();
    let atr = presence.is_present().then(|| card.power_on());
    let shared = Arc::new(Shared {
        session: Mutex::new((
            ClientSession::new(&reader_name(&args, pcsc_reader.as_deref()), atr),
            None,
        )),
        card: Mutex::new(card),
        quit: Stop::new(),
    });
    stdin_commands(shared.clone());
    follow_presence(shared.clone(), presence);
    {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if vccid::wait_for_shutdown().is_ok() {
                    goodbye(&shared);
                    std::process::exit(0);
                }
            })?;
    }
    let started = std::time::Instant::now();
    // TLS connections closed before the host answered, in a row.
    let mut unanswered = 0;
    // 100 ms doubling to 5 s, started over once a host has answered.
    let mut backoff = Backoff::default();
    let tls = match &args.tls {
        Some(dir) => Some(link::TlsClient::new(
            &link::tls::TlsOptions {
                dir: dir.clone(),
                verify_peer: true,
                server_name: args.tls_hostname.clone(),
                on_certificate: Some(vccid::expiry::warn),
            },
            &addr,
        )?),
        None => {
            if !addr.is_local() {
                tracing::warn!(%addr, "connecting in plaintext to a host that is not on loopback: the card's traffic is unauthenticated and unencrypted (see --tls)");
            }
            None
        }
    };
    loop {
        let failed = |e: &link::Error, fresh: bool| {
            // A certificate the other side or we refuse: trying again cannot help.
            if e.is_refusal() {
                return ControlFlow::Break(());
            }
            if let Some(t) = args.connect_timeout {
                if started.elapsed() > Duration::from_secs(t) {
                    return ControlFlow::Break(());
                }
            }
            if fresh {
                tracing::warn!(%addr, "cannot connect: {e}; retrying");
            }
            ControlFlow::Continue(())
        };
        let connect = || Stream::connect_with(&addr, tls.as_ref());
        let stream = match retry::connect(&mut backoff, &shared.quit, connect, failed) {
            Ok(s) => s,
            Err(NotConnected::Stopped) => break,
            Err(NotConnected::GaveUp(e)) if e.is_refusal() => bail!("{e}"),
            Err(NotConnected::GaveUp(e)) => bail!("cannot connect to {addr}: {e}"),
        };
        tracing::info!(%addr, tls = tls.is_some(), "connected to the VSCard host");
        let ended = connection(&shared, stream);
        shared.session.lock().unwrap_or_else(|e| e.into_inner()).1 = None;
        if shared.quit.is_stopped() {
            break;
        }
        match ended {
            Ended::Refused(why) => bail!("{addr}: {why}"),
            Ended::Unanswered(why) => {
                unanswered += 1;
                if unanswered >= TLS_UNANSWERED_LIMIT {
                    bail!("{addr}: {why}");
                }
                tracing::warn!(%addr, "the host closed the TLS connection before answering (it refused our client certificate, or the link dropped); trying again");
            }
            Ended::Lost(why, answered) => {
                if answered {
                    backoff.reset();
                    unanswered = 0;
                }
                tracing::warn!(%addr, "VSCard host connection lost: {why}; reconnecting")
            }
        }
        if !backoff.wait(&shared.quit) {
            break;
        }
    }
    Ok(())
}

fn main() {
    let args: VscclientArgs = vccid::parse_args("vscclient");
    vccid::init_logging(match args.debug {
        0 => 0,
        1..=10 => 1,
        _ => 2,
    });
    if let Err(e) = run(args) {
        eprintln!("vscclient: error: {e:#}");
        std::process::exit(2);
    }
}
