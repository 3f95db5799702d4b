//! The test guest (`tests/guest/`): Debian's kernel and a busybox initramfs with pcscd,
//! libccid and OpenSC, built once per test binary, and what its serial console reports
//! (`E2E-RESULT key=value` lines, `E2E-HEX-BEGIN name` ... `E2E-HEX-END` blobs, `E2E-DONE`).
//! QEMU started by the test (guest.rs) and by a private libvirtd (libvirt.rs) boot the same
//! image.

use crate::run;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The directory holding `kernel` and `initramfs.cpio`, built once per test binary.
pub fn image() -> &'static PathBuf {
    static IMG: OnceLock<PathBuf> = OnceLock::new();
    IMG.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vccid-guest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        // The raw-APDU tool for the guest: hostcard's example, built like the tests.
        run(Command::new(env!("CARGO")).current_dir(&root).args([
            "build",
            "-q",
            "-p",
            "hostcard",
            "--example",
            "apdu",
        ]))
        .expect("the apdu example builds");
        let tool = root.join("target/debug/examples/apdu");
        let script = root.join("tests/guest/build-initramfs.sh");
        run(Command::new("bash")
            .arg(script)
            .arg(&dir)
            .env("APDU_TOOL", &tool))
        .expect("the guest initramfs builds");
        dir
    })
}

/// What the guest reported on its serial console.
#[derive(Debug, Default)]
pub struct Report {
    /// `E2E-RESULT key=value`, by key.
    pub results: HashMap<String, String>,
    /// `E2E-HEX-BEGIN name` blobs, decoded.
    pub blobs: HashMap<String, Vec<u8>>,
    /// The whole console, carriage returns removed.
    pub serial: String,
}

impl Report {
    /// A result, or "" when the guest did not report it.
    pub fn get(&self, key: &str) -> String {
        self.results.get(key).cloned().unwrap_or_default()
    }
}

/// Reads a serial console log.
pub fn parse(log: &[u8]) -> Report {
    let serial = String::from_utf8_lossy(log).replace('\r', "");
    let mut results = HashMap::new();
    let mut blobs = HashMap::new();
    let mut lines = serial.lines();
    while let Some(l) = lines.next() {
        if let Some(r) = l.strip_prefix("E2E-RESULT ") {
            let (k, v) = r.split_once('=').unwrap_or((r, ""));
            results.insert(k.to_string(), v.to_string());
        } else if let Some(name) = l.strip_prefix("E2E-HEX-BEGIN ") {
            let hex: String = lines
                .by_ref()
                .take_while(|l| !l.starts_with("E2E-HEX-END"))
                .collect();
            blobs.insert(name.to_string(), apdu::hex::parse(&hex).unwrap_or_default());
        }
    }
    Report {
        results,
        blobs,
        serial,
    }
}

/// The `E2E-WAIT what` lines of a console log, in order.
pub fn waits(log: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(log)
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("E2E-WAIT "))
        .map(str::to_string)
        .collect()
}
