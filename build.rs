//! Records what `stele version` reports about the build: the Git commit of the source (short hash,
//! `+dirty` when tracked files differ from it), the compiler, the target, the enabled features and the
//! profile. A source tree outside Git (a tarball) reports the commit as `unknown`.

use std::path::Path;
use std::process::Command;

fn main() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let commit = git_commit(Path::new(&manifest_dir)).unwrap_or_else(|| "unknown".to_owned());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = output(Command::new(rustc).arg("--version")).unwrap_or_else(|| "unknown".into());
    let features: Vec<String> = std::env::vars()
        .filter_map(|(k, _)| k.strip_prefix("CARGO_FEATURE_").map(|f| f.to_lowercase().replace('_', "-")))
        .filter(|f| f != "default")
        .collect();
    let mut features = features;
    features.sort();
    println!("cargo:rustc-env=STELE_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=STELE_RUSTC_VERSION={rustc_version}");
    println!("cargo:rustc-env=STELE_TARGET={}", std::env::var("TARGET").unwrap_or_default());
    println!("cargo:rustc-env=STELE_PROFILE={}", std::env::var("PROFILE").unwrap_or_default());
    println!("cargo:rustc-env=STELE_FEATURES={}", features.join(","));
    let shown = if features.is_empty() { "none".to_owned() } else { features.join(",") };
    println!("cargo:rustc-env=STELE_FEATURES_SHOWN={shown}");
    println!("cargo:rerun-if-changed=build.rs");
    // The commit and the dirty flag change with the checkout, the index and the tracked sources.
    for path in ["src", "ledger-format/src", "Cargo.toml", "Cargo.lock", "examples"] {
        println!("cargo:rerun-if-changed={path}");
    }
    if let Some(git_dir) = output(Command::new("git").args(["-C", &manifest_dir, "rev-parse", "--absolute-git-dir"])) {
        for file in ["HEAD", "index"] {
            println!("cargo:rerun-if-changed={git_dir}/{file}");
        }
        if let Some(branch) = output(Command::new("git").args(["-C", &manifest_dir, "symbolic-ref", "-q", "HEAD"])) {
            let common = output(Command::new("git").args(["-C", &manifest_dir, "rev-parse", "--git-common-dir"]))
                .map(|c| Path::new(&manifest_dir).join(c))
                .unwrap_or_else(|| Path::new(&git_dir).to_owned());
            // A ref that `git pack-refs` moved lives in packed-refs; a path that does not exist would
            // rerun this script on every build.
            let loose = common.join(&branch);
            let watched = if loose.exists() { loose } else { common.join("packed-refs") };
            println!("cargo:rerun-if-changed={}", watched.display());
        }
    }
}

/// `abc1234` or `abc1234+dirty`, when the manifest directory is the top of a Git work tree.
fn git_commit(dir: &Path) -> Option<String> {
    let dir_str = dir.to_str()?;
    // A tarball unpacked inside some other repository must not report that repository's commit.
    let top = output(Command::new("git").args(["-C", dir_str, "rev-parse", "--show-toplevel"]))?;
    if std::fs::canonicalize(&top).ok()? != std::fs::canonicalize(dir).ok()? {
        return None;
    }
    let hash = output(Command::new("git").args(["-C", dir_str, "rev-parse", "--short", "HEAD"]))?;
    // GIT_OPTIONAL_LOCKS=0: do not refresh (rewrite) the index, which would rerun this script next build.
    let status = output(Command::new("git").env("GIT_OPTIONAL_LOCKS", "0").args([
        "-C",
        dir_str,
        "status",
        "--porcelain",
        "--untracked-files=no",
    ]));
    let dirty = status.is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{hash}+dirty") } else { hash })
}

/// The trimmed stdout of a command that succeeded.
fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
