//! Many agents, one ledger, as whole processes: N real `stele agent` processes (default 20,
//! `STELE_BENCH_AGENTS`), each owning `STELE_BENCH_ENVS` environments (default 2, one instance each on
//! the local provider), all polling one ledger served by `git daemon` on loopback. Phase 1 releases v1
//! to every environment; the agents are then stopped and started again (adopting their instances), and
//! phase 2 releases v2 to every environment in one push.
//!
//! Two modes (`STELE_BENCH_STATUS_MODE=branch|refs`, default both, one after the other):
//! - `branch` (before issue 13): agents without a key, all pushing unsigned status to the shared
//!   `stele/status` branch;
//! - `refs` (issue 13): each agent has its own key (`key_file`, declared with `stele policy
//!   set-agent`) and pushes signed status to its own ref `refs/stele/status/<agent-id>`.
//!
//! Printed per phase, from the agents' own `status publisher stopped` log lines: statuses submitted,
//! commits, pushes, lost races, retried rounds, and updates dropped; from the remote: the time from the
//! push until the branch says Healthy at the new generation for every environment ("consistent
//! after"); from the agents' logs: when each agent itself saw each environment Healthy, which shows
//! whether convergence waited on the status branch.

use crate::cli::daemon;
use std::collections::BTreeMap;
use std::io::{BufRead, Seek};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use stele::status::{decode, history, open_repository, read_all, EnvStatus, Phase};

use crate::cli::{image, run as run_cmd, STELE};

const BRANCH: &str = "stele/status";
const REFS: &str = "refs/stele/status/";

/// Where the agents write status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Unsigned, one shared branch (before issue 13).
    Branch,
    /// Signed, one ref per agent (issue 13).
    Refs,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Branch => "shared branch",
            Mode::Refs => "per-agent refs",
        }
    }

    /// Every environment's latest status on the remote.
    fn latest(self, repo: &git2::Repository) -> Vec<EnvStatus> {
        match self {
            Mode::Branch => read_all(repo, BRANCH).expect("read the status branch").map(|(_, s)| s).unwrap_or_default(),
            Mode::Refs => {
                let mut all = Vec::new();
                for (_, tip) in status_refs(repo) {
                    let tree = repo.find_commit(tip).and_then(|c| c.tree()).expect("tip tree");
                    let Some(dir) = tree.get_name("status") else { continue };
                    let dir = repo.find_tree(dir.id()).expect("status dir");
                    for entry in dir.iter() {
                        let blob = repo.find_blob(entry.id()).expect("blob");
                        all.push(decode(blob.content()).expect("a status file").status);
                    }
                }
                all
            }
        }
    }

    /// Whether `env` was ever Healthy at `generation` on the remote.
    fn ever_healthy(self, repo: &git2::Repository, env: &str, generation: u64) -> bool {
        let healthy = |s: &EnvStatus| s.phase == Phase::Healthy && s.target_generation == generation;
        match self {
            Mode::Branch => {
                history(repo, BRANCH, &env.parse().expect("env")).expect("history").iter().any(|(_, s)| healthy(s))
            }
            Mode::Refs => status_refs(repo).into_iter().any(|(_, tip)| {
                let mut walk = repo.revwalk().expect("revwalk");
                walk.push(tip).expect("push");
                walk.map(|id| repo.find_commit(id.expect("id")).expect("commit")).any(|c| {
                    let tree = c.tree().expect("tree");
                    let Ok(entry) = tree.get_path(Path::new(&format!("status/{env}.json"))) else { return false };
                    let blob = repo.find_blob(entry.id()).expect("blob");
                    let file = decode(blob.content()).expect("a status file");
                    assert!(file.signed.is_some(), "per-agent refs hold signed files");
                    healthy(&file.status)
                })
            }),
        }
    }

    /// Commits the agents wrote, on every status ref of the remote.
    fn commits(self, remote: &Path) -> u64 {
        let count = |rev: &str| {
            let out = Command::new("git").args(["rev-list", "--count", rev]).current_dir(remote).output().expect("git");
            String::from_utf8_lossy(&out.stdout).trim().parse::<u64>().unwrap_or(0)
        };
        match self {
            Mode::Branch => count(BRANCH),
            Mode::Refs => {
                let repo = open_repository(remote).expect("open remote");
                status_refs(&repo).iter().map(|(name, _)| count(name)).sum()
            }
        }
    }
}

/// Every ref under `refs/stele/status/` and its tip.
fn status_refs(repo: &git2::Repository) -> Vec<(String, git2::Oid)> {
    let refs = repo.references_glob(&format!("{REFS}*")).expect("list refs");
    refs.map(|r| {
        let r = r.expect("ref");
        (r.name().expect("utf-8").to_owned(), r.target().expect("direct"))
    })
    .collect()
}

fn env_name(agent: usize, e: usize) -> String {
    format!("region{agent:02}-env{e}")
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Agent {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    envs: Vec<String>,
}

impl Agent {
    fn start(&mut self, work: &Path) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("agent log");
        let child = Command::new(STELE)
            .args(["agent", "--log-format", "json", "--config"])
            .arg(&self.config)
            .current_dir(work)
            .env("STELE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start an agent");
        self.child = Some(child);
    }

    /// SIGTERM, then waits: the agent flushes its status and logs its publisher's counts.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    fn log_lines_from(&self, offset: u64) -> Vec<serde_json::Value> {
        let mut file = std::fs::File::open(&self.log).expect("open log");
        file.seek(std::io::SeekFrom::Start(offset)).expect("seek");
        std::io::BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect()
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sums of the publishers' counts, from each agent's last `status publisher stopped` line.
#[derive(Default, Debug)]
struct Counts {
    submitted: u64,
    commits: u64,
    pushes: u64,
    lost_races: u64,
    retried_rounds: u64,
    dropped: u64,
}

fn counts(agents: &[Agent], offsets: &[u64]) -> Counts {
    let mut c = Counts::default();
    for (a, offset) in agents.iter().zip(offsets) {
        let line = a
            .log_lines_from(*offset)
            .into_iter()
            .rev()
            .find(|v| v["fields"]["message"] == "status publisher stopped")
            .unwrap_or_else(|| panic!("{}: no publisher counts logged", a.log.display()));
        let f = |k: &str| line["fields"][k].as_u64().unwrap_or_else(|| panic!("{k} in {line}"));
        c.submitted += f("submitted");
        c.commits += f("commits");
        c.pushes += f("pushes");
        c.lost_races += f("lost_races");
        c.retried_rounds += f("retried_rounds");
        c.dropped += f("dropped");
    }
    c
}

/// Waits until the remote's branch says Healthy at `generation` for all `envs`; returns when each
/// environment first showed it there, and when each agent's own log first said so (both measured
/// from `t0` by this process's clock, read every 20 ms).
fn wait_consistent(
    mode: Mode,
    remote: &Path,
    agents: &[Agent],
    offsets: &[u64],
    generation: u64,
    t0: Instant,
) -> (BTreeMap<String, Duration>, BTreeMap<String, Duration>) {
    let repo = open_repository(remote).expect("open remote");
    let all: usize = agents.iter().map(|a| a.envs.len()).sum();
    let (mut on_remote, mut in_agent) = (BTreeMap::new(), BTreeMap::new());
    let want = format!("running {generation}.0.0");
    loop {
        let now = t0.elapsed();
        for s in mode.latest(&repo) {
            if s.phase == Phase::Healthy && s.target_generation == generation {
                on_remote.entry(s.env.to_string()).or_insert(now);
            }
        }
        for (a, offset) in agents.iter().zip(offsets) {
            for line in a.log_lines_from(*offset) {
                let fields = &line["fields"];
                if fields["phase"] == "Healthy" && fields["message"].as_str().is_some_and(|m| m.starts_with(&want)) {
                    if let Some(env) = fields["env"].as_str() {
                        in_agent.entry(env.to_owned()).or_insert(now);
                    }
                }
            }
        }
        if on_remote.len() == all {
            return (on_remote, in_agent);
        }
        assert!(
            now < Duration::from_secs(300),
            "not consistent after 300 s: {} of {all} on the remote",
            on_remote.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spread(times: &BTreeMap<String, Duration>) -> String {
    let mut v: Vec<f64> = times.values().map(|d| d.as_secs_f64()).collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return "-".into();
    }
    format!("median {:.2} s, last {:.2} s", v[v.len() / 2], v[v.len() - 1])
}

pub fn run() {
    let n = env_usize("STELE_BENCH_AGENTS", 20);
    let per = env_usize("STELE_BENCH_ENVS", 2);
    let modes = match std::env::var("STELE_BENCH_STATUS_MODE").as_deref() {
        Ok("branch") => vec![Mode::Branch],
        Ok("refs") => vec![Mode::Refs],
        _ => vec![Mode::Branch, Mode::Refs],
    };
    for mode in modes {
        run_mode(mode, n, per);
    }
}

fn run_mode(mode: Mode, n: usize, per: usize) {
    println!(
        "\n{n} real agents, {per} environments each (1 instance, local provider), one git daemon remote; \
         a release touches every environment in one push; status: {}",
        mode.name()
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path();
    run_cmd(work, STELE, &["key", "generate", "--out", "k.key"]);
    let names: Vec<String> = (0..n).flat_map(|a| (0..per).map(move |e| env_name(a, e))).collect();
    let mut init = vec!["init", "ledger", "--key", "k.key"];
    for name in &names {
        init.extend(["--env", name]);
    }
    run_cmd(work, STELE, &init);
    let ledger = work.join("ledger");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/environments");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(examples.join("rolling.json")).expect("read example")).expect("JSON");
    spec["groups"][0]["capacity"] = 1.into();
    spec["strategy"]["min_ready_seconds"] = 1.into();
    std::fs::write(work.join("spec.json"), spec.to_string()).expect("write spec");
    for name in &names {
        run_cmd(&ledger, STELE, &["env", "set", "--env", name, "--spec", "../spec.json", "--key", "../k.key"]);
    }
    let root = run_cmd(work, STELE, &["key", "id", "k.key.pub"]).split_whitespace().next().expect("id").to_owned();
    if mode == Mode::Refs {
        // Each agent its own key, declared for its own environments.
        for a in 0..n {
            let key = format!("agent{a:02}.key");
            run_cmd(work, STELE, &["key", "generate", "--out", &key]);
            let envs: Vec<String> = (0..per).map(|e| env_name(a, e)).collect();
            let pubkey = format!("../{key}.pub");
            let envs = envs.join(",");
            run_cmd(&ledger, STELE, &["policy", "set-agent", "--pubkey", &pubkey, "--env", &envs, "--key", "../k.key"]);
        }
    }
    run_cmd(work, "git", &["clone", "-q", "--bare", "ledger", "remote.git"]);
    let d = daemon(work);
    let url = format!("git://127.0.0.1:{}/remote.git", d.1);
    let remote = work.join("remote.git");
    let release_all = |version: &str| {
        let tar = image(work, version);
        let tar = tar.to_str().expect("utf-8");
        for name in &names {
            run_cmd(
                &ledger,
                STELE,
                &["release", "--env", name, "--version", version, "--image", tar, "--key", "../k.key"],
            );
        }
    };
    let mut agents: Vec<Agent> = (0..n)
        .map(|a| {
            let envs: Vec<String> = (0..per).map(|e| env_name(a, e)).collect();
            let config = work.join(format!("agent{a:02}.toml"));
            let key = if mode == Mode::Refs { format!("key_file = \"agent{a:02}.key\"\n") } else { String::new() };
            std::fs::write(
                &config,
                format!(
                    "repo = \"{url}\"\nstate_dir = \"state{a:02}\"\ntrust_root = [\"{root}\"]\ninterval_seconds = 1\n\
                     agent_id = \"agent-{a:02}\"\nenvironments = {envs:?}\n{key}"
                ),
            )
            .expect("write config");
            Agent { child: None, config, log: work.join(format!("agent{a:02}.log")), envs }
        })
        .collect();

    println!(
        "{:>6} {:>9} {:>7} {:>7} {:>10} {:>8} {:>7} {:>18} {:>30} {:>30}",
        "phase",
        "submitted",
        "commits",
        "pushes",
        "lost races",
        "retried",
        "dropped",
        "consistent after",
        "agents saw Healthy",
        "remote showed Healthy"
    );
    // Commits on the branch when the agents were last started: their publishers count from there.
    let mut commits_before = mode.commits(&remote);
    let mut offsets: Vec<u64> = agents.iter().map(Agent::log_len).collect();
    for a in &mut agents {
        a.start(work);
    }
    for (phase, version) in [(1u64, "1.0.0"), (2, "2.0.0")] {
        release_all(version);
        let t0 = Instant::now();
        run_cmd(&ledger, "git", &["push", "-q", remote.to_str().expect("utf-8"), "HEAD:main"]);
        let (on_remote, in_agent) = wait_consistent(mode, &remote, &agents, &offsets, phase, t0);
        let consistent = on_remote.values().max().copied().unwrap_or_default();
        for a in &mut agents {
            a.stop();
        }
        let c = counts(&agents, &offsets);
        let repo = open_repository(&remote).expect("open");
        let lost = names.iter().filter(|e| !mode.ever_healthy(&repo, e, phase)).count();
        assert_eq!(lost, 0, "every environment's Healthy status reached the branch");
        assert_eq!(c.dropped, 0, "no status dropped");
        assert_eq!(
            c.commits,
            mode.commits(&remote) - commits_before,
            "every commit on the branch is one the agents counted"
        );
        println!(
            "{:>6} {:>9} {:>7} {:>7} {:>10} {:>8} {:>7} {:>16.2} s {:>30} {:>30}",
            phase,
            c.submitted,
            c.commits,
            c.pushes,
            c.lost_races,
            c.retried_rounds,
            c.dropped,
            consistent.as_secs_f64(),
            spread(&in_agent),
            spread(&on_remote)
        );
        if phase == 1 {
            // Start again: phase 2's counts are those of fresh publishers (their first statuses after
            // the restart included).
            commits_before = mode.commits(&remote);
            offsets = agents.iter().map(Agent::log_len).collect();
            for a in &mut agents {
                a.start(work);
            }
            wait_quiet(mode, &remote, Duration::from_secs(3));
        }
    }
    for a in &mut agents {
        a.stop();
    }
    for a in 0..n {
        let mut p = stele::provider::local::LocalProvider::new(
            &work.join(format!("state{a:02}")),
            stele::provider::local::LocalSettings::default(),
            PathBuf::from(STELE),
        )
        .expect("provider");
        for e in 0..per {
            let _ = p.destroy(&env_name(a, e).parse().expect("env"));
        }
    }
}

/// Waits until the status refs have not moved for `quiet`.
fn wait_quiet(mode: Mode, remote: &Path, quiet: Duration) {
    let mut last = (mode.commits(remote), Instant::now());
    while last.1.elapsed() < quiet {
        std::thread::sleep(Duration::from_millis(100));
        let now = mode.commits(remote);
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
}
