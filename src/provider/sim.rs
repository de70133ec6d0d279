//! A deterministic simulated provider: virtual time, seeded randomness and injected failures (slow
//! boots, releases that never become healthy or crash, launch errors, instances that vanish). Planner
//! property tests, the agent's tests and large-scale simulations run against it.
//!
//! One simulation holds any number of environments, kept apart as real providers keep them: each
//! environment has its own instances and traffic settings, and may have its own failure injection
//! (`Sim::set_env_config`; environments without one follow `Sim::config`). Instance ids are unique
//! across the whole simulation.
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
    Launched { at_ms: u64, env: EnvName, id: String, generation: u64 },
    Terminated { env: EnvName, id: String },
    Traffic { at_ms: u64, env: EnvName, group: GroupName, traffic: Traffic },
    Vanished { env: EnvName, id: String },
}

/// One simulated environment: what runs in it and where its traffic goes.
#[derive(Debug, Default)]
struct SimEnv {
    instances: BTreeMap<String, SimInstance>,
    traffic: BTreeMap<GroupName, GroupTraffic>,
    /// This environment's own failure injection and timings, when it has some.
    config: Option<SimConfig>,
}

#[derive(Debug)]
pub struct Sim {
    /// Failure injection and timings of every environment without its own (`set_env_config`).
    pub config: SimConfig,
    envs: BTreeMap<EnvName, SimEnv>,
    next_id: u64,
    rng: u64,
    /// Recording every event costs memory in long runs; `record_events(false)` turns it off.
    record: bool,
    pub events: Vec<SimEvent>,
}

impl Sim {
    pub fn new(config: SimConfig) -> Self {
        let rng = config.seed.max(1);
        Self { config, envs: BTreeMap::new(), next_id: 1, rng, record: true, events: vec![] }
    }

    /// Whether events are recorded in `events` (on by default). Large, long simulations turn it off.
    pub fn record_events(mut self, on: bool) -> Self {
        self.record = on;
        self
    }

    /// Gives `env` failure injection and timings of its own, in place of `config`.
    pub fn set_env_config(&mut self, env: &EnvName, config: SimConfig) {
        self.envs.entry(env.clone()).or_default().config = Some(config);
    }

    fn config_of<'a>(&'a self, e: &'a SimEnv) -> &'a SimConfig {
        e.config.as_ref().unwrap_or(&self.config)
    }

    fn event(&mut self, event: SimEvent) {
        if self.record {
            self.events.push(event);
        }
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

    fn health(config: &SimConfig, i: &SimInstance, now_ms: u64) -> Health {
        let boot = config.boot_ms + config.slow_boot.get(&i.release.version).copied().unwrap_or(0);
        let ready_at = i.launched_ms + boot;
        if now_ms < ready_at {
            Health::Starting
        } else if config.crashing.contains(&i.release.version) {
            Health::Gone { reason: "exited with status 1".into() }
        } else if config.unhealthy.contains(&i.release.version) {
            Health::Unhealthy { since_ms: ready_at, reason: "GET /healthz: status 503".into() }
        } else {
            Health::Healthy { since_ms: ready_at }
        }
    }

    /// The instances alive in `env` now (for assertions), with their health.
    pub fn snapshot(&self, env: &EnvName, now_ms: u64) -> Vec<Instance> {
        let Some(e) = self.envs.get(env) else { return Vec::new() };
        let config = self.config_of(e);
        e.instances
            .iter()
            .map(|(id, i)| Instance {
                id: id.clone(),
                group: i.group.clone(),
                generation: i.release.generation,
                digest: *i.release.digest(),
                launched_ms: i.launched_ms,
                health: Self::health(config, i, now_ms),
                drift: None,
            })
            .collect()
    }

    /// Where `group` of `env` sends its traffic, once set.
    pub fn traffic(&self, env: &EnvName, group: &GroupName) -> Option<&GroupTraffic> {
        self.envs.get(env).and_then(|e| e.traffic.get(group))
    }

    /// The environments that hold instances or traffic settings.
    pub fn envs(&self) -> impl Iterator<Item = &EnvName> {
        self.envs.iter().filter(|(_, e)| !e.instances.is_empty() || !e.traffic.is_empty()).map(|(env, _)| env)
    }
}

impl Provider for Sim {
    fn prepare(&mut self, _env: &EnvName, _spec: &Environment, _release: &Release) -> Result<Readiness, ProviderError> {
        Ok(Readiness::Ready)
    }

    fn observe(&mut self, env: &EnvName, _spec: &Environment, now_ms: u64) -> Result<Observed, ProviderError> {
        let Some(e) = self.envs.get(env) else { return Ok(Observed::default()) };
        let vanish_rate = self.config_of(e).vanish_rate;
        if vanish_rate > 0.0 {
            let ids: Vec<String> = e.instances.keys().cloned().collect();
            for id in ids {
                if self.chance(vanish_rate) {
                    self.envs.get_mut(env).expect("looked up above").instances.remove(&id);
                    self.event(SimEvent::Vanished { env: env.clone(), id });
                }
            }
        }
        let traffic = self.envs.get(env).map(|e| e.traffic.clone()).unwrap_or_default();
        Ok(Observed { instances: self.snapshot(env, now_ms), traffic, probes: None })
    }

    fn launch(
        &mut self,
        env: &EnvName,
        _spec: &Environment,
        group: &GroupName,
        release: &Release,
        now_ms: u64,
    ) -> Result<String, ProviderError> {
        let error_rate =
            self.envs.get(env).map_or(self.config.launch_error_rate, |e| self.config_of(e).launch_error_rate);
        if self.chance(error_rate) {
            return Err(ProviderError::Retryable("simulated launch failure".into()));
        }
        let id = format!("sim-{:04}", self.next_id);
        self.next_id += 1;
        self.envs
            .entry(env.clone())
            .or_default()
            .instances
            .insert(id.clone(), SimInstance { group: group.clone(), release: release.clone(), launched_ms: now_ms });
        self.event(SimEvent::Launched {
            at_ms: now_ms,
            env: env.clone(),
            id: id.clone(),
            generation: release.generation,
        });
        Ok(id)
    }

    /// Stops `id` if it runs in `env`; an id of another environment is left alone, as a real provider
    /// scoped to one environment would.
    fn terminate(&mut self, env: &EnvName, _group: &GroupName, id: &str) -> Result<(), ProviderError> {
        if self.envs.get_mut(env).and_then(|e| e.instances.remove(id)).is_some() {
            self.event(SimEvent::Terminated { env: env.clone(), id: id.to_owned() });
        }
        Ok(())
    }

    fn set_traffic(
        &mut self,
        env: &EnvName,
        group: &GroupName,
        traffic: &Traffic,
        now_ms: u64,
    ) -> Result<(), ProviderError> {
        self.envs
            .entry(env.clone())
            .or_default()
            .traffic
            .insert(group.clone(), GroupTraffic { traffic: traffic.clone(), since_ms: now_ms });
        self.event(SimEvent::Traffic {
            at_ms: now_ms,
            env: env.clone(),
            group: group.clone(),
            traffic: traffic.clone(),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_format::types::{
        DriftMode, Group, HealthCheck, Image, LedgerId, Provider as ProviderKind, RevertPolicy, Strategy,
    };
    use ledger_format::Blake3Digest;

    fn spec(env: &EnvName) -> Environment {
        Environment {
            payload_type: ledger_format::types::EnvironmentType,
            ledger: "sim".parse::<LedgerId>().expect("a ledger id"),
            name: env.clone(),
            version: 1,
            provider: ProviderKind::Local {},
            groups: vec![Group { name: "web".parse().expect("a group"), capacity: 1 }],
            strategy: Strategy::Rolling { max_surge: 1, max_unavailable: 0, min_ready_seconds: 0 },
            health: HealthCheck::Tcp { interval_ms: 500, timeout_ms: 500, healthy_threshold: 1, deadline_seconds: 30 },
            drift: DriftMode::Correct,
            revert: RevertPolicy::Allow,
            max_instance_age_seconds: None,
        }
    }

    fn release(version: &str) -> Release {
        Release {
            generation: 1,
            version: version.parse().expect("a version"),
            seq: 1,
            image: Image::Artifact {
                uri: format!("https://images.example/{version}.tar").parse().expect("a uri"),
                blake3: Blake3Digest([7; 32]),
                size: 1,
            },
        }
    }

    #[test]
    fn environments_are_kept_apart() {
        let (a, b): (EnvName, EnvName) = ("alpha".parse().expect("env"), "beta".parse().expect("env"));
        let web: GroupName = "web".parse().expect("group");
        let mut sim = Sim::new(SimConfig { boot_ms: 10, ..SimConfig::default() });
        // Version 1.0.0 never becomes healthy in beta only.
        sim.set_env_config(
            &b,
            SimConfig { boot_ms: 10, unhealthy: ["1.0.0".parse().expect("v")].into(), ..SimConfig::default() },
        );
        let in_a = sim.launch(&a, &spec(&a), &web, &release("1.0.0"), 0).expect("launch");
        let in_b = sim.launch(&b, &spec(&b), &web, &release("1.0.0"), 0).expect("launch");
        assert_ne!(in_a, in_b, "instance ids are unique across the simulation");
        sim.set_traffic(&a, &web, &Traffic::Weighted([(1, 100)].into()), 5).expect("traffic");

        let seen_a = sim.observe(&a, &spec(&a), 20).expect("observe");
        let seen_b = sim.observe(&b, &spec(&b), 20).expect("observe");
        assert_eq!(seen_a.instances.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), [in_a.as_str()]);
        assert_eq!(seen_b.instances.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), [in_b.as_str()]);
        assert!(matches!(seen_a.instances[0].health, Health::Healthy { .. }), "{:?}", seen_a.instances[0].health);
        assert!(matches!(seen_b.instances[0].health, Health::Unhealthy { .. }), "{:?}", seen_b.instances[0].health);
        assert_eq!(seen_a.traffic.len(), 1);
        assert!(seen_b.traffic.is_empty(), "beta sees alpha's traffic: {:?}", seen_b.traffic);
        assert!(sim.traffic(&b, &web).is_none());

        // Terminating alpha's instance through beta touches nothing; through alpha it stops it.
        sim.terminate(&b, &web, &in_a).expect("terminate");
        assert_eq!(sim.snapshot(&a, 30).len(), 1, "an instance of alpha was stopped through beta");
        sim.terminate(&a, &web, &in_a).expect("terminate");
        assert!(sim.snapshot(&a, 30).is_empty());
        assert_eq!(sim.snapshot(&b, 30).len(), 1);
        let unknown: EnvName = "gamma".parse().expect("env");
        assert!(sim.observe(&unknown, &spec(&unknown), 30).expect("observe").instances.is_empty());
    }
}
