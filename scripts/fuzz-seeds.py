#!/usr/bin/env python3
"""Writes each fuzz target's seeds from real exchanges, in that target's input format, as
fuzz/seeds/TARGET/real-*. Run by scripts/fuzz-seeds.sh; the files are committed.

Sources (nothing here is invented; framing around real bytes follows the protocol's spec):
- crates/apdu/tests/transcripts/{opensc-cac-sign,yubico-piv-tool-status}.txt: OpenSC 0.23 and
  yubico-piv-tool 2.2.0 against vccid's cards, recorded through pcscd and vpcd. (The third
  transcript, piv-windows-login.txt, is spec-ordered with placeholder bytes: not used.)
- crates/ccid/tests/transcripts/guest-libccid-{xhci,uhci}.pcap: a Linux guest's libccid 1.5.2
  and OpenSC driving the reader through QEMU's usb-redir on xHCI and on UHCI (full-speed
  packets), captured with `--pcap` by crates/vccid/tests/guest.rs (PIN bytes blanked).
- QEMU 7.2's VSCard Init, byte for byte (qemu-ccid.md §1.3, crates/vscard/src/wire.rs test).
- QEMU's usbredir GET_DESCRIPTOR and bulk-OUT IccPowerOn (transports.md §1.7).
- The kernel's USB/IP CMD_SUBMIT of GET_DESCRIPTOR (transports.md §2.3, crates/usbip tests).
- The PIV state file version 1 the card wrote (crates/card/src/piv/testdata/state-v1.json),
  and the CAC one (crates/card/src/cac/testdata/state-v1.json, checked byte for byte against
  what the card writes by cac::state's tests).
- The configuration Debian installs (crates/vccid/debian/vccid.toml) and the control socket
  requests of docs/control.md (checked against the handler by crates/vccid/tests/control_doc.rs).
- Certificates of the system's CA bundle (/etc/ssl/certs), real PEM as a client would send.
"""
import glob
import hashlib
import os
import re
import struct
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
SEEDS = os.path.join(ROOT, "fuzz", "seeds")
TRANSCRIPTS = ["opensc-cac-sign", "yubico-piv-tool-status"]


def transcript(name):
    """(command, response) pairs of a recorded transcript."""
    path = os.path.join(ROOT, "crates/apdu/tests/transcripts", name + ".txt")
    pairs, cmd = [], None
    with open(path) as f:
        for line in f:
            if line.startswith("> "):
                cmd = bytes.fromhex(line[2:])
            elif line.startswith("< ") and cmd is not None:
                pairs.append((cmd, bytes.fromhex(line[2:])))
                cmd = None
    return pairs


def write(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "real-" + name), "wb") as f:
        f.write(data)


def ccid_xfr(seq, apdu):
    """PC_to_RDR_XfrBlock (CCID rev 1.1 §6.1.4) carrying one APDU, slot 0."""
    return struct.pack("<BIBBBH", 0x6F, len(apdu), 0, seq & 0xFF, 0, 0) + apdu


def ccid_session(pairs):
    """The bulk-OUT messages libccid sends for a session: GetSlotStatus, IccPowerOn, then one
    XfrBlock per APDU (CCID rev 1.1 §6.1.11, §6.1.1, §6.1.4)."""
    msgs = [bytes.fromhex("65 00000000 00 00 000000"), bytes.fromhex("62 00000000 00 01 00 0000")]
    msgs += [ccid_xfr(i + 2, c) for i, (c, _) in enumerate(pairs)]
    return msgs


def redir(ty, pid, header, data=b""):
    """A usbredir packet with 64-bit ids (usbredirproto.h, after the hello exchange)."""
    return struct.pack("<IIQ", ty, len(header) + len(data), pid) + header + data


def urb_submit(seq, ep, direction_in, length, data=b"", setup=b"\0" * 8):
    """USB/IP CMD_SUBMIT (transports.md §2.3), devid 1-2 as the kernel sends it."""
    head = struct.pack(">IIIII", 1, seq, 0x00010002, 1 if direction_in else 0, ep)
    return head + struct.pack(">IIIII", 0x200 if direction_in else 0, length, 0, 0, 0) + setup + data


def usbmon(name):
    """(kind, transfer type, endpoint, length, setup, data) of each record of a usbmon capture
    (pcap LINKTYPE_USB_LINUX_MMAPPED; struct usbmon_packet, Linux Documentation/usb/usbmon.rst)."""
    path = os.path.join(ROOT, "crates/ccid/tests/transcripts", name + ".pcap")
    with open(path, "rb") as f:
        pcap = f.read()
    assert pcap[:4] == struct.pack("<I", 0xA1B2C3D4) and pcap[20:24] == struct.pack("<I", 220)
    out, off = [], 24
    while off + 16 <= len(pcap):
        (incl,) = struct.unpack_from("<I", pcap, off + 8)
        rec = pcap[off + 16 : off + 16 + incl]
        (length,) = struct.unpack_from("<I", rec, 32)
        out.append((chr(rec[8]), rec[9], rec[10], length, rec[40:48], rec[64:]))
        off += 16 + incl
    return out


def guest_capture(name):
    """Seeds from a real guest's capture: its bulk-OUT transfers as they crossed (UHCI's in
    64-byte packets), and every transfer it submitted framed as usbredir and USB/IP packets."""
    records = usbmon(name)
    submits = [r for r in records if r[0] == "S"]
    bulk_out = [d for (_, xfer, ep, _, _, d) in submits if xfer == 3 and ep == 0x03 and d]
    write("ccid_bulk_out", name, b"\xfe".join(bulk_out))
    write("pcap_redact", name, b"\xfe".join(bulk_out))
    ur, ui = b"", b""
    for i, (_, xfer, ep, length, setup, data) in enumerate(submits):
        if xfer == 2:
            # usb_redir_control_packet_header: endpoint, request, requesttype, status, value,
            # index, length (usbredirproto.h); USB/IP carries the setup packet as it is.
            rt, req, value, index, ln = struct.unpack("<BBHHH", setup)
            ur += redir(100, 1000 + i, struct.pack("<BBBBHHH", ep, req, rt, 0, value, index, ln), data)
            ui += urb_submit(1000 + i, 0, ep & 0x80 != 0, ln, data, setup=setup)
        elif xfer == 3:
            # usb_redir_bulk_packet_header: endpoint, status, length, stream id, length high.
            n = len(data) if ep & 0x80 == 0 else length
            ur += redir(101, 1000 + i, struct.pack("<BBHIH", ep, 0, n & 0xFFFF, 0, n >> 16), data)
            ui += urb_submit(1000 + i, ep & 0x7F, ep & 0x80 != 0, n, data)
    write("usbredir_session", name, ur)
    write("usbip_session", name, ui)
    write("usbip_decode", name, ui)
    # The APDUs of the guest's XfrBlocks (CCID §6.1.4), each command whole.
    apdus = [d[10:] for d in bulk_out if d[0] == 0x6F and len(d) > 10 and len(d) < 64]
    write("cac_dispatch", name, b"\xff".join(apdus))


def main():
    for name in ["guest-libccid-xhci", "guest-libccid-uhci"]:
        guest_capture(name)
    sessions = {n: transcript(n) for n in TRANSCRIPTS}
    for name, pairs in sessions.items():
        cmds = [c for c, _ in pairs]
        # One APDU per input; BER-TLV data fields of the responses.
        for i, (c, r) in enumerate(pairs):
            tag = hashlib.sha1(c).hexdigest()[:8]
            write("apdu_parse", f"{name}-{i:03}-{tag}", c)
            if len(r) > 2:
                write("tlv_parse", f"{name}-{i:03}", r[:-2])
        # Sessions: APDUs split on FF (bytes FF inside an APDU split it, as the target reads).
        write("cac_dispatch", name, b"\xff".join(cmds))
        write("piv_dispatch", name, b"\xff".join(cmds))
        # Command FE response FE ...
        pairs_fe = b"\xfe".join(c + b"\xfe" + r for c, r in pairs)
        write("apdu_describe", name, pairs_fe)
        write("apdu_trace", name, pairs_fe)
        # piv_session: first byte 0 (PIV, 1 PIN try) or 1 (CAC+PIV), then raw-APDU operations
        # (opcode 0, big-endian length, the APDU).
        ops = b"".join(b"\x00" + struct.pack(">H", len(c)) + c for c in cmds)
        write("piv_session", name + "-piv", b"\x04" + ops)
        write("piv_session", name + "-dual", b"\x05" + ops)
        # vpcd framing of the same APDUs (transports.md §3.2): get ATR, power on, the APDUs.
        vp = bytes.fromhex("00 01 04 00 01 01 00 01 04")
        vp += b"".join(struct.pack(">H", len(c)) + c for c in cmds) + bytes.fromhex("00 01 00")
        write("vpcd_decode", name, vp)
        # The reader: bulk-OUT CCID messages split on FE.
        ccid = b"\xfe".join(ccid_session(pairs))
        write("ccid_bulk_out", name, ccid)
        write("pcap_redact", name, ccid)
        # VSCard from the client: vscclient's Init (QEMU's, reader 0), ReaderAdd, the ATR, then
        # each response as VSC_APDU (qemu-ccid.md §1.2–1.3).
        vs = bytes.fromhex("00000001 00000000 0000000c 56534344 00000002 00000000")
        vs += bytes.fromhex("00000003 00000000 00000000")
        atr = bytes.fromhex("3B 7A 18 00 00 73 66 74 65 20 63 64 31 34 34")
        vs += struct.pack(">III", 5, 0, len(atr)) + atr
        vs += b"".join(struct.pack(">III", 7, 0, len(r)) + r for _, r in pairs)
        write("vscard_host", name, vs)
        # usbredir from QEMU: GET_DESCRIPTOR(device) then the session's CCID messages as bulk
        # OUT packets to endpoint 3, each followed by a bulk IN request (transports.md §1.7).
        ur = redir(100, 7, bytes.fromhex("80 06 80 00 0001 0000 4000"))
        for i, m in enumerate(ccid_session(pairs)):
            ur += redir(101, 8 + 2 * i, struct.pack("<BBHIH", 3, 0, len(m), 0, 0), m)
            ur += redir(101, 9 + 2 * i, struct.pack("<BBHIH", 0x82, 0, 0x4000, 0, 0))
        write("usbredir_session", name, ur)
        # USB/IP from the kernel: GET_DESCRIPTOR(device), then each CCID message to endpoint 3
        # and a bulk IN from endpoint 2.
        ui = urb_submit(7, 0, True, 0x40, setup=bytes.fromhex("80 06 00 01 00 00 40 00"))
        for i, m in enumerate(ccid_session(pairs)):
            ui += urb_submit(8 + 2 * i, 3, False, len(m), m)
            ui += urb_submit(9 + 2 * i, 2, True, 0x4000)
        write("usbip_session", name, ui)
        write("usbip_decode", name, ui)
    # The card's own state file.
    with open(os.path.join(ROOT, "crates/card/src/piv/testdata/state-v1.json"), "rb") as f:
        write("piv_state", "state-v1.json", f.read())
    with open(os.path.join(ROOT, "crates/card/src/cac/testdata/state-v1.json"), "rb") as f:
        write("cac_state", "state-v1.json", f.read())
    # The configuration Debian installs.
    with open(os.path.join(ROOT, "crates/vccid/debian/vccid.toml"), "rb") as f:
        write("config_parse", "debian-vccid.toml", f.read())
    # The control socket requests of docs/control.md ("-> " lines).
    with open(os.path.join(ROOT, "docs/control.md")) as f:
        for i, m in enumerate(re.findall(r"^-> (\{.*\})\s*$", f.read(), re.M)):
            write("control_request", f"control-md-{i:02}", m.encode())
    # Real certificates: three of the system's CA bundle, RSA and EC.
    certs = sorted(glob.glob("/etc/ssl/certs/*.pem"))
    picked = [c for c in certs if re.search(r"ISRG_Root_X[12]|DigiCert_Global_Root_G2", c)]
    if not picked:
        print("no system CA certificates: enroll_pem keeps its committed seeds", file=sys.stderr)
    for c in picked:
        with open(c, "rb") as f:
            write("enroll_pem", os.path.basename(c), f.read())


if __name__ == "__main__":
    main()
