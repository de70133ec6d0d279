//! One reconcile tick for one environment: observe, plan, carry out the step. The agent calls it in a
//! loop; tests call it against the simulated provider on virtual time.
//!
//! Owns: the order in which a plan's actions are carried out (prepare the image, move traffic, launch,
//! terminate) and the environment's gate memory (last good release, failed generation). Must not
//! decide what to do (that is `plan`) or talk to Git (that is `agent` and `status`).

use crate::plan::{plan, Action, Desired, Generation, Lost, Observed, Phase, Plan, Release};
use crate::provider::{Provider, ProviderError, Readiness};
use ledger_format::types::GroupName;
use ledger_format::types::{EnvName, Environment};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What the agent remembers between ticks (and restarts) about one environment's gates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    /// The last release that reached `Healthy` here.
    pub last_good: Option<Release>,
    /// The generation whose health gate failed, and why; cleared when a newer generation arrives.
    pub failed: Option<FailedGate>,
    /// New instances of the target's generation lost during its rollout and relaunched within
    /// `plan::RELAUNCH_BUDGET`; cleared when a newer generation arrives.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relaunched: Vec<Relaunched>,
}

/// One lost and relaunched instance of a generation being rolled out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relaunched {
    pub generation: Generation,
    pub id: String,
    pub reason: String,
}

impl Memory {
    /// What the planner is asked to converge to, given the ledger's target and this memory.
    pub fn desired<'a>(&self, spec: &'a Environment, target: Option<&Release>) -> Desired<'a> {
        let generation = target.map(|t| t.generation);
        Desired {
            spec,
            target: target.cloned(),
            last_good: self.last_good.clone(),
            failed: self.failed.as_ref().map(|f| f.generation),
            relaunched: self
                .relaunched
                .iter()
                .filter(|r| Some(r.generation) == generation)
                .map(|r| r.id.clone())
                .collect(),
        }
    }

    /// A line for the status message about instances lost and relaunched during the rollout of
    /// `generation`, if any.
    pub fn relaunch_note(&self, generation: Option<Generation>) -> Option<String> {
        let lost: Vec<String> = self
            .relaunched
            .iter()
            .filter(|r| Some(r.generation) == generation)
            .map(|r| format!("{} ({})", r.id, r.reason))
            .collect();
        (!lost.is_empty()).then(|| {
            format!(
                "relaunched {} of {} lost instance(s) allowed during this rollout: {}",
                lost.len(),
                crate::plan::RELAUNCH_BUDGET,
                lost.join(", ")
            )
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedGate {
    pub generation: Generation,
    pub reason: String,
}

/// The result of one tick.
#[derive(Clone, Debug)]
pub struct Tick {
    /// What was observed before acting.
    pub observed: Observed,
    /// The plan that was carried out (after recording a failed gate, the restoring plan).
    pub plan: Plan,
    /// Actions that failed with a retryable error; the next tick plans again from what exists.
    pub retryable: Vec<String>,
    /// The image to launch is still being prepared in the background: nothing was carried out.
    pub preparing: Option<String>,
}

impl Tick {
    pub fn converged(&self) -> bool {
        self.plan.converged() && self.retryable.is_empty() && self.preparing.is_none()
    }
}

/// Observes, plans and carries out one step. A refused image stops the tick before any action; a
/// retryable failure of one action is reported and the remaining actions still run (each is
/// independent and the next tick re-plans).
pub fn tick<P: Provider + ?Sized>(
    provider: &mut P,
    env: &EnvName,
    spec: &Environment,
    target: Option<&Release>,
    memory: &mut Memory,
    now_ms: u64,
) -> Result<Tick, ProviderError> {
    let generation = target.map(|t| t.generation);
    if memory.failed.as_ref().is_some_and(|f| generation != Some(f.generation)) {
        memory.failed = None;
    }
    memory.relaunched.retain(|r| Some(r.generation) == generation);
    let observed = provider.observe(env, spec, now_ms)?;
    let mut current = decide(spec, target, memory, &observed, now_ms);
    if let [Action::FailGate { generation, reason }] = current.actions.as_slice() {
        tracing::warn!(%env, generation, %reason, "health gate failed; restoring the last good release");
        memory.failed = Some(FailedGate { generation: *generation, reason: reason.clone() });
        current = decide(spec, target, memory, &observed, now_ms);
    }
    // Lost new instances within the relaunch budget: remembered before the replacement launches, so the
    // next loss is judged against what is left of the budget.
    for Lost { id, reason } in &current.relaunch {
        let generation = current.effective.as_ref().map_or(0, |r| r.generation);
        tracing::warn!(%env, %id, %reason, generation, "a new instance was lost during the rollout; relaunching it");
        memory.relaunched.push(Relaunched { generation, id: id.clone(), reason: reason.clone() });
    }
    if current.phase == Phase::Healthy {
        memory.last_good = current.effective.clone();
    }
    if let Some(release) = &current.effective {
        provider.pin(env, spec, release)?;
    }
    if let (Some(release), false) = (&current.effective, current.actions.is_empty()) {
        if current.actions.iter().any(|a| matches!(a, Action::Launch { .. })) {
            if let Readiness::Pending(why) = provider.prepare(env, spec, release)? {
                // The step is carried out whole once its image is ready, as if it had not been planned yet.
                current.waiting.push(why.clone());
                return Ok(Tick { observed, plan: current, retryable: Vec::new(), preparing: Some(why) });
            }
        }
    }
    let mut retryable = Vec::new();
    let mut record = |r: Result<(), ProviderError>| -> Result<(), ProviderError> {
        match r {
            Err(e) if e.is_retryable() => {
                retryable.push(e.to_string());
                Ok(())
            }
            other => other,
        }
    };
    // Traffic first, so nothing is sent to an instance that is about to stop; if traffic could not be
    // moved, nothing is stopped this tick.
    let mut traffic_moved = true;
    for a in &current.actions {
        if let Action::SetTraffic { group, traffic } = a {
            let r = provider.set_traffic(env, group, traffic, now_ms);
            traffic_moved &= r.is_ok();
            record(r)?;
        }
    }
    for a in &current.actions {
        if let Action::Launch { group, release } = a {
            record(provider.launch(env, spec, group, release, now_ms).map(drop))?;
        }
    }
    let mut leaving: BTreeMap<&GroupName, Vec<String>> = BTreeMap::new();
    for a in current.actions.iter().filter(|_| traffic_moved) {
        if let Action::Terminate { group, id, .. } = a {
            leaving.entry(group).or_default().push(id.clone());
        }
    }
    for (group, ids) in leaving {
        record(provider.terminate_all(env, group, &ids))?;
    }
    Ok(Tick { observed, plan: current, retryable, preparing: None })
}

/// The plan for what was observed, given the ledger's target and the gate memory: what a tick would
/// carry out (the agent also asks it, acting on nothing, for a suspended environment).
pub fn decide(spec: &Environment, target: Option<&Release>, memory: &Memory, observed: &Observed, now_ms: u64) -> Plan {
    plan(&memory.desired(spec, target), observed, now_ms)
}
