//! Garbage collection of the local provider (issue 11, fault 6) against real files, real processes
//! and a real, small tmpfs that runs out of space in the middle of a launch.
//!
//! The tmpfs is mounted with `mount -t tmpfs` when the test runs as root (and unmounted after), or,
//! otherwise, inside `unshare --user --map-root-user --mount`, where this test binary runs itself again
//! with `STELE_GC_TMPFS` naming the mount point. If neither works the test fails, naming both attempts.

use ledger_format::types::{EnvName, Environment, GroupName, Image};
use ledger_format::Blake3Digest;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};
use stele::plan::Release;
use stele::provider::local::{gc, LocalProvider, LocalSettings};
use stele::provider::{Provider, ProviderError, Readiness};
use tempfile::TempDir;

const STELE: &str = env!("CARGO_BIN_EXE_stele");
const TMPFS_VAR: &str = "STELE_GC_TMPFS";

fn env_name() -> EnvName {
    "staging".parse().expect("env name")
}

fn group() -> GroupName {
    "web".parse().expect("group name")
}

fn spec() -> Environment {
    serde_json::from_value(json!({
        "type": "stele.environment/v1",
        "ledger": "gc-test",
        "name": "staging",
        "version": 1,
        "provider": {"kind": "local"},
        "groups": [{"name": "web", "capacity": 1}],
        "strategy": {"kind": "rolling", "max_surge": 1, "max_unavailable": 0, "min_ready_seconds": 0},
        "health": {"kind": "tcp", "interval_ms": 1000, "timeout_ms": 200, "healthy_threshold": 1, "deadline_seconds": 60},
        "drift": "correct",
        "revert": "allow",
    }))
    .expect("spec parses")
}

/// A packed image whose command sleeps; `tag` makes its digest unique. The archive lives in `dir`.
fn image(dir: &Path, tag: &str) -> (PathBuf, Blake3Digest, u64) {
    let tree = dir.join(format!("tree-{tag}"));
    fs::create_dir_all(tree.join("bin")).expect("mkdir");
    fs::write(tree.join("bin/app"), "#!/bin/sh\nexec sleep 1000\n").expect("write app");
    fs::set_permissions(tree.join("bin/app"), fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::write(tree.join("version.txt"), format!("{tag}\n")).expect("write version");
    fs::write(tree.join("stele-image.json"), r#"{"command": "bin/app"}"#).expect("write manifest");
    let tar = dir.join(format!("{tag}.tar"));
    let (_, digest) = stele::image::pack_dir_to_file(&tree, &tar).expect("pack");
    (tar, digest.blake3, digest.size)
}

fn release(generation: u64, (tar, blake3, size): &(PathBuf, Blake3Digest, u64)) -> Release {
    Release {
        generation,
        version: format!("{generation}.0.0").parse().expect("version"),
        seq: generation,
        image: Image::Artifact {
            uri: format!("file://{}", tar.display()).parse().expect("uri"),
            blake3: *blake3,
            size: *size,
        },
    }
}

/// A provider on `state` that stops everything it started when dropped, however the test ends.
struct Local {
    provider: LocalProvider,
}

impl Local {
    fn new(state: &Path) -> Self {
        let settings = LocalSettings { stop_grace_seconds: Some(1), ..LocalSettings::default() };
        Self { provider: LocalProvider::new(state, settings, PathBuf::from(STELE)).expect("provider") }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        let _ = self.provider.destroy(&env_name());
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in fs::read_dir(&current).expect("list").flatten() {
            let path = entry.path();
            if entry.file_type().expect("type").is_dir() {
                stack.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// Asserts that every `*.json` file under `dir` (outside the image store) parses.
#[track_caller]
fn assert_no_corrupt_json(dir: &Path) {
    for path in files_under(dir) {
        if path.starts_with(dir.join("store")) || path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let bytes = fs::read(&path).expect("read");
        serde_json::from_slice::<Value>(&bytes).unwrap_or_else(|e| {
            panic!("{} is corrupt JSON ({e}): {:?}", path.display(), String::from_utf8_lossy(&bytes))
        });
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Sets the modification time of `path` to `ago` in the past.
fn backdate(path: &Path, ago: Duration) {
    let file = fs::File::open(path).expect("open to backdate");
    file.set_modified(SystemTime::now() - ago).expect("backdate");
}

/// Fills the file system holding `dir` until a write fails with ENOSPC; returns the filler's path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = fs::File::create(&path).expect("create filler");
    let chunk = vec![0u8; 4096];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
    path
}

/// Prepares `release`'s image, asking again while it is prepared in the background.
fn prepared(provider: &mut LocalProvider, env: &EnvName, spec: &Environment, release: &Release) {
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while provider.prepare(env, spec, release).expect("prepare") != Readiness::Ready {
        assert!(std::time::Instant::now() < until, "image of {} still not prepared", release.version);
    }
}

/// The scenario, on `mount` (a fresh tmpfs of a few MiB).
fn disk_full_mid_launch(mount: &Path) {
    let sources = TempDir::new().expect("temp dir");
    let artifact = image(sources.path(), "v1");
    let state = mount.join("state");
    let mut local = Local::new(&state);
    let (env, spec, release) = (env_name(), spec(), release(1, &artifact));
    prepared(&mut local.provider, &env, &spec, &release);

    let filler = fill(mount);
    let error = local.provider.launch(&env, &spec, &group(), &release, 1).expect_err("no room left to launch");
    assert!(matches!(error, ProviderError::Retryable(_)), "a full disk may pass: {error}");
    // The agent's memory of the environment would be written now too, and fail the same way.
    stele::repo::write_atomic(&state.join("agent/staging.json"), b"{\"last_good\": null}")
        .expect_err("no room for the agent's memory");

    // What fault 6 describes: a directory with an empty temporary record and `data/`, no record.
    let instances = state.join("local/staging/instances");
    let leftovers = names(&instances);
    assert_eq!(leftovers.len(), 1, "one interrupted launch: {leftovers:?}");
    let leftover = instances.join(&leftovers[0]);
    assert_eq!(names(&leftover), [".instance.json.stele-tmp", "data"]);
    assert_no_corrupt_json(&state);
    let temporaries = |state: &Path| -> Vec<PathBuf> {
        files_under(state).into_iter().filter(|p| p.to_string_lossy().ends_with(".stele-tmp")).collect()
    };
    assert_eq!(temporaries(&state).len(), 2, "{:?}", temporaries(&state));

    fs::remove_file(&filler).expect("free the space");
    let keep: BTreeSet<Blake3Digest> = [artifact.1].into();
    // A periodic pass spares leftovers younger than MIN_AGE: a launch may be writing them right now.
    let report = local.provider.collect_garbage(&keep, gc::MIN_AGE);
    assert!(report.removed.is_empty(), "young leftovers are spared: {:?}", report.removed);
    for path in temporaries(&state).into_iter().chain([leftover.clone()]) {
        backdate(&path, gc::MIN_AGE + Duration::from_secs(1));
    }
    let report = local.provider.collect_garbage(&keep, gc::MIN_AGE);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let removed: Vec<&Path> = report.removed.iter().map(|(path, _)| path.as_path()).collect();
    assert_eq!(
        removed,
        [state.join("agent/.staging.json.stele-tmp").as_path(), leftover.as_path()],
        "the agent's temporary, and the directory with its temporary record: {:?}",
        report.removed
    );
    assert!(!leftover.exists(), "the instance directory without a record is gone");
    assert_eq!(temporaries(&state), Vec::<PathBuf>::new());
    assert!(state.join("store/images").join(artifact.1.to_hex()).is_dir(), "the target's image is kept");
    assert_no_corrupt_json(&state);

    // With room again, the launch works from the kept image.
    let id = local.provider.launch(&env, &spec, &group(), &release, 2).expect("launch with room");
    let record: Value =
        serde_json::from_slice(&fs::read(instances.join(&id).join("instance.json")).expect("record")).expect("json");
    let pid = record["process"]["pid"].as_i64().expect("a recorded process");
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "instance {id} runs as pid {pid}");
}

#[test]
fn disk_full_mid_launch_leaves_no_corrupt_json_and_the_next_pass_cleans_up() {
    if let Ok(mount) = std::env::var(TMPFS_VAR) {
        // Run again by this test inside a mount namespace with the tmpfs mounted.
        disk_full_mid_launch(Path::new(&mount));
        return;
    }
    let dir = TempDir::new().expect("temp dir");
    let mount = dir.path().join("tmpfs");
    fs::create_dir(&mount).expect("mkdir mount point");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"]).arg(&mount).output();
        match out {
            Ok(o) if o.status.success() => {
                struct Unmount(PathBuf);
                impl Drop for Unmount {
                    fn drop(&mut self) {
                        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
                    }
                }
                let _unmount = Unmount(mount.clone());
                disk_full_mid_launch(&mount);
                return;
            }
            other => eprintln!("mount -t tmpfs as root failed ({other:?}); trying a user namespace"),
        }
    }
    let exe = std::env::current_exe().expect("test binary");
    let script = "mount -t tmpfs -o size=2m tmpfs \"$1\" && exec \"$2\" --exact \"$3\" --nocapture --test-threads=1";
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c", script, "sh"])
        .arg(&mount)
        .arg(&exe)
        .arg("disk_full_mid_launch_leaves_no_corrupt_json_and_the_next_pass_cleans_up")
        .env(TMPFS_VAR, &mount)
        .output()
        .expect("run unshare (util-linux); this test needs a tmpfs and fails without one");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "the tmpfs scenario failed or could not run (neither `mount -t tmpfs` as root nor \
         `unshare --user --map-root-user --mount` worked):\n--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn images_nothing_holds_go_and_drifted_trees_stay_while_their_instances_run() {
    let sources = TempDir::new().expect("temp dir");
    let state_dir = TempDir::new().expect("temp dir");
    let state = state_dir.path();
    let (running, last_good, superseded) =
        (image(sources.path(), "running"), image(sources.path(), "last-good"), image(sources.path(), "superseded"));
    let mut local = Local::new(state);
    let (env, spec) = (env_name(), spec());
    for (generation, artifact) in [(1, &superseded), (2, &last_good), (3, &running)] {
        prepared(&mut local.provider, &env, &spec, &release(generation, artifact));
    }
    let id = local.provider.launch(&env, &spec, &group(), &release(3, &running), 1).expect("launch");

    // Tamper with the running image: the instance is marked drifted and, on the next prepare, the tree
    // is moved aside and unpacked afresh.
    let images = state.join("store/images");
    let tree = images.join(running.1.to_hex());
    fs::set_permissions(&tree, fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::set_permissions(tree.join("version.txt"), fs::Permissions::from_mode(0o644)).expect("chmod");
    fs::write(tree.join("version.txt"), "tampered\n").expect("tamper");
    let observed = local.provider.observe(&env, &spec, 2).expect("observe");
    assert!(observed.instances.iter().any(|i| i.id == id && i.drift.is_some()), "{observed:?}");
    prepared(&mut local.provider, &env, &spec, &release(3, &running));
    let drifted = |images: &Path| -> Vec<String> {
        names(images).into_iter().filter(|n| n.contains(".drifted-")).collect::<Vec<_>>()
    };
    assert_eq!(drifted(&images).len(), 1, "{:?}", names(&images));

    // `keep` is what the agent passes: the target (running) and the last good release.
    let keep: BTreeSet<Blake3Digest> = [running.1, last_good.1].into();
    let report = local.provider.collect_garbage(&keep, Duration::ZERO);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let hex = |d: &Blake3Digest| d.to_hex();
    assert!(!images.join(hex(&superseded.1)).exists(), "the superseded image is collected");
    assert!(!images.join(format!("{}.ok", hex(&superseded.1))).exists());
    assert!(!state.join("store/blobs").join(format!("{}.tar", hex(&superseded.1))).exists());
    for kept in [&running.1, &last_good.1] {
        assert!(images.join(hex(kept)).is_dir() && images.join(format!("{}.ok", hex(kept))).is_file());
        assert!(state.join("store/blobs").join(format!("{}.tar", hex(kept))).is_file());
    }
    assert_eq!(drifted(&images).len(), 1, "the drifted instance still runs: its tree is evidence");

    // Once the drifted instance is replaced, its moved-aside tree goes; an image only a record held
    // goes once no record and no environment holds it.
    local.provider.terminate(&env, &group(), &id).expect("terminate");
    // Stops run in the background: the record goes once the process is stopped and its directory removed.
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while local.provider.observe(&env, &spec, 3).expect("observe").instances.iter().any(|i| i.id == id) {
        assert!(std::time::Instant::now() < until, "the terminated instance never finished stopping");
        std::thread::sleep(Duration::from_millis(50));
    }
    let report = local.provider.collect_garbage(&[last_good.1].into(), Duration::ZERO);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(drifted(&images), Vec::<String>::new());
    assert!(!images.join(hex(&running.1)).exists(), "nothing holds the old target any more");
    assert!(images.join(hex(&last_good.1)).is_dir(), "the last good image is kept");
}
