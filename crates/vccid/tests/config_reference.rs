//! The README's configuration reference against the code (issue #15): the example
//! configuration parses, every key of the reference table is one the code takes, and every key
//! the code takes is in the table. The code's keys come from its own types: serde's refusal of
//! an unknown key lists the keys a table has.

use std::collections::BTreeSet;
use std::path::Path;
use vccid::config::Config;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
        .expect("README.md")
}

/// The keys the code takes in `table` (the header line of a table, with whatever the table
/// needs before an unknown key).
fn code_keys(table: &str) -> BTreeSet<String> {
    let text = format!("{table}\nno_such_key_here = 1\n");
    let e = Config::parse(&text, "probe").unwrap_err().to_string();
    let list = e
        .split("expected one of")
        .nth(1)
        .unwrap_or_else(|| panic!("serde names no keys: {e}"));
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The keys the README's reference table lists for `table` ("[service]", "[[card]]", ...).
fn documented(readme: &str, table: &str) -> BTreeSet<String> {
    let start = readme
        .find("| table | key | meaning |")
        .expect("the configuration reference table");
    readme[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells.get(1) == Some(&format!("`{table}`").as_str())).then(|| cells[2].to_string())
        })
        .flat_map(|keys| {
            keys.split(',')
                .map(|k| k.trim().trim_matches('`').to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_reference_lists_exactly_the_keys_the_code_takes() {
    let r = readme();
    for (table, probe) in [
        ("[service]", "[service]"),
        ("[[card]]", "[[card]]\nid = \"a\""),
        ("[[reader]]", "[[reader]]\nid = \"r\"\ntransport = \"vpcd\""),
    ] {
        let code = code_keys(probe);
        let doc = documented(&r, table);
        assert!(code.len() >= 5, "{table}: {code:?}");
        assert_eq!(doc, code, "README reference for {table} against the code");
    }
    // The top level: the three tables.
    assert_eq!(
        code_keys(""),
        ["card", "reader", "service"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
}

#[test]
fn the_readme_s_example_configuration_is_valid() {
    let r = readme();
    let start = r
        .find("## Run as a service")
        .expect("a Run as a service section");
    let block = r[start..]
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a toml block");
    let cfg = Config::parse(block, "README.md").unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.cards.len() >= 5 && cfg.readers.len() >= 4);
    let transports: BTreeSet<String> = cfg
        .readers
        .iter()
        .map(|r| r.transport.to_string())
        .collect();
    assert_eq!(
        transports.len(),
        4,
        "every transport is shown: {transports:?}"
    );
}

/// The keys vccid.toml(5) lists under `.SH [table]` (each a `.TP` then `.B key`).
fn man_keys(page: &str, table: &str) -> BTreeSet<String> {
    let start = page
        .find(&format!(".SH {table}\n"))
        .unwrap_or_else(|| panic!("vccid.toml.5 has no section {table}"));
    let body = &page[start + 1..];
    let body = &body[..body.find("\n.SH ").unwrap_or(body.len())];
    let lines: Vec<&str> = body.lines().collect();
    lines
        .windows(2)
        .filter(|w| w[0] == ".TP")
        .filter_map(|w| w[1].strip_prefix(".B "))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_man_page_lists_exactly_the_keys_the_code_takes() {
    let page =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("debian/vccid.toml.5"))
            .expect("debian/vccid.toml.5");
    for (table, probe) in [
        ("[service]", "[service]"),
        ("[[card]]", "[[card]]\nid = \"a\""),
        ("[[reader]]", "[[reader]]\nid = \"r\"\ntransport = \"vpcd\""),
    ] {
        assert_eq!(
            man_keys(&page, table),
            code_keys(probe),
            "vccid.toml(5) {table} against the code"
        );
    }
}
