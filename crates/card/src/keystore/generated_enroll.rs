//! Enrollment of a generated card's CAC identities (issue #15): the CAC card's certificates
//! are its key store's, so for a generated card (`DATA_DIR/cards/ID/certN.{crt,key}.pem`)
//! enrolling `certN` means new files: a new RSA-2048 key, a PKCS#10 request signed with it,
//! and the certificate a CA issues for it, which must carry that key.
//!
//! The files change so that a crash at any point leaves a whole card:
//! - the new key waits in `certN.pending.key.pem` (0600) until its certificate comes, so an
//!   enrollment may span a restart, and the card keeps serving the old identity meanwhile;
//! - the new identity (certificate, and key if new) is first written whole to the journal
//!   `certN.enroll.pem` (0600, atomically), then to `certN.key.pem` and `certN.crt.pem` (each
//!   atomically), then the journal and the pending key go. Opening the card finishes a
//!   journal left behind ([`GeneratedIdentities::open`]), so a key and a certificate that do
//!   not belong together are never served.
//!
//! The certificates change the CAC card's identifiers (its card identifier and CPLC serial
//! come from the first certificate): OpenSC sees a new card, as it would a reissued one.

use super::KeyKind;
use super::{
    read_private, remove_stale_tmp, write_atomic, CardKey, GeneratedIdentities, Identity, KeyError,
};
use crate::enroll::{self, Algorithm, EnrollError};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The identities of a generated card that enrollment replaces: the CAC card's (RSA).
pub const CAC_IDENTITIES: [&str; 3] = ["cert1", "cert2", "cert3"];

/// An identity's files: certificate, key, pending key, journal.
struct Files {
    cert: PathBuf,
    key: PathBuf,
    pending: PathBuf,
    journal: PathBuf,
}

fn files(dir: &Path, name: &str) -> Files {
    Files {
        cert: dir.join(format!("{name}.crt.pem")),
        key: dir.join(format!("{name}.key.pem")),
        pending: dir.join(format!("{name}.pending.key.pem")),
        journal: dir.join(format!("{name}.enroll.pem")),
    }
}

fn save_err(path: &Path) -> impl FnOnce(std::io::Error) -> EnrollError + '_ {
    move |error| EnrollError::Save {
        path: path.display().to_string(),
        error,
    }
}

/// fsync on a directory: the removals from it are on disk ([`write_atomic`] syncs its own
/// renames).
fn sync_dir(dir: &Path) -> Result<(), EnrollError> {
    super::sync_dir(dir).map_err(save_err(dir))
}

/// Removes a file that may be absent.
fn remove(path: &Path) -> Result<(), EnrollError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(save_err(path)(e)),
        _ => Ok(()),
    }
}

/// The private key in a key file (refused when others may read it), or `None` without one.
fn read_key(path: &Path) -> Result<Option<(CardKey, &'static str)>, EnrollError> {
    if !path.exists() {
        return Ok(None);
    }
    let bytes = read_private(path)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| EnrollError::PrivateKey(format!("{}: not PEM", path.display())))?;
    enroll::private_key(text).map(Some)
}

impl GeneratedIdentities {
    /// The identity a CAC slot name names: `cert1`, `cert2` or `cert3`.
    pub fn cac_identity(name: &str) -> Result<&'static str, EnrollError> {
        CAC_IDENTITIES
            .iter()
            .find(|n| **n == name)
            .copied()
            .ok_or_else(|| EnrollError::Slot {
                slot: name.to_string(),
                slots: "cert1, cert2, cert3",
            })
    }

    /// Starts enrolling identity `name`: a new RSA-2048 key, kept aside (the card serves the
    /// old identity until the certificate comes), and a PKCS#10 request signed with it for
    /// `subject` (default: the current certificate's).
    pub fn enroll_generate(
        &self,
        name: &str,
        alg: Algorithm,
        subject: Option<&str>,
    ) -> Result<String, EnrollError> {
        let name = Self::cac_identity(name)?;
        if alg != Algorithm::Rsa2048 {
            return Err(EnrollError::AlgorithmNotHere {
                slot: name.to_string(),
                takes: "rsa2048 (the CAC card is RSA-only)",
                alg,
            });
        }
        let f = files(self.dir(), name);
        let current = std::fs::read_to_string(&f.cert)
            .ok()
            .and_then(|pem| enroll::certificate_der(&pem).ok());
        let subject = match (subject, &current) {
            (Some(s), _) => enroll::subject(s)?,
            (None, Some(cert)) => {
                enroll::subject_of(cert).ok_or_else(|| EnrollError::NoSubject(name.to_string()))?
            }
            (None, None) => return Err(EnrollError::NoSubject(name.to_string())),
        };
        let key = CardKey::generate(KeyKind::Rsa(2048))?;
        let csr = enroll::request(&key, subject)?;
        // aws-lc-rs writes RSA keys as PKCS#8.
        let pem = enroll::key_pem(&key, "PRIVATE KEY")?;
        write_atomic(&f.pending, pem.as_bytes(), 0o600).map_err(save_err(&f.pending))?;
        tracing::info!(
            identity = name,
            dir = %self.dir().display(),
            "CAC key generated; waiting for its certificate"
        );
        Ok(csr)
    }

    /// Finishes enrolling identity `name` with the certificate a CA issued: for the key
    /// [`enroll_generate`](Self::enroll_generate) made, or (without one pending) for the key
    /// the identity has now.
    pub fn enroll_certificate(&self, name: &str, cert_pem: &str) -> Result<(), EnrollError> {
        let name = Self::cac_identity(name)?;
        let cert = self.checked_certificate(name, cert_pem)?;
        let f = files(self.dir(), name);
        if let Some((key, label)) = read_key(&f.pending)? {
            if enroll::certificate_matches(&cert, &key.public()) {
                return self.replace(name, &cert, Some((&key, label)));
            }
        }
        match read_key(&f.key)? {
            Some((key, _)) if enroll::certificate_matches(&cert, &key.public()) => {
                self.replace(name, &cert, None)
            }
            _ => Err(EnrollError::Mismatch(format!(
                "{name} (neither its pending key nor its current one)"
            ))),
        }
    }

    /// Replaces identity `name` with a key and certificate from elsewhere (an RSA key the CAC
    /// card takes, and its certificate).
    pub fn enroll_import(
        &self,
        name: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<(), EnrollError> {
        let name = Self::cac_identity(name)?;
        let (key, label) = enroll::private_key(key_pem)?;
        if !matches!(key.kind(), KeyKind::Rsa(_)) {
            return Err(EnrollError::KeyKind {
                slot: name.to_string(),
                takes: "RSA (the CAC card is RSA-only)",
                kind: key.kind(),
            });
        }
        let cert = self.checked_certificate(name, cert_pem)?;
        if !enroll::certificate_matches(&cert, &key.public()) {
            return Err(EnrollError::Mismatch(format!("{name} (the key given)")));
        }
        self.replace(name, &cert, Some((&key, label)))
    }

    /// A certificate the CAC card takes for identity `name` (RSA of 1024..4096 bits, and the
    /// subject `subject=` fixes, if any), DER.
    fn checked_certificate(&self, name: &str, cert_pem: &str) -> Result<Vec<u8>, EnrollError> {
        let cert = enroll::certificate_der(cert_pem)?;
        Identity::from_cert(name, cert.clone())?;
        if !self.subject_allowed(name, &cert) {
            let current = std::fs::read_to_string(files(self.dir(), name).cert)
                .ok()
                .and_then(|pem| enroll::certificate_der(&pem).ok())
                .and_then(|der| super::certificate_subject(&der));
            return Err(EnrollError::FixedSubject {
                slot: name.to_string(),
                want: current.unwrap_or_default(),
                have: super::certificate_subject(&cert).unwrap_or_default(),
            });
        }
        Ok(cert)
    }

    /// Writes the journal, then the identity's files from it.
    fn replace(
        &self,
        name: &str,
        cert: &[u8],
        key: Option<(&CardKey, &str)>,
    ) -> Result<(), EnrollError> {
        let f = files(self.dir(), name);
        let mut journal = Zeroizing::new(enroll::certificate_pem(cert)?);
        if let Some((key, label)) = key {
            journal.push_str(&enroll::key_pem(key, label)?);
        }
        write_atomic(&f.journal, journal.as_bytes(), 0o600).map_err(save_err(&f.journal))?;
        self.apply_journal(name)?;
        tracing::info!(identity = name, dir = %self.dir().display(), "CAC identity enrolled");
        Ok(())
    }

    /// Writes identity `name`'s files from its journal, then removes the journal and the
    /// pending key. Doing it twice does no harm.
    fn apply_journal(&self, name: &str) -> Result<(), EnrollError> {
        let f = files(self.dir(), name);
        let bytes = read_private(&f.journal)?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| EnrollError::Certificate(format!("{}: not PEM", f.journal.display())))?;
        let cert = enroll::certificate_der(text)?;
        if text.contains("PRIVATE KEY-----") {
            let (key, label) = enroll::private_key(text)?;
            let pem = enroll::key_pem(&key, label)?;
            write_atomic(&f.key, pem.as_bytes(), 0o600).map_err(save_err(&f.key))?;
        }
        let pem = enroll::certificate_pem(&cert)?;
        write_atomic(&f.cert, pem.as_bytes(), 0o644).map_err(save_err(&f.cert))?;
        remove(&f.journal)?;
        remove(&f.pending)?;
        sync_dir(self.dir())
    }

    /// Finishes an enrollment a crash interrupted after its journal was written, and removes
    /// the temporary files of writes a crash cut short.
    pub(crate) fn finish_interrupted(&self) -> Result<(), KeyError> {
        for name in CAC_IDENTITIES {
            let f = files(self.dir(), name);
            for path in [&f.cert, &f.key, &f.pending, &f.journal] {
                remove_stale_tmp(path);
            }
            let journal = f.journal;
            if journal.exists() {
                self.apply_journal(name).map_err(|e| KeyError::File {
                    path: journal.display().to_string(),
                    why: format!("an interrupted enrollment could not be finished: {e}"),
                })?;
                tracing::info!(
                    identity = name,
                    "an interrupted CAC enrollment was finished"
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keystore::{CardName, KeyStore};

    fn card(dir: &Path) -> GeneratedIdentities {
        GeneratedIdentities::new(dir, &CardName::new("c").unwrap(), None)
    }

    #[test]
    fn a_new_key_waits_for_its_certificate_and_a_journal_is_finished_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let g = card(dir.path());
        let before = g.open(false).unwrap().identities()[1].cert_der.clone();
        assert!(matches!(
            g.enroll_generate("cert2", Algorithm::P256, None),
            Err(EnrollError::AlgorithmNotHere { .. })
        ));
        assert!(matches!(
            g.enroll_generate("piv-ecc", Algorithm::Rsa2048, None),
            Err(EnrollError::Slot { .. })
        ));
        let csr = g
            .enroll_generate("cert2", Algorithm::Rsa2048, Some("CN=new,O=Example"))
            .unwrap();
        // Until the certificate comes, the card is as it was.
        assert_eq!(g.open(false).unwrap().identities()[1].cert_der, before);
        let cert = crate::enroll::certify(&csr);
        // Not for the current key of cert1, nor its pending one (it has none).
        assert!(matches!(
            g.enroll_certificate("cert1", &cert),
            Err(EnrollError::Mismatch(_))
        ));
        g.enroll_certificate("cert2", &cert).unwrap();
        let f = files(g.dir(), "cert2");
        assert!(!f.pending.exists() && !f.journal.exists());
        let mut store = g.open(false).unwrap();
        let der = enroll::certificate_der(&cert).unwrap();
        assert_eq!(store.identities()[1].cert_der, der);
        let block = crate::keystore::testutil::pkcs1_sha256_block(b"x", 256);
        assert_eq!(store.rsa_raw(1, &block).unwrap().len(), 256);
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&f.key), mode(&f.cert)), (0o600, 0o644));
        // A certificate for the key it has now replaces the certificate alone.
        let again = crate::enroll::certify(&csr);
        let key_before = std::fs::read(&f.key).unwrap();
        g.enroll_certificate("cert2", &again).unwrap();
        assert_eq!(std::fs::read(&f.key).unwrap(), key_before);

        // A crash after the journal: opening the card finishes the job.
        let other =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .unwrap();
        let other_cert = rcgen::CertificateParams::new(vec!["imported".into()])
            .unwrap()
            .self_signed(&other)
            .unwrap();
        let f3 = files(g.dir(), "cert3");
        std::fs::write(
            &f3.journal,
            format!("{}{}", other_cert.pem(), other.serialize_pem()),
        )
        .unwrap();
        std::fs::set_permissions(&f3.journal, std::fs::Permissions::from_mode(0o600)).unwrap();
        let store = g.open(false).unwrap();
        assert_eq!(store.identities()[2].cert_der, other_cert.der().to_vec());
        assert!(!f3.journal.exists());
    }

    #[test]
    fn import_takes_rsa_keys_with_their_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let g = card(dir.path());
        g.open(false).unwrap();
        let ec = rcgen::KeyPair::generate().unwrap();
        let ec_cert = rcgen::CertificateParams::new(vec!["e".into()])
            .unwrap()
            .self_signed(&ec)
            .unwrap();
        assert!(matches!(
            g.enroll_import("cert1", &ec_cert.pem(), &ec.serialize_pem()),
            Err(EnrollError::KeyKind { .. })
        ));
        let rsa =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .unwrap();
        let cert = rcgen::CertificateParams::new(vec!["r".into()])
            .unwrap()
            .self_signed(&rsa)
            .unwrap();
        assert!(matches!(
            g.enroll_import("cert1", &ec_cert.pem(), &rsa.serialize_pem()),
            Err(EnrollError::Certificate(_) | EnrollError::Key(_))
        ));
        g.enroll_import("cert1", &cert.pem(), &rsa.serialize_pem())
            .unwrap();
        assert_eq!(
            g.open(false).unwrap().identities()[0].cert_der,
            cert.der().to_vec()
        );
    }

    #[test]
    fn a_subject_template_fixes_the_first_subject() {
        let dir = tempfile::tempdir().unwrap();
        let t = crate::keystore::SubjectTemplate::parse("CN={id} {n}").unwrap();
        let g = GeneratedIdentities::new(dir.path(), &CardName::new("c").unwrap(), Some(&t));
        g.open(false).unwrap();
        let csr = g
            .enroll_generate("cert1", Algorithm::Rsa2048, Some("CN=other"))
            .unwrap();
        let cert = crate::enroll::certify(&csr);
        // The test CA's certificate has rcgen's default subject, not the template's CN=c 1.
        assert!(matches!(
            g.enroll_certificate("cert1", &cert),
            Err(EnrollError::FixedSubject { .. })
        ));
        assert!(g.open(false).is_ok());
    }
}
