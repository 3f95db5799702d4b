//! The PIV card's dispatcher: any sequence of APDUs (split on 0xFF bytes) gets a status word
//! and never panics, through chaining, GET RESPONSE, the PIN and PUK counters and the
//! management-key exchange. The card is built once from generated identities; the first
//! APDUs of an input can select PIV and verify the PIN, so signing paths are reached.
#![no_main]
use card::keystore::{DefaultIdentities, FileStore};
use card::piv::{PivCard, PivConfig};
use card::Card;
use libfuzzer_sys::fuzz_target;
use std::sync::{Mutex, OnceLock};

fn card() -> &'static Mutex<PivCard> {
    static CARD: OnceLock<Mutex<PivCard>> = OnceLock::new();
    CARD.get_or_init(|| {
        let dir = std::env::temp_dir().join("vccid-fuzz-ids");
        let files = DefaultIdentities::new(&dir).ensure().expect("identities");
        let store = FileStore::open(&files).expect("store");
        // Many tries, so the fuzzer does not block the PIN for every later input.
        let cfg = PivConfig {
            pin_tries: 15,
            puk_tries: 15,
            ..PivConfig::default()
        };
        Mutex::new(PivCard::new(Box::new(store), &cfg).expect("card"))
    })
}

fuzz_target!(|data: &[u8]| {
    let mut c = card().lock().unwrap_or_else(|e| e.into_inner());
    c.power_on();
    for apdu in data.split(|b| *b == 0xFF).filter(|a| !a.is_empty()) {
        let r = c.transmit(apdu);
        assert!(r.len() >= 2);
    }
});
