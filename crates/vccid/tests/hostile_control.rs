//! Hostile peers on `vccid serve`'s control socket (issue #17), beyond serve.rs's bad input:
//! bytes that are not UTF-8, requests of the wrong shape and argument types, half-closed
//! connections, 500 idle connections at once, and a trace client that never reads while the
//! card works. Each gets the protocol's own answer (an `{"error": ...}` line) or a clean
//! close, each is logged, and afterwards a new client is answered and the card still signs.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

mod common;
use common::Served;

const PIN: &str = "12345678";

const CONFIG: &str = r#"
[service]
state_dir = "{state}"
control = "{socket}"

[[card]]
id = "alice"
keys = "files"
properties = { cert1 = "{ids}/cert1.crt.pem", key1 = "{ids}/cert1.key.pem" }

[[reader]]
id = "r0"
transport = "vpcd"
address = "127.0.0.1:35963"
cards = ["alice"]
"#;

/// A connection with its greeting read.
fn connect(socket: &Path) -> (BufReader<UnixStream>, UnixStream) {
    let s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut greeting = String::new();
    r.read_line(&mut greeting).unwrap();
    assert!(greeting.starts_with(r#"{"QMP":"#), "{greeting:?}");
    (r, s)
}

/// Sends raw bytes (a newline added) and returns the next answer that is not an event.
fn send(r: &mut BufReader<UnixStream>, w: &mut UnixStream, bytes: &[u8]) -> serde_json::Value {
    w.write_all(bytes).unwrap();
    w.write_all(b"\n").unwrap();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l:?}"));
        if v.get("event").is_none() {
            return v;
        }
    }
}

fn desc(v: &serde_json::Value) -> String {
    v["error"]["desc"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error: {v}"))
        .to_string()
}

/// A new client is greeted and answered.
fn answers(s: &Served) {
    let (mut r, mut w) = connect(&s.socket);
    let v = send(
        &mut r,
        &mut w,
        br#"{"execute": "query-version", "id": "alive"}"#,
    );
    assert_eq!(v["return"]["vccid"], env!("CARGO_PKG_VERSION"), "{v}");
    assert_eq!(v["id"], "alive");
}

/// Whether a new client is greeted (not turned away) and answers `query-version`; for
/// waiting while the service may still be at its connection limit.
fn greeted_and_answered(s: &Served) -> bool {
    let Ok(c) = UnixStream::connect(&s.socket) else {
        return false;
    };
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).is_err() || !line.starts_with(r#"{"QMP":"#) {
        return false;
    }
    if (&c)
        .write_all(b"{\"execute\": \"query-version\"}\n")
        .is_err()
    {
        return false;
    }
    line.clear();
    r.read_line(&mut line).is_ok()
        && serde_json::from_str::<serde_json::Value>(&line)
            .is_ok_and(|v| v["return"]["vccid"] == env!("CARGO_PKG_VERSION"))
}

/// `vccid serve`'s log has `what` (the refusals are logged, not only answered).
fn logged(s: &Served, what: &str) {
    let log = s.log();
    assert!(log.contains(what), "{what:?} is not in the log:\n{log}");
}

#[test]
fn hostile_control_clients_get_errors_are_logged_and_the_service_goes_on() {
    let s = Served::start(CONFIG);
    s.wait_card(0);
    let (mut r, mut w) = connect(&s.socket);

    // Not UTF-8 (RFC 8259 §8.1): refused whole, the connection stays.
    let v = send(&mut r, &mut w, b"{\"execute\": \"query-\xff\xfeversion\"}");
    assert_eq!(desc(&v), "request is not UTF-8 (byte 19)");
    let v = send(&mut r, &mut w, b"\x00\x01\x02\xc3\x28 garbage");
    assert!(desc(&v).starts_with("request is not UTF-8"), "{v}");
    logged(&s, "control: bad request: request is not UTF-8");
    // Garbage that is UTF-8.
    let v = send(&mut r, &mut w, "\u{7f}\u{1b}[2J ☃ ]]]}}}".as_bytes());
    assert!(desc(&v).starts_with("not JSON"), "{v}");
    logged(&s, "control: bad request: not JSON");
    answers(&s);

    // JSON of the wrong shape or with arguments of the wrong types: each an error naming
    // the problem, with the request's id when it has one.
    for (req, want) in [
        (r#"{"execute": 5, "id": 1}"#, "expected {\"execute\""),
        (r#"[1, 2, 3]"#, "expected {\"execute\""),
        (r#""query-version""#, "expected {\"execute\""),
        (
            r#"{"execute": "query-version", "arguments": [1], "id": 2}"#,
            "arguments must be an object",
        ),
        (
            r#"{"execute": "card-insert", "arguments": {"card": 5, "reader": ["r0"]}, "id": 3}"#,
            "card",
        ),
        (
            r#"{"execute": "card-eject", "arguments": {"reader": {"id": "r0"}}, "id": 4}"#,
            "reader",
        ),
        (
            r#"{"execute": "card-add", "arguments": {"id": "x", "pin-tries": "many"}, "id": 5}"#,
            "pin-tries",
        ),
        (
            r#"{"execute": "trace", "arguments": {"reader": 0}, "id": 6}"#,
            "reader must be a string",
        ),
        (r#"{"execute": "rm -rf /", "id": 7}"#, "unknown command"),
        (
            r#"{"execute": "query-version\u0000", "id": 8}"#,
            "unknown command",
        ),
    ] {
        let v = send(&mut r, &mut w, req.as_bytes());
        assert!(desc(&v).contains(want), "{req}: {v}");
        if req.contains("\"id\"") && !req.starts_with(r#"{"execute": 5"#) {
            assert!(!v["id"].is_null(), "{req}: {v}");
        }
    }
    logged(&s, "control: bad request: expected {\"execute\"");
    logged(&s, "control: refused: unknown command");
    logged(&s, "control: refused: reader must be a string");
    // Nesting past the limit inside a request that is otherwise right.
    let deep = format!(
        r#"{{"execute": "query-version", "arguments": {{"a": {}{}}}}}"#,
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    assert!(desc(&send(&mut r, &mut w, deep.as_bytes())).starts_with("nested deeper than"));
    logged(&s, "control: bad request: nested deeper than");
    // The connection that sent all this is still served.
    let v = send(&mut r, &mut w, br#"{"execute": "query-cards"}"#);
    assert_eq!(v["return"][0]["id"], "alice", "{v}");
    answers(&s);

    // Half-closed connections: a request then the write side shut is answered, then closed;
    // a partial line then the shut is taken as the request it is; a bare shut is a client
    // leaving.
    for (req, answer) in [
        (&b"{\"execute\": \"query-version\"}\n"[..], "\"return\""),
        (&b"{\"execute\": \"query-version\"}"[..], "\"return\""),
        (&b"{\"execute\": \"query-"[..], "not JSON"),
        (&b""[..], ""),
    ] {
        let (mut r2, w2) = connect(&s.socket);
        (&w2).write_all(req).unwrap();
        w2.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = String::new();
        r2.read_to_string(&mut rest).unwrap();
        assert!(rest.contains(answer), "{req:?}: {rest:?}");
        assert_eq!(
            rest.lines().count(),
            usize::from(!req.is_empty()),
            "{rest:?}"
        );
    }
    // And the read side shut: the service's answers go nowhere, its connection ends.
    let (_, w3) = connect(&s.socket);
    w3.shutdown(std::net::Shutdown::Read).unwrap();
    for _ in 0..100 {
        let _ = (&w3).write_all(b"{\"execute\": \"query-readers\"}\n");
    }
    drop(w3);
    answers(&s);

    // A trace client that never reads while the card works: the card answers as fast as
    // ever (the trace is fed from a bounded queue), and the client is dropped once its
    // socket is full for the write timeout.
    let stuck = UnixStream::connect(&s.socket).unwrap();
    (&stuck)
        .write_all(b"{\"execute\": \"trace\", \"arguments\": {\"reader\": \"r0\"}}\n")
        .unwrap();
    let cert = s.ids.join("cert1.crt.pem");
    let started = Instant::now();
    let mut rounds = 0;
    while rounds < 3 || (started.elapsed() < Duration::from_secs(20) && !dropped(&s)) {
        let t = Instant::now();
        s.pcscd
            .sign_and_verify("0001", PIN, &cert)
            .unwrap_or_else(|e| panic!("{e}\n{}", s.log()));
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "a signature took {:?} with a stuck trace client",
            t.elapsed()
        );
        rounds += 1;
    }
    println!(
        "{rounds} signatures in {:?} with a stuck trace client",
        started.elapsed()
    );
    assert!(
        dropped(&s),
        "the stuck client was not dropped:\n{}",
        s.log()
    );
    drop(stuck);
    answers(&s);

    // 500 connections at once, left idle: those past the limit get an error line naming it
    // and are closed on arrival (and logged), the rest wait; once they go, new clients are
    // served again.
    let crowd: Vec<UnixStream> = (0..500)
        .map(|_| UnixStream::connect(&s.socket).unwrap())
        .collect();
    let turned_away = crowd
        .iter()
        .filter(|c| {
            c.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            // The greeting then nothing (served, idle), or the error line then the end.
            let mut text = String::new();
            let closed = (&mut &**c).read_to_string(&mut text).is_ok();
            closed
                && text.starts_with(r#"{"error":"#)
                && text.contains("64 control connections already under way")
        })
        .count();
    assert!(
        turned_away >= 500 - vccid::control::MAX_CLIENTS,
        "{turned_away} of 500 turned away with the error line"
    );
    logged(&s, "connections already under way; closing this one");
    drop(crowd);
    // The service sees the crowd leave one connection at a time: until enough have gone, a
    // new client may still be turned away (its first line the error, not the greeting), so
    // wait for one that is greeted and answered.
    testkit::wait_for("a new client answered", Duration::from_secs(10), || {
        greeted_and_answered(&s)
    })
    .unwrap();

    // The first connection is still answered, the card still signs, nothing panicked.
    let v = send(&mut r, &mut w, br#"{"execute": "query-readers"}"#);
    assert_eq!(v["return"][0]["slots"][0]["card"], "alice", "{v}");
    s.pcscd
        .sign_and_verify("0001", PIN, &cert)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.log()));
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

/// Whether the service has dropped a client that stopped reading.
fn dropped(s: &Served) -> bool {
    s.log().contains("; client dropped")
}
