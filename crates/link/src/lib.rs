//! The links every transport runs on (issue #14): byte streams (TCP, Unix, either under TLS),
//! their addresses and listeners, and the three loops that used to be written once per
//! transport:
//!
//! - [`pump`]: THE session pump. A reader thread turns a stream into messages on a bounded
//!   channel; wake-ups (a card answered, a card inserted or removed) arrive on the same
//!   channel through a [`pump::Waker`]; the session thread sleeps on that channel and hands
//!   each message to a sans-IO [`pump::Protocol`]. usbredir and USB/IP sessions run on it.
//! - [`accept`]: THE accept loop, serving connections in turn or on threads of their own (at
//!   most so many at once), pausing after a failed accept.
//! - [`retry`]: THE connect-with-retry loop and its [`retry::Backoff`], for the clients that
//!   come back when their peer restarts (`--usbredir-connect`, vpcd, vscclient).
//!
//! Errors are [`Error`]: one line each, naming the address or file concerned.
#![warn(missing_docs)]

pub mod accept;
pub mod addr;
pub mod pump;
pub mod retry;
pub mod stream;
pub mod tls;

pub use addr::Addr;
pub use stream::{ListenSecurity, Listener, Security, Stream, TlsClient};

use std::io;
use std::path::PathBuf;

/// What can go wrong setting a link up. Each message is one line for the user and already
/// holds its cause (so a program printing the chain does not say it twice).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An address that is neither `HOST:PORT` nor `unix:PATH`.
    #[error("bad address {text:?} (expected HOST:PORT or unix:PATH): {cause}")]
    BadAddress {
        /// What was given.
        text: String,
        /// Why it did not parse or resolve.
        cause: io::Error,
    },
    /// A host name with no address.
    #[error("address {0:?} resolves to nothing")]
    Unresolved(String),
    /// Binding a listener failed.
    #[error("cannot listen on {addr}: {cause}")]
    Bind {
        /// Where.
        addr: Addr,
        /// Why.
        cause: io::Error,
    },
    /// A Unix socket could not be made private.
    #[error("cannot set mode 0600 on {}: {cause}", path.display())]
    Permissions {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        cause: io::Error,
    },
    /// Plaintext on an address other machines reach, without the explicit permission.
    #[error(
        "refusing to listen in plaintext on {0}, which is not loopback: anyone who reaches it \
         could use the link unauthenticated and read it. Use --tls DIR, a loopback or unix: \
         address, or --insecure-plaintext"
    )]
    Plaintext(Addr),
    /// A thread the link needs could not start.
    #[error("cannot start the {what} thread: {cause}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// Why.
        cause: io::Error,
    },
    /// Connecting failed (the peer is not there, refused, unreachable).
    #[error("{0}")]
    Connect(io::Error),
    /// The TLS handshake after connecting failed.
    #[error("TLS handshake with {addr} failed: {}", tls::describe(cause))]
    Handshake {
        /// The peer.
        addr: Addr,
        /// Why (rustls's verdicts are [`io::ErrorKind::InvalidData`]).
        cause: io::Error,
    },
    /// A PEM file could not be read.
    #[error("cannot read {}: {cause}", path.display())]
    ReadPem {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: rustls::pki_types::pem::Error,
    },
    /// A PEM file holds something that is not PEM.
    #[error("bad PEM in {}: {cause}", path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: rustls::pki_types::pem::Error,
    },
    /// A certificate file without a certificate.
    #[error("no certificate in {}", .0.display())]
    NoCertificate(PathBuf),
    /// A key file without a usable private key.
    #[error("no private key in {}: {cause}", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: rustls::pki_types::pem::Error,
    },
    /// A private-key file that group or others may read or write.
    #[error("refusing private key {}: {why}", path.display())]
    KeyExposed {
        /// The file.
        path: PathBuf,
        /// Who may read or write it, and the fix.
        why: String,
    },
    /// The CA certificate is not one rustls accepts as a trust anchor.
    #[error("bad CA certificate in {}: {cause}", path.display())]
    BadCa {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: rustls::Error,
    },
    /// A key that is not the certificate's.
    #[error("{} does not match {}: {cause}", key.display(), cert.display())]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
        /// rustls's verdict.
        cause: rustls::Error,
    },
    /// rustls refused the configuration.
    #[error("TLS: {0}")]
    Tls(rustls::Error),
    /// The client certificate verifier could not be built from the CA.
    #[error("client verification: {0}")]
    ClientVerifier(rustls::server::VerifierBuilderError),
    /// A name that cannot be a TLS server name.
    #[error("bad TLS server name {0:?}")]
    ServerName(String),
}

impl Error {
    /// A certificate refused by either side during the handshake (an unknown CA, an expired
    /// or mismatched certificate, an alert from the peer): trying again cannot help. A peer
    /// that closed, reset or timed out during the handshake is not a refusal.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Error::Handshake { cause, .. } if cause.kind() == io::ErrorKind::InvalidData)
    }
}
