//! Ed25519 and BLAKE3 as the format uses them (SPEC.md §4): key ids, the pre-authentication encoding
//! that signatures cover, document hashes, and strict signature verification.
//!
//! Owns: every cryptographic primitive call in Stele. Must not know about files, policies or thresholds.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// BLAKE3 derive-key context for key ids (SPEC.md §4.1).
pub const KEY_ID_CONTEXT: &str = "stele ledger-format v1 key id";
/// BLAKE3 derive-key context for document hashes (SPEC.md §4.3).
pub const DOCUMENT_HASH_CONTEXT: &str = "stele ledger-format v1 document hash";
/// First field of the pre-authentication encoding (SPEC.md §4.2).
pub const PAE_PREFIX: &str = "STELEv1";

/// Why a key or signature is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("public key is not a valid Ed25519 point")]
    InvalidPublicKey,
    #[error("public key is weak (small order): it would accept forged signatures")]
    WeakPublicKey,
    #[error("signature does not verify (strict RFC 8032 verification)")]
    BadSignature,
}

/// 32 bytes written as 64 lowercase hex digits: the one spelling the format accepts.
macro_rules! hex32_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                parse_hex_exact::<32>(s).map(Self).map_err(|e| format!("{}: {e}", $what))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hex32_type!(
    /// A key id: BLAKE3 derive-key of the raw public key (SPEC.md §4.1). A hint for finding the key; trust
    /// decisions always count public keys.
    KeyId,
    "key id"
);
hex32_type!(
    /// A BLAKE3 digest: of image bytes, or a document hash in derive-key mode.
    Blake3Digest,
    "blake3 digest"
);

impl Blake3Digest {
    /// The `prev` of the first entry in a chain (SPEC.md §6.3).
    pub const ZERO: Blake3Digest = Blake3Digest([0; 32]);
}

/// Decodes exactly `N` bytes from lowercase hex; uppercase or any other length is refused, so every
/// value has a single spelling.
pub fn parse_hex_exact<const N: usize>(s: &str) -> Result<[u8; N], String> {
    if s.len() != 2 * N {
        return Err(format!("expected {} lowercase hex digits, got {} characters", 2 * N, s.len()));
    }
    if !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!("expected lowercase hex digits only, got {s:?}"));
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// An Ed25519 public key that is a valid point and not of small order (SPEC.md §4.1). Can only be built
/// through [`PublicKey::from_bytes`], so holding one means it passed those checks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, CryptoError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| CryptoError::InvalidPublicKey)?;
        // One spelling per key: refuse encodings with y >= p, which decode to a point whose canonical
        // encoding differs (they would give one key two key ids).
        if key.to_edwards().compress().to_bytes() != *bytes {
            return Err(CryptoError::InvalidPublicKey);
        }
        if key.is_weak() {
            return Err(CryptoError::WeakPublicKey);
        }
        Ok(Self(key))
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn key_id(&self) -> KeyId {
        KeyId(blake3::derive_key(KEY_ID_CONTEXT, self.0.as_bytes()))
    }

    /// Strict verification (RFC 8032 §5.1.7 with canonical `S` and no small-order `R`), the only
    /// verification the format uses.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> Result<(), CryptoError> {
        let sig = Signature::from_bytes(signature);
        self.0.verify_strict(message, &sig).map_err(|_| CryptoError::BadSignature)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", hex::encode(self.0.as_bytes()))
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0.as_bytes()))
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bytes = parse_hex_exact::<32>(&s).map_err(|e| serde::de::Error::custom(format!("public key: {e}")))?;
        PublicKey::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

/// Verifies one signature with the same strict rule the ledger uses; a convenience for raw inputs
/// (the Wycheproof and RFC 8032 vectors run through it).
pub fn verify_raw(public_key: &[u8], message: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
    let pk: &[u8; 32] = public_key.try_into().map_err(|_| CryptoError::InvalidPublicKey)?;
    let sig: &[u8; 64] = signature.try_into().map_err(|_| CryptoError::BadSignature)?;
    PublicKey::from_bytes(pk)?.verify(message, sig)
}

/// Verifies an SSH signature (OpenSSH `SSHSIG`, as git's `gpg.format=ssh` writes it) over `message` in
/// `namespace`, and returns the Ed25519 key that made it (SPEC.md §8.4). The inner signature goes
/// through the same strict verification as every other signature.
pub fn verify_sshsig(armored: &[u8], namespace: &str, message: &[u8]) -> Result<PublicKey, SshSigError> {
    let sig = ssh_key::SshSig::from_pem(armored).map_err(|e| SshSigError::Malformed(e.to_string()))?;
    if sig.namespace() != namespace {
        return Err(SshSigError::Namespace(sig.namespace().to_owned()));
    }
    let Some(key) = sig.public_key().ed25519() else {
        return Err(SshSigError::NotEd25519);
    };
    let key = PublicKey::from_bytes(&key.0).map_err(SshSigError::Crypto)?;
    let signed = ssh_key::SshSig::signed_data(namespace, sig.hash_alg(), message)
        .map_err(|e| SshSigError::Malformed(e.to_string()))?;
    let bytes: &[u8; 64] = sig.signature_bytes().try_into().map_err(|_| SshSigError::NotEd25519)?;
    key.verify(&signed, bytes).map_err(SshSigError::Crypto)?;
    Ok(key)
}

/// Why an SSH signature is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshSigError {
    #[error("not an SSH signature: {0}")]
    Malformed(String),
    #[error("SSH signature is for namespace {0:?}, expected \"git\"")]
    Namespace(String),
    #[error("SSH signature is not made with an Ed25519 key")]
    NotEd25519,
    #[error("{0}")]
    Crypto(CryptoError),
}

/// A secret key able to sign documents. Lives only in tools that sign (never in the agent).
pub struct SecretKey(SigningKey);

impl SecretKey {
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(seed))
    }

    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn public_key(&self) -> PublicKey {
        // A key derived from a seed is a clamped scalar times the base point, never of small order.
        PublicKey::from_bytes(self.0.verifying_key().as_bytes()).expect("derived public keys are never weak")
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }
}

/// Pre-authentication encoding (SPEC.md §4.2), after DSSE:
/// `"STELEv1" SP LEN(type) SP type SP LEN(body) SP body`, lengths as ASCII decimal byte counts.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + payload_type.len() + 32);
    out.extend_from_slice(PAE_PREFIX.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(body);
    out
}

/// The document hash (SPEC.md §4.3): BLAKE3 in derive-key mode over the PAE bytes. Covers the payload
/// only, so co-signers sign and chain to identical bytes.
pub fn document_hash(pae_bytes: &[u8]) -> Blake3Digest {
    let mut h = blake3::Hasher::new_derive_key(DOCUMENT_HASH_CONTEXT);
    h.update(pae_bytes);
    Blake3Digest(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_spells_type_and_body_lengths() {
        assert_eq!(pae("stele.entry/v1", b"{}"), b"STELEv1 14 stele.entry/v1 2 {}".to_vec());
    }

    #[test]
    fn hex_has_one_spelling() {
        let lower = "ab".repeat(32);
        assert!(lower.parse::<KeyId>().is_ok());
        assert!("AB".repeat(32).parse::<KeyId>().is_err());
        assert!("ab".repeat(31).parse::<KeyId>().is_err());
    }

    #[test]
    fn non_canonical_public_key_encodings_are_refused() {
        // y = p (2^255 - 19) encodes the same point as y = 0, non-canonically.
        let mut y_is_p = [0xffu8; 32];
        y_is_p[0] = 0xed;
        y_is_p[31] = 0x7f;
        assert!(PublicKey::from_bytes(&y_is_p).is_err());
    }

    #[test]
    fn small_order_public_keys_are_refused() {
        // The identity point (y = 1) has order 1.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(PublicKey::from_bytes(&identity), Err(CryptoError::WeakPublicKey));
    }

    #[test]
    fn sign_then_verify_and_tamper() {
        let key = SecretKey::from_seed(&[7; 32]);
        let sig = key.sign(b"hello");
        assert!(key.public_key().verify(b"hello", &sig).is_ok());
        assert_eq!(key.public_key().verify(b"hellp", &sig), Err(CryptoError::BadSignature));
    }
}
