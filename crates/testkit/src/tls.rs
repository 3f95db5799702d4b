//! TLS test material and loopback captures: certificate directories in QEMU's
//! `tls-creds-x509` layout with one thing wrong (another CA, an expired client certificate),
//! and tshark captures whose raw bytes a test searches for plaintext.

use crate::process::{self, Signal};
use crate::{wait_for, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Runs `VCCID tls init DIR` (the program under test makes the directory QEMU reads);
/// returns what it printed.
pub fn vccid_init(vccid: &str, dir: &Path) -> Result<String> {
    crate::run(Command::new(vccid).args(["tls", "init"]).arg(dir)).map(|o| crate::text(&o))
}

fn copy(from: &Path, to: &Path, name: &str) -> Result<()> {
    std::fs::copy(from.join(name), to.join(name))
        .map(|_| ())
        .map_err(|e| format!("copy {name}: {e}"))
}

/// A client directory trusting `server_dir`'s CA (so the server is accepted) but holding the
/// client certificate and key of `client_dir` (from another CA, say).
pub fn mixed(server_dir: &Path, client_dir: &Path, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| e.to_string())?;
    copy(server_dir, out, "ca-cert.pem")?;
    copy(client_dir, out, "client-cert.pem")?;
    copy(client_dir, out, "client-key.pem")
}

/// A client directory trusting `dir`'s CA with a client certificate from that same CA that
/// expired yesterday.
pub fn expired_client(dir: &Path, out: &Path) -> Result<()> {
    let e = |x: rcgen::Error| x.to_string();
    std::fs::create_dir_all(out).map_err(|e| e.to_string())?;
    copy(dir, out, "ca-cert.pem")?;
    let ca_key = rcgen::KeyPair::from_pem(
        &std::fs::read_to_string(dir.join("ca-key.pem")).map_err(|e| e.to_string())?,
    )
    .map_err(e)?;
    // The issuer as `vccid tls init` names its CA (O=vccid, CN=vccid CA).
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.distinguished_name
        .push(rcgen::DnType::OrganizationName, "vccid");
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "vccid CA");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().map_err(e)?;
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "expired client");
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(30);
    p.not_after = now - time::Duration::days(1);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&key, &issuer).map_err(e)?;
    std::fs::write(out.join("client-cert.pem"), cert.pem()).map_err(|e| e.to_string())?;
    write_private(&out.join("client-key.pem"), key.serialize_pem().as_bytes())
}

/// Writes a private key as `vccid tls init` does, mode 0600: vccid refuses a key file others
/// may read (issue #17).
pub fn write_private(path: &Path, pem: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(pem))
        .map_err(|e| format!("write {}: {e}", path.display()))
}

/// A tshark capture running until [`Capture::stop`].
pub struct Capture {
    child: Child,
    file: PathBuf,
    log: PathBuf,
}

impl Capture {
    /// Starts `tshark -i lo -f FILTER -w FILE` through `command` (a plain `Command::new` or a
    /// namespace's `nsenter`), and waits until it captures.
    pub fn start(mut command: Command, filter: &str, dir: &Path) -> Result<Capture> {
        crate::which("tshark")?;
        let file = dir.join("capture.pcapng");
        let log = dir.join("tshark.log");
        let child = command
            .args(["-i", "lo", "-f", filter, "-w"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("cannot start tshark: {e}"))?;
        let c = Capture { child, file, log };
        // tshark prints "Capturing on" before dumpcap has its filter on the interface, and
        // "Capture started." once it is capturing.
        wait_for("tshark capturing", Duration::from_secs(30), || {
            std::fs::read_to_string(&c.log)
                .unwrap_or_default()
                .contains("Capture started")
        })
        .map(|()| std::thread::sleep(Duration::from_millis(500)))
        .map_err(|e| {
            format!(
                "{e}: {}",
                std::fs::read_to_string(&c.log).unwrap_or_default()
            )
        })?;
        Ok(c)
    }

    /// Stops the capture (SIGINT, so the file is complete) and returns its path. dumpcap
    /// writes packets in batches: give it a moment to take the last ones first.
    pub fn stop(mut self) -> Result<PathBuf> {
        std::thread::sleep(Duration::from_secs(1));
        process::signal(&mut self.child, Signal::Int)?;
        let log = |e: String| {
            format!(
                "{e}: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            )
        };
        let st = process::wait_child(
            &mut self.child,
            Duration::from_secs(30),
            "tshark to close its capture after SIGINT",
        )
        .map_err(log)?;
        // tshark exits 0 after SIGINT with a complete file; anything else is a broken capture.
        if !st.success() {
            return Err(log(format!("tshark stopped with {st}")));
        }
        Ok(self.file.clone())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // A capture not stopped (the test failed first): SIGKILL is enough.
        if let Err(e) = process::kill(&mut self.child, "tshark") {
            eprintln!("{e}");
        }
    }
}

/// Whether `needle` occurs anywhere in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The number of frames holding TLS records that tshark finds in a capture, decoding TCP
/// `port` as TLS.
pub fn tls_records(file: &Path, port: u16) -> Result<usize> {
    let o = process::output(
        Command::new("tshark").arg("-r").arg(file).args([
            "-d",
            &format!("tcp.port=={port},tls"),
            "-Y",
            "tls.record",
            "-T",
            "fields",
            "-e",
            "frame.number",
        ]),
        crate::TOOL_TIMEOUT,
        "tshark -r",
    )?;
    Ok(String::from_utf8_lossy(&o.stdout).lines().count())
}
