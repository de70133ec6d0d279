//! The ledger-and-agent harness of the history tests (`tests/history.rs`, `tests/layout.rs`): a ledger
//! made by `stele init` whose root and signer of every environment is alice, releases, spec edits
//! committed with the git CLI, and agents (`stele poll --json`, one state directory each) whose
//! answers are checked by [`Poll`].
//!
//! Use it with `use common::fixture::*;` next to `use common::*;`.

use super::{path_str, scrubbed, Key, Ledger, Output, Sandbox, OK, VERIFY_FAILED};
use ledger_format::types::{Environment, RevertPolicy};
use ledger_format::Document;
use serde_json::{json, Value};
use std::path::PathBuf;

/// A ledger with the environments asked for; alice is its root and the signer of every environment.
pub struct Fixture {
    pub sb: Sandbox,
    pub alice: Key,
    pub ledger: Ledger,
}

/// `stele init` of a flat ledger (the default layout).
pub fn fixture(ledger_id: &str, envs: &[&str]) -> Fixture {
    fixture_with(ledger_id, envs, &[])
}

/// [`fixture`] with `extra` arguments for `stele init` (e.g. `--layout buckets`).
pub fn fixture_with(ledger_id: &str, envs: &[&str], extra: &[&str]) -> Fixture {
    let sb = Sandbox::new();
    let alice = sb.key("alice");
    let ledger = sb.ledger_with("ledger", ledger_id, &alice, envs, extra);
    Fixture { sb, alice, ledger }
}

impl Fixture {
    /// `stele release` of `version` to `env`, signed by `key`, with an image of its own; returns the
    /// new commit.
    pub fn promote(&self, env: &str, version: &str, key: &Key) -> String {
        let image = self.sb.image(&format!("app-{env}-{version}.tar"), format!("app {version}\n").as_bytes());
        self.ledger.release(env, version, &image, key);
        self.head()
    }

    pub fn head(&self) -> String {
        self.rev("HEAD")
    }

    pub fn rev(&self, rev: &str) -> String {
        self.ledger.git(["rev-parse", "--verify", "-q", &format!("{rev}^{{commit}}")]).trim().to_owned()
    }

    /// The blob id of `path` at `rev`.
    pub fn blob(&self, rev: &str, path: &str) -> String {
        self.ledger.git(["rev-parse", &format!("{rev}:{path}")]).trim().to_owned()
    }

    /// Every file under `ledger/` at `rev`, sorted.
    pub fn entry_files(&self, rev: &str) -> Vec<String> {
        let out = self.ledger.git(["ls-tree", "-r", "--name-only", rev, "--", "ledger"]);
        out.lines().map(str::to_owned).collect()
    }

    /// An agent that polls this ledger in place, pinned to alice as the root.
    pub fn agent(&self, name: &str) -> Agent {
        Agent::new(&self.sb, name, &path_str(&self.ledger.dir), &["--trust-root", &self.alice.id])
    }

    /// `git ARGS` in the ledger with extra environment variables (e.g. fixed commit dates).
    pub fn git_env(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let out = scrubbed("git", self.sb.root(), &self.ledger.dir).args(args).envs(env.iter().copied()).output();
        let out = out.unwrap_or_else(|e| panic!("cannot run git {args:?}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "git {args:?} failed\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
        stdout
    }

    /// Sets `env`'s `revert` rule the only way there is: the spec's next version, re-signed by `signer`
    /// through the `ledger_format` API and committed with the git CLI.
    pub fn set_revert_policy(&self, env: &str, rule: RevertPolicy, signer: &Key) -> String {
        let rel = format!("environments/{env}.json");
        let old = Document::<Environment>::parse(&self.ledger.read(&rel)).expect("the spec parses");
        let mut payload = old.payload.clone();
        payload.version += 1;
        payload.revert = rule;
        let mut doc = Document::new(payload);
        doc.sign(&secret(signer));
        self.ledger.write(&rel, doc.to_file_bytes());
        self.ledger.commit_all(&format!("{env}: revert {rule:?}"));
        self.head()
    }

    /// `stele audit --json --trust-root alice`, exit code checked.
    #[track_caller]
    pub fn audit(&self, code: i32) -> Value {
        audit(&self.ledger, &["--trust-root", &self.alice.id], code)
    }

    /// `stele policy set-layout LAYOUT --key KEYS...`, not checked.
    pub fn set_layout(&self, layout: &str, keys: &[&Key]) -> Output {
        let mut args = vec!["policy".to_owned(), "set-layout".to_owned(), layout.to_owned()];
        for k in keys {
            args.extend(["--key".to_owned(), k.secret()]);
        }
        self.ledger.stele(&args)
    }
}

/// The signing key in `key`'s secret file.
pub fn secret(key: &Key) -> ledger_format::SecretKey {
    stele::keys::load_secret(&key.secret).expect("a key written by `stele key generate`").key
}

/// An agent: `stele poll` of one source with one state directory.
pub struct Agent {
    pub repo: String,
    pub state_dir: PathBuf,
    pub trust: Vec<String>,
}

/// One poll: what it printed, and its JSON (null when it printed none).
pub struct Poll {
    pub out: Output,
    pub json: Value,
}

impl Agent {
    /// An agent named `name` (state in `agent-NAME` in the sandbox) polling `repo` with the trust
    /// arguments `trust` (e.g. `--trust-root ID`; none to resume from the saved state).
    pub fn new(sb: &Sandbox, name: &str, repo: &str, trust: &[&str]) -> Self {
        let state_dir = sb.path(&format!("agent-{name}"));
        Agent { repo: repo.to_owned(), state_dir, trust: trust.iter().map(|s| (*s).to_owned()).collect() }
    }

    /// `stele poll --json` with the agent's trust root and `extra` arguments.
    pub fn poll_with(&self, sb: &Sandbox, extra: &[&str]) -> Poll {
        let mut args: Vec<&str> = vec!["poll", "--repo", &self.repo, "--state-dir"];
        let state = path_str(&self.state_dir);
        args.push(&state);
        args.extend(self.trust.iter().map(String::as_str));
        args.extend(extra);
        args.push("--json");
        let out = sb.stele(sb.root(), &args);
        let json = match out.stdout.trim() {
            "" => Value::Null,
            text => serde_json::from_str(text).unwrap_or_else(|e| panic!("poll printed no JSON: {e}\n{}", out.dump())),
        };
        Poll { out, json }
    }

    pub fn poll(&self, sb: &Sandbox) -> Poll {
        self.poll_with(sb, &[])
    }

    /// The state file's bytes, if there is one.
    pub fn state_bytes(&self) -> Option<Vec<u8>> {
        std::fs::read(self.state_dir.join("verified.json")).ok()
    }

    /// The high-water mark in the state file.
    pub fn mark(&self) -> String {
        let bytes = self.state_bytes().expect("the agent has a verified state");
        let v: Value = serde_json::from_slice(&bytes).expect("the state file is JSON");
        v["commit"].as_str().expect("the state names its commit").to_owned()
    }
}

impl Poll {
    /// Asserts exit 0 with status `verified` or `up_to_date` at `commit`, nothing refused.
    #[track_caller]
    pub fn expect_verified(&self, commit: &str) -> &Self {
        self.out.expect(OK);
        let status = self.json["status"].as_str().unwrap_or_default();
        assert!(matches!(status, "verified" | "up_to_date"), "status {status}\n{}", self.out.dump());
        assert_eq!(self.json["commit"], commit, "{}", self.out.dump());
        assert_eq!(self.json["refusals"], json!([]), "{}", self.out.dump());
        self
    }

    /// Asserts `env`'s target generation and target version (`None`: no target).
    #[track_caller]
    pub fn expect_target(&self, env: &str, generation: u64, version: Option<&str>) -> &Self {
        let e = &self.json["environments"][env];
        assert_eq!(e["generation"], generation, "generation of {env}\n{}", self.out.dump());
        assert_eq!(e["target"]["version"].as_str(), version, "target of {env}\n{}", self.out.dump());
        self
    }

    /// [`Poll::expect_target`] of `version`, and the target's entry is `seq`.
    #[track_caller]
    pub fn expect_target_seq(&self, env: &str, generation: u64, version: &str, seq: u64) -> &Self {
        self.expect_target(env, generation, Some(version));
        let e = &self.json["environments"][env];
        assert_eq!(e["target"]["seq"], seq, "target seq of {env}\n{}", self.out.dump());
        self
    }

    /// Asserts a stall because of refused commits (exit 1, status `stalled`), the first refused commit
    /// being `commit` with exactly the problems `(path, check)`, each reason containing `words`.
    #[track_caller]
    pub fn expect_refused(&self, commit: &str, problems: &[(&str, &str)], words: &[&str]) -> &Self {
        self.out.expect(VERIFY_FAILED);
        assert_eq!(self.json["status"], "stalled", "{}", self.out.dump());
        let refusal = &self.json["refusals"][0];
        assert_eq!(refusal["commit"], commit, "the refused commit\n{}", self.out.dump());
        assert_eq!(problem_list(&refusal["problems"]), problems, "{}", self.out.dump());
        let reasons = refusal["problems"].to_string();
        for w in words {
            assert!(reasons.contains(w), "the refusal does not say {w:?}\n{}", self.out.dump());
        }
        self
    }

    /// Asserts a stall because the head does not descend from the high-water mark (H1).
    #[track_caller]
    pub fn expect_rewrite(&self, verified: &str, head: &str) -> &Self {
        self.out.expect(VERIFY_FAILED);
        assert_eq!(self.json["status"], "stalled", "{}", self.out.dump());
        assert_eq!(self.json["commit"], verified, "the last verified commit is kept\n{}", self.out.dump());
        assert_eq!(self.json["head"], head, "{}", self.out.dump());
        let reason = self.json["reason"].as_str().unwrap_or_default();
        assert!(reason.starts_with("H1: ") && reason.contains("history rewritten"), "{}", self.out.dump());
        assert!(self.json["environments"].as_object().is_some_and(|e| !e.is_empty()), "{}", self.out.dump());
        self
    }

    /// Whether the first refusal's reasons contain `words`.
    pub fn json_reason_mentions(&self, words: &str) -> bool {
        self.json["refusals"][0]["problems"].to_string().contains(words)
    }
}

/// `(path, check)` of each problem in a JSON list of problems.
pub fn problem_list(problems: &Value) -> Vec<(&str, &str)> {
    problems
        .as_array()
        .map(|ps| ps.iter().map(|p| (p["path"].as_str().unwrap_or("?"), p["check"].as_str().unwrap_or("?"))).collect())
        .unwrap_or_default()
}

/// `stele audit --json ARGS` of the ledger, with its exit code checked; the genesis policy is taken
/// as found unless ARGS pin a trust root.
#[track_caller]
pub fn audit(ledger: &Ledger, args: &[&str], code: i32) -> Value {
    let pinned = args.iter().any(|a| a.starts_with("--trust-root"));
    let trust = if pinned { None } else { Some("--trust-genesis-as-found") };
    let out = ledger.stele(["audit", "--json"].into_iter().chain(trust).chain(args.iter().copied()));
    out.expect(code);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("audit printed no JSON: {e}\n{}", out.dump()))
}
