//! `--card emulated,profile=piv` through a private pcscd + vsmartcard-vpcd, used by Yubico's
//! `yubico-piv-tool` and OpenSC's PIV driver (`opensc-tool`, `pkcs15-tool`, `pkcs11-tool`),
//! signatures checked with OpenSSL.

use std::process::Output;
use std::time::Duration;
use testkit::{text, PrivatePcscd};

const VCCID: &str = env!("CARGO_BIN_EXE_vccid");

struct Piv {
    pcscd: PrivatePcscd,
}

impl Piv {
    fn start() -> Piv {
        Piv::with_card("emulated,profile=piv")
    }
    fn with_card(card: &str) -> Piv {
        let mut pcscd = PrivatePcscd::start().expect("private pcscd starts");
        let data = pcscd.dir.path().join("data");
        let mut cmd = pcscd.command(VCCID);
        cmd.args(["--vpcd", "127.0.0.1:35963", "--card", card, "--data-dir"])
            .arg(&data);
        pcscd.spawn("vccid", cmd).expect("vccid starts");
        if let Err(e) = pcscd.wait_card(0, Duration::from_secs(20)) {
            panic!("{e}\nvccid log:\n{}", pcscd.child_log("vccid"));
        }
        Piv { pcscd }
    }
    fn cert(&self, n: usize) -> std::path::PathBuf {
        self.pcscd
            .dir
            .path()
            .join(format!("data/default/cert{n}.crt.pem"))
    }
    fn tool(&self, program: &str, args: &[&str]) -> Output {
        self.pcscd
            .command(program)
            .args(args)
            .output()
            .expect("tool runs")
    }
    /// yubico-piv-tool on vpcd's reader (its default reader filter is "Yubikey").
    fn ypt(&self, args: &[&str]) -> Output {
        let mut all = vec!["-r", "Virtual PCD"];
        all.extend_from_slice(args);
        self.tool("yubico-piv-tool", &all)
    }
}

#[test]
fn yubico_piv_tool_status_verify_and_test_signatures() {
    let p = Piv::start();
    let o = p.ypt(&["-a", "status"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}\n{}", p.pcscd.child_log("vccid"));
    assert!(t.contains("Version:\t5.4.3"), "{t}");
    assert!(
        t.contains("CHUID:\t3019d4e739da739ced39ce739d836858210842108421c84210c3eb"),
        "{t}"
    );
    assert!(t.contains("CCC:\tf015a000000116ff02"), "{t}");
    for (slot, cn) in [("9a", "cert1"), ("9c", "cert2"), ("9d", "cert3")] {
        let at = t
            .find(&format!("Slot {slot}:"))
            .unwrap_or_else(|| panic!("slot {slot}: {t}"));
        assert!(t[at..].contains(&format!("Subject DN:\tCN={cn}")), "{t}");
    }
    assert!(!t.contains("Slot 9e:"), "{t}");
    assert!(t.contains("PIN tries left:\t3"), "{t}");
    // RSA-2048 test signatures: 9A with the PIN verified once, 9C (PIN-always) right after
    // its VERIFY.
    for (slot, n) in [("9a", 1), ("9c", 2)] {
        let cert = p.cert(n);
        let o = p.ypt(&[
            "-a",
            "verify-pin",
            "-P",
            "123456",
            "-a",
            "test-signature",
            "-s",
            slot,
            "-i",
            cert.to_str().unwrap(),
        ]);
        let t = text(&o);
        assert!(
            o.status.success(),
            "{slot}: {t}\n{}",
            p.pcscd.child_log("vccid")
        );
        assert!(t.contains("Successful RSA verification"), "{slot}: {t}");
    }
}

#[test]
fn yubico_piv_tool_change_pin_block_and_unblock() {
    let p = Piv::start();
    let o = p.ypt(&["-a", "change-pin", "-P", "123456", "-N", "654321"]);
    assert!(o.status.success(), "{}", text(&o));
    for left in ["2", "1"] {
        let o = p.ypt(&["-a", "verify-pin", "-P", "000000"]);
        assert!(!o.status.success());
        assert!(
            text(&o).contains(&format!("{left} tries left")),
            "{}",
            text(&o)
        );
    }
    let o = p.ypt(&["-a", "verify-pin", "-P", "000000"]);
    assert!(text(&o).contains("blocked"), "{}", text(&o));
    let o = p.ypt(&["-a", "verify-pin", "-P", "654321"]);
    assert!(
        !o.status.success(),
        "a blocked PIN must not verify: {}",
        text(&o)
    );
    let o = p.ypt(&["-a", "unblock-pin", "-P", "12345678", "-N", "112233"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = p.ypt(&["-a", "verify-pin", "-P", "112233"]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn opensc_piv_driver_lists_and_signs() {
    let p = Piv::start();
    let o = p.tool("opensc-tool", &["-n"]);
    assert!(
        text(&o).contains("Personal Identity Verification Card"),
        "{}",
        text(&o)
    );
    let o = p.tool("pkcs15-tool", &["-D"]);
    let t = text(&o);
    for label in [
        "X.509 Certificate [Certificate for PIV Authentication]",
        "X.509 Certificate [Certificate for Digital Signature]",
        "X.509 Certificate [Certificate for Key Management]",
        "Private RSA Key [PIV AUTH key]",
        "Private RSA Key [SIGN key]",
        "Private RSA Key [KEY MAN key]",
    ] {
        assert!(t.contains(label), "{label}: {t}");
    }
    p.pcscd
        .sign_and_verify("01", "123456", &p.cert(1))
        .unwrap_or_else(|e| panic!("{e}\n{}", p.pcscd.child_log("vccid")));
}

fn openssl(args: &[&str]) {
    testkit::run(std::process::Command::new("openssl").args(args)).expect("openssl");
}

/// RSA-2048 in 9A, P-256 in 9C, P-384 in 9D, from files OpenSSL wrote (SEC 1 EC keys).
fn ecc_files(dir: &std::path::Path) -> String {
    let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &p("rsa.key"),
    ]);
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        &p("p256.key"),
    ]);
    openssl(&[
        "ecparam",
        "-name",
        "secp384r1",
        "-genkey",
        "-noout",
        "-out",
        &p("p384.key"),
    ]);
    for n in ["rsa", "p256", "p384"] {
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            &p(&format!("{n}.key")),
            "-subj",
            &format!("/CN={n}"),
            "-days",
            "30",
            "-out",
            &p(&format!("{n}.crt")),
        ]);
        openssl(&[
            "x509",
            "-in",
            &p(&format!("{n}.crt")),
            "-pubkey",
            "-noout",
            "-out",
            &p(&format!("{n}.pub")),
        ]);
    }
    format!(
        "emulated,profile=piv,backend=files,cert1={},key1={},cert2={},key2={},cert3={},key3={}",
        p("rsa.crt"),
        p("rsa.key"),
        p("p256.crt"),
        p("p256.key"),
        p("p384.crt"),
        p("p384.key")
    )
}

#[test]
fn ecc_p256_and_p384_with_yubico_piv_tool_and_opensc() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = Piv::with_card(&ecc_files(d));
    let path = |f: &str| d.join(f).to_str().unwrap().to_string();
    // yubico-piv-tool: ECDSA test signatures on 9c (P-256) and 9d (P-384), ECDH on 9d.
    for (slot, cert, action, ok) in [
        (
            "9c",
            "p256.crt",
            "test-signature",
            "Successful ECDSA verification",
        ),
        (
            "9d",
            "p384.crt",
            "test-signature",
            "Successful ECDSA verification",
        ),
        (
            "9d",
            "p384.crt",
            "test-decipher",
            "Successfully performed ECDH exchange with card",
        ),
    ] {
        let o = p.ypt(&[
            "-a",
            "verify-pin",
            "-P",
            "123456",
            "-a",
            action,
            "-s",
            slot,
            "-i",
            &path(cert),
        ]);
        let t = text(&o);
        assert!(
            o.status.success() && t.contains(ok),
            "{slot} {action}: {t}\n{}",
            p.pcscd.child_log("vccid")
        );
    }
    // OpenSC: ECDSA-SHA256 with key 02, verified by OpenSSL.
    std::fs::write(d.join("msg"), b"signed with P-256 through OpenSC\n").unwrap();
    let o = p.tool(
        "pkcs11-tool",
        &[
            "--module",
            testkit::OPENSC_PKCS11,
            "--login",
            "--pin",
            "123456",
            "--sign",
            "-m",
            "ECDSA-SHA256",
            "--id",
            "02",
            "--signature-format",
            "openssl",
            "-i",
            &path("msg"),
            "-o",
            &path("sig"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v = std::process::Command::new("openssl")
        .args([
            "dgst",
            "-sha256",
            "-verify",
            &path("p256.pub"),
            "-signature",
            &path("sig"),
            &path("msg"),
        ])
        .output()
        .unwrap();
    assert!(text(&v).contains("Verified OK"), "{}", text(&v));
    // OpenSC: ECDH with key 03 agrees with OpenSSL's side.
    openssl(&[
        "ecparam",
        "-name",
        "secp384r1",
        "-genkey",
        "-noout",
        "-out",
        &path("peer.key"),
    ]);
    openssl(&[
        "ec",
        "-in",
        &path("peer.key"),
        "-pubout",
        "-outform",
        "DER",
        "-out",
        &path("peer.der"),
    ]);
    let o = p.tool(
        "pkcs11-tool",
        &[
            "--module",
            testkit::OPENSC_PKCS11,
            "--login",
            "--pin",
            "123456",
            "--derive",
            "-m",
            "ECDH1-DERIVE",
            "--id",
            "03",
            "-i",
            &path("peer.der"),
            "-o",
            &path("card.secret"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    openssl(&[
        "pkeyutl",
        "-derive",
        "-inkey",
        &path("peer.key"),
        "-peerkey",
        &path("p384.pub"),
        "-out",
        &path("host.secret"),
    ]);
    let (card, host) = (
        std::fs::read(d.join("card.secret")).unwrap(),
        std::fs::read(d.join("host.secret")).unwrap(),
    );
    assert_eq!(card.len(), 48);
    assert_eq!(card, host, "ECDH secrets differ");
}
