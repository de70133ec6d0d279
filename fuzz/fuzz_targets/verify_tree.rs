//! Single-tree verification (SPEC.md §7.2) of a tree built from the input (the container format of
//! `stele_fuzz::parse_tree`: `%% <path>` lines, each followed by the file's bytes), judged at the test
//! vectors' `now`. A tree that verifies with expiry judged also verifies without, and its verdict does
//! not depend on anything but the tree.
#![no_main]

use ledger_format::tree::{verify_snapshot_with, Expiry};
use ledger_format::verify_snapshot;
use libfuzzer_sys::fuzz_target;
use stele_fuzz::{parse_tree, vectors_now};

fuzz_target!(|data: &[u8]| {
    let snapshot = parse_tree(data);
    match verify_snapshot(&snapshot, vectors_now()) {
        Ok(tree) => {
            let unjudged = verify_snapshot_with(&snapshot, Expiry::NotJudged)
                .expect("a tree that verifies with expiry judged verifies without");
            assert_eq!(tree.environments.len(), unjudged.environments.len());
        }
        Err(problems) => assert!(!problems.is_empty(), "a refused tree names at least one problem"),
    }
});
