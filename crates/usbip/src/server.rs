//! The USB/IP server (transports.md §2.1, §2.5): exported devices (a reader each, under bus
//! ids 1-1, 1-2, ...), a thread per connection. A connection asks for the device list, or
//! imports a device and becomes its URB channel until the importer leaves; one importer per
//! device at a time (a second gets status 1).
//! The connections come from `link`'s accept loop, and the URB phase runs on `link`'s pump: a
//! reader thread feeds the session; wake-ups (the card answered, a card inserted or removed)
//! arrive on the same channel, so an idle importer costs nothing: pending IN URBs just wait.

use crate::session::UrbSession;
use crate::{parse_op, rep_devlist, rep_import, Device, OpRequest, UsbipError};
use ccid::usb::UsbDevice;
use link::accept::{self, Peer};
use link::pump::{self, Ended, Protocol};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::Duration;

/// Connections served at once; more are closed on arrival (each holds a thread). One server
/// may export many readers (`vccid serve` puts every USB/IP reader of an address on one), and
/// each importer holds a connection.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a connection may take to send its operation request.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// Wakes an importer's session so it completes what the device can now answer.
pub use link::pump::Waker;

/// The record `usbip list` and `usbip attach` see, read from the device's own descriptors.
pub fn record_of(dev: &dyn UsbDevice, busid: &str) -> Device {
    let d = dev.device_descriptor();
    let b = |i: usize| d.get(i).copied().unwrap_or(0);
    let w = |i: usize| u16::from_le_bytes([b(i), b(i + 1)]);
    let cfg = dev.config_descriptor();
    let mut interfaces = Vec::new();
    let mut i = 0;
    while i + 1 < cfg.len() {
        let len = usize::from(cfg[i]);
        if len < 2 || i + len > cfg.len() {
            break;
        }
        if cfg[i + 1] == 0x04 && len >= 9 {
            interfaces.push((cfg[i + 5], cfg[i + 6], cfg[i + 7]));
        }
        i += len;
    }
    Device {
        path: format!("/sys/devices/platform/vccid/usb1/{busid}"),
        busid: busid.into(),
        busnum: 1,
        devnum: 2,
        // Full speed, as the descriptors say (bcdUSB 1.10, 64-byte bulk packets).
        speed: 2,
        vendor: w(8),
        product: w(10),
        bcd_device: w(12),
        class: (b(4), b(5), b(6)),
        configuration: cfg.get(5).copied().unwrap_or(1),
        num_configurations: b(17),
        interfaces,
    }
}

/// One exported device: its record, the device, and who imports it now.
struct Export {
    record: Device,
    device: Mutex<Box<dyn UsbDevice>>,
    importer: Mutex<Option<SocketAddr>>,
    /// The importer's connection, so that [`Exporter::withdraw`] can end it.
    stream: Mutex<Option<TcpStream>>,
    /// Withdrawn: listed no more, imported no more.
    withdrawn: std::sync::atomic::AtomicBool,
}

/// The exported devices (each under its own bus id, e.g. "1-1", "1-2": a reader each).
pub struct Exporter {
    exports: Vec<Export>,
    warn_plaintext: bool,
}

impl Exporter {
    /// Exports `device` under `busid` (e.g. "1-1").
    pub fn new(busid: &str, device: Box<dyn UsbDevice>) -> Exporter {
        Exporter::with_devices(vec![(busid.to_string(), device)])
    }

    /// Exports each device under its bus id; `usbip list` shows them in this order. Each gets
    /// its own device number (2, 3, ...: the vhci importer puts busnum << 16 | devnum in every
    /// URB header, and two imports from one server must not look alike).
    pub fn with_devices(devices: Vec<(String, Box<dyn UsbDevice>)>) -> Exporter {
        Exporter {
            exports: devices
                .into_iter()
                .enumerate()
                .map(|(i, (busid, device))| {
                    let mut record = record_of(&*device, &busid);
                    record.devnum = 2 + u32::try_from(i).unwrap_or(u32::MAX - 2);
                    Export {
                        record,
                        device: Mutex::new(device),
                        importer: Mutex::new(None),
                        stream: Mutex::new(None),
                        withdrawn: Default::default(),
                    }
                })
                .collect(),
            warn_plaintext: false,
        }
    }

    /// Logs a warning at every connection: for a listener reachable from other machines
    /// (USB/IP has no authentication or encryption).
    pub fn warn_plaintext(mut self, on: bool) -> Exporter {
        self.warn_plaintext = on;
        self
    }

    /// Withdraws the device exported as `busid`: `usbip list` shows it no more, a new import
    /// is refused, and its importer (if any) is disconnected (its kernel sees the device go).
    /// `false` when no such device is exported.
    pub fn withdraw(&self, busid: &str) -> bool {
        let Some(e) = self.exports.iter().find(|e| e.record.busid == busid) else {
            return false;
        };
        e.withdrawn.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(s) = e.stream.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        tracing::info!(%busid, "usbip: device withdrawn");
        true
    }

    fn live(&self) -> impl Iterator<Item = &Export> {
        self.exports
            .iter()
            .filter(|e| !e.withdrawn.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// The device records, in export order.
    pub fn records(&self) -> Vec<&Device> {
        self.exports.iter().map(|e| &e.record).collect()
    }

    /// Accepts connections on `listener` for ever, each on a thread of its own (at most
    /// [`MAX_CONNECTIONS`]). `on_import` runs when an importer takes a device, with the
    /// device's bus id, the importer's address and the session's [`Waker`]; what it returns
    /// is dropped when that importer leaves.
    pub fn run<G, F>(self: Arc<Self>, listener: TcpListener, on_import: F)
    where
        F: Fn(&str, &str, Waker) -> G + Send + Sync + 'static,
        G: 'static,
    {
        accept::on_threads(
            "usbip",
            "usbip-conn",
            MAX_CONNECTIONS,
            || listener.accept().map(|(s, _)| s),
            move |stream: TcpStream| {
                let peer = stream.peer();
                tracing::info!(%peer, "usbip: connection");
                if self.warn_plaintext {
                    tracing::warn!(%peer, "usbip: connection on a non-loopback address: unauthenticated and unencrypted");
                }
                let why = self.serve(stream, &on_import);
                tracing::info!(%peer, "usbip: connection ended: {why}");
            },
        )
    }

    /// Serves one connection to its end; returns why it ended.
    pub fn serve<G>(
        &self,
        mut stream: TcpStream,
        on_import: &dyn Fn(&str, &str, Waker) -> G,
    ) -> ConnectionEnd {
        let peer = stream.peer();
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(OP_TIMEOUT));
        let req = match read_op(&mut stream) {
            Ok(r) => r,
            Err(OpError::Silent) => return ConnectionEnd::NoRequest,
            Err(e) => {
                tracing::warn!(%peer, "usbip: bad operation request: {e}");
                return ConnectionEnd::BadRequest(e);
            }
        };
        let busid = match req {
            OpRequest::DevList => {
                tracing::debug!(%peer, "usbip: device list");
                let records: Vec<Device> = self.live().map(|e| e.record.clone()).collect();
                let _ = stream.write_all(&rep_devlist(&records));
                return ConnectionEnd::DeviceListSent;
            }
            OpRequest::Import(busid) => busid,
        };
        let Some(export) = self.live().find(|e| e.record.busid == busid) else {
            tracing::warn!(%peer, "usbip: import of unknown bus id {busid:?} refused");
            let _ = stream.write_all(&rep_import(None));
            return ConnectionEnd::UnknownBusId(busid);
        };
        let mut dev = match export.device.try_lock() {
            Ok(d) => d,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                let holder = export
                    .importer
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .map_or_else(|| "?".into(), |a| a.to_string());
                tracing::warn!(%peer, %busid, "usbip: import refused: the device is in use by {holder}");
                let _ = stream.write_all(&rep_import(None));
                return ConnectionEnd::InUse(holder);
            }
        };
        *export.importer.lock().unwrap_or_else(|e| e.into_inner()) = stream.peer_addr().ok();
        *export.stream.lock().unwrap_or_else(|e| e.into_inner()) = stream.try_clone().ok();
        tracing::info!(%peer, %busid, "usbip: device imported");
        let why = match stream.write_all(&rep_import(Some(&export.record))) {
            Ok(()) => ConnectionEnd::Imported(urb_phase(stream, &mut **dev, &|w| {
                on_import(&busid, &peer, w)
            })),
            Err(e) => ConnectionEnd::Io(e),
        };
        // The reader outlives its importer: clean state for the next one.
        dev.reset();
        *export.importer.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *export.stream.lock().unwrap_or_else(|e| e.into_inner()) = None;
        why
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionEnd {
    /// The peer closed without a request (a port probe).
    #[error("closed without a request")]
    NoRequest,
    /// The request was not a USB/IP operation request.
    #[error("{0}")]
    BadRequest(OpError),
    /// `usbip list` got its list.
    #[error("device list sent")]
    DeviceListSent,
    /// An import of a bus id that is not exported.
    #[error("unknown bus id {0:?}")]
    UnknownBusId(String),
    /// An import of a device another importer holds (named).
    #[error("device in use by {0}")]
    InUse(String),
    /// An importer took the device; its URB phase ended so.
    #[error("{0}")]
    Imported(Ended),
    /// Writing the reply failed.
    #[error("{0}")]
    Io(std::io::Error),
}

/// What is wrong with an operation request.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// Nothing came before the peer closed.
    #[error("closed without a request")]
    Silent,
    /// The bytes are not a request this server takes.
    #[error("{0}")]
    Bad(UsbipError),
    /// The peer closed in the middle of one.
    #[error("closed before a complete request")]
    Truncated,
    /// Reading failed (or timed out: [`OP_TIMEOUT`]).
    #[error("reading the request: {0}")]
    Io(std::io::Error),
}

/// Reads OP_REQ_DEVLIST or OP_REQ_IMPORT (40 bytes at most).
fn read_op(stream: &mut TcpStream) -> Result<OpRequest, OpError> {
    let mut buf = [0u8; 40];
    let mut have = 0;
    loop {
        match parse_op(&buf[..have]) {
            Ok(Some((req, _))) => return Ok(req),
            Ok(None) => {}
            Err(e) => return Err(OpError::Bad(e)),
        }
        let want = if have < 8 { 8 } else { 40 };
        match stream.read(&mut buf[have..want]) {
            Ok(0) if have == 0 => return Err(OpError::Silent),
            Ok(0) => return Err(OpError::Truncated),
            Ok(n) => have += n,
            Err(e) => return Err(OpError::Io(e)),
        }
    }
}

/// An importer's [`UrbSession`] and the device it drives, as the pump sees them.
struct Driver<'a> {
    session: UrbSession,
    dev: &'a mut dyn UsbDevice,
}

impl Protocol for Driver<'_> {
    type Error = UsbipError;
    fn on_bytes(&mut self, bytes: &[u8]) -> Result<Vec<u8>, UsbipError> {
        self.session.on_bytes(bytes, self.dev)
    }
    fn on_wake(&mut self) -> Vec<u8> {
        self.session.poll(self.dev)
    }
}

fn urb_phase<G>(
    stream: TcpStream,
    dev: &mut dyn UsbDevice,
    on_import: &dyn Fn(Waker) -> G,
) -> Ended {
    let peer = stream.peer();
    // Pending URBs may wait for ever (an idle reader): no read timeout from here on. But an
    // importer whose machine vanishes without a FIN would hold the device for ever, so TCP
    // keepalive probes it (the usbip tool sets SO_KEEPALIVE on its side too): gone after
    // about a minute of silence from its kernel.
    let _ = stream.set_read_timeout(None);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(%peer, "usbip: no TCP keepalive: {e}");
    }
    let reader = match stream.try_clone() {
        Ok(r) => r,
        Err(e) => return Ended::Start(e),
    };
    let mut guard = None;
    let mut driver = Driver {
        session: UrbSession::new(),
        dev,
    };
    let why = pump::run(reader, &stream, &mut driver, |waker| {
        guard = Some(on_import(waker))
    });
    if let Ended::Protocol(e) = &why {
        tracing::warn!(%peer, "usbip: {e}; closing the connection");
    }
    let pending = driver.session.pending();
    if pending > 0 {
        tracing::debug!(%peer, pending, "usbip: importer left with URBs pending; dropped");
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    drop(guard);
    why
}
