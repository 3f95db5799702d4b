//! Enrollment by the service itself (issue #15): the pieces the PIV card (`piv::enroll`) and
//! the generated CAC card's files (`keystore::generated_enroll`) share. These are the
//! service's own administrative calls on a card object, not APDUs from a host: a key pair is
//! made where the card keeps its keys, a PKCS#10 request (RFC 2986) is signed with it there
//! (the private key never leaves the card's key store), and the certificate a CA signs comes
//! back as PEM and is checked against the key before the card takes it.

use crate::keystore::{
    ec_public_key, rsa_public_key, CardKey, EcCurve, KeyError, KeyKind, PublicKey,
};
use der::asn1::{Any, BitString, ObjectIdentifier as Oid};
use der::{Decode, Encode, EncodePem};
use std::str::FromStr;
use x509_cert::name::Name;
use x509_cert::request::{CertReq, CertReqInfo, Version};
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use zeroize::Zeroizing;

/// id-ecPublicKey (RFC 5480 §2.1.1).
const EC_PUBLIC_KEY: Oid = Oid::new_unwrap("1.2.840.10045.2.1");
/// secp256r1 and secp384r1 (RFC 5480 §2.1.1.1).
const P256: Oid = Oid::new_unwrap("1.2.840.10045.3.1.7");
const P384: Oid = Oid::new_unwrap("1.3.132.0.34");
/// ecdsa-with-SHA256 and ecdsa-with-SHA384 (RFC 5758 §3.2: no parameters).
const ECDSA_SHA256: Oid = Oid::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_SHA384: Oid = Oid::new_unwrap("1.2.840.10045.4.3.3");
/// rsaEncryption and sha256WithRSAEncryption (RFC 8017 Appendix A.1 and A.2.4: NULL
/// parameters).
const RSA_ENCRYPTION: Oid = Oid::new_unwrap("1.2.840.113549.1.1.1");
const SHA256_WITH_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.11");

/// The key pairs enrollment generates (SP 800-78-4 Table 3-1: the PIV card's RSA-2048, P-256
/// and P-384; the CAC card takes RSA-2048).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// ECC on P-256.
    P256,
    /// ECC on P-384.
    P384,
    /// RSA with a 2048-bit modulus.
    Rsa2048,
}

impl Algorithm {
    /// `p256`, `p384` or `rsa2048` (case and `-` ignored: `P-256`, `RSA-2048`).
    pub fn parse(text: &str) -> Result<Self, EnrollError> {
        let t: String = text
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .collect::<String>()
            .to_ascii_lowercase();
        match t.as_str() {
            "p256" | "eccp256" => Ok(Algorithm::P256),
            "p384" | "eccp384" => Ok(Algorithm::P384),
            "rsa2048" => Ok(Algorithm::Rsa2048),
            _ => Err(EnrollError::Algorithm(text.to_string())),
        }
    }

    /// The kind of key it makes.
    pub fn kind(self) -> KeyKind {
        match self {
            Algorithm::P256 => KeyKind::Ec(EcCurve::P256),
            Algorithm::P384 => KeyKind::Ec(EcCurve::P384),
            Algorithm::Rsa2048 => KeyKind::Rsa(2048),
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Algorithm::P256 => "p256",
            Algorithm::P384 => "p384",
            Algorithm::Rsa2048 => "rsa2048",
        })
    }
}

/// Why an enrollment or PIN operation is refused. Nothing on the card changed, unless the
/// variant says otherwise. No message carries a PIN, a PUK or key material.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// An algorithm name that is none of p256, p384, rsa2048.
    #[error("unknown algorithm {0:?}; expected p256, p384 or rsa2048")]
    Algorithm(String),
    /// An algorithm this slot does not take.
    #[error("{slot} takes {takes}, not {alg}")]
    AlgorithmNotHere {
        /// The slot.
        slot: String,
        /// What it takes.
        takes: &'static str,
        /// What was asked for.
        alg: Algorithm,
    },
    /// A slot name that names no slot this card has.
    #[error("no slot {slot:?} on this card; its slots are {slots}")]
    Slot {
        /// The name given.
        slot: String,
        /// The names it takes.
        slots: &'static str,
    },
    /// The slot holds no key to certify.
    #[error("slot {0} holds no key; generate or import one first")]
    NoKey(String),
    /// The slot holds no certificate (to delete, or to take a subject from).
    #[error("slot {0} holds no certificate")]
    NoCertificate(String),
    /// Neither a subject given nor a certificate in the slot to take it from.
    #[error("slot {0} holds no certificate to take the subject from; give a subject (CN=...)")]
    NoSubject(String),
    /// A subject that is not an RFC 4514 string, or names nothing.
    #[error("subject {text:?} is not an RFC 4514 name (e.g. CN=alice,O=Example): {why}")]
    Subject {
        /// The text given.
        text: String,
        /// Why.
        why: String,
    },
    /// No parsable certificate in the PEM text.
    #[error("not a PEM X.509 certificate: {0}")]
    Certificate(String),
    /// No usable private key in the PEM text.
    #[error("not a PEM private key: {0}")]
    PrivateKey(String),
    /// A key of a kind the slot does not take.
    #[error("{slot} takes {takes}; the key is {kind:?}")]
    KeyKind {
        /// The slot.
        slot: String,
        /// What it takes.
        takes: &'static str,
        /// What the key is.
        kind: KeyKind,
    },
    /// The certificate's public key is not the slot's (or the new) key.
    #[error("the certificate's public key is not the key of {0}")]
    Mismatch(String),
    /// The certificate's subject is not the one the card's `subject=` template fixes.
    #[error(
        "the card's subject= template fixes the subject of {slot} as {want:?}; the certificate \
         names {have:?}"
    )]
    FixedSubject {
        /// The slot.
        slot: String,
        /// The template's subject.
        want: String,
        /// The certificate's.
        have: String,
    },
    /// The key store or key generation failed.
    #[error("{0}")]
    Key(#[from] KeyError),
    /// The request could not be encoded.
    #[error("encoding the request: {0}")]
    Encoding(der::Error),
    /// A file could not be written; the card is as it was (the file may be the old or the new
    /// one: each write is atomic).
    #[error("writing {path}: {error}")]
    Save {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// A PIN or PUK of the wrong form.
    #[error("{0}")]
    PinFormat(&'static str),
    /// The PUK given is wrong; its counter went down (and was saved).
    #[error("wrong PUK; {0} tries left")]
    WrongPuk(u8),
    /// The PUK is blocked: only an administrative reset (no PUK) unblocks the PIN now.
    #[error("the PUK is blocked; unblock without a PUK (an administrative reset)")]
    PukBlocked,
    /// The card has no such operation.
    #[error("{0}")]
    Unsupported(&'static str),
}

/// A subject from an RFC 4514 string (`CN=alice,O=Example`).
pub fn subject(text: &str) -> Result<Name, EnrollError> {
    let err = |why: String| EnrollError::Subject {
        text: text.to_string(),
        why,
    };
    let name = Name::from_str(text).map_err(|e| err(e.to_string()))?;
    if name.iter_rdn().next().is_none() {
        return Err(err("no attribute".into()));
    }
    Ok(name)
}

/// The subject of a DER certificate.
pub fn subject_of(cert_der: &[u8]) -> Option<Name> {
    x509_cert::Certificate::from_der(cert_der)
        .ok()
        .map(|c| c.tbs_certificate().subject().clone())
}

/// The SubjectPublicKeyInfo of a public key (RFC 5280 §4.1.2.7; RFC 5480 for EC, RFC 8017
/// Appendix A.1.1 for RSA).
fn spki(key: &PublicKey, kind: KeyKind) -> Result<SubjectPublicKeyInfoOwned, EnrollError> {
    let enc = EnrollError::Encoding;
    let (algorithm, bits) = match (key, kind) {
        (PublicKey::Ec(point), KeyKind::Ec(curve)) => {
            let oid = match curve {
                EcCurve::P256 => P256,
                EcCurve::P384 => P384,
            };
            (
                AlgorithmIdentifierOwned {
                    oid: EC_PUBLIC_KEY,
                    parameters: Some(Any::encode_from(&oid).map_err(enc)?),
                },
                point.clone(),
            )
        }
        (PublicKey::Rsa { modulus, exponent }, KeyKind::Rsa(_)) => {
            let mut body = der_uint(modulus);
            body.extend(der_uint(exponent));
            (
                AlgorithmIdentifierOwned {
                    oid: RSA_ENCRYPTION,
                    parameters: Some(Any::null()),
                },
                apdu::ber::encode(0x30, &body),
            )
        }
        _ => {
            return Err(EnrollError::Key(KeyError::BadInput(
                "the public key is not of the key's kind".into(),
            )))
        }
    };
    Ok(SubjectPublicKeyInfoOwned {
        algorithm,
        subject_public_key: BitString::from_bytes(&bits).map_err(enc)?,
    })
}

/// A positive DER INTEGER of a big-endian magnitude (X.690 §8.3: a leading zero when the top
/// bit is set); also the r and s of the ECDSA signatures the key stores re-encode.
pub(crate) fn der_uint(v: &[u8]) -> Vec<u8> {
    let v = &v[v.iter().take_while(|b| **b == 0).count()..];
    let mut out = Vec::with_capacity(v.len() + 1);
    if v.first().is_none_or(|b| b & 0x80 != 0) {
        out.push(0);
    }
    out.extend_from_slice(v);
    apdu::ber::encode(0x02, &out)
}

/// EMSA-PKCS1-v1_5 encoding of SHA-256(msg) for a `k`-byte modulus (RFC 8017 §9.2).
fn pkcs1_sha256(msg: &[u8], k: usize) -> Result<Vec<u8>, EnrollError> {
    use sha2::Digest;
    let mut t = apdu::hex::h("30 31 30 0D 06 09 60 86 48 01 65 03 04 02 01 05 00 04 20");
    t.extend_from_slice(&sha2::Sha256::digest(msg));
    // At least 8 bytes of FF padding (RFC 8017 §9.2 step 3).
    if k < t.len() + 11 {
        return Err(EnrollError::Key(KeyError::BadInput(format!(
            "a {k}-byte modulus is too short for SHA-256"
        ))));
    }
    let mut block = vec![0xFF; k];
    block[0] = 0;
    block[1] = 1;
    block[k - t.len() - 1] = 0;
    block[k - t.len()..].copy_from_slice(&t);
    Ok(block)
}

/// Signs `tbs` with `key` the way X.509 wants it: ECDSA with SHA-256 (P-256) or SHA-384
/// (P-384) as a DER Ecdsa-Sig-Value, or RSASSA-PKCS1-v1_5 with SHA-256.
fn sign(key: &CardKey, tbs: &[u8]) -> Result<(AlgorithmIdentifierOwned, Vec<u8>), EnrollError> {
    use sha2::Digest;
    let no_params = |oid| AlgorithmIdentifierOwned {
        oid,
        parameters: None,
    };
    Ok(match key.kind() {
        KeyKind::Ec(EcCurve::P256) => (
            no_params(ECDSA_SHA256),
            key.ec_sign(&sha2::Sha256::digest(tbs))?,
        ),
        KeyKind::Ec(EcCurve::P384) => (
            no_params(ECDSA_SHA384),
            key.ec_sign(&sha2::Sha384::digest(tbs))?,
        ),
        KeyKind::Rsa(bits) => {
            let block = pkcs1_sha256(tbs, bits.div_ceil(8))?;
            (
                AlgorithmIdentifierOwned {
                    oid: SHA256_WITH_RSA,
                    parameters: Some(Any::null()),
                },
                key.rsa_raw(&block)?.to_vec(),
            )
        }
    })
}

/// A PKCS#10 certification request (RFC 2986 §4) for `key` with `subject`, signed with the key
/// itself (proof of possession), as PEM ("CERTIFICATE REQUEST", RFC 7468 §7).
pub fn request(key: &CardKey, subject: Name) -> Result<String, EnrollError> {
    let info = CertReqInfo {
        version: Version::V1,
        subject,
        public_key: spki(&key.public(), key.kind())?,
        attributes: Default::default(),
    };
    let tbs = info.to_der().map_err(EnrollError::Encoding)?;
    let (algorithm, signature) = sign(key, &tbs)?;
    let req = CertReq {
        info,
        algorithm,
        signature: BitString::from_bytes(&signature).map_err(EnrollError::Encoding)?,
    };
    req.to_pem(der::pem::LineEnding::LF)
        .map_err(EnrollError::Encoding)
}

/// The first CERTIFICATE block of a PEM text, checked to be an X.509 certificate; DER.
pub fn certificate_der(pem: &str) -> Result<Vec<u8>, EnrollError> {
    let (_, der) = pem_block(pem, &["CERTIFICATE"])
        .ok_or_else(|| EnrollError::Certificate("no CERTIFICATE block".into()))?;
    x509_cert::Certificate::from_der(&der).map_err(|e| EnrollError::Certificate(e.to_string()))?;
    Ok(der.to_vec())
}

/// The private key of a PEM text (PKCS#8 "PRIVATE KEY", PKCS#1 "RSA PRIVATE KEY" or SEC 1 "EC
/// PRIVATE KEY"), with its block's label (to write it back the same way).
pub fn private_key(pem: &str) -> Result<(CardKey, &'static str), EnrollError> {
    const LABELS: [&str; 3] = ["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"];
    if pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err(EnrollError::PrivateKey(
            "the key is encrypted; decrypt it first (openssl pkey -in KEY -out PLAIN)".into(),
        ));
    }
    let (label, der) = pem_block(pem, &LABELS).ok_or_else(|| {
        EnrollError::PrivateKey("no PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block".into())
    })?;
    let key = CardKey::from_der(&der).map_err(|e| EnrollError::PrivateKey(e.to_string()))?;
    Ok((key, label))
}

/// A key as PEM with `label`.
pub fn key_pem(key: &CardKey, label: &str) -> Result<Zeroizing<String>, EnrollError> {
    der::pem::encode_string(label, der::pem::LineEnding::LF, key.der())
        .map(Zeroizing::new)
        .map_err(|e| EnrollError::Encoding(e.into()))
}

/// A DER certificate as PEM.
pub fn certificate_pem(cert_der: &[u8]) -> Result<String, EnrollError> {
    der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, cert_der)
        .map_err(|e| EnrollError::Encoding(e.into()))
}

/// The first PEM block of `text` with one of `labels`: its label and bytes.
fn pem_block(text: &str, labels: &[&'static str]) -> Option<(&'static str, Zeroizing<Vec<u8>>)> {
    for (label, der) in crate::keystore::pem_blocks(text) {
        if let Some(l) = labels.iter().find(|l| **l == label) {
            return Some((l, der));
        }
    }
    None
}

/// Whether a DER certificate carries `key` as its subject public key.
pub fn certificate_matches(cert_der: &[u8], key: &PublicKey) -> bool {
    match key {
        PublicKey::Ec(point) => ec_public_key(cert_der).is_ok_and(|(_, p)| p == *point),
        PublicKey::Rsa { .. } => rsa_public_key(cert_der).is_ok_and(|p| p == *key),
    }
}

/// A certificate a throwaway CA issues for the key of a PEM request (tests only).
#[cfg(test)]
pub(crate) use testca::certify;

#[cfg(test)]
mod testca {
    /// The public key of a PEM request, for rcgen to certify.
    struct Requested(Vec<u8>, &'static rcgen::SignatureAlgorithm);
    impl rcgen::PublicKeyData for Requested {
        fn der_bytes(&self) -> &[u8] {
            &self.0
        }
        fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
            self.1
        }
    }

    /// A certificate a throwaway CA (rcgen) issues for the key of a PEM request.
    pub(crate) fn certify(csr_pem: &str) -> String {
        use der::DecodePem;
        let csr = x509_cert::request::CertReq::from_pem(csr_pem).unwrap();
        let spki = &csr.info.public_key;
        let alg = if spki
            .algorithm
            .parameters
            .as_ref()
            .is_some_and(|p| p.is_null())
        {
            &rcgen::PKCS_RSA_SHA256
        } else if spki.subject_public_key.raw_bytes().len() == 65 {
            &rcgen::PKCS_ECDSA_P256_SHA256
        } else {
            &rcgen::PKCS_ECDSA_P384_SHA384
        };
        let key = Requested(spki.subject_public_key.raw_bytes().to_vec(), alg);
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer = rcgen::Issuer::new(ca, rcgen::KeyPair::generate().unwrap());
        rcgen::CertificateParams::new(vec!["enrolled".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap()
            .pem()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OpenSSL is not a dependency of this crate: the request's signature is checked with
    /// AWS-LC over the CertificationRequestInfo as encoded.
    fn verify(req_pem: &str, key: &CardKey) {
        use aws_lc_rs::signature as sig;
        use der::DecodePem;
        let req = CertReq::from_pem(req_pem).unwrap();
        let tbs = req.info.to_der().unwrap();
        let s = req.signature.as_bytes().unwrap();
        match key.public() {
            PublicKey::Ec(point) => {
                let alg: &dyn sig::VerificationAlgorithm = match key.kind() {
                    KeyKind::Ec(EcCurve::P256) => &sig::ECDSA_P256_SHA256_ASN1,
                    _ => &sig::ECDSA_P384_SHA384_ASN1,
                };
                sig::UnparsedPublicKey::new(alg, &point)
                    .verify(&tbs, s)
                    .unwrap();
            }
            PublicKey::Rsa { .. } => {
                let spki = req.info.public_key.subject_public_key.as_bytes().unwrap();
                sig::UnparsedPublicKey::new(&sig::RSA_PKCS1_2048_8192_SHA256, spki)
                    .verify(&tbs, s)
                    .unwrap();
            }
        }
        assert_eq!(
            req.info.public_key,
            spki(&key.public(), key.kind()).unwrap()
        );
    }

    #[test]
    fn requests_are_signed_by_the_key_they_carry() {
        for alg in [Algorithm::P256, Algorithm::P384, Algorithm::Rsa2048] {
            let key = CardKey::generate(alg.kind()).unwrap();
            let pem = request(&key, subject("CN=alice,O=Example").unwrap()).unwrap();
            assert!(
                pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----\n"),
                "{pem}"
            );
            verify(&pem, &key);
        }
    }

    #[test]
    fn algorithms_subjects_and_pem() {
        assert_eq!(Algorithm::parse("P-256").unwrap(), Algorithm::P256);
        assert_eq!(Algorithm::parse("RSA-2048").unwrap(), Algorithm::Rsa2048);
        assert_eq!(Algorithm::parse("p384").unwrap().to_string(), "p384");
        assert!(matches!(
            Algorithm::parse("ed25519"),
            Err(EnrollError::Algorithm(_))
        ));
        assert_eq!(
            subject("CN=alice,O=Example").unwrap().to_string(),
            "CN=alice,O=Example"
        );
        assert!(subject("").is_err());
        assert!(subject("nonsense").is_err());
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = certificate_der(&cert.pem()).unwrap();
        assert_eq!(der, cert.der().to_vec());
        assert_eq!(
            certificate_pem(&der).unwrap(),
            cert.pem().replace("\r\n", "\n")
        );
        assert!(certificate_der(&key.serialize_pem()).is_err());
        let (card_key, label) = private_key(&key.serialize_pem()).unwrap();
        assert_eq!(label, "PRIVATE KEY");
        assert!(certificate_matches(&der, &card_key.public()));
        let other = CardKey::generate(KeyKind::Ec(EcCurve::P256)).unwrap();
        assert!(!certificate_matches(&der, &other.public()));
        let again = key_pem(&card_key, label).unwrap();
        assert_eq!(private_key(&again).unwrap().0.public(), card_key.public());
        assert!(private_key(&cert.pem()).is_err());
    }
}
