//! The usbredir decoder and device session on arbitrary guest bytes (after a valid hello, so
//! the 64-bit framing is reached): total, and memory bounded by the packet limit.
#![no_main]
use card::FixedCard;
use ccid::descriptors::Identity;
use ccid::device::Ccid;
use libfuzzer_sys::fuzz_target;
use usbredir::codec::{encode, ty, Caps};
use usbredir::session::Session;

fuzz_target!(|data: &[u8]| {
    let mut dev = Ccid::new(
        Identity::default(),
        Box::new(FixedCard::new(&[0x3B, 0x00], &[0x90, 0x00])),
    );
    let mut s = Session::new("fuzz", &dev);
    let hello = encode(
        &Caps::default(),
        ty::HELLO,
        0,
        &[0; 64],
        &0xFFu32.to_le_bytes(),
    );
    let _ = s.on_bytes(&hello, &mut dev);
    for chunk in data.chunks(29) {
        if s.on_bytes(chunk, &mut dev).is_err() {
            break;
        }
    }
});
