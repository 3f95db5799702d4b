//! Building the emulated card from a parsed specification: open the key store, pick the
//! profile (CAC or PIV), apply the PIN settings.

use crate::spec::{self, Backend, EmulatedSpec, Profile, StateSpec};
use anyhow::{anyhow, Result};
use card::cac::{CacCard, CacConfig, CardIdentifier};
use card::dual::DualCard;
use card::keystore::{
    default_data_dir, DefaultIdentities, FileIdentity, FileStore, GeneratedIdentities, KeyStore,
    Pkcs11Config, Pkcs11Store, SharedStore,
};
use card::piv::{PivCard, PivConfig};
use card::Card;
use std::path::{Path, PathBuf};

/// The data directory: one given on the command line must exist (a mistyped `--data-dir`
/// would otherwise make a new card in the wrong place, issue #13); the default one is made on
/// first use, so that `vccid` works with no flags.
fn data_dir(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = given {
        if !dir.is_dir() {
            anyhow::bail!(
                "data directory {d} does not exist; create it with `vccid init {d}` (or give vccid --create)",
                d = dir.display()
            );
        }
        return Ok(dir.to_path_buf());
    }
    let dir = default_data_dir()
        .ok_or_else(|| anyhow!("no data directory: set HOME, XDG_DATA_HOME or --data-dir"))?;
    create_data_dir(&dir)?;
    Ok(dir)
}

/// Makes a data directory (and its parents) with mode 0700: it holds private keys.
pub fn create_data_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| anyhow!("cannot create data directory {}: {e}", dir.display()))
}

/// `vccid init [DIR]`: makes the data directory and a new default card in it, refusing when
/// there is one already; returns what to tell the user.
pub fn init(given: Option<&Path>) -> Result<String> {
    let dir = match given {
        Some(d) => d.to_path_buf(),
        None => default_data_dir()
            .ok_or_else(|| anyhow!("no data directory: set HOME, XDG_DATA_HOME or give DIR"))?,
    };
    create_data_dir(&dir)?;
    let d = DefaultIdentities::new(&dir);
    let files = d.create()?;
    let store = FileStore::open(&files)?;
    let mut out = format!("made a new card in {}:\n", d.dir().display());
    for (f, id) in files.iter().zip(store.identities()) {
        let kind = match id.ec_curve {
            Some(_) => "ECDSA P-256".to_string(),
            None => format!("RSA-{}", id.modulus_bits),
        };
        out += &format!(
            "  {}  {kind}  {}\n",
            card::keystore::certificate_subject(&id.cert_der).unwrap_or_else(|| id.label.clone()),
            f.cert.display()
        );
    }
    let flag = match given {
        Some(g) => format!(" --data-dir {}", g.display()),
        None => String::new(),
    };
    out += &format!(
        "back it up (its keys are the card's identity); serve it with: vccid{flag} --vpcd\n"
    );
    Ok(out)
}

/// Opens the key store a backend names; the embedded default and the generated cards carry
/// their ECC identity when `with_ecc` (the PIV application's).
pub fn key_store(
    backend: &Backend,
    data_dir_given: Option<&Path>,
    with_ecc: bool,
) -> Result<Box<dyn KeyStore>> {
    Ok(match backend {
        Backend::Default => {
            let d = DefaultIdentities::new(&data_dir(data_dir_given)?);
            Box::new(d.open(with_ecc)?)
        }
        Backend::Generated {
            name,
            subject,
            ephemeral: true,
        } => {
            // The data directory is not even looked up: nothing of this card touches the disk.
            let store = GeneratedIdentities::ephemeral(name, subject.as_ref(), with_ecc)?;
            tracing::info!(card = %name, "generated card made in memory (ephemeral: a new card at every start, nothing written)");
            Box::new(store)
        }
        Backend::Generated {
            name,
            subject,
            ephemeral: false,
        } => {
            let g = GeneratedIdentities::new(&data_dir(data_dir_given)?, name, subject.as_ref());
            Box::new(g.open(with_ecc)?)
        }
        Backend::Files(files, p12_password) => {
            let mut files = files.clone();
            if files.iter().any(FileIdentity::is_pkcs12) {
                let pw = match spec::secret(p12_password.as_ref(), "VCCID_P12_PASSWORD")? {
                    Some(pw) => pw,
                    None => spec::prompt("PKCS#12 password: ").ok_or_else(|| {
                        anyhow!("PKCS#12 files need their password: give p12-password-file=FILE or VCCID_P12_PASSWORD")
                    })?,
                };
                for f in &mut files {
                    f.password = Some(pw.clone());
                }
            }
            Box::new(FileStore::open(&files)?)
        }
        Backend::Nss {
            db,
            nicknames,
            password,
        } => {
            let pw = spec::secret(password.as_ref(), "VCCID_NSS_PASSWORD")?;
            let cfg = Pkcs11Config::nss(db, nicknames.clone(), pw.clone())?;
            match Pkcs11Store::open(&cfg) {
                Ok(s) => Box::new(s),
                // A database with a password and none given: ask on the terminal.
                Err(e) if pw.is_none() && e.to_string().contains("wrong PIN/password") => {
                    let pw = spec::prompt(&format!("Password for NSS database {db}: ")).ok_or_else(|| {
                        anyhow!("NSS database {db} has a password: give password-file=FILE or VCCID_NSS_PASSWORD")
                    })?;
                    let cfg = Pkcs11Config::nss(db, nicknames.clone(), Some(pw))?;
                    Box::new(Pkcs11Store::open(&cfg)?)
                }
                Err(e) => return Err(e.into()),
            }
        }
        Backend::Pkcs11(cfg, pin_file) => {
            let mut cfg = (**cfg).clone();
            if cfg.pin.is_none() {
                cfg.pin = spec::secret(pin_file.as_ref(), "VCCID_TOKEN_PIN")?;
            }
            Box::new(Pkcs11Store::open(&cfg)?)
        }
    })
}

/// The emulated card: CAC or PIV, by the specification's profile.
pub enum EmulatedCard {
    /// libcacard's CAC card.
    Cac(Box<CacCard>),
    /// The PIV card.
    Piv(Box<PivCard>),
    /// Both on one card.
    Dual(Box<DualCard>),
}

impl EmulatedCard {
    fn card(&mut self) -> &mut dyn Card {
        match self {
            EmulatedCard::Cac(c) => c.as_mut(),
            EmulatedCard::Piv(c) => c.as_mut(),
            EmulatedCard::Dual(c) => c.as_mut(),
        }
    }
    fn card_ref(&self) -> &dyn Card {
        match self {
            EmulatedCard::Cac(c) => c.as_ref(),
            EmulatedCard::Piv(c) => c.as_ref(),
            EmulatedCard::Dual(c) => c.as_ref(),
        }
    }
}

impl Card for EmulatedCard {
    fn atr(&self) -> Vec<u8> {
        self.card_ref().atr()
    }
    fn power_on(&mut self) -> Vec<u8> {
        self.card().power_on()
    }
    fn power_off(&mut self) {
        self.card().power_off()
    }
    fn reset(&mut self) -> Vec<u8> {
        self.card().reset()
    }
    fn transmit(&mut self, apdu: &[u8]) -> Vec<u8> {
        self.card().transmit(apdu)
    }
    fn presence(&self) -> card::Presence {
        self.card_ref().presence()
    }
}

/// The PIV settings of a specification; the state file defaults to one per card under the
/// data directory, named by the card's certificates.
fn piv_config(
    spec: &EmulatedSpec,
    keys: &dyn KeyStore,
    data_dir_given: Option<&Path>,
) -> Result<PivConfig> {
    let mut cfg = PivConfig::default();
    for (value, field, what) in [
        (&spec.pin, &mut cfg.pin, "pin"),
        (&spec.puk, &mut cfg.puk, "puk"),
    ] {
        if let Some(v) = value {
            if v.is_empty() || v.len() > 8 {
                anyhow::bail!("{what}= must be 1 to 8 characters (PIV pads them to 8 bytes)");
            }
            *field = zeroize::Zeroizing::new(v.as_bytes().to_vec());
        }
    }
    if let Some(t) = spec.pin_tries {
        cfg.pin_tries = t;
    }
    cfg.state = state_file(spec, "piv", keys, data_dir_given)?;
    Ok(cfg)
}

/// Where application `app` ("piv" or "cac") of a card keeps its state: the PIV card what
/// changes on it, the CAC card its PIN and retry counter (issue #17). `state=FILE` names the
/// file of the card's one application; of `cac+piv`, the PIV one's, and the CAC one's is
/// beside it ([`cac_beside`]). By default a file per card under the data directory, named as
/// PIV's is: `DATA_DIR/APP/<16 hex digits of the card's certificates>.json`, and a generated
/// card's `DATA_DIR/cards/ID/APP-state.json`.
fn state_file(
    spec: &EmulatedSpec,
    app: &str,
    keys: &dyn KeyStore,
    data_dir_given: Option<&Path>,
) -> Result<Option<PathBuf>> {
    Ok(match (&spec.state, &spec.backend) {
        (Some(StateSpec::Off), _) => None,
        (Some(StateSpec::File(f)), _) if app == "cac" && spec.profile == Profile::CacPiv => {
            Some(cac_beside(f))
        }
        (Some(StateSpec::File(f)), _) => Some(f.clone()),
        // Nothing of an ephemeral card is kept (`spec` refuses state=FILE with it).
        (
            None,
            Backend::Generated {
                ephemeral: true, ..
            },
        ) => None,
        // A generated card keeps its state beside its identities: moving or deleting the
        // card's directory takes all of it (and `vccid serve` names the same files).
        (
            None,
            Backend::Generated {
                name,
                ephemeral: false,
                ..
            },
        ) => {
            let dir = data_dir(data_dir_given)?;
            Some(
                GeneratedIdentities::cards_dir(&dir)
                    .join(name.as_str())
                    .join(format!("{app}-state.json")),
            )
        }
        (None, _) => {
            let id = card::piv::card_id(keys.identities());
            let dir = data_dir(data_dir_given).map_err(|e| {
                anyhow!(
                    "{e}; the {} card keeps its state there (or give state=FILE or state=off)",
                    app.to_uppercase()
                )
            })?;
            Some(dir.join(app).join(format!("{}.json", &id[..16])))
        }
    })
}

/// The CAC application's state file beside a `cac+piv` card's PIV one: `piv` in the name
/// becomes `cac` (`piv-state.json`, a generated card's, gives `cac-state.json`, the file the
/// CAC profile's card has there), else `.cac` goes before the extension (`card.json` gives
/// `card.cac.json`).
pub fn cac_beside(piv: &Path) -> PathBuf {
    let name = piv
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cac = if name.contains("piv") {
        name.replacen("piv", "cac", 1)
    } else {
        match name.rsplit_once('.') {
            Some((stem, ext)) if !stem.is_empty() => format!("{stem}.cac.{ext}"),
            _ => format!("{name}.cac"),
        }
    };
    piv.with_file_name(cac)
}

/// Where a card keeps its state, for the log: the file, or "off".
fn state_text(state: &Option<PathBuf>) -> String {
    match state {
        Some(path) => path.display().to_string(),
        None => "off (nothing survives a restart)".into(),
    }
}

/// The store's identities, for the log: "cert1.crt.pem, cert2.crt.pem, ...".
fn labels(keys: &dyn KeyStore) -> String {
    let names: Vec<&str> = keys.identities().iter().map(|i| i.label.as_str()).collect();
    names.join(", ")
}

/// The CAC applets' view of a store: its RSA identities (the CAC card is RSA-only).
fn cac_view(keys: Box<dyn KeyStore>) -> Result<(Box<dyn KeyStore>, SharedStore)> {
    let shared = SharedStore::new(keys);
    let rsa = shared.view(|id| id.ec_curve.is_none());
    if rsa.identities().is_empty() {
        anyhow::bail!("the key store has only EC keys; the CAC card is RSA-only (use profile=piv)");
    }
    for id in shared.identities().iter().filter(|i| i.ec_curve.is_some()) {
        tracing::warn!(certificate = %id.label, "EC key left off the CAC applets (RSA-only)");
    }
    Ok((Box::new(rsa), shared))
}

fn cac_config(
    spec: &EmulatedSpec,
    keys: &dyn KeyStore,
    data_dir_given: Option<&Path>,
) -> Result<CacConfig> {
    let mut cfg = CacConfig::default();
    // An NSS database is QEMU's ccid-card-emulated card: keep libcacard's card identifier, so
    // that a guest that knew that card sees the same one. Every other card's identifier comes
    // from its first certificate, so that no two cards look like one (issue #15).
    if matches!(spec.backend, Backend::Nss { .. }) {
        cfg.card_identifier = CardIdentifier::Libcacard;
    }
    if let Some(pin) = &spec.pin {
        if pin.is_empty() || pin.len() > 8 {
            anyhow::bail!("pin= must be 1 to 8 characters (CAC pads PINs to 8 bytes)");
        }
        cfg.pin = zeroize::Zeroizing::new(pin.as_bytes().to_vec());
    }
    if let Some(t) = spec.pin_tries {
        cfg.pin_tries = t;
    }
    cfg.state = state_file(spec, "cac", keys, data_dir_given)?;
    // A generated card's enrollment replaces its certificates, which would make its state
    // file another card's: it names the card by its name instead.
    if let Backend::Generated { name, .. } = &spec.backend {
        cfg.state_card = Some(format!("generated card {name}"));
    }
    Ok(cfg)
}

/// The emulated card for a specification.
pub fn emulated_card(spec: &EmulatedSpec, data_dir_given: Option<PathBuf>) -> Result<EmulatedCard> {
    let dir = data_dir_given.as_deref();
    let keys = key_store(&spec.backend, dir, spec.profile.has_piv())?;
    for id in keys.identities() {
        crate::expiry::warn(&id.label, &id.cert_der);
    }
    match spec.profile {
        Profile::Piv => {
            let cfg = piv_config(spec, keys.as_ref(), dir)?;
            let names = labels(keys.as_ref());
            let card = PivCard::new(keys, &cfg)?;
            tracing::info!(certificates = %names, serial = card.serial(), state = %state_text(&cfg.state), "PIV card ready (slots 9A, 9C, 9D, 9E, then 82..95, in that order)");
            Ok(EmulatedCard::Piv(Box::new(card)))
        }
        Profile::Cac => {
            let (rsa, _) = cac_view(keys)?;
            let names = labels(rsa.as_ref());
            let cfg = cac_config(spec, rsa.as_ref(), dir)?;
            let card = CacCard::new(rsa, &cfg)?;
            tracing::info!(certificates = %names, state = %state_text(&cfg.state), "CAC card ready");
            Ok(EmulatedCard::Cac(Box::new(card)))
        }
        Profile::CacPiv => {
            let (rsa, shared) = cac_view(keys)?;
            let cfg = piv_config(spec, &shared, dir)?;
            let (cac_names, piv_names) = (labels(rsa.as_ref()), labels(&shared));
            let cac_cfg = cac_config(spec, rsa.as_ref(), dir)?;
            let cac = CacCard::new(rsa, &cac_cfg)?;
            let piv = PivCard::new(Box::new(shared), &cfg)?;
            tracing::info!(cac = %cac_names, piv = %piv_names, serial = piv.serial(), state = %state_text(&cfg.state), cac_state = %state_text(&cac_cfg.state), "CAC+PIV card ready (SELECT picks the application)");
            Ok(EmulatedCard::Dual(Box::new(DualCard::new(cac, piv))))
        }
    }
}
