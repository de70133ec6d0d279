//! The local provider's process layer against real processes: detached spawning, identity across pid
//! reuse, zombies and spawner death, stopping whole process groups, and the health probes.
//!
//! /proc is read here with a parser of its own, so that these tests do not take the module's word for
//! what is running. Every test stops what it spawns, also when it fails (see `Instance`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use stele::provider::local::process::{
    self, free_port, liveness, probe_http, probe_tcp, spawn, stop, Liveness, ProcessHandle, SpawnSpec,
};

/// An instance that is stopped when the test ends, however it ends.
struct Instance(ProcessHandle);

impl Drop for Instance {
    fn drop(&mut self) {
        // A failure here would hide the test's own failure; the test asserts on stop where it matters.
        let _ = stop(&self.0, Duration::from_millis(200));
    }
}

fn start(spec: &SpawnSpec) -> Instance {
    Instance(spawn(spec).expect("the instance starts"))
}

fn sh(dir: &Path, script: &str) -> SpawnSpec {
    SpawnSpec {
        program: PathBuf::from("/bin/sh"),
        args: vec!["-c".to_owned(), script.to_owned()],
        cwd: dir.to_path_buf(),
        env: Vec::new(),
        log: dir.join("instance.log"),
    }
}

fn sleeper(dir: &Path) -> SpawnSpec {
    SpawnSpec {
        program: PathBuf::from("/bin/sleep"),
        args: vec!["1000".to_owned()],
        cwd: dir.to_path_buf(),
        env: Vec::new(),
        log: dir.join("instance.log"),
    }
}

/// Polls `condition` every 10 ms and panics, naming `what`, if it does not hold within `limit`.
fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

fn wait_until_gone(h: &ProcessHandle, limit: Duration) -> String {
    let mut reason = String::new();
    wait_for(&format!("pid {} to be gone", h.pid), limit, || match liveness(h) {
        Liveness::Running => false,
        Liveness::Gone(why) => {
            reason = why;
            true
        }
    });
    reason
}

/// What these tests read from /proc/<pid>/stat.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProcStat {
    comm: String,
    state: char,
    ppid: i32,
    pgrp: i32,
    session: i32,
    start_ticks: u64,
}

fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    Some(ProcStat {
        comm: text[open + 1..close].to_owned(),
        state: fields[0].chars().next()?,
        ppid: fields[1].parse().ok()?,
        pgrp: fields[2].parse().ok()?,
        session: fields[3].parse().ok()?,
        start_ticks: fields[19].parse().ok()?,
    })
}

/// True if the process that had `pid` and started at `start_ticks` no longer runs.
fn is_gone(pid: i32, start_ticks: u64) -> bool {
    match proc_stat(pid) {
        None => true,
        Some(stat) => stat.start_ticks != start_ticks || stat.state == 'Z' || stat.state == 'X',
    }
}

/// The living processes whose process group is `pgrp`.
fn living_in_group(pgrp: i32) -> Vec<(i32, ProcStat)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc is readable") {
        let entry = entry.expect("a /proc entry");
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else {
            continue;
        };
        if let Some(stat) = proc_stat(pid) {
            if stat.pgrp == pgrp && stat.state != 'Z' && stat.state != 'X' {
                found.push((pid, stat));
            }
        }
    }
    found
}

fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("instance.log")).unwrap_or_default()
}

fn our_pid() -> i32 {
    i32::try_from(std::process::id()).expect("pids fit in i32")
}

// ---------------------------------------------------------------------------------------------------
// Spawning

#[test]
fn spawned_instance_runs_detached_in_its_own_session_and_process_group() {
    let dir = tempfile::tempdir().expect("temp dir");
    let instance = start(&sleeper(dir.path()));
    let h = &instance.0;
    assert_eq!(liveness(h), Liveness::Running);
    let stat = proc_stat(h.pid).expect("the instance is in /proc");
    assert_eq!(stat.comm, "sleep");
    assert_eq!(stat.start_ticks, h.start_ticks, "the handle carries the kernel's start time");
    assert_eq!((stat.pgrp, stat.session), (h.pid, h.pid), "it leads its own session and process group");
    assert_ne!(stat.ppid, our_pid(), "the double fork leaves the instance without the agent as parent");
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot id");
    assert_eq!(h.boot_id, boot_id.trim());
}

#[test]
fn handles_survive_a_json_round_trip() {
    let dir = tempfile::tempdir().expect("temp dir");
    let instance = start(&sleeper(dir.path()));
    let json = serde_json::to_string(&instance.0).expect("a handle serialises");
    let back: ProcessHandle = serde_json::from_str(&json).expect("and deserialises");
    assert_eq!(back, instance.0);
    assert_eq!(liveness(&back), Liveness::Running, "a restored handle adopts the running instance");
}

#[test]
fn output_and_errors_are_appended_to_the_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("instance.log"), "from an earlier run\n").expect("seed the log");
    let instance = start(&sh(dir.path(), "echo to-stdout; echo to-stderr >&2; exec sleep 1000"));
    wait_for("both lines in the log", Duration::from_secs(5), || {
        let log = read_log(dir.path());
        log.contains("to-stdout\n") && log.contains("to-stderr\n")
    });
    assert!(read_log(dir.path()).starts_with("from an earlier run\n"), "the log is appended to, not truncated");
    stop(&instance.0, Duration::from_secs(2)).expect("stop");
}

#[test]
fn environment_is_clean_apart_from_path_home_lang_and_the_spec() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = SpawnSpec {
        program: PathBuf::from("/usr/bin/env"),
        args: Vec::new(),
        cwd: dir.path().to_path_buf(),
        env: vec![("STELE_PORT".to_owned(), "8123".to_owned()), ("GREETING".to_owned(), "hello world".to_owned())],
        log: dir.path().join("instance.log"),
    };
    let instance = start(&spec);
    wait_until_gone(&instance.0, Duration::from_secs(5));
    let log = read_log(dir.path());
    let vars: Vec<(&str, &str)> = log.lines().filter_map(|line| line.split_once('=')).collect();
    assert!(vars.contains(&("STELE_PORT", "8123")), "{log}");
    assert!(vars.contains(&("GREETING", "hello world")), "{log}");
    for (name, _) in &vars {
        assert!(["PATH", "HOME", "LANG", "STELE_PORT", "GREETING"].contains(name), "unexpected variable {name}: {log}");
    }
    // The test harness itself runs with variables such as CARGO_MANIFEST_DIR; none may leak through.
    assert!(std::env::vars().count() > vars.len(), "the test environment has more variables than the instance");
    if let Ok(path) = std::env::var("PATH") {
        assert!(vars.contains(&("PATH", path.as_str())), "PATH is kept: {log}");
    }
}

#[test]
fn instance_starts_in_its_data_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let instance = start(&sh(dir.path(), "pwd -P > where.txt"));
    wait_until_gone(&instance.0, Duration::from_secs(5));
    let written = std::fs::read_to_string(dir.path().join("where.txt")).expect("the relative file is in cwd");
    let expected = dir.path().canonicalize().expect("canonical temp dir");
    assert_eq!(written.trim_end(), expected.to_str().expect("utf-8 temp path"));
}

#[test]
fn a_program_that_cannot_run_is_an_error_not_a_handle() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = SpawnSpec { program: dir.path().join("no-such-program"), ..sleeper(dir.path()) };
    let error = spawn(&missing).expect_err("a missing program cannot start");
    assert_eq!(error.kind(), std::io::ErrorKind::NotFound, "{error}");

    let relative = SpawnSpec { program: PathBuf::from("sleep"), ..sleeper(dir.path()) };
    let error = spawn(&relative).expect_err("a relative program is refused");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput, "{error}");

    let no_cwd = SpawnSpec { cwd: dir.path().join("missing-dir"), ..sleeper(dir.path()) };
    spawn(&no_cwd).expect_err("a missing data directory is an error");
}

// ---------------------------------------------------------------------------------------------------
// Stopping

#[test]
fn stop_ends_every_process_in_the_group() {
    let dir = tempfile::tempdir().expect("temp dir");
    let instance = start(&sh(dir.path(), "sleep 1000 & sleep 1000"));
    let h = &instance.0;
    let mut sleeps = Vec::new();
    wait_for("two sleeps in the instance's group", Duration::from_secs(5), || {
        sleeps = living_in_group(h.pid).into_iter().filter(|(_, stat)| stat.comm == "sleep").collect();
        sleeps.len() == 2
    });
    for (pid, _) in &sleeps {
        assert_ne!(*pid, h.pid, "the sleeps are children of the shell, not the instance itself");
    }
    let members = process::group_members(h).expect("group members");
    for (pid, _) in &sleeps {
        assert!(members.contains(pid), "{pid} is counted as a member: {members:?}");
    }

    stop(h, Duration::from_secs(5)).expect("stop");
    for (pid, stat) in &sleeps {
        assert!(is_gone(*pid, stat.start_ticks), "sleep {pid} survived stop: {:?}", proc_stat(*pid));
    }
    assert!(is_gone(h.pid, h.start_ticks));
    assert!(matches!(liveness(h), Liveness::Gone(_)));
    assert_eq!(living_in_group(h.pid), Vec::new());
}

#[test]
fn stop_returns_soon_after_the_group_honours_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let instance = start(&sleeper(dir.path()));
    let began = Instant::now();
    stop(&instance.0, Duration::from_secs(20)).expect("stop");
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "stop waited {:?} for a process that obeys SIGTERM",
        began.elapsed()
    );
    assert!(is_gone(instance.0.pid, instance.0.start_ticks));
}

#[test]
fn stop_escalates_to_sigkill_when_sigterm_is_ignored() {
    let dir = tempfile::tempdir().expect("temp dir");
    // An ignored signal stays ignored across exec, so the sleep ignores SIGTERM as well.
    let instance = start(&sh(dir.path(), "trap '' TERM; echo ready; exec sleep 1000"));
    let h = &instance.0;
    wait_for("the trap to be set", Duration::from_secs(5), || read_log(dir.path()).contains("ready"));

    let grace = Duration::from_millis(300);
    let began = Instant::now();
    stop(h, grace).expect("stop escalates");
    let took = began.elapsed();
    assert!(took >= grace, "stop returned after {took:?}, before the grace period ended");
    assert!(took < Duration::from_secs(4), "stop took {took:?}");
    assert!(is_gone(h.pid, h.start_ticks), "{:?}", proc_stat(h.pid));
}

#[test]
fn stop_sweeps_group_members_that_outlived_the_instance() {
    let dir = tempfile::tempdir().expect("temp dir");
    let instance = start(&sh(dir.path(), "sleep 1000 & echo $! > orphan.pid"));
    let h = &instance.0;
    wait_until_gone(h, Duration::from_secs(5));
    let orphan: i32 = std::fs::read_to_string(dir.path().join("orphan.pid"))
        .expect("the shell wrote its child's pid")
        .trim()
        .parse()
        .expect("a pid");
    let orphan_stat = proc_stat(orphan).expect("the orphan still runs");
    assert_eq!(orphan_stat.pgrp, h.pid, "the orphan is in the instance's group");
    assert!(!is_gone(orphan, orphan_stat.start_ticks), "the orphan outlived the shell");
    assert_eq!(process::group_members(h).expect("members"), vec![orphan]);

    stop(h, Duration::from_secs(5)).expect("stop sweeps the group");
    assert!(is_gone(orphan, orphan_stat.start_ticks), "{:?}", proc_stat(orphan));
}

#[test]
fn stop_is_idempotent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let instance = start(&sleeper(dir.path()));
    stop(&instance.0, Duration::from_secs(2)).expect("first stop");
    stop(&instance.0, Duration::from_secs(2)).expect("second stop of a gone process is fine");
    assert!(matches!(liveness(&instance.0), Liveness::Gone(_)));
}

// ---------------------------------------------------------------------------------------------------
// Identity: pid reuse, reboots, zombies

#[test]
fn a_reused_pid_is_gone_and_never_signalled() {
    let dir = tempfile::tempdir().expect("temp dir");
    let real = start(&sleeper(dir.path()));
    let impostor = ProcessHandle { start_ticks: real.0.start_ticks + 1, ..real.0.clone() };

    let Liveness::Gone(reason) = liveness(&impostor) else { panic!("a different start time must not count as ours") };
    assert!(reason.contains("reused"), "{reason}");
    assert_eq!(process::group_members(&impostor).expect("members"), Vec::<i32>::new());
    stop(&impostor, Duration::from_millis(100)).expect("stopping a reused pid is a no-op");

    thread::sleep(Duration::from_millis(200));
    assert_eq!(liveness(&real.0), Liveness::Running, "the process that now owns the pid was signalled");
    assert_eq!(proc_stat(real.0.pid).map(|s| s.state), Some('S'));
}

#[test]
fn a_handle_from_another_boot_is_gone_and_never_signalled() {
    let dir = tempfile::tempdir().expect("temp dir");
    let real = start(&sleeper(dir.path()));
    let before_reboot = ProcessHandle { boot_id: "00000000-0000-0000-0000-000000000000".to_owned(), ..real.0.clone() };

    let Liveness::Gone(reason) = liveness(&before_reboot) else { panic!("another boot's handle cannot be running") };
    assert!(reason.contains("rebooted"), "{reason}");
    stop(&before_reboot, Duration::from_millis(100)).expect("a no-op");
    thread::sleep(Duration::from_millis(200));
    assert_eq!(liveness(&real.0), Liveness::Running);
}

#[test]
fn an_instance_that_exits_by_itself_is_gone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let instance = start(&sh(dir.path(), "exit 3"));
    let reason = wait_until_gone(&instance.0, Duration::from_secs(2));
    // Whether init has reaped it yet decides which of the two reasons applies.
    assert!(reason.contains("exited with status 3") || reason.contains("has exited"), "{reason}");
}

#[test]
fn a_zombie_whose_start_time_matches_is_gone_with_its_exit_status() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The subshell's parent becomes `sleep`, which never reaps, so it stays a zombie.
    let parent = start(&sh(dir.path(), "(sleep 0.3; exit 7) & echo $! > zombie.pid; exec sleep 1000"));
    let mut zombie_pid = 0;
    wait_for("the zombie's pid", Duration::from_secs(5), || {
        let text = std::fs::read_to_string(dir.path().join("zombie.pid")).unwrap_or_default();
        zombie_pid = text.trim().parse().unwrap_or(0);
        zombie_pid > 0
    });
    let zombie = process::identify(zombie_pid).expect("identify the subshell");

    let reason = wait_until_gone(&zombie, Duration::from_secs(5));
    assert_eq!(reason, "exited with status 7");
    let stat = proc_stat(zombie_pid).expect("a zombie stays in /proc");
    assert_eq!((stat.state, stat.start_ticks, stat.ppid), ('Z', zombie.start_ticks, parent.0.pid));
    stop(&zombie, Duration::from_millis(100)).expect("stopping a zombie is a no-op");
    stop(&parent.0, Duration::from_secs(2)).expect("stop the parent");
}

#[test]
fn a_zombie_child_of_the_agent_is_reaped_by_liveness() {
    // This is the position of an agent that runs as PID 1 or as a subreaper.
    let mut child = Command::new("/bin/sh").args(["-c", "exit 4"]).spawn().expect("spawn a direct child");
    let pid = i32::try_from(child.id()).expect("pid");
    let h = process::identify(pid).expect("identify our child");
    let reason = wait_until_gone(&h, Duration::from_secs(5));
    assert_eq!(reason, "exited with status 4");
    assert_eq!(proc_stat(pid), None, "liveness reaped the zombie");
    let error = child.try_wait().expect_err("the child has been reaped already");
    assert_eq!(error.raw_os_error(), Some(libc::ECHILD), "{error}");
}

/// A child process of the test that is killed and reaped when the test ends, however it ends.
struct KilledOnDrop(std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        // It may be gone already; either way it must not outlive the test.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const SPAWNER_DIR_ENV: &str = "STELE_TEST_SPAWNER_DIR";

#[test]
fn instance_survives_the_death_of_its_spawner() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spawner = Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", "spawner_helper", "--ignored", "--nocapture", "--test-threads=1"])
        .env(SPAWNER_DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the spawner");
    let mut spawner = KilledOnDrop(spawner);
    let spawner_pid = i32::try_from(spawner.0.id()).expect("pid");
    let stdout = spawner.0.stdout.take().expect("piped stdout");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let handle: ProcessHandle = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines_rx.recv_timeout(left).expect("the spawner reports its instance");
        // libtest prints the test's name on the same line, before the test's own output.
        if let Some((_, json)) = line.split_once("HANDLE ") {
            break serde_json::from_str(json).expect("a handle");
        }
    };
    let instance = Instance(handle);
    let h = &instance.0;
    let stat = proc_stat(h.pid).expect("the instance runs");
    assert_ne!(stat.ppid, spawner_pid);
    assert_ne!(stat.session, proc_stat(spawner_pid).expect("the spawner runs").session);

    // The agent's worst case: SIGKILL, no chance to clean up.
    spawner.0.kill().expect("SIGKILL the spawner");
    spawner.0.wait().expect("reap the spawner");
    assert_eq!(proc_stat(spawner_pid), None, "the spawner is gone");
    thread::sleep(Duration::from_millis(200));
    assert_eq!(liveness(h), Liveness::Running, "the instance died with its spawner");
    stop(h, Duration::from_secs(2)).expect("the next agent can stop the adopted instance");
    assert!(is_gone(h.pid, h.start_ticks));
}

/// Run only by `instance_survives_the_death_of_its_spawner` in a child process: spawns an instance,
/// prints its handle and waits to be killed.
#[test]
#[ignore = "helper process for instance_survives_the_death_of_its_spawner"]
fn spawner_helper() {
    let dir = PathBuf::from(
        std::env::var_os(SPAWNER_DIR_ENV)
            .expect("run by instance_survives_the_death_of_its_spawner, which sets the dir"),
    );
    let handle = spawn(&sleeper(&dir)).expect("spawn from the helper");
    println!("HANDLE {}", serde_json::to_string(&handle).expect("serialise"));
    std::io::stdout().flush().expect("flush");
    // Wait to be killed; give up eventually so a failed parent test cannot leave this running forever.
    thread::sleep(Duration::from_secs(60));
    let _ = stop(&handle, Duration::from_millis(200));
}

// ---------------------------------------------------------------------------------------------------
// Probes

/// A loopback server for one connection: reads the request head, answers `response`, and returns the
/// request it saw.
fn serve_once(response: &'static str) -> (SocketAddr, JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let request = read_request_head(&mut stream);
        stream.write_all(response.as_bytes()).expect("answer");
        request
    });
    (addr, server)
}

fn read_request_head(stream: &mut TcpStream) -> String {
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while !request.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => request.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&request).into_owned()
}

/// Serves each of `responses` to one connection in turn, keeping the request heads.
fn serve_each(responses: Vec<String>) -> (SocketAddr, JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = thread::spawn(move || {
        let mut requests = Vec::new();
        for response in responses {
            let (mut stream, _) = listener.accept().expect("accept");
            requests.push(read_request_head(&mut stream));
            stream.write_all(response.as_bytes()).expect("answer");
        }
        requests
    });
    (addr, server)
}

#[test]
fn probe_http_succeeds_only_for_2xx() {
    let cases: [(&str, Result<(), &str>); 7] = [
        ("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", Ok(())),
        ("HTTP/1.1 204 No Content\r\n\r\n", Ok(())),
        ("HTTP/1.0 299 Whatever\r\n\r\n", Ok(())),
        // A chunked body is read by the client like any other.
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", Ok(())),
        ("HTTP/1.1 404 Not Found\r\n\r\n", Err("status 404")),
        ("HTTP/1.1 503 Service Unavailable\r\n\r\n", Err("status 503 Service Unavailable")),
        ("SSH-2.0-OpenSSH_9.2\r\n", Err("GET http://")),
    ];
    for (response, expected) in cases {
        let (addr, server) = serve_once(response);
        let outcome = probe_http(addr, "/healthz", Duration::from_secs(5));
        match (&outcome, expected) {
            (Ok(()), Ok(())) => {}
            (Err(message), Err(needle)) => assert!(message.contains(needle), "{response:?}: {message}"),
            _ => panic!("{response:?}: got {outcome:?}, expected {expected:?}"),
        }
        let request = server.join().expect("server thread");
        assert!(request.starts_with("GET /healthz HTTP/1.1\r\n"), "{request}");
        assert!(request.to_lowercase().contains(&format!("\r\nhost: {addr}\r\n")), "{request}");
        assert!(request.to_lowercase().contains("\r\nconnection: close\r\n"), "{request}");
    }
}

#[test]
fn probe_http_follows_redirects_and_judges_where_they_lead() {
    let (addr, server) = serve_each(vec![
        "HTTP/1.1 301 Moved Permanently\r\nLocation: /ready\r\nContent-Length: 0\r\n\r\n".into(),
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".into(),
    ]);
    probe_http(addr, "/healthz", Duration::from_secs(5)).expect("the redirect leads to a 200");
    let requests = server.join().expect("server thread");
    assert!(requests[1].starts_with("GET /ready HTTP/1.1\r\n"), "{requests:?}");
    let (addr, server) = serve_each(vec![
        "HTTP/1.1 302 Found\r\nLocation: /down\r\nContent-Length: 0\r\n\r\n".into(),
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".into(),
    ]);
    let message = probe_http(addr, "/healthz", Duration::from_secs(5)).expect_err("the redirect leads to a 503");
    assert!(message.contains("status 503"), "{message}");
    server.join().expect("server thread");
}

#[test]
fn probe_http_follows_a_redirect_to_https_on_a_self_signed_certificate() {
    // A real TLS server: openssl s_server with a throwaway self-signed certificate, answering 200.
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (needed for this test) makes a certificate");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let tls_port = free_port().expect("a free port");
    let mut tls = std::process::Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(tls_port.to_string())
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let until = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", tls_port)).is_err() {
        assert!(Instant::now() < until, "openssl s_server did not start");
        thread::sleep(Duration::from_millis(20));
    }
    let (addr, server) = serve_each(vec![format!(
        "HTTP/1.1 308 Permanent Redirect\r\nLocation: https://127.0.0.1:{tls_port}/\r\nContent-Length: 0\r\n\r\n"
    )]);
    let outcome = probe_http(addr, "/healthz", Duration::from_secs(5));
    let _ = tls.kill();
    let _ = tls.wait();
    server.join().expect("server thread");
    outcome.expect("the HTTPS endpoint answered 200");
}

#[test]
fn probe_http_reports_a_refused_connection() {
    let port = free_port().expect("a free port");
    let message = probe_http(SocketAddr::from(([127, 0, 0, 1], port)), "/", Duration::from_secs(2))
        .expect_err("nothing listens there");
    assert!(message.contains("refused"), "{message}");
}

#[test]
fn probe_http_times_out_on_a_server_that_never_answers() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        read_request_head(&mut stream);
        // Hold the connection open, silently, until the test is done.
        let _ = release_rx.recv();
        drop(stream);
    });
    let began = Instant::now();
    let message = probe_http(addr, "/healthz", Duration::from_millis(200)).expect_err("no answer");
    let took = began.elapsed();
    drop(release_tx);
    server.join().expect("server thread");
    assert!(message.contains("within 200ms"), "{message}");
    assert!(took >= Duration::from_millis(190) && took < Duration::from_secs(2), "took {took:?}");
}

#[test]
fn probe_http_refuses_a_path_that_would_change_the_request() {
    let port = free_port().expect("a free port");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for path in ["healthz", "/a b", "/x\r\nEvil: 1", ""] {
        let message = probe_http(addr, path, Duration::from_secs(1)).expect_err("refused before connecting");
        assert!(message.contains("invalid probe path"), "{path:?}: {message}");
    }
}

#[test]
fn probe_tcp_tells_a_listener_from_a_closed_port() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    probe_tcp(addr, Duration::from_secs(2)).expect("a listener accepts");
    drop(listener);
    let message = probe_tcp(addr, Duration::from_secs(2)).expect_err("the port is closed now");
    assert!(message.contains("refused"), "{message}");
    assert!(probe_tcp(addr, Duration::ZERO).is_err(), "a zero timeout cannot succeed");
}

#[test]
fn free_port_can_be_bound() {
    let port = free_port().expect("a free port");
    assert_ne!(port, 0);
    TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
}
