//! `stele env set` and `stele env show`, driven through the real binary against ledgers made by
//! `stele init`: what is filled in, what is refused (and that a refusal changes nothing), co-signing a
//! spec short of its threshold, and that the history verifier (`stele poll`, `stele audit`) accepts
//! every spec change `env set` commits.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const EXAMPLES: [&str; 3] = ["rolling.json", "blue-green.json", "canary.json"];

/// alice is the root and the only signer of staging and prod.
struct Fixture {
    sb: Sandbox,
    alice: Key,
    ledger: Ledger,
}

fn fixture() -> Fixture {
    let sb = Sandbox::new();
    let alice = sb.key("alice");
    let ledger = sb.ledger("ledger", "envdemo", &alice, &["staging", "prod"]);
    Fixture { sb, alice, ledger }
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/environments").join(name)
}

fn example_json(name: &str) -> Value {
    let bytes = std::fs::read(example(name)).unwrap_or_else(|e| panic!("read example {name}: {e}"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("example {name} is not JSON: {e}"))
}

impl Fixture {
    /// Writes `value` as a spec file in the sandbox (outside the ledger) and returns its path.
    fn spec_file(&self, name: &str, value: &Value) -> PathBuf {
        let path = self.sb.path(name);
        std::fs::write(&path, serde_json::to_vec_pretty(value).expect("render")).expect("write spec file");
        path
    }

    /// `stele env set --env ENV --spec FILE --key K...`, not checked.
    fn set(&self, env: &str, spec: &Path, keys: &[&Key]) -> Output {
        let mut args =
            vec!["env".to_owned(), "set".into(), "--env".into(), env.into(), "--spec".into(), path_str(spec)];
        for k in keys {
            args.extend(["--key".to_owned(), k.secret()]);
        }
        self.ledger.stele(&args)
    }

    /// `stele env show --env ENV`, checked, as JSON.
    fn show(&self, env: &str) -> Value {
        let out = self.ledger.stele(["env", "show", "--env", env]);
        out.expect(OK);
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("env show printed no JSON: {e}\n{}", out.dump()))
    }

    /// The payload of `environments/ENV.json` as committed.
    fn payload(&self, env: &str) -> Value {
        self.ledger.json(&format!("environments/{env}.json"))["payload"].clone()
    }

    fn head(&self) -> String {
        self.ledger.git(["rev-parse", "HEAD"]).trim().to_owned()
    }

    /// Asserts that `out` was refused with `words`, and that the ledger is exactly as it was at `head`.
    #[track_caller]
    fn expect_refused_unchanged(&self, out: &Output, head: &str, words: &[&str]) {
        out.expect(REFUSED).says(words);
        assert_eq!(self.head(), head, "a refused `env set` must not commit\n{}", out.dump());
        assert_eq!(self.ledger.git(["status", "--porcelain"]), "", "a refused `env set` must not touch the work tree");
        self.ledger.expect_valid(&[]);
    }

    /// `stele poll --json` pinned to alice as root, with its own state directory; returns the JSON.
    fn poll(&self) -> Value {
        let state = path_str(&self.sb.path("agent-state"));
        let repo = path_str(&self.ledger.dir);
        let args = ["poll", "--repo", &repo, "--state-dir", &state, "--trust-root", &self.alice.id, "--json"];
        let out = self.sb.stele(self.sb.root(), args);
        out.expect(OK);
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("poll printed no JSON: {e}\n{}", out.dump()))
    }

    /// Asserts a poll verified everything up to HEAD with no refusals.
    #[track_caller]
    fn expect_poll_verified(&self) -> Value {
        let poll = self.poll();
        let status = poll["status"].as_str().unwrap_or_default();
        assert!(matches!(status, "verified" | "up_to_date"), "poll status {status}: {poll:#}");
        assert_eq!(poll["commit"], self.head().as_str(), "poll did not reach HEAD: {poll:#}");
        assert_eq!(poll["refusals"], json!([]), "poll refused a commit: {poll:#}");
        poll
    }

    /// `stele audit --json` pinned to alice: the spec-change events of `env`, as (commit, generation).
    fn spec_events(&self, env: &str) -> Vec<(String, u64)> {
        let out = self.ledger.stele(["audit", "--json", "--trust-root", &self.alice.id]);
        out.expect(OK);
        let audit: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("audit JSON: {e}"));
        let events = audit["environments"][env]["events"].as_array().unwrap_or_else(|| panic!("events: {audit:#}"));
        events
            .iter()
            .filter(|e| e["action"] == "spec")
            .map(|e| {
                (e["commit"].as_str().expect("a commit").to_owned(), e["generation"].as_u64().expect("a generation"))
            })
            .collect()
    }
}

/// What `env set` fills into a template: the example payload plus ledger, name and version.
fn filled(template: &Value, env: &str, version: u64) -> Value {
    let mut v = template.clone();
    let m = v.as_object_mut().expect("an object");
    m.insert("ledger".into(), json!("envdemo"));
    m.insert("name".into(), json!(env));
    m.insert("version".into(), json!(version));
    m.entry("type").or_insert(json!("stele.environment/v1"));
    v
}

#[test]
fn every_example_spec_is_accepted_and_the_history_verifier_accepts_each_change() {
    let f = fixture();
    let image = f.sb.image("app-1.tar", b"app 1\n");
    f.ledger.release("staging", "1.0.0", &image, &f.alice);
    let first = f.expect_poll_verified();
    assert_eq!(first["environments"]["staging"]["generation"], 1, "{first:#}");

    let mut commits = Vec::new();
    for (i, name) in EXAMPLES.into_iter().enumerate() {
        let template = example_json(name);
        for member in ["ledger", "name", "version"] {
            assert!(template.get(member).is_none(), "example {name} must be a template without {member}");
        }
        let version = i as u64 + 2;
        let before = f.ledger.commit_count();
        let out = f.set("staging", &example(name), &[&f.alice]);
        out.expect(OK).says(&[&format!("staging: spec version {version}"), "every threshold met"]);
        assert_eq!(f.ledger.commit_count(), before + 1, "one commit per `env set`");
        let head = f.head();
        out.says(&[&format!("commit {head}")]);
        assert_eq!(f.payload("staging"), filled(&template, "staging", version), "{name} as committed");
        assert_eq!(f.show("staging"), filled(&template, "staging", version), "{name} as shown");
        f.ledger.expect_valid(&[]);

        // The agent's history verifier takes the spec change as one step, and it leaves the target alone.
        let poll = f.expect_poll_verified();
        assert_eq!(poll["environments"]["staging"]["generation"], 1, "a spec change is no new target: {poll:#}");
        assert_eq!(poll["environments"]["staging"]["target"]["version"], "1.0.0", "{poll:#}");
        commits.push((head, 1));
    }
    assert_eq!(f.ledger.git(["log", "-1", "--format=%s"]).trim(), "env(staging): set spec version 4 (canary)");
    assert_eq!(f.spec_events("staging"), commits, "audit lists each spec change at its commit");
    assert_eq!(f.payload("prod")["version"], 1, "prod is untouched");
}

#[test]
fn version_is_filled_in_as_the_current_plus_one() {
    let f = fixture();
    let mut spec = example_json("blue-green.json");
    spec.as_object_mut().unwrap().remove("type");
    let file = f.spec_file("bg.json", &spec);
    f.set("staging", &file, &[&f.alice]).expect(OK).says(&["staging: spec version 2 (blue_green)", "strategy"]);
    assert_eq!(f.payload("staging"), filled(&spec, "staging", 2), "type, ledger, name and version filled in");
    assert_eq!(f.ledger.git(["log", "-1", "--format=%s"]).trim(), "env(staging): set spec version 2 (blue_green)");
    f.set("staging", &file, &[&f.alice]).expect(OK).says(&["staging: spec version 3 (blue_green)"]);
    assert_eq!(f.payload("staging")["version"], 3);
    f.expect_poll_verified();
}

#[test]
fn an_explicit_version_lower_than_the_current_is_refused() {
    let f = fixture();
    f.set("staging", &example("canary.json"), &[&f.alice]).expect(OK);
    let head = f.head();
    for (version, words) in [
        (1, &["version is 1", "already at version 2"][..]),
        (0, &["version is 0", "already at version 2"][..]),
        // Skipping ahead would stall every agent (N5: spec versions go up by one), so it is refused too.
        (4, &["version is 4", "next spec version of staging is 3", "N5"][..]),
    ] {
        let spec = filled(&example_json("rolling.json"), "staging", version);
        let file = f.spec_file("old.json", &spec);
        let out = f.set("staging", &file, &[&f.alice]);
        f.expect_refused_unchanged(&out, &head, words);
        out.says(&["old.json", "nothing was signed"]);
    }
    // The next version, given explicitly, is accepted.
    let file = f.spec_file("next.json", &filled(&example_json("rolling.json"), "staging", 3));
    f.set("staging", &file, &[&f.alice]).expect(OK).says(&["spec version 3 (rolling)"]);
}

#[test]
fn a_spec_naming_another_environment_or_ledger_is_refused() {
    let f = fixture();
    let head = f.head();
    for (member, value, words) in [
        ("name", json!("prod"), &["name is \"prod\"", "--env is \"staging\""][..]),
        ("ledger", json!("another-ledger"), &["ledger is \"another-ledger\"", "\"envdemo\""][..]),
    ] {
        let mut spec = example_json("rolling.json");
        spec[member] = value;
        let file = f.spec_file("named.json", &spec);
        let out = f.set("staging", &file, &[&f.alice]);
        f.expect_refused_unchanged(&out, &head, words);
        out.says(&["named.json"]);
    }
}

#[test]
fn an_unknown_member_is_refused_by_name_at_any_level() {
    let f = fixture();
    let head = f.head();
    let mut top = example_json("rolling.json");
    top["colour"] = json!("blue");
    let mut nested = example_json("blue-green.json");
    nested["health"]["retries"] = json!(3);
    let mut in_group = example_json("canary.json");
    in_group["groups"][0]["region"] = json!("eu");
    for (spec, field, context) in
        [(top, "colour", None), (nested, "retries", Some("health")), (in_group, "region", None)]
    {
        let file = f.spec_file("unknown.json", &spec);
        let out = f.set("staging", &file, &[&f.alice]);
        f.expect_refused_unchanged(&out, &head, &["unknown.json", &format!("unknown field `{field}`"), "D5"]);
        if let Some(path) = context {
            out.says(&[&format!("{path}: unknown field")]);
        }
    }
}

#[test]
fn malformed_json_is_refused_with_its_position() {
    let f = fixture();
    let head = f.head();
    let text = std::fs::read_to_string(example("rolling.json")).unwrap();
    for (name, bad, words) in [
        (
            "dup.json",
            replace_once(&text, "\"drift\": \"correct\",", "\"drift\": \"correct\", \"drift\": \"report\","),
            &["duplicate key \"drift\"", "line 26"][..],
        ),
        (
            "null.json",
            replace_once(&text, "\"min_ready_seconds\": 2", "\"min_ready_seconds\": null"),
            &["null is not allowed", "line 16"][..],
        ),
        (
            "float.json",
            replace_once(&text, "\"min_ready_seconds\": 2", "\"min_ready_seconds\": 2.5"),
            &["integers only"][..],
        ),
    ] {
        let file = f.sb.path(name);
        std::fs::write(&file, bad).unwrap();
        let out = f.set("staging", &file, &[&f.alice]);
        f.expect_refused_unchanged(&out, &head, words);
        out.says(&[name, "not strict JSON"]);
    }
    let missing = f.sb.path("no-such-spec.json");
    f.expect_refused_unchanged(&f.set("staging", &missing, &[&f.alice]), &head, &["no-such-spec.json", "cannot read"]);
}

#[test]
fn values_out_of_range_are_refused_before_signing() {
    let f = fixture();
    let head = f.head();
    let mut flat = example_json("canary.json");
    flat["strategy"]["steps"] = json!([{"weight": 50, "pause_seconds": 5}, {"weight": 50, "pause_seconds": 5}]);
    let mut falling = example_json("canary.json");
    falling["strategy"]["steps"] = json!([{"weight": 60, "pause_seconds": 5}, {"weight": 30, "pause_seconds": 0}]);
    let mut over = example_json("canary.json");
    over["strategy"]["steps"] = json!([{"weight": 101, "pause_seconds": 0}]);
    let mut empty = example_json("canary.json");
    empty["strategy"]["steps"] = json!([]);
    let mut fast = example_json("rolling.json");
    fast["health"]["interval_ms"] = json!(50);
    let mut stuck = example_json("rolling.json");
    stuck["strategy"]["max_surge"] = json!(0);
    for (spec, words) in [
        (flat, &["step 2 has weight 50"][..]),
        (falling, &["step 2 has weight 30"][..]),
        (over, &["weight 101"][..]),
        (empty, &["steps"][..]),
        (fast, &["interval_ms"][..]),
        (stuck, &["max_surge"][..]),
    ] {
        let file = f.spec_file("range.json", &spec);
        let out = f.set("staging", &file, &[&f.alice]);
        f.expect_refused_unchanged(&out, &head, words);
        out.says(&["range.json", "N3", "nothing was signed"]);
    }
}

#[test]
fn a_key_outside_the_environments_role_is_refused_by_name() {
    let f = fixture();
    let bob = f.sb.key("bob");
    let carol = f.sb.key("carol");
    // bob signs for prod only, so he is named in the policy but may not sign staging's spec.
    f.ledger
        .stele(["policy", "add-signer", "--env", "prod", "--pubkey", &bob.public(), "--key", &f.alice.secret()])
        .expect(OK);
    let head = f.head();
    let spec = example("blue-green.json");
    let out = f.set("staging", &spec, &[&bob]);
    f.expect_refused_unchanged(&out, &head, &["bob.key", "bob (", &bob.id, "not a signer of staging", "alice ("]);
    // A key the policy does not know at all, even next to a good one.
    let out = f.set("staging", &spec, &[&f.alice, &carol]);
    f.expect_refused_unchanged(&out, &head, &["carol.key", &carol.id, "not in the policy", "not a signer of staging"]);
    // bob may sign prod's spec.
    f.set("prod", &spec, &[&bob]).expect(OK).says(&["prod: spec version 2 (blue_green)", "bob ("]);
    f.expect_poll_verified();
}

#[test]
fn an_undeclared_environment_is_refused() {
    let f = fixture();
    let head = f.head();
    let out = f.set("qa", &example("rolling.json"), &[&f.alice]);
    f.expect_refused_unchanged(&out, &head, &["environment qa is not declared", "policy add-env"]);
    let out = f.ledger.stele(["env", "show", "--env", "qa"]);
    out.expect(REFUSED).says(&["environment qa is not declared", "root keys (alice"]);
    f.ledger.stele(["env", "show", "--env", "Not/A/Name"]).expect(REFUSED);

    // The suggested command works as printed, with the root's secret key in place of ROOT_SECRET_KEY.
    let hint = out.stderr.lines().find(|l| l.trim_start().starts_with("stele ")).expect("a suggested command");
    let args: Vec<String> = hint
        .split_whitespace()
        .skip(1)
        .map(|w| if w == "ROOT_SECRET_KEY" { f.alice.secret() } else { w.to_owned() })
        .collect();
    assert_eq!(args[..2], ["policy", "add-env"], "{hint}");
    f.ledger.stele(&args).expect(OK);
    f.ledger.stele(["env", "show", "--env", "qa"]).expect(OK);
}

#[test]
fn uncommitted_changes_are_refused() {
    let f = fixture();
    let head = f.head();
    let shown = f.ledger.read_string("environments/staging.json");
    f.ledger.write("environments/staging.json", shown.replace("\"min_ready_seconds\": 2", "\"min_ready_seconds\": 3"));
    let out = f.set("staging", &example("canary.json"), &[&f.alice]);
    out.expect(REFUSED).says(&["environments/staging.json"]);
    assert_eq!(f.head(), head, "nothing was committed");
    assert_eq!(
        f.ledger.read_string("environments/staging.json"),
        shown.replace("\"min_ready_seconds\": 2", "\"min_ready_seconds\": 3"),
        "the edit is left alone"
    );

    f.ledger.git(["checkout", "--", "environments/staging.json"]);
    f.ledger.write("ledger/staging/stray.txt", "not a ledger document\n");
    let out = f.set("staging", &example("canary.json"), &[&f.alice]);
    out.expect(REFUSED).says(&["ledger/staging/stray.txt"]);
    assert_eq!(f.head(), head, "nothing was committed");
}

#[test]
fn a_ledger_that_does_not_verify_is_refused() {
    let f = fixture();
    // A hand edit committed with git: the prod spec's signature no longer covers its payload.
    let text = f.ledger.read_string("environments/prod.json");
    f.ledger
        .write("environments/prod.json", replace_once(&text, "\"min_ready_seconds\": 2", "\"min_ready_seconds\": 9"));
    f.ledger.commit_all("tamper with prod");
    let head = f.head();
    let out = f.set("staging", &example("canary.json"), &[&f.alice]);
    out.expect(REFUSED).says(&["does not verify", "environments/prod.json", "N4"]);
    assert_eq!(f.head(), head, "nothing was committed");
}

#[test]
fn show_output_round_trips_through_set_and_the_version_goes_up() {
    let f = fixture();
    let shown = f.show("staging");
    assert_eq!(shown, f.payload("staging"), "env show prints the committed payload");
    assert!(shown.get("signatures").is_none() && shown.get("payload").is_none(), "the payload only: {shown:#}");
    assert_eq!(shown["version"], 1);

    let out = f.ledger.stele(["env", "show", "--env", "staging"]);
    let file = f.sb.path("shown.json");
    std::fs::write(&file, &out.stdout).unwrap();
    f.set("staging", &file, &[&f.alice]).expect(OK).says(&["spec version 2 (rolling)", "nothing but the version"]);
    let mut expected = shown.clone();
    expected["version"] = json!(2);
    assert_eq!(f.show("staging"), expected, "the same spec, one version up");

    // Edit what was shown, as a person would, and set it again.
    let out = f.ledger.stele(["env", "show", "--env", "staging"]);
    let edited = replace_once(&out.stdout, "\"drift\": \"correct\"", "\"drift\": \"report\"");
    std::fs::write(&file, edited).unwrap();
    f.set("staging", &file, &[&f.alice]).expect(OK).says(&["spec version 3 (rolling)", "changed: drift"]);
    expected["version"] = json!(3);
    expected["drift"] = json!("report");
    assert_eq!(f.show("staging"), expected);

    // The file shown at version 2 is stale now.
    let head = f.head();
    let stale = f.spec_file("stale.json", &{
        let mut v = shown;
        v["version"] = json!(2);
        v
    });
    f.expect_refused_unchanged(
        &f.set("staging", &stale, &[&f.alice]),
        &head,
        &["version is 2", "already at version 3"],
    );
    f.expect_poll_verified();
}

#[test]
fn a_spec_short_of_its_threshold_is_a_proposal_completed_by_sign_and_promote() {
    let f = fixture();
    let bob = f.sb.key("bob");
    f.ledger.two_of_two("staging", &f.alice, &bob);
    f.expect_poll_verified();

    let before = f.ledger.commit_count();
    let head = f.head();
    let out = f.set("staging", &example("blue-green.json"), &[&f.alice]);
    out.expect(OK).says(&[
        "spec version 2 (blue_green)",
        "threshold not met: 1 of 2",
        "stele/proposals/staging-spec-v2",
        "stele sign --proposal staging-spec-v2",
    ]);
    assert_eq!(f.ledger.commit_count(), before, "a spec short of signatures is a proposal, off the branch");
    assert_eq!(f.head(), head);
    f.ledger.expect_valid(&[]);
    f.expect_poll_verified();

    f.ledger
        .stele(["sign", "--proposal", "staging-spec-v2", "--key", &bob.secret()])
        .expect(OK)
        .says(&["every threshold is met"]);
    f.ledger.stele(["promote", "staging-spec-v2"]).expect(OK);
    assert_eq!(f.ledger.commit_count(), before + 1, "promoted as one commit");
    f.ledger.expect_valid(&[]);
    assert_eq!(f.payload("staging")["version"], 2);
    let poll = f.expect_poll_verified();
    assert_eq!(poll["refusals"], json!([]), "{poll:#}");

    // Both keys at once meet the threshold in one commit.
    let out = f.set("staging", &example("canary.json"), &[&f.alice, &bob]);
    out.expect(OK).says(&["spec version 3 (canary)", "every threshold met"]);
    f.ledger.expect_valid(&[]);
    let signatures = f.ledger.json("environments/staging.json")["signatures"].as_array().unwrap().len();
    assert_eq!(signatures, 2);
    f.expect_poll_verified();
}

#[test]
fn the_aws_example_specs_are_accepted() {
    let f = fixture();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/aws");
    for (i, name) in ["environment.json", "environment-canary.json"].into_iter().enumerate() {
        let out = f.set("prod", &dir.join(name), &[&f.alice]);
        out.expect(OK).says(&[&format!("prod: spec version {}", i + 2)]);
        assert_eq!(f.show("prod")["provider"]["kind"], "aws", "{name}");
        f.ledger.expect_valid(&[]);
    }
    assert_eq!(f.show("prod")["strategy"]["kind"], "canary");
}

#[test]
fn the_gcp_example_specs_are_accepted_and_n3_refusals_name_the_rule() {
    let f = fixture();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/gcp");
    for (i, name) in ["environment.json", "environment-canary.json"].into_iter().enumerate() {
        let out = f.set("prod", &dir.join(name), &[&f.alice]);
        out.expect(OK).says(&[&format!("prod: spec version {}", i + 2)]);
        assert_eq!(f.show("prod")["provider"]["kind"], "gcp", "{name}");
        f.ledger.expect_valid(&[]);
    }
    assert_eq!(f.show("prod")["strategy"]["kind"], "canary");
    assert_eq!(f.show("prod")["provider"]["url_map"], "web-map");
    // Canary without a url map: refused before anything is written.
    let mut spec: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("environment-canary.json")).unwrap()).unwrap();
    spec["provider"].as_object_mut().unwrap().remove("url_map");
    let path = f.sb.path("canary-no-map.json");
    std::fs::write(&path, serde_json::to_vec(&spec).unwrap()).unwrap();
    let head = f.head();
    let out = f.set("prod", &path, &[&f.alice]);
    f.expect_refused_unchanged(&out, &head, &["N3", "url_map, health_check and port"]);
}
