//! vpcd framing without I/O: a [`Decoder`] that takes bytes as they arrive and yields
//! [`Request`]s, and [`encode`] for answers.

use thiserror::Error;

/// A message from vpcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// 00: power off (no answer).
    PowerOff,
    /// 01: power on (no answer).
    PowerOn,
    /// 02: warm reset (no answer).
    Reset,
    /// 04: get ATR (answer the ATR).
    GetAtr,
    /// Any other one-byte message (vpcd sends none; logged and ignored).
    UnknownControl(u8),
    /// Two or more bytes: a command APDU.
    Apdu(Vec<u8>),
}

/// Protocol errors that end the connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    /// A zero-length message (vpcd never sends one; it would mean "card removed" from us).
    #[error("zero-length vpcd message")]
    Empty,
    /// An answer longer than a u16 length can frame.
    #[error("answer of {0} bytes does not fit the 16-bit vpcd length")]
    TooLong(usize),
}

/// Reassembles split and coalesced messages. Memory is bounded by the 16-bit length: at most
/// 65535 + 2 bytes are ever buffered per message.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, `Ok(None)` if more bytes are needed.
    pub fn next_request(&mut self) -> Result<Option<Request>, CodecError> {
        let Some(&[hi, lo]) = self.buf.first_chunk::<2>() else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if len == 0 {
            return Err(CodecError::Empty);
        }
        if self.buf.len() < 2 + len {
            return Ok(None);
        }
        let body: Vec<u8> = self.buf.drain(..2 + len).skip(2).collect();
        Ok(Some(match body[..] {
            [0x00] => Request::PowerOff,
            [0x01] => Request::PowerOn,
            [0x02] => Request::Reset,
            [0x04] => Request::GetAtr,
            [b] => Request::UnknownControl(b),
            _ => Request::Apdu(body),
        }))
    }

    /// Bytes buffered and not yet a whole message.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Frames an answer (ATR or response APDU) as length + bytes, in one buffer so it goes out
/// in one write (transports.md §3: split writes cost a delayed ACK each).
pub fn encode(answer: &[u8]) -> Result<Vec<u8>, CodecError> {
    let len = u16::try_from(answer.len()).map_err(|_| CodecError::TooLong(answer.len()))?;
    if len == 0 {
        return Err(CodecError::Empty);
    }
    let mut out = Vec::with_capacity(answer.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(answer);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use apdu::hex::h;
    use proptest::prelude::*;

    #[test]
    fn golden_session() {
        // transports.md §3.2 example session, coalesced and split arbitrarily.
        let wire = h("00 01 04  00 01 01  00 01 04  00 0C 00 A4 04 00 07 A0 00 00 00 79 01 00  00 01 00  00 01 02  00 01 03");
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for chunk in wire.chunks(3) {
            d.feed(chunk);
            while let Some(r) = d.next_request().unwrap() {
                got.push(r);
            }
        }
        assert_eq!(
            got,
            vec![
                Request::GetAtr,
                Request::PowerOn,
                Request::GetAtr,
                Request::Apdu(h("00 A4 04 00 07 A0 00 00 00 79 01 00")),
                Request::PowerOff,
                Request::Reset,
                Request::UnknownControl(3),
            ]
        );
        assert_eq!(d.pending(), 0);
        assert_eq!(encode(&h("90 00")).unwrap(), h("00 02 90 00"));
        assert_eq!(
            encode(&h("3B 7A 18 00 00 73 66 74 65 20 63 64 31 34 34")).unwrap(),
            h("00 0F 3B 7A 18 00 00 73 66 74 65 20 63 64 31 34 34")
        );
        assert_eq!(encode(&vec![0; 65536]), Err(CodecError::TooLong(65536)));
        assert_eq!(encode(&[]), Err(CodecError::Empty));
        let mut d = Decoder::new();
        d.feed(&[0, 0]);
        assert_eq!(d.next_request(), Err(CodecError::Empty));
    }

    proptest! {
        #[test]
        fn decoder_is_total(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 0..20)) {
            let mut d = Decoder::new();
            for c in chunks {
                d.feed(&c);
                while let Ok(Some(_)) = d.next_request() {}
                prop_assert!(d.pending() <= 65537 + 100);
            }
        }

        #[test]
        fn round_trip(apdu in proptest::collection::vec(any::<u8>(), 2..2000)) {
            let mut d = Decoder::new();
            d.feed(&encode(&apdu).unwrap());
            prop_assert_eq!(d.next_request().unwrap(), Some(Request::Apdu(apdu)));
        }
    }
}
