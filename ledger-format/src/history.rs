//! History verification (SPEC.md §8): Git's first-parent history of the ledger branch is the ledger,
//! and every first-parent step is a transition judged against the state before it.
//!
//! Owns: the compact verified state ([`LedgerState`]), the allowed transitions, target generations,
//! the revert policy, and the trust anchor check at genesis. Must not read Git (an edge turns commits
//! into [`Step`]s) and must not read the clock: expiry is judged by whoever acts on a target.

use crate::check::Check;
use crate::crypto::{verify_sshsig, Blake3Digest, KeyId};
use crate::document::{display_key, DocError, Document, ForeignSignatures, Payload, SignatureCheck};
use crate::freshness::{check_renewal, check_timestamp, TIMESTAMP_PATH};
use crate::tree::{
    check_environment, check_policy, classify, verify_snapshot_with, wrong_layout, Expiry, Layout, LayoutPath, Node,
    Problem, Snapshot, VerifiedTree, NOT_IN_LAYOUT, POLICY_PATH,
};
use crate::types::{Entry, EnvName, Environment, Image, Policy, ReleaseVersion, RevertPolicy, TimestampDoc};
use crate::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::{BTreeMap, BTreeSet};

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
    /// The commit's first parent as the commit records it (`None` for a root commit): what a
    /// timestamp written by this commit must name (F2, SPEC.md §8.9).
    pub parent: Option<String>,
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
    /// The ledger's timestamp document, when it has one (revision 4, SPEC.md §8.9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Document<TimestampDoc>>,
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
    CoSign,
    /// A revert removed the target: the entry before it is the target again.
    Rollback,
    /// A revert removed an entry that never became a target: only a tip left pending in the persisted
    /// state of a revision-2 verifier (revision 3 never puts one on the ledger branch).
    Withdraw,
    /// A revert of a revert put a byte-identical, earlier-valid entry back.
    Restore,
    PolicyChange,
    SpecChange,
    /// The timestamp document was renewed (or added, or removed with the timestamp role).
    Timestamp,
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

impl Event {
    /// An event of the whole ledger (genesis, a policy change, a timestamp): no environment, no target.
    fn of_ledger(action: Action, policy_version: u64) -> Self {
        Event { action, env: None, generation: 0, target: None, entry: None, policy_version, revert_signed_by: None }
    }
}

fn problem(path: &str, check: Check, reason: impl Into<String>) -> Problem {
    Problem { path: path.to_owned(), check, reason: reason.into(), cause: None }
}

fn doc_problem(path: &str, e: DocError) -> Problem {
    e.at(path)
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
    if let Some(t) = &tree.timestamp {
        check_renewal(None, t, commit.parent.as_deref()).map_err(|e| vec![doc_problem(TIMESTAMP_PATH, e)])?;
    }
    let state = state_of(VerifiedTree { policy, environments: tree.environments, timestamp: tree.timestamp });
    let policy_version = state.policy.payload.version;
    let mut events = vec![Event::of_ledger(Action::Genesis, policy_version)];
    for (env, h) in &state.envs {
        if let Some(tip) = &h.tip {
            events.push(Event {
                action: Action::Promote,
                env: Some(env.clone()),
                generation: h.generation,
                target: Some(tip.clone()),
                entry: Some(tip.clone()),
                policy_version,
                revert_signed_by: None,
            });
        }
    }
    Ok((state, events))
}

/// The state a verified tree stands for (SPEC.md §8.2): its policy and specs, and per environment its
/// last entry as tip and target, at generation 1 (0 without entries). Nothing is verified again: the
/// tree's verification already judged every signature.
pub fn state_of(tree: VerifiedTree) -> LedgerState {
    let envs = tree
        .environments
        .into_iter()
        .map(|(env, state)| {
            let tip = state.entries.last().map(|e| link(&e.doc, file_digest_of(&e.doc), true, e.signed_by.0.clone()));
            let generation = u64::from(tip.is_some());
            (env, EnvHistory { spec: state.spec, target: tip.clone(), tip, generation, reverted: Vec::new() })
        })
        .collect();
    LedgerState { policy: tree.policy, envs, timestamp: tree.timestamp }
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

/// Applies one first-parent step to `state` (SPEC.md §8.3) and returns what it did, or every reason it
/// is refused. All or nothing: the step is judged on copies of what it touches (the policy and the
/// environments it changes), which replace the originals in `state` only when the step verifies.
pub fn apply_step(
    state: &mut LedgerState,
    step: &Step,
    sigs: &impl SignatureCheck,
) -> Result<Vec<Event>, Vec<Problem>> {
    let (new_policy, touched, timestamp, events) = judge_step(state, step, sigs)?;
    if let Some(policy) = new_policy {
        state.policy = policy;
    }
    if let Some(timestamp) = timestamp {
        state.timestamp = timestamp;
    }
    state.envs.extend(touched);
    Ok(events)
}

/// The step from the tree `before` to the tree `after` (their owned directories), as an edge that reads
/// Git would hand it over: every changed path, and the entry below each removed entry, read from `after`.
pub fn step_between(before: &Snapshot, after: &Snapshot, commit: CommitInfo) -> Step {
    let mut changes = Vec::new();
    let paths: std::collections::BTreeSet<&Vec<u8>> = before.nodes.keys().chain(after.nodes.keys()).collect();
    for path in paths {
        let (b, a) = (before.nodes.get(path), after.nodes.get(path));
        if b != a {
            changes.push(PathChange { path: path.clone(), before: b.cloned(), after: a.cloned() });
        }
    }
    let mut context = BTreeMap::new();
    for change in changes.iter().filter(|c| c.after.is_none()) {
        let Some(LayoutPath::Entry(env, seq)) = std::str::from_utf8(&change.path).ok().and_then(classify) else {
            continue;
        };
        for layout in [Layout::Flat, Layout::Buckets] {
            let below = layout.entry_path(&env, seq.saturating_sub(1));
            if let Some(node) = after.nodes.get(below.as_bytes()) {
                context.insert(below.into_bytes(), node.clone());
            }
        }
    }
    Step { commit, changes, context }
}

/// Judges `before -> after` as one first-parent step, from `state`, the state of `before` as found
/// ([`state_of`] its verified tree, which the caller has verified once, expiry not judged). For
/// writers: a command commits only what every verifier of the ledger branch would accept (SPEC.md
/// §8.0). A re-added reverted entry is judged as an append here, since `before` alone does not hold
/// the revert stack.
pub fn check_step_from(
    state: &LedgerState,
    before: &Snapshot,
    after: &Snapshot,
    commit: CommitInfo,
) -> Result<Vec<Event>, Vec<Problem>> {
    let step = step_between(before, after, commit);
    judge_step(state, &step, &crate::document::Direct).map(|(_, _, _, events)| events)
}

/// The copies a step would change, or its problems: a new policy, the environments it touched, the
/// timestamp when it changed (`Some(None)`: removed), and what it did.
type Judged =
    (Option<Document<Policy>>, BTreeMap<EnvName, EnvHistory>, Option<Option<Document<TimestampDoc>>>, Vec<Event>);

fn judge_step(state: &LedgerState, step: &Step, sigs: &impl SignatureCheck) -> Result<Judged, Vec<Problem>> {
    let mut new_policy: Option<Document<Policy>> = None;
    let mut touched: BTreeMap<EnvName, EnvHistory> = BTreeMap::new();
    let mut events = Vec::new();
    let mut problems = Vec::new();

    // Sort the changes into the layout; anything else under the owned directories is refused.
    let mut policy_change = None;
    let mut timestamp_change: Option<&Option<Node>> = None;
    let mut spec_changes: BTreeMap<EnvName, (String, &PathChange)> = BTreeMap::new();
    let mut entry_paths: BTreeMap<(EnvName, u64), Vec<(&str, &PathChange)>> = BTreeMap::new();
    for change in &step.changes {
        let Ok(path) = std::str::from_utf8(&change.path) else {
            problems.push(problem(&String::from_utf8_lossy(&change.path), Check::T2, "path is not valid UTF-8"));
            continue;
        };
        match (classify(path), &change.before, &change.after) {
            (Some(LayoutPath::Policy), _, Some(after)) => policy_change = Some(after),
            (Some(LayoutPath::Policy), _, None) => problems.push(problem(path, Check::H2, "the policy was deleted")),
            (Some(LayoutPath::Timestamp), _, after) => timestamp_change = Some(after),
            (Some(LayoutPath::Environment(env)), _, _) => {
                spec_changes.insert(env, (path.to_owned(), change));
            }
            (Some(LayoutPath::Entry(env, seq)), _, _) => {
                entry_paths.entry((env, seq)).or_default().push((path, change));
            }
            (None, _, None) => {} // removing a stray file is harmless
            (None, _, Some(_)) => problems.push(problem(path, Check::T2, NOT_IN_LAYOUT)),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }

    // 1. The policy, judged against the parent's policy; the rest of the step against the new one.
    if let Some(node) = policy_change {
        let policy = next_policy(&state.policy, node, sigs).map_err(|p| vec![p])?;
        // Dropping an environment would orphan its chain and its running instances: refused, and
        // nothing else in the step is judged against a policy that no longer has the role.
        let dropped: Vec<String> = state
            .policy
            .payload
            .environments
            .keys()
            .filter(|env| !policy.payload.environments.contains_key(*env))
            .map(|env| env.to_string())
            .collect();
        if !dropped.is_empty() {
            return Err(vec![problem(
                POLICY_PATH,
                Check::H2,
                format!(
                    "environment {} was removed from the policy; v1 ledgers keep their environments",
                    dropped.join(", ")
                ),
            )]);
        }
        events.push(Event::of_ledger(Action::PolicyChange, policy.payload.version));
        new_policy = Some(policy);
    }
    // Borrowed, not copied: a step that changes the policy judges the rest against its new one.
    let policy: &Policy = &new_policy.as_ref().unwrap_or(&state.policy).payload;
    let policy_version = policy.version;

    // Entries sit where the policy after the step says (revision 5); a layout change moves them all.
    let entry_changes = sort_entry_changes(state, policy, entry_paths, &mut problems);

    // The timestamp (SPEC.md §8.9): a renewal names the commit it was made on and goes up in version;
    // it is removed only together with the timestamp role. Judged under the policy after the step.
    let mut new_timestamp = None;
    match timestamp_change {
        None => {}
        Some(None) if policy.timestamp.is_some() && new_policy.is_none() => problems.push(problem(
            TIMESTAMP_PATH,
            Check::H2,
            "the timestamp was deleted without a policy change (only a policy change may withdraw it)",
        )),
        Some(None) => new_timestamp = Some(None),
        Some(Some(node)) => {
            let judged =
                parse_doc::<TimestampDoc>(TIMESTAMP_PATH, node, &policy.ledger, |t| &t.ledger).and_then(|doc| {
                    check_timestamp(policy, &doc).map_err(|e| doc_problem(TIMESTAMP_PATH, e))?;
                    // Same payload, other signatures: a re-signature (after a policy change), not a renewal.
                    if state.timestamp.as_ref().is_none_or(|t| t.hash() != doc.hash()) {
                        check_renewal(state.timestamp.as_ref(), &doc, step.commit.parent.as_deref())
                            .map_err(|e| doc_problem(TIMESTAMP_PATH, e))?;
                    }
                    Ok(doc)
                });
            match judged {
                Ok(doc) => new_timestamp = Some(Some(doc)),
                Err(p) => problems.push(p),
            }
        }
    }
    if new_timestamp.is_some() {
        events.push(Event::of_ledger(Action::Timestamp, policy_version));
    }

    // 2. Environment specs.
    for (env, (path, change)) in &spec_changes {
        let Some(after) = &change.after else {
            problems.push(problem(path, Check::H2, format!("the spec of {env} was deleted")));
            continue;
        };
        let result = parse_doc::<Environment>(path, after, &policy.ledger, |e| &e.ledger).and_then(|doc| {
            check_environment(policy, env, &doc).map_err(|e| doc_problem(path, e))?;
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
        match env_copy(state, &mut touched, env) {
            // Same payload, other signatures: a co-signature (or a re-signature after a policy change),
            // which needs no new version.
            Some(h) if doc.hash() == h.spec.hash() => h.spec = doc,
            Some(h) if version != h.spec.payload.version + 1 => problems.push(problem(
                path,
                Check::N5,
                format!("spec version {version} does not follow {} (versions go up by one)", h.spec.payload.version),
            )),
            Some(h) => {
                let weakened = crate::safety::weakenings(&h.spec.payload, &doc.payload);
                if !weakened.is_empty() {
                    if let Err(e) = doc.check_role_with(policy, &policy.root, ForeignSignatures::Skip, sigs) {
                        let e = e.caused(Check::N6);
                        problems.push(
                            problem(
                                path,
                                Check::N6,
                                format!(
                                    "the change weakens {} of {env}, so the root role must sign it too: {}",
                                    weakened.join(", "),
                                    e.reason
                                ),
                            )
                            .with_cause(e.cause),
                        );
                        continue;
                    }
                }
                h.spec = doc;
            }
            None => {
                touched.insert(
                    env.clone(),
                    EnvHistory { spec: doc, tip: None, target: None, generation: 0, reverted: Vec::new() },
                );
            }
        }
        let generation = touched.get(env).map_or(0, |h| h.generation);
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
        if !state.envs.contains_key(env) && !touched.contains_key(env) {
            problems.push(problem(
                &crate::tree::environment_path(env),
                Check::N2,
                format!("environment {env} is declared in {POLICY_PATH} but has no spec"),
            ));
        }
    }

    // 3. Chains. The revert rule is the one in force before the step (SPEC.md §8.4): a step cannot
    // relax it and use the relaxed rule at once.
    for (env, changes) in &entry_changes {
        let (Some(role), Some(before)) = (policy.env_role(env), state.envs.get(env)) else {
            for (path, _) in changes.added.values().chain(changes.modified.values()) {
                problems.push(problem(path, Check::E1, format!("environment {env} is not declared in {POLICY_PATH}")));
            }
            for path in changes.removed.values() {
                problems.push(problem(path, Check::E1, format!("environment {env} is not declared in {POLICY_PATH}")));
            }
            continue;
        };
        let revert_rule = before.spec.payload.revert;
        let Some(history) = env_copy(state, &mut touched, env) else { continue };
        match apply_entry_changes(env, history, changes, policy, role, revert_rule, step, sigs) {
            Ok(mut e) => {
                for ev in &mut e {
                    ev.policy_version = policy_version;
                }
                events.extend(e);
            }
            Err(mut p) => problems.append(&mut p),
        }
    }

    // 4. Revocation (SPEC.md §8.3.1): after a policy change every spec and tip must meet the new
    // policy in this same commit, so what only a removed key signed loses force at once.
    if new_policy.is_some() {
        if let (None, Some(t)) = (&timestamp_change, &state.timestamp) {
            if let Err(e) = check_timestamp(policy, t) {
                let reason = format!("{}; a policy change must carry the timestamp it affects, re-signed", e.reason);
                problems.push(problem(TIMESTAMP_PATH, e.check, reason).with_cause(e.cause));
            }
        }
        for (env, before) in &state.envs {
            let h = touched.get(env).unwrap_or(before);
            let Some(role) = policy.env_role(env) else { continue };
            if !spec_changes.contains_key(env) {
                let path = crate::tree::environment_path(env);
                if let Err(e) = check_environment(policy, env, &h.spec) {
                    let reason = format!(
                        "{}; a policy change must carry the specs it affects, re-signed, in the same commit",
                        e.reason
                    );
                    problems.push(problem(&path, e.check, reason).with_cause(e.cause));
                }
            }
            if entry_changes.contains_key(env) {
                continue;
            }
            if let Some(tip) = h.tip.as_ref().filter(|t| t.complete) {
                if let Err(p) = tip_meets(env, tip, policy, role) {
                    problems.push(p);
                }
            }
        }
    }

    if problems.is_empty() {
        Ok((new_policy, touched, new_timestamp, events))
    } else {
        problems.sort_by(|a, b| (a.path.as_str(), a.check).cmp(&(b.path.as_str(), b.check)));
        problems.dedup_by(|a, b| a.path == b.path && a.check == b.check);
        Err(problems)
    }
}

/// E5 for a tip that a policy change leaves in place: every key that signed it must still be in the
/// role (S2) and enough of them (S3). The tip's signatures all verified when it was added and key ids
/// bind public keys, so its signers are exactly the keys that counted then.
fn tip_meets(env: &EnvName, tip: &Link, policy: &Policy, role: &crate::types::Role) -> Result<(), Problem> {
    let path = policy.layout().entry_path(env, tip.seq);
    let listed = |k: &KeyId| role.keys.contains(k) && policy.keys.contains_key(k);
    if let Some(k) = tip.signed_by.iter().find(|k| !listed(k)) {
        return Err(problem(
            &path,
            Check::E5,
            format!(
                "the tip of {env} is signed by {}, whom the new policy removed from {env}; re-sign the tip without \
                 that signature in the same commit",
                display_key(policy, k)
            ),
        )
        .with_cause(Some(Check::S2)));
    }
    let count = tip.signed_by.len() as u64;
    if count < role.threshold {
        return Err(problem(
            &path,
            Check::E5,
            format!(
                "threshold not met: {count} of {} required signatures under the new policy; add co-signatures to \
                 the tip in the same commit",
                role.threshold
            ),
        )
        .with_cause(Some(Check::S3)));
    }
    Ok(())
}

/// The step's own copy of `env`'s history, made on first use.
fn env_copy<'t>(
    state: &LedgerState,
    touched: &'t mut BTreeMap<EnvName, EnvHistory>,
    env: &EnvName,
) -> Option<&'t mut EnvHistory> {
    if !touched.contains_key(env) {
        touched.insert(env.clone(), state.envs.get(env)?.clone());
    }
    touched.get_mut(env)
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
        let e = e.caused(Check::P6);
        problem(POLICY_PATH, Check::P6, format!("not signed by the previous root: {}", e.reason)).with_cause(e.cause)
    })?;
    Ok(doc)
}

/// Sorts a step's entry changes per environment into added, removed and rewritten, and judges where
/// they are (revision 5, SPEC.md §8.3): what the step writes must be in the layout of the policy after
/// it, and a step that changes the layout must move every entry of every environment, each removed from
/// its old path and added, byte for byte the same, at its new one. A move changes nothing else; an
/// entry moved and rewritten at once (a co-signature) counts as moved and is judged as a rewrite.
fn sort_entry_changes<'a>(
    state: &LedgerState,
    policy: &Policy,
    entry_paths: BTreeMap<(EnvName, u64), Vec<(&'a str, &'a PathChange)>>,
    problems: &mut Vec<Problem>,
) -> BTreeMap<EnvName, EnvChanges<'a>> {
    let layout = policy.layout();
    let mut entry_changes: BTreeMap<EnvName, EnvChanges> = BTreeMap::new();
    let mut moved: BTreeMap<EnvName, BTreeSet<u64>> = BTreeMap::new();
    for ((env, seq), mut paths) in entry_paths {
        let c = entry_changes.entry(env.clone()).or_default();
        let from = moved_from(&mut paths);
        if from.is_some() {
            moved.entry(env.clone()).or_default().insert(seq);
        }
        for (path, change) in paths {
            if change.after.is_some() && Layout::of_entry_path(path) != layout {
                problems.push(problem(path, Check::T2, wrong_layout(layout, &env, seq)));
                continue;
            }
            match (from, &change.before, &change.after) {
                // A move leaves nothing removed, and changes the entry only if its bytes changed too.
                (Some(_), Some(_), None) => {}
                (Some(old), None, Some(node)) => {
                    if old != node {
                        c.modified.insert(seq, (path.to_owned(), node));
                    }
                }
                (None, None, Some(node)) => {
                    c.added.insert(seq, (path.to_owned(), node));
                }
                (None, Some(_), None) => {
                    c.removed.insert(seq, path.to_owned());
                }
                (_, Some(_), Some(node)) => {
                    c.modified.insert(seq, (path.to_owned(), node));
                }
                (_, None, None) => {}
            }
        }
    }
    entry_changes.retain(|_, c| !(c.added.is_empty() && c.removed.is_empty() && c.modified.is_empty()));
    let before = state.policy.payload.layout();
    if before != layout {
        for (env, h) in &state.envs {
            let Some(tip) = &h.tip else { continue };
            // Named at the first entry left behind (its old path), with how many moved.
            let done = moved.get(env);
            let count = done.map_or(0, |m| m.range(1..=tip.seq).count() as u64);
            if let Some(left) = (1..=tip.seq).find(|seq| !done.is_some_and(|m| m.contains(seq))) {
                problems.push(problem(
                    &before.entry_path(env, left),
                    Check::T2,
                    format!(
                        "the policy changes ledger_layout from {} to {}, which moves every entry in the same commit: \
                         this one was not moved to {} ({count} of the {} entries of {env} moved)",
                        before.name(),
                        layout.name(),
                        layout.entry_path(env, left),
                        tip.seq
                    ),
                ));
            }
        }
    }
    entry_changes
}

/// Whether the two paths of one entry in `paths` are a move (its file gone from one path and the
/// same seq new at another, as a layout change makes): if so, what the old path held. Two paths of
/// which one is gone are put in that order (gone first) whether or not they are a move.
fn moved_from<'a>(paths: &mut [(&str, &'a PathChange)]) -> Option<&'a Node> {
    let [(_, a), (_, b)] = paths else { return None };
    if a.after.is_none() == b.after.is_none() {
        return None;
    }
    paths.sort_by_key(|(_, change)| change.after.is_some());
    let [(_, gone), (_, new)] = paths else { unreachable!("two paths") };
    match (&gone.before, &gone.after, &new.before, &new.after) {
        (Some(old), None, None, Some(_)) => Some(old),
        _ => None,
    }
}

/// The entry transitions of one environment (SPEC.md §8.3.3): append, co-sign, revert of the tip,
/// and re-adding what a revert removed. Anything else is refused.
#[allow(clippy::too_many_arguments)]
fn apply_entry_changes(
    env: &EnvName,
    history: &mut EnvHistory,
    changes: &EnvChanges,
    policy: &Policy,
    role: &crate::types::Role,
    revert_rule: RevertPolicy,
    step: &Step,
    sigs: &impl SignatureCheck,
) -> Result<Vec<Event>, Vec<Problem>> {
    let tip_seq = history.tip.as_ref().map_or(0, |t| t.seq);
    let target_before = history.target.as_ref().map(|t| t.hash);
    let kinds = [!changes.added.is_empty(), !changes.removed.is_empty(), !changes.modified.is_empty()];
    if kinds.iter().filter(|k| **k).count() > 1 {
        // Reported at the lowest changed path of the environment (SPEC.md §8.3.3).
        let first = [changes.added.keys().next(), changes.removed.keys().next(), changes.modified.keys().next()]
            .into_iter()
            .flatten()
            .min()
            .copied()
            .unwrap_or(tip_seq.max(1));
        return Err(vec![problem(
            &policy.layout().entry_path(env, first),
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

    // Co-signature: the tip's file changes, its payload does not, and no signature by a key still in
    // the role is dropped (a policy change may require dropping the others).
    if let Some((seq, (path, node))) = changes.modified.iter().next() {
        let Some(tip) = history.tip.clone().filter(|t| t.seq == *seq && changes.modified.len() == 1) else {
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
        let signed_by = require_complete(path, &doc, policy, role, sigs, "the tip must stay complete")?;
        if let Some(k) = tip.signed_by.iter().find(|k| role.keys.contains(k) && !signed_by.contains(k)) {
            return Err(vec![problem(
                path,
                Check::H2,
                format!("the co-signature of {} was removed from entry {seq} of {env}", display_key(policy, k)),
            )]);
        }
        let new_link = link(&doc, file_digest(node), true, signed_by);
        let became_target = !tip.complete;
        history.tip = Some(new_link.clone());
        if became_target {
            // Only a tip left pending by a revision-2 verifier's state can be completed here.
            history.target = Some(new_link.clone());
            history.generation += 1;
            event(Action::Promote, history, Some(new_link), None);
        } else {
            event(Action::CoSign, history, Some(new_link), None);
        }
    }

    // Revert: exactly the tip is removed.
    if let Some((seq, path)) = changes.removed.iter().next_back() {
        if changes.removed.len() > 1 || *seq != tip_seq {
            let which = changes.removed.keys().map(|s| s.to_string()).collect::<Vec<_>>().join(", ");
            let path = changes.removed.values().next().unwrap_or(path);
            return Err(vec![problem(
                path,
                Check::H2,
                format!("entries {which} of {env} were removed; only the tip ({tip_seq}) can be reverted"),
            )]);
        }
        let Some(tip) = history.tip.clone() else {
            return Err(vec![problem(path, Check::H2, format!("{env} has no tip to revert"))]);
        };
        if tip.complete && *seq == 1 {
            return Err(vec![problem(
                path,
                Check::H2,
                format!(
                    "removing entry 1 would leave {env} with no target; an environment that had a target keeps one \
                     (release an entry that re-targets an earlier image instead)"
                ),
            )]);
        }
        let mut revert_signed_by = None;
        if tip.complete {
            revert_signed_by = check_revert(env, path, revert_rule, policy, role, &step.commit)?;
        }
        let below = if *seq > 1 {
            let below_path = policy.layout().entry_path(env, seq - 1);
            let node = step.context.get(below_path.as_bytes()).ok_or_else(|| {
                vec![problem(&below_path, Check::H2, "the entry below a reverted tip is missing from the commit")]
            })?;
            let doc = parse_doc::<Entry>(&below_path, node, &policy.ledger, |e| &e.ledger).map_err(|p| vec![p])?;
            // It becomes the target again, so it must satisfy today's policy: a key revoked since it
            // signed must not come back into force through a revert.
            let signed_by =
                require_complete(&below_path, &doc, policy, role, sigs, "a revert would make it the target again")?;
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

    // Append (or restore), in seq order, each complete: what is short of signatures is a proposal and
    // lives on a proposal branch until it is complete (SPEC.md §8.3.3).
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
        let why = match restored {
            Some(_) => "a revert of its revert would make it the target again",
            None => "entries short of signatures are proposals: collect them on a proposal branch, then land it",
        };
        let signed_by = require_complete(path, &doc, policy, role, sigs, why)?;
        let (new_link, action) = match restored {
            Some(i) => (history.reverted.remove(i), Action::Restore),
            None => {
                history.reverted.retain(|r| r.seq < *seq);
                (link(&doc, digest, true, signed_by), Action::Promote)
            }
        };
        history.tip = Some(new_link.clone());
        history.target = Some(new_link.clone());
        event(action, history, Some(new_link), None);
    }
    // Several entries appended in one step (a merge, a push of several commits squashed) change the
    // target once: one generation per step (SPEC.md §8.5).
    if !changes.added.is_empty() && history.target.as_ref().map(|t| t.hash) != target_before {
        history.generation += 1;
        for e in &mut events {
            e.generation = history.generation;
            e.target = history.target.clone();
        }
    }
    Ok(events)
}

/// The signers of `doc` if it meets its threshold under today's policy; E5 otherwise.
fn require_complete(
    path: &str,
    doc: &Document<Entry>,
    policy: &Policy,
    role: &crate::types::Role,
    sigs: &impl SignatureCheck,
    why: &str,
) -> Result<Vec<KeyId>, Vec<Problem>> {
    doc.check_role_with(policy, role, ForeignSignatures::Refuse, sigs).map(|s| s.0).map_err(|e| {
        let e = e.caused(Check::E5);
        let reason = format!("{}; {why}, so it must satisfy the current policy", e.reason);
        vec![problem(path, Check::E5, reason).with_cause(e.cause)]
    })
}

fn file_digest(node: &Node) -> Blake3Digest {
    match node {
        Node::File(bytes) => Blake3Digest(*blake3::hash(bytes).as_bytes()),
        _ => Blake3Digest::ZERO,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;
    use crate::document::Direct;
    use crate::tree::environment_path;
    use crate::types::*;

    fn alice() -> SecretKey {
        SecretKey::from_seed(&[1; 32])
    }
    fn bob() -> SecretKey {
        SecretKey::from_seed(&[2; 32])
    }

    fn policy(version: u64, prod_threshold: u64) -> Policy {
        let (a, b) = (alice().public_key(), bob().public_key());
        Policy {
            payload_type: PolicyType,
            ledger: "hist".parse().unwrap(),
            version,
            expires_at: None,
            keys: BTreeMap::from([
                (a.key_id(), KeyInfo { name: "alice".parse().unwrap(), public_key: a }),
                (b.key_id(), KeyInfo { name: "bob".parse().unwrap(), public_key: b }),
            ]),
            root: Role { keys: vec![a.key_id()], threshold: 1 },
            environments: BTreeMap::from([(
                "prod".parse().unwrap(),
                Role {
                    keys: {
                        let mut k = vec![a.key_id(), b.key_id()];
                        k.sort();
                        k
                    },
                    threshold: prod_threshold,
                },
            )]),
            agents: BTreeMap::new(),
            timestamp: None,
            ledger_layout: None,
        }
    }

    fn spec(revert: RevertPolicy, version: u64) -> Vec<u8> {
        spec_signed(revert, version, &[alice(), bob()])
    }

    fn spec_signed(revert: RevertPolicy, version: u64, signers: &[SecretKey]) -> Vec<u8> {
        let mut doc = Document::new(Environment {
            payload_type: EnvironmentType,
            ledger: "hist".parse().unwrap(),
            name: "prod".parse().unwrap(),
            version,
            provider: Provider::Local {},
            groups: vec![Group { name: "web".parse().unwrap(), capacity: 1 }],
            strategy: Strategy::BlueGreen { grace_seconds: 0 },
            health: HealthCheck::Tcp { interval_ms: 100, timeout_ms: 100, healthy_threshold: 1, deadline_seconds: 1 },
            drift: DriftMode::Correct,
            revert,
            max_instance_age_seconds: None,
        });
        for k in signers {
            doc.sign(k);
        }
        doc.to_file_bytes()
    }

    fn signed_policy(p: Policy, keys: &[SecretKey]) -> Vec<u8> {
        let mut doc = Document::new(p);
        for k in keys {
            doc.sign(k);
        }
        doc.to_file_bytes()
    }

    fn entry(seq: u64, prev: Blake3Digest, signers: &[SecretKey]) -> Document<Entry> {
        let mut doc = Document::new(Entry {
            payload_type: EntryType,
            ledger: "hist".parse().unwrap(),
            env: "prod".parse().unwrap(),
            seq,
            prev,
            version: format!("1.{seq}").parse().unwrap(),
            image: Image::Artifact {
                uri: "file:///i.tar".parse().unwrap(),
                blake3: Blake3Digest([seq as u8; 32]),
                size: 1,
            },
            created_at: "2026-01-01T00:00:00Z".parse().unwrap(),
            expires_at: None,
        });
        for k in signers {
            doc.sign(k);
        }
        doc
    }

    fn start(prod_threshold: u64, revert: RevertPolicy) -> LedgerState {
        let mut snapshot = Snapshot::default();
        snapshot.insert_file(POLICY_PATH, signed_policy(policy(1, prod_threshold), &[alice()]));
        snapshot.insert_file(&environment_path(&"prod".parse().unwrap()), spec(revert, 1));
        let anchor = TrustAnchor::RootKeys { keys: vec![alice().public_key().key_id()], threshold: 1 };
        genesis(&snapshot, &anchor, &CommitInfo::default()).unwrap().0
    }

    fn change(path: &str, before: Option<Vec<u8>>, after: Option<Vec<u8>>) -> PathChange {
        PathChange { path: path.as_bytes().to_vec(), before: before.map(Node::File), after: after.map(Node::File) }
    }

    fn step(changes: Vec<PathChange>) -> Step {
        Step { commit: CommitInfo { id: "c".into(), ..CommitInfo::default() }, changes, context: BTreeMap::new() }
    }

    fn apply(state: &LedgerState, s: &Step) -> Result<(LedgerState, Vec<Event>), Vec<Problem>> {
        let mut next = state.clone();
        let events = apply_step(&mut next, s, &Direct)?;
        Ok((next, events))
    }

    fn checks(r: Result<(LedgerState, Vec<Event>), Vec<Problem>>) -> Vec<Check> {
        r.expect_err("the step is refused").into_iter().map(|p| p.check).collect()
    }

    fn prod(s: &LedgerState) -> &EnvHistory {
        &s.envs[&"prod".parse::<EnvName>().unwrap()]
    }

    #[test]
    fn promote_rollback_restore_and_promote_again_count_generations() {
        let s0 = start(1, RevertPolicy::Allow);
        let e1 = entry(1, Blake3Digest::ZERO, &[alice()]);
        let e2 = entry(2, e1.hash(), &[alice()]);
        let (s1, _) = apply(&s0, &step(vec![change("ledger/prod/1.json", None, Some(e1.to_file_bytes()))])).unwrap();
        let (s2, _) = apply(&s1, &step(vec![change("ledger/prod/2.json", None, Some(e2.to_file_bytes()))])).unwrap();
        let mut revert = step(vec![change("ledger/prod/2.json", Some(e2.to_file_bytes()), None)]);
        revert.context.insert(b"ledger/prod/1.json".to_vec(), Node::File(e1.to_file_bytes()));
        let (s3, ev3) = apply(&s2, &revert).unwrap();
        let (s4, ev4) = apply(&s3, &step(vec![change("ledger/prod/2.json", None, Some(e2.to_file_bytes()))])).unwrap();
        let e3 = entry(3, e2.hash(), &[bob()]);
        let (s5, _) = apply(&s4, &step(vec![change("ledger/prod/3.json", None, Some(e3.to_file_bytes()))])).unwrap();
        let gens: Vec<u64> = [&s1, &s2, &s3, &s4, &s5].iter().map(|s| prod(s).generation).collect();
        assert_eq!(gens, [1, 2, 3, 4, 5]);
        assert_eq!(ev3[0].action, Action::Rollback);
        assert_eq!(prod(&s3).target.as_ref().map(|t| t.seq), Some(1));
        assert_eq!(ev4[0].action, Action::Restore);
        assert_eq!(prod(&s5).target.as_ref().map(|t| t.seq), Some(3));
    }

    #[test]
    fn an_entry_short_of_signatures_is_refused_on_the_branch_and_co_signatures_stay() {
        let s0 = start(2, RevertPolicy::Allow);
        let e1 = entry(1, Blake3Digest::ZERO, &[alice()]);
        let short = apply(&s0, &step(vec![change("ledger/prod/1.json", None, Some(e1.to_file_bytes()))]));
        let refused = short.map(|_| ()).unwrap_err();
        assert_eq!((refused[0].check, refused[0].cause), (Check::E5, Some(Check::S3)));
        let full = entry(1, Blake3Digest::ZERO, &[alice(), bob()]);
        let (s1, ev) = apply(&s0, &step(vec![change("ledger/prod/1.json", None, Some(full.to_file_bytes()))])).unwrap();
        assert_eq!((ev[0].action.clone(), prod(&s1).generation), (Action::Promote, 1));
        // Dropping bob's signature from the complete tip is refused; so is dropping it to one.
        let mut alone = full.clone();
        alone.signatures.truncate(1);
        let drop = step(vec![change("ledger/prod/1.json", Some(full.to_file_bytes()), Some(alone.to_file_bytes()))]);
        assert_eq!(checks(apply(&s1, &drop)), [Check::E5]);
    }

    #[test]
    fn the_last_entry_cannot_be_reverted() {
        let s0 = start(1, RevertPolicy::Allow);
        let e1 = entry(1, Blake3Digest::ZERO, &[alice()]);
        let (s1, _) = apply(&s0, &step(vec![change("ledger/prod/1.json", None, Some(e1.to_file_bytes()))])).unwrap();
        assert_eq!(
            checks(apply(&s1, &step(vec![change("ledger/prod/1.json", Some(e1.to_file_bytes()), None)]))),
            [Check::H2]
        );
    }

    #[test]
    fn weakening_a_safety_setting_needs_the_root() {
        let mut s0 = start(1, RevertPolicy::Signed);
        // Root is alice only; make bob the only signer of prod so root is not in the role.
        let mut p = policy(2, 1);
        p.environments.values_mut().for_each(|r| r.keys = vec![bob().public_key().key_id()]);
        let spec_v1 = |signers: &[SecretKey]| spec_signed(RevertPolicy::Signed, 1, signers);
        let (s1, _) = apply(
            &s0,
            &step(vec![
                change(POLICY_PATH, None, Some(signed_policy(p, &[alice()]))),
                change("environments/prod.json", None, Some(spec_v1(&[bob()]))),
            ]),
        )
        .unwrap();
        s0 = s1;
        let weaker =
            step(vec![change("environments/prod.json", None, Some(spec_signed(RevertPolicy::Allow, 2, &[bob()])))]);
        let refused = apply(&s0, &weaker).map(|_| ()).unwrap_err();
        assert_eq!((refused[0].check, refused[0].cause), (Check::N6, Some(Check::S3)));
        let approved = step(vec![change(
            "environments/prod.json",
            None,
            Some(spec_signed(RevertPolicy::Allow, 2, &[alice(), bob()])),
        )]);
        let (s2, _) = apply(&s0, &approved).unwrap();
        assert_eq!(prod(&s2).spec.payload.revert, RevertPolicy::Allow);
        // Strengthening needs only the environment's role.
        let stronger =
            step(vec![change("environments/prod.json", None, Some(spec_signed(RevertPolicy::Deny, 3, &[bob()])))]);
        assert!(apply(&s2, &stronger).is_ok());
        // A key outside both roles is still refused on a spec.
        let foreign = step(vec![change(
            "environments/prod.json",
            None,
            Some(spec_signed(RevertPolicy::Deny, 3, &[bob(), SecretKey::from_seed(&[9; 32])])),
        )]);
        assert_eq!(checks(apply(&s2, &foreign)), [Check::N4]);
    }

    #[test]
    fn a_policy_that_drops_an_environment_and_deletes_its_entry_is_refused_without_panic() {
        let s0 = start(1, RevertPolicy::Allow);
        let e1 = entry(1, Blake3Digest::ZERO, &[alice()]);
        let e2 = entry(2, e1.hash(), &[alice()]);
        let (s1, _) = apply(&s0, &step(vec![change("ledger/prod/1.json", None, Some(e1.to_file_bytes()))])).unwrap();
        let (s2, _) = apply(&s1, &step(vec![change("ledger/prod/2.json", None, Some(e2.to_file_bytes()))])).unwrap();
        let mut p = policy(2, 1);
        p.environments.clear();
        let mut s = step(vec![
            change(POLICY_PATH, None, Some(signed_policy(p, &[alice()]))),
            change("ledger/prod/2.json", Some(e2.to_file_bytes()), None),
        ]);
        s.context.insert(b"ledger/prod/1.json".to_vec(), Node::File(e1.to_file_bytes()));
        let refused = apply(&s2, &s).map(|_| ()).unwrap_err();
        assert_eq!((refused[0].path.as_str(), refused[0].check), (POLICY_PATH, Check::H2));
    }

    #[test]
    fn a_policy_change_must_carry_re_signed_specs_and_tips() {
        let s0 = start(1, RevertPolicy::Allow);
        let e1 = entry(1, Blake3Digest::ZERO, &[bob()]);
        let (s1, _) = apply(&s0, &step(vec![change("ledger/prod/1.json", None, Some(e1.to_file_bytes()))])).unwrap();
        let mut v2 = policy(2, 1);
        v2.environments.values_mut().for_each(|r| r.keys = vec![alice().public_key().key_id()]);
        let v2 = signed_policy(v2, &[alice()]);
        // Alone, the new policy leaves bob's signatures on the spec (N4/S2) and the tip (E5/S2).
        let alone = apply(&s1, &step(vec![change(POLICY_PATH, None, Some(v2.clone()))])).map(|_| ()).unwrap_err();
        let found: Vec<(&str, Check, Option<Check>)> =
            alone.iter().map(|p| (p.path.as_str(), p.check, p.cause)).collect();
        assert_eq!(
            found,
            [
                ("environments/prod.json", Check::N4, Some(Check::S2)),
                ("ledger/prod/1.json", Check::E5, Some(Check::S2))
            ]
        );
        // With the spec and the tip re-signed by alice alone in the same commit, it verifies.
        let mut tip = e1.clone();
        tip.signatures.clear();
        tip.sign(&alice());
        let (s2, _) = apply(
            &s1,
            &step(vec![
                change(POLICY_PATH, None, Some(v2)),
                change("environments/prod.json", None, Some(spec_signed(RevertPolicy::Allow, 1, &[alice()]))),
                change("ledger/prod/1.json", Some(e1.to_file_bytes()), Some(tip.to_file_bytes())),
            ]),
        )
        .unwrap();
        assert_eq!(prod(&s2).tip.as_ref().map(|t| t.signed_by.clone()), Some(vec![alice().public_key().key_id()]));
    }

    #[test]
    fn edits_non_tip_reverts_and_older_policies_are_refused() {
        let s0 = start(1, RevertPolicy::Allow);
        let e1 = entry(1, Blake3Digest::ZERO, &[alice()]);
        let e2 = entry(2, e1.hash(), &[alice()]);
        let (s1, _) = apply(&s0, &step(vec![change("ledger/prod/1.json", None, Some(e1.to_file_bytes()))])).unwrap();
        let (s2, _) = apply(&s1, &step(vec![change("ledger/prod/2.json", None, Some(e2.to_file_bytes()))])).unwrap();
        // Revert of a non-tip entry.
        assert_eq!(
            checks(apply(&s2, &step(vec![change("ledger/prod/1.json", Some(e1.to_file_bytes()), None)]))),
            [Check::H2]
        );
        // A signed entry rewritten in place.
        let other = entry(2, e1.hash(), &[bob()]);
        let mut forged = other.clone();
        forged.payload.version = "9.9".parse().unwrap();
        let rewrite = step(vec![change(
            "ledger/prod/2.json",
            Some(e2.to_file_bytes()),
            Some(Document::new(forged.payload).to_file_bytes()),
        )]);
        assert_eq!(checks(apply(&s2, &rewrite)), [Check::H2]);
        // A signature by a key outside the role, appended.
        let outsider = entry(3, e2.hash(), &[SecretKey::from_seed(&[9; 32])]);
        assert_eq!(
            checks(apply(&s2, &step(vec![change("ledger/prod/3.json", None, Some(outsider.to_file_bytes()))]))),
            [Check::E5]
        );
        // Policy v2, then v1 again: a policy rollback.
        let v1 = signed_policy(policy(1, 1), &[alice()]);
        let v2 = signed_policy(policy(2, 1), &[alice()]);
        let (s3, _) = apply(&s2, &step(vec![change(POLICY_PATH, Some(v1.clone()), Some(v2.clone()))])).unwrap();
        assert_eq!(checks(apply(&s3, &step(vec![change(POLICY_PATH, Some(v2), Some(v1))]))), [Check::P5]);
        // v3 signed only by a new root that the old root never endorsed.
        let mut v3 = policy(3, 1);
        v3.root = Role { keys: vec![bob().public_key().key_id()], threshold: 1 };
        let v3 = signed_policy(v3, &[bob()]);
        assert_eq!(checks(apply(&s3, &step(vec![change(POLICY_PATH, None, Some(v3))]))), [Check::P6]);
    }

    #[test]
    fn a_revert_cannot_bring_back_an_entry_whose_signer_was_revoked() {
        let s0 = start(1, RevertPolicy::Allow);
        let e1 = entry(1, Blake3Digest::ZERO, &[bob()]);
        let e2 = entry(2, e1.hash(), &[alice()]);
        let (s1, _) = apply(&s0, &step(vec![change("ledger/prod/1.json", None, Some(e1.to_file_bytes()))])).unwrap();
        let (s2, _) = apply(&s1, &step(vec![change("ledger/prod/2.json", None, Some(e2.to_file_bytes()))])).unwrap();
        let mut v2 = policy(2, 1);
        v2.environments.values_mut().for_each(|r| r.keys.retain(|k| *k != bob().public_key().key_id()));
        let v2 = signed_policy(v2, &[alice()]);
        let respec = spec_signed(RevertPolicy::Allow, 1, &[alice()]);
        let (s3, _) = apply(
            &s2,
            &step(vec![change(POLICY_PATH, None, Some(v2)), change("environments/prod.json", None, Some(respec))]),
        )
        .unwrap();
        let mut revert = step(vec![change("ledger/prod/2.json", Some(e2.to_file_bytes()), None)]);
        revert.context.insert(b"ledger/prod/1.json".to_vec(), Node::File(e1.to_file_bytes()));
        assert_eq!(checks(apply(&s3, &revert)), [Check::E5]);
    }

    /// Signs `payload` the way `git commit -S` with `gpg.format=ssh` does.
    fn ssh_sign(key: &SecretKey, payload: &[u8]) -> Vec<u8> {
        use ssh_key::private::{Ed25519Keypair, KeypairData};
        let private =
            ssh_key::PrivateKey::new(KeypairData::Ed25519(Ed25519Keypair::from_seed(&key.seed())), "").unwrap();
        let sig = private.sign("git", ssh_key::HashAlg::Sha512, payload).unwrap();
        sig.to_pem(ssh_key::LineEnding::LF).unwrap().into_bytes()
    }

    #[test]
    fn revert_policy_allow_signed_and_deny() {
        for rule in [RevertPolicy::Allow, RevertPolicy::Signed, RevertPolicy::Deny] {
            let s0 = start(1, rule);
            let e1 = entry(1, Blake3Digest::ZERO, &[alice()]);
            let e2 = entry(2, e1.hash(), &[alice()]);
            let (s1, _) =
                apply(&s0, &step(vec![change("ledger/prod/1.json", None, Some(e1.to_file_bytes()))])).unwrap();
            let (s1, _) =
                apply(&s1, &step(vec![change("ledger/prod/2.json", None, Some(e2.to_file_bytes()))])).unwrap();
            let revert = |signer: Option<&SecretKey>| {
                let mut s = step(vec![change("ledger/prod/2.json", Some(e2.to_file_bytes()), None)]);
                s.context.insert(b"ledger/prod/1.json".to_vec(), Node::File(e1.to_file_bytes()));
                let payload = b"tree 0000\nauthor x\n\nRevert".to_vec();
                s.commit.ssh_signature =
                    signer.map(|k| SshSigned { armored: ssh_sign(k, &payload), signed_payload: payload.clone() });
                apply(&s1, &s)
            };
            let outsider = SecretKey::from_seed(&[9; 32]);
            match rule {
                RevertPolicy::Allow => {
                    let (s2, ev) = revert(None).unwrap();
                    assert_eq!(
                        (prod(&s2).generation, prod(&s2).target.as_ref().map(|t| t.seq), ev[0].action.clone()),
                        (3, Some(1), Action::Rollback)
                    );
                }
                RevertPolicy::Signed => {
                    assert_eq!(checks(revert(None)), [Check::H3]);
                    assert_eq!(checks(revert(Some(&outsider))), [Check::H3]);
                    let (_, ev) = revert(Some(&bob())).unwrap();
                    assert_eq!(ev[0].revert_signed_by, Some(bob().public_key().key_id()));
                }
                RevertPolicy::Deny => assert_eq!(checks(revert(Some(&alice()))), [Check::H3]),
            }
        }
    }

    #[test]
    fn genesis_must_match_the_pinned_root() {
        let mut snapshot = Snapshot::default();
        snapshot.insert_file(POLICY_PATH, signed_policy(policy(1, 1), &[alice()]));
        snapshot.insert_file(&environment_path(&"prod".parse().unwrap()), spec(RevertPolicy::Allow, 1));
        let wrong = TrustAnchor::RootKeys { keys: vec![bob().public_key().key_id()], threshold: 1 };
        let refused = genesis(&snapshot, &wrong, &CommitInfo::default()).map(|_| ()).unwrap_err();
        assert_eq!(refused[0].check, Check::P7);
        let by_hash = TrustAnchor::PolicyHash(Blake3Digest([0; 32]));
        assert_eq!(genesis(&snapshot, &by_hash, &CommitInfo::default()).map(|_| ()).unwrap_err()[0].check, Check::P7);
    }
}
