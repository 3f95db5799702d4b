//! The FASC-N of the CHUID (SP 800-73-4 Part 1 Table 9, tag 30, 25 bytes), as the PACS
//! Technical Implementation Guidance (TIG SCEPACS v2.3 §6) encodes it: 40 characters of five
//! bits, each four BCD data bits, least significant first, then an odd-parity bit; the
//! characters are SS, Agency Code (4 digits), FS, System Code (4), FS, Credential Number (6),
//! FS, Credential Series (1), FS, Individual Credential Issue (1), FS, Person Identifier (10),
//! Organizational Category (1), Organizational Identifier (4), Person/Organization Association
//! Category (1), ES, and the LRC: the exclusive or of the data bits of the 39 characters
//! before it, with its own odd-parity bit.
//!
//! vccid's cards are not issued by a federal agency, so their FASC-N has the form PIV
//! Interoperability for Non-Federal Issuers (Federal CIO Council, 2010) prescribes: Agency
//! Code 9999, System Code 9999 and Credential Number 999999 (no SP 800-87 agency code is
//! claimed), the card told apart by the GUID, which holds a UUID. OpenSC keys the serial
//! number on the GUID for exactly this form (`piv_get_serial_nr_from_CHUI`). The Person
//! Identifier comes from the card's first certificate, so that two cards' FASC-Ns differ too
//! (issue #15): cards that took it whole from a constant looked like one card to software that
//! reads the FASC-N.

/// The start sentinel, field separator and end sentinel (TIG SCEPACS §6.2: hex B, D, F).
const SS: u8 = 0xB;
const FS: u8 = 0xD;
const ES: u8 = 0xF;

/// The FASC-N vccid's PIV cards had before issue #15, for every card (YubiKey's factory
/// CHUID has it too): 9999 9999 999999, series 0, issue 1, person 0000000000, category 3,
/// organization 0000, association 1.
pub(crate) const SHARED_BEFORE: [u8; 25] = [
    0xD4, 0xE7, 0x39, 0xDA, 0x73, 0x9C, 0xED, 0x39, 0xCE, 0x73, 0x9D, 0x83, 0x68, 0x58, 0x21, 0x08,
    0x42, 0x10, 0x84, 0x21, 0xC8, 0x42, 0x10, 0xC3, 0xEB,
];

/// The FASC-N fields, each a string of decimal digits of its length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fields {
    pub agency: [u8; 4],
    pub system: [u8; 4],
    pub credential: [u8; 6],
    pub series: u8,
    pub issue: u8,
    pub person: [u8; 10],
    pub category: u8,
    pub organization: [u8; 4],
    pub association: u8,
}

impl Fields {
    /// The 40 characters' data values, the LRC last.
    fn characters(&self) -> [u8; 40] {
        let mut c = Vec::with_capacity(40);
        c.push(SS);
        c.extend_from_slice(&self.agency);
        c.push(FS);
        c.extend_from_slice(&self.system);
        c.push(FS);
        c.extend_from_slice(&self.credential);
        c.push(FS);
        c.push(self.series);
        c.push(FS);
        c.push(self.issue);
        c.push(FS);
        c.extend_from_slice(&self.person);
        c.push(self.category);
        c.extend_from_slice(&self.organization);
        c.push(self.association);
        c.push(ES);
        c.push(c.iter().fold(0, |lrc, d| lrc ^ d));
        let mut out = [0u8; 40];
        out.copy_from_slice(&c);
        out
    }

    /// The 25 bytes: each character as b1 b2 b3 b4 P, most significant bit of the byte first.
    pub(crate) fn encode(&self) -> [u8; 25] {
        let mut out = [0u8; 25];
        let mut bit = 0;
        for d in self.characters() {
            let parity = u8::from((d & 0x0F).count_ones() % 2 == 0);
            let five = [d & 1, d >> 1 & 1, d >> 2 & 1, d >> 3 & 1, parity];
            for b in five {
                out[bit / 8] |= b << (7 - bit % 8);
                bit += 1;
            }
        }
        out
    }
}

/// The FASC-N of a card whose first certificate is `first_cert`: the non-federal issuer's
/// form, with a Person Identifier of ten digits from SHA-256 of the certificate.
pub fn fascn(first_cert: &[u8]) -> [u8; 25] {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(first_cert);
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    let mut n = u64::from_be_bytes(head) % 10_000_000_000;
    let mut person = [0u8; 10];
    for d in person.iter_mut().rev() {
        *d = (n % 10) as u8;
        n /= 10;
    }
    Fields {
        agency: [9; 4],
        system: [9; 4],
        credential: [9; 6],
        series: 0,
        issue: 1,
        person,
        category: 3,
        organization: [0; 4],
        association: 1,
    }
    .encode()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Decodes a FASC-N, checking every character's odd parity, the sentinels and separators
    /// in their places, digits elsewhere, and the LRC.
    pub(crate) fn decode(b: &[u8]) -> Result<Fields, String> {
        if b.len() != 25 {
            return Err(format!("{} bytes, not 25", b.len()));
        }
        let bit = |i: usize| b[i / 8] >> (7 - i % 8) & 1;
        let mut chars = [0u8; 40];
        for (k, c) in chars.iter_mut().enumerate() {
            let five: Vec<u8> = (0..5).map(|j| bit(k * 5 + j)).collect();
            if five.iter().sum::<u8>() % 2 != 1 {
                return Err(format!("character {k}: even parity"));
            }
            *c = five[0] | five[1] << 1 | five[2] << 2 | five[3] << 3;
        }
        let lrc = chars[..39].iter().fold(0, |a, d| a ^ d);
        if lrc != chars[39] {
            return Err(format!("LRC {:X}, expected {lrc:X}", chars[39]));
        }
        for (k, want) in [
            (0, SS),
            (5, FS),
            (10, FS),
            (17, FS),
            (19, FS),
            (21, FS),
            (38, ES),
        ] {
            if chars[k] != want {
                return Err(format!("character {k} is {:X}, not {want:X}", chars[k]));
            }
        }
        for (k, c) in chars[..39].iter().enumerate() {
            let separator = [0, 5, 10, 17, 19, 21, 38].contains(&k);
            if !separator && *c > 9 {
                return Err(format!("character {k} is {c:X}, not a digit"));
            }
        }
        let take = |from: usize, to: usize| chars[from..to].to_vec();
        let arr4 = |v: Vec<u8>| -> [u8; 4] { [v[0], v[1], v[2], v[3]] };
        let mut credential = [0u8; 6];
        credential.copy_from_slice(&chars[11..17]);
        let mut person = [0u8; 10];
        person.copy_from_slice(&chars[22..32]);
        Ok(Fields {
            agency: arr4(take(1, 5)),
            system: arr4(take(6, 10)),
            credential,
            series: chars[18],
            issue: chars[20],
            person,
            category: chars[32],
            organization: arr4(take(33, 37)),
            association: chars[37],
        })
    }

    #[test]
    fn the_encoding_is_tig_scepacs() {
        // The FASC-N every earlier vccid card (and a factory YubiKey) carries decodes, and
        // encodes back to the same bytes.
        let old = decode(&SHARED_BEFORE).unwrap();
        assert_eq!(
            (old.agency, old.system, old.credential),
            ([9; 4], [9; 4], [9; 6])
        );
        assert_eq!(
            (old.series, old.issue, old.person, old.category),
            (0, 1, [0; 10], 3)
        );
        assert_eq!((old.organization, old.association), ([0; 4], 1));
        assert_eq!(old.encode(), SHARED_BEFORE);
        // Every digit in every field round-trips.
        let f = Fields {
            agency: [1, 2, 3, 4],
            system: [5, 6, 7, 8],
            credential: [9, 0, 1, 2, 3, 4],
            series: 5,
            issue: 6,
            person: [7, 8, 9, 0, 1, 2, 3, 4, 5, 6],
            category: 7,
            organization: [8, 9, 0, 1],
            association: 2,
        };
        assert_eq!(decode(&f.encode()).unwrap(), f);
        // A flipped bit breaks the parity of its character.
        let mut bad = f.encode();
        bad[7] ^= 0x10;
        assert!(decode(&bad).unwrap_err().contains("parity"));
    }

    #[test]
    fn the_fascn_is_the_non_federal_form_with_a_person_from_the_certificate() {
        let a = fascn(b"certificate a");
        let b = fascn(b"certificate b");
        assert_ne!(a, b);
        assert_eq!(fascn(b"certificate a"), a);
        for f in [a, b] {
            let d = decode(&f).unwrap();
            // OpenSC uses the GUID as the serial number for agency code 9999.
            assert_eq!(&f[..3], &[0xD4, 0xE7, 0x39]);
            assert_eq!(f[3] | 0x7F, 0xFF);
            assert_eq!((d.agency, d.system, d.credential), ([9; 4], [9; 4], [9; 6]));
            assert_ne!(d.person, [0; 10]);
        }
    }
}
