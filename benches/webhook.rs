//! Commit → detection with a webhook (issue 12): a real `stele agent` (local provider, HTTP surface on,
//! poll interval 300 s so only the hook can explain a detection) follows a ledger served by
//! `git daemon` on loopback. Each round signs a release, pushes it, POSTs a GitHub-style push hook
//! signed with the shared secret, and times until the agent's `/api/status` names the pushed commit
//! as verified. Also prints the agent's resident memory with the HTTP surface on.
//!
//! Run: `cargo bench --profile dev --bench webhook` (`STELE_BENCH_ROUNDS`, default 20).

#[path = "support/cli.rs"]
mod cli;

use cli::{daemon, image, run, STELE};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn request(addr: SocketAddr, method: &str, path: &str, headers: &str, body: &[u8]) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else { return (0, String::new()) };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n{headers}\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("send");
    s.write_all(body).expect("send body");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, out)
}

fn vm(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix(key).map(|v| v.trim().trim_end_matches(" kB").parse().unwrap_or(0)))
        })
        .unwrap_or(0)
}

fn main() {
    let rounds: usize = std::env::var("STELE_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path();
    run(work, STELE, &["key", "generate", "--out", "k.key"]);
    run(work, STELE, &["init", "ledger", "--key", "k.key", "--env", "staging"]);
    let ledger = work.join("ledger");
    let root = run(work, STELE, &["key", "id", "k.key.pub"]).split_whitespace().next().expect("id").to_owned();
    let tar = image(work, "1.0.0");
    let tar = tar.to_str().expect("utf-8");
    run(&ledger, STELE, &["release", "--env", "staging", "--version", "1.0.0", "--image", tar, "--key", "../k.key"]);
    run(work, "git", &["clone", "-q", "--bare", "ledger", "remote.git"]);
    let d = daemon(work);
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let http: SocketAddr = ([127, 0, 0, 1], port).into();
    std::fs::write(work.join("secret"), "bench-secret\n").expect("secret");
    std::fs::write(
        work.join("agent.toml"),
        format!(
            "repo = \"git://127.0.0.1:{}/remote.git\"\nstate_dir = \"state\"\ntrust_root = [\"{root}\"]\n\
             interval_seconds = 300\n\n[http]\nlisten = \"{http}\"\nhook_secret_file = \"secret\"\n",
            d.1
        ),
    )
    .expect("config");
    let mut agent = Command::new(STELE)
        .args(["agent", "--config", "agent.toml"])
        .current_dir(work)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the agent");
    let until = Instant::now() + Duration::from_secs(60);
    while request(http, "GET", "/readyz", "", b"").0 != 200 {
        assert!(Instant::now() < until, "the agent never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let body = br#"{"ref":"refs/heads/main"}"#;
    let signature = stele::http::hooks::sign(b"bench-secret", body);
    let headers = format!("X-GitHub-Event: push\r\nX-Hub-Signature-256: sha256={signature}\r\n");
    let mut latencies = Vec::new();
    for round in 0..rounds {
        let version = format!("1.0.{}", round + 1);
        run(
            &ledger,
            STELE,
            &["release", "--env", "staging", "--version", &version, "--image", tar, "--key", "../k.key"],
        );
        let head = run(&ledger, "git", &["rev-parse", "HEAD"]).trim().to_owned();
        run(&ledger, "git", &["push", "-q", "../remote.git", "HEAD:main"]);
        let t0 = Instant::now();
        assert_eq!(request(http, "POST", "/hooks/github", &headers, body).0, 202);
        loop {
            if request(http, "GET", "/api/status", "", b"").1.contains(&head) {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "round {round}: never detected");
            std::thread::sleep(Duration::from_millis(5));
        }
        latencies.push(t0.elapsed());
        std::thread::sleep(Duration::from_millis(300));
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "commit → detection with a webhook, {rounds} pushes: median {:.0} ms, p90 {:.0} ms, max {:.0} ms (poll interval 300 s)",
        ms(latencies[latencies.len() / 2]),
        ms(latencies[latencies.len() * 9 / 10]),
        ms(latencies[latencies.len() - 1])
    );
    println!(
        "agent with the HTTP surface on: VmRSS {} KiB, VmHWM {} KiB",
        vm(agent.id(), "VmRSS:"),
        vm(agent.id(), "VmHWM:")
    );
    // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let _ = agent.wait();
    let mut p = stele::provider::local::LocalProvider::new(
        &work.join("state"),
        stele::provider::local::LocalSettings::default(),
        std::path::PathBuf::from(STELE),
    )
    .expect("provider");
    let _ = p.destroy(&"staging".parse().expect("env"));
}
