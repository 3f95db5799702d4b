//! Records the commit the programs are built from, for `--version` and the control socket's
//! `query-version` (issue #16): `VCCID_COMMIT` from the environment when set (a build from a
//! source tarball, or a distribution's build), else `git rev-parse` of the checkout, else
//! "unknown commit".

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=VCCID_COMMIT");
    let commit = std::env::var("VCCID_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown commit".into());
    println!("cargo:rustc-env=VCCID_COMMIT={commit}");
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn git_commit() -> Option<String> {
    let hash = git(&["rev-parse", "--short=12", "HEAD"])?;
    // Build again when HEAD moves: HEAD itself (a checkout) and the file of the branch it
    // names (a commit); only files that exist, or cargo would rebuild every time.
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let dir = Path::new(&git_dir);
        let mut watch = vec![dir.join("HEAD"), dir.join("packed-refs")];
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch.push(dir.join(branch));
        }
        for f in watch.iter().filter(|f| f.exists()) {
            println!("cargo:rerun-if-changed={}", f.display());
        }
    }
    let date = git(&["show", "-s", "--format=%cs", "HEAD"]);
    Some(match date {
        Some(d) => format!("commit {hash} {d}"),
        None => format!("commit {hash}"),
    })
}
