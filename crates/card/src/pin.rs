use zeroize::Zeroizing;

/// A card PIN with a retry counter (ISO 7816-4 §7.5.6: 63Cx tries left, 6983 blocked).
#[derive(Debug)]
pub struct Pin {
    value: Zeroizing<Vec<u8>>,
    max_tries: u8,
    tries_left: u8,
}

/// The state a status query reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinStatus {
    /// Not blocked: this many tries left.
    TriesLeft(u8),
    /// No tries left.
    Blocked,
}

/// What a verification attempt gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinVerify {
    /// Right PIN; the counter is back at its maximum.
    Ok,
    /// Wrong PIN; this many tries remain (0 = now blocked).
    Wrong(u8),
    /// Already blocked; nothing was compared.
    Blocked,
}

impl Pin {
    /// A PIN of `value` that blocks after `max_tries` consecutive wrong tries (at least 1).
    pub fn new(value: &[u8], max_tries: u8) -> Self {
        let max_tries = max_tries.clamp(1, 15);
        Pin {
            value: Zeroizing::new(value.to_vec()),
            max_tries,
            tries_left: max_tries,
        }
    }
    /// A PIN as saved: its value, maximum and remaining tries (clamped to 1..15 and ≤ max).
    pub fn restore(value: &[u8], max_tries: u8, tries_left: u8) -> Self {
        let mut p = Pin::new(value, max_tries);
        p.tries_left = tries_left.min(p.max_tries);
        p
    }
    /// The value (for a card's state file).
    pub fn value(&self) -> &[u8] {
        &self.value
    }
    /// Tries before blocking.
    pub fn max_tries(&self) -> u8 {
        self.max_tries
    }
    /// Tries left (0: blocked).
    pub fn tries_left(&self) -> u8 {
        self.tries_left
    }
    /// Tries left, or blocked.
    pub fn status(&self) -> PinStatus {
        match self.tries_left {
            0 => PinStatus::Blocked,
            n => PinStatus::TriesLeft(n),
        }
    }
    /// Sets a new value; the counter is back at its maximum (CHANGE REFERENCE DATA, RESET
    /// RETRY COUNTER).
    pub fn change(&mut self, value: &[u8]) {
        self.value = Zeroizing::new(value.to_vec());
        self.tries_left = self.max_tries;
    }
    /// Compares in constant time and counts the try.
    pub fn verify(&mut self, candidate: &[u8]) -> PinVerify {
        if self.tries_left == 0 {
            return PinVerify::Blocked;
        }
        if aws_lc_rs::constant_time::verify_slices_are_equal(&self.value, candidate).is_ok() {
            self.tries_left = self.max_tries;
            PinVerify::Ok
        } else {
            self.tries_left -= 1;
            PinVerify::Wrong(self.tries_left)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_blocks_and_resets_on_success() {
        let mut p = Pin::new(b"1234", 3);
        assert_eq!(p.verify(b"0000"), PinVerify::Wrong(2));
        assert_eq!(p.verify(b"1234"), PinVerify::Ok);
        assert_eq!(p.status(), PinStatus::TriesLeft(3));
        assert_eq!(p.verify(b"1"), PinVerify::Wrong(2));
        assert_eq!(p.verify(b"12345"), PinVerify::Wrong(1));
        assert_eq!(p.verify(b""), PinVerify::Wrong(0));
        assert_eq!(p.status(), PinStatus::Blocked);
        assert_eq!(p.verify(b"1234"), PinVerify::Blocked);
    }
}
