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

    // End to end: `stele verify` reading a repository's work tree from disk.
    let entries = 10_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let snapshot = ledger(entries);
    for (path, node) in &snapshot.nodes {
        if let ledger_format::tree::Node::File(bytes) = node {
            let p = dir.path().join(std::str::from_utf8(path).unwrap());
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
    }
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
    let stele = env!("CARGO_BIN_EXE_stele");
    let mut best = f64::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        let out =
            std::process::Command::new(stele).args(["verify", "--repo"]).arg(dir.path()).output().expect("stele runs");
        best = best.min(start.elapsed().as_secs_f64());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    }
    println!(
        "stele verify (binary, work tree on disk), {entries} entries: {:.0} ms, {:.1} us per entry",
        best * 1e3,
        best * 1e6 / entries as f64
    );
    let verify = best;

    // One release into that ledger: the write path verifies the tree it starts from once, then judges
    // the tree it makes and the step to it (SPEC.md §8.0), and commits.
    git(&["-c", "user.name=bench", "-c", "user.email=bench@example", "add", "-A"]);
    git(&["-c", "user.name=bench", "-c", "user.email=bench@example", "commit", "-q", "-m", "ledger"]);
    let key = dir.path().join("bench.key");
    BenchLedger::new().write_key(&key);
    let image = dir.path().join("image.tar");
    std::fs::write(&image, b"bench image").unwrap();
    let mut best = f64::MAX;
    for run in 0..3 {
        let start = Instant::now();
        let out = std::process::Command::new(stele)
            .args(["release", "--env", "prod", "--version", &format!("9.0.{run}"), "--image"])
            .arg(&image)
            .arg("--key")
            .arg(&key)
            .arg("--repo")
            .arg(dir.path())
            .env("GIT_AUTHOR_NAME", "bench")
            .env("GIT_AUTHOR_EMAIL", "bench@example")
            .output()
            .expect("stele runs");
        best = best.min(start.elapsed().as_secs_f64());
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        git(&["reset", "-q", "--hard", "HEAD~1"]);
    }
    println!(
        "stele release (binary) into {entries} entries: {:.0} ms, {:.2}x stele verify on the same tree",
        best * 1e3,
        best / verify
    );
}
