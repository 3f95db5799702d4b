//! `vccid`: a virtual smart card exported to the host's PC/SC through vsmartcard's vpcd
//! driver; the card is emulated (libcacard-compatible CAC) or lives in a VSCard client
//! (`--card passthru`). See the README for every option.

use anyhow::{Context, Result};
use clap::Parser;
use link::Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use vccid::spec::{self, CardSpec};

const DEFAULT_VPCD: &str = "127.0.0.1:35963";
const DEFAULT_USBREDIR: &str = "127.0.0.1:4000";
const DEFAULT_USBIP: &str = "127.0.0.1:3240";

/// A virtual smart-card reader and card. With no transport option the reader is exported over
/// usbredir on 127.0.0.1:4000 and the QEMU and libvirt lines that attach it are printed.
#[derive(Parser, Debug)]
#[command(name = "vccid", version, long_about = None, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,

    /// Serve the card to pcscd's vsmartcard vpcd driver at ADDR (HOST:PORT).
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = DEFAULT_VPCD)]
    vpcd: Option<String>,

    /// Export the USB CCID reader over usbredir, listening at ADDR (HOST:PORT or unix:PATH)
    /// for QEMU's `-device usb-redir` (default 127.0.0.1:4000).
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = DEFAULT_USBREDIR)]
    usbredir: Option<String>,

    /// Export the reader over usbredir by connecting to QEMU's
    /// `-chardev socket,server=on,wait=off` at ADDR (reconnecting when QEMU restarts).
    #[arg(long, value_name = "ADDR", conflicts_with = "usbredir")]
    usbredir_connect: Option<String>,

    /// Export the USB CCID reader over USB/IP, listening at ADDR (HOST:PORT, default
    /// 127.0.0.1:3240) for the Linux `usbip` tool: `usbip attach -r HOST -b 1-1`. Alongside
    /// usbredir when --usbredir is given too.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = DEFAULT_USBIP)]
    usbip: Option<String>,

    /// Write every USB transfer between the host and the reader to FILE as a usbmon pcap
    /// (what QEMU's `pcap=` writes; Wireshark and tshark decode the CCID messages). PIN, PUK
    /// and management-key bytes, and decipher and management-key outputs, are written as
    /// zeros (lengths kept) unless --pcap-secrets.
    #[arg(long, value_name = "FILE")]
    pcap: Option<PathBuf>,

    /// With --pcap: write PIN, PUK and management-key bytes into the capture as they are
    /// (for debugging a card's PIN handling; keep such a file private).
    #[arg(long, requires = "pcap")]
    pcap_secrets: bool,

    /// The card, in QEMU's property syntax: `emulated` (embedded default identities),
    /// `emulated,backend=certificates,db=sql:DIR,cert1=NICK,...` (NSS database),
    /// `emulated,backend=files,cert1=CERT.pem,key1=KEY.pem,...` (or `cert1=ID.p12,...,
    /// p12-password-file=FILE`),
    /// `emulated,backend=pkcs11,uri=pkcs11:token=...?module-path=...`;
    /// common properties: pin=PIN (default 12345678), pin-tries=N (default 3);
    /// profile=cac (default, libcacard's CAC), profile=piv (a PIV card: slots 9A, 9C, 9D,
    /// 9E, then 82..95; PIN 123456, puk=PUK default 12345678; state=FILE|off, default a file
    /// per card under the data directory) or profile=cac+piv (both on one card).
    /// `passthru[,listen=ADDR]`: the card lives in a VSCard client such as vscclient
    /// (default listen=127.0.0.1:2001; ADDR is HOST:PORT or unix:PATH).
    /// `hardware[,reader=NAME]`: the host's real card through PC/SC (the first reader whose
    /// name contains NAME; never vccid's own --vpcd reader).
    /// Give --card more than once for several cards, each in a slot (reader) of its own:
    /// cardN in slotN, N from 0; vpcd slot N uses vpcd's port + N, a usbredir reader
    /// listens on the port + N, USB/IP exports bus ids 1-1, 1-2, ...; standard input then
    /// takes `eject SLOT`, `insert CARD SLOT`, `move CARD SLOT` and `status`.
    #[arg(long = "card", value_name = "SPEC", default_value = "emulated")]
    cards: Vec<String>,

    /// With several --card: put all the cards in ONE USB reader with a slot each (CCID
    /// bMaxSlotIndex = cards - 1) instead of one reader per card.
    #[arg(long)]
    one_reader: bool,

    /// With --card hardware: use the first PC/SC reader whose name contains SUBSTRING
    /// (case-insensitive; the same as `--card hardware,reader=SUBSTRING`).
    #[arg(long, value_name = "SUBSTRING")]
    reader: Option<String>,

    /// Where the embedded default identities and the PIV cards' state are kept (default: $XDG_DATA_HOME/vccid, else
    /// ~/.local/share/vccid; also $VCCID_DATA_DIR).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Create the --data-dir directory when it does not exist (without it a missing one is an
    /// error, so that a mistyped name does not make a new card).
    #[arg(long, requires = "data_dir")]
    create: bool,

    /// TLS on the network links (the passthru listener, usbredir either way), with the
    /// certificates of QEMU's `tls-creds-x509` directory DIR (ca-cert.pem, server-cert.pem,
    /// server-key.pem, client-cert.pem, client-key.pem; `vccid tls init DIR` makes one).
    /// Clients must present a certificate from the CA unless --tls-no-verify-peer.
    #[arg(long, value_name = "DIR")]
    tls: Option<PathBuf>,

    /// With --tls: accept clients without a certificate (QEMU's verify-peer=off).
    #[arg(long, requires = "tls")]
    tls_no_verify_peer: bool,

    /// With --tls and --usbredir-connect: the name to check in QEMU's certificate (default:
    /// the host connected to).
    #[arg(long, value_name = "NAME", requires = "tls")]
    tls_hostname: Option<String>,

    /// Allow plaintext listeners on non-loopback addresses (each connection then logs a
    /// warning). Without it vccid refuses them: use --tls, loopback, or unix:PATH.
    #[arg(long)]
    insecure_plaintext: bool,

    /// More log output (-v debug, -vv trace with every APDU); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Run the service: the cards and readers of a configuration file in one process,
    /// controlled at run time through the control socket (`vccid ctl`). Without a file, the
    /// embedded default card on vpcd.
    Serve {
        /// The configuration (default: $XDG_CONFIG_HOME/vccid/vccid.toml, or
        /// /etc/vccid/vccid.toml as root; none there: the embedded default).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Check the configuration and exit.
        #[arg(long)]
        check: bool,
        /// More log output (-v debug, -vv trace); RUST_LOG overrides.
        #[arg(short, long, action = clap::ArgAction::Count)]
        verbose: u8,
    },
    /// Talk to a running `vccid serve` through its control socket.
    Ctl(vccid::ctl::CtlArgs),
    /// TLS certificates.
    #[command(subcommand)]
    Tls(TlsCmd),
    /// Make a data directory (mode 0700) with a new default card: three RSA-2048 identities
    /// and a P-256 one; refuses when DIR already holds a card.
    Init {
        /// The data directory (default: $VCCID_DATA_DIR, else $XDG_DATA_HOME/vccid, else
        /// ~/.local/share/vccid).
        dir: Option<PathBuf>,
    },
}

#[derive(clap::Subcommand, Debug)]
enum TlsCmd {
    /// Make a QEMU tls-creds-x509 directory: a CA, a server certificate for the given names
    /// and addresses, a client certificate (ECDSA P-256; keys mode 0600), and print the QEMU
    /// and libvirt lines that use it.
    Init {
        /// The directory.
        dir: PathBuf,
        /// DNS names in the server certificate (repeatable; default localhost).
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// IP addresses in the server certificate (repeatable; default 127.0.0.1 and ::1).
        #[arg(long = "ip", value_name = "IP")]
        ips: Vec<std::net::IpAddr>,
        /// Validity in days (1 to 36500).
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
        /// Replace an existing set.
        #[arg(long)]
        force: bool,
    },
}

fn tls_init(cmd: TlsCmd) -> Result<()> {
    let TlsCmd::Init {
        dir,
        mut names,
        mut ips,
        days,
        force,
    } = cmd;
    if names.is_empty() {
        names.push("localhost".into());
    }
    if ips.is_empty() {
        ips = vec!["127.0.0.1".parse()?, "::1".parse()?];
    }
    vccid::tls_init::init(&dir, &names, &ips, days, force)?;
    let dir = std::fs::canonicalize(&dir)?;
    println!(
        "wrote {}/{{ca-cert,ca-key,server-cert,server-key,client-cert,client-key}}.pem",
        dir.display()
    );
    let host = ips
        .first()
        .map(|i| i.to_string())
        .unwrap_or_else(|| names[0].clone());
    println!("{}", vccid::tls_init::usage_lines(&dir, &host));
    Ok(())
}

/// Refuses every option that does nothing in the mode chosen, saying why: a user who gives
/// `--tls` with `--vpcd` believes the link is encrypted (issue #13).
fn check_applicable(args: &Args, specs: &[CardSpec]) -> Result<()> {
    let passthru = specs.iter().any(|s| matches!(s, CardSpec::Passthru { .. }));
    let any_transport = args.vpcd.is_some()
        || args.usbredir.is_some()
        || args.usbredir_connect.is_some()
        || args.usbip.is_some();
    // With no transport option the reader goes to usbredir on 127.0.0.1:4000.
    let usbredir_listen = args.usbredir.is_some() || !any_transport;
    let usbredir = usbredir_listen || args.usbredir_connect.is_some();
    let usb = usbredir || args.usbip.is_some();
    if args.tls.is_some() && !usbredir && !passthru {
        anyhow::bail!(
            "--tls applies to usbredir (--usbredir, --usbredir-connect) and to the passthru \
             card's listener only; vpcd and USB/IP have no TLS (their peers, pcscd's vpcd \
             driver and the kernel's vhci-hcd, speak plaintext): keep them on loopback"
        );
    }
    if args.tls_hostname.is_some() && args.usbredir_connect.is_none() {
        anyhow::bail!(
            "--tls-hostname names the server vccid connects to: it applies to \
             --usbredir-connect only"
        );
    }
    if args.pcap.is_some() && !usb {
        anyhow::bail!(
            "--pcap records USB transfers: it needs the USB reader (--usbredir, \
             --usbredir-connect or --usbip); vpcd carries APDUs, not USB (use -vv to see them)"
        );
    }
    if args.insecure_plaintext && !usbredir_listen && args.usbip.is_none() && !passthru {
        anyhow::bail!(
            "--insecure-plaintext allows plaintext listeners on other addresses than loopback; \
             nothing listens here (vpcd and --usbredir-connect connect out)"
        );
    }
    if args.one_reader && !usb {
        anyhow::bail!(
            "--one-reader puts the cards in one USB reader: it needs --usbredir, \
             --usbredir-connect or --usbip (vpcd has a reader per card)"
        );
    }
    Ok(())
}

/// The configuration file `vccid serve` reads without --config.
fn default_config() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/etc/vccid/vccid.toml");
    }
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("XDG_CONFIG_HOME")
        .or_else(|| env("HOME").map(|h| h.join(".config")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("vccid/vccid.toml")
}

/// `vccid serve`.
fn serve(config: Option<PathBuf>, check: bool) -> Result<()> {
    let path = config.or_else(|| Some(default_config()).filter(|p| p.exists()));
    let (cfg, from) = match &path {
        Some(p) => (vccid::config::Config::load(p)?, p.display().to_string()),
        None => (
            vccid::service::embedded_default(),
            format!(
                "the embedded default ({} does not exist)",
                default_config().display()
            ),
        ),
    };
    if check {
        println!(
            "{from}: {} card(s), {} reader(s): OK",
            cfg.cards.len(),
            cfg.readers.len()
        );
        return Ok(());
    }
    tracing::info!(config = %from, "vccid serve starting");
    let state_dir = match &cfg.service.state_dir {
        Some(d) => d.clone(),
        None => card::keystore::default_data_dir().ok_or_else(|| {
            anyhow::anyhow!("no state directory: set state_dir in [service], HOME or XDG_DATA_HOME")
        })?,
    };
    vccid::keys::create_data_dir(&state_dir)?;
    let svc = vccid::service::Service::start(&cfg, state_dir, path)?;
    let control = cfg
        .service
        .control
        .clone()
        .unwrap_or_else(vccid::control::default_path);
    vccid::control::serve(
        &control,
        cfg.service.control_mode.as_deref(),
        cfg.service.control_owner.as_deref(),
        cfg.service.control_group.as_deref(),
        svc.clone(),
    )?;
    // What runs, run-time cards of an earlier start included.
    let status = format!(
        "serving {} card(s) in {} reader(s); control socket {}",
        svc.cards().len(),
        svc.readers().len(),
        control.display()
    );
    // "ready" as in flag mode: scripts (and the README's test) wait for this line.
    println!("vccid: ready: {status}");
    // Every reader listens (or connects) by now: Service::start returned.
    if let Err(e) = vccid::notify::notify(&format!("READY=1\nSTATUS={status}")) {
        tracing::warn!("cannot notify systemd of readiness: {e}");
    }
    let reloading = svc.clone();
    vccid::wait_for_signals(move || {
        if let Err(e) = reloading.reload_file() {
            tracing::warn!("SIGHUP: configuration not reloaded: {e:#}");
        }
    })?;
    tracing::info!("shutting down");
    svc.stop();
    let _ = std::fs::remove_file(&control);
    Ok(())
}

fn run(args: Args) -> Result<()> {
    match args.command {
        Some(Cmd::Serve { config, check, .. }) => return serve(config, check),
        Some(Cmd::Ctl(a)) => return vccid::ctl::run(a),
        Some(Cmd::Tls(cmd)) => return tls_init(cmd),
        Some(Cmd::Init { dir }) => {
            print!("{}", vccid::keys::init(dir.as_deref())?);
            return Ok(());
        }
        None => {}
    }
    let specs = args
        .cards
        .iter()
        .map(|c| spec::parse(c).with_context(|| format!("--card {:?}", spec::redact(c))))
        .collect::<Result<Vec<CardSpec>>>()?;
    check_applicable(&args, &specs)?;
    if args.data_dir.is_some() && !specs.iter().any(|s| matches!(s, CardSpec::Emulated(_))) {
        anyhow::bail!(
            "--data-dir holds the emulated card's identities and PIV state; --card {} keeps \
             none",
            args.cards[0].split(',').next().unwrap_or_default()
        );
    }
    if args.reader.is_some() && specs.len() > 1 {
        anyhow::bail!(
            "--reader chooses the PC/SC reader of one --card hardware; with several cards give \
             each its own: --card hardware,reader=NAME"
        );
    }
    if let (true, Some(dir)) = (args.create, &args.data_dir) {
        vccid::keys::create_data_dir(dir)?;
    }
    // --reader applies to --card hardware only (checked before anything starts).
    let hardware_readers = specs
        .iter()
        .map(|s| vccid::hardware::reader_filter(s, args.reader.as_deref()))
        .collect::<Result<Vec<_>>>()?;
    let tls = args.tls.as_ref().map(|dir| link::tls::TlsOptions {
        dir: dir.clone(),
        verify_peer: !args.tls_no_verify_peer,
        server_name: args.tls_hostname.clone(),
        on_certificate: Some(vccid::expiry::warn),
    });
    let security = link::ListenSecurity {
        tls: tls.as_ref().map(|t| t.server_config()).transpose()?,
        plaintext: if args.insecure_plaintext {
            link::Security::InsecurePlaintext
        } else {
            link::Security::Plaintext
        },
    };
    let usbredir = match (&args.vpcd, &args.usbredir, &args.usbredir_connect) {
        (_, _, Some(c)) => {
            let addr = Addr::parse(c)?;
            let client = tls
                .as_ref()
                .map(|t| link::TlsClient::new(t, &addr))
                .transpose()?;
            Some(vccid::usb::Role::Connect(addr, client))
        }
        (None, None, None) if args.usbip.is_none() => Some(vccid::usb::Role::Listen(
            Addr::parse(DEFAULT_USBREDIR)?,
            security.clone(),
        )),
        (_, u, None) => u
            .as_deref()
            .map(Addr::parse)
            .transpose()?
            .map(|a| vccid::usb::Role::Listen(a, security.clone())),
    };
    let usbip_addr = match args.usbip.as_deref().map(Addr::parse).transpose()? {
        Some(Addr::Tcp(a)) => Some(a),
        Some(Addr::Unix(_)) => anyhow::bail!("USB/IP runs over TCP only: give --usbip HOST:PORT"),
        None => None,
    };
    let vpcd_addr = match args.vpcd.as_deref().map(Addr::parse).transpose()? {
        Some(Addr::Tcp(a)) => Some(a),
        Some(Addr::Unix(_)) => anyhow::bail!("vpcd listens on TCP only: give --vpcd HOST:PORT"),
        None => None,
    };
    // Our own vpcd readers are never candidates for --card hardware: relaying one would be a
    // loop.
    let own_vpcd =
        || vccid::hardware::own_readers(vpcd_addr, &vccid::hardware::host_vpcd_entries());
    // Every card goes into a slot of its own in the registry (cardN in slotN); the transports
    // serve the slots, so a card can leave one slot and enter another at run time.
    let registry = slot::Registry::new();
    let mut slots = Vec::new();
    for (i, (spec, reader)) in specs.iter().zip(hardware_readers).enumerate() {
        let card = vccid::service::make_card(
            spec,
            args.data_dir.clone(),
            &security,
            reader.as_deref(),
            &own_vpcd(),
        )?;
        let (card_id, slot_id) = (format!("card{i}"), format!("slot{i}"));
        registry.add_card(&card_id, card)?;
        let handle = registry.add_slot(&slot_id)?;
        registry.insert(&card_id, &slot_id)?;
        let shared: vpcd::SharedCard = Arc::new(Mutex::new(handle));
        slots.push(shared);
    }
    vccid::commands::spawn(registry.clone());
    // The USB readers: one per slot, or one with every slot (--one-reader).
    let readers: Vec<Vec<vpcd::SharedCard>> = if args.one_reader {
        vec![slots.clone()]
    } else {
        slots.iter().map(|s| vec![s.clone()]).collect()
    };
    // One capture file: the usbredir reader's when there is one, else the USB/IP reader's.
    let pcap = args.pcap.as_deref().map(|path| vccid::usb::Pcap {
        path,
        secrets: args.pcap_secrets,
    });
    if pcap.is_some() && readers.len() > 1 {
        anyhow::bail!(
            "--pcap records one USB reader: with several cards add --one-reader to put them all \
             in it"
        );
    }
    let (redir_pcap, usbip_pcap) = match usbredir {
        Some(_) => (pcap, None),
        None => (None, pcap),
    };
    if let Some(a) = usbip_addr {
        vccid::usb::serve_usbip(a, readers.clone(), usbip_pcap, security.plaintext, None)?;
        println!("{}", vccid::usb::usbip_lines(&a, readers.len()));
    }
    if let Some(role) = &usbredir {
        for (i, cards) in readers.iter().enumerate() {
            let role = role.for_reader(i)?;
            let pcap = if i == 0 { redir_pcap } else { None };
            vccid::usb::serve(&role, cards.clone(), pcap, None)?;
            if let vccid::usb::Role::Listen(addr, _) = &role {
                println!("{}", vccid::usb::attach_lines(addr, args.tls.as_deref()));
            }
        }
    }
    let mut clients = Vec::new();
    let mut pcscd_keeper = None;
    if let Some(a) = vpcd_addr {
        if !a.ip().is_loopback() {
            tracing::warn!(vpcd_addr = %a, "vpcd is not on loopback: the vpcd link is unauthenticated and unencrypted");
        }
        // A local pcscd may be socket-activated and asleep: wake it and keep it awake
        // before the first connection attempt (hostcard::pcscd).
        let keeper = a
            .ip()
            .is_loopback()
            .then(vccid::ready::wake_pcscd)
            .flatten();
        for (i, card) in slots.iter().enumerate() {
            // vpcd's slots are consecutive ports: its reader.conf entry's port is slot 0 of
            // that reader, the next port slot 1, and so on (vsmartcard's vpcd README).
            let port = u16::try_from(usize::from(a.port()) + i)
                .context("--vpcd: the slots' ports run past 65535")?;
            let addr = std::net::SocketAddr::new(a.ip(), port);
            tracing::info!(vpcd_addr = %addr, slot = i, "serving the card to vpcd");
            if keeper.is_some() {
                vccid::ready::announce_when_ready(card.clone());
            }
            clients.push(
                vpcd::spawn(card.clone(), vpcd::ClientOptions::new(addr))
                    .context("cannot start the vpcd client")?,
            );
        }
        pcscd_keeper = keeper;
    }
    vccid::wait_for_shutdown()?;
    tracing::info!("shutting down");
    for c in clients {
        c.stop();
    }
    drop(pcscd_keeper);
    Ok(())
}

fn main() {
    let args: Args = vccid::parse_args("vccid");
    let verbose = match &args.command {
        Some(Cmd::Serve { verbose, .. }) => *verbose,
        _ => args.verbose,
    };
    vccid::init_logging(verbose);
    if let Err(e) = run(args) {
        eprintln!("vccid: error: {e:#}");
        std::process::exit(2);
    }
}
