//! What verification costs, in figures printed to stdout (run: `cargo bench --bench verify`).
//!
//! Measures, in one run on one machine: the raw rate of strict Ed25519 verification, the cost per
//! entry of `verify_snapshot` on generated ledgers of several sizes, and `stele verify` end to end
//! (reading the work tree from disk) on a ledger repository written by the same generator.

use ledger_format::crypto::SecretKey;
use ledger_format::document::Document;
use ledger_format::tree::{entry_path, environment_path, verify_snapshot, Snapshot, POLICY_PATH};
use ledger_format::types::*;
use ledger_format::{Blake3Digest, Timestamp};
use std::collections::BTreeMap;
use std::time::Instant;

fn ledger(entries: usize) -> Snapshot {
    let key = SecretKey::from_seed(&[9; 32]);
    let id = key.public_key().key_id();
    let ledger: LedgerId = "bench".parse().unwrap();
    let env: EnvName = "prod".parse().unwrap();
    let role = Role { keys: vec![id], threshold: 1 };
    let policy = Policy {
        payload_type: PolicyType,
        ledger: ledger.clone(),
        version: 1,
        expires_at: None,
        keys: BTreeMap::from([(id, KeyInfo { name: "bench".parse().unwrap(), public_key: key.public_key() })]),
        root: role.clone(),
        environments: BTreeMap::from([(env.clone(), role)]),
    };
    let mut snapshot = Snapshot::default();
    let mut doc = Document::new(policy);
    doc.sign(&key);
    snapshot.insert_file(POLICY_PATH, doc.to_file_bytes());
    let spec = Environment {
        payload_type: EnvironmentType,
        ledger: ledger.clone(),
        name: env.clone(),
        version: 1,
        provider: Provider::Local {},
        groups: vec![Group { name: "web".parse().unwrap(), capacity: 2 }],
        strategy: Strategy::Rolling { max_surge: 1, max_unavailable: 0, min_ready_seconds: 0 },
        health: HealthCheck::Tcp { interval_ms: 500, timeout_ms: 500, healthy_threshold: 1, deadline_seconds: 30 },
        drift: DriftMode::Correct,
        revert: RevertPolicy::Allow,
        max_instance_age_seconds: None,
    };
    let mut doc = Document::new(spec);
    doc.sign(&key);
    snapshot.insert_file(&environment_path(&env), doc.to_file_bytes());
    let mut prev = Blake3Digest::ZERO;
    for seq in 1..=entries as u64 {
        let entry = Entry {
            payload_type: EntryType,
            ledger: ledger.clone(),
            env: env.clone(),
            seq,
            prev,
            version: format!("1.0.{seq}").parse().unwrap(),
            image: Image::Artifact {
                uri: format!("https://images.example/app-{seq}.tar").parse().unwrap(),
                blake3: Blake3Digest(*blake3::hash(&seq.to_le_bytes()).as_bytes()),
                size: 1 << 20,
            },
            created_at: Timestamp::from_unix(1_800_000_000 + seq as i64).unwrap(),
            expires_at: None,
        };
        let mut doc = Document::new(entry);
        doc.sign(&key);
        prev = doc.hash();
        snapshot.insert_file(&entry_path(&env, seq), doc.to_file_bytes());
    }
    snapshot
}

fn main() {
    let now = Timestamp::from_unix(1_900_000_000).unwrap();
    let key = SecretKey::from_seed(&[3; 32]);
    let msg = [0x5au8; 400]; // about the size of an entry's PAE
    let sig = key.sign(&msg);
    let pk = key.public_key();
    let n = 20_000;
    let start = Instant::now();
    for _ in 0..n {
        pk.verify(&msg, &sig).expect("valid signature");
    }
    let raw = n as f64 / start.elapsed().as_secs_f64();
    println!("raw verify_strict (1 core): {raw:.0} signatures/s, {:.1} us each", 1e6 / raw);

    for entries in [1_000usize, 10_000] {
        let snapshot = ledger(entries);
        let bytes: usize =
            snapshot.nodes.values().map(|n| if let ledger_format::tree::Node::File(b) = n { b.len() } else { 0 }).sum();
        let runs = if entries <= 1_000 { 5 } else { 2 };
        let mut best = f64::MAX;
        for _ in 0..runs {
            let start = Instant::now();
            let tree = verify_snapshot(&snapshot, now).expect("generated ledger verifies");
            best = best.min(start.elapsed().as_secs_f64());
            assert_eq!(tree.environments.values().next().map(|e| e.entries.len()), Some(entries));
        }
        println!(
            "verify_snapshot, {entries} entries ({} KiB): {:.1} ms, {:.1} us per entry, {:.0} entries/s ({:.0}% of raw verify)",
            bytes / 1024,
            best * 1e3,
            best * 1e6 / entries as f64,
            entries as f64 / best,
            100.0 * (entries as f64 / best) / raw
        );
    }

    // End to end: `stele verify` reading a repository's work tree from disk.
    let entries = 10_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let snapshot = ledger(entries);
    for (path, node) in &snapshot.nodes {
        if let ledger_format::tree::Node::File(bytes) = node {
            let p = dir.path().join(std::str::from_utf8(path).unwrap());
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
    }
    let git = |args: &[&str]| {
        let ok = std::process::Command::new("git")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("git runs")
            .status
            .success();
        assert!(ok, "git {args:?} failed");
    };
    git(&["init", "-q"]);
    let stele = env!("CARGO_BIN_EXE_stele");
    let mut best = f64::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        let out =
            std::process::Command::new(stele).args(["verify", "--repo"]).arg(dir.path()).output().expect("stele runs");
        best = best.min(start.elapsed().as_secs_f64());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    }
    println!(
        "stele verify (binary, work tree on disk), {entries} entries: {:.0} ms, {:.1} us per entry",
        best * 1e3,
        best * 1e6 / entries as f64
    );
}
