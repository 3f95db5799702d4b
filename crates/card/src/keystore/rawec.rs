//! ECDSA over a digest the card receives, and ECDH, by AWS-LC (constant-time P-256/P-384).
//! A PIV card signs the hash the host computed (SP 800-73-4 Part 2 §3.2.4), which `aws-lc-rs`
//! cannot do (its ECDSA hashes the message itself), so, as for raw RSA in `rawrsa.rs`, this
//! module calls `aws-lc-sys` in the few lines below.

use super::key_error::PrivateKeyError;
use super::{EcCurve, KeyError};
use std::ptr::NonNull;
use zeroize::Zeroizing;

/// An EC private key held by AWS-LC.
pub(crate) struct RawEc {
    key: NonNull<aws_lc_sys::EC_KEY>,
    curve: EcCurve,
}

// SAFETY: AWS-LC EC_KEY objects are safe to use from several threads for signing and ECDH
// (no mutable state is touched); we never hand out the pointer.
unsafe impl Send for RawEc {}
unsafe impl Sync for RawEc {}

impl RawEc {
    /// Takes ownership of one reference to an AWS-LC EC key (from `EVP_PKEY_get1_EC_KEY`);
    /// keys on curves other than P-256 and P-384 are refused (and freed).
    ///
    /// # Safety
    /// `key` is a valid EC_KEY whose reference the caller gives up.
    pub(crate) unsafe fn from_owned(
        key: NonNull<aws_lc_sys::EC_KEY>,
    ) -> Result<Self, PrivateKeyError> {
        // SAFETY: the group is borrowed from the valid key the caller handed over.
        let nid = unsafe {
            aws_lc_sys::EC_GROUP_get_curve_name(aws_lc_sys::EC_KEY_get0_group(key.as_ptr()))
        };
        let curve = match nid {
            aws_lc_sys::NID_X9_62_prime256v1 => EcCurve::P256,
            aws_lc_sys::NID_secp384r1 => EcCurve::P384,
            _ => {
                // SAFETY: we own this reference and drop it exactly once.
                unsafe { aws_lc_sys::EC_KEY_free(key.as_ptr()) };
                return Err(PrivateKeyError::Curve);
            }
        };
        Ok(RawEc { key, curve })
    }

    /// The curve.
    pub(crate) fn curve(&self) -> EcCurve {
        self.curve
    }

    /// The public point, uncompressed (04 || X || Y), to match the key to its certificate.
    pub(crate) fn public_point(&self) -> Vec<u8> {
        let mut out = vec![0u8; 1 + 2 * self.curve.field_len()];
        // SAFETY: the group and point are borrowed from our key; point2oct writes at most
        // out.len() bytes and returns how many.
        let n = unsafe {
            let k = self.key.as_ptr();
            aws_lc_sys::EC_POINT_point2oct(
                aws_lc_sys::EC_KEY_get0_group(k),
                aws_lc_sys::EC_KEY_get0_public_key(k),
                aws_lc_sys::point_conversion_form_t::POINT_CONVERSION_UNCOMPRESSED,
                out.as_mut_ptr(),
                out.len(),
                std::ptr::null_mut(),
            )
        };
        out.truncate(n);
        out
    }

    /// An ECDSA signature (DER `ECDSA-Sig-Value`) of a digest the caller computed.
    pub(crate) fn sign_digest(&self, digest: &[u8]) -> Result<Vec<u8>, KeyError> {
        if digest.is_empty() || digest.len() > 64 {
            return Err(KeyError::BadInput(format!(
                "a {}-byte digest",
                digest.len()
            )));
        }
        // SAFETY: digest is readable for its length; the signature object and the buffer
        // AWS-LC allocates are freed exactly once, after their bytes are copied.
        unsafe {
            let sig = aws_lc_sys::ECDSA_do_sign(digest.as_ptr(), digest.len(), self.key.as_ptr());
            if sig.is_null() {
                aws_lc_sys::ERR_clear_error();
                return Err(KeyError::BadInput("ECDSA signing failed".into()));
            }
            let mut buf: *mut u8 = std::ptr::null_mut();
            let mut len = 0usize;
            let ok = aws_lc_sys::ECDSA_SIG_to_bytes(&mut buf, &mut len, sig);
            aws_lc_sys::ECDSA_SIG_free(sig);
            if ok != 1 || buf.is_null() {
                aws_lc_sys::ERR_clear_error();
                return Err(KeyError::BadInput("ECDSA signature encoding failed".into()));
            }
            let out = std::slice::from_raw_parts(buf, len).to_vec();
            aws_lc_sys::OPENSSL_free(buf.cast());
            Ok(out)
        }
    }

    /// ECDH (SP 800-56A, cofactor 1): the X coordinate of d·Q for the peer's uncompressed
    /// point Q.
    pub(crate) fn ecdh(&self, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let field = self.curve.field_len();
        if peer.len() != 1 + 2 * field || peer[0] != 0x04 {
            return Err(KeyError::BadInput(format!(
                "a {}-byte peer point; expected an uncompressed {}-byte one",
                peer.len(),
                1 + 2 * field
            )));
        }
        let mut out = Zeroizing::new(vec![0u8; field]);
        // SAFETY: the point is created on our key's group, filled from `peer` (length checked
        // above, validated by oct2point, which rejects points off the curve), and freed once;
        // `out` has room for `field` bytes.
        unsafe {
            let group = aws_lc_sys::EC_KEY_get0_group(self.key.as_ptr());
            let point = aws_lc_sys::EC_POINT_new(group);
            if point.is_null() {
                return Err(KeyError::BadInput("out of memory".into()));
            }
            let ok = aws_lc_sys::EC_POINT_oct2point(
                group,
                point,
                peer.as_ptr(),
                peer.len(),
                std::ptr::null_mut(),
            ) == 1
                && aws_lc_sys::ECDH_compute_key(
                    out.as_mut_ptr().cast(),
                    field,
                    point,
                    self.key.as_ptr(),
                    None,
                ) == field as i32;
            aws_lc_sys::EC_POINT_free(point);
            if !ok {
                aws_lc_sys::ERR_clear_error();
                return Err(KeyError::BadInput(
                    "the peer point is not on the curve".into(),
                ));
            }
        }
        Ok(out)
    }
}

impl Drop for RawEc {
    fn drop(&mut self) {
        // SAFETY: we own one reference, from EVP_PKEY_get1_EC_KEY; EC_KEY_free scrubs it.
        unsafe { aws_lc_sys::EC_KEY_free(self.key.as_ptr()) }
    }
}

// The drop above is the wipe: AWS-LC's OPENSSL_free (crypto/mem.c) cleanses every allocation
// it frees, the private scalar's included, before handing it back.
impl zeroize::ZeroizeOnDrop for RawEc {}
