//! Byte streams for the network links: TCP (with TCP_NODELAY, every message in one write) or a
//! Unix socket (created 0600), either one optionally under TLS ([`crate::tls`]). Addresses are
//! `HOST:PORT` or `unix:PATH` ([`Addr`], from [`crate::addr`]).
//!
//! The dependencies point one way: this module uses [`crate::tls`], whose [`TlsStream`] is
//! generic over the stream under it ([`tls::Transport`], implemented here for [`Stream`]), so
//! `tls` knows nothing of this module.

use anyhow::{bail, Context, Result};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::Duration;

pub use crate::addr::Addr;
use crate::tls::{self, TlsStream};

/// A connected stream.
#[derive(Debug)]
pub enum Stream {
    /// TCP.
    Tcp(TcpStream),
    /// Unix.
    Unix(UnixStream),
    /// TLS over one of the others.
    Tls(TlsStream<Stream>),
}

impl Stream {
    /// Connects; TCP gets TCP_NODELAY.
    pub fn connect(addr: &Addr) -> io::Result<Stream> {
        Ok(match addr {
            Addr::Tcp(a) => {
                let s = TcpStream::connect_timeout(a, std::time::Duration::from_secs(5))?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
            Addr::Unix(p) => Stream::Unix(UnixStream::connect(p)?),
        })
    }
    /// Connects, then with `tls` runs the client handshake (the server verified against the
    /// CA, our client certificate presented). Errors are one line for the user.
    pub fn connect_with(
        addr: &Addr,
        tls: Option<&TlsClient>,
    ) -> std::result::Result<Stream, String> {
        let raw = Stream::connect(addr).map_err(|e| e.to_string())?;
        match tls {
            None => Ok(raw),
            Some(t) => TlsStream::connect(raw, t.config.clone(), t.name.clone())
                .map(Stream::Tls)
                .map_err(|e| format!("TLS handshake with {addr} failed: {}", tls::describe(&e))),
        }
    }
    /// Another handle to the same stream.
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tls(s) => Stream::Tls(s.clone()),
        })
    }
    /// Shuts both directions (wakes a reader blocked on another handle).
    pub fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
            Stream::Tls(s) => {
                s.close();
                Ok(())
            }
        };
    }
    /// Read and write timeouts (the TLS handshake's bound).
    pub fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
            Stream::Unix(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
            Stream::Tls(s) => s.raw().set_timeouts(t),
        }
    }
    /// The peer, for logs.
    pub fn peer(&self) -> String {
        match self {
            Stream::Tcp(s) => s
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into()),
            Stream::Unix(_) => "unix peer".into(),
            Stream::Tls(s) => format!("{} (TLS)", s.raw().peer()),
        }
    }
}

/// What TLS needs from the stream under it: the inherent methods above, and reads and writes
/// through shared handles (the links read on one thread and write on another).
impl tls::Transport for Stream {
    fn read_shared(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = self;
        s.read(buf)
    }
    fn write_shared(&self, buf: &[u8]) -> io::Result<usize> {
        let mut s = self;
        s.write(buf)
    }
    fn shutdown(&self) {
        Stream::shutdown(self)
    }
    fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        Stream::set_timeouts(self, t)
    }
    fn peer(&self) -> String {
        Stream::peer(self)
    }
}

impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).read(buf),
            Stream::Unix(s) => (&*s).read(buf),
            Stream::Tls(s) => s.clone().read(buf),
        }
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&*s).write(buf),
            Stream::Unix(s) => (&*s).write(buf),
            Stream::Tls(s) => s.clone().write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A client's TLS settings for one address.
#[derive(Clone)]
pub struct TlsClient {
    /// The rustls client configuration.
    pub config: Arc<rustls::ClientConfig>,
    /// The name checked in the server's certificate.
    pub name: rustls::pki_types::ServerName<'static>,
}

impl TlsClient {
    /// From the command line's options, for connections to `addr`.
    pub fn new(opts: &tls::TlsOptions, addr: &Addr) -> Result<TlsClient> {
        Ok(TlsClient {
            config: opts.client_config()?,
            name: opts.server_name_for(addr)?,
        })
    }
}

/// What a listener does about plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Security {
    /// Plaintext: allowed on loopback and Unix sockets only.
    #[default]
    Plaintext,
    /// Plaintext on a non-loopback address, explicitly allowed (`--insecure-plaintext`):
    /// every connection logs a warning.
    InsecurePlaintext,
}

/// How a program's listeners are secured: TLS with this configuration, or plaintext under
/// the rules of [`Security`].
#[derive(Clone, Default)]
pub struct ListenSecurity {
    /// The TLS server configuration, if TLS is on.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// What plaintext is allowed when TLS is off.
    pub plaintext: Security,
}

impl ListenSecurity {
    /// Binds a listener at `addr` accordingly.
    pub fn bind(&self, addr: &Addr) -> Result<Listener> {
        match &self.tls {
            Some(cfg) => Listener::bind_tls(addr, cfg.clone()),
            None => Listener::bind(addr, self.plaintext),
        }
    }
}

/// A listening socket, plain or TLS.
#[derive(Debug)]
pub struct Listener {
    inner: Inner,
    local: Addr,
    warn_plaintext: bool,
}

#[derive(Debug)]
enum Inner {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
    /// Handshakes run on threads of their own; finished streams arrive here.
    Tls(Receiver<Stream>, Option<PathBuf>),
}

fn bind_raw(addr: &Addr) -> Result<Inner> {
    Ok(match addr {
        Addr::Tcp(a) => {
            Inner::Tcp(TcpListener::bind(a).with_context(|| format!("cannot listen on {a}"))?)
        }
        Addr::Unix(p) => {
            let _ = std::fs::remove_file(p);
            let l = UnixListener::bind(p)
                .with_context(|| format!("cannot listen on {}", p.display()))?;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))?;
            Inner::Unix(l, p.clone())
        }
    })
}

fn accept_raw(inner: &Inner) -> io::Result<Stream> {
    match inner {
        Inner::Tcp(l) => {
            let (s, _) = l.accept()?;
            s.set_nodelay(true)?;
            Ok(Stream::Tcp(s))
        }
        Inner::Unix(l, _) => Ok(Stream::Unix(l.accept()?.0)),
        Inner::Tls(..) => Err(io::Error::other("not a raw listener")),
    }
}

fn local_of(inner: &Inner, addr: &Addr) -> Addr {
    match inner {
        Inner::Tcp(l) => l
            .local_addr()
            .map(Addr::Tcp)
            .unwrap_or_else(|_| addr.clone()),
        _ => addr.clone(),
    }
}

impl Listener {
    /// Binds a plaintext listener; a Unix socket replaces a stale one and is made 0600. A
    /// non-loopback TCP address is refused unless `security` is
    /// [`Security::InsecurePlaintext`].
    pub fn bind(addr: &Addr, security: Security) -> Result<Listener> {
        let warn_plaintext = !addr.is_local();
        if warn_plaintext && security != Security::InsecurePlaintext {
            bail!(
                "refusing to listen in plaintext on {addr}, which is not loopback: anyone who \
                 reaches it could use the link unauthenticated and read it. Use --tls DIR, a \
                 loopback or unix: address, or --insecure-plaintext"
            );
        }
        let inner = bind_raw(addr)?;
        let local = local_of(&inner, addr);
        Ok(Listener {
            inner,
            local,
            warn_plaintext,
        })
    }

    /// Binds a TLS listener: each accepted connection gets its handshake on a thread of its
    /// own (at most [`tls::MAX_HANDSHAKES`] at once, each bounded by
    /// [`tls::HANDSHAKE_TIMEOUT`]); failures are logged with the peer and close only that
    /// connection.
    pub fn bind_tls(addr: &Addr, config: Arc<rustls::ServerConfig>) -> Result<Listener> {
        let raw = bind_raw(addr)?;
        let local = local_of(&raw, addr);
        let path = match &raw {
            Inner::Unix(_, p) => Some(p.clone()),
            _ => None,
        };
        let (tx, rx) = channel();
        let busy = Arc::new(AtomicUsize::new(0));
        std::thread::Builder::new()
            .name("tls-accept".into())
            .spawn(move || loop {
                let s = match accept_raw(&raw) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                let peer = s.peer();
                if busy.fetch_add(1, Ordering::SeqCst) >= tls::MAX_HANDSHAKES {
                    busy.fetch_sub(1, Ordering::SeqCst);
                    tracing::warn!(%peer, "{} TLS handshakes already under way; closing this connection", tls::MAX_HANDSHAKES);
                    continue;
                }
                let (tx, busy, config) = (tx.clone(), busy.clone(), config.clone());
                let spawned = std::thread::Builder::new()
                    .name("tls-handshake".into())
                    .spawn(move || {
                        let r = TlsStream::accept(s, config);
                        busy.fetch_sub(1, Ordering::SeqCst);
                        match r {
                            Ok(t) => {
                                tracing::debug!(%peer, "TLS handshake done");
                                let _ = tx.send(Stream::Tls(t));
                            }
                            Err(e) => tracing::warn!(%peer, "TLS handshake refused: {}", tls::describe(&e)),
                        }
                    });
                if spawned.is_err() {
                    tracing::warn!("cannot start a TLS handshake thread");
                }
            })?;
        Ok(Listener {
            inner: Inner::Tls(rx, path),
            local,
            warn_plaintext: false,
        })
    }

    /// Accepts one connection; TCP gets TCP_NODELAY; a TLS listener's connection has
    /// finished its handshake.
    pub fn accept(&self) -> io::Result<Stream> {
        let s = match &self.inner {
            Inner::Tls(rx, _) => rx
                .recv()
                .map_err(|_| io::Error::other("the TLS acceptor stopped"))?,
            raw => accept_raw(raw)?,
        };
        if self.warn_plaintext {
            tracing::warn!(peer = %s.peer(), local = %self.local, "plaintext connection on a non-loopback address: unauthenticated and unencrypted");
        }
        Ok(s)
    }

    /// The bound address (the real port for port 0).
    pub fn local_addr(&self) -> Addr {
        self.local.clone()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        match &self.inner {
            Inner::Unix(_, p) | Inner::Tls(_, Some(p)) => {
                let _ = std::fs::remove_file(p);
            }
            _ => {}
        }
    }
}

/// Writes frames, each in one write.
pub fn write_frames(stream: &mut Stream, frames: &[vscard::Frame]) -> io::Result<()> {
    for f in frames {
        let bytes = f
            .encode()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        stream.write_all(&bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! TLS over these streams and listeners ([`crate::tls`] itself knows no streams).
    use super::*;
    use crate::tls::tests::dir;
    use crate::tls::{
        TlsOptions, CA_CERT, CLIENT_CERT, CLIENT_KEY, HANDSHAKE_TIMEOUT, MAX_HANDSHAKES,
    };

    fn tls_listener(o: &TlsOptions) -> (Listener, Addr) {
        let sec = ListenSecurity {
            tls: Some(o.server_config().unwrap()),
            plaintext: Security::Plaintext,
        };
        let l = sec.bind(&Addr::parse("127.0.0.1:0").unwrap()).unwrap();
        let a = l.local_addr();
        (l, a)
    }

    #[test]
    fn mutual_tls_round_trips_with_a_reader_and_a_writer_on_two_threads() {
        let (_d, o) = dir();
        let (l, addr) = tls_listener(&o);
        let server = std::thread::spawn(move || {
            let mut s = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            // Echo each message from another handle, as the links do.
            let mut buf = vec![0u8; 70000];
            let mut total = 0;
            loop {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break total;
                }
                total += n;
                w.write_all(&buf[..n]).unwrap();
            }
        });
        let c = TlsClient::new(&o, &addr).unwrap();
        let mut s = Stream::connect_with(&addr, Some(&c)).unwrap();
        let mut r = s.try_clone().unwrap();
        // 65 KiB crosses several records and rustls's 16 KiB plaintext limit.
        let big: Vec<u8> = (0..65544u32).map(|i| i as u8).collect();
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; 65544 + 5];
            r.read_exact(&mut got).unwrap();
            got
        });
        s.write_all(&big).unwrap();
        s.write_all(b"hello").unwrap();
        let got = reader.join().unwrap();
        assert_eq!(&got[..65544], &big[..]);
        assert_eq!(&got[65544..], b"hello");
        s.shutdown();
        assert_eq!(server.join().unwrap(), 65544 + 5);
    }

    #[test]
    fn wrong_ca_no_certificate_and_garbage_are_refused() {
        let (_d, o) = dir();
        let (_d2, other) = dir();
        let (l, addr) = tls_listener(&o);
        // A client whose CA does not know the server: refused on our side.
        let e =
            Stream::connect_with(&addr, Some(&TlsClient::new(&other, &addr).unwrap())).unwrap_err();
        assert!(e.contains("invalid peer certificate"), "{e}");
        // A client certificate from another CA, trusting the right server: the server
        // refuses it (in TLS 1.3 the client sees that on its first read).
        let mixed = tempfile::tempdir().unwrap();
        for f in [CLIENT_CERT, CLIENT_KEY] {
            std::fs::copy(other.dir.join(f), mixed.path().join(f)).unwrap();
        }
        std::fs::copy(o.dir.join(CA_CERT), mixed.path().join(CA_CERT)).unwrap();
        let m = TlsOptions {
            dir: mixed.path().to_path_buf(),
            ..o.clone()
        };
        let refused = match Stream::connect_with(&addr, Some(&TlsClient::new(&m, &addr).unwrap())) {
            Err(e) => e,
            Ok(mut s) => s.read(&mut [0u8; 16]).unwrap_err().to_string(),
        };
        assert!(refused.contains("alert"), "{refused}");
        // No client certificate at all.
        let none = tempfile::tempdir().unwrap();
        std::fs::copy(o.dir.join(CA_CERT), none.path().join(CA_CERT)).unwrap();
        let n = TlsOptions {
            dir: none.path().to_path_buf(),
            ..o.clone()
        };
        let refused = match Stream::connect_with(&addr, Some(&TlsClient::new(&n, &addr).unwrap())) {
            Err(e) => e,
            Ok(mut s) => s.read(&mut [0u8; 16]).unwrap_err().to_string(),
        };
        assert!(refused.contains("alert"), "{refused}");
        // Plaintext garbage: the handshake fails and only that connection closes.
        let mut g = std::net::TcpStream::connect(match &addr {
            Addr::Tcp(a) => *a,
            Addr::Unix(_) => unreachable!(),
        })
        .unwrap();
        g.write_all(b"VSCD\0\0\0\0 not a TLS record at all")
            .unwrap();
        let mut b = Vec::new();
        let _ = g.read_to_end(&mut b);
        // After all that, a good client still gets through.
        let c = TlsClient::new(&o, &addr).unwrap();
        let accepted = std::thread::spawn(move || l.accept().map(|s| s.peer()));
        let s = Stream::connect_with(&addr, Some(&c)).unwrap();
        assert!(accepted.join().unwrap().unwrap().contains("TLS"));
        drop(s);
    }

    #[test]
    fn stalled_handshakes_are_bounded_and_time_out() {
        let (_d, o) = dir();
        let (l, addr) = tls_listener(&o);
        let a = match &addr {
            Addr::Tcp(a) => *a,
            Addr::Unix(_) => unreachable!(),
        };
        let c = TlsClient::new(&o, &addr).unwrap();
        // Connections that never speak hold a handshake slot each; past the bound, a new
        // connection is closed on arrival.
        let mut stalled: Vec<_> = (0..MAX_HANDSHAKES)
            .map(|_| std::net::TcpStream::connect(a).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let e = Stream::connect_with(&addr, Some(&c)).unwrap_err();
        assert!(e.contains("TLS handshake"), "{e}");
        // Each stalled handshake is dropped after HANDSHAKE_TIMEOUT.
        let t = std::time::Instant::now();
        let first = &mut stalled[0];
        first
            .set_read_timeout(Some(HANDSHAKE_TIMEOUT + Duration::from_secs(5)))
            .unwrap();
        assert_eq!(first.read(&mut [0u8; 8]).unwrap_or(0), 0);
        assert!(t.elapsed() < HANDSHAKE_TIMEOUT + Duration::from_secs(4));
        // Then a good client gets through.
        let accepted = std::thread::spawn(move || l.accept().is_ok());
        Stream::connect_with(&addr, Some(&c)).unwrap();
        assert!(accepted.join().unwrap());
    }

    #[test]
    fn plaintext_binds_off_loopback_need_the_explicit_flag() {
        let any = Addr::parse("0.0.0.0:0").unwrap();
        let e = Listener::bind(&any, Security::Plaintext).unwrap_err();
        assert!(e.to_string().contains("--insecure-plaintext"), "{e}");
        Listener::bind(&any, Security::InsecurePlaintext).unwrap();
        Listener::bind(&Addr::parse("127.0.0.1:0").unwrap(), Security::Plaintext).unwrap();
    }
}
