//! Command APDU parser: total, and a parsed command re-encodes to something that parses to
//! the same command.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(cmd) = apdu::Command::parse(data) {
        let owned = cmd.to_owned();
        if let Some(bytes) = owned.to_bytes() {
            let again = apdu::Command::parse(&bytes).expect("re-encoded command parses");
            assert_eq!(again.to_owned(), owned);
        }
    }
    let _ = apdu::Response::parse(data);
});
