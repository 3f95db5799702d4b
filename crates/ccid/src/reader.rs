//! The reader: one slot, the bulk-OUT reassembly, the reply queue, the interrupt endpoint, the
//! class requests. Card work leaves as [`CardRequest`]s and returns through
//! [`Reader::card_answer`]. Where QEMU's usb-ccid is wrong this follows the CCID spec
//! (qemu-ccid.md §5.5 "rev-2026"): no ZLP desynchronisation on xHCI, no reply dropped for its
//! length, CMD_SLOT_BUSY instead of an abort after 128 commands, bSlot validated, a working
//! Abort, and a pending command that always gets an answer.

use crate::descriptors::{self, Identity};
use crate::message::{
    error, pc_to_rdr as pc, rdr_to_pc as rdr, reply, status, Header, HEADER, TIME_EXTENSION,
};
use crate::usb::{Setup, Transfer};
use std::collections::VecDeque;

/// Largest PC_to_RDR message accepted (dwMaxCCIDMessageLength).
pub const MAX_MESSAGE: usize = descriptors::MAX_MESSAGE as usize;
/// Replies queued unread before new commands are refused (a host reads each reply before it
/// sends the next command, CCID §5.2; this only bounds a misbehaving one).
const MAX_QUEUED: usize = 16;
/// Default parameters after ResetParameters (CCID §6.1.7, Table 6.1-3 / 6.1-4).
const T0_DEFAULT: [u8; 5] = [0x11, 0x00, 0x00, 0x0A, 0x00];
const T1_DEFAULT: [u8; 7] = [0x11, 0x10, 0x00, 0x4D, 0x00, 0x20, 0x00];

/// The endpoint answers STALL: the message was malformed or the host ignored the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("STALL")]
pub struct Stall;

/// What the card must do for the reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CardRequest {
    /// Power on (cold reset); answer with [`CardAnswer::Atr`].
    PowerOn,
    /// Power off; no answer.
    PowerOff,
    /// Transmit this command APDU; answer with [`CardAnswer::Response`].
    Transmit(Vec<u8>),
}

/// The card's answer to the outstanding request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CardAnswer {
    /// The ATR after power on.
    Atr(Vec<u8>),
    /// A response APDU.
    Response(Vec<u8>),
    /// The card or its link failed.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    PowerOn,
    Xfr,
}

#[derive(Debug, Clone, Copy)]
struct Busy {
    work: Work,
    seq: u8,
}

/// Largest number of slots a reader may have: bmSlotICCState of a NotifySlotChange carries two
/// bits per slot (CCID §6.3.1), and 16 slots keep it within the interrupt endpoint's 8 bytes
/// while staying within what libccid drives per device (CCID_DRIVER_MAX_READERS).
pub const MAX_SLOTS: usize = 16;

/// One slot's card state (CCID §6.1: each slot has its own card, power, parameters and
/// outstanding command; bSeq and the bulk pipes are the reader's).
#[derive(Debug)]
struct SlotState {
    present: bool,
    powered: bool,
    atr: Vec<u8>,
    /// The change bit of bmSlotICCState, reported by the next NotifySlotChange.
    changed: bool,
    busy: Option<Busy>,
    /// Extended APDU chaining (wLevelParameter 1/3 then 2).
    chain: Vec<u8>,
    protocol: u8,
    params: Vec<u8>,
}

impl SlotState {
    fn new(present: bool) -> SlotState {
        SlotState {
            present,
            powered: false,
            atr: Vec::new(),
            changed: present,
            busy: None,
            chain: Vec::new(),
            protocol: 0,
            params: T0_DEFAULT.to_vec(),
        }
    }

    /// bmICCStatus: 0 present and active, 1 present and inactive, 2 absent.
    fn icc(&self) -> u8 {
        match (self.present, self.powered) {
            (true, true) => 0,
            (true, false) => 1,
            (false, _) => 2,
        }
    }
}

/// The CCID reader state.
#[derive(Debug)]
pub struct Reader {
    id: Identity,
    configuration: u8,
    /// Bulk-OUT bytes of the message being received.
    out: Vec<u8>,
    /// Replies not yet read, and the one being read with its offset.
    queue: VecDeque<Vec<u8>>,
    sending: Option<(Vec<u8>, usize)>,
    zlp_due: bool,
    /// Interrupt IN: a NotifySlotChange is due.
    notify: bool,
    slots: Vec<SlotState>,
    /// bSlot and bSeq of a class ABORT request awaiting its bulk Abort (CCID §5.3.1).
    abort_seq: Option<(u8, u8)>,
}

impl Reader {
    /// A one-slot reader, with or without a card in it.
    pub fn new(id: Identity, card_present: bool) -> Reader {
        Reader::with_slots(id, &[card_present])
    }

    /// A reader with one slot per entry of `present` (at least 1, at most [`MAX_SLOTS`]; the
    /// count is clamped to that range), each with or without a card.
    pub fn with_slots(id: Identity, present: &[bool]) -> Reader {
        let mut slots: Vec<SlotState> = present
            .iter()
            .take(MAX_SLOTS)
            .map(|p| SlotState::new(*p))
            .collect();
        if slots.is_empty() {
            slots.push(SlotState::new(false));
        }
        Reader {
            id,
            configuration: 0,
            out: Vec::new(),
            queue: VecDeque::new(),
            sending: None,
            zlp_due: false,
            notify: slots.iter().any(|s| s.present),
            slots,
            abort_seq: None,
        }
    }

    /// The descriptors' identity.
    pub fn identity(&self) -> &Identity {
        &self.id
    }

    /// The number of slots (bMaxSlotIndex + 1).
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// The configuration descriptor set of this reader (its bMaxSlotIndex).
    pub fn configuration_descriptor(&self) -> Vec<u8> {
        descriptors::configuration_for(self.slots.len() as u8)
    }

    fn icc(&self, slot: u8) -> u8 {
        self.slots.get(usize::from(slot)).map_or(2, SlotState::icc)
    }

    fn push(&mut self, msg: Vec<u8>) {
        self.queue.push_back(msg);
    }

    /// A failure reply of the type the command calls for (CCID §6.1: DataBlock for PowerOn,
    /// XfrBlock and Secure; Parameters for the parameter commands; Escape; DataRate; else
    /// SlotStatus).
    fn fail(&mut self, h: &Header, err: u8) {
        let st = status(self.icc(h.slot), true);
        let protocol = self
            .slots
            .get(usize::from(h.slot))
            .map_or(0, |s| s.protocol);
        let msg = match h.msg_type {
            pc::ICC_POWER_ON | pc::XFR_BLOCK | pc::SECURE => {
                reply(rdr::DATA_BLOCK, h.slot, h.seq, st, err, 0, &[])
            }
            pc::GET_PARAMETERS | pc::RESET_PARAMETERS | pc::SET_PARAMETERS => {
                reply(rdr::PARAMETERS, h.slot, h.seq, st, err, protocol, &[])
            }
            pc::ESCAPE => reply(rdr::ESCAPE, h.slot, h.seq, st, err, 0, &[]),
            pc::SET_DATA_RATE => reply(rdr::DATA_RATE, h.slot, h.seq, st, err, 0, &[0; 8]),
            _ => reply(rdr::SLOT_STATUS, h.slot, h.seq, st, err, 0, &[]),
        };
        self.push(msg);
    }

    fn slot_status(&mut self, h: &Header) {
        let msg = reply(
            rdr::SLOT_STATUS,
            h.slot,
            h.seq,
            status(self.icc(h.slot), false),
            0,
            0,
            &[],
        );
        self.push(msg);
    }

    fn parameters(&mut self, h: &Header, s: usize) {
        let msg = reply(
            rdr::PARAMETERS,
            h.slot,
            h.seq,
            status(self.slots[s].icc(), false),
            0,
            self.slots[s].protocol,
            &self.slots[s].params,
        );
        self.push(msg);
    }

    /// A bulk-OUT transfer (or one packet of it). A transfer whose length is
    /// a multiple of 64 may continue; a shorter one ends the message. A complete command that
    /// needs the card returns the slot (bSlot) and what its card must do.
    pub fn bulk_out(&mut self, data: &[u8]) -> Result<Option<(u8, CardRequest)>, Stall> {
        if self.queue.len() >= MAX_QUEUED {
            tracing::warn!("CCID: {MAX_QUEUED} replies unread; refusing more commands");
            return Err(Stall);
        }
        if self.out.len() + data.len() > MAX_MESSAGE {
            tracing::warn!("CCID: message longer than {MAX_MESSAGE} bytes; STALL");
            self.out.clear();
            return Err(Stall);
        }
        self.out.extend_from_slice(data);
        let may_continue = !data.is_empty()
            && data
                .len()
                .is_multiple_of(usize::from(descriptors::MAX_PACKET));
        let Some(h) = Header::parse(&self.out) else {
            if may_continue {
                return Ok(None);
            }
            tracing::warn!(
                len = self.out.len(),
                "CCID: message shorter than its 10-byte header; STALL"
            );
            self.out.clear();
            return Err(Stall);
        };
        let want = HEADER + h.length as usize;
        if want > MAX_MESSAGE {
            tracing::warn!(
                dw_length = h.length,
                "CCID: dwLength beyond dwMaxCCIDMessageLength; STALL"
            );
            self.out.clear();
            return Err(Stall);
        }
        if self.out.len() < want {
            if may_continue {
                return Ok(None);
            }
            tracing::warn!(
                have = self.out.len(),
                want,
                "CCID: message shorter than its dwLength; STALL"
            );
            self.out.clear();
            return Err(Stall);
        }
        if self.out.len() > want {
            tracing::warn!(
                have = self.out.len(),
                want,
                "CCID: message longer than its dwLength; STALL"
            );
            self.out.clear();
            return Err(Stall);
        }
        let msg = std::mem::take(&mut self.out);
        Ok(self.dispatch(&h, &msg[HEADER..]).map(|r| (h.slot, r)))
    }

    fn dispatch(&mut self, h: &Header, data: &[u8]) -> Option<CardRequest> {
        let s = usize::from(h.slot);
        if s >= self.slots.len() {
            // CCID §6.2.6: bError 5 (the offset of bSlot) for a slot that does not exist.
            tracing::debug!(
                slot = h.slot,
                "CCID: command for a slot that does not exist"
            );
            self.fail(h, error::SLOT_NOT_EXIST);
            return None;
        }
        if h.msg_type == pc::ABORT {
            // CCID §5.3.1: the bulk Abort ends the command being aborted in its slot.
            if let Some(b) = self.slots[s].busy.take() {
                tracing::info!(slot = h.slot, seq = b.seq, "CCID: command aborted");
                let msg = reply(
                    rdr::DATA_BLOCK,
                    h.slot,
                    b.seq,
                    status(self.slots[s].icc(), true),
                    error::CMD_ABORTED,
                    0,
                    &[],
                );
                self.push(msg);
            }
            self.slots[s].chain.clear();
            if self.abort_seq.is_some_and(|(slot, _)| slot == h.slot) {
                self.abort_seq = None;
            }
            self.slot_status(h);
            return None;
        }
        if self.slots[s].busy.is_some() && h.msg_type != pc::GET_SLOT_STATUS {
            self.fail(h, error::CMD_SLOT_BUSY);
            return None;
        }
        let len_must_be = |n: u32| h.length == n;
        match h.msg_type {
            pc::ICC_POWER_ON => {
                if !len_must_be(0) {
                    self.fail(h, error::BAD_DWLENGTH);
                } else if !self.slots[s].present {
                    self.fail(h, error::ICC_MUTE);
                } else {
                    self.slots[s].busy = Some(Busy {
                        work: Work::PowerOn,
                        seq: h.seq,
                    });
                    return Some(CardRequest::PowerOn);
                }
            }
            pc::ICC_POWER_OFF => {
                if !len_must_be(0) {
                    self.fail(h, error::BAD_DWLENGTH);
                    return None;
                }
                let slot = &mut self.slots[s];
                let was = slot.powered;
                slot.powered = false;
                slot.chain.clear();
                self.slot_status(h);
                if was {
                    return Some(CardRequest::PowerOff);
                }
            }
            pc::GET_SLOT_STATUS => {
                if len_must_be(0) {
                    self.slot_status(h);
                } else {
                    self.fail(h, error::BAD_DWLENGTH);
                }
            }
            pc::XFR_BLOCK => {
                if !(self.slots[s].present && self.slots[s].powered) {
                    self.fail(h, error::ICC_MUTE);
                    return None;
                }
                // wLevelParameter (CCID §6.1.4, extended APDU level): 0 = a whole APDU,
                // 1 = begins, 3 = continues (more follow), 2 = ends, 0x10 = empty continue.
                let level = u16::from_le_bytes([h.specific[1], h.specific[2]]);
                let slot = &mut self.slots[s];
                match level {
                    0x0000 => {
                        slot.chain.clear();
                        slot.busy = Some(Busy {
                            work: Work::Xfr,
                            seq: h.seq,
                        });
                        return Some(CardRequest::Transmit(data.to_vec()));
                    }
                    0x0001 | 0x0003 => {
                        if level == 0x0001 {
                            slot.chain.clear();
                        }
                        slot.chain.extend_from_slice(data);
                        let msg = reply(
                            rdr::DATA_BLOCK,
                            h.slot,
                            h.seq,
                            status(slot.icc(), false),
                            0,
                            0x10,
                            &[],
                        );
                        self.push(msg);
                    }
                    0x0002 => {
                        slot.chain.extend_from_slice(data);
                        let apdu = std::mem::take(&mut slot.chain);
                        slot.busy = Some(Busy {
                            work: Work::Xfr,
                            seq: h.seq,
                        });
                        return Some(CardRequest::Transmit(apdu));
                    }
                    _ => self.fail(h, 8), // offset of wLevelParameter
                }
            }
            pc::GET_PARAMETERS => self.parameters(h, s),
            pc::RESET_PARAMETERS => {
                if !len_must_be(0) {
                    self.fail(h, error::BAD_DWLENGTH);
                } else {
                    self.slots[s].protocol = 0;
                    self.slots[s].params = T0_DEFAULT.to_vec();
                    self.parameters(h, s);
                }
            }
            pc::SET_PARAMETERS => match (h.specific[0], h.length) {
                (0, 5) | (1, 7) => {
                    self.slots[s].protocol = h.specific[0];
                    self.slots[s].params = data.to_vec();
                    self.parameters(h, s);
                }
                (0 | 1, _) => self.fail(h, error::BAD_DWLENGTH),
                _ => self.fail(h, error::PROTOCOL_INVALID),
            },
            pc::SET_DATA_RATE => {
                if !len_must_be(8) {
                    self.fail(h, error::BAD_DWLENGTH);
                } else {
                    // Fixed clock and rate: the values in use are returned (CCID §6.2.5).
                    let mut v = 0x0FA0u32.to_le_bytes().to_vec();
                    v.extend_from_slice(&0x2580u32.to_le_bytes());
                    let msg = reply(
                        rdr::DATA_RATE,
                        h.slot,
                        h.seq,
                        status(self.slots[s].icc(), false),
                        0,
                        0,
                        &v,
                    );
                    self.push(msg);
                }
            }
            // Escape, Secure, IccClock, T0APDU, Mechanical, unknown types: not supported.
            other => {
                tracing::debug!("CCID: message type {other:02X} not supported");
                self.fail(h, error::CMD_NOT_SUPPORTED);
            }
        }
        None
    }

    /// The answer of `slot`'s card to its outstanding request. A late answer (after an Abort
    /// or a removal), or one for a slot that does not exist, is dropped.
    pub fn card_answer(&mut self, slot: u8, answer: CardAnswer) {
        let Some(st) = self.slots.get_mut(usize::from(slot)) else {
            tracing::debug!(
                slot,
                "CCID: card answer for a slot that does not exist; dropped"
            );
            return;
        };
        let Some(b) = st.busy.take() else {
            tracing::debug!(slot, "CCID: card answer with nothing outstanding; dropped");
            return;
        };
        let msg = match (b.work, answer) {
            (Work::PowerOn, CardAnswer::Atr(atr)) if !atr.is_empty() => {
                st.powered = true;
                st.protocol = atr_protocol(&atr);
                st.params = if st.protocol == 1 {
                    T1_DEFAULT.to_vec()
                } else {
                    T0_DEFAULT.to_vec()
                };
                st.atr = atr;
                reply(
                    rdr::DATA_BLOCK,
                    slot,
                    b.seq,
                    status(st.icc(), false),
                    0,
                    0,
                    &st.atr,
                )
            }
            (Work::Xfr, CardAnswer::Response(r)) if r.len() >= 2 => reply(
                rdr::DATA_BLOCK,
                slot,
                b.seq,
                status(st.icc(), false),
                0,
                0,
                &r,
            ),
            (_, other) => {
                // Named, not printed: a response's bytes may be secret (apdu::describe).
                let what = match other {
                    CardAnswer::Atr(_) => "an ATR where a response was due, or an empty ATR",
                    CardAnswer::Response(_) => {
                        "a response where an ATR was due, or one without SW1 SW2"
                    }
                    CardAnswer::Failed => "the card or its link failed",
                };
                tracing::warn!(slot, "CCID: the card failed the command: {what}");
                reply(
                    rdr::DATA_BLOCK,
                    slot,
                    b.seq,
                    status(st.icc(), true),
                    error::ICC_MUTE,
                    0,
                    &[],
                )
            }
        };
        self.push(msg);
    }

    /// While `slot`'s card works: a time-extension DataBlock (CCID §6.2.7, bStatus 0x80,
    /// bError = BWI multiplier 1) so the host keeps waiting. Call it about once a second.
    pub fn time_extension(&mut self, slot: u8) {
        let Some(st) = self.slots.get(usize::from(slot)) else {
            return;
        };
        if let Some(b) = st.busy {
            let msg = reply(
                rdr::DATA_BLOCK,
                slot,
                b.seq,
                TIME_EXTENSION | st.icc(),
                1,
                0,
                &[],
            );
            self.push(msg);
        }
    }

    /// Whether a card request of `slot` is outstanding.
    pub fn is_busy(&self, slot: u8) -> bool {
        self.slots
            .get(usize::from(slot))
            .is_some_and(|s| s.busy.is_some())
    }

    /// A card was inserted in `slot`: NotifySlotChange with its present and changed bits; it
    /// stays unpowered until IccPowerOn.
    pub fn card_inserted(&mut self, slot: u8) {
        let Some(st) = self.slots.get_mut(usize::from(slot)) else {
            return;
        };
        if !st.present {
            st.changed = true;
        }
        st.present = true;
        st.powered = false;
        self.notify = true;
    }

    /// The card of `slot` was removed: NotifySlotChange, and an outstanding command is
    /// answered (failed, ICC mute) instead of being left to hang.
    pub fn card_removed(&mut self, slot: u8) {
        let Some(st) = self.slots.get_mut(usize::from(slot)) else {
            return;
        };
        if st.present {
            st.changed = true;
        }
        st.present = false;
        st.powered = false;
        st.chain.clear();
        self.notify = true;
        if let Some(b) = st.busy.take() {
            let msg = reply(
                rdr::DATA_BLOCK,
                slot,
                b.seq,
                status(2, true),
                error::ICC_MUTE,
                0,
                &[],
            );
            self.push(msg);
        }
    }

    /// Bulk IN from EP 0x82, at most `max` bytes. A reply that ends exactly on a full 64-byte
    /// packet the host asked exactly 64 for is followed by a zero-length packet; a host that
    /// asked for more already saw the transfer end short (QEMU sends the ZLP in both cases and
    /// desynchronises xHCI guests: qemu-ccid.md §2.10).
    pub fn bulk_in(&mut self, max: usize) -> Transfer {
        if self.zlp_due {
            self.zlp_due = false;
            return Transfer::Done(Vec::new());
        }
        if self.sending.is_none() {
            match self.queue.pop_front() {
                Some(m) => self.sending = Some((m, 0)),
                None => return Transfer::Pending,
            }
        }
        let Some((msg, off)) = self.sending.as_mut() else {
            return Transfer::Pending;
        };
        let n = (msg.len() - *off).min(max);
        let chunk = msg[*off..*off + n].to_vec();
        *off += n;
        if *off == msg.len() {
            self.sending = None;
            let packet = usize::from(descriptors::MAX_PACKET);
            if n == packet && max == packet {
                self.zlp_due = true;
            }
        }
        Transfer::Done(chunk)
    }

    /// Whether a bulk IN would complete now.
    pub fn bulk_in_ready(&self) -> bool {
        self.zlp_due || self.sending.is_some() || !self.queue.is_empty()
    }

    /// Interrupt IN from EP 0x81: NotifySlotChange `50 <bmSlotICCState>` when due, else
    /// pending. bmSlotICCState has two bits per slot, slot 0 in the low bits of the first
    /// byte: present, then changed (CCID §6.3.1); one byte per four slots.
    pub fn interrupt_in(&mut self, max: usize) -> Transfer {
        if !self.notify {
            return Transfer::Pending;
        }
        let len = 1 + self.slots.len().div_ceil(4);
        if max < len {
            return Transfer::Stall;
        }
        let mut msg = vec![0u8; len];
        msg[0] = rdr::NOTIFY_SLOT_CHANGE;
        for (i, st) in self.slots.iter_mut().enumerate() {
            let bits = u8::from(st.present) | (u8::from(st.changed) << 1);
            msg[1 + i / 4] |= bits << (2 * (i % 4));
            st.changed = false;
        }
        self.notify = false;
        Transfer::Done(msg)
    }

    /// Whether an interrupt IN would complete now.
    pub fn interrupt_ready(&self) -> bool {
        self.notify
    }

    /// An IN transfer on the reader's IN endpoints (bulk 0x82, interrupt 0x81); others STALL.
    pub fn endpoint_in(&mut self, ep: u8, max: usize) -> Transfer {
        match ep {
            descriptors::EP_BULK_IN => self.bulk_in(max),
            descriptors::EP_INTERRUPT_IN => self.interrupt_in(max),
            _ => Transfer::Stall,
        }
    }

    /// Whether an IN on `ep` would complete now.
    pub fn endpoint_ready(&self, ep: u8) -> bool {
        match ep {
            descriptors::EP_BULK_IN => self.bulk_in_ready(),
            descriptors::EP_INTERRUPT_IN => self.interrupt_ready(),
            _ => false,
        }
    }

    /// A control transfer: the standard requests a device answers itself and the CCID class
    /// requests (CCID §5.3).
    pub fn control(&mut self, s: &Setup, _data: &[u8]) -> Transfer {
        let len = usize::from(s.length);
        let cut = |mut v: Vec<u8>| {
            v.truncate(len);
            Transfer::Done(v)
        };
        match (s.request_type, s.request) {
            // GET_DESCRIPTOR
            (0x80, 0x06) => match (s.value >> 8) as u8 {
                1 => cut(descriptors::device(&self.id)),
                2 => cut(self.configuration_descriptor()),
                3 => descriptors::string(&self.id, s.value as u8).map_or(Transfer::Stall, cut),
                _ => Transfer::Stall,
            },
            // GET_STATUS: device self-powered; interface and endpoint zero.
            (0x80, 0x00) => cut(vec![0x01, 0x00]),
            (0x81, 0x00) | (0x82, 0x00) => cut(vec![0x00, 0x00]),
            // SET_ADDRESS, SET/CLEAR_FEATURE (device remote wake-up, endpoint halt).
            (0x00, 0x05) | (0x00, 0x01) | (0x00, 0x03) | (0x02, 0x01) | (0x02, 0x03) => {
                Transfer::Done(vec![])
            }
            // SET_CONFIGURATION / GET_CONFIGURATION.
            (0x00, 0x09) if s.value <= 1 => {
                self.configuration = s.value as u8;
                Transfer::Done(vec![])
            }
            (0x80, 0x08) => cut(vec![self.configuration]),
            // SET_INTERFACE alt 0 / GET_INTERFACE.
            (0x01, 0x0B) if s.value == 0 && s.index == 0 => Transfer::Done(vec![]),
            (0x81, 0x0A) if s.index == 0 => cut(vec![0]),
            // CCID class ABORT (§5.3.1): wValue = bSeq << 8 | bSlot; the bulk Abort follows.
            (0x21, 0x01) if usize::from(s.value & 0xFF) < self.slots.len() => {
                self.abort_seq = Some(((s.value & 0xFF) as u8, (s.value >> 8) as u8));
                Transfer::Done(vec![])
            }
            // GET_CLOCK_FREQUENCIES / GET_DATA_RATES (§5.3.2, §5.3.3): the one of each.
            (0xA1, 0x02) => cut(0x0FA0u32.to_le_bytes().to_vec()),
            (0xA1, 0x03) => cut(0x2580u32.to_le_bytes().to_vec()),
            _ => {
                tracing::debug!(?s, "control request not supported; STALL");
                Transfer::Stall
            }
        }
    }

    /// A USB bus reset: transfers and the outstanding commands are dropped (the cards' late
    /// answers will be ignored); the slots' states are announced again.
    pub fn reset(&mut self) {
        self.out.clear();
        self.queue.clear();
        self.sending = None;
        self.zlp_due = false;
        self.abort_seq = None;
        for st in &mut self.slots {
            st.busy = None;
            st.chain.clear();
            st.powered = false;
            st.changed = st.present;
        }
        self.notify = self.slots.iter().any(|s| s.present);
    }
}

/// The protocol an ATR offers first: T from TD1 if present, else T=0 (ISO 7816-3 §8.2.3).
fn atr_protocol(atr: &[u8]) -> u8 {
    let Some(&t0) = atr.get(1) else { return 0 };
    if t0 & 0x80 == 0 {
        return 0;
    }
    let i = 2 + usize::from(t0 >> 4 & 0x07).count_ones() as usize;
    match atr.get(i).map(|td| td & 0x0F) {
        Some(1) => 1,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apdu::hex::{h, spaced};
    use proptest::prelude::*;

    fn next(r: &mut Reader) -> String {
        match r.bulk_in(65554) {
            Transfer::Done(d) => spaced(&d),
            other => format!("{other:?}"),
        }
    }

    fn powered() -> Reader {
        let mut r = Reader::new(Identity::default(), true);
        assert_eq!(
            r.bulk_out(&h("62 00000000 00 01 000000")),
            Ok(Some((0, CardRequest::PowerOn)))
        );
        r.card_answer(0, CardAnswer::Atr(h("3B 02 14 50")));
        assert_eq!(
            next(&mut r),
            spaced(&h("80 04000000 00 01 00 00 00 3B021450"))
        );
        r
    }

    #[test]
    fn slow_card_busy_time_extension_and_late_answer() {
        let mut r = powered();
        assert_eq!(
            r.bulk_out(&h("6F 04000000 00 02 000000 00A40400")),
            Ok(Some((0, CardRequest::Transmit(h("00A40400")))))
        );
        assert_eq!(next(&mut r), "Pending");
        r.time_extension(0);
        assert_eq!(next(&mut r), spaced(&h("80 00000000 00 02 80 01 00")));
        // A second command while the card works: CMD_SLOT_BUSY; GetSlotStatus still answers.
        assert_eq!(
            r.bulk_out(&h("6F 04000000 00 03 000000 00B00000")),
            Ok(None)
        );
        assert_eq!(next(&mut r), spaced(&h("80 00000000 00 03 40 E0 00")));
        assert_eq!(r.bulk_out(&h("65 00000000 00 04 000000")), Ok(None));
        assert_eq!(next(&mut r), spaced(&h("81 00000000 00 04 00 00 00")));
        r.card_answer(0, CardAnswer::Response(h("90 00")));
        assert_eq!(next(&mut r), spaced(&h("80 02000000 00 02 00 00 00 9000")));
        // An answer with nothing outstanding is dropped.
        r.card_answer(0, CardAnswer::Response(h("90 00")));
        assert_eq!(next(&mut r), "Pending");
    }

    #[test]
    fn abort_handshake_and_failed_card() {
        let mut r = powered();
        r.bulk_out(&h("6F 04000000 00 05 000000 00A40400")).unwrap();
        let abort = Setup {
            request_type: 0x21,
            request: 0x01,
            value: 0x0500,
            index: 0,
            length: 0,
        };
        assert_eq!(r.control(&abort, &[]), Transfer::Done(vec![]));
        assert_eq!(r.bulk_out(&h("72 00000000 00 05 000000")), Ok(None));
        assert_eq!(next(&mut r), spaced(&h("80 00000000 00 05 40 FF 00")));
        assert_eq!(next(&mut r), spaced(&h("81 00000000 00 05 00 00 00")));
        r.card_answer(0, CardAnswer::Response(h("90 00")));
        assert_eq!(
            next(&mut r),
            "Pending",
            "the aborted command's late answer is dropped"
        );
        r.bulk_out(&h("6F 04000000 00 06 000000 00A40400")).unwrap();
        r.card_answer(0, CardAnswer::Failed);
        assert_eq!(next(&mut r), spaced(&h("80 00000000 00 06 40 FE 00")));
        // Removal answers the outstanding command instead of leaving the host waiting.
        r.bulk_out(&h("6F 04000000 00 07 000000 00A40400")).unwrap();
        r.card_removed(0);
        assert_eq!(next(&mut r), spaced(&h("80 00000000 00 07 42 FE 00")));
        assert_eq!(r.interrupt_in(2), Transfer::Done(h("50 02")));
    }

    #[test]
    fn extended_apdu_chaining() {
        let mut r = powered();
        assert_eq!(r.bulk_out(&h("6F 02000000 00 08 000100 0011")), Ok(None));
        assert_eq!(next(&mut r), spaced(&h("80 00000000 00 08 00 00 10")));
        assert_eq!(r.bulk_out(&h("6F 02000000 00 09 000300 2233")), Ok(None));
        next(&mut r);
        assert_eq!(
            r.bulk_out(&h("6F 01000000 00 0A 000200 44")),
            Ok(Some((0, CardRequest::Transmit(h("00 11 22 33 44")))))
        );
        assert_eq!(r.bulk_out(&h("6F 01000000 00 0B 000000 44")), Ok(None));
        assert_eq!(next(&mut r), spaced(&h("80 00000000 00 0B 40 E0 00")));
    }

    #[test]
    fn atr_protocol_and_reset() {
        assert_eq!(
            atr_protocol(&h("3B 7A 18 00 00 73 66 74 65 20 63 64 31 34 34")),
            0
        );
        assert_eq!(atr_protocol(&h("3B 95 13 81 01 80 73 FF 01 00 0B")), 1);
        assert_eq!(atr_protocol(&h("3B 80")), 0);
        assert_eq!(atr_protocol(&[]), 0);
        let mut r = powered();
        r.bulk_out(&h("6F 04000000 00 02 000000 00A40400")).unwrap();
        r.reset();
        assert_eq!(r.interrupt_in(2), Transfer::Done(h("50 03")));
        r.card_answer(0, CardAnswer::Response(h("90 00")));
        assert_eq!(next(&mut r), "Pending");
    }

    proptest! {
        #[test]
        fn bulk_out_is_total_and_memory_is_bounded(packets in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..30)) {
            let mut r = Reader::new(Identity::default(), true);
            for p in packets {
                if let Ok(Some(_)) = r.bulk_out(&p) {
                    r.card_answer(0, CardAnswer::Response(vec![0x90, 0x00]));
                }
                prop_assert!(r.out.len() <= MAX_MESSAGE);
                while let Transfer::Done(_) = r.bulk_in(64) {}
            }
        }
    }
}
