//! One usbredir connection, device side (transports.md §1.3, §1.6): hello, then interface and
//! endpoint info before device_connect; control, bulk and interrupt transfers against a
//! [`UsbDevice`]; bulk IN transfers stay pending until the device has data; cancels, resets,
//! configuration and alternate settings.

use crate::codec::{self, encode, status, ty, Caps, CodecError, Decoded, Decoder, Packet};
use ccid::usb::{Setup, Transfer, UsbDevice};
use std::collections::VecDeque;

/// Index of an endpoint in usbredir's `[32]` arrays: OUT 0-15, IN 16-31.
fn ep_index(addr: u8) -> usize {
    (usize::from(addr & 0x80) >> 3) | usize::from(addr & 0x0F)
}

/// The device-side session.
#[derive(Debug)]
pub struct Session {
    caps: Caps,
    dec: Decoder,
    configuration: u8,
    /// Pending bulk IN transfers: (id, endpoint, length).
    bulk_in: VecDeque<(u64, u8, usize)>,
    /// Interrupt IN endpoints the guest started receiving on, and the next packet id.
    interrupt: Vec<u8>,
    interrupt_id: u64,
    version: String,
    /// Endpoints of the device: (address, type, interval, max packet).
    endpoints: Vec<(u8, u8, u8, u16)>,
    interface: (u8, u8, u8),
}

impl Session {
    /// A session for a device with these descriptors.
    pub fn new(version: &str, device: &dyn UsbDevice) -> Session {
        let cfg = device.config_descriptor();
        let mut endpoints = Vec::new();
        let mut interface = (0, 0, 0);
        let mut i = 0;
        while i + 1 < cfg.len() {
            let len = usize::from(cfg[i]);
            if len < 2 || i + len > cfg.len() {
                break;
            }
            match cfg[i + 1] {
                0x04 if len >= 9 => interface = (cfg[i + 5], cfg[i + 6], cfg[i + 7]),
                0x05 if len >= 7 => endpoints.push((
                    cfg[i + 2],
                    cfg[i + 3] & 0x03,
                    cfg[i + 6],
                    u16::from_le_bytes([cfg[i + 4], cfg[i + 5]]),
                )),
                _ => {}
            }
            i += len;
        }
        Session {
            caps: Caps::default(),
            dec: Decoder::new(),
            configuration: 0,
            bulk_in: VecDeque::new(),
            interrupt: Vec::new(),
            interrupt_id: 0,
            version: version.to_string(),
            endpoints,
            interface,
        }
    }

    /// The first bytes of a connection: our hello (nothing else until the guest's hello).
    pub fn start(&self) -> Vec<u8> {
        codec::hello(&self.version)
    }

    fn send(&self, out: &mut Vec<u8>, t: u32, id: u64, header: &[u8], data: &[u8]) {
        out.extend(encode(&self.caps, t, id, header, data));
    }

    fn interface_and_endpoints(&self, out: &mut Vec<u8>) {
        let mut iface = vec![0u8; 132];
        iface[0..4].copy_from_slice(&1u32.to_le_bytes());
        iface[4] = 0; // interface number
        iface[36] = self.interface.0;
        iface[68] = self.interface.1;
        iface[100] = self.interface.2;
        self.send(out, ty::INTERFACE_INFO, 0, &iface, &[]);
        let mut ep = vec![0u8; 160];
        ep[..32].fill(0xFF); // type: invalid
        for (idx, mps) in [(0usize, 64u16), (16, 64)] {
            ep[idx] = 0; // control
            ep[96 + 2 * idx..98 + 2 * idx].copy_from_slice(&mps.to_le_bytes());
        }
        for &(addr, kind, interval, mps) in &self.endpoints {
            let i = ep_index(addr);
            ep[i] = kind;
            ep[32 + i] = interval;
            ep[64 + i] = 0;
            ep[96 + 2 * i..98 + 2 * i].copy_from_slice(&mps.to_le_bytes());
        }
        self.send(out, ty::EP_INFO, 0, &ep, &[]);
    }

    /// Bytes from the guest: returns the bytes to send back. An error means the stream is lost
    /// and the connection must close.
    pub fn on_bytes(
        &mut self,
        bytes: &[u8],
        dev: &mut dyn UsbDevice,
    ) -> Result<Vec<u8>, CodecError> {
        self.dec.feed(bytes);
        let mut out = Vec::new();
        while let Some(d) = self.dec.next(&self.caps)? {
            match d {
                Decoded::Packet(p) => self.packet(p, dev, &mut out),
                Decoded::Skipped { ty, id, why } => {
                    tracing::warn!(ty, id, "usbredir packet skipped: {why}")
                }
            }
        }
        out.extend(self.poll(dev));
        Ok(out)
    }

    fn packet(&mut self, p: Packet, dev: &mut dyn UsbDevice, out: &mut Vec<u8>) {
        let h = &p.header;
        match p.ty {
            ty::HELLO => {
                let caps = p.data.get(..4).map_or(0, |c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
                let version = String::from_utf8_lossy(&h[..h.iter().position(|b| *b == 0).unwrap_or(h.len())]).into_owned();
                tracing::info!(%version, caps = format!("{caps:#x}"), "usbredir guest hello");
                self.caps = Caps { peer_hello: true, peer: caps };
                self.interface_and_endpoints(out);
                let d = dev.device_descriptor();
                let mut conn = vec![1, d.get(4).copied().unwrap_or(0), d.get(5).copied().unwrap_or(0), d.get(6).copied().unwrap_or(0)];
                conn.extend_from_slice(d.get(8..12).unwrap_or(&[0; 4]));
                if self.caps.device_version() {
                    conn.extend_from_slice(d.get(12..14).unwrap_or(&[0; 2]));
                }
                self.send(out, ty::DEVICE_CONNECT, 0, &conn, &[]);
            }
            ty::RESET => {
                dev.reset();
                for (id, ep, _) in std::mem::take(&mut self.bulk_in) {
                    self.bulk_reply(out, id, ep, status::CANCELLED, &[]);
                }
                for ep in std::mem::take(&mut self.interrupt) {
                    self.send(out, ty::INTERRUPT_RECEIVING_STATUS, 0, &[status::STALL, ep], &[]);
                }
            }
            ty::SET_CONFIGURATION => {
                let value = h[0];
                let setup = Setup { request_type: 0, request: 9, value: u16::from(value), index: 0, length: 0 };
                let st = match dev.control(&setup, &[]) {
                    Transfer::Done(_) => {
                        if value != self.configuration {
                            self.interface_and_endpoints(out);
                        }
                        self.configuration = value;
                        status::SUCCESS
                    }
                    _ => status::STALL,
                };
                self.send(out, ty::CONFIGURATION_STATUS, p.id, &[st, self.configuration], &[]);
            }
            ty::GET_CONFIGURATION => self.send(out, ty::CONFIGURATION_STATUS, p.id, &[status::SUCCESS, self.configuration], &[]),
            ty::SET_ALT_SETTING => {
                let st = if h[1] == 0 { status::SUCCESS } else { status::INVAL };
                self.send(out, ty::ALT_SETTING_STATUS, p.id, &[st, h[0], 0], &[]);
            }
            ty::GET_ALT_SETTING => self.send(out, ty::ALT_SETTING_STATUS, p.id, &[status::SUCCESS, h[0], 0], &[]),
            ty::START_INTERRUPT_RECEIVING => {
                let ep = h[0];
                if !self.interrupt.contains(&ep) {
                    self.interrupt.push(ep);
                }
                self.send(out, ty::INTERRUPT_RECEIVING_STATUS, p.id, &[status::SUCCESS, ep], &[]);
            }
            ty::STOP_INTERRUPT_RECEIVING => {
                self.interrupt.retain(|e| *e != h[0]);
                self.send(out, ty::INTERRUPT_RECEIVING_STATUS, p.id, &[status::SUCCESS, h[0]], &[]);
            }
            ty::CANCEL_DATA_PACKET => {
                // Only a pending IN can be cancelled; a finished one is ignored (not an error).
                if let Some(i) = self.bulk_in.iter().position(|(id, _, _)| *id == p.id) {
                    if let Some((id, ep, _)) = self.bulk_in.remove(i) {
                        self.bulk_reply(out, id, ep, status::CANCELLED, &[]);
                    }
                }
            }
            ty::FILTER_REJECT => tracing::warn!("QEMU rejected the device (filter_reject): check its usb-redir filter and bus speed"),
            ty::FILTER_FILTER => tracing::debug!(filter = %String::from_utf8_lossy(&p.data), "usbredir filter"),
            ty::DEVICE_DISCONNECT_ACK => tracing::debug!("device disconnect acknowledged"),
            ty::CONTROL_PACKET => {
                let (ep, request, request_type) = (h[0], h[1], h[2]);
                let value = u16::from_le_bytes([h[4], h[5]]);
                let index = u16::from_le_bytes([h[6], h[7]]);
                let length = u16::from_le_bytes([h[8], h[9]]);
                let setup = Setup { request_type, request, value, index, length };
                let (st, data) = match dev.control(&setup, &p.data) {
                    Transfer::Done(d) => (status::SUCCESS, d),
                    _ => (status::STALL, vec![]),
                };
                let (len, body) = if request_type & 0x80 != 0 { (data.len(), data) } else if st == status::SUCCESS { (p.data.len(), vec![]) } else { (0, vec![]) };
                let mut hdr = vec![ep, request, request_type, st];
                hdr.extend_from_slice(&value.to_le_bytes());
                hdr.extend_from_slice(&index.to_le_bytes());
                hdr.extend_from_slice(&(len as u16).to_le_bytes());
                self.send(out, ty::CONTROL_PACKET, p.id, &hdr, &body);
            }
            ty::BULK_PACKET => {
                let ep = h[0];
                let mut len = usize::from(u16::from_le_bytes([h[2], h[3]]));
                if self.caps.bulk32() {
                    len |= usize::from(u16::from_le_bytes([h[8], h[9]])) << 16;
                }
                if ep & 0x80 != 0 {
                    self.bulk_in.push_back((p.id, ep, len));
                } else {
                    let st = match dev.out(ep, &p.data) {
                        Transfer::Done(_) => status::SUCCESS,
                        _ => status::STALL,
                    };
                    let accepted = if st == status::SUCCESS { p.data.len() } else { 0 };
                    self.bulk_header_reply(out, p.id, ep, st, accepted);
                }
            }
            ty::INTERRUPT_PACKET => {
                // Interrupt OUT: our device has none.
                self.send(out, ty::INTERRUPT_PACKET, p.id, &[h[0], status::STALL, 0, 0], &[]);
            }
            ty::START_ISO_STREAM | ty::STOP_ISO_STREAM => self.send(out, ty::ISO_STREAM_STATUS, p.id, &[status::INVAL, h[0]], &[]),
            ty::ISO_PACKET => self.send(out, ty::ISO_PACKET, p.id, &[h[0], status::INVAL, 0, 0], &[]),
            ty::ALLOC_BULK_STREAMS | ty::FREE_BULK_STREAMS => {
                let mut hdr = h[..4].to_vec();
                hdr.extend_from_slice(&[0, 0, 0, 0, status::INVAL]);
                self.send(out, ty::BULK_STREAMS_STATUS, p.id, &hdr, &[]);
            }
            ty::START_BULK_RECEIVING | ty::STOP_BULK_RECEIVING => {
                let ep = if p.ty == ty::START_BULK_RECEIVING { h[8] } else { h[4] };
                let mut hdr = h[..4].to_vec();
                hdr.extend_from_slice(&[ep, status::INVAL]);
                self.send(out, ty::BULK_RECEIVING_STATUS, p.id, &hdr, &[]);
            }
            other => tracing::warn!(ty = other, "usbredir packet not expected from the guest; ignored"),
        }
    }

    fn bulk_header_reply(&self, out: &mut Vec<u8>, id: u64, ep: u8, st: u8, len: usize) {
        let mut hdr = vec![ep, st];
        hdr.extend_from_slice(&(len as u16).to_le_bytes());
        hdr.extend_from_slice(&0u32.to_le_bytes());
        if self.caps.bulk32() {
            hdr.extend_from_slice(&((len >> 16) as u16).to_le_bytes());
        }
        self.send(out, ty::BULK_PACKET, id, &hdr, &[]);
    }

    fn bulk_reply(&self, out: &mut Vec<u8>, id: u64, ep: u8, st: u8, data: &[u8]) {
        let mut hdr = vec![ep, st];
        hdr.extend_from_slice(&(data.len() as u16).to_le_bytes());
        hdr.extend_from_slice(&0u32.to_le_bytes());
        if self.caps.bulk32() {
            hdr.extend_from_slice(&((data.len() >> 16) as u16).to_le_bytes());
        }
        self.send(out, ty::BULK_PACKET, id, &hdr, data);
    }

    /// Completes whatever the device can now answer: pending bulk INs in order, and interrupt
    /// data on started endpoints. Call after anything that may have produced data.
    pub fn poll(&mut self, dev: &mut dyn UsbDevice) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(&(id, ep, len)) = self.bulk_in.front() {
            match dev.input(ep, len) {
                Transfer::Done(d) => {
                    self.bulk_in.pop_front();
                    self.bulk_reply(&mut out, id, ep, status::SUCCESS, &d);
                }
                Transfer::Stall => {
                    self.bulk_in.pop_front();
                    self.bulk_reply(&mut out, id, ep, status::STALL, &[]);
                }
                Transfer::Pending => break,
            }
        }
        for ep in self.interrupt.clone() {
            while let Transfer::Done(d) = dev.input(ep, 64) {
                let id = self.interrupt_id;
                self.interrupt_id += 1;
                self.send(
                    &mut out,
                    ty::INTERRUPT_PACKET,
                    id,
                    &[ep, status::SUCCESS, d.len() as u8, 0],
                    &d,
                );
            }
        }
        out
    }
}
