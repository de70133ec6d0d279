//! The multi-signer workflow (SPEC.md revision 3, R1-R5) against real git: releases short of their
//! threshold become proposals on `stele/proposals/<name>`, co-signers sign the proposal, and `stele
//! promote` or a Git host's merge (`--no-ff`, squash, fast-forward) lands it as one commit. After every
//! step the work tree verifies, `stele audit` exits 0 and `stele poll` never stalls; `git revert` of a
//! promotion (SSH-signed, `revert: signed` being the default) is a rollback and its revert a restore.

mod common;

use common::*;
use serde_json::Value;
use std::path::PathBuf;

/// alice is root and signs staging and prod; bob co-signs prod, which needs both (2 of 2).
struct Fixture {
    sb: Sandbox,
    alice: Key,
    bob: Key,
    ledger: Ledger,
    agent: PathBuf,
}

fn two_of_two(ledger_id: &str) -> Fixture {
    let sb = Sandbox::new();
    let alice = sb.key("alice");
    let bob = sb.key("bob");
    let ledger = sb.ledger("ledger", ledger_id, &alice, &["staging", "prod"]);
    ledger
        .stele(["policy", "add-signer", "--env", "prod", "--pubkey", &bob.public(), "--key", &alice.secret()])
        .expect(OK);
    // Raising the threshold re-signs prod's spec in the same commit (R5): bob's key signs it there.
    let before = ledger.commit_count();
    ledger
        .stele([
            "policy",
            "set-threshold",
            "--env",
            "prod",
            "--threshold",
            "2",
            "--key",
            &alice.secret(),
            "--key",
            &bob.secret(),
        ])
        .expect(OK)
        .says(&["environments/prod.json", "every threshold met"]);
    assert_eq!(ledger.commit_count(), before + 1, "one commit: the policy and the re-signed spec");
    let agent = sb.path("agent-state");
    Fixture { sb, alice, bob, ledger, agent }
}

impl Fixture {
    fn head(&self) -> String {
        self.ledger.git(["rev-parse", "HEAD"]).trim().to_owned()
    }

    fn image(&self, version: &str) -> PathBuf {
        self.sb.image(&format!("app-{version}.tar"), format!("app {version}\n").as_bytes())
    }

    /// `stele release` to prod by alice: a proposal, since prod needs bob too.
    fn propose(&self, version: &str) -> String {
        let head = self.head();
        let out = self.ledger.try_release("prod", version, &self.image(version), &self.alice, &[]);
        let name = format!("prod-{version}");
        out.expect(OK).says(&[
            &format!("stele/proposals/{name}"),
            &format!("stele sign --proposal {name} --key"),
            &format!("git push --force-with-lease origin stele/proposals/{name}"),
            &format!("stele promote {name}"),
            "E5",
        ]);
        assert_eq!(self.head(), head, "a proposal leaves the ledger branch alone");
        name
    }

    fn sign(&self, name: &str, key: &Key) -> Output {
        let out = self.ledger.stele(["sign", "--proposal", name, "--key", &key.secret()]);
        out.expect(OK);
        out
    }

    fn promote(&self, name: &str) -> String {
        self.ledger.stele(["promote", name]).expect(OK).says(&["promoted", name]);
        let branches = self.ledger.git(["branch", "--list", &format!("stele/proposals/{name}")]);
        assert!(branches.trim().is_empty(), "promote deletes the local proposal branch");
        self.head()
    }

    /// A `git revert` of `commit` (`-m 1` for a merge), SSH-signed by `key` as `revert: signed` wants.
    fn signed_revert(&self, commit: &str, key: &Key, mainline: bool) -> String {
        let signing = format!("user.signingkey={}", key.secret());
        let mut args = vec!["-c", "gpg.format=ssh", "-c", &signing, "revert", "-S", "--no-edit"];
        if mainline {
            args.extend(["-m", "1"]);
        }
        args.push(commit);
        self.ledger.git(args);
        self.head()
    }

    /// The commit on the first-parent history that added `path`.
    fn adding_commit(&self, path: &str) -> String {
        let log = self.ledger.git(["log", "--first-parent", "--diff-filter=A", "--format=%H", "-1", "--", path]);
        log.trim().to_owned()
    }

    fn poll(&self) -> (Output, Value) {
        let state = path_str(&self.agent);
        let ledger = path_str(&self.ledger.dir);
        let out = self.sb.stele(
            self.sb.root(),
            ["poll", "--repo", &ledger, "--state-dir", &state, "--trust-root", &self.alice.id, "--json"],
        );
        let json = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("no JSON: {e}\n{}", out.dump()));
        (out, json)
    }

    /// After every step: the tree verifies, the audit exits 0, and a poll verifies the head without a
    /// stall, with prod at `generation` targeting `version`.
    #[track_caller]
    fn settled(&self, generation: u64, version: Option<&str>) {
        self.ledger.expect_valid(&[]);
        let audit = self.ledger.stele(["audit", "--trust-root", &self.alice.id, "--json"]);
        audit.expect(OK);
        assert!(!audit.stdout.contains("STALLED") && !audit.stderr.contains("STALLED"), "{}", audit.dump());
        let (out, json) = self.poll();
        assert!(!out.stdout.contains("STALLED") && !out.stderr.contains("STALLED"), "{}", out.dump());
        out.expect(OK);
        assert!(matches!(json["status"].as_str(), Some("verified" | "up_to_date")), "{}", out.dump());
        assert_eq!(json["commit"], self.head(), "the poll verified the head\n{}", out.dump());
        let prod = &json["environments"]["prod"];
        assert_eq!(prod["generation"], generation, "prod's generation\n{}", out.dump());
        assert_eq!(prod["target"]["version"].as_str(), version, "prod's target\n{}", out.dump());
    }
}

#[test]
fn two_of_two_release_cosign_promote_revert_restore_and_next_release() {
    let f = two_of_two("multisig-walk");
    f.settled(0, None);

    let p1 = f.propose("1.0.0");
    f.settled(0, None);
    let out = f.ledger.stele(["promote", &p1]);
    out.expect(REFUSED).says(&["still short of signatures", "ledger/prod/1.json", "E5"]);
    f.sign(&p1, &f.bob).says(&["signed ledger/prod/1.json", "every threshold is met"]);
    let out = f.ledger.stele(["sign", "--proposal", &p1, "--key", &f.bob.secret()]);
    out.expect(REFUSED).says(&["already signed"]);
    f.promote(&p1);
    f.settled(1, Some("1.0.0"));

    let p2 = f.propose("2.0.0");
    f.sign(&p2, &f.bob);
    let promoted_2 = f.promote(&p2);
    let subject = f.ledger.git(["log", "-1", "--format=%s"]);
    assert!(subject.starts_with("promote release prod 2.0.0 (seq 2) (signed by alice"), "{subject}");
    f.settled(2, Some("2.0.0"));

    // A spec change, co-signed the same way.
    let spec: Value =
        serde_json::from_str(&f.ledger.stele(["env", "show", "--env", "prod"]).expect(OK).stdout).unwrap();
    let mut spec = spec;
    spec["groups"][0]["capacity"] = 3.into();
    let file = f.sb.path("prod-spec.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    let out = f.ledger.stele(["env", "set", "--env", "prod", "--spec", &path_str(&file), "--key", &f.alice.secret()]);
    out.expect(OK).says(&["stele/proposals/prod-spec-v2", "N4"]);
    f.settled(2, Some("2.0.0"));
    f.sign("prod-spec-v2", &f.bob);
    f.promote("prod-spec-v2");
    f.settled(2, Some("2.0.0"));
    assert_eq!(f.ledger.json("environments/prod.json")["payload"]["groups"][0]["capacity"], 3);

    // Rollback: `git revert` of the commit that promoted 2.0.0, SSH-signed by one prod signer.
    assert_eq!(f.adding_commit("ledger/prod/2.json"), promoted_2);
    let rollback = f.signed_revert(&promoted_2, &f.bob, false);
    f.settled(3, Some("1.0.0"));
    let audit: Value =
        serde_json::from_str(&f.ledger.stele(["audit", "--trust-root", &f.alice.id, "--json"]).expect(OK).stdout)
            .unwrap();
    let events = audit["environments"]["prod"]["events"].as_array().expect("prod's events");
    let last = events.iter().rev().find(|e| e["action"] != "spec").expect("an event");
    assert_eq!((last["action"].as_str(), last["commit"].as_str()), (Some("rollback"), Some(rollback.as_str())));
    assert_eq!(last["generation"], 3);
    assert_eq!(last["target"]["version"], "1.0.0");

    // The revert of that revert restores 2.0.0; the next release follows it.
    f.signed_revert(&rollback, &f.alice, false);
    f.settled(4, Some("2.0.0"));
    let p3 = f.propose("3.0.0");
    f.sign(&p3, &f.bob);
    f.promote(&p3);
    f.settled(5, Some("3.0.0"));
}

#[test]
fn proposals_land_through_git_merges_and_a_merge_reverts_with_mainline_1() {
    let f = two_of_two("multisig-merge");
    let p1 = f.propose("1.0.0");
    f.sign(&p1, &f.bob);
    f.promote(&p1);
    f.settled(1, Some("1.0.0"));

    // A squash merge, committed by hand.
    let p2 = f.propose("2.0.0");
    f.sign(&p2, &f.bob);
    f.ledger.git(["merge", "--squash", &format!("stele/proposals/{p2}")]);
    f.ledger.git(["commit", "-q", "-m", "release prod 2.0.0 (squashed)"]);
    f.settled(2, Some("2.0.0"));

    // A fast-forward: the proposal's one commit becomes the ledger's head.
    let p3 = f.propose("3.0.0");
    f.sign(&p3, &f.bob);
    let proposal = f.ledger.git(["rev-parse", &format!("stele/proposals/{p3}")]).trim().to_owned();
    f.ledger.git(["merge", "--ff-only", &format!("stele/proposals/{p3}")]);
    assert_eq!(f.head(), proposal);
    f.settled(3, Some("3.0.0"));

    // A merge commit, as a Git host's merge button makes it.
    let p4 = f.propose("4.0.0");
    f.sign(&p4, &f.bob);
    f.ledger.git(["merge", "--no-ff", "-q", "-m", "Merge proposal prod-4.0.0", &format!("stele/proposals/{p4}")]);
    let merge = f.head();
    f.settled(4, Some("4.0.0"));

    // `stele rollback` writes exactly what `git revert -m 1` of that merge writes.
    f.ledger.stele(["rollback", "--env", "prod", "--key", &f.alice.secret()]).expect(OK);
    let ours = (f.ledger.git(["log", "-1", "--format=%B"]), f.ledger.git(["rev-parse", "HEAD^{tree}"]));
    assert!(ours.0.contains(&format!("This reverts commit {merge}, reversing\nchanges made to")), "{}", ours.0);
    f.ledger.git(["reset", "-q", "--hard", "HEAD~1"]);
    let rollback = f.signed_revert(&merge, &f.alice, true);
    let git = (f.ledger.git(["log", "-1", "--format=%B"]), f.ledger.git(["rev-parse", "HEAD^{tree}"]));
    assert_eq!(ours, git, "stele rollback and git revert -m 1 make the same commit");
    // The agent never saw the reset commit: it polls after the reset.
    f.settled(5, Some("3.0.0"));
    f.signed_revert(&rollback, &f.bob, false);
    f.settled(6, Some("4.0.0"));
}

#[test]
fn an_unsigned_git_rm_of_the_tip_is_refused_and_the_verified_state_kept() {
    let f = two_of_two("multisig-rm");
    for v in ["1.0.0", "2.0.0"] {
        let p = f.propose(v);
        f.sign(&p, &f.bob);
        f.promote(&p);
    }
    f.settled(2, Some("2.0.0"));
    let verified = f.head();
    f.ledger.git(["rm", "-q", "ledger/prod/2.json"]);
    f.ledger.git(["commit", "-q", "-m", "roll back without a signature"]);
    let (out, json) = f.poll();
    out.expect(VERIFY_FAILED);
    assert_eq!(json["status"], "stalled", "{}", out.dump());
    assert_eq!(json["commit"], verified, "the verified state is kept\n{}", out.dump());
    assert_eq!(json["environments"]["prod"]["target"]["version"], "2.0.0", "{}", out.dump());
    assert!(json["refusals"][0]["problems"].to_string().contains("H3"), "{}", out.dump());
    // Unsigned `stele rollback` is refused before anything is written.
    f.ledger.git(["reset", "-q", "--hard", "HEAD~1"]);
    f.ledger.stele(["rollback", "--env", "prod"]).expect(REFUSED).says(&["--key"]);
    assert_eq!(f.head(), verified);
}

#[test]
fn a_stale_proposal_is_refused_by_promote() {
    let f = two_of_two("multisig-stale");
    let p1 = f.propose("1.0.0");
    f.sign(&p1, &f.bob);
    f.promote(&p1);
    let first = f.propose("2.0.0");
    f.sign(&first, &f.bob);
    let second = f.propose("2.0.1");
    f.sign(&second, &f.bob);
    f.promote(&second);
    let head = f.head();
    f.ledger.stele(["promote", &first]).expect(REFUSED).says(&["stale", "ledger/prod/2.json"]);
    assert_eq!(f.head(), head, "nothing was promoted");
    f.settled(2, Some("2.0.1"));
    // A name already taken is refused too; --proposal chooses another.
    let image = f.image("2.0.0");
    f.ledger
        .try_release("prod", "3.0.0", &image, &f.alice, &["--proposal", &first])
        .expect(REFUSED)
        .says(&["already exists"]);
    f.ledger
        .try_release("prod", "3.0.0", &image, &f.alice, &["--proposal", "hotfix"])
        .expect(OK)
        .says(&["stele/proposals/hotfix"]);
}

#[test]
fn removing_prods_only_other_signer_is_one_commit_that_verifies() {
    let f = two_of_two("multisig-revoke");
    let p1 = f.propose("1.0.0");
    f.sign(&p1, &f.bob);
    f.promote(&p1);
    f.ledger
        .stele(["policy", "set-threshold", "--env", "prod", "--threshold", "1", "--key", &f.alice.secret()])
        .expect(OK);
    f.settled(1, Some("1.0.0"));
    let before = f.ledger.commit_count();
    f.ledger
        .stele(["policy", "remove-signer", "--env", "prod", "--pubkey", &f.bob.public(), "--key", &f.alice.secret()])
        .expect(OK)
        .says(&["environments/prod.json", "ledger/prod/1.json"]);
    assert_eq!(f.ledger.commit_count(), before + 1);
    let changed = f.ledger.git(["diff", "--name-only", "HEAD~1", "HEAD"]);
    assert_eq!(
        changed.lines().collect::<Vec<_>>(),
        ["environments/prod.json", "ledger/prod/1.json", "trust/policy.json"]
    );
    for doc in ["environments/prod.json", "ledger/prod/1.json"] {
        let sigs = f.ledger.json(doc)["signatures"].to_string();
        assert!(!sigs.contains(&f.bob.id) && sigs.contains(&f.alice.id), "{doc}: {sigs}");
    }
    f.settled(1, Some("1.0.0"));
}

#[test]
fn weakening_a_spec_needs_the_root_role() {
    let sb = Sandbox::new();
    let (alice, bob) = (sb.key("alice"), sb.key("bob"));
    let ledger = sb.ledger("ledger", "multisig-weaken", &alice, &["staging", "prod"]);
    // bob alone signs staging; alice stays root.
    ledger
        .stele(["policy", "add-signer", "--env", "staging", "--pubkey", &bob.public(), "--key", &alice.secret()])
        .expect(OK);
    ledger
        .stele([
            "policy",
            "remove-signer",
            "--env",
            "staging",
            "--pubkey",
            &alice.public(),
            "--key",
            &alice.secret(),
            "--key",
            &bob.secret(),
        ])
        .expect(OK);
    ledger.expect_valid(&[]);
    let spec: Value =
        serde_json::from_str(&ledger.stele(["env", "show", "--env", "staging"]).expect(OK).stdout).unwrap();
    assert_eq!(spec["revert"], "signed", "new specs default to revert: signed");
    let mut weak = spec.clone();
    weak.as_object_mut().expect("an object").remove("version");
    weak["revert"] = "allow".into();
    let file = sb.path("weak.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&weak).unwrap()).unwrap();
    let head = ledger.git(["rev-parse", "HEAD"]);
    let set = |keys: &[&Key]| {
        let mut args =
            vec!["env".to_owned(), "set".into(), "--env".into(), "staging".into(), "--spec".into(), path_str(&file)];
        for k in keys {
            args.extend(["--key".to_owned(), k.secret()]);
        }
        ledger.stele(&args)
    };
    // Without root: not on the ledger branch; a proposal that root must co-sign.
    set(&[&bob]).expect(OK).says(&["root", "stele/proposals/staging-spec-v2", "N6"]);
    assert_eq!(ledger.git(["rev-parse", "HEAD"]), head);
    ledger.stele(["promote", "staging-spec-v2"]).expect(REFUSED).says(&["N6"]);
    ledger
        .stele(["sign", "--proposal", "staging-spec-v2", "--key", &alice.secret()])
        .expect(OK)
        .says(&["every threshold is met"]);
    ledger.stele(["promote", "staging-spec-v2"]).expect(OK);
    ledger.expect_valid(&[]);
    ledger.stele(["audit", "--trust-root", &alice.id]).expect(OK);
    // With root from the start: committed directly.
    weak["drift"] = "report".into();
    std::fs::write(&file, serde_json::to_vec_pretty(&weak).unwrap()).unwrap();
    let before = ledger.commit_count();
    set(&[&bob, &alice]).expect(OK).says(&["every threshold met"]);
    assert_eq!(ledger.commit_count(), before + 1);
    ledger.stele(["audit", "--trust-root", &alice.id]).expect(OK);
}
