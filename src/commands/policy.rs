//! `stele policy`: show the trust policy, or write its next version (version + 1, signed by root keys).
//!
//! Every change is judged before it is committed: the ledger as it would be after the change must
//! verify, except for root signatures still to come from co-signers.

use super::base::load_base;
use super::init::default_environment;
use super::proposal::{self, Submission};
use super::{key_list, now, parse_when};
use crate::cli::{PolicyCommand, RootKeys};
use crate::exit::{self, Refused};
use crate::keys::{self, LoadedSecret};
use crate::repo::{Change, LedgerRepo};
use anyhow::Result;
use ledger_format::document::ForeignSignatures;
use ledger_format::freshness::TIMESTAMP_PATH;
use ledger_format::tree::{environment_path, Node, POLICY_PATH};
use ledger_format::types::{AgentGrant, EnvName, KeyInfo, KeyName, Policy, Role, TimestampRole};
use ledger_format::{Document, KeyId, Timestamp};
use std::path::Path;

pub fn run(repo_path: &Path, cmd: PolicyCommand) -> Result<u8> {
    match cmd {
        PolicyCommand::Show { json } => show(repo_path, json),
        change => apply(repo_path, change),
    }
}

fn show(repo_path: &Path, json: bool) -> Result<u8> {
    let repo = LedgerRepo::open(repo_path)?;
    let base = load_base(&repo)?;
    let p = &base.state.policy.payload;
    if json {
        println!("{}", serde_json::to_string_pretty(p)?);
        return Ok(exit::OK);
    }
    println!("ledger {} policy version {}", p.ledger, p.version);
    let form = match p.layout() {
        ledger_format::tree::Layout::Flat => "ledger/<env>/<seq>.json",
        ledger_format::tree::Layout::Buckets => "ledger/<env>/<seq / 1000>/<seq>.json",
    };
    println!("ledger layout: {} (entries at {form})", p.layout().name());
    if let Some(t) = p.expires_at {
        println!("expires {t}");
    }
    println!("keys (key id, name, fingerprint as `ssh-keygen -lf` shows it):");
    for (id, info) in &p.keys {
        println!("  {id}  {}  {}", info.name, keys::ssh_fingerprint(&info.public_key));
    }
    println!("root: {} of {}", p.root.threshold, key_list(p, &p.root.keys));
    for (env, role) in &p.environments {
        println!("{env}: {} of {}", role.threshold, key_list(p, &role.keys));
    }
    for (id, grant) in &p.agents {
        let envs: Vec<&str> = grant.environments.iter().map(|e| e.as_str()).collect();
        println!("agent {} reports on {}", key_list(p, &[*id]), envs.join(", "));
    }
    if let Some(t) = &p.timestamp {
        println!("timestamp: {} of {}, valid up to {} s", t.threshold, key_list(p, &t.keys), t.max_validity_seconds);
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

/// The key a command names by `--keyid`, or by `--pubkey FILE` (clap requires one of them).
fn key_id_given(keyid: Option<String>, pubkey: Option<&Path>) -> Result<KeyId> {
    Ok(match (keyid, pubkey) {
        (Some(k), _) => k.parse().map_err(Refused)?,
        (None, Some(file)) => keys::load_public(file)?.key.key_id(),
        (None, None) => unreachable!("clap requires --keyid or --pubkey"),
    })
}

/// Drops keys that no role lists any more: a withdrawn key is revoked, not kept around.
fn drop_unused_keys(policy: &mut Policy) {
    let used: Vec<KeyId> = policy
        .root
        .keys
        .iter()
        .chain(policy.environments.values().flat_map(|r| r.keys.iter()))
        .chain(policy.agents.keys())
        .chain(policy.timestamp.iter().flat_map(|t| t.keys.iter()))
        .copied()
        .collect();
    policy.keys.retain(|id, _| used.contains(id));
}

/// Seconds in a duration such as `90s`, `15m`, `24h` or `7d`.
fn parse_seconds(text: &str) -> Result<u64> {
    let zero = Timestamp::from_unix(0).expect("the epoch is a timestamp");
    Ok(parse_when(text, zero)?.unix() as u64)
}

fn apply(repo_path: &Path, cmd: PolicyCommand) -> Result<u8> {
    let now = now();
    let repo = LedgerRepo::open(repo_path)?;
    let base = load_base(&repo)?;
    let old = base.state.policy.payload.clone();
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
            let fingerprint = new.keys.get(&id).map(|k| keys::ssh_fingerprint(&k.public_key)).unwrap_or_default();
            (root, format!("add signer {who} {fingerprint} to {env}"))
        }
        PolicyCommand::RemoveSigner { env, keyid, pubkey, root } => {
            let env = parse_env(&env)?;
            let id = key_id_given(keyid, pubkey.as_deref())?;
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
        PolicyCommand::SetAgent { pubkey, env, name, root } => {
            let envs = env.iter().map(|e| parse_env(e)).collect::<Result<Vec<_>>>()?;
            let id = add_key(&mut new, &pubkey, name.as_deref())?;
            let mut envs = envs;
            envs.sort();
            envs.dedup();
            let words: Vec<&str> = envs.iter().map(|e| e.as_str()).collect();
            let words = words.join(", ");
            new.agents.insert(id, AgentGrant { environments: envs });
            (root, format!("agent {} reports on {words}", key_list(&new, &[id])))
        }
        PolicyCommand::RemoveAgent { keyid, pubkey, root } => {
            let id = key_id_given(keyid, pubkey.as_deref())?;
            let who = key_list(&old, &[id]);
            if new.agents.remove(&id).is_none() {
                return Err(Refused(format!("{who} is not an agent key of the policy")).into());
            }
            drop_unused_keys(&mut new);
            (root, format!("remove agent {who}"))
        }
        PolicyCommand::SetTimestamp { pubkey, threshold, max_validity, root } => {
            let mut ids = pubkey.iter().map(|f| add_key(&mut new, f, None)).collect::<Result<Vec<_>>>()?;
            ids.sort();
            ids.dedup();
            let max_validity_seconds = parse_seconds(&max_validity)?;
            new.timestamp = Some(TimestampRole { keys: ids.clone(), threshold, max_validity_seconds });
            drop_unused_keys(&mut new);
            // A timestamp the new role would not accept goes in the same commit (F1, SPEC.md §8.9);
            // agents then hold their state until the new keys renew it.
            if let Some(t) = &base.state.timestamp {
                if ledger_format::freshness::check_timestamp(&new, t).is_err() {
                    println!(
                        "  removes trust/timestamp.json, which the new role does not sign: agents hold their \
                         state until `stele timestamp renew` with a new timestamp key"
                    );
                    extra.push(Change::Remove { path: TIMESTAMP_PATH.into() });
                }
            }
            (root, format!("timestamp role {threshold} of {}, valid up to {max_validity}", key_list(&new, &ids)))
        }
        PolicyCommand::RemoveTimestamp { root } => {
            if new.timestamp.take().is_none() {
                return Err(Refused("the policy has no timestamp role".into()).into());
            }
            drop_unused_keys(&mut new);
            if base.state.timestamp.is_some() {
                extra.push(Change::Remove { path: TIMESTAMP_PATH.into() });
            }
            (root, "remove the timestamp role".to_owned())
        }
        PolicyCommand::SetLayout { layout, root } => {
            new.ledger_layout = layout.policy_value();
            let (from, to) = (old.layout(), new.layout());
            if from == to {
                return Err(Refused(format!("the ledger already uses the {} layout", to.name())).into());
            }
            // Every entry moves, byte for byte, in the policy's commit (SPEC.md §8.3.4).
            // The one change that reads the whole tree: every entry is rewritten.
            let snapshot = match base.head {
                Some(head) => repo.rev_snapshot(&head.to_string())?,
                None => Default::default(),
            };
            let mut moved = 0usize;
            for (env, state) in &base.state.envs {
                for seq in 1..=state.tip.as_ref().map_or(0, |t| t.seq) {
                    let (old_path, new_path) = (from.entry_path(env, seq), to.entry_path(env, seq));
                    let Some(Node::File(bytes)) = snapshot.nodes.get(old_path.as_bytes()) else {
                        return Err(anyhow::anyhow!(
                            "{old_path}: entry {seq} of {env} is not in commit {}, whose chain ends at {}",
                            base.head.map(|h| h.to_string()).unwrap_or_default(),
                            state.tip.as_ref().map_or(0, |t| t.seq)
                        ));
                    };
                    extra.push(Change::Remove { path: old_path });
                    extra.push(Change::Write { path: new_path, bytes: bytes.clone() });
                    moved += 1;
                }
            }
            (root, format!("ledger layout {} (moves {moved} entries from the {} layout)", to.name(), from.name()))
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
    let env_signer = |id: &KeyId| new.environments.values().any(|r| r.keys.contains(id));
    for s in &signers {
        let id = s.key_id();
        if !old.root.keys.contains(&id) && !new.root.keys.contains(&id) && !env_signer(&id) {
            return Err(Refused(format!(
                "key {id} is neither a root key ({}) nor a signer of any environment; it may sign nothing here",
                key_list(&old, &old.root.keys)
            ))
            .into());
        }
    }
    let root_signer = |id: KeyId| old.root.keys.contains(&id) || new.root.keys.contains(&id);
    let root_signers: Vec<&LoadedSecret> = signers.iter().filter(|s| root_signer(s.key_id())).collect();
    if root_signers.is_empty() {
        let given: Vec<KeyId> = signers.iter().map(|s| s.key_id()).collect();
        return Err(Refused(format!(
            "{} is not a root key; the policy is signed by root keys ({}); nothing was written",
            key_list(&old, &given),
            key_list(&old, &old.root.keys)
        ))
        .into());
    }
    let mut doc = Document::new(new);
    for s in root_signers {
        doc.sign(&s.key);
    }
    let new = &doc.payload;

    // R5: every spec and tip must meet the new policy in this same commit. Documents that would not
    // (signatures by keys leaving the role, or too few signatures) are carried re-signed: signatures by
    // keys no longer allowed are dropped, and the given keys sign where they may.
    let mut carried: Vec<Change> = Vec::new();
    for (env, state) in &base.state.envs {
        let Some(role) = new.env_role(env) else { continue };
        if extra.iter().any(|c| c.path() == environment_path(env)) {
            continue;
        }
        let spec_ok = state.spec.check_role(new, role, ForeignSignatures::Refuse).is_ok();
        if !spec_ok {
            let allowed = |id: &KeyId| role.keys.contains(id);
            let bytes = resigned(&state.spec, &allowed, role, &signers);
            carried.push(Change::Write { path: environment_path(env), bytes });
        }
        if let Some(tip) = base.tip_doc(&repo, env)? {
            if tip.check_role(new, role, ForeignSignatures::Refuse).is_err() {
                let allowed = |id: &KeyId| role.keys.contains(id);
                let bytes = resigned(&tip, &allowed, role, &signers);
                carried.push(Change::Write { path: new.layout().entry_path(env, tip.payload.seq), bytes });
            }
        }
    }

    let version = doc.payload.version;
    let mut changes = vec![Change::Write { path: POLICY_PATH.into(), bytes: doc.to_file_bytes() }];
    changes.extend(extra);
    let carried_paths: Vec<String> = carried.iter().map(|c| c.path().to_owned()).collect();
    changes.extend(carried);
    let mut ids: Vec<KeyId> = signers.iter().map(|s| s.key_id()).collect();
    ids.sort();
    ids.dedup();
    let signed_by: Vec<String> = ids.iter().map(|id| key_list(&doc.payload, &[*id])).collect();
    let body = if carried_paths.is_empty() {
        String::new()
    } else {
        format!("re-signed under the new policy: {}\n", carried_paths.join(", "))
    };
    let submission = Submission {
        changes,
        subject: format!("policy v{version}: {description}"),
        body,
        signed_by: signed_by.clone(),
        slug: format!("policy-v{version}"),
        name: root.proposal.clone(),
    };
    println!("policy version {version}: {description}");
    if !carried_paths.is_empty() {
        println!("  carries, re-signed under the new policy (R5): {}", carried_paths.join(", "));
    }
    let outcome = proposal::submit(&repo, &base, &submission)?;
    proposal::print_outcome(&outcome, &signed_by);
    Ok(exit::OK)
}

/// `doc` with signatures by keys `allowed` rejects dropped and, when the role's threshold is not met
/// by what is left, the given signers of `role` added.
fn resigned<T: ledger_format::document::Payload + Clone>(
    doc: &Document<T>,
    allowed: &dyn Fn(&KeyId) -> bool,
    role: &Role,
    signers: &[LoadedSecret],
) -> Vec<u8> {
    let mut doc = doc.clone();
    doc.signatures.retain(|s| allowed(&s.keyid));
    for s in signers.iter().filter(|s| role.keys.contains(&s.key_id())) {
        doc.sign(&s.key);
    }
    doc.to_file_bytes()
}
