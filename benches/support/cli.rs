//! Running the `stele` binary (and git) from the agent-level benches, and packing the demo web app
//! into images. Included with `#[path]` by the benches that drive real processes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const STELE: &str = env!("CARGO_BIN_EXE_stele");
pub const WEBAPP: &str = env!("CARGO_BIN_EXE_stele-webapp");

/// Runs `program` in `dir` with a fixed commit identity; panics with its output when it fails.
/// Returns its stdout followed by its stderr.
pub fn run(dir: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@stele.invalid")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@stele.invalid")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Packs the demo web app as `version` into `work/app-<version>.tar`.
#[allow(dead_code)] // not every bench packs images
pub fn image(work: &Path, version: &str) -> PathBuf {
    let dir = work.join(format!("app-{version}"));
    std::fs::create_dir_all(dir.join("bin")).expect("mkdir");
    std::fs::copy(WEBAPP, dir.join("bin/stele-webapp")).expect("copy webapp");
    std::fs::write(dir.join("version.txt"), version).expect("version");
    std::fs::write(dir.join("stele-image.json"), r#"{"command": "bin/stele-webapp"}"#).expect("manifest");
    let tar = work.join(format!("app-{version}.tar"));
    run(work, STELE, &["image", "pack", dir.to_str().expect("utf-8"), "--out", tar.to_str().expect("utf-8")]);
    tar
}

/// A running `git daemon`; `.1` is its port.
#[allow(dead_code)] // not every bench serves a remote
pub struct Daemon(std::process::Child, pub u16);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `git daemon` serving `base` on a free loopback port, pushes enabled; killed on drop.
#[allow(dead_code)] // not every bench serves a remote
pub fn daemon(base: &Path) -> Daemon {
    let exec = PathBuf::from(run(base, "git", &["--exec-path"]).trim()).join("git-daemon");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let child = Command::new(exec)
        .args(["--export-all", "--reuseaddr", "--listen=127.0.0.1", "--enable=receive-pack"])
        .arg(format!("--base-path={}", base.display()))
        .arg(format!("--port={port}"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn git daemon");
    let until = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "git daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Daemon(child, port)
}
