//! The test vectors in `test-vectors/`: they match what the generator writes, and every verdict they
//! state is the one `verify_snapshot` reaches, judged from the files alone.

#[path = "support/vectors.rs"]
mod vectors;

use ledger_format::check::Check;
use ledger_format::freshness::{check_current, TIMESTAMP_PATH};
use ledger_format::observation::verify_observation;
use ledger_format::time::Timestamp;
use ledger_format::tree::{environment_path, verify_snapshot, POLICY_PATH};
use ledger_format::types::{CommitId, EnvName, Policy, TimestampDoc};
use ledger_format::Document;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use vectors::Vector;

const REGENERATE: &str = "run `cargo run -p ledger-format --example gen_vectors` and commit test-vectors/";

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("test-vectors")
}

/// Every file under `dir`, by path relative to it with `/` separators.
fn read_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}; {REGENERATE}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entries are readable").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let relative = path.strip_prefix(root).expect("walked paths lie under the root");
                let name = relative.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
                out.insert(name, fs::read(&path).expect("vector files are readable"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn committed_vectors_match_the_generator() {
    let committed = read_tree(&vectors_dir());
    let fresh = vectors::render(&vectors::build_cases());
    let names: BTreeSet<&String> = committed.keys().chain(fresh.keys()).collect();
    let differing: Vec<String> = names
        .into_iter()
        .filter_map(|name| match (committed.get(name), fresh.get(name)) {
            (Some(a), Some(b)) if a == b => None,
            (Some(_), Some(_)) => Some(format!("{name} differs")),
            (Some(_), None) => Some(format!("{name} is no longer generated")),
            (None, _) => Some(format!("{name} is missing")),
        })
        .collect();
    assert!(differing.is_empty(), "test-vectors/ is out of date ({}); {REGENERATE}", differing.join(", "));
    // History vectors (tests/history_vectors.rs) have their own budget.
    let total: usize = committed
        .iter()
        .filter(|(name, _)| name.starts_with("valid/") || name.starts_with("invalid/"))
        .map(|(_, b)| b.len())
        .sum();
    assert!(total < 512 << 10, "the tree vectors hold {total} bytes; keep the vectors small");
}

/// The vector files as they are on disk, by name (`valid/basic.json`).
fn load_vectors() -> BTreeMap<String, Vector> {
    let vectors: BTreeMap<String, Vector> = read_tree(&vectors_dir())
        .into_iter()
        .filter(|(name, _)| name.ends_with(".json") && (name.starts_with("valid/") || name.starts_with("invalid/")))
        .map(|(name, bytes)| {
            let vector = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, vector)
        })
        .collect();
    assert!(vectors.len() >= 40, "only {} vector files found; {REGENERATE}", vectors.len());
    vectors
}

fn check_vector(name: &str, vector: &Vector) -> Result<(), String> {
    let snapshot = vectors::to_snapshot(vector)?;
    let now: Timestamp = vector.now.parse()?;
    if name.starts_with("valid/") != vector.expected.valid {
        return Err("valid vectors, and only they, live in valid/".into());
    }
    match verify_snapshot(&snapshot, now) {
        Ok(tree) => {
            if !vector.expected.valid {
                return Err(format!("verified, but expected problems {:?}", vector.expected.problems));
            }
            let mut hashes = BTreeMap::new();
            hashes.insert(POLICY_PATH.to_owned(), tree.policy.hash().to_hex());
            if let Some(t) = &tree.timestamp {
                hashes.insert(TIMESTAMP_PATH.to_owned(), t.hash().to_hex());
            }
            for (env, verified) in &tree.environments {
                hashes.insert(environment_path(env), verified.spec.hash().to_hex());
                for entry in &verified.entries {
                    hashes.insert(
                        tree.policy.payload.layout().entry_path(env, entry.doc.payload.seq),
                        entry.doc.hash().to_hex(),
                    );
                }
            }
            if hashes != vector.expected.hashes {
                return Err(format!("document hashes {hashes:#?}, expected {:#?}", vector.expected.hashes));
            }
        }
        Err(problems) => {
            let show = || problems.iter().map(|p| format!("\n  {p}")).collect::<String>();
            if vector.expected.valid {
                return Err(format!("expected a valid tree, got:{}", show()));
            }
            // The verdict is the exact set of (path, check, cause) triples (SPEC.md §9).
            let mut got: Vec<(String, String, Option<String>)> = problems
                .iter()
                .map(|p| (p.path.clone(), p.check.id().to_owned(), p.cause.map(|c| c.id().to_owned())))
                .collect();
            let mut want: Vec<(String, String, Option<String>)> =
                vector.expected.problems.iter().map(|p| (p.path.clone(), p.check.clone(), p.cause.clone())).collect();
            got.sort();
            want.sort();
            if got != want {
                return Err(format!("problems {got:?}, expected {want:?}:{}", show()));
            }
        }
    }
    Ok(())
}

#[test]
fn every_vector_gets_its_verdict_from_the_files_alone() {
    let failures: Vec<String> = load_vectors()
        .iter()
        .filter_map(|(name, vector)| check_vector(name, vector).err().map(|e| format!("{name}: {e}")))
        .collect();
    assert!(failures.is_empty(), "{} vectors fail:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn every_check_has_a_vector() {
    let vectors = load_vectors();
    let covered: BTreeSet<&str> = vectors
        .values()
        .flat_map(|v| &v.expected.problems)
        .flat_map(|p| std::iter::once(p.check.as_str()).chain(p.cause.as_deref()))
        .collect();
    // History checks judge transitions between trees; the history vectors cover them. Observations (O)
    // and the rule for whoever acts (F3) have vectors of their own, below.
    let tree_check = |c: &&Check| !c.is_history() && **c != Check::F3 && !c.id().starts_with('O');
    let missing: Vec<&str> =
        Check::ALL.iter().filter(tree_check).map(|c| c.id()).filter(|id| !covered.contains(id)).collect();
    assert!(missing.is_empty(), "no invalid vector expects checks {missing:?}; add cases to tests/support/vectors.rs");
}

#[test]
fn base64_round_trips_and_refuses_non_canonical_input() {
    for len in 0..8 {
        let bytes: Vec<u8> = (0..len).map(|i| 0xf0 ^ (i as u8 * 37)).collect();
        let text = vectors::base64_encode(&bytes);
        assert_eq!(vectors::base64_decode(&text), Some(bytes), "{text}");
    }
    assert_eq!(vectors::base64_encode(b"foobar"), "Zm9vYmFy");
    assert_eq!(vectors::base64_encode(b"fo"), "Zm8=");
    for bad in ["Zm8", "Zm9=", "Z===", "Zm=8", "Zm8=Zm8=", "Zm8*"] {
        assert_eq!(vectors::base64_decode(bad), None, "{bad}");
    }
}

/// Vector files of one revision 4 kind (`observations/`, `freshness/`), by name.
fn load_kind<T: serde::de::DeserializeOwned>(dir: &str) -> BTreeMap<String, T> {
    let found: BTreeMap<String, T> = read_tree(&vectors_dir())
        .into_iter()
        .filter(|(name, _)| name.starts_with(&format!("{dir}/")) && name.ends_with(".json"))
        .map(|(name, bytes)| {
            let vector = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, vector)
        })
        .collect();
    assert!(found.len() >= 5, "only {} {dir} vectors found; {REGENERATE}", found.len());
    found
}

#[test]
fn every_observation_vector_gets_its_verdict() {
    let mut covered = BTreeSet::new();
    for (name, v) in load_kind::<vectors::rev4::ObservationVector>("observations") {
        let policy = Document::<Policy>::parse(v.policy.as_bytes()).unwrap_or_else(|e| panic!("{name}: policy: {e}"));
        let env: EnvName = v.env.parse().unwrap_or_else(|e| panic!("{name}: env: {e}"));
        let verified: Vec<CommitId> = v.verified_commits.iter().map(|c| c.parse().expect("commit ids")).collect();
        let got = verify_observation(v.file.as_bytes(), &env, |c| verified.contains(c).then_some(&policy.payload));
        match (got, &v.expected) {
            (Ok(o), e) if e.verified => assert_eq!(Some(o.agent.to_hex()), e.agent, "{name}: signed by another agent"),
            (Ok(_), e) => panic!("{name}: verified, expected {:?}", e.check),
            (Err(err), e) if e.verified => panic!("{name}: {err}, expected verified"),
            (Err(err), e) => {
                assert_eq!(Some(err.check.id().to_owned()), e.check, "{name}: {err}");
                covered.insert(err.check);
            }
        }
    }
    for check in [Check::O1, Check::O2, Check::O3, Check::O4] {
        assert!(covered.contains(&check), "no observation vector expects {check}");
    }
}

#[test]
fn every_freshness_vector_gets_its_verdict() {
    let mut refused = 0;
    for (name, v) in load_kind::<vectors::rev4::FreshnessVector>("freshness") {
        let policy = Document::<Policy>::parse(v.policy.as_bytes()).unwrap_or_else(|e| panic!("{name}: policy: {e}"));
        let timestamp = v
            .timestamp
            .as_ref()
            .map(|t| Document::<TimestampDoc>::parse(t.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}")));
        let now: Timestamp = v.now.parse().expect("now");
        let got = check_current(&policy.payload, timestamp.as_ref(), v.seen, now);
        match got {
            Ok(()) => assert!(v.expected.current, "{name}: current, expected {:?}", v.expected.check),
            Err(e) => {
                assert!(!v.expected.current, "{name}: {e}, expected current");
                assert_eq!(Some(e.check.id().to_owned()), v.expected.check, "{name}: {e}");
                refused += 1;
            }
        }
    }
    assert!(refused >= 4, "the freshness vectors refuse only {refused} heads");
}
