//! The layering of ARCHITECTURE.md, enforced from `cargo metadata` so the shape cannot drift
//! (issue #14): which crate may pull in what, through its normal (not dev) dependencies,
//! directly or not.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Every workspace crate's transitive normal dependencies, by name.
fn closures() -> BTreeMap<String, BTreeSet<String>> {
    closures_skipping(None)
}

/// The same, not looking through the crate named `skip`: what a crate pulls in other than by
/// way of it.
fn closures_skipping(skip: Option<&str>) -> BTreeMap<String, BTreeSet<String>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let platform = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let o = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--offline"])
        .args(["--filter-platform", &platform])
        .current_dir(&root)
        .output()
        .expect("cargo metadata runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).expect("metadata is JSON");
    let name: BTreeMap<&str, &str> = m["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let nodes: BTreeMap<&str, &serde_json::Value> = m["resolve"]["nodes"]
        .as_array()
        .expect("resolve")
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let normal = |d: &serde_json::Value| {
        d["dep_kinds"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k["kind"].is_null()))
    };
    let mut out = BTreeMap::new();
    for member in m["workspace_members"].as_array().expect("members") {
        let id = member.as_str().unwrap();
        let mut seen = BTreeSet::new();
        let mut todo = vec![id];
        while let Some(x) = todo.pop() {
            for d in nodes[x]["deps"].as_array().unwrap() {
                let pkg = d["pkg"].as_str().unwrap();
                if normal(d) && Some(name[pkg]) != skip && seen.insert(pkg) {
                    todo.push(pkg);
                }
            }
        }
        out.insert(
            name[id].to_string(),
            seen.iter().map(|p| name[p].to_string()).collect(),
        );
    }
    out
}

fn forbid(c: &BTreeMap<String, BTreeSet<String>>, krate: &str, banned: &[&str], why: &str) {
    let deps = c
        .get(krate)
        .unwrap_or_else(|| panic!("no crate {krate} in the workspace"));
    let found: Vec<&&str> = banned.iter().filter(|b| deps.contains(**b)).collect();
    assert!(found.is_empty(), "{krate} pulls in {found:?}: {why}");
}

/// Sockets, threads and async runtimes, crypto and TLS, serialisation: what a sans-IO crate
/// must never pull in.
const IO_CRYPTO_SERDE: &[&str] = &[
    "tokio",
    "mio",
    "socket2",
    "libc",
    "aws-lc-rs",
    "aws-lc-sys",
    "ring",
    "rustls",
    "rcgen",
    "cryptoki",
    "libloading",
    "serde",
    "serde_json",
];
/// What belongs to the emulated card and the programs: applets, key stores, PKCS#11,
/// certificate generation and parsing.
const CARD_INSIDES: &[&str] = &["card", "cryptoki", "rcgen", "x509-cert"];
/// AWS-LC: the card's crypto, and rustls's provider in `link`.
const AWS_LC: &[&str] = &["aws-lc-rs", "aws-lc-sys"];
const TRANSPORTS: &[&str] = &["ccid", "usbredir", "usbip", "vpcd", "vscard", "hostcard"];
const PROGRAM_ONLY: &[&str] = &["anyhow", "clap", "tracing-subscriber"];

#[test]
fn the_layers_hold() {
    let c = closures();
    for k in ["apdu", "vscard", "card-api", "ccid"] {
        forbid(
            &c,
            k,
            IO_CRYPTO_SERDE,
            "codecs and the reader model are sans-IO",
        );
    }
    for k in ["ccid", "usbredir", "usbip", "vpcd", "hostcard", "link"] {
        forbid(
            &c,
            k,
            CARD_INSIDES,
            "transports and their links see the Card trait (card-api), never an applet, a key \
             store or a certificate generator",
        );
    }
    // The transports' TLS is link's (rustls on AWS-LC): AWS-LC only by way of link.
    let without_link = closures_skipping(Some("link"));
    for k in ["ccid", "usbredir", "usbip", "vpcd", "hostcard"] {
        forbid(
            &without_link,
            k,
            AWS_LC,
            "a transport's crypto is link's TLS, never its own",
        );
    }
    // link sits under the transports: streams, TLS and loops, nothing about cards or readers.
    for (banned, why) in [
        (TRANSPORTS, "transports use link, not the reverse"),
        (
            &["card", "card-api", "slot", "apdu"][..],
            "link carries bytes; cards and slots are above it",
        ),
    ] {
        forbid(&c, "link", banned, why);
    }
    forbid(&c, "card", TRANSPORTS, "the card sees APDUs only");
    // Slots sit between the cards and the transports: they see the Card trait only, and bring
    // no sockets or runtimes (the transports do).
    for (banned, why) in [
        (IO_CRYPTO_SERDE, "slots and the registry have no I/O"),
        (CARD_INSIDES, "slots hold any Card, never the applets"),
        (TRANSPORTS, "transports serve slots, not the reverse"),
    ] {
        forbid(&c, "slot", banned, why);
    }
    for k in c.keys().filter(|k| k.as_str() != "vccid") {
        forbid(
            &c,
            k,
            PROGRAM_ONLY,
            "only the programs parse command lines, install a subscriber or use anyhow",
        );
    }
}

/// The rules can fail: the program crate pulls in all of the above.
#[test]
fn the_check_sees_what_the_programs_pull_in() {
    let c = closures();
    let vccid = &c["vccid"];
    for k in [
        "card",
        "tokio",
        "aws-lc-rs",
        "clap",
        "anyhow",
        "ccid",
        "link",
    ] {
        assert!(vccid.contains(k), "vccid should depend on {k}: {vccid:?}");
    }
    // And the transports do reach AWS-LC, through link only.
    assert!(c["usbredir"].contains("aws-lc-rs"), "{:?}", c["usbredir"]);
    assert!(!closures_skipping(Some("link"))["usbredir"].contains("aws-lc-rs"));
}
