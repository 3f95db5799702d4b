//! Byte streams for the network links: TCP (with TCP_NODELAY, every message in one write) or a
//! Unix socket (created 0600), either one optionally under TLS ([`crate::tls`]). Addresses are
//! `HOST:PORT` or `unix:PATH` ([`Addr`], from [`crate::addr`]).
//!
//! The dependencies point one way: this module uses [`crate::tls`], whose [`TlsStream`] is
//! generic over the stream under it ([`tls::Transport`], implemented here for [`Stream`]), so
//! `tls` knows nothing of this module.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::Duration;

use crate::accept::{self, Peer};
pub use crate::addr::Addr;
use crate::tls::{self, TlsStream};
use crate::Error;

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
    /// CA, our client certificate presented).
    pub fn connect_with(addr: &Addr, tls: Option<&TlsClient>) -> Result<Stream, Error> {
        let raw = Stream::connect(addr).map_err(Error::Connect)?;
        match tls {
            None => Ok(raw),
            Some(t) => TlsStream::connect(raw, t.config.clone(), t.name.clone())
                .map(Stream::Tls)
                .map_err(|cause| Error::Handshake {
                    addr: addr.clone(),
                    cause,
                }),
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

impl Peer for Stream {
    fn peer(&self) -> String {
        Stream::peer(self)
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
    pub fn new(opts: &tls::TlsOptions, addr: &Addr) -> Result<TlsClient, Error> {
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
    pub fn bind(&self, addr: &Addr) -> Result<Listener, Error> {
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

fn bind_raw(addr: &Addr) -> Result<Inner, Error> {
    let bind = |cause| Error::Bind {
        addr: addr.clone(),
        cause,
    };
    Ok(match addr {
        Addr::Tcp(a) => Inner::Tcp(TcpListener::bind(a).map_err(bind)?),
        Addr::Unix(p) => {
            let _ = std::fs::remove_file(p);
            let l = UnixListener::bind(p).map_err(bind)?;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).map_err(
                |cause| Error::Permissions {
                    path: p.clone(),
                    cause,
                },
            )?;
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
    pub fn bind(addr: &Addr, security: Security) -> Result<Listener, Error> {
        let warn_plaintext = !addr.is_local();
        if warn_plaintext && security != Security::InsecurePlaintext {
            return Err(Error::Plaintext(addr.clone()));
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
    pub fn bind_tls(addr: &Addr, config: Arc<rustls::ServerConfig>) -> Result<Listener, Error> {
        let raw = bind_raw(addr)?;
        let local = local_of(&raw, addr);
        let path = match &raw {
            Inner::Unix(_, p) => Some(p.clone()),
            _ => None,
        };
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name("tls-accept".into())
            .spawn(move || {
                accept::on_threads(
                    "TLS handshake",
                    "tls-handshake",
                    tls::MAX_HANDSHAKES,
                    || accept_raw(&raw),
                    move |s: Stream| {
                        let peer = s.peer();
                        match TlsStream::accept(s, config.clone()) {
                            Ok(t) => {
                                tracing::debug!(%peer, "TLS handshake done");
                                let _ = tx.send(Stream::Tls(t));
                            }
                            Err(e) => {
                                tracing::warn!(%peer, "TLS handshake refused: {}", tls::describe(&e))
                            }
                        }
                    },
                )
            })
            .map_err(|cause| Error::Thread {
                what: "TLS accept",
                cause,
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

#[cfg(test)]
mod tests {
    //! Plaintext here; TLS over these streams is tested in `vccid` (`tls_init.rs`), which has
    //! the certificate generator.
    use super::*;

    #[test]
    fn plaintext_binds_off_loopback_need_the_explicit_flag() {
        let any = Addr::parse("0.0.0.0:0").unwrap();
        let e = Listener::bind(&any, Security::Plaintext).unwrap_err();
        assert!(e.to_string().contains("--insecure-plaintext"), "{e}");
        Listener::bind(&any, Security::InsecurePlaintext).unwrap();
        Listener::bind(&Addr::parse("127.0.0.1:0").unwrap(), Security::Plaintext).unwrap();
    }

    #[test]
    fn unix_listeners_are_private_and_round_trip() {
        let d = std::env::temp_dir().join(format!("link-stream-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let addr = Addr::Unix(d.join("s.sock"));
        let l = Listener::bind(&addr, Security::Plaintext).unwrap();
        let Addr::Unix(p) = l.local_addr() else {
            panic!("not a unix address");
        };
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let server = std::thread::spawn(move || {
            let mut s = l.accept().unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            s.write_all(&buf).unwrap();
            l
        });
        let mut c = Stream::connect(&addr).unwrap();
        c.write_all(b"hello").unwrap();
        let mut back = [0u8; 5];
        c.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"hello");
        drop(server.join().unwrap());
        assert!(!p.exists(), "the socket file goes with its listener");
        let e = Listener::bind(
            &Addr::Unix(d.join("no/such/dir/s.sock")),
            Security::Plaintext,
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("cannot listen on unix:"), "{e}");
        let _ = std::fs::remove_dir_all(d);
    }
}
