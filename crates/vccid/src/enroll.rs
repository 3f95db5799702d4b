//! Enrollment and PIN management at run time (issue #15): the control commands
//! `card-enroll`, `card-set-pin` and `card-unblock`, their `vccid ctl card ...` clients, and
//! the `PIN_BLOCKED` event.
//!
//! The registry holds cards as `dyn Card`; the administrative calls need the emulated card
//! itself. [`Cards`] makes every emulated card of the service (`Service::make_card` hands it
//! the specification) and keeps a weak handle to it by id, so that the registry stays the
//! card's owner: a card removed from the registry is gone here too.
//!
//! What is done where:
//! - PIV slots `9a`, `9c`, `9d`, `9e` (profile piv or cac+piv): the PIV card generates the key,
//!   signs the request and keeps key and certificate in its state file
//!   (`card::piv::PivCard::enroll_generate` and friends), as GENERATE ASYMMETRIC KEY PAIR and
//!   PUT DATA from a host would. Nothing changes for hosts but the slot's contents.
//! - CAC identities `cert1`..`cert3` (profile cac, keys=generated): the card's key store files
//!   change (`card::keystore::GeneratedIdentities::enroll_generate` and friends); a new
//!   certificate makes the card anew from its files, in the same `Traced` wrapper and slot,
//!   with an ejection and insertion its host sees, since the CAC card's identifiers change with
//!   its first certificate.
//! - PINs: each application keeps its PIN in its state file (the CAC card's since issue #17);
//!   a card without one (`state=off`, ephemeral) keeps a PIN set here until the card is made
//!   again (`"persisted": false`).

use crate::ctl::Connection;
use crate::keys::EmulatedCard;
use crate::secret::Secret;
use crate::service::Service;
use crate::spec::{Backend, EmulatedSpec, Profile};
use anyhow::{anyhow, bail, Context, Result};
use card::enroll::{Algorithm, EnrollError};
use card::keystore::GeneratedIdentities;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use zeroize::Zeroizing;

/// An emulated card as the service makes it: its own type, behind the mutex the registry's
/// `dyn Card` shares.
type Typed = Mutex<card::Traced<EmulatedCard>>;

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An emulated card and what it was made from.
struct Entry {
    card: Weak<Typed>,
    spec: EmulatedSpec,
    data_dir: Option<PathBuf>,
}

/// The service's emulated cards, by id, for their administration.
#[derive(Default)]
pub struct Cards {
    entries: Mutex<BTreeMap<String, Entry>>,
    /// One administrative change at a time: an enrollment writes files and may make its card
    /// anew, which another one must not interleave with.
    busy: Mutex<()>,
}

impl std::fmt::Debug for Cards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cards")
            .field("cards", &lock(&self.entries).keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Reports card `id`'s PIN blocked as a registry event (`PIN_BLOCKED` on the control socket).
fn watch_pin(card: &mut EmulatedCard, registry: &slot::Registry, id: &str) {
    let (registry, id) = (registry.clone(), id.to_string());
    let hook: card::PinBlocked = Arc::new(move || {
        tracing::warn!(card = %id, "PIN blocked (wrong PIN too many times)");
        registry.pin_blocked(&id);
    });
    match card {
        EmulatedCard::Cac(c) => c.set_pin_blocked_hook(Some(hook)),
        EmulatedCard::Piv(p) => p.set_pin_blocked_hook(Some(hook)),
        EmulatedCard::Dual(d) => {
            d.cac_mut().set_pin_blocked_hook(Some(hook.clone()));
            d.piv_mut().set_pin_blocked_hook(Some(hook));
        }
    }
}

impl Cards {
    /// Makes emulated card `id` (as `service::make_card` does: the card of `spec` in a
    /// `card::Traced`), reporting its PIN blocked through `registry`, and keeps a handle to it.
    pub fn make(
        &self,
        id: &str,
        spec: &EmulatedSpec,
        data_dir: Option<PathBuf>,
        registry: &slot::Registry,
    ) -> Result<slot::SharedCard> {
        let mut card = crate::keys::emulated_card(spec, data_dir.clone())?;
        watch_pin(&mut card, registry, id);
        let typed = Arc::new(Mutex::new(card::Traced::new(card)));
        let mut entries = lock(&self.entries);
        entries.retain(|_, e| e.card.strong_count() > 0);
        entries.insert(
            id.to_string(),
            Entry {
                card: Arc::downgrade(&typed),
                spec: spec.clone(),
                data_dir,
            },
        );
        Ok(typed)
    }

    /// What a status page shows of emulated card `id`: PIN tries left and its certificates
    /// (label, subject, notAfter); `None` for a card of another kind.
    pub fn details(&self, registry: &slot::Registry, id: &str) -> Option<Details> {
        let (card, _, _) = self.get(registry, id).ok()?;
        let guard = lock(&card);
        let (tries, certs) = match guard.inner() {
            EmulatedCard::Cac(c) => (c.pin_tries_left(), c.certificates()),
            EmulatedCard::Piv(p) => (p.pin_tries_left(), p.certificates()),
            EmulatedCard::Dual(d) => {
                let mut certs = d.cac().certificates();
                certs.extend(d.piv().certificates());
                (d.cac().pin_tries_left(), certs)
            }
        };
        Some(Details {
            pin_tries_left: Some(tries),
            certificates: certs
                .into_iter()
                .map(|(label, der)| CertInfo {
                    label,
                    subject: card::keystore::certificate_subject(&der),
                    not_after: crate::expiry::not_after(&der),
                })
                .collect(),
        })
    }

    /// Card `id`, its specification and data directory.
    fn get(
        &self,
        registry: &slot::Registry,
        id: &str,
    ) -> Result<(Arc<Typed>, EmulatedSpec, Option<PathBuf>)> {
        registry.card(id)?;
        let entries = lock(&self.entries);
        let e = entries
            .get(id)
            .and_then(|e| Some((e.card.upgrade()?, e)))
            .ok_or_else(|| {
                anyhow!(
                    "card {id:?} is not an emulated card: only those are enrolled and given PINs"
                )
            })?;
        Ok((e.0, e.1.spec.clone(), e.1.data_dir.clone()))
    }
}

/// A card's status ([`Cards::details`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Details {
    /// Wrong PINs left before it blocks.
    pub pin_tries_left: Option<u8>,
    /// Its certificates.
    pub certificates: Vec<CertInfo>,
}

/// A certificate on a card, for a status page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertInfo {
    /// The identity's label, or the PIV slot ("9A").
    pub label: String,
    /// The subject, RFC 4514.
    pub subject: Option<String>,
    /// notAfter, RFC 3339 UTC.
    pub not_after: Option<String>,
}

/// The PIV application of a card.
fn piv(card: &mut EmulatedCard) -> Option<&mut card::piv::PivCard> {
    match card {
        EmulatedCard::Piv(p) => Some(p),
        EmulatedCard::Dual(d) => Some(d.piv_mut()),
        EmulatedCard::Cac(_) => None,
    }
}

fn text<'a>(args: &'a Value, name: &str) -> Result<&'a str> {
    args.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("argument {name:?} (a string) is missing"))
}

/// The arguments of `card-enroll` each action takes besides card, slot and action.
const ACTIONS: [(&str, &[&str]); 4] = [
    ("generate", &["algorithm", "subject"]),
    ("put-certificate", &["certificate"]),
    ("import", &["certificate", "key"]),
    ("delete-certificate", &[]),
];

/// The subject of a PEM certificate, for answers.
fn subject_of(pem: &str) -> Option<String> {
    card::enroll::certificate_der(pem)
        .ok()
        .and_then(|der| card::keystore::certificate_subject(&der))
}

/// `card-enroll {card, slot, action, algorithm?, subject?, certificate?, key?}`.
pub fn card_enroll(svc: &Service, args: &Value) -> Result<Value> {
    let id = text(args, "card")?;
    let slot = text(args, "slot")?.to_ascii_lowercase();
    let action = text(args, "action")?;
    let (_, takes) = ACTIONS.iter().find(|(a, _)| *a == action).ok_or_else(|| {
        anyhow!(
            "action {action:?}: expected generate, put-certificate, import or delete-certificate"
        )
    })?;
    for (k, _) in args.as_object().into_iter().flatten() {
        if !["card", "slot", "action"].contains(&k.as_str()) && !takes.contains(&k.as_str()) {
            bail!("card-enroll {action} takes no argument {k:?}");
        }
    }
    let opt = |k: &str| args.get(k).and_then(Value::as_str);
    let algorithm = opt("algorithm").map(Algorithm::parse).transpose()?;
    let cards = svc.enrollment();
    let _busy = lock(&cards.busy);
    let (card, spec, data_dir) = cards.get(svc.registry(), id)?;
    let mut answer = if slot.starts_with("cert") {
        enroll_cac(
            svc,
            id,
            &slot,
            action,
            args,
            algorithm,
            (&card, &spec, data_dir),
        )?
    } else {
        let r = card::piv::parse_slot(&slot)?;
        let mut guard = lock(&card);
        let piv = piv(guard.inner_mut()).ok_or_else(|| {
            anyhow!(
                "card {id:?} has no PIV application (profile=cac); its slots are cert1, \
                 cert2, cert3"
            )
        })?;
        match action {
            "generate" => {
                let alg = algorithm.unwrap_or(Algorithm::P256);
                let (csr, saved) = piv.enroll_generate(r, alg, opt("subject"))?;
                json!({"csr": csr, "algorithm": alg.to_string(), "persisted": saved})
            }
            "put-certificate" => {
                let cert = text(args, "certificate")?;
                let saved = piv.put_certificate(r, cert)?;
                json!({"subject": subject_of(cert), "persisted": saved})
            }
            "import" => {
                let cert = text(args, "certificate")?;
                let key = Zeroizing::new(text(args, "key")?.to_string());
                let saved = piv.import_key(r, cert, &key)?;
                json!({"subject": subject_of(cert), "persisted": saved})
            }
            _ => json!({"persisted": piv.delete_certificate(r)?}),
        }
    };
    answer["card"] = json!(id);
    answer["slot"] = json!(slot);
    tracing::info!(card = id, %slot, action, "enrollment done");
    Ok(answer)
}

/// `card-enroll` of a CAC identity of a generated card.
fn enroll_cac(
    svc: &Service,
    id: &str,
    slot: &str,
    action: &str,
    args: &Value,
    algorithm: Option<Algorithm>,
    (card, spec, data_dir): (&Arc<Typed>, &EmulatedSpec, Option<PathBuf>),
) -> Result<Value> {
    let name = GeneratedIdentities::cac_identity(slot)?;
    match spec.profile {
        Profile::Cac => {}
        Profile::Piv => {
            bail!("card {id:?} has no CAC application (profile=piv); its slots are 9a, 9c, 9d, 9e")
        }
        // The PIV application's state file is bound to the certificates the card was made
        // with (card::piv::card_id): new CAC identities would make it another card's.
        Profile::CacPiv => bail!(
            "card {id:?} is a cac+piv card, whose PIV state is bound to its CAC certificates; \
             enroll its PIV slots (9a, 9c, 9d, 9e) instead"
        ),
    }
    let store = match &spec.backend {
        Backend::Generated {
            name: card_name,
            subject,
            ephemeral: false,
        } => {
            let dir = data_dir
                .clone()
                .or_else(card::keystore::default_data_dir)
                .ok_or_else(|| anyhow!("no data directory for card {id:?}"))?;
            GeneratedIdentities::new(&dir, card_name, subject.as_ref())
        }
        Backend::Generated {
            ephemeral: true, ..
        } => bail!(
            "card {id:?} is ephemeral: its CAC identities live in memory only; enroll a card \
             that is kept (or its PIV slots)"
        ),
        _ => bail!(
            "card {id:?} takes its CAC certificates from its key store; enrollment replaces the \
             identities of a generated card (keys = \"generated\") only"
        ),
    };
    let opt = |k: &str| args.get(k).and_then(Value::as_str);
    Ok(match action {
        "generate" => {
            let alg = algorithm.unwrap_or(Algorithm::Rsa2048);
            let csr = store.enroll_generate(name, alg, opt("subject"))?;
            json!({"csr": csr, "algorithm": alg.to_string(), "persisted": true})
        }
        "put-certificate" => {
            let cert = text(args, "certificate")?;
            store.enroll_certificate(name, cert)?;
            remake(svc, id, card, spec, data_dir)?;
            json!({"subject": subject_of(cert), "persisted": true})
        }
        "import" => {
            let cert = text(args, "certificate")?;
            let key = Zeroizing::new(text(args, "key")?.to_string());
            store.enroll_import(name, cert, &key)?;
            remake(svc, id, card, spec, data_dir)?;
            json!({"subject": subject_of(cert), "persisted": true})
        }
        _ => bail!(
            "the CAC card's PKI applets are its certificates: one cannot be deleted (put \
             another certificate there, or remove the card)"
        ),
    })
}

/// Makes card `id` anew from its files, in place: the registry keeps the same card (the same
/// `Traced`, in the same slot), ejected and inserted again so that its host reads it anew.
fn remake(
    svc: &Service,
    id: &str,
    card: &Arc<Typed>,
    spec: &EmulatedSpec,
    data_dir: Option<PathBuf>,
) -> Result<()> {
    let registry = svc.registry();
    let slot = registry.slot_of(id)?;
    if let Some(s) = &slot {
        registry.eject(s)?;
    }
    // The card made anew takes the CAC state file (PIN and counter) with its lock: the old
    // card lets go of it first, and takes it back if the new one cannot be made.
    if let EmulatedCard::Cac(c) = lock(card).inner_mut() {
        c.release_state();
    }
    let made = crate::keys::emulated_card(spec, data_dir).map(|mut new| {
        watch_pin(&mut new, registry, id);
        *lock(card).inner_mut() = new;
    });
    if made.is_err() {
        if let EmulatedCard::Cac(c) = lock(card).inner_mut() {
            if let Err(e) = c.retake_state() {
                tracing::error!(card = id, "{e}; its PIN tries answer 6581 until a restart");
            }
        }
    }
    if let Some(s) = &slot {
        registry.insert(id, s)?;
    }
    made.context(
        "the card's files hold the new identity, but the running card could not be made from \
         them (it serves them after a restart)",
    )
}

/// Sets the PIN of every application of `card`; whether each keeps it across a restart.
fn set_pin(card: &mut EmulatedCard, pin: &[u8]) -> Result<bool, EnrollError> {
    match card {
        EmulatedCard::Cac(c) => c.set_pin(pin),
        EmulatedCard::Piv(p) => p.set_pin(pin),
        // The PIV rule (6 to 8 digits) is the stricter: checked first, the CAC PIN follows.
        EmulatedCard::Dual(d) => {
            let piv = d.piv_mut().set_pin(pin)?;
            Ok(d.cac_mut().set_pin(pin)? && piv)
        }
    }
}

/// `card-set-pin {card, pin}`: the PIN reset to a new value, its retry counter full.
pub fn card_set_pin(svc: &Service, args: &Value) -> Result<Value> {
    let id = text(args, "card")?;
    let pin = Zeroizing::new(text(args, "pin")?.as_bytes().to_vec());
    let cards = svc.enrollment();
    let _busy = lock(&cards.busy);
    let (card, _, _) = cards.get(svc.registry(), id)?;
    let persisted = set_pin(lock(&card).inner_mut(), &pin)?;
    tracing::info!(card = id, persisted, "PIN set by the service");
    Ok(json!({"card": id, "persisted": persisted}))
}

/// `card-unblock {card, pin, puk?}`: the PIN unblocked and set to `pin`, with the PIV PUK
/// (RESET RETRY COUNTER) or without it (the issuer's reset; the only way for the CAC card).
pub fn card_unblock(svc: &Service, args: &Value) -> Result<Value> {
    let id = text(args, "card")?;
    let pin = Zeroizing::new(text(args, "pin")?.as_bytes().to_vec());
    let puk = args
        .get("puk")
        .map(|v| {
            v.as_str()
                .map(|s| Zeroizing::new(s.as_bytes().to_vec()))
                .ok_or_else(|| anyhow!("puk must be a string"))
        })
        .transpose()?;
    let cards = svc.enrollment();
    let _busy = lock(&cards.busy);
    let (card, _, _) = cards.get(svc.registry(), id)?;
    let mut guard = lock(&card);
    let persisted = match (guard.inner_mut(), puk.as_deref().map(Vec::as_slice)) {
        (EmulatedCard::Cac(_), Some(_)) => {
            bail!("the CAC card has no PUK; unblock it without one (an administrative reset)")
        }
        (c @ EmulatedCard::Cac(_), None) => set_pin(c, &pin)?,
        (EmulatedCard::Piv(p), puk) => p.unblock(puk, &pin)?,
        (EmulatedCard::Dual(d), puk) => {
            let piv = d.piv_mut().unblock(puk, &pin)?;
            d.cac_mut().set_pin(&pin)? && piv
        }
    };
    drop(guard);
    tracing::info!(
        card = id,
        with_puk = puk.is_some(),
        "PIN unblocked by the service"
    );
    Ok(json!({"card": id, "persisted": persisted}))
}

/// `vccid ctl card enroll CARD SLOT ...`.
#[derive(clap::Args, Debug)]
#[command(group(
    clap::ArgGroup::new("action")
        .required(true)
        .args(["generate", "put_certificate", "import", "delete_certificate"])
))]
pub struct EnrollArgs {
    /// The card.
    pub card: String,
    /// A PIV slot (9a, 9c, 9d, 9e) or a CAC identity of a generated card (cert1..cert3).
    pub slot: String,
    /// Generate a key pair in the slot and print a certificate request (PKCS#10, PEM) for it.
    #[arg(long)]
    pub generate: bool,
    /// The key: p256 (PIV default), p384 or rsa2048 (CAC: rsa2048 only).
    #[arg(long, requires = "generate")]
    pub algorithm: Option<String>,
    /// The request's subject, e.g. CN=alice,O=Example (default: the slot certificate's).
    #[arg(long, requires = "generate")]
    pub subject: Option<String>,
    /// Put this certificate (PEM; - for standard input) into the slot; it must carry the
    /// slot's key (the one --generate made).
    #[arg(long, value_name = "FILE")]
    pub put_certificate: Option<PathBuf>,
    /// Import a certificate and its private key (PEM files) into the slot.
    #[arg(long, num_args = 2, value_names = ["CERT", "KEY"])]
    pub import: Option<Vec<PathBuf>>,
    /// Delete the slot's certificate (PIV; the key stays).
    #[arg(long)]
    pub delete_certificate: bool,
}

/// `vccid ctl card set-pin CARD PIN`. The PIN is a [`Secret`]: wiped when dropped, left out
/// of `Debug`.
#[derive(clap::Args, Debug)]
pub struct SetPinArgs {
    /// The card.
    pub card: String,
    /// The new PIN (PIV: 6 to 8 digits).
    pub pin: Secret,
}

/// `vccid ctl card unblock CARD PIN [--puk PUK]`. PIN and PUK are [`Secret`]s.
#[derive(clap::Args, Debug)]
pub struct UnblockArgs {
    /// The card.
    pub card: String,
    /// The new PIN.
    pub pin: Secret,
    /// The PIV PUK (without it: an administrative reset).
    #[arg(long)]
    pub puk: Option<Secret>,
}

/// A PEM file's text (`-`: standard input).
fn read_text(path: &std::path::Path) -> Result<Zeroizing<String>> {
    let mut s = Zeroizing::new(String::new());
    if path.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut s)?;
    } else {
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_string(&mut s))
            .with_context(|| format!("reading {}", path.display()))?;
    }
    Ok(s)
}

/// A private key's PEM text (`-`: standard input), refused as the key stores refuse theirs
/// when others may read or write the file (issue #17).
fn read_key(path: &std::path::Path) -> Result<Zeroizing<String>> {
    if path.as_os_str() == "-" {
        return read_text(path);
    }
    let bytes = card::keystore::read_private(path)?;
    std::str::from_utf8(&bytes)
        .map(|s| Zeroizing::new(s.to_string()))
        .with_context(|| format!("{}: not a PEM file", path.display()))
}

/// Runs `vccid ctl card enroll`: the request's PEM on standard output for --generate.
pub fn ctl_enroll(c: &mut Connection, a: EnrollArgs, json_out: bool) -> Result<()> {
    let mut args = json!({"card": a.card, "slot": a.slot});
    if a.generate {
        args["action"] = json!("generate");
        if let Some(alg) = &a.algorithm {
            args["algorithm"] = json!(alg);
        }
        if let Some(s) = &a.subject {
            args["subject"] = json!(s);
        }
    } else if let Some(file) = &a.put_certificate {
        args["action"] = json!("put-certificate");
        args["certificate"] = json!(read_text(file)?.as_str());
    } else if let Some([cert, key]) = a.import.as_deref() {
        args["action"] = json!("import");
        args["certificate"] = json!(read_text(cert)?.as_str());
        args["key"] = json!(read_key(key)?.as_str());
    } else {
        args["action"] = json!("delete-certificate");
    }
    let v = c.execute("card-enroll", args)?;
    if json_out {
        println!("{v}");
        return Ok(());
    }
    let (card, slot) = (&a.card, &a.slot);
    if let Some(csr) = v["csr"].as_str() {
        print!("{csr}");
    } else if a.delete_certificate {
        println!("certificate deleted from {slot} of card {card}");
    } else {
        println!(
            "{} in {slot} of card {card}",
            v["subject"].as_str().unwrap_or("certificate")
        );
    }
    if v["persisted"] == json!(false) {
        eprintln!("vccid ctl: card {card} keeps no state (state=off or ephemeral): this lasts until the card stops");
    }
    Ok(())
}

/// Runs `vccid ctl card set-pin`.
pub fn ctl_set_pin(c: &mut Connection, a: SetPinArgs, json_out: bool) -> Result<()> {
    let v = c.execute(
        "card-set-pin",
        json!({"card": a.card, "pin": a.pin.as_str()}),
    )?;
    report_pin(&v, &a.card, "set", json_out);
    Ok(())
}

/// Runs `vccid ctl card unblock`.
pub fn ctl_unblock(c: &mut Connection, a: UnblockArgs, json_out: bool) -> Result<()> {
    let mut args = json!({"card": a.card, "pin": a.pin.as_str()});
    if let Some(p) = &a.puk {
        args["puk"] = json!(p.as_str());
    }
    let v = c.execute("card-unblock", args)?;
    report_pin(&v, &a.card, "unblocked", json_out);
    Ok(())
}

fn report_pin(v: &Value, card: &str, what: &str, json_out: bool) {
    if json_out {
        println!("{v}");
        return;
    }
    println!("PIN of card {card} {what}");
    if v["persisted"] == json!(false) {
        eprintln!(
            "vccid ctl: card {card} keeps no PIN state (state=off or ephemeral): the \
             configured PIN comes back when the card is made again"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// A service with an ephemeral PIV card `p` and an ephemeral CAC card `c`, in no reader.
    fn service(dir: &std::path::Path) -> Arc<Service> {
        let cfg = crate::config::Config::parse(
            "[[card]]\nid = \"p\"\nprofile = \"piv\"\nephemeral = true\n\n\
             [[card]]\nid = \"c\"\nephemeral = true\n",
            "test",
        )
        .unwrap();
        Service::start(&cfg, dir.to_path_buf(), None).unwrap()
    }

    fn call(f: fn(&Service, &Value) -> Result<Value>, svc: &Service, args: Value) -> Result<Value> {
        f(svc, &args)
    }

    #[test]
    fn piv_enrollment_and_pins_through_the_commands() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        let v = call(
            card_enroll,
            &svc,
            json!({"card": "p", "slot": "9A", "action": "generate", "subject": "CN=p"}),
        )
        .unwrap();
        assert!(v["csr"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        assert_eq!(
            (&v["card"], &v["slot"], &v["algorithm"], &v["persisted"]),
            (&json!("p"), &json!("9a"), &json!("p256"), &json!(false))
        );
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["imported".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let v = call(
            card_enroll,
            &svc,
            json!({"card": "p", "slot": "9c", "action": "import",
                   "certificate": cert.pem(), "key": key.serialize_pem()}),
        )
        .unwrap();
        assert_eq!(v["subject"], "CN=rcgen self signed cert");
        let put = |slot: &str| {
            call(
                card_enroll,
                &svc,
                json!({"card": "p", "slot": slot, "action": "put-certificate",
                       "certificate": cert.pem()}),
            )
        };
        assert!(put("9c").is_ok());
        let e = put("9d").unwrap_err().to_string();
        assert!(e.contains("not the key of PIV slot 9D"), "{e}");
        let v = call(
            card_enroll,
            &svc,
            json!({"card": "p", "slot": "9c", "action": "delete-certificate"}),
        )
        .unwrap();
        assert_eq!(v, json!({"card": "p", "slot": "9c", "persisted": false}));
        for (args, want) in [
            (
                json!({"card": "p", "slot": "9a", "action": "delete-certificate", "key": "x"}),
                "takes no argument \"key\"",
            ),
            (
                json!({"card": "p", "slot": "9a", "action": "shred"}),
                "expected generate",
            ),
            (
                json!({"card": "p", "slot": "82", "action": "delete-certificate"}),
                "its slots are 9a, 9c, 9d, 9e",
            ),
            (
                json!({"card": "p", "slot": "cert1", "action": "delete-certificate"}),
                "no CAC application",
            ),
            (
                json!({"card": "x", "slot": "9a", "action": "delete-certificate"}),
                "no card \"x\"",
            ),
            (
                json!({"card": "p", "slot": "9a", "action": "generate", "algorithm": "ed25519"}),
                "unknown algorithm",
            ),
        ] {
            let e = call(card_enroll, &svc, args.clone())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{args}: {e}");
        }
        let v = call(card_set_pin, &svc, json!({"card": "p", "pin": "654321"})).unwrap();
        assert_eq!(v, json!({"card": "p", "persisted": false}));
        let e = call(
            card_unblock,
            &svc,
            json!({"card": "p", "pin": "123456", "puk": "1"}),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "wrong PUK; 2 tries left");
        call(
            card_unblock,
            &svc,
            json!({"card": "p", "pin": "123456", "puk": "12345678"}),
        )
        .unwrap();
    }

    #[test]
    fn cac_cards_enroll_only_kept_generated_identities() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        let e = call(
            card_enroll,
            &svc,
            json!({"card": "c", "slot": "cert1", "action": "generate"}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("is ephemeral"), "{e}");
        let e = call(
            card_enroll,
            &svc,
            json!({"card": "c", "slot": "9a", "action": "generate"}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no PIV application"), "{e}");
        let e = call(
            card_unblock,
            &svc,
            json!({"card": "c", "pin": "1", "puk": "2"}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no PUK"), "{e}");
        let v = call(card_set_pin, &svc, json!({"card": "c", "pin": "4321"})).unwrap();
        assert_eq!(v["persisted"], false);
    }

    #[test]
    fn a_pin_blocked_by_wrong_verifies_is_a_pin_blocked_event() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        let events = svc.registry().subscribe();
        let card = svc.registry().card("p").unwrap();
        let mut card = lock(&card);
        card.transmit(&apdu::hex::h("00 A4 04 00 05 A0 00 00 03 08"));
        for _ in 0..3 {
            card.transmit(&apdu::hex::h("00 20 00 80 08 30 30 30 30 30 30 FF FF"));
        }
        drop(card);
        let e = events
            .try_iter()
            .find(|e| matches!(e, slot::Event::PinBlocked { .. }))
            .expect("a PinBlocked event");
        let v = crate::control::event_json(&e).unwrap();
        assert_eq!(v["event"], "PIN_BLOCKED");
        assert_eq!(v["data"], json!({"card": "p"}));
    }

    /// Issue #17: `vccid ctl card enroll --import CERT KEY` refuses a key file others may
    /// read, naming it and why, as the key stores do.
    #[test]
    fn an_exposed_key_to_import_is_refused_with_the_reason() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        let pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
        std::fs::write(&path, &pem).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_key(&path).unwrap_err().to_string();
        assert!(
            e.contains(&path.display().to_string())
                && e.contains("readable by others (mode 0644): chmod 600"),
            "{e}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_key(&path).unwrap().as_str(), pem);
    }

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        card: crate::ctl::CardCmd,
    }

    #[test]
    fn ctl_takes_one_action_and_keeps_pins_out_of_debug() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["x"], args].concat());
        assert!(parse(&["enroll", "c", "9a"]).is_err());
        assert!(parse(&["enroll", "c", "9a", "--generate", "--delete-certificate"]).is_err());
        assert!(parse(&["enroll", "c", "9a", "--algorithm", "p256"]).is_err());
        assert!(parse(&["enroll", "c", "9a", "--import", "cert.pem"]).is_err());
        assert!(parse(&["enroll", "c", "9a", "--import", "cert.pem", "key.pem"]).is_ok());
        assert!(parse(&["enroll", "c", "9a", "--generate", "--subject", "CN=x"]).is_ok());
        let cli = parse(&["unblock", "c", "13572468", "--puk", "97531864"]).unwrap();
        let debug = format!("{cli:?}");
        assert!(
            !debug.contains("13572468") && !debug.contains("97531864"),
            "{debug}"
        );
        let cli = parse(&["set-pin", "c", "13572468"]).unwrap();
        assert!(!format!("{cli:?}").contains("13572468"));
    }
}
