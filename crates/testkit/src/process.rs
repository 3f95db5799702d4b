//! Signals and deadlines for the processes and connections a test waits on.
//!
//! Children are signalled with kill(2) from Rust, never through the `kill` program: a minimal
//! Debian root has no procps, and a failed `kill` followed by a plain `wait()` hangs the test
//! command for ever. Every wait here has a deadline and fails with a message naming what it
//! waited for; a child still running at its deadline is killed and reaped, so no test leaves
//! one behind.

use crate::Result;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How often a wait polls.
const POLL: Duration = Duration::from_millis(20);

/// How long a child may take to be reaped after SIGKILL: SIGKILL cannot be caught, so only a
/// process stuck in the kernel (uninterruptible sleep) takes longer.
const REAP: Duration = Duration::from_secs(10);

/// The signals the tests send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGHUP.
    Hup,
    /// SIGINT: what tshark needs to close its capture file properly.
    Int,
    /// SIGTERM: a clean shutdown.
    Term,
    /// SIGKILL.
    Kill,
}

impl Signal {
    /// The signal named like the `kill` program's option: "TERM", "SIGTERM", "term", ...
    pub fn from_name(name: &str) -> Option<Signal> {
        let n = name.trim_start_matches('-').to_ascii_uppercase();
        match n.strip_prefix("SIG").unwrap_or(&n) {
            "HUP" => Some(Signal::Hup),
            "INT" => Some(Signal::Int),
            "TERM" => Some(Signal::Term),
            "KILL" => Some(Signal::Kill),
            _ => None,
        }
    }

    fn number(self) -> libc::c_int {
        match self {
            Signal::Hup => libc::SIGHUP,
            Signal::Int => libc::SIGINT,
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        }
    }
}

/// Sends `sig` to `child`. A child that has already exited gets nothing (not an error).
pub fn signal(child: &mut Child, sig: Signal) -> Result<()> {
    // Only a child not yet reaped may be signalled by pid: once `try_wait` or `wait` has
    // reaped it, the pid is free for the kernel to give to another process. Until then an
    // exited child stays a zombie holding its pid, so the check below cannot race.
    match child.try_wait() {
        Ok(Some(_)) => return Ok(()),
        Ok(None) => {}
        Err(e) => return Err(format!("pid {}: {e}", child.id())),
    }
    let pid = libc::pid_t::try_from(child.id())
        .map_err(|_| format!("pid {} does not fit pid_t", child.id()))?;
    // SAFETY: kill(2) takes two integers and touches no memory of ours; `pid` is our own
    // child, not yet reaped (above).
    let r = unsafe { libc::kill(pid, sig.number()) };
    if r == 0 {
        Ok(())
    } else {
        Err(format!(
            "kill({pid}, {sig:?}): {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// Polls until `child` exits or `timeout` passes: `Ok(None)` at the deadline.
fn poll_exit(child: &mut Child, timeout: Duration, what: &str) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Ok(Some(st)),
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for {what} (pid {}): {e}", child.id())),
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(POLL.min(deadline - now));
    }
}

/// SIGKILL, then reaps `child` (at most [`REAP`]); returns its exit status.
pub fn kill(child: &mut Child, what: &str) -> Result<ExitStatus> {
    signal(child, Signal::Kill).map_err(|e| format!("killing {what}: {e}"))?;
    poll_exit(child, REAP, what)?.ok_or_else(|| {
        format!(
            "{what} (pid {}) was not reaped {REAP:?} after SIGKILL",
            child.id()
        )
    })
}

/// Waits at most `timeout` for `child` to exit and returns its status. At the deadline the
/// child is killed and reaped, and the error names `what` was awaited. Like `Child::wait`,
/// closes the child's stdin pipe first, so a child reading to end of input can finish.
pub fn wait_child(child: &mut Child, timeout: Duration, what: &str) -> Result<ExitStatus> {
    drop(child.stdin.take());
    if let Some(st) = poll_exit(child, timeout, what)? {
        return Ok(st);
    }
    let killed = match kill(child, what) {
        Ok(_) => "killed it".to_string(),
        Err(e) => format!("and could not kill it: {e}"),
    };
    Err(format!(
        "timed out after {timeout:?} waiting for {what} (pid {}) to exit; {killed}",
        child.id()
    ))
}

/// SIGTERM, then SIGKILL if `child` has not exited after `grace`; returns its exit status
/// (a child that needed SIGKILL shows it in the status).
pub fn terminate(child: &mut Child, grace: Duration, what: &str) -> Result<ExitStatus> {
    signal(child, Signal::Term).map_err(|e| format!("stopping {what}: {e}"))?;
    match poll_exit(child, grace, what)? {
        Some(st) => Ok(st),
        None => kill(child, what),
    }
}

/// Reads a pipe to its end on a thread of its own; the receiver gets the bytes.
fn drain(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        let _ = tx.send(buf);
    });
    rx
}

/// Like `Child::wait_with_output`, with a deadline: waits at most `timeout` for `child` to
/// exit (killing it at the deadline) and for its piped stdout and stderr to end.
pub fn wait_output(mut child: Child, timeout: Duration, what: &str) -> Result<Output> {
    let deadline = Instant::now() + timeout;
    // Both pipes are read while the child runs: one that fills its pipe blocks until read.
    let (out, err) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let status = wait_child(&mut child, timeout, what)?;
    // A grandchild that inherited a pipe keeps it open after the child exits; give the
    // readers what is left of the deadline, and a moment at least.
    let collect = |rx: mpsc::Receiver<Vec<u8>>, name: &str| {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(2));
        rx.recv_timeout(left).map_err(|_| {
            format!("{what} exited ({status}) but its {name} stayed open (a process it started holds it)")
        })
    };
    Ok(Output {
        status,
        stdout: collect(out, "stdout")?,
        stderr: collect(err, "stderr")?,
    })
}

/// Like `Command::output`, with a deadline: runs `cmd` with standard input from /dev/null and
/// its output piped, and kills it if it has not finished after `timeout`.
pub fn output(cmd: &mut Command, timeout: Duration, what: &str) -> Result<Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {what} ({cmd:?}): {e}"))?;
    wait_output(child, timeout, what)
}

/// `Command::output` with a deadline, as a method: `cmd.output_within(TOOL_TIMEOUT)` where a
/// test had `cmd.output()`.
pub trait CommandExt {
    /// [`output`] named after the command line.
    fn output_within(&mut self, timeout: Duration) -> Result<Output>;
}

impl CommandExt for Command {
    fn output_within(&mut self, timeout: Duration) -> Result<Output> {
        let what = std::iter::once(self.get_program())
            .chain(self.get_args())
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        output(self, timeout, &what)
    }
}

/// Accepts one connection on `listener`, waiting at most `timeout` for `what` to connect.
/// The listener is left blocking, as a fresh one is; the connection is blocking too.
pub fn accept_within(
    listener: &TcpListener,
    timeout: Duration,
    what: &str,
) -> Result<(TcpStream, SocketAddr)> {
    let addr = listener
        .local_addr()
        .map_err(|e| format!("listener for {what}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("listener on {addr}: {e}"))?;
    let deadline = Instant::now() + timeout;
    let got = loop {
        match listener.accept() {
            Ok(c) => break Ok(c),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    break Err(format!(
                        "timed out after {timeout:?} waiting for {what} to connect to {addr}"
                    ));
                }
                std::thread::sleep(POLL);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(format!("accept on {addr} ({what}): {e}")),
        }
    };
    let blocking = listener
        .set_nonblocking(false)
        .map_err(|e| format!("listener on {addr}: {e}"));
    let (stream, peer) = got?;
    blocking?;
    // Linux's accept4 does not pass O_NONBLOCK on, but other platforms' accept does.
    stream
        .set_nonblocking(false)
        .map_err(|e| format!("connection from {peer}: {e}"))?;
    Ok((stream, peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleep_30() -> Child {
        Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .expect("sleep starts")
    }

    #[test]
    fn a_child_past_its_deadline_is_an_error_naming_it_and_is_killed() {
        let mut c = sleep_30();
        let e = wait_child(&mut c, Duration::from_millis(200), "the sleeper")
            .expect_err("sleep 30 does not exit within 200 ms");
        assert!(e.contains("waiting for the sleeper"), "{e}");
        assert!(e.contains("killed it"), "{e}");
        // Killed by SIGKILL and reaped: try_wait has the status at once.
        let st = c
            .try_wait()
            .expect("try_wait")
            .expect("the child was reaped");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(libc::SIGKILL), "{st}");
    }

    #[test]
    fn wait_child_returns_the_status_of_a_child_that_exits() {
        let mut c = Command::new("sh")
            .args(["-c", "exit 3"])
            .stdin(Stdio::null())
            .spawn()
            .expect("sh starts");
        let st = wait_child(&mut c, Duration::from_secs(30), "sh").expect("sh exits");
        assert_eq!(st.code(), Some(3));
    }

    #[test]
    fn terminate_and_signal_reach_the_child() {
        use std::os::unix::process::ExitStatusExt;
        let mut c = sleep_30();
        let st = terminate(&mut c, Duration::from_secs(10), "the sleeper").expect("it stops");
        assert_eq!(st.signal(), Some(libc::SIGTERM), "{st}");
        // An exited, reaped child is not signalled again (its pid may be someone else's).
        signal(&mut c, Signal::Kill).expect("no-op on a reaped child");
        let mut c = sleep_30();
        signal(&mut c, Signal::Int).expect("SIGINT sent");
        let st = wait_child(&mut c, Duration::from_secs(10), "the sleeper").expect("exits");
        assert_eq!(st.signal(), Some(libc::SIGINT), "{st}");
    }

    #[test]
    fn output_past_its_deadline_is_an_error_and_within_it_the_output() {
        let e = output(
            Command::new("sleep").arg("30"),
            Duration::from_millis(200),
            "sleep 30",
        )
        .expect_err("sleep 30 does not finish within 200 ms");
        assert!(e.contains("waiting for sleep 30"), "{e}");
        let o = output(
            Command::new("sh").args(["-c", "echo out; echo err >&2"]),
            Duration::from_secs(30),
            "sh",
        )
        .expect("sh runs");
        assert_eq!(
            (&o.stdout[..], &o.stderr[..]),
            (&b"out\n"[..], &b"err\n"[..])
        );
        let e = Command::new("sleep")
            .arg("30")
            .output_within(Duration::from_millis(200))
            .expect_err("sleep 30 does not finish within 200 ms");
        assert!(e.contains("waiting for sleep 30 (pid"), "{e}");
    }

    #[test]
    fn accept_without_a_peer_is_an_error_naming_it() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let e =
            accept_within(&l, Duration::from_millis(200), "the peer").expect_err("nobody connects");
        assert!(e.contains("waiting for the peer to connect"), "{e}");
        let addr = l.local_addr().expect("addr");
        let _c = TcpStream::connect(addr).expect("connect");
        accept_within(&l, Duration::from_secs(10), "the peer").expect("accepted");
    }

    #[test]
    fn signal_names_parse_like_the_kill_programs() {
        for (n, s) in [
            ("TERM", Signal::Term),
            ("-KILL", Signal::Kill),
            ("SIGINT", Signal::Int),
            ("hup", Signal::Hup),
        ] {
            assert_eq!(Signal::from_name(n), Some(s), "{n}");
        }
        assert_eq!(Signal::from_name("USR9"), None);
    }
}
