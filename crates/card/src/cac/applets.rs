//! The applets of libcacard's CAC card and the bytes they hold (libcacard.md §1.2, §1.7, §1.8).

use apdu::simpletlv::{push, push_header};

/// CAC RID (libcacard.md §1.2).
pub const RID_CAC: [u8; 5] = [0xA0, 0x00, 0x00, 0x00, 0x79];
/// GSC-IS RID.
pub const RID_GSC: [u8; 5] = [0xA0, 0x00, 0x00, 0x01, 0x16];
/// GlobalPlatform card manager AID.
pub const AID_GP: [u8; 7] = [0xA0, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00];
/// Microsoft Plug-and-Play applet AID.
pub const AID_MSFT: [u8; 11] = [
    0xA0, 0x00, 0x00, 0x03, 0x97, 0x43, 0x49, 0x44, 0x5F, 0x01, 0x00,
];
/// The CAC card's ATR: T=0 only, historical bytes "sfte cd144" (libcacard.md §1.3).
pub const CAC_ATR: [u8; 15] = [
    0x3B, 0x7A, 0x18, 0x00, 0x00, 0x73, 0x66, 0x74, 0x65, 0x20, 0x63, 0x64, 0x31, 0x34, 0x34,
];
/// At most this many PKI applets (AIDs …79 01 00 to …79 01 0F; OpenSC probes 16).
pub const MAX_PKI: usize = 16;

/// Applet information (tag 01): family 0x10, version 02 06 02 03 (ACA: 02 06 02 02).
const APPLET_INFO: [u8; 5] = [0x10, 0x02, 0x06, 0x02, 0x03];
const APPLET_INFO_ACA: [u8; 5] = [0x10, 0x02, 0x06, 0x02, 0x02];

/// What an applet does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// PKI applet for identity `n`.
    Pki(usize),
    /// Card Capability Container.
    Ccc,
    /// Access Control Applet.
    Aca,
    /// A container with no content (generic read).
    Empty,
    /// "Person Instance"/"Personnel": backend data objects, empty for soft cards.
    Passthrough,
    /// GlobalPlatform card manager.
    Gp,
    /// Microsoft PnP.
    Msft,
}

/// One applet: AID, the object IDs SELECT P1=02 accepts, the T and V buffers (with their 2-byte
/// little-endian length prefixes), and the two property lists.
#[derive(Debug, Clone)]
pub struct Applet {
    /// Application identifier.
    pub aid: Vec<u8>,
    /// What it does.
    pub kind: Kind,
    /// Object IDs SELECT P1=02 accepts.
    pub coids: Vec<[u8; 2]>,
    /// Tag buffer, with its length prefix.
    pub t: Vec<u8>,
    /// Value buffer, with its length prefix.
    pub v: Vec<u8>,
    /// GET PROPERTIES P1=01 list.
    pub props: Vec<u8>,
    /// GET PROPERTIES P1=40 list.
    pub props_long: Vec<u8>,
}

fn prefixed(body: Vec<u8>) -> Vec<u8> {
    let mut out = (body.len() as u16).to_le_bytes().to_vec();
    out.extend(body);
    out
}

fn aid(rid: [u8; 5], tail: [u8; 2]) -> Vec<u8> {
    let mut a = rid.to_vec();
    a.extend_from_slice(&tail);
    a
}

/// 42: buffer properties = type, T length, V length (both little-endian, with prefixes).
fn buffer_props(kind: u8, t: usize, v: usize) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&(t as u16).to_le_bytes());
    out.extend_from_slice(&(v as u16).to_le_bytes());
    out
}

/// The `39 01 00` `3A 07 <ACA AID>` tail of the long property lists.
fn long_tail(props: &[u8]) -> Vec<u8> {
    let mut out = props.to_vec();
    push(&mut out, 0x39, &[0x00]);
    push(&mut out, 0x3A, &aid(RID_CAC, [0x03, 0x00]));
    out
}

/// A PKI applet for a certificate of `cert` DER bytes and a `bits`-bit RSA key.
pub fn pki(n: usize, cert: &[u8], bits: usize) -> Applet {
    let coid = [0x01, n as u8];
    // T: CertInfo, Certificate, MSCUID, error-detection code; V: 00 (uncompressed) + cert.
    let mut t = Vec::new();
    push_header(&mut t, 0x71, 1);
    push_header(&mut t, 0x70, cert.len());
    push_header(&mut t, 0x72, 0);
    push_header(&mut t, 0xFE, 0);
    let mut v = vec![0x00];
    v.extend_from_slice(cert);
    let (t, v) = (prefixed(t), prefixed(v));
    let mut obj = Vec::new();
    push(&mut obj, 0x41, &coid);
    push(&mut obj, 0x42, &buffer_props(0x00, t.len(), v.len()));
    push(&mut obj, 0x43, &[0x06, (bits / 64) as u8, 0x01, 0x01]);
    push(&mut obj, 0x26, &[0x01]);
    let mut props = Vec::new();
    push(&mut props, 0x01, &APPLET_INFO);
    push(&mut props, 0x40, &[0x01]);
    push(&mut props, 0x51, &obj);
    Applet {
        aid: aid(RID_CAC, coid),
        kind: Kind::Pki(n),
        coids: vec![coid],
        props_long: long_tail(&props),
        props,
        t,
        v,
    }
}

/// The fixed CardURLs of libcacard's CCC, in its order: (RID, object ID, application ID).
const CCC_URLS: [([u8; 5], [u8; 2], [u8; 2]); 11] = [
    (RID_CAC, [0x02, 0xFB], [0x02, 0xFB]),
    (RID_CAC, [0x02, 0xFE], [0x02, 0xFE]),
    (RID_CAC, [0x02, 0xFD], [0x02, 0xFD]),
    (RID_CAC, [0x02, 0x00], [0x02, 0x00]),
    (RID_CAC, [0x02, 0x01], [0x02, 0x01]),
    (RID_GSC, [0x30, 0x00], [0x30, 0x00]),
    (RID_GSC, [0x60, 0x10], [0x30, 0x00]),
    (RID_GSC, [0x60, 0x30], [0x30, 0x00]),
    (RID_GSC, [0x90, 0x00], [0x30, 0x00]),
    (RID_CAC, [0x12, 0x01], [0x12, 0x01]),
    (RID_CAC, [0x12, 0x02], [0x12, 0x02]),
];

/// The static card identifier libcacard puts in F0 (RID, manufacturer 03, type 02, ID), the
/// same on every libcacard card.
pub const CCC_CARD_ID: [u8; 21] = [
    0xA0, 0x00, 0x00, 0x00, 0x79, 0x03, 0x02, 0x40, 0x70, 0x50, 0x72, 0x36, 0x0E, 0x00, 0x00, 0x58,
    0xBD, 0x00, 0x2C, 0x19, 0xB5,
];

/// Bytes of the card identifier before the card ID: RID, manufacturer, card type (GSC-IS 2.1
/// §6.2.1.1 cardIdentifier; OpenSC's `cac_cuid_t`).
const CARD_ID_HEADER: usize = 7;

/// The card identifier of a card whose first certificate is `first_cert`: libcacard's RID,
/// manufacturer and card type, then a 14-byte card ID from SHA-256 of the certificate (bytes
/// 16..30, as the PIV application's CCC takes them, so a CAC+PIV card shows one card ID).
/// OpenSC's `cac` driver reads those 14 bytes as the card's serial number
/// (`cac_parse_cuid`, `cac_get_serial_nr_from_CUID`), so two cards with different certificates
/// have different serial numbers.
pub fn card_identifier(first_cert: &[u8]) -> [u8; 21] {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(first_cert);
    let mut id = CCC_CARD_ID;
    id[CARD_ID_HEADER..].copy_from_slice(&digest[16..30]);
    id
}

fn card_url(rid: [u8; 5], app_type: u8, oid: [u8; 2], app_id: [u8; 2]) -> Vec<u8> {
    let mut u = rid.to_vec();
    u.push(app_type);
    u.extend_from_slice(&oid);
    u.extend_from_slice(&app_id);
    u.extend_from_slice(&[0; 6]);
    u
}

/// The Card Capability Container for `n` PKI applets; `card_id` is F0's value (21 bytes).
/// Empty tags stay last: OpenSC stops when V runs out, so an empty FD is never followed.
pub fn ccc(n: usize, card_id: &[u8; 21]) -> Applet {
    let mut entries: Vec<(u8, Vec<u8>)> = vec![
        (0xF0, card_id.to_vec()),
        (0xF1, vec![0x21]),
        (0xF2, vec![0x21]),
    ];
    for (rid, oid, app) in CCC_URLS {
        entries.push((0xF3, card_url(rid, 0x01, oid, app)));
    }
    for i in 0..n {
        entries.push((
            0xF3,
            card_url(RID_CAC, 0x04, [0x01, i as u8], [0x01, i as u8]),
        ));
    }
    entries.push((0xF4, vec![0x00]));
    entries.push((0xF5, vec![0x10]));
    let mut acr = aid(RID_CAC, [0x03, 0x00]);
    acr.insert(0, 0x07);
    acr.extend_from_slice(&[0; 9]);
    entries.push((0xF6, acr));
    for tag in [0xF7, 0xFA, 0xFB, 0xFC, 0xFD, 0xFE] {
        entries.push((tag, Vec::new()));
    }
    let (mut t, mut v) = (Vec::new(), Vec::new());
    for (tag, value) in &entries {
        push_header(&mut t, *tag, value.len());
        v.extend_from_slice(value);
    }
    let (t, v) = (prefixed(t), prefixed(v));
    let coid = [0xDB, 0x00];
    let mut obj = Vec::new();
    push(&mut obj, 0x41, &coid);
    push(&mut obj, 0x42, &buffer_props(0x00, t.len(), v.len()));
    let mut props = Vec::new();
    push(&mut props, 0x01, &APPLET_INFO);
    push(&mut props, 0x40, &[0x01]);
    push(&mut props, 0x50, &obj);
    Applet {
        aid: aid(RID_GSC, coid),
        kind: Kind::Ccc,
        coids: vec![coid],
        props_long: long_tail(&props),
        props,
        t,
        v,
    }
}

/// The Access Control Applet (its GET ACR tables are in `aca.rs`).
pub fn aca() -> Applet {
    let mut props = Vec::new();
    push(&mut props, 0x01, &APPLET_INFO_ACA);
    // The undocumented long list libcacard copied from a real card (libcacard.md §1.7).
    let mut long = props.clone();
    let mut v23 = vec![0x20, 0x11];
    v23.extend_from_slice(&[0; 9]);
    v23.push(0x58);
    push(&mut long, 0x23, &v23);
    push(&mut long, 0x2A, &[0x02, 0x00]);
    push(&mut long, 0x2B, &RID_CAC);
    push(
        &mut long,
        0x22,
        &[
            0x00, 0x00, 0x00, 0xDA, 0x01, 0xB4, 0x03, 0x30, 0x00, 0x00, 0x00, 0x70, 0x00, 0x51,
            0x02, 0x9D,
        ],
    );
    push(&mut long, 0x2C, &[0x00]);
    push(&mut long, 0x20, &[0x08, 0x01]);
    push(&mut long, 0x21, &[0x0F]);
    push(&mut long, 0x32, &[0x03, 0x03, 0x03, 0x03]);
    push(&mut long, 0x30, &[0x08]);
    push(&mut long, 0x31, &[0x06, 0x08, 0x00, 0x00]);
    push(&mut long, 0x24, &[0xFF]);
    push(&mut long, 0x25, &[0x01, 0x00]);
    push(&mut long, 0x26, &[0x01]);
    Applet {
        aid: aid(RID_CAC, [0x03, 0x00]),
        kind: Kind::Aca,
        coids: vec![[0x03, 0x00]],
        t: Vec::new(),
        v: Vec::new(),
        props,
        props_long: long,
    }
}

/// A generic container with empty buffers advertising `coids` (libcacard advertises 0x60-byte
/// buffers it does not have; the properties are kept byte-compatible). `buffer_type` is 01 for
/// the empty containers and 00 for the passthrough ones.
fn container(aid: Vec<u8>, kind: Kind, coids: &[[u8; 2]], buffer_type: u8) -> Applet {
    let mut props = Vec::new();
    push(&mut props, 0x01, &APPLET_INFO);
    push(&mut props, 0x40, &[coids.len() as u8]);
    for coid in coids {
        let mut obj = Vec::new();
        push(&mut obj, 0x41, coid);
        push(&mut obj, 0x42, &[buffer_type, 0x60, 0x00, 0x60, 0x00]);
        push(&mut obj, 0x26, &[0x01]);
        push(&mut props, 0x50, &obj);
    }
    Applet {
        aid,
        kind,
        coids: coids.to_vec(),
        t: vec![0, 0],
        v: vec![0, 0],
        props_long: props.clone(),
        props,
    }
}

/// Every applet of the card other than the PKI ones and the CCC, in libcacard's order.
pub fn fixed_applets() -> Vec<Applet> {
    let mut v = vec![aca()];
    for tail in [[0x02, 0xF0], [0x02, 0xF1], [0x02, 0xF2]] {
        v.push(container(aid(RID_CAC, tail), Kind::Empty, &[], 0x01));
    }
    for tail in [[0x02, 0xFB], [0x02, 0xFE], [0x02, 0xFD]] {
        v.push(container(aid(RID_CAC, tail), Kind::Empty, &[tail], 0x01));
    }
    for tail in [[0x02, 0x00], [0x02, 0x01]] {
        v.push(container(
            aid(RID_CAC, tail),
            Kind::Passthrough,
            &[tail],
            0x00,
        ));
    }
    for tail in [[0x12, 0x01], [0x12, 0x02]] {
        v.push(container(aid(RID_CAC, tail), Kind::Empty, &[tail], 0x01));
    }
    v.push(container(
        aid(RID_GSC, [0x30, 0x00]),
        Kind::Empty,
        &[[0x30, 0x00], [0x60, 0x10], [0x60, 0x30], [0x90, 0x00]],
        0x01,
    ));
    v.push(Applet {
        aid: AID_GP.to_vec(),
        kind: Kind::Gp,
        coids: vec![],
        t: vec![],
        v: vec![],
        props: vec![],
        props_long: vec![],
    });
    v.push(Applet {
        aid: AID_MSFT.to_vec(),
        kind: Kind::Msft,
        coids: vec![],
        t: vec![],
        v: vec![],
        props: vec![],
        props_long: vec![],
    });
    v
}
