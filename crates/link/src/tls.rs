//! TLS (rustls) on the network links, with the certificate layout of QEMU's
//! `-object tls-creds-x509,dir=DIR` (`ca-cert.pem`, `server-cert.pem`, `server-key.pem`,
//! `client-cert.pem`, `client-key.pem`), so one directory serves QEMU and us. Mutual TLS is
//! the default: a server asks for a client certificate signed by the CA, as QEMU's
//! `verify-peer=on` does.
//!
//! [`TlsStream`] is a blocking stream that can be cloned: the links read on one thread and
//! write on another, so the rustls state sits behind a mutex, TCP reads happen without it,
//! and writes are serialised by a second lock taken first (one TLS record per message, in
//! order, and a reader never waits for a slow writer). It is generic over the stream under it
//! ([`Transport`]), so this module does not depend on the `stream` module: that one implements
//! `Transport` for its TCP and Unix streams and wraps a `TlsStream` in its `Stream`.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::addr::Addr;
use crate::Error;

/// QEMU's file names in a `tls-creds-x509` directory.
pub const CA_CERT: &str = "ca-cert.pem";
/// The CA's key (written by `vccid tls init` for issuing more; QEMU does not read it).
pub const CA_KEY: &str = "ca-key.pem";
/// The server's certificate.
pub const SERVER_CERT: &str = "server-cert.pem";
/// The server's key.
pub const SERVER_KEY: &str = "server-key.pem";
/// The client's certificate.
pub const CLIENT_CERT: &str = "client-cert.pem";
/// The client's key.
pub const CLIENT_KEY: &str = "client-key.pem";

/// How long a handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes a listener runs at once; more connections are closed on arrival, so stalled
/// handshakes cannot pile up.
pub const MAX_HANDSHAKES: usize = 8;

/// TLS settings from the command line.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// The `tls-creds-x509` directory.
    pub dir: PathBuf,
    /// Servers require a client certificate (QEMU's `verify-peer`); default true.
    pub verify_peer: bool,
    /// The name a client checks in the server's certificate (default: the host it connects
    /// to, as QEMU does; `localhost` for Unix sockets).
    pub server_name: Option<String>,
    /// Called with each certificate file's path and its first certificate (DER) as it is
    /// loaded: the program warns there of certificates that have expired or soon will, which
    /// takes an X.509 parser this crate does without.
    pub on_certificate: Option<fn(&str, &[u8])>,
}

impl TlsOptions {
    fn certs(&self, path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
        let v: Vec<_> = CertificateDer::pem_file_iter(path)
            .map_err(|cause| Error::ReadPem {
                path: path.to_path_buf(),
                cause,
            })?
            .collect::<Result<_, _>>()
            .map_err(|cause| Error::BadPem {
                path: path.to_path_buf(),
                cause,
            })?;
        let Some(first) = v.first() else {
            return Err(Error::NoCertificate(path.to_path_buf()));
        };
        if let Some(check) = self.on_certificate {
            check(&path.display().to_string(), first);
        }
        Ok(v)
    }

    fn roots(&self) -> Result<rustls::RootCertStore, Error> {
        let path = self.dir.join(CA_CERT);
        let mut roots = rustls::RootCertStore::empty();
        for c in self.certs(&path)? {
            roots.add(c).map_err(|cause| Error::BadCa {
                path: path.clone(),
                cause,
            })?;
        }
        Ok(roots)
    }

    /// The server side: `server-cert.pem` + `server-key.pem`, clients verified against
    /// `ca-cert.pem` when `verify_peer`.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, Error> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(Error::Tls)?;
        let builder = if self.verify_peer {
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(self.roots()?))
                .build()
                .map_err(Error::ClientVerifier)?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let (cert, key_file) = (self.dir.join(SERVER_CERT), self.dir.join(SERVER_KEY));
        let cfg = builder
            .with_single_cert(self.certs(&cert)?, key(&key_file)?)
            .map_err(|cause| Error::KeyMismatch {
                key: key_file,
                cert,
                cause,
            })?;
        Ok(Arc::new(cfg))
    }

    /// The client side: the server verified against `ca-cert.pem`; `client-cert.pem` +
    /// `client-key.pem` presented when present (QEMU's `verify-peer=on` servers need them).
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, Error> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(Error::Tls)?
            .with_root_certificates(self.roots()?);
        let (cert, key_file) = (self.dir.join(CLIENT_CERT), self.dir.join(CLIENT_KEY));
        let cfg = if cert.exists() {
            builder
                .with_client_auth_cert(self.certs(&cert)?, key(&key_file)?)
                .map_err(|cause| Error::KeyMismatch {
                    key: key_file,
                    cert,
                    cause,
                })?
        } else {
            builder.with_no_client_auth()
        };
        Ok(Arc::new(cfg))
    }

    /// The name to verify for a connection to `addr`.
    pub fn server_name_for(&self, addr: &Addr) -> Result<ServerName<'static>, Error> {
        let name = match (&self.server_name, addr) {
            (Some(n), _) => n.clone(),
            (None, Addr::Tcp(a)) => a.ip().to_string(),
            (None, Addr::Unix(_)) => "localhost".into(),
        };
        ServerName::try_from(name.clone()).map_err(|_| Error::ServerName(name))
    }
}

/// Reads a private key, refusing a file that group or others may read or write (issue #17):
/// a key others can read is no longer private, one they can write can be replaced. Refused
/// rather than fixed, as OpenSSH refuses an "UNPROTECTED PRIVATE KEY FILE", so that the user
/// learns the key may have been exposed. The card crate's key stores refuse theirs in the same
/// words (`card::keystore::exposed`; link sits below the cards and cannot share it).
fn key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let no_key = |cause| Error::NoKey {
        path: path.to_path_buf(),
        cause,
    };
    let unreadable = |e| no_key(rustls::pki_types::pem::Error::Io(e));
    let file = std::fs::File::open(path).map_err(unreadable)?;
    // The mode of the file opened (fstat), not of whatever the name points to later.
    let meta = file.metadata().map_err(unreadable)?;
    if let Some(why) = exposed(path, &meta) {
        return Err(Error::KeyExposed {
            path: path.to_path_buf(),
            why,
        });
    }
    PrivateKeyDer::from_pem_reader(io::BufReader::new(file)).map_err(no_key)
}

/// Why a private-key file must not be used as it is (group or others may read or write it),
/// with the fix; `None` when only its owner may.
pub fn exposed(path: &Path, meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    let how = match (mode & 0o044 != 0, mode & 0o022 != 0) {
        (false, false) => return None,
        (true, false) => "readable",
        (false, true) => "writable",
        (true, true) => "readable and writable",
    };
    Some(format!(
        "{how} by others (mode {mode:04o}): chmod 600 {}",
        path.display()
    ))
}

/// rustls with AWS-LC, key exchange by X25519 then P-256 (GnuTLS, so QEMU, has both).
/// rustls's default puts the X25519+ML-KEM-768 hybrid first, whose key generation cost
/// 50-60 ms on the first handshake here (measured by `vscard_bench`), three times the
/// 20 ms budget for a handshake and the first APDU; the link's keys live for one session.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::aws_lc_rs::{cipher_suite as cs, default_provider, kx_group};
    Arc::new(rustls::crypto::CryptoProvider {
        kx_groups: vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1],
        // AES-128-GCM first: the messages are small, and its key schedule is the cheaper.
        cipher_suites: vec![
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ],
        ..default_provider()
    })
}

struct State {
    conn: rustls::Connection,
    /// Received TLS bytes rustls has not taken yet (it holds at most 16 KiB of plaintext).
    rx: Vec<u8>,
    eof: bool,
}

/// What a [`TlsStream`] needs from the byte stream under it (a TCP or Unix stream): reads and
/// writes through a shared reference, as `&TcpStream` allows (the reader of one handle blocks
/// in a read while another handle writes), a way to wake that reader, the handshake's
/// timeouts, and the peer for logs.
pub trait Transport {
    /// Reads what has arrived, blocking until something has (0 at the end).
    fn read_shared(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes some of `buf` (as [`Write::write`]).
    fn write_shared(&self, buf: &[u8]) -> io::Result<usize>;
    /// Shuts both directions (wakes a reader blocked on another handle).
    fn shutdown(&self);
    /// Read and write timeouts (`None`: block).
    fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()>;
    /// The peer, for logs.
    fn peer(&self) -> String;
}

/// A shared handle as `Read + Write`, for rustls's `complete_io` and `write_tls`.
struct Shared<'a, S>(&'a S);

impl<S: Transport> Read for Shared<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read_shared(buf)
    }
}

impl<S: Transport> Write for Shared<'_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_shared(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A TLS connection over a TCP or Unix stream `S`; clones share it.
pub struct TlsStream<S> {
    raw: Arc<S>,
    state: Arc<Mutex<State>>,
    write_lock: Arc<Mutex<()>>,
    /// This handle's buffer for socket reads (made on its first read).
    chunk: Vec<u8>,
}

impl<S> Clone for TlsStream<S> {
    fn clone(&self) -> Self {
        TlsStream {
            raw: self.raw.clone(),
            state: self.state.clone(),
            write_lock: self.write_lock.clone(),
            chunk: Vec::new(),
        }
    }
}

impl<S: Transport> std::fmt::Debug for TlsStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsStream({})", self.raw.peer())
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// One line for a failed handshake.
pub fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("no handshake within {} s", HANDSHAKE_TIMEOUT.as_secs())
        }
        io::ErrorKind::UnexpectedEof => {
            "the peer closed the connection during the handshake".into()
        }
        _ => e.to_string(),
    }
}

impl<S: Transport> TlsStream<S> {
    fn handshake(raw: S, conn: rustls::Connection) -> io::Result<TlsStream<S>> {
        raw.set_timeouts(Some(HANDSHAKE_TIMEOUT))?;
        let mut conn = conn;
        let mut io = Shared(&raw);
        while conn.is_handshaking() {
            match conn.complete_io(&mut io) {
                Ok((0, 0)) if conn.is_handshaking() => {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"))
                }
                Ok(_) => {}
                Err(e) => {
                    // Send our alert (bad certificate, unknown CA) before closing.
                    let _ = conn.write_tls(&mut io);
                    return Err(e);
                }
            }
        }
        while conn.wants_write() {
            conn.write_tls(&mut io)?;
        }
        raw.set_timeouts(None)?;
        Ok(TlsStream {
            raw: Arc::new(raw),
            state: Arc::new(Mutex::new(State {
                conn,
                rx: Vec::new(),
                eof: false,
            })),
            write_lock: Arc::new(Mutex::new(())),
            chunk: Vec::new(),
        })
    }

    /// The server side of a handshake on an accepted stream.
    pub fn accept(raw: S, config: Arc<rustls::ServerConfig>) -> io::Result<TlsStream<S>> {
        let conn = rustls::ServerConnection::new(config).map_err(invalid)?;
        Self::handshake(raw, conn.into())
    }

    /// The client side of a handshake on a connected stream.
    pub fn connect(
        raw: S,
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<TlsStream<S>> {
        let conn = rustls::ClientConnection::new(config, name).map_err(invalid)?;
        Self::handshake(raw, conn.into())
    }

    /// The underlying stream (for timeouts and the peer's address).
    pub fn raw(&self) -> &S {
        &self.raw
    }

    /// Ends the connection cleanly: close_notify, then both directions shut (which also
    /// wakes a reader blocked on another handle).
    pub fn close(&self) {
        self.lock().conn.send_close_notify();
        let _ = self.send_queued();
        self.raw.shutdown();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends what rustls has queued (alerts, key updates, session tickets, records).
    fn send_queued(&self) -> io::Result<()> {
        let _w = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        {
            let mut s = self.lock();
            while s.conn.wants_write() {
                s.conn.write_tls(&mut out)?;
            }
        }
        Shared(&*self.raw).write_all(&out)
    }
}

impl<S: Transport> Read for TlsStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.chunk.is_empty() {
            // One TLS record (16 KiB of plaintext plus overhead) per socket read at most.
            self.chunk = vec![0u8; 18 * 1024];
        }
        loop {
            let mut s = self.lock();
            match s.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if !s.rx.is_empty() || s.eof {
                let State { conn, rx, eof } = &mut *s;
                let at_end = *eof && rx.is_empty();
                let used = if at_end {
                    conn.read_tls(&mut io::empty())?
                } else {
                    conn.read_tls(&mut &rx[..])?
                };
                rx.drain(..used);
                conn.process_new_packets().map_err(invalid)?;
                let wants_write = conn.wants_write();
                if at_end {
                    // Whatever the last records held, then the end: clean (close_notify) or
                    // not (rustls reports UnexpectedEof).
                    let r = match conn.reader().read(buf) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                        other => other,
                    };
                    drop(s);
                    if wants_write {
                        let _ = self.send_queued();
                    }
                    return r;
                }
                drop(s);
                if wants_write {
                    self.send_queued()?;
                }
                // Back to the top: the records just taken may hold plaintext.
                continue;
            }
            drop(s);
            // Block on the socket without holding the state: writers go on meanwhile.
            let n = Shared(&*self.raw).read(&mut self.chunk)?;
            let mut s = self.lock();
            if n == 0 {
                s.eof = true;
            } else {
                s.rx.extend_from_slice(&self.chunk[..n]);
            }
        }
    }
}

impl<S: Transport> Write for TlsStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _w = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::with_capacity(buf.len() + 64);
        {
            let mut s = self.lock();
            // rustls takes at most its buffer limit (64 KiB) of plaintext at a time; encrypt
            // as we go.
            let mut off = 0;
            while off < buf.len() {
                let n = s.conn.writer().write(&buf[off..])?;
                off += n;
                let mut drained = false;
                while s.conn.wants_write() {
                    s.conn.write_tls(&mut out)?;
                    drained = true;
                }
                if n == 0 && !drained {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "TLS writer stalled",
                    ));
                }
            }
        }
        Shared(&*self.raw).write_all(&out)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
