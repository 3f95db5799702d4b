//! The card in a CCID reader: `--usbredir` exports it to QEMU's `-device usb-redir`,
//! `--usbip` to any Linux kernel's vhci-hcd (`usbip attach`).

use crate::card_port::{ThreadedPort, WakeSlot};
use crate::stream::Addr;
use anyhow::Result;
use card::{Card, Presence};
use ccid::descriptors::Identity;
use ccid::device::Ccid;
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

/// The QEMU arguments and libvirt XML that attach a reader served at `addr`, for the QEMU
/// that is installed; with `tls` (the `tls-creds-x509` directory), QEMU's TLS client side.
pub fn attach_lines(addr: &Addr, tls: Option<&std::path::Path>) -> String {
    attach_lines_for(addr, tls, &crate::qemu::Installed::detect())
}

/// [`attach_lines`] for a given QEMU. The reader goes on an xHCI controller (QEMU's
/// `qemu-xhci`, libvirt's `model='qemu-xhci'`): full-speed devices work there, and xHCI
/// batches a bulk transfer into one usbredir packet where UHCI sends one per 64-byte TD (see
/// the README's benchmarks). QEMU reconnects every 2 s, so vccid and QEMU may start in either
/// order; libvirt says so with `<reconnect enabled='yes' timeout='2'/>` in the chardev source
/// (libvirt formatdomain, "Reconnect"), which it translates for its QEMU.
pub fn attach_lines_for(
    addr: &Addr,
    tls: Option<&std::path::Path>,
    qemu: &crate::qemu::Installed,
) -> String {
    let (object, creds, xml_tls) = match tls {
        Some(d) => (
            format!(
                "-object tls-creds-x509,id=vccid0tls,endpoint=client,dir={} ",
                d.display()
            ),
            ",tls-creds=vccid0tls",
            " tls='yes'",
        ),
        None => (String::new(), "", ""),
    };
    let reconnect = qemu.reconnect().option();
    let mut notes = vec![qemu.note()];
    let (chardev, xml_type, xml_source) = match addr {
        Addr::Tcp(a) => {
            let (ip, replaced) = crate::qemu::connect_ip(a.ip());
            if replaced {
                notes.push(crate::qemu::wildcard_note(a.ip(), ip));
            }
            (
                format!(
                    "socket,id=vccid0,host={ip},port={},{reconnect},nodelay=on{creds}",
                    a.port()
                ),
                "tcp",
                format!("host='{ip}' service='{}'", a.port()),
            )
        }
        Addr::Unix(p) => (
            format!("socket,id=vccid0,path={},{reconnect}{creds}", p.display()),
            "unix",
            format!("path='{}'", p.display()),
        ),
    };
    format!(
        "{notes}\n\
         QEMU:    {object}-device qemu-xhci,id=xhci -chardev {chardev} \
         -device usb-redir,chardev=vccid0,bus=xhci.0,id=vccid0\n\
         libvirt, in <devices> (the controller in place of the domain's USB controller):\n\
         \x20 <controller type='usb' index='0' model='qemu-xhci'/>\n\
         \x20 <redirdev bus='usb' type='{xml_type}'>\n\
         \x20   <source mode='connect' {xml_source}{xml_tls}>\n\
         \x20     <reconnect enabled='yes' timeout='2'/>\n\
         \x20   </source>\n\
         \x20 </redirdev>",
        notes = notes.join("\n")
    )
}

/// How the reader reaches QEMU.
#[derive(Clone)]
pub enum Role {
    /// Listen; QEMU connects (`-chardev socket,host=...,port=...,reconnect=N`), over TLS
    /// when the security says so (QEMU's `tls-creds` with `endpoint=client`).
    Listen(Addr, crate::stream::ListenSecurity),
    /// Connect to QEMU's `-chardev socket,server=on,wait=off`, and again after it restarts;
    /// with TLS settings, as a TLS client (QEMU's `endpoint=server`).
    Connect(Addr, Option<crate::stream::TlsClient>),
}

/// While alive, the card's answers and presence changes wake the transport session that holds
/// the reader, through `wake` (which returns `false` once that session has ended).
struct SessionWaker {
    done: Arc<AtomicBool>,
    slot: WakeSlot,
}

impl SessionWaker {
    fn start(
        slot: &WakeSlot,
        presence: Presence,
        wake: impl Fn() -> bool + Clone + Send + 'static,
    ) -> SessionWaker {
        let done = Arc::new(AtomicBool::new(false));
        let card_wake = wake.clone();
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(move || {
            card_wake();
        }));
        let stop = done.clone();
        let _ = std::thread::Builder::new()
            .name("usb-presence".into())
            .spawn(move || {
                let (_, mut seen) = presence.snapshot();
                while !stop.load(Ordering::SeqCst) {
                    let (_, gen) = presence.wait_change(seen, Duration::from_millis(500));
                    if gen != seen {
                        seen = gen;
                        if !wake() {
                            break;
                        }
                    }
                }
            });
        SessionWaker {
            done,
            slot: slot.clone(),
        }
    }
}

impl Drop for SessionWaker {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// A `--pcap` capture: the file, and whether PIN, PUK and management-key bytes are written as
/// they are (`--pcap-secrets`) instead of blanked.
#[derive(Debug, Clone, Copy)]
pub struct Pcap<'a> {
    /// The capture file (created or truncated).
    pub path: &'a std::path::Path,
    /// Keep the secrets.
    pub secrets: bool,
}

/// The CCID reader holding `card`, its card on a worker thread; with `pcap`, every USB
/// transfer is also written there as a usbmon capture.
fn reader_device(
    card: Arc<Mutex<dyn Card>>,
    pcap: Option<Pcap<'_>>,
) -> Result<(Box<dyn UsbDevice>, WakeSlot, Presence)> {
    let presence = card.lock().unwrap_or_else(|e| e.into_inner()).presence();
    // THE reader (the one the tests, fuzz targets and benches drive), its card on a thread of
    // its own: a slow one never blocks the session.
    let wake_slot: WakeSlot = Arc::new(Mutex::new(None));
    let port = ThreadedPort::spawn(card, wake_slot.clone())?;
    let ccid = Ccid::with_port(Identity::default(), port);
    let device: Box<dyn UsbDevice> = match pcap {
        Some(Pcap { path, secrets }) => {
            let file = std::fs::File::create(path)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
            if secrets {
                tracing::warn!(path = %path.display(), "--pcap-secrets: the capture holds PIN, PUK and management-key bytes");
            }
            Box::new(PcapDevice::new(ccid, std::io::BufWriter::new(file))?.keep_secrets(secrets))
        }
        None => Box::new(ccid),
    };
    Ok((device, wake_slot, presence))
}

/// The bus id under which `--usbip` exports the reader.
pub const USBIP_BUSID: &str = "1-1";

/// Exports the reader over USB/IP at `addr`, on threads of its own: `usbip list -r HOST`
/// shows it and `usbip attach -r HOST -b 1-1` imports it; the reader outlives importers.
/// USB/IP has no TLS (the kernel's vhci-hcd speaks plaintext TCP), so a non-loopback address
/// needs `security` = [`crate::stream::Security::InsecurePlaintext`], and then every
/// connection logs a warning.
pub fn serve_usbip(
    addr: std::net::SocketAddr,
    card: Arc<Mutex<dyn Card>>,
    pcap: Option<Pcap<'_>>,
    security: crate::stream::Security,
) -> Result<()> {
    let exposed = !addr.ip().is_loopback();
    if exposed && security != crate::stream::Security::InsecurePlaintext {
        anyhow::bail!(
            "refusing to export the reader over USB/IP on {addr}, which is not loopback: USB/IP \
             has no authentication. Use a loopback address (and an SSH or VPN tunnel), or \
             --insecure-plaintext"
        );
    }
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for USB/IP: {e}"))?;
    let (device, slot, presence) = reader_device(card, pcap)?;
    let exporter =
        Arc::new(usbip::server::Exporter::new(USBIP_BUSID, device).warn_plaintext(exposed));
    tracing::info!(addr = %listener.local_addr()?, busid = USBIP_BUSID, "usbip: exporting the reader");
    std::thread::Builder::new()
        .name("usbip".into())
        .spawn(move || {
            exporter.run(listener, move |waker| {
                SessionWaker::start(&slot, presence.clone(), move || waker.wake())
            })
        })?;
    Ok(())
}

/// The commands that attach a reader exported over USB/IP at `addr` (a wildcard address is
/// shown as loopback, with a note: see [`crate::qemu::connect_ip`]).
pub fn usbip_lines(addr: &std::net::SocketAddr) -> String {
    let (ip, replaced) = crate::qemu::connect_ip(addr.ip());
    let mut lines = format!(
        "usbip:   modprobe vhci-hcd; usbip list -r {ip} (port {port}); usbip attach -r {ip} -b {USBIP_BUSID}",
        port = addr.port()
    );
    if replaced {
        lines = format!("{}\n{lines}", crate::qemu::wildcard_note(addr.ip(), ip));
    }
    lines
}

/// Listens at `addr` and serves the reader to one QEMU at a time, on a thread of its own; the
/// reader (and its card) outlive connections, so QEMU may restart. With `pcap`, every USB
/// transfer is also written there as a usbmon capture.
pub fn serve(role: &Role, card: Arc<Mutex<dyn Card>>, pcap: Option<Pcap<'_>>) -> Result<()> {
    let (addr, listener, client_tls, secure) = match role {
        Role::Listen(a, sec) => (a.clone(), Some(sec.bind(a)?), None, sec.tls.is_some()),
        Role::Connect(a, tls) => (a.clone(), None, tls.clone(), tls.is_some()),
    };
    if !secure && !addr.is_local() {
        tracing::warn!(%addr, "usbredir is not on loopback: the USB link is unauthenticated and unencrypted");
    }
    let (mut device, wake_slot, presence) = reader_device(card, pcap)?;
    match &listener {
        Some(l) => tracing::info!(addr = %l.local_addr(), "usbredir: waiting for QEMU"),
        None => tracing::info!(%addr, "usbredir: connecting to QEMU"),
    }
    let mut last_error = String::new();
    std::thread::Builder::new()
        .name("usbredir".into())
        .spawn(move || loop {
            let got = match &listener {
                Some(l) => l.accept().map_err(|e| e.to_string()),
                None => crate::stream::Stream::connect_with(&addr, client_tls.as_ref()),
            };
            let stream = match got {
                Ok(s) => s,
                Err(e) => {
                    // Listening: a failed accept; connecting: QEMU not (yet, or again) there,
                    // or a refused handshake, said once until something changes.
                    if (listener.is_some() || e.contains("TLS")) && e != last_error {
                        tracing::warn!("usbredir: {e}");
                    }
                    last_error = e;
                    let pause = if listener.is_some() { 100 } else { 500 };
                    std::thread::sleep(Duration::from_millis(pause));
                    continue;
                }
            };
            last_error.clear();
            let peer = stream.peer();
            tracing::info!(%peer, "usbredir: QEMU connected");
            let (Ok(reader), Ok(closer)) = (stream.try_clone(), stream.try_clone()) else {
                continue;
            };
            let mut guard = None;
            let why = usbredir::server::serve_connection(
                reader,
                stream,
                &mut *device,
                "vccid",
                |waker| {
                    guard = Some(SessionWaker::start(
                        &wake_slot,
                        presence.clone(),
                        move || waker.wake(),
                    ));
                },
            );
            drop(guard);
            closer.shutdown();
            device.reset();
            tracing::info!(%peer, "usbredir: QEMU gone: {why}");
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::{Installed, Version};

    fn qemu(major: u32, minor: u32) -> Installed {
        Installed {
            version: Some(Version {
                major,
                minor,
                micro: 0,
            }),
        }
    }

    #[test]
    fn attach_lines_follow_the_qemu_version() {
        let a = Addr::parse("127.0.0.1:4000").unwrap();
        let old = attach_lines_for(&a, None, &qemu(7, 2));
        assert!(
            old.contains(
                "QEMU:    -device qemu-xhci,id=xhci -chardev socket,id=vccid0,host=127.0.0.1,\
                 port=4000,reconnect=2,nodelay=on -device usb-redir,chardev=vccid0,bus=xhci.0,\
                 id=vccid0\n"
            ),
            "{old}"
        );
        assert!(old.starts_with("For QEMU 7.2.0"), "{old}");
        let new = attach_lines_for(&a, None, &qemu(9, 2));
        assert!(new.contains(",reconnect-ms=2000,nodelay=on "), "{new}");
        assert!(!new.contains("reconnect=2,"), "{new}");
        let none = attach_lines_for(&a, None, &Installed { version: None });
        assert!(none.contains(",reconnect-ms=2000,"), "{none}");
        assert!(none.starts_with("No qemu-system-x86_64 found"), "{none}");
        for l in [&old, &new, &none] {
            assert!(
                l.contains("<controller type='usb' index='0' model='qemu-xhci'/>")
                    && l.contains(
                        "<redirdev bus='usb' type='tcp'>\n    <source mode='connect' \
                         host='127.0.0.1' service='4000'>\n      \
                         <reconnect enabled='yes' timeout='2'/>\n"
                    ),
                "{l}"
            );
        }
    }

    #[test]
    fn attach_lines_for_unix_tls_and_wildcards() {
        let u = Addr::parse("unix:/run/vccid/usb.sock").unwrap();
        let l = attach_lines_for(
            &u,
            Some(std::path::Path::new("/etc/vccid/tls")),
            &qemu(7, 2),
        );
        assert!(
            l.contains(
                "QEMU:    -object tls-creds-x509,id=vccid0tls,endpoint=client,dir=/etc/vccid/tls \
                 -device qemu-xhci,id=xhci -chardev socket,id=vccid0,path=/run/vccid/usb.sock,\
                 reconnect=2,tls-creds=vccid0tls "
            ),
            "{l}"
        );
        assert!(
            l.contains("<redirdev bus='usb' type='unix'>")
                && l.contains("<source mode='connect' path='/run/vccid/usb.sock' tls='yes'>"),
            "{l}"
        );
        for (listen, shown) in [("0.0.0.0:4000", "127.0.0.1"), ("[::]:4000", "::1")] {
            let l = attach_lines_for(&Addr::parse(listen).unwrap(), None, &qemu(7, 2));
            assert!(l.contains(&format!("host={shown},port=4000")), "{l}");
            assert!(l.contains(&format!("host='{shown}'")), "{l}");
            assert!(!l.contains("0.0.0.0,") && !l.contains("host=::,"), "{l}");
            assert!(l.contains("other machines use this host's address"), "{l}");
        }
        let u = usbip_lines(&"0.0.0.0:3240".parse().unwrap());
        assert!(u.contains("usbip attach -r 127.0.0.1 -b 1-1"), "{u}");
        assert!(u.contains("other machines use this host's address"), "{u}");
        let u = usbip_lines(&"127.0.0.1:3240".parse().unwrap());
        assert!(!u.contains("other machines"), "{u}");
    }
}
