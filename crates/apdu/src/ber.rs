//! BER-TLV data objects (ISO 7816-4 §6.3; tag and length rules of X.690 §8.1.2–8.1.3).

use thiserror::Error;

/// Why bytes are not a BER-TLV object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TlvError {
    /// Input ended inside the tag, the length or the value.
    #[error("BER-TLV truncated: {0}")]
    Truncated(&'static str),
    /// A tag longer than 4 bytes (ISO 7816-4 §6.3 allows up to 3).
    #[error("BER-TLV tag longer than 4 bytes")]
    TagTooLong,
    /// Indefinite length (0x80) or a length field longer than 4 bytes.
    #[error("BER-TLV length form 0x{0:02X} not supported")]
    BadLength(u8),
}

/// One data object: the tag as its bytes read big-endian (`5F C1 05` → 0x5FC105), and a
/// borrowed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// Tag bytes as a number.
    pub tag: u32,
    /// Value field.
    pub value: &'a [u8],
}

/// Reads one object from the front of `input`; returns it and the rest.
pub fn parse_one(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), TlvError> {
    let (&first, mut rest) = input.split_first().ok_or(TlvError::Truncated("tag"))?;
    let mut tag = u32::from(first);
    if first & 0x1F == 0x1F {
        // Subsequent tag bytes follow while b8 is set (X.690 §8.1.2.4).
        let mut n = 1;
        loop {
            let (&b, r) = rest.split_first().ok_or(TlvError::Truncated("tag"))?;
            rest = r;
            n += 1;
            if n > 4 {
                return Err(TlvError::TagTooLong);
            }
            tag = (tag << 8) | u32::from(b);
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    let (&l0, r) = rest.split_first().ok_or(TlvError::Truncated("length"))?;
    rest = r;
    let len = match l0 {
        0..=0x7F => usize::from(l0),
        0x81..=0x84 => {
            let n = usize::from(l0 & 0x7F);
            if rest.len() < n {
                return Err(TlvError::Truncated("length"));
            }
            let (lb, r) = rest.split_at(n);
            rest = r;
            lb.iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
        }
        _ => return Err(TlvError::BadLength(l0)),
    };
    if rest.len() < len {
        return Err(TlvError::Truncated("value"));
    }
    let (value, rest) = rest.split_at(len);
    Ok((Tlv { tag, value }, rest))
}

/// Iterates over consecutive objects; stops after the first error, which it yields.
pub fn iter(input: &[u8]) -> impl Iterator<Item = Result<Tlv<'_>, TlvError>> {
    let mut rest = Some(input);
    std::iter::from_fn(move || {
        let input = rest?;
        if input.is_empty() {
            return None;
        }
        match parse_one(input) {
            Ok((tlv, r)) => {
                rest = Some(r);
                Some(Ok(tlv))
            }
            Err(e) => {
                rest = None;
                Some(Err(e))
            }
        }
    })
}

/// Finds the first object with `tag` among consecutive objects.
pub fn find(input: &[u8], tag: u32) -> Option<&[u8]> {
    iter(input)
        .map_while(Result::ok)
        .find(|t| t.tag == tag)
        .map(|t| t.value)
}

/// Appends the length field for `len` in its shortest definite form.
pub fn push_len(out: &mut Vec<u8>, len: usize) {
    match len {
        0..=0x7F => out.push(len as u8),
        0x80..=0xFF => out.extend_from_slice(&[0x81, len as u8]),
        0x100..=0xFFFF => {
            out.push(0x82);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0x83);
            out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
        }
    }
}

/// Appends tag, length and value.
pub fn push(out: &mut Vec<u8>, tag: u32, value: &[u8]) {
    let tb = tag.to_be_bytes();
    let skip = tb.iter().take(3).take_while(|b| **b == 0).count();
    out.extend_from_slice(&tb[skip..]);
    push_len(out, value.len());
    out.extend_from_slice(value);
}

/// Tag, length and value as a new vector.
pub fn encode(tag: u32, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 8);
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
        let b = h("5F C1 05 82 01 00");
        let mut v = b.clone();
        v.extend(vec![0xAB; 256]);
        let (t, rest) = parse_one(&v).unwrap();
        assert_eq!((t.tag, t.value.len(), rest.len()), (0x5FC105, 256, 0));
        assert_eq!(encode(0x5FC105, &vec![0xAB; 256]), v);
        assert_eq!(encode(0x84, &[1, 2]), h("84 02 01 02"));
        assert_eq!(encode(0x53, &[0; 0x80])[..3], h("53 81 80")[..]);
        assert_eq!(
            find(&h("84 01 AA 85 02 BB CC"), 0x85),
            Some(&[0xBB, 0xCC][..])
        );
        assert_eq!(parse_one(&h("84 05 01")), Err(TlvError::Truncated("value")));
        assert_eq!(parse_one(&h("84 80")), Err(TlvError::BadLength(0x80)));
        assert_eq!(
            parse_one(&h("5F FF FF FF 01 00")),
            Err(TlvError::TagTooLong)
        );
        assert_eq!(
            parse_one(&h("84 84 FF FF FF FF")),
            Err(TlvError::Truncated("value"))
        );
    }

    proptest! {
        #[test]
        fn total(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            for t in iter(&bytes) { let _ = t; }
        }
        #[test]
        fn round_trip(tag in prop_oneof![1u32..=0x1E, 0x5F01u32..=0x5F7F, Just(0x5FC105u32)],
                      value in proptest::collection::vec(any::<u8>(), 0..70000)) {
            let enc = encode(tag, &value);
            let (t, rest) = parse_one(&enc).unwrap();
            prop_assert_eq!(t.tag, tag);
            prop_assert_eq!(t.value, &value[..]);
            prop_assert!(rest.is_empty());
        }
    }
}
