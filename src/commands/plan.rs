//! `stele plan`: what the agent would do now. Verifies the ledger (without moving the high-water
//! mark), observes each environment's provider (probing health, touching nothing: providers made
//! observe-only refuse every action) and prints each environment's plan.

use super::agent::load_config;
use super::now;
use crate::agent::{load_memory, now_ms, release_of, Providers};
use crate::cli::PlanArgs;
use crate::exit;
use crate::plan::{plan, Action};
use crate::sync::{LedgerSync, SyncStatus};
use anyhow::Result;
use serde_json::json;
use std::path::Path;

pub fn run(repo: Option<&Path>, args: PlanArgs) -> Result<u8> {
    let cfg = load_config(repo, &args.settings)?;
    let mut ledger = LedgerSync::open(&cfg.repo, cfg.branch.as_deref(), &cfg.state_dir, cfg.anchor.clone())?;
    let synced = ledger.sync(now(), false)?;
    let Some(verified) = synced.verified else {
        println!("no verified ledger yet at {}", cfg.repo);
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
            Ok(observed) => observed,
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
                    Action::SetTraffic { group, traffic } => println!("  traffic   {group}: {traffic:?}"),
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
        if args.json {
            println!("{}", json!({"stalled": reason, "commit": verified.commit.to_string(), "environments": out}));
        } else {
            eprintln!("STALLED: {reason}; the plans above act on the last verified commit {}", verified.commit);
        }
        return Ok(exit::VERIFY_FAILED);
    }
    if args.json {
        println!("{}", json!({"stalled": null, "commit": verified.commit.to_string(), "environments": out}));
    }
    Ok(if unobserved { exit::IO } else { exit::OK })
}
