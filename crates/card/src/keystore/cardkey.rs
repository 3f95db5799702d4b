//! Private keys the card itself holds: generated on the card (GENERATE ASYMMETRIC KEY PAIR,
//! SP 800-73-4 Part 2 §3.3.2) or imported into it (YubiKey's IMPORT KEY). Each keeps its DER
//! so that the card's state file can carry it across restarts; the DER is zeroised on drop.

use super::privkey::PrivateKey;
use super::{EcCurve, KeyError};
use zeroize::Zeroizing;

/// The kind and size of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA with this modulus size in bits.
    Rsa(usize),
    /// EC on this curve.
    Ec(EcCurve),
}

/// A public key as a card reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// Modulus and exponent, big-endian.
    Rsa {
        /// n
        modulus: Vec<u8>,
        /// e
        exponent: Vec<u8>,
    },
    /// The uncompressed point 04 || X || Y.
    Ec(Vec<u8>),
}

/// A private key held by the card, wiped when dropped (the AWS-LC key and its DER).
#[derive(zeroize::ZeroizeOnDrop)]
pub struct CardKey {
    key: PrivateKey,
    der: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for CardKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CardKey({:?})", self.kind())
    }
}

fn bad(why: impl std::fmt::Display) -> KeyError {
    KeyError::BadInput(why.to_string())
}

impl CardKey {
    /// Parses a PKCS#8, PKCS#1 or SEC 1 DER private key.
    pub fn from_der(der: &[u8]) -> Result<Self, KeyError> {
        let key = PrivateKey::from_der(der).map_err(bad)?;
        Ok(CardKey {
            key,
            der: Zeroizing::new(der.to_vec()),
        })
    }

    /// A fresh key from AWS-LC's generator (FIPS 186-4 key pair generation).
    pub fn generate(kind: KeyKind) -> Result<Self, KeyError> {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::signature as sig;
        let failed = |_| bad("key generation failed");
        let der: Zeroizing<Vec<u8>> = match kind {
            KeyKind::Rsa(2048) => {
                let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                    .map_err(failed)?;
                Zeroizing::new(kp.as_der().map_err(failed)?.as_ref().to_vec())
            }
            KeyKind::Rsa(bits) => return Err(bad(format!("RSA-{bits} is not generated"))),
            KeyKind::Ec(curve) => {
                let alg = match curve {
                    EcCurve::P256 => &sig::ECDSA_P256_SHA256_ASN1_SIGNING,
                    EcCurve::P384 => &sig::ECDSA_P384_SHA384_ASN1_SIGNING,
                };
                let doc =
                    sig::EcdsaKeyPair::generate_pkcs8(alg, &aws_lc_rs::rand::SystemRandom::new())
                        .map_err(failed)?;
                Zeroizing::new(doc.as_ref().to_vec())
            }
        };
        Self::from_der(&der)
    }

    /// An EC key from its private scalar (big-endian); the public point is computed.
    pub fn from_ec_scalar(curve: EcCurve, scalar: &[u8]) -> Result<Self, KeyError> {
        let field = curve.field_len();
        if scalar.is_empty() || scalar.len() > field {
            return Err(bad(format!(
                "a {}-byte private scalar for a {field}-byte curve",
                scalar.len()
            )));
        }
        let mut padded = Zeroizing::new(vec![0u8; field]);
        padded[field - scalar.len()..].copy_from_slice(scalar);
        // PKCS#8 PrivateKeyInfo (RFC 5208 §5) { 0, { id-ecPublicKey, curve }, OCTET STRING
        // ECPrivateKey (SEC 1 §C.4) { 1, privateKey } }: with no public key in it, AWS-LC
        // computes the point while parsing.
        let curve_oid: &[u8] = match curve {
            EcCurve::P256 => &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07],
            EcCurve::P384 => &[0x2B, 0x81, 0x04, 0x00, 0x22],
        };
        let ec_public_key = [0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
        let mut inner = Zeroizing::new(apdu::ber::encode(0x02, &[1]));
        inner.extend(apdu::ber::encode(0x04, &padded));
        let inner = Zeroizing::new(apdu::ber::encode(0x30, &inner));
        let mut alg = apdu::ber::encode(0x06, &ec_public_key);
        alg.extend(apdu::ber::encode(0x06, curve_oid));
        let mut info = Zeroizing::new(apdu::ber::encode(0x02, &[0]));
        info.extend(apdu::ber::encode(0x30, &alg));
        info.extend(apdu::ber::encode(0x04, &inner));
        let der = Zeroizing::new(apdu::ber::encode(0x30, &info));
        let key = Self::from_der(&der)?;
        if key.kind() != KeyKind::Ec(curve) {
            return Err(bad("the scalar does not make a key on that curve"));
        }
        Ok(key)
    }

    /// An RSA key from its CRT components (p, q, d mod p−1, d mod q−1, q⁻¹ mod p) and the
    /// exponent 65537, which is what a YubiKey's IMPORT KEY carries (RFC 8017 §3.2).
    pub fn from_rsa_crt(parts: [&[u8]; 5]) -> Result<Self, KeyError> {
        if parts.iter().any(|p| p.is_empty() || p.len() > 256) {
            return Err(bad("RSA components must be 1 to 256 bytes"));
        }
        // SAFETY: every BIGNUM and the context are allocated here, checked for null, and freed
        // exactly once at the end (BN_free of null is a no-op); RSA_new_private_key copies its
        // arguments; the DER buffer AWS-LC allocates is copied and freed once.
        let der = unsafe {
            use aws_lc_sys as s;
            let bn = |b: &[u8]| s::BN_bin2bn(b.as_ptr(), b.len(), std::ptr::null_mut());
            let (p, q, dp, dq, qinv) = (
                bn(parts[0]),
                bn(parts[1]),
                bn(parts[2]),
                bn(parts[3]),
                bn(parts[4]),
            );
            let (n, e, d, p1, q1, phi) = (
                s::BN_new(),
                s::BN_new(),
                s::BN_new(),
                s::BN_new(),
                s::BN_new(),
                s::BN_new(),
            );
            let ctx = s::BN_CTX_new();
            let all = [p, q, dp, dq, qinv, n, e, d, p1, q1, phi];
            let mut out = None;
            if !ctx.is_null() && all.iter().all(|b| !b.is_null()) {
                let ok = s::BN_mul(n, p, q, ctx) == 1
                    && s::BN_set_word(e, 65537) == 1
                    && !s::BN_copy(p1, p).is_null()
                    && s::BN_sub_word(p1, 1) == 1
                    && !s::BN_copy(q1, q).is_null()
                    && s::BN_sub_word(q1, 1) == 1
                    && s::BN_mul(phi, p1, q1, ctx) == 1
                    && !s::BN_mod_inverse(d, e, phi, ctx).is_null();
                if ok {
                    let rsa = s::RSA_new_private_key(n, e, d, p, q, dp, dq, qinv);
                    if !rsa.is_null() {
                        let mut buf: *mut u8 = std::ptr::null_mut();
                        let mut len = 0usize;
                        if s::RSA_check_key(rsa) == 1
                            && s::RSA_private_key_to_bytes(&mut buf, &mut len, rsa) == 1
                            && !buf.is_null()
                        {
                            out = Some(Zeroizing::new(
                                std::slice::from_raw_parts(buf, len).to_vec(),
                            ));
                            s::OPENSSL_cleanse(buf.cast(), len);
                            s::OPENSSL_free(buf.cast());
                        }
                        s::RSA_free(rsa);
                    }
                }
            }
            for b in all {
                s::BN_clear_free(b);
            }
            s::BN_CTX_free(ctx);
            s::ERR_clear_error();
            out
        };
        let der = der.ok_or_else(|| bad("the RSA components do not make a valid key"))?;
        Self::from_der(&der)
    }

    /// The DER this key was made from (PKCS#8, PKCS#1 or SEC 1), for the state file.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// Kind and size.
    pub fn kind(&self) -> KeyKind {
        match &self.key {
            PrivateKey::Rsa(k) => KeyKind::Rsa(k.modulus_len() * 8),
            PrivateKey::Ec(k) => KeyKind::Ec(k.curve()),
        }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        match &self.key {
            PrivateKey::Rsa(k) => PublicKey::Rsa {
                modulus: k.modulus(),
                exponent: k.exponent(),
            },
            PrivateKey::Ec(k) => PublicKey::Ec(k.public_point()),
        }
    }

    /// `input^d mod n`.
    pub fn rsa_raw(&self, input: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        match &self.key {
            PrivateKey::Rsa(k) => k.private_raw(input),
            PrivateKey::Ec(_) => Err(bad("not an RSA key")),
        }
    }

    /// ECDSA (DER signature) over a digest.
    pub fn ec_sign(&self, digest: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.key {
            PrivateKey::Ec(k) => k.sign_digest(digest),
            PrivateKey::Rsa(_) => Err(bad("not an EC key")),
        }
    }

    /// ECDH with the peer's uncompressed point.
    pub fn ecdh(&self, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        match &self.key {
            PrivateKey::Ec(k) => k.ecdh(peer),
            PrivateKey::Rsa(_) => Err(bad("not an EC key")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_and_round_trip_through_der() {
        for curve in [EcCurve::P256, EcCurve::P384] {
            let k = CardKey::generate(KeyKind::Ec(curve)).unwrap();
            assert_eq!(k.kind(), KeyKind::Ec(curve));
            let again = CardKey::from_der(k.der()).unwrap();
            assert_eq!(again.public(), k.public());
            let PublicKey::Ec(point) = k.public() else {
                panic!("EC key without a point")
            };
            use sha2::Digest;
            let msg = b"signed on the card";
            let (digest, alg) = match curve {
                EcCurve::P256 => (
                    sha2::Sha256::digest(msg).to_vec(),
                    &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
                ),
                EcCurve::P384 => (
                    sha2::Sha384::digest(msg).to_vec(),
                    &aws_lc_rs::signature::ECDSA_P384_SHA384_ASN1,
                ),
            };
            let sig = again.ec_sign(&digest).unwrap();
            aws_lc_rs::signature::UnparsedPublicKey::new(alg, &point)
                .verify(msg, &sig)
                .unwrap();
        }
        let r = CardKey::generate(KeyKind::Rsa(2048)).unwrap();
        assert_eq!(r.kind(), KeyKind::Rsa(2048));
        let PublicKey::Rsa { modulus, exponent } = r.public() else {
            panic!("RSA key without a modulus")
        };
        assert_eq!((modulus.len(), exponent), (256, vec![1, 0, 1]));
    }

    #[test]
    fn imported_ec_scalar_gives_the_same_public_point() {
        let k = CardKey::generate(KeyKind::Ec(EcCurve::P256)).unwrap();
        // The scalar sits in the PKCS#8's inner ECPrivateKey OCTET STRING of 32 bytes.
        let der = k.der();
        let at = der
            .windows(2)
            .position(|w| w == [0x04, 0x20])
            .expect("a 32-byte OCTET STRING");
        let scalar = &der[at + 2..at + 34];
        let again = CardKey::from_ec_scalar(EcCurve::P256, scalar).unwrap();
        assert_eq!(again.public(), k.public());
        assert!(CardKey::from_ec_scalar(EcCurve::P256, &[0u8; 33]).is_err());
        assert!(CardKey::from_ec_scalar(EcCurve::P256, &[0u8; 32]).is_err());
    }

    #[test]
    fn imported_rsa_crt_matches_the_original_key() {
        let k = CardKey::generate(KeyKind::Rsa(2048)).unwrap();
        // PKCS#8 → RSAPrivateKey { 0, n, e, d, p, q, dp, dq, qinv }.
        let (info, _) = apdu::ber::parse_one(k.der()).unwrap();
        let oct = apdu::ber::iter(info.value)
            .filter_map(Result::ok)
            .find(|t| t.tag == 0x04)
            .unwrap();
        let (rsa, _) = apdu::ber::parse_one(oct.value).unwrap();
        let ints: Vec<&[u8]> = apdu::ber::iter(rsa.value)
            .filter_map(Result::ok)
            .map(|t| t.value)
            .collect();
        let again = CardKey::from_rsa_crt([ints[4], ints[5], ints[6], ints[7], ints[8]]).unwrap();
        assert_eq!(again.public(), k.public());
        let input = [0x42u8; 256];
        assert_eq!(*again.rsa_raw(&input).unwrap(), *k.rsa_raw(&input).unwrap());
        assert!(CardKey::from_rsa_crt([&[3], &[5], &[1], &[2], &[2]]).is_err());
    }
}
