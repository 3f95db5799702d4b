//! Ping-pong of 20-byte messages over loopback TCP, plaintext and through `TlsStream`, on two
//! threads of this process: what the TLS stream itself costs per message, without the VSCard
//! layers. usage: tls_pingpong [N]

use link::{Addr, ListenSecurity, Stream, TlsClient};
use std::io::{Read, Write};
use std::time::Instant;

fn pair(tls: Option<&link::tls::TlsOptions>) -> (Stream, Stream) {
    let sec = ListenSecurity {
        tls: tls.map(|t| t.server_config().unwrap()),
        ..Default::default()
    };
    let l = sec.bind(&Addr::parse("127.0.0.1:0").unwrap()).unwrap();
    let addr = l.local_addr();
    let client = tls.map(|t| TlsClient::new(t, &addr).unwrap());
    let h = std::thread::spawn(move || l.accept().unwrap());
    let c = Stream::connect_with(&addr, client.as_ref()).unwrap();
    (c, h.join().unwrap())
}

fn run(a: Stream, mut b: Stream, n: usize) -> f64 {
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut w = b.try_clone().unwrap();
        for _ in 0..n {
            let k = b.read(&mut buf).unwrap();
            w.write_all(&buf[..k]).unwrap();
        }
    });
    let (mut r, mut w) = (a.try_clone().unwrap(), a);
    let msg = [7u8; 20];
    let mut buf = [0u8; 64];
    let t = Instant::now();
    for _ in 0..n {
        w.write_all(&msg).unwrap();
        let mut got = 0;
        while got < msg.len() {
            got += r.read(&mut buf[got..]).unwrap();
        }
    }
    let us = t.elapsed().as_secs_f64() / n as f64 * 1e6;
    echo.join().unwrap();
    us
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(50000);
    let dir = std::env::temp_dir().join(format!("vccid-pingpong-{}", std::process::id()));
    vccid::tls_init::init(
        &dir,
        &["localhost".into()],
        &["127.0.0.1".parse().unwrap()],
        1,
        true,
    )
    .unwrap();
    let opts = link::tls::TlsOptions {
        dir: dir.clone(),
        verify_peer: true,
        server_name: None,
        on_certificate: None,
    };
    for _ in 0..3 {
        let (a, b) = pair(None);
        let p = run(a, b, n);
        let (a, b) = pair(Some(&opts));
        let t = run(a, b, n);
        println!(
            "round trip: plaintext {p:.1} µs, TLS {t:.1} µs ({:.2}×)",
            p / t
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}
