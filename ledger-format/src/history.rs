//! History verification (SPEC.md §8): Git's first-parent history of the ledger branch is the ledger,
//! and every first-parent step is a transition judged against the state before it.
//!
//! Owns: the compact verified state ([`LedgerState`]), the allowed transitions, target generations,
//! the revert policy, and the trust anchor check at genesis. Must not read Git (an edge turns commits
//! into [`Step`]s) and must not read the clock: expiry is judged by whoever acts on a target.

use crate::check::Check;
use crate::crypto::{verify_sshsig, Blake3Digest, KeyId};
use crate::document::{display_key, DocError, Document, ForeignSignatures, Payload, SignatureCheck};
use crate::tree::{
    check_environment, check_policy, classify, entry_path, verify_snapshot_with, Expiry, LayoutPath, Node, Problem,
    Snapshot, POLICY_PATH,
};
use crate::types::{Entry, EnvName, Environment, Image, Policy, ReleaseVersion, RevertPolicy};
use crate::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;

/// What the verifier trusts before it has seen anything: never the first policy it happens to find.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustAnchor {
    /// The genesis policy's document hash.
    PolicyHash(Blake3Digest),
    /// Keys of which `threshold` must have signed the genesis policy.
    RootKeys { keys: Vec<KeyId>, threshold: u64 },
    /// Take the genesis policy as found. Only for offline audits that say so in their output.
    UnpinnedTrustGenesisAsFound,
}

/// A commit as the history verifier sees it.
#[derive(Clone, Debug, Default)]
pub struct CommitInfo {
    pub id: String,
    pub time: Option<Timestamp>,
    pub author: String,
    pub summary: String,
    /// The commit's SSH signature (`gpgsig` header) and the bytes it signs, when it has one.
    pub ssh_signature: Option<SshSigned>,
}

#[derive(Clone, Debug)]
pub struct SshSigned {
    pub armored: Vec<u8>,
    pub signed_payload: Vec<u8>,
}

/// One changed path under the owned directories between a commit's first parent and the commit.
#[derive(Clone, Debug)]
pub struct PathChange {
    pub path: Vec<u8>,
    pub before: Option<Node>,
    pub after: Option<Node>,
}

/// A first-parent step: the commit, what it changed, and the entries just below any removed entry
/// (`context`, read from the commit's tree), which become tips when a revert removes the one above.
#[derive(Clone, Debug, Default)]
pub struct Step {
    pub commit: CommitInfo,
    pub changes: Vec<PathChange>,
    pub context: BTreeMap<Vec<u8>, Node>,
}

/// An entry as the state remembers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub seq: u64,
    pub hash: Blake3Digest,
    /// BLAKE3 of the file bytes, to recognise a byte-identical re-add (revert of a revert).
    pub file_digest: Blake3Digest,
    /// Whether the entry met its threshold. Only complete entries are targets.
    pub complete: bool,
    pub version: ReleaseVersion,
    pub image: Image,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    pub signed_by: Vec<KeyId>,
}

/// Per environment: the current spec, the chain's tip and target, and the target generation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnvHistory {
    pub spec: Document<Environment>,
    pub tip: Option<Link>,
    pub target: Option<Link>,
    /// Goes up by one at every step that changes the target (SPEC.md §8.5).
    pub generation: u64,
    /// Entries removed by reverts, most recent last: what a revert of that revert may put back.
    pub reverted: Vec<Link>,
}

/// The verified state after some commit: everything later steps are judged against.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LedgerState {
    pub policy: Document<Policy>,
    pub envs: BTreeMap<EnvName, EnvHistory>,
}

impl<T: Payload> Serialize for Document<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(std::str::from_utf8(&self.to_file_bytes()).expect("the file form is UTF-8"))
    }
}

impl<'de, T: Payload> Deserialize<'de> for Document<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Document::parse(text.as_bytes()).map_err(serde::de::Error::custom)
    }
}

/// What a step did, for the audit timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Genesis,
    Promote,
    /// An entry added short of its threshold: not a target until co-signed.
    Propose,
    CoSign,
    /// A revert removed the target: the entry before it is the target again.
    Rollback,
    /// A revert removed an entry that never became a target.
    Withdraw,
    /// A revert of a revert put a byte-identical, earlier-valid entry back.
    Restore,
    PolicyChange,
    SpecChange,
}

#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<EnvName>,
    /// The environment's target generation after the step.
    pub generation: u64,
    /// The environment's target after the step (for policy events: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<Link>,
    /// The entry this event is about (added, co-signed or removed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<Link>,
    pub policy_version: u64,
    /// For reverts: the key whose valid SSH signature the revert commit carries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revert_signed_by: Option<KeyId>,
}

fn problem(path: &str, check: Check, reason: impl Into<String>) -> Problem {
    Problem { path: path.to_owned(), check, reason: reason.into() }
}

fn doc_problem(path: &str, e: DocError) -> Problem {
    problem(path, e.check, e.reason)
}

/// Genesis (SPEC.md §8.2): the first commit that holds a policy is verified as a whole tree and its
/// policy must match the trust anchor.
pub fn genesis(
    snapshot: &Snapshot,
    anchor: &TrustAnchor,
    commit: &CommitInfo,
) -> Result<(LedgerState, Vec<Event>), Vec<Problem>> {
    let tree = verify_snapshot_with(snapshot, Expiry::NotJudged)?;
    let policy = tree.policy;
    match anchor {
        TrustAnchor::PolicyHash(expected) if policy.hash() != *expected => {
            return Err(vec![problem(
                POLICY_PATH,
                Check::P7,
                format!(
                    "genesis policy in commit {} has hash {}, the pinned trust root is {expected}",
                    commit.id,
                    policy.hash()
                ),
            )]);
        }
        TrustAnchor::RootKeys { keys, threshold } => {
            let pinned = crate::types::Role { keys: keys.clone(), threshold: *threshold };
            if let Err(e) = policy.check_role(&policy.payload, &pinned, ForeignSignatures::Skip) {
                return Err(vec![problem(
                    POLICY_PATH,
                    Check::P7,
                    format!(
                        "genesis policy in commit {} is not signed by the pinned root keys: {}",
                        commit.id, e.reason
                    ),
                )]);
            }
        }
        _ => {}
    }
    let policy_version = policy.payload.version;
    let mut events = vec![Event {
        action: Action::Genesis,
        env: None,
        generation: 0,
        target: None,
        entry: None,
        policy_version,
        revert_signed_by: None,
    }];
    let envs = tree
        .environments
        .into_iter()
        .map(|(env, state)| {
            let tip = state.entries.last().map(|e| link(&e.doc, file_digest_of(&e.doc), true, e.signed_by.0.clone()));
            let generation = u64::from(tip.is_some());
            if let Some(tip) = &tip {
                events.push(Event {
                    action: Action::Promote,
                    env: Some(env.clone()),
                    generation,
                    target: Some(tip.clone()),
                    entry: Some(tip.clone()),
                    policy_version,
                    revert_signed_by: None,
                });
            }
            (env, EnvHistory { spec: state.spec, target: tip.clone(), tip, generation, reverted: Vec::new() })
        })
        .collect();
    Ok((LedgerState { policy, envs }, events))
}

fn file_digest_of<T: Payload>(doc: &Document<T>) -> Blake3Digest {
    Blake3Digest(*blake3::hash(&doc.to_file_bytes()).as_bytes())
}

fn link(doc: &Document<Entry>, file_digest: Blake3Digest, complete: bool, signed_by: Vec<KeyId>) -> Link {
    let e = &doc.payload;
    Link {
        seq: e.seq,
        hash: doc.hash(),
        file_digest,
        complete,
        version: e.version.clone(),
        image: e.image.clone(),
        expires_at: e.expires_at,
        signed_by,
    }
}

fn file_bytes<'a>(path: &str, node: &'a Node) -> Result<&'a [u8], Problem> {
    match node {
        Node::File(bytes) => Ok(bytes),
        Node::TooLarge { size } => {
            Err(problem(path, Check::D1, format!("{size} bytes, more than any document may be")))
        }
        Node::Symlink => Err(problem(path, Check::T1, "is a symbolic link")),
        Node::Other(what) => Err(problem(path, Check::T1, format!("is a {what}, not a regular file"))),
    }
}

fn parse_doc<T: Payload>(
    path: &str,
    node: &Node,
    ledger: &crate::types::LedgerId,
    ledger_of: fn(&T) -> &crate::types::LedgerId,
) -> Result<Document<T>, Problem> {
    let doc = Document::<T>::parse(file_bytes(path, node)?).map_err(|e| doc_problem(path, e))?;
    if ledger_of(&doc.payload) != ledger {
        return Err(problem(
            path,
            Check::D6,
            format!("payload names ledger {}, the policy's ledger is {ledger}", ledger_of(&doc.payload)),
        ));
    }
    Ok(doc)
}

/// Entry changes of one environment in one step.
#[derive(Default)]
struct EnvChanges<'a> {
    added: BTreeMap<u64, (String, &'a Node)>,
    removed: BTreeMap<u64, String>,
    modified: BTreeMap<u64, (String, &'a Node)>,
}

/// Applies one first-parent step to `state` (SPEC.md §8.3). Returns the state after it and what it
/// did, or every reason it is refused; a refused step leaves `state` as it was (the caller keeps it).
pub fn apply_step(
    state: &LedgerState,
    step: &Step,
    sigs: &impl SignatureCheck,
) -> Result<(LedgerState, Vec<Event>), Vec<Problem>> {
    let mut next = state.clone();
    let mut events = Vec::new();
    let mut problems = Vec::new();

    // Sort the changes into the layout; anything else under the owned directories is refused.
    let mut policy_change = None;
    let mut spec_changes: BTreeMap<EnvName, (String, &PathChange)> = BTreeMap::new();
    let mut entry_changes: BTreeMap<EnvName, EnvChanges> = BTreeMap::new();
    for change in &step.changes {
        let Ok(path) = std::str::from_utf8(&change.path) else {
            problems.push(problem(&String::from_utf8_lossy(&change.path), Check::T2, "path is not valid UTF-8"));
            continue;
        };
        match (classify(path), &change.before, &change.after) {
            (Some(LayoutPath::Policy), _, Some(after)) => policy_change = Some(after),
            (Some(LayoutPath::Policy), _, None) => problems.push(problem(path, Check::H2, "the policy was deleted")),
            (Some(LayoutPath::Environment(env)), _, _) => {
                spec_changes.insert(env, (path.to_owned(), change));
            }
            (Some(LayoutPath::Entry(env, seq)), before, after) => {
                let c = entry_changes.entry(env).or_default();
                match (before, after) {
                    (None, Some(node)) => {
                        c.added.insert(seq, (path.to_owned(), node));
                    }
                    (Some(_), None) => {
                        c.removed.insert(seq, path.to_owned());
                    }
                    (Some(_), Some(node)) => {
                        c.modified.insert(seq, (path.to_owned(), node));
                    }
                    (None, None) => {}
                }
            }
            (None, _, None) => {} // removing a stray file is harmless
            (None, _, Some(_)) => problems.push(problem(
                path,
                Check::T2,
                "does not match the layout (trust/policy.json, environments/<env>.json, ledger/<env>/<seq>.json)",
            )),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }

    // 1. The policy, judged against the parent's policy; the rest of the step against the new one.
    if let Some(node) = policy_change {
        match next_policy(&state.policy, node, sigs) {
            Ok(policy) => {
                for env in state.policy.payload.environments.keys() {
                    if !policy.payload.environments.contains_key(env) {
                        problems.push(problem(
                            POLICY_PATH,
                            Check::H2,
                            format!("environment {env} was removed; v1 ledgers keep their environments"),
                        ));
                    }
                }
                events.push(Event {
                    action: Action::PolicyChange,
                    env: None,
                    generation: 0,
                    target: None,
                    entry: None,
                    policy_version: policy.payload.version,
                    revert_signed_by: None,
                });
                next.policy = policy;
            }
            Err(p) => return Err(vec![p]),
        }
    }
    let policy = next.policy.payload.clone();
    let policy_version = policy.version;

    // 2. Environment specs.
    for (env, (path, change)) in &spec_changes {
        let Some(after) = &change.after else {
            problems.push(problem(path, Check::H2, format!("the spec of {env} was deleted")));
            continue;
        };
        let result = parse_doc::<Environment>(path, after, &policy.ledger, |e| &e.ledger).and_then(|doc| {
            check_environment(&policy, env, &doc).map_err(|e| doc_problem(path, e))?;
            Ok(doc)
        });
        let doc = match result {
            Ok(doc) => doc,
            Err(p) => {
                problems.push(p);
                continue;
            }
        };
        let version = doc.payload.version;
        match next.envs.get_mut(env) {
            // Same payload, more signatures: a co-signature, which needs no new version.
            Some(h) if doc.hash() == h.spec.hash() => h.spec = doc,
            Some(h) if version != h.spec.payload.version + 1 => problems.push(problem(
                path,
                Check::N5,
                format!("spec version {version} does not follow {} (versions go up by one)", h.spec.payload.version),
            )),
            Some(h) => h.spec = doc,
            None => {
                next.envs.insert(
                    env.clone(),
                    EnvHistory { spec: doc, tip: None, target: None, generation: 0, reverted: Vec::new() },
                );
            }
        }
        let generation = next.envs.get(env).map_or(0, |h| h.generation);
        events.push(Event {
            action: Action::SpecChange,
            env: Some(env.clone()),
            generation,
            target: None,
            entry: None,
            policy_version,
            revert_signed_by: None,
        });
    }
    for env in policy.environments.keys() {
        if !next.envs.contains_key(env) {
            problems.push(problem(
                &crate::tree::environment_path(env),
                Check::N2,
                format!("environment {env} is declared in {POLICY_PATH} but has no spec"),
            ));
        }
    }

    // 3. Chains.
    for (env, changes) in &entry_changes {
        let Some(history) = next.envs.get_mut(env) else {
            for (path, _) in changes.added.values() {
                problems.push(problem(path, Check::E1, format!("environment {env} is not declared in {POLICY_PATH}")));
            }
            continue;
        };
        let role = policy.env_role(env).expect("every environment with history is declared").clone();
        match apply_entry_changes(env, history, changes, &policy, &role, step, sigs) {
            Ok(mut e) => {
                for ev in &mut e {
                    ev.policy_version = policy_version;
                }
                events.extend(e);
            }
            Err(mut p) => problems.append(&mut p),
        }
    }

    if problems.is_empty() {
        Ok((next, events))
    } else {
        problems.sort_by(|a, b| (a.path.as_str(), a.check).cmp(&(b.path.as_str(), b.check)));
        Err(problems)
    }
}

/// P1-P6 for a policy that replaces `old` (SPEC.md §8.3.1).
fn next_policy(old: &Document<Policy>, node: &Node, sigs: &impl SignatureCheck) -> Result<Document<Policy>, Problem> {
    let old_p = &old.payload;
    let doc = parse_doc::<Policy>(POLICY_PATH, node, &old_p.ledger, |p| &p.ledger)?;
    check_policy(&doc, Expiry::NotJudged).map_err(|e| doc_problem(POLICY_PATH, e))?;
    if doc.payload.version != old_p.version + 1 {
        return Err(problem(
            POLICY_PATH,
            Check::P5,
            format!("policy version {} does not follow {} (versions go up by exactly one; an older policy cannot come back)", doc.payload.version, old_p.version),
        ));
    }
    doc.check_role_with(old_p, &old_p.root, ForeignSignatures::Skip, sigs).map_err(|e| {
        problem(POLICY_PATH, Check::P6, format!("not signed by the previous root: {} ({})", e.reason, e.check))
    })?;
    Ok(doc)
}

/// The entry transitions of one environment (SPEC.md §8.3.3): append, co-sign, revert of the tip,
/// and re-adding what a revert removed. Anything else is refused.
fn apply_entry_changes(
    env: &EnvName,
    history: &mut EnvHistory,
    changes: &EnvChanges,
    policy: &Policy,
    role: &crate::types::Role,
    step: &Step,
    sigs: &impl SignatureCheck,
) -> Result<Vec<Event>, Vec<Problem>> {
    let tip_seq = history.tip.as_ref().map_or(0, |t| t.seq);
    let kinds = [!changes.added.is_empty(), !changes.removed.is_empty(), !changes.modified.is_empty()];
    if kinds.iter().filter(|k| **k).count() > 1 {
        let path = entry_path(env, tip_seq.max(1));
        return Err(vec![problem(
            &path,
            Check::H2,
            format!("one step both adds, removes or rewrites entries of {env}; make each its own commit"),
        )]);
    }
    let mut events = Vec::new();
    let mut event = |action, history: &EnvHistory, entry: Option<Link>, revert_signed_by| {
        events.push(Event {
            action,
            env: Some(env.clone()),
            generation: history.generation,
            target: history.target.clone(),
            entry,
            policy_version: 0,
            revert_signed_by,
        })
    };

    // Co-signature: the tip's file changes, its payload does not, and no signature is dropped.
    for (seq, (path, node)) in &changes.modified {
        let Some(tip) = history.tip.clone().filter(|t| t.seq == *seq) else {
            return Err(vec![problem(path, Check::H2, format!("entry {seq} of {env} was rewritten; signed entries are never edited (only the tip may gain co-signatures)"))]);
        };
        let doc = parse_doc::<Entry>(path, node, &policy.ledger, |e| &e.ledger).map_err(|p| vec![p])?;
        if doc.hash() != tip.hash {
            return Err(vec![problem(
                path,
                Check::H2,
                format!("the payload of entry {seq} of {env} changed; signed entries are never edited"),
            )]);
        }
        let (complete, signed_by) = judge_entry(path, &doc, policy, role, sigs).map_err(|p| vec![p])?;
        if !tip.signed_by.iter().all(|k| signed_by.contains(k)) {
            return Err(vec![problem(
                path,
                Check::H2,
                format!("a co-signature was removed from entry {seq} of {env}"),
            )]);
        }
        let new_link = link(&doc, file_digest(node), complete, signed_by);
        let became_target = complete && !tip.complete;
        history.tip = Some(new_link.clone());
        if became_target {
            history.target = Some(new_link.clone());
            history.generation += 1;
            event(Action::Promote, history, Some(new_link), None);
        } else {
            event(Action::CoSign, history, Some(new_link), None);
        }
    }

    // Revert: exactly the tip is removed.
    if !changes.removed.is_empty() {
        let (seq, path) = changes.removed.iter().next_back().expect("not empty");
        if changes.removed.len() > 1 || *seq != tip_seq {
            let which = changes.removed.keys().map(|s| s.to_string()).collect::<Vec<_>>().join(", ");
            return Err(vec![problem(
                path,
                Check::H2,
                format!("entries {which} of {env} were removed; only the tip ({tip_seq}) can be reverted"),
            )]);
        }
        let tip = history.tip.clone().expect("tip_seq > 0 means a tip");
        let mut revert_signed_by = None;
        if tip.complete {
            revert_signed_by = check_revert(env, path, history.spec.payload.revert, policy, role, &step.commit)?;
        }
        let below = if *seq > 1 {
            let below_path = entry_path(env, seq - 1);
            let node = step.context.get(below_path.as_bytes()).ok_or_else(|| {
                vec![problem(&below_path, Check::H2, "the entry below a reverted tip is missing from the commit")]
            })?;
            let doc = parse_doc::<Entry>(&below_path, node, &policy.ledger, |e| &e.ledger).map_err(|p| vec![p])?;
            // It was a complete tip once (entries are appended only on complete tips); its signers
            // are recorded as found, without re-judging them against today's policy.
            let signed_by = doc.signatures.iter().map(|s| s.keyid).collect();
            Some(link(&doc, file_digest(node), true, signed_by))
        } else {
            None
        };
        history.reverted.push(tip.clone());
        history.tip = below.clone();
        if tip.complete {
            history.target = below;
            history.generation += 1;
            event(Action::Rollback, history, Some(tip), revert_signed_by);
        } else {
            event(Action::Withdraw, history, Some(tip), None);
        }
    }

    // Append (or restore), in seq order, each on a complete tip.
    for (expected_seq, (seq, (path, node))) in (tip_seq + 1..).zip(&changes.added) {
        if *seq != expected_seq {
            let why = if *seq <= tip_seq {
                format!("entry {seq} of {env} already exists")
            } else {
                format!("gap: entry {expected_seq} of {env} is missing")
            };
            return Err(vec![problem(path, Check::E3, why)]);
        }
        if history.tip.as_ref().is_some_and(|t| !t.complete) {
            return Err(vec![problem(
                path,
                Check::H2,
                format!(
                    "entry {} of {env} is still short of signatures; co-sign or revert it before adding another",
                    tip_seq
                ),
            )]);
        }
        let doc = parse_doc::<Entry>(path, node, &policy.ledger, |e| &e.ledger).map_err(|p| vec![p])?;
        if doc.payload.env != *env || doc.payload.seq != *seq {
            return Err(vec![problem(
                path,
                Check::E2,
                format!("entry says env {} seq {}, its path says {env} {seq}", doc.payload.env, doc.payload.seq),
            )]);
        }
        let prev = history.tip.as_ref().map_or(Blake3Digest::ZERO, |t| t.hash);
        if doc.payload.prev != prev {
            return Err(vec![problem(path, Check::E4, format!("prev is {}, expected {prev}", doc.payload.prev))]);
        }
        let digest = file_digest(node);
        let restored = history.reverted.iter().rposition(|r| r.seq == *seq && r.file_digest == digest && r.complete);
        let (new_link, action) = match restored {
            Some(i) => {
                let link = history.reverted.remove(i);
                (link, Action::Restore)
            }
            None => {
                let (complete, signed_by) = judge_entry(path, &doc, policy, role, sigs).map_err(|p| vec![p])?;
                history.reverted.retain(|r| r.seq < *seq);
                (link(&doc, digest, complete, signed_by), if complete { Action::Promote } else { Action::Propose })
            }
        };
        history.tip = Some(new_link.clone());
        if new_link.complete {
            history.target = Some(new_link.clone());
            history.generation += 1;
        }
        event(action, history, Some(new_link), None);
    }
    Ok(events)
}

fn file_digest(node: &Node) -> Blake3Digest {
    match node {
        Node::File(bytes) => Blake3Digest(*blake3::hash(bytes).as_bytes()),
        _ => Blake3Digest::ZERO,
    }
}

/// S1-S3 for an entry added or co-signed in a step: every signature must be valid and authorised;
/// a threshold not yet met makes the entry pending instead of refusing it.
fn judge_entry(
    path: &str,
    doc: &Document<Entry>,
    policy: &Policy,
    role: &crate::types::Role,
    sigs: &impl SignatureCheck,
) -> Result<(bool, Vec<KeyId>), Problem> {
    match doc.check_role_with(policy, role, ForeignSignatures::Refuse, sigs) {
        Ok(signed) => Ok((true, signed.0)),
        Err(e) if e.check == Check::S3 => {
            let partial = crate::types::Role { keys: role.keys.clone(), threshold: 0 };
            let signed = doc
                .check_role_with(policy, &partial, ForeignSignatures::Refuse, sigs)
                .map_err(|e| doc_problem(path, e))?;
            Ok((false, signed.0))
        }
        Err(e) => Err(problem(path, Check::E5, format!("{} ({})", e.reason, e.check))),
    }
}

/// H3 (SPEC.md §8.4): may this commit remove the environment's target?
fn check_revert(
    env: &EnvName,
    path: &str,
    rule: RevertPolicy,
    policy: &Policy,
    role: &crate::types::Role,
    commit: &CommitInfo,
) -> Result<Option<KeyId>, Vec<Problem>> {
    let signer = commit.ssh_signature.as_ref().map(|s| verify_sshsig(&s.armored, "git", &s.signed_payload));
    match rule {
        RevertPolicy::Allow => Ok(signer.and_then(|r| r.ok()).map(|k| k.key_id())),
        RevertPolicy::Deny => Err(vec![problem(
            path,
            Check::H3,
            format!(
                "{env} denies rollback by revert; release a signed entry that re-targets the earlier image instead"
            ),
        )]),
        RevertPolicy::Signed => match signer {
            None => Err(vec![problem(
                path,
                Check::H3,
                format!(
                    "{env} requires reverts to be SSH-signed by one of its signers; commit {} is not signed",
                    commit.id
                ),
            )]),
            Some(Err(e)) => Err(vec![problem(
                path,
                Check::H3,
                format!("the SSH signature of commit {} is refused: {e}", commit.id),
            )]),
            Some(Ok(key)) if role.keys.contains(&key.key_id()) => Ok(Some(key.key_id())),
            Some(Ok(key)) => Err(vec![problem(
                path,
                Check::H3,
                format!(
                    "commit {} is SSH-signed by {}, who is not a signer of {env}",
                    commit.id,
                    display_key(policy, &key.key_id())
                ),
            )]),
        },
    }
}
