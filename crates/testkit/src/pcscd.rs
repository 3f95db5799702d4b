//! The PC/SC peer: [`PrivatePcscd`] starts pcscd with vsmartcard's vpcd driver in a private
//! mount and network namespace (`unshare --mount --net`): a tmpfs on /run/pcscd, because pcscd
//! 1.9.9 puts its socket there whatever PCSCLITE_CSOCK_NAME says, and a network namespace whose
//! only interface is `lo`, because vpcd binds 0.0.0.0:35963. Every program that must talk to
//! that pcscd (our card, OpenSC, vicc) runs inside the same namespaces through `nsenter`.
//! Nothing system-wide is touched, and dropping the value stops everything it started.

use crate::identities::verify_sha256;
use crate::process::{self, output, Signal};
use crate::{text, which, Result, OPENSC_PKCS11, TOOL_TIMEOUT};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
        Self::start_with(friendly, 1, Mode::Direct)
    }

    /// Like [`start`](Self::start), with `entries` vpcd reader.conf entries (each with its own
    /// copy of the vpcd library, see `start_with`) instead of
    /// Debian's one: each entry is a vpcd instance with two slots on consecutive ports, entry
    /// k on ports 35963 + 2k and 35964 + 2k, so pcscd lists `2 * entries` readers (entry k > 0
    /// named "Virtual PCD k").
    pub fn start_with_vpcd_entries(entries: usize) -> Result<Self> {
        Self::start_with(None, entries.max(1), Mode::Direct)
    }

    /// pcscd started as Debian's units start it: `pcscd.socket` listens on
    /// /run/pcscd/pcscd.comm and the first PC/SC client starts `pcscd --foreground
    /// --auto-exit` (pcscd.service), which exits 60 s after its last client. Here
    /// `systemd-socket-activate` plays pcscd.socket; until a client connects nothing listens on
    /// vpcd's port, which this checks before returning.
    pub fn start_socket_activated() -> Result<Self> {
        Self::start_with(None, 1, Mode::SocketActivated)
    }

    /// The namespaces with no pcscd in them yet, as on a machine where the user starts pcscd
    /// after vccid; [`start_pcscd`](Self::start_pcscd) starts it.
    pub fn start_without_pcscd() -> Result<Self> {
        Self::start_with(None, 1, Mode::Absent)
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

    fn start_with(friendly: Option<&str>, entries: usize, mode: Mode) -> Result<Self> {
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
        if friendly.is_some() || entries > 1 {
            let debian = std::fs::read_to_string("/etc/reader.conf.d/vpcd")
                .map_err(|e| format!("/etc/reader.conf.d/vpcd: {e}"))?;
            // Entry k: vpcd's port is the number after the colon of DEVICENAME (and its
            // CHANNELID), 0x8C7B = 35963 in Debian's file; each entry takes two ports.
            let conf: String = (0..entries)
                .map(|k| {
                    let port = 0x8C7B + 2 * k;
                    debian
                        .lines()
                        .map(|l| match (l.split_whitespace().next(), friendly) {
                            (Some("FRIENDLYNAME"), Some(name)) => {
                                format!("FRIENDLYNAME \"{name}\"\n")
                            }
                            // pcscd names readers by FRIENDLYNAME: entries sharing one would
                            // give readers of the same name, which PC/SC cannot tell apart.
                            (Some("FRIENDLYNAME"), None) if k > 0 => {
                                format!("FRIENDLYNAME \"Virtual PCD {k}\"\n")
                            }
                            (Some("DEVICENAME"), _) => {
                                format!("DEVICENAME /dev/null:0x{port:04X}\n")
                            }
                            (Some("CHANNELID"), _) => format!("CHANNELID 0x{port:04X}\n"),
                            // vpcd keeps its slots in one static table per loaded library,
                            // indexed by slot number only (ifd-vpcd.c, `ctx[Lun & 0xffff]`):
                            // a second entry on the same library would take over the first
                            // one's slots. A copy of the library (another inode, so dlopen
                            // loads it again) gives entry k its own table.
                            (Some("LIBPATH"), _) if k > 0 => {
                                format!("LIBPATH {}\n", lib_copy(&dir, l, k))
                            }
                            _ => format!("{l}\n"),
                        })
                        .collect::<String>()
                        + "\n"
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

    /// The network namespace of this instance (`/proc/PID/ns/net` of the namespace holder), for
    /// `setns(2)` or `nsenter --net=`.
    pub fn netns_path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/proc/{}/ns/net", self.holder.id()))
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

/// For vpcd reader.conf entry `k`: a copy of the library named by the `LIBPATH` line `line`
/// in the scratch directory `dir`, and its path (the original's when the copy fails, which
/// the entry then shares, and the test sees the readers collide).
fn lib_copy(dir: &tempfile::TempDir, line: &str, k: usize) -> String {
    let original = line.split_whitespace().nth(1).unwrap_or_default();
    let copy = dir.path().join(format!("libifdvpcd-{k}.so"));
    match std::fs::copy(original, &copy) {
        Ok(_) => copy.display().to_string(),
        Err(e) => {
            eprintln!("cannot copy {original} for vpcd entry {k}: {e}");
            original.to_string()
        }
    }
}
