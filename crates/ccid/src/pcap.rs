//! A [`Tap`] on THE reader that records every completed transfer as a usbmon capture
//! (pcap, LINKTYPE_USB_LINUX_MMAPPED = 220, the format QEMU's `pcap=` property writes), so
//! Wireshark and tshark decode the CCID messages and the APDUs in them. Each transfer becomes a
//! submit ('S') and a complete ('C') record; an IN that stays pending is recorded when it
//! completes. The writer is injected, so this module does no I/O of its own.
//!
//! Secrets are blanked unless asked for ([`PcapTap::keep_secrets`]): the PIN, PUK and
//! management-key bytes of XfrBlock commands and the data of the DataBlock answering a command
//! whose response is secret (apdu::describe's redaction) are written as zeros, with every
//! length kept, so Wireshark still parses the capture.

use crate::message::{pc_to_rdr, rdr_to_pc, HEADER, TIME_EXTENSION};
use crate::usb::{Setup, Tap, Transfer};
use apdu::describe::{self, Decoder};
use std::borrow::Cow;
use std::io::Write;
use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

/// pcap global header: magic, version 2.4, zone 0, sigfigs 0, snaplen 65535+64, linktype 220.
fn global_header() -> Vec<u8> {
    let mut h = Vec::with_capacity(24);
    h.extend_from_slice(&0xA1B2_C3D4u32.to_le_bytes());
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&4u16.to_le_bytes());
    h.extend_from_slice(&0i32.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&(65535u32 + 64).to_le_bytes());
    h.extend_from_slice(&220u32.to_le_bytes());
    h
}

/// usbmon transfer types.
const XFER_INTERRUPT: u8 = 1;
const XFER_CONTROL: u8 = 2;
const XFER_BULK: u8 = 3;

/// Records the transfers of the reader it taps into `W`.
pub struct PcapTap<W: Write + Send> {
    out: W,
    next_id: u64,
    failed: bool,
    /// The time records are stamped with instead of now (a capture made afterwards from a
    /// trace, `PcapTap::at`).
    at: Option<SystemTime>,
    /// `None` when the user asked for the secrets (`--pcap-secrets`).
    redactor: Option<Redactor>,
}

/// One CCID message crossing an endpoint in one or more transfers: how much of it has been
/// seen, its length, and the message bytes to blank.
#[derive(Debug, Default)]
struct Partial {
    seen: usize,
    total: usize,
    secret: Option<Range<usize>>,
    /// The reply bytes kept to tell the decoder the status word (bulk IN only).
    reply: Option<Vec<u8>>,
}

impl Partial {
    /// Blanks this transfer's share of the secret range; advances.
    fn apply<'a>(&mut self, data: &'a [u8]) -> Cow<'a, [u8]> {
        let start = self.seen;
        self.seen = self.seen.saturating_add(data.len());
        if let Some(reply) = &mut self.reply {
            reply.extend_from_slice(data);
        }
        let Some(r) = &self.secret else {
            return Cow::Borrowed(data);
        };
        let from = r.start.max(start);
        let to = r.end.min(self.seen);
        if from >= to {
            return Cow::Borrowed(data);
        }
        let mut v = data.to_vec();
        v[from - start..to - start].fill(0);
        Cow::Owned(v)
    }
    fn done(&self) -> bool {
        self.seen >= self.total
    }
}

/// Follows the CCID messages on the bulk endpoints (CCID §6.1.4 XfrBlock, §6.2.1 DataBlock)
/// and blanks what apdu::describe calls secret.
#[derive(Debug, Default)]
struct Redactor {
    decoder: Decoder,
    out: Option<Partial>,
    input: Option<Partial>,
    /// An extended-APDU chain (wLevelParameter 1, 3 ..., 2) under way: the first block's APDU
    /// header, and whether the chain's data is secret.
    chain: Option<(Vec<u8>, bool)>,
    /// The XfrBlock awaiting its DataBlock: bSeq, the command (blanked), whether the answer is
    /// secret.
    pending: Option<(u8, Vec<u8>, bool)>,
}

/// The message length a header announces (dwLength plus the header), if `data` holds one.
fn message_len(data: &[u8]) -> Option<usize> {
    let len = data.get(1..5)?;
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]);
    Some(HEADER.saturating_add(len as usize))
}

impl Redactor {
    /// A bulk-OUT transfer (the whole message, or one piece of it).
    fn out<'a>(&mut self, data: &'a [u8]) -> Cow<'a, [u8]> {
        let mut part = match self.out.take() {
            Some(p) => p,
            None => match message_len(data) {
                Some(total) if data.len() > HEADER && data[0] == pc_to_rdr::XFR_BLOCK => {
                    self.xfr_block(data, total)
                }
                Some(total) => Partial {
                    total,
                    ..Partial::default()
                },
                // Shorter than a header: the reader STALLs it; nothing follows it.
                None => return Cow::Borrowed(data),
            },
        };
        let shown = part.apply(data);
        if !part.done() {
            self.out = Some(part);
        }
        shown
    }

    /// The first transfer of an XfrBlock of `total` bytes: what to blank, and what to expect.
    fn xfr_block(&mut self, data: &[u8], total: usize) -> Partial {
        let seq = data[6];
        // wLevelParameter (CCID §6.1.4, extended APDU level): 0 a whole APDU, 1 begins a
        // chain, 3 continues it, 2 ends it, 0x10 an empty continuation.
        let level = u16::from_le_bytes([data[8], data[9]]);
        let have = &data[HEADER..data.len().min(total)];
        let whole = data.len() >= total;
        let header_secret = |apdu: &[u8]| match apdu.first_chunk::<4>() {
            Some(&[_, ins, _, p2]) => describe::ins_may_carry_secret(ins, p2),
            None => false,
        };
        let after_header = (HEADER + 4).min(total)..total;
        let secret = match level {
            0 => {
                let secret = if whole {
                    describe::secret_range(have).map(|r| r.start + HEADER..r.end + HEADER)
                } else {
                    header_secret(have).then_some(after_header)
                };
                let cmd = describe::redact_command(have).into_owned();
                // A truncated GET DATA does not parse and so counts as secret.
                let resp_secret = self.decoder.response_is_secret(&cmd);
                self.chain = None;
                self.pending = Some((seq, cmd, resp_secret));
                secret
            }
            1 => {
                let secret = header_secret(have);
                self.chain = Some((have.iter().take(4).copied().collect(), secret));
                secret.then_some(after_header)
            }
            _ => {
                let (header, secret) = self.chain.clone().unwrap_or_default();
                if level == 2 {
                    self.chain = None;
                    // Only the header is kept: a chained GET DATA counts as secret.
                    let resp_secret =
                        self.decoder.response_is_secret(&header) || header.get(1) == Some(&0xCB);
                    self.pending = Some((seq, header, resp_secret));
                }
                secret.then_some(HEADER..total)
            }
        };
        Partial {
            total,
            secret,
            ..Partial::default()
        }
    }

    /// A completed bulk-IN transfer.
    fn input<'a>(&mut self, data: &'a [u8]) -> Cow<'a, [u8]> {
        let mut part = match self.input.take() {
            Some(p) => p,
            None => match message_len(data) {
                Some(total) => self.data_block(data, total),
                None => return Cow::Borrowed(data),
            },
        };
        let shown = part.apply(data);
        if part.done() {
            if let (Some(reply), Some((_, cmd, _))) = (&part.reply, self.pending.take()) {
                let end = reply.len().min(part.total);
                self.decoder
                    .observe(&cmd, reply.get(HEADER..end).unwrap_or_default());
            }
        } else {
            self.input = Some(part);
        }
        shown
    }

    /// The first transfer of a reply of `total` bytes.
    fn data_block(&mut self, data: &[u8], total: usize) -> Partial {
        let answers_pending = data[0] == rdr_to_pc::DATA_BLOCK
            && data[7] & 0xC0 != TIME_EXTENSION
            && self.pending.as_ref().is_some_and(|p| p.0 == data[6]);
        if !answers_pending {
            return Partial {
                total,
                ..Partial::default()
            };
        }
        let secret = self.pending.as_ref().is_some_and(|p| p.2);
        Partial {
            total,
            // All of the response but SW1 SW2.
            secret: (secret && total > HEADER + 2).then_some(HEADER..total - 2),
            reply: Some(Vec::new()),
            ..Partial::default()
        }
    }
}

struct Record<'a> {
    kind: u8,
    xfer: u8,
    ep: u8,
    setup: Option<[u8; 8]>,
    status: i32,
    length: u32,
    data: &'a [u8],
}

impl<W: Write + Send> PcapTap<W> {
    /// A capture into `out`; writes the pcap header now.
    pub fn new(mut out: W) -> std::io::Result<Self> {
        out.write_all(&global_header())?;
        Ok(PcapTap {
            out,
            next_id: 1,
            failed: false,
            at: None,
            redactor: Some(Redactor::default()),
        })
    }

    /// Stamps the records that follow with `t` instead of the time they are written (`None`:
    /// now again): a capture written afterwards from a trace keeps each exchange's time.
    pub fn at(&mut self, t: Option<SystemTime>) {
        self.at = t;
    }

    /// Whether to write PIN, PUK and management-key bytes as they are (`--pcap-secrets`);
    /// by default they are blanked.
    pub fn keep_secrets(mut self, keep: bool) -> Self {
        self.redactor = (!keep).then(Redactor::default);
        self
    }

    /// One 64-byte usbmon header (struct usbmon_packet, linux/Documentation/usb/usbmon.rst)
    /// plus the captured data, as one pcap record.
    fn record(&mut self, id: u64, r: Record) {
        if self.failed {
            return;
        }
        let now = self
            .at
            .unwrap_or_else(SystemTime::now)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut m = Vec::with_capacity(64 + r.data.len());
        m.extend_from_slice(&id.to_le_bytes());
        m.push(r.kind);
        m.push(r.xfer);
        m.push(r.ep);
        m.push(1); // devnum
        m.extend_from_slice(&1u16.to_le_bytes()); // busnum
        m.push(if r.setup.is_some() { 0 } else { b'-' }); // flag_setup: 0 = setup present
        m.push(if r.data.is_empty() { b'<' } else { 0 }); // flag_data: 0 = data present
        m.extend_from_slice(&(now.as_secs() as i64).to_le_bytes());
        m.extend_from_slice(&(now.subsec_micros() as i32).to_le_bytes());
        m.extend_from_slice(&r.status.to_le_bytes());
        m.extend_from_slice(&r.length.to_le_bytes());
        m.extend_from_slice(&(r.data.len() as u32).to_le_bytes());
        m.extend_from_slice(&r.setup.unwrap_or([0; 8]));
        m.extend_from_slice(&0i32.to_le_bytes()); // interval
        m.extend_from_slice(&0i32.to_le_bytes()); // start_frame
        m.extend_from_slice(&0u32.to_le_bytes()); // xfer_flags
        m.extend_from_slice(&0u32.to_le_bytes()); // ndesc
        m.extend_from_slice(r.data);
        let mut rec = Vec::with_capacity(16 + m.len());
        rec.extend_from_slice(&(now.as_secs() as u32).to_le_bytes());
        rec.extend_from_slice(&now.subsec_micros().to_le_bytes());
        rec.extend_from_slice(&(m.len() as u32).to_le_bytes());
        rec.extend_from_slice(&(m.len() as u32).to_le_bytes());
        rec.extend_from_slice(&m);
        if let Err(e) = self.out.write_all(&rec).and_then(|_| self.out.flush()) {
            tracing::warn!("pcap capture stopped: {e}");
            self.failed = true;
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

/// usbmon status: 0 ok, -EPIPE (-32) for a STALL.
fn status_of(t: &Transfer) -> i32 {
    if matches!(t, Transfer::Stall) {
        -32
    } else {
        0
    }
}

impl<W: Write + Send> Tap for PcapTap<W> {
    fn control(&mut self, setup: &Setup, data: &[u8], t: &Transfer) {
        let id = self.id();
        let raw = {
            let mut s = [setup.request_type, setup.request, 0, 0, 0, 0, 0, 0];
            s[2..4].copy_from_slice(&setup.value.to_le_bytes());
            s[4..6].copy_from_slice(&setup.index.to_le_bytes());
            s[6..8].copy_from_slice(&setup.length.to_le_bytes());
            s
        };
        let ep = setup.request_type & 0x80;
        let out_data = if setup.is_in() { &[][..] } else { data };
        self.record(
            id,
            Record {
                kind: b'S',
                xfer: XFER_CONTROL,
                ep,
                setup: Some(raw),
                status: -115,
                length: u32::from(setup.length),
                data: out_data,
            },
        );
        let reply: Vec<u8> = match t {
            Transfer::Done(d) if setup.is_in() => d.clone(),
            _ => Vec::new(),
        };
        let len = reply.len() as u32;
        self.record(
            id,
            Record {
                kind: b'C',
                xfer: XFER_CONTROL,
                ep,
                setup: None,
                status: status_of(t),
                length: len,
                data: &reply,
            },
        );
    }
    fn out(&mut self, ep: u8, data: &[u8], t: &Transfer) {
        let id = self.id();
        let n = data.len() as u32;
        let data = match &mut self.redactor {
            Some(r) if ep == crate::descriptors::EP_BULK_OUT => r.out(data),
            _ => Cow::Borrowed(data),
        };
        let data = &data[..];
        self.record(
            id,
            Record {
                kind: b'S',
                xfer: XFER_BULK,
                ep,
                setup: None,
                status: -115,
                length: n,
                data,
            },
        );
        self.record(
            id,
            Record {
                kind: b'C',
                xfer: XFER_BULK,
                ep,
                setup: None,
                status: status_of(t),
                length: n,
                data: &[],
            },
        );
    }
    fn input(&mut self, ep: u8, max_len: usize, t: &Transfer) {
        if matches!(t, Transfer::Pending) {
            return;
        }
        let xfer = if ep == crate::descriptors::EP_INTERRUPT_IN {
            XFER_INTERRUPT
        } else {
            XFER_BULK
        };
        let id = self.id();
        self.record(
            id,
            Record {
                kind: b'S',
                xfer,
                ep,
                setup: None,
                status: -115,
                length: max_len as u32,
                data: &[],
            },
        );
        let data: Vec<u8> = match (t, &mut self.redactor) {
            (Transfer::Done(d), Some(r)) if ep == crate::descriptors::EP_BULK_IN => {
                r.input(d).into_owned()
            }
            (Transfer::Done(d), _) => d.clone(),
            _ => Vec::new(),
        };
        let n = data.len() as u32;
        self.record(
            id,
            Record {
                kind: b'C',
                xfer,
                ep,
                setup: None,
                status: status_of(t),
                length: n,
                data: &data,
            },
        );
    }
    fn reset(&mut self) {
        if let Some(r) = &mut self.redactor {
            *r = Redactor::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usb::UsbDevice;

    /// A test double with a tap on it, as `Ccid::with_tap` puts one on THE reader.
    struct Tapped<D: UsbDevice, W: Write + Send> {
        dev: D,
        tap: PcapTap<W>,
    }

    impl<D: UsbDevice, W: Write + Send> Tapped<D, W> {
        fn new(dev: D, out: W) -> Self {
            Tapped {
                dev,
                tap: PcapTap::new(out).unwrap(),
            }
        }
        fn keep_secrets(mut self, keep: bool) -> Self {
            self.tap = self.tap.keep_secrets(keep);
            self
        }
        fn control(&mut self, setup: &Setup, data: &[u8]) -> Transfer {
            let t = self.dev.control(setup, data);
            self.tap.control(setup, data, &t);
            t
        }
        fn out(&mut self, ep: u8, data: &[u8]) -> Transfer {
            let t = self.dev.out(ep, data);
            self.tap.out(ep, data, &t);
            t
        }
        fn input(&mut self, ep: u8, max: usize) -> Transfer {
            let t = self.dev.input(ep, max);
            self.tap.input(ep, max, &t);
            t
        }
    }

    struct Echo;
    impl UsbDevice for Echo {
        fn device_descriptor(&self) -> Vec<u8> {
            vec![]
        }
        fn config_descriptor(&self) -> Vec<u8> {
            vec![]
        }
        fn control(&mut self, _: &Setup, _: &[u8]) -> Transfer {
            Transfer::Done(vec![0x12, 0x01])
        }
        fn out(&mut self, _: u8, _: &[u8]) -> Transfer {
            Transfer::Done(vec![])
        }
        fn input(&mut self, _: u8, _: usize) -> Transfer {
            Transfer::Pending
        }
        fn ready(&self, _: u8) -> bool {
            false
        }
        fn reset(&mut self) {}
    }

    /// A device that queues the given bulk-IN replies and answers OUT transfers.
    struct Script(std::collections::VecDeque<Vec<u8>>);
    impl UsbDevice for Script {
        fn device_descriptor(&self) -> Vec<u8> {
            vec![]
        }
        fn config_descriptor(&self) -> Vec<u8> {
            vec![]
        }
        fn control(&mut self, _: &Setup, _: &[u8]) -> Transfer {
            Transfer::Stall
        }
        fn out(&mut self, _: u8, _: &[u8]) -> Transfer {
            Transfer::Done(vec![])
        }
        fn input(&mut self, _: u8, _: usize) -> Transfer {
            match self.0.pop_front() {
                Some(d) => Transfer::Done(d),
                None => Transfer::Pending,
            }
        }
        fn ready(&self, _: u8) -> bool {
            false
        }
        fn reset(&mut self) {}
    }

    /// (kind, endpoint, data) of every record with data.
    fn records(buf: &[u8]) -> Vec<(char, u8, String)> {
        let mut off = 24;
        let mut out = Vec::new();
        while off < buf.len() {
            let incl = u32::from_le_bytes(buf[off + 8..off + 12].try_into().unwrap()) as usize;
            let rec = &buf[off + 16..off + 16 + incl];
            if incl > 64 {
                out.push((rec[8] as char, rec[10], apdu::hex::spaced(&rec[64..])));
            }
            off += 16 + incl;
        }
        out
    }

    fn xfr(seq: u8, level: u16, apdu: &str) -> Vec<u8> {
        let a = apdu::hex::h(apdu);
        let mut m = vec![0x6F];
        m.extend_from_slice(&(a.len() as u32).to_le_bytes());
        m.extend_from_slice(&[0, seq, 0]);
        m.extend_from_slice(&level.to_le_bytes());
        m.extend_from_slice(&a);
        m
    }

    fn block(seq: u8, resp: &[u8]) -> Vec<u8> {
        let mut m = vec![0x80];
        m.extend_from_slice(&(resp.len() as u32).to_le_bytes());
        m.extend_from_slice(&[0, seq, 0, 0, 0]);
        m.extend_from_slice(resp);
        m
    }

    /// A session with every kind of secret, captured with or without them.
    fn session(keep: bool) -> Vec<(char, u8, String)> {
        let ga_out = [vec![0x5A; 32], vec![0x61, 0x10]].concat();
        let gr_out = [vec![0x5B; 16], vec![0x90, 0x00]].concat();
        let replies = [
            block(1, &[0x63, 0xC2]),
            block(2, &ga_out),
            block(3, &gr_out),
            block(4, &[0x4F, 0x01, 0x90, 0x00]),
            block(5, &[0x90, 0x00]),
        ];
        let mut buf = Vec::new();
        {
            let dev = Script(replies.into_iter().collect());
            let mut d = Tapped::new(dev, &mut buf).keep_secrets(keep);
            let ep_out = crate::descriptors::EP_BULK_OUT;
            let ep_in = crate::descriptors::EP_BULK_IN;
            d.out(ep_out, &xfr(1, 0, "00 20 00 80 08 33 31 34 31 35 39 32 36"));
            d.input(ep_in, 4096);
            d.out(ep_out, &xfr(2, 0, "00 87 07 9D 04 7C 02 81 00 00"));
            d.input(ep_in, 4096);
            d.out(ep_out, &xfr(3, 0, "00 C0 00 00 10"));
            d.input(ep_in, 4096);
            d.out(ep_out, &xfr(4, 0, "00 A4 04 00 05 A0 00 00 03 08"));
            d.input(ep_in, 4096);
            // An IMPORT KEY of 100 bytes in two transfers (64 + 51).
            let import = xfr(5, 0, &format!("00 FE 07 9A 64 {}", "AB ".repeat(100)));
            d.out(ep_out, &import[..64]);
            d.out(ep_out, &import[64..]);
            d.input(ep_in, 4096);
        }
        records(&buf)
    }

    #[test]
    fn secrets_are_blanked_with_lengths_kept() {
        let r = session(false);
        let zeros = |n: usize| vec!["00"; n].join(" ");
        assert_eq!(
            r[0],
            (
                'S',
                0x03,
                "6F 0D 00 00 00 00 01 00 00 00 00 20 00 80 08 00 00 00 00 00 00 00 00".into()
            )
        );
        assert_eq!(
            r[1],
            ('C', 0x82, "80 02 00 00 00 00 01 00 00 00 63 C2".into())
        );
        // GENERAL AUTHENTICATE: the command is not secret, its output is, and so is the rest
        // of it that GET RESPONSE fetches.
        assert_eq!(
            r[2],
            (
                'S',
                0x03,
                "6F 0A 00 00 00 00 02 00 00 00 00 87 07 9D 04 7C 02 81 00 00".into()
            )
        );
        assert_eq!(
            r[3],
            (
                'C',
                0x82,
                format!("80 22 00 00 00 00 02 00 00 00 {} 61 10", zeros(32))
            )
        );
        assert_eq!(
            r[5],
            (
                'C',
                0x82,
                format!("80 12 00 00 00 00 03 00 00 00 {} 90 00", zeros(16))
            )
        );
        assert_eq!(
            r[7],
            (
                'C',
                0x82,
                "80 04 00 00 00 00 04 00 00 00 4F 01 90 00".into()
            )
        );
        assert_eq!(
            r[8].2,
            // Split: everything after the APDU header goes, Lc too.
            format!("6F 69 00 00 00 00 05 00 00 00 00 FE 07 9A {}", zeros(50))
        );
        assert_eq!(r[9].2, zeros(51));
        for (_, _, hex) in &r {
            assert!(!hex.contains("33 31 34 31") && !hex.contains("5A") && !hex.contains("AB"));
        }
    }

    #[test]
    fn pcap_secrets_keeps_them() {
        let r = session(true);
        assert!(
            r[0].2.ends_with("00 20 00 80 08 33 31 34 31 35 39 32 36"),
            "{r:?}"
        );
        assert!(r[3].2.contains("5A 5A"));
        assert!(r[9].2.contains("AB AB"));
    }

    #[test]
    fn a_chained_secret_command_is_blanked_in_every_block() {
        let mut buf = Vec::new();
        {
            let dev = Script(Default::default());
            let mut d = Tapped::new(dev, &mut buf);
            let ep = crate::descriptors::EP_BULK_OUT;
            d.out(ep, &xfr(1, 1, "00 24 00 80 10 31 32 33"));
            d.out(ep, &xfr(2, 3, "34 35 36 37 38"));
            d.out(ep, &xfr(3, 2, "31 32 33 34 35 36 37 38"));
        }
        let r = records(&buf);
        assert_eq!(
            r[0].2,
            "6F 08 00 00 00 00 01 00 01 00 00 24 00 80 00 00 00 00"
        );
        assert_eq!(r[1].2, "6F 05 00 00 00 00 02 00 03 00 00 00 00 00 00");
        assert_eq!(
            r[2].2,
            "6F 08 00 00 00 00 03 00 02 00 00 00 00 00 00 00 00 00"
        );
    }

    #[test]
    fn records_layout() {
        let mut buf = Vec::new();
        {
            let mut d = Tapped::new(Echo, &mut buf);
            let setup = Setup {
                request_type: 0x80,
                request: 6,
                value: 0x0100,
                index: 0,
                length: 18,
            };
            d.control(&setup, &[]);
            d.out(0x03, &[0x65, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
            assert_eq!(d.input(0x82, 64), Transfer::Pending);
        }
        assert_eq!(&buf[..4], &[0xD4, 0xC3, 0xB2, 0xA1]);
        assert_eq!(&buf[20..24], &220u32.to_le_bytes());
        // Four records: control S (setup, no data), control C (2 bytes), bulk S (10), bulk C.
        let mut off = 24;
        let mut sizes = Vec::new();
        while off < buf.len() {
            let incl = u32::from_le_bytes(buf[off + 8..off + 12].try_into().unwrap()) as usize;
            let rec = &buf[off + 16..off + 16 + incl];
            sizes.push((rec[8], rec[9], rec[10], incl - 64));
            off += 16 + incl;
        }
        assert_eq!(
            sizes,
            vec![
                (b'S', 2, 0x80, 0),
                (b'C', 2, 0x80, 2),
                (b'S', 3, 0x03, 10),
                (b'C', 3, 0x03, 0)
            ]
        );
    }
}
