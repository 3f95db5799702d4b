//! Addresses of the network links: `HOST:PORT` or `unix:PATH`. A module of its own so that
//! both [`crate::stream`] (which connects and listens) and [`crate::tls`] (which derives the
//! server name to verify from one) use it without depending on each other.

use anyhow::{anyhow, Context, Result};
use std::net::{SocketAddr, ToSocketAddrs};
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
