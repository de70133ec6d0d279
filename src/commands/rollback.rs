//! `stele rollback`: the commit `git revert` of an environment's tip promotion would make (the tip
//! entry removed, git's revert message), optionally SSH-signed for `revert: signed` environments.

use super::base::{judge_commit, load_base, remember};
use super::{key_list, problem_lines};
use crate::cli::RollbackArgs;
use crate::exit::{self, Refused};
use crate::keys;
use crate::repo::{Change, LedgerRepo};
use anyhow::Result;
use ledger_format::types::{EnvName, RevertPolicy};
use std::path::Path;

pub fn run(repo_path: &Path, args: RollbackArgs) -> Result<u8> {
    let repo = LedgerRepo::open(repo_path)?;
    let base = load_base(&repo)?;
    let env: EnvName = args.env.parse().map_err(Refused)?;
    let policy = &base.state.policy.payload;
    let state = base.state.envs.get(&env).ok_or_else(|| Refused(format!("environment {env} is not declared")))?;
    let tip = state.tip.as_ref().ok_or_else(|| Refused(format!("{env} has no release to roll back")))?;
    let seq = tip.seq;
    let file = policy.layout().entry_path(&env, seq);
    if seq == 1 {
        return Err(Refused(format!(
            "{file} is {env}'s only entry: an environment that had a target keeps one (SPEC.md §8, H2); release the \
             image to run instead"
        ))
        .into());
    }
    // Refuse here what every agent would refuse (SPEC.md §8.4), with the reason in the environment's
    // terms, before anything is made.
    let role = policy.env_role(&env).expect("verified environments are declared");
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
                key_list(policy, &role.keys)
            ))
            .into())
        }
        _ => {}
    }
    let change = Change::Remove { path: file.clone() };
    let (promotion, summary, merged_onto) = promotion_commit(&repo, &file)?;
    // Exactly git's own message: `git revert` (`git revert -m 1` for a merge commit).
    let message = match merged_onto {
        None => format!("Revert \"{summary}\"\n\nThis reverts commit {promotion}.\n"),
        Some(parent) => {
            format!("Revert \"{summary}\"\n\nThis reverts commit {promotion}, reversing\nchanges made to {parent}.\n")
        }
    };
    let sign = key.as_ref().map(|k| move |bytes: &[u8]| keys::ssh_sign(&k.key, "git", bytes));
    let changes = std::slice::from_ref(&change);
    let commit = repo.prepare_commit(changes, &message, sign.as_ref().map(|f| f as crate::repo::CommitSigner))?;
    // The very commit, signature included, judged as agents will judge it; only then does HEAD move.
    let next = judge_commit(&repo, &base, commit)?.map_err(|problems| {
        Refused(format!(
            "after removing {file} the ledger would not verify, so nothing was committed:\n{}",
            problem_lines(&problems)
        ))
    })?;
    repo.land(commit, changes)?;
    remember(&repo, commit, &next);
    let back_to = next.envs.get(&env).and_then(|e| e.target.as_ref()).map(|t| format!("{} (seq {})", t.version, t.seq));
    println!("rolled back {env}: removed {file} ({})", tip.version);
    println!("  target is now {}", back_to.as_deref().unwrap_or("nothing (no earlier release)"));
    println!("  commit {commit} reverts {promotion}");
    match &key {
        Some(k) => println!("  SSH-signed by {}", key_list(policy, &[k.key_id()])),
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
