//! The service behind `vccid serve` (issue #15): the cards and readers of a configuration in
//! one [`slot::Registry`], the transports serving the readers' slots, and the operations the
//! control socket offers (insert, eject, add and remove cards). The command line's flag mode
//! makes its cards with the same [`make_card`].

use crate::config::{self, CardConfig, CardKind, Config, ReaderConfig, Transport};
use crate::spec::{self, CardSpec};
use anyhow::{anyhow, bail, Context, Result};
use link::{Addr, ListenSecurity, Security};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use zeroize::Zeroizing;

/// A card as the transports share it.
pub type SharedCard = Arc<Mutex<dyn card::Card>>;

/// Makes the card of a `--card` specification, wrapped in `card::Traced` (one decoded,
/// redacted line per APDU at `-vv`).
pub fn make_card(
    spec: &CardSpec,
    data_dir: Option<PathBuf>,
    security: &ListenSecurity,
    hardware_reader: Option<&str>,
    own_vpcd: &[hostcard::Excluded],
) -> Result<slot::SharedCard> {
    Ok(match spec {
        CardSpec::Emulated(e) => Arc::new(Mutex::new(card::Traced::new(
            crate::keys::emulated_card(e, data_dir)?,
        ))),
        CardSpec::Hardware { .. } => Arc::new(Mutex::new(card::Traced::new(
            hostcard::HostCard::open(hardware_reader, own_vpcd).context("--card hardware")?,
        ))),
        CardSpec::Passthru { listen } => Arc::new(Mutex::new(card::Traced::new(
            crate::passthru::PassthruCard::listen(&Addr::parse(listen)?, security)?,
        ))),
    })
}

/// What the control socket reports of a card.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CardInfo {
    /// The card's id.
    pub id: String,
    /// emulated, passthru or hardware.
    pub kind: String,
    /// cac, piv or cac+piv (emulated cards).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Where its keys are (emulated cards).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<String>,
    /// Nothing of it is on disk.
    pub ephemeral: bool,
    /// The slot it is in, if any.
    pub slot: Option<String>,
    /// Its ATR, hex.
    pub atr: String,
    /// Where a passthru card listens for its VSCard client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

/// What the control socket reports of a reader.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReaderInfo {
    /// The reader's id.
    pub id: String,
    /// Its transport.
    pub transport: String,
    /// Where it listens or connects.
    pub address: String,
    /// The link is TLS (usbredir with `tls`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
    /// Its slots and their cards.
    pub slots: Vec<SlotInfo>,
}

/// A slot of a reader.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SlotInfo {
    /// The slot's id (the reader's id for a one-slot reader, else `READER/N`).
    pub id: String,
    /// The card in it.
    pub card: Option<String>,
    /// The host connected to it (a USB reader's QEMU or USB/IP importer), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// A card the service holds, and how it was made.
struct CardEntry {
    config: CardConfig,
    /// Made at run time (`card-add`), not by the configuration file: kept in the state
    /// directory's `runtime.toml` unless ephemeral.
    runtime: bool,
}

/// What stops a running reader.
enum Running {
    Vpcd(vpcd::Client),
    Usb(crate::usb::UsbReader),
    Usbip(Arc<usbip::server::Exporter>, String),
}

impl Running {
    fn stop(self) {
        match self {
            Running::Vpcd(c) => c.stop(),
            Running::Usb(r) => r.stop(),
            Running::Usbip(e, busid) => {
                e.withdraw(&busid);
            }
        }
    }
}

/// A reader the service runs.
struct ReaderEntry {
    config: ReaderConfig,
    address: String,
    slots: Vec<String>,
    running: Option<Running>,
}

/// The cards made at run time, and where they were, as `runtime.toml` keeps them.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Runtime {
    #[serde(default, rename = "card")]
    pub(crate) cards: Vec<CardConfig>,
    /// Slot → the card in it ("" for none), for the slots run time changed against the
    /// configuration.
    #[serde(default)]
    pub(crate) slots: BTreeMap<String, String>,
}

/// The running service.
pub struct Service {
    registry: slot::Registry,
    state_dir: PathBuf,
    /// Where the configuration came from (`None`: the embedded default), for `config-reload`.
    config_path: Option<PathBuf>,
    /// The configuration running now (what a reload compares the file against).
    config: Mutex<Config>,
    security: ListenSecurity,
    cards: Mutex<BTreeMap<String, CardEntry>>,
    readers: Mutex<BTreeMap<String, ReaderEntry>>,
    /// Keeps a socket-activated local pcscd awake while vpcd readers serve it (as flag mode
    /// does: Debian starts pcscd on the first PC/SC client, and vpcd listens only then).
    pcscd: Mutex<Option<hostcard::pcscd::Keeper>>,
    /// The emulated cards as themselves, for enrollment and PINs (`enroll.rs`).
    enrollment: crate::enroll::Cards,
    /// The web console's URL (token included), when it runs.
    console_url: Mutex<Option<String>>,
    /// The host connected to each slot of a USB reader now (QEMU, a USB/IP importer).
    hosts: Arc<Mutex<BTreeMap<String, String>>>,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The configuration `vccid serve` runs without a file: the embedded default card on vpcd,
/// what `vccid --vpcd` serves.
pub fn embedded_default() -> Config {
    let text = "[[card]]\nid = \"default\"\nkeys = \"default\"\n\n\
                [[reader]]\nid = \"vpcd0\"\ntransport = \"vpcd\"\ncards = [\"default\"]\n";
    Config::parse(text, "(embedded default)").unwrap_or_default()
}

impl Service {
    /// Starts every card and reader of `cfg`; nothing is left half-started on error (the
    /// process exits).
    pub fn start(
        cfg: &Config,
        state_dir: PathBuf,
        config_path: Option<PathBuf>,
    ) -> Result<Arc<Service>> {
        let security = ListenSecurity {
            tls: None,
            plaintext: if cfg.service.insecure_plaintext {
                Security::InsecurePlaintext
            } else {
                Security::Plaintext
            },
        };
        let svc = Arc::new(Service {
            registry: slot::Registry::new(),
            state_dir,
            config_path,
            config: Mutex::new(cfg.clone()),
            security,
            cards: Mutex::default(),
            readers: Mutex::default(),
            pcscd: Mutex::default(),
            enrollment: crate::enroll::Cards::default(),
            console_url: Mutex::default(),
            hosts: Arc::default(),
        });
        for c in &cfg.cards {
            svc.make_card(c.clone(), false)
                .with_context(|| format!("card {:?}", c.id.get_ref()))?;
        }
        // USB/IP readers on one address share a server (bus ids 1-1, 1-2, ... in file order).
        let mut usbip: BTreeMap<String, Vec<&ReaderConfig>> = BTreeMap::new();
        for r in &cfg.readers {
            if r.transport == Transport::Usbip {
                let a = r.address.clone().unwrap_or_else(|| "127.0.0.1:3240".into());
                usbip.entry(a).or_default().push(r);
            } else {
                svc.start_reader(r)
                    .with_context(|| format!("reader {:?}", r.id.get_ref()))?;
            }
        }
        for (addr, readers) in usbip {
            svc.start_usbip(&addr, &readers)
                .with_context(|| format!("USB/IP on {addr}"))?;
        }
        svc.load_runtime();
        Ok(svc)
    }

    /// The web console's URL, token included, when it runs.
    pub fn console_url(&self) -> Option<String> {
        lock(&self.console_url).clone()
    }

    /// Records the web console's URL.
    pub fn set_console_url(&self, url: String) {
        *lock(&self.console_url) = Some(url);
    }

    /// The registry of slots and cards.
    pub fn registry(&self) -> &slot::Registry {
        &self.registry
    }

    fn runtime_path(&self) -> PathBuf {
        // TOML, like the configuration: the same card tables, readable and editable.
        self.state_dir.join("runtime.toml")
    }

    /// Brings back the cards made at run time before a restart (and puts each back in its
    /// slot when that slot exists and is empty). A card the configuration now defines, or one
    /// that cannot be made any more, is left out with a warning.
    fn load_runtime(&self) {
        let path = self.runtime_path();
        card::keystore::remove_stale_tmp(&path);
        // It holds the PINs and PUKs of the cards made at run time: refused, as key files
        // are, when others may read or write it (issue #17).
        let text = card::keystore::read_private(&path).and_then(|b| {
            String::from_utf8(b.to_vec())
                .map(Zeroizing::new)
                .map_err(|_| card::keystore::KeyError::File {
                    path: path.display().to_string(),
                    why: "not UTF-8".into(),
                })
        });
        let rt: Runtime = match text {
            Ok(b) => match toml::from_str(&b) {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::warn!(file = %path.display(), "run-time cards not restored: {e}");
                    return;
                }
            },
            Err(_) if !path.exists() => return,
            Err(e) => {
                tracing::warn!("run-time cards not restored: {e}");
                return;
            }
        };
        for c in rt.cards {
            let id = c.id.get_ref().clone();
            if let Err(e) = self.make_card(c, true) {
                tracing::warn!(card = %id, "run-time card not restored: {e:#}");
            }
        }
        // The slots as they were: what was inserted, ejected and moved at run time stays so.
        let slots = self.registry.slots();
        for (slot, card) in &rt.slots {
            if !slots.contains(slot) {
                continue;
            }
            let now = self.registry.card_in(slot).ok().flatten();
            if now.as_deref() == Some(card.as_str()) || (card.is_empty() && now.is_none()) {
                continue;
            }
            if now.is_some() {
                let _ = self.registry.eject(slot);
            }
            if !card.is_empty() {
                if let Err(e) = self.registry.move_card(card, slot) {
                    tracing::warn!(%card, %slot, "card not put back: {e}");
                }
            }
        }
    }

    /// Writes `runtime.toml` (atomically, 0600): the cards made at run time that are not
    /// ephemeral, and the slots whose card is not the configuration's.
    fn save_runtime(&self) -> Result<()> {
        let mut rt = Runtime::default();
        for e in lock(&self.cards).values() {
            if e.runtime && !e.config.ephemeral {
                rt.cards.push(e.config.clone());
            }
        }
        // The slots whose card differs from the configuration's: what run time changed.
        let configured: BTreeMap<String, String> = lock(&self.config)
            .readers
            .iter()
            .flat_map(|r| {
                (0..r.slot_count())
                    .map(move |n| (r.slot_id(n), r.cards.get(n).cloned().unwrap_or_default()))
            })
            .collect();
        for slot in self.registry.slots() {
            let card = self
                .registry
                .card_in(&slot)
                .ok()
                .flatten()
                .unwrap_or_default();
            if configured
                .get(&slot)
                .map_or(!card.is_empty(), |c| *c != card)
            {
                rt.slots.insert(slot, card);
            }
        }
        let path = self.runtime_path();
        let text = Zeroizing::new(toml::to_string(&rt)?);
        card::keystore::write_atomic(&path, text.as_bytes(), 0o600)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Makes a card at run time (`card-add`) and adds it to the registry, in no slot; a card
    /// that is not ephemeral is kept for the next start.
    pub fn add_card(&self, c: CardConfig) -> Result<CardInfo> {
        let id = c.id.get_ref().clone();
        self.make_card(c, true)?;
        self.save_runtime()?;
        self.card_info(&id)
    }

    /// Makes a card and adds it to the registry (in no slot).
    fn make_card(&self, c: CardConfig, runtime: bool) -> Result<()> {
        let id = c.id.get_ref().clone();
        config::check_card(&c).map_err(|(k, why)| {
            if k.is_empty() {
                anyhow!(why)
            } else {
                anyhow!("{k}: {why}")
            }
        })?;
        if lock(&self.cards).contains_key(&id) {
            bail!("a card {id:?} exists already");
        }
        let spec = match c.kind {
            CardKind::Emulated => {
                let mut text = config::emulated_spec_text(&c);
                let props = spec::split(&text)?.1;
                // A generated persistent card keeps its state beside its identities, so that
                // deleting the card deletes all of it: the PIV state, or the CAC card's PIN
                // state (issue #17; of cac+piv, `cac-state.json` beside `piv-state.json`:
                // keys::cac_beside).
                let piv = c.profile.as_deref().is_some_and(|p| p.contains("piv"));
                if !props.contains_key("state") {
                    if c.ephemeral {
                        text.push_str(",state=off");
                    } else if props.get("backend").map(String::as_str) == Some("generated") {
                        let dir = self.state_dir.join("cards").join(&id);
                        let file = if piv {
                            "piv-state.json"
                        } else {
                            "cac-state.json"
                        };
                        text.push_str(&format!(",state={}", dir.join(file).display()));
                    }
                }
                let mut s = spec::parse(&text)?;
                if let CardSpec::Emulated(e) = &mut s {
                    e.pin = match (&c.pin, &c.pin_file) {
                        (Some(p), _) => Some(p.clone()),
                        (None, Some(f)) => spec::secret(Some(f), "")?,
                        (None, None) => None,
                    };
                    e.puk = match (&c.puk, &c.puk_file) {
                        (Some(p), _) => Some(p.clone()),
                        (None, Some(f)) => spec::secret(Some(f), "")?,
                        (None, None) => None,
                    };
                }
                s
            }
            CardKind::Passthru => CardSpec::Passthru {
                listen: c
                    .listen
                    .clone()
                    .unwrap_or_else(|| spec::DEFAULT_PASSTHRU_LISTEN.into()),
            },
            CardKind::Hardware => CardSpec::Hardware {
                reader: c.reader.clone(),
            },
        };
        let card = match &spec {
            CardSpec::Emulated(e) => {
                self.enrollment
                    .make(&id, e, Some(self.state_dir.clone()), &self.registry)?
            }
            _ => make_card(
                &spec,
                Some(self.state_dir.clone()),
                &self.security,
                c.reader.as_deref(),
                &[],
            )?,
        };
        self.registry.add_card(&id, card)?;
        lock(&self.cards).insert(id.clone(), CardEntry { config: c, runtime });
        tracing::info!(card = %id, "card added");
        Ok(())
    }

    /// Removes a card (ejecting it first); with `delete`, a generated card's identities and
    /// state go from disk too.
    pub fn remove_card(&self, id: &str, delete: bool) -> Result<()> {
        let entry = lock(&self.cards)
            .remove(id)
            .ok_or_else(|| anyhow!("no card {id:?}"))?;
        self.registry.remove_card(id)?;
        let generated = entry.config.kind == CardKind::Emulated
            && entry.config.keys.as_deref().unwrap_or("generated") == "generated";
        if delete && generated && !entry.config.ephemeral {
            let dir = self.state_dir.join("cards").join(id);
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => tracing::info!(card = id, dir = %dir.display(), "card deleted"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => bail!("card {id:?} removed, but {} stays: {e}", dir.display()),
            }
        } else {
            tracing::info!(card = id, "card removed");
        }
        if entry.runtime {
            self.save_runtime()?;
        }
        Ok(())
    }

    /// The slot a reader argument names: a slot id, or a reader whose first empty slot (for an
    /// insertion) or first slot is meant.
    fn slot_for(&self, reader: &str, empty: bool) -> Result<String> {
        if self.registry.slots().iter().any(|s| s == reader) {
            return Ok(reader.to_string());
        }
        let readers = lock(&self.readers);
        let r = readers
            .get(reader)
            .ok_or_else(|| anyhow!("no reader or slot {reader:?}"))?;
        let pick = r.slots.iter().find(|s| {
            let held = self.registry.card_in(s).ok().flatten();
            if empty {
                held.is_none()
            } else {
                held.is_some()
            }
        });
        pick.cloned().ok_or_else(|| {
            anyhow!(
                "reader {reader:?} has no {} slot",
                if empty { "empty" } else { "occupied" }
            )
        })
    }

    /// Whether a card could go into `reader` now (an empty slot there), without making any.
    pub fn check_insert(&self, reader: &str) -> Result<()> {
        let slot = self.slot_for(reader, true)?;
        match self.registry.card_in(&slot)? {
            Some(card) => bail!("slot {slot:?} already holds card {card:?}"),
            None => Ok(()),
        }
    }

    /// Puts a card into a reader (its first empty slot) or a named slot; a card in another
    /// slot moves (its old host sees a removal).
    pub fn insert(&self, card: &str, reader: &str) -> Result<String> {
        let slot = self.slot_for(reader, true)?;
        self.registry.move_card(card, &slot)?;
        self.save_runtime()?;
        Ok(slot)
    }

    /// Takes the card out of a slot (or a reader's first occupied slot), or the named card out
    /// of wherever it is; returns the card and the slot.
    pub fn eject(&self, what: &str) -> Result<(String, String)> {
        if lock(&self.cards).contains_key(what) {
            let slot = self
                .registry
                .slot_of(what)?
                .ok_or_else(|| anyhow!("card {what:?} is in no reader"))?;
            self.registry.eject(&slot)?;
            self.save_runtime()?;
            return Ok((what.to_string(), slot));
        }
        let slot = self.slot_for(what, false)?;
        let card = self
            .registry
            .eject(&slot)?
            .ok_or_else(|| anyhow!("no card in {slot:?}"))?;
        self.save_runtime()?;
        Ok((card, slot))
    }

    /// One card's report.
    pub fn card_info(&self, id: &str) -> Result<CardInfo> {
        let cards = lock(&self.cards);
        let c = &cards
            .get(id)
            .ok_or_else(|| anyhow!("no card {id:?}"))?
            .config;
        let emulated = c.kind == CardKind::Emulated;
        let atr = self
            .registry
            .card(id)
            .map(|c| {
                let atr = lock(&c).atr();
                apdu::hex::spaced(&atr).replace(' ', "")
            })
            .unwrap_or_default();
        Ok(CardInfo {
            id: id.to_string(),
            kind: format!("{:?}", c.kind).to_lowercase(),
            profile: emulated.then(|| c.profile.clone().unwrap_or_else(|| "cac".into())),
            keys: emulated.then(|| c.keys.clone().unwrap_or_else(|| "generated".into())),
            ephemeral: c.ephemeral,
            slot: self.registry.slot_of(id).ok().flatten(),
            atr,
            listen: (c.kind == CardKind::Passthru).then(|| {
                c.listen
                    .clone()
                    .unwrap_or_else(|| spec::DEFAULT_PASSTHRU_LISTEN.to_string())
            }),
        })
    }

    /// Every card's report, by id.
    pub fn cards(&self) -> Vec<CardInfo> {
        let ids: Vec<String> = lock(&self.cards).keys().cloned().collect();
        ids.iter()
            .filter_map(|id| self.card_info(id).ok())
            .collect()
    }

    /// Every reader's report, by id.
    pub fn readers(&self) -> Vec<ReaderInfo> {
        lock(&self.readers)
            .iter()
            .map(|(id, r)| ReaderInfo {
                id: id.clone(),
                transport: r.config.transport.to_string(),
                address: r.address.clone(),
                tls: r.config.tls.is_some(),
                slots: r
                    .slots
                    .iter()
                    .map(|s| SlotInfo {
                        id: s.clone(),
                        card: self.registry.card_in(s).ok().flatten(),
                        host: lock(&self.hosts).get(s).cloned(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// Adds the reader's slots to the registry and inserts its cards.
    fn add_slots(&self, r: &ReaderConfig) -> Result<Vec<slot::SlotCard>> {
        let mut handles = Vec::new();
        for n in 0..r.slot_count() {
            let id = r.slot_id(n);
            handles.push(self.registry.add_slot(&id)?);
            if let Some(card) = r.cards.get(n).filter(|c| !c.is_empty()) {
                // move_card: on a reload a card may come from a reader that stays.
                self.registry.move_card(card, &id)?;
            }
        }
        Ok(handles)
    }

    /// Reports hosts arriving at and leaving reader `i` (whose slots are `slots[i]`) as
    /// registry events (HOST_CONNECTED, HOST_DISCONNECTED on the control socket).
    fn host_hook(&self, slots: Vec<Vec<String>>) -> crate::usb::HostHook {
        let registry = self.registry.clone();
        let hosts = self.hosts.clone();
        Arc::new(move |i, peer, arrived| {
            for s in slots.get(i).into_iter().flatten() {
                let _ = if arrived {
                    lock(&hosts).insert(s.clone(), peer.to_string());
                    registry.host_connected(s, peer)
                } else {
                    lock(&hosts).remove(s);
                    registry.host_disconnected(s, peer)
                };
            }
        })
    }

    fn shared(h: slot::SlotCard) -> SharedCard {
        Arc::new(Mutex::new(h))
    }

    /// Starts a reader: checks what can be checked before anything changes
    /// ([`preflight_reader`]), then makes its slots and its transport; on an error the slots
    /// it made are taken away again, so that nothing of it stays.
    fn start_reader(&self, r: &ReaderConfig) -> Result<()> {
        preflight_reader(r)?;
        let result = if r.transport == Transport::Usbip {
            let a = r.address.clone().unwrap_or_else(|| "127.0.0.1:3240".into());
            self.start_usbip(&a, &[r])
        } else {
            self.start_transport(r)
        };
        if result.is_err() {
            for n in 0..r.slot_count() {
                let _ = self.registry.remove_slot(&r.slot_id(n));
            }
        }
        result
    }

    fn start_transport(&self, r: &ReaderConfig) -> Result<()> {
        let handles = self.add_slots(r)?;
        let slots: Vec<String> = handles.iter().map(|h| h.id().to_string()).collect();
        let (address, running) = match r.transport {
            Transport::Vpcd => {
                let a = r
                    .address
                    .clone()
                    .unwrap_or_else(|| "127.0.0.1:35963".into());
                let addr = match Addr::parse(&a)? {
                    Addr::Tcp(t) => t,
                    Addr::Unix(_) => bail!("vpcd runs over TCP only"),
                };
                let card = handles
                    .into_iter()
                    .next()
                    .map(Self::shared)
                    .ok_or_else(|| anyhow!("a vpcd reader has one slot"))?;
                if addr.ip().is_loopback() {
                    let mut keeper = lock(&self.pcscd);
                    if keeper.is_none() {
                        *keeper = crate::ready::wake_pcscd();
                    }
                }
                let client = vpcd::spawn(card, vpcd::ClientOptions::new(addr))
                    .context("cannot start the vpcd client")?;
                (a, Running::Vpcd(client))
            }
            Transport::Usbredir | Transport::UsbredirConnect => {
                let a = r.address.clone().unwrap_or_else(|| "127.0.0.1:4000".into());
                let addr = Addr::parse(&a)?;
                let tls = r.tls.as_ref().map(|dir| link::tls::TlsOptions {
                    dir: dir.clone(),
                    verify_peer: r.tls_verify_peer.unwrap_or(true),
                    server_name: None,
                    on_certificate: Some(crate::expiry::warn),
                });
                let role = if r.transport == Transport::Usbredir {
                    let security = ListenSecurity {
                        tls: tls.as_ref().map(|t| t.server_config()).transpose()?,
                        plaintext: self.security.plaintext,
                    };
                    crate::usb::Role::Listen(addr.clone(), security)
                } else {
                    let client = tls
                        .as_ref()
                        .map(|t| link::TlsClient::new(t, &addr))
                        .transpose()?;
                    crate::usb::Role::Connect(addr.clone(), client)
                };
                let hook = self.host_hook(vec![slots.clone()]);
                let reader = crate::usb::serve(
                    &role,
                    handles.into_iter().map(Self::shared).collect(),
                    None,
                    Some(hook),
                )?;
                if let (Addr::Unix(path), Transport::Usbredir) = (&addr, r.transport) {
                    let access = set_access(
                        path,
                        r.mode.as_deref(),
                        r.owner.as_deref(),
                        r.group.as_deref(),
                    );
                    if let Err(e) = access {
                        reader.stop();
                        return Err(e);
                    }
                }
                (a, Running::Usb(reader))
            }
            Transport::Usbip => bail!("USB/IP readers start with start_usbip"),
        };
        lock(&self.readers).insert(
            r.id.get_ref().clone(),
            ReaderEntry {
                config: r.clone(),
                address,
                slots,
                running: Some(running),
            },
        );
        Ok(())
    }

    fn start_usbip(&self, address: &str, readers: &[&ReaderConfig]) -> Result<()> {
        let addr = match Addr::parse(address)? {
            Addr::Tcp(t) => t,
            Addr::Unix(_) => bail!("USB/IP runs over TCP only"),
        };
        let mut devices = Vec::new();
        for r in readers {
            let handles = self.add_slots(r)?;
            devices.push(handles);
        }
        let slots: Vec<Vec<String>> = devices
            .iter()
            .map(|h| h.iter().map(|s| s.id().to_string()).collect())
            .collect();
        let hook = self.host_hook(slots.clone());
        let exporter = crate::usb::serve_usbip(
            addr,
            devices
                .into_iter()
                .map(|h| h.into_iter().map(Self::shared).collect())
                .collect(),
            None,
            self.security.plaintext,
            Some(hook),
        )?;
        for (i, (r, slots)) in readers.iter().zip(slots).enumerate() {
            let busid = crate::usb::usbip_busid(i);
            lock(&self.readers).insert(
                r.id.get_ref().clone(),
                ReaderEntry {
                    config: (*r).clone(),
                    address: format!("{address} bus id {busid}"),
                    slots,
                    running: Some(Running::Usbip(exporter.clone(), busid)),
                },
            );
        }
        Ok(())
    }

    /// Stops every reader (pcscd sees vpcd readers' cards go; USB hosts see their device
    /// go).
    pub fn stop(&self) {
        for r in lock(&self.readers).values_mut() {
            if let Some(run) = r.running.take() {
                run.stop();
            }
        }
    }

    /// Adds and starts a reader at run time (`reader-add`); the cards it names go into its
    /// slots. A USB/IP reader gets a server of its own: its address must not be one a running
    /// USB/IP reader uses.
    pub fn add_reader(&self, r: ReaderConfig) -> Result<ReaderInfo> {
        config::check_reader(&r).map_err(|(k, why)| anyhow!("{k}: {why}"))?;
        let id = r.id.get_ref().clone();
        if lock(&self.readers).contains_key(&id) {
            bail!("a reader {id:?} exists already");
        }
        for c in r.cards.iter().filter(|c| !c.is_empty()) {
            if !lock(&self.cards).contains_key(c) {
                bail!("no card {c:?}");
            }
            if let Some(slot) = self.registry.slot_of(c)? {
                bail!("card {c:?} is in {slot:?} already: eject it first");
            }
        }
        if r.transport == Transport::Usbip {
            let a = r.address.clone().unwrap_or_else(|| "127.0.0.1:3240".into());
            let taken = lock(&self.readers).values().any(|e| {
                e.config.transport == Transport::Usbip
                    && e.config
                        .address
                        .clone()
                        .unwrap_or_else(|| "127.0.0.1:3240".into())
                        == a
            });
            if taken {
                bail!("USB/IP on {a} serves readers of the configuration; give this one another address");
            }
        }
        self.start_reader(&r)?;
        tracing::info!(reader = %id, "reader added");
        self.save_runtime()?;
        self.readers()
            .into_iter()
            .find(|x| x.id == id)
            .ok_or_else(|| anyhow!("reader {id:?} vanished"))
    }

    /// Stops a reader and removes it; the cards in it stay, in no slot.
    pub fn remove_reader(&self, id: &str) -> Result<()> {
        let mut entry = lock(&self.readers)
            .remove(id)
            .ok_or_else(|| anyhow!("no reader {id:?}"))?;
        if let Some(run) = entry.running.take() {
            run.stop();
        }
        for s in &entry.slots {
            self.registry.remove_slot(s)?;
        }
        tracing::info!(reader = id, "reader removed");
        self.save_runtime()?;
        Ok(())
    }

    /// Reads the configuration file again and applies it ([`Service::reload`]); a file with a
    /// mistake changes nothing.
    pub fn reload_file(&self) -> Result<serde_json::Value> {
        let cfg = match &self.config_path {
            Some(p) => Config::load(p)?,
            None => embedded_default(),
        };
        self.reload(&cfg)
    }

    /// Applies a new configuration: cards and readers it no longer has go, new ones come,
    /// changed ones are made again; a reader whose settings did not change keeps running (its
    /// host stays connected), with its cards changed if its `cards` list changed. Returns what
    /// changed.
    pub fn reload(&self, new: &Config) -> Result<serde_json::Value> {
        // What runs now, as the last configuration describes it: the readers and cards of the
        // last file that still exist (one removed at run time is made again if the file still
        // has it). A reload that failed half-way is finished by the next one.
        // What can be checked before anything changes is checked first: a reader whose
        // socket cannot be made refuses the whole file, and everything keeps running.
        for r in &new.readers {
            preflight_reader(r).with_context(|| format!("reader {:?}", r.id.get_ref()))?;
        }
        let mut old = lock(&self.config).clone();
        {
            let readers = lock(&self.readers);
            let cards = lock(&self.cards);
            old.readers.retain(|r| readers.contains_key(r.id.get_ref()));
            old.cards
                .retain(|c| cards.get(c.id.get_ref()).is_some_and(|e| !e.runtime));
        }
        // A reader or card made at run time under an id the file now defines gives way to the
        // file's.
        for r in &new.readers {
            let id = r.id.get_ref();
            let runtime = !old.readers.iter().any(|o| o.id.get_ref() == id)
                && lock(&self.readers).contains_key(id);
            if runtime {
                self.remove_reader(id)?;
            }
        }
        for c in &new.cards {
            let id = c.id.get_ref();
            let runtime = lock(&self.cards).get(id).is_some_and(|e| e.runtime);
            if runtime {
                self.remove_card(id, false)?;
            }
        }
        let same = |a: &dyn erased::Ser, b: &dyn erased::Ser| a.json() == b.json();
        let card_of =
            |cfg: &Config, id: &str| cfg.cards.iter().find(|c| c.id.get_ref() == id).cloned();
        let reader_of =
            |cfg: &Config, id: &str| cfg.readers.iter().find(|r| r.id.get_ref() == id).cloned();
        let settings = |r: &ReaderConfig| {
            let mut r = r.clone();
            r.cards.clear();
            r
        };
        let mut report = serde_json::json!({
            "cards-added": [], "cards-removed": [], "cards-replaced": [],
            "readers-added": [], "readers-removed": [], "readers-restarted": [], "readers-kept": []
        });
        let mut push = |k: &str, id: &str| {
            if let Some(a) = report[k].as_array_mut() {
                a.push(serde_json::json!(id));
            }
        };
        // Readers that go or change stop first, so their slots free the cards.
        let mut restart = Vec::new();
        for r in &old.readers {
            let id = r.id.get_ref();
            match reader_of(new, id) {
                None => {
                    self.remove_reader(id)?;
                    push("readers-removed", id);
                }
                Some(n) if !same(&settings(r), &settings(&n)) => {
                    self.remove_reader(id)?;
                    restart.push(n);
                }
                Some(_) => {}
            }
        }
        for c in &old.cards {
            let id = c.id.get_ref();
            match card_of(new, id) {
                None => {
                    self.remove_card(id, false)?;
                    push("cards-removed", id);
                }
                Some(n) if !same(c, &n) => {
                    self.remove_card(id, false)?;
                    self.make_card(n, false)?;
                    push("cards-replaced", id);
                }
                Some(_) => {}
            }
        }
        for c in &new.cards {
            if card_of(&old, c.id.get_ref()).is_none() {
                self.make_card(c.clone(), false)?;
                push("cards-added", c.id.get_ref());
            }
        }
        // Kept readers: their cards as the new file says.
        for r in &new.readers {
            let id = r.id.get_ref();
            if let Some(o) = reader_of(&old, id) {
                if !same(&settings(&o), &settings(r)) {
                    continue;
                }
                push("readers-kept", id);
                // Cards moved at run time stay where they are unless the file moved them.
                if o.cards == r.cards {
                    continue;
                }
                for n in 0..r.slot_count() {
                    let slot = r.slot_id(n);
                    let want = r.cards.get(n).filter(|c| !c.is_empty());
                    let has = self.registry.card_in(&slot)?;
                    if has.as_ref() != want {
                        if has.is_some() {
                            self.registry.eject(&slot)?;
                        }
                        if let Some(c) = want {
                            self.registry.move_card(c, &slot)?;
                        }
                    }
                }
            }
        }
        for r in restart {
            let id = r.id.get_ref();
            if let Err(e) = self.start_reader(&r) {
                // Back to the settings it had, so that the host keeps its reader.
                let back = reader_of(&old, id).map(|o| self.start_reader(&o));
                let kept = match back {
                    Some(Ok(())) => "it keeps its previous settings",
                    _ => "it could not be started again with its previous settings either",
                };
                return Err(e.context(format!(
                    "reader {id:?}: the new settings do not start; {kept}; the rest of the \
                     file was applied"
                )));
            }
            push("readers-restarted", id);
        }
        for r in &new.readers {
            if reader_of(&old, r.id.get_ref()).is_none() {
                self.start_reader(r)
                    .with_context(|| format!("reader {:?}", r.id.get_ref()))?;
                push("readers-added", r.id.get_ref());
            }
        }
        // The console and the control socket are the process's own: they change at restart.
        let old_service = lock(&self.config).service.clone();
        let (o, n) = (&old_service, &new.service);
        let mut restart = Vec::new();
        if (&o.console, &o.console_tls) != (&n.console, &n.console_tls) {
            restart.push("console");
        }
        if (
            &o.control,
            &o.control_mode,
            &o.control_group,
            &o.control_owner,
        ) != (
            &n.control,
            &n.control_mode,
            &n.control_group,
            &n.control_owner,
        ) {
            restart.push("control");
        }
        if !restart.is_empty() {
            tracing::warn!(
                "[service] {} changed: applied at the next start, not by a reload",
                restart.join(" and ")
            );
            report["restart-needed"] = serde_json::json!(restart);
        }
        *lock(&self.config) = new.clone();
        tracing::info!(%report, "configuration reloaded");
        Ok(report)
    }
}

impl Service {
    /// The emulated cards, for enrollment and PIN management (`enroll.rs`).
    pub fn enrollment(&self) -> &crate::enroll::Cards {
        &self.enrollment
    }
}

/// Comparing configuration tables by their serialised form (the spans of ids aside).
mod erased {
    /// A table that serialises.
    pub trait Ser {
        /// Its JSON form.
        fn json(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Ser for T {
        fn json(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or_default()
        }
    }
}

/// What can be known about a reader before it starts: its unix socket's directory is one this
/// process may create a file in, and the owner and group it asks for are ones this process
/// may give (root, or its own user; a group it is a member of: chown(2)). A reload checks
/// every reader with it before it stops any.
pub fn preflight_reader(r: &ReaderConfig) -> Result<()> {
    let addr = match (&r.transport, r.address.as_deref()) {
        (Transport::Usbredir, Some(a)) => Addr::parse(a)?,
        _ => return Ok(()),
    };
    let Addr::Unix(path) = addr else {
        return Ok(());
    };
    let under_systemd = std::env::var_os("INVOCATION_ID").is_some();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let hint = if under_systemd {
        " (under the packaged vccid.service only /run/vccid is writable: put readers' \
         sockets in /run/vccid/readers, or give the unit ReadWritePaths= with `systemctl \
         edit vccid`)"
    } else {
        ""
    };
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| anyhow!("{} has a NUL byte", dir.display()))?;
    // SAFETY: `c` is a valid NUL-terminated path; access(2) only reads it.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        let e = std::io::Error::last_os_error();
        bail!(
            "cannot make the socket {}: {}: {e}{hint}",
            path.display(),
            dir.display()
        );
    }
    if under_systemd && (path.starts_with("/tmp") || path.starts_with("/var/tmp")) {
        tracing::warn!(
            path = %path.display(),
            "a socket in /tmp under a unit with PrivateTmp= (the packaged vccid.service) is \
             the service's own: no other process sees it; use /run/vccid/readers"
        );
    }
    // SAFETY: geteuid/getegid have no preconditions and cannot fail.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if euid == 0 {
        return Ok(());
    }
    if let Some(o) = r.owner.as_deref() {
        let uid = lookup_id("/etc/passwd", o)?;
        if uid != euid {
            bail!(
                "only root may give a socket another owner than vccid's own user (owner = {o:?})"
            );
        }
    }
    if let Some(g) = r.group.as_deref() {
        let gid = lookup_id("/etc/group", g)?;
        if gid != egid && !own_groups().contains(&gid) {
            bail!(
                "vccid (uid {euid}) is not a member of group {g:?}: it cannot give the socket \
                 that group{}",
                if under_systemd {
                    "; the packaged service's user is a member of vccid-readers: use that \
                     group and add libvirt's QEMU user to it (adduser libvirt-qemu \
                     vccid-readers)"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}

/// This process's supplementary groups.
fn own_groups() -> Vec<u32> {
    // SAFETY: with a zero size getgroups(2) only returns the count.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if n <= 0 {
        return Vec::new();
    }
    let mut groups = vec![0 as libc::gid_t; n as usize];
    // SAFETY: `groups` has room for `n` gids, the size passed.
    let n = unsafe { libc::getgroups(n, groups.as_mut_ptr()) };
    groups.truncate(n.max(0) as usize);
    groups
}

/// A Unix socket's mode (default 0600), owner and group.
pub fn set_access(
    path: &Path,
    mode: Option<&str>,
    owner: Option<&str>,
    group: Option<&str>,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = mode
        .map(config::parse_mode)
        .transpose()
        .map_err(|e| anyhow!(e))?
        .unwrap_or(0o600);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))?;
    let uid = owner.map(|o| lookup_id("/etc/passwd", o)).transpose()?;
    let gid = group.map(|g| lookup_id("/etc/group", g)).transpose()?;
    // Only what must change: the packaged unit's seccomp filter (SystemCallFilter=
    // ~@privileged) refuses chown, and its sockets already belong to the service's own group.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    let uid = uid.filter(|&u| u != meta.uid());
    let gid = gid.filter(|&g| g != meta.gid());
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::chown(path, uid, gid)
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

/// A user's or group's numeric id from /etc/passwd or /etc/group (a number is taken as it is).
fn lookup_id(file: &str, name: &str) -> Result<u32> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let n = f.next()?;
            let id = f.nth(1)?;
            (n == name).then(|| id.parse::<u32>().ok()).flatten()
        })
        .next()
        .ok_or_else(|| anyhow!("no {name:?} in {file}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_passwd_and_group() {
        assert_eq!(lookup_id("/etc/passwd", "root").unwrap(), 0);
        assert_eq!(lookup_id("/etc/group", "root").unwrap(), 0);
        assert_eq!(lookup_id("/etc/group", "42").unwrap(), 42);
        assert!(lookup_id("/etc/group", "no-such-group-here")
            .unwrap_err()
            .to_string()
            .contains("no \"no-such-group-here\" in /etc/group"));
    }

    #[test]
    fn the_embedded_default_is_the_default_card_on_vpcd() {
        let c = embedded_default();
        assert_eq!(c.cards.len(), 1);
        assert_eq!(c.readers[0].transport, Transport::Vpcd);
        assert_eq!(c.readers[0].cards, ["default"]);
    }
}
