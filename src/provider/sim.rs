//! A deterministic simulated provider: virtual time, seeded randomness and injected failures (slow
//! boots, releases that never become healthy or crash, launch errors, instances that vanish). Planner
//! property tests, the agent's tests and large-scale simulations run against it.
//!
//! Owns: an in-memory model of instances and traffic. Must not read the clock or do I/O: time is the
//! `now_ms` each call passes in.

use super::{Provider, ProviderError, Readiness};
use crate::plan::{GroupTraffic, Health, Instance, Observed, Release, Traffic};
use ledger_format::types::{EnvName, Environment, GroupName, ReleaseVersion};
use std::collections::{BTreeMap, BTreeSet};

/// Failure injection and timings of the simulated world.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// How long an instance takes to become healthy.
    pub boot_ms: u64,
    /// Extra boot time per release version (a slow boot).
    pub slow_boot: BTreeMap<ReleaseVersion, u64>,
    /// Versions whose instances never pass a health check.
    pub unhealthy: BTreeSet<ReleaseVersion>,
    /// Versions whose instances exit right after booting.
    pub crashing: BTreeSet<ReleaseVersion>,
    /// Chance, per launch, that the launch fails with a retryable error.
    pub launch_error_rate: f64,
    /// Chance, per observation and instance, that the instance vanishes (a host lost).
    pub vanish_rate: f64,
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            boot_ms: 1_000,
            slow_boot: BTreeMap::new(),
            unhealthy: BTreeSet::new(),
            crashing: BTreeSet::new(),
            launch_error_rate: 0.0,
            vanish_rate: 0.0,
            seed: 1,
        }
    }
}

#[derive(Clone, Debug)]
struct SimInstance {
    group: GroupName,
    release: Release,
    launched_ms: u64,
}

/// What happened, for assertions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimEvent {
    Launched { at_ms: u64, id: String, generation: u64 },
    Terminated { id: String },
    Traffic { at_ms: u64, group: GroupName, traffic: Traffic },
    Vanished { id: String },
}

#[derive(Debug)]
pub struct Sim {
    pub config: SimConfig,
    instances: BTreeMap<String, SimInstance>,
    traffic: BTreeMap<GroupName, GroupTraffic>,
    next_id: u64,
    rng: u64,
    pub events: Vec<SimEvent>,
}

impl Sim {
    pub fn new(config: SimConfig) -> Self {
        let rng = config.seed.max(1);
        Self { config, instances: BTreeMap::new(), traffic: BTreeMap::new(), next_id: 1, rng, events: vec![] }
    }

    /// xorshift64*: reproducible from the seed, good enough to scatter failures.
    fn chance(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((x >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    fn health(&self, i: &SimInstance, now_ms: u64) -> Health {
        let boot = self.config.boot_ms + self.config.slow_boot.get(&i.release.version).copied().unwrap_or(0);
        let ready_at = i.launched_ms + boot;
        if now_ms < ready_at {
            Health::Starting
        } else if self.config.crashing.contains(&i.release.version) {
            Health::Gone { reason: "exited with status 1".into() }
        } else if self.config.unhealthy.contains(&i.release.version) {
            Health::Unhealthy { since_ms: ready_at, reason: "GET /healthz: status 503".into() }
        } else {
            Health::Healthy { since_ms: ready_at }
        }
    }

    /// Instances alive now (for assertions), with their health.
    pub fn snapshot(&self, now_ms: u64) -> Vec<Instance> {
        self.instances
            .iter()
            .map(|(id, i)| Instance {
                id: id.clone(),
                group: i.group.clone(),
                generation: i.release.generation,
                digest: *i.release.digest(),
                launched_ms: i.launched_ms,
                health: self.health(i, now_ms),
                drift: None,
            })
            .collect()
    }

    pub fn traffic(&self, group: &GroupName) -> Option<&GroupTraffic> {
        self.traffic.get(group)
    }
}

impl Provider for Sim {
    fn prepare(&mut self, _env: &EnvName, _spec: &Environment, _release: &Release) -> Result<Readiness, ProviderError> {
        Ok(Readiness::Ready)
    }

    fn observe(&mut self, _env: &EnvName, _spec: &Environment, now_ms: u64) -> Result<Observed, ProviderError> {
        let ids: Vec<String> = self.instances.keys().cloned().collect();
        for id in ids {
            if self.chance(self.config.vanish_rate) {
                self.instances.remove(&id);
                self.events.push(SimEvent::Vanished { id });
            }
        }
        Ok(Observed { instances: self.snapshot(now_ms), traffic: self.traffic.clone(), probes: None })
    }

    fn launch(
        &mut self,
        _env: &EnvName,
        _spec: &Environment,
        group: &GroupName,
        release: &Release,
        now_ms: u64,
    ) -> Result<String, ProviderError> {
        if self.chance(self.config.launch_error_rate) {
            return Err(ProviderError::Retryable("simulated launch failure".into()));
        }
        let id = format!("sim-{:04}", self.next_id);
        self.next_id += 1;
        self.instances
            .insert(id.clone(), SimInstance { group: group.clone(), release: release.clone(), launched_ms: now_ms });
        self.events.push(SimEvent::Launched { at_ms: now_ms, id: id.clone(), generation: release.generation });
        Ok(id)
    }

    fn terminate(&mut self, _env: &EnvName, _group: &GroupName, id: &str) -> Result<(), ProviderError> {
        if self.instances.remove(id).is_some() {
            self.events.push(SimEvent::Terminated { id: id.to_owned() });
        }
        Ok(())
    }

    fn set_traffic(
        &mut self,
        _env: &EnvName,
        group: &GroupName,
        traffic: &Traffic,
        now_ms: u64,
    ) -> Result<(), ProviderError> {
        self.traffic.insert(group.clone(), GroupTraffic { traffic: traffic.clone(), since_ms: now_ms });
        self.events.push(SimEvent::Traffic { at_ms: now_ms, group: group.clone(), traffic: traffic.clone() });
        Ok(())
    }
}
