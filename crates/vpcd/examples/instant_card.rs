//! A card that answers every APDU with 9000 at once: the baseline for pcscd+vpcd round trips
//! (scripts/bench.sh). Usage: `instant_card [HOST:PORT]` (default 127.0.0.1:35964).

use card::{Card, Presence};
use std::sync::{Arc, Mutex};

struct Instant(Presence);

impl Card for Instant {
    fn atr(&self) -> Vec<u8> {
        vec![0x3B, 0x02, 0x14, 0x50]
    }
    fn power_on(&mut self) -> Vec<u8> {
        self.atr()
    }
    fn power_off(&mut self) {}
    fn transmit(&mut self, _apdu: &[u8]) -> Vec<u8> {
        vec![0x90, 0x00]
    }
    fn presence(&self) -> Presence {
        self.0.clone()
    }
}

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:35964".into());
    let Ok(addr) = addr.parse() else {
        eprintln!("instant_card: bad address {addr:?}");
        std::process::exit(2);
    };
    let card: vpcd::SharedCard = Arc::new(Mutex::new(Instant(Presence::new(true))));
    match vpcd::spawn(card, vpcd::ClientOptions::new(addr)) {
        Ok(_client) => loop {
            std::thread::park();
        },
        Err(e) => eprintln!("instant_card: {e}"),
    }
}
