//! The outage a killed load balancer causes at steady state (issue 11, fault 3). A ledger with one
//! `staging` environment (the default spec: 2 instances, health every 500 ms), v1 converged, then
//! `stele agent` running in the background with the default 30 s poll interval, so only the agent's
//! repairs between polls can bring a balancer back. A client sends one request through the balancer,
//! then sleeps 50 ms (about 20 requests per second; a refused connection fails at once). The balancer is
//! killed with SIGKILL `STELE_BENCH_KILLS` times (default 10), 3 s apart. Per kill: failed requests,
//! and the outage (from the kill to the end of the last failed request).
//!
//! Run: `cargo bench --bench balancer_outage`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "support/cli.rs"]
mod cli;

use cli::{STELE, WEBAPP};

/// `stele` with `args` in `dir` (see `cli::run`).
fn run(dir: &Path, args: &[&str]) -> String {
    cli::run(dir, STELE, args)
}

fn get(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut response = String::new();
    s.read_to_string(&mut response).is_ok() && response.starts_with("HTTP/1.1 200")
}

fn balancer_pid(state: &Path) -> i32 {
    let record = std::fs::read(state.join("local/staging/groups/web/lb.json")).expect("lb.json");
    let v: serde_json::Value = serde_json::from_slice(&record).expect("JSON");
    v["process"]["pid"].as_i64().expect("pid") as i32
}

fn main() {
    let kills: usize = std::env::var("STELE_BENCH_KILLS").ok().and_then(|k| k.parse().ok()).unwrap_or(10);
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path();
    run(work, &["key", "generate", "--out", "k.key"]);
    run(work, &["init", "ledger", "--key", "k.key", "--env", "staging"]);
    let ledger = work.join("ledger");
    let app = work.join("app");
    std::fs::create_dir_all(app.join("bin")).expect("mkdir");
    std::fs::copy(WEBAPP, app.join("bin/stele-webapp")).expect("copy webapp");
    std::fs::write(app.join("version.txt"), "1.0.0").expect("version");
    std::fs::write(app.join("stele-image.json"), r#"{"command": "bin/stele-webapp"}"#).expect("manifest");
    run(work, &["image", "pack", "app", "--out", "app.tar"]);
    let root = run(work, &["key", "id", "k.key.pub"]).split_whitespace().next().expect("id").to_owned();
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    std::fs::write(
        work.join("agent.toml"),
        format!(
            "repo = \"ledger\"\nstate_dir = \"state\"\ntrust_root = [\"{root}\"]\nwrite_status = false\n\n\
             [local]\nlisten = {{ \"staging/web\" = \"{addr}\" }}\n"
        ),
    )
    .expect("config");
    run(&ledger, &["release", "--env", "staging", "--version", "1.0.0", "--image", "../app.tar", "--key", "../k.key"]);
    run(&ledger, &["agent", "--config", "../agent.toml", "--once"]);
    let mut agent = Command::new(STELE)
        .args(["agent", "--config", "../agent.toml"])
        .current_dir(&ledger)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the agent");
    std::thread::sleep(Duration::from_secs(2));

    let stop = Arc::new(AtomicBool::new(false));
    let failures: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let client = {
        let (stop, failures, requests) = (stop.clone(), failures.clone(), requests.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let sent = Instant::now();
                requests.fetch_add(1, Ordering::SeqCst);
                if !get(addr) {
                    failures.lock().expect("lock").push((sent, Instant::now()));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let state = work.join("state");
    println!("balancer killed at steady state, client at ~20 requests/s, agent poll interval 30 s");
    println!("{:>5} {:>16} {:>12}", "kill", "failed requests", "outage");
    let mut outages = Vec::new();
    let mut failed_total = 0;
    for k in 1..=kills {
        std::thread::sleep(Duration::from_secs(3));
        let before = failures.lock().expect("lock").len();
        let killed = Instant::now();
        // SAFETY: kill has no memory-safety preconditions; the pid is the balancer's, from its record.
        unsafe { libc::kill(balancer_pid(&state), libc::SIGKILL) };
        std::thread::sleep(Duration::from_secs(2));
        let f = failures.lock().expect("lock")[before..].to_vec();
        let outage = f.last().map_or(Duration::ZERO, |(_, end)| end.saturating_duration_since(killed));
        println!("{k:>5} {:>16} {:>10.0}ms", f.len(), outage.as_secs_f64() * 1000.0);
        outages.push(outage);
        failed_total += f.len();
    }
    stop.store(true, Ordering::SeqCst);
    client.join().expect("client");
    outages.sort();
    println!(
        "{kills} kills, {} requests: {failed_total} failed; outage median {:.0} ms, max {:.0} ms",
        requests.load(Ordering::SeqCst),
        outages[outages.len() / 2].as_secs_f64() * 1000.0,
        outages.last().expect("at least one kill").as_secs_f64() * 1000.0
    );
    let _ = agent.kill();
    let _ = agent.wait();
    let mut provider = stele::provider::local::LocalProvider::new(
        &state,
        stele::provider::local::LocalSettings::default(),
        std::path::PathBuf::from(STELE),
    )
    .expect("provider");
    provider.destroy(&"staging".parse().expect("env")).expect("destroy");
}
