//! Running a session over a connected byte stream. A reader thread turns the stream into
//! messages; wake-ups (a card inserted or removed, a slow card's answer) arrive on the same
//! channel through a [`Waker`], so the session thread sleeps until something happens: no
//! polling while idle, and pending IN transfers simply wait.

use crate::session::Session;
use ccid::usb::UsbDevice;
use std::io::{Read, Write};
use std::sync::mpsc::{channel, Sender};

enum Msg {
    Bytes(Vec<u8>),
    Closed(String),
    Wake,
}

/// Wakes a session so it completes whatever its device can now answer.
#[derive(Clone)]
pub struct Waker(Sender<Msg>);

impl Waker {
    /// Wakes the session; `false` once the session has ended.
    pub fn wake(&self) -> bool {
        self.0.send(Msg::Wake).is_ok()
    }
}

/// Serves `dev` to one usbredir guest until the connection ends; returns why it ended.
/// `on_waker` receives the session's [`Waker`] (for presence changes and the like).
pub fn serve_connection<R: Read + Send + 'static, W: Write>(
    mut reader: R,
    mut writer: W,
    dev: &mut dyn UsbDevice,
    version: &str,
    on_waker: impl FnOnce(Waker),
) -> String {
    let (tx, rx) = channel();
    let reader_tx = tx.clone();
    let spawned = std::thread::Builder::new()
        .name("usbredir-read".into())
        .spawn(move || {
            let mut buf = vec![0u8; 65536];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => {
                        let _ = reader_tx.send(Msg::Closed("closed by the guest".into()));
                        return;
                    }
                    Ok(n) => {
                        if reader_tx.send(Msg::Bytes(buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = reader_tx.send(Msg::Closed(e.to_string()));
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        return format!("cannot start the reader thread: {e}");
    }
    on_waker(Waker(tx));
    let mut session = Session::new(version, dev);
    if let Err(e) = writer.write_all(&session.start()) {
        return e.to_string();
    }
    loop {
        let out = match rx.recv() {
            Ok(Msg::Bytes(b)) => match session.on_bytes(&b, dev) {
                Ok(out) => out,
                Err(e) => return format!("{e}; closing"),
            },
            Ok(Msg::Wake) => session.poll(dev),
            Ok(Msg::Closed(why)) => return why,
            Err(_) => return "reader gone".into(),
        };
        if !out.is_empty() {
            if let Err(e) = writer.write_all(&out) {
                return e.to_string();
            }
        }
    }
}
