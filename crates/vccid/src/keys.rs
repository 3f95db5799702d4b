//! Building the emulated card from a parsed specification: open the key store, pick the
//! profile (CAC or PIV), apply the PIN settings.

use crate::spec::{self, Backend, EmulatedSpec, Profile};
use anyhow::{anyhow, Result};
use card::cac::{CacCard, CacConfig};
use card::keystore::{
    default_data_dir, DefaultIdentities, FileIdentity, FileStore, KeyStore, Pkcs11Config,
    Pkcs11Store,
};
use card::piv::{PivCard, PivConfig};
use card::Card;
use std::path::PathBuf;

/// Opens the key store a backend names.
pub fn key_store(backend: &Backend, data_dir: Option<PathBuf>) -> Result<Box<dyn KeyStore>> {
    Ok(match backend {
        Backend::Default => {
            let dir = data_dir.or_else(default_data_dir).ok_or_else(|| {
                anyhow!("no data directory: set HOME, XDG_DATA_HOME or --data-dir")
            })?;
            let files = DefaultIdentities::new(&dir).ensure()?;
            Box::new(FileStore::open(&files)?)
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
    Cac(CacCard),
    /// The PIV card.
    Piv(PivCard),
}

impl EmulatedCard {
    fn card(&mut self) -> &mut dyn Card {
        match self {
            EmulatedCard::Cac(c) => c,
            EmulatedCard::Piv(c) => c,
        }
    }
    fn card_ref(&self) -> &dyn Card {
        match self {
            EmulatedCard::Cac(c) => c,
            EmulatedCard::Piv(c) => c,
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

/// The emulated card for a specification.
pub fn emulated_card(spec: &EmulatedSpec, data_dir: Option<PathBuf>) -> Result<EmulatedCard> {
    let keys = key_store(&spec.backend, data_dir)?;
    if spec.profile == Profile::Piv {
        let mut cfg = PivConfig::default();
        for (value, field, what) in [
            (&spec.pin, &mut cfg.pin, "pin"),
            (&spec.puk, &mut cfg.puk, "puk"),
        ] {
            if let Some(v) = value {
                if v.is_empty() || v.len() > 8 {
                    anyhow::bail!("{what}= must be 1 to 8 characters (PIV pads them to 8 bytes)");
                }
                *field = v.as_bytes().to_vec();
            }
        }
        if let Some(t) = spec.pin_tries {
            cfg.pin_tries = t;
        }
        let labels: Vec<String> = keys.identities().iter().map(|i| i.label.clone()).collect();
        let card = PivCard::new(keys, &cfg)?;
        tracing::info!(certificates = ?labels, serial = card.serial(), "PIV card ready (slots 9A, 9C, 9D, 9E in that order)");
        return Ok(EmulatedCard::Piv(card));
    }
    let mut cfg = CacConfig::default();
    if let Some(pin) = &spec.pin {
        if pin.is_empty() || pin.len() > 8 {
            anyhow::bail!("pin= must be 1 to 8 characters (CAC pads PINs to 8 bytes)");
        }
        cfg.pin = zeroize::Zeroizing::new(pin.as_bytes().to_vec());
    }
    if let Some(t) = spec.pin_tries {
        cfg.pin_tries = t;
    }
    let labels: Vec<String> = keys.identities().iter().map(|i| i.label.clone()).collect();
    let card = CacCard::new(keys, &cfg)?;
    tracing::info!(certificates = ?labels, "CAC card ready");
    Ok(EmulatedCard::Cac(card))
}
