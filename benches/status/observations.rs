//! What SPEC revision 4 costs per status write and per poll (issue 13), in process, no I/O:
//! - per status write: rendering a status as a signed document (`status::render_signed`, Ed25519 sign
//!   plus the strict re-parse) against the unsigned rendering, for a small and a large environment;
//! - per status read: a reader's `verify_observation` (parse, policy lookup, one strict verification);
//! - per poll: the freshness rule `check_current` (F3) and applying one timestamp renewal step
//!   (`apply_step`: parse, F1 signature, F2), the work a renewal adds to a replay.
//!
//! Run: `cargo bench --profile dev --bench status -- observations` (or without `--profile dev` for
//! optimised figures). `STELE_BENCH_ROUNDS` (default 2000) sets the iterations per figure.

use ledger_format::document::Direct;
use ledger_format::freshness::{check_current, TIMESTAMP_PATH};
use ledger_format::history::{apply_step, state_of, CommitInfo, PathChange, Step};
use ledger_format::observation::verify_observation;
use ledger_format::tree::{verify_snapshot_with, Expiry, Node, Snapshot, POLICY_PATH};
use ledger_format::types::*;
use ledger_format::{Document, SecretKey, Timestamp};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;
use stele::status::{self, EnvStatus};

fn key(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32])
}

fn policy(root: &SecretKey, agent: &SecretKey, bot: &SecretKey) -> Policy {
    let info = |name: &str, k: &SecretKey| KeyInfo { name: name.parse().unwrap(), public_key: k.public_key() };
    let role = Role { keys: vec![root.public_key().key_id()], threshold: 1 };
    Policy {
        payload_type: PolicyType,
        ledger: "bench".parse().unwrap(),
        version: 1,
        expires_at: None,
        keys: BTreeMap::from([
            (root.public_key().key_id(), info("root", root)),
            (agent.public_key().key_id(), info("agent", agent)),
            (bot.public_key().key_id(), info("bot", bot)),
        ]),
        root: role.clone(),
        environments: BTreeMap::from([("prod".parse().unwrap(), role)]),
        agents: BTreeMap::from([(
            agent.public_key().key_id(),
            AgentGrant { environments: vec!["prod".parse().unwrap()] },
        )]),
        timestamp: Some(TimestampRole {
            keys: vec![bot.public_key().key_id()],
            threshold: 1,
            max_validity_seconds: 86_400,
        }),
        ledger_layout: None,
    }
}

/// Mean time per call of `f` over `rounds` calls, in microseconds.
fn time(rounds: usize, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    for _ in 0..rounds {
        f();
    }
    start.elapsed().as_secs_f64() * 1e6 / rounds as f64
}

pub fn run() {
    let rounds: usize = std::env::var("STELE_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let (root, agent, bot) = (key(1), key(2), key(3));
    let p = policy(&root, &agent, &bot);
    let commit = "1".repeat(40);
    println!("signed observations and timestamps, {rounds} rounds per figure (mean per call)");
    for instances in [3usize, 1000] {
        let s = EnvStatus { ledger_commit: commit.clone(), ..super::signing::with_instances(instances, 3) };
        let unsigned = time(rounds, || {
            black_box(status::render(black_box(&s)));
        });
        let signed = time(rounds, || {
            black_box(status::render_signed(black_box(&s), &agent).unwrap());
        });
        let bytes = status::render_signed(&s, &agent).unwrap();
        let env: EnvName = "prod".parse().unwrap();
        let verify = time(rounds, || {
            black_box(verify_observation(black_box(&bytes), &env, |_| Some(&p)).unwrap());
        });
        println!(
            "  {instances:>4} instances ({:>7} bytes signed, {:>7} unsigned): render {unsigned:>8.1} us, \
             render_signed {signed:>8.1} us ({:.1}x), verify_observation {verify:>8.1} us",
            bytes.len(),
            status::render(&s).len(),
            signed / unsigned
        );
    }

    let now: Timestamp = "2026-06-01T00:00:00Z".parse().unwrap();
    let stamp = |version: u64, names: &str| {
        let issued: Timestamp = "2026-05-31T12:00:00Z".parse().unwrap();
        let mut doc = Document::new(TimestampDoc {
            payload_type: TimestampType,
            ledger: "bench".parse().unwrap(),
            version,
            ledger_commit: names.parse().unwrap(),
            issued_at: issued,
            expires_at: Timestamp::from_unix(issued.unix() + 86_400).unwrap(),
        });
        doc.sign(&bot);
        doc
    };
    let current = stamp(7, &commit);
    let check = time(rounds * 10, || {
        black_box(check_current(black_box(&p), Some(&current), Some(6), now)).unwrap();
    });
    println!("  check_current (F3, per poll): {check:.3} us");

    // One renewal step applied to a verified state, as a replay does per renewal commit.
    let mut policy_doc = Document::new(p.clone());
    policy_doc.sign(&root);
    let mut snapshot = Snapshot::default();
    snapshot.insert_file(POLICY_PATH, policy_doc.to_file_bytes());
    let spec = Environment {
        payload_type: EnvironmentType,
        ledger: "bench".parse().unwrap(),
        name: "prod".parse().unwrap(),
        version: 1,
        provider: Provider::Local {},
        groups: vec![Group { name: "web".parse().unwrap(), capacity: 3 }],
        strategy: Strategy::Rolling { max_surge: 1, max_unavailable: 0, min_ready_seconds: 0 },
        health: HealthCheck::Tcp { interval_ms: 1000, timeout_ms: 500, healthy_threshold: 1, deadline_seconds: 60 },
        drift: DriftMode::Correct,
        revert: RevertPolicy::Signed,
        max_instance_age_seconds: None,
    };
    let mut spec_doc = Document::new(spec);
    spec_doc.sign(&root);
    snapshot.insert_file("environments/prod.json", spec_doc.to_file_bytes());
    let base = state_of(verify_snapshot_with(&snapshot, Expiry::NotJudged).expect("the bench ledger verifies"));
    let parent = "2".repeat(40);
    let step = Step {
        commit: CommitInfo { id: "3".repeat(40), parent: Some(parent.clone()), ..CommitInfo::default() },
        changes: vec![PathChange {
            path: TIMESTAMP_PATH.as_bytes().to_vec(),
            before: None,
            after: Some(Node::File(stamp(1, &parent).to_file_bytes())),
        }],
        context: BTreeMap::new(),
    };
    let renew = time(rounds, || {
        let mut state = base.clone();
        black_box(apply_step(&mut state, &step, &Direct).unwrap());
    });
    let clone_only = time(rounds, || {
        black_box(base.clone());
    });
    println!(
        "  apply_step of a timestamp renewal (per renewal commit in a replay): {:.1} us (state clone {clone_only:.1} us excluded)",
        renew - clone_only
    );
}
