//! The agent end to end on the local provider: real `stele` and `stele-webapp` processes, real load
//! balancers, a real Git ledger. Each test builds a ledger with `stele init`, packs the demo app into
//! images, releases, and runs `stele agent` (once, or in the background), then checks what runs by
//! looking at live processes in /proc, the balancer, and the status branch.

mod agent_world;
mod common;

use agent_world::*;
use common::{path_str, OK};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn rolling_update_and_revert_lose_no_request_through_the_balancer() {
    // With its own key, the agent's reports are signed and verify: audit counts them as observed.
    let w = World::new().with_agent_key();
    let v1 = w.image("1.0.0", false);
    let v2 = w.image("2.0.0", false);
    w.release("1.0.0", &v1, &[]).expect(OK);
    w.agent_once().expect(OK);
    assert!(w.get("/version").expect("the balancer answers").starts_with("1.0.0 "));
    let s = w.status();
    assert_eq!(s["phase"], "Healthy", "{s:#}");
    assert_eq!((s["target_generation"].as_u64(), s["observed_generation"].as_u64()), (Some(1), Some(1)));

    let client = Client::start(w.addr);
    w.release("2.0.0", &v2, &[]).expect(OK);
    w.agent_once().expect(OK);
    let s = w.status();
    assert_eq!(s["phase"], "Healthy", "{s:#}");
    assert_eq!(s["target"]["version"], "2.0.0");
    let instances = instance_versions(&s);
    assert_eq!(instances.len(), 2, "{s:#}");
    assert!(instances.iter().all(|(_, g, h)| *g == 2 && h == "healthy"), "{s:#}");

    let promotion = w.ledger.git(["log", "--format=%H", "-1", "--", "ledger/staging/2.json"]);
    // `revert: signed` (the default): SSH-signed by staging's signer.
    let signing = format!("user.signingkey={}", w.alice.secret());
    w.ledger.git(["-c", "gpg.format=ssh", "-c", &signing, "revert", "-S", "--no-edit", promotion.trim()]);
    w.agent_once().expect(OK);
    let (requests, failures, versions) = client.finish();
    let s = w.status();
    assert_eq!(s["target"]["version"], "1.0.0", "{s:#}");
    assert_eq!((s["target_generation"].as_u64(), s["observed_generation"].as_u64()), (Some(3), Some(3)));
    assert!(failures.is_empty(), "{} of {requests} requests failed: {failures:?}", failures.len());
    assert!(requests > 50, "the client ran through both rollouts ({requests} requests)");
    assert_eq!(versions.first().map(String::as_str), Some("1.0.0"));
    assert!(versions.iter().any(|v| v == "2.0.0"), "{versions:?}");
    assert_eq!(versions.last().map(String::as_str), Some("1.0.0"), "{versions:?}");
    let live = w.live_instances();
    assert_eq!(live.len(), 2, "exactly capacity instances run: {live:?}");
    assert!(live.iter().all(|(_, v)| v == "1.0.0"), "{live:?}");

    // The auditor sees, beside each target, that the agent ran it (from its verified status ref).
    let audit = w.ledger.stele(["audit", "--env", "staging", "--json", "--trust-root", &w.alice.id]);
    let v: Value = serde_json::from_str(&audit.expect(OK).stdout).expect("audit JSON");
    let events = v["environments"]["staging"]["events"].as_array().expect("events").clone();
    let observed: Vec<(u64, bool)> = events
        .iter()
        .map(|e| (e["generation"].as_u64().unwrap_or(0), e["observed"]["converged_at"].is_string()))
        .collect();
    assert_eq!(observed, [(1, true), (2, true), (3, true)], "{v:#}");
}

#[test]
fn agent_killed_mid_rollout_adopts_its_instances_and_finishes_within_bounds() {
    let mut w = World::new();
    let v1 = w.image("1.0.0", false);
    let v2 = w.image("2.0.0", false);
    w.release("1.0.0", &v1, &[]).expect(OK);
    w.agent_once().expect(OK);
    let before: Vec<i32> = w.live_instances().iter().map(|(p, _)| *p).collect();
    assert_eq!(before.len(), 2);

    // Watch every process for the whole test: never more than capacity + max_surge (2 + 1).
    let most = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (most, stop, state) = (most.clone(), stop.clone(), w.state.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                most.fetch_max(live_instances_under(&state).len(), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    w.release("2.0.0", &v2, &[]).expect(OK);
    w.spawn_agent();
    // SIGKILL the agent as soon as the first v2 instance runs, in the middle of the rollout.
    let until = Instant::now() + Duration::from_secs(60);
    while !w.live_instances().iter().any(|(_, v)| v == "2.0.0") {
        assert!(Instant::now() < until, "no v2 instance started; agent log:\n{}", w.agent_log());
        std::thread::sleep(Duration::from_millis(10));
    }
    w.kill_agent();
    let mid = w.live_instances();
    assert!(mid.iter().any(|(_, v)| v == "1.0.0"), "killed mid-rollout: v1 still runs {mid:?}");
    let out = w.agent_once();
    out.expect(OK);
    stop.store(true, Ordering::SeqCst);
    watcher.join().expect("watcher");
    let live = w.live_instances();
    assert_eq!(live.len(), 2, "no duplicates, no leaks: {live:?}");
    assert!(live.iter().all(|(_, v)| v == "2.0.0"), "{live:?}");
    assert!(live.iter().all(|(p, _)| !before.contains(p)), "every v1 instance was replaced");
    assert!(
        most.load(Ordering::SeqCst) <= 3,
        "at most capacity + max_surge ran at once: {}",
        most.load(Ordering::SeqCst)
    );
    assert_eq!(w.status()["phase"], "Healthy");
}

#[test]
fn tampered_file_in_an_unpacked_image_is_drift_and_its_instances_are_replaced() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new();
    let v1 = w.image("1.0.0", false);
    w.release("1.0.0", &v1, &[]).expect(OK);
    w.agent_once().expect(OK);
    let before: Vec<String> = instance_versions(&w.status()).into_iter().map(|(id, _, _)| id).collect();
    assert_eq!(before.len(), 2);
    let images = w.state.join("store/images");
    let digest_dir = std::fs::read_dir(&images)
        .expect("images")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .expect("an unpacked image");
    // Someone with access edits a file in place.
    let file = digest_dir.join("version.txt");
    std::fs::set_permissions(&digest_dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod file");
    std::fs::write(&file, "9.9.9-tampered\n").expect("tamper");

    let out = w.agent_once();
    eprintln!("{}", out.stderr);
    out.expect(OK);
    let s = w.status();
    let after: Vec<String> = instance_versions(&s).into_iter().map(|(id, _, _)| id).collect();
    assert_eq!(after.len(), 2, "{s:#}");
    assert!(
        after.iter().all(|id| !before.contains(id)),
        "drifted instances replaced, never patched: {before:?} → {after:?}"
    );
    assert_eq!(std::fs::read_to_string(&file).expect("re-unpacked"), "1.0.0\n", "a fresh, verified unpack");
    assert!(w.get("/version").expect("serving").starts_with("1.0.0 "));
    assert_eq!(s["phase"], "Healthy", "{s:#}");
}

/// Serves `body` for every request, counting them.
fn serve(body: Vec<u8>) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(&body);
        }
    });
    (addr, hits)
}

#[test]
fn artifact_served_over_http_with_a_wrong_digest_is_refused_before_anything_runs() {
    let w = World::new();
    let v1 = w.image("1.0.0", false);
    let evil = w.image("6.6.6", false);
    // The entry pins v1's digest; the server hands out other bytes under that URL.
    let (addr, hits) = serve(std::fs::read(&evil).expect("read"));
    let uri = format!("http://{addr}/app-1.0.0.tar");
    w.release("1.0.0", &v1, &["--uri", &uri]).expect(OK);
    let out = w.agent_once();
    out.expect(STALLED);
    assert!(hits.load(Ordering::SeqCst) >= 1, "the agent fetched the artifact");
    let s = w.status();
    assert_eq!(s["phase"], "Stalled", "{s:#}");
    let message = s["message"].as_str().unwrap_or_default();
    assert!(message.contains("1.0.0") && message.contains("does not match its signed entry"), "{message}");
    assert!(w.live_instances().is_empty(), "nothing was started: {:?}", w.live_instances());
    let unpacked: Vec<_> = std::fs::read_dir(w.state.join("store/images"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(unpacked.is_empty(), "nothing was unpacked: {unpacked:?}");
}

#[test]
fn force_push_stalls_the_agent_which_keeps_serving_the_last_good_generation() {
    let sb_remote = tempfile::tempdir().expect("tempdir");
    let bare = sb_remote.path().join("ledger.git");
    let status = Command::new("git").args(["init", "--bare", "-b", "main", &path_str(&bare)]).output().expect("git");
    assert!(status.status.success());
    let url = format!("file://{}", path_str(&bare));
    let mut w = World::with_repo(Some(&url));
    w.ledger.git(["remote", "add", "origin", &url]);
    let v1 = w.image("1.0.0", false);
    let v2 = w.image("2.0.0", false);
    w.release("1.0.0", &v1, &[]).expect(OK);
    w.ledger.git(["push", "-q", "origin", "HEAD:main"]);
    w.spawn_agent();
    let read_status = |w: &World| -> Value {
        // The status branch lives on the remote: fetch it into the work tree's origin/ refs.
        w.ledger.git(["fetch", "-q", "origin", "+refs/heads/stele/status:refs/remotes/origin/stele/status"]);
        w.status()
    };
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_status(&w)))
            .ok()
            .is_some_and(|s| s["phase"] == "Healthy");
        if ok {
            break;
        }
        assert!(Instant::now() < until, "never healthy; agent log:\n{}", w.agent_log());
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(w.get("/version").expect("serving").starts_with("1.0.0 "));

    // Rewrite history: drop v1's promotion and force-push a different v2 in its place.
    w.ledger.git(["reset", "-q", "--hard", "HEAD~1"]);
    w.release("2.0.0", &v2, &[]).expect(OK);
    w.ledger.git(["push", "-q", "--force", "origin", "HEAD:main"]);
    let until = Instant::now() + Duration::from_secs(60);
    let s = loop {
        let s = read_status(&w);
        if s["phase"] == "Stalled" {
            break s;
        }
        assert!(Instant::now() < until, "never stalled: {s:#}\nagent log:\n{}", w.agent_log());
        std::thread::sleep(Duration::from_millis(300));
    };
    let message = s["message"].as_str().unwrap_or_default();
    assert!(message.contains("H1"), "the status says why: {message}");
    assert!(w.agent_log().contains("STALLED"), "the agent says so loudly");
    // Still serving the last verified generation, with the agent alive.
    for _ in 0..10 {
        assert!(w.get("/version").expect("still serving").starts_with("1.0.0 "));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(w.agent.as_mut().expect("agent").try_wait().expect("wait").is_none(), "the agent keeps running");
    let live = w.live_instances();
    assert_eq!(live.len(), 2);
    assert!(live.iter().all(|(_, v)| v == "1.0.0"), "{live:?}");
}

#[test]
fn blue_green_switches_all_traffic_at_once_and_back_on_revert() {
    let w = World::new();
    w.set_spec("blue-green.json", |s| s["strategy"]["grace_seconds"] = 2.into());
    let v1 = w.image("1.0.0", false);
    let v2 = w.image("2.0.0", false);
    w.release("1.0.0", &v1, &[]).expect(OK);
    w.agent_once().expect(OK);
    assert_eq!(w.traffic()["traffic"], serde_json::json!({"mode": "weighted", "weights": {"1": 100}}));

    let client = Client::start(w.addr);
    w.release("2.0.0", &v2, &[]).expect(OK);
    w.agent_once().expect(OK);
    assert_eq!(w.traffic()["traffic"], serde_json::json!({"mode": "weighted", "weights": {"2": 100}}));
    let live = w.live_instances();
    assert_eq!(live.len(), 2, "the old group is gone after the grace period: {live:?}");
    assert!(live.iter().all(|(_, v)| v == "2.0.0"), "{live:?}");

    let promotion = w.ledger.git(["log", "--format=%H", "-1", "--", "ledger/staging/2.json"]);
    // `revert: signed` (the default): SSH-signed by staging's signer.
    let signing = format!("user.signingkey={}", w.alice.secret());
    w.ledger.git(["-c", "gpg.format=ssh", "-c", &signing, "revert", "-S", "--no-edit", promotion.trim()]);
    w.agent_once().expect(OK);
    let (requests, failures, versions) = client.finish();
    assert!(failures.is_empty(), "{} of {requests} requests failed: {failures:?}", failures.len());
    // One switch each way: never a mix of versions, as a rolling update would give.
    assert_eq!(versions, ["1.0.0", "2.0.0", "1.0.0"], "{requests} requests");
    assert_eq!(w.traffic()["traffic"], serde_json::json!({"mode": "weighted", "weights": {"3": 100}}));
    let s = w.status();
    assert_eq!((s["phase"].as_str(), s["observed_generation"].as_u64()), (Some("Healthy"), Some(3)), "{s:#}");
}

#[test]
fn canary_whose_health_check_fails_is_halted_the_previous_generation_restored_and_degraded() {
    let w = World::new();
    w.set_spec("canary.json", |s| {
        s["strategy"]["steps"][0]["pause_seconds"] = 1.into();
        s["health"]["deadline_seconds"] = 4.into();
    });
    let v1 = w.image("1.0.0", false);
    let v3 = w.image("3.0.0", true);
    let v4 = w.image("4.0.0", false);
    w.release("1.0.0", &v1, &[]).expect(OK);
    let first = w.agent_once();
    first.expect(OK);
    let client = Client::start(w.addr);
    w.release("3.0.0", &v3, &[]).expect(OK);
    let out = w.agent_once();
    out.expect(DEGRADED);
    // Logs show the traffic as `stele plan` does (`gen 1 100%`), not as Rust's Debug (`Weighted({1: 100})`).
    let logs = format!("{}{}", first.stderr, out.stderr);
    assert!(logs.contains("traffic moved") && logs.contains("traffic=gen "), "{logs}");
    assert!(!logs.contains("Weighted("), "{logs}");
    let s = w.status();
    assert_eq!(s["phase"], "Degraded", "{s:#}");
    let message = s["message"].as_str().unwrap_or_default();
    assert!(message.contains("health gate of generation 2 (3.0.0) failed"), "{message}");
    assert_eq!((s["target_generation"].as_u64(), s["observed_generation"].as_u64()), (Some(2), Some(1)), "{s:#}");
    assert_eq!(s["running"]["version"], "1.0.0");
    assert_eq!(w.traffic()["traffic"], serde_json::json!({"mode": "weighted", "weights": {"1": 100}}));
    let live = w.live_instances();
    assert_eq!(live.len(), 2, "{live:?}");
    assert!(live.iter().all(|(_, v)| v == "1.0.0"), "v3 instances were terminated: {live:?}");

    // No retry loop: another pass while degraded launches nothing of v3.
    w.agent_once().expect(DEGRADED);
    assert!(w.live_instances().iter().all(|(_, v)| v == "1.0.0"));

    // A newer generation proceeds normally.
    w.release("4.0.0", &v4, &[]).expect(OK);
    w.agent_once().expect(OK);
    let (requests, failures, versions) = client.finish();
    assert!(failures.is_empty(), "{} of {requests} requests failed: {failures:?}", failures.len());
    assert!(!versions.iter().any(|v| v == "3.0.0"), "the failing canary never received traffic: {versions:?}");
    assert_eq!(versions.last().map(String::as_str), Some("4.0.0"));
    let s = w.status();
    assert_eq!((s["phase"].as_str(), s["observed_generation"].as_u64()), (Some("Healthy"), Some(3)), "{s:#}");
}

#[test]
fn plan_shows_the_next_step_and_changes_nothing() {
    let w = World::new();
    let v1 = w.image("1.0.0", false);
    let v2 = w.image("2.0.0", false);
    w.release("1.0.0", &v1, &[]).expect(OK);
    // Before any agent ran: planned as a first run, and the state directory is not created, not
    // even when planning fails (a repository that does not exist: its error printed once).
    let plan = || w.ledger.stele(["plan", "--config", &path_str(&w.config)]);
    plan().expect(OK).says(&["planning as a first run", "launch    web: 1.0.0 (generation 1)"]);
    assert!(!w.state.exists(), "plan created {}", w.state.display());
    let missing = w.sb.path("no-such-ledger");
    let out = w.ledger.stele(["plan", "--config", &path_str(&w.config), "--repo", &path_str(&missing)]);
    out.expect(4);
    assert_eq!(out.stderr.matches("No such file or directory").count(), 1, "printed once\n{}", out.dump());
    assert!(!w.state.exists(), "a failed plan created {}", w.state.display());

    w.agent_once().expect(OK);
    // Converged: Healthy with nothing to do, the instances credited as ready from their launch.
    plan().expect(OK).says(&["staging: Healthy", "nothing to do"]);
    assert!(!plan().stdout.contains("not ready yet"));
    let before = w.live_instances();
    let verified_before = std::fs::read(w.state.join("verified.json")).expect("verified state");
    w.release("2.0.0", &v2, &[]).expect(OK);
    let out = w.ledger.stele(["plan", "--config", &path_str(&w.config)]);
    out.expect(OK).says(&["staging: Progressing", "launch    web: 2.0.0 (generation 2)"]);
    let json = w.ledger.stele(["plan", "--config", &path_str(&w.config), "--json"]);
    let v: Value = serde_json::from_str(&json.expect(OK).stdout).expect("plan JSON");
    let actions = v["environments"][0]["plan"]["actions"].as_array().expect("actions").clone();
    assert!(actions.iter().any(|a| a["action"] == "launch"), "{v:#}");
    assert_eq!(w.live_instances(), before, "plan started or stopped nothing");
    assert_eq!(
        std::fs::read(w.state.join("verified.json")).expect("verified state"),
        verified_before,
        "plan did not move the high-water mark"
    );
}

#[test]
fn sigterm_stops_the_agent_between_steps_and_instances_keep_serving() {
    let mut w = World::new();
    let v1 = w.image("1.0.0", false);
    w.release("1.0.0", &v1, &[]).expect(OK);
    w.spawn_agent();
    w.wait_status("Healthy", |s| s["phase"] == "Healthy");
    let pid = w.agent.as_ref().expect("agent").id() as i32;
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let until = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = w.agent.as_mut().expect("agent").try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < until, "the agent did not stop on SIGTERM:\n{}", w.agent_log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "{}", w.agent_log());
    assert!(w.agent_log().contains("shutdown requested"), "{}", w.agent_log());
    assert!(w.get("/version").expect("instances and balancer outlive the agent").starts_with("1.0.0 "));
    assert_eq!(w.live_instances().len(), 2);
}

/// An agent built without the `aws` feature meets an AWS environment: it stalls that environment
/// with the reason, in its exit code and in the status branch, and touches nothing.
#[cfg(not(feature = "aws"))]
#[test]
fn an_aws_environment_stalls_an_agent_built_without_the_aws_feature() {
    let w = World::new();
    let spec = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/aws/environment.json");
    w.ledger
        .stele(["env", "set", "--env", "staging", "--spec", &path_str(&spec), "--key", &w.alice.secret()])
        .expect(OK);
    let digest = "ab".repeat(32);
    let key = w.alice.secret();
    w.ledger
        .stele([
            "release",
            "--env",
            "staging",
            "--version",
            "1.0.0",
            "--ami",
            "ami-0123",
            "--blake3",
            &digest,
            "--key",
            &key,
        ])
        .expect(OK);
    w.agent_once().expect(STALLED);
    let s = w.status();
    assert_eq!(s["phase"], "Stalled", "{s:#}");
    assert!(s["message"].as_str().unwrap_or_default().contains("without the `aws` feature"), "{s:#}");
    assert!(w.live_instances().is_empty());
}

#[test]
fn an_expired_target_is_not_acted_on_and_the_last_good_release_keeps_running() {
    let w = World::new();
    let v1 = w.image("1.0.0", false);
    let v2 = w.image("2.0.0", false);
    w.release("1.0.0", &v1, &[]).expect(OK);
    w.agent_once().expect(OK);
    // 2.0.0 expires two seconds after it is written; by the time the agent polls it has (SPEC.md §8.7).
    w.release("2.0.0", &v2, &["--expires", "2s"]).expect(OK);
    std::thread::sleep(Duration::from_secs(3));
    w.agent_once().expect(STALLED);
    let s = w.status();
    assert_eq!(s["phase"], "Stalled", "{s:#}");
    let message = s["message"].as_str().unwrap_or_default();
    assert!(message.contains("E6") && message.contains("2.0.0"), "the status says why: {message}");
    let live = w.live_instances();
    assert_eq!(live.len(), 2, "{live:?}");
    assert!(live.iter().all(|(_, v)| v == "1.0.0"), "nothing was replaced: {live:?}");
    assert!(w.get("/version").expect("still serving").starts_with("1.0.0 "));
}

/// Issue 10's walkthrough at 2 of 2, driven through the agent: each release is a proposal that bob
/// co-signs and `stele promote` lands; an unsigned `git rm` of the tip stalls the agent without touching
/// what runs; a signed `git revert` of the commit that promoted 2.0.0 converges back to 1.0.0.
#[test]
fn two_of_two_promotions_converge_an_unsigned_rm_changes_nothing_and_a_signed_revert_rolls_back() {
    let w = World::new();
    let bob = w.sb.key("bob");
    w.ledger.two_of_two("staging", &w.alice, &bob);
    for version in ["1.0.0", "2.0.0"] {
        let before = w.ledger.git(["rev-parse", "HEAD"]);
        w.release(version, &w.image(version, false), &[]).expect(OK);
        assert_eq!(w.ledger.git(["rev-parse", "HEAD"]), before, "a release short of bob's signature is a proposal");
        let name = format!("staging-{version}");
        w.ledger.stele(["sign", "--proposal", &name, "--key", &bob.secret()]).expect(OK);
        w.ledger.stele(["promote", &name]).expect(OK);
        w.agent_once().expect(OK);
        let s = w.status();
        assert_eq!((s["phase"].as_str(), s["target"]["version"].as_str()), (Some("Healthy"), Some(version)), "{s:#}");
    }

    // Push access alone: remove the tip without a signature. Refused (H3); nothing is replaced.
    w.ledger.git(["rm", "-q", "ledger/staging/2.json"]);
    w.ledger.git(["commit", "-q", "-m", "roll back without a key"]);
    w.agent_once().expect(STALLED);
    let s = w.status();
    assert!(s["message"].as_str().unwrap_or_default().contains("H3"), "{s:#}");
    assert_eq!(s["target_generation"].as_u64(), Some(2), "{s:#}");
    let live = w.live_instances();
    assert!(live.len() == 2 && live.iter().all(|(_, v)| v == "2.0.0"), "{live:?}");
    w.ledger.git(["revert", "--no-edit", "HEAD"]); // put the entry back: the agent recovers, nothing changes

    let promoted = w.ledger.git(["log", "--first-parent", "--format=%H", "-1", "--", "ledger/staging/2.json"]);
    let signing = format!("user.signingkey={}", bob.secret());
    w.ledger.git(["-c", "gpg.format=ssh", "-c", &signing, "revert", "-S", "--no-edit", promoted.trim()]);
    w.agent_once().expect(OK);
    let s = w.status();
    assert_eq!(s["target"]["version"], "1.0.0", "{s:#}");
    assert_eq!((s["target_generation"].as_u64(), s["observed_generation"].as_u64()), (Some(3), Some(3)), "{s:#}");
    let live = w.live_instances();
    assert!(live.len() == 2 && live.iter().all(|(_, v)| v == "1.0.0"), "{live:?}");
    let audit = w.ledger.stele(["audit", "--env", "staging", "--trust-root", &w.alice.id]);
    audit.expect(STALLED).says(&["REFUSED", "H3", "recover"]);
}

/// `stele down` stops what an agent started under its state directory: after a real agent run (the
/// agent itself gone, as `--once` leaves it), no instance or balancer process of that state
/// directory is alive and the records are gone; a second `down` has nothing to stop.
#[test]
fn down_stops_every_instance_and_balancer_of_the_state_directory() {
    let w = World::new();
    let v1 = w.image("1.0.0", false);
    w.release("1.0.0", &v1, &[]).expect(OK);
    w.agent_once().expect(OK);
    assert!(!w.live_instances().is_empty(), "the agent started instances");
    let lb = w.balancer_pid("staging");
    let alive = |pid: i32| std::path::Path::new(&format!("/proc/{pid}")).exists() && !zombie(pid);
    assert!(alive(lb), "the balancer runs");

    let down = w.ledger.stele(["down", "--config", &path_str(&w.config)]);
    down.expect(OK).says(&["stopped staging"]);
    assert_eq!(w.live_instances(), Vec::new(), "no instance of {} is alive", w.state.display());
    assert!(!alive(lb), "the balancer {lb} is stopped");
    assert!(!w.state.join("local/staging").exists(), "the records are removed");
    w.ledger.stele(["down", "--state-dir", &path_str(&w.state)]).expect(OK).says(&["nothing to stop"]);
    w.ledger.stele(["down", "--help"]).expect(OK).says(&["Stop the agent first"]);
}

fn zombie(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').is_none_or(|(_, rest)| rest.trim_start().starts_with('Z'))
}
