//! A libvirtd of the test's own (issue #16): Debian 12's monolithic `libvirtd` in a private
//! mount namespace, with its own configuration, sockets and state, never a system-wide
//! instance. virsh reaches it through `qemu:///system?socket=PATH`.
//!
//! Inside the namespace (nothing of it is seen outside):
//! - /run and /etc/libvirt are tmpfs, holding this instance's pidfiles and configuration (no
//!   D-Bus, so no machined, polkit or firewalld calls);
//! - /etc/passwd and /etc/group are private copies with libvirt's QEMU user (`libvirt-qemu`,
//!   which libvirt 9.0 resolves before it reads qemu.conf, and which libvirt-daemon-system
//!   would create) and the groups the test asks for, with that user as a member: QEMU runs as
//!   `libvirt-qemu` and reaches a socket through its group, as on a real host;
//! - /var is a copy-on-write overlay (libvirt's /var/lib, /var/cache, /var/log directories);
//! - /dev/kvm is hidden: the guests are `type='qemu'` (TCG), and with /dev/kvm visible libvirt
//!   probes QEMU again at every start (seconds).
//!
//! qemu.conf: `cgroup_controllers = [ ]` (cgroupfs is not private: libvirt would make
//! `machine` cgroups on the host), `stdio_handler = "file"` (no virtlogd), no security driver
//! and no relabelling of the host's files.

use crate::{output, which, Result, TOOL_TIMEOUT};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// libvirt's QEMU user on Debian.
pub const QEMU_USER: &str = "libvirt-qemu";

/// A private libvirtd; destroys its domains and stops on drop.
pub struct PrivateLibvirtd {
    child: Child,
    /// Configuration, sockets, logs (`libvirtd.log`, `var/log/libvirt/qemu/DOM.log`).
    pub dir: tempfile::TempDir,
    sock: PathBuf,
}

/// The namespace's set-up, then libvirtd. $1: the directory; $2: lines for /etc/group.
const SETUP: &str = r#"
set -e
D=$1
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/libvirt /run/lock
mount -t tmpfs -o mode=755 tmpfs /etc/libvirt
cp "$D/conf/libvirtd.conf" "$D/conf/qemu.conf" /etc/libvirt/
cp /etc/passwd "$D/passwd"; cp /etc/group "$D/group"
getent passwd libvirt-qemu >/dev/null ||
  echo 'libvirt-qemu:x:64055:64055:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin' >>"$D/passwd"
getent group libvirt-qemu >/dev/null || echo 'libvirt-qemu:x:64055:' >>"$D/group"
printf '%s' "$2" >>"$D/group"
mount --bind "$D/passwd" /etc/passwd
mount --bind "$D/group" /etc/group
mkdir -p "$D/var-upper" "$D/var-work"
mount -t overlay overlay -o "lowerdir=/var,upperdir=$D/var-upper,workdir=$D/var-work" /var
mkdir -p /var/lib/libvirt /var/cache/libvirt /var/log/libvirt
if [ -e /dev/kvm ]; then
  mkdir -p "$D/dev-upper" "$D/dev-work" "$D/dev"
  mknod "$D/dev-upper/kvm" c 0 0
  mount -t overlay overlay -o "lowerdir=/dev,upperdir=$D/dev-upper,workdir=$D/dev-work" "$D/dev"
  for m in $(awk '$2 ~ "^/dev/" {print $2}' /proc/self/mounts); do mount --move "$m" "$D$m"; done
  mount --move "$D/dev" /dev
fi
exec libvirtd --config /etc/libvirt/libvirtd.conf --pid-file /run/libvirt/libvirtd.pid
"#;

impl PrivateLibvirtd {
    /// Starts libvirtd and waits until virsh answers (60 s at most). `groups` are extra groups
    /// (name, gid) of the private /etc/group, each with [`QEMU_USER`] as a member.
    pub fn start(groups: &[(&str, u32)]) -> Result<PrivateLibvirtd> {
        which("libvirtd")?;
        which("virsh")?;
        let dir = tempfile::Builder::new()
            .prefix("vccid-libvirt-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let d = dir.path();
        let sock_dir = d.join("sock");
        std::fs::create_dir_all(d.join("conf")).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&sock_dir).map_err(|e| e.to_string())?;
        let libvirtd_conf = format!(
            "unix_sock_dir = \"{}\"\nunix_sock_ro_perms = \"0700\"\nunix_sock_rw_perms = \"0700\"\n\
             unix_sock_admin_perms = \"0700\"\nauth_unix_ro = \"none\"\nauth_unix_rw = \"none\"\n\
             log_outputs = \"3:stderr\"\n",
            sock_dir.display()
        );
        let qemu_conf = format!(
            "user = \"{QEMU_USER}\"\ngroup = \"{QEMU_USER}\"\ndynamic_ownership = 0\n\
             remember_owner = 0\nsecurity_driver = \"none\"\ncgroup_controllers = [ ]\n\
             stdio_handler = \"file\"\n"
        );
        let write = |f: &str, t: &str| std::fs::write(d.join("conf").join(f), t);
        write("libvirtd.conf", &libvirtd_conf).map_err(|e| e.to_string())?;
        write("qemu.conf", &qemu_conf).map_err(|e| e.to_string())?;
        let group_lines: String = groups
            .iter()
            .map(|(name, gid)| format!("{name}:x:{gid}:{QEMU_USER}\n"))
            .collect();
        let log = std::fs::File::create(d.join("libvirtd.log")).map_err(|e| e.to_string())?;
        let child = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "bash",
                "-c",
                SETUP,
            ])
            .arg("libvirt-setup")
            .arg(d)
            .arg(group_lines)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start libvirtd: {e}"))?;
        let mut l = PrivateLibvirtd {
            child,
            sock: sock_dir.join("libvirt-sock"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(st)) = l.child.try_wait() {
                return Err(format!("libvirtd exited ({st}):\n{}", l.log()));
            }
            if l.sock.exists() && l.virsh(&["version"]).is_ok() {
                return Ok(l);
            }
            if Instant::now() > deadline {
                return Err(format!("libvirtd did not answer in 60 s:\n{}", l.log()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The URI virsh and other clients use.
    pub fn uri(&self) -> String {
        format!("qemu:///system?socket={}", self.sock.display())
    }

    /// Runs virsh with `args` against this instance; its standard output, or an error with
    /// both outputs.
    pub fn virsh(&self, args: &[&str]) -> Result<String> {
        let what = format!("virsh {}", args.join(" "));
        let out = output(
            Command::new("virsh")
                .args(["-q", "-c", &self.uri()])
                .args(args),
            TOOL_TIMEOUT,
            &what,
        )?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!("{what}: {}", crate::text(&out)))
        }
    }

    /// The pid of a running domain's QEMU (its pidfile, read inside the namespace).
    pub fn qemu_pid(&self, domain: &str) -> Result<u32> {
        let out = output(
            Command::new("nsenter")
                .arg("-t")
                .arg(self.child.id().to_string())
                .args(["-m", "cat"])
                .arg(format!("/run/libvirt/qemu/{domain}.pid")),
            TOOL_TIMEOUT,
            "QEMU's pidfile",
        )?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| format!("no pid for {domain}: {}", crate::text(&out)))
    }

    /// libvirtd's log, and each domain's QEMU log.
    pub fn log(&self) -> String {
        let d = self.dir.path();
        let mut s = std::fs::read_to_string(d.join("libvirtd.log")).unwrap_or_default();
        let qemu_logs = d.join("var-upper/log/libvirt/qemu");
        for e in std::fs::read_dir(&qemu_logs)
            .into_iter()
            .flatten()
            .flatten()
        {
            s += &format!("\n--- {}\n", e.path().display());
            s += &std::fs::read_to_string(e.path()).unwrap_or_default();
        }
        s
    }

    /// The directory of this instance's files.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PrivateLibvirtd {
    fn drop(&mut self) {
        // libvirtd leaves its guests running when it stops: destroy them first.
        if let Ok(names) = self.virsh(&["list", "--name"]) {
            for n in names.lines().map(str::trim).filter(|n| !n.is_empty()) {
                let _ = self.virsh(&["destroy", n]);
            }
        }
        let _ = crate::terminate(&mut self.child, Duration::from_secs(10), "libvirtd");
    }
}
