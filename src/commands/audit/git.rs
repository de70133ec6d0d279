//! What the audit reads from Git beyond the verified steps: the policy documents in force along the
//! way (to name signers as they were named then), merge parents and proposal names of commits, the
//! order of the first-parent history, and the proposal branches.
//!
//! Owns: these reads. Must not judge: every verdict comes from `replay` and `ledger_format`.

use crate::replay::Outcome;
use anyhow::{Context, Result};
use git2::{Oid, Repository};
use ledger_format::document::Document;
use ledger_format::history::Action;
use ledger_format::tree::{environment_path, POLICY_PATH};
use ledger_format::types::{EnvName, Environment, Policy};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The prefix of proposal branches (SPEC revision 3: one commit on top of a ledger commit).
pub const PROPOSALS: &str = "stele/proposals/";

/// A ref naming a proposal: its full name, the proposal's name, and the commit it points at.
#[derive(Clone, Debug)]
pub struct ProposalRef {
    pub refname: String,
    pub name: String,
    pub commit: Oid,
}

/// How a commit came to be, beyond its first-parent diff.
#[derive(Clone, Debug, Default)]
pub struct CommitFacts {
    /// The second parent, for a merge commit.
    pub merged_from: Option<String>,
    /// The proposal it landed, named in its message (`stele/proposals/NAME`) or by a proposal ref
    /// that points at its second parent.
    pub proposal: Option<String>,
}

pub struct Facts {
    /// Every policy in force somewhere along the verified history, by version.
    pub policies: BTreeMap<u64, Policy>,
    /// The policy document each genesis or policy-change commit holds, by commit id.
    pub policy_docs: HashMap<String, Document<Policy>>,
    /// The spec each spec-change commit holds, by commit id and environment.
    pub specs: HashMap<(String, EnvName), Document<Environment>>,
    /// Per reported or refused commit.
    pub commits: HashMap<String, CommitFacts>,
    /// Position of each first-parent commit, oldest first.
    pub position: HashMap<String, usize>,
    pub proposal_refs: Vec<ProposalRef>,
}

impl Facts {
    pub fn read(repo: &Repository, head: Oid, outcome: &Outcome) -> Result<Self> {
        let proposal_refs = proposal_refs(repo)?;
        let mut policies = BTreeMap::new();
        let mut policy_docs = HashMap::new();
        let mut specs = HashMap::new();
        let mut commits = HashMap::new();
        let reported = outcome.reports.iter().map(|r| (&r.commit, r.events.as_slice()));
        let refused = outcome.refusals.iter().map(|r| (&r.commit, &[][..]));
        for (info, events) in reported.chain(refused) {
            let id: Oid = info.id.parse().with_context(|| format!("commit id {}", info.id))?;
            let commit = repo.find_commit(id).with_context(|| format!("read commit {id}"))?;
            let message = String::from_utf8_lossy(commit.message_bytes()).into_owned();
            let merged_from = (commit.parent_count() > 1).then(|| commit.parent_id(1).ok()).flatten();
            let proposal = proposal_in(&message).or_else(|| {
                let second = merged_from?;
                proposal_refs.iter().find(|r| r.commit == second).map(|r| r.name.clone())
            });
            commits.insert(info.id.clone(), CommitFacts { merged_from: merged_from.map(|o| o.to_string()), proposal });
            if events.iter().any(|e| matches!(e.action, Action::Genesis | Action::PolicyChange)) {
                let bytes = blob_at(repo, id, POLICY_PATH)?
                    .with_context(|| format!("commit {id} changed {POLICY_PATH} but holds none"))?;
                let doc = Document::<Policy>::parse(&bytes)
                    .map_err(|e| anyhow::anyhow!("{POLICY_PATH} at commit {id}: {e}"))?;
                policies.insert(doc.payload.version, doc.payload.clone());
                policy_docs.insert(info.id.clone(), doc);
            }
            // The specs a step changed; at genesis, every spec (what later spec rows compare with).
            let changed: Vec<EnvName> = if events.iter().any(|e| e.action == Action::Genesis) {
                policy_docs
                    .get(&info.id)
                    .map(|d: &Document<Policy>| d.payload.environments.keys().cloned().collect())
                    .unwrap_or_default()
            } else {
                events.iter().filter(|e| e.action == Action::SpecChange).filter_map(|e| e.env.clone()).collect()
            };
            for env in &changed {
                let path = environment_path(env);
                let bytes =
                    blob_at(repo, id, &path)?.with_context(|| format!("commit {id} changed {path} but holds none"))?;
                let doc = Document::<Environment>::parse(&bytes)
                    .map_err(|e| anyhow::anyhow!("{path} at commit {id}: {e}"))?;
                specs.insert((info.id.clone(), env.clone()), doc);
            }
        }
        let mut walk = repo.revwalk().context("walk the ledger branch")?;
        walk.push(head).and_then(|()| walk.simplify_first_parent()).context("walk the ledger branch")?;
        let mut order: Vec<String> = Vec::new();
        for id in walk {
            order.push(id.context("walk the ledger branch")?.to_string());
        }
        let position = order.into_iter().rev().enumerate().map(|(i, id)| (id, i)).collect();
        Ok(Self { policies, policy_docs, specs, commits, position, proposal_refs })
    }

    pub fn commit(&self, id: &str) -> CommitFacts {
        self.commits.get(id).cloned().unwrap_or_default()
    }
}

/// The proposal a commit message names: the first `stele/proposals/NAME`, NAME ending at whitespace,
/// a quote or a closing bracket.
pub fn proposal_in(message: &str) -> Option<String> {
    let at = message.find(PROPOSALS)?;
    let name: String = message[at + PROPOSALS.len()..]
        .chars()
        .take_while(|c| !c.is_whitespace() && !matches!(c, '\'' | '"' | '`' | ')' | ']' | ',' | ';'))
        .collect();
    let name = name.trim_end_matches(['.', ':']);
    (!name.is_empty()).then(|| name.to_owned())
}

/// Local `stele/proposals/*` branches and remote-tracking `refs/remotes/*/stele/proposals/*`.
fn proposal_refs(repo: &Repository) -> Result<Vec<ProposalRef>> {
    let mut out = Vec::new();
    for glob in [format!("refs/heads/{PROPOSALS}*"), format!("refs/remotes/*/{PROPOSALS}*")] {
        for r in repo.references_glob(&glob).context("list proposal branches")? {
            let r = r.context("list proposal branches")?;
            let Some(refname) = r.name().map(str::to_owned) else { continue };
            let Ok(commit) = r.peel_to_commit() else { continue };
            let Some(at) = refname.find(PROPOSALS) else { continue };
            let name = refname[at + PROPOSALS.len()..].to_owned();
            out.push(ProposalRef { refname, name, commit: commit.id() });
        }
    }
    Ok(out)
}

/// The bytes of the file at `path` in `commit`, if it holds one.
pub fn blob_at(repo: &Repository, commit: Oid, path: &str) -> Result<Option<Vec<u8>>> {
    let tree = repo.find_commit(commit).and_then(|c| c.tree()).with_context(|| format!("read commit {commit}"))?;
    match tree.get_path(Path::new(path)) {
        Ok(entry) => {
            let object = entry.to_object(repo).with_context(|| format!("read {path} at {commit}"))?;
            Ok(object.as_blob().map(|b| b.content().to_vec()))
        }
        Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {path} at {commit}")),
    }
}

#[cfg(test)]
mod tests {
    use super::proposal_in;

    #[test]
    fn proposal_names_in_merge_messages() {
        for (message, name) in [
            ("Merge branch 'stele/proposals/prod-2.0.0'", Some("prod-2.0.0")),
            ("Merge pull request #7 from acme/stele/proposals/x\n\nbody", Some("x")),
            ("promote stele/proposals/rel-3: prod 3.0.0", Some("rel-3")),
            ("promote (stele/proposals/a.b)", Some("a.b")),
            ("Merge branch 'feature'", None),
            ("stele/proposals/ nothing", None),
        ] {
            assert_eq!(proposal_in(message).as_deref(), name, "{message}");
        }
    }
}
