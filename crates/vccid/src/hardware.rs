//! `--card hardware`: which PC/SC reader holds the real card. Never vccid's own vpcd reader:
//! relaying it would feed the card back to itself (a loop with no card in it).
//!
//! pcscd names a reader "FRIENDLYNAME XX SS" (pcsc-lite readerfactory.c, `RFAddReader`): XX
//! tells apart readers with the same friendly name (00 for the first) and SS is the slot, both
//! two hex digits. vsmartcard's vpcd driver has one slot per port, from the port in its
//! reader.conf entry (`DEVICENAME /dev/null:0x8C7B`, i.e. 35963) upwards, so `--vpcd` on port
//! 35964 is the reader "Virtual PCD 00 01".

use std::net::SocketAddr;
use std::path::Path;

/// vsmartcard's defaults (`/etc/reader.conf.d/vpcd`), used when no entry is found.
const DEFAULT_FRIENDLY: &str = "Virtual PCD";
const DEFAULT_PORT: u16 = 0x8C7B;

/// One listening vpcd entry of pcscd's reader.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpcdEntry {
    /// FRIENDLYNAME.
    pub friendly: String,
    /// The port of slot 0.
    pub port: u16,
}

/// A number as pcsc-lite's reader.conf writes it: `0x` hex or decimal.
fn number(s: &str) -> Option<u16> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u16::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// The vpcd entries of a reader.conf text (pcsc-lite's format: `KEY value` lines, values
/// optionally in double quotes, `#` comments, an entry starting at FRIENDLYNAME). Only entries
/// where vpcd listens count: `DEVICENAME /dev/null:PORT` (another host name makes vpcd connect
/// out instead), else `CHANNELID PORT`. Anything it does not understand is skipped.
pub fn parse_reader_conf(text: &str) -> Vec<VpcdEntry> {
    #[derive(Default)]
    struct Raw {
        friendly: Option<String>,
        device: Option<String>,
        lib: Option<String>,
        channel: Option<String>,
    }
    fn finish(r: Raw, out: &mut Vec<VpcdEntry>) {
        let (Some(friendly), Some(lib)) = (r.friendly, r.lib) else {
            return;
        };
        if !lib.contains("vpcd") {
            return;
        }
        let port = match r.device {
            Some(d) => match d.rsplit_once(':') {
                Some(("/dev/null", p)) => number(p),
                _ => None,
            },
            None => r.channel.as_deref().and_then(number),
        };
        if let Some(port) = port {
            out.push(VpcdEntry { friendly, port });
        }
    }
    let mut out = Vec::new();
    let mut cur = Raw::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value)
            .to_string();
        match key {
            "FRIENDLYNAME" => {
                finish(std::mem::take(&mut cur), &mut out);
                cur.friendly = Some(value);
            }
            "DEVICENAME" => cur.device = Some(value),
            "LIBPATH" => cur.lib = Some(value),
            "CHANNELID" => cur.channel = Some(value),
            _ => {}
        }
    }
    finish(cur, &mut out);
    out
}

/// The name pcscd gives the vpcd reader whose card connects to `port`: the entry whose slot 0
/// is the nearest at or below `port` (slots are two hex digits, so at most 256 of them); with
/// no entries, vsmartcard's default "Virtual PCD" at 35963.
pub fn vpcd_reader_name(entries: &[VpcdEntry], port: u16) -> Option<String> {
    let default = [VpcdEntry {
        friendly: DEFAULT_FRIENDLY.into(),
        port: DEFAULT_PORT,
    }];
    let entries = if entries.is_empty() {
        &default[..]
    } else {
        entries
    };
    entries
        .iter()
        .filter(|e| e.port <= port && port - e.port <= 0xFF)
        .min_by_key(|e| port - e.port)
        .map(|e| format!("{} 00 {:02X}", e.friendly, port - e.port))
}

/// The vpcd entries of this host's pcscd (`/etc/reader.conf.d/*`).
pub fn host_vpcd_entries() -> Vec<VpcdEntry> {
    let dir = Path::new("/etc/reader.conf.d");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| parse_reader_conf(&t))
        .collect()
}

/// The readers `--card hardware` must never use: the vpcd reader vccid serves with `--vpcd`.
pub fn own_readers(vpcd: Option<SocketAddr>, entries: &[VpcdEntry]) -> Vec<hostcard::Excluded> {
    vpcd.and_then(|a| {
        vpcd_reader_name(entries, a.port()).map(|name| hostcard::Excluded {
            name,
            why: format!("vccid's own vpcd reader, --vpcd {a}"),
        })
    })
    .into_iter()
    .collect()
}

/// The reader name filter from `--card hardware,reader=NAME` and `--reader NAME` (the same
/// thing said two ways; saying it both ways is an error, as is `--reader` with another card).
pub fn reader_filter(
    spec: &crate::spec::CardSpec,
    option: Option<&str>,
) -> anyhow::Result<Option<String>> {
    use crate::spec::CardSpec;
    match (spec, option) {
        (CardSpec::Hardware { reader: Some(_) }, Some(_)) => anyhow::bail!(
            "--reader and --card hardware,reader= both choose the reader: give one of them"
        ),
        (CardSpec::Hardware { reader }, o) => Ok(o.map(str::to_string).or_else(|| reader.clone())),
        (_, Some(_)) => anyhow::bail!(
            "--reader chooses the PC/SC reader of --card hardware, and the card here is not \
             hardware (add --card hardware)"
        ),
        (_, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = "FRIENDLYNAME \"Virtual PCD\"\nDEVICENAME   /dev/null:0x8C7B\n\
                          LIBPATH      /usr/lib/pcsc/drivers/serial/libifdvpcd.so\n\
                          CHANNELID    0x8C7B\n";

    #[test]
    fn debian_conf_gives_virtual_pcd_00_00_and_00_01() {
        let e = parse_reader_conf(DEBIAN);
        assert_eq!(
            e,
            [VpcdEntry {
                friendly: "Virtual PCD".into(),
                port: 35963
            }]
        );
        assert_eq!(
            vpcd_reader_name(&e, 35963).as_deref(),
            Some("Virtual PCD 00 00")
        );
        assert_eq!(
            vpcd_reader_name(&e, 35964).as_deref(),
            Some("Virtual PCD 00 01")
        );
        assert_eq!(vpcd_reader_name(&e, 35962), None);
        assert_eq!(vpcd_reader_name(&e, 35963 + 0x100), None);
        // No entry at all: vsmartcard's defaults.
        assert_eq!(
            vpcd_reader_name(&[], 35964).as_deref(),
            Some("Virtual PCD 00 01")
        );
    }

    #[test]
    fn other_entries_and_odd_lines() {
        let text = "# comment\n\nFRIENDLYNAME \"Yubico YubiKey\"\nDEVICENAME /dev/null:40000\n\
                    LIBPATH /usr/lib/pcsc/drivers/serial/libifdvpcd.so\n\
                    FRIENDLYNAME Other\nDEVICENAME /dev/ttyS0\nLIBPATH /usr/lib/libother.so\n\
                    FRIENDLYNAME \"Reverse\"\nDEVICENAME vicc.example:35963\nLIBPATH libifdvpcd.so\n\
                    FRIENDLYNAME \"Chan\"\nLIBPATH libifdvpcd.so\nCHANNELID 50000\nGARBAGE\n\
                    DEVICENAME /dev/null:0xZZ\n";
        let e = parse_reader_conf(text);
        assert_eq!(
            e,
            [VpcdEntry {
                friendly: "Yubico YubiKey".into(),
                port: 40000
            }]
        );
        assert_eq!(
            vpcd_reader_name(&e, 40001).as_deref(),
            Some("Yubico YubiKey 00 01")
        );
        let e =
            parse_reader_conf("FRIENDLYNAME \"Chan\"\nLIBPATH libifdvpcd.so\nCHANNELID 50000\n");
        assert_eq!(vpcd_reader_name(&e, 50000).as_deref(), Some("Chan 00 00"));
    }

    #[test]
    fn own_reader_follows_the_vpcd_port() {
        let e = parse_reader_conf(DEBIAN);
        let own = own_readers(Some("127.0.0.1:35964".parse().unwrap()), &e);
        assert_eq!(own.len(), 1);
        assert_eq!(own[0].name, "Virtual PCD 00 01");
        assert!(
            own[0].why.contains("--vpcd 127.0.0.1:35964"),
            "{}",
            own[0].why
        );
        assert!(own_readers(None, &e).is_empty());
    }

    #[test]
    fn reader_option_and_spec() {
        use crate::spec::parse;
        let hw = parse("hardware").unwrap();
        assert_eq!(reader_filter(&hw, None).unwrap(), None);
        assert_eq!(
            reader_filter(&hw, Some("Gemalto")).unwrap().as_deref(),
            Some("Gemalto")
        );
        let named = parse("hardware,reader=Gemalto").unwrap();
        assert_eq!(
            reader_filter(&named, None).unwrap().as_deref(),
            Some("Gemalto")
        );
        assert!(reader_filter(&named, Some("x"))
            .unwrap_err()
            .to_string()
            .contains("give one of them"));
        let emu = parse("emulated").unwrap();
        assert!(reader_filter(&emu, Some("x"))
            .unwrap_err()
            .to_string()
            .contains("add --card hardware"));
    }
}
