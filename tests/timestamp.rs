//! The timestamp role end to end (issue 13, SPEC.md §6.4, §8.9): `stele timestamp renew` by the bot
//! key, an agent that acts only on a fresh ledger (an expired timestamp or a replayed ledger stalls it
//! and leaves its instances alone, a renewal restores progress), the refusals of `renew`, and a
//! renewal that names a commit other than its parent refused by `stele poll` (F2). Real `stele` and
//! `stele-webapp` processes, real Git, a real `git daemon` and force push.

mod agent_world;
mod common;

use agent_world::*;
use common::{free_port, path_str, GitDaemon, Key, OK, REFUSED, VERIFY_FAILED};
use serde_json::Value;
use std::time::Duration;

/// Gives `w`'s ledger a timestamp role of a new key `bot` (valid up to `max_validity`), signed by
/// alice (root).
fn timestamp_role(w: &World, max_validity: &str) -> Key {
    let bot = w.sb.key("bot");
    with_role(w, &bot, max_validity);
    bot
}

fn with_role(w: &World, bot: &Key, max_validity: &str) {
    let root = w.alice.secret();
    w.ledger
        .stele(["policy", "set-timestamp", "--pubkey", &bot.public(), "--max-validity", max_validity, "--key", &root])
        .expect(OK);
}

fn renew(w: &World, bot: &Key, extra: &[&str]) -> common::Output {
    let key = bot.secret();
    let mut args = vec!["timestamp", "renew", "--key", &key];
    args.extend_from_slice(extra);
    w.ledger.stele(&args)
}

fn head(w: &World) -> String {
    w.ledger.git(["rev-parse", "HEAD"]).trim().to_owned()
}

fn pids(w: &World) -> Vec<(i32, String)> {
    let mut live = w.live_instances();
    live.sort();
    live
}

fn high_water_mark(w: &World) -> String {
    let bytes = std::fs::read(w.state.join("verified.json")).expect("verified.json");
    let v: Value = serde_json::from_slice(&bytes).expect("state JSON");
    v["commit"].as_str().expect("a commit").to_owned()
}

#[test]
fn an_expired_timestamp_stalls_the_agent_without_touching_instances_and_a_renewal_restores_progress() {
    let w = World::new();
    let bot = timestamp_role(&w, "1h");
    let out = renew(&w, &bot, &["--json"]);
    let renewed: Value = serde_json::from_str(&out.expect(OK).stdout).expect("renew JSON");
    assert_eq!(renewed["version"], 1, "{renewed:#}");
    // It names the commit it was made on: the renewal commit's first parent.
    let parent = w.ledger.git(["rev-parse", "HEAD~1"]);
    assert_eq!(renewed["ledger_commit"].as_str(), Some(parent.trim()), "{renewed:#}");
    assert_eq!(renewed["valid_seconds"], 3600, "the default is the role's limit: {renewed:#}");
    let v1 = w.image("1.0.0", false);
    let v2 = w.image("2.0.0", false);
    w.release("1.0.0", &v1, &[]).expect(OK);
    w.agent_once().expect(OK);
    let running = pids(&w);
    assert!(running.len() == 2 && running.iter().all(|(_, v)| v == "1.0.0"), "{running:?}");
    let mark = head(&w);
    assert_eq!(high_water_mark(&w), mark);

    // A release, then a renewal that expires in two seconds: the mirror "stops being renewed".
    w.release("2.0.0", &v2, &[]).expect(OK);
    renew(&w, &bot, &["--expires", "2s"]).expect(OK).says(&["timestamp version 2", "valid 2s"]);
    std::thread::sleep(Duration::from_secs(3));
    w.ledger.stele(["timestamp", "show"]).expect(VERIFY_FAILED).says(&["version 2", "EXPIRED", "F3"]);

    let out = w.agent_once();
    out.expect(VERIFY_FAILED);
    assert!(out.stderr.contains("F3") && out.stderr.contains("expired"), "{}", out.stderr);
    assert_eq!(pids(&w), running, "the running instances are untouched (same pids, same version)");
    assert_eq!(high_water_mark(&w), mark, "the refused head is not the high-water mark");
    let s = w.status();
    assert_eq!(s["phase"], "Stalled", "{s:#}");
    let message = s["message"].as_str().unwrap_or_default();
    assert!(message.contains("F3") && message.contains("expired"), "{s:#}");
    // A second pass, now on a state that is up to date with the head: still held.
    w.agent_once().expect(VERIFY_FAILED);
    assert_eq!(pids(&w), running);

    // `stele poll` and `stele plan` report the same verdict.
    let poll_state = w.sb.path("poll-state");
    let out = w.ledger.stele(["poll", "--state-dir", &path_str(&poll_state), "--trust-root", &w.alice.id, "--json"]);
    let poll: Value = serde_json::from_str(&out.expect(VERIFY_FAILED).stdout).expect("poll JSON");
    assert_eq!((poll["status"].as_str(), poll["fresh"].as_bool()), (Some("stalled"), Some(false)), "{poll:#}");
    assert!(poll["reason"].as_str().is_some_and(|r| r.starts_with("F3:") && r.contains("expired")), "{poll:#}");
    let out = w.ledger.stele(["plan", "--config", &path_str(&w.config), "--json"]);
    let plan: Value = serde_json::from_str(&out.expect(VERIFY_FAILED).stdout).expect("plan JSON");
    assert_eq!(plan["fresh"], false, "{plan:#}");

    // The bot renews: the agent converges the release it held back.
    renew(&w, &bot, &["--expires", "30m"]).expect(OK).says(&["timestamp version 3"]);
    w.agent_once().expect(OK);
    let live = pids(&w);
    assert!(live.len() == 2 && live.iter().all(|(_, v)| v == "2.0.0"), "{live:?}");
    assert_eq!(w.status()["phase"], "Healthy");
    assert_eq!(high_water_mark(&w), head(&w));
    w.ledger.stele(["timestamp", "show"]).expect(OK).says(&["version 3", "signed by bot"]);
}

#[test]
fn a_replayed_ledger_stalls_the_agent_that_saw_a_newer_timestamp_and_its_instances_are_untouched() {
    let port = free_port();
    let (w, bare) = World::served(port, 1);
    let _daemon = GitDaemon::serve_on(&w.sb, &bare, port);
    let bot = timestamp_role(&w, "1h");
    renew(&w, &bot, &[]).expect(OK);
    let v1 = w.image("1.0.0", false);
    w.release("1.0.0", &v1, &[]).expect(OK);
    let old = head(&w);
    renew(&w, &bot, &[]).expect(OK).says(&["timestamp version 2"]);
    w.ledger.git(["push", "-q", "origin", "HEAD:main"]);
    w.agent_once().expect(OK);
    let running = pids(&w);
    assert!(running.len() == 2 && running.iter().all(|(_, v)| v == "1.0.0"), "{running:?}");
    let state: Value =
        serde_json::from_slice(&std::fs::read(w.state.join("verified.json")).expect("state")).expect("state JSON");
    assert_eq!(state["timestamp_seen"], 2, "the version seen is remembered: {state:#}");

    // The mirror is reset to a commit whose timestamp (version 1) is valid but older than the one seen.
    w.ledger.git(["push", "-q", "--force", "origin", &format!("{old}:main")]);
    let out = w.agent_once();
    out.expect(VERIFY_FAILED);
    assert!(
        out.stderr.contains("STALLED") && (out.stderr.contains("H1") || out.stderr.contains("F3")),
        "{}",
        out.stderr
    );
    assert_eq!(pids(&w), running, "the running instances are untouched");
}

#[test]
fn renew_refuses_keys_outside_the_timestamp_role_and_validity_beyond_its_limit() {
    let w = World::new();
    let bot = w.sb.key("bot");
    // No role yet: nothing to sign.
    renew(&w, &bot, &[]).expect(REFUSED).says(&["no timestamp role", "stele policy set-timestamp"]);
    with_role(&w, &bot, "1h");
    // A role and no timestamp yet: whoever acts refuses (F3) until the first renewal.
    let poll_state = w.sb.path("poll-state");
    let poll = ["poll", "--state-dir", &path_str(&poll_state), "--trust-root", &w.alice.id];
    w.ledger.stele(poll).expect(VERIFY_FAILED).says(&["F3", "holds no timestamp"]);
    let before = w.ledger.commit_count();

    let root = w.alice.secret();
    renew(&w, &bot, &[]).expect(OK);
    w.ledger.stele(["timestamp", "renew", "--key", &root]).expect(REFUSED).says(&[
        "is not a key of the timestamp role",
        "bot",
        "nothing was written",
    ]);
    renew(&w, &bot, &["--expires", "2h"]).expect(REFUSED).says(&["beyond the timestamp role's limit", "1h 0m"]);
    renew(&w, &bot, &["--expires", "2000-01-01T00:00:00Z"]).expect(REFUSED).says(&["not in the future"]);
    assert_eq!(w.ledger.commit_count(), before + 1, "only the good renewal was committed");
    w.ledger.stele(poll).expect(OK);
}

#[test]
fn a_renewal_that_names_a_commit_other_than_its_parent_is_refused_by_poll() {
    let w = World::new();
    let bot = timestamp_role(&w, "1h");
    renew(&w, &bot, &[]).expect(OK);
    // A renewal made on P, carried over onto another commit Q: it names P, its parent is Q (F2).
    let p = head(&w);
    renew(&w, &bot, &[]).expect(OK);
    let carried = w.ledger.read("trust/timestamp.json");
    w.ledger.git(["reset", "-q", "--hard", &p]);
    let v1 = w.image("1.0.0", false);
    w.release("1.0.0", &v1, &[]).expect(OK);
    w.ledger.write("trust/timestamp.json", &carried);
    w.ledger.commit_all("timestamp carried onto another commit");
    // Each tree on its own verifies; the step does not.
    w.ledger.stele(["verify"]).expect(OK);
    let state = w.sb.path("poll-state");
    let out = w.ledger.stele(["poll", "--state-dir", &path_str(&state), "--trust-root", &w.alice.id]);
    out.expect(VERIFY_FAILED);
    assert!(out.stderr.contains("F2") && out.stderr.contains(&format!("names commit {p}")), "{}", out.dump());
    let audit = w.ledger.stele(["audit", "--trust-root", &w.alice.id]);
    assert!(audit.code != OK && audit.dump().contains("F2"), "{}", audit.dump());
}

#[test]
fn a_running_agent_stalls_when_its_timestamp_expires_between_polls() {
    // Polls once an hour: only the agent's own clock can notice the expiry.
    let mut w = World::build(None, &["staging"], 3600);
    let bot = timestamp_role(&w, "1h");
    let v1 = w.image("1.0.0", false);
    w.release("1.0.0", &v1, &[]).expect(OK);
    renew(&w, &bot, &["--expires", "8s"]).expect(OK);
    w.spawn_agent();
    w.wait_status("Healthy", |s| s["phase"] == "Healthy");
    let running = pids(&w);
    assert_eq!(running.len(), 2, "{running:?}");
    let s = w.wait_status("Stalled by F3", |s| s["phase"] == "Stalled");
    let message = s["message"].as_str().unwrap_or_default();
    assert!(message.contains("F3") && message.contains("expired"), "{s:#}");
    assert!(w.agent_log().contains("STALLED: F3"), "{}", w.agent_log());
    assert_eq!(pids(&w), running, "the running instances are untouched");
}
