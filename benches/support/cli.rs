//! Running the `stele` binary (and git) from the agent-level benches, and packing the demo web app
//! into images. Included with `#[path]` by the benches that drive real processes.

use std::path::{Path, PathBuf};
use std::process::Command;

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
