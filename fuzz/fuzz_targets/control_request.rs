//! The control socket's request handling (issue #15) on arbitrary lines, against a service with
//! no cards and no readers: total, and every answer is a QMP-shaped object (`return` or
//! `error`).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use vccid::config::Config;
use vccid::service::Service;

fn service() -> &'static Arc<Service> {
    static SVC: OnceLock<Arc<Service>> = OnceLock::new();
    SVC.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vccid-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a state directory");
        Service::start(&Config::default(), dir, None).expect("an empty service starts")
    })
}

/// Commands whose effects reach outside the process (keys generated and written, listeners and
/// connections opened, files read): the fuzzer exercises their argument checks through the
/// others' shared code, not their effects.
const OUTSIDE: &[&str] = &["card-add", "reader-add", "card-enroll", "config-reload"];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if OUTSIDE.iter().any(|c| text.contains(c)) {
        return;
    }
    let answer = vccid::control::handle(&text, service(), "fuzz");
    assert!(answer.get("return").is_some() || answer.get("error").is_some());
});
