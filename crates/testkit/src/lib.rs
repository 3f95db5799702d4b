//! Test support for interop tests against real peers, one module per peer:
//!
//! - [`pcscd`]: [`PrivatePcscd`], pcscd + vpcd in private namespaces, with vicc and the
//!   PKCS#11 sign-and-verify round trip through OpenSC;
//! - [`qemu`]: [`Qemu`], QEMU with QMP on a private socket;
//! - [`guest`]: the Linux test guest's image and what its console reports;
//! - [`libvirt`]: [`PrivateLibvirtd`], a libvirtd of the test's own in a private mount
//!   namespace;
//! - [`identities`]: test identities made by OpenSSL, NSS (certutil, pk12util) and SoftHSM2,
//!   and the OpenSSL signature check ([`verify_sha256`]);
//! - [`vhci`]: the kernel's side of USB/IP;
//! - [`ccid_host`]: a mock CCID host driving a `UsbDevice`;
//! - [`usbhost`]: the host side of usbredir and USB/IP over vccid's real sockets, for the
//!   fault tests, the soak and the scale benchmark;
//! - [`fault`]: [`fault::FaultProxy`], a TCP/Unix proxy that delays, splits, stalls, cuts
//!   and resets a link's traffic on the test's schedule;
//! - [`tls`]: TLS material with one thing wrong, and tshark loopback captures;
//! - [`process`]: signals and deadlines for children and connections.
//!
//! This file keeps the shared helpers (running a command, [`which`], [`free_port`],
//! [`wait_for`]) and re-exports every item at the crate root, where the tests name them.
//!
//! A peer that cannot start is an error, never a skip.

pub mod ccid_host;
pub mod fault;
pub mod guest;
pub mod identities;
pub mod libvirt;
pub mod pcscd;
pub mod process;
pub mod qemu;
pub mod tls;
pub mod usbhost;
pub mod vhci;

pub use identities::{
    nss_db, nss_ec_db, nss_pkcs12, openssl_identities, openssl_pkcs12, private, pubkey_pem,
    softhsm_ec_token, softhsm_token, verify_sha256,
};
pub use libvirt::PrivateLibvirtd;
pub use pcscd::PrivatePcscd;
pub use process::{
    accept_within, kill, output, signal, terminate, wait_child, wait_output, CommandExt, Signal,
};
pub use qemu::Qemu;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The result type of this crate: errors are messages for a test failure.
pub type Result<T> = std::result::Result<T, String>;

/// OpenSC's PKCS#11 module on Debian.
pub const OPENSC_PKCS11: &str = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so";
/// SoftHSM2's module on Debian.
pub const SOFTHSM2: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// How long [`run`] lets a command take: generous (it builds the guest image), but a limit.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// How long a test tool (opensc-tool, pkcs11-tool, openssl, ss, tshark -r) may take.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs a command to completion (at most [`RUN_TIMEOUT`], standard input from /dev/null),
/// failing with its output if it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let what = format!("{cmd:?}");
    let out = output(cmd, RUN_TIMEOUT, &what)?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out)
}

/// Standard output and error of a finished command, as one text.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Fails when a program is not on PATH.
pub fn which(tool: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(tool))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| format!("{tool} is not installed (the test command installs it)"))
}
/// How many CCID XfrBlock (PC_to_RDR 6F) and DataBlock (RDR_to_PC 80) messages tshark decodes
/// in a usbmon capture (`--pcap`, the console's pcap download).
pub fn ccid_blocks(pcap: &std::path::Path) -> Result<(usize, usize)> {
    let o = output(
        Command::new("tshark").arg("-r").arg(pcap).args([
            "-Y",
            "usbccid",
            "-T",
            "fields",
            "-e",
            "usbccid.bMessageType",
        ]),
        TOOL_TIMEOUT,
        "tshark",
    )?;
    let types = String::from_utf8_lossy(&o.stdout);
    let count = |t: &str| types.lines().filter(|l| l.trim() == t).count();
    Ok((count("0x6f"), count("0x80")))
}

/// A free TCP port on 127.0.0.1 (bound once and released).
pub fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// Waits until `f` holds, polling every 50 ms.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Every way a log or a `Debug` could render `bytes`: hex upper and lower case, with and
/// without spaces, Rust's byte-slice `Debug` (`[49, 52]`, `[31, 34]`), and the text when it is
/// UTF-8; for the tests that look for secrets in `Debug` output (the card's and vccid's
/// `secrets_tests`).
pub fn secret_renderings(bytes: &[u8]) -> Vec<String> {
    let upper: Vec<String> = bytes.iter().map(|b| format!("{b:02X}")).collect();
    let lower: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut v = vec![
        upper.concat(),
        lower.concat(),
        upper.join(" "),
        lower.join(" "),
        format!("{bytes:?}"),
        format!("{bytes:02x?}"),
    ];
    if let Ok(s) = std::str::from_utf8(bytes) {
        v.push(s.to_string());
    }
    v
}
