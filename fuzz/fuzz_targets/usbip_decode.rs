//! USB/IP operation and URB decoders on arbitrary bytes: total, and memory bounded by what
//! arrived (declared lengths are checked before anything is buffered).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = usbip::parse_op(data);
    let mut d = usbip::UrbDecoder::new();
    for chunk in data.chunks(23) {
        d.feed(chunk);
        loop {
            match d.next_urb() {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
    assert!(d.pending() <= data.len());
});
