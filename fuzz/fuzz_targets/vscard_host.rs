//! The VSCard decoder and the host session on arbitrary client bytes: total, bounded memory,
//! and every frame it answers re-encodes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vscard::host::HostSession;

fuzz_target!(|data: &[u8]| {
    let mut d = vscard::Decoder::new();
    let mut s = HostSession::new();
    for chunk in data.chunks(13) {
        d.feed(chunk);
        loop {
            match d.next_frame() {
                Ok(Some(f)) => {
                    if data.len().is_multiple_of(3) {
                        let _ = s.send_apdu(&[0, 0xA4, 4, 0]);
                    }
                    for r in s.on_frame(f).0 {
                        r.encode().expect("replies are small");
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    s.on_decode_error(&e);
                    if e.is_fatal() {
                        d.reset();
                        s.on_close();
                        break;
                    }
                }
            }
        }
        assert!(d.pending() <= data.len());
    }
});
