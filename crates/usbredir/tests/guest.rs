//! The session driven by a scripted usbredir guest (QEMU's side), packet by packet, against a
//! CCID reader with an instant card: the handshake, descriptors, CCID over bulk transfers with
//! pending INs, interrupt notifications, cancel, reset, and packets QEMU may send that a CCID
//! device does not support.

use apdu::hex::h;
use card_api::{Card, FixedCard, Presence};
use ccid::descriptors::Identity;
use ccid::device::Ccid;
use usbredir::codec::{encode, ty, Caps, Decoded, Decoder, Packet};
use usbredir::session::Session;

struct Guest {
    s: Session,
    dev: Ccid,
    caps: Caps,
    presence: Presence,
}

impl Guest {
    fn new() -> Guest {
        let card = FixedCard::new(&h("3B 02 14 50"), &h("90 00"));
        let presence = card.presence();
        let dev = Ccid::new(Identity::default(), Box::new(card));
        let s = Session::new("vccid", &dev);
        Guest {
            s,
            dev,
            caps: Caps::default(),
            presence,
        }
    }
    /// Sends one packet; returns the packets the session answers.
    fn send(&mut self, t: u32, id: u64, header: &[u8], data: &[u8]) -> Vec<Packet> {
        let bytes = encode(&self.caps, t, id, header, data);
        let out = self.s.on_bytes(&bytes, &mut self.dev).unwrap();
        self.decode(&out)
    }
    fn decode(&self, out: &[u8]) -> Vec<Packet> {
        let mut d = Decoder::new();
        d.feed(out);
        let mut v = Vec::new();
        while let Some(Decoded::Packet(p)) = d.next(&self.caps).unwrap() {
            v.push(p);
        }
        assert_eq!(d.pending(), 0);
        v
    }
    fn handshake(&mut self) {
        let hello = self.s.start();
        assert_eq!(hello.len(), 80);
        let mut version = [0u8; 64];
        version[..6].copy_from_slice(b"qemu 7");
        // QEMU's caps 0xFF; from here on both sides use 16-byte headers.
        let bytes = encode(
            &Caps::default(),
            ty::HELLO,
            0,
            &version,
            &0xFFu32.to_le_bytes(),
        );
        self.caps = Caps {
            peer_hello: true,
            peer: 0xFF,
        };
        let out = self.s.on_bytes(&bytes, &mut self.dev).unwrap();
        let p = self.decode(&out);
        assert_eq!(
            p.iter().map(|p| p.ty).collect::<Vec<_>>(),
            vec![ty::INTERFACE_INFO, ty::EP_INFO, ty::DEVICE_CONNECT]
        );
        assert_eq!(
            (p[0].header.len(), p[0].header[0], p[0].header[36]),
            (132, 1, 0x0B)
        );
        let ep = &p[1].header;
        assert_eq!(ep.len(), 160);
        // type[idx]: 0x03 bulk (idx 3), 0x81 interrupt (idx 17, interval 255), 0x82 bulk (18).
        assert_eq!(
            (ep[3], ep[17], ep[18], ep[32 + 17], ep[4]),
            (2, 3, 2, 255, 0xFF)
        );
        assert_eq!(&ep[96 + 2 * 17..98 + 2 * 17], &[64, 0]);
        assert_eq!(p[2].header, h("01 00 00 00 E6 08 33 44 00 00"));
    }
}

fn bulk(ep: u8, len: usize) -> Vec<u8> {
    let mut hd = vec![ep, 0];
    hd.extend_from_slice(&(len as u16).to_le_bytes());
    hd.extend_from_slice(&[0, 0, 0, 0]);
    hd.extend_from_slice(&((len >> 16) as u16).to_le_bytes());
    hd
}

#[test]
fn handshake_descriptors_and_configuration() {
    let mut g = Guest::new();
    g.handshake();
    let r = g.send(ty::CONTROL_PACKET, 7, &h("80 06 80 00 0001 0000 4000"), &[]);
    assert_eq!(r[0].id, 7);
    assert_eq!(r[0].header[3], 0, "status success");
    assert_eq!(
        r[0].data,
        h("12 01 10 01 00 00 00 40 E6 08 33 44 00 00 01 02 03 01")
    );
    let r = g.send(ty::CONTROL_PACKET, 8, &h("80 06 80 00 0006 0000 0A00"), &[]);
    assert_eq!(
        (r[0].header[3], r[0].data.len()),
        (4, 0),
        "device qualifier: stall"
    );
    let r = g.send(ty::SET_CONFIGURATION, 9, &[1], &[]);
    assert_eq!(r.last().unwrap().ty, ty::CONFIGURATION_STATUS);
    assert_eq!(r.last().unwrap().header, vec![0, 1]);
    let r = g.send(ty::GET_CONFIGURATION, 10, &[], &[]);
    assert_eq!(r[0].header, vec![0, 1]);
    assert_eq!(
        g.send(ty::SET_ALT_SETTING, 11, &[0, 1], &[])[0].header,
        vec![2, 0, 0]
    );
    assert_eq!(
        g.send(ty::GET_ALT_SETTING, 12, &[0], &[])[0].header,
        vec![0, 0, 0]
    );
}

#[test]
fn ccid_over_bulk_with_pending_in_cancel_and_interrupts() {
    let mut g = Guest::new();
    g.handshake();
    // Bulk IN first: stays pending (nothing to read yet).
    assert!(g
        .send(ty::BULK_PACKET, 20, &bulk(0x82, 65554), &[])
        .is_empty());
    // PowerOn over bulk OUT: acked, and the pending IN completes with the DataBlock.
    let r = g.send(
        ty::BULK_PACKET,
        21,
        &bulk(0x03, 10),
        &h("62 00000000 00 01 000000"),
    );
    assert_eq!((r[0].id, r[0].header[1], r[0].data.len()), (21, 0, 0));
    assert_eq!(&r[0].header[2..4], &[10, 0]);
    assert_eq!(
        (r[1].id, r[1].data.clone()),
        (20, h("80 04000000 00 01 00 00 00 3B021450"))
    );
    // Another IN pending, then cancelled: answered cancelled with the same id.
    assert!(g.send(ty::BULK_PACKET, 22, &bulk(0x82, 64), &[]).is_empty());
    let r = g.send(ty::CANCEL_DATA_PACKET, 22, &[], &[]);
    assert_eq!((r[0].ty, r[0].id, r[0].header[1]), (ty::BULK_PACKET, 22, 1));
    assert!(
        g.send(ty::CANCEL_DATA_PACKET, 22, &[], &[]).is_empty(),
        "cancel of a finished id is ignored"
    );
    // Interrupt receiving: status, then the pending NotifySlotChange.
    let r = g.send(ty::START_INTERRUPT_RECEIVING, 0, &[0x81], &[]);
    assert_eq!(
        (r[0].ty, r[0].header.clone()),
        (ty::INTERRUPT_RECEIVING_STATUS, vec![0, 0x81])
    );
    assert_eq!(
        (r[1].ty, r[1].data.clone()),
        (ty::INTERRUPT_PACKET, h("50 03"))
    );
    // Removal reaches the interrupt endpoint once the session is woken.
    g.presence.set(false);
    let out = g.s.poll(&mut g.dev);
    let r = g.decode(&out);
    assert_eq!(r[0].data, h("50 02"));
    // Reset: pending INs are cancelled and the interrupt stream stalls.
    assert!(g.send(ty::BULK_PACKET, 30, &bulk(0x82, 64), &[]).is_empty());
    let r = g.send(ty::RESET, 31, &[], &[]);
    assert_eq!((r[0].id, r[0].header[1]), (30, 1));
    assert_eq!(
        (r[1].ty, r[1].header.clone()),
        (ty::INTERRUPT_RECEIVING_STATUS, vec![4, 0x81])
    );
}

#[test]
fn unsupported_and_malformed_packets() {
    let mut g = Guest::new();
    g.handshake();
    assert_eq!(
        g.send(ty::START_ISO_STREAM, 40, &[0x81, 1, 1], &[])[0].header,
        vec![2, 0x81]
    );
    assert_eq!(
        g.send(ty::ALLOC_BULK_STREAMS, 41, &[1, 0, 0, 0, 2, 0, 0, 0], &[])[0].header[8],
        2
    );
    assert_eq!(
        g.send(ty::INTERRUPT_PACKET, 42, &[0x01, 0, 1, 0], &[1])[0].header[1],
        4
    );
    // A malformed CCID message over bulk OUT: STALL, and the reader goes on.
    assert_eq!(
        g.send(ty::BULK_PACKET, 43, &bulk(0x03, 3), &h("65 00 00"))[0].header[1],
        4
    );
    // An unknown packet type is skipped; the next packet is answered.
    let mut bytes = encode(&g.caps, 0x555, 44, &[1, 2, 3], &[]);
    bytes.extend(encode(&g.caps, ty::GET_CONFIGURATION, 45, &[], &[]));
    let out = g.s.on_bytes(&bytes, &mut g.dev).unwrap();
    assert_eq!(g.decode(&out)[0].id, 45);
    // A declared length past the limit ends the session (the caller closes the connection).
    let huge = [ty::BULK_PACKET.to_le_bytes(), 0x7FFF_FFFFu32.to_le_bytes()].concat();
    let mut pkt = huge.clone();
    pkt.extend_from_slice(&[0; 8]);
    assert!(g.s.on_bytes(&pkt, &mut g.dev).is_err());
}
