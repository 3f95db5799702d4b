//! The PEM a control client sends `card-enroll` (a certificate, a private key): total on any
//! text, and a certificate it accepts is written back as PEM that reads the same.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(der) = card::enroll::certificate_der(&text) {
        let pem = card::enroll::certificate_pem(&der).expect("a certificate encodes");
        assert_eq!(card::enroll::certificate_der(&pem).ok(), Some(der));
    }
    let _ = card::enroll::private_key(&text);
    let _ = card::enroll::subject(&text);
});
