//! The AWS world for the `aws` provider tests: one moto server per test (moto is the AWS API emulator from
//! PyPI; `scripts/moto-venv.sh` installs it into `.venv-moto/`), the boto3 fixture script
//! `tests/aws/fixture.py` that builds and reads that world, and a fault proxy that answers a seeded fraction of
//! requests with throttling or internal errors instead of passing them on to moto.
//!
//! A missing moto is a test failure whose message names the script that installs it, never a skip.
//!
//! Include it with `#[path = "common/moto.rs"] mod moto;` or as a submodule of `tests/common/`; it uses only
//! std and serde_json. It owns processes and sockets on loopback only and never touches the repository.

// Each test binary uses a different part of these helpers.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The region every client in these tests uses.
pub const REGION: &str = "us-east-1";
/// The account moto answers as (`sts get-caller-identity`, ARNs, image owners).
pub const ACCOUNT_ID: &str = "123456789012";
/// moto accepts any credentials; these fixed ones make a leaked real key impossible to use by accident.
pub const ACCESS_KEY_ID: &str = "testing";
pub const SECRET_ACCESS_KEY: &str = "testing";

/// How long moto may take to import and bind (a cold start on a loaded two-core machine takes a few seconds).
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// Upper bound on one request through the fault proxy or the raw HTTP helper.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// What `Moto::start` prints when moto is not installed.
const INSTALL_HINT: &str = "The aws provider tests need moto: run scripts/moto-venv.sh (scripts/test.sh does) to \
    create .venv-moto/, or set STELE_MOTO_SERVER to a moto_server executable. These tests never skip.";

/// The `moto_server` executable: `$STELE_MOTO_SERVER`, or `.venv-moto/bin/moto_server` at the repository root.
pub fn moto_server_path() -> PathBuf {
    match std::env::var_os("STELE_MOTO_SERVER") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-moto/bin/moto_server"),
    }
}

/// The boto3 fixture script.
pub fn fixture_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aws/fixture.py")
}

/// The environment a child process (the `stele` binary, a fixture) needs to talk to the AWS endpoint at
/// `endpoint` and nowhere else: endpoint, fake credentials, region, no instance metadata lookups, and empty
/// shared config and credential files so that a developer's `~/.aws` cannot leak in.
pub fn aws_env(endpoint: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
        ("AWS_REGION", REGION),
        ("AWS_DEFAULT_REGION", REGION),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Points `cmd` at `endpoint`: removes every inherited `AWS_*` variable (a profile, a session token or a
/// per-service `AWS_ENDPOINT_URL_EC2` would otherwise win) and sets `aws_env(endpoint)`.
pub fn configure_aws(cmd: &mut Command, endpoint: &str) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(aws_env(endpoint));
}

/// A moto server on a loopback port of its own, killed and reaped on drop. Each test starts its own, so no
/// test sees another's resources.
pub struct Moto {
    /// `http://127.0.0.1:PORT`, the value of `AWS_ENDPOINT_URL` for clients.
    pub endpoint: String,
    pub port: u16,
    server: PathBuf,
    child: Child,
    log: Arc<Mutex<String>>,
    drain: Option<JoinHandle<()>>,
}

impl Moto {
    /// Starts moto and waits until it answers. Panics (a loud test failure) when moto is not installed or
    /// does not come up; the message says how to install it.
    pub fn start() -> Moto {
        let server = moto_server_path();
        let runnable = std::fs::metadata(&server).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        if !matches!(runnable, Ok(true)) {
            panic!("moto_server not found or not executable at {}.\n{INSTALL_HINT}", server.display());
        }
        match Moto::start_at(&server) {
            Ok(moto) => moto,
            Err(e) => panic!("moto did not start from {}: {e}\n{INSTALL_HINT}", server.display()),
        }
    }

    /// Starts `server -H 127.0.0.1 -p 0`: the kernel picks the port and moto (werkzeug) logs it, so two tests
    /// can never race for one port. Then polls `GET /moto-api/` until it answers 200.
    fn start_at(server: &Path) -> Result<Moto, String> {
        let mut child = Command::new(server)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .env("PYTHONUNBUFFERED", "1")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", server.display()))?;
        let stderr = child.stderr.take().expect("stderr was piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (port_tx, port_rx) = mpsc::channel();
        // moto logs every request on stderr: keep draining it so that it never blocks on a full pipe.
        let drain = {
            let log = Arc::clone(&log);
            thread::spawn(move || {
                let mut port_tx = Some(port_tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(port) = listening_port(&line) {
                        if let Some(tx) = port_tx.take() {
                            let _ = tx.send(port);
                        }
                    }
                    let mut log = log.lock().expect("moto log lock");
                    log.push_str(&line);
                    log.push('\n');
                }
            })
        };
        let mut moto =
            Moto { endpoint: String::new(), port: 0, server: server.to_path_buf(), child, log, drain: Some(drain) };
        let deadline = Instant::now() + START_TIMEOUT;
        let port = match port_rx.recv_timeout(START_TIMEOUT) {
            Ok(port) => port,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = moto.child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                return Err(format!("it exited ({status}) before listening; its output:\n{}", moto.log()));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!("it did not listen within {START_TIMEOUT:?}; its output:\n{}", moto.log()));
            }
        };
        moto.port = port;
        moto.endpoint = format!("http://127.0.0.1:{port}");
        loop {
            match http(&moto.endpoint, "GET", "/moto-api/", &[], b"") {
                Ok(response) if response.status == 200 => return Ok(moto),
                _ if Instant::now() > deadline => {
                    return Err(format!("it did not answer on {} in time; its output:\n{}", moto.endpoint, moto.log()))
                }
                _ => {}
            }
            if let Ok(Some(status)) = moto.child.try_wait() {
                return Err(format!("it exited ({status}) while starting; its output:\n{}", moto.log()));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything moto printed so far (startup lines, then one line per request), for failure messages.
    pub fn log(&self) -> String {
        self.log.lock().expect("moto log lock").clone()
    }

    /// The variables a child process needs to talk to this moto; see `aws_env`.
    pub fn env(&self) -> Vec<(String, String)> {
        aws_env(&self.endpoint)
    }

    /// Forgets every resource (moto's `/moto-api/reset`).
    pub fn reset(&self) {
        let response = http(&self.endpoint, "POST", "/moto-api/reset", &[], b"").expect("moto reset request");
        assert_eq!(response.status, 200, "moto reset answered {}: {}", response.status, response.text());
    }

    /// The interpreter that runs fixture.py: `$STELE_MOTO_PYTHON`, else the `python` beside `moto_server`
    /// (the venv's, which has boto3), else `python3`.
    pub fn python(&self) -> PathBuf {
        if let Some(python) = std::env::var_os("STELE_MOTO_PYTHON").filter(|p| !p.is_empty()) {
            return PathBuf::from(python);
        }
        let beside = self.server.with_file_name("python");
        if beside.is_file() {
            beside
        } else {
            PathBuf::from("python3")
        }
    }

    /// Runs `fixture.py --endpoint <this moto> ARGS` and returns the JSON it printed; panics when it fails.
    pub fn fixture(&self, args: &[&str]) -> Value {
        self.fixture_via(&self.endpoint, args)
    }

    /// The same through another endpoint, e.g. a `FaultProxy` in front of this moto. Global options of the
    /// script (`--no-backoff`, `--max-attempts N`) go before the subcommand.
    pub fn fixture_via(&self, endpoint: &str, args: &[&str]) -> Value {
        self.try_fixture_via(endpoint, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The same, returning the failure (the script's stderr, which holds the AWS error code as JSON).
    pub fn try_fixture_via(&self, endpoint: &str, args: &[&str]) -> Result<Value, String> {
        let mut cmd = Command::new(self.python());
        cmd.arg(fixture_script()).arg("--endpoint").arg(endpoint).args(args).stdin(Stdio::null());
        configure_aws(&mut cmd, endpoint);
        let out = cmd.output().map_err(|e| format!("cannot run {}: {e}", self.python().display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(format!(
                "fixture.py {args:?} against {endpoint} failed ({}):\n{stderr}\n--- moto log tail ---\n{}",
                out.status,
                tail(&self.log(), 20)
            ));
        }
        serde_json::from_str(&stdout).map_err(|e| format!("fixture.py {args:?} printed no JSON ({e}):\n{stdout}"))
    }

    /// `fixture.py setup` with `digests[i]` as the digest of AMI `app-{i+1}`; see tests/aws/fixture.py for the
    /// keys of the result.
    pub fn setup(&self, digests: &[&str]) -> Value {
        self.setup_in("10.42", digests)
    }

    /// `setup` with the VPC at `net`.0.0/16 (`127.77` puts instances' private IPs on loopback).
    pub fn setup_in(&self, net: &str, digests: &[&str]) -> Value {
        let pairs: Vec<String> = digests.iter().enumerate().map(|(i, d)| format!("{}={d}", i + 1)).collect();
        let mut args = vec!["setup", "--net", net];
        for pair in &pairs {
            args.extend(["--digest", pair.as_str()]);
        }
        self.fixture(&args)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
    }
}

/// The port in werkzeug's startup line ` * Running on http://127.0.0.1:PORT`.
fn listening_port(line: &str) -> Option<u16> {
    let rest = &line[line.find("Running on http://127.0.0.1:")? + "Running on http://127.0.0.1:".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|&port| port != 0)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One HTTP response, as read by `http`.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request on a fresh connection with `Connection: close` to `endpoint` (`http://host:port`).
/// Enough for probing moto and driving the fault proxy with hand-made requests; not a general client.
pub fn http(
    endpoint: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<HttpResponse> {
    let addr = socket_addr(endpoint)?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn socket_addr(endpoint: &str) -> io::Result<SocketAddr> {
    let authority = endpoint.strip_prefix("http://").unwrap_or(endpoint).trim_end_matches('/');
    authority
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no address for {endpoint}")))
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn parse_response(raw: &[u8]) -> io::Result<HttpResponse> {
    let end = find(raw, b"\r\n\r\n").ok_or_else(|| invalid("response without a complete head"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| invalid("response head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect::<Vec<_>>();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked { read_chunked(&mut BufReader::new(rest))? } else { rest.to_vec() };
    Ok(HttpResponse { status, headers, body })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A loopback HTTP/1.1 proxy in front of `upstream` that answers a seeded, deterministic fraction of requests
/// with an AWS throttling error or an internal error (alternating, throttling first) and forwards the rest.
///
/// Every response carries `Connection: close` and every connection serves one request, so a client never
/// reuses a connection the proxy is about to close. Faults are shaped as the real services send them, so an
/// SDK classifies them as it would in production:
/// - EC2 (`ec2` in the SigV4 credential scope): `503 RequestLimitExceeded` and `500 InternalError`, in EC2's
///   `<Response><Errors><Error>` body;
/// - every other Query service (Auto Scaling, ELBv2, STS): `400 Throttling` ("Rate exceeded") and
///   `500 InternalFailure`, in the `<ErrorResponse><Error>` body.
///
/// The n-th request to arrive draws the n-th number of the seeded generator, so a client that sends one
/// request at a time sees the same faults on every run.
///
/// In front of the GCP fake (tests/common/gcp.rs), `start_shaped(.., FaultShape::Google)` shapes the faults
/// as Google APIs send them instead: `429 RESOURCE_EXHAUSTED` (reason `rateLimitExceeded`) and
/// `503 UNAVAILABLE` (reason `backendError`), in Google's JSON error body.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`, to use instead of moto's endpoint.
    pub endpoint: String,
    addr: SocketAddr,
    state: Arc<ProxyState>,
    accept: Option<JoinHandle<()>>,
}

/// Whose error shape the proxy's faults take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultShape {
    /// AWS Query and EC2 services, chosen per request by the SigV4 credential scope.
    Aws,
    /// Google APIs (Compute Engine): JSON `{"error": {"code", "message", "errors", "status"}}`.
    Google,
}

/// What the proxy did with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxiedRequest {
    /// The service of the SigV4 credential scope (`ec2`, `autoscaling`, `elasticloadbalancing`, `sts`), or
    /// empty for an unsigned request. With `FaultShape::Google`: `compute` for a path under `/compute/`.
    pub service: String,
    /// The Query API `Action`, or empty. With `FaultShape::Google`: the HTTP method and path (no query).
    pub action: String,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Passed to upstream; upstream's status.
    Forwarded(u16),
    /// Answered with the service's throttling error.
    Throttled,
    /// Answered with the service's internal error.
    InternalError,
    /// Chosen for forwarding but upstream could not be reached; answered 502.
    UpstreamFailed,
}

struct ProxyState {
    upstream: SocketAddr,
    shape: FaultShape,
    fault_rate: AtomicU64,
    decider: Mutex<Decider>,
    forwarded: AtomicUsize,
    stop: AtomicBool,
    requests: Mutex<Vec<ProxiedRequest>>,
}

/// The seeded draws and the fault count, under one lock so that the n-th request always gets the n-th draw.
struct Decider {
    rng: SplitMix64,
    faults: usize,
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast and well distributed; enough for choosing faults.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream` (`http://127.0.0.1:PORT`) that faults each request with
    /// probability `fault_rate` (0.0 to 1.0), drawn from a generator seeded with `seed`.
    pub fn start(upstream: &str, fault_rate: f64, seed: u64) -> FaultProxy {
        FaultProxy::start_shaped(upstream, fault_rate, seed, FaultShape::Aws)
    }

    /// `start` with the faults in `shape`'s error shape.
    pub fn start_shaped(upstream: &str, fault_rate: f64, seed: u64, shape: FaultShape) -> FaultProxy {
        assert!((0.0..=1.0).contains(&fault_rate), "fault rate {fault_rate} is not in [0, 1]");
        let upstream = socket_addr(upstream).unwrap_or_else(|e| panic!("fault proxy upstream {upstream:?}: {e}"));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy on loopback");
        let addr = listener.local_addr().expect("fault proxy address");
        let state = Arc::new(ProxyState {
            upstream,
            shape,
            fault_rate: AtomicU64::new(fault_rate.to_bits()),
            decider: Mutex::new(Decider { rng: SplitMix64(seed), faults: 0 }),
            forwarded: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            requests: Mutex::new(Vec::new()),
        });
        let accept = {
            let state = Arc::clone(&state);
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if state.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let state = Arc::clone(&state);
                    // One thread per connection: requests are few and each connection carries one.
                    thread::spawn(move || {
                        let _ = serve(&state, stream);
                    });
                }
            })
        };
        FaultProxy { endpoint: format!("http://{addr}"), addr, state, accept: Some(accept) }
    }

    /// Requests answered with a fault so far.
    pub fn faults(&self) -> usize {
        self.state.decider.lock().expect("fault proxy lock").faults
    }

    /// Requests passed to upstream and relayed so far.
    pub fn forwarded(&self) -> usize {
        self.state.forwarded.load(Ordering::SeqCst)
    }

    /// Changes the fault rate for the requests that arrive from now on (the seeded sequence goes on).
    pub fn set_fault_rate(&self, fault_rate: f64) {
        assert!((0.0..=1.0).contains(&fault_rate), "fault rate {fault_rate} is not in [0, 1]");
        self.state.fault_rate.store(fault_rate.to_bits(), Ordering::SeqCst);
    }

    /// Every request so far, in the order the proxy answered them.
    pub fn requests(&self) -> Vec<ProxiedRequest> {
        self.state.requests.lock().expect("fault proxy log lock").clone()
    }

    /// The variables a child process needs to talk to AWS through this proxy; see `aws_env`.
    pub fn env(&self) -> Vec<(String, String)> {
        aws_env(&self.endpoint)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag; connections in flight finish on their own.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// A request as read from a client, with its body already de-chunked.
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The service from `Authorization: AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request, ..`.
    fn service(&self) -> String {
        let Some(auth) = self.header("authorization") else { return String::new() };
        let Some(at) = auth.find("Credential=") else { return String::new() };
        let scope = auth[at + "Credential=".len()..].split([',', ' ']).next().unwrap_or_default();
        scope.split('/').nth(3).unwrap_or_default().to_string()
    }

    /// The Query API action, from the form body or the query string.
    fn action(&self) -> String {
        let query = self.target.split_once('?').map(|(_, q)| q).unwrap_or_default();
        let body = String::from_utf8_lossy(&self.body);
        [body.as_ref(), query]
            .iter()
            .flat_map(|form| form.split('&'))
            .find_map(|pair| pair.strip_prefix("Action="))
            .unwrap_or_default()
            .to_string()
    }
}

fn serve(state: &ProxyState, mut client: TcpStream) -> io::Result<()> {
    client.set_read_timeout(Some(IO_TIMEOUT))?;
    client.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(client.try_clone()?);
    // A client may open a connection and close it unused; that is no request.
    let Some(request) = read_request(&mut reader, &mut client)? else { return Ok(()) };
    let (service, action) = match state.shape {
        FaultShape::Aws => (request.service(), request.action()),
        FaultShape::Google => {
            let path = request.target.split('?').next().unwrap_or_default();
            let service = if path.starts_with("/compute/") { "compute" } else { "" };
            (service.to_string(), format!("{} {path}", request.method))
        }
    };
    let fault = {
        let mut decider = state.decider.lock().expect("fault proxy lock");
        let rate = f64::from_bits(state.fault_rate.load(Ordering::SeqCst));
        if decider.rng.next_f64() < rate {
            decider.faults += 1;
            Some(if decider.faults % 2 == 1 { Outcome::Throttled } else { Outcome::InternalError })
        } else {
            None
        }
    };
    let (outcome, response) = match fault {
        Some(kind) => (
            kind,
            match state.shape {
                FaultShape::Aws => fault_response(kind, &service),
                FaultShape::Google => google_fault_response(kind),
            },
        ),
        None => match forward(state.upstream, &request) {
            Ok((status, response)) => {
                state.forwarded.fetch_add(1, Ordering::SeqCst);
                (Outcome::Forwarded(status), response)
            }
            Err(e) => (Outcome::UpstreamFailed, simple_response(502, "Bad Gateway", &format!("upstream: {e}\n"))),
        },
    };
    state.requests.lock().expect("fault proxy log lock").push(ProxiedRequest { service, action, outcome });
    client.write_all(&response)?;
    client.flush()?;
    client.shutdown(Shutdown::Write)
}

/// Reads one request: head, then a `Content-Length` or chunked body (answering `Expect: 100-continue`).
/// Reading the whole body before answering matters: closing a socket with unread input resets it, and the
/// client would see a reset instead of the fault.
fn read_request(reader: &mut impl BufRead, client: &mut TcpStream) -> io::Result<Option<Request>> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return if head.is_empty() { Ok(None) } else { Err(invalid("connection closed inside a request head")) };
        }
        if line == b"\r\n" || line == b"\n" {
            if head.is_empty() {
                continue; // Tolerated stray CRLF before a request line.
            }
            break;
        }
        head.extend_from_slice(&line);
        if head.len() > 64 * 1024 {
            return Err(invalid("request head over 64 KiB"));
        }
    }
    let head = String::from_utf8(head).map_err(|_| invalid("request head is not UTF-8"))?;
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(invalid(format!("bad request line {request_line:?}")));
    };
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut request = Request { method: method.to_string(), target: target.to_string(), headers, body: Vec::new() };
    if request.header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    if request.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        request.body = read_chunked(reader)?;
    } else if let Some(length) = request.header("content-length") {
        let length: usize = length.parse().map_err(|_| invalid(format!("bad Content-Length {length:?}")))?;
        request.body = vec![0; length];
        reader.read_exact(&mut request.body)?;
    }
    Ok(Some(request))
}

fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let size = line.trim().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size, 16).map_err(|_| invalid(format!("bad chunk size {line:?}")))?;
        if size == 0 {
            // Trailers, up to the empty line (or the end of a response read to its end).
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        line.clear();
        reader.read_line(&mut line)?;
    }
}

/// Hop-by-hop and framing headers that the proxy sets itself.
const HOP_HEADERS: [&str; 8] =
    ["connection", "keep-alive", "proxy-connection", "te", "upgrade", "expect", "transfer-encoding", "content-length"];

/// Sends `request` to `upstream` with `Connection: close`, reads the whole response, and returns its status
/// and the bytes to relay: upstream's head with `Connection: close` instead of its connection headers, then
/// the body exactly as upstream framed it.
fn forward(upstream: SocketAddr, request: &Request) -> io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&upstream, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = format!("{} {} HTTP/1.1\r\n", request.method, request.target);
    for (name, value) in &request.headers {
        if !HOP_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", request.body.len()));
    stream.write_all(head.as_bytes())?;
    stream.write_all(&request.body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let end = find(&raw, b"\r\n\r\n").ok_or_else(|| invalid("upstream response without a complete head"))?;
    let upstream_head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = upstream_head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad upstream status line {status_line:?}")))?;
    let mut out = format!("{status_line}\r\n");
    for line in lines {
        let name = line.split(':').next().unwrap_or_default().trim().to_ascii_lowercase();
        if !matches!(name.as_str(), "connection" | "keep-alive" | "proxy-connection") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut relayed = out.into_bytes();
    relayed.extend_from_slice(&raw[end + 4..]);
    Ok((status, relayed))
}

/// The error a real AWS service sends for `kind`, shaped for the service's protocol.
fn fault_response(kind: Outcome, service: &str) -> Vec<u8> {
    static NEXT_ID: AtomicUsize = AtomicUsize::new(1);
    let request_id = format!("stele-fault-{:08}", NEXT_ID.fetch_add(1, Ordering::SeqCst));
    let throttled = kind == Outcome::Throttled;
    let (status, reason, body) = if service == "ec2" {
        let (status, reason, code, message) = if throttled {
            (503, "Service Unavailable", "RequestLimitExceeded", "Request limit exceeded.")
        } else {
            (500, "Internal Server Error", "InternalError", "An internal error has occurred.")
        };
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code>\
             <Message>{message}</Message></Error></Errors><RequestID>{request_id}</RequestID></Response>"
        );
        (status, reason, body)
    } else {
        let (status, reason, kind, code, message) = if throttled {
            (400, "Bad Request", "Sender", "Throttling", "Rate exceeded")
        } else {
            (500, "Internal Server Error", "Receiver", "InternalFailure", "We encountered an internal error.")
        };
        let body = format!(
            "<ErrorResponse><Error><Type>{kind}</Type><Code>{code}</Code><Message>{message}</Message></Error>\
             <RequestId>{request_id}</RequestId></ErrorResponse>"
        );
        (status, reason, body)
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nx-amzn-RequestId: \
         {request_id}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The error a Google API sends for `kind`: rate limiting (429) or a transient outage (503).
fn google_fault_response(kind: Outcome) -> Vec<u8> {
    let (status, reason_phrase, code, domain, reason, message) = if kind == Outcome::Throttled {
        (
            429,
            "Too Many Requests",
            "RESOURCE_EXHAUSTED",
            "usageLimits",
            "rateLimitExceeded",
            "Quota exceeded for quota metric 'Queries' and limit 'Queries per minute' of service \
             'compute.googleapis.com'.",
        )
    } else {
        (503, "Service Unavailable", "UNAVAILABLE", "global", "backendError", "The service is currently unavailable.")
    };
    let body = serde_json::json!({
        "error": {
            "code": status,
            "message": message,
            "errors": [{"message": message, "domain": domain, "reason": reason}],
            "status": code,
        }
    })
    .to_string();
    format!(
        "HTTP/1.1 {status} {reason_phrase}\r\nContent-Type: application/json; charset=UTF-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn simple_response(status: u16, reason: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
