//! Where the card's keys live. Applets reach keys only through [`KeyStore`] (DESIGN.md), and a
//! private key never leaves its store: the store performs the raw RSA operation, ECDSA over a
//! digest and ECDH itself.

mod atomic;
mod carddir;
mod cardkey;
mod default;
mod files;
mod generated;
mod generated_enroll;
mod key_error;
mod pkcs11;
mod privkey;
mod rawec;
mod rawrsa;
mod shared;

pub use atomic::{remove_stale_tmp, sync_dir, write_atomic};
pub use cardkey::{CardKey, KeyKind, PublicKey};
pub use default::{certificate_subject, default_data_dir, DefaultIdentities};
pub(crate) use files::pem_blocks;
pub use files::{exposed, read_private};
pub use files::{FileIdentity, FileStore};
pub use generated::{
    CardName, CardNameError, GeneratedIdentities, SubjectError, SubjectTemplate, MAX_NAME,
};
pub use generated_enroll::CAC_IDENTITIES;
pub use pkcs11::{redact_pin_value, Pkcs11Config, Pkcs11Store, TokenSelector};
pub use shared::SharedStore;

use thiserror::Error;
use zeroize::Zeroizing;

/// One certificate and the private key that belongs to it.
#[derive(Debug, Clone)]
pub struct Identity {
    /// A name for logs and errors (nickname, file name, PKCS#11 label).
    pub label: String,
    /// The X.509 certificate, DER.
    pub cert_der: Vec<u8>,
    /// Modulus size of the RSA key, in bits (0 for an EC key).
    pub modulus_bits: usize,
    /// The curve of an EC key; `None` for RSA.
    pub ec_curve: Option<EcCurve>,
}

/// The elliptic curves a key may be on (SP 800-78-4 Table 3-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EcCurve {
    /// NIST P-256 (prime256v1).
    P256,
    /// NIST P-384 (secp384r1).
    P384,
}

impl EcCurve {
    /// Bytes of a field element (and of an ECDH shared secret).
    pub fn field_len(self) -> usize {
        match self {
            EcCurve::P256 => 32,
            EcCurve::P384 => 48,
        }
    }
}

/// The curve and the uncompressed public point of a DER certificate's EC key (RFC 5480).
pub fn ec_public_key(cert_der: &[u8]) -> Result<(EcCurve, Vec<u8>), CertError> {
    ec_key_of(&cert_spki(cert_der)?)
}

/// The subject public key of a DER certificate (RFC 5280 §4.1).
fn cert_spki(cert_der: &[u8]) -> Result<x509_cert::spki::SubjectPublicKeyInfoOwned, CertError> {
    use der::Decode;
    let cert = x509_cert::Certificate::from_der(cert_der).map_err(CertError::NotDer)?;
    Ok(cert.tbs_certificate().subject_public_key_info().clone())
}

fn ec_key_of(
    spki: &x509_cert::spki::SubjectPublicKeyInfoOwned,
) -> Result<(EcCurve, Vec<u8>), CertError> {
    const EC_PUBLIC_KEY: der::asn1::ObjectIdentifier =
        der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
    const P256: der::asn1::ObjectIdentifier =
        der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
    const P384: der::asn1::ObjectIdentifier =
        der::asn1::ObjectIdentifier::new_unwrap("1.3.132.0.34");
    if spki.algorithm.oid != EC_PUBLIC_KEY {
        return Err(CertError::NeitherRsaNorEc(spki.algorithm.oid));
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<der::asn1::ObjectIdentifier>().ok());
    let curve = match curve {
        Some(c) if c == P256 => EcCurve::P256,
        Some(c) if c == P384 => EcCurve::P384,
        other => return Err(CertError::Curve(other)),
    };
    let point = spki
        .subject_public_key
        .as_bytes()
        .ok_or(CertError::UnusedBits)?;
    Ok((curve, point.to_vec()))
}

impl Identity {
    /// Builds an identity from a DER certificate, reading the RSA modulus size from it.
    pub fn from_cert(label: impl Into<String>, cert_der: Vec<u8>) -> Result<Self, KeyError> {
        let label = label.into();
        let modulus_bits = rsa_modulus_bits(&cert_der).map_err(|why| KeyError::Certificate {
            label: label.clone(),
            why: why.to_string(),
        })?;
        Ok(Identity {
            label,
            cert_der,
            modulus_bits,
            ec_curve: None,
        })
    }
    /// Builds an identity from a DER certificate with an RSA or an EC (P-256, P-384) key.
    pub fn from_cert_rsa_or_ec(
        label: impl Into<String>,
        cert_der: Vec<u8>,
    ) -> Result<Self, KeyError> {
        let label = label.into();
        let err = |why: CertError| KeyError::Certificate {
            label: label.clone(),
            why: why.to_string(),
        };
        let spki = cert_spki(&cert_der).map_err(err)?;
        if let Ok(modulus_bits) = rsa_bits_of(&spki) {
            return Ok(Identity {
                label,
                cert_der,
                modulus_bits,
                ec_curve: None,
            });
        }
        let (curve, _) = ec_key_of(&spki).map_err(err)?;
        Ok(Identity {
            label,
            cert_der,
            modulus_bits: 0,
            ec_curve: Some(curve),
        })
    }
    /// Modulus size in bytes: the exact input and output length of the raw operation.
    pub fn modulus_len(&self) -> usize {
        self.modulus_bits.div_ceil(8)
    }
}

/// Errors of key stores. The card maps each to a status word; the program prints them.
#[derive(Debug, Error)]
pub enum KeyError {
    /// The store needs a login that has not happened.
    #[error("the key store is not logged in")]
    NotLoggedIn,
    /// The input is not something the key can process (length, value ≥ modulus).
    #[error("invalid input for the private-key operation: {0}")]
    BadInput(String),
    /// The certificate could not be used.
    #[error("certificate {label:?}: {why}")]
    Certificate {
        /// which certificate
        label: String,
        /// what is wrong with it
        why: String,
    },
    /// A file could not be read or parsed.
    #[error("{path}: {why}")]
    File {
        /// the file
        path: String,
        /// what is wrong
        why: String,
    },
    /// The PKCS#11 module or token failed or refused.
    #[error("PKCS#11: {0}")]
    Pkcs11(String),
    /// A configured name (nickname, label, id) matched nothing.
    #[error("{0}")]
    NotFound(String),
    /// This store has no such operation.
    #[error("this key store does not do {0}")]
    Unsupported(&'static str),
}

/// Why a certificate's public key is not one the cards take (RFC 5280 §4.1, RFC 8017 A.1.1,
/// RFC 5480). Each message names the part that is wrong, as a user sees it after the file name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CertError {
    /// The bytes do not decode as a certificate.
    #[error("not a DER X.509 certificate: {0}")]
    NotDer(der::Error),
    /// An RSA or EC key was expected, and the key is neither.
    #[error("key algorithm {0} is neither RSA nor EC")]
    NeitherRsaNorEc(der::asn1::ObjectIdentifier),
    /// An RSA key was expected.
    #[error("key algorithm {0} is not RSA (the CAC card is RSA-only)")]
    NotRsa(der::asn1::ObjectIdentifier),
    /// An EC key on another curve than P-256 and P-384 (or with no named curve).
    #[error("EC curve {0:?} is neither P-256 nor P-384")]
    Curve(Option<der::asn1::ObjectIdentifier>),
    /// The subjectPublicKey BIT STRING does not hold whole bytes.
    #[error("public key bit string has unused bits")]
    UnusedBits,
    /// The RSAPublicKey does not decode as BER-TLV.
    #[error("RSAPublicKey: {0}")]
    RsaPublicKey(apdu::ber::TlvError),
    /// The modulus inside the RSAPublicKey does not decode as BER-TLV.
    #[error("RSA modulus: {0}")]
    RsaModulus(apdu::ber::TlvError),
    /// The RSAPublicKey does not start with SEQUENCE { INTEGER.
    #[error("RSAPublicKey is not SEQUENCE {{ INTEGER, ... }}")]
    NotSequence,
    /// The RSAPublicKey lacks the modulus or the exponent.
    #[error("RSAPublicKey is not SEQUENCE {{ n, e }}")]
    NotModulusAndExponent,
    /// A zero modulus.
    #[error("RSA modulus is zero")]
    ZeroModulus,
    /// A modulus size the cards do not take.
    #[error("RSA modulus of {0} bits (the card takes 1024..4096)")]
    ModulusSize(usize),
}

/// Certificates and the raw RSA private-key operation on their keys.
pub trait KeyStore: Send {
    /// The identities, in card order (PKI applet 0, 1, ...).
    fn identities(&self) -> &[Identity];
    /// `input^d mod n` with the key of identity `index`; `input` is exactly the modulus length.
    /// Implementations are constant-time (AWS-LC, or the token).
    fn rsa_raw(&mut self, index: usize, input: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError>;
    /// An ECDSA signature (DER) of `digest` with the EC key of identity `index`.
    fn ec_sign(&mut self, index: usize, digest: &[u8]) -> Result<Vec<u8>, KeyError> {
        let _ = (index, digest);
        Err(KeyError::Unsupported("ECDSA"))
    }
    /// ECDH with the EC key of identity `index` and the peer's uncompressed point: the shared
    /// X coordinate.
    fn ecdh(&mut self, index: usize, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let _ = (index, peer);
        Err(KeyError::Unsupported("ECDH"))
    }
}

/// The RSA modulus size in bits of a DER certificate's subject public key (RFC 5280 §4.1,
/// RFC 8017 A.1.1). Errors for anything but an RSA key.
pub fn rsa_modulus_bits(cert_der: &[u8]) -> Result<usize, CertError> {
    rsa_bits_of(&cert_spki(cert_der)?)
}

/// An ECDSA signature r || s (two equal halves, as PKCS#11 tokens give it) as the DER
/// `ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` (RFC 5480 §2.2 / X9.62).
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Result<Vec<u8>, KeyError> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) || raw.len() > 2 * 66 {
        return Err(KeyError::Pkcs11(format!(
            "a {}-byte ECDSA signature is not r || s",
            raw.len()
        )));
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let mut body = crate::enroll::der_uint(r);
    body.extend(crate::enroll::der_uint(s));
    Ok(apdu::ber::encode(0x30, &body))
}

/// The RSA public key (modulus, exponent) of a DER certificate.
pub fn rsa_public_key(cert_der: &[u8]) -> Result<PublicKey, CertError> {
    let spki = cert_spki(cert_der)?;
    rsa_bits_of(&spki)?;
    let key = spki
        .subject_public_key
        .as_bytes()
        .ok_or(CertError::UnusedBits)?;
    let (seq, _) = apdu::ber::parse_one(key).map_err(CertError::RsaPublicKey)?;
    let mut ints = apdu::ber::iter(seq.value).filter_map(Result::ok);
    let (Some(n), Some(e)) = (ints.next(), ints.next()) else {
        return Err(CertError::NotModulusAndExponent);
    };
    let strip = |v: &[u8]| v[v.iter().take_while(|b| **b == 0).count()..].to_vec();
    Ok(PublicKey::Rsa {
        modulus: strip(n.value),
        exponent: strip(e.value),
    })
}

fn rsa_bits_of(spki: &x509_cert::spki::SubjectPublicKeyInfoOwned) -> Result<usize, CertError> {
    const RSA_ENCRYPTION: der::asn1::ObjectIdentifier =
        der::asn1::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
    if spki.algorithm.oid != RSA_ENCRYPTION {
        return Err(CertError::NotRsa(spki.algorithm.oid));
    }
    let key = spki
        .subject_public_key
        .as_bytes()
        .ok_or(CertError::UnusedBits)?;
    let (seq, _) = apdu::ber::parse_one(key).map_err(CertError::RsaPublicKey)?;
    let (n, _) = apdu::ber::parse_one(seq.value).map_err(CertError::RsaModulus)?;
    if seq.tag != 0x30 || n.tag != 0x02 {
        return Err(CertError::NotSequence);
    }
    let n = n.value;
    let skip = n.iter().take_while(|b| **b == 0).count();
    let n = &n[skip..];
    let bits = match n.first() {
        Some(b) => n.len() * 8 - b.leading_zeros() as usize,
        None => return Err(CertError::ZeroModulus),
    };
    if !(1024..=4096).contains(&bits) {
        return Err(CertError::ModulusSize(bits));
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ecdsa_raw_signatures_become_der() {
        use apdu::hex::{h, spaced};
        let mut raw = vec![0u8; 64];
        raw[31] = 0x01;
        raw[32] = 0x80;
        assert_eq!(
            spaced(&super::ecdsa_raw_to_der(&raw).unwrap()),
            spaced(&[h("30 26 02 01 01 02 21 00 80"), vec![0; 31]].concat())
        );
        assert!(super::ecdsa_raw_to_der(&[0; 63]).is_err());
        assert!(super::ecdsa_raw_to_der(&[]).is_err());
    }

    #[test]
    fn certificate_errors_say_what_is_wrong() {
        use super::{ec_public_key, rsa_modulus_bits, rsa_public_key, CertError};
        let cert = |alg: &'static rcgen::SignatureAlgorithm| {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let params = rcgen::CertificateParams::new(vec!["k".to_string()]).unwrap();
            params.self_signed(&key).unwrap().der().to_vec()
        };
        let e = rsa_modulus_bits(b"junk").unwrap_err();
        assert!(matches!(e, CertError::NotDer(_)), "{e:?}");
        assert!(
            e.to_string().starts_with("not a DER X.509 certificate: "),
            "{e}"
        );
        let p256 = cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            rsa_public_key(&p256).unwrap_err().to_string(),
            "key algorithm 1.2.840.10045.2.1 is not RSA (the CAC card is RSA-only)"
        );
        assert!(ec_public_key(&p256).is_ok());
        let e = ec_public_key(&cert(&rcgen::PKCS_ECDSA_P521_SHA512)).unwrap_err();
        assert!(matches!(e, CertError::Curve(Some(_))), "{e:?}");
        assert!(e.to_string().ends_with("is neither P-256 nor P-384"), "{e}");
        let ed25519 = cert(&rcgen::PKCS_ED25519);
        assert_eq!(
            ec_public_key(&ed25519).unwrap_err().to_string(),
            "key algorithm 1.3.101.112 is neither RSA nor EC"
        );
        assert_eq!(
            CertError::ModulusSize(512).to_string(),
            "RSA modulus of 512 bits (the card takes 1024..4096)"
        );
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use sha2::Digest;

    /// EMSA-PKCS1-v1_5 encoding of SHA-256(msg) for a `k`-byte modulus (RFC 8017 §9.2).
    pub(crate) fn pkcs1_sha256_block(msg: &[u8], k: usize) -> Vec<u8> {
        let mut t = apdu::hex::h("30 31 30 0D 06 09 60 86 48 01 65 03 04 02 01 05 00 04 20");
        t.extend_from_slice(&sha2::Sha256::digest(msg));
        let mut block = vec![0xFF; k];
        block[0] = 0;
        block[1] = 1;
        block[k - t.len() - 1] = 0;
        block[k - t.len()..].copy_from_slice(&t);
        block
    }
}
