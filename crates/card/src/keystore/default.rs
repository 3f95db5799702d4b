//! The embedded default card: three RSA-2048 identities (CN=cert1..cert3, like the seed's
//! `certutil` recipe) and, for the PIV application, an ECC P-256 identity (CN=piv-ecc), kept
//! in the user's data directory as `DATA_DIR/default/{cert1,cert2,cert3,piv-ecc}.{crt,key}.pem`
//! so that `vccid` works with no flags and keeps the same keys across runs. The files are made
//! and checked as every generated card's are (`carddir`: all together, once, never over an
//! existing card); the default card alone accepts a set without `piv-ecc`, which vccid made
//! before the PIV profile existed.

use super::carddir::{Attr, Blueprint, CardDir, ECC, NAMES};
use super::{FileIdentity, FileStore, KeyError};
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
    card: CardDir,
}

impl DefaultIdentities {
    /// Number of RSA identities on the default card, as in QEMU's `cert1..cert3`.
    pub const COUNT: usize = 3;

    /// The name of the ECC identity.
    pub const ECC: &'static str = ECC;

    /// The identities kept in `data_dir/default/`: subjects CN=cert1, CN=cert2, CN=cert3 and
    /// CN=piv-ecc, the file names.
    pub fn new(data_dir: &Path) -> Self {
        let blueprints = NAMES
            .iter()
            .map(|name| Blueprint {
                name,
                subject: vec![(Attr::Cn, name.to_string())],
                ecc: *name == ECC,
            })
            .collect();
        DefaultIdentities {
            card: CardDir::new(
                data_dir,
                "default",
                "the default card".into(),
                blueprints,
                true,
            ),
        }
    }

    /// Where the files are.
    pub fn dir(&self) -> &Path {
        self.card.dir()
    }

    /// The three RSA identities (the CAC card's). Makes the whole card (all four identities)
    /// when there is none yet; a set made by an earlier vccid without `piv-ecc` is accepted.
    pub fn ensure(&self) -> Result<Vec<FileIdentity>, KeyError> {
        self.card.ensure(false)
    }

    /// The three RSA identities and the P-256 one, `piv-ecc`, in that order (the PIV card's
    /// slots 9A, 9C, 9D, 9E). Makes the whole card when there is none yet.
    pub fn ensure_with_ecc(&self) -> Result<Vec<FileIdentity>, KeyError> {
        self.card.ensure(true)
    }

    /// [`ensure`](Self::ensure) or [`ensure_with_ecc`](Self::ensure_with_ecc), then the key
    /// store over the files; a file that does not parse is reported with how to recover.
    pub fn open(&self, with_ecc: bool) -> Result<FileStore, KeyError> {
        self.card.open(with_ecc)
    }

    /// Makes a new card (all four identities) and returns them, in slot order; refuses when
    /// the directory holds anything already (`vccid init`).
    pub fn create(&self) -> Result<Vec<FileIdentity>, KeyError> {
        self.card.create()
    }

    #[cfg(test)]
    fn ensure_set(&self, with_ecc: bool) -> Result<Vec<FileIdentity>, KeyError> {
        self.card.ensure(with_ecc)
    }
}

/// The subject of a DER certificate as an RFC 4514 string (`CN=cert1`); `None` when it does
/// not parse.
pub fn certificate_subject(cert_der: &[u8]) -> Option<String> {
    use der::Decode;
    x509_cert::Certificate::from_der(cert_der)
        .ok()
        .map(|c| c.tbs_certificate().subject().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keystore::KeyStore;
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;

    /// Every file under `dir` (recursively) with its bytes.
    fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    todo.push(p);
                } else {
                    out.insert(p.clone(), std::fs::read(&p).unwrap());
                }
            }
        }
        out
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    const EIGHT: [&str; 8] = [
        "cert1.crt.pem",
        "cert1.key.pem",
        "cert2.crt.pem",
        "cert2.key.pem",
        "cert3.crt.pem",
        "cert3.key.pem",
        "piv-ecc.crt.pem",
        "piv-ecc.key.pem",
    ];

    #[test]
    fn generated_once_as_a_whole_card_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let d = DefaultIdentities::new(dir.path());
        // The CAC profile's first start makes the whole card: all eight files, nothing else.
        let files = d.ensure().unwrap();
        assert_eq!(files.len(), 3);
        assert_eq!(names_in(d.dir()), EIGHT);
        assert_eq!(names_in(dir.path()), ["default"]);
        for name in EIGHT {
            let mode = std::fs::metadata(d.dir().join(name))
                .unwrap()
                .permissions()
                .mode();
            let want = if name.ends_with(".key.pem") {
                0o600
            } else {
                0o644
            };
            assert_eq!(mode & 0o777, want, "{name}");
        }
        let mode = std::fs::metadata(d.dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let before = snapshot(dir.path());
        let again = d.ensure().unwrap();
        let with_ecc = d.ensure_with_ecc().unwrap();
        assert_eq!(snapshot(dir.path()), before);
        assert_eq!(again[1].cert, files[1].cert);
        let store = FileStore::open(&again).unwrap();
        assert_eq!(store.identities().len(), 3);
        assert_eq!(store.identities()[2].modulus_bits, 2048);
        let mut store = d.open(true).unwrap();
        assert_eq!(with_ecc.len(), 4);
        assert_eq!(
            store.identities()[3].ec_curve,
            Some(crate::keystore::EcCurve::P256)
        );
        assert_eq!(store.ec_sign(3, &[1; 32]).unwrap()[0], 0x30);
        let block = crate::keystore::testutil::pkcs1_sha256_block(b"x", 256);
        assert_eq!(store.rsa_raw(0, &block).unwrap().len(), 256);
        let subjects: Vec<String> = store
            .identities()
            .iter()
            .map(|i| certificate_subject(&i.cert_der).unwrap())
            .collect();
        assert_eq!(subjects, ["CN=cert1", "CN=cert2", "CN=cert3", "CN=piv-ecc"]);
    }

    #[test]
    fn an_empty_default_directory_gets_the_whole_card() {
        let dir = tempfile::tempdir().unwrap();
        let d = DefaultIdentities::new(dir.path());
        std::fs::create_dir(d.dir()).unwrap();
        // The CAC profile's start: the whole card all the same (earlier vccids made three).
        assert_eq!(d.ensure().unwrap().len(), 3);
        assert_eq!(names_in(d.dir()), EIGHT);
    }

    #[test]
    fn a_missing_key_is_an_error_naming_it_and_nothing_changes() {
        let dir = tempfile::tempdir().unwrap();
        let d = DefaultIdentities::new(dir.path());
        d.ensure_with_ecc().unwrap();
        let gone = d.dir().join("cert3.key.pem");
        std::fs::remove_file(&gone).unwrap();
        let before = snapshot(dir.path());
        for with_ecc in [false, true] {
            let e = d.ensure_set(with_ecc).unwrap_err().to_string();
            assert!(e.contains(&gone.display().to_string()), "{e}");
            assert!(e.contains("restore") && e.contains("move"), "{e}");
            assert_eq!(snapshot(dir.path()), before);
            assert!(!gone.exists());
        }
        // `vccid init` refuses too.
        let e = d.create().unwrap_err().to_string();
        assert!(e.contains("already holds a card"), "{e}");
        assert_eq!(snapshot(dir.path()), before);
        // Half of the ECC identity missing is damage too, also for the CAC profile.
        std::fs::write(&gone, &before[&d.dir().join("cert2.key.pem")]).unwrap();
        std::fs::set_permissions(&gone, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::remove_file(d.dir().join("piv-ecc.crt.pem")).unwrap();
        let e = d.ensure().unwrap_err().to_string();
        assert!(
            e.contains("piv-ecc.crt.pem") && e.contains("missing"),
            "{e}"
        );
    }

    #[test]
    fn a_damaged_file_is_reported_with_how_to_recover() {
        let dir = tempfile::tempdir().unwrap();
        let d = DefaultIdentities::new(dir.path());
        d.ensure().unwrap();
        let bad = d.dir().join("cert2.crt.pem");
        std::fs::write(&bad, "truncated by a bad copy").unwrap();
        let before = snapshot(dir.path());
        let e = d.open(false).unwrap_err().to_string();
        assert!(
            e.contains(&bad.display().to_string()) && e.contains("restore"),
            "{e}"
        );
        assert_eq!(snapshot(dir.path()), before);
    }

    #[test]
    fn an_earlier_cac_only_set_serves_cac_and_refuses_piv() {
        let dir = tempfile::tempdir().unwrap();
        let d = DefaultIdentities::new(dir.path());
        d.ensure().unwrap();
        for f in ["piv-ecc.crt.pem", "piv-ecc.key.pem"] {
            std::fs::remove_file(d.dir().join(f)).unwrap();
        }
        let before = snapshot(dir.path());
        assert_eq!(d.open(false).unwrap().identities().len(), 3);
        let e = d.ensure_with_ecc().unwrap_err().to_string();
        assert!(
            e.contains("earlier vccid") && e.contains("profile=cac"),
            "{e}"
        );
        assert_eq!(snapshot(dir.path()), before);
    }

    #[test]
    fn a_leftover_temporary_directory_is_never_the_card() {
        let dir = tempfile::tempdir().unwrap();
        // A whole card that a crash left before its rename (PID above Linux's pid_max, so no
        // process has it).
        let other = tempfile::tempdir().unwrap();
        let o = DefaultIdentities::new(other.path());
        o.ensure().unwrap();
        let leftover = dir.path().join(".default.tmp-4294967295");
        std::fs::rename(o.dir(), &leftover).unwrap();
        let old_cert = std::fs::read(leftover.join("cert1.crt.pem")).unwrap();
        let d = DefaultIdentities::new(dir.path());
        let files = d.ensure().unwrap();
        assert_ne!(std::fs::read(&files[0].cert).unwrap(), old_cert);
        assert_eq!(names_in(dir.path()), ["default"]);
        // A running process's temporary directory is left alone.
        let live = dir.path().join(".default.tmp-1");
        std::fs::create_dir(&live).unwrap();
        d.ensure().unwrap();
        assert!(live.exists());
    }

    #[test]
    fn an_exposed_default_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = DefaultIdentities::new(dir.path());
        d.ensure().unwrap();
        let key = d.dir().join("cert1.key.pem");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = d.open(false).unwrap_err().to_string();
        assert!(
            e.contains(&format!("chmod 600 {}", key.display())) && e.contains("mode 0644"),
            "{e}"
        );
    }
}
