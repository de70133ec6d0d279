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
    let anchor = trust_anchor(&args.trust)?;
    let mut source = GitSource::open(&location, args.branch.as_deref(), &args.state_dir.join("cache"))?;
    let branch = source.branch().map(str::to_owned);
    let existing = state::load(&args.state_dir)?;
    if let Some(s) = &existing {
        if s.source != location || s.branch != branch {
            return Err(Refused(format!(
                "{} holds the state of {} (branch {}); use another --state-dir for {location} (branch {})",
                args.state_dir.display(),
                s.source,
                s.branch.as_deref().unwrap_or("HEAD"),
                branch.as_deref().unwrap_or("HEAD")
            ))
            .into());
        }
    }
    if existing.is_none() && anchor.is_none() {
        return Err(Refused(
            "the first poll needs a pinned trust root (--trust-root KEYID[,KEYID] or --trust-root-hash HEX); \
             Stele never trusts the first policy it happens to find"
                .into(),
        )
        .into());
    }
    let head = source.refresh()?;
    let from = match existing {
        Some(s) => Some(Verified { commit: git2::Oid::from_str(&s.commit)?, state: s.state }),
        None => None,
    };
    let mut report = Report { args: &args, started, head, new_commits: 0, reason: None };
    if let Some(v) = from.as_ref().filter(|v| v.commit == head) {
        report.print("up_to_date", Some(v), &Outcome::default());
        return Ok(exit::OK);
    }
    let anchor = anchor.unwrap_or(TrustAnchor::UnpinnedTrustGenesisAsFound);
    let outcome = match replay(&source, from.clone(), head, &anchor, &mut |_, _| {}) {
        Err(e @ SourceError::Rewritten { .. }) => {
            report.reason = Some(format!("H1: {e}; keeping the last verified state"));
            report.print("stalled", from.as_ref(), &Outcome::default());
            return Ok(exit::VERIFY_FAILED);
        }
        other => other?,
    };
    report.new_commits = outcome.commits_seen;
    let verified = outcome.verified.as_ref();
    if let Some(v) = verified.filter(|v| from.as_ref().map(|f| f.commit) != Some(v.commit)) {
        let file = StateFile::new(&location, branch.as_deref(), v.commit.to_string(), now(), v.state.clone());
        state::save(&args.state_dir, &file)?;
    }
    let status = match verified {
        Some(v) if v.commit == head => "verified",
        None if outcome.refusals.is_empty() => "no_ledger",
        _ => "stalled",
    };
    report.print(status, verified, &outcome);
    Ok(if status == "stalled" { exit::VERIFY_FAILED } else { exit::OK })
}

fn refusals_json(outcome: &Outcome) -> serde_json::Value {
    outcome
        .refusals
        .iter()
        .map(|r| json!({"commit": r.commit.id, "summary": r.commit.summary, "problems": r.problems}))
        .collect()
}

/// Prints the outcome of a poll, in the same JSON shape whatever the status.
struct Report<'a> {
    args: &'a PollArgs,
    started: Instant,
    head: git2::Oid,
    new_commits: usize,
    reason: Option<String>,
}

impl Report<'_> {
    fn print(&self, status: &str, verified: Option<&Verified>, outcome: &Outcome) {
        let elapsed_ms = self.started.elapsed().as_secs_f64() * 1e3;
        let state: Option<&LedgerState> = verified.map(|v| &v.state);
        let commit = verified.map(|v| v.commit.to_string());
        let envs: serde_json::Map<String, serde_json::Value> = state
            .map(|s| {
                s.envs
                    .iter()
                    .map(|(env, h)| {
                        (env.to_string(), json!({"generation": h.generation, "target": h.target, "tip": h.tip}))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if self.args.json {
            let recovered: Vec<_> =
                outcome.recovered.iter().map(|(a, b)| json!({"refused": a, "recovered_at": b})).collect();
            println!(
                "{}",
                json!({
                    "status": status, "reason": self.reason, "commit": commit, "head": self.head.to_string(),
                    "new_commits": self.new_commits, "ledger": state.map(|s| &s.policy.payload.ledger),
                    "policy_version": state.map(|s| s.policy.payload.version), "environments": envs,
                    "refusals": refusals_json(outcome), "recovered": recovered, "elapsed_ms": elapsed_ms,
                })
            );
            return;
        }
        if let Some(reason) = &self.reason {
            eprintln!("STALLED: {reason}");
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
        let Some(state) = state else {
            println!("no verified ledger yet ({status}); head {}", self.head);
            return;
        };
        let ledger = &state.policy.payload.ledger;
        let commit = commit.unwrap_or_default();
        match status {
            "up_to_date" => println!("ledger {ledger}: up to date at {commit} ({elapsed_ms:.1} ms)"),
            "stalled" => println!(
                "ledger {ledger}: STALLED at {commit}; head {} is not verified; acting on the last verified state",
                self.head
            ),
            _ => println!(
                "ledger {ledger}: verified {commit} ({} new commit{}, {elapsed_ms:.0} ms)",
                self.new_commits,
                if self.new_commits == 1 { "" } else { "s" }
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
}
