//! The vpcd decoder on arbitrary chunks: total, and memory bounded by the 16-bit length.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut d = vpcd::Decoder::new();
    for chunk in data.chunks(7) {
        d.feed(chunk);
        loop {
            match d.next_request() {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
    assert!(d.pending() <= data.len());
});
