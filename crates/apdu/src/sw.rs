use std::fmt;

/// A status word SW1-SW2 (ISO 7816-4 §5.6). Open: any `u16` is a value, the constants name the
/// ones this project answers or reads.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sw(pub u16);

impl Sw {
    /// 9000: normal processing.
    pub const OK: Sw = Sw(0x9000);
    /// 6100: more data available; the low byte is the count (00 = 256 or more).
    pub const MORE_DATA: Sw = Sw(0x6100);
    /// 6281: part of the returned data may be corrupted.
    pub const DATA_CORRUPTED: Sw = Sw(0x6281);
    /// 6300 / 63Cx: verification failed (x = tries left).
    pub const VERIFY_FAILED: Sw = Sw(0x63C0);
    /// 6500: memory failure (libcacard's catch-all for backend errors).
    pub const MEMORY_FAILURE: Sw = Sw(0x6500);
    /// 6581: memory failure.
    pub const MEMORY_FAILURE_81: Sw = Sw(0x6581);
    /// 6700: wrong length.
    pub const WRONG_LENGTH: Sw = Sw(0x6700);
    /// 6882: secure messaging not supported.
    pub const SM_NOT_SUPPORTED: Sw = Sw(0x6882);
    /// 6883: last command of the chain expected.
    pub const LAST_COMMAND_EXPECTED: Sw = Sw(0x6883);
    /// 6884: command chaining not supported.
    pub const CHAINING_NOT_SUPPORTED: Sw = Sw(0x6884);
    /// 6900: command not allowed (no information given).
    pub const NOT_ALLOWED: Sw = Sw(0x6900);
    /// 6982: security status not satisfied.
    pub const SECURITY_STATUS_NOT_SATISFIED: Sw = Sw(0x6982);
    /// 6983: authentication method blocked.
    pub const AUTH_METHOD_BLOCKED: Sw = Sw(0x6983);
    /// 6984: reference data not usable (CAC: invalid data).
    pub const DATA_INVALID: Sw = Sw(0x6984);
    /// 6985: conditions of use not satisfied.
    pub const CONDITIONS_NOT_SATISFIED: Sw = Sw(0x6985);
    /// 6A00: wrong parameters P1-P2 (no information).
    pub const WRONG_P1P2_NO_INFO: Sw = Sw(0x6A00);
    /// 6A80: incorrect parameters in the data field.
    pub const INCORRECT_DATA: Sw = Sw(0x6A80);
    /// 6A81: function not supported.
    pub const FUNCTION_NOT_SUPPORTED: Sw = Sw(0x6A81);
    /// 6A82: file or application not found.
    pub const NOT_FOUND: Sw = Sw(0x6A82);
    /// 6A86: incorrect parameters P1-P2.
    pub const INCORRECT_P1P2: Sw = Sw(0x6A86);
    /// 6A88: referenced data not found.
    pub const REFERENCE_NOT_FOUND: Sw = Sw(0x6A88);
    /// 6C00: wrong Le; the low byte is the exact length.
    pub const WRONG_LE: Sw = Sw(0x6C00);
    /// 6D00: instruction not supported.
    pub const INS_NOT_SUPPORTED: Sw = Sw(0x6D00);
    /// 6E00: class not supported.
    pub const CLA_NOT_SUPPORTED: Sw = Sw(0x6E00);
    /// 6F00: no precise diagnosis.
    pub const UNKNOWN: Sw = Sw(0x6F00);

    /// 61xx with the count byte (`n` ≥ 256 is reported as 00, ISO 7816-4 §5.6).
    pub fn more_data(n: usize) -> Sw {
        Sw(0x6100 | if n >= 256 { 0 } else { n as u16 })
    }
    /// 6Cxx: resend with Le = `n`.
    pub fn wrong_le(n: usize) -> Sw {
        Sw(0x6C00 | (n.min(255) as u16))
    }
    /// 63Cx with x = tries left (at most 15).
    pub fn tries_left(n: u8) -> Sw {
        Sw(0x63C0 | u16::from(n.min(15)))
    }
    /// SW1.
    pub fn sw1(self) -> u8 {
        (self.0 >> 8) as u8
    }
    /// SW2.
    pub fn sw2(self) -> u8 {
        self.0 as u8
    }
    /// The two bytes, SW1 first.
    pub fn to_bytes(self) -> [u8; 2] {
        self.0.to_be_bytes()
    }
    /// 9000 or 61xx (ISO 7816-4: both mean the command succeeded).
    pub fn is_success(self) -> bool {
        self == Sw::OK || self.sw1() == 0x61
    }
    /// The constant's name when it has one.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Sw::OK => "OK",
            Sw::WRONG_LENGTH => "WRONG_LENGTH",
            Sw::SM_NOT_SUPPORTED => "SM_NOT_SUPPORTED",
            Sw::NOT_ALLOWED => "NOT_ALLOWED",
            Sw::SECURITY_STATUS_NOT_SATISFIED => "SECURITY_STATUS_NOT_SATISFIED",
            Sw::AUTH_METHOD_BLOCKED => "AUTH_METHOD_BLOCKED",
            Sw::DATA_INVALID => "DATA_INVALID",
            Sw::CONDITIONS_NOT_SATISFIED => "CONDITIONS_NOT_SATISFIED",
            Sw::WRONG_P1P2_NO_INFO => "WRONG_P1P2_NO_INFO",
            Sw::INCORRECT_DATA => "INCORRECT_DATA",
            Sw::FUNCTION_NOT_SUPPORTED => "FUNCTION_NOT_SUPPORTED",
            Sw::NOT_FOUND => "NOT_FOUND",
            Sw::INCORRECT_P1P2 => "INCORRECT_P1P2",
            Sw::REFERENCE_NOT_FOUND => "REFERENCE_NOT_FOUND",
            Sw::INS_NOT_SUPPORTED => "INS_NOT_SUPPORTED",
            Sw::CLA_NOT_SUPPORTED => "CLA_NOT_SUPPORTED",
            Sw::UNKNOWN => "UNKNOWN",
            _ => match self.sw1() {
                0x61 => "MORE_DATA",
                0x6C => "WRONG_LE",
                0x63 if self.sw2() & 0xF0 == 0xC0 => "VERIFY_FAILED",
                _ => return None,
            },
        })
    }
}

impl fmt::Debug for Sw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "Sw({:04X} {n})", self.0),
            None => write!(f, "Sw({:04X})", self.0),
        }
    }
}

impl fmt::Display for Sw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04X}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_names() {
        assert_eq!(Sw::more_data(0x0D), Sw(0x610D));
        assert_eq!(Sw::more_data(256), Sw(0x6100));
        assert_eq!(Sw::more_data(1000), Sw(0x6100));
        assert_eq!(Sw::wrong_le(0x17), Sw(0x6C17));
        assert_eq!(Sw::tries_left(2), Sw(0x63C2));
        assert_eq!(Sw::tries_left(200), Sw(0x63CF));
        assert_eq!(format!("{:?}", Sw(0x6A82)), "Sw(6A82 NOT_FOUND)");
        assert_eq!(format!("{:?}", Sw(0x1234)), "Sw(1234)");
        assert_eq!(Sw(0x6985).to_bytes(), [0x69, 0x85]);
        assert!(Sw(0x6110).is_success() && Sw::OK.is_success() && !Sw(0x6A82).is_success());
    }
}
