//! The Debian package (issue #16): `scripts/deb.sh` builds it; lintian finds no error and no
//! warning that `debian/lintian-overrides` does not justify; the units are hardened
//! (`systemd-analyze security` exposure ≤ 2.0); and on a fresh Debian 12 root booted with
//! systemd as PID 1 it installs with its dependencies, its man pages and completion work,
//! vccid.service serves the packaged configuration, a member of group vccid uses `vccid ctl`,
//! and purge leaves nothing (`tests/package/fresh-install.sh`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use testkit::{run, text};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The package, built once per test run by the script the README gives.
fn deb() -> &'static PathBuf {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        let out = run(Command::new("bash")
            .arg(root().join("scripts/deb.sh"))
            .current_dir(root()))
        .expect("scripts/deb.sh builds the package");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let path = stdout.lines().last().expect("deb.sh prints the package");
        let p = root().join(path.trim());
        assert!(
            p.is_file(),
            "{} is not a file:\n{}",
            p.display(),
            text(&out)
        );
        p
    })
}

/// The package unpacked (dpkg-deb -x) into a directory of its own.
fn unpacked() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb").arg("-x").arg(deb()).arg(d.path())).unwrap();
    d
}

fn field(deb: &Path, name: &str) -> String {
    let out = run(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name)).unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn lintian_finds_no_error_and_no_unjustified_warning() {
    let out = Command::new("lintian")
        .args(["--fail-on", "none", "--no-tag-display-limit"])
        .arg(deb())
        .output()
        .expect("lintian runs");
    let report = text(&out);
    // Errors and warnings; I: and N: lines are informational. The overrides file (shipped in
    // the package, each with its reason) is applied by lintian itself.
    let bad: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: "))
        .collect();
    assert!(bad.is_empty(), "lintian:\n{report}");
    println!("lintian: {} lines, no E: or W:", report.lines().count());
}

#[test]
fn the_package_says_what_it_needs_and_what_it_holds() {
    let deb = deb();
    assert!(
        deb.file_name().unwrap().to_string_lossy()
            == format!("vccid_{}-1_amd64.deb", env!("CARGO_PKG_VERSION")),
        "{}",
        deb.display()
    );
    // dpkg-shlibdeps found the C library (not listed by hand).
    let depends = field(deb, "Depends");
    assert!(depends.contains("libc6 (>="), "Depends: {depends}");
    let recommends = field(deb, "Recommends");
    for p in ["pcscd", "vsmartcard-vpcd", "opensc"] {
        assert!(recommends.contains(p), "Recommends: {recommends}");
    }
    let d = unpacked();
    for f in [
        "usr/bin/vccid",
        "usr/bin/vscclient",
        "etc/vccid/vccid.toml",
        "usr/lib/systemd/system/vccid.service",
        "usr/lib/systemd/system/vccid-vscclient@.service",
        "usr/lib/sysusers.d/vccid.conf",
        "usr/share/man/man1/vccid.1.gz",
        "usr/share/man/man1/vccid-serve.1.gz",
        "usr/share/man/man1/vccid-ctl.1.gz",
        "usr/share/man/man1/vscclient.1.gz",
        "usr/share/man/man5/vccid.toml.5.gz",
        "usr/share/bash-completion/completions/vccid",
        "usr/share/zsh/vendor-completions/_vccid",
        "usr/share/fish/vendor_completions.d/vccid.fish",
        "usr/share/doc/vccid/copyright",
        "usr/share/doc/vccid/changelog.gz",
    ] {
        assert!(d.path().join(f).exists(), "{f} is not in the package");
    }
    // The packaged configuration is the embedded default (the same cards and readers), with
    // the control socket opened to group vccid.
    let packaged = vccid::config::Config::load(&d.path().join("etc/vccid/vccid.toml")).unwrap();
    let embedded = vccid::service::embedded_default();
    let ids = |c: &vccid::config::Config| {
        (
            c.cards
                .iter()
                .map(|k| (k.id.get_ref().clone(), k.keys.clone()))
                .collect::<Vec<_>>(),
            c.readers
                .iter()
                .map(|r| (r.id.get_ref().clone(), r.transport, r.cards.clone()))
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(ids(&packaged), ids(&embedded));
    assert_eq!(packaged.service.control_group.as_deref(), Some("vccid"));
    assert_eq!(packaged.service.control_mode.as_deref(), Some("0660"));
    // The installed binary names its version and commit.
    let v = run(Command::new(d.path().join("usr/bin/vccid")).arg("--version")).unwrap();
    let v = String::from_utf8_lossy(&v.stdout).to_string();
    assert!(
        v.starts_with(&format!("vccid {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
}

#[test]
fn the_changelogs_name_this_version() {
    let version = env!("CARGO_PKG_VERSION");
    let debian =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("debian/changelog"))
            .unwrap();
    assert!(
        debian.starts_with(&format!("vccid ({version}-1) ")),
        "debian/changelog's first entry is not {version}-1"
    );
    let changelog = std::fs::read_to_string(root().join("CHANGELOG.md")).unwrap();
    assert!(
        changelog.contains(&format!("## [{version}] - ")),
        "CHANGELOG.md has no section for {version}"
    );
}

/// `systemd-analyze security --offline` of a unit of the package: its exposure level.
fn exposure(root: &Path, unit: &str) -> f64 {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(format!("--root={}", root.display()))
        .arg(root.join("usr/lib/systemd/system").join(unit))
        .output()
        .expect("systemd-analyze runs");
    let t = text(&out);
    let line = t
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level:\n{t}"));
    println!("{unit}: {}", line.trim());
    line.split(": ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"))
}

#[test]
fn the_units_are_hardened() {
    let d = unpacked();
    let service = exposure(d.path(), "vccid.service");
    assert!(service <= 2.0, "vccid.service exposure {service}");
    let client = exposure(d.path(), "vccid-vscclient@.service");
    assert!(client <= 2.0, "vccid-vscclient@.service exposure {client}");
    let unit =
        std::fs::read_to_string(d.path().join("usr/lib/systemd/system/vccid.service")).unwrap();
    for line in [
        "Type=notify",
        "User=vccid",
        "ExecReload=",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
    ] {
        assert!(unit.contains(line), "vccid.service has no {line:?}");
    }
}

/// The RESULT lines of fresh-install.sh.
fn results(out: &str) -> HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn installs_runs_and_purges_on_a_fresh_debian_12_root() {
    let work = tempfile::Builder::new()
        .prefix("vccid-pkg-")
        .tempdir_in("/var/tmp")
        .unwrap();
    // The debootstrap'd root is kept between runs of this machine (unpacked afresh each time).
    let cache = root().join("target/package-test");
    let out = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/package/fresh-install.sh"))
        .arg(deb())
        .arg(work.path())
        .arg(&cache)
        .output()
        .expect("fresh-install.sh runs");
    let log = text(&out);
    assert!(out.status.success() && log.contains("DONE"), "{log}");
    let r = results(&String::from_utf8_lossy(&out.stdout));
    let get = |k: &str| r.get(k).cloned().unwrap_or_default();
    println!("{}", String::from_utf8_lossy(&out.stdout));
    // apt pulled the dependencies and the recommended peers.
    for p in [
        "vccid",
        "pcscd",
        "vsmartcard-vpcd",
        "opensc",
        "libpcsclite1",
    ] {
        assert_eq!(get(&format!("installed_{p}")), "yes", "{p}:\n{log}");
    }
    assert_eq!(get("conffile"), "/etc/vccid/vccid.toml", "{log}");
    for m in ["man_vccid", "man_vccid_toml", "man_serve"] {
        assert_ne!(get(m), "0", "{m} did not render:\n{log}");
        assert_ne!(get(m), "", "{m}:\n{log}");
    }
    let completion = get("complete_ctl_card");
    for w in ["add", "insert", "eject", "remove"] {
        assert!(
            completion.split(' ').any(|c| c == w),
            "bash completion of `vccid ctl card `: {completion:?}"
        );
    }
    assert_eq!(get("verify"), "clean", "systemd-analyze verify:\n{log}");
    // systemd as PID 1 started the service with the packaged configuration.
    assert!(
        matches!(get("system").as_str(), "running" | "degraded"),
        "{log}"
    );
    assert!(
        !get("failed_units").contains("vccid"),
        "failed: {}",
        get("failed_units")
    );
    assert_eq!(get("active"), "active", "{log}");
    assert_eq!(get("enabled"), "enabled", "{log}");
    assert_eq!(get("main_user"), "vccid", "{log}");
    assert_eq!(get("socket"), "660 vccid", "{log}");
    assert_eq!(get("state_dir"), "700 vccid", "{log}");
    let security = get("security");
    let level: f64 = security
        .split(": ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{security}"));
    assert!(level <= 2.0, "{security}");
    // A member of group vccid reaches the control socket without options; others do not.
    let alice = get("ctl_alice");
    assert!(alice.contains("vpcd0"), "alice (group vccid): {alice}");
    let bob = get("ctl_bob");
    assert!(
        bob.contains("only members of group vccid may use it"),
        "bob: {bob}"
    );
    assert!(
        get("version").starts_with(&format!("vccid {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{}",
        get("version")
    );
    // The packaged configuration's card, seen by the root's own pcscd through vpcd.
    assert!(
        get("pcsc").contains("CAC"),
        "opensc-tool --name: {}",
        get("pcsc")
    );
    assert_eq!(get("reload"), "active", "{log}");
    assert_eq!(get("reload_bad"), "refused active", "{log}");
    let key_files: usize = get("key_files").parse().unwrap_or(0);
    assert!(
        key_files >= 4,
        "the default card's files: {key_files}\n{log}"
    );
    assert_eq!(get("keys_kept"), "yes", "{log}");
    // A guest's reader: its socket in the readers' group, which the service's user is in.
    assert_eq!(get("guest_socket"), "660 vccid-readers", "{log}");
    assert!(
        get("vccid_groups").split(' ').any(|g| g == "vccid-readers"),
        "{}",
        get("vccid_groups")
    );
    let xml = get("libvirt_xml");
    assert!(
        xml.contains("<redirdev bus='usb' type='unix'>")
            && xml.contains("path='/run/vccid/readers/guest1.sock'"),
        "{xml}"
    );
    assert_eq!(get("reload_group"), "refused kept", "{log}");
    assert_eq!(get("reload_after"), "ok", "{log}");
    assert_eq!(get("journal_errors"), "", "{log}");
    // vscclient as the template unit's instance, its card in the service's passthru card,
    // seen by pcscd in the second vpcd reader.
    assert_eq!(get("vscclient_active"), "active", "{log}");
    assert!(
        get("vscclient_card").contains("CAC"),
        "the vscclient card: {}\n{log}",
        get("vscclient_card")
    );
    let security = get("vscclient_security");
    assert!(security.contains("exposure level"), "{security}");
    // Purge: nothing of the package left, the service and the client gone.
    let status = get("purged_status");
    assert!(
        status == "not-installed" || status.contains("no packages found"),
        "dpkg after purge: {status}"
    );
    assert_ne!(get("purged_active"), "active", "{log}");
    assert_ne!(get("purged_vscclient"), "active", "{log}");
    assert_eq!(
        get("purged_left"),
        "",
        "left behind: {}",
        get("purged_left")
    );
}
