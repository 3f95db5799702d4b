//! The log lines a piece of code writes, for tests that check what is logged: a minimal
//! subscriber writing "LEVEL target: message field=value" lines (tracing-subscriber is not a
//! dependency of this crate).

use std::io::Write;
use std::sync::{Arc, Mutex};

/// Runs `f` with this thread's log lines captured, and returns them.
pub fn capture(f: impl FnOnce()) -> String {
    let sink = Sink::default();
    tracing::subscriber::with_default(Lines(Mutex::new(sink.clone())), f);
    let bytes = sink.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);
impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Lines(Mutex<Sink>);
struct Msg(String);
impl tracing::field::Visit for Msg {
    fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
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
        let mut m = Msg(String::new());
        e.record(&mut m);
        let mut w = self.0.lock().unwrap();
        let _ = writeln!(
            w,
            "{} {}:{}",
            e.metadata().level(),
            e.metadata().target(),
            m.0
        );
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
