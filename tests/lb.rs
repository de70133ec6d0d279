//! The local load balancer (`stele lb --config FILE`) as the agent drives it: the real binary, real
//! TCP backends on loopback (threads answering a fixed HTTP response that names them), the config
//! rewritten atomically with `write_config`, and the report read back with `read_report`.
//!
//! Every balancer is killed when its test ends, passed or failed. Nothing here is skipped: a missing
//! loopback interface or a balancer that does not come up within seconds fails the test.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use stele::lb::{read_report, report_path, write_config, Backend, LbConfig, LbReport};
use tempfile::TempDir;

/// How long anything the balancer is expected to do may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// A loopback port that nothing listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("loopback is available");
    listener.local_addr().expect("a bound address").port()
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A gate that `GET /slow` requests wait at until the test opens it.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn wait(&self) {
        let mut open = self.open.lock().expect("gate lock");
        while !*open {
            open = self.opened.wait(open).expect("gate lock");
        }
    }

    fn open(&self) {
        *self.open.lock().expect("gate lock") = true;
        self.opened.notify_all();
    }
}

/// A tiny HTTP server that answers every request with its own name as the body, one thread per
/// connection; `GET /slow` is answered only once the gate is open.
struct Upstream {
    name: String,
    addr: SocketAddr,
    gate: Arc<Gate>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Upstream {
    fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("loopback is available");
        let addr = listener.local_addr().expect("a bound address");
        let gate = Arc::new(Gate::default());
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (name, gate, stop) = (name.to_owned(), Arc::clone(&gate), Arc::clone(&stop));
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let (name, gate) = (name.clone(), Arc::clone(&gate));
                    thread::spawn(move || answer(stream, &name, &gate));
                }
            })
        };
        Upstream { name: name.to_owned(), addr, gate, stop, acceptor: Some(acceptor) }
    }

    fn backend(&self, weight: u32) -> Backend {
        Backend { id: self.name.clone(), addr: self.addr, weight }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.gate.open();
        // One more connection wakes the acceptor so that it sees the stop flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Reads the request head, waits at the gate for `/slow`, answers with `name` and closes.
fn answer(mut stream: TcpStream, name: &str, gate: &Gate) {
    let _ = stream.set_read_timeout(Some(PATIENCE));
    let mut head = Vec::new();
    let mut buf = [0_u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    if head.starts_with(b"GET /slow ") {
        gate.wait();
    }
    let body = format!("{name}\n");
    let response =
        format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let _ = stream.write_all(response.as_bytes());
}

/// Sends `GET path` on a new connection to `addr` and returns the response body, or why there was none.
/// A balancer that keeps the connection open without answering fails the test instead.
fn get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&addr, PATIENCE).map_err(|e| format!("connect: {e}"))?;
    exchange(&mut stream, path)
}

fn exchange(stream: &mut TcpStream, path: &str) -> Result<String, String> {
    stream.set_read_timeout(Some(PATIENCE)).expect("a read timeout can be set");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: stele-test\r\n\r\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut response = Vec::new();
    match stream.read_to_end(&mut response) {
        Ok(_) => {}
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            panic!("no answer and no close within {PATIENCE:?} for GET {path}")
        }
        Err(e) => return Err(format!("read: {e}")),
    }
    let text = String::from_utf8(response).map_err(|e| format!("not UTF-8: {e}"))?;
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.0 200 OK") => Ok(body.trim_end().to_owned()),
        _ if text.is_empty() => Err("closed without an answer".to_owned()),
        _ => Err(format!("not a response: {text:?}")),
    }
}

/// Waits until `condition` holds, polling every 10 ms; fails the test with `what` after [`PATIENCE`].
#[track_caller]
fn eventually<T>(what: &str, mut condition: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// A `stele lb` process on a free loopback port, with its config and log in a temporary directory.
/// Killed when dropped.
struct Balancer {
    child: Child,
    config: PathBuf,
    log: PathBuf,
    listen: SocketAddr,
    _dir: TempDir,
}

impl Balancer {
    /// Starts a balancer with config version 1 and waits for its first report.
    fn start(backends: Vec<Backend>) -> Balancer {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = dir.path().join("web.lb.json");
        let listen = loopback(free_port());
        write_config(&config, &LbConfig { listen, version: 1, backends }).expect("config written");
        let log = dir.path().join("lb.log");
        let child = spawn_balancer(&config, &log);
        let balancer = Balancer { child, config, log, listen, _dir: dir };
        balancer.wait_for_version(1);
        balancer
    }

    fn configure(&self, version: u64, backends: Vec<Backend>) {
        write_config(&self.config, &LbConfig { listen: self.listen, version, backends }).expect("config written");
    }

    /// The report of this very process (not one left by an earlier balancer).
    fn report(&self) -> Option<LbReport> {
        let report = read_report(&self.config).expect("the report is readable whenever it exists")?;
        (report.pid == self.child.id()).then_some(report)
    }

    #[track_caller]
    fn wait_for_version(&self, version: u64) -> LbReport {
        self.wait_for(&format!("report version {version}"), |r| r.version == version)
    }

    #[track_caller]
    fn wait_for(&self, what: &str, mut condition: impl FnMut(&LbReport) -> bool) -> LbReport {
        eventually(&format!("{what} (log:\n{})", self.log_text()), || self.report().filter(|r| condition(r)))
    }

    fn get(&self, path: &str) -> Result<String, String> {
        get(self.listen, path)
    }

    /// Sends `n` sequential requests and counts the answers by backend name; any failure fails the test.
    #[track_caller]
    fn tally(&self, n: usize) -> (Vec<String>, BTreeMap<String, usize>) {
        let mut order = Vec::new();
        let mut counts = BTreeMap::new();
        for i in 0..n {
            let name = self.get("/").unwrap_or_else(|e| panic!("request {i} failed: {e}\nlog:\n{}", self.log_text()));
            *counts.entry(name.clone()).or_default() += 1;
            order.push(name);
        }
        (order, counts)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped yet.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("the child can be polled")
    }

    #[track_caller]
    fn wait_for_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "the balancer did not exit\nlog:\n{}", self.log_text());
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn spawn_balancer(config: &std::path::Path, log: &std::path::Path) -> Child {
    let log_file = std::fs::File::create(log).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_stele"))
        .arg("lb")
        .arg("--config")
        .arg(config)
        .env("STELE_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("the stele binary starts")
}

#[test]
fn weights_25_75_send_exactly_one_connection_in_four_to_the_lighter_backend() {
    let (light, heavy) = (Upstream::start("light"), Upstream::start("heavy"));
    let lb = Balancer::start(vec![light.backend(25), heavy.backend(75)]);
    let (order, counts) = lb.tally(8);
    assert_eq!(counts.get("light"), Some(&2), "{order:?}");
    assert_eq!(counts.get("heavy"), Some(&6), "{order:?}");
    for window in order.windows(4) {
        assert_eq!(window.iter().filter(|n| *n == "light").count(), 1, "{order:?}");
    }
    let report = lb.wait_for("served counts 2 and 6", |r| r.served.get("light") == Some(&2));
    assert_eq!(report.served.get("heavy"), Some(&6));
}

#[test]
fn a_weight_change_is_applied_on_reload_and_weight_zero_gets_nothing() {
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    let lb = Balancer::start(vec![a.backend(25), b.backend(75)]);
    let (_, counts) = lb.tally(8);
    assert_eq!((counts.get("a"), counts.get("b")), (Some(&2), Some(&6)));

    lb.configure(2, vec![a.backend(75), b.backend(25)]);
    lb.wait_for_version(2);
    let (order, counts) = lb.tally(8);
    assert_eq!((counts.get("a"), counts.get("b")), (Some(&6), Some(&2)), "{order:?}");

    lb.configure(3, vec![a.backend(0), b.backend(1)]);
    lb.wait_for_version(3);
    let (order, counts) = lb.tally(6);
    assert_eq!((counts.get("a"), counts.get("b")), (None, Some(&6)), "{order:?}");
}

#[test]
fn a_backend_that_is_down_is_skipped_and_no_request_fails() {
    let live = Upstream::start("live");
    let dead = Backend { id: "dead".to_owned(), addr: loopback(free_port()), weight: 50 };
    let lb = Balancer::start(vec![dead, live.backend(50)]);
    let (_, counts) = lb.tally(50);
    assert_eq!(counts.get("live"), Some(&50), "every request is answered by the live backend");
    let report = lb.wait_for("all 50 served", |r| r.served.get("live") == Some(&50));
    assert_eq!(report.served.get("dead"), Some(&0), "a refused connect is not counted as served");
    assert_eq!(report.active.get("dead"), Some(&0), "a refused connect does not stay active");
    assert!(lb.log_text().contains("connect failed"), "the dead backend is logged:\n{}", lb.log_text());
}

#[test]
fn with_no_backends_connections_are_closed_until_a_backend_is_added() {
    let lb = Balancer::start(vec![]);
    for _ in 0..3 {
        let outcome = lb.get("/");
        assert!(outcome.is_err(), "with no backend the connection is closed, got {outcome:?}");
    }
    let web = Upstream::start("web");
    lb.configure(2, vec![web.backend(1)]);
    lb.wait_for_version(2);
    let (_, counts) = lb.tally(5);
    assert_eq!(counts.get("web"), Some(&5));
}

#[test]
fn a_removed_backend_keeps_its_open_connection_until_done_then_reports_zero_active() {
    let (old, new) = (Upstream::start("old"), Upstream::start("new"));
    let lb = Balancer::start(vec![old.backend(1)]);
    let slow = {
        let listen = lb.listen;
        thread::spawn(move || get(listen, "/slow"))
    };
    lb.wait_for("one open connection to old", |r| r.active.get("old") == Some(&1));

    lb.configure(2, vec![new.backend(1)]);
    let report = lb.wait_for_version(2);
    assert_eq!(report.active.get("old"), Some(&1), "the removed backend is still listed while it drains");
    assert!(!report.has_drained("old", 2));
    let (_, counts) = lb.tally(4);
    assert_eq!(counts.get("new"), Some(&4), "new connections go to the new backend only");
    assert!(!slow.is_finished(), "the slow connection is still open");

    old.gate.open();
    let answer = slow.join().expect("the slow client thread");
    assert_eq!(answer, Ok("old".to_owned()), "the draining connection finished with its full answer");
    let report = lb.wait_for("old drained", |r| r.active.get("old") == Some(&0));
    assert!(report.has_drained("old", 2));
    assert_eq!(report.served.get("old"), Some(&1));
}

#[test]
fn a_malformed_config_after_start_is_logged_and_the_last_good_one_keeps_serving() {
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    let lb = Balancer::start(vec![a.backend(1)]);
    let config = lb.config.display().to_string();
    let bad_configs = [
        ("{\"listen\": \"127.0.0.1:1\", \"version\": 2, \"backe".to_owned(), "EOF"),
        (
            format!(
                r#"{{"listen": "{}", "version": 2, "backends": [{{"id": "b", "addr": "{}", "weight": 1, "extra": 1}}]}}"#,
                lb.listen, b.addr
            ),
            "unknown field `extra`",
        ),
        (
            format!(
                r#"{{"listen": "{}", "version": 2, "backends": [{{"id": "b", "addr": "{}", "weight": 1}}, {{"id": "b", "addr": "{}", "weight": 1}}]}}"#,
                lb.listen, b.addr, a.addr
            ),
            "appears more than once",
        ),
    ];
    for (text, reason) in &bad_configs {
        // Written the way the agent writes, but bypassing write_config's own check.
        stele::repo::write_atomic(&lb.config, text.as_bytes()).expect("config written");
        eventually(&format!("an error naming {config} and {reason:?}"), || {
            lb.log_text()
                .lines()
                .any(|l| l.contains("ERROR") && l.contains(&config) && l.contains(reason))
                .then_some(())
        });
        let (_, counts) = lb.tally(3);
        assert_eq!(counts.get("a"), Some(&3), "the last good config still serves after {reason:?}");
        assert_eq!(lb.report().map(|r| r.version), Some(1), "the report still says version 1");
    }

    lb.configure(2, vec![b.backend(1)]);
    lb.wait_for_version(2);
    let (_, counts) = lb.tally(3);
    assert_eq!(counts.get("b"), Some(&3), "a good config after bad ones is applied");
}

#[test]
fn a_changed_listen_address_is_logged_and_ignored_while_the_rest_applies() {
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    let lb = Balancer::start(vec![a.backend(1)]);
    let elsewhere = loopback(free_port());
    write_config(&lb.config, &LbConfig { listen: elsewhere, version: 2, backends: vec![b.backend(1)] })
        .expect("config written");
    lb.wait_for_version(2);
    let (_, counts) = lb.tally(3);
    assert_eq!(counts.get("b"), Some(&3), "the new backends apply on the original address");
    assert!(get(elsewhere, "/").is_err(), "nothing listens on the new address");
    assert!(lb.log_text().contains("cannot change"), "the ignored change is logged:\n{}", lb.log_text());
}

#[test]
fn sigterm_stops_accepting_lets_in_flight_connections_finish_and_exits_zero() {
    let web = Upstream::start("web");
    let mut lb = Balancer::start(vec![web.backend(1)]);
    lb.signal(libc::SIGHUP);
    assert_eq!(lb.get("/"), Ok("web".to_owned()), "SIGHUP re-reads the config and does not stop the balancer");

    let slow = {
        let listen = lb.listen;
        thread::spawn(move || get(listen, "/slow"))
    };
    lb.wait_for("the slow connection open", |r| r.active.get("web") == Some(&1));
    lb.signal(libc::SIGTERM);
    eventually("new connections refused after SIGTERM", || {
        TcpStream::connect_timeout(&lb.listen, PATIENCE).is_err().then_some(())
    });
    assert!(lb.try_wait().is_none(), "the balancer waits for the in-flight connection");
    web.gate.open();
    assert_eq!(slow.join().expect("the slow client thread"), Ok("web".to_owned()));
    let status = lb.wait_for_exit();
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM\nlog:\n{}", lb.log_text());
    let report = read_report(&lb.config).expect("readable").expect("written");
    assert_eq!(report.active.get("web"), Some(&0), "the final report has nothing open");
}

#[test]
fn a_bad_or_missing_config_at_startup_is_an_error_naming_the_file_and_the_reason() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("broken.lb.json");
    let text = format!(r#"{{"listen": "{}", "version": 1, "backends": [], "weights": {{}}}}"#, loopback(free_port()));
    std::fs::write(&config, text).expect("config written");
    let output = Command::new(env!("CARGO_BIN_EXE_stele"))
        .arg("lb")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .expect("the stele binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "refused\n{stderr}");
    assert!(stderr.contains(&config.display().to_string()), "names the file: {stderr}");
    assert!(stderr.contains("unknown field `weights`"), "names the reason: {stderr}");
    assert!(!report_path(&config).exists(), "no report for a config that was never applied");

    let missing = dir.path().join("missing.lb.json");
    let output = Command::new(env!("CARGO_BIN_EXE_stele"))
        .arg("lb")
        .arg("--config")
        .arg(&missing)
        .stdin(Stdio::null())
        .output()
        .expect("the stele binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "an I/O failure\n{stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "names the file: {stderr}");
    assert!(stderr.contains("No such file"), "names the reason: {stderr}");
}

/// Not a benchmark, a sanity check with numbers: sequential requests, each on a new connection, all
/// succeed through the balancer, and the time per request with and without it is printed
/// (`cargo test --test lb -- --nocapture`).
#[test]
fn two_thousand_sequential_requests_all_succeed_and_the_overhead_is_printed() {
    const N: usize = 2000;
    let web = Upstream::start("web");
    let lb = Balancer::start(vec![web.backend(1)]);
    let time = |addr: SocketAddr| {
        let start = Instant::now();
        for i in 0..N {
            assert_eq!(get(addr, "/").as_deref(), Ok("web"), "request {i} to {addr}");
        }
        start.elapsed()
    };
    let direct = time(web.addr);
    let through = time(lb.listen);
    println!(
        "{N} sequential requests: direct {direct:?} ({:.0} µs each), through the balancer {through:?} ({:.0} µs each)",
        direct.as_micros() as f64 / N as f64,
        through.as_micros() as f64 / N as f64,
    );
    let report = lb.wait_for("all served", |r| r.served.get("web") == Some(&(N as u64)));
    assert_eq!(report.active.get("web"), Some(&0));
}

/// A half-close from the client reaches the backend and the answer still comes back: the proxy
/// passes on the shutdown of one direction without closing the other.
#[test]
fn a_client_half_close_is_passed_on_and_the_answer_still_arrives() {
    let web = Upstream::start("web");
    let lb = Balancer::start(vec![web.backend(1)]);
    let mut stream = TcpStream::connect_timeout(&lb.listen, PATIENCE).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).expect("a read timeout can be set");
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write");
    stream.shutdown(Shutdown::Write).expect("half-close");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("the answer after a half-close");
    assert!(response.ends_with("\r\n\r\nweb\n"), "{response:?}");
}
