//! `vccid serve`'s configuration file (TOML, issue #15): the service's directories and control
//! socket, the cards, and the readers the cards sit in. Every key is declared here, unknown
//! keys are refused (`deny_unknown_fields`), and a mistake is reported with the file, the line
//! and the key; nothing starts before the whole file has been checked.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use toml::Spanned;
use zeroize::Zeroizing;

/// A configuration that cannot be used: where, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// Why (in the message, not as a source: the message is the whole story).
        error: std::io::Error,
    },
    /// TOML syntax, a type, or a key the configuration does not have.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// toml's message, which names the line, the column and the key.
        message: String,
    },
    /// A value the syntax allows but the service cannot use.
    #[error("{path}:{line}: {key}: {why}")]
    Invalid {
        /// The file.
        path: String,
        /// The line of the table or value at fault.
        line: usize,
        /// The key, as a TOML path (`reader[2].cards`).
        key: String,
        /// Why.
        why: String,
    },
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[service]`: directories, the control socket.
    #[serde(default)]
    pub service: ServiceConfig,
    /// `[[card]]` tables.
    #[serde(default, rename = "card")]
    pub cards: Vec<CardConfig>,
    /// `[[reader]]` tables.
    #[serde(default, rename = "reader")]
    pub readers: Vec<ReaderConfig>,
}

/// `[service]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Where cards keep their identities and PIV state (default: systemd's
    /// `$STATE_DIRECTORY`, `/var/lib/vccid` for the packaged unit; else vccid's data
    /// directory, `$VCCID_DATA_DIR` or `$XDG_DATA_HOME/vccid` or `~/.local/share/vccid`).
    pub state_dir: Option<PathBuf>,
    /// The control socket (default: `control.sock` in systemd's `$RUNTIME_DIRECTORY`, else
    /// `$XDG_RUNTIME_DIR/vccid/control.sock`, or `/run/vccid/control.sock` as root). Unix
    /// only: never TCP.
    pub control: Option<PathBuf>,
    /// The control socket's mode, octal (default "0600").
    pub control_mode: Option<String>,
    /// The control socket's owner (default: the user vccid runs as).
    pub control_owner: Option<String>,
    /// The control socket's group (its members may use `vccid ctl`).
    pub control_group: Option<String>,
    /// Allow plaintext listeners on non-loopback addresses (each connection logs a warning).
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// The web console's address (loopback IP:PORT; port 0 for any free one); none: no console.
    pub console: Option<String>,
    /// A `tls-creds-x509` directory: the console over TLS, on any address.
    pub console_tls: Option<PathBuf>,
}

/// `[[card]]`: one card. `Debug` leaves the PIN and PUK out.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CardConfig {
    /// The card's name (letters, digits, `-`, `_`, `.`).
    pub id: Spanned<String>,
    /// `emulated` (default), `passthru` (the card lives in a VSCard client) or `hardware`.
    #[serde(default)]
    pub kind: CardKind,
    /// `cac` (default), `piv` or `cac+piv`.
    pub profile: Option<String>,
    /// Where the keys are: `generated` (default: identities of its own, made for this card),
    /// `default` (the embedded default card), `files`, `certificates` (an NSS database) or
    /// `pkcs11`; the store's own settings go in `properties`.
    pub keys: Option<String>,
    /// Generated keys kept in memory only: nothing is written to disk (for CI).
    #[serde(default)]
    pub ephemeral: bool,
    /// The card PIN (default 12345678 on CAC, 123456 on PIV). Prefer `pin_file`. Wiped when
    /// dropped, as the PUK.
    pub pin: Option<Zeroizing<String>>,
    /// A file whose first line is the PIN.
    pub pin_file: Option<PathBuf>,
    /// The PIV PUK.
    pub puk: Option<Zeroizing<String>>,
    /// A file whose first line is the PUK.
    pub puk_file: Option<PathBuf>,
    /// Wrong PINs before the PIN blocks (1..15, default 3).
    pub pin_tries: Option<u8>,
    /// More card properties in `--card` syntax (`cert1`, `key1`, `db`, `uri`, `subject`,
    /// `state`, ...), as strings.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// For `kind = "passthru"`: where to listen for the VSCard client.
    pub listen: Option<String>,
    /// For `kind = "hardware"`: the PC/SC reader name filter.
    pub reader: Option<String>,
}

impl fmt::Debug for CardConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = |v: &Option<Zeroizing<String>>| v.as_ref().map(|_| card::Redacted);
        f.debug_struct("CardConfig")
            .field("id", self.id.get_ref())
            .field("kind", &self.kind)
            .field("profile", &self.profile)
            .field("keys", &self.keys)
            .field("ephemeral", &self.ephemeral)
            .field("pin", &secret(&self.pin))
            .field("pin_file", &self.pin_file)
            .field("puk", &secret(&self.puk))
            .field("puk_file", &self.puk_file)
            .field("pin_tries", &self.pin_tries)
            // Names only: a PKCS#11 URI may carry pin-value=.
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .field("listen", &self.listen)
            .field("reader", &self.reader)
            .finish()
    }
}

/// What a card is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CardKind {
    /// vccid's own CAC/PIV card.
    #[default]
    Emulated,
    /// The card of a VSCard client (vscclient, libcacard's).
    Passthru,
    /// The host's real card through PC/SC.
    Hardware,
}

/// How a reader reaches its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// pcscd's vsmartcard vpcd driver (one slot per reader: vpcd's port for that reader).
    Vpcd,
    /// A USB CCID reader over usbredir; QEMU connects (`-device usb-redir`).
    Usbredir,
    /// The same, vccid connecting to QEMU's `-chardev socket,server=on`.
    UsbredirConnect,
    /// A USB CCID reader over USB/IP; readers on one address share a server, bus ids 1-1,
    /// 1-2, ... in file order.
    Usbip,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Vpcd => "vpcd",
            Transport::Usbredir => "usbredir",
            Transport::UsbredirConnect => "usbredir-connect",
            Transport::Usbip => "usbip",
        })
    }
}

/// `[[reader]]`: one reader.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReaderConfig {
    /// The reader's name (letters, digits, `-`, `_`, `.`).
    pub id: Spanned<String>,
    /// `vpcd`, `usbredir`, `usbredir-connect` or `usbip`.
    pub transport: Transport,
    /// `HOST:PORT` or (usbredir) `unix:PATH`. Defaults: vpcd 127.0.0.1:35963, usbredir
    /// 127.0.0.1:4000, usbip 127.0.0.1:3240.
    pub address: Option<String>,
    /// A Unix socket's mode, octal (default "0600").
    pub mode: Option<String>,
    /// A Unix socket's owner (user name).
    pub owner: Option<String>,
    /// A Unix socket's group (libvirt's QEMU runs as a user of its own).
    pub group: Option<String>,
    /// TLS (usbredir): a QEMU `tls-creds-x509` directory.
    pub tls: Option<PathBuf>,
    /// With `tls`: clients must present a certificate from the CA (default true).
    pub tls_verify_peer: Option<bool>,
    /// Slots of a USB reader (1..16, default 1; vpcd readers have one).
    pub slots: Option<u8>,
    /// The cards in the slots, in order; "" for an empty slot.
    #[serde(default)]
    pub cards: Vec<String>,
}

impl ReaderConfig {
    /// The number of slots.
    pub fn slot_count(&self) -> usize {
        usize::from(self.slots.unwrap_or(1).max(1))
    }

    /// The registry id of slot `n`: the reader's id for a one-slot reader, else `ID/N`.
    pub fn slot_id(&self, n: usize) -> String {
        slot_id(self.id.get_ref(), self.slot_count(), n)
    }
}

/// The registry id of slot `n` of reader `reader` with `slots` slots.
pub fn slot_id(reader: &str, slots: usize, n: usize) -> String {
    if slots == 1 {
        reader.to_string()
    } else {
        format!("{reader}/{n}")
    }
}

/// Whether `slot` is a slot of reader `reader`: the reader's own id for a one-slot reader,
/// `READER/N` for the slots of one with more ([`slot_id`]).
pub fn slot_in_reader(slot: &str, reader: &str) -> bool {
    slot == reader
        || slot
            .strip_prefix(reader)
            .is_some_and(|n| n.starts_with('/'))
}

/// A name usable as a card or reader id (and as a file name: generated cards live in a
/// directory of that name).
pub fn valid_id(id: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&id.len())
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not a valid id: 1 to 64 letters, digits, '-', '_' or '.', not starting \
             with '.'"
        ))
    }
}

/// Parses a mode given as an octal string ("0660").
pub fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{text:?} is not an octal mode such as \"0660\""))
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.display().to_string(),
            error,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and checks `text`, naming `path` in errors.
    pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        cfg.check(text, path)?;
        Ok(cfg)
    }

    /// The checks the types cannot make: ids valid and unique, every card named by a reader
    /// exists and sits in one slot at most, slot counts, modes, addresses.
    fn check(&self, text: &str, path: &str) -> Result<(), ConfigError> {
        let line_of = |span: std::ops::Range<usize>| {
            text[..span.start.min(text.len())].matches('\n').count() + 1
        };
        let invalid =
            |span: std::ops::Range<usize>, key: String, why: String| ConfigError::Invalid {
                path: path.to_string(),
                line: line_of(span),
                key,
                why,
            };
        let mut cards = BTreeSet::new();
        for (i, c) in self.cards.iter().enumerate() {
            let at = |(k, why): (&str, String)| {
                let key = if k.is_empty() {
                    format!("card[{i}]")
                } else {
                    format!("card[{i}].{k}")
                };
                invalid(c.id.span(), key, why)
            };
            check_card(c).map_err(at)?;
            if !cards.insert(c.id.get_ref().clone()) {
                return Err(at((
                    "id",
                    format!("a card {:?} is defined already", c.id.get_ref()),
                )));
            }
        }
        let mut readers = BTreeSet::new();
        let mut placed: BTreeMap<&str, String> = BTreeMap::new();
        let mut addresses: BTreeMap<String, String> = BTreeMap::new();
        for (i, r) in self.readers.iter().enumerate() {
            let at =
                |(k, why): (&str, String)| invalid(r.id.span(), format!("reader[{i}].{k}"), why);
            check_reader(r).map_err(at)?;
            if !readers.insert(r.id.get_ref().clone()) {
                return Err(at((
                    "id",
                    format!("a reader {:?} is defined already", r.id.get_ref()),
                )));
            }
            // Two readers on one address would fight over it (USB/IP readers share theirs: one
            // server exports them all).
            if r.transport != Transport::Usbip {
                let a = r.address.clone().unwrap_or_else(|| match r.transport {
                    Transport::Vpcd => "127.0.0.1:35963".into(),
                    _ => "127.0.0.1:4000".into(),
                });
                let key = format!("{}:{a}", r.transport == Transport::Vpcd);
                if let Some(other) = addresses.insert(key, r.id.get_ref().clone()) {
                    return Err(at((
                        "address",
                        format!("{a} is reader {other:?}'s address already"),
                    )));
                }
            }
            for c in r.cards.iter().filter(|c| !c.is_empty()) {
                if !cards.contains(c) {
                    return Err(at(("cards", format!("no card {c:?} is defined"))));
                }
                if let Some(other) = placed.insert(c, r.id.get_ref().clone()) {
                    return Err(at((
                        "cards",
                        format!("card {c:?} is in reader {other:?} already"),
                    )));
                }
            }
        }
        if let Some(m) = &self.service.control_mode {
            parse_mode(m).map_err(|w| ConfigError::Invalid {
                path: path.to_string(),
                line: text
                    .lines()
                    .position(|l| l.trim_start().starts_with("control_mode"))
                    .map_or(1, |n| n + 1),
                key: "service.control_mode".into(),
                why: w,
            })?;
        }
        Ok(())
    }
}

/// What is wrong with one card table on its own: the key ("" for the table) and why. The
/// configuration file and the control socket's `card-add` both check with it.
pub fn check_card(c: &CardConfig) -> Result<(), (&'static str, String)> {
    valid_id(c.id.get_ref()).map_err(|w| ("id", w))?;
    if let Some(t) = c.pin_tries {
        if !(1..=15).contains(&t) {
            return Err(("pin_tries", format!("{t}: expected 1..15")));
        }
    }
    if c.pin.is_some() && c.pin_file.is_some() {
        return Err(("pin", "give pin or pin_file, not both".into()));
    }
    let wrong_kind = match c.kind {
        CardKind::Emulated => (c.listen.is_some() || c.reader.is_some())
            .then_some("listen and reader apply to kind = \"passthru\" / \"hardware\""),
        CardKind::Passthru | CardKind::Hardware => {
            (c.keys.is_some() || c.profile.is_some() || c.ephemeral || !c.properties.is_empty())
                .then_some("keys, profile, ephemeral and properties apply to emulated cards")
        }
    };
    if let Some(why) = wrong_kind {
        return Err(("", why.into()));
    }
    if c.kind == CardKind::Emulated {
        if let Some(p) = c.profile.as_deref() {
            if !matches!(p, "cac" | "piv" | "cac+piv") {
                return Err(("profile", format!("{p:?}: expected cac, piv or cac+piv")));
            }
        }
        if let Some(k) = c.keys.as_deref() {
            if !matches!(
                k,
                "generated" | "default" | "files" | "certificates" | "pkcs11"
            ) {
                return Err((
                    "keys",
                    format!("{k:?}: expected generated, default, files, certificates or pkcs11"),
                ));
            }
        }
        if c.ephemeral && c.keys.as_deref().is_some_and(|k| k != "generated") {
            return Err(("ephemeral", "applies to generated keys only".into()));
        }
        // The same parser the card will be made with: what it refuses is refused now, before
        // anything starts (`serve --check`, a reload), not when the card is made.
        crate::spec::parse(&emulated_spec_text(c)).map_err(|e| ("properties", format!("{e:#}")))?;
    }
    Ok(())
}

/// What is wrong with one reader table on its own (the cards it names aside): the key and
/// why. The configuration file and the control socket's `reader-add` both check with it.
pub fn check_reader(r: &ReaderConfig) -> Result<(), (&'static str, String)> {
    valid_id(r.id.get_ref()).map_err(|w| ("id", w))?;
    let slots = r.slots.unwrap_or(1);
    let max = if r.transport == Transport::Vpcd {
        1
    } else {
        16
    };
    if !(1..=max).contains(&slots) {
        return Err((
            "slots",
            format!("{slots}: a {} reader has 1..{max}", r.transport),
        ));
    }
    if r.cards.len() > usize::from(slots) {
        return Err((
            "cards",
            format!("{} cards for {slots} slot(s)", r.cards.len()),
        ));
    }
    if let Some(m) = &r.mode {
        parse_mode(m).map_err(|w| ("mode", w))?;
    }
    if let Some(a) = &r.address {
        let parsed = link::Addr::parse(a).map_err(|e| ("address", e.to_string()))?;
        let unix = matches!(parsed, link::Addr::Unix(_));
        if unix && matches!(r.transport, Transport::Vpcd | Transport::Usbip) {
            return Err((
                "address",
                format!("{} runs over TCP only: give HOST:PORT", r.transport),
            ));
        }
        if !unix && (r.mode.is_some() || r.owner.is_some() || r.group.is_some()) {
            return Err((
                "mode",
                "mode, owner and group apply to unix: addresses".into(),
            ));
        }
    }
    if r.tls.is_some()
        && !matches!(
            r.transport,
            Transport::Usbredir | Transport::UsbredirConnect
        )
    {
        return Err((
            "tls",
            format!(
                "{} has no TLS (its peer speaks plaintext): keep it on loopback",
                r.transport
            ),
        ));
    }
    Ok(())
}

/// The `--card` specification text of an emulated card of the configuration (the same parser
/// as the command line then reads it, so the two cannot drift apart).
pub fn emulated_spec_text(c: &CardConfig) -> String {
    let mut props: BTreeMap<String, String> = c.properties.clone();
    if let Some(p) = &c.profile {
        props.insert("profile".into(), p.clone());
    }
    match c.keys.as_deref().unwrap_or("generated") {
        "generated" => {
            props.insert("backend".into(), "generated".into());
            props
                .entry("name".into())
                .or_insert_with(|| c.id.get_ref().clone());
            if c.ephemeral {
                props.insert("ephemeral".into(), "on".into());
            }
        }
        other => {
            props.insert("backend".into(), other.into());
        }
    }
    if let Some(t) = c.pin_tries {
        props.insert("pin-tries".into(), t.to_string());
    }
    let mut text = String::from("emulated");
    for (k, v) in props {
        text.push(',');
        text.push_str(&k);
        text.push('=');
        // A comma inside a value is written twice, as in QEMU's option syntax.
        text.push_str(&v.replace(',', ",,"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[service]
control = "/run/vccid/control.sock"
control_mode = "0660"

[[card]]
id = "alice"
profile = "piv"

[[card]]
id = "bob"
ephemeral = true

[[reader]]
id = "pcsc0"
transport = "vpcd"
cards = ["alice"]

[[reader]]
id = "vm1"
transport = "usbredir"
address = "unix:/run/vccid/vm1.sock"
mode = "0660"
group = "kvm"
slots = 2
cards = ["bob", ""]
"#;

    #[test]
    fn a_good_file() {
        let c = Config::parse(GOOD, "vccid.toml").unwrap();
        assert_eq!(c.cards.len(), 2);
        assert_eq!(c.readers[1].slot_id(1), "vm1/1");
        assert_eq!(c.readers[0].slot_id(0), "pcsc0");
        assert_eq!(
            emulated_spec_text(&c.cards[0]),
            "emulated,backend=generated,name=alice,profile=piv"
        );
        assert_eq!(
            emulated_spec_text(&c.cards[1]),
            "emulated,backend=generated,ephemeral=on,name=bob"
        );
    }

    fn err(text: &str) -> String {
        Config::parse(text, "vccid.toml").unwrap_err().to_string()
    }

    #[test]
    fn mistakes_name_the_file_the_line_and_the_key() {
        let e = err("[[card]]\nid = \"a\"\nprofil = \"piv\"\n");
        assert!(
            e.starts_with("vccid.toml: ") && e.contains("line 3") && e.contains("profil"),
            "{e}"
        );
        let e = err("[[card]]\nid = \"a\"\n\n[[reader]]\nid = \"r\"\ntransport = \"vpcd\"\ncards = [\"b\"]\n");
        assert_eq!(e, "vccid.toml:5: reader[0].cards: no card \"b\" is defined");
        let e = err("[[reader]]\nid = \"r\"\ntransport = \"carrier-pigeon\"\n");
        assert!(e.contains("line 3") && e.contains("carrier-pigeon"), "{e}");
        let e = err("[[card]]\nid = \"a\"\n[[card]]\nid = \"a\"\n");
        assert_eq!(
            e,
            "vccid.toml:4: card[1].id: a card \"a\" is defined already"
        );
        let e = err("[[card]]\nid = \"../etc\"\n");
        assert!(
            e.starts_with("vccid.toml:2: card[0].id: \"../etc\" is not a valid id"),
            "{e}"
        );
        let e = err("[[reader]]\nid = \"r\"\ntransport = \"vpcd\"\nslots = 2\n");
        assert_eq!(
            e,
            "vccid.toml:2: reader[0].slots: 2: a vpcd reader has 1..1"
        );
        let e = err("[[reader]]\nid = \"r\"\ntransport = \"usbip\"\naddress = \"unix:/x\"\n");
        assert_eq!(
            e,
            "vccid.toml:2: reader[0].address: usbip runs over TCP only: give HOST:PORT"
        );
        let e = err("[[reader]]\nid = \"r\"\ntransport = \"usbredir\"\naddress = \"unix:/x\"\nmode = \"rw\"\n");
        assert!(
            e.contains("reader[0].mode: \"rw\" is not an octal mode"),
            "{e}"
        );
        let e = err("[[card]]\nid = \"a\"\n[[card]]\nid = \"b\"\n[[reader]]\nid = \"r\"\ntransport = \"usbredir\"\nslots = 2\ncards = [\"a\"]\n[[reader]]\nid = \"s\"\ntransport = \"usbredir\"\naddress = \"127.0.0.1:4001\"\ncards = [\"a\"]\n");
        assert_eq!(
            e,
            "vccid.toml:11: reader[1].cards: card \"a\" is in reader \"r\" already"
        );
        let e = err("[[reader]]\nid = \"r\"\ntransport = \"vpcd\"\ntls = \"/etc/vccid/tls\"\n");
        assert!(e.contains("reader[0].tls: vpcd has no TLS"), "{e}");
    }

    #[test]
    fn what_the_card_parser_refuses_is_refused_with_the_line() {
        let e = err("[[card]]\nid = \"a\"\nprofile = \"pvi\"\n");
        assert_eq!(
            e,
            "vccid.toml:2: card[0].profile: \"pvi\": expected cac, piv or cac+piv"
        );
        let e = err("[[card]]\nid = \"a\"\nkeys = \"files\"\nproperties = { cert1 = \"x\", colour = \"red\" }\n");
        assert!(
            e.starts_with("vccid.toml:2: card[0].properties: unknown card property \"colour\""),
            "{e}"
        );
        let e = err("[[reader]]\nid = \"a\"\ntransport = \"vpcd\"\n[[reader]]\nid = \"b\"\ntransport = \"vpcd\"\n");
        assert_eq!(
            e,
            "vccid.toml:5: reader[1].address: 127.0.0.1:35963 is reader \"a\"'s address already"
        );
        let c = Config::parse(
            "[[card]]\nid = \"a\"\nproperties = { subject = \"CN={id},O=Example\" }\n",
            "x",
        )
        .unwrap();
        assert!(emulated_spec_text(&c.cards[0]).contains("subject=CN={id},,O=Example"));
    }

    #[test]
    fn debug_shows_no_pin() {
        let c = Config::parse(
            "[[card]]\nid = \"a\"\npin = \"31415926\"\npuk = \"27182818\"\n",
            "x",
        )
        .unwrap();
        let d = format!("{c:?}");
        assert!(!d.contains("31415926") && !d.contains("27182818"), "{d}");
        assert!(d.contains("[redacted]"), "{d}");
    }

    #[test]
    fn an_empty_file_is_an_empty_service() {
        let c = Config::parse("", "x").unwrap();
        assert!(c.cards.is_empty() && c.readers.is_empty());
    }
}
