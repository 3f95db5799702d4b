//! `apdu HEX...`: sends each command APDU to the card in the first PC/SC reader and prints
//! `R <response length> <SW1SW2>` per command. The guest harness uses it for what OpenSC's
//! tools refuse (an extended Le on a card whose driver does not claim extended APDUs).

use card_api::Card;

fn main() {
    let mut card = match hostcard::HostCard::open(None, &[]) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("apdu: {e}");
            std::process::exit(2);
        }
    };
    card.power_on();
    for arg in std::env::args().skip(1) {
        let Some(cmd) = parse_hex(&arg) else {
            eprintln!("apdu: {arg:?} is not hex");
            std::process::exit(2);
        };
        let r = card.transmit(&cmd);
        let n = r.len();
        println!("R {} {:02X}{:02X}", n.saturating_sub(2), r[n - 2], r[n - 1]);
    }
}

fn parse_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
