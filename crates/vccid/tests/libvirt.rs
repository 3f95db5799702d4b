//! libvirt (issue #16): a real libvirtd of the test's own (`testkit::PrivateLibvirtd`) boots
//! the test guest (`tests/guest/`) from a domain whose reader is the XML `vccid ctl
//! libvirt-xml` prints. QEMU runs as libvirt's own user and reaches vccid's socket through the
//! socket's group. The guest's OpenSC signs; vccid stopped and started again is survived
//! through the redirdev's `<reconnect>`, the guest signing again; `virsh detach-device` and
//! `attach-device` at run time are the reader leaving and arriving in the guest.
//!
//! In that order: libvirt 9.0 hot-plugs the redirdev's chardev with `"reconnect": 0` in its
//! `chardev-add` whatever the XML says (seen in its monitor log), so a redirdev attached at
//! run time does not reconnect after a vccid restart; one in the domain's definition does.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testkit::PrivateLibvirtd;

const VCCID: &str = env!("CARGO_BIN_EXE_vccid");
const DOMAIN: &str = "vccid-test";

/// A gid for the test's "vccid-readers" group, unused on this host (the group lives only in the
/// private libvirtd's /etc/group, with libvirt-qemu as a member).
fn free_gid() -> u32 {
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let used: Vec<u32> = groups
        .lines()
        .filter_map(|l| l.split(':').nth(2)?.parse().ok())
        .collect();
    (64100..65000).find(|g| !used.contains(g)).unwrap()
}

/// `vccid serve` with the configuration, waiting for its ready line.
fn serve(config: &Path) -> Child {
    let mut v = Command::new(VCCID)
        .args(["serve", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("vccid serve starts");
    let mut lines = BufReader::new(v.stdout.take().unwrap()).lines();
    let ready = lines.next().and_then(|l| l.ok()).unwrap_or_default();
    assert!(ready.starts_with("vccid: ready"), "vccid serve: {ready:?}");
    v
}

fn domain_xml(img: &Path, serial: &Path, device: &str) -> String {
    format!(
        "<domain type='qemu'>
  <name>{DOMAIN}</name>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 loglevel=4 panic=-1 8250.nr_uarts=1 e2e.libvirt=1</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' index='0' model='qemu-xhci'/>
    <serial type='file'>
      <source path='{serial}'/>
      <target port='0'/>
    </serial>
{device}
    <memballoon model='none'/>
  </devices>
</domain>
",
        kernel = img.join("kernel").display(),
        initrd = img.join("initramfs.cpio").display(),
        serial = serial.display(),
    )
}

fn uid_of(pid: u32) -> u32 {
    std::fs::metadata(format!("/proc/{pid}"))
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

#[test]
fn a_libvirt_guest_uses_the_reader_across_hotplug_and_a_vccid_restart() {
    let img = testkit::guest::image();
    let gid = free_gid();
    let lv = PrivateLibvirtd::start(&[("vccid-readers", gid)]).expect("a private libvirtd starts");

    // Everything QEMU (user libvirt-qemu) opens must be reachable: the directory 0755, the
    // serial log writable, vccid's socket 0660 in the group QEMU's user is in.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let serial = d.join("serial.log");
    std::fs::write(&serial, b"").unwrap();
    std::fs::set_permissions(&serial, std::fs::Permissions::from_mode(0o666)).unwrap();
    let sock = d.join("guest1.sock");
    let control = d.join("control.sock");
    let config = d.join("vccid.toml");
    std::fs::write(
        &config,
        format!(
            "[service]\nstate_dir = \"{state}\"\ncontrol = \"{control}\"\n\n\
             [[card]]\nid = \"guest1-card\"\nkeys = \"default\"\n\n\
             [[reader]]\nid = \"guest1\"\ntransport = \"usbredir\"\n\
             address = \"unix:{sock}\"\nmode = \"0660\"\ngroup = \"{gid}\"\n\
             cards = [\"guest1-card\"]\n",
            state = d.join("state").display(),
            control = control.display(),
            sock = sock.display(),
        ),
    )
    .unwrap();
    let mut vccid = serve(&config);
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(
        (meta.mode() & 0o777, meta.gid()),
        (0o660, gid),
        "the reader's socket"
    );

    // The reader's libvirt device, as a user gets it.
    let out = testkit::run(
        Command::new(VCCID)
            .args(["ctl", "--socket"])
            .arg(&control)
            .args(["libvirt-xml", "guest1"]),
    )
    .unwrap();
    let device = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        device.contains("<redirdev bus='usb' type='unix'>")
            && device.contains(&format!("path='{}'", sock.display()))
            && device.contains("<reconnect enabled='yes'"),
        "{device}"
    );
    let device_file = d.join("guest1-redirdev.xml");
    std::fs::write(&device_file, &device).unwrap();
    let domain_file = d.join("domain.xml");
    std::fs::write(&domain_file, domain_xml(img, &serial, &device)).unwrap();

    lv.virsh(&["define", &domain_file.to_string_lossy()])
        .unwrap();
    lv.virsh(&["start", DOMAIN])
        .unwrap_or_else(|e| panic!("{e}\n{}", lv.log()));
    let qemu_uid = uid_of(lv.qemu_pid(DOMAIN).unwrap());

    let dev = device_file.to_string_lossy().into_owned();
    let mut seen = 0;
    let mut steps = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let log = std::fs::read(&serial).unwrap_or_default();
        let waits = testkit::guest::waits(&log);
        for w in &waits[seen..] {
            let t = Instant::now();
            match w.as_str() {
                "detach" => {
                    lv.virsh(&["detach-device", DOMAIN, &dev, "--live"])
                        .unwrap();
                }
                "attach" => {
                    lv.virsh(&["attach-device", DOMAIN, &dev, "--live"])
                        .unwrap();
                }
                "stop-vccid" => {
                    testkit::terminate(&mut vccid, Duration::from_secs(10), "vccid").unwrap();
                }
                "start-vccid" => vccid = serve(&config),
                other => panic!("unknown step {other}"),
            }
            steps.push(format!("{w} ({:?})", t.elapsed()));
        }
        seen = waits.len();
        let text = String::from_utf8_lossy(&log);
        let running = lv
            .virsh(&["domstate", DOMAIN])
            .map(|s| s.contains("running"))
            .unwrap_or(false);
        if text.contains("E2E-DONE") || !running || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    testkit::terminate(&mut vccid, Duration::from_secs(10), "vccid").unwrap();
    let g = testkit::guest::parse(&std::fs::read(&serial).unwrap());
    println!("host steps: {steps:?}");
    println!("{}", g.serial);
    let ctx = || format!("{}\n--- libvirt:\n{}", g.serial, lv.log());
    assert!(
        g.serial.contains("E2E-DONE"),
        "the guest did not finish:\n{}",
        ctx()
    );
    // QEMU ran as libvirt's user, not root: the socket's group let it in.
    assert_ne!(qemu_uid, 0, "QEMU ran as root");
    assert_eq!(
        g.get("card_driver"),
        "\"Common Access Card (CAC)\"",
        "{}",
        ctx()
    );
    assert_eq!(g.get("sign"), "1", "{}", ctx());
    // In the guest's order: the restart through <reconnect>, then the hot-unplug and plug.
    for (k, want) in [
        ("stop-vccid_seen", "1"),
        ("start-vccid_seen", "1"),
        ("sign_after_start-vccid", "1"),
        ("detach_seen", "1"),
        ("attach_seen", "1"),
        ("sign_after_attach", "1"),
    ] {
        let got = g.get(k);
        assert!(
            got.split_whitespace().next() == Some(want),
            "{k}: {got:?}\n{}",
            ctx()
        );
    }
    // Both signatures (before the restart, and after it) verify with the card's certificate.
    let cert: PathBuf = d.join("state/default/cert1.crt.pem");
    let check = tempfile::tempdir().unwrap();
    let data = check.path().join("data");
    std::fs::write(&data, &g.blobs["data"]).unwrap();
    for sig in ["sig", "sig_start-vccid"] {
        let f = check.path().join(sig);
        std::fs::write(&f, &g.blobs[sig]).unwrap();
        testkit::verify_sha256(&cert, &data, &f).unwrap_or_else(|e| panic!("{sig}: {e}"));
    }
}
