//! Status-branch figures (issue 11): how many commits a rollout writes to `stele/status`, and how
//! many agents' status writers can share one remote.
//!
//! - `rollouts`: for rolling, blue/green and canary (the specs of `examples/environments/` as they
//!   are: 2 instances, health every 500 ms, threshold 2; rolling with `min_ready_seconds` 2,
//!   blue/green with a 10 s grace, canary 50% with a 5 s pause), v1 is released and converged, then
//!   v2 is released and a real `stele agent --once` on the local provider takes it to Healthy while
//!   writing status to the ledger repository. Printed: the status commits of each rollout and its
//!   duration.
//! - `writers`: N status writers (default 20, `STELE_BENCH_WRITERS`), one thread each, each owning
//!   `STELE_BENCH_ENVS` environments (default 2) of one ledger served by `git daemon` on loopback.
//!   After a release that touches every environment each writer publishes Progressing, then Healthy,
//!   for each of its environments. Printed: pushes, rejected pushes (lost races, retried), rounds
//!   of backoff, and the time until the branch holds every environment's final status.
//! - `agents`: the same question with whole agents: N real `stele agent` processes (default 20,
//!   `STELE_BENCH_AGENTS`) on the local provider, each owning `STELE_BENCH_ENVS` environments, polling
//!   and pushing status through `git daemon` (see agents.rs).
//!
//! - `agents` also runs with signed status on per-agent refs (issue 13; `STELE_BENCH_STATUS_MODE`).
//! - `signing`: what signing costs per status write (render, decode, a whole local publish), unsigned
//!   versus signed (see signing.rs).
//!
//! - `observations`: what a reader's `verify_observation`, the freshness rule (F3) and a timestamp
//!   renewal step cost (see observations.rs).
//!
//! Run: `cargo bench --profile dev --bench status` (all parts), or `-- rollouts` / `-- writers` /
//! `-- agents` / `-- signing` / `-- observations`.

mod agents;
#[path = "../support/cli.rs"]
mod cli;
mod observations;
mod rollouts;
mod signing;
mod writers;

fn main() {
    let parts: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let wants = |p: &str| parts.is_empty() || parts.iter().any(|a| a == p);
    if wants("rollouts") {
        rollouts::run();
    }
    if wants("writers") {
        writers::run();
    }
    if wants("agents") {
        agents::run();
    }
    if wants("signing") {
        signing::run();
    }
    if wants("observations") {
        observations::run();
    }
}
