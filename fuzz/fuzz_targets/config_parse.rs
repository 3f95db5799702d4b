//! `vccid serve`'s configuration parser (issue #15) on arbitrary text: total (a value or an
//! error naming the file, never a panic), and an accepted file's every reader and card passes
//! the same checks the control socket applies to one.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vccid::config::{check_card, check_reader, Config};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, "fuzz.toml") {
        Ok(cfg) => {
            for c in &cfg.cards {
                assert!(check_card(c).is_ok());
            }
            for r in &cfg.readers {
                assert!(check_reader(r).is_ok());
            }
        }
        Err(e) => assert!(e.to_string().starts_with("fuzz.toml")),
    }
});
