//! The pieces the `vccid` and `vscclient` programs share: card specifications, key stores,
//! stdin commands, streams, the passthru card, libcacard's option strings.

pub mod async_ccid;
pub mod commands;
pub mod emul_args;
pub mod keys;
pub mod passthru;
pub mod spec;
pub mod stream;
pub mod tls;
pub mod usb;

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
