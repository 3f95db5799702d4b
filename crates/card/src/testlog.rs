//! The log lines a piece of code writes, for tests that check what is logged: a minimal
//! subscriber writing "LEVEL target: message field=value" lines (tracing-subscriber is not a
//! dependency of this crate).
//!
//! One global subscriber, writing to the capturing thread's buffer, rather than a scoped one
//! per test (`with_default`): tracing caches each callsite's interest globally, and a callsite
//! first hit on another thread while no scoped subscriber lived could be cached as "never",
//! so a parallel test's lines were sometimes lost (seen once in eight runs on a busy machine).

use std::cell::RefCell;
use std::fmt::Write as _;
use std::sync::OnceLock;

thread_local! {
    /// This thread's lines while it captures.
    static LINES: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's log lines captured, and returns them.
pub fn capture(f: impl FnOnce()) -> String {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        tracing::subscriber::set_global_default(Lines).expect("no other global subscriber");
    });
    // Callsites whose interest was computed while the subscriber was being installed.
    tracing::callsite::rebuild_interest_cache();
    LINES.with(|l| *l.borrow_mut() = Some(String::new()));
    f();
    LINES.with(|l| l.borrow_mut().take()).unwrap_or_default()
}

struct Lines;
struct Msg(String);
impl tracing::field::Visit for Msg {
    fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={v:?}", f.name());
    }
}
impl tracing::Subscriber for Lines {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, e: &tracing::Event<'_>) {
        LINES.with(|l| {
            if let Some(lines) = l.borrow_mut().as_mut() {
                let mut m = Msg(String::new());
                e.record(&mut m);
                let _ = writeln!(
                    lines,
                    "{} {}:{}",
                    e.metadata().level(),
                    e.metadata().target(),
                    m.0
                );
            }
        });
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
