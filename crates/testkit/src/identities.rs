//! Test identities and signature checks: RSA and ECC keys with self-signed certificates made
//! by OpenSSL, NSS's certutil/pk12util and SoftHSM2 (the key stores vccid loads from), and the
//! `openssl dgst -verify` check every signing test ends with.

use crate::process::output;
use crate::{run, text, Result, SOFTHSM2, TOOL_TIMEOUT};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Writes the public key of a PEM certificate to `out` (`openssl x509 -pubkey`).
pub fn pubkey_pem(cert: &Path, out: &Path) -> Result<()> {
    let o = run(Command::new("openssl")
        .args(["x509", "-pubkey", "-noout", "-in"])
        .arg(cert))?;
    std::fs::write(out, o.stdout).map_err(|e| e.to_string())
}

/// Three self-signed RSA-2048 identities CN=cert1..cert3 as PEM files made by OpenSSL:
/// `certN.crt.pem`, `certN.key.pem` (PKCS#8) and `certN.crt.der` in `dir`.
pub fn openssl_identities(dir: &Path) -> Result<()> {
    for n in 1..=3 {
        let key = dir.join(format!("cert{n}.key.pem"));
        let crt = dir.join(format!("cert{n}.crt.pem"));
        run(Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj",
            ])
            .arg(format!("/CN=cert{n}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&crt))?;
        private(&key)?;
        run(Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&crt)
            .arg("-out")
            .arg(dir.join(format!("cert{n}.crt.der"))))?;
    }
    Ok(())
}

/// The seed's NSS database: `certutil -d sql:DIR -x -t "CT,CT,CT" -S -s "CN=certN" -n certN`
/// for N = 1..3, with an empty password (or `password`), plus `certN.crt.pem` exports.
pub fn nss_db(dir: &Path, password: Option<&str>) -> Result<()> {
    let db = format!("sql:{}", dir.display());
    let pwfile = dir.join("password.txt");
    std::fs::write(&pwfile, password.unwrap_or("")).map_err(|e| e.to_string())?;
    let mut init = Command::new("certutil");
    init.args(["-N", "-d", &db]);
    match password {
        None => init.arg("--empty-password"),
        Some(_) => init.arg("-f").arg(&pwfile),
    };
    run(&mut init)?;
    let noise = dir.join("noise.bin");
    std::fs::write(
        &noise,
        (0..2048u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect::<Vec<u8>>(),
    )
    .map_err(|e| e.to_string())?;
    for n in 1..=3 {
        let mut c = Command::new("certutil");
        c.args(["-d", &db, "-x", "-t", "CT,CT,CT", "-S", "-s"])
            .arg(format!("CN=cert{n}"))
            .args([
                "-n",
                &format!("cert{n}"),
                "-k",
                "rsa",
                "-g",
                "2048",
                "-v",
                "12",
                "-Z",
                "SHA256",
                "-m",
            ])
            .arg(format!("{}", 1000 + n))
            .arg("-z")
            .arg(&noise)
            .arg("-f")
            .arg(&pwfile)
            .stdin(Stdio::null());
        run(&mut c)?;
        let pem =
            run(Command::new("certutil").args(["-d", &db, "-L", "-a", "-n", &format!("cert{n}")]))?;
        std::fs::write(dir.join(format!("cert{n}.crt.pem")), pem.stdout)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Exports `certN` of an NSS database made by [`nss_db`] (empty password) as `certN.nss.p12`
/// with NSS's own `pk12util`, PKCS#12 password `password`.
pub fn nss_pkcs12(dir: &Path, password: &str) -> Result<()> {
    let db = format!("sql:{}", dir.display());
    for n in 1..=3 {
        run(Command::new("pk12util")
            .args(["-d", &db, "-n", &format!("cert{n}"), "-o"])
            .arg(dir.join(format!("cert{n}.nss.p12")))
            .args(["-W", password, "-K", ""]))?;
        private(&dir.join(format!("cert{n}.nss.p12")))?;
    }
    Ok(())
}

/// Bundles the PEM identities of [`openssl_identities`] as `certN.p12` with
/// `openssl pkcs12 -export` (OpenSSL 3's defaults: PBES2, AES-256-CBC, PBKDF2-SHA256).
pub fn openssl_pkcs12(dir: &Path, password: &str) -> Result<()> {
    for n in 1..=3 {
        run(Command::new("openssl")
            .args(["pkcs12", "-export", "-inkey"])
            .arg(dir.join(format!("cert{n}.key.pem")))
            .arg("-in")
            .arg(dir.join(format!("cert{n}.crt.pem")))
            .args(["-passout", &format!("pass:{password}"), "-out"])
            .arg(dir.join(format!("cert{n}.p12"))))?;
        private(&dir.join(format!("cert{n}.p12")))?;
    }
    Ok(())
}

/// Mode 0600 on a file holding a private key: vccid refuses one that others may read, and
/// what mode a tool gives its output depends on its version and the umask.
pub fn private(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod 600 {}: {e}", path.display()))
}

/// A SoftHSM2 configuration whose tokens live in `dir/tokens`; returns its path.
fn softhsm_conf(dir: &Path) -> Result<PathBuf> {
    let conf = dir.join("softhsm2.conf");
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).map_err(|e| e.to_string())?;
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\n",
            tokens.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    Ok(conf)
}

/// A SoftHSM2 token "vccid-test" (user PIN 77777777) in `dir` holding three RSA-2048 keys and
/// certificates CN=cert1..3 with CKA_ID 01..03; returns the SOFTHSM2_CONF path.
pub fn softhsm_token(dir: &Path) -> Result<PathBuf> {
    let conf = softhsm_conf(dir)?;
    run(Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            "vccid-test",
            "--so-pin",
            "12345678",
            "--pin",
            "77777777",
        ]))?;
    openssl_identities(dir)?;
    for n in 1..=3 {
        run(Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .arg("--import")
            .arg(dir.join(format!("cert{n}.key.pem")))
            .args([
                "--token",
                "vccid-test",
                "--label",
                &format!("cert{n}"),
                "--id",
                &format!("0{n}"),
                "--pin",
                "77777777",
            ]))?;
        run(Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", &conf)
            .args([
                "--module",
                SOFTHSM2,
                "--token-label",
                "vccid-test",
                "--login",
                "--pin",
                "77777777",
                "--write-object",
            ])
            .arg(dir.join(format!("cert{n}.crt.der")))
            .args([
                "--type",
                "cert",
                "--id",
                &format!("0{n}"),
                "--label",
                &format!("cert{n}"),
            ]))?;
    }
    Ok(conf)
}

/// Checks with `openssl dgst -sha256 -verify` that `sig` (PKCS#1 v1.5, or an ECDSA signature
/// in DER) over the file `msg` verifies with the public key of the PEM certificate `cert`.
pub fn verify_sha256(cert: &Path, msg: &Path, sig: &Path) -> Result<()> {
    let mut pk = sig.as_os_str().to_owned();
    pk.push(".pub.pem");
    let pk = PathBuf::from(pk);
    pubkey_pem(cert, &pk)?;
    let v = output(
        Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(&pk)
            .arg("-signature")
            .arg(sig)
            .arg(msg),
        TOOL_TIMEOUT,
        "openssl dgst -verify",
    )?;
    if v.status.success() && text(&v).contains("Verified OK") {
        Ok(())
    } else {
        Err(format!(
            "does not verify against {}: {}",
            cert.display(),
            text(&v)
        ))
    }
}

/// An NSS database in `dir` (no password) holding a self-signed ECC certificate and key
/// made by certutil: nickname `ec384`, CN=nss-ec384, secp384r1. Writes `ec384.crt.pem`.
pub fn nss_ec_db(dir: &Path) -> Result<()> {
    let db = format!("sql:{}", dir.display());
    run(Command::new("certutil").args(["-N", "-d", &db, "--empty-password"]))?;
    let noise = dir.join("noise.bin");
    std::fs::write(
        &noise,
        (0..2048u32)
            .map(|i| ((i * 7919) >> 5) as u8)
            .collect::<Vec<u8>>(),
    )
    .map_err(|e| e.to_string())?;
    run(Command::new("certutil")
        .args([
            "-d",
            &db,
            "-x",
            "-t",
            "u,u,u",
            "-S",
            "-s",
            "CN=nss-ec384",
            "-n",
            "ec384",
        ])
        .args([
            "-k",
            "ec",
            "-q",
            "secp384r1",
            "-v",
            "12",
            "-Z",
            "SHA384",
            "-m",
            "4242",
            "-z",
        ])
        .arg(&noise)
        .stdin(Stdio::null()))?;
    let pem = run(Command::new("certutil").args(["-d", &db, "-L", "-a", "-n", "ec384"]))?;
    std::fs::write(dir.join("ec384.crt.pem"), pem.stdout).map_err(|e| e.to_string())
}

/// A SoftHSM2 token "vccid-ec" (user PIN 77777777) in `dir` holding a P-256 key and its
/// self-signed certificate CN=hsm-p256 with CKA_ID 01 (`p256.crt.pem`, `p256.crt.der`);
/// returns the SOFTHSM2_CONF path.
pub fn softhsm_ec_token(dir: &Path) -> Result<PathBuf> {
    let conf = softhsm_conf(dir)?;
    let hsm = |c: &mut Command| {
        c.env("SOFTHSM2_CONF", &conf);
        run(c)
    };
    hsm(Command::new("softhsm2-util").args([
        "--init-token",
        "--free",
        "--label",
        "vccid-ec",
        "--so-pin",
        "12345678",
        "--pin",
        "77777777",
    ]))?;
    let p = |f: &str| dir.join(f);
    run(Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(p("p256.key")))?;
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-new",
            "-subj",
            "/CN=hsm-p256",
            "-days",
            "30",
            "-key",
        ])
        .arg(p("p256.key"))
        .arg("-out")
        .arg(p("p256.crt.pem")))?;
    run(Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(p("p256.crt.pem"))
        .arg("-out")
        .arg(p("p256.crt.der")))?;
    // pkcs11-tool rather than softhsm2-util --import, which leaves CKA_DERIVE false.
    let write = |file: &str, kind: &[&str]| {
        hsm(Command::new("pkcs11-tool")
            .args(["--module", SOFTHSM2, "--token-label", "vccid-ec", "--login"])
            .args(["--pin", "77777777", "--write-object"])
            .arg(p(file))
            .args(kind)
            .args(["--id", "01", "--label", "p256"]))
    };
    write(
        "p256.key",
        &["--type", "privkey", "--usage-sign", "--usage-derive"],
    )?;
    write("p256.crt.der", &["--type", "cert"])?;
    Ok(conf)
}
