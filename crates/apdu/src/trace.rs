//! Logical exchanges for a trace (issue #18's decoder, first part): what the host meant, not
//! the pieces the transport carried.
//!
//! * [`Folder`] folds command chaining (CLA b5, ISO 7816-4 §5.1.1: every piece but the last
//!   answered 9000) and GET RESPONSE after 61xx (§5.3.4: the rest of the same response) into
//!   one [`Exchange`]: the whole command data, the whole response data, the final status word,
//!   how many pieces it took and the time the card spent on all of them. Secrets are blanked in
//!   every piece before it is kept ([`crate::describe::redact_command`],
//!   [`Decoder::response_is_secret`]): a folded exchange never holds a PIN, a management-key
//!   witness, key material to import, or a decipher output.
//! * [`tlv_tree`] reads a data field as nested BER-TLV (ISO 7816-4 §6.3) with the names SP
//!   800-73-4 gives PIV's tags, falling back to a byte count where the bytes are not TLV.
//!
//! Total like the rest of this crate: any bytes give a value.

use crate::describe::{self, Decoder};
use crate::{ber, Command, Sw};
use std::fmt::Write as _;

/// One logical command/response pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The decoded line (`describe`) for the whole exchange, in the application selected
    /// before it.
    pub line: String,
    /// CLA (chaining bit cleared), INS, P1, P2 of the first piece.
    pub header: [u8; 4],
    /// The whole command data field, secrets blanked.
    pub command_data: Vec<u8>,
    /// Whether any of the command data was blanked.
    pub command_redacted: bool,
    /// The whole response data, secrets blanked.
    pub response_data: Vec<u8>,
    /// Whether the response data was blanked.
    pub response_redacted: bool,
    /// The final status word (0 when the card's last answer had none).
    pub sw: u16,
    /// Command pieces (chaining) plus GET RESPONSEs it took.
    pub pieces: usize,
    /// Time the card took over all pieces, microseconds.
    pub micros: u64,
}

/// Longest data a folded exchange keeps, per side: PIV objects reach a few kilobytes; a host
/// that chains for ever must not grow memory without bound.
pub const MAX_DATA: usize = 65_536;

/// Folds raw exchanges into logical ones; one per card (it tracks the selected application).
#[derive(Debug, Default)]
pub struct Folder {
    decoder: Decoder,
    pending: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    /// The decoder as it was before the first piece (the line is described in that state).
    decoder: Decoder,
    header: [u8; 4],
    le: Option<u32>,
    command_data: Vec<u8>,
    command_redacted: bool,
    response_data: Vec<u8>,
    response_redacted: bool,
    pieces: usize,
    micros: u64,
    /// Still sending chained pieces (the next piece is a command continuation).
    chaining: bool,
    /// The status word of the last piece answered.
    last_sw: u16,
}

fn extend_capped(v: &mut Vec<u8>, more: &[u8]) {
    let room = MAX_DATA.saturating_sub(v.len());
    v.extend_from_slice(&more[..more.len().min(room)]);
}

impl Folder {
    /// A folder that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets everything, as a card reset does.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Takes one raw exchange (`micros` the card's time for it); returns the logical
    /// exchanges it completes: none (more pieces are due), one, or two (a host that abandoned
    /// a chain or a GET RESPONSE and sent a new command: the abandoned one as it stands, then
    /// the new one if it is complete).
    pub fn push(&mut self, cmd: &[u8], resp: &[u8], micros: u64) -> Vec<Exchange> {
        let mut done = Vec::new();
        let sw = resp
            .split_last_chunk::<2>()
            .map(|(_, s)| Sw(u16::from_be_bytes(*s)));
        let resp_secret = self.decoder.response_is_secret(cmd);
        let command = describe::redact_command(cmd);
        let command_redacted = matches!(command, std::borrow::Cow::Owned(_));
        let parsed = Command::parse(&command).ok();
        let resp_data = resp.split_last_chunk::<2>().map_or(resp, |(d, _)| d);
        let continues = self.pending.as_ref().is_some_and(|p| match &parsed {
            // The next piece of the same command: same INS (ISO 7816-4 §5.1.1).
            Some(c) if p.chaining => c.ins == p.header[1],
            Some(c) => c.ins == 0xC0,
            None => false,
        });
        match self.pending.as_mut() {
            Some(p) if continues => {
                if p.chaining {
                    if let Some(c) = parsed.as_ref() {
                        extend_capped(&mut p.command_data, c.data);
                        p.le = c.le;
                        p.chaining = c.cla & 0x10 != 0;
                    }
                    p.command_redacted |= command_redacted;
                }
                p.pieces += 1;
            }
            _ => {
                if let Some(p) = self.pending.take() {
                    let last = p.last_sw;
                    done.push(p.finish(last));
                }
                self.pending = Some(self.start(&command, parsed.as_ref(), command_redacted));
            }
        }
        done.extend(self.feed(resp_data, resp_secret, sw, micros));
        self.decoder.observe(cmd, resp);
        done
    }

    fn start(&self, command: &[u8], parsed: Option<&Command>, redacted: bool) -> Pending {
        let header = command.first_chunk::<4>().copied().unwrap_or([0, 0, 0, 0]);
        let (data, le, chaining) = match parsed {
            Some(c) => (c.data, c.le, c.cla & 0x10 != 0),
            None => (command.get(4..).unwrap_or(&[]), None, false),
        };
        let mut command_data = Vec::new();
        extend_capped(&mut command_data, data);
        Pending {
            decoder: self.decoder.clone(),
            header: [header[0] & !0x10, header[1], header[2], header[3]],
            le,
            command_data,
            command_redacted: redacted,
            response_data: Vec::new(),
            response_redacted: false,
            pieces: 1,
            micros: 0,
            chaining,
            last_sw: 0,
        }
    }

    /// Adds a response to what is pending; finishes it unless more pieces are due.
    fn feed(
        &mut self,
        resp_data: &[u8],
        resp_secret: bool,
        sw: Option<Sw>,
        micros: u64,
    ) -> Option<Exchange> {
        let p = self.pending.as_mut()?;
        p.micros = p.micros.saturating_add(micros);
        if resp_secret && !resp_data.is_empty() {
            extend_capped(&mut p.response_data, &vec![0; resp_data.len()]);
            p.response_redacted = true;
        } else {
            extend_capped(&mut p.response_data, resp_data);
        }
        let sw = sw.map_or(0, |s| s.0);
        p.last_sw = sw;
        let more_pieces = p.chaining && sw == 0x9000;
        let more_data = sw >> 8 == 0x61;
        if more_pieces || more_data {
            if !more_pieces {
                p.chaining = false;
            }
            return None;
        }
        self.pending.take().map(|p| p.finish(sw))
    }
}

impl Pending {
    fn finish(self, sw: u16) -> Exchange {
        // The whole command as one APDU (extended lengths when the data needs them), for the
        // line; the data is already redacted.
        let [cla, ins, p1, p2] = self.header;
        let mut buf = crate::CommandBuf::new(cla, ins, p1, p2).data(self.command_data.clone());
        if let Some(le) = self.le {
            buf = buf.le(le);
        }
        let apdu = buf.to_bytes().unwrap_or_else(|| self.header.to_vec());
        let mut resp = self.response_data.clone();
        resp.extend_from_slice(&sw.to_be_bytes());
        let mut decoder = self.decoder;
        let line = decoder.exchange(&apdu, &resp);
        Exchange {
            line,
            header: self.header,
            command_data: self.command_data,
            command_redacted: self.command_redacted,
            response_data: self.response_data,
            response_redacted: self.response_redacted,
            sw,
            pieces: self.pieces,
            micros: self.micros,
        }
    }
}

/// One node of a data field read as BER-TLV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A data object: its tag, what the standard calls it, its length, and for a constructed
    /// one (X.690 §8.1.2.5: b6 of the first tag byte) its children.
    Tlv {
        /// The tag bytes read big-endian.
        tag: u32,
        /// SP 800-73-4's name for it, where it has one.
        name: Option<&'static str>,
        /// Length of the value.
        len: usize,
        /// The value when it is primitive and short (16 bytes or fewer).
        value: Option<Vec<u8>>,
        /// The children of a constructed object.
        children: Vec<Node>,
    },
    /// Bytes that are not (or no longer) TLV: how many.
    Bytes(usize),
}

/// Deepest nesting and most nodes [`tlv_tree`] reads: a hostile data field cannot make it
/// recurse or allocate without bound.
pub const MAX_DEPTH: usize = 8;
/// See [`MAX_DEPTH`].
pub const MAX_NODES: usize = 256;

/// SP 800-73-4's names for the tags a PIV exchange carries, by the template they are in
/// (`parent`; `None` at the top): the same tag means different things in different templates
/// (80 is a witness in 7C, an algorithm in AC).
fn tag_name(parent: Option<u32>, tag: u32) -> Option<&'static str> {
    Some(match (parent, tag) {
        // Part 2 §3.2.4, GENERAL AUTHENTICATE's dynamic authentication template.
        (Some(0x7C), 0x80) => "witness",
        (Some(0x7C), 0x81) => "challenge",
        (Some(0x7C), 0x82) => "response",
        (Some(0x7C), 0x85) => "exponentiation",
        // Part 1 Table 3: the application property template and its algorithms.
        (Some(0x61), 0x4F) | (Some(0x79), 0x4F) => "AID",
        (Some(0x61), 0x79) => "coexistent tag allocation authority",
        (Some(0x61), 0x50) => "application label",
        (Some(0x61), 0x5F50) => "URL",
        (Some(0x61), 0xAC) => "cryptographic algorithms",
        (Some(0xAC), 0x80) => "algorithm",
        (Some(0xAC), 0x06) => "object identifier",
        // Part 1 Table 9 (CHUID) and Tables 10-15 (certificates), inside the 53 wrapper.
        (Some(0x53), 0x30) => "FASC-N",
        (Some(0x53), 0x32) => "organizational identifier",
        (Some(0x53), 0x33) => "DUNS",
        (Some(0x53), 0x34) => "GUID",
        (Some(0x53), 0x35) => "expiration date",
        (Some(0x53), 0x36) => "cardholder UUID",
        (Some(0x53), 0x3E) => "issuer asymmetric signature",
        (Some(0x53), 0x70) => "certificate",
        (Some(0x53), 0x71) => "certificate info",
        (Some(0x53), 0xFE) => "error detection code",
        // Part 2 §3.3.2, GENERATE ASYMMETRIC KEY PAIR's public key.
        (Some(0x7F49), 0x81) => "modulus",
        (Some(0x7F49), 0x82) => "public exponent",
        (Some(0x7F49), 0x86) => "EC point",
        // ISO 7816-4 §7.4.1: the FCI of a SELECT.
        (Some(0x6F), 0x84) => "DF name",
        (Some(0x6F), 0xA5) => "FCI proprietary",
        (_, 0x53) => "data object",
        (_, 0x5C) => "tag list",
        (_, 0x7C) => "dynamic authentication template",
        (_, 0x61) => "application property template",
        (_, 0x6F) => "FCI template",
        (_, 0x7F49) => "public key",
        (_, 0xAC) => "cryptographic algorithms",
        (_, 0x5F2F) => "PIN usage policy",
        _ => return None,
    })
}

/// Reads `data` as a sequence of BER-TLV objects, constructed ones recursively.
pub fn tlv_tree(data: &[u8]) -> Vec<Node> {
    let mut budget = MAX_NODES;
    read_level(data, None, 0, &mut budget)
}

fn read_level(mut data: &[u8], parent: Option<u32>, depth: usize, budget: &mut usize) -> Vec<Node> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if *budget == 0 || depth >= MAX_DEPTH {
            out.push(Node::Bytes(data.len()));
            break;
        }
        match ber::parse_one(data) {
            Ok((t, rest)) => {
                *budget -= 1;
                let first = t
                    .tag
                    .to_be_bytes()
                    .into_iter()
                    .find(|b| *b != 0)
                    .unwrap_or(0);
                // SP 800-73-4 does not follow X.690's b6 everywhere: 53 is primitive by its tag
                // but holds TLV, while 70 (a DER certificate), 71 and FE are constructed by
                // their tags but hold bytes. A container is read as one only when its whole
                // value parses as TLV.
                let by_tag = match t.tag {
                    0x53 => true,
                    0x70 | 0x71 | 0xFE => false,
                    _ => first & 0x20 != 0,
                };
                let container = by_tag && ber::iter(t.value).all(|r| r.is_ok());
                let constructed = container && !t.value.is_empty();
                let children = if constructed {
                    read_level(t.value, Some(t.tag), depth + 1, budget)
                } else {
                    Vec::new()
                };
                out.push(Node::Tlv {
                    tag: t.tag,
                    name: tag_name(parent, t.tag),
                    len: t.value.len(),
                    value: (!constructed && t.value.len() <= 16).then(|| t.value.to_vec()),
                    children,
                });
                data = rest;
            }
            Err(_) => {
                out.push(Node::Bytes(data.len()));
                break;
            }
        }
    }
    out
}

/// The data of one side of an exchange for a person, indented: a TLV tree when the whole
/// field reads as TLV, else its length; "secret (blanked)" for a redacted side; nothing for an
/// empty one, or for a SELECT's AID (the line names it).
pub fn render_side(side: &str, header: [u8; 4], data: &[u8], redacted: bool) -> String {
    if data.is_empty() || (side == "command" && header[1] == 0xA4) {
        return String::new();
    }
    if redacted {
        return format!("    {side}: {} bytes, secret (blanked)\n", data.len());
    }
    let tree = tlv_tree(data);
    if !is_whole(&tree) {
        return format!("    {side}: {} bytes\n", data.len());
    }
    let mut out = format!("    {side}:\n");
    for l in render(&tree).lines().take(40) {
        let _ = writeln!(out, "      {l}");
    }
    out
}

/// Both sides' data of an exchange for a person ([`render_side`]).
pub fn render_data(e: &Exchange) -> String {
    render_side("command", e.header, &e.command_data, e.command_redacted)
        + &render_side("response", e.header, &e.response_data, e.response_redacted)
}

/// An exchange for a person: its line, then both sides' data.
pub fn render_exchange(e: &Exchange) -> String {
    format!("{}\n{}", e.line, render_data(e))
}

/// Whether every byte of the tree was read as TLV (no [`Node::Bytes`] at any level): data that
/// only starts like TLV (CAC's SimpleTLV buffers, a signature) is better shown as a length.
pub fn is_whole(nodes: &[Node]) -> bool {
    nodes.iter().all(|n| match n {
        Node::Tlv { children, .. } => is_whole(children),
        Node::Bytes(_) => false,
    })
}

/// The tree as indented lines (`53 data object (1203 bytes)`, children two spaces deeper).
pub fn render(nodes: &[Node]) -> String {
    let mut s = String::new();
    render_into(&mut s, nodes, 0);
    s
}

fn render_into(s: &mut String, nodes: &[Node], depth: usize) {
    for n in nodes {
        let indent = "  ".repeat(depth);
        match n {
            Node::Tlv {
                tag,
                name,
                len,
                value,
                children,
            } => {
                let tag_hex: String = tag
                    .to_be_bytes()
                    .iter()
                    .skip_while(|b| **b == 0)
                    .map(|b| format!("{b:02X}"))
                    .collect();
                let tag_hex = if tag_hex.is_empty() {
                    "00".into()
                } else {
                    tag_hex
                };
                let _ = write!(s, "{indent}{tag_hex}");
                if let Some(name) = name {
                    let _ = write!(s, " {name}");
                }
                match value {
                    // Printable text (a label, a date) as text too.
                    Some(v) if v.len() >= 3 && v.iter().all(|b| (0x20..0x7F).contains(b)) => {
                        let hex: Vec<String> = v.iter().map(|b| format!("{b:02X}")).collect();
                        let text: String = v.iter().map(|b| char::from(*b)).collect();
                        let _ = writeln!(s, ": {} \"{text}\"", hex.join(" "));
                    }
                    Some(v) if !v.is_empty() => {
                        let hex: Vec<String> = v.iter().map(|b| format!("{b:02X}")).collect();
                        let _ = writeln!(s, ": {}", hex.join(" "));
                    }
                    _ => {
                        let _ = writeln!(s, " ({len} byte{})", if *len == 1 { "" } else { "s" });
                    }
                }
                render_into(s, children, depth + 1);
            }
            Node::Bytes(n) => {
                let _ = writeln!(
                    s,
                    "{indent}{n} byte{} not TLV",
                    if *n == 1 { "" } else { "s" }
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex::h;
    use proptest::prelude::*;

    fn push(f: &mut Folder, cmd: &str, resp: &str) -> Vec<Exchange> {
        f.push(&h(cmd), &h(resp), 10)
    }

    #[test]
    fn a_single_exchange_is_one_logical_exchange() {
        let mut f = Folder::new();
        let e = push(
            &mut f,
            "00 A4 04 00 09 A0 00 00 03 08 00 00 10 00 00",
            "61 11",
        );
        assert!(e.is_empty(), "61xx: a GET RESPONSE is due");
        let e = push(
            &mut f,
            "00 C0 00 00 11",
            "61 11 4F 06 00 00 10 00 01 00 79 07 4F 05 A0 00 00 03 08 90 00",
        );
        assert_eq!(e.len(), 1);
        let e = &e[0];
        assert_eq!(e.line, "SELECT PIV → 9000 (19 bytes)");
        assert_eq!(e.pieces, 2);
        assert_eq!(e.micros, 20);
        assert_eq!(e.sw, 0x9000);
        assert_eq!(e.response_data.len(), 19);
    }

    /// yubico-piv-tool's import of a key: PUT DATA-like chained pieces of IMPORT KEY (INS FE)
    /// carrying key material, folded into one exchange with every key byte blanked.
    #[test]
    fn chained_key_import_is_one_exchange_with_the_key_blanked() {
        let mut f = Folder::new();
        push(&mut f, "00 A4 04 00 05 A0 00 00 03 08", "90 00");
        let e = push(&mut f, "10 FE 07 9A 04 01 02 03 04", "90 00");
        assert!(e.is_empty());
        let e = push(&mut f, "00 FE 07 9A 03 05 06 07", "90 00");
        assert_eq!(e.len(), 1);
        let e = &e[0];
        assert_eq!(e.header, [0x00, 0xFE, 0x07, 0x9A]);
        assert_eq!(e.command_data, vec![0; 7], "key bytes kept");
        assert!(e.command_redacted);
        assert_eq!(e.pieces, 2);
    }

    /// GENERAL AUTHENTICATE (a decipher) whose output comes in two GET RESPONSEs: the whole
    /// output is blanked, the SW is the last one.
    #[test]
    fn a_secret_response_stays_secret_across_get_response() {
        let mut f = Folder::new();
        push(&mut f, "00 A4 04 00 05 A0 00 00 03 08", "90 00");
        assert!(push(&mut f, "00 87 07 9D 04 7C 02 81 00 00", "AA BB 61 02").is_empty());
        let e = push(&mut f, "00 C0 00 00 02", "CC DD 90 00");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].response_data, vec![0; 4]);
        assert!(e[0].response_redacted);
        assert_eq!(e[0].sw, 0x9000);
    }

    #[test]
    fn verify_is_redacted_and_the_tries_are_named() {
        let mut f = Folder::new();
        push(&mut f, "00 A4 04 00 05 A0 00 00 03 08", "90 00");
        let e = push(&mut f, "00 20 00 80 08 31 32 33 34 35 36 FF FF", "63 C2");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].command_data, vec![0; 8]);
        assert!(
            e[0].line.contains("wrong PIN, 2 tries left"),
            "{}",
            e[0].line
        );
        assert!(!format!("{:?}", e[0]).contains("31, 32"));
    }

    #[test]
    fn an_abandoned_chain_is_reported_before_the_next_command() {
        let mut f = Folder::new();
        assert!(push(&mut f, "10 DB 3F FF 02 5C 03", "90 00").is_empty());
        let e = push(&mut f, "00 A4 04 00 05 A0 00 00 03 08", "90 00");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].header[1], 0xDB);
        assert_eq!(e[1].line, "SELECT PIV → 9000");
    }

    #[test]
    fn a_piv_certificate_object_reads_as_a_tree() {
        let data = h("53 0B 70 04 30 82 01 02 71 01 00 FE 00");
        let t = tlv_tree(&data);
        assert_eq!(
            render(&t),
            "53 data object (11 bytes)\n  70 certificate: 30 82 01 02\n  71 certificate info: 00\n  FE error detection code (0 bytes)\n"
        );
    }

    #[test]
    fn general_authenticate_template_and_trailing_garbage() {
        assert!(is_whole(&tlv_tree(&h("7C 06 82 00 81 02 01 02"))));
        let t = tlv_tree(&h("7C 06 82 00 81 02 01 02 FF"));
        assert!(!is_whole(&t));
        assert_eq!(
            render(&t),
            "7C dynamic authentication template (6 bytes)\n  82 response (0 bytes)\n  81 challenge: 01 02\n1 byte not TLV\n"
        );
    }

    proptest! {
        #[test]
        fn folding_and_trees_are_total(
            pieces in prop::collection::vec(
                (prop::collection::vec(any::<u8>(), 0..40), prop::collection::vec(any::<u8>(), 0..40)),
                0..20,
            )
        ) {
            let mut f = Folder::new();
            for (c, r) in &pieces {
                for e in f.push(c, r, 1) {
                    prop_assert!(e.pieces >= 1);
                    let _ = render(&tlv_tree(&e.response_data));
                }
            }
        }

        #[test]
        fn deep_nesting_is_bounded(depth in 1usize..200) {
            // 60 len 60 len ... : each level constructed.
            let mut data = Vec::new();
            for i in 0..depth {
                data.push(0x60);
                data.push(u8::try_from(2 * (depth - i - 1)).unwrap_or(0x7F).min(0x7F));
            }
            let t = tlv_tree(&data);
            prop_assert!(render(&t).lines().count() <= MAX_NODES + MAX_DEPTH + 1);
        }
    }
}
