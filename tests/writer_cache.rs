//! Writing commands start from a verified state kept in `.git/stele/verified-state.json`
//! (src/commands/base.rs): taken as is at the same HEAD, replayed forward over pulled commits, and
//! never trusted otherwise. Driven through the real binary on ledgers made by `stele init`, with real
//! `git clone`, `pull`, `reset` and hand-made commits.

mod common;

use common::*;
use serde_json::Value;

fn release_json(ledger: &Ledger, version: &str, image: &std::path::Path, key: &Key) -> Value {
    let out = ledger.try_release("prod", version, image, key, &["--json"]);
    out.expect(OK);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("release --json printed no JSON: {e}\n{}", out.dump()))
}

fn cache(ledger: &Ledger) -> Value {
    ledger.json(".git/stele/verified-state.json")
}

fn head(ledger: &Ledger) -> String {
    ledger.git(["rev-parse", "HEAD"]).trim().to_owned()
}

#[test]
fn a_second_release_starts_from_the_cache_and_pulled_commits_are_replayed() {
    let sb = Sandbox::new();
    let alice = sb.key("alice");
    let ledger = sb.ledger("ledger", "cachedemo", &alice, &["prod"]);
    let image = sb.image("app", b"v1");

    assert_eq!(cache(&ledger)["commit"], head(&ledger), "init keeps the state of the ledger it made");
    std::fs::remove_file(ledger.path(".git/stele/verified-state.json")).unwrap();
    let first = release_json(&ledger, "1.0.0", &image, &alice);
    assert_eq!(first["verified_from"], "verified", "no cache: the whole tree is verified");
    assert_eq!(cache(&ledger)["commit"], head(&ledger), "the state after the release is kept, keyed by its commit");
    let second = release_json(&ledger, "1.1.0", &image, &alice);
    assert_eq!(second["verified_from"], "cached");
    assert_eq!(second["seq"], 2);

    // Someone else releases from their own clone; this clone pulls it and replays one commit.
    let other = sb.clone_ledger("ledger", "other");
    let theirs = release_json(&other, "1.2.0", &image, &alice);
    assert_eq!(theirs["verified_from"], "verified", "a fresh clone has no cache");
    ledger.git(["pull", "-q", "--ff-only", "../other", "main"]);
    let third = release_json(&ledger, "1.3.0", &image, &alice);
    assert_eq!(third["verified_from"], serde_json::json!({"replayed": 1}), "their release, the one commit since ours");
    assert_eq!(third["seq"], 4);
    ledger.expect_valid(&[]);
    assert_eq!(cache(&ledger)["commit"], head(&ledger), "stele verify of a clean work tree keeps HEAD's state");
    let verified_at = head(&ledger);
    ledger.release("prod", "1.3.1", &image, &alice);
    ledger.git(["reset", "-q", "--hard", "HEAD~1"]);
    ledger.verify(&["--rev", "HEAD~1"]).expect(OK);
    assert_eq!(
        cache(&ledger)["commit"],
        ledger.git(["rev-parse", &format!("{verified_at}~1")]).trim(),
        "stele verify --rev keeps that commit's state"
    );
    assert_eq!(release_json(&ledger, "1.3.2", &image, &alice)["verified_from"], serde_json::json!({"replayed": 1}));

    // The cache never replaces the work-tree check.
    ledger.write("ledger/prod/stray.json", b"{}");
    ledger.try_release("prod", "1.4.0", &image, &alice, &[]).expect(REFUSED).says(&["uncommitted", "stray.json"]);
}

#[test]
fn a_rewritten_branch_is_verified_again_and_the_next_seq_follows_the_tree() {
    let sb = Sandbox::new();
    let alice = sb.key("alice");
    let ledger = sb.ledger("ledger", "cachedemo", &alice, &["prod"]);
    let image = sb.image("app", b"v1");
    ledger.release("prod", "1.0.0", &image, &alice);
    ledger.release("prod", "2.0.0", &image, &alice);
    // The cache now holds seq 2; the branch goes back to seq 1.
    ledger.git(["reset", "-q", "--hard", "HEAD~1"]);
    let out = release_json(&ledger, "3.0.0", &image, &alice);
    assert_eq!(out["verified_from"], "verified", "the cached commit is not an ancestor of HEAD");
    assert_eq!(out["seq"], 2, "the next entry follows the tree, not the stale cache");
    ledger.expect_valid(&[]);
}

#[test]
fn a_broken_commit_since_the_cache_is_refused_naming_the_file() {
    let sb = Sandbox::new();
    let alice = sb.key("alice");
    let ledger = sb.ledger("ledger", "cachedemo", &alice, &["prod"]);
    let image = sb.image("app", b"v1");
    ledger.release("prod", "1.0.0", &image, &alice);
    // A push-access-only change: the entry's version edited, its signature no longer matching.
    let text = ledger.read_string("ledger/prod/1.json");
    ledger.write("ledger/prod/1.json", replace_once(&text, "\"1.0.0\"", "\"1.0.1\""));
    ledger.commit_all("edit a signed entry");
    let commits = ledger.commit_count();
    let out = ledger.try_release("prod", "2.0.0", &image, &alice, &[]);
    out.expect(REFUSED).says(&["does not verify", "ledger/prod/1.json"]);
    assert_eq!(ledger.commit_count(), commits, "nothing was written");
}

#[test]
fn a_cache_from_another_build_or_that_does_not_parse_is_not_trusted() {
    let sb = Sandbox::new();
    let alice = sb.key("alice");
    let ledger = sb.ledger("ledger", "cachedemo", &alice, &["prod"]);
    let image = sb.image("app", b"v1");
    ledger.release("prod", "1.0.0", &image, &alice);

    let mut forged = cache(&ledger);
    assert_eq!(forged["commit"], head(&ledger));
    forged["build"] = "0.0.0 another-build release".into();
    ledger.write(".git/stele/verified-state.json", serde_json::to_vec(&forged).unwrap());
    assert_eq!(release_json(&ledger, "2.0.0", &image, &alice)["verified_from"], "verified");

    ledger.write(".git/stele/verified-state.json", b"{not json");
    let out = release_json(&ledger, "3.0.0", &image, &alice);
    assert_eq!(out["verified_from"], "verified");
    assert_eq!(out["seq"], 3);
    assert_eq!(cache(&ledger)["commit"], head(&ledger), "a fresh cache replaces the unreadable one");
}

#[test]
fn policy_and_sign_start_from_the_cache_and_keep_it_current() {
    let sb = Sandbox::new();
    let (alice, bob) = (sb.key("alice"), sb.key("bob"));
    let ledger = sb.ledger("ledger", "cachedemo", &alice, &["prod"]);
    let image = sb.image("app", b"v1");
    ledger.release("prod", "1.0.0", &image, &alice);
    ledger
        .stele(["policy", "add-signer", "--env", "prod", "--pubkey", &bob.public(), "--key", &alice.secret()])
        .expect(OK);
    assert_eq!(cache(&ledger)["commit"], head(&ledger), "the policy change kept its state");
    // Without reading the tree: the tip gets bob's signature too, and the ledger still verifies.
    ledger.stele(["sign", "--env", "prod", "--key", &bob.secret()]).expect(OK).says(&["the ledger verifies"]);
    assert_eq!(cache(&ledger)["commit"], head(&ledger), "the co-signature kept its state");
    assert_eq!(ledger.json("ledger/prod/1.json")["signatures"].as_array().map(Vec::len), Some(2));
    ledger.expect_valid(&[]);
    // A second signature by the same key is refused, nothing written.
    let commits = ledger.commit_count();
    ledger.stele(["sign", "--env", "prod", "--key", &bob.secret()]).expect(REFUSED).says(&["already signed"]);
    assert_eq!(ledger.commit_count(), commits);
    assert_eq!(release_json(&ledger, "2.0.0", &image, &bob)["verified_from"], "cached");
}

#[test]
fn rollback_and_timestamp_renew_judge_the_very_commit_from_the_cache() {
    let sb = Sandbox::new();
    let (alice, bob, bot) = (sb.key("alice"), sb.key("bob"), sb.key("bot"));
    let ledger = sb.ledger("ledger", "cachedemo", &alice, &["prod"]);
    let image = sb.image("app", b"v1");
    ledger.release("prod", "1.0.0", &image, &alice);
    ledger.release("prod", "2.0.0", &image, &alice);

    // `revert: signed` (the default): a key that is not prod's signer is refused before anything is made.
    let commits = ledger.commit_count();
    ledger.stele(["rollback", "--env", "prod", "--key", &bob.secret()]).expect(REFUSED).says(&["not a signer of prod"]);
    assert_eq!(ledger.commit_count(), commits);
    let out = ledger.stele(["rollback", "--env", "prod", "--key", &alice.secret()]);
    out.expect(OK).says(&["target is now 1.0.0 (seq 1)", "SSH-signed"]);
    assert_eq!(cache(&ledger)["commit"], head(&ledger), "the rollback kept its state");
    assert_eq!(
        cache(&ledger)["state"]["envs"]["prod"]["generation"],
        3,
        "as agents count: two releases, then the rollback"
    );
    assert!(
        ledger.git(["cat-file", "commit", "HEAD"]).contains("gpgsig -----BEGIN SSH SIGNATURE-----"),
        "the commit carries its SSH signature"
    );

    let set = ["policy", "set-timestamp", "--pubkey", &bot.public(), "--max-validity", "6h", "--key", &alice.secret()];
    ledger.stele(set).expect(OK);
    let parent = head(&ledger);
    ledger.stele(["timestamp", "renew", "--key", &bot.secret()]).expect(OK);
    assert_eq!(ledger.git(["rev-parse", "HEAD~1"]).trim(), parent, "the renewal landed on the head it names");
    assert_eq!(cache(&ledger)["commit"], head(&ledger));
    ledger.stele(["timestamp", "show"]).expect(OK).says(&["version 1"]);
    ledger.expect_valid(&[]);
    // The next release starts from the renewal's kept state.
    assert_eq!(release_json(&ledger, "3.0.0", &image, &alice)["verified_from"], "cached");
}
