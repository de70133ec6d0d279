//! Property test of history verification (SPEC revision 3, R1 and R7): random sequences of plausible
//! first-parent steps (appends signed by random subsets of keys, co-signatures, reverts of the tip and
//! of older entries, restores, policy changes of signers, thresholds and environments, spec changes
//! including weakenings, deletions of random files, garbage bytes, and several of these in one commit)
//! are fed to `apply_step`, which must never panic. Besides:
//!
//! - a refused step leaves the verified state unchanged (compared serialized);
//! - after every accepted step the commit's whole tree verifies (§7.2, expiry not judged): the R1
//!   invariant, nothing short of its signatures is ever accepted onto the ledger branch;
//! - every environment that had a target still has one, and every target is the last entry of its
//!   chain in that tree (nothing pending).
//!
//! A failure names the (shrunk) sequence of commits that breaks one of these. 64 cases by default;
//! `PROPTEST_CASES=2000` searches harder.

#[path = "support/vectors.rs"]
mod vectors;

use ledger_format::crypto::{Blake3Digest, KeyId};
use ledger_format::document::{Direct, Document, Payload};
use ledger_format::history::{apply_step, genesis, CommitInfo, LedgerState, SshSigned, Step, TrustAnchor};
use ledger_format::time::Timestamp;
use ledger_format::tree::{classify, verify_snapshot_with, Expiry, LayoutPath, Node, Snapshot, POLICY_PATH};
use ledger_format::types::{DriftMode, Entry, Environment, HealthCheck, Policy, RevertPolicy, Role};
use proptest::prelude::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use vectors::history::cases::{entry_path, entry_payload, policy_v, signed_by, spec, spec_path, ssh_sign};
use vectors::history::{context, diff};
use vectors::{Keys, TestKey};

/// The environments of the genesis tree.
const ENVS: [&str; 2] = ["prod", "staging"];

/// Who signs: a subset of [root, alice, bob, carol, mallory] as bits 0-4, or (values >= 32) every key
/// of the governing role, which is what most real writers do.
type Signers = u8;

#[derive(Clone, Debug)]
enum Op {
    /// Appends `count` entries after the tip, signed by `signers`; `expired` ones expire a minute after
    /// they were created.
    Append {
        env: usize,
        signers: Signers,
        count: u64,
        expired: bool,
        nonce: u8,
    },
    /// Replaces the tip's signatures with those of `signers` (payload unchanged).
    CoSign {
        env: usize,
        signers: Signers,
    },
    RevertTip {
        env: usize,
    },
    /// Removes entry `1 + which % tip`.
    RevertOlder {
        env: usize,
        which: u8,
    },
    /// Puts back the entry most recently removed by an accepted step, byte for byte.
    Restore {
        env: usize,
    },
    /// A new policy: version + `version_delta`, each environment's role from a mask over
    /// {alice, bob, carol} and a threshold seed, maybe an environment dropped, maybe bob revoked
    /// altogether, signed by `signers` (the root role for values >= 32); with `resign`, every spec and
    /// tip re-signed by exactly the new role's keys in the same commit.
    Policy {
        version_delta: u64,
        roles: [(u8, u8); 2],
        drop_env: Option<usize>,
        remove_bob: bool,
        signers: Signers,
        resign: bool,
    },
    /// A new spec: version + `version_delta`, with these settings, signed by `signers` (and the root key).
    Spec {
        env: usize,
        version_delta: u64,
        revert: u8,
        drift_report: bool,
        healthy: u64,
        signers: Signers,
        root: bool,
    },
    /// Deletes the `index % n`-th node of the tree.
    Delete {
        index: usize,
    },
    /// Writes these bytes at one of a few paths.
    Garbage {
        target: u8,
        bytes: Vec<u8>,
    },
    /// Replaces one byte of the `index % n`-th file (a tampered payload or signature, broken JSON).
    Corrupt {
        index: usize,
        at: usize,
        byte: u8,
    },
}

/// One commit: its changes, and the key (index into [root, alice, bob, carol, mallory]) that SSH-signs it.
/// It is made on top of the previous commit, or (`on_verified`) of the last verified one, as a fix
/// after a refused commit is; either way it is judged from the last verified tree (SPEC.md §8.6).
#[derive(Clone, Debug)]
struct Commit {
    ops: Vec<Op>,
    ssh: Option<usize>,
    on_verified: bool,
}

fn signers_strategy() -> impl Strategy<Value = Signers> {
    0u8..48
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let env = 0usize..ENVS.len();
    prop_oneof![
        6 => (env.clone(), signers_strategy(), 1u64..=2, proptest::bool::weighted(0.1), any::<u8>())
            .prop_map(|(env, signers, count, expired, nonce)| Op::Append { env, signers, count, expired, nonce }),
        2 => (env.clone(), signers_strategy()).prop_map(|(env, signers)| Op::CoSign { env, signers }),
        3 => env.clone().prop_map(|env| Op::RevertTip { env }),
        1 => (env.clone(), any::<u8>()).prop_map(|(env, which)| Op::RevertOlder { env, which }),
        2 => env.clone().prop_map(|env| Op::Restore { env }),
        2 => (
            prop_oneof![4 => Just(1u64), 1 => Just(0u64), 1 => Just(2u64)],
            [(1u8..8, any::<u8>()), (1u8..8, any::<u8>())],
            proptest::option::weighted(0.2, 0usize..ENVS.len()),
            proptest::bool::weighted(0.2),
            prop_oneof![3 => Just(32u8), 1 => 0u8..32],
            any::<bool>(),
        )
            .prop_map(|(version_delta, roles, drop_env, remove_bob, signers, resign)| Op::Policy {
                version_delta,
                roles,
                drop_env,
                remove_bob,
                signers,
                resign
            }),
        2 => (
            env.clone(),
            prop_oneof![4 => Just(1u64), 1 => Just(0u64), 1 => Just(2u64)],
            0u8..3,
            any::<bool>(),
            1u64..=4,
            signers_strategy(),
            any::<bool>(),
        )
            .prop_map(|(env, version_delta, revert, drift_report, healthy, signers, root)| Op::Spec {
                env,
                version_delta,
                revert,
                drift_report,
                healthy,
                signers,
                root
            }),
        1 => any::<usize>().prop_map(|index| Op::Delete { index }),
        1 => (0u8..6, proptest::collection::vec(any::<u8>(), 0..48))
            .prop_map(|(target, bytes)| Op::Garbage { target, bytes }),
        1 => (any::<usize>(), any::<usize>(), prop_oneof![Just(b'0'), Just(b'1'), Just(b'a'), any::<u8>()])
            .prop_map(|(index, at, byte)| Op::Corrupt { index, at, byte }),
    ]
}

fn commit_strategy() -> impl Strategy<Value = Commit> {
    (proptest::collection::vec(op_strategy(), 1..=2), proptest::option::weighted(0.4, 0usize..5), any::<bool>())
        .prop_map(|(ops, ssh, on_verified)| Commit { ops, ssh, on_verified })
}

/// The test keys in the order `Signers` bits and `Commit::ssh` use.
fn key_list(k: &Keys) -> [&TestKey; 5] {
    [&k.root, &k.alice, &k.bob, &k.carol, &k.mallory]
}

/// The keys `signers` names; "every key of the role" needs the role.
fn resolve<'k>(k: &'k Keys, signers: Signers, role: Option<&Role>) -> Vec<&'k TestKey> {
    let keys = key_list(k);
    if signers >= 32 {
        let role_keys: Vec<KeyId> = role.map(|r| r.keys.clone()).unwrap_or_default();
        return keys.into_iter().filter(|key| role_keys.contains(&key.id())).collect();
    }
    keys.into_iter().enumerate().filter(|(i, _)| signers & (1 << i) != 0).map(|(_, key)| key).collect()
}

fn parse<T: Payload>(t: &Snapshot, path: &str) -> Option<Document<T>> {
    match t.nodes.get(path.as_bytes())? {
        Node::File(bytes) => Document::parse(bytes).ok(),
        _ => None,
    }
}

fn put<T: Payload>(t: &mut Snapshot, path: &str, doc: &Document<T>) {
    t.insert_file(path, doc.to_file_bytes());
}

fn tip_seq(t: &Snapshot, env: &str) -> u64 {
    t.nodes
        .keys()
        .filter_map(|p| match classify(std::str::from_utf8(p).ok()?)? {
            LayoutPath::Entry(e, seq) if e.as_str() == env => Some(seq),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

fn env_role(t: &Snapshot, env: &str) -> Option<Role> {
    let policy = parse::<Policy>(t, POLICY_PATH)?;
    policy.payload.environments.iter().find(|(e, _)| e.as_str() == env).map(|(_, r)| r.clone())
}

/// Applies `op` to the tree `t` (the next commit's tree, started from the last verified one).
fn apply_op(k: &Keys, t: &mut Snapshot, op: &Op, removed: &[(Vec<u8>, Node)]) {
    match op {
        Op::Append { env, signers, count, expired, nonce } => {
            let env = ENVS[*env];
            let tip = tip_seq(t, env);
            let mut prev = parse::<Entry>(t, &entry_path(env, tip)).map_or(Blake3Digest::ZERO, |d| d.hash());
            let signers = resolve(k, *signers, env_role(t, env).as_ref());
            for seq in tip + 1..=tip + count {
                let mut payload = entry_payload(env, seq, prev);
                payload.version = format!("1.{seq}.{nonce}").parse().expect("a valid version");
                if *expired {
                    let at = payload.created_at.unix() + 60;
                    payload.expires_at = Some(Timestamp::from_unix(at).expect("in range"));
                }
                let doc = signed_by(payload, &signers);
                prev = doc.hash();
                put(t, &entry_path(env, seq), &doc);
            }
        }
        Op::CoSign { env, signers } => {
            let env = ENVS[*env];
            let path = entry_path(env, tip_seq(t, env));
            if let Some(doc) = parse::<Entry>(t, &path) {
                let signers = resolve(k, *signers, env_role(t, env).as_ref());
                put(t, &path, &signed_by(doc.payload, &signers));
            }
        }
        Op::RevertTip { env } => {
            let env = ENVS[*env];
            t.nodes.remove(entry_path(env, tip_seq(t, env)).as_bytes());
        }
        Op::RevertOlder { env, which } => {
            let env = ENVS[*env];
            let tip = tip_seq(t, env);
            if tip > 0 {
                t.nodes.remove(entry_path(env, 1 + u64::from(*which) % tip).as_bytes());
            }
        }
        Op::Restore { env } => {
            let prefix = format!("ledger/{}/", ENVS[*env]);
            if let Some((path, node)) = removed.iter().rev().find(|(p, _)| p.starts_with(prefix.as_bytes())) {
                t.nodes.entry(path.clone()).or_insert_with(|| node.clone());
            }
        }
        Op::Policy { version_delta, roles, drop_env, remove_bob, signers, resign } => {
            let Some(old) = parse::<Policy>(t, POLICY_PATH) else { return };
            let mut p = old.payload.clone();
            p.version += version_delta;
            let pool = [&k.alice, &k.bob, &k.carol];
            for (i, env) in ENVS.iter().enumerate() {
                let (mask, seed) = roles[i];
                if let Some((_, role)) = p.environments.iter_mut().find(|(e, _)| e.as_str() == *env) {
                    let mut keys: Vec<KeyId> = pool
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| mask & (1 << j) != 0)
                        .map(|(_, key)| key.id())
                        .collect();
                    if *remove_bob {
                        keys.retain(|id| *id != k.bob.id());
                    }
                    if keys.is_empty() {
                        keys.push(k.alice.id());
                    }
                    keys.sort();
                    role.threshold = 1 + u64::from(seed) % keys.len() as u64;
                    role.keys = keys;
                }
            }
            if *remove_bob {
                p.keys.remove(&k.bob.id());
            }
            if let Some(i) = drop_env {
                p.environments.retain(|e, _| e.as_str() != ENVS[*i]);
            }
            let signers = resolve(k, *signers, Some(&old.payload.root));
            put(t, POLICY_PATH, &signed_by(p.clone(), &signers));
            if *resign {
                for (env, role) in &p.environments {
                    let signers = resolve(k, 32, Some(role));
                    let spec = spec_path(env.as_str());
                    if let Some(doc) = parse::<Environment>(t, &spec) {
                        put(t, &spec, &signed_by(doc.payload, &signers));
                    }
                    let tip = entry_path(env.as_str(), tip_seq(t, env.as_str()));
                    if let Some(doc) = parse::<Entry>(t, &tip) {
                        put(t, &tip, &signed_by(doc.payload, &signers));
                    }
                }
            }
        }
        Op::Spec { env, version_delta, revert, drift_report, healthy, signers, root } => {
            let env = ENVS[*env];
            let path = spec_path(env);
            let Some(doc) = parse::<Environment>(t, &path) else { return };
            let mut s = doc.payload;
            s.version += version_delta;
            s.revert = [RevertPolicy::Allow, RevertPolicy::Signed, RevertPolicy::Deny][usize::from(*revert)];
            s.drift = if *drift_report { DriftMode::Report } else { DriftMode::Correct };
            if let HealthCheck::Tcp { healthy_threshold, .. } = &mut s.health {
                *healthy_threshold = *healthy;
            }
            let mut signers = resolve(k, *signers, env_role(t, env).as_ref());
            if *root && !signers.iter().any(|key| key.id() == k.root.id()) {
                signers.push(&k.root);
            }
            put(t, &path, &signed_by(s, &signers));
        }
        Op::Delete { index } => {
            if !t.nodes.is_empty() {
                let path = t.nodes.keys().nth(index % t.nodes.len()).expect("in range").clone();
                t.nodes.remove(&path);
            }
        }
        Op::Garbage { target, bytes } => {
            let path = match target {
                0 => POLICY_PATH.to_owned(),
                1 => spec_path("prod"),
                2 => entry_path("prod", tip_seq(t, "prod") + 1),
                3 => entry_path("prod", tip_seq(t, "prod").max(1)),
                4 => "ledger/prod/notes.txt".to_owned(),
                _ => spec_path("qa"),
            };
            t.insert_file(&path, bytes.clone());
        }
        Op::Corrupt { index, at, byte } => {
            if !t.nodes.is_empty() {
                let n = t.nodes.len();
                if let Some(Node::File(bytes)) = t.nodes.values_mut().nth(index % n) {
                    if !bytes.is_empty() {
                        let i = at % bytes.len();
                        bytes[i] = *byte;
                    }
                }
            }
        }
    }
}

/// prod needs 2 of {alice, bob} (revert: signed) and has entries 1 and 2; staging needs 1 of
/// {alice, carol} (revert: allow) and has entry 1 by carol.
fn genesis_tree(k: &Keys) -> Snapshot {
    let (a, b, c) = (&k.alice, &k.bob, &k.carol);
    let mut t = Snapshot::default();
    put(
        &mut t,
        POLICY_PATH,
        &signed_by(policy_v(k, 1, &[a, b, c], &[("prod", &[a, b], 2), ("staging", &[a, c], 1)]), &[&k.root]),
    );
    put(&mut t, &spec_path("prod"), &signed_by(spec("prod", RevertPolicy::Signed), &[a, b]));
    put(&mut t, &spec_path("staging"), &signed_by(spec("staging", RevertPolicy::Allow), &[a]));
    let p1 = signed_by(entry_payload("prod", 1, Blake3Digest::ZERO), &[a, b]);
    let p2 = signed_by(entry_payload("prod", 2, p1.hash()), &[a, b]);
    put(&mut t, &entry_path("prod", 1), &p1);
    put(&mut t, &entry_path("prod", 2), &p2);
    put(&mut t, &entry_path("staging", 1), &signed_by(entry_payload("staging", 1, Blake3Digest::ZERO), &[c]));
    t
}

fn commit_info(k: &Keys, index: usize, commit: &Commit) -> CommitInfo {
    let id = format!("c{index}");
    let ssh_signature = commit.ssh.map(|i| {
        let payload = format!("tree {id}\nauthor x <x@example.com> 0 +0000\n\nstep {index}\n").into_bytes();
        let key = key_list(k)[i];
        SshSigned { armored: ssh_sign(key, &payload).into_bytes(), signed_payload: payload }
    });
    CommitInfo { id, ssh_signature, ..CommitInfo::default() }
}

/// Environments that have a target in `state` (read through the serialized form).
fn with_target(state: &LedgerState) -> Vec<String> {
    let v = serde_json::to_value(state).expect("the state serializes");
    let envs = v["envs"].as_object().cloned().unwrap_or_default();
    envs.into_iter().filter(|(_, h)| !h["target"].is_null()).map(|(env, _)| env).collect()
}

/// Since nothing short of its signatures is ever on the branch (R1), every environment's target is
/// the last entry of its chain in the verified tree (none when it has no entry).
fn target_is_the_last_entry(state: &LedgerState, t: &Snapshot) -> Result<(), String> {
    let v = serde_json::to_value(state).expect("the state serializes");
    for (env, history) in v["envs"].as_object().cloned().unwrap_or_default() {
        let tip = tip_seq(t, &env);
        let in_tree = parse::<Entry>(t, &entry_path(&env, tip)).map(|d| (tip, d.hash().to_hex()));
        let target = &history["target"];
        let in_state = target["seq"].as_u64().zip(target["hash"].as_str().map(str::to_owned));
        if in_state != in_tree {
            return Err(format!("{env}: the state's target is {in_state:?}, the tree's last entry {in_tree:?}"));
        }
    }
    Ok(())
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(no message)".into())
}

/// Replays `commits`, each judged from the last verified tree; the first breach of a property.
fn run(commits: &[Commit]) -> Result<(), String> {
    let k = Keys::new();
    let mut verified = genesis_tree(&k);
    let anchor = TrustAnchor::RootKeys { keys: vec![k.root.id()], threshold: 1 };
    let (mut state, _) = genesis(&verified, &anchor, &CommitInfo::default()).map_err(|p| format!("genesis: {p:?}"))?;
    let mut removed: Vec<(Vec<u8>, Node)> = Vec::new();
    let mut previous = verified.clone();
    for (index, commit) in commits.iter().enumerate() {
        let at = format!("commit {} of {commits:#?}", index + 1);
        let mut t = if commit.on_verified { verified.clone() } else { previous.clone() };
        for op in &commit.ops {
            apply_op(&k, &mut t, op, &removed);
        }
        let changes = diff(&verified, &t);
        let step = Step { commit: commit_info(&k, index, commit), context: context(&changes, &t), changes };
        previous = t.clone();
        let before = serde_json::to_string(&state).expect("the state serializes");
        let targets_before = with_target(&state);
        let result = catch_unwind(AssertUnwindSafe(|| apply_step(&mut state, &step, &Direct)))
            .map_err(|panic| format!("apply_step panicked ({}) at {at}", panic_text(&*panic)))?;
        match result {
            Err(_) => {
                if serde_json::to_string(&state).expect("the state serializes") != before {
                    return Err(format!("a refused step changed the verified state at {at}"));
                }
            }
            Ok(_) => {
                if let Err(problems) = verify_snapshot_with(&t, Expiry::NotJudged) {
                    let shown: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
                    return Err(format!("accepted, but the tree does not verify ({}) at {at}", shown.join("; ")));
                }
                target_is_the_last_entry(&state, &t).map_err(|e| format!("{e} at {at}"))?;
                let targets_after = with_target(&state);
                if let Some(lost) = targets_before.iter().find(|e| !targets_after.contains(e)) {
                    return Err(format!("environment {lost} lost its target at {at}"));
                }
                removed.extend(
                    step.changes
                        .iter()
                        .filter(|c| c.after.is_none())
                        .filter_map(|c| Some((c.path.clone(), c.before.clone()?))),
                );
                verified = t;
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(64), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_histories_never_panic_and_keep_the_invariants(
        commits in proptest::collection::vec(commit_strategy(), 1..16)
    ) {
        if let Err(e) = run(&commits) {
            return Err(TestCaseError::fail(e));
        }
    }
}

/// The item-6 history of issue 10, fixed: one root-signed commit drops staging from the policy and
/// deletes staging's entry. It is refused (never a panic) and the state is kept.
#[test]
fn dropping_an_environment_while_deleting_its_entry_does_not_panic() {
    let commit = Commit {
        ops: vec![
            Op::Policy {
                version_delta: 1,
                roles: [(3, 0), (5, 0)],
                drop_env: Some(1),
                remove_bob: false,
                signers: 32,
                resign: false,
            },
            Op::RevertTip { env: 1 },
        ],
        ssh: None,
        on_verified: true,
    };
    run(&[commit]).unwrap();
}

/// The ops build the trees they describe (the property test is only as good as the steps it makes).
#[test]
fn ops_build_the_trees_they_describe() {
    let k = Keys::new();
    let mut t = genesis_tree(&k);
    apply_op(&k, &mut t, &Op::Append { env: 0, signers: 1 << 1, count: 2, expired: false, nonce: 7 }, &[]);
    assert_eq!(tip_seq(&t, "prod"), 4);
    let e4 = parse::<Entry>(&t, "ledger/prod/4.json").expect("entry 4 parses");
    let e3 = parse::<Entry>(&t, "ledger/prod/3.json").expect("entry 3 parses");
    assert_eq!(e4.payload.prev, e3.hash());
    assert_eq!(e4.signatures.len(), 1);
    apply_op(&k, &mut t, &Op::CoSign { env: 0, signers: 32 }, &[]);
    assert_eq!(parse::<Entry>(&t, "ledger/prod/4.json").expect("parses").signatures.len(), 2);
    apply_op(&k, &mut t, &Op::RevertTip { env: 0 }, &[]);
    assert_eq!(tip_seq(&t, "prod"), 3);
    let before_policy = parse::<Policy>(&t, POLICY_PATH).expect("the policy parses");
    apply_op(
        &k,
        &mut t,
        &Op::Policy {
            version_delta: 1,
            roles: [(1, 0), (4, 0)],
            drop_env: None,
            remove_bob: true,
            signers: 32,
            resign: true,
        },
        &[],
    );
    let p = parse::<Policy>(&t, POLICY_PATH).expect("the new policy parses");
    assert_eq!(p.payload.version, before_policy.payload.version + 1);
    assert!(!p.payload.keys.contains_key(&k.bob.id()));
    let prod_spec = parse::<Environment>(&t, "environments/prod.json").expect("the spec parses");
    assert_eq!(prod_spec.signatures.iter().map(|s| s.keyid).collect::<Vec<_>>(), vec![k.alice.id()]);
}
