//! Test support for interop tests against real peers.
//!
//! [`PrivatePcscd`] starts pcscd with vsmartcard's vpcd driver in a private mount and network
//! namespace (`unshare --mount --net`): a tmpfs on /run/pcscd, because pcscd 1.9.9 puts its
//! socket there whatever PCSCLITE_CSOCK_NAME says, and a network namespace whose only interface
//! is `lo`, because vpcd binds 0.0.0.0:35963. Every program that must talk to that pcscd (our
//! card, OpenSC) runs inside the same namespaces through `nsenter`. Nothing system-wide is
//! touched, and dropping the value stops everything it started.
//!
//! A peer that cannot start is an error, never a skip.

pub mod ccid_host;
pub mod process;
pub mod tls;
pub mod vhci;

pub use process::{
    accept_within, kill, output, signal, terminate, wait_child, wait_output, CommandExt, Signal,
};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
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

/// How [`PrivatePcscd`] starts pcscd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `pcscd -f` at once.
    Direct,
    /// Debian's units: socket-activated, `--auto-exit`.
    SocketActivated,
    /// Not at all (yet).
    Absent,
}

/// A private pcscd with vpcd's readers "Virtual PCD 00 00" (port 35963) and "... 00 01".
pub struct PrivatePcscd {
    holder: Child,
    children: Vec<(String, Child)>,
    /// A scratch directory for this instance (HOME of the programs run inside).
    pub dir: tempfile::TempDir,
}

impl PrivatePcscd {
    /// Starts pcscd in fresh namespaces and waits until vpcd listens.
    pub fn start() -> Result<Self> {
        Self::start_named(None)
    }

    /// Like [`start`](Self::start), with vpcd's reader named `friendly` instead of "Virtual
    /// PCD": the namespace gets its own /etc/reader.conf.d (ykcs11 2.2.0 opens only readers
    /// whose names start with "Yubico", ykcs11/utils.c `is_yubico_reader`).
    pub fn start_named(friendly: Option<&str>) -> Result<Self> {
        Self::start_with(friendly, Mode::Direct)
    }

    /// pcscd started as Debian's units start it: `pcscd.socket` listens on
    /// /run/pcscd/pcscd.comm and the first PC/SC client starts `pcscd --foreground
    /// --auto-exit` (pcscd.service), which exits 60 s after its last client. Here
    /// `systemd-socket-activate` plays pcscd.socket; until a client connects nothing listens on
    /// vpcd's port, which this checks before returning.
    pub fn start_socket_activated() -> Result<Self> {
        Self::start_with(None, Mode::SocketActivated)
    }

    /// The namespaces with no pcscd in them yet, as on a machine where the user starts pcscd
    /// after vccid; [`start_pcscd`](Self::start_pcscd) starts it.
    pub fn start_without_pcscd() -> Result<Self> {
        Self::start_with(None, Mode::Absent)
    }

    /// Starts `pcscd -f` in namespaces made by [`start_without_pcscd`](Self::start_without_pcscd)
    /// and waits until vpcd listens.
    pub fn start_pcscd(&mut self) -> Result<()> {
        let mut cmd = self.command("pcscd");
        cmd.arg("-f");
        self.spawn("pcscd", cmd)?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let o = output(self.command("ss").arg("-ltn"), TOOL_TIMEOUT, "ss")?;
            if String::from_utf8_lossy(&o.stdout).contains(":35963 ") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "vpcd never listened after pcscd started: {}",
                    self.child_log("pcscd")
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_with(friendly: Option<&str>, mode: Mode) -> Result<Self> {
        let activated = mode == Mode::SocketActivated;
        for tool in [
            "pcscd",
            "unshare",
            "nsenter",
            "ip",
            "systemd-socket-activate",
        ] {
            which(tool)?;
        }
        if !Path::new("/usr/lib/pcsc/drivers/serial/libifdvpcd.so").exists()
            && !Path::new("/etc/reader.conf.d/vpcd").exists()
        {
            return Err("vsmartcard-vpcd is not installed (no /etc/reader.conf.d/vpcd)".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.path().join("pcscd.log")).map_err(|e| e.to_string())?;
        let mut script = String::from(
            "set -e; ip link set lo up; mkdir -p /run/pcscd; \
             mount -t tmpfs -o mode=755 tmpfs /run/pcscd; ",
        );
        if let Some(name) = friendly {
            let conf = std::fs::read_to_string("/etc/reader.conf.d/vpcd")
                .map_err(|e| format!("/etc/reader.conf.d/vpcd: {e}"))?;
            let conf: String = conf
                .lines()
                .map(|l| {
                    if l.starts_with("FRIENDLYNAME") {
                        format!("FRIENDLYNAME \"{name}\"\n")
                    } else {
                        format!("{l}\n")
                    }
                })
                .collect();
            let confdir = dir.path().join("reader.conf.d");
            std::fs::create_dir(&confdir).map_err(|e| e.to_string())?;
            std::fs::write(confdir.join("vpcd"), conf).map_err(|e| e.to_string())?;
            script.push_str(&format!(
                "mount --bind '{}' /etc/reader.conf.d; ",
                confdir.display()
            ));
        }
        script.push_str(match mode {
            Mode::SocketActivated => {
                "exec systemd-socket-activate -l /run/pcscd/pcscd.comm \
                 pcscd --foreground --auto-exit"
            }
            Mode::Direct => "exec pcscd -f",
            Mode::Absent => "exec sleep infinity",
        });
        let holder = Command::new("unshare")
            .args([
                "--mount",
                "--net",
                "--propagation",
                "private",
                "--fork",
                "--kill-child",
                "--",
                "sh",
                "-c",
                &script,
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start unshare: {e}"))?;
        let mut me = PrivatePcscd {
            holder,
            children: Vec::new(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(st)) = me.holder.try_wait() {
                return Err(format!("pcscd exited at start ({st}): {}", me.log()));
            }
            let ss = output(me.command("ss").arg("-lnx").arg("-ltn"), TOOL_TIMEOUT, "ss");
            if let Ok(o) = ss {
                let out = String::from_utf8_lossy(&o.stdout);
                if activated && out.contains("/run/pcscd/pcscd.comm") {
                    if out.contains(":35963 ") {
                        return Err(format!(
                            "vpcd listens before any PC/SC client came: pcscd was not \
                             socket-activated: {}",
                            me.log()
                        ));
                    }
                    break;
                }
                if mode == Mode::Direct && out.contains(":35963 ") {
                    break;
                }
                if mode == Mode::Absent {
                    break;
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} never listened: {}",
                    if activated {
                        "systemd-socket-activate on /run/pcscd/pcscd.comm"
                    } else {
                        "vpcd on 35963"
                    },
                    me.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(me)
    }

    /// pcscd's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pcscd.log")).unwrap_or_default()
    }

    /// A command that runs inside this instance's namespaces, with HOME in the scratch dir.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.holder.id().to_string())
            .args(["-m", "-n", "--"])
            .arg(program)
            .env("HOME", self.dir.path())
            .stdin(Stdio::null());
        c
    }

    /// Starts a long-running program inside the namespaces; it is killed on drop. Its output
    /// goes to `name.log` in the scratch dir.
    pub fn spawn(&mut self, name: &str, mut cmd: Command) -> Result<()> {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log")))
            .map_err(|e| e.to_string())?;
        let child = cmd
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    /// Like [`spawn`](Self::spawn), with the program's standard input as a pipe to write to.
    pub fn spawn_with_stdin(
        &mut self,
        name: &str,
        mut cmd: Command,
    ) -> Result<std::process::ChildStdin> {
        cmd.stdin(Stdio::piped());
        self.spawn(name, cmd)?;
        self.children
            .last_mut()
            .and_then(|(_, c)| c.stdin.take())
            .ok_or_else(|| format!("{name} has no stdin pipe"))
    }

    /// The log of a program started with [`spawn`](Self::spawn).
    pub fn child_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Stops the programs started with [`spawn`](Self::spawn) (SIGTERM, then SIGKILL).
    pub fn stop_children(&mut self) {
        let all: Vec<(String, Child)> = self.children.drain(..).collect();
        stop(all);
    }

    /// Stops one program started with [`spawn`](Self::spawn), by its name: `signal` (named
    /// as for the `kill` program: "TERM", "KILL", "INT", "HUP"), then SIGTERM, then SIGKILL
    /// after 3 s.
    ///
    /// # Panics
    /// On a signal name that [`Signal::from_name`] does not know (a bug in the test).
    pub fn stop_child(&mut self, name: &str, signal: &str) {
        let sig = Signal::from_name(signal)
            .unwrap_or_else(|| panic!("stop_child({name:?}): unknown signal {signal:?}"));
        let (mine, rest): (Vec<_>, Vec<_>) = self.children.drain(..).partition(|(n, _)| n == name);
        self.children = rest;
        let mut mine = mine;
        for (n, c) in &mut mine {
            if let Err(e) = process::signal(c, sig) {
                eprintln!("stop_child: {n}: {e}");
            }
        }
        stop(mine);
    }

    /// The process id of a program started with [`spawn`](Self::spawn).
    pub fn child_pid(&self, name: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.id())
    }

    /// Waits until reader `index` shows a card in `opensc-tool -l`.
    pub fn wait_card(&self, index: usize, timeout: Duration) -> Result<()> {
        self.wait_reader(index, true, timeout)
    }

    /// Waits until reader `index` shows no card.
    pub fn wait_no_card(&self, index: usize, timeout: Duration) -> Result<()> {
        self.wait_reader(index, false, timeout)
    }

    /// Polls `opensc-tool -l` until reader `index` says "Yes" (card present) or "No".
    fn wait_reader(&self, index: usize, present: bool, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let want = format!("{index} ");
        let word = if present { "Yes" } else { "No" };
        loop {
            let out = output(
                self.command("opensc-tool").arg("-l"),
                // One slow call may use the rest of the wait, and a little more.
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_secs(10)),
                "opensc-tool -l",
            )
            .map_err(|e| format!("{e}\npcscd: {}", self.log()))?;
            let t = String::from_utf8_lossy(&out.stdout);
            if t.lines().any(|l| l.starts_with(&want) && l.contains(word)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "reader {index} did not show {word} for a card after {timeout:?}:\n{t}\npcscd: {}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// SIGTERM to all, then SIGKILL to each one still running 3 s later, and reap (cleanup:
/// failures are reported on stderr, not raised).
fn stop(mut children: Vec<(String, Child)>) {
    for (name, c) in &mut children {
        if let Err(e) = process::signal(c, Signal::Term) {
            eprintln!("stopping {name}: {e}");
        }
    }
    for (name, c) in &mut children {
        // At the deadline wait_child kills and reaps it: the SIGKILL this cleanup wants.
        let _ = process::wait_child(c, Duration::from_secs(3), name);
    }
}

impl Drop for PrivatePcscd {
    fn drop(&mut self) {
        self.stop_children();
        // unshare --kill-child takes pcscd with it.
        if let Err(e) = process::kill(&mut self.holder, "pcscd's unshare") {
            eprintln!("{e}");
        }
    }
}

impl PrivatePcscd {
    /// Starts vsmartcard's `vicc -t iso7816` (package vsmartcard-vpicc), the "real card" of
    /// the hardware tests, on vpcd port `port` (35963 = reader 0). Debian's vicc needs its
    /// package directory on PYTHONPATH and `Crypto` to name pycryptodome's `Cryptodome`.
    pub fn start_vicc(&mut self, port: u16) -> Result<()> {
        which("vicc")?;
        let shim = self.dir.path().join("pyshim");
        std::fs::create_dir_all(&shim).map_err(|e| e.to_string())?;
        let link = shim.join("Crypto");
        if !link.exists() {
            std::os::unix::fs::symlink("/usr/lib/python3/dist-packages/Cryptodome", &link)
                .map_err(|e| e.to_string())?;
        }
        let mut cmd = self.command("vicc");
        cmd.env(
            "PYTHONPATH",
            format!(
                "/usr/lib/python3/site-packages/virtualsmartcard:{}",
                shim.display()
            ),
        )
        .args(["-t", "iso7816", "-H", "127.0.0.1", "-P", &port.to_string()]);
        self.spawn("vicc", cmd)
    }
}

/// Writes the public key of a PEM certificate to `out` (`openssl x509 -pubkey`).
pub fn pubkey_pem(cert: &Path, out: &Path) -> Result<()> {
    let o = run(Command::new("openssl")
        .args(["x509", "-pubkey", "-noout", "-in"])
        .arg(cert))?;
    std::fs::write(out, o.stdout).map_err(|e| e.to_string())
}

impl PrivatePcscd {
    /// Signs a message with key `id` through OpenSC's PKCS#11 module (SHA256-RSA-PKCS, login
    /// with `pin`) inside this instance, and checks the signature with
    /// `openssl dgst -sha256 -verify` against the public key of the PEM certificate `cert`.
    pub fn sign_and_verify(&self, id: &str, pin: &str, cert: &Path) -> Result<()> {
        self.sign_and_verify_env(id, pin, cert, &[])
    }

    /// [`sign_and_verify`](Self::sign_and_verify) with extra environment for pkcs11-tool
    /// (`OPENSC_DRIVER=cac` to pick OpenSC's driver).
    pub fn sign_and_verify_env(
        &self,
        id: &str,
        pin: &str,
        cert: &Path,
        env: &[(&str, &str)],
    ) -> Result<()> {
        self.sign_and_verify_with(OPENSC_PKCS11, "SHA256-RSA-PKCS", id, pin, cert, env)
    }

    /// Signs with `pkcs11-tool --module MODULE --mechanism MECHANISM` (an ECDSA mechanism gets
    /// its signature in OpenSSL's DER format) and checks the signature with [`verify_sha256`].
    pub fn sign_and_verify_with(
        &self,
        module: &str,
        mechanism: &str,
        id: &str,
        pin: &str,
        cert: &Path,
        env: &[(&str, &str)],
    ) -> Result<()> {
        let d = self.dir.path();
        let (msg, sig) = (d.join(format!("msg{id}")), d.join(format!("sig{id}")));
        std::fs::write(&msg, b"vccid signs this\n").map_err(|e| e.to_string())?;
        let mut cmd = self.command("pkcs11-tool");
        cmd.envs(env.iter().copied())
            .args(["--module", module, "--login", "--pin", pin, "--sign"])
            .args(["--mechanism", mechanism, "--id", id, "--input-file"])
            .arg(&msg)
            .arg("--output-file")
            .arg(&sig);
        if mechanism.starts_with("ECDSA") {
            cmd.args(["--signature-format", "openssl"]);
        }
        let o = output(&mut cmd, TOOL_TIMEOUT, "pkcs11-tool --sign")?;
        if !o.status.success() {
            return Err(format!("pkcs11-tool --sign --id {id}: {}", text(&o)));
        }
        verify_sha256(cert, &msg, &sig).map_err(|e| format!("signature with {id}: {e}"))
    }
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

/// Three self-signed RSA-2048 identities CN=cert1..cert3 as PEM files made by OpenSSL:
/// `certN.crt.pem`, `certN.key.pem` (PKCS#8) and `certN.crt.der` in `dir`.
pub fn openssl_identities(dir: &Path) -> Result<()> {
    for n in 1..=3 {
        let key = dir.join(format!("cert{n}.key.pem"));
        let crt = dir.join(format!("cert{n}.crt.pem"));
        run(Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj",
            ])
            .arg(format!("/CN=cert{n}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&crt))?;
        private(&key)?;
        run(Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&crt)
            .arg("-out")
            .arg(dir.join(format!("cert{n}.crt.der"))))?;
    }
    Ok(())
}

/// The seed's NSS database: `certutil -d sql:DIR -x -t "CT,CT,CT" -S -s "CN=certN" -n certN`
/// for N = 1..3, with an empty password (or `password`), plus `certN.crt.pem` exports.
pub fn nss_db(dir: &Path, password: Option<&str>) -> Result<()> {
    let db = format!("sql:{}", dir.display());
    let pwfile = dir.join("password.txt");
    std::fs::write(&pwfile, password.unwrap_or("")).map_err(|e| e.to_string())?;
    let mut init = Command::new("certutil");
    init.args(["-N", "-d", &db]);
    match password {
        None => init.arg("--empty-password"),
        Some(_) => init.arg("-f").arg(&pwfile),
    };
    run(&mut init)?;
    let noise = dir.join("noise.bin");
    std::fs::write(
        &noise,
        (0..2048u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect::<Vec<u8>>(),
    )
    .map_err(|e| e.to_string())?;
    for n in 1..=3 {
        let mut c = Command::new("certutil");
        c.args(["-d", &db, "-x", "-t", "CT,CT,CT", "-S", "-s"])
            .arg(format!("CN=cert{n}"))
            .args([
                "-n",
                &format!("cert{n}"),
                "-k",
                "rsa",
                "-g",
                "2048",
                "-v",
                "12",
                "-Z",
                "SHA256",
                "-m",
            ])
            .arg(format!("{}", 1000 + n))
            .arg("-z")
            .arg(&noise)
            .arg("-f")
            .arg(&pwfile)
            .stdin(Stdio::null());
        run(&mut c)?;
        let pem =
            run(Command::new("certutil").args(["-d", &db, "-L", "-a", "-n", &format!("cert{n}")]))?;
        std::fs::write(dir.join(format!("cert{n}.crt.pem")), pem.stdout)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Exports `certN` of an NSS database made by [`nss_db`] (empty password) as `certN.nss.p12`
/// with NSS's own `pk12util`, PKCS#12 password `password`.
pub fn nss_pkcs12(dir: &Path, password: &str) -> Result<()> {
    let db = format!("sql:{}", dir.display());
    for n in 1..=3 {
        run(Command::new("pk12util")
            .args(["-d", &db, "-n", &format!("cert{n}"), "-o"])
            .arg(dir.join(format!("cert{n}.nss.p12")))
            .args(["-W", password, "-K", ""]))?;
        private(&dir.join(format!("cert{n}.nss.p12")))?;
    }
    Ok(())
}

/// Bundles the PEM identities of [`openssl_identities`] as `certN.p12` with
/// `openssl pkcs12 -export` (OpenSSL 3's defaults: PBES2, AES-256-CBC, PBKDF2-SHA256).
pub fn openssl_pkcs12(dir: &Path, password: &str) -> Result<()> {
    for n in 1..=3 {
        run(Command::new("openssl")
            .args(["pkcs12", "-export", "-inkey"])
            .arg(dir.join(format!("cert{n}.key.pem")))
            .arg("-in")
            .arg(dir.join(format!("cert{n}.crt.pem")))
            .args(["-passout", &format!("pass:{password}"), "-out"])
            .arg(dir.join(format!("cert{n}.p12"))))?;
        private(&dir.join(format!("cert{n}.p12")))?;
    }
    Ok(())
}

/// Mode 0600 on a file holding a private key: vccid refuses one that others may read, and
/// what mode a tool gives its output depends on its version and the umask.
pub fn private(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod 600 {}: {e}", path.display()))
}

/// A SoftHSM2 configuration whose tokens live in `dir/tokens`; returns its path.
fn softhsm_conf(dir: &Path) -> Result<PathBuf> {
    let conf = dir.join("softhsm2.conf");
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).map_err(|e| e.to_string())?;
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\n",
            tokens.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    Ok(conf)
}

/// A SoftHSM2 token "vccid-test" (user PIN 77777777) in `dir` holding three RSA-2048 keys and
/// certificates CN=cert1..3 with CKA_ID 01..03; returns the SOFTHSM2_CONF path.
pub fn softhsm_token(dir: &Path) -> Result<PathBuf> {
    let conf = softhsm_conf(dir)?;
    run(Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            "vccid-test",
            "--so-pin",
            "12345678",
            "--pin",
            "77777777",
        ]))?;
    openssl_identities(dir)?;
    for n in 1..=3 {
        run(Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .arg("--import")
            .arg(dir.join(format!("cert{n}.key.pem")))
            .args([
                "--token",
                "vccid-test",
                "--label",
                &format!("cert{n}"),
                "--id",
                &format!("0{n}"),
                "--pin",
                "77777777",
            ]))?;
        run(Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", &conf)
            .args([
                "--module",
                SOFTHSM2,
                "--token-label",
                "vccid-test",
                "--login",
                "--pin",
                "77777777",
                "--write-object",
            ])
            .arg(dir.join(format!("cert{n}.crt.der")))
            .args([
                "--type",
                "cert",
                "--id",
                &format!("0{n}"),
                "--label",
                &format!("cert{n}"),
            ]))?;
    }
    Ok(conf)
}

/// Checks with `openssl dgst -sha256 -verify` that `sig` (PKCS#1 v1.5, or an ECDSA signature
/// in DER) over the file `msg` verifies with the public key of the PEM certificate `cert`.
pub fn verify_sha256(cert: &Path, msg: &Path, sig: &Path) -> Result<()> {
    let mut pk = sig.as_os_str().to_owned();
    pk.push(".pub.pem");
    let pk = PathBuf::from(pk);
    pubkey_pem(cert, &pk)?;
    let v = output(
        Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(&pk)
            .arg("-signature")
            .arg(sig)
            .arg(msg),
        TOOL_TIMEOUT,
        "openssl dgst -verify",
    )?;
    if v.status.success() && text(&v).contains("Verified OK") {
        Ok(())
    } else {
        Err(format!(
            "does not verify against {}: {}",
            cert.display(),
            text(&v)
        ))
    }
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

/// An NSS database in `dir` (no password) holding a self-signed ECC certificate and key
/// made by certutil: nickname `ec384`, CN=nss-ec384, secp384r1. Writes `ec384.crt.pem`.
pub fn nss_ec_db(dir: &Path) -> Result<()> {
    let db = format!("sql:{}", dir.display());
    run(Command::new("certutil").args(["-N", "-d", &db, "--empty-password"]))?;
    let noise = dir.join("noise.bin");
    std::fs::write(
        &noise,
        (0..2048u32)
            .map(|i| ((i * 7919) >> 5) as u8)
            .collect::<Vec<u8>>(),
    )
    .map_err(|e| e.to_string())?;
    run(Command::new("certutil")
        .args([
            "-d",
            &db,
            "-x",
            "-t",
            "u,u,u",
            "-S",
            "-s",
            "CN=nss-ec384",
            "-n",
            "ec384",
        ])
        .args([
            "-k",
            "ec",
            "-q",
            "secp384r1",
            "-v",
            "12",
            "-Z",
            "SHA384",
            "-m",
            "4242",
            "-z",
        ])
        .arg(&noise)
        .stdin(Stdio::null()))?;
    let pem = run(Command::new("certutil").args(["-d", &db, "-L", "-a", "-n", "ec384"]))?;
    std::fs::write(dir.join("ec384.crt.pem"), pem.stdout).map_err(|e| e.to_string())
}

/// A SoftHSM2 token "vccid-ec" (user PIN 77777777) in `dir` holding a P-256 key and its
/// self-signed certificate CN=hsm-p256 with CKA_ID 01 (`p256.crt.pem`, `p256.crt.der`);
/// returns the SOFTHSM2_CONF path.
pub fn softhsm_ec_token(dir: &Path) -> Result<PathBuf> {
    let conf = softhsm_conf(dir)?;
    let hsm = |c: &mut Command| {
        c.env("SOFTHSM2_CONF", &conf);
        run(c)
    };
    hsm(Command::new("softhsm2-util").args([
        "--init-token",
        "--free",
        "--label",
        "vccid-ec",
        "--so-pin",
        "12345678",
        "--pin",
        "77777777",
    ]))?;
    let p = |f: &str| dir.join(f);
    run(Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(p("p256.key")))?;
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-new",
            "-subj",
            "/CN=hsm-p256",
            "-days",
            "30",
            "-key",
        ])
        .arg(p("p256.key"))
        .arg("-out")
        .arg(p("p256.crt.pem")))?;
    run(Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(p("p256.crt.pem"))
        .arg("-out")
        .arg(p("p256.crt.der")))?;
    // pkcs11-tool rather than softhsm2-util --import, which leaves CKA_DERIVE false.
    let write = |file: &str, kind: &[&str]| {
        hsm(Command::new("pkcs11-tool")
            .args(["--module", SOFTHSM2, "--token-label", "vccid-ec", "--login"])
            .args(["--pin", "77777777", "--write-object"])
            .arg(p(file))
            .args(kind)
            .args(["--id", "01", "--label", "p256"]))
    };
    write(
        "p256.key",
        &["--type", "privkey", "--usage-sign", "--usage-derive"],
    )?;
    write("p256.crt.der", &["--type", "cert"])?;
    Ok(conf)
}
