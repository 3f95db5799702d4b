//! The QEMU that is installed, for the command lines vccid prints: a client socket chardev
//! says "reconnect after 2 s" as `reconnect=2` up to QEMU 9.1 and as `reconnect-ms=2000` from
//! QEMU 9.2, which deprecates `reconnect` (QEMU docs/about/deprecated.rst, "reconnect option
//! of socket chardevs"; qapi/char.json `ChardevSocket`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The program asked for its version.
pub const PROGRAM: &str = "qemu-system-x86_64";

/// A QEMU version, as `qemu-system-x86_64 --version` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    /// X of X.Y.Z.
    pub major: u32,
    /// Y.
    pub minor: u32,
    /// Z (QEMU's release candidates of X.Y are .Y'.9N, e.g. 9.1.90 for 9.2.0-rc0).
    pub micro: u32,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// The version in `--version` output: "QEMU emulator version X.Y.Z (...)" (a missing micro
/// is 0). `None` for anything else.
pub fn parse_version(text: &str) -> Option<Version> {
    let rest = text.split("QEMU emulator version ").nth(1)?;
    let word = rest.split(|c: char| c.is_whitespace() || c == '(').next()?;
    let mut parts = word.split('.');
    let mut num = |required: bool| match parts.next() {
        Some(p) => p.parse::<u32>().ok(),
        None if !required => Some(0),
        None => None,
    };
    Some(Version {
        major: num(true)?,
        minor: num(true)?,
        micro: num(false)?,
    })
}

/// How a client socket chardev asks QEMU to reconnect every 2 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconnect {
    /// `reconnect=2` (QEMU before 9.2).
    Seconds,
    /// `reconnect-ms=2000` (QEMU 9.2 and later).
    Millis,
}

impl Reconnect {
    /// The syntax for a QEMU version; with none known, the current one.
    pub fn for_version(v: Option<Version>) -> Reconnect {
        // 9.1.90 and up are 9.2's release candidates, which have reconnect-ms.
        let first = Version {
            major: 9,
            minor: 1,
            micro: 90,
        };
        match v {
            Some(v) if v < first => Reconnect::Seconds,
            _ => Reconnect::Millis,
        }
    }

    /// The chardev option.
    pub fn option(self) -> &'static str {
        match self {
            Reconnect::Seconds => "reconnect=2",
            Reconnect::Millis => "reconnect-ms=2000",
        }
    }
}

/// What vccid knows of the QEMU it prints lines for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The version `qemu-system-x86_64 --version` said, if it ran and said one.
    pub version: Option<Version>,
}

impl Installed {
    /// Asks `qemu-system-x86_64 --version` (on PATH).
    pub fn detect() -> Installed {
        let version = std::process::Command::new(PROGRAM)
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .and_then(|o| parse_version(&String::from_utf8_lossy(&o.stdout)));
        Installed { version }
    }

    /// The reconnect syntax for it.
    pub fn reconnect(&self) -> Reconnect {
        Reconnect::for_version(self.version)
    }

    /// One line saying which QEMU the lines are for.
    pub fn note(&self) -> String {
        match self.version {
            Some(v) if self.reconnect() == Reconnect::Seconds => format!(
                "For QEMU {v} ({PROGRAM} --version); QEMU 9.2 and later take reconnect-ms=2000 \
                 for reconnect=2."
            ),
            Some(v) => format!(
                "For QEMU {v} ({PROGRAM} --version); QEMU before 9.2 takes reconnect=2 for \
                 reconnect-ms=2000."
            ),
            None => format!(
                "No {PROGRAM} found: these lines are for QEMU 9.2 and later; before 9.2, write \
                 reconnect=2 for reconnect-ms=2000."
            ),
        }
    }
}

/// The address a client on this host connects to for a listener bound to `ip`: the wildcard
/// addresses 0.0.0.0 and :: accept connections but cannot be connected to (and the peer is not
/// necessarily this host anyway), so they become 127.0.0.1 and ::1. The flag says whether it
/// was replaced.
pub fn connect_ip(ip: IpAddr) -> (IpAddr, bool) {
    match ip {
        IpAddr::V4(a) if a.is_unspecified() => (IpAddr::V4(Ipv4Addr::LOCALHOST), true),
        IpAddr::V6(a) if a.is_unspecified() => (IpAddr::V6(Ipv6Addr::LOCALHOST), true),
        other => (other, false),
    }
}

/// The line that says a wildcard listen address was replaced in the printed lines.
pub fn wildcard_note(listen: IpAddr, shown: IpAddr) -> String {
    format!(
        "vccid listens on {listen} (every address): the lines connect to {shown}, this host; \
         other machines use this host's address instead."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(major: u32, minor: u32, micro: u32) -> Option<Version> {
        Some(Version {
            major,
            minor,
            micro,
        })
    }

    #[test]
    fn parses_what_qemu_prints() {
        assert_eq!(
            parse_version(
                "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n\
                 Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n"
            ),
            v(7, 2, 22)
        );
        assert_eq!(parse_version("QEMU emulator version 9.2.0\n"), v(9, 2, 0));
        assert_eq!(
            parse_version("QEMU emulator version 10.0(qemu-10.0.0-1.fc42)"),
            v(10, 0, 0)
        );
        for bad in [
            "",
            "qemu-system-x86_64: command not found",
            "QEMU emulator version ",
            "QEMU emulator version x.y",
            "QEMU emulator version 9",
            "QEMU emulator version 99999999999.1.1",
        ] {
            assert_eq!(parse_version(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn reconnect_ms_from_9_2() {
        assert_eq!(Reconnect::for_version(v(7, 2, 0)), Reconnect::Seconds);
        assert_eq!(Reconnect::for_version(v(7, 2, 22)), Reconnect::Seconds);
        assert_eq!(Reconnect::for_version(v(9, 1, 2)), Reconnect::Seconds);
        assert_eq!(Reconnect::for_version(v(9, 1, 90)), Reconnect::Millis);
        assert_eq!(Reconnect::for_version(v(9, 2, 0)), Reconnect::Millis);
        assert_eq!(Reconnect::for_version(v(10, 0, 0)), Reconnect::Millis);
        assert_eq!(Reconnect::for_version(None), Reconnect::Millis);
        assert_eq!(Reconnect::Seconds.option(), "reconnect=2");
        assert_eq!(Reconnect::Millis.option(), "reconnect-ms=2000");
    }

    #[test]
    fn wildcards_become_loopback() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(connect_ip(ip("0.0.0.0")), (ip("127.0.0.1"), true));
        assert_eq!(connect_ip(ip("::")), (ip("::1"), true));
        assert_eq!(connect_ip(ip("192.0.2.1")), (ip("192.0.2.1"), false));
        assert_eq!(connect_ip(ip("127.0.0.1")), (ip("127.0.0.1"), false));
    }
}
