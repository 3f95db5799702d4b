//! The embedded default card: three RSA-2048 identities (CN=cert1..cert3, like the seed's
//! `certutil` recipe) and, for the PIV application, an ECC P-256 identity (CN=piv-ecc), kept
//! in the user's data directory as `DATA_DIR/default/{cert1,cert2,cert3,piv-ecc}.{crt,key}.pem`
//! so that `vccid` works with no flags and keeps the same keys across runs.
//!
//! The four identities are one card: they are made together, once, and only where there is no
//! card yet (`DATA_DIR/default` absent or empty). They are written into a temporary sibling
//! directory, synced, and renamed into place (rename(2) is atomic and replaces only an empty
//! directory), so a crash leaves either no card or a whole one. A set with a file missing or
//! unreadable is an error naming the file: making new keys over an old card would silently
//! change the card's identity (its certificates, and the PIV state bound to them).

use super::files::{exposed, FileIdentity};
use super::{FileStore, KeyError};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
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

/// The RSA identities, in card order (QEMU's `cert1..cert3`).
const RSA: [&str; 3] = ["cert1", "cert2", "cert3"];

/// The prefix of the temporary directory a new card is made in, before the PID.
const TMP_PREFIX: &str = ".default.tmp-";

/// The default identities' files under a data directory.
#[derive(Debug, Clone)]
pub struct DefaultIdentities {
    data_dir: PathBuf,
    dir: PathBuf,
}

impl DefaultIdentities {
    /// Number of RSA identities on the default card, as in QEMU's `cert1..cert3`.
    pub const COUNT: usize = 3;

    /// The name of the ECC identity.
    pub const ECC: &'static str = "piv-ecc";

    /// The identities kept in `data_dir/default/`.
    pub fn new(data_dir: &Path) -> Self {
        DefaultIdentities {
            data_dir: data_dir.to_path_buf(),
            dir: data_dir.join("default"),
        }
    }

    /// Where the files are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The three RSA identities (the CAC card's). Makes the whole card (all four identities)
    /// when there is none yet; a set made by an earlier vccid without `piv-ecc` is accepted.
    pub fn ensure(&self) -> Result<Vec<FileIdentity>, KeyError> {
        self.ensure_set(false)
    }

    /// The three RSA identities and the P-256 one, `piv-ecc`, in that order (the PIV card's
    /// slots 9A, 9C, 9D, 9E). Makes the whole card when there is none yet.
    pub fn ensure_with_ecc(&self) -> Result<Vec<FileIdentity>, KeyError> {
        self.ensure_set(true)
    }

    /// [`ensure`](Self::ensure) or [`ensure_with_ecc`](Self::ensure_with_ecc), then the key
    /// store over the files; a file that does not parse is reported with how to recover.
    pub fn open(&self, with_ecc: bool) -> Result<FileStore, KeyError> {
        let files = self.ensure_set(with_ecc)?;
        FileStore::open(&files).map_err(|e| match e {
            KeyError::File { path, why } => KeyError::File {
                path,
                why: format!("{why}; {}", self.recover_hint()),
            },
            // The label of a file identity is its file name.
            KeyError::Certificate { label, why } => KeyError::File {
                path: self.dir.join(label).display().to_string(),
                why: format!("{why}; {}", self.recover_hint()),
            },
            e => e,
        })
    }

    /// Makes a new card (all four identities) and returns them, in slot order; refuses when
    /// the directory holds anything already (`vccid init`).
    pub fn create(&self) -> Result<Vec<FileIdentity>, KeyError> {
        self.clean_leftovers();
        if !self.is_vacant()? {
            return Err(self.err(
                &self.dir,
                format!(
                    "already holds a card; nothing was changed (to make a new card, which \
                     changes the card's keys, move {} away first)",
                    self.dir.display()
                ),
            ));
        }
        if !self.generate()? {
            return Err(self.err(&self.dir, "another vccid made a card here at the same time"));
        }
        Ok(self.files(&all_names()))
    }

    fn ensure_set(&self, with_ecc: bool) -> Result<Vec<FileIdentity>, KeyError> {
        self.clean_leftovers();
        if self.is_vacant()? {
            // `false`: another process renamed its new card into place first; use that one.
            self.generate()?;
        }
        self.check(with_ecc)
    }

    fn err(&self, path: &Path, why: impl Into<String>) -> KeyError {
        KeyError::File {
            path: path.display().to_string(),
            why: why.into(),
        }
    }

    fn recover_hint(&self) -> String {
        format!(
            "the default card in {d} is damaged and vccid does not make a new card over it: \
             restore the file from a backup, or move {d} away to make a new card (which changes \
             the card's keys)",
            d = self.dir.display()
        )
    }

    fn paths(&self, name: &str) -> [PathBuf; 2] {
        [
            self.dir.join(format!("{name}.crt.pem")),
            self.dir.join(format!("{name}.key.pem")),
        ]
    }

    fn files(&self, names: &[&str]) -> Vec<FileIdentity> {
        names
            .iter()
            .map(|n| {
                let [cert, key] = self.paths(n);
                FileIdentity::new(cert, Some(key))
            })
            .collect()
    }

    /// Whether there is no card: `default/` is absent or an empty directory.
    fn is_vacant(&self) -> Result<bool, KeyError> {
        match std::fs::read_dir(&self.dir) {
            Ok(mut entries) => Ok(entries.next().is_none()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(self.err(&self.dir, format!("cannot read: {e}"))),
        }
    }

    /// Checks that the set is whole and readable, without changing anything.
    fn check(&self, with_ecc: bool) -> Result<Vec<FileIdentity>, KeyError> {
        let mut missing = Vec::new();
        for name in all_names() {
            for p in self.paths(name) {
                match std::fs::File::open(&p).and_then(|f| f.metadata()) {
                    // The keys' modes first: a key others can read is refused with its own fix
                    // (chmod), not the damaged-card advice.
                    Ok(meta) if is_key(&p) => {
                        if let Some(why) = exposed(&p, &meta) {
                            return Err(self.err(&p, why));
                        }
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing.push(p),
                    Err(e) => {
                        return Err(
                            self.err(&p, format!("cannot read: {e}; {}", self.recover_hint()))
                        )
                    }
                }
            }
        }
        let ecc = self.paths(Self::ECC);
        // A set made before the PIV profile existed: cert1..cert3 whole, no piv-ecc file.
        let legacy = missing.len() == 2 && missing.iter().all(|m| ecc.contains(m));
        if legacy && with_ecc {
            return Err(self.err(
                &self.dir,
                format!(
                    "this card was made by an earlier vccid with the CAC identities cert1..cert3 \
                     only; the PIV profile also needs the P-256 identity piv-ecc, and vccid does \
                     not add keys to a card on its own. Use profile=cac, or add the identity \
                     yourself: `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
                     -nodes -days 3650 -subj /CN=piv-ecc -keyout {d}/piv-ecc.key.pem -out \
                     {d}/piv-ecc.crt.pem`, or move {d} away to make a new card (which changes \
                     the card's keys)",
                    d = self.dir.display()
                ),
            ));
        }
        if !legacy {
            if let Some(first) = missing.first() {
                let names: Vec<String> = missing
                    .iter()
                    .filter_map(|m| m.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .collect();
                return Err(self.err(
                    first,
                    format!(
                        "missing (the default card lacks {}); nothing was changed: {}",
                        names.join(", "),
                        self.recover_hint()
                    ),
                ));
            }
        }
        let mut names = RSA.to_vec();
        if with_ecc {
            names.push(Self::ECC);
        }
        Ok(self.files(&names))
    }

    /// Removes temporary directories that dead processes left (a crash while making a card).
    /// One whose process still runs is left alone: it is making a card right now.
    fn clean_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(&self.data_dir) else {
            return;
        };
        // Without /proc we cannot tell a dead process from a live one: leave them all.
        if !Path::new("/proc/self").exists() {
            return;
        }
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix(TMP_PREFIX))
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == std::process::id() || !Path::new("/proc").join(pid.to_string()).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Makes the four identities in a temporary directory and renames it to `default/`.
    /// `Ok(false)` when a card appeared there meanwhile (the rename found it non-empty).
    fn generate(&self) -> Result<bool, KeyError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.data_dir)
            .map_err(io(&self.data_dir))?;
        let tmp = self
            .data_dir
            .join(format!("{TMP_PREFIX}{}", std::process::id()));
        let made = self.generate_in(&tmp);
        let renamed = made.and_then(|()| match std::fs::rename(&tmp, &self.dir) {
            Ok(()) => Ok(true),
            // rename(2): ENOTEMPTY or EEXIST when the target is a non-empty directory.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::DirectoryNotEmpty | std::io::ErrorKind::AlreadyExists
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(io(&self.dir)(e)),
        });
        if !matches!(renamed, Ok(true)) {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        let renamed = renamed?;
        if renamed {
            sync_dir(&self.data_dir).map_err(io(&self.data_dir))?;
            tracing::info!(dir = %self.dir.display(), "made a new default card (cert1, cert2, cert3, piv-ecc)");
        }
        Ok(renamed)
    }

    fn generate_in(&self, tmp: &Path) -> Result<(), KeyError> {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(tmp)
            .map_err(io(tmp))?;
        for name in all_names() {
            let (cert_pem, key_pem) = generate(name)?;
            let (cert, key) = (
                tmp.join(format!("{name}.crt.pem")),
                tmp.join(format!("{name}.key.pem")),
            );
            write_new(&key, key_pem.as_bytes(), 0o600).map_err(io(&key))?;
            write_new(&cert, cert_pem.as_bytes(), 0o644).map_err(io(&cert))?;
        }
        sync_dir(tmp).map_err(io(tmp))
    }
}

fn is_key(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| n.to_string_lossy().ends_with(".key.pem"))
}

/// Every identity of the default card, in slot order.
fn all_names() -> [&'static str; 4] {
    [RSA[0], RSA[1], RSA[2], DefaultIdentities::ECC]
}

/// The error for an I/O failure on `path`.
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |e| KeyError::File {
        path: path.display().to_string(),
        why: e.to_string(),
    }
}

/// A new file (never an existing one), written and synced.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// fsync on a directory, so that the entries made in it (or renamed into it) are on disk.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The subject of a DER certificate as an RFC 4514 string (`CN=cert1`); `None` when it does
/// not parse.
pub fn certificate_subject(cert_der: &[u8]) -> Option<String> {
    use der::Decode;
    x509_cert::Certificate::from_der(cert_der)
        .ok()
        .map(|c| c.tbs_certificate().subject().to_string())
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
        let leftover = dir.path().join(format!("{TMP_PREFIX}4294967295"));
        std::fs::rename(o.dir(), &leftover).unwrap();
        let old_cert = std::fs::read(leftover.join("cert1.crt.pem")).unwrap();
        let d = DefaultIdentities::new(dir.path());
        let files = d.ensure().unwrap();
        assert_ne!(std::fs::read(&files[0].cert).unwrap(), old_cert);
        assert_eq!(names_in(dir.path()), ["default"]);
        // A running process's temporary directory is left alone.
        let live = dir.path().join(format!("{TMP_PREFIX}1"));
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
