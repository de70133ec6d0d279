//! Faults of issue 11 on real processes, each reproduced as it was reported: a hung old instance with
//! a connection held through the balancer during a rolling release, drift in an image tree shared by
//! three environments, a killed balancer at steady state, and one new instance killed mid-rollout.
//! The agent runs as a real `stele agent` process; what runs is read from /proc, the balancer's report
//! and the status branch.

mod agent_world;
mod common;

use agent_world::*;
use common::OK;
use serde_json::Value;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Sends `signal` to `pid`; panics when it cannot (the process must exist).
fn signal(pid: i32, signal: i32) {
    // SAFETY: kill has no memory-safety preconditions; the pid was read from /proc just before.
    let r = unsafe { libc::kill(pid, signal) };
    assert_eq!(r, 0, "kill({pid}, {signal}): {}", std::io::Error::last_os_error());
}

/// Resumes and kills a process stopped by a test, whatever the test's outcome.
struct Stopped(i32);

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as in `signal`; failures (the process is already gone) are fine here.
        unsafe {
            libc::kill(self.0, libc::SIGCONT);
            libc::kill(self.0, libc::SIGKILL);
        }
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

/// The balancer's open connections to backend `id`, from its report.
fn active_connections(w: &World, id: &str) -> u64 {
    let path = w.state.join("local/staging/groups/web/lb-config.json.report.json");
    std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["active"][id].as_u64())
        .unwrap_or(0)
}

fn wait_until(what: &str, w: &World, limit: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}; agent log:\n{}", w.agent_log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ids(status: &Value) -> Vec<String> {
    instance_versions(status).into_iter().map(|(id, _, _)| id).collect()
}

#[test]
fn a_hung_old_instance_holding_a_connection_does_not_fail_a_healthy_rolling_release() {
    let mut w = World::new();
    // A deadline shorter than drain (10 s) + stop grace (3 s), and a threshold that makes the old
    // instance's failure take several probes: the agent of issue 11 blocked on the hung instance's stop
    // and then judged the new instance, probed a few times, past its deadline.
    w.set_spec("rolling.json", |s| {
        s["strategy"]["min_ready_seconds"] = 0.into();
        s["health"]["healthy_threshold"] = 6.into();
        s["health"]["deadline_seconds"] = 5.into();
    });
    let v1 = w.image("1.0.0", false);
    let v2 = w.image("2.0.0", false);
    w.release("1.0.0", &v1, &[]).expect(OK);
    w.agent_once().expect(OK);
    let before = ids(&w.status());
    assert_eq!(before.len(), 2);
    w.spawn_agent();

    // Hang one v1 instance and hold a client connection to it through the balancer.
    let hung_id = before[1].clone();
    let hung = w.pid_of(&hung_id).expect("the v1 instance runs");
    signal(hung, libc::SIGSTOP);
    let _guard = Stopped(hung);
    let mut held = Vec::new();
    wait_until("a connection to the hung instance", &w, Duration::from_secs(20), || {
        let mut s = TcpStream::connect(w.addr).expect("the balancer accepts");
        s.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("send");
        held.push(s);
        std::thread::sleep(Duration::from_millis(300));
        active_connections(&w, &hung_id) > 0
    });
    // Let the agent probe the hung instance at least once before it learns of v2.
    std::thread::sleep(Duration::from_millis(1500));
    w.release("2.0.0", &v2, &[]).expect(OK);

    let s = w.wait_status("generation 2 healthy or degraded", |s| {
        s["target_generation"] == 2 && (s["phase"] == "Healthy" || s["phase"] == "Degraded")
    });
    assert_eq!(s["phase"], "Healthy", "{s:#}\nagent log:\n{}", w.agent_log());
    assert_eq!(s["observed_generation"], 2, "{s:#}");
    let instances = instance_versions(&s);
    assert!(instances.len() == 2 && instances.iter().all(|(_, g, h)| *g == 2 && h == "healthy"), "{s:#}");
    assert!(!w.agent_log().contains("health gate failed"), "agent log:\n{}", w.agent_log());
    // The hung instance was drained (up to the limit), then killed after its stop grace.
    wait_until("the hung instance to be killed", &w, Duration::from_secs(20), || !alive(hung));
    let live = w.live_instances();
    assert!(live.len() == 2 && live.iter().all(|(_, v)| v == "2.0.0"), "{live:?}");
    drop(held);
}

#[test]
fn drift_in_an_image_tree_shared_by_three_environments_replaces_the_instances_of_all_three() {
    use std::os::unix::fs::PermissionsExt;
    let envs = ["staging", "qa", "prod"];
    let w = World::build(None, &envs, 1);
    let v1 = w.image("1.0.0", false);
    for env in envs {
        w.release_to(env, "1.0.0", &v1).expect(OK);
    }
    w.agent_once().expect(OK);
    let before: Vec<Vec<String>> = envs.iter().map(|e| ids(&w.status_of(e))).collect();
    assert!(before.iter().all(|b| b.len() == 2), "{before:?}");
    let images: Vec<_> = std::fs::read_dir(w.state.join("store/images"))
        .expect("images")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(images.len(), 1, "one image tree serves all three environments: {images:?}");
    let file = images[0].join("version.txt");
    std::fs::set_permissions(&images[0], std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod file");
    std::fs::write(&file, "9.9.9-tampered\n").expect("tamper");

    let out = w.agent_once();
    out.expect(OK);
    for (env, before) in envs.iter().zip(&before) {
        let s = w.status_of(env);
        let after = ids(&s);
        assert_eq!(after.len(), 2, "{env}: {s:#}");
        assert!(
            after.iter().all(|id| !before.contains(id)),
            "{env}: instances started from the altered tree are replaced: {before:?} → {after:?}\n{}",
            out.stderr
        );
        assert!(s["instances"].as_array().expect("instances").iter().all(|i| i["drift"].is_null()), "{env}: {s:#}");
        assert_eq!(s["phase"], "Healthy", "{env}: {s:#}");
    }
    assert_eq!(std::fs::read_to_string(&file).expect("re-unpacked"), "1.0.0\n", "a fresh, verified unpack");
    assert_eq!(w.live_instances().len(), 6, "{:?}", w.live_instances());
}

#[test]
fn a_killed_balancer_is_restarted_between_polls_within_a_second() {
    // The poll interval is the default 30 s: only the agent's watch between polls can bring it back.
    let mut w = World::build(None, &["staging"], 30);
    let v1 = w.image("1.0.0", false);
    w.release("1.0.0", &v1, &[]).expect(OK);
    w.agent_once().expect(OK);
    w.spawn_agent();
    std::thread::sleep(Duration::from_secs(2));
    let client = Client::every(w.addr, Duration::from_millis(50));
    std::thread::sleep(Duration::from_secs(1));
    let old = w.balancer_pid("staging");
    let killed = Instant::now();
    signal(old, libc::SIGKILL);
    wait_until("a new balancer", &w, Duration::from_secs(10), || {
        std::panic::catch_unwind(|| w.balancer_pid("staging")).is_ok_and(|p| p != old && alive(p))
    });
    // Serving again: wait for requests to succeed, then let the client run on a little.
    wait_until("the balancer to serve", &w, Duration::from_secs(10), || w.get("/version").is_ok());
    std::thread::sleep(Duration::from_secs(1));
    let failed_at = client.failed_at();
    let (requests, failures, _) = client.finish();
    let outage = failed_at.last().map_or(Duration::ZERO, |t| t.saturating_duration_since(killed));
    eprintln!(
        "balancer kill: {} of {requests} requests failed; last failure {outage:?} after the kill",
        failures.len()
    );
    // Issue 11's target is ≤ 1 s and ≤ 20 failed requests at 20 requests/s; measured figures are in
    // BENCHMARKS.md. The bound here leaves room for a loaded test machine.
    assert!(failures.len() <= 40, "{} of {requests} requests failed: {failures:?}", failures.len());
    assert!(outage < Duration::from_secs(3), "requests failed until {outage:?} after the kill");
    assert!(w.get("/version").expect("serving").starts_with("1.0.0 "));
}

#[test]
fn one_killed_new_instance_is_relaunched_and_a_second_beyond_the_budget_fails_the_gate() {
    let mut w = World::new();
    let v1 = w.image("1.0.0", false);
    let v2 = w.image("2.0.0", false);
    let v3 = w.image("3.0.0", false);
    w.release("1.0.0", &v1, &[]).expect(OK);
    w.agent_once().expect(OK);
    w.spawn_agent();
    let first_of = |w: &World, version: &str, not: &[i32]| -> i32 {
        let mut pid = None;
        wait_until(&format!("an instance of {version}"), w, Duration::from_secs(30), || {
            pid = w.live_instances().into_iter().find(|(p, v)| v == version && !not.contains(p)).map(|(p, _)| p);
            pid.is_some()
        });
        pid.expect("found above")
    };

    // One v2 instance killed (as an OOM kill would) mid-rollout: relaunched, and the rollout completes.
    w.release("2.0.0", &v2, &[]).expect(OK);
    let victim = first_of(&w, "2.0.0", &[]);
    signal(victim, libc::SIGKILL);
    let s = w.wait_status("generation 2 settled", |s| {
        s["target_generation"] == 2 && (s["phase"] == "Healthy" || s["phase"] == "Degraded")
    });
    assert_eq!(s["phase"], "Healthy", "{s:#}\nagent log:\n{}", w.agent_log());
    let message = s["message"].as_str().unwrap_or_default();
    assert!(message.contains("relaunched 1 of 1 lost instance(s)"), "recorded in status: {message}");
    assert!(w.live_instances().iter().all(|(_, v)| v == "2.0.0"), "{:?}", w.live_instances());

    // Two v3 instances killed one after the other: beyond the budget, the gate fails and v2 is restored.
    w.release("3.0.0", &v3, &[]).expect(OK);
    let first = first_of(&w, "3.0.0", &[]);
    signal(first, libc::SIGKILL);
    let second = first_of(&w, "3.0.0", &[first]);
    signal(second, libc::SIGKILL);
    let s = w.wait_status("generation 3 settled", |s| {
        s["target_generation"] == 3 && (s["phase"] == "Healthy" || s["phase"] == "Degraded")
    });
    assert_eq!(s["phase"], "Degraded", "{s:#}");
    let message = s["message"].as_str().unwrap_or_default();
    assert!(message.contains("relaunch budget of 1"), "{message}");
    assert_eq!(s["running"]["version"], "2.0.0", "{s:#}");
    wait_until("v2 alone to run", &w, Duration::from_secs(30), || {
        let live = w.live_instances();
        live.len() == 2 && live.iter().all(|(_, v)| v == "2.0.0")
    });
}

/// Serves `body` to every request, but only half of it until `open` is set: a download that hangs.
fn serve_held(body: Vec<u8>, open: std::sync::Arc<std::sync::atomic::AtomicBool>) -> std::net::SocketAddr {
    use std::io::Read;
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let (body, open) = (body.clone(), open.clone());
            std::thread::spawn(move || {
                let _ = stream.read(&mut [0u8; 4096]);
                let _ =
                    write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let half = body.len() / 2;
                let _ = stream.write_all(&body[..half]);
                let _ = stream.flush();
                let until = Instant::now() + Duration::from_secs(120);
                while !open.load(Ordering::SeqCst) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = stream.write_all(&body[half..]);
            });
        }
    });
    addr
}

#[test]
fn a_hanging_image_download_of_one_environment_does_not_hold_up_another() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    // `qa` comes before `staging` in the agent's pass: a download waited on inline would hold staging.
    let mut w = World::build(None, &["staging", "qa"], 1);
    let (v1, v1_qa) = (w.image("1.0.0", false), w.image("1.0.1", false));
    let open = Arc::new(AtomicBool::new(false));
    let addr = serve_held(std::fs::read(&v1_qa).expect("read"), open.clone());
    let uri = format!("http://{addr}/app-1.0.1.tar");
    let key = w.alice.secret();
    let qa = ["release", "--env", "qa", "--version", "1.0.1", "--image", &common::path_str(&v1_qa)];
    w.ledger.stele(qa.into_iter().chain(["--uri", &uri, "--key", &key])).expect(OK);
    w.release("1.0.0", &v1, &[]).expect(OK);
    w.spawn_agent();

    let s = w.wait_status("staging healthy while qa's image download hangs", |s| s["phase"] == "Healthy");
    assert_eq!(s["observed_generation"], 1, "{s:#}");
    assert!(!open.load(Ordering::SeqCst));
    let qa = w.status_of("qa");
    assert_eq!(qa["phase"], "Progressing", "{qa:#}");
    let message = qa["message"].as_str().unwrap_or_default();
    assert!(message.contains("preparing the image of 1.0.1") && message.contains("in the background"), "{qa:#}");
    assert!(qa["instances"].as_array().is_some_and(|i| i.is_empty()), "{qa:#}");

    open.store(true, Ordering::SeqCst);
    let until = Instant::now() + Duration::from_secs(60);
    let qa = loop {
        let qa = w.status_of("qa");
        if qa["phase"] == "Healthy" {
            break qa;
        }
        assert!(Instant::now() < until, "qa never healthy: {qa:#}\nagent log:\n{}", w.agent_log());
        std::thread::sleep(Duration::from_millis(200));
    };
    let versions = instance_versions(&qa);
    assert!(versions.len() == 2 && versions.iter().all(|(_, g, h)| *g == 1 && h == "healthy"), "{qa:#}");
    w.kill_agent();
}
