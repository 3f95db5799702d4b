//! ATR structure check for VSC_ATR (ISO 7816-3 §8.2). QEMU's `check_atr()` reads TD bytes one
//! position off (qemu-ccid.md §1.8); this walks the interface bytes as the standard lays them
//! out, and like QEMU lets longer ATRs through.

use crate::wire::MAX_ATR;

/// Why an ATR is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AtrError {
    /// More bytes than VSC_ATR carries.
    #[error("ATR longer than {MAX_ATR} bytes")]
    TooLong,
    /// No bytes at all.
    #[error("empty ATR")]
    Empty,
    /// TS is neither direct (3B) nor inverse (3F) convention.
    #[error("TS is neither 3B nor 3F")]
    Ts,
    /// TS alone.
    #[error("ATR has no T0")]
    NoT0,
    /// A TD byte announces interface bytes that are missing.
    #[error("ATR shorter than its interface bytes")]
    ShortInterface,
    /// The historical bytes or TCK are missing.
    #[error("ATR shorter than its interface and historical bytes")]
    Short,
}

/// `Ok(())` when `atr` holds TS, T0, every interface byte its TD chain announces, the
/// historical bytes and TCK when a protocol other than T=0 is indicated; otherwise why not.
pub fn check(atr: &[u8]) -> Result<(), AtrError> {
    if atr.len() > MAX_ATR {
        return Err(AtrError::TooLong);
    }
    let (&ts, rest) = atr.split_first().ok_or(AtrError::Empty)?;
    if ts != 0x3B && ts != 0x3F {
        return Err(AtrError::Ts);
    }
    let &t0 = rest.first().ok_or(AtrError::NoT0)?;
    let historical = usize::from(t0 & 0x0F);
    let mut y = t0 >> 4;
    let mut idx = 2;
    let mut tck = false;
    loop {
        idx += usize::from(y & 0x07).count_ones() as usize;
        if y & 0x08 == 0 {
            break;
        }
        let &td = atr.get(idx).ok_or(AtrError::ShortInterface)?;
        idx += 1;
        if td & 0x0F != 0 {
            tck = true;
        }
        y = td >> 4;
    }
    let need = idx + historical + usize::from(tck);
    if atr.len() < need {
        return Err(AtrError::Short);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use apdu::hex::h;

    #[test]
    fn accepts_and_rejects() {
        assert_eq!(
            check(&h("3B 7A 18 00 00 73 66 74 65 20 63 64 31 34 34")),
            Ok(())
        );
        // QEMU's DEFAULT_ATR (TA1 TC1 TD1 TD2 TA3 TD3 TA4, 5 historical bytes, TCK).
        assert_eq!(
            check(&h("3B D5 18 FF 80 91 FE 1F C3 80 73 C8 21 13 08")),
            Ok(())
        );
        assert_eq!(check(&h("3B 00")), Ok(()));
        assert_eq!(
            check(&h("3B 00 11 22 33 44")),
            Ok(()),
            "longer is let through"
        );
        assert!(check(&h("3B 05 AA")).is_err());
        assert!(check(&h("00 11 22 33 44")).is_err());
        assert!(check(&[]).is_err());
        assert!(check(&h("3B")).is_err());
        assert!(check(&h("3B 80")).is_err(), "TD1 missing");
        assert!(check(&h("3B 80 01")).is_err(), "T=1 needs TCK");
        assert_eq!(check(&h("3B 80 01 81")), Ok(()));
        assert!(check(&[0x3B; 41]).is_err());
    }

    #[test]
    fn refusals_say_why() {
        assert_eq!(check(&[]), Err(AtrError::Empty));
        assert_eq!(check(&[0x3B; 41]), Err(AtrError::TooLong));
        assert_eq!(AtrError::TooLong.to_string(), "ATR longer than 40 bytes");
        assert_eq!(check(&h("3B 80")), Err(AtrError::ShortInterface));
        assert_eq!(
            AtrError::Short.to_string(),
            "ATR shorter than its interface and historical bytes"
        );
    }
}
