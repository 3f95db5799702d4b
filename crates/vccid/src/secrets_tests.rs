//! Issue #17, secrets, for the program crate (the card crate's own types are checked in
//! crates/card/src/secrets_tests.rs): every type here that holds a PIN, PUK, token PIN,
//! PKCS#12 password or private key wipes it when dropped, checked by the type (a bound on
//! `ZeroizeOnDrop`: taking it away breaks this build), and no `Debug` of a configuration,
//! command line, card specification, control request or state shows a secret in any rendering
//! a log could give it.

use crate::cli::{Args, Cmd, VscclientArgs};
use crate::config::{CardConfig, Config};
use crate::ctl::{CardCmd, CtlCmd};
use crate::secret::{Secret, SpecText, WipedJson};
use crate::spec::{Backend, CardSpec, EmulatedSpec};
use clap::Parser;
use zeroize::{ZeroizeOnDrop, Zeroizing};

/// Compiles only for a type that wipes itself when dropped.
fn zeroized_on_drop<T: ZeroizeOnDrop>() {}
/// The same for a value's type: a field of a type that is not itself `ZeroizeOnDrop`.
fn field_zeroized_on_drop<T: ZeroizeOnDrop>(_: &T) {}

const PIN: &str = "31415926";
const PUK: &str = "27182818";
const TOKEN_PIN: &str = "77665544";
const P12_PASSWORD: &str = "tr0ub4dor&3";

fn token_uri() -> String {
    format!("pkcs11:token=t?module-path=/m&pin-value={TOKEN_PIN}")
}

fn config() -> Config {
    Config::parse(
        &format!(
            "[[card]]\nid = \"a\"\nprofile = \"piv\"\npin = \"{PIN}\"\npuk = \"{PUK}\"\n\n\
             [[card]]\nid = \"t\"\nkeys = \"pkcs11\"\nproperties = {{ uri = \"{}\" }}\n\n\
             [[reader]]\nid = \"r\"\ntransport = \"vpcd\"\ncards = [\"a\"]\n",
            token_uri()
        ),
        "vccid.toml",
    )
    .unwrap()
}

fn emulated(spec: &str) -> EmulatedSpec {
    match crate::spec::parse(spec).unwrap() {
        CardSpec::Emulated(e) => e,
        other => panic!("not emulated: {other:?}"),
    }
}

fn specs() -> Vec<EmulatedSpec> {
    let mut files = emulated("emulated,backend=files,cert1=/a.p12");
    if let Backend::Files(f, _) = &mut files.backend {
        f[0].password = Some(Zeroizing::new(P12_PASSWORD.into()));
    }
    vec![
        emulated(&format!("emulated,profile=cac+piv,pin={PIN},puk={PUK}")),
        emulated(&format!(
            "emulated,backend=pkcs11,pin={PIN},uri={}",
            token_uri()
        )),
        files,
    ]
}

fn vccid(args: &[&str]) -> Args {
    Args::try_parse_from([&["vccid"], args].concat()).unwrap()
}

fn ctl(args: &[&str]) -> CtlCmd {
    match vccid(&[&["ctl"], args].concat()).command {
        Some(Cmd::Ctl(c)) => c.command,
        other => panic!("not ctl: {other:?}"),
    }
}

fn set_pin() -> CtlCmd {
    ctl(&["card", "set-pin", "a", PIN])
}

fn unblock() -> CtlCmd {
    ctl(&["card", "unblock", "a", PIN, "--puk", PUK])
}

fn raw() -> CtlCmd {
    let req = format!(
        r#"{{"execute": "card-unblock", "arguments": {{"card": "a", "pin": "{PIN}", "puk": "{PUK}"}}}}"#
    );
    ctl(&["raw", &req])
}

fn card_add() -> CtlCmd {
    let uri = format!("uri={}", token_uri());
    ctl(&[
        "card",
        "add",
        "t",
        "--keys",
        "pkcs11",
        "--property",
        &format!("pin={PIN}"),
        "--property",
        &uri,
    ])
}

fn key() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

#[test]
fn secret_holding_types_are_zeroized_on_drop() {
    zeroized_on_drop::<Secret>();
    zeroized_on_drop::<SpecText>();
    zeroized_on_drop::<WipedJson>();

    let cfg = config();
    field_zeroized_on_drop(cfg.cards[0].pin.as_ref().unwrap());
    field_zeroized_on_drop(cfg.cards[0].puk.as_ref().unwrap());
    for s in specs() {
        if let Some(p) = &s.pin {
            field_zeroized_on_drop(p);
        }
        if let Some(p) = &s.puk {
            field_zeroized_on_drop(p);
        }
    }
    let args = vccid(&["--card", &format!("emulated,pin={PIN}")]);
    for c in &args.cards {
        field_zeroized_on_drop(c);
    }
    let v = VscclientArgs::try_parse_from([
        "vscclient",
        "--card",
        &format!("emulated,pin={PIN}"),
        "--pin",
        PIN,
        "127.0.0.1:2001",
    ])
    .unwrap();
    field_zeroized_on_drop(v.card.as_ref().unwrap());
    field_zeroized_on_drop(v.pin.as_ref().unwrap());
    let CtlCmd::Card(CardCmd::SetPin(a)) = set_pin() else {
        panic!("not set-pin")
    };
    field_zeroized_on_drop(&a.pin);
    let CtlCmd::Card(CardCmd::Unblock(a)) = unblock() else {
        panic!("not unblock")
    };
    field_zeroized_on_drop(&a.pin);
    field_zeroized_on_drop(a.puk.as_ref().unwrap());
    let CtlCmd::Raw { request } = raw() else {
        panic!("not raw")
    };
    field_zeroized_on_drop(&request);
    let CtlCmd::Card(CardCmd::Add { properties, .. }) = card_add() else {
        panic!("not card add")
    };
    for p in &properties {
        field_zeroized_on_drop(p);
    }
}

fn both<T: std::fmt::Debug>(v: &T) -> Vec<String> {
    vec![format!("{v:?}"), format!("{v:#?}")]
}

#[test]
fn no_secret_in_the_debug_of_any_config_command_line_request_or_state() {
    let key = key();
    let der = key.serialize_der();
    let pem = Zeroizing::new(key.serialize_pem());
    // A base64 line of the PEM: `Debug` escapes the newlines, so the whole text never shows.
    let pem_line = pem.lines().nth(1).unwrap().to_string();
    let secrets: [(&str, &[u8]); 6] = [
        ("PIN", PIN.as_bytes()),
        ("PUK", PUK.as_bytes()),
        ("token PIN", TOKEN_PIN.as_bytes()),
        ("PKCS#12 password", P12_PASSWORD.as_bytes()),
        ("private key (DER)", &der),
        ("private key (PEM)", pem_line.as_bytes()),
    ];
    let cfg = config();
    let runtime = crate::service::Runtime {
        cards: cfg.cards.clone(),
        slots: [("r".to_string(), "a".to_string())].into(),
    };
    let enroll_import = WipedJson(serde_json::json!({
        "execute": "card-enroll",
        "arguments": {"card": "a", "slot": "9a", "action": "import", "key": pem.as_str()},
    }));
    let mut debug: Vec<(String, Vec<String>)> = vec![
        ("Config".into(), both(&cfg)),
        ("ServiceConfig".into(), both(&cfg.service)),
        ("ReaderConfig".into(), both(&cfg.readers[0])),
        ("Runtime".into(), both(&runtime)),
        (
            "Args".into(),
            both(&vccid(&[
                "--card",
                &format!("emulated,profile=piv,pin={PIN},puk={PUK}"),
                "--card",
                &format!("emulated,backend=pkcs11,uri={}", token_uri()),
            ])),
        ),
        ("set-pin".into(), both(&set_pin())),
        ("unblock".into(), both(&unblock())),
        ("raw".into(), both(&raw())),
        ("card add".into(), both(&card_add())),
        ("WipedJson".into(), both(&enroll_import)),
        ("Secret".into(), both(&PIN.parse::<Secret>().unwrap())),
        (
            "SpecText".into(),
            both(
                &format!("emulated,pin={PIN},puk={PUK},uri={}", token_uri())
                    .parse::<SpecText>()
                    .unwrap(),
            ),
        ),
        (
            "TlsOptions".into(),
            both(&link::tls::TlsOptions {
                dir: "/etc/vccid/tls".into(),
                verify_peer: true,
                server_name: None,
                on_certificate: None,
            }),
        ),
    ];
    let cards: Vec<&CardConfig> = cfg.cards.iter().collect();
    for c in cards {
        debug.push((format!("CardConfig {}", c.id.get_ref()), both(c)));
    }
    for s in specs() {
        debug.push(("EmulatedSpec".into(), both(&s)));
        debug.push(("Backend".into(), both(&s.backend)));
        debug.push(("CardSpec".into(), both(&CardSpec::Emulated(s))));
    }
    for (what, texts) in &debug {
        for text in texts {
            for (name, secret) in &secrets {
                for r in testkit::secret_renderings(secret) {
                    assert!(
                        !text.contains(&r),
                        "{what}'s Debug shows the {name} as {r:?}:\n{text}"
                    );
                }
            }
        }
    }
    // The redacted forms are there: the values were in the types, and were left out.
    for what in ["Config", "Args", "set-pin", "unblock", "raw"] {
        let (_, texts) = debug.iter().find(|(w, _)| w == what).unwrap();
        assert!(
            texts[0].contains("redacted") || texts[0].contains("***"),
            "{what}: {}",
            texts[0]
        );
    }
}

/// `runtime.toml` holds the PINs of the cards made at run time: others may not read it.
#[test]
fn an_exposed_runtime_file_is_not_restored() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("runtime.toml");
    std::fs::write(
        &file,
        format!("[[card]]\nid = \"r\"\nephemeral = true\npin = \"{PIN}\"\n"),
    )
    .unwrap();
    let start = || crate::service::Service::start(&Config::default(), dir.path().into(), None);
    let ids = |svc: &crate::service::Service| -> Vec<String> {
        svc.cards().into_iter().map(|c| c.id).collect()
    };
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let svc = start().unwrap();
    assert!(!ids(&svc).contains(&"r".to_string()), "{:?}", ids(&svc));
    drop(svc);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let svc = start().unwrap();
    assert!(ids(&svc).contains(&"r".to_string()), "{:?}", ids(&svc));
}
