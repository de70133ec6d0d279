//! History as the agent meets it: `stele poll` and `stele audit` judging ledgers that the real `git` CLI
//! changed (revert, revert of a revert, amend, rebase, merge, force push, SSH-signed commits), read in
//! place or served by a real `git daemon` on loopback. No mocks: every repository, remote and signature
//! here is made by the tools a user has.
//!
//! Each test owns a [`Sandbox`] (its own `HOME`), so tests run in parallel; a served remote listens on
//! a port the kernel chose and is killed when its test ends. The ledger fixture and the polling agent
//! are tests/common/fixture.rs, shared with tests/layout.rs.

mod common;

use common::fixture::*;
use common::*;
use ledger_format::types::{Entry, ReleaseVersion, RevertPolicy};
use ledger_format::Document;
use serde_json::Value;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------------------
// Helpers

/// One audit event, reduced to what the timeline tests compare.
#[derive(Debug, PartialEq)]
struct Ev {
    generation: u64,
    action: String,
    target: Option<String>,
    commit: String,
}

fn ev(generation: u64, action: &str, target: Option<&str>, commit: &str) -> Ev {
    Ev { generation, action: action.to_owned(), target: target.map(str::to_owned), commit: commit.to_owned() }
}

fn reduce(e: &Value) -> Ev {
    Ev {
        generation: e["generation"].as_u64().expect("a generation"),
        action: e["action"].as_str().expect("an action").to_owned(),
        target: e["target"]["version"].as_str().map(str::to_owned),
        commit: e["commit"].as_str().expect("a commit").to_owned(),
    }
}

/// `env`'s audit events, without spec changes (which leave the target alone).
fn timeline(audit: &Value, env: &str) -> Vec<Ev> {
    let events = audit["environments"][env]["events"].as_array().expect("an event list");
    events.iter().filter(|e| e["action"] != "spec").map(reduce).collect()
}

/// The audit event of `env` made by `commit` with `action`.
#[track_caller]
fn event<'a>(audit: &'a Value, env: &str, commit: &str, action: &str) -> &'a Value {
    let events = audit["environments"][env]["events"].as_array().expect("an event list");
    events
        .iter()
        .find(|e| e["commit"] == commit && e["action"] == action)
        .unwrap_or_else(|| panic!("no {action} of {env} at {commit} in\n{audit:#}"))
}

/// A bare repository `remote/ledger.git` in the sandbox, served by a daemon, with the ledger pushed
/// to its `main` through the daemon (remote `origin`).
fn served(f: &Fixture) -> (GitDaemon, PathBuf) {
    let base = f.sb.path("remote");
    let bare = base.join("ledger.git");
    std::fs::create_dir_all(&bare).expect("create the remote");
    f.sb.git(&bare, ["init", "-q", "--bare", "-b", "main"]);
    let daemon = GitDaemon::serve(&f.sb, &base);
    f.ledger.git(["remote", "add", "origin", &daemon.url("ledger.git")]);
    f.ledger.git(["push", "-q", "origin", "main"]);
    (daemon, bare)
}

// ---------------------------------------------------------------------------------------------------
// Reverts, restores and target generations

/// v1, v2, v3 promoted; `git revert` of v3 rolls back to v2, the revert of that revert restores v3, and
/// v4 is promoted on top: one generation per step (1..6), the audit names each action, and an agent
/// polling after every step reports the generation and target of that moment.
#[test]
fn git_revert_and_revert_of_revert_roll_back_and_restore_with_one_generation_each() {
    let f = fixture("revert-chain", &["staging"]);
    // Unsigned reverts, as under `revert: allow` (a weakening of the default, signed by alice as root).
    f.set_revert_policy("staging", RevertPolicy::Allow, &f.alice);
    let l = &f.ledger;
    let agent = f.agent("a");
    let genesis = f.head();
    agent.poll(&f.sb).expect_verified(&genesis).expect_target("staging", 0, None);

    let mut expected = Vec::new();
    for (generation, version) in [(1, "1.0.0"), (2, "2.0.0"), (3, "3.0.0")] {
        let commit = f.promote("staging", version, &f.alice);
        agent.poll(&f.sb).expect_verified(&commit).expect_target("staging", generation, Some(version));
        expected.push(ev(generation, "promote", Some(version), &commit));
    }
    let v3 = f.head();

    l.git(["revert", "--no-edit", &v3]);
    let rollback = f.head();
    assert!(!l.path("ledger/staging/3.json").exists(), "git removed the tip entry");
    agent.poll(&f.sb).expect_verified(&rollback).expect_target("staging", 4, Some("2.0.0"));
    expected.push(ev(4, "rollback", Some("2.0.0"), &rollback));

    l.git(["revert", "--no-edit", &rollback]);
    let restore = f.head();
    agent.poll(&f.sb).expect_verified(&restore).expect_target("staging", 5, Some("3.0.0"));
    expected.push(ev(5, "restore", Some("3.0.0"), &restore));

    let v4 = f.promote("staging", "4.0.0", &f.alice);
    let poll = agent.poll(&f.sb);
    poll.expect_verified(&v4).expect_target("staging", 6, Some("4.0.0"));
    assert_eq!(poll.json["environments"]["staging"]["target"]["seq"], 4, "v4 follows the restored v3");
    expected.push(ev(6, "promote", Some("4.0.0"), &v4));
    let again = agent.poll(&f.sb);
    assert_eq!(again.expect_verified(&v4).json["status"], "up_to_date");

    let a = audit(l, &[], OK);
    assert_eq!(a["ok"], true);
    assert_eq!(a["commits"], 8, "genesis, revert: allow, three promotions, revert, revert of revert, v4");
    assert_eq!(timeline(&a, "staging"), expected);
    let rolled = event(&a, "staging", &rollback, "rollback");
    assert_eq!(rolled["entry"]["version"], "3.0.0", "the rollback names the entry it removed");
    assert_eq!(rolled["revert"], serde_json::json!({"commit_signed": false, "signed_by": null}));
    assert_eq!(rolled["author"], "Stele Test <test@stele.invalid>");
    let restored = event(&a, "staging", &restore, "restore");
    assert_eq!(restored["entry"]["version"], "3.0.0");
    assert_eq!(restored["revert"], Value::Null);
}

/// `stele rollback` without a key commits exactly what `git revert` of the tip promotion commits: the
/// same tree and the same message.
#[test]
fn stele_rollback_commits_what_git_revert_of_the_tip_would() {
    let f = fixture("rollback-like-git", &["staging"]);
    f.set_revert_policy("staging", RevertPolicy::Allow, &f.alice);
    f.promote("staging", "1.0.0", &f.alice);
    let v2 = f.promote("staging", "2.0.0", &f.alice);
    let twin = f.sb.path("twin");
    f.sb.git(f.sb.root(), ["clone", "-q", &path_str(&f.ledger.dir), &path_str(&twin)]);
    f.sb.git(&twin, ["revert", "--no-edit", "HEAD"]);

    f.ledger.stele(["rollback", "--env", "staging"]).expect(OK).says(&["target is now 1.0.0", "not signed"]);
    let show = |dir: &Path, format: &str| f.sb.git(dir, ["show", "-s", &format!("--format={format}"), "HEAD"]);
    assert_eq!(show(&f.ledger.dir, "%T"), show(&twin, "%T"), "the same tree");
    assert_eq!(show(&f.ledger.dir, "%B"), show(&twin, "%B"), "the same message");
    assert_eq!(show(&f.ledger.dir, "%P"), format!("{v2}\n"));
    let a = audit(&f.ledger, &["--trust-root", &f.alice.id], OK);
    assert_eq!(event(&a, "staging", &f.head(), "rollback")["target"]["version"], "1.0.0");
}

/// `git revert` of the v1 promotion while v2 is the tip removes an entry that is not the tip: refused
/// H2, and the agent keeps v2. Reverting that bad commit brings the tree back to the last good one, and
/// the agent recovers past it without ever acting on the bad state.
#[test]
fn revert_of_a_non_tip_entry_is_refused_and_reverting_it_recovers() {
    let f = fixture("non-tip-revert", &["staging"]);
    let l = &f.ledger;
    let agent = f.agent("a");
    let v1 = f.promote("staging", "1.0.0", &f.alice);
    let v2 = f.promote("staging", "2.0.0", &f.alice);
    agent.poll(&f.sb).expect_verified(&v2).expect_target("staging", 2, Some("2.0.0"));
    let state = agent.state_bytes();

    // The two entries are separate files, so git reverts the older one without a conflict.
    l.git(["revert", "--no-edit", &v1]);
    let bad = f.head();
    assert!(!l.path("ledger/staging/1.json").exists() && l.path("ledger/staging/2.json").exists());
    for _ in 0..2 {
        let poll = agent.poll(&f.sb);
        poll.expect_refused(&bad, &[("ledger/staging/1.json", "H2")], &["only the tip (2) can be reverted"]);
        assert_eq!(agent.state_bytes(), state, "a stalled agent keeps its verified state");
    }

    l.git(["revert", "--no-edit", &bad]);
    let fix = f.head();
    let poll = agent.poll(&f.sb);
    poll.out.expect(OK);
    assert_eq!((poll.json["status"].as_str(), poll.json["commit"].as_str()), (Some("verified"), Some(fix.as_str())));
    poll.expect_target("staging", 2, Some("2.0.0"));
    assert_eq!(poll.json["recovered"], serde_json::json!([{"refused": bad, "recovered_at": fix}]));
    assert_eq!(poll.json["refusals"][0]["commit"], bad.as_str(), "the poll still names what it skipped");
    assert_eq!(agent.mark(), fix);

    // The audit still reports the refused commit (exit 1), and the recovery after it.
    let a = audit(l, &[], VERIFY_FAILED);
    assert_eq!(a["ok"], false);
    assert_eq!(a["refusals"][0]["commit"], bad.as_str());
    assert_eq!(problem_list(&a["refusals"][0]["problems"]), [("ledger/staging/1.json", "H2")]);
    assert_eq!(a["recovered"], serde_json::json!([{"refused": bad, "recovered_at": fix}]));
    assert_eq!(timeline(&a, "staging").len(), 2, "neither the bad commit nor its revert moved the target");

    // Replay reads history in chunks: wherever a chunk ends (between the refusal and its recovery, or
    // not), the outcome is the same.
    let mut source =
        stele::source::GitSource::open(&path_str(&l.dir), None, &f.sb.path("chunk-cache")).expect("source");
    let head = stele::source::LedgerSource::refresh(&mut source).expect("head");
    let anchor =
        ledger_format::history::TrustAnchor::RootKeys { keys: vec![f.alice.id.parse().unwrap()], threshold: 1 };
    let outcome = |chunk: usize| {
        let mut events = 0;
        let out = stele::replay::replay_chunked(
            &source,
            None,
            head,
            &anchor,
            &mut |_, _| {},
            &mut |r| events += r.events.len(),
            chunk,
        )
        .expect("replay");
        let refused: Vec<String> = out.refusals.iter().map(|r| r.commit.id.clone()).collect();
        (out.verified.map(|v| v.commit.to_string()), refused, out.recovered, events)
    };
    let whole = outcome(stele::replay::CHUNK);
    assert_eq!(whole, (Some(fix.clone()), vec![bad.clone()], vec![(bad.clone(), fix.clone())], whole.3));
    for chunk in [1, 2, 3] {
        assert_eq!(outcome(chunk), whole, "chunks of {chunk} commits");
    }
}

// ---------------------------------------------------------------------------------------------------
// Revert policy

/// `revert: signed`: an unsigned `git revert` is refused (H3); `stele rollback --key` and `git revert -S`
/// with gpg.format=ssh and the same key are accepted and the audit names the signer; a revert SSH-signed
/// by a key the policy does not authorise for the environment is refused (H3). Under `revert: deny`
/// even a signed revert is refused (H3).
#[test]
fn revert_policy_signed_needs_an_ssh_signature_by_a_signer_and_deny_refuses_all() {
    let f = fixture("revert-policy", &["staging"]);
    let l = &f.ledger;
    let mallory = f.sb.key("mallory");
    let agent = f.agent("a");
    f.set_revert_policy("staging", RevertPolicy::Signed, &f.alice);
    f.promote("staging", "1.0.0", &f.alice);
    let v2 = f.promote("staging", "2.0.0", &f.alice);
    agent.poll(&f.sb).expect_verified(&v2).expect_target("staging", 2, Some("2.0.0"));
    let ssh_revert = |key: &Key| {
        let signing_key = format!("user.signingkey={}", key.secret());
        l.git(["-c", "gpg.format=ssh", "-c", &signing_key, "revert", "--no-edit", "-S", "HEAD"]);
    };
    let refused_then_reset = |good: &str, words: &[&str]| {
        let state = agent.state_bytes();
        let bad = f.head();
        agent.poll(&f.sb).expect_refused(&bad, &[("ledger/staging/2.json", "H3")], words);
        assert_eq!(agent.state_bytes(), state, "a stalled agent keeps its verified state");
        l.git(["reset", "-q", "--hard", good]);
    };

    l.git(["revert", "--no-edit", "HEAD"]);
    refused_then_reset(&v2, &["requires reverts to be SSH-signed", "is not signed"]);

    ssh_revert(&mallory);
    assert!(l.git(["cat-file", "commit", "HEAD"]).contains("-----BEGIN SSH SIGNATURE-----"), "git signed it");
    refused_then_reset(&v2, &["SSH-signed by", &mallory.id[..12], "not a signer of staging"]);

    l.stele(["rollback", "--env", "staging", "--key", &f.alice.secret()]).expect(OK).says(&["SSH-signed by alice"]);
    let by_stele = f.head();
    agent.poll(&f.sb).expect_verified(&by_stele).expect_target("staging", 3, Some("1.0.0"));

    l.git(["revert", "--no-edit", "HEAD"]); // a restore needs no signature
    agent.poll(&f.sb).expect_verified(&f.head()).expect_target("staging", 4, Some("2.0.0"));

    ssh_revert(&f.alice);
    let by_git = f.head();
    agent.poll(&f.sb).expect_verified(&by_git).expect_target("staging", 5, Some("1.0.0"));

    let a = audit(l, &[], OK);
    let signed_by_alice =
        serde_json::json!({"commit_signed": true, "signed_by": [{"keyid": f.alice.id, "name": "alice"}]});
    // Signers carry their SHA256 fingerprints too (checked in tests/cli.rs); compared here without.
    let plain = |v: &serde_json::Value| {
        let mut v = v.clone();
        for k in v["signed_by"].as_array_mut().into_iter().flatten() {
            assert!(k["fingerprint"].as_str().is_some_and(|f| f.starts_with("SHA256:")), "{k}");
            k.as_object_mut().map(|o| o.remove("fingerprint"));
        }
        v
    };
    assert_eq!(plain(&event(&a, "staging", &by_stele, "rollback")["revert"]), signed_by_alice);
    assert_eq!(plain(&event(&a, "staging", &by_git, "rollback")["revert"]), signed_by_alice);

    l.git(["revert", "--no-edit", "HEAD"]);
    let restored = f.head();
    let denied = f.set_revert_policy("staging", RevertPolicy::Deny, &f.alice);
    agent.poll(&f.sb).expect_verified(&denied).expect_target("staging", 6, Some("2.0.0"));
    // `stele rollback` refuses up front what every agent would refuse, and commits nothing.
    l.stele(["rollback", "--env", "staging", "--key", &f.alice.secret()])
        .expect(REFUSED)
        .says(&["denies rollback by revert"]);
    assert_eq!(f.head(), denied, "a refused rollback commits nothing");
    l.git([
        "-c",
        "gpg.format=ssh",
        "-c",
        &format!("user.signingkey={}", f.alice.secret()),
        "revert",
        "--no-edit",
        "-S",
        &restored,
    ]);
    refused_then_reset(&denied, &["denies rollback by revert"]);
    l.git(["revert", "--no-edit", &restored]);
    refused_then_reset(&denied, &["denies rollback by revert"]);
    // Nor can the rule itself be reverted: an older spec version never comes back.
    l.git(["revert", "--no-edit", &denied]);
    agent.poll(&f.sb).expect_refused(&f.head(), &[("environments/staging.json", "N5")], &["does not follow 3"]);
    l.git(["reset", "-q", "--hard", &denied]);
    audit(l, &[], OK);
}

/// The armored SSH signature in the `gpgsig` header of commit `rev`.
fn gpgsig_of(l: &Ledger, rev: &str) -> String {
    let raw = l.git(["cat-file", "commit", rev]);
    let mut lines = raw.lines().skip_while(|line| !line.starts_with("gpgsig "));
    let first = lines.next().unwrap_or_else(|| panic!("{rev} is not signed:\n{raw}"));
    let mut armored = first["gpgsig ".len()..].to_owned() + "\n";
    for line in lines.take_while(|line| line.starts_with(' ')) {
        armored += &line[1..];
        armored += "\n";
    }
    armored
}

/// Writes commit `rev` again with `armored` as its `gpgsig` header (replacing any) and returns the new
/// commit: what someone with push access can make from signatures they have seen.
fn with_gpgsig(l: &Ledger, rev: &str, armored: &str) -> String {
    let raw = l.git(["cat-file", "commit", rev]);
    let (headers, message) = raw.split_once("\n\n").expect("headers, then the message");
    let mut kept: Vec<&str> = Vec::new();
    let mut in_sig = false;
    for line in headers.lines() {
        in_sig = line.starts_with("gpgsig ") || (in_sig && line.starts_with(' '));
        if !in_sig {
            kept.push(line);
        }
    }
    let header = format!("gpgsig {}", armored.trim_end().replace('\n', "\n "));
    let object = format!("{}\n{header}\n\n{message}", kept.join("\n"));
    let id = l.git_bytes(["hash-object", "-t", "commit", "-w", "--stdin"], Some(object.as_bytes()));
    String::from_utf8(id).expect("an object id").trim().to_owned()
}

/// `ssh-keygen -Y sign -n NAMESPACE` of the commit object `rev` (which must be unsigned) by `key`.
fn ssh_keygen_sign(f: &Fixture, rev: &str, key: &Key, namespace: &str) -> String {
    let payload = f.sb.path(&format!("{rev}.{namespace}"));
    std::fs::write(&payload, f.ledger.git_bytes(["cat-file", "commit", rev], None)).expect("write the payload");
    let out = scrubbed("ssh-keygen", f.sb.root(), f.sb.root())
        .args(["-q", "-Y", "sign", "-n", namespace, "-f", &key.secret(), &path_str(&payload)])
        .output()
        .expect("run ssh-keygen (part of openssh-client, which these tests need)");
    assert!(out.status.success(), "ssh-keygen failed: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::read_to_string(f.sb.path(&format!("{rev}.{namespace}.sig"))).expect("ssh-keygen wrote the signature")
}

/// Under `revert: signed` a signature counts only for the commit it signs and only in namespace `git`:
/// alice's signature copied from another revert commit, or her signature of this very commit made in
/// namespace `file`, is refused (H3). The same commit signed by ssh-keygen in namespace `git` is
/// accepted, so the refusals are about the signature and not about how the commits were made.
#[test]
fn revert_signature_copied_from_another_commit_or_made_in_another_namespace_is_refused() {
    let f = fixture("revert-sig-forgery", &["staging"]);
    let l = &f.ledger;
    f.set_revert_policy("staging", RevertPolicy::Signed, &f.alice);
    f.promote("staging", "1.0.0", &f.alice);
    let v2 = f.promote("staging", "2.0.0", &f.alice);
    let agent = f.agent("a");
    agent.poll(&f.sb).expect_verified(&v2);

    // A signed revert alice made on a branch that was never merged.
    l.git(["checkout", "-q", "-b", "draft"]);
    let signing_key = format!("user.signingkey={}", f.alice.secret());
    l.git(["-c", "gpg.format=ssh", "-c", &signing_key, "revert", "--no-edit", "-S", "HEAD"]);
    let seen = gpgsig_of(l, "HEAD");
    l.git(["checkout", "-q", "main"]);
    l.git(["revert", "--no-commit", "HEAD"]);
    l.git(["commit", "-q", "-m", "roll back staging"]);
    let unsigned = f.head();

    let forged = [
        ("copied", with_gpgsig(l, &unsigned, &seen), "signature does not verify"),
        ("namespace", with_gpgsig(l, &unsigned, &ssh_keygen_sign(&f, &unsigned, &f.alice, "file")), "namespace"),
    ];
    for (name, commit, word) in forged {
        l.git(["reset", "-q", "--hard", &commit]);
        assert!(l.git(["cat-file", "commit", "HEAD"]).contains("BEGIN SSH SIGNATURE"), "{name}");
        agent.poll(&f.sb).expect_refused(&commit, &[("ledger/staging/2.json", "H3")], &["is refused", word]);
        assert_eq!(agent.mark(), v2, "{name}");
    }

    let signed = with_gpgsig(l, &unsigned, &ssh_keygen_sign(&f, &unsigned, &f.alice, "git"));
    l.git(["reset", "-q", "--hard", &signed]);
    agent.poll(&f.sb).expect_verified(&signed).expect_target("staging", 3, Some("1.0.0"));
}

// ---------------------------------------------------------------------------------------------------
// Policy changes over time

/// Entries bob signed while he was a signer stay valid after `policy remove-signer` (the audit still
/// shows his signature); an entry he signs afterwards, committed by hand, is refused (E5, S2).
#[test]
fn entries_signed_before_a_key_was_removed_stay_valid_and_later_ones_are_refused() {
    let f = fixture("removed-key", &["staging"]);
    let l = &f.ledger;
    let bob = f.sb.key("bob");
    let add = ["policy", "add-signer", "--env", "staging", "--pubkey", &bob.public(), "--key", &f.alice.secret()];
    l.stele(add).expect(OK);
    let by_bob = f.promote("staging", "1.0.0", &bob);
    f.promote("staging", "2.0.0", &f.alice);
    let remove = ["policy", "remove-signer", "--env", "staging", "--pubkey", &bob.public(), "--key", &f.alice.secret()];
    l.stele(remove).expect(OK);
    let removed = f.head();

    let agent = f.agent("a");
    agent.poll(&f.sb).expect_verified(&removed).expect_target("staging", 2, Some("2.0.0"));
    let a = audit(l, &[], OK);
    let first = event(&a, "staging", &by_bob, "promote");
    assert_eq!(first["signed_by"][0]["keyid"], bob.id.as_str(), "the audit keeps who signed it");
    assert_eq!(a["policy"].as_array().map(Vec::len), Some(3), "genesis, add-signer, remove-signer");

    // Bob signs seq 3 on top of the v2 tip exactly as `stele release` would have.
    let tip = Document::<Entry>::parse(&l.read("ledger/staging/2.json")).expect("the tip parses");
    let mut payload = tip.payload.clone();
    payload.seq = 3;
    payload.prev = tip.hash();
    payload.version = "3.0.0".parse::<ReleaseVersion>().expect("a version");
    let mut late = Document::new(payload);
    late.sign(&secret(&bob));
    l.write("ledger/staging/3.json", late.to_file_bytes());
    l.commit_all("bob's release after his removal");
    let bad = f.head();
    agent.poll(&f.sb).expect_refused(&bad, &[("ledger/staging/3.json", "E5")], &["(S2)"]);
    assert_eq!(agent.mark(), removed);
    let a = audit(l, &[], VERIFY_FAILED);
    assert_eq!(problem_list(&a["refusals"][0]["problems"]), [("ledger/staging/3.json", "E5")]);
}

/// Committing an older policy again (its exact signed bytes) is refused P5 whichever older version it
/// is: versions only go up by one, and the agent keeps the newest policy.
#[test]
fn an_older_policy_committed_again_is_refused_p5() {
    let f = fixture("policy-rollback", &["staging"]);
    let l = &f.ledger;
    let (bob, carol) = (f.sb.key("bob"), f.sb.key("carol"));
    let v1 = l.read("trust/policy.json");
    let add = |key: &Key| {
        l.stele(["policy", "add-signer", "--env", "staging", "--pubkey", &key.public(), "--key", &f.alice.secret()])
            .expect(OK);
        l.read("trust/policy.json")
    };
    let v2 = add(&bob);
    add(&carol);
    let v3_commit = f.head();
    let agent = f.agent("a");
    let poll = agent.poll(&f.sb);
    poll.expect_verified(&v3_commit);
    assert_eq!(poll.json["policy_version"], 3);
    let state = agent.state_bytes();

    for (old, bytes) in [("v1", &v1), ("v2", &v2)] {
        l.write("trust/policy.json", bytes);
        l.commit_all(&format!("bring back policy {old}"));
        let bad = f.head();
        agent.poll(&f.sb).expect_refused(&bad, &[("trust/policy.json", "P5")], &["does not follow 3"]);
        assert_eq!(agent.state_bytes(), state, "policy {old}: the agent keeps policy v3");
        let a = audit(l, &[], VERIFY_FAILED);
        assert_eq!(problem_list(&a["refusals"][0]["problems"]), [("trust/policy.json", "P5")]);
        l.git(["reset", "-q", "--hard", &v3_commit]);
    }
}

// ---------------------------------------------------------------------------------------------------
// Merges, and time

/// A release made on a feature branch and merged with `git merge --no-ff` is judged by the merge's
/// first-parent diff: accepted, and the audit shows the promotion at the merge commit. An agent
/// following main ignores the feature branch until the merge.
#[test]
fn release_merged_from_a_feature_branch_is_judged_at_the_merge_commit() {
    let f = fixture("merge", &["staging"]);
    let l = &f.ledger;
    let v1 = f.promote("staging", "1.0.0", &f.alice);
    let agent = f.agent("a");
    agent.poll_with(&f.sb, &["--branch", "main"]).expect_verified(&v1);

    l.git(["checkout", "-q", "-b", "feature"]);
    let on_feature = f.promote("staging", "2.0.0", &f.alice);
    agent.poll_with(&f.sb, &["--branch", "main"]).expect_verified(&v1).expect_target("staging", 1, Some("1.0.0"));
    l.git(["checkout", "-q", "main"]);
    l.write("README.md", "notes outside the ledger\n");
    l.commit_all("readme");
    l.git(["merge", "-q", "--no-ff", "-m", "Merge branch 'feature'", "feature"]);
    let merge = f.head();
    assert_eq!(l.git(["rev-parse", "HEAD^2"]).trim(), on_feature, "a true merge");

    agent.poll_with(&f.sb, &["--branch", "main"]).expect_verified(&merge).expect_target("staging", 2, Some("2.0.0"));
    let a = audit(l, &[], OK);
    assert_eq!(a["commits"], 4, "only first parents: genesis, v1, readme, merge");
    let promoted = event(&a, "staging", &merge, "promote");
    assert_eq!(
        (promoted["generation"].as_u64(), promoted["summary"].as_str()),
        (Some(2), Some("Merge branch 'feature'"))
    );
    assert!(timeline(&a, "staging").iter().all(|e| e.commit != on_feature), "the feature commit is no step");
}

/// SPEC.md §8.5: the target generation goes up by one at every first-parent step that changes the
/// target. A merge that brings two releases at once is one step: the target moves from v1 to v3 once.
#[test]
fn merge_that_brings_two_releases_is_one_step_and_one_generation() {
    let f = fixture("merge-two", &["staging"]);
    let l = &f.ledger;
    f.promote("staging", "1.0.0", &f.alice);
    l.git(["checkout", "-q", "-b", "feature"]);
    f.promote("staging", "2.0.0", &f.alice);
    f.promote("staging", "3.0.0", &f.alice);
    l.git(["checkout", "-q", "main"]);
    l.git(["merge", "-q", "--no-ff", "-m", "Merge two releases", "feature"]);
    let merge = f.head();

    let a = audit(l, &[], OK);
    let at_merge: Vec<Ev> = timeline(&a, "staging").into_iter().filter(|e| e.commit == merge).collect();
    assert_eq!(at_merge.len(), 2, "both entries are reported: {at_merge:?}");
    f.agent("a").poll(&f.sb).expect_verified(&merge).expect_target("staging", 2, Some("3.0.0"));
}

/// What `audit --at` should answer: nothing, or (generation, target version, commit).
type InForce<'a> = Option<(u64, &'a str, &'a str)>;

/// `audit --at TIME` answers with the event in force at TIME, by commit time (inclusive): nothing
/// before the first release, each target between its commit and the next, the last one after all.
#[test]
fn audit_at_a_time_answers_the_target_in_force_then() {
    let f = fixture("audit-at", &["staging"]);
    let l = &f.ledger;
    // Each commit gets a fixed date: stele commits with the current time, so its commits are re-dated
    // by an amend before anything polls them.
    let redate = |date: &str| {
        let dates = [("GIT_AUTHOR_DATE", date), ("GIT_COMMITTER_DATE", date)];
        f.git_env(&["commit", "-q", "--amend", "--no-edit", "--allow-empty"], &dates);
        f.head()
    };
    redate("2030-01-01T00:00:00Z");
    f.promote("staging", "1.0.0", &f.alice);
    let v1 = redate("2030-01-02T00:00:00Z");
    f.promote("staging", "2.0.0", &f.alice);
    let v2 = redate("2030-01-03T00:00:00Z");
    let dates = [("GIT_AUTHOR_DATE", "2030-01-04T00:00:00Z"), ("GIT_COMMITTER_DATE", "2030-01-04T00:00:00Z")];
    // `revert: signed` (the default): SSH-signed by staging's signer.
    let signing = format!("user.signingkey={}", f.alice.secret());
    f.git_env(&["-c", "gpg.format=ssh", "-c", &signing, "revert", "-S", "--no-edit", "HEAD"], &dates);
    let rollback = f.head();
    let times = l.git(["log", "--format=%cI"]);
    assert_eq!(times.lines().collect::<Vec<_>>()[..2], ["2030-01-04T00:00:00Z", "2030-01-03T00:00:00Z"]);

    let table: [(&str, InForce); 7] = [
        ("2029-12-31T23:59:59Z", None),
        ("2030-01-01T12:00:00Z", None),
        ("2030-01-02T00:00:00Z", Some((1, "1.0.0", v1.as_str()))),
        ("2030-01-02T23:59:59Z", Some((1, "1.0.0", v1.as_str()))),
        ("2030-01-03T12:00:00Z", Some((2, "2.0.0", v2.as_str()))),
        ("2030-01-04T00:00:00Z", Some((3, "1.0.0", rollback.as_str()))),
        ("2031-06-01T00:00:00Z", Some((3, "1.0.0", rollback.as_str()))),
    ];
    for (at, expected) in table {
        let a = audit(l, &["--at", at, "--env", "staging"], OK);
        let answer = &a["environments"]["staging"]["at"];
        match expected {
            None => assert_eq!(*answer, Value::Null, "at {at}"),
            Some((generation, version, commit)) => {
                assert_eq!(
                    (answer["generation"].as_u64(), answer["target"]["version"].as_str(), answer["commit"].as_str()),
                    (Some(generation), Some(version), Some(commit)),
                    "at {at}"
                );
            }
        }
    }
    l.stele(["audit", "--at", "2030-01-03T12:00:00Z", "--trust-genesis-as-found"])
        .expect(OK)
        .says(&["at 2030-01-03T12:00:00Z (UTC)", "target       2.0.0 (seq 2), generation 2"]);
    l.stele(["audit", "--at", "yesterday"]).expect(REFUSED);
}

// ---------------------------------------------------------------------------------------------------
// Rewrites

/// An amend of the polled head and a rebase that replays a polled commit onto another base both make
/// a head that does not descend from the high-water mark: the agent stalls with H1 and keeps its state,
/// even when the rewritten ledger files are byte-identical. Putting the branch back lets it go on.
#[test]
fn amend_or_rebase_of_a_polled_commit_is_refused_h1_and_the_state_is_kept() {
    let f = fixture("rewrite", &["staging"]);
    let l = &f.ledger;
    let agent = f.agent("a");
    let v1 = f.promote("staging", "1.0.0", &f.alice);
    let v2 = f.promote("staging", "2.0.0", &f.alice);
    agent.poll(&f.sb).expect_verified(&v2);
    let state = agent.state_bytes();

    l.git(["commit", "-q", "--amend", "-m", "release staging 2.0.0, reworded"]);
    let amended = f.head();
    agent.poll(&f.sb).expect_rewrite(&v2, &amended);
    assert_eq!(agent.state_bytes(), state, "amend: the state is kept");

    l.git(["reset", "-q", "--hard", &v2]);
    agent.poll(&f.sb).expect_verified(&v2);

    // Upstream gained a commit below v2 (outside the ledger); main is rebased onto it.
    l.git(["checkout", "-q", "-b", "upstream", &v1]);
    l.write("README.md", "notes\n");
    l.commit_all("readme");
    l.git(["checkout", "-q", "main"]);
    l.git(["rebase", "-q", "upstream"]);
    let rebased = f.head();
    assert_ne!(rebased, v2);
    assert_eq!(l.git(["diff", &v2, &rebased, "--", "ledger", "trust", "environments"]), "", "same ledger files");
    agent.poll(&f.sb).expect_rewrite(&v2, &rebased);
    assert_eq!(agent.state_bytes(), state, "rebase: the state is kept");

    l.git(["reset", "-q", "--hard", &v2]);
    let v3 = f.promote("staging", "3.0.0", &f.alice);
    agent.poll(&f.sb).expect_verified(&v3).expect_target("staging", 3, Some("3.0.0"));
}

// ---------------------------------------------------------------------------------------------------
// Served remotes and the network

/// An agent polling a `git daemon` on loopback verifies what is pushed; a force push of an older signed
/// commit (`git push --force origin HEAD~1:main`) stalls it with H1 and its saved state is untouched;
/// restoring the branch lets it go on. A file:// URL of the same repository is polled the same way.
#[test]
fn served_remote_force_push_of_an_older_commit_stalls_and_restoring_the_branch_recovers() {
    let f = fixture("served", &["staging"]);
    let l = &f.ledger;
    f.promote("staging", "1.0.0", &f.alice);
    let (daemon, bare) = served(&f);
    let agent = Agent::new(&f.sb, "git", &daemon.url("ledger.git"), &["--trust-root", &f.alice.id]);
    agent.poll(&f.sb).expect_verified(&f.head()).expect_target("staging", 1, Some("1.0.0"));

    let v2 = f.promote("staging", "2.0.0", &f.alice);
    l.git(["push", "-q", "origin", "main"]);
    let poll = agent.poll(&f.sb);
    poll.expect_verified(&v2).expect_target("staging", 2, Some("2.0.0"));
    assert_eq!(poll.json["new_commits"], 1);
    assert_eq!(agent.poll(&f.sb).json["status"], "up_to_date");
    let state = agent.state_bytes();

    l.git(["push", "-q", "--force", "origin", "HEAD~1:main"]);
    let older = f.rev("HEAD~1");
    for _ in 0..2 {
        agent.poll(&f.sb).expect_rewrite(&v2, &older);
        assert_eq!(agent.state_bytes(), state, "the saved state is unchanged");
    }

    l.git(["push", "-q", "--force", "origin", "main"]);
    agent.poll(&f.sb).expect_verified(&v2);
    let v3 = f.promote("staging", "3.0.0", &f.alice);
    l.git(["push", "-q", "origin", "main"]);
    agent.poll(&f.sb).expect_verified(&v3).expect_target("staging", 3, Some("3.0.0"));

    let file_url = format!("file://{}", path_str(&bare));
    let by_file = Agent::new(&f.sb, "file", &file_url, &["--trust-root", &f.alice.id]);
    by_file.poll(&f.sb).expect_verified(&v3).expect_target("staging", 3, Some("3.0.0"));
    assert_eq!(by_file.poll(&f.sb).json["status"], "up_to_date");
    let out = l.stele(["audit", "--json", "--trust-genesis-as-found", "--repo", &daemon.url("ledger.git")]);
    let a: Value = serde_json::from_str(&out.expect(OK).stdout).expect("audit JSON");
    assert_eq!((a["head"].as_str(), a["trust_root_pinned"].as_bool()), (Some(v3.as_str()), Some(false)));
}

/// With the daemon stopped, a poll cannot fetch: exit 4 (retry later), and the state file is
/// byte-identical. A port nobody ever served fails the same way on a first poll, writing no state.
#[test]
fn network_down_during_fetch_exits_4_and_leaves_the_state_file_untouched() {
    let f = fixture("offline", &["staging"]);
    let v1 = f.promote("staging", "1.0.0", &f.alice);
    let (daemon, _) = served(&f);
    let url = daemon.url("ledger.git");
    let agent = Agent::new(&f.sb, "a", &url, &["--trust-root", &f.alice.id]);
    agent.poll(&f.sb).expect_verified(&v1);
    let state = agent.state_bytes().expect("a saved state");
    drop(daemon);

    let poll = agent.poll(&f.sb);
    poll.out.expect(4).says(&["cannot fetch"]);
    assert_eq!(agent.state_bytes().as_deref(), Some(&state[..]), "byte-identical");

    let closed = format!("git://127.0.0.1:{}/ledger.git", free_port());
    let first = Agent::new(&f.sb, "b", &closed, &["--trust-root", &f.alice.id]);
    first.poll(&f.sb).out.expect(4).says(&["cannot fetch"]);
    assert_eq!(first.state_bytes(), None);
}

// ---------------------------------------------------------------------------------------------------
// The trust root

/// The first poll needs a pinned trust root (exit 3 without one, nothing saved); a root key that did
/// not sign the genesis policy, or a wrong genesis hash, is refused P7; the genesis policy's hash (as
/// `stele verify --json --rev GENESIS` prints it) or alice's key id verifies, and later polls resume
/// from the saved state without a root.
#[test]
fn first_poll_needs_a_pinned_trust_root_that_matches_the_genesis_policy() {
    let f = fixture("trust-root", &["staging"]);
    let genesis = f.head();
    let v1 = f.promote("staging", "1.0.0", &f.alice);
    let mallory = f.sb.key("mallory");
    let repo = path_str(&f.ledger.dir);

    let none = Agent::new(&f.sb, "none", &repo, &[]);
    none.poll(&f.sb).out.expect(REFUSED).says(&["needs a pinned trust root"]);
    assert_eq!(none.state_bytes(), None);

    let verify = f.ledger.verify(&["--json", "--rev", &genesis]);
    let genesis_policy: Value = serde_json::from_str(&verify.expect(OK).stdout).expect("verify JSON");
    let hash = genesis_policy["policy_hash"].as_str().expect("a policy hash").to_owned();
    let wrong_hash = format!("{}{}", if hash.starts_with('0') { "1" } else { "0" }, &hash[1..]);

    let both = format!("{},{}", f.alice.id, mallory.id);
    let table: [(&str, &[&str], bool); 5] = [
        ("wrong-key", &["--trust-root", &mallory.id], false),
        ("wrong-hash", &["--trust-root-hash", &wrong_hash], false),
        ("two-of-alice-mallory", &["--trust-root", &both, "--trust-threshold", "2"], false),
        ("hash", &["--trust-root-hash", &hash], true),
        ("key", &["--trust-root", &f.alice.id], true),
    ];
    for (name, trust, ok) in table {
        let agent = Agent::new(&f.sb, name, &repo, trust);
        let poll = agent.poll(&f.sb);
        if ok {
            poll.expect_verified(&v1).expect_target("staging", 1, Some("1.0.0"));
            let resumed = Agent::new(&f.sb, name, &repo, &[]).poll(&f.sb);
            resumed.expect_verified(&v1);
            assert_eq!(resumed.json["status"], "up_to_date", "{name}");
        } else {
            poll.expect_refused(&genesis, &[("trust/policy.json", "P7")], &[]);
            assert_eq!(agent.state_bytes(), None, "{name}: nothing is trusted, nothing saved");
        }
    }
}
