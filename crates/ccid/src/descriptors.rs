//! USB descriptors of the reader. The layout is QEMU usb-ccid's (qemu-ccid.md §2.2), so that
//! libccid and Windows' inbox driver treat it the same; values differ only where QEMU's are
//! wrong for a reader that really does what it advertises (marked "differs").

/// Endpoint addresses.
pub const EP_INTERRUPT_IN: u8 = 0x81;
/// Bulk IN (RDR_to_PC messages).
pub const EP_BULK_IN: u8 = 0x82;
/// Bulk OUT (PC_to_RDR messages).
pub const EP_BULK_OUT: u8 = 0x03;
/// Max packet size of every endpoint (full speed).
pub const MAX_PACKET: u16 = 64;
/// dwMaxCCIDMessageLength: 10-byte header + the longest extended APDU response (65536 + 2)
/// with room to spare. QEMU advertises the same but can deliver only 384; we deliver it.
pub const MAX_MESSAGE: u32 = 0x0001_0012;

/// dwFeatures (CCID §5.1, Table 5.1-1): automatic parameter configuration from the ATR (0x02),
/// activation (0x04), voltage (0x08), clock (0x10), baud rate (0x20), parameter negotiation
/// (0x40), PPS (0x80), and **extended APDU level exchange (0x40000)**. Differs from QEMU's
/// TPDU level (0x10000): our cards are APDU-level cards, and APDU level lets responses of
/// several KiB (RSA-4096 certificates) cross in one DataBlock.
pub const FEATURES: u32 = 0x0004_00FE;

/// What a reader instance may change.
#[derive(Debug, Clone)]
pub struct Identity {
    /// idVendor (default 0x08E6 Gemplus: libccid drives only readers in its Info.plist).
    pub vendor: u16,
    /// idProduct (default 0x4433, "Gemalto Gemplus USB SmartCard Reader 433-Swap").
    pub product: u16,
    /// iManufacturer string.
    pub manufacturer: String,
    /// iProduct string.
    pub product_name: String,
    /// iSerialNumber string (pcscd shows it in the reader name).
    pub serial: String,
}

impl Default for Identity {
    fn default() -> Self {
        Identity {
            vendor: 0x08E6,
            product: 0x4433,
            manufacturer: "vccid".into(),
            product_name: "vccid CCID reader".into(),
            serial: "1".into(),
        }
    }
}

/// The 18-byte device descriptor (USB 2.0 §9.6.1): USB 1.1, class defined by the interface,
/// EP0 64 bytes, strings 1-3, one configuration.
pub fn device(id: &Identity) -> Vec<u8> {
    let mut d = vec![0x12, 0x01, 0x10, 0x01, 0x00, 0x00, 0x00, 0x40];
    d.extend_from_slice(&id.vendor.to_le_bytes());
    d.extend_from_slice(&id.product.to_le_bytes());
    d.extend_from_slice(&[0x00, 0x00, 0x01, 0x02, 0x03, 0x01]);
    d
}

/// The CCID class descriptor (CCID §5.1, 54 bytes) of a one-slot reader.
pub fn ccid_class() -> Vec<u8> {
    ccid_class_for(1)
}

/// The CCID class descriptor of a reader with `slots` slots (1 to 16): bMaxSlotIndex is
/// `slots - 1`, and every slot may be busy at once (bMaxCCIDBusySlots), since each slot's card
/// has its own port.
pub fn ccid_class_for(slots: u8) -> Vec<u8> {
    let slots = slots.clamp(1, 16);
    let mut d = vec![0x36, 0x21, 0x10, 0x01]; // bLength, CCID functional, bcdCCID 1.10
    d.push(slots - 1); // bMaxSlotIndex
    d.push(0x07); // bVoltageSupport: 5 V, 3 V, 1.8 V
    d.extend_from_slice(&3u32.to_le_bytes()); // dwProtocols: T=0 and T=1 (differs: QEMU says T=0)
    d.extend_from_slice(&0x0FA0u32.to_le_bytes()); // dwDefaultClock 4 MHz
    d.extend_from_slice(&0x0001_0000u32.to_le_bytes()); // dwMaximumClock
    d.push(0x00); // bNumClockSupported
    d.extend_from_slice(&0x2580u32.to_le_bytes()); // dwDataRate 9600 bps
    d.extend_from_slice(&0x0001_C200u32.to_le_bytes()); // dwMaxDataRate 115200 bps
    d.push(0x00); // bNumDataRatesSupported
    d.extend_from_slice(&0xFEu32.to_le_bytes()); // dwMaxIFSD 254
    d.extend_from_slice(&0u32.to_le_bytes()); // dwSynchProtocols
    d.extend_from_slice(&0u32.to_le_bytes()); // dwMechanical
    d.extend_from_slice(&FEATURES.to_le_bytes());
    d.extend_from_slice(&MAX_MESSAGE.to_le_bytes());
    d.push(0xFF); // bClassGetResponse: echo the APDU's class
    d.push(0xFF); // bClassEnvelope
    d.extend_from_slice(&0u16.to_le_bytes()); // wLcdLayout: none
    d.push(0x00); // bPINSupport: none (differs: QEMU claims verification it does not do)
    d.push(slots); // bMaxCCIDBusySlots
    d
}

/// The configuration descriptor set: configuration, interface, CCID class, three endpoints
/// (93 bytes), of a one-slot reader.
pub fn configuration() -> Vec<u8> {
    configuration_for(1)
}

/// The configuration descriptor set of a reader with `slots` slots (1 to 16).
pub fn configuration_for(slots: u8) -> Vec<u8> {
    // bmAttributes 0xE0 (self-powered, remote wake-up), 100 mA, as QEMU.
    let mut d = vec![0x09, 0x02, 0x5D, 0x00, 0x01, 0x01, 0x00, 0xE0, 0x32];
    // Interface 0: three endpoints, class 0x0B (Smart Card), iInterface 4.
    d.extend_from_slice(&[0x09, 0x04, 0x00, 0x00, 0x03, 0x0B, 0x00, 0x00, 0x04]);
    d.extend(ccid_class_for(slots));
    let [lo, hi] = MAX_PACKET.to_le_bytes();
    // Interrupt IN, bInterval 255 ms (QEMU's; usbredir needs it non-zero).
    d.extend_from_slice(&[0x07, 0x05, EP_INTERRUPT_IN, 0x03, lo, hi, 0xFF]);
    d.extend_from_slice(&[0x07, 0x05, EP_BULK_IN, 0x02, lo, hi, 0x00]);
    d.extend_from_slice(&[0x07, 0x05, EP_BULK_OUT, 0x02, lo, hi, 0x00]);
    d
}

/// String descriptor `index` (USB 2.0 §9.6.7): 0 = LANGID list (0x0409), else UTF-16LE.
pub fn string(id: &Identity, index: u8) -> Option<Vec<u8>> {
    let s = match index {
        0 => return Some(vec![0x04, 0x03, 0x09, 0x04]),
        1 => id.manufacturer.as_str(),
        2 => id.product_name.as_str(),
        3 => id.serial.as_str(),
        4 => "CCID Interface",
        _ => return None,
    };
    let units: Vec<u16> = s.encode_utf16().take(126).collect();
    let mut d = vec![(2 + units.len() * 2) as u8, 0x03];
    for u in units {
        d.extend_from_slice(&u.to_le_bytes());
    }
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use apdu::hex::{h, spaced};

    #[test]
    fn golden_descriptors() {
        assert_eq!(
            spaced(&device(&Identity::default())),
            spaced(&h("12 01 10 01 00 00 00 40 E6 08 33 44 00 00 01 02 03 01"))
        );
        let c = configuration();
        assert_eq!(c.len(), 93);
        assert_eq!(
            spaced(&c),
            spaced(&h(
                "09 02 5D 00 01 01 00 E0 32  09 04 00 00 03 0B 00 00 04
                 36 21 10 01 00 07 03 00 00 00 A0 0F 00 00 00 00 01 00 00 80 25 00 00 00 C2 01 00 00
                 FE 00 00 00 00 00 00 00 00 00 00 00 FE 00 04 00 12 00 01 00 FF FF 00 00 00 01
                 07 05 81 03 40 00 FF  07 05 82 02 40 00 00  07 05 03 02 40 00 00"
            ))
        );
        assert_eq!(ccid_class().len(), 54);
        // Two slots: bMaxSlotIndex 1 (offset 4) and bMaxCCIDBusySlots 2 (offset 53).
        let two = ccid_class_for(2);
        assert_eq!((two[4], two[53]), (1, 2));
        assert_eq!(configuration_for(2)[18 + 4], 1);
        assert_eq!(configuration_for(2).len(), 93);
        assert_eq!(string(&Identity::default(), 0), Some(h("04 03 09 04")));
        assert_eq!(
            string(&Identity::default(), 4).unwrap()[..6],
            h("1E 03 43 00 43 00")[..]
        );
        assert_eq!(string(&Identity::default(), 9), None);
    }
}
