use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Whether a card is inserted, with a generation counter bumped on every change, so a consumer
/// (a transport) can wait for insertion and removal events without polling.
#[derive(Clone, Debug)]
pub struct Presence {
    inner: Arc<(Mutex<(bool, u64)>, Condvar)>,
}

impl Presence {
    /// A new state.
    pub fn new(present: bool) -> Self {
        Presence {
            inner: Arc::new((Mutex::new((present, 0)), Condvar::new())),
        }
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, (bool, u64)> {
        // A poisoned lock only means another thread panicked while holding a bool and a counter,
        // which cannot leave them inconsistent.
        self.inner.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Inserted now?
    pub fn is_present(&self) -> bool {
        self.lock().0
    }
    /// (present, generation).
    pub fn snapshot(&self) -> (bool, u64) {
        *self.lock()
    }
    /// Inserts (`true`) or removes (`false`) the card; returns whether that changed anything.
    pub fn set(&self, present: bool) -> bool {
        let mut g = self.lock();
        if g.0 == present {
            return false;
        }
        g.0 = present;
        g.1 += 1;
        self.inner.1.notify_all();
        true
    }
    /// Blocks until the generation differs from `seen` or `timeout` passes; returns the state.
    pub fn wait_change(&self, seen: u64, timeout: Duration) -> (bool, u64) {
        let g = self.lock();
        let (g, _) = self
            .inner
            .1
            .wait_timeout_while(g, timeout, |s| s.1 == seen)
            .unwrap_or_else(|e| e.into_inner());
        *g
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events() {
        let p = Presence::new(true);
        let (on, gen) = p.snapshot();
        assert!(on);
        let q = p.clone();
        let t = std::thread::spawn(move || q.wait_change(gen, Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(20));
        assert!(p.set(false));
        assert!(!p.set(false));
        assert_eq!(t.join().unwrap(), (false, gen + 1));
        assert_eq!(
            p.wait_change(gen + 1, Duration::from_millis(1)),
            (false, gen + 1)
        );
    }
}
