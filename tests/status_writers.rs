//! Many agents, one ledger (issue 11): status publishers sharing one status branch on a real `git
//! daemon` remote on loopback, and an agent whose convergence never waits on its pushes.
//!
//! The writers under test are [`StatusPublisher`]s (the agent's own publishing component: a
//! `StatusWriter` on a thread with bounded, jittered retries), one per simulated agent, each on a
//! thread of its own with its own cache, as separate agent processes would have. The 20-writer
//! figures come from `cargo bench --bench status -- writers`; this is the short version.

mod common;

use common::*;
use ledger_format::Blake3Digest;
use std::sync::{Arc, Barrier, Once};
use std::time::{Duration, Instant};
use stele::status::{
    history, open_repository, read_all, EnvStatus, InstanceStatus, Phase, StatusPublisher, StatusWriter, TargetStatus,
    FORMAT,
};

const BRANCH: &str = "stele/status";

/// Points libgit2 at an empty configuration, so a developer's `~/.gitconfig` cannot change what
/// these tests see. Called before any git2 use.
fn hermetic_libgit2() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let empty = std::env::temp_dir().join(format!("stele-status-writers-no-config-{}", std::process::id()));
        for level in [git2::ConfigLevel::System, git2::ConfigLevel::XDG, git2::ConfigLevel::Global] {
            // SAFETY: runs once, before this test binary opens any repository (every test calls this
            // first, and `Once` makes the others wait until it has finished).
            unsafe { git2::opts::set_search_path(level, &empty) }.expect("set libgit2's config search path");
        }
    });
}

/// A bare repository `remote.git` with a `main` branch, served by `git daemon`.
fn served_remote(sb: &Sandbox) -> (GitDaemon, String) {
    sb.git(sb.root(), ["init", "-q", "--bare", "-b", "main", "remote.git"]);
    let seed = sb.path("seed");
    sb.git(sb.root(), ["init", "-q", "-b", "main", "seed"]);
    std::fs::write(seed.join("ledger.txt"), "the ledger branch\n").expect("write a file");
    sb.git(&seed, ["add", "-A"]);
    sb.git(&seed, ["commit", "-q", "-m", "ledger"]);
    sb.git(&seed, ["push", "-q", &path_str(&sb.path("remote.git")), "main"]);
    let daemon = GitDaemon::serve(sb, sb.root());
    let url = daemon.url("remote.git");
    (daemon, url)
}

/// What an agent reports of `env` at `generation`.
fn status(env: &str, agent: usize, generation: u64, phase: Phase) -> EnvStatus {
    let digest = Blake3Digest([generation as u8; 32]);
    let target =
        TargetStatus { version: format!("{generation}.0.0").parse().unwrap(), seq: generation, blake3: digest };
    let healthy = phase == Phase::Healthy;
    EnvStatus {
        format: FORMAT,
        env: env.parse().unwrap(),
        ledger: "acme".parse().unwrap(),
        ledger_commit: format!("{generation:040x}"),
        target_generation: generation,
        observed_generation: if healthy { generation } else { generation - 1 },
        target: Some(target.clone()),
        running: Some(target),
        phase,
        message: if healthy { String::new() } else { "web: 1 new instance(s) not ready yet".into() },
        instances: vec![InstanceStatus {
            id: format!("{env}-web-{generation}"),
            group: "web".parse().unwrap(),
            generation,
            blake3: digest,
            health: if healthy { "healthy".into() } else { "starting".into() },
            since: "2026-03-01T10:00:00Z".parse().unwrap(),
            drift: None,
        }],
        last_error: None,
        agent: format!("agent-{agent}"),
        updated_at: "2026-03-01T10:00:00Z".parse().unwrap(),
        suspended: None,
    }
}

#[test]
fn six_agents_sharing_one_remote_lose_no_status_update() {
    hermetic_libgit2();
    const AGENTS: usize = 6;
    const ENVS_EACH: usize = 2;
    let sb = Sandbox::new();
    let (_daemon, url) = served_remote(&sb);
    let env_name = |agent: usize, e: usize| format!("region{agent}-env{e}");
    // Before the release: every environment Healthy at generation 1, written by its agent.
    for agent in 0..AGENTS {
        let mut writer =
            StatusWriter::open(&url, BRANCH, &sb.path(&format!("agent{agent}/status.git"))).expect("open a writer");
        let statuses: Vec<EnvStatus> =
            (0..ENVS_EACH).map(|e| status(&env_name(agent, e), agent, 1, Phase::Healthy)).collect();
        writer.publish_all(&statuses).expect("publish generation 1");
    }
    // A release touches every environment: all agents report Progressing, then Healthy, at once.
    let start = Arc::new(Barrier::new(AGENTS));
    let threads: Vec<_> = (0..AGENTS)
        .map(|agent| {
            let (start, url, cache) = (Arc::clone(&start), url.clone(), sb.path(&format!("agent{agent}/status.git")));
            std::thread::spawn(move || {
                let publisher = StatusPublisher::start(StatusWriter::open(&url, BRANCH, &cache).expect("open"));
                start.wait();
                let mut longest_submit = Duration::ZERO;
                for phase in [Phase::Progressing, Phase::Healthy] {
                    for e in 0..ENVS_EACH {
                        let submitted = Instant::now();
                        publisher.submit(status(&env_name(agent, e), agent, 2, phase));
                        longest_submit = longest_submit.max(submitted.elapsed());
                    }
                }
                assert!(publisher.flush(Duration::from_secs(60)), "agent {agent}: flushed");
                (publisher.stats(), longest_submit)
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().expect("a publisher thread")).collect();

    let repo = open_repository(&sb.path("remote.git")).expect("open the remote");
    let (_, all) = read_all(&repo, BRANCH).expect("read").expect("a status branch");
    assert_eq!(all.len(), AGENTS * ENVS_EACH, "{all:#?}");
    for s in &all {
        assert_eq!((s.phase, s.observed_generation), (Phase::Healthy, 2), "{} at the tip", s.env);
    }
    // Every update is its own commit on the branch, in the order its agent made them.
    for agent in 0..AGENTS {
        for e in 0..ENVS_EACH {
            let env = env_name(agent, e);
            let seen: Vec<(Phase, u64)> = history(&repo, BRANCH, &env.parse().unwrap())
                .expect("history")
                .iter()
                .map(|(_, s)| (s.phase, s.target_generation))
                .collect();
            assert_eq!(seen, [(Phase::Healthy, 2), (Phase::Progressing, 2), (Phase::Healthy, 1)], "{env}");
        }
    }
    // A compare-and-swap never merges nor forces: the history is one line.
    let merges = sb.git(&sb.path("remote.git"), ["rev-list", "--min-parents=2", "--count", BRANCH]);
    assert_eq!(merges.trim(), "0");
    let commits: u64 = results.iter().map(|(s, _)| s.writer.commits).sum();
    assert_eq!(commits, (AGENTS * ENVS_EACH * 2) as u64, "{results:#?}");
    for (stats, longest_submit) in &results {
        assert_eq!((stats.dropped, stats.coalesced), (0, 0), "{stats:?}");
        assert!(stats.writer.offers <= stats.rounds + stats.writer.lost_races, "{stats:?}");
        assert!(*longest_submit < Duration::from_millis(500), "submit waited {longest_submit:?}");
    }
}

#[test]
fn a_publisher_retries_a_declining_remote_until_the_status_is_written() {
    hermetic_libgit2();
    let sb = Sandbox::new();
    let (_daemon, url) = served_remote(&sb);
    // The Git host declines the first two pushes (say, it is briefly read-only), then accepts.
    let hook = sb.path("remote.git/hooks/pre-receive");
    std::fs::write(
        &hook,
        "#!/bin/sh\nn=$(cat declined 2>/dev/null || echo 0)\necho $((n + 1)) > declined\n[ \"$n\" -ge 2 ]\n",
    )
    .expect("write the hook");
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let publisher =
        StatusPublisher::start(StatusWriter::open(&url, BRANCH, &sb.path("cache.git")).expect("open a writer"));
    publisher.submit(status("staging", 0, 2, Phase::Progressing));
    publisher.submit(status("staging", 0, 2, Phase::Healthy));
    assert!(publisher.flush(Duration::from_secs(30)), "written in the end: {:?}", publisher.stats());
    let stats = publisher.stats();
    assert_eq!((stats.retries, stats.dropped, stats.writer.commits), (2, 0, 2), "{stats:?}");
    let repo = open_repository(&sb.path("remote.git")).expect("open the remote");
    let seen: Vec<Phase> =
        history(&repo, BRANCH, &"staging".parse().unwrap()).expect("history").iter().map(|(_, s)| s.phase).collect();
    assert_eq!(seen, [Phase::Healthy, Phase::Progressing], "both updates, in order, after the declines");
}

const WEBAPP: &str = env!("CARGO_BIN_EXE_stele-webapp");

/// Stops every instance and balancer the agent started under `state` (they outlive `stele agent`).
struct Instances(std::path::PathBuf);

impl Drop for Instances {
    fn drop(&mut self) {
        let settings = stele::provider::local::LocalSettings::default();
        if let Ok(mut p) = stele::provider::local::LocalProvider::new(&self.0, settings, STELE.into()) {
            let _ = p.destroy(&"staging".parse().expect("an environment name"));
        }
    }
}

#[test]
fn an_agents_convergence_never_waits_on_a_slow_status_push() {
    hermetic_libgit2();
    const PUSH_SECONDS: f64 = 4.0;
    let sb = Sandbox::new();
    let alice = sb.key("alice");
    let ledger = sb.ledger("ledger", "slow-remote", &alice, &["staging"]);
    let spec = serde_json::json!({
        "provider": {"kind": "local"},
        "groups": [{"name": "web", "capacity": 1}],
        "strategy": {"kind": "rolling", "max_surge": 1, "max_unavailable": 0, "min_ready_seconds": 0},
        "health": {"kind": "http", "path": "/healthz", "interval_ms": 200, "timeout_ms": 200, "healthy_threshold": 1, "deadline_seconds": 30},
        "drift": "correct", "revert": "allow"
    });
    std::fs::write(sb.path("spec.json"), spec.to_string()).expect("write the spec");
    let key = alice.secret();
    ledger
        .stele(["env", "set", "--env", "staging", "--spec", &path_str(&sb.path("spec.json")), "--key", &key])
        .expect(OK);
    let image = sb.path("app");
    std::fs::create_dir_all(image.join("bin")).expect("mkdir");
    std::fs::copy(WEBAPP, image.join("bin/stele-webapp")).expect("copy the webapp");
    std::fs::write(image.join("stele-image.json"), r#"{"command": "bin/stele-webapp"}"#).expect("manifest");
    sb.stele(sb.root(), ["image", "pack", &path_str(&image), "--out", &path_str(&sb.path("app.tar"))]).expect(OK);
    ledger.release("staging", "1.0.0", &sb.path("app.tar"), &alice);

    // The ledger served by git daemon, whose every status push takes PUSH_SECONDS (a slow Git host,
    // or one busy with other agents' pushes).
    let served = sb.path("served");
    std::fs::create_dir_all(&served).expect("mkdir");
    sb.git(sb.root(), ["clone", "-q", "--bare", &path_str(&ledger.dir), &path_str(&served.join("ledger.git"))]);
    let hook = served.join("ledger.git/hooks/pre-receive");
    std::fs::write(&hook, format!("#!/bin/sh\nsleep {PUSH_SECONDS}\n")).expect("write the hook");
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let daemon = GitDaemon::serve(&sb, &served);
    let state = sb.path("agent-state");
    let _instances = Instances(state.clone());
    let config = sb.path("agent.toml");
    std::fs::write(
        &config,
        format!(
            "repo = \"{}\"\nstate_dir = \"{}\"\ntrust_root = [\"{}\"]\ninterval_seconds = 1\n",
            daemon.url("ledger.git"),
            path_str(&state),
            alice.id
        ),
    )
    .expect("write agent.toml");
    let out = sb.stele(sb.root(), ["agent", "--config", &path_str(&config), "--once", "--log-format", "json"]);
    out.expect(OK);
    let settled = out
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "settled")
        .unwrap_or_else(|| panic!("no `settled` line\n{}", out.dump()));
    let busy = settled["fields"]["busy_s"].as_f64().expect("busy_s");
    // Several status commits were made on the way to Healthy; had any pass pushed one itself, the
    // passes would have taken PUSH_SECONDS each time.
    assert!(busy < PUSH_SECONDS, "the agent's passes took {busy} s: they waited on a status push\n{}", out.dump());

    // Stopping flushed the status within its budget: the remote says Healthy.
    let repo = open_repository(&served.join("ledger.git")).expect("open the served ledger");
    let (_, all) = read_all(&repo, BRANCH).expect("read").expect("a status branch");
    assert_eq!(all.len(), 1);
    assert_eq!((all[0].phase, all[0].observed_generation), (Phase::Healthy, 1), "{:#?}", all[0]);
}
