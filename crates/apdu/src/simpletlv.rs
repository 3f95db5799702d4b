//! SimpleTLV as GSC-IS 2.1 §8 and CAC use it: a 1-byte tag (01..FE) and a length of one byte
//! when below 255, else `FF` followed by a little-endian 16-bit length (libcacard.md §1.7).

use thiserror::Error;

/// Why bytes are not a SimpleTLV object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SimpleTlvError {
    /// Input ended inside the tag, length or value.
    #[error("SimpleTLV truncated in the {0}")]
    Truncated(&'static str),
}

/// One object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleTlv<'a> {
    /// Tag byte.
    pub tag: u8,
    /// Value.
    pub value: &'a [u8],
}

/// Reads the tag and length, not the value: returns (tag, length, rest). This is the form of
/// CAC "T" buffers, which hold headers only.
pub fn parse_header(input: &[u8]) -> Result<(u8, usize, &[u8]), SimpleTlvError> {
    let (&tag, rest) = input
        .split_first()
        .ok_or(SimpleTlvError::Truncated("tag"))?;
    let (&l0, rest) = rest
        .split_first()
        .ok_or(SimpleTlvError::Truncated("length"))?;
    if l0 < 0xFF {
        return Ok((tag, usize::from(l0), rest));
    }
    match rest {
        [lo, hi, rest @ ..] => Ok((tag, usize::from(u16::from_le_bytes([*lo, *hi])), rest)),
        _ => Err(SimpleTlvError::Truncated("length")),
    }
}

/// Reads one whole object.
pub fn parse_one(input: &[u8]) -> Result<(SimpleTlv<'_>, &[u8]), SimpleTlvError> {
    let (tag, len, rest) = parse_header(input)?;
    if rest.len() < len {
        return Err(SimpleTlvError::Truncated("value"));
    }
    let (value, rest) = rest.split_at(len);
    Ok((SimpleTlv { tag, value }, rest))
}

/// Iterates over consecutive objects; stops after the first error, which it yields.
pub fn iter(input: &[u8]) -> impl Iterator<Item = Result<SimpleTlv<'_>, SimpleTlvError>> {
    let mut rest = Some(input);
    std::iter::from_fn(move || {
        let input = rest?;
        if input.is_empty() {
            return None;
        }
        match parse_one(input) {
            Ok((t, r)) => {
                rest = Some(r);
                Some(Ok(t))
            }
            Err(e) => {
                rest = None;
                Some(Err(e))
            }
        }
    })
}

/// Appends a tag and the length of `len` bytes (no value).
pub fn push_header(out: &mut Vec<u8>, tag: u8, len: usize) {
    out.push(tag);
    if len < 0xFF {
        out.push(len as u8);
    } else {
        out.push(0xFF);
        out.extend_from_slice(&(len.min(0xFFFF) as u16).to_le_bytes());
    }
}

/// Appends a whole object.
pub fn push(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    push_header(out, tag, value.len());
    out.extend_from_slice(value);
}

/// A whole object as a new vector.
pub fn encode(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 4);
    push(&mut out, tag, value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex::h;
    use proptest::prelude::*;

    #[test]
    fn golden() {
        // The PKI T buffer of libcacard.md §1.8 for a 673-byte certificate.
        let mut t = Vec::new();
        push_header(&mut t, 0x71, 1);
        push_header(&mut t, 0x70, 674);
        push_header(&mut t, 0x72, 0);
        push_header(&mut t, 0xFE, 0);
        assert_eq!(t, h("71 01 70 FF A2 02 72 00 FE 00"));
        assert_eq!(parse_header(&t[2..]).unwrap().1, 674);
        assert_eq!(
            encode(0x01, &h("10 02 06 02 03")),
            h("01 05 10 02 06 02 03")
        );
        assert_eq!(
            parse_one(&h("01 05 10")),
            Err(SimpleTlvError::Truncated("value"))
        );
        assert_eq!(
            parse_one(&h("01 FF 01")),
            Err(SimpleTlvError::Truncated("length"))
        );
        let bytes = h("01 01 AA 02 00 03");
        let all: Vec<_> = iter(&bytes).collect();
        assert_eq!(all.len(), 3);
        assert!(all[2].is_err());
    }

    proptest! {
        #[test]
        fn total(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            for t in iter(&bytes) { let _ = t; }
        }
        #[test]
        fn round_trip(tag in 1u8..=0xFE, value in proptest::collection::vec(any::<u8>(), 0..1000)) {
            let enc = encode(tag, &value);
            let (t, rest) = parse_one(&enc).unwrap();
            prop_assert_eq!((t.tag, t.value), (tag, &value[..]));
            prop_assert!(rest.is_empty());
        }
    }
}
