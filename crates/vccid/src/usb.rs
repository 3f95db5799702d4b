//! The card in a CCID reader: `--usbredir` exports it to QEMU's `-device usb-redir`,
//! `--usbip` to any Linux kernel's vhci-hcd (`usbip attach`).

use crate::card_port::{ThreadedPort, WakeSlot};
use anyhow::Result;
use card::{Card, Presence};
use ccid::descriptors::Identity;
use ccid::device::Ccid;
use ccid::pcap::PcapTap;
use ccid::usb::UsbDevice;
use link::pump::Waker;
use link::retry::{self, Backoff, Stop};
use link::{Addr, ListenSecurity, Security, Stream, TlsClient};
use std::ops::ControlFlow;
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
    Listen(Addr, ListenSecurity),
    /// Connect to QEMU's `-chardev socket,server=on,wait=off`, and again after it restarts;
    /// with TLS settings, as a TLS client (QEMU's `endpoint=server`).
    Connect(Addr, Option<TlsClient>),
}

/// Told when a host takes a reader and when it leaves: the reader's index among those one call
/// serves (0 for usbredir), the host's address, and `true` on arrival.
pub type HostHook = Arc<dyn Fn(usize, &str, bool) + Send + Sync>;

/// Reports a host's arrival on creation and its leaving on drop.
struct HostGuard {
    hook: Option<HostHook>,
    reader: usize,
    peer: String,
}

impl HostGuard {
    fn new(hook: Option<HostHook>, reader: usize, peer: &str) -> HostGuard {
        if let Some(h) = &hook {
            h(reader, peer, true);
        }
        HostGuard {
            hook,
            reader,
            peer: peer.to_string(),
        }
    }
}

impl Drop for HostGuard {
    fn drop(&mut self) {
        if let Some(h) = &self.hook {
            h(self.reader, &self.peer, false);
        }
    }
}

/// How a slot of a reader wakes its session: the card port's wake slot (the card answered)
/// and the slot's presence (a card inserted or removed).
#[derive(Clone)]
struct SlotWake {
    slot: WakeSlot,
    presence: Presence,
}

impl Role {
    /// The role of USB reader `index` when a process serves several: TCP addresses count up
    /// from the one given (port + index); a Unix socket serves one reader only.
    pub fn for_reader(&self, index: usize) -> Result<Role> {
        let shift = |a: &Addr| -> Result<Addr> {
            match a {
                _ if index == 0 => Ok(a.clone()),
                Addr::Tcp(t) => {
                    let port = u16::try_from(usize::from(t.port()) + index)
                        .map_err(|_| anyhow::anyhow!("usbredir reader {index}: port past 65535"))?;
                    Ok(Addr::Tcp(std::net::SocketAddr::new(t.ip(), port)))
                }
                Addr::Unix(p) => anyhow::bail!(
                    "unix:{} serves one USB reader: with several cards add --one-reader (one \
                     reader, a slot per card) or give a TCP address (a port per reader)",
                    p.display()
                ),
            }
        };
        Ok(match self {
            Role::Listen(a, sec) => Role::Listen(shift(a)?, sec.clone()),
            Role::Connect(a, tls) => Role::Connect(shift(a)?, tls.clone()),
        })
    }
}

/// While alive, the cards' answers and presence changes wake the transport session that holds
/// the reader, through its pump's `waker` (which returns `false` once that session has ended).
struct SessionWaker {
    slots: Vec<WakeSlot>,
    /// The presences observed, and the observers to remove when the session ends.
    observers: Vec<(Presence, u64)>,
}

impl SessionWaker {
    /// No thread and no timer: the card port's wake slot and an observer on each slot's
    /// presence call the waker (a non-blocking send), so an idle reader costs nothing however
    /// many there are (the scale benchmark's p99 suffered from a thread per slot that woke
    /// every 500 ms to see whether its session had ended).
    fn start(slots: &[SlotWake], waker: Waker) -> SessionWaker {
        let mut observers = Vec::new();
        for SlotWake { slot, presence } in slots {
            let card_waker = waker.clone();
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(move || {
                card_waker.wake();
            }));
            let w = waker.clone();
            let id = presence.observe(move |_| {
                w.wake();
            });
            observers.push((presence.clone(), id));
        }
        // A change just before the observers were in place: the session looks once.
        waker.wake();
        SessionWaker {
            slots: slots.iter().map(|s| s.slot.clone()).collect(),
            observers,
        }
    }
}

impl Drop for SessionWaker {
    fn drop(&mut self) {
        for (presence, id) in &self.observers {
            presence.unobserve(*id);
        }
        for slot in &self.slots {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
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

/// The CCID reader with a slot for each of `cards` (one card: a one-slot reader; several: CCID
/// bMaxSlotIndex = cards - 1), each card on a worker thread of its own; with `pcap`, every USB
/// transfer is also written there as a usbmon capture.
fn reader_device(
    cards: Vec<Arc<Mutex<dyn Card>>>,
    pcap: Option<Pcap<'_>>,
) -> Result<(Box<dyn UsbDevice>, Vec<SlotWake>)> {
    // THE reader (the one the tests, fuzz targets and benches drive), each card on a thread of
    // its own: a slow one never blocks the session or the other slots.
    let mut ports = Vec::new();
    let mut wakes = Vec::new();
    for card in cards {
        let presence = card.lock().unwrap_or_else(|e| e.into_inner()).presence();
        let slot: WakeSlot = Arc::new(Mutex::new(None));
        ports.push(ThreadedPort::spawn(card, slot.clone())?);
        wakes.push(SlotWake { slot, presence });
    }
    if ports.len() > ccid::reader::MAX_SLOTS {
        anyhow::bail!(
            "one reader has at most {} slots; {} cards given",
            ccid::reader::MAX_SLOTS,
            ports.len()
        );
    }
    let ccid = Ccid::with_ports(Identity::default(), ports);
    let device: Box<dyn UsbDevice> = match pcap {
        Some(Pcap { path, secrets }) => {
            let file = std::fs::File::create(path)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
            if secrets {
                tracing::warn!(path = %path.display(), "--pcap-secrets: the capture holds PIN, PUK and management-key bytes");
            }
            Box::new(
                ccid.with_tap(PcapTap::new(std::io::BufWriter::new(file))?.keep_secrets(secrets)),
            )
        }
        None => Box::new(ccid),
    };
    Ok((device, wakes))
}

/// The bus id under which `--usbip` exports reader `index` (0-based): 1-1, 1-2, ...
pub fn usbip_busid(index: usize) -> String {
    format!("1-{}", index + 1)
}

/// Exports the readers over USB/IP at `addr` (reader i, holding the cards `readers[i]`, as
/// bus id 1-(i+1)), on threads of their own: `usbip list -r HOST` shows them and
/// `usbip attach -r HOST -b 1-1` imports the first; the readers outlive importers.
/// USB/IP has no TLS (the kernel's vhci-hcd speaks plaintext TCP), so a non-loopback address
/// needs `security` = [`Security::InsecurePlaintext`], and then every
/// connection logs a warning. With `pcap`, the first reader's transfers are captured.
pub fn serve_usbip(
    addr: std::net::SocketAddr,
    readers: Vec<Vec<Arc<Mutex<dyn Card>>>>,
    pcap: Option<Pcap<'_>>,
    security: Security,
    hosts: Option<HostHook>,
) -> Result<Arc<usbip::server::Exporter>> {
    let exposed = !addr.ip().is_loopback();
    if exposed && security != Security::InsecurePlaintext {
        anyhow::bail!(
            "refusing to export the reader over USB/IP on {addr}, which is not loopback: USB/IP \
             has no authentication. Use a loopback address (and an SSH or VPN tunnel), or \
             --insecure-plaintext"
        );
    }
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for USB/IP: {e}"))?;
    let mut devices = Vec::new();
    let mut wakes = std::collections::HashMap::new();
    for (i, cards) in readers.into_iter().enumerate() {
        let (device, slots) = reader_device(cards, if i == 0 { pcap } else { None })?;
        devices.push((usbip_busid(i), device));
        wakes.insert(usbip_busid(i), slots);
    }
    let busids: Vec<String> = devices.iter().map(|(b, _)| b.clone()).collect();
    let names = busids.clone();
    let exporter = Arc::new(usbip::server::Exporter::with_devices(devices).warn_plaintext(exposed));
    let handle = exporter.clone();
    let local = listener.local_addr()?;
    if let [busid] = names.as_slice() {
        tracing::info!(addr = %local, %busid, "usbip: exporting the reader");
    } else {
        tracing::info!(addr = %local, busids = %names.join(" "), "usbip: exporting the readers");
    }
    std::thread::Builder::new()
        .name("usbip".into())
        .spawn(move || {
            exporter.run(listener, move |busid, peer, waker| {
                let slots = wakes.get(busid).map(Vec::as_slice).unwrap_or_default();
                let index = busids.iter().position(|b| b == busid).unwrap_or(0);
                (
                    SessionWaker::start(slots, waker),
                    HostGuard::new(hosts.clone(), index, peer),
                )
            })
        })?;
    Ok(handle)
}

/// The commands that attach `readers` readers exported over USB/IP at `addr` (a wildcard
/// address is shown as loopback, with a note: see [`crate::qemu::connect_ip`]).
pub fn usbip_lines(addr: &std::net::SocketAddr, readers: usize) -> String {
    let (ip, replaced) = crate::qemu::connect_ip(addr.ip());
    let attach: Vec<String> = (0..readers.max(1))
        .map(|i| format!("usbip attach -r {ip} -b {}", usbip_busid(i)))
        .collect();
    let mut lines = format!(
        "usbip:   modprobe vhci-hcd; usbip list -r {ip} (port {port}); {}",
        attach.join("; "),
        port = addr.port()
    );
    if replaced {
        lines = format!("{}\n{lines}", crate::qemu::wildcard_note(addr.ip(), ip));
    }
    lines
}

/// The reader that usbredir serves to one QEMU after another.
struct Redir {
    device: Box<dyn UsbDevice>,
    wakes: Vec<SlotWake>,
    hosts: Option<HostHook>,
    /// The connection being served, so that [`UsbReader::stop`] can end it.
    current: Arc<Mutex<Option<Stream>>>,
}

/// How long [`UsbReader::stop`] waits for the reader's thread.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// A running usbredir reader; [`UsbReader::stop`] ends it (the host sees the device go).
pub struct UsbReader {
    stop: Stop,
    current: Arc<Mutex<Option<Stream>>>,
    /// Where it listens (to wake its accept), if it listens.
    listening: Option<Addr>,
    /// Closed when the serving thread ends.
    ended: std::sync::mpsc::Receiver<()>,
}

impl UsbReader {
    /// Stops serving: the connection (if any) is closed, the listener (if any) is closed and
    /// its unix socket removed, a connecting reader stops reconnecting.
    pub fn stop(&self) {
        self.stop.stop();
        if let Some(s) = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            s.shutdown();
        }
        // A blocked accept returns at the next connection: make one.
        if let Some(a) = &self.listening {
            let _ = Stream::connect(a);
        }
        // The host's leaving is reported before stop returns (so it comes before the reader's
        // removal in the events), unless the thread is stuck in a card operation.
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = self.ended.recv_timeout(STOP_WAIT)
        {
            tracing::warn!("usbredir: the reader's thread did not end within {STOP_WAIT:?}");
        }
    }
}

impl Redir {
    /// One QEMU connection, to its end; the reader is reset for the next.
    fn serve(&mut self, stream: Stream) {
        let peer = stream.peer();
        tracing::info!(%peer, "usbredir: QEMU connected");
        let _host = HostGuard::new(self.hosts.clone(), 0, &peer);
        let (Ok(reader), Ok(closer)) = (stream.try_clone(), stream.try_clone()) else {
            return;
        };
        if let Ok(c) = stream.try_clone() {
            *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
        }
        let mut guard = None;
        let why = usbredir::server::serve_connection(
            reader,
            stream,
            &mut *self.device,
            "vccid",
            |waker| {
                guard = Some(SessionWaker::start(&self.wakes, waker));
            },
        );
        drop(guard);
        closer.shutdown();
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.device.reset();
        tracing::info!(%peer, "usbredir: QEMU gone: {why}");
    }
}

/// Listens at `addr` and serves a reader with a slot for each of `cards` to one QEMU at a time,
/// on a thread of its own; the reader (and its cards) outlive connections, so QEMU may
/// restart. With `pcap`, every USB transfer is also written there as a usbmon capture.
pub fn serve(
    role: &Role,
    cards: Vec<Arc<Mutex<dyn Card>>>,
    pcap: Option<Pcap<'_>>,
    hosts: Option<HostHook>,
) -> Result<UsbReader> {
    /// The role with its listener bound.
    enum Way {
        Listen(link::Listener),
        Connect(Addr, Option<TlsClient>),
    }
    let (addr, secure, way) = match role {
        Role::Listen(a, sec) => (a, sec.tls.is_some(), Way::Listen(sec.bind(a)?)),
        Role::Connect(a, tls) => (a, tls.is_some(), Way::Connect(a.clone(), tls.clone())),
    };
    if !secure && !addr.is_local() {
        tracing::warn!(%addr, "usbredir is not on loopback: the USB link is unauthenticated and unencrypted");
    }
    let (device, wakes) = reader_device(cards, pcap)?;
    let current = Arc::new(Mutex::new(None));
    let mut redir = Redir {
        device,
        wakes,
        hosts,
        current: current.clone(),
    };
    let stop = Stop::new();
    // Dropped (closing the channel) when the serving thread ends.
    let (ended_tx, ended) = std::sync::mpsc::channel::<()>();
    let mut handle = UsbReader {
        stop: stop.clone(),
        current,
        listening: None,
        ended,
    };
    let thread = std::thread::Builder::new().name("usbredir".into());
    match way {
        Way::Listen(l) => {
            tracing::info!(addr = %l.local_addr(), "usbredir: waiting for QEMU");
            handle.listening = Some(l.local_addr());
            thread.spawn(move || {
                let _ended = ended_tx;
                link::accept::in_turn_until("usbredir", &stop, || l.accept(), |s| redir.serve(s));
                tracing::info!(addr = %l.local_addr(), "usbredir: reader stopped");
            })?;
        }
        Way::Connect(addr, tls) => {
            tracing::info!(%addr, "usbredir: connecting to QEMU");
            thread.spawn(move || {
                let _ended = ended_tx;
                // QEMU restarts at any time: the first retry is soon, the longest wait 500 ms.
                let mut backoff =
                    Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
                while !stop.is_stopped() {
                    let got = retry::connect(
                        &mut backoff,
                        &stop,
                        || Stream::connect_with(&addr, tls.as_ref()),
                        |e, fresh| {
                            // QEMU not (yet, or again) there is expected and said by the
                            // "connecting" line; a refused handshake is said once until
                            // something changes.
                            if fresh && matches!(e, link::Error::Handshake { .. }) {
                                tracing::warn!("usbredir: {e}");
                            }
                            ControlFlow::Continue(())
                        },
                    );
                    let Ok(stream) = got else {
                        return;
                    };
                    backoff.reset();
                    redir.serve(stream);
                }
            })?;
        }
    }
    Ok(handle)
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
        let u = usbip_lines(&"0.0.0.0:3240".parse().unwrap(), 1);
        assert!(u.contains("usbip attach -r 127.0.0.1 -b 1-1"), "{u}");
        assert!(u.contains("other machines use this host's address"), "{u}");
        let u = usbip_lines(&"127.0.0.1:3240".parse().unwrap(), 1);
        assert!(!u.contains("other machines"), "{u}");
        let u = usbip_lines(&"127.0.0.1:3240".parse().unwrap(), 2);
        assert!(
            u.ends_with("usbip attach -r 127.0.0.1 -b 1-1; usbip attach -r 127.0.0.1 -b 1-2"),
            "{u}"
        );
    }
}
