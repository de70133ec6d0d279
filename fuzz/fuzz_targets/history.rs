//! History verification (SPEC.md §8): `apply_step` over random first-parent histories built from the
//! history vectors' trees, documents and commit signatures, judged as §8.6 says (each commit from the
//! last accepted tree). Properties:
//!
//! - a refused step leaves the verified state exactly as it was (all or nothing);
//! - an accepted step's tree verifies as a tree, expiry not judged (§8.0: the transition rules imply
//!   the tree rules);
//! - a target generation never goes down and goes up by at most one per step (§8.5).
//!
//! The input is a program, one operation per byte (see `run`); past the end of the input every read
//! is zero. Replaying a vector is `[genesis, 1, step, step, ...]` (seeds/history/).
#![no_main]

use ledger_format::document::Direct;
use ledger_format::history::{apply_step, genesis, step_between, CommitInfo, LedgerState};
use ledger_format::tree::{verify_snapshot_with, Expiry, Node, Snapshot};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use stele_fuzz::{load_history_material, Cursor, HistoryMaterial};

/// More commits than any vector has; bounds the time one input takes.
const MAX_COMMITS: usize = 24;

fn material() -> &'static HistoryMaterial {
    static MATERIAL: OnceLock<HistoryMaterial> = OnceLock::new();
    MATERIAL.get_or_init(load_history_material)
}

fn fingerprint(state: &LedgerState) -> String {
    serde_json::to_string(state).expect("a ledger state serializes")
}

/// Judges the commit from `verified` to `current` and checks the properties above.
fn commit(state: &mut LedgerState, verified: &mut Snapshot, current: &Snapshot, info: CommitInfo) {
    let before = fingerprint(state);
    let generations: Vec<_> = state.envs.iter().map(|(env, h)| (env.clone(), h.generation)).collect();
    let step = step_between(verified, current, info);
    match apply_step(state, &step, &Direct) {
        Ok(_) => {
            if let Err(problems) = verify_snapshot_with(current, Expiry::NotJudged) {
                panic!("accepted step {} leads to a tree that does not verify: {problems:?}", step.commit.id);
            }
            for (env, old) in generations {
                if let Some(h) = state.envs.get(&env) {
                    assert!(
                        h.generation >= old && h.generation <= old + 1,
                        "{env}: target generation went from {old} to {} in one step",
                        h.generation
                    );
                }
            }
            *verified = current.clone();
        }
        Err(problems) => {
            assert!(!problems.is_empty(), "a refused step names at least one problem");
            assert_eq!(fingerprint(state), before, "a refused step changed the verified state");
        }
    }
}

/// Operations (the low three bits of a byte; operands follow):
/// 0 commit the work tree (then a byte: an SSH signature of the vectors, if below their count);
/// 1 apply and commit a vector's step (u16 index), with its signature;
/// 2 write a vector file (u16) at a vector path (u16);
/// 3 delete a path (u16);
/// 4 write raw bytes (a length byte, then the bytes) at a path (u16);
/// 5 overwrite one byte (u16 offset, then the byte) of the file at a path (u16);
/// 6 move the node at one path (u16) to another (u16);
/// 7 reset the work tree to the last accepted tree.
fn run(data: &[u8]) {
    let m = material();
    let mut input = Cursor::new(data);
    let (genesis_tree, anchor) = &m.geneses[usize::from(input.byte()) % m.geneses.len()];
    let info = |n: usize| CommitInfo { id: format!("c{n}"), summary: format!("fuzz commit {n}"), ..Default::default() };
    let Ok((mut state, _)) = genesis(genesis_tree, anchor, &info(0)) else {
        panic!("the genesis tree of a history vector is refused");
    };
    let mut verified = genesis_tree.clone();
    let mut current = verified.clone();
    let mut commits = 0;
    let mut dirty = false;
    while !input.done() && commits < MAX_COMMITS {
        match input.byte() % 8 {
            0 => {
                let sig = usize::from(input.byte());
                let mut c = info(commits + 1);
                c.ssh_signature = m.signatures.get(sig).cloned();
                commit(&mut state, &mut verified, &current, c);
                (commits, dirty) = (commits + 1, false);
            }
            1 => {
                let step = &m.steps[input.index(m.steps.len())];
                for path in &step.delete {
                    current.nodes.remove(path);
                }
                for (path, node) in &step.set {
                    current.nodes.insert(path.clone(), node.clone());
                }
                let mut c = info(commits + 1);
                c.ssh_signature = step.signature.clone();
                c.parent = step.parent.clone();
                commit(&mut state, &mut verified, &current, c);
                (commits, dirty) = (commits + 1, false);
            }
            2 => {
                let file = m.files[input.index(m.files.len())].clone();
                current.nodes.insert(m.paths[input.index(m.paths.len())].clone(), Node::File(file));
                dirty = true;
            }
            3 => {
                current.nodes.remove(&m.paths[input.index(m.paths.len())]);
                dirty = true;
            }
            4 => {
                let len = usize::from(input.byte());
                let bytes = input.bytes(len).to_vec();
                current.nodes.insert(m.paths[input.index(m.paths.len())].clone(), Node::File(bytes));
                dirty = true;
            }
            5 => {
                let (offset, value) = (usize::from(input.u16()), input.byte());
                if let Some(Node::File(bytes)) = current.nodes.get_mut(&m.paths[input.index(m.paths.len())]) {
                    if !bytes.is_empty() {
                        let at = offset % bytes.len();
                        bytes[at] = value;
                    }
                }
                dirty = true;
            }
            6 => {
                let from = &m.paths[input.index(m.paths.len())];
                let to = &m.paths[input.index(m.paths.len())];
                if let Some(node) = current.nodes.remove(from) {
                    current.nodes.insert(to.clone(), node);
                }
                dirty = true;
            }
            _ => {
                current = verified.clone();
                dirty = true;
            }
        }
    }
    if dirty && commits < MAX_COMMITS {
        commit(&mut state, &mut verified, &current, info(commits + 1));
    }
}

fuzz_target!(|data: &[u8]| run(data));
