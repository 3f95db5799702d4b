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
        let mut pcscd = PrivatePcscd::start().expect("private pcscd starts");
        let data = pcscd.dir.path().join("data");
        let mut cmd = pcscd.command(VCCID);
        cmd.args([
            "--vpcd",
            "127.0.0.1:35963",
            "--card",
            "emulated,profile=piv",
            "--data-dir",
        ])
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
