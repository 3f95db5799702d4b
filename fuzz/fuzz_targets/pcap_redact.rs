//! The `--pcap` writer (ccid::pcap::PcapTap on THE reader) on arbitrary bulk-OUT
//! transfers (split on 0xFE), with IN reads between: total, whatever the CCID messages and
//! APDUs look like, split or whole, and the redaction state stays bounded.
#![no_main]
use ccid::descriptors::{Identity, EP_BULK_IN, EP_BULK_OUT, EP_INTERRUPT_IN};
use ccid::device::Ccid;
use ccid::pcap::PcapTap;
use ccid::usb::{Transfer, UsbDevice};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let card = card::FixedCard::new(&[0x3B, 0x00], &[0x63, 0xC2]);
    let Ok(tap) = PcapTap::new(std::io::sink()) else {
        return;
    };
    let mut pcap = Ccid::new(Identity::default(), Box::new(card)).with_tap(tap);
    for (i, p) in data.split(|b| *b == 0xFE).enumerate() {
        let _ = pcap.out(EP_BULK_OUT, p);
        let mut n = 0;
        while let Transfer::Done(_) = pcap.input(EP_BULK_IN, if i % 2 == 0 { 64 } else { 65554 }) {
            n += 1;
            assert!(n < 100_000);
        }
        let _ = pcap.input(EP_INTERRUPT_IN, 8);
    }
});
