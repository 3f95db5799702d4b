//! Keys and certificates from files: PEM (several blocks per file allowed) or DER, the key as
//! PKCS#8 ("PRIVATE KEY") or PKCS#1 ("RSA PRIVATE KEY"); or PKCS#12 (.p12/.pfx) files holding
//! both.

use super::privkey::PrivateKey as Key;
use super::rawrsa::RawRsa;
use super::{ec_public_key, Identity, KeyError, KeyStore};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// One identity's files: the certificate, and the key (or `None` when the certificate file also
/// holds the key, as a PEM file with both blocks or a PKCS#12 file does). `Debug` leaves the
/// password out (issue #14).
#[derive(Clone)]
pub struct FileIdentity {
    /// Certificate file (PEM or DER), or a PKCS#12 file (.p12/.pfx).
    pub cert: PathBuf,
    /// Private key file (PEM or DER); `None` = look in the certificate file.
    pub key: Option<PathBuf>,
    /// The password of a PKCS#12 file.
    pub password: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for FileIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileIdentity")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("password", &self.password.as_ref().map(|_| crate::Redacted))
            .finish()
    }
}

impl FileIdentity {
    /// A certificate and an optional separate key file.
    pub fn new(cert: impl Into<PathBuf>, key: Option<PathBuf>) -> Self {
        FileIdentity {
            cert: cert.into(),
            key,
            password: None,
        }
    }

    /// A PKCS#12 file: no separate key and a `.p12`/`.pfx` name.
    pub fn is_pkcs12(&self) -> bool {
        self.key.is_none()
            && self
                .cert
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("p12") || e.eq_ignore_ascii_case("pfx"))
    }
}

/// A key store over files; keys are read once into AWS-LC and zeroised when dropped.
pub struct FileStore {
    identities: Vec<Identity>,
    keys: Vec<Key>,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore")
            .field("identities", &self.identities.len())
            .finish()
    }
}

fn file_err(path: &Path, why: impl std::fmt::Display) -> KeyError {
    KeyError::File {
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

/// The PEM blocks of a text as (label, DER); empty when the text holds none.
pub(crate) fn pem_blocks(text: &str) -> Vec<(String, Zeroizing<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start..];
        let Some(label_end) = after[11..].find("-----") else {
            break;
        };
        let label = after[11..11 + label_end].to_string();
        let end_marker = format!("-----END {label}-----");
        let Some(end) = after.find(&end_marker) else {
            break;
        };
        let block = &after[..end + end_marker.len()];
        if let Ok((_, der)) = der::pem::decode_vec(block.as_bytes()) {
            out.push((label, Zeroizing::new(der)));
        }
        rest = &after[end + end_marker.len()..];
    }
    out
}

fn read(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| file_err(path, format!("cannot read: {e}")))
}

/// Why a file or directory holding private keys must not be used as it is: group or others
/// may read or write it (a key others can read is no longer private; one they can write can be
/// replaced). `None` when only its owner may. Refused rather than fixed, as OpenSSH refuses an
/// "UNPROTECTED PRIVATE KEY FILE": the user learns that the key may have been exposed.
pub fn exposed(path: &Path, meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    let (read, write) = (mode & 0o044 != 0, mode & 0o022 != 0);
    let how = match (read, write) {
        (false, false) => return None,
        (true, false) => "readable",
        (false, true) => "writable",
        (true, true) => "readable and writable",
    };
    let fix = if meta.is_dir() { "700" } else { "600" };
    Some(format!(
        "{how} by others (mode {mode:04o}): chmod {fix} {}",
        path.display()
    ))
}

/// Reads a file that holds a private key, refusing it when others may read or write it.
pub fn read_private(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).map_err(|e| file_err(path, format!("cannot read: {e}")))?;
    // The mode of the file opened (fstat), not of whatever the name points to later.
    let meta = f
        .metadata()
        .map_err(|e| file_err(path, format!("cannot read: {e}")))?;
    // Sized up front: a growing Vec would leave copies of the key in freed memory.
    let len = usize::try_from(meta.len()).unwrap_or(0).min(1 << 20);
    let mut bytes = Zeroizing::new(Vec::with_capacity(len + 1));
    f.read_to_end(&mut bytes)
        .map_err(|e| file_err(path, format!("cannot read: {e}")))?;
    if let Some(why) = exposed(path, &meta) {
        // A PEM file with no key in it (a certificate given without keyN=) needs the key, not
        // a chmod: say that instead.
        let text = String::from_utf8_lossy(&bytes);
        if text.contains("-----BEGIN ") && !text.contains("PRIVATE KEY-----") {
            return Err(file_err(path, NO_KEY));
        }
        return Err(file_err(path, why));
    }
    Ok(bytes)
}

fn load_cert(path: &Path) -> Result<Vec<u8>, KeyError> {
    let bytes = read(path)?;
    match std::str::from_utf8(&bytes) {
        Ok(text) if text.contains("-----BEGIN ") => pem_blocks(text)
            .into_iter()
            .find(|(l, _)| l == "CERTIFICATE")
            .map(|(_, d)| d.to_vec())
            .ok_or_else(|| file_err(path, "no CERTIFICATE block in this PEM file")),
        _ => Ok(bytes.to_vec()),
    }
}

/// A PEM file without a private key where one was expected.
const NO_KEY: &str = "no PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block: a certificate \
                      file without its key needs keyN=KEYFILE beside certN=";

fn load_key(path: &Path) -> Result<Key, KeyError> {
    let bytes = read_private(path)?;
    let der = match std::str::from_utf8(&bytes) {
        Ok(text) if text.contains("-----BEGIN ") => {
            let blocks = pem_blocks(text);
            if blocks.iter().any(|(l, _)| l == "ENCRYPTED PRIVATE KEY") {
                return Err(file_err(
                    path,
                    "the key is encrypted; decrypt it first (openssl pkey -in KEY -out PLAIN)",
                ));
            }
            blocks
                .into_iter()
                .find(|(l, _)| {
                    l == "PRIVATE KEY" || l == "RSA PRIVATE KEY" || l == "EC PRIVATE KEY"
                })
                .map(|(_, d)| d)
                .ok_or_else(|| file_err(path, NO_KEY))?
        }
        _ => bytes,
    };
    Key::from_der(&der).map_err(|e| file_err(path, e))
}

impl FileStore {
    /// Loads every identity and checks that each key matches its certificate.
    pub fn open(files: &[FileIdentity]) -> Result<Self, KeyError> {
        let mut identities = Vec::new();
        let mut keys = Vec::new();
        for f in files {
            if f.is_pkcs12() {
                let bytes = read_private(&f.cert)?;
                let pw = f.password.as_deref().map_or("", String::as_str);
                let (key, cert) =
                    RawRsa::from_pkcs12(&bytes, pw).map_err(|e| file_err(&f.cert, e))?;
                let label = f
                    .cert
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                identities.push(Identity::from_cert(label, cert)?);
                keys.push(Key::Rsa(key));
                continue;
            }
            let cert = load_cert(&f.cert)?;
            let label = f
                .cert
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let id = Identity::from_cert_rsa_or_ec(label, cert)?;
            let key_path = f.key.as_deref().unwrap_or(&f.cert);
            let key = load_key(key_path)?;
            let matches = match &key {
                Key::Rsa(k) => cert_has_modulus(&id.cert_der, &k.modulus()),
                Key::Ec(k) => ec_public_key(&id.cert_der)
                    .is_ok_and(|(c, point)| c == k.curve() && point == k.public_point()),
            };
            if !matches {
                return Err(file_err(
                    key_path,
                    format!(
                        "this key does not belong to certificate {}",
                        f.cert.display()
                    ),
                ));
            }
            identities.push(id);
            keys.push(key);
        }
        Ok(FileStore { identities, keys })
    }

    /// A store over identities held in memory, each (label, DER certificate, DER private
    /// key); for identities that are never written to disk.
    pub(crate) fn from_der(
        parts: Vec<(String, Vec<u8>, Zeroizing<Vec<u8>>)>,
    ) -> Result<Self, KeyError> {
        let mut identities = Vec::new();
        let mut keys = Vec::new();
        for (label, cert, key) in parts {
            let key = Key::from_der(&key).map_err(|e| KeyError::Certificate {
                label: label.clone(),
                why: e.to_string(),
            })?;
            identities.push(Identity::from_cert_rsa_or_ec(label, cert)?);
            keys.push(key);
        }
        Ok(FileStore { identities, keys })
    }
}

/// Whether the certificate's public key has this modulus (the bytes appear in its SPKI).
fn cert_has_modulus(cert_der: &[u8], modulus: &[u8]) -> bool {
    !modulus.is_empty() && cert_der.windows(modulus.len()).any(|w| w == modulus)
}

impl KeyStore for FileStore {
    fn identities(&self) -> &[Identity] {
        &self.identities
    }
    fn rsa_raw(&mut self, index: usize, input: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        match self.keys.get(index) {
            Some(Key::Rsa(k)) => k.private_raw(input),
            Some(Key::Ec(_)) => Err(KeyError::BadInput(format!("key {index} is not RSA"))),
            None => Err(KeyError::NotFound(format!("no key {index}"))),
        }
    }
    fn ec_sign(&mut self, index: usize, digest: &[u8]) -> Result<Vec<u8>, KeyError> {
        match self.keys.get(index) {
            Some(Key::Ec(k)) => k.sign_digest(digest),
            Some(Key::Rsa(_)) => Err(KeyError::BadInput(format!("key {index} is not EC"))),
            None => Err(KeyError::NotFound(format!("no key {index}"))),
        }
    }
    fn ecdh(&mut self, index: usize, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        match self.keys.get(index) {
            Some(Key::Ec(k)) => k.ecdh(peer),
            Some(Key::Rsa(_)) => Err(KeyError::BadInput(format!("key {index} is not EC"))),
            None => Err(KeyError::NotFound(format!("no key {index}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_splitting_and_errors() {
        let text = "junk\n-----BEGIN A-----\nAAEC\n-----END A-----\n-----BEGIN B-----\nAw==\n-----END B-----\n";
        let b = pem_blocks(text);
        assert_eq!(b.len(), 2);
        assert_eq!((b[0].0.as_str(), &b[0].1[..]), ("A", &[0u8, 1, 2][..]));
        assert_eq!((b[1].0.as_str(), &b[1].1[..]), ("B", &[3u8][..]));
        assert!(pem_blocks("-----BEGIN A-----\nAAEC\n").is_empty());
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = FileStore::open(&[FileIdentity::new(missing, None)]).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
    }

    #[test]
    fn a_key_file_others_may_read_or_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["k".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k, both) = (
            dir.path().join("c.pem"),
            dir.path().join("k.pem"),
            dir.path().join("both.pem"),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        std::fs::write(&both, format!("{}{}", cert.pem(), key.serialize_pem())).unwrap();
        let chmod = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        // The certificate is public: its mode is not looked at.
        chmod(&c, 0o644);
        for (mode, how) in [
            (0o644, "readable by others (mode 0644)"),
            (0o640, "readable by others (mode 0640)"),
            (0o620, "writable by others (mode 0620)"),
            (0o666, "readable and writable by others (mode 0666)"),
        ] {
            chmod(&k, mode);
            let e = FileStore::open(&[FileIdentity::new(&c, Some(k.clone()))])
                .unwrap_err()
                .to_string();
            assert!(e.contains(how), "{e}");
            assert!(e.contains(&format!("chmod 600 {}", k.display())), "{e}");
            // A PEM file holding the certificate and the key is a key file.
            chmod(&both, mode);
            let e = FileStore::open(&[FileIdentity::new(&both, None)])
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("chmod 600 {}", both.display())), "{e}");
        }
        for mode in [0o600, 0o400] {
            chmod(&k, mode);
            chmod(&both, mode);
            assert!(FileStore::open(&[FileIdentity::new(&c, Some(k.clone()))]).is_ok());
            assert!(FileStore::open(&[FileIdentity::new(&both, None)]).is_ok());
        }
        // A certificate alone, given without its key, as certificates usually are (0644): the
        // advice is the missing key, not a chmod.
        let e = FileStore::open(&[FileIdentity::new(&c, None)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("keyN=KEYFILE") && !e.contains("chmod"), "{e}");
    }
}

#[cfg(test)]
mod pkcs12_tests {
    use super::*;
    use std::process::Command;

    fn sh(args: &[&str]) {
        let o = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    #[test]
    fn pkcs12_from_openssl_with_password() {
        let d = tempfile::tempdir().unwrap();
        let p = |n: &str| d.path().join(n).display().to_string();
        sh(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=p12",
            "-keyout",
            &p("k.pem"),
            "-out",
            &p("c.pem"),
        ]);
        sh(&[
            "pkcs12",
            "-export",
            "-inkey",
            &p("k.pem"),
            "-in",
            &p("c.pem"),
            "-passout",
            "pass:lab",
            "-out",
            &p("id.p12"),
        ]);
        let mut f = FileIdentity::new(d.path().join("id.p12"), None);
        f.password = Some(Zeroizing::new("lab".into()));
        let mut store = FileStore::open(std::slice::from_ref(&f)).unwrap();
        assert_eq!(store.identities()[0].modulus_bits, 2048);
        let cert_pem = std::fs::read_to_string(d.path().join("c.pem")).unwrap();
        assert_eq!(
            store.identities()[0].cert_der,
            pem_blocks(&cert_pem)[0].1.to_vec()
        );
        let block = crate::keystore::testutil::pkcs1_sha256_block(b"p12", 256);
        assert_eq!(store.rsa_raw(0, &block).unwrap().len(), 256);
        f.password = Some(Zeroizing::new("wrong".into()));
        let e = FileStore::open(std::slice::from_ref(&f)).unwrap_err();
        assert!(e.to_string().contains("wrong password"), "{e}");
        // A PKCS#12 file holds the key: one that others may read is refused.
        use std::os::unix::fs::PermissionsExt;
        f.password = Some(Zeroizing::new("lab".into()));
        std::fs::set_permissions(&f.cert, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = FileStore::open(&[f]).unwrap_err().to_string();
        assert!(
            e.contains("readable by others (mode 0644): chmod 600"),
            "{e}"
        );
    }
}
