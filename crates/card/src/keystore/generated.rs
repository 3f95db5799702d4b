//! Generated cards (`--card emulated,backend=generated,name=ID`): the default card's four
//! identities (three RSA-2048, one P-256), made for card ID and kept in `DATA_DIR/cards/ID/`
//! under the same rules (`carddir`: all together, once, never over an existing card), or made
//! in memory only (`ephemeral=on`). Every such card is a different card: new keys, random
//! certificate serial numbers, and subjects that name the card.
//!
//! Subjects: `CN=ID` for the first identity (the CAC card's first PKI applet and the PIV
//! card's 9A, PIV authentication: the certificate a login uses, and the one an SSSD matching
//! rule such as `<SUBJECT>^CN=ID$` should pick alone), `CN=ID 2`, `CN=ID 3`, `CN=ID 4` for the
//! others; or a template in which `{id}` and `{n}` (1..4, slot order) are replaced.

use super::carddir::{subject_is, Attr, Blueprint, CardDir, Subject, ECC, NAMES};
use super::{FileStore, KeyError};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The longest card name: a file name on every file system, and short enough for a subject.
pub const MAX_NAME: usize = 64;

/// A generated card's name: 1 to 64 ASCII letters, digits, `-`, `_` and `.`, not starting
/// with `.`; so it is one safe file name (never `..`, a hidden file or a path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardName(String);

/// Why a card name is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CardNameError {
    /// No characters.
    #[error(
        "the card name is empty; give name=ID (1 to {MAX_NAME} letters, digits, '-', '_' or '.')"
    )]
    Empty,
    /// Too long.
    #[error("the card name {0:?} is longer than {MAX_NAME} characters")]
    TooLong(String),
    /// A leading dot (a hidden file, `.` or `..`).
    #[error("the card name {0:?} starts with '.'; it names a directory under DATA_DIR/cards and must not be hidden or a path")]
    LeadingDot(String),
    /// A character outside the safe set.
    #[error("the card name {name:?} contains {ch:?}; use letters, digits, '-', '_' and '.' only (it names a directory under DATA_DIR/cards)")]
    Character {
        /// the name given
        name: String,
        /// the first character refused
        ch: char,
    },
}

impl CardName {
    /// Checks a name.
    pub fn new(name: &str) -> Result<Self, CardNameError> {
        if name.is_empty() {
            return Err(CardNameError::Empty);
        }
        if let Some(ch) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(CardNameError::Character {
                name: name.to_string(),
                ch,
            });
        }
        if name.len() > MAX_NAME {
            return Err(CardNameError::TooLong(name.to_string()));
        }
        if name.starts_with('.') {
            return Err(CardNameError::LeadingDot(name.to_string()));
        }
        Ok(CardName(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for CardName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One piece of a template value: text, or a placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Id,
    N,
}

/// A subject template (`subject=`): a distinguished name in RFC 4514 text, most specific
/// attribute first (`CN={id} {n},O=Example`), with the attribute types CN, O, OU, L, ST and C;
/// `{id}` becomes the card name and `{n}` the identity's number (1..4, in slot order). A
/// template without `=` is the common name alone (`{id}-{n}` means `CN={id}-{n}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectTemplate {
    /// In text order.
    rdns: Vec<(Attr, Vec<Piece>)>,
}

/// Why a subject template is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SubjectError {
    /// Nothing, or an attribute without a value.
    #[error("subject={0:?}: every attribute needs a value (e.g. CN={{id}})")]
    Empty(String),
    /// An attribute type the template does not take.
    #[error("subject: unknown attribute type {0:?}; expected CN, O, OU, L, ST or C (RFC 4514)")]
    Attribute(String),
    /// The same type twice.
    #[error("subject: {0} given twice")]
    Twice(&'static str),
    /// A `{...}` that is neither `{id}` nor `{n}`, or an unclosed `{`.
    #[error("subject: unknown placeholder {0:?}; expected {{id}} or {{n}}")]
    Placeholder(String),
}

impl SubjectTemplate {
    /// Parses a template.
    pub fn parse(text: &str) -> Result<Self, SubjectError> {
        let mut rdns: Vec<(Attr, Vec<Piece>)> = Vec::new();
        let parts: Vec<(&str, &str)> = if text.contains('=') {
            text.split(',')
                .map(|p| p.split_once('=').unwrap_or((p, "")))
                .collect()
        } else {
            vec![("CN", text)]
        };
        for (ty, value) in parts {
            let ty = ty.trim();
            let (attr, short) = Attr::ALL
                .into_iter()
                .find(|(_, s)| s.eq_ignore_ascii_case(ty))
                .ok_or_else(|| SubjectError::Attribute(ty.to_string()))?;
            if rdns.iter().any(|(a, _)| *a == attr) {
                return Err(SubjectError::Twice(short));
            }
            if value.trim().is_empty() {
                return Err(SubjectError::Empty(text.to_string()));
            }
            rdns.push((attr, pieces(value)?));
        }
        Ok(SubjectTemplate { rdns })
    }

    /// The subject of identity `n` (1-based) of card `id`, in certificate (DER) order: RFC
    /// 4514 §2.1 writes the last RDN of the sequence first.
    fn render(&self, id: &CardName, n: usize) -> Subject {
        self.rdns
            .iter()
            .rev()
            .map(|(attr, pieces)| {
                let value = pieces
                    .iter()
                    .map(|p| match p {
                        Piece::Text(t) => t.clone(),
                        Piece::Id => id.to_string(),
                        Piece::N => n.to_string(),
                    })
                    .collect();
                (*attr, value)
            })
            .collect()
    }
}

/// A template value cut at its placeholders.
fn pieces(value: &str) -> Result<Vec<Piece>, SubjectError> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            out.push(Piece::Text(rest[..open].to_string()));
        }
        let after = &rest[open..];
        let close = after
            .find('}')
            .ok_or_else(|| SubjectError::Placeholder(after.to_string()))?;
        out.push(match &after[..=close] {
            "{id}" => Piece::Id,
            "{n}" => Piece::N,
            other => return Err(SubjectError::Placeholder(other.to_string())),
        });
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest.to_string()));
    }
    Ok(out)
}

/// A generated card's identities: where they are kept, and how they are made.
#[derive(Debug, Clone)]
pub struct GeneratedIdentities {
    card: CardDir,
    /// The first identity's subject as `subject=` asks for it; `None` without `subject=`.
    asked: Option<Subject>,
}

impl GeneratedIdentities {
    /// Card `id`'s identities, kept in `data_dir/cards/ID/`, with the subjects of `template`
    /// (default `CN=ID`, `CN=ID 2`, ...).
    pub fn new(data_dir: &Path, id: &CardName, template: Option<&SubjectTemplate>) -> Self {
        let subject = |n: usize| match template {
            Some(t) => t.render(id, n),
            None if n == 1 => vec![(Attr::Cn, id.to_string())],
            None => vec![(Attr::Cn, format!("{id} {n}"))],
        };
        let blueprints = NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| Blueprint {
                name,
                subject: subject(i + 1),
                ecc: *name == ECC,
            })
            .collect();
        GeneratedIdentities {
            card: CardDir::new(
                &Self::cards_dir(data_dir),
                id.as_str(),
                format!("the generated card {id}"),
                blueprints,
                false,
            ),
            asked: template.map(|_| subject(1)),
        }
    }

    /// The directory the generated cards are kept in: `data_dir/cards`.
    pub fn cards_dir(data_dir: &Path) -> PathBuf {
        data_dir.join("cards")
    }

    /// Where this card's files are.
    pub fn dir(&self) -> &Path {
        self.card.dir()
    }

    /// The key store over the card's files: the three RSA identities, and the P-256 one
    /// `with_ecc` (the PIV card's 9E). Makes the whole card when there is none yet; an
    /// existing card is used as it is, and one whose first subject is not the one `subject=`
    /// asks for is refused (its certificates cannot change without changing the card).
    pub fn open(&self, with_ecc: bool) -> Result<FileStore, KeyError> {
        use super::KeyStore;
        self.finish_interrupted()?;
        let store = self.card.open(with_ecc)?;
        if let (Some(asked), Some(first)) = (&self.asked, store.identities().first()) {
            if !subject_is(&first.cert_der, asked) {
                let have = super::certificate_subject(&first.cert_der).unwrap_or_default();
                return Err(self.card.err(
                    self.card.dir(),
                    format!(
                        "this card exists, with the subject {have:?}, and subject= asks for \
                         another; a card's certificates are made once. Drop subject= to use \
                         the card as it is, or move {} away to make a new card (with new keys)",
                        self.card.dir().display()
                    ),
                ));
            }
        }
        Ok(store)
    }

    /// Whether `cert_der` may be identity `name`'s certificate: `subject=` fixes the first
    /// identity's subject (see [`open`](Self::open)), the others are free.
    pub(crate) fn subject_allowed(&self, name: &str, cert_der: &[u8]) -> bool {
        match &self.asked {
            Some(asked) if name == NAMES[0] => subject_is(cert_der, asked),
            _ => true,
        }
    }

    /// Card `id`'s identities made in memory only (`ephemeral=on`): no directory is looked
    /// at, nothing is read or written, and every call makes a new card.
    pub fn ephemeral(
        id: &CardName,
        template: Option<&SubjectTemplate>,
        with_ecc: bool,
    ) -> Result<FileStore, KeyError> {
        Self::new(Path::new(""), id, template)
            .card
            .in_memory(with_ecc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keystore::{certificate_subject, KeyStore};

    fn name(s: &str) -> CardName {
        CardName::new(s).unwrap()
    }

    fn subjects(store: &FileStore) -> Vec<String> {
        store
            .identities()
            .iter()
            .map(|i| certificate_subject(&i.cert_der).unwrap())
            .collect()
    }

    #[test]
    fn card_names_are_safe_file_names() {
        for ok in [
            "alice",
            "a",
            "ci-runner_7.build",
            "A.b-c_d",
            &"x".repeat(64),
        ] {
            assert_eq!(CardName::new(ok).unwrap().as_str(), ok);
        }
        assert_eq!(CardName::new(""), Err(CardNameError::Empty));
        assert!(matches!(
            CardName::new(&"x".repeat(65)),
            Err(CardNameError::TooLong(_))
        ));
        for bad in [".", "..", ".hidden"] {
            assert!(
                matches!(CardName::new(bad), Err(CardNameError::LeadingDot(_))),
                "{bad}"
            );
        }
        for (bad, ch) in [
            ("a/b", '/'),
            ("../x", '/'),
            ("a b", ' '),
            ("al\u{e9}", '\u{e9}'),
            ("a\0", '\0'),
        ] {
            assert_eq!(
                CardName::new(bad),
                Err(CardNameError::Character {
                    name: bad.into(),
                    ch
                }),
                "{bad}"
            );
        }
        let e = CardName::new("a/b").unwrap_err().to_string();
        assert!(e.contains("letters, digits, '-', '_' and '.'"), "{e}");
    }

    #[test]
    fn subject_templates() {
        let t = SubjectTemplate::parse("CN={id} {n},OU=Cards,O=Example").unwrap();
        assert_eq!(
            t.render(&name("alice"), 2),
            vec![
                (Attr::O, "Example".to_string()),
                (Attr::Ou, "Cards".to_string()),
                (Attr::Cn, "alice 2".to_string()),
            ]
        );
        let bare = SubjectTemplate::parse("{id}-{n}").unwrap();
        assert_eq!(
            bare.render(&name("bob"), 3),
            vec![(Attr::Cn, "bob-3".to_string())]
        );
        for (bad, want) in [
            ("CN=", SubjectError::Empty("CN=".into())),
            ("", SubjectError::Empty("".into())),
            ("XX=a", SubjectError::Attribute("XX".into())),
            ("CN=a,cn=b", SubjectError::Twice("CN")),
            ("CN={name}", SubjectError::Placeholder("{name}".into())),
            ("CN={id", SubjectError::Placeholder("{id".into())),
        ] {
            assert_eq!(SubjectTemplate::parse(bad), Err(want), "{bad:?}");
        }
    }

    #[test]
    fn a_generated_card_is_made_once_with_subjects_that_name_it() {
        let data = tempfile::tempdir().unwrap();
        let alice = GeneratedIdentities::new(data.path(), &name("alice"), None);
        assert_eq!(alice.dir(), data.path().join("cards/alice"));
        let store = alice.open(true).unwrap();
        assert_eq!(
            subjects(&store),
            ["CN=alice", "CN=alice 2", "CN=alice 3", "CN=alice 4"]
        );
        assert_eq!(store.identities()[0].modulus_bits, 2048);
        assert_eq!(
            store.identities()[3].ec_curve,
            Some(crate::keystore::EcCurve::P256)
        );
        // The CAC view: the RSA identities alone.
        assert_eq!(alice.open(false).unwrap().identities().len(), 3);
        // A second start reuses the files: the same certificates, nothing rewritten.
        let files: Vec<_> = ["cert1.crt.pem", "cert1.key.pem", "piv-ecc.key.pem"]
            .iter()
            .map(|f| std::fs::read(alice.dir().join(f)).unwrap())
            .collect();
        let again = GeneratedIdentities::new(data.path(), &name("alice"), None)
            .open(true)
            .unwrap();
        for (a, b) in store.identities().iter().zip(again.identities()) {
            assert_eq!(a.cert_der, b.cert_der);
        }
        let after: Vec<_> = ["cert1.crt.pem", "cert1.key.pem", "piv-ecc.key.pem"]
            .iter()
            .map(|f| std::fs::read(alice.dir().join(f)).unwrap())
            .collect();
        assert_eq!(files, after);
        // Another name is another card: other keys, other serial numbers.
        let bob = GeneratedIdentities::new(data.path(), &name("bob"), None)
            .open(true)
            .unwrap();
        assert_eq!(subjects(&bob)[0], "CN=bob");
        for (a, b) in store.identities().iter().zip(bob.identities()) {
            assert_ne!(serial(&a.cert_der), serial(&b.cert_der));
            assert_ne!(
                crate::keystore::cert_spki(&a.cert_der).unwrap(),
                crate::keystore::cert_spki(&b.cert_der).unwrap()
            );
        }
        let mut cards: Vec<String> = std::fs::read_dir(data.path().join("cards"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        cards.sort();
        assert_eq!(cards, ["alice", "bob"]);
    }

    fn serial(cert: &[u8]) -> Vec<u8> {
        use der::Decode;
        x509_cert::Certificate::from_der(cert)
            .unwrap()
            .tbs_certificate()
            .serial_number()
            .as_bytes()
            .to_vec()
    }

    #[test]
    fn a_template_names_every_identity_and_must_match_an_existing_card() {
        let data = tempfile::tempdir().unwrap();
        let t = SubjectTemplate::parse("CN={id} card {n},O=Example").unwrap();
        let c = GeneratedIdentities::new(data.path(), &name("ci"), Some(&t));
        let store = c.open(true).unwrap();
        assert_eq!(
            subjects(&store),
            [
                "CN=ci card 1,O=Example",
                "CN=ci card 2,O=Example",
                "CN=ci card 3,O=Example",
                "CN=ci card 4,O=Example"
            ]
        );
        // The same template, and no template, use the card as it is.
        assert!(c.open(false).is_ok());
        assert!(GeneratedIdentities::new(data.path(), &name("ci"), None)
            .open(false)
            .is_ok());
        // Another template does not silently leave the card as it was.
        let other = SubjectTemplate::parse("CN={id}").unwrap();
        let e = GeneratedIdentities::new(data.path(), &name("ci"), Some(&other))
            .open(false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("CN=ci card 1,O=Example") && e.contains("Drop subject="),
            "{e}"
        );
    }

    #[test]
    fn a_damaged_generated_card_is_never_remade() {
        let data = tempfile::tempdir().unwrap();
        let c = GeneratedIdentities::new(data.path(), &name("alice"), None);
        c.open(true).unwrap();
        // A named card has no legacy three-identity form: piv-ecc missing is damage.
        for f in ["piv-ecc.crt.pem", "piv-ecc.key.pem"] {
            std::fs::remove_file(c.dir().join(f)).unwrap();
        }
        for with_ecc in [false, true] {
            let e = c.open(with_ecc).unwrap_err().to_string();
            assert!(
                e.contains("piv-ecc.crt.pem")
                    && e.contains("the generated card alice lacks")
                    && e.contains("move"),
                "{e}"
            );
        }
        assert!(!c.dir().join("piv-ecc.key.pem").exists());
    }

    #[test]
    fn an_ephemeral_card_writes_nothing() {
        // Its directory would be ./cards/ci: nothing is made there.
        let cwd = std::env::current_dir().unwrap();
        let mut store = GeneratedIdentities::ephemeral(&name("ci"), None, true).unwrap();
        assert_eq!(subjects(&store), ["CN=ci", "CN=ci 2", "CN=ci 3", "CN=ci 4"]);
        assert_eq!(store.ec_sign(3, &[1; 32]).unwrap()[0], 0x30);
        let block = crate::keystore::testutil::pkcs1_sha256_block(b"x", 256);
        assert_eq!(store.rsa_raw(0, &block).unwrap().len(), 256);
        // Each start is a new card.
        let again = GeneratedIdentities::ephemeral(&name("ci"), None, false).unwrap();
        assert_eq!(again.identities().len(), 3);
        assert_ne!(
            store.identities()[0].cert_der,
            again.identities()[0].cert_der
        );
        assert!(!cwd.join("cards").exists());
    }
}
