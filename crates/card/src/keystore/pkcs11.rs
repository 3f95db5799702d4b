//! Keys in a PKCS#11 token, through the `cryptoki` crate (the module is loaded at run time, so
//! no -dev package is needed): NSS databases through NSS's own softokn module (the seed's
//! `certutil` databases), SoftHSM2, or any HSM. Private keys never leave the token; the raw RSA
//! operation is C_Decrypt with CKM_RSA_X_509.

use super::{Identity, KeyError, KeyStore};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Which token of the module to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    /// The first slot with a token.
    First,
    /// By token label (CK_TOKEN_INFO.label, trailing blanks ignored).
    Label(String),
    /// By token serial number.
    Serial(String),
    /// By slot id.
    SlotId(u64),
}

/// How to open a PKCS#11 key store. `Debug` leaves the PIN out (issue #14).
#[derive(Clone)]
pub struct Pkcs11Config {
    /// The module (shared library) to load.
    pub module: PathBuf,
    /// The initialisation string some modules read from `pReserved` (NSS softokn's
    /// `configdir=...`).
    pub init_reserved: Option<String>,
    /// The token.
    pub token: TokenSelector,
    /// The token's user PIN (NSS: the database password), if it needs a login.
    pub pin: Option<Zeroizing<String>>,
    /// Certificate labels (NSS nicknames) in card order; empty = every certificate that has a
    /// private key, sorted by CKA_ID as libcacard does (libcacard.md §2.3).
    pub labels: Vec<String>,
    /// Only certificates with this CKA_ID (from an RFC 7512 `id=`).
    pub id: Option<Vec<u8>>,
}

impl std::fmt::Debug for Pkcs11Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Config")
            .field("module", &self.module)
            .field("init_reserved", &self.init_reserved)
            .field("token", &self.token)
            .field("pin", &self.pin.as_ref().map(|_| crate::Redacted))
            .field("labels", &self.labels)
            .field("id", &self.id)
            .finish()
    }
}

/// Where Debian and Fedora put NSS's softokn.
const SOFTOKN_PATHS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/libsoftokn3.so",
    "/usr/lib/aarch64-linux-gnu/libsoftokn3.so",
    "/usr/lib/x86_64-linux-gnu/nss/libsoftokn3.so",
    "/usr/lib64/libsoftokn3.so",
    "/usr/lib/libsoftokn3.so",
];

impl Pkcs11Config {
    /// An NSS database (`sql:DIR`, `dbm:DIR` or a bare directory) opened read-only through
    /// softokn's internal key token ("NSS Certificate DB"), with certificates chosen by nickname.
    pub fn nss(
        db: &str,
        nicknames: Vec<String>,
        password: Option<Zeroizing<String>>,
    ) -> Result<Self, KeyError> {
        let dir = db
            .strip_prefix("sql:")
            .or_else(|| db.strip_prefix("dbm:"))
            .unwrap_or(db);
        if !Path::new(dir).join("cert9.db").exists() && !Path::new(dir).join("cert8.db").exists() {
            return Err(KeyError::NotFound(format!(
                "no NSS database in {dir} (no cert9.db); create one with: certutil -N -d sql:{dir} --empty-password"
            )));
        }
        let configdir = if db.starts_with("dbm:") || db.starts_with("sql:") {
            db.to_string()
        } else {
            format!("sql:{db}")
        };
        let module = SOFTOKN_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| {
                KeyError::NotFound("NSS softokn (libsoftokn3.so) not found; install libnss3".into())
            })?;
        Ok(Pkcs11Config {
            module,
            init_reserved: Some(format!(
                "configdir='{configdir}' certPrefix='' keyPrefix='' secmod='secmod.db' flags=readOnly"
            )),
            token: TokenSelector::Label("NSS Certificate DB".into()),
            // An NSS database made with --empty-password is unlocked by the empty password.
            pin: Some(password.unwrap_or_default()),
            labels: nicknames,
            id: None,
        })
    }

    /// Parses an RFC 7512 PKCS#11 URI: path attributes `token`, `serial`, `slot-id`, `object`,
    /// `id`; query attributes `module-path`, `pin-value`, `pin-source` (a file).
    pub fn from_uri(uri: &str) -> Result<Self, KeyError> {
        // Errors show the URI with its pin-value hidden (issue #13: no error shows a PIN).
        let bad = |why: String| {
            KeyError::NotFound(format!("PKCS#11 URI {:?}: {why}", redact_pin_value(uri)))
        };
        let rest = uri
            .strip_prefix("pkcs11:")
            .ok_or_else(|| bad("does not start with pkcs11:".into()))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut cfg = Pkcs11Config {
            module: PathBuf::new(),
            init_reserved: None,
            token: TokenSelector::First,
            pin: None,
            labels: Vec::new(),
            id: None,
        };
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (k, v) = attr
                .split_once('=')
                .ok_or_else(|| bad(format!("attribute {attr:?} has no '='")))?;
            let v = percent_decode(v).ok_or_else(|| bad(format!("bad %-escape in {attr:?}")))?;
            let text = || String::from_utf8_lossy(&v).into_owned();
            match k {
                "token" => cfg.token = TokenSelector::Label(text()),
                "serial" => cfg.token = TokenSelector::Serial(text()),
                "slot-id" => {
                    cfg.token = TokenSelector::SlotId(
                        text()
                            .parse()
                            .map_err(|_| bad(format!("slot-id {:?} is not a number", text())))?,
                    )
                }
                "object" => cfg.labels = vec![text()],
                "id" => cfg.id = Some(v),
                "type"
                | "manufacturer"
                | "model"
                | "library-manufacturer"
                | "library-description"
                | "library-version"
                | "slot-description"
                | "slot-manufacturer" => {}
                _ => return Err(bad(format!("unknown attribute {k:?}"))),
            }
        }
        for attr in query.split('&').filter(|a| !a.is_empty()) {
            let (k, v) = attr
                .split_once('=')
                .ok_or_else(|| bad(format!("query {:?} has no '='", redact_pin_value(attr))))?;
            // A value may be the PIN (pin-value): every copy of it is wiped (issue #14).
            let decoded = Zeroizing::new(
                percent_decode(v)
                    .ok_or_else(|| bad(format!("bad %-escape in {:?}", redact_pin_value(attr))))?,
            );
            let v = Zeroizing::new(String::from_utf8_lossy(&decoded).into_owned());
            match k {
                "module-path" => cfg.module = PathBuf::from(v.as_str()),
                "pin-value" => cfg.pin = Some(v),
                "pin-source" => {
                    let path = v.strip_prefix("file:").unwrap_or(&v);
                    let pin = Zeroizing::new(
                        std::fs::read_to_string(path)
                            .map_err(|e| bad(format!("pin-source {path}: {e}")))?,
                    );
                    cfg.pin = Some(Zeroizing::new(
                        pin.trim_end_matches(['\n', '\r']).to_string(),
                    ));
                }
                _ => return Err(bad(format!("unknown query attribute {k:?}"))),
            }
        }
        if cfg.module.as_os_str().is_empty() {
            return Err(bad("no module-path=... in the query".into()));
        }
        Ok(cfg)
    }
}

/// `text` with the value of every `pin-value=` (up to the next `&`, `;` or `,`) replaced by
/// `***`, for messages that quote a PKCS#11 URI or a card specification holding one.
pub fn redact_pin_value(text: &str) -> String {
    const KEY: &str = "pin-value=";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(KEY) {
        let after = &rest[i + KEY.len()..];
        let end = after.find(['&', ';', ',']).unwrap_or(after.len());
        out.push_str(&rest[..i + KEY.len()]);
        out.push_str("***");
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// A PKCS#11 token as a key store.
pub struct Pkcs11Store {
    session: Session,
    identities: Vec<Identity>,
    keys: Vec<ObjectHandle>,
    raw_ok: bool,
    _ctx: Pkcs11,
}

impl std::fmt::Debug for Pkcs11Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Store")
            .field("identities", &self.identities.len())
            .finish()
    }
}

fn p11(what: &str) -> impl Fn(cryptoki::error::Error) -> KeyError + '_ {
    move |e| KeyError::Pkcs11(format!("{what}: {e}"))
}

impl Pkcs11Store {
    /// Loads the module, finds the token, logs in when the token needs it, and lists the
    /// certificates with their private keys.
    pub fn open(cfg: &Pkcs11Config) -> Result<Self, KeyError> {
        let ctx = Pkcs11::new(&cfg.module).map_err(|e| {
            KeyError::Pkcs11(format!("cannot load module {}: {e}", cfg.module.display()))
        })?;
        let flags = CInitializeFlags::OS_LOCKING_OK;
        let reserved = cfg
            .init_reserved
            .as_ref()
            .map(|s| {
                CString::new(s.as_str()).map_err(|_| KeyError::Pkcs11("NUL in init string".into()))
            })
            .transpose()?;
        let args = match &reserved {
            // SAFETY: the string outlives C_Initialize (it lives until the end of this
            // function) and the module only reads it during that call.
            Some(s) => unsafe {
                CInitializeArgs::new_with_reserved(
                    flags,
                    std::ptr::NonNull::new_unchecked(s.as_ptr() as *mut std::ffi::c_void),
                )
            },
            None => CInitializeArgs::new(flags),
        };
        ctx.initialize(args).map_err(p11("C_Initialize"))?;
        let slots = ctx.get_slots_with_token().map_err(p11("C_GetSlotList"))?;
        let mut found = None;
        let mut seen = Vec::new();
        for slot in slots {
            let info = ctx.get_token_info(slot).map_err(p11("C_GetTokenInfo"))?;
            let label = info.label().trim_end().to_string();
            let serial = info.serial_number().trim_end().to_string();
            let hit = match &cfg.token {
                TokenSelector::First => true,
                TokenSelector::Label(l) => *l == label,
                TokenSelector::Serial(s) => *s == serial,
                TokenSelector::SlotId(id) => *id == slot.id(),
            };
            seen.push(format!("{label:?} (serial {serial}, slot {})", slot.id()));
            if hit {
                found = Some((slot, info.login_required(), label));
                break;
            }
        }
        let (slot, login_required, label) = found.ok_or_else(|| {
            KeyError::NotFound(format!(
                "no token matches {:?} in {}; tokens: {}",
                cfg.token,
                cfg.module.display(),
                if seen.is_empty() {
                    "none".into()
                } else {
                    seen.join(", ")
                }
            ))
        })?;
        let session = ctx.open_ro_session(slot).map_err(p11("C_OpenSession"))?;
        if login_required {
            let pin = cfg.pin.as_ref().ok_or_else(|| {
                KeyError::Pkcs11(format!(
                    "token {label:?} needs its PIN: give token-pin-file=FILE or VCCID_TOKEN_PIN"
                ))
            })?;
            match session.login(
                UserType::User,
                Some(&AuthPin::from(pin.as_str().to_string())),
            ) {
                Ok(()) => {}
                Err(cryptoki::error::Error::Pkcs11(
                    cryptoki::error::RvError::UserAlreadyLoggedIn,
                    _,
                )) => {}
                Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::PinIncorrect, _)) => {
                    return Err(KeyError::Pkcs11(format!(
                        "wrong PIN/password for token {label:?}"
                    )))
                }
                Err(e) => return Err(p11("C_Login")(e)),
            }
        }
        let (identities, keys) = list_identities(&session, cfg, &label)?;
        Ok(Pkcs11Store {
            session,
            identities,
            keys,
            raw_ok: true,
            _ctx: ctx,
        })
    }
}

fn list_identities(
    session: &Session,
    cfg: &Pkcs11Config,
    token: &str,
) -> Result<(Vec<Identity>, Vec<ObjectHandle>), KeyError> {
    let certs = session
        .find_objects(&[Attribute::Class(ObjectClass::CERTIFICATE)])
        .map_err(p11("C_FindObjects"))?;
    let mut all = Vec::new();
    for h in certs {
        let attrs = session
            .get_attributes(
                h,
                &[
                    AttributeType::Value,
                    AttributeType::Id,
                    AttributeType::Label,
                ],
            )
            .map_err(p11("C_GetAttributeValue"))?;
        let (mut value, mut id, mut label) = (None, None, String::new());
        for a in attrs {
            match a {
                Attribute::Value(v) => value = Some(v),
                Attribute::Id(v) => id = Some(v),
                Attribute::Label(v) => label = String::from_utf8_lossy(&v).into_owned(),
                _ => {}
            }
        }
        if let (Some(value), Some(id)) = (value, id) {
            all.push((label, id, value));
        }
    }
    let chosen: Vec<(String, Vec<u8>, Vec<u8>)> = if cfg.labels.is_empty() {
        let mut v: Vec<_> = all
            .into_iter()
            .filter(|(_, id, _)| cfg.id.as_ref().is_none_or(|want| want == id))
            .collect();
        v.sort_by(|a, b| a.1.cmp(&b.1));
        v
    } else {
        let mut v = Vec::new();
        for want in &cfg.labels {
            let hit = all
                .iter()
                .find(|(l, id, _)| l == want && cfg.id.as_ref().is_none_or(|w| w == id));
            match hit {
                Some(c) => v.push(c.clone()),
                None => {
                    let names: Vec<&str> = all.iter().map(|c| c.0.as_str()).collect();
                    return Err(KeyError::NotFound(format!(
                        "no certificate {want:?} in token {token:?}; it has: {}",
                        if names.is_empty() {
                            "no certificates".into()
                        } else {
                            names.join(", ")
                        }
                    )));
                }
            }
        }
        v
    };
    let mut identities = Vec::new();
    let mut keys = Vec::new();
    for (label, id, value) in chosen {
        let key = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Id(id.clone()),
            ])
            .map_err(p11("C_FindObjects"))?;
        let Some(key) = key.first().copied() else {
            if cfg.labels.is_empty() {
                tracing::warn!(%label, "certificate has no private key in the token; skipped");
                continue;
            }
            return Err(KeyError::NotFound(format!(
                "certificate {label:?} has no private key in token {token:?} (is the token logged in?)"
            )));
        };
        identities.push(Identity::from_cert_rsa_or_ec(label, value)?);
        keys.push(key);
    }
    if identities.is_empty() {
        return Err(KeyError::NotFound(format!(
            "token {token:?} has no certificate with a private key"
        )));
    }
    Ok((identities, keys))
}

fn map_rv(e: cryptoki::error::Error) -> KeyError {
    use cryptoki::error::{Error, RvError};
    match e {
        Error::Pkcs11(RvError::UserNotLoggedIn, _) => KeyError::NotLoggedIn,
        Error::Pkcs11(
            RvError::DataInvalid
            | RvError::DataLenRange
            | RvError::EncryptedDataInvalid
            | RvError::EncryptedDataLenRange,
            _,
        ) => KeyError::BadInput(e.to_string()),
        e => KeyError::Pkcs11(e.to_string()),
    }
}

impl KeyStore for Pkcs11Store {
    fn identities(&self) -> &[Identity] {
        &self.identities
    }

    fn rsa_raw(&mut self, index: usize, input: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let key = *self
            .keys
            .get(index)
            .ok_or_else(|| KeyError::NotFound(format!("no key {index}")))?;
        let k = self.identities[index].modulus_len();
        if input.len() != k {
            return Err(KeyError::BadInput(format!(
                "{} bytes for a {k}-byte modulus",
                input.len()
            )));
        }
        if self.raw_ok {
            match self.session.decrypt(&Mechanism::RsaX509, key, input) {
                Ok(mut out) => {
                    // Some modules strip leading zero bytes of the result; restore its length.
                    if out.len() < k {
                        let mut padded = vec![0u8; k - out.len()];
                        padded.append(&mut out);
                        out = padded;
                    }
                    return Ok(Zeroizing::new(out));
                }
                Err(cryptoki::error::Error::Pkcs11(
                    cryptoki::error::RvError::MechanismInvalid
                    | cryptoki::error::RvError::KeyFunctionNotPermitted,
                    _,
                )) => {
                    tracing::info!("token has no raw RSA (CKM_RSA_X_509); using CKM_RSA_PKCS");
                    self.raw_ok = false;
                }
                Err(e) => return Err(map_rv(e)),
            }
        }
        pkcs1_fallback(&self.session, key, input, k)
    }

    /// CKM_ECDSA over the digest (PKCS#11 v2.40 §2.3.6): the token answers r || s, which the
    /// card returns as an ECDSA-Sig-Value (SP 800-73-4 Part 2 §3.2.4, RFC 5480).
    fn ec_sign(&mut self, index: usize, digest: &[u8]) -> Result<Vec<u8>, KeyError> {
        let key = self.ec_key(index)?;
        let raw = self
            .session
            .sign(&Mechanism::Ecdsa, key, digest)
            .map_err(map_rv)?;
        super::ecdsa_raw_to_der(&raw)
    }

    /// CKM_ECDH1_DERIVE with no KDF (PKCS#11 v2.40 §2.3.12) into a session-only generic secret
    /// that is read once and destroyed.
    fn ecdh(&mut self, index: usize, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
        use cryptoki::object::KeyType;
        let key = self.ec_key(index)?;
        let field = self.identities[index]
            .ec_curve
            .map(super::EcCurve::field_len)
            .unwrap_or_default();
        let params = Ecdh1DeriveParams::new(EcKdf::null(), peer);
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::ValueLen((field as u64).into()),
            Attribute::Token(false),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
        ];
        let secret = self
            .session
            .derive_key(&Mechanism::Ecdh1Derive(params), key, &template)
            .map_err(map_rv)?;
        let value = self
            .session
            .get_attributes(secret, &[AttributeType::Value])
            .map_err(map_rv);
        let _ = self.session.destroy_object(secret);
        match value?.into_iter().next() {
            Some(Attribute::Value(v)) => Ok(Zeroizing::new(v)),
            _ => Err(KeyError::Pkcs11("the derived secret has no value".into())),
        }
    }
}

impl Pkcs11Store {
    fn ec_key(&self, index: usize) -> Result<ObjectHandle, KeyError> {
        match (self.keys.get(index), self.identities.get(index)) {
            (Some(k), Some(id)) if id.ec_curve.is_some() => Ok(*k),
            (Some(_), _) => Err(KeyError::BadInput(format!("key {index} is not EC"))),
            _ => Err(KeyError::NotFound(format!("no key {index}"))),
        }
    }
}

/// Without CKM_RSA_X_509: a PKCS#1 type-1 block is signed with CKM_RSA_PKCS over its payload;
/// anything else is decrypted with CKM_RSA_PKCS and re-wrapped as a type-2 block with random
/// non-zero padding (libcacard.md §1.11, minus its constant 0x03 padding). PSS and raw X.509
/// blocks cannot be served this way; they get an error.
fn pkcs1_fallback(
    session: &Session,
    key: ObjectHandle,
    input: &[u8],
    k: usize,
) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    if input.len() > 2 && input[0] == 0 && input[1] == 1 {
        let pad = input[2..].iter().take_while(|b| **b == 0xFF).count();
        let sep = 2 + pad;
        if pad >= 8 && input.get(sep) == Some(&0) {
            return session
                .sign(&Mechanism::RsaPkcs, key, &input[sep + 1..])
                .map(Zeroizing::new)
                .map_err(map_rv);
        }
        return Err(KeyError::BadInput(
            "not a PKCS#1 type-1 block and the token has no raw RSA".into(),
        ));
    }
    let msg = Zeroizing::new(
        session
            .decrypt(&Mechanism::RsaPkcs, key, input)
            .map_err(map_rv)?,
    );
    if msg.len() + 11 > k {
        return Err(KeyError::BadInput("decrypted message too long".into()));
    }
    let mut out = Zeroizing::new(vec![0u8; k]);
    out[1] = 2;
    let pad_end = k - msg.len() - 1;
    for b in &mut out[2..pad_end] {
        let mut r = [0u8];
        loop {
            aws_lc_rs::rand::fill(&mut r)
                .map_err(|_| KeyError::Pkcs11("no random numbers".into()))?;
            if r[0] != 0 {
                break;
            }
        }
        *b = r[0];
    }
    out[pad_end + 1..].copy_from_slice(&msg);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_errors_hide_the_pin_value() {
        assert_eq!(
            redact_pin_value("pkcs11:token=a?pin-value=31415926&module-path=/m.so"),
            "pkcs11:token=a?pin-value=***&module-path=/m.so"
        );
        assert_eq!(redact_pin_value("x,pin-value=1;y"), "x,pin-value=***;y");
        let err = Pkcs11Config::from_uri("pkcs11:token=a?pin-value=31415926&bogus=1")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("bogus") && !err.contains("31415926"), "{err}");
    }

    #[test]
    fn uri_parsing() {
        let c = Pkcs11Config::from_uri(
            "pkcs11:token=SC%20test;object=RSA_sign;id=%02?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=77777777",
        )
        .unwrap();
        assert_eq!(c.token, TokenSelector::Label("SC test".into()));
        assert_eq!(c.labels, vec!["RSA_sign".to_string()]);
        assert_eq!(c.id, Some(vec![2]));
        assert_eq!(c.pin.as_deref().map(String::as_str), Some("77777777"));
        assert_eq!(c.module, PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
        assert!(Pkcs11Config::from_uri("pkcs11:token=x").is_err());
        assert!(Pkcs11Config::from_uri("pkcs12:token=x?module-path=/m").is_err());
        assert!(Pkcs11Config::from_uri("pkcs11:bogus=1?module-path=/m").is_err());
        assert!(Pkcs11Config::from_uri("pkcs11:token=%G1?module-path=/m").is_err());
        assert_eq!(
            Pkcs11Config::from_uri("pkcs11:slot-id=5?module-path=/m")
                .unwrap()
                .token,
            TokenSelector::SlotId(5)
        );
    }

    #[test]
    fn nss_without_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e =
            Pkcs11Config::nss(&format!("sql:{}", dir.path().display()), vec![], None).unwrap_err();
        assert!(e.to_string().contains("certutil -N"), "{e}");
    }
}
