//! A signed release whose archive can never be unpacked must stall the environment on the agent's first
//! pass, naming the entry, instead of being retried with backoff for ever (issue 11, fault 4). Real
//! `stele` binary, real Git ledger, the local provider.

mod common;

use common::{path_str, Sandbox, OK};
use serde_json::Value;
use std::time::{Duration, Instant};

/// `stele agent --once` exit code when an environment is stalled.
const STALLED: i32 = 1;

/// An image whose only odd entry is a file under 49 directories of 100-byte names (5 049 bytes, written
/// with a GNU long-name entry as `stele image pack` would): Linux refuses to create it (ENAMETOOLONG).
fn deep_archive() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let deep = vec!["d".repeat(100); 50].join("/");
    let files: [(&str, &[u8], u32); 3] = [
        ("bin/app", b"#!/bin/sh\nexec sleep 1000\n", 0o755),
        (&deep, b"deep", 0o644),
        ("stele-image.json", br#"{"command": "bin/app"}"#, 0o644),
    ];
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_mtime(0);
    builder.append_data(&mut dir, "bin", std::io::empty()).expect("append bin");
    for (name, data, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        header.set_mtime(0);
        builder.append_data(&mut header, name, data).expect("append a file");
    }
    builder.into_inner().expect("finish the archive")
}

#[test]
fn archive_with_an_over_long_path_stalls_on_the_first_pass_naming_the_entry() {
    let sb = Sandbox::new();
    let alice = sb.key("alice");
    let ledger = sb.ledger("ledger", "bad-image-test", &alice, &["staging"]);
    let state = sb.path("agent-state");
    let config = sb.path("agent.toml");
    std::fs::write(
        &config,
        format!(
            "repo = \"{}\"\nstate_dir = \"{}\"\ntrust_root = [\"{}\"]\ninterval_seconds = 1\n",
            path_str(&ledger.dir),
            path_str(&state),
            alice.id
        ),
    )
    .expect("write agent.toml");
    let tar = sb.path("deep.tar");
    std::fs::write(&tar, deep_archive()).expect("write the archive");
    ledger.release("staging", "1.0.0", &tar, &alice);

    let started = Instant::now();
    let out = ledger.stele(["agent", "--config", &path_str(&config), "--once", "--timeout", "30"]);
    out.expect(STALLED);
    assert!(started.elapsed() < Duration::from_secs(20), "stalled at once, not after retries\n{}", out.dump());
    assert!(!out.stderr.contains("retrying later"), "a bad image is never retried\n{}", out.dump());

    let status = ledger.stele(["status", "--json", "--env", "staging"]);
    status.expect(OK);
    let status: Value = serde_json::from_str(&status.stdout).expect("status JSON");
    let env = &status["environments"][0];
    assert_eq!(env["phase"], "Stalled", "{env:#}");
    let message = env["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("1.0.0") && message.contains("dddddddddd") && message.contains("at most 1024 bytes"),
        "the release, the entry and the bound are named: {message}"
    );
    let images: Vec<_> = std::fs::read_dir(state.join("store/images"))
        .map(|dir| dir.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(images.is_empty(), "nothing was unpacked: {images:?}");
}
