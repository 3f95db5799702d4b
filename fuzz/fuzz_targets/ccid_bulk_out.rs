//! THE reader (`ccid::device::Ccid`, the `UsbDevice` every transport drives) with two slots, on
//! arbitrary bulk-OUT packets (split on 0xFE), with cards removed and inserted and interrupt
//! and bulk-IN reads in between: total, and memory bounded by dwMaxCCIDMessageLength.
#![no_main]
use card_api::{Card, FixedCard};
use ccid::descriptors::{Identity, EP_BULK_IN, EP_BULK_OUT, EP_INTERRUPT_IN};
use ccid::device::Ccid;
use ccid::port::InlinePort;
use ccid::usb::{Transfer, UsbDevice};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let a = FixedCard::new(&[0x3B, 0x00], &[0x90, 0x00]);
    // A card whose response lacks SW1 SW2: the reader must fail the command, not panic.
    let b = FixedCard::new(&[0x3B, 0x00], &[0x90]);
    let presence = [a.presence(), b.presence()];
    let mut d = Ccid::with_ports(
        Identity::default(),
        vec![InlinePort::new(Box::new(a)), InlinePort::new(Box::new(b))],
    );
    for (i, p) in data.split(|b| *b == 0xFE).enumerate() {
        let _ = d.out(EP_BULK_OUT, p);
        match i % 4 {
            0 => {
                presence[i % 2].set(false);
            }
            1 => {
                presence[i % 2].set(true);
            }
            _ => {}
        }
        let _ = d.input(EP_INTERRUPT_IN, i % 3);
        let mut n = 0;
        while let Transfer::Done(_) = d.input(EP_BULK_IN, if i % 2 == 0 { 64 } else { 65554 }) {
            n += 1;
            assert!(n < 100_000);
        }
    }
});
