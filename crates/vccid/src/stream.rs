//! Byte streams for the network links: TCP (with TCP_NODELAY, every message in one write) or a
//! Unix socket (created 0600), either one optionally under TLS ([`crate::tls`]). Addresses are
//! `HOST:PORT` or `unix:PATH`.

use anyhow::{anyhow, bail, Context, Result};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::Duration;

use crate::tls::{self, TlsStream};

/// Where to listen or connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    /// TCP.
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl Addr {
    /// `unix:PATH` or `HOST:PORT`.
    pub fn parse(s: &str) -> Result<Addr> {
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(Addr::Unix(PathBuf::from(p)));
        }
        let a = s
            .to_socket_addrs()
            .with_context(|| format!("bad address {s:?} (expected HOST:PORT or unix:PATH)"))?
            .next()
            .ok_or_else(|| anyhow!("address {s:?} resolves to nothing"))?;
        Ok(Addr::Tcp(a))
    }

    /// Whether only this machine can reach it.
    pub fn is_local(&self) -> bool {
        match self {
            Addr::Tcp(a) => a.ip().is_loopback(),
            Addr::Unix(_) => true,
        }
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Tcp(a) => write!(f, "{a}"),
            Addr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A connected stream.
#[derive(Debug)]
pub enum Stream {
    /// TCP.
    Tcp(TcpStream),
    /// Unix.
    Unix(UnixStream),
    /// TLS over one of the others.
    Tls(TlsStream),
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
