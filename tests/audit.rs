//! `stele audit` on histories made by the real `stele` binary and the real `git` CLI: the `--at`
//! answer (times with Z, with offsets, plain dates; before genesis, between a promotion and a
//! rollback, after a restore), its JSON shape and the status branch's claim beside it; the timeline's
//! rows and who signed each (names from the policy in force then, removed keys included); a refused
//! commit making exit 1; merged proposals named and open proposal branches listed.
//!
//! Commit dates are fixed: `stele` commits with the current time, so its commits are re-dated by an
//! amend before anything reads them, and reverts are made with fixed `GIT_*_DATE`s.

mod common;

use common::*;
use ledger_format::types::{Entry, Environment, Policy, ReleaseVersion, RevertPolicy};
use ledger_format::Document;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------------
// Helpers

struct Fixture {
    sb: Sandbox,
    alice: Key,
    ledger: Ledger,
}

fn fixture(ledger_id: &str) -> Fixture {
    let sb = Sandbox::new();
    let alice = sb.key("alice");
    let ledger = sb.ledger("ledger", ledger_id, &alice, &["staging"]);
    Fixture { sb, alice, ledger }
}

/// The signing key in `key`'s secret file.
fn secret(key: &Key) -> ledger_format::SecretKey {
    stele::keys::load_secret(&key.secret).expect("a key written by `stele key generate`").key
}

impl Fixture {
    fn head(&self) -> String {
        self.ledger.git(["rev-parse", "HEAD"]).trim().to_owned()
    }

    /// `git ARGS` in the ledger with author and committer date `date`.
    fn git_at(&self, date: &str, args: &[&str]) -> String {
        let out = scrubbed("git", self.sb.root(), &self.ledger.dir)
            .args(args)
            .envs([("GIT_AUTHOR_DATE", date), ("GIT_COMMITTER_DATE", date)])
            .output()
            .unwrap_or_else(|e| panic!("cannot run git {args:?}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "git {args:?} failed\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
        stdout
    }

    /// Re-dates HEAD to `date` (same tree, same message) and returns the new commit.
    fn redate(&self, date: &str) -> String {
        self.git_at(date, &["commit", "-q", "--amend", "--no-edit", "--allow-empty"]);
        self.head()
    }

    /// `stele release` of `version` to staging signed by `key`, re-dated to `date`.
    fn release(&self, version: &str, key: &Key, date: &str) -> String {
        let image = self.sb.image(&format!("app-{version}.tar"), format!("app {version}\n").as_bytes());
        self.ledger.release("staging", version, &image, key);
        self.redate(date)
    }

    /// `git revert -S HEAD` SSH-signed by `key` (gpg.format=ssh), dated `date`.
    fn signed_revert(&self, key: &Key, date: &str) -> String {
        let signing_key = format!("user.signingkey={}", key.secret());
        self.git_at(date, &["-c", "gpg.format=ssh", "-c", &signing_key, "revert", "--no-edit", "-S", "HEAD"]);
        self.head()
    }

    /// staging's spec with `revert: signed`, the next version, signed by alice, dated `date`. (The
    /// default of revision 3; written explicitly so the history means the same under revision 2.)
    fn revert_signed(&self, date: &str) -> String {
        let rel = "environments/staging.json";
        let old = Document::<Environment>::parse(&self.ledger.read(rel)).expect("the spec parses");
        let mut payload = old.payload.clone();
        payload.version += 1;
        payload.revert = RevertPolicy::Signed;
        let mut doc = Document::new(payload);
        doc.sign(&secret(&self.alice));
        self.ledger.write(rel, doc.to_file_bytes());
        self.ledger.commit_all("staging: revert signed");
        self.redate(date)
    }

    fn add_signer(&self, key: &Key, date: &str) -> String {
        let add =
            ["policy", "add-signer", "--env", "staging", "--pubkey", &key.public(), "--key", &self.alice.secret()];
        self.ledger.stele(add).expect(OK);
        self.redate(date)
    }

    /// `stele audit --json ARGS` pinned to alice as the root, exit code checked.
    #[track_caller]
    fn audit(&self, args: &[&str], code: i32) -> Value {
        let out = self.ledger.stele(["audit", "--json", "--trust-root", &self.alice.id].iter().chain(args));
        out.expect(code);
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("audit printed no JSON: {e}\n{}", out.dump()))
    }

    /// `stele audit ARGS` (human output) pinned to alice as the root, exit code checked.
    #[track_caller]
    fn audit_text(&self, args: &[&str], code: i32) -> Output {
        let out = self.ledger.stele(["audit", "--trust-root", &self.alice.id].iter().chain(args));
        out.expect(code);
        out
    }

    /// The entry `ledger/staging/<seq>.json` after the current tip, as `stele release` would write it
    /// (version `version`), signed by `keys`.
    fn next_entry(&self, tip_seq: u64, version: &str, keys: &[&Key]) -> (String, Vec<u8>) {
        let tip = Document::<Entry>::parse(&self.ledger.read(&format!("ledger/staging/{tip_seq}.json")))
            .expect("the tip parses");
        let mut payload = tip.payload.clone();
        payload.seq = tip_seq + 1;
        payload.prev = tip.hash();
        payload.version = version.parse::<ReleaseVersion>().expect("a version");
        let mut doc = Document::new(payload);
        for k in keys {
            doc.sign(&secret(k));
        }
        (format!("ledger/staging/{}.json", tip_seq + 1), doc.to_file_bytes())
    }

    /// A commit of `files` on a new branch `branch` from `from`, made with the git CLI; the work tree
    /// is back on main afterwards. Returns the commit.
    fn commit_on(&self, branch: &str, from: &str, files: &[(String, Vec<u8>)], message: &str) -> String {
        let l = &self.ledger;
        l.git(["checkout", "-q", "-b", branch, from]);
        for (path, bytes) in files {
            l.write(path, bytes);
        }
        l.commit_all(message);
        let commit = self.head();
        l.git(["checkout", "-q", "main"]);
        commit
    }

    /// Writes `status/staging.json` on the branch `stele/status` (one commit dated `date` on top of
    /// the branch, or its first), as an agent would report `version` running at `generation`.
    fn report_status(&self, date: &str, ledger_commit: &str, generation: u64, seq: u64, version: &str) {
        let entry = Document::<Entry>::parse(
            &self.ledger.git_bytes(["show", &format!("{ledger_commit}:ledger/staging/{seq}.json")], None),
        )
        .expect("the entry parses");
        let target = json!({"version": version, "seq": seq, "blake3": entry.payload.image.digest()});
        let status: stele::status::EnvStatus = serde_json::from_value(json!({
            "format": 1, "env": "staging", "ledger": entry.payload.ledger, "ledger_commit": ledger_commit,
            "target_generation": generation, "observed_generation": generation,
            "target": target, "running": target, "phase": "Healthy", "message": "converged",
            "instances": [], "last_error": null, "agent": "agent-1", "updated_at": date,
        }))
        .expect("a status document");
        let l = &self.ledger;
        let blob = l.git_bytes(["hash-object", "-w", "--stdin"], Some(&stele::status::render(&status)));
        let blob = String::from_utf8_lossy(&blob).trim().to_owned();
        let dir = l.git_bytes(["mktree"], Some(format!("100644 blob {blob}\tstaging.json\n").as_bytes()));
        let dir = String::from_utf8_lossy(&dir).trim().to_owned();
        let root = l.git_bytes(["mktree"], Some(format!("040000 tree {dir}\tstatus\n").as_bytes()));
        let root = String::from_utf8_lossy(&root).trim().to_owned();
        let parent = l.git(["for-each-ref", "--format=%(objectname)", "refs/heads/stele/status"]);
        let mut args = vec!["commit-tree", root.as_str(), "-m", "status"];
        if !parent.trim().is_empty() {
            args.extend(["-p", parent.trim()]);
        }
        let commit = self.git_at(date, &args);
        l.git(["update-ref", "refs/heads/stele/status", commit.trim()]);
    }
}

/// The rows of the JSON timeline as (action, env, generation, commit).
fn rows(a: &Value) -> Vec<(String, Option<String>, Option<u64>, String)> {
    a["timeline"]
        .as_array()
        .expect("a timeline")
        .iter()
        .map(|r| {
            (
                r["action"].as_str().expect("an action").to_owned(),
                r["env"].as_str().map(str::to_owned),
                r["generation"].as_u64(),
                r["commit"].as_str().expect("a commit").to_owned(),
            )
        })
        .collect()
}

/// The timeline row made by `commit` with `action`.
#[track_caller]
fn row<'a>(a: &'a Value, commit: &str, action: &str) -> &'a Value {
    a["timeline"]
        .as_array()
        .expect("a timeline")
        .iter()
        .find(|r| r["commit"] == commit && r["action"] == action)
        .unwrap_or_else(|| panic!("no {action} row at {commit} in\n{a:#}"))
}

/// A list of signers as key id and name, after checking each carries its SHA256 fingerprint.
fn signers(list: &Value) -> Value {
    let list = list.as_array().expect("a signer list");
    for k in list {
        assert!(k["fingerprint"].as_str().is_some_and(|f| f.starts_with("SHA256:")), "{k}");
    }
    Value::Array(list.iter().map(|k| json!({"keyid": k["keyid"], "name": k["name"]})).collect())
}

/// The names in a list of signers, sorted (signers are listed in key-id order, and key ids are random).
fn signer_names(list: &Value) -> Vec<&str> {
    let mut names: Vec<&str> =
        list.as_array().expect("a signer list").iter().map(|k| k["name"].as_str().unwrap_or("?")).collect();
    names.sort_unstable();
    names
}

// ---------------------------------------------------------------------------------------------------
// --at

/// The history every `--at` test reads, with fixed dates (UTC):
/// 01-01 00:00 genesis · 06:00 revert signed · 12:00 bob added · 01-02 1.0.0 by alice ·
/// 01-03 2.0.0 by bob · 01-04 git revert -S by alice (rollback to 1.0.0) · 01-05 git revert of that
/// revert (restore of 2.0.0). All in 2030.
struct Story {
    f: Fixture,
    bob: Key,
    v1: String,
    v2: String,
    rollback: String,
    restore: String,
}

fn story(ledger_id: &str) -> Story {
    let f = fixture(ledger_id);
    f.redate("2030-01-01T00:00:00Z");
    f.revert_signed("2030-01-01T06:00:00Z");
    let bob = f.sb.key("bob");
    f.add_signer(&bob, "2030-01-01T12:00:00Z");
    let v1 = f.release("1.0.0", &f.alice, "2030-01-02T00:00:00Z");
    let v2 = f.release("2.0.0", &bob, "2030-01-03T00:00:00Z");
    let rollback = f.signed_revert(&f.alice, "2030-01-04T00:00:00Z");
    f.git_at("2030-01-05T00:00:00Z", &["revert", "--no-edit", "HEAD"]);
    let restore = f.head();
    Story { f, bob, v1, v2, rollback, restore }
}

/// What `--at` should answer for staging: nothing (with words of the note), or (generation,
/// version, commit, how, signers of the target).
enum Expect<'a> {
    Nothing(&'a str),
    Target(u64, &'a str, &'a str, &'a str, &'a [&'a str]),
}

#[test]
fn at_answers_the_target_in_force_for_times_with_z_offsets_and_plain_dates() {
    let s = story("audit-at");
    let f = &s.f;
    let table: [(&str, Expect); 11] = [
        ("2029-12-31", Expect::Nothing("the ledger did not exist yet")),
        ("2029-12-31T23:59:59Z", Expect::Nothing("the ledger did not exist yet")),
        ("2030-01-01T10:00:00Z", Expect::Nothing("no release of staging had taken effect")),
        // 01:59:59 at +02:00 is the evening before, UTC: before 1.0.0.
        ("2030-01-02T01:59:59+02:00", Expect::Nothing("no release of staging had taken effect")),
        ("2030-01-02T02:00:00+02:00", Expect::Target(1, "1.0.0", &s.v1, "promotion", &["alice"])),
        ("2030-01-02", Expect::Target(1, "1.0.0", &s.v1, "promotion", &["alice"])),
        ("2030-01-03", Expect::Target(2, "2.0.0", &s.v2, "promotion", &["bob"])),
        // Fractions are truncated toward the past: 23:59:59.999 is still before the rollback.
        ("2030-01-03T23:59:59.999Z", Expect::Target(2, "2.0.0", &s.v2, "promotion", &["bob"])),
        // Between the rollback and the restore: the earlier release, by rollback.
        ("2030-01-04T12:00:00.5Z", Expect::Target(3, "1.0.0", &s.rollback, "rollback", &["alice"])),
        ("2030-01-04T21:00:00-05:00", Expect::Target(4, "2.0.0", &s.restore, "restore", &["bob"])),
        ("2031-06-01", Expect::Target(4, "2.0.0", &s.restore, "restore", &["bob"])),
    ];
    for (at, expected) in table {
        let a = f.audit(&["--at", at], OK);
        let env = &a["environments"]["staging"];
        let answer = &env["at"];
        match expected {
            Expect::Nothing(words) => {
                assert_eq!(*answer, Value::Null, "at {at}: {a:#}");
                assert!(env["note"].as_str().is_some_and(|n| n.contains(words)), "at {at}: {a:#}");
            }
            Expect::Target(generation, version, commit, how, signers) => {
                assert_eq!(
                    (
                        answer["generation"].as_u64(),
                        answer["target"]["version"].as_str(),
                        answer["commit"].as_str(),
                        answer["how"].as_str()
                    ),
                    (Some(generation), Some(version), Some(commit), Some(how)),
                    "at {at}: {a:#}"
                );
                assert_eq!(signer_names(&answer["signed_by"]), signers, "at {at}");
                assert_eq!(env["note"], Value::Null, "at {at}");
            }
        }
    }
    // The time asked is echoed in UTC.
    let a = f.audit(&["--at", "2030-01-04T14:00:00+02:00"], OK);
    assert_eq!(
        (a["at"].as_str(), a["asked"].as_str()),
        (Some("2030-01-04T12:00:00Z"), Some("2030-01-04T14:00:00+02:00"))
    );
}

/// The rollback answer says what was reverted, that alice SSH-signed the revert, and prints the
/// answer only: no timeline rows, no proposal list.
#[test]
fn at_between_a_promotion_and_a_rollback_answers_the_earlier_release_labelled_rollback() {
    let s = story("audit-at-rollback");
    let f = &s.f;
    let a = f.audit(&["--at", "2030-01-04T12:00:00Z", "--env", "staging"], OK);
    let answer = &a["environments"]["staging"]["at"];
    assert_eq!(answer["action"], "rollback");
    assert_eq!(answer["revert"]["reverted"]["version"], "2.0.0");
    assert_eq!(answer["revert"]["commit_signed"], true);
    assert_eq!(signers(&answer["revert"]["signed_by"]), json!([{"keyid": f.alice.id, "name": "alice"}]));
    assert_eq!(answer["target"]["seq"], 1);

    let out = f.audit_text(&["--at", "2030-01-04T14:00:00+02:00"], OK);
    out.says(&[
        "at 2030-01-04T12:00:00Z (UTC; asked: 2030-01-04T14:00:00+02:00)",
        "target       1.0.0 (seq 1), generation 3",
        "signed by    alice (",
        &format!("took effect  by rollback at commit {}", &s.rollback[..12]),
        "reverted 2.0.0 (seq 2); the revert was SSH-signed by alice (",
        "observed     no verified observation recorded by then",
    ]);
    assert!(!out.stdout.contains("TIME (UTC)"), "--at prints the answer, not the timeline\n{}", out.dump());
    assert!(!out.stdout.contains(&s.v2[..12]), "no row of other commits\n{}", out.dump());

    let before = f.audit_text(&["--at", "2029-06-01"], OK);
    before.says(&["nothing was targeted yet: the ledger did not exist"]);
    let early = f.audit_text(&["--at", "2030-01-01T23:00:00Z"], OK);
    early.says(&["nothing was targeted yet: no release of staging had taken effect"]);
}

/// After the restore, the answer is 2.0.0 by restore (signed by bob). The status branch's reports
/// are unsigned (an agent without a key): never the observed answer, listed apart as UNVERIFIED
/// (O1) up to that time, newest first, and a time before any report lists none. (A verified claim
/// beside the answer: tests/status_verify.rs.)
#[test]
fn at_after_a_restore_answers_the_restored_release_and_lists_unsigned_reports_as_unverified() {
    let s = story("audit-at-restore");
    let f = &s.f;
    f.report_status("2030-01-03T06:00:00Z", &s.v2, 2, 2, "2.0.0");
    f.report_status("2030-01-04T06:00:00Z", &s.rollback, 3, 1, "1.0.0");
    f.report_status("2030-01-05T06:00:00Z", &s.restore, 4, 2, "2.0.0");

    let a = f.audit(&["--at", "2030-01-05T12:00:00Z"], OK);
    let env = &a["environments"]["staging"];
    assert_eq!(
        (env["at"]["how"].as_str(), env["at"]["target"]["version"].as_str(), env["at"]["generation"].as_u64()),
        (Some("restore"), Some("2.0.0"), Some(4))
    );
    assert_eq!(env["at"]["commit"], s.restore.as_str());
    assert_eq!(env["observed"], Value::Null, "an unsigned report is not a claim: {env:#}");
    let unverified = env["unverified"].as_array().expect("a list");
    assert_eq!(unverified.len(), 3, "{env:#}");
    let newest = &unverified[0];
    assert_eq!(
        (newest["ref"].as_str(), newest["verified"].as_bool(), newest["check"].as_str()),
        (Some("refs/heads/stele/status"), Some(false), Some("O1"))
    );
    assert_eq!(newest["recorded_at"], "2030-01-05T06:00:00Z");
    assert_eq!((newest["phase"].as_str(), newest["running"]["version"].as_str()), (Some("Healthy"), Some("2.0.0")));
    assert!(newest["unverified_reason"].as_str().unwrap_or_default().starts_with("unsigned"), "{newest:#}");

    // Between two reports: the earlier ones only.
    let a = f.audit(&["--at", "2030-01-04T23:00:00Z"], OK);
    assert_eq!(a["environments"]["staging"]["unverified"][0]["running"]["version"], "1.0.0");
    assert_eq!(a["environments"]["staging"]["at"]["how"], "rollback");
    let a = f.audit(&["--at", "2030-01-03T05:59:59Z"], OK);
    assert_eq!(a["environments"]["staging"]["observed"], Value::Null);
    assert_eq!(a["environments"]["staging"]["unverified"], json!([]));
    assert_eq!(a["environments"]["staging"]["at"]["target"]["version"], "2.0.0");

    f.audit_text(&["--at", "2030-01-05T12:00:00Z"], OK).says(&[
        "took effect  by restore",
        "observed     no verified observation recorded by then",
        "UNVERIFIED   Healthy generation 4/4 recorded 2030-01-05T06:00:00Z on refs/heads/stele/status (",
        "UNVERIFIED (O1): unsigned",
    ]);
}

/// The JSON of `--at` is the answer and nothing else: per environment `at`, `note`, `observed`.
#[test]
fn at_json_shape_is_the_answer() {
    let s = story("audit-at-json");
    let a = s.f.audit(&["--at", "2030-01-03T12:00:00Z"], OK);
    let top: Vec<&str> = a.as_object().expect("an object").keys().map(String::as_str).collect();
    assert_eq!(
        top,
        [
            "asked",
            "at",
            "branch",
            "commits",
            "environments",
            "head",
            "ledger",
            "ok",
            "recovered",
            "refusals",
            "source",
            "trust_root_pinned"
        ]
    );
    let env = a["environments"]["staging"].as_object().expect("staging");
    assert_eq!(env.keys().collect::<Vec<_>>(), ["at", "note", "observed", "unverified"]);
    let answer = &a["environments"]["staging"]["at"];
    for key in ["generation", "target", "signed_by", "how", "action", "commit", "time", "summary", "policy_version"] {
        assert!(answer.get(key).is_some(), "the answer has {key}: {answer:#}");
    }
    assert_eq!(answer["time"], "2030-01-03T00:00:00Z");
    assert_eq!(signers(&answer["signed_by"]), json!([{"keyid": s.bob.id, "name": "bob"}]));
    assert_eq!(answer["target"]["image"]["blake3"].as_str().map(str::len), Some(64), "{answer:#}");
    assert_eq!((a["ok"].as_bool(), a["commits"].as_u64()), (Some(true), Some(7)));
}

#[test]
fn at_refuses_bad_times_naming_the_flag_and_the_accepted_forms() {
    let f = fixture("audit-at-bad");
    for bad in ["yesterday", "2030-02-30", "2030-01-01T12:00:00", "2030-01-01T12:00:00+2:00"] {
        f.ledger.stele(["audit", "--at", bad]).expect(REFUSED).says(&[
            &format!("--at {bad:?}"),
            "RFC 3339",
            "2026-03-03T14:00:00+01:00",
            "plain date",
        ]);
    }
    f.ledger.stele(["audit", "--help"]).expect(OK).says(&["plain date", "00:00:00Z that day"]);
}

/// Without a trust root the audit refuses (exit 3, naming the ways out) and prints no verdict;
/// `--trust-genesis-as-found` is the explicit opt-in, and the output then says the root was not
/// pinned. `--env` naming an undeclared environment is refused, naming it and the declared ones,
/// in every form (timeline, JSON, `--at`).
#[test]
fn audit_refuses_without_a_trust_root_and_an_unknown_env() {
    let f = fixture("audit-refusals");
    let l = &f.ledger;
    let out = l.stele(["audit"]);
    out.expect(REFUSED).says(&["no trust root", "--trust-root", "--trust-root-hash", "--trust-genesis-as-found"]);
    assert!(!out.stdout.contains("OK: every step verified"), "{}", out.dump());
    l.stele(["audit", "--json"]).expect(REFUSED);
    l.stele(["audit", "--trust-genesis-as-found"]).expect(OK).says(&["NOT PINNED", "OK: every step verified"]);
    l.stele(["audit", "--trust-genesis-as-found", "--trust-root", &f.alice.id]).expect(USAGE);
    l.stele(["audit", "--help"]).expect(OK).says(&["--trust-genesis-as-found"]);
    for extra in [&[][..], &["--json"][..], &["--at", "2031-01-01"][..]] {
        let out = l.stele(["audit", "--env", "nope", "--trust-root", &f.alice.id].iter().chain(extra));
        out.expect(REFUSED).says(&["--env nope: unknown environment", "declares staging"]);
        assert!(!out.stdout.contains("OK: every step verified"), "{}", out.dump());
    }
}

// ---------------------------------------------------------------------------------------------------
// The timeline

/// Every step is a row, in order, with who signed it: the revert SSH-signed by alice, the restore,
/// the policy change and the spec change with their signers.
#[test]
fn timeline_rows_name_who_signed_each_step() {
    let s = story("audit-rows");
    let f = &s.f;
    let a = f.audit(&[], OK);
    let actions: Vec<(String, Option<u64>)> = rows(&a).into_iter().map(|(act, _, g, _)| (act, g)).collect();
    let expected = [
        ("genesis", Some(0)),
        ("spec", Some(0)),
        ("policy", Some(0)),
        ("promote", Some(1)),
        ("promote", Some(2)),
        ("rollback", Some(3)),
        ("restore", Some(4)),
    ];
    let expected: Vec<(String, Option<u64>)> = expected.iter().map(|(a, g)| ((*a).to_owned(), *g)).collect();
    assert_eq!(actions, expected, "{a:#}");

    assert_eq!(signer_names(&row(&a, &s.v1, "promote")["signed_by"]), ["alice"]);
    assert_eq!(signer_names(&row(&a, &s.v2, "promote")["signed_by"]), ["bob"]);
    let rollback = row(&a, &s.rollback, "rollback");
    assert_eq!(signers(&rollback["revert"]["signed_by"]), json!([{"keyid": f.alice.id, "name": "alice"}]));
    assert_eq!(rollback["entry"]["version"], "2.0.0");
    assert_eq!(rollback["target"]["version"], "1.0.0");
    assert_eq!(signer_names(&row(&a, &s.restore, "restore")["signed_by"]), ["bob"]);
    let policy = &a["timeline"][2];
    assert_eq!((policy["action"].as_str(), policy["policy_version"].as_u64()), (Some("policy"), Some(2)));
    assert_eq!(signer_names(&policy["signed_by"]), ["alice"]);
    assert_eq!(signer_names(&a["timeline"][1]["signed_by"]), ["alice"], "the spec change");
    assert!(a["timeline"][1]["detail"].as_str().is_some_and(|d| d.contains("revert signed")), "{a:#}");
    assert_eq!(a["proposals"], json!([]));

    let out = f.audit_text(&[], OK);
    out.says(&[
        "TIME (UTC)",
        "promote    2.0.0 (seq 2, blake3:",
        ") signed by bob (",
        "rollback   reverted 2.0.0 (seq 2",
        "revert SSH-signed by alice (",
        "restore    2.0.0 (seq 2",
        "policy v2 (root 1 of 1; staging 1 of 2), signed by alice (",
        "OK: every step verified",
    ]);
}

/// A key removed from the policy keeps its name on what it signed before: names come from the policy
/// in force at each step, not the final one (which no longer lists bob).
#[test]
fn a_removed_signer_is_still_named_on_the_rows_it_signed() {
    let f = fixture("audit-removed");
    let bob = f.sb.key("bob");
    f.add_signer(&bob, "2030-01-01T00:00:00Z");
    let by_bob = f.release("1.0.0", &bob, "2030-01-02T00:00:00Z");
    f.release("2.0.0", &f.alice, "2030-01-03T00:00:00Z");
    let remove = ["policy", "remove-signer", "--env", "staging", "--pubkey", &bob.public(), "--key", &f.alice.secret()];
    f.ledger.stele(remove).expect(OK);
    let policy = Document::<Policy>::parse(&f.ledger.read("trust/policy.json")).expect("the policy parses");
    let bob_id = bob.id.parse().expect("a key id");
    assert!(policy.payload.key_name(&bob_id).is_none(), "the final policy no longer names bob");

    let a = f.audit(&[], OK);
    assert_eq!(signers(&row(&a, &by_bob, "promote")["signed_by"]), json!([{"keyid": bob.id, "name": "bob"}]));
    f.audit_text(&[], OK).says(&[&format!("signed by bob ({})", &bob.id[..12])]);
    let a = f.audit(&["--at", "2030-01-02T12:00:00Z"], OK);
    assert_eq!(signer_names(&a["environments"]["staging"]["at"]["signed_by"]), ["bob"]);
}

/// A hand-made commit that breaks the chain is refused: exit 1, and both the refused commit and the
/// revert that recovers from it are rows; the JSON says the same.
#[test]
fn a_refused_commit_makes_exit_1_and_the_refused_and_recovering_commits_are_rows() {
    let f = fixture("audit-refused");
    let v1 = f.release("1.0.0", &f.alice, "2030-01-02T00:00:00Z");
    f.ledger.write("ledger/staging/5.json", b"{}\n");
    f.ledger.commit_all("hand-written entry");
    let bad = f.redate("2030-01-03T00:00:00Z");
    f.git_at("2030-01-04T00:00:00Z", &["revert", "--no-edit", "HEAD"]);
    let fixed = f.head();
    let v2 = f.release("2.0.0", &f.alice, "2030-01-05T00:00:00Z");

    let a = f.audit(&[], VERIFY_FAILED);
    assert_eq!(a["ok"], false);
    let order: Vec<(String, String)> = rows(&a).into_iter().map(|(act, _, _, c)| (act, c)).collect();
    let tail: Vec<(&str, &str)> = order[order.len() - 4..].iter().map(|(a, c)| (a.as_str(), c.as_str())).collect();
    assert_eq!(
        tail,
        [("promote", v1.as_str()), ("refused", bad.as_str()), ("recovered", fixed.as_str()), ("promote", v2.as_str())]
    );
    let refused = row(&a, &bad, "refused");
    assert_eq!(refused["problems"][0]["path"], "ledger/staging/5.json", "{refused:#}");
    assert_eq!(refused["summary"], "hand-written entry");
    assert_eq!(row(&a, &fixed, "recovered")["refused"], bad.as_str());
    assert_eq!(a["recovered"], json!([{"refused": bad, "recovered_at": fixed}]));

    f.audit_text(&[], VERIFY_FAILED).says(&[
        "REFUSED",
        "\"hand-written entry\" by Stele Test",
        "ledger/staging/5.json: ",
        &format!("past refused {}", &bad[..12]),
        "FAILED: 1 refused commit",
    ]);
    // The answer still follows the verified commits, and says the history has a refusal.
    let a = f.audit(&["--at", "2031-01-01"], VERIFY_FAILED);
    assert_eq!(a["environments"]["staging"]["at"]["target"]["version"], "2.0.0");
}

// ---------------------------------------------------------------------------------------------------
// Merges and proposals

/// staging made 2-of-2 by hand in one commit: policy v3 (threshold 2, signed by alice, the root), the
/// spec and the tip co-signed by bob (the same payloads). Returns bob and that commit.
fn two_of_two(f: &Fixture) -> (Key, String) {
    let bob = f.sb.key("bob");
    f.add_signer(&bob, "2030-01-01T00:00:00Z");
    f.release("1.0.0", &f.alice, "2030-01-02T00:00:00Z");
    let l = &f.ledger;
    let mut policy = Document::<Policy>::parse(&l.read("trust/policy.json")).expect("the policy parses").payload;
    policy.version += 1;
    policy.environments.get_mut(&"staging".parse().expect("a name")).expect("staging").threshold = 2;
    let mut doc = Document::new(policy);
    doc.sign(&secret(&f.alice));
    l.write("trust/policy.json", doc.to_file_bytes());
    for rel in ["environments/staging.json", "ledger/staging/1.json"] {
        let bytes = l.read(rel);
        let signed = if rel.starts_with("ledger") {
            let mut d = Document::<Entry>::parse(&bytes).expect("the entry parses");
            d.sign(&secret(&bob));
            d.to_file_bytes()
        } else {
            let mut d = Document::<Environment>::parse(&bytes).expect("the spec parses");
            d.sign(&secret(&bob));
            d.to_file_bytes()
        };
        l.write(rel, signed);
    }
    l.commit_all("staging: 2 of 2");
    let commit = f.redate("2030-01-03T00:00:00Z");
    (bob, commit)
}

/// A fully signed proposal merged with `git merge --no-ff` is a promotion at the merge, naming the
/// merged commit and the proposal (found by its branch, the message does not name it); a proposal
/// short of signatures and a complete one on a remote-tracking ref are listed as open with their
/// signatures against the 2-of-2 threshold; audit still exits 0.
#[test]
fn merged_proposals_are_named_and_open_ones_listed_with_signatures_so_far() {
    let f = fixture("audit-proposals");
    let (bob, raised) = two_of_two(&f);
    let l = &f.ledger;

    let a = f.audit(&[], OK);
    let cosign = row(&a, &raised, "co-sign");
    assert_eq!(signer_names(&cosign["co_signed_by"]), ["bob"]);
    assert_eq!(signer_names(&cosign["signed_by"]).len(), 2);
    let spec = row(&a, &raised, "spec");
    assert_eq!(signer_names(&spec["signed_by"]), ["alice", "bob"]);
    assert!(spec["detail"].as_str().is_some_and(|d| d.contains("spec v1") && d.contains("co-signed")), "{spec:#}");
    assert!(
        row(&a, &raised, "policy")["detail"].as_str().is_some_and(|d| d.contains("staging 2 of 2")),
        "the policy row says the new threshold: {a:#}"
    );

    let y = f.commit_on("stele/proposals/y", "main", &[f.next_entry(1, "2.0.0", &[&f.alice, &bob])], "propose 2.0.0");
    f.git_at("2030-01-04T00:00:00Z", &["merge", "-q", "--no-ff", "-m", "Merge pull request #1", "stele/proposals/y"]);
    let merge = f.head();
    let x = f.commit_on("stele/proposals/x", "main", &[f.next_entry(2, "3.0.0", &[&f.alice])], "propose 3.0.0");
    let z = f.commit_on("tmp", "main", &[f.next_entry(2, "3.1.0", &[&f.alice, &bob])], "propose 3.1.0");
    l.git(["update-ref", "refs/remotes/origin/stele/proposals/z", &z]);
    l.git(["branch", "-q", "-D", "tmp"]);

    let a = f.audit(&[], OK);
    let promoted = row(&a, &merge, "promote");
    assert_eq!(
        (promoted["merged_from"].as_str(), promoted["proposal"].as_str(), promoted["generation"].as_u64()),
        (Some(y.as_str()), Some("y"), Some(2))
    );
    assert_eq!(signer_names(&promoted["signed_by"]), ["alice", "bob"]);

    let open = a["proposals"].as_array().expect("a proposal list");
    let refs: Vec<&str> = open.iter().map(|p| p["ref"].as_str().unwrap_or("?")).collect();
    assert_eq!(refs, ["refs/heads/stele/proposals/x", "refs/remotes/origin/stele/proposals/z"], "y was merged: {a:#}");
    let short = &open[0]["documents"][0];
    assert_eq!(open[0]["commit"], x.as_str());
    assert_eq!(
        (short["path"].as_str(), short["signatures"].as_u64(), short["required"].as_u64(), short["complete"].as_bool()),
        (Some("ledger/staging/3.json"), Some(1), Some(2), Some(false))
    );
    assert_eq!(signer_names(&short["signed_by"]), ["alice"]);
    assert_eq!(signer_names(&short["missing"]), ["bob"]);
    assert_eq!(open[1]["documents"][0]["complete"], true);
    assert_eq!(open[1]["stale"], json!([]));
    // ledger_format's verdict on landing each one on the head now.
    assert_eq!(open[0]["verifies"], false);
    let problems = open[0]["problems"].as_array().expect("problems");
    assert_eq!(
        (problems[0]["path"].as_str(), problems[0]["check"].as_str()),
        (Some("ledger/staging/3.json"), Some("E5"))
    );
    assert_eq!((open[1]["verifies"].as_bool(), &open[1]["problems"]), (Some(true), &Value::Null));

    f.audit_text(&[], OK).says(&[
        &format!("merged from {} (proposal stele/proposals/y)", &y[..12]),
        "open proposals",
        "refs/heads/stele/proposals/x",
        "staging: release 3.0.0 (seq 3): 1 of 2 signatures (alice (",
        "may still sign: bob (",
        "staging: release 3.1.0 (seq 3): 2 of 2 signatures",
        "threshold met",
        "landed on the head now, it would be refused:",
        "ledger/staging/3.json: E5: ",
        "ready to promote: landed on the head now, it verifies as the next step (promote)",
        "OK: every step verified",
    ]);

    // Once 3.1.0 lands (here by a fast-forward), z is no longer open and x is stale.
    l.git(["merge", "-q", "--ff-only", &z]);
    let a = f.audit(&[], OK);
    let open = a["proposals"].as_array().expect("a proposal list");
    assert_eq!(open.len(), 1, "{a:#}");
    assert_eq!(open[0]["stale"], json!(["ledger/staging/3.json"]));
    assert_eq!(open[0]["verifies"], false, "seq 3 is taken: {a:#}");
}
