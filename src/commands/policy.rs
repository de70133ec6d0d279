//! `stele policy`: show the trust policy, or write its next version (version + 1, signed by root keys).
//!
//! Every change is judged before it is committed: the ledger as it would be after the change must
//! verify, except for root signatures still to come from co-signers.

use super::init::default_environment;
use super::{key_list, load_verified, now, parse_when, problem_lines};
use crate::cli::{PolicyCommand, RootKeys};
use crate::exit::{self, Refused};
use crate::keys::{self, LoadedSecret};
use crate::repo::{apply_to, Change, LedgerRepo};
use anyhow::Result;
use ledger_format::document::ForeignSignatures;
use ledger_format::tree::{environment_path, verify_snapshot_with, Expiry, POLICY_PATH};
use ledger_format::types::{EnvName, KeyInfo, KeyName, Policy, Role};
use ledger_format::{Check, Document, KeyId};
use std::path::Path;

pub fn run(repo_path: &Path, cmd: PolicyCommand) -> Result<u8> {
    match cmd {
        PolicyCommand::Show { json } => show(repo_path, json),
        change => apply(repo_path, change),
    }
}

fn show(repo_path: &Path, json: bool) -> Result<u8> {
    let repo = LedgerRepo::open(repo_path)?;
    let (_, tree) = load_verified(&repo)?;
    let p = &tree.policy.payload;
    if json {
        println!("{}", serde_json::to_string_pretty(p)?);
        return Ok(exit::OK);
    }
    println!("ledger {} policy version {}", p.ledger, p.version);
    if let Some(t) = p.expires_at {
        println!("expires {t}");
    }
    println!("keys:");
    for (id, info) in &p.keys {
        println!("  {id}  {}", info.name);
    }
    println!("root: {} of {}", p.root.threshold, key_list(p, &p.root.keys));
    for (env, role) in &p.environments {
        println!("{env}: {} of {}", role.threshold, key_list(p, &role.keys));
    }
    Ok(exit::OK)
}

fn parse_env(name: &str) -> Result<EnvName> {
    Ok(name.parse().map_err(Refused)?)
}

fn role_mut<'p>(policy: &'p mut Policy, env: &EnvName) -> Result<&'p mut Role> {
    policy.environments.get_mut(env).ok_or_else(|| Refused(format!("environment {env} is not declared")).into())
}

/// Adds a key to `keys` (keeping the recorded name if it is already listed) and returns its id.
fn add_key(policy: &mut Policy, file: &Path, name: Option<&str>) -> Result<KeyId> {
    let public = keys::load_public(file)?;
    let id = public.key.key_id();
    let name: KeyName = match name {
        Some(n) => n.parse().map_err(Refused)?,
        None => keys::default_name(&public.comment, file)
            .ok_or_else(|| Refused(format!("{}: the key has no usable name; pass --name", file.display())))?,
    };
    policy.keys.entry(id).or_insert(KeyInfo { name, public_key: public.key });
    Ok(id)
}

/// Drops keys that no role lists any more: a withdrawn key is revoked, not kept around.
fn drop_unused_keys(policy: &mut Policy) {
    let used: Vec<KeyId> =
        policy.root.keys.iter().chain(policy.environments.values().flat_map(|r| r.keys.iter())).copied().collect();
    policy.keys.retain(|id, _| used.contains(id));
}

fn apply(repo_path: &Path, cmd: PolicyCommand) -> Result<u8> {
    let now = now();
    let repo = LedgerRepo::open(repo_path)?;
    let (mut snapshot, tree) = load_verified(&repo)?;
    let old = tree.policy.payload.clone();
    let mut new = old.clone();
    new.version += 1;
    let mut extra: Vec<Change> = Vec::new();

    let (root, description): (RootKeys, String) = match cmd {
        PolicyCommand::Show { .. } => unreachable!("handled by run"),
        PolicyCommand::AddSigner { env, pubkey, name, root } => {
            let env = parse_env(&env)?;
            let id = add_key(&mut new, &pubkey, name.as_deref())?;
            let role = role_mut(&mut new, &env)?;
            if role.keys.contains(&id) {
                return Err(Refused(format!("key {id} already signs for {env}")).into());
            }
            role.keys.push(id);
            role.keys.sort();
            let who = key_list(&new, &[id]);
            (root, format!("add signer {who} to {env}"))
        }
        PolicyCommand::RemoveSigner { env, keyid, pubkey, root } => {
            let env = parse_env(&env)?;
            let id: KeyId = match (keyid, pubkey) {
                (Some(k), _) => k.parse().map_err(Refused)?,
                (None, Some(file)) => keys::load_public(&file)?.key.key_id(),
                (None, None) => unreachable!("clap requires --keyid or --pubkey"),
            };
            let who = key_list(&old, &[id]);
            let role = role_mut(&mut new, &env)?;
            if !role.keys.contains(&id) {
                return Err(Refused(format!("{who} is not a signer of {env}")).into());
            }
            role.keys.retain(|k| *k != id);
            if role.threshold > role.keys.len() as u64 {
                return Err(Refused(format!(
                    "{env} needs {} signatures and would have {} signers left; lower the threshold first \
                     (stele policy set-threshold --env {env} --threshold N)",
                    role.threshold,
                    role.keys.len()
                ))
                .into());
            }
            drop_unused_keys(&mut new);
            (root, format!("remove signer {who} from {env}"))
        }
        PolicyCommand::SetThreshold { env, root_role, threshold, root } => {
            let (role, what) = match env {
                Some(env) if !root_role => {
                    let env = parse_env(&env)?;
                    (role_mut(&mut new, &env)?, env.to_string())
                }
                _ => (&mut new.root, "root".to_owned()),
            };
            if threshold < 1 || threshold > role.keys.len() as u64 {
                return Err(Refused(format!(
                    "threshold {threshold} is not within 1..={} (the number of {what} signers)",
                    role.keys.len()
                ))
                .into());
            }
            role.threshold = threshold;
            (root, format!("set {what} threshold to {threshold}"))
        }
        PolicyCommand::AddEnv { name, root } => {
            let env = parse_env(&name)?;
            if new.environments.contains_key(&env) {
                return Err(Refused(format!("environment {env} is already declared")).into());
            }
            let signer = keys::load_secret(root.keys.first().expect("clap requires one --key"))?;
            new.environments.insert(env.clone(), Role { keys: vec![signer.key_id()], threshold: 1 });
            let mut spec = Document::new(default_environment(&new.ledger, &env));
            spec.sign(&signer.key);
            extra.push(Change::Write { path: environment_path(&env), bytes: spec.to_file_bytes() });
            (root, format!("add environment {env}"))
        }
        PolicyCommand::RotateRoot { new_root, threshold, root } => {
            let ids = new_root.iter().map(|f| add_key(&mut new, f, None)).collect::<Result<Vec<_>>>()?;
            let mut ids: Vec<KeyId> = ids;
            ids.sort();
            ids.dedup();
            if threshold < 1 || threshold > ids.len() as u64 {
                return Err(Refused(format!("threshold {threshold} is not within 1..={}", ids.len())).into());
            }
            new.root = Role { keys: ids, threshold };
            drop_unused_keys(&mut new);
            (root, format!("rotate root to {} of {}", threshold, key_list(&new, &new.root.keys)))
        }
    };
    if let Some(when) = &root.expires {
        new.expires_at = Some(parse_when(when, now)?);
    }
    if let Some(t) = new.expires_at.filter(|t| *t <= now) {
        return Err(
            Refused(format!("the new policy would already be expired ({t}); pass --expires to renew it")).into()
        );
    }

    let signers: Vec<LoadedSecret> = root.keys.iter().map(|k| keys::load_secret(k)).collect::<Result<_, _>>()?;
    for s in &signers {
        let id = s.key_id();
        if !old.root.keys.contains(&id) && !new.root.keys.contains(&id) {
            return Err(Refused(format!(
                "key {id} is not a root key; the policy is signed by root keys ({})",
                key_list(&old, &old.root.keys)
            ))
            .into());
        }
    }
    let mut doc = Document::new(new);
    for s in &signers {
        doc.sign(&s.key);
    }
    // A new policy must be signed by a threshold of the current root too (SPEC.md §6.1); when the root
    // keys change, that has to happen now, since only the new root keys can co-sign later.
    let old_root_ok = doc.check_role(&old, &old.root, ForeignSignatures::Skip).is_ok();
    if old.root.keys != doc.payload.root.keys && !old_root_ok {
        return Err(Refused(format!(
            "a root rotation must be signed by {} of the current root keys ({}); pass them with --key",
            old.root.threshold,
            key_list(&old, &old.root.keys)
        ))
        .into());
    }

    let bytes = doc.to_file_bytes();
    snapshot.insert_file(POLICY_PATH, bytes.clone());
    apply_to(&mut snapshot, &extra);
    let pending = match verify_snapshot_with(&snapshot, Expiry::NotJudged) {
        Ok(_) => None,
        Err(problems) => {
            let only_root_signatures = problems.iter().all(|p| p.path == POLICY_PATH && p.check == Check::P4)
                && matches!(doc.check_role(&doc.payload, &doc.payload.root, ForeignSignatures::Skip), Err(e) if e.check == Check::S3);
            if !only_root_signatures {
                let unsigned: Vec<&str> = problems
                    .iter()
                    .filter(|p| matches!(p.check, Check::N4 | Check::E5) && p.cause == Some(Check::S3))
                    .map(|p| p.path.as_str())
                    .collect();
                let hint = if unsigned.is_empty() {
                    String::new()
                } else {
                    format!(
                        "\nthese documents would no longer have enough signatures under the new policy; have their \
                         signers co-sign them first (stele sign --file PATH --key KEY), then retry: {}",
                        unsigned.join(", ")
                    )
                };
                return Err(Refused(format!(
                    "after this change the ledger would not verify, so nothing was changed:\n{}{hint}",
                    problem_lines(&problems)
                ))
                .into());
            }
            Some(problem_lines(&problems))
        }
    };
    let version = doc.payload.version;
    let mut changes = vec![Change::Write { path: POLICY_PATH.into(), bytes }];
    changes.extend(extra);
    let signed_by = key_list(&doc.payload, &signers.iter().map(|s| s.key_id()).collect::<Vec<_>>());
    let commit = repo.commit(&changes, &format!("policy v{version}: {description}\n\nsigned-by: {signed_by}\n"))?;
    println!("policy version {version}: {description}");
    println!("  commit {commit}");
    if let Some(lines) = pending {
        println!("  waiting for root co-signatures (stele sign --file {POLICY_PATH} --key <root key>):\n{lines}");
    }
    Ok(exit::OK)
}
