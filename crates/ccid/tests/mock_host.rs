//! The reader driven by testkit's mock CCID host (libccid's way through UHCI or xHCI):
//! transcripts in spaced hex (CCID §6).

use apdu::hex::{h, spaced};
use card_api::{Card, Presence};
use ccid::descriptors::{Identity, EP_BULK_IN, EP_BULK_OUT, EP_INTERRUPT_IN};
use ccid::device::Ccid;
use ccid::usb::{Setup, Transfer, UsbDevice};
use testkit::ccid_host::MockHost;

/// A card answering `data + 90 00` to anything, 4 KiB + 9000 to INS B0.
struct TestCard {
    presence: Presence,
}

impl Card for TestCard {
    fn atr(&self) -> Vec<u8> {
        h("3B 7A 18 00 00 73 66 74 65 20 63 64 31 34 34")
    }
    fn power_on(&mut self) -> Vec<u8> {
        self.atr()
    }
    fn power_off(&mut self) {}
    fn transmit(&mut self, apdu: &[u8]) -> Vec<u8> {
        if apdu.get(1) == Some(&0xB0) {
            let mut r: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
            r.extend_from_slice(&[0x90, 0x00]);
            return r;
        }
        let mut r = apdu.to_vec();
        r.extend_from_slice(&[0x90, 0x00]);
        r
    }
    fn presence(&self) -> Presence {
        self.presence.clone()
    }
}

type Host = MockHost<Ccid>;

fn host(max_in: usize) -> (Host, Presence) {
    let presence = Presence::new(true);
    let dev = Ccid::new(
        Identity::default(),
        Box::new(TestCard {
            presence: presence.clone(),
        }),
    );
    (MockHost::new(dev, max_in), presence)
}

#[test]
fn libccid_start_up_transcript() {
    let (mut hst, _presence) = host(64);
    // The interrupt endpoint announces the card that is already in.
    assert_eq!(
        hst.dev.input(EP_INTERRUPT_IN, 8),
        Transfer::Done(h("50 03"))
    );
    assert_eq!(hst.dev.input(EP_INTERRUPT_IN, 8), Transfer::Pending);
    assert_eq!(
        hst.xfer("65 00000000 00 00 000000"),
        spaced(&h("81 00000000 00 00 01 00 00"))
    );
    // libccid's Escape probe: not supported, answered with RDR_to_PC_Escape (CCID §6.2.4).
    assert_eq!(
        hst.xfer("6B 01000000 00 02 000000 6A"),
        spaced(&h("83 00000000 00 02 41 00 00"))
    );
    assert_eq!(
        hst.xfer("62 00000000 00 06 000000"),
        spaced(&h(
            "80 0F000000 00 06 00 00 00 3B7A18000073667465206364313434"
        ))
    );
    assert_eq!(
        hst.xfer("65 00000000 00 07 000000"),
        spaced(&h("81 00000000 00 07 00 00 00"))
    );
    assert_eq!(
        hst.xfer("6C 00000000 00 08 000000"),
        spaced(&h("82 05000000 00 08 00 00 00 11 00 00 0A 00"))
    );
    assert_eq!(
        hst.xfer("61 07000000 00 09 010000 11 10 00 4D 00 20 00"),
        spaced(&h("82 07000000 00 09 00 00 01 11 10 00 4D 00 20 00"))
    );
    assert_eq!(
        hst.xfer("61 05000000 00 0A 090000 11 00 00 0A 00"),
        spaced(&h("82 00000000 00 0A 40 07 01"))
    );
    assert_eq!(
        hst.xfer("6D 00000000 00 0B 000000"),
        spaced(&h("82 05000000 00 0B 00 00 00 11 00 00 0A 00"))
    );
    assert_eq!(
        hst.xfer("6F 0C000000 00 18 000000 00A4040007627601FF000000"),
        spaced(&h(
            "80 0E000000 00 18 00 00 00 00A4040007627601FF000000 9000"
        ))
    );
    assert_eq!(
        hst.xfer("63 00000000 00 19 000000"),
        spaced(&h("81 00000000 00 19 01 00 00"))
    );
    // Powered off: XfrBlock fails with ICC mute, status inactive.
    assert_eq!(
        hst.xfer("6F 04000000 00 1A 000000 00A40400"),
        spaced(&h("80 00000000 00 1A 41 FE 00"))
    );
    assert_eq!(
        hst.xfer("73 08000000 00 1B 000000 0000000000000000"),
        spaced(&h("84 08000000 00 1B 01 00 00 A00F0000 80250000"))
    );
    for t in ["69", "6A", "6E", "71", "99"] {
        let r = hst.xfer(&format!("{t} 00000000 00 20 000000"));
        assert!(r.ends_with("00 20 41 00 00"), "{t}: {r}");
    }
}

#[test]
fn multi_packet_command_and_4k_response_on_uhci_and_xhci() {
    for max_in in [64, 65554] {
        let (mut hst, _presence) = host(max_in);
        hst.xfer("62 00000000 00 01 000000");
        // A 245-byte XfrBlock crosses in 64/64/64/63-byte packets.
        let mut cmd = h("6F F5000000 00 02 000000 80 42 00 00 F0");
        cmd.extend(vec![0xAB; 240]);
        hst.send(&cmd).unwrap();
        let r = hst.recv().unwrap();
        assert_eq!(r.len(), 10 + 245 + 2);
        assert_eq!(&r[..10], &h("80 F7000000 00 02 00 00 00")[..]);
        // A 4098-byte response arrives whole (QEMU drops anything over 374 bytes).
        hst.send(&h("6F 05000000 00 03 000000 00 B0 00 00 00"))
            .unwrap();
        let r = hst.recv().unwrap();
        assert_eq!(r.len(), 10 + 4098, "max_in {max_in}");
        assert_eq!(&r[10..14], &[0, 1, 2, 3]);
        assert_eq!(&r[r.len() - 2..], &[0x90, 0x00]);
        // Nothing else queued: IN stays pending (NAK), not an empty answer.
        assert_eq!(hst.dev.input(EP_BULK_IN, max_in), Transfer::Pending);
    }
}

#[test]
fn zlp_only_when_the_host_asked_for_exactly_one_packet() {
    // A 64-byte reply: 10-byte header + 54 bytes (52-byte APDU echoed + 9000).
    let mut apdu = h("00 D6 00 00 2F");
    apdu.extend(vec![0x11; 47]);
    let mut cmd = h("6F 34000000 00 05 000000");
    cmd.extend_from_slice(&apdu);
    let (mut uhci, _p1) = host(64);
    uhci.xfer("62 00000000 00 01 000000");
    uhci.send(&cmd).unwrap();
    assert!(matches!(uhci.dev.input(EP_BULK_IN, 64), Transfer::Done(d) if d.len() == 64));
    assert_eq!(
        uhci.dev.input(EP_BULK_IN, 64),
        Transfer::Done(vec![]),
        "UHCI: ZLP ends the transfer"
    );
    assert_eq!(uhci.dev.input(EP_BULK_IN, 64), Transfer::Pending);
    let (mut xhci, _p2) = host(65554);
    xhci.xfer("62 00000000 00 01 000000");
    xhci.send(&cmd).unwrap();
    assert!(matches!(xhci.dev.input(EP_BULK_IN, 65554), Transfer::Done(d) if d.len() == 64));
    assert_eq!(
        xhci.dev.input(EP_BULK_IN, 65554),
        Transfer::Pending,
        "xHCI: no stray ZLP"
    );
}

#[test]
fn removal_and_insertion_reach_the_interrupt_endpoint() {
    let (mut hst, presence) = host(64);
    assert_eq!(
        hst.dev.input(EP_INTERRUPT_IN, 8),
        Transfer::Done(h("50 03"))
    );
    hst.xfer("62 00000000 00 01 000000");
    presence.set(false);
    assert!(hst.dev.ready(EP_INTERRUPT_IN));
    assert_eq!(
        hst.dev.input(EP_INTERRUPT_IN, 8),
        Transfer::Done(h("50 02"))
    );
    assert_eq!(
        hst.xfer("65 00000000 00 02 000000"),
        spaced(&h("81 00000000 00 02 02 00 00"))
    );
    assert_eq!(
        hst.xfer("62 00000000 00 03 000000"),
        spaced(&h("80 00000000 00 03 42 FE 00"))
    );
    presence.set(true);
    assert_eq!(
        hst.dev.input(EP_INTERRUPT_IN, 8),
        Transfer::Done(h("50 03"))
    );
    assert_eq!(
        hst.xfer("65 00000000 00 04 000000"),
        spaced(&h("81 00000000 00 04 01 00 00"))
    );
    hst.xfer("62 00000000 00 05 000000");
    assert_eq!(
        hst.xfer("6F 04000000 00 06 000000 00A40400"),
        spaced(&h("80 06000000 00 06 00 00 00 00A40400 9000"))
    );
    assert_eq!(hst.dev.input(EP_INTERRUPT_IN, 1), Transfer::Pending);
}

#[test]
fn bad_input_gets_stall_or_a_slot_error() {
    let (mut hst, _presence) = host(64);
    // A message shorter than its header, dwLength mismatches, and beyond the limit: STALL.
    assert_eq!(hst.dev.out(EP_BULK_OUT, &h("65 00 00")), Transfer::Stall);
    assert_eq!(
        hst.dev.out(EP_BULK_OUT, &h("6F 05000000 00 01 000000 00")),
        Transfer::Stall
    );
    assert_eq!(
        hst.dev.out(EP_BULK_OUT, &h("65 00000000 00 01 000000 00")),
        Transfer::Stall
    );
    assert_eq!(
        hst.dev.out(EP_BULK_OUT, &h("6F FFFFFF7F 00 01 000000")),
        Transfer::Stall
    );
    // The reader is still fine afterwards.
    assert_eq!(
        hst.xfer("65 00000000 00 02 000000"),
        spaced(&h("81 00000000 00 02 01 00 00"))
    );
    // bSlot 1 does not exist (bError 5, SLOT_NOT_EXIST; bmICCStatus 2: a slot that does not
    // exist holds no card); dwLength must be 0 for PowerOn.
    assert_eq!(
        hst.xfer("65 00000000 01 03 000000"),
        spaced(&h("81 00000000 01 03 42 05 00"))
    );
    assert_eq!(
        hst.xfer("62 01000000 00 04 000000 00"),
        spaced(&h("80 00000000 00 04 41 01 00"))
    );
    // Unknown endpoints and control requests STALL.
    assert_eq!(hst.dev.out(0x05, &[0]), Transfer::Stall);
    let bogus = Setup {
        request_type: 0x40,
        request: 0x77,
        value: 0,
        index: 0,
        length: 0,
    };
    assert_eq!(hst.dev.control(&bogus, &[]), Transfer::Stall);
}

#[test]
fn control_requests() {
    let (mut hst, _presence) = host(64);
    let get = |t: u8, i: u8, len: u16| Setup {
        request_type: 0x80,
        request: 6,
        value: (u16::from(t) << 8) | u16::from(i),
        index: 0,
        length: len,
    };
    assert_eq!(
        hst.dev.control(&get(1, 0, 18), &[]),
        Transfer::Done(h("12 01 10 01 00 00 00 40 E6 08 33 44 00 00 01 02 03 01"))
    );
    assert!(
        matches!(hst.dev.control(&get(2, 0, 9), &[]), Transfer::Done(d) if d == h("09 02 5D 00 01 01 00 E0 32"))
    );
    assert!(matches!(hst.dev.control(&get(2, 0, 255), &[]), Transfer::Done(d) if d.len() == 93));
    assert!(matches!(hst.dev.control(&get(3, 2, 255), &[]), Transfer::Done(d) if d[1] == 3));
    let set_cfg = Setup {
        request_type: 0,
        request: 9,
        value: 1,
        index: 0,
        length: 0,
    };
    assert_eq!(hst.dev.control(&set_cfg, &[]), Transfer::Done(vec![]));
    let get_cfg = Setup {
        request_type: 0x80,
        request: 8,
        value: 0,
        index: 0,
        length: 1,
    };
    assert_eq!(hst.dev.control(&get_cfg, &[]), Transfer::Done(vec![1]));
    let clocks = Setup {
        request_type: 0xA1,
        request: 2,
        value: 0,
        index: 0,
        length: 4,
    };
    assert_eq!(
        hst.dev.control(&clocks, &[]),
        Transfer::Done(h("A0 0F 00 00"))
    );
    // Endpoint CLEAR_FEATURE(HALT) is accepted (QEMU stalls it).
    let clear_halt = Setup {
        request_type: 0x02,
        request: 1,
        value: 0,
        index: 0x82,
        length: 0,
    };
    assert_eq!(hst.dev.control(&clear_halt, &[]), Transfer::Done(vec![]));
}

#[test]
fn abort_handshake_through_the_mock_host() {
    let (mut hst, _p) = host(64);
    hst.xfer("62 00000000 00 01 000000");
    hst.abort(7).unwrap();
    assert_eq!(
        spaced(&hst.recv().unwrap()),
        spaced(&h("81 00000000 00 07 00 00 00"))
    );
    assert_eq!(hst.interrupt(), Some(h("50 03")));
    assert_eq!(hst.interrupt(), None);
}

/// One usbmon record of a capture (struct usbmon_packet, Linux Documentation/usb/usbmon.rst):
/// 'S'ubmit or 'C'omplete, the endpoint, and the data captured with it.
struct Record {
    kind: u8,
    ep: u8,
    data: Vec<u8>,
}

/// The records of a pcap file of LINKTYPE_USB_LINUX_MMAPPED (220), as `--pcap` writes it.
fn usbmon_records(pcap: &[u8]) -> Vec<Record> {
    assert_eq!(&pcap[..4], &0xA1B2_C3D4u32.to_le_bytes(), "pcap magic");
    assert_eq!(&pcap[20..24], &220u32.to_le_bytes(), "linktype 220");
    let (mut off, mut out) = (24, Vec::new());
    while off + 16 <= pcap.len() {
        let incl = u32::from_le_bytes(pcap[off + 8..off + 12].try_into().unwrap()) as usize;
        let rec = &pcap[off + 16..off + 16 + incl];
        out.push(Record {
            kind: rec[8],
            ep: rec[10],
            data: rec[64..].to_vec(),
        });
        off += 16 + incl;
    }
    assert_eq!(off, pcap.len(), "a record cut short");
    out
}

/// The CCID messages carried by `records` on `ep` ('S' records for OUT, 'C' for IN), each
/// rebuilt from its transfers by its dwLength (CCID §6): (the transfers' data, the message).
fn messages(records: &[Record], kind: u8, ep: u8) -> Vec<(Vec<Vec<u8>>, Vec<u8>)> {
    let mut out = Vec::new();
    let (mut pieces, mut msg): (Vec<Vec<u8>>, Vec<u8>) = Default::default();
    for r in records
        .iter()
        .filter(|r| r.kind == kind && r.ep == ep && !r.data.is_empty())
    {
        pieces.push(r.data.clone());
        msg.extend_from_slice(&r.data);
        let len = u32::from_le_bytes(msg[1..5].try_into().unwrap()) as usize;
        if msg.len() >= 10 + len {
            assert_eq!(msg.len(), 10 + len, "a transfer past its message");
            out.push((std::mem::take(&mut pieces), std::mem::take(&mut msg)));
        }
    }
    assert!(msg.is_empty(), "a message cut short at the end");
    out
}

/// The captures of a real guest's libccid 1.5.2 driving the reader (crates/vccid/tests/
/// guest.rs, `VCCID_GUEST_PCAP_XHCI`/`_UHCI`; crates/ccid/tests/transcripts/README.md), the
/// source of the reader's fuzz seeds: replayed transfer by transfer into the reader, every
/// command gets the answer the capture has, by message type, slot, bSeq, status and error
/// (the echo card's data differs from the CAC's; the ATR is the same). The time-extension
/// answers of the capture, if any, are not compared: they depend on how slow the card was.
#[test]
fn a_real_guests_libccid_session_replayed() {
    for (name, max_in) in [("xhci", 65554), ("uhci", 64)] {
        let pcap = std::fs::read(format!(
            "{}/tests/transcripts/guest-libccid-{name}.pcap",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let records = usbmon_records(&pcap);
        let commands = messages(&records, b'S', EP_BULK_OUT);
        let answers: Vec<Vec<u8>> = messages(&records, b'C', EP_BULK_IN)
            .into_iter()
            .map(|(_, m)| m)
            .filter(|m| !(m[0] == 0x80 && m[7] & 0xC0 == 0x80))
            .collect();
        assert_eq!(commands.len(), answers.len(), "{name}");
        assert!(commands.len() > 300, "{name}: {}", commands.len());
        let (mut hst, _presence) = host(max_in);
        let mut xfr_blocks = 0;
        for ((pieces, cmd), want) in commands.iter().zip(&answers) {
            for p in pieces {
                assert_ne!(hst.dev.out(EP_BULK_OUT, p), Transfer::Stall, "{name}");
            }
            let got = hst.recv().expect("an answer");
            let header = |m: &[u8]| spaced(&[&m[..1], &m[5..10]].concat());
            assert_eq!(header(&got), header(want), "{name}: {}", spaced(cmd));
            if cmd[0] == 0x62 {
                assert_eq!(spaced(&got), spaced(want), "{name}: the ATR");
            }
            xfr_blocks += usize::from(cmd[0] == 0x6F);
        }
        // The guest's work: OpenSC's session and its 100-APDU loop (guest.rs asks for 100).
        assert!(xfr_blocks >= 200, "{name}: {xfr_blocks} XfrBlocks");
        // UHCI's full-speed packets: the 255-byte command crossed in four transfers.
        if max_in == 64 {
            assert!(commands.iter().any(|(p, _)| p.len() == 4), "{name}");
        }
    }
}
