//! The web console of `vccid serve` (issue #18): readers, cards and a live decoded trace in a
//! browser, served by axum (hyper) on loopback, assets embedded in the binary.
//!
//! Security, in the order a request meets it:
//! - the address is loopback, or the console is refused (it serves plaintext HTTP);
//! - the `Host` header must name this console (127.0.0.1:PORT, localhost:PORT, [::1]:PORT):
//!   a page of another site that rebinds its DNS name to 127.0.0.1 is refused (DNS rebinding);
//! - every request carries the token made at start (`?token=` or `Authorization: Bearer`),
//!   compared in constant time; without it, 403 (the page is served with the token in its
//!   script's and style's URLs, which a `<script src>` needs);
//! - a request with an `Origin` header (every cross-site fetch, form or EventSource) must come
//!   from this console's own origin; POSTs must have one;
//! - every answer has a strict Content-Security-Policy (scripts and styles from this origin
//!   only, no inline code, no framing), `no-referrer` (the token is in the page's URL) and
//!   `no-store`.
//!
//! Nothing is traced while nobody watches: the registry's trace is subscribed only while an
//! event stream is open (see [`Watchers`]), so a console nobody looks at costs nothing per
//! APDU. Secrets never reach it: the slot blanks them before the trace leaves it.

use crate::service::Service;
use anyhow::{anyhow, bail, Context, Result};
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

const INDEX: &str = include_str!("../console/index.html");
const APP_JS: &str = include_str!("../console/app.js");
const APP_CSS: &str = include_str!("../console/app.css");

/// The Content-Security-Policy of every answer.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                       connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                       form-action 'none'; frame-ancestors 'none'";

/// Exchanges kept for the pcap download, per console (the newest).
const RING: usize = 4096;

/// A running console.
pub struct Console {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The URL to open, token included.
    pub url: String,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the handlers share.
struct Shared {
    service: Arc<Service>,
    token: String,
    hosts: Vec<String>,
    origin: String,
    watchers: Arc<Watchers>,
}

/// The open event streams, and what the console keeps while there is one: the newest exchanges
/// (for the pcap).
#[derive(Default)]
struct Watchers {
    count: AtomicUsize,
    /// Whether the threads that feed the streams run (registry events, trace): one of each,
    /// however often streams come and go.
    events_fed: AtomicBool,
    trace_fed: AtomicBool,
    /// Senders of the open streams.
    streams: Mutex<Vec<tokio::sync::mpsc::Sender<SseEvent>>>,
    ring: Mutex<VecDeque<(String, apdu::trace::Exchange, SystemTime)>>,
}

impl Watchers {
    fn broadcast(&self, e: &SseEvent) {
        let mut streams = lock(&self.streams);
        streams.retain(|tx| match tx.try_send(e.clone()) {
            Ok(()) => true,
            // A slow page loses events rather than slowing the cards.
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => true,
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => false,
        });
        self.count.store(streams.len(), Ordering::Release);
    }

    fn watched(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    /// For a feeder that found nobody watching: gives up its place (`fed`), and says whether
    /// to stop. A stream that came meanwhile saw `fed` still set and started no feeder of its
    /// own: then the feeder takes its place back and goes on.
    fn stop_feeding(&self, fed: &AtomicBool) -> bool {
        fed.store(false, Ordering::SeqCst);
        !self.watched() || fed.swap(true, Ordering::SeqCst)
    }
}

/// Checks console settings as [`start`] would, without starting anything (`serve --check`).
pub fn check(addr: &str, tls: Option<&std::path::Path>) -> Result<()> {
    let a: SocketAddr = addr
        .parse()
        .with_context(|| format!("console {addr:?}: expected IP:PORT (127.0.0.1:8470)"))?;
    match tls {
        None if !a.ip().is_loopback() => bail!(
            "console {a}: not loopback: that needs TLS (console_tls, a `vccid tls init` \
             directory), or use loopback and an SSH tunnel"
        ),
        Some(dir) => {
            certificate_names(&dir.join("server-cert.pem"))
                .with_context(|| format!("console_tls {}", dir.display()))?;
        }
        None => {}
    }
    Ok(())
}

/// Starts the console on `addr` for `service`; returns where it is. Plain HTTP on loopback;
/// any other address only with `tls`, a QEMU `tls-creds-x509` directory whose server
/// certificate names the console: its names and addresses are then the only `Host`s taken.
pub fn start(addr: &str, tls: Option<&std::path::Path>, service: Arc<Service>) -> Result<Console> {
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("console address {addr:?}: expected IP:PORT"))?;
    if !addr.ip().is_loopback() && tls.is_none() {
        bail!(
            "the console listens on {addr}, not loopback: that needs TLS (console_tls in \
             [service], or --console-tls DIR, a `vccid tls init` directory), or use loopback \
             and an SSH tunnel"
        );
    }
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen for the console on {addr}"))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let mut raw = [0u8; 24];
    aws_lc_rs::rand::fill(&mut raw).map_err(|_| anyhow!("no random numbers for the token"))?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let port = addr.port();
    let (scheme, hosts, acceptor) = match tls {
        None => {
            let hosts = match addr {
                SocketAddr::V4(a) => {
                    vec![format!("{}:{port}", a.ip()), format!("localhost:{port}")]
                }
                SocketAddr::V6(a) => {
                    vec![format!("[{}]:{port}", a.ip()), format!("localhost:{port}")]
                }
            };
            ("http", hosts, None)
        }
        Some(dir) => {
            let opts = link::tls::TlsOptions {
                dir: dir.to_path_buf(),
                // Browsers have no client certificate; the token is the credential.
                verify_peer: false,
                server_name: None,
                on_certificate: Some(crate::expiry::warn),
            };
            let mut cfg = (*opts.server_config()?).clone();
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            let names = certificate_names(&dir.join("server-cert.pem"))?;
            let hosts: Vec<String> = names.iter().map(|n| format!("{n}:{port}")).collect();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
            ("https", hosts, Some(acceptor))
        }
    };
    let origin = format!("{scheme}://{}", hosts[0]);
    let url = format!("{origin}/?token={token}");
    let shared = Arc::new(Shared {
        service,
        token,
        hosts,
        origin,
        watchers: Arc::default(),
    });
    let app = Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/app.css", get(app_css))
        .route("/api/state", get(state))
        .route("/api/events", get(events))
        .route("/api/eject", post(eject))
        .route("/api/insert", post(insert))
        .route("/api/cards", post(add_card))
        .route("/api/pcap", get(pcap))
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared);
    std::thread::Builder::new()
        .name("console".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return tracing::warn!("console: no runtime: {e}"),
            };
            rt.block_on(async move {
                let l = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return tracing::warn!("console: {e}"),
                };
                let served = match acceptor {
                    None => axum::serve(l, app).await,
                    Some(acceptor) => axum::serve(TlsListener { tcp: l, acceptor }, app).await,
                };
                if let Err(e) = served {
                    tracing::warn!("console stopped: {e}");
                }
            });
        })?;
    Ok(Console { addr, url })
}

/// Constant-time comparison, so the token cannot be guessed a byte at a time by timing.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (status, Json(json!({ "error": why }))).into_response()
}

/// Host, token and Origin, for every request; the security headers on every answer.
async fn guard(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let h = req.headers();
    let host = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut answer = if !s.hosts.iter().any(|x| x == host) {
        tracing::warn!(host, "console: request for another host refused");
        let why = format!(
            "wrong Host {host:?}: this console answers to {} only (an SSH tunnel must keep \
             the port)",
            s.hosts.join(", ")
        );
        refuse(StatusCode::FORBIDDEN, &why)
    } else if !token_ok(&s, &req) {
        refuse(
            StatusCode::FORBIDDEN,
            "no token, or not this start's (the service makes a new one at every start): \
             open the URL `vccid ctl console-url` prints",
        )
    } else if !origin_ok(&s, h, req.method() == axum::http::Method::POST) {
        tracing::warn!("console: cross-origin request refused");
        refuse(
            StatusCode::FORBIDDEN,
            "cross-origin request (a POST must come from the console's own page; scripts use \
             the control socket)",
        )
    } else {
        next.run(req).await
    };
    let hs = answer.headers_mut();
    hs.insert("content-security-policy", HeaderValue::from_static(CSP));
    hs.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    hs.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    hs.insert("x-frame-options", HeaderValue::from_static("DENY"));
    hs.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    answer
}

fn token_ok(s: &Shared, req: &Request) -> bool {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let query = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
    bearer
        .or(query)
        .is_some_and(|t| same(t.as_bytes(), s.token.as_bytes()))
}

fn origin_ok(s: &Shared, h: &HeaderMap, post: bool) -> bool {
    let scheme = s.origin.split("://").next().unwrap_or("http");
    match h.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        Some(o) => s.hosts.iter().any(|x| o == format!("{scheme}://{x}")),
        // A browser sends Origin with every POST; something without one is not a page of ours.
        None => !post,
    }
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

async fn index(State(s): State<Arc<Shared>>) -> Response {
    let page = INDEX
        .replace("\"/app.css\"", &format!("\"/app.css?token={}\"", s.token))
        .replace("\"/app.js\"", &format!("\"/app.js?token={}\"", s.token));
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// Readers (with the host of each slot), cards, version.
fn state_json(s: &Shared) -> Value {
    let readers: Vec<Value> = s
        .service
        .readers()
        .into_iter()
        .map(|r| {
            let slots: Vec<Value> = r
                .slots
                .iter()
                .map(|sl| json!({"id": sl.id, "card": sl.card, "host": sl.host}))
                .collect();
            json!({"id": r.id, "transport": r.transport, "address": r.address, "slots": slots})
        })
        .collect();
    let cards: Vec<Value> = s
        .service
        .cards()
        .into_iter()
        .map(|c| {
            let mut v = serde_json::to_value(&c).unwrap_or(Value::Null);
            let d = s.service.enrollment().details(s.service.registry(), &c.id);
            v["pin_tries_left"] = json!(d.as_ref().and_then(|d| d.pin_tries_left));
            v["certificates"] = json!(d.map(|d| d.certificates).unwrap_or_default());
            v
        })
        .collect();
    json!({
        "version": format!("{} ({})", env!("CARGO_PKG_VERSION"), env!("VCCID_COMMIT")),
        "readers": readers,
        "cards": cards,
    })
}

async fn state(State(s): State<Arc<Shared>>) -> Json<Value> {
    Json(state_json(&s))
}

/// Runs a control-socket command for the page, through the same code as `vccid ctl`.
fn control(s: &Shared, command: &str, arguments: Value) -> Response {
    let req = json!({"execute": command, "arguments": arguments}).to_string();
    let answer = crate::control::handle(&req, &s.service, "console");
    match answer.get("error") {
        None => Json(json!({"ok": true})).into_response(),
        Some(e) => refuse(
            StatusCode::BAD_REQUEST,
            e["desc"].as_str().unwrap_or("refused"),
        ),
    }
}

fn field<'a>(body: &'a Value, k: &str) -> Option<&'a str> {
    body.get(k).and_then(Value::as_str)
}

async fn eject(State(s): State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    match field(&body, "what") {
        Some(w) => control(&s, "card-eject", json!({ "reader": w })),
        None => refuse(StatusCode::BAD_REQUEST, "what: a slot or card id"),
    }
}

async fn insert(State(s): State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    match (field(&body, "card"), field(&body, "reader")) {
        (Some(c), Some(r)) => control(&s, "card-insert", json!({"card": c, "reader": r})),
        _ => refuse(StatusCode::BAD_REQUEST, "card and reader"),
    }
}

async fn add_card(State(s): State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    let Some(id) = field(&body, "id") else {
        return refuse(StatusCode::BAD_REQUEST, "id");
    };
    let mut args = json!({"id": id, "ephemeral": true});
    if let Some(p) = field(&body, "profile") {
        args["profile"] = json!(p);
    }
    if let Some(r) = field(&body, "reader").filter(|r| !r.is_empty()) {
        args["reader"] = json!(r);
    }
    control(&s, "card-add", args)
}

/// An exchange for the page: the control socket's `APDU` event data (`control::trace_json`),
/// its time, and its detail (TLV trees, as `ctl trace` shows them).
fn apdu_json(t: &slot::TraceEvent) -> Value {
    let v = crate::control::trace_json(t);
    let mut d = v["data"].clone();
    d["seconds"] = v["timestamp"]["seconds"].clone();
    d["microseconds"] = v["timestamp"]["microseconds"].clone();
    d["detail"] = json!(apdu::trace::render_data(&t.exchange));
    d
}

/// Starts the threads that feed every stream, unless they run: registry events (state
/// changes) and the trace. Each ends at its next event once no stream is open, which
/// unsubscribes it: a console nobody watches subscribes to nothing.
fn feed(s: &Arc<Shared>) {
    if !s.watchers.events_fed.swap(true, Ordering::SeqCst) {
        feed_events(s);
    }
    if !s.watchers.trace_fed.swap(true, Ordering::SeqCst) {
        feed_trace(s);
    }
}

fn feed_events(s: &Arc<Shared>) {
    let w = s.watchers.clone();
    let events = s.service.registry().subscribe_with_capacity(256);
    let shared = s.clone();
    let _ = std::thread::Builder::new()
        .name("console-events".into())
        .spawn(move || {
            for e in events {
                if !w.watched() && w.stop_feeding(&w.events_fed) {
                    return;
                }
                if matches!(e, slot::Event::ApduDone { .. }) {
                    continue;
                }
                let data = state_json(&shared).to_string();
                w.broadcast(&SseEvent::default().event("state").data(data));
            }
        });
}

fn feed_trace(s: &Arc<Shared>) {
    let w = s.watchers.clone();
    let shared = s.clone();
    let trace = s.service.registry().subscribe_trace(1024);
    let _ = std::thread::Builder::new()
        .name("console-trace".into())
        .spawn(move || {
            for t in trace {
                if !w.watched() && w.stop_feeding(&w.trace_fed) {
                    return;
                }
                let now = SystemTime::now();
                // VERIFY, CHANGE REFERENCE DATA, RESET RETRY COUNTER change the PIN tries
                // the page shows: the state goes out after them.
                let pin_changed = matches!(t.exchange.header[1], 0x20 | 0x24 | 0x2C);
                let data = apdu_json(&t).to_string();
                {
                    let mut ring = lock(&w.ring);
                    if ring.len() == RING {
                        ring.pop_front();
                    }
                    ring.push_back((t.slot.clone(), t.exchange, now));
                }
                w.broadcast(&SseEvent::default().event("apdu").data(data));
                if pin_changed {
                    let state = state_json(&shared).to_string();
                    w.broadcast(&SseEvent::default().event("state").data(state));
                }
            }
        });
}

async fn events(State(s): State<Arc<Shared>>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<SseEvent>(1024);
    let first = SseEvent::default()
        .event("state")
        .data(state_json(&s).to_string());
    let _ = tx.try_send(first);
    {
        let mut streams = lock(&s.watchers.streams);
        streams.push(tx);
        s.watchers.count.store(streams.len(), Ordering::Release);
    }
    feed(&s);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[derive(serde::Deserialize)]
struct PcapQuery {
    reader: Option<String>,
}

/// The exchanges seen while the page watched, each at the time it happened, as a usbmon capture
/// of CCID XfrBlock / DataBlock pairs (what `--pcap` writes for a USB reader; for every transport here, from the
/// folded and redacted exchanges).
async fn pcap(State(s): State<Arc<Shared>>, Query(q): Query<PcapQuery>) -> Response {
    if let Some(r) = &q.reader {
        if !s.service.readers().iter().any(|x| &x.id == r) {
            return refuse(StatusCode::NOT_FOUND, &format!("no reader {r:?}"));
        }
    }
    let ring: Vec<_> = lock(&s.watchers.ring)
        .iter()
        .filter(|(slot, _, _)| {
            q.reader
                .as_ref()
                .is_none_or(|r| crate::config::slot_in_reader(slot, r))
        })
        .cloned()
        .collect();
    let bytes = match pcap_bytes(&ring) {
        Ok(b) => b,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let name = format!(
        "attachment; filename=\"vccid-{}.pcap\"",
        q.reader.as_deref().unwrap_or("all")
    );
    (
        [
            (
                header::CONTENT_TYPE,
                "application/vnd.tcpdump.pcap".to_string(),
            ),
            (header::CONTENT_DISPOSITION, name),
        ],
        bytes,
    )
        .into_response()
}

/// A capture of `exchanges`, each as one XfrBlock and its DataBlock (CCID §6.1.4, §6.2.1).
pub fn pcap_bytes(exchanges: &[(String, apdu::trace::Exchange, SystemTime)]) -> Result<Vec<u8>> {
    use ccid::usb::{Tap, Transfer};
    let buf = SharedBuf::default();
    // The exchanges are redacted already: nothing is left to blank.
    let mut tap = ccid::pcap::PcapTap::new(buf.clone())?.keep_secrets(true);
    // The configuration descriptor first, as a host reads it when the reader arrives: it is
    // how Wireshark knows the bulk endpoints carry CCID (interface class 0B).
    let config = ccid::descriptors::configuration();
    let setup = ccid::usb::Setup {
        request_type: 0x80,
        request: 6,
        value: 0x0200,
        index: 0,
        length: u16::try_from(config.len()).unwrap_or(u16::MAX),
    };
    tap.control(&setup, &[], &Transfer::Done(config));
    for (seq, (_, e, when)) in exchanges.iter().enumerate() {
        tap.at(Some(*when));
        let [cla, ins, p1, p2] = e.header;
        let mut cmd = apdu::CommandBuf::new(cla, ins, p1, p2).data(e.command_data.clone());
        // Le as the response's length, so Wireshark's APDU dissector reads it.
        if !e.response_data.is_empty() {
            cmd = cmd.le(u32::try_from(e.response_data.len()).unwrap_or(65_536));
        }
        let apdu = cmd.to_bytes().unwrap_or_else(|| e.header.to_vec());
        let seq = (seq % 256) as u8;
        let mut out = vec![ccid::message::pc_to_rdr::XFR_BLOCK];
        out.extend_from_slice(&(apdu.len() as u32).to_le_bytes());
        out.extend_from_slice(&[0, seq, 0, 0, 0]);
        out.extend_from_slice(&apdu);
        tap.out(
            ccid::descriptors::EP_BULK_OUT,
            &out,
            &Transfer::Done(Vec::new()),
        );
        let mut resp = e.response_data.clone();
        resp.extend_from_slice(&e.sw.to_be_bytes());
        let reply = ccid::message::reply(
            ccid::message::rdr_to_pc::DATA_BLOCK,
            0,
            seq,
            ccid::message::status(0, false),
            0,
            0,
            &resp,
        );
        tap.input(
            ccid::descriptors::EP_BULK_IN,
            reply.len(),
            &Transfer::Done(reply),
        );
    }
    drop(tap);
    let bytes = std::mem::take(&mut *lock(&buf.0));
    Ok(bytes)
}

/// A writer into a shared buffer (the tap owns its writer).
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The names and addresses a server certificate is for (its subjectAltName, RFC 5280
/// §4.2.1.6): the `Host`s the console over TLS takes. IPv6 addresses in brackets.
fn certificate_names(pem_path: &std::path::Path) -> Result<Vec<String>> {
    use x509_cert::der::{Decode, DecodePem};
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::SubjectAltName;
    let pem = std::fs::read(pem_path).with_context(|| format!("reading {}", pem_path.display()))?;
    let cert = x509_cert::Certificate::from_pem(&pem)
        .with_context(|| format!("{}: not a PEM certificate", pem_path.display()))?;
    let mut names = Vec::new();
    for ext in cert.tbs_certificate().extensions().into_iter().flatten() {
        if ext.extn_id != x509_cert::der::oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME {
            continue;
        }
        let san = SubjectAltName::from_der(ext.extn_value.as_bytes())?;
        for n in san.0 {
            match n {
                GeneralName::DnsName(d) => names.push(d.to_string()),
                GeneralName::IpAddress(ip) => match ip.as_bytes().len() {
                    4 => {
                        let b: [u8; 4] = ip.as_bytes().try_into().unwrap_or_default();
                        names.push(std::net::Ipv4Addr::from(b).to_string());
                    }
                    16 => {
                        let b: [u8; 16] = ip.as_bytes().try_into().unwrap_or_default();
                        names.push(format!("[{}]", std::net::Ipv6Addr::from(b)));
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    if names.is_empty() {
        bail!(
            "{}: the certificate names no host (subjectAltName): `vccid tls init DIR --name \
             HOST --ip ADDRESS` makes one that does",
            pem_path.display()
        );
    }
    // An address first: the URL printed then works without a name service.
    names.sort_by_key(|n| !(n.starts_with('[') || n.parse::<std::net::Ipv4Addr>().is_ok()));
    Ok(names)
}

/// TLS connections for axum: a handshake per accepted connection, at most 10 s; a client
/// that fails it is dropped and the next one accepted.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, peer) = match self.tcp.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("console: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let handshake = self.acceptor.accept(stream);
            match tokio::time::timeout(std::time::Duration::from_secs(10), handshake).await {
                Ok(Ok(tls)) => return (tls, peer),
                Ok(Err(e)) => tracing::info!(%peer, "console: TLS handshake failed: {e}"),
                Err(_) => tracing::info!(%peer, "console: TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
