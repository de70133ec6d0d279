//! The Stele ledger format v1 test vectors: whole small ledger trees, each with the verdict that
//! `verify_snapshot` must reach, written to `test-vectors/` so that another implementation can prove
//! itself against the same files.
//!
//! Owns: building the cases (with the real `Document` API and real, deterministic keys), the vector
//! file format, and turning a vector file back into a `Snapshot`. Must not read the clock or use
//! randomness: the rendered files are byte-for-byte reproducible, which `tests/test_vectors.rs` checks.
//!
//! Included by `examples/gen_vectors.rs` (writes the files) and `tests/test_vectors.rs` (checks them),
//! each of which uses a different part; hence the `dead_code` allowance.

#![allow(dead_code)]

#[path = "history_vectors.rs"]
pub mod history;
#[path = "rev4.rs"]
pub mod rev4;
#[path = "rev5.rs"]
pub mod rev5;
#[path = "rev6.rs"]
pub mod rev6;

use ledger_format::check::Check;
use ledger_format::crypto::{self, Blake3Digest, CryptoError, KeyId, PublicKey, SecretKey, KEY_ID_CONTEXT};
use ledger_format::document::{DocKind, Document, Payload};
use ledger_format::json;
use ledger_format::time::Timestamp;
use ledger_format::tree::{Node, Snapshot, POLICY_PATH};
use ledger_format::types::{
    CanaryStep, DriftMode, Entry, EntryType, Environment, EnvironmentType, Group, HealthCheck, Image, KeyInfo, Policy,
    PolicyType, Provider, RevertPolicy, Role, Strategy,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::str::FromStr;

// ---------------------------------------------------------------------------------------------------
// The vector file format (documented in the generated test-vectors/README.md).

/// One vector file: a whole tree, the instant it is judged at, and the verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vector {
    pub description: String,
    pub now: String,
    /// Every node under trust/, environments/ and ledger/, by path. A path that is not UTF-8 is written
    /// as `base64:` followed by the standard base64 of its bytes.
    pub files: BTreeMap<String, FileNode>,
    pub expected: Expected,
}

/// What sits at a path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FileNode {
    /// A regular file whose bytes are this UTF-8 text.
    Text(String),
    /// A regular file whose bytes are not UTF-8, in standard base64 with padding.
    Base64(String),
    /// A symbolic link to this target.
    Symlink(String),
    /// A regular file of `count` copies of `byte` (keeps oversized files small in the vector).
    Repeat { byte: u8, count: usize },
    /// A node that is neither a regular file, a directory nor a symbolic link, such as a submodule.
    Other(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    pub valid: bool,
    /// Every problem, as a multiset of (path, check), sorted by path then check.
    pub problems: Vec<ExpectedProblem>,
    /// For a valid tree: the document hash of every document, by path.
    pub hashes: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedProblem {
    /// The path as reported: a non-UTF-8 path with each invalid sequence replaced by U+FFFD.
    pub path: String,
    pub check: String,
    /// For E5, N4 and P4: the signature check (S1, S2 or S3) that failed underneath.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

/// A named vector: `name` is the file path under test-vectors/ without `.json`, e.g. `valid/basic`.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub vector: Vector,
}

/// Prefix of a path key that holds the base64 of a non-UTF-8 path.
pub const RAW_PATH_PREFIX: &str = "base64:";

/// The bytes of the path a `files` key names.
pub fn path_bytes(key: &str) -> Result<Vec<u8>, String> {
    match key.strip_prefix(RAW_PATH_PREFIX) {
        Some(b64) => base64_decode(b64).ok_or_else(|| format!("path key {key:?} is not valid base64")),
        None => Ok(key.as_bytes().to_vec()),
    }
}

/// Rebuilds the snapshot a vector describes (uses only the vector, never the in-memory cases).
pub fn to_snapshot(vector: &Vector) -> Result<Snapshot, String> {
    let mut snapshot = Snapshot::default();
    for (key, file) in &vector.files {
        let node = match file {
            FileNode::Text(text) => Node::File(text.as_bytes().to_vec()),
            FileNode::Base64(b64) => Node::File(base64_decode(b64).ok_or_else(|| format!("{key}: invalid base64"))?),
            FileNode::Symlink(_) => Node::Symlink,
            FileNode::Repeat { byte, count } => Node::File(vec![*byte; *count]),
            FileNode::Other(what) => Node::Other(what.clone()),
        };
        snapshot.nodes.insert(path_bytes(key)?, node);
    }
    Ok(snapshot)
}

// ---------------------------------------------------------------------------------------------------
// Deterministic keys.

/// The ledger every case lives in, and the one a foreign entry claims.
pub const LEDGER: &str = "acme-payments";
pub const OTHER_LEDGER: &str = "acme-billing";
/// The instant every case is judged at.
pub const NOW: &str = "2026-06-01T00:00:00Z";

/// A test key: its seed is BLAKE3("stele test-vector key " + label).
pub struct TestKey {
    pub label: &'static str,
    pub secret: SecretKey,
}

impl TestKey {
    fn new(label: &'static str) -> Self {
        let seed = blake3::hash(format!("stele test-vector key {label}").as_bytes());
        Self { label, secret: SecretKey::from_seed(seed.as_bytes()) }
    }

    pub fn public(&self) -> PublicKey {
        self.secret.public_key()
    }

    pub fn id(&self) -> KeyId {
        self.public().key_id()
    }

    fn info(&self) -> KeyInfo {
        KeyInfo { name: lit(self.label), public_key: self.public() }
    }
}

pub struct Keys {
    /// The root of every policy.
    pub root: TestKey,
    /// A root that was rotated out; only ever seen as a leftover policy signature.
    pub old_root: TestKey,
    pub alice: TestKey,
    pub bob: TestKey,
    pub carol: TestKey,
    /// Never in any policy.
    pub mallory: TestKey,
    /// An agent key (revision 4): reports on prod, holds no role.
    pub agent: TestKey,
    /// The timestamp role's key (revision 4), such as a CI bot's.
    pub bot: TestKey,
}

impl Default for Keys {
    fn default() -> Self {
        Self::new()
    }
}

impl Keys {
    pub fn new() -> Self {
        Self {
            root: TestKey::new("root"),
            old_root: TestKey::new("old-root"),
            alice: TestKey::new("alice"),
            bob: TestKey::new("bob"),
            carol: TestKey::new("carol"),
            mallory: TestKey::new("mallory"),
            agent: TestKey::new("agent"),
            bot: TestKey::new("bot"),
        }
    }

    pub fn all(&self) -> [&TestKey; 8] {
        [&self.root, &self.old_root, &self.alice, &self.bob, &self.carol, &self.mallory, &self.agent, &self.bot]
    }
}

// ---------------------------------------------------------------------------------------------------
// Payload and tree builders.

/// Parses a literal the cases spell out; they are all valid.
fn lit<T: FromStr>(s: &str) -> T
where
    T::Err: Debug,
{
    s.parse().expect("test-vector literals are valid")
}

fn role(keys: &[&TestKey], threshold: u64) -> Role {
    Role { keys: keys.iter().map(|k| k.id()).collect(), threshold }
}

/// Version 1 of the policy of [`LEDGER`], root role `root` (1 of 1), with `keys` registered.
fn policy(k: &Keys, keys: &[&TestKey], envs: &[(&str, Role)]) -> Policy {
    Policy {
        payload_type: PolicyType,
        ledger: lit(LEDGER),
        version: 1,
        expires_at: None,
        keys: std::iter::once(&k.root).chain(keys.iter().copied()).map(|k| (k.id(), k.info())).collect(),
        root: role(&[&k.root], 1),
        environments: envs.iter().map(|(name, role)| (lit(name), role.clone())).collect(),
        agents: BTreeMap::new(),
        timestamp: None,
        ledger_layout: None,
    }
}

/// A plain environment spec: one group of 3, rolling update, TCP health check.
fn env_spec(env: &str) -> Environment {
    Environment {
        payload_type: EnvironmentType,
        ledger: lit(LEDGER),
        name: lit(env),
        version: 1,
        provider: Provider::Local {},
        groups: vec![Group { name: lit("web"), capacity: 3 }],
        strategy: Strategy::Rolling { max_surge: 1, max_unavailable: 1, min_ready_seconds: 10 },
        health: HealthCheck::Tcp { interval_ms: 1000, timeout_ms: 500, healthy_threshold: 2, deadline_seconds: 120 },
        drift: DriftMode::Correct,
        revert: RevertPolicy::Allow,
        max_instance_age_seconds: None,
    }
}

/// Entry `seq` of `env`: release `1.<seq>.0`, created on day `seq` of May 2026.
fn entry(env: &str, seq: u64, prev: Blake3Digest) -> Entry {
    let uri = format!("https://artifacts.example.com/{env}/app-1.{seq}.0.tar");
    let created = lit::<Timestamp>("2026-05-01T12:00:00Z").unix() + (seq as i64 - 1) * 86_400;
    Entry {
        payload_type: EntryType,
        ledger: lit(LEDGER),
        env: lit(env),
        seq,
        prev,
        version: lit(&format!("1.{seq}.0")),
        image: Image::Artifact {
            blake3: Blake3Digest(*blake3::hash(uri.as_bytes()).as_bytes()),
            uri: lit(&uri),
            size: 4096 * seq,
        },
        created_at: Timestamp::from_unix(created).expect("May 2026 is in range"),
        expires_at: None,
    }
}

fn signed<T: Payload>(payload: T, keys: &[&TestKey]) -> Document<T> {
    let mut doc = Document::new(payload);
    for key in keys {
        doc.sign(&key.secret);
    }
    doc
}

fn entry_path(env: &str, seq: u64) -> String {
    format!("ledger/{env}/{seq}.json")
}

fn spec_path(env: &str) -> String {
    format!("environments/{env}.json")
}

/// A tree under construction: its files, and the document hash of each file written as a document.
#[derive(Clone, Default)]
struct Tree {
    files: BTreeMap<String, FileNode>,
    hashes: BTreeMap<String, Blake3Digest>,
}

impl Tree {
    fn put<T: Payload>(&mut self, path: &str, doc: &Document<T>) {
        self.put_bytes(path, doc.to_file_bytes());
        self.hashes.insert(path.to_owned(), doc.hash());
    }

    fn put_bytes(&mut self, path: &str, bytes: Vec<u8>) {
        let node = match String::from_utf8(bytes) {
            Ok(text) => FileNode::Text(text),
            Err(e) => FileNode::Base64(base64_encode(e.as_bytes())),
        };
        self.files.insert(path.to_owned(), node);
        self.hashes.remove(path);
    }

    fn put_node(&mut self, path: &str, node: FileNode) {
        self.files.insert(path.to_owned(), node);
        self.hashes.remove(path);
    }

    fn put_raw_path(&mut self, path: &[u8], bytes: Vec<u8>) {
        assert!(std::str::from_utf8(path).is_err(), "UTF-8 paths are written as they are");
        self.put_bytes(&format!("{RAW_PATH_PREFIX}{}", base64_encode(path)), bytes);
    }

    fn remove(&mut self, path: &str) {
        self.files.remove(path).expect("the case removes a file that exists");
        self.hashes.remove(path);
    }

    fn bytes(&self, path: &str) -> Vec<u8> {
        match &self.files[path] {
            FileNode::Text(text) => text.as_bytes().to_vec(),
            other => panic!("{path} is not a text file: {other:?}"),
        }
    }

    fn text(&self, path: &str) -> String {
        String::from_utf8(self.bytes(path)).expect("text files are UTF-8")
    }

    /// Rewrites `path` with `edit` applied to its text; panics if the edit changes nothing.
    fn edit_text(&mut self, path: &str, edit: impl FnOnce(&str) -> String) {
        let before = self.text(path);
        let after = edit(&before);
        assert_ne!(before, after, "the edit of {path} changes nothing");
        self.put_bytes(path, after.into_bytes());
    }

    /// Appends a chain of `n` entries of `env`, each signed by `signers`, shaped by `shape`.
    fn chain_with(
        &mut self,
        env: &str,
        n: u64,
        signers: &[&TestKey],
        shape: impl Fn(&mut Entry),
    ) -> Vec<Document<Entry>> {
        let mut docs: Vec<Document<Entry>> = Vec::new();
        for seq in 1..=n {
            let mut payload = entry(env, seq, docs.last().map_or(Blake3Digest::ZERO, |d| d.hash()));
            shape(&mut payload);
            let doc = signed(payload, signers);
            self.put(&entry_path(env, seq), &doc);
            docs.push(doc);
        }
        docs
    }

    fn chain(&mut self, env: &str, n: u64, signers: &[&TestKey]) -> Vec<Document<Entry>> {
        self.chain_with(env, n, signers, |_| {})
    }
}

/// One environment of a tree built by [`build`].
struct EnvSetup<'a> {
    name: &'a str,
    signers: &'a [&'a TestKey],
    entries: u64,
}

/// A tree holding `policy` (signed by the root key), a spec for each environment in `envs` signed by
/// its signers, and a chain of entries for each.
fn build(k: &Keys, policy: Policy, envs: &[EnvSetup]) -> (Tree, BTreeMap<String, Vec<Document<Entry>>>) {
    let mut tree = Tree::default();
    tree.put(POLICY_PATH, &signed(policy, &[&k.root]));
    let mut chains = BTreeMap::new();
    for env in envs {
        tree.put(&spec_path(env.name), &signed(env_spec(env.name), env.signers));
        chains.insert(env.name.to_owned(), tree.chain(env.name, env.entries, env.signers));
    }
    (tree, chains)
}

/// The everyday tree: environment `prod`, signed by alice (1 of 1), with entries 1 and 2.
fn standard(k: &Keys) -> (Tree, Vec<Document<Entry>>) {
    let policy = policy(k, &[&k.alice], &[("prod", role(&[&k.alice], 1))]);
    let (tree, mut chains) = build(k, policy, &[EnvSetup { name: "prod", signers: &[&k.alice], entries: 2 }]);
    (tree, chains.remove("prod").expect("prod was built"))
}

/// Environment `prod` needing 2 of {alice, bob}, with entries 1 and 2 signed by both.
fn two_of_two(k: &Keys) -> (Tree, Vec<Document<Entry>>) {
    let policy = policy(k, &[&k.alice, &k.bob], &[("prod", role(&[&k.alice, &k.bob], 2))]);
    let (tree, mut chains) = build(k, policy, &[EnvSetup { name: "prod", signers: &[&k.alice, &k.bob], entries: 2 }]);
    (tree, chains.remove("prod").expect("prod was built"))
}

// ---------------------------------------------------------------------------------------------------
// Hand-made documents, for what the Document API deliberately cannot produce.

fn to_value<T: Serialize>(payload: &T) -> Value {
    serde_json::to_value(payload).expect("payloads serialize")
}

/// The bytes a signature over `payload` covers (SPEC.md §4.2).
fn pae_of(kind: DocKind, payload: &Value) -> Vec<u8> {
    crypto::pae(kind.payload_type(), &json::to_jcs(payload).expect("the payload is canonical"))
}

fn sig_value(keyid: &KeyId, sig: &[u8; 64]) -> Value {
    json!({ "keyid": keyid.to_hex(), "sig": hex::encode(sig) })
}

/// Canonical file bytes of an envelope with exactly these signature objects, in this order.
fn envelope(payload: &Value, signatures: Vec<Value>) -> Vec<u8> {
    json::to_file_form(&json!({ "payload": payload, "signatures": signatures })).expect("envelopes are canonical")
}

/// Signs `payload` (already a JSON value) with each key, signatures sorted as D4 requires.
fn sign_value(kind: DocKind, payload: &Value, keys: &[&TestKey]) -> Vec<u8> {
    let pae = pae_of(kind, payload);
    let mut sigs: Vec<Value> = keys.iter().map(|k| sig_value(&k.id(), &k.secret.sign(&pae))).collect();
    sort_signatures(&mut sigs);
    envelope(payload, sigs)
}

/// Sorts signature objects by keyid, then sig (lowercase hex sorts like the bytes it spells).
fn sort_signatures(sigs: &mut [Value]) {
    sigs.sort_by_key(|s| (s["keyid"].as_str().map(str::to_owned), s["sig"].as_str().map(str::to_owned)));
}

/// The order of the Ed25519 group, little-endian.
const GROUP_ORDER: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// The same signature with `S` replaced by `S + L`: the same scalar mod L, so a verifier that does not
/// insist on `S < L` accepts it as a second, distinct signature.
fn malleate(sig: &[u8; 64]) -> [u8; 64] {
    let mut out = *sig;
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(sig[32 + i]) + u16::from(GROUP_ORDER[i]) + carry;
        out[32 + i] = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0, "S + L fits in 256 bits since S < L < 2^253");
    out
}

/// A valid Ed25519 signature by `signer` over `message` with another nonce than RFC 8032's: the same
/// secret scalar with another hash prefix (from which the nonce is derived). A second, different
/// signature by the same key that verifies strictly all the same; only the key's holder can make one.
fn sign_with_other_nonce(signer: &TestKey, nonce_seed: &[u8; 32], message: &[u8]) -> [u8; 64] {
    use ed25519_dalek::hazmat::{raw_sign, ExpandedSecretKey};
    let key = ed25519_dalek::SigningKey::from_bytes(&signer.secret.seed());
    let expanded = ExpandedSecretKey { scalar: key.to_scalar(), hash_prefix: *nonce_seed };
    raw_sign::<ed25519_dalek::Sha512>(&expanded, message, &key.verifying_key()).to_bytes()
}

const BASE64_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 (RFC 4648 §4) with padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64_ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes what [`base64_encode`] writes; `None` for anything else (including non-canonical padding bits).
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if bytes.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (index, quad) in bytes.chunks(4).enumerate() {
        let last = index == bytes.len() / 4 - 1;
        let pad = quad.iter().rev().take_while(|b| **b == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for (i, b) in quad[..4 - pad].iter().enumerate() {
            let v = BASE64_ALPHABET.iter().position(|a| a == b)? as u32;
            n |= v << (18 - 6 * i);
        }
        let decoded = n.to_be_bytes();
        out.extend_from_slice(&decoded[1..4 - pad]);
        if decoded[4 - pad..].iter().any(|b| *b != 0) {
            return None;
        }
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------------
// The cases.

fn valid(tree: &Tree) -> Expected {
    assert_eq!(
        tree.files.keys().collect::<Vec<_>>(),
        tree.hashes.keys().collect::<Vec<_>>(),
        "every file of a valid tree is a document"
    );
    Expected {
        valid: true,
        problems: Vec::new(),
        hashes: tree.hashes.iter().map(|(path, hash)| (path.clone(), hash.to_hex())).collect(),
    }
}

fn invalid(problems: &[(&str, Check)]) -> Expected {
    invalid_with_causes(&problems.iter().map(|(path, check)| (*path, *check, None)).collect::<Vec<_>>())
}

/// An invalid verdict whose single problem is a signature-role check (E5, N4, P4) failing by `cause`.
fn invalid_signed(path: &str, check: Check, cause: Check) -> Expected {
    invalid_with_causes(&[(path, check, Some(cause))])
}

fn invalid_with_causes(problems: &[(&str, Check, Option<Check>)]) -> Expected {
    let mut problems: Vec<ExpectedProblem> = problems
        .iter()
        .map(|(path, check, cause)| ExpectedProblem {
            path: (*path).to_owned(),
            check: check.id().to_owned(),
            cause: cause.map(|c| c.id().to_owned()),
        })
        .collect();
    problems.sort_by(|a, b| (&a.path, &a.check).cmp(&(&b.path, &b.check)));
    Expected { valid: false, problems, hashes: BTreeMap::new() }
}

#[derive(Default)]
struct Cases(Vec<Case>);

impl Cases {
    fn add(&mut self, name: &str, description: &str, tree: Tree, expected: Expected) {
        assert_eq!(name.starts_with("valid/"), expected.valid, "{name}: valid cases live in valid/");
        assert!(self.0.iter().all(|c| c.name != name), "{name}: duplicate case name");
        let vector = Vector { description: description.to_owned(), now: NOW.to_owned(), files: tree.files, expected };
        self.0.push(Case { name: name.to_owned(), vector });
    }
}

/// Every case, in a fixed order.
pub fn build_cases() -> Vec<Case> {
    let k = Keys::new();
    let mut cases = Cases::default();
    valid_cases(&k, &mut cases);
    layout_cases(&k, &mut cases);
    document_cases(&k, &mut cases);
    policy_cases(&k, &mut cases);
    environment_cases(&k, &mut cases);
    chain_cases(&k, &mut cases);
    signature_cases(&k, &mut cases);
    rev4::tree_cases(&k, &mut cases);
    rev5::tree_cases(&k, &mut cases);
    rev6::tree_cases(&k, &mut cases);
    cases.0
}

fn valid_cases(k: &Keys, cases: &mut Cases) {
    let (tree, _) = standard(k);
    cases.add(
        "valid/basic",
        "One environment, prod, signed by alice (1 of 1), with a chain of two entries.",
        tree.clone(),
        valid(&tree),
    );

    let policy_value = policy(k, &[&k.alice], &[("prod", role(&[&k.alice], 1))]);
    let (tree, _) = build(k, policy_value, &[EnvSetup { name: "prod", signers: &[&k.alice], entries: 0 }]);
    cases.add(
        "valid/no-entries-yet",
        "An environment with a spec and no entries is valid.",
        tree.clone(),
        valid(&tree),
    );

    // Two environments exercising every payload variant and the canonical-JSON corners a second
    // implementation most often gets wrong: escapes in strings, the largest integer, optional members.
    let mut alice = k.alice.info();
    alice.name = lit(r#"Alice "release" O\Brien"#);
    let mut policy_value = policy(
        k,
        &[&k.alice, &k.bob, &k.carol],
        &[("staging", role(&[&k.alice], 1)), ("prod", role(&[&k.alice, &k.bob, &k.carol], 2))],
    );
    policy_value.keys.insert(k.alice.id(), alice);
    policy_value.expires_at = Some(lit("2027-01-01T00:00:00Z"));
    let mut tree = Tree::default();
    tree.put(POLICY_PATH, &signed(policy_value, &[&k.root]));
    tree.put(&spec_path("staging"), &signed(env_spec("staging"), &[&k.alice]));
    let mut prod = env_spec("prod");
    prod.groups = vec![Group { name: lit("api"), capacity: 10 }, Group { name: lit("worker"), capacity: 4 }];
    prod.strategy = Strategy::Canary {
        steps: vec![
            CanaryStep { weight: 5, pause_seconds: 600 },
            CanaryStep { weight: 50, pause_seconds: 1800 },
            CanaryStep { weight: 100, pause_seconds: 0 },
        ],
    };
    prod.health = HealthCheck::Http {
        path: lit("/healthz?full=1"),
        interval_ms: 2000,
        timeout_ms: 1000,
        healthy_threshold: 3,
        deadline_seconds: 900,
    };
    prod.drift = DriftMode::Report;
    prod.revert = RevertPolicy::Signed;
    prod.max_instance_age_seconds = Some(json::MAX_INTEGER);
    tree.put(&spec_path("prod"), &signed(prod, &[&k.bob, &k.carol]));
    tree.chain_with("staging", 3, &[&k.alice], |e| e.expires_at = Some(lit("2026-12-31T23:59:59Z")));
    tree.chain_with("prod", 3, &[&k.bob, &k.carol], |e| {
        e.image = Image::MachineImage {
            id: lit(&format!("ami-0{}f00dfeed", e.seq)),
            blake3: Blake3Digest(*blake3::hash(&e.seq.to_be_bytes()).as_bytes()),
        }
    });
    cases.add(
        "valid/two-environments",
        "Environments staging (alice, 1 of 1; rolling, TCP health, artifacts, entries that expire after `now`) \
         and prod (2 of alice, bob, carol, signed by bob and carol; canary, HTTP health, machine images, \
         max_instance_age_seconds = 2^53 - 1), three entries each. The policy expires after `now`, and alice's \
         key name holds a quote and a backslash, which the canonical form escapes.",
        tree.clone(),
        valid(&tree),
    );

    let (tree, _) = two_of_two(k);
    cases.add(
        "valid/threshold-2-of-2",
        "prod needs 2 of {alice, bob}; the spec and both entries carry both signatures.",
        tree.clone(),
        valid(&tree),
    );

    let policy_value = policy(k, &[&k.alice, &k.bob, &k.carol], &[("prod", role(&[&k.alice, &k.bob, &k.carol], 2))]);
    let (tree, _) =
        build(k, policy_value, &[EnvSetup { name: "prod", signers: &[&k.alice, &k.bob, &k.carol], entries: 2 }]);
    cases.add(
        "valid/threshold-2-of-3-signed-by-3",
        "prod needs 2 of {alice, bob, carol}; every document carries all three signatures, which is more than enough.",
        tree.clone(),
        valid(&tree),
    );

    let (mut tree, _) = standard(k);
    tree.remove(&entry_path("prod", 2));
    tree.chain_with("prod", 2, &[&k.alice], |e| {
        if e.seq == 1 {
            e.expires_at = Some(lit("2026-05-15T00:00:00Z"));
        }
    });
    cases.add(
        "valid/expired-entry-below-the-tip",
        "Entry 1 expired before `now`, but entry 2, the tip, does not expire: only the tip is acted on (E6).",
        tree.clone(),
        valid(&tree),
    );

    let (mut tree, chains) = standard(k);
    let mut policy_value = policy(k, &[&k.bob], &[("prod", role(&[&k.bob], 1))]);
    policy_value.version = 2;
    tree.put(POLICY_PATH, &signed(policy_value, &[&k.root]));
    tree.put(&spec_path("prod"), &signed(env_spec("prod"), &[&k.bob]));
    tree.put(&entry_path("prod", 2), &Document::new(chains[1].payload.clone()));
    tree.put(&entry_path("prod", 3), &signed(entry("prod", 3, chains[1].hash()), &[&k.bob]));
    cases.add(
        "valid/entries-below-the-tip-are-endorsed-by-it",
        "Policy version 2 replaced alice by bob. Entry 1 carries only alice's signature, by a key the policy no \
         longer lists (skipped); entry 2 carries no signature at all (threshold 0 below the tip); entry 3, the \
         tip, is signed by bob and endorses both through prev. Who could sign the earlier entries when they \
         were added is a question for history verification, not for one tree.",
        tree.clone(),
        valid(&tree),
    );

    let (mut tree, _) = standard(k);
    let mut policy_value = policy(k, &[&k.alice], &[("prod", role(&[&k.alice], 1))]);
    policy_value.version = 2;
    tree.put(POLICY_PATH, &signed(policy_value, &[&k.root, &k.old_root]));
    cases.add(
        "valid/policy-with-a-signature-by-the-previous-root",
        "Policy version 2 also carries a signature by old-root, which it does not list: a rotated-out root's \
         signature is judged against the previous policy by the history verifier, so verifying one tree \
         skips it (P4 counts only the root role's keys).",
        tree.clone(),
        valid(&tree),
    );
}

fn layout_cases(k: &Keys, cases: &mut Cases) {
    let (mut tree, _) = standard(k);
    tree.put_node(&entry_path("prod", 3), FileNode::Symlink("2.json".into()));
    cases.add(
        "invalid/t1-symlink-in-ledger",
        "ledger/prod/3.json is a symbolic link to 2.json. Links are refused wherever they point (T1); the \
         rest of the chain is fine.",
        tree,
        invalid(&[("ledger/prod/3.json", Check::T1)]),
    );

    let (mut tree, _) = standard(k);
    tree.chain("prod", 3, &[&k.alice]);
    tree.put_node(&entry_path("prod", 2), FileNode::Symlink("1.json".into()));
    cases.add(
        "invalid/t1-symlink-in-ledger-leaves-a-gap",
        "ledger/prod/2.json is a symbolic link (T1); a refused node takes no further part, so entry 3 follows a \
         gap (E3).",
        tree,
        invalid(&[("ledger/prod/2.json", Check::T1), ("ledger/prod/3.json", Check::E3)]),
    );

    let (mut tree, _) = standard(k);
    tree.put_node(&entry_path("prod", 3), FileNode::Other("submodule".into()));
    cases.add(
        "invalid/t1-submodule-in-ledger",
        "ledger/prod/3.json is a Git submodule (a gitlink, mode 160000), not a regular file (T1).",
        tree,
        invalid(&[("ledger/prod/3.json", Check::T1)]),
    );

    let (mut tree, _) = standard(k);
    tree.put_node(&spec_path("prod"), FileNode::Symlink("../trust/policy.json".into()));
    cases.add(
        "invalid/t1-spec-is-a-symlink",
        "environments/prod.json is a symbolic link (T1), so the declared environment prod has no spec (N2); its \
         entries are judged all the same.",
        tree,
        invalid(&[("environments/prod.json", Check::T1), ("environments/prod.json", Check::N2)]),
    );

    let (mut tree, _) = standard(k);
    tree.put_node(POLICY_PATH, FileNode::Symlink("../environments/prod.json".into()));
    cases.add(
        "invalid/t1-policy-is-a-symlink",
        "trust/policy.json is a symbolic link: refused (T1), so there is no policy (T3) and nothing else is judged.",
        tree,
        invalid(&[(POLICY_PATH, Check::T1), (POLICY_PATH, Check::T3)]),
    );

    let (mut tree, _) = standard(k);
    let copy = tree.bytes(&entry_path("prod", 2));
    let raw_path: &[u8] = b"ledger/prod/3\xff.json";
    tree.put_raw_path(raw_path, copy);
    cases.add(
        "invalid/t2-non-utf8-path",
        "A copy of entry 2 at the non-UTF-8 path ledger/prod/3<0xff>.json (a base64: key in files): refused (T2), \
         reported with the invalid byte replaced by U+FFFD.",
        tree,
        invalid(&[(&String::from_utf8_lossy(raw_path), Check::T2)]),
    );

    let (mut tree, _) = standard(k);
    tree.put_bytes("ledger/prod/notes.txt", b"promoted after the change review\n".to_vec());
    cases.add(
        "invalid/t2-unexpected-file-in-ledger",
        "ledger/prod/notes.txt is not an entry file name: the format owns ledger/ entirely (T2).",
        tree,
        invalid(&[("ledger/prod/notes.txt", Check::T2)]),
    );

    let (mut tree, _) = standard(k);
    let tricks = [
        "ledger/prod/0.json",
        "ledger/prod/02.json",
        "ledger/prod/1000000000000000.json",
        "ledger/prod/.json",
        "ledger/prod/+3.json",
        "ledger/prod/3.JSON",
        "ledger/../3.json",
        "ledger/Prod/1.json",
        "ledger/prod/sub/3.json",
        "ledger/3.json",
        "environments/prod.json.bak",
        "trust/keys/root.pub",
    ];
    for path in tricks {
        tree.put_bytes(path, b"{}\n".to_vec());
    }
    cases.add(
        "invalid/t2-path-tricks",
        "Files at paths that only look like the layout: seq 0, a leading zero, a seq of 16 digits, an empty seq, a sign, an upper-case \
         extension, `..` as an environment name, an upper-case environment, a nested directory, a file directly \
         under ledger/, and stray files under environments/ and trust/. Each is refused (T2).",
        tree,
        invalid(&tricks.map(|p| (p, Check::T2))),
    );

    let (mut tree, _) = standard(k);
    tree.remove(POLICY_PATH);
    cases.add(
        "invalid/t3-missing-policy",
        "No trust/policy.json: nothing can be judged (T3).",
        tree,
        invalid(&[(POLICY_PATH, Check::T3)]),
    );
}

fn document_cases(k: &Keys, cases: &mut Cases) {
    let max = DocKind::Entry.max_size();
    let (mut tree, _) = standard(k);
    tree.put_node(&entry_path("prod", 3), FileNode::Repeat { byte: b' ', count: max + 1 });
    cases.add(
        "invalid/d1-oversized-entry",
        "ledger/prod/3.json is 16385 bytes, one more than an entry may have: refused before parsing (D1).",
        tree,
        invalid(&[("ledger/prod/3.json", Check::D1)]),
    );

    let (mut tree, _) = standard(k);
    tree.put_node(&entry_path("prod", 3), FileNode::Repeat { byte: b' ', count: max });
    cases.add(
        "invalid/d2-entry-of-exactly-the-size-limit-is-parsed",
        "ledger/prod/3.json is exactly 16384 bytes (all spaces): within the limit, so it is parsed and \
         refused as not JSON (D2), not as oversized.",
        tree,
        invalid(&[("ledger/prod/3.json", Check::D2)]),
    );

    let (mut tree, _) = standard(k);
    tree.edit_text(&entry_path("prod", 2), |t| t.replacen("\"seq\": 2,", "\"seq\": 2,\n    \"seq\": 2,", 1));
    cases.add(
        "invalid/d2-duplicate-key",
        "Entry 2's payload has member seq twice (with the same value): refused (D2).",
        tree,
        invalid(&[("ledger/prod/2.json", Check::D2)]),
    );

    let (mut tree, _) = standard(k);
    tree.edit_text(&entry_path("prod", 2), |t| t.replacen("\"seq\": 2,", "\"seq\": 2.0,", 1));
    cases.add(
        "invalid/d2-float",
        "Entry 2 says \"seq\": 2.0; only integers are allowed (D2).",
        tree,
        invalid(&[("ledger/prod/2.json", Check::D2)]),
    );

    let (mut tree, _) = standard(k);
    let mut bytes = tree.bytes(&entry_path("prod", 2));
    let at = bytes.windows(7).position(|w| w == b"\"1.2.0\"").expect("entry 2 is version 1.2.0");
    bytes[at + 2] = 0xff;
    tree.put_bytes(&entry_path("prod", 2), bytes);
    cases.add(
        "invalid/d2-invalid-utf8",
        "Entry 2's version string holds the byte 0xff, which is not UTF-8 (D2).",
        tree,
        invalid(&[("ledger/prod/2.json", Check::D2)]),
    );

    let (mut tree, _) = standard(k);
    tree.edit_text(&entry_path("prod", 2), |t| t.replacen("\"seq\": 2,", "\"seq\":  2,", 1));
    cases.add(
        "invalid/d3-extra-whitespace",
        "Entry 2 has two spaces after one member name's colon: strict JSON of the right value, but not its \
         canonical file form (D3).",
        tree,
        invalid(&[("ledger/prod/2.json", Check::D3)]),
    );

    let (mut tree, _) = standard(k);
    tree.chain("prod", 3, &[&k.alice]);
    tree.edit_text(&entry_path("prod", 2), |t| t.replacen('\n', "\r\n", 1));
    cases.add(
        "invalid/d3-unreadable-entry-breaks-the-next-link",
        "Entry 2 has a CR before its first LF (D3); an entry that cannot be read leaves the prev of entry 3 \
         uncheckable (E4).",
        tree,
        invalid(&[("ledger/prod/2.json", Check::D3), ("ledger/prod/3.json", Check::E4)]),
    );

    let (mut tree, entries) = standard(k);
    let ledger_line = format!("    \"ledger\": \"{LEDGER}\",\n");
    let prev_line = format!("    \"prev\": \"{}\",\n", entries[0].hash());
    tree.edit_text(&entry_path("prod", 2), |t| {
        t.replacen(&format!("{ledger_line}{prev_line}"), &format!("{prev_line}{ledger_line}"), 1)
    });
    cases.add(
        "invalid/d3-members-not-sorted",
        "Entry 2's payload lists prev before ledger: members must be sorted by name (D3).",
        tree,
        invalid(&[("ledger/prod/2.json", Check::D3)]),
    );

    let (mut tree, _) = standard(k);
    tree.edit_text(&entry_path("prod", 2), |t| t.replacen("https://", "https:\\/\\/", 1));
    cases.add(
        "invalid/d3-escaped-slash",
        "Entry 2's image uri is written https:\\/\\/...: the same string, but the canonical form does not \
         escape '/' (D3).",
        tree,
        invalid(&[("ledger/prod/2.json", Check::D3)]),
    );

    let (mut tree, entries) = standard(k);
    let payload = to_value(&entries[1].payload);
    let pae = pae_of(DocKind::Entry, &payload);
    let mut envelope_value = json!({
        "comment": "approved in CHG-1234",
        "payload": payload,
        "signatures": [sig_value(&k.alice.id(), &k.alice.secret.sign(&pae))],
    });
    tree.put_bytes(&entry_path("prod", 2), json::to_file_form(&envelope_value).expect("canonical"));
    cases.add(
        "invalid/d4-unknown-envelope-member",
        "Entry 2's envelope has a member besides payload and signatures (D4).",
        tree,
        invalid(&[("ledger/prod/2.json", Check::D4)]),
    );

    let (mut tree, _) = standard(k);
    envelope_value.as_object_mut().expect("an object").remove("comment");
    envelope_value["signatures"][0]["note"] = json!("alice");
    tree.put_bytes(&entry_path("prod", 2), json::to_file_form(&envelope_value).expect("canonical"));
    cases.add(
        "invalid/d4-unknown-signature-member",
        "Entry 2's signature object has a member besides keyid and sig (D4).",
        tree,
        invalid(&[("ledger/prod/2.json", Check::D4)]),
    );

    let (mut tree, entries) = two_of_two(k);
    let payload = to_value(&entries[1].payload);
    let pae = pae_of(DocKind::Entry, &payload);
    let mut sigs: Vec<Value> = [&k.alice, &k.bob].iter().map(|k| sig_value(&k.id(), &k.secret.sign(&pae))).collect();
    sort_signatures(&mut sigs);
    sigs.reverse();
    tree.put_bytes(&entry_path("prod", 2), envelope(&payload, sigs));
    cases.add(
        "invalid/d4-signatures-not-sorted",
        "Entry 2 carries alice's and bob's valid signatures, but not sorted by keyid (D4).",
        tree,
        invalid(&[("ledger/prod/2.json", Check::D4)]),
    );

    let (mut tree, entries) = standard(k);
    let mut payload = to_value(&entries[1].payload);
    payload["note"] = json!("hotfix");
    tree.put_bytes(&entry_path("prod", 2), sign_value(DocKind::Entry, &payload, &[&k.alice]));
    cases.add(
        "invalid/d5-unknown-payload-member",
        "Entry 2's payload has a member the schema does not define, and alice signed it all the same (D5).",
        tree,
        invalid(&[("ledger/prod/2.json", Check::D5)]),
    );

    let (mut tree, _) = standard(k);
    let spec = tree.bytes(&spec_path("prod"));
    tree.put_bytes(&entry_path("prod", 3), spec);
    cases.add(
        "invalid/d5-environment-spec-filed-as-entry",
        "A copy of prod's signed environment spec at ledger/prod/3.json: its payload is not an entry (D5), so the \
         signature over a different payload type cannot be reused there.",
        tree,
        invalid(&[("ledger/prod/3.json", Check::D5)]),
    );

    let (mut tree, entries) = standard(k);
    let mut foreign = entry("prod", 3, entries[1].hash());
    foreign.ledger = lit(OTHER_LEDGER);
    tree.put(&entry_path("prod", 3), &signed(foreign, &[&k.alice]));
    cases.add(
        "invalid/d6-entry-from-another-ledger",
        "ledger/prod/3.json extends the chain correctly and alice signed it, but for ledger acme-billing, where she \
         is also a signer: refused (D6), so a signature cannot be replayed across ledgers.",
        tree,
        invalid(&[("ledger/prod/3.json", Check::D6)]),
    );
}

fn policy_cases(k: &Keys, cases: &mut Cases) {
    // A small-order point (order 8): every signature "verifies" under it with the right R.
    let weak = hex::decode("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a").expect("hex");
    let weak: [u8; 32] = weak.try_into().expect("32 bytes");
    assert_eq!(PublicKey::from_bytes(&weak), Err(CryptoError::WeakPublicKey), "the point has small order");
    let weak_id = KeyId(blake3::derive_key(KEY_ID_CONTEXT, &weak));
    let (mut tree, _) = standard(k);
    let mut payload = to_value(&policy(k, &[&k.alice], &[("prod", role(&[&k.alice], 1))]));
    payload["keys"][weak_id.to_hex()] = json!({ "name": "mallory", "public_key": hex::encode(weak) });
    payload["environments"]["prod"]["keys"].as_array_mut().expect("an array").push(json!(weak_id.to_hex()));
    tree.put_bytes(POLICY_PATH, sign_value(DocKind::Policy, &payload, &[&k.root]));
    cases.add(
        "invalid/d5-policy-with-weak-key",
        "The policy registers a small-order (weak) public key as a prod signer, under its correct key id, and the \
         root signed it: weak keys are refused when the policy is read (D5).",
        tree,
        invalid(&[(POLICY_PATH, Check::D5)]),
    );

    let (mut tree, _) = standard(k);
    let mut policy_value = policy(k, &[&k.alice], &[("prod", role(&[&k.alice], 1))]);
    policy_value.keys.insert(k.alice.id(), KeyInfo { name: lit("alice"), public_key: k.bob.public() });
    tree.put(POLICY_PATH, &signed(policy_value, &[&k.root]));
    cases.add(
        "invalid/p1-key-id-mismatch",
        "The policy lists bob's public key under alice's key id (P1).",
        tree,
        invalid(&[(POLICY_PATH, Check::P1)]),
    );

    let (mut tree, _) = two_of_two(k);
    let mut policy_value = policy(k, &[&k.alice, &k.bob], &[("prod", role(&[&k.alice, &k.bob], 2))]);
    policy_value.keys.insert(k.bob.id(), KeyInfo { name: lit("bob"), public_key: k.alice.public() });
    tree.put(POLICY_PATH, &signed(policy_value, &[&k.root]));
    cases.add(
        "invalid/p1-same-key-under-two-ids",
        "Same key twice, at registration: the policy lists alice's public key under her key id and again under \
         bob's, so that 2 of {alice, bob} could be met by alice alone. Refused (P1); even without P1 the \
         threshold counts distinct public keys.",
        tree,
        invalid(&[(POLICY_PATH, Check::P1)]),
    );

    let p2 = [
        ("p2-threshold-zero", "prod's role has threshold 0, which anyone would meet.", role(&[&k.alice], 0)),
        (
            "p2-threshold-above-key-count",
            "prod's role needs 2 signatures of its 1 key, which no one can meet.",
            role(&[&k.alice], 2),
        ),
        (
            "p2-role-lists-a-key-twice",
            "Same key twice, in a role: prod's role is [alice, alice] with threshold 2.",
            role(&[&k.alice, &k.alice], 2),
        ),
        (
            "p2-role-lists-an-unknown-key",
            "prod's role lists mallory's key id, which keys does not define.",
            role(&[&k.alice, &k.mallory], 1),
        ),
    ];
    for (name, description, prod_role) in p2 {
        let (mut tree, _) = standard(k);
        tree.put(POLICY_PATH, &signed(policy(k, &[&k.alice], &[("prod", prod_role)]), &[&k.root]));
        cases.add(
            &format!("invalid/{name}"),
            &format!("{description} (P2)"),
            tree,
            invalid(&[(POLICY_PATH, Check::P2)]),
        );
    }

    let (mut tree, _) = standard(k);
    let mut policy_value = policy(k, &[&k.alice], &[("prod", role(&[&k.alice], 1))]);
    policy_value.expires_at = Some(lit("2026-05-31T23:59:59Z"));
    tree.put(POLICY_PATH, &signed(policy_value, &[&k.root]));
    cases.add(
        "invalid/p3-expired-policy",
        "The policy expired one second before `now` (P3); nothing else is judged.",
        tree,
        invalid(&[(POLICY_PATH, Check::P3)]),
    );

    let (mut tree, _) = standard(k);
    let policy_value = policy(k, &[&k.alice], &[("prod", role(&[&k.alice], 1))]);
    tree.put(POLICY_PATH, &signed(policy_value, &[&k.alice]));
    cases.add(
        "invalid/p4-policy-not-signed-by-root",
        "The policy is signed by alice only, who is not in the root role: her signature does not count, leaving \
         0 of 1 (P4, threshold S3).",
        tree,
        invalid_signed(POLICY_PATH, Check::P4, Check::S3),
    );

    let (mut tree, _) = standard(k);
    let payload = to_value(&policy(k, &[&k.alice], &[("prod", role(&[&k.alice], 1))]));
    let mut sig = k.root.secret.sign(&pae_of(DocKind::Policy, &payload));
    sig[40] ^= 0x01;
    tree.put_bytes(POLICY_PATH, envelope(&payload, vec![sig_value(&k.root.id(), &sig)]));
    cases.add(
        "invalid/p4-bad-root-signature",
        "The root's signature on the policy has one bit flipped (P4, S1).",
        tree,
        invalid_signed(POLICY_PATH, Check::P4, Check::S1),
    );
}

fn environment_cases(k: &Keys, cases: &mut Cases) {
    let (mut tree, _) = standard(k);
    tree.put(&spec_path("staging"), &signed(env_spec("staging"), &[&k.alice]));
    cases.add(
        "invalid/n1-spec-for-undeclared-environment",
        "environments/staging.json is signed by alice, but the policy does not declare staging (N1).",
        tree,
        invalid(&[("environments/staging.json", Check::N1)]),
    );

    let policy_value = policy(k, &[&k.alice], &[("prod", role(&[&k.alice], 1)), ("staging", role(&[&k.alice], 1))]);
    let (mut tree, _) = build(
        k,
        policy_value,
        &[
            EnvSetup { name: "prod", signers: &[&k.alice], entries: 1 },
            EnvSetup { name: "staging", signers: &[&k.alice], entries: 1 },
        ],
    );
    let prod_spec = tree.bytes(&spec_path("prod"));
    tree.put_bytes(&spec_path("staging"), prod_spec);
    cases.add(
        "invalid/n1-spec-filed-under-another-environment",
        "environments/staging.json is a copy of prod's signed spec (alice signs both): it names prod (N1).",
        tree,
        invalid(&[("environments/staging.json", Check::N1)]),
    );

    let policy_value = policy(k, &[&k.alice], &[("prod", role(&[&k.alice], 1)), ("staging", role(&[&k.alice], 1))]);
    let (mut tree, _) = build(k, policy_value, &[EnvSetup { name: "prod", signers: &[&k.alice], entries: 2 }]);
    tree.chain("staging", 1, &[&k.alice]);
    cases.add(
        "invalid/n2-declared-environment-without-spec",
        "The policy declares staging, which has no spec (N2). Its entry is judged all the same, and passes: E1 \
         is only for undeclared environments.",
        tree,
        invalid(&[("environments/staging.json", Check::N2)]),
    );

    let (mut tree, _) = standard(k);
    let mut spec = env_spec("prod");
    spec.groups[0].capacity = 0;
    tree.put(&spec_path("prod"), &signed(spec, &[&k.alice]));
    cases.add(
        "invalid/n3-capacity-zero",
        "prod's spec gives its group capacity 0, outside 1..=10000 (N3).",
        tree,
        invalid(&[("environments/prod.json", Check::N3)]),
    );

    let (mut tree, _) = standard(k);
    tree.put(&spec_path("prod"), &signed(env_spec("prod"), &[&k.root]));
    cases.add(
        "invalid/n4-spec-signed-by-root-only",
        "prod's spec is signed by the root key only. Since revision 3 the root role may sign a spec (its \
         signature is verified and approves weakening a safety setting, N6), but it does not count toward \
         prod's threshold (N4, S3).",
        tree,
        invalid_signed("environments/prod.json", Check::N4, Check::S3),
    );

    let (mut tree, _) = standard(k);
    tree.put(&spec_path("prod"), &signed(env_spec("prod"), &[&k.alice, &k.mallory]));
    cases.add(
        "invalid/n4-spec-signed-by-another-role",
        "prod's spec is signed by alice (prod's signer) and by mallory, who is in no role (N4, S2).",
        tree,
        invalid_signed("environments/prod.json", Check::N4, Check::S2),
    );

    let (mut tree, _) = standard(k);
    tree.put(&spec_path("prod"), &signed(env_spec("prod"), &[&k.alice, &k.root]));
    cases.add(
        "valid/spec-co-signed-by-root",
        "prod's spec is signed by alice (prod's signer) and by the root key, which revision 3 allows on a \
         spec (the signature verifies; it counts only for the root role).",
        tree.clone(),
        valid(&tree),
    );
}

fn chain_cases(k: &Keys, cases: &mut Cases) {
    let (mut tree, _) = standard(k);
    tree.chain("staging", 2, &[&k.alice]);
    cases.add(
        "invalid/e1-entries-for-undeclared-environment",
        "ledger/staging/ holds two entries signed by alice, but the policy does not declare staging (E1 each).",
        tree,
        invalid(&[("ledger/staging/1.json", Check::E1), ("ledger/staging/2.json", Check::E1)]),
    );

    let (mut tree, entries) = standard(k);
    tree.put(&entry_path("prod", 3), &signed(entry("prod", 4, entries[1].hash()), &[&k.alice]));
    cases.add(
        "invalid/e2-seq-disagrees-with-file-name",
        "ledger/prod/3.json links to entry 2 and alice signed it, but its payload says seq 4 (E2).",
        tree,
        invalid(&[("ledger/prod/3.json", Check::E2)]),
    );

    let policy_value = policy(k, &[&k.alice], &[("prod", role(&[&k.alice], 1)), ("staging", role(&[&k.alice], 1))]);
    let (mut tree, _) = build(
        k,
        policy_value,
        &[
            EnvSetup { name: "prod", signers: &[&k.alice], entries: 2 },
            EnvSetup { name: "staging", signers: &[&k.alice], entries: 3 },
        ],
    );
    let replayed = tree.bytes(&entry_path("staging", 3));
    tree.put_bytes(&entry_path("prod", 3), replayed);
    cases.add(
        "invalid/e2-entry-replayed-into-another-environment",
        "ledger/prod/3.json is a byte-for-byte copy of ledger/staging/3.json; alice signs for both environments, \
         so only the env bound into the signed payload gives it away (E2).",
        tree,
        invalid(&[("ledger/prod/3.json", Check::E2)]),
    );

    let (mut tree, _) = standard(k);
    tree.chain("prod", 4, &[&k.alice]);
    tree.remove(&entry_path("prod", 2));
    cases.add(
        "invalid/e3-chain-gap",
        "Entries 1, 3 and 4 of prod are present, entry 2 is missing: E3 once, on entry 3, whose prev is not \
         judged; entry 4 follows on from entry 3 and links to it correctly.",
        tree,
        invalid(&[("ledger/prod/3.json", Check::E3)]),
    );

    let (mut tree, _) = standard(k);
    tree.chain_with("prod", 3, &[&k.alice], |e| {
        if e.seq == 3 {
            e.expires_at = Some(lit("2026-05-31T00:00:00Z"));
        }
    });
    tree.remove(&entry_path("prod", 2));
    cases.add(
        "invalid/e3-gap-before-an-expired-tip",
        "Entry 2 is missing (E3 on entry 3) and entry 3, the tip, has expired (E6): a gap does not hide expiry.",
        tree,
        invalid(&[("ledger/prod/3.json", Check::E3), ("ledger/prod/3.json", Check::E6)]),
    );

    let (mut tree, _) = standard(k);
    tree.remove(&entry_path("prod", 1));
    cases.add(
        "invalid/e3-chain-starts-at-2",
        "Entry 1 of prod is missing, so the chain starts at 2 (E3).",
        tree,
        invalid(&[("ledger/prod/2.json", Check::E3)]),
    );

    let (mut tree, entries) = standard(k);
    tree.put(&entry_path("prod", 3), &signed(entry("prod", 3, entries[0].hash()), &[&k.alice]));
    cases.add(
        "invalid/e4-wrong-prev",
        "ledger/prod/3.json names entry 1's hash as prev instead of entry 2's: a fork (E4).",
        tree,
        invalid(&[("ledger/prod/3.json", Check::E4)]),
    );

    let (mut tree, _) = standard(k);
    let first = signed(entry("prod", 1, Blake3Digest([0x11; 32])), &[&k.alice]);
    tree.put(&entry_path("prod", 1), &first);
    tree.put(&entry_path("prod", 2), &signed(entry("prod", 2, first.hash()), &[&k.alice]));
    cases.add(
        "invalid/e4-first-entry-with-nonzero-prev",
        "Entry 1's prev is not the zero hash (E4); entry 2 links to entry 1 correctly.",
        tree,
        invalid(&[("ledger/prod/1.json", Check::E4)]),
    );

    let (mut tree, entries) = standard(k);
    let mut tip = entry("prod", 3, entries[1].hash());
    tip.expires_at = Some(lit("2026-05-31T00:00:00Z"));
    tree.put(&entry_path("prod", 3), &signed(tip, &[&k.alice]));
    cases.add(
        "invalid/e6-expired-tip",
        "The tip entry, 3, expired the day before `now` (E6).",
        tree,
        invalid(&[("ledger/prod/3.json", Check::E6)]),
    );

    let (mut tree, entries) = standard(k);
    let mut tip = entry("prod", 3, entries[1].hash());
    tip.expires_at = Some(lit(NOW));
    tree.put(&entry_path("prod", 3), &signed(tip, &[&k.alice]));
    cases.add(
        "invalid/e6-tip-expires-exactly-now",
        "The tip entry expires at exactly `now`: expired (E6), since expires_at is the first instant it is not valid.",
        tree,
        invalid(&[("ledger/prod/3.json", Check::E6)]),
    );
}

fn signature_cases(k: &Keys, cases: &mut Cases) {
    let third = |entries: &[Document<Entry>]| entry("prod", 3, entries[1].hash());

    let (mut tree, entries) = standard(k);
    tree.put(&entry_path("prod", 3), &signed(third(&entries), &[&k.mallory]));
    cases.add(
        "invalid/e5-forged-entry",
        "ledger/prod/3.json is well formed and correctly chained, but signed by mallory, whom the policy does not \
         know (E5, S2).",
        tree,
        invalid_signed("ledger/prod/3.json", Check::E5, Check::S2),
    );

    let (mut tree, entries) = standard(k);
    tree.put(&entry_path("prod", 3), &signed(third(&entries), &[&k.root]));
    cases.add(
        "invalid/e5-signed-by-key-of-another-role",
        "ledger/prod/3.json is signed by the root key: in the policy, but not a signer of prod (E5, S2).",
        tree,
        invalid_signed("ledger/prod/3.json", Check::E5, Check::S2),
    );

    let (mut tree, entries) = standard(k);
    tree.put(&entry_path("prod", 3), &signed(third(&entries), &[&k.alice, &k.mallory]));
    cases.add(
        "invalid/e5-extra-signature-by-unknown-key",
        "ledger/prod/3.json is signed by alice (enough) and also by mallory: a signature by a key outside the role \
         is refused, not ignored (E5, S2).",
        tree,
        invalid_signed("ledger/prod/3.json", Check::E5, Check::S2),
    );

    let (mut tree, _) = standard(k);
    let mut revoked = policy(k, &[&k.bob], &[("prod", role(&[&k.bob], 1))]);
    revoked.version = 2;
    tree.put(POLICY_PATH, &signed(revoked, &[&k.root]));
    tree.put(&spec_path("prod"), &signed(env_spec("prod"), &[&k.bob]));
    cases.add(
        "invalid/e5-signer-removed-from-policy",
        "Policy version 2 replaced alice by bob (and prod's spec is re-signed by bob), but the tip, entry 2, \
         carries only alice's signature: the tip must be signed by the environment's current role (E5, S2). \
         Entry 1, also alice's, is below the tip and passes.",
        tree,
        invalid_signed("ledger/prod/2.json", Check::E5, Check::S2),
    );

    let (mut tree, _) = standard(k);
    tree.chain("prod", 3, &[&k.alice]);
    let mut value = json::parse_strict(&tree.bytes(&entry_path("prod", 2))).expect("documents parse");
    let mut sig = hex::decode(value["signatures"][0]["sig"].as_str().expect("a hex string")).expect("hex");
    sig[32] ^= 0x01;
    value["signatures"][0]["sig"] = json!(hex::encode(sig));
    tree.put_bytes(&entry_path("prod", 2), json::to_file_form(&value).expect("canonical"));
    cases.add(
        "invalid/e5-bad-signature-below-the-tip",
        "Entry 2 (not the tip) carries alice's signature with one bit of S flipped: below the tip the \
         threshold is 0, but every signature by a key the policy lists must verify (E5, S1).",
        tree,
        invalid_signed("ledger/prod/2.json", Check::E5, Check::S1),
    );

    let (mut tree, _) = standard(k);
    tree.chain("prod", 3, &[&k.alice]);
    let mut value = json::parse_strict(&tree.bytes(&entry_path("prod", 2))).expect("documents parse");
    value["payload"]["version"] = json!("1.2.1");
    tree.put_bytes(&entry_path("prod", 2), json::to_file_form(&value).expect("canonical"));
    cases.add(
        "invalid/e5-tampered-entry-below-the-tip",
        "Entry 2's version changed from 1.2.0 to 1.2.1 after alice signed it: her signature no longer verifies \
         (E5, S1), and entry 3, whose prev names the original entry 2, no longer links to it (E4).",
        tree,
        invalid_with_causes(&[
            ("ledger/prod/2.json", Check::E5, Some(Check::S1)),
            ("ledger/prod/3.json", Check::E4, None),
        ]),
    );

    let (mut tree, entries) = two_of_two(k);
    tree.put(&entry_path("prod", 3), &signed(third(&entries), &[&k.alice]));
    cases.add(
        "invalid/e5-threshold-not-met",
        "prod needs 2 of {alice, bob}; ledger/prod/3.json is signed by alice only (E5, S3).",
        tree,
        invalid_signed("ledger/prod/3.json", Check::E5, Check::S3),
    );

    let (mut tree, entries) = standard(k);
    tree.put(&entry_path("prod", 3), &Document::new(third(&entries)));
    cases.add(
        "invalid/e5-unsigned-entry",
        "ledger/prod/3.json has no signatures at all (E5, S3).",
        tree,
        invalid_signed("ledger/prod/3.json", Check::E5, Check::S3),
    );

    // The same key twice toward a threshold of 2, in every shape it can take in an envelope.
    let (tree, entries) = two_of_two(k);
    let payload = to_value(&third(&entries));
    let pae = pae_of(DocKind::Entry, &payload);
    let alice_sig = k.alice.secret.sign(&pae);
    let with_sigs = |sigs: Vec<Value>| {
        let mut tree = tree.clone();
        tree.put_bytes(&entry_path("prod", 3), envelope(&payload, sigs));
        tree
    };

    let same = sig_value(&k.alice.id(), &alice_sig);
    cases.add(
        "invalid/d4-threshold-same-signature-twice",
        "Same key twice, verbatim: prod needs 2 of {alice, bob}; ledger/prod/3.json carries alice's signature \
         object twice. Refused as an envelope with a repeated signature (D4).",
        with_sigs(vec![same.clone(), same.clone()]),
        invalid(&[("ledger/prod/3.json", Check::D4)]),
    );

    let mut upper = same.clone();
    upper["sig"] = json!(hex::encode_upper(alice_sig));
    cases.add(
        "invalid/d4-threshold-same-signature-twice-in-upper-case",
        "Same key twice, respelled: alice's signature, then the same signature in upper-case hex so the two \
         objects differ as text. Hex has one spelling, lower case (D4).",
        with_sigs(vec![same.clone(), upper]),
        invalid(&[("ledger/prod/3.json", Check::D4)]),
    );

    let other_nonce = sign_with_other_nonce(&k.alice, blake3::hash(b"another nonce").as_bytes(), &pae);
    assert_ne!(other_nonce, alice_sig, "a different nonce gives a different signature");
    assert_eq!(crypto::verify_raw(&k.alice.public().to_bytes(), &pae, &other_nonce), Ok(()), "it verifies strictly");
    let mut two = vec![same.clone(), sig_value(&k.alice.id(), &other_nonce)];
    sort_signatures(&mut two);
    cases.add(
        "invalid/e5-threshold-same-key-twice",
        "Same key twice, as two different valid signatures: alice signed ledger/prod/3.json twice with different \
         nonces, so both signatures verify strictly and the envelope is well formed. The threshold counts \
         distinct public keys: 1 of 2 (E5, S3).",
        with_sigs(two),
        invalid_signed("ledger/prod/3.json", Check::E5, Check::S3),
    );

    let mut malleated = vec![same.clone(), sig_value(&k.alice.id(), &malleate(&alice_sig))];
    sort_signatures(&mut malleated);
    cases.add(
        "invalid/e5-threshold-same-key-twice-malleated",
        "Same key twice, malleated: alice's signature and a copy with S replaced by S + L, which a lax verifier \
         accepts as a second signature. Strict verification refuses S >= L (E5, S1).",
        with_sigs(malleated),
        invalid_signed("ledger/prod/3.json", Check::E5, Check::S1),
    );

    let mut relabelled = vec![same.clone(), sig_value(&k.bob.id(), &alice_sig)];
    sort_signatures(&mut relabelled);
    cases.add(
        "invalid/e5-threshold-same-key-twice-under-another-keyid",
        "Same key twice, relabelled: alice's signature once under her key id and once under bob's. A key id only \
         says which key to try; bob's key does not verify alice's signature (E5, S1).",
        with_sigs(relabelled),
        invalid_signed("ledger/prod/3.json", Check::E5, Check::S1),
    );

    let (mut tree, entries) = two_of_two(k);
    let doc = signed(third(&entries), &[&k.alice, &k.bob]);
    let mut value = json::parse_strict(&doc.to_file_bytes()).expect("documents parse");
    value["payload"]["version"] = json!("1.3.1");
    tree.put_bytes(&entry_path("prod", 3), json::to_file_form(&value).expect("canonical"));
    cases.add(
        "invalid/e5-tampered-payload",
        "ledger/prod/3.json signed by alice and bob, then its version changed from 1.3.0 to 1.3.1 (one byte) and \
         re-rendered canonically: it reaches the signature check and fails it (E5, S1).",
        tree,
        invalid_signed("ledger/prod/3.json", Check::E5, Check::S1),
    );

    let (mut tree, entries) = standard(k);
    let payload = to_value(&third(&entries));
    let mut sig = k.alice.secret.sign(&pae_of(DocKind::Entry, &payload));
    sig[63] ^= 0x04;
    tree.put_bytes(&entry_path("prod", 3), envelope(&payload, vec![sig_value(&k.alice.id(), &sig)]));
    cases.add(
        "invalid/e5-bad-signature-bytes",
        "ledger/prod/3.json carries alice's signature with one bit of S flipped (E5, S1).",
        tree,
        invalid_signed("ledger/prod/3.json", Check::E5, Check::S1),
    );
}

// ---------------------------------------------------------------------------------------------------
// Rendering.

#[derive(Serialize)]
struct KeysFile {
    derivation: String,
    keys: Vec<KeyRecord>,
}

#[derive(Serialize)]
struct KeyRecord {
    name: &'static str,
    seed: String,
    public_key: String,
    key_id: String,
}

fn pretty<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(value).expect("vector files serialize");
    out.push(b'\n');
    out
}

/// Every file of test-vectors/, by path relative to it.
pub fn render(cases: &[Case]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for case in cases {
        out.insert(format!("{}.json", case.name), pretty(&case.vector));
    }
    let keys = KeysFile {
        derivation: format!(
            "seed = BLAKE3(\"stele test-vector key \" + name); Ed25519 per RFC 8032; \
             key_id = BLAKE3 derive_key({KEY_ID_CONTEXT:?}, public_key)"
        ),
        keys: Keys::new()
            .all()
            .iter()
            .map(|k| KeyRecord {
                name: k.label,
                seed: hex::encode(k.secret.seed()),
                public_key: hex::encode(k.public().to_bytes()),
                key_id: k.id().to_hex(),
            })
            .collect(),
    };
    out.insert("keys.json".to_owned(), pretty(&keys));
    let history = history::build_cases();
    out.extend(history::render(&history));
    out.insert("history/README.md".to_owned(), history::readme(&history).into_bytes());
    let k = Keys::new();
    let mut rev4_readme = String::from(rev4::README);
    for case in rev4::observation_cases(&k) {
        rev4_readme.push_str(&format!("- `{}.json`: {}\n", case.name, case.vector.description));
        out.insert(format!("{}.json", case.name), pretty(&case.vector));
    }
    for case in rev4::freshness_cases(&k) {
        rev4_readme.push_str(&format!("- `{}.json`: {}\n", case.name, case.vector.description));
        out.insert(format!("{}.json", case.name), pretty(&case.vector));
    }
    out.insert("observations/README.md".to_owned(), rev4_readme.into_bytes());
    out.insert("README.md".to_owned(), readme(cases).into_bytes());
    out
}

fn readme(cases: &[Case]) -> String {
    let mut text = String::from(README_HEAD);
    for case in cases {
        text.push_str(&format!("- `{}.json`: {}\n", case.name, case.vector.description));
    }
    text
}

const README_HEAD: &str = r#"# Stele ledger format v1: test vectors

Generated by `cargo run -p ledger-format --example gen_vectors` from
`ledger-format/tests/support/vectors.rs` and (history vectors) `history_vectors.rs` next to it;
`cargo test -p ledger-format --test test_vectors` fails if these files differ from what the generator
writes, and checks every tree verdict; `--test history_vectors` checks every history verdict. Do not edit
them by hand.

Each file is a whole ledger tree (as of one commit) and the verdict that tree verification (SPEC.md §7.2)
must reach. An implementation passes a vector when, for the tree in `files` judged at `now`, it finds
exactly the problems in `expected.problems` (or, for a valid tree, none, and the document hashes in
`expected.hashes`).

## Vector files

Tree vectors (this section) are `valid/*.json` and `invalid/*.json`, one case each; history vectors
(SPEC.md §8) are `history/*.json`, described in `history/README.md`; observation and freshness
vectors (revision 4, SPEC.md §8.9, §8.10) are `observations/*.json` and `freshness/*.json`, described in
`observations/README.md`. Invalid cases are named after
the check they expect, e.g. `invalid/e5-threshold-not-met.json`. Vector files are ordinary JSON (not
ledger documents):

```
{
  "description": "what the case does and why it gets its verdict",
  "now": "2026-06-01T00:00:00Z",
  "files": { "<path>": <node>, ... },
  "expected": {
    "valid": true | false,
    "problems": [ { "path": "...", "check": "E5", "cause": "S3" }, ... ],
    "hashes": { "<path>": "<64 lowercase hex digits>", ... }
  }
}
```

- `now`: the instant the tree is judged at (expiry of the policy, P3, and of tip entries, E6).
- `files`: every node under `trust/`, `environments/` and `ledger/`, keyed by path relative to the
  repository root with `/` separators. Directories are implied. A path that is not valid UTF-8 is
  written as `base64:` followed by the standard base64 (RFC 4648 §4, with padding) of its bytes; no real
  path starts with `base64:`, since every path starts with one of the three directories. A node is one of:
  - `{"text": "..."}`: a regular file whose bytes are the UTF-8 encoding of the string;
  - `{"base64": "..."}`: a regular file whose bytes (not valid UTF-8) are the decoded base64;
  - `{"repeat": {"byte": 32, "count": 16385}}`: a regular file of `count` copies of `byte`;
  - `{"symlink": "<target>"}`: a symbolic link (the target is informative; links are refused wherever
    they point);
  - `{"other": "submodule"}`: any other node that is not a directory (a submodule, FIFO, socket, device).
- `expected.valid`: whether the tree passes.
- `expected.problems`: for an invalid tree, the verdict (SPEC.md §1 convention 6, §7.2 V5): every
  problem as the path it is reported at and the check (SPEC.md §7.1) that fails there, sorted by path
  (as bytes), then by check order. A path is reported as it is when it is UTF-8; a non-UTF-8 path is
  reported with each invalid sequence replaced by U+FFFD (§7.2 V1). `cause` is present exactly for
  P4, N4 and E5 and names the signature check that failed underneath (§5.3): S1 (a signature by a key
  of the role does not verify), S2 (a signature is by a key outside the role) or S3 (too few distinct
  keys verified). A conforming implementation reports exactly these (path, check, cause) triples;
  reason texts are not compared.
- `expected.hashes`: for a valid tree, the document hash (SPEC.md §4.3) of every file, all of which are
  documents; empty for an invalid tree.

## Keys

`keys.json` lists the deterministic test keys (seed, public key, key id). Seeds are
BLAKE3("stele test-vector key " + name). `mallory` is never in any policy; `old-root` appears only as a
leftover signature on a rotated policy. Every case's ledger is `acme-payments`; `acme-billing` is the
other ledger of the replay case.

## Cases

"#;
