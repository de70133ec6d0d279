//! The strategy suite every cloud provider runs (tests/aws_provider.rs against moto, tests/gcp_provider.rs
//! against the Compute Engine fake): rolling, blue/green and canary rollouts, restarts, faults, refusals
//! and strategy switches, written once over [`CloudWorld`]. A cloud's test file implements the trait for
//! its world (what differs: making a provider, specs, releases, raw reads of what the emulator holds, the
//! fleet assertions) and has one short `#[test]` per scenario that calls the function here, so that every
//! test keeps its name per cloud. A third cloud gets its strategy tests by implementing the trait.
//!
//! Every claim is checked through the trait's raw reads of the emulator, never through the provider under
//! test. A scenario returns what a cloud may check further (a fault proxy's log, for instance), and the
//! cloud's test adds its own claims after the shared ones.

use super::cloud::{converge, healthy_of, now_ms};
use super::moto::FaultProxy;
use ledger_format::types::{EnvName, Environment, HealthCheck};
use ledger_format::Blake3Digest;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;
use stele::converge::{self, Memory};
use stele::plan::{Health, Phase, Release};
use stele::provider::{Provider, ProviderError};

/// The rolling group of environment `prod`'s group `web`.
pub const GROUP: &str = "stele-prod-web";

/// The group of a weighted strategy's generation `generation`.
pub fn generation_group(generation: u64) -> String {
    format!("{GROUP}-g{generation}")
}

pub fn env() -> EnvName {
    "prod".parse().unwrap()
}

/// What differs between clouds; each method reads or changes the emulator directly (moto through boto3,
/// the fake through raw HTTP), never through the provider under test. Images are named by a key ("1",
/// "2", "3"): the release image of v1..v3, which the world holds.
pub trait CloudWorld: Sized {
    type P: Provider;
    /// The provider's name for its cloud in messages ("aws").
    const CLOUD: &'static str;
    /// The capacity of the rolling v1 → v2 → v1 scenario.
    const ROLLING_CAPACITY: usize;
    /// What the cloud calls a group in a refusal ("auto scaling group").
    const GROUP_KIND: &'static str;
    /// What a weighted spec without the router is refused with.
    const NO_ROUTER_SAYS: &'static str;
    /// What the reason of a gate failed by the balancer's health says, every part.
    const UNHEALTHY_SAYS: &'static [&'static str];

    /// A new emulator holding the world: release images of v1..v3, the operator's router and launch settings.
    fn new() -> Self;
    /// A world whose instances' private IPs are loopback addresses 127.77.x.y and whose specs' `port` is
    /// `port`: the agent's own health checks reach a server on this host.
    fn probed(port: u16) -> Self;

    fn provider(&self) -> Self::P;
    /// A provider that also probes every instance itself (the environment's health check).
    fn probing_provider(&self) -> Self::P;
    /// A fault proxy in front of the emulator that fails `rate` of the calls the way the cloud does.
    fn fault_proxy(&self, rate: f64, seed: u64) -> FaultProxy;
    /// A provider calling through `proxy`, `max_attempts` per call.
    fn provider_via(&self, proxy: &FaultProxy, max_attempts: u32) -> Self::P;

    /// A spec for environment `name` with `groups`, on this world's cloud.
    fn spec_named(&self, name: &str, groups: Value, strategy: Value) -> Environment;
    /// `spec` without the router (listener, URL map) a weighted strategy needs.
    fn without_router(&self, spec: Environment) -> Environment;
    /// Generation `generation` running image `key`: version `key`.0.0, the digest of v`key`.
    fn release(&self, generation: u64, key: &str) -> Release;

    /// The names of the groups in the cloud, sorted.
    fn group_names(&self) -> Vec<String>;
    /// The running instances of group `group` (none if it does not exist), by the cloud's id or name.
    fn running(&self, group: &str) -> Vec<String>;
    /// The generations the running instances of `group` were launched for (0: not by Stele).
    fn generations_running(&self, group: &str) -> BTreeSet<u64>;
    /// The most instances group `group` may run now (AWS: MaxSize; GCP: targetSize); it must exist.
    fn size_limit(&self, group: &str) -> u64;
    /// What the router forwards to, as (generation, weight), sorted; a backend that is no generation's
    /// (the operator's own) shows as generation 0.
    fn router(&self) -> Vec<(u64, i64)>;
    /// [`router`](Self::router) as the operator left it, before Stele's first weighted release.
    fn operator_route(&self) -> Vec<(u64, i64)>;
    /// Instances the fleet launched so far.
    fn launches(&self) -> usize;
    /// Launch configurations (launch-template versions, instance templates) Stele made, in all.
    fn releases_made(&self) -> usize;
    /// Launch configurations Stele made for `generation` of `prod`.
    fn releases_made_for(&self, generation: u64) -> usize;
    /// Everything of the fleet the cloud holds (groups, instances, router, balancers), to compare.
    fn snapshot(&self) -> String;

    /// The balancer reports `instances` unhealthy.
    fn mark_unhealthy(&self, instances: &[String]);
    /// Someone else makes a group of one instance named `group`.
    fn take_group_name(&self, group: &str);
    /// The group someone else made with [`take_group_name`](Self::take_group_name) is as they left it.
    fn assert_foreign_group_untouched(&self, group: &str);
    /// An operator points the rolling group at a launch configuration of their own and grows it by one
    /// (and may take one of Stele's instances away, so that the group must launch again). Returns the
    /// stray instance, and the digest the provider must observe for it where the cloud says one.
    fn add_stray_instance(&self) -> (String, Option<Blake3Digest>);
    /// The instance `id` was deleted (or terminated).
    fn assert_instance_gone(&self, id: &str);

    /// The rolling fleet: exactly `capacity` healthy instances of image `key` for `generation` in one
    /// group Stele owns, pinned to that generation's launch configuration, nothing of the weighted layout.
    fn assert_fleet(&self, key: &str, generation: u64, capacity: usize);
    /// The weighted fleet runs `generation` only: one group `stele-prod-web-gN` of `capacity` instances of
    /// image `key`, its own balancer, the router sending everything to it, nothing else of Stele's left.
    fn assert_weighted_fleet(&self, key: &str, generation: u64, capacity: usize);
    /// Nothing was made: no group, balancer, launch configuration or instance; the router as it was.
    fn assert_untouched(&self);

    fn spec(&self, capacity: u64, strategy: Value) -> Environment {
        self.spec_named("prod", json!([{"name": "web", "capacity": capacity}]), strategy)
    }

    fn rolling(&self, capacity: u64, surge: u64, unavailable: u64) -> Environment {
        let strategy =
            json!({"kind": "rolling", "max_surge": surge, "max_unavailable": unavailable, "min_ready_seconds": 0});
        self.spec(capacity, strategy)
    }

    fn blue_green(&self, capacity: u64, grace_seconds: u64) -> Environment {
        self.spec(capacity, json!({"kind": "blue_green", "grace_seconds": grace_seconds}))
    }

    fn canary(&self, capacity: u64, steps: Value) -> Environment {
        self.spec(capacity, json!({"kind": "canary", "steps": steps}))
    }
}

fn expect_refusal<T: std::fmt::Debug>(result: Result<T, ProviderError>) -> String {
    match result {
        Err(ProviderError::Refused(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn with_deadline(mut spec: Environment, seconds: u64) -> Environment {
    if let HealthCheck::Http { deadline_seconds, .. } = &mut spec.health {
        *deadline_seconds = seconds;
    }
    spec
}

// ---------------------------------------------------------------------------------------------------
// Rolling

/// A rolling v1 → v2 with max_unavailable 1 and max_surge 0 (at most one instance below capacity at every
/// step), back to v1 as a new generation.
pub fn rolling_v1_to_v2_and_back_to_v1<W: CloudWorld>(w: &W) {
    let cap = W::ROLLING_CAPACITY;
    let spec = w.rolling(cap as u64, 0, 1);
    let mut p = w.provider();
    let mut memory = Memory::default();

    let v1 = w.release(1, "1");
    let (_, retried) = converge(&mut p, None, &spec, &v1, &mut memory, |_| {});
    assert_eq!(retried, 0);
    w.assert_fleet("1", 1, cap);
    assert_eq!(memory.last_good.as_ref(), Some(&v1));

    // v2, one instance at a time: never more than one below capacity, neither in what the provider
    // observed nor in what the cloud holds after the tick's actions.
    for (generation, key) in [(2, "2"), (3, "1")] {
        let target = w.release(generation, key);
        let mut steps = 0;
        let (ticks, retried) = converge(&mut p, None, &spec, &target, &mut memory, |tick| {
            let observed = &tick.observed.instances;
            let healthy = observed.iter().filter(|i| matches!(i.health, Health::Healthy { .. })).count();
            assert!(healthy >= cap - 1, "observed {healthy} healthy: {observed:#?}");
            assert!(observed.len() <= cap, "observed {} instances", observed.len());
            let now = w.running(GROUP).len();
            assert!((cap - 1..=cap).contains(&now), "{} runs {now} instances after a tick: {}", W::CLOUD, w.snapshot());
            let limit = w.size_limit(GROUP);
            assert!(limit <= cap as u64, "max_surge 0 never grows the group ({limit}): {}", w.snapshot());
            steps += 1;
        });
        assert_eq!(retried, 0);
        // One replacement per two ticks (terminate or delete, then launch), plus the converged look.
        assert!(ticks >= 2 * cap, "generation {generation} converged in {ticks} ticks, {steps} checked");
        w.assert_fleet(key, generation, cap);
        assert_eq!(memory.last_good.as_ref(), Some(&target));
    }
    // Earlier launch configurations stay (a restore or an audit may need them): one per generation.
    assert_eq!(w.releases_made(), 3, "one per generation");
    // v1, the replacements of v2, v1 again: nothing launched twice.
    assert_eq!(w.launches(), 3 * cap);
}

/// Every case (what, spec, release, what the refusal says) is refused and, with a release pinning an
/// artifact, nothing is made.
pub fn refused_images_touch_nothing<W: CloudWorld>(w: &W, cases: Vec<(&str, Environment, Release, String)>) {
    let mut p = w.provider();
    let v1 = w.release(1, "1");
    let artifact = Release {
        image: ledger_format::types::Image::Artifact {
            uri: "https://example.invalid/app.tar".parse().unwrap(),
            blake3: *v1.image.digest(),
            size: 1,
        },
        ..v1
    };
    let mut cases = cases;
    cases.push(("artifact", w.rolling(2, 1, 0), artifact, "pins an artifact".to_owned()));
    for (what, spec, release, want) in cases {
        let mut memory = Memory::default();
        match converge::tick(&mut p, &env(), &spec, Some(&release), &mut memory, now_ms()) {
            Err(ProviderError::Refused(msg)) => assert!(msg.contains(&want), "{what}: {msg:?} does not say {want:?}"),
            other => panic!("{what}: expected a refusal, got {other:?}"),
        }
    }
    w.assert_untouched();
}

pub fn a_group_name_taken_by_someone_else_is_refused<W: CloudWorld>(w: &W) {
    w.take_group_name(GROUP);
    let spec = w.rolling(2, 1, 0);
    let mut p = w.provider();
    let mut memory = Memory::default();
    let msg = expect_refusal(converge::tick(&mut p, &env(), &spec, Some(&w.release(1, "1")), &mut memory, now_ms()));
    assert!(msg.contains(&format!("{} {GROUP} exists but is not Stele's", W::GROUP_KIND)), "{msg}");
    w.assert_foreign_group_untouched(GROUP);
}

pub fn restart_before_every_tick_finishes_without_duplicates<W: CloudWorld>(w: &W) {
    // With a surge: the group grows within a tick (launch first, then terminate) and is tidied again.
    let spec = w.rolling(4, 1, 1);
    let mut p = w.provider();
    let mut memory = Memory::default();
    let fresh = || w.provider();
    converge(&mut p, Some(&fresh), &spec, &w.release(1, "1"), &mut memory, |_| {});
    w.assert_fleet("1", 1, 4);
    converge(&mut p, Some(&fresh), &spec, &w.release(2, "2"), &mut memory, |tick| {
        let alive = tick.observed.instances.len();
        assert!(alive <= 5, "capacity + max_surge: {alive}");
        assert_eq!(w.group_names().len(), 1, "{}", w.snapshot());
        let now = w.running(GROUP).len();
        assert!((3..=5).contains(&now), "{} runs {now}: {}", W::CLOUD, w.snapshot());
        let limit = w.size_limit(GROUP);
        assert!(limit <= 5, "the group's size within capacity + max_surge ({limit}): {}", w.snapshot());
    });
    w.assert_fleet("2", 2, 4);
    assert_eq!(w.launches(), 8, "4 of v1 and 4 replacements, nothing twice");
    assert_eq!(w.releases_made(), 2, "one per generation");
}

/// A rolling rollout through a fault proxy that fails about a fifth of the calls (seeded with `seed`).
/// Returns the proxy (its log) and how many failures reached the converge loop.
pub fn rollout_through_faults<W: CloudWorld>(w: &W, seed: u64) -> (FaultProxy, usize) {
    let proxy = w.fault_proxy(0.2, seed);
    // Two attempts per call: the SDK retries what it may; the rest reaches the converge loop.
    let mut p = w.provider_via(&proxy, 2);
    let spec = w.rolling(4, 1, 1);
    let mut memory = Memory::default();
    let (_, r1) = converge(&mut p, None, &spec, &w.release(1, "1"), &mut memory, |_| {});
    let (_, r2) = converge(&mut p, None, &spec, &w.release(2, "2"), &mut memory, |tick| {
        assert!(tick.observed.instances.len() <= 5, "capacity + max_surge");
    });
    let faults = proxy.faults();
    let total = proxy.requests().len();
    eprintln!("{faults} faults in {total} requests; {} failures reached the converge loop", r1 + r2);
    assert!(faults * 10 >= total, "about a fifth of {total} requests faulted, got {faults}");
    w.assert_fleet("2", 2, 4);
    assert_eq!(w.launches(), 8, "4 of v1 and 4 replacements, nothing twice");
    assert_eq!(w.releases_made(), 2, "one per generation");
    (proxy, r1 + r2)
}

/// Which launch configuration an instance came from is what the cloud says: an operator's stray instance
/// is observed as no generation's, and replaced; the next launch pins the group to Stele's again.
pub fn an_instance_from_elsewhere_is_replaced<W: CloudWorld>(w: &W) {
    let spec = w.rolling(3, 0, 1);
    let mut p = w.provider();
    let mut memory = Memory::default();
    let v1 = w.release(1, "1");
    converge(&mut p, None, &spec, &v1, &mut memory, |_| {});
    w.assert_fleet("1", 1, 3);
    let (stray, digest) = w.add_stray_instance();
    let observed = p.observe(&env(), &spec, now_ms()).expect("observe");
    let seen = observed
        .instances
        .iter()
        .find(|i| i.id.rsplit('/').next() == Some(stray.as_str()))
        .expect("the stray instance is observed");
    assert_eq!(seen.generation, 0, "not launched from a Stele launch configuration: {seen:?}");
    if let Some(digest) = digest {
        assert_eq!(seen.digest, digest, "the digest of the image the cloud reports");
    }
    converge(&mut p, None, &spec, &v1, &mut memory, |_| {});
    w.assert_fleet("1", 1, 3);
    w.assert_instance_gone(&stray);
}

pub fn a_group_the_spec_drops_is_emptied_and_deleted<W: CloudWorld>(w: &W) {
    let strategy = json!({"kind": "rolling", "max_surge": 1, "max_unavailable": 0, "min_ready_seconds": 0});
    let both =
        w.spec_named("prod", json!([{"name": "web", "capacity": 2}, {"name": "api", "capacity": 1}]), strategy.clone());
    let mut p = w.provider();
    let mut memory = Memory::default();
    let v1 = w.release(1, "1");
    converge(&mut p, None, &both, &v1, &mut memory, |_| {});
    assert_eq!(w.group_names(), ["stele-prod-api", "stele-prod-web"]);
    let web = w.spec_named("prod", json!([{"name": "web", "capacity": 2}]), strategy);
    converge(&mut p, None, &web, &v1, &mut memory, |_| {});
    w.assert_fleet("1", 1, 2);
    assert_eq!(w.launches(), 3);
}

/// One agent has one provider for all its environments. Each observation judges only its own
/// environment's instances: with min_ready_seconds, a history wiped by the other environment's look
/// would never let a new instance count as ready, and neither rollout would finish.
pub fn two_environments_on_one_provider_keep_their_own_health_history<W: CloudWorld>(w: &W) {
    let strategy = json!({"kind": "rolling", "max_surge": 1, "max_unavailable": 0, "min_ready_seconds": 1});
    let group = json!([{"name": "web", "capacity": 2}]);
    let envs: Vec<(EnvName, Environment)> = ["prod", "stage"]
        .iter()
        .map(|name| (name.parse().unwrap(), w.spec_named(name, group.clone(), strategy.clone())))
        .collect();
    let mut p = w.provider();
    let mut memories = [Memory::default(), Memory::default()];
    for target in [w.release(1, "1"), w.release(2, "2")] {
        let mut done = [false, false];
        for n in 0.. {
            assert!(n < 80, "no convergence to generation {} in 80 rounds: {done:?}", target.generation);
            for (k, (env, spec)) in envs.iter().enumerate() {
                let tick = converge::tick(&mut p, env, spec, Some(&target), &mut memories[k], now_ms()).expect("tick");
                assert!(tick.retryable.is_empty(), "{env}: {:?}", tick.retryable);
                done[k] = tick.converged();
            }
            if done == [true, true] {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    for (env, _) in &envs {
        let group = format!("stele-{env}-web");
        assert_eq!(w.running(&group).len(), 2, "{group}: {}", w.snapshot());
        assert_eq!(w.generations_running(&group), BTreeSet::from([2]), "{group} runs v2 only");
    }
    assert_eq!(w.launches(), 8, "2 of v1 and 2 of v2 per environment, nothing twice");
}

// ---------------------------------------------------------------------------------------------------
// Blue/green and canary: one group and one balancer per generation, traffic on the router

pub fn blue_green_switches_the_router_once_the_new_group_is_healthy<W: CloudWorld>(w: &W) {
    let spec = w.blue_green(3, 1);
    let mut p = w.provider();
    let mut memory = Memory::default();
    assert_eq!(w.router(), w.operator_route(), "the operator's router forwards to its own backend");

    converge(&mut p, None, &spec, &w.release(1, "1"), &mut memory, |_| {});
    w.assert_weighted_fleet("1", 1, 3);

    // v2: the router sends everything to g1 until all of g2 is healthy, then everything to g2 in one
    // change (never a split); g1 keeps its 3 instances until then and is deleted after the grace period.
    let mut switched = false;
    converge(&mut p, None, &spec, &w.release(2, "2"), &mut memory, |tick| {
        let router = w.router();
        let g1 = w.running(&generation_group(1)).len();
        match router.as_slice() {
            [(1, 100)] => {
                assert!(!switched, "traffic went back to g1");
                assert_eq!(g1, 3, "g1 whole while it serves: {}", w.snapshot());
            }
            [(2, 100)] => {
                if !switched {
                    let g2 = w.running(&generation_group(2)).len();
                    assert_eq!(g2, 3, "all of g2 runs before the switch: {}", w.snapshot());
                    assert_eq!(healthy_of(tick, 2), 3, "the switch followed an observation of 3 healthy g2 instances");
                    assert_eq!(g1, 3, "g1 is kept for the grace period: {}", w.snapshot());
                }
                switched = true;
            }
            other => panic!("blue/green never splits traffic: {other:?}"),
        }
    });
    assert!(switched);
    w.assert_weighted_fleet("2", 2, 3);
    assert_eq!(w.launches(), 6, "3 of v1 and 3 of v2, nothing twice");
    assert_eq!(w.releases_made_for(1), 1, "g1's launch configuration is kept");
    assert_eq!(w.releases_made(), 2, "one per generation");
}

pub fn canary_steps_then_a_failed_gate_restores_traffic_and_scales_the_canary_in<W: CloudWorld>(w: &W) {
    let spec = with_deadline(
        w.canary(4, json!([{"weight": 25, "pause_seconds": 1}, {"weight": 50, "pause_seconds": 600}])),
        1,
    );
    let mut p = w.provider();
    let mut memory = Memory::default();
    converge(&mut p, None, &spec, &w.release(1, "1"), &mut memory, |_| {});
    w.assert_weighted_fleet("1", 1, 4);

    // v2 goes 25% (1 instance), then 50% (2 instances), where the 600 s pause holds it. The instances
    // of the next step are launched during a pause (they get traffic only after it).
    let v2 = w.release(2, "2");
    let mut seen = Vec::new();
    // Bounded by wall time: the 1 s pause is real seconds, however fast a tick is.
    let start = std::time::Instant::now();
    loop {
        assert!(start.elapsed() < Duration::from_secs(60), "canary did not reach 50%: {seen:?}");
        let tick = converge::tick(&mut p, &env(), &spec, Some(&v2), &mut memory, now_ms()).expect("tick");
        assert_eq!(tick.plan.phase, Phase::Progressing, "{:?}", tick.plan);
        let router = w.router();
        if seen.last() != Some(&router) {
            seen.push(router.clone());
        }
        let g2 = w.running(&generation_group(2)).len();
        let g1 = w.running(&generation_group(1)).len();
        assert_eq!(g1, 4, "the stable generation stays whole during the canary: {}", w.snapshot());
        match router.as_slice() {
            [(1, 100)] => assert!(g2 <= 1, "25% needs 1 instance, {g2} run"),
            [(1, 75), (2, 25)] => assert!(g2 <= 2, "{g2} run at 25%, the next step needs 2"),
            [(1, 50), (2, 50)] => {
                assert!(g2 <= 4, "{g2} run at 50%");
                if tick.plan.waiting.iter().any(|w| w.contains("canary at 50%, pausing")) {
                    break;
                }
            }
            other => panic!("unexpected weights {other:?}"),
        }
    }
    assert_eq!(seen, vec![vec![(1, 100)], vec![(1, 75), (2, 25)], vec![(1, 50), (2, 50)]]);

    // The canary goes bad: the balancer reports its instances unhealthy.
    let ids = w.running(&generation_group(2));
    let canaries = ids.len();
    assert!((2..=4).contains(&canaries), "{ids:?}");
    w.mark_unhealthy(&ids);
    let mut failed_tick = None;
    let mut restored = None;
    for n in 0..40 {
        let tick = converge::tick(&mut p, &env(), &spec, Some(&v2), &mut memory, now_ms()).expect("tick");
        let router = w.router();
        if tick.plan.phase == Phase::Degraded && failed_tick.is_none() {
            failed_tick = Some(n);
        }
        if router == vec![(1, 100)] && restored.is_none() {
            restored = Some(n);
        }
        if restored.is_none() {
            assert_eq!(router, vec![(1, 50), (2, 50)], "traffic stays until the gate fails, then goes back");
        }
        if tick.converged() {
            assert_eq!(tick.plan.phase, Phase::Degraded, "{:?}", tick.plan);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(failed_tick.is_some() && restored.is_some(), "gate failed at {failed_tick:?}, restored at {restored:?}");
    let failed = memory.failed.as_ref().expect("the failed gate is remembered");
    assert_eq!(failed.generation, 2);
    for part in W::UNHEALTHY_SAYS {
        assert!(failed.reason.contains(part), "{part:?} in {}", failed.reason);
    }
    assert_eq!(memory.last_good.as_ref().map(|r| r.generation), Some(1));
    // g1 serves alone again; the canary group and its balancer are gone.
    w.assert_weighted_fleet("1", 1, 4);
    assert_eq!(w.launches(), 4 + canaries, "4 of v1 and the canaries, nothing twice");
}

/// Blue/green through a fault proxy (seeded with `seed`) with a restart before every tick. Returns the
/// proxy, whose log a cloud may check further.
pub fn blue_green_through_faults_with_a_restart_before_every_tick<W: CloudWorld>(w: &W, seed: u64) -> FaultProxy {
    let proxy = w.fault_proxy(0.2, seed);
    let spec = w.blue_green(3, 0);
    let fresh = || w.provider_via(&proxy, 2);
    let mut p = fresh();
    let mut memory = Memory::default();
    converge(&mut p, Some(&fresh), &spec, &w.release(1, "1"), &mut memory, |_| {});
    converge(&mut p, Some(&fresh), &spec, &w.release(2, "2"), &mut memory, |_| {
        let names: BTreeSet<String> = w.group_names().into_iter().collect();
        assert!(
            names.is_subset(&BTreeSet::from([generation_group(1), generation_group(2)])),
            "at most the serving and the new generation: {names:?}"
        );
    });
    let (faults, total) = (proxy.faults(), proxy.requests().len());
    eprintln!("{faults} faults in {total} requests");
    assert!(faults * 10 >= total, "about a fifth of {total} requests faulted, got {faults}");
    w.assert_weighted_fleet("2", 2, 3);
    assert_eq!(w.launches(), 6, "3 of v1 and 3 of v2, nothing twice");
    proxy
}

pub fn weighted_strategies_need_a_router_and_one_group<W: CloudWorld>(w: &W) {
    let mut p = w.provider();
    let no_router = w.without_router(w.blue_green(2, 0));
    let two_groups = w.spec_named(
        "prod",
        json!([{"name": "web", "capacity": 1}, {"name": "api", "capacity": 1}]),
        json!({"kind": "canary", "steps": [{"weight": 10, "pause_seconds": 0}]}),
    );
    for (spec, want) in [(&no_router, W::NO_ROUTER_SAYS), (&two_groups, "exactly one group")] {
        let mut memory = Memory::default();
        match converge::tick(&mut p, &env(), spec, Some(&w.release(1, "1")), &mut memory, now_ms()) {
            Err(ProviderError::Refused(e)) => assert!(e.contains(want), "{e}"),
            other => panic!("expected a refusal naming {want:?}, got {other:?}"),
        }
    }
    w.assert_untouched();
}

// ---------------------------------------------------------------------------------------------------
// The agent's own health check (the providers' `probe_instances`)

/// Answers the environment's health check for every instance: the world's instances have loopback
/// private IPs (127.77.0.0/16), so this one listener on 0.0.0.0 gets every probe; which address was
/// probed is the connection's local address. Addresses outside `good` (once it is set) answer 503.
pub struct HealthServer {
    pub port: u16,
    pub probed: std::sync::Arc<std::sync::Mutex<BTreeSet<std::net::IpAddr>>>,
    pub good: std::sync::Arc<std::sync::Mutex<Option<BTreeSet<std::net::IpAddr>>>>,
}

impl HealthServer {
    pub fn start() -> HealthServer {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("bind the health server");
        let port = listener.local_addr().unwrap().port();
        let probed = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::new()));
        let good = std::sync::Arc::new(std::sync::Mutex::new(None::<BTreeSet<std::net::IpAddr>>));
        let (p, g) = (probed.clone(), good.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let ip = stream.local_addr().unwrap().ip();
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf);
                p.lock().unwrap().insert(ip);
                let ok = g.lock().unwrap().as_ref().is_none_or(|good| good.contains(&ip));
                let status = if ok { "200 OK" } else { "503 Service Unavailable" };
                let _ = write!(stream, "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
        });
        HealthServer { port, probed, good }
    }
}

/// Makes its own world ([`CloudWorld::probed`]) on the port of its health server.
pub fn the_agents_own_health_check_gates_a_rolling_release_and_the_group_is_pinned_back<W: CloudWorld>() -> W {
    let server = HealthServer::start();
    let w = W::probed(server.port);
    let spec = with_deadline(w.rolling(3, 1, 0), 1);
    let mut p = w.probing_provider();
    let mut memory = Memory::default();
    converge(&mut p, None, &spec, &w.release(1, "1"), &mut memory, |_| {});
    w.assert_fleet("1", 1, 3);
    let v1_ips = server.probed.lock().unwrap().clone();
    assert_eq!(v1_ips.len(), 3, "each v1 instance was probed at its own address: {v1_ips:?}");
    assert!(v1_ips.iter().all(|ip| ip.to_string().starts_with("127.77.")), "{v1_ips:?}");

    // v2's instances answer 503: the cloud's own view of them (the emulator) is healthy, only the
    // environment's own check sees it. The gate fails and v1 is restored.
    *server.good.lock().unwrap() = Some(v1_ips);
    let v2 = w.release(2, "2");
    let mut degraded = None;
    for _ in 0..40 {
        let tick = converge::tick(&mut p, &env(), &spec, Some(&v2), &mut memory, now_ms()).expect("tick");
        assert_eq!(healthy_of(&tick, 1), 3, "max_unavailable 0: v1 stays whole");
        if tick.converged() {
            degraded = Some(tick.plan.phase);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(degraded, Some(Phase::Degraded));
    let failed = memory.failed.as_ref().expect("gate failed");
    assert_eq!(failed.generation, 2);
    assert!(failed.reason.contains("status 503"), "{}", failed.reason);
    // v1 runs, and the group launches from v1's launch configuration again: an instance the cloud
    // replaces on its own gets the good image, not the failed one.
    w.assert_fleet("1", 1, 3);
    assert_eq!(w.releases_made_for(2), 1, "the failed launch configuration is kept, not used");
    w
}

// ---------------------------------------------------------------------------------------------------
// Switching strategies

/// Returns the proxy (without faults) the provider called through, whose log a cloud may check.
pub fn a_rolling_environment_switched_to_canary_is_adopted_and_switching_back_is_refused<W: CloudWorld>(
    w: &W,
) -> FaultProxy {
    // A proxy without faults: it records the calls.
    let proxy = w.fault_proxy(0.0, 7);
    let mut p = w.provider_via(&proxy, 8);
    let mut memory = Memory::default();
    converge(&mut p, None, &w.rolling(2, 1, 0), &w.release(1, "1"), &mut memory, |_| {});
    w.assert_fleet("1", 1, 2);

    // The spec becomes a canary; v2 arrives. The rolling group's generation gets its own balancer, so the
    // router can split traffic between it and g2; then the rolling group is emptied and deleted with that
    // balancer.
    let canary = w.canary(2, json!([{"weight": 50, "pause_seconds": 0}]));
    let mut seen = Vec::new();
    converge(&mut p, None, &canary, &w.release(2, "2"), &mut memory, |_| {
        let r = w.router();
        if seen.last() != Some(&r) {
            seen.push(r);
        }
    });
    assert_eq!(seen.first(), Some(&w.operator_route()), "the operator's own backend first: {seen:?}");
    assert!(seen.contains(&vec![(1, 50), (2, 50)]), "a 50/50 step between the adopted group and g2: {seen:?}");
    assert_eq!(seen.last(), Some(&vec![(2, 100)]), "{seen:?}");
    w.assert_weighted_fleet("2", 2, 2);
    assert_eq!(w.launches(), 4, "2 of v1 and 2 of v2, nothing twice");

    // Back to rolling would leave the router on a group being emptied: refused, nothing touched.
    let before = w.snapshot();
    let e = expect_refusal(converge::tick(
        &mut p,
        &env(),
        &w.rolling(2, 1, 0),
        Some(&w.release(3, "1")),
        &mut memory,
        now_ms(),
    ));
    assert!(e.contains(&format!("switching it to rolling on {} is not supported", W::CLOUD)), "{e}");
    assert_eq!(w.snapshot(), before, "nothing changed");
    proxy
}

pub fn switching_to_canary_in_the_middle_of_a_rolling_rollout_is_refused<W: CloudWorld>(w: &W) {
    let mut p = w.provider();
    let mut memory = Memory::default();
    let rolling = w.rolling(2, 0, 1);
    converge(&mut p, None, &rolling, &w.release(1, "1"), &mut memory, |_| {});
    // v2 until the group runs both generations (one replaced, one not yet).
    let v2 = w.release(2, "2");
    for n in 0.. {
        assert!(n < 20, "never ran both generations");
        converge::tick(&mut p, &env(), &rolling, Some(&v2), &mut memory, now_ms()).expect("tick");
        if w.generations_running(GROUP).len() == 2 {
            break;
        }
    }
    let canary = w.canary(2, json!([{"weight": 50, "pause_seconds": 0}]));
    let before = w.snapshot();
    let e = expect_refusal(converge::tick(&mut p, &env(), &canary, Some(&v2), &mut memory, now_ms()));
    assert!(e.contains("runs generations [1, 2]") && e.contains("finish it with strategy rolling"), "{e}");
    assert_eq!(w.snapshot(), before, "nothing changed");
}
