//! The Stele ledger format history vectors (SPEC.md §8): short first-parent histories, each step with
//! the verdict a history verifier must reach, written to `test-vectors/history/` so that another
//! implementation can check its transitions from the files alone.
//!
//! Owns: the history vector file format, the history cases (verdicts stated by hand, from the rules of
//! SPEC revision 3, never recorded from the implementation), and the driver that replays a vector
//! through `ledger_format::history` (genesis, then `apply_step` per commit, with SPEC.md §8.6 recovery
//! after a refused step). Must not read the clock or use randomness: the files are reproducible.
//!
//! A child module of `vectors.rs` (it reuses its keys, payload builders and file nodes); the cases
//! themselves are in `history_cases.rs`.

use super::{base64_decode, base64_encode, path_bytes, ExpectedProblem, FileNode};
use ledger_format::document::Direct;
use ledger_format::history::{apply_step, genesis, CommitInfo, PathChange, SshSigned, Step, TrustAnchor};
use ledger_format::tree::{classify, Layout, LayoutPath, Node, Problem, Snapshot};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

// ---------------------------------------------------------------------------------------------------
// The file format (documented in the generated test-vectors/history/README.md).

/// One history vector: a trust anchor, the genesis tree, and the commits after it in first-parent order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryVector {
    pub description: String,
    pub anchor: Anchor,
    /// The genesis commit's tree (every node under the owned directories), as in the tree vectors.
    /// It verifies (SPEC.md §7.2, expiry not judged) and matches the anchor.
    pub genesis: BTreeMap<String, FileNode>,
    pub steps: Vec<HistoryStep>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Anchor {
    RootKeys(RootKeysAnchor),
    PolicyHash(PolicyHashAnchor),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootKeysAnchor {
    /// Key ids (hex) of which `threshold` must have signed the genesis policy.
    pub root_keys: Vec<String>,
    pub threshold: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyHashAnchor {
    /// The genesis policy's document hash (hex).
    pub policy_hash: String,
}

/// One commit: what it changes relative to the previous COMMIT's tree, and its verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryStep {
    pub commit: CommitVector,
    /// Paths written by the commit (added or replaced), with their new nodes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, FileNode>,
    /// Paths the commit removes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delete: Vec<String>,
    pub expected: StepVerdict,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitVector {
    /// A label standing for the commit id (only reasons quote it).
    pub id: String,
    /// The id of the commit's first parent, as the commit records it: what a timestamp the commit
    /// writes must name (F2, SPEC.md §8.9). Given only where a case needs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_signature: Option<SshSignatureVector>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshSignatureVector {
    /// The armored `SSHSIG` of the commit's `gpgsig` header.
    pub armored: String,
    /// Standard base64 of the bytes it signs (the commit object without its `gpgsig` header).
    pub signed_payload: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepVerdict {
    pub accepted: bool,
    /// For an accepted step: what it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<ExpectedEvent>>,
    /// For a refused step: every problem, as in the tree vectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problems: Option<Vec<ExpectedProblem>>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedEvent {
    /// `policy_change`, `spec_change`, `promote`, `co_sign`, `rollback` or `restore`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// Entry events only: the environment's target generation after the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// Entry events only: the seq of the environment's target after the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_seq: Option<u64>,
    /// Rollbacks only: the key id whose valid SSH signature the commit carries, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert_signed_by: Option<String>,
}

/// Events that concern an entry and carry a generation and target.
const ENTRY_ACTIONS: [&str; 6] = ["promote", "co_sign", "rollback", "restore", "propose", "withdraw"];

// ---------------------------------------------------------------------------------------------------
// The driver: replays a vector through the implementation.

pub fn node_of(bytes: Vec<u8>) -> FileNode {
    match String::from_utf8(bytes) {
        Ok(text) => FileNode::Text(text),
        Err(e) => FileNode::Base64(base64_encode(e.as_bytes())),
    }
}

fn to_node(key: &str, file: &FileNode) -> Result<Node, String> {
    Ok(match file {
        FileNode::Text(text) => Node::File(text.as_bytes().to_vec()),
        FileNode::Base64(b64) => Node::File(base64_decode(b64).ok_or_else(|| format!("{key}: invalid base64"))?),
        FileNode::Symlink(_) => Node::Symlink,
        FileNode::Repeat { byte, count } => Node::File(vec![*byte; *count]),
        FileNode::Other(what) => Node::Other(what.clone()),
    })
}

pub fn snapshot_of(files: &BTreeMap<String, FileNode>) -> Result<Snapshot, String> {
    let mut snapshot = Snapshot::default();
    for (key, file) in files {
        snapshot.nodes.insert(path_bytes(key)?, to_node(key, file)?);
    }
    Ok(snapshot)
}

/// Every path whose node differs between `before` and `after`.
pub fn diff(before: &Snapshot, after: &Snapshot) -> Vec<PathChange> {
    let paths: std::collections::BTreeSet<&Vec<u8>> = before.nodes.keys().chain(after.nodes.keys()).collect();
    paths
        .into_iter()
        .filter_map(|path| {
            let (b, a) = (before.nodes.get(path), after.nodes.get(path));
            (b != a).then(|| PathChange { path: path.clone(), before: b.cloned(), after: a.cloned() })
        })
        .collect()
}

/// The entries just below every entry `changes` removes, read from `after` (the commit's tree).
pub fn context(changes: &[PathChange], after: &Snapshot) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    for change in changes.iter().filter(|c| c.after.is_none()) {
        let Ok(path) = std::str::from_utf8(&change.path) else { continue };
        if let Some(LayoutPath::Entry(env, seq)) = classify(path) {
            if seq > 1 {
                // Whichever layout the commit's tree uses (revision 5).
                for layout in [Layout::Flat, Layout::Buckets] {
                    let below = layout.entry_path(&env, seq - 1).into_bytes();
                    if let Some(node) = after.nodes.get(&below) {
                        out.insert(below, node.clone());
                    }
                }
            }
        }
    }
    out
}

fn commit_info(c: &CommitVector) -> Result<CommitInfo, String> {
    let ssh_signature = match &c.ssh_signature {
        None => None,
        Some(s) => Some(SshSigned {
            armored: s.armored.as_bytes().to_vec(),
            signed_payload: base64_decode(&s.signed_payload)
                .ok_or_else(|| format!("commit {}: signed_payload is not valid base64", c.id))?,
        }),
    };
    Ok(CommitInfo {
        id: c.id.clone(),
        parent: c.parent.clone(),
        summary: c.id.clone(),
        ssh_signature,
        ..CommitInfo::default()
    })
}

/// An implementation's event reduced to what a vector states.
fn observed_event(event: &impl Serialize) -> ExpectedEvent {
    let v = serde_json::to_value(event).expect("events serialize");
    let action = v["action"].as_str().unwrap_or_default().to_owned();
    let is_entry = ENTRY_ACTIONS.contains(&action.as_str());
    ExpectedEvent {
        env: v["env"].as_str().map(str::to_owned),
        generation: if is_entry { v["generation"].as_u64() } else { None },
        target_seq: if is_entry { v["target"]["seq"].as_u64() } else { None },
        revert_signed_by: if action == "rollback" { v["revert_signed_by"].as_str().map(str::to_owned) } else { None },
        action,
    }
}

fn observed_problem(p: &Problem) -> ExpectedProblem {
    ExpectedProblem { path: p.path.clone(), check: p.check.id().to_owned(), cause: p.cause.map(|c| c.id().to_owned()) }
}

fn show_problems(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("\n    {p}")).collect()
}

fn sorted<T: Ord + Clone>(items: &[T]) -> Vec<T> {
    let mut out = items.to_vec();
    out.sort();
    out
}

fn problem_key(p: &ExpectedProblem) -> (String, String, Option<String>) {
    (p.path.clone(), p.check.clone(), p.cause.clone())
}

/// Replays `vector`: genesis, then each commit judged from the last verified tree (SPEC.md §8.6), and
/// compares every verdict with the expected one. The first disagreement is the error.
pub fn check(vector: &HistoryVector) -> Result<(), String> {
    let anchor = match &vector.anchor {
        Anchor::PolicyHash(a) => TrustAnchor::PolicyHash(a.policy_hash.parse().map_err(|e| format!("anchor: {e}"))?),
        Anchor::RootKeys(a) => TrustAnchor::RootKeys {
            keys: a
                .root_keys
                .iter()
                .map(|k| k.parse())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("anchor: {e}"))?,
            threshold: a.threshold,
        },
    };
    let mut commit_tree = snapshot_of(&vector.genesis)?;
    let first = CommitInfo { id: "genesis".into(), ..CommitInfo::default() };
    let (mut state, _) =
        genesis(&commit_tree, &anchor, &first).map_err(|p| format!("genesis is refused:{}", show_problems(&p)))?;
    let mut verified = commit_tree.clone();
    for (index, step) in vector.steps.iter().enumerate() {
        let at = format!("step {} ({})", index + 1, step.commit.id);
        for path in &step.delete {
            if commit_tree.nodes.remove(&path_bytes(path)?).is_none() {
                return Err(format!("{at}: deletes {path}, which the previous commit does not hold"));
            }
        }
        for (path, file) in &step.set {
            commit_tree.nodes.insert(path_bytes(path)?, to_node(path, file)?);
        }
        let changes = diff(&verified, &commit_tree);
        let judged = Step { commit: commit_info(&step.commit)?, context: context(&changes, &commit_tree), changes };
        let before = serde_json::to_string(&state).expect("the state serializes");
        let result = apply_step(&mut state, &judged, &Direct);
        let want = &step.expected;
        match result {
            Ok(events) => {
                let got: Vec<ExpectedEvent> = events.iter().map(observed_event).collect();
                if !want.accepted {
                    return Err(format!("{at}: accepted with events {got:?}, expected problems {:?}", want.problems));
                }
                let expected = want.events.clone().ok_or_else(|| format!("{at}: an accepted step lists its events"))?;
                if sorted(&got) != sorted(&expected) {
                    return Err(format!("{at}: events {got:?}, expected {expected:?}"));
                }
                verified = commit_tree.clone();
            }
            Err(problems) => {
                if want.accepted {
                    return Err(format!("{at}: refused, expected accepted:{}", show_problems(&problems)));
                }
                let got: Vec<_> = problems.iter().map(observed_problem).map(|p| problem_key(&p)).collect();
                let expected =
                    want.problems.as_ref().ok_or_else(|| format!("{at}: a refused step lists its problems"))?;
                let expected: Vec<_> = expected.iter().map(problem_key).collect();
                if sorted(&got) != sorted(&expected) {
                    return Err(format!("{at}: problems {got:?}, expected {expected:?}:{}", show_problems(&problems)));
                }
                let after = serde_json::to_string(&state).expect("the state serializes");
                if after != before {
                    return Err(format!("{at}: refused, but the verified state changed"));
                }
            }
        }
    }
    Ok(())
}

/// A named history vector: `name` is the file path under test-vectors/ without `.json`.
#[derive(Clone, Debug)]
pub struct HistoryCase {
    pub name: String,
    pub vector: HistoryVector,
}

#[path = "history_cases.rs"]
pub mod cases;
pub use cases::build_cases;

// ---------------------------------------------------------------------------------------------------
// Rendering.

/// Every file of test-vectors/history/, by path relative to test-vectors/.
pub fn render(cases: &[HistoryCase]) -> BTreeMap<String, Vec<u8>> {
    cases.iter().map(|c| (format!("{}.json", c.name), super::pretty(&c.vector))).collect()
}

/// `history/README.md`: the file format and the list of cases.
pub fn readme(cases: &[HistoryCase]) -> String {
    let mut text = String::from(README_HISTORY);
    for case in cases {
        let file = case.name.trim_start_matches("history/");
        text.push_str(&format!("- `{file}.json`: {}\n", case.vector.description));
    }
    text
}

const README_HISTORY: &str = r#"# Stele ledger format v1: history vectors

Generated with the tree vectors (see `../README.md`, which also describes file nodes and keys) from
`ledger-format/tests/support/history_cases.rs`. Do not edit them by hand.

`history/*.json` check history verification (SPEC.md §8): each is a genesis tree and the commits after
it on the ledger branch's first-parent chain, each with the verdict a history verifier must reach.
`cargo test -p ledger-format --test history_vectors` replays them through the reference implementation.

```
{
  "description": "...",
  "anchor": { "root_keys": ["<key id>", ...], "threshold": 1 }  or  { "policy_hash": "<hex>" },
  "genesis": { "<path>": <node>, ... },
  "steps": [
    {
      "commit": { "id": "c1: release 1.1.0",
                  "ssh_signature": { "armored": "-----BEGIN SSH SIGNATURE-----...",
                                     "signed_payload": "<base64>" } },
      "set": { "<path>": <node>, ... },
      "delete": [ "<path>", ... ],
      "expected": { "accepted": true, "events": [ { "action": "promote", "env": "prod",
                                                    "generation": 1, "target_seq": 1 } ] }
               or { "accepted": false, "problems": [ { "path": "...", "check": "H2" } ] }
    }
  ]
}
```

- `anchor`: the trust anchor (§8.2): key ids of which `threshold` signed the genesis policy, or the
  genesis policy's document hash. In every vector the genesis tree verifies (§7.2, expiry not judged)
  and matches its anchor; at genesis every environment with entries has its last entry as target,
  generation 1.
- `genesis`, `set`: nodes as in the tree vectors' `files`.
- `steps`: commits in first-parent order. A commit's tree is the previous commit's tree (the genesis
  tree for the first) with `delete` removed and `set` written. `set` and `delete` are omitted when
  empty; a commit that changes nothing under the owned directories has neither.
- `commit.id`: a label standing for the commit id; only reason texts quote it.
- `commit.ssh_signature`: present when the commit is SSH-signed (§8.4): `armored` is the `gpgsig`
  header's SSHSIG, `signed_payload` the standard base64 of the bytes it signs (the commit object
  without that header). The signing keys are those of `keys.json`; Ed25519 signatures are
  deterministic, so the generator reproduces them byte for byte.
- Judging (§8.6): the verifier keeps the verified state and the tree of the last ACCEPTED commit
  (initially genesis). Each step is judged as the single transition from that tree to the commit's
  tree (the diff between the two; the entries just below a removed entry are read from the commit's
  tree), with the commit's signature for §8.4. After an accepted step the commit's tree becomes the
  last verified tree; after a refused step the verified state is kept unchanged, and the next commit,
  which continues from the refused commit's tree, is again judged from the last verified tree. So a
  refused commit followed by its revert is accepted with no events, and a commit that only adds a
  signature to a refused commit is judged as if the two were one.
- `expected.accepted`: whether the step is an allowed transition (§8.3). The transition rules imply
  that the commit's tree verifies (§8.0); every accepted commit's tree in these vectors does (§7.2,
  expiry not judged).
- `expected.events` (accepted steps): what the step did, compared as a multiset. `action` is
  `policy_change`, `spec_change` (also for a new signature on an unchanged spec), `promote` (an entry
  that meets its threshold appended), `co_sign` (signatures of the tip changed, payload unchanged),
  `rollback` (the target removed by a revert) or `restore` (a revert of a revert). `env` names the
  environment (absent for `policy_change`). Entry events (`promote`, `co_sign`, `rollback`, `restore`)
  also carry `generation`, the environment's target generation after the step (§8.5), and
  `target_seq`, the seq of its target after the step; a step that appends several entries has one
  event per entry, all with the step's final generation and target. A `rollback` carries
  `revert_signed_by`, the key id of the commit's valid SSH signature, when it has one.
- `expected.problems` (refused steps): the transition's problems (§8.3), as (path, check, cause)
  triples compared as a multiset, in the tree vectors' form. `cause` (S1, S2 or S3) is present for
  E5, N4, P4, P6 and N6. These are the problems §8.3 finds; the commit's tree is not separately
  judged by §7.2 (where the two would both report, as for an entry short of its threshold, the
  problem is the same (path, check, cause)).

## Cases

"#;
