//! A private key file's DER (PKCS#8, PKCS#1 or SEC 1), parsed once by AWS-LC and held as the
//! RSA or EC key it is.

use super::rawec::RawEc;
use super::rawrsa::RawRsa;
use std::ptr::NonNull;

use super::key_error::PrivateKeyError;

/// An RSA or EC private key in AWS-LC.
pub(crate) enum PrivateKey {
    /// RSA, for the raw operation.
    Rsa(RawRsa),
    /// EC on P-256 or P-384, for ECDSA and ECDH.
    Ec(RawEc),
}

// Either variant wipes itself when dropped (see RawRsa's and RawEc's).
impl zeroize::ZeroizeOnDrop for PrivateKey {}

impl PrivateKey {
    /// Parses a PKCS#8 PrivateKeyInfo, a PKCS#1 RSAPrivateKey or a SEC 1 ECPrivateKey (DER).
    pub(crate) fn from_der(der: &[u8]) -> Result<Self, PrivateKeyError> {
        let len = i64::try_from(der.len()).map_err(|_| PrivateKeyError::TooLarge)?;
        let mut p = der.as_ptr();
        // SAFETY: `p` points to `len` readable bytes; d2i advances a copy of it; every object
        // obtained is checked for null, and each reference is either handed to a RawRsa /
        // RawEc (which free it on drop) or freed here, exactly once.
        unsafe {
            let pkey = aws_lc_sys::d2i_AutoPrivateKey(std::ptr::null_mut(), &mut p, len as _);
            if pkey.is_null() {
                aws_lc_sys::ERR_clear_error();
                return Err(PrivateKeyError::NotDer);
            }
            let key = match aws_lc_sys::EVP_PKEY_id(pkey) {
                aws_lc_sys::EVP_PKEY_RSA => NonNull::new(aws_lc_sys::EVP_PKEY_get1_RSA(pkey))
                    .map(|rsa| PrivateKey::Rsa(RawRsa::from_owned(rsa)))
                    .ok_or(PrivateKeyError::UnreadableRsa),
                aws_lc_sys::EVP_PKEY_EC => NonNull::new(aws_lc_sys::EVP_PKEY_get1_EC_KEY(pkey))
                    .ok_or(PrivateKeyError::UnreadableEc)
                    .and_then(|ec| RawEc::from_owned(ec).map(PrivateKey::Ec)),
                _ => Err(PrivateKeyError::NeitherRsaNorEc),
            };
            aws_lc_sys::EVP_PKEY_free(pkey);
            if key.is_err() {
                aws_lc_sys::ERR_clear_error();
            }
            key
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{PrivateKey, PrivateKeyError};
    use crate::keystore::rawrsa::RawRsa;

    #[test]
    fn private_key_errors_say_what_is_wrong() {
        use aws_lc_rs::signature as sig;
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let e = PrivateKey::from_der(b"junk").err();
        assert_eq!(e, Some(PrivateKeyError::NotDer));
        assert_eq!(
            PrivateKeyError::NotDer.to_string(),
            "not a DER PKCS#8, PKCS#1 or SEC 1 private key"
        );
        let p521 =
            sig::EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P521_SHA512_ASN1_SIGNING, &rng).unwrap();
        let e = PrivateKey::from_der(p521.as_ref()).err();
        assert_eq!(e, Some(PrivateKeyError::Curve));
        assert_eq!(
            PrivateKeyError::Curve.to_string(),
            "the EC key is on neither P-256 nor P-384"
        );
        let ed25519 = sig::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let e = PrivateKey::from_der(ed25519.as_ref()).err();
        assert_eq!(e, Some(PrivateKeyError::NeitherRsaNorEc));
        // AWS-LC's d2i_PKCS12 keeps the bytes and PKCS12_parse finds them wrong.
        assert!(matches!(
            RawRsa::from_pkcs12(b"junk", "").err(),
            Some(PrivateKeyError::NotPkcs12 | PrivateKeyError::Pkcs12Unreadable)
        ));
        assert_eq!(
            PrivateKeyError::Pkcs12Unreadable.to_string(),
            "wrong password, or an encoding AWS-LC cannot read (NSS pk12util writes \
             indefinite-length BER: re-export with `openssl pkcs12`, or use the NSS database \
             itself with backend=certificates)"
        );
        assert_eq!(
            RawRsa::from_pkcs12(b"junk", "a\0b").err(),
            Some(PrivateKeyError::PasswordNul)
        );
        assert_eq!(
            PrivateKeyError::PasswordNul.to_string(),
            "password contains a NUL byte"
        );
    }
}
