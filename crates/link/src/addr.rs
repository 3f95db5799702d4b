//! Addresses of the network links: `HOST:PORT` or `unix:PATH`. A module of its own so that
//! both [`crate::stream`] (which connects and listens) and [`crate::tls`] (which derives the
//! server name to verify from one) use it without depending on each other.

use crate::Error;
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
    pub fn parse(s: &str) -> Result<Addr, Error> {
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(Addr::Unix(PathBuf::from(p)));
        }
        let a = s
            .to_socket_addrs()
            .map_err(|cause| Error::BadAddress {
                text: s.to_string(),
                cause,
            })?
            .next()
            .ok_or_else(|| Error::Unresolved(s.to_string()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_and_unix_and_says_what_is_wrong() {
        assert_eq!(
            Addr::parse("unix:/run/x.sock").unwrap(),
            Addr::Unix("/run/x.sock".into())
        );
        let a = Addr::parse("127.0.0.1:4000").unwrap();
        assert!(a.is_local());
        assert_eq!(a.to_string(), "127.0.0.1:4000");
        assert!(!Addr::parse("192.0.2.1:1").unwrap().is_local());
        let e = Addr::parse("no-port").unwrap_err().to_string();
        assert!(
            e.starts_with("bad address \"no-port\" (expected HOST:PORT or unix:PATH): "),
            "{e}"
        );
    }
}
