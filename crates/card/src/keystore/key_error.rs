//! The error of a private key that cannot be used, shared by the key parsers (`privkey`) and
//! the raw AWS-LC key types (`rawec`, `rawrsa`), which both produce it: in a module of its own,
//! so that neither needs the other's.

/// Why a private key (DER, or a PKCS#12 file with its certificate) cannot be used. The key
/// store puts the message after the file's name; none of them shows key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PrivateKeyError {
    /// More bytes than AWS-LC's length type holds.
    #[error("key too large")]
    TooLarge,
    /// AWS-LC parses it as none of the three.
    #[error("not a DER PKCS#8, PKCS#1 or SEC 1 private key")]
    NotDer,
    /// AWS-LC parsed it as RSA but gave no RSA key.
    #[error("unreadable RSA key")]
    UnreadableRsa,
    /// AWS-LC parsed it as EC but gave no EC key.
    #[error("unreadable EC key")]
    UnreadableEc,
    /// Another algorithm (Ed25519, DSA, ...).
    #[error("the private key is neither RSA nor EC")]
    NeitherRsaNorEc,
    /// An EC key on a curve the cards do not use.
    #[error("the EC key is on neither P-256 nor P-384")]
    Curve,
    /// The PKCS#12 password cannot be passed to AWS-LC as a C string.
    #[error("password contains a NUL byte")]
    PasswordNul,
    /// The bytes are not a PKCS#12 PFX.
    #[error("not a PKCS#12 file")]
    NotPkcs12,
    /// The PFX could not be decrypted or decoded.
    #[error(
        "wrong password, or an encoding AWS-LC cannot read (NSS pk12util writes \
         indefinite-length BER: re-export with `openssl pkcs12`, or use the NSS database itself \
         with backend=certificates)"
    )]
    Pkcs12Unreadable,
    /// The PFX holds no RSA private key.
    #[error("the PKCS#12 file holds no RSA private key")]
    Pkcs12NoKey,
    /// The PFX holds no certificate for its key.
    #[error("the PKCS#12 file holds no certificate for its key")]
    Pkcs12NoCertificate,
}
