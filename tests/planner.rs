//! The planner against the simulated provider on virtual time, and on observed states built by hand.
//!
//! Table tests walk one rollout each (rolling, blue/green, canary, failed gates, preemption, drift, age,
//! restarts) through `converge::tick` and assert what the rollout must look like. Property tests
//! (`proptest`) throw random valid specs, boot times and launch errors at the same driver, and random
//! observed states at `plan` directly. Every tick of every test is checked against the invariants in
//! [`check_tick`]: the plan is pure and does not depend on the order of the observed instances, its
//! batches are disjoint, rolling stays within `capacity + max_surge` and `capacity - max_unavailable`,
//! and weighted traffic only goes to generations with enough healthy instances.

use ledger_format::ranges::check_environment_ranges;
use ledger_format::types::{EnvName, Environment, GroupName, Image, Strategy as Rollout};
use ledger_format::Blake3Digest;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use stele::converge::{self, Memory, Tick};
use stele::plan::{
    plan, Action, Desired, Generation, GroupTraffic, Health, Instance, Lost, Observed, Phase, Plan, Release, Traffic,
};
use stele::provider::sim::{Sim, SimConfig, SimEvent};

// ---------------------------------------------------------------------------------------------------
// Specs and releases

/// An environment spec with one group `web`, as JSON, so tests can change any field before parsing.
fn spec_json(strategy: Value, capacity: u64) -> Value {
    json!({
        "type": "stele.environment/v1",
        "ledger": "acme",
        "name": "prod",
        "version": 1,
        "provider": {"kind": "local"},
        "groups": [{"name": "web", "capacity": capacity}],
        "strategy": strategy,
        "health": {"kind": "tcp", "interval_ms": 1000, "timeout_ms": 500, "healthy_threshold": 1, "deadline_seconds": 30},
        "drift": "correct",
        "revert": "allow",
    })
}

/// Parses a spec and insists it passes the ledger's range checks: tests only plan for specs a ledger
/// could hold.
fn build(v: Value) -> Environment {
    let spec: Environment = serde_json::from_value(v).expect("spec parses");
    check_environment_ranges(&spec).expect("spec is within the ledger's ranges");
    spec
}

fn rolling(capacity: u64, max_surge: u64, max_unavailable: u64, min_ready_seconds: u64) -> Environment {
    build(spec_json(
        json!({"kind": "rolling", "max_surge": max_surge, "max_unavailable": max_unavailable, "min_ready_seconds": min_ready_seconds}),
        capacity,
    ))
}

fn blue_green(capacity: u64, grace_seconds: u64) -> Environment {
    build(spec_json(json!({"kind": "blue_green", "grace_seconds": grace_seconds}), capacity))
}

/// Canary steps as (weight, pause seconds).
fn canary(capacity: u64, steps: &[(u64, u64)]) -> Environment {
    let steps: Vec<Value> = steps.iter().map(|(w, p)| json!({"weight": w, "pause_seconds": p})).collect();
    build(spec_json(json!({"kind": "canary", "steps": steps}), capacity))
}

fn digest_of(version: &str) -> Blake3Digest {
    Blake3Digest(*blake3::hash(version.as_bytes()).as_bytes())
}

/// Generation `generation` of the ledger, running version `version` (whose digest is derived from it).
fn release(generation: Generation, version: &str) -> Release {
    Release {
        generation,
        version: version.parse().unwrap(),
        seq: generation,
        image: Image::Artifact {
            uri: format!("file:///srv/app-{version}.tar").parse().unwrap(),
            blake3: digest_of(version),
            size: 1024,
        },
    }
}

fn web() -> GroupName {
    "web".parse().unwrap()
}

fn env_name() -> EnvName {
    "prod".parse().unwrap()
}

fn weighted(pairs: &[(Generation, u32)]) -> Traffic {
    Traffic::Weighted(pairs.iter().copied().collect())
}

/// An instance of `r` in group `web`, for observed states built by hand.
fn instance(id: &str, r: &Release, launched_ms: u64, health: Health, drift: Option<&str>) -> Instance {
    Instance {
        id: id.into(),
        group: web(),
        generation: r.generation,
        digest: *r.digest(),
        launched_ms,
        health,
        drift: drift.map(str::to_owned),
    }
}

// ---------------------------------------------------------------------------------------------------
// Invariants, checked after every tick of every test

/// Instances a canary or blue/green step must have healthy before it sends `weight`% of the traffic to a
/// generation: its share of the capacity, at least one; all of it at 100%.
fn need(capacity: usize, weight: u32) -> usize {
    if weight >= 100 {
        capacity
    } else {
        (capacity * weight as usize).div_ceil(100).max(1)
    }
}

fn alive(i: &Instance) -> bool {
    !matches!(i.health, Health::Gone { .. })
}

fn healthy(i: &Instance) -> bool {
    matches!(i.health, Health::Healthy { .. })
}

/// Healthy for `min_ready_ms`: what rolling counts as available.
fn ready(i: &Instance, now_ms: u64, min_ready_ms: u64) -> bool {
    matches!(i.health, Health::Healthy { since_ms } if now_ms >= since_ms + min_ready_ms)
}

fn runs(i: &Instance, r: &Release) -> bool {
    i.generation == r.generation && &i.digest == r.digest()
}

/// The share of a group's traffic that `generation` had when observed: its weight. Even traffic (a
/// rolling spec before) is not judged: a spec changed mid-rollout starts its steps from scratch.
fn share_before(observed: &Observed, group: &GroupName, generation: Generation) -> u32 {
    match observed.traffic.get(group).map(|t| &t.traffic) {
        Some(Traffic::Weighted(w)) => w.get(&generation).copied().unwrap_or(0),
        Some(Traffic::Even) | None => 100,
    }
}

/// The checks that hold for any plan of any strategy: purity (also under a reordering of the observed
/// instances), disjoint batches, launches only of the effective release, well-formed traffic, and the
/// strategy's own budget rules.
fn check_plan(desired: &Desired, observed: &Observed, now_ms: u64, p: &Plan) {
    let spec = desired.spec;
    assert_eq!(&plan(desired, observed, now_ms), p, "plan is pure: same inputs, same plan");
    let mut reordered = observed.clone();
    reordered.instances.reverse();
    assert_eq!(&plan(desired, &reordered, now_ms), p, "plan does not depend on the order instances are listed in");

    if let Some(fail) = p.actions.iter().find(|a| matches!(a, Action::FailGate { .. })) {
        assert_eq!(p.actions.len(), 1, "a FailGate is the only action of its plan: {fail:?}");
        assert_eq!(p.phase, Phase::Degraded);
        return;
    }
    let by_id: BTreeMap<&str, &Instance> = observed.instances.iter().map(|i| (i.id.as_str(), i)).collect();
    let mut terminated = BTreeSet::new();
    let mut traffic_groups = BTreeSet::new();
    let mut launches: BTreeMap<&GroupName, usize> = BTreeMap::new();
    for a in &p.actions {
        match a {
            Action::Terminate { group, id, .. } => {
                assert!(terminated.insert(id.as_str()), "instance {id} is terminated twice in one plan: {p:#?}");
                let i = by_id.get(id.as_str()).unwrap_or_else(|| panic!("terminates {id}, which was not observed"));
                assert_eq!(&i.group, group, "terminates {id} in the wrong group");
            }
            Action::Launch { group, release } => {
                assert_eq!(Some(release), p.effective.as_ref(), "launches only the effective release");
                assert!(spec.groups.iter().any(|g| &g.name == group), "launches into a group of the spec");
                *launches.entry(group).or_default() += 1;
            }
            Action::SetTraffic { group, .. } => {
                assert!(traffic_groups.insert(group), "traffic of {group} is set twice in one plan");
            }
            Action::FailGate { .. } => unreachable!(),
        }
    }
    if p.phase == Phase::Healthy {
        assert!(p.converged(), "Healthy only when nothing is left to do: {p:#?}");
        check_really_converged(desired, observed, now_ms, p);
    }
    let degraded = desired.restoring() || (desired.effective().is_none() && desired.failed.is_some());
    assert_eq!(p.phase == Phase::Degraded, degraded, "Degraded exactly while a failed gate is in force: {p:#?}");
    // Launching into a group while trimming it as "above capacity" would undo itself.
    for a in &p.actions {
        if let Action::Terminate { group, id, reason } = a {
            assert!(
                !(reason.contains("above capacity") && launches.contains_key(group)),
                "{group}: launches and trims {id} as above capacity in one plan: {p:#?}"
            );
        }
    }
    for g in &spec.groups {
        let capacity = g.capacity as usize;
        let members: Vec<&Instance> = observed.instances.iter().filter(|i| i.group == g.name).collect();
        let set = p.actions.iter().find_map(|a| match a {
            Action::SetTraffic { group, traffic } if *group == g.name => Some(traffic),
            _ => None,
        });
        match &spec.strategy {
            // With no target everything goes, whatever the budgets.
            _ if p.effective.is_none() => {}
            Rollout::Rolling { max_surge, max_unavailable, min_ready_seconds } => {
                let (surge, unavailable) = (*max_surge as usize, *max_unavailable as usize);
                let min_ready_ms = min_ready_seconds * 1000;
                // (a) never more than capacity + max_surge alive once the launches start.
                let alive_now = members.iter().filter(|i| alive(i)).count();
                let launched = launches.get(&g.name).copied().unwrap_or(0);
                if launched > 0 {
                    assert!(
                        alive_now + launched <= capacity + surge,
                        "{}: {alive_now} alive + {launched} launches exceeds capacity {capacity} + max_surge {surge}",
                        g.name
                    );
                }
                // (b) terminations never take the ready count below capacity - max_unavailable.
                let ready_before = members.iter().filter(|i| ready(i, now_ms, min_ready_ms)).count();
                let ready_stopped = members
                    .iter()
                    .filter(|i| ready(i, now_ms, min_ready_ms) && terminated.contains(i.id.as_str()))
                    .count();
                let floor = capacity.saturating_sub(unavailable);
                if ready_before >= floor {
                    assert!(
                        ready_before - ready_stopped >= floor,
                        "{}: terminating {ready_stopped} of {ready_before} ready instances goes below {floor}: {p:#?}",
                        g.name
                    );
                }
                if let Some(t) = set {
                    assert_eq!(t, &Traffic::Even, "rolling traffic is even");
                }
            }
            Rollout::BlueGreen { .. } | Rollout::Canary { .. } => {
                // (d) weight only to generations with enough healthy instances.
                let Some(Traffic::Weighted(w)) = set else {
                    assert!(set.is_none(), "blue/green and canary set weights, not {set:?}");
                    continue;
                };
                assert_eq!(w.values().sum::<u32>(), 100, "weights sum to 100: {w:?}");
                for (generation, weight) in w.iter().filter(|(_, w)| **w > 0) {
                    match p.effective.as_ref().filter(|e| e.generation == *generation) {
                        Some(e) => {
                            let n = members.iter().filter(|i| runs(i, e) && healthy(i)).count();
                            assert!(
                                n >= need(capacity, *weight),
                                "{}: {weight}% to generation {generation} with {n} healthy of {capacity}: {p:#?}",
                                g.name
                            );
                        }
                        None => {
                            let n = members.iter().filter(|i| i.generation == *generation && healthy(i)).count();
                            assert!(
                                n >= 1,
                                "{}: {weight}% to generation {generation}, which has no healthy instance",
                                g.name
                            );
                            // A previous generation may keep its share, but more load moves onto it
                            // only if it has the healthy instances for it, or no other previous one
                            // has more.
                            let had = share_before(observed, &g.name, *generation);
                            let most = members
                                .iter()
                                .filter(|i| i.generation != *generation && healthy(i))
                                .filter(|i| p.effective.as_ref().is_none_or(|e| i.generation != e.generation))
                                .fold(BTreeMap::<Generation, usize>::new(), |mut m, i| {
                                    *m.entry(i.generation).or_default() += 1;
                                    m
                                })
                                .into_values()
                                .max()
                                .unwrap_or(0);
                            assert!(
                                *weight <= had || n >= need(capacity, *weight) || n >= most,
                                "{}: {weight}% (was {had}%) to previous generation {generation} with {n} healthy of {capacity}: {p:#?}",
                                g.name
                            );
                        }
                    }
                }
            }
        }
    }
}

/// A plan that says Healthy must mean it: every group runs exactly its capacity of the effective
/// release, all healthy (rolling: ready), nothing drifted under `drift: correct`, nothing too old,
/// and traffic as the strategy sets it at rest.
fn check_really_converged(desired: &Desired, observed: &Observed, now_ms: u64, p: &Plan) {
    let spec = desired.spec;
    let Some(e) = p.effective.as_ref() else {
        assert!(observed.instances.is_empty(), "Healthy with no target but instances left: {p:#?}");
        return;
    };
    for i in &observed.instances {
        assert!(spec.groups.iter().any(|g| g.name == i.group), "Healthy with {} in an unknown group", i.id);
        assert!(runs(i, e), "Healthy with {} not running the effective release: {p:#?}", i.id);
        assert!(healthy(i), "Healthy with {} {}", i.id, i.health);
        if spec.drift == ledger_format::types::DriftMode::Correct {
            assert!(i.drift.is_none(), "Healthy with {} drifted", i.id);
        }
        if let Some(age) = spec.max_instance_age_seconds {
            assert!(now_ms < i.launched_ms + age * 1000, "Healthy with {} too old", i.id);
        }
        if let Rollout::Rolling { min_ready_seconds, .. } = spec.strategy {
            assert!(ready(i, now_ms, min_ready_seconds * 1000), "Healthy with {} not ready yet", i.id);
        }
    }
    for g in &spec.groups {
        let n = observed.instances.iter().filter(|i| i.group == g.name).count();
        assert_eq!(n as u64, g.capacity, "Healthy with {n} instances in {} of capacity {}", g.name, g.capacity);
        let traffic = observed.traffic.get(&g.name).map(|t| &t.traffic);
        match spec.strategy {
            Rollout::Rolling { .. } => assert!(matches!(traffic, None | Some(Traffic::Even)), "{traffic:?}"),
            _ => assert_eq!(traffic, Some(&weighted(&[(e.generation, 100)])), "Healthy with traffic {traffic:?}"),
        }
    }
}

/// What one tick left behind, for tests that look back at a rollout.
#[derive(Clone, Debug)]
struct Record {
    at_ms: u64,
    observed: Observed,
    plan: Plan,
    /// The instances in the simulation after the tick.
    after: Vec<Instance>,
    /// The tick recorded a failed health gate.
    failed_gate: Option<Generation>,
}

/// A simulated environment on virtual time, driven tick by tick through `converge::tick`.
struct World {
    sim: Sim,
    spec: Environment,
    memory: Memory,
    now: u64,
    step_ms: u64,
    log: Vec<Record>,
}

impl World {
    fn new(spec: Environment, config: SimConfig, step_ms: u64) -> Self {
        World { sim: Sim::new(config), spec, memory: Memory::default(), now: 0, step_ms, log: vec![] }
    }

    /// One tick at `now + step_ms`, checked against the invariants.
    fn tick(&mut self, target: Option<&Release>) -> Tick {
        self.now += self.step_ms;
        let before = self.memory.clone();
        let tick = converge::tick(&mut self.sim, &env_name(), &self.spec, target, &mut self.memory, self.now)
            .expect("the simulated provider refuses nothing");
        // The plan carried out was made with the gate memory as it stood after recording a failure and
        // before recording a healthy release.
        let desired = Desired {
            spec: &self.spec,
            target: target.cloned(),
            last_good: before.last_good.clone(),
            failed: self.memory.failed.as_ref().map(|f| f.generation),
            relaunched: before.desired(&self.spec, target).relaunched,
        };
        check_plan(&desired, &tick.observed, self.now, &tick.plan);
        assert!(
            !tick.plan.actions.iter().any(|a| matches!(a, Action::FailGate { .. })),
            "a FailGate is recorded, not carried out"
        );
        let after = self.sim.snapshot(&env_name(), self.now);
        for g in &self.spec.groups {
            // A plan never terminates the last instances of a generation that still has traffic
            // (unless the environment has no target at all).
            let traffic = self.sim.traffic(&env_name(), &g.name).filter(|_| tick.plan.effective.is_some());
            if let Some(GroupTraffic { traffic: Traffic::Weighted(w), .. }) = traffic {
                for (generation, _) in w.iter().filter(|(_, w)| **w > 0) {
                    let had = tick.observed.instances.iter().any(|i| i.group == g.name && i.generation == *generation);
                    assert!(
                        !had || after.iter().any(|i| i.group == g.name && i.generation == *generation),
                        "{}: traffic {w:?} points at generation {generation}, which has no instance left",
                        g.name
                    );
                }
            }
            // (a) checked on what actually runs as well as on the plan.
            if let Rollout::Rolling { max_surge, .. } = self.spec.strategy {
                let n = after.iter().filter(|i| i.group == g.name && alive(i)).count();
                // (After a capacity decrease the group may start above the bound; it must not grow.)
                let was = tick.observed.instances.iter().filter(|i| i.group == g.name && alive(i)).count();
                assert!(n as u64 <= g.capacity + max_surge || n <= was, "{}: {n} alive instances", g.name);
            }
        }
        let failed_gate = match (&before.failed, &self.memory.failed) {
            (None, Some(f)) => Some(f.generation),
            (Some(a), Some(b)) if a.generation != b.generation => Some(b.generation),
            _ => None,
        };
        self.log.push(Record {
            at_ms: self.now,
            observed: tick.observed.clone(),
            plan: tick.plan.clone(),
            after,
            failed_gate,
        });
        tick
    }

    /// Ticks until the environment is settled (converged, and Healthy or Degraded); panics after
    /// `max_ticks`. Returns the number of ticks taken and the last tick.
    fn settle(&mut self, target: Option<&Release>, max_ticks: usize) -> (usize, Tick) {
        for n in 1..=max_ticks {
            let tick = self.tick(target);
            if tick.converged() && matches!(tick.plan.phase, Phase::Healthy | Phase::Degraded) {
                return (n, tick);
            }
        }
        let last = self.log.last().expect("ticked at least once");
        panic!("not settled after {max_ticks} ticks (t={}ms): {:#?}\nsim: {:#?}", self.now, last.plan, last.after)
    }

    /// Deploys `r` into an empty environment and settles Healthy.
    fn deploy(&mut self, r: &Release) {
        let (_, tick) = self.settle(Some(r), 200);
        assert_eq!(tick.plan.phase, Phase::Healthy, "{:#?}", tick.plan);
        assert_eq!(self.memory.last_good.as_ref(), Some(r));
    }

    /// Instances in the simulation now.
    fn instances(&self) -> Vec<Instance> {
        self.sim.snapshot(&env_name(), self.now)
    }

    fn generations(&self) -> BTreeMap<Generation, usize> {
        let mut n = BTreeMap::new();
        for i in self.instances() {
            *n.entry(i.generation).or_default() += 1;
        }
        n
    }

    fn launches_of(&self, generation: Generation) -> usize {
        self.sim
            .events
            .iter()
            .filter(|e| matches!(e, SimEvent::Launched { generation: g, .. } if *g == generation))
            .count()
    }

    fn traffic(&self) -> Option<Traffic> {
        self.sim.traffic(&env_name(), &web()).map(|t| t.traffic.clone())
    }

    /// (time, traffic) of every traffic change so far.
    fn traffic_changes(&self) -> Vec<(u64, Traffic)> {
        self.sim
            .events
            .iter()
            .filter_map(|e| match e {
                SimEvent::Traffic { at_ms, traffic, .. } => Some((*at_ms, traffic.clone())),
                _ => None,
            })
            .collect()
    }

    /// When the instance `id` was terminated, by the ticks' plans.
    fn terminated_at(&self, id: &str) -> Option<u64> {
        self.log.iter().find_map(|r| {
            r.plan.actions.iter().any(|a| matches!(a, Action::Terminate { id: t, .. } if t == id)).then_some(r.at_ms)
        })
    }
}

fn config() -> SimConfig {
    SimConfig { boot_ms: 1_000, ..SimConfig::default() }
}

// ---------------------------------------------------------------------------------------------------
// Rolling

#[test]
fn rolling_with_surge_one_and_no_unavailable_replaces_one_at_a_time_and_keeps_capacity_ready() {
    let mut w = World::new(rolling(2, 1, 0, 0), config(), 500);
    let (v1, v2) = (release(1, "1.0.0"), release(2, "2.0.0"));
    w.deploy(&v1);
    let start = w.log.len();
    let (ticks, tick) = w.settle(Some(&v2), 100);
    assert_eq!(tick.plan.phase, Phase::Healthy);
    assert!(ticks < 40, "took {ticks} ticks");
    for r in &w.log[start..] {
        let ready = r.after.iter().filter(|i| ready(i, r.at_ms, 0)).count();
        assert!(ready >= 2, "t={}: only {ready} ready: {:#?}", r.at_ms, r.after);
        assert!(r.after.len() <= 3, "t={}: {} instances", r.at_ms, r.after.len());
        let starting = r.after.iter().filter(|i| !healthy(i)).count();
        assert!(starting <= 1, "t={}: {starting} new instances at once", r.at_ms);
    }
    assert_eq!(w.generations(), BTreeMap::from([(2, 2)]));
    assert_eq!(w.launches_of(2), 2, "no instance launched twice");
    assert_eq!(w.memory.last_good, Some(v2));
}

#[test]
fn rolling_with_no_surge_takes_down_at_most_max_unavailable_before_replacing() {
    let mut w = World::new(rolling(3, 0, 1, 2), config(), 500);
    let (v1, v2) = (release(1, "1.0.0"), release(2, "2.0.0"));
    w.deploy(&v1);
    let start = w.log.len();
    let (ticks, tick) = w.settle(Some(&v2), 200);
    assert_eq!(tick.plan.phase, Phase::Healthy);
    assert!(ticks < 100, "took {ticks} ticks");
    for r in &w.log[start..] {
        assert!(r.after.len() <= 3, "t={}: {} instances, surge is 0", r.at_ms, r.after.len());
        let ready = r.after.iter().filter(|i| ready(i, r.at_ms, 2_000)).count();
        assert!(ready >= 2, "t={}: only {ready} ready", r.at_ms);
    }
    assert_eq!(w.generations(), BTreeMap::from([(2, 3)]));
    assert_eq!(w.launches_of(2), 3);
}

#[test]
fn rolling_waits_min_ready_seconds_before_it_counts_a_new_instance_as_available() {
    let mut w = World::new(rolling(1, 1, 0, 3), config(), 500);
    let (v1, v2) = (release(1, "1.0.0"), release(2, "2.0.0"));
    w.deploy(&v1);
    let old = w.instances()[0].id.clone();
    w.settle(Some(&v2), 100);
    let new = w.instances().into_iter().find(|i| i.generation == 2).unwrap();
    let Health::Healthy { since_ms } = new.health else { panic!("{new:?}") };
    let stopped = w.terminated_at(&old).expect("the old instance was terminated");
    assert!(stopped >= since_ms + 3_000, "stopped at {stopped}, new one healthy since {since_ms}");
}

// ---------------------------------------------------------------------------------------------------
// Blue/green and canary

#[test]
fn blue_green_switches_only_when_the_whole_new_group_is_healthy_and_keeps_the_old_one_for_the_grace() {
    let mut w = World::new(blue_green(3, 30), config(), 500);
    let (v1, v2) = (release(1, "1.0.0"), release(2, "2.0.0"));
    w.deploy(&v1);
    assert_eq!(w.traffic(), Some(weighted(&[(1, 100)])));
    let old: Vec<String> = w.instances().into_iter().map(|i| i.id).collect();
    let start = w.log.len();
    let (_, tick) = w.settle(Some(&v2), 200);
    assert_eq!(tick.plan.phase, Phase::Healthy);
    let log = &w.log[start..];
    // The whole new group is launched in the first tick.
    let first_launches = log[0].plan.actions.iter().filter(|a| matches!(a, Action::Launch { .. })).count();
    assert_eq!(first_launches, 3);
    let switch = log
        .iter()
        .find(|r| {
            r.plan
                .actions
                .iter()
                .any(|a| matches!(a, Action::SetTraffic { traffic, .. } if *traffic == weighted(&[(2, 100)])))
        })
        .expect("traffic switched to generation 2");
    let healthy_new = switch.observed.instances.iter().filter(|i| i.generation == 2 && healthy(i)).count();
    assert_eq!(healthy_new, 3, "switched with {healthy_new} of 3 healthy");
    for id in &old {
        let at = w.terminated_at(id).expect("old instance terminated");
        assert!(at >= switch.at_ms + 30_000, "{id} stopped {}ms after the switch", at - switch.at_ms);
        assert!(at <= switch.at_ms + 30_000 + 500, "{id} kept {}ms after the switch", at - switch.at_ms);
    }
    assert_eq!(w.traffic_changes().len(), 2, "one switch per release: {:?}", w.traffic_changes());
    assert_eq!(w.generations(), BTreeMap::from([(2, 3)]));
}

#[test]
fn canary_moves_traffic_through_its_steps_and_pauses_at_each() {
    let mut w = World::new(canary(4, &[(25, 10), (50, 10)]), config(), 500);
    let (v1, v2) = (release(1, "1.0.0"), release(2, "2.0.0"));
    w.deploy(&v1);
    let before = w.traffic_changes().len();
    let (_, tick) = w.settle(Some(&v2), 300);
    assert_eq!(tick.plan.phase, Phase::Healthy);
    let changes = w.traffic_changes()[before..].to_vec();
    let shapes: Vec<&Traffic> = changes.iter().map(|(_, t)| t).collect();
    assert_eq!(
        shapes,
        [&weighted(&[(2, 25), (1, 75)]), &weighted(&[(2, 50), (1, 50)]), &weighted(&[(2, 100)])],
        "{changes:?}"
    );
    for pair in changes.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!((10_000..=10_000 + 1_500).contains(&gap), "{gap}ms between steps, the pause is 10s: {changes:?}");
    }
    assert_eq!(w.generations(), BTreeMap::from([(2, 4)]));
}

#[test]
fn canary_last_step_at_full_weight_keeps_the_old_generation_for_its_pause() {
    let mut w = World::new(canary(2, &[(50, 5), (100, 20)]), config(), 500);
    let (v1, v2) = (release(1, "1.0.0"), release(2, "2.0.0"));
    w.deploy(&v1);
    let old: Vec<String> = w.instances().into_iter().map(|i| i.id).collect();
    w.settle(Some(&v2), 300);
    let (full_at, _) = *w.traffic_changes().iter().rev().find(|(_, t)| *t == weighted(&[(2, 100)])).unwrap();
    for id in &old {
        let at = w.terminated_at(id).unwrap();
        assert!(at >= full_at + 20_000, "{id} stopped {}ms after 100%", at - full_at);
    }
}

// ---------------------------------------------------------------------------------------------------
// Health gates

/// Deploys v1 (generation 1), then the failing `bad` as generation 2: the gate must fail once, the old
/// generation come back with all the traffic, and nothing of generation 2 be launched again for a long
/// time; generation 3 (good) must then roll out.
fn failed_gate_restores_and_waits_for_a_newer_generation(spec: Environment, config: SimConfig, bad: &str) {
    let capacity = spec.groups[0].capacity as usize;
    let weighted_strategy = !matches!(spec.strategy, Rollout::Rolling { .. });
    let mut w = World::new(spec, config, 500);
    let (v1, v2, v3) = (release(1, "1.0.0"), release(2, bad), release(3, "4.0.0"));
    w.deploy(&v1);
    let (_, tick) = w.settle(Some(&v2), 300);
    assert_eq!(tick.plan.phase, Phase::Degraded);
    assert_eq!(tick.plan.effective.as_ref(), Some(&v1), "restoring the last good release");
    let fails: Vec<Generation> = w.log.iter().filter_map(|r| r.failed_gate).collect();
    assert_eq!(fails, [2], "the gate failed exactly once");
    assert_eq!(w.memory.failed.as_ref().map(|f| f.generation), Some(2));
    assert_eq!(w.memory.last_good.as_ref(), Some(&v1));
    assert_eq!(w.generations(), BTreeMap::from([(1, capacity)]), "{:#?}", w.instances());
    if weighted_strategy {
        assert_eq!(w.traffic(), Some(weighted(&[(1, 100)])));
    }
    // No retry loop: the failed generation stays the target, and nothing of it is launched again.
    let launched = w.launches_of(2);
    for _ in 0..400 {
        let tick = w.tick(Some(&v2));
        assert_eq!(tick.plan.phase, Phase::Degraded);
        assert!(tick.converged(), "{:#?}", tick.plan);
    }
    assert_eq!(w.launches_of(2), launched, "generation 2 was launched again after its gate failed");
    assert_eq!(w.generations(), BTreeMap::from([(1, capacity)]));
    // A newer generation proceeds.
    let (_, tick) = w.settle(Some(&v3), 300);
    assert_eq!(tick.plan.phase, Phase::Healthy);
    assert_eq!(w.memory.failed, None);
    assert_eq!(w.memory.last_good.as_ref(), Some(&v3));
    assert_eq!(w.generations(), BTreeMap::from([(3, capacity)]));
    if weighted_strategy {
        assert_eq!(w.traffic(), Some(weighted(&[(3, 100)])));
    }
}

fn unhealthy(version: &str) -> SimConfig {
    SimConfig { unhealthy: [version.parse().unwrap()].into(), ..config() }
}

fn crashing(version: &str) -> SimConfig {
    SimConfig { crashing: [version.parse().unwrap()].into(), ..config() }
}

#[test]
fn canary_of_an_unhealthy_release_fails_the_gate_restores_the_old_traffic_and_does_not_retry() {
    failed_gate_restores_and_waits_for_a_newer_generation(
        canary(4, &[(25, 10), (50, 10)]),
        unhealthy("3.0.0"),
        "3.0.0",
    );
}

#[test]
fn rolling_of_an_unhealthy_release_fails_the_gate_and_rolls_back_without_retrying() {
    failed_gate_restores_and_waits_for_a_newer_generation(rolling(3, 1, 0, 0), unhealthy("3.0.0"), "3.0.0");
    failed_gate_restores_and_waits_for_a_newer_generation(rolling(3, 0, 2, 1), unhealthy("3.0.0"), "3.0.0");
}

#[test]
fn blue_green_of_an_unhealthy_release_fails_the_gate_before_any_traffic_moves() {
    failed_gate_restores_and_waits_for_a_newer_generation(blue_green(3, 30), unhealthy("3.0.0"), "3.0.0");
}

#[test]
fn a_crashing_release_fails_the_gate() {
    failed_gate_restores_and_waits_for_a_newer_generation(rolling(2, 1, 0, 0), crashing("3.0.0"), "3.0.0");
    failed_gate_restores_and_waits_for_a_newer_generation(blue_green(2, 10), crashing("3.0.0"), "3.0.0");
    failed_gate_restores_and_waits_for_a_newer_generation(canary(3, &[(34, 5)]), crashing("3.0.0"), "3.0.0");
}

#[test]
fn a_release_slower_to_boot_than_the_deadline_fails_the_gate() {
    let config = SimConfig { slow_boot: [("3.0.0".parse().unwrap(), 60_000)].into(), ..config() };
    failed_gate_restores_and_waits_for_a_newer_generation(rolling(2, 1, 1, 0), config, "3.0.0");
}

/// Rolls generation 2 out until `moment` holds, then makes 2.0.0 fail (`crash`: exit, else fail its
/// checks); the gate must fail and generation 1 come back whole, with all the traffic.
fn late_failure_restores_generation_one(spec: Environment, crash: bool, moment: impl Fn(&World) -> bool) {
    let capacity = spec.groups[0].capacity as usize;
    let weighted_strategy = !matches!(spec.strategy, Rollout::Rolling { .. });
    let mut w = World::new(spec, config(), 500);
    let (v1, v2) = (release(1, "1.0.0"), release(2, "2.0.0"));
    w.deploy(&v1);
    for n in 0.. {
        assert!(n < 200, "the moment never came");
        w.tick(Some(&v2));
        if moment(&w) {
            break;
        }
    }
    assert_eq!(w.memory.last_good.as_ref(), Some(&v1), "still gated");
    let bad = "2.0.0".parse().unwrap();
    if crash {
        w.sim.config.crashing.insert(bad);
    } else {
        w.sim.config.unhealthy.insert(bad);
    }
    let (_, tick) = w.settle(Some(&v2), 300);
    assert_eq!(tick.plan.phase, Phase::Degraded);
    assert_eq!(w.memory.failed.as_ref().map(|f| f.generation), Some(2));
    assert_eq!(w.generations(), BTreeMap::from([(1, capacity)]));
    if weighted_strategy {
        assert_eq!(w.traffic(), Some(weighted(&[(1, 100)])));
    }
}

#[test]
fn a_canary_that_fails_after_taking_traffic_gives_it_back_to_the_old_generation() {
    for crash in [false, true] {
        late_failure_restores_generation_one(canary(4, &[(25, 10), (50, 10)]), crash, |w| {
            w.traffic() == Some(weighted(&[(2, 50), (1, 50)]))
        });
    }
}

#[test]
fn blue_green_that_fails_during_the_grace_period_switches_back_to_the_old_group() {
    for crash in [false, true] {
        late_failure_restores_generation_one(blue_green(3, 60), crash, |w| w.traffic() == Some(weighted(&[(2, 100)])));
    }
}

#[test]
fn rolling_that_fails_after_the_old_generation_is_gone_relaunches_the_last_good_release() {
    // min_ready_seconds keeps generation 2 from being Healthy for a while after the last old instance went.
    for crash in [false, true] {
        late_failure_restores_generation_one(rolling(3, 1, 1, 20), crash, |w| !w.generations().contains_key(&1));
    }
}

#[test]
fn a_failing_first_release_leaves_nothing_running_and_stays_degraded() {
    let mut w = World::new(rolling(2, 1, 0, 0), unhealthy("1.0.0"), 500);
    let v1 = release(1, "1.0.0");
    let (_, tick) = w.settle(Some(&v1), 200);
    assert_eq!(tick.plan.phase, Phase::Degraded);
    assert!(w.instances().is_empty());
    let launched = w.launches_of(1);
    for _ in 0..200 {
        assert_eq!(w.tick(Some(&v1)).plan.phase, Phase::Degraded);
    }
    assert_eq!(w.launches_of(1), launched);
}

#[test]
fn an_instance_of_an_already_healthy_generation_that_crashes_is_replaced_without_failing_the_gate() {
    for spec in [rolling(3, 1, 1, 0), blue_green(3, 5), canary(3, &[(50, 5)])] {
        let mut w = World::new(spec, config(), 500);
        let v1 = release(1, "1.0.0");
        w.deploy(&v1);
        let old: BTreeSet<String> = w.instances().into_iter().map(|i| i.id).collect();
        // Every instance of 1.0.0 exits, for one tick.
        w.sim.config.crashing.insert("1.0.0".parse().unwrap());
        w.tick(Some(&v1));
        w.sim.config.crashing.clear();
        let (_, tick) = w.settle(Some(&v1), 100);
        assert_eq!(tick.plan.phase, Phase::Healthy);
        assert_eq!(w.memory.failed, None, "an already-healthy generation does not fail its gate");
        let now: BTreeSet<String> = w.instances().into_iter().map(|i| i.id).collect();
        assert!(now.is_disjoint(&old), "the exited instances were replaced");
        assert_eq!(now.len(), 3);
    }
}

#[test]
fn an_instance_of_an_already_healthy_generation_that_fails_its_checks_is_replaced_not_gated() {
    let spec = rolling(2, 1, 0, 0);
    let v2 = release(2, "2.0.0");
    let inst = |id: &str, health: Health| Instance {
        id: id.into(),
        group: web(),
        generation: 2,
        digest: *v2.digest(),
        launched_ms: 0,
        health,
        drift: None,
    };
    let desired = Desired {
        spec: &spec,
        target: Some(v2.clone()),
        last_good: Some(v2.clone()),
        failed: None,
        relaunched: vec![],
    };
    for broken in [
        Health::Unhealthy { since_ms: 40_000, reason: "503".into() },
        Health::Gone { reason: "exited".into() },
        Health::Starting,
    ] {
        let observed = Observed {
            instances: vec![inst("a", Health::Healthy { since_ms: 1_000 }), inst("b", broken.clone())],
            traffic: BTreeMap::new(),
            probes: None,
        };
        let p = plan(&desired, &observed, 100_000);
        check_plan(&desired, &observed, 100_000, &p);
        assert_eq!(p.phase, Phase::Progressing, "{broken:?}: {p:#?}");
        assert!(p.actions.iter().any(|a| matches!(a, Action::Terminate { id, .. } if id == "b")), "{broken:?}: {p:#?}");
        assert!(p.actions.iter().any(|a| matches!(a, Action::Launch { .. })), "{broken:?}: {p:#?}");
        // The same instance in a generation that was never healthy fails the gate; a lost one only once
        // the relaunch budget is used up.
        let gated = Desired { last_good: None, ..desired.clone() };
        let p = plan(&gated, &observed, 100_000);
        if matches!(broken, Health::Gone { .. }) {
            assert_eq!(p.relaunch, [Lost { id: "b".into(), reason: "exited".into() }], "{p:#?}");
            assert!(p.actions.iter().any(|a| matches!(a, Action::Launch { .. })), "relaunched: {p:#?}");
            let spent = Desired { relaunched: vec!["earlier".into()], ..gated.clone() };
            let p = plan(&spent, &observed, 100_000);
            assert!(matches!(p.actions.as_slice(), [Action::FailGate { generation: 2, .. }]), "{p:#?}");
        } else {
            assert!(matches!(p.actions.as_slice(), [Action::FailGate { generation: 2, .. }]), "{broken:?}: {p:#?}");
        }
    }
}

#[test]
fn a_deadline_passes_only_after_enough_probes_were_made() {
    // Deadline 30 s at a 1 s interval: 30 probes. A paused or busy agent probed less often.
    let spec = rolling(2, 1, 0, 0);
    let (v1, v2) = (release(1, "1.0.0"), release(2, "2.0.0"));
    let desired = Desired {
        spec: &spec,
        target: Some(v2.clone()),
        last_good: Some(v1.clone()),
        failed: None,
        relaunched: vec![],
    };
    let old = |id: &str| instance(id, &v1, 0, Health::Healthy { since_ms: 1 }, None);
    let observed = |probes: Option<u64>| Observed {
        instances: vec![old("a"), old("b"), instance("n", &v2, 10_000, Health::Starting, None)],
        traffic: BTreeMap::new(),
        probes: probes.map(|n| BTreeMap::from([("n".to_owned(), n)])),
    };
    let fails = |p: &Plan| matches!(p.actions.as_slice(), [Action::FailGate { .. }]);
    // (now, probes made, gate fails)
    let table = [
        (39_999, None, false),
        (40_000, None, true),
        (40_000, Some(29), false),
        (900_000, Some(1), false),
        (40_000, Some(30), true),
        (39_000, Some(100), false),
    ];
    for (now, probes, fail) in table {
        let o = observed(probes);
        let p = plan(&desired, &o, now);
        assert_eq!(fails(&p), fail, "now {now}, probes {probes:?}: {p:#?}");
        // Steady state (the generation was healthy here): replaced past the deadline, by the same rule.
        let steady = Desired { last_good: Some(v2.clone()), ..desired.clone() };
        let p = plan(&steady, &o, now);
        let replaced = p.actions.iter().any(|a| matches!(a, Action::Terminate { id, .. } if id == "n"));
        assert_eq!(replaced, fail, "steady, now {now}, probes {probes:?}: {p:#?}");
    }
}

#[test]
fn a_stopping_instance_gets_no_action_holds_its_place_within_surge_and_keeps_the_plan_waiting() {
    let spec = rolling(2, 1, 0, 0);
    let (v1, v2) = (release(1, "1.0.0"), release(2, "2.0.0"));
    let desired = Desired {
        spec: &spec,
        target: Some(v2.clone()),
        last_good: Some(v1.clone()),
        failed: None,
        relaunched: vec![],
    };
    let observed = Observed {
        instances: vec![
            instance("a", &v1, 0, Health::Healthy { since_ms: 1 }, None),
            instance("b", &v1, 0, Health::Stopping { since_ms: 5_000 }, None),
            instance("n", &v2, 6_000, Health::Healthy { since_ms: 7_000 }, None),
        ],
        traffic: BTreeMap::new(),
        probes: None,
    };
    let p = plan(&desired, &observed, 8_000);
    check_plan(&desired, &observed, 8_000, &p);
    assert!(!p.actions.iter().any(|a| matches!(a, Action::Terminate { id, .. } if id == "b")), "{p:#?}");
    assert!(!p.actions.iter().any(|a| matches!(a, Action::Launch { .. })), "b still holds the surge place: {p:#?}");
    assert!(p.waiting.iter().any(|w| w.contains("1 instance(s) stopping")), "{p:#?}");
    // Converged but for the stopping one: not converged until it is gone.
    let done = Observed {
        instances: vec![
            instance("m", &v2, 6_000, Health::Healthy { since_ms: 7_000 }, None),
            instance("b", &v1, 0, Health::Stopping { since_ms: 5_000 }, None),
            instance("n", &v2, 6_000, Health::Healthy { since_ms: 7_000 }, None),
        ],
        ..observed
    };
    let p = plan(&desired, &done, 8_000);
    assert!(p.actions.is_empty() && !p.converged() && p.phase == Phase::Progressing, "{p:#?}");
}

// ---------------------------------------------------------------------------------------------------
// Preemption, drift, age, no target, restarts

#[test]
fn a_newer_generation_preempts_a_rollout_in_progress_and_only_it_remains() {
    let specs = [rolling(4, 1, 1, 0), rolling(3, 0, 1, 0), blue_green(3, 20), canary(4, &[(25, 10), (50, 10)])];
    for spec in specs {
        let what = format!("{:?}", spec.strategy);
        for mid_ticks in [1, 3, 6, 25] {
            let mut w = World::new(spec.clone(), config(), 500);
            let (v1, v2, v3) = (release(1, "1.0.0"), release(2, "2.0.0"), release(3, "3.0.0"));
            w.deploy(&v1);
            for _ in 0..mid_ticks {
                w.tick(Some(&v2));
            }
            let launched = w.launches_of(2);
            let (_, tick) = w.settle(Some(&v3), 300);
            assert_eq!(tick.plan.phase, Phase::Healthy, "{what}");
            assert_eq!(w.launches_of(2), launched, "{what}: generation 2 launched after 3 arrived");
            assert_eq!(w.generations(), BTreeMap::from([(3, spec.groups[0].capacity as usize)]), "{what}");
            assert_eq!(w.memory.last_good.as_ref(), Some(&v3));
        }
    }
}

#[test]
fn a_canary_preempted_past_half_gives_the_rest_of_the_traffic_to_the_generation_that_can_carry_it() {
    // Generation 2 was at its 60% step with 3 of 4 instances when generation 3 arrived; generation 3's
    // first step is 10%. The other 90% must go to generation 1 (4 healthy), not to generation 2, which
    // has the most weight but only 3 instances.
    let spec = canary(4, &[(10, 10), (60, 10)]);
    let (v1, v2, v3) = (release(1, "1.0.0"), release(2, "2.0.0"), release(3, "3.0.0"));
    let up = || Health::Healthy { since_ms: 2_000 };
    let mut instances: Vec<Instance> = (0..4).map(|n| instance(&format!("a{n}"), &v1, 0, up(), None)).collect();
    instances.extend((0..3).map(|n| instance(&format!("b{n}"), &v2, 1_000, up(), None)));
    instances.push(instance("c0", &v3, 1_000, up(), None));
    let observed = Observed {
        instances,
        traffic: BTreeMap::from([(web(), GroupTraffic { traffic: weighted(&[(1, 40), (2, 60)]), since_ms: 1_500 })]),
        probes: None,
    };
    let desired = Desired { spec: &spec, target: Some(v3), last_good: Some(v1), failed: None, relaunched: vec![] };
    let p = plan(&desired, &observed, 20_000);
    check_plan(&desired, &observed, 20_000, &p);
    assert_eq!(p.actions, [Action::SetTraffic { group: web(), traffic: weighted(&[(3, 10), (1, 90)]) }], "{p:#?}");
}

#[test]
fn an_instance_of_the_target_generation_with_another_image_is_replaced_not_taken_for_a_previous_generation() {
    // Weights are per generation: counting the two odd instances as a "previous generation" (the one
    // with the most healthy instances) would give generation 2 all the traffic with one proper instance.
    let spec = canary(3, &[(1, 0)]);
    let (v1, v2) = (release(1, "1.0.0"), release(2, "2.0.0"));
    let up = || Health::Healthy { since_ms: 2_000 };
    let odd = |id: &str| Instance { digest: digest_of("tampered"), ..instance(id, &v2, 1_000, up(), None) };
    let observed = Observed {
        instances: vec![
            instance("a0", &v1, 0, up(), None),
            instance("b0", &v2, 1_000, up(), None),
            odd("b1"),
            odd("b2"),
        ],
        traffic: BTreeMap::from([(web(), GroupTraffic { traffic: weighted(&[(1, 100)]), since_ms: 0 })]),
        probes: None,
    };
    let desired = Desired { spec: &spec, target: Some(v2), last_good: Some(v1), failed: None, relaunched: vec![] };
    let p = plan(&desired, &observed, 20_000);
    check_plan(&desired, &observed, 20_000, &p);
    assert!(p.actions.contains(&Action::SetTraffic { group: web(), traffic: weighted(&[(2, 1), (1, 99)]) }), "{p:#?}");
    for id in ["b1", "b2"] {
        assert!(p.actions.iter().any(|a| matches!(a, Action::Terminate { id: t, .. } if t == id)), "{p:#?}");
    }
}

#[test]
fn drift_is_replaced_under_correct_and_only_reported_under_report() {
    let v2 = release(2, "2.0.0");
    let up = || Health::Healthy { since_ms: 2_000 };
    let observed = Observed {
        instances: vec![
            instance("a", &v2, 1_000, up(), None),
            instance("b", &v2, 1_000, up(), Some("bin/app no longer hashes to the digest")),
        ],
        traffic: BTreeMap::new(),
        probes: None,
    };
    let now = 10_000;
    for strategy in [
        json!({"kind": "rolling", "max_surge": 1, "max_unavailable": 0, "min_ready_seconds": 0}),
        json!({"kind": "blue_green", "grace_seconds": 10}),
        json!({"kind": "canary", "steps": [{"weight": 50, "pause_seconds": 5}]}),
    ] {
        let rolls = strategy["kind"] == "rolling";
        let mut observed = observed.clone();
        if !rolls {
            observed.traffic.insert(web(), GroupTraffic { traffic: weighted(&[(2, 100)]), since_ms: 1_000 });
        }
        let mut correct = spec_json(strategy.clone(), 2);
        correct["drift"] = json!("correct");
        let correct = build(correct);
        let desired = Desired {
            spec: &correct,
            target: Some(v2.clone()),
            last_good: Some(v2.clone()),
            failed: None,
            relaunched: vec![],
        };
        let p = plan(&desired, &observed, now);
        check_plan(&desired, &observed, now, &p);
        assert_eq!(p.phase, Phase::Progressing, "{strategy}: {p:#?}");
        assert_eq!(p.actions, [Action::Launch { group: web(), release: v2.clone() }], "{strategy}: replacement first");
        // Once the replacement is healthy, the drifted instance goes.
        let mut replaced = observed.clone();
        replaced.instances.push(instance("c", &v2, 5_000, Health::Healthy { since_ms: 6_000 }, None));
        let p = plan(&desired, &replaced, now);
        check_plan(&desired, &replaced, now, &p);
        assert!(
            matches!(p.actions.as_slice(), [Action::Terminate { id, reason, .. }] if id == "b" && reason.contains("drift")),
            "{strategy}: {p:#?}"
        );

        let mut report = spec_json(strategy.clone(), 2);
        report["drift"] = json!("report");
        let report = build(report);
        let desired = Desired { spec: &report, ..desired };
        let p = plan(&desired, &observed, now);
        check_plan(&desired, &observed, now, &p);
        assert!(p.actions.is_empty(), "{strategy}: {p:#?}");
        assert_eq!(p.phase, Phase::Healthy);
        assert_eq!(p.drift.len(), 1, "{strategy}: {p:#?}");
        assert!(p.drift[0].starts_with("b: "), "{:?}", p.drift);
    }
}

#[test]
fn an_instance_of_an_old_generation_or_another_image_is_replaced() {
    let spec = rolling(1, 1, 0, 0);
    let v2 = release(2, "2.0.0");
    let up = Health::Healthy { since_ms: 2_000 };
    let mut other_image = instance("a", &v2, 1_000, up.clone(), None);
    other_image.digest = digest_of("tampered");
    for odd in [other_image, instance("a", &release(1, "1.0.0"), 1_000, up, None)] {
        let observed = Observed { instances: vec![odd], traffic: BTreeMap::new(), probes: None };
        let desired = Desired {
            spec: &spec,
            target: Some(v2.clone()),
            last_good: Some(v2.clone()),
            failed: None,
            relaunched: vec![],
        };
        let p = plan(&desired, &observed, 10_000);
        check_plan(&desired, &observed, 10_000, &p);
        assert_eq!(p.actions, [Action::Launch { group: web(), release: v2.clone() }]);
    }
}

#[test]
fn instances_older_than_max_instance_age_are_replaced_without_a_new_release() {
    for strategy in [
        json!({"kind": "rolling", "max_surge": 1, "max_unavailable": 0, "min_ready_seconds": 1}),
        json!({"kind": "blue_green", "grace_seconds": 10}),
        json!({"kind": "canary", "steps": [{"weight": 50, "pause_seconds": 5}]}),
    ] {
        let mut v = spec_json(strategy.clone(), 3);
        v["max_instance_age_seconds"] = json!(60);
        let mut w = World::new(build(v), config(), 1_000);
        let v1 = release(1, "1.0.0");
        w.deploy(&v1);
        let first: BTreeSet<String> = w.instances().into_iter().map(|i| i.id).collect();
        for _ in 0..200 {
            w.tick(Some(&v1));
            for i in w.instances() {
                assert!(
                    w.now - i.launched_ms <= 60_000 + 20_000,
                    "{strategy}: {} is {}ms old",
                    i.id,
                    w.now - i.launched_ms
                );
            }
            assert!(w.memory.failed.is_none());
        }
        let (_, tick) = w.settle(Some(&v1), 100);
        assert_eq!(tick.plan.phase, Phase::Healthy);
        let last: BTreeSet<String> = w.instances().into_iter().map(|i| i.id).collect();
        assert!(last.is_disjoint(&first), "{strategy}");
        assert_eq!(last.len(), 3);
        assert!(w.launches_of(1) >= 9, "{strategy}: replaced at least twice over 200s: {}", w.launches_of(1));
    }
}

#[test]
fn a_canary_paused_longer_than_max_instance_age_replaces_its_instances_without_piling_them_up() {
    for steps in [vec![(50, 600)], vec![(25, 300), (50, 300)]] {
        let mut v = spec_json(
            json!({"kind": "canary", "steps": steps.iter().map(|(w, p)| json!({"weight": w, "pause_seconds": p})).collect::<Vec<_>>()}),
            4,
        );
        v["max_instance_age_seconds"] = json!(60);
        let mut w = World::new(build(v), config(), 1_000);
        let (v1, v2) = (release(1, "1.0.0"), release(2, "2.0.0"));
        w.deploy(&v1);
        let mut most = 0;
        for _ in 0..1_000 {
            let tick = w.tick(Some(&v2));
            most = most.max(w.instances().len());
            if tick.converged() && tick.plan.phase == Phase::Healthy {
                break;
            }
        }
        // 4 old + 4 new (launched for the last step during the pause before it) + a replacement in
        // flight for each new one, at most.
        assert!(most <= 3 * 4, "{steps:?}: {most} instances at once");
    }
}

#[test]
fn no_target_terminates_everything() {
    for spec in [rolling(3, 1, 0, 0), blue_green(2, 30), canary(2, &[(50, 10)])] {
        let mut w = World::new(spec, config(), 500);
        w.deploy(&release(1, "1.0.0"));
        let (ticks, tick) = w.settle(None, 20);
        assert!(ticks <= 2, "{ticks}");
        assert!(tick.plan.effective.is_none());
        assert!(w.instances().is_empty());
    }
}

#[test]
fn instances_of_a_group_no_longer_in_the_spec_are_terminated() {
    let spec = rolling(1, 1, 0, 0);
    let v1 = release(1, "1.0.0");
    let mut gone_group = instance("x", &v1, 0, Health::Healthy { since_ms: 1 }, None);
    gone_group.group = "api".parse().unwrap();
    let observed = Observed {
        instances: vec![instance("a", &v1, 0, Health::Healthy { since_ms: 1 }, None), gone_group],
        traffic: BTreeMap::new(),
        probes: None,
    };
    let desired =
        Desired { spec: &spec, target: Some(v1.clone()), last_good: Some(v1), failed: None, relaunched: vec![] };
    let p = plan(&desired, &observed, 5_000);
    check_plan(&desired, &observed, 5_000, &p);
    assert!(matches!(p.actions.as_slice(), [Action::Terminate { id, .. }] if id == "x"), "{p:#?}");
}

#[test]
fn a_restart_mid_rollout_with_memory_from_earlier_finishes_within_bounds() {
    let specs = [rolling(4, 1, 1, 1), blue_green(3, 10), canary(4, &[(25, 5), (50, 5)])];
    for spec in specs {
        let what = format!("{:?}", spec.strategy);
        for (saved_at, restart_at) in [(0, 3), (2, 8), (5, 20), (10, 30)] {
            for forget in [false, true] {
                let mut w = World::new(spec.clone(), config(), 500);
                let (v1, v2) = (release(1, "1.0.0"), release(2, "2.0.0"));
                w.deploy(&v1);
                let mut saved = w.memory.clone();
                for n in 0..restart_at {
                    if n == saved_at {
                        saved = w.memory.clone();
                    }
                    w.tick(Some(&v2));
                }
                // The agent restarts: it reads the memory it persisted earlier (or lost it), the
                // instances and traffic live on.
                w.memory = if forget { Memory::default() } else { saved };
                let (ticks, tick) = w.settle(Some(&v2), 200);
                assert_eq!(tick.plan.phase, Phase::Healthy, "{what} {saved_at}/{restart_at}");
                assert!(ticks < 150, "{what}: {ticks} ticks after the restart");
                assert_eq!(w.generations(), BTreeMap::from([(2, spec.groups[0].capacity as usize)]), "{what}");
                assert_eq!(w.memory.last_good.as_ref(), Some(&v2));
            }
        }
    }
}

#[test]
fn a_restart_after_a_failed_gate_keeps_the_old_generation() {
    let mut w = World::new(canary(2, &[(50, 5)]), unhealthy("2.0.0"), 500);
    let (v1, v2) = (release(1, "1.0.0"), release(2, "2.0.0"));
    w.deploy(&v1);
    w.settle(Some(&v2), 200);
    // The agent restarts and reads back the memory it saved as JSON.
    w.memory = serde_json::from_str(&serde_json::to_string(&w.memory).unwrap()).unwrap();
    let launched = w.launches_of(2);
    for _ in 0..100 {
        assert_eq!(w.tick(Some(&v2)).plan.phase, Phase::Degraded);
    }
    assert_eq!(w.launches_of(2), launched);
}

#[test]
fn launch_errors_and_lost_hosts_are_retried_until_the_rollout_completes() {
    for spec in [rolling(5, 2, 1, 0), blue_green(4, 5), canary(4, &[(25, 3), (75, 3)])] {
        let config = SimConfig { launch_error_rate: 0.4, seed: 7, ..config() };
        let mut w = World::new(spec, config, 500);
        let (v1, v2) = (release(1, "1.0.0"), release(2, "2.0.0"));
        w.deploy(&v1);
        w.sim.config.vanish_rate = 0.01;
        for _ in 0..50 {
            w.tick(Some(&v2));
        }
        w.sim.config.vanish_rate = 0.0;
        let (_, tick) = w.settle(Some(&v2), 400);
        assert_eq!(tick.plan.phase, Phase::Healthy);
        assert_eq!(w.generations().get(&2).copied(), Some(w.spec.groups[0].capacity as usize));
    }
}

#[test]
fn two_groups_roll_out_together_and_are_healthy_only_when_both_are() {
    let mut v = spec_json(json!({"kind": "rolling", "max_surge": 1, "max_unavailable": 0, "min_ready_seconds": 0}), 2);
    v["groups"] = json!([{"name": "web", "capacity": 2}, {"name": "worker", "capacity": 3}]);
    let config = SimConfig { slow_boot: [("2.0.0".parse().unwrap(), 5_000)].into(), ..config() };
    let mut w = World::new(build(v), config, 500);
    let (v1, v2) = (release(1, "1.0.0"), release(2, "2.0.0"));
    w.deploy(&v1);
    let (_, tick) = w.settle(Some(&v2), 300);
    assert_eq!(tick.plan.phase, Phase::Healthy);
    let by_group: BTreeMap<String, usize> = w.instances().iter().fold(BTreeMap::new(), |mut m, i| {
        assert_eq!(i.generation, 2);
        *m.entry(i.group.to_string()).or_default() += 1;
        m
    });
    assert_eq!(by_group, BTreeMap::from([("web".into(), 2), ("worker".into(), 3)]));
}

// ---------------------------------------------------------------------------------------------------
// Properties: rollouts on the simulated provider

/// Cases per property: `n`, or `PROPTEST_CASES` for a longer search.
fn cases(n: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(n)
}

/// A rolling spec the ledger accepts: capacity 1..=8, surge 0..=3, unavailable 0..=capacity, not both 0.
fn rolling_spec() -> impl Strategy<Value = Environment> {
    (1u64..=8, 0u64..=3, 0u64..=8, 0u64..=3).prop_filter_map(
        "max_surge and max_unavailable both 0",
        |(capacity, surge, unavailable, min_ready)| {
            let unavailable = unavailable.min(capacity);
            (surge + unavailable > 0).then(|| rolling(capacity, surge, unavailable, min_ready))
        },
    )
}

/// Canary steps the ledger accepts: 1..=4 strictly rising weights in 1..=100, pauses 0..=20s.
fn canary_steps() -> impl Strategy<Value = Vec<(u64, u64)>> {
    proptest::collection::btree_set(1u64..=100, 1..=4)
        .prop_flat_map(|weights| {
            let n = weights.len();
            (Just(weights), proptest::collection::vec(0u64..=20, n))
        })
        .prop_map(|(weights, pauses)| weights.into_iter().zip(pauses).collect())
}

fn weighted_spec() -> impl Strategy<Value = Environment> {
    prop_oneof![
        (1u64..=8, 0u64..=60).prop_map(|(c, grace)| blue_green(c, grace)),
        (1u64..=8, canary_steps()).prop_map(|(c, steps)| canary(c, &steps)),
    ]
}

/// Boot time, tick length, launch error rate and seed of a simulated world.
fn world_params() -> impl Strategy<Value = (u64, u64, f64, u64)> {
    (100u64..=8_000, prop_oneof![Just(250u64), Just(500), Just(1_000), Just(3_000)], 0.0f64..0.3, any::<u64>())
}

/// Deploys generation 1 and then 2 in a random world; returns the world after 2 settled.
fn roll_out(spec: Environment, (boot_ms, step_ms, error_rate, seed): (u64, u64, f64, u64), bad: bool) -> World {
    let mut config = SimConfig { boot_ms, launch_error_rate: error_rate, seed, ..SimConfig::default() };
    if bad {
        config.unhealthy.insert("2.0.0".parse().unwrap());
    }
    let capacity = spec.groups[0].capacity as usize;
    let mut w = World::new(spec, config, step_ms);
    let (v1, v2) = (release(1, "1.0.0"), release(2, "2.0.0"));
    // Bounds generous enough for the slowest random world, small enough to catch a stuck rollout.
    let (_, tick) = w.settle(Some(&v1), 2_000);
    assert_eq!(tick.plan.phase, Phase::Healthy);
    let (_, tick) = w.settle(Some(&v2), 3_000);
    if bad {
        assert_eq!(tick.plan.phase, Phase::Degraded);
        assert_eq!(w.generations(), BTreeMap::from([(1, capacity)]));
    } else {
        assert_eq!(tick.plan.phase, Phase::Healthy);
        assert_eq!(w.generations(), BTreeMap::from([(2, capacity)]), "exactly capacity of the target");
        assert!(w.instances().iter().all(healthy));
        assert_eq!(w.memory.last_good.as_ref(), Some(&v2));
    }
    w
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(64), ..ProptestConfig::default() })]

    /// (a) capacity + max_surge, (b) capacity - max_unavailable ready and (c) convergence to exactly
    /// `capacity` of the target, with and without launch errors; (a) and (b) are checked every tick.
    #[test]
    fn rolling_stays_within_its_budgets_and_converges(spec in rolling_spec(), params in world_params(), errors in any::<bool>()) {
        let params = if errors { params } else { (params.0, params.1, 0.0, params.3) };
        roll_out(spec, params, false);
    }

    /// (d) weights only go to generations with enough healthy instances, and the rollout converges to
    /// the full target with all the traffic.
    #[test]
    fn blue_green_and_canary_weight_only_healthy_generations_and_converge(spec in weighted_spec(), params in world_params()) {
        let w = roll_out(spec, params, false);
        prop_assert_eq!(w.traffic(), Some(weighted(&[(2, 100)])));
    }

    /// A failing release under any strategy fails its gate once and restores generation 1.
    #[test]
    fn any_failing_release_is_rolled_back_once(spec in prop_oneof![rolling_spec(), weighted_spec()], params in world_params()) {
        let w = roll_out(spec, params, true);
        let fails: Vec<Generation> = w.log.iter().filter_map(|r| r.failed_gate).collect();
        prop_assert_eq!(fails, vec![2]);
    }

    /// A third generation at a random point of the second's rollout takes over.
    #[test]
    fn preemption_at_any_point_ends_with_only_the_newest(
        spec in prop_oneof![rolling_spec(), weighted_spec()],
        params in world_params(),
        mid in 0usize..40,
    ) {
        let (boot_ms, step_ms, error_rate, seed) = params;
        let capacity = spec.groups[0].capacity as usize;
        let config = SimConfig { boot_ms, launch_error_rate: error_rate, seed, ..SimConfig::default() };
        let mut w = World::new(spec, config, step_ms);
        let (v1, v2, v3) = (release(1, "1.0.0"), release(2, "2.0.0"), release(3, "3.0.0"));
        w.settle(Some(&v1), 2_000);
        for _ in 0..mid {
            w.tick(Some(&v2));
        }
        let (_, tick) = w.settle(Some(&v3), 3_000);
        prop_assert_eq!(tick.plan.phase, Phase::Healthy);
        prop_assert_eq!(w.generations(), BTreeMap::from([(3, capacity)]));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(64), ..ProptestConfig::default() })]

    /// The environment spec changes (strategy, capacity) at a random point of a rollout: the rollout
    /// goes on under the new rules and ends with the new capacity of the target.
    #[test]
    fn a_spec_changed_mid_rollout_still_converges(
        before in prop_oneof![rolling_spec(), weighted_spec()],
        after in prop_oneof![rolling_spec(), weighted_spec()],
        params in world_params(),
        mid in 0usize..40,
    ) {
        let (boot_ms, step_ms, error_rate, seed) = params;
        let config = SimConfig { boot_ms, launch_error_rate: error_rate, seed, ..SimConfig::default() };
        let mut w = World::new(before, config, step_ms);
        let (v1, v2) = (release(1, "1.0.0"), release(2, "2.0.0"));
        w.settle(Some(&v1), 2_000);
        for _ in 0..mid {
            w.tick(Some(&v2));
        }
        let capacity = after.groups[0].capacity as usize;
        let weighted_strategy = !matches!(after.strategy, Rollout::Rolling { .. });
        w.spec = after;
        let (_, tick) = w.settle(Some(&v2), 3_000);
        prop_assert_eq!(tick.plan.phase, Phase::Healthy);
        prop_assert_eq!(w.generations(), BTreeMap::from([(2, capacity)]));
        let expected = if weighted_strategy { weighted(&[(2, 100)]) } else { Traffic::Even };
        prop_assert_eq!(w.traffic().unwrap_or(Traffic::Even), expected);
    }
}

// ---------------------------------------------------------------------------------------------------
// Properties: `plan` on observed states built at random

fn any_spec() -> impl Strategy<Value = Environment> {
    (
        prop_oneof![rolling_spec(), weighted_spec()],
        any::<bool>(),
        proptest::option::of(60u64..=300),
        1u64..=60,
        any::<bool>(),
    )
        .prop_map(|(spec, report, age, deadline, two_groups)| {
            let mut v = serde_json::to_value(&spec).unwrap();
            v["drift"] = json!(if report { "report" } else { "correct" });
            if let Some(age) = age {
                v["max_instance_age_seconds"] = json!(age);
            }
            v["health"]["deadline_seconds"] = json!(deadline);
            if two_groups {
                let c = spec.groups[0].capacity;
                v["groups"] = json!([{"name": "web", "capacity": c}, {"name": "api", "capacity": c}]);
            }
            build(v)
        })
}

fn any_health() -> impl Strategy<Value = Health> {
    prop_oneof![
        1 => Just(Health::Starting),
        4 => (0u64..400_000).prop_map(|since_ms| Health::Healthy { since_ms }),
        1 => (0u64..400_000).prop_map(|since_ms| Health::Unhealthy { since_ms, reason: "503".into() }),
        1 => Just(Health::Gone { reason: "exited".into() }),
    ]
}

fn any_instance() -> impl Strategy<Value = Instance> {
    (
        prop_oneof![Just("web"), Just("web"), Just("api"), Just("old")],
        1u64..=3,
        proptest::bool::weighted(0.9),
        0u64..400_000,
        any_health(),
        proptest::option::weighted(0.1, Just("files changed")),
    )
        .prop_map(|(group, generation, own_digest, launched_ms, health, drift)| {
            let r = release(generation, &format!("{generation}.0.0"));
            Instance {
                id: String::new(),
                group: group.parse().unwrap(),
                generation,
                digest: if own_digest { *r.digest() } else { digest_of("other") },
                launched_ms,
                health,
                drift: drift.map(str::to_owned),
            }
        })
}

fn any_traffic() -> impl Strategy<Value = Option<GroupTraffic>> {
    let weights = prop_oneof![
        Just(Traffic::Even),
        (1u64..=3).prop_map(|g| weighted(&[(g, 100)])),
        (1u64..=3, 1u64..=3, 1u32..=99)
            .prop_filter("two generations", |(a, b, _)| a != b)
            .prop_map(|(a, b, w)| weighted(&[(a, w), (b, 100 - w)])),
    ];
    proptest::option::of((weights, 0u64..400_000).prop_map(|(traffic, since_ms)| GroupTraffic { traffic, since_ms }))
}

/// A `Desired` in any state the gate memory allows: a target of generation 1..=3 or none, a last good
/// release older or equal, a failure of the target's generation or none.
fn any_memory() -> impl Strategy<Value = (Option<Generation>, Option<Generation>, bool)> {
    (proptest::option::of(1u64..=3), proptest::option::of(1u64..=3), any::<bool>()).prop_map(
        |(target, good, failed)| {
            let good = match (target, good) {
                (Some(t), Some(g)) => Some(g.min(t)),
                (_, g) => g,
            };
            (target, good, failed && target.is_some() && good != target)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(512), ..ProptestConfig::default() })]

    /// (e) on arbitrary states: `plan` is pure and order-independent, its batches are disjoint, and the
    /// rolling budgets and weighted health rules hold (see `check_plan`).
    #[test]
    fn plan_is_pure_disjoint_and_within_budgets_on_any_observed_state(
        spec in any_spec(),
        instances in proptest::collection::vec(any_instance(), 0..14),
        web_traffic in any_traffic(),
        api_traffic in any_traffic(),
        (target, good, failed) in any_memory(),
        now_ms in 0u64..500_000,
    ) {
        let mut observed = Observed::default();
        for (n, mut i) in instances.into_iter().enumerate() {
            i.id = format!("i-{n:02}");
            observed.instances.push(i);
        }
        if let Some(t) = web_traffic {
            observed.traffic.insert(web(), t);
        }
        if let Some(t) = api_traffic {
            observed.traffic.insert("api".parse().unwrap(), t);
        }
        let r = |g: Generation| release(g, &format!("{g}.0.0"));
        let desired = Desired {
            spec: &spec,
            target: target.map(r),
            last_good: good.map(r),
            failed: if failed { target } else { None },
            relaunched: vec![],
        };
        let p = plan(&desired, &observed, now_ms);
        check_plan(&desired, &observed, now_ms, &p);
        if desired.restoring() {
            prop_assert_eq!(p.phase, Phase::Degraded);
            let relaunches = p.actions.iter().any(|a| matches!(a, Action::Launch { release, .. } if Some(release.generation) == target));
            prop_assert!(!relaunches, "launches the failed generation");
        }
    }
}

/// One change to a converged environment.
#[derive(Clone, Debug)]
enum Perturb {
    Drift(usize),
    OtherImage(usize),
    Health(usize, Health),
    Remove(usize),
    Old(Generation, Health),
    Traffic(Option<GroupTraffic>),
    Launched(usize, u64),
}

fn any_perturb() -> impl Strategy<Value = Perturb> {
    prop_oneof![
        (0usize..16).prop_map(Perturb::Drift),
        (0usize..16).prop_map(Perturb::OtherImage),
        (0usize..16, any_health()).prop_map(|(i, h)| Perturb::Health(i, h)),
        (0usize..16).prop_map(Perturb::Remove),
        (1u64..=3, any_health()).prop_map(|(g, h)| Perturb::Old(g, h)),
        any_traffic().prop_map(Perturb::Traffic),
        (0usize..16, 0u64..400_000).prop_map(|(i, t)| Perturb::Launched(i, t)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(512), ..ProptestConfig::default() })]

    /// The same checks on states close to converged: the target at capacity, healthy, with its traffic,
    /// then a few changes (drift, another image, failures, losses, leftovers of another generation,
    /// traffic moved, age). An unchanged state must plan nothing and be Healthy.
    #[test]
    fn plan_is_pure_disjoint_and_within_budgets_near_a_converged_state(
        spec in any_spec(),
        target in 1u64..=3,
        healthy_before in any::<bool>(),
        perturbs in proptest::collection::vec(any_perturb(), 0..4),
        now_ms in 400_000u64..500_000,
    ) {
        let r = |g: Generation| release(g, &format!("{g}.0.0"));
        let t = r(target);
        let mut observed = Observed::default();
        for g in &spec.groups {
            for _ in 0..g.capacity {
                let mut i = instance("", &t, now_ms - 30_000, Health::Healthy { since_ms: now_ms - 25_000 }, None);
                i.group = g.name.clone();
                observed.instances.push(i);
            }
            if !matches!(spec.strategy, Rollout::Rolling { .. }) {
                observed.traffic.insert(g.name.clone(), GroupTraffic { traffic: weighted(&[(target, 100)]), since_ms: 0 });
            }
        }
        let unchanged = perturbs.is_empty();
        for p in perturbs {
            let n = observed.instances.len().max(1);
            match p {
                Perturb::Drift(i) => if let Some(i) = observed.instances.get_mut(i % n) { i.drift = Some("files changed".into()) },
                Perturb::OtherImage(i) => if let Some(i) = observed.instances.get_mut(i % n) { i.digest = digest_of("other") },
                Perturb::Health(i, h) => if let Some(i) = observed.instances.get_mut(i % n) { i.health = h },
                Perturb::Remove(i) => if !observed.instances.is_empty() { observed.instances.remove(i % n); },
                Perturb::Old(g, h) => observed.instances.push(instance("", &r(g), 1_000, h, None)),
                Perturb::Traffic(t) => match t {
                    Some(t) => { observed.traffic.insert(web(), t); }
                    None => { observed.traffic.remove(&web()); }
                },
                Perturb::Launched(i, at) => if let Some(i) = observed.instances.get_mut(i % n) { i.launched_ms = at },
            }
        }
        for (n, i) in observed.instances.iter_mut().enumerate() {
            i.id = format!("i-{n:02}");
        }
        // The target was healthy here before (an established release), or is being rolled out over
        // the previous generation.
        let last_good = if healthy_before { Some(t.clone()) } else if target > 1 { Some(r(target - 1)) } else { None };
        let desired = Desired { spec: &spec, target: Some(t), last_good, failed: None, relaunched: vec![] };
        let p = plan(&desired, &observed, now_ms);
        check_plan(&desired, &observed, now_ms, &p);
        if unchanged && spec.max_instance_age_seconds.is_none_or(|age| age > 30) {
            prop_assert!(p.actions.is_empty(), "{:#?}", p);
            prop_assert_eq!(p.phase, Phase::Healthy);
        }
    }
}

/// Something that happens to an environment between ticks.
#[derive(Clone, Debug)]
enum Event {
    /// A new target generation; `bad` releases never pass a health check.
    Promote { bad: bool },
    /// The environment has no target for a while.
    Unset,
    /// Hosts start or stop vanishing.
    Vanish(bool),
    /// The environment spec changes.
    Spec(Box<Environment>),
    /// The agent restarts with the memory it saved some ticks ago, or with none.
    Restart { forget: bool },
}

fn any_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => any::<bool>().prop_map(|bad| Event::Promote { bad }),
        1 => Just(Event::Unset),
        1 => any::<bool>().prop_map(Event::Vanish),
        2 => prop_oneof![rolling_spec(), weighted_spec()].prop_map(|s| Event::Spec(Box::new(s))),
        1 => any::<bool>().prop_map(|forget| Event::Restart { forget }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(64), ..ProptestConfig::default() })]

    /// Liveness from wherever a random history leaves the environment: promotions (good and failing) at
    /// any point of a rollout, periods without a target, lost hosts, spec changes and agent restarts,
    /// with every tick checked against the invariants. When the history ends the environment must settle
    /// within a bound: Healthy on the last target if it is good, else Degraded with only the last good
    /// release (or nothing), and never launch a failed generation again.
    #[test]
    fn any_history_of_promotions_failures_and_restarts_settles(
        first in prop_oneof![rolling_spec(), weighted_spec()],
        params in world_params(),
        history in proptest::collection::vec((1usize..30, any_event()), 1..12),
    ) {
        let (boot_ms, step_ms, error_rate, seed) = params;
        let config = SimConfig { boot_ms, launch_error_rate: error_rate, seed, ..SimConfig::default() };
        let mut w = World::new(first, config, step_ms);
        let mut target: Option<Release> = None;
        let mut generation = 0;
        let mut saved = w.memory.clone();
        let mut good: BTreeMap<Generation, bool> = BTreeMap::new();
        for (ticks, event) in history {
            match event {
                Event::Promote { bad } => {
                    generation += 1;
                    let version = format!("{generation}.0.0");
                    if bad {
                        w.sim.config.unhealthy.insert(version.parse().unwrap());
                    }
                    good.insert(generation, !bad);
                    target = Some(release(generation, &version));
                }
                Event::Unset => target = None,
                Event::Vanish(on) => w.sim.config.vanish_rate = if on { 0.02 } else { 0.0 },
                Event::Spec(spec) => w.spec = *spec,
                Event::Restart { forget } => {
                    w.memory = if forget { Memory::default() } else { saved.clone() };
                }
            }
            saved = w.memory.clone();
            for _ in 0..ticks {
                w.tick(target.as_ref());
            }
        }
        w.sim.config.vanish_rate = 0.0;
        let (_, tick) = w.settle(target.as_ref(), 5_000);
        let capacity = w.spec.groups[0].capacity as usize;
        match &target {
            None => prop_assert!(w.instances().is_empty()),
            Some(t) if good[&t.generation] => {
                prop_assert_eq!(tick.plan.phase, Phase::Healthy);
                prop_assert_eq!(w.generations(), BTreeMap::from([(t.generation, capacity)]));
            }
            Some(t) => {
                prop_assert_eq!(tick.plan.phase, Phase::Degraded);
                let launched = w.launches_of(t.generation);
                for _ in 0..100 {
                    w.tick(target.as_ref());
                }
                prop_assert_eq!(w.launches_of(t.generation), launched);
                match &w.memory.last_good {
                    Some(g) => prop_assert_eq!(w.generations(), BTreeMap::from([(g.generation, capacity)])),
                    None => prop_assert!(w.instances().is_empty()),
                }
            }
        }
    }
}

/// Logs and `stele plan` show traffic as people write it, never as Rust Debug (`Weighted({3: 90})`).
#[test]
fn traffic_displays_plainly() {
    assert_eq!(Traffic::Even.to_string(), "even");
    let weighted = Traffic::Weighted([(3, 90), (4, 10)].into_iter().collect());
    assert_eq!(weighted.to_string(), "gen 3 90%, gen 4 10%");
}
