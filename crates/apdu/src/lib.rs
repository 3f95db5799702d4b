//! ISO 7816-4 application protocol data units, without I/O.
//!
//! * [`Command`] parses a command APDU (ISO 7816-3 §12.1.3 cases 1, 2S, 3S, 4S, 2E, 3E, 4E)
//!   and [`CommandBuf`] builds one; [`CommandBuf::chain`] splits long data with the
//!   command-chaining bit (ISO 7816-4 §5.1.1).
//! * [`Response`] is a response APDU; [`Sw`] an open status-word newtype (ISO 7816-4 §5.6).
//! * [`ber`] is BER-TLV (ISO 7816-4 §6.3, X.690 §8.1); [`simpletlv`] the SimpleTLV of
//!   GSC-IS 2.1 / CAC (1-byte tag, 1- or 3-byte little-endian length).
//! * [`describe`] is the one decoder of exchanges for people (one line each) and the redaction
//!   of PIN, PUK and management-key bytes for logs and captures.
//! * [`hex`] renders and parses the spaced hex that transcript tests are written in.
//!
//! Every parser here is total: any byte string gives a value or an error, never a panic.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ber;
mod command;
pub mod describe;
pub mod hex;
mod response;
pub mod simpletlv;
mod sw;
pub mod trace;

pub use command::{Command, CommandBuf, ParseError, MAX_EXTENDED_DATA};
pub use response::Response;
pub use sw::Sw;
