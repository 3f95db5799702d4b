//! The PIV state-file parser: total on any input, and whatever it accepts is written back to
//! a file that parses to the same state.
#![no_main]
use card::piv::State;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = State::parse(data) {
        let again = State::parse(&state.to_bytes()).expect("written state parses");
        assert_eq!(again, state);
    }
});
