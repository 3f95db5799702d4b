//! PIV transcript tests: spaced hex in, spaced hex out (SP 800-73-4 Part 2), and every error
//! path leaving the card's state as it was.

use super::*;
use crate::keystore::{DefaultIdentities, FileStore};
use apdu::hex::{h, spaced};
use std::sync::OnceLock;

pub(super) fn identities() -> &'static Vec<crate::keystore::FileIdentity> {
    static IDS: OnceLock<Vec<crate::keystore::FileIdentity>> = OnceLock::new();
    IDS.get_or_init(|| {
        let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
        DefaultIdentities::new(dir.path()).ensure().unwrap()
    })
}

pub(super) fn card() -> PivCard {
    let store = FileStore::open(identities()).unwrap();
    let mut c = PivCard::new(Box::new(store), &PivConfig::default()).unwrap();
    c.power_on();
    c
}

pub(super) fn tx(c: &mut PivCard, cmd: &str) -> Vec<u8> {
    c.transmit(&h(cmd))
}

pub(super) fn sw(r: &[u8]) -> String {
    spaced(&r[r.len() - 2..])
}

pub(super) const SELECT: &str = "00 A4 04 00 09 A0 00 00 03 08 00 00 10 00";
pub(super) const VERIFY_OK: &str = "00 20 00 80 08 31 32 33 34 35 36 FF FF";
pub(super) const VERIFY_BAD: &str = "00 20 00 80 08 31 31 31 31 31 31 FF FF";

#[test]
fn select_answers_the_application_property_template() {
    let mut c = card();
    assert_eq!(
        spaced(&c.power_on()),
        "3B 89 80 01 76 63 63 69 64 20 50 49 56 1C"
    );
    assert_eq!(
        spaced(&tx(&mut c, SELECT)),
        spaced(&h("61 36 4F 06 00 00 10 00 01 00 79 07 4F 05 A0 00 00 03 08 50 09 76 63 63 69 64 20 50 49 56 AC 18 80 01 03 80 01 08 80 01 0A 80 01 0C 80 01 07 80 01 11 80 01 14 06 01 00 90 00"))
    );
    // Another AID: not found, and the PIV commands are refused until PIV is selected again.
    assert_eq!(
        sw(&tx(&mut c, "00 A4 04 00 07 A0 00 00 01 16 DB 00")),
        "6A 82"
    );
    assert_eq!(sw(&tx(&mut c, "00 CB 3F FF 05 5C 03 5F C1 02 00")), "69 85");
    assert_eq!(sw(&tx(&mut c, "00 A4 04 00 05 A0 00 00 03 08")), "90 00");
}

#[test]
fn yubico_vendor_commands_version_and_serial() {
    let mut c = card();
    tx(&mut c, SELECT);
    assert_eq!(spaced(&tx(&mut c, "00 FD 00 00")), "05 04 03 90 00");
    let s = tx(&mut c, "00 F8 00 00");
    assert_eq!(s.len(), 6);
    assert_eq!(u32::from_be_bytes(s[..4].try_into().unwrap()), c.serial());
    // METADATA of 9A (an RSA-2048 key from the store): algorithm, PIN once / touch never,
    // imported, then the public key 04 { 81 n 82 e }.
    let m = tx(&mut c, "00 F7 00 9A 00");
    assert_eq!(
        spaced(&m[..16]),
        "01 01 07 02 02 02 01 03 01 02 04 82 01 09 81 82"
    );
    assert_eq!(sw(&m), "61 17");
    let rest = tx(&mut c, "00 C0 00 00 17");
    assert_eq!(spaced(&rest[rest.len() - 7..]), "82 03 01 00 01 90 00");
    assert_eq!(
        spaced(&tx(&mut c, "00 F7 00 80 00")),
        "01 01 FF 05 01 01 06 02 03 03 90 00"
    );
    assert_eq!(
        spaced(&tx(&mut c, "00 F7 00 9B 00")),
        "01 01 03 02 02 00 01 05 01 01 90 00"
    );
    assert_eq!(sw(&tx(&mut c, "00 F7 00 95 00")), "6A 88");
}

#[test]
fn get_data_objects_and_certificates_with_get_response() {
    let mut c = card();
    tx(&mut c, SELECT);
    // Discovery object: returned as itself (7E), not wrapped in 53.
    assert_eq!(
        spaced(&tx(&mut c, "00 CB 3F FF 03 5C 01 7E 00")),
        spaced(&h(
            "7E 12 4F 0B A0 00 00 03 08 00 00 10 00 01 00 5F 2F 02 40 00 90 00"
        ))
    );
    // Key history: no retired keys.
    assert_eq!(
        spaced(&tx(&mut c, "00 CB 3F FF 05 5C 03 5F C1 0C 00")),
        spaced(&h("53 08 C1 01 00 C2 01 00 FE 00 90 00"))
    );
    let chuid = tx(&mut c, "00 CB 3F FF 05 5C 03 5F C1 02 00");
    assert_eq!(&chuid[..4], &h("53 3B 30 19"));
    assert_eq!(sw(&chuid), "90 00");
    // The 9A certificate: 256 bytes, then 61xx, GET RESPONSE until 9000.
    let mut got = tx(&mut c, "00 CB 3F FF 05 5C 03 5F C1 05 00");
    let mut obj = Vec::new();
    loop {
        let (data, s) = got.split_at(got.len() - 2);
        obj.extend_from_slice(data);
        match s {
            [0x90, 0x00] => break,
            [0x61, n] => got = tx(&mut c, &format!("00 C0 00 00 {n:02X}")),
            other => panic!("{other:02X?}"),
        }
    }
    let (o, _) = ber::parse_one(&obj).unwrap();
    assert_eq!(o.tag, 0x53);
    let cert = FileStore::open(identities()).unwrap().identities()[0]
        .cert_der
        .clone();
    assert_eq!(ber::find(o.value, 0x70).unwrap(), &cert[..]);
    // Unknown object, bad tag list, wrong P1P2.
    assert_eq!(sw(&tx(&mut c, "00 CB 3F FF 05 5C 03 5F C1 0D 00")), "6A 82");
    assert_eq!(sw(&tx(&mut c, "00 CB 3F FF 03 5C 05 5F 00")), "6A 80");
    assert_eq!(sw(&tx(&mut c, "00 CB 00 00 05 5C 03 5F C1 02 00")), "6A 86");
    // GET RESPONSE with nothing pending.
    assert_eq!(sw(&tx(&mut c, "00 C0 00 00 00")), "69 85");
}

#[test]
fn pin_counter_change_block_and_unblock_with_the_puk() {
    let mut c = card();
    tx(&mut c, SELECT);
    assert_eq!(sw(&tx(&mut c, "00 20 00 80")), "63 C3");
    assert_eq!(sw(&tx(&mut c, VERIFY_BAD)), "63 C2");
    assert_eq!(sw(&tx(&mut c, VERIFY_OK)), "90 00");
    assert_eq!(sw(&tx(&mut c, "00 20 00 80")), "90 00", "verified");
    assert_eq!(
        sw(&tx(&mut c, "00 20 FF 80")),
        "90 00",
        "reset the security status"
    );
    assert_eq!(sw(&tx(&mut c, "00 20 00 80")), "63 C3");
    assert_eq!(sw(&tx(&mut c, "00 20 00 80 04 31 32 33 34")), "67 00");
    assert_eq!(
        sw(&tx(&mut c, "00 20 00 81 08 31 32 33 34 35 36 FF FF")),
        "6A 88"
    );
    // CHANGE REFERENCE DATA: old, new.
    assert_eq!(
        sw(&tx(
            &mut c,
            "00 24 00 80 10 31 32 33 34 35 36 FF FF 36 35 34 33 32 31 FF FF"
        )),
        "90 00"
    );
    assert_eq!(sw(&tx(&mut c, VERIFY_OK)), "63 C2");
    assert_eq!(
        sw(&tx(&mut c, "00 20 00 80 08 36 35 34 33 32 31 FF FF")),
        "90 00"
    );
    // Block it.
    for left in ["63 C2", "63 C1", "63 C0"] {
        assert_eq!(sw(&tx(&mut c, VERIFY_BAD)), left);
    }
    assert_eq!(
        sw(&tx(&mut c, "00 20 00 80 08 36 35 34 33 32 31 FF FF")),
        "69 83"
    );
    assert_eq!(sw(&tx(&mut c, "00 20 00 80")), "69 83");
    // A wrong PUK counts; the right one sets a new PIN and unblocks it.
    assert_eq!(
        sw(&tx(
            &mut c,
            "00 2C 00 80 10 39 39 39 39 39 39 39 39 31 32 33 34 35 36 FF FF"
        )),
        "63 C2"
    );
    assert_eq!(
        sw(&tx(
            &mut c,
            "00 2C 00 80 10 31 32 33 34 35 36 37 38 31 32 33 34 35 36 FF FF"
        )),
        "90 00"
    );
    assert_eq!(sw(&tx(&mut c, VERIFY_OK)), "90 00");
    // A power cycle logs out but keeps the counters.
    assert_eq!(sw(&tx(&mut c, VERIFY_BAD)), "63 C2");
    c.power_on();
    tx(&mut c, SELECT);
    assert_eq!(sw(&tx(&mut c, "00 20 00 80")), "63 C2");
}

/// GENERAL AUTHENTICATE with a 256-byte block, chained as yubico-piv-tool sends it.
pub(super) fn sign(c: &mut PivCard, key: u8, block: &[u8]) -> Vec<u8> {
    let mut inner = tlv(0x82, &[]);
    inner.extend(tlv(0x81, block));
    let data = tlv(0x7C, &inner);
    let (first, last) = data.split_at(255);
    let mut a = vec![0x10, 0x87, 0x07, key, 0xFF];
    a.extend_from_slice(first);
    assert_eq!(sw(&c.transmit(&a)), "90 00");
    let mut b = vec![0x00, 0x87, 0x07, key, last.len() as u8];
    b.extend_from_slice(last);
    b.push(0x00);
    let mut got = c.transmit(&b);
    let mut out = Vec::new();
    loop {
        let (d, s) = got.split_at(got.len() - 2);
        out.extend_from_slice(d);
        match s {
            [0x61, n] => got = c.transmit(&[0x00, 0xC0, 0x00, 0x00, *n]),
            _ => {
                out.extend_from_slice(s);
                return out;
            }
        }
    }
}

#[test]
fn general_authenticate_signs_with_the_pin_rules_of_each_slot() {
    let mut c = card();
    tx(&mut c, SELECT);
    let mut block = vec![0xFF; 256];
    block[0] = 0x00;
    block[1] = 0x01;
    block[255] = 0x42;
    // Before VERIFY: 9A refused, 9E (card authentication) needs no PIN... but this card's 9E
    // has no key (three identities), so it is not found.
    assert_eq!(sw(&sign(&mut c, 0x9A, &block)), "69 82");
    assert_eq!(sw(&sign(&mut c, 0x9E, &block)), "6A 82");
    tx(&mut c, VERIFY_OK);
    let r = sign(&mut c, 0x9A, &block);
    assert_eq!(sw(&r), "90 00");
    assert_eq!(&r[..4], &h("7C 82 01 04"));
    assert_eq!(&r[4..8], &h("82 82 01 00"));
    // 9A again without VERIFY: the PIN stays verified.
    assert_eq!(sw(&sign(&mut c, 0x9A, &block)), "90 00");
    // 9C is PIN-always: once per VERIFY.
    assert_eq!(sw(&sign(&mut c, 0x9C, &block)), "90 00");
    assert_eq!(sw(&sign(&mut c, 0x9C, &block)), "69 82");
    tx(&mut c, VERIFY_OK);
    assert_eq!(sw(&sign(&mut c, 0x9C, &block)), "90 00");
    // Wrong algorithm, wrong size, malformed template: status words, state unchanged.
    assert_eq!(sw(&tx(&mut c, "00 87 11 9A 04 7C 02 82 00")), "6A 86");
    assert_eq!(
        sw(&tx(&mut c, "00 87 07 9A 08 7C 06 82 00 81 02 00 01")),
        "6A 80"
    );
    assert_eq!(sw(&tx(&mut c, "00 87 07 9A 04 7C 09 82 00")), "6A 80");
    assert_eq!(sw(&tx(&mut c, "00 87 07 9A 02 7D 00")), "6A 80");
    assert_eq!(sw(&sign(&mut c, 0x9D, &block)), "90 00");
}

pub(super) fn tdes(key: &[u8; 24], block: &[u8]) -> Vec<u8> {
    use des::cipher::{BlockCipherDecrypt, KeyInit};
    let c = des::TdesEde3::new_from_slice(key).unwrap();
    let mut b = des::cipher::Block::<des::TdesEde3>::default();
    b.copy_from_slice(block);
    c.decrypt_block(&mut b);
    b.to_vec()
}

pub(super) fn tdes_enc(key: &[u8; 24], block: &[u8]) -> Vec<u8> {
    use des::cipher::{BlockCipherEncrypt, KeyInit};
    let c = des::TdesEde3::new_from_slice(key).unwrap();
    let mut b = des::cipher::Block::<des::TdesEde3>::default();
    b.copy_from_slice(block);
    c.encrypt_block(&mut b);
    b.to_vec()
}

#[test]
fn management_key_challenge_response_guards_put_data() {
    let mut c = card();
    tx(&mut c, SELECT);
    let put = "00 DB 3F FF 0B 5C 03 5F C1 09 53 04 DE AD BE EF";
    assert_eq!(sw(&tx(&mut c, put)), "69 82");
    // Out of order: a response before a witness was asked for.
    assert_eq!(
        sw(&tx(
            &mut c,
            "00 87 03 9B 16 7C 14 80 08 00 00 00 00 00 00 00 00 81 08 01 02 03 04 05 06 07 08"
        )),
        "69 85"
    );
    // Witness request; a wrong decryption is refused and the witness is spent.
    let r = tx(&mut c, "00 87 03 9B 04 7C 02 80 00");
    assert_eq!((&r[..4], sw(&r).as_str()), (&h("7C 0A 80 08")[..], "90 00"));
    let witness = tdes(&DEFAULT_MANAGEMENT_KEY, &r[4..12]);
    let mut wrong = witness.clone();
    wrong[0] ^= 1;
    let mut bad = h("00 87 03 9B 16 7C 14 80 08");
    bad.extend(&wrong);
    bad.extend(h("81 08 01 02 03 04 05 06 07 08"));
    assert_eq!(sw(&c.transmit(&bad)), "69 82");
    assert_eq!(sw(&tx(&mut c, put)), "69 82");
    // The whole exchange: the card proves itself by encrypting our challenge.
    let r = tx(&mut c, "00 87 03 9B 04 7C 02 80 00");
    let witness = tdes(&DEFAULT_MANAGEMENT_KEY, &r[4..12]);
    let mut good = h("00 87 03 9B 16 7C 14 80 08");
    good.extend(&witness);
    good.extend(h("81 08 01 02 03 04 05 06 07 08"));
    let r = c.transmit(&good);
    assert_eq!(&r[..4], &h("7C 0A 82 08"));
    assert_eq!(
        r[4..12].to_vec(),
        tdes_enc(&DEFAULT_MANAGEMENT_KEY, &h("01 02 03 04 05 06 07 08"))
    );
    assert_eq!(sw(&r), "90 00");
    // Now PUT DATA writes an object and GET DATA reads it back; an empty 53 deletes it.
    assert_eq!(sw(&tx(&mut c, put)), "90 00");
    assert_eq!(
        spaced(&tx(&mut c, "00 CB 3F FF 05 5C 03 5F C1 09 00")),
        "53 04 DE AD BE EF 90 00"
    );
    assert_eq!(
        sw(&tx(&mut c, "00 DB 3F FF 07 5C 03 5F C1 09 53 00")),
        "90 00"
    );
    assert_eq!(sw(&tx(&mut c, "00 CB 3F FF 05 5C 03 5F C1 09 00")), "6A 82");
    // Not a PIV object, or trailing bytes: refused.
    assert_eq!(
        sw(&tx(&mut c, "00 DB 3F FF 07 5C 03 5F C2 01 53 00")),
        "6A 82"
    );
    assert_eq!(
        sw(&tx(&mut c, "00 DB 3F FF 08 5C 03 5F C1 09 53 00 00")),
        "6A 80"
    );
}

#[test]
fn chaining_rules_and_bad_input() {
    let mut c = card();
    tx(&mut c, SELECT);
    // A chain continued with another instruction: 6883, and the chain is dropped.
    assert_eq!(sw(&tx(&mut c, "10 87 07 9A 02 7C 00")), "90 00");
    assert_eq!(sw(&tx(&mut c, "00 CB 3F FF 03 5C 01 7E 00")), "68 83");
    assert_eq!(sw(&tx(&mut c, "00 CB 3F FF 03 5C 01 7E 00")), "90 00");
    // A chain beyond the limit.
    let piece = format!("10 DB 3F FF FF {}", "00 ".repeat(255));
    let accepted = (0..MAX_CHAIN / 255 + 2)
        .take_while(|_| sw(&tx(&mut c, &piece)) == "90 00")
        .count();
    assert_eq!(accepted, MAX_CHAIN / 255, "pieces taken before 6700");
    // Secure messaging or proprietary classes, truncated APDUs.
    assert_eq!(sw(&tx(&mut c, "0C CB 3F FF 03 5C 01 7E 00")), "6E 00");
    assert_eq!(sw(&tx(&mut c, "00 CB 3F")), "67 00");
    assert_eq!(sw(&tx(&mut c, "00 00 00 00")), "6D 00");
}

/// Found by the piv_session fuzz target: a failed SELECT leaves the PIV application (its
/// commands get 6985) but the PIN stayed verified for its return (SP 800-73-4 Part 2 §3.1.1:
/// a deselected PIV application's security status indicators are FALSE).
#[test]
fn a_failed_select_clears_the_pin_status() {
    let mut c = card();
    tx(&mut c, SELECT);
    assert_eq!(sw(&tx(&mut c, VERIFY_OK)), "90 00");
    assert_eq!(sw(&tx(&mut c, "00 A4 04 00 05 D2 76 00 01 24")), "6A 82");
    assert_eq!(sw(&tx(&mut c, "00 20 00 80")), "69 85");
    tx(&mut c, SELECT);
    assert_eq!(sw(&tx(&mut c, "00 20 00 80")), "63 C3");
}

/// Found by the piv_session fuzz target: a SELECT sent while a chain was in progress was
/// answered 6883 and not carried out; it ends the chain and selects.
#[test]
fn a_select_ends_a_chain_in_progress() {
    let mut c = card();
    tx(&mut c, SELECT);
    assert_eq!(sw(&tx(&mut c, "10 CB 3F FF 02 5C 03")), "90 00");
    assert_eq!(sw(&tx(&mut c, "00 A4 04 00 05 D2 76 00 01 24")), "6A 82");
    assert_eq!(sw(&tx(&mut c, "00 CB 3F FF 05 5C 03 5F C1 02 00")), "69 85");
    tx(&mut c, SELECT);
    assert_eq!(sw(&tx(&mut c, "10 CB 3F FF 02 5C 03")), "90 00");
    assert!(tx(&mut c, SELECT).ends_with(&[0x90, 0x00]));
    // The chain is gone: this piece alone is no tag list, so no CHUID comes back.
    assert_eq!(sw(&tx(&mut c, "00 CB 3F FF 03 5F C1 02 00")), "6A 80");
}

proptest::proptest! {
    #[test]
    fn any_apdu_gets_a_status_word(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
        let mut c = card();
        c.transmit(&h(SELECT));
        let r = c.transmit(&bytes);
        proptest::prop_assert!(r.len() >= 2);
    }
}

/// A card with an RSA identity in 9A, P-256 in 9C and P-384 in 9D (files written by rcgen).
pub(super) fn ecc_card() -> (PivCard, Vec<u8>, Vec<u8>) {
    let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
    let mut files = vec![identities()[0].clone()];
    let mut points = Vec::new();
    for (n, alg) in [
        (2, &rcgen::PKCS_ECDSA_P256_SHA256),
        (3, &rcgen::PKCS_ECDSA_P384_SHA384),
    ] {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let cert = rcgen::CertificateParams::new(vec![format!("ec{n}")])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (
            dir.path().join(format!("ec{n}.crt")),
            dir.path().join(format!("ec{n}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        // Private, or the key store refuses it.
        std::fs::set_permissions(&k, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        files.push(crate::keystore::FileIdentity::new(c, Some(k)));
        points.push(key.public_key_raw().to_vec());
    }
    let store = FileStore::open(&files).unwrap();
    let mut c = PivCard::new(Box::new(store), &PivConfig::default()).unwrap();
    c.power_on();
    (c, points.remove(0), points.remove(0))
}

pub(super) fn ga(c: &mut PivCard, alg: u8, key: u8, tag: u8, input: &[u8]) -> Vec<u8> {
    let mut inner = tlv(0x82, &[]);
    inner.extend(tlv(u32::from(tag), input));
    let data = tlv(0x7C, &inner);
    let mut a = vec![0x00, 0x87, alg, key, data.len() as u8];
    a.extend_from_slice(&data);
    a.push(0x00);
    c.transmit(&a)
}

#[test]
fn ecdsa_p256_and_p384_sign_digests_and_ecdh_agrees() {
    use aws_lc_rs::{agreement, signature};
    use sha2::Digest;
    let (mut c, p256, p384) = ecc_card();
    tx(&mut c, SELECT);
    tx(&mut c, VERIFY_OK);
    let msg = b"signed by the PIV card";
    // P-256 in 9C (PIN-always: fresh after VERIFY), the digest computed by the host.
    let r = ga(&mut c, 0x11, 0x9C, 0x81, &sha2::Sha256::digest(msg));
    assert_eq!(sw(&r), "90 00");
    let (t, _) = ber::parse_one(&r[..r.len() - 2]).unwrap();
    let sig = ber::find(t.value, 0x82).unwrap();
    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, &p256)
        .verify(msg, sig)
        .expect("P-256 signature verifies");
    // P-384 in 9D.
    let r = ga(&mut c, 0x14, 0x9D, 0x81, &sha2::Sha384::digest(msg));
    let (t, _) = ber::parse_one(&r[..r.len() - 2]).unwrap();
    signature::UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_ASN1, &p384)
        .verify(msg, ber::find(t.value, 0x82).unwrap())
        .expect("P-384 signature verifies");
    // ECDH with 9D: the card's shared secret equals ours.
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let eph = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P384, &rng).unwrap();
    let ours = eph.compute_public_key().unwrap();
    let r = ga(&mut c, 0x14, 0x9D, 0x85, ours.as_ref());
    assert_eq!(sw(&r), "90 00");
    let (t, _) = ber::parse_one(&r[..r.len() - 2]).unwrap();
    let card_secret = ber::find(t.value, 0x82).unwrap().to_vec();
    let peer = agreement::UnparsedPublicKey::new(&agreement::ECDH_P384, &p384);
    let host_secret =
        agreement::agree_ephemeral(eph, peer, (), |k| Ok::<_, ()>(k.to_vec())).unwrap();
    assert_eq!(card_secret, host_secret);
    // Wrong sizes, a point off the curve, ECDH on an RSA slot, the wrong algorithm: status
    // words.
    assert_eq!(sw(&ga(&mut c, 0x14, 0x9D, 0x81, &[0u8; 49])), "6A 80");
    // A digest shorter than the field (SHA-256 on P-384) is signed as it is.
    let r = ga(&mut c, 0x14, 0x9D, 0x81, &sha2::Sha256::digest(msg));
    let (t, _) = ber::parse_one(&r[..r.len() - 2]).unwrap();
    signature::UnparsedPublicKey::new(&signature::ECDSA_P384_SHA256_ASN1, &p384)
        .verify(msg, ber::find(t.value, 0x82).unwrap())
        .expect("SHA-256 digest signed with P-384 verifies");
    let mut bad = ours.as_ref().to_vec();
    bad[10] ^= 0x55;
    assert_eq!(sw(&ga(&mut c, 0x14, 0x9D, 0x85, &bad)), "6F 00");
    assert_eq!(sw(&ga(&mut c, 0x11, 0x9D, 0x81, &[0u8; 32])), "6A 86");
    assert_eq!(sw(&ga(&mut c, 0x07, 0x9A, 0x85, &[4u8; 65])), "6A 80");
    // 9C again without a fresh VERIFY.
    assert_eq!(sw(&ga(&mut c, 0x11, 0x9C, 0x81, &[1u8; 32])), "69 82");
}

#[test]
fn the_cac_card_refuses_ec_keys() {
    let (_, _, _) = ecc_card();
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["ec".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (c, k) = (dir.path().join("ec.crt"), dir.path().join("ec.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    // Private, or the key store refuses it.
    std::fs::set_permissions(&k, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let store = FileStore::open(&[crate::keystore::FileIdentity::new(c, Some(k))]).unwrap();
    let e =
        crate::cac::CacCard::new(Box::new(store), &crate::cac::CacConfig::default()).unwrap_err();
    assert!(e.to_string().contains("RSA-only"), "{e}");
}

/// The value of `tag` inside the object GET DATA answers (53 wrapper, GET RESPONSE followed).
fn object_field(c: &mut PivCard, object: &str, tag: u32) -> Vec<u8> {
    tx(c, SELECT);
    let r = tx(c, &format!("00 CB 3F FF 05 5C 03 {object} 00"));
    assert_eq!(sw(&r), "90 00", "{object}");
    let (o, _) = ber::parse_one(&r[..r.len() - 2]).unwrap();
    let field = ber::iter(o.value)
        .map(Result::unwrap)
        .find(|t| t.tag == tag)
        .unwrap_or_else(|| panic!("{object} has no {tag:X}"))
        .value
        .to_vec();
    field
}

/// Issue #15: two key stores are two cards to every reader of the card's identifiers: the
/// CHUID's FASC-N and GUID, the CCC's card identifier, YubiKey's serial, and (on the CAC side)
/// the CCC card identifier OpenSC takes for the serial number.
#[test]
fn two_key_stores_are_two_cards() {
    let other_dir = tempfile::tempdir().unwrap();
    let other = DefaultIdentities::new(other_dir.path()).ensure().unwrap();
    let mut a = card();
    let mut b = PivCard::new(
        Box::new(FileStore::open(&other).unwrap()),
        &PivConfig::default(),
    )
    .unwrap();
    b.power_on();
    let first = |ids: &[crate::keystore::FileIdentity]| {
        FileStore::open(ids).unwrap().identities()[0]
            .cert_der
            .clone()
    };
    for (c, cert) in [(&mut a, first(identities())), (&mut b, first(&other))] {
        let fascn = object_field(c, "5F C1 02", 0x30);
        assert_eq!(fascn, super::fascn(&cert));
        let fields = super::fascn::tests::decode(&fascn).unwrap();
        assert_eq!(fields.agency, [9; 4]);
        use sha2::Digest;
        assert_eq!(
            object_field(c, "5F C1 02", 0x34),
            sha2::Sha256::digest(&cert)[..16]
        );
    }
    for (object, tag) in [("5F C1 02", 0x30), ("5F C1 02", 0x34), ("5F C1 07", 0xF0)] {
        assert_ne!(
            object_field(&mut a, object, tag),
            object_field(&mut b, object, tag),
            "{object} {tag:X}"
        );
    }
    assert_ne!(a.serial(), b.serial());
    // The same certificates are the same card.
    assert_eq!(
        object_field(&mut card(), "5F C1 02", 0x30),
        object_field(&mut a, "5F C1 02", 0x30)
    );
    let cac = |ids: &[crate::keystore::FileIdentity]| {
        let mut c = crate::cac::CacCard::new(
            Box::new(FileStore::open(ids).unwrap()),
            &crate::cac::CacConfig::default(),
        )
        .unwrap();
        c.power_on();
        assert_eq!(
            sw(&tx_cac(&mut c, "00 A4 04 00 07 A0 00 00 01 16 DB 00")),
            "61 0D"
        );
        tx_cac(&mut c, "80 52 00 02 02 02 15 00")[..21].to_vec()
    };
    assert_ne!(cac(identities()), cac(&other));
}

fn tx_cac(c: &mut crate::cac::CacCard, cmd: &str) -> Vec<u8> {
    c.transmit(&h(cmd))
}
