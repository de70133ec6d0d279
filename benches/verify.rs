//! What verification costs, in figures printed to stdout (run: `cargo bench --bench verify`).
//!
//! Measures, in one run on one machine: the raw rate of strict Ed25519 verification, the cost per
//! entry of `verify_snapshot` on generated ledgers of several sizes, and `stele verify` end to end
//! (reading the work tree from disk) on a ledger repository written by the same generator.

mod support;

use ledger_format::tree::{verify_snapshot, Snapshot};
use ledger_format::types::EnvName;
use ledger_format::Timestamp;
use std::time::Instant;
use support::{raw_verify_rates, BenchLedger};

fn ledger(entries: usize) -> Snapshot {
    let env: EnvName = "prod".parse().unwrap();
    let mut gen = BenchLedger::new();
    let mut snapshot = Snapshot::default();
    for (path, bytes) in gen.genesis(std::slice::from_ref(&env)) {
        snapshot.insert_file(&path, bytes);
    }
    for _ in 0..entries {
        let (path, bytes) = gen.next_entry(&env);
        snapshot.insert_file(&path, bytes);
    }
    snapshot
}

/// `entries` entries dealt round-robin over `envs` environments (`prod`, `env-1`, ...) in `layout`.
fn spread(entries: usize, envs: usize, layout: ledger_format::tree::Layout) -> Snapshot {
    let names: Vec<EnvName> = (0..envs.max(1))
        .map(|i| if i == 0 { "prod".parse().unwrap() } else { format!("env-{i}").parse().unwrap() })
        .collect();
    let mut gen = BenchLedger::new().with_layout(layout);
    let mut snapshot = Snapshot::default();
    for (path, bytes) in gen.genesis(&names) {
        snapshot.insert_file(&path, bytes);
    }
    for i in 0..entries {
        let (path, bytes) = gen.next_entry(&names[i % names.len()]);
        snapshot.insert_file(&path, bytes);
    }
    snapshot
}

fn main() {
    let now = Timestamp::from_unix(1_900_000_000).unwrap();
    let (raw, _) = raw_verify_rates();
    println!("raw verify_strict (1 core): {raw:.0} signatures/s, {:.1} us each", 1e6 / raw);

    for entries in [1_000usize, 10_000] {
        let snapshot = ledger(entries);
        let bytes: usize =
            snapshot.nodes.values().map(|n| if let ledger_format::tree::Node::File(b) = n { b.len() } else { 0 }).sum();
        let runs = if entries <= 1_000 { 5 } else { 2 };
        let mut best = f64::MAX;
        for _ in 0..runs {
            let start = Instant::now();
            let tree = verify_snapshot(&snapshot, now).expect("generated ledger verifies");
            best = best.min(start.elapsed().as_secs_f64());
            assert_eq!(tree.environments.values().next().map(|e| e.entries.len()), Some(entries));
        }
        println!(
            "verify_snapshot, {entries} entries ({} KiB): {:.1} ms, {:.1} us per entry, {:.0} entries/s ({:.0}% of raw verify)",
            bytes / 1024,
            best * 1e3,
            best * 1e6 / entries as f64,
            entries as f64 / best,
            100.0 * (entries as f64 / best) / raw
        );
    }

    // End to end: `stele verify` reading a repository's work tree from disk, and one `stele release`
    // into it. STELE_BENCH_E2E_ENTRIES sets the size (default 10 000); STELE_BENCH_BASELINE=PATH runs a
    // baseline build's commands too, alternating with this build's.
    // STELE_BENCH_E2E_ENVS spreads them over that many environments (default 1: all in `prod`), and
    // STELE_BENCH_E2E_LAYOUT=buckets writes them in the bucket layout (SPEC.md §2.3.1).
    let entries: usize =
        std::env::var("STELE_BENCH_E2E_ENTRIES").map_or(10_000, |n| n.trim().parse().expect("a number of entries"));
    let envs: usize = std::env::var("STELE_BENCH_E2E_ENVS").map_or(1, |n| n.trim().parse().expect("a number of envs"));
    let layout = match std::env::var("STELE_BENCH_E2E_LAYOUT").as_deref() {
        Ok("buckets") => ledger_format::tree::Layout::Buckets,
        Ok("flat") | Err(_) => ledger_format::tree::Layout::Flat,
        Ok(other) => panic!("STELE_BENCH_E2E_LAYOUT={other}: flat or buckets"),
    };
    println!("end to end: {entries} entries in {envs} environment(s), {} layout", layout.name());
    // STELE_BENCH_E2E_KEEP=1 keeps the repository (its path is printed), for profiling.
    let dir = tempfile::tempdir().expect("temp dir");
    if std::env::var("STELE_BENCH_E2E_KEEP").is_ok() {
        println!("keeping {}", dir.path().display());
    }
    let snapshot = spread(entries, envs, layout);
    for (path, node) in &snapshot.nodes {
        if let ledger_format::tree::Node::File(bytes) = node {
            let p = dir.path().join(std::str::from_utf8(path).unwrap());
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
    }
    drop(snapshot);
    let git = |args: &[&str]| {
        let ok = std::process::Command::new("git")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("git runs")
            .status
            .success();
        assert!(ok, "git {args:?} failed");
    };
    git(&["init", "-q"]);
    git(&["-c", "user.name=bench", "-c", "user.email=bench@example", "add", "-A"]);
    git(&["-c", "user.name=bench", "-c", "user.email=bench@example", "commit", "-q", "-m", "ledger"]);
    let key = dir.path().join("bench.key");
    BenchLedger::new().write_key(&key);
    // A real image: `stele release` refuses a file the environment's provider could not run.
    let app = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(app.path().join("bin")).unwrap();
    std::fs::write(app.path().join("bin/app"), "#!/bin/sh\nexec sleep 3600\n").unwrap();
    std::fs::set_permissions(app.path().join("bin/app"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(app.path().join("stele-image.json"), r#"{"command": "bin/app", "args": [], "env": {}}"#).unwrap();
    let image = dir.path().join(".git/image.tar");
    let packed = std::process::Command::new(env!("CARGO_BIN_EXE_stele"))
        .args(["image", "pack"])
        .arg(app.path())
        .arg("--out")
        .arg(&image)
        .output()
        .expect("stele runs");
    assert!(packed.status.success(), "stele image pack: {}", String::from_utf8_lossy(&packed.stderr));
    let mut builds = vec![("this build", env!("CARGO_BIN_EXE_stele").to_owned())];
    if let Ok(base) = std::env::var("STELE_BENCH_BASELINE") {
        builds.push(("baseline", base));
    }
    // A second signer's key, for `policy add-signer` and `sign`, and the spec `env set` signs.
    let second = dir.path().join(".git/second.key");
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_stele"))
        .args(["key", "generate", "--out"])
        .arg(&second)
        .output()
        .expect("stele runs");
    assert!(made.status.success(), "stele key generate: {}", String::from_utf8_lossy(&made.stderr));
    let spec = dir.path().join(".git/prod-spec.json");
    let shown = std::process::Command::new(env!("CARGO_BIN_EXE_stele"))
        .args(["env", "show", "--env", "prod", "--repo"])
        .arg(dir.path())
        .output()
        .expect("stele runs");
    assert!(shown.status.success(), "stele env show: {}", String::from_utf8_lossy(&shown.stderr));
    std::fs::write(&spec, &shown.stdout).unwrap();

    // Per build: `stele verify` (which keeps HEAD's verified state), then each writing command in
    // turn, each starting from the state the one before kept, then a release with no kept state (a
    // fresh clone, or a build that keeps none), then back to the ledger as generated.
    let (repo, key, image) = (dir.path().to_str().unwrap(), key.to_str().unwrap(), image.to_str().unwrap());
    let (second, second_pub, spec) =
        (second.to_str().unwrap().to_owned(), format!("{}.pub", second.display()), spec.to_str().unwrap().to_owned());
    let writers: Vec<(&str, Vec<&str>)> = vec![
        ("release", vec!["release", "--env", "prod", "--image", image, "--key", key, "--version"]),
        ("env set", vec!["env", "set", "--env", "prod", "--spec", &spec, "--key", key]),
        ("policy add-signer", vec!["policy", "add-signer", "--env", "prod", "--pubkey", &second_pub, "--key", key]),
        ("sign --env", vec!["sign", "--env", "prod", "--key", &second]),
        ("rollback", vec!["rollback", "--env", "prod", "--key", key]),
        ("release, no kept state", vec!["release", "--env", "prod", "--image", image, "--key", key, "--version"]),
    ];
    let mut verify = vec![(f64::MAX, 0.0f64); builds.len()];
    let mut times = vec![vec![(f64::MAX, 0.0f64); writers.len()]; builds.len()];
    let cache = dir.path().join(".git/stele/verified-state.json");
    for run in 0..3 {
        for (i, (_, stele)) in builds.iter().enumerate() {
            let (t, rss) = timed(stele, &["verify", "--repo", repo], dir.path());
            verify[i] = (verify[i].0.min(t), verify[i].1.max(rss));
            for (k, (what, args)) in writers.iter().enumerate() {
                let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
                if args[0] == "release" {
                    args.push(format!("9.{i}.{run}{k}"));
                }
                if *what == "release, no kept state" {
                    let _ = std::fs::remove_file(&cache);
                }
                args.extend(["--repo".to_owned(), repo.to_owned()]);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let (t, rss) = timed(stele, &args, dir.path());
                times[i][k] = (times[i][k].0.min(t), times[i][k].1.max(rss));
            }
            git(&["reset", "-q", "--hard", &format!("HEAD~{}", writers.len())]);
        }
    }
    if std::env::var("STELE_BENCH_E2E_KEEP").is_ok() {
        std::mem::forget(dir);
    }
    for (i, (name, _)) in builds.iter().enumerate() {
        println!(
            "{name}: stele verify (binary, work tree on disk), {entries} entries: {:.0} ms, {:.1} us per entry, peak RSS \
             {:.0} MiB (best of 3)",
            verify[i].0 * 1e3,
            verify[i].0 * 1e6 / entries as f64,
            verify[i].1,
        );
        for ((what, _), (t, rss)) in writers.iter().zip(&times[i]) {
            println!(
                "{name}:   stele {what}: {:.0} ms ({:.3}x verify), peak RSS {:.0} MiB (target <= 500 ms, 64 MiB)",
                t * 1e3,
                t / verify[i].0,
                rss
            );
        }
    }
}

/// Runs `stele args` under `/usr/bin/time -f %M` (the harness's own RSS would otherwise count, see
/// benches/replay.rs); returns its wall time in seconds and its peak RSS in MiB.
fn timed(stele: &str, args: &[&str], dir: &std::path::Path) -> (f64, f64) {
    assert!(std::path::Path::new("/usr/bin/time").exists(), "this bench needs /usr/bin/time (Debian package `time`)");
    let rss = dir.join(".git/maxrss");
    let start = Instant::now();
    let out = std::process::Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(&rss)
        .arg(stele)
        .args(args)
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example")
        .output()
        .expect("stele runs");
    let elapsed = start.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let kib: f64 = std::fs::read_to_string(&rss).unwrap().trim().parse().expect("time -f %M prints KiB");
    (elapsed, kib / 1024.0)
}
