//! `stele audit`: replay the whole first-parent history offline, verify every step, and print either
//! the timeline (a row per promotion, co-signature, rollback, restore, spec and policy change, refused
//! and recovering commit, with who signed each, then the open proposals) or, with `--at`, the answer
//! to "what was each environment's target at that time", beside what the status branch says was
//! observed running then.
//!
//! Owns: gathering what the audit prints (the verified steps from `replay`, the policies in force
//! along the way, merge facts and proposal branches read from Git, the status branch's reports) and
//! printing it. Must not judge anything itself: verdicts come from `ledger_format` through `replay`.
//!
//! Exit codes: 0 when every commit verified, 1 when any commit was refused (the refused and the
//! recovering commits are still listed). An open proposal is information, never a failure.

mod answer;
mod git;
mod proposals;
mod time;
mod timeline;

use super::trust_anchor;
use crate::cli::AuditArgs;
use crate::exit::{self, Refused};
use crate::replay::{replay, Outcome};
use crate::source::{is_remote, GitSource, LedgerSource};
use crate::status::{self, EnvStatus};
use anyhow::Result;
use ledger_format::document::{Document, Payload};
use ledger_format::history::{Action, Event, TrustAnchor};
use ledger_format::types::{EnvName, Policy};
use ledger_format::{KeyId, Timestamp};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;

pub use time::parse_at;

/// The status branch whose reports the audit shows beside the ledger's answers.
const STATUS_BRANCH: &str = "stele/status";

pub fn run(repo: &Path, args: AuditArgs) -> Result<u8> {
    let location = repo.to_str().ok_or_else(|| Refused(format!("{}: not UTF-8", repo.display())))?.to_owned();
    let only_env: Option<EnvName> =
        args.env.as_deref().map(str::parse).transpose().map_err(|e| Refused(format!("--env: {e}")))?;
    let at: Option<Timestamp> = args.at.as_deref().map(|t| parse_at("--at", t)).transpose().map_err(Refused)?;
    let pinned = trust_anchor(&args.trust)?;
    let temp;
    let cache = match (&args.cache_dir, is_remote(&location)) {
        (Some(dir), _) => dir.clone(),
        (None, true) => {
            temp = tempfile::tempdir()?;
            temp.path().to_owned()
        }
        (None, false) => repo.to_owned(),
    };
    let mut source = GitSource::open(&location, args.branch.as_deref(), &cache)?;
    let head = source.refresh()?;
    let anchor = pinned.clone().unwrap_or(TrustAnchor::UnpinnedTrustGenesisAsFound);
    let show_progress = std::io::stderr().is_terminal() && !args.json;
    let mut last_shown = 0;
    let outcome = replay(&source, None, head, &anchor, &mut |done, total| {
        if show_progress && (done * 100 / total.max(1) > last_shown || done == total) {
            last_shown = done * 100 / total.max(1);
            eprint!("\rreplaying {done}/{total} commits");
            if done == total {
                eprintln!();
            }
        }
    })?;
    let Some(verified) = &outcome.verified else {
        for r in &outcome.refusals {
            for p in &r.problems {
                eprintln!("REFUSED genesis commit {}: {p}", r.commit.id);
            }
        }
        if outcome.refusals.is_empty() {
            eprintln!("{location}: no commit on the first-parent history holds {}", ledger_format::tree::POLICY_PATH);
        }
        return Ok(exit::VERIFY_FAILED);
    };
    if let Some(env) = &only_env {
        if !verified.state.policy.payload.environments.contains_key(env) {
            return Err(Refused(format!("--env {env}: the ledger's policy declares no such environment")).into());
        }
    }
    let shown = if is_remote(&location) {
        location.clone()
    } else {
        source.repository().workdir().unwrap_or(source.repository().path()).display().to_string()
    };
    let git = git::Facts::read(source.repository(), head, &outcome)?;
    let mut observed = BTreeMap::new();
    for env in verified.state.policy.payload.environments.keys() {
        observed.insert(env.clone(), observations(source.repository(), env));
    }
    let audit = Audit {
        location: &shown,
        branch: source.branch(),
        head,
        pinned: pinned.is_some(),
        policy: &verified.state.policy.payload,
        outcome: &outcome,
        only: only_env.as_ref(),
        observed: &observed,
        git: &git,
    };
    match (at, args.json) {
        (Some(at), true) => print_json(&audit.header_json(), answer::json(&audit, at, args.at.as_deref())),
        (Some(at), false) => answer::print(&audit, at, args.at.as_deref()),
        (None, true) => {
            let open = proposals::open(source.repository(), &audit)?;
            print_json(&audit.header_json(), timeline::json(&audit, &open));
        }
        (None, false) => {
            let open = proposals::open(source.repository(), &audit)?;
            timeline::print(&audit, &open);
        }
    }
    Ok(if outcome.refusals.is_empty() { exit::OK } else { exit::VERIFY_FAILED })
}

fn print_json(header: &serde_json::Value, body: serde_json::Value) {
    let mut all = header.clone();
    if let (Some(all), serde_json::Value::Object(body)) = (all.as_object_mut(), body) {
        all.extend(body);
    }
    println!("{}", serde_json::to_string_pretty(&all).expect("JSON values serialize"));
}

/// Every report the status branch holds for `env`, oldest first, with the time of the status commit
/// that recorded it. Empty (with a warning) when the branch cannot be read.
fn observations(repo: &git2::Repository, env: &EnvName) -> Vec<(Timestamp, EnvStatus)> {
    match status::history(repo, STATUS_BRANCH, env) {
        Ok(mut h) => {
            h.reverse();
            h
        }
        Err(e) => {
            eprintln!("warning: the status branch cannot be read, so what was observed is not shown: {e}");
            Vec::new()
        }
    }
}

/// Everything an audit prints, whichever the form.
pub(crate) struct Audit<'a> {
    pub location: &'a str,
    pub branch: Option<&'a str>,
    pub head: git2::Oid,
    pub pinned: bool,
    /// The policy at the last verified commit.
    pub policy: &'a Policy,
    pub outcome: &'a Outcome,
    pub only: Option<&'a EnvName>,
    /// Per environment, the status branch's reports, oldest first.
    pub observed: &'a BTreeMap<EnvName, Vec<(Timestamp, EnvStatus)>>,
    pub git: &'a git::Facts,
}

impl Audit<'_> {
    /// The environments shown: every one of the final policy, or `--env`.
    pub fn envs(&self) -> impl Iterator<Item = &EnvName> {
        self.policy.environments.keys().filter(|e| self.only.is_none_or(|o| o == *e))
    }

    /// The first lines of the human output.
    pub fn print_header(&self) {
        println!(
            "ledger {} — {}, head {}, {} commits replayed",
            self.policy.ledger,
            self.location,
            short(&self.head.to_string()),
            self.outcome.commits_seen
        );
        if !self.pinned {
            println!("trust root NOT PINNED: the genesis policy was taken as found (pin it with --trust-root or --trust-root-hash)");
        }
    }

    /// The fields every JSON form starts with.
    pub fn header_json(&self) -> serde_json::Value {
        let outcome = self.outcome;
        json!({
            "ok": outcome.refusals.is_empty(),
            "ledger": self.policy.ledger,
            "source": self.location,
            "branch": self.branch,
            "head": self.head.to_string(),
            "trust_root_pinned": self.pinned,
            "commits": outcome.commits_seen,
            "refusals": outcome.refusals.iter().map(|r| json!({
                "commit": r.commit.id,
                "time": r.commit.time,
                "author": r.commit.author,
                "summary": r.commit.summary,
                "problems": r.problems,
            })).collect::<Vec<_>>(),
            "recovered": outcome.recovered.iter().map(|(a, b)| json!({"refused": a, "recovered_at": b})).collect::<Vec<_>>(),
        })
    }

    /// A key as a person reads it: its name in the policy in force at `version`, or, for a key that
    /// policy does not list (an entry signed before the key was removed), its name in the latest
    /// earlier policy that did, else in any later one; the key id's first 12 digits when no policy
    /// ever named it.
    pub fn key_name(&self, version: u64, id: &KeyId) -> Option<String> {
        let policies = &self.git.policies;
        policies
            .get(&version)
            .and_then(|p| p.key_name(id))
            .or_else(|| policies.range(..version).rev().find_map(|(_, p)| p.key_name(id)))
            .or_else(|| policies.range(version..).find_map(|(_, p)| p.key_name(id)))
            .or_else(|| self.policy.key_name(id))
            .map(ToString::to_string)
    }

    pub fn key_display(&self, version: u64, id: &KeyId) -> String {
        let hex = id.to_hex();
        match self.key_name(version, id) {
            Some(name) => format!("{name} ({})", &hex[..12]),
            None => hex[..12].to_owned(),
        }
    }

    pub fn keys_display(&self, version: u64, ids: &[KeyId]) -> String {
        if ids.is_empty() {
            return "nobody".into();
        }
        ids.iter().map(|id| self.key_display(version, id)).collect::<Vec<_>>().join(", ")
    }

    pub fn keys_json(&self, version: u64, ids: &[KeyId]) -> Vec<serde_json::Value> {
        ids.iter().map(|id| json!({"keyid": id, "name": self.key_name(version, id)})).collect()
    }
}

/// The keys of `policy` (those `among` accepts) whose signatures on `doc` verify, sorted.
pub(crate) fn valid_signers<T: Payload>(
    doc: &Document<T>,
    policy: &Policy,
    among: impl Fn(&KeyId) -> bool,
) -> Vec<KeyId> {
    let mut out: Vec<KeyId> = Vec::new();
    for s in &doc.signatures {
        let Some(info) = policy.keys.get(&s.keyid) else { continue };
        if among(&s.keyid) && !out.contains(&s.keyid) && info.public_key.verify(doc.pae(), &s.sig.0).is_ok() {
            out.push(s.keyid);
        }
    }
    out.sort();
    out
}

pub(crate) fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// The word for an action, in the timeline and in JSON.
pub(crate) fn action_word(a: &Action) -> &'static str {
    match a {
        Action::Genesis => "genesis",
        Action::Promote => "promote",
        Action::CoSign => "co-sign",
        Action::Rollback => "rollback",
        Action::Withdraw => "withdraw",
        Action::Restore => "restore",
        Action::PolicyChange => "policy",
        Action::SpecChange => "spec",
    }
}

/// How a target took effect, as the `--at` answer says it.
pub(crate) fn how_word(a: &Action) -> &'static str {
    match a {
        Action::Genesis | Action::Promote => "promotion",
        Action::CoSign => "co-signature",
        Action::Rollback => "rollback",
        Action::Restore => "restore",
        Action::Withdraw => "withdrawal",
        Action::PolicyChange => "policy change",
        Action::SpecChange => "spec change",
    }
}

/// The events of `env`, each with the report of the commit that made it, in history order.
pub(crate) fn env_events<'a>(
    outcome: &'a Outcome,
    env: &'a EnvName,
) -> impl Iterator<Item = (&'a crate::replay::CommitReport, &'a Event)> + 'a {
    outcome
        .reports
        .iter()
        .flat_map(move |r| r.events.iter().filter(move |e| e.env.as_ref() == Some(env)).map(move |e| (r, e)))
}
