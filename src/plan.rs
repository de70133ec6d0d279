//! The planner: `plan(desired, observed, now) -> Plan`, a pure function. It pairs what the verified
//! ledger wants with what a provider reports and returns the next step as data: which instances to
//! launch or terminate and where to send traffic. The agent carries out one step per tick and plans
//! again from what it then observes, so a crash anywhere resumes safely (DESIGN.md "Convergence").
//!
//! Owns: the rollout rules of the three strategies (rolling, blue/green, canary), health gates, drift
//! and age replacement, and the phase an environment is in. Must not do I/O, read a clock, or judge the
//! ledger: `desired` comes from `ledger_format::history`, `observed` from a provider, `now` from the caller.
//!
//! The rules, per instance group:
//! - An instance is *fresh* when it runs the effective target (same generation and digest) and is not
//!   drifted (with `drift: correct`) or older than `max_instance_age_seconds`. Everything else alive is
//!   *stale* and is replaced, never patched.
//! - *Rolling*: launch fresh instances while the group stays within `capacity + max_surge`; terminate
//!   stale ones while at least `capacity - max_unavailable` instances are ready (healthy for
//!   `min_ready_seconds`). Traffic goes evenly to every healthy instance.
//! - *Blue/green*: launch the full new group, wait until every instance is healthy, switch 100% of the
//!   traffic, keep the old group for `grace_seconds`, then terminate it.
//! - *Canary*: for each step, launch enough new instances for the step's weight, move that weight when
//!   they are healthy, pause; after the last step move all traffic and terminate the old group.
//! - *Health gate*: while a generation has never been healthy here, a new instance that is not healthy
//!   within the health check's deadline fails the gate, and so does a second new instance that exits:
//!   the first one lost is relaunched ([`RELAUNCH_BUDGET`], so an OOM kill or an operator's kill of one
//!   instance does not revert a healthy release). The agent records the failure and plans again: the
//!   effective target becomes the last generation that was healthy, the rollout is undone with the same
//!   rules, and the phase stays `Degraded` until a newer generation arrives. An instance of an
//!   already-healthy generation that fails is simply replaced.
//! - *Deadlines count probes, not only time*: a health deadline has passed when `deadline_seconds` have
//!   passed since launch **and** the provider has probed the instance at least
//!   `deadline / interval` times (at least `healthy_threshold`), when the provider counts its probes.
//!   An agent that was paused, busy or restarted therefore never fails an instance it did not watch.
//! - *Stopping* instances (drained and stopped in the background) are neither fresh nor stale: nothing
//!   is planned for them, they still count against `capacity + max_surge` (their process may run), and
//!   the environment is not converged until they are gone.
//! - Traffic is never given to a generation without healthy instances (blue/green: without all of them).

use ledger_format::types::{DriftMode, Environment, GroupName, HealthCheck, Image, ReleaseVersion, Strategy};
use ledger_format::Blake3Digest;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// A target generation number (DESIGN.md "Target generation").
pub type Generation = u64;

/// One release the environment may run: a target generation of the ledger and its image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub generation: Generation,
    pub version: ReleaseVersion,
    pub seq: u64,
    pub image: Image,
}

impl Release {
    pub fn digest(&self) -> &Blake3Digest {
        self.image.digest()
    }
}

/// What the environment should run, from the verified ledger and the agent's memory of gates.
#[derive(Clone, Debug)]
pub struct Desired<'a> {
    pub spec: &'a Environment,
    /// The ledger's target; `None` when the environment has no target (every entry reverted).
    pub target: Option<Release>,
    /// The last release that was `Healthy` here: what a failed gate restores.
    pub last_good: Option<Release>,
    /// A generation whose health gate failed; only counts while it is still the target's generation.
    pub failed: Option<Generation>,
    /// Instances of the target's generation that were lost during its rollout and relaunched (ids), at
    /// most [`RELAUNCH_BUDGET`]; the gate fails on the next one lost.
    pub relaunched: Vec<String>,
}

/// How many new instances of a generation may be lost (exit, be killed) during its rollout and be
/// relaunched before a further loss fails the health gate. One: a single OOM kill or operator's kill
/// does not revert a healthy release, while a release that crashes keeps failing its gate on the next
/// loss, one launch later.
pub const RELAUNCH_BUDGET: usize = 1;

impl Desired<'_> {
    /// True while the target's generation is the one that failed: the environment is degraded.
    pub fn restoring(&self) -> bool {
        matches!((&self.target, self.failed), (Some(t), Some(f)) if t.generation == f)
    }

    /// What the planner converges to now: the target, or the last good release while restoring.
    pub fn effective(&self) -> Option<&Release> {
        if self.restoring() {
            self.last_good.as_ref()
        } else {
            self.target.as_ref()
        }
    }
}

/// An instance's health as the provider last probed it. Times are milliseconds on the caller's clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Health {
    /// Launched, not yet healthy, and no check has failed yet.
    Starting,
    Healthy {
        since_ms: u64,
    },
    Unhealthy {
        since_ms: u64,
        reason: String,
    },
    /// The instance no longer exists or its process exited; only its record is left.
    Gone {
        reason: String,
    },
    /// Out of traffic and being drained and stopped (in the background); nothing is planned for it.
    Stopping {
        since_ms: u64,
    },
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Starting => f.write_str("starting"),
            Health::Healthy { .. } => f.write_str("healthy"),
            Health::Unhealthy { reason, .. } => write!(f, "unhealthy: {reason}"),
            Health::Gone { reason } => write!(f, "gone: {reason}"),
            Health::Stopping { .. } => f.write_str("stopping"),
        }
    }
}

/// One instance as observed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub group: GroupName,
    pub generation: Generation,
    pub digest: Blake3Digest,
    pub launched_ms: u64,
    pub health: Health,
    /// Why this instance differs from its image (e.g. files that no longer hash to the digest).
    pub drift: Option<String>,
}

impl Instance {
    fn alive(&self) -> bool {
        !matches!(self.health, Health::Gone { .. })
    }

    fn stopping(&self) -> bool {
        matches!(self.health, Health::Stopping { .. })
    }

    fn healthy(&self) -> bool {
        matches!(self.health, Health::Healthy { .. })
    }

    /// Healthy for at least `min_ready_ms`: counts as available.
    fn ready(&self, now_ms: u64, min_ready_ms: u64) -> bool {
        matches!(self.health, Health::Healthy { since_ms } if now_ms >= since_ms.saturating_add(min_ready_ms))
    }

    fn runs(&self, release: &Release) -> bool {
        self.generation == release.generation && &self.digest == release.digest()
    }
}

/// Where a group's load balancer sends traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", content = "weights", rename_all = "snake_case")]
pub enum Traffic {
    /// Every healthy instance gets an equal share (rolling).
    Even,
    /// Percentages per generation, summing to 100; each generation's share is split evenly among its
    /// healthy instances (blue/green, canary).
    Weighted(BTreeMap<Generation, u32>),
}

impl Traffic {
    fn weight_of(&self, generation: Generation) -> u32 {
        match self {
            Traffic::Even => 0,
            Traffic::Weighted(w) => w.get(&generation).copied().unwrap_or(0),
        }
    }
}

impl fmt::Display for Traffic {
    /// `even`, or each generation's share: `gen 3 90%, gen 4 10%` (for logs and `stele plan`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Traffic::Even => f.write_str("even"),
            Traffic::Weighted(weights) => {
                let shares: Vec<String> = weights.iter().map(|(g, w)| format!("gen {g} {w}%")).collect();
                f.write_str(&shares.join(", "))
            }
        }
    }
}

/// A group's traffic setting and when it was last changed (pauses and grace periods count from it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupTraffic {
    pub traffic: Traffic,
    pub since_ms: u64,
}

/// Everything a provider reports for one environment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    pub instances: Vec<Instance>,
    pub traffic: BTreeMap<GroupName, GroupTraffic>,
    /// How many health probes the provider made of each instance (by id) since it launched or since the
    /// agent started, when the provider probes itself (`local`); `None` when health comes from elsewhere
    /// (a cloud's own checks, which keep running while the agent is paused): deadlines then count in
    /// time only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<BTreeMap<String, u64>>,
}

/// One thing to do. A plan's actions are independent of each other's order except that the agent
/// carries out `SetTraffic` before `Terminate`, so traffic never points at a stopping instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Launch {
        group: GroupName,
        release: Release,
    },
    Terminate {
        group: GroupName,
        id: String,
        reason: String,
    },
    SetTraffic {
        group: GroupName,
        traffic: Traffic,
    },
    /// The health gate of `generation` failed: record it and plan again (which restores the last good
    /// release). Always the only action of its plan.
    FailGate {
        generation: Generation,
        reason: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Progressing,
    Healthy,
    Degraded,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Progressing => "Progressing",
            Phase::Healthy => "Healthy",
            Phase::Degraded => "Degraded",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub phase: Phase,
    pub actions: Vec<Action>,
    /// Why nothing more can be done this tick (health checks, pauses, grace periods, budgets).
    pub waiting: Vec<String>,
    /// Drift that is reported but, by the environment's `drift: report`, not corrected.
    pub drift: Vec<String>,
    /// The release being converged to (the target, or the last good release while degraded).
    pub effective: Option<Release>,
    /// New instances of the target lost during its rollout that this plan relaunches within
    /// [`RELAUNCH_BUDGET`]: the caller records them (with `Desired::relaunched`) before the next plan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relaunch: Vec<Lost>,
}

/// A new instance lost during its generation's rollout and relaunched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lost {
    pub id: String,
    pub reason: String,
}

impl Plan {
    /// True when the environment runs its effective target exactly and nothing is left to do.
    pub fn converged(&self) -> bool {
        self.actions.is_empty() && self.waiting.is_empty()
    }
}

/// Plans the next step for one environment. Pure: the same inputs give the same plan.
pub fn plan(desired: &Desired, observed: &Observed, now_ms: u64) -> Plan {
    let spec = desired.spec;
    let effective = desired.effective().cloned();
    // A generation is gated until it has been healthy here once.
    let gated =
        effective.as_ref().is_some_and(|e| desired.last_good.as_ref().map(|g| g.generation) != Some(e.generation));
    let mut out = Plan {
        phase: Phase::Progressing,
        actions: vec![],
        waiting: vec![],
        drift: vec![],
        effective: effective.clone(),
        relaunch: vec![],
    };
    // Each instance is sorted into its group once: O(instances + groups), not instances x groups.
    let mut by_group: HashMap<&GroupName, Vec<&Instance>> = HashMap::with_capacity(spec.groups.len());
    for i in &observed.instances {
        by_group.entry(&i.group).or_default().push(i);
    }
    for group in &spec.groups {
        let mut members: Vec<&Instance> = by_group.remove(&group.name).unwrap_or_default();
        members.sort_by(|a, b| (a.launched_ms, &a.id).cmp(&(b.launched_ms, &b.id)));
        let traffic =
            observed.traffic.get(&group.name).cloned().unwrap_or(GroupTraffic { traffic: Traffic::Even, since_ms: 0 });
        let ctx = GroupCtx {
            spec,
            group: &group.name,
            capacity: usize::try_from(group.capacity).unwrap_or(usize::MAX),
            target: effective.as_ref(),
            gated,
            restoring: desired.restoring(),
            now_ms,
            probes: observed.probes.as_ref(),
            relaunched: &desired.relaunched,
        };
        if let Err(failure) = ctx.plan(&members, &traffic, &mut out) {
            return Plan {
                phase: Phase::Degraded,
                actions: vec![*failure],
                waiting: vec![],
                drift: vec![],
                effective: out.effective,
                relaunch: vec![],
            };
        }
    }
    // Instances of groups the spec no longer has are stale too (in a fixed order, whatever the provider's).
    // What is left is of groups the spec does not have (a group named twice was taken once: N3).
    let mut strays: Vec<&Instance> = by_group.into_values().flatten().collect();
    strays.sort_by(|a, b| (&a.group, a.launched_ms, &a.id).cmp(&(&b.group, b.launched_ms, &b.id)));
    let stopping = strays.iter().filter(|i| i.stopping()).count();
    if stopping > 0 {
        out.waiting.push(format!("{stopping} instance(s) of groups no longer in the spec stopping"));
    }
    for i in strays.into_iter().filter(|i| !i.stopping()) {
        out.actions.push(Action::Terminate {
            group: i.group.clone(),
            id: i.id.clone(),
            reason: format!("group {} is not in the environment spec", i.group),
        });
    }
    out.phase = if desired.restoring() || (out.effective.is_none() && desired.failed.is_some()) {
        Phase::Degraded
    } else if out.converged() {
        Phase::Healthy
    } else {
        Phase::Progressing
    };
    out
}

/// The rolling strategy's bounds for one group, and how many of its instances are stopping.
#[derive(Clone, Copy)]
struct Limits {
    surge: usize,
    unavailable: usize,
    min_ready_ms: u64,
    stopping: usize,
}

struct GroupCtx<'a> {
    spec: &'a Environment,
    group: &'a GroupName,
    capacity: usize,
    target: Option<&'a Release>,
    gated: bool,
    restoring: bool,
    now_ms: u64,
    probes: Option<&'a BTreeMap<String, u64>>,
    relaunched: &'a [String],
}

/// Seconds to milliseconds, saturating.
fn ms(seconds: u64) -> u64 {
    seconds.saturating_mul(1000)
}

fn deadline_ms(health: &HealthCheck) -> u64 {
    match health {
        HealthCheck::Http { deadline_seconds, .. } | HealthCheck::Tcp { deadline_seconds, .. } => ms(*deadline_seconds),
    }
}

/// The probes an instance must have had before its health deadline can pass: as many as fit in the
/// deadline at the check's interval (clamped like the agent's ticks, 100 ms to 5 s), and at least
/// `healthy_threshold`, the fewest that can make an instance healthy.
pub fn probes_before_deadline(health: &HealthCheck) -> u64 {
    let (interval_ms, threshold) = match health {
        HealthCheck::Http { interval_ms, healthy_threshold, .. }
        | HealthCheck::Tcp { interval_ms, healthy_threshold, .. } => (*interval_ms, *healthy_threshold),
    };
    (deadline_ms(health) / interval_ms.clamp(100, 5_000)).max(threshold).max(1)
}

impl GroupCtx<'_> {
    fn terminate(&self, out: &mut Plan, i: &Instance, reason: impl Into<String>) {
        out.actions.push(Action::Terminate { group: self.group.clone(), id: i.id.clone(), reason: reason.into() });
    }

    fn launch(&self, out: &mut Plan, release: &Release, count: usize) {
        for _ in 0..count {
            out.actions.push(Action::Launch { group: self.group.clone(), release: release.clone() });
        }
    }

    fn set_traffic(&self, out: &mut Plan, traffic: Traffic) {
        out.actions.push(Action::SetTraffic { group: self.group.clone(), traffic });
    }

    /// Why a running instance of the target must still be replaced, if it must.
    fn replace_reason(&self, i: &Instance, out: &mut Plan) -> Option<String> {
        if let Some(drift) = &i.drift {
            match self.spec.drift {
                DriftMode::Correct => return Some(format!("drift: {drift}")),
                DriftMode::Report => out.drift.push(format!("{}: {drift}", i.id)),
            }
        }
        if let Some(age) = self.spec.max_instance_age_seconds {
            if self.now_ms >= i.launched_ms.saturating_add(ms(age)) {
                return Some(format!("older than max_instance_age_seconds {age}"));
            }
        }
        if !self.gated && !i.healthy() && self.deadline_passed(i) {
            return Some(format!("{} past the health deadline", i.health));
        }
        None
    }

    /// Whether `i`'s health deadline has passed: the time since launch, and (when the provider counts
    /// them) enough probes that a healthy instance would have been seen healthy.
    fn deadline_passed(&self, i: &Instance) -> bool {
        let health = &self.spec.health;
        if self.now_ms < i.launched_ms.saturating_add(deadline_ms(health)) {
            return false;
        }
        match self.probes {
            None => true,
            Some(counts) => counts.get(&i.id).copied().unwrap_or(0) >= probes_before_deadline(health),
        }
    }

    /// The health gate for a generation that has not been healthy here yet.
    fn gate(&self, fresh: &[&Instance], target: &Release, out: &mut Plan) -> Result<(), Box<Action>> {
        if !self.gated {
            return Ok(());
        }
        let deadline = deadline_ms(&self.spec.health);
        for i in fresh {
            let why = match &i.health {
                Health::Gone { .. } if self.relaunched.contains(&i.id) => None,
                Health::Gone { reason } if self.relaunched.len() + out.relaunch.len() < RELAUNCH_BUDGET => {
                    out.relaunch.push(Lost { id: i.id.clone(), reason: reason.clone() });
                    None
                }
                Health::Gone { reason } => Some(format!(
                    "instance {} is gone: {reason} (relaunch budget of {RELAUNCH_BUDGET} used by {})",
                    i.id,
                    self.relaunched
                        .iter()
                        .chain(out.relaunch.iter().map(|l| &l.id))
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                Health::Healthy { .. } | Health::Stopping { .. } => None,
                other if self.deadline_passed(i) => {
                    Some(format!("instance {} is not healthy {}s after launch ({other})", i.id, deadline / 1000))
                }
                _ => None,
            };
            if let Some(why) = why {
                return Err(Box::new(Action::FailGate {
                    generation: target.generation,
                    reason: format!(
                        "health gate of generation {} ({}) failed: {why}",
                        target.generation, target.version
                    ),
                }));
            }
        }
        Ok(())
    }

    fn plan(&self, members: &[&Instance], traffic: &GroupTraffic, out: &mut Plan) -> Result<(), Box<Action>> {
        let Some(target) = self.target else {
            for i in members {
                self.terminate(out, i, "the environment has no target");
            }
            return Ok(());
        };
        // Exited instances of the target count against the gate before their records are cleaned up.
        let of_target: Vec<&Instance> = members.iter().copied().filter(|i| i.runs(target)).collect();
        self.gate(&of_target, target, out)?;
        let mut fresh = Vec::new();
        let mut stale = Vec::new();
        let stopping = members.iter().filter(|i| i.stopping()).count();
        if stopping > 0 {
            out.waiting.push(format!("{}: {stopping} instance(s) stopping", self.group));
        }
        for i in members {
            if i.stopping() {
                continue;
            } else if !i.alive() {
                self.terminate(out, i, format!("{}", i.health));
            } else if !i.runs(target) {
                stale.push((*i, format!("runs generation {}, target is {}", i.generation, target.generation)));
            } else if let Some(why) = self.replace_reason(i, out) {
                stale.push((*i, why));
            } else {
                fresh.push(*i);
            }
        }
        match &self.spec.strategy {
            Strategy::Rolling { max_surge, max_unavailable, min_ready_seconds } => {
                let surge = usize::try_from(*max_surge).unwrap_or(usize::MAX);
                let mut unavailable = usize::try_from(*max_unavailable).unwrap_or(usize::MAX);
                if surge == 0 && unavailable == 0 {
                    unavailable = 1;
                }
                let limits = Limits { surge, unavailable, min_ready_ms: ms(*min_ready_seconds), stopping };
                self.rolling(target, &fresh, &stale, limits, traffic, out);
            }
            Strategy::BlueGreen { grace_seconds } => {
                self.weighted(target, &fresh, &stale, traffic, &[(100, *grace_seconds)], out);
            }
            Strategy::Canary { steps } => {
                let mut steps: Vec<(u32, u64)> =
                    steps.iter().map(|s| (u32::try_from(s.weight.min(100)).unwrap_or(100), s.pause_seconds)).collect();
                if steps.last().is_none_or(|s| s.0 < 100) {
                    steps.push((100, 0));
                }
                self.weighted(target, &fresh, &stale, traffic, &steps, out);
            }
        }
        Ok(())
    }

    fn rolling(
        &self,
        target: &Release,
        fresh: &[&Instance],
        stale: &[(&Instance, String)],
        limits: Limits,
        traffic: &GroupTraffic,
        out: &mut Plan,
    ) {
        let Limits { surge, unavailable, min_ready_ms, stopping } = limits;
        let c = self.capacity;
        if traffic.traffic != Traffic::Even {
            self.set_traffic(out, Traffic::Even);
        }
        // A stopping instance's process may still run, so it takes a place within `capacity + max_surge`.
        let alive = fresh.len() + stale.len() + stopping;
        let ready =
            fresh.iter().chain(stale.iter().map(|(i, _)| i)).filter(|i| i.ready(self.now_ms, min_ready_ms)).count();
        let min_ready = c.saturating_sub(unavailable);
        let want = c.saturating_sub(fresh.len());
        let room = (c + surge).saturating_sub(alive);
        let launch = want.min(room);
        self.launch(out, target, launch);
        if want > launch {
            out.waiting.push(format!(
                "{}: {} more to launch, at capacity + max_surge ({})",
                self.group,
                want - launch,
                c + surge
            ));
        }
        // Instances that are not healthy can go at once: removing them costs no availability. Healthy
        // ones go only while the group keeps `capacity - max_unavailable` ready instances, oldest
        // first; a healthy instance still inside `min_ready_seconds` (say, one re-learnt after an
        // agent restart) serves traffic, so it is held like a ready one.
        let mut budget = ready.saturating_sub(min_ready);
        let excess_fresh = fresh.len().saturating_sub(c);
        let mut leaving: Vec<(&Instance, String)> = stale.to_vec();
        // Surplus fresh instances (after a capacity decrease) leave too, newest (least proven) first.
        leaving.extend(fresh.iter().rev().take(excess_fresh).map(|i| (*i, "above capacity".to_owned())));
        leaving.sort_by_key(|(i, _)| i.healthy());
        let mut held = 0;
        for (i, why) in leaving {
            if !i.healthy() {
                self.terminate(out, i, why);
            } else if budget > 0 {
                budget -= 1;
                self.terminate(out, i, why);
            } else {
                held += 1;
            }
        }
        if held > 0 {
            out.waiting.push(format!(
                "{}: {held} to replace; {ready} ready, at least {min_ready} must stay ready (max_unavailable {unavailable})",
                self.group
            ));
        }
        let not_ready = fresh.iter().filter(|i| !i.ready(self.now_ms, min_ready_ms)).count();
        if not_ready > 0 {
            out.waiting.push(format!("{}: {not_ready} new instance(s) not ready yet", self.group));
        }
    }

    /// Blue/green and canary: traffic moves by generation weight through `steps` (weight, pause seconds),
    /// the last of which is always 100.
    fn weighted(
        &self,
        target: &Release,
        fresh: &[&Instance],
        stale: &[(&Instance, String)],
        traffic: &GroupTraffic,
        steps: &[(u32, u64)],
        out: &mut Plan,
    ) {
        let c = self.capacity;
        let now = self.now_ms;
        let weight = traffic.traffic.weight_of(target.generation);
        let healthy_fresh = fresh.iter().filter(|i| i.healthy()).count();
        // Instances of the target that must be replaced (drift, age, failing) are swapped one by one:
        // the replacement first, then the old one once the group is whole again.
        // Weights are per generation, so an instance of the target's generation with another image is
        // replaced like these, never taken for a previous generation.
        let replacing: Vec<&(&Instance, String)> =
            stale.iter().filter(|(i, _)| i.generation == target.generation).collect();
        let others: Vec<&(&Instance, String)> =
            stale.iter().filter(|(i, _)| i.generation != target.generation).collect();
        let full_hold_ms = if self.restoring { 0 } else { ms(steps.last().map_or(0, |s| s.1)) };
        if weight >= 100 {
            self.launch(out, target, c.saturating_sub(fresh.len()));
            for (i, why) in &replacing {
                if healthy_fresh >= c {
                    self.terminate(out, i, why.clone());
                } else {
                    out.waiting.push(format!("{}: replacement for {} not healthy yet", self.group, i.id));
                    break;
                }
            }
            if !others.is_empty() {
                let until = traffic.since_ms.saturating_add(full_hold_ms);
                if now >= until {
                    for (i, why) in &others {
                        self.terminate(out, i, why.clone());
                    }
                } else {
                    out.waiting.push(format!(
                        "{}: keeping {} previous instance(s) for {}s more",
                        self.group,
                        others.len(),
                        (until - now).div_ceil(1000)
                    ));
                }
            }
            self.trim(fresh, out);
            let starting = fresh.len() - healthy_fresh;
            if starting > 0 {
                out.waiting.push(format!("{}: {starting} instance(s) not healthy yet", self.group));
            }
            return;
        }
        // Where the traffic not yet on the target goes: the previous generation with the most healthy
        // instances, on a tie the one with more weight. Not simply the one with the most weight: after a
        // preempted canary that may be a generation only partly launched, which could not carry the rest.
        let mut serving: BTreeMap<u64, usize> = BTreeMap::new();
        for (i, _) in &others {
            if i.healthy() {
                *serving.entry(i.generation).or_default() += 1;
            }
        }
        let stable = serving.iter().max_by_key(|(g, n)| (**n, traffic.traffic.weight_of(**g), **g)).map(|(g, _)| *g);
        // A generation's instances that carry no traffic and are not the stable one are left over from a
        // preempted rollout: they go at once.
        for (i, why) in &others {
            let carries = match &traffic.traffic {
                Traffic::Even => true,
                Traffic::Weighted(_) => traffic.traffic.weight_of(i.generation) > 0,
            };
            if !carries && Some(i.generation) != stable {
                self.terminate(out, i, why.clone());
            }
        }
        // The next weight: the first step above the current one; a restore or a group with nothing else
        // healthy goes straight to 100.
        let current_step = steps.iter().find(|s| s.0 == weight);
        let next = if self.restoring || !self.gated || stable.is_none() {
            100
        } else {
            steps.iter().map(|s| s.0).find(|w| *w > weight).unwrap_or(100)
        };
        let need = if next >= 100 { c } else { (c * next as usize).div_ceil(100).max(1) };
        self.launch(out, target, need.saturating_sub(fresh.len()));
        // Instances of the target being replaced (drift, age) go once the fresh ones carry the current
        // weight, as at 100%: otherwise a pause longer than `max_instance_age_seconds` piles them up.
        let carrying = if weight == 0 { 0 } else { (c * weight as usize).div_ceil(100).max(1) };
        for (i, why) in &replacing {
            if healthy_fresh >= carrying {
                self.terminate(out, i, why.clone());
            } else {
                out.waiting.push(format!("{}: replacement for {} not healthy yet", self.group, i.id));
                break;
            }
        }
        if let Some((_, pause)) = current_step.filter(|_| weight > 0 && self.gated && !self.restoring) {
            let until = traffic.since_ms.saturating_add(ms(*pause));
            if now < until {
                out.waiting.push(format!(
                    "{}: canary at {weight}%, pausing {}s more",
                    self.group,
                    (until - now).div_ceil(1000)
                ));
                return;
            }
        }
        if healthy_fresh < need {
            out.waiting.push(format!(
                "{}: {healthy_fresh} of {need} new instance(s) healthy before {next}% of traffic",
                self.group
            ));
            return;
        }
        let mut weights = BTreeMap::from([(target.generation, next)]);
        if next < 100 {
            if let Some(s) = stable {
                weights.insert(s, 100 - next);
            }
        }
        if weights.len() == 1 {
            weights.insert(target.generation, 100);
        }
        self.set_traffic(out, Traffic::Weighted(weights));
    }

    /// Terminates fresh instances above capacity, least proven first.
    fn trim(&self, fresh: &[&Instance], out: &mut Plan) {
        let excess = fresh.len().saturating_sub(self.capacity);
        let mut surplus: Vec<&&Instance> = fresh.iter().collect();
        surplus.sort_by_key(|i| (i.healthy(), std::cmp::Reverse(i.launched_ms)));
        for i in surplus.into_iter().take(excess) {
            self.terminate(out, i, "above capacity");
        }
    }
}
