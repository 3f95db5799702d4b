//! GET ACR tables of the Access Control Applet (GSC-IS 2.1 §5.3.3; libcacard.md §1.9).
//!
//! The ACR table (P1=00/01) is byte-identical with libcacard 2.8, quirks included, because it
//! is the one table whose bytes were observed. The applet/object, AMP and service tables use
//! the encodings GSC-IS documents (libcacard emits C-struct memory there; its own tests check
//! only framing and counts, which these keep).

use super::applets::{RID_CAC, RID_GSC};
use apdu::simpletlv::push;
use apdu::Sw;

const INFO: [u8; 5] = [0x10, 0x02, 0x06, 0x02, 0x02];
const ACA_AID: [u8; 7] = [0xA0, 0x00, 0x00, 0x00, 0x79, 0x03, 0x00];

/// (ACRID, value of its A0 entry) as libcacard emits them (libcacard.md §4.4).
const ACR_ENTRIES: [(u8, &[u8]); 11] = [
    (0x00, &[0x00, 0x00, 0x00]),
    (0x01, &[0x01, 0x01, 0x00]),
    (0x02, &[0x02, 0x00, 0x1F]),
    (0x06, &[0x06, 0x06, 0x00, 0x00, 0x01]),
    (0x04, &[0x04, 0x04, 0x1F, 0x00, 0x01]),
    (0x08, &[0x08, 0x03, 0x00, 0x00, 0x02, 0x00, 0x00]),
    (0x09, &[0x09, 0x02, 0x00, 0x00, 0x01]),
    (0x0A, &[0x0A, 0x03, 0x00, 0x00, 0x02, 0x00, 0x00]),
    (0x0B, &[0x0B, 0x02, 0x00, 0x00, 0x01]),
    (0x10, &[0x10, 0x00, 0x1E]),
    (0x11, &[0x11, 0x00, 0x1D]),
];

/// An object's access rules: its OID and (INS, ACRID) pairs.
type ObjectAcr = ([u8; 2], Vec<(u8, u8)>);

/// One applet of the applet/object table: id, AID, objects as (OID, [(INS, ACRID)]).
struct AppletAcr {
    id: u8,
    aid: Vec<u8>,
    objects: Vec<ObjectAcr>,
}

fn aid(rid: [u8; 5], tail: [u8; 2]) -> Vec<u8> {
    let mut a = rid.to_vec();
    a.extend_from_slice(&tail);
    a
}

/// Generic containers: UPDATE BUFFER needs ACR 04, READ BUFFER ACR 00.
fn generic(oid: [u8; 2]) -> ObjectAcr {
    (oid, vec![(0x58, 0x04), (0x52, 0x00)])
}

fn applet_table(n_pki: usize) -> Vec<AppletAcr> {
    let mut v = vec![
        AppletAcr {
            id: 0x1F,
            aid: ACA_AID.to_vec(),
            objects: vec![],
        },
        AppletAcr {
            id: 0xF4,
            aid: aid(RID_GSC, [0xDB, 0x00]),
            objects: vec![generic([0xDB, 0x00])],
        },
    ];
    for (id, tail) in [
        (0x4B, [0x02, 0xFB]),
        (0x41, [0x02, 0x00]),
        (0x42, [0x02, 0x01]),
    ] {
        v.push(AppletAcr {
            id,
            aid: aid(RID_CAC, tail),
            objects: vec![generic(tail)],
        });
    }
    v.push(AppletAcr {
        id: 0x40,
        aid: aid(RID_GSC, [0x30, 0x00]),
        objects: [[0x30, 0x00], [0x60, 0x10], [0x60, 0x30], [0x90, 0x00]]
            .into_iter()
            .map(generic)
            .collect(),
    });
    for (id, tail) in [
        (0x4E, [0x02, 0xFE]),
        (0x4D, [0x02, 0xFD]),
        (0x50, [0x02, 0xF2]),
        (0x51, [0x02, 0xF0]),
        (0x52, [0x02, 0xF1]),
        (0x44, [0x12, 0x01]),
        (0x45, [0x12, 0x02]),
    ] {
        v.push(AppletAcr {
            id,
            aid: aid(RID_CAC, tail),
            objects: vec![generic(tail)],
        });
    }
    for i in 0..n_pki {
        v.push(AppletAcr {
            id: 0x61 + i as u8,
            aid: aid(RID_CAC, [0x01, i as u8]),
            objects: vec![
                (
                    [0x01, i as u8],
                    vec![(0x58, 0x04), (0x52, 0x00), (0x42, 0x06)],
                ),
                ([0xFF, 0xFF], vec![(0x20, 0x10)]),
            ],
        });
    }
    v
}

/// `82 len OID { INS config ACRID }*` (config 00: no P1/P2/data qualifiers).
fn object_entry(out: &mut Vec<u8>, oid: [u8; 2], rules: &[(u8, u8)]) {
    let mut val = oid.to_vec();
    for (ins, acr) in rules {
        val.extend_from_slice(&[*ins, 0x00, *acr]);
    }
    push(out, 0x82, &val);
}

fn applet_entry(out: &mut Vec<u8>, a: &AppletAcr) {
    let mut val = vec![a.id, a.objects.len() as u8];
    for (oid, rules) in &a.objects {
        object_entry(&mut val, *oid, rules);
    }
    push(out, 0x80, &val);
}

fn header(count_tag: u8, count: usize) -> Vec<u8> {
    let mut out = Vec::new();
    push(&mut out, 0x01, &INFO);
    push(&mut out, count_tag, &[count as u8]);
    out
}

/// The service applets: (id, AID) — the static ones and one per PKI applet.
fn services(n_pki: usize) -> Vec<(u8, Vec<u8>)> {
    let mut v = vec![
        (0x40, aid(RID_GSC, [0x30, 0x00])),
        (0x4F, aid(RID_GSC, [0xDB, 0x00])),
        (0x4B, aid(RID_CAC, [0x02, 0xFB])),
        (0x41, aid(RID_CAC, [0x02, 0x00])),
        (0x42, aid(RID_CAC, [0x02, 0x01])),
        (0x4E, aid(RID_CAC, [0x02, 0xFE])),
        (0x4D, aid(RID_CAC, [0x02, 0xFD])),
        (0x50, aid(RID_CAC, [0x02, 0xF2])),
        (0x51, aid(RID_CAC, [0x02, 0xF0])),
        (0x52, aid(RID_CAC, [0x02, 0xF1])),
        (0x44, aid(RID_CAC, [0x12, 0x01])),
        (0x45, aid(RID_CAC, [0x12, 0x02])),
    ];
    for i in 0..n_pki {
        v.push((0x61 + i as u8, aid(RID_CAC, [0x01, i as u8])));
    }
    v
}

/// GET ACR (INS 4C) for a card with `n_pki` PKI applets: the data to return, or the status word.
pub fn get_acr(p1: u8, p2: u8, data: &[u8], n_pki: usize) -> Result<Vec<u8>, Sw> {
    if p2 != 0 {
        return Err(Sw::INCORRECT_P1P2);
    }
    let need = |n: usize| {
        if data.len() == n {
            Ok(())
        } else {
            Err(Sw::DATA_INVALID)
        }
    };
    match p1 {
        0x00 => {
            need(0)?;
            let mut out = header(0xA1, ACR_ENTRIES.len());
            for (_, e) in ACR_ENTRIES {
                push(&mut out, 0xA0, e);
            }
            Ok(out)
        }
        0x01 => {
            need(1)?;
            let (_, e) = ACR_ENTRIES
                .iter()
                .find(|(id, _)| *id == data[0])
                .ok_or(Sw::REFERENCE_NOT_FOUND)?;
            let mut out = header(0xA1, 1);
            push(&mut out, 0xA0, e);
            Ok(out)
        }
        0x40 | 0x41 => {
            need(0)?;
            // Extended form: per entry its length, then the entry.
            let mut out = Vec::new();
            for (_, e) in ACR_ENTRIES {
                out.push(e.len() as u8);
                out.extend_from_slice(e);
            }
            Ok(out)
        }
        0x10 => {
            need(0)?;
            let table = applet_table(n_pki);
            let mut out = header(0x81, table.len());
            for a in &table {
                applet_entry(&mut out, a);
            }
            Ok(out)
        }
        0x11 => {
            need(7)?;
            let table = applet_table(n_pki);
            let a = table
                .iter()
                .find(|a| a.aid == data)
                .ok_or(Sw::REFERENCE_NOT_FOUND)?;
            let mut out = header(0x81, 1);
            applet_entry(&mut out, a);
            Ok(out)
        }
        0x12 => {
            need(2)?;
            let table = applet_table(n_pki);
            let (oid, rules) = table
                .iter()
                .flat_map(|a| a.objects.iter())
                .find(|(oid, _)| oid[..] == *data)
                .ok_or(Sw::INCORRECT_DATA)?;
            let mut out = Vec::new();
            push(&mut out, 0x01, &INFO);
            object_entry(&mut out, *oid, rules);
            Ok(out)
        }
        0x50..=0x52 => {
            need(0)?;
            // Extended: per applet `len id nObjects { len OID (INS ACRID)* }`.
            let mut out = Vec::new();
            for a in applet_table(n_pki) {
                let mut e = vec![a.id, a.objects.len() as u8];
                for (oid, rules) in &a.objects {
                    e.push((2 + 2 * rules.len()) as u8);
                    e.extend_from_slice(oid);
                    for (ins, acr) in rules {
                        e.extend_from_slice(&[*ins, *acr]);
                    }
                }
                out.push(e.len() as u8);
                out.extend(e);
            }
            Ok(out)
        }
        0x20 => {
            need(0)?;
            let mut out = header(0x91, 3);
            for provider in [0x1F, 0x1E, 0x1D] {
                let mut e = vec![provider];
                push(&mut e, 0x92, &ACA_AID);
                push(&mut out, 0x90, &e);
            }
            Ok(out)
        }
        0x60 => {
            need(0)?;
            // The 42 bytes libcacard copied from a real card (libcacard.md §4.4).
            let mut out = Vec::new();
            for (provider, tail) in [
                (0x1F, [0x12, 0, 0, 0]),
                (0x1E, [0x10, 0x01, 0, 0]),
                (0x1D, [0x01, 0, 0, 0]),
            ] {
                out.extend_from_slice(&[provider, 0x00, 0x07]);
                out.extend_from_slice(&ACA_AID);
                out.extend_from_slice(&tail);
            }
            Ok(out)
        }
        0x21 => {
            need(0)?;
            let s = services(n_pki);
            let mut out = header(0x94, s.len());
            for (id, aid) in s {
                let mut e = vec![id];
                push(&mut e, 0x92, &aid);
                push(&mut out, 0x93, &e);
            }
            Ok(out)
        }
        0x61 => {
            need(0)?;
            let mut out = Vec::new();
            for (id, aid) in services(n_pki) {
                out.extend_from_slice(&[id, 0x00, aid.len() as u8]);
                out.extend_from_slice(&aid);
            }
            Ok(out)
        }
        _ => Err(Sw::NOT_ALLOWED),
    }
}
