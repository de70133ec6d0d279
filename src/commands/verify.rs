//! `stele verify`: verify the work tree (or a commit's tree) and report every problem.

use super::{human_size, key_list, now};
use crate::cli::VerifyArgs;
use crate::exit::{self, Refused};
use crate::repo::LedgerRepo;
use anyhow::Result;
use ledger_format::tree::VerifiedTree;
use ledger_format::types::Image;
use ledger_format::Timestamp;
use serde_json::json;
use std::path::Path;

pub fn run(repo_path: &Path, args: VerifyArgs) -> Result<u8> {
    let now: Timestamp = match &args.now {
        Some(t) => t.parse().map_err(Refused)?,
        None => now(),
    };
    let repo = LedgerRepo::open(repo_path)?;
    let (snapshot, source) = match &args.rev {
        Some(rev) => (repo.rev_snapshot(rev)?, format!("commit {rev}")),
        None => (repo.worktree_snapshot()?, "work tree".to_owned()),
    };
    match super::verify_tree(&snapshot, ledger_format::tree::Expiry::JudgedAt(now)) {
        Ok(tree) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&tree_json(&tree, &source, now))?);
            } else {
                print_tree(&tree, &repo, &source);
            }
            remember(&repo, args.rev.as_deref(), tree);
            Ok(exit::OK)
        }
        Err(problems) => {
            if args.json {
                let out = json!({"ok": false, "source": source, "now": now, "problems": problems});
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                for p in &problems {
                    println!("{p}");
                }
                eprintln!(
                    "FAILED: {} problem{} in the {source} of {} (checks: ledger-format/SPEC.md §7.1)",
                    problems.len(),
                    if problems.len() == 1 { "" } else { "s" },
                    repo.root().display()
                );
            }
            Ok(exit::VERIFY_FAILED)
        }
    }
}

/// Keeps the verified state for the next writing command (src/commands/base.rs): for `--rev`, that
/// commit's; for the work tree, HEAD's when the work tree matches it.
fn remember(repo: &LedgerRepo, rev: Option<&str>, tree: VerifiedTree) {
    let commit = match rev {
        Some(rev) => repo.git().revparse_single(rev).and_then(|o| o.peel_to_commit()).ok(),
        None if repo.ensure_clean().is_ok() => repo.head_commit().ok().flatten(),
        None => None,
    };
    if let Some(commit) = commit {
        super::base::remember(repo, commit.id(), &ledger_format::history::state_of(tree));
    }
}

fn print_tree(tree: &VerifiedTree, repo: &LedgerRepo, source: &str) {
    let policy = &tree.policy.payload;
    println!("ledger {} (policy version {}) in {}", policy.ledger, policy.version, repo.root().display());
    let mut entries = 0;
    for (env, state) in &tree.environments {
        entries += state.entries.len();
        match state.tip() {
            None => println!("  {env}: no releases yet"),
            Some(tip) => {
                let e = &tip.doc.payload;
                let size = match &e.image {
                    Image::Artifact { size, .. } => format!(", {}", human_size(*size)),
                    Image::MachineImage { id, .. } => format!(", {id}"),
                };
                println!(
                    "  {env}: {} (seq {}), image blake3:{}{size}, signed by {}",
                    e.version,
                    e.seq,
                    e.image.digest(),
                    key_list(policy, &tip.signed_by.0)
                );
            }
        }
    }
    println!(
        "OK: {source} verified: policy, {} environment spec{} and {entries} entr{} (this tree; history not checked)",
        tree.environments.len(),
        if tree.environments.len() == 1 { "" } else { "s" },
        if entries == 1 { "y" } else { "ies" }
    );
}

fn tree_json(tree: &VerifiedTree, source: &str, now: Timestamp) -> serde_json::Value {
    let policy = &tree.policy.payload;
    let envs: serde_json::Map<String, serde_json::Value> = tree
        .environments
        .iter()
        .map(|(env, state)| {
            let tip = state.tip().map(|t| {
                json!({
                    "seq": t.doc.payload.seq,
                    "version": t.doc.payload.version,
                    "entry_hash": t.doc.hash(),
                    "image": t.doc.payload.image,
                    "created_at": t.doc.payload.created_at,
                    "expires_at": t.doc.payload.expires_at,
                    "signed_by": t.signed_by.0.iter().map(|id| json!({"keyid": id, "name": policy.key_name(id)})).collect::<Vec<_>>(),
                })
            });
            (env.to_string(), json!({"entries": state.entries.len(), "spec_version": state.spec.payload.version, "tip": tip}))
        })
        .collect();
    json!({
        "ok": true,
        "source": source,
        "now": now,
        "ledger": policy.ledger,
        "policy_version": policy.version,
        "policy_hash": tree.policy.hash(),
        "environments": envs,
        "problems": [],
    })
}
