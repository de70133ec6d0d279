//! Revision 5 vectors (SPEC.md §2.3 and §6.1 `ledger_layout`): tree cases for the buckets layout, where
//! entry N of an environment lives at `ledger/<env>/<N / 1000>/<N>.json`. The history cases (a layout
//! change moves every entry in one commit) are in `history_cases.rs`.
//!
//! A child module of `vectors.rs`, whose builders it uses.

use super::{entry, invalid, lit, policy, role, sign_value, signed, valid, Cases, Keys, Tree};
use ledger_format::check::Check;
use ledger_format::crypto::Blake3Digest;
use ledger_format::document::{DocKind, Document};
use ledger_format::tree::{Layout, POLICY_PATH};
use ledger_format::types::{Entry, LedgerLayout, Policy};
use serde_json::json;

/// prod (alice, 1 of 1) with `ledger_layout: buckets`.
pub fn buckets_policy(k: &Keys) -> Policy {
    Policy { ledger_layout: Some(LedgerLayout::Buckets), ..policy(k, &[&k.alice], &[("prod", role(&[&k.alice], 1))]) }
}

/// prod's spec and entries 1..=n signed by alice, each at its path in `layout`; the policy is `p`.
fn tree_of(k: &Keys, p: Policy, layout: Layout, n: u64) -> (Tree, Vec<Document<Entry>>) {
    let mut tree = Tree::default();
    tree.put(POLICY_PATH, &signed(p, &[&k.root]));
    tree.put("environments/prod.json", &signed(super::env_spec("prod"), &[&k.alice]));
    let mut docs: Vec<Document<Entry>> = Vec::new();
    for seq in 1..=n {
        let doc = signed(entry("prod", seq, docs.last().map_or(Blake3Digest::ZERO, |d| d.hash())), &[&k.alice]);
        tree.put(&layout.entry_path(&lit("prod"), seq), &doc);
        docs.push(doc);
    }
    (tree, docs)
}

pub(super) fn tree_cases(k: &Keys, cases: &mut Cases) {
    let (tree, _) = tree_of(k, buckets_policy(k), Layout::Buckets, 3);
    cases.add(
        "valid/buckets-layout",
        "Revision 5: the policy says ledger_layout buckets, and prod's entries 1-3 are at \
         ledger/prod/0/<seq>.json (bucket = seq / 1000).",
        tree.clone(),
        valid(&tree),
    );

    let (mut tree, docs) = tree_of(k, buckets_policy(k), Layout::Buckets, 2);
    tree.put("ledger/prod/2.json", &docs[1]);
    cases.add(
        "invalid/t2-flat-entry-under-buckets",
        "The policy says buckets; entry 2 is at ledger/prod/0/2.json and, byte for byte the same, at \
         ledger/prod/2.json. The flat copy is in the wrong layout (T2) and takes no further part.",
        tree,
        invalid(&[("ledger/prod/2.json", Check::T2)]),
    );

    let (mut tree, docs) = tree_of(k, policy(k, &[&k.alice], &[("prod", role(&[&k.alice], 1))]), Layout::Flat, 2);
    tree.remove("ledger/prod/2.json");
    tree.put("ledger/prod/0/2.json", &docs[1]);
    cases.add(
        "invalid/t2-bucket-entry-under-flat",
        "The policy has no ledger_layout (flat); entry 2 is at ledger/prod/0/2.json: T2, and the chain is \
         entry 1 alone.",
        tree,
        invalid(&[("ledger/prod/0/2.json", Check::T2)]),
    );

    let (mut tree, docs) = tree_of(k, buckets_policy(k), Layout::Buckets, 1);
    let second = signed(entry("prod", 2, docs[0].hash()), &[&k.alice]);
    let third = signed(entry("prod", 3, second.hash()), &[&k.alice]);
    tree.put("ledger/prod/1/2.json", &second);
    tree.put("ledger/prod/00/3.json", &third);
    cases.add(
        "invalid/t2-wrong-bucket",
        "The policy says buckets. Entry 2 is in bucket 1 (it belongs in 0 = 2 / 1000) and entry 3 in bucket \
         00 (not canonical decimal): neither path matches the layout (T2).",
        tree,
        invalid(&[("ledger/prod/00/3.json", Check::T2), ("ledger/prod/1/2.json", Check::T2)]),
    );

    let (mut tree, _) = tree_of(k, buckets_policy(k), Layout::Buckets, 1);
    let mut flat = serde_json::to_value(buckets_policy(k)).expect("a policy serializes");
    flat["ledger_layout"] = json!("flat");
    tree.put_bytes(POLICY_PATH, sign_value(DocKind::Policy, &flat, &[&k.root]));
    cases.add(
        "invalid/d5-ledger-layout-flat",
        "ledger_layout is \"flat\": the flat layout is spelled by omitting the member, so the only value is \
         \"buckets\" (D5).",
        tree,
        invalid(&[(POLICY_PATH, Check::D5)]),
    );
}
