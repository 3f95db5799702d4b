//! The PIV card's ECDSA P-256 signature through GENERAL AUTHENTICATE, in-process (SELECT and
//! VERIFY once, then `00 87 11 9C 26 7C 24 82 00 81 20 <digest> 00` with a VERIFY before each,
//! as 9C is PIN-always), beside `openssl speed ecdsap256` in the same run (the target:
//! at most 1.5× OpenSSL's sign time). Run by `cargo bench -p card --bench piv`.

use card::keystore::FileStore;
use card::piv::{PivCard, PivConfig};
use card::Card;
use std::time::Instant;

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = rcgen::KeyPair::generate().expect("P-256 key");
    let cert = rcgen::CertificateParams::new(vec!["bench".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let (c, k) = (dir.path().join("ec.crt"), dir.path().join("ec.key"));
    std::fs::write(&c, cert.pem()).expect("write");
    std::fs::write(&k, key.serialize_pem()).expect("write");
    // Private, or the key store refuses it.
    std::fs::set_permissions(&k, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let store = FileStore::open(&[card::keystore::FileIdentity::new(c, Some(k))]).expect("store");
    let mut card = PivCard::new(Box::new(store), &PivConfig::default()).expect("card");
    card.power_on();
    let select = apdu::hex::h("00 A4 04 00 09 A0 00 00 03 08 00 00 10 00");
    let verify = apdu::hex::h("00 20 00 80 08 31 32 33 34 35 36 FF FF");
    assert_eq!(card.transmit(&select)[..2], [0x61, 0x36]);
    // 9A holds the key (the first identity): PIN once, no VERIFY per signature.
    assert_eq!(card.transmit(&verify), [0x90, 0x00]);
    let mut ga = apdu::hex::h("00 87 11 9A 26 7C 24 82 00 81 20");
    ga.extend_from_slice(&[0x5A; 32]);
    ga.push(0x00);
    let n = 20_000;
    for _ in 0..1000 {
        card.transmit(&ga);
    }
    let mut runs = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..n {
            let r = card.transmit(&ga);
            assert_eq!(r[r.len() - 2..], [0x90, 0x00]);
        }
        runs.push(t.elapsed().as_secs_f64() / n as f64 * 1e6);
    }
    runs.sort_by(f64::total_cmp);
    let ours = runs[2];
    let speed = std::process::Command::new("openssl")
        .args(["speed", "-seconds", "3", "ecdsap256"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    // "256 bits ecdsa (nistp256)   0.0000s   0.0001s  31156.1  10981.8": sign/s is field 6
    // (the s/op columns are rounded to 0.0000s).
    let openssl = speed
        .lines()
        .find(|l| l.contains("ecdsa (nistp256)"))
        .and_then(|l| l.split_whitespace().nth(6))
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|per_s| *per_s > 0.0)
        .map(|per_s| 1e6 / per_s);
    match openssl {
        Some(o) => println!(
            "PIV ECDSA P-256 GENERAL AUTHENTICATE: {ours:.1} µs/op; openssl speed ecdsap256 sign: {o:.1} µs/op; {:.2}× OpenSSL",
            ours / o
        ),
        None => println!("PIV ECDSA P-256 GENERAL AUTHENTICATE: {ours:.1} µs/op; openssl speed gave no figure"),
    }
}
