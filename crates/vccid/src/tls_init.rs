//! `vccid tls init`: a certificate directory in the layout of QEMU's
//! `-object tls-creds-x509,dir=DIR`, and the QEMU and libvirt lines that use it. Certificate
//! generation (rcgen) is the program's business: the links themselves (`link::tls`) only
//! read such a directory.

use anyhow::{anyhow, bail, Context, Result};
use link::tls::{CA_CERT, CA_KEY, CLIENT_CERT, CLIENT_KEY, SERVER_CERT, SERVER_KEY};
use std::net::IpAddr;
use std::path::Path;
use zeroize::Zeroizing;

/// Generates a `tls-creds-x509` directory: a CA, a server certificate for `names` and `ips`,
/// a client certificate; ECDSA P-256 keys at mode 0600. Refuses to overwrite unless `force`.
pub fn init(dir: &Path, names: &[String], ips: &[IpAddr], days: u32, force: bool) -> Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let files = [
        CA_CERT,
        CA_KEY,
        SERVER_CERT,
        SERVER_KEY,
        CLIENT_CERT,
        CLIENT_KEY,
    ];
    if !force {
        if let Some(f) = files.iter().find(|f| dir.join(f).exists()) {
            bail!(
                "{} exists; remove it or pass --force to replace the whole set",
                dir.join(f).display()
            );
        }
    }
    let now = time::OffsetDateTime::now_utc();
    // An hour back: QEMU refuses certificates whose activation time is in the future, and
    // clocks differ a little.
    let not_before = now - time::Duration::hours(1);
    let not_after = now + time::Duration::days(i64::from(days));
    let base = |cn: &str| -> Result<CertificateParams> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::OrganizationName, "vccid");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.not_before = not_before;
        p.not_after = not_after;
        let mut serial = [0u8; 16];
        aws_lc_rs::rand::fill(&mut serial).map_err(|_| anyhow!("no random numbers"))?;
        serial[0] &= 0x7F;
        p.serial_number = Some(rcgen::SerialNumber::from(serial.to_vec()));
        Ok(p)
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = base("vccid CA")?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, &ca_key);
    // GnuTLS (QEMU) checks a critical keyUsage for both of these, whatever the key type.
    let leaf_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let server_key = KeyPair::generate()?;
    let mut server = base(names.first().map_or("localhost", |s| s.as_str()))?;
    server.subject_alt_names = names
        .iter()
        .map(|n| Ok(SanType::DnsName(n.clone().try_into()?)))
        .chain(ips.iter().map(|ip| Ok(SanType::IpAddress(*ip))))
        .collect::<Result<Vec<_>>>()?;
    server.key_usages = leaf_usages.clone();
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server.signed_by(&server_key, &issuer)?;
    let client_key = KeyPair::generate()?;
    let mut client = base("vccid client")?;
    client.key_usages = leaf_usages;
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &issuer)?;
    let write = |name: &str, text: &str, mode: u32| -> Result<()> {
        card::keystore::write_atomic(&dir.join(name), text.as_bytes(), mode)
            .with_context(|| format!("cannot write {}", dir.join(name).display()))
    };
    write(CA_CERT, &ca_cert.pem(), 0o644)?;
    write(CA_KEY, &Zeroizing::new(ca_key.serialize_pem()), 0o600)?;
    write(SERVER_CERT, &server_cert.pem(), 0o644)?;
    write(
        SERVER_KEY,
        &Zeroizing::new(server_key.serialize_pem()),
        0o600,
    )?;
    write(CLIENT_CERT, &client_cert.pem(), 0o644)?;
    write(
        CLIENT_KEY,
        &Zeroizing::new(client_key.serialize_pem()),
        0o600,
    )?;
    Ok(())
}

/// The QEMU and libvirt lines that use a `tls init` directory.
pub fn usage_lines(dir: &Path, host: &str) -> String {
    usage_lines_for(dir, host, &crate::qemu::Installed::detect())
}

/// [`usage_lines`] for a given QEMU (its reconnect syntax; see [`crate::usb::attach_lines_for`]
/// for the xHCI controller). QEMU's own usb-ccid goes on the machine's default controller
/// (`-usb`: UHCI or EHCI), because it misbehaves on xHCI (the README's "The USB reader").
pub fn usage_lines_for(dir: &Path, host: &str, qemu: &crate::qemu::Installed) -> String {
    let d = dir.display();
    let reconnect = qemu.reconnect().option();
    let note = qemu.note();
    format!(
        "{note}\n\
         QEMU, vccid --usbredir --tls {d} listening (QEMU is the TLS client):\n\
         \x20 -object tls-creds-x509,id=tls0,endpoint=client,dir={d}\n\
         \x20 -device qemu-xhci,id=xhci -chardev socket,id=vccid0,host={host},port=4000,{reconnect},nodelay=on,tls-creds=tls0 -device usb-redir,chardev=vccid0,bus=xhci.0\n\
         QEMU passthru, vscclient --tls {d} connecting (QEMU is the TLS server, client certificates required):\n\
         \x20 -object tls-creds-x509,id=tls0,endpoint=server,verify-peer=on,dir={d}\n\
         \x20 -chardev socket,id=ccid0,host={host},port=2001,server=on,wait=off,tls-creds=tls0\n\
         \x20 -usb -device usb-ccid -device ccid-card-passthru,chardev=ccid0\n\
         libvirt (TLS for chardevs is set in /etc/libvirt/qemu.conf):\n\
         \x20 chardev_tls = 1\n\
         \x20 chardev_tls_x509_cert_dir = \"{d}\"\n\
         \x20 chardev_tls_x509_verify = 1\n\
         libvirt usbredir, in <devices> (the controller in place of the domain's USB controller):\n\
         \x20 <controller type='usb' index='0' model='qemu-xhci'/>\n\
         \x20 <redirdev bus='usb' type='tcp'><source mode='connect' host='{host}' service='4000' tls='yes'><reconnect enabled='yes' timeout='2'/></source></redirdev>\n\
         libvirt passthru, in <devices>:\n\
         \x20 <smartcard mode='passthrough' type='tcp'><source mode='bind' host='{host}' service='2001' tls='yes'/></smartcard>"
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use link::tls::TlsOptions;
    use std::os::unix::fs::PermissionsExt;

    /// A fresh `tls init` directory and the options that use it (also for the TLS stream
    /// tests below).
    pub(crate) fn dir() -> (tempfile::TempDir, TlsOptions) {
        let d = tempfile::tempdir().unwrap();
        init(
            d.path(),
            &["localhost".into()],
            &["127.0.0.1".parse().unwrap()],
            30,
            false,
        )
        .unwrap();
        let o = TlsOptions {
            dir: d.path().to_path_buf(),
            verify_peer: true,
            server_name: None,
            on_certificate: None,
        };
        (d, o)
    }

    /// Issue #17: a TLS key file others may read or write is refused, naming the file and
    /// why, by the server and by the client; and in the very words of the card's key stores.
    #[test]
    fn exposed_tls_keys_are_refused_with_the_reason() {
        let (d, o) = dir();
        assert!(o.server_config().is_ok() && o.client_config().is_ok());
        let set = |f: &str, mode: u32| {
            std::fs::set_permissions(d.path().join(f), std::fs::Permissions::from_mode(mode))
                .unwrap()
        };
        for (mode, how) in [
            (0o644, "readable by others (mode 0644)"),
            (0o640, "readable by others (mode 0640)"),
            (0o620, "writable by others (mode 0620)"),
            (0o666, "readable and writable by others (mode 0666)"),
        ] {
            set(SERVER_KEY, mode);
            let e = o.server_config().unwrap_err().to_string();
            let key = d.path().join(SERVER_KEY);
            assert_eq!(
                e,
                format!(
                    "refusing private key {}: {how}: chmod 600 {}",
                    key.display(),
                    key.display()
                )
            );
            let meta = std::fs::metadata(&key).unwrap();
            assert_eq!(
                link::tls::exposed(&key, &meta),
                card::keystore::exposed(&key, &meta)
            );
            set(SERVER_KEY, 0o600);
            set(CLIENT_KEY, mode);
            let e = o.client_config().unwrap_err().to_string();
            assert!(
                e.contains(CLIENT_KEY) && e.contains(&format!("{how}: chmod 600")),
                "{e}"
            );
            set(CLIENT_KEY, 0o600);
        }
        assert!(o.server_config().is_ok() && o.client_config().is_ok());
    }

    #[test]
    fn init_writes_qemus_layout_with_private_keys_0600() {
        let (d, _) = dir();
        for (f, mode) in [
            (CA_CERT, 0o644),
            (CA_KEY, 0o600),
            (SERVER_CERT, 0o644),
            (SERVER_KEY, 0o600),
            (CLIENT_CERT, 0o644),
            (CLIENT_KEY, 0o600),
        ] {
            let m = std::fs::metadata(d.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(m & 0o777, mode, "{f}");
        }
        let e = init(d.path(), &["localhost".into()], &[], 30, false).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        init(d.path(), &["localhost".into()], &[], 30, true).unwrap();
    }

    #[test]
    fn usage_lines_follow_the_qemu_version_and_have_controllers() {
        let v = |major, minor| crate::qemu::Installed {
            version: Some(crate::qemu::Version {
                major,
                minor,
                micro: 0,
            }),
        };
        let d = Path::new("/etc/vccid/tls");
        let old = usage_lines_for(d, "192.0.2.10", &v(7, 2));
        assert!(
            old.contains("-device qemu-xhci,id=xhci -chardev socket,id=vccid0,host=192.0.2.10,port=4000,reconnect=2,nodelay=on,tls-creds=tls0 -device usb-redir,chardev=vccid0,bus=xhci.0"),
            "{old}"
        );
        assert!(
            old.contains("-usb -device usb-ccid -device ccid-card-passthru"),
            "{old}"
        );
        assert!(
            old.contains("tls='yes'><reconnect enabled='yes' timeout='2'/></source></redirdev>"),
            "{old}"
        );
        assert!(
            old.contains("<controller type='usb' index='0' model='qemu-xhci'/>"),
            "{old}"
        );
        let new = usage_lines_for(d, "192.0.2.10", &v(9, 2));
        assert!(
            new.contains("port=4000,reconnect-ms=2000,nodelay=on"),
            "{new}"
        );
        assert!(!new.contains("reconnect=2,"), "{new}");
    }
}

#[cfg(test)]
mod streams {
    //! TLS over `link`'s streams and listeners, with the certificates `tls init` makes (here
    //! because `link` has no certificate generator: rcgen is the program's).
    use super::tests::dir;
    use link::stream::{Addr, ListenSecurity, Listener, Security, Stream, TlsClient};
    use link::tls::{
        TlsOptions, CA_CERT, CLIENT_CERT, CLIENT_KEY, HANDSHAKE_TIMEOUT, MAX_HANDSHAKES,
    };
    use std::io::{Read, Write};
    use std::time::Duration;

    fn tls_listener(o: &TlsOptions) -> (Listener, Addr) {
        let sec = ListenSecurity {
            tls: Some(o.server_config().unwrap()),
            plaintext: Security::Plaintext,
        };
        let l = sec.bind(&Addr::parse("127.0.0.1:0").unwrap()).unwrap();
        let a = l.local_addr();
        (l, a)
    }

    #[test]
    fn mutual_tls_round_trips_with_a_reader_and_a_writer_on_two_threads() {
        let (_d, o) = dir();
        let (l, addr) = tls_listener(&o);
        let server = std::thread::spawn(move || {
            let mut s = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            // Echo each message from another handle, as the links do.
            let mut buf = vec![0u8; 70000];
            let mut total = 0;
            loop {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break total;
                }
                total += n;
                w.write_all(&buf[..n]).unwrap();
            }
        });
        let c = TlsClient::new(&o, &addr).unwrap();
        let mut s = Stream::connect_with(&addr, Some(&c)).unwrap();
        let mut r = s.try_clone().unwrap();
        // 65 KiB crosses several records and rustls's 16 KiB plaintext limit.
        let big: Vec<u8> = (0..65544u32).map(|i| i as u8).collect();
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; 65544 + 5];
            r.read_exact(&mut got).unwrap();
            got
        });
        s.write_all(&big).unwrap();
        s.write_all(b"hello").unwrap();
        let got = reader.join().unwrap();
        assert_eq!(&got[..65544], &big[..]);
        assert_eq!(&got[65544..], b"hello");
        s.shutdown();
        assert_eq!(server.join().unwrap(), 65544 + 5);
    }

    #[test]
    fn wrong_ca_no_certificate_and_garbage_are_refused() {
        let (_d, o) = dir();
        let (_d2, other) = dir();
        let (l, addr) = tls_listener(&o);
        // A client whose CA does not know the server: refused on our side.
        let e =
            Stream::connect_with(&addr, Some(&TlsClient::new(&other, &addr).unwrap())).unwrap_err();
        assert!(e.is_refusal(), "{e}");
        assert!(e.to_string().contains("invalid peer certificate"), "{e}");
        // A client certificate from another CA, trusting the right server: the server
        // refuses it (in TLS 1.3 the client sees that on its first read).
        let mixed = tempfile::tempdir().unwrap();
        for f in [CLIENT_CERT, CLIENT_KEY] {
            std::fs::copy(other.dir.join(f), mixed.path().join(f)).unwrap();
        }
        std::fs::copy(o.dir.join(CA_CERT), mixed.path().join(CA_CERT)).unwrap();
        let m = TlsOptions {
            dir: mixed.path().to_path_buf(),
            ..o.clone()
        };
        let refused = match Stream::connect_with(&addr, Some(&TlsClient::new(&m, &addr).unwrap())) {
            Err(e) => e.to_string(),
            Ok(mut s) => s.read(&mut [0u8; 16]).unwrap_err().to_string(),
        };
        assert!(refused.contains("alert"), "{refused}");
        // No client certificate at all.
        let none = tempfile::tempdir().unwrap();
        std::fs::copy(o.dir.join(CA_CERT), none.path().join(CA_CERT)).unwrap();
        let n = TlsOptions {
            dir: none.path().to_path_buf(),
            ..o.clone()
        };
        let refused = match Stream::connect_with(&addr, Some(&TlsClient::new(&n, &addr).unwrap())) {
            Err(e) => e.to_string(),
            Ok(mut s) => s.read(&mut [0u8; 16]).unwrap_err().to_string(),
        };
        assert!(refused.contains("alert"), "{refused}");
        // Plaintext garbage: the handshake fails and only that connection closes.
        let mut g = std::net::TcpStream::connect(match &addr {
            Addr::Tcp(a) => *a,
            Addr::Unix(_) => unreachable!(),
        })
        .unwrap();
        g.write_all(b"VSCD\0\0\0\0 not a TLS record at all")
            .unwrap();
        let mut b = Vec::new();
        let _ = g.read_to_end(&mut b);
        // After all that, a good client still gets through.
        let c = TlsClient::new(&o, &addr).unwrap();
        let accepted = std::thread::spawn(move || l.accept().map(|s| s.peer()));
        let s = Stream::connect_with(&addr, Some(&c)).unwrap();
        assert!(accepted.join().unwrap().unwrap().contains("TLS"));
        drop(s);
    }

    #[test]
    fn stalled_handshakes_are_bounded_and_time_out() {
        let (_d, o) = dir();
        let (l, addr) = tls_listener(&o);
        let a = match &addr {
            Addr::Tcp(a) => *a,
            Addr::Unix(_) => unreachable!(),
        };
        let c = TlsClient::new(&o, &addr).unwrap();
        // Connections that never speak hold a handshake slot each; past the bound, a new
        // connection is closed on arrival.
        let mut stalled: Vec<_> = (0..MAX_HANDSHAKES)
            .map(|_| std::net::TcpStream::connect(a).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let e = Stream::connect_with(&addr, Some(&c)).unwrap_err();
        assert!(e.to_string().contains("TLS handshake"), "{e}");
        assert!(!e.is_refusal(), "closed on arrival is no refusal: {e}");
        // Each stalled handshake is dropped after HANDSHAKE_TIMEOUT.
        let t = std::time::Instant::now();
        let first = &mut stalled[0];
        first
            .set_read_timeout(Some(HANDSHAKE_TIMEOUT + Duration::from_secs(5)))
            .unwrap();
        assert_eq!(first.read(&mut [0u8; 8]).unwrap_or(0), 0);
        assert!(t.elapsed() < HANDSHAKE_TIMEOUT + Duration::from_secs(4));
        // Then a good client gets through.
        let accepted = std::thread::spawn(move || l.accept().is_ok());
        Stream::connect_with(&addr, Some(&c)).unwrap();
        assert!(accepted.join().unwrap());
    }
}
