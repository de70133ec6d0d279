//! The GCP world for the `gcp` provider tests: one loopback Compute Engine fake per test
//! (tests/gcp/fake.py, run by the interpreter of `.venv-gcp/`, which `scripts/gcp-venv.sh` creates with the
//! compute v1 discovery document the fake validates against), its control API, raw HTTP calls to it, and
//! the fault proxy of tests/common/moto.rs with Google-shaped faults.
//!
//! A missing venv or discovery document is a test failure whose message names the script that installs it,
//! never a skip. It owns processes and sockets on loopback only and never touches the repository.

// Not every test binary that includes tests/common uses these.
#[allow(unused_imports)]
pub use super::moto::{http, FaultProxy, FaultShape, Outcome};

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// The project, region and zone the tests use (any names work; the fake has no catalogue of them).
pub const PROJECT: &str = "stele-test";
pub const REGION: &str = "us-central1";
pub const ZONE: &str = "us-central1-a";
/// The project of the tests' release images.
pub const IMAGES: &str = "stele-images";
/// What the operator made before Stele (`GcpFake::seed_operator`): the base instance template, the health
/// check, the URL map, and the backend service the map sends to until Stele's first weighted release.
pub const BASE_TEMPLATE: &str = "web-base";
pub const HEALTH_CHECK: &str = "web-hc";
pub const URL_MAP: &str = "web-map";
pub const OPERATOR_SERVICE: &str = "web-old";

/// The bearer token every raw call sends; the fake accepts any and logs its start.
pub const TOKEN: &str = "stele-fake-token";

/// How long the fake may take to import and bind on a loaded two-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const INSTALL_HINT: &str = "The gcp provider tests need the compute v1 discovery document: run \
    scripts/gcp-venv.sh (scripts/test.sh does) to create .venv-gcp/, or set STELE_GCP_PYTHON to a Python \
    with google-api-python-client. These tests never skip.";

/// The interpreter that runs the fake: `$STELE_GCP_PYTHON`, else `.venv-gcp/bin/python`.
pub fn python_path() -> PathBuf {
    match std::env::var_os("STELE_GCP_PYTHON") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-gcp/bin/python"),
    }
}

/// tests/gcp/fake.py.
pub fn fake_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gcp/fake.py")
}

/// One API call the fake served, from its call log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The discovery method id (`compute.regionInstanceGroupManagers.resize`), or empty when the request
    /// matched no method.
    pub method: String,
    pub http_method: String,
    pub path: String,
    pub status: u16,
    /// The call's `x-goog-api-client` header: Google's SDKs send it, a test's raw calls do not.
    pub client: String,
}

/// A fake on a loopback port of its own, killed and reaped on drop.
pub struct GcpFake {
    /// `http://127.0.0.1:PORT`: the endpoint for `with_endpoint(...)` (the API is under `/compute/v1/`).
    pub endpoint: String,
    pub port: u16,
    child: Child,
    log: Arc<Mutex<String>>,
    drains: Vec<JoinHandle<()>>,
}

impl GcpFake {
    /// Starts the fake from `.venv-gcp` (see `python_path`) and waits until it answers; panics (a loud test
    /// failure) when it cannot, with the install hint.
    pub fn start() -> GcpFake {
        GcpFake::start_with(&python_path(), &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `start` with `--allow-anonymous`: calls without a bearer token are served too, as the provider's
    /// `GcpCredentials::Anonymous` sends none (Application Default Credentials need Google's token
    /// service, which a loopback test cannot reach).
    pub fn start_anonymous() -> GcpFake {
        GcpFake::start_with(&python_path(), &["--allow-anonymous"]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `python tests/gcp/fake.py --port 0 EXTRA...`; the error says what went wrong and how to fix it.
    pub fn start_with(python: &Path, extra: &[&str]) -> Result<GcpFake, String> {
        if !python.is_file() {
            return Err(format!("no Python for the GCP fake at {}.\n{INSTALL_HINT}", python.display()));
        }
        let mut child = Command::new(python)
            .arg(fake_script())
            .args(["--port", "0"])
            .args(extra)
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}\n{INSTALL_HINT}", python.display()))?;
        let log = Arc::new(Mutex::new(String::new()));
        let (port_tx, port_rx) = mpsc::channel();
        let mut drains = Vec::new();
        let stdout = child.stdout.take().expect("stdout was piped");
        let stderr = child.stderr.take().expect("stderr was piped");
        for (stream, tx) in [
            (Box::new(stdout) as Box<dyn std::io::Read + Send>, Some(port_tx)),
            (Box::new(stderr) as Box<dyn std::io::Read + Send>, None),
        ] {
            let log = Arc::clone(&log);
            drains.push(thread::spawn(move || {
                let mut tx = tx;
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if let Some(port) = line
                        .strip_prefix("gcp fake listening on http://127.0.0.1:")
                        .and_then(|p| p.trim().parse::<u16>().ok())
                    {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(port);
                        }
                    }
                    let mut log = log.lock().expect("gcp fake log lock");
                    log.push_str(&line);
                    log.push('\n');
                }
            }));
        }
        let mut fake = GcpFake { endpoint: String::new(), port: 0, child, log, drains };
        match port_rx.recv_timeout(START_TIMEOUT) {
            Ok(port) => {
                fake.port = port;
                fake.endpoint = format!("http://127.0.0.1:{port}");
                Ok(fake)
            }
            Err(_) => {
                let _ = fake.child.kill();
                let status = fake.child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                for drain in fake.drains.drain(..) {
                    let _ = drain.join();
                }
                Err(format!(
                    "the GCP fake did not start ({status}) from {} {}; its output:\n{}\n{INSTALL_HINT}",
                    python.display(),
                    fake_script().display(),
                    fake.log()
                ))
            }
        }
    }

    /// Everything the fake printed so far (one line per request), for failure messages.
    pub fn log(&self) -> String {
        self.log.lock().expect("gcp fake log lock").clone()
    }

    /// A raw API call with the bearer token through `endpoint` (this fake or a proxy in front of it):
    /// `path` is absolute (`/compute/v1/projects/...`). Returns the status and the JSON body.
    pub fn call_via(endpoint: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let auth = format!("Bearer {TOKEN}");
        let data = body.map(Value::to_string).unwrap_or_default();
        let mut headers = vec![("Authorization", auth.as_str())];
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        let response = http(endpoint, method, path, &headers, data.as_bytes())
            .unwrap_or_else(|e| panic!("{method} {path} to {endpoint}: {e}"));
        let json = serde_json::from_slice(&response.body)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {}", response.text()));
        (response.status, json)
    }

    /// `call_via` this fake.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        GcpFake::call_via(&self.endpoint, method, path, body)
    }

    /// A control API call (`/_fake/...`) that must answer 200.
    pub fn control(&self, method: &str, path: &str, body: Value) -> Value {
        let (status, out) = self.call(method, path, Some(&body));
        assert_eq!(status, 200, "control {method} {path} {body} answered {status}: {out:#}\n{}", self.log());
        out
    }

    /// Forgets every resource, operation, instance, injected failure and logged call.
    pub fn reset(&self) {
        self.control("POST", "/_fake/reset", json!({}));
    }

    /// Sets fake options: `operationPolls`, `instanceIpPrefix`, `requireAuth`.
    pub fn config(&self, options: Value) -> Value {
        self.control("POST", "/_fake/config", options)
    }

    /// Seeds image `project/name` with `status` (READY, PENDING, FAILED) and `labels`.
    pub fn seed_image(&self, project: &str, name: &str, status: &str, labels: &[(&str, &str)]) -> Value {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        self.control(
            "POST",
            "/_fake/images",
            json!({"project": project, "name": name, "status": status, "labels": labels}),
        )
    }

    /// Seeds image `project/name` labelled with the digest `hex` (64 hex digits) the way Stele reads it:
    /// `stele-blake3-hi` and `stele-blake3-lo`, its two halves (a label value holds at most 63 characters).
    pub fn seed_digest_image(&self, project: &str, name: &str, status: &str, hex: &str) -> Value {
        self.seed_image(project, name, status, &[("stele-blake3-hi", &hex[..32]), ("stele-blake3-lo", &hex[32..])])
    }

    /// A mutation through the API (not the provider), polled to DONE without error.
    pub fn done(&self, method: &str, path: &str, body: Value) -> Value {
        let (status, op) = self.call(method, path, Some(&body));
        assert_eq!(status, 200, "{method} {path}: {op:#}\n{}", self.log());
        let op = self.poll_until_done(&op, 10);
        assert!(op.get("error").is_none(), "{method} {path} failed: {op:#}");
        op
    }

    /// The operator's side of an environment before Stele: instance template `BASE_TEMPLATE` (e2-small,
    /// booting debian-12, label team=web), HTTP health check `HEALTH_CHECK` on 8080, backend service
    /// `OPERATOR_SERVICE`, and URL map `URL_MAP` sending everything to it. The calls log is cleared
    /// afterwards, so that it holds only what comes next.
    pub fn seed_operator(&self) {
        self.done(
            "POST",
            &api_path("global/instanceTemplates"),
            json!({"name": BASE_TEMPLATE, "properties": {"machineType": "e2-small",
                "disks": [{"boot": true, "autoDelete": true,
                    "initializeParams": {"sourceImage": "projects/debian-cloud/global/images/debian-12"}}],
                "networkInterfaces": [{"network": "global/networks/default"}],
                "labels": {"team": "web"}}}),
        );
        self.done(
            "POST",
            &api_path("global/healthChecks"),
            json!({"name": HEALTH_CHECK, "type": "HTTP", "httpHealthCheck": {"port": 8080, "requestPath": "/healthz"}}),
        );
        self.done("POST", &api_path("global/backendServices"), json!({"name": OPERATOR_SERVICE}));
        self.done(
            "POST",
            &api_path("global/urlMaps"),
            json!({"name": URL_MAP, "defaultService": format!("global/backendServices/{OPERATOR_SERVICE}")}),
        );
        self.clear_calls();
    }

    /// Sets an instance's health (name or URL), or clears the override with `None`.
    pub fn set_health(&self, instance: &str, state: Option<&str>) {
        self.control("POST", "/_fake/health", json!({"instance": instance, "state": state}));
    }

    /// Makes the instances of `template` (name or URL) never become healthy (a failing canary), or not.
    pub fn set_failing_template(&self, template: &str, failing: bool) {
        self.control("POST", "/_fake/failing-template", json!({"template": template, "failing": failing}));
    }

    /// Makes the next call of `method` (a discovery method id) fail with `code`/`reason`: its operation
    /// ends DONE with the error, or with `sync` the call itself is answered with it. Nothing is applied.
    pub fn fail_next(&self, method: &str, code: u16, reason: &str, sync: bool) {
        self.control(
            "POST",
            "/_fake/fail-next",
            json!({"method": method, "code": code, "reason": reason, "sync": sync}),
        );
    }

    /// Every API call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        let (status, out) = self.call("GET", "/_fake/calls", None);
        assert_eq!(status, 200, "{out:#}");
        out["calls"]
            .as_array()
            .expect("calls is a list")
            .iter()
            .map(|c| Call {
                method: c["method"].as_str().unwrap_or_default().to_string(),
                http_method: c["httpMethod"].as_str().unwrap_or_default().to_string(),
                path: c["path"].as_str().unwrap_or_default().to_string(),
                status: c["status"].as_u64().unwrap_or_default() as u16,
                client: c["client"].as_str().unwrap_or_default().to_string(),
            })
            .collect()
    }

    /// The number of calls per method id.
    pub fn call_counts(&self) -> BTreeMap<String, usize> {
        count_by_method(self.calls())
    }

    /// The number of calls per method id made through a Google SDK (the provider's, not the test's own
    /// raw reads), e.g. for API calls per rollout.
    pub fn sdk_call_counts(&self) -> BTreeMap<String, usize> {
        count_by_method(self.calls().into_iter().filter(|c| !c.client.is_empty()))
    }

    /// Every fake instance: `name`, `zone`, `template`, `mig`, `ip`, `health`, `selfLink`, ...
    pub fn instances(&self) -> Vec<Value> {
        self.instances_answer()["instances"].as_array().cloned().unwrap_or_default()
    }

    /// How many instances the fake ever created (deleted ones included).
    pub fn instances_created(&self) -> usize {
        self.instances_answer()["created"].as_u64().expect("created is a count") as usize
    }

    /// `GET /_fake/instances`: `{"instances": [...], "created": N}`.
    fn instances_answer(&self) -> Value {
        let (status, out) = self.call("GET", "/_fake/instances", None);
        assert_eq!(status, 200, "{out:#}");
        out
    }

    /// Forgets the calls logged so far.
    pub fn clear_calls(&self) {
        self.control("POST", "/_fake/calls/clear", json!({}));
    }

    /// Polls an Operation (by its selfLink) with `get` until DONE, at most `polls` times; returns it.
    pub fn poll_until_done(&self, operation: &Value, polls: usize) -> Value {
        let link = operation["selfLink"].as_str().unwrap_or_else(|| panic!("no selfLink in {operation:#}"));
        let path = format!("/compute/v1/{}", link.split("/compute/v1/").nth(1).expect("a compute selfLink"));
        let mut op = operation.clone();
        for _ in 0..polls {
            if op["status"] == "DONE" {
                return op;
            }
            let (status, next) = self.call("GET", &path, None);
            assert_eq!(status, 200, "{next:#}");
            op = next;
        }
        assert_eq!(op["status"], "DONE", "operation not DONE after {polls} polls: {op:#}");
        op
    }
}

impl Drop for GcpFake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for drain in self.drains.drain(..) {
            let _ = drain.join();
        }
    }
}

/// `/compute/v1/projects/{PROJECT}/{rest}`.
pub fn api_path(rest: &str) -> String {
    format!("/compute/v1/projects/{PROJECT}/{rest}")
}

/// How many of `calls` each method id has.
fn count_by_method(calls: impl IntoIterator<Item = Call>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for call in calls {
        *counts.entry(call.method).or_insert(0) += 1;
    }
    counts
}
