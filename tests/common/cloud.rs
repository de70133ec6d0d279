//! What the cloud providers' strategy suites (tests/aws_provider.rs, tests/gcp_provider.rs) and their
//! call-count benches (benches/aws.rs, benches/gcp.rs) share: the spec envelope, `converge::tick` driven
//! to convergence, releases that pin a machine image, what a tick observed, and the benches' timing of
//! observations and ranking of calls. It knows the `Provider` trait, never a
//! cloud, and touches nothing but the provider it is given.

use ledger_format::ranges::check_environment_ranges;
use ledger_format::types::{EnvName, Environment, Image};
use ledger_format::Blake3Digest;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use stele::converge::{self, Memory, Tick};
use stele::plan::{Health, Phase, Release};
use stele::provider::{Provider, ProviderError};

/// How long [`converge`] ticks before it fails the test.
pub const CONVERGE_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Generation `generation` (also its seq) of `version`, pinning machine image `image` with `blake3`.
pub fn machine_release(generation: u64, version: &str, image: &str, blake3: Blake3Digest) -> Release {
    Release {
        generation,
        version: version.parse().unwrap(),
        seq: generation,
        image: Image::MachineImage { id: image.parse().unwrap(), blake3 },
    }
}

/// Environment `name`'s spec on `provider` (the spec's `provider` object), with `groups` and `strategy`, an
/// HTTP health check on /healthz (deadline 120 s), drift corrected and reverts allowed; within the ledger's
/// ranges.
pub fn environment(name: &str, provider: Value, groups: Value, strategy: Value) -> Environment {
    let spec: Environment = serde_json::from_value(json!({
        "type": "stele.environment/v1",
        "ledger": "acme",
        "name": name,
        "version": 1,
        "provider": provider,
        "groups": groups,
        "strategy": strategy,
        "health": {"kind": "http", "path": "/healthz", "interval_ms": 1000, "timeout_ms": 500,
                   "healthy_threshold": 1, "deadline_seconds": 120},
        "drift": "correct",
        "revert": "allow",
    }))
    .expect("spec parses");
    check_environment_ranges(&spec).expect("spec within the ledger's ranges");
    spec
}

/// The strategies the call-count benches compare, by name: rolling (surge 1, unavailable 1), blue/green
/// (grace 0), canary (25 %, 50 %, no pauses).
pub fn bench_strategies() -> [(&'static str, serde_json::Value); 3] {
    use serde_json::json;
    [
        (
            "rolling (surge 1, unavailable 1)",
            json!({"kind": "rolling", "max_surge": 1, "max_unavailable": 1, "min_ready_seconds": 0}),
        ),
        ("blue/green (grace 0)", json!({"kind": "blue_green", "grace_seconds": 0})),
        (
            "canary (25%, 50%, no pauses)",
            json!({"kind": "canary", "steps": [{"weight": 25, "pause_seconds": 0}, {"weight": 50, "pause_seconds": 0}]}),
        ),
    ]
}

/// Instances of `generation` the tick observed healthy.
pub fn healthy_of(tick: &Tick, generation: u64) -> usize {
    tick.observed
        .instances
        .iter()
        .filter(|i| i.generation == generation && matches!(i.health, Health::Healthy { .. }))
        .count()
}

/// Ticks `spec`'s environment until converged (Healthy); `check` sees every tick. With `restart`, every
/// tick runs on a new provider (an agent restarted before each tick). Retryable failures (of the whole
/// tick or of single actions) are counted and ticked through; a refusal fails the test. Returns (ticks,
/// retryable failures).
///
/// Ticks run back to back, as the benches count them, and the limit is wall time ([`CONVERGE_LIMIT`]),
/// not a tick count: a grace period or pause is real seconds, and against a fast fake a tick takes a few
/// milliseconds, so any fixed count could run out before a 1 s grace period ends (it did, in CI, at 80).
pub fn converge<P: Provider>(
    provider: &mut P,
    restart: Option<&dyn Fn() -> P>,
    spec: &Environment,
    target: &Release,
    memory: &mut Memory,
    mut check: impl FnMut(&Tick),
) -> (usize, usize) {
    let mut retryable = 0;
    let start = std::time::Instant::now();
    for n in 1.. {
        if start.elapsed() > CONVERGE_LIMIT {
            panic!("no convergence to generation {} in {CONVERGE_LIMIT:?} ({} ticks)", target.generation, n - 1);
        }
        if let Some(fresh) = restart {
            *provider = fresh();
        }
        match converge::tick(provider, &spec.name, spec, Some(target), memory, now_ms()) {
            Ok(tick) => {
                check(&tick);
                retryable += tick.retryable.len();
                for e in &tick.retryable {
                    eprintln!("tick {n}: retryable action: {e}");
                }
                if tick.converged() {
                    assert_eq!(tick.plan.phase, Phase::Healthy, "{:?}", tick.plan);
                    return (n, retryable);
                }
            }
            Err(ProviderError::Retryable(e)) => {
                eprintln!("tick {n}: retryable: {e}");
                retryable += 1;
            }
            Err(e @ ProviderError::Refused(_)) => panic!("tick {n} refused: {e}"),
        }
    }
    unreachable!()
}

/// For the benches: ticks to convergence, which must take no retry; returns (ticks, wall time).
pub fn converge_clean<P: Provider>(
    p: &mut P,
    spec: &Environment,
    target: &Release,
    memory: &mut Memory,
) -> (usize, Duration) {
    let start = Instant::now();
    let (ticks, retried) = converge(p, None, spec, target, memory, |_| {});
    assert_eq!(retried, 0, "a bench run without faults retried");
    (ticks, start.elapsed())
}

/// How many observations of a converged environment [`median_observe`] makes.
pub const OBSERVATIONS: usize = 20;

/// For the benches: the median time of [`OBSERVATIONS`] observations of `spec`'s environment.
pub fn median_observe<P: Provider>(p: &mut P, env: &EnvName, spec: &Environment) -> Duration {
    let mut times: Vec<Duration> = (0..OBSERVATIONS)
        .map(|_| {
            let t = Instant::now();
            p.observe(env, spec, now_ms()).expect("observe");
            t.elapsed()
        })
        .collect();
    times.sort();
    times[OBSERVATIONS / 2]
}

/// For the benches: the `n` most frequent calls, as "name count", most first (ties by name).
pub fn most_frequent(counts: &BTreeMap<String, usize>, n: usize) -> Vec<String> {
    let mut top: Vec<(&String, &usize)> = counts.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    top.iter().take(n).map(|(name, count)| format!("{name} {count}")).collect()
}
