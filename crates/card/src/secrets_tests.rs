//! Issue #17, secrets: every type of this crate that holds a PIN, PUK, management key or
//! private key wipes it when dropped, checked by the type (a bound on `ZeroizeOnDrop`, so
//! taking it away breaks this build, not a read of freed memory), and no `Debug` of a
//! configuration or state shows a secret in any rendering a log could give it.

use crate::cac::CacConfig;
use crate::keystore::{CardKey, FileIdentity, KeyKind, Pkcs11Config, TokenSelector};
use crate::piv::{ManagementKey, PinState, PivConfig, SavedKey, State, ALG_AES256};
use crate::Pin;
use std::collections::BTreeMap;
use zeroize::{ZeroizeOnDrop, Zeroizing};

/// Compiles only for a type that wipes itself when dropped.
fn zeroized_on_drop<T: ZeroizeOnDrop>() {}
/// The same for a value's type, to name a field of a type that is not itself
/// `ZeroizeOnDrop` (a configuration built with `..Default::default()`, a state a card takes
/// apart by move: a `Drop` impl would forbid both).
fn field_zeroized_on_drop<T: ZeroizeOnDrop>(_: &T) {}

const PIN: &[u8] = b"31415926";
const PUK: &[u8] = b"27182818";
const MGMT: [u8; 32] = *b"\xA1\xB2\xC3\xD4\xE5\xF6\x07\x18\x29\x3A\x4B\x5C\x6D\x7E\x8F\x90\xA1\xB2\xC3\xD4\xE5\xF6\x07\x18\x29\x3A\x4B\x5C\x6D\x7E\x8F\x91";
const P12_PASSWORD: &str = "tr0ub4dor&3";

#[test]
fn secret_holding_types_are_zeroized_on_drop() {
    zeroized_on_drop::<Pin>();
    zeroized_on_drop::<ManagementKey>();
    zeroized_on_drop::<PinState>();
    zeroized_on_drop::<SavedKey>();
    // CardKey's derive in turn needs its AWS-LC key (PrivateKey, RawRsa, RawEc) to be
    // `ZeroizeOnDrop`.
    zeroized_on_drop::<CardKey>();

    let piv = PivConfig::default();
    field_zeroized_on_drop(&piv.pin);
    field_zeroized_on_drop(&piv.puk);
    field_zeroized_on_drop(&piv.management_key);
    let cac = CacConfig::default();
    field_zeroized_on_drop(&cac.pin);
    let state = state();
    field_zeroized_on_drop(&state.pin);
    field_zeroized_on_drop(&state.puk);
    field_zeroized_on_drop(&state.management_key);
    // The map is not `ZeroizeOnDrop`; each key it drops is.
    for k in state.keys.values() {
        field_zeroized_on_drop(k);
    }
    let files = file_identity();
    if let Some(p) = &files.password {
        field_zeroized_on_drop(p);
    }
    if let Some(p) = &pkcs11().pin {
        field_zeroized_on_drop(p);
    }
    // What a state file is written from and read into.
    field_zeroized_on_drop(&state.to_bytes());
}

fn state() -> State {
    let key = CardKey::generate(KeyKind::Ec(crate::keystore::EcCurve::P256)).unwrap();
    let mut keys = BTreeMap::new();
    keys.insert(
        0x9A,
        SavedKey {
            alg: 0x11,
            origin: 1,
            pin_policy: 2,
            touch_policy: 1,
            der: Zeroizing::new(key.der().to_vec()),
        },
    );
    let pin = |v: &[u8]| PinState {
        value: Zeroizing::new(v.to_vec()),
        tries: 3,
        left: 3,
    };
    State {
        card: "00".repeat(32),
        pin: pin(PIN),
        puk: pin(PUK),
        management_key: ManagementKey::new(ALG_AES256, &MGMT).unwrap(),
        objects: BTreeMap::new(),
        keys,
    }
}

fn file_identity() -> FileIdentity {
    FileIdentity {
        cert: "cert.p12".into(),
        key: None,
        password: Some(Zeroizing::new(P12_PASSWORD.into())),
    }
}

fn pkcs11() -> Pkcs11Config {
    Pkcs11Config {
        module: "/usr/lib/softokn3.so".into(),
        init_reserved: None,
        token: TokenSelector::First,
        pin: Some(Zeroizing::new(String::from_utf8(PIN.to_vec()).unwrap())),
        labels: vec![],
        id: None,
    }
}

fn assert_no_secret(what: &str, debug: &[String], secrets: &[(&str, &[u8])]) {
    for text in debug {
        for (name, secret) in secrets {
            for r in testkit::secret_renderings(secret) {
                assert!(
                    !text.contains(&r),
                    "{what}'s Debug shows the {name} as {r:?}:\n{text}"
                );
            }
        }
    }
}

fn both<T: std::fmt::Debug>(v: &T) -> Vec<String> {
    vec![format!("{v:?}"), format!("{v:#?}")]
}

#[test]
fn no_secret_in_the_debug_of_any_config_or_state() {
    let key = CardKey::generate(KeyKind::Ec(crate::keystore::EcCurve::P256)).unwrap();
    let der = key.der().to_vec();
    let secrets: [(&str, &[u8]); 5] = [
        ("PIN", PIN),
        ("PUK", PUK),
        ("management key", &MGMT),
        ("private key", &der),
        ("PKCS#12 password", P12_PASSWORD.as_bytes()),
    ];
    let mgmt = ManagementKey::new(ALG_AES256, &MGMT).unwrap();
    let piv = PivConfig {
        pin: Zeroizing::new(PIN.to_vec()),
        puk: Zeroizing::new(PUK.to_vec()),
        management_key: mgmt.clone(),
        ..PivConfig::default()
    };
    let cac = CacConfig {
        pin: Zeroizing::new(PIN.to_vec()),
        ..CacConfig::default()
    };
    let state = state();
    // The private key's DER as it sits in the state (another key than `der`'s).
    let state_der = state.keys[&0x9A].der.to_vec();
    let mut all = secrets.to_vec();
    all.push(("state's private key", &state_der));
    assert_no_secret("PivConfig", &both(&piv), &all);
    assert_no_secret("CacConfig", &both(&cac), &all);
    assert_no_secret("State", &both(&state), &all);
    assert_no_secret("PinState", &both(&state.pin), &all);
    assert_no_secret("SavedKey", &both(&state.keys[&0x9A]), &all);
    assert_no_secret("ManagementKey", &both(&mgmt), &all);
    assert_no_secret("Pin", &both(&Pin::new(PIN, 3)), &all);
    assert_no_secret("CardKey", &both(&key), &all);
    assert_no_secret("FileIdentity", &both(&file_identity()), &all);
    assert_no_secret("Pkcs11Config", &both(&pkcs11()), &all);
}
