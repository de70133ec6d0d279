//! Open proposals (SPEC revision 3): branches `stele/proposals/<name>` (local, and remote-tracking
//! `refs/remotes/*/stele/proposals/*`) holding one commit on top of a ledger commit, whose diff is
//! the proposed documents. The audit lists what each proposes and its signatures so far against what
//! the ledger branch head's policy requires. An open proposal is information, never a failure.
//!
//! A proposal is no longer open once its commit is on the ledger branch (merged or fast-forwarded)
//! or every file it changes already has the same content at the head (promoted or squashed).

use super::{valid_signers, Audit};
use crate::repo::{node_of, tree_snapshot};
use anyhow::{Context, Result};
use git2::{Delta, Oid, Repository};
use ledger_format::document::Document;
use ledger_format::history::{check_step_from, state_of, CommitInfo};
use ledger_format::tree::{classify, Expiry, LayoutPath, Problem, OWNED_DIRS};
use ledger_format::types::{Entry, EnvName, Environment, Policy, Role, TimestampDoc};
use ledger_format::{KeyId, Timestamp};
use serde_json::{json, Value};

/// One open proposal.
pub struct Proposal {
    pub refname: String,
    pub name: String,
    pub commit: Oid,
    pub parent: Option<Oid>,
    pub summary: String,
    /// Why it is not the one-commit-on-the-ledger-branch shape, when it is not.
    pub shape: Option<String>,
    /// Paths it changes that the ledger branch changed since its parent: `stele promote` refuses it.
    pub stale: Vec<String>,
    pub documents: Vec<Proposed>,
    /// `ledger_format`'s verdict on landing it now: its documents applied to the ledger head, judged
    /// as one first-parent step (`Ok`: what it would do), or every reason it would be refused.
    pub verdict: Result<Vec<String>, Vec<Problem>>,
}

/// One document a proposal adds, changes or removes.
pub struct Proposed {
    pub path: String,
    pub what: String,
    pub env: Option<EnvName>,
    /// Keys of the role that must sign it (head policy) whose signatures verify.
    pub signed_by: Vec<KeyId>,
    /// The role's threshold; `None` when no signature count applies (a removal) or no role does.
    pub required: Option<u64>,
    /// Keys of that role that have not signed.
    pub missing: Vec<KeyId>,
    pub note: Option<String>,
}

impl Proposed {
    fn complete(&self) -> Option<bool> {
        self.required.map(|r| self.signed_by.len() as u64 >= r)
    }
}

/// Every open proposal of the repository, judged against the head's policy.
pub fn open(repo: &Repository, audit: &Audit) -> Result<Vec<Proposal>> {
    let mut out = Vec::new();
    if audit.git.proposal_refs.is_empty() {
        return Ok(out);
    }
    // The head every proposal would land on, read and verified once for all of them.
    let head_tree = repo.find_commit(audit.head).and_then(|c| c.tree()).context("read the ledger head")?;
    let before = tree_snapshot(repo, &head_tree).context("read the ledger head")?;
    let head_state = crate::commands::verify_tree(&before, Expiry::NotJudged).map(state_of);
    for r in &audit.git.proposal_refs {
        let on_branch = r.commit == audit.head
            || repo.graph_descendant_of(audit.head, r.commit).context("compare a proposal with the ledger branch")?;
        if on_branch {
            continue;
        }
        let commit = repo.find_commit(r.commit).with_context(|| format!("read {}", r.refname))?;
        let parent = commit.parent_id(0).ok();
        let shape = match parent {
            None => Some("it has no parent: a proposal is one commit on top of a ledger commit".to_owned()),
            Some(p) if !audit.git.position.contains_key(&p.to_string()) => Some(format!(
                "its parent {} is not a commit of the ledger branch: a proposal is exactly one commit on top of one",
                super::short(&p.to_string())
            )),
            Some(_) if commit.parent_count() > 1 => Some("it is a merge commit, not one proposal commit".to_owned()),
            Some(_) => None,
        };
        let mut after = before.clone();
        let tree = commit.tree().with_context(|| format!("read {}", r.refname))?;
        let base = match parent {
            Some(p) => Some(repo.find_commit(p).and_then(|c| c.tree()).with_context(|| format!("read {p}"))?),
            None => None,
        };
        let diff =
            repo.diff_tree_to_tree(base.as_ref(), Some(&tree), None).with_context(|| format!("diff {}", r.refname))?;
        let blob_in = |t: &git2::Tree, path: &str| t.get_path(std::path::Path::new(path)).ok().map(|e| e.id());
        let mut documents = Vec::new();
        let mut entry_blobs: Vec<EntryBlob> = Vec::new();
        let mut stale = Vec::new();
        let mut landed = true;
        for delta in diff.deltas() {
            let file = if delta.status() == Delta::Deleted { delta.old_file() } else { delta.new_file() };
            let Some(path) = file.path().and_then(|p| p.to_str()).map(str::to_owned) else { continue };
            if !OWNED_DIRS.iter().any(|d| path.starts_with(&format!("{d}/"))) {
                continue;
            }
            let proposed = (delta.status() != Delta::Deleted).then(|| delta.new_file().id());
            // What landing it on the head would write: the proposal's version of each path it changes.
            match proposed {
                Some(id) => match node_of(repo, u32::from(delta.new_file().mode()), id)
                    .with_context(|| format!("read {path} in {}", r.refname))?
                {
                    Some(node) => {
                        after.nodes.insert(path.clone().into_bytes(), node);
                    }
                    None => continue,
                },
                None => {
                    after.nodes.remove(path.as_bytes());
                }
            }
            let Some(kind) = classify(&path) else { continue };
            if blob_in(&head_tree, &path) != proposed {
                landed = false;
            }
            if let Some(base) = &base {
                if blob_in(base, &path) != blob_in(&head_tree, &path) {
                    stale.push(path.clone());
                }
            }
            let bytes = match proposed {
                Some(id) => Some(
                    repo.find_blob(id).with_context(|| format!("read {path} in {}", r.refname))?.content().to_vec(),
                ),
                None => None,
            };
            if let LayoutPath::Entry(env, seq) = &kind {
                let deleted = delta.status() == Delta::Deleted;
                let id = if deleted { delta.old_file().id() } else { delta.new_file().id() };
                entry_blobs.push(EntryBlob { index: documents.len(), env: env.clone(), seq: *seq, deleted, id });
            }
            documents.push(judge(audit.policy, &path, kind, bytes.as_deref()));
        }
        fold_moves(&mut documents, &entry_blobs);
        if landed && !documents.is_empty() {
            continue;
        }
        let info = CommitInfo {
            id: r.commit.to_string(),
            parent: parent.map(|p| p.to_string()),
            time: Timestamp::from_unix(commit.time().seconds()),
            author: commit.author().to_string(),
            summary: commit.summary().unwrap_or("").to_owned(),
            ssh_signature: None,
        };
        let verdict = match &head_state {
            Ok(state) => check_step_from(state, &before, &after, info),
            Err(problems) => Err(problems.clone()),
        }
        .map(|events| events.iter().map(|e| super::action_word(&e.action).to_owned()).collect());
        out.push(Proposal {
            refname: r.refname.clone(),
            name: r.name.clone(),
            commit: r.commit,
            parent,
            summary: commit.summary().unwrap_or("").to_owned(),
            shape,
            stale,
            documents,
            verdict,
        });
    }
    Ok(out)
}

/// An entry file a proposal adds or deletes, by its blob.
struct EntryBlob {
    index: usize,
    env: EnvName,
    seq: u64,
    deleted: bool,
    id: Oid,
}

/// A layout change (revision 5) deletes each entry and adds the same blob at its new path: shown as one
/// move, which needs no signature, rather than a release and a rollback.
fn fold_moves(documents: &mut Vec<Proposed>, blobs: &[EntryBlob]) {
    let mut dropped = Vec::new();
    for added in blobs.iter().filter(|b| !b.deleted) {
        let same = |b: &&EntryBlob| b.deleted && b.env == added.env && b.seq == added.seq && b.id == added.id;
        let Some(gone) = blobs.iter().find(same) else { continue };
        let from = documents[gone.index].path.clone();
        let d = &mut documents[added.index];
        d.what = format!("{}: entry {} moved from {from}, byte for byte (ledger layout)", added.env, added.seq);
        (d.required, d.note) = (None, None);
        d.signed_by.clear();
        d.missing.clear();
        dropped.push(gone.index);
    }
    let mut index = 0;
    documents.retain(|_| {
        index += 1;
        !dropped.contains(&(index - 1))
    });
}

/// What one proposed file is, and its signatures against the role the head policy gives it.
fn judge(policy: &Policy, path: &str, kind: LayoutPath, bytes: Option<&[u8]>) -> Proposed {
    let mut p = Proposed {
        path: path.to_owned(),
        what: String::new(),
        env: None,
        signed_by: Vec::new(),
        required: None,
        missing: Vec::new(),
        note: None,
    };
    let count = |p: &mut Proposed, role: &Role, signed: Vec<KeyId>| {
        p.required = Some(role.threshold);
        p.missing = role.keys.iter().filter(|k| !signed.contains(k)).copied().collect();
        p.signed_by = signed;
    };
    let Some(bytes) = bytes else {
        p.what = match &kind {
            LayoutPath::Entry(env, seq) => format!("{env}: remove entry {seq} (a rollback)"),
            _ => format!("delete {path}"),
        };
        return p;
    };
    match kind {
        LayoutPath::Entry(env, seq) => {
            p.env = Some(env.clone());
            match Document::<Entry>::parse(bytes) {
                Ok(doc) => {
                    p.what = format!("{env}: release {} (seq {seq})", doc.payload.version);
                    match policy.env_role(&env) {
                        Some(role) => count(&mut p, role, valid_signers(&doc, policy, |k| role.keys.contains(k))),
                        None => p.note = Some(format!("{env} is not declared by the ledger's policy")),
                    }
                    if doc.payload.expires_at.is_some_and(|t| t < super::super::now()) {
                        p.note = Some(format!(
                            "expired at {}",
                            doc.payload.expires_at.map(|t| t.to_string()).unwrap_or_default()
                        ));
                    }
                }
                Err(e) => p.note = Some(format!("does not parse: {e}")),
            }
        }
        LayoutPath::Environment(env) => {
            p.env = Some(env.clone());
            match Document::<Environment>::parse(bytes) {
                Ok(doc) => {
                    p.what = format!("{env}: spec v{}", doc.payload.version);
                    match policy.env_role(&env) {
                        Some(role) => count(&mut p, role, valid_signers(&doc, policy, |k| role.keys.contains(k))),
                        None => p.note = Some(format!("{env} is not declared by the ledger's policy")),
                    }
                }
                Err(e) => p.note = Some(format!("does not parse: {e}")),
            }
        }
        LayoutPath::Policy => match Document::<Policy>::parse(bytes) {
            Ok(doc) => {
                p.what = format!("policy v{}", doc.payload.version);
                let root = &policy.root;
                count(&mut p, root, valid_signers(&doc, policy, |k| root.keys.contains(k)));
            }
            Err(e) => p.note = Some(format!("does not parse: {e}")),
        },
        LayoutPath::Timestamp => match Document::<TimestampDoc>::parse(bytes) {
            Ok(doc) => {
                p.what = format!("timestamp v{} (expires {})", doc.payload.version, doc.payload.expires_at);
                match &policy.timestamp {
                    Some(t) => {
                        let role = t.role();
                        count(&mut p, &role, valid_signers(&doc, policy, |k| role.keys.contains(k)))
                    }
                    None => p.note = Some("the ledger's policy has no timestamp role".into()),
                }
            }
            Err(e) => p.note = Some(format!("does not parse: {e}")),
        },
    }
    p
}

pub fn print(audit: &Audit, open: &[Proposal]) {
    if open.is_empty() {
        return;
    }
    let v = audit.policy.version;
    println!("\nopen proposals (not on the ledger branch; signatures counted against policy v{v} at the head)");
    for prop in open {
        println!("  {}  commit {} \"{}\"", prop.refname, super::short(&prop.commit.to_string()), prop.summary);
        if let Some(shape) = &prop.shape {
            println!("    not promotable as it is: {shape}");
        }
        for d in &prop.documents {
            let mut line = format!("    {}", if d.what.is_empty() { d.path.as_str() } else { d.what.as_str() });
            if let Some(required) = d.required {
                line += &format!(
                    ": {} of {required} signature{} ({})",
                    d.signed_by.len(),
                    if required == 1 { "" } else { "s" },
                    audit.keys_display(v, &d.signed_by)
                );
                if d.complete() == Some(true) {
                    line += ", threshold met";
                } else {
                    line += &format!("; may still sign: {}", audit.keys_display(v, &d.missing));
                }
            }
            if let Some(note) = &d.note {
                line += &format!(" [{note}]");
            }
            println!("{line}");
        }
        if !prop.stale.is_empty() {
            println!("    stale: the ledger branch changed {} since its parent", prop.stale.join(", "));
        }
        match &prop.verdict {
            Ok(actions) => {
                println!(
                    "    ready to promote: landed on the head now, it verifies as the next step ({})",
                    actions.join(", ")
                )
            }
            Err(problems) => {
                println!("    landed on the head now, it would be refused:");
                for p in problems {
                    println!("      {p}");
                }
            }
        }
    }
}

pub fn json(audit: &Audit, prop: &Proposal) -> Value {
    let v = audit.policy.version;
    json!({
        "ref": prop.refname,
        "name": prop.name,
        "commit": prop.commit.to_string(),
        "parent": prop.parent.map(|p| p.to_string()),
        "summary": prop.summary,
        "shape_problem": prop.shape,
        "stale": prop.stale,
        // ledger_format's verdict on landing it on the head now, as one step.
        "verifies": prop.verdict.is_ok(),
        "problems": prop.verdict.as_ref().err(),
        "documents": prop.documents.iter().map(|d| json!({
            "path": d.path,
            "what": d.what,
            "env": d.env,
            "signed_by": audit.keys_json(v, &d.signed_by),
            "signatures": d.signed_by.len(),
            "required": d.required,
            "missing": audit.keys_json(v, &d.missing),
            "complete": d.complete(),
            "note": d.note,
        })).collect::<Vec<_>>(),
    })
}
