//! The few PC/SC calls used, from pcsc-lite loaded at run time (`libpcsclite.so.1`). On
//! Linux pcsc-lite's DWORD and LONG are C `unsigned long` and `long` (PCSC/wintypes.h).

use std::ffi::{c_char, c_long, c_ulong, c_void, CStr, CString};
use std::sync::Arc;

type Long = c_long;
pub(crate) type Dword = c_ulong;

/// SCARD_SCOPE_SYSTEM.
const SCOPE_SYSTEM: Dword = 2;
/// SCARD_SHARE_SHARED.
const SHARE_SHARED: Dword = 2;
/// SCARD_PROTOCOL_T0 | SCARD_PROTOCOL_T1.
const PROTOCOLS: Dword = 1 | 2;
/// SCARD_LEAVE_CARD, SCARD_RESET_CARD, SCARD_UNPOWER_CARD.
pub const LEAVE_CARD: Dword = 0;
/// Warm reset on disconnect/reconnect.
pub const RESET_CARD: Dword = 1;
/// Power down.
pub const UNPOWER_CARD: Dword = 2;
/// SCARD_STATE_PRESENT.
pub const STATE_PRESENT: Dword = 0x20;
/// SCARD_STATE_CHANGED.
pub const STATE_CHANGED: Dword = 0x02;
/// SCARD_E_TIMEOUT.
pub const E_TIMEOUT: u32 = 0x8010_000A;
/// SCARD_W_RESET_CARD.
pub const W_RESET_CARD: u32 = 0x8010_0068;

#[repr(C)]
struct IoRequest {
    protocol: Dword,
    pci_length: Dword,
}

/// SCARD_READERSTATE (pcsclite.h), MAX_ATR_SIZE 33.
#[repr(C)]
pub struct ReaderState {
    reader: *const c_char,
    user_data: *mut c_void,
    /// What the caller believes.
    pub current_state: Dword,
    /// What pcscd reports.
    pub event_state: Dword,
    atr_len: Dword,
    atr: [u8; 33],
}

type EstablishContext =
    unsafe extern "C" fn(Dword, *const c_void, *const c_void, *mut Long) -> Long;
type ReleaseContext = unsafe extern "C" fn(Long) -> Long;
type ListReaders = unsafe extern "C" fn(Long, *const c_char, *mut c_char, *mut Dword) -> Long;
type Connect =
    unsafe extern "C" fn(Long, *const c_char, Dword, Dword, *mut Long, *mut Dword) -> Long;
type Reconnect = unsafe extern "C" fn(Long, Dword, Dword, Dword, *mut Dword) -> Long;
type Disconnect = unsafe extern "C" fn(Long, Dword) -> Long;
type Transmit = unsafe extern "C" fn(
    Long,
    *const IoRequest,
    *const u8,
    Dword,
    *mut IoRequest,
    *mut u8,
    *mut Dword,
) -> Long;
type Status = unsafe extern "C" fn(
    Long,
    *mut c_char,
    *mut Dword,
    *mut Dword,
    *mut Dword,
    *mut u8,
    *mut Dword,
) -> Long;
type GetStatusChange = unsafe extern "C" fn(Long, Dword, *mut ReaderState, Dword) -> Long;

/// pcsc-lite's functions.
pub struct Lib {
    establish: EstablishContext,
    release: ReleaseContext,
    list: ListReaders,
    connect: Connect,
    reconnect: Reconnect,
    disconnect: Disconnect,
    transmit: Transmit,
    status: Status,
    get_status_change: GetStatusChange,
    _lib: libloading::Library,
}

/// A PC/SC error code, with pcsc-lite's name for the common ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("PC/SC error 0x{0:08X}{name}", name = code_name(*.0))]
pub struct PcscError(pub u32);

fn code_name(c: u32) -> &'static str {
    match c {
        0x8010_0002 => " (cancelled)",
        0x8010_0003 => " (unknown reader)",
        0x8010_000A => " (timeout)",
        0x8010_000B => " (sharing violation)",
        0x8010_000C => " (no smart card)",
        0x8010_001D => " (pcscd is not running)",
        0x8010_002E => " (no readers available)",
        0x8010_0068 => " (card was reset)",
        0x8010_0069 => " (card was removed)",
        0x8010_0067 => " (card unpowered)",
        0x8010_0066 => " (card unresponsive)",
        _ => "",
    }
}

/// Why libpcsclite could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    /// The library is not installed (or not loadable).
    #[error("cannot load libpcsclite.so.1 (install libpcsclite1 and pcscd): {0}")]
    Open(libloading::Error),
    /// The library lacks a PC/SC function.
    #[error("libpcsclite: {0}")]
    Symbol(libloading::Error),
}

fn check(rv: Long) -> Result<(), PcscError> {
    if rv == 0 {
        Ok(())
    } else {
        Err(PcscError(rv as u32))
    }
}

impl Lib {
    /// Loads libpcsclite.so.1.
    pub fn load() -> Result<Arc<Lib>, LibraryError> {
        // SAFETY: loading pcsc-lite runs its (trivial) initialisers; the symbols are looked up
        // with the signatures pcsclite.h declares for this platform.
        unsafe {
            let lib = libloading::Library::new("libpcsclite.so.1").map_err(LibraryError::Open)?;
            macro_rules! sym {
                ($name:literal) => {
                    *lib.get($name).map_err(LibraryError::Symbol)?
                };
            }
            Ok(Arc::new(Lib {
                establish: sym!(b"SCardEstablishContext\0"),
                release: sym!(b"SCardReleaseContext\0"),
                list: sym!(b"SCardListReaders\0"),
                connect: sym!(b"SCardConnect\0"),
                reconnect: sym!(b"SCardReconnect\0"),
                disconnect: sym!(b"SCardDisconnect\0"),
                transmit: sym!(b"SCardTransmit\0"),
                status: sym!(b"SCardStatus\0"),
                get_status_change: sym!(b"SCardGetStatusChange\0"),
                _lib: lib,
            }))
        }
    }
}

/// A PC/SC context (one per thread that blocks in it).
pub struct Context {
    lib: Arc<Lib>,
    ctx: Long,
}

impl Context {
    /// SCardEstablishContext.
    pub fn new(lib: &Arc<Lib>) -> Result<Context, PcscError> {
        let mut ctx: Long = 0;
        // SAFETY: out-pointer to a local; reserved pointers are null as the API requires.
        check(unsafe {
            (lib.establish)(SCOPE_SYSTEM, std::ptr::null(), std::ptr::null(), &mut ctx)
        })?;
        Ok(Context {
            lib: lib.clone(),
            ctx,
        })
    }

    /// SCardListReaders: the reader names.
    pub fn readers(&self) -> Result<Vec<String>, PcscError> {
        let mut len: Dword = 0;
        // SAFETY: first call asks for the size (null buffer), second fills a buffer of it.
        check(unsafe {
            (self.lib.list)(self.ctx, std::ptr::null(), std::ptr::null_mut(), &mut len)
        })?;
        let mut buf = vec![0u8; len as usize];
        check(unsafe {
            (self.lib.list)(
                self.ctx,
                std::ptr::null(),
                buf.as_mut_ptr().cast(),
                &mut len,
            )
        })?;
        buf.truncate(len as usize);
        Ok(buf
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect())
    }

    /// SCardGetStatusChange on one reader: waits up to `timeout_ms` for its state to differ
    /// from `current`; returns the new event state.
    pub fn wait_change(
        &self,
        reader: &CStr,
        current: Dword,
        timeout_ms: u32,
    ) -> Result<Dword, PcscError> {
        let mut st = ReaderState {
            reader: reader.as_ptr(),
            user_data: std::ptr::null_mut(),
            current_state: current,
            event_state: 0,
            atr_len: 0,
            atr: [0; 33],
        };
        // SAFETY: one valid reader state whose name outlives the call.
        check(unsafe {
            (self.lib.get_status_change)(self.ctx, Dword::from(timeout_ms), &mut st, 1)
        })?;
        Ok(st.event_state)
    }

    /// SCardGetStatusChange on several readers at once: waits up to `timeout_ms` (`u32::MAX`
    /// is INFINITE) until one of them differs from its `current` state; returns each reader's
    /// event state and ATR, in order. The name `\\?PnP?\Notification` (PCSC/pcsclite.h)
    /// stands for "the reader list changed".
    pub fn wait_changes(
        &self,
        readers: &[(CString, Dword)],
        timeout_ms: u32,
    ) -> Result<Vec<(Dword, Vec<u8>)>, PcscError> {
        let mut states: Vec<ReaderState> = readers
            .iter()
            .map(|(name, current)| ReaderState {
                reader: name.as_ptr(),
                user_data: std::ptr::null_mut(),
                current_state: *current,
                event_state: 0,
                atr_len: 0,
                atr: [0; 33],
            })
            .collect();
        // SAFETY: `states` holds `states.len()` valid reader states whose names (borrowed from
        // `readers`) outlive the call; pcsc-lite writes only inside them.
        check(unsafe {
            (self.lib.get_status_change)(
                self.ctx,
                Dword::from(timeout_ms),
                states.as_mut_ptr(),
                states.len() as Dword,
            )
        })?;
        Ok(states
            .iter()
            .map(|s| {
                (
                    s.event_state,
                    s.atr[..(s.atr_len as usize).min(33)].to_vec(),
                )
            })
            .collect())
    }

    /// SCardConnect, shared, T=0 or T=1.
    pub fn connect(&self, reader: &str) -> Result<Handle, PcscError> {
        let name = CString::new(reader).map_err(|_| PcscError(0x8010_0003))?;
        let (mut h, mut proto): (Long, Dword) = (0, 0);
        // SAFETY: valid C string and out-pointers to locals.
        check(unsafe {
            (self.lib.connect)(
                self.ctx,
                name.as_ptr(),
                SHARE_SHARED,
                PROTOCOLS,
                &mut h,
                &mut proto,
            )
        })?;
        Ok(Handle {
            lib: self.lib.clone(),
            h,
            protocol: proto,
        })
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: the context was established by us and is released once.
        unsafe { (self.lib.release)(self.ctx) };
    }
}

/// A connection to a card.
pub struct Handle {
    lib: Arc<Lib>,
    h: Long,
    protocol: Dword,
}

// SAFETY: pcsc-lite handles may be used from any thread (one call at a time, which the owning
// Card's &mut access guarantees).
unsafe impl Send for Handle {}
unsafe impl Send for Context {}

impl Handle {
    /// SCardStatus: the card's ATR.
    pub fn atr(&self) -> Result<Vec<u8>, PcscError> {
        let mut name = [0 as c_char; 256];
        let mut name_len: Dword = name.len() as Dword;
        let (mut state, mut proto): (Dword, Dword) = (0, 0);
        let mut atr = [0u8; 33];
        let mut atr_len: Dword = atr.len() as Dword;
        // SAFETY: every buffer is passed with its true length.
        check(unsafe {
            (self.lib.status)(
                self.h,
                name.as_mut_ptr(),
                &mut name_len,
                &mut state,
                &mut proto,
                atr.as_mut_ptr(),
                &mut atr_len,
            )
        })?;
        Ok(atr[..(atr_len as usize).min(33)].to_vec())
    }

    /// SCardTransmit with the protocol negotiated at connect.
    pub fn transmit(&self, apdu: &[u8]) -> Result<Vec<u8>, PcscError> {
        let pci = IoRequest {
            protocol: self.protocol,
            pci_length: std::mem::size_of::<IoRequest>() as Dword,
        };
        let mut out = vec![0u8; 65536 + 2];
        let mut out_len: Dword = out.len() as Dword;
        // SAFETY: send buffer and receive buffer with their lengths; the receive PCI may be null.
        check(unsafe {
            (self.lib.transmit)(
                self.h,
                &pci,
                apdu.as_ptr(),
                apdu.len() as Dword,
                std::ptr::null_mut(),
                out.as_mut_ptr(),
                &mut out_len,
            )
        })?;
        out.truncate((out_len as usize).min(65538));
        Ok(out)
    }

    /// SCardReconnect with the given initialisation (reset or unpower).
    pub fn reconnect(&mut self, init: Dword) -> Result<(), PcscError> {
        let mut proto: Dword = 0;
        // SAFETY: out-pointer to a local.
        check(unsafe { (self.lib.reconnect)(self.h, SHARE_SHARED, PROTOCOLS, init, &mut proto) })?;
        self.protocol = proto;
        Ok(())
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle was connected by us and is disconnected once.
        unsafe { (self.lib.disconnect)(self.h, LEAVE_CARD) };
    }
}
