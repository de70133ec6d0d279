//! Many agents, one ledger: N status writers sharing one `git daemon` remote on loopback (see
//! main.rs). Each simulated agent is a thread with its own writer and bare cache, as separate agent
//! processes would have. Two ways of publishing are compared:
//!
//! - `publisher` (what the agent does now): a `StatusPublisher` per agent; `submit` returns at once,
//!   a thread writes whatever is queued as one chain of commits in one push and retries failed
//!   rounds after a bounded, jittered backoff.
//! - `inline` (what the agent did before issue 11): `StatusWriter::publish` of one status at a time,
//!   inside the agent's pass, giving up after 5 lost races; a status given up is missing from the
//!   branch until the agent's next change of that environment.

use crate::cli::daemon;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use stele::status::{
    history, open_repository, read_all, EnvStatus, InstanceStatus, Phase, StatusPublisher, StatusWriter, TargetStatus,
    FORMAT,
};

const BRANCH: &str = "stele/status";

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").args(args).current_dir(dir).output().expect("run git");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status(env: &str, agent: usize, generation: u64, phase: Phase) -> EnvStatus {
    let digest = ledger_format::Blake3Digest([generation as u8; 32]);
    let target = TargetStatus {
        version: format!("{generation}.0.0").parse().expect("version"),
        seq: generation,
        blake3: digest,
    };
    let healthy = phase == Phase::Healthy;
    EnvStatus {
        format: FORMAT,
        env: env.parse().expect("env"),
        ledger: "acme".parse().expect("ledger id"),
        ledger_commit: format!("{generation:040x}"),
        target_generation: generation,
        observed_generation: if healthy { generation } else { generation - 1 },
        target: Some(target.clone()),
        running: Some(target),
        phase,
        message: if healthy { String::new() } else { "web: 1 new instance(s) not ready yet".into() },
        instances: vec![InstanceStatus {
            id: format!("{env}-web-{generation}"),
            group: "web".parse().expect("group"),
            generation,
            blake3: digest,
            health: if healthy { "healthy".into() } else { "starting".into() },
            since: "2026-03-01T10:00:00Z".parse().expect("time"),
            drift: None,
        }],
        last_error: None,
        agent: format!("agent-{agent}"),
        updated_at: "2026-03-01T10:00:00Z".parse().expect("time"),
        suspended: None,
    }
}

fn env_name(agent: usize, e: usize) -> String {
    format!("region{agent:02}-env{e}")
}

/// What one simulated agent did.
#[derive(Default)]
struct Figures {
    pushes: u64,
    lost_races: u64,
    backoff_rounds: u64,
    given_up: u64,
    /// The longest time the agent's pass waited on status publishing.
    longest_wait: Duration,
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

pub fn run() {
    let agents = env_usize("STELE_BENCH_WRITERS", 20);
    let envs = env_usize("STELE_BENCH_ENVS", 2);
    let rollout = Duration::from_millis(env_usize("STELE_BENCH_ROLLOUT_MS", 500) as u64);
    println!(
        "\n{agents} agents, {envs} environments each, one git daemon remote; a release touches every environment: \
         each agent reports Progressing, then Healthy {} ms later",
        rollout.as_millis()
    );
    println!(
        "{:>10} {:>7} {:>11} {:>9} {:>14} {:>10} {:>14} {:>16} {:>12}",
        "mode",
        "pushes",
        "lost races",
        "backoffs",
        "updates lost",
        "commits",
        "longest wait",
        "consistent after",
        "one publish"
    );
    for inline in [true, false] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path();
        git(base, &["init", "-q", "--bare", "-b", "main", "remote.git"]);
        git(base, &["init", "-q", "-b", "main", "seed"]);
        std::fs::write(base.join("seed/ledger.txt"), "ledger\n").expect("write");
        git(&base.join("seed"), &["add", "-A"]);
        git(&base.join("seed"), &["-c", "user.name=b", "-c", "user.email=b@x", "commit", "-q", "-m", "ledger"]);
        git(&base.join("seed"), &["push", "-q", "../remote.git", "main"]);
        let d = daemon(base);
        let url = format!("git://127.0.0.1:{}/remote.git", d.1);
        let setup = Instant::now();
        for agent in 0..agents {
            let mut w = StatusWriter::open(&url, BRANCH, &base.join(format!("a{agent}.git"))).expect("open");
            let all: Vec<EnvStatus> =
                (0..envs).map(|e| status(&env_name(agent, e), agent, 1, Phase::Healthy)).collect();
            w.publish_all(&all).expect("generation 1");
        }
        let uncontended = setup.elapsed() / agents as u32;
        let start = Arc::new(Barrier::new(agents + 1));
        let threads: Vec<_> = (0..agents)
            .map(|agent| {
                let (start, url, cache) = (Arc::clone(&start), url.clone(), base.join(format!("a{agent}.git")));
                std::thread::spawn(move || simulate(agent, envs, rollout, inline, &url, &cache, &start))
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        let repo = open_repository(&base.join("remote.git")).expect("open");
        let consistent = loop {
            let (_, all) = read_all(&repo, BRANCH).expect("read").expect("branch");
            if all.len() == agents * envs && all.iter().all(|s| s.phase == Phase::Healthy && s.target_generation == 2) {
                break Some(t0.elapsed());
            }
            if t0.elapsed() > Duration::from_secs(120) || (inline && threads.iter().all(|t| t.is_finished())) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let figures: Vec<Figures> = threads.into_iter().map(|t| t.join().expect("agent thread")).collect();
        let mut lost_history = 0;
        for agent in 0..agents {
            for e in 0..envs {
                let seen = history(&repo, BRANCH, &env_name(agent, e).parse().expect("env")).expect("history");
                lost_history += 3usize.saturating_sub(seen.len());
            }
        }
        let commits =
            git(&base.join("remote.git"), &["rev-list", "--count", BRANCH]).trim().parse::<u64>().expect("count");
        let sum = |f: fn(&Figures) -> u64| figures.iter().map(f).sum::<u64>();
        println!(
            "{:>10} {:>7} {:>11} {:>9} {:>14} {:>10} {:>12.0}ms {:>16} {:>10.0}ms",
            if inline { "inline" } else { "publisher" },
            sum(|f| f.pushes),
            sum(|f| f.lost_races),
            sum(|f| f.backoff_rounds),
            format!("{} ({} given up)", lost_history, sum(|f| f.given_up)),
            commits - (agents * envs) as u64,
            figures.iter().map(|f| f.longest_wait).max().unwrap_or_default().as_secs_f64() * 1000.0,
            consistent.map_or("never".into(), |c| format!("{:.2} s", c.as_secs_f64())),
            uncontended.as_secs_f64() * 1000.0,
        );
    }
}

/// One agent after the release: Progressing for each of its environments, then Healthy.
fn simulate(
    agent: usize,
    envs: usize,
    rollout: Duration,
    inline: bool,
    url: &str,
    cache: &Path,
    start: &Barrier,
) -> Figures {
    let mut writer = StatusWriter::open(url, BRANCH, cache).expect("open");
    let mut f = Figures::default();
    let phases = [Phase::Progressing, Phase::Healthy];
    if inline {
        start.wait();
        let t0 = Instant::now();
        for (n, phase) in phases.into_iter().enumerate() {
            std::thread::sleep((rollout * n as u32).saturating_sub(t0.elapsed()));
            for e in 0..envs {
                let began = Instant::now();
                if writer.publish(&status(&env_name(agent, e), agent, 2, phase)).is_err() {
                    f.given_up += 1;
                }
                f.longest_wait = f.longest_wait.max(began.elapsed());
            }
        }
        let s = writer.stats();
        (f.pushes, f.lost_races) = (s.offers, s.lost_races);
        return f;
    }
    let publisher = StatusPublisher::start(writer);
    start.wait();
    let t0 = Instant::now();
    for (n, phase) in phases.into_iter().enumerate() {
        std::thread::sleep((rollout * n as u32).saturating_sub(t0.elapsed()));
        for e in 0..envs {
            let began = Instant::now();
            publisher.submit(status(&env_name(agent, e), agent, 2, phase));
            f.longest_wait = f.longest_wait.max(began.elapsed());
        }
    }
    assert!(publisher.flush(Duration::from_secs(120)), "agent {agent} flushed");
    let s = publisher.stats();
    (f.pushes, f.lost_races, f.backoff_rounds, f.given_up) =
        (s.writer.offers, s.writer.lost_races, s.retries, s.dropped);
    f
}
