//! Freshness (issue 13): an agent that starts without state accepts whatever the remote says unless
//! its operator pins a floor. A mirror reset to an old (validly signed) commit is refused by a fresh
//! agent with `floor_commit` or `floor_generations`, stalls with the reason and starts nothing; the
//! same agent without a floor accepts it (the attack the floor stops). Real `stele agent --once`, real
//! `git daemon`, real force push.

mod agent_world;
mod common;

use agent_world::*;
use common::{free_port, GitDaemon, OK};

/// A served ledger with three releases, then the remote reset to the first: (world, daemon, v3 commit).
fn reset_mirror() -> (World, GitDaemon, String) {
    let port = free_port();
    let (w, bare) = World::served(port, 1);
    let daemon = GitDaemon::serve_on(&w.sb, &bare, port);
    for v in ["1.0.0", "2.0.0", "3.0.0"] {
        let tar = w.image(v, false);
        w.release(v, &tar, &[]).expect(OK);
    }
    let v3 = w.ledger.git(["rev-parse", "HEAD"]).trim().to_owned();
    w.ledger.git(["push", "-q", "origin", "HEAD:main"]);
    // The mirror is reset to v1's commit: every commit still verifies, it is only old.
    w.ledger.git(["push", "-q", "--force", "origin", "HEAD~2:main"]);
    (w, daemon, v3)
}

fn with_floor(w: &World, text: &str) {
    let mut config = std::fs::read_to_string(&w.config).expect("read agent.toml");
    // Top-level keys must come before the first table.
    config = format!("{text}\n{config}");
    std::fs::write(&w.config, config).expect("write agent.toml");
}

#[test]
fn without_a_floor_a_fresh_agent_takes_a_reset_mirror_at_its_word() {
    let (w, _daemon, _) = reset_mirror();
    w.agent_once().expect(OK);
    let live = w.live_instances();
    assert!(live.len() == 2 && live.iter().all(|(_, v)| v == "1.0.0"), "the old release runs: {live:?}");
}

#[test]
fn a_fresh_agent_with_a_floor_commit_refuses_a_mirror_reset_below_it_and_starts_nothing() {
    let (w, _daemon, v3) = reset_mirror();
    with_floor(&w, &format!("floor_commit = \"{v3}\""));
    let out = w.agent_once();
    out.expect(common::VERIFY_FAILED);
    assert!(
        out.stderr.contains("does not contain the pinned floor commit") && out.stderr.contains(&v3),
        "{}",
        out.stderr
    );
    assert!(w.live_instances().is_empty(), "nothing started: {:?}", w.live_instances());
    assert!(!w.state.join("verified.json").exists(), "no verified state was saved below the floor");

    // The mirror catches up: the floor is reached and the agent goes on.
    w.ledger.git(["push", "-q", "--force", "origin", "HEAD:main"]);
    w.agent_once().expect(OK);
    let live = w.live_instances();
    assert!(live.len() == 2 && live.iter().all(|(_, v)| v == "3.0.0"), "{live:?}");
}

#[test]
fn a_generation_floor_refuses_an_environment_below_it() {
    let (w, _daemon, _) = reset_mirror();
    let out = w.ledger.stele([
        "agent",
        "--config",
        &common::path_str(&w.config),
        "--once",
        "--timeout",
        "60",
        "--floor-generation",
        "staging=3",
    ]);
    out.expect(common::VERIFY_FAILED);
    assert!(
        out.stderr.contains("environment staging is at generation 1") && out.stderr.contains("floor 3"),
        "{}",
        out.stderr
    );
    assert!(w.live_instances().is_empty(), "nothing started: {:?}", w.live_instances());
    w.ledger
        .stele(["agent", "--config", &common::path_str(&w.config), "--once", "--floor-generation", "nope"])
        .expect(common::REFUSED)
        .says(&["expected ENV=N"]);
}
