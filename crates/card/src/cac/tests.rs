//! Transcript tests: spaced hex in, spaced hex out, against libcacard.md §4 where it pins
//! the bytes, and against this card's documented divergences elsewhere.

use super::*;
use crate::keystore::{DefaultIdentities, FileStore};
use apdu::hex::{h, spaced};
use std::sync::OnceLock;

/// Three RSA-2048 identities generated once per test binary.
fn identities() -> &'static Vec<crate::keystore::FileIdentity> {
    static IDS: OnceLock<Vec<crate::keystore::FileIdentity>> = OnceLock::new();
    IDS.get_or_init(|| {
        let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
        DefaultIdentities::new(dir.path()).ensure().unwrap()
    })
}

fn card() -> CacCard {
    let store = FileStore::open(identities()).unwrap();
    let mut c = CacCard::new(Box::new(store), &CacConfig::default()).unwrap();
    c.power_on();
    c
}

fn cert(i: usize) -> Vec<u8> {
    FileStore::open(identities()).unwrap().identities()[i]
        .cert_der
        .clone()
}

/// Sends each command and compares the whole answer as spaced hex.
fn transcript(card: &mut CacCard, steps: &[(&str, &str)]) {
    for (cmd, want) in steps {
        let got = card.transmit(&h(cmd));
        assert_eq!(spaced(&got), spaced(&h(want)), "command {cmd}");
    }
}

fn tx(card: &mut CacCard, cmd: &str) -> Vec<u8> {
    card.transmit(&h(cmd))
}

const SELECT_CCC: &str = "00 A4 04 00 07 A0 00 00 01 16 DB 00";
const SELECT_ACA: &str = "00 A4 04 00 07 A0 00 00 00 79 03 00";
const SELECT_PKI0: &str = "00 A4 04 00 07 A0 00 00 00 79 01 00";
const LOGIN: &str = "00 20 00 00 08 31 32 33 34 35 36 37 38";

#[test]
fn atr_and_power_cycle() {
    let mut c = card();
    assert_eq!(
        spaced(&c.power_on()),
        "3B 7A 18 00 00 73 66 74 65 20 63 64 31 34 34"
    );
    assert_eq!(c.atr(), c.reset());
    assert!(c.presence().is_present());
}

#[test]
fn select_ccc_and_get_response() {
    let mut c = card();
    transcript(
        &mut c,
        &[
            ("80 56 01 00 00", "69 00"),
            (SELECT_CCC, "61 0D"),
            (
                "00 C0 00 00 0D",
                "6F 0B 84 07 A0 00 00 01 16 DB 00 A5 00 90 00",
            ),
            ("00 C0 00 00 0D", "6A 88"),
            ("00 A4 04 0C 07 A0 00 00 01 16 DB 00", "61 0D"),
            (
                "00 A4 04 00 07 A0 00 00 01 16 DB 00 00",
                "6F 0B 84 07 A0 00 00 01 16 DB 00 A5 00 90 00",
            ),
        ],
    );
}

#[test]
fn ccc_properties() {
    let mut c = card();
    transcript(
        &mut c,
        &[
            (SELECT_CCC, "61 0D"),
            ("80 56 01 00 00", "6C 17"),
            ("80 56 01 00 17", "01 05 10 02 06 02 03 40 01 01 50 0B 41 02 DB 00 42 05 00 36 00 0C 01 90 00"),
            ("80 56 40 00 23", "01 05 10 02 06 02 03 40 01 01 50 0B 41 02 DB 00 42 05 00 36 00 0C 01 39 01 00 3A 07 A0 00 00 00 79 03 00 90 00"),
            ("80 56 02 00 01 01 07", "01 05 10 02 06 02 03 90 00"),
            ("80 56 02 00 02 01 01 00", "6C 0E"),
            ("80 56 01 00", "61 17"),
            ("00 C0 00 00 10", "01 05 10 02 06 02 03 40 01 01 50 0B 41 02 DB 00 61 07"),
            ("00 C0 00 00 07", "42 05 00 36 00 0C 01 90 00"),
        ],
    );
}

#[test]
fn ccc_buffers() {
    let mut c = card();
    let urls: String = (0..11 + 3).map(|_| "F3 10 ").collect();
    transcript(
        &mut c,
        &[
            (SELECT_CCC, "61 0D"),
            ("80 52 00 00 02 01 02", "61 02"),
            ("80 52 00 00 02 01 02 02", "34 00 90 00"),
            (
                "80 52 00 02 02 01 34 34",
                &format!("F0 15 F1 01 F2 01 {urls} F4 01 F5 01 F6 11 F7 00 FA 00 FB 00 FC 00 FD 00 FE 00 90 00"),
            ),
            ("80 52 00 00 02 02 02 02", "0A 01 90 00"),
            ("80 52 01 0C 02 02 00 00", "90 00"),
            ("80 52 01 0D 02 02 00 00", "6A 86"),
        ],
    );
    let v = tx(&mut c, "80 52 00 02 02 02 FF 00");
    // Issue #15: the card identifier is libcacard's RID, manufacturer and card type, then a
    // card ID from the first certificate (libcacard's constant would make every card one card
    // to OpenSC); the rest of the CCC is libcacard's byte for byte.
    assert_eq!(
        spaced(&v[..21]),
        spaced(&applets::card_identifier(&cert(0)))
    );
    assert_eq!(spaced(&v[..7]), spaced(&applets::CCC_CARD_ID[..7]));
    // The three PKI CardURLs follow the eleven fixed ones.
    let off = 21 + 2 + 16 * 11;
    assert_eq!(spaced(&v[off..off + 10]), "A0 00 00 00 79 04 01 00 01 00");
}

/// The card ID OpenSC's `cac` driver takes for the serial number: the CCC's F0 value after
/// RID, manufacturer and card type (`cac_parse_cuid`).
fn opensc_serial(c: &mut CacCard) -> Vec<u8> {
    transcript(c, &[(SELECT_CCC, "61 0D")]);
    let v = tx(c, "80 52 00 02 02 02 FF 00");
    v[7..21].to_vec()
}

#[test]
fn two_key_stores_are_two_cards() {
    let other_dir = tempfile::tempdir().unwrap();
    let other = DefaultIdentities::new(other_dir.path()).ensure().unwrap();
    let mut a = card();
    let mut b = CacCard::new(
        Box::new(FileStore::open(&other).unwrap()),
        &CacConfig::default(),
    )
    .unwrap();
    b.power_on();
    let (sa, sb) = (opensc_serial(&mut a), opensc_serial(&mut b));
    assert_ne!(sa, sb);
    // The same certificates are the same card, in every process.
    assert_eq!(opensc_serial(&mut card()), sa);
    // GP CPLC's serial differs too.
    let cplc = |c: &mut CacCard| {
        transcript(c, &[("00 A4 04 00 07 A0 00 00 00 03 00 00", "61 1B")]);
        tx(c, "00 CA 9F 7F 00")
    };
    assert_ne!(cplc(&mut a), cplc(&mut b));
}

#[test]
fn libcacard_card_identifier_on_request() {
    let cfg = CacConfig {
        card_identifier: CardIdentifier::Libcacard,
        ..Default::default()
    };
    let mut c = CacCard::new(Box::new(FileStore::open(identities()).unwrap()), &cfg).unwrap();
    c.power_on();
    transcript(&mut c, &[(SELECT_CCC, "61 0D")]);
    let v = tx(&mut c, "80 52 00 02 02 02 FF 00");
    assert_eq!(
        spaced(&v[..21]),
        "A0 00 00 00 79 03 02 40 70 50 72 36 0E 00 00 58 BD 00 2C 19 B5"
    );
}

#[test]
fn pki_properties_and_buffers() {
    let mut c = card();
    let cert = cert(0);
    let n = cert.len();
    let vlen = ((n + 3) as u16).to_le_bytes();
    transcript(
        &mut c,
        &[
            (SELECT_PKI0, "61 0D"),
            ("00 A4 02 00 02 01 00", "90 00"),
            ("00 A4 02 0C 02 01 01", "6A 82"),
            ("00 56 01 00 FF", "6C 20"),
            (
                "00 56 01 00 20",
                &format!(
                    "01 05 10 02 06 02 03 40 01 01 51 14 41 02 01 00 42 05 00 0C 00 {} 43 04 06 20 01 01 26 01 01 90 00",
                    spaced(&vlen)
                ),
            ),
            ("00 52 00 00 02 01 02", "61 02"),
            ("00 C0 00 00 02", "0A 00 90 00"),
            (
                "00 52 00 02 02 01 0A",
                "61 0A",
            ),
            (
                "00 C0 00 00 0A",
                &format!("71 01 70 FF {} 72 00 FE 00 90 00", spaced(&(n as u16).to_le_bytes())),
            ),
        ],
    );
    // The whole V buffer in 240-byte pieces, as OpenSC reads it.
    let mut v = Vec::new();
    let total = n + 3;
    let mut off = 0;
    while off < total {
        let k = (total - off).min(240);
        let cmd = apdu::CommandBuf::new(0, 0x52, (off >> 8) as u8, off as u8)
            .data(vec![0x02, k as u8])
            .le(k as u32);
        let r = c.transmit(&cmd.to_bytes().unwrap());
        assert_eq!(&r[r.len() - 2..], &[0x90, 0x00]);
        v.extend_from_slice(&r[..r.len() - 2]);
        off += k;
    }
    assert_eq!(&v[..2], &((n + 1) as u16).to_le_bytes()[..]);
    assert_eq!(v[2], 0x00);
    assert_eq!(&v[3..], &cert[..]);
}

#[test]
fn verify_counts_tries_and_blocks() {
    let mut c = card();
    transcript(
        &mut c,
        &[
            ("00 20 00 00", "63 C3"),
            ("00 20 01 00", "6A 00"),
            ("00 20 00 80 00", "6A 00"),
            (LOGIN, "90 00"),
            ("00 20 00 00", "90 00"),
            ("00 20 00 00 08 31 32 33 34 35 36 37 39", "63 C2"),
            ("00 20 00 00", "63 C2"),
            ("00 20 00 00 04 31 32 33 34", "63 C1"),
        ],
    );
    c.power_off();
    c.power_on();
    transcript(
        &mut c,
        &[
            ("00 20 00 00", "63 C1"),
            ("00 20 00 00 06 FF FF FF FF FF FF", "63 C0"),
            ("00 20 00 00", "69 83"),
            (LOGIN, "69 83"),
            ("00 20 00 00", "69 83"),
        ],
    );
    c.reset();
    transcript(&mut c, &[(LOGIN, "69 83")]);
}

#[test]
fn pin_padding_and_logout_on_power_cycle() {
    let mut c = card();
    transcript(
        &mut c,
        &[("00 20 00 00 08 31 32 33 34 35 36 37 38", "90 00")],
    );
    assert!(c.is_logged_in());
    c.power_off();
    assert!(!c.is_logged_in());
    c.power_on();
    // 8-byte FF padding is stripped; the counter returns to 3 after success.
    let cfg = CacConfig {
        pin: zeroize::Zeroizing::new(b"1234".to_vec()),
        ..Default::default()
    };
    let mut c2 = CacCard::new(Box::new(FileStore::open(identities()).unwrap()), &cfg).unwrap();
    transcript(
        &mut c2,
        &[
            ("00 20 00 00 08 39 39 39 39 FF FF FF FF", "63 C2"),
            ("00 20 00 00 08 31 32 33 34 FF FF FF FF", "90 00"),
            ("00 20 00 00 08 39 39 39 39 FF FF FF FF", "63 C2"),
        ],
    );
}

fn spki_der(cert: &[u8]) -> Vec<u8> {
    use der::{Decode, Encode};
    let c = x509_cert::Certificate::from_der(cert).unwrap();
    c.tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .unwrap()
}

fn verify_sig(cert: &[u8], msg: &[u8], sig: &[u8]) {
    use der::Decode;
    let c = x509_cert::Certificate::from_der(cert).unwrap();
    let pk = c
        .tbs_certificate()
        .subject_public_key_info()
        .subject_public_key
        .raw_bytes()
        .to_vec();
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        pk,
    )
    .verify(msg, sig)
    .expect("signature verifies with the certificate's key");
}

#[test]
fn sign_one_shot_and_chained() {
    let mut c = card();
    let block = crate::keystore::testutil::pkcs1_sha256_block(b"data to sign", 256);
    transcript(
        &mut c,
        &[
            (SELECT_ACA, "61 0D"),
            (LOGIN, "90 00"),
            (SELECT_PKI0, "61 0D"),
        ],
    );
    let mut one = h("80 42 00 00 00 01 00");
    one.extend_from_slice(&block);
    assert_eq!(spaced(&c.transmit(&one)), "61 00");
    let r = tx(&mut c, "00 C0 00 00 00");
    assert_eq!((r.len(), &r[256..]), (258, &[0x90, 0x00][..]));
    verify_sig(&cert(0), b"data to sign", &r[..256]);
    // Chained as OpenSC sends it: 240 bytes with P1=80, then 16 with P1=00.
    let mut first = h("00 42 80 00 F0");
    first.extend_from_slice(&block[..240]);
    let mut last = h("00 42 00 00 10");
    last.extend_from_slice(&block[240..]);
    assert_eq!(spaced(&c.transmit(&first)), "90 00");
    assert_eq!(spaced(&c.transmit(&last)), "61 00");
    let r2 = tx(&mut c, "00 C0 00 00 00");
    assert_eq!(&r2[..], &r[..]);
    // Short Le=00 returns the signature inline.
    last.push(0x00);
    c.transmit(&first);
    assert_eq!(&c.transmit(&last)[..], &r[..]);
}

#[test]
fn decrypt_recovers_pkcs1_plaintext() {
    let mut c = card();
    let cert2 = cert(2);
    let key = aws_lc_rs::rsa::PublicEncryptingKey::from_der(&spki_der(&cert2)).unwrap();
    let enc = aws_lc_rs::rsa::Pkcs1PublicEncryptingKey::new(key).unwrap();
    let mut ct = vec![0u8; 256];
    let ct = enc.encrypt(b"1234567890\n", &mut ct).unwrap().to_vec();
    transcript(
        &mut c,
        &[
            (LOGIN, "90 00"),
            ("00 A4 04 00 07 A0 00 00 00 79 01 02", "61 0D"),
        ],
    );
    let mut cmd = h("80 42 00 00 00 01 00");
    cmd.extend_from_slice(&ct);
    assert_eq!(spaced(&c.transmit(&cmd)), "61 00");
    let r = tx(&mut c, "00 C0 00 00 00");
    assert_eq!(r.len(), 258);
    assert_eq!(&r[..2], &[0x00, 0x02]);
    assert_eq!(&r[256 - 12..256], b"\x001234567890\n");
}

#[test]
fn sign_errors() {
    let mut c = card();
    let block = crate::keystore::testutil::pkcs1_sha256_block(b"x", 256);
    let mut one = h("80 42 00 00 00 01 00");
    one.extend_from_slice(&block);
    transcript(&mut c, &[(SELECT_PKI0, "61 0D")]);
    assert_eq!(spaced(&c.transmit(&one)), "69 82", "no login");
    transcript(&mut c, &[(LOGIN, "90 00")]);
    let mut short = h("80 42 00 00 FF");
    short.extend_from_slice(&block[..255]);
    assert_eq!(spaced(&c.transmit(&short)), "69 84", "wrong length");
    transcript(
        &mut c,
        &[
            ("80 42 00 01 01 00", "6A 86"),
            ("80 42 40 00 01 00", "6A 86"),
            ("00 58 00 00 00", "69 85"),
            ("00 4C 00 00 00", "6D 00"),
            ("00 84 00 00 08 00", "67 00"),
        ],
    );
    // Input larger than any modulus is refused and forgotten.
    let mut big = h("80 42 80 00 FF");
    big.extend_from_slice(&[1; 255]);
    for _ in 0..4 {
        c.transmit(&big);
    }
    assert_eq!(spaced(&c.transmit(&big)), "69 84");
    // A value not below the modulus.
    let mut over = h("80 42 00 00 00 01 00");
    over.extend_from_slice(&[0xFF; 256]);
    assert_eq!(spaced(&c.transmit(&over)), "69 84");
}

#[test]
fn get_challenge_works_everywhere() {
    let mut c = card();
    let a = tx(&mut c, "00 84 00 00 08");
    let b = tx(&mut c, "00 84 00 00 08");
    assert_eq!((a.len(), &a[8..]), (10, &[0x90, 0x00][..]));
    assert_ne!(a, b);
    transcript(&mut c, &[(SELECT_PKI0, "61 0D")]);
    assert_eq!(tx(&mut c, "00 84 00 00 00").len(), 258);
    // An extended Le asks for more than 256 bytes at once.
    let big = tx(&mut c, "00 84 00 00 00 10 00");
    assert_eq!((big.len(), &big[4096..]), (4098, &[0x90, 0x00][..]));
    transcript(
        &mut c,
        &[("00 84 00 00", "67 00"), ("00 84 01 00 08", "6A 86")],
    );
}

#[test]
fn gp_and_msft_applets() {
    let mut c = card();
    let serial = {
        use sha2::Digest;
        sha2::Sha256::digest(cert(0))[..6].to_vec()
    };
    transcript(
        &mut c,
        &[
            ("00 A4 04 00 07 A0 00 00 00 03 00 00", "61 1B"),
            ("00 C0 00 00 00", "6F 19 84 08 A0 00 00 00 03 00 00 00 A5 0D 9F 6E 06 12 91 51 81 01 00 9F 65 01 FF 90 00"),
            (
                "00 CA 9F 7F 00",
                &format!(
                    "9F 7F 2A 00 05 00 45 D0 01 40 21 01 01 07 4F {} 47 92 72 05 16 73 72 05 16 74 72 05 00 00 0A 40 00 00 00 00 00 09 29 BB 90 00",
                    spaced(&serial)
                ),
            ),
            ("00 CA 00 66 00", "66 31 73 2F 06 07 2A 86 48 86 FC 6B 01 60 0C 06 0A 2A 86 48 86 FC 6B 02 02 02 01 63 09 06 07 2A 86 48 86 FC 6B 03 64 0B 06 09 2A 86 48 86 FC 6B 04 03 10 90 00"),
            ("00 CA 01 02 00", "6A 88"),
            ("00 A4 02 00 02 01 00", "6A 81"),
            ("00 B0 00 00 00", "69 00"),
            ("00 A4 04 00 0B A0 00 00 03 97 43 49 44 5F 01 00", "61 11"),
            ("00 C0 00 00 00", "6F 0F 84 0B A0 00 00 03 97 43 49 44 5F 01 00 A5 00 90 00"),
            ("00 CA 7F 68 00", "30 1D 02 01 00 16 04 4D 53 46 54 30 12 04 10 E2 80 E9 D2 51 88 87 4F 81 D6 4F 25 4E 38 00 1D 90 00"),
            ("00 CA 7F 69 00", "6A 88"),
            ("00 52 00 00 02 01 02", "69 00"),
        ],
    );
}

#[test]
fn aca_properties_and_acr_tables() {
    let mut c = card();
    transcript(
        &mut c,
        &[
            (SELECT_ACA, "61 0D"),
            ("80 56 01 00 00", "6C 07"),
            ("80 56 01 00 07", "01 05 10 02 06 02 02 90 00"),
            ("80 56 40 00 00", "6C 55"),
            ("80 4C 00 00 00", "01 05 10 02 06 02 02 A1 01 0B A0 03 00 00 00 A0 03 01 01 00 A0 03 02 00 1F A0 05 06 06 00 00 01 A0 05 04 04 1F 00 01 A0 07 08 03 00 00 02 00 00 A0 05 09 02 00 00 01 A0 07 0A 03 00 00 02 00 00 A0 05 0B 02 00 00 01 A0 03 10 00 1E A0 03 11 00 1D 90 00"),
            ("80 4C 01 00 01 0A 00", "01 05 10 02 06 02 02 A1 01 01 A0 07 0A 03 00 00 02 00 00 90 00"),
            ("80 4C 01 00 01 0F 00", "6A 88"),
            ("80 4C 12 00 02 DB 00 00", "01 05 10 02 06 02 02 82 08 DB 00 58 00 04 52 00 00 90 00"),
            ("80 4C 12 00 02 DB DB 00", "6A 80"),
            ("80 4C 11 00 07 A0 00 00 00 79 12 11 00", "6A 88"),
            ("80 4C 60 00 00", "1F 00 07 A0 00 00 00 79 03 00 12 00 00 00 1E 00 07 A0 00 00 00 79 03 00 10 01 00 00 1D 00 07 A0 00 00 00 79 03 00 01 00 00 00 90 00"),
            ("80 4C 10 00 00", "61 00"),
            ("80 52 00 00 02 01 02", "6D 00"),
            ("80 58 00 00 00", "6D 00"),
        ],
    );
    for p1 in [
        "11 00 07 A0 00 00 00 79 12 02",
        "20 00",
        "21 00",
        "40 00",
        "41 00",
        "50 00",
        "61 00",
    ] {
        let r = tx(&mut c, &format!("80 4C {p1} 00"));
        assert_eq!(
            &r[r.len() - 2..],
            &[0x90, 0x00],
            "GET ACR {p1}: {}",
            spaced(&r)
        );
    }
    // The service table lists the static applets and the three PKI applets (93 entries).
    let r = tx(&mut c, "80 4C 21 00 00");
    let entries = apdu::simpletlv::iter(&r[..r.len() - 2])
        .filter(|t| t.as_ref().unwrap().tag == 0x93)
        .count();
    assert_eq!(entries, 15);
}

#[test]
fn libcacard_invalid_apdu_suite() {
    let mut c = card();
    // invalid-properties-apdu
    transcript(
        &mut c,
        &[
            (SELECT_CCC, "61 0D"),
            ("80 56 00 00 00", "6A 86"),
            ("80 56 01 00 02 00 00", "69 84"),
            ("80 56 01 01 00", "6A 86"),
            ("80 56 02 00 00", "69 84"),
            ("80 56 02 00 02 00 FF", "6A 88"),
            ("80 56 88 00 02", "6A 86"),
            // invalid-select-apdu
            ("00 A4 02 00 00", "69 84"),
            ("00 A4 02 00 07 A0 00 00 00 79 01 00", "69 84"),
            ("00 A4 02 00 02 DB DB", "6A 82"),
            // invalid-instruction
            ("00 4C 00 00 00", "6D 00"),
            ("00 58 00 00 00", "69 00"),
            ("00 22 00 00 00", "6D 00"),
        ],
    );
    // invalid-read-buffer, for CCC, PKI 0, PKI 1, Person Instance and 02F0.
    for sel in [
        SELECT_CCC,
        SELECT_PKI0,
        "00 A4 04 00 07 A0 00 00 00 79 01 01",
        "00 A4 04 00 07 A0 00 00 00 79 02 00",
        "00 A4 04 00 07 A0 00 00 00 79 02 F0",
    ] {
        transcript(
            &mut c,
            &[
                (sel, "61 0D"),
                ("00 52 00 00 00", "69 84"),
                ("00 52 00 00 04 00 00 00 00", "69 84"),
                ("00 52 00 00 02 06 00", "69 84"),
                ("00 52 08 08 02 01 00", "6A 86"),
                ("00 52 08 08 02 02 00", "6A 86"),
            ],
        );
    }
    // invalid-acr
    transcript(
        &mut c,
        &[
            (SELECT_ACA, "61 0D"),
            ("00 4C 00 FF 00", "6A 86"),
            ("00 4C 00 00 02 00 00", "69 84"),
            ("00 4C 01 00 02 00 00", "69 84"),
            ("00 4C 10 00 02 00 00", "69 84"),
            ("00 4C 11 00 02 00 00", "69 84"),
            ("00 4C 12 00 01 00", "69 84"),
            ("00 4C 20 00 01 00", "69 84"),
            ("00 4C 21 00 01 00", "69 84"),
            ("00 4C 77 00", "69 00"),
        ],
    );
}

#[test]
fn empty_and_passthrough_applets() {
    let mut c = card();
    for (aid, props) in [
        (
            "02 FB",
            "01 05 10 02 06 02 03 40 01 01 50 0E 41 02 02 FB 42 05 01 60 00 60 00 26 01 01",
        ),
        (
            "12 01",
            "01 05 10 02 06 02 03 40 01 01 50 0E 41 02 12 01 42 05 01 60 00 60 00 26 01 01",
        ),
        (
            "02 00",
            "01 05 10 02 06 02 03 40 01 01 50 0E 41 02 02 00 42 05 00 60 00 60 00 26 01 01",
        ),
        ("02 F1", "01 05 10 02 06 02 03 40 01 00"),
    ] {
        transcript(
            &mut c,
            &[
                (&format!("00 A4 04 00 07 A0 00 00 00 79 {aid}"), "61 0D"),
                ("80 56 01 00 00", &format!("6C {:02X}", h(props).len())),
                ("80 56 01 00", &format!("61 {:02X}", h(props).len())),
                ("00 C0 00 00 00", &format!("{props} 90 00")),
                ("80 52 00 00 02 01 02 02", "00 00 90 00"),
                ("80 52 00 00 02 02 02 02", "00 00 90 00"),
            ],
        );
    }
    transcript(
        &mut c,
        &[
            ("00 A4 04 00 07 A0 00 00 01 16 30 00", "61 0D"),
            ("00 A4 02 00 02 60 30", "90 00"),
            ("00 A4 02 00 02 90 00", "90 00"),
            ("00 A4 02 00 02 90 90", "6A 82"),
            ("80 56 01 00 00", "6C 4A"),
        ],
    );
}

#[test]
fn dispatcher_rules() {
    let mut c = card();
    transcript(
        &mut c,
        &[
            // Malformed lengths.
            ("00 A4 04", "67 00"),
            ("00 A4 04 00 05 A0", "67 00"),
            // A failed SELECT leaves no applet selected.
            (SELECT_CCC, "61 0D"),
            ("00 A4 04 00 07 62 76 01 FF 00 00 00", "6A 82"),
            ("80 56 01 00 00", "69 00"),
            // Partial AIDs are not found; select of MF is not supported.
            ("00 A4 04 00 06 A0 00 00 01 16 DB", "6A 82"),
            ("00 A4 00 00 02 3F 00", "6A 81"),
            // Secure messaging and proprietary classes at the ISO layer.
            ("0C A4 04 00 07 A0 00 00 01 16 DB 00", "68 82"),
            ("D0 A4 04 00 07 A0 00 00 01 16 DB 00", "69 00"),
            ("00 B0 00 00 00", "69 00"),
            // Any other instruction drops a pending GET RESPONSE buffer.
            (SELECT_CCC, "61 0D"),
            ("80 56 01 00", "61 17"),
            ("00 B0 00 00 00", "6D 00"),
            ("00 C0 00 00 00", "6A 88"),
            // A pending buffer is replaced by the next one.
            ("00 52 00 00 02 01 02", "61 02"),
            ("00 52 00 00 02 01 02", "61 02"),
            ("00 C0 00 00 02", "34 00 90 00"),
            // Logical channel 1 has its own selection.
            ("01 A4 04 00 07 A0 00 00 00 79 03 00", "61 0D"),
            ("81 4C 01 00 01 0F 00", "6A 88"),
            ("80 56 01 00 00", "6C 17"),
        ],
    );
}

#[test]
fn too_many_or_no_certificates() {
    struct Many(Vec<crate::keystore::Identity>);
    impl KeyStore for Many {
        fn identities(&self) -> &[crate::keystore::Identity] {
            &self.0
        }
        fn rsa_raw(&mut self, _: usize, _: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, KeyError> {
            Err(KeyError::NotLoggedIn)
        }
    }
    let one = FileStore::open(identities()).unwrap().identities()[0].clone();
    assert!(matches!(
        CacCard::new(Box::new(Many(vec![])), &CacConfig::default()),
        Err(CacError::NoIdentities)
    ));
    assert!(matches!(
        CacCard::new(Box::new(Many(vec![one.clone(); 17])), &CacConfig::default()),
        Err(CacError::TooMany(17))
    ));
    let mut c = CacCard::new(Box::new(Many(vec![one; 16])), &CacConfig::default()).unwrap();
    transcript(
        &mut c,
        &[
            ("00 A4 04 00 07 A0 00 00 00 79 01 0F", "61 0D"),
            ("00 A4 04 00 07 A0 00 00 00 79 01 10", "6A 82"),
        ],
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn shared() -> &'static std::sync::Mutex<CacCard> {
        static C: OnceLock<std::sync::Mutex<CacCard>> = OnceLock::new();
        C.get_or_init(|| std::sync::Mutex::new(card()))
    }

    proptest! {
        #[test]
        fn any_bytes_get_a_status_word(
            prefix in proptest::sample::select(vec![SELECT_CCC, SELECT_ACA, SELECT_PKI0, LOGIN, "00 A4 04 00 07 A0 00 00 00 03 00 00"]),
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut c = shared().lock().unwrap();
            c.transmit(&h(prefix));
            let r = c.transmit(&bytes);
            prop_assert!(r.len() >= 2);
        }

        #[test]
        fn cac_instructions_with_any_parameters(
            cla in proptest::sample::select(vec![0x00u8, 0x80, 0x10, 0x0C, 0xFF]),
            ins in proptest::sample::select(vec![0xA4u8, 0x56, 0x52, 0x58, 0x4C, 0x42, 0x20, 0xC0, 0x84, 0xCA]),
            p1 in any::<u8>(), p2 in any::<u8>(),
            data in proptest::collection::vec(any::<u8>(), 0..260),
            le in proptest::option::of(1u32..=65536),
        ) {
            let mut c = shared().lock().unwrap();
            let cmd = apdu::CommandBuf { cla, ins, p1, p2, data, le };
            let r = c.transmit(&cmd.to_bytes().unwrap());
            prop_assert!(r.len() >= 2);
        }
    }
}
