//! vccid's CAC card through a private pcscd + vsmartcard-vpcd, used by the real OpenSC tools
//! (opensc-tool, pkcs15-tool, pkcs11-tool with opensc-pkcs11.so) and checked with OpenSSL.
//! Key stores: the embedded default, PEM files, the seed's NSS database (certutil), SoftHSM2.
//! Each test starts its own pcscd in its own namespaces (testkit::PrivatePcscd).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use testkit::CommandExt;
use testkit::{run, text, PrivatePcscd, OPENSC_PKCS11};

const VCCID: &str = env!("CARGO_BIN_EXE_vccid");
const PIN: &str = "12345678";

/// A running card: the pcscd instance, and where its certificates' PEM files are.
struct Setup {
    pcscd: PrivatePcscd,
    certs: PathBuf,
    _dirs: Vec<tempfile::TempDir>,
}

impl Setup {
    fn start(
        card: &str,
        env: &[(&str, PathBuf)],
        certs: PathBuf,
        dirs: Vec<tempfile::TempDir>,
    ) -> Setup {
        let mut pcscd = PrivatePcscd::start().expect("private pcscd starts");
        let data = pcscd.dir.path().join("data");
        // A data directory given to vccid must exist.
        std::fs::create_dir_all(&data).unwrap();
        let mut cmd = pcscd.command(VCCID);
        cmd.args(["--vpcd", "127.0.0.1:35963", "--card", card, "--data-dir"])
            .arg(&data);
        for (k, v) in env {
            cmd.env(k, v);
        }
        pcscd.spawn("vccid", cmd).expect("vccid starts");
        if let Err(e) = pcscd.wait_card(0, Duration::from_secs(20)) {
            panic!("{e}\nvccid log:\n{}", pcscd.child_log("vccid"));
        }
        let certs = if certs.as_os_str().is_empty() {
            data.join("default")
        } else {
            certs
        };
        Setup {
            pcscd,
            certs,
            _dirs: dirs,
        }
    }

    fn default_card() -> Setup {
        Setup::start("emulated", &[], PathBuf::new(), vec![])
    }

    fn tool(&self, program: &str, args: &[&str]) -> std::process::Output {
        self.pcscd
            .command(program)
            .args(args)
            .output_within(testkit::TOOL_TIMEOUT)
            .expect("tool runs")
    }

    fn p11(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["--module", OPENSC_PKCS11];
        all.extend_from_slice(args);
        self.tool("pkcs11-tool", &all)
    }

    fn cert(&self, n: usize) -> PathBuf {
        self.certs.join(format!("cert{n}.crt.pem"))
    }
}

/// pkcs15-tool -D lists the PIN, three RSA private keys and three certificates, and the
/// certificates read back are CN=cert1..cert3.
fn assert_pkcs15_lists_three(s: &Setup) {
    let o = s.tool("pkcs15-tool", &["-D"]);
    let t = text(&o);
    assert_eq!(t.matches("Private RSA Key").count(), 3, "{t}");
    assert_eq!(t.matches("X.509 Certificate [").count(), 3, "{t}");
    assert!(t.contains("PIN [PIN]"), "{t}");
    for n in 1..=3 {
        let o = s.tool("pkcs15-tool", &["--read-certificate", &format!("000{n}")]);
        assert!(o.status.success(), "{}", text(&o));
        let pem = s.pcscd.dir.path().join(format!("read{n}.pem"));
        std::fs::write(&pem, &o.stdout).unwrap();
        let subj = run(Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-in"])
            .arg(&pem))
        .unwrap();
        assert_eq!(text(&subj).trim(), format!("subject=CN = cert{n}"));
    }
}

/// pkcs11-tool signs with SHA256-RSA-PKCS and `openssl dgst -verify` accepts the signature.
fn assert_sign_verifies(s: &Setup, n: usize) {
    s.pcscd
        .sign_and_verify(&format!("000{n}"), PIN, &s.cert(n))
        .unwrap();
}

#[test]
fn opensc_tool_names_the_cac_and_reads_our_atr() {
    let s = Setup::default_card();
    let n = text(&s.tool("opensc-tool", &["-n"]));
    assert!(n.contains("Common Access Card (CAC)"), "{n}");
    let a = text(&s.tool("opensc-tool", &["-a"]));
    assert!(
        a.contains("3b:7a:18:00:00:73:66:74:65:20:63:64:31:34:34"),
        "{a}"
    );
}

#[test]
fn pkcs15_tool_lists_the_default_card() {
    assert_pkcs15_lists_three(&Setup::default_card());
}

#[test]
fn pkcs15_tool_lists_pem_files() {
    let dir = tempfile::tempdir().unwrap();
    testkit::openssl_identities(dir.path()).unwrap();
    let p = |n: usize, k: &str| {
        dir.path()
            .join(format!("cert{n}.{k}.pem"))
            .display()
            .to_string()
    };
    let spec = format!(
        "emulated,backend=files,cert1={},key1={},cert2={},key2={},cert3={},key3={}",
        p(1, "crt"),
        p(1, "key"),
        p(2, "crt"),
        p(2, "key"),
        p(3, "crt"),
        p(3, "key")
    );
    let certs = dir.path().to_path_buf();
    let s = Setup::start(&spec, &[], certs, vec![dir]);
    assert_pkcs15_lists_three(&s);
    assert_sign_verifies(&s, 2);
}

#[test]
fn pkcs15_tool_lists_an_nss_database_and_nss_signs() {
    let dir = tempfile::tempdir().unwrap();
    testkit::nss_db(dir.path(), None).unwrap();
    let spec = format!(
        "emulated,backend=certificates,db=sql:{},cert1=cert1,cert2=cert2,cert3=cert3",
        dir.path().display()
    );
    let certs = dir.path().to_path_buf();
    let s = Setup::start(&spec, &[], certs, vec![dir]);
    assert_pkcs15_lists_three(&s);
    assert_sign_verifies(&s, 1);
}

#[test]
fn pkcs15_tool_lists_pkcs12_files() {
    let dir = tempfile::tempdir().unwrap();
    testkit::openssl_identities(dir.path()).unwrap();
    testkit::openssl_pkcs12(dir.path(), "lab").unwrap();
    let pw = dir.path().join("p12pass.txt");
    std::fs::write(&pw, "lab\n").unwrap();
    let d = dir.path().display();
    let spec = format!(
        "emulated,backend=files,cert1={d}/cert1.p12,cert2={d}/cert2.p12,cert3={d}/cert3.p12,p12-password-file={}",
        pw.display()
    );
    let certs = dir.path().to_path_buf();
    let s = Setup::start(&spec, &[], certs, vec![dir]);
    assert_pkcs15_lists_three(&s);
    assert_sign_verifies(&s, 3);
}

#[test]
fn nss_database_with_a_password_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    testkit::nss_db(dir.path(), Some("s3cret")).unwrap();
    let spec = format!(
        "emulated,backend=certificates,db=sql:{},cert1=cert1,cert2=cert2,cert3=cert3,password-file={}",
        dir.path().display(),
        dir.path().join("password.txt").display()
    );
    let certs = dir.path().to_path_buf();
    let s = Setup::start(&spec, &[], certs, vec![dir]);
    assert_sign_verifies(&s, 3);
}

#[test]
fn pkcs15_tool_lists_a_softhsm_token_and_the_token_signs() {
    let dir = tempfile::tempdir().unwrap();
    let conf = testkit::softhsm_token(dir.path()).unwrap();
    let spec = format!(
        "emulated,backend=pkcs11,uri=pkcs11:token=vccid-test?module-path={}&pin-value=77777777",
        testkit::SOFTHSM2
    );
    let certs = dir.path().to_path_buf();
    let s = Setup::start(&spec, &[("SOFTHSM2_CONF", conf)], certs, vec![dir]);
    assert_pkcs15_lists_three(&s);
    assert_sign_verifies(&s, 1);
}

#[test]
fn pkcs11_sign_with_keys_one_and_two_verifies_with_openssl() {
    let s = Setup::default_card();
    assert_sign_verifies(&s, 1);
    assert_sign_verifies(&s, 2);
}

#[test]
fn pkcs11_decrypt_with_key_three_recovers_openssl_ciphertext() {
    let s = Setup::default_card();
    let d = s.pcscd.dir.path();
    let (msg, ct, pt, pk) = (d.join("m"), d.join("ct"), d.join("pt"), d.join("pub3.pem"));
    std::fs::write(&msg, b"the secret 1234567890\n").unwrap();
    testkit::pubkey_pem(&s.cert(3), &pk).unwrap();
    run(Command::new("openssl")
        .args(["pkeyutl", "-encrypt", "-pubin", "-inkey"])
        .arg(&pk)
        .arg("-in")
        .arg(&msg)
        .arg("-out")
        .arg(&ct))
    .unwrap();
    let o = s.p11(&[
        "--login",
        "--pin",
        PIN,
        "--decrypt",
        "--mechanism",
        "RSA-PKCS",
        "--id",
        "0003",
        "--input-file",
        ct.to_str().unwrap(),
        "--output-file",
        pt.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(&pt).unwrap(), b"the secret 1234567890\n");
}

#[test]
fn pkcs11_tool_test_reports_no_errors() {
    let s = Setup::default_card();
    let o = s.p11(&["--test", "--login", "--pin", PIN]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("No errors"), "{t}");
    let r = s.p11(&["--generate-random", "32"]);
    assert!(r.status.success(), "{}", text(&r));
    assert_eq!(r.stdout.len(), 32);
}

/// VERIFY through pcscd with raw APDUs; returns the last "SW1=0x.., SW2=0x.." line.
fn verify_sw(s: &Setup, pin_hex: &str) -> String {
    let apdu = if pin_hex.is_empty() {
        "00 20 00 00".to_string()
    } else {
        format!("00 20 00 00 08 {pin_hex}")
    };
    let o = s.tool(
        "opensc-tool",
        &[
            "-r",
            "0",
            "-s",
            "00 A4 04 00 07 A0 00 00 00 79 03 00",
            "-s",
            &apdu,
        ],
    );
    let t = text(&o);
    t.lines()
        .rfind(|l| l.contains("SW1="))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn wrong_pins_count_down_block_and_survive_power_cycles() {
    let s = Setup::default_card();
    let wrong = "30 30 30 30 30 30 30 30";
    let right = "31 32 33 34 35 36 37 38";
    assert!(
        verify_sw(&s, "").contains("SW1=0x63, SW2=0xC3"),
        "{}",
        verify_sw(&s, "")
    );
    assert!(verify_sw(&s, wrong).contains("SW1=0x63, SW2=0xC2"));
    // A cold reset does not give the tries back.
    let o = s.tool("opensc-tool", &["-r", "0", "--reset", "cold"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(verify_sw(&s, "").contains("SW1=0x63, SW2=0xC2"));
    // OpenSC maps 63Cx to CKR_PIN_INCORRECT.
    let o = s.p11(&["--login", "--pin", "00000000", "--list-objects"]);
    assert!(
        !o.status.success() && text(&o).contains("CKR_PIN_INCORRECT"),
        "{}",
        text(&o)
    );
    assert!(verify_sw(&s, "").contains("SW1=0x63, SW2=0xC1"));
    // The last wrong try blocks the PIN; the right PIN is then refused.
    assert!(verify_sw(&s, wrong).contains("SW1=0x63, SW2=0xC0"));
    assert!(verify_sw(&s, "").contains("SW1=0x69, SW2=0x83"));
    assert!(verify_sw(&s, right).contains("SW1=0x69, SW2=0x83"));
    let o = s.p11(&["--login", "--pin", PIN, "--list-objects"]);
    assert!(
        !o.status.success() && text(&o).contains("CKR_PIN_LOCKED"),
        "{}",
        text(&o)
    );
    s.tool("opensc-tool", &["-r", "0", "--reset", "cold"]);
    assert!(verify_sw(&s, right).contains("SW1=0x69, SW2=0x83"));
}

#[test]
fn card_leaves_and_returns_when_vccid_restarts() {
    let mut s = Setup::default_card();
    s.pcscd.stop_children();
    s.pcscd.wait_no_card(0, Duration::from_secs(10)).unwrap();
    let data = s.pcscd.dir.path().join("data");
    let mut cmd = s.pcscd.command(VCCID);
    cmd.args(["--vpcd", "127.0.0.1:35963", "--data-dir"])
        .arg(&data);
    s.pcscd.spawn("vccid2", cmd).unwrap();
    s.pcscd.wait_card(0, Duration::from_secs(20)).unwrap();
    assert_sign_verifies(&s, 1);
}

#[test]
fn remove_and_insert_commands_reach_pcscd() {
    use std::io::Write;
    let mut pcscd = PrivatePcscd::start().expect("private pcscd starts");
    let mut cmd = pcscd.command(VCCID);
    cmd.args(["--vpcd", "127.0.0.1:35963", "--create", "--data-dir"])
        .arg(pcscd.dir.path().join("data"));
    let mut stdin = pcscd.spawn_with_stdin("vccid", cmd).unwrap();
    pcscd.wait_card(0, Duration::from_secs(20)).unwrap();
    writeln!(stdin, "remove").unwrap();
    pcscd.wait_no_card(0, Duration::from_secs(10)).unwrap();
    writeln!(stdin, "insert").unwrap();
    pcscd.wait_card(0, Duration::from_secs(10)).unwrap();
    let a = text(
        &pcscd
            .command("opensc-tool")
            .arg("-a")
            .output_within(testkit::TOOL_TIMEOUT)
            .unwrap(),
    );
    assert!(
        a.contains("3b:7a:18:00:00:73:66:74:65:20:63:64:31:34:34"),
        "{a}"
    );
    // End of input ends the command reader only: vccid keeps serving.
    drop(stdin);
    std::thread::sleep(Duration::from_millis(500));
    let n = text(
        &pcscd
            .command("opensc-tool")
            .arg("-n")
            .output_within(testkit::TOOL_TIMEOUT)
            .unwrap(),
    );
    assert!(n.contains("Common Access Card (CAC)"), "{n}");
}
