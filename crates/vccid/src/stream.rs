//! Byte streams for the network links: TCP (with TCP_NODELAY, every message in one write) or a
//! Unix socket (created 0600). Addresses are `HOST:PORT` or `unix:PATH`.

use anyhow::{anyhow, Context, Result};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

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
    /// Another handle to the same stream.
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }
    /// Shuts both directions (wakes a reader blocked on another handle).
    pub fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
    /// The peer, for logs.
    pub fn peer(&self) -> String {
        match self {
            Stream::Tcp(s) => s
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into()),
            Stream::Unix(_) => "unix peer".into(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A listening socket.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix, and the path to remove on drop.
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Binds; a Unix socket replaces a stale one and is made 0600.
    pub fn bind(addr: &Addr) -> Result<Listener> {
        Ok(match addr {
            Addr::Tcp(a) => Listener::Tcp(
                TcpListener::bind(a).with_context(|| format!("cannot listen on {a}"))?,
            ),
            Addr::Unix(p) => {
                let _ = std::fs::remove_file(p);
                let l = UnixListener::bind(p)
                    .with_context(|| format!("cannot listen on {}", p.display()))?;
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))?;
                Listener::Unix(l, p.clone())
            }
        })
    }
    /// Accepts one connection; TCP gets TCP_NODELAY.
    pub fn accept(&self) -> io::Result<Stream> {
        Ok(match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
            Listener::Unix(l, _) => Stream::Unix(l.accept()?.0),
        })
    }
    /// The bound address (the real port for port 0).
    pub fn local_addr(&self) -> Addr {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(Addr::Tcp)
                .unwrap_or(Addr::Unix(PathBuf::new())),
            Listener::Unix(_, p) => Addr::Unix(p.clone()),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
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
