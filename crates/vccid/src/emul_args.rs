//! libcacard's emulator option strings, as vscclient's `-e` takes them (libcacard.md §2.1):
//! `db="sql:DIR" use_hw=no soft=(,Test,CAC,,cert1,cert2,cert3)`.

use anyhow::{bail, Result};

/// One `soft=(SLOT,READER,TYPE,PARAMS,CERT,...)` card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoftCard {
    /// NSS token name; empty = the database's own key slot.
    pub slot: String,
    /// Reader name to announce.
    pub reader: String,
    /// Certificate nicknames.
    pub certs: Vec<String>,
}

/// The parsed options.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EmulArgs {
    /// `db="..."`.
    pub db: Option<String>,
    /// `use_hw=`: false for values starting 0, N, n, F (as libcacard reads them).
    pub use_hw: bool,
    /// The soft cards.
    pub soft: Vec<SoftCard>,
}

/// Parses an option string; unlike libcacard, errors are reported instead of silently falling
/// back to the defaults.
pub fn parse(args: &str) -> Result<EmulArgs> {
    let mut out = EmulArgs {
        use_hw: true,
        ..Default::default()
    };
    let mut rest = args.trim_start_matches([' ', '\t', '\n', ',']);
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("db=") {
            let Some(r) = r.strip_prefix('"') else {
                bail!("db= needs a quoted value: db=\"sql:DIR\"")
            };
            let Some(end) = r.find('"') else {
                bail!("db=\"... has no closing quote")
            };
            if out.db.is_some() {
                bail!("db= given twice");
            }
            out.db = Some(r[..end].to_string());
            rest = &r[end + 1..];
        } else if let Some(r) = rest.strip_prefix("soft=(") {
            let Some(end) = r.find(')') else {
                bail!("soft=( has no closing ')'")
            };
            let fields: Vec<&str> = r[..end].split(',').map(|f| f.trim_start()).collect();
            if fields.len() < 5 {
                bail!("soft=(SLOT,READER,TYPE,PARAMS,CERT,...) needs at least one certificate");
            }
            if !fields[2].eq_ignore_ascii_case("CAC") {
                bail!("soft card type {:?}: only CAC is supported", fields[2]);
            }
            out.soft.push(SoftCard {
                slot: fields[0].to_string(),
                reader: fields[1].to_string(),
                certs: fields[4..]
                    .iter()
                    .filter(|c| !c.is_empty())
                    .map(|c| c.to_string())
                    .collect(),
            });
            rest = &r[end + 1..];
        } else {
            let end = rest.find([' ', '\t', '\n']).unwrap_or(rest.len());
            let item = &rest[..end];
            if let Some(v) = item.strip_prefix("use_hw=") {
                out.use_hw = !v.starts_with(['0', 'N', 'n', 'F']);
            } else if item.starts_with("hw_type=")
                || item.starts_with("hw_params=")
                || item == "nssemul"
            {
                out.use_hw = true;
            } else if item == "passthru" {
                bail!("passthru mode: run vscclient without -e/-c to relay the PC/SC readers");
            } else {
                bail!("unknown smartcard specification {item:?}");
            }
            rest = &rest[end..];
        }
        rest = rest.trim_start_matches([' ', '\t', '\n', ',']);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libcacard_examples() {
        let a = parse(r#"db="sql:/tmp/db" use_hw=no soft=(,Test,CAC,,cert1,cert2,cert3)"#).unwrap();
        assert_eq!(a.db.as_deref(), Some("sql:/tmp/db"));
        assert!(!a.use_hw);
        assert_eq!(
            a.soft,
            vec![SoftCard {
                slot: String::new(),
                reader: "Test".into(),
                certs: vec!["cert1".into(), "cert2".into(), "cert3".into()]
            }]
        );
        // vscclient -c builds "... soft=(,Virtual Reader,CAC,,c1,c2,)" (a trailing comma).
        let a = parse(r#"db="/etc/pki/nssdb",soft=(,Virtual Reader,CAC,,c1,c2,)"#).unwrap();
        assert_eq!(a.soft[0].certs, vec!["c1", "c2"]);
        assert_eq!(a.soft[0].reader, "Virtual Reader");
        assert!(parse("use_hw=yes").unwrap().use_hw);
        assert!(!parse("use_hw=False").unwrap().use_hw);
    }

    #[test]
    fn errors() {
        for (s, w) in [
            ("db=x", "quoted"),
            (r#"db="x"#, "closing quote"),
            ("soft=(,r,PIV,,c)", "only CAC"),
            ("soft=(,r,CAC,)", "at least one"),
            ("soft=(,r,CAC,,c", "closing"),
            ("bogus", "unknown smartcard"),
            (r#"db="a" db="b""#, "twice"),
        ] {
            assert!(parse(s).unwrap_err().to_string().contains(w), "{s}");
        }
    }
}
