use crate::Sw;

/// A response APDU: data field and status word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Response data.
    pub data: Vec<u8>,
    /// SW1-SW2.
    pub sw: Sw,
}

impl Response {
    /// A status word alone.
    pub fn sw(sw: Sw) -> Self {
        Response {
            data: Vec::new(),
            sw,
        }
    }
    /// Data with 9000.
    pub fn ok(data: Vec<u8>) -> Self {
        Response { data, sw: Sw::OK }
    }
    /// Splits received bytes; `None` when fewer than two bytes arrived.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let (data, sw) = bytes.split_last_chunk::<2>()?;
        Some(Response {
            data: data.to_vec(),
            sw: Sw(u16::from_be_bytes(*sw)),
        })
    }
    /// Data followed by SW1 SW2.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + 2);
        out.extend_from_slice(&self.data);
        out.extend_from_slice(&self.sw.to_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_encode() {
        let r = Response::parse(&[1, 2, 0x90, 0]).unwrap();
        assert_eq!(r, Response::ok(vec![1, 2]));
        assert_eq!(r.to_bytes(), vec![1, 2, 0x90, 0]);
        assert_eq!(Response::parse(&[0x90]), None);
        assert_eq!(Response::sw(Sw(0x6A82)).to_bytes(), vec![0x6A, 0x82]);
    }
}
