//! The program's errors: one line that says what is wrong and how to fix it, exit status 2.

use std::process::Command;
use testkit::CommandExt;

const VCCID: &str = env!("CARGO_BIN_EXE_vccid");

fn fails_with(args: &[&str], words: &str) {
    fails_with_env(args, &[], words)
}

fn fails_with_env(args: &[&str], env: &[(&str, &str)], words: &str) {
    program_fails_with(VCCID, "vccid", args, env, words)
}

/// Runs `program`; expects exit status 2 and one `NAME: error:` line containing `words`.
fn program_fails_with(program: &str, name: &str, args: &[&str], env: &[(&str, &str)], words: &str) {
    // A deadline: a refusal that regresses into serving would otherwise run for ever.
    let o = testkit::output(
        Command::new(program).args(args).envs(env.iter().copied()),
        std::time::Duration::from_secs(60),
        &format!("{name} {args:?} to fail"),
    )
    .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with(&format!("{name}: error:")))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains(words), "{line}");
}

#[test]
fn missing_nss_database() {
    fails_with(
        &[
            "--card",
            "emulated,backend=certificates,db=sql:/nonexistent,cert1=a",
        ],
        "certutil -N",
    );
}

#[test]
fn unknown_nickname_names_what_the_database_has() {
    let dir = tempfile::tempdir().unwrap();
    testkit::nss_db(dir.path(), None).unwrap();
    let spec = format!(
        "emulated,backend=certificates,db=sql:{},cert1=nope",
        dir.path().display()
    );
    fails_with(&["--card", &spec], "no certificate \"nope\"");
}

#[test]
fn wrong_nss_password() {
    let dir = tempfile::tempdir().unwrap();
    testkit::nss_db(dir.path(), Some("right")).unwrap();
    let pw = dir.path().join("wrong.txt");
    std::fs::write(&pw, "wrong\n").unwrap();
    let spec = format!(
        "emulated,backend=certificates,db=sql:{},cert1=cert1,password-file={}",
        dir.path().display(),
        pw.display()
    );
    fails_with(&["--card", &spec], "wrong PIN/password");
}

#[test]
fn bad_card_spec_and_address() {
    fails_with(&["--card", "emulated,backend=bogus"], "unknown backend");
    fails_with(&["--card", "emulated,pin=123456789"], "pin= must be 1 to 8");
    let dir = tempfile::tempdir().unwrap();
    fails_with(
        &[
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--vpcd",
            "no-port",
        ],
        "bad address",
    );
}

#[test]
fn key_that_does_not_match_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    testkit::openssl_identities(dir.path()).unwrap();
    let d = dir.path().display();
    fails_with(
        &[
            "--card",
            &format!("emulated,backend=files,cert1={d}/cert1.crt.pem,key1={d}/cert2.key.pem"),
        ],
        "does not belong to certificate",
    );
}

#[test]
fn nss_pk12util_files_get_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    testkit::nss_db(dir.path(), None).unwrap();
    testkit::nss_pkcs12(dir.path(), "lab").unwrap();
    let d = dir.path().display();
    fails_with_env(
        &[
            "--card",
            &format!("emulated,backend=files,cert1={d}/cert1.nss.p12"),
        ],
        &[("VCCID_P12_PASSWORD", "lab")],
        "re-export with `openssl pkcs12`",
    );
}

#[test]
fn pkcs12_without_a_password_says_how_to_give_one() {
    let dir = tempfile::tempdir().unwrap();
    testkit::openssl_identities(dir.path()).unwrap();
    testkit::openssl_pkcs12(dir.path(), "lab").unwrap();
    let d = dir.path().display();
    fails_with(
        &[
            "--card",
            &format!("emulated,backend=files,cert1={d}/cert1.p12"),
        ],
        "p12-password-file=FILE",
    );
}

const VSCCLIENT: &str = env!("CARGO_BIN_EXE_vscclient");

fn vscclient_fails_with(args: &[&str], words: &str) {
    program_fails_with(VSCCLIENT, "vscclient", args, &[], words)
}

#[test]
fn vscclient_errors_are_one_line() {
    vscclient_fails_with(&["-e", "db=x", "127.0.0.1", "2001"], "quoted");
    vscclient_fails_with(&["-e", "soft=(,r,PIV,,c)", "127.0.0.1", "2001"], "only CAC");
    vscclient_fails_with(&["-p", "-c", "cert1", "127.0.0.1", "2001"], "not supported");
    vscclient_fails_with(
        &[
            "-c",
            "cert1",
            "-e",
            "db=\"sql:/nonexistent\"",
            "127.0.0.1",
            "2001",
        ],
        "certutil -N",
    );
    vscclient_fails_with(&["--card", "passthru", "127.0.0.1", "2001"], "is a host");
    vscclient_fails_with(&["--card", "emulated", "no-port"], "bad address");
    let dir = tempfile::tempdir().unwrap();
    vscclient_fails_with(
        &[
            "--card",
            "emulated",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--connect-timeout",
            "0",
            "127.0.0.1:1",
        ],
        "cannot connect to 127.0.0.1:1",
    );
}

#[test]
fn piv_state_needs_a_data_directory_or_state_off() {
    let dir = tempfile::tempdir().unwrap();
    testkit::openssl_identities(dir.path()).unwrap();
    let d = dir.path().display();
    // The CAC card keeps its PIN and retry counter there too (issue #17).
    for profile in ["piv", "cac", "cac+piv"] {
        let card = format!(
            "emulated,profile={profile},backend=files,cert1={d}/cert1.crt.pem,key1={d}/cert1.key.pem"
        );
        let o = Command::new(VCCID)
            .args(["--card", &card])
            .env_remove("HOME")
            .env_remove("XDG_DATA_HOME")
            .env_remove("VCCID_DATA_DIR")
            .stdin(std::process::Stdio::null())
            .output_within(testkit::TOOL_TIMEOUT)
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{profile}: {err}");
        assert!(
            err.contains("no data directory") && err.contains("state=off"),
            "{profile}: {err}"
        );
    }
}

/// Every file under `dir` with its bytes: "nothing was changed" is this, before and after.
fn files_under(dir: &std::path::Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// vpcd at a free port where nothing listens: the card is built before any connection.
fn unused_vpcd() -> String {
    format!("127.0.0.1:{}", testkit::free_port().unwrap())
}

/// Starts vccid with `args`, waits (with a deadline) for its log line saying the emulated
/// card is ready, then kills it; returns its log up to that line.
fn card_starts(args: &[&str]) -> String {
    use std::io::BufRead;
    let mut child = Command::new(VCCID)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + testkit::TOOL_TIMEOUT;
    let mut log = String::new();
    let ready = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                log += &line;
                log.push('\n');
                if line.contains("card ready") {
                    break true;
                }
            }
            // Its stderr closed (it exited) or the deadline passed.
            Err(_) => break false,
        }
    };
    testkit::kill(&mut child, "vccid").unwrap();
    assert!(
        ready,
        "vccid {args:?} did not say its card is ready:\n{log}"
    );
    log
}

#[test]
fn a_data_directory_is_made_by_init_and_a_damaged_card_is_never_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("typo").join("card");
    let d = dir.to_str().unwrap();
    // A --data-dir that does not exist is an error, and is not made.
    fails_with(
        &["--data-dir", d, "--vpcd", &unused_vpcd()],
        &format!("data directory {d} does not exist; create it with `vccid init {d}`"),
    );
    assert!(!tmp.path().join("typo").exists());
    // `vccid init DIR` makes it (0700) with the whole card and says what it made.
    let o = Command::new(VCCID)
        .args(["init", d])
        .output_within(testkit::TOOL_TIMEOUT)
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", testkit::text(&o));
    for subject in ["CN=cert1", "CN=cert2", "CN=cert3", "CN=piv-ecc"] {
        assert!(out.contains(subject), "{out}");
    }
    assert!(out.contains(&format!("{d}/default")), "{out}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&dir).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700);
    let made = files_under(&dir);
    assert_eq!(made.len(), 8, "{:?}", made.keys());
    // A second init refuses and changes nothing.
    program_fails_with(VCCID, "vccid", &["init", d], &[], "already holds a card");
    assert_eq!(files_under(&dir), made);
    // The card it made serves, under both profiles, and keeps its keys.
    card_starts(&["--data-dir", d, "--vpcd", &unused_vpcd()]);
    card_starts(&[
        "--data-dir",
        d,
        "--card",
        "emulated,profile=piv,state=off",
        "--vpcd",
        &unused_vpcd(),
    ]);
    // Serving adds the CAC card's state lock beside where its state file goes (the file comes
    // with the first PIN try, issue #17), and changes nothing else.
    let mut served = files_under(&dir);
    served.retain(|p, _| !p.starts_with(dir.join("cac")));
    assert_eq!(served, made);
    // One key lost: an error naming it; nothing is made over the old card.
    let lost = dir.join("default").join("cert3.key.pem");
    std::fs::remove_file(&lost).unwrap();
    let before = files_under(&dir);
    fails_with(
        &["--data-dir", d, "--vpcd", &unused_vpcd()],
        &lost.display().to_string(),
    );
    fails_with(
        &["--data-dir", d, "--vpcd", &unused_vpcd()],
        "restore the file from a backup",
    );
    assert_eq!(files_under(&dir), before);
    assert!(!lost.exists());
}

#[test]
fn create_makes_a_missing_data_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("new");
    card_starts(&[
        "--create",
        "--data-dir",
        dir.to_str().unwrap(),
        "--vpcd",
        &unused_vpcd(),
    ]);
    assert_eq!(files_under(&dir.join("default")).len(), 8);
}

#[test]
fn a_key_file_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    testkit::openssl_identities(dir.path()).unwrap();
    let key = dir.path().join("cert1.key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let d = dir.path().display();
    fails_with(
        &[
            "--card",
            &format!("emulated,backend=files,cert1={d}/cert1.crt.pem,key1={d}/cert1.key.pem"),
            "--vpcd",
            &unused_vpcd(),
        ],
        &format!(
            "readable by others (mode 0644): chmod 600 {}",
            key.display()
        ),
    );
    // The default card's keys too.
    let data = dir.path().join("data");
    let o = Command::new(VCCID)
        .args(["init", data.to_str().unwrap()])
        .output_within(testkit::TOOL_TIMEOUT)
        .unwrap();
    assert!(o.status.success(), "{}", testkit::text(&o));
    let key = data.join("default").join("cert2.key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    fails_with(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--vpcd",
            &unused_vpcd(),
        ],
        &format!("chmod 600 {}", key.display()),
    );
}
