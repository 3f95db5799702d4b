//! The README is executed (issue #13): every shell block in README.md carries a marker on the
//! line before it, and the blocks marked to run are run, literally and in order, the way a
//! new user runs them, against a private pcscd started the way Debian's units start it
//! (socket-activated, `--auto-exit`).
//!
//! Markers (an HTML comment, invisible on GitHub):
//! - `<!-- readme-test: serve -->`: a long-running command (vccid). It runs in the background
//!   until the next `serve` block or the end, and must print `vccid: ready` first.
//! - `<!-- readme-test: run -->`, optionally `expect="TEXT"`: runs to completion and must exit
//!   0 (and print TEXT).
//! - `<!-- readme-test: skip: REASON -->`: not run, for the reason given.
//!
//! Every block runs in `bash -euo pipefail` with the repository as working directory, inside
//! the private pcscd's namespaces, with HOME in a scratch directory (so the default card is
//! made fresh) and a private tmpfs on /tmp/vccid-demo, the README's work directory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use testkit::PrivatePcscd;

#[derive(Debug, PartialEq)]
enum Mark {
    Serve,
    Run { expect: Option<String> },
    Skip(String),
}

#[derive(Debug)]
struct Block {
    line: usize,
    mark: Mark,
    code: String,
}

fn is_shell_fence(info: &str) -> bool {
    matches!(info.trim(), "" | "sh" | "bash" | "shell" | "console")
}

fn parse_mark(comment: &str) -> Result<Mark, String> {
    let body = comment
        .trim()
        .strip_prefix("<!-- readme-test:")
        .and_then(|r| r.strip_suffix("-->"))
        .ok_or("no readme-test marker")?
        .trim();
    if body == "serve" {
        return Ok(Mark::Serve);
    }
    if let Some(reason) = body.strip_prefix("skip:") {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err("skip without a reason".into());
        }
        return Ok(Mark::Skip(reason.to_string()));
    }
    if let Some(rest) = body.strip_prefix("run") {
        let rest = rest.trim();
        if rest.is_empty() {
            return Ok(Mark::Run { expect: None });
        }
        let text = rest
            .strip_prefix("expect=\"")
            .and_then(|r| r.strip_suffix('"'))
            .ok_or_else(|| format!("bad run options {rest:?}"))?;
        return Ok(Mark::Run {
            expect: Some(text.to_string()),
        });
    }
    Err(format!("unknown marker {body:?}"))
}

/// Every shell block with its marker; an unmarked block is an error naming its line.
fn blocks(readme: &str) -> Result<Vec<Block>, String> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(info) = lines[i].strip_prefix("```") else {
            i += 1;
            continue;
        };
        let start = i;
        let end = (i + 1..lines.len())
            .find(|&j| lines[j].starts_with("```"))
            .ok_or_else(|| format!("README.md:{}: unclosed code block", start + 1))?;
        i = end + 1;
        if !is_shell_fence(info) {
            continue;
        }
        let prev = lines[..start]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .copied()
            .unwrap_or("");
        let mark = parse_mark(prev).map_err(|e| {
            format!(
                "README.md:{}: shell block without a valid readme-test marker on the line \
                 before ({e})",
                start + 1
            )
        })?;
        out.push(Block {
            line: start + 1,
            mark,
            code: lines[start + 1..end].join("\n"),
        });
    }
    Ok(out)
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn real_home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
}

/// A block's shell, inside the namespaces; cargo and rustup keep their real homes because
/// HOME is the scratch directory.
fn shell(pcscd: &PrivatePcscd, code: &str) -> Command {
    let mut c = pcscd.command("bash");
    // nsenter's mount namespace starts in "/": the block starts in the repository, as the
    // user's shell does.
    let repo = std::fs::canonicalize(repo()).expect("repository path");
    let script = format!("cd '{}'\n{code}", repo.display());
    c.args(["-euo", "pipefail", "-c", &script])
        .env(
            "CARGO_HOME",
            std::env::var_os("CARGO_HOME").unwrap_or_else(|| real_home().join(".cargo").into()),
        )
        .env(
            "RUSTUP_HOME",
            std::env::var_os("RUSTUP_HOME").unwrap_or_else(|| real_home().join(".rustup").into()),
        )
        // The namespace has no network; everything cargo needs is already fetched.
        .env("CARGO_NET_OFFLINE", "true")
        .env("DEBIAN_FRONTEND", "noninteractive");
    c
}

/// The environment variable that marks the processes of a serve block.
const MARKER: &str = "VCCID_README_TEST_BLOCK";

/// A running `serve` block: its process group, and its output as it comes.
struct Served {
    child: Child,
    marker: String,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Served {
    fn start(pcscd: &PrivatePcscd, b: &Block) -> Served {
        let mut cmd = shell(pcscd, &b.code);
        let marker = format!("{}-{}", std::process::id(), b.line);
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env(MARKER, &marker);
        let mut child = cmd.spawn().expect("spawn a serve block");
        let (tx, rx) = mpsc::channel();
        for out in [
            Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("piped")),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(l);
                }
            });
        }
        Served {
            child,
            marker,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Every process the block started, found by the marker in its environment: a process
    /// group does not hold them (cargo and vccid leave the shell's group).
    fn pids(&self) -> Vec<libc::pid_t> {
        let needle = format!("{MARKER}={}\0", self.marker);
        std::fs::read_dir("/proc")
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok())
                    .filter(|pid| {
                        std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                            env.windows(needle.len()).any(|w| w == needle.as_bytes())
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits for a line containing `what`; the first build of the release binary is the slow
    /// part, hence the long deadline.
    fn wait_line(&mut self, what: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let hit = l.contains(what);
                    self.seen.push(l);
                    if hit {
                        return Ok(());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "no line with {what:?} after {timeout:?}; output:\n{}",
                        self.seen.join("\n")
                    ))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let st = testkit::wait_child(
                        &mut self.child,
                        Duration::from_secs(10),
                        "a serve block",
                    );
                    return Err(format!(
                        "exited ({st:?}) before printing {what:?}; output:\n{}",
                        self.seen.join("\n")
                    ));
                }
            }
        }
    }

    fn stop(mut self) -> String {
        for pid in self.pids() {
            // SAFETY: kill(2) on a process this block started (its environment says so).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && !self.pids().is_empty() {
            std::thread::sleep(Duration::from_millis(50));
        }
        for pid in self.pids() {
            // SAFETY: as above; whatever did not stop on SIGTERM.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = testkit::wait_child(&mut self.child, Duration::from_secs(10), "a serve block");
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(l);
        }
        self.seen.join("\n")
    }
}

impl Drop for Served {
    /// A failing test leaves nothing running.
    fn drop(&mut self) {
        for pid in self.pids() {
            // SAFETY: kill(2) on a process this block started (its environment says so).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[test]
fn every_shell_block_is_marked_and_markers_parse() {
    let text = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let b = blocks(&text).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        b.iter().filter(|b| b.mark == Mark::Serve).count() >= 3,
        "the README serves the CAC, PIV and SoftHSM cards: {b:?}"
    );
    assert!(b
        .iter()
        .any(|b| b.code.contains("cargo run --release -p vccid -- --vpcd")));
    // The parser itself: an unmarked block and a skip without a reason are refused.
    assert!(blocks("text\n\n```sh\nls\n```\n").is_err());
    assert!(blocks("<!-- readme-test: skip: -->\n```sh\nls\n```\n").is_err());
    assert!(blocks("<!-- readme-test: run -->\n```toml\nx = 1\n```\n")
        .unwrap()
        .is_empty());
    assert_eq!(
        blocks("<!-- readme-test: run expect=\"OK\" -->\n```sh\nls\n```\n").unwrap()[0].mark,
        Mark::Run {
            expect: Some("OK".into())
        }
    );
}

#[test]
fn the_readme_runs_as_written() {
    let text = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let blocks = blocks(&text).unwrap_or_else(|e| panic!("{e}"));
    let pcscd = PrivatePcscd::start_socket_activated().expect("socket-activated pcscd");
    let o = testkit::run(pcscd.command("sh").args([
        "-c",
        "mkdir -p /tmp/vccid-demo && mount -t tmpfs -o mode=700 tmpfs /tmp/vccid-demo",
    ]))
    .expect("private /tmp/vccid-demo");
    assert!(o.status.success());
    let mut served: Option<Served> = None;
    let mut ran = 0;
    for b in &blocks {
        match &b.mark {
            Mark::Skip(_) => continue,
            Mark::Serve => {
                if let Some(s) = served.take() {
                    s.stop();
                }
                let mut s = Served::start(&pcscd, b);
                if let Err(e) = s.wait_line("vccid: ready", Duration::from_secs(1200)) {
                    let log = s.stop();
                    panic!("README.md:{}: {e}\n{log}\npcscd: {}", b.line, pcscd.log());
                }
                served = Some(s);
            }
            Mark::Run { expect } => {
                let mut cmd = shell(&pcscd, &b.code);
                let o = testkit::output(&mut cmd, Duration::from_secs(300), "README block")
                    .unwrap_or_else(|e| panic!("README.md:{}: {e}", b.line));
                let out = testkit::text(&o);
                let log = || {
                    served
                        .as_ref()
                        .map(|s| s.seen.join("\n"))
                        .unwrap_or_default()
                };
                assert!(
                    o.status.success(),
                    "README.md:{}: exit {}:\n{}\n{out}\nvccid so far:\n{}",
                    b.line,
                    o.status,
                    b.code,
                    log()
                );
                if let Some(want) = expect {
                    assert!(
                        out.contains(want.as_str()),
                        "README.md:{}: no {want:?} in:\n{out}",
                        b.line
                    );
                }
                ran += 1;
            }
        }
    }
    if let Some(s) = served.take() {
        s.stop();
    }
    assert!(ran >= 4, "only {ran} README blocks ran");
}
