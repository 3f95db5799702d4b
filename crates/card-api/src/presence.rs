use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Called with the new state after every change.
type Observer = Box<dyn Fn(bool) + Send + Sync>;

#[derive(Default)]
struct Inner {
    state: Mutex<(bool, u64)>,
    changed: Condvar,
    observers: Mutex<Vec<(u64, Observer)>>,
    next_observer: AtomicU64,
}

/// Whether a card is inserted, with a generation counter bumped on every change, so a consumer
/// (a transport) can wait for insertion and removal events without polling; and observers, so
/// a holder of the card (a slot) can mirror its changes without a thread.
#[derive(Clone)]
pub struct Presence {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (present, generation) = self.snapshot();
        f.debug_struct("Presence")
            .field("present", &present)
            .field("generation", &generation)
            .finish()
    }
}

impl Presence {
    /// A new state.
    pub fn new(present: bool) -> Self {
        let p = Presence {
            inner: Arc::default(),
        };
        p.lock().0 = present;
        p
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, (bool, u64)> {
        // A poisoned lock only means another thread panicked while holding a bool and a counter,
        // which cannot leave them inconsistent.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn observers(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Observer)>> {
        self.inner
            .observers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
    /// Calls `f` with the new state after every change, until [`unobserve`](Self::unobserve)
    /// with the id returned. `f` runs on the thread that made the change and must not observe
    /// or unobserve this same presence.
    pub fn observe(&self, f: impl Fn(bool) + Send + Sync + 'static) -> u64 {
        let id = self.inner.next_observer.fetch_add(1, Ordering::Relaxed);
        self.observers().push((id, Box::new(f)));
        id
    }
    /// Stops calling the observer `id`.
    pub fn unobserve(&self, id: u64) {
        self.observers().retain(|(i, _)| *i != id);
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
        {
            let mut g = self.lock();
            if g.0 == present {
                return false;
            }
            g.0 = present;
            g.1 += 1;
            self.inner.changed.notify_all();
        }
        for (_, f) in self.observers().iter() {
            f(present);
        }
        true
    }
    /// Blocks until the generation differs from `seen` or `timeout` passes; returns the state.
    pub fn wait_change(&self, seen: u64, timeout: Duration) -> (bool, u64) {
        let g = self.lock();
        let (g, _) = self
            .inner
            .changed
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

    #[test]
    fn observers_follow_changes_until_unobserved() {
        let p = Presence::new(false);
        let mirror = Presence::new(false);
        let m = mirror.clone();
        let id = p.observe(move |on| {
            m.set(on);
        });
        p.set(true);
        assert!(mirror.is_present());
        p.set(true);
        p.set(false);
        assert_eq!(mirror.snapshot(), (false, 2));
        p.unobserve(id);
        p.set(true);
        assert!(!mirror.is_present());
    }
}
