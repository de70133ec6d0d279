//! `stele plan`: what the agent would do now. Verifies the ledger (without moving the high-water
//! mark), observes each environment's provider (probing health, touching nothing: providers made
//! observe-only refuse every action) and prints each environment's plan.
//!
//! Writes nothing the agent owns: when the state directory does not exist (no agent has run there),
//! the plan is made from a temporary one, so nothing is created on disk, even when planning fails.
//! A provider's health track starts when this process does, so a healthy instance is credited as
//! ready from its launch (its record), not from now: a converged environment plans as Healthy.

use super::agent::load_config_with;
use super::now;
use crate::agent::{load_memory, now_ms, release_of, Providers};
use crate::cli::PlanArgs;
use crate::exit;
use crate::plan::{plan, Action, Health, Observed};
use crate::sync::{LedgerSync, SyncStatus};
use anyhow::Result;
use serde_json::json;
use std::path::Path;

pub fn run(repo: Option<&Path>, args: PlanArgs) -> Result<u8> {
    let mut cfg = load_config_with(repo, &args.settings, false)?;
    let _scratch = if cfg.state_dir.exists() {
        None
    } else {
        let scratch = tempfile::tempdir()?;
        if !args.json {
            println!("no agent state at {} yet: planning as a first run", cfg.state_dir.display());
        }
        cfg.state_dir = scratch.path().to_owned();
        Some(scratch)
    };
    let mut ledger = LedgerSync::open(&cfg.repo, cfg.branch.as_deref(), &cfg.state_dir, cfg.anchor.clone())?
        .with_floor(cfg.floor.clone());
    let synced = ledger.sync(now(), false)?;
    let Some(verified) = synced.verified else {
        println!("no verified ledger yet at {}", cfg.repo);
        if let Some(reason) = &synced.reason {
            eprintln!("STALLED: {reason}");
        }
        return Ok(exit::VERIFY_FAILED);
    };
    let mut providers = Providers::observe_only(&cfg)?;
    let memory = load_memory(&cfg.state_dir)?;
    let mut out = Vec::new();
    // An environment that could not be observed (no provider here, an unreachable API) is reported
    // and the others are still planned; the exit code says so (I/O).
    let mut unobserved = false;
    for (env, h) in &verified.state.envs {
        if !cfg.envs.is_empty() && !cfg.envs.contains(env) {
            continue;
        }
        let spec = &h.spec.payload;
        let m = memory.get(env).cloned().unwrap_or_default();
        let now = now_ms();
        let observed = match providers.for_spec(spec).and_then(|p| p.observe(env, spec, now).map_err(|e| e.to_string()))
        {
            Ok(observed) => ready_from_launch(observed),
            Err(reason) => {
                unobserved = true;
                if !args.json {
                    println!("{env}: cannot observe: {reason}");
                }
                out.push(json!({"env": env, "target_generation": h.generation, "error": reason}));
                continue;
            }
        };
        let target = release_of(h);
        let desired = m.desired(spec, target.as_ref());
        let p = plan(&desired, &observed, now);
        if !args.json {
            println!(
                "{env}: {} — target generation {}{}",
                p.phase,
                h.generation,
                p.effective
                    .as_ref()
                    .map(|r| format!(", converging to {} (generation {})", r.version, r.generation))
                    .unwrap_or_default()
            );
            for i in &observed.instances {
                println!("  instance {} group {} generation {} {}", i.id, i.group, i.generation, i.health);
            }
            if p.actions.is_empty() && p.waiting.is_empty() {
                println!("  nothing to do");
            }
            for a in &p.actions {
                match a {
                    Action::Launch { group, release } => {
                        println!("  launch    {group}: {} (generation {})", release.version, release.generation)
                    }
                    Action::Terminate { group, id, reason } => println!("  terminate {group}: {id} ({reason})"),
                    Action::SetTraffic { group, traffic } => println!("  traffic   {group}: {traffic}"),
                    Action::FailGate { reason, .. } => println!("  fail gate: {reason}"),
                }
            }
            for w in &p.waiting {
                println!("  waiting: {w}");
            }
        }
        out.push(json!({"env": env, "target_generation": h.generation, "plan": p, "observed": observed}));
    }
    if synced.status == SyncStatus::Stalled {
        let reason = synced.reason.unwrap_or_default();
        let fresh = synced.stale.is_none();
        if args.json {
            println!(
                "{}",
                json!({"stalled": reason, "fresh": fresh, "commit": verified.commit.to_string(), "environments": out})
            );
        } else if fresh {
            eprintln!("STALLED: {reason}; the plans above act on the last verified commit {}", verified.commit);
        } else {
            eprintln!(
                "STALLED: {reason}; the agent acts on nothing: the plans above are for the last verified commit {}, \
                 once the ledger is fresh again",
                verified.commit
            );
        }
        return Ok(exit::VERIFY_FAILED);
    }
    if args.json {
        println!(
            "{}",
            json!({"stalled": null, "fresh": true, "commit": verified.commit.to_string(), "environments": out})
        );
    }
    Ok(if unobserved { exit::IO } else { exit::OK })
}

/// `observed` with each healthy instance healthy since its launch at the latest: this process's
/// health track began when it started, and an instance it finds healthy has been running since its
/// record says it was launched.
fn ready_from_launch(mut observed: Observed) -> Observed {
    for i in &mut observed.instances {
        if let Health::Healthy { since_ms } = &mut i.health {
            *since_ms = (*since_ms).min(i.launched_ms);
        }
    }
    observed
}
