//! The CAC card's persistent state (issue #17): its PIN and the PIN's retry counter, which a
//! real card keeps in EEPROM, so that a restart of vccid neither gives wrong tries back (a PIN
//! could be brute-forced by restarting) nor forgets a PIN set by the service.
//!
//! The file is the PIV state file's sibling and goes through the same code (`piv::state`:
//! its lock beside it, 0600 in a 0700 directory, refused when others may read it, written
//! atomically by `keystore::write_atomic`): JSON with a format name and a version, the card it
//! belongs to, and the PIN. Version 1:
//!
//! ```json
//! {
//!   "format": "vccid CAC card state",
//!   "version": 1,
//!   "card": "<64 hex digits>",
//!   "pin": { "value": "3132333435363738", "tries": 3, "left": 2 }
//! }
//! ```
//!
//! `value` is the PIN's bytes in hex as VERIFY compares them (1 to 8, without the FF padding).

use crate::piv::state::{hex, unhex};
use crate::piv::{PinState, StateError};
use serde::{Deserialize, Serialize};
use std::path::Path;
use zeroize::Zeroizing;

/// The `format` field of every version.
pub const STATE_FORMAT: &str = "vccid CAC card state";
/// The version this code writes.
pub const STATE_VERSION: u32 = 1;

/// What the CAC card persists. `Debug` leaves the PIN's value out ([`PinState`]'s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacState {
    /// Which card the file belongs to ([`super::CacConfig::state_card`], or SHA-256 over the
    /// card's certificates, hex, as the PIV card's).
    pub card: String,
    /// The PIN: its value (unpadded), tries before blocking, tries left.
    pub pin: PinState,
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
struct FileV1 {
    format: String,
    version: u32,
    card: String,
    pin: PinV1,
}

/// Only the header, to pick the parser.
#[derive(Deserialize)]
struct Header {
    format: String,
    version: u32,
}

impl CacState {
    /// Parses a state file's bytes (any version this code knows).
    pub fn parse(bytes: &[u8]) -> Result<CacState, StateError> {
        let header: Header = serde_json::from_slice(bytes).map_err(StateError::NotCacStateFile)?;
        if header.format != STATE_FORMAT {
            return Err(StateError::CacFormat(header.format));
        }
        if header.version != STATE_VERSION {
            return Err(StateError::Version(header.version));
        }
        let f: FileV1 = serde_json::from_slice(bytes).map_err(StateError::V1)?;
        let value = Zeroizing::new(unhex("pin", &f.pin.value)?);
        // What `CacCard::set_pin` accepts, and what VERIFY can match after stripping FF.
        if value.is_empty()
            || value.len() > 8
            || value.last() == Some(&0xFF)
            || !(1..=15).contains(&f.pin.tries)
            || f.pin.left > f.pin.tries
        {
            return Err(StateError::CacPin);
        }
        Ok(CacState {
            card: f.card,
            pin: PinState {
                value,
                tries: f.pin.tries,
                left: f.pin.left,
            },
        })
    }

    /// The file's bytes (version 1), pretty-printed with a final newline.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let f = FileV1 {
            format: STATE_FORMAT.into(),
            version: STATE_VERSION,
            card: self.card.clone(),
            pin: PinV1 {
                value: Zeroizing::new(hex(&self.pin.value)),
                tries: self.pin.tries,
                left: self.pin.left,
            },
        };
        let mut out = Zeroizing::new(serde_json::to_vec_pretty(&f).unwrap_or_default());
        out.push(b'\n');
        out
    }

    /// Reads the state file at `path`; `None` when there is none yet.
    pub fn load(path: &Path) -> Result<Option<CacState>, StateError> {
        match crate::piv::state::read(path)? {
            Some(bytes) => CacState::parse(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Writes the state atomically with mode 0600, creating the directory (0700) if needed.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        crate::piv::state::write(path, &self.to_bytes())
    }
}

#[cfg(test)]
mod tests {
    /// The version-1 file, byte for byte as the card writes it (the cac_state fuzz target's
    /// seed): it parses, and writing what it holds gives the same bytes.
    #[test]
    fn the_version_1_file_is_what_the_card_writes() {
        let golden = include_bytes!("testdata/state-v1.json");
        let s = super::CacState::parse(golden).unwrap();
        assert_eq!(
            (&s.pin.value[..], s.pin.tries, s.pin.left),
            (&b"12345678"[..], 3, 2)
        );
        assert_eq!(&s.to_bytes()[..], &golden[..]);
    }

    use super::*;
    use crate::cac::{CacCard, CacConfig, CacError};
    use crate::keystore::{DefaultIdentities, FileIdentity, FileStore};
    use crate::Card;
    use apdu::hex::{h, spaced};
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;
    use std::sync::OnceLock;

    /// Three RSA-2048 identities generated once per test binary.
    fn identities() -> &'static Vec<FileIdentity> {
        static IDS: OnceLock<Vec<FileIdentity>> = OnceLock::new();
        IDS.get_or_init(|| {
            let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
            DefaultIdentities::new(dir.path()).ensure().unwrap()
        })
    }

    /// The card as a service start makes it: with its state file at `path`.
    fn card(path: &Path) -> Result<CacCard, CacError> {
        let cfg = CacConfig {
            state: Some(path.to_path_buf()),
            ..CacConfig::default()
        };
        let mut c = CacCard::new(Box::new(FileStore::open(identities()).unwrap()), &cfg)?;
        c.power_on();
        Ok(c)
    }

    fn tx(c: &mut CacCard, apdu: &str) -> String {
        spaced(&c.transmit(&h(apdu)))
    }

    const SELECT_PKI0: &str = "00 A4 04 00 07 A0 00 00 00 79 01 00";
    const WRONG: &str = "00 20 00 00 08 30 30 30 30 30 30 30 30";
    const RIGHT: &str = "00 20 00 00 08 31 32 33 34 35 36 37 38";
    const STATUS: &str = "00 20 00 00 00";

    fn path() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cards/c/cac-state.json");
        (dir, path)
    }

    fn left(path: &Path) -> u8 {
        CacState::load(path)
            .unwrap()
            .expect("a state file")
            .pin
            .left
    }

    #[test]
    fn a_wrong_verify_is_on_disk_before_its_63cx_and_a_restart_keeps_the_count() {
        let (_dir, path) = path();
        let mut c = card(&path).unwrap();
        tx(&mut c, SELECT_PKI0);
        // Made on the first try, 0600 in a 0700 directory.
        assert!(!path.exists());
        assert_eq!(tx(&mut c, WRONG), "63 C2");
        assert_eq!(left(&path), 2);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&path), mode(path.parent().unwrap())), (0o600, 0o700));
        // A second card of the same state is refused while the first holds the lock.
        let e = card(&path).unwrap_err().to_string();
        assert!(e.contains("another vccid is serving this card"), "{e}");
        drop(c);
        let mut c = card(&path).unwrap();
        tx(&mut c, SELECT_PKI0);
        assert_eq!(tx(&mut c, STATUS), "63 C2");
        assert_eq!(tx(&mut c, WRONG), "63 C1");
        assert_eq!(left(&path), 1);
        assert_eq!(tx(&mut c, RIGHT), "90 00");
        assert_eq!(left(&path), 3);
        let golden = format!(
            "{{\n  \"format\": \"vccid CAC card state\",\n  \"version\": 1,\n  \"card\": \"{}\",\n  \
             \"pin\": {{\n    \"value\": \"3132333435363738\",\n    \"tries\": 3,\n    \"left\": 3\n  }}\n}}\n",
            c.state().card
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), golden);
        assert_eq!(CacState::parse(golden.as_bytes()).unwrap(), c.state());
        // Issue #14: no PIN in its Debug.
        let debug = format!("{:?}", c.state());
        assert!(
            debug.contains("[redacted]") && !debug.contains("12345678") && !debug.contains("3132"),
            "{debug}"
        );
    }

    /// The PIN kept in the state file counts over another `pin=`, with a warning naming the
    /// file (a newcomer spent tries on the configured PIN of a card that had run before).
    #[test]
    fn a_configured_pin_the_state_file_overrides_is_warned_of() {
        let (_dir, path) = path();
        let mut c = card(&path).unwrap();
        tx(&mut c, SELECT_PKI0);
        assert_eq!(tx(&mut c, WRONG), "63 C2");
        drop(c);
        let log = crate::testlog::capture(|| drop(card(&path).unwrap()));
        assert!(!log.contains("WARN"), "{log}");
        let cfg = CacConfig {
            state: Some(path.to_path_buf()),
            pin: zeroize::Zeroizing::new(b"24681357".to_vec()),
            ..CacConfig::default()
        };
        let mut c = None;
        let log = crate::testlog::capture(|| {
            c = Some(CacCard::new(Box::new(FileStore::open(identities()).unwrap()), &cfg).unwrap())
        });
        assert!(
            log.contains("WARN card::state:")
                && log.contains("the card's PIN is the one its state file keeps")
                && log.contains(&path.display().to_string()),
            "{log}"
        );
        assert!(!log.contains("24681357") && !log.contains("3234"), "{log}");
        let mut c = c.unwrap();
        c.power_on();
        tx(&mut c, SELECT_PKI0);
        assert_eq!(tx(&mut c, RIGHT), "90 00");
    }

    #[test]
    fn a_blocked_pin_stays_blocked_after_a_restart_and_a_pin_set_stays_set() {
        let (_dir, path) = path();
        let mut c = card(&path).unwrap();
        tx(&mut c, SELECT_PKI0);
        for sw in ["63 C2", "63 C1", "63 C0"] {
            assert_eq!(tx(&mut c, WRONG), sw);
        }
        drop(c);
        let mut c = card(&path).unwrap();
        tx(&mut c, SELECT_PKI0);
        assert_eq!(tx(&mut c, STATUS), "69 83");
        assert_eq!(tx(&mut c, RIGHT), "69 83");
        assert_eq!(c.pin_tries_left(), 0);
        // The service's reset (card-set-pin, card-unblock) is on disk when it returns.
        assert!(c.set_pin(b"4321").unwrap());
        drop(c);
        let mut c = card(&path).unwrap();
        tx(&mut c, SELECT_PKI0);
        assert_eq!(tx(&mut c, RIGHT), "63 C2");
        assert_eq!(
            tx(&mut c, "00 20 00 00 08 34 33 32 31 FF FF FF FF"),
            "90 00"
        );
    }

    #[test]
    fn a_file_that_cannot_be_written_answers_6581_and_counts_nothing() {
        let (_dir, path) = path();
        let mut c = card(&path).unwrap();
        tx(&mut c, SELECT_PKI0);
        // A directory where the file goes: the rename over it fails (as root too).
        std::fs::create_dir_all(&path).unwrap();
        assert_eq!(tx(&mut c, WRONG), "65 81");
        assert_eq!(tx(&mut c, STATUS), "63 C3");
        // The right PIN gets the same answer, and no login: no guess without its count.
        assert_eq!(tx(&mut c, RIGHT), "65 81");
        assert!(!c.is_logged_in());
        assert_eq!(tx(&mut c, STATUS), "63 C3");
        assert!(matches!(
            c.set_pin(b"4321"),
            Err(crate::enroll::EnrollError::Save { .. })
        ));
        std::fs::remove_dir(&path).unwrap();
        assert_eq!(tx(&mut c, RIGHT), "90 00");
        assert_eq!(left(&path), 3);
    }

    #[test]
    fn a_file_of_another_card_or_that_others_may_read_is_refused_with_the_reason() {
        let (_dir, path) = path();
        assert!(card(&path).unwrap().set_pin(b"1111").unwrap());
        let mine = CacState::load(&path).unwrap().unwrap();
        let other = CacState {
            card: "0123456789abcdef".repeat(4),
            ..mine.clone()
        };
        other.save(&path).unwrap();
        let e = card(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("CAC state file {}: ", path.display()))
                && e.contains("it belongs to another card (certificates 0123456789abcdef…"),
            "{e}"
        );
        // Refused, and left as it was.
        assert_eq!(CacState::load(&path).unwrap().unwrap(), other);
        mine.save(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = card(&path).unwrap_err().to_string();
        assert!(
            e.contains("readable by others (mode 0640)")
                && e.contains(&format!("chmod 600 {}", path.display())),
            "{e}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        // A PIV state file (or any other format) named as the CAC card's is not taken.
        std::fs::write(
            &path,
            "{\"format\": \"vccid PIV card state\", \"version\": 1}",
        )
        .unwrap();
        let e = card(&path).unwrap_err().to_string();
        assert!(
            e.ends_with("format \"vccid PIV card state\" is not \"vccid CAC card state\""),
            "{e}"
        );
        for (text, want) in [
            ("[]", "not a vccid CAC state file: "),
            (
                "{\"format\": \"vccid CAC card state\", \"version\": 2}",
                "state file version 2",
            ),
            (
                "{\"format\": \"vccid CAC card state\", \"version\": 1, \"card\": \"c\", \
                 \"pin\": {\"value\": \"31ff\", \"tries\": 3, \"left\": 3}}",
                "pin: the value must be 1 to 8 bytes",
            ),
        ] {
            let e = CacState::parse(text.as_bytes()).unwrap_err().to_string();
            assert!(e.starts_with(want), "{text}: {e}");
        }
        // A named card (a generated one) takes its file whatever its certificates.
        let cfg = CacConfig {
            state: Some(path.clone()),
            state_card: Some("generated card c".into()),
            ..CacConfig::default()
        };
        CacState {
            card: "generated card c".into(),
            ..mine
        }
        .save(&path)
        .unwrap();
        let c = CacCard::new(Box::new(FileStore::open(identities()).unwrap()), &cfg).unwrap();
        assert_eq!(c.pin_tries_left(), 3);
    }
}
