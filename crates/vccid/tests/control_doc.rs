//! docs/control.md is executed (issue #15): its configuration is served, every command of the
//! control socket has an example there, and each example's requests are sent as written and
//! its answers and events must match (`"…"` matching any value).

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const VCCID: &str = env!("CARGO_BIN_EXE_vccid");

fn doc() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/control.md");
    std::fs::read_to_string(root).expect("docs/control.md")
}

/// The fenced blocks of `text` with the given info string, and the `### ` heading above each.
fn blocks(text: &str, info: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut heading = String::new();
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if let Some(h) = l.strip_prefix("### ") {
            heading = h.trim().to_string();
        } else if l.trim() == format!("```{info}") {
            let body: Vec<&str> = lines
                .by_ref()
                .take_while(|l| !l.starts_with("```"))
                .collect();
            out.push((heading.clone(), body.join("\n")));
        }
    }
    out
}

/// Whether `actual` matches `pattern`: "…" matches anything; objects need the pattern's keys
/// (and no others); arrays the same length.
fn matches(pattern: &Value, actual: &Value) -> bool {
    match (pattern, actual) {
        (Value::String(p), _) if p == "…" => true,
        (Value::Object(p), Value::Object(a)) => {
            p.len() == a.len()
                && p.iter()
                    .all(|(k, v)| a.get(k).is_some_and(|x| matches(v, x)))
        }
        (Value::Array(p), Value::Array(a)) => {
            p.len() == a.len() && p.iter().zip(a).all(|(x, y)| matches(x, y))
        }
        _ => pattern == actual,
    }
}

#[test]
fn every_command_has_an_example_and_every_example_runs() {
    let text = doc();
    let documented: Vec<String> = blocks(&text, "json").into_iter().map(|(h, _)| h).collect();
    for (cmd, _) in vccid::control::COMMANDS {
        assert!(
            documented.iter().any(|h| h == cmd),
            "docs/control.md has no example for {cmd}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let (_, config) = blocks(&text, "toml")
        .into_iter()
        .next()
        .expect("a toml block");
    let file = dir.path().join("vccid.toml");
    std::fs::write(&file, config.replace("{dir}", &d)).unwrap();
    let mut serve = Command::new(VCCID)
        .args(["serve", "--config"])
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let socket = dir.path().join("control.sock");
    testkit::wait_for("the control socket", Duration::from_secs(30), || {
        UnixStream::connect(&socket).is_ok()
    })
    .unwrap();
    let s = UnixStream::connect(&socket).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut next = |until: Instant| -> Option<Value> {
        let mut line = String::new();
        while Instant::now() < until {
            match r.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) if line.ends_with('\n') => return serde_json::from_str(&line).ok(),
                _ => continue,
            }
        }
        None
    };
    let greeting = next(Instant::now() + Duration::from_secs(5)).expect("a greeting");
    assert!(
        greeting["QMP"]["version"]["vccid"].is_string(),
        "{greeting}"
    );
    let mut ran = 0;
    for (heading, body) in blocks(&text, "json") {
        let body = body.replace("{dir}", &d);
        let lines: Vec<&str> = body.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            let req = lines[i].strip_prefix("-> ").unwrap_or_else(|| {
                panic!("{heading}: expected a request line, got {:?}", lines[i])
            });
            let mut expected: Vec<Value> = Vec::new();
            i += 1;
            while let Some(e) = lines.get(i).and_then(|l| l.strip_prefix("<- ")) {
                expected.push(
                    serde_json::from_str(e).unwrap_or_else(|err| panic!("{heading}: {err}: {e}")),
                );
                i += 1;
            }
            writeln!(w, "{req}").unwrap();
            // The answer and the events may come in either order: collect until every
            // expected message has been matched, or 5 s.
            let until = Instant::now() + Duration::from_secs(5);
            let mut got = Vec::new();
            while !expected.is_empty() {
                let Some(m) = next(until) else {
                    panic!("{heading}: {req}: missing {expected:?}; got {got:?}");
                };
                if let Some(k) = expected.iter().position(|p| matches(p, &m)) {
                    expected.remove(k);
                } else if m.get("event").is_none() {
                    panic!("{heading}: {req}: unexpected answer {m}; still expecting {expected:?}");
                }
                got.push(m);
            }
            ran += 1;
        }
    }
    testkit::terminate(&mut serve, Duration::from_secs(5), "vccid serve").unwrap();
    assert!(
        ran >= vccid::control::COMMANDS.len(),
        "only {ran} requests ran"
    );
}

#[test]
fn the_matcher_can_fail() {
    let p: Value = serde_json::from_str(r#"{"return": {"slot": "vm1"}}"#).unwrap();
    assert!(matches(&p, &serde_json::json!({"return": {"slot": "vm1"}})));
    assert!(!matches(
        &p,
        &serde_json::json!({"return": {"slot": "vm2"}})
    ));
    assert!(!matches(
        &p,
        &serde_json::json!({"return": {"slot": "vm1", "x": 1}})
    ));
    let any: Value = serde_json::from_str(r#"{"return": "…"}"#).unwrap();
    assert!(matches(&any, &serde_json::json!({"return": [1, 2]})));
}
