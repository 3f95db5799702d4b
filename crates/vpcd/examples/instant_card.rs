//! A card that answers every APDU with 9000 at once: the baseline for pcscd+vpcd round trips
//! (scripts/bench.sh). Usage: `instant_card [HOST:PORT]` (default 127.0.0.1:35964).

use card_api::FixedCard;
use std::sync::{Arc, Mutex};

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:35964".into());
    let Ok(addr) = addr.parse() else {
        eprintln!("instant_card: bad address {addr:?}");
        std::process::exit(2);
    };
    let card: vpcd::SharedCard = Arc::new(Mutex::new(FixedCard::new(
        &[0x3B, 0x02, 0x14, 0x50],
        &[0x90, 0x00],
    )));
    match vpcd::spawn(card, vpcd::ClientOptions::new(addr)) {
        Ok(_client) => loop {
            std::thread::park();
        },
        Err(e) => eprintln!("instant_card: {e}"),
    }
}
