//! What both benchmark harnesses share: a generator of signed ledger files and the raw rate of strict
//! signature verification to compare against.

use ledger_format::crypto::SecretKey;
use ledger_format::document::Document;
use ledger_format::tree::{environment_path, Layout, POLICY_PATH};
use ledger_format::types::*;
use ledger_format::{Blake3Digest, KeyId, Timestamp};
use std::collections::BTreeMap;
use std::time::Instant;

/// Signs the files of a benchmark ledger with one key that roots the policy and signs everything.
pub struct BenchLedger {
    key: SecretKey,
    ledger: LedgerId,
    prev: BTreeMap<EnvName, (u64, Blake3Digest)>,
    made: i64,
    layout: Layout,
}

impl BenchLedger {
    pub fn new() -> Self {
        Self {
            key: SecretKey::from_seed(&[5; 32]),
            ledger: "bench".parse().unwrap(),
            prev: BTreeMap::new(),
            made: 0,
            layout: Layout::Flat,
        }
    }

    /// Entries in `layout` (SPEC.md §2.3.1), which the genesis policy names.
    #[allow(dead_code)] // used by some harnesses only
    pub fn with_layout(self, layout: Layout) -> Self {
        Self { layout, ..self }
    }

    /// Writes the generator's signing key (root and every environment's signer) as an OpenSSH key file,
    /// so the `stele` binary can sign with it.
    #[allow(dead_code)] // used by some harnesses only
    pub fn write_key(&self, path: &std::path::Path) {
        use ssh_key::private::{Ed25519Keypair, KeypairData};
        let key = ssh_key::PrivateKey::new(KeypairData::Ed25519(Ed25519Keypair::from_seed(&self.key.seed())), "bench")
            .expect("an Ed25519 key");
        key.write_openssh_file(path, ssh_key::LineEnding::LF).expect("write the key file");
    }

    /// The key id to pin as trust root.
    pub fn root(&self) -> KeyId {
        self.key.public_key().key_id()
    }

    /// The policy and one spec per environment: the files of the first commit.
    pub fn genesis(&self, envs: &[EnvName]) -> Vec<(String, Vec<u8>)> {
        let id = self.root();
        let role = Role { keys: vec![id], threshold: 1 };
        let policy = Policy {
            payload_type: PolicyType,
            ledger: self.ledger.clone(),
            version: 1,
            expires_at: None,
            keys: BTreeMap::from([(id, KeyInfo { name: "bench".parse().unwrap(), public_key: self.key.public_key() })]),
            root: role.clone(),
            environments: envs.iter().map(|e| (e.clone(), role.clone())).collect(),
            agents: BTreeMap::new(),
            timestamp: None,
            ledger_layout: (self.layout == Layout::Buckets).then_some(LedgerLayout::Buckets),
        };
        let mut files = vec![(POLICY_PATH.to_owned(), self.signed(policy))];
        for env in envs {
            let spec = Environment {
                payload_type: EnvironmentType,
                ledger: self.ledger.clone(),
                name: env.clone(),
                version: 1,
                provider: Provider::Local {},
                groups: vec![Group { name: "web".parse().unwrap(), capacity: 2 }],
                strategy: Strategy::Rolling { max_surge: 1, max_unavailable: 0, min_ready_seconds: 0 },
                health: HealthCheck::Tcp {
                    interval_ms: 500,
                    timeout_ms: 500,
                    healthy_threshold: 1,
                    deadline_seconds: 30,
                },
                drift: DriftMode::Correct,
                revert: RevertPolicy::Allow,
                max_instance_age_seconds: None,
            };
            files.push((environment_path(env), self.signed(spec)));
        }
        files
    }

    /// The next entry of `env`'s chain (about 700 bytes), as its path and file bytes.
    pub fn next_entry(&mut self, env: &EnvName) -> (String, Vec<u8>) {
        let (seq, prev) = self.prev.get(env).map_or((1, Blake3Digest::ZERO), |(s, h)| (s + 1, *h));
        self.made += 1;
        let entry = Entry {
            payload_type: EntryType,
            ledger: self.ledger.clone(),
            env: env.clone(),
            seq,
            prev,
            version: format!("1.0.{seq}").parse().unwrap(),
            image: Image::Artifact {
                uri: format!("https://images.example/{env}-{seq}.tar").parse().unwrap(),
                blake3: Blake3Digest(*blake3::hash(&self.made.to_le_bytes()).as_bytes()),
                size: 1 << 20,
            },
            created_at: Timestamp::from_unix(1_800_000_000 + self.made).unwrap(),
            expires_at: None,
        };
        let mut doc = Document::new(entry);
        doc.sign(&self.key);
        self.prev.insert(env.clone(), (seq, doc.hash()));
        (self.layout.entry_path(env, seq), doc.to_file_bytes())
    }

    fn signed<T: ledger_format::document::Payload>(&self, payload: T) -> Vec<u8> {
        let mut doc = Document::new(payload);
        doc.sign(&self.key);
        doc.to_file_bytes()
    }
}

/// Strict verifications per second of an entry-sized message: on one core, and on all cores.
pub fn raw_verify_rates() -> (f64, f64) {
    let key = SecretKey::from_seed(&[3; 32]);
    let msg = [0x5au8; 400]; // about the size of an entry's PAE
    let sig = key.sign(&msg);
    let pk = key.public_key();
    let n = 20_000;
    let start = Instant::now();
    for _ in 0..n {
        pk.verify(&msg, &sig).expect("valid signature");
    }
    let one = n as f64 / start.elapsed().as_secs_f64();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..n / threads {
                    pk.verify(&msg, &sig).expect("valid signature");
                }
            });
        }
    });
    (one, (n / threads * threads) as f64 / start.elapsed().as_secs_f64())
}
