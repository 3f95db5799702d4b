//! Crash-safe file replacement (issue #17): every file vccid keeps (a PIV card's state, a
//! generated card's enrolled identities and journal, the service's run-time cards, a TLS
//! directory) is written here, so that a SIGKILL or a power cut at any moment leaves either
//! the old file or the new one, whole.
//!
//! The new bytes go to a temporary file beside the target, which is fsynced, renamed over
//! the target (rename(2) replaces atomically) and then the directory is fsynced, since the
//! rename is an update of the directory that fsync on the file does not cover (fsync(2):
//! "Calling fsync() does not necessarily ensure that the entry in the directory containing
//! the file has also reached disk. For that an explicit fsync() on a file descriptor for the
//! directory is also needed").
//!
//! A process killed between creating its temporary file and the rename leaves that file
//! behind. Its name says whose it was (`TARGET.tmpPID-N`, or `STEM.tmpPID` as earlier vccid
//! named them), and [`remove_stale_tmp`], called where a target is loaded, removes the ones no live
//! write owns.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Numbers this process's temporary files, so that two threads writing one target (the
/// service's run-time file from two control connections) never share one.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// The temporary files this process is writing now: a file of our own pid not in this set
/// was left by an earlier process that had the same pid (a container's pid namespace gives
/// a restarted service the same one).
static IN_FLIGHT: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

fn in_flight() -> MutexGuard<'static, Option<HashSet<PathBuf>>> {
    IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner())
}

/// The directory a file is in (`.` for a bare file name).
fn directory(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// fsync on a directory, so that the entries made in it, renamed into it or removed from it
/// are on disk.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Replaces `path` with `bytes` (mode `mode` for a new file) so that a crash at any moment
/// leaves the old content or the new, never a mix: a temporary file in the same directory,
/// fsynced, renamed over `path`, then the directory fsynced. A failed write removes its
/// temporary file.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{}: not a file name", path.display())))?;
    let mut tmp_name = name.to_owned();
    tmp_name.push(format!(
        ".tmp{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = path.with_file_name(tmp_name);
    in_flight()
        .get_or_insert_with(HashSet::new)
        .insert(tmp.clone());
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    if let Some(set) = in_flight().as_mut() {
        set.remove(&tmp);
    }
    written?;
    sync_dir(directory(path))
}

/// Whether the process that named a temporary file `pid` is gone (or is an earlier process
/// with our pid). Without /proc nothing can be told: none is.
fn owner_gone(pid: u32, tmp: &Path) -> bool {
    if pid == std::process::id() {
        return !in_flight().as_ref().is_some_and(|s| s.contains(tmp));
    }
    Path::new("/proc/self").exists() && !Path::new("/proc").join(pid.to_string()).exists()
}

/// The pid in a temporary file's name for target `name` (`NAME.tmpPID-N`) or, as vccid
/// named them before, for its stem (`STEM.tmpPID`, the extension replaced).
fn tmp_pid(tmp: &str, name: &str, stem: Option<&str>) -> Option<u32> {
    if let Some(rest) = tmp.strip_prefix(name).and_then(|r| r.strip_prefix(".tmp")) {
        let (pid, n) = rest.split_once('-')?;
        if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
            return pid.parse().ok();
        }
        return None;
    }
    let rest = tmp.strip_prefix(stem?)?.strip_prefix(".tmp")?;
    if rest.bytes().all(|b| b.is_ascii_digit()) {
        return rest.parse().ok();
    }
    None
}

/// Removes the temporary files [`write_atomic`] left beside `path` in processes that died
/// before their rename (their content is a write that never happened). Those of live
/// processes, or of writes under way in this one, stay. Returns how many went.
pub fn remove_stale_tmp(path: &Path) -> usize {
    let (Some(name), Ok(entries)) = (
        path.file_name().and_then(|n| n.to_str()),
        std::fs::read_dir(directory(path)),
    ) else {
        return 0;
    };
    // Only a stem that differs from the name can be the old form's (`cert1.crt` of
    // `cert1.crt.pem`); a name without an extension had `NAME.tmpPID`.
    let stem = path.file_stem().and_then(|s| s.to_str());
    let mut removed = 0;
    for entry in entries.flatten() {
        let tmp = entry.path();
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|t| tmp_pid(t, name, stem))
        else {
            continue;
        };
        if owner_gone(pid, &tmp) && std::fs::remove_file(&tmp).is_ok() {
            tracing::info!(file = %tmp.display(), "removed a temporary file a crash left");
            removed += 1;
        }
    }
    if removed > 0 {
        let _ = sync_dir(directory(path));
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A pid no process has: past the kernel's pid_max (at most 2^22).
    const DEAD: u32 = 4_194_305;

    #[test]
    fn a_write_replaces_the_file_whole_and_leaves_nothing_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o644).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        // rename keeps the new file's mode: each write sets it.
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(names(dir.path()), ["state.json"]);
    }

    #[test]
    fn a_failed_write_removes_its_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a non-empty directory: the rename fails after the data is written.
        let p = dir.path().join("taken");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("x"), b"x").unwrap();
        assert!(write_atomic(&p, b"data", 0o600).is_err());
        assert_eq!(names(dir.path()), ["taken"]);
    }

    #[test]
    fn concurrent_writes_of_one_file_each_land_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("runtime.toml");
        let threads: Vec<_> = (0..8u8)
            .map(|i| {
                let p = p.clone();
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        write_atomic(&p, &[i; 4096], 0o600).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let got = std::fs::read(&p).unwrap();
        assert_eq!(got.len(), 4096);
        assert!(got.iter().all(|b| *b == got[0]), "a mix of two writes");
        assert_eq!(names(dir.path()), ["runtime.toml"]);
    }

    #[test]
    fn leftovers_of_dead_writers_go_and_others_stay() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let p = d.join("piv-state.json");
        write_atomic(&p, b"{}", 0o600).unwrap();
        let me = std::process::id();
        let live = std::os::unix::process::parent_id();
        for name in [
            // A killed writer's, in this form and in the earlier one (extension replaced).
            format!("piv-state.json.tmp{DEAD}-3"),
            format!("piv-state.tmp{DEAD}"),
            // An earlier process with our pid (none of our writes is under way).
            format!("piv-state.json.tmp{me}-0"),
            // A live process's write under way.
            format!("piv-state.json.tmp{live}-7"),
            // Another target's, and names that only look alike.
            format!("other.json.tmp{DEAD}-1"),
            format!("piv-state.json.tmp{DEAD}-"),
            "piv-state.json.tmpx-1".to_string(),
            "piv-state.json.tmp".to_string(),
        ] {
            std::fs::write(d.join(name), b"half").unwrap();
        }
        assert_eq!(remove_stale_tmp(&p), 3);
        let mut kept = vec![
            format!("other.json.tmp{DEAD}-1"),
            "piv-state.json".into(),
            "piv-state.json.tmp".into(),
            format!("piv-state.json.tmp{live}-7"),
            format!("piv-state.json.tmp{DEAD}-"),
            "piv-state.json.tmpx-1".into(),
        ];
        kept.sort();
        assert_eq!(names(d), kept);
        assert_eq!(std::fs::read(&p).unwrap(), b"{}");
        // A target in the current directory, and one whose directory is gone: nothing to do.
        assert_eq!(remove_stale_tmp(Path::new("no-such-vccid-file")), 0);
        assert_eq!(remove_stale_tmp(&d.join("gone/x.json")), 0);
    }

    #[test]
    fn a_write_under_way_in_this_process_is_not_a_leftover() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        let tmp = dir
            .path()
            .join(format!("a.json.tmp{}-999999", std::process::id()));
        std::fs::write(&tmp, b"half").unwrap();
        in_flight()
            .get_or_insert_with(HashSet::new)
            .insert(tmp.clone());
        assert_eq!(remove_stale_tmp(&p), 0);
        in_flight().as_mut().unwrap().remove(&tmp);
        assert_eq!(remove_stale_tmp(&p), 1);
    }
}
