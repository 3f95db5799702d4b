//! The CAC card's dispatcher: any sequence of APDUs (split on 0xFF 0xFF) gets a status word
//! and never panics. The card is built once from generated identities in a temporary
//! directory; the first APDUs of each input can log in, so signing paths are reached.
#![no_main]
use card::cac::{CacCard, CacConfig};
use card::keystore::{DefaultIdentities, FileStore};
use card::Card;
use libfuzzer_sys::fuzz_target;
use std::sync::{Mutex, OnceLock};

fn card() -> &'static Mutex<CacCard> {
    static CARD: OnceLock<Mutex<CacCard>> = OnceLock::new();
    CARD.get_or_init(|| {
        let dir = std::env::temp_dir().join("vccid-fuzz-ids");
        let files = DefaultIdentities::new(&dir).ensure().expect("identities");
        let store = FileStore::open(&files).expect("store");
        Mutex::new(CacCard::new(Box::new(store), &CacConfig::default()).expect("card"))
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
