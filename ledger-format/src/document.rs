//! Signed documents (SPEC.md §5): the envelope `{payload, signatures}`, parsing bytes into a typed
//! document (checks D1-D5), rendering and signing, and counting signatures toward a role's threshold
//! (checks S1-S3).
//!
//! Owns: the envelope and the single-document verification rules. Must not decide which role governs
//! a document or look at other documents; that is `tree` and the history verifier.

use crate::check::Check;
use crate::crypto::{document_hash, pae, parse_hex_exact, Blake3Digest, CryptoError, KeyId, PublicKey, SecretKey};
use crate::json::{self, to_file_form, to_jcs};
use crate::types::{
    Entry, EntryType, Environment, EnvironmentType, Observation, Policy, PolicyType, Role, StatusType, TimestampDoc,
    TimestampType,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// One of the document kinds, with its payload type and size limit (SPEC.md §5.1). The first four
/// live on the ledger branch; observations live on status refs (§6.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DocKind {
    Policy,
    Environment,
    Entry,
    Timestamp,
    Observation,
}

impl DocKind {
    pub fn payload_type(self) -> &'static str {
        match self {
            DocKind::Policy => PolicyType::VALUE,
            DocKind::Environment => EnvironmentType::VALUE,
            DocKind::Entry => EntryType::VALUE,
            DocKind::Timestamp => TimestampType::VALUE,
            DocKind::Observation => StatusType::VALUE,
        }
    }

    /// Largest file accepted for this kind, in bytes (check D1).
    pub fn max_size(self) -> usize {
        match self {
            DocKind::Policy => 1 << 20,
            DocKind::Environment => 64 << 10,
            DocKind::Entry | DocKind::Timestamp => 16 << 10,
            DocKind::Observation => 4 << 20,
        }
    }
}

/// A payload type that lives in a signed document.
pub trait Payload: Serialize + DeserializeOwned {
    const KIND: DocKind;
}

impl Payload for Policy {
    const KIND: DocKind = DocKind::Policy;
}
impl Payload for Environment {
    const KIND: DocKind = DocKind::Environment;
}
impl Payload for Entry {
    const KIND: DocKind = DocKind::Entry;
}
impl Payload for TimestampDoc {
    const KIND: DocKind = DocKind::Timestamp;
}
impl Payload for Observation {
    const KIND: DocKind = DocKind::Observation;
}

/// One signature in an envelope. `keyid` is a hint for finding the key; trust counts public keys.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureEntry {
    pub keyid: KeyId,
    pub sig: SignatureBytes,
}

/// 64 signature bytes as 128 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SignatureBytes(pub [u8; 64]);

impl fmt::Debug for SignatureBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sig({})", hex::encode(self.0))
    }
}

impl Serialize for SignatureBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for SignatureBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_hex_exact::<64>(&s).map(SignatureBytes).map_err(|e| serde::de::Error::custom(format!("signature: {e}")))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvelope {
    payload: Value,
    signatures: Vec<SignatureEntry>,
}

/// Why bytes are not a well-formed document of the expected kind. Carries the check it failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{check}: {reason}")]
pub struct DocError {
    pub check: Check,
    pub reason: String,
    /// The signature check (S1-S3) behind a P4, N4, E5 or P6 failure (SPEC.md §7.1).
    pub cause: Option<Check>,
}

impl DocError {
    pub fn new(check: Check, reason: impl Into<String>) -> Self {
        Self { check, reason: reason.into(), cause: None }
    }

    /// This error as a problem at `path`.
    pub fn at(self, path: &str) -> crate::check::Problem {
        crate::check::Problem { path: path.to_owned(), check: self.check, reason: self.reason, cause: self.cause }
    }

    /// Reports a signature failure `self` under the document's own `check`, keeping the S-check as
    /// the cause (and, for readers, in the reason).
    pub fn caused(self, check: Check) -> Self {
        Self { check, reason: format!("{} ({})", self.reason, self.check), cause: Some(self.check) }
    }
}

/// A parsed, well-formed document: the payload, its signatures, and the bytes they cover.
/// Well-formed is not trusted: signatures are checked against a role with [`Document::check_role`].
#[derive(Clone, Debug, PartialEq)]
pub struct Document<T> {
    pub payload: T,
    pub signatures: Vec<SignatureEntry>,
    /// The pre-authentication encoding of the payload: what signatures cover.
    pae: Vec<u8>,
    hash: Blake3Digest,
}

fn to_value<T: Serialize>(payload: &T) -> Value {
    serde_json::to_value(payload).expect("payload types serialize to JSON")
}

impl<T: Payload> Document<T> {
    /// An unsigned document for `payload`.
    pub fn new(payload: T) -> Self {
        let body = to_jcs(&to_value(&payload)).expect("payload types hold only canonical values");
        let pae = pae(T::KIND.payload_type(), &body);
        let hash = document_hash(&pae);
        Self { payload, signatures: Vec::new(), pae, hash }
    }

    /// Parses a file's bytes (checks D1-D5, SPEC.md §5.2). The ledger id (D6) and signatures (S1-S3)
    /// are checked by the caller, which knows the policy.
    pub fn parse(bytes: &[u8]) -> Result<Self, DocError> {
        let kind = T::KIND;
        if bytes.len() > kind.max_size() {
            return Err(DocError::new(
                Check::D1,
                format!(
                    "{} bytes, more than the {} bytes allowed for a {} document",
                    bytes.len(),
                    kind.max_size(),
                    kind.payload_type()
                ),
            ));
        }
        let value = json::parse_strict(bytes).map_err(|e| DocError::new(Check::D2, e.to_string()))?;
        let canonical = to_file_form(&value).expect("strictly parsed values render");
        if canonical != bytes {
            let at = canonical.iter().zip(bytes).position(|(a, b)| a != b).unwrap_or(canonical.len().min(bytes.len()));
            return Err(DocError::new(Check::D3, format!("not in canonical form (first difference at byte {at})")));
        }
        let raw: RawEnvelope =
            serde_json::from_value(value).map_err(|e| DocError::new(Check::D4, format!("envelope: {e}")))?;
        if let Some(w) = raw.signatures.windows(2).find(|w| w[0] >= w[1]) {
            let reason = if w[0] == w[1] {
                "the same signature appears twice"
            } else {
                "signatures are not sorted by keyid, then sig"
            };
            return Err(DocError::new(Check::D4, reason));
        }
        let body = to_jcs(&raw.payload).expect("strictly parsed values render");
        let payload: T = serde_path_to_error::deserialize(raw.payload.clone())
            .map_err(|e| DocError::new(Check::D5, format!("payload: {}: {}", e.path(), e.inner())))?;
        // The typed payload must say exactly what the signed bytes say (no defaults filled in, no
        // alternative spellings): serialize it back and compare values.
        if to_value(&payload) != raw.payload {
            return Err(DocError::new(Check::D5, "payload holds values the schema spells differently"));
        }
        let pae = pae(kind.payload_type(), &body);
        let hash = document_hash(&pae);
        Ok(Self { payload, signatures: raw.signatures, pae, hash })
    }

    /// The canonical file bytes of this document.
    pub fn to_file_bytes(&self) -> Vec<u8> {
        let envelope = serde_json::json!({ "payload": to_value(&self.payload), "signatures": self.signatures });
        to_file_form(&envelope).expect("documents hold only canonical values")
    }

    /// Adds `key`'s signature; signing twice with one key leaves one signature.
    pub fn sign(&mut self, key: &SecretKey) {
        let entry = SignatureEntry { keyid: key.public_key().key_id(), sig: SignatureBytes(key.sign(&self.pae)) };
        if !self.signatures.contains(&entry) {
            self.signatures.push(entry);
            self.signatures.sort();
        }
    }
}

impl<T> Document<T> {
    /// The document hash (SPEC.md §4.3), which the next entry's `prev` names.
    pub fn hash(&self) -> Blake3Digest {
        self.hash
    }

    pub fn pae(&self) -> &[u8] {
        &self.pae
    }

    /// Checks signatures against `role`, whose keys `policy` defines (checks S1-S3, SPEC.md §5.3).
    ///
    /// `foreign` says what to do with signatures by keys outside the role: [`ForeignSignatures::Refuse`]
    /// for entries and environment specs; [`ForeignSignatures::Skip`] only for a policy, whose
    /// signatures by the previous root are checked against the previous policy (SPEC.md §6.1).
    pub fn check_role(
        &self,
        policy: &Policy,
        role: &Role,
        foreign: ForeignSignatures<'_>,
    ) -> Result<SignedBy, DocError> {
        self.check_role_with(policy, role, foreign, &Direct)
    }

    /// [`Document::check_role`] with signature verification delegated to `sigs`, so a replay can verify
    /// every signature of a history in parallel first and judge the steps in order afterwards.
    pub fn check_role_with(
        &self,
        policy: &Policy,
        role: &Role,
        foreign: ForeignSignatures<'_>,
        sigs: &impl SignatureCheck,
    ) -> Result<SignedBy, DocError> {
        let members: BTreeSet<&KeyId> = role.keys.iter().collect();
        let mut verified: BTreeMap<[u8; 32], KeyId> = BTreeMap::new();
        let mut repeats = Vec::new();
        for s in &self.signatures {
            let key = members.contains(&s.keyid).then(|| policy.keys.get(&s.keyid)).flatten();
            let (info, counts) = match (key, foreign) {
                (Some(info), _) => (info, true),
                (None, ForeignSignatures::Skip) => continue,
                (None, ForeignSignatures::VerifyOnly(also)) if also.contains(&s.keyid) => {
                    match policy.keys.get(&s.keyid) {
                        Some(info) => (info, false),
                        None => return Err(foreign_signature(&s.keyid)),
                    }
                }
                (None, _) => return Err(foreign_signature(&s.keyid)),
            };
            match sigs.verify(&self.hash, &info.public_key, &self.pae, &s.sig.0) {
                Ok(()) if !counts => {}
                Ok(()) => {
                    if verified.insert(info.public_key.to_bytes(), s.keyid).is_some() {
                        repeats.push(s.keyid);
                    }
                }
                Err(CryptoError::BadSignature) => {
                    return Err(DocError::new(
                        Check::S1,
                        format!("signature by {} ({}) does not verify", info.name, s.keyid),
                    ))
                }
                Err(e) => return Err(DocError::new(Check::S1, format!("key {}: {e}", s.keyid))),
            }
        }
        let count = verified.len() as u64;
        if count < role.threshold {
            let names: Vec<String> = verified.values().map(|id| display_key(policy, id)).collect();
            let mut reason = format!(
                "threshold not met: {count} of {} required signatures (signed by: {})",
                role.threshold,
                if names.is_empty() { "nobody".to_owned() } else { names.join(", ") }
            );
            for id in &repeats {
                reason.push_str(&format!("; {} signed more than once and counts once", display_key(policy, id)));
            }
            return Err(DocError::new(Check::S3, reason));
        }
        Ok(SignedBy(verified.into_values().collect()))
    }
}

/// How a signature over a document is verified: directly, or from results computed earlier.
pub trait SignatureCheck {
    /// Verifies `sig` by `key` over `pae`, the PAE bytes of the document whose hash is `hash`.
    fn verify(&self, hash: &Blake3Digest, key: &PublicKey, pae: &[u8], sig: &[u8; 64]) -> Result<(), CryptoError>;
}

/// Verifies every signature when asked.
pub struct Direct;

impl SignatureCheck for Direct {
    fn verify(&self, _: &Blake3Digest, key: &PublicKey, pae: &[u8], sig: &[u8; 64]) -> Result<(), CryptoError> {
        key.verify(pae, sig)
    }
}

/// `name (keyid-prefix)` for messages.
pub fn display_key(policy: &Policy, id: &KeyId) -> String {
    let short = &id.to_hex()[..12];
    match policy.key_name(id) {
        Some(name) => format!("{name} ({short})"),
        None => short.to_owned(),
    }
}

fn foreign_signature(keyid: &KeyId) -> DocError {
    DocError::new(Check::S2, format!("signature by key {keyid} which this role does not authorise"))
}

/// How [`Document::check_role`] treats signatures by keys outside the role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForeignSignatures<'a> {
    /// Any signature by a key outside the role fails S2 (entries).
    Refuse,
    /// Signatures by keys outside the role are ignored (a policy: the previous root's signatures).
    Skip,
    /// Signatures by these keys (the root role, on an environment spec: SPEC.md §5.3) are verified
    /// (S1) but do not count toward the role's threshold; any other key outside the role fails S2.
    VerifyOnly(&'a [KeyId]),
}

/// The distinct keys whose signatures verified and counted toward the threshold, sorted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedBy(pub Vec<KeyId>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::*;

    fn entry() -> Entry {
        Entry {
            payload_type: EntryType,
            ledger: "test".parse().unwrap(),
            env: "prod".parse().unwrap(),
            seq: 1,
            prev: Blake3Digest::ZERO,
            version: "1.0.0".parse().unwrap(),
            image: Image::Artifact { uri: "file:///a.tar".parse().unwrap(), blake3: Blake3Digest([1; 32]), size: 10 },
            created_at: "2026-01-01T00:00:00Z".parse().unwrap(),
            expires_at: None,
        }
    }

    #[test]
    fn rendered_documents_parse_back_identically() {
        let mut doc = Document::new(entry());
        doc.sign(&SecretKey::from_seed(&[1; 32]));
        doc.sign(&SecretKey::from_seed(&[2; 32]));
        let bytes = doc.to_file_bytes();
        let back = Document::<Entry>::parse(&bytes).unwrap();
        assert_eq!(back, doc);
        assert_eq!(back.to_file_bytes(), bytes);
    }

    #[test]
    fn signing_twice_with_one_key_keeps_one_signature() {
        let key = SecretKey::from_seed(&[1; 32]);
        let mut doc = Document::new(entry());
        doc.sign(&key);
        doc.sign(&key);
        assert_eq!(doc.signatures.len(), 1);
    }

    #[test]
    fn hash_covers_payload_not_signatures() {
        let unsigned = Document::new(entry());
        let mut signed = unsigned.clone();
        signed.sign(&SecretKey::from_seed(&[1; 32]));
        assert_eq!(unsigned.hash(), signed.hash());
    }

    #[test]
    fn parse_reports_the_failed_check() {
        let bytes = Document::new(entry()).to_file_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        let cases: Vec<(Vec<u8>, Check)> = vec![
            (vec![b' '; DocKind::Entry.max_size() + 1], Check::D1),
            (text.replace("\"seq\": 1", "\"seq\": 1, \"seq\": 1").into_bytes(), Check::D2),
            (text.replace("\"seq\": 1", "\"seq\": 1.0").into_bytes(), Check::D2),
            (text.trim_end().as_bytes().to_vec(), Check::D3),
            (serde_json::to_vec(&serde_json::from_slice::<Value>(&bytes).unwrap()).unwrap(), Check::D3),
            (text.replace("\"signatures\": []", "\"signatures\": [],\n  \"x\": 1").into_bytes(), Check::D4),
            (text.replace("\"version\": \"1.0.0\"", "\"version\": \"1.0.0\",\n    \"zzz\": 1").into_bytes(), Check::D5),
            (text.replace("stele.entry/v1", "stele.policy/v1").into_bytes(), Check::D5),
        ];
        for (i, (input, check)) in cases.into_iter().enumerate() {
            let got = Document::<Entry>::parse(&input).expect_err(&format!("case {i} parsed"));
            assert_eq!(got.check, check, "case {i}: {got}");
        }
    }
}
