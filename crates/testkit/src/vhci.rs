//! The kernel's side of USB/IP, played by a test (transports.md §2): what `usbip list -r` and
//! `usbip attach` send, then vhci-hcd's CMD_SUBMIT / CMD_UNLINK with free choice of what stays
//! pending, so a test can check out-of-order completion and the unlink rules byte by byte.
//! Written from the spec, independently of the `usbip` crate it tests.

use crate::Result;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

fn op(code: u16) -> Vec<u8> {
    let mut v = vec![0x01, 0x11];
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(&[0; 4]);
    v
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// OP_REQ_DEVLIST; returns the whole OP_REP_DEVLIST (the server closes after it).
pub fn devlist(addr: SocketAddr) -> Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(&op(0x8005)).map_err(|e| e.to_string())?;
    let mut v = Vec::new();
    s.read_to_end(&mut v).map_err(|e| format!("devlist: {e}"))?;
    Ok(v)
}

/// One decoded RET_SUBMIT or RET_UNLINK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ret {
    /// 3 = RET_SUBMIT, 4 = RET_UNLINK.
    pub command: u32,
    /// The request's sequence number.
    pub seqnum: u32,
    /// 0 or a negated errno.
    pub status: i32,
    /// RET_SUBMIT: actual_length.
    pub actual_length: u32,
    /// IN data.
    pub data: Vec<u8>,
}

/// An imported device's URB channel.
pub struct Importer {
    stream: TcpStream,
    devid: u32,
    next_seq: u32,
    /// seqnum → IN?, for reading RET_SUBMIT payloads.
    dirs: HashMap<u32, bool>,
}

/// OP_REQ_IMPORT of `busid`: `Ok(Err(status))` when the server refuses, with the connection
/// closed; otherwise the 312-byte record and the URB channel.
pub fn import(
    addr: SocketAddr,
    busid: &str,
) -> Result<std::result::Result<(Vec<u8>, Importer), u32>> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut req = op(0x8003);
    let mut id = [0u8; 32];
    id[..busid.len().min(31)].copy_from_slice(&busid.as_bytes()[..busid.len().min(31)]);
    req.extend_from_slice(&id);
    s.write_all(&req).map_err(|e| e.to_string())?;
    let mut head = [0u8; 8];
    s.read_exact(&mut head)
        .map_err(|e| format!("OP_REP_IMPORT: {e}"))?;
    if head[..4] != [0x01, 0x11, 0x00, 0x03] {
        return Err(format!("not an OP_REP_IMPORT: {head:02X?}"));
    }
    let status = be32(&head, 4);
    if status != 0 {
        return Ok(Err(status));
    }
    let mut record = vec![0u8; 312];
    s.read_exact(&mut record)
        .map_err(|e| format!("import record: {e}"))?;
    let devid = (be32(&record, 0x120) << 16) | (be32(&record, 0x124) & 0xFFFF);
    Ok(Ok((
        record,
        Importer {
            stream: s,
            devid,
            next_seq: 1,
            dirs: HashMap::new(),
        },
    )))
}

impl Importer {
    fn header(&mut self, command: u32, dir_in: bool, ep: u8) -> (u32, Vec<u8>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut v = Vec::with_capacity(48);
        for w in [command, seq, self.devid, u32::from(dir_in), u32::from(ep)] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        (seq, v)
    }

    /// CMD_SUBMIT; returns its seqnum. `setup` for ep 0, zeros otherwise; `out` is the OUT
    /// data (its length is the transfer length) or, for IN, empty with `in_len` asked.
    pub fn submit(
        &mut self,
        ep: u8,
        dir_in: bool,
        setup: [u8; 8],
        out: &[u8],
        in_len: u32,
    ) -> Result<u32> {
        let (seq, mut v) = self.header(1, dir_in, ep);
        let len = if dir_in { in_len } else { out.len() as u32 };
        let flags: u32 = if dir_in { 0x200 } else { 0 };
        for w in [flags, len, 0, 0, 0] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        v.extend_from_slice(&setup);
        if !dir_in {
            v.extend_from_slice(out);
        }
        self.dirs.insert(seq, dir_in);
        self.stream.write_all(&v).map_err(|e| e.to_string())?;
        Ok(seq)
    }

    /// A control transfer; `setup` as the 8 bytes on the wire.
    pub fn control(&mut self, setup: [u8; 8], out: &[u8]) -> Result<u32> {
        let dir_in = setup[0] & 0x80 != 0;
        let len = u32::from(u16::from_le_bytes([setup[6], setup[7]]));
        self.submit(0, dir_in, setup, out, len)
    }

    /// CMD_UNLINK of `victim`; returns the unlink's own seqnum.
    pub fn unlink(&mut self, victim: u32) -> Result<u32> {
        let (seq, mut v) = self.header(2, false, 0);
        v.extend_from_slice(&victim.to_be_bytes());
        v.extend_from_slice(&[0; 24]);
        self.stream.write_all(&v).map_err(|e| e.to_string())?;
        Ok(seq)
    }

    /// Raw bytes, for bad input.
    pub fn send_raw(&mut self, b: &[u8]) -> Result<()> {
        self.stream.write_all(b).map_err(|e| e.to_string())
    }

    /// The next RET_*, or `None` if nothing comes within `timeout` (or the server closed).
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Ret>> {
        self.stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let mut h = [0u8; 48];
        match self.stream.read_exact(&mut h) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e.to_string()),
        }
        let command = be32(&h, 0);
        let seqnum = be32(&h, 4);
        let status = be32(&h, 20) as i32;
        let actual_length = be32(&h, 24);
        let mut data = Vec::new();
        if command == 3 && self.dirs.remove(&seqnum) == Some(true) {
            if actual_length > 70_000 {
                return Err(format!("RET_SUBMIT with actual_length {actual_length}"));
            }
            data = vec![0u8; actual_length as usize];
            self.stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            self.stream
                .read_exact(&mut data)
                .map_err(|e| format!("RET_SUBMIT data: {e}"))?;
        } else if command != 3 && command != 4 {
            return Err(format!("unexpected command {command}: {h:02X?}"));
        }
        Ok(Some(Ret {
            command,
            seqnum,
            status,
            actual_length,
            data,
        }))
    }

    /// Whether the server has closed the connection (read returns end of stream).
    pub fn closed_by_server(&mut self, timeout: Duration) -> bool {
        let _ = self.stream.set_read_timeout(Some(timeout));
        let mut b = [0u8; 1];
        match self.stream.read(&mut b) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    }
}
