//! One agent pass over 1 000 environments, and a rollout across all of them, in process on the
//! simulated provider (issue 14's target: a pass over 1 000 converged environments ≤ 50 ms, excluding
//! Git). Run: `cargo bench --features sim --bench agent_scale`; `STELE_BENCH_ENVS=100,1000` chooses
//! the sizes (default 1000), `STELE_BENCH_CAPACITY` the instances per environment (default 2).
//!
//! For each size: a signed ledger generated in memory and verified by the real history verifier
//! (genesis, then one commit releasing 1.0.0 to every environment), handed to `Worker::simulated`;
//! instances boot at once (boot_ms 0), so a rollout's passes are the agent's own work. Printed:
//! - the first rollout from nothing and the rollout of 2.0.0: passes until every environment is
//!   Healthy, total and mean pass time;
//! - converged passes (median, min, max of 30), with the paired floor measured in the same run: one
//!   `converge::tick` per environment on the same simulation (observe, plan, act on nothing), which is
//!   the least any pass must do; and how many gate-memory files the converged passes wrote (must be 0).

use ledger_format::types::EnvName;
use std::time::{Duration, Instant};
use stele::agent::simulation::{agent, SimLedger};
use stele::agent::{release_of, Worker};
use stele::converge::{self, Memory};
use stele::provider::sim::{Sim, SimConfig};
use stele::status::Phase;

const CONVERGED_PASSES: usize = 30;

fn env_var_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().parse().unwrap_or_else(|_| panic!("{name}: {s:?} is not a number")))
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn stats(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    (ms(v[v.len() / 2]), ms(v[0]), ms(v[v.len() - 1]))
}

/// Passes until every one of `envs` environments is Healthy: (passes, total time).
fn rollout(worker: &mut Worker, envs: usize) -> (usize, Duration) {
    let started = Instant::now();
    for n in 1..=200 {
        let s = worker.pass(false);
        assert!(s.fatal.is_none(), "{:?}", s.fatal);
        let healthy = s.phases.values().filter(|p| **p == Phase::Healthy).count();
        if s.phases.len() == envs && healthy == envs {
            return (n, started.elapsed());
        }
    }
    panic!("the rollout did not finish in 200 passes")
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map_or_else(|_| "?".into(), |l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn main() {
    let capacity = env_var_list("STELE_BENCH_CAPACITY", "2")[0] as u64;
    println!(
        "agent pass at scale, in process on the simulated provider (no Git); {capacity} instance(s) per environment"
    );
    println!("load average before: {}", load());
    for n in env_var_list("STELE_BENCH_ENVS", "1000") {
        let envs: Vec<EnvName> = (0..n).map(|i| format!("env-{i:05}").parse().expect("a valid name")).collect();
        let tmp = tempfile::tempdir().expect("tempdir");
        let t = Instant::now();
        let mut ledger = SimLedger::new(&envs, capacity);
        let v1 = ledger.release("1.0.0");
        let v2 = ledger.release("2.0.0");
        let setup = t.elapsed();
        let sim = Sim::new(SimConfig { boot_ms: 0, ..SimConfig::default() }).record_events(false);
        let mut worker = agent(tmp.path(), v1.clone(), sim).expect("an in-process agent");

        let (first_passes, first) = rollout(&mut worker, n);

        // Converged passes; the gate memory directory is emptied first, so any file in it afterwards
        // was written by a pass with nothing to do.
        let memory_dir = tmp.path().join("agent");
        std::fs::remove_dir_all(&memory_dir).expect("remove the gate memory");
        let mut passes = Vec::new();
        for _ in 0..CONVERGED_PASSES {
            let t = Instant::now();
            let s = worker.pass(false);
            passes.push(t.elapsed());
            assert!(s.settled, "a converged pass found work: {:?}", s.phases.values().find(|p| **p != Phase::Healthy));
        }
        let written = std::fs::read_dir(&memory_dir).map_or(0, |d| d.count());

        // The paired floor: one tick per environment on a simulation in the same converged state.
        let mut floor_sim = Sim::new(SimConfig { boot_ms: 0, ..SimConfig::default() }).record_events(false);
        let mut memories: Vec<Memory> = vec![Memory::default(); n];
        let now = stele::agent::now_ms();
        for _ in 0..5 {
            for ((env, h), memory) in v1.state.envs.iter().zip(memories.iter_mut()) {
                converge::tick(&mut floor_sim, env, &h.spec.payload, release_of(h).as_ref(), memory, now)
                    .expect("the simulation refuses nothing");
            }
        }
        let mut floors = Vec::new();
        for _ in 0..CONVERGED_PASSES {
            let t = Instant::now();
            for ((env, h), memory) in v1.state.envs.iter().zip(memories.iter_mut()) {
                let tick = converge::tick(&mut floor_sim, env, &h.spec.payload, release_of(h).as_ref(), memory, now)
                    .expect("the simulation refuses nothing");
                assert!(tick.converged(), "{env}: the floor's simulation is not converged");
            }
            floors.push(t.elapsed());
        }

        worker.set_verified(v2);
        let (second_passes, second) = rollout(&mut worker, n);
        let sim = worker.sim().expect("a simulated worker");
        let on_v2 = envs.iter().filter(|e| sim.snapshot(e, u64::MAX).iter().all(|i| i.generation == 2)).count();
        assert_eq!(on_v2, n, "every environment runs generation 2");

        let (median, min, max) = stats(passes);
        let (floor, _, _) = stats(floors);
        println!(
            "\n{n} environments ({} instances), ledger generated and verified in {:.0} ms",
            n as u64 * capacity,
            ms(setup)
        );
        println!(
            "  rollout 1.0.0 from nothing: {first_passes} passes, {:.0} ms ({:.1} ms/pass), all {n} Healthy",
            ms(first),
            ms(first) / first_passes as f64
        );
        println!(
            "  rollout 2.0.0:              {second_passes} passes, {:.0} ms ({:.1} ms/pass), all {n} Healthy on generation 2",
            ms(second),
            ms(second) / second_passes as f64
        );
        println!("  converged pass:  median {median:.2} ms (min {min:.2}, max {max:.2}) over {CONVERGED_PASSES} passes; target ≤ 50 ms: {}", if median <= 50.0 { "met" } else { "MISSED" });
        println!("  paired floor (observe + plan per env, no status, metrics or memory): {floor:.2} ms; pass / floor = {:.2}×", median / floor);
        println!("  gate-memory files written by {CONVERGED_PASSES} converged passes: {written}");
    }
    println!("\nload average after: {}", load());
}
