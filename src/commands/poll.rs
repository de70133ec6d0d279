//! `stele poll`: one pass of what the agent does before converging: fetch, verify every new
//! first-parent commit since the high-water mark, persist the new mark. A rewrite or a refused commit
//! stalls: the last verified state is kept and the reason printed.

use super::{now, trust_anchor};
use crate::cli::PollArgs;
use crate::exit::{self, Refused};
use crate::replay::{replay, Outcome, Verified};
use crate::source::{GitSource, LedgerSource, SourceError};
use crate::state::{self, StateFile};
use anyhow::Result;
use ledger_format::history::{LedgerState, TrustAnchor};
use serde_json::json;
use std::path::Path;
use std::time::Instant;

pub fn run(repo: &Path, args: PollArgs) -> Result<u8> {
    let started = Instant::now();
    let location = repo.to_str().ok_or_else(|| Refused(format!("{}: not UTF-8", repo.display())))?.to_owned();
    let existing = state::load(&args.state_dir)?;
    if let Some(s) = &existing {
        if s.source != location || s.branch != args.branch {
            return Err(Refused(format!(
                "{} holds the state of {} (branch {}); use another --state-dir for {location}",
                args.state_dir.display(),
                s.source,
                s.branch.as_deref().unwrap_or("HEAD")
            ))
            .into());
        }
    }
    let anchor = trust_anchor(&args.trust)?;
    if existing.is_none() && anchor.is_none() {
        return Err(Refused(
            "the first poll needs a pinned trust root (--trust-root KEYID[,KEYID] or --trust-root-hash HEX); \
             Stele never trusts the first policy it happens to find"
                .into(),
        )
        .into());
    }
    let mut source = GitSource::open(&location, args.branch.as_deref(), &args.state_dir.join("cache"))?;
    let head = source.refresh()?;
    let from = match existing {
        Some(s) => Some(Verified { commit: git2::Oid::from_str(&s.commit)?, state: s.state }),
        None => None,
    };
    if let Some(v) = from.as_ref().filter(|v| v.commit == head) {
        report(&args, "up_to_date", &v.state, head, 0, &Outcome::default(), started, None);
        return Ok(exit::OK);
    }
    let anchor = anchor.unwrap_or(TrustAnchor::UnpinnedTrustGenesisAsFound);
    let outcome = match replay(&source, from.clone(), head, &anchor, &mut |_, _| {}) {
        Err(e @ SourceError::Rewritten { .. }) => {
            let message = format!(
                "STALLED: {e}; keeping the last verified state (commit {})",
                from.as_ref().map_or("none".into(), |v| v.commit.to_string())
            );
            if args.json {
                println!(
                    "{}",
                    json!({"status": "stalled", "reason": e.to_string(), "check": "H1", "head": head.to_string(), "verified": from.as_ref().map(|v| v.commit.to_string())})
                );
            } else {
                eprintln!("{message}");
            }
            return Ok(exit::VERIFY_FAILED);
        }
        other => other?,
    };
    let Some(verified) = outcome.verified.clone() else {
        let status = if outcome.refusals.is_empty() { "no_ledger" } else { "stalled" };
        print_refusals(&args, &outcome, status, head);
        return Ok(if outcome.refusals.is_empty() { exit::OK } else { exit::VERIFY_FAILED });
    };
    let new_commits = outcome.commits_seen;
    if from.as_ref().map(|v| v.commit) != Some(verified.commit) {
        state::save(
            &args.state_dir,
            &StateFile::new(
                &location,
                args.branch.as_deref(),
                verified.commit.to_string(),
                now(),
                verified.state.clone(),
            ),
        )?;
    }
    let stalled = verified.commit != head;
    let status = if stalled { "stalled" } else { "verified" };
    report(&args, status, &verified.state, verified.commit, new_commits, &outcome, started, Some(head));
    Ok(if stalled { exit::VERIFY_FAILED } else { exit::OK })
}

fn print_refusals(args: &PollArgs, outcome: &Outcome, status: &str, head: git2::Oid) {
    if args.json {
        println!("{}", json!({"status": status, "head": head.to_string(), "refusals": refusals_json(outcome)}));
        return;
    }
    for r in &outcome.refusals {
        for p in &r.problems {
            eprintln!("REFUSED commit {}: {p}", &r.commit.id[..12]);
        }
    }
}

fn refusals_json(outcome: &Outcome) -> serde_json::Value {
    outcome
        .refusals
        .iter()
        .map(|r| json!({"commit": r.commit.id, "summary": r.commit.summary, "problems": r.problems}))
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn report(
    args: &PollArgs,
    status: &str,
    state: &LedgerState,
    commit: git2::Oid,
    new_commits: usize,
    outcome: &Outcome,
    started: Instant,
    head: Option<git2::Oid>,
) {
    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    let envs: serde_json::Map<String, serde_json::Value> = state
        .envs
        .iter()
        .map(|(env, h)| (env.to_string(), json!({"generation": h.generation, "target": h.target, "tip": h.tip})))
        .collect();
    if args.json {
        println!(
            "{}",
            json!({
                "status": status, "commit": commit.to_string(), "head": head.map(|h| h.to_string()),
                "new_commits": new_commits, "ledger": state.policy.payload.ledger,
                "policy_version": state.policy.payload.version, "environments": envs,
                "refusals": refusals_json(outcome),
                "recovered": outcome.recovered.iter().map(|(a, b)| json!({"refused": a, "recovered_at": b})).collect::<Vec<_>>(),
                "elapsed_ms": elapsed_ms,
            })
        );
        return;
    }
    for r in &outcome.refusals {
        for p in &r.problems {
            eprintln!("REFUSED commit {} ({}): {p}", &r.commit.id[..12], r.commit.summary);
        }
    }
    for (bad, good) in &outcome.recovered {
        eprintln!(
            "recovered: commit {} verifies as one step from the last good commit, past refused {}",
            &good[..12],
            &bad[..12]
        );
    }
    match status {
        "up_to_date" => {
            println!("ledger {}: up to date at {} ({elapsed_ms:.1} ms)", state.policy.payload.ledger, commit)
        }
        "stalled" => println!(
            "ledger {}: STALLED at {commit}; head {} is not verified; acting on the last verified state",
            state.policy.payload.ledger,
            head.map(|h| h.to_string()).unwrap_or_default()
        ),
        _ => println!(
            "ledger {}: verified {commit} ({new_commits} new commit{}, {elapsed_ms:.0} ms)",
            state.policy.payload.ledger,
            if new_commits == 1 { "" } else { "s" }
        ),
    }
    for (env, h) in &state.envs {
        match &h.target {
            Some(t) => println!(
                "  {env}: generation {}, target {} (seq {}), blake3:{}",
                h.generation,
                t.version,
                t.seq,
                t.image.digest()
            ),
            None => println!("  {env}: generation {}, no target", h.generation),
        }
        if let Some(tip) = h.tip.as_ref().filter(|t| !t.complete) {
            println!("    {} (seq {}) is waiting for co-signatures", tip.version, tip.seq);
        }
    }
}
