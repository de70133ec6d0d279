//! `stele env`: show an environment's spec, or sign and commit its next version.
//!
//! `env set` reads a spec payload written by a person (typically `env show`'s output, edited), fills
//! in what it can (`type`, `ledger`, `name`, `version`), refuses anything the format would refuse
//! later (D5 schema, N3 ranges, N4 signers, N5 versions going up by one) with the file and member
//! named, and judges the ledger as it will be before committing, exactly like the other writing
//! commands. The one problem accepted is a spec still short of co-signatures.

use super::base::load_base;
use super::key_list;
use super::proposal::{self, slug, Submission};
use crate::cli::{EnvCommand, EnvSetArgs};
use crate::exit::{self, Refused};
use crate::keys::{self, LoadedSecret};
use crate::repo::{Change, LedgerRepo};
use anyhow::Result;
use ledger_format::json::{parse_strict, to_file_form};
use ledger_format::ranges::check_environment_ranges;
use ledger_format::tree::environment_path;
use ledger_format::types::{EnvName, Environment, EnvironmentType, LedgerId, Strategy};
use ledger_format::{Check, Document};
use serde_json::{json, Map, Value};
use std::path::Path;

pub fn run(repo_path: &Path, cmd: EnvCommand) -> Result<u8> {
    match cmd {
        EnvCommand::Show { env } => show(repo_path, &env),
        EnvCommand::Set(args) => set(repo_path, args),
    }
}

fn show(repo_path: &Path, env: &str) -> Result<u8> {
    let repo = LedgerRepo::open(repo_path)?;
    let base = load_base(&repo)?;
    let env: EnvName = env.parse().map_err(Refused)?;
    let spec = &base.env(&env)?.spec.payload;
    println!("{}", serde_json::to_string_pretty(spec)?);
    Ok(exit::OK)
}

fn set(repo_path: &Path, args: EnvSetArgs) -> Result<u8> {
    let env: EnvName = args.env.parse().map_err(Refused)?;
    let file = args.spec.display().to_string();
    let repo = LedgerRepo::open(repo_path)?;
    let base = load_base(&repo)?;
    let policy = &base.state.policy.payload;
    let current = &base.env(&env)?.spec;
    let role = policy.env_role(&env).expect("verified environments are declared");

    let bytes = std::fs::read(&args.spec).map_err(|e| Refused(format!("{file}: cannot read the spec: {e}")))?;
    let raw = parse_strict(&bytes).map_err(|e| {
        let (line, column) = line_and_column(&bytes, e.offset);
        Refused(format!("{file}: not strict JSON: {} at line {line}, column {column}", e.reason))
    })?;
    let completed = complete(raw, &policy.ledger, &env, current.payload.version)
        .map_err(|reason| Refused(format!("{file}: {reason}; nothing was signed")))?;
    let payload = parse_payload(completed).map_err(|reason| Refused(format!("{file}: {reason}")))?;
    check_environment_ranges(&payload).map_err(|reason| {
        Refused(format!("{file}: {} (the spec's values are out of range): {reason}; nothing was signed", Check::N3))
    })?;

    // R4: weakening a safety setting needs the root role too, so root keys may sign such a spec.
    let weakened = proposal::weakens(&current.payload, &payload);
    let signers: Vec<LoadedSecret> = args.key.iter().map(|k| keys::load_secret(k)).collect::<Result<_, _>>()?;
    for (path, signer) in args.key.iter().zip(&signers) {
        let id = signer.key_id();
        let as_root = !weakened.is_empty() && policy.root.keys.contains(&id);
        if !role.keys.contains(&id) && !as_root {
            return Err(Refused(format!(
                "{}: key {} is not a signer of {env} (signers: {}); see `stele policy add-signer`",
                path.display(),
                described_key(policy, &id),
                key_list(policy, &role.keys)
            ))
            .into());
        }
    }

    let changed = changed_members(&current.payload, &payload);
    let version = payload.version;
    let strategy = strategy_name(&payload.strategy);
    let mut doc = Document::new(payload);
    for s in &signers {
        doc.sign(&s.key);
    }
    let path = environment_path(&env);
    let new_bytes = doc.to_file_bytes();

    let mut signer_ids: Vec<_> = signers.iter().map(|s| s.key_id()).collect();
    signer_ids.sort();
    signer_ids.dedup();
    let signed_by: Vec<String> = signer_ids.iter().map(|id| key_list(policy, &[*id])).collect();
    let what = if changed.is_empty() { "nothing but the version".to_owned() } else { changed.join(", ") };
    let mut body = format!("changed: {what}\nspec: {}\n", doc.hash());
    if !weakened.is_empty() {
        body.push_str(&format!("weakens: {} (root must co-sign)\n", weakened.join(", ")));
    }
    let submission = Submission {
        changes: vec![Change::Write { path: path.clone(), bytes: new_bytes }],
        subject: format!("env({env}): set spec version {version} ({strategy})"),
        body,
        signed_by: signed_by.clone(),
        slug: slug(&[env.as_str(), "spec", &format!("v{version}")]),
        name: args.proposal.clone(),
    };
    println!("{env}: spec version {version} ({strategy}) for {path}; changed: {what}");
    if !weakened.is_empty() {
        println!(
            "  this weakens {} of {env}: a threshold of the root role ({} of {}) must sign it too (SPEC.md, N6)",
            weakened.join(", "),
            policy.root.threshold,
            key_list(policy, &policy.root.keys)
        );
    }
    let outcome = proposal::submit(&repo, &base, &submission)?;
    proposal::print_outcome(&outcome, &signed_by);
    Ok(exit::OK)
}

/// Fills in `type`, `ledger`, `name` and `version` where they are missing, and refuses them, naming
/// the member, where they are present but wrong. A `version` equal to the current one means "edited
/// from the current spec" (what `env show` prints) and becomes the next; one below it means the file
/// was edited from an older spec; one that skips ahead could never be accepted by the history
/// verifier, where spec versions go up by one (N5, SPEC.md §8).
fn complete(raw: Value, ledger: &LedgerId, env: &EnvName, current: u64) -> Result<Value, String> {
    let Value::Object(mut members) = raw else {
        return Err("the spec must be a JSON object (see examples/environments/)".into());
    };
    let next = current + 1;
    members.entry("type").or_insert_with(|| json!(EnvironmentType::VALUE));
    expect_string(&mut members, "ledger", ledger.as_str(), "the ledger's id")?;
    expect_string(&mut members, "name", env.as_str(), "--env")?;
    match members.get("version") {
        None => {}
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v == current || v == next => {}
            Some(v) if v < current => {
                return Err(format!(
                    "version is {v}, but {env}'s spec is already at version {current}; the file was edited from an \
                     older spec (start again from `stele env show --env {env}`, or leave version out)"
                ))
            }
            Some(v) => {
                return Err(format!(
                    "version is {v}, but the next spec version of {env} is {next} (versions go up by one, {})",
                    Check::N5
                ))
            }
            None => return Err("version must be an integer".into()),
        },
        Some(other) => return Err(format!("version must be an integer, not {other}")),
    }
    members.insert("version".into(), json!(next));
    Ok(Value::Object(members))
}

/// Inserts `member` = `expected` when missing; refuses a different value.
fn expect_string(members: &mut Map<String, Value>, member: &str, expected: &str, source: &str) -> Result<(), String> {
    match members.get(member) {
        None => {
            members.insert(member.into(), json!(expected));
            Ok(())
        }
        Some(Value::String(s)) if s == expected => Ok(()),
        Some(other) => {
            Err(format!("{member} is {other}, but {source} is {expected:?} (leave {member} out to fill it in)"))
        }
    }
}

/// Parses a completed payload with the format's own document parser (D1-D5), so the schema errors are
/// exactly the verifier's, with the path of the offending member.
fn parse_payload(value: Value) -> Result<Environment, String> {
    let envelope = to_file_form(&json!({ "payload": value, "signatures": [] }))
        .map_err(|e| format!("the spec cannot be rendered canonically: {e}"))?;
    Document::<Environment>::parse(&envelope).map(|doc| doc.payload).map_err(|e| {
        format!("not a valid environment spec ({}): {}", e.check, e.reason.trim_start_matches("payload: "))
    })
}

/// The top-level members whose values differ between `old` and `new`, `version` aside.
fn changed_members(old: &Environment, new: &Environment) -> Vec<String> {
    let (Ok(Value::Object(old)), Ok(Value::Object(new))) = (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return Vec::new();
    };
    let mut names: Vec<&String> = old.keys().chain(new.keys()).filter(|k| *k != "version").collect();
    names.sort();
    names.dedup();
    names.into_iter().filter(|k| old.get(*k) != new.get(*k)).cloned().collect()
}

fn strategy_name(strategy: &Strategy) -> &'static str {
    match strategy {
        Strategy::Rolling { .. } => "rolling",
        Strategy::BlueGreen { .. } => "blue_green",
        Strategy::Canary { .. } => "canary",
    }
}

/// A key for a refusal: its recorded name when the policy lists it, and always its full id.
fn described_key(policy: &ledger_format::types::Policy, id: &ledger_format::KeyId) -> String {
    match policy.key_name(id) {
        Some(name) => format!("{name} ({id})"),
        None => format!("{id} (not in the policy)"),
    }
}

/// 1-based line and column of byte `offset`, for pointing at a JSON error in a file a person wrote.
fn line_and_column(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = before.len() - before.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completed(raw: Value, current: u64) -> Result<Value, String> {
        complete(raw, &"demo".parse().unwrap(), &"staging".parse().unwrap(), current)
    }

    #[test]
    fn version_is_the_next_whether_left_out_current_or_next() {
        for (given, current, expected) in [
            (None, 1, Ok(2)),
            (Some(json!(3)), 3, Ok(4)),
            (Some(json!(4)), 3, Ok(4)),
            (Some(json!(2)), 3, Err("older")),
        ]
        .into_iter()
        .chain([(Some(json!(5)), 3, Err("go up by one")), (Some(json!("4")), 3, Err("integer"))])
        {
            let mut raw = Map::new();
            if let Some(v) = &given {
                raw.insert("version".into(), v.clone());
            }
            match (completed(Value::Object(raw), current), expected) {
                (Ok(v), Ok(n)) => assert_eq!(v["version"], n, "{given:?} at {current}"),
                (Err(e), Err(word)) => assert!(e.contains(word), "{given:?} at {current}: {e}"),
                (got, want) => panic!("{given:?} at {current}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn type_ledger_and_name_are_filled_in_or_must_match() {
        let v = completed(json!({}), 1).unwrap();
        assert_eq!(
            (&v["type"], &v["ledger"], &v["name"]),
            (&json!("stele.environment/v1"), &json!("demo"), &json!("staging"))
        );
        let kept = completed(json!({"type": "something/else"}), 1).unwrap();
        assert_eq!(kept["type"], "something/else", "a wrong type is left for the schema to refuse");
        for (member, value) in [("ledger", json!("other")), ("name", json!("prod")), ("name", json!(7))] {
            let err = completed(json!({ member: value }), 1).unwrap_err();
            assert!(err.starts_with(&format!("{member} is {value}")), "{err}");
        }
        assert!(completed(json!([]), 1).unwrap_err().contains("JSON object"));
    }

    #[test]
    fn json_errors_point_at_line_and_column() {
        let text = b"{\n  \"a\": 1,\n  \"a\": 2\n}";
        let offset = parse_strict(text).unwrap_err().offset;
        assert_eq!(line_and_column(text, offset).0, 3);
        assert_eq!(line_and_column(b"abc", 0), (1, 1));
        assert_eq!(line_and_column(b"a\nbc", 3), (2, 2));
    }
}
