//! VSCard round trips for scripts/bench.sh: the passthru card (QEMU's side, in this process)
//! sends APDUs to a `vscclient` process serving the emulated card, over loopback TCP, in
//! plaintext and over mutual TLS (a `vccid tls init` directory made here), alternating; the
//! same APDU on the emulated card in-process is measured in the same run, so the difference is
//! what the VSCard link adds. Also: from starting vscclient to the first APDU answered, with
//! and without TLS (process start, card, connect, handshake, VSCard Init, first APDU).
//!
//! usage: vscard_bench VSCCLIENT_BINARY [N]

use card::Card;
use link::{Addr, ListenSecurity};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vccid::passthru::PassthruCard;

/// VERIFY status: answered by the card without touching a key (63C3).
const APDU: [u8; 4] = [0x00, 0x20, 0x00, 0x00];

struct Link {
    host: PassthruCard,
    client: Child,
    started: Instant,
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = self.client.kill();
        let _ = self.client.wait();
    }
}

/// A passthru card listening on a fresh port and vscclient connected to it; returns when
/// the card is present.
fn link(vscclient: &str, data: &Path, tls: Option<&Path>) -> Link {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let addr = Addr::parse(&format!("127.0.0.1:{port}")).expect("address");
    let security = ListenSecurity {
        tls: tls.map(|d| {
            link::tls::TlsOptions {
                dir: d.to_path_buf(),
                verify_peer: true,
                server_name: None,
                on_certificate: None,
            }
            .server_config()
            .expect("server config")
        }),
        ..Default::default()
    };
    let host = PassthruCard::listen(&addr, &security).expect("listen");
    let mut cmd = Command::new(vscclient);
    cmd.args(["--card", "emulated", "--data-dir"]).arg(data);
    if let Some(d) = tls {
        cmd.arg("--tls").arg(d);
    }
    let started = Instant::now();
    let client = cmd
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("vscclient starts");
    let presence = host.presence();
    while !presence.is_present() && started.elapsed() < Duration::from_secs(20) {
        presence.wait_change(presence.snapshot().1, Duration::from_millis(1));
    }
    assert!(presence.is_present(), "vscclient inserted no card");
    Link {
        host,
        client,
        started,
    }
}

fn per_apdu(l: &mut Link, n: usize) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        let r = l.host.transmit(&APDU);
        assert_eq!(r.len(), 2);
    }
    t.elapsed().as_secs_f64() / n as f64 * 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(vscclient) = args.next() else {
        eprintln!("usage: vscard_bench VSCCLIENT_BINARY [N]");
        std::process::exit(2);
    };
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(20000);
    let data = std::env::temp_dir().join("vccid-bench-ids");
    std::fs::create_dir_all(&data).expect("data directory");
    let creds: PathBuf =
        std::env::temp_dir().join(format!("vccid-bench-tls-{}", std::process::id()));
    vccid::tls_init::init(
        &creds,
        &["localhost".into()],
        &["127.0.0.1".parse().unwrap()],
        1,
        true,
    )
    .expect("tls init");
    // Start to first APDU, five of each, alternating.
    let (mut first_plain, mut first_tls) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        for (tls, out) in [
            (None, &mut first_plain),
            (Some(creds.as_path()), &mut first_tls),
        ] {
            let mut l = link(&vscclient, &data, tls);
            l.host.transmit(&APDU);
            out.push(l.started.elapsed().as_secs_f64() * 1e3);
        }
    }
    let mut plain = link(&vscclient, &data, None);
    let mut tls = link(&vscclient, &data, Some(&creds));
    for l in [&mut plain, &mut tls] {
        per_apdu(l, 1000);
    }
    let (mut p, mut t) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        p.push(per_apdu(&mut plain, n));
        t.push(per_apdu(&mut tls, n));
    }
    let (p, t) = (median(p), median(t));
    // The same APDU on the same kind of card, in-process.
    let files = card::keystore::DefaultIdentities::new(&data)
        .ensure()
        .expect("identities");
    let store = card::keystore::FileStore::open(&files).expect("store");
    let mut local =
        card::cac::CacCard::new(Box::new(store), &card::cac::CacConfig::default()).expect("card");
    local.power_on();
    let start = Instant::now();
    for _ in 0..n {
        local.transmit(&APDU);
    }
    let inproc = start.elapsed().as_secs_f64() / n as f64 * 1e6;
    println!(
        "vscard plaintext: {:.0} APDU round trips/s ({p:.1} µs each, median of 5 × {n}); in-process {inproc:.2} µs; the VSCard link adds {:.1} µs",
        1e6 / p,
        p - inproc
    );
    println!(
        "vscard TLS:       {:.0} APDU round trips/s ({t:.1} µs each); {:.2}× the plaintext rate",
        1e6 / t,
        p / t
    );
    println!(
        "vscclient start to first APDU answered (median of 5): plaintext {:.1} ms, TLS {:.1} ms",
        median(first_plain),
        median(first_tls)
    );
    let _ = std::fs::remove_dir_all(&creds);
}
