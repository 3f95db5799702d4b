//! A private key file's DER (PKCS#8, PKCS#1 or SEC 1), parsed once by AWS-LC and held as the
//! RSA or EC key it is.

use super::rawec::RawEc;
use super::rawrsa::RawRsa;
use std::ptr::NonNull;

/// An RSA or EC private key in AWS-LC.
pub(crate) enum PrivateKey {
    /// RSA, for the raw operation.
    Rsa(RawRsa),
    /// EC on P-256 or P-384, for ECDSA and ECDH.
    Ec(RawEc),
}

impl PrivateKey {
    /// Parses a PKCS#8 PrivateKeyInfo, a PKCS#1 RSAPrivateKey or a SEC 1 ECPrivateKey (DER).
    pub(crate) fn from_der(der: &[u8]) -> Result<Self, String> {
        let len = i64::try_from(der.len()).map_err(|_| "key too large")?;
        let mut p = der.as_ptr();
        // SAFETY: `p` points to `len` readable bytes; d2i advances a copy of it; every object
        // obtained is checked for null, and each reference is either handed to a RawRsa /
        // RawEc (which free it on drop) or freed here, exactly once.
        unsafe {
            let pkey = aws_lc_sys::d2i_AutoPrivateKey(std::ptr::null_mut(), &mut p, len as _);
            if pkey.is_null() {
                aws_lc_sys::ERR_clear_error();
                return Err("not a DER PKCS#8, PKCS#1 or SEC 1 private key".into());
            }
            let key = match aws_lc_sys::EVP_PKEY_id(pkey) {
                aws_lc_sys::EVP_PKEY_RSA => NonNull::new(aws_lc_sys::EVP_PKEY_get1_RSA(pkey))
                    .map(|rsa| PrivateKey::Rsa(RawRsa::from_owned(rsa)))
                    .ok_or_else(|| "unreadable RSA key".to_string()),
                aws_lc_sys::EVP_PKEY_EC => NonNull::new(aws_lc_sys::EVP_PKEY_get1_EC_KEY(pkey))
                    .ok_or_else(|| "unreadable EC key".to_string())
                    .and_then(|ec| RawEc::from_owned(ec).map(PrivateKey::Ec)),
                _ => Err("the private key is neither RSA nor EC".into()),
            };
            aws_lc_sys::EVP_PKEY_free(pkey);
            if key.is_err() {
                aws_lc_sys::ERR_clear_error();
            }
            key
        }
    }
}
