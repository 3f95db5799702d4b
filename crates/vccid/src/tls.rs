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

use anyhow::{anyhow, bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::addr::Addr;

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
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let v: Vec<_> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("bad PEM in {}", path.display()))?;
    if v.is_empty() {
        bail!("no certificate in {}", path.display());
    }
    crate::expiry::warn(&path.display().to_string(), &v[0]);
    Ok(v)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("no private key in {}", path.display()))
}

fn roots(dir: &Path) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&dir.join(CA_CERT))? {
        roots
            .add(c)
            .with_context(|| format!("bad CA certificate in {}", dir.join(CA_CERT).display()))?;
    }
    Ok(roots)
}

impl TlsOptions {
    /// The server side: `server-cert.pem` + `server-key.pem`, clients verified against
    /// `ca-cert.pem` when `verify_peer`.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow!("TLS: {e}"))?;
        let builder = if self.verify_peer {
            let verifier =
                rustls::server::WebPkiClientVerifier::builder(Arc::new(roots(&self.dir)?))
                    .build()
                    .map_err(|e| anyhow!("client verification: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let cfg = builder
            .with_single_cert(
                certs(&self.dir.join(SERVER_CERT))?,
                key(&self.dir.join(SERVER_KEY))?,
            )
            .with_context(|| format!("{} does not match {}", SERVER_KEY, SERVER_CERT))?;
        Ok(Arc::new(cfg))
    }

    /// The client side: the server verified against `ca-cert.pem`; `client-cert.pem` +
    /// `client-key.pem` presented when present (QEMU's `verify-peer=on` servers need them).
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow!("TLS: {e}"))?
            .with_root_certificates(roots(&self.dir)?);
        let cert = self.dir.join(CLIENT_CERT);
        let cfg = if cert.exists() {
            builder
                .with_client_auth_cert(certs(&cert)?, key(&self.dir.join(CLIENT_KEY))?)
                .with_context(|| format!("{} does not match {}", CLIENT_KEY, CLIENT_CERT))?
        } else {
            builder.with_no_client_auth()
        };
        Ok(Arc::new(cfg))
    }

    /// The name to verify for a connection to `addr`.
    pub fn server_name_for(&self, addr: &Addr) -> Result<ServerName<'static>> {
        let name = match (&self.server_name, addr) {
            (Some(n), _) => n.clone(),
            (None, Addr::Tcp(a)) => a.ip().to_string(),
            (None, Addr::Unix(_)) => "localhost".into(),
        };
        ServerName::try_from(name.clone()).map_err(|_| anyhow!("bad TLS server name {name:?}"))
    }
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

/// Generates a `tls-creds-x509` directory: a CA, a server certificate for `names` and `ips`,
/// a client certificate; ECDSA P-256 keys at mode 0600. Refuses to overwrite unless `force`.
pub fn init(dir: &Path, names: &[String], ips: &[IpAddr], days: u32, force: bool) -> Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let files = [
        CA_CERT,
        CA_KEY,
        SERVER_CERT,
        SERVER_KEY,
        CLIENT_CERT,
        CLIENT_KEY,
    ];
    if !force {
        if let Some(f) = files.iter().find(|f| dir.join(f).exists()) {
            bail!(
                "{} exists; remove it or pass --force to replace the whole set",
                dir.join(f).display()
            );
        }
    }
    let now = time::OffsetDateTime::now_utc();
    // An hour back: QEMU refuses certificates whose activation time is in the future, and
    // clocks differ a little.
    let not_before = now - time::Duration::hours(1);
    let not_after = now + time::Duration::days(i64::from(days));
    let base = |cn: &str| -> Result<CertificateParams> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::OrganizationName, "vccid");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.not_before = not_before;
        p.not_after = not_after;
        let mut serial = [0u8; 16];
        aws_lc_rs::rand::fill(&mut serial).map_err(|_| anyhow!("no random numbers"))?;
        serial[0] &= 0x7F;
        p.serial_number = Some(rcgen::SerialNumber::from(serial.to_vec()));
        Ok(p)
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = base("vccid CA")?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, &ca_key);
    // GnuTLS (QEMU) checks a critical keyUsage for both of these, whatever the key type.
    let leaf_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let server_key = KeyPair::generate()?;
    let mut server = base(names.first().map_or("localhost", |s| s.as_str()))?;
    server.subject_alt_names = names
        .iter()
        .map(|n| Ok(SanType::DnsName(n.clone().try_into()?)))
        .chain(ips.iter().map(|ip| Ok(SanType::IpAddress(*ip))))
        .collect::<Result<Vec<_>>>()?;
    server.key_usages = leaf_usages.clone();
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server.signed_by(&server_key, &issuer)?;
    let client_key = KeyPair::generate()?;
    let mut client = base("vccid client")?;
    client.key_usages = leaf_usages;
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &issuer)?;
    let write = |name: &str, text: &str, mode: u32| -> Result<()> {
        card::keystore::write_atomic(&dir.join(name), text.as_bytes(), mode)
            .with_context(|| format!("cannot write {}", dir.join(name).display()))
    };
    write(CA_CERT, &ca_cert.pem(), 0o644)?;
    write(CA_KEY, &ca_key.serialize_pem(), 0o600)?;
    write(SERVER_CERT, &server_cert.pem(), 0o644)?;
    write(SERVER_KEY, &server_key.serialize_pem(), 0o600)?;
    write(CLIENT_CERT, &client_cert.pem(), 0o644)?;
    write(CLIENT_KEY, &client_key.serialize_pem(), 0o600)?;
    Ok(())
}

/// The QEMU and libvirt lines that use a `tls init` directory.
pub fn usage_lines(dir: &Path, host: &str) -> String {
    usage_lines_for(dir, host, &crate::qemu::Installed::detect())
}

/// [`usage_lines`] for a given QEMU (its reconnect syntax; see [`crate::usb::attach_lines_for`]
/// for the xHCI controller). QEMU's own usb-ccid goes on the machine's default controller
/// (`-usb`: UHCI or EHCI), because it misbehaves on xHCI (the README's "The USB reader").
pub fn usage_lines_for(dir: &Path, host: &str, qemu: &crate::qemu::Installed) -> String {
    let d = dir.display();
    let reconnect = qemu.reconnect().option();
    let note = qemu.note();
    format!(
        "{note}\n\
         QEMU, vccid --usbredir --tls {d} listening (QEMU is the TLS client):\n\
         \x20 -object tls-creds-x509,id=tls0,endpoint=client,dir={d}\n\
         \x20 -device qemu-xhci,id=xhci -chardev socket,id=vccid0,host={host},port=4000,{reconnect},nodelay=on,tls-creds=tls0 -device usb-redir,chardev=vccid0,bus=xhci.0\n\
         QEMU passthru, vscclient --tls {d} connecting (QEMU is the TLS server, client certificates required):\n\
         \x20 -object tls-creds-x509,id=tls0,endpoint=server,verify-peer=on,dir={d}\n\
         \x20 -chardev socket,id=ccid0,host={host},port=2001,server=on,wait=off,tls-creds=tls0\n\
         \x20 -usb -device usb-ccid -device ccid-card-passthru,chardev=ccid0\n\
         libvirt (TLS for chardevs is set in /etc/libvirt/qemu.conf):\n\
         \x20 chardev_tls = 1\n\
         \x20 chardev_tls_x509_cert_dir = \"{d}\"\n\
         \x20 chardev_tls_x509_verify = 1\n\
         libvirt usbredir, in <devices> (the controller in place of the domain's USB controller):\n\
         \x20 <controller type='usb' index='0' model='qemu-xhci'/>\n\
         \x20 <redirdev bus='usb' type='tcp'><source mode='connect' host='{host}' service='4000' tls='yes'><reconnect enabled='yes' timeout='2'/></source></redirdev>\n\
         libvirt passthru, in <devices>:\n\
         \x20 <smartcard mode='passthrough' type='tcp'><source mode='bind' host='{host}' service='2001' tls='yes'/></smartcard>"
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A fresh `tls init` directory and the options that use it (also for stream.rs's tests).
    pub(crate) fn dir() -> (tempfile::TempDir, TlsOptions) {
        let d = tempfile::tempdir().unwrap();
        init(
            d.path(),
            &["localhost".into()],
            &["127.0.0.1".parse().unwrap()],
            30,
            false,
        )
        .unwrap();
        let o = TlsOptions {
            dir: d.path().to_path_buf(),
            verify_peer: true,
            server_name: None,
        };
        (d, o)
    }

    #[test]
    fn init_writes_qemus_layout_with_private_keys_0600() {
        let (d, _) = dir();
        for (f, mode) in [
            (CA_CERT, 0o644),
            (CA_KEY, 0o600),
            (SERVER_CERT, 0o644),
            (SERVER_KEY, 0o600),
            (CLIENT_CERT, 0o644),
            (CLIENT_KEY, 0o600),
        ] {
            let m = std::fs::metadata(d.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(m & 0o777, mode, "{f}");
        }
        let e = init(d.path(), &["localhost".into()], &[], 30, false).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        init(d.path(), &["localhost".into()], &[], 30, true).unwrap();
    }

    #[test]
    fn usage_lines_follow_the_qemu_version_and_have_controllers() {
        let v = |major, minor| crate::qemu::Installed {
            version: Some(crate::qemu::Version {
                major,
                minor,
                micro: 0,
            }),
        };
        let d = Path::new("/etc/vccid/tls");
        let old = usage_lines_for(d, "192.0.2.10", &v(7, 2));
        assert!(
            old.contains("-device qemu-xhci,id=xhci -chardev socket,id=vccid0,host=192.0.2.10,port=4000,reconnect=2,nodelay=on,tls-creds=tls0 -device usb-redir,chardev=vccid0,bus=xhci.0"),
            "{old}"
        );
        assert!(
            old.contains("-usb -device usb-ccid -device ccid-card-passthru"),
            "{old}"
        );
        assert!(
            old.contains("tls='yes'><reconnect enabled='yes' timeout='2'/></source></redirdev>"),
            "{old}"
        );
        assert!(
            old.contains("<controller type='usb' index='0' model='qemu-xhci'/>"),
            "{old}"
        );
        let new = usage_lines_for(d, "192.0.2.10", &v(9, 2));
        assert!(
            new.contains("port=4000,reconnect-ms=2000,nodelay=on"),
            "{new}"
        );
        assert!(!new.contains("reconnect=2,"), "{new}");
    }
}
