//! Status commits per rollout, real agent on the local provider (see main.rs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::cli::{image, run as run_cmd, STELE};

/// (name, example spec, canary pause override in seconds).
const STRATEGIES: [(&str, &str, Option<u64>); 4] = [
    ("rolling", "rolling.json", None),
    ("blue/green", "blue-green.json", None),
    ("canary", "canary.json", None),
    ("canary 30s", "canary.json", Some(30)),
];

fn status_commits(ledger: &Path) -> u64 {
    let out = Command::new("git")
        .args(["rev-list", "--count", "stele/status"])
        .current_dir(ledger)
        .output()
        .expect("run git");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

pub fn run() {
    println!("status commits per rollout, real agent, local provider (examples/environments specs; `canary 30s`: its pause at 30 s)");
    println!("{:>12} {:>16} {:>16} {:>12}", "strategy", "first rollout", "v1 → v2", "v2 duration");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/environments");
    for (name, file, pause) in STRATEGIES {
        let tmp = tempfile::tempdir().expect("tempdir");
        let work = tmp.path();
        run_cmd(work, STELE, &["key", "generate", "--out", "k.key"]);
        run_cmd(work, STELE, &["init", "ledger", "--key", "k.key", "--env", "staging"]);
        let ledger = work.join("ledger");
        let mut spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(examples.join(file)).expect("read example")).expect("JSON");
        if let Some(pause) = pause {
            spec["strategy"]["steps"][0]["pause_seconds"] = pause.into();
        }
        let spec_path = work.join("spec.json");
        std::fs::write(&spec_path, spec.to_string()).expect("write spec");
        let spec = spec_path;
        run_cmd(
            &ledger,
            STELE,
            &["env", "set", "--env", "staging", "--spec", spec.to_str().expect("utf-8"), "--key", "../k.key"],
        );
        let root = run_cmd(work, STELE, &["key", "id", "k.key.pub"]).split_whitespace().next().expect("id").to_owned();
        std::fs::write(
            work.join("agent.toml"),
            format!("repo = \"ledger\"\nstate_dir = \"state\"\ntrust_root = [\"{root}\"]\ninterval_seconds = 1\n"),
        )
        .expect("config");
        let agent = ["agent", "--config", "../agent.toml", "--once", "--timeout", "120"];
        let mut figures = Vec::new();
        for version in ["1.0.0", "2.0.0"] {
            let tar = image(work, version);
            let before = status_commits(&ledger);
            let started = Instant::now();
            run_cmd(
                &ledger,
                STELE,
                &[
                    "release",
                    "--env",
                    "staging",
                    "--version",
                    version,
                    "--image",
                    tar.to_str().expect("utf-8"),
                    "--key",
                    "../k.key",
                ],
            );
            run_cmd(&ledger, STELE, &agent);
            figures.push((status_commits(&ledger) - before, started.elapsed().as_secs_f64()));
        }
        let mut provider = stele::provider::local::LocalProvider::new(
            &work.join("state"),
            stele::provider::local::LocalSettings::default(),
            PathBuf::from(STELE),
        )
        .expect("provider");
        provider.destroy(&"staging".parse().expect("env")).expect("destroy");
        println!("{name:>12} {:>9} commits {:>9} commits {:>11.1}s", figures[0].0, figures[1].0, figures[1].1);
    }
}
