//! The world the agent tests run in: a ledger made with `stele init`, the demo app packed into images,
//! an agent configuration and state directory, live processes found in /proc, and a client counting
//! answers through the balancer. Shared by `agent_local.rs` and `agent_faults.rs`.
#![allow(dead_code)]

use crate::common::{path_str, scrubbed, Key, Ledger, Output, Sandbox, OK, STELE};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const WEBAPP: &str = env!("CARGO_BIN_EXE_stele-webapp");
pub const DEGRADED: i32 = 5;
pub const STALLED: i32 = 1;

/// A ledger with one `staging` environment, its agent configuration and state directory.
pub struct World {
    pub sb: Sandbox,
    pub ledger: Ledger,
    pub alice: Key,
    pub state: PathBuf,
    pub config: PathBuf,
    pub addr: SocketAddr,
    pub agent: Option<Child>,
    /// Every environment of the ledger (`staging` first, whose group `web` listens on `addr`).
    pub envs: Vec<String>,
}

impl World {
    pub fn new() -> Self {
        Self::with_repo(None)
    }

    /// `repo`: what the agent polls, when not the ledger work tree itself (a served remote, say).
    pub fn with_repo(repo: Option<&str>) -> Self {
        Self::build(repo, &["staging"], 1)
    }

    /// `envs` (the first is `staging`), the agent polling every `interval_seconds`.
    pub fn build(repo: Option<&str>, envs: &[&str], interval_seconds: u64) -> Self {
        let sb = Sandbox::new();
        let alice = sb.key("alice");
        let ledger = sb.ledger("ledger", "agent-test", &alice, envs);
        let state = sb.path("agent-state");
        let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let config = sb.path("agent.toml");
        let repo = repo.map(str::to_owned).unwrap_or_else(|| path_str(&ledger.dir));
        std::fs::write(
            &config,
            format!(
                "repo = \"{repo}\"\nstate_dir = \"{}\"\ntrust_root = [\"{}\"]\ninterval_seconds = {interval_seconds}\n\n\
                 [local]\nlisten = {{ \"staging/web\" = \"{addr}\" }}\ndrift_check_seconds = 1\nstop_grace_seconds = 3\n",
                path_str(&state),
                alice.id
            ),
        )
        .expect("write agent.toml");
        let envs = envs.iter().map(|e| (*e).to_owned()).collect();
        Self { sb, ledger, alice, state, config, addr, agent: None, envs }
    }

    /// A world whose agent polls `git://127.0.0.1:<port>/ledger.git`: the bare repository is made
    /// under the returned directory (for the caller to serve with `GitDaemon::serve_on`, now or later)
    /// and is the ledger's `origin`.
    pub fn served(port: u16, interval: u64) -> (World, PathBuf) {
        let url = format!("git://127.0.0.1:{port}/ledger.git");
        let w = World::build(Some(&url), &["staging"], interval);
        let bare = w.sb.path("served");
        std::fs::create_dir_all(&bare).expect("mkdir");
        let status = std::process::Command::new("git")
            .args(["init", "-q", "--bare", "-b", "main"])
            .arg(bare.join("ledger.git"))
            .status()
            .expect("git init");
        assert!(status.success());
        w.ledger.git(["remote", "add", "origin", &path_str(&bare.join("ledger.git"))]);
        (w, bare)
    }

    /// Releases `version` to `env` (not checked).
    pub fn release_to(&self, env: &str, version: &str, tar: &Path) -> Output {
        let key = self.alice.secret();
        self.ledger.stele(["release", "--env", env, "--version", version, "--image", &path_str(tar), "--key", &key])
    }

    /// Gives the agent a key of its own (`key_file`) that the policy declares as the agent key of every
    /// environment: its reports are then signed, on `refs/stele/status/<agent-id>`, and verify.
    pub fn with_agent_key(self) -> Self {
        let agent = self.sb.key("agent");
        let alice = path_str(&self.alice.secret);
        let (pubkey, envs) = (path_str(&agent.public), self.envs.join(","));
        self.ledger.stele(["policy", "set-agent", "--pubkey", &pubkey, "--env", &envs, "--key", &alice]).expect(OK);
        let mut config = std::fs::read_to_string(&self.config).expect("read agent.toml");
        config = format!("key_file = \"{}\"\n{config}", path_str(&agent.secret));
        std::fs::write(&self.config, config).expect("write agent.toml");
        self
    }

    /// `env`'s status from the status branch.
    pub fn status_of(&self, env: &str) -> Value {
        let out = self.ledger.stele(["status", "--json", "--env", env]);
        out.expect(OK);
        let v: Value = serde_json::from_str(&out.stdout).expect("status JSON");
        v["environments"].get(0).cloned().unwrap_or(Value::Null)
    }

    /// The pid of instance `id`'s process, if it runs.
    pub fn pid_of(&self, id: &str) -> Option<i32> {
        let want = format!("STELE_INSTANCE_ID={id}");
        live_instances_with(&self.state, |vars| vars.contains(&want)).first().map(|(p, _)| *p)
    }

    /// The pid of the balancer of `env/web`, from the local provider's record.
    pub fn balancer_pid(&self, env: &str) -> i32 {
        let path = self.state.join(format!("local/{env}/groups/web/lb.json"));
        let v: Value = serde_json::from_slice(&std::fs::read(&path).expect("lb.json")).expect("JSON");
        v["process"]["pid"].as_i64().expect("a balancer pid") as i32
    }

    /// Packs the demo app as version `version`; `fail` makes its health check answer 503.
    pub fn image(&self, version: &str, fail: bool) -> PathBuf {
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

    pub fn release(&self, version: &str, tar: &Path, extra: &[&str]) -> Output {
        let mut args =
            vec!["release", "--env", "staging", "--version", version, "--image", tar.to_str().expect("utf-8")];
        args.extend_from_slice(extra);
        let key = self.alice.secret();
        args.extend(["--key", &key]);
        self.ledger.stele(&args)
    }

    pub fn agent_once(&self) -> Output {
        self.ledger.stele(["agent", "--config", &path_str(&self.config), "--once", "--timeout", "90"])
    }

    pub fn spawn_agent(&mut self) {
        let log = std::fs::File::create(self.sb.path("agent.log")).expect("agent log");
        let child = scrubbed(STELE, self.sb.root(), &self.ledger.dir)
            .args(["agent", "--config", &path_str(&self.config)])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the agent");
        self.agent = Some(child);
    }

    pub fn kill_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.sb.path("agent.log")).unwrap_or_default()
    }

    /// This environment's status from the status branch (`stele status --json`).
    pub fn status(&self) -> Value {
        let out = self.ledger.stele(["status", "--json", "--env", "staging"]);
        out.expect(OK);
        let v: Value = serde_json::from_str(&out.stdout).expect("status JSON");
        v["environments"].get(0).cloned().unwrap_or(Value::Null)
    }

    pub fn wait_status(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            // Until the agent first reports `staging` (another environment may be reported first), there
            // is nothing to judge yet.
            let out = self.ledger.stele(["status", "--json", "--env", "staging"]);
            let s = match out.code {
                0 => serde_json::from_str::<Value>(&out.stdout).expect("status JSON")["environments"]
                    .get(0)
                    .cloned()
                    .unwrap_or(Value::Null),
                _ if out.stderr.contains("no status") => Value::Null,
                _ => self.status(),
            };
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
    pub fn live_instances(&self) -> Vec<(i32, String)> {
        live_instances_under(&self.state)
    }

    pub fn get(&self, path: &str) -> Result<String, String> {
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
            for env in &self.envs {
                let _ = p.destroy(&env.parse().expect("env name"));
            }
        }
    }
}

pub fn live_instances_under(state: &Path) -> Vec<(i32, String)> {
    live_instances_with(state, |_| true)
}

/// Live instance processes under `state` whose environment variables pass `keep`.
pub fn live_instances_with(state: &Path, keep: impl Fn(&[String]) -> bool) -> Vec<(i32, String)> {
    let marker = format!("STELE_DATA_DIR={}", path_str(state));
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        let vars: Vec<String> = environ.split(|b| *b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect();
        if !vars.iter().any(|v| v.starts_with(&marker)) || !keep(&vars) {
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

pub fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
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
pub struct Client {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    versions: Arc<Mutex<Vec<String>>>,
    requests: Arc<AtomicUsize>,
    /// When each failed request was sent.
    failed_at: Arc<Mutex<Vec<Instant>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    pub fn start(addr: SocketAddr) -> Self {
        Self::every(addr, Duration::from_millis(20))
    }

    /// A client that sends one request, then sleeps `pause`.
    pub fn every(addr: SocketAddr, pause: Duration) -> Self {
        let failed_at = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let versions = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, failures, versions, requests, failed_at) =
                (stop.clone(), failures.clone(), versions.clone(), requests.clone(), failed_at.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    requests.fetch_add(1, Ordering::SeqCst);
                    let sent = Instant::now();
                    match http_get(addr, "/version") {
                        Ok(body) => {
                            let v = body.split_whitespace().next().unwrap_or_default().to_owned();
                            let mut seen = versions.lock().expect("lock");
                            if seen.last() != Some(&v) {
                                seen.push(v);
                            }
                        }
                        Err(e) => {
                            failures.lock().expect("lock").push(e);
                            failed_at.lock().expect("lock").push(sent);
                        }
                    }
                    std::thread::sleep(pause);
                }
            })
        };
        Self { stop, failures, versions, requests, failed_at, thread: Some(thread) }
    }

    /// When the failed requests so far were sent.
    pub fn failed_at(&self) -> Vec<Instant> {
        self.failed_at.lock().expect("lock").clone()
    }

    /// Stops the client; returns (requests, failures, versions in the order they were seen).
    pub fn finish(mut self) -> (usize, Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("client thread");
        }
        let failures = self.failures.lock().expect("lock").clone();
        let versions = self.versions.lock().expect("lock").clone();
        (self.requests.load(Ordering::SeqCst), failures, versions)
    }
}

pub fn instance_versions(status: &Value) -> Vec<(String, u64, String)> {
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

impl World {
    /// Signs and commits a new spec for staging: an example from examples/environments/ with edits.
    pub fn set_spec(&self, example: &str, edit: impl FnOnce(&mut Value)) {
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
    pub fn traffic(&self) -> Value {
        let path = self.state.join("local/staging/groups/web/traffic.json");
        serde_json::from_slice(&std::fs::read(&path).expect("traffic.json")).expect("JSON")
    }
}
