//! The program's errors: one line that says what is wrong and how to fix it, exit status 2.

use std::process::Command;

const VCCID: &str = env!("CARGO_BIN_EXE_vccid");

fn fails_with(args: &[&str], words: &str) {
    fails_with_env(args, &[], words)
}

fn fails_with_env(args: &[&str], env: &[(&str, &str)], words: &str) {
    program_fails_with(VCCID, "vccid", args, env, words)
}

/// Runs `program`; expects exit status 2 and one `NAME: error:` line containing `words`.
fn program_fails_with(program: &str, name: &str, args: &[&str], env: &[(&str, &str)], words: &str) {
    let o = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
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
    let card = format!(
        "emulated,profile=piv,backend=files,cert1={d}/cert1.crt.pem,key1={d}/cert1.key.pem"
    );
    let o = Command::new(VCCID)
        .args(["--card", &card])
        .env_remove("HOME")
        .env_remove("XDG_DATA_HOME")
        .env_remove("VCCID_DATA_DIR")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no data directory") && err.contains("state=off"),
        "{err}"
    );
    fails_with(
        &["--card", "emulated,profile=cac,state=off"],
        "the CAC card keeps no state",
    );
}
