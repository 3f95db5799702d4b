//! BER-TLV and SimpleTLV parsers: total on any input.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for t in apdu::ber::iter(data) {
        if let Ok(t) = t {
            let enc = apdu::ber::encode(t.tag, t.value);
            assert_eq!(
                apdu::ber::parse_one(&enc).map(|(x, _)| x.value.len()),
                Ok(t.value.len())
            );
        }
    }
    for t in apdu::simpletlv::iter(data) {
        let _ = t;
    }
});
