//! `stele plan`: what the agent would do now. Verifies the ledger (without moving the high-water
//! mark), observes the local provider (probing health, touching nothing) and prints each environment's
//! plan.

use super::agent::load_config;
use super::now;
use crate::agent::{load_memory, now_ms, release_of};
use crate::cli::PlanArgs;
use crate::exit;
use crate::plan::{plan, Action, Desired};
use crate::provider::local::LocalProvider;
use crate::provider::Provider;
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
    let mut provider = LocalProvider::new(&cfg.state_dir, cfg.local.clone(), cfg.stele_exe.clone())?.dry_run();
    let memory = load_memory(&cfg.state_dir)?;
    let mut out = Vec::new();
    for (env, h) in &verified.state.envs {
        if !cfg.envs.is_empty() && !cfg.envs.contains(env) {
            continue;
        }
        let spec = &h.spec.payload;
        let m = memory.get(env).cloned().unwrap_or_default();
        let now = now_ms();
        let observed = provider.observe(env, spec, now)?;
        let desired = Desired {
            spec,
            target: release_of(h),
            last_good: m.last_good.clone(),
            failed: m.failed.as_ref().map(|f| f.generation),
        };
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
    Ok(exit::OK)
}
