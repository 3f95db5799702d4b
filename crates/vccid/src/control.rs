//! The control socket of `vccid serve` (issue #15): a Unix socket (never TCP; mode 0600 by
//! default) speaking JSON in QMP's shape, one message per line:
//!
//! * the server greets: `{"QMP": {"version": {"vccid": "0.1.0"}, "capabilities": []}}`;
//! * a client sends `{"execute": "card-insert", "arguments": {...}, "id": ANY}` and gets
//!   `{"return": ..., "id": ANY}` or `{"error": {"class": "GenericError", "desc": "..."}}`;
//! * events arrive as `{"event": "CARD_INSERTED", "data": {...}, "timestamp": {"seconds": S,
//!   "microseconds": US}}`.
//!
//! `qmp_capabilities` is accepted (and needed by nothing), so QMP clients work unchanged.
//! Every accepted client's uid is logged. Lines are limited to [`MAX_LINE`] bytes and clients
//! to [`MAX_CLIENTS`]; a client that does not read its events within [`WRITE_TIMEOUT`] is
//! dropped; none of them can stop the others or the service.

use crate::config::{CardConfig, CardKind};
use crate::service::Service;
use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest request line.
pub const MAX_LINE: usize = 64 * 1024;
/// Clients served at once; more are closed on arrival.
pub const MAX_CLIENTS: usize = 64;
/// How long a write to a client may block before the client is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Nesting deeper than this in a request is refused before it is parsed.
pub const MAX_DEPTH: usize = 32;

/// The system-wide control socket (the packaged `vccid.service`'s).
pub const SYSTEM_PATH: &str = "/run/vccid/control.sock";

/// The default control socket: under systemd's `RuntimeDirectory=` (`$RUNTIME_DIRECTORY`,
/// `/run/vccid` for the packaged unit), else `$XDG_RUNTIME_DIR/vccid/control.sock`, else
/// `/run/vccid/control.sock` as root (or without a runtime directory).
pub fn default_path() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = crate::systemd_dir("RUNTIME_DIRECTORY") {
        return d.join("control.sock");
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    match env("XDG_RUNTIME_DIR") {
        Some(d) if !root => PathBuf::from(d).join("vccid/control.sock"),
        _ => PathBuf::from(SYSTEM_PATH),
    }
}

/// The socket `vccid ctl` talks to without `--socket`: `$VCCID_CONTROL`, else the user's own
/// service's ([`default_path`]) when it runs, else the system service's: a member of group
/// `vccid` reaches the packaged service without options.
pub fn client_path() -> PathBuf {
    if let Some(p) = std::env::var_os("VCCID_CONTROL").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    let own = default_path();
    let system = PathBuf::from(SYSTEM_PATH);
    if !own.exists() && system.exists() {
        system
    } else {
        own
    }
}

/// The uid of the process at the other end of a Unix socket (SO_PEERCRED).
fn peer_uid(s: &UnixStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the fd is a live socket owned by `s`; `cred` and `len` are valid for writes
    // of the sizes given, which is what SO_PEERCRED fills (socket(7)).
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cred.uid)
}

/// Binds the control socket at `path` (its directory made 0755 if missing; a stale socket
/// nobody answers on is replaced, a live one is an error) with `mode`, `owner` and `group`,
/// and serves it on threads of its own.
pub fn serve(
    path: &Path,
    mode: Option<&str>,
    owner: Option<&str>,
    group: Option<&str>,
    service: Arc<Service>,
) -> Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
        }
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "{} is in use: another vccid serve is running (stop it, or give another \
                 control socket)",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    crate::service::set_access(path, Some(mode.unwrap_or("0600")), owner, group)?;
    tracing::info!(socket = %path.display(), "control socket ready");
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            link::accept::on_threads(
                "control",
                "control-client",
                MAX_CLIENTS,
                || listener.accept().map(|(s, _)| Client(s)),
                move |Client(s)| client(s, &service),
            )
        })?;
    Ok(())
}

/// An accepted control connection (for link's accept loop, which names peers).
struct Client(UnixStream);

impl link::accept::Peer for Client {
    fn peer(&self) -> String {
        peer_uid(&self.0).map_or_else(|| "uid ?".into(), |u| format!("uid {u}"))
    }
    /// The error line in place of the greeting, so that `vccid ctl` and scripts say why
    /// rather than "connection closed". Non-blocking: a fresh connection's send buffer is
    /// empty, and a client that somehow fills it loses only this line.
    fn turn_away(&mut self, why: &str) {
        let mut line = json!({"error": {"class": "GenericError", "desc": why}}).to_string();
        line.push('\n');
        if self.0.set_nonblocking(true).is_ok() {
            let _ = self.0.write_all(line.as_bytes());
        }
    }
}

/// Writes one JSON message and a newline; an error means the client is gone or stuck.
fn send(w: &Mutex<UnixStream>, v: &Value) -> std::io::Result<()> {
    let mut line = v.to_string();
    line.push('\n');
    let mut s = w.lock().unwrap_or_else(|e| e.into_inner());
    s.write_all(line.as_bytes())
}

/// Whether a failed write to a client means it stopped reading ([`WRITE_TIMEOUT`] passed), not
/// that it left (a broken pipe, a reset).
fn stuck(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn timestamp() -> Value {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    json!({"seconds": t.as_secs(), "microseconds": t.subsec_micros()})
}

/// A registry event as a QMP event, or `None` for those the socket does not forward (every
/// APDU's timing: that is the trace's business).
pub fn event_json(e: &slot::Event) -> Option<Value> {
    use slot::Event as E;
    let (name, data) = match e {
        E::ReaderAdded(r) => ("READER_ADDED", json!({"slot": r})),
        E::ReaderRemoved(r) => ("READER_REMOVED", json!({"slot": r})),
        E::CardInserted { card, slot } => ("CARD_INSERTED", json!({"card": card, "slot": slot})),
        E::CardEjected { card, slot } => ("CARD_EJECTED", json!({"card": card, "slot": slot})),
        E::HostConnected { slot, peer } => ("HOST_CONNECTED", json!({"slot": slot, "peer": peer})),
        E::HostDisconnected { slot, peer } => {
            ("HOST_DISCONNECTED", json!({"slot": slot, "peer": peer}))
        }
        E::PinBlocked { card } => ("PIN_BLOCKED", json!({ "card": card })),
        E::ApduDone { .. } => return None,
    };
    Some(json!({"event": name, "data": data, "timestamp": timestamp()}))
}

/// How deep `text` nests arrays and objects (strings skipped), counted before parsing so that
/// a hostile line cannot make the parser recurse.
fn depth(text: &str) -> usize {
    let (mut d, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for c in text.bytes() {
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'[' | b'{' => {
                d += 1;
                max = max.max(d);
            }
            b']' | b'}' => d = d.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Serves one client until it leaves or misbehaves beyond repair.
fn client(s: UnixStream, service: &Arc<Service>) {
    let who = peer_uid(&s).map_or_else(|| "uid ?".into(), |u| format!("uid {u}"));
    tracing::info!(client = %who, "control: client connected");
    let _ = s.set_write_timeout(Some(WRITE_TIMEOUT));
    let (Ok(reader), Ok(events_half)) = (s.try_clone(), s.try_clone()) else {
        return;
    };
    let writer = Arc::new(Mutex::new(s));
    let greeting =
        json!({"QMP": {"version": {"vccid": env!("CARGO_PKG_VERSION")}, "capabilities": []}});
    if send(&writer, &greeting).is_err() {
        return;
    }
    // Events go out from a thread of their own, so that a request in progress never waits for
    // them; the registry drops (and counts) what a slow client's queue cannot hold. The
    // subscriptions (events, traces) end when this function returns: their threads, and the
    // connection they hold, go with the client, not at the next event or APDU.
    let (events, unsubscribe) = service.registry().subscribe_until(256);
    let mut subscriptions = vec![unsubscribe];
    let (ew, ew_who) = (writer.clone(), who.clone());
    let _ = std::thread::Builder::new()
        .name("control-events".into())
        .spawn(move || {
            for e in events {
                if let Some(v) = event_json(&e) {
                    if let Err(e) = send(&ew, &v) {
                        // A client that stops reading would otherwise hold its events (and
                        // this thread) for ever; it is told nothing more and dropped. One that
                        // left (an event it caused still queued) is no news.
                        if stuck(&e) {
                            tracing::warn!(client = %ew_who, "control: events not taken within {WRITE_TIMEOUT:?} ({e}); client dropped");
                        }
                        let _ = events_half.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                }
            }
        });
    let mut input = BufReader::new(reader);
    // A request may carry a PIN, a PUK or a private key: the line is wiped when the client
    // leaves, and sized for the longest line up front so that growing it leaves no copies in
    // freed memory (issue #17).
    let mut line = zeroize::Zeroizing::new(Vec::with_capacity(MAX_LINE + 1));
    loop {
        line.clear();
        let n = match (&mut input)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) => break,
            Ok(n) => n,
            Err(_) => break,
        };
        if n > MAX_LINE {
            let _ = send(
                &writer,
                &error(
                    None,
                    &format!("request longer than {MAX_LINE} bytes; closing"),
                ),
            );
            tracing::warn!(client = %who, "control: request line too long; client dropped");
            break;
        }
        // RFC 8259 §8.1: JSON text exchanged between systems is UTF-8; anything else is refused
        // whole rather than guessed at.
        let text = match std::str::from_utf8(&line) {
            Ok(t) => t,
            Err(e) => {
                let desc = format!("request is not UTF-8 (byte {})", e.valid_up_to());
                if send(&writer, &refused(&who, None, &desc)).is_err() {
                    break;
                }
                continue;
            }
        };
        if text.trim().is_empty() {
            continue;
        }
        let reply = match trace_request(text) {
            Some(Ok((id, reader))) => {
                start_trace(service, &writer, reader, id.as_ref(), &mut subscriptions)
            }
            Some(Err(e)) => {
                tracing::warn!(client = %who, command = "trace", "control: refused: {}", e["error"]["desc"].as_str().unwrap_or_default());
                e
            }
            None => handle(text, service, &who),
        };
        if send(&writer, &reply).is_err() {
            break;
        }
    }
    if let Ok(s) = writer.lock() {
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
    tracing::info!(client = %who, "control: client left");
}

/// A `trace` request (it belongs to the connection, so the client loop serves it, not
/// [`handle`]): its id and the reader asked for, or the error to answer; `None` for any other
/// request.
#[allow(clippy::type_complexity)]
fn trace_request(text: &str) -> Option<Result<(Option<Value>, Option<String>), Value>> {
    if depth(text) > MAX_DEPTH || !text.contains("\"trace\"") {
        return None;
    }
    let req: Value = serde_json::from_str(text).ok()?;
    if req.get("execute").and_then(Value::as_str) != Some("trace") {
        return None;
    }
    let id = req.get("id").cloned();
    let args = req.get("arguments").cloned().unwrap_or(json!({}));
    let Some(args) = args.as_object() else {
        return Some(Err(error(id.as_ref(), "arguments must be an object")));
    };
    if let Some(k) = args.keys().find(|k| k.as_str() != "reader") {
        return Some(Err(error(
            id.as_ref(),
            &format!("trace takes no argument {k:?} (only \"reader\")"),
        )));
    }
    match args.get("reader") {
        None | Some(Value::Null) => Some(Ok((id, None))),
        Some(Value::String(r)) => Some(Ok((id, Some(r.clone())))),
        Some(_) => Some(Err(error(id.as_ref(), "reader must be a string"))),
    }
}

/// Starts sending this client an `APDU` event for every logical exchange on the reader (all
/// readers without one): folded and redacted by the slot ([`slot::TraceEvent`]). The trace
/// lasts as long as what it adds to `subscriptions`.
fn start_trace(
    service: &Service,
    writer: &Arc<Mutex<UnixStream>>,
    reader: Option<String>,
    id: Option<&Value>,
    subscriptions: &mut Vec<slot::Unsubscribe>,
) -> Value {
    if let Some(r) = &reader {
        let readers = service.readers();
        if !readers.iter().any(|x| &x.id == r) {
            let ids: Vec<&str> = readers.iter().map(|x| x.id.as_str()).collect();
            let card = service
                .cards()
                .into_iter()
                .find(|c| &c.id == r)
                .map(|c| match c.slot {
                    Some(s) => format!(" ({r:?} is a card, in {s})"),
                    None => format!(" ({r:?} is a card, in no reader)"),
                })
                .unwrap_or_default();
            return error(
                id,
                &format!("no reader {r:?}{card}; readers: {}", ids.join(", ")),
            );
        }
    }
    let (trace, unsubscribe) = service.registry().subscribe_trace_until(1024);
    subscriptions.push(unsubscribe);
    let w = writer.clone();
    let started = std::thread::Builder::new()
        .name("control-trace".into())
        .spawn(move || {
            for t in trace {
                let mine = reader
                    .as_ref()
                    .is_none_or(|r| crate::config::slot_in_reader(&t.slot, r));
                if !mine {
                    continue;
                }
                if let Err(e) = send(&w, &trace_json(&t)) {
                    // As for events (see `client`): a client that stops reading its trace is
                    // dropped, not left holding the connection with its trace gone quiet.
                    if stuck(&e) {
                        tracing::warn!(
                            "control: trace not taken within {WRITE_TIMEOUT:?} ({e}); client dropped"
                        );
                    }
                    if let Ok(s) = w.lock() {
                        let _ = s.shutdown(std::net::Shutdown::Both);
                    }
                    return;
                }
            }
        });
    let mut v = match started {
        Ok(_) => json!({"return": {}}),
        Err(e) => return error(id, &format!("cannot start the trace: {e}")),
    };
    if let Some(id) = id {
        v["id"] = id.clone();
    }
    v
}

/// A trace event as a QMP event.
pub fn trace_json(t: &slot::TraceEvent) -> Value {
    let e = &t.exchange;
    let hex = |b: &[u8]| apdu::hex::spaced(b).replace(' ', "");
    json!({
        "event": "APDU",
        "data": {
            "slot": t.slot,
            "card": t.card,
            "line": e.line,
            "header": hex(&e.header),
            "command": hex(&e.command_data),
            "command-redacted": e.command_redacted,
            "response": hex(&e.response_data),
            "response-redacted": e.response_redacted,
            "sw": format!("{:04X}", e.sw),
            "pieces": e.pieces,
            "micros": e.micros,
        },
        "timestamp": timestamp(),
    })
}

fn error(id: Option<&Value>, desc: &str) -> Value {
    let mut v = json!({"error": {"class": "GenericError", "desc": desc}});
    if let Some(id) = id {
        v["id"] = id.clone();
    }
    v
}

/// [`error`] for a request that is not one (not JSON, not in QMP's shape), logged with the
/// client: a hostile or broken client shows in the log, not only in its own answers.
fn refused(who: &str, id: Option<&Value>, desc: &str) -> Value {
    tracing::warn!(client = %who, "control: bad request: {desc}");
    error(id, desc)
}

/// One request line to its answer.
pub fn handle(text: &str, service: &Service, who: &str) -> Value {
    if depth(text) > MAX_DEPTH {
        return refused(who, None, &format!("nested deeper than {MAX_DEPTH} levels"));
    }
    // Its strings (a PIN, a PUK, a private key) are wiped when it is dropped, and so are the
    // arguments' below.
    let req = match serde_json::from_str(text) {
        Ok(v) => crate::secret::WipedJson(v),
        Err(e) => return refused(who, None, &format!("not JSON: {e}")),
    };
    let id = req.get("id");
    let Some(cmd) = req.get("execute").and_then(Value::as_str) else {
        return refused(
            who,
            id,
            "expected {\"execute\": COMMAND, \"arguments\": {...}}",
        );
    };
    let args = crate::secret::WipedJson(req.get("arguments").cloned().unwrap_or_else(|| json!({})));
    if !args.is_object() {
        return refused(who, id, "arguments must be an object");
    }
    match execute(cmd, &args, service) {
        Ok(ret) => {
            if !cmd.starts_with("query-") && cmd != "qmp_capabilities" {
                tracing::info!(client = %who, command = cmd, "control: done");
            }
            let mut v = json!({ "return": ret });
            if let Some(id) = id {
                v["id"] = id.clone();
            }
            v
        }
        Err(e) => {
            tracing::info!(client = %who, command = cmd, "control: refused: {e:#}");
            error(id, &format!("{e:#}"))
        }
    }
}

/// The commands, with the arguments each takes (unknown arguments are refused).
pub const COMMANDS: &[(&str, &[&str])] = &[
    ("qmp_capabilities", &[]),
    ("query-version", &[]),
    ("query-commands", &[]),
    ("query-readers", &[]),
    ("query-cards", &[]),
    ("query-console", &[]),
    (
        "card-add",
        &[
            "id",
            "profile",
            "keys",
            "ephemeral",
            "pin",
            "puk",
            "pin-tries",
            "properties",
            "reader",
        ],
    ),
    ("card-remove", &["id", "delete"]),
    ("card-insert", &["card", "reader"]),
    ("card-eject", &["reader", "card"]),
    (
        "reader-add",
        &[
            "id",
            "transport",
            "address",
            "mode",
            "owner",
            "group",
            "tls",
            "tls-verify-peer",
            "slots",
            "cards",
        ],
    ),
    ("reader-remove", &["id"]),
    ("trace", &["reader"]),
    ("config-reload", &[]),
    (
        "card-enroll",
        &[
            "card",
            "slot",
            "action",
            "algorithm",
            "subject",
            "certificate",
            "key",
        ],
    ),
    ("card-set-pin", &["card", "pin"]),
    ("card-unblock", &["card", "pin", "puk"]),
];

fn arg<'a>(args: &'a Value, name: &str) -> Result<&'a str> {
    args.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("argument {name:?} (a string) is missing"))
}

fn execute(cmd: &str, args: &Value, svc: &Service) -> Result<Value> {
    let Some((_, known)) = COMMANDS.iter().find(|(c, _)| *c == cmd) else {
        let names: Vec<&str> = COMMANDS.iter().map(|(c, _)| *c).collect();
        return Err(anyhow!(
            "unknown command {cmd:?}; commands: {}",
            names.join(", ")
        ));
    };
    if let Some(obj) = args.as_object() {
        if let Some(k) = obj.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(anyhow!(
                "{cmd} takes no argument {k:?} (it takes: {})",
                known.join(", ")
            ));
        }
    }
    Ok(match cmd {
        "qmp_capabilities" => json!({}),
        "query-console" => match svc.console_url() {
            Some(url) => json!({ "url": url }),
            None => {
                return Err(anyhow!(
                    "no console: give serve --console 127.0.0.1:PORT, or console in [service]"
                ))
            }
        },
        "query-version" => {
            json!({"vccid": env!("CARGO_PKG_VERSION"), "commit": env!("VCCID_COMMIT")})
        }
        "query-commands" => json!(COMMANDS
            .iter()
            .map(|(c, _)| json!({"name": c}))
            .collect::<Vec<_>>()),
        "query-readers" => serde_json::to_value(svc.readers())?,
        "query-cards" => serde_json::to_value(svc.cards())?,
        "card-add" => {
            let id = arg(args, "id")?;
            let text = |k: &str| args.get(k).and_then(Value::as_str).map(str::to_string);
            let properties = match args.get("properties") {
                None => Default::default(),
                Some(Value::Object(m)) => m
                    .iter()
                    .map(|(k, v)| {
                        v.as_str()
                            .map(|s| (k.clone(), s.to_string()))
                            .ok_or_else(|| anyhow!("properties.{k} must be a string"))
                    })
                    .collect::<Result<_>>()?,
                Some(_) => return Err(anyhow!("properties must be an object of strings")),
            };
            let pin_tries = match args.get("pin-tries") {
                None => None,
                Some(v) => Some(
                    v.as_u64()
                        .and_then(|n| u8::try_from(n).ok())
                        .ok_or_else(|| anyhow!("pin-tries must be a number 1..15"))?,
                ),
            };
            let c = CardConfig {
                id: toml::Spanned::new(0..0, id.to_string()),
                kind: CardKind::Emulated,
                profile: text("profile"),
                keys: text("keys"),
                ephemeral: args
                    .get("ephemeral")
                    .map(|v| {
                        v.as_bool()
                            .ok_or_else(|| anyhow!("ephemeral must be true or false"))
                    })
                    .transpose()?
                    .unwrap_or(false),
                pin: text("pin").map(zeroize::Zeroizing::new),
                pin_file: None,
                puk: text("puk").map(zeroize::Zeroizing::new),
                puk_file: None,
                pin_tries,
                properties,
                listen: None,
                reader: None,
            };
            // The slot is checked before the card is made: a refused card-add leaves nothing.
            if let Some(reader) = args.get("reader").and_then(Value::as_str) {
                svc.check_insert(reader)?;
            }
            let info = svc.add_card(c)?;
            if let Some(reader) = args.get("reader").and_then(Value::as_str) {
                svc.insert(id, reader)?;
                serde_json::to_value(svc.card_info(id)?)?
            } else {
                serde_json::to_value(info)?
            }
        }
        "card-remove" => {
            let delete = args.get("delete").and_then(Value::as_bool).unwrap_or(false);
            svc.remove_card(arg(args, "id")?, delete)?;
            json!({})
        }
        "card-insert" => {
            let slot = svc.insert(arg(args, "card")?, arg(args, "reader")?)?;
            json!({ "slot": slot })
        }
        "card-eject" => {
            let what = args
                .get("reader")
                .or_else(|| args.get("card"))
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("card-eject takes reader (a reader or slot) or card"))?;
            let (card, slot) = svc.eject(what)?;
            json!({"card": card, "slot": slot})
        }
        "reader-add" => {
            let text = |k: &str| args.get(k).and_then(Value::as_str).map(str::to_string);
            let transport: crate::config::Transport = serde_json::from_value(
                args.get("transport")
                    .cloned()
                    .ok_or_else(|| anyhow!("argument \"transport\" is missing"))?,
            )
            .map_err(|e| anyhow!("transport: {e}"))?;
            let cards = match args.get("cards") {
                None => Vec::new(),
                Some(v) => serde_json::from_value::<Vec<String>>(v.clone())
                    .map_err(|_| anyhow!("cards must be a list of card ids"))?,
            };
            let slots = match args.get("slots") {
                None => None,
                Some(v) => Some(
                    v.as_u64()
                        .and_then(|n| u8::try_from(n).ok())
                        .ok_or_else(|| anyhow!("slots must be a number 1..16"))?,
                ),
            };
            let r = crate::config::ReaderConfig {
                id: toml::Spanned::new(0..0, arg(args, "id")?.to_string()),
                transport,
                address: text("address"),
                mode: text("mode"),
                owner: text("owner"),
                group: text("group"),
                tls: text("tls").map(std::path::PathBuf::from),
                tls_verify_peer: args.get("tls-verify-peer").and_then(Value::as_bool),
                slots,
                cards,
            };
            serde_json::to_value(svc.add_reader(r)?)?
        }
        "reader-remove" => {
            svc.remove_reader(arg(args, "id")?)?;
            json!({})
        }
        "config-reload" => svc.reload_file().inspect_err(|e| {
            // As loud as SIGHUP's: the file on disk is not what runs.
            tracing::warn!("configuration not reloaded: {e:#}");
        })?,
        "card-enroll" => crate::enroll::card_enroll(svc, args)?,
        "card-set-pin" => crate::enroll::card_set_pin(svc, args)?,
        "card-unblock" => crate::enroll::card_unblock(svc, args)?,
        // Served by the connection's loop (`start_trace`): it streams to that client.
        "trace" => return Err(anyhow!("trace streams on a connection of its own")),
        _ => return Err(anyhow!("{cmd} is listed but not implemented")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_outside_strings() {
        assert_eq!(depth(r#"{"a": [1, {"b": "[[[["}]}"#), 3);
        assert_eq!(depth(&"[".repeat(1000)), 1000);
        assert_eq!(depth(r#""\"[""#), 0);
    }

    #[test]
    fn events_in_qmp_shape() {
        let v = event_json(&slot::Event::CardInserted {
            card: "alice".into(),
            slot: "vm1".into(),
        })
        .unwrap();
        assert_eq!(v["event"], "CARD_INSERTED");
        assert_eq!(v["data"], json!({"card": "alice", "slot": "vm1"}));
        assert!(v["timestamp"]["seconds"].as_u64().unwrap() > 1_700_000_000);
        assert!(event_json(&slot::Event::ApduDone {
            slot: "x".into(),
            ins: 0xA4,
            sw: 0x9000,
            micros: 1
        })
        .is_none());
    }
}
