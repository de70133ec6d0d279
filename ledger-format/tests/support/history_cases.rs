//! The history cases (SPEC.md §8, revision 3): each a genesis tree and commits with the verdict stated
//! by hand from the rules, never recorded from the implementation. Also the small document builders
//! the property test (`tests/history_props.rs`) shares.
//!
//! A child module of `history_vectors.rs`, which owns the file format and the replay driver.

use super::super::rev4::{rev4_policy, timestamp};
use super::super::{base64_encode, entry, env_spec, lit, policy, role, signed, Keys, TestKey};
use super::{
    node_of, Anchor, CommitVector, ExpectedEvent, ExpectedProblem, FileNode, HistoryCase, HistoryStep, HistoryVector,
    PolicyHashAnchor, RootKeysAnchor, SshSignatureVector, StepVerdict,
};
use ledger_format::crypto::Blake3Digest;
use ledger_format::document::{Document, Payload};
use ledger_format::freshness::TIMESTAMP_PATH;
use ledger_format::tree::POLICY_PATH;
use ledger_format::types::{Entry, Environment, HealthCheck, Policy, RevertPolicy, TimestampDoc};
use std::collections::BTreeMap;
/// Signs `payload` the way `git commit -S` with `gpg.format=ssh` does (Ed25519 is deterministic).
pub fn ssh_sign(key: &TestKey, payload: &[u8]) -> String {
    use ssh_key::private::{Ed25519Keypair, KeypairData};
    let private = ssh_key::PrivateKey::new(KeypairData::Ed25519(Ed25519Keypair::from_seed(&key.secret.seed())), "")
        .expect("an Ed25519 key pair");
    let sig = private.sign("git", ssh_key::HashAlg::Sha512, payload).expect("SSH signing cannot fail");
    sig.to_pem(ssh_key::LineEnding::LF).expect("an SSHSIG armors")
}

/// A history under construction. Before [`History::genesis`] files go into the genesis tree; after it,
/// into the next commit.
struct History {
    name: String,
    description: String,
    anchor: Anchor,
    tree: BTreeMap<String, Vec<u8>>,
    genesis: Option<BTreeMap<String, FileNode>>,
    set: BTreeMap<String, FileNode>,
    delete: Vec<String>,
    steps: Vec<HistoryStep>,
    /// The first parent the next commit records, when a case states it.
    parent: Option<String>,
}

impl History {
    fn new(k: &Keys, name: &str, description: &str) -> Self {
        Self {
            name: format!("history/{name}"),
            description: description.to_owned(),
            anchor: Anchor::RootKeys(RootKeysAnchor { root_keys: vec![k.root.id().to_hex()], threshold: 1 }),
            tree: BTreeMap::new(),
            genesis: None,
            set: BTreeMap::new(),
            delete: Vec::new(),
            steps: Vec::new(),
            parent: None,
        }
    }

    fn put<T: Payload>(&mut self, path: &str, doc: &Document<T>) -> &mut Self {
        self.put_bytes(path, doc.to_file_bytes())
    }

    fn put_bytes(&mut self, path: &str, bytes: Vec<u8>) -> &mut Self {
        self.tree.insert(path.to_owned(), bytes.clone());
        if self.genesis.is_some() {
            self.delete.retain(|p| p != path);
            self.set.insert(path.to_owned(), node_of(bytes));
        }
        self
    }

    fn rm(&mut self, path: &str) -> &mut Self {
        assert!(self.genesis.is_some(), "{}: genesis is built with put", self.name);
        assert!(self.tree.remove(path).is_some(), "{}: removes {path}, which is not in the tree", self.name);
        if self.set.remove(path).is_none() {
            self.delete.push(path.to_owned());
        }
        self
    }

    /// The next commit records `parent` as its first parent.
    fn parent(&mut self, parent: &str) -> &mut Self {
        self.parent = Some(parent.to_owned());
        self
    }

    fn genesis(&mut self) -> &mut Self {
        self.genesis = Some(self.tree.iter().map(|(p, b)| (p.clone(), node_of(b.clone()))).collect());
        self
    }

    fn pin_policy_hash(&mut self) -> &mut Self {
        let bytes = &self.tree[POLICY_PATH];
        let hash = Document::<Policy>::parse(bytes).expect("the genesis policy parses").hash();
        self.anchor = Anchor::PolicyHash(PolicyHashAnchor { policy_hash: hash.to_hex() });
        self
    }

    /// Records the staged changes as one commit, SSH-signed by `ssh` when given.
    fn commit(&mut self, summary: &str, ssh: Option<&TestKey>, expected: StepVerdict) -> &mut Self {
        assert!(self.genesis.is_some(), "{}: commit before genesis", self.name);
        let index = self.steps.len() + 1;
        let ssh_signature = ssh.map(|key| {
            let payload = commit_object(&self.name, index, key.label, summary);
            SshSignatureVector { armored: ssh_sign(key, &payload), signed_payload: base64_encode(&payload) }
        });
        let commit = CommitVector { id: format!("c{index}: {summary}"), parent: self.parent.take(), ssh_signature };
        let set = std::mem::take(&mut self.set);
        let mut delete = std::mem::take(&mut self.delete);
        delete.sort();
        self.steps.push(HistoryStep { commit, set, delete, expected });
        self
    }

    fn finish(&mut self, cases: &mut Vec<HistoryCase>) {
        assert!(self.set.is_empty() && self.delete.is_empty(), "{}: changes staged but not committed", self.name);
        assert!(cases.iter().all(|c| c.name != self.name), "{}: duplicate case name", self.name);
        let vector = HistoryVector {
            description: self.description.clone(),
            anchor: self.anchor.clone(),
            genesis: self.genesis.clone().expect("a history has a genesis"),
            steps: std::mem::take(&mut self.steps),
        };
        cases.push(HistoryCase { name: self.name.clone(), vector });
    }
}

/// A plausible commit object (without its `gpgsig` header) for the SSH signature to cover.
fn commit_object(case: &str, index: usize, who: &str, summary: &str) -> Vec<u8> {
    let id = |what: &str| blake3::hash(format!("{case} {index} {what}").as_bytes()).to_hex()[..40].to_owned();
    let when = 1_780_000_000 + index * 60;
    format!(
        "tree {}\nparent {}\nauthor {who} <{who}@example.com> {when} +0000\ncommitter {who} <{who}@example.com> {when} +0000\n\n{summary}\n",
        id("tree"),
        id("parent")
    )
    .into_bytes()
}

// Verdicts.

fn accepted(events: Vec<ExpectedEvent>) -> StepVerdict {
    StepVerdict { accepted: true, events: Some(events), problems: None }
}

fn refused(problems: &[(&str, &str, Option<&str>)]) -> StepVerdict {
    let mut problems: Vec<ExpectedProblem> = problems
        .iter()
        .map(|(path, check, cause)| ExpectedProblem {
            path: (*path).to_owned(),
            check: (*check).to_owned(),
            cause: cause.map(str::to_owned),
        })
        .collect();
    problems.sort_by(|a, b| (&a.path, &a.check).cmp(&(&b.path, &b.check)));
    StepVerdict { accepted: false, events: None, problems: Some(problems) }
}

fn entry_event(action: &str, env: &str, generation: u64, target_seq: u64) -> ExpectedEvent {
    ExpectedEvent {
        action: action.to_owned(),
        env: Some(env.to_owned()),
        generation: Some(generation),
        target_seq: Some(target_seq),
        revert_signed_by: None,
    }
}

fn promote(env: &str, generation: u64, target_seq: u64) -> ExpectedEvent {
    entry_event("promote", env, generation, target_seq)
}

fn co_sign(env: &str, generation: u64, target_seq: u64) -> ExpectedEvent {
    entry_event("co_sign", env, generation, target_seq)
}

fn restore(env: &str, generation: u64, target_seq: u64) -> ExpectedEvent {
    entry_event("restore", env, generation, target_seq)
}

fn rollback(env: &str, generation: u64, target_seq: u64, signed_by: Option<&TestKey>) -> ExpectedEvent {
    ExpectedEvent {
        revert_signed_by: signed_by.map(|k| k.id().to_hex()),
        ..entry_event("rollback", env, generation, target_seq)
    }
}

fn spec_change(env: &str) -> ExpectedEvent {
    ExpectedEvent {
        action: "spec_change".into(),
        env: Some(env.into()),
        generation: None,
        target_seq: None,
        revert_signed_by: None,
    }
}

fn policy_change() -> ExpectedEvent {
    ExpectedEvent {
        action: "policy_change".into(),
        env: None,
        generation: None,
        target_seq: None,
        revert_signed_by: None,
    }
}

// Documents.

pub fn spec_path(env: &str) -> String {
    format!("environments/{env}.json")
}

pub fn entry_path(env: &str, seq: u64) -> String {
    format!("ledger/{env}/{seq}.json")
}

pub fn spec(env: &str, revert: RevertPolicy) -> Environment {
    Environment { revert, ..env_spec(env) }
}

/// The unsigned payload of entry `seq` of `env` (release `1.<seq>.0`) with this `prev`.
pub fn entry_payload(env: &str, seq: u64, prev: Blake3Digest) -> Entry {
    entry(env, seq, prev)
}

/// `payload` signed by each of `signers`.
pub fn signed_by<T: Payload>(payload: T, signers: &[&TestKey]) -> Document<T> {
    signed(payload, signers)
}

/// Entry `seq` of `env` after `prev`, signed by `signers`.
pub fn release(env: &str, seq: u64, prev: Option<&Document<Entry>>, signers: &[&TestKey]) -> Document<Entry> {
    signed(entry(env, seq, prev.map_or(Blake3Digest::ZERO, |d| d.hash())), signers)
}

/// The same entry payload with exactly these signatures.
pub fn resigned(doc: &Document<Entry>, signers: &[&TestKey]) -> Document<Entry> {
    signed(doc.payload.clone(), signers)
}

/// A policy of version `version` declaring each environment with its role.
pub fn policy_v(k: &Keys, version: u64, keys: &[&TestKey], envs: &[(&str, &[&TestKey], u64)]) -> Policy {
    let envs: Vec<(&str, ledger_format::types::Role)> =
        envs.iter().map(|(name, signers, threshold)| (*name, role(signers, *threshold))).collect();
    Policy { version, ..policy(k, keys, &envs) }
}

pub fn root_signed(p: Policy, k: &Keys) -> Document<Policy> {
    signed(p, &[&k.root])
}

/// The genesis of a history with one environment, prod.
struct Prod<'a> {
    /// prod's role: these keys, `threshold` of them.
    role: &'a [&'a TestKey],
    threshold: u64,
    revert: RevertPolicy,
    /// Who signed the spec and the entries.
    signers: &'a [&'a TestKey],
    /// How many entries the genesis tree holds.
    entries: u64,
}

/// prod with one spec (signed by `signers`) and a chain of `entries` entries signed by `signers`.
fn prod_history(k: &Keys, name: &str, description: &str, prod: Prod) -> (History, Vec<Document<Entry>>) {
    let Prod { role: role_keys, threshold, revert, signers, entries } = prod;
    let mut h = History::new(k, name, description);
    h.put(POLICY_PATH, &root_signed(policy_v(k, 1, role_keys, &[("prod", role_keys, threshold)]), k));
    h.put(&spec_path("prod"), &signed(spec("prod", revert), signers));
    let mut chain: Vec<Document<Entry>> = Vec::new();
    for seq in 1..=entries {
        let doc = release("prod", seq, chain.last(), signers);
        h.put(&entry_path("prod", seq), &doc);
        chain.push(doc);
    }
    h.genesis();
    (h, chain)
}

// ---------------------------------------------------------------------------------------------------
// The cases. Every verdict below is stated from the rules (SPEC revision 3), not recorded.

/// Every history case, in a fixed order.
pub fn build_cases() -> Vec<HistoryCase> {
    let k = Keys::new();
    let mut cases = Vec::new();
    promotion_cases(&k, &mut cases);
    rollback_cases(&k, &mut cases);
    policy_cases(&k, &mut cases);
    spec_cases(&k, &mut cases);
    recovery_cases(&k, &mut cases);
    transition_cases(&k, &mut cases);
    timestamp_cases(&k, &mut cases);
    layout_cases(&k, &mut cases);
    cases
}

fn promotion_cases(k: &Keys, cases: &mut Vec<HistoryCase>) {
    let (a, b, c) = (&k.alice, &k.bob, &k.carol);

    let (mut h, _) = prod_history(
        k,
        "promote-1-of-1",
        "prod needs 1 of {alice}; the anchor is the genesis policy's hash. Each release signed by alice is a \
         promotion and moves the target generation up by one.",
        Prod { role: &[a], threshold: 1, revert: RevertPolicy::Signed, signers: &[a], entries: 0 },
    );
    h.pin_policy_hash();
    let e1 = release("prod", 1, None, &[a]);
    let e2 = release("prod", 2, Some(&e1), &[a]);
    h.put(&entry_path("prod", 1), &e1).commit("release 1.1.0", None, accepted(vec![promote("prod", 1, 1)]));
    h.put(&entry_path("prod", 2), &e2).commit("release 1.2.0", None, accepted(vec![promote("prod", 2, 2)]));
    h.finish(cases);

    let (mut h, _) = prod_history(
        k,
        "promote-2-of-2",
        "prod needs 2 of {alice, bob}. Entries carrying both signatures land as one commit each (as a promoted \
         or merged proposal does) and are promotions.",
        Prod { role: &[a, b], threshold: 2, revert: RevertPolicy::Signed, signers: &[a, b], entries: 0 },
    );
    let e1 = release("prod", 1, None, &[a, b]);
    let e2 = release("prod", 2, Some(&e1), &[a, b]);
    h.put(&entry_path("prod", 1), &e1).commit("promote prod-1.1.0", None, accepted(vec![promote("prod", 1, 1)]));
    h.put(&entry_path("prod", 2), &e2).commit(
        "Merge branch 'stele/proposals/prod-1.2.0'",
        None,
        accepted(vec![promote("prod", 2, 2)]),
    );
    h.finish(cases);

    let (mut h, _) = prod_history(
        k,
        "entry-short-of-its-threshold-is-refused",
        "prod needs 2 of {alice, bob}. An entry signed by alice alone appended to the ledger branch is refused \
         (E5, cause S3): nothing short of its signatures is ever on the branch (proposals live on their own \
         branches). The next commit adds bob's signature; judged from the last verified tree (SPEC.md §8.6) it \
         appends a complete entry. Then a second short entry is refused and reverted, which recovers.",
        Prod { role: &[a, b], threshold: 2, revert: RevertPolicy::Signed, signers: &[a, b], entries: 0 },
    );
    let short1 = release("prod", 1, None, &[a]);
    let e1 = resigned(&short1, &[a, b]);
    let short2 = release("prod", 2, Some(&e1), &[a]);
    h.put(&entry_path("prod", 1), &short1).commit(
        "release 1.1.0 (alice only)",
        None,
        refused(&[("ledger/prod/1.json", "E5", Some("S3"))]),
    );
    h.put(&entry_path("prod", 1), &e1).commit("co-sign 1.1.0", None, accepted(vec![promote("prod", 1, 1)]));
    h.put(&entry_path("prod", 2), &short2).commit(
        "release 1.2.0 (alice only)",
        None,
        refused(&[("ledger/prod/2.json", "E5", Some("S3"))]),
    );
    h.rm(&entry_path("prod", 2)).commit("Revert \"release 1.2.0 (alice only)\"", None, accepted(vec![]));
    h.finish(cases);

    let (mut h, chain) = prod_history(
        k,
        "co-sign-a-complete-tip",
        "prod needs 2 of {alice, bob, carol}; the tip is signed by alice and bob. carol adds her signature: the \
         payload is unchanged, so it is a co-signature and the target generation stays.",
        Prod { role: &[a, b, c], threshold: 2, revert: RevertPolicy::Signed, signers: &[a, b], entries: 1 },
    );
    h.put(&entry_path("prod", 1), &resigned(&chain[0], &[a, b, c])).commit(
        "co-sign 1.1.0",
        None,
        accepted(vec![co_sign("prod", 1, 1)]),
    );
    h.finish(cases);

    let (mut h, chain) = prod_history(
        k,
        "co-signature-removed",
        "prod needs 1 of {alice, bob}; the tip is signed by both. Rewriting it with alice's signature alone \
         still meets the threshold, but a key that counted and is still in the role no longer signs: H2.",
        Prod { role: &[a, b], threshold: 1, revert: RevertPolicy::Signed, signers: &[a, b], entries: 1 },
    );
    h.put(&entry_path("prod", 1), &resigned(&chain[0], &[a])).commit(
        "drop bob's signature",
        None,
        refused(&[("ledger/prod/1.json", "H2", None)]),
    );
    h.finish(cases);

    let (mut h, chain) = prod_history(
        k,
        "merge-brings-two-entries",
        "One commit (a merge of a release train) appends entries 2 and 3: both are promotions, and the target \
         generation goes up once for the step, to 2, with entry 3 the target.",
        Prod { role: &[a], threshold: 1, revert: RevertPolicy::Signed, signers: &[a], entries: 1 },
    );
    let e2 = release("prod", 2, Some(&chain[0]), &[a]);
    let e3 = release("prod", 3, Some(&e2), &[a]);
    h.put(&entry_path("prod", 2), &e2).put(&entry_path("prod", 3), &e3).commit(
        "Merge branch 'release-train'",
        None,
        accepted(vec![promote("prod", 2, 3), promote("prod", 2, 3)]),
    );
    h.finish(cases);

    let (mut h, chain) = prod_history(
        k,
        "expired-entry-appended",
        "An entry whose expires_at lies long before the vectors' `now` is appended and promoted: history never \
         judges expiry (SPEC revision 3); whoever acts on the target refuses it.",
        Prod { role: &[a], threshold: 1, revert: RevertPolicy::Signed, signers: &[a], entries: 1 },
    );
    let mut payload = entry("prod", 2, chain[0].hash());
    payload.expires_at = Some("2026-05-02T13:00:00Z".parse().expect("a valid timestamp"));
    h.put(&entry_path("prod", 2), &signed(payload, &[a])).commit(
        "release 1.2.0 (expires after an hour)",
        None,
        accepted(vec![promote("prod", 2, 2)]),
    );
    h.finish(cases);
}

fn rollback_cases(k: &Keys, cases: &mut Vec<HistoryCase>) {
    let (a, b) = (&k.alice, &k.bob);
    let p2 = entry_path("prod", 2);

    let (mut h, chain) = prod_history(
        k,
        "rollback-allow-and-restore",
        "prod has `revert: allow`. An unsigned revert of the tip is a rollback to entry 1; the revert of that \
         revert puts the byte-identical entry 2 back: a restore. Each moves the generation up by one.",
        Prod { role: &[a], threshold: 1, revert: RevertPolicy::Allow, signers: &[a], entries: 2 },
    );
    h.rm(&p2).commit("Revert \"release 1.2.0\"", None, accepted(vec![rollback("prod", 2, 1, None)]));
    h.put(&p2, &chain[1]).commit("Revert \"Revert \"release 1.2.0\"\"", None, accepted(vec![restore("prod", 3, 2)]));
    h.finish(cases);

    let (mut h, chain) = prod_history(
        k,
        "rollback-signed",
        "prod needs 2 of {alice, bob} and has `revert: signed`. An unsigned revert of the tip is refused (H3); \
         so are the same tree committed again SSH-signed by mallory (no key of the policy) and by the root key \
         (not a signer of prod), each judged from the last verified tree. The same tree SSH-signed by bob alone \
         is a rollback: one key of the role suffices. Its revert restores entry 2.",
        Prod { role: &[a, b], threshold: 2, revert: RevertPolicy::Signed, signers: &[a, b], entries: 2 },
    );
    let h3 = refused(&[("ledger/prod/2.json", "H3", None)]);
    h.rm(&p2).commit("Revert \"release 1.2.0\"", None, h3.clone());
    h.commit("Revert \"release 1.2.0\" (signed by mallory)", Some(&k.mallory), h3.clone());
    h.commit("Revert \"release 1.2.0\" (signed by root)", Some(&k.root), h3);
    h.commit("Revert \"release 1.2.0\" (signed by bob)", Some(b), accepted(vec![rollback("prod", 2, 1, Some(b))]));
    h.put(&p2, &chain[1]).commit("Revert \"Revert \"release 1.2.0\"\"", None, accepted(vec![restore("prod", 3, 2)]));
    h.finish(cases);

    let (mut h, _) = prod_history(
        k,
        "rollback-deny",
        "prod has `revert: deny`: a revert of the tip is refused even when SSH-signed by a signer of prod.",
        Prod { role: &[a], threshold: 1, revert: RevertPolicy::Deny, signers: &[a], entries: 2 },
    );
    h.rm(&p2).commit("Revert \"release 1.2.0\"", Some(a), refused(&[("ledger/prod/2.json", "H3", None)]));
    h.finish(cases);

    let (mut h, _) = prod_history(
        k,
        "revert-rule-is-read-before-the-step",
        "prod has `revert: signed`. One unsigned commit both relaxes the spec to `revert: allow` (signed by \
         alice and the root, so allowed on its own) and removes the tip: the rule comes from the spec in force \
         before the step, so it is refused (H3). The same tree committed again SSH-signed by alice is accepted.",
        Prod { role: &[a], threshold: 1, revert: RevertPolicy::Signed, signers: &[a], entries: 2 },
    );
    let relaxed = signed(Environment { version: 2, ..spec("prod", RevertPolicy::Allow) }, &[a, &k.root]);
    h.put(&spec_path("prod"), &relaxed).rm(&p2).commit(
        "allow reverts and revert 1.2.0",
        None,
        refused(&[("ledger/prod/2.json", "H3", None)]),
    );
    h.commit(
        "allow reverts and revert 1.2.0 (signed)",
        Some(a),
        accepted(vec![spec_change("prod"), rollback("prod", 2, 1, Some(a))]),
    );
    h.finish(cases);

    let (mut h, _) = prod_history(
        k,
        "removing-the-first-entry-is-refused",
        "prod has `revert: allow` and one entry. Removing it would leave an environment that had a target \
         with none: H2, whatever the revert rule.",
        Prod { role: &[a], threshold: 1, revert: RevertPolicy::Allow, signers: &[a], entries: 1 },
    );
    h.rm(&entry_path("prod", 1)).commit(
        "Revert \"release 1.1.0\"",
        None,
        refused(&[("ledger/prod/1.json", "H2", None)]),
    );
    h.finish(cases);

    let (mut h, _) = prod_history(
        k,
        "revert-of-a-non-tip-entry",
        "prod has `revert: allow` and entries 1-3. Removing entry 2 (a revert of an older release) is H2: only \
         the tip can be reverted.",
        Prod { role: &[a], threshold: 1, revert: RevertPolicy::Allow, signers: &[a], entries: 3 },
    );
    h.rm(&p2).commit("Revert \"release 1.2.0\"", None, refused(&[("ledger/prod/2.json", "H2", None)]));
    h.finish(cases);

    // Entry 1 signed by bob, entry 2 by alice; then bob is revoked.
    let mut h = History::new(
        k,
        "rollback-to-an-entry-of-a-revoked-signer",
        "prod needs 1 of {alice, bob}; entry 1 is signed by bob, entry 2 by alice. A root-signed policy removes \
         bob (spec and tip are alice's, so nothing needs re-signing). A revert of entry 2 would make entry 1 the \
         target again, and it no longer meets the policy in force: E5 (cause S2) at entry 1.",
    );
    let e1 = release("prod", 1, None, &[b]);
    let e2 = release("prod", 2, Some(&e1), &[a]);
    h.put(POLICY_PATH, &root_signed(policy_v(k, 1, &[a, b], &[("prod", &[a, b], 1)]), k))
        .put(&spec_path("prod"), &signed(spec("prod", RevertPolicy::Allow), &[a]))
        .put(&entry_path("prod", 1), &e1)
        .put(&p2, &e2)
        .genesis();
    h.put(POLICY_PATH, &root_signed(policy_v(k, 2, &[a], &[("prod", &[a], 1)]), k)).commit(
        "policy: remove bob",
        None,
        accepted(vec![policy_change()]),
    );
    h.rm(&p2).commit("Revert \"release 1.2.0\"", None, refused(&[("ledger/prod/1.json", "E5", Some("S2"))]));
    h.finish(cases);

    let mut h = History::new(
        k,
        "restore-of-an-entry-of-a-revoked-signer",
        "prod needs 1 of {alice, bob}; entry 1 is alice's, entry 2 bob's. Entry 2 is rolled back, then a \
         root-signed policy removes bob. The revert of the rollback would restore entry 2, which no longer \
         meets the policy in force: E5 (cause S2).",
    );
    let e1 = release("prod", 1, None, &[a]);
    let e2 = release("prod", 2, Some(&e1), &[b]);
    h.put(POLICY_PATH, &root_signed(policy_v(k, 1, &[a, b], &[("prod", &[a, b], 1)]), k))
        .put(&spec_path("prod"), &signed(spec("prod", RevertPolicy::Allow), &[a]))
        .put(&entry_path("prod", 1), &e1)
        .put(&p2, &e2)
        .genesis();
    h.rm(&p2).commit("Revert \"release 1.2.0\"", None, accepted(vec![rollback("prod", 2, 1, None)]));
    h.put(POLICY_PATH, &root_signed(policy_v(k, 2, &[a], &[("prod", &[a], 1)]), k)).commit(
        "policy: remove bob",
        None,
        accepted(vec![policy_change()]),
    );
    h.put(&p2, &e2).commit(
        "Revert \"Revert \"release 1.2.0\"\"",
        None,
        refused(&[("ledger/prod/2.json", "E5", Some("S2"))]),
    );
    h.finish(cases);
}

fn policy_cases(k: &Keys, cases: &mut Vec<HistoryCase>) {
    let (a, b, c) = (&k.alice, &k.bob, &k.carol);

    let mut h = History::new(
        k,
        "policy-removes-a-signer",
        "prod needs 1 of {alice, bob}; its spec is signed by both, its tip by bob. A root-signed policy that \
         removes bob, alone, leaves the spec and the tip carrying signatures the new role does not authorise: \
         refused (N4 and E5, cause S2). The next commit also carries the spec and the tip re-signed by alice \
         (bob's signatures dropped); judged from the last verified tree it is accepted, and the target stays.",
    );
    let e1 = release("prod", 1, None, &[b]);
    h.put(POLICY_PATH, &root_signed(policy_v(k, 1, &[a, b], &[("prod", &[a, b], 1)]), k))
        .put(&spec_path("prod"), &signed(spec("prod", RevertPolicy::Signed), &[a, b]))
        .put(&entry_path("prod", 1), &e1)
        .genesis();
    h.put(POLICY_PATH, &root_signed(policy_v(k, 2, &[a], &[("prod", &[a], 1)]), k)).commit(
        "policy: remove bob",
        None,
        refused(&[("environments/prod.json", "N4", Some("S2")), ("ledger/prod/1.json", "E5", Some("S2"))]),
    );
    h.put(&spec_path("prod"), &signed(spec("prod", RevertPolicy::Signed), &[a]))
        .put(&entry_path("prod", 1), &resigned(&e1, &[a]))
        .commit(
            "policy: remove bob, with prod's spec and tip re-signed",
            None,
            accepted(vec![policy_change(), spec_change("prod"), co_sign("prod", 1, 1)]),
        );
    h.finish(cases);

    let (mut h, chain) = prod_history(
        k,
        "policy-raises-a-threshold",
        "prod needs 1 of {alice, bob}; spec and tip are signed by alice. A policy raising the threshold to 2, \
         alone, leaves both short (N4 and E5, cause S3). With bob's co-signatures on the spec and the tip in \
         the same commit it is accepted.",
        Prod { role: &[a, b], threshold: 1, revert: RevertPolicy::Signed, signers: &[a], entries: 1 },
    );
    h.put(POLICY_PATH, &root_signed(policy_v(k, 2, &[a, b], &[("prod", &[a, b], 2)]), k)).commit(
        "policy: prod needs 2 signatures",
        None,
        refused(&[("environments/prod.json", "N4", Some("S3")), ("ledger/prod/1.json", "E5", Some("S3"))]),
    );
    h.put(&spec_path("prod"), &signed(spec("prod", RevertPolicy::Signed), &[a, b]))
        .put(&entry_path("prod", 1), &resigned(&chain[0], &[a, b]))
        .commit(
            "policy: prod needs 2 signatures, spec and tip co-signed",
            None,
            accepted(vec![policy_change(), spec_change("prod"), co_sign("prod", 1, 1)]),
        );
    h.finish(cases);

    let (mut h, _) = prod_history(
        k,
        "policy-rollback",
        "Policy version 2 (carol joins prod) is accepted; putting version 1 back is a policy rollback: P5.",
        Prod { role: &[a, c], threshold: 1, revert: RevertPolicy::Signed, signers: &[a], entries: 1 },
    );
    let v1 = h.tree[POLICY_PATH].clone();
    h.put(POLICY_PATH, &root_signed(policy_v(k, 2, &[a, c], &[("prod", &[a, c], 1)]), k)).commit(
        "policy: carol joins prod",
        None,
        accepted(vec![policy_change()]),
    );
    h.put_bytes(POLICY_PATH, v1).commit(
        "Revert \"policy: carol joins prod\"",
        None,
        refused(&[(POLICY_PATH, "P5", None)]),
    );
    h.finish(cases);

    let (mut h, _) = prod_history(
        k,
        "policy-not-signed-by-the-previous-root",
        "A policy version 2 that makes carol the root, signed by carol alone, is refused: the previous root \
         did not sign it (P6, cause S3). The same policy signed by carol and the root is accepted.",
        Prod { role: &[a, c], threshold: 1, revert: RevertPolicy::Signed, signers: &[a], entries: 1 },
    );
    let mut v2 = policy_v(k, 2, &[a, c], &[("prod", &[a], 1)]);
    v2.root = role(&[c], 1);
    h.put(POLICY_PATH, &signed(v2.clone(), &[c])).commit(
        "policy: carol is root",
        None,
        refused(&[(POLICY_PATH, "P6", Some("S3"))]),
    );
    h.put(POLICY_PATH, &signed(v2, &[c, &k.root])).commit(
        "policy: carol is root (signed by the old root too)",
        None,
        accepted(vec![policy_change()]),
    );
    h.finish(cases);

    let mut h = History::new(
        k,
        "policy-drops-an-environment-and-deletes-its-entry",
        "prod and staging, each needing 1 of {alice}; staging has entries 1 and 2 and `revert: allow`. One \
         root-signed commit drops staging from the policy and removes staging's entry 2. Dropping an \
         environment is H2 at trust/policy.json; the step is refused as a whole and the state is kept (an \
         implementation must not fail in any other way here).",
    );
    let s1 = release("staging", 1, None, &[a]);
    let s2 = release("staging", 2, Some(&s1), &[a]);
    h.put(POLICY_PATH, &root_signed(policy_v(k, 1, &[a], &[("prod", &[a], 1), ("staging", &[a], 1)]), k))
        .put(&spec_path("prod"), &signed(spec("prod", RevertPolicy::Signed), &[a]))
        .put(&spec_path("staging"), &signed(spec("staging", RevertPolicy::Allow), &[a]))
        .put(&entry_path("staging", 1), &s1)
        .put(&entry_path("staging", 2), &s2)
        .genesis();
    h.put(POLICY_PATH, &root_signed(policy_v(k, 2, &[a], &[("prod", &[a], 1)]), k))
        .rm(&entry_path("staging", 2))
        .commit("drop staging", None, refused(&[(POLICY_PATH, "H2", None)]));
    h.finish(cases);
}

fn spec_cases(k: &Keys, cases: &mut Vec<HistoryCase>) {
    let a = &k.alice;
    let base = Environment { max_instance_age_seconds: Some(86_400), ..spec("prod", RevertPolicy::Signed) };
    let v2 = |edit: &dyn Fn(&mut Environment)| {
        let mut s = Environment { version: 2, ..base.clone() };
        edit(&mut s);
        s
    };

    let mut h = History::new(
        k,
        "spec-weakening-needs-the-root",
        "prod needs 1 of {alice} and has `revert: signed`, `drift: correct` and a maximum instance age. Each \
         weakening signed by alice alone is refused (N6, cause S3): revert signed to allow, drift correct to \
         report, a lower healthy_threshold, the maximum instance age removed. The first again, also signed by \
         the root key (which counts for N6 and is not a foreign signature), is accepted.",
    );
    let e1 = release("prod", 1, None, &[a]);
    h.put(POLICY_PATH, &root_signed(policy_v(k, 1, &[a], &[("prod", &[a], 1)]), k))
        .put(&spec_path("prod"), &signed(base.clone(), &[a]))
        .put(&entry_path("prod", 1), &e1)
        .genesis();
    let n6 = refused(&[("environments/prod.json", "N6", Some("S3"))]);
    let weakenings = [
        ("revert: allow", v2(&|s| s.revert = RevertPolicy::Allow)),
        ("drift: report", v2(&|s| s.drift = ledger_format::types::DriftMode::Report)),
        (
            "healthy_threshold 1",
            v2(&|s| {
                s.health =
                    HealthCheck::Tcp { interval_ms: 1000, timeout_ms: 500, healthy_threshold: 1, deadline_seconds: 120 }
            }),
        ),
        ("no maximum instance age", v2(&|s| s.max_instance_age_seconds = None)),
    ];
    for (what, weaker) in weakenings {
        h.put(&spec_path("prod"), &signed(weaker, &[a])).commit(&format!("env set prod {what}"), None, n6.clone());
    }
    h.put(&spec_path("prod"), &signed(v2(&|s| s.revert = RevertPolicy::Allow), &[a, &k.root])).commit(
        "env set prod revert: allow (root co-signed)",
        None,
        accepted(vec![spec_change("prod")]),
    );
    h.finish(cases);

    let mut h = History::new(
        k,
        "spec-strengthening-needs-no-root",
        "prod needs 1 of {alice} and has `revert: allow`, `drift: report`. Version 2 (revert signed, drift \
         correct, a higher healthy_threshold) and version 3 (revert deny, a maximum instance age), each signed \
         by alice alone, only strengthen the settings: accepted.",
    );
    let weak = Environment { drift: ledger_format::types::DriftMode::Report, ..spec("prod", RevertPolicy::Allow) };
    h.put(POLICY_PATH, &root_signed(policy_v(k, 1, &[a], &[("prod", &[a], 1)]), k))
        .put(&spec_path("prod"), &signed(weak.clone(), &[a]))
        .genesis();
    let stronger = Environment {
        version: 2,
        revert: RevertPolicy::Signed,
        drift: ledger_format::types::DriftMode::Correct,
        health: HealthCheck::Tcp { interval_ms: 1000, timeout_ms: 500, healthy_threshold: 3, deadline_seconds: 120 },
        ..weak
    };
    let strongest = Environment {
        version: 3,
        revert: RevertPolicy::Deny,
        max_instance_age_seconds: Some(86_400),
        ..stronger.clone()
    };
    h.put(&spec_path("prod"), &signed(stronger, &[a])).commit(
        "env set prod (stricter)",
        None,
        accepted(vec![spec_change("prod")]),
    );
    h.put(&spec_path("prod"), &signed(strongest, &[a])).commit(
        "env set prod (strictest)",
        None,
        accepted(vec![spec_change("prod")]),
    );
    h.finish(cases);

    let mut h = History::new(
        k,
        "spec-version-skip",
        "A spec change from version 1 straight to version 3 is N5; the same change as version 2 is accepted.",
    );
    h.put(POLICY_PATH, &root_signed(policy_v(k, 1, &[a], &[("prod", &[a], 1)]), k))
        .put(&spec_path("prod"), &signed(base.clone(), &[a]))
        .genesis();
    let bigger = |version| {
        let mut s = Environment { version, ..base.clone() };
        s.groups[0].capacity = 4;
        signed(s, &[a])
    };
    h.put(&spec_path("prod"), &bigger(3)).commit(
        "env set prod capacity 4",
        None,
        refused(&[("environments/prod.json", "N5", None)]),
    );
    h.put(&spec_path("prod"), &bigger(2)).commit(
        "env set prod capacity 4 (version 2)",
        None,
        accepted(vec![spec_change("prod")]),
    );
    h.finish(cases);
}

/// Entry transitions beyond promotion and rollback: each kind of malformed step, and the revert stack.
fn transition_cases(k: &Keys, cases: &mut Vec<HistoryCase>) {
    let (a, b) = (&k.alice, &k.bob);
    let only_alice: &[&TestKey] = &[a];
    let allow =
        |entries| Prod { role: only_alice, threshold: 1, revert: RevertPolicy::Allow, signers: only_alice, entries };

    let (mut h, _) = prod_history(
        k,
        "entry-for-an-undeclared-environment",
        "An entry under ledger/qa/, an environment the policy does not declare, is E1 at its path.",
        allow(1),
    );
    h.put(&entry_path("qa", 1), &release("qa", 1, None, &[a])).commit(
        "release to qa",
        None,
        refused(&[("ledger/qa/1.json", "E1", None)]),
    );
    h.finish(cases);

    let (mut h, chain) = prod_history(
        k,
        "two-kinds-of-entry-change-in-one-step",
        "One commit removes entry 2 and adds entry 3: a revert and an append of the same environment in one \
         step is H2, reported at the lowest changed entry path.",
        allow(2),
    );
    h.rm(&entry_path("prod", 2)).put(&entry_path("prod", 3), &release("prod", 3, Some(&chain[1]), &[a])).commit(
        "replace 1.2.0 by 1.3.0",
        None,
        refused(&[("ledger/prod/2.json", "H2", None)]),
    );
    h.finish(cases);

    let (mut h, chain) =
        prod_history(k, "append-with-a-gap", "Entry 3 appended on top of entry 1 (entry 2 missing) is E3.", allow(1));
    h.put(&entry_path("prod", 3), &release("prod", 3, Some(&chain[0]), &[a])).commit(
        "release 1.3.0",
        None,
        refused(&[("ledger/prod/3.json", "E3", None)]),
    );
    h.finish(cases);

    let (mut h, chain) = prod_history(
        k,
        "co-sign-by-a-foreign-key",
        "mallory's signature added to the tip: a signature by a key outside prod's role is E5, cause S2.",
        allow(1),
    );
    h.put(&entry_path("prod", 1), &resigned(&chain[0], &[a, &k.mallory])).commit(
        "co-sign 1.1.0 (mallory)",
        None,
        refused(&[("ledger/prod/1.json", "E5", Some("S2"))]),
    );
    h.finish(cases);

    let (mut h, chain) = prod_history(
        k,
        "a-new-entry-drops-the-revert-stack",
        "Entry 2 is rolled back, and a different entry 2 (release 1.2.1) is appended: a promotion, which drops \
         the old entry 2 from the revert stack. After that one is rolled back too, putting the old entry 2 \
         back byte for byte is a promotion again, not a restore. Generations 2 to 5.",
        allow(2),
    );
    let p2 = entry_path("prod", 2);
    let mut other = entry("prod", 2, chain[0].hash());
    other.version = "1.2.1".parse().expect("a valid version");
    let other = signed(other, &[a]);
    h.rm(&p2).commit("Revert \"release 1.2.0\"", None, accepted(vec![rollback("prod", 2, 1, None)]));
    h.put(&p2, &other).commit("release 1.2.1", None, accepted(vec![promote("prod", 3, 2)]));
    h.rm(&p2).commit("Revert \"release 1.2.1\"", None, accepted(vec![rollback("prod", 4, 1, None)]));
    h.put(&p2, &chain[1]).commit("release 1.2.0 again", None, accepted(vec![promote("prod", 5, 2)]));
    h.finish(cases);

    let (mut h, _) = prod_history(
        k,
        "spec-co-signature",
        "prod needs 1 of {alice, bob}; its spec is signed by alice. bob adds his signature to the unchanged \
         payload: no new version is needed (no N5), and the generation is unchanged.",
        Prod { role: &[a, b], threshold: 1, revert: RevertPolicy::Signed, signers: &[a], entries: 1 },
    );
    h.put(&spec_path("prod"), &signed(spec("prod", RevertPolicy::Signed), &[a, b])).commit(
        "co-sign prod's spec",
        None,
        accepted(vec![spec_change("prod")]),
    );
    h.finish(cases);

    let mut h = History::new(
        k,
        "releases-to-two-environments-in-one-step",
        "One commit appends entry 2 of prod and entry 1 of staging: each environment's generation goes up \
         by one.",
    );
    let p1 = release("prod", 1, None, &[a]);
    h.put(POLICY_PATH, &root_signed(policy_v(k, 1, &[a], &[("prod", &[a], 1), ("staging", &[a], 1)]), k))
        .put(&spec_path("prod"), &signed(spec("prod", RevertPolicy::Signed), &[a]))
        .put(&spec_path("staging"), &signed(spec("staging", RevertPolicy::Signed), &[a]))
        .put(&entry_path("prod", 1), &p1)
        .genesis();
    h.put(&entry_path("prod", 2), &release("prod", 2, Some(&p1), &[a]))
        .put(&entry_path("staging", 1), &release("staging", 1, None, &[a]))
        .commit(
            "release 1.2.0 to prod and 1.1.0 to staging",
            None,
            accepted(vec![promote("prod", 2, 2), promote("staging", 1, 1)]),
        );
    h.finish(cases);
}

fn recovery_cases(k: &Keys, cases: &mut Vec<HistoryCase>) {
    let a = &k.alice;
    let (mut h, chain) = prod_history(
        k,
        "refused-steps-then-their-reverts",
        "prod needs 1 of {alice}. Three refused commits, each followed by its revert, which brings the tree \
         back to the last verified one (accepted, nothing happens, SPEC.md §8.6): an entry signed by mallory \
         (E5, cause S2), bytes that are not JSON at entry 2 (D2), and a stray file in ledger/ (T2). Then entry \
         2 signed by alice is promoted, generation 2.",
        Prod { role: &[a], threshold: 1, revert: RevertPolicy::Signed, signers: &[a], entries: 1 },
    );
    let p2 = entry_path("prod", 2);
    h.put(&p2, &release("prod", 2, Some(&chain[0]), &[&k.mallory])).commit(
        "release 1.2.0 (signed by mallory)",
        None,
        refused(&[("ledger/prod/2.json", "E5", Some("S2"))]),
    );
    h.rm(&p2).commit("Revert \"release 1.2.0 (signed by mallory)\"", None, accepted(vec![]));
    h.put_bytes(&p2, vec![0xff, 0xfe, b'{', 0x00]).commit(
        "garbage",
        None,
        refused(&[("ledger/prod/2.json", "D2", None)]),
    );
    h.rm(&p2).commit("Revert \"garbage\"", None, accepted(vec![]));
    h.put_bytes("ledger/prod/notes.txt", b"remember to release\n".to_vec()).commit(
        "notes",
        None,
        refused(&[("ledger/prod/notes.txt", "T2", None)]),
    );
    h.rm("ledger/prod/notes.txt").commit("Revert \"notes\"", None, accepted(vec![]));
    h.put(&p2, &release("prod", 2, Some(&chain[0]), &[a])).commit(
        "release 1.2.0",
        None,
        accepted(vec![promote("prod", 2, 2)]),
    );
    h.finish(cases);
}

// ---------------------------------------------------------------------------------------------------
// Revision 4: the timestamp document (SPEC.md §8.9).

/// A commit id for the cases' parents: `n` in 40 hex digits.
fn commit_id(n: u64) -> String {
    format!("{n:040x}")
}

fn timestamp_event() -> ExpectedEvent {
    ExpectedEvent { action: "timestamp".into(), env: None, generation: None, target_seq: None, revert_signed_by: None }
}

/// prod and staging (alice, 1 of 1), an agent for prod, the timestamp role bot (up to a day).
fn rev4_history(k: &Keys, name: &str, description: &str) -> History {
    let mut h = History::new(k, name, description);
    h.put(POLICY_PATH, &root_signed(rev4_policy(k), k))
        .put(&spec_path("prod"), &signed(spec("prod", RevertPolicy::Signed), &[&k.alice]))
        .put(&spec_path("staging"), &signed(spec("staging", RevertPolicy::Signed), &[&k.alice]))
        .genesis();
    h
}

fn ts(k: &Keys, version: u64, names: u64, seconds: i64, signer: &TestKey) -> Document<TimestampDoc> {
    let _ = k;
    signed(timestamp(version, &commit_id(names), "2026-05-31T12:00:00Z", seconds), &[signer])
}

fn timestamp_cases(k: &Keys, cases: &mut Vec<HistoryCase>) {
    let (bot, a) = (&k.bot, &k.alice);
    let mut h = rev4_history(
        k,
        "timestamp-renewals",
        "Revision 4. The timestamp role (bot) renews trust/timestamp.json: each renewal names its commit's first \
         parent and goes up in version. Refused: a version that does not go up (F2), naming another commit than \
         the parent (F2), a renewal signed by a release key (F1, S2), deleting the timestamp without a policy \
         change (H2), a validity longer than the role allows (F1). A renewal may come with a release.",
    );
    let path = TIMESTAMP_PATH;
    h.parent(&commit_id(1)).put(path, &ts(k, 1, 1, 86_400, bot)).commit(
        "timestamp v1",
        None,
        accepted(vec![timestamp_event()]),
    );
    h.parent(&commit_id(2)).put(path, &ts(k, 2, 2, 86_400, bot)).commit(
        "timestamp v2",
        None,
        accepted(vec![timestamp_event()]),
    );
    h.parent(&commit_id(3)).put(path, &ts(k, 2, 3, 43_200, bot)).commit(
        "timestamp v2 again",
        None,
        refused(&[(path, "F2", None)]),
    );
    h.parent(&commit_id(4)).put(path, &ts(k, 3, 2, 86_400, bot)).commit(
        "timestamp v3 naming an older commit",
        None,
        refused(&[(path, "F2", None)]),
    );
    h.parent(&commit_id(5)).put(path, &ts(k, 3, 5, 86_400, a)).commit(
        "timestamp v3 signed by alice",
        None,
        refused(&[(path, "F1", Some("S2"))]),
    );
    h.parent(&commit_id(6)).rm(path).commit("delete the timestamp", None, refused(&[(path, "H2", None)]));
    h.parent(&commit_id(7)).put(path, &ts(k, 3, 7, 2 * 86_400, bot)).commit(
        "timestamp v3 valid for two days",
        None,
        refused(&[(path, "F1", None)]),
    );
    let e1 = release("prod", 1, None, &[a]);
    h.parent(&commit_id(8)).put(path, &ts(k, 3, 8, 86_400, bot)).put(&entry_path("prod", 1), &e1).commit(
        "release 1.1.0 and timestamp v3",
        None,
        accepted(vec![timestamp_event(), promote("prod", 1, 1)]),
    );
    h.finish(cases);

    let mut h = rev4_history(
        k,
        "timestamp-withdrawn-with-its-role",
        "Revision 4. A policy change that keeps the timestamp role keeps the timestamp. One that removes the role \
         while the timestamp stays is refused (F1: no role signs it); removing the role and deleting \
         trust/timestamp.json in one commit is accepted.",
    );
    h.parent(&commit_id(1)).put(path, &ts(k, 1, 1, 86_400, bot)).commit(
        "timestamp v1",
        None,
        accepted(vec![timestamp_event()]),
    );
    let mut v2 = rev4_policy(k);
    v2.version = 2;
    v2.agents.get_mut(&k.agent.id()).expect("the agent").environments.push(lit("staging"));
    h.put(POLICY_PATH, &root_signed(v2.clone(), k)).commit(
        "policy v2: the agent reports on staging too",
        None,
        accepted(vec![policy_change()]),
    );
    let v3 = Policy { version: 3, timestamp: None, ..v2 };
    h.put(POLICY_PATH, &root_signed(v3, k)).commit(
        "policy v3: no timestamp role",
        None,
        refused(&[(path, "F1", None)]),
    );
    h.rm(path).commit(
        "policy v3: no timestamp role, timestamp deleted",
        None,
        accepted(vec![policy_change(), timestamp_event()]),
    );
    h.finish(cases);
}

// ---------------------------------------------------------------------------------------------------
// Revision 5: the buckets layout (SPEC.md §2.3, §8.3.4).

fn bucket_path(env: &str, seq: u64) -> String {
    format!("ledger/{env}/{}/{seq}.json", seq / 1000)
}

fn layout_cases(k: &Keys, cases: &mut Vec<HistoryCase>) {
    let a = &k.alice;
    let buckets = |version| Policy {
        ledger_layout: Some(ledger_format::types::LedgerLayout::Buckets),
        ..policy_v(k, version, &[a], &[("prod", &[a], 1)])
    };

    let (mut h, chain) = prod_history(
        k,
        "layout-migration",
        "Revision 5. prod holds entries 1-3 in the flat layout. A root-signed policy (v2) that says \
         ledger_layout buckets but moves only entries 1 and 2 is refused (T2, at the entry left behind). With \
         entry 3 moved as well, judged from the last verified tree, it is accepted: a move changes no target. \
         Then: entry 4 at its bucket path is a promotion; entry 5 at the flat path is refused (T2); at its \
         bucket path it is accepted; a revert of it (revert allowed) makes entry 4, read from its bucket path, \
         the target again.",
        Prod { role: &[a], threshold: 1, revert: RevertPolicy::Allow, signers: &[a], entries: 3 },
    );
    h.put(POLICY_PATH, &root_signed(buckets(2), k));
    for seq in 1..=2 {
        h.rm(&entry_path("prod", seq)).put(&bucket_path("prod", seq), &chain[seq as usize - 1]);
    }
    h.commit("policy: buckets layout, entries 1 and 2 moved", None, refused(&[("ledger/prod/3.json", "T2", None)]));
    h.rm(&entry_path("prod", 3)).put(&bucket_path("prod", 3), &chain[2]);
    h.commit("move entry 3 as well", None, accepted(vec![policy_change()]));
    let e4 = release("prod", 4, Some(&chain[2]), &[a]);
    h.put(&bucket_path("prod", 4), &e4).commit("release 1.4.0", None, accepted(vec![promote("prod", 2, 4)]));
    let e5 = release("prod", 5, Some(&e4), &[a]);
    h.put(&entry_path("prod", 5), &e5).commit(
        "release 1.5.0 in the flat layout",
        None,
        refused(&[("ledger/prod/5.json", "T2", None)]),
    );
    h.rm(&entry_path("prod", 5)).put(&bucket_path("prod", 5), &e5).commit(
        "release 1.5.0 at its bucket path",
        None,
        accepted(vec![promote("prod", 3, 5)]),
    );
    h.rm(&bucket_path("prod", 5)).commit(
        "Revert \"release 1.5.0\"",
        None,
        accepted(vec![rollback("prod", 4, 4, None)]),
    );
    h.finish(cases);

    let (mut h, chain) = prod_history(
        k,
        "layout-move-without-policy",
        "Revision 5. Moving prod's entries to bucket paths without a policy that says ledger_layout buckets \
         is refused: each moved entry is in the wrong layout (T2). A move that also changes an entry's bytes \
         under a layout change is judged as a rewrite: moving entry 2 with a signature added (a co-signature \
         of the tip) is accepted, moving entry 1 with its payload changed is not (H2).",
        Prod { role: &[a, &k.bob], threshold: 1, revert: RevertPolicy::Signed, signers: &[a], entries: 2 },
    );
    for seq in 1..=2 {
        h.rm(&entry_path("prod", seq)).put(&bucket_path("prod", seq), &chain[seq as usize - 1]);
    }
    h.commit(
        "move entries to buckets",
        None,
        refused(&[("ledger/prod/0/1.json", "T2", None), ("ledger/prod/0/2.json", "T2", None)]),
    );
    let with_bob = Policy {
        ledger_layout: Some(ledger_format::types::LedgerLayout::Buckets),
        ..policy_v(k, 2, &[a, &k.bob], &[("prod", &[a, &k.bob], 1)])
    };
    let mut altered = chain[0].payload.clone();
    altered.version = lit("9.9.9");
    h.put(POLICY_PATH, &root_signed(with_bob.clone(), k))
        .put(&bucket_path("prod", 1), &signed_by(altered, &[a]))
        .put(&bucket_path("prod", 2), &resigned(&chain[1], &[a, &k.bob]))
        .commit("policy: buckets, entry 1 changed on the way", None, refused(&[("ledger/prod/0/1.json", "H2", None)]));
    h.put(&bucket_path("prod", 1), &chain[0]).commit(
        "policy: buckets, entry 2 co-signed by bob on the way",
        None,
        accepted(vec![policy_change(), co_sign("prod", 1, 2)]),
    );
    h.finish(cases);
}
