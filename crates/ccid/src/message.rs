//! CCID messages (CCID rev 1.1 §6): every bulk message starts with a 10-byte header:
//! bMessageType, dwLength (little-endian, bytes after the header), bSlot, bSeq, then three
//! message-specific bytes.

/// Header length.
pub const HEADER: usize = 10;

/// PC_to_RDR message types (CCID §6.1).
pub mod pc_to_rdr {
    /// IccPowerOn.
    pub const ICC_POWER_ON: u8 = 0x62;
    /// IccPowerOff.
    pub const ICC_POWER_OFF: u8 = 0x63;
    /// GetSlotStatus.
    pub const GET_SLOT_STATUS: u8 = 0x65;
    /// XfrBlock.
    pub const XFR_BLOCK: u8 = 0x6F;
    /// GetParameters.
    pub const GET_PARAMETERS: u8 = 0x6C;
    /// ResetParameters.
    pub const RESET_PARAMETERS: u8 = 0x6D;
    /// SetParameters.
    pub const SET_PARAMETERS: u8 = 0x61;
    /// Escape.
    pub const ESCAPE: u8 = 0x6B;
    /// IccClock.
    pub const ICC_CLOCK: u8 = 0x6E;
    /// T0APDU.
    pub const T0_APDU: u8 = 0x6A;
    /// Secure.
    pub const SECURE: u8 = 0x69;
    /// Mechanical.
    pub const MECHANICAL: u8 = 0x71;
    /// Abort.
    pub const ABORT: u8 = 0x72;
    /// SetDataRateAndClockFrequency.
    pub const SET_DATA_RATE: u8 = 0x73;
}

/// RDR_to_PC message types (CCID §6.2, §6.3).
pub mod rdr_to_pc {
    /// DataBlock.
    pub const DATA_BLOCK: u8 = 0x80;
    /// SlotStatus.
    pub const SLOT_STATUS: u8 = 0x81;
    /// Parameters.
    pub const PARAMETERS: u8 = 0x82;
    /// Escape.
    pub const ESCAPE: u8 = 0x83;
    /// DataRateAndClockFrequency.
    pub const DATA_RATE: u8 = 0x84;
    /// NotifySlotChange (interrupt endpoint).
    pub const NOTIFY_SLOT_CHANGE: u8 = 0x50;
}

/// bError values (CCID §6.2.6, Table 6.2-2).
pub mod error {
    /// Command not supported (also "no error" with bmCommandStatus 0).
    pub const CMD_NOT_SUPPORTED: u8 = 0x00;
    /// Bad dwLength (the offset of the offending field).
    pub const BAD_DWLENGTH: u8 = 0x01;
    /// bSlot does not exist.
    pub const SLOT_NOT_EXIST: u8 = 0x05;
    /// Bad bProtocolNum.
    pub const PROTOCOL_INVALID: u8 = 0x07;
    /// Command aborted.
    pub const CMD_ABORTED: u8 = 0xFF;
    /// ICC mute (no card, or it did not answer).
    pub const ICC_MUTE: u8 = 0xFE;
    /// Hardware error.
    pub const HW_ERROR: u8 = 0xFB;
    /// The slot is busy with another command.
    pub const CMD_SLOT_BUSY: u8 = 0xE0;
}

/// A PC_to_RDR header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// bMessageType.
    pub msg_type: u8,
    /// dwLength.
    pub length: u32,
    /// bSlot.
    pub slot: u8,
    /// bSeq.
    pub seq: u8,
    /// The three message-specific bytes.
    pub specific: [u8; 3],
}

impl Header {
    /// Reads the header at the start of `b`, if there are 10 bytes.
    pub fn parse(b: &[u8]) -> Option<Header> {
        let h = b.first_chunk::<HEADER>()?;
        Some(Header {
            msg_type: h[0],
            length: u32::from_le_bytes([h[1], h[2], h[3], h[4]]),
            slot: h[5],
            seq: h[6],
            specific: [h[7], h[8], h[9]],
        })
    }
}

/// bStatus (CCID §6.2.6): ICC status in bits 0-1 (0 active, 1 inactive, 2 absent) and
/// command status in bits 6-7 (0 ok, 1 failed, 2 time extension).
pub fn status(icc: u8, failed: bool) -> u8 {
    icc | if failed { 0x40 } else { 0 }
}

/// Time extension requested (bmCommandStatus 2).
pub const TIME_EXTENSION: u8 = 0x80;

/// An RDR_to_PC bulk message.
pub fn reply(
    msg_type: u8,
    slot: u8,
    seq: u8,
    status: u8,
    error: u8,
    specific: u8,
    data: &[u8],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER + data.len());
    m.push(msg_type);
    m.extend_from_slice(&(data.len() as u32).to_le_bytes());
    m.extend_from_slice(&[slot, seq, status, error, specific]);
    m.extend_from_slice(data);
    m
}
