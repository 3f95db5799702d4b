//! A [`UsbDevice`] decorator that records every completed transfer as a usbmon capture
//! (pcap, LINKTYPE_USB_LINUX_MMAPPED = 220, the format QEMU's `pcap=` property writes), so
//! Wireshark and tshark decode the CCID messages and the APDUs in them. Each transfer becomes a
//! submit ('S') and a complete ('C') record; an IN that stays pending is recorded when it
//! completes. The writer is injected, so this module does no I/O of its own.

use crate::usb::{Setup, Transfer, UsbDevice};
use std::io::Write;
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

/// Records transfers of the wrapped device into `W`.
pub struct PcapDevice<D: UsbDevice, W: Write + Send> {
    inner: D,
    out: W,
    next_id: u64,
    failed: bool,
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

impl<D: UsbDevice, W: Write + Send> PcapDevice<D, W> {
    /// Wraps `inner`; writes the pcap header now.
    pub fn new(inner: D, mut out: W) -> std::io::Result<Self> {
        out.write_all(&global_header())?;
        Ok(PcapDevice {
            inner,
            out,
            next_id: 1,
            failed: false,
        })
    }

    /// One 64-byte usbmon header (struct usbmon_packet, linux/Documentation/usb/usbmon.rst)
    /// plus the captured data, as one pcap record.
    fn record(&mut self, id: u64, r: Record) {
        if self.failed {
            return;
        }
        let now = SystemTime::now()
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

impl<D: UsbDevice, W: Write + Send> UsbDevice for PcapDevice<D, W> {
    fn device_descriptor(&self) -> Vec<u8> {
        self.inner.device_descriptor()
    }
    fn config_descriptor(&self) -> Vec<u8> {
        self.inner.config_descriptor()
    }
    fn control(&mut self, setup: &Setup, data: &[u8]) -> Transfer {
        let t = self.inner.control(setup, data);
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
        let reply: Vec<u8> = match &t {
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
                status: status_of(&t),
                length: len,
                data: &reply,
            },
        );
        t
    }
    fn out(&mut self, ep: u8, data: &[u8]) -> Transfer {
        let t = self.inner.out(ep, data);
        let id = self.id();
        let n = data.len() as u32;
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
                status: status_of(&t),
                length: n,
                data: &[],
            },
        );
        t
    }
    fn input(&mut self, ep: u8, max_len: usize) -> Transfer {
        let t = self.inner.input(ep, max_len);
        if matches!(t, Transfer::Pending) {
            return t;
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
        let data: Vec<u8> = match &t {
            Transfer::Done(d) => d.clone(),
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
                status: status_of(&t),
                length: n,
                data: &data,
            },
        );
        t
    }
    fn ready(&self, ep: u8) -> bool {
        self.inner.ready(ep)
    }
    fn reset(&mut self) {
        self.inner.reset()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn records_layout() {
        let mut buf = Vec::new();
        {
            let mut d = PcapDevice::new(Echo, &mut buf).unwrap();
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
