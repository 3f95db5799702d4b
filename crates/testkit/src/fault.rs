//! A fault proxy (issue #17): a TCP or Unix proxy between a link's two ends that delays, splits,
//! stalls, cuts and resets the traffic when the test says so, to check that every link
//! recovers and that nothing hangs longer than the link's own timeout.
//!
//! [`FaultProxy::start`] listens on one endpoint and connects each accepted client to the
//! upstream endpoint (TCP or Unix, in any mix); each connection gets a thread per direction.
//! The test queues [`Fault`]s per [`Direction`] with [`FaultProxy::inject`]: each applies to
//! the next write the proxy forwards in that direction, on whichever connection carries it (a
//! fault queued while no connection is up applies to the next one). A "write" is what one read
//! of the sending side returns: on loopback, with TCP_NODELAY on both sides, one message of
//! the peer's as a rule.
//!
//! [`Fault::DropMidMessage`] closes both connections cleanly (FIN) after part of the message;
//! [`Fault::Reset`] resets them (SO_LINGER 0, so the close sends RST and no FIN comes before
//! it). A Unix socket has no reset: there the proxy closes without forwarding anything, and
//! the peer sees the end of the stream (or ECONNRESET if it had written bytes the proxy had
//! not read).
//!
//! Dropping the proxy closes every connection and joins every thread it started.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::channel;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long connecting to the upstream may take before the client is turned away.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One read's buffer: larger than any message of the links under test.
const BUFFER: usize = 64 * 1024;

/// Where the proxy listens or connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// TCP (port 0 to listen on any free port).
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl std::fmt::Display for Endpoint {
    /// As the programs under test take it: `HOST:PORT` or `unix:PATH`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "{a}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A fault, applied to the next write in its direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The write is held for this long, then forwarded whole: latency.
    Delay(Duration),
    /// The write is forwarded one byte per write (each its own segment, TCP_NODELAY), so the
    /// receiver's parser meets every possible split of the message.
    SplitBytes,
    /// The first `after_bytes` bytes of the write are forwarded (never all of it: at most its
    /// length less one), then both connections are closed cleanly: a peer gone mid-message.
    DropMidMessage {
        /// How many bytes of the message get through.
        after_bytes: usize,
    },
    /// The first half of the write is forwarded, then nothing in this direction for this
    /// long (the sender's later writes wait in the socket buffers), then the rest: a link
    /// that stops mid-message and comes back.
    Stall(Duration),
    /// Both connections are reset (RST) instead of forwarding the write.
    Reset,
}

impl Fault {
    /// Whether the fault ends the connection (the link must reconnect to recover).
    pub fn ends_connection(&self) -> bool {
        matches!(self, Fault::DropMidMessage { .. } | Fault::Reset)
    }
}

/// Which way a fault applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client that connected to the proxy, to the upstream.
    ToUpstream,
    /// From the upstream back to the client.
    ToClient,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::ToUpstream => 0,
            Direction::ToClient => 1,
        }
    }
}

/// A connected socket of either kind.
enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Sock {
    fn connect(to: &Endpoint) -> io::Result<Sock> {
        Ok(match to {
            Endpoint::Tcp(a) => {
                let s = TcpStream::connect_timeout(a, CONNECT_TIMEOUT)?;
                s.set_nodelay(true)?;
                Sock::Tcp(s)
            }
            Endpoint::Unix(p) => Sock::Unix(UnixStream::connect(p)?),
        })
    }
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => (&*s).read(buf),
            Sock::Unix(s) => (&*s).read(buf),
        }
    }
    fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => (&*s).write_all(buf),
            Sock::Unix(s) => (&*s).write_all(buf),
        }
    }
    fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            Sock::Tcp(s) => s.shutdown(how),
            Sock::Unix(s) => s.shutdown(how),
        };
    }
    /// SO_LINGER with a zero timeout: the last close sends RST, dropping unsent data.
    fn linger_zero(&self) {
        if let Sock::Tcp(s) = self {
            let l = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: setsockopt(2) on a socket we own, reading a linger struct of the size
            // given, which lives across the call.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    std::ptr::from_ref(&l).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
        }
    }
}

/// One proxied connection: the client's socket and the upstream's.
struct Conn {
    client: Sock,
    upstream: Sock,
    /// Set when the proxy itself ended the connection (a fault, or the proxy going away):
    /// the threads then stop without passing an end of stream on.
    ended: AtomicBool,
}

impl Conn {
    /// (where the direction reads, where it writes).
    fn ends(&self, dir: Direction) -> (&Sock, &Sock) {
        match dir {
            Direction::ToUpstream => (&self.client, &self.upstream),
            Direction::ToClient => (&self.upstream, &self.client),
        }
    }

    /// A clean close of both: FIN after whatever was forwarded; wakes both threads.
    fn close(&self) {
        self.ended.store(true, Ordering::SeqCst);
        self.client.shutdown(Shutdown::Both);
        self.upstream.shutdown(Shutdown::Both);
    }

    /// A reset of both: only the reading side is shut (which wakes both threads and sends
    /// nothing), so the sockets' last close, once both threads let go, sends RST.
    fn reset(&self) {
        self.ended.store(true, Ordering::SeqCst);
        for s in [&self.client, &self.upstream] {
            s.linger_zero();
            s.shutdown(Shutdown::Read);
        }
    }
}

/// What the proxy's threads and its handle share.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when a fault is applied, a connection accepted, or the proxy stops.
    changed: Condvar,
}

#[derive(Default)]
struct State {
    stopped: bool,
    /// Per direction: each fault with the number of writes to let through before it.
    queues: [VecDeque<(usize, Fault)>; 2],
    applied: usize,
    accepted: usize,
    writes: [usize; 2],
    conns: Vec<Weak<Conn>>,
    threads: Vec<JoinHandle<()>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps `d` unless the proxy stops first; `false` when stopped.
    fn sleep(&self, d: Duration) -> bool {
        let g = self.lock();
        let (g, _) = self
            .changed
            .wait_timeout_while(g, d, |s| !s.stopped)
            .unwrap_or_else(|e| e.into_inner());
        !g.stopped
    }

    fn write(&self, to: &Sock, dir: Direction, bytes: &[u8]) -> io::Result<()> {
        self.lock().writes[dir.index()] += 1;
        to.write_all(bytes)
    }
}

/// The listening socket, kept by the handle too, so that dropping the proxy can wake the
/// accept loop with shutdown(2) while the descriptor is still surely this socket.
enum Listening {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listening {
    fn bind(at: &Endpoint) -> io::Result<(Listening, Endpoint)> {
        Ok(match at {
            Endpoint::Tcp(a) => {
                let l = TcpListener::bind(a)?;
                let local = Endpoint::Tcp(l.local_addr()?);
                (Listening::Tcp(l), local)
            }
            Endpoint::Unix(p) => {
                let _ = std::fs::remove_file(p);
                (
                    Listening::Unix(UnixListener::bind(p)?, p.clone()),
                    at.clone(),
                )
            }
        })
    }

    fn accept(&self) -> io::Result<Sock> {
        Ok(match self {
            Listening::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nodelay(true)?;
                Sock::Tcp(s)
            }
            Listening::Unix(l, _) => Sock::Unix(l.accept()?.0),
        })
    }

    /// Wakes a blocked accept(2): Linux fails it with EINVAL once the listener is shut down.
    fn wake(&self) {
        let fd = match self {
            Listening::Tcp(l) => l.as_raw_fd(),
            Listening::Unix(l, _) => l.as_raw_fd(),
        };
        // SAFETY: shutdown(2) on a descriptor this value owns and keeps open.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        if let Listening::Unix(_, p) = self {
            // In case a kernel does not wake a Unix accept on shutdown: a connection does.
            let _ = UnixStream::connect(p);
        }
    }
}

/// The proxy; see the module's documentation. Dropping it stops everything it started.
pub struct FaultProxy {
    shared: Arc<Shared>,
    listening: Arc<Listening>,
    local: Endpoint,
    accept: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on `listen` (TCP port 0: any free port, see [`FaultProxy::endpoint`]) and
    /// proxies each connection to `upstream`.
    pub fn start(listen: &Endpoint, upstream: &Endpoint) -> io::Result<FaultProxy> {
        Self::start_in(None, listen, upstream)
    }

    /// [`FaultProxy::start`] inside the network namespace `netns` (a `/proc/PID/ns/net`
    /// file, as [`crate::PrivatePcscd::netns_path`] gives): the listener is bound and the
    /// upstream connections made there, by the proxy's accept thread, which alone enters the
    /// namespace (setns(2) moves only the calling thread).
    pub fn start_in_netns(
        netns: &Path,
        listen: &Endpoint,
        upstream: &Endpoint,
    ) -> io::Result<FaultProxy> {
        Self::start_in(Some(netns.to_path_buf()), listen, upstream)
    }

    fn start_in(
        netns: Option<PathBuf>,
        listen: &Endpoint,
        upstream: &Endpoint,
    ) -> io::Result<FaultProxy> {
        let shared = Arc::new(Shared::default());
        let (tx, rx) = channel();
        let (listen, upstream) = (listen.clone(), upstream.clone());
        let s = shared.clone();
        let accept = std::thread::Builder::new()
            .name("fault-accept".into())
            .spawn(move || {
                let bound = enter(netns.as_deref()).and_then(|()| Listening::bind(&listen));
                let listening = match bound {
                    Ok((l, local)) => {
                        let l = Arc::new(l);
                        let _ = tx.send(Ok((l.clone(), local)));
                        l
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                accept_loop(&s, &listening, &upstream);
            })?;
        let (listening, local) = rx
            .recv()
            .map_err(|_| io::Error::other("the proxy's accept thread died"))??;
        Ok(FaultProxy {
            shared,
            listening,
            local,
            accept: Some(accept),
        })
    }

    /// Where clients connect (with the real port when listening on port 0).
    pub fn endpoint(&self) -> &Endpoint {
        &self.local
    }

    /// Queues `fault` for the next write in direction `dir`.
    pub fn inject(&self, dir: Direction, fault: Fault) {
        self.inject_after(dir, 0, fault);
    }

    /// Queues `fault` for a later write in direction `dir`: `skip` writes pass untouched
    /// first (counted from when the faults queued before it have been applied), so a fault
    /// can land inside a handshake (the client's second flight of a TLS handshake is its
    /// second write).
    pub fn inject_after(&self, dir: Direction, skip: usize, fault: Fault) {
        self.shared.lock().queues[dir.index()].push_back((skip, fault));
    }

    /// Faults applied so far.
    pub fn applied(&self) -> usize {
        self.shared.lock().applied
    }

    /// Faults queued and not applied yet, both directions.
    pub fn pending(&self) -> usize {
        self.shared.lock().queues.iter().map(VecDeque::len).sum()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.lock().accepted
    }

    /// Writes the proxy made in direction `dir` so far (a split message counts one per byte).
    pub fn writes(&self, dir: Direction) -> usize {
        self.shared.lock().writes[dir.index()]
    }

    /// Waits until `n` faults in all have been applied; `false` if `timeout` passes first.
    pub fn wait_applied(&self, n: usize, timeout: Duration) -> bool {
        let g = self.shared.lock();
        let (g, _) = self
            .shared
            .changed
            .wait_timeout_while(g, timeout, |s| s.applied < n && !s.stopped)
            .unwrap_or_else(|e| e.into_inner());
        g.applied >= n
    }

    /// Waits until `n` connections in all have been accepted; `false` if `timeout` passes
    /// first.
    pub fn wait_accepted(&self, n: usize, timeout: Duration) -> bool {
        let g = self.shared.lock();
        let (g, _) = self
            .shared
            .changed
            .wait_timeout_while(g, timeout, |s| s.accepted < n && !s.stopped)
            .unwrap_or_else(|e| e.into_inner());
        g.accepted >= n
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let (conns, threads) = {
            let mut g = self.shared.lock();
            g.stopped = true;
            (std::mem::take(&mut g.conns), std::mem::take(&mut g.threads))
        };
        self.shared.changed.notify_all();
        self.listening.wake();
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        // Connections accepted after the take above: the accept loop has ended, so none.
        let (late_conns, late_threads) = {
            let mut g = self.shared.lock();
            (std::mem::take(&mut g.conns), std::mem::take(&mut g.threads))
        };
        for c in conns.iter().chain(&late_conns).filter_map(Weak::upgrade) {
            c.close();
        }
        for t in threads.into_iter().chain(late_threads) {
            let _ = t.join();
        }
        if let Listening::Unix(_, p) = &*self.listening {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Moves the calling thread into the network namespace `netns`, if any.
fn enter(netns: Option<&Path>) -> io::Result<()> {
    let Some(path) = netns else {
        return Ok(());
    };
    let f = std::fs::File::open(path)?;
    // SAFETY: setns(2) with a namespace descriptor we own; it moves only this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn accept_loop(shared: &Arc<Shared>, listening: &Listening, upstream: &Endpoint) {
    loop {
        let accepted = listening.accept();
        if shared.lock().stopped {
            return;
        }
        let client = match accepted {
            Ok(c) => c,
            Err(e) => {
                eprintln!("fault proxy: accept failed: {e}");
                if !shared.sleep(Duration::from_millis(50)) {
                    return;
                }
                continue;
            }
        };
        let upstream = match Sock::connect(upstream) {
            Ok(u) => u,
            Err(e) => {
                // The client sees its connection closed, as if the upstream had refused it.
                eprintln!("fault proxy: cannot reach {upstream}: {e}");
                continue;
            }
        };
        let conn = Arc::new(Conn {
            client,
            upstream,
            ended: AtomicBool::new(false),
        });
        let mut g = shared.lock();
        g.threads.retain(|t| !t.is_finished());
        g.conns.retain(|c| c.strong_count() > 0);
        g.conns.push(Arc::downgrade(&conn));
        for dir in [Direction::ToUpstream, Direction::ToClient] {
            let (c, s) = (conn.clone(), shared.clone());
            match std::thread::Builder::new()
                .name("fault-pump".into())
                .spawn(move || pump(&c, dir, &s))
            {
                Ok(t) => g.threads.push(t),
                Err(e) => {
                    eprintln!("fault proxy: no thread for a connection: {e}");
                    conn.close();
                }
            }
        }
        g.accepted += 1;
        drop(g);
        shared.changed.notify_all();
    }
}

/// One direction of one connection, until either end goes or a fault ends it.
fn pump(conn: &Conn, dir: Direction, shared: &Shared) {
    let (from, to) = conn.ends(dir);
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => {
                // The sender closed its side: pass the end of stream on, half-closed, as a
                // plain TCP path would.
                if !conn.ended.load(Ordering::SeqCst) {
                    to.shutdown(Shutdown::Write);
                }
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                // A reset from the sender: the other end is reset too.
                conn.reset();
                return;
            }
        };
        if conn.ended.load(Ordering::SeqCst) {
            return;
        }
        let fault = {
            let mut g = shared.lock();
            let q = &mut g.queues[dir.index()];
            let f = match q.front_mut() {
                Some((skip, _)) if *skip > 0 => {
                    *skip -= 1;
                    None
                }
                Some(_) => q.pop_front().map(|(_, f)| f),
                None => None,
            };
            g.applied += usize::from(f.is_some());
            f
        };
        if fault.is_some() {
            shared.changed.notify_all();
        }
        if let Err(()) = forward(conn, to, dir, shared, &buf[..n], fault) {
            return;
        }
    }
}

/// Forwards one write under `fault`; `Err` when the connection is over.
fn forward(
    conn: &Conn,
    to: &Sock,
    dir: Direction,
    shared: &Shared,
    msg: &[u8],
    fault: Option<Fault>,
) -> Result<(), ()> {
    let sent = match fault {
        None => shared.write(to, dir, msg),
        Some(Fault::Delay(d)) => {
            if !shared.sleep(d) {
                return Err(());
            }
            shared.write(to, dir, msg)
        }
        Some(Fault::SplitBytes) => msg.chunks(1).try_for_each(|b| {
            shared.write(to, dir, b)?;
            // Let the receiver take each byte on its own.
            std::thread::yield_now();
            Ok(())
        }),
        Some(Fault::Stall(d)) => {
            let (first, rest) = msg.split_at(msg.len() / 2);
            if !first.is_empty() {
                if let Err(e) = shared.write(to, dir, first) {
                    return fail(conn, e);
                }
            }
            if !shared.sleep(d) {
                return Err(());
            }
            shared.write(to, dir, rest)
        }
        Some(Fault::DropMidMessage { after_bytes }) => {
            let part = &msg[..after_bytes.min(msg.len().saturating_sub(1))];
            if !part.is_empty() {
                let _ = shared.write(to, dir, part);
            }
            conn.close();
            return Err(());
        }
        Some(Fault::Reset) => {
            conn.reset();
            return Err(());
        }
    };
    match sent {
        Ok(()) => Ok(()),
        Err(e) => fail(conn, e),
    }
}

/// A write failed: the receiver is gone (reset, or closed), so the sender is reset.
fn fail(conn: &Conn, _: io::Error) -> Result<(), ()> {
    conn.reset();
    Err(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    /// An upstream that answers each read with the same bytes, upper-cased, and reports what
    /// it read (and how its connection ended) on a channel.
    fn echo_upstream(l: TcpListener) -> std::sync::mpsc::Receiver<io::Result<Vec<u8>>> {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) => {
                                let _ = tx.send(Ok(Vec::new()));
                                return;
                            }
                            Ok(n) => {
                                let _ = tx.send(Ok(buf[..n].to_vec()));
                                if s.write_all(&buf[..n].to_ascii_uppercase()).is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                let _ = tx.send(Err(e));
                                return;
                            }
                        }
                    }
                });
            }
        });
        rx
    }

    fn tcp_proxy() -> (FaultProxy, std::sync::mpsc::Receiver<io::Result<Vec<u8>>>) {
        let up = TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream = Endpoint::Tcp(up.local_addr().unwrap());
        let rx = echo_upstream(up);
        let p =
            FaultProxy::start(&Endpoint::Tcp("127.0.0.1:0".parse().unwrap()), &upstream).unwrap();
        (p, rx)
    }

    fn connect(p: &FaultProxy) -> TcpStream {
        let Endpoint::Tcp(a) = p.endpoint() else {
            panic!("a TCP proxy")
        };
        let s = TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s
    }

    /// Everything the upstream read, until `n` bytes.
    fn upstream_got(rx: &std::sync::mpsc::Receiver<io::Result<Vec<u8>>>, n: usize) -> Vec<u8> {
        let mut all = Vec::new();
        while all.len() < n {
            all.extend(rx.recv_timeout(WAIT).unwrap().unwrap());
        }
        all
    }

    fn read_n(s: &mut impl Read, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        s.read_exact(&mut b).unwrap();
        b
    }

    #[test]
    fn without_faults_bytes_pass_both_ways() {
        let (p, rx) = tcp_proxy();
        let mut c = connect(&p);
        c.write_all(b"hello").unwrap();
        assert_eq!(upstream_got(&rx, 5), b"hello");
        assert_eq!(read_n(&mut c, 5), b"HELLO");
        assert_eq!((p.applied(), p.accepted()), (0, 1));
    }

    #[test]
    fn split_delay_and_stall_deliver_the_message_intact() {
        let (p, rx) = tcp_proxy();
        let mut c = connect(&p);
        let msg: Vec<u8> = (b'a'..=b'z').cycle().take(64).collect();
        let upper = msg.to_ascii_uppercase();

        p.inject(Direction::ToUpstream, Fault::SplitBytes);
        let before = p.writes(Direction::ToUpstream);
        c.write_all(&msg).unwrap();
        assert_eq!(upstream_got(&rx, 64), msg);
        assert_eq!(
            p.writes(Direction::ToUpstream) - before,
            64,
            "a write per byte"
        );
        // The upstream answered each piece it read: all of it comes back, in order.
        assert_eq!(read_n(&mut c, 64), upper);

        p.inject(Direction::ToClient, Fault::Delay(Duration::from_millis(50)));
        c.write_all(&msg).unwrap();
        assert_eq!(upstream_got(&rx, 64), msg);
        assert_eq!(read_n(&mut c, 64), upper);

        p.inject(
            Direction::ToUpstream,
            Fault::Stall(Duration::from_millis(100)),
        );
        let before = p.writes(Direction::ToUpstream);
        c.write_all(&msg).unwrap();
        assert_eq!(upstream_got(&rx, 64), msg);
        assert_eq!(read_n(&mut c, 64), upper);
        assert_eq!(
            p.writes(Direction::ToUpstream) - before,
            2,
            "half, then the rest"
        );
        assert!(p.wait_applied(3, WAIT));
        assert_eq!(
            (p.pending(), p.accepted()),
            (0, 1),
            "one connection throughout"
        );
    }

    #[test]
    fn a_drop_mid_message_delivers_part_then_closes_both_cleanly() {
        let (p, rx) = tcp_proxy();
        let mut c = connect(&p);
        p.inject(
            Direction::ToUpstream,
            Fault::DropMidMessage { after_bytes: 3 },
        );
        c.write_all(b"0123456789").unwrap();
        assert_eq!(upstream_got(&rx, 3), b"012");
        // The upstream sees the end of the stream, not a reset.
        assert_eq!(rx.recv_timeout(WAIT).unwrap().unwrap(), b"");
        // The client gets the upstream's answer to those 3 bytes or not, then the end.
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty() || rest == b"012", "{rest:?}");
        // A drop never forwards a whole message, however short.
        let mut c = connect(&p);
        p.inject(
            Direction::ToUpstream,
            Fault::DropMidMessage { after_bytes: 99 },
        );
        c.write_all(b"xy").unwrap();
        assert_eq!(upstream_got(&rx, 1), b"x");
        assert_eq!(rx.recv_timeout(WAIT).unwrap().unwrap(), b"");
    }

    #[test]
    fn a_reset_resets_both_sides() {
        let (p, rx) = tcp_proxy();
        let mut c = connect(&p);
        c.write_all(b"a").unwrap();
        assert_eq!(upstream_got(&rx, 1), b"a");
        assert_eq!(read_n(&mut c, 1), b"A");
        p.inject(Direction::ToClient, Fault::Reset);
        c.write_all(b"b").unwrap();
        assert_eq!(upstream_got(&rx, 1), b"b");
        let e = rx.recv_timeout(WAIT).unwrap().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "upstream: {e}");
        let e = c.read(&mut [0u8; 8]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "client: {e}");
        assert_eq!(p.applied(), 1);
    }

    #[test]
    fn a_fault_after_some_writes_lets_them_through_first() {
        let (p, rx) = tcp_proxy();
        let mut c = connect(&p);
        p.inject_after(
            Direction::ToUpstream,
            2,
            Fault::DropMidMessage { after_bytes: 1 },
        );
        for (i, m) in [b"one", b"two"].iter().enumerate() {
            c.write_all(*m).unwrap();
            assert_eq!(upstream_got(&rx, 3), *m, "write {i} passes");
            assert_eq!(read_n(&mut c, 3), m.to_ascii_uppercase());
        }
        assert_eq!(p.applied(), 0);
        c.write_all(b"three").unwrap();
        assert_eq!(upstream_got(&rx, 1), b"t");
        assert_eq!(rx.recv_timeout(WAIT).unwrap().unwrap(), b"");
        assert_eq!(p.applied(), 1);
    }

    #[test]
    fn a_fault_queued_between_connections_hits_the_next_one() {
        let (p, rx) = tcp_proxy();
        p.inject(Direction::ToUpstream, Fault::Reset);
        let mut c = connect(&p);
        assert!(p.wait_accepted(1, WAIT));
        c.write_all(b"first").unwrap();
        let e = c.read(&mut [0u8; 8]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
        // The next connection is clean.
        let mut c = connect(&p);
        c.write_all(b"again").unwrap();
        let got = loop {
            let b = rx.recv_timeout(WAIT).unwrap();
            match b {
                Ok(b) if !b.is_empty() => break b,
                // The first connection's end, as the upstream saw it.
                _ => continue,
            }
        };
        assert_eq!(got, b"again");
        assert_eq!(read_n(&mut c, 5), b"AGAIN");
    }

    #[test]
    fn unix_to_unix_with_a_drop_and_the_socket_file_goes_with_the_proxy() {
        let d = tempfile::tempdir().unwrap();
        let (front, back) = (d.path().join("front.sock"), d.path().join("back.sock"));
        let up = UnixListener::bind(&back).unwrap();
        let server = std::thread::spawn(move || {
            let mut got = Vec::new();
            for _ in 0..2 {
                let (mut s, _) = up.accept().unwrap();
                let mut v = Vec::new();
                s.read_to_end(&mut v).unwrap();
                got.push(v);
            }
            got
        });
        let p = FaultProxy::start(&Endpoint::Unix(front.clone()), &Endpoint::Unix(back)).unwrap();
        assert_eq!(
            p.endpoint().to_string(),
            format!("unix:{}", front.display())
        );
        p.inject(
            Direction::ToUpstream,
            Fault::DropMidMessage { after_bytes: 2 },
        );
        let mut c = UnixStream::connect(&front).unwrap();
        c.write_all(b"abcdef").unwrap();
        c.set_read_timeout(Some(WAIT)).unwrap();
        assert_eq!(c.read(&mut [0u8; 4]).unwrap(), 0, "closed by the proxy");
        let mut c = UnixStream::connect(&front).unwrap();
        c.write_all(b"whole").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        assert_eq!(server.join().unwrap(), [b"ab".to_vec(), b"whole".to_vec()]);
        drop(p);
        assert!(!front.exists(), "the proxy's socket file is removed");
    }

    #[test]
    fn dropping_the_proxy_closes_its_connections_and_ends_its_threads() {
        let (p, _rx) = tcp_proxy();
        let mut c = connect(&p);
        // A long stall under way: the drop must not wait for it.
        p.inject(
            Direction::ToUpstream,
            Fault::Stall(Duration::from_secs(3600)),
        );
        c.write_all(b"abcd").unwrap();
        assert!(p.wait_applied(1, WAIT));
        // Returns only once every thread of the proxy has been joined.
        drop(p);
        // The client gets the answer to the half that got through before the stall, then
        // the end of the stream: the read does not hang.
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
        assert!(b"AB".starts_with(&rest), "{rest:?}");
    }
}
