//! The pieces the `vccid` and `vscclient` programs share: card specifications, key stores,
//! stdin commands, the passthru card, libcacard's option strings, `tls init`. The streams and
//! TLS are the `link` crate's.

pub mod card_port;
pub mod cli;
pub mod commands;
pub mod config;
pub mod console;
pub mod control;
pub mod ctl;
pub mod emul_args;
pub mod enroll;
pub mod expiry;
pub mod hardware;
pub mod keys;
pub mod libvirt;
pub mod malloc;
pub mod notify;
pub mod passthru;
pub mod qemu;
pub mod ready;
pub mod secret;
#[cfg(test)]
mod secrets_tests;
pub mod service;
pub mod spec;
pub mod tls_init;
pub mod usb;

/// The first directory of a systemd directory variable (`$RUNTIME_DIRECTORY`,
/// `$STATE_DIRECTORY`, `$CONFIGURATION_DIRECTORY`; systemd.exec(5): colon-separated when the
/// unit names several), when the service runs under a unit that sets it.
pub fn systemd_dir(var: &str) -> Option<std::path::PathBuf> {
    let v = std::env::var(var).ok()?;
    let first = v.split(':').next().filter(|d| !d.is_empty())?;
    Some(std::path::PathBuf::from(first))
}

/// Parses the command line; a usage error is one line set like every other error of the
/// program (`PROG: error: ...`, exit status 2) followed by clap's usage hint, never a doubled
/// prefix; `--help` and `--version` print and exit 0.
pub fn parse_args<T: clap::Parser>(prog: &str) -> T {
    match T::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let text = e.render().to_string();
            let text = text.strip_prefix("error: ").unwrap_or(&text);
            eprint!("{prog}: error: {text}");
            std::process::exit(2);
        }
    }
}

/// Installs the tracing subscriber: `level` 0 info, 1 debug, 2+ trace; RUST_LOG overrides.
pub fn init_logging(level: u8) {
    let default = match level {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Blocks until SIGINT or SIGTERM; calls `on_hup` at every SIGHUP (`vccid serve` reloads its
/// configuration, as daemons do).
pub fn wait_for_signals(on_hup: impl Fn()) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = term.recv() => return Ok(()),
                _ = hup.recv() => on_hup(),
            }
        }
    })
}

/// Blocks until SIGINT or SIGTERM.
pub fn wait_for_shutdown() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        Ok(())
    })
}
