//! examples/stele-agent.service works as written: `systemd-analyze verify` accepts it without a
//! warning (its ExecStart pointed at the binary under test, since /usr/local/bin/stele is not
//! installed here; nothing else changed), and what the unit makes writable agrees with what the agent
//! of examples/agent.toml writes: its state directory (with the status writer's `status.git`), the
//! local ledger it pushes the status branch into, and a HOME for git and ssh inside a writable path.
//! Fails loudly when `systemd-analyze` is missing (scripts/test.sh installs `systemd`).

mod common;

use common::STELE;
use std::path::Path;
use std::process::Command;

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every value of `key=` in the unit, in order.
fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    let prefix = format!("{key}=");
    unit.lines().filter_map(|l| l.strip_prefix(prefix.as_str())).collect()
}

#[test]
fn the_example_unit_verifies_and_makes_writable_what_the_agent_writes() {
    let unit = example("stele-agent.service");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("stele-agent.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/stele agent --config /etc/stele/agent.toml"));
    std::fs::write(&file, unit.replace("ExecStart=/usr/local/bin/stele ", &format!("ExecStart={STELE} "))).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&file)
        .output()
        .expect("systemd-analyze must be installed (scripts/test.sh installs the systemd package)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {:?}\n{stderr}", out.status);

    let config: toml::Table = toml::from_str(&example("agent.toml")).expect("examples/agent.toml parses");
    let state_dir = config["state_dir"].as_str().expect("state_dir");
    let repo = config["repo"].as_str().expect("repo");
    assert_eq!(values(&unit, "ProtectSystem"), ["strict"]);
    let writable: Vec<&str> = values(&unit, "ReadWritePaths")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .map(|p| p.trim_start_matches('-'))
        .collect();
    let state_dirs: Vec<String> = values(&unit, "StateDirectory").iter().map(|d| format!("/var/lib/{d}")).collect();
    let is_writable = |path: &str| {
        writable.iter().copied().chain(state_dirs.iter().map(String::as_str)).any(|w| Path::new(path).starts_with(w))
    };
    assert!(is_writable(&format!("{state_dir}/status.git")), "the state directory {state_dir} is not writable");
    assert!(repo.contains("://") || is_writable(repo), "the local ledger {repo} receives the status branch");
    let home: Vec<&str> = values(&unit, "Environment").iter().filter_map(|e| e.strip_prefix("HOME=")).collect();
    assert!(matches!(home[..], [h] if is_writable(h)), "HOME for git and ssh, writable: {home:?}");
}
