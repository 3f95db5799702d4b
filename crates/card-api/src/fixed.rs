use crate::{Card, Presence};

/// A card that answers every command with the same response at once: the baseline of the
/// transport benchmarks and the simplest card for transport tests.
#[derive(Debug, Clone)]
pub struct FixedCard {
    atr: Vec<u8>,
    response: Vec<u8>,
    presence: Presence,
}

impl FixedCard {
    /// A card with this ATR answering `response` (data + SW1 SW2) to everything; inserted.
    pub fn new(atr: &[u8], response: &[u8]) -> Self {
        FixedCard {
            atr: atr.to_vec(),
            response: response.to_vec(),
            presence: Presence::new(true),
        }
    }
}

impl Card for FixedCard {
    fn atr(&self) -> Vec<u8> {
        self.atr.clone()
    }
    fn power_on(&mut self) -> Vec<u8> {
        self.atr()
    }
    fn power_off(&mut self) {}
    fn transmit(&mut self, _apdu: &[u8]) -> Vec<u8> {
        self.response.clone()
    }
    fn presence(&self) -> Presence {
        self.presence.clone()
    }
}
