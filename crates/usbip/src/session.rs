//! The URB phase of one import, without I/O (transports.md §2.3–§2.5): CMD_SUBMIT and
//! CMD_UNLINK against a [`UsbDevice`]. IN transfers the device cannot answer yet stay pending
//! and complete later, in any order across endpoints (vhci keeps libccid's interrupt IN posted
//! for good); an unlinked pending URB gets RET_UNLINK −ECONNRESET and never a RET_SUBMIT.

use crate::{errno, ret_submit, ret_unlink, Urb, UrbDecoder, UsbipError};
use ccid::usb::{Setup, Transfer, UsbDevice};
use std::collections::VecDeque;

/// Pending IN URBs one importer may hold. vhci keeps a handful (an interrupt IN, a bulk IN
/// or two); far more means a misbehaving peer, whose connection is closed.
pub const MAX_PENDING: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PendingIn {
    seqnum: u32,
    /// Endpoint address with the IN bit.
    ep: u8,
    length: u32,
}

/// One importer's URB session.
#[derive(Debug)]
pub struct UrbSession {
    dec: UrbDecoder,
    /// Pending IN URBs in submission order; completed per endpoint in that order.
    pending: VecDeque<PendingIn>,
}

impl Default for UrbSession {
    fn default() -> Self {
        Self::new()
    }
}

impl UrbSession {
    /// A session after OP_REP_IMPORT.
    pub fn new() -> UrbSession {
        UrbSession {
            dec: UrbDecoder::new(),
            pending: VecDeque::new(),
        }
    }

    /// IN URBs waiting for data.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Bytes from the importer: every complete command is carried out; returns the replies,
    /// then whatever pending IN URBs the device can now complete. An error closes the
    /// connection (vhci treats its own protocol errors the same way).
    pub fn on_bytes(&mut self, b: &[u8], dev: &mut dyn UsbDevice) -> Result<Vec<u8>, UsbipError> {
        self.dec.feed(b);
        let mut out = Vec::new();
        while let Some(urb) = self.dec.next_urb()? {
            self.on_urb(urb, dev, &mut out)?;
        }
        out.extend(self.poll(dev));
        Ok(out)
    }

    fn on_urb(
        &mut self,
        urb: Urb,
        dev: &mut dyn UsbDevice,
        out: &mut Vec<u8>,
    ) -> Result<(), UsbipError> {
        match urb {
            Urb::Unlink {
                seqnum,
                unlink_seqnum,
            } => {
                // §2.4: pending → −ECONNRESET and forgotten; already answered (or never seen) → 0.
                let status = match self.pending.iter().position(|p| p.seqnum == unlink_seqnum) {
                    Some(i) => {
                        self.pending.remove(i);
                        -errno::ECONNRESET
                    }
                    None => 0,
                };
                out.extend(ret_unlink(seqnum, status));
            }
            Urb::Submit {
                seqnum,
                ep: 0,
                direction_in,
                length,
                setup,
                data,
                ..
            } => {
                let s = Setup::parse(setup);
                // SET_FEATURE(PORT_RESET) on EP0 is how the Linux stub sees a device reset.
                let t = if s.request_type == 0x23 && s.request == 0x03 && s.value == 4 {
                    dev.reset();
                    Transfer::Done(vec![])
                } else {
                    dev.control(&s, &data)
                };
                out.extend(match t {
                    Transfer::Done(mut v) if direction_in => {
                        v.truncate(length as usize);
                        ret_submit(seqnum, 0, v.len() as u32, &v)
                    }
                    Transfer::Done(_) => ret_submit(seqnum, 0, data.len() as u32, &[]),
                    Transfer::Pending | Transfer::Stall => {
                        ret_submit(seqnum, -errno::EPIPE, 0, &[])
                    }
                });
            }
            Urb::Submit {
                seqnum,
                ep,
                direction_in: false,
                data,
                ..
            } => {
                out.extend(match dev.out(ep, &data) {
                    // An OUT the device cannot take is a STALL; Pending has no meaning for OUT.
                    Transfer::Stall => ret_submit(seqnum, -errno::EPIPE, 0, &[]),
                    Transfer::Done(_) | Transfer::Pending => {
                        ret_submit(seqnum, 0, data.len() as u32, &[])
                    }
                });
            }
            Urb::Submit {
                seqnum, ep, length, ..
            } => {
                let p = PendingIn {
                    seqnum,
                    ep: ep | 0x80,
                    length,
                };
                if self.pending.iter().any(|q| q.ep == p.ep) {
                    // Behind an older URB on the same endpoint: data goes out in order.
                    self.push(p)?;
                } else {
                    match complete(dev, &p) {
                        Some(reply) => out.extend(reply),
                        None => self.push(p)?,
                    }
                }
            }
        }
        Ok(())
    }

    fn push(&mut self, p: PendingIn) -> Result<(), UsbipError> {
        if self.pending.len() >= MAX_PENDING {
            return Err(UsbipError::TooManyPending(MAX_PENDING));
        }
        self.pending.push_back(p);
        Ok(())
    }

    /// Completes the pending IN URBs the device can now answer (after a wake-up: the card
    /// answered, or was inserted or removed), oldest first on each endpoint.
    pub fn poll(&mut self, dev: &mut dyn UsbDevice) -> Vec<u8> {
        let mut out = Vec::new();
        let mut blocked: Vec<u8> = Vec::new();
        let mut i = 0;
        while i < self.pending.len() {
            let p = self.pending[i];
            // `input` itself, not `ready`: a device may learn of new data only when asked
            // (ccid's reader collects its card port's answers there).
            if blocked.contains(&p.ep) {
                i += 1;
                continue;
            }
            match complete(dev, &p) {
                Some(reply) => {
                    out.extend(reply);
                    self.pending.remove(i);
                }
                None => {
                    blocked.push(p.ep);
                    i += 1;
                }
            }
        }
        out
    }
}

/// RET_SUBMIT for an IN URB, or `None` while the device has nothing.
fn complete(dev: &mut dyn UsbDevice, p: &PendingIn) -> Option<Vec<u8>> {
    if p.length == 0 {
        return Some(ret_submit(p.seqnum, 0, 0, &[]));
    }
    match dev.input(p.ep, p.length as usize) {
        Transfer::Done(mut v) => {
            // vhci drops the connection on actual_length > transfer_buffer_length (§2.4).
            v.truncate(p.length as usize);
            Some(ret_submit(p.seqnum, 0, v.len() as u32, &v))
        }
        Transfer::Stall => Some(ret_submit(p.seqnum, -errno::EPIPE, 0, &[])),
        Transfer::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apdu::hex::{h, spaced};

    /// A device whose IN endpoints answer from queues the test fills.
    #[derive(Default)]
    struct Fake {
        bulk: VecDeque<Vec<u8>>,
        intr: VecDeque<Vec<u8>>,
        outs: Vec<(u8, Vec<u8>)>,
        resets: usize,
    }
    impl UsbDevice for Fake {
        fn device_descriptor(&self) -> Vec<u8> {
            h("12 01 1001 00 00 00 08 E608 3344 0000 01 02 03 01")
        }
        fn config_descriptor(&self) -> Vec<u8> {
            vec![]
        }
        fn control(&mut self, s: &Setup, _: &[u8]) -> Transfer {
            match (s.request_type, s.request) {
                (0x80, 0x06) => Transfer::Done(self.device_descriptor()),
                (0x00, 0x09) => Transfer::Done(vec![]),
                _ => Transfer::Stall,
            }
        }
        fn out(&mut self, ep: u8, data: &[u8]) -> Transfer {
            self.outs.push((ep, data.to_vec()));
            Transfer::Done(vec![])
        }
        fn input(&mut self, ep: u8, _: usize) -> Transfer {
            let q = if ep == 0x82 {
                &mut self.bulk
            } else {
                &mut self.intr
            };
            q.pop_front().map_or(Transfer::Pending, Transfer::Done)
        }
        fn ready(&self, ep: u8) -> bool {
            if ep == 0x82 {
                !self.bulk.is_empty()
            } else {
                !self.intr.is_empty()
            }
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
    }

    fn submit(seq: u32, dir_in: bool, ep: u32, len: u32, setup: &str, data: &str) -> Vec<u8> {
        let mut v = h(&format!(
            "00000001 {seq:08X} 00010002 {:08X} {ep:08X} 00000000 {len:08X} 00000000 00000000 00000000 {setup}",
            u32::from(dir_in)
        ));
        v.extend(h(data));
        v
    }
    fn unlink(seq: u32, victim: u32) -> Vec<u8> {
        h(&format!(
            "00000002 {seq:08X} 00010002 00000000 00000000 {victim:08X} {}",
            "00".repeat(24)
        ))
    }
    const NO_SETUP: &str = "0000000000000000";

    #[test]
    fn control_transfers() {
        let (mut s, mut d) = (UrbSession::new(), Fake::default());
        // GET_DESCRIPTOR(device), 64 bytes asked, 18 returned.
        let out = s
            .on_bytes(&submit(1, true, 0, 64, "8006000100004000", ""), &mut d)
            .unwrap();
        assert_eq!(
            spaced(&out),
            spaced(&h("00000003 00000001 00000000 00000000 00000000 00000000 00000012 00000000 00000000 00000000 0000000000000000 12011001000000 08E6083344 0000 01 02 03 01"))
        );
        // 8 asked: truncated to the URB's length.
        let out = s
            .on_bytes(&submit(2, true, 0, 8, "8006000100000800", ""), &mut d)
            .unwrap();
        assert_eq!(out.len(), 48 + 8);
        // SET_CONFIGURATION(1): OUT, no data stage.
        let out = s
            .on_bytes(&submit(3, false, 0, 0, "0009010000000000", ""), &mut d)
            .unwrap();
        assert_eq!(
            spaced(&out[..28]),
            spaced(&h(
                "00000003 00000003 00000000 00000000 00000000 00000000 00000000"
            ))
        );
        // Unsupported: STALL as −EPIPE.
        let out = s
            .on_bytes(&submit(4, true, 0, 2, "A1FF000000000200", ""), &mut d)
            .unwrap();
        assert_eq!(spaced(&out[20..28]), "FF FF FF E0 00 00 00 00");
        // SET_FEATURE(PORT_RESET) resets the device and succeeds.
        let out = s
            .on_bytes(&submit(5, false, 0, 0, "2303040000000000", ""), &mut d)
            .unwrap();
        assert_eq!((spaced(&out[20..24]), d.resets), ("00 00 00 00".into(), 1));
    }

    #[test]
    fn pending_ins_complete_out_of_order_and_unlink_rules() {
        let (mut s, mut d) = (UrbSession::new(), Fake::default());
        // Interrupt IN (ep 1) and bulk IN (ep 2) posted with nothing to say: no reply.
        let mut b = submit(10, true, 1, 4, NO_SETUP, "");
        b.extend(submit(11, true, 2, 65546, NO_SETUP, ""));
        b.extend(submit(12, true, 2, 65546, NO_SETUP, ""));
        assert!(s.on_bytes(&b, &mut d).unwrap().is_empty());
        assert_eq!(s.pending(), 3);
        assert!(s.poll(&mut d).is_empty(), "idle: nothing completes");
        // A bulk OUT is acknowledged with its length.
        let out = s
            .on_bytes(
                &submit(13, false, 3, 10, NO_SETUP, "65000000000000050000"),
                &mut d,
            )
            .unwrap();
        assert_eq!(
            spaced(&out[..28]),
            spaced(&h(
                "00000003 0000000D 00000000 00000000 00000000 00000000 0000000A"
            ))
        );
        assert_eq!(d.outs, vec![(3, h("65000000000000050000"))]);
        // The bulk answer arrives: the older bulk URB (11) completes, not the interrupt (10).
        d.bulk.push_back(h("81000000000000050000"));
        let out = s.poll(&mut d);
        assert_eq!(
            spaced(&out),
            spaced(&h("00000003 0000000B 00000000 00000000 00000000 00000000 0000000A 00000000 00000000 00000000 0000000000000000 81000000000000050000"))
        );
        // Unlink of the pending bulk URB 12: −ECONNRESET, and it never completes afterwards.
        let out = s.on_bytes(&unlink(14, 12), &mut d).unwrap();
        assert_eq!(
            spaced(&out),
            spaced(&h("00000004 0000000E 00000000 00000000 00000000 FFFFFF98 000000000000000000000000000000000000000000000000"))
        );
        d.bulk.push_back(h("80000000000000060000"));
        assert!(s.poll(&mut d).is_empty());
        // Unlink of the already completed URB 11, and of one never seen: status 0.
        let out = s.on_bytes(&unlink(15, 11), &mut d).unwrap();
        assert_eq!(spaced(&out[20..24]), "00 00 00 00");
        let out = s.on_bytes(&unlink(16, 999), &mut d).unwrap();
        assert_eq!(spaced(&out[20..24]), "00 00 00 00");
        // The slot change arrives on the interrupt endpoint (URB 10, submitted first).
        d.intr.push_back(h("50 03"));
        let out = s.poll(&mut d);
        assert_eq!(&out[4..8], &[0, 0, 0, 10]);
        assert_eq!(&out[48..], &[0x50, 0x03]);
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn too_many_pending_closes_the_connection() {
        let (mut s, mut d) = (UrbSession::new(), Fake::default());
        let mut b = Vec::new();
        for i in 0..=MAX_PENDING as u32 {
            b.extend(submit(i, true, 2, 64, NO_SETUP, ""));
        }
        assert_eq!(
            s.on_bytes(&b, &mut d),
            Err(UsbipError::TooManyPending(MAX_PENDING))
        );
    }
}
