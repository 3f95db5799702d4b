use thiserror::Error;

/// The largest data field an extended command can carry (ISO 7816-3 §12.1.3: Nc ≤ 65535).
pub const MAX_EXTENDED_DATA: usize = 65535;

/// Why bytes are not a command APDU. Every variant maps to SW 6700 on a card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ParseError {
    /// Fewer than the four header bytes.
    #[error("command APDU of {0} bytes is shorter than its 4-byte header")]
    TooShort(usize),
    /// The body length matches none of the seven cases.
    #[error("command APDU body of {body} bytes does not match Lc/Le (case unknown)")]
    BadLength {
        /// bytes after the header
        body: usize,
    },
    /// An extended Lc of zero (ISO 7816-3 §12.1.3: Lc is 1..65535).
    #[error("extended Lc of zero")]
    ZeroExtendedLc,
}

/// A parsed command APDU borrowing its data field.
///
/// `le` is Ne, the maximum number of response bytes (`None` when the command has no Le field,
/// cases 1 and 3); a short Le of 00 is 256 and an extended Le of 0000 is 65536.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command<'a> {
    /// Class byte.
    pub cla: u8,
    /// Instruction byte.
    pub ins: u8,
    /// Parameter 1.
    pub p1: u8,
    /// Parameter 2.
    pub p2: u8,
    /// Command data (Nc bytes).
    pub data: &'a [u8],
    /// Ne, or `None` when absent.
    pub le: Option<u32>,
    /// Whether Lc/Le were in the extended (3- or 2-byte) form.
    pub extended: bool,
}

impl<'a> Command<'a> {
    /// Parses `bytes` by ISO 7816-3 §12.1.3, one case at a time. Total: never panics.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ParseError> {
        let (header, body) = match bytes.split_first_chunk::<4>() {
            Some(split) => split,
            None => return Err(ParseError::TooShort(bytes.len())),
        };
        let [cla, ins, p1, p2] = *header;
        let cmd = |data: &'a [u8], le: Option<u32>, extended: bool| Command {
            cla,
            ins,
            p1,
            p2,
            data,
            le,
            extended,
        };
        let short_le = |b: u8| if b == 0 { 256 } else { u32::from(b) };
        let ext_le = |hi: u8, lo: u8| match u16::from_be_bytes([hi, lo]) {
            0 => 65536,
            n => u32::from(n),
        };
        match body {
            // Case 1: header only.
            [] => Ok(cmd(&[], None, false)),
            // Case 2S: one Le byte.
            [le] => Ok(cmd(&[], Some(short_le(*le)), false)),
            // Short Lc (first body byte non-zero): case 3S or 4S.
            [lc, rest @ ..] if *lc != 0 => {
                let lc = usize::from(*lc);
                match rest.len() {
                    n if n == lc => Ok(cmd(rest, None, false)),
                    n if n == lc + 1 => Ok(cmd(&rest[..lc], Some(short_le(rest[lc])), false)),
                    _ => Err(ParseError::BadLength { body: body.len() }),
                }
            }
            // Case 2E: 00 Le-hi Le-lo.
            [0, hi, lo] => Ok(cmd(&[], Some(ext_le(*hi, *lo)), true)),
            // Case 3E / 4E: 00 Lc-hi Lc-lo data [Le-hi Le-lo].
            [0, hi, lo, rest @ ..] => {
                let lc = usize::from(u16::from_be_bytes([*hi, *lo]));
                if lc == 0 {
                    return Err(ParseError::ZeroExtendedLc);
                }
                match rest.len() {
                    n if n == lc => Ok(cmd(rest, None, true)),
                    n if n == lc + 2 => {
                        Ok(cmd(&rest[..lc], Some(ext_le(rest[lc], rest[lc + 1])), true))
                    }
                    _ => Err(ParseError::BadLength { body: body.len() }),
                }
            }
            _ => Err(ParseError::BadLength { body: body.len() }),
        }
    }

    /// Ne as the card sizes answers (libcacard's rule, libcacard.md §1.5): 0 when absent.
    pub fn ne(&self) -> usize {
        self.le.unwrap_or(0) as usize
    }

    /// The command-chaining bit of an inter-industry class byte (ISO 7816-4 §5.1.1, b5).
    pub fn is_chained(&self) -> bool {
        self.cla & 0x80 == 0 && self.cla & 0x10 != 0
    }

    /// An owned copy.
    pub fn to_owned(&self) -> CommandBuf {
        CommandBuf {
            cla: self.cla,
            ins: self.ins,
            p1: self.p1,
            p2: self.p2,
            data: self.data.to_vec(),
            le: self.le,
        }
    }
}

/// An owned command APDU, for the sending side (tests, vscclient, benchmarks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandBuf {
    /// Class byte.
    pub cla: u8,
    /// Instruction byte.
    pub ins: u8,
    /// Parameter 1.
    pub p1: u8,
    /// Parameter 2.
    pub p2: u8,
    /// Command data.
    pub data: Vec<u8>,
    /// Ne (1..=65536) or `None`.
    pub le: Option<u32>,
}

impl CommandBuf {
    /// A command with no data and no Le.
    pub fn new(cla: u8, ins: u8, p1: u8, p2: u8) -> Self {
        CommandBuf {
            cla,
            ins,
            p1,
            p2,
            data: Vec::new(),
            le: None,
        }
    }
    /// Sets the data field.
    pub fn data(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.data = data.into();
        self
    }
    /// Sets Ne.
    pub fn le(mut self, le: u32) -> Self {
        self.le = Some(le);
        self
    }

    /// Encodes in the short form when Nc ≤ 255 and Ne ≤ 256, else the extended form.
    /// `None` when Nc or Ne exceed what any form can carry.
    pub fn to_bytes(&self) -> Option<Vec<u8>> {
        let nc = self.data.len();
        let ne = self.le.unwrap_or(0);
        if nc > MAX_EXTENDED_DATA || ne > 65536 || self.le == Some(0) {
            return None;
        }
        let extended = nc > 255 || ne > 256;
        let mut out = Vec::with_capacity(4 + 3 + nc + 2);
        out.extend_from_slice(&[self.cla, self.ins, self.p1, self.p2]);
        if nc > 0 {
            if extended {
                out.push(0);
                out.extend_from_slice(&(nc as u16).to_be_bytes());
            } else {
                out.push(nc as u8);
            }
            out.extend_from_slice(&self.data);
        }
        if let Some(ne) = self.le {
            if extended {
                if nc == 0 {
                    out.push(0);
                }
                out.extend_from_slice(&((ne % 65536) as u16).to_be_bytes());
            } else {
                out.push((ne % 256) as u8);
            }
        }
        Some(out)
    }

    /// Splits the data into pieces of at most `max` bytes with the chaining bit set on all but
    /// the last (ISO 7816-4 §5.1.1); only the last carries Le. `max` of 0 is taken as 255.
    pub fn chain(&self, max: usize) -> Vec<CommandBuf> {
        let max = if max == 0 { 255 } else { max };
        if self.data.len() <= max {
            return vec![self.clone()];
        }
        let pieces: Vec<&[u8]> = self.data.chunks(max).collect();
        let last = pieces.len() - 1;
        pieces
            .into_iter()
            .enumerate()
            .map(|(i, piece)| CommandBuf {
                cla: if i < last { self.cla | 0x10 } else { self.cla },
                ins: self.ins,
                p1: self.p1,
                p2: self.p2,
                data: piece.to_vec(),
                le: if i == last { self.le } else { None },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex::h;
    use proptest::prelude::*;

    fn p(s: &str) -> Result<Command<'static>, ParseError> {
        Command::parse(Box::leak(h(s).into_boxed_slice()))
    }

    #[test]
    fn seven_cases() {
        let c = p("00 A4 04 00").unwrap();
        assert_eq!((c.data.len(), c.le, c.extended), (0, None, false));
        assert_eq!(p("00 C0 00 00 00").unwrap().le, Some(256));
        assert_eq!(p("00 C0 00 00 0D").unwrap().le, Some(13));
        let c = p("00 A4 04 00 02 3F 00").unwrap();
        assert_eq!((c.data, c.le), (&[0x3F, 0x00][..], None));
        let c = p("00 A4 04 00 02 3F 00 00").unwrap();
        assert_eq!((c.data, c.le), (&[0x3F, 0x00][..], Some(256)));
        let c = p("00 B0 00 00 00 00 00").unwrap();
        assert_eq!((c.le, c.extended), (Some(65536), true));
        let c = p("80 42 00 00 00 00 02 AA BB").unwrap();
        assert_eq!((c.data, c.le, c.extended), (&[0xAA, 0xBB][..], None, true));
        let c = p("80 42 00 00 00 00 02 AA BB 01 00").unwrap();
        assert_eq!(
            (c.data, c.le, c.extended),
            (&[0xAA, 0xBB][..], Some(256), true)
        );
    }

    #[test]
    fn malformed_lengths_are_errors() {
        assert_eq!(p("00 A4 04"), Err(ParseError::TooShort(3)));
        assert_eq!(p(""), Err(ParseError::TooShort(0)));
        assert_eq!(
            p("00 A4 04 00 02 3F"),
            Err(ParseError::BadLength { body: 2 })
        );
        assert_eq!(
            p("00 A4 04 00 02 3F 00 00 00"),
            Err(ParseError::BadLength { body: 5 })
        );
        assert_eq!(
            p("00 A4 04 00 00 00"),
            Err(ParseError::BadLength { body: 2 })
        );
        assert_eq!(
            p("00 A4 04 00 00 00 00 00"),
            Err(ParseError::ZeroExtendedLc)
        );
        assert_eq!(
            p("00 A4 04 00 00 00 02 AA"),
            Err(ParseError::BadLength { body: 4 })
        );
    }

    #[test]
    fn build_short_extended_and_chain() {
        let c = CommandBuf::new(0, 0xA4, 4, 0).data(h("A0 00 00 01 16 DB 00"));
        assert_eq!(
            c.to_bytes().unwrap(),
            h("00 A4 04 00 07 A0 00 00 01 16 DB 00")
        );
        assert_eq!(
            CommandBuf::new(0, 0xC0, 0, 0).le(256).to_bytes().unwrap(),
            h("00 C0 00 00 00")
        );
        let ext = CommandBuf::new(0x80, 0x42, 0, 0)
            .data(vec![1u8; 256])
            .to_bytes()
            .unwrap();
        assert_eq!(&ext[..7], &h("80 42 00 00 00 01 00")[..]);
        assert_eq!(ext.len(), 7 + 256);
        assert_eq!(
            CommandBuf::new(0, 0xB0, 0, 0).le(65536).to_bytes().unwrap(),
            h("00 B0 00 00 00 00 00")
        );
        assert_eq!(CommandBuf::new(0, 0xB0, 0, 0).le(0).to_bytes(), None);
        let parts = CommandBuf::new(0, 0x42, 0, 0)
            .data(vec![7u8; 256])
            .le(256)
            .chain(240);
        assert_eq!(parts.len(), 2);
        assert_eq!(
            (parts[0].cla, parts[0].data.len(), parts[0].le),
            (0x10, 240, None)
        );
        assert_eq!(
            (parts[1].cla, parts[1].data.len(), parts[1].le),
            (0x00, 16, Some(256))
        );
        assert!(Command::parse(&parts[0].to_bytes().unwrap())
            .unwrap()
            .is_chained());
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Command::parse(&bytes);
        }

        #[test]
        fn build_then_parse_round_trips(
            cla in any::<u8>(), ins in any::<u8>(), p1 in any::<u8>(), p2 in any::<u8>(),
            data in proptest::collection::vec(any::<u8>(), 0..400),
            le in proptest::option::of(1u32..=65536),
        ) {
            let built = CommandBuf { cla, ins, p1, p2, data: data.clone(), le };
            let bytes = built.to_bytes().unwrap();
            let parsed = Command::parse(&bytes).unwrap();
            prop_assert_eq!(parsed.to_owned(), built);
        }
    }
}
