//! Scale runs of the agent in process (the `sim` cargo feature, and the agent's tests): a signed
//! ledger generated in memory and verified by the real history verifier, handed to
//! `Worker::simulated`, whose providers run every environment on one simulated provider. No Git, no
//! processes, no network: what a pass costs is the agent's own work.
//!
//! Owns: generating such a ledger (one key roots the policy and signs everything) and its verified
//! states. Must not: judge anything itself (verification is `ledger_format::history`), or be reachable
//! from `stele agent`.

use super::{AgentConfig, Worker};
use crate::http::metrics::Metrics;
use crate::http::state::Shared;
use crate::provider::sim::Sim;
use crate::replay::Verified;
use ledger_format::document::{Direct, Document};
use ledger_format::history::{apply_step, genesis, step_between, CommitInfo, LedgerState, TrustAnchor};
use ledger_format::tree::{entry_path, environment_path, POLICY_PATH};
use ledger_format::types::*;
use ledger_format::{Blake3Digest, SecretKey, Snapshot, Timestamp};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A ledger of `envs` environments, each with one group `web` of `capacity` instances replaced in one
/// batch (rolling, max_surge = capacity, max_unavailable 0, no min-ready), verified commit by commit.
pub struct SimLedger {
    key: SecretKey,
    ledger: LedgerId,
    envs: Vec<EnvName>,
    snapshot: Snapshot,
    state: LedgerState,
    commit: u64,
    /// Per environment: the last entry's seq and document hash.
    chain: BTreeMap<EnvName, (u64, Blake3Digest)>,
}

impl SimLedger {
    /// The genesis commit: the policy and one spec per environment, no release yet.
    pub fn new(envs: &[EnvName], capacity: u64) -> Self {
        let key = SecretKey::from_seed(&[9; 32]);
        let ledger: LedgerId = "sim".parse().expect("a valid ledger id");
        let id = key.public_key().key_id();
        let role = Role { keys: vec![id], threshold: 1 };
        let policy = Policy {
            payload_type: PolicyType,
            ledger: ledger.clone(),
            version: 1,
            expires_at: None,
            keys: BTreeMap::from([(
                id,
                KeyInfo { name: "sim".parse().expect("a valid key name"), public_key: key.public_key() },
            )]),
            root: role.clone(),
            environments: envs.iter().map(|e| (e.clone(), role.clone())).collect(),
            agents: BTreeMap::new(),
            timestamp: None,
            ledger_layout: None,
        };
        let mut snapshot = Snapshot::default();
        snapshot.insert_file(POLICY_PATH, signed(&key, policy));
        for env in envs {
            let spec = Environment {
                payload_type: EnvironmentType,
                ledger: ledger.clone(),
                name: env.clone(),
                version: 1,
                provider: Provider::Local {},
                groups: vec![Group { name: "web".parse().expect("a valid group name"), capacity }],
                strategy: Strategy::Rolling { max_surge: capacity, max_unavailable: 0, min_ready_seconds: 0 },
                health: HealthCheck::Tcp {
                    interval_ms: 100,
                    timeout_ms: 100,
                    healthy_threshold: 1,
                    deadline_seconds: 30,
                },
                drift: DriftMode::Correct,
                revert: RevertPolicy::Allow,
                max_instance_age_seconds: None,
            };
            snapshot.insert_file(&environment_path(env), signed(&key, spec));
        }
        let anchor = TrustAnchor::RootKeys { keys: vec![id], threshold: 1 };
        let (state, _) = genesis(&snapshot, &anchor, &commit_info(1)).expect("the generated genesis verifies");
        Self { key, ledger, envs: envs.to_vec(), snapshot, state, commit: 1, chain: BTreeMap::new() }
    }

    /// One commit that releases `version` to every environment, verified as a poll would verify it.
    pub fn release(&mut self, version: &str) -> Verified {
        let before = self.snapshot.clone();
        for env in &self.envs {
            let (seq, prev) = self.chain.get(env).map_or((1, Blake3Digest::ZERO), |(s, h)| (s + 1, *h));
            let entry = Entry {
                payload_type: EntryType,
                ledger: self.ledger.clone(),
                env: env.clone(),
                seq,
                prev,
                version: version.parse().expect("a valid version"),
                image: Image::Artifact {
                    uri: format!("https://images.example/{env}-{version}.tar").parse().expect("a valid uri"),
                    blake3: Blake3Digest(*blake3::hash(format!("{env}/{version}").as_bytes()).as_bytes()),
                    size: 1 << 20,
                },
                created_at: Timestamp::from_unix(1_800_000_000 + self.commit as i64).expect("a valid time"),
                expires_at: None,
            };
            let mut doc = Document::new(entry);
            doc.sign(&self.key);
            self.chain.insert(env.clone(), (seq, doc.hash()));
            self.snapshot.insert_file(&entry_path(env, seq), doc.to_file_bytes());
        }
        self.commit += 1;
        let step = step_between(&before, &self.snapshot, commit_info(self.commit));
        apply_step(&mut self.state, &step, &Direct).expect("the generated release verifies");
        self.verified()
    }

    /// The state verified up to the last commit.
    pub fn verified(&self) -> Verified {
        Verified {
            commit: git2::Oid::from_bytes(&oid_bytes(self.commit)).expect("20 bytes"),
            state: self.state.clone(),
        }
    }
}

fn signed<T: ledger_format::document::Payload>(key: &SecretKey, payload: T) -> Vec<u8> {
    let mut doc = Document::new(payload);
    doc.sign(key);
    doc.to_file_bytes()
}

fn oid_bytes(n: u64) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[12..].copy_from_slice(&n.to_be_bytes());
    b
}

fn commit_info(n: u64) -> CommitInfo {
    let hex = |n: u64| hex::encode(oid_bytes(n));
    CommitInfo {
        id: hex(n),
        parent: (n > 1).then(|| hex(n - 1)),
        time: Timestamp::from_unix(1_800_000_000 + n as i64),
        author: "sim".into(),
        summary: format!("commit {n}"),
        ssh_signature: None,
    }
}

/// The settings of an in-process agent with its state in `state_dir`: every environment managed, no
/// status branch, no HTTP surface, no notifications.
pub fn agent_config(state_dir: &Path) -> AgentConfig {
    AgentConfig {
        repo: "simulated".into(),
        branch: None,
        state_dir: state_dir.to_owned(),
        anchor: None,
        envs: Vec::new(),
        interval: Duration::from_secs(3600),
        status: None,
        agent_id: "sim-agent".into(),
        local: Default::default(),
        aws: Default::default(),
        gcp: Default::default(),
        stele_exe: "stele".into(),
        http: None,
        notify: Vec::new(),
        floor: Default::default(),
        timeline: None,
    }
}

/// An in-process agent on `verified`, running every environment on `sim`, with its state in
/// `state_dir`.
pub fn agent(state_dir: &Path, verified: Verified, sim: Sim) -> anyhow::Result<Worker> {
    let shared = Arc::new(Shared::new(Metrics::new("sim", "sim"), "sim-agent".into(), Duration::from_secs(3600)));
    Worker::simulated(agent_config(state_dir), shared, verified, sim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::sim::SimConfig;
    use crate::status::Phase;

    /// Passes until every environment is Healthy; returns how many it took.
    fn settle(worker: &mut Worker, envs: usize) -> usize {
        for n in 1..=50 {
            let summary = worker.pass(false);
            assert!(summary.fatal.is_none(), "{summary:?}");
            if summary.phases.len() == envs && summary.phases.values().all(|p| *p == Phase::Healthy) {
                return n;
            }
        }
        panic!("not every environment became Healthy in 50 passes")
    }

    #[test]
    fn in_process_agent_on_the_simulated_provider_converges_several_environments() {
        let envs: Vec<EnvName> = ["alpha", "beta", "gamma"].iter().map(|e| e.parse().expect("env")).collect();
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut ledger = SimLedger::new(&envs, 2);
        let sim = Sim::new(SimConfig { boot_ms: 0, ..SimConfig::default() });
        let mut worker = agent(tmp.path(), ledger.release("1.0.0"), sim).expect("agent");
        settle(&mut worker, envs.len());
        worker.set_verified(ledger.release("2.0.0"));
        settle(&mut worker, envs.len());

        let sim = worker.sim().expect("a simulated worker");
        for env in &envs {
            let running = sim.snapshot(env, u64::MAX);
            assert_eq!(running.len(), 2, "{env}: {running:?}");
            assert!(running.iter().all(|i| i.generation == 2), "{env}: {running:?}");
            let memory = tmp.path().join("agent").join(format!("{env}.json"));
            assert!(memory.is_file(), "{}: no gate memory", memory.display());
        }
        // Six instances in all, each environment's own: ids are never shared between environments.
        let mut ids: Vec<String> = envs.iter().flat_map(|e| sim.snapshot(e, 0)).map(|i| i.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 6);

        // A pass with nothing to do writes no gate memory.
        std::fs::remove_dir_all(tmp.path().join("agent")).expect("remove the memory files");
        let summary = worker.pass(false);
        assert!(summary.settled, "{summary:?}");
        assert!(!tmp.path().join("agent").exists(), "a converged pass wrote gate memory");
    }
}
