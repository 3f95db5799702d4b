//! The CAC state-file parser (issue #17): total on any input, and whatever it accepts is
//! written back to a file that parses to the same state.
#![no_main]
use card::cac::CacState;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = CacState::parse(data) {
        let again = CacState::parse(&state.to_bytes()).expect("written state parses");
        assert_eq!(again, state);
    }
});
