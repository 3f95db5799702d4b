//! Commands on standard input, one per line, as libcacard's vscclient takes them:
//! `remove` takes the card out of the reader, `insert` puts it back, `status` prints which.
//! End of input stops reading (and nothing else: vccid keeps serving; vscclient spins there).

use card::Presence;
use std::io::{BufRead, Write};

/// What one line asks for; `None` for an empty line.
fn answer(line: &str, presence: &Presence) -> Option<String> {
    Some(match line.trim() {
        "" => return None,
        "remove" => {
            if presence.set(false) {
                "card removed".into()
            } else {
                "no card to remove".into()
            }
        }
        "insert" => {
            if presence.set(true) {
                "card inserted".into()
            } else {
                "card already inserted".into()
            }
        }
        "status" => if presence.is_present() {
            "card present"
        } else {
            "no card"
        }
        .into(),
        other => format!("unknown command {other:?}; commands: insert, remove, status"),
    })
}

/// Reads commands on a thread of its own.
pub fn spawn(presence: Presence) {
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if let Some(reply) = answer(&line, &presence) {
                    // The answer goes to whoever typed the command (stdout); the log records
                    // the change itself.
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{reply}");
                    let _ = out.flush();
                    tracing::debug!("stdin: {reply}");
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_drive_presence() {
        let p = Presence::new(true);
        assert_eq!(answer("remove", &p).as_deref(), Some("card removed"));
        assert!(!p.is_present());
        assert_eq!(answer(" remove ", &p).as_deref(), Some("no card to remove"));
        assert_eq!(answer("status", &p).as_deref(), Some("no card"));
        assert_eq!(answer("insert", &p).as_deref(), Some("card inserted"));
        assert_eq!(
            answer("insert", &p).as_deref(),
            Some("card already inserted")
        );
        assert_eq!(answer("", &p), None);
        assert!(answer("eject", &p).unwrap().contains("unknown command"));
    }
}
