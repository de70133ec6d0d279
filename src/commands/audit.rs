//! `stele audit`: replay the whole first-parent history offline, verify every step, and print what
//! each environment's target was, when, who signed it, and how it changed.

use super::trust_anchor;
use crate::cli::AuditArgs;
use crate::exit::{self, Refused};
use crate::replay::{replay, CommitReport, Outcome};
use crate::source::{is_remote, GitSource, LedgerSource};
use crate::status::{self, Phase};
use anyhow::Result;
use ledger_format::document::display_key;
use ledger_format::history::{Action, Event, TrustAnchor};
use ledger_format::types::{EnvName, Policy};
use ledger_format::{KeyId, Timestamp};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;

pub fn run(repo: &Path, args: AuditArgs) -> Result<u8> {
    let location = repo.to_str().ok_or_else(|| Refused(format!("{}: not UTF-8", repo.display())))?.to_owned();
    let only_env: Option<EnvName> = args.env.as_deref().map(str::parse).transpose().map_err(Refused)?;
    let at: Option<Timestamp> = args.at.as_deref().map(str::parse).transpose().map_err(Refused)?;
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
    let policy = &verified.state.policy.payload;
    let shown = if is_remote(&location) {
        location.clone()
    } else {
        source.repository().workdir().unwrap_or(source.repository().path()).display().to_string()
    };
    let location = shown;
    let mut observed = BTreeMap::new();
    for env in verified.state.policy.payload.environments.keys() {
        observed.insert(env.clone(), observations(source.repository(), env));
    }
    let view = View {
        observed: &observed,
        location: &location,
        branch: args.branch.as_deref(),
        head,
        pinned: pinned.is_some(),
        policy,
        outcome: &outcome,
        only: only_env.as_ref(),
        at,
    };
    if args.json {
        view.print_json();
    } else {
        view.print_human();
    }
    Ok(if outcome.refusals.is_empty() { exit::OK } else { exit::VERIFY_FAILED })
}

/// What the agents reported per target generation, from the status branch (`stele/status`, local or
/// `origin/`): when it first ran healthy, or that its health gate failed. Empty without a status branch.
fn observations(repo: &git2::Repository, env: &EnvName) -> BTreeMap<u64, Observation> {
    let mut out = BTreeMap::new();
    let history = match status::history(repo, "stele/status", env) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("warning: the status branch cannot be read, so observed generations are not shown: {e}");
            return out;
        }
    };
    for (when, s) in history.into_iter().rev() {
        match s.phase {
            Phase::Healthy => {
                out.entry(s.observed_generation).or_insert(Observation { converged: Some(when), degraded: None });
            }
            Phase::Degraded => {
                out.entry(s.target_generation).or_insert(Observation { converged: None, degraded: Some(when) });
            }
            Phase::Progressing | Phase::Stalled => {}
        }
    }
    out
}

/// One generation as the agent saw it.
#[derive(Clone, Copy, Debug)]
struct Observation {
    converged: Option<Timestamp>,
    degraded: Option<Timestamp>,
}

impl Observation {
    fn describe(o: Option<&Observation>) -> String {
        match o {
            Some(Observation { converged: Some(t), .. }) => format!("ran {t}"),
            Some(Observation { degraded: Some(t), .. }) => format!("FAILED {t}"),
            _ => "-".into(),
        }
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

fn names(policy: &Policy, ids: &[KeyId]) -> String {
    if ids.is_empty() {
        return "-".into();
    }
    ids.iter().map(|id| display_key(policy, id)).collect::<Vec<_>>().join(", ")
}

fn action_word(a: &Action) -> &'static str {
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

/// Events of `env`, each with the commit that made it.
fn env_events<'a>(outcome: &'a Outcome, env: &'a EnvName) -> impl Iterator<Item = (&'a CommitReport, &'a Event)> + 'a {
    outcome
        .reports
        .iter()
        .flat_map(move |r| r.events.iter().filter(move |e| e.env.as_ref() == Some(env)).map(move |e| (r, e)))
}

/// The last event of `env` at or before `at`, by commit time.
fn target_at<'a>(outcome: &'a Outcome, env: &'a EnvName, at: Timestamp) -> Option<(&'a CommitReport, &'a Event)> {
    env_events(outcome, env).filter(|(r, _)| r.commit.time.is_some_and(|t| t <= at)).last()
}

fn detail(policy: &Policy, report: &CommitReport, e: &Event) -> String {
    match e.action {
        Action::Rollback | Action::Withdraw => {
            let removed = e.entry.as_ref().map(|l| format!("{} (seq {})", l.version, l.seq)).unwrap_or_default();
            let signed = match (&e.revert_signed_by, &report.commit.ssh_signature) {
                (Some(k), _) => format!("SSH-signed by {}", display_key(policy, k)),
                (None, Some(_)) => "SSH signature not by an authorised key".into(),
                (None, None) => "unsigned".into(),
            };
            format!("reverted {removed}; committed by {}, {signed}", report.commit.author)
        }
        _ => e.entry.as_ref().map(|l| format!("signed by {}", names(policy, &l.signed_by))).unwrap_or_default(),
    }
}

/// What an audit prints, whichever the format.
struct View<'a> {
    location: &'a str,
    branch: Option<&'a str>,
    head: git2::Oid,
    pinned: bool,
    policy: &'a Policy,
    outcome: &'a Outcome,
    only: Option<&'a EnvName>,
    at: Option<Timestamp>,
    observed: &'a BTreeMap<EnvName, BTreeMap<u64, Observation>>,
}

impl View<'_> {
    fn print_human(&self) {
        let View { location, head, pinned, policy, outcome, only, at, observed, .. } = *self;
        println!(
            "ledger {} — {location}, head {}, {} commits replayed",
            policy.ledger,
            short(&head.to_string()),
            outcome.commits_seen
        );
        if !pinned {
            println!("trust root NOT PINNED: the genesis policy was taken as found (pin it with --trust-root or --trust-root-hash)");
        }
        let envs: Vec<&EnvName> = policy.environments.keys().filter(|e| only.is_none_or(|o| o == *e)).collect();
        for env in &envs {
            println!("\n{env}");
            println!(
                "  {:<4} {:<12} {:<20} {:<9} {:<12} {:<14} {:<27} DETAIL",
                "GEN", "COMMIT", "TIME (UTC)", "ACTION", "TARGET", "IMAGE", "OBSERVED (stele/status)"
            );
            for (report, e) in env_events(outcome, env) {
                let (version, image) = match &e.target {
                    Some(t) => (t.version.to_string(), t.image.digest().to_hex()[..12].to_owned()),
                    None => ("-".into(), "-".into()),
                };
                println!(
                    "  {:<4} {:<12} {:<20} {:<9} {:<12} {:<14} {:<27} {}",
                    e.generation,
                    short(&report.commit.id),
                    report.commit.time.map(|t| t.to_string()).unwrap_or_default(),
                    action_word(&e.action),
                    version,
                    image,
                    Observation::describe(observed.get(*env).and_then(|o| o.get(&e.generation))),
                    detail(policy, report, e)
                );
            }
            if let Some(at) = at {
                match target_at(outcome, env, at) {
                    Some((report, e)) => match &e.target {
                        Some(t) => println!(
                            "  at {at}: {env} ran {} (seq {}, blake3:{}), generation {}, since commit {} at {}",
                            t.version,
                            t.seq,
                            t.image.digest(),
                            e.generation,
                            short(&report.commit.id),
                            report.commit.time.map(|t| t.to_string()).unwrap_or_default()
                        ),
                        None => println!("  at {at}: {env} had no target"),
                    },
                    None => println!("  at {at}: {env} had no target yet"),
                }
            }
        }
        let policy_events: Vec<_> = outcome
            .reports
            .iter()
            .flat_map(|r| r.events.iter().filter(|e| e.env.is_none()).map(move |e| (r, e)))
            .collect();
        if only.is_none() && !policy_events.is_empty() {
            println!("\npolicy");
            for (r, e) in policy_events {
                println!(
                    "  v{:<3} {:<12} {:<20} {} — {}",
                    e.policy_version,
                    short(&r.commit.id),
                    r.commit.time.map(|t| t.to_string()).unwrap_or_default(),
                    action_word(&e.action),
                    r.commit.summary
                );
            }
        }
        for r in &outcome.refusals {
            for p in &r.problems {
                println!("\nREFUSED commit {} ({}): {p}", short(&r.commit.id), r.commit.summary);
            }
        }
        for (bad, good) in &outcome.recovered {
            println!(
                "recovered at commit {}: it verifies as one step from the last good commit, past refused {}",
                short(good),
                short(bad)
            );
        }
        if outcome.refusals.is_empty() {
            println!("\nOK: every step verified");
        } else {
            println!(
                "\nFAILED: {} refused commit{}",
                outcome.refusals.len(),
                if outcome.refusals.len() == 1 { "" } else { "s" }
            );
        }
    }

    fn print_json(&self) {
        let View { location, branch, head, pinned, policy, outcome, only, at, observed } = *self;
        let key_json =
            |ids: &[KeyId]| ids.iter().map(|id| json!({"keyid": id, "name": policy.key_name(id)})).collect::<Vec<_>>();
        let event_json = |r: &CommitReport, e: &Event| {
            let seen = e.env.as_ref().and_then(|env| observed.get(env)).and_then(|o| o.get(&e.generation));
            json!({
                "generation": e.generation,
                "commit": r.commit.id,
                "time": r.commit.time,
                "author": r.commit.author,
                "summary": r.commit.summary,
                "action": action_word(&e.action),
                "target": e.target,
                "entry": e.entry,
                "signed_by": e.entry.as_ref().map(|l| key_json(&l.signed_by)),
                "revert": matches!(e.action, Action::Rollback | Action::Withdraw).then(|| json!({
                    "commit_signed": r.commit.ssh_signature.is_some(),
                    "signed_by": e.revert_signed_by.map(|k| key_json(&[k])),
                })),
                "policy_version": e.policy_version,
                // From the status branch: when an agent first reported this generation healthy, or
                // that its health gate failed.
                "observed": seen.map(|o| json!({"converged_at": o.converged, "degraded_at": o.degraded})),
            })
        };
        let envs: serde_json::Map<String, serde_json::Value> = policy
            .environments
            .keys()
            .filter(|e| only.is_none_or(|o| o == *e))
            .map(|env| {
                let events: Vec<_> = env_events(outcome, env).map(|(r, e)| event_json(r, e)).collect();
                let at_answer = at.map(|t| target_at(outcome, env, t).map(|(r, e)| event_json(r, e)));
                (env.to_string(), json!({"events": events, "at": at_answer}))
            })
            .collect();
        let policy_events: Vec<_> = outcome
            .reports
            .iter()
            .flat_map(|r| r.events.iter().filter(|e| e.env.is_none()).map(move |e| event_json(r, e)))
            .collect();
        println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "ok": outcome.refusals.is_empty(),
            "ledger": policy.ledger,
            "source": location,
            "branch": branch,
            "head": head.to_string(),
            "trust_root_pinned": pinned,
            "commits": outcome.commits_seen,
            "at": at,
            "environments": envs,
            "policy": policy_events,
            "refusals": outcome.refusals.iter().map(|r| json!({"commit": r.commit.id, "summary": r.commit.summary, "problems": r.problems})).collect::<Vec<_>>(),
            "recovered": outcome.recovered.iter().map(|(a, b)| json!({"refused": a, "recovered_at": b})).collect::<Vec<_>>(),
        }))
        .expect("JSON values serialize")
    );
    }
}
