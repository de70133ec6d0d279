//! The buckets layout of ledger-format revision 5 met for real: `stele init --layout`, `stele policy
//! set-layout` migrating a ledger made flat, releases, co-signatures, `git revert` and `stele rollback`
//! after the move, and agents (`stele poll`) whose high-water mark predates the migration replaying it.
//! Every repository and commit is made by the `stele` binary or the `git` CLI; a hand-made migration
//! that leaves an entry behind is refused (T2) and the agent keeps its last good state.
//!
//! Each test owns a [`Sandbox`] (its own `HOME`), so tests run in parallel. The ledger fixture and the
//! polling agent are tests/common/fixture.rs, shared with tests/history.rs.

mod agent_world;
mod common;

use common::fixture::*;
use common::*;
use ledger_format::types::RevertPolicy;
use ledger_format::Document;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------------
// Helpers

/// The audit's timeline rows made by `commit`, as `(action, environment)`.
fn rows_of(audit: &Value, commit: &str) -> Vec<(String, Option<String>)> {
    let rows = audit["timeline"].as_array().expect("a timeline");
    rows.iter()
        .filter(|r| r["commit"] == commit)
        .map(|r| (r["action"].as_str().unwrap_or("?").to_owned(), r["env"].as_str().map(str::to_owned)))
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// Migration of a flat ledger, replayed by agents whose mark predates it

/// A flat ledger with releases to two environments; agent `a` polls (its mark predates everything
/// below), then `stele policy set-layout buckets` moves every entry, byte for byte, in one commit with
/// the policy; `stele verify` passes; agent `b` replays the migration alone with no new generation; a
/// release lands at `ledger/<env>/0/<n>.json`; agent `a` replays migration and release in one poll
/// and its generation goes up by one; the audit shows the migration as a policy change only.
#[test]
fn set_layout_buckets_moves_every_entry_and_agents_from_before_replay_it() {
    let f = fixture("layout-migrate", &["staging", "prod"]);
    let l = &f.ledger;
    f.promote("staging", "1.0.0", &f.alice);
    f.promote("prod", "1.0.0", &f.alice);
    f.promote("staging", "2.0.0", &f.alice);
    let before = f.promote("staging", "3.0.0", &f.alice);
    let (a, b) = (f.agent("a"), f.agent("b"));
    for agent in [&a, &b] {
        let poll = agent.poll(&f.sb);
        poll.expect_verified(&before)
            .expect_target_seq("staging", 3, "3.0.0", 3)
            .expect_target_seq("prod", 1, "1.0.0", 1);
    }
    let flat = ["ledger/prod/1.json", "ledger/staging/1.json", "ledger/staging/2.json", "ledger/staging/3.json"];
    assert_eq!(f.entry_files("HEAD"), flat, "stele init makes a flat ledger by default");

    f.set_layout("buckets", &[&f.alice]).expect(OK).says(&["ledger layout buckets", "moves 4 entries"]);
    let migration = f.head();
    assert_eq!(l.git(["rev-parse", "HEAD~1"]).trim(), before, "one commit");
    let bucketed =
        ["ledger/prod/0/1.json", "ledger/staging/0/1.json", "ledger/staging/0/2.json", "ledger/staging/0/3.json"];
    assert_eq!(f.entry_files("HEAD"), bucketed, "every entry in its bucket, no old path left");
    for (old, new) in flat.iter().zip(bucketed) {
        assert_eq!(f.blob(&before, old), f.blob(&migration, new), "{old} moved to {new} byte for byte");
    }
    // Git sees exact renames and the policy edit, nothing else.
    let diff = l.git(["diff", "--name-status", "--find-renames=100%", &before, &migration]);
    let mut lines: Vec<&str> = diff.lines().collect();
    lines.sort();
    let mut expected: Vec<String> = flat
        .iter()
        .zip(bucketed)
        .map(|(old, new)| format!("R100\t{old}\t{new}"))
        .chain(["M\ttrust/policy.json".to_owned()])
        .collect();
    expected.sort();
    assert_eq!(lines, expected, "{diff}");
    assert_eq!(l.json("trust/policy.json")["payload"]["ledger_layout"], "buckets");
    l.stele(["policy", "show"])
        .expect(OK)
        .says(&["ledger layout: buckets (entries at ledger/<env>/<seq / 1000>/<seq>.json)"]);
    l.expect_valid(&[]);
    l.expect_valid(&["--rev", &before]);

    b.poll(&f.sb)
        .expect_verified(&migration)
        .expect_target_seq("staging", 3, "3.0.0", 3)
        .expect_target_seq("prod", 1, "1.0.0", 1);

    let out = l.release("staging", "4.0.0", &f.sb.image("app-4.tar", b"app 4\n"), &f.alice);
    out.says(&["ledger/staging/0/4.json"]);
    let v4 = f.head();
    assert_eq!(l.git(["show", "--name-status", "--format=", "HEAD"]), "A\tledger/staging/0/4.json\n");
    l.expect_valid(&[]);

    for agent in [&a, &b] {
        let poll = agent.poll(&f.sb);
        poll.expect_verified(&v4).expect_target_seq("staging", 4, "4.0.0", 4).expect_target_seq("prod", 1, "1.0.0", 1);
    }
    let poll = a.poll(&f.sb);
    assert_eq!(poll.expect_verified(&v4).json["status"], "up_to_date");

    let audit = f.audit(OK);
    assert_eq!(audit["ok"], true, "{audit:#}");
    assert_eq!(rows_of(&audit, &migration), [("policy".to_owned(), None)], "the migration is a policy change only");
    let row = audit["timeline"].as_array().unwrap().iter().find(|r| r["commit"] == migration.as_str()).unwrap();
    assert_eq!(row["policy_version"], 2, "{row:#}");
    let detail = row["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("ledger layout buckets"), "the policy row names the layout: {row:#}");
    assert_eq!(rows_of(&audit, &v4), [("promote".to_owned(), Some("staging".to_owned()))]);
    let promote = audit["timeline"].as_array().unwrap().iter().find(|r| r["commit"] == v4.as_str()).unwrap();
    assert_eq!(promote["generation"], 4, "{promote:#}");
}

/// A migration made by hand that leaves `ledger/staging/1.json` behind (`stele policy set-layout`,
/// then `git mv` of that entry back to its flat path and `git commit --amend`) is refused by `stele
/// poll` (T2, naming the entry left behind, at that commit), and the agent keeps its last good state;
/// `git mv` of the entry to its bucket in the next commit completes the migration and the agent
/// recovers there, with no new generation.
#[test]
fn a_migration_that_leaves_an_entry_behind_is_refused_and_its_completion_recovers() {
    let f = fixture("layout-incomplete", &["staging"]);
    let l = &f.ledger;
    f.promote("staging", "1.0.0", &f.alice);
    let v2 = f.promote("staging", "2.0.0", &f.alice);
    let agent = f.agent("a");
    agent.poll(&f.sb).expect_verified(&v2).expect_target_seq("staging", 2, "2.0.0", 2);
    let state = agent.state_bytes();

    f.set_layout("buckets", &[&f.alice]).expect(OK);
    l.git(["mv", "ledger/staging/0/1.json", "ledger/staging/1.json"]);
    l.git(["commit", "-q", "--amend", "--no-edit"]);
    let bad = f.head();
    assert_eq!(f.entry_files(&bad), ["ledger/staging/0/2.json", "ledger/staging/1.json"]);
    let mut poll = agent.poll(&f.sb);
    for _ in 0..2 {
        poll = agent.poll(&f.sb);
        poll.out.expect(VERIFY_FAILED);
        assert_eq!(poll.json["status"], "stalled", "{}", poll.out.dump());
        assert_eq!(poll.json["commit"], v2.as_str(), "the last verified commit is kept\n{}", poll.out.dump());
        let refusal = &poll.json["refusals"][0];
        assert_eq!(refusal["commit"], bad.as_str(), "{}", poll.out.dump());
        let problems = problem_list(&refusal["problems"]);
        assert!(
            problems.iter().any(|(path, check)| *path == "ledger/staging/1.json" && *check == "T2"),
            "T2 names the entry left behind\n{}",
            poll.out.dump()
        );
        assert!(problems.iter().all(|(_, check)| *check == "T2"), "{}", poll.out.dump());
        assert_eq!(agent.state_bytes(), state, "a stalled agent keeps its verified state");
    }
    assert!(
        poll.json_reason_mentions("not moved to ledger/staging/0/1.json"),
        "the refusal says where the entry belongs"
    );
    // The tree alone: the entry is in the wrong form (T2), so the chain in buckets has a gap (E3).
    let t2: &[&str] = &["buckets", "belongs at ledger/staging/0/1.json"];
    l.expect_problems(&[], &[("ledger/staging/1.json", "T2", t2), ("ledger/staging/0/2.json", "E3", &["missing"])]);

    l.git(["mv", "ledger/staging/1.json", "ledger/staging/0/1.json"]);
    l.git(["commit", "-q", "-m", "finish the move"]);
    let fix = f.head();
    l.expect_valid(&[]);
    let poll = agent.poll(&f.sb);
    poll.out.expect(OK);
    assert_eq!((poll.json["status"].as_str(), poll.json["commit"].as_str()), (Some("verified"), Some(fix.as_str())));
    poll.expect_target_seq("staging", 2, "2.0.0", 2);
    assert_eq!(poll.json["policy_version"], 2, "{}", poll.out.dump());
    assert_eq!(poll.json["refusals"][0]["commit"], bad.as_str(), "the poll still names what it skipped");
    assert_eq!(poll.json["recovered"], json!([{"refused": bad, "recovered_at": fix}]), "{}", poll.out.dump());
}

// ---------------------------------------------------------------------------------------------------
// Reverts, rollback and moving back

/// After a migration (revert: allow), `git revert` of the release made after it rolls back to the entry
/// below, read from its bucket; the revert of that revert restores it; `stele rollback` removes the
/// tip at its bucket path. Each is one generation for an agent whose mark predates the migration.
#[test]
fn git_revert_and_stele_rollback_after_a_migration_read_the_entry_below_from_its_bucket() {
    let f = fixture("layout-revert", &["staging"]);
    let l = &f.ledger;
    f.set_revert_policy("staging", RevertPolicy::Allow, &f.alice);
    f.promote("staging", "1.0.0", &f.alice);
    let v2 = f.promote("staging", "2.0.0", &f.alice);
    let agent = f.agent("a");
    agent.poll(&f.sb).expect_verified(&v2).expect_target_seq("staging", 2, "2.0.0", 2);

    f.set_layout("buckets", &[&f.alice]).expect(OK);
    let v3 = f.promote("staging", "3.0.0", &f.alice);
    l.git(["revert", "--no-edit", &v3]);
    let rollback = f.head();
    assert_eq!(f.entry_files("HEAD"), ["ledger/staging/0/1.json", "ledger/staging/0/2.json"]);
    agent.poll(&f.sb).expect_verified(&rollback).expect_target_seq("staging", 4, "2.0.0", 2);

    l.git(["revert", "--no-edit", &rollback]);
    let restore = f.head();
    agent.poll(&f.sb).expect_verified(&restore).expect_target_seq("staging", 5, "3.0.0", 3);

    l.stele(["rollback", "--env", "staging"]).expect(OK).says(&["target is now 2.0.0"]);
    let by_stele = f.head();
    assert_eq!(l.git(["show", "--name-status", "--format=", "HEAD"]), "D\tledger/staging/0/3.json\n");
    agent.poll(&f.sb).expect_verified(&by_stele).expect_target_seq("staging", 6, "2.0.0", 2);
    l.expect_valid(&[]);

    let audit = f.audit(OK);
    assert_eq!(rows_of(&audit, &rollback), [("rollback".to_owned(), Some("staging".to_owned()))]);
    assert_eq!(rows_of(&audit, &restore), [("restore".to_owned(), Some("staging".to_owned()))]);
    assert_eq!(rows_of(&audit, &by_stele), [("rollback".to_owned(), Some("staging".to_owned()))]);
}

/// `set-layout buckets` on a buckets ledger is refused (exit 3, nothing committed); `set-layout flat`
/// moves every entry back byte for byte, the next release lands flat, and an agent that saw neither
/// move replays both. `git revert` of a migration brings back an older policy version: refused (P5).
#[test]
fn set_layout_to_the_current_layout_is_refused_and_flat_moves_back() {
    let f = fixture("layout-back", &["staging"]);
    let l = &f.ledger;
    let v1 = f.promote("staging", "1.0.0", &f.alice);
    l.stele(["policy", "show"]).expect(OK).says(&["ledger layout: flat (entries at ledger/<env>/<seq>.json)"]);
    let agent = f.agent("a");
    agent.poll(&f.sb).expect_verified(&v1).expect_target_seq("staging", 1, "1.0.0", 1);
    f.set_layout("flat", &[&f.alice]).expect(REFUSED).says(&["already uses the flat layout"]);
    assert_eq!(f.head(), v1, "nothing committed");

    f.set_layout("buckets", &[&f.alice]).expect(OK);
    let v2 = f.promote("staging", "2.0.0", &f.alice);
    let out = f.set_layout("buckets", &[&f.alice]);
    out.expect(REFUSED).says(&["already uses the buckets layout"]);
    assert_eq!(f.head(), v2, "nothing committed");
    assert_eq!(l.git(["status", "--porcelain"]), "", "nothing written");

    f.set_layout("flat", &[&f.alice]).expect(OK).says(&["ledger layout flat", "moves 2 entries"]);
    let back = f.head();
    assert_eq!(f.entry_files(&back), ["ledger/staging/1.json", "ledger/staging/2.json"]);
    assert_eq!(f.blob(&v2, "ledger/staging/0/2.json"), f.blob(&back, "ledger/staging/2.json"));
    assert_eq!(l.json("trust/policy.json")["payload"].get("ledger_layout"), None, "flat is spelled by omission");
    let v3 = f.promote("staging", "3.0.0", &f.alice);
    assert_eq!(l.git(["show", "--name-status", "--format=", "HEAD"]), "A\tledger/staging/3.json\n");
    agent.poll(&f.sb).expect_verified(&v3).expect_target_seq("staging", 3, "3.0.0", 3);
    let audit = f.audit(OK);
    let row = audit["timeline"].as_array().unwrap().iter().find(|r| r["commit"] == back.as_str()).unwrap();
    assert!(row["detail"].as_str().is_some_and(|d| d.contains("ledger layout flat")), "{row:#}");

    l.git(["revert", "--no-edit", &back]);
    let reverted = f.head();
    let state = agent.state_bytes();
    let poll = agent.poll(&f.sb);
    poll.out.expect(VERIFY_FAILED);
    assert_eq!(poll.json["refusals"][0]["commit"], reverted.as_str(), "{}", poll.out.dump());
    let problems = problem_list(&poll.json["refusals"][0]["problems"]);
    assert!(problems.contains(&("trust/policy.json", "P5")), "{}", poll.out.dump());
    assert_eq!(agent.state_bytes(), state, "a stalled agent keeps its verified state");
}

// ---------------------------------------------------------------------------------------------------
// A ledger made in buckets; co-signatures and proposals

/// `stele init --layout buckets`: the first release lands at `ledger/staging/0/1.json`; `stele sign
/// --env` co-signs the tip at its bucket path; with staging 2 of 2, a release is a proposal whose entry
/// sits at `ledger/staging/0/2.json`, co-signed by `stele sign --proposal` and landed by `stele
/// promote`. An agent follows every step.
#[test]
fn init_layout_buckets_releases_cosigns_and_promotes_at_bucket_paths() {
    let f = fixture_with("layout-init", &["staging"], &["--layout", "buckets"]);
    let l = &f.ledger;
    let bob = f.sb.key("bob");
    let agent = f.agent("a");
    assert_eq!(l.json("trust/policy.json")["payload"]["ledger_layout"], "buckets");
    let genesis = f.head();
    l.expect_valid(&[]);

    let out = l.release("staging", "1.0.0", &f.sb.image("app-1.tar", b"app 1\n"), &f.alice);
    out.says(&["ledger/staging/0/1.json"]);
    let v1 = f.head();
    assert_eq!(f.entry_files("HEAD"), ["ledger/staging/0/1.json"]);
    agent.poll(&f.sb).expect_verified(&v1).expect_target_seq("staging", 1, "1.0.0", 1);
    assert_ne!(genesis, v1);

    l.stele(["policy", "add-signer", "--env", "staging", "--pubkey", &bob.public(), "--key", &f.alice.secret()])
        .expect(OK);
    l.stele(["sign", "--env", "staging", "--key", &bob.secret()]).expect(OK).says(&["signed ledger/staging/0/1.json"]);
    let cosigned = f.head();
    assert_eq!(l.git(["show", "--name-status", "--format=", "HEAD"]), "M\tledger/staging/0/1.json\n");
    assert_eq!(l.json("ledger/staging/0/1.json")["signatures"].as_array().map(Vec::len), Some(2));
    agent.poll(&f.sb).expect_verified(&cosigned).expect_target_seq("staging", 1, "1.0.0", 1);

    // Both keys: the tip, at its bucket path, is carried re-signed in the same commit (R5).
    let raise = ["policy", "set-threshold", "--env", "staging", "--threshold", "2", "--key", &f.alice.secret()];
    l.stele(raise.iter().copied().chain(["--key", &bob.secret()])).expect(OK);
    l.expect_valid(&[]);
    let image = f.sb.image("app-2.tar", b"app 2\n");
    l.release("staging", "2.0.0", &image, &f.alice).says(&["proposed staging 2.0.0 as ledger/staging/0/2.json"]);
    let head = f.head();
    l.stele(["sign", "--proposal", "staging-2.0.0", "--key", &bob.secret()])
        .expect(OK)
        .says(&["every threshold is met"]);
    l.stele(["promote", "staging-2.0.0"]).expect(OK);
    let v2 = f.head();
    assert_ne!(v2, head);
    assert_eq!(f.entry_files("HEAD"), ["ledger/staging/0/1.json", "ledger/staging/0/2.json"]);
    l.expect_valid(&[]);
    agent.poll(&f.sb).expect_verified(&v2).expect_target_seq("staging", 2, "2.0.0", 2);
    f.audit(OK);
}

/// Root 2 of 2 (alice and bob, bob also a signer of staging that signed no entry): `set-layout
/// buckets` by alice is a proposal; bob's `stele sign --proposal` signs the policy and leaves the moved
/// entries as they are (a move is byte for byte); `stele promote` lands it and an agent accepts it.
#[test]
fn a_migration_needing_two_root_signatures_goes_through_a_proposal() {
    let f = fixture("layout-proposal", &["staging"]);
    let l = &f.ledger;
    let bob = f.sb.key("bob");
    f.promote("staging", "1.0.0", &f.alice);
    l.stele(["policy", "add-signer", "--env", "staging", "--pubkey", &bob.public(), "--key", &f.alice.secret()])
        .expect(OK);
    let rotate = ["policy", "rotate-root", "--new-root", &f.alice.public(), "--new-root", &bob.public()];
    l.stele(rotate.iter().copied().chain(["--threshold", "2", "--key", &f.alice.secret(), "--key", &bob.secret()]))
        .expect(OK);
    let v2 = f.promote("staging", "2.0.0", &f.alice);
    let agent = f.agent("a");
    agent.poll(&f.sb).expect_verified(&v2).expect_target_seq("staging", 2, "2.0.0", 2);

    f.set_layout("buckets", &[&f.alice]).expect(OK).says(&["policy-v4"]);
    assert_eq!(f.head(), v2, "a proposal, not a commit on main");
    // The audit lists the open proposal as the policy and two moves, not as releases and rollbacks.
    let audit = f.audit(OK);
    let documents = audit["proposals"][0]["documents"].as_array().cloned().unwrap_or_default();
    let whats: Vec<(&str, &str, Value)> = documents
        .iter()
        .map(|d| (d["path"].as_str().unwrap_or("?"), d["what"].as_str().unwrap_or("?"), d["required"].clone()))
        .collect();
    let moved =
        |seq: u64| format!("staging: entry {seq} moved from ledger/staging/{seq}.json, byte for byte (ledger layout)");
    let (m1, m2) = (moved(1), moved(2));
    let expected = [
        ("ledger/staging/0/1.json", m1.as_str(), Value::Null),
        ("ledger/staging/0/2.json", m2.as_str(), Value::Null),
        ("trust/policy.json", "policy v4", json!(2)),
    ];
    assert_eq!(whats, expected, "{:#}", audit["proposals"]);
    l.stele(["sign", "--proposal", "policy-v4", "--key", &bob.secret()])
        .expect(OK)
        .says(&["signed trust/policy.json as bob", "every threshold is met"]);
    let branch = "stele/proposals/policy-v4";
    for (old, new) in
        [("ledger/staging/1.json", "ledger/staging/0/1.json"), ("ledger/staging/2.json", "ledger/staging/0/2.json")]
    {
        assert_eq!(f.blob(&v2, old), f.blob(branch, new), "{new} is {old} byte for byte");
    }
    l.stele(["promote", "policy-v4"]).expect(OK);
    let migration = f.head();
    assert_eq!(f.entry_files(&migration), ["ledger/staging/0/1.json", "ledger/staging/0/2.json"]);
    l.expect_valid(&[]);
    agent.poll(&f.sb).expect_verified(&migration).expect_target_seq("staging", 2, "2.0.0", 2);
}

// ---------------------------------------------------------------------------------------------------
// A real agent

/// `stele agent --once` on the local provider runs 1.0.0; the ledger migrates to buckets and 2.0.0 is
/// released at `ledger/staging/0/2.json`; the same agent (state from before the migration) rolls it
/// out as generation 2. An SSH-signed `git revert` (the default `revert: signed`) rolls back to 1.0.0,
/// read from its bucket, as generation 3.
#[test]
fn a_real_agent_replays_the_migration_rolls_out_after_it_and_rolls_back() {
    let w = agent_world::World::new();
    let (v1, v2) = (w.image("1.0.0", false), w.image("2.0.0", false));
    w.release("1.0.0", &v1, &[]).expect(OK);
    w.agent_once().expect(OK);
    assert!(w.get("/version").expect("the balancer answers").starts_with("1.0.0 "));

    w.ledger.stele(["policy", "set-layout", "buckets", "--key", &w.alice.secret()]).expect(OK);
    w.release("2.0.0", &v2, &[]).expect(OK).says(&["ledger/staging/0/2.json"]);
    w.agent_once().expect(OK);
    let s = w.status();
    assert_eq!((s["target_generation"].as_u64(), s["observed_generation"].as_u64()), (Some(2), Some(2)), "{s:#}");
    assert_eq!((s["phase"].as_str(), s["target"]["version"].as_str()), (Some("Healthy"), Some("2.0.0")), "{s:#}");
    assert!(w.live_instances().iter().all(|(_, v)| v == "2.0.0"), "{:?}", w.live_instances());

    let signing = format!("user.signingkey={}", w.alice.secret());
    w.ledger.git(["-c", "gpg.format=ssh", "-c", &signing, "revert", "-S", "--no-edit", "HEAD"]);
    w.agent_once().expect(OK);
    let s = w.status();
    assert_eq!((s["target_generation"].as_u64(), s["observed_generation"].as_u64()), (Some(3), Some(3)), "{s:#}");
    assert_eq!(s["target"]["version"], "1.0.0", "{s:#}");
    let live = w.live_instances();
    assert!(!live.is_empty() && live.iter().all(|(_, v)| v == "1.0.0"), "{live:?}");
}

/// A release proposal made before a migration still writes the flat path: after the move, `stele
/// promote` refuses it (exit 3, T2 naming where the entry belongs) and commits nothing.
#[test]
fn a_release_proposal_made_before_a_migration_is_refused_by_promote() {
    let f = fixture("layout-stale-proposal", &["staging"]);
    let l = &f.ledger;
    let bob = f.sb.key("bob");
    f.promote("staging", "1.0.0", &f.alice);
    l.two_of_two("staging", &f.alice, &bob);
    let image = f.sb.image("app-2.tar", b"app 2\n");
    l.release("staging", "2.0.0", &image, &f.alice).says(&["proposed staging 2.0.0 as ledger/staging/2.json"]);
    l.stele(["sign", "--proposal", "staging-2.0.0", "--key", &bob.secret()]).expect(OK);
    f.set_layout("buckets", &[&f.alice, &bob]).expect(OK);
    let migration = f.head();
    l.stele(["promote", "staging-2.0.0"]).expect(REFUSED).says(&[
        "nothing was promoted",
        "ledger/staging/2.json: T2",
        "belongs at ledger/staging/0/2.json",
    ]);
    assert_eq!(f.head(), migration, "nothing committed");
    l.expect_valid(&[]);
}

// ---------------------------------------------------------------------------------------------------
// Across a bucket boundary

/// 1001 entries (the first by `stele release`, 1000 more appended in one commit through the
/// `ledger_format` API and the git CLI): `set-layout buckets` puts 1..999 in bucket 0 and 1000, 1001
/// in bucket 1, every blob unchanged; the next release lands at `ledger/staging/1/1002.json`; an agent
/// whose mark predates the migration replays it and the release.
#[test]
fn a_migration_across_the_bucket_boundary_puts_entry_1000_in_bucket_1() {
    use ledger_format::types::{Entry, ReleaseVersion};
    let f = fixture("layout-boundary", &["staging"]);
    let l = &f.ledger;
    f.promote("staging", "1.0.0", &f.alice);
    let key = stele::keys::load_secret(&f.alice.secret).expect("alice's key").key;
    let mut tip = Document::<Entry>::parse(&l.read("ledger/staging/1.json")).expect("the tip parses");
    for seq in 2..=1001u64 {
        let mut payload = tip.payload.clone();
        payload.seq = seq;
        payload.prev = tip.hash();
        payload.version = format!("1.0.{seq}").parse::<ReleaseVersion>().expect("a version");
        let mut doc = Document::new(payload);
        doc.sign(&key);
        l.write(&format!("ledger/staging/{seq}.json"), doc.to_file_bytes());
        tip = doc;
    }
    l.commit_all("staging: 1000 releases at once");
    let before = f.head();
    let agent = f.agent("a");
    agent.poll(&f.sb).expect_verified(&before).expect_target_seq("staging", 2, "1.0.1001", 1001);

    f.set_layout("buckets", &[&f.alice]).expect(OK).says(&["moves 1001 entries"]);
    let migration = f.head();
    let files = f.entry_files(&migration);
    assert_eq!(files.len(), 1001);
    for (seq, bucket) in [(1, 0), (999, 0), (1000, 1), (1001, 1)] {
        let new = format!("ledger/staging/{bucket}/{seq}.json");
        assert!(files.contains(&new), "{new} in {files:?}");
        assert_eq!(f.blob(&before, &format!("ledger/staging/{seq}.json")), f.blob(&migration, &new));
    }
    assert_eq!(files.iter().filter(|p| p.starts_with("ledger/staging/1/")).count(), 2);
    l.expect_valid(&[]);

    l.release("staging", "2.0.0", &f.sb.image("app-2.tar", b"app 2\n"), &f.alice).says(&["ledger/staging/1/1002.json"]);
    let next = f.head();
    agent.poll(&f.sb).expect_verified(&next).expect_target_seq("staging", 3, "2.0.0", 1002);
}
