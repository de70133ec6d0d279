//! The agent end to end on the local provider: real `stele` and `stele-webapp` processes, real load
//! balancers, a real Git ledger. Each test builds a ledger with `stele init`, packs the demo app into
//! images, releases, and runs `stele agent` (once, or in the background), then checks what runs by
//! looking at live processes in /proc, the balancer, and the status branch.

mod common;

use common::{path_str, scrubbed, Key, Ledger, Output, Sandbox, OK, STELE};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WEBAPP: &str = env!("CARGO_BIN_EXE_stele-webapp");
const DEGRADED: i32 = 5;
const STALLED: i32 = 1;

/// A ledger with one `staging` environment, its agent configuration and state directory.
struct World {
    sb: Sandbox,
    ledger: Ledger,
    alice: Key,
    state: PathBuf,
    config: PathBuf,
    addr: SocketAddr,
    agent: Option<Child>,
}

impl World {
    fn new() -> Self {
        Self::with_repo(None)
    }

    /// `repo`: what the agent polls, when not the ledger work tree itself (a served remote, say).
    fn with_repo(repo: Option<&str>) -> Self {
        let sb = Sandbox::new();
        let alice = sb.key("alice");
        let ledger = sb.ledger("ledger", "agent-test", &alice, &["staging"]);
        let state = sb.path("agent-state");
        let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let config = sb.path("agent.toml");
        let repo = repo.map(str::to_owned).unwrap_or_else(|| path_str(&ledger.dir));
        std::fs::write(
            &config,
            format!(
                "repo = \"{repo}\"\nstate_dir = \"{}\"\ntrust_root = [\"{}\"]\ninterval_seconds = 1\n\n\
                 [local]\nlisten = {{ \"staging/web\" = \"{addr}\" }}\ndrift_check_seconds = 1\nstop_grace_seconds = 3\n",
                path_str(&state),
                alice.id
            ),
        )
        .expect("write agent.toml");
        Self { sb, ledger, alice, state, config, addr, agent: None }
    }

    /// Packs the demo app as version `version`; `fail` makes its health check answer 503.
    fn image(&self, version: &str, fail: bool) -> PathBuf {
        let dir = self.sb.path(&format!("app-{version}"));
        std::fs::create_dir_all(dir.join("bin")).expect("mkdir");
        std::fs::copy(WEBAPP, dir.join("bin/stele-webapp")).expect("copy the webapp");
        std::fs::write(dir.join("version.txt"), format!("{version}\n")).expect("write version");
        let args = if fail { "[\"--fail-health\"]" } else { "[]" };
        std::fs::write(
            dir.join("stele-image.json"),
            format!("{{\"command\": \"bin/stele-webapp\", \"args\": {args}}}"),
        )
        .expect("write manifest");
        let tar = self.sb.path(&format!("app-{version}.tar"));
        self.sb.stele(self.sb.root(), ["image", "pack", &path_str(&dir), "--out", &path_str(&tar)]).expect(OK);
        tar
    }

    fn release(&self, version: &str, tar: &Path, extra: &[&str]) -> Output {
        let mut args =
            vec!["release", "--env", "staging", "--version", version, "--image", tar.to_str().expect("utf-8")];
        args.extend_from_slice(extra);
        let key = self.alice.secret();
        args.extend(["--key", &key]);
        self.ledger.stele(&args)
    }

    fn agent_once(&self) -> Output {
        self.ledger.stele(["agent", "--config", &path_str(&self.config), "--once", "--timeout", "90"])
    }

    fn spawn_agent(&mut self) {
        let log = std::fs::File::create(self.sb.path("agent.log")).expect("agent log");
        let child = scrubbed(STELE, self.sb.root(), &self.ledger.dir)
            .args(["agent", "--config", &path_str(&self.config)])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the agent");
        self.agent = Some(child);
    }

    fn kill_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.sb.path("agent.log")).unwrap_or_default()
    }

    /// This environment's status from the status branch (`stele status --json`).
    fn status(&self) -> Value {
        let out = self.ledger.stele(["status", "--json", "--env", "staging"]);
        out.expect(OK);
        let v: Value = serde_json::from_str(&out.stdout).expect("status JSON");
        v["environments"].get(0).cloned().unwrap_or(Value::Null)
    }

    fn wait_status(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < until,
                "timed out waiting for {what}; status: {s:#}\nagent log:\n{}",
                self.agent_log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Live instance processes of this world: (pid, version) of every process whose environment names a
    /// data directory under this state directory.
    fn live_instances(&self) -> Vec<(i32, String)> {
        live_instances_under(&self.state)
    }

    fn get(&self, path: &str) -> Result<String, String> {
        http_get(self.addr, path)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.kill_agent();
        if let Ok(mut p) = stele::provider::local::LocalProvider::new(
            &self.state,
            stele::provider::local::LocalSettings::default(),
            PathBuf::from(STELE),
        ) {
            let _ = p.destroy(&"staging".parse().expect("env name"));
        }
    }
}

fn live_instances_under(state: &Path) -> Vec<(i32, String)> {
    let marker = format!("STELE_DATA_DIR={}", path_str(state));
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        let vars: Vec<String> = environ.split(|b| *b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect();
        if !vars.iter().any(|v| v.starts_with(&marker)) {
            continue;
        }
        // A zombie has no environment to read, so anything here is alive or about to be reaped.
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')) {
            continue;
        }
        let version = vars.iter().find_map(|v| v.strip_prefix("STELE_VERSION=")).unwrap_or_default().to_owned();
        out.push((pid, version));
    }
    out
}

fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").map_err(|e| format!("send: {e}"))?;
    let mut response = String::new();
    s.read_to_string(&mut response).map_err(|e| format!("read: {e}"))?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| format!("no response: {response:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or_default().to_owned());
    }
    Ok(body.trim().to_owned())
}

/// A client requesting `/version` through the balancer every 20 ms, counting answers per version.
struct Client {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    versions: Arc<Mutex<Vec<String>>>,
    requests: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let versions = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, failures, versions, requests) =
                (stop.clone(), failures.clone(), versions.clone(), requests.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    requests.fetch_add(1, Ordering::SeqCst);
                    match http_get(addr, "/version") {
                        Ok(body) => {
                            let v = body.split_whitespace().next().unwrap_or_default().to_owned();
                            let mut seen = versions.lock().expect("lock");
                            if seen.last() != Some(&v) {
                                seen.push(v);
                            }
                        }
                        Err(e) => failures.lock().expect("lock").push(e),
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        Self { stop, failures, versions, requests, thread: Some(thread) }
    }

    /// Stops the client; returns (requests, failures, versions in the order they were seen).
    fn finish(mut self) -> (usize, Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("client thread");
        }
        let failures = self.failures.lock().expect("lock").clone();
        let versions = self.versions.lock().expect("lock").clone();
        (self.requests.load(Ordering::SeqCst), failures, versions)
    }
}

fn instance_versions(status: &Value) -> Vec<(String, u64, String)> {
    status["instances"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| {
                    (
                        i["id"].as_str().unwrap_or_default().to_owned(),
                        i["generation"].as_u64().unwrap_or(0),
                        i["health"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn rolling_update_and_revert_lose_no_request_through_the_balancer() {
    let w = World::new();
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

    // The auditor sees, beside each target, that the agent ran it (from the status branch).
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

impl World {
    /// Signs and commits a new spec for staging: an example from examples/environments/ with edits.
    fn set_spec(&self, example: &str, edit: impl FnOnce(&mut Value)) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/environments").join(example);
        let mut spec: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("example")).expect("JSON");
        edit(&mut spec);
        let file = self.sb.path(&format!("spec-{example}"));
        std::fs::write(&file, serde_json::to_vec_pretty(&spec).expect("render")).expect("write spec");
        self.ledger
            .stele(["env", "set", "--env", "staging", "--spec", &path_str(&file), "--key", &self.alice.secret()])
            .expect(OK);
    }

    /// The group's traffic setting as the local provider recorded it.
    fn traffic(&self) -> Value {
        let path = self.state.join("local/staging/groups/web/traffic.json");
        serde_json::from_slice(&std::fs::read(&path).expect("traffic.json")).expect("JSON")
    }
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
    w.agent_once().expect(OK);
    let client = Client::start(w.addr);
    w.release("3.0.0", &v3, &[]).expect(OK);
    let out = w.agent_once();
    out.expect(DEGRADED);
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
    w.agent_once().expect(OK);
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
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/aws/environment.json");
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
    let alice = w.alice.secret();
    w.ledger.stele(["policy", "add-signer", "--env", "staging", "--pubkey", &bob.public(), "--key", &alice]).expect(OK);
    w.ledger
        .stele([
            "policy",
            "set-threshold",
            "--env",
            "staging",
            "--threshold",
            "2",
            "--key",
            &alice,
            "--key",
            &bob.secret(),
        ])
        .expect(OK);
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
