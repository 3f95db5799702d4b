/// What a registry operation refuses, and why. Nothing changes when an operation fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No slot has this id.
    #[error("no slot {0:?}")]
    UnknownSlot(String),
    /// No card has this id.
    #[error("no card {0:?}")]
    UnknownCard(String),
    /// The slot already holds a card: eject it first (or move the other card elsewhere).
    #[error("slot {slot:?} already holds card {card:?}")]
    SlotOccupied {
        /// The slot asked for.
        slot: String,
        /// The card in it.
        card: String,
    },
    /// The card is already in a slot: `insert` refuses it; `move_card` is the way to take it
    /// from one slot to another.
    #[error("card {card:?} is already in slot {slot:?}")]
    CardInSlot {
        /// The card asked for.
        card: String,
        /// The slot it is in.
        slot: String,
    },
    /// A slot with this id exists already.
    #[error("a slot {0:?} exists already")]
    DuplicateSlot(String),
    /// A card with this id exists already.
    #[error("a card {0:?} exists already")]
    DuplicateCard(String),
}
