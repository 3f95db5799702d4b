//! `--card` specifications in QEMU's property syntax (qemu-ccid.md §3.1):
//! `emulated[,backend=certificates,db=sql:DIR,cert1=NICK,...]`. As in QEMU's option syntax, a
//! comma inside a value is written twice (`subject=CN={id},,O=Example`).

use anyhow::{anyhow, bail, Context, Result};
use card::keystore::{CardName, FileIdentity, Pkcs11Config, SubjectTemplate, TokenSelector};
use std::collections::BTreeMap;
use std::path::PathBuf;
use zeroize::Zeroizing;

/// Where the emulated card's keys come from.
#[derive(Debug, Clone)]
pub enum Backend {
    /// The embedded default identities.
    Default,
    /// Identities generated for a card of this name (`backend=generated,name=ID`), kept in
    /// `DATA_DIR/cards/ID/`, or in memory only.
    Generated {
        /// `name=`.
        name: CardName,
        /// `subject=`: the certificates' subjects.
        subject: Option<SubjectTemplate>,
        /// `ephemeral=on`: made in memory at every start, nothing written.
        ephemeral: bool,
    },
    /// An NSS database, certificates by nickname (QEMU's `backend=certificates`).
    Nss {
        db: String,
        nicknames: Vec<String>,
        password: Option<PathBuf>,
    },
    /// Certificate and key files (or PKCS#12 files), and the PKCS#12 password file.
    Files(Vec<FileIdentity>, Option<PathBuf>),
    /// A PKCS#11 token.
    Pkcs11(Box<Pkcs11Config>, Option<PathBuf>),
}

/// Which card applications the emulated card carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// libcacard's CAC card (the default).
    #[default]
    Cac,
    /// A PIV card (NIST SP 800-73-4): slots 9A, 9C, 9D, 9E, then 82..95.
    Piv,
    /// One card with both: SELECT by AID picks the application.
    CacPiv,
}

impl Profile {
    /// Whether the card carries the PIV application.
    pub fn has_piv(self) -> bool {
        self != Profile::Cac
    }
}

/// Where the card keeps what changes on it: the PIV application's state file, and the CAC
/// card's PIN and retry counter (issue #17; for `cac+piv`, a file beside the PIV one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateSpec {
    /// `state=off`: nothing survives a restart.
    Off,
    /// `state=FILE`.
    File(PathBuf),
}

/// A parsed `--card emulated,...` value. The PIN and PUK are wiped when dropped, and `Debug`
/// leaves them out (issue #14).
#[derive(Clone)]
pub struct EmulatedSpec {
    /// Where the keys are.
    pub backend: Backend,
    /// `profile=cac` (default), `profile=piv` or `profile=cac+piv`.
    pub profile: Profile,
    /// `state=FILE|off`; default: a file per card under the data directory.
    pub state: Option<StateSpec>,
    /// The PIV PUK (`puk=`, default 12345678).
    pub puk: Option<Zeroizing<String>>,
    /// The card PIN.
    pub pin: Option<Zeroizing<String>>,
    /// Tries before the PIN blocks.
    pub pin_tries: Option<u8>,
}

impl std::fmt::Debug for EmulatedSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Backend's Debug is safe: Pkcs11Config and FileIdentity redact their own secrets.
        f.debug_struct("EmulatedSpec")
            .field("backend", &self.backend)
            .field("profile", &self.profile)
            .field("state", &self.state)
            .field("puk", &self.puk.as_ref().map(|_| card::Redacted))
            .field("pin", &self.pin.as_ref().map(|_| card::Redacted))
            .field("pin_tries", &self.pin_tries)
            .finish()
    }
}

/// A parsed `--card` value.
#[derive(Debug, Clone)]
pub enum CardSpec {
    /// The emulated CAC card.
    Emulated(EmulatedSpec),
    /// A VSCard host: the card lives in a client (`listen=ADDR`, default 127.0.0.1:2001).
    Passthru {
        /// `HOST:PORT` or `unix:PATH`.
        listen: String,
    },
    /// The host's real card through PC/SC (`reader=NAME`: the first reader whose name
    /// contains NAME; default the first reader).
    Hardware {
        /// Reader name filter.
        reader: Option<String>,
    },
}

/// `spec` with the values of its secret properties (`pin=`, `puk=`, a PKCS#11 URI's
/// `pin-value=`) replaced by `***`, for error messages that quote it (issue #13: no error
/// message shows a PIN).
pub fn redact(spec: &str) -> String {
    let parts: Vec<String> = parts(spec)
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, _)) if matches!(k.trim(), "pin" | "puk") => format!("{k}=***"),
            _ => card::keystore::redact_pin_value(p).replace(',', ",,"),
        })
        .collect();
    parts.join(",")
}

/// The comma-separated parts of a specification, `,,` standing for a comma inside a part
/// (QEMU's option syntax).
fn parts(spec: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' && chars.next_if_eq(&',').is_none() {
            out.push(String::new());
        } else if let Some(part) = out.last_mut() {
            part.push(c);
        }
    }
    out
}

/// Splits `KIND,key=value,...` into the kind and the properties (each key once); `,,` is a
/// comma inside a value.
pub fn split(spec: &str) -> Result<(String, BTreeMap<String, String>)> {
    let all = parts(spec);
    let mut parts = all.iter();
    let kind = parts
        .next()
        .map(|k| k.trim().to_string())
        .unwrap_or_default();
    let mut props = BTreeMap::new();
    for p in parts {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| anyhow!("card property {p:?} has no '=' (expected key=value)"))?;
        if props.insert(k.trim().to_string(), v.to_string()).is_some() {
            bail!("card property {k:?} given twice");
        }
    }
    Ok((kind, props))
}

/// `certN` (or `keyN`) values in N order; with `contiguous`, N must run from 1 without gaps.
fn numbered(
    props: &mut BTreeMap<String, String>,
    prefix: &str,
    contiguous: bool,
) -> Result<Vec<(usize, String)>> {
    let mut out: Vec<(usize, String)> = Vec::new();
    let keys: Vec<String> = props
        .keys()
        .filter(|k| {
            k.strip_prefix(prefix)
                .is_some_and(|n| n.parse::<usize>().is_ok())
        })
        .cloned()
        .collect();
    for k in keys {
        let n: usize = k[prefix.len()..].parse().unwrap_or(0);
        out.push((n, props.remove(&k).unwrap_or_default()));
    }
    out.sort();
    for (i, (n, _)) in out.iter().enumerate() {
        if contiguous && *n != i + 1 {
            bail!(
                "{prefix}{} is missing (numbering must start at 1 without gaps)",
                i + 1
            );
        }
    }
    Ok(out)
}

/// Where a passthru card listens without `listen=` (vscclient's and QEMU's usual port).
pub const DEFAULT_PASSTHRU_LISTEN: &str = "127.0.0.1:2001";

/// Parses a `--card` value.
pub fn parse(spec: &str) -> Result<CardSpec> {
    let (kind, mut props) = split(spec)?;
    match kind.as_str() {
        "emulated" => parse_emulated(props).map(CardSpec::Emulated),
        "passthru" => {
            let listen = props
                .remove("listen")
                .unwrap_or_else(|| DEFAULT_PASSTHRU_LISTEN.into());
            if let Some(k) = props.keys().next() {
                bail!("unknown passthru property {k:?} (expected listen=ADDR)");
            }
            Ok(CardSpec::Passthru { listen })
        }
        "hardware" => {
            let reader = props.remove("reader");
            if let Some(k) = props.keys().next() {
                bail!("unknown hardware property {k:?} (expected reader=NAME)");
            }
            Ok(CardSpec::Hardware { reader })
        }
        other => bail!("unknown card type {other:?}; expected emulated, passthru or hardware"),
    }
}

/// Parses the properties of `emulated`.
pub fn parse_emulated(mut props: BTreeMap<String, String>) -> Result<EmulatedSpec> {
    // The secrets leave the map first, into types that wipe them, so that no error return
    // below drops a copy unwiped (issue #14). A PKCS#11 URI may carry pin-value=.
    let pin = props.remove("pin").map(Zeroizing::new);
    let puk = props.remove("puk").map(Zeroizing::new);
    let uri = props.remove("uri").map(Zeroizing::new);
    let profile = match props.remove("profile").as_deref() {
        None | Some("cac") => Profile::Cac,
        Some("piv") => Profile::Piv,
        Some("cac+piv") => Profile::CacPiv,
        Some(other) => bail!("unknown profile {other:?}; expected cac, piv or cac+piv"),
    };
    if puk.is_some() && !profile.has_piv() {
        bail!("puk= applies to profile=piv and cac+piv only");
    }
    let state = props.remove("state").map(|s| match s.as_str() {
        "off" => StateSpec::Off,
        _ => StateSpec::File(PathBuf::from(s)),
    });
    let pin_tries = props
        .remove("pin-tries")
        .map(|t| {
            t.parse::<u8>()
                .ok()
                .filter(|n| (1..=15).contains(n))
                .ok_or_else(|| anyhow!("pin-tries={t:?}: expected 1..15"))
        })
        .transpose()?;
    let generated = (
        props.remove("name"),
        props.remove("subject"),
        props.remove("ephemeral"),
    );
    let backend = match props.remove("backend").as_deref() {
        None | Some("default") => {
            if props.keys().any(|k| k.starts_with("cert")) || props.contains_key("db") {
                bail!("cert1=/db= need backend=certificates (NSS) or backend=files");
            }
            Backend::Default
        }
        Some("generated") => {
            let (name, subject, ephemeral) = generated.clone();
            let name = name.ok_or_else(|| {
                anyhow!("backend=generated needs name=ID (the card's name: its directory under DATA_DIR/cards and its certificates' CN)")
            })?;
            let name = CardName::new(&name).map_err(|e| anyhow!("name={name:?}: {e}"))?;
            let subject = subject.map(|s| SubjectTemplate::parse(&s)).transpose()?;
            let ephemeral = match ephemeral.as_deref() {
                None => false,
                Some(v) => on_off(v).ok_or_else(|| anyhow!("ephemeral={v:?}: expected on or off"))?,
            };
            if ephemeral && matches!(state, Some(StateSpec::File(_))) {
                bail!("ephemeral=on keeps nothing, so the card's state is off: drop state=FILE (or ephemeral=on)");
            }
            Backend::Generated {
                name,
                subject,
                ephemeral,
            }
        }
        Some("certificates") => {
            let db = props.remove("db").unwrap_or_else(|| "sql:/etc/pki/nssdb".into());
            let nicknames: Vec<String> = numbered(&mut props, "cert", true)?.into_iter().map(|(_, v)| v).collect();
            if nicknames.is_empty() {
                bail!("backend=certificates needs cert1=NICKNAME (and cert2=, cert3=, ...)");
            }
            Backend::Nss {
                db,
                nicknames,
                password: props.remove("password-file").map(PathBuf::from),
            }
        }
        Some("files") => {
            let certs = numbered(&mut props, "cert", true)?;
            let keys: BTreeMap<usize, String> = numbered(&mut props, "key", false)?.into_iter().collect();
            if certs.is_empty() {
                bail!("backend=files needs cert1=FILE[,key1=FILE] ...");
            }
            if let Some(n) = keys.keys().find(|n| **n > certs.len()) {
                bail!("key{n} has no cert{n}");
            }
            let p12_password = props.remove("p12-password-file").map(PathBuf::from);
            Backend::Files(
                certs
                    .into_iter()
                    .map(|(n, c)| FileIdentity::new(c, keys.get(&n).map(PathBuf::from)))
                    .collect(),
                p12_password,
            )
        }
        Some("pkcs11") => {
            let mut cfg = match &uri {
                Some(uri) => Pkcs11Config::from_uri(uri).map_err(|e| anyhow!("{e}"))?,
                None => {
                    let module = props
                        .remove("module")
                        .ok_or_else(|| anyhow!("backend=pkcs11 needs uri=pkcs11:... or module=PATH"))?;
                    Pkcs11Config {
                        module: PathBuf::from(module),
                        init_reserved: None,
                        token: TokenSelector::First,
                        pin: None,
                        labels: Vec::new(),
                        id: None,
                    }
                }
            };
            if let Some(t) = props.remove("token") {
                cfg.token = TokenSelector::Label(t);
            }
            let labels: Vec<String> = numbered(&mut props, "cert", true)?.into_iter().map(|(_, v)| v).collect();
            if !labels.is_empty() {
                cfg.labels = labels;
            }
            Backend::Pkcs11(Box::new(cfg), props.remove("token-pin-file").map(PathBuf::from))
        }
        Some("nss-emulated") => bail!(
            "backend=nss-emulated (mirroring the host's hardware tokens) is not supported; use backend=pkcs11,uri=... for a token"
        ),
        Some(other) => bail!("unknown backend {other:?}; expected default, generated, certificates, files or pkcs11"),
    };
    if !matches!(backend, Backend::Generated { .. }) {
        for (k, v) in [
            ("name", &generated.0),
            ("subject", &generated.1),
            ("ephemeral", &generated.2),
        ] {
            if v.is_some() {
                bail!("{k}= applies to backend=generated only");
            }
        }
    }
    if uri.is_some() && !matches!(backend, Backend::Pkcs11(..)) {
        bail!("uri= applies to backend=pkcs11 only");
    }
    if props.contains_key("pin-value") {
        // RFC 7512's pin-value belongs in a PKCS#11 URI's query; as a card property it would
        // only be another way to put a PIN where `ps` shows it.
        bail!(
            "pin-value is not a card property: give the token PIN with token-pin-file=FILE or \
             $VCCID_TOKEN_PIN (or, visible to every user in `ps`, in the URI: \
             uri=pkcs11:token=...?module-path=...&pin-value=...)"
        );
    }
    if let Some(k) = props.keys().next() {
        bail!(
            "unknown card property {k:?}; emulated takes profile=, pin=, puk= (PIV), \
             pin-tries=, state=, backend= and the backend's own: name=, subject=, \
             ephemeral= (generated); db=, certN=, password-file= (certificates); certN=, \
             keyN=, p12-password-file= (files); uri=, module=, token=, certN=, \
             token-pin-file= (pkcs11)"
        );
    }
    Ok(EmulatedSpec {
        backend,
        profile,
        state,
        puk,
        pin,
        pin_tries,
    })
}

/// A QEMU boolean property value: on/yes/true or off/no/false.
fn on_off(v: &str) -> Option<bool> {
    match v {
        "on" | "yes" | "true" => Some(true),
        "off" | "no" | "false" => Some(false),
        _ => None,
    }
}

/// Reads a secret from a file (its first line) or an environment variable.
pub fn secret(file: Option<&PathBuf>, env: &str) -> Result<Option<Zeroizing<String>>> {
    if let Some(f) = file {
        let s = Zeroizing::new(
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?,
        );
        return Ok(Some(Zeroizing::new(
            s.lines().next().unwrap_or("").to_string(),
        )));
    }
    if let Ok(v) = std::env::var(env) {
        return Ok(Some(Zeroizing::new(v)));
    }
    Ok(None)
}

/// Asks on the terminal, when there is one.
pub fn prompt(prompt: &str) -> Option<Zeroizing<String>> {
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return None;
    }
    rpassword::prompt_password(prompt).ok().map(Zeroizing::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emulated(spec: &str) -> Result<EmulatedSpec> {
        match parse(spec)? {
            CardSpec::Emulated(e) => Ok(e),
            other => bail!("not emulated: {other:?}"),
        }
    }

    #[test]
    fn passthru() {
        assert!(
            matches!(parse("passthru").unwrap(), CardSpec::Passthru { listen } if listen == "127.0.0.1:2001")
        );
        assert!(
            matches!(parse("passthru,listen=unix:/tmp/s").unwrap(), CardSpec::Passthru { listen } if listen == "unix:/tmp/s")
        );
        assert!(parse("passthru,port=1")
            .unwrap_err()
            .to_string()
            .contains("listen=ADDR"));
    }

    #[test]
    fn qemu_syntax() {
        let s = emulated(
            "emulated,backend=certificates,db=sql:/tmp/db,cert1=a,cert2=b,cert3=c,pin=1234",
        )
        .unwrap();
        match s.backend {
            Backend::Nss { db, nicknames, .. } => {
                assert_eq!(db, "sql:/tmp/db");
                assert_eq!(nicknames, ["a", "b", "c"]);
            }
            b => panic!("{b:?}"),
        }
        assert_eq!(s.pin.as_deref().map(String::as_str), Some("1234"));
        assert!(matches!(
            emulated("emulated").unwrap().backend,
            Backend::Default
        ));
        match emulated("emulated,backend=files,cert1=/a.pem,key1=/a.key,cert2=/b.pem")
            .unwrap()
            .backend
        {
            Backend::Files(f, _) => {
                assert_eq!(f.len(), 2);
                assert_eq!(f[0].key.as_deref(), Some(std::path::Path::new("/a.key")));
                assert_eq!(f[1].key, None);
            }
            b => panic!("{b:?}"),
        }
        assert!(matches!(
            emulated("emulated,backend=pkcs11,uri=pkcs11:token=t?module-path=/m")
                .unwrap()
                .backend,
            Backend::Pkcs11(..)
        ));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        for (spec, words) in [
            ("emulated,backend=certificates", "cert1=NICKNAME"),
            (
                "emulated,backend=certificates,cert1=a,cert3=c",
                "cert2 is missing",
            ),
            ("emulated,bogus=1", "unknown card property"),
            ("emulated,cert1=a", "backend=certificates"),
            ("emulated,backend=x", "unknown backend"),
            ("emulated,backend=nss-emulated", "not supported"),
            ("virtual", "unknown card type"),
            ("emulated,pin-tries=0", "pin-tries"),
            ("emulated,pin", "no '='"),
            ("emulated,pin=1,pin=2", "twice"),
            ("emulated,backend=files,cert1=a,key2=b", "key2 has no cert2"),
            (
                "emulated,uri=pkcs11:token=t?module-path=/m",
                "backend=pkcs11 only",
            ),
        ] {
            let e = parse(spec).unwrap_err().to_string();
            assert!(e.contains(words), "{spec}: {e}");
        }
    }

    #[test]
    fn profiles() {
        assert_eq!(emulated("emulated").unwrap().profile, Profile::Cac);
        let p = emulated("emulated,profile=piv,pin=654321,puk=87654321").unwrap();
        assert_eq!(
            (p.profile, p.puk.as_deref().map(String::as_str)),
            (Profile::Piv, Some("87654321"))
        );
        let p = emulated("emulated,profile=cac+piv,state=off").unwrap();
        assert_eq!(
            (p.profile, p.state),
            (Profile::CacPiv, Some(StateSpec::Off))
        );
        let p = emulated("emulated,profile=piv,state=/var/lib/card.json").unwrap();
        assert_eq!(
            p.state,
            Some(StateSpec::File(PathBuf::from("/var/lib/card.json")))
        );
        assert_eq!(emulated("emulated,profile=piv").unwrap().state, None);
        // The CAC card keeps its PIN state too (issue #17).
        assert_eq!(
            emulated("emulated,state=/tmp/x").unwrap().state,
            Some(StateSpec::File(PathBuf::from("/tmp/x")))
        );
        for (bad, why) in [
            ("emulated,profile=gids", "unknown profile"),
            ("emulated,puk=12345678", "profile=piv and cac+piv only"),
        ] {
            let e = emulated(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn generated_cards() {
        match emulated("emulated,backend=generated,name=alice")
            .unwrap()
            .backend
        {
            Backend::Generated {
                name,
                subject: None,
                ephemeral: false,
            } => assert_eq!(name.as_str(), "alice"),
            b => panic!("{b:?}"),
        }
        let e = emulated(
            "emulated,backend=generated,name=ci-7,subject=CN={id} {n},,O=Example,,OU=CI,ephemeral=on,profile=piv,state=off",
        )
        .unwrap();
        assert_eq!(e.state, Some(StateSpec::Off));
        match e.backend {
            Backend::Generated {
                subject: Some(t),
                ephemeral: true,
                ..
            } => assert_eq!(
                t,
                SubjectTemplate::parse("CN={id} {n},O=Example,OU=CI").unwrap()
            ),
            b => panic!("{b:?}"),
        }
        for (spec, words) in [
            ("emulated,backend=generated", "needs name=ID"),
            ("emulated,backend=generated,name=../x", "'/'"),
            ("emulated,backend=generated,name=.x", "starts with '.'"),
            ("emulated,backend=generated,name=", "empty"),
            (
                "emulated,backend=generated,name=a,ephemeral=maybe",
                "on or off",
            ),
            (
                "emulated,backend=generated,name=a,subject=XX=1",
                "unknown attribute",
            ),
            (
                "emulated,backend=generated,name=a,ephemeral=on,profile=piv,state=/s.json",
                "drop state=FILE",
            ),
            ("emulated,name=a", "backend=generated only"),
            (
                "emulated,backend=files,cert1=/a,subject=CN=x",
                "backend=generated only",
            ),
            ("emulated,ephemeral=on", "backend=generated only"),
        ] {
            let e = parse(spec).unwrap_err().to_string();
            assert!(e.contains(words), "{spec}: {e}");
        }
    }

    #[test]
    fn doubled_commas_are_commas_in_values_and_redaction_sees_them() {
        let (kind, props) = split("emulated,pin=12,,34,db=sql:/a,,b").unwrap();
        assert_eq!(kind, "emulated");
        assert_eq!(props["pin"], "12,34");
        assert_eq!(props["db"], "sql:/a,b");
        assert_eq!(
            redact("emulated,pin=12,,34,db=sql:/a,,b"),
            "emulated,pin=***,db=sql:/a,,b"
        );
    }

    /// Issue #14: `{:?}` of a parsed card specification shows no PIN, PUK, token PIN (from a
    /// PKCS#11 URI's pin-value) or PKCS#12 password.
    #[test]
    fn no_secret_in_debug_output() {
        const PIN: &str = "90210417";
        const PUK: &str = "57721566";
        const TOKEN_PIN: &str = "77665544";
        const P12_PASSWORD: &str = "p12-secret-kumquat";
        let check = |what: &str, debug: String, secrets: &[&str]| {
            for s in secrets {
                assert!(!debug.contains(s), "{what} shows {s:?}: {debug}");
            }
            assert!(
                debug.contains("[redacted]"),
                "{what} marks nothing redacted: {debug}"
            );
        };
        let spec = parse(&format!("emulated,profile=cac+piv,pin={PIN},puk={PUK}")).unwrap();
        check("CardSpec", format!("{spec:?}"), &[PIN, PUK]);
        let e = emulated(&format!(
            "emulated,backend=pkcs11,pin={PIN},uri=pkcs11:token=t?module-path=/m&pin-value={TOKEN_PIN}"
        ))
        .unwrap();
        check("EmulatedSpec (pkcs11)", format!("{e:?}"), &[PIN, TOKEN_PIN]);
        let mut e = emulated("emulated,backend=files,cert1=/a.p12").unwrap();
        if let Backend::Files(files, _) = &mut e.backend {
            files[0].password = Some(Zeroizing::new(P12_PASSWORD.into()));
        }
        check("EmulatedSpec (files)", format!("{e:?}"), &[P12_PASSWORD]);
    }
}
