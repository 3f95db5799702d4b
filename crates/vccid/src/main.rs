//! `vccid`: a virtual smart card exported to the host's PC/SC through vsmartcard's vpcd
//! driver; the card is emulated (libcacard-compatible CAC) or lives in a VSCard client
//! (`--card passthru`). See the README for every option.

use anyhow::{Context, Result};
use link::Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use vccid::cli::{Args, Cmd, TlsCmd, DEFAULT_USBREDIR};
use vccid::spec::{self, CardSpec};

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
    // systemd's ConfigurationDirectory= (/etc/vccid for the packaged unit).
    if let Some(d) = vccid::systemd_dir("CONFIGURATION_DIRECTORY") {
        return d.join("vccid.toml");
    }
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
fn serve(
    config: Option<PathBuf>,
    check: bool,
    console: Option<String>,
    console_tls: Option<PathBuf>,
) -> Result<()> {
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
    let console_tls = console_tls.or_else(|| cfg.service.console_tls.clone());
    let console = console.or_else(|| cfg.service.console.clone());
    if let Some(addr) = &console {
        vccid::console::check(addr, console_tls.as_deref())?;
    }
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
        // systemd's StateDirectory= (/var/lib/vccid for the packaged unit).
        None => vccid::systemd_dir("STATE_DIRECTORY")
            .or_else(card::keystore::default_data_dir)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no state directory: set state_dir in [service], HOME or XDG_DATA_HOME"
                )
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
    if let Some(addr) = console {
        let c = vccid::console::start(&addr, console_tls.as_deref(), svc.clone())?;
        // Before the ready line: scripts that wait for it find the URL printed.
        println!("vccid: console: {}", c.url);
        svc.set_console_url(c.url);
    }
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
        Some(Cmd::Serve {
            config,
            check,
            console,
            console_tls,
            ..
        }) => return serve(config, check, console, console_tls),
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
    // Before anything else: every mode runs a thread or more per reader and connection.
    vccid::malloc::tune();
    let args: Args = vccid::parse_args("vccid");
    let verbose = match &args.command {
        Some(Cmd::Serve { verbose, .. }) => *verbose,
        _ => args.verbose,
    };
    vccid::init_logging(verbose);
    if vccid::malloc::tuned() {
        tracing::debug!(tunables = vccid::malloc::TUNABLES, "malloc tuned");
    }
    if let Err(e) = run(args) {
        eprintln!("vccid: error: {e:#}");
        std::process::exit(2);
    }
}
