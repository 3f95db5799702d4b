//! In-process card benchmarks (no criterion: one self-timing binary, run by `cargo bench -p card`
//! and by scripts/bench.sh, which puts OpenSSL's and libcacard's figures beside these).
//!
//! * `read_certs`: the APDU sequence OpenSC's CAC driver sends to read all three certificates
//!   (SELECT CCC, READ BUFFER T/V of the CCC, then per PKI applet SELECT, SELECT object,
//!   GET PROPERTIES with its 6Cxx retry, READ BUFFER T/V in 240-byte pieces), as T=0 would
//!   carry them (case 3 + GET RESPONSE).
//! * `sign`: one chained RSA-2048 SIGN (240 + 16 bytes, then GET RESPONSE).

use apdu::CommandBuf;
use card::cac::{CacCard, CacConfig};
use card::keystore::{DefaultIdentities, FileStore};
use card::Card;
use std::time::Instant;

fn h(s: &str) -> Vec<u8> {
    apdu::hex::h(s)
}

/// Sends a command; answers 61xx with GET RESPONSE like a T=0 reader; returns data, SW.
fn xfer(card: &mut CacCard, cmd: &[u8], count: &mut usize) -> (Vec<u8>, u16) {
    let mut r = card.transmit(cmd);
    *count += 1;
    let mut data = Vec::new();
    loop {
        let sw = u16::from_be_bytes([r[r.len() - 2], r[r.len() - 1]]);
        data.extend_from_slice(&r[..r.len() - 2]);
        if sw >> 8 != 0x61 {
            return (data, sw);
        }
        r = card.transmit(&[0x00, 0xC0, 0x00, 0x00, sw as u8]);
        *count += 1;
    }
}

fn read_buffer(card: &mut CacCard, kind: u8, count: &mut usize) -> Vec<u8> {
    let (len, _) = xfer(card, &h(&format!("00 52 00 00 02 {kind:02X} 02")), count);
    let total = usize::from(u16::from_le_bytes([len[0], len[1]])) + 2;
    let mut out = Vec::new();
    let mut off = 2;
    while off < total {
        let n = (total - off).min(240);
        let cmd = CommandBuf::new(0, 0x52, (off >> 8) as u8, off as u8).data(vec![kind, n as u8]);
        out.extend(xfer(card, &cmd.to_bytes().unwrap_or_default(), count).0);
        off += n;
    }
    out
}

fn read_all_certs(card: &mut CacCard) -> usize {
    let mut count = 0;
    xfer(card, &h("00 A4 04 00 07 A0 00 00 01 16 DB 00"), &mut count);
    read_buffer(card, 1, &mut count);
    read_buffer(card, 2, &mut count);
    for i in 0..3u8 {
        xfer(
            card,
            &h(&format!("00 A4 04 00 07 A0 00 00 00 79 01 {i:02X}")),
            &mut count,
        );
        xfer(card, &h(&format!("00 A4 02 00 02 01 {i:02X}")), &mut count);
        let (_, sw) = xfer(card, &h("00 56 01 00 FF"), &mut count);
        xfer(card, &[0x00, 0x56, 0x01, 0x00, sw as u8], &mut count);
        read_buffer(card, 1, &mut count);
        let v = read_buffer(card, 2, &mut count);
        assert!(v.len() > 600, "certificate read");
    }
    count
}

fn bench_sign(name: &str, card: &mut CacCard, n: usize) {
    let mut count = 0;
    xfer(
        card,
        &h("00 20 00 00 08 31 32 33 34 35 36 37 38"),
        &mut count,
    );
    xfer(card, &h("00 A4 04 00 07 A0 00 00 00 79 01 00"), &mut count);
    let mut block = vec![0xFFu8; 256];
    block[0] = 0;
    block[1] = 1;
    block[200] = 0;
    let mut first = h("00 42 80 00 F0");
    first.extend_from_slice(&block[..240]);
    let mut last = h("00 42 00 00 10");
    last.extend_from_slice(&block[240..]);
    let t = Instant::now();
    for _ in 0..n {
        xfer(card, &first, &mut count);
        let (sig, sw) = xfer(card, &last, &mut count);
        assert_eq!((sig.len(), sw), (256, 0x9000));
    }
    println!(
        "{name}: RSA-2048 chained CAC SIGN {:.3} ms/op",
        t.elapsed().as_secs_f64() * 1e3 / n as f64
    );
}

fn card_with(store: Box<dyn card::keystore::KeyStore>) -> CacCard {
    let mut card = CacCard::new(store, &CacConfig::default()).expect("card");
    card.power_on();
    card
}

fn main() {
    let dir = std::env::temp_dir().join("vccid-bench-ids");
    let files = DefaultIdentities::new(&dir).ensure().expect("identities");
    let mut card = card_with(Box::new(FileStore::open(&files).expect("store")));

    let per = read_all_certs(&mut card);
    let rounds = 2000;
    let t = Instant::now();
    let mut apdus = 0;
    for _ in 0..rounds {
        apdus += read_all_certs(&mut card);
    }
    let dt = t.elapsed();
    println!(
        "read_certs: {per} APDUs per pass; {:.0} APDUs/s; {:.2} µs/APDU; {:.1} µs per pass",
        apdus as f64 / dt.as_secs_f64(),
        dt.as_secs_f64() * 1e6 / apdus as f64,
        dt.as_secs_f64() * 1e6 / rounds as f64
    );

    let select = h("00 A4 04 00 07 A0 00 00 01 16 DB 00 00");
    let n = 200_000;
    let t = Instant::now();
    for _ in 0..n {
        card.transmit(&select);
    }
    println!(
        "select: {:.2} µs/APDU",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    bench_sign("sign", &mut card, 500);

    // The token signs: an NSS database (softokn) and a SoftHSM2 token, when scripts/bench.sh
    // made them.
    if let Ok(db) = std::env::var("VCCID_BENCH_NSS_DB") {
        let nicks = (1..=3).map(|i| format!("cert{i}")).collect();
        let cfg = card::keystore::Pkcs11Config::nss(&db, nicks, None).expect("nss config");
        let store = card::keystore::Pkcs11Store::open(&cfg).expect("nss store");
        bench_sign("sign_nss", &mut card_with(Box::new(store)), 300);
    }
    if let Ok(uri) = std::env::var("VCCID_BENCH_PKCS11_URI") {
        let cfg = card::keystore::Pkcs11Config::from_uri(&uri).expect("uri");
        let store = card::keystore::Pkcs11Store::open(&cfg).expect("pkcs11 store");
        bench_sign("sign_pkcs11", &mut card_with(Box::new(store)), 300);
    }
}
