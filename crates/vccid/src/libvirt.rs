//! `vccid ctl libvirt-xml` (issue #16): the libvirt device element that attaches a reader of a
//! running `vccid serve` to a guest, or a passthru card to QEMU's `ccid-card-passthru`.
//!
//! - A usbredir reader becomes a `<redirdev bus='usb'>` whose chardev connects to vccid's
//!   socket with `<reconnect>`: when vccid restarts, QEMU connects again by itself and the guest
//!   sees the reader leave and come back (libvirt's formatdomain "Redirected devices", and
//!   "Character device" `<reconnect>`).
//! - A `usbredir-connect` reader is the other way round: QEMU listens (`mode='bind'`), vccid
//!   connects and reconnects.
//! - A passthru card becomes `<smartcard mode='passthrough'>`: QEMU's ccid-card-passthru
//!   connects to the card's listener (QEMU's docs/ccid.txt, "Passthrough").
//! - vpcd and USB/IP readers attach elsewhere (the host's pcscd; the guest's own `usbip
//!   attach`): asking for their XML is an error that says so.

use std::fmt::Write as _;
use std::net::SocketAddr;

/// What `query-readers` says of a reader, as far as libvirt cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reader<'a> {
    /// The reader's id (for the comment and errors).
    pub id: &'a str,
    /// `usbredir`, `usbredir-connect`, `vpcd` or `usbip`.
    pub transport: &'a str,
    /// `unix:PATH` or `HOST:PORT`.
    pub address: &'a str,
    /// The link is TLS.
    pub tls: bool,
}

/// How long QEMU waits before connecting again, seconds: vccid restarts within that.
pub const RECONNECT_SECONDS: u32 = 1;

/// Escapes text for an XML attribute value in single quotes.
fn attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes text for an XML comment (no `--` inside one).
fn comment(s: &str) -> String {
    s.replace("--", "- -")
}

/// The chardev `type` attribute and the `<source>` element's address attributes.
fn source(address: &str) -> Result<(&'static str, String), String> {
    if let Some(path) = address.strip_prefix("unix:") {
        return Ok(("unix", format!("path='{}'", attr(path))));
    }
    let sa: SocketAddr = address
        .parse()
        .map_err(|_| format!("{address:?} is neither unix:PATH nor HOST:PORT"))?;
    Ok(("tcp", format!("host='{}' service='{}'", sa.ip(), sa.port())))
}

/// The device element for a reader, with a comment naming it.
pub fn reader_xml(r: &Reader) -> Result<String, String> {
    match r.transport {
        "usbredir" | "usbredir-connect" => {}
        "vpcd" => {
            return Err(format!(
                "reader {:?} is a vpcd reader: it serves this host's pcscd, not a guest; \
                 give the guest a usbredir reader (or a passthru card)",
                r.id
            ))
        }
        "usbip" => {
            return Err(format!(
                "reader {:?} is exported over USB/IP: the guest attaches it itself \
                 (`usbip attach -r HOST -b BUSID`), libvirt has no device for it",
                r.id
            ))
        }
        t => return Err(format!("reader {:?} has an unknown transport {t:?}", r.id)),
    }
    let (kind, addr) = source(r.address)?;
    let tls = if r.tls { " tls='yes'" } else { "" };
    let mut x = String::new();
    let _ = writeln!(
        x,
        "<!-- vccid reader {}: {} {} -->",
        comment(r.id),
        r.transport,
        comment(r.address)
    );
    match r.transport {
        "usbredir" => {
            let _ = writeln!(x, "<redirdev bus='usb' type='{kind}'>");
            let _ = writeln!(x, "  <source mode='connect' {addr}{tls}>");
            let _ = writeln!(
                x,
                "    <reconnect enabled='yes' timeout='{RECONNECT_SECONDS}'/>"
            );
            let _ = writeln!(x, "  </source>");
        }
        _ => {
            let _ = writeln!(x, "<redirdev bus='usb' type='{kind}'>");
            let _ = writeln!(x, "  <source mode='bind' {addr}{tls}/>");
        }
    }
    if kind == "tcp" {
        let _ = writeln!(x, "  <protocol type='raw'/>");
    }
    let _ = writeln!(x, "</redirdev>");
    Ok(x)
}

/// The `<smartcard mode='passthrough'>` element for a passthru card listening at `listen`.
pub fn passthru_xml(card: &str, listen: &str) -> Result<String, String> {
    let (kind, addr) = source(listen)?;
    let mut x = String::new();
    let _ = writeln!(
        x,
        "<!-- vccid passthru card {}: {} -->",
        comment(card),
        comment(listen)
    );
    let _ = writeln!(x, "<smartcard mode='passthrough' type='{kind}'>");
    let _ = writeln!(x, "  <source mode='connect' {addr}>");
    let _ = writeln!(
        x,
        "    <reconnect enabled='yes' timeout='{RECONNECT_SECONDS}'/>"
    );
    let _ = writeln!(x, "  </source>");
    if kind == "tcp" {
        let _ = writeln!(x, "  <protocol type='raw'/>");
    }
    let _ = writeln!(x, "</smartcard>");
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader<'a>(transport: &'a str, address: &'a str, tls: bool) -> Reader<'a> {
        Reader {
            id: "guest1",
            transport,
            address,
            tls,
        }
    }

    #[test]
    fn a_usbredir_unix_reader_is_a_redirdev_that_reconnects() {
        assert_eq!(
            reader_xml(&reader("usbredir", "unix:/run/vccid/guest1.sock", false)).unwrap(),
            "<!-- vccid reader guest1: usbredir unix:/run/vccid/guest1.sock -->\n\
             <redirdev bus='usb' type='unix'>\n\
             \x20 <source mode='connect' path='/run/vccid/guest1.sock'>\n\
             \x20   <reconnect enabled='yes' timeout='1'/>\n\
             \x20 </source>\n\
             </redirdev>\n"
        );
    }

    #[test]
    fn a_tcp_reader_with_tls_says_so_and_is_raw() {
        let x = reader_xml(&reader("usbredir", "[::1]:4000", true)).unwrap();
        assert!(
            x.contains("<source mode='connect' host='::1' service='4000' tls='yes'>"),
            "{x}"
        );
        assert!(x.contains("<protocol type='raw'/>"), "{x}");
    }

    #[test]
    fn a_connecting_reader_makes_qemu_listen() {
        let x = reader_xml(&reader("usbredir-connect", "127.0.0.1:5000", false)).unwrap();
        assert!(
            x.contains("<source mode='bind' host='127.0.0.1' service='5000'/>"),
            "{x}"
        );
        assert!(!x.contains("reconnect"), "{x}");
    }

    #[test]
    fn vpcd_and_usbip_readers_are_refused_with_the_reason() {
        let e = reader_xml(&reader("vpcd", "127.0.0.1:35963", false)).unwrap_err();
        assert!(e.contains("pcscd"), "{e}");
        let e = reader_xml(&reader("usbip", "127.0.0.1:3240 bus id 1-1", false)).unwrap_err();
        assert!(e.contains("usbip attach"), "{e}");
    }

    #[test]
    fn paths_are_escaped_and_comments_stay_comments() {
        let r = Reader {
            id: "a--b",
            transport: "usbredir",
            address: "unix:/tmp/it's&<x>.sock",
            tls: false,
        };
        let x = reader_xml(&r).unwrap();
        assert!(
            x.contains("path='/tmp/it&apos;s&amp;&lt;x&gt;.sock'"),
            "{x}"
        );
        assert!(x.starts_with("<!-- vccid reader a- -b:"), "{x}");
    }

    #[test]
    fn a_passthru_card_is_a_passthrough_smartcard() {
        assert_eq!(
            passthru_xml("p1", "127.0.0.1:2001").unwrap(),
            "<!-- vccid passthru card p1: 127.0.0.1:2001 -->\n\
             <smartcard mode='passthrough' type='tcp'>\n\
             \x20 <source mode='connect' host='127.0.0.1' service='2001'>\n\
             \x20   <reconnect enabled='yes' timeout='1'/>\n\
             \x20 </source>\n\
             \x20 <protocol type='raw'/>\n\
             </smartcard>\n"
        );
    }
}
