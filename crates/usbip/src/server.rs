//! The USB/IP server (transports.md §2.1, §2.5): one exported device, a thread per
//! connection. A connection asks for the device list, or imports the device and becomes its
//! URB channel until the importer leaves; one importer at a time (a second gets status 1).
//! In the URB phase a reader thread feeds the session; wake-ups (the card answered, a card
//! inserted or removed) arrive on the same channel, so an idle importer costs nothing: pending
//! IN URBs just wait.

use crate::session::UrbSession;
use crate::{parse_op, rep_devlist, rep_import, Device, OpRequest};
use ccid::usb::UsbDevice;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::Duration;

/// Connections served at once; more are closed on arrival (each holds a thread).
pub const MAX_CONNECTIONS: usize = 16;
/// How long a connection may take to send its operation request.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);

enum Msg {
    Bytes(Vec<u8>),
    Closed(String),
    Wake,
}

/// Wakes an importer's session so it completes what the device can now answer.
#[derive(Clone)]
pub struct Waker(SyncSender<Msg>);

impl Waker {
    /// Wakes the session; `false` once it has ended.
    pub fn wake(&self) -> bool {
        match self.0.try_send(Msg::Wake) {
            // Full: the session has messages to handle and polls after each.
            Ok(()) | Err(TrySendError::Full(_)) => true,
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

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

/// One exported device.
pub struct Exporter {
    record: Device,
    device: Mutex<Box<dyn UsbDevice>>,
    importer: Mutex<Option<SocketAddr>>,
    connections: AtomicUsize,
    warn_plaintext: bool,
}

impl Exporter {
    /// Exports `device` under `busid` (e.g. "1-1").
    pub fn new(busid: &str, device: Box<dyn UsbDevice>) -> Exporter {
        Exporter {
            record: record_of(&*device, busid),
            device: Mutex::new(device),
            importer: Mutex::new(None),
            connections: AtomicUsize::new(0),
            warn_plaintext: false,
        }
    }

    /// Logs a warning at every connection: for a listener reachable from other machines
    /// (USB/IP has no authentication or encryption).
    pub fn warn_plaintext(mut self, on: bool) -> Exporter {
        self.warn_plaintext = on;
        self
    }

    /// The device record.
    pub fn record(&self) -> &Device {
        &self.record
    }

    /// Accepts connections on `listener` for ever, each on a thread of its own.
    /// `on_import` runs when an importer takes the device and gets the session's [`Waker`];
    /// what it returns is dropped when that importer leaves.
    pub fn run<G, F>(self: Arc<Self>, listener: TcpListener, on_import: F)
    where
        F: Fn(Waker) -> G + Send + Sync + 'static,
        G: 'static,
    {
        let on_import = Arc::new(on_import);
        for conn in listener.incoming() {
            let stream = match conn {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("usbip: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let peer = stream
                .peer_addr()
                .map_or_else(|_| "?".to_string(), |a| a.to_string());
            tracing::info!(%peer, "usbip: connection");
            if self.warn_plaintext {
                tracing::warn!(%peer, "usbip: connection on a non-loopback address: unauthenticated and unencrypted");
            }
            if self.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                self.connections.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!(%peer, "usbip: {MAX_CONNECTIONS} connections already; closing this one");
                continue;
            }
            let (me, on_import, who) = (self.clone(), on_import.clone(), peer.clone());
            let spawned = std::thread::Builder::new()
                .name("usbip-conn".into())
                .spawn(move || {
                    let why = me.serve(stream, &*on_import);
                    tracing::info!(peer = %who, "usbip: connection ended: {why}");
                    me.connections.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                self.connections.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!(%peer, "usbip: cannot start a connection thread: {e}");
            }
        }
    }

    /// Serves one connection to its end; returns why it ended.
    pub fn serve<G>(&self, mut stream: TcpStream, on_import: &dyn Fn(Waker) -> G) -> String {
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string());
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(OP_TIMEOUT));
        let req = match read_op(&mut stream) {
            Ok(r) => r,
            Err(None) => return "closed without a request".into(),
            Err(Some(e)) => {
                tracing::warn!(%peer, "usbip: bad operation request: {e}");
                return e;
            }
        };
        match req {
            OpRequest::DevList => {
                tracing::debug!(%peer, "usbip: device list");
                let _ = stream.write_all(&rep_devlist(std::slice::from_ref(&self.record)));
                "device list sent".into()
            }
            OpRequest::Import(busid) if busid != self.record.busid => {
                tracing::warn!(%peer, "usbip: import of unknown bus id {busid:?} refused");
                let _ = stream.write_all(&rep_import(None));
                format!("unknown bus id {busid:?}")
            }
            OpRequest::Import(_) => {
                let mut dev = match self.device.try_lock() {
                    Ok(d) => d,
                    Err(TryLockError::Poisoned(p)) => p.into_inner(),
                    Err(TryLockError::WouldBlock) => {
                        let holder = self
                            .importer
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .map_or_else(|| "?".into(), |a| a.to_string());
                        tracing::warn!(%peer, "usbip: import refused: the device is in use by {holder}");
                        let _ = stream.write_all(&rep_import(None));
                        return format!("device in use by {holder}");
                    }
                };
                *self.importer.lock().unwrap_or_else(|e| e.into_inner()) = stream.peer_addr().ok();
                tracing::info!(%peer, busid = %self.record.busid, "usbip: device imported");
                let why = match stream.write_all(&rep_import(Some(&self.record))) {
                    Ok(()) => urb_phase(stream, &mut **dev, on_import),
                    Err(e) => e.to_string(),
                };
                // The reader outlives its importer: clean state for the next one.
                dev.reset();
                *self.importer.lock().unwrap_or_else(|e| e.into_inner()) = None;
                why
            }
        }
    }
}

/// Reads OP_REQ_DEVLIST or OP_REQ_IMPORT (40 bytes at most); `Err(None)` when the peer closed
/// without sending anything (a port probe).
fn read_op(stream: &mut TcpStream) -> Result<OpRequest, Option<String>> {
    let mut buf = [0u8; 40];
    let mut have = 0;
    loop {
        match parse_op(&buf[..have]) {
            Ok(Some((req, _))) => return Ok(req),
            Ok(None) => {}
            Err(e) => return Err(Some(e.to_string())),
        }
        let want = if have < 8 { 8 } else { 40 };
        match stream.read(&mut buf[have..want]) {
            Ok(0) if have == 0 => return Err(None),
            Ok(0) => return Err(Some("closed before a complete request".into())),
            Ok(n) => have += n,
            Err(e) => return Err(Some(format!("reading the request: {e}"))),
        }
    }
}

fn urb_phase<G>(
    stream: TcpStream,
    dev: &mut dyn UsbDevice,
    on_import: &dyn Fn(Waker) -> G,
) -> String {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
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
    let (Ok(mut reader), mut writer) = (stream.try_clone(), stream) else {
        return "cannot clone the socket".into();
    };
    // Bounded: a peer that sends faster than the device works is slowed by TCP, not buffered.
    let (tx, rx): (SyncSender<Msg>, Receiver<Msg>) = sync_channel(16);
    let reader_tx = tx.clone();
    let spawned = std::thread::Builder::new()
        .name("usbip-read".into())
        .spawn(move || {
            let mut buf = vec![0u8; 65536];
            loop {
                let msg = match reader.read(&mut buf) {
                    Ok(0) => Msg::Closed("closed by the importer".into()),
                    Ok(n) => Msg::Bytes(buf[..n].to_vec()),
                    Err(e) => Msg::Closed(e.to_string()),
                };
                let last = matches!(msg, Msg::Closed(_));
                if reader_tx.send(msg).is_err() || last {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        return format!("cannot start the reader thread: {e}");
    }
    let guard = on_import(Waker(tx));
    let mut session = UrbSession::new();
    let why = loop {
        let out = match rx.recv() {
            Ok(Msg::Bytes(b)) => match session.on_bytes(&b, dev) {
                Ok(out) => out,
                Err(e) => {
                    tracing::warn!(%peer, "usbip: {e}; closing the connection");
                    break format!("{e}");
                }
            },
            Ok(Msg::Wake) => session.poll(dev),
            Ok(Msg::Closed(why)) => break why,
            Err(_) => break "reader gone".into(),
        };
        if !out.is_empty() {
            if let Err(e) = writer.write_all(&out) {
                break e.to_string();
            }
        }
    };
    if session.pending() > 0 {
        tracing::debug!(%peer, pending = session.pending(), "usbip: importer left with URBs pending; dropped");
    }
    let _ = writer.shutdown(std::net::Shutdown::Both);
    drop(guard);
    why
}
