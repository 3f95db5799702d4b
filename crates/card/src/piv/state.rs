//! The PIV card's persistent state: what a real card keeps in its EEPROM across power cycles.
//! Keys generated or imported on the card, data objects written with PUT DATA, the PIN, PUK
//! and management key with their retry counters.
//!
//! The file is JSON with a format name and a version, written atomically (temporary file,
//! fsync, rename, fsync of the directory: `keystore::write_atomic`) with mode 0600, because
//! it holds the PIN and private keys. Version 1 is
//! the only one so far; a file of a newer version, of another card, or that fails to parse is
//! reported with its path and left as it is: the card does not start.
//!
//! The lock, the permission checks, reading and writing ([`lock`], [`read`], [`write`]) are
//! the CAC card's too (`cac::state`, issue #17): one code path for every card state file.

use super::mgmt::ManagementKey;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use zeroize::Zeroizing;

/// The `format` field of every version.
pub const FORMAT: &str = "vccid PIV card state";
/// The version this code writes.
pub const VERSION: u32 = 1;
/// The largest state file read (24 certificates of 16 KiB, hex-encoded, with room).
const MAX_FILE: u64 = 2 * 1024 * 1024;

/// A PIN or PUK: its padded value and counters, wiped when dropped. `Debug` leaves the value
/// out (issue #14).
#[derive(Clone, PartialEq, Eq, zeroize::ZeroizeOnDrop)]
pub struct PinState {
    /// The 8-byte value, FF-padded.
    pub value: Zeroizing<Vec<u8>>,
    /// Tries before blocking.
    pub tries: u8,
    /// Tries left.
    pub left: u8,
}

impl std::fmt::Debug for PinState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinState")
            .field("value", &crate::Redacted)
            .field("tries", &self.tries)
            .field("left", &self.left)
            .finish()
    }
}

/// A key the card holds itself, wiped when dropped. `Debug` leaves the private key out.
#[derive(Clone, PartialEq, Eq, zeroize::ZeroizeOnDrop)]
pub struct SavedKey {
    /// Algorithm identifier (SP 800-78-4 Table 6-2).
    pub alg: u8,
    /// 1 generated on the card, 2 imported (YubiKey metadata).
    pub origin: u8,
    /// PIN policy: 1 never, 2 once, 3 always.
    pub pin_policy: u8,
    /// Touch policy (recorded, there is no button): 1 never, 2 always, 3 cached.
    pub touch_policy: u8,
    /// The private key, PKCS#8 or PKCS#1 DER.
    pub der: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for SavedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SavedKey")
            .field("alg", &self.alg)
            .field("origin", &self.origin)
            .field("pin_policy", &self.pin_policy)
            .field("touch_policy", &self.touch_policy)
            .field("der", &crate::Redacted)
            .finish()
    }
}

/// Everything the card persists. Not `ZeroizeOnDrop` itself (a card takes its parts by
/// move), but each secret part wipes itself: [`PinState`], [`ManagementKey`], [`SavedKey`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// SHA-256 over the certificates the card was built from, hex: a state file belongs to
    /// one card.
    pub card: String,
    /// The PIN.
    pub pin: PinState,
    /// The PUK.
    pub puk: PinState,
    /// The management key.
    pub management_key: ManagementKey,
    /// Data objects by tag (the value inside 53; the discovery object whole).
    pub objects: BTreeMap<u32, Vec<u8>>,
    /// Keys the card holds, by key reference.
    pub keys: BTreeMap<u8, SavedKey>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinV1 {
    value: Zeroizing<String>,
    tries: u8,
    left: u8,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MgmV1 {
    algorithm: u8,
    key: Zeroizing<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyV1 {
    algorithm: u8,
    origin: u8,
    pin_policy: u8,
    touch_policy: u8,
    der: Zeroizing<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileV1 {
    format: String,
    version: u32,
    card: String,
    pin: PinV1,
    puk: PinV1,
    management_key: MgmV1,
    objects: BTreeMap<String, String>,
    keys: BTreeMap<String, KeyV1>,
}

/// Why the state file cannot be used: its lock, its permissions, its contents, or (from
/// [`super::PivCard::new`]) a mismatch with the card. The card reports it after the file's
/// path and leaves the file as it is.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The directory could not be created.
    #[error("cannot create its directory: {0}")]
    CreateDir(std::io::Error),
    /// The directory's permissions could not be read.
    #[error("its directory: {0}")]
    Dir(std::io::Error),
    /// Others may write the directory, and it is not sticky.
    #[error(
        "its directory {d} is writable by others (mode {mode:04o}), who could replace the \
         state: chmod go-w {d}",
        d = .dir.display()
    )]
    DirWritable {
        /// The directory.
        dir: std::path::PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The lock file could not be opened.
    #[error("cannot open its lock file: {0}")]
    OpenLock(std::io::Error),
    /// Another process holds the lock.
    #[error(
        "another vccid is serving this card (its lock file is held): stop that one first, or \
         give this one its own state with state=FILE or state=off"
    )]
    Locked,
    /// Locking failed for another reason.
    #[error("cannot lock it: {0}")]
    Lock(std::io::Error),
    /// The file could not be opened or read.
    #[error("{0}")]
    Read(std::io::Error),
    /// Others may read or write the file (the text says which, and the chmod that fixes it).
    #[error("the file is {0}")]
    Exposed(String),
    /// More than a state file can hold.
    #[error("larger than {MAX_FILE} bytes")]
    TooLarge,
    /// Not JSON with a format name and a version.
    #[error("not a vccid PIV state file: {0}")]
    NotStateFile(serde_json::Error),
    /// Another format name.
    #[error("format {0:?} is not {FORMAT:?}")]
    Format(String),
    /// A version this code does not read.
    #[error(
        "state file version {0} (this vccid reads version {VERSION}); it was written by another \
         vccid"
    )]
    Version(u32),
    /// Version 1 that does not parse (a missing or unknown field, a wrong type).
    #[error("version 1: {0}")]
    V1(serde_json::Error),
    /// A field that should be hex is not; the field is named.
    #[error("{0}: not hex")]
    NotHex(String),
    /// A PIN or PUK out of range (`pin` or `puk`).
    #[error("{0}: the value must be 8 bytes, tries 1..15 and left ≤ tries")]
    Pin(&'static str),
    /// A management key of an unknown algorithm or of the wrong length.
    #[error("management_key: unknown algorithm or wrong key length")]
    ManagementKey,
    /// An object under a tag that is not a PIV data object.
    #[error("objects: {0:?} is not a PIV object tag")]
    ObjectTag(String),
    /// An object larger than the card takes.
    #[error("object {tag}: {len} bytes is too large")]
    ObjectSize {
        /// The tag, as the file writes it.
        tag: String,
        /// The object's size.
        len: usize,
    },
    /// A key under a reference that is not a PIV key slot.
    #[error("keys: {0:?} is not a PIV key reference")]
    KeyReference(String),
    /// A key's origin or policies out of range.
    #[error("key {0}: origin 1..2 and policies 1..3")]
    KeyPolicy(String),
    /// The file was written for a card with other certificates.
    #[error(
        "it belongs to another card (certificates {file}…, this card's are {card}…); move it \
         away or name another state file"
    )]
    OtherCard {
        /// The start of the file's card identifier.
        file: String,
        /// The start of this card's.
        card: String,
    },
    /// Not JSON with a format name and a version (the CAC card's file, `cac::state`).
    #[error("not a vccid CAC state file: {0}")]
    NotCacStateFile(serde_json::Error),
    /// Another format name than the CAC card's.
    #[error("format {0:?} is not {f:?}", f = crate::cac::STATE_FORMAT)]
    CacFormat(String),
    /// The CAC PIN out of range.
    #[error("pin: the value must be 1 to 8 bytes not ending in FF, tries 1..15 and left ≤ tries")]
    CacPin,
    /// A saved key that does not parse.
    #[error("key {slot:02X}: {error}")]
    Key {
        /// The key reference.
        slot: u8,
        /// Why.
        error: crate::keystore::KeyError,
    },
    /// A saved key whose algorithm is not the one recorded with it.
    #[error("key {slot:02X}: algorithm {alg:02X} does not match the key")]
    Algorithm {
        /// The key reference.
        slot: u8,
        /// The recorded algorithm.
        alg: u8,
    },
}

/// Only the header, to pick the parser.
#[derive(Deserialize)]
struct Header {
    format: String,
    version: u32,
}

pub(crate) fn unhex(what: &str, s: &str) -> Result<Vec<u8>, StateError> {
    apdu::hex::parse(s).ok_or_else(|| StateError::NotHex(what.to_string()))
}

/// Lower-case hex: the file is written on every counter change, so its largest fields
/// (certificates, keys) take one pass each.
pub(crate) fn hex(b: &[u8]) -> String {
    apdu::hex::lower(b)
}

fn pin_from(what: &'static str, p: &PinV1) -> Result<PinState, StateError> {
    let value = Zeroizing::new(unhex(what, &p.value)?);
    if value.len() != 8 || !(1..=15).contains(&p.tries) || p.left > p.tries {
        return Err(StateError::Pin(what));
    }
    Ok(PinState {
        value,
        tries: p.tries,
        left: p.left,
    })
}

fn pin_to(p: &PinState) -> PinV1 {
    PinV1 {
        value: Zeroizing::new(hex(&p.value)),
        tries: p.tries,
        left: p.left,
    }
}

/// Takes the state file's lock (`FILE.lock` beside it, created 0600 in a 0700 directory): two
/// processes serving one card would each overwrite the other's changes. A lock held by
/// another is waited for [`LOCK_PATIENCE`] (half a second) before [`StateError::Locked`].
pub fn lock(path: &Path) -> Result<std::fs::File, StateError> {
    use std::os::unix::fs::OpenOptionsExt;
    make_dir(path).map_err(StateError::CreateDir)?;
    // The directory too: others who may write it may replace the file (and the lock file
    // lives there). Reading the directory shows names only, and a sticky directory (/tmp)
    // lets nobody else rename or delete our files, so those are fine.
    let dir = directory(path);
    let meta = std::fs::metadata(dir).map_err(StateError::Dir)?;
    let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(StateError::DirWritable {
            dir: dir.to_path_buf(),
            mode: mode & 0o7777,
        });
    }
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&name)
        .map_err(StateError::OpenLock)?;
    // A lock let go a moment ago may still be held for that moment: close() lets a flock go
    // only with the file's last reference (fs/file_table.c, __fput → locks_remove_file), and
    // whoever reads /proc/PID/fd at that instant (lsof, `ss -p`, a monitoring agent) holds one
    // until its read is done. A card made anew in the process that dropped the old one (an
    // enrollment, a restart) is given that moment; another process serving the card holds the
    // lock for good, and is refused after it.
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < LOCK_PATIENCE => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(50));
            }
            Err(std::fs::TryLockError::WouldBlock) => return Err(StateError::Locked),
            Err(std::fs::TryLockError::Error(e)) => return Err(StateError::Lock(e)),
        }
    }
}

/// Warns, as a card starts from its state file, when the PIN (or PUK) kept there is not the
/// configured one (`key=` of the card's settings, or its default). The kept one counts, as
/// a real card's PIN stays whatever was set on it: a PIN changed on the card must survive a
/// restart. Without this line, someone who gives `pin=` to a card that has run before spends
/// tries on a PIN the card does not have.
pub fn warn_if_not_configured(what: &str, key: &str, kept: &[u8], configured: &[u8], path: &Path) {
    if aws_lc_rs::constant_time::verify_slices_are_equal(kept, configured).is_err() {
        // Named for the state code both cards share, not for PIV alone.
        tracing::warn!(
            target: "card::state",
            path = %path.display(),
            "the card's {what} is the one its state file keeps, not the configured one ({key}=, \
             or its default): a {what} set on the card stays across restarts, as on a real card. \
             Change it on the card (pkcs11-tool --change-pin, or vccid ctl card set-pin), or start \
             the card anew with state=off or another state file"
        );
    }
}

/// How long [`lock`] waits for a held lock before the card is refused.
pub const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(500);

/// The directory a state file is in (`.` for a bare file name).
fn directory(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn make_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir),
        None => Ok(()),
    }
}

impl State {
    /// Parses a state file's bytes (any version this code knows).
    pub fn parse(bytes: &[u8]) -> Result<State, StateError> {
        let header: Header = serde_json::from_slice(bytes).map_err(StateError::NotStateFile)?;
        if header.format != FORMAT {
            return Err(StateError::Format(header.format));
        }
        if header.version != VERSION {
            return Err(StateError::Version(header.version));
        }
        let f: FileV1 = serde_json::from_slice(bytes).map_err(StateError::V1)?;
        let mgm_key = Zeroizing::new(unhex("management_key", &f.management_key.key)?);
        let management_key = ManagementKey::new(f.management_key.algorithm, &mgm_key)
            .ok_or(StateError::ManagementKey)?;
        let mut objects = BTreeMap::new();
        for (tag, value) in &f.objects {
            let t = u32::from_str_radix(tag, 16)
                .ok()
                .filter(|t| (0x5F_C1_01..=0x5F_C1_23).contains(t) || *t == 0x7E)
                .ok_or_else(|| StateError::ObjectTag(tag.clone()))?;
            let v = unhex(&format!("object {tag}"), value)?;
            if v.len() > super::MAX_CHAIN {
                return Err(StateError::ObjectSize {
                    tag: tag.clone(),
                    len: v.len(),
                });
            }
            objects.insert(t, v);
        }
        let mut keys = BTreeMap::new();
        for (slot, k) in &f.keys {
            let r = u8::from_str_radix(slot, 16)
                .ok()
                .filter(|r| super::is_key_slot(*r))
                .ok_or_else(|| StateError::KeyReference(slot.clone()))?;
            if !matches!(k.origin, 1 | 2)
                || !(1..=3).contains(&k.pin_policy)
                || !(1..=3).contains(&k.touch_policy)
            {
                return Err(StateError::KeyPolicy(slot.clone()));
            }
            keys.insert(
                r,
                SavedKey {
                    alg: k.algorithm,
                    origin: k.origin,
                    pin_policy: k.pin_policy,
                    touch_policy: k.touch_policy,
                    der: Zeroizing::new(unhex(&format!("key {slot}"), &k.der)?),
                },
            );
        }
        Ok(State {
            card: f.card,
            pin: pin_from("pin", &f.pin)?,
            puk: pin_from("puk", &f.puk)?,
            management_key,
            objects,
            keys,
        })
    }

    /// The file's bytes (version 1), pretty-printed with a final newline.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let f = FileV1 {
            format: FORMAT.into(),
            version: VERSION,
            card: self.card.clone(),
            pin: pin_to(&self.pin),
            puk: pin_to(&self.puk),
            management_key: MgmV1 {
                algorithm: self.management_key.alg(),
                key: Zeroizing::new(hex(self.management_key.key())),
            },
            objects: self
                .objects
                .iter()
                .map(|(t, v)| (format!("{t:x}"), hex(v)))
                .collect(),
            keys: self
                .keys
                .iter()
                .map(|(r, k)| {
                    (
                        format!("{r:02x}"),
                        KeyV1 {
                            algorithm: k.alg,
                            origin: k.origin,
                            pin_policy: k.pin_policy,
                            touch_policy: k.touch_policy,
                            der: Zeroizing::new(hex(&k.der)),
                        },
                    )
                })
                .collect(),
        };
        let mut out = Zeroizing::new(serde_json::to_vec_pretty(&f).unwrap_or_default());
        out.push(b'\n');
        out
    }

    /// Reads the state file at `path`; `None` when there is none yet.
    pub fn load(path: &Path) -> Result<Option<State>, StateError> {
        match read(path)? {
            Some(bytes) => State::parse(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Writes the state atomically with mode 0600, creating the directory (0700) if needed.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        write(path, &self.to_bytes())
    }
}

/// Reads a state file's bytes, refusing one that others may read or write and one larger
/// than a state file can be; `None` when there is none yet. The PIV card's and the CAC card's
/// (`cac::state`) alike.
pub(crate) fn read(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, StateError> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StateError::Read(e)),
    };
    // It holds a PIN (and the PIV card's PUK, management key and private keys).
    let meta = file.metadata().map_err(StateError::Read)?;
    if let Some(why) = crate::keystore::exposed(path, &meta) {
        return Err(StateError::Exposed(why));
    }
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(StateError::Read)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(StateError::TooLarge);
    }
    Ok(Some(bytes))
}

/// Writes a state file's bytes atomically with mode 0600, creating the directory (0700) if
/// needed: the PIV card's and the CAC card's (`cac::state`) alike.
pub(crate) fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    make_dir(path)?;
    crate::keystore::write_atomic(path, bytes, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    }

    #[test]
    fn a_state_file_or_directory_others_may_read_or_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("piv");
        let path = sub.join("card.json");
        let state = State::parse(include_str!("testdata/state-v1.json").as_bytes()).unwrap();
        state.save(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&sub).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(State::load(&path).unwrap().as_ref(), Some(&state));
        for (mode, how) in [
            (0o644, "readable by others (mode 0644)"),
            (0o660, "readable and writable by others (mode 0660)"),
        ] {
            chmod(&path, mode);
            let e = State::load(&path).unwrap_err().to_string();
            assert!(
                e.contains(how) && e.contains(&format!("chmod 600 {}", path.display())),
                "{e}"
            );
        }
        chmod(&path, 0o600);
        drop(lock(&path).unwrap());
        for (mode, how) in [
            (0o775, "writable by others (mode 0775)"),
            (0o730, "writable by others (mode 0730)"),
        ] {
            chmod(&sub, mode);
            let e = lock(&path).unwrap_err().to_string();
            assert!(
                e.contains(how) && e.contains(&format!("chmod go-w {}", sub.display())),
                "{e}"
            );
        }
        // Readable, or writable but sticky (as /tmp is): nobody else can replace the file.
        for mode in [0o711, 0o755, 0o1777] {
            chmod(&sub, mode);
            assert!(lock(&path).is_ok(), "{mode:o}");
        }
    }

    /// crash-0cebad1c of the `piv_session` fuzz target (its input is the seed
    /// `lock-held-0cebad1c`): a card made anew in the process that had just dropped the old
    /// one was refused, its lock "held". Whoever reads `/proc/PID/fd` (lsof, `ss -p`, a
    /// monitoring agent; here a thread of our own) holds a reference to each file for a moment,
    /// and a flock goes only with a file's last reference, so a lock let go that moment may
    /// still be held. Taken again and again while another thread reads this process's fds,
    /// the lock is always had.
    #[test]
    fn lock_held_0cebad1c_a_lock_let_go_is_taken_again_while_proc_fd_is_read() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("card.json");
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for fd in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
                        let _ = std::fs::read_link(fd.path());
                        reads += 1;
                    }
                }
                reads
            })
        };
        let mut held = lock(&path).unwrap();
        for i in 0..200_000 {
            drop(held);
            held = lock(&path).unwrap_or_else(|e| panic!("cycle {i}: {e}"));
        }
        stop.store(true, Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
        drop(held);
    }

    #[test]
    fn state_errors_say_what_is_wrong() {
        let e = State::parse(b"[1, 2]").unwrap_err();
        assert!(matches!(e, StateError::NotStateFile(_)), "{e:?}");
        assert!(
            e.to_string().starts_with("not a vccid PIV state file: "),
            "{e}"
        );
        let golden = include_str!("testdata/state-v1.json");
        let v2 = golden.replace("\"version\": 1", "\"version\": 2");
        assert_eq!(
            State::parse(v2.as_bytes()).unwrap_err().to_string(),
            "state file version 2 (this vccid reads version 1); it was written by another vccid"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("card.json");
        let held = lock(&path).unwrap();
        // Refused once the lock has stayed held for LOCK_PATIENCE, not at the first try.
        let asked = std::time::Instant::now();
        let e = lock(&path).unwrap_err();
        assert!(asked.elapsed() >= LOCK_PATIENCE, "{:?}", asked.elapsed());
        assert!(matches!(e, StateError::Locked), "{e:?}");
        assert_eq!(
            e.to_string(),
            "another vccid is serving this card (its lock file is held): stop that one first, \
             or give this one its own state with state=FILE or state=off"
        );
        drop(held);
        assert_eq!(
            StateError::OtherCard {
                file: "0123456789abcdef".into(),
                card: "fedcba9876543210".into(),
            }
            .to_string(),
            "it belongs to another card (certificates 0123456789abcdef…, this card's are \
             fedcba9876543210…); move it away or name another state file"
        );
    }
}
