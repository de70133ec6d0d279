//! `stele audit --at TIME`: the answer, not the timeline. Per environment: the target in force at
//! TIME (the last verified step at or before TIME, by commit time, that set it), who signed it, the
//! commit and time it took effect and how (promotion, rollback, restore); and, as a separate claim
//! read from the status refs, what a verified agent observed running then. Unverified observations
//! are never the answer: they are listed apart, labelled with the check and the reason.

use super::{env_events, how_word, short, Audit};
use crate::replay::CommitReport;
use crate::status::{Judged, Label};
use ledger_format::history::{Action, Event};
use ledger_format::types::EnvName;
use ledger_format::Timestamp;
use serde_json::{json, Value};

/// What the ledger says about one environment at a time.
enum Answer<'a> {
    /// The ledger's first commit is later than the time asked about.
    NoLedgerYet { genesis: &'a CommitReport },
    /// The environment was declared later.
    NotDeclaredYet { declared: &'a CommitReport },
    /// Declared, but no release had taken effect.
    NothingTargeted,
    /// The step that set the target in force then.
    Target { report: &'a CommitReport, event: &'a Event },
}

fn answer<'a>(audit: &Audit<'a>, env: &'a EnvName, at: Timestamp) -> Answer<'a> {
    let before = |r: &CommitReport| r.commit.time.is_some_and(|t| t <= at);
    if let Some(genesis) = audit.outcome.reports.first() {
        if !before(genesis) {
            return Answer::NoLedgerYet { genesis };
        }
    }
    // Declared by the genesis policy, or by the first spec of it a later step added.
    let at_genesis = audit.git.policies.first_key_value().is_some_and(|(_, p)| p.environments.contains_key(env));
    let mut declared = None;
    let mut generation = 0;
    let mut found = None;
    for (report, event) in env_events(audit.outcome, env) {
        if !at_genesis && event.action == Action::SpecChange {
            declared.get_or_insert(report);
        }
        // The target generation goes up by one exactly when the target changes (SPEC.md §8.5).
        let sets_target = event.generation != generation;
        generation = event.generation;
        if sets_target && before(report) {
            found = Some((report, event));
        }
    }
    match (found, declared) {
        (Some((report, event)), _) => Answer::Target { report, event },
        (None, Some(declared)) if !before(declared) => Answer::NotDeclaredYet { declared },
        _ => Answer::NothingTargeted,
    }
}

/// The last verified observation of `env` recorded at or before `at`.
fn observed_at<'a>(audit: &Audit<'a>, env: &EnvName, at: Timestamp) -> Option<(Timestamp, &'a Judged)> {
    audit.observed.get(env)?.iter().rev().find_map(|j| {
        let t = j.candidate.recorded_at?;
        (t <= at && j.status().is_some()).then_some((t, j))
    })
}

/// The unverified observations of `env` recorded at or before `at`, newest first.
fn unverified_by<'a>(audit: &Audit<'a>, env: &EnvName, at: Timestamp) -> Vec<&'a Judged> {
    let list = audit.unverified.get(env).map(Vec::as_slice).unwrap_or_default();
    list.iter().rev().filter(|j| j.candidate.recorded_at.is_none_or(|t| t <= at)).collect()
}

/// The agent's `name (keyid)` of a verified observation.
fn agent_of(j: &Judged) -> &str {
    match &j.label {
        Label::Verified { agent_display, .. } => agent_display,
        Label::Unverified { .. } => "",
    }
}

fn when(r: &CommitReport) -> String {
    r.commit.time.map(|t| t.to_string()).unwrap_or_else(|| "?".into())
}

pub fn print(audit: &Audit, at: Timestamp, asked: Option<&str>) {
    audit.print_header();
    match asked {
        Some(text) if text != at.to_string() => println!("\nat {at} (UTC; asked: {text})"),
        _ => println!("\nat {at} (UTC)"),
    }
    for env in audit.envs() {
        println!("\n{env}");
        match answer(audit, env, at) {
            Answer::NoLedgerYet { genesis } => println!(
                "  nothing was targeted yet: the ledger did not exist (its first commit {} is from {})",
                short(&genesis.commit.id),
                when(genesis)
            ),
            Answer::NotDeclaredYet { declared } => println!(
                "  nothing was targeted yet: {env} was declared later (commit {} at {})",
                short(&declared.commit.id),
                when(declared)
            ),
            Answer::NothingTargeted => println!("  nothing was targeted yet: no release of {env} had taken effect"),
            Answer::Target { report, event } => print_target(audit, report, event),
        }
        match observed_at(audit, env, at) {
            Some((recorded, j)) => {
                let s = j.status().expect("observed_at keeps readable reports");
                let running = s.running.as_ref().map_or("nothing".into(), |r| format!("{} (seq {})", r.version, r.seq));
                println!("  observed     (VERIFIED claim by agent {}, read from {})", agent_of(j), j.candidate.refname);
                println!(
                    "               {}: running {running}, generation {} of target generation {}; recorded {recorded} by {}",
                    s.phase, s.observed_generation, s.target_generation, s.agent
                );
                if !s.message.is_empty() {
                    println!("               \"{}\"", s.message);
                }
            }
            None => println!("  observed     no verified observation recorded by then"),
        }
        let unverified = unverified_by(audit, env, at);
        for j in unverified.iter().take(3) {
            println!("  UNVERIFIED   {} (not counted)", super::unverified_words(j));
        }
        if unverified.len() > 3 {
            println!("               ... and {} more unverified (see --json)", unverified.len() - 3);
        }
    }
    if !audit.outcome.refusals.is_empty() {
        println!(
            "\nFAILED: {} refused commit(s); the answer follows the verified commits only (run without --at for the timeline)",
            audit.outcome.refusals.len()
        );
    }
}

fn print_target(audit: &Audit, report: &CommitReport, event: &Event) {
    let v = event.policy_version;
    let Some(t) = &event.target else {
        println!(
            "  no target: commit {} at {} removed the last entry ({})",
            short(&report.commit.id),
            when(report),
            how_word(&event.action)
        );
        return;
    };
    println!("  target       {} (seq {}), generation {}", t.version, t.seq, event.generation);
    println!("  image        blake3:{}", t.image.digest());
    println!("  signed by    {}", audit.keys_display(v, &t.signed_by));
    println!(
        "  took effect  by {} at commit {} ({}) \"{}\"",
        how_word(&event.action),
        short(&report.commit.id),
        when(report),
        report.commit.summary
    );
    let facts = audit.git.commit(&report.commit.id);
    if let Some(from) = &facts.merged_from {
        println!("               merged from {}", short(from));
    }
    if let Some(p) = &facts.proposal {
        println!("               proposal stele/proposals/{p}");
    }
    if matches!(event.action, Action::Rollback | Action::Withdraw) {
        let removed = event.entry.as_ref().map(|l| format!("{} (seq {})", l.version, l.seq)).unwrap_or_default();
        let ssh = match &event.revert_signed_by {
            Some(k) => format!("SSH-signed by {}", audit.key_display(v, k)),
            None => "not SSH-signed by a key of the environment's role".into(),
        };
        println!("               reverted {removed}; the revert was {ssh}, committed by {}", report.commit.author);
    }
}

/// The answer as JSON: `at`, and per environment `at` (the target answer, null when nothing was
/// targeted yet, with `note` saying why), `observed` (the last verified claim by then, or null) and
/// `unverified` (what else was recorded by then, newest first, each with its check and reason).
pub fn json(audit: &Audit, at: Timestamp, asked: Option<&str>) -> Value {
    let envs: serde_json::Map<String, Value> = audit
        .envs()
        .map(|env| {
            let (target, note) = match answer(audit, env, at) {
                Answer::NoLedgerYet { genesis } => {
                    (Value::Null, Some(format!("the ledger did not exist yet (first commit {})", genesis.commit.id)))
                }
                Answer::NotDeclaredYet { declared } => {
                    (Value::Null, Some(format!("{env} was declared later (commit {})", declared.commit.id)))
                }
                Answer::NothingTargeted => (Value::Null, Some(format!("no release of {env} had taken effect"))),
                Answer::Target { report, event } => (target_json(audit, report, event), None),
            };
            let observed = observed_at(audit, env, at).map(|(recorded, j)| {
                let s = j.status().expect("observed_at keeps readable reports");
                let label = j.label.json();
                json!({
                    "source": j.candidate.refname,
                    "ref": j.candidate.refname,
                    "status_commit": j.candidate.commit,
                    "signature_verified": true,
                    "verified": true,
                    "agent_key": label["agent_key"],
                    "recorded_at": recorded,
                    "phase": s.phase.to_string(),
                    "running": s.running,
                    "observed_generation": s.observed_generation,
                    "target_generation": s.target_generation,
                    "target": s.target,
                    "agent": s.agent,
                    "message": s.message,
                    "updated_at": s.updated_at,
                })
            });
            let unverified: Vec<Value> =
                unverified_by(audit, env, at).into_iter().map(super::unverified_json).collect();
            (env.to_string(), json!({"at": target, "note": note, "observed": observed, "unverified": unverified}))
        })
        .collect();
    json!({"at": at, "asked": asked, "environments": envs})
}

fn target_json(audit: &Audit, report: &CommitReport, event: &Event) -> Value {
    let v = event.policy_version;
    let facts = audit.git.commit(&report.commit.id);
    json!({
        "generation": event.generation,
        "target": event.target,
        "signed_by": event.target.as_ref().map(|t| audit.keys_json(v, &t.signed_by)),
        "how": how_word(&event.action),
        "action": super::action_word(&event.action),
        "commit": report.commit.id,
        "time": report.commit.time,
        "author": report.commit.author,
        "summary": report.commit.summary,
        "merged_from": facts.merged_from,
        "proposal": facts.proposal,
        "revert": matches!(event.action, Action::Rollback | Action::Withdraw).then(|| json!({
            "reverted": event.entry,
            "commit_signed": report.commit.ssh_signature.is_some(),
            "signed_by": event.revert_signed_by.map(|k| audit.keys_json(v, &[k])),
        })),
        "policy_version": v,
    })
}
