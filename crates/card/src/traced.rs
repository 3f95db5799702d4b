//! [`Traced`]: a decorator that logs one decoded line per APDU at TRACE level (`vccid -vv`;
//! power, PIN, signing and card changes already at DEBUG, `-v`),
//! through the one decoder of `apdu::describe`. The line names the command and its status word
//! and never shows a data field: PIN, PUK and management-key bytes appear as `[N bytes
//! redacted]` (issue #13: no log level ever shows them).

use crate::{Card, Presence};
use apdu::describe::Decoder;
use std::time::Instant;

/// Wraps a card; every `transmit` logs `SUMMARY (T ms)` at TRACE under the target `apdu`
/// (so `RUST_LOG=info,apdu=trace` shows the exchanges alone).
pub struct Traced<C> {
    inner: C,
    decoder: Decoder,
}

impl<C: Card> Traced<C> {
    /// Wraps `inner`.
    pub fn new(inner: C) -> Self {
        Traced {
            inner,
            decoder: Decoder::new(),
        }
    }
    /// The wrapped card.
    pub fn inner(&self) -> &C {
        &self.inner
    }
    /// The wrapped card, mutably.
    pub fn inner_mut(&mut self) -> &mut C {
        &mut self.inner
    }
}

/// The exchanges `-v` (DEBUG) shows: what authenticates, signs, decrypts or changes the
/// card (ISO 7816-4 VERIFY with data, CHANGE REFERENCE DATA, RESET RETRY COUNTER, GENERAL
/// AUTHENTICATE, GENERATE ASYMMETRIC KEY PAIR, PUT DATA; CAC SIGN/DECRYPT; YubiKey IMPORT KEY,
/// SET MANAGEMENT KEY, SET PIN RETRIES, RESET), each once at the end of its chain. Reads and
/// SELECTs are left to `-vv`.
fn significant(apdu: &[u8]) -> bool {
    let (Some(&cla), Some(&ins)) = (apdu.first(), apdu.get(1)) else {
        return false;
    };
    if cla & 0x10 != 0 {
        return false;
    }
    match ins {
        // VERIFY without data only asks for the tries left.
        0x20 => apdu.len() > 5,
        // CAC SIGN/DECRYPT chains with P1 = 80 ("more follows"), not with the CLA bit.
        0x42 => apdu.get(2) != Some(&0x80),
        0x24 | 0x2C | 0x87 | 0x47 | 0xDB | 0xFE | 0xFF | 0xFA | 0xFB => true,
        _ => false,
    }
}

impl<C: Card> Card for Traced<C> {
    fn atr(&self) -> Vec<u8> {
        self.inner.atr()
    }
    fn power_on(&mut self) -> Vec<u8> {
        self.decoder.reset();
        let atr = self.inner.power_on();
        tracing::debug!(target: "apdu", "power on → ATR {}", apdu::hex::spaced(&atr));
        atr
    }
    fn power_off(&mut self) {
        self.decoder.reset();
        tracing::debug!(target: "apdu", "power off");
        self.inner.power_off()
    }
    fn reset(&mut self) -> Vec<u8> {
        self.decoder.reset();
        let atr = self.inner.reset();
        tracing::debug!(target: "apdu", "reset → ATR {}", apdu::hex::spaced(&atr));
        atr
    }
    fn transmit(&mut self, apdu: &[u8]) -> Vec<u8> {
        let started = Instant::now();
        let out = self.inner.transmit(apdu);
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if tracing::enabled!(target: "apdu", tracing::Level::TRACE) {
            let line = self.decoder.exchange(apdu, &out);
            tracing::trace!(target: "apdu", "{line} ({ms:.1} ms)");
        } else if significant(apdu) && tracing::enabled!(target: "apdu", tracing::Level::DEBUG) {
            let line = self.decoder.exchange(apdu, &out);
            tracing::debug!(target: "apdu", "{line} ({ms:.1} ms)");
        } else {
            self.decoder.observe(apdu, &out);
        }
        out
    }
    fn presence(&self) -> Presence {
        self.inner.presence()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apdu::hex::h;

    /// A card answering 63 C2 to everything.
    struct Wrong(Presence);
    impl Card for Wrong {
        fn atr(&self) -> Vec<u8> {
            vec![0x3B, 0x00]
        }
        fn power_on(&mut self) -> Vec<u8> {
            self.atr()
        }
        fn power_off(&mut self) {}
        fn transmit(&mut self, _: &[u8]) -> Vec<u8> {
            vec![0x63, 0xC2]
        }
        fn presence(&self) -> Presence {
            self.0.clone()
        }
    }

    #[test]
    fn one_decoded_line_per_apdu_without_the_pin() {
        let mut card = Traced::new(Wrong(Presence::new(true)));
        let log = crate::testlog::capture(|| {
            card.power_on();
            let r = card.transmit(&h("00 20 00 80 08 33 31 34 31 35 39 32 36"));
            assert_eq!(r, vec![0x63, 0xC2]);
        });
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("VERIFY")).collect();
        assert_eq!(lines.len(), 1, "{log}");
        assert!(
            lines[0].contains("VERIFY PIN [8 bytes redacted] → 63C2 wrong PIN, 2 tries left ("),
            "{log}"
        );
        for secret in ["31415926", "33 31 34 31", "33313431"] {
            assert!(!log.contains(secret), "{secret} in {log}");
        }
    }

    #[test]
    fn minus_v_shows_what_authenticates_signs_or_changes_the_card() {
        for (apdu, shown) in [
            ("00 20 00 80 08 31 32 33 34 35 36 37 38", true),
            ("00 20 00 80", false),
            ("00 A4 04 00 07 A0 00 00 00 79 01 00", false),
            ("80 52 00 00 02 01 02", false),
            ("90 42 00 00 02 00 01", false),
            ("80 42 00 00 02 00 01", true),
            ("80 42 80 00 02 00 01", false),
            ("00 87 07 9A 04 7C 02 82 00", true),
            (
                "00 24 00 80 10 31 32 33 34 35 36 37 38 31 32 33 34 35 36 37 38",
                true,
            ),
            ("", false),
        ] {
            assert_eq!(significant(&h(apdu)), shown, "{apdu}");
        }
    }
}
