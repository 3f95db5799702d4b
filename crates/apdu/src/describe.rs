//! One decoder for command/response pairs, for people and for captures.
//!
//! * [`describe`] turns a command APDU and its response into one line such as
//!   `SELECT PIV → 9000` or `VERIFY PIN [8 bytes redacted] → 63C2 wrong PIN, 2 tries left`.
//!   It never prints the data field of any command or response: only names, parameters,
//!   object tags, AIDs and lengths.
//! * [`secret_range`] / [`redact_command`] find and blank the command bytes that carry a
//!   secret (PIN, PUK, management key, imported private key); [`response_is_secret`] and
//!   [`redact_response`] do the same for responses (management-key challenges, decipher and key
//!   agreement outputs).
//! * [`Decoder`] keeps what the one-shot functions cannot know: the application selected last
//!   (it names PIV objects and algorithms) and whether a GET RESPONSE continues a secret
//!   response (ISO 7816-4 §5.3.4: 61xx then GET RESPONSE delivers the rest of the same
//!   response).
//!
//! Every function here is total: any bytes give a value, never a panic.

use crate::{Command, Sw};
use std::borrow::Cow;
use std::fmt::Write;
use std::ops::Range;

/// The application a SELECT by AID (P1 = 04) chose; it changes how some commands read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum App {
    /// The PIV card application (SP 800-73-4), including YubiKey's vendor instructions.
    Piv,
    /// A CAC / GSC-IS applet (PKI, CCC, ACA, containers).
    Cac,
    /// Any other application.
    Other,
}

/// The PIV application's AID prefix (SP 800-73-4 Part 1 §2.2: RID A0 00 00 03 08, PIX
/// 00 00 10 00 01 00); a right-truncated AID selects it too.
const PIV_RID: [u8; 5] = [0xA0, 0x00, 0x00, 0x03, 0x08];
/// The CAC RID (DoD) and the GSC-IS RID (NIST IR 6887).
const CAC_RID: [u8; 5] = [0xA0, 0x00, 0x00, 0x00, 0x79];
const GSC_RID: [u8; 5] = [0xA0, 0x00, 0x00, 0x01, 0x16];

/// The application an AID names, for [`Decoder`].
pub fn app_of_aid(aid: &[u8]) -> App {
    if aid.starts_with(&PIV_RID) {
        App::Piv
    } else if aid.starts_with(&CAC_RID) || aid.starts_with(&GSC_RID) {
        App::Cac
    } else {
        App::Other
    }
}

/// A readable name for an AID (the ones the cards of this project answer, libcacard.md §1.2),
/// or `None` for one we do not know.
pub fn aid_name(aid: &[u8]) -> Option<String> {
    let tail = |rid: &[u8; 5]| aid.strip_prefix(&rid[..]);
    if aid.len() >= 5 && aid.starts_with(&PIV_RID) {
        return Some("PIV".into());
    }
    if let Some(t) = tail(&CAC_RID) {
        return match t {
            [0x01, n] => Some(format!("CAC PKI {n}")),
            [0x03, 0x00] => Some("ACA".into()),
            [0x02, 0x00] => Some("CAC person instance".into()),
            [0x02, 0x01] => Some("CAC personnel".into()),
            [a, b] => Some(format!("CAC applet {a:02X}{b:02X}")),
            _ => None,
        };
    }
    if let Some(t) = tail(&GSC_RID) {
        return match t {
            [0xDB, 0x00] => Some("CCC".into()),
            [a, b] => Some(format!("GSC-IS applet {a:02X}{b:02X}")),
            _ => None,
        };
    }
    match aid {
        [0xA0, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00] | [0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00] => {
            Some("GlobalPlatform card manager".into())
        }
        [0xA0, 0x00, 0x00, 0x03, 0x97, 0x43, 0x49, 0x44, 0x5F, 0x01, 0x00] => {
            Some("Microsoft PnP".into())
        }
        _ => None,
    }
}

/// The instruction's name (ISO 7816-4 Table 4; GSC-IS 2.1 §7 for the CAC ones; Yubico's PIV
/// extensions for F7..FF), or `None`.
pub fn ins_name(ins: u8) -> Option<&'static str> {
    Some(match ins {
        // ISO 7816-4
        0xA4 => "SELECT",
        0x20 => "VERIFY",
        0x24 => "CHANGE REFERENCE DATA",
        0x2C => "RESET RETRY COUNTER",
        0xC0 => "GET RESPONSE",
        0xCA | 0xCB => "GET DATA",
        0xDA | 0xDB => "PUT DATA",
        0x87 => "GENERAL AUTHENTICATE",
        0x47 => "GENERATE ASYMMETRIC KEY PAIR",
        0x84 => "GET CHALLENGE",
        0xB0 | 0xB1 => "READ BINARY",
        0xB2 | 0xB3 => "READ RECORD",
        0xD6 | 0xD7 => "UPDATE BINARY",
        0x22 => "MANAGE SECURITY ENVIRONMENT",
        0x2A => "PERFORM SECURITY OPERATION",
        0x88 => "INTERNAL AUTHENTICATE",
        0x82 => "EXTERNAL AUTHENTICATE",
        0x70 => "MANAGE CHANNEL",
        // CAC / GSC-IS
        0x56 => "GET PROPERTIES",
        0x4C => "GET ACR",
        0x52 => "READ BUFFER",
        0x42 => "SIGN/DECRYPT",
        0x36 => "GET CERTIFICATE",
        0x58 => "UPDATE BUFFER",
        // YubiKey PIV
        0xF7 => "GET METADATA",
        0xFD => "GET VERSION",
        0xF8 => "GET SERIAL",
        0xFE => "IMPORT KEY",
        0xFF => "SET MANAGEMENT KEY",
        0xFA => "SET PIN RETRIES",
        0xFB => "RESET",
        0xF9 => "ATTEST",
        _ => return None,
    })
}

/// The tag of a PIV PUT DATA or GET DATA whose object holds YubiKey's PIN-protected management
/// key (the "printed information" object, 5FC109, as yubico-piv-tool and ykman store it).
const PRINTED_TAG_LIST: [u8; 5] = [0x5C, 0x03, 0x5F, 0xC1, 0x09];

/// Whether the data field of an instruction may carry a secret, before the data is known
/// (a malformed or incomplete command of such an instruction is blanked whole).
pub fn ins_may_carry_secret(ins: u8, p2: u8) -> bool {
    match ins {
        // PIN / PUK / new PIN; YubiKey imported private key; new management key.
        0x20 | 0x24 | 0x2C | 0xFE | 0xFF => true,
        // The management key's witness, challenge and response (SP 800-73-4 Part 2 §3.2.4,
        // key reference 9B).
        0x87 => p2 == 0x9B,
        // PUT DATA of the printed-information object (see PRINTED_TAG_LIST).
        0xDB => true,
        _ => false,
    }
}

fn data_is_secret(c: &Command) -> bool {
    match c.ins {
        0xDB => c.data.starts_with(&PRINTED_TAG_LIST),
        ins => ins_may_carry_secret(ins, c.p2),
    }
}

/// The bytes of `cmd` that carry a secret: the data field of VERIFY, CHANGE REFERENCE DATA,
/// RESET RETRY COUNTER, YubiKey IMPORT KEY and SET MANAGEMENT KEY, GENERAL AUTHENTICATE with
/// the management key (P2 = 9B), and PUT DATA of the printed-information object; chained pieces
/// (CLA b5, ISO 7816-4 §5.1.1) alike, since each repeats the header. A command of those
/// instructions whose lengths do not parse has everything after its header counted secret.
/// `None` when nothing is secret.
pub fn secret_range(cmd: &[u8]) -> Option<Range<usize>> {
    let &[_, ins, _, p2] = cmd.first_chunk::<4>()?;
    match Command::parse(cmd) {
        Ok(c) if c.data.is_empty() || !data_is_secret(&c) => None,
        // ISO 7816-3 §12.1.3: the data field follows the 1-byte short or 3-byte extended Lc.
        Ok(c) => {
            let start = if c.extended { 7 } else { 5 };
            Some(start..start + c.data.len())
        }
        Err(_) if cmd.len() > 4 && ins_may_carry_secret(ins, p2) => Some(4..cmd.len()),
        Err(_) => None,
    }
}

/// `cmd` with its [`secret_range`] overwritten with zeros (same length, so a capture still
/// parses); borrowed when there is nothing to hide.
pub fn redact_command(cmd: &[u8]) -> Cow<'_, [u8]> {
    match secret_range(cmd) {
        Some(r) => {
            let mut v = cmd.to_vec();
            v[r].fill(0);
            Cow::Owned(v)
        }
        None => Cow::Borrowed(cmd),
    }
}

/// Whether the response to `cmd` carries a secret on its own: any GENERAL AUTHENTICATE (the
/// management key's witness, and decipher and key-agreement outputs, which cannot be told
/// from signatures by the command alone), CAC SIGN/DECRYPT for the same reason, and GET DATA
/// of the printed-information object. A GET RESPONSE that continues such a response is only
/// known to [`Decoder::response_is_secret`].
pub fn response_is_secret(cmd: &[u8]) -> bool {
    let Some(&[_, ins, _, _]) = cmd.first_chunk::<4>() else {
        return false;
    };
    match ins {
        0x87 | 0x42 => true,
        0xCB => match Command::parse(cmd) {
            Ok(c) => c.data.starts_with(&PRINTED_TAG_LIST),
            Err(_) => true,
        },
        _ => false,
    }
}

/// `resp` with its data field (all but SW1 SW2) overwritten with zeros, same length.
pub fn redact_response(resp: &[u8]) -> Cow<'_, [u8]> {
    if resp.len() <= 2 {
        return Cow::Borrowed(resp);
    }
    let mut v = resp.to_vec();
    let n = v.len() - 2;
    v[..n].fill(0);
    Cow::Owned(v)
}

/// The state one decoder keeps across exchanges on one card.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    app: Option<App>,
    /// The last response was secret and said 61xx / 6Cxx: its GET RESPONSE is secret too.
    secret_continues: bool,
}

impl Decoder {
    /// A decoder that has seen nothing (no application selected).
    pub fn new() -> Self {
        Self::default()
    }

    /// The application selected last, if a SELECT by AID succeeded.
    pub fn app(&self) -> Option<App> {
        self.app
    }

    /// Forgets the state, as a card reset does.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// [`response_is_secret`], plus a GET RESPONSE that continues a secret response.
    pub fn response_is_secret(&self, cmd: &[u8]) -> bool {
        response_is_secret(cmd) || (self.secret_continues && cmd.get(1) == Some(&0xC0))
    }

    /// Takes note of an exchange (the application a SELECT chose; a secret response to be
    /// continued) without describing it.
    pub fn observe(&mut self, cmd: &[u8], resp: &[u8]) {
        let secret = self.response_is_secret(cmd);
        let sw = sw_of(resp);
        // ISO 7816-4 §5.3.4: only the next GET RESPONSE continues; any other command ends it.
        self.secret_continues = secret && sw.is_some_and(|s| s.sw1() == 0x61 || s.sw1() == 0x6C);
        if let Ok(c) = Command::parse(cmd) {
            if c.ins == 0xA4 && c.p1 == 0x04 && sw.is_some_and(Sw::is_success) {
                self.app = Some(app_of_aid(c.data));
            }
        }
    }

    /// One line for the exchange, in the state before it; then takes note of it.
    pub fn exchange(&mut self, cmd: &[u8], resp: &[u8]) -> String {
        let line = describe(cmd, resp, self.app);
        self.observe(cmd, resp);
        line
    }
}

fn sw_of(resp: &[u8]) -> Option<Sw> {
    resp.split_last_chunk::<2>()
        .map(|(_, sw)| Sw(u16::from_be_bytes(*sw)))
}

/// One line for a command and its response, with `app` the application selected before the
/// command (it names PIV objects and algorithms). Shows no data bytes of either side.
pub fn describe(cmd: &[u8], resp: &[u8], app: Option<App>) -> String {
    let (text, reference) = describe_command(cmd, app);
    format!("{text} → {}", describe_response(resp, reference.as_ref()))
}

/// What a VERIFY-like command checks, for the 63Cx wording: the reference, and whether the
/// command carried a value (a VERIFY without data only asks the status).
struct Checked {
    what: &'static str,
    with_value: bool,
}

fn reference_name(p2: u8, app: Option<App>) -> &'static str {
    match (p2, app) {
        (0x00, Some(App::Cac)) => "PIN",
        (0x00, _) => "global PIN",
        (0x80, _) => "PIN",
        (0x81, _) => "PUK",
        (0x9B, _) => "management key",
        _ => "reference",
    }
}

/// PIV algorithm identifiers (SP 800-78-4 Table 6-2; Yubico's for RSA-3072/4096 and
/// Curve25519).
fn alg_name(alg: u8) -> Option<&'static str> {
    Some(match alg {
        0x00 | 0x03 => "3DES",
        0x06 => "RSA1024",
        0x07 => "RSA2048",
        0x05 => "RSA3072",
        0x16 => "RSA4096",
        0x08 => "AES128",
        0x0A => "AES192",
        0x0C => "AES256",
        0x11 => "ECCP256",
        0x14 => "ECCP384",
        0xE0 => "Ed25519",
        0xE1 => "X25519",
        _ => return None,
    })
}

/// PIV data objects (SP 800-73-4 Part 1 Table 3) and YubiKey's.
fn piv_object_name(tag: u32) -> Option<String> {
    Some(
        match tag {
            0x7E => "discovery object",
            0x7F61 => "biometric information templates",
            0x5FC101 => "X.509 cert for card authentication",
            0x5FC102 => "CHUID",
            0x5FC103 => "cardholder fingerprints",
            0x5FC105 => "X.509 cert for PIV authentication",
            0x5FC106 => "security object",
            0x5FC107 => "card capability container",
            0x5FC108 => "cardholder facial image",
            0x5FC109 => "printed information",
            0x5FC10A => "X.509 cert for digital signature",
            0x5FC10B => "X.509 cert for key management",
            0x5FC10C => "key history object",
            0x5FC121 => "cardholder iris images",
            0x5FC122 => "SM certificate signer",
            0x5FC123 => "pairing code reference data",
            0x5FFF00 => "YubiKey admin data",
            0x5FFF01 => "YubiKey attestation cert",
            t @ 0x5FC10D..=0x5FC120 => {
                return Some(format!(
                    "retired X.509 cert for key management {}",
                    t - 0x5FC10C
                ))
            }
            _ => return None,
        }
        .to_string(),
    )
}

/// The object tag of a PIV GET/PUT DATA (`5C len tag`), as hex and value.
fn tag_list(data: &[u8]) -> Option<(String, u32)> {
    let [0x5C, len, rest @ ..] = data else {
        return None;
    };
    let tag = rest.get(..usize::from(*len))?;
    if tag.is_empty() || tag.len() > 3 {
        return None;
    }
    let value = tag.iter().fold(0u32, |a, b| (a << 8) | u32::from(*b));
    Some((tag.iter().map(|b| format!("{b:02X}")).collect(), value))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// "1 byte", "2 bytes"; "1 try", "2 tries".
fn plural(n: usize, one: &str) -> String {
    match (n, one) {
        (1, _) => format!("1 {one}"),
        (_, "try") => format!("{n} tries"),
        _ => format!("{n} {one}s"),
    }
}

fn describe_command(cmd: &[u8], app: Option<App>) -> (String, Option<Checked>) {
    let c = match Command::parse(cmd) {
        Ok(c) => c,
        Err(_) => {
            let text = match cmd.first_chunk::<4>() {
                None => format!("malformed command ({})", plural(cmd.len(), "byte")),
                Some(&[cla, ins, p1, p2]) => {
                    let name = ins_name(ins).map(str::to_string).unwrap_or_else(|| {
                        format!("CLA {cla:02X} INS {ins:02X} P1 {p1:02X} P2 {p2:02X}")
                    });
                    let hidden = if secret_range(cmd).is_some() {
                        " redacted"
                    } else {
                        ""
                    };
                    format!(
                        "{name} with malformed lengths ({}{hidden})",
                        plural(cmd.len(), "byte")
                    )
                }
            };
            return (text, None);
        }
    };
    let n = c.data.len();
    let redacted = || {
        if n == 0 {
            String::new()
        } else {
            format!(" [{} redacted]", plural(n, "byte"))
        }
    };
    let sized = || {
        if n == 0 {
            String::new()
        } else {
            format!(" ({})", plural(n, "byte"))
        }
    };
    let name = ins_name(c.ins);
    let mut checked = None;
    let mut s = match c.ins {
        0xA4 => match c.p1 {
            0x04 => match aid_name(c.data) {
                Some(a) => format!("SELECT {a}"),
                None if n == 0 => "SELECT (no AID)".to_string(),
                None => format!("SELECT AID {}", hex(c.data)),
            },
            p1 => format!("SELECT P1={p1:02X} {}", hex(c.data)),
        },
        0x20 | 0x24 | 0x2C => {
            let reference = reference_name(c.p2, app);
            let verb = name.unwrap_or_default();
            checked = Some(Checked {
                // RESET RETRY COUNTER checks the PUK (SP 800-73-4 Part 2 §3.2.3).
                what: if c.ins == 0x2C && c.p2 == 0x80 {
                    "PUK"
                } else {
                    reference
                },
                with_value: n > 0 || c.ins != 0x20,
            });
            match (c.ins, c.p1, n) {
                (0x20, 0xFF, _) => format!("VERIFY {reference} reset (log out){}", redacted()),
                (0x20, _, 0) => format!("VERIFY {reference} (status)"),
                _ => format!("{verb} {reference}{}", redacted()),
            }
        }
        0xCB | 0xDB => {
            let verb = name.unwrap_or_default();
            let object = match tag_list(c.data) {
                Some((h, tag)) => match piv_object_name(tag) {
                    Some(o) => format!(" {h} ({o})"),
                    None => format!(" {h}"),
                },
                None => String::new(),
            };
            let body = if c.ins == 0xDB {
                if data_is_secret(&c) {
                    redacted()
                } else {
                    sized()
                }
            } else {
                String::new()
            };
            format!("{verb}{object}{body}")
        }
        0xCA => format!("GET DATA {:02X}{:02X}", c.p1, c.p2),
        0x87 => {
            checked = (c.p2 == 0x9B).then_some(Checked {
                what: "management key",
                with_value: true,
            });
            let alg = alg_name(c.p1)
                .map(str::to_string)
                .unwrap_or_else(|| format!("alg {:02X}", c.p1));
            let body = if data_is_secret(&c) {
                redacted()
            } else {
                sized()
            };
            format!("GENERAL AUTHENTICATE {:02X} {alg}{body}", c.p2)
        }
        0x47 => {
            // Control reference template AC { 80 algorithm } (SP 800-73-4 Part 2 §3.3.2).
            let alg = match c.data {
                [0xAC, _, 0x80, 0x01, alg, ..] => alg_name(*alg)
                    .map(|a| format!(" {a}"))
                    .unwrap_or_else(|| format!(" alg {alg:02X}")),
                _ => String::new(),
            };
            format!("GENERATE ASYMMETRIC KEY PAIR {:02X}{alg}", c.p2)
        }
        0xC0 | 0x84 => format!("{} (Le {})", name.unwrap_or_default(), c.ne()),
        0xF7 | 0xF9 => format!("{} {:02X}", name.unwrap_or_default(), c.p2),
        0xFE => {
            let alg = alg_name(c.p1)
                .map(str::to_string)
                .unwrap_or_else(|| format!("alg {:02X}", c.p1));
            format!("IMPORT KEY {:02X} {alg}{}", c.p2, redacted())
        }
        0xFF => format!("SET MANAGEMENT KEY{}", redacted()),
        0xFA => format!("SET PIN RETRIES PIN {} PUK {}", c.p1, c.p2),
        0x52 | 0x58 => {
            // GSC-IS 2.1 §7.3.7: P1-P2 the offset; data 01 (tag buffer) or 02 (value buffer)
            // and the length to read.
            let buffer = match c.data.first() {
                Some(1) => " tag buffer",
                Some(2) => " value buffer",
                _ => "",
            };
            let offset = u16::from_be_bytes([c.p1, c.p2]);
            let len = match (c.ins, c.data) {
                (0x52, [_, len, ..]) => format!(" length {len}"),
                _ => sized(),
            };
            format!("{}{buffer} offset {offset}{len}", name.unwrap_or_default())
        }
        0x42 => format!(
            "SIGN/DECRYPT{}{}",
            sized(),
            if c.p1 == 0x80 { ", more follows" } else { "" }
        ),
        _ => match name {
            Some(v) => format!("{v}{}", sized()),
            None => format!(
                "CLA {:02X} INS {:02X} P1 {:02X} P2 {:02X}{}",
                c.cla,
                c.ins,
                c.p1,
                c.p2,
                sized()
            ),
        },
    };
    if c.is_chained() {
        s.push_str(" (chained)");
    }
    (s, checked)
}

/// ISO 7816-4 §5.6 Tables 5 and 6, in words.
fn sw_meaning(sw: Sw) -> Option<String> {
    let (sw1, sw2) = (sw.sw1(), sw.sw2());
    Some(
        match sw.0 {
            0x9000 => return None,
            0x6281 => "part of the data may be corrupted",
            0x6282 => "end of data reached before Le",
            0x6283 => "selected file deactivated",
            0x6300 => "verification failed",
            0x6400 => "execution error",
            0x6500 => "memory failure",
            0x6581 => "memory failure",
            0x6700 => "wrong length",
            0x6881 => "logical channel not supported",
            0x6882 => "secure messaging not supported",
            0x6883 => "last command of the chain expected",
            0x6884 => "command chaining not supported",
            0x6900 => "command not allowed",
            0x6982 => "security status not satisfied",
            0x6983 => "blocked",
            0x6984 => "reference data not usable",
            0x6985 => "conditions of use not satisfied",
            0x6986 => "command not allowed (no current EF)",
            0x6A00 => "wrong P1-P2",
            0x6A80 => "incorrect data",
            0x6A81 => "function not supported",
            0x6A82 => "not found",
            0x6A84 => "not enough memory",
            0x6A86 => "incorrect P1-P2",
            0x6A88 => "referenced data not found",
            0x6B00 => "wrong P1-P2",
            0x6D00 => "instruction not supported",
            0x6E00 => "class not supported",
            0x6F00 => "no precise diagnosis",
            _ => match sw1 {
                0x61 if sw2 == 0 => return Some("more data, 256 or more bytes waiting".into()),
                0x61 => return Some(format!("more data, {} waiting", plural(sw2.into(), "byte"))),
                0x6C => {
                    return Some(format!(
                        "wrong Le, {} available",
                        plural(sw2.into(), "byte")
                    ))
                }
                0x63 if sw2 & 0xF0 == 0xC0 => {
                    return Some(format!(
                        "verification failed, {} left",
                        plural((sw2 & 0x0F).into(), "try")
                    ))
                }
                _ => return None,
            },
        }
        .to_string(),
    )
}

fn describe_response(resp: &[u8], checked: Option<&Checked>) -> String {
    let Some((data, sw_bytes)) = resp.split_last_chunk::<2>() else {
        return match resp.len() {
            0 => "no response".to_string(),
            n => format!("malformed response ({})", plural(n, "byte")),
        };
    };
    let sw = Sw(u16::from_be_bytes(*sw_bytes));
    let mut s = format!("{sw}");
    let meaning = match (checked, sw.sw1(), sw.sw2()) {
        (Some(c), 0x63, x) if x & 0xF0 == 0xC0 => {
            let left = plural((x & 0x0F).into(), "try");
            Some(if c.with_value {
                format!("wrong {}, {left} left", c.what)
            } else {
                format!("{} not verified, {left} left", c.what)
            })
        }
        (Some(c), 0x69, 0x83) => Some(format!("{} blocked", c.what)),
        _ => sw_meaning(sw),
    };
    if let Some(m) = meaning {
        let _ = write!(s, " {m}");
    }
    if !data.is_empty() {
        let _ = write!(s, " ({})", plural(data.len(), "byte"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex::{h, spaced};
    use crate::CommandBuf;
    use proptest::prelude::*;

    fn d(cmd: &str, resp: &str, app: Option<App>) -> String {
        describe(&h(cmd), &h(resp), app)
    }

    #[test]
    fn golden_lines() {
        assert_eq!(
            d(
                "00 A4 04 00 09 A0 00 00 03 08 00 00 10 00 00",
                "61 11",
                None
            ),
            "SELECT PIV → 6111 more data, 17 bytes waiting"
        );
        assert_eq!(
            d("00 A4 04 00 05 A0 00 00 03 08", "90 00", None),
            "SELECT PIV → 9000"
        );
        assert_eq!(
            d("00 A4 04 00 07 A0 00 00 00 79 01 02 00", "6A 82", None),
            "SELECT CAC PKI 2 → 6A82 not found"
        );
        assert_eq!(
            d("00 A4 04 00 07 A0 00 00 01 16 DB 00", "90 00", None),
            "SELECT CCC → 9000"
        );
        assert_eq!(
            d("00 A4 04 00 07 A0 00 00 00 79 03 00", "90 00", None),
            "SELECT ACA → 9000"
        );
        assert_eq!(
            d("00 A4 04 00 06 D2 76 00 01 24 01 00", "6A 82", None),
            "SELECT AID D27600012401 → 6A82 not found"
        );
        assert_eq!(
            d(
                "00 20 00 80 08 31 32 33 34 35 36 FF FF",
                "63 C2",
                Some(App::Piv)
            ),
            "VERIFY PIN [8 bytes redacted] → 63C2 wrong PIN, 2 tries left"
        );
        assert_eq!(
            d(
                "00 20 00 80 08 31 32 33 34 35 36 FF FF",
                "63 C1",
                Some(App::Piv)
            ),
            "VERIFY PIN [8 bytes redacted] → 63C1 wrong PIN, 1 try left"
        );
        assert_eq!(
            d("00 20 00 80", "63 C3", Some(App::Piv)),
            "VERIFY PIN (status) → 63C3 PIN not verified, 3 tries left"
        );
        assert_eq!(
            d(
                "80 20 00 00 08 31 32 33 34 35 36 37 38",
                "69 83",
                Some(App::Cac)
            ),
            "VERIFY PIN [8 bytes redacted] → 6983 PIN blocked"
        );
        assert_eq!(
            d(
                "00 2C 00 80 10 31 32 33 34 35 36 37 38 31 32 33 34 35 36 FF FF",
                "63 C0",
                None
            ),
            "RESET RETRY COUNTER PIN [16 bytes redacted] → 63C0 wrong PUK, 0 tries left"
        );
        assert_eq!(
            d(
                "00 24 00 80 10 31 32 33 34 35 36 FF FF 36 35 34 33 32 31 FF FF",
                "90 00",
                None
            ),
            "CHANGE REFERENCE DATA PIN [16 bytes redacted] → 9000"
        );
        let cert = format!("{} 90 00", spaced(&vec![0x30; 1234]));
        assert_eq!(
            d("00 CB 3F FF 05 5C 03 5F C1 05 00", &cert, Some(App::Piv)),
            "GET DATA 5FC105 (X.509 cert for PIV authentication) → 9000 (1234 bytes)"
        );
        assert_eq!(
            d(
                "00 87 07 9A 0A 7C 08 82 00 81 04 01 02 03 04 00",
                "90 00",
                Some(App::Piv)
            ),
            "GENERAL AUTHENTICATE 9A RSA2048 (10 bytes) → 9000"
        );
        assert_eq!(
            d("00 87 03 9B 04 7C 02 80 00", "69 82", Some(App::Piv)),
            "GENERAL AUTHENTICATE 9B 3DES [4 bytes redacted] → 6982 security status not satisfied"
        );
        assert_eq!(
            d("10 87 03 9B 04 7C 02 80 00", "90 00", None),
            "GENERAL AUTHENTICATE 9B 3DES [4 bytes redacted] (chained) → 9000"
        );
        assert_eq!(
            d("00 47 00 9A 05 AC 03 80 01 11 00", "61 00", None),
            "GENERATE ASYMMETRIC KEY PAIR 9A ECCP256 → 6100 more data, 256 or more bytes waiting"
        );
        assert_eq!(
            d("00 C0 00 00 00", "6C 10", None),
            "GET RESPONSE (Le 256) → 6C10 wrong Le, 16 bytes available"
        );
        assert_eq!(
            d("00 FD 00 00", "05 04 03 90 00", None),
            "GET VERSION → 9000 (3 bytes)"
        );
        assert_eq!(
            d("00 F7 00 9A 00", "6A 88", None),
            "GET METADATA 9A → 6A88 referenced data not found"
        );
        assert_eq!(
            d("00 FF FF FF 1B 03 9B 18 01 02 03 04 05 06 07 08 01 02 03 04 05 06 07 08 01 02 03 04 05 06 07 08", "90 00", None),
            "SET MANAGEMENT KEY [27 bytes redacted] → 9000"
        );
        assert_eq!(
            d("00 FE 07 9A 03 01 01 AA", "6A 80", None),
            "IMPORT KEY 9A RSA2048 [3 bytes redacted] → 6A80 incorrect data"
        );
        assert_eq!(
            d("00 FA 05 03", "90 00", None),
            "SET PIN RETRIES PIN 5 PUK 3 → 9000"
        );
        assert_eq!(
            d("80 52 00 00 02 02 FF", "90 00", Some(App::Cac)),
            "READ BUFFER value buffer offset 0 length 255 → 9000"
        );
        assert_eq!(
            d("80 42 80 00 02 AA BB", "90 00", Some(App::Cac)),
            "SIGN/DECRYPT (2 bytes), more follows → 9000"
        );
        assert_eq!(
            d("80 56 01 00 00", "6D 00", None),
            "GET PROPERTIES → 6D00 instruction not supported"
        );
        assert_eq!(
            d("A0 12 00 00", "6E 00", None),
            "CLA A0 INS 12 P1 00 P2 00 → 6E00 class not supported"
        );
        assert_eq!(
            d("00 20 00", "67 00", None),
            "malformed command (3 bytes) → 6700 wrong length"
        );
        assert_eq!(
            d("00 20 00 80 08 31 32", "67 00", None),
            "VERIFY with malformed lengths (7 bytes redacted) → 6700 wrong length"
        );
        assert_eq!(d("00 A4 04 00", "", None), "SELECT (no AID) → no response");
        assert_eq!(
            d("00 DB 3F FF 08 5C 03 5F C1 09 53 01 AA", "90 00", None),
            "PUT DATA 5FC109 (printed information) [8 bytes redacted] → 9000"
        );
        assert_eq!(
            d("00 DB 3F FF 08 5C 03 5F C1 02 53 01 AA", "65 81", None),
            "PUT DATA 5FC102 (CHUID) (8 bytes) → 6581 memory failure"
        );
    }

    #[test]
    fn redaction_golden() {
        let r = |s: &str| spaced(&redact_command(&h(s)));
        assert_eq!(
            r("00 20 00 80 08 33 31 34 31 35 39 32 36"),
            "00 20 00 80 08 00 00 00 00 00 00 00 00"
        );
        // Chained, extended with Le: only the data field goes.
        assert_eq!(
            r("10 87 03 9B 00 00 02 7C 00 00 00"),
            "10 87 03 9B 00 00 02 00 00 00 00"
        );
        assert_eq!(r("00 87 07 9A 02 7C 00"), "00 87 07 9A 02 7C 00");
        assert_eq!(r("00 24 00 80 02 AB CD 00"), "00 24 00 80 02 00 00 00");
        assert_eq!(r("00 2C 00 80 02 AB CD"), "00 2C 00 80 02 00 00");
        assert_eq!(r("00 FE 07 9A 02 AB CD"), "00 FE 07 9A 02 00 00");
        assert_eq!(r("00 FF FF FF 02 AB CD"), "00 FF FF FF 02 00 00");
        // Malformed lengths: everything after the header.
        assert_eq!(r("00 20 00 80 09 AB CD"), "00 20 00 80 00 00 00");
        assert_eq!(r("00 A4 04 00 02 3F 00"), "00 A4 04 00 02 3F 00");
        assert_eq!(r("00 20 00 80"), "00 20 00 80");
        assert_eq!(r("00 20"), "00 20");
        assert_eq!(secret_range(&h("00 20 00 80 02 AB CD 00")), Some(5..7));
        assert_eq!(spaced(&redact_response(&h("AA BB 90 00"))), "00 00 90 00");
        assert_eq!(spaced(&redact_response(&h("90 00"))), "90 00");
    }

    #[test]
    fn secret_responses_and_their_continuation() {
        assert!(response_is_secret(&h("00 87 03 9B 04 7C 02 81 00")));
        assert!(response_is_secret(&h("00 87 07 9D 04 7C 02 81 00 00")));
        assert!(response_is_secret(&h("80 42 00 00 02 AA BB")));
        assert!(response_is_secret(&h("00 CB 3F FF 05 5C 03 5F C1 09 00")));
        assert!(!response_is_secret(&h("00 CB 3F FF 05 5C 03 5F C1 05 00")));
        assert!(!response_is_secret(&h("00 C0 00 00 00")));
        assert!(!response_is_secret(&h("00")));
        let mut dec = Decoder::new();
        dec.observe(&h("00 87 07 9D 04 7C 02 81 00 00"), &h("61 10"));
        assert!(dec.response_is_secret(&h("00 C0 00 00 10")));
        dec.observe(&h("00 C0 00 00 10"), &h("61 10"));
        assert!(dec.response_is_secret(&h("00 C0 00 00 10")));
        dec.observe(&h("00 C0 00 00 10"), &h("90 00"));
        assert!(!dec.response_is_secret(&h("00 C0 00 00 10")));
        // Another command in between ends the continuation.
        dec.observe(&h("00 87 07 9D 04 7C 02 81 00 00"), &h("61 10"));
        dec.observe(&h("00 FD 00 00"), &h("05 04 03 90 00"));
        assert!(!dec.response_is_secret(&h("00 C0 00 00 10")));
    }

    #[test]
    fn decoder_follows_the_selected_application() {
        let mut dec = Decoder::new();
        assert_eq!(dec.app(), None);
        let line = dec.exchange(&h("00 A4 04 00 05 A0 00 00 03 08"), &h("90 00"));
        assert_eq!(line, "SELECT PIV → 9000");
        assert_eq!(dec.app(), Some(App::Piv));
        dec.observe(&h("00 A4 04 00 07 A0 00 00 00 79 01 00"), &h("6A 82"));
        assert_eq!(
            dec.app(),
            Some(App::Piv),
            "a failed SELECT keeps the application"
        );
        dec.observe(&h("00 A4 04 00 07 A0 00 00 00 79 01 00"), &h("61 0D"));
        assert_eq!(dec.app(), Some(App::Cac));
        assert_eq!(
            dec.exchange(&h("00 20 00 00 08 31 32 33 34 35 36 37 38"), &h("63 C2")),
            "VERIFY PIN [8 bytes redacted] → 63C2 wrong PIN, 2 tries left"
        );
        dec.reset();
        assert_eq!(dec.app(), None);
    }

    /// The instructions whose data is secret, with a P2 that makes it so.
    fn secret_ins() -> impl Strategy<Value = (u8, u8)> {
        prop_oneof![
            (Just(0x20u8), any::<u8>()),
            (Just(0x24u8), any::<u8>()),
            (Just(0x2Cu8), any::<u8>()),
            (Just(0xFEu8), any::<u8>()),
            (Just(0xFFu8), any::<u8>()),
            (Just(0x87u8), Just(0x9Bu8)),
        ]
    }

    proptest! {
        #[test]
        fn total_on_any_bytes(
            cmd in proptest::collection::vec(any::<u8>(), 0..300),
            resp in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let _ = describe(&cmd, &resp, Some(App::Piv));
            let _ = describe(&cmd, &resp, None);
            prop_assert_eq!(redact_command(&cmd).len(), cmd.len());
            prop_assert_eq!(redact_response(&resp).len(), resp.len());
            let _ = response_is_secret(&cmd);
            let mut dec = Decoder::new();
            let _ = dec.exchange(&cmd, &resp);
            let _ = dec.response_is_secret(&cmd);
        }

        #[test]
        fn secret_data_never_survives(
            (ins, p2) in secret_ins(),
            cla in any::<u8>(),
            p1 in any::<u8>(),
            data in proptest::collection::vec(any::<u8>(), 1..400),
            le in proptest::option::of(1u32..=65536),
            sw in any::<u16>(),
        ) {
            let cmd = CommandBuf { cla, ins, p1, p2, data: data.clone(), le }.to_bytes().unwrap();
            let start = if data.len() > 255 || le.is_some_and(|l| l > 256) { 7 } else { 5 };
            let red = redact_command(&cmd);
            prop_assert_eq!(red.len(), cmd.len());
            prop_assert!(red[start..start + data.len()].iter().all(|b| *b == 0));
            prop_assert_eq!(&red[..start], &cmd[..start]);
            prop_assert_eq!(&red[start + data.len()..], &cmd[start + data.len()..]);
            if data.len() >= 6 && data.iter().any(|b| *b != 0) {
                prop_assert!(!red.windows(data.len()).any(|w| w == &data[..]));
                let line = describe(&cmd, &sw.to_be_bytes(), Some(App::Piv));
                prop_assert!(!line.contains(&spaced(&data)), "{}", line);
                prop_assert!(!line.contains(&hex(&data)), "{}", line);
                prop_assert!(line.contains("redacted"), "{}", line);
            }
        }

        #[test]
        fn malformed_secret_commands_are_blanked_after_the_header(
            (ins, p2) in secret_ins(),
            body in proptest::collection::vec(any::<u8>(), 1..300),
        ) {
            let mut cmd = vec![0x00, ins, 0x00, p2];
            cmd.extend_from_slice(&body);
            let red = redact_command(&cmd);
            match Command::parse(&cmd) {
                Ok(c) if !c.data.is_empty() => {
                    let start = if c.extended { 7 } else { 5 };
                    prop_assert!(red[start..start + c.data.len()].iter().all(|b| *b == 0));
                }
                Ok(_) => prop_assert_eq!(&red[..], &cmd[..]),
                Err(_) => prop_assert!(red[4..].iter().all(|b| *b == 0)),
            }
        }
    }
}
