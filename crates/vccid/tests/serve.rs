//! `vccid serve` with a configuration file and `vccid ctl` over the real control socket
//! (issue #15), against a private pcscd + vpcd: the configured cards are in their readers,
//! cards are ejected, inserted, added and removed at run time and pcscd sees it, events reach
//! a listening client, and bad control input gets an error without disturbing anything.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use testkit::{text, CommandExt, PrivatePcscd};

mod common;
use common::{ctl, Served, VCCID};

/// The certificate serials `pkcs15-tool --list-certificates` shows for reader `index`.
fn serials(pcscd: &PrivatePcscd, index: usize) -> Vec<String> {
    let out = pcscd
        .command("pkcs15-tool")
        .args(["--reader", &index.to_string(), "--list-certificates"])
        .output_within(testkit::TOOL_TIMEOUT)
        .expect("pkcs15-tool runs");
    text(&out)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Encoded serial"))
        .map(|v| v.trim_start_matches([' ', ':']).to_string())
        .collect()
}

/// `vccid ctl ARGS` against `socket`; its stdout, or a panic with its stderr.
const TWO_READERS: &str = r#"
[service]
state_dir = "{state}"
control = "{socket}"

[[card]]
id = "alice"
keys = "files"
properties = { cert1 = "{ids}/cert1.crt.pem", key1 = "{ids}/cert1.key.pem" }

[[card]]
id = "bob"
keys = "files"
properties = { cert1 = "{ids}/cert2.crt.pem", key1 = "{ids}/cert2.key.pem" }

[[card]]
id = "carol"
keys = "files"
profile = "piv"
properties = { cert1 = "{ids}/cert3.crt.pem", key1 = "{ids}/cert3.key.pem", state = "off" }

[[reader]]
id = "r0"
transport = "vpcd"
address = "127.0.0.1:35963"
cards = ["alice"]

[[reader]]
id = "r1"
transport = "vpcd"
address = "127.0.0.1:35964"
cards = ["bob"]
"#;

#[test]
fn configured_cards_are_in_their_readers_and_ctl_moves_them() {
    let s = Served::start(TWO_READERS);
    for i in 0..2 {
        if let Err(e) = s.pcscd.wait_card(i, Duration::from_secs(30)) {
            panic!("{e}\n{}", s.log());
        }
    }
    let (alice, bob) = (serials(&s.pcscd, 0), serials(&s.pcscd, 1));
    assert!(!alice.is_empty() && alice != bob, "{alice:?} {bob:?}");
    let readers = ctl(&s.socket, &["readers"]);
    assert_eq!(
        readers,
        "r0  vpcd  127.0.0.1:35963\n  r0: alice\nr1  vpcd  127.0.0.1:35964\n  r1: bob\n"
    );
    let cards: serde_json::Value =
        serde_json::from_str(&ctl(&s.socket, &["--json", "cards"])).unwrap();
    assert_eq!(cards.as_array().unwrap().len(), 3, "{cards}");
    assert_eq!(cards[2]["id"], "carol");
    assert_eq!(cards[2]["slot"], serde_json::Value::Null);
    assert_eq!(cards[2]["profile"], "piv");

    // A client listening for events sees what the next commands do.
    let mut events = Command::new(VCCID)
        .arg("ctl")
        .arg("--socket")
        .arg(&s.socket)
        .arg("events")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(events.stdout.take().unwrap()).lines();
    std::thread::sleep(Duration::from_millis(300));

    assert_eq!(
        ctl(&s.socket, &["card", "eject", "r1"]),
        "card bob ejected from r1\n"
    );
    s.pcscd.wait_no_card(1, Duration::from_secs(10)).unwrap();
    assert_eq!(
        ctl(&s.socket, &["card", "insert", "carol", "r1"]),
        "card carol in r1\n"
    );
    s.pcscd.wait_card(1, Duration::from_secs(10)).unwrap();
    let n = text(
        &s.pcscd
            .command("opensc-tool")
            .args(["--reader", "1", "-n"])
            .output_within(testkit::TOOL_TIMEOUT)
            .unwrap(),
    );
    assert!(n.contains("Personal Identity Verification"), "{n}");
    // Ejected by the card's name, then bob into the reader alice left.
    assert_eq!(
        ctl(&s.socket, &["card", "eject", "alice"]),
        "card alice ejected from r0\n"
    );
    s.pcscd.wait_no_card(0, Duration::from_secs(10)).unwrap();
    ctl(&s.socket, &["card", "insert", "bob", "r0"]);
    s.pcscd.wait_card(0, Duration::from_secs(10)).unwrap();
    assert_eq!(serials(&s.pcscd, 0), bob, "r0 now holds bob");

    let names: Vec<String> = lines
        .map_while(Result::ok)
        .take(4)
        .map(|l| {
            let e: serde_json::Value = serde_json::from_str(&l).unwrap();
            format!("{} {} {}", e["event"], e["data"]["card"], e["data"]["slot"])
        })
        .collect();
    testkit::kill(&mut events, "vccid ctl events").unwrap();
    assert_eq!(
        names,
        [
            r#""CARD_EJECTED" "bob" "r1""#,
            r#""CARD_INSERTED" "carol" "r1""#,
            r#""CARD_EJECTED" "alice" "r0""#,
            r#""CARD_INSERTED" "bob" "r0""#,
        ]
    );
    // Cards made and removed at run time.
    // Not alice's certificate: two CAC cards of one certificate would share its state file
    // (issue #17), which the second may not take while the first holds its lock.
    let added = ctl(
        &s.socket,
        &[
            "card",
            "add",
            "dave",
            "--keys",
            "files",
            "--property",
            &format!("cert1={}/cert3.crt.pem", s.ids.display()),
            "--property",
            &format!("key1={}/cert3.key.pem", s.ids.display()),
        ],
    );
    assert_eq!(added, "dave  emulated cac files  in no reader\n");
    ctl(&s.socket, &["card", "remove", "dave"]);
    assert!(!ctl(&s.socket, &["cards"]).contains("dave"));
    let log = s.log();
    assert!(
        log.contains("control: client connected client=uid 0"),
        "{log}"
    );
}

/// Sends a request and returns its answer, skipping the events that come meanwhile.
fn request(r: &mut BufReader<UnixStream>, w: &mut UnixStream, line: &str) -> serde_json::Value {
    w.write_all(line.as_bytes()).unwrap();
    w.write_all(b"\n").unwrap();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        if v.get("event").is_none() {
            return v;
        }
    }
}

/// The pid of `vccid serve` (the namespace's child of that name).
fn serve_pid(s: &Served) -> u32 {
    s.pcscd.child_pid(&s.log_name()).expect("vccid runs")
}

/// Resident memory of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A raw control connection: the greeting read.
fn raw(socket: &Path) -> (BufReader<UnixStream>, UnixStream) {
    let s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut greeting = String::new();
    r.read_line(&mut greeting).unwrap();
    assert!(
        greeting.starts_with(r#"{"QMP":{"capabilities":[],"version":{"vccid":"#),
        "{greeting}"
    );
    (r, s)
}

fn ask(r: &mut BufReader<UnixStream>, w: &mut UnixStream, line: &str) -> serde_json::Value {
    w.write_all(line.as_bytes()).unwrap();
    w.write_all(b"\n").unwrap();
    let mut answer = String::new();
    r.read_line(&mut answer).unwrap();
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
}

#[test]
fn bad_control_input_gets_errors_and_the_service_goes_on() {
    let s = Served::start(TWO_READERS);
    let (mut r, mut w) = raw(&s.socket);
    let desc = |v: serde_json::Value| v["error"]["desc"].as_str().unwrap_or_default().to_string();
    assert!(desc(ask(&mut r, &mut w, "{not json")).starts_with("not JSON"));
    assert!(desc(ask(&mut r, &mut w, r#"{"execute": "format-disk"}"#))
        .starts_with("unknown command \"format-disk\""));
    assert!(desc(ask(
        &mut r,
        &mut w,
        r#"{"execute": "card-eject", "arguments": {"slot": "r0", "x": 1}}"#
    ))
    .contains("takes no argument"));
    assert!(desc(ask(
        &mut r,
        &mut w,
        r#"{"execute": "card-insert", "arguments": {"card": "nobody", "reader": "r0"}}"#
    ))
    .contains("nobody"));
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(desc(ask(&mut r, &mut w, &deep)).starts_with("nested deeper than"));
    let ok = ask(&mut r, &mut w, r#"{"execute": "query-version", "id": 7}"#);
    assert_eq!(ok["id"], 7);
    assert_eq!(ok["return"]["vccid"], env!("CARGO_PKG_VERSION"));
    // A line past the limit: an error, then the connection is closed.
    let (mut r2, mut w2) = raw(&s.socket);
    // The service stops reading at the limit, so the rest of the write may fail.
    let long = "x".repeat(vccid::control::MAX_LINE + 10);
    let _ = w2.write_all(long.as_bytes());
    let mut answer = String::new();
    r2.read_line(&mut answer).unwrap();
    let e: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert!(desc(e).starts_with("request longer than"), "{answer}");
    let mut rest = String::new();
    assert_eq!(
        r2.read_to_string(&mut rest).unwrap_or(0),
        0,
        "closed: {rest:?}"
    );
    // A 100 MiB line: refused at the limit, the connection closed; the writer sees it shut.
    let (_, mut w3) = raw(&s.socket);
    let chunk = vec![b'x'; 1 << 20];
    let mut sent = 0usize;
    while sent < 100 << 20 {
        if w3.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    assert!(
        sent < 100 << 20,
        "the service read a 100 MiB line to its end"
    );
    let pid = serve_pid(&s);
    let rss_before = rss_kib(pid);
    // 200 clients at once: those past the limit are closed on arrival, the rest idle, and
    // none of them reads while 2000 events are sent to every client. A client connected
    // before them goes on.
    let (mut r4, mut w4) = raw(&s.socket);
    let crowd: Vec<UnixStream> = (0..200)
        .map(|_| UnixStream::connect(&s.socket).unwrap())
        .collect();
    for _ in 0..500 {
        for req in [
            r#"{"execute": "card-eject", "arguments": {"reader": "r1"}}"#,
            r#"{"execute": "card-insert", "arguments": {"card": "bob", "reader": "r1"}}"#,
        ] {
            let a = request(&mut r4, &mut w4, req);
            assert!(a.get("return").is_some(), "{a}");
        }
    }
    let a = request(&mut r4, &mut w4, r#"{"execute": "query-readers"}"#);
    assert_eq!(a["return"][0]["slots"][0]["card"], "alice", "{a}");
    let rss_after = rss_kib(pid);
    println!("RSS {rss_before} KiB, then {rss_after} KiB with 200 clients and 2000 events");
    assert!(
        rss_after < rss_before + 32 * 1024,
        "memory grew from {rss_before} to {rss_after} KiB"
    );
    drop(crowd);
    // Room again for new clients once the crowd has gone.
    testkit::wait_for("a new client", Duration::from_secs(10), || {
        Command::new(VCCID)
            .args(["ctl", "--socket"])
            .arg(&s.socket)
            .arg("readers")
            .output()
            .is_ok_and(|o| o.status.success())
    })
    .unwrap();
    let log = s.log();
    assert!(
        log.contains("connections already under way; closing this one"),
        "{log}"
    );
    // Someone other than the socket's owner (mode 0600) cannot connect.
    let o = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            VCCID,
            "ctl",
            "--socket",
        ])
        .arg(&s.socket)
        .arg("version")
        .output_within(testkit::TOOL_TIMEOUT)
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("permission denied: only its owner (root) may use it (mode 600)"),
        "{}",
        text(&o)
    );
    // The cards are still served.
    s.pcscd.wait_card(0, Duration::from_secs(5)).unwrap();
}

#[test]
fn a_bad_configuration_names_file_line_and_key_and_nothing_starts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vccid.toml");
    std::fs::write(
        &file,
        "[[card]]\nid = \"a\"\n\n[[reader]]\nid = \"r\"\ntransport = \"vpcd\"\ncards = [\"b\"]\n",
    )
    .unwrap();
    let o = Command::new(VCCID)
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .output_within(testkit::TOOL_TIMEOUT)
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.trim(),
        format!(
            "vccid: error: {}:5: reader[0].cards: no card \"b\" is defined",
            file.display()
        )
    );
    std::fs::write(&file, "[[card]]\nid = \"a\"\nkeys = \"default\"\n").unwrap();
    let o = Command::new(VCCID)
        .args(["serve", "--check", "--config"])
        .arg(&file)
        .output_within(testkit::TOOL_TIMEOUT)
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("1 card(s), 0 reader(s): OK"),
        "{}",
        text(&o)
    );
}

/// systemd readiness: READY=1 reaches a NOTIFY_SOCKET the test owns, and only once every
/// reader listens (the usbredir reader's unix socket accepts, the control socket answers).
#[test]
fn ready_is_sent_once_every_reader_listens() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify");
    let rx = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (usb, control) = (dir.path().join("vm1.sock"), dir.path().join("control.sock"));
    let file = dir.path().join("vccid.toml");
    std::fs::write(
        &file,
        format!(
            "[service]\nstate_dir = \"{state}\"\ncontrol = \"{control}\"\n\n\
             [[card]]\nid = \"a\"\nkeys = \"default\"\n\n\
             [[reader]]\nid = \"vm1\"\ntransport = \"usbredir\"\naddress = \"unix:{usb}\"\n\
             mode = \"0660\"\ncards = [\"a\"]\n",
            state = dir.path().join("state").display(),
            control = control.display(),
            usb = usb.display()
        ),
    )
    .unwrap();
    let mut v = Command::new(VCCID)
        .args(["serve", "--config"])
        .arg(&file)
        .env("NOTIFY_SOCKET", &notify)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let n = rx.recv(&mut buf).expect("READY=1 within 30 s");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    // Checked at once, before anything else can happen: what READY=1 promises.
    let usb_up = UnixStream::connect(&usb).is_ok();
    let control_up = UnixStream::connect(&control).is_ok();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&usb).unwrap().permissions());
    testkit::terminate(&mut v, Duration::from_secs(5), "vccid serve").unwrap();
    assert!(
        msg.starts_with("READY=1\nSTATUS=serving 1 card(s) in 1 reader(s)"),
        "{msg}"
    );
    assert!(usb_up && control_up, "READY=1 before the sockets listened");
    assert_eq!(mode & 0o777, 0o660);
}

/// A `pcsc_scan` watching pcscd: each card event as (when it was read, reader index,
/// "Card inserted" or "Card removed").
struct Watcher {
    child: std::process::Child,
    events: std::sync::mpsc::Receiver<(std::time::Instant, usize, String)>,
}

impl Watcher {
    /// `pcsc_scan -n` (pcsc-tools) in `pcscd`'s namespace, line-buffered (stdbuf) so that each
    /// event is read when it is printed.
    fn start(pcscd: &PrivatePcscd) -> Watcher {
        let mut child = pcscd
            .command("stdbuf")
            .args(["-oL", "pcsc_scan", "-n"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("pcsc_scan starts");
        let out = child.stdout.take().unwrap();
        let (tx, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // pcsc_scan prints " Reader N: NAME", then its event number and "Card state:".
            let mut reader = None;
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let t = l.trim_start();
                if let Some(rest) = t.strip_prefix("Reader ") {
                    reader = rest.split(':').next().and_then(|n| n.trim().parse().ok());
                } else if let (Some(r), Some(state)) = (reader, t.strip_prefix("Card state: ")) {
                    let state = state
                        .split(',')
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_string();
                    if tx.send((std::time::Instant::now(), r, state)).is_err() {
                        return;
                    }
                }
            }
        });
        Watcher { child, events }
    }

    /// Waits for `state` in reader `reader`; when it was read.
    fn wait(&self, reader: usize, state: &str, timeout: Duration) -> Option<std::time::Instant> {
        let deadline = std::time::Instant::now() + timeout;
        while let Ok((t, r, s)) = self
            .events
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
        {
            if r == reader && s == state {
                return Some(t);
            }
        }
        None
    }

    /// Every event read so far: (reader, state).
    fn drain(&self) -> Vec<(usize, String)> {
        self.events.try_iter().map(|(_, r, s)| (r, s)).collect()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = testkit::kill(&mut self.child, "pcsc_scan");
    }
}

/// Waits until `opensc-tool --reader N -n` names a card containing `want`.
fn wait_name(pcscd: &PrivatePcscd, reader: usize, want: &str) -> String {
    let mut last = String::new();
    let found = testkit::wait_for("the card's name", Duration::from_secs(15), || {
        last = text_of(pcscd, &["--reader", &reader.to_string(), "-n"]);
        last.contains(want)
    });
    assert!(found.is_ok(), "reader {reader}: no {want:?}: {last}");
    last
}

#[test]
fn cards_made_at_run_time_survive_a_restart_and_delete_leaves_nothing() {
    let s = Served::start(TWO_READERS);
    s.pcscd.wait_card(1, Duration::from_secs(30)).unwrap();
    let state = s.pcscd.dir.path().join("state");
    let watcher = Watcher::start(&s.pcscd);
    std::thread::sleep(Duration::from_secs(1));
    watcher.drain();
    ctl(&s.socket, &["card", "eject", "r1"]);
    s.pcscd.wait_no_card(1, Duration::from_secs(10)).unwrap();
    // A generated PIV card made and inserted while pcsc_scan watches.
    ctl(&s.socket, &["card", "add", "eve", "--profile", "piv"]);
    let asked = std::time::Instant::now();
    ctl(&s.socket, &["card", "insert", "eve", "r1"]);
    let seen = watcher
        .wait(1, "Card inserted", Duration::from_secs(10))
        .expect("pcsc_scan saw the insertion");
    let took = seen.saturating_duration_since(asked);
    println!("insertion seen by pcsc_scan after {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    drop(watcher);
    let eve = serials(&s.pcscd, 1);
    assert!(state.join("cards/eve/cert1.crt.pem").exists());
    // An ephemeral card leaves nothing on disk.
    ctl(&s.socket, &["card", "add", "tmp", "--ephemeral"]);
    assert!(!state.join("cards/tmp").exists());
    // Restart: eve is back in r1, tmp is gone.
    let mut s = s;
    s.stop();
    // pcscd sees the card go with the old process, before the new one brings it back.
    s.pcscd.wait_no_card(1, Duration::from_secs(10)).unwrap();
    s.run();
    s.pcscd.wait_card(1, Duration::from_secs(30)).unwrap();
    let cards = ctl(&s.socket, &["cards"]);
    assert!(
        cards.contains("eve  emulated piv generated  in r1"),
        "{cards}\n{}",
        s.log()
    );
    assert!(!cards.contains("tmp"), "{cards}");
    assert_eq!(serials(&s.pcscd, 1), eve, "the same card after the restart");
    // Deleted: its identities and state are gone, and so is the run-time record.
    ctl(&s.socket, &["card", "remove", "eve", "--delete"]);
    s.pcscd.wait_no_card(1, Duration::from_secs(10)).unwrap();
    assert!(!state.join("cards/eve").exists());
    let rt = std::fs::read_to_string(state.join("runtime.toml")).unwrap();
    assert!(!rt.contains("eve"), "{rt}");
}

#[test]
fn reload_keeps_unchanged_readers_connected() {
    let s = Served::start(TWO_READERS);
    for i in 0..2 {
        s.pcscd.wait_card(i, Duration::from_secs(30)).unwrap();
    }
    let watcher = Watcher::start(&s.pcscd);
    std::thread::sleep(Duration::from_secs(1));
    watcher.drain();
    // r0 unchanged; r1 gets carol instead of bob; a new card dan.
    let file = s.pcscd.dir.path().join("vccid.toml");
    let old = std::fs::read_to_string(&file).unwrap();
    let new = old.replace("cards = [\"bob\"]", "cards = [\"carol\"]")
        + "\n[[card]]\nid = \"dan\"\nkeys = \"default\"\n";
    std::fs::write(&file, new).unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&ctl(&s.socket, &["--json", "reload"])).unwrap();
    assert_eq!(
        report["readers-kept"],
        serde_json::json!(["r0", "r1"]),
        "{report}"
    );
    assert_eq!(
        report["cards-added"],
        serde_json::json!(["dan"]),
        "{report}"
    );
    wait_name(&s.pcscd, 1, "Personal Identity Verification");
    std::thread::sleep(Duration::from_secs(1));
    let seen = watcher.drain();
    assert!(
        seen.contains(&(1, "Card removed".to_string())),
        "the watcher saw bob go: {seen:?}"
    );
    assert!(
        !seen.contains(&(0, "Card removed".to_string())),
        "reader 0 saw its card go: {seen:?}"
    );
    let log = s.log();
    assert_eq!(
        log.matches("connected to vpcd addr=127.0.0.1:35963")
            .count(),
        1,
        "r0's vpcd connection was made again:\n{log}"
    );
    // A file with a mistake changes nothing: neither a syntax error, nor a card the card
    // parser refuses in a file that also removes a card and adds another.
    let before = ctl(&s.socket, &["cards"]);
    let good = std::fs::read_to_string(&file).unwrap();
    let half = good.replace("id = \"dan\"", "id = \"erin\"")
        + "\n[[card]]\nid = \"gina\"\nprofile = \"pvi\"\n";
    for bad in ["[[reader]]\nid = 3\n".to_string(), half] {
        std::fs::write(&file, bad).unwrap();
        let o = Command::new(VCCID)
            .args(["ctl", "--socket"])
            .arg(&s.socket)
            .arg("reload")
            .output_within(testkit::TOOL_TIMEOUT)
            .unwrap();
        assert!(!o.status.success());
        assert!(text(&o).contains("vccid.toml:"), "{}", text(&o));
        assert_eq!(
            ctl(&s.socket, &["cards"]),
            before,
            "a refused reload changed the cards"
        );
    }
    assert!(ctl(&s.socket, &["readers"]).contains("r1: carol"));
    // The good file again: nothing to do.
    std::fs::write(&file, good).unwrap();
    let again: serde_json::Value =
        serde_json::from_str(&ctl(&s.socket, &["--json", "reload"])).unwrap();
    assert_eq!(again["cards-added"], serde_json::json!([]), "{again}");
    assert_eq!(
        again["readers-kept"],
        serde_json::json!(["r0", "r1"]),
        "{again}"
    );
}

fn text_of(pcscd: &PrivatePcscd, args: &[&str]) -> String {
    text(
        &pcscd
            .command("opensc-tool")
            .args(args)
            .output_within(testkit::TOOL_TIMEOUT)
            .unwrap(),
    )
}

/// Regression (newcomer trial of issue #16): a reload whose changed reader could not start
/// removed the reader, left its slot behind, and every later reload failed with "a slot exists
/// already". Now a socket that cannot be made refuses the file before anything stops, and a
/// reader whose new settings fail to start goes back to its previous ones.
#[test]
fn a_reload_whose_reader_cannot_start_keeps_the_reader_and_the_next_reload_works() {
    let config = r#"
[service]
state_dir = "{state}"
control = "{socket}"

[[card]]
id = "alice"
ephemeral = true

[[reader]]
id = "u0"
transport = "usbredir"
address = "unix:{state}/u0.sock"
cards = ["alice"]
"#;
    let s = Served::start(config);
    let file = s.pcscd.dir.path().join("vccid.toml");
    let good = std::fs::read_to_string(&file).unwrap();
    let sock = s.pcscd.dir.path().join("state/u0.sock");
    assert!(UnixStream::connect(&sock).is_ok(), "u0 listens");
    let reload = |text: &str| {
        std::fs::write(&file, text).unwrap();
        Command::new(VCCID)
            .args(["ctl", "--socket"])
            .arg(&s.socket)
            .arg("reload")
            .output_within(testkit::TOOL_TIMEOUT)
            .unwrap()
    };
    // 1. A directory the socket cannot be made in: refused before anything stops.
    let o = reload(&good.replace("/u0.sock", "/no/such/dir/u0.sock"));
    assert!(!o.status.success());
    assert!(text(&o).contains("cannot make the socket"), "{}", text(&o));
    assert!(UnixStream::connect(&sock).is_ok(), "u0 stopped");
    // 2. New settings that fail only when started (a TLS directory without certificates):
    //    back to the old ones.
    let no_tls = s.pcscd.dir.path().join("no-tls");
    std::fs::create_dir_all(&no_tls).unwrap();
    let o = reload(&good.replace(
        "cards = [\"alice\"]",
        &format!("tls = \"{}\"\ncards = [\"alice\"]", no_tls.display()),
    ));
    assert!(!o.status.success());
    assert!(
        text(&o).contains("it keeps its previous settings"),
        "{}",
        text(&o)
    );
    assert!(UnixStream::connect(&sock).is_ok(), "u0 is not back");
    let readers = ctl(&s.socket, &["readers"]);
    assert!(
        readers.contains("u0: alice") && readers.contains("u0.sock"),
        "{readers}"
    );
    // 3. The good file: a reload that works, nothing to change.
    let o = reload(&good);
    assert!(o.status.success(), "{}", text(&o));
    let again: serde_json::Value =
        serde_json::from_str(&ctl(&s.socket, &["--json", "reload"])).unwrap();
    assert_eq!(again["readers-kept"], serde_json::json!(["u0"]), "{again}");
}

/// `vccid ctl trace` (issue #18) against a live service while OpenSC signs: the signing
/// sequence appears decoded (SELECT, VERIFY, the signature), VERIFY's PIN blanked in the text
/// and in `--json`, and the PIN appears nowhere in either.
#[test]
fn ctl_trace_shows_opensc_signing_decoded_and_the_pin_blanked() {
    const PIN: &str = "31415926";
    let config = r#"
[service]
state_dir = "{state}"
control = "{socket}"

[[card]]
id = "alice"
keys = "files"
pin = "31415926"
properties = { cert1 = "{ids}/cert1.crt.pem", key1 = "{ids}/cert1.key.pem" }

[[reader]]
id = "r0"
transport = "vpcd"
address = "127.0.0.1:35963"
cards = ["alice"]
"#;
    let s = Served::start(config);
    s.pcscd.wait_card(0, Duration::from_secs(30)).unwrap();
    let start = |json: bool| {
        let mut c = Command::new(VCCID);
        c.args(["ctl", "--socket"]).arg(&s.socket);
        if json {
            c.arg("--json");
        }
        c.args(["trace", "r0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("vccid ctl trace starts")
    };
    let mut text_trace = start(false);
    let mut json_trace = start(true);
    // Both have subscribed once the service logs their trace threads' first client... simply
    // give them the time to send their request.
    std::thread::sleep(Duration::from_millis(500));
    s.pcscd
        .sign_and_verify("0001", PIN, &s.ids.join("cert1.crt.pem"))
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let read = |c: &mut std::process::Child| {
        testkit::terminate(c, Duration::from_secs(5), "vccid ctl trace").unwrap();
        let mut out = String::new();
        std::io::Read::read_to_string(c.stdout.as_mut().unwrap(), &mut out).unwrap();
        out
    };
    let text_out = read(&mut text_trace);
    let json_out = read(&mut json_trace);
    println!("{text_out}");
    // Recording a transcript for crates/apdu/tests/transcripts (BLESS there afterwards).
    if let Some(path) = std::env::var_os("VCCID_RECORD_TRACE") {
        std::fs::write(path, &json_out).unwrap();
    }
    for want in [
        "SELECT",
        "VERIFY PIN [8 bytes redacted] → 9000",
        "command: 8 bytes, secret (blanked)",
    ] {
        assert!(text_out.contains(want), "no {want:?} in:\n{text_out}");
    }
    // The signature: CAC's SIGN/DECRYPT (INS 42), its output blanked like a decipher's.
    let sign_line = text_out
        .lines()
        .find(|l| l.contains("→ 9000") && (l.contains("SIGN") || l.contains("INS 42")))
        .unwrap_or_else(|| panic!("no signature exchange in:\n{text_out}"));
    println!("signature: {sign_line}");
    let mut verify_seen = false;
    for l in json_out.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert_eq!(v["event"], "APDU", "{l}");
        if v["data"]["line"]
            .as_str()
            .unwrap_or("")
            .starts_with("VERIFY PIN [")
        {
            verify_seen = true;
            assert_eq!(v["data"]["command-redacted"], true, "{l}");
            assert_eq!(v["data"]["command"], "0000000000000000", "{l}");
        }
    }
    assert!(verify_seen, "no VERIFY in the JSON trace:\n{json_out}");
    let pin_hex: String = PIN.bytes().map(|b| format!("{b:02X}")).collect();
    for out in [&text_out, &json_out] {
        assert!(
            !out.contains(PIN) && !out.contains(&pin_hex) && !out.contains(&pin_hex.to_lowercase())
        );
    }
}

/// `vccid ctl trace --json` while yubico-piv-tool reads a PIV card's status and verifies its
/// PIN: the exchanges decoded in PIV's terms (objects by name), the PIN blanked.
#[test]
fn ctl_trace_decodes_yubico_piv_tool_on_a_piv_card() {
    let config = r#"
[service]
state_dir = "{state}"
control = "{socket}"

[[card]]
id = "pat"
profile = "piv"
ephemeral = true

[[reader]]
id = "r0"
transport = "vpcd"
address = "127.0.0.1:35963"
cards = ["pat"]
"#;
    let s = Served::start(config);
    s.pcscd.wait_card(0, Duration::from_secs(30)).unwrap();
    let mut trace = Command::new(VCCID)
        .args(["ctl", "--socket"])
        .arg(&s.socket)
        .args(["--json", "trace", "r0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    for args in [
        &["-r", "Virtual PCD", "-a", "status"][..],
        &["-r", "Virtual PCD", "-a", "verify-pin", "-P", "123456"][..],
    ] {
        let o = s
            .pcscd
            .command("yubico-piv-tool")
            .args(args)
            .output_within(testkit::TOOL_TIMEOUT)
            .unwrap();
        assert!(o.status.success(), "yubico-piv-tool {args:?}: {}", text(&o));
    }
    std::thread::sleep(Duration::from_millis(500));
    testkit::terminate(&mut trace, Duration::from_secs(5), "vccid ctl trace").unwrap();
    let mut out = String::new();
    trace
        .stdout
        .as_mut()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    if let Some(path) = std::env::var_os("VCCID_RECORD_TRACE") {
        std::fs::write(path, &out).unwrap();
    }
    let lines: Vec<String> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["data"]["line"].as_str().unwrap_or("").to_string())
        .collect();
    for want in [
        "SELECT PIV → 9000",
        "GET DATA 5FC102 (CHUID) → 9000",
        "VERIFY PIN [8 bytes redacted] → 9000",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(want)),
            "no {want:?} in {lines:#?}"
        );
    }
    assert!(!out.contains("313233343536"), "the PIN in the trace");
}
