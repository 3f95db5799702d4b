//! `vccid ctl`: the command-line client of the control socket (issue #15). Human output by
//! default, `--json` for scripts (the `return` value as it came), `events` streams events as
//! JSON lines, `wait` blocks until an event happens (for test scripts).

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `vccid ctl` options.
#[derive(clap::Args, Debug)]
pub struct CtlArgs {
    /// The control socket (default: $VCCID_CONTROL, else $XDG_RUNTIME_DIR/vccid/control.sock
    /// when it exists, else /run/vccid/control.sock, the packaged service's).
    #[arg(long, value_name = "PATH", global = true)]
    pub socket: Option<PathBuf>,
    /// Print the server's JSON answer instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCmd,
}

/// What to ask.
#[derive(clap::Subcommand, Debug)]
pub enum CtlCmd {
    /// The service's version.
    Version,
    /// The web console's URL, with the token every request needs (open it in a browser).
    ConsoleUrl,
    /// The readers, their slots and the cards in them.
    #[command(alias = "query-readers")]
    Readers,
    /// The cards.
    #[command(alias = "query-cards")]
    Cards,
    /// Cards: add, remove, insert, eject, enroll, set-pin, unblock.
    #[command(subcommand)]
    Card(CardCmd),
    /// Readers: add, remove.
    #[command(subcommand)]
    Reader(ReaderCmd),
    /// Read the configuration file again and apply what changed (as SIGHUP does).
    Reload,
    /// Print the libvirt device XML that gives a guest a reader or a passthru card
    ///
    /// For the reader NAME, a usbredir `<redirdev>` whose chardev connects to vccid's socket
    /// and reconnects when vccid restarts; for the passthru card NAME, a `<smartcard
    /// mode='passthrough'>`. vpcd and USB/IP readers are refused (they do not attach through
    /// libvirt). Name each reader after the guest it serves, put its socket in
    /// /run/vccid/readers with group vccid-readers, and add libvirt's QEMU user to that group
    /// (adduser libvirt-qemu vccid-readers). Then:
    ///
    /// vccid ctl libvirt-xml guest1 > guest1-card.xml
    ///
    /// virsh attach-device guest1 guest1-card.xml --persistent
    ///
    /// libvirt 9.0 hot-plugs (--live) a redirdev without reconnection: one in the domain's
    /// definition survives a vccid restart, one attached at run time does not until the guest
    /// restarts.
    LibvirtXml {
        /// The reader (or passthru card).
        name: String,
    },
    /// Stream events as JSON lines until interrupted.
    Events,
    /// A live, decoded trace of what the card sees, secrets always blanked
    ///
    /// Like tcpdump for the card: every command/response exchange on READER (every reader
    /// without it) from now on, until interrupted or --count exchanges, chaining and GET
    /// RESPONSE folded into one. The line names the application, the instruction, what P1/P2
    /// mean and the status word ("63C2 wrong PIN, 2 tries left"); the data follows as TLV
    /// trees. PINs, PUKs, management-key witnesses, imported keys and decipher outputs are
    /// blanked by the service before they reach the socket. Colours on a terminal (not with
    /// NO_COLOR set); --json prints each APDU event as it came, for tools.
    Trace {
        /// The reader (default: every reader).
        reader: Option<String>,
        /// Stop after this many exchanges.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// One line per exchange, without the data's TLV trees.
        #[arg(long)]
        brief: bool,
    },
    /// Wait for an event (card-inserted, card-ejected, host-connected, host-disconnected,
    /// reader-added, reader-removed, pin-blocked) about SUBJECT (a card or slot), at most
    /// --timeout seconds; exit status 1 on timeout. Only events after it starts count: start it
    /// before what it waits for.
    Wait {
        /// The event, e.g. card-inserted.
        event: String,
        /// A card or slot the event must name.
        subject: Option<String>,
        /// Seconds to wait.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Send one raw request (a JSON object) and print the answer.
    Raw {
        /// The request, e.g. '{"execute": "query-cards"}'.
        request: crate::secret::Secret,
    },
}

/// `vccid ctl card ...`.
#[derive(clap::Subcommand, Debug)]
pub enum CardCmd {
    /// Make a card (generated identities of its own unless --keys), optionally into a reader.
    Add {
        /// The card's id.
        id: String,
        /// cac, piv or cac+piv.
        #[arg(long)]
        profile: Option<String>,
        /// generated (default), default, files, certificates or pkcs11.
        #[arg(long)]
        keys: Option<String>,
        /// Keep nothing on disk.
        #[arg(long)]
        ephemeral: bool,
        /// Put it into this reader (or slot) at once.
        #[arg(long)]
        reader: Option<String>,
        /// More card properties, KEY=VALUE (as in --card), repeatable.
        #[arg(long = "property", value_name = "KEY=VALUE")]
        properties: Vec<crate::secret::SpecText>,
    },
    /// Remove a card (ejecting it first); --delete also deletes a generated card from disk.
    Remove {
        /// The card's id.
        id: String,
        /// Delete its identities and state.
        #[arg(long)]
        delete: bool,
    },
    /// Insert CARD into READER (its first empty slot) or a slot; a card in another reader
    /// moves.
    Insert {
        /// The card.
        card: String,
        /// The reader or slot.
        reader: String,
    },
    /// Eject the card of READER (or slot), or the named card.
    Eject {
        /// A reader, a slot, or a card.
        what: String,
    },
    /// Enroll a slot: --generate a key and print a request for it, --put-certificate,
    /// --import a key and certificate, --delete-certificate.
    Enroll(crate::enroll::EnrollArgs),
    /// Set the card's PIN (its retry counter full again).
    SetPin(crate::enroll::SetPinArgs),
    /// Unblock the card's PIN, setting it to PIN (PIV: with --puk, or an administrative reset).
    Unblock(crate::enroll::UnblockArgs),
}

/// `vccid ctl reader ...`.
#[derive(clap::Subcommand, Debug)]
pub enum ReaderCmd {
    /// Add and start a reader.
    Add {
        /// The reader's id.
        id: String,
        /// vpcd, usbredir, usbredir-connect or usbip.
        #[arg(long)]
        transport: String,
        /// HOST:PORT, or unix:PATH (usbredir).
        #[arg(long)]
        address: Option<String>,
        /// A unix socket's mode, octal.
        #[arg(long)]
        mode: Option<String>,
        /// A unix socket's group.
        #[arg(long)]
        group: Option<String>,
        /// Slots (USB readers).
        #[arg(long)]
        slots: Option<u8>,
        /// A card for the next slot, repeatable.
        #[arg(long = "card", value_name = "CARD")]
        cards: Vec<String>,
    },
    /// Stop and remove a reader (its cards stay, in no reader).
    Remove {
        /// The reader's id.
        id: String,
    },
}

/// A connection to the control socket, past its greeting.
pub struct Connection {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Events that arrived while waiting for an answer.
    pub pending_events: Vec<Value>,
}

impl Connection {
    /// Connects and reads the greeting.
    pub fn open(path: Option<PathBuf>) -> Result<Connection> {
        let (path, s) = match path {
            Some(p) => {
                let s = UnixStream::connect(&p);
                (p, s)
            }
            None => {
                let p = crate::control::client_path();
                let s = UnixStream::connect(&p);
                let system = PathBuf::from(crate::control::SYSTEM_PATH);
                match s {
                    // A socket left by a user's own `vccid serve` that is gone: the system
                    // service's, when there is one.
                    Err(e)
                        if e.kind() == std::io::ErrorKind::ConnectionRefused
                            && p != system
                            && system.exists()
                            && std::env::var_os("VCCID_CONTROL").is_none() =>
                    {
                        let s = UnixStream::connect(&system);
                        (system, s)
                    }
                    s => (p, s),
                }
            }
        };
        let s = s.map_err(|e| connect_error(&path, e))?;
        let writer = s.try_clone()?;
        let mut c = Connection {
            reader: BufReader::new(s),
            writer,
            pending_events: Vec::new(),
        };
        let greeting = c.next(None)?;
        // Turned away at the service's client limit: its error line comes in place of the
        // greeting.
        if let Some(why) = greeting["error"]["desc"].as_str() {
            bail!("{} refused this client: {why}", path.display());
        }
        if greeting.get("QMP").is_none() {
            bail!(
                "{} is not a vccid control socket: {greeting}",
                path.display()
            );
        }
        Ok(c)
    }

    /// The next message, waiting at most until `deadline`.
    fn next(&mut self, deadline: Option<Instant>) -> Result<Value> {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            bail!("timed out");
        }
        self.reader.get_ref().set_read_timeout(left)?;
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => bail!("the service closed the connection"),
            Ok(_) => Ok(serde_json::from_str(&line)
                .with_context(|| format!("not JSON from the service: {line:?}"))?),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                bail!("timed out")
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Sends a request and returns its `return` value, or its error as an error.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        // The arguments may carry a PIN, a PUK or a private key (set-pin, enroll --import).
        let req = crate::secret::WipedJson(json!({"execute": command, "arguments": arguments}));
        let answer = self.request(&req)?;
        match (answer.get("return"), answer.get("error")) {
            (Some(r), _) => Ok(r.clone()),
            (None, Some(e)) => bail!("{}", e["desc"].as_str().unwrap_or("error")),
            _ => bail!("unexpected answer: {answer}"),
        }
    }

    /// Sends a raw request and returns the whole answer (events meanwhile are kept).
    pub fn request(&mut self, req: &Value) -> Result<Value> {
        // Wiped after sending, and sized up front so that growing it leaves no copies behind
        // in freed memory: a request may carry a PIN or a private key.
        let mut line = zeroize::Zeroizing::new(Vec::with_capacity(16 * 1024));
        serde_json::to_writer(&mut *line, req)?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        loop {
            let v = self.next(Some(Instant::now() + Duration::from_secs(60)))?;
            if v.get("event").is_some() {
                self.pending_events.push(v);
            } else {
                return Ok(v);
            }
        }
    }

    /// The next event (kept ones first), waiting at most until `deadline`.
    pub fn next_event(&mut self, deadline: Option<Instant>) -> Result<Value> {
        if !self.pending_events.is_empty() {
            return Ok(self.pending_events.remove(0));
        }
        loop {
            let v = self.next(deadline)?;
            if v.get("event").is_some() {
                return Ok(v);
            }
        }
    }
}

fn print_readers(v: &Value) {
    for r in v.as_array().into_iter().flatten() {
        println!(
            "{}  {}  {}",
            r["id"].as_str().unwrap_or("?"),
            r["transport"].as_str().unwrap_or("?"),
            r["address"].as_str().unwrap_or("?")
        );
        for s in r["slots"].as_array().into_iter().flatten() {
            let host = s["host"]
                .as_str()
                .map(|h| format!("  (host: {h})"))
                .unwrap_or_default();
            println!(
                "  {}: {}{host}",
                s["id"].as_str().unwrap_or("?"),
                s["card"].as_str().unwrap_or("(empty)")
            );
        }
    }
}

fn print_cards(v: &Value) {
    for c in v.as_array().into_iter().flatten() {
        let mut what = vec![c["kind"].as_str().unwrap_or("?").to_string()];
        for k in ["profile", "keys"] {
            if let Some(s) = c[k].as_str() {
                what.push(s.to_string());
            }
        }
        if c["ephemeral"].as_bool() == Some(true) {
            what.push("ephemeral".into());
        }
        println!(
            "{}  {}  in {}",
            c["id"].as_str().unwrap_or("?"),
            what.join(" "),
            c["slot"].as_str().unwrap_or("no reader")
        );
    }
}

/// The libvirt XML of the reader or passthru card `name`.
fn libvirt_xml(c: &mut Connection, name: &str) -> Result<String> {
    let readers = c.execute("query-readers", json!({}))?;
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_string();
    if let Some(r) = readers
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["id"] == name)
    {
        let (transport, address) = (s(r, "transport"), s(r, "address"));
        return crate::libvirt::reader_xml(&crate::libvirt::Reader {
            id: name,
            transport: &transport,
            address: &address,
            tls: r["tls"].as_bool().unwrap_or(false),
        })
        .map_err(|e| anyhow!(e));
    }
    let cards = c.execute("query-cards", json!({}))?;
    if let Some(card) = cards
        .as_array()
        .into_iter()
        .flatten()
        .find(|k| k["id"] == name)
    {
        return match card["listen"].as_str() {
            Some(listen) => crate::libvirt::passthru_xml(name, listen).map_err(|e| anyhow!(e)),
            None => bail!(
                "card {name:?} is an {} card: it goes in a reader; ask for the reader's XML",
                s(card, "kind")
            ),
        };
    }
    let ids: Vec<String> = readers
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| s(r, "id"))
        .collect();
    bail!("no reader or card {name:?} (readers: {})", ids.join(", "))
}

/// Why the control socket could not be reached, and what to do.
fn connect_error(path: &std::path::Path, e: std::io::Error) -> anyhow::Error {
    use std::os::unix::fs::MetadataExt;
    let p = path.display();
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => match std::fs::metadata(path) {
            // The group may connect (mode 0660): the user is not in it.
            Ok(m) if m.mode() & 0o060 == 0o060 => {
                let g = name_of("/etc/group", m.gid());
                anyhow!(
                    "{p}: permission denied: only members of group {g} may use it \
                     (sudo adduser $USER {g}, then log in again)"
                )
            }
            Ok(m) => anyhow!(
                "{p}: permission denied: only its owner ({}) may use it (mode {:o})",
                name_of("/etc/passwd", m.uid()),
                m.mode() & 0o777
            ),
            Err(_) => anyhow!("{p}: permission denied ({e})"),
        },
        std::io::ErrorKind::NotFound => anyhow!(
            "{p} does not exist: is `vccid serve` running? (the packaged service: systemctl \
             status vccid; another socket: --socket PATH or VCCID_CONTROL)"
        ),
        std::io::ErrorKind::ConnectionRefused => {
            anyhow!("{p}: connection refused: the `vccid serve` that made it is gone")
        }
        _ => anyhow!("cannot connect to {p}: {e}"),
    }
}

/// A user's or group's name from /etc/passwd or /etc/group, else the number.
fn name_of(file: &str, id: u32) -> String {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .find_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            (f.nth(1)?.parse::<u32>().ok()? == id).then(|| name.to_string())
        })
        .unwrap_or_else(|| id.to_string())
}

/// One APDU event for a person: time, slot, the decoded line (coloured by its status word on
/// a terminal), the card's time, and with `trees` the command and response data as TLV trees
/// (a redacted side says so instead).
fn trace_text(e: &Value, colour: bool, trees: bool) -> String {
    let d = &e["data"];
    let s = |k: &str| d[k].as_str().unwrap_or("").to_string();
    let secs = e["timestamp"]["seconds"].as_u64().unwrap_or(0);
    let micros = e["timestamp"]["microseconds"].as_u64().unwrap_or(0);
    let t = format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60,
        micros / 1000
    );
    let sw = s("sw");
    let paint = |code: &str, text: &str| {
        if colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    };
    let line = match sw.as_str() {
        x if x.starts_with("90") || x.starts_with("61") => paint("32", &s("line")),
        x if x.starts_with("63") => paint("33", &s("line")),
        _ => paint("31", &s("line")),
    };
    let pieces = d["pieces"].as_u64().unwrap_or(1);
    let folded = if pieces > 1 {
        format!(", {pieces} pieces")
    } else {
        String::new()
    };
    let mut out = format!(
        "{t} {}  {line}  ({} µs{folded})\n",
        paint("36", &s("slot")),
        d["micros"].as_u64().unwrap_or(0)
    );
    if trees {
        let header = apdu::hex::parse(&s("header"))
            .and_then(|h| <[u8; 4]>::try_from(h).ok())
            .unwrap_or_default();
        for (side, redacted) in [
            ("command", "command-redacted"),
            ("response", "response-redacted"),
        ] {
            let bytes = apdu::hex::parse(&s(side)).unwrap_or_default();
            out += &apdu::trace::render_side(
                side,
                header,
                &bytes,
                d[redacted].as_bool() == Some(true),
            );
        }
    }
    out
}

/// Runs `vccid ctl`.
pub fn run(args: CtlArgs) -> Result<()> {
    let args_json = args.json;
    let mut c = Connection::open(args.socket)?;
    let show = |v: &Value, human: &dyn Fn(&Value)| {
        if args.json {
            println!("{v}");
        } else {
            human(v);
        }
    };
    match args.command {
        CtlCmd::Version => show(&c.execute("query-version", json!({}))?, &|v| {
            println!(
                "vccid {} ({})",
                v["vccid"].as_str().unwrap_or("?"),
                v["commit"].as_str().unwrap_or("?")
            )
        }),
        CtlCmd::Readers => show(&c.execute("query-readers", json!({}))?, &print_readers),
        CtlCmd::ConsoleUrl => show(&c.execute("query-console", json!({}))?, &|v| {
            println!("{}", v["url"].as_str().unwrap_or("?"))
        }),
        CtlCmd::LibvirtXml { name } => {
            let xml = libvirt_xml(&mut c, &name)?;
            if args.json {
                println!("{}", json!({ "xml": xml }));
            } else {
                print!("{xml}");
            }
        }
        CtlCmd::Cards => show(&c.execute("query-cards", json!({}))?, &print_cards),
        CtlCmd::Card(cmd) => match cmd {
            CardCmd::Add {
                id,
                profile,
                keys,
                ephemeral,
                reader,
                properties,
            } => {
                let mut a = json!({"id": id, "ephemeral": ephemeral});
                for (k, v) in [("profile", profile), ("keys", keys), ("reader", reader)] {
                    if let Some(v) = v {
                        a[k] = json!(v);
                    }
                }
                if !properties.is_empty() {
                    let mut m = serde_json::Map::new();
                    for p in properties {
                        let (k, v) = p
                            .split_once('=')
                            .ok_or_else(|| anyhow!("--property {p:?}: expected KEY=VALUE"))?;
                        m.insert(k.to_string(), json!(v));
                    }
                    a["properties"] = Value::Object(m);
                }
                let v = c.execute("card-add", a)?;
                show(&v, &|v| print_cards(&json!([v])));
            }
            CardCmd::Remove { id, delete } => {
                let v = c.execute("card-remove", json!({"id": id, "delete": delete}))?;
                show(&v, &|_| println!("card {id} removed"));
            }
            CardCmd::Insert { card, reader } => {
                let v = c.execute("card-insert", json!({"card": card, "reader": reader}))?;
                show(&v, &|v| {
                    println!("card {card} in {}", v["slot"].as_str().unwrap_or("?"))
                });
            }
            CardCmd::Eject { what } => {
                let v = c.execute("card-eject", json!({ "reader": what }))?;
                show(&v, &|v| {
                    println!(
                        "card {} ejected from {}",
                        v["card"].as_str().unwrap_or("?"),
                        v["slot"].as_str().unwrap_or("?")
                    )
                });
            }
            CardCmd::Enroll(a) => crate::enroll::ctl_enroll(&mut c, a, args.json)?,
            CardCmd::SetPin(a) => crate::enroll::ctl_set_pin(&mut c, a, args.json)?,
            CardCmd::Unblock(a) => crate::enroll::ctl_unblock(&mut c, a, args.json)?,
        },
        CtlCmd::Reader(ReaderCmd::Add {
            id,
            transport,
            address,
            mode,
            group,
            slots,
            cards,
        }) => {
            let mut a = json!({"id": id, "transport": transport, "cards": cards});
            for (k, v) in [("address", address), ("mode", mode), ("group", group)] {
                if let Some(v) = v {
                    a[k] = json!(v);
                }
            }
            if let Some(n) = slots {
                a["slots"] = json!(n);
            }
            let v = c.execute("reader-add", a)?;
            show(&v, &|v| print_readers(&json!([v])));
        }
        CtlCmd::Reader(ReaderCmd::Remove { id }) => {
            let v = c.execute("reader-remove", json!({ "id": id }))?;
            show(&v, &|_| println!("reader {id} removed"));
        }
        CtlCmd::Reload => {
            let v = c.execute("config-reload", json!({}))?;
            show(&v, &|v| {
                for (k, ids) in v.as_object().into_iter().flatten() {
                    let ids: Vec<&str> = ids
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    if !ids.is_empty() {
                        println!("{k}: {}", ids.join(", "));
                    }
                }
            });
        }
        CtlCmd::Trace {
            reader,
            count,
            brief,
        } => {
            let arguments = match &reader {
                Some(r) => json!({ "reader": r }),
                None => json!({}),
            };
            c.execute("trace", arguments)?;
            let colour = !args_json
                && std::io::IsTerminal::is_terminal(&std::io::stdout())
                && std::env::var_os("NO_COLOR").is_none();
            let mut out = std::io::stdout().lock();
            let mut seen = 0u64;
            while count.is_none_or(|n| seen < n) {
                let e = c.next_event(None)?;
                // A card arriving or leaving the traced reader belongs in its story.
                let card_event =
                    matches!(e["event"].as_str(), Some("CARD_INSERTED" | "CARD_EJECTED"))
                        && reader.as_ref().is_none_or(|r| {
                            let slot = e["data"]["slot"].as_str().unwrap_or("");
                            crate::config::slot_in_reader(slot, r)
                        });
                if card_event {
                    if args_json {
                        writeln!(out, "{e}")?;
                    } else {
                        let what = if e["event"] == "CARD_INSERTED" {
                            "inserted into"
                        } else {
                            "ejected from"
                        };
                        writeln!(
                            out,
                            "-- card {} {what} {}",
                            e["data"]["card"].as_str().unwrap_or("?"),
                            e["data"]["slot"].as_str().unwrap_or("?")
                        )?;
                    }
                    out.flush()?;
                    continue;
                }
                if e["event"] != "APDU" {
                    continue;
                }
                seen += 1;
                if args_json {
                    writeln!(out, "{e}")?;
                } else {
                    write!(out, "{}", trace_text(&e, colour, !brief))?;
                }
                out.flush()?;
            }
        }
        CtlCmd::Events => {
            let mut out = std::io::stdout().lock();
            loop {
                let e = c.next_event(None)?;
                writeln!(out, "{e}")?;
                out.flush()?;
            }
        }
        CtlCmd::Wait {
            event,
            subject,
            timeout,
        } => {
            let name = event.to_uppercase().replace('-', "_");
            const EVENTS: &[&str] = &[
                "CARD_INSERTED",
                "CARD_EJECTED",
                "READER_ADDED",
                "READER_REMOVED",
                "HOST_CONNECTED",
                "HOST_DISCONNECTED",
                "PIN_BLOCKED",
            ];
            if !EVENTS.contains(&name.as_str()) {
                bail!(
                    "no event {event:?}; events: {}",
                    EVENTS
                        .iter()
                        .map(|e| e.to_lowercase().replace('_', "-"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            let deadline = Instant::now() + Duration::from_secs(timeout);
            loop {
                let e = match c.next_event(Some(deadline)) {
                    Ok(e) => e,
                    Err(_) if Instant::now() >= deadline => {
                        eprintln!("vccid ctl: no {event} within {timeout} s");
                        std::process::exit(1);
                    }
                    Err(e) => return Err(e),
                };
                let about = |k: &str| e["data"][k].as_str() == subject.as_deref();
                if e["event"] == name.as_str()
                    && (subject.is_none() || about("card") || about("slot"))
                {
                    show(&e, &|e| println!("{}", e["event"].as_str().unwrap_or("?")));
                    return Ok(());
                }
            }
        }
        CtlCmd::Raw { request } => {
            let req = crate::secret::WipedJson(
                serde_json::from_str(&request).context("the request is not JSON")?,
            );
            println!("{}", c.request(&req)?);
        }
    }
    Ok(())
}
