//! `--card emulated,profile=piv` through a private pcscd + vsmartcard-vpcd, used by Yubico's
//! `yubico-piv-tool` and OpenSC's PIV driver (`opensc-tool`, `pkcs15-tool`, `pkcs11-tool`),
//! signatures checked with OpenSSL.

use std::process::Output;
use std::time::Duration;
use testkit::CommandExt;
use testkit::{text, PrivatePcscd};

const VCCID: &str = env!("CARGO_BIN_EXE_vccid");

struct Piv {
    pcscd: PrivatePcscd,
    card: String,
    /// Extra environment for vccid (SOFTHSM2_CONF).
    env: Vec<(String, String)>,
    /// Name of the running vccid's log (vccid, then vccid-2, ... after restarts).
    log: String,
}

impl Piv {
    fn start() -> Piv {
        Piv::with_card("emulated,profile=piv")
    }
    fn with_card(card: &str) -> Piv {
        Piv::with_reader(card, None)
    }
    /// With vpcd's reader renamed (`None`: "Virtual PCD").
    fn with_reader(card: &str, reader: Option<&str>) -> Piv {
        let pcscd = PrivatePcscd::start_named(reader).expect("private pcscd starts");
        let mut p = Piv {
            pcscd,
            card: card.to_string(),
            env: Vec::new(),
            log: String::new(),
        };
        p.spawn_vccid("vccid");
        p
    }
    fn spawn_vccid(&mut self, log: &str) {
        let data = self.pcscd.dir.path().join("data");
        // A data directory given to vccid must exist.
        std::fs::create_dir_all(&data).unwrap();
        let mut cmd = self.pcscd.command(VCCID);
        cmd.args([
            "--vpcd",
            "127.0.0.1:35963",
            "--card",
            &self.card,
            "--data-dir",
        ])
        .arg(&data);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        self.pcscd.spawn(log, cmd).expect("vccid starts");
        self.log = log.to_string();
        if let Err(e) = self.pcscd.wait_card(0, Duration::from_secs(20)) {
            panic!("{e}\nvccid log:\n{}", self.vccid_log());
        }
    }
    /// Stops vccid and starts it again with the same card and data directory.
    fn restart(&mut self, log: &str) {
        self.pcscd.stop_child(&self.log.clone(), "TERM");
        self.pcscd
            .wait_no_card(0, Duration::from_secs(20))
            .expect("the card goes away with vccid");
        self.spawn_vccid(log);
    }
    fn vccid_log(&self) -> String {
        self.pcscd.child_log(&self.log)
    }
    fn data(&self, f: &str) -> std::path::PathBuf {
        self.pcscd.dir.path().join("data").join(f)
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
            .output_within(testkit::TOOL_TIMEOUT)
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
    assert!(o.status.success(), "{t}\n{}", p.vccid_log());
    assert!(t.contains("Version:\t5.4.3"), "{t}");
    // The CHUID's FASC-N is the card's own (issue #15), from its first certificate; it used
    // to be one constant for every card.
    let first = card::keystore::FileStore::open(&[card::keystore::FileIdentity::new(
        p.cert(1),
        Some(p.data("default/cert1.key.pem")),
    )])
    .unwrap();
    let fascn: String = card::piv::fascn(&card::keystore::KeyStore::identities(&first)[0].cert_der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(t.contains(&format!("CHUID:\t3019{fascn}3410")), "{t}");
    assert_ne!(fascn, "d4e739da739ced39ce739d836858210842108421c84210c3eb");
    assert!(t.contains("CCC:\tf015a000000116ff02"), "{t}");
    for (slot, cn) in [("9a", "cert1"), ("9c", "cert2"), ("9d", "cert3")] {
        let at = t
            .find(&format!("Slot {slot}:"))
            .unwrap_or_else(|| panic!("slot {slot}: {t}"));
        assert!(t[at..].contains(&format!("Subject DN:\tCN={cn}")), "{t}");
    }
    // The embedded default's ECC identity sits in 9E (card authentication).
    let at = t.find("Slot 9e:").unwrap_or_else(|| panic!("slot 9e: {t}"));
    assert!(
        t[at..].contains("Algorithm:\tECCP256") && t[at..].contains("Subject DN:\tCN=piv-ecc"),
        "{t}"
    );
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
        assert!(o.status.success(), "{slot}: {t}\n{}", p.vccid_log());
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
        .unwrap_or_else(|e| panic!("{e}\n{}", p.vccid_log()));
    // pkcs11-tool's own self-test over every key (RSA and the P-256 card-authentication key).
    let o = p.tool(
        "pkcs11-tool",
        &[
            "--module",
            testkit::OPENSC_PKCS11,
            "--test",
            "--login",
            "--pin",
            "123456",
        ],
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}\n{}", p.vccid_log());
    assert!(t.contains("No errors"), "{t}\n{}", p.vccid_log());
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
            p.vccid_log()
        );
    }
    // OpenSC: ECDSA-SHA256 with key 02, verified by OpenSSL.
    p.pcscd
        .sign_and_verify_with(
            testkit::OPENSC_PKCS11,
            "ECDSA-SHA256",
            "02",
            "123456",
            &d.join("p256.crt"),
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", p.vccid_log()));
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

fn ok(p: &Piv, o: &Output, what: &str) -> String {
    let t = text(o);
    assert!(
        o.status.success(),
        "{what}: {t}\nvccid log:\n{}",
        p.vccid_log()
    );
    t
}

/// ykcs11, which opens only readers whose names start with "Yubico" (2.2.0's
/// `is_yubico_reader`).
const YUBICO_READER: &str = "Yubico vccid Virtual PCD";

fn ykcs11() -> &'static str {
    [
        "/usr/lib/x86_64-linux-gnu/libykcs11.so.2",
        "/usr/lib/x86_64-linux-gnu/libykcs11.so",
    ]
    .into_iter()
    .find(|m| std::path::Path::new(m).exists())
    .expect("ykcs11 is installed (Debian package ykcs11)")
}

/// The card's P-384 key in slot 9D (ykcs11 id 03) as an rcgen signer: each signature is an
/// ECDSA-SHA384 made by the card through ykcs11.
struct CardP384<'a> {
    piv: &'a Piv,
    point: Vec<u8>,
    dir: &'a std::path::Path,
}

impl rcgen::PublicKeyData for CardP384<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P384_SHA384
    }
}

impl rcgen::SigningKey for CardP384<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let (input, output) = (self.dir.join("tbs"), self.dir.join("tbs.sig"));
        std::fs::write(&input, msg).map_err(|_| rcgen::Error::RemoteKeyError)?;
        let o = self.piv.tool(
            "pkcs11-tool",
            &[
                "--module",
                ykcs11(),
                "--login",
                "--pin",
                "123456",
                "--sign",
                "-m",
                "ECDSA-SHA384",
                "--id",
                "03",
                "--signature-format",
                "openssl",
                "-i",
                input.to_str().unwrap(),
                "-o",
                output.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "ykcs11 sign: {}", text(&o));
        std::fs::read(&output).map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

/// Writes `dir/cert.pem`: CN=made on the card, for the P-384 key in `dir/pub.pem`, signed by
/// the card through ykcs11.
fn certify_through_ykcs11(p: &Piv, dir: &std::path::Path) {
    let pem = std::fs::read_to_string(dir.join("pub.pem")).unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let spki = openssl_base64_decode(&b64, dir);
    let point = spki[spki.len() - 97..].to_vec();
    assert_eq!(point[0], 0x04);
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "made on the card");
    let cert = params
        .self_signed(&CardP384 { piv: p, point, dir })
        .expect("the card signs its certificate");
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
}

#[test]
fn generate_certify_import_and_restart_keep_keys_certificates_and_pins() {
    // With APDU traces, to tell where a failed selfsign-certificate stopped.
    let pcscd = PrivatePcscd::start_named(Some(YUBICO_READER)).expect("private pcscd starts");
    let mut p = Piv {
        pcscd,
        card: "emulated,profile=piv".into(),
        env: vec![("RUST_LOG".into(), "info,apdu=trace".into())],
        log: String::new(),
    };
    p.spawn_vccid("vccid");
    let d = tempfile::tempdir().unwrap();
    let path = |f: &str| d.path().join(f).to_str().unwrap().to_string();
    // A P-384 key generated on the card with the default management key.
    ok(
        &p,
        &p.ypt(&[
            "-a",
            "generate",
            "-s",
            "9d",
            "-A",
            "ECCP384",
            "-o",
            &path("pub.pem"),
        ]),
        "generate",
    );
    // Its self-signed certificate. Debian 12's yubico-piv-tool 2.2.0 cannot self-sign with
    // OpenSSL 3 against any card (it hooks EC_KEY_METHOD, which OpenSSL 3's X509_sign no
    // longer calls: Yubico/yubico-piv-tool#388): it fails before sending the card a signing
    // command. When it does, the card signs the certificate through ykcs11 instead, which
    // learns the new key from GET METADATA although 9D still holds cert3.
    let signs = |p: &Piv| {
        p.vccid_log()
            .matches("GENERAL AUTHENTICATE 9D ECCP384")
            .count()
    };
    let before = signs(&p);
    let o = p.ypt(&[
        "-a",
        "verify-pin",
        "-P",
        "123456",
        "-a",
        "selfsign-certificate",
        "-s",
        "9d",
        "-S",
        "/CN=made on the card/",
        "-i",
        &path("pub.pem"),
        "-o",
        &path("cert.pem"),
    ]);
    if o.status.success() {
        eprintln!("yubico-piv-tool selfsign-certificate works here");
    } else {
        assert!(
            text(&o).contains("Failed signing certificate"),
            "{}",
            text(&o)
        );
        assert_eq!(
            signs(&p),
            before,
            "selfsign-certificate reached the card and failed there: {}",
            p.vccid_log()
        );
        certify_through_ykcs11(&p, d.path());
        // The trace does show the card's signatures: ykcs11's reached it.
        assert!(signs(&p) > before, "{}", p.vccid_log());
    }

    ok(
        &p,
        &p.ypt(&[
            "-a",
            "import-certificate",
            "-s",
            "9d",
            "-i",
            &path("cert.pem"),
        ]),
        "import-certificate",
    );
    // OpenSSL checks the card's ECDSA signature on its own certificate.
    let v = std::process::Command::new("openssl")
        .args(["verify", "-CAfile", &path("cert.pem"), &path("cert.pem")])
        .output_within(testkit::TOOL_TIMEOUT)
        .unwrap();
    assert!(text(&v).contains(": OK"), "{}", text(&v));
    // IMPORT KEY: a P-256 key made by OpenSSL into 9a, with its certificate.
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        &path("imp.key"),
    ]);
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        &path("imp.key"),
        "-subj",
        "/CN=imported",
        "-days",
        "9",
        "-out",
        &path("imp.crt"),
    ]);
    ok(
        &p,
        &p.ypt(&["-a", "import-key", "-s", "9a", "-i", &path("imp.key")]),
        "import-key",
    );
    ok(
        &p,
        &p.ypt(&[
            "-a",
            "import-certificate",
            "-s",
            "9a",
            "-i",
            &path("imp.crt"),
        ]),
        "import-certificate 9a",
    );
    ok(
        &p,
        &p.ypt(&["-a", "change-pin", "-P", "123456", "-N", "24680135"]),
        "change-pin",
    );
    let o = p.ypt(&["-a", "verify-pin", "-P", "000000"]);
    assert!(text(&o).contains("2 tries left"), "{}", text(&o));

    // vccid restarts: the keys, certificates, the new PIN and its counter are all still there.
    p.restart("vccid-2");
    assert!(
        p.vccid_log().contains("PIV card state restored"),
        "{}",
        p.vccid_log()
    );
    let t = ok(&p, &p.ypt(&["-a", "status"]), "status after restart");
    let at = t.find("Slot 9d:").unwrap_or_else(|| panic!("{t}"));
    assert!(
        t[at..].contains("Algorithm:\tECCP384")
            && t[at..].contains("Subject DN:\tCN=made on the card"),
        "{t}"
    );
    let at = t.find("Slot 9a:").unwrap_or_else(|| panic!("{t}"));
    assert!(t[at..].contains("Subject DN:\tCN=imported"), "{t}");
    assert!(t.contains("PIN tries left:\t2"), "{t}");
    ok(
        &p,
        &p.ypt(&[
            "-a",
            "read-certificate",
            "-s",
            "9d",
            "-o",
            &path("again.pem"),
        ]),
        "read-certificate",
    );
    assert_eq!(
        std::fs::read_to_string(path("again.pem")).unwrap().trim(),
        std::fs::read_to_string(path("cert.pem")).unwrap().trim()
    );
    for (slot, cert) in [("9d", "cert.pem"), ("9a", "imp.crt")] {
        let t = ok(
            &p,
            &p.ypt(&[
                "-a",
                "verify-pin",
                "-P",
                "24680135",
                "-a",
                "test-signature",
                "-s",
                slot,
                "-i",
                &path(cert),
            ]),
            "test-signature after restart",
        );
        assert!(t.contains("Successful ECDSA verification"), "{slot}: {t}");
    }
    // The state file: one per card under the data directory, mode 0600, format version 1.
    let dir = p.data("piv");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|f| f.path().extension().is_some_and(|e| e == "json"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    use std::os::unix::fs::PermissionsExt;
    let meta = files[0].metadata().unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let state = std::fs::read_to_string(files[0].path()).unwrap();
    assert!(
        state.contains("\"version\": 1") && state.contains("\"9d\""),
        "{state}"
    );

    // A second vccid for the same card is refused while the first runs (the state's lock).
    let o = p
        .pcscd
        .command("timeout")
        .args([
            "20",
            VCCID,
            "--vpcd",
            "127.0.0.1:35963",
            "--card",
            "emulated,profile=piv",
        ])
        .arg("--data-dir")
        .arg(p.data(""))
        .output_within(testkit::TOOL_TIMEOUT)
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("another vccid is serving this card"),
        "{}",
        text(&o)
    );
    // A state file that fails to parse stops vccid with its path, and is left as it was.
    p.pcscd.stop_child("vccid-2", "TERM");
    std::fs::write(files[0].path(), "{ not json").unwrap();
    let o = p
        .pcscd
        .command(VCCID)
        .args([
            "--vpcd",
            "127.0.0.1:35963",
            "--card",
            "emulated,profile=piv",
            "--data-dir",
        ])
        .arg(p.data(""))
        .output_within(testkit::TOOL_TIMEOUT)
        .unwrap();
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains(&files[0].path().display().to_string())
            && t.contains("not a vccid PIV state file"),
        "{t}"
    );
    assert_eq!(
        std::fs::read_to_string(files[0].path()).unwrap(),
        "{ not json"
    );
}

#[test]
fn ykcs11_lists_the_piv_objects_and_signs() {
    let p = Piv::with_reader("emulated,profile=piv", Some(YUBICO_READER));
    let module = ykcs11();
    let t = ok(
        &p,
        &p.tool("pkcs11-tool", &["--module", module, "-L"]),
        "ykcs11 -L",
    );
    assert!(t.contains(YUBICO_READER), "{t}");
    let t = ok(
        &p,
        &p.tool(
            "pkcs11-tool",
            &["--module", module, "--login", "--pin", "123456", "-O"],
        ),
        "ykcs11 -O",
    );
    for label in [
        "X.509 Certificate for PIV Authentication",
        "X.509 Certificate for Digital Signature",
        "X.509 Certificate for Key Management",
        "X.509 Certificate for Card Authentication",
        "Private key for PIV Authentication",
        "Private key for Card Authentication",
    ] {
        assert!(t.contains(label), "{label}: {t}");
    }
    assert!(t.contains("CN=cert1") || t.contains("cert1"), "{t}");
    // RSA with the 9A key (ykcs11 id 01) and ECDSA with the 9E key (id 04), checked by OpenSSL.
    for (id, mech, cert) in [
        ("01", "SHA256-RSA-PKCS", "cert1"),
        ("04", "ECDSA-SHA256", "piv-ecc"),
    ] {
        let cert = p.data(&format!("default/{cert}.crt.pem"));
        p.pcscd
            .sign_and_verify_with(module, mech, id, "123456", &cert, &[])
            .unwrap_or_else(|e| panic!("ykcs11 {id}: {e}\n{}", p.vccid_log()));
    }
}

#[test]
fn cac_plus_piv_opensc_picks_piv_first_and_cac_when_told() {
    let p = Piv::with_card("emulated,profile=cac+piv");
    let t = ok(&p, &p.tool("opensc-tool", &["-n"]), "opensc-tool -n");
    assert!(t.contains("Personal Identity Verification Card"), "{t}");
    let t = ok(&p, &p.tool("pkcs15-tool", &["-D"]), "pkcs15-tool -D (PIV)");
    assert!(t.contains("Certificate for Card Authentication"), "{t}");
    assert!(
        t.contains("Private EC Key [CARD AUTH key]") || t.contains("CARD AUTH"),
        "{t}"
    );
    // The CAC applets of the same card, through OpenSC's cac driver.
    let mut cmd = p.pcscd.command("pkcs15-tool");
    cmd.arg("-D").env("OPENSC_DRIVER", "cac");
    let o = cmd.output_within(testkit::TOOL_TIMEOUT).unwrap();
    let t = ok(&p, &o, "pkcs15-tool -D (CAC)");
    assert!(t.contains("Manufacturer ID: Common Access Card"), "{t}");
    for label in [
        "CAC ID Certificate",
        "CAC Email Signature Certificate",
        "CAC Email Encryption Certificate",
    ] {
        assert!(
            t.contains(&format!("Private RSA Key [{label}]")),
            "{label}: {t}"
        );
    }
    assert_eq!(t.matches("Private RSA Key").count(), 3, "{t}");
    assert!(!t.contains("EC Key"), "the CAC side is RSA-only: {t}");
    let mut cmd = p.pcscd.command("opensc-tool");
    cmd.arg("-n").env("OPENSC_DRIVER", "cac");
    let t = ok(
        &p,
        &cmd.output_within(testkit::TOOL_TIMEOUT).unwrap(),
        "opensc-tool -n (CAC)",
    );
    assert!(t.contains("Common Access Card"), "{t}");
    // Signatures from both sides with one key store: PIV 9A (OpenSC id 01), then the CAC ID
    // certificate's key (id 0001 in OpenSC's cac driver), each application with its own PIN
    // (PIV 123456, CAC 12345678, as on their own; `pin=` sets both).
    let cert1 = p.data("default/cert1.crt.pem");
    p.pcscd
        .sign_and_verify("01", "123456", &cert1)
        .unwrap_or_else(|e| panic!("PIV: {e}\n{}", p.vccid_log()));
    p.pcscd
        .sign_and_verify_env("0001", "12345678", &cert1, &[("OPENSC_DRIVER", "cac")])
        .unwrap_or_else(|e| panic!("CAC: {e}\n{}", p.vccid_log()));
}

/// Base64 decoding by OpenSSL (the tests have no base64 crate).
fn openssl_base64_decode(b64: &str, dir: &std::path::Path) -> Vec<u8> {
    let (i, o) = (dir.join("b64.txt"), dir.join("b64.bin"));
    std::fs::write(&i, format!("{b64}\n")).unwrap();
    openssl(&[
        "base64",
        "-d",
        "-A",
        "-in",
        i.to_str().unwrap(),
        "-out",
        o.to_str().unwrap(),
    ]);
    std::fs::read(o).unwrap()
}

/// yubico-piv-tool's ECDSA test signature and ECDH on slot 9A.
fn ecc_checks_on_9a(p: &Piv, cert: &std::path::Path) {
    for (action, good) in [
        ("test-signature", "Successful ECDSA verification"),
        (
            "test-decipher",
            "Successfully performed ECDH exchange with card",
        ),
    ] {
        let t = ok(
            p,
            &p.ypt(&[
                "-a",
                "verify-pin",
                "-P",
                "123456",
                "-a",
                action,
                "-s",
                "9a",
                "-i",
                cert.to_str().unwrap(),
            ]),
            action,
        );
        assert!(t.contains(good), "{action}: {t}");
    }
}

#[test]
fn ecc_keys_from_a_softhsm2_token_and_an_nss_database() {
    let d = tempfile::tempdir().unwrap();
    let hsm = d.path().join("hsm");
    std::fs::create_dir(&hsm).unwrap();
    let conf = testkit::softhsm_ec_token(&hsm).expect("SoftHSM2 token");
    let pin = d.path().join("pin");
    std::fs::write(&pin, "77777777\n").unwrap();
    let card = format!(
        "emulated,profile=piv,backend=pkcs11,module={},token=vccid-ec,token-pin-file={}",
        testkit::SOFTHSM2,
        pin.display()
    );
    let pcscd = PrivatePcscd::start().expect("private pcscd starts");
    let mut p = Piv {
        pcscd,
        card,
        env: vec![("SOFTHSM2_CONF".into(), conf.display().to_string())],
        log: String::new(),
    };
    p.spawn_vccid("vccid");
    // The token's P-256 key in 9A: CKM_ECDSA and CKM_ECDH1_DERIVE inside SoftHSM2.
    let t = ok(&p, &p.ypt(&["-a", "status"]), "status");
    assert!(
        t.contains("Algorithm:\tECCP256") && t.contains("CN=hsm-p256"),
        "{t}"
    );
    ecc_checks_on_9a(&p, &hsm.join("p256.crt.pem"));
    // And through OpenSC: ECDSA-SHA256, verified by OpenSSL.
    p.pcscd
        .sign_and_verify_with(
            testkit::OPENSC_PKCS11,
            "ECDSA-SHA256",
            "01",
            "123456",
            &hsm.join("p256.crt.pem"),
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", p.vccid_log()));

    // An NSS database's P-384 key (certutil -k ec), through softokn.
    let nss = d.path().join("nss");
    std::fs::create_dir(&nss).unwrap();
    testkit::nss_ec_db(&nss).expect("NSS database");
    p.card = format!(
        "emulated,profile=piv,backend=certificates,db=sql:{},cert1=ec384",
        nss.display()
    );
    p.restart("vccid-nss");
    let t = ok(&p, &p.ypt(&["-a", "status"]), "status (NSS)");
    assert!(
        t.contains("Algorithm:\tECCP384") && t.contains("CN=nss-ec384"),
        "{t}"
    );
    ecc_checks_on_9a(&p, &nss.join("ec384.crt.pem"));
}
