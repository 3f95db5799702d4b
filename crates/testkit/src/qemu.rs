//! The QEMU peer: `qemu-system-x86_64` with no guest OS, driven through QMP on a private Unix
//! socket: the peer of the usbredir, ccid-card-passthru, TLS and attach-line tests (guest.rs,
//! which boots a Linux guest, runs QEMU itself).

use crate::{process, wait_for, which, Result};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// QEMU (`qemu-system-x86_64`, no guest OS) with its output in files and QMP on a private
/// Unix socket; killed on drop.
pub struct Qemu {
    child: Child,
    /// Scratch directory: `qemu.out`, `qemu.err`, `qmp.sock`.
    pub dir: tempfile::TempDir,
}

impl Qemu {
    /// Starts `qemu-system-x86_64 -machine q35 -accel tcg -nodefaults -display none` plus
    /// `args`, line-buffered (QEMU's device debug output is printf to stdout).
    pub fn start(args: &[String]) -> Result<Qemu> {
        which("qemu-system-x86_64")?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let qmp = dir.path().join("qmp.sock");
        let out = std::fs::File::create(dir.path().join("qemu.out")).map_err(|e| e.to_string())?;
        let err = std::fs::File::create(dir.path().join("qemu.err")).map_err(|e| e.to_string())?;
        let child = Command::new("stdbuf")
            .args([
                "-oL",
                "-eL",
                "qemu-system-x86_64",
                "-machine",
                "q35",
                "-accel",
                "tcg",
                "-m",
                "128",
            ])
            .args([
                "-nodefaults",
                "-display",
                "none",
                "-serial",
                "none",
                "-monitor",
                "none",
                "-qmp",
            ])
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start QEMU: {e}"))?;
        let mut q = Qemu { child, dir };
        let sock = q.dir.path().join("qmp.sock");
        let started = wait_for("QEMU's QMP socket", Duration::from_secs(20), || {
            sock.exists()
        });
        if let Ok(Some(st)) = q.child.try_wait() {
            return Err(format!("QEMU exited ({st}): {}", q.stderr()));
        }
        started.map_err(|e| format!("{e}: {}", q.stderr()))?;
        Ok(q)
    }

    /// What QEMU printed on stdout (device debug output).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("qemu.out")).unwrap_or_default()
    }

    /// What QEMU printed on stderr.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("qemu.err")).unwrap_or_default()
    }

    /// Runs a human-monitor command through QMP; returns the answer line.
    pub fn qmp_hmp(&self, command_line: &str) -> Result<String> {
        self.qmp_json(&format!(
            "{{\"execute\":\"human-monitor-command\",\"arguments\":{{\"command-line\":\"{command_line}\"}}}}"
        ))
    }

    /// Runs one QMP command without arguments and returns its answer line.
    pub fn qmp(&self, command: &str) -> Result<String> {
        self.qmp_json(&format!("{{\"execute\":\"{command}\"}}"))
    }

    /// Sends one QMP request (after the capabilities handshake) and returns its answer line.
    pub fn qmp_json(&self, request: &str) -> Result<String> {
        use std::io::{BufRead, BufReader, Write};
        let s = std::os::unix::net::UnixStream::connect(self.dir.path().join("qmp.sock"))
            .map_err(|e| format!("QMP connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
        let mut w = s;
        let mut line = String::new();
        r.read_line(&mut line)
            .map_err(|e| format!("QMP greeting: {e}"))?;
        for cmd in ["{\"execute\":\"qmp_capabilities\"}", request] {
            writeln!(w, "{cmd}").map_err(|e| e.to_string())?;
            loop {
                line.clear();
                r.read_line(&mut line)
                    .map_err(|e| format!("QMP {request}: {e}"))?;
                // Skip asynchronous events.
                if line.contains("\"return\"") || line.contains("\"error\"") || line.is_empty() {
                    break;
                }
            }
        }
        Ok(line)
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Err(e) = process::kill(&mut self.child, "QEMU") {
            eprintln!("{e}");
        }
    }
}
