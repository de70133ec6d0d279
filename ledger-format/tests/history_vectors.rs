//! The history vectors in `test-vectors/history/`: every verdict they state is the one the history
//! verifier (`ledger_format::history`) reaches, replayed from the files alone, and they cover every
//! history check.

#[path = "support/vectors.rs"]
mod vectors;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use vectors::history::{self, HistoryVector};

const REGENERATE: &str = "run `cargo run -p ledger-format --example gen_vectors` and commit test-vectors/";

fn history_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("test-vectors").join("history")
}

/// The history vector files as they are on disk, by file name.
fn load() -> BTreeMap<String, (Vec<u8>, HistoryVector)> {
    let entries =
        fs::read_dir(history_dir()).unwrap_or_else(|e| panic!("reading test-vectors/history: {e}; {REGENERATE}"));
    let mut out = BTreeMap::new();
    for entry in entries {
        let path = entry.expect("directory entries are readable").path();
        let name = path.file_name().expect("files have names").to_string_lossy().into_owned();
        if !name.ends_with(".json") {
            continue;
        }
        let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let vector = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("history/{name}: {e}"));
        out.insert(name, (bytes, vector));
    }
    assert!(out.len() >= 20, "only {} history vectors found; {REGENERATE}", out.len());
    out
}

#[test]
fn committed_history_vectors_match_the_generator() {
    let committed = load();
    let fresh = history::render(&history::build_cases());
    let fresh: BTreeMap<String, Vec<u8>> =
        fresh.into_iter().map(|(name, bytes)| (name.trim_start_matches("history/").to_owned(), bytes)).collect();
    let names: BTreeSet<&String> = committed.keys().chain(fresh.keys()).collect();
    let differing: Vec<String> = names
        .into_iter()
        .filter_map(|name| match (committed.get(name), fresh.get(name)) {
            (Some((a, _)), Some(b)) if a == b => None,
            (Some(_), Some(_)) => Some(format!("{name} differs")),
            (Some(_), None) => Some(format!("{name} is no longer generated")),
            (None, _) => Some(format!("{name} is missing")),
        })
        .collect();
    assert!(differing.is_empty(), "test-vectors/history/ is out of date ({}); {REGENERATE}", differing.join(", "));
    let total: usize = committed.values().map(|(bytes, _)| bytes.len()).sum();
    assert!(total < 256 << 10, "test-vectors/history/ holds {total} bytes; keep the vectors small");
}

#[test]
fn every_history_vector_gets_its_verdicts_from_the_files_alone() {
    let failures: Vec<String> = load()
        .iter()
        .filter_map(|(name, (_, vector))| {
            // A panic is a failure of that vector (SPEC revision 3: no panics on ledger data), not of the run.
            let outcome = std::panic::catch_unwind(|| history::check(vector));
            match outcome {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("history/{name}: {e}")),
                Err(panic) => Some(format!("history/{name}: PANIC {}", panic_text(&panic))),
            }
        })
        .collect();
    assert!(failures.is_empty(), "{} history vectors fail:\n{}", failures.len(), failures.join("\n"));
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(no message)".into())
}

#[test]
fn history_vectors_cover_every_history_check_and_every_event() {
    let vectors = load();
    let steps = || vectors.values().flat_map(|(_, v)| &v.steps);
    let checks: BTreeSet<&str> =
        steps().flat_map(|s| s.expected.problems.iter().flatten()).map(|p| p.check.as_str()).collect();
    let actions: BTreeSet<&str> =
        steps().flat_map(|s| s.expected.events.iter().flatten()).map(|e| e.action.as_str()).collect();
    // H1 (a new head that does not descend from the last verified commit) and P7 (genesis against the
    // anchor) are not transitions between two trees; the history unit tests and the git suites cover them.
    let want_checks = ["T2", "D2", "P5", "P6", "N4", "N5", "N6", "E1", "E3", "E5", "H2", "H3"];
    let missing: Vec<&&str> = want_checks.iter().filter(|c| !checks.contains(**c)).collect();
    assert!(missing.is_empty(), "no history vector expects {missing:?}");
    let want_actions = ["policy_change", "spec_change", "promote", "co_sign", "rollback", "restore"];
    let missing: Vec<&&str> = want_actions.iter().filter(|a| !actions.contains(**a)).collect();
    assert!(missing.is_empty(), "no history vector expects events {missing:?}");
    let signed_steps = steps().filter(|s| s.commit.ssh_signature.is_some()).count();
    assert!(signed_steps >= 3, "only {signed_steps} SSH-signed commits in the history vectors");
}

#[test]
fn the_driver_notices_a_wrong_verdict() {
    // Guards the driver itself: flip one expected verdict and one expected generation, and the replay
    // must report each.
    let cases = history::build_cases();
    let case = cases.iter().find(|c| c.name == "history/rollback-allow-and-restore").expect("the case exists");
    let mut flipped = case.vector.clone();
    flipped.steps[0].expected.accepted = false;
    assert!(history::check(&flipped).is_err(), "an accepted step stated as refused must fail the replay");
    let mut off_by_one = case.vector.clone();
    let events = off_by_one.steps[0].expected.events.as_mut().expect("the first step is accepted");
    events[0].generation = events[0].generation.map(|g| g + 1);
    let err = history::check(&off_by_one).expect_err("a wrong generation must fail the replay");
    assert!(err.contains("step 1"), "{err}");
}
