//! `stele init`: a new ledger with one root key that also signs every environment.

use super::key_list;
use crate::cli::InitArgs;
use crate::exit::{self, Refused};
use crate::keys;
use crate::repo::{apply_to, Change, LedgerRepo};
use anyhow::Result;
use ledger_format::tree::{environment_path, verify_snapshot_with, Expiry, Snapshot, OWNED_DIRS, POLICY_PATH};
use ledger_format::types::*;
use ledger_format::Document;
use rand_core::{OsRng, RngCore};
use std::collections::BTreeMap;

/// The spec a new environment starts with: two local instances, rolling one at a time with no loss of
/// capacity, HTTP health on /healthz, drift corrected, reverts only when SSH-signed by one of the
/// environment's signers (`revert: signed`, SPEC.md revision 3).
pub(crate) fn default_environment(ledger: &LedgerId, env: &EnvName) -> Environment {
    Environment {
        payload_type: EnvironmentType,
        ledger: ledger.clone(),
        name: env.clone(),
        version: 1,
        provider: Provider::Local {},
        groups: vec![Group { name: "web".parse().expect("a valid group name"), capacity: 2 }],
        strategy: Strategy::Rolling { max_surge: 1, max_unavailable: 0, min_ready_seconds: 2 },
        health: HealthCheck::Http {
            path: "/healthz".parse().expect("a valid path"),
            interval_ms: 500,
            timeout_ms: 500,
            healthy_threshold: 2,
            deadline_seconds: 60,
        },
        drift: DriftMode::Correct,
        revert: RevertPolicy::Signed,
        max_instance_age_seconds: None,
    }
}

fn default_ledger_id(dir: &std::path::Path) -> LedgerId {
    let stem: String = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_lowercase()))
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' })
        .take(40)
        .collect();
    let stem = stem.trim_matches('-');
    let mut random = [0u8; 6];
    OsRng.fill_bytes(&mut random);
    let id = if stem.is_empty() { hex::encode(random) } else { format!("{stem}-{}", hex::encode(random)) };
    id.parse().expect("lowercase letters, digits and dashes make a valid ledger id")
}

pub fn run(args: InitArgs) -> Result<u8> {
    let key = keys::load_secret(&args.key)?;
    let name: KeyName = match &args.name {
        Some(n) => n.parse().map_err(Refused)?,
        None => keys::default_name(&key.comment, &args.key)
            .ok_or_else(|| Refused("the key has no usable name; pass --name".into()))?,
    };
    let mut envs = Vec::new();
    for e in &args.envs {
        let env: EnvName = e.parse().map_err(Refused)?;
        if !envs.contains(&env) {
            envs.push(env);
        }
    }
    let repo = LedgerRepo::open_or_init(&args.dir)?;
    if let Some(dir) = OWNED_DIRS.iter().find(|d| repo.root().join(d).symlink_metadata().is_ok()) {
        return Err(Refused(format!(
            "{} already has a {dir}/ directory; `stele init` only creates new ledgers",
            repo.root().display()
        ))
        .into());
    }
    let ledger: LedgerId = match &args.ledger_id {
        Some(id) => id.parse().map_err(Refused)?,
        None => default_ledger_id(repo.root()),
    };
    let id = key.key_id();
    let signers = Role { keys: vec![id], threshold: 1 };
    let policy = Policy {
        payload_type: PolicyType,
        ledger: ledger.clone(),
        version: 1,
        expires_at: None,
        keys: BTreeMap::from([(id, KeyInfo { name, public_key: key.key.public_key() })]),
        root: signers.clone(),
        environments: envs.iter().map(|e| (e.clone(), signers.clone())).collect(),
        agents: BTreeMap::new(),
        timestamp: None,
        ledger_layout: args.layout.policy_value(),
    };
    let mut policy_doc = Document::new(policy);
    policy_doc.sign(&key.key);
    let mut changes = vec![Change::Write { path: POLICY_PATH.into(), bytes: policy_doc.to_file_bytes() }];
    for env in &envs {
        let mut spec = Document::new(default_environment(&ledger, env));
        spec.sign(&key.key);
        changes.push(Change::Write { path: environment_path(env), bytes: spec.to_file_bytes() });
    }
    // Verify what is about to be committed, exactly as `stele verify` will read it.
    let mut snapshot = Snapshot::default();
    apply_to(&mut snapshot, &changes);
    if let Err(problems) = verify_snapshot_with(&snapshot, Expiry::NotJudged) {
        anyhow::bail!("internal error: the new ledger does not verify:\n{}", super::problem_lines(&problems));
    }
    let env_list = envs.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(", ");
    let commit =
        repo.commit(&changes, &format!("stele init: ledger {ledger}\n\nenvironments: {env_list}\nroot key: {id}\n"))?;
    let base = super::base::load_base(&repo)?;
    println!("initialised ledger {ledger} in {}", repo.root().display());
    println!(
        "  root and signer of {env_list}: {} {}",
        key_list(&base.state.policy.payload, &[id]),
        crate::keys::ssh_fingerprint(&key.key.public_key())
    );
    println!("  commit {commit}");
    Ok(exit::OK)
}
