//! Tree verification of a tree large enough that its entries are parsed on all cores (at least 256
//! entry files): the verdict and every problem, in order, are what a verifier judging one file after
//! another finds (SPEC.md §7.2).

#[path = "support/vectors.rs"]
mod vectors;

use ledger_format::document::Document;
use ledger_format::tree::{verify_snapshot_with, Expiry, Node, Snapshot, POLICY_PATH};
use ledger_format::types::{Entry, RevertPolicy};
use vectors::history::cases::{entry_path, policy_v, release, root_signed, signed_by, spec, spec_path};
use vectors::Keys;

/// prod with `prod` entries and staging with `staging` entries, all signed by alice.
fn tree(k: &Keys, prod: u64, staging: u64) -> Snapshot {
    let mut t = Snapshot::default();
    let policy = policy_v(k, 1, &[&k.alice], &[("prod", &[&k.alice], 1), ("staging", &[&k.alice], 1)]);
    t.insert_file(POLICY_PATH, root_signed(policy, k).to_file_bytes());
    for (env, n) in [("prod", prod), ("staging", staging)] {
        t.insert_file(&spec_path(env), signed_by(spec(env, RevertPolicy::Signed), &[&k.alice]).to_file_bytes());
        let mut prev: Option<Document<Entry>> = None;
        for seq in 1..=n {
            let doc = release(env, seq, prev.as_ref(), &[&k.alice]);
            t.insert_file(&entry_path(env, seq), doc.to_file_bytes());
            prev = Some(doc);
        }
    }
    t
}

#[test]
fn a_large_tree_verifies_and_keeps_its_chains_in_order() {
    let k = Keys::new();
    let verified = verify_snapshot_with(&tree(&k, 300, 60), Expiry::NotJudged).expect("the tree verifies");
    let prod = &verified.environments[&"prod".parse().unwrap()];
    assert_eq!(prod.entries.len(), 300);
    assert!(prod.entries.iter().enumerate().all(|(i, e)| e.doc.payload.seq == i as u64 + 1));
    assert_eq!(verified.environments[&"staging".parse().unwrap()].entries.len(), 60);
}

#[test]
fn problems_in_a_large_tree_are_found_where_a_one_by_one_verifier_finds_them() {
    let k = Keys::new();
    let mut t = tree(&k, 300, 60);
    // A tampered entry in the middle of prod, a gap in staging, and entries of an undeclared
    // environment that sort between them.
    let tampered = entry_path("prod", 150);
    let Some(Node::File(bytes)) = t.nodes.get(tampered.as_bytes()) else { panic!("{tampered} is a file") };
    let text = String::from_utf8(bytes.clone()).unwrap();
    t.insert_file(&tampered, text.replacen("1.150.0", "1.150.1", 1).into_bytes());
    t.nodes.remove(entry_path("staging", 20).as_bytes());
    for seq in 1..=3 {
        t.insert_file(&entry_path("qa", seq), release("qa", seq, None, &[&k.alice]).to_file_bytes());
    }
    let problems = verify_snapshot_with(&t, Expiry::NotJudged).expect_err("the tree does not verify");
    let found: Vec<(String, String)> = problems.iter().map(|p| (p.path.clone(), p.check.to_string())).collect();
    let expected: Vec<(String, String)> = [
        (entry_path("prod", 150), "E5"),
        (entry_path("prod", 151), "E4"),
        (entry_path("qa", 1), "E1"),
        (entry_path("qa", 2), "E1"),
        (entry_path("qa", 3), "E1"),
        (entry_path("staging", 21), "E3"),
    ]
    .into_iter()
    .map(|(p, c)| (p, c.to_owned()))
    .collect();
    assert_eq!(found, expected, "{problems:#?}");
}
