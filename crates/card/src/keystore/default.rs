//! The embedded default card: three RSA-2048 identities (CN=cert1..cert3, like the seed's
//! `certutil` recipe) and, for the PIV application, an ECC P-256 identity (CN=piv-ecc),
//! generated on first use and kept in the user's data directory, so that `vccid` works with
//! no flags and keeps the same keys across runs.

use super::files::FileIdentity;
use super::KeyError;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The user's data directory for vccid: `$VCCID_DATA_DIR`, else `$XDG_DATA_HOME/vccid`, else
/// `$HOME/.local/share/vccid` (XDG Base Directory Specification).
pub fn default_data_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("VCCID_DATA_DIR")
        .or_else(|| env("XDG_DATA_HOME").map(|d| d.join("vccid")))
        .or_else(|| env("HOME").map(|h| h.join(".local/share/vccid")))
}

/// The default identities' files under a data directory.
#[derive(Debug, Clone)]
pub struct DefaultIdentities {
    dir: PathBuf,
}

impl DefaultIdentities {
    /// Number of identities on the default card, as in QEMU's `cert1..cert3`.
    pub const COUNT: usize = 3;

    /// The identities kept in `data_dir/default/`.
    pub fn new(data_dir: &Path) -> Self {
        DefaultIdentities {
            dir: data_dir.join("default"),
        }
    }

    /// Where the files are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The three RSA identities (the CAC card's): generates whichever are missing and returns
    /// their file pairs.
    pub fn ensure(&self) -> Result<Vec<FileIdentity>, KeyError> {
        let names: Vec<String> = (1..=Self::COUNT).map(|i| format!("cert{i}")).collect();
        self.ensure_named(&names.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// The three RSA identities and the P-256 one, `piv-ecc`, in that order (the PIV card's
    /// slots 9A, 9C, 9D, 9E).
    pub fn ensure_with_ecc(&self) -> Result<Vec<FileIdentity>, KeyError> {
        self.ensure_named(&["cert1", "cert2", "cert3", Self::ECC])
    }

    /// The name of the ECC identity.
    pub const ECC: &'static str = "piv-ecc";

    fn ensure_named(&self, names: &[&str]) -> Result<Vec<FileIdentity>, KeyError> {
        let io = |e: std::io::Error| KeyError::File {
            path: self.dir.display().to_string(),
            why: e.to_string(),
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let mut out = Vec::new();
        for name in names {
            let cert = self.dir.join(format!("{name}.crt.pem"));
            let key = self.dir.join(format!("{name}.key.pem"));
            if !(cert.exists() && key.exists()) {
                let (cert_pem, key_pem) = generate(name)?;
                // Key first, then certificate: a half-made identity has no certificate and is
                // simply made again next time.
                write_atomic(&key, key_pem.as_bytes(), 0o600).map_err(io)?;
                write_atomic(&cert, cert_pem.as_bytes(), 0o644).map_err(io)?;
                tracing::info!(cert = %cert.display(), "generated default identity {name}");
            }
            out.push(FileIdentity::new(cert, Some(key)));
        }
        Ok(out)
    }
}

/// A self-signed certificate with SHA-256: RSA-2048 for signing and key encipherment, or
/// (for the ECC identity) P-256 for signing and key agreement.
fn generate(cn: &str) -> Result<(String, zeroize::Zeroizing<String>), KeyError> {
    let err = |e: rcgen::Error| KeyError::Certificate {
        label: cn.to_string(),
        why: format!("generation failed: {e}"),
    };
    let ecc = cn == DefaultIdentities::ECC;
    let key = if ecc {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
    } else {
        rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
    }
    .map_err(err)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::ContentCommitment,
        if ecc {
            rcgen::KeyUsagePurpose::KeyAgreement
        } else {
            rcgen::KeyUsagePurpose::KeyEncipherment
        },
    ];
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).map_err(|_| KeyError::Certificate {
        label: cn.to_string(),
        why: "no random numbers".into(),
    })?;
    serial[0] &= 0x7F;
    params.serial_number = Some(rcgen::SerialNumber::from(serial.to_vec()));
    let cert = params.self_signed(&key).map_err(err)?;
    Ok((cert.pem(), zeroize::Zeroizing::new(key.serialize_pem())))
}

/// Writes via a temporary file in the same directory and a rename, so a reader never sees a
/// half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keystore::{FileStore, KeyStore};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let d = DefaultIdentities::new(dir.path());
        let files = d.ensure().unwrap();
        assert_eq!(files.len(), 3);
        let mode = std::fs::metadata(files[0].key.as_ref().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let first = std::fs::read(&files[1].cert).unwrap();
        let again = d.ensure().unwrap();
        assert_eq!(std::fs::read(&again[1].cert).unwrap(), first);
        let store = FileStore::open(&again).unwrap();
        assert_eq!(store.identities().len(), 3);
        assert_eq!(store.identities()[2].modulus_bits, 2048);
        // The PIV set adds the P-256 identity and keeps the RSA ones.
        let with_ecc = d.ensure_with_ecc().unwrap();
        assert_eq!(std::fs::read(&with_ecc[1].cert).unwrap(), first);
        let mut store = FileStore::open(&with_ecc).unwrap();
        assert_eq!(
            store.identities()[3].ec_curve,
            Some(crate::keystore::EcCurve::P256)
        );
        assert_eq!(store.ec_sign(3, &[1; 32]).unwrap()[0], 0x30);
        let block = crate::keystore::testutil::pkcs1_sha256_block(b"x", 256);
        assert_eq!(store.rsa_raw(0, &block).unwrap().len(), 256);
    }
}
