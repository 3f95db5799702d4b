//! Spaced hex, the notation of transcript tests ("00 A4 04 00 07 A0 00 00 01 16 DB 00").

use std::fmt::Write;

/// Upper-case hex with one space between bytes.
pub fn spaced(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        let _ = write!(s, "{b:02X}");
    }
    s
}

/// What each byte of hex text is: a digit's value, [`SKIP`] for a separator, [`BAD`] for
/// anything else. A table rather than `char::to_digit`: state files carry certificates and keys
/// in hex and are read at every start, and under the fuzzers' comparison tracing the branches
/// of `to_digit` were a quarter of the `piv_session` target's time.
const DIGIT: [u8; 256] = {
    let mut t = [BAD; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t[b' ' as usize] = SKIP;
    t[b'\t' as usize] = SKIP;
    t[b'\n' as usize] = SKIP;
    t[b'\r' as usize] = SKIP;
    t[0x0C] = SKIP;
    t[b':' as usize] = SKIP;
    t[b'.' as usize] = SKIP;
    t
};
const SKIP: u8 = 0xFE;
const BAD: u8 = 0xFF;

/// Parses hex digits, ignoring white space, `:` and `.` between them. `None` for an odd number
/// of digits or a character that is not a hex digit.
pub fn parse(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 2);
    let mut high: Option<u8> = None;
    for &c in text.as_bytes() {
        match DIGIT[usize::from(c)] {
            SKIP => {}
            BAD => return None,
            d => match high.take() {
                None => high = Some(d),
                Some(h) => out.push(h << 4 | d),
            },
        }
    }
    high.is_none().then_some(out)
}

/// Lower-case hex without separators, as state files hold keys and objects.
pub fn lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = Vec::with_capacity(2 * bytes.len());
    for x in bytes {
        s.push(DIGITS[usize::from(x >> 4)]);
        s.push(DIGITS[usize::from(x & 0x0F)]);
    }
    // Only ASCII digits went in.
    String::from_utf8(s).unwrap_or_default()
}

/// [`parse`] for literals in tests and tables: panics on malformed text.
pub fn h(text: &str) -> Vec<u8> {
    match parse(text) {
        Some(v) => v,
        None => panic!("malformed hex literal {text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        assert_eq!(spaced(&[0x00, 0xA4, 0x0f]), "00 A4 0F");
        assert_eq!(parse("00 a4:0F\n.10"), Some(vec![0, 0xA4, 0x0F, 0x10]));
        assert_eq!(parse("0"), None);
        assert_eq!(parse("zz"), None);
        assert_eq!(spaced(&[]), "");
        assert_eq!(lower(&[0x00, 0xA4, 0x0F, 0xFF]), "00a40fff");
        assert_eq!(parse("\t0a\x0cB c\r\n"), Some(vec![0x0A, 0xBC]));
        assert_eq!(parse("0a b"), None);
        assert_eq!(parse("0g"), None);
        assert_eq!(parse("é0"), None);
        assert_eq!(parse(""), Some(vec![]));
    }

    /// What `parse` was before its table: digits per `char::to_digit`, separators per
    /// `is_ascii_whitespace`, `:` and `.`.
    fn reference(text: &str) -> Option<Vec<u8>> {
        let digits: Vec<u8> = text
            .bytes()
            .filter(|c| !c.is_ascii_whitespace() && *c != b':' && *c != b'.')
            .collect();
        if !digits.len().is_multiple_of(2) {
            return None;
        }
        digits
            .chunks(2)
            .map(|p| Some(((p[0] as char).to_digit(16)? * 16 + (p[1] as char).to_digit(16)?) as u8))
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn parse_is_the_reference(text in "[0-9a-fA-FgG :.\t\n\r\x0b\x0c]{0,40}") {
            proptest::prop_assert_eq!(parse(&text), reference(&text));
        }

        #[test]
        fn lower_parses_back(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            proptest::prop_assert_eq!(parse(&lower(&bytes)), Some(bytes.clone()));
            proptest::prop_assert_eq!(lower(&bytes), spaced(&bytes).replace(' ', "").to_lowercase());
        }
    }
}
