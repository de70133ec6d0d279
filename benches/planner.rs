//! The planner at scale (issue 14): `plan::plan` for one environment whose instances are spread over
//! many groups, converged (every instance healthy at the target) and mid-rollout (half of each group
//! replaced). The total is fixed, so the figures show what the number of groups costs by itself.
//!
//! Run: `cargo bench --bench planner` (release) or `--profile dev`. `STELE_BENCH_ROUNDS` (default 20)
//! sets the plans timed per figure; the median is printed.

use ledger_format::types::*;
use ledger_format::Blake3Digest;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};
use stele::plan::{plan, Desired, GroupTraffic, Health, Instance, Observed, Release, Traffic};

fn spec(groups: usize, capacity: u64) -> Environment {
    Environment {
        payload_type: EnvironmentType,
        ledger: "bench".parse().unwrap(),
        name: "prod".parse().unwrap(),
        version: 1,
        provider: Provider::Local {},
        groups: (0..groups).map(|g| Group { name: format!("g{g}").parse().unwrap(), capacity }).collect(),
        strategy: Strategy::Rolling { max_surge: 10, max_unavailable: 0, min_ready_seconds: 0 },
        health: HealthCheck::Tcp { interval_ms: 1000, timeout_ms: 500, healthy_threshold: 1, deadline_seconds: 600 },
        drift: DriftMode::Correct,
        revert: RevertPolicy::Signed,
        max_instance_age_seconds: None,
    }
}

fn release(generation: u64) -> Release {
    Release {
        generation,
        version: format!("1.0.{generation}").parse().unwrap(),
        seq: generation,
        image: Image::Artifact {
            uri: "file:///images/app.tar".parse().unwrap(),
            blake3: Blake3Digest([generation as u8; 32]),
            size: 1,
        },
    }
}

/// `groups` groups of `per` instances; in each group the first `new` run generation 2, the rest 1.
fn observed(spec: &Environment, per: usize, new: usize) -> Observed {
    let mut instances = Vec::with_capacity(spec.groups.len() * per);
    for g in &spec.groups {
        for i in 0..per {
            let generation = if i < new { 2 } else { 1 };
            instances.push(Instance {
                id: format!("{}-{i}", g.name),
                group: g.name.clone(),
                generation,
                digest: Blake3Digest([generation as u8; 32]),
                launched_ms: i as u64,
                health: Health::Healthy { since_ms: i as u64 },
                drift: None,
            });
        }
    }
    let traffic = spec
        .groups
        .iter()
        .map(|g| (g.name.clone(), GroupTraffic { traffic: Traffic::Even, since_ms: 0 }))
        .collect::<BTreeMap<_, _>>();
    Observed { instances, traffic, probes: None }
}

fn median(rounds: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn main() {
    let rounds: usize = std::env::var("STELE_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let total = 100_000;
    println!("plan() of one environment, {total} instances in all, median of {rounds} plans");
    println!("| groups x instances | converged | mid-rollout (half replaced) |");
    println!("|---|---:|---:|");
    for groups in [1usize, 10, 100, 1_000] {
        let per = total / groups;
        let spec = spec(groups, per as u64);
        let desired = Desired {
            spec: &spec,
            target: Some(release(2)),
            last_good: Some(release(2)),
            failed: None,
            relaunched: Vec::new(),
        };
        let converged = observed(&spec, per, per);
        let rolling = observed(&spec, per, per / 2);
        let now = 10_000_000;
        let done = plan(&desired, &converged, now);
        assert!(done.actions.is_empty(), "the converged environment plans actions: {:?}", done.actions.first());
        let a = median(rounds, || {
            black_box(plan(black_box(&desired), black_box(&converged), now));
        });
        let mid = plan(&desired, &rolling, now);
        assert!(!mid.actions.is_empty(), "the environment mid-rollout plans nothing");
        let b = median(rounds, || {
            black_box(plan(black_box(&desired), black_box(&rolling), now));
        });
        println!("| {groups} x {per} | {:.2} ms | {:.2} ms |", a.as_secs_f64() * 1e3, b.as_secs_f64() * 1e3);
    }
}
