//! `--usbredir`: the card in a CCID reader, exported to QEMU's `-device usb-redir`.

use crate::stream::{Addr, Listener};
use anyhow::Result;
use card::{Card, Presence};
use ccid::descriptors::Identity;
use ccid::pcap::PcapDevice;
use ccid::usb::UsbDevice;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A shared card seen as a card: lets one card serve several transports (vpcd and usbredir).
pub struct SharedCardRef(pub Arc<Mutex<dyn Card>>);

impl SharedCardRef {
    fn lock(&self) -> std::sync::MutexGuard<'_, dyn Card + 'static> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Card for SharedCardRef {
    fn atr(&self) -> Vec<u8> {
        self.lock().atr()
    }
    fn power_on(&mut self) -> Vec<u8> {
        self.lock().power_on()
    }
    fn power_off(&mut self) {
        self.lock().power_off()
    }
    fn reset(&mut self) -> Vec<u8> {
        self.lock().reset()
    }
    fn transmit(&mut self, apdu: &[u8]) -> Vec<u8> {
        self.lock().transmit(apdu)
    }
    fn presence(&self) -> Presence {
        self.lock().presence()
    }
}

/// The QEMU arguments and libvirt XML that attach a reader served at `addr`.
pub fn attach_lines(addr: &Addr) -> String {
    let (chardev, xml_source) = match addr {
        Addr::Tcp(a) => (
            format!(
                "socket,id=vccid0,host={},port={},reconnect=2,nodelay=on",
                a.ip(),
                a.port()
            ),
            format!(
                "<source mode='connect' host='{}' service='{}'/>",
                a.ip(),
                a.port()
            ),
        ),
        Addr::Unix(p) => (
            format!("socket,id=vccid0,path={},reconnect=2", p.display()),
            format!("<source mode='connect' path='{}'/>", p.display()),
        ),
    };
    let xml_type = if matches!(addr, Addr::Unix(_)) {
        "unix"
    } else {
        "tcp"
    };
    format!(
        "QEMU:    -device qemu-xhci -chardev {chardev} -device usb-redir,chardev=vccid0,id=vccid0\n\
         libvirt: <redirdev bus='usb' type='{xml_type}'>{xml_source}</redirdev>"
    )
}

/// How the reader reaches QEMU.
#[derive(Debug, Clone)]
pub enum Role {
    /// Listen; QEMU connects (`-chardev socket,host=...,port=...,reconnect=N`).
    Listen(Addr),
    /// Connect to QEMU's `-chardev socket,server=on,wait=off`, and again after it restarts.
    Connect(Addr),
}

/// Listens at `addr` and serves the reader to one QEMU at a time, on a thread of its own; the
/// reader (and its card) outlive connections, so QEMU may restart. With `pcap`, every USB
/// transfer is also written there as a usbmon capture.
pub fn serve(
    role: &Role,
    card: Arc<Mutex<dyn Card>>,
    pcap: Option<&std::path::Path>,
) -> Result<()> {
    let (addr, listener) = match role {
        Role::Listen(a) => (a.clone(), Some(Listener::bind(a)?)),
        Role::Connect(a) => (a.clone(), None),
    };
    if !addr.is_local() {
        tracing::warn!(%addr, "usbredir is not on loopback: the USB link is unauthenticated and unencrypted");
    }
    let presence = card.lock().unwrap_or_else(|e| e.into_inner()).presence();
    // The card works on a thread of its own: a slow one never blocks the session.
    let wake_slot: crate::async_ccid::WakeSlot = Arc::new(Mutex::new(None));
    let ccid = crate::async_ccid::AsyncCcid::new(Identity::default(), card, wake_slot.clone())?;
    let mut device: Box<dyn UsbDevice> = match pcap {
        Some(path) => {
            let file = std::fs::File::create(path)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
            Box::new(PcapDevice::new(ccid, std::io::BufWriter::new(file))?)
        }
        None => Box::new(ccid),
    };
    match &listener {
        Some(l) => tracing::info!(addr = %l.local_addr(), "usbredir: waiting for QEMU"),
        None => tracing::info!(%addr, "usbredir: connecting to QEMU"),
    }
    std::thread::Builder::new()
        .name("usbredir".into())
        .spawn(move || loop {
            let got = match &listener {
                Some(l) => l.accept(),
                None => crate::stream::Stream::connect(&addr),
            };
            let stream = match got {
                Ok(s) => s,
                Err(e) => {
                    // Listening: a failed accept; connecting: QEMU not (yet, or again) there.
                    if listener.is_some() {
                        tracing::warn!("usbredir accept failed: {e}");
                    }
                    let pause = if listener.is_some() { 100 } else { 500 };
                    std::thread::sleep(Duration::from_millis(pause));
                    continue;
                }
            };
            let peer = stream.peer();
            tracing::info!(%peer, "usbredir: QEMU connected");
            let (Ok(reader), Ok(closer)) = (stream.try_clone(), stream.try_clone()) else {
                continue;
            };
            let done = Arc::new(AtomicBool::new(false));
            let slot = wake_slot.clone();
            let why = usbredir::server::serve_connection(
                reader,
                stream,
                &mut *device,
                "vccid",
                |waker| {
                    let card_waker = waker.clone();
                    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(move || {
                        card_waker.wake();
                    }));
                    let (done, presence) = (done.clone(), presence.clone());
                    let _ = std::thread::Builder::new()
                        .name("usbredir-presence".into())
                        .spawn(move || {
                            let (_, mut seen) = presence.snapshot();
                            while !done.load(Ordering::SeqCst) {
                                let (_, gen) =
                                    presence.wait_change(seen, Duration::from_millis(500));
                                if gen != seen {
                                    seen = gen;
                                    if !waker.wake() {
                                        break;
                                    }
                                }
                            }
                        });
                },
            );
            done.store(true, Ordering::SeqCst);
            *wake_slot.lock().unwrap_or_else(|e| e.into_inner()) = None;
            closer.shutdown();
            device.reset();
            tracing::info!(%peer, "usbredir: QEMU gone: {why}");
        })?;
    Ok(())
}
