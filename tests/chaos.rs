//! Chaos on the local provider: rounds of releases (rolling, blue/green or canary) and signed
//! rollbacks, each with at most one fault at a random delay — the agent, one instance or the group's
//! balancer SIGKILLed — while a client requests through the balancer all along and a sampler reads
//! /proc. After each round the target must be Healthy with exactly `capacity` processes of its version
//! (none leaked or duplicated); in every sample the serving processes (live, not stopping) must have
//! stayed within the strategy's surge bound and never below `capacity` (`max_unavailable` is 0 in
//! every spec used), one fewer only after this round's instance kill; failed requests must stay within
//! the round's budget (see `Fault::failure_budget`).
//!
//! Seeded: `STELE_CHAOS_SEED` replays a run (the seed is printed), `STELE_CHAOS_ROUNDS` sets its length
//! (default 4, a few tens of seconds). `scripts/soak.sh N` runs N rounds.

mod agent_world;
mod common;

use agent_world::*;
use common::{path_str, scrubbed, OK, STELE};
use serde_json::Value;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CAPACITY: usize = 2;
/// Live, not-stopping instances a rolling update may run: capacity + max_surge (1, rolling.json).
const ROLLING_BOUND: usize = CAPACITY + 1;
/// A blue/green switch, or a canary at 100%, runs the whole new group beside the old one.
const TWO_GROUPS_BOUND: usize = 2 * CAPACITY;

/// splitmix64: small, seedable, good enough to pick actions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Strategy {
    Rolling,
    BlueGreen,
    Canary,
}

impl Strategy {
    /// Signs the spec that makes this the strategy of the next rollout (short grace and pauses).
    fn set(self, w: &World) {
        match self {
            Strategy::Rolling => w.set_spec("rolling.json", |_| {}),
            Strategy::BlueGreen => w.set_spec("blue-green.json", |s| s["strategy"]["grace_seconds"] = 2.into()),
            Strategy::Canary => w.set_spec("canary.json", |s| s["strategy"]["steps"][0]["pause_seconds"] = 1.into()),
        }
    }

    /// The most serving (live, not stopping) instances a rollout may run.
    fn surge_bound(self) -> usize {
        match self {
            Strategy::Rolling => ROLLING_BOUND,
            Strategy::BlueGreen | Strategy::Canary => TWO_GROUPS_BOUND,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Action {
    Release(Strategy),
    Rollback,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    None,
    Agent,
    Instance,
    Balancer,
}

impl Fault {
    /// Failed requests a round with this fault may cost, at the client's 20 requests/s.
    /// - none, agent: 0 — instances and the balancer are separate processes and keep serving; releases
    ///   and rollbacks drain before stopping.
    /// - instance: 10 — requests in flight on the killed process fail, and the balancer routes to it
    ///   until its next health probe marks it down (well under 0.5 s).
    /// - balancer: 40 — nothing listens until the agent's watch restarts it (≤ 1 s target, measured in
    ///   BENCHMARKS.md; twice that for a loaded machine, as in agent_faults.rs).
    fn failure_budget(self) -> usize {
        match self {
            Fault::None | Fault::Agent => 0,
            Fault::Instance => 10,
            Fault::Balancer => 40,
        }
    }
}

fn signal(pid: i32, signal: i32) -> bool {
    // SAFETY: kill has no memory-safety preconditions; the pid was read from /proc or a record just before.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// Ids of instance records marked `stopping` (draining or being stopped in the background).
fn stopping_ids(state: &Path) -> Vec<String> {
    let dir = state.join("local/staging/instances");
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("instance.json")).ok())
        .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
        .filter(|r| !r["stopping"].is_null())
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect()
}

/// Live instances not marked stopping. Records are read before and after /proc, so an instance marked
/// stopping (or stopped and removed) while /proc is read is still counted as stopping.
fn serving_count(state: &Path) -> (usize, Vec<String>) {
    let before = stopping_ids(state);
    let seen = std::cell::RefCell::new(Vec::new());
    live_instances_with(state, |vars| {
        let id = vars.iter().find_map(|v| v.strip_prefix("STELE_INSTANCE_ID=")).unwrap_or_default().to_owned();
        if !before.contains(&id) {
            seen.borrow_mut().push(id);
        }
        true
    });
    let after = stopping_ids(state);
    let serving: Vec<String> = seen.into_inner().into_iter().filter(|id| !after.contains(id)).collect();
    (serving.len(), serving)
}

fn spawn_agent(w: &mut World) {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(w.sb.path("agent.log")).expect("agent log");
    let child = scrubbed(STELE, w.sb.root(), &w.ledger.dir)
        .args(["agent", "--config", &path_str(&w.config)])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the agent");
    w.agent = Some(child);
}

fn wait_until(what: &str, w: &World, limit: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}; agent log:\n{}", w.agent_log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn chaos_rounds_of_releases_rollbacks_and_kills_keep_bounds_and_leak_nothing() {
    let seed = std::env::var("STELE_CHAOS_SEED")
        .ok()
        .map(|s| s.parse::<u64>().expect("STELE_CHAOS_SEED: a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
    let rounds: usize =
        std::env::var("STELE_CHAOS_ROUNDS").ok().map(|s| s.parse().expect("STELE_CHAOS_ROUNDS: a number")).unwrap_or(4);
    eprintln!("chaos: seed {seed}, {rounds} rounds (replay with STELE_CHAOS_SEED={seed})");
    let mut rng = Rng(seed);

    let mut w = World::new();
    let mut strategy = Strategy::Rolling;
    strategy.set(&w);
    let v1 = w.image("1.0.0", false);
    w.release("1.0.0", &v1, &[]).expect(OK);
    w.agent_once().expect(OK);
    spawn_agent(&mut w);

    // Sampler: serving (not stopping) instances against the round's surge bound and availability floor.
    let bound = Arc::new(AtomicUsize::new(ROLLING_BOUND));
    let floor = Arc::new(AtomicUsize::new(CAPACITY));
    let breaches = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let samples = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (bound, floor, breaches, samples, stop, state) =
            (bound.clone(), floor.clone(), breaches.clone(), samples.clone(), stop.clone(), w.state.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let (n, live) = serving_count(&state);
                samples.fetch_add(1, Ordering::SeqCst);
                if n > bound.load(Ordering::SeqCst) {
                    breaches.lock().expect("lock").push(format!("surge: {n} serving: {live:?}"));
                }
                if n < floor.load(Ordering::SeqCst) {
                    breaches.lock().expect("lock").push(format!("availability: {n} serving: {live:?}"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let client = Client::every(w.addr, Duration::from_millis(50));
    // Released versions, oldest first; `target` is what the ledger points at now.
    let mut released: Vec<String> = vec!["1.0.0".into()];
    let mut target: String;
    let mut last_release_commit: Option<String> = None;
    let mut next_version = 2;
    let (mut faults, mut budget_total) = ([0usize; 4], 0usize);
    let mut strategies = [0usize; 3];
    let started = Instant::now();

    for round in 0..rounds {
        let action = match rng.below(4) {
            3 if last_release_commit.is_some() => Action::Rollback,
            0 | 3 => Action::Release(Strategy::Rolling),
            1 => Action::Release(Strategy::BlueGreen),
            _ => Action::Release(Strategy::Canary),
        };
        let fault = [Fault::None, Fault::Agent, Fault::Instance, Fault::Balancer][rng.below(4) as usize];
        let delay = Duration::from_millis(rng.below(3000));
        eprintln!("round {round}: {action:?}, {fault:?} after {delay:?}");
        let failed_before = client.failed_at().len();

        // The strategy applies to this round's rollout; switch it first (a signed spec change). A
        // rollback rolls out with whatever strategy is in force.
        if let Action::Release(want) = action {
            if want != strategy {
                want.set(&w);
                strategy = want;
            }
        }
        strategies[strategy as usize] += 1;
        bound.store(strategy.surge_bound(), Ordering::SeqCst);
        floor.store(CAPACITY, Ordering::SeqCst);

        match action {
            Action::Release(_) => {
                let version = format!("{next_version}.0.0");
                next_version += 1;
                let tar = w.image(&version, false);
                w.release(&version, &tar, &[]).expect(OK);
                last_release_commit = Some(w.ledger.git(["rev-parse", "HEAD"]).trim().to_owned());
                released.push(version.clone());
                target = version;
            }
            Action::Rollback => {
                let commit = last_release_commit.take().expect("a release to revert");
                let signing = format!("user.signingkey={}", w.alice.secret());
                w.ledger.git(["-c", "gpg.format=ssh", "-c", &signing, "revert", "-S", "--no-edit", &commit]);
                released.pop();
                target = released.last().expect("an earlier release").clone();
            }
        }

        std::thread::sleep(delay);
        match fault {
            Fault::None => {}
            Fault::Agent => {
                w.kill_agent();
                std::thread::sleep(Duration::from_millis(rng.below(500)));
                spawn_agent(&mut w);
            }
            Fault::Instance => {
                floor.store(CAPACITY - 1, Ordering::SeqCst);
                let live = w.live_instances();
                if !live.is_empty() {
                    let (pid, _) = live[rng.below(live.len() as u64) as usize].clone();
                    signal(pid, libc::SIGKILL);
                }
            }
            Fault::Balancer => {
                signal(w.balancer_pid("staging"), libc::SIGKILL);
            }
        }
        faults[fault as usize] += 1;
        budget_total += fault.failure_budget();

        let s = w.wait_status(&format!("round {round}: {target} Healthy"), |s| {
            s["phase"] == "Healthy" && s["target"]["version"] == target.as_str()
        });
        wait_until(
            &format!("round {round}: exactly {CAPACITY} processes of {target}"),
            &w,
            Duration::from_secs(30),
            || {
                let live = w.live_instances();
                live.len() == CAPACITY && live.iter().all(|(_, v)| *v == target)
            },
        );
        wait_until(&format!("round {round}: the balancer serving {target}"), &w, Duration::from_secs(10), || {
            w.get("/version").is_ok_and(|b| b.starts_with(&format!("{target} ")))
        });
        // Steady for a moment: still exactly capacity, nothing relaunched behind our back.
        std::thread::sleep(Duration::from_millis(300));
        let live = w.live_instances();
        assert_eq!(live.len(), CAPACITY, "round {round} (seed {seed}): leaked or missing instances {live:?}\n{s:#}");
        assert!(live.iter().all(|(_, v)| *v == target), "round {round} (seed {seed}): {live:?}");

        let failed = client.failed_at().len() - failed_before;
        assert!(
            failed <= fault.failure_budget(),
            "round {round} (seed {seed}): {failed} requests failed, budget {} for {fault:?}",
            fault.failure_budget()
        );
        let b = breaches.lock().expect("lock").clone();
        assert!(b.is_empty(), "round {round} (seed {seed}): bounds breached: {b:?}");
    }

    stop.store(true, Ordering::SeqCst);
    sampler.join().expect("sampler");
    let (requests, failures, _) = client.finish();
    eprintln!(
        "chaos totals: seed {seed}, {rounds} rounds in {:.0?}; rollouts rolling/blue-green/canary {strategies:?}; \
         faults none/agent/instance/balancer {faults:?}; {} of {requests} requests failed (budget {budget_total}); \
         {} samples, 0 surge or availability breaches, 0 leaks",
        started.elapsed(),
        failures.len(),
        samples.load(Ordering::SeqCst)
    );
    assert!(requests > 20 * rounds, "the client ran throughout ({requests} requests)");
}
