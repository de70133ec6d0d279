//! `stele poll`: one pass of what the agent does before converging: fetch, verify every new
//! first-parent commit since the high-water mark, persist the new mark. A rewrite or a refused commit
//! stalls: the last verified state is kept and the reason printed.

use super::{now, trust_anchor};
use crate::cli::PollArgs;
use crate::exit::{self, Refused};
use crate::replay::{Outcome, Verified};
use crate::sync::{LedgerSync, SyncStatus};
use anyhow::Result;
use ledger_format::history::LedgerState;
use serde_json::json;
use std::path::Path;
use std::time::Instant;

pub fn run(repo: &Path, args: PollArgs) -> Result<u8> {
    let started = Instant::now();
    let location = repo.to_str().ok_or_else(|| Refused(format!("{}: not UTF-8", repo.display())))?.to_owned();
    let anchor = trust_anchor(&args.trust)?;
    let mut ledger = LedgerSync::open(&location, args.branch.as_deref(), &args.state_dir, anchor)?;
    let synced = ledger.sync(now(), true)?;
    let report = Report { args: &args, started, head: synced.head, new_commits: synced.outcome.commits_seen };
    let status = match synced.status {
        SyncStatus::UpToDate => "up_to_date",
        SyncStatus::Verified => "verified",
        SyncStatus::NoLedger => "no_ledger",
        SyncStatus::Stalled => "stalled",
    };
    // A rewrite or a ledger that is not fresh (F3) is reported as the reason; a refused commit is
    // reported with its problems.
    let reason = synced.reason.as_deref().filter(|r| r.starts_with("H1:") || synced.stale.is_some());
    report.print(status, reason, synced.verified.as_ref(), &synced.outcome, synced.stale.is_some());
    Ok(if synced.status == SyncStatus::Stalled { exit::VERIFY_FAILED } else { exit::OK })
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
}

impl Report<'_> {
    fn print(&self, status: &str, reason: Option<&str>, verified: Option<&Verified>, outcome: &Outcome, stale: bool) {
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
                    "status": status, "reason": reason, "commit": commit, "head": self.head.to_string(),
                    "new_commits": self.new_commits, "ledger": state.map(|s| &s.policy.payload.ledger),
                    "policy_version": state.map(|s| s.policy.payload.version), "environments": envs,
                    "refusals": refusals_json(outcome), "recovered": recovered, "elapsed_ms": elapsed_ms,
                    "fresh": !stale,
                })
            );
            return;
        }
        if let Some(reason) = reason {
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
            "stalled" if stale => println!(
                "ledger {ledger}: STALLED at {commit}; the ledger is not fresh (F3), so an agent acts on nothing"
            ),
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
