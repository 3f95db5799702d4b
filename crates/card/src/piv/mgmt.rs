//! The PIV card management key (SP 800-73-4 Part 2 Appendix A; SP 800-78-4 Table 6-2):
//! 3DES or AES-128/192/256, authenticated by challenge-response in GENERAL AUTHENTICATE.

use apdu::Sw;
use zeroize::Zeroizing;

/// Algorithm identifiers of the management key (SP 800-78-4 Table 6-2).
pub const ALG_3DES: u8 = 0x03;
/// AES-128.
pub const ALG_AES128: u8 = 0x08;
/// AES-192.
pub const ALG_AES192: u8 = 0x0A;
/// AES-256.
pub const ALG_AES256: u8 = 0x0C;

/// A management key: its algorithm and value, wiped when dropped.
#[derive(Clone, PartialEq, Eq, zeroize::ZeroizeOnDrop)]
pub struct ManagementKey {
    alg: u8,
    key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ManagementKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ManagementKey(alg {:02X})", self.alg)
    }
}

/// The key length an algorithm takes.
pub fn key_len(alg: u8) -> Option<usize> {
    match alg {
        ALG_3DES => Some(24),
        ALG_AES128 => Some(16),
        ALG_AES192 => Some(24),
        ALG_AES256 => Some(32),
        _ => None,
    }
}

impl ManagementKey {
    /// A key of `alg` with `key`; `None` when the length does not fit the algorithm.
    pub fn new(alg: u8, key: &[u8]) -> Option<Self> {
        (key_len(alg)? == key.len()).then(|| ManagementKey {
            alg,
            key: Zeroizing::new(key.to_vec()),
        })
    }

    /// The algorithm identifier.
    pub fn alg(&self) -> u8 {
        self.alg
    }

    /// The key bytes (for the state file).
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The cipher's block size: the witness and challenge length.
    pub fn block_len(&self) -> usize {
        if self.alg == ALG_3DES {
            8
        } else {
            16
        }
    }

    /// Encrypts one block in place (ECB, as the challenge-response uses the bare cipher).
    pub fn encrypt_block(&self, block: &mut [u8]) -> Result<(), Sw> {
        if block.len() != self.block_len() {
            return Err(Sw::INCORRECT_DATA);
        }
        match self.alg {
            ALG_3DES => run::<des::TdesEde3>(&self.key, block),
            ALG_AES128 => run::<aes::Aes128>(&self.key, block),
            ALG_AES192 => run::<aes::Aes192>(&self.key, block),
            ALG_AES256 => run::<aes::Aes256>(&self.key, block),
            _ => Err(Sw::UNKNOWN),
        }
    }
}

fn run<C>(key: &[u8], block: &mut [u8]) -> Result<(), Sw>
where
    C: des::cipher::BlockCipherEncrypt + des::cipher::KeyInit,
{
    let cipher = C::new_from_slice(key).map_err(|_| Sw::UNKNOWN)?;
    let mut b = des::cipher::Block::<C>::try_from(&*block).map_err(|_| Sw::INCORRECT_DATA)?;
    cipher.encrypt_block(&mut b);
    block.copy_from_slice(&b);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use apdu::hex::h;

    /// FIPS 197 Appendix C.1–C.3 and SP 800-67 (3DES with three equal keys = DES).
    #[test]
    fn known_answers() {
        let pt = h("00112233445566778899aabbccddeeff");
        for (alg, key, ct) in [
            (
                ALG_AES128,
                "000102030405060708090a0b0c0d0e0f",
                "69c4e0d86a7b0430d8cdb78070b4c55a",
            ),
            (
                ALG_AES192,
                "000102030405060708090a0b0c0d0e0f1011121314151617",
                "dda97ca4864cdfe06eaf70a0ec0d7191",
            ),
            (
                ALG_AES256,
                "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
                "8ea2b7ca516745bfeafc49904b496089",
            ),
        ] {
            let k = ManagementKey::new(alg, &h(key)).unwrap();
            let mut b = pt.clone();
            k.encrypt_block(&mut b).unwrap();
            assert_eq!(b, h(ct), "alg {alg:02X}");
        }
        // DES (FIPS 46 validation): key 0123456789ABCDEF, "Now is t" → 3FA40E8A984D4815.
        let k = ManagementKey::new(ALG_3DES, &h("0123456789ABCDEF").repeat(3)).unwrap();
        let mut b = b"Now is t".to_vec();
        k.encrypt_block(&mut b).unwrap();
        assert_eq!(b, h("3FA40E8A984D4815"));
        assert!(ManagementKey::new(ALG_AES128, &[0; 24]).is_none());
        assert!(ManagementKey::new(0x07, &[0; 24]).is_none());
        assert_eq!(k.encrypt_block(&mut [0; 16]), Err(Sw::INCORRECT_DATA));
    }
}
