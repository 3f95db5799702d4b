//! THE connect-with-retry loop, for the clients that come back when their peer restarts:
//! `vccid --usbredir-connect` (QEMU's chardev server), the vpcd client (pcscd's vpcd) and
//! vscclient (a VSCard host). Attempts are spaced by a [`Backoff`] and a [`Stop`] ends the
//! wait at once, without polling.

use std::fmt::Display;
use std::ops::ControlFlow;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Reconnect delays: `first`, doubling after each wait up to `cap`; [`Backoff::reset`] when
/// a connection proved good starts over.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    /// Delays from `first` doubling to `cap` (a `cap` below `first` is taken as `first`).
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        Backoff {
            first,
            cap: cap.max(first),
            next: first,
        }
    }

    /// The delay to wait now; the one after is twice as long, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.cap);
        d
    }

    /// Back to the first delay.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// Waits the next delay unless `stop` comes first; `false` when stopped.
    pub fn wait(&mut self, stop: &Stop) -> bool {
        stop.sleep(self.next_delay())
    }
}

impl Default for Backoff {
    /// 100 ms doubling to 5 s.
    fn default() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

/// A stop signal shared by a client's threads: set once, seen at once by whoever waits.
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<(Mutex<bool>, Condvar)>);

impl Stop {
    /// Not stopped yet.
    pub fn new() -> Stop {
        Stop::default()
    }

    /// Stops: every [`Stop::sleep`] returns now.
    pub fn stop(&self) {
        let (m, c) = &*self.0;
        *m.lock().unwrap_or_else(|e| e.into_inner()) = true;
        c.notify_all();
    }

    /// Whether [`Stop::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        *self.0 .0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps `d` unless stopped first; `false` when stopped.
    pub fn sleep(&self, d: Duration) -> bool {
        let (m, c) = &*self.0;
        let g = m.lock().unwrap_or_else(|e| e.into_inner());
        let (g, _) = c
            .wait_timeout_while(g, d, |stopped| !*stopped)
            .unwrap_or_else(|e| e.into_inner());
        !*g
    }
}

/// Why [`connect`] returned without a connection.
#[derive(Debug)]
pub enum NotConnected<E> {
    /// The stop signal came.
    Stopped,
    /// The caller gave up on this failure (a refused certificate, a time limit).
    GaveUp(E),
}

/// Calls `attempt` until it connects, the caller gives up, or `stop` is set; between
/// failures it waits the backoff's next delay. Each failure goes to `failed` with `fresh`
/// true when its text differs from the previous failure's in this call (so a caller logs a
/// peer that is not there once, not every second); `failed` breaks to give up. The caller
/// resets the backoff when a connection proved good (connected, or the peer answered).
pub fn connect<T, E: Display>(
    backoff: &mut Backoff,
    stop: &Stop,
    mut attempt: impl FnMut() -> Result<T, E>,
    mut failed: impl FnMut(&E, bool) -> ControlFlow<()>,
) -> Result<T, NotConnected<E>> {
    let mut last: Option<String> = None;
    loop {
        if stop.is_stopped() {
            return Err(NotConnected::Stopped);
        }
        let e = match attempt() {
            Ok(t) => return Ok(t),
            Err(e) => e,
        };
        if stop.is_stopped() {
            return Err(NotConnected::Stopped);
        }
        let text = e.to_string();
        let fresh = last.as_deref() != Some(text.as_str());
        if failed(&e, fresh).is_break() {
            return Err(NotConnected::GaveUp(e));
        }
        last = Some(text);
        if !backoff.wait(stop) {
            return Err(NotConnected::Stopped);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(MS * 100, MS * 1000);
        let got: Vec<_> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(), MS * 100);
        let mut low = Backoff::new(MS * 50, MS * 10);
        assert_eq!((low.next_delay(), low.next_delay()), (MS * 50, MS * 50));
        assert_eq!(Backoff::default().next_delay(), MS * 100);
    }

    #[test]
    fn stop_ends_a_sleep_at_once() {
        let stop = Stop::new();
        assert!(stop.sleep(MS));
        let s = stop.clone();
        let t = Instant::now();
        let h = std::thread::spawn(move || s.sleep(Duration::from_secs(30)));
        std::thread::sleep(MS * 50);
        stop.stop();
        assert!(!h.join().unwrap());
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(stop.is_stopped());
        assert!(
            !stop.sleep(Duration::from_secs(30)),
            "stopped stays stopped"
        );
    }

    #[test]
    fn connect_retries_with_backoff_and_reports_fresh_failures() {
        let mut b = Backoff::new(MS, MS * 4);
        let mut tries = 0;
        let mut reports = Vec::new();
        let got = connect(
            &mut b,
            &Stop::new(),
            || {
                tries += 1;
                match tries {
                    1..=3 => Err("refused"),
                    4 => Err("unreachable"),
                    _ => Ok(tries),
                }
            },
            |e, fresh| {
                reports.push((e.to_string(), fresh));
                ControlFlow::Continue(())
            },
        );
        assert_eq!(got.unwrap(), 5);
        let fresh: Vec<_> = reports.iter().map(|r| r.1).collect();
        assert_eq!(fresh, [true, false, false, true]);
        // Four waits: 1, 2, 4, 4 ms; the next is still at the cap until reset.
        assert_eq!(b.next_delay(), MS * 4);
    }

    #[test]
    fn connect_gives_up_or_stops() {
        let mut b = Backoff::new(MS, MS);
        let r: Result<(), _> = connect(
            &mut b,
            &Stop::new(),
            || Err("bad certificate"),
            |_, _| ControlFlow::Break(()),
        );
        assert!(matches!(r, Err(NotConnected::GaveUp("bad certificate"))));
        let stop = Stop::new();
        let s = stop.clone();
        let r: Result<(), NotConnected<&str>> = connect(
            &mut Backoff::new(Duration::from_secs(60), Duration::from_secs(60)),
            &stop,
            || {
                s.stop();
                Err("refused")
            },
            |_, _| ControlFlow::Continue(()),
        );
        assert!(matches!(r, Err(NotConnected::Stopped)));
    }
}
