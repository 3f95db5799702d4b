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

/// Parses hex digits, ignoring white space, `:` and `.` between them. `None` for an odd number
/// of digits or a character that is not a hex digit.
pub fn parse(text: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b':' && *c != b'.')
        .collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|p| {
            let hi = (p[0] as char).to_digit(16)?;
            let lo = (p[1] as char).to_digit(16)?;
            Some((hi * 16 + lo) as u8)
        })
        .collect()
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
    }
}
