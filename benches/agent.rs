//! Agent overhead per rollout on the local provider, for 2, 10 and 50 instances (override with
//! `STELE_BENCH_INSTANCES=2,10`). For each size: a ledger whose `staging` spec replaces every instance
//! in one batch (rolling, max_surge = capacity, health every 200 ms, threshold 1, no min-ready), v1
//! released and converged, then v2 released and `stele agent --once` timed from the release commit to
//! convergence. The agent reports how long its passes took (fetch, verify, observe and probe, plan,
//! launch, move traffic, drain and stop); the rest of the time it slept between ticks while the new
//! instances started and passed their health checks. Overhead = the passes. Also printed: the
//! agent's peak resident memory, and the time to stop N instances.
//!
//! Run: `cargo bench --bench agent`.

use std::path::PathBuf;
use std::time::Instant;

#[path = "support/cli.rs"]
mod cli;

use cli::{image, run, STELE};

/// The `settled` log line's fields from `stele agent --once --log-format json`.
fn settled(log: &str) -> serde_json::Value {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "settled")
        .map(|v| v["fields"].clone())
        .unwrap_or_else(|| panic!("no `settled` line in:\n{log}"))
}

fn main() {
    let sizes: Vec<u64> = std::env::var("STELE_BENCH_INSTANCES")
        .unwrap_or_else(|_| "2,10,50".into())
        .split(',')
        .map(|s| s.trim().parse().expect("a number"))
        .collect();
    println!("agent overhead per rollout, local provider (rolling, all instances in one batch)");
    println!(
        "{:>9} {:>12} {:>14} {:>12} {:>7} {:>14} {:>12}",
        "instances", "commit→done", "agent passes", "health wait", "passes", "peak RSS", "stop all"
    );
    for n in sizes {
        let tmp = tempfile::tempdir().expect("tempdir");
        let work = tmp.path();
        run(work, STELE, &["key", "generate", "--out", "k.key"]);
        run(work, STELE, &["init", "ledger", "--key", "k.key", "--env", "staging"]);
        let ledger = work.join("ledger");
        let spec = serde_json::json!({
            "provider": {"kind": "local"},
            "groups": [{"name": "web", "capacity": n}],
            "strategy": {"kind": "rolling", "max_surge": n, "max_unavailable": 0, "min_ready_seconds": 0},
            "health": {"kind": "http", "path": "/healthz", "interval_ms": 200, "timeout_ms": 200, "healthy_threshold": 1, "deadline_seconds": 60},
            "drift": "correct", "revert": "allow"
        });
        std::fs::write(work.join("spec.json"), spec.to_string()).expect("spec");
        run(&ledger, STELE, &["env", "set", "--env", "staging", "--spec", "../spec.json", "--key", "../k.key"]);
        let root = run(work, STELE, &["key", "id", "k.key.pub"]).split_whitespace().next().expect("id").to_owned();
        std::fs::write(
            work.join("agent.toml"),
            format!("repo = \"ledger\"\nstate_dir = \"state\"\ntrust_root = [\"{root}\"]\ninterval_seconds = 1\nwrite_status = false\n"),
        )
        .expect("config");
        let agent = ["agent", "--config", "../agent.toml", "--once", "--log-format", "json"];
        let (v1, v2) = (image(work, "1.0.0"), image(work, "2.0.0"));
        run(
            &ledger,
            STELE,
            &[
                "release",
                "--env",
                "staging",
                "--version",
                "1.0.0",
                "--image",
                v1.to_str().expect("utf-8"),
                "--key",
                "../k.key",
            ],
        );
        run(&ledger, STELE, &agent);
        let started = Instant::now();
        run(
            &ledger,
            STELE,
            &[
                "release",
                "--env",
                "staging",
                "--version",
                "2.0.0",
                "--image",
                v2.to_str().expect("utf-8"),
                "--key",
                "../k.key",
            ],
        );
        let log = run(&ledger, STELE, &agent);
        let total = started.elapsed().as_secs_f64();
        let s = settled(&log);
        let busy = s["busy_s"].as_f64().expect("busy_s");
        let elapsed = s["elapsed_s"].as_f64().expect("elapsed_s");
        let stop = Instant::now();
        let mut provider = stele::provider::local::LocalProvider::new(
            &work.join("state"),
            stele::provider::local::LocalSettings::default(),
            PathBuf::from(STELE),
        )
        .expect("provider");
        provider.destroy(&"staging".parse().expect("env")).expect("destroy");
        println!(
            "{n:>9} {:>11.2}s {:>13.3}s {:>11.2}s {:>7} {:>10} KiB {:>11.2}s",
            total,
            busy,
            elapsed - busy,
            s["passes"],
            s["peak_rss_kib"],
            stop.elapsed().as_secs_f64()
        );
    }
}
