//! Ed25519 as the ledger uses it, against published vectors: every Wycheproof EdDSA case
//! (tests/data/wycheproof, Apache-2.0, from C2SP/wycheproof) through `ledger_format::crypto::verify_raw`,
//! and RFC 8032 §7.1 TEST 1-3 through key derivation, signing and verification.

use ledger_format::crypto::{verify_raw, SecretKey};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WycheproofFile {
    algorithm: String,
    number_of_tests: usize,
    test_groups: Vec<TestGroup>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TestGroup {
    public_key: GroupKey,
    tests: Vec<TestCase>,
}

#[derive(Deserialize)]
struct GroupKey {
    curve: String,
    pk: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TestCase {
    tc_id: u64,
    comment: String,
    msg: String,
    sig: String,
    result: Verdict,
    #[serde(default)]
    flags: Vec<String>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum Verdict {
    Valid,
    Invalid,
    Acceptable,
}

fn wycheproof() -> WycheproofFile {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/wycheproof/ed25519_test.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("Wycheproof Ed25519 vectors missing at {}: {e} (copy them from C2SP/wycheproof)", path.display())
    });
    let file: WycheproofFile = serde_json::from_str(&text).expect("the Wycheproof file matches its schema");
    assert_eq!(file.algorithm, "EDDSA");
    file
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap_or_else(|e| panic!("bad hex {s:?}: {e}"))
}

#[test]
fn verify_raw_agrees_with_every_wycheproof_case() {
    let file = wycheproof();
    let (mut checked, mut acceptable) = (0, 0);
    let mut disagreements = Vec::new();
    for group in &file.test_groups {
        assert_eq!(group.public_key.curve, "edwards25519");
        let pk = unhex(&group.public_key.pk);
        for case in &group.tests {
            let accepted = verify_raw(&pk, &unhex(&case.msg), &unhex(&case.sig)).is_ok();
            checked += 1;
            let agrees = match case.result {
                Verdict::Valid => accepted,
                Verdict::Invalid => !accepted,
                Verdict::Acceptable => {
                    acceptable += 1;
                    println!(
                        "acceptable case {} ({}; {:?}): {}",
                        case.tc_id,
                        case.comment,
                        case.flags,
                        if accepted { "accepted" } else { "refused" }
                    );
                    true
                }
            };
            if !agrees {
                disagreements.push(format!(
                    "tcId {} ({:?}, flags {:?}): expected {:?}, verify_raw {}",
                    case.tc_id,
                    case.comment,
                    case.flags,
                    case.result,
                    if accepted { "accepted it" } else { "refused it" }
                ));
            }
        }
    }
    assert!(disagreements.is_empty(), "verify_raw disagrees with Wycheproof:\n{}", disagreements.join("\n"));
    // Guard against passing vacuously on a truncated or restructured file.
    assert_eq!(checked, file.number_of_tests, "cases checked vs numberOfTests");
    assert!(checked >= 150, "only {checked} Wycheproof cases checked");
    println!("{checked} Wycheproof cases checked, {acceptable} of them acceptable");
}

#[test]
fn malleated_signature_with_s_plus_group_order_is_refused() {
    // Wycheproof tcId 63 replaces S by S + L; strict verification insists on S < L.
    let file = wycheproof();
    let (group, case) = file
        .test_groups
        .iter()
        .flat_map(|g| g.tests.iter().map(move |t| (g, t)))
        .find(|(_, t)| t.tc_id == 63)
        .expect("Wycheproof holds tcId 63");
    assert!(case.comment.contains("s + L"), "tcId 63 is the S + L case: {}", case.comment);
    assert_eq!(case.result, Verdict::Invalid);
    let (pk, msg, sig) = (unhex(&group.public_key.pk), unhex(&case.msg), unhex(&case.sig));
    assert!(verify_raw(&pk, &msg, &sig).is_err(), "S + L must be refused");

    // Independently of the file: malleate a fresh RFC 8032 signature and check the original still verifies.
    let key = SecretKey::from_seed(&seed(RFC8032[0].secret));
    let sig = key.sign(b"stele");
    let mut malleated = sig;
    add_group_order_to_s(&mut malleated);
    assert_ne!(malleated, sig);
    let pk = key.public_key().to_bytes();
    assert!(verify_raw(&pk, b"stele", &sig).is_ok());
    assert!(verify_raw(&pk, b"stele", &malleated).is_err(), "S + L must be refused");
}

/// Adds the group order L to the little-endian scalar `S` (the last 32 bytes) of a signature.
fn add_group_order_to_s(sig: &mut [u8; 64]) {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut carry = 0u16;
    for (s, l) in sig[32..].iter_mut().zip(L) {
        let sum = u16::from(*s) + u16::from(l) + carry;
        *s = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0, "S + L < 2^256 because S < L < 2^253");
}

struct Rfc8032 {
    name: &'static str,
    secret: &'static str,
    public: &'static str,
    message: &'static str,
    signature: &'static str,
}

/// RFC 8032 §7.1, TEST 1 to TEST 3 (Ed25519).
const RFC8032: [Rfc8032; 3] = [
    Rfc8032 {
        name: "TEST 1",
        secret: "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        public: "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        message: "",
        signature: "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    },
    Rfc8032 {
        name: "TEST 2",
        secret: "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        public: "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        message: "72",
        signature: "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    },
    Rfc8032 {
        name: "TEST 3",
        secret: "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        public: "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        message: "af82",
        signature: "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    },
];

fn seed(hex_seed: &str) -> [u8; 32] {
    unhex(hex_seed).try_into().expect("RFC 8032 secret keys are 32 bytes")
}

#[test]
fn rfc8032_keys_signatures_and_verification_match_byte_for_byte() {
    for v in &RFC8032 {
        let key = SecretKey::from_seed(&seed(v.secret));
        let public = key.public_key().to_bytes();
        assert_eq!(hex::encode(public), v.public, "{}: public key", v.name);
        let message = unhex(v.message);
        let signature = key.sign(&message);
        assert_eq!(hex::encode(signature), v.signature, "{}: signature", v.name);
        assert_eq!(verify_raw(&public, &message, &signature), Ok(()), "{}: verification", v.name);
    }
}

#[test]
fn rfc8032_signatures_are_refused_after_any_single_bit_flip() {
    for v in &RFC8032 {
        let public = unhex(v.public);
        let message = unhex(v.message);
        let signature = unhex(v.signature);
        for bit in 0..signature.len() * 8 {
            let mut flipped = signature.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(verify_raw(&public, &message, &flipped).is_err(), "{}: signature bit {bit} flipped", v.name);
        }
        // TEST 1 signs the empty message, which has no bit to flip; a message one byte longer stands in.
        let mut longer = message.clone();
        longer.push(0);
        assert!(verify_raw(&public, &longer, &signature).is_err(), "{}: message extended", v.name);
        for bit in 0..message.len() * 8 {
            let mut flipped = message.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(verify_raw(&public, &flipped, &signature).is_err(), "{}: message bit {bit} flipped", v.name);
        }
    }
}
