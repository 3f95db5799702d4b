//! The QEMU and libvirt lines vccid prints, checked by their consumers: the libvirt XML by
//! libvirt's own schema (`virt-xml-validate`, Debian package libvirt-clients), the QEMU
//! arguments by the installed QEMU, started with exactly those arguments, which must attach
//! the reader. The reconnect syntax follows `qemu-system-x86_64 --version` (also a fake one on
//! PATH, and none at all).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testkit::CommandExt;
use testkit::{free_port, wait_for, which, Qemu};

const VCCID: &str = env!("CARGO_BIN_EXE_vccid");

/// A running vccid whose standard output is collected as it comes.
struct Vccid {
    child: Child,
    out: Arc<Mutex<String>>,
    dir: tempfile::TempDir,
}

impl Vccid {
    /// Starts vccid with `args` (and a fresh data directory); with `path`, as PATH.
    fn start(args: &[&str], path: Option<&Path>) -> Vccid {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let mut cmd = Command::new(VCCID);
        cmd.arg("--data-dir")
            .arg(&data)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("vccid.log")).unwrap());
        if let Some(p) = path {
            cmd.env("PATH", p);
        }
        let mut child = cmd.spawn().unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        let mut stdout = child.stdout.take().unwrap();
        let sink = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Vccid { child, out, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("vccid.log")).unwrap_or_default()
    }

    /// Everything vccid printed, once the libvirt lines are complete.
    fn printed(&self) -> String {
        wait_for("vccid's printed lines", Duration::from_secs(30), || {
            self.out.lock().unwrap().contains("</redirdev>")
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e}\nstdout:\n{}\nlog:\n{}",
                self.out.lock().unwrap(),
                self.log()
            )
        });
        self.out.lock().unwrap().clone()
    }
}

impl Drop for Vccid {
    fn drop(&mut self) {
        let _ = testkit::kill(&mut self.child, "vccid");
    }
}

/// The QEMU arguments of the `QEMU:` line.
fn qemu_args(printed: &str) -> Vec<String> {
    let line = printed
        .lines()
        .find_map(|l| l.strip_prefix("QEMU:"))
        .unwrap_or_else(|| panic!("no QEMU: line in\n{printed}"));
    line.split_whitespace().map(str::to_string).collect()
}

/// The libvirt elements: the lines after the `libvirt` heading, up to `</redirdev>`.
fn libvirt_elements(printed: &str) -> String {
    let mut lines = printed
        .lines()
        .skip_while(|l| !l.starts_with("libvirt"))
        .skip(1);
    let mut xml = Vec::new();
    for l in lines.by_ref() {
        assert!(l.trim_start().starts_with('<'), "not XML: {l:?}\n{printed}");
        xml.push(l);
        if l.contains("</redirdev>") {
            break;
        }
    }
    assert!(!xml.is_empty(), "no libvirt lines in\n{printed}");
    xml.join("\n")
}

/// Checks `devices` in a minimal domain with libvirt's `virt-xml-validate FILE domain`.
fn validate_domain(devices: &str) {
    which("virt-xml-validate").expect("virt-xml-validate (apt-get install libvirt-clients)");
    which("xmllint")
        .expect("xmllint, which virt-xml-validate runs (apt-get install libxml2-utils)");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("domain.xml");
    let xml = format!(
        "<domain type='qemu'><name>t</name><memory>65536</memory>\
         <os><type arch='x86_64'>hvm</type></os><devices>\n{devices}\n</devices></domain>\n"
    );
    std::fs::write(&file, &xml).unwrap();
    let o = Command::new("virt-xml-validate")
        .arg(&file)
        .arg("domain")
        .output_within(testkit::TOOL_TIMEOUT)
        .unwrap();
    assert!(
        o.status.success(),
        "virt-xml-validate refused:\n{xml}\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The reconnect option the installed QEMU takes (7.2 on Debian 12: `reconnect=2`).
fn installed_reconnect() -> &'static str {
    let o = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output_within(testkit::TOOL_TIMEOUT)
        .expect("qemu-system-x86_64 is installed");
    let v = vccid::qemu::parse_version(&String::from_utf8_lossy(&o.stdout));
    assert!(v.is_some(), "{o:?}");
    vccid::qemu::Reconnect::for_version(v).option()
}

fn info_usb(q: &Qemu) -> String {
    let mut out = String::new();
    let _ = wait_for("the device in info usb", Duration::from_secs(20), || {
        out = q.qmp_hmp("info usb").unwrap_or_default();
        out.contains("USB Redirection Device")
    });
    out
}

/// Starts QEMU with exactly the printed arguments and checks that the reader attaches.
fn qemu_attaches(v: &Vccid, printed: &str) {
    let args = qemu_args(printed);
    let q = Qemu::start(&args).unwrap_or_else(|e| panic!("{e}\nargs: {args:?}"));
    wait_for("vccid to see QEMU", Duration::from_secs(30), || {
        v.log().contains("usbredir: QEMU connected")
    })
    .unwrap_or_else(|e| panic!("{e}\nQEMU: {}\nvccid: {}", q.stderr(), v.log()));
    let usb = info_usb(&q);
    assert!(
        usb.contains("Product USB Redirection Device, ID: vccid0"),
        "{usb}\nQEMU: {}\nvccid: {}",
        q.stderr(),
        v.log()
    );
}

#[test]
fn tcp_lines_validate_in_libvirt_and_attach_in_qemu() {
    let port = free_port().unwrap();
    let v = Vccid::start(&["--usbredir", &format!("127.0.0.1:{port}")], None);
    let printed = v.printed();
    let reconnect = installed_reconnect();
    assert!(
        printed.contains(&format!(
            "-device qemu-xhci,id=xhci -chardev socket,id=vccid0,host=127.0.0.1,port={port},\
             {reconnect},nodelay=on -device usb-redir,chardev=vccid0,bus=xhci.0"
        )),
        "{printed}"
    );
    let xml = libvirt_elements(&printed);
    assert!(
        xml.contains("<controller type='usb' index='0' model='qemu-xhci'/>")
            && xml.contains("<redirdev bus='usb' type='tcp'>")
            && xml.contains(&format!(
                "<source mode='connect' host='127.0.0.1' service='{port}'>"
            ))
            && xml.contains("<reconnect enabled='yes' timeout='2'/>"),
        "{xml}"
    );
    validate_domain(&xml);
    qemu_attaches(&v, &printed);
}

#[test]
fn unix_lines_validate_in_libvirt_and_attach_in_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("usb.sock");
    let v = Vccid::start(&["--usbredir", &format!("unix:{}", sock.display())], None);
    let printed = v.printed();
    assert!(
        printed.contains(&format!(
            "-chardev socket,id=vccid0,path={},{} ",
            sock.display(),
            installed_reconnect()
        )),
        "{printed}"
    );
    let xml = libvirt_elements(&printed);
    assert!(
        xml.contains("<redirdev bus='usb' type='unix'>")
            && xml.contains(&format!(
                "<source mode='connect' path='{}'>",
                sock.display()
            ))
            && xml.contains("<reconnect enabled='yes' timeout='2'/>"),
        "{xml}"
    );
    validate_domain(&xml);
    qemu_attaches(&v, &printed);
}

#[test]
fn a_wildcard_listen_address_is_printed_as_loopback() {
    let port = free_port().unwrap();
    let v = Vccid::start(
        &[
            "--usbredir",
            &format!("0.0.0.0:{port}"),
            "--insecure-plaintext",
        ],
        None,
    );
    let printed = v.printed();
    assert!(
        !printed.contains("0.0.0.0,") && !printed.contains("'0.0.0.0'"),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("host=127.0.0.1,port={port},")),
        "{printed}"
    );
    assert!(
        printed.contains("other machines use this host's address"),
        "{printed}"
    );
    validate_domain(&libvirt_elements(&printed));
    qemu_attaches(&v, &printed);
}

/// A directory for PATH holding a fake `qemu-system-x86_64` that prints `version`.
fn fake_qemu(dir: &Path, version: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let f = bin.join("qemu-system-x86_64");
    std::fs::write(
        &f,
        format!("#!/bin/sh\necho 'QEMU emulator version {version} (fake)'\n"),
    )
    .unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

#[test]
fn the_reconnect_syntax_follows_the_qemu_on_path() {
    let dir = tempfile::tempdir().unwrap();
    for (version, want, not) in [
        ("9.2.0", "reconnect-ms=2000", "reconnect=2"),
        ("7.2.0", "reconnect=2", "reconnect-ms"),
    ] {
        let d = dir.path().join(version);
        let port = free_port().unwrap();
        let v = Vccid::start(
            &["--usbredir", &format!("127.0.0.1:{port}")],
            Some(&fake_qemu(&d, version)),
        );
        let printed = v.printed();
        let args = qemu_args(&printed).join(" ");
        assert!(
            args.contains(&format!("port={port},{want},nodelay=on")),
            "{printed}"
        );
        assert!(!args.contains(not), "{printed}");
        assert!(
            printed.contains(&format!("For QEMU {version}")),
            "{printed}"
        );
    }
    // No QEMU at all: the current syntax, and a line saying so.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let v = Vccid::start(
        &["--usbredir", &format!("127.0.0.1:{}", free_port().unwrap())],
        Some(&empty),
    );
    let printed = v.printed();
    assert!(
        qemu_args(&printed)
            .join(" ")
            .contains(",reconnect-ms=2000,"),
        "{printed}"
    );
    assert!(printed.contains("No qemu-system-x86_64 found"), "{printed}");
}
