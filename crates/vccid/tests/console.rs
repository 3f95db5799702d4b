//! The web console of `vccid serve` (issue #18) over HTTP, with curl inside the service's
//! private namespaces (where the console listens): the token, the Host and Origin checks and
//! the Content-Security-Policy; the state; the live trace as server-sent events while OpenSC
//! signs (VERIFY blanked, the PIN nowhere); eject and insert seen by pcscd; the pcap download
//! read by tshark. The browser itself is driven in console_browser.rs.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use testkit::{text, CommandExt, PrivatePcscd};

mod common;
use common::{Served, VCCID};

const PIN: &str = "31415926";

struct Console {
    s: Served,
    url: String,
    /// http://127.0.0.1:PORT
    origin: String,
    token: String,
    /// The console's `vccid tls init` directory, if it has one.
    tls: Option<tempfile::TempDir>,
}

const CONFIG: &str = r#"
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

/// `vccid serve --console 127.0.0.1:0` with one card in a vpcd reader, inside a private
/// pcscd's namespaces.
fn start() -> Console {
    start_with(&["--console", "127.0.0.1:0"], None)
}

/// The same with these console options; `tls`: the arguments of a `vccid tls init` directory
/// to make first and serve the console with.
fn start_with(console: &[&str], tls: Option<&[&str]>) -> Console {
    let tls = tls.map(|args| {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(VCCID)
            .args(["tls", "init"])
            .arg(dir.path())
            .args(args)
            .output_within(testkit::TOOL_TIMEOUT)
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        dir
    });
    let mut args = console.to_vec();
    let tls_dir = tls.as_ref().map(|d| d.path().display().to_string());
    if let Some(d) = &tls_dir {
        args.extend(["--console-tls", d]);
    }
    let s = Served::start_with(CONFIG, &args);
    let mut url = String::new();
    testkit::wait_for("the console's URL", Duration::from_secs(30), || {
        url = s
            .log()
            .lines()
            .find_map(|l| l.strip_prefix("vccid: console: "))
            .unwrap_or("")
            .to_string();
        !url.is_empty()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", s.log()));
    let (origin, token) = url.split_once("/?token=").expect("URL with a token");
    s.wait_card(0);
    Console {
        origin: origin.to_string(),
        token: token.to_string(),
        url,
        s,
        tls,
    }
}

impl Console {
    /// curl inside the namespaces: status code, headers and body.
    fn curl(&self, args: &[&str]) -> (u16, String, String) {
        let out = self
            .s
            .pcscd
            .command("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-D",
                "-",
                "-o",
                "/dev/stdout",
                "-w",
                "\n%{http_code}",
            ])
            .args(args)
            .output_within(testkit::TOOL_TIMEOUT)
            .unwrap();
        let t = String::from_utf8_lossy(&out.stdout).to_string();
        let (rest, code) = t.trim_end().rsplit_once('\n').unwrap_or(("", "0"));
        let (headers, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
        (
            code.trim().parse().unwrap_or(0),
            headers.to_lowercase(),
            body.to_string(),
        )
    }

    fn with_token(&self, path: &str) -> String {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("{}{path}{sep}token={}", self.origin, self.token)
    }

    fn post(&self, path: &str, body: &str, origin: &str) -> (u16, String, String) {
        let auth = format!("Authorization: Bearer {}", self.token);
        let origin = format!("Origin: {origin}");
        self.curl(&[
            "-X",
            "POST",
            "-H",
            &auth,
            "-H",
            &origin,
            "-H",
            "Content-Type: application/json",
            "--data",
            body,
            &format!("{}{path}", self.origin),
        ])
    }

    /// An event stream read for `seconds`, in the background.
    fn events(&self, seconds: u32) -> Child {
        self.s
            .pcscd
            .command("curl")
            .args(["-sS", "-N", "--max-time", &seconds.to_string()])
            .arg(self.with_token("/api/events"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
}

#[test]
fn the_console_needs_its_token_its_host_and_its_origin() {
    let c = start();
    // No token, a wrong one: 403, with the security headers anyway.
    let (code, headers, _) = c.curl(&[&format!("{}/", c.origin)]);
    assert_eq!(code, 403);
    assert!(
        headers.contains("content-security-policy: default-src 'none'"),
        "{headers}"
    );
    let (code, _, _) = c.curl(&[&format!("{}/?token=00{}", c.origin, &c.token[2..])]);
    assert_eq!(code, 403, "a wrong token");
    // The URL serve printed: the page, its script and style, with the strict policy.
    let (code, headers, body) = c.curl(&[&c.url]);
    assert_eq!(code, 200, "{body}");
    assert!(headers.contains(&format!(
        "content-security-policy: {}",
        vccid::console::CSP.to_lowercase()
    )));
    assert!(
        headers.contains("referrer-policy: no-referrer"),
        "{headers}"
    );
    assert!(body.contains("app.js"), "{body}");
    // The page names its script and style with the token; without it they are refused too.
    for asset in ["/app.js", "/app.css"] {
        assert!(
            body.contains(&format!("\"{asset}?token={}\"", c.token)),
            "{body}"
        );
        let (code, _, _) = c.curl(&[&c.with_token(asset)]);
        assert_eq!(code, 200, "{asset}");
        let (code, _, _) = c.curl(&[&format!("{}{asset}", c.origin)]);
        assert_eq!(code, 403, "{asset} without the token");
    }
    // DNS rebinding: the right token, another Host.
    let (code, _, body) = c.curl(&["-H", "Host: evil.example:80", &c.with_token("/api/state")]);
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("answers to 127.0.0.1:"),
        "the refusal names the hosts: {body}"
    );
    // A capture of a reader that does not exist.
    let (code, _, _) = c.curl(&[&c.with_token("/api/pcap?reader=nope")]);
    assert_eq!(code, 404);
    // Cross-site: a POST from another origin, and one with no Origin at all.
    let (code, _, _) = c.post("/api/eject", r#"{"what": "r0"}"#, "http://evil.example");
    assert_eq!(code, 403);
    let (code, _, _) = c.curl(&[
        "-X",
        "POST",
        "-H",
        &format!("Authorization: Bearer {}", c.token),
        "-H",
        "Content-Type: application/json",
        "--data",
        r#"{"what": "r0"}"#,
        &format!("{}/api/eject", c.origin),
    ]);
    assert_eq!(code, 403, "a POST without Origin");
    // Nothing was ejected by any of them.
    c.s.pcscd.wait_card(0, Duration::from_secs(2)).unwrap();
    // The state: the reader, the card with its certificate and PIN tries.
    let (code, _, body) = c.curl(&[&c.with_token("/api/state")]);
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["readers"][0]["id"], "r0", "{v}");
    assert_eq!(v["readers"][0]["slots"][0]["card"], "alice", "{v}");
    assert_eq!(v["cards"][0]["pin_tries_left"], 3, "{v}");
    assert!(
        v["cards"][0]["certificates"][0]["subject"]
            .as_str()
            .is_some_and(|s| s.contains("CN=")),
        "{v}"
    );
    // The URL from the control socket is the same.
    let out = Command::new(VCCID)
        .args(["ctl", "--socket"])
        .arg(&c.s.socket)
        .arg("console-url")
        .output_within(testkit::TOOL_TIMEOUT)
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        c.url,
        "{}",
        text(&out)
    );
}

#[test]
fn the_console_streams_the_trace_ejects_inserts_and_exports_a_pcap() {
    let c = start();
    let mut stream = c.events(12);
    std::thread::sleep(Duration::from_secs(1));
    c.s.pcscd
        .sign_and_verify("0001", PIN, &c.s.ids.join("cert1.crt.pem"))
        .unwrap();
    // Eject and insert, as the page's buttons do.
    let (code, _, body) = c.post("/api/eject", r#"{"what": "r0"}"#, &c.origin);
    assert_eq!(code, 200, "{body}");
    c.s.pcscd.wait_no_card(0, Duration::from_secs(10)).unwrap();
    let (code, _, body) = c.post(
        "/api/insert",
        r#"{"card": "alice", "reader": "r0"}"#,
        &c.origin,
    );
    assert_eq!(code, 200, "{body}");
    c.s.pcscd.wait_card(0, Duration::from_secs(10)).unwrap();
    // An ephemeral card, and a refusal the page shows.
    let (code, _, body) = c.post(
        "/api/cards",
        r#"{"id": "eph1", "profile": "piv"}"#,
        &c.origin,
    );
    assert_eq!(code, 200, "{body}");
    let (code, _, body) = c.post(
        "/api/insert",
        r#"{"card": "eph1", "reader": "nope"}"#,
        &c.origin,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("nope"), "{body}");
    // The pcap of what was traced while the page watched.
    let pcap = c.s.pcscd.dir.path().join("trace.pcap");
    let out =
        c.s.pcscd
            .command("curl")
            .args(["-sS", "--max-time", "10", "-o"])
            .arg(&pcap)
            .arg(c.with_token("/api/pcap?reader=r0"))
            .output_within(testkit::TOOL_TIMEOUT)
            .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let mut stream_out = String::new();
    let _ = testkit::wait_child(&mut stream, Duration::from_secs(20), "curl -N");
    std::io::Read::read_to_string(stream.stdout.as_mut().unwrap(), &mut stream_out).unwrap();
    assert!(stream_out.contains("event: state"), "{stream_out}");
    assert!(stream_out.contains("event: apdu"), "{stream_out}");
    assert_eq!(
        stream_out
            .matches("VERIFY PIN [8 bytes redacted] → 9000")
            .count(),
        1,
        "one login, one VERIFY: {stream_out}"
    );
    assert!(stream_out.contains("SIGN/DECRYPT"), "{stream_out}");
    assert!(
        stream_out.contains("\"card\":null"),
        "the ejection in a state event"
    );
    let pin_hex: String = PIN.bytes().map(|b| format!("{b:02X}")).collect();
    assert!(!stream_out.contains(PIN) && !stream_out.contains(&pin_hex));
    // tshark reads the capture as CCID with the APDUs inside.
    let (xfr, data_blocks) = testkit::ccid_blocks(&pcap).unwrap();
    assert!(xfr >= 5, "XfrBlock {xfr}");
    assert!(data_blocks >= 5, "DataBlock {data_blocks}");
    // The APDUs inside, with the decoding the README gives; the records carry the exchanges'
    // times (the signing came before the eject, seconds before the download).
    let out = Command::new("tshark")
        .args(["-r"])
        .arg(&pcap)
        .args([
            "-d",
            "usbccid.subdissector,iso7816",
            "-Y",
            "iso7816.apdu.ins",
        ])
        .args([
            "-T",
            "fields",
            "-e",
            "iso7816.apdu.ins",
            "-e",
            "frame.time_epoch",
        ])
        .output_within(testkit::TOOL_TIMEOUT)
        .unwrap();
    let rows = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        rows.lines().any(|l| l.starts_with("0x20")),
        "VERIFY decoded: {}",
        text(&out)
    );
    let times: Vec<f64> = rows
        .lines()
        .filter_map(|l| l.split('\t').nth(1)?.parse().ok())
        .collect();
    let spread = times.iter().cloned().fold(f64::MIN, f64::max)
        - times.iter().cloned().fold(f64::MAX, f64::min);
    assert!(times.len() >= 5 && spread > 0.001, "exchange times: {rows}");
    let bytes = std::fs::read(&pcap).unwrap();
    assert!(
        !bytes.windows(PIN.len()).any(|w| w == PIN.as_bytes()),
        "the PIN in the pcap"
    );
}

// --- The real browser: Debian's headless Chromium through chromedriver (WebDriver) ---------

use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use std::path::Path;

/// chromedriver inside the service's network namespace (so Chromium is there too), in a
/// process group of its own (killing the group takes Chromium with it).
struct Chromedriver {
    child: Child,
    port: u16,
}

impl Chromedriver {
    /// Called from a thread already in `netns`: the port is picked and probed there.
    fn start(netns: &Path, dir: &Path) -> Chromedriver {
        use std::os::unix::process::CommandExt as _;
        let port = testkit::free_port().unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["--", "chromedriver"])
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                dir.join("chromedriver.log").display()
            ))
            .env("XDG_CONFIG_HOME", dir.join("xdg-config"))
            .env("XDG_CACHE_HOME", dir.join("xdg-cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver starts (apt-get install chromium-driver)");
        let d = Chromedriver { child, port };
        testkit::wait_for("chromedriver", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .unwrap();
        d
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let pgid = -(self.child.id() as i32);
        // SAFETY: kill(2) on our own child's process group; no memory is touched.
        unsafe { libc::kill(pgid, libc::SIGTERM) };
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: as above.
        unsafe { libc::kill(pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// chromedriver's browser log (`POST /session/{id}/se/log`), drained by each call.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }
    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(serde_json::json!({"type": "browser"}).to_string()),
        )
    }
}

/// The browser log's (level, message) pairs since the last call.
async fn browser_log(client: &Client) -> Vec<(String, String)> {
    let v = client.issue_cmd(BrowserLog).await.expect("the browser log");
    v.as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["level"].as_str().unwrap_or("").to_string(),
                e["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn capabilities(profile: &Path) -> Capabilities {
    let caps = serde_json::json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                // A name that resolves to the console: a DNS-rebinding page's Host.
                "--host-resolver-rules=MAP rebind.test 127.0.0.1",
                format!("--user-data-dir={}", profile.display()),
            ],
        },
        "goog:loggingPrefs": {"browser": "ALL"},
    });
    match caps {
        serde_json::Value::Object(m) => m,
        _ => unreachable!("a JSON object"),
    }
}

/// The HTTP status of the page the browser shows.
async fn page_status(client: &Client) -> u64 {
    client
        .execute(
            "return performance.getEntriesByType('navigation')[0].responseStatus;",
            vec![],
        )
        .await
        .unwrap()
        .as_u64()
        .unwrap_or(0)
}

async fn wait_for(client: &Client, xpath: &str) -> fantoccini::elements::Element {
    client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::XPath(xpath))
        .await
        .unwrap_or_else(|e| panic!("no {xpath}: {e}"))
}

#[test]
fn a_real_browser_watches_the_trace_ejects_and_inserts() {
    let c = Arc::new(start());
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshot.png");
    let c2 = c.clone();
    let netns = c.s.pcscd.netns_path();
    // The WebDriver client on a thread of its own that moves into the service's network
    // namespace (setns moves only the calling thread), with a runtime on that thread.
    std::thread::spawn(move || {
        let f = std::fs::File::open(&netns).unwrap();
        // SAFETY: setns(2) with a namespace file descriptor we own; it moves only this thread.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(browse(&c2, &netns, &shot));
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p));
    println!(
        "screenshot: {}",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/console-screenshot.png")
            .display()
    );
}

async fn browse(c: &Console, netns: &Path, shot: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let driver = Chromedriver::start(netns, dir.path());
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities(&dir.path().join("profile")))
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session");
    // 1. Without the token: refused.
    client.goto(&format!("{}/", c.origin)).await.unwrap();
    assert_eq!(page_status(&client).await, 403);
    // 2. A DNS-rebinding name for the console, with the right token: refused by Host.
    let port = c.origin.rsplit(':').next().unwrap();
    client
        .goto(&format!("http://rebind.test:{port}/?token={}", c.token))
        .await
        .unwrap();
    assert_eq!(page_status(&client).await, 403, "a wrong Host");
    let refused = browser_log(&client).await;
    assert!(
        refused
            .iter()
            .filter(|(l, _)| l == "SEVERE")
            .all(|(_, m)| m.contains("status of 403")),
        "only the refusals: {refused:?}"
    );
    // 3. The console: readers and cards appear, the stream is live.
    client.goto(&c.url).await.unwrap();
    assert_eq!(page_status(&client).await, 200);
    wait_for(
        &client,
        "//tr[contains(@class,'slot-row') and @data-slot='r0']",
    )
    .await;
    wait_for(&client, "//tr[@data-card='alice']").await;
    wait_for(&client, "//*[@id='conn' and @data-state='live']").await;
    // 4. OpenSC signs on the host: the trace shows SELECT, VERIFY (redacted) and the signature.
    c.s.pcscd
        .sign_and_verify("0001", PIN, &c.s.ids.join("cert1.crt.pem"))
        .unwrap();
    wait_for(
        &client,
        "//details[contains(@class,'apdu-row')][contains(.,'SELECT')]",
    )
    .await;
    wait_for(
        &client,
        "//details[contains(@class,'apdu-row')][contains(.,'VERIFY PIN [8 bytes redacted]')]",
    )
    .await;
    let sign = wait_for(
        &client,
        "//details[contains(@class,'apdu-row')][contains(.,'SIGN/DECRYPT') and contains(.,'(256 bytes)')]",
    )
    .await;
    sign.click().await.unwrap();
    let page = client.source().await.unwrap();
    assert!(!page.contains(PIN), "the PIN on the page");
    // 5. Eject: pcscd sees the card go; insert: it comes back.
    client
        .find(Locator::Css("button.eject[data-slot='r0']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.s.pcscd.wait_no_card(0, Duration::from_secs(15)).unwrap();
    wait_for(
        &client,
        "//select[contains(@class,'insert-card') and @data-slot='r0']/option[@value='alice']",
    )
    .await;
    client
        .find(Locator::Css("select.insert-card[data-slot='r0']"))
        .await
        .unwrap()
        .select_by_value("alice")
        .await
        .unwrap();
    client
        .find(Locator::Css("button.insert[data-slot='r0']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.s.pcscd.wait_card(0, Duration::from_secs(15)).unwrap();
    wait_for(
        &client,
        "//tr[contains(@class,'slot-row') and @data-slot='r0'][contains(.,'alice')]",
    )
    .await;
    // 6. A cross-origin page posting to the console (an attacker's page the user opens): refused,
    //    the card stays in.
    let attack = format!(
        "data:text/html,<script>fetch('{}/api/eject',{{method:'POST',headers:{{'Content-Type':'application/json','Authorization':'Bearer {}'}},body:JSON.stringify({{what:'r0'}})}}).then(r=>document.title='status '+r.status).catch(e=>document.title='blocked')</script>",
        c.origin, c.token
    );
    client.goto(&attack).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut title = String::new();
    while std::time::Instant::now() < deadline {
        title = client.title().await.unwrap_or_default();
        if !title.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(title == "blocked" || title == "status 403", "{title}");
    c.s.pcscd.wait_card(0, Duration::from_secs(2)).unwrap();
    let _ = browser_log(&client).await;
    // 7. The console again for the screenshot; its log has no errors.
    client.goto(&c.url).await.unwrap();
    wait_for(&client, "//tr[@data-card='alice']").await;
    c.s.pcscd
        .sign_and_verify("0001", PIN, &c.s.ids.join("cert1.crt.pem"))
        .unwrap();
    let row = wait_for(
        &client,
        "//details[contains(@class,'apdu-row')][contains(.,'GET DATA') or contains(.,'READ BUFFER')]",
    )
    .await;
    row.click().await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let png = client.screenshot().await.unwrap();
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    std::fs::write(shot, png).unwrap();
    let log = browser_log(&client).await;
    let errors: Vec<_> = log.iter().filter(|(l, _)| l == "SEVERE").collect();
    assert!(errors.is_empty(), "the console's browser log: {errors:?}");
    client.close().await.unwrap();
    drop(driver);
}

/// Off loopback only with TLS: refused without it; with a `vccid tls init` directory, https
/// with its certificate, the certificate's names as the only Hosts, and no plaintext.
#[test]
fn the_console_off_loopback_needs_tls() {
    // Without TLS, serve refuses to start and says why.
    let pcscd = PrivatePcscd::start().unwrap();
    let out = pcscd
        .command(VCCID)
        .args(["serve", "--console", "0.0.0.0:0"])
        .env("XDG_CONFIG_HOME", pcscd.dir.path())
        .env("XDG_RUNTIME_DIR", pcscd.dir.path())
        .env("XDG_DATA_HOME", pcscd.dir.path())
        .output_within(testkit::TOOL_TIMEOUT)
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("needs TLS"), "{}", text(&out));
    // `serve --check` refuses it as serve would.
    let out = pcscd
        .command(VCCID)
        .args(["serve", "--check", "--console", "0.0.0.0:8470"])
        .env("XDG_CONFIG_HOME", pcscd.dir.path())
        .output_within(testkit::TOOL_TIMEOUT)
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("needs TLS"), "{}", text(&out));
    drop(pcscd);

    let c = start_with(
        &["--console", "0.0.0.0:0"],
        Some(&["--name", "vccid.test", "--ip", "127.0.0.1"]),
    );
    assert!(c.url.starts_with("https://127.0.0.1:"), "{}", c.url);
    let ca = c
        .tls
        .as_ref()
        .expect("a TLS directory")
        .path()
        .join("ca-cert.pem");
    let ca = ca.to_string_lossy();
    let (code, headers, body) = c.curl(&["--cacert", &ca, &c.url]);
    assert_eq!(code, 200, "{body}");
    assert!(headers.contains("content-security-policy"), "{headers}");
    // By the certificate's DNS name too; not by a name it does not carry.
    let port = c.origin.rsplit(':').next().unwrap();
    let resolve = format!("vccid.test:{port}:127.0.0.1");
    let by_name = format!("https://vccid.test:{port}/api/state?token={}", c.token);
    let (code, _, body) = c.curl(&["--cacert", &ca, "--resolve", &resolve, &by_name]);
    assert_eq!(code, 200, "{body}");
    let (code, _, _) = c.curl(&[
        "--cacert",
        &ca,
        "-H",
        &format!("Host: evil.example:{port}"),
        &c.with_token("/api/state"),
    ]);
    assert_eq!(code, 403);
    // Plain HTTP on the TLS port gets no page.
    let (code, _, _) = c.curl(&[&c.with_token("/api/state").replace("https://", "http://")]);
    assert_ne!(code, 200);
}

/// Regression (review of issue #18): a page that left while its feeders were still subscribed
/// (one event after it left, none since) must not make the next page's stream fed twice: the
/// state after one insertion arrives once.
#[test]
fn a_stream_after_a_page_left_is_fed_once() {
    let c = start();
    let mut gone = c.events(1);
    let _ = testkit::wait_child(&mut gone, Duration::from_secs(10), "curl -N");
    // One registry event with nobody watching: the feeder finds the stream gone, and stays
    // subscribed until the next event.
    let (code, _, body) = c.post("/api/eject", r#"{"what": "r0"}"#, &c.origin);
    assert_eq!(code, 200, "{body}");
    c.s.pcscd.wait_no_card(0, Duration::from_secs(10)).unwrap();
    let mut stream = c.events(4);
    std::thread::sleep(Duration::from_secs(1));
    let (code, _, body) = c.post(
        "/api/insert",
        r#"{"card": "alice", "reader": "r0"}"#,
        &c.origin,
    );
    assert_eq!(code, 200, "{body}");
    let _ = testkit::wait_child(&mut stream, Duration::from_secs(10), "curl -N");
    let mut out = String::new();
    std::io::Read::read_to_string(stream.stdout.as_mut().unwrap(), &mut out).unwrap();
    // The state on connecting has the slot empty; the insertion's has alice in it, once.
    assert_eq!(
        out.matches("\"card\":\"alice\",\"host\"").count(),
        1,
        "the insertion's state, once: {out}"
    );
}
