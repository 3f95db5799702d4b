//! A card whose identities vccid makes itself, kept as PEM files in a directory of its own:
//! the embedded default card (`DATA_DIR/default/`) and the generated cards
//! (`DATA_DIR/cards/ID/`) share these rules.
//!
//! The identities are one card: they are made together, once, and only where there is no card
//! yet (the directory absent or empty). They are written into a temporary sibling directory,
//! synced, and renamed into place (rename(2) is atomic and replaces only an empty directory),
//! so a crash leaves either no card or a whole one. A set with a file missing or unreadable is
//! an error naming the file: making new keys over an old card would silently change the card's
//! identity (its certificates, its card identifiers and the PIV state bound to them).

use super::files::{exposed, FileIdentity};
use super::{sync_dir, FileStore, KeyError};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The name of the ECC identity's files (`piv-ecc.crt.pem`, `piv-ecc.key.pem`).
pub(crate) const ECC: &str = "piv-ecc";

/// The file names of the identities, in slot order: three RSA-2048 identities (QEMU's
/// `cert1..cert3`), then the P-256 one.
pub(crate) const NAMES: [&str; 4] = ["cert1", "cert2", "cert3", ECC];

/// An attribute of a certificate subject: its rcgen type and its OID (RFC 5280 §4.1.2.6,
/// X.520).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attr {
    /// commonName (2.5.4.3)
    Cn,
    /// organizationName (2.5.4.10)
    O,
    /// organizationalUnitName (2.5.4.11)
    Ou,
    /// localityName (2.5.4.7)
    L,
    /// stateOrProvinceName (2.5.4.8)
    St,
    /// countryName (2.5.4.6)
    C,
}

impl Attr {
    /// Every attribute, with the short name RFC 4514 §3 gives it.
    pub(crate) const ALL: [(Attr, &'static str); 6] = [
        (Attr::Cn, "CN"),
        (Attr::O, "O"),
        (Attr::Ou, "OU"),
        (Attr::L, "L"),
        (Attr::St, "ST"),
        (Attr::C, "C"),
    ];

    fn dn_type(self) -> rcgen::DnType {
        match self {
            Attr::Cn => rcgen::DnType::CommonName,
            Attr::O => rcgen::DnType::OrganizationName,
            Attr::Ou => rcgen::DnType::OrganizationalUnitName,
            Attr::L => rcgen::DnType::LocalityName,
            Attr::St => rcgen::DnType::StateOrProvinceName,
            Attr::C => rcgen::DnType::CountryName,
        }
    }

    fn oid(self) -> der::asn1::ObjectIdentifier {
        use der::asn1::ObjectIdentifier as Oid;
        match self {
            Attr::Cn => Oid::new_unwrap("2.5.4.3"),
            Attr::O => Oid::new_unwrap("2.5.4.10"),
            Attr::Ou => Oid::new_unwrap("2.5.4.11"),
            Attr::L => Oid::new_unwrap("2.5.4.7"),
            Attr::St => Oid::new_unwrap("2.5.4.8"),
            Attr::C => Oid::new_unwrap("2.5.4.6"),
        }
    }
}

/// A subject in certificate (DER) order: the first attribute is the outermost RDN.
pub(crate) type Subject = Vec<(Attr, String)>;

/// Whether a DER certificate's subject is exactly `subject`: the same attributes, one per RDN,
/// in the same order, with the same values.
pub(crate) fn subject_is(cert_der: &[u8], subject: &Subject) -> bool {
    use der::Decode;
    let Ok(cert) = x509_cert::Certificate::from_der(cert_der) else {
        return false;
    };
    let name = cert.tbs_certificate().subject();
    let rdns: Vec<_> = name.iter_rdn().collect();
    rdns.len() == subject.len()
        && rdns.iter().zip(subject).all(|(rdn, (attr, value))| {
            let mut atvs = rdn.iter();
            match (atvs.next(), atvs.next()) {
                (Some(atv), None) => {
                    let text = atv
                        .value
                        .decode_as::<der::asn1::Utf8StringRef<'_>>()
                        .map(|s| s.as_str().to_string())
                        .or_else(|_| {
                            atv.value
                                .decode_as::<der::asn1::PrintableStringRef<'_>>()
                                .map(|s| s.as_str().to_string())
                        });
                    atv.oid == attr.oid() && text.is_ok_and(|t| t == *value)
                }
                _ => false,
            }
        })
}

/// One identity to make: its file name, its certificate's subject, its key.
#[derive(Debug, Clone)]
pub(crate) struct Blueprint {
    /// The file name without `.crt.pem` / `.key.pem`.
    pub name: &'static str,
    /// The certificate's subject.
    pub subject: Subject,
    /// P-256 (the PIV card's 9E identity) instead of RSA-2048.
    pub ecc: bool,
}

/// A generated card's directory and the identities it holds (or will hold).
#[derive(Debug, Clone)]
pub(crate) struct CardDir {
    /// Where the card's directory and its temporary siblings live.
    parent: PathBuf,
    dir: PathBuf,
    /// The temporary directory's name before the PID.
    tmp_prefix: String,
    /// The card as messages name it ("the default card", "the generated card alice").
    what: String,
    /// The identities, in slot order, the ECC one last.
    blueprints: Vec<Blueprint>,
    /// A set without the ECC identity is whole (the default card of an earlier vccid).
    ecc_optional: bool,
}

impl CardDir {
    /// The card kept in `parent/name/`.
    pub(crate) fn new(
        parent: &Path,
        name: &str,
        what: String,
        blueprints: Vec<Blueprint>,
        ecc_optional: bool,
    ) -> Self {
        CardDir {
            parent: parent.to_path_buf(),
            dir: parent.join(name),
            tmp_prefix: format!(".{name}.tmp-"),
            what,
            blueprints,
            ecc_optional,
        }
    }

    /// Where the files are.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The identities' files (the RSA ones, and the ECC one `with_ecc`), making the whole card
    /// when there is none yet.
    pub(crate) fn ensure(&self, with_ecc: bool) -> Result<Vec<FileIdentity>, KeyError> {
        self.clean_leftovers();
        if self.is_vacant()? {
            // `false`: another process renamed its new card into place first; use that one.
            self.generate()?;
        }
        self.check(with_ecc)
    }

    /// [`ensure`](Self::ensure), then the key store over the files; a file that does not parse
    /// is reported with how to recover.
    pub(crate) fn open(&self, with_ecc: bool) -> Result<FileStore, KeyError> {
        let files = self.ensure(with_ecc)?;
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

    /// Makes a new card and returns all its identities, in slot order; refuses when the
    /// directory holds anything already.
    pub(crate) fn create(&self) -> Result<Vec<FileIdentity>, KeyError> {
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
        Ok(self.files(self.blueprints.iter().map(|b| b.name)))
    }

    /// The identities made in memory only: nothing is read or written.
    pub(crate) fn in_memory(&self, with_ecc: bool) -> Result<FileStore, KeyError> {
        let mut parts = Vec::new();
        for b in self.blueprints.iter().filter(|b| with_ecc || !b.ecc) {
            let (cert, key) = generate(b)?;
            parts.push((
                b.name.to_string(),
                cert.der().to_vec(),
                Zeroizing::new(key.serialize_der()),
            ));
        }
        FileStore::from_der(parts)
    }

    pub(crate) fn err(&self, path: &Path, why: impl Into<String>) -> KeyError {
        KeyError::File {
            path: path.display().to_string(),
            why: why.into(),
        }
    }

    fn recover_hint(&self) -> String {
        format!(
            "{what} in {d} is damaged and vccid does not make a new card over it: restore the \
             file from a backup, or move {d} away to make a new card (which changes the card's \
             keys)",
            what = self.what,
            d = self.dir.display()
        )
    }

    fn paths(&self, name: &str) -> [PathBuf; 2] {
        [
            self.dir.join(format!("{name}.crt.pem")),
            self.dir.join(format!("{name}.key.pem")),
        ]
    }

    fn files<'a>(&self, names: impl Iterator<Item = &'a str>) -> Vec<FileIdentity> {
        names
            .map(|n| {
                let [cert, key] = self.paths(n);
                FileIdentity::new(cert, Some(key))
            })
            .collect()
    }

    /// Whether there is no card: the directory is absent or empty.
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
        for b in &self.blueprints {
            for p in self.paths(b.name) {
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
        let ecc: Vec<PathBuf> = self
            .blueprints
            .iter()
            .filter(|b| b.ecc)
            .flat_map(|b| self.paths(b.name))
            .collect();
        // A default card made before the PIV profile existed: cert1..cert3 whole, no piv-ecc.
        let legacy = self.ecc_optional
            && !ecc.is_empty()
            && missing.len() == ecc.len()
            && missing.iter().all(|m| ecc.contains(m));
        if legacy && with_ecc {
            return Err(self.err(
                &self.dir,
                format!(
                    "this card was made by an earlier vccid with the CAC identities cert1..cert3 \
                     only; the PIV profile also needs the P-256 identity {ECC}, and vccid does \
                     not add keys to a card on its own. Use profile=cac, or add the identity \
                     yourself: `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
                     -nodes -days 3650 -subj /CN={ECC} -keyout {d}/{ECC}.key.pem -out \
                     {d}/{ECC}.crt.pem`, or move {d} away to make a new card (which changes \
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
                        "missing ({} lacks {}); nothing was changed: {}",
                        self.what,
                        names.join(", "),
                        self.recover_hint()
                    ),
                ));
            }
        }
        let names = self
            .blueprints
            .iter()
            .filter(|b| with_ecc || !b.ecc)
            .map(|b| b.name);
        Ok(self.files(names))
    }

    /// Removes temporary directories that dead processes left (a crash while making a card).
    /// One whose process still runs is left alone: it is making a card right now.
    fn clean_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(&self.parent) else {
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
                .and_then(|n| n.strip_prefix(self.tmp_prefix.as_str()))
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == std::process::id() || !Path::new("/proc").join(pid.to_string()).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Makes the identities in a temporary directory and renames it into place. `Ok(false)`
    /// when a card appeared there meanwhile (the rename found it non-empty).
    fn generate(&self) -> Result<bool, KeyError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.parent)
            .map_err(io(&self.parent))?;
        let tmp = self
            .parent
            .join(format!("{}{}", self.tmp_prefix, std::process::id()));
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
            sync_dir(&self.parent).map_err(io(&self.parent))?;
            let names: Vec<&str> = self.blueprints.iter().map(|b| b.name).collect();
            let made = self.what.replacen("the ", "a new ", 1);
            tracing::info!(dir = %self.dir.display(), "made {made} ({})", names.join(", "));
        }
        Ok(renamed)
    }

    fn generate_in(&self, tmp: &Path) -> Result<(), KeyError> {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(tmp)
            .map_err(io(tmp))?;
        for b in &self.blueprints {
            let (cert, key) = generate(b)?;
            let key_pem = Zeroizing::new(key.serialize_pem());
            let [cert_path, key_path] = [
                tmp.join(format!("{}.crt.pem", b.name)),
                tmp.join(format!("{}.key.pem", b.name)),
            ];
            write_new(&key_path, key_pem.as_bytes(), 0o600).map_err(io(&key_path))?;
            write_new(&cert_path, cert.pem().as_bytes(), 0o644).map_err(io(&cert_path))?;
        }
        sync_dir(tmp).map_err(io(tmp))
    }
}

fn is_key(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| n.to_string_lossy().ends_with(".key.pem"))
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

/// A self-signed certificate with SHA-256 and its key pair: RSA-2048 for signing and
/// key encipherment, or P-256 for signing and key agreement. The extended key usages are TLS
/// client authentication and e-mail protection (RFC 5280 §4.2.1.12), which SSSD's default
/// certificate matching rule (`<KU>digitalSignature<EKU>clientAuth`) and S/MIME clients look
/// for. The serial number is 127 random bits (RFC 5280 §4.1.2.2: positive, at most 20 bytes),
/// so two cards never share one.
fn generate(b: &Blueprint) -> Result<(rcgen::Certificate, rcgen::KeyPair), KeyError> {
    let err = |e: rcgen::Error| KeyError::Certificate {
        label: b.name.to_string(),
        why: format!("generation failed: {e}"),
    };
    let key = if b.ecc {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
    } else {
        rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
    }
    .map_err(err)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    for (attr, value) in &b.subject {
        // countryName is a PrintableString (RFC 5280 Appendix A, X520countryName).
        let value = if *attr == Attr::C {
            rcgen::DnValue::PrintableString(value.as_str().try_into().map_err(err)?)
        } else {
            rcgen::DnValue::Utf8String(value.clone())
        };
        params.distinguished_name.push(attr.dn_type(), value);
    }
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::ContentCommitment,
        if b.ecc {
            rcgen::KeyUsagePurpose::KeyAgreement
        } else {
            rcgen::KeyUsagePurpose::KeyEncipherment
        },
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        rcgen::ExtendedKeyUsagePurpose::EmailProtection,
    ];
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).map_err(|_| KeyError::Certificate {
        label: b.name.to_string(),
        why: "no random numbers".into(),
    })?;
    serial[0] &= 0x7F;
    params.serial_number = Some(rcgen::SerialNumber::from(serial.to_vec()));
    let cert = params.self_signed(&key).map_err(err)?;
    Ok((cert, key))
}
