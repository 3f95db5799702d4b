//! VSCard round trips for scripts/bench.sh: the passthru card (QEMU's side, in this process)
//! sends APDUs to a `vscclient` process serving the emulated card, over loopback TCP; the same
//! APDU on the emulated card in-process is measured in the same run, so the difference is what
//! the VSCard link adds.
//!
//! usage: vscard_bench VSCCLIENT_BINARY [N]

use card::Card;
use std::time::{Duration, Instant};
use vccid::stream::Addr;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(vscclient) = args.next() else {
        eprintln!("usage: vscard_bench VSCCLIENT_BINARY [N]");
        std::process::exit(2);
    };
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(20000);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let addr = Addr::parse(&format!("127.0.0.1:{port}")).expect("address");
    let mut host =
        vccid::passthru::PassthruCard::listen(&addr, &Default::default()).expect("listen");
    let data = std::env::temp_dir().join("vccid-bench-ids");
    let mut client = std::process::Command::new(&vscclient)
        .args(["--card", "emulated", "--data-dir"])
        .arg(&data)
        .arg(format!("127.0.0.1:{port}"))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("vscclient starts");
    let presence = host.presence();
    let t = Instant::now();
    while !presence.is_present() && t.elapsed() < Duration::from_secs(20) {
        presence.wait_change(presence.snapshot().1, Duration::from_millis(100));
    }
    assert!(presence.is_present(), "vscclient inserted no card");
    // VERIFY status: answered by the card without touching a key (63C3).
    let apdu = [0x00, 0x20, 0x00, 0x00];
    for _ in 0..1000 {
        host.transmit(&apdu);
    }
    let mut runs = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..n {
            let r = host.transmit(&apdu);
            assert_eq!(r.len(), 2);
        }
        runs.push(t.elapsed().as_secs_f64() / n as f64 * 1e6);
    }
    runs.sort_by(f64::total_cmp);
    let vscard = runs[2];
    // The same APDU on the same kind of card, in-process.
    let files = card::keystore::DefaultIdentities::new(&data)
        .ensure()
        .expect("identities");
    let store = card::keystore::FileStore::open(&files).expect("store");
    let mut local =
        card::cac::CacCard::new(Box::new(store), &card::cac::CacConfig::default()).expect("card");
    local.power_on();
    let t = Instant::now();
    for _ in 0..n {
        local.transmit(&apdu);
    }
    let inproc = t.elapsed().as_secs_f64() / n as f64 * 1e6;
    println!(
        "vscard: {:.0} APDU round trips/s ({vscard:.1} µs each, median of 5 × {n}); in-process {inproc:.2} µs; the VSCard link adds {:.1} µs",
        1e6 / vscard,
        vscard - inproc
    );
    let _ = client.kill();
    let _ = client.wait();
}
