//! XfrBlock → DataBlock exchanges per second through `UsbDevice`, with a card that answers
//! instantly (issue target: at least 50,000/s), read as one transfer (xHCI) and as 64-byte
//! packets (UHCI).

use card_api::FixedCard;
use ccid::descriptors::{Identity, EP_BULK_IN, EP_BULK_OUT};
use ccid::device::Ccid;
use ccid::usb::{Transfer, UsbDevice};
use std::time::Instant;

fn main() {
    for (name, max_in) in [("xHCI-like", 65554usize), ("UHCI-like", 64)] {
        let mut dev = Ccid::new(
            Identity::default(),
            Box::new(FixedCard::new(&[0x3B, 0x00], &[0x90, 0x00])),
        );
        dev.out(EP_BULK_OUT, &[0x62, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        while let Transfer::Done(_) = dev.input(EP_BULK_IN, max_in) {}
        let n = 500_000u32;
        let t = Instant::now();
        for i in 0..n {
            let cmd = [
                0x6F, 4, 0, 0, 0, 0, i as u8, 0, 0, 0, 0x00, 0xA4, 0x04, 0x00,
            ];
            dev.out(EP_BULK_OUT, &cmd);
            match dev.input(EP_BULK_IN, max_in) {
                Transfer::Done(d) => assert_eq!(d.len(), 12),
                other => panic!("{other:?}"),
            }
        }
        let dt = t.elapsed().as_secs_f64();
        println!(
            "ccid {name}: {:.0} XfrBlock→DataBlock exchanges/s ({:.2} µs each)",
            n as f64 / dt,
            dt * 1e6 / n as f64
        );
    }
}
