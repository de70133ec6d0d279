//! `stele sign`: add a co-signature to a document (an environment's tip entry by default) and commit.
//!
//! Co-signing is for documents that are otherwise valid but short of their threshold, so the only
//! problem the ledger may have before signing is that document's missing signatures.

use super::proposal::Verdict;
use super::{key_list, problem_lines};
use crate::cli::SignArgs;
use crate::exit::{self, Refused};
use crate::keys;
use crate::repo::{apply_to, Change, LedgerRepo};
use anyhow::Result;
use ledger_format::document::{DocError, ForeignSignatures, Payload};
use ledger_format::tree::{classify, Expiry, LayoutPath, Node, Problem, Snapshot};
use ledger_format::types::{Entry, EnvName, Environment, Policy, Role};
use ledger_format::{Check, Document, SecretKey};
use std::path::Path;

pub fn run(repo_path: &Path, args: SignArgs) -> Result<u8> {
    let key = keys::load_secret(&args.key)?;
    let repo = LedgerRepo::open(repo_path)?;
    repo.ensure_clean()?;
    // A ledger whose verified state is cached verifies as it is: the signature is one more on a document
    // that already meets its threshold, judged as one step without reading the tree. Otherwise the
    // tree is read whole, since the document being signed may be the only thing it lacks.
    let base = super::base::cached(&repo)?;
    let ledger = match &base {
        Some(base) => Ledger::Verified(base, &repo),
        None => Ledger::AsFound(repo.worktree_snapshot()?),
    };
    let policy = ledger.policy()?;

    let file = match (&args.env, &args.file) {
        (Some(env), _) => {
            let env: EnvName = env.parse().map_err(Refused)?;
            let tip = ledger.tip(&env).ok_or_else(|| Refused(format!("environment {env} has no entries to sign")))?;
            policy.layout().entry_path(&env, tip)
        }
        (None, Some(file)) => file.trim_start_matches("./").to_owned(),
        (None, None) => unreachable!("clap requires --env, --file or --proposal"),
    };
    let bytes = match ledger.node(&file)? {
        Some(Node::File(bytes)) => bytes,
        _ => return Err(Refused(format!("{file}: no such document in the ledger")).into()),
    };
    let (new_bytes, summary) = match classify(&file) {
        Some(LayoutPath::Policy) => cosign::<Policy>(&file, &bytes, &policy, &policy.root, &key.key)?,
        Some(LayoutPath::Environment(env)) => {
            let role = env_role(&policy, &env)?;
            cosign::<Environment>(&file, &bytes, &policy, role, &key.key)?
        }
        Some(LayoutPath::Entry(env, seq)) => {
            if ledger.tip(&env) != Some(seq) {
                return Err(Refused(format!(
                    "{file} is not the tip of {env}; only the tip is co-signed (it covers earlier entries through prev)"
                ))
                .into());
            }
            let role = env_role(&policy, &env)?;
            cosign::<Entry>(&file, &bytes, &policy, role, &key.key)?
        }
        Some(LayoutPath::Timestamp) => {
            return Err(Refused(format!(
                "{file} is renewed, not co-signed: run `stele timestamp renew` with a key of the timestamp role"
            ))
            .into())
        }
        None => return Err(Refused(format!("{file} is not a ledger document")).into()),
    };

    let signer = key_list(&policy, &[key.key_id()]);
    let change = Change::Write { path: file.clone(), bytes: new_bytes };
    let message = format!("sign {file}: {summary}\n\nsigned-by: {signer}\n");
    let (commit, remaining) = match ledger {
        Ledger::Verified(base, _) => {
            let changes = std::slice::from_ref(&change);
            let next = match super::proposal::judge_on(&repo, base, changes, &format!("sign {file}: {summary}"))? {
                (Verdict::Complete, next) => next.expect("a complete step has a state after it"),
                (Verdict::Short(problems) | Verdict::Refused(problems), _) => {
                    anyhow::bail!("internal error: co-signing broke the ledger:\n{}", problem_lines(&problems))
                }
            };
            let commit = repo.commit(changes, &message)?;
            super::base::remember(&repo, commit, &next);
            (commit, None)
        }
        Ledger::AsFound(mut snapshot) => {
            // Before: the only problems may be this document's own; after: none but its missing signatures.
            let only_this =
                |problems: &[Problem]| problems.iter().all(|p| p.path == file && is_signature_check(p.check));
            if let Err(problems) = crate::commands::verify_tree(&snapshot, Expiry::NotJudged) {
                if !only_this(&problems) {
                    return Err(Refused(format!(
                        "the ledger has problems besides {file}'s signatures; nothing was signed:\n{}",
                        problem_lines(&problems)
                    ))
                    .into());
                }
            }
            apply_to(&mut snapshot, std::slice::from_ref(&change));
            let remaining = match crate::commands::verify_tree(&snapshot, Expiry::NotJudged) {
                Ok(_) => None,
                Err(problems) if only_this(&problems) => Some(problem_lines(&problems)),
                Err(problems) => {
                    anyhow::bail!("internal error: co-signing broke the ledger:\n{}", problem_lines(&problems))
                }
            };
            (repo.commit(std::slice::from_ref(&change), &message)?, remaining)
        }
    };
    println!("signed {file} ({summary}) as {signer}");
    println!("  commit {commit}");
    match remaining {
        None => println!("  the ledger verifies"),
        Some(lines) => println!("  still needed:\n{lines}"),
    }
    Ok(exit::OK)
}

/// What `sign` reads the ledger from: HEAD's cached verified state, or the work tree as found.
enum Ledger<'a> {
    Verified(&'a super::base::Base, &'a LedgerRepo),
    AsFound(Snapshot),
}

impl Ledger<'_> {
    /// The policy as written: verified, or parsed but not yet trusted (its own signatures may be what
    /// is being added).
    fn policy(&self) -> Result<Policy> {
        match self {
            Ledger::Verified(base, _) => Ok(base.state.policy.payload.clone()),
            Ledger::AsFound(snapshot) => current_policy(snapshot),
        }
    }

    /// The seq of `env`'s last entry.
    fn tip(&self, env: &EnvName) -> Option<u64> {
        match self {
            Ledger::Verified(base, _) => base.state.envs.get(env)?.tip.as_ref().map(|t| t.seq),
            Ledger::AsFound(snapshot) => snapshot
                .nodes
                .keys()
                .filter_map(|p| match classify(std::str::from_utf8(p).ok()?) {
                    Some(LayoutPath::Entry(e, seq)) if e == *env => Some(seq),
                    _ => None,
                })
                .max(),
        }
    }

    fn node(&self, path: &str) -> Result<Option<Node>> {
        match self {
            Ledger::Verified(base, repo) => match base.head {
                Some(head) => Ok(repo.node_at(head, path)?),
                None => Ok(None),
            },
            Ledger::AsFound(snapshot) => Ok(snapshot.nodes.get(path.as_bytes()).cloned()),
        }
    }
}

fn is_signature_check(check: Check) -> bool {
    matches!(check, Check::E5 | Check::N4 | Check::P4)
}

/// The policy as written, parsed but not yet trusted (its own signatures may be what is being added).
fn current_policy(snapshot: &Snapshot) -> Result<Policy> {
    match snapshot.nodes.get(ledger_format::tree::POLICY_PATH.as_bytes()) {
        Some(Node::File(bytes)) => Document::<Policy>::parse(bytes)
            .map(|d| d.payload)
            .map_err(|e| Refused(format!("{}: {e}", ledger_format::tree::POLICY_PATH)).into()),
        _ => Err(Refused(format!("{} is missing", ledger_format::tree::POLICY_PATH)).into()),
    }
}

fn env_role<'p>(policy: &'p Policy, env: &EnvName) -> Result<&'p Role> {
    policy.env_role(env).ok_or_else(|| Refused(format!("environment {env} is not declared in the policy")).into())
}

/// Adds `key`'s signature to the document in `bytes`, after checking the key belongs to `role` and
/// that the existing signatures are sound (only missing ones may be the problem).
fn cosign<T: Payload>(
    file: &str,
    bytes: &[u8],
    policy: &Policy,
    role: &Role,
    key: &SecretKey,
) -> Result<(Vec<u8>, String)> {
    let mut doc = Document::<T>::parse(bytes).map_err(|e| Refused(format!("{file}: {e}")))?;
    let id = key.public_key().key_id();
    if !role.keys.contains(&id) {
        return Err(Refused(format!("key {id} may not sign {file} (allowed: {})", key_list(policy, &role.keys))).into());
    }
    let foreign =
        if T::KIND == ledger_format::DocKind::Policy { ForeignSignatures::Skip } else { ForeignSignatures::Refuse };
    match doc.check_role(policy, role, foreign) {
        Ok(_) | Err(DocError { check: Check::S3, .. }) => {}
        Err(e) => return Err(Refused(format!("{file}: existing signatures are not sound: {e}")).into()),
    }
    if doc.signatures.iter().any(|s| s.keyid == id) {
        return Err(Refused(format!("{file} is already signed by {}", key_list(policy, &[id]))).into());
    }
    doc.sign(key);
    let count = match doc.check_role(policy, role, foreign) {
        Ok(signed) => signed.0.len(),
        Err(_) => doc.signatures.iter().filter(|s| role.keys.contains(&s.keyid)).count(),
    };
    Ok((
        doc.to_file_bytes(),
        format!("{count} signature{}, {} required", if count == 1 { "" } else { "s" }, role.threshold),
    ))
}
