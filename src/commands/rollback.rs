//! `stele rollback`: the commit `git revert` of an environment's tip promotion would make (the tip
//! entry removed, git's revert message), optionally SSH-signed for `revert: signed` environments.

use super::{key_list, load_verified, problem_lines};
use crate::cli::RollbackArgs;
use crate::exit::{self, Refused};
use crate::keys;
use crate::repo::{apply_to, Change, LedgerRepo};
use anyhow::Result;
use ledger_format::tree::Expiry;
use ledger_format::types::{EnvName, RevertPolicy};
use std::path::Path;

pub fn run(repo_path: &Path, args: RollbackArgs) -> Result<u8> {
    let repo = LedgerRepo::open(repo_path)?;
    let (mut snapshot, tree) = load_verified(&repo)?;
    let env: EnvName = args.env.parse().map_err(Refused)?;
    let state = tree.environments.get(&env).ok_or_else(|| Refused(format!("environment {env} is not declared")))?;
    let tip = state.tip().ok_or_else(|| Refused(format!("{env} has no release to roll back")))?;
    let seq = tip.doc.payload.seq;
    let file = tree.policy.payload.layout().entry_path(&env, seq);
    if seq == 1 {
        return Err(Refused(format!(
            "{file} is {env}'s only entry: an environment that had a target keeps one (SPEC.md §8, H2); release the \
             image to run instead"
        ))
        .into());
    }
    // Refuse here what every agent would refuse (SPEC.md §8.4), rather than commit a stall.
    let role = tree.policy.payload.env_role(&env).expect("verified environments are declared");
    let key = args.key.as_deref().map(keys::load_secret).transpose()?;
    match (state.spec.payload.revert, &key) {
        (RevertPolicy::Deny, _) => {
            return Err(Refused(format!(
                "{env} denies rollback by revert (environments/{env}.json: revert = deny); release a signed entry \
                 that re-targets the earlier image instead"
            ))
            .into())
        }
        (RevertPolicy::Signed, None) => {
            return Err(Refused(format!("{env} requires reverts SSH-signed by one of its signers; pass --key")).into())
        }
        (RevertPolicy::Signed, Some(k)) if !role.keys.contains(&k.key_id()) => {
            return Err(Refused(format!(
                "key {} is not a signer of {env} (signers: {})",
                k.key_id(),
                key_list(&tree.policy.payload, &role.keys)
            ))
            .into())
        }
        _ => {}
    }
    let change = Change::Remove { path: file.clone() };
    apply_to(&mut snapshot, std::slice::from_ref(&change));
    if let Err(problems) = crate::commands::verify_tree(&snapshot, Expiry::NotJudged) {
        return Err(Refused(format!(
            "after removing {file} the ledger would not verify, so nothing was committed:\n{}",
            problem_lines(&problems)
        ))
        .into());
    }
    let (promotion, summary, merged_onto) = promotion_commit(&repo, &file)?;
    // Exactly git's own message: `git revert` (`git revert -m 1` for a merge commit).
    let message = match merged_onto {
        None => format!("Revert \"{summary}\"\n\nThis reverts commit {promotion}.\n"),
        Some(parent) => {
            format!("Revert \"{summary}\"\n\nThis reverts commit {promotion}, reversing\nchanges made to {parent}.\n")
        }
    };
    let sign = key.as_ref().map(|k| move |bytes: &[u8]| keys::ssh_sign(&k.key, "git", bytes));
    let commit = repo.commit_signed(&[change], &message, sign.as_ref().map(|f| f as crate::repo::CommitSigner))?;
    let back_to =
        state.entries.iter().rev().nth(1).map(|e| format!("{} (seq {})", e.doc.payload.version, e.doc.payload.seq));
    println!("rolled back {env}: removed {file} ({})", tip.doc.payload.version);
    println!("  target is now {}", back_to.as_deref().unwrap_or("nothing (no earlier release)"));
    println!("  commit {commit} reverts {promotion}");
    match &key {
        Some(k) => println!("  SSH-signed by {}", key_list(&tree.policy.payload, &[k.key_id()])),
        None => println!("  not signed (environments with `revert: signed` refuse it; pass --key)"),
    }
    Ok(exit::OK)
}

/// The first-parent commit that added `file`, its subject line, and its first parent when it is a
/// merge (a proposal merged on a Git host), which `git revert -m 1` names.
fn promotion_commit(repo: &LedgerRepo, file: &str) -> Result<(git2::Oid, String, Option<git2::Oid>)> {
    let git = repo.git();
    let mut at = git.head()?.peel_to_commit()?;
    loop {
        let has = |c: &git2::Commit| c.tree().map(|t| t.get_path(Path::new(file)).is_ok()).unwrap_or(false);
        let parent = at.parent(0).ok();
        if has(&at) && !parent.as_ref().is_some_and(has) {
            let merged_onto = (at.parent_count() > 1).then(|| at.parent_id(0)).transpose()?;
            return Ok((at.id(), at.summary().unwrap_or("").to_owned(), merged_onto));
        }
        at = parent.ok_or_else(|| Refused(format!("no commit on the first-parent history adds {file}")))?;
    }
}
