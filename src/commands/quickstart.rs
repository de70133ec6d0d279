//! `stele quickstart`: the whole story on this machine, printing each command before running it, as a
//! user would type it: keys, a ledger, two versions of the demo web app packed as images, release v1
//! to `staging` and converge, release v2 and converge while a client keeps requesting through the load
//! balancer, `git revert` the v2 promotion and converge back, then `stele audit` and `stele status`.
//! Everything it started is stopped at the end, and its directory removed unless `--keep`.
//!
//! Owns: the demo script. Must not take shortcuts the user could not: every step is the real command.

use crate::cli::QuickstartArgs;
use crate::exit::Refused;
use crate::provider::local::store::MANIFEST_FILE;
use crate::provider::local::{LocalProvider, LocalSettings};
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The requests a client sent through the balancer while the agent worked, and what came back.
#[derive(Default)]
struct ClientStats {
    ok: u64,
    failed: u64,
    /// Answers per version, in the order versions were first seen.
    versions: Vec<(String, u64)>,
    first_failure: Option<String>,
}

fn bold(text: &str) -> String {
    format!("\x1b[1m{text}\x1b[0m")
}

struct Demo {
    stele: PathBuf,
    work: PathBuf,
}

impl Demo {
    /// Prints and runs a command in `dir`; fails unless it exits with one of `ok_codes`.
    fn run(&self, dir: &Path, program: &Path, args: &[&str], ok_codes: &[i32]) -> Result<()> {
        let shown = program.file_name().map_or_else(|| program.display().to_string(), |n| n.to_string_lossy().into());
        println!("\n{}", bold(&format!("$ {shown} {}", args.join(" "))));
        let status = Command::new(program)
            .args(args)
            .current_dir(dir)
            .status()
            .with_context(|| format!("cannot run {}", program.display()))?;
        let code = status.code().unwrap_or(-1);
        if !ok_codes.contains(&code) {
            bail!("`{shown} {}` exited with {status}", args.join(" "));
        }
        Ok(())
    }

    fn stele(&self, dir: &Path, args: &[&str]) -> Result<()> {
        self.run(dir, &self.stele, args, &[0])
    }

    fn output(&self, dir: &Path, program: &str, args: &[&str]) -> Result<String> {
        let out = Command::new(program).args(args).current_dir(dir).output()?;
        if !out.status.success() {
            bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// An image directory of the demo app: the binary, its version, and the manifest.
    fn app_image(&self, version: &str, webapp: &Path) -> Result<PathBuf> {
        let dir = self.work.join(format!("app-{version}"));
        std::fs::create_dir_all(dir.join("bin"))?;
        std::fs::copy(webapp, dir.join("bin/stele-webapp"))?;
        std::fs::write(dir.join("version.txt"), format!("{version}\n"))?;
        std::fs::write(dir.join(MANIFEST_FILE), "{\n  \"command\": \"bin/stele-webapp\"\n}\n")?;
        Ok(dir)
    }
}

/// One GET through the balancer; returns the body.
fn get(addr: SocketAddr, path: &str) -> std::result::Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").map_err(|e| format!("send: {e}"))?;
    let mut response = String::new();
    s.read_to_string(&mut response).map_err(|e| format!("read: {e}"))?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| format!("malformed response {response:?}"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(head.lines().next().unwrap_or_default().to_owned());
    }
    Ok(body.trim().to_owned())
}

/// Requests `/version` every 50 ms until stopped, counting answers and failures.
fn start_client(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<ClientStats>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let r = get(addr, "/version");
            let mut s = stats.lock().expect("the stats lock is never poisoned");
            match r {
                Ok(body) => {
                    s.ok += 1;
                    let version = body.split_whitespace().next().unwrap_or_default().to_owned();
                    match s.versions.iter_mut().find(|(v, _)| *v == version) {
                        Some((_, n)) => *n += 1,
                        None => s.versions.push((version, 1)),
                    }
                }
                Err(e) => {
                    s.failed += 1;
                    if std::env::var_os("STELE_QUICKSTART_DEBUG").is_some() {
                        eprintln!("client failure at {:?}: {e}", std::time::SystemTime::now());
                    }
                    s.first_failure.get_or_insert(e);
                }
            }
            drop(s);
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

pub fn run(args: QuickstartArgs) -> Result<u8> {
    let started = Instant::now();
    let stele = std::env::current_exe().context("cannot find the stele binary")?;
    let webapp = stele.with_file_name("stele-webapp");
    if !webapp.is_file() {
        return Err(Refused(format!(
            "{} is missing: build both binaries first (`cargo build --release --bins`, or scripts/quickstart.sh)",
            webapp.display()
        ))
        .into());
    }
    let temp = match &args.dir {
        Some(_) => None,
        None => Some(tempfile::Builder::new().prefix("stele-quickstart-").tempdir()?),
    };
    let work = match (&args.dir, &temp) {
        (Some(d), _) => {
            std::fs::create_dir_all(d)?;
            d.canonicalize()?
        }
        (None, Some(t)) => t.path().to_owned(),
        (None, None) => unreachable!("a temporary directory exists when --dir is not given"),
    };
    // Commits need an identity; the demo brings its own unless the user has one.
    for (k, v) in [("GIT_AUTHOR_NAME", "Stele Quickstart"), ("GIT_AUTHOR_EMAIL", "quickstart@example.invalid")] {
        if std::env::var_os(k).is_none() {
            std::env::set_var(k, v);
        }
    }
    std::env::set_var("GIT_COMMITTER_NAME", std::env::var("GIT_AUTHOR_NAME").unwrap_or_default());
    std::env::set_var("GIT_COMMITTER_EMAIL", std::env::var("GIT_AUTHOR_EMAIL").unwrap_or_default());
    let demo = Demo { stele, work: work.clone() };
    println!("stele quickstart in {}", work.display());
    let state_dir = work.join("agent-state");
    let result = story(&demo, &webapp);
    // Clean up whatever happened: every instance and balancer the agent started.
    let env = "staging".parse().expect("a valid environment name");
    match LocalProvider::new(&state_dir, LocalSettings::default(), demo.stele.clone()) {
        Ok(mut p) => {
            if let Err(e) = p.destroy(&env) {
                eprintln!("clean-up: {e}");
            } else {
                println!("\nstopped every instance and load balancer the agent started");
            }
        }
        Err(e) => eprintln!("clean-up: {e}"),
    }
    match temp {
        Some(t) if args.keep => println!("kept {}", t.keep().display()),
        Some(t) => drop(t),
        None => println!("kept {}", work.display()),
    }
    let stats = result?;
    println!(
        "\nquickstart complete in {:.0}s: {} requests through the load balancer during the rollout and the rollback, {} failed; answers by version: {}",
        started.elapsed().as_secs_f64(),
        stats.ok + stats.failed,
        stats.failed,
        stats.versions.iter().map(|(v, n)| format!("{v} ×{n}")).collect::<Vec<_>>().join(", ")
    );
    if stats.failed > 0 {
        eprintln!("first failure: {}", stats.first_failure.unwrap_or_default());
        return Ok(crate::exit::VERIFY_FAILED);
    }
    Ok(crate::exit::OK)
}

fn story(demo: &Demo, webapp: &Path) -> Result<ClientStats> {
    let work = &demo.work;
    let ledger = work.join("ledger");
    demo.stele(work, &["key", "generate", "--out", "alice.key"])?;
    demo.stele(work, &["init", "ledger", "--key", "alice.key", "--env", "staging"])?;
    demo.stele(&ledger, &["env", "show", "--env", "staging"])?;
    for v in ["1.0.0", "2.0.0"] {
        let dir = demo.app_image(v, webapp)?;
        let name = dir.file_name().expect("a directory name").to_string_lossy().into_owned();
        demo.stele(work, &["image", "pack", &name, "--out", &format!("{name}.tar")])?;
    }
    let root = demo.output(work, &demo.stele.display().to_string(), &["key", "id", "alice.key.pub"])?;
    let port = crate::provider::local::process::free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = format!(
        "# The agent's configuration: which ledger, which trust root, where state lives.\n\
         repo = \"ledger\"\nstate_dir = \"agent-state\"\ntrust_root = [\"{root}\"]\nenvironments = [\"staging\"]\n\
         interval_seconds = 2\n\n[local]\nlisten = {{ \"staging/web\" = \"{addr}\" }}\ndrift_check_seconds = 5\n"
    );
    std::fs::write(work.join("agent.toml"), &config)?;
    println!("\n{}\n{config}", bold("agent.toml:"));
    let agent = ["agent", "--config", "../agent.toml", "--once", "--timeout", "120"];

    demo.stele(
        &ledger,
        &["release", "--env", "staging", "--version", "1.0.0", "--image", "../app-1.0.0.tar", "--key", "../alice.key"],
    )?;
    demo.stele(&ledger, &agent)?;
    println!("\n{}", bold(&format!("$ curl http://{addr}/version")));
    println!("{}", get(addr, "/version").map_err(|e| anyhow::anyhow!("the load balancer does not answer: {e}"))?);

    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Mutex::new(ClientStats::default()));
    let client = start_client(addr, stop.clone(), stats.clone());
    println!("\n(a client now requests http://{addr}/version every 50 ms)");
    demo.stele(
        &ledger,
        &["release", "--env", "staging", "--version", "2.0.0", "--image", "../app-2.0.0.tar", "--key", "../alice.key"],
    )?;
    demo.stele(&ledger, &agent)?;
    demo.stele(&ledger, &["status", "--env", "staging"])?;

    let v2 = demo.output(&ledger, "git", &["log", "--format=%H", "-1", "--", "ledger/staging/2.json"])?;
    // `revert: signed` (the default): the revert commit is SSH-signed by a signer of staging, as
    // `git revert -S` makes it with git's ssh signing format.
    demo.run(
        &ledger,
        Path::new("git"),
        &["-c", "gpg.format=ssh", "-c", "user.signingkey=../alice.key", "revert", "-S", "--no-edit", &v2],
        &[0],
    )?;
    demo.stele(&ledger, &agent)?;
    stop.store(true, Ordering::SeqCst);
    client.join().map_err(|_| anyhow::anyhow!("the client thread panicked"))?;

    demo.stele(&ledger, &["audit", "--env", "staging", "--trust-root", &root])?;
    demo.stele(&ledger, &["status"])?;
    let stats = std::mem::take(&mut *stats.lock().expect("the stats lock is never poisoned"));
    Ok(stats)
}
