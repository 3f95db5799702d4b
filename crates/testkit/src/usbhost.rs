//! The host side of vccid's USB links, over the real sockets: QEMU's usb-redir as it drives the
//! reader on xHCI (usbredir, transports.md §1.3, §1.6: the hello exchange, SET_CONFIGURATION,
//! interrupt receiving started, then bulk packets, framed by the `usbredir` crate's codec,
//! §1.2, §1.5) and the kernel's vhci-hcd (USB/IP, transports.md §2: the import, then URBs
//! through [`crate::vhci`], an interrupt IN URB kept pending as the driver keeps one). Both
//! give the bulk endpoints a CCID exchange needs ([`Bulk`]), and [`ccid`] sends a command and
//! takes its answer as libccid does: a bulk OUT answered, then a bulk IN for the RDR_to_PC.
//!
//! The fault tests, the soak and the scale benchmark all drive readers this way, so they share
//! one host: what one of them teaches it (a deadline, a URB to keep pending) the others get.
//! Real hosts would not do: QEMU and a kernel cost a guest boot per host, and QEMU's chardev
//! reconnects at best once a second, where these reconnect at once and run by the hundred in
//! one process.
//!
//! What differs between those users is a parameter ([`Options`]): the timeout, how long a
//! refused import is tried again, the name in the hello. Every failure is an [`Error`] of one
//! of three [`Kind`]s: nothing within the timeout (a hang), a link that went away (what a host
//! recovers from by connecting again), or a wrong answer; each user turns them into its own.

use crate::vhci;
use ccid::descriptors::{EP_BULK_IN, EP_BULK_OUT, EP_INTERRUPT_IN};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};
use usbredir::codec::{self, ty, Caps, Decoded, Decoder, Packet};

/// The longest RDR_to_PC message: what libccid asks for in one bulk IN.
const MAX_IN: u32 = 65_546;

/// How often a refused import is tried again.
const IMPORT_POLL: Duration = Duration::from_millis(20);
/// How often [`Redir::accept`] looks for vccid's connection: it reconnects at once, and a
/// fault test waits for it a hundred times.
const ACCEPT_POLL: Duration = Duration::from_millis(5);

/// What kind of failure an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Nothing within [`Options::timeout`].
    Timeout,
    /// The link went away or never came: connecting again may help.
    Broken,
    /// An answer, but not one the protocol allows.
    Wrong,
}

/// A failure of the host's side, with what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: Kind,
    pub msg: String,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

fn err<T>(kind: Kind, msg: impl Into<String>) -> Result<T> {
    Err(Error {
        kind,
        msg: msg.into(),
    })
}

/// An I/O error of the socket: a read or write timeout is a hang, anything else a broken link.
fn io_error(what: &str, e: std::io::Error, timeout: Duration) -> Error {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Error {
            kind: Kind::Timeout,
            msg: format!("{what}: nothing within {timeout:?}"),
        },
        _ => Error {
            kind: Kind::Broken,
            msg: format!("{what}: {e}"),
        },
    }
}

/// What differs between the hosts of the tests and the benchmarks.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The usbredir hello's version string (QEMU sends its own; vccid logs it).
    pub name: &'static str,
    /// How long any single answer may take (and accepting vccid's connection).
    pub timeout: Duration,
    /// How long a USB/IP import that fails is tried again: the previous importer's connection
    /// may still be ending on the server, which refuses the device as in use until it has. Zero
    /// for a caller that retries on its own, within its own deadline.
    pub import_retry: Duration,
}

/// The USB transfers a CCID exchange needs: the bulk endpoints.
pub trait Bulk: Send {
    fn bulk_out(&mut self, msg: &[u8]) -> Result<()>;
    fn bulk_in(&mut self) -> Result<Vec<u8>>;
}

/// One CCID command and its answer, with time extensions waited through (bmCommandStatus 2,
/// CCID §6.2.6); the answer is returned whatever its status, which the caller judges.
pub fn ccid(bulk: &mut dyn Bulk, kind: u8, seq: u8, body: &[u8]) -> Result<Vec<u8>> {
    let mut msg = vec![kind];
    msg.extend_from_slice(&(body.len() as u32).to_le_bytes());
    msg.extend_from_slice(&[0, seq, 0, 0, 0]);
    msg.extend_from_slice(body);
    bulk.bulk_out(&msg)?;
    loop {
        let r = bulk.bulk_in()?;
        if r.len() < 10 || r[6] != seq {
            return err(
                Kind::Wrong,
                format!("not the RDR_to_PC for bSeq {seq}: {r:02X?}"),
            );
        }
        if r[7] >> 6 != 2 {
            return Ok(r);
        }
    }
}

/// QEMU's usb-redir side of a usbredir connection, on any stream (`link::Stream`: TCP, Unix,
/// TLS over either). Dropping it ends the connection cleanly (under TLS, close_notify first),
/// so that vccid sees the host leave rather than a stream cut short.
pub struct Redir {
    stream: link::Stream,
    caps: Caps,
    dec: Decoder,
    next_id: u64,
    buf: Vec<u8>,
    timeout: Duration,
}

/// A bulk packet's header with the 32-bit length (both sides announce it).
fn bulk_header(ep: u8, len: u32) -> Vec<u8> {
    let mut h = vec![ep, 0];
    h.extend_from_slice(&(len as u16).to_le_bytes());
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(&((len >> 16) as u16).to_le_bytes());
    h
}

impl Redir {
    /// Connects to vccid's usbredir socket (TLS with `tls`), then [`Redir::start`]s.
    pub fn connect(to: &link::Addr, tls: Option<&link::TlsClient>, o: &Options) -> Result<Redir> {
        match link::Stream::connect_with(to, tls) {
            Ok(stream) => Redir::start(stream, o),
            Err(e) => err(Kind::Broken, format!("connect {to}: {e}")),
        }
    }

    /// The next connection from vccid (`--usbredir-connect`) on `listener`, non-blocking, as
    /// QEMU's chardev server takes it, then [`Redir::start`].
    pub fn accept(listener: &TcpListener, o: &Options) -> Result<Redir> {
        let deadline = Instant::now() + o.timeout;
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return err(
                            Kind::Broken,
                            format!("vccid did not connect within {:?}", o.timeout),
                        );
                    }
                    std::thread::sleep(ACCEPT_POLL);
                }
                Err(e) => return Err(io_error("accept", e, o.timeout)),
            }
        };
        stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_nodelay(true))
            .map_err(|e| io_error("accepted socket", e, o.timeout))?;
        Redir::start(link::Stream::Tcp(stream), o)
    }

    /// The host's side of a new connection: hellos, configuration, the interrupt endpoint.
    pub fn start(stream: link::Stream, o: &Options) -> Result<Redir> {
        stream
            .set_timeouts(Some(o.timeout))
            .map_err(|e| io_error("timeouts", e, o.timeout))?;
        let mut r = Redir {
            stream,
            caps: Caps::default(),
            dec: Decoder::new(),
            next_id: 1,
            buf: vec![0; codec::MAX_PACKET_LEN],
            timeout: o.timeout,
        };
        // The device's hello comes first, framed with 12-byte headers; nothing else follows it
        // until ours, so the framing can change right after.
        let hello = r.packet()?;
        if hello.ty != ty::HELLO {
            return err(
                Kind::Wrong,
                format!("usbredir began with packet {}", hello.ty),
            );
        }
        let peer = hello
            .data
            .get(..4)
            .map_or(0, |c| u32::from_le_bytes(c.try_into().unwrap_or([0; 4])));
        r.write(&codec::hello(o.name))?;
        r.caps = Caps {
            peer_hello: true,
            peer,
        };
        r.wait(|p| p.ty == ty::DEVICE_CONNECT)?;
        let id = r.send(ty::SET_CONFIGURATION, &[1], &[])?;
        r.wait(|p| p.ty == ty::CONFIGURATION_STATUS && p.id == id)?;
        // QEMU starts receiving on the interrupt endpoint when the guest's driver polls it:
        // a guest pcscd with libccid does.
        r.send(ty::START_INTERRUPT_RECEIVING, &[EP_INTERRUPT_IN], &[])?;
        r.wait(|p| p.ty == ty::INTERRUPT_RECEIVING_STATUS)?;
        Ok(r)
    }

    fn write(&mut self, b: &[u8]) -> Result<()> {
        self.stream
            .write_all(b)
            .map_err(|e| io_error("usbredir write", e, self.timeout))
    }

    fn send(&mut self, t: u32, header: &[u8], data: &[u8]) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let b = codec::encode(&self.caps, t, id, header, data);
        self.write(&b)?;
        Ok(id)
    }

    fn packet(&mut self) -> Result<Packet> {
        loop {
            match self.dec.next(&self.caps) {
                Ok(Some(Decoded::Packet(p))) => return Ok(p),
                Ok(Some(Decoded::Skipped { ty, why, .. })) => {
                    return err(Kind::Wrong, format!("usbredir packet {ty} skipped: {why}"))
                }
                Err(e) => return err(Kind::Wrong, format!("usbredir framing: {e}")),
                Ok(None) => {
                    let n = self
                        .stream
                        .read(&mut self.buf)
                        .map_err(|e| io_error("usbredir read", e, self.timeout))?;
                    if n == 0 {
                        return err(Kind::Broken, "vccid closed the usbredir connection");
                    }
                    self.dec.feed(&self.buf[..n]);
                }
            }
        }
    }

    /// Reads packets until one matches; interrupt data (NotifySlotChange) and the like pass.
    fn wait(&mut self, want: impl Fn(&Packet) -> bool) -> Result<Packet> {
        loop {
            let p = self.packet()?;
            if want(&p) {
                return Ok(p);
            }
        }
    }

    fn bulk(&mut self, ep: u8, len: u32, data: &[u8]) -> Result<Packet> {
        let id = self.send(ty::BULK_PACKET, &bulk_header(ep, len), data)?;
        let p = self.wait(|p| p.ty == ty::BULK_PACKET && p.id == id)?;
        if p.header.get(1) != Some(&codec::status::SUCCESS) {
            return err(
                Kind::Wrong,
                format!("bulk {ep:02X} status {:?}", p.header.get(1)),
            );
        }
        Ok(p)
    }
}

impl Bulk for Redir {
    fn bulk_out(&mut self, msg: &[u8]) -> Result<()> {
        self.bulk(EP_BULK_OUT, msg.len() as u32, msg).map(|_| ())
    }

    fn bulk_in(&mut self) -> Result<Vec<u8>> {
        self.bulk(EP_BULK_IN, MAX_IN, &[]).map(|p| p.data)
    }
}

impl Drop for Redir {
    fn drop(&mut self) {
        self.stream.shutdown();
    }
}

/// vhci-hcd's side of an imported USB/IP device.
pub struct Usbip {
    imp: vhci::Importer,
    /// The interrupt IN URB kept pending, resubmitted when it completes (a NotifySlotChange).
    interrupt: Option<u32>,
    timeout: Duration,
}

/// USB/IP's endpoint numbers: the addresses without the direction bit.
const USBIP_INTERRUPT: u8 = EP_INTERRUPT_IN & 0x0F;
const USBIP_BULK_IN: u8 = EP_BULK_IN & 0x0F;
const USBIP_BULK_OUT: u8 = EP_BULK_OUT & 0x0F;

impl Usbip {
    /// Imports `busid` (retried for [`Options::import_retry`]), configures the device and
    /// keeps an interrupt URB pending, as the kernel's driver does.
    pub fn connect(addr: SocketAddr, busid: &str, o: &Options) -> Result<Usbip> {
        let deadline = Instant::now() + o.import_retry;
        let imp = loop {
            let why = match vhci::import(addr, busid) {
                Ok(Ok((_, imp))) => break imp,
                Ok(Err(status)) => format!("import refused ({status})"),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return err(Kind::Broken, format!("{addr} {busid}: {why}"));
            }
            std::thread::sleep(IMPORT_POLL);
        };
        let mut u = Usbip {
            imp,
            interrupt: None,
            timeout: o.timeout,
        };
        let seq = u.submit(|i| i.control([0, 9, 1, 0, 0, 0, 0, 0], &[]))?;
        u.wait(seq)?;
        // The first interrupt URB takes the pending NotifySlotChange, the next stays pending
        // for as long as nothing changes.
        let seq = u.submit_interrupt()?;
        u.wait(seq)?;
        u.interrupt = Some(u.submit_interrupt()?);
        Ok(u)
    }

    fn submit(&mut self, f: impl FnOnce(&mut vhci::Importer) -> crate::Result<u32>) -> Result<u32> {
        f(&mut self.imp).or_else(|e| err(Kind::Broken, format!("usbip submit: {e}")))
    }

    fn submit_interrupt(&mut self) -> Result<u32> {
        self.submit(|i| i.submit(USBIP_INTERRUPT, true, [0; 8], &[], 8))
    }

    fn wait(&mut self, seq: u32) -> Result<vhci::Ret> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return err(
                    Kind::Timeout,
                    format!("URB {seq}: no answer within {:?}", self.timeout),
                );
            }
            match self.imp.recv(left) {
                Ok(Some(r)) if r.seqnum == seq => return Ok(r),
                Ok(Some(r)) if Some(r.seqnum) == self.interrupt => {
                    self.interrupt = Some(self.submit_interrupt()?);
                }
                Ok(Some(_)) => {}
                // recv gives None for its timeout and, before it, for the end of the stream.
                Ok(None) if Instant::now() < deadline => {
                    return err(Kind::Broken, "the usbip connection ended")
                }
                Ok(None) => {}
                Err(e) => return err(Kind::Broken, format!("usbip read: {e}")),
            }
        }
    }

    fn bulk(&mut self, seq: u32, what: &str) -> Result<vhci::Ret> {
        let r = self.wait(seq)?;
        if r.status != 0 {
            return err(Kind::Wrong, format!("bulk {what} status {}", r.status));
        }
        Ok(r)
    }
}

impl Bulk for Usbip {
    fn bulk_out(&mut self, msg: &[u8]) -> Result<()> {
        let seq = self.submit(|i| i.submit(USBIP_BULK_OUT, false, [0; 8], msg, 0))?;
        self.bulk(seq, "OUT").map(|_| ())
    }

    fn bulk_in(&mut self) -> Result<Vec<u8>> {
        let seq = self.submit(|i| i.submit(USBIP_BULK_IN, true, [0; 8], &[], MAX_IN))?;
        self.bulk(seq, "IN").map(|r| r.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A device that answers every bulk IN from a script and keeps what was sent.
    struct Scripted {
        out: Vec<Vec<u8>>,
        answers: VecDeque<Vec<u8>>,
    }

    impl Bulk for Scripted {
        fn bulk_out(&mut self, msg: &[u8]) -> Result<()> {
            self.out.push(msg.to_vec());
            Ok(())
        }

        fn bulk_in(&mut self) -> Result<Vec<u8>> {
            self.answers.pop_front().ok_or_else(|| Error {
                kind: Kind::Timeout,
                msg: "no answer scripted".into(),
            })
        }
    }

    fn rdr(seq: u8, status: u8, data: &[u8]) -> Vec<u8> {
        let mut r = vec![0x80];
        r.extend_from_slice(&(data.len() as u32).to_le_bytes());
        r.extend_from_slice(&[0, seq, status, 0, 0]);
        r.extend_from_slice(data);
        r
    }

    #[test]
    fn a_command_waits_through_time_extensions_and_keeps_a_failed_answer() {
        let mut dev = Scripted {
            out: Vec::new(),
            answers: [rdr(7, 0x80, &[]), rdr(7, 0x80, &[]), rdr(7, 0x40, &[])].into(),
        };
        let r = ccid(&mut dev, 0x6F, 7, &[0x00, 0xA4]).unwrap();
        assert_eq!(r, rdr(7, 0x40, &[]));
        assert_eq!(dev.out, [vec![0x6F, 2, 0, 0, 0, 0, 7, 0, 0, 0, 0x00, 0xA4]]);
        assert!(dev.answers.is_empty());
    }

    #[test]
    fn an_answer_to_another_command_is_wrong() {
        let mut dev = Scripted {
            out: Vec::new(),
            answers: [rdr(6, 0, &[0x90, 0x00])].into(),
        };
        let e = ccid(&mut dev, 0x6F, 7, &[]).unwrap_err();
        assert_eq!(e.kind, Kind::Wrong, "{e}");
    }

    #[test]
    fn a_bulk_header_carries_the_high_half_of_the_length() {
        assert_eq!(
            bulk_header(EP_BULK_IN, MAX_IN),
            [0x82, 0, 0x0A, 0x00, 0, 0, 0, 0, 0x01, 0x00]
        );
    }
}
