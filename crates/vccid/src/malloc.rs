//! How glibc's malloc is set for vccid.
//!
//! glibc gives each new thread a heap of its own, up to 8 per core (mallopt(3), M_ARENA_MAX),
//! and each thread a cache of freed small chunks (the tcache, up to 7 per size). `vccid serve`
//! runs a few threads per reader (259 for 64 readers), so a 2-core machine gets 16 heaps and
//! 259 caches, each holding on to memory of its own. The soak (scripts/soak.sh, issue #17)
//! measured what that costs: the live heap stayed at 6.5 MiB from the 20th second on
//! (heaptrack), but RSS grew 12.8 % from the third minute to the twelfth (25.8 to 29.2 MiB)
//! and was still rising. With two heaps RSS grew 6.0 % over ten minutes; with two heaps and no
//! thread caches 1.5 %, 14 % lower than with two heaps alone, at the same latency (p50 52 µs,
//! p99 3.9 ms on a loaded CPU): a card's work is short and seldom meets another's in malloc.
//!
//! The thread caches can only be set before the program starts (GLIBC_TUNABLES, tunables(7)):
//! so [`tune`] starts vccid again, in place, with them set.

/// What vccid runs with, unless `GLIBC_TUNABLES` already sets any malloc tunable: two heaps
/// (the main one and one for the threads), no thread caches.
pub const TUNABLES: &str = "glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0";

/// Set (to [`TUNABLES`]) once [`tune`] has run the program again, so that it never does so
/// twice (glibc drops GLIBC_TUNABLES for set-user-ID programs, which would otherwise loop); set
/// to anything by a user, it turns [`tune`] off.
pub const TUNED: &str = "VCCID_MALLOC_TUNED";

/// Whether this process is the one [`tune`] started, with [`TUNABLES`]. (The environment's
/// GLIBC_TUNABLES cannot tell: glibc cuts it at the first `:` when it reads it.)
pub fn tuned() -> bool {
    std::env::var(TUNED).is_ok_and(|v| v == TUNABLES)
}

/// Runs this program again in place (same PID, arguments and environment, plus
/// [`TUNABLES`] in `GLIBC_TUNABLES`) unless the environment sets malloc tunables already.
/// Call it first thing in `main`, before any thread starts. Returns when nothing was to be
/// done or the exec failed (then glibc's defaults stay).
pub fn tune() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) || std::env::var_os(TUNED).is_some() {
        return;
    }
    let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if current.contains("glibc.malloc.") || std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let value = match current.as_str() {
        "" => TUNABLES.to_string(),
        other => format!("{other}:{TUNABLES}"),
    };
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let mut cmd = std::process::Command::new("/proc/self/exe");
    if let Some(arg0) = args.next() {
        cmd.arg0(arg0);
    }
    // exec(2) returns only on failure, e.g. the binary replaced by an upgrade.
    let _ = cmd
        .args(args)
        .env("GLIBC_TUNABLES", value)
        .env(TUNED, TUNABLES)
        .exec();
}

/// The heaps malloc made besides the main one (which grows with brk), as `/proc/PID/maps`
/// shows them: glibc maps each thread heap as a 64 MiB reservation (HEAP_MAX_SIZE on 64-bit,
/// malloc/arena.c), aligned to its size, whose used part is readable and writable and the
/// rest not accessible. Thread stacks and other mappings are not aligned and sized so.
pub fn thread_heaps(pid: u32) -> std::io::Result<usize> {
    const HEAP: u64 = 64 << 20;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let regions: Vec<(u64, u64, bool)> = maps
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (a, b) = f.next()?.split_once('-')?;
            let perms = f.next()?;
            // Anonymous: no path after offset, device and inode.
            let anonymous = l.split_whitespace().nth(5).is_none();
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
                anonymous && perms.starts_with("rw"),
            ))
        })
        .collect();
    let heaps = regions
        .iter()
        .enumerate()
        .filter(|(i, (start, end, rw))| {
            if !*rw || start % HEAP != 0 {
                return false;
            }
            // Used part and reserve together make one aligned 64 MiB heap; a heap in full use
            // has no reserve left.
            *end - *start == HEAP
                || regions
                    .get(i + 1)
                    .is_some_and(|(s, e, _)| *s == *end && *e == *start + HEAP)
        })
        .count();
    Ok(heaps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Thread heaps in a fresh process (this test binary, running only [`child`]) whose 16
    /// threads each allocate while all are alive: glibc gives a thread its own heap at its
    /// first allocation while the limit allows (malloc/arena.c, arena_get2), so the count
    /// does not depend on timing.
    fn heaps_in_child(tuned: bool) -> usize {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "malloc::tests::child",
            "--ignored",
            "--nocapture",
        ])
        .args(["--test-threads", "1"])
        .env_remove("MALLOC_ARENA_MAX")
        .env_remove("GLIBC_TUNABLES");
        if tuned {
            // As tune() starts vccid again.
            cmd.env("GLIBC_TUNABLES", TUNABLES);
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text.lines()
            .find_map(|l| l.split_once("thread heaps: "))
            .and_then(|(_, n)| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no count from the child: {text}"))
    }

    #[test]
    fn with_the_tunables_all_threads_share_one_heap() {
        let free = heaps_in_child(false);
        // glibc's own limit is 8 heaps per core: the count sees them, so it can fail.
        assert!(
            free >= 2,
            "{free} thread heaps without tunables: the count sees none"
        );
        let tuned = heaps_in_child(true);
        assert_eq!(
            tuned, 1,
            "{tuned} thread heaps with {TUNABLES} ({free} without)"
        );
    }

    /// Run by [`heaps_in_child`] in a process of its own, never by the test run itself.
    #[test]
    #[ignore = "run in a fresh process by with_the_tunables_all_threads_share_one_heap"]
    fn child() {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(17));
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let v: Vec<Vec<u8>> = (0..200).map(|n| vec![i as u8; 64 + n]).collect();
                    barrier.wait();
                    barrier.wait();
                    v.len()
                })
            })
            .collect();
        barrier.wait();
        println!(
            "thread heaps: {}",
            thread_heaps(std::process::id()).unwrap()
        );
        barrier.wait();
        for t in threads {
            t.join().unwrap();
        }
    }
}
