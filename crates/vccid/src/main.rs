//! `vccid`: a virtual smart card (libcacard-compatible CAC) exported to the host's PC/SC
//! through vsmartcard's vpcd driver. See the README for every option.

mod commands;
mod spec;

use anyhow::{anyhow, Context, Result};
use card::cac::{CacCard, CacConfig};
use card::keystore::{
    default_data_dir, DefaultIdentities, FileStore, KeyStore, Pkcs11Config, Pkcs11Store,
};
use clap::Parser;
use spec::Backend;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

const DEFAULT_VPCD: &str = "127.0.0.1:35963";

/// A virtual smart-card reader and card. With no transport option the card is served to the
/// local pcscd through vpcd (127.0.0.1:35963).
#[derive(Parser, Debug)]
#[command(name = "vccid", version, about, long_about = None)]
struct Args {
    /// Serve the card to pcscd's vsmartcard vpcd driver at ADDR (HOST:PORT).
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = DEFAULT_VPCD)]
    vpcd: Option<String>,

    /// The card, in QEMU's property syntax: `emulated` (embedded default identities),
    /// `emulated,backend=certificates,db=sql:DIR,cert1=NICK,...` (NSS database),
    /// `emulated,backend=files,cert1=CERT.pem,key1=KEY.pem,...` (or `cert1=ID.p12,...,
    /// p12-password-file=FILE`),
    /// `emulated,backend=pkcs11,uri=pkcs11:token=...?module-path=...`.
    /// Common properties: pin=PIN (default 12345678), pin-tries=N (default 3).
    #[arg(long, value_name = "SPEC", default_value = "emulated")]
    card: String,

    /// Where the embedded default identities are kept (default: $XDG_DATA_HOME/vccid, else
    /// ~/.local/share/vccid; also $VCCID_DATA_DIR).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// More log output (-v debug, -vv trace with every APDU); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("bad address {addr:?} (expected HOST:PORT)"))?
        .next()
        .ok_or_else(|| anyhow!("address {addr:?} resolves to nothing"))
}

fn key_store(backend: &Backend, data_dir: Option<PathBuf>) -> Result<Box<dyn KeyStore>> {
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
            let needs_password = files.iter().any(|f| {
                f.key.is_none()
                    && f.cert.extension().is_some_and(|e| {
                        e.eq_ignore_ascii_case("p12") || e.eq_ignore_ascii_case("pfx")
                    })
            });
            if needs_password {
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

fn run(args: Args) -> Result<()> {
    let spec = spec::parse(&args.card).with_context(|| format!("--card {:?}", args.card))?;
    let keys = key_store(&spec.backend, args.data_dir.clone())?;
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
    let vpcd_addr = resolve(args.vpcd.as_deref().unwrap_or(DEFAULT_VPCD))?;
    if !vpcd_addr.ip().is_loopback() {
        tracing::warn!(%vpcd_addr, "vpcd is not on loopback: the vpcd link is unauthenticated and unencrypted");
    }
    let presence = card::Card::presence(&card);
    let card: vpcd::SharedCard = Arc::new(Mutex::new(card));
    commands::spawn(presence);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let client = vpcd::spawn(card, vpcd::ClientOptions::new(vpcd_addr))
        .context("cannot start the vpcd client")?;
    tracing::info!(%vpcd_addr, "serving the card to vpcd");
    rt.block_on(shutdown_signal());
    tracing::info!("shutting down");
    client.stop();
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn main() {
    let args = Args::parse();
    let default = match args.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(args) {
        eprintln!("vccid: error: {e:#}");
        std::process::exit(2);
    }
}
