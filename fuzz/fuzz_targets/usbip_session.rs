//! The USB/IP URB session on arbitrary importer bytes, against the CCID reader with an instant
//! card: total (every error closes the connection, nothing panics), and the pending-URB queue
//! bounded whatever the peer submits.
#![no_main]
use card::FixedCard;
use ccid::descriptors::Identity;
use ccid::device::Ccid;
use libfuzzer_sys::fuzz_target;
use usbip::session::{UrbSession, MAX_PENDING};

fuzz_target!(|data: &[u8]| {
    let mut dev = Ccid::new(
        Identity::default(),
        Box::new(FixedCard::new(&[0x3B, 0x00], &[0x90, 0x00])),
    );
    let mut s = UrbSession::new();
    for chunk in data.chunks(37) {
        if s.on_bytes(chunk, &mut dev).is_err() {
            break;
        }
        let _ = s.poll(&mut dev);
        assert!(s.pending() <= MAX_PENDING);
    }
});
