//! Running a session over a connected byte stream, on `link`'s pump: a reader thread turns
//! the stream into messages; wake-ups (a card inserted or removed, a slow card's answer)
//! arrive on the same channel through a [`Waker`], so the session thread sleeps until
//! something happens: no polling while idle, and pending IN transfers simply wait.

use crate::codec::CodecError;
use crate::session::Session;
use ccid::usb::UsbDevice;
use link::pump::{self, Ended, Protocol};
use std::io::{Read, Write};

/// Wakes a session so it completes whatever its device can now answer.
pub use link::pump::Waker;

/// A [`Session`] and the device it drives, as the pump sees them.
struct Driver<'a> {
    session: Session,
    dev: &'a mut dyn UsbDevice,
}

impl Protocol for Driver<'_> {
    type Error = CodecError;
    fn start(&mut self) -> Vec<u8> {
        self.session.start()
    }
    fn on_bytes(&mut self, bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
        self.session.on_bytes(bytes, self.dev)
    }
    fn on_wake(&mut self) -> Vec<u8> {
        self.session.poll(self.dev)
    }
}

/// Serves `dev` to one usbredir guest until the connection ends; returns why it ended.
/// `on_waker` receives the session's [`Waker`] (for presence changes and the like). The
/// caller shuts the stream down afterwards (see [`link::pump::run`]).
pub fn serve_connection<R: Read + Send + 'static, W: Write>(
    reader: R,
    writer: W,
    dev: &mut dyn UsbDevice,
    version: &str,
    on_waker: impl FnOnce(Waker),
) -> Ended {
    let session = Session::new(version, dev);
    pump::run(reader, writer, &mut Driver { session, dev }, on_waker)
}
